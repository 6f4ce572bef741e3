//! Host-initiated vsock connections through Firecracker's vsock Unix socket.
//!
//! Firecracker's vsock device has no host kernel side: it listens on a Unix
//! socket (`uds_path` of `PUT /vsock`), and a host process that wants guest
//! port P connects to it and writes `CONNECT P\n`. Firecracker asks the guest;
//! when a guest process accepts, it answers `OK <host port>\n` and from then
//! on the Unix stream carries the vsock stream's bytes. When nothing accepts
//! (no listener on P: the guest's reset), Firecracker closes the Unix
//! connection. A guest that never runs its vsock queues (no driver, still
//! booting, the stub guest here) never sees the request, and Firecracker
//! v1.12 then answers nothing at all (measured: no answer within 2.5 s), so
//! the caller's timeout is what ends the wait. Both say the same thing.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// The longest handshake answer we read (`OK 1073741824\n` is 14 bytes).
const MAX_ANSWER: usize = 64;

/// Why a vsock connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The Unix socket did not accept (Firecracker gone, or no vsock device).
    #[error("cannot connect to Firecracker's vsock socket {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading or writing the handshake failed.
    #[error("vsock handshake on {} failed: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Firecracker closed the connection instead of answering `OK`: nothing
    /// in the guest accepted the connection.
    #[error("nothing in the guest accepted vsock port {port} (Firecracker closed the connection after {} ms)", after.as_millis())]
    Refused { port: u32, after: Duration },
    /// No answer in time: nothing in the guest took the connection (a guest
    /// whose vsock driver never runs — the stub guest here — never even
    /// sees the request).
    #[error("nothing in the guest accepted vsock port {port} within {} ms (Firecracker did not answer CONNECT)", after.as_millis())]
    Timeout { port: u32, after: Duration },
    /// An answer that is not `OK <port>`.
    #[error("unexpected answer to CONNECT {port}: {answer:?}")]
    Protocol { port: u32, answer: String },
}

/// Connects to guest vsock `port` through Firecracker's vsock socket `uds`,
/// all within `timeout`. On success the stream carries the guest
/// connection's bytes (the handshake line has been consumed, nothing more).
pub async fn connect(uds: &Path, port: u32, timeout: Duration) -> Result<UnixStream, VsockError> {
    let start = tokio::time::Instant::now();
    let work = async {
        let mut stream = UnixStream::connect(uds)
            .await
            .map_err(|source| VsockError::Connect {
                path: uds.to_path_buf(),
                source,
            })?;
        let io_err = |source| VsockError::Io {
            path: uds.to_path_buf(),
            source,
        };
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .await
            .map_err(io_err)?;
        // Byte by byte, so that nothing after the answer line is consumed.
        let mut answer = Vec::new();
        loop {
            let mut b = [0u8; 1];
            let n = match stream.read(&mut b).await {
                Ok(n) => n,
                // A reset from Firecracker means the same as an EOF.
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => 0,
                Err(e) => return Err(io_err(e)),
            };
            if n == 0 {
                return Err(VsockError::Refused {
                    port,
                    after: start.elapsed(),
                });
            }
            if b[0] == b'\n' {
                break;
            }
            answer.push(b[0]);
            if answer.len() > MAX_ANSWER {
                break;
            }
        }
        let text = String::from_utf8_lossy(&answer).into_owned();
        match text
            .strip_prefix("OK ")
            .map(str::trim)
            .map(str::parse::<u32>)
        {
            Some(Ok(_host_port)) => Ok(stream),
            _ => Err(VsockError::Protocol { port, answer: text }),
        }
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(r) => r,
        Err(_) => Err(VsockError::Timeout {
            port,
            after: timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::net::UnixListener;

    use super::*;

    /// A fake vsock socket: reads the CONNECT line, checks it, then writes
    /// `reply` (and, if `then` is set, those bytes after it) or closes.
    async fn fake(dir: &Path, reply: Option<&'static [u8]>, then: &'static [u8]) -> PathBuf {
        let path = dir.join("v.sock");
        let listener = UnixListener::bind(&path).unwrap();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut r = BufReader::new(s);
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            assert_eq!(line, "CONNECT 10789\n");
            let mut s = r.into_inner();
            if let Some(reply) = reply {
                s.write_all(reply).await.unwrap();
                s.write_all(then).await.unwrap();
                // Keep the connection open a while.
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
        path
    }

    const T: Duration = Duration::from_secs(2);

    #[tokio::test]
    async fn ok_leaves_the_stream_at_the_guests_first_byte() {
        let dir = tempfile::tempdir().unwrap();
        let path = fake(dir.path(), Some(b"OK 1073741824\n"), b"hello\n").await;
        let mut s = connect(&path, 10789, T).await.unwrap();
        let mut buf = [0u8; 6];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello\n");
    }

    #[tokio::test]
    async fn close_is_refused_garbage_is_a_protocol_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = fake(dir.path(), None, b"").await;
        let e = connect(&path, 10789, T).await.unwrap_err();
        assert!(matches!(e, VsockError::Refused { port: 10789, .. }), "{e}");
        assert!(
            e.to_string().contains("nothing in the guest accepted"),
            "{e}"
        );

        let dir = tempfile::tempdir().unwrap();
        let path = fake(dir.path(), Some(b"NOPE\n"), b"").await;
        let e = connect(&path, 10789, T).await.unwrap_err();
        assert!(matches!(e, VsockError::Protocol { .. }), "{e}");
    }

    #[tokio::test]
    async fn silence_times_out_and_a_missing_socket_fails_to_connect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        let _listener = UnixListener::bind(&path).unwrap();
        let t = std::time::Instant::now();
        let e = connect(&path, 10789, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, VsockError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(1));
        let e = connect(&dir.path().join("none.sock"), 10789, T)
            .await
            .unwrap_err();
        assert!(matches!(e, VsockError::Connect { .. }), "{e}");
    }
}
