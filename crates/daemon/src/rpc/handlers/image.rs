//! `image.*` handlers.

use std::sync::Arc;

use crate::error::Error;
use banger_proto::methods::image::{BuildParams, ImageInfo, RegisterParams};
use banger_proto::methods::op::{ImageBuild, ImageRegister};
use banger_proto::methods::{Empty, NameParams, OpBegun};
use banger_proto::names::validate_name;

use crate::app::App;
use crate::caller::Ctx;
use crate::images::{self, RegisterJob};
use crate::{build_requests, builds, kernels};

pub async fn register_begin(d: Arc<App>, mut cx: Ctx, p: RegisterParams) -> Result<OpBegun, Error> {
    validate_name(&p.name).map_err(|e| Error::invalid(e.to_string()))?;
    builds::check_reserved("image", &p.name, cx.caller.uid)?;
    if d.registry.store.image_by_name(&p.name)?.is_some() {
        return Err(Error::already_exists("image", &p.name));
    }
    let kernel = kernels::find(&d.registry, &cx.caller, &p.kernel)?;
    builds::check_shared_kernel(cx.caller.uid, &kernel)?;
    let rootfs = images::validate_ext4(cx.fds.take(p.rootfs, "rootfs")?, "rootfs").await?;
    let work_seed = match p.work_seed {
        Some(r) => Some(images::validate_ext4(cx.fds.take(r, "work seed")?, "work seed").await?),
        None => None,
    };
    for f in &p.features {
        if !banger_proto::methods::image::FEATURES.contains(&f.as_str()) {
            return Err(Error::invalid(format!(
                "unknown image feature {f:?}: known ones are {}",
                banger_proto::methods::image::FEATURES.join(", ")
            )));
        }
    }
    let job = RegisterJob {
        features: p.features.clone(),
        owner_uid: cx.caller.uid,
        name: p.name.clone(),
        kernel_id: kernel.id,
        rootfs,
        work_seed,
    };
    d.ops
        .check_limit(cx.caller.uid, d.config.limits.running_operations)?;
    let d2 = d.registry.clone();
    let id = d
        .ops
        .begin::<ImageRegister, _, _>(&p.name, cx.caller.uid, move |op| {
            images::register(d2, op, job)
        });
    Ok(OpBegun { operation_id: id })
}

/// Cheap checks first ([`build_requests::image_job`]), then the build runs
/// as an operation.
pub async fn build_begin(d: Arc<App>, cx: Ctx, p: BuildParams) -> Result<OpBegun, Error> {
    let job = build_requests::image_job(&d.registry, &d.config, &cx.caller, &p)?;
    d.ops
        .check_limit(cx.caller.uid, d.config.limits.running_operations)?;
    let d2 = d.registry.clone();
    let id = d
        .ops
        .begin::<ImageBuild, _, _>(&job.name.clone(), cx.caller.uid, move |op| {
            builds::image_build_op(d2, op, job)
        });
    Ok(OpBegun { operation_id: id })
}

pub async fn list(d: Arc<App>, cx: Ctx, _p: Empty) -> Result<Vec<ImageInfo>, Error> {
    d.registry
        .store
        .list_images_visible(cx.caller.uid_filter())?
        .iter()
        .map(|i| images::info(&d.registry, &cx.caller, i))
        .collect()
}

pub async fn show(d: Arc<App>, cx: Ctx, p: NameParams) -> Result<ImageInfo, Error> {
    images::info(
        &d.registry,
        &cx.caller,
        &images::find(&d.registry, &cx.caller, &p.name)?,
    )
}

pub async fn delete(d: Arc<App>, cx: Ctx, p: NameParams) -> Result<Empty, Error> {
    images::delete(&d.registry, &cx.caller, &p.name)?;
    Ok(Empty {})
}

/// Root sets everyone's default; a user sets their own (over root's).
/// Only one's own or a root-owned image may be promoted: root promoting a
/// user's image would make it every user's fallback default while that user
/// can still replace or delete it, so that is refused (register or build a
/// root-owned copy instead).
pub async fn promote(d: Arc<App>, cx: Ctx, p: NameParams) -> Result<ImageInfo, Error> {
    let img = images::find(&d.registry, &cx.caller, &p.name)?;
    if img.owner_uid != 0 && img.owner_uid != cx.caller.uid {
        return Err(Error::denied(format!(
            "image {:?} belongs to uid {}; only its owner may make it a default (a default \
             root sets is every user's, so it must be root-owned)",
            p.name, img.owner_uid
        )));
    }
    d.registry.store.set_default_image(cx.caller.uid, &img.id)?;
    tracing::info!(image = %p.name, uid = cx.caller.uid, "image promoted to default");
    images::info(&d.registry, &cx.caller, &img)
}
