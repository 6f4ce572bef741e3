//! The wire protocol between `banger` and `bangerd`.
//!
//! Both binaries depend on this crate and nothing else defines a method name or a
//! parameter shape, so the CLI and the daemon cannot drift apart: a method is a
//! type implementing [`Method`], which ties its name to its params and result.
//!
//! Framing is newline-delimited JSON-RPC 2.0 over a Unix stream socket. File
//! arguments never travel as paths: the client opens the file with its own rights
//! and passes the descriptor with SCM_RIGHTS; params refer to it with [`FdRef`].

pub mod agent;
pub mod error;
pub mod guest;
pub mod jsonrpc;
pub mod methods;
pub mod names;

pub use error::{ErrorKind, RpcError};
pub use methods::Method;

/// Bumped whenever a method changes incompatibly. The CLI refuses to talk to a
/// daemon whose protocol differs from its own.
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest request line the daemon reads. Anything longer is answered with
/// [`ErrorKind::RequestTooLarge`] and discarded up to the next newline.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// Most descriptors one request may carry.
pub const MAX_FDS_PER_REQUEST: usize = 4;

/// A file descriptor passed alongside a request: the index into the descriptors
/// that arrived with that request's line (SCM_RIGHTS), in the order sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FdRef {
    pub fd: u32,
}
