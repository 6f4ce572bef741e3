//! `kernel.*` handlers.

use std::sync::Arc;

use crate::error::Error;
use banger_proto::methods::kernel::{BuildParams, ImportParams, KernelInfo};
use banger_proto::methods::op::{KernelBuild, KernelImport};
use banger_proto::methods::{Empty, NameParams, OpBegun};
use banger_proto::names::validate_name;

use crate::app::App;
use crate::caller::Ctx;
use crate::{builds, caller_files, kernels};

pub async fn import_begin(d: Arc<App>, mut cx: Ctx, p: ImportParams) -> Result<OpBegun, Error> {
    validate_name(&p.name).map_err(|e| Error::invalid(e.to_string()))?;
    builds::check_reserved("kernel", &p.name, cx.caller.uid)?;
    if d.registry.store.kernel_by_name(&p.name)?.is_some() {
        return Err(Error::already_exists("kernel", &p.name));
    }
    let kernel = caller_files::regular(cx.fds.take(p.kernel, "kernel")?, "kernel").await?;
    let initrd = match p.initrd {
        Some(r) => Some(caller_files::regular(cx.fds.take(r, "initrd")?, "initrd").await?),
        None => None,
    };
    let owner = cx.caller.uid;
    d.ops
        .check_limit(owner, d.config.limits.running_operations)?;
    let name = p.name.clone();
    let d2 = d.registry.clone();
    let id = d
        .ops
        .begin::<KernelImport, _, _>(&p.name, owner, move |op| {
            kernels::import(d2, op, owner, name, kernel, initrd)
        });
    Ok(OpBegun { operation_id: id })
}

/// `--source DIR` is root only: building a tree runs its Makefiles as root.
/// The tree comes as the caller's `O_DIRECTORY` descriptor, named for `make`
/// as `/proc/self/fd/N`; `--config` comes as a descriptor and is read here.
pub async fn build_begin(d: Arc<App>, mut cx: Ctx, p: BuildParams) -> Result<OpBegun, Error> {
    use banger_core::kernel_build::{self, Source};
    use std::os::fd::AsRawFd;
    let (source, source_dir) = match p.source {
        Some(r) => {
            if !cx.caller.is_root() {
                return Err(Error::denied(
                    "--source: building a kernel tree runs its Makefiles as root, so only root \
                     may build one; without --source banger builds Debian's linux-source",
                ));
            }
            let shown = p.source_path.clone().unwrap_or_else(|| "DIR".into());
            let (dir, path) =
                caller_files::check_named(cx.fds.take(r, "source")?, "--source", move |dir| {
                    let is_dir = dir
                        .metadata()
                        .map_err(|e| Error::internal(format!("fstat source: {e}")))?
                        .is_dir();
                    if !is_dir {
                        return Err(Error::invalid(
                            "--source: not a directory (pass an unpacked kernel tree)",
                        ));
                    }
                    let path =
                        std::path::PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
                    if !path.join("Makefile").is_file() {
                        return Err(Error::invalid(format!(
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
                return Err(Error::missing_packages(
                    format!(
                        "Debian's kernel source {} is not installed",
                        tarball.display()
                    ),
                    &["linux-source-6.1"],
                ));
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
    validate_name(&name).map_err(|e| Error::invalid(e.to_string()))?;
    if let Some(k) = d.registry.store.kernel_by_name(&name)? {
        if !cx.caller.can_see_shared(k.owner_uid) {
            return Err(Error::already_exists("kernel", &name));
        }
        builds::check_replace(&cx.caller, "kernel", &name, k.owner_uid, p.replace)?;
    }
    let default_inputs =
        source_dir.is_none() && fragment == kernel_build::DEFAULT_FRAGMENT.as_bytes();
    let owner_uid = builds::owner_of(cx.caller.uid, default_inputs, name == default_name);
    builds::check_reserved("kernel", &name, owner_uid)?;
    let job = builds::KernelJob {
        owner_uid,
        caller_uid: cx.caller.uid,
        name: name.clone(),
        source,
        source_dir,
        fragment,
        jobs: builds::clamp_jobs(
            &cx.caller,
            p.jobs.filter(|&j| j > 0).unwrap_or(d.config.build.jobs) as usize,
        ),
        replace: p.replace,
    };
    d.ops
        .check_limit(cx.caller.uid, d.config.limits.running_operations)?;
    let d2 = d.registry.clone();
    let id = d
        .ops
        .begin::<KernelBuild, _, _>(&name, cx.caller.uid, move |op| {
            builds::kernel_build_op(d2, op, job)
        });
    Ok(OpBegun { operation_id: id })
}

pub async fn list(d: Arc<App>, cx: Ctx, _p: Empty) -> Result<Vec<KernelInfo>, Error> {
    d.registry
        .store
        .list_kernels_visible(cx.caller.uid_filter())?
        .iter()
        .map(|k| kernels::info(&d.registry, &cx.caller, k))
        .collect()
}

pub async fn show(d: Arc<App>, cx: Ctx, p: NameParams) -> Result<KernelInfo, Error> {
    kernels::info(
        &d.registry,
        &cx.caller,
        &kernels::find(&d.registry, &cx.caller, &p.name)?,
    )
}

pub async fn delete(d: Arc<App>, cx: Ctx, p: NameParams) -> Result<Empty, Error> {
    kernels::delete(&d.registry, &cx.caller, &p.name)?;
    Ok(Empty {})
}
