//! Turning library errors into protocol errors, in one place, so every
//! handler reports a given failure the same way.

use banger_core::store::StoreError;
use banger_proto::{ErrorKind, RpcError};

pub fn from_store(e: StoreError) -> RpcError {
    match e {
        StoreError::AlreadyExists { what, name } => RpcError::already_exists(what, &name),
        StoreError::NotFound { what, key } => RpcError::not_found(what, &key),
        StoreError::InUse { what, name, users } => RpcError::new(
            ErrorKind::InvalidState,
            format!(
                "{what} {name:?} is in use by {}; delete those first",
                users.join(", ")
            ),
        )
        .with("resource", what)
        .with("name", name)
        .with("used_by", users),
        e @ StoreError::NewerSchema { .. } => {
            RpcError::new(ErrorKind::PreconditionFailed, e.to_string())
        }
        e => RpcError::internal(e.to_string()),
    }
}

/// `?`-friendly conversion for results from the store and from `anyhow`.
pub trait Rpc<T> {
    fn rpc(self) -> Result<T, RpcError>;
}

impl<T> Rpc<T> for Result<T, StoreError> {
    fn rpc(self) -> Result<T, RpcError> {
        self.map_err(from_store)
    }
}

impl<T> Rpc<T> for anyhow::Result<T> {
    fn rpc(self) -> Result<T, RpcError> {
        self.map_err(|e| RpcError::internal(format!("{e:#}")))
    }
}

/// Kernel image problems are the caller's file's fault, except I/O and cancel.
pub fn from_kernel_image(e: banger_core::artifact::kernel_image::KernelImageError) -> RpcError {
    use banger_core::artifact::kernel_image::KernelImageError as K;
    match e {
        K::Cancelled => crate::ops::cancelled(),
        K::Io { .. } => RpcError::internal(e.to_string()),
        e => RpcError::invalid_params(format!("kernel: {e}")),
    }
}

pub fn from_stage(e: banger_core::artifact::stage::StageError) -> RpcError {
    use banger_core::artifact::stage::StageError as S;
    match e {
        S::Cancelled => crate::ops::cancelled(),
        e @ S::NoSpace { .. } => RpcError::new(ErrorKind::PreconditionFailed, e.to_string()).with(
            "hint",
            "free space in the state directory (see `banger doctor`)",
        ),
        e @ S::NotRegular { .. } => RpcError::invalid_params(e.to_string()),
        e => RpcError::internal(e.to_string()),
    }
}

pub fn from_ext4(e: banger_core::artifact::ext4::Ext4Error, what: &str) -> RpcError {
    use banger_core::artifact::ext4::Ext4Error as E;
    match e {
        E::Io { .. } => RpcError::internal(format!("{what}: {e}")),
        e => RpcError::invalid_params(format!("{what}: {e}")),
    }
}

pub fn from_vmm(e: crate::vmm::backend::VmmError) -> RpcError {
    use crate::vmm::backend::VmmError as V;
    match e {
        V::Unavailable(m) => RpcError::new(ErrorKind::PreconditionFailed, m).with(
            "hint",
            "run `banger doctor`; ./install.sh installs a supported Firecracker",
        ),
        V::Unsupported(m) => RpcError::new(ErrorKind::PreconditionFailed, m),
        V::Launch(m) | V::Api(m) | V::AgentChannel(m) => RpcError::internal(m),
    }
}

pub fn from_disk(e: crate::disk::DiskError) -> RpcError {
    if e.is_no_space() {
        return RpcError::new(
            ErrorKind::PreconditionFailed,
            format!("not enough space: {e}"),
        )
        .with(
            "hint",
            "free space in the state directory (see `banger doctor`)",
        );
    }
    if e.is_cancelled() {
        return crate::ops::cancelled();
    }
    match e {
        e @ crate::disk::DiskError::Unsupported { .. } => {
            RpcError::new(ErrorKind::PreconditionFailed, e.to_string())
        }
        e @ crate::disk::DiskError::Shrink { .. } => RpcError::invalid_params(e.to_string()),
        e => RpcError::internal(e.to_string()),
    }
}
