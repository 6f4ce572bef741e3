//! `kernel.*` handlers.

use std::sync::Arc;

use crate::error::Error;
use banger_proto::methods::image::BundleParams;
use banger_proto::methods::kernel::{BuildParams, ImportParams, KernelInfo};
use banger_proto::methods::op::{KernelBuild, KernelBundle, KernelImport};
use banger_proto::methods::{Empty, NameParams, OpBegun};

use crate::app::App;
use crate::caller::Ctx;
use crate::{build_requests, builds, bundles, kernels};

/// Cheap checks first ([`build_requests::import_job`]), then the import
/// runs as an operation.
pub async fn import_begin(d: Arc<App>, mut cx: Ctx, p: ImportParams) -> Result<OpBegun, Error> {
    let job = build_requests::import_job(&d.registry, &cx.caller, &mut cx.fds, p).await?;
    let target = job.name.clone();
    d.begin_registry_op::<KernelImport, _, _>(&cx.caller, &target, move |r, op| {
        kernels::import(r, op, job)
    })
}

/// Cheap checks first ([`build_requests::kernel_job`]), then the build runs
/// as an operation.
pub async fn build_begin(d: Arc<App>, mut cx: Ctx, p: BuildParams) -> Result<OpBegun, Error> {
    let job =
        build_requests::kernel_job(&d.registry, &d.config, &cx.caller, &mut cx.fds, p).await?;
    let target = job.name.clone();
    d.begin_registry_op::<KernelBuild, _, _>(&cx.caller, &target, move |r, op| {
        builds::kernel_build_op(r, op, job)
    })
}

/// The kernel and the output descriptor are checked at the request
/// ([`bundles::kernel_job`]); the bundle is written as an operation.
pub async fn bundle_begin(d: Arc<App>, mut cx: Ctx, p: BundleParams) -> Result<OpBegun, Error> {
    let job = bundles::kernel_job(&d.registry, &cx.caller, &mut cx.fds, p).await?;
    let target = job.name.clone();
    d.begin_registry_op::<KernelBundle, _, _>(&cx.caller, &target, move |_, op| {
        bundles::run(op, job)
    })
}

pub async fn list(d: Arc<App>, cx: Ctx, _p: Empty) -> Result<Vec<KernelInfo>, Error> {
    kernels::list(&d.registry, &cx.caller)
}

pub async fn show(d: Arc<App>, cx: Ctx, p: NameParams) -> Result<KernelInfo, Error> {
    kernels::info(
        &d.registry,
        &cx.caller,
        &kernels::find(&d.registry, &cx.caller, &p.name)?,
    )
}

pub async fn delete(d: Arc<App>, cx: Ctx, p: NameParams) -> Result<Empty, Error> {
    kernels::delete(&d.registry, &cx.caller, &p.name).await?;
    Ok(Empty {})
}
