//! `image.*` handlers.

use std::sync::Arc;

use banger_proto::methods::image::{ImageInfo, RegisterParams};
use banger_proto::methods::{Empty, NameParams, OpBegun};
use banger_proto::names::validate_name;
use banger_proto::RpcError;

use crate::caller::Ctx;
use crate::daemon::Daemon;
use crate::errors::Rpc;
use crate::images::{self, RegisterJob};
use crate::kernels;

pub async fn register_begin(
    d: Arc<Daemon>,
    mut cx: Ctx,
    p: RegisterParams,
) -> Result<OpBegun, RpcError> {
    validate_name(&p.name).map_err(|e| RpcError::invalid_params(e.to_string()))?;
    if d.store.image_by_name(&p.name).rpc()?.is_some() {
        return Err(RpcError::already_exists("image", &p.name));
    }
    let kernel = kernels::find(&d, &cx.caller, &p.kernel)?;
    let rootfs = cx.fds.take(p.rootfs, "rootfs")?;
    images::validate_ext4(&rootfs, "rootfs")?;
    let work_seed = match p.work_seed {
        Some(r) => {
            let f = cx.fds.take(r, "work seed")?;
            images::validate_ext4(&f, "work seed")?;
            Some(f)
        }
        None => None,
    };
    for f in &p.features {
        if !banger_proto::methods::image::FEATURES.contains(&f.as_str()) {
            return Err(RpcError::invalid_params(format!(
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
    let d2 = d.clone();
    let id = d
        .ops
        .begin("image.register", &p.name, cx.caller.uid, move |op| {
            images::register(d2, op, job)
        });
    Ok(OpBegun { operation_id: id })
}

pub async fn list(d: Arc<Daemon>, cx: Ctx, _p: Empty) -> Result<Vec<ImageInfo>, RpcError> {
    d.store
        .list_images()
        .rpc()?
        .iter()
        .filter(|i| cx.caller.can_see_shared(i.owner_uid))
        .map(|i| images::info(&d, &cx.caller, i))
        .collect()
}

pub async fn show(d: Arc<Daemon>, cx: Ctx, p: NameParams) -> Result<ImageInfo, RpcError> {
    images::info(&d, &cx.caller, &images::find(&d, &cx.caller, &p.name)?)
}

pub async fn delete(d: Arc<Daemon>, cx: Ctx, p: NameParams) -> Result<Empty, RpcError> {
    images::delete(&d, &cx.caller, &p.name)?;
    Ok(Empty {})
}

/// Root sets everyone's default; a user sets their own (over root's).
pub async fn promote(d: Arc<Daemon>, cx: Ctx, p: NameParams) -> Result<ImageInfo, RpcError> {
    let img = images::find(&d, &cx.caller, &p.name)?;
    d.store.set_default_image(cx.caller.uid, &img.id).rpc()?;
    tracing::info!(image = %p.name, uid = cx.caller.uid, "image promoted to default");
    images::info(&d, &cx.caller, &img)
}
