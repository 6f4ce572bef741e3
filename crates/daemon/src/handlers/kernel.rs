//! `kernel.*` handlers.

use std::sync::Arc;

use banger_proto::methods::kernel::{BuildParams, ImportParams, KernelInfo};
use banger_proto::methods::{Empty, NameParams, OpBegun};
use banger_proto::names::validate_name;
use banger_proto::{ErrorKind, RpcError};

use crate::caller::Ctx;
use crate::daemon::Daemon;
use crate::errors::Rpc;
use crate::{builds, caller_files, kernels};

pub async fn import_begin(
    d: Arc<Daemon>,
    mut cx: Ctx,
    p: ImportParams,
) -> Result<OpBegun, RpcError> {
    validate_name(&p.name).map_err(|e| RpcError::invalid_params(e.to_string()))?;
    if d.store.kernel_by_name(&p.name).rpc()?.is_some() {
        return Err(RpcError::already_exists("kernel", &p.name));
    }
    let kernel = caller_files::regular(cx.fds.take(p.kernel, "kernel")?, "kernel").await?;
    let initrd = match p.initrd {
        Some(r) => Some(caller_files::regular(cx.fds.take(r, "initrd")?, "initrd").await?),
        None => None,
    };
    let owner = cx.caller.uid;
    let name = p.name.clone();
    let d2 = d.clone();
    let id = d.ops.begin("kernel.import", &p.name, owner, move |op| {
        kernels::import(d2, op, owner, name, kernel, initrd)
    });
    Ok(OpBegun { operation_id: id })
}

/// `--source DIR` is root only: building a tree runs its Makefiles as root.
/// The tree comes as the caller's `O_DIRECTORY` descriptor, named for `make`
/// as `/proc/self/fd/N`; `--config` comes as a descriptor and is read here.
pub async fn build_begin(d: Arc<Daemon>, mut cx: Ctx, p: BuildParams) -> Result<OpBegun, RpcError> {
    use banger_core::kernel_build::{self, Source};
    use std::os::fd::AsRawFd;
    let (source, source_dir) = match p.source {
        Some(r) => {
            if !cx.caller.is_root() {
                return Err(RpcError::permission_denied(
                    "--source: building a kernel tree runs its Makefiles as root, so only root \
                     may build one; without --source banger builds Debian's linux-source",
                ));
            }
            let shown = p.source_path.clone().unwrap_or_else(|| "DIR".into());
            let (dir, path) =
                caller_files::check_named(cx.fds.take(r, "source")?, "--source", move |dir| {
                    let is_dir = dir
                        .metadata()
                        .map_err(|e| RpcError::internal(format!("fstat source: {e}")))?
                        .is_dir();
                    if !is_dir {
                        return Err(RpcError::invalid_params(
                            "--source: not a directory (pass an unpacked kernel tree)",
                        ));
                    }
                    let path =
                        std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
                    if !path.join("Makefile").is_file() {
                        return Err(RpcError::invalid_params(format!(
                            "--source {shown}: has no Makefile: not a kernel tree"
                        )));
                    }
                    Ok(path)
                })
                .await?;
            (Source::Tree(path), Some(dir))
        }
        None => {
            let tarball = std::path::Path::new(kernel_build::DEBIAN_TARBALL);
            if !tarball.is_file() {
                return Err(RpcError::new(
                    ErrorKind::PreconditionFailed,
                    format!(
                        "Debian's kernel source {} is not installed",
                        tarball.display()
                    ),
                )
                .with("packages", ["linux-source-6.1"])
                .with("hint", "apt-get install linux-source-6.1"));
            }
            (builds::debian_source(), None)
        }
    };
    let fragment = match p.config {
        Some(r) => {
            let bytes = builds::read_fragment(cx.fds.take(r, "config")?).await?;
            builds::check_fragment(&bytes, cx.caller.is_root())?;
            bytes
        }
        None => kernel_build::DEFAULT_FRAGMENT.as_bytes().to_vec(),
    };
    let default_name = kernel_build::default_name(kernel_build::series(&source).as_deref());
    let name = p.name.unwrap_or_else(|| default_name.clone());
    validate_name(&name).map_err(|e| RpcError::invalid_params(e.to_string()))?;
    if let Some(k) = d.store.kernel_by_name(&name).rpc()? {
        if !cx.caller.can_see_shared(k.owner_uid) {
            return Err(RpcError::already_exists("kernel", &name));
        }
    }
    let default_inputs =
        source_dir.is_none() && fragment == kernel_build::DEFAULT_FRAGMENT.as_bytes();
    let job = builds::KernelJob {
        owner_uid: builds::owner_of(cx.caller.uid, default_inputs, name == default_name),
        name: name.clone(),
        source,
        source_dir,
        fragment,
        jobs: p.jobs.filter(|&j| j > 0).unwrap_or(d.config.build.jobs) as usize,
        replace: p.replace,
    };
    let d2 = d.clone();
    let id = d
        .ops
        .begin("kernel.build", &name, cx.caller.uid, move |op| {
            builds::kernel_build_op(d2, op, job)
        });
    Ok(OpBegun { operation_id: id })
}

pub async fn list(d: Arc<Daemon>, cx: Ctx, _p: Empty) -> Result<Vec<KernelInfo>, RpcError> {
    d.store
        .list_kernels()
        .rpc()?
        .iter()
        .filter(|k| cx.caller.can_see_shared(k.owner_uid))
        .map(|k| kernels::info(&d, k))
        .collect()
}

pub async fn show(d: Arc<Daemon>, cx: Ctx, p: NameParams) -> Result<KernelInfo, RpcError> {
    kernels::info(&d, &kernels::find(&d, &cx.caller, &p.name)?)
}

pub async fn delete(d: Arc<Daemon>, cx: Ctx, p: NameParams) -> Result<Empty, RpcError> {
    kernels::delete(&d, &cx.caller, &p.name)?;
    Ok(Empty {})
}
