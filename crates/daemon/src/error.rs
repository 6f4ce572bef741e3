//! The domain's one error type.
//!
//! Every service (crate::vm, crate::images, crate::kernels, crate::builds,
//! crate::ops bodies) returns [`Error`]; nothing below the RPC layer builds a
//! protocol error. Library errors nest with `#[from]` so their types survive
//! up to the one place that turns them into protocol errors
//! (crate::rpc::errors), and decisions such as "was the VM kept?" are made on
//! variants ([`Error::SshTimeout`]), never on the JSON an error becomes.

use banger_core::artifact::ext4::Ext4Error;
use banger_core::artifact::kernel_image::KernelImageError;
use banger_core::artifact::stage::StageError;
use banger_core::image_build::ImageBuildError;
use banger_core::kernel_build::KernelBuildError;
use banger_core::store::StoreError;

use crate::disk::DiskError;
use crate::guest::agent::AgentError;
use crate::privileged::HostError;
use crate::vmm::backend::VmmError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object does not exist, or the caller may not know it does.
    #[error("{what} {name:?} not found")]
    NotFound {
        what: &'static str,
        name: String,
        hint: Option<String>,
    },
    #[error("{what} {name:?} already exists")]
    AlreadyExists {
        what: &'static str,
        name: String,
        hint: Option<String>,
    },
    /// A build produced other content than the registered object of that name.
    #[error(
        "{what} {name:?} already exists with other content; pass --replace to replace it \
         (refused while it is in use) or --name for another name"
    )]
    ContentDiffers { what: &'static str, name: String },
    /// A host port someone else's process listens on.
    #[error("host port {0} is already in use by a process on the host")]
    HostPortInUse(String),
    #[error("{what} {name:?} is in use by {}; delete those first", users.join(", "))]
    InUse {
        what: String,
        name: String,
        users: Vec<String>,
    },
    /// The request itself is wrong (a bad name, size, protocol, ...).
    #[error("{0}")]
    InvalidInput(String),
    /// The object is in a stable state the request cannot act on.
    #[error("{message}")]
    InvalidState {
        message: String,
        state: Option<String>,
        /// What to do instead (`banger vm resume NAME` for a paused VM).
        hint: Option<String>,
    },
    /// Another operation holds the object; retrying later will work.
    #[error("{message}")]
    Busy {
        message: String,
        state: Option<String>,
    },
    #[error("{0}")]
    PermissionDenied(String),
    /// Something the host or the configuration must provide is missing.
    #[error("{message}")]
    Precondition {
        message: String,
        hint: Option<String>,
        /// Debian packages that would provide what is missing.
        packages: Vec<String>,
    },
    /// The VM runs but its sshd never answered; the VM is kept for
    /// inspection, so a create that sees this must not clean up.
    #[error(
        "vm {vm:?} is running but its sshd did not answer on {addr} within {secs}s ({last}); \
         the VM was kept for inspection"
    )]
    SshTimeout {
        vm: String,
        addr: String,
        secs: u64,
        last: String,
    },
    /// The guest agent did not answer (or answered with an error).
    #[error("{message}")]
    Agent {
        vm: String,
        message: String,
        #[source]
        source: AgentError,
    },
    /// A start lost its VMM to an intended end (a concurrent kill or delete).
    #[error("start aborted: the VMM was ended by {why} ({exit})")]
    StartAborted { why: String, exit: String },
    /// A start lost its VMM to a crash.
    #[error("the VMM died during start ({exit}); see `banger vm logs --vmm`")]
    VmmDied { exit: String },
    /// Something took longer than the daemon waits for it.
    #[error("{message}")]
    Timeout {
        message: String,
        hint: Option<String>,
    },
    #[error("operation cancelled")]
    Cancelled,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Vmm(#[from] VmmError),
    #[error(transparent)]
    Disk(#[from] DiskError),
    /// A privileged host operation failed; `context` says what it was for.
    #[error("{context}: {source}")]
    Host {
        context: String,
        #[source]
        source: HostError,
    },
    #[error("kernel: {0}")]
    KernelImage(#[from] KernelImageError),
    #[error(transparent)]
    Stage(#[from] StageError),
    #[error("{what}: {source}")]
    Ext4 {
        what: String,
        #[source]
        source: Ext4Error,
    },
    #[error(transparent)]
    KernelBuild(#[from] KernelBuildError),
    #[error(transparent)]
    ImageBuild(#[from] ImageBuildError),
    #[error(transparent)]
    Pull(#[from] crate::pull::PullError),
    #[error(transparent)]
    Bundle(#[from] banger_core::bundle::BundleError),
    /// A bug or an unexpected host failure; the message is for the log.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn not_found(what: &'static str, name: impl Into<String>) -> Error {
        Error::NotFound {
            what,
            name: name.into(),
            hint: None,
        }
    }

    pub fn already_exists(what: &'static str, name: impl Into<String>) -> Error {
        Error::AlreadyExists {
            what,
            name: name.into(),
            hint: None,
        }
    }

    pub fn invalid(message: impl Into<String>) -> Error {
        Error::InvalidInput(message.into())
    }

    pub fn denied(message: impl Into<String>) -> Error {
        Error::PermissionDenied(message.into())
    }

    pub fn precondition(message: impl Into<String>) -> Error {
        Error::Precondition {
            message: message.into(),
            hint: None,
            packages: Vec::new(),
        }
    }

    /// A precondition satisfied by installing Debian packages.
    pub fn missing_packages(message: impl Into<String>, packages: &[&str]) -> Error {
        Error::Precondition {
            message: message.into(),
            hint: Some(format!("apt-get install {}", packages.join(" "))),
            packages: packages.iter().map(|p| p.to_string()).collect(),
        }
    }

    pub fn timeout(message: impl Into<String>) -> Error {
        Error::Timeout {
            message: message.into(),
            hint: None,
        }
    }

    pub fn busy(message: impl Into<String>) -> Error {
        Error::Busy {
            message: message.into(),
            state: None,
        }
    }

    pub fn internal(message: impl Into<String>) -> Error {
        Error::Internal(message.into())
    }

    pub fn host(context: impl Into<String>, source: HostError) -> Error {
        Error::Host {
            context: context.into(),
            source,
        }
    }

    pub fn ext4(what: impl Into<String>, source: Ext4Error) -> Error {
        Error::Ext4 {
            what: what.into(),
            source,
        }
    }

    /// Adds advice for variants that carry some; others are unchanged.
    pub fn hint(mut self, text: impl Into<String>) -> Error {
        match &mut self {
            Error::NotFound { hint, .. }
            | Error::AlreadyExists { hint, .. }
            | Error::Precondition { hint, .. }
            | Error::InvalidState { hint, .. }
            | Error::Timeout { hint, .. } => *hint = Some(text.into()),
            _ => {}
        }
        self
    }

    /// Whether the error left its VM running on purpose (see
    /// [`Error::SshTimeout`]).
    pub fn kept_vm(&self) -> bool {
        matches!(self, Error::SshTimeout { .. })
    }

    pub fn is_cancelled(&self) -> bool {
        match self {
            Error::Cancelled => true,
            Error::Disk(e) => e.is_cancelled(),
            Error::Stage(StageError::Cancelled)
            | Error::KernelImage(KernelImageError::Cancelled)
            | Error::KernelBuild(KernelBuildError::Cancelled)
            | Error::ImageBuild(ImageBuildError::Cancelled) => true,
            Error::Pull(e) => e.is_cancelled(),
            _ => false,
        }
    }
}

/// `cannot create DIR: ...` and friends, for file chores the daemon does
/// itself (its own directories, not a caller's files).
pub fn io(what: impl std::fmt::Display, path: &std::path::Path, e: std::io::Error) -> Error {
    Error::Internal(format!("{what} {}: {e}", path.display()))
}
