//! A blocking JSON-RPC client over the daemon's Unix socket.
//!
//! Files are never sent as paths: [`Client::call_with_fds`] attaches open
//! descriptors (SCM_RIGHTS) to the request line, and the params refer to them
//! by index with `FdRef`. The CLI opens those files itself, with the user's
//! own rights, which is what keeps the root daemon from reading a file for a
//! user who could not.

use std::io::{BufRead, BufReader, IoSlice, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_proto::jsonrpc::{self, ResponseIn};
use banger_proto::methods::Method;
use banger_proto::{ErrorKind, RpcError, MAX_FDS_PER_REQUEST};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The daemon answered with an error.
    #[error("{0}")]
    Rpc(#[from] RpcError),
    /// The socket failed.
    #[error("lost connection to bangerd at {socket}: {source}")]
    Io {
        socket: PathBuf,
        source: std::io::Error,
    },
    /// The daemon sent something that is not a response.
    #[error("bad response from bangerd: {0}")]
    Protocol(String),
}

impl ClientError {
    pub fn rpc(&self) -> Option<&RpcError> {
        match self {
            ClientError::Rpc(e) => Some(e),
            _ => None,
        }
    }

    pub fn is(&self, kind: ErrorKind) -> bool {
        self.rpc().is_some_and(|e| e.is(kind))
    }
}

pub struct Client {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    socket: PathBuf,
    next_id: u64,
}

impl Client {
    /// Connects without any handshake.
    pub fn connect_raw(socket: &Path) -> std::io::Result<Client> {
        let stream = UnixStream::connect(socket)?;
        // Generous: the longest call (op.wait) is bounded by the daemon at 30 s.
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Client {
            stream,
            reader,
            socket: socket.to_path_buf(),
            next_id: 1,
        })
    }

    pub fn call<M: Method>(&mut self, params: &M::Params) -> Result<M::Result, ClientError> {
        self.call_with_fds::<M>(params, &[])
    }

    /// Sends `params` with `fds` attached (params refer to them as `FdRef {fd: i}`).
    pub fn call_with_fds<M: Method>(
        &mut self,
        params: &M::Params,
        fds: &[BorrowedFd<'_>],
    ) -> Result<M::Result, ClientError> {
        let params =
            serde_json::to_value(params).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let value = self.call_value(M::NAME, &params, fds)?;
        serde_json::from_value(value)
            .map_err(|e| ClientError::Protocol(format!("unexpected result for {}: {e}", M::NAME)))
    }

    pub fn call_value(
        &mut self,
        method: &str,
        params: &serde_json::Value,
        fds: &[BorrowedFd<'_>],
    ) -> Result<serde_json::Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let line = jsonrpc::encode_request(id, method, params);
        self.send(&line, fds).map_err(|e| self.io(e))?;
        let mut buf = String::new();
        let n = self.reader.read_line(&mut buf).map_err(|e| self.io(e))?;
        if n == 0 {
            return Err(self.io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the daemon closed the connection",
            )));
        }
        let resp: ResponseIn = serde_json::from_str(&buf)
            .map_err(|e| ClientError::Protocol(format!("{e}: {}", buf.trim())))?;
        if resp.id != serde_json::json!(id) {
            return Err(ClientError::Protocol(format!(
                "response id {} does not match request id {id}",
                resp.id
            )));
        }
        Ok(resp.into_result()?)
    }

    /// Sends one line; the descriptors go with its first byte (one sendmsg),
    /// which is how the daemon ties them to this request.
    fn send(&mut self, line: &[u8], fds: &[BorrowedFd<'_>]) -> std::io::Result<()> {
        if fds.is_empty() {
            return self.stream.write_all(line);
        }
        if fds.len() > MAX_FDS_PER_REQUEST {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("at most {MAX_FDS_PER_REQUEST} files per request"),
            ));
        }
        let mut space = [0u8; rustix::cmsg_space!(ScmRights(MAX_FDS_PER_REQUEST))];
        let mut anc = SendAncillaryBuffer::new(&mut space);
        if !anc.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(std::io::Error::other("ancillary buffer too small"));
        }
        let sent = rustix::net::sendmsg(
            self.stream.as_fd(),
            &[IoSlice::new(line)],
            &mut anc,
            SendFlags::NOSIGNAL,
        )?;
        self.stream.write_all(&line[sent..])
    }

    fn io(&self, source: std::io::Error) -> ClientError {
        ClientError::Io {
            socket: self.socket.clone(),
            source,
        }
    }
}
