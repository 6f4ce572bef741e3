//! `image.*` handlers.

use std::sync::Arc;

use crate::error::Error;
use banger_proto::methods::image::{
    BuildParams, BundleParams, ImageInfo, PullParams, RegisterParams,
};
use banger_proto::methods::op::{ImageBuild, ImageBundle, ImagePull, ImageRegister};
use banger_proto::methods::{Empty, NameParams, OpBegun};

use crate::app::App;
use crate::caller::Ctx;
use crate::images;
use crate::{build_requests, builds, bundles};

/// Cheap checks first ([`build_requests::register_job`]), then the copy in
/// runs as an operation.
pub async fn register_begin(d: Arc<App>, mut cx: Ctx, p: RegisterParams) -> Result<OpBegun, Error> {
    let job = build_requests::register_job(&d.registry, &cx.caller, &mut cx.fds, p).await?;
    let target = job.name.clone();
    d.begin_registry_op::<ImageRegister, _, _>(&cx.caller, &target, move |r, op| {
        images::register(r, op, job)
    })
}

/// Cheap checks first ([`build_requests::image_job`]), then the build runs
/// as an operation.
pub async fn build_begin(d: Arc<App>, cx: Ctx, p: BuildParams) -> Result<OpBegun, Error> {
    let job = build_requests::image_job(&d.registry, &d.config, &cx.caller, &p)?;
    let target = job.name.clone();
    d.begin_registry_op::<ImageBuild, _, _>(&cx.caller, &target, move |r, op| {
        builds::image_build_op(r, op, job)
    })
}

/// Cheap checks first ([`build_requests::pull_job`]), then the pull runs as
/// an operation ([`crate::pull`]).
pub async fn pull_begin(d: Arc<App>, cx: Ctx, p: PullParams) -> Result<OpBegun, Error> {
    let job = build_requests::pull_job(&d.registry, &d.config, &cx.caller, p)?;
    let target = job.name.clone();
    d.begin_registry_op::<ImagePull, _, _>(&cx.caller, &target, move |r, op| {
        crate::pull::pull_op(r, op, job)
    })
}

/// The image and the output descriptor are checked at the request
/// ([`bundles::image_job`]); the bundle is written as an operation.
pub async fn bundle_begin(d: Arc<App>, mut cx: Ctx, p: BundleParams) -> Result<OpBegun, Error> {
    let job = bundles::image_job(&d.registry, &cx.caller, &mut cx.fds, p).await?;
    let target = job.name.clone();
    d.begin_registry_op::<ImageBundle, _, _>(&cx.caller, &target, move |_, op| {
        bundles::run(op, job)
    })
}

pub async fn list(d: Arc<App>, cx: Ctx, _p: Empty) -> Result<Vec<ImageInfo>, Error> {
    images::list(&d.registry, &cx.caller)
}

pub async fn show(d: Arc<App>, cx: Ctx, p: NameParams) -> Result<ImageInfo, Error> {
    images::info(
        &d.registry,
        &cx.caller,
        &images::find(&d.registry, &cx.caller, &p.name)?,
    )
}

pub async fn delete(d: Arc<App>, cx: Ctx, p: NameParams) -> Result<Empty, Error> {
    images::delete(&d.registry, &cx.caller, &p.name).await?;
    Ok(Empty {})
}

/// Root sets everyone's default; a user sets their own (over root's).
/// Only one's own or a root-owned image may be promoted: root promoting a
/// user's image would make it every user's fallback default while that user
/// can still replace or delete it, so that is refused (register or build a
/// root-owned copy instead).
pub async fn promote(d: Arc<App>, cx: Ctx, p: NameParams) -> Result<ImageInfo, Error> {
    images::promote(&d.registry, &cx.caller, &p.name)
}
