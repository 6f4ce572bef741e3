//! `image.*` handlers.

use std::sync::Arc;

use crate::error::Error;
use banger_proto::methods::image::{BuildParams, ImageInfo, PullParams, RegisterParams};
use banger_proto::methods::op::{ImageBuild, ImagePull, ImageRegister};
use banger_proto::methods::{Empty, NameParams, OpBegun};
use banger_proto::names::validate_name;

use crate::app::App;
use crate::caller::Ctx;
use crate::images::{self, RegisterJob};
use crate::{builds, kernels};

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

/// Cheap checks first (distribution, variant, agent, kernel, name), then the
/// build runs as an operation. `auto` is the first-use build `vm create`
/// asks for: banger's defaults only, allowed unless `[build] auto = false`.
pub async fn build_begin(d: Arc<App>, cx: Ctx, p: BuildParams) -> Result<OpBegun, Error> {
    use banger_core::image_build::{self, ImageSpec, Variant};
    if p.auto {
        if !d.config.build.auto {
            return Err(Error::precondition(
                "no image is registered, and automatic builds are off ([build] auto = false)",
            )
            .hint(
                "build one with `banger image build debian-bookworm` (or register one with \
                 `banger image register`), then retry",
            ));
        }
        if p.name.is_some() || p.kernel.is_some() || p.mirror.is_some() || p.replace {
            return Err(Error::invalid(
                "auto builds use banger's defaults: no name, kernel, mirror or replace",
            ));
        }
    }
    let variant: Variant = p
        .variant
        .as_deref()
        .unwrap_or("minimal")
        .parse()
        .map_err(Error::invalid)?;
    if p.auto && variant != Variant::Minimal {
        return Err(Error::invalid("auto builds are minimal"));
    }
    if !banger_proto::methods::image::DISTROS.contains(&p.distro.as_str()) {
        return Err(Error::invalid(format!(
            "unknown distribution {:?}: known ones are {}",
            p.distro,
            banger_proto::methods::image::DISTROS.join(", ")
        )));
    }
    let mirror = p.mirror.clone().or_else(|| d.config.build.mirror.clone());
    if let Some(m) = &p.mirror {
        // apt reads a file: mirror as root: a user could read a root-only
        // repository into their image.
        let http = m.starts_with("http://") || m.starts_with("https://");
        if !cx.caller.is_root() && !http {
            return Err(Error::denied(
                "--mirror: only root may use a file: mirror; users may give http(s) URLs",
            ));
        }
    }
    let agent = builds::find_agent(&d.config)?;
    let spec = ImageSpec {
        distro: p.distro.clone(),
        variant,
        agent_binary: agent,
        mirror,
    };
    image_build::check_spec(&spec).map_err(Error::from)?;

    let default_name = builds::default_image_name(&p.distro, variant);
    let name = p.name.clone().unwrap_or_else(|| default_name.clone());
    validate_name(&name).map_err(|e| Error::invalid(e.to_string()))?;
    if let Some(i) = d.registry.store.image_by_name(&name)? {
        if !cx.caller.can_see_shared(i.owner_uid) {
            return Err(Error::already_exists("image", &name));
        }
        builds::check_replace(&cx.caller, "image", &name, i.owner_uid, p.replace)?;
    }
    let jobs = d.config.build.jobs as usize;
    let default_kernel = builds::default_kernel_name();
    let kernel = match &p.kernel {
        Some(k) => {
            builds::KernelChoice::Registered(Box::new(kernels::find(&d.registry, &cx.caller, k)?))
        }
        None => match d.registry.store.kernel_by_name(&default_kernel)? {
            // The default kernel is root's, or it is not the default: root's
            // requests see every user's objects, so without this check root's
            // first build could pick up a user's kernel under that name.
            Some(k) if k.owner_uid == 0 => builds::KernelChoice::Registered(Box::new(k)),
            Some(k) if cx.caller.can_see_shared(k.owner_uid) => {
                return Err(Error::precondition(format!(
                    "kernel {default_kernel:?} belongs to uid {}, not root: it is not banger's \
                     default kernel",
                    k.owner_uid
                ))
                .hint("pass --kernel NAME, or (root) delete it so the default can be built"))
            }
            Some(_) => {
                return Err(
                    Error::already_exists("kernel", &default_kernel).hint("pass --kernel NAME")
                )
            }
            None => builds::KernelChoice::BuildDefault { jobs },
        },
    };
    // Shared only when every input is root's: the default mirror (root's
    // config), and root's default kernel.
    let root_kernel = match &kernel {
        builds::KernelChoice::Registered(k) => k.owner_uid == 0 && k.name == default_kernel,
        builds::KernelChoice::BuildDefault { .. } => true,
    };
    let default_inputs = p.mirror.is_none() && root_kernel;
    let owner_uid = builds::owner_of(cx.caller.uid, default_inputs, name == default_name);
    builds::check_reserved("image", &name, owner_uid)?;
    if let builds::KernelChoice::Registered(k) = &kernel {
        builds::check_shared_kernel(owner_uid, k)?;
    }
    let job = builds::ImageJob {
        owner_uid,
        caller_uid: cx.caller.uid,
        name: name.clone(),
        spec,
        kernel,
        replace: p.replace,
    };
    d.ops
        .check_limit(cx.caller.uid, d.config.limits.running_operations)?;
    let d2 = d.registry.clone();
    let id = d
        .ops
        .begin::<ImageBuild, _, _>(&name, cx.caller.uid, move |op| {
            builds::image_build_op(d2, op, job)
        });
    Ok(OpBegun { operation_id: id })
}

/// Cheap checks first (reference, platform, name, kernel, agent, size), then
/// the pull runs as an operation ([`crate::pull`]). The image is the
/// caller's; a reserved default name is refused for non-root callers.
pub async fn pull_begin(d: Arc<App>, cx: Ctx, p: PullParams) -> Result<OpBegun, Error> {
    match p.platform.as_deref() {
        None | Some("linux/amd64") => {}
        Some(other) => {
            return Err(Error::invalid(format!(
            "platform {other:?}: banger's guests are x86-64 Linux, so only linux/amd64 is pulled"
        )))
        }
    }
    crate::pull::registry::parse_reference(&p.reference)?;
    let name = match &p.name {
        Some(n) => n.clone(),
        None => crate::pull::default_name(&p.reference)?,
    };
    validate_name(&name).map_err(|e| {
        Error::invalid(format!("image name {name:?}: {e}")).hint("pass --name NAME")
    })?;
    let owner_uid = cx.caller.uid;
    builds::check_reserved("image", &name, owner_uid)?;
    if d.registry.store.image_by_name(&name)?.is_some() {
        return Err(Error::already_exists("image", &name).hint("pass --name NAME"));
    }
    let kernel_name = p.kernel.clone().unwrap_or_else(builds::default_kernel_name);
    let kernel = kernels::find(&d.registry, &cx.caller, &kernel_name).map_err(|e| {
        if p.kernel.is_none() {
            e.hint("build the default kernel with `banger kernel build`, or pass --kernel NAME")
        } else {
            e
        }
    })?;
    builds::check_shared_kernel(owner_uid, &kernel)?;
    if let Some(s) = p.size {
        if s < 64 << 20 {
            return Err(Error::invalid("--size: at least 64 MiB"));
        }
    }
    let agent = builds::find_agent(&d.config)?;
    let job = crate::pull::PullJob {
        owner_uid,
        name: name.clone(),
        kernel_id: kernel.id,
        reference: p.reference.clone(),
        insecure: p.insecure,
        auth: p.auth.clone(),
        size: p.size,
        agent,
    };
    d.ops
        .check_limit(cx.caller.uid, d.config.limits.running_operations)?;
    let d2 = d.registry.clone();
    let id = d
        .ops
        .begin::<ImagePull, _, _>(&name, cx.caller.uid, move |op| {
            crate::pull::pull_op(d2, op, job)
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
