//! The daemon's DNS server: `<vmname>.vm` resolves to the VM's IPv4 address.
//!
//! [`DnsServer`] is authoritative for `vm.` and nothing else: it is not a
//! recursive resolver, so every other name is REFUSED. The rules, per
//! question:
//!
//! - `NAME.vm` A (or ANY), NAME a running VM with an address: that address,
//!   TTL [`TTL`], authoritative.
//! - `NAME.vm`, any other type: NOERROR with no answers (NODATA).
//! - any other name in `vm.` (unknown VM, not a valid VM name, more labels):
//!   NXDOMAIN.
//! - `vm.` SOA / NS: the zone's records; other types at `vm.`: NODATA.
//! - Negative answers carry the `vm.` SOA in the authority section, whose
//!   negative TTL is also [`TTL`].
//!
//! Names compare case-insensitively. The VM name is checked against
//! [`banger_proto::names::validate_name`] before the [`Lookup`] is called.
//!
//! The wire protocol (UDP and TCP, framing, EDNS, FORMERR for packets that do
//! not parse, dropping what is not a query) is hickory's
//! [`hickory_server::Server`]; this module supplies the answers (`zone.rs`)
//! and the listeners. hickory logs each answered request at info
//! level under the `hickory_server` target; this module logs at debug.
//!
//! Listen on specific addresses (loopback, the bridge address), not the
//! wildcard: UDP replies leave from the address the socket is bound to.
//! systemd-resolved only talks to port 53 ([`resolved`]), so the bridge
//! listener should use it; the loopback one can use any port.

pub mod resolved;
mod zone;

#[cfg(test)]
mod tests;

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hickory_server::Server;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::{CancellationToken, DropGuard};

use zone::Zone;

/// Looks a VM name up: `Some(addr)` for a VM that has an address, `None`
/// otherwise. Called on every query with a valid, lower-case VM name (no
/// `.vm`), so it must be cheap and must not block; the daemon passes a
/// closure reading its store.
pub type Lookup = Arc<dyn Fn(&str) -> Option<Ipv4Addr> + Send + Sync>;

/// The port guests ask on the bridge address (what the kernel command line
/// names as their resolver and systemd-resolved can talk to); the host's
/// `input` rules let guests reach exactly this port there, udp and tcp.
pub const BRIDGE_PORT: u16 = 53;

/// TTL of every record we serve, and the negative-caching TTL: short, since
/// VMs come and go.
pub const TTL: u32 = 5;

/// A TCP connection that sends nothing for this long is closed.
const TCP_IDLE: Duration = Duration::from_secs(5);

/// Outgoing TCP responses buffered per connection.
const TCP_RESPONSE_BUFFER: usize = 32;

/// Tries at finding an ephemeral port free for both UDP and TCP.
const BIND_TRIES: usize = 16;

/// A running DNS server for the `vm.` zone.
///
/// Serves until [`DnsServer::shutdown`], until the token given to
/// [`DnsServer::start`] is cancelled, or until it is dropped (dropping aborts
/// the listener tasks; `shutdown` also waits for them, so the ports are free
/// when it returns).
pub struct DnsServer {
    /// Held only for short, synchronous sections (never across an await).
    state: Mutex<State>,
    /// hickory's own shutdown token; cancelled by ours, by `shutdown`, or on
    /// drop (through `_cancel_on_drop`, which also ends the watcher task).
    stop: CancellationToken,
    _cancel_on_drop: DropGuard,
    tcp_idle: Duration,
}

struct State {
    server: Server<Zone>,
    /// (address asked for, address bound), in the order they were added.
    listeners: Vec<(SocketAddr, SocketAddr)>,
}

impl DnsServer {
    /// Binds UDP and TCP on each address (port 0: an ephemeral port, the same
    /// for UDP and TCP) and serves until [`shutdown`](Self::shutdown) or until
    /// `shutdown` (the token) is cancelled. Returns once all addresses are
    /// bound; fails, binding nothing, if one cannot be.
    pub async fn start(
        addrs: &[SocketAddr],
        lookup: Lookup,
        shutdown: CancellationToken,
    ) -> io::Result<DnsServer> {
        DnsServer::start_with(addrs, lookup, shutdown, TCP_IDLE).await
    }

    pub(crate) async fn start_with(
        addrs: &[SocketAddr],
        lookup: Lookup,
        shutdown: CancellationToken,
        tcp_idle: Duration,
    ) -> io::Result<DnsServer> {
        let mut bound = Vec::with_capacity(addrs.len());
        for &addr in addrs {
            let (udp, tcp, local) = bind_pair(addr).await?;
            bound.push((addr, local, udp, tcp));
        }
        let mut server = Server::new(Zone::new(lookup));
        let mut listeners = Vec::with_capacity(bound.len());
        for (asked, local, udp, tcp) in bound {
            server.register_socket(udp);
            server.register_listener(tcp, tcp_idle, TCP_RESPONSE_BUFFER);
            listeners.push((asked, local));
        }
        let stop = server.shutdown_token().clone();
        let watched = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = shutdown.cancelled() => watched.cancel(),
                _ = watched.cancelled() => {}
            }
        });
        let shown: Vec<SocketAddr> = listeners.iter().map(|l| l.1).collect();
        tracing::debug!(addrs = ?shown, "dns server listening");
        Ok(DnsServer {
            state: Mutex::new(State { server, listeners }),
            _cancel_on_drop: stop.clone().drop_guard(),
            stop,
            tcp_idle,
        })
    }

    /// The bound addresses (UDP and TCP share each), in the order added.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.state().listeners.iter().map(|l| l.1).collect()
    }

    /// Adds a listener on `addr` (UDP and TCP) and returns the bound address.
    /// Idempotent: an address already asked for, or already bound, returns
    /// the existing listener (so `listen(bridge_ip:53)` can be repeated).
    pub async fn listen(&self, addr: SocketAddr) -> io::Result<SocketAddr> {
        if self.stop.is_cancelled() {
            return Err(shut_down());
        }
        if let Some(local) = self.existing(addr) {
            return Ok(local);
        }
        let (udp, tcp, local) = bind_pair(addr).await?;
        if self.stop.is_cancelled() {
            return Err(shut_down());
        }
        let mut st = self.state();
        // Another listen() for the same address may have won meanwhile:
        // keep its listener, drop ours.
        if let Some(&(_, existing)) = st.listeners.iter().find(|l| l.0 == addr || l.1 == addr) {
            return Ok(existing);
        }
        st.server.register_socket(udp);
        st.server
            .register_listener(tcp, self.tcp_idle, TCP_RESPONSE_BUFFER);
        st.listeners.push((addr, local));
        tracing::debug!(%local, "dns server listening");
        Ok(local)
    }

    /// Stops serving and waits until every listener is closed: the ports can
    /// be bound again when this returns.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let State {
            mut server,
            listeners,
        } = self
            .state
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        if listeners.is_empty() {
            return;
        }
        if let Err(error) = server.block_until_done().await {
            tracing::debug!(%error, "dns server stopped with an error");
        }
        tracing::debug!("dns server stopped");
    }

    fn existing(&self, addr: SocketAddr) -> Option<SocketAddr> {
        self.state()
            .listeners
            .iter()
            .find(|l| l.0 == addr || l.1 == addr)
            .map(|l| l.1)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Binds UDP and TCP on the same address. For port 0 the UDP socket picks
/// the port and TCP follows; if TCP finds that port taken, try another.
async fn bind_pair(addr: SocketAddr) -> io::Result<(UdpSocket, TcpListener, SocketAddr)> {
    let mut tries = 0;
    loop {
        tries += 1;
        let udp = UdpSocket::bind(addr)
            .await
            .map_err(|e| bind_error("UDP", addr, e))?;
        let local = udp.local_addr()?;
        match TcpListener::bind(local).await {
            Ok(tcp) => return Ok((udp, tcp, local)),
            Err(e)
                if addr.port() == 0
                    && e.kind() == io::ErrorKind::AddrInUse
                    && tries < BIND_TRIES =>
            {
                continue
            }
            Err(e) => return Err(bind_error("TCP", local, e)),
        }
    }
}

fn shut_down() -> io::Error {
    io::Error::other("the DNS server is shut down")
}

fn bind_error(proto: &str, addr: SocketAddr, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("cannot bind DNS {proto} {addr}: {e}"))
}
