//! The virtio-serial transport (QEMU): the port named
//! [`AGENT_SERIAL_NAME`], served in a loop.
//!
//! A virtio-serial port is opened once per host session: while the host end
//! is not connected, `read` returns end of file at once (it does not block),
//! and after the host hangs up it returns end of file too. So the loop closes
//! the port at every end of file or error, waits [`RETRY`] and opens it again:
//! each host connection starts with a fresh line buffer, and an idle agent
//! costs a few open/close calls a second, no busy loop.
//!
//! [`AGENT_SERIAL_NAME`]: banger_proto::guest::AGENT_SERIAL_NAME

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use banger_proto::guest::AGENT_SERIAL_NAME;

use crate::{log, serve, Agent};

/// Pause between a session's end and the next open.
pub const RETRY: Duration = Duration::from_millis(200);

/// How long [`run`] waits for the port to appear at start (udev may still be
/// creating it) before deciding this guest has none.
pub const WAIT_FOR_PORT: Duration = Duration::from_secs(60);

/// The port's device: udev's `/dev/virtio-ports/<name>` link, else the
/// `vportNpM` node whose sysfs `name` matches (no udev needed).
pub fn find_port() -> Option<PathBuf> {
    let link = Path::new("/dev/virtio-ports").join(AGENT_SERIAL_NAME);
    if link.exists() {
        return Some(link);
    }
    let entries = std::fs::read_dir("/sys/class/virtio-ports").ok()?;
    entries.flatten().find_map(|e| {
        let name = std::fs::read_to_string(e.path().join("name")).ok()?;
        (name.trim_end() == AGENT_SERIAL_NAME).then(|| Path::new("/dev").join(e.file_name()))
    })
}

fn open_port(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open(path)
}

/// The serial transport: waits up to [`WAIT_FOR_PORT`] for the port, then
/// serves it for ever. Returns only when the guest has no such port.
pub fn run(agent: &Agent) {
    let start = Instant::now();
    let path = loop {
        if let Some(p) = find_port() {
            break p;
        }
        if start.elapsed() >= WAIT_FOR_PORT {
            log!("no virtio-serial port {AGENT_SERIAL_NAME}: serial transport off");
            return;
        }
        thread::sleep(Duration::from_secs(1));
    };
    log!("serving virtio-serial port {}", path.display());
    let never = AtomicBool::new(false);
    serve_loop(agent, || open_port(&path), RETRY, &never);
}

/// Opens a port with `open`, serves it until end of file or an error, waits
/// `retry`, and again, until `stop` is set (checked after every session).
/// Errors are logged when they differ from the previous one.
pub fn serve_loop<S, F>(agent: &Agent, mut open: F, retry: Duration, stop: &AtomicBool)
where
    S: Read + Write,
    F: FnMut() -> io::Result<S>,
{
    let mut last_error = String::new();
    while !stop.load(Ordering::SeqCst) {
        let outcome = open().and_then(|port| serve(agent, port));
        match outcome {
            Ok(()) => last_error.clear(),
            Err(e) => {
                let e = e.to_string();
                if e != last_error {
                    log!("serial port: {e}");
                    last_error = e;
                }
            }
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        thread::sleep(retry);
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixStream;
    use std::sync::mpsc;
    use std::sync::Arc;

    use banger_proto::agent::{AgentOutcome, AgentResponse, Health};

    use super::*;

    fn read_response(r: &mut BufReader<UnixStream>) -> AgentResponse {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    /// Socketpairs stand in for the port: each open hands out the guest end
    /// of the next one; a closed host end is the host hanging up.
    #[test]
    fn reopens_after_eof_and_errors_with_fresh_framing() {
        let agent = Arc::new(Agent::with_poweroff(|| Ok(())));
        let (tx, rx) = mpsc::channel::<UnixStream>();
        let stop = Arc::new(AtomicBool::new(false));
        let opens = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let t = {
            let (agent, stop, opens) = (agent.clone(), stop.clone(), opens.clone());
            thread::spawn(move || {
                let open = || {
                    // The first open fails, as when the device is not there yet.
                    if opens.fetch_add(1, Ordering::SeqCst) == 0 {
                        return Err(io::Error::from(io::ErrorKind::NotFound));
                    }
                    rx.recv_timeout(Duration::from_secs(10))
                        .map_err(|_| io::Error::from(io::ErrorKind::NotFound))
                };
                serve_loop(&agent, open, Duration::from_millis(10), &stop);
            })
        };

        // Session 1: a request, then a partial line, then hang up.
        let (mut host, guest) = UnixStream::pair().unwrap();
        tx.send(guest).unwrap();
        let mut r = BufReader::new(host.try_clone().unwrap());
        host.write_all(b"{\"id\":1,\"method\":\"health\"}\n")
            .unwrap();
        let h = read_response(&mut r);
        assert_eq!(h.id, 1);
        assert!(h.into_result::<Health>().is_ok());
        host.write_all(b"{\"id\":9,").unwrap();
        drop((host, r));

        // Session 2 on a reopened port: the old partial line is gone, so
        // its tail alone is garbage (id 0), not request 9.
        let (mut host, guest) = UnixStream::pair().unwrap();
        tx.send(guest).unwrap();
        let mut r = BufReader::new(host.try_clone().unwrap());
        host.write_all(b"\"method\":\"health\"}\n{\"id\":2,\"method\":\"ports\"}\n")
            .unwrap();
        let e = read_response(&mut r);
        assert_eq!(e.id, 0);
        assert!(matches!(e.outcome, AgentOutcome::Error(_)), "{e:?}");
        assert_eq!(read_response(&mut r).id, 2);

        stop.store(true, Ordering::SeqCst);
        drop((host, r));
        t.join().unwrap();
        assert_eq!(opens.load(Ordering::SeqCst), 3);
    }
}
