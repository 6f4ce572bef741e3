//! A small typed client for QMP, QEMU's JSON control protocol, over a Unix
//! socket.
//!
//! The protocol (QEMU's `docs/interop/qmp-spec`): on connect the server sends
//! a greeting (`{"QMP": {"version": ..., "capabilities": [...]}}`) and accepts
//! only `qmp_capabilities` until that is sent; then each
//! `{"execute": CMD, "arguments": {...}, "id": ID}` is answered by
//! `{"return": ..., "id": ID}` or `{"error": {"class", "desc"}, "id": ID}`.
//! Asynchronous events (`{"event": ..., "data": ..., "timestamp": ...}`) may
//! arrive at any time, also between a command and its answer: they are kept
//! (see [`Qmp::events`]) and skipped while waiting. Messages are single lines.
//!
//! A QMP socket serves one client at a time (a second connection waits in the
//! listen backlog until the first closes), so callers connect, run a command
//! or two and drop the client. Every call is bounded by the client's timeout.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;

/// The timeout the VMM backend uses for one QMP exchange (QEMU answers in
/// well under a millisecond unless its main loop is stuck).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest QMP line we accept (QEMU's answers to our commands are a few
/// hundred bytes).
const MAX_LINE: usize = 1 << 20;

/// Events kept per connection; older ones are dropped.
const MAX_EVENTS: usize = 64;

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// The socket did not accept the connection (QEMU not up yet, or gone).
    #[error("cannot connect to the QMP socket {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading or writing the connection failed.
    #[error("QMP I/O error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// QEMU did not answer in time.
    #[error("QMP {what} on {} timed out after {} ms", path.display(), after.as_millis())]
    Timeout {
        path: PathBuf,
        what: String,
        after: Duration,
    },
    /// QEMU closed the connection (it exited, or another client holds it).
    #[error("QMP socket {} closed during {what}", path.display())]
    Closed { path: PathBuf, what: String },
    /// QEMU refused the command; `desc` is its message.
    #[error("QMP {command} failed: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    /// A message that is not QMP, or an answer of the wrong shape.
    #[error("unexpected QMP message on {}: {detail}", path.display())]
    Protocol { path: PathBuf, detail: String },
}

impl QmpError {
    /// Whether nothing was listening on the socket (so it is worth retrying
    /// while QEMU starts).
    pub fn is_connect(&self) -> bool {
        matches!(self, QmpError::Connect { .. })
    }
}

/// `query-version`: QEMU's version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub qemu: VersionTriple,
    /// The distribution's package string (e.g. `Debian 1:7.2+dfsg-7`).
    #[serde(default)]
    pub package: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionTriple {
    pub major: u32,
    pub minor: u32,
    pub micro: u32,
}

/// The greeting QEMU sends on connect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Greeting {
    pub version: VersionInfo,
    #[serde(default)]
    pub capabilities: Vec<Value>,
}

/// `query-status`: the run state (`running`, `paused`, `prelaunch` before
/// the first `cont` of a QEMU started with `-S`, `shutdown`,
/// `internal-error`, `guest-panicked`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusInfo {
    pub status: String,
    pub running: bool,
}

/// An asynchronous event QEMU sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub event: String,
    #[serde(default)]
    pub data: Value,
}

/// One QMP connection, past the capabilities negotiation.
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    timeout: Duration,
    next_id: u64,
    greeting: Greeting,
    events: Vec<Event>,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("path", &self.path)
            .field("timeout", &self.timeout)
            .field("next_id", &self.next_id)
            .finish_non_exhaustive()
    }
}

impl Qmp {
    /// Connects, reads the greeting and sends `qmp_capabilities`, all within
    /// `timeout`; `timeout` then bounds each later call.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let path_buf = path.to_path_buf();
        let what = "greeting";
        let stream = UnixStream::connect(path)
            .await
            .map_err(|source| QmpError::Connect {
                path: path_buf.clone(),
                source,
            })?;
        let (read, write) = stream.into_split();
        let placeholder = Greeting {
            version: VersionInfo {
                qemu: VersionTriple {
                    major: 0,
                    minor: 0,
                    micro: 0,
                },
                package: String::new(),
            },
            capabilities: Vec::new(),
        };
        let mut qmp = Qmp {
            path: path_buf,
            reader: BufReader::new(read),
            writer: write,
            timeout,
            next_id: 1,
            greeting: placeholder,
            events: Vec::new(),
        };
        let handshake = async {
            let msg = qmp.read_message(what).await?;
            let greeting = msg
                .get("QMP")
                .cloned()
                .and_then(|g| serde_json::from_value::<Greeting>(g).ok())
                .ok_or_else(|| qmp.protocol(format!("expected a QMP greeting, got {msg}")))?;
            qmp.greeting = greeting;
            qmp.exchange("qmp_capabilities", None).await.map(drop)
        };
        let outcome = tokio::time::timeout(timeout, handshake).await;
        match outcome {
            Ok(r) => r?,
            Err(_) => return Err(qmp.timed_out("greeting and qmp_capabilities")),
        }
        Ok(qmp)
    }

    /// The greeting QEMU sent (its version).
    pub fn greeting(&self) -> &Greeting {
        &self.greeting
    }

    /// Events received on this connection so far (the last 64).
    pub fn events(&self) -> &[Event] {
        &self.events
    }

    /// Runs `command` with `arguments` and returns the raw `return` value.
    pub async fn execute_raw(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let timeout = self.timeout;
        let outcome = tokio::time::timeout(timeout, self.exchange(command, arguments)).await;
        outcome.unwrap_or_else(|_| Err(self.timed_out(command)))
    }

    /// Runs `command` and decodes its `return` value as `T`.
    pub async fn execute<T: DeserializeOwned>(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<T, QmpError> {
        let value = self.execute_raw(command, arguments).await?;
        serde_json::from_value(value.clone())
            .map_err(|e| self.protocol(format!("bad {command} answer {value}: {e}")))
    }

    /// `query-status`.
    pub async fn query_status(&mut self) -> Result<StatusInfo, QmpError> {
        self.execute("query-status", None).await
    }

    /// `query-version`.
    pub async fn query_version(&mut self) -> Result<VersionInfo, QmpError> {
        self.execute("query-version", None).await
    }

    /// `stop`: pauses the vCPUs (the status becomes `paused`). Pausing a
    /// paused VM is not an error.
    pub async fn stop(&mut self) -> Result<(), QmpError> {
        self.execute_raw("stop", None).await.map(drop)
    }

    /// `cont`: starts or resumes the vCPUs (also the first start of a QEMU
    /// launched with `-S`).
    pub async fn cont(&mut self) -> Result<(), QmpError> {
        self.execute_raw("cont", None).await.map(drop)
    }

    /// `system_powerdown`: presses the ACPI power button. QEMU answers
    /// success even where the machine has no ACPI (microvm with `acpi=off`),
    /// where nothing happens in the guest.
    pub async fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute_raw("system_powerdown", None).await.map(drop)
    }

    /// `quit`: QEMU exits at once. The connection closing before the answer
    /// arrives counts as success.
    pub async fn quit(mut self) -> Result<(), QmpError> {
        match self.execute_raw("quit", None).await {
            Ok(_) | Err(QmpError::Closed { .. }) => Ok(()),
            Err(QmpError::Io { source, .. }) if source.kind() == io::ErrorKind::ConnectionReset => {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Sends one command and waits for its answer (no timeout of its own).
    async fn exchange(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .await
            .map_err(|source| self.io(source))?;
        loop {
            let mut answer = self.read_message(command).await?;
            if let Some(event) = answer.get("event").and_then(Value::as_str) {
                let event = Event {
                    event: event.to_string(),
                    data: answer.get("data").cloned().unwrap_or(Value::Null),
                };
                if self.events.len() == MAX_EVENTS {
                    self.events.remove(0);
                }
                self.events.push(event);
                continue;
            }
            // An answer without an id is QEMU's reply to a line it could not
            // parse at all; on this connection that can only be ours.
            match answer.get("id") {
                Some(v) if v.as_u64() != Some(id) => {
                    tracing::debug!(%answer, id, "skipping a QMP answer to another command");
                    continue;
                }
                _ => {}
            }
            if let Some(value) = answer.get_mut("return") {
                return Ok(value.take());
            }
            if let Some(err) = answer.get("error") {
                let field = |k: &str| {
                    err.get(k)
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string()
                };
                return Err(QmpError::Command {
                    command: command.to_string(),
                    class: field("class"),
                    desc: field("desc"),
                });
            }
            return Err(self.protocol(format!(
                "answer to {command} is neither return nor error: {answer}"
            )));
        }
    }

    /// Reads one line and parses it as a JSON object.
    async fn read_message(&mut self, what: &str) -> Result<Value, QmpError> {
        let mut buf = Vec::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|source| self.io(source))?;
        if n == 0 {
            return Err(QmpError::Closed {
                path: self.path.clone(),
                what: what.to_string(),
            });
        }
        if buf.last() != Some(&b'\n') {
            return Err(if n >= MAX_LINE {
                self.protocol(format!("a line longer than {MAX_LINE} bytes"))
            } else {
                QmpError::Closed {
                    path: self.path.clone(),
                    what: what.to_string(),
                }
            });
        }
        let value: Value = serde_json::from_slice(&buf).map_err(|e| {
            self.protocol(format!(
                "not JSON ({e}): {}",
                String::from_utf8_lossy(&buf[..buf.len().min(200)])
            ))
        })?;
        if !value.is_object() {
            return Err(self.protocol(format!("not a JSON object: {value}")));
        }
        Ok(value)
    }

    fn io(&self, source: io::Error) -> QmpError {
        QmpError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn protocol(&self, detail: String) -> QmpError {
        QmpError::Protocol {
            path: self.path.clone(),
            detail,
        }
    }

    fn timed_out(&self, what: &str) -> QmpError {
        QmpError::Timeout {
            path: self.path.clone(),
            what: what.to_string(),
            after: self.timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    use super::*;

    const GREETING: &str = r#"{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18"}, "capabilities": ["oob"]}}"#;

    /// A scripted QMP server: sends the greeting, then for each command it
    /// reads answers with `reply(command, id)` (lines to send back, `None`
    /// to close the connection).
    fn fake_server(
        path: &Path,
        reply: impl Fn(&str, &Value) -> Option<Vec<String>> + Send + 'static,
    ) -> tokio::task::JoinHandle<Vec<String>> {
        let listener = UnixListener::bind(path).unwrap();
        tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let (r, mut w) = stream.into_split();
            w.write_all(format!("{GREETING}\r\n").as_bytes())
                .await
                .unwrap();
            let mut lines = BufReader::new(r).lines();
            let mut seen = Vec::new();
            while let Ok(Some(line)) = lines.next_line().await {
                let msg: Value = serde_json::from_str(&line).unwrap();
                let cmd = msg["execute"].as_str().unwrap().to_string();
                seen.push(cmd.clone());
                match reply(&cmd, &msg["id"]) {
                    Some(out) => {
                        for l in out {
                            w.write_all(format!("{l}\r\n").as_bytes()).await.unwrap();
                        }
                    }
                    None => break,
                }
            }
            seen
        })
    }

    fn ret(id: &Value, value: &str) -> String {
        format!(r#"{{"return": {value}, "id": {id}}}"#)
    }

    #[tokio::test]
    async fn negotiates_skips_events_and_decodes_answers() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        let server = fake_server(&sock, |cmd, id| {
            let event = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}"#;
            Some(match cmd {
                "qmp_capabilities" => vec![ret(id, "{}")],
                "stop" => vec![event.to_string(), ret(id, "{}")],
                "query-status" => vec![
                    // An answer to someone else's id is skipped.
                    ret(&json!(999), "{}"),
                    ret(
                        id,
                        r#"{"status": "paused", "singlestep": false, "running": false}"#,
                    ),
                ],
                "query-version" => vec![ret(
                    id,
                    r#"{"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "x"}"#,
                )],
                "cont" => vec![format!(
                    r#"{{"error": {{"class": "GenericError", "desc": "Resetting the Virtual Machine is required"}}, "id": {id}}}"#
                )],
                "quit" => return None,
                _ => vec![format!(
                    r#"{{"error": {{"class": "CommandNotFound", "desc": "The command {cmd} has not been found"}}, "id": {id}}}"#
                )],
            })
        });
        let mut q = Qmp::connect(&sock, DEFAULT_TIMEOUT).await.unwrap();
        assert_eq!(q.greeting().version.qemu.major, 7);
        assert_eq!(q.greeting().version.package, "Debian 1:7.2+dfsg-7+deb12u18");
        q.stop().await.unwrap();
        assert_eq!(q.events()[0].event, "STOP");
        let st = q.query_status().await.unwrap();
        assert_eq!(
            st,
            StatusInfo {
                status: "paused".into(),
                running: false
            }
        );
        assert_eq!(q.query_version().await.unwrap().qemu.minor, 2);
        let err = q.cont().await.unwrap_err();
        assert!(matches!(&err, QmpError::Command { class, .. } if class == "GenericError"));
        assert_eq!(
            err.to_string(),
            "QMP cont failed: Resetting the Virtual Machine is required"
        );
        let err = q.execute_raw("no-such", None).await.unwrap_err();
        assert!(err.to_string().contains("has not been found"), "{err}");
        // The server closes on quit without answering: still success.
        q.quit().await.unwrap();
        assert_eq!(
            server.await.unwrap(),
            [
                "qmp_capabilities",
                "stop",
                "query-status",
                "query-version",
                "cont",
                "no-such",
                "quit"
            ]
        );
    }

    #[tokio::test]
    async fn every_call_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("qmp.sock");
        // Answers the negotiation, then never again.
        let _server = fake_server(&sock, |cmd, id| {
            Some(if cmd == "qmp_capabilities" {
                vec![ret(id, "{}")]
            } else {
                vec![]
            })
        });
        let mut q = Qmp::connect(&sock, Duration::from_millis(200))
            .await
            .unwrap();
        let t = Instant::now();
        let err = q.query_status().await.unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
        assert!(t.elapsed() < Duration::from_secs(2));
        assert!(err.to_string().contains("query-status"), "{err}");

        // A listener that never sends a greeting.
        let silent = dir.path().join("silent.sock");
        let _l = UnixListener::bind(&silent).unwrap();
        let err = Qmp::connect(&silent, Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(matches!(err, QmpError::Timeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn connect_errors_are_distinguished() {
        let dir = tempfile::tempdir().unwrap();
        let err = Qmp::connect(&dir.path().join("absent.sock"), DEFAULT_TIMEOUT)
            .await
            .unwrap_err();
        assert!(err.is_connect(), "{err}");

        // Something that is not QMP.
        let sock = dir.path().join("http.sock");
        let listener = UnixListener::bind(&sock).unwrap();
        let srv = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"HTTP/1.1 400 Bad Request\r\n").await.unwrap();
            s
        });
        let err = Qmp::connect(&sock, DEFAULT_TIMEOUT).await.unwrap_err();
        assert!(matches!(err, QmpError::Protocol { .. }), "{err}");
        drop(srv.await);

        // Closed right after the greeting.
        let sock = dir.path().join("closing.sock");
        let server = fake_server(&sock, |_, _| None);
        let err = Qmp::connect(&sock, DEFAULT_TIMEOUT).await.unwrap_err();
        assert!(matches!(err, QmpError::Closed { .. }), "{err}");
        server.await.unwrap();
    }
}
