//! The network stage of the start pipeline, and the host network state it
//! keeps in step with the store.
//!
//! Each VM with networking has an address (allocated at create, freed with
//! the VM), a TAP device named `bgr-<short id>` attached to the bridge while
//! it runs, and a MAC derived from its id. nftables state (NAT, published
//! ports, the no-NAT drop) lives in banger's one table and is rebuilt from
//! the store in one atomic nft transaction whenever it changes
//! ([`sync`]): exact, idempotent, and a crash can never leave half a rule set.

use std::net::Ipv4Addr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::error::Error;
use banger_core::net_alloc::Subnet;
use banger_proto::methods::vm::{PortMapping, VmState};

use super::record::Vm;
use crate::netfilter::{self, Plan, PortMap, Proto, VmNet};
use crate::staging::blocking;
use crate::vm::Vms;
use crate::vmm::backend::NetAttach;

/// `bgr-` ([`netfilter::TAP_PREFIX`]) + 10 hex chars of the VM id: 14
/// bytes, within IFNAMSIZ.
pub fn tap_name(vm_id: &str) -> String {
    format!("{}{}", netfilter::TAP_PREFIX, &vm_id[..10.min(vm_id.len())])
}

/// A stable, locally administered unicast MAC from the VM id.
pub fn mac_for(vm_id: &str) -> String {
    let hex: Vec<&str> = (0..5)
        .map(|i| vm_id.get(i * 2..i * 2 + 2).unwrap_or("00"))
        .collect();
    format!("02:{}", hex.join(":")).to_ascii_lowercase()
}

pub fn subnet(d: &Vms) -> Result<Subnet, Error> {
    Subnet::parse(&d.config.network.bridge_cidr)
        .map_err(|e| Error::precondition(format!("config [network] bridge_cidr: {e}")))
}

fn host_err(e: crate::privileged::HostError) -> Error {
    Error::precondition(format!("host networking: {e}"))
}

/// Reserves an address for a new VM. Exhaustion is a clear error.
pub fn allocate(d: &Vms, vm_id: &str) -> Result<Option<Ipv4Addr>, Error> {
    if !d.config.network.enabled {
        return Ok(None);
    }
    let subnet = subnet(d)?;
    match d
        .store
        .allocate_address(vm_id, |taken| subnet.first_free(taken))?
    {
        Some(ip) => Ok(Some(ip)),
        None => Err(Error::precondition(format!(
            "no free address left in {subnet} ({} VMs fit)",
            subnet.capacity()
        ))
        .hint("delete VMs you no longer need, or widen [network] bridge_cidr")),
    }
}

/// Prepares the VM's network device before its VMM starts: bridge (made on
/// first need, checked every time), TAP, rules; on the first VM also the DNS
/// listener on the bridge address and systemd-resolved routing.
pub async fn attach(d: &Arc<Vms>, vm: &Vm) -> Result<Option<NetAttach>, Error> {
    if !d.config.network.enabled {
        return Ok(None);
    }
    let Some(ip) = d.store.vm_address(vm.id())? else {
        return Ok(None);
    };
    // A port that cannot be published now fails the start clearly (a sync
    // would only leave it out).
    for p in d.store.ports_of(vm.id())?.iter().map(mapping) {
        if let Some(e) = port_refusal(vm.row.owner_uid, &p) {
            return Err(e);
        }
    }
    let subnet = subnet(d)?;
    let tap = tap_name(vm.id());
    let net_host = d.net_host()?;
    let (host, bridge, t) = (
        net_host.clone(),
        d.config.network.bridge_name.clone(),
        tap.clone(),
    );
    let isolated = !d.config.network.allow_vm_to_vm;
    let gw = subnet.gateway();
    blocking(move || {
        host.bridge_ensure(&bridge, gw, subnet.prefix)
            .map_err(host_err)?;
        host.tap_create(&t, &bridge, isolated).map_err(host_err)
    })
    .await?;
    bridge_ready(d).await;
    if let Err(e) = sync(d, None).await {
        let _ = blocking({
            let (host, t) = (net_host, tap.clone());
            move || host.tap_delete(&t).map_err(host_err)
        })
        .await;
        return Err(e);
    }
    Ok(Some(NetAttach {
        tap,
        mac: mac_for(vm.id()),
        ip,
        gateway: gw,
        prefix: subnet.prefix,
    }))
}

/// Undoes [`attach`]: the TAP goes, the rules are rebuilt without this VM.
pub async fn release(d: &Arc<Vms>, vm: &Vm) -> Result<(), Error> {
    if !d.config.network.enabled {
        return Ok(());
    }
    let tap = vm
        .runtime
        .net
        .as_ref()
        .map_or_else(|| tap_name(vm.id()), |n| n.tap.clone());
    let host = d.net_host()?;
    let exists = {
        let (host, tap) = (host.clone(), tap.clone());
        blocking(move || host.link_exists(&tap).map_err(host_err)).await?
    };
    if exists {
        blocking(move || host.tap_delete(&tap).map_err(host_err)).await?;
    }
    if exists || table_exists(d).await {
        sync(d, Some(vm.id())).await?;
    }
    Ok(())
}

async fn table_exists(d: &Arc<Vms>) -> bool {
    let Ok(host) = d.net_host() else {
        return false;
    };
    blocking(move || {
        host.nft_list_table(netfilter::FAMILY, netfilter::TABLE)
            .map(|t| t.is_some())
            .map_err(host_err)
    })
    .await
    .unwrap_or(false)
}

/// The DNS listener on the bridge address and systemd-resolved routing,
/// once per daemon, as soon as the bridge exists. Failures are logged, not
/// fatal: a VM without name resolution still runs.
pub async fn bridge_ready(d: &Arc<Vms>) {
    if d.net.bridge_ready.swap(true, Ordering::SeqCst) {
        return;
    }
    let Ok(subnet) = subnet(d) else { return };
    let gw = subnet.gateway();
    if let Some(dns) = &d.dns {
        match dns.listen((gw, crate::dns::BRIDGE_PORT).into()).await {
            Ok(a) => tracing::info!(addr = %a, "DNS answering on the bridge"),
            Err(e) => tracing::warn!(error = %e, "cannot serve DNS on the bridge address"),
        }
    }
    if d.config.network.resolved
        && crate::dns::resolved::detect() == crate::dns::resolved::Resolver::Resolved
    {
        let bridge = d.config.network.bridge_name.clone();
        let r = blocking(move || {
            crate::dns::resolved::route_vm_domain(&crate::dns::resolved::SystemRunner, &bridge, gw)
                .map_err(|e| Error::internal(e.to_string()))
        })
        .await;
        match r {
            Ok(()) => {
                d.net.resolved_routed.store(true, Ordering::SeqCst);
                tracing::info!("systemd-resolved routes *.vm to banger's DNS");
            }
            Err(e) => tracing::warn!(error = %e, "cannot route *.vm through systemd-resolved"),
        }
    }
}

/// Undoes the systemd-resolved routing at shutdown.
pub async fn shutdown(d: &Arc<Vms>) {
    if d.net.resolved_routed.load(Ordering::SeqCst) {
        let bridge = d.config.network.bridge_name.clone();
        let _ = blocking(move || {
            crate::dns::resolved::revert(&crate::dns::resolved::SystemRunner, &bridge)
                .map_err(|e| Error::internal(e.to_string()))
        })
        .await;
    }
}

fn port_map(p: &banger_core::store::PortRow) -> PortMap {
    PortMap {
        host_ip: (!p.host_ip.is_unspecified()).then_some(p.host_ip),
        host_port: p.host_port,
        guest_port: p.guest_port,
        proto: if p.proto == "udp" {
            Proto::Udp
        } else {
            Proto::Tcp
        },
    }
}

pub fn mapping(p: &banger_core::store::PortRow) -> PortMapping {
    PortMapping {
        host_ip: (!p.host_ip.is_unspecified()).then_some(p.host_ip),
        host_port: p.host_port,
        guest_port: p.guest_port,
        proto: p.proto.clone(),
    }
}

/// Rebuilds banger's nftables table from the store: every VM that is
/// starting or running (except `exclude`, which is being stopped). One sync
/// at a time, so two VMs starting together cannot apply stale plans over
/// each other; the lock is held for one plan + one nft transaction.
pub async fn sync(d: &Arc<Vms>, exclude: Option<&str>) -> Result<(), Error> {
    if !d.config.network.enabled {
        return Ok(());
    }
    let _one_at_a_time = d.net.sync.lock().await;
    let subnet = subnet(d)?;
    let mut vms = Vec::new();
    for row in d.store.list_vms()? {
        if Some(row.id.as_str()) == exclude {
            continue;
        }
        // A paused VM keeps its TAP and rules: it resumes where it was.
        match VmState::parse(&row.state) {
            Some(s) if s == VmState::Starting || s.is_booted() => {}
            _ => continue,
        }
        let Some(ip) = d.store.vm_address(&row.id)? else {
            continue;
        };
        let vm = Vm::from_row(row)?;
        let mut ports = Vec::new();
        for p in d.store.ports_of(vm.id())? {
            // Checked again at every sync: a host process that started
            // listening since is not shadowed, and a row that predates a
            // rule is not applied.
            let shown = mapping(&p);
            if let Some(e) = port_refusal(vm.row.owner_uid, &shown) {
                tracing::warn!(vm = vm.name(), port = %shown, error = %e, "published port left out");
                continue;
            }
            ports.push(port_map(&p));
        }
        vms.push(VmNet {
            vm_id: vm.id().to_string(),
            vm_name: vm.name().to_string(),
            ip,
            tap: tap_name(vm.id()),
            mac: mac_for(vm.id()),
            nat: vm.spec.nat,
            ports,
        });
    }
    let needs_forwarding = vms.iter().any(|v| v.nat || !v.ports.is_empty());
    let vm_to_vm = d.config.network.allow_vm_to_vm;
    let host = d.net_host()?;
    let bridge = d.config.network.bridge_name.clone();
    let d2 = d.clone();
    blocking(move || {
        let uplink = host.default_route_dev().map_err(host_err)?;
        let plan = Plan {
            bridge,
            subnet: (subnet.network, subnet.prefix),
            gateway: subnet.gateway(),
            vm_to_vm,
            uplink,
            vms,
        };
        let table = netfilter::desired(&plan).map_err(host_err)?;
        // Running `nft` costs ~20 ms; most changes (a VM without NAT or
        // ports starting or stopping) leave the table as it is. The cache
        // is locked for one comparison or assignment at a time, never
        // across the nft run (`sync` is what keeps syncs apart).
        let applied = || d2.net.applied.lock().unwrap_or_else(|p| p.into_inner());
        if applied().as_ref() == Some(&table) {
            return Ok(());
        }
        if needs_forwarding {
            host.ip_forward_enable().map_err(host_err)?;
        }
        *applied() = None;
        netfilter::write(host.as_ref(), &table).map_err(host_err)?;
        *applied() = Some(table);
        Ok(())
    })
    .await
}

/// At daemon start: the bridge and DNS for running VMs, no TAPs of VMs that
/// are not running, and rules matching the store (dead VMs' rules gone,
/// missing ones back). Touches nothing when banger has no network state here.
pub async fn reconcile_at_start(d: &Arc<Vms>) -> Result<(), Error> {
    if !d.config.network.enabled {
        return Ok(());
    }
    let running: Vec<String> = d
        .store
        .list_vms()?
        .into_iter()
        .filter(|r| VmState::parse(&r.state).is_some_and(VmState::is_booted))
        .map(|r| r.id)
        .collect();
    let wanted: Vec<String> = running.iter().map(|id| tap_name(id)).collect();
    let host = d.net_host()?;
    let stale = blocking(move || {
        let taps = host.links_with_prefix("bgr-").map_err(host_err)?;
        let stale: Vec<String> = taps.into_iter().filter(|t| !wanted.contains(t)).collect();
        for t in &stale {
            host.tap_delete(t).map_err(host_err)?;
        }
        Ok(stale)
    })
    .await?;
    for t in &stale {
        tracing::warn!(tap = %t, "removed a TAP no running VM owns");
    }
    if !running.is_empty() {
        let subnet = subnet(d)?;
        let (host, bridge) = (d.net_host()?, d.config.network.bridge_name.clone());
        blocking(move || {
            host.bridge_ensure(&bridge, subnet.gateway(), subnet.prefix)
                .map(|_| ())
                .map_err(host_err)
        })
        .await?;
        bridge_ready(d).await;
    }
    if !running.is_empty() || table_exists(d).await {
        sync(d, None).await?;
    }
    Ok(())
}

/// The daemon's network bookkeeping.
#[derive(Default)]
pub struct NetState {
    /// Serialises [`sync`].
    pub(in crate::vm) sync: tokio::sync::Mutex<()>,
    /// The bridge-side DNS listener and resolved routing are set up.
    pub(in crate::vm) bridge_ready: std::sync::atomic::AtomicBool,
    /// We routed `vm` through systemd-resolved (and undo it at shutdown).
    pub(in crate::vm) resolved_routed: std::sync::atomic::AtomicBool,
    /// The nftables table last applied (written under `sync`; a leaf lock,
    /// held for one comparison or assignment). Reset at every daemon start,
    /// so the first sync always applies.
    pub(in crate::vm) applied: std::sync::Mutex<Option<netfilter::Table>>,
}

/// Host ports below this are privileged: only root's VMs may publish them.
pub const FIRST_UNPRIVILEGED_PORT: u16 = 1024;

/// Why `p` may not be published for a VM of `owner_uid`, if it may not: a
/// privileged host port for a VM that is not root's (a user could not bind
/// it either), or a port a host process listens on (DNAT would silently
/// shadow it). Our own DNAT rule for the port does not make it busy (DNAT
/// binds nothing), so the check means the same before and after a sync.
pub fn port_refusal(owner_uid: u32, p: &PortMapping) -> Option<Error> {
    if owner_uid != 0 && p.host_port < FIRST_UNPRIVILEGED_PORT {
        return Some(
            Error::precondition(format!(
                "host port {} is privileged (below {FIRST_UNPRIVILEGED_PORT}): only root's VMs \
                 may publish it",
                p.host_port
            ))
            .hint("publish a host port from 1024 up, e.g. -p 8080:80"),
        );
    }
    if host_port_in_use(p) {
        return Some(Error::HostPortInUse(p.to_string()));
    }
    None
}

/// Whether something on the host already listens on the port, which DNAT
/// would silently shadow.
pub fn host_port_in_use(p: &PortMapping) -> bool {
    let ip = p.host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
    let addr = std::net::SocketAddr::from((ip, p.host_port));
    let free = if p.proto == "udp" {
        std::net::UdpSocket::bind(addr).is_ok()
    } else {
        std::net::TcpListener::bind(addr).is_ok()
    };
    !free
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(host_port: u16, proto: &str) -> PortMapping {
        PortMapping {
            host_ip: Some(Ipv4Addr::LOCALHOST),
            host_port,
            guest_port: 80,
            proto: proto.into(),
        }
    }

    #[test]
    fn privileged_and_busy_ports_are_refused() {
        // Below 1024: refused for a user's VM whatever is free, the first
        // check (no socket is bound for it).
        let e = port_refusal(1000, &port(80, "tcp")).unwrap().to_string();
        assert!(e.contains("privileged") && e.contains("80"), "{e}");
        assert!(port_refusal(1000, &port(1023, "udp")).is_some());
        // A port a host process listens on: refused for anyone, root too.
        let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let n = busy.local_addr().unwrap().port();
        for owner in [0, 1000] {
            match port_refusal(owner, &port(n, "tcp")) {
                Some(Error::HostPortInUse(p)) => assert!(p.contains(&n.to_string()), "{p}"),
                other => panic!("{other:?}"),
            }
        }
        let busy_udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let u = busy_udp.local_addr().unwrap().port();
        assert!(matches!(
            port_refusal(1000, &port(u, "udp")),
            Some(Error::HostPortInUse(_))
        ));
        // Free again once the process is gone.
        drop(busy);
        assert!(port_refusal(1000, &port(n, "tcp")).is_none());
        // Root's VMs may publish privileged ports (a free one: this test
        // binds it on loopback and lets it go at once).
        crate::privileged::testutil::require_root("binds a privileged port");
        let free = (1..1024)
            .find(|&p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
            .unwrap();
        assert!(port_refusal(0, &port(free, "tcp")).is_none());
    }
}
