//! The daemon's client for `banger-agent`, the program that answers inside
//! the guest (`crates/agent`; protocol: [`banger_proto::agent`]).
//!
//! The byte stream comes from the VM's VMM ([`Vmm::agent_connect`]): a vsock
//! connection through Firecracker, a virtio-serial port under QEMU. The
//! client is generic over the stream so tests drive it against the real
//! agent code on a socketpair.
//!
//! Every call is bounded ([`CALL_TIMEOUT`]): a guest without an agent, or
//! one still booting, must make `vm health` say so in seconds, not hang it.
//! Request ids come from one daemon-wide counter and answers with another id
//! are skipped: a virtio-serial port is one pipe for the VM's whole life, so
//! an answer to a request whose caller gave up may still be in it.
//!
//! [`Vmm::agent_connect`]: crate::vmm::backend::Vmm::agent_connect

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use banger_proto::agent::{
    AgentCall, AgentMethod, AgentRequest, AgentResponse, Health, HealthCall, ListeningPort,
    PortsCall, PoweroffCall,
};
use banger_proto::methods::Empty;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use banger_core::store::Store;

use crate::vm::record::Vm;
use crate::vmm::registry::Vmms;

/// Bound on opening the channel. Firecracker gives up on a guest that does
/// not accept a vsock connection after 2 s; allow for that answer.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(2500);

/// Bound on one request and its answer. The agent answers from /proc in
/// milliseconds; TCG guests are slower, but not by seconds.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest answer line read (a guest with thousands of sockets stays
/// well under this).
const MAX_ANSWER: u64 = 4 << 20;

/// The image feature that says the guest runs the agent.
pub const FEATURE: &str = "agent";

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A request id no earlier request of this daemon used (ids start past the
/// seconds since the epoch times 2^20, so a restarted daemon does not reuse
/// the previous one's ids either).
fn next_id() -> u64 {
    if NEXT_ID.load(Ordering::Relaxed) == 0 {
        let base = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_secs().max(1))
            << 20;
        let _ = NEXT_ID.compare_exchange(0, base, Ordering::Relaxed, Ordering::Relaxed);
    }
    NEXT_ID.fetch_add(1, Ordering::Relaxed)
}

/// Why talking to the agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The channel could not be opened (the VMM's words).
    #[error("{0}")]
    Channel(String),
    /// No answer in time: the guest has no agent, is still booting, or hangs.
    #[error("no answer to {method} within {} ms", after.as_millis())]
    Timeout {
        method: &'static str,
        after: Duration,
    },
    /// The other end hung up.
    #[error("the channel closed during {method}")]
    Closed { method: &'static str },
    #[error("I/O error during {method}: {source}")]
    Io {
        method: &'static str,
        #[source]
        source: io::Error,
    },
    /// The agent answered with an error.
    #[error("the agent refused {method}: {message}")]
    Refused {
        method: &'static str,
        message: String,
    },
    /// An answer that is not the protocol.
    #[error("malformed answer to {method}: {detail}")]
    Protocol {
        method: &'static str,
        detail: String,
    },
}

/// One connection to an agent.
pub struct AgentClient<S> {
    stream: BufReader<S>,
    timeout: Duration,
}

impl<S: AsyncRead + AsyncWrite + Unpin> AgentClient<S> {
    pub fn new(stream: S, timeout: Duration) -> AgentClient<S> {
        AgentClient {
            stream: BufReader::new(stream),
            timeout,
        }
    }

    /// Sends one request and waits (bounded) for its answer.
    pub async fn call<C: AgentCall>(&mut self) -> Result<C::Result, AgentError> {
        let method = C::METHOD.as_str();
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.exchange(C::METHOD)).await {
            Ok(Ok(resp)) => resp.into_result::<C::Result>().map_err(|message| {
                match message.strip_prefix("malformed agent result: ") {
                    Some(detail) => AgentError::Protocol {
                        method,
                        detail: detail.to_string(),
                    },
                    None => AgentError::Refused { method, message },
                }
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(AgentError::Timeout {
                method,
                after: timeout,
            }),
        }
    }

    async fn exchange(&mut self, m: AgentMethod) -> Result<AgentResponse, AgentError> {
        let method = m.as_str();
        let id = next_id();
        let mut line =
            serde_json::to_vec(&AgentRequest { id, method: m }).expect("requests serialise");
        line.push(b'\n');
        let io_err = |source| AgentError::Io { method, source };
        let w = self.stream.get_mut();
        w.write_all(&line).await.map_err(io_err)?;
        w.flush().await.map_err(io_err)?;
        loop {
            let mut buf = Vec::new();
            let n = (&mut self.stream)
                .take(MAX_ANSWER)
                .read_until(b'\n', &mut buf)
                .await
                .map_err(io_err)?;
            if n == 0 {
                return Err(AgentError::Closed { method });
            }
            if buf.last() != Some(&b'\n') {
                return Err(AgentError::Protocol {
                    method,
                    detail: format!("an answer line longer than {MAX_ANSWER} bytes, or cut off"),
                });
            }
            let resp: AgentResponse =
                serde_json::from_slice(&buf).map_err(|e| AgentError::Protocol {
                    method,
                    detail: format!("{e}: {:?}", String::from_utf8_lossy(&buf).trim_end()),
                })?;
            if resp.id == id {
                return Ok(resp);
            }
            // An answer to an earlier caller's request (see the module doc).
            tracing::debug!(want = id, got = resp.id, "skipping a stale agent answer");
        }
    }

    /// `health`: agent version, uptime, boot id, hostname, kernel release.
    pub async fn health(&mut self) -> Result<Health, AgentError> {
        self.call::<HealthCall>().await
    }

    /// `ports`: the guest's listening sockets.
    pub async fn ports(&mut self) -> Result<Vec<ListeningPort>, AgentError> {
        self.call::<PortsCall>().await
    }

    /// `poweroff`: the agent answers, then the guest shuts down cleanly.
    pub async fn poweroff(&mut self) -> Result<Empty, AgentError> {
        self.call::<PoweroffCall>().await
    }
}

/// Whether the VM's image says its guest runs the agent.
pub fn vm_has_agent(store: &Store, vm: &Vm) -> bool {
    store
        .image_by_id(&vm.row.image_id)
        .ok()
        .flatten()
        .is_some_and(|i| i.has(FEATURE))
}

/// Opens the agent channel of a running VM.
pub async fn connect(vmms: &Vmms, vm: &Vm) -> Result<AgentClient<UnixStream>, AgentError> {
    let h = vm
        .runtime
        .vmm
        .as_ref()
        .ok_or_else(|| AgentError::Channel("the VM has no VMM process".into()))?;
    let vmm = vmms
        .get(&vm.spec.vmm)
        .map_err(|e| AgentError::Channel(e.to_string()))?;
    let stream = vmm
        .agent_connect(h, CONNECT_TIMEOUT)
        .await
        .map_err(|e| AgentError::Channel(e.to_string()))?;
    Ok(AgentClient::new(stream, CALL_TIMEOUT))
}

/// The error text every caller shows: `agent not answering on VM x: ...`.
pub fn not_answering(vm: &str, e: &AgentError) -> String {
    format!("agent not answering on VM {vm}: {e}")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;
    use std::time::Instant;

    use banger_agent::Agent;
    use banger_proto::agent::{PortProto, PROTOCOL};

    use super::*;

    /// The real agent (crates/agent) serving one end of a socketpair on a
    /// thread; a client on the other end. The agent's poweroff only counts.
    fn real_agent() -> (AgentClient<UnixStream>, Arc<AtomicUsize>) {
        let (host, guest) = std::os::unix::net::UnixStream::pair().unwrap();
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let agent = Agent::with_poweroff(move || {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        std::thread::spawn(move || banger_agent::serve(&agent, guest));
        host.set_nonblocking(true).unwrap();
        let host = UnixStream::from_std(host).unwrap();
        (AgentClient::new(host, CALL_TIMEOUT), count)
    }

    #[tokio::test]
    async fn health_ports_and_poweroff_against_the_real_agent() {
        let (mut c, poweroffs) = real_agent();
        let h = c.health().await.unwrap();
        assert_eq!(h.protocol, PROTOCOL);
        assert_eq!(h.agent_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(h.boot_id.len(), 36, "{h:?}");
        assert!(h.uptime_secs > 0.0 && !h.hostname.is_empty());

        // A socket we hold is among the ports the agent reads from /proc.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let ports = c.ports().await.unwrap();
        let mine = ports
            .iter()
            .find(|p| p.port == port && p.proto == PortProto::Tcp)
            .unwrap_or_else(|| panic!("port {port} missing from {ports:?}"));
        assert_eq!(mine.address, "127.0.0.1");
        assert_eq!(mine.pid, Some(std::process::id()));
        assert!(mine.process.is_some());

        assert_eq!(poweroffs.load(Ordering::SeqCst), 0);
        c.poweroff().await.unwrap();
        // The agent answers first, then acts.
        for _ in 0..100 {
            if poweroffs.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(poweroffs.load(Ordering::SeqCst), 1);
        // Still serving afterwards (the guest is shutting down, not the agent).
        c.health().await.unwrap();
    }

    #[tokio::test]
    async fn silence_times_out_hangup_is_closed_stale_answers_are_skipped() {
        // A peer that reads and never answers: the call is bounded.
        let (host, peer) = UnixStream::pair().unwrap();
        let mut c = AgentClient::new(host, Duration::from_millis(300));
        let t = Instant::now();
        let e = c.health().await.unwrap_err();
        assert!(matches!(e, AgentError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(1));
        assert_eq!(
            not_answering("box", &e),
            "agent not answering on VM box: no answer to health within 300 ms"
        );
        // The peer hangs up.
        drop(peer);
        let e = c.health().await.unwrap_err();
        assert!(
            matches!(e, AgentError::Closed { .. } | AgentError::Io { .. }),
            "{e}"
        );

        // A stale answer first, then ours; an agent error; garbage.
        let (host, peer) = UnixStream::pair().unwrap();
        let mut c = AgentClient::new(host, CALL_TIMEOUT);
        let fake = tokio::spawn(async move {
            let mut r = BufReader::new(peer);
            for reply in [0, 1, 2] {
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                let req: AgentRequest = serde_json::from_str(&line).unwrap();
                let text = match reply {
                    0 => format!(
                        "{{\"id\":{},\"result\":{{}}}}\n{{\"id\":{},\"result\":[]}}\n",
                        req.id - 1,
                        req.id
                    ),
                    1 => format!("{{\"id\":{},\"error\":\"ports: no /proc\"}}\n", req.id),
                    _ => "hello\n".to_string(),
                };
                r.get_mut().write_all(text.as_bytes()).await.unwrap();
            }
        });
        assert_eq!(c.ports().await.unwrap(), vec![]);
        let e = c.ports().await.unwrap_err();
        assert_eq!(e.to_string(), "the agent refused ports: ports: no /proc");
        let e = c.health().await.unwrap_err();
        assert!(matches!(e, AgentError::Protocol { .. }), "{e}");
        fake.await.unwrap();
    }

    /// Serves the real agent on `listener` for one connection; with
    /// `handshake`, first plays Firecracker's part of `CONNECT`.
    fn serve_one(listener: std::os::unix::net::UnixListener, handshake: bool) {
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            let (mut s, _) = listener.accept().unwrap();
            if handshake {
                let mut line = Vec::new();
                let mut b = [0u8; 1];
                while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
                    line.push(b[0]);
                }
                assert_eq!(line, b"CONNECT 10789");
                s.write_all(b"OK 1073741824\n").unwrap();
            }
            let agent = Agent::with_poweroff(|| Ok(()));
            let _ = banger_agent::serve(&agent, s);
        });
    }

    fn handle(agent_socket: &std::path::Path) -> crate::vmm::backend::VmmHandle {
        crate::vmm::backend::VmmHandle {
            kind: "test".into(),
            pid: 1,
            start_time: 0,
            api_socket: agent_socket.with_file_name("api.sock"),
            metrics: None,
            agent_socket: Some(agent_socket.to_path_buf()),
            accel: None,
        }
    }

    /// Both backends' `agent_connect`, then this client, against the real
    /// agent behind a Unix socket where the VMM's would be: Firecracker's
    /// vsock socket (with its handshake) and QEMU's virtio-serial chardev.
    #[tokio::test]
    async fn both_vmm_channels_reach_the_real_agent() {
        use crate::vmm::backend::Vmm;
        use crate::vmm::firecracker_vmm::FirecrackerVmm;
        use crate::vmm::qemu_vmm::{QemuOptions, QemuVmm};

        let dir = tempfile::tempdir().unwrap();
        let fc_sock = dir.path().join("vsock.sock");
        serve_one(
            std::os::unix::net::UnixListener::bind(&fc_sock).unwrap(),
            true,
        );
        let fc = FirecrackerVmm::new(Default::default());
        let s = fc
            .agent_connect(&handle(&fc_sock), CONNECT_TIMEOUT)
            .await
            .unwrap();
        let mut c = AgentClient::new(s, CALL_TIMEOUT);
        assert_eq!(c.health().await.unwrap().protocol, PROTOCOL);
        assert!(!c.ports().await.unwrap().is_empty());

        let q_sock = dir.path().join("agent.sock");
        serve_one(
            std::os::unix::net::UnixListener::bind(&q_sock).unwrap(),
            false,
        );
        let q = QemuVmm::new(QemuOptions::default());
        let s = q
            .agent_connect(&handle(&q_sock), CONNECT_TIMEOUT)
            .await
            .unwrap();
        let mut c = AgentClient::new(s, CALL_TIMEOUT);
        assert_eq!(c.health().await.unwrap().protocol, PROTOCOL);
        c.poweroff().await.unwrap();
    }

    #[test]
    fn ids_grow() {
        let a = next_id();
        let b = next_id();
        assert!(b > a && a > 1 << 20);
    }
}
