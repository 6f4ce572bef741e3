//! The request loop over one byte stream: split lines (at most
//! [`MAX_LINE_BYTES`]), decode, answer, in order.

use std::io::{self, ErrorKind, Read, Write};

use banger_proto::agent::{AgentMethod, AgentRequest, AgentResponse, MAX_LINE_BYTES};
use banger_proto::methods::Empty;

use crate::{health, log, ports, power};

/// What powers the guest off; replaced in tests.
pub type PoweroffFn = dyn Fn() -> io::Result<()> + Send + Sync;

/// The request handler, shared by every connection.
pub struct Agent {
    poweroff: Box<PoweroffFn>,
}

impl Default for Agent {
    fn default() -> Self {
        Agent::new()
    }
}

impl Agent {
    /// The real agent: `poweroff` shuts the guest down ([`power::poweroff`]).
    pub fn new() -> Agent {
        Agent::with_poweroff(power::poweroff)
    }

    /// An agent whose `poweroff` runs `f` (after the response is written).
    pub fn with_poweroff(f: impl Fn() -> io::Result<()> + Send + Sync + 'static) -> Agent {
        Agent {
            poweroff: Box::new(f),
        }
    }

    /// Answers one request line (without its newline). The flag says the
    /// guest must be powered off once the response is sent.
    pub fn handle_line(&self, line: &[u8]) -> (AgentResponse, bool) {
        let value: serde_json::Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => {
                return (
                    AgentResponse::error(0, format!("malformed request: {e}")),
                    false,
                )
            }
        };
        let id = value
            .get("id")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let request: AgentRequest = match serde_json::from_value(value) {
            Ok(r) => r,
            Err(e) => {
                return (
                    AgentResponse::error(id, format!("invalid request: {e}")),
                    false,
                )
            }
        };
        match request.method {
            AgentMethod::Health => match health::health() {
                Ok(h) => (AgentResponse::ok(id, &h), false),
                Err(e) => (AgentResponse::error(id, format!("health: {e}")), false),
            },
            AgentMethod::Ports => match ports::listening_ports() {
                Ok(p) => (AgentResponse::ok(id, &p), false),
                Err(e) => (AgentResponse::error(id, format!("ports: {e}")), false),
            },
            AgentMethod::Poweroff => (AgentResponse::ok(id, &Empty {}), true),
        }
    }

    fn poweroff(&self) {
        log!("powering off on the host's request");
        if let Err(e) = (self.poweroff)() {
            log!("poweroff failed: {e}");
        }
    }
}

/// Serves requests from `stream` until it ends (`Ok`) or fails. Blank lines
/// are ignored; a line over [`MAX_LINE_BYTES`] gets an error response (id 0)
/// and is skipped up to its newline; a partial line at the end is dropped.
pub fn serve<S: Read + Write>(agent: &Agent, mut stream: S) -> io::Result<()> {
    let mut line: Vec<u8> = Vec::new();
    // Inside an oversized line: drop bytes until the next newline.
    let mut discarding = false;
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let mut data = &chunk[..n];
        while !data.is_empty() {
            let (part, complete) = match data.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    let part = &data[..i];
                    data = &data[i + 1..];
                    (part, true)
                }
                None => (std::mem::take(&mut data), false),
            };
            if discarding {
                discarding = !complete;
                continue;
            }
            if line.len() + part.len() > MAX_LINE_BYTES {
                line.clear();
                discarding = !complete;
                let msg = format!("request line longer than {MAX_LINE_BYTES} bytes");
                write_response(&mut stream, &AgentResponse::error(0, msg))?;
                continue;
            }
            line.extend_from_slice(part);
            if complete {
                let request = std::mem::take(&mut line);
                let request = request.strip_suffix(b"\r").unwrap_or(&request);
                if request.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let (response, poweroff) = agent.handle_line(request);
                write_response(&mut stream, &response)?;
                if poweroff {
                    agent.poweroff();
                }
            }
        }
    }
}

fn write_response<W: Write>(out: &mut W, response: &AgentResponse) -> io::Result<()> {
    let mut text = serde_json::to_vec(response).map_err(io::Error::other)?;
    text.push(b'\n');
    out.write_all(&text)?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixStream;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::thread;

    use banger_proto::agent::{AgentOutcome, Health, ListeningPort, PROTOCOL};

    use super::*;

    fn agent_counting_poweroffs() -> (Arc<Agent>, Arc<AtomicUsize>) {
        let count = Arc::new(AtomicUsize::new(0));
        let c = count.clone();
        let agent = Agent::with_poweroff(move || {
            c.fetch_add(1, Ordering::SeqCst);
            Ok(())
        });
        (Arc::new(agent), count)
    }

    /// An agent serving one end of a socketpair on a thread; the other end.
    fn start() -> (
        UnixStream,
        BufReader<UnixStream>,
        thread::JoinHandle<io::Result<()>>,
        Arc<AtomicUsize>,
    ) {
        let (host, guest) = UnixStream::pair().unwrap();
        let (agent, count) = agent_counting_poweroffs();
        let t = thread::spawn(move || serve(&agent, guest));
        let reader = BufReader::new(host.try_clone().unwrap());
        (host, reader, t, count)
    }

    fn read_response(r: &mut BufReader<UnixStream>) -> AgentResponse {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.ends_with('\n'), "{line:?}");
        serde_json::from_str(&line).unwrap()
    }

    #[test]
    fn health_ports_poweroff_and_errors_over_a_socketpair() {
        let (mut host, mut r, t, poweroffs) = start();

        // Two requests in one write: answered in order.
        host.write_all(b"{\"id\":1,\"method\":\"health\"}\n{\"id\":2,\"method\":\"ports\"}\r\n")
            .unwrap();
        let h = read_response(&mut r);
        assert_eq!(h.id, 1);
        let h: Health = h.into_result().unwrap();
        assert_eq!(h.protocol, PROTOCOL);
        assert_eq!(h.agent_version, env!("CARGO_PKG_VERSION"));
        assert!(h.uptime_secs > 0.0);
        assert_eq!(h.boot_id.len(), 36, "{h:?}");
        assert!(!h.hostname.is_empty() && !h.kernel_release.is_empty());
        let p = read_response(&mut r);
        assert_eq!(p.id, 2);
        let _: Vec<ListeningPort> = p.into_result().unwrap();

        // Unknown method: an error with the request's id.
        host.write_all(b"{\"id\":3,\"method\":\"reboot\"}\n")
            .unwrap();
        let e = read_response(&mut r);
        assert_eq!(e.id, 3);
        let AgentOutcome::Error(msg) = e.outcome else {
            panic!("{e:?}")
        };
        assert!(msg.contains("unknown variant `reboot`"), "{msg}");

        // Garbage, non-UTF-8, wrong types: errors, id 0 when unreadable.
        host.write_all(b"not json\n\xff\xfe\n{\"id\":\"x\",\"method\":\"health\"}\n[]\n")
            .unwrap();
        for _ in 0..4 {
            let e = read_response(&mut r);
            assert_eq!(e.id, 0);
            assert!(matches!(e.outcome, AgentOutcome::Error(_)), "{e:?}");
        }
        // A missing method keeps the id.
        host.write_all(b"{\"id\":4}\n\n   \n").unwrap();
        let e = read_response(&mut r);
        assert_eq!(e.id, 4);
        assert!(matches!(e.outcome, AgentOutcome::Error(_)));

        // An oversized line, written in pieces, then a good request.
        let writer = {
            let mut host = host.try_clone().unwrap();
            thread::spawn(move || {
                let big = vec![b'a'; MAX_LINE_BYTES / 2];
                for _ in 0..3 {
                    host.write_all(&big).unwrap();
                }
                host.write_all(b"\n{\"id\":5,\"method\":\"health\"}\n")
                    .unwrap();
            })
        };
        let e = read_response(&mut r);
        assert_eq!(e.id, 0);
        let AgentOutcome::Error(msg) = e.outcome else {
            panic!("{e:?}")
        };
        assert!(msg.contains("longer than 65536"), "{msg}");
        let h = read_response(&mut r);
        assert_eq!(h.id, 5);
        assert!(h.into_result::<Health>().is_ok());
        writer.join().unwrap();

        // A line of exactly the limit is read (and is garbage).
        let mut exact = vec![b' '; MAX_LINE_BYTES - 2];
        exact.extend_from_slice(b"{}\n");
        host.write_all(&exact).unwrap();
        let e = read_response(&mut r);
        let AgentOutcome::Error(msg) = e.outcome else {
            panic!("{e:?}")
        };
        assert!(msg.starts_with("invalid request"), "{msg}");

        // poweroff: the answer comes first, then the action.
        assert_eq!(poweroffs.load(Ordering::SeqCst), 0);
        host.write_all(b"{\"id\":6,\"method\":\"poweroff\"}\n")
            .unwrap();
        let ok = read_response(&mut r);
        assert_eq!(ok, AgentResponse::ok(6, &Empty {}));

        // The host hangs up: the loop ends cleanly, the poweroff has run.
        drop(host);
        drop(r);
        t.join().unwrap().unwrap();
        assert_eq!(poweroffs.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn partial_line_at_the_end_is_dropped() {
        let (mut host, mut r, t, _) = start();
        host.write_all(b"{\"id\":1,\"method\":\"health\"}\n{\"id\":2,")
            .unwrap();
        assert_eq!(read_response(&mut r).id, 1);
        host.shutdown(std::net::Shutdown::Write).unwrap();
        t.join().unwrap().unwrap();
        let mut rest = String::new();
        r.read_line(&mut rest).unwrap();
        assert_eq!(rest, "");
    }
}
