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

/// Missing tools and a missing source are the host's setup (with the apt
/// command in the message); a fragment Kconfig could not honour is the
/// caller's; a failed make is reported with the end of its log.
pub fn from_kernel_build(e: banger_core::kernel_build::KernelBuildError) -> RpcError {
    use banger_core::kernel_build::KernelBuildError as K;
    match e {
        K::Cancelled => crate::ops::cancelled(),
        K::MissingTool { ref package, .. } => {
            let hint = format!("apt-get install {package}");
            RpcError::new(ErrorKind::PreconditionFailed, e.to_string())
                .with("packages", package.split(' ').collect::<Vec<_>>())
                .with("hint", hint)
        }
        e @ K::Source { .. } => RpcError::new(ErrorKind::PreconditionFailed, e.to_string()),
        e @ K::Config { .. } => RpcError::invalid_params(e.to_string()),
        e => RpcError::internal(e.to_string()),
    }
}

pub fn from_image_build(e: banger_core::image_build::ImageBuildError) -> RpcError {
    use banger_core::image_build::ImageBuildError as I;
    match e {
        I::Cancelled => crate::ops::cancelled(),
        I::MissingTool { ref package, .. } => {
            let hint = format!("apt-get install {package}");
            RpcError::new(ErrorKind::PreconditionFailed, e.to_string())
                .with("packages", vec![package.clone()])
                .with("hint", hint)
        }
        e @ (I::NotRoot | I::Invalid(_)) => {
            RpcError::new(ErrorKind::PreconditionFailed, e.to_string())
        }
        e @ I::Bootstrap { .. } => RpcError::internal(e.to_string()).with(
            "hint",
            "mmdebstrap needs the Debian mirror (--mirror URL or [build] mirror to use another)",
        ),
        e => RpcError::internal(e.to_string()),
    }
}

#[cfg(test)]
mod build_error_tests {
    use banger_core::image_build::ImageBuildError;
    use banger_core::kernel_build::KernelBuildError;
    use banger_proto::ErrorKind;

    #[test]
    fn missing_build_tools_are_preconditions_naming_packages() {
        let e = super::from_kernel_build(KernelBuildError::MissingTool {
            tool: "flex, bison".into(),
            package: "flex bison".into(),
        });
        assert!(e.is(ErrorKind::PreconditionFailed));
        assert!(
            e.message.contains("apt-get install flex bison"),
            "{}",
            e.message
        );
        assert_eq!(e.data.as_ref().unwrap()["packages"][1], "bison");
        let e = super::from_image_build(ImageBuildError::MissingTool {
            tool: "mmdebstrap".into(),
            package: "mmdebstrap".into(),
        });
        assert!(e.is(ErrorKind::PreconditionFailed));
        assert_eq!(e.hint(), Some("apt-get install mmdebstrap"));
        assert!(super::from_kernel_build(KernelBuildError::Cancelled).is(ErrorKind::Cancelled));
        assert!(super::from_image_build(ImageBuildError::Cancelled).is(ErrorKind::Cancelled));
    }
}
