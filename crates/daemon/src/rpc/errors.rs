//! Domain errors to protocol errors: the one place an [`RpcError`] is made
//! from something the daemon did, so every handler and operation reports a
//! given failure the same way (kind, message, `hint`, structured `data`).

use banger_core::artifact::ext4::Ext4Error;
use banger_core::artifact::kernel_image::KernelImageError;
use banger_core::artifact::stage::StageError;
use banger_core::image_build::ImageBuildError;
use banger_core::kernel_build::KernelBuildError;
use banger_core::store::StoreError;
use banger_proto::{ErrorKind, RpcError};

use crate::disk::DiskError;
use crate::error::Error;
use crate::guest::agent::AgentError;
use crate::vmm::backend::VmmError;

const FREE_SPACE: &str = "free space in the state directory (see `banger doctor`)";

impl From<Error> for RpcError {
    fn from(e: Error) -> RpcError {
        to_rpc(e)
    }
}

fn with_hint(e: RpcError, hint: Option<String>) -> RpcError {
    match hint {
        Some(h) => e.with("hint", h),
        None => e,
    }
}

pub fn to_rpc(e: Error) -> RpcError {
    let message = e.to_string();
    match e {
        Error::NotFound { what, name, hint } => with_hint(RpcError::not_found(what, &name), hint),
        Error::AlreadyExists { what, name, hint } => {
            with_hint(RpcError::already_exists(what, &name), hint)
        }
        Error::ContentDiffers { what, name } => RpcError::new(ErrorKind::AlreadyExists, message)
            .with("resource", what)
            .with("name", name),
        Error::InUse { what, name, users } => RpcError::new(ErrorKind::InvalidState, message)
            .with("resource", what)
            .with("name", name)
            .with("used_by", users),
        Error::HostPortInUse(_) => RpcError::new(ErrorKind::AlreadyExists, message),
        Error::InvalidInput(_) => RpcError::invalid_params(message),
        Error::InvalidState { state, hint, .. } => {
            with_hint(with_state(ErrorKind::InvalidState, message, state), hint)
        }
        Error::Busy { state, .. } => with_state(ErrorKind::Busy, message, state),
        Error::PermissionDenied(_) => RpcError::permission_denied(message),
        Error::Precondition { hint, packages, .. } => {
            let e = RpcError::new(ErrorKind::PreconditionFailed, message);
            let e = if packages.is_empty() {
                e
            } else {
                e.with("packages", packages)
            };
            with_hint(e, hint)
        }
        Error::SshTimeout { vm, .. } => RpcError::new(ErrorKind::Timeout, message)
            .with(
                "hint",
                format!("see the guest console: banger vm logs {vm}"),
            )
            .with("kept", true),
        Error::Agent { vm, source, .. } => {
            let kind = match source {
                AgentError::Timeout { .. } => ErrorKind::Timeout,
                AgentError::Channel(_) | AgentError::Closed { .. } => ErrorKind::PreconditionFailed,
                _ => ErrorKind::Internal,
            };
            RpcError::new(kind, message).with(
                "hint",
                format!("see the guest console: banger vm logs {vm}"),
            )
        }
        Error::StartAborted { .. } | Error::Cancelled => {
            RpcError::new(ErrorKind::Cancelled, message)
        }
        Error::VmmDied { .. } | Error::Internal(_) => RpcError::internal(message),
        Error::Timeout { hint, .. } => with_hint(RpcError::new(ErrorKind::Timeout, message), hint),
        Error::Store(e) => from_store(e),
        Error::Vmm(e) => from_vmm(e),
        Error::Disk(e) => from_disk(e),
        Error::Host { .. } => RpcError::new(ErrorKind::PreconditionFailed, message),
        Error::KernelImage(e) => match e {
            KernelImageError::Cancelled => cancelled(),
            KernelImageError::Io { .. } => RpcError::internal(message),
            _ => RpcError::invalid_params(message),
        },
        Error::Stage(e) => from_stage(e),
        Error::Ext4 { source, .. } => match source {
            Ext4Error::Io { .. } => RpcError::internal(message),
            _ => RpcError::invalid_params(message),
        },
        Error::KernelBuild(e) => from_kernel_build(e),
        Error::ImageBuild(e) => from_image_build(e),
        Error::Pull(e) => from_pull(e),
        Error::Bundle(e) => from_bundle(e),
    }
}

fn from_bundle(e: banger_core::bundle::BundleError) -> RpcError {
    use banger_core::bundle::BundleError as B;
    match e {
        B::Cancelled => cancelled(),
        B::Invalid(_) | B::Corrupt { .. } => RpcError::invalid_params(e.to_string()),
        B::Io { .. } => RpcError::internal(e.to_string()),
    }
}

fn from_pull(e: crate::pull::PullError) -> RpcError {
    use crate::pull::PullError as P;
    use banger_core::oci::cache::BlobError;
    use banger_core::oci::unpack::UnpackError;
    let message = e.to_string();
    match e {
        _ if e.is_cancelled() => cancelled(),
        P::Refused(_)
        | P::Blob(
            BlobError::TooLong { .. } | BlobError::TooShort { .. } | BlobError::Mismatch { .. },
        )
        | P::Unpack(UnpackError::Refused { .. } | UnpackError::TooBig { .. }) => {
            RpcError::invalid_params(message)
        }
        P::NotFound(_) => RpcError::new(ErrorKind::NotFound, message),
        P::Unauthorized(_) => RpcError::new(ErrorKind::PermissionDenied, message),
        P::Registry(_) | P::Transient(_) => RpcError::new(ErrorKind::PreconditionFailed, message),
        _ => RpcError::internal(message),
    }
}

fn with_state(kind: ErrorKind, message: String, state: Option<String>) -> RpcError {
    let e = RpcError::new(kind, message);
    match state {
        Some(s) => e.with("state", s),
        None => e,
    }
}

fn cancelled() -> RpcError {
    RpcError::new(ErrorKind::Cancelled, Error::Cancelled.to_string())
}

fn from_store(e: StoreError) -> RpcError {
    match e {
        StoreError::AlreadyExists { what, name } => RpcError::already_exists(what, &name),
        StoreError::NotFound { what, key } => RpcError::not_found(what, &key),
        StoreError::InUse { what, name, users } => to_rpc(Error::InUse {
            what: what.to_string(),
            name,
            users,
        }),
        e @ StoreError::NewerSchema { .. } => {
            RpcError::new(ErrorKind::PreconditionFailed, e.to_string())
        }
        e => RpcError::internal(e.to_string()),
    }
}

fn from_stage(e: StageError) -> RpcError {
    match e {
        StageError::Cancelled => cancelled(),
        e @ StageError::NoSpace { .. } => {
            RpcError::new(ErrorKind::PreconditionFailed, e.to_string()).with("hint", FREE_SPACE)
        }
        e @ StageError::NotRegular { .. } => RpcError::invalid_params(e.to_string()),
        e => RpcError::internal(e.to_string()),
    }
}

fn from_vmm(e: VmmError) -> RpcError {
    match e {
        e @ VmmError::Unavailable(_) => RpcError::new(ErrorKind::PreconditionFailed, e.to_string())
            .with(
                "hint",
                "run `banger doctor`; ./install.sh installs a supported Firecracker",
            ),
        e @ VmmError::Unsupported(_) => RpcError::new(ErrorKind::PreconditionFailed, e.to_string()),
        e @ (VmmError::FirecrackerLaunch(_) | VmmError::QemuLaunch(_) | VmmError::Launch(_)) => {
            RpcError::internal(e.to_string()).with(
                "hint",
                "the VMM's own output is in `banger vm logs NAME`; `banger doctor` checks the host",
            )
        }
        e => RpcError::internal(e.to_string()),
    }
}

fn from_disk(e: DiskError) -> RpcError {
    if e.is_no_space() {
        return RpcError::new(
            ErrorKind::PreconditionFailed,
            format!("not enough space: {e}"),
        )
        .with("hint", FREE_SPACE);
    }
    if e.is_cancelled() {
        return cancelled();
    }
    match e {
        e @ DiskError::Unsupported { .. } => {
            RpcError::new(ErrorKind::PreconditionFailed, e.to_string())
        }
        e @ DiskError::Shrink { .. } => RpcError::invalid_params(e.to_string()),
        e => RpcError::internal(e.to_string()),
    }
}

/// Missing tools and a missing source are the host's setup (with the apt
/// command in the message); a fragment Kconfig could not honour is the
/// caller's; a failed make is reported with the end of its log.
fn from_kernel_build(e: KernelBuildError) -> RpcError {
    match e {
        KernelBuildError::Cancelled => cancelled(),
        KernelBuildError::MissingTool { ref package, .. } => {
            let hint = format!("apt-get install {package}");
            RpcError::new(ErrorKind::PreconditionFailed, e.to_string())
                .with("packages", package.split(' ').collect::<Vec<_>>())
                .with("hint", hint)
        }
        e @ KernelBuildError::Source { .. } => {
            RpcError::new(ErrorKind::PreconditionFailed, e.to_string())
        }
        e @ KernelBuildError::Config { .. } => RpcError::invalid_params(e.to_string()),
        e => RpcError::internal(e.to_string()),
    }
}

fn from_image_build(e: ImageBuildError) -> RpcError {
    match e {
        ImageBuildError::Cancelled => cancelled(),
        ImageBuildError::MissingTool { ref package, .. } => {
            let hint = format!("apt-get install {package}");
            RpcError::new(ErrorKind::PreconditionFailed, e.to_string())
                .with("packages", vec![package.clone()])
                .with("hint", hint)
        }
        e @ (ImageBuildError::NotRoot | ImageBuildError::Invalid(_)) => {
            RpcError::new(ErrorKind::PreconditionFailed, e.to_string())
        }
        e @ ImageBuildError::Bootstrap { .. } => RpcError::internal(e.to_string()).with(
            "hint",
            "mmdebstrap needs the Debian mirror (--mirror URL or [build] mirror to use another)",
        ),
        e => RpcError::internal(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use banger_core::image_build::ImageBuildError;
    use banger_core::kernel_build::KernelBuildError;
    use banger_proto::{ErrorKind, RpcError};

    use crate::error::Error;

    #[test]
    fn missing_build_tools_are_preconditions_naming_packages() {
        let e = RpcError::from(Error::from(KernelBuildError::MissingTool {
            tool: "flex, bison".into(),
            package: "flex bison".into(),
        }));
        assert!(e.is(ErrorKind::PreconditionFailed));
        assert!(
            e.message.contains("apt-get install flex bison"),
            "{}",
            e.message
        );
        assert_eq!(e.data.as_ref().unwrap()["packages"][1], "bison");
        let e = RpcError::from(Error::from(ImageBuildError::MissingTool {
            tool: "mmdebstrap".into(),
            package: "mmdebstrap".into(),
        }));
        assert!(e.is(ErrorKind::PreconditionFailed));
        assert_eq!(e.hint(), Some("apt-get install mmdebstrap"));
        assert!(RpcError::from(Error::from(KernelBuildError::Cancelled)).is(ErrorKind::Cancelled));
        assert!(RpcError::from(Error::from(ImageBuildError::Cancelled)).is(ErrorKind::Cancelled));
    }

    #[test]
    fn a_kept_vm_says_so_in_its_data_and_the_domain_decides_on_the_variant() {
        let e = Error::SshTimeout {
            vm: "web".into(),
            addr: "10.0.0.2:22".into(),
            secs: 30,
            last: "refused".into(),
        };
        assert!(e.kept_vm());
        let r = RpcError::from(e);
        assert!(r.is(ErrorKind::Timeout));
        assert_eq!(r.data.as_ref().unwrap()["kept"], true);
        assert!(!Error::Cancelled.kept_vm());
    }

    #[test]
    fn kinds_follow_variants() {
        let cases = [
            (Error::not_found("vm", "x"), ErrorKind::NotFound),
            (Error::already_exists("vm", "x"), ErrorKind::AlreadyExists),
            (Error::invalid("bad"), ErrorKind::InvalidParams),
            (Error::precondition("no"), ErrorKind::PreconditionFailed),
            (
                Error::PermissionDenied("no".into()),
                ErrorKind::PermissionDenied,
            ),
            (
                Error::Busy {
                    message: "busy".into(),
                    state: Some("starting".into()),
                },
                ErrorKind::Busy,
            ),
            (Error::Cancelled, ErrorKind::Cancelled),
            (Error::internal("bug"), ErrorKind::Internal),
        ];
        for (e, kind) in cases {
            let r = RpcError::from(e);
            assert!(r.is(kind), "{r:?} is not {kind:?}");
        }
    }
}
