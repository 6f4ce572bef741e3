//! The image registry: register (an async operation), lookup with visibility
//! rules, default ("promote"), delete.

use std::fs::File;
use std::sync::Arc;

use crate::error::Error;
use banger_core::artifact::{ext4, stage};
use banger_core::store::{ImageRow, StoredFile};
use banger_core::{ids, timefmt};
use banger_proto::methods::image::ImageInfo;

use crate::caller::Caller;
use crate::kernels::file_info;
use crate::ops::OpHandle;
use crate::registry::Registry;
use crate::staging::{commit, copy, Placed, Scratch};

pub const ROOTFS: &str = "rootfs.ext4";
pub const WORK_SEED: &str = "work-seed.ext4";

/// An image the caller may see, by name.
pub fn find(d: &Registry, caller: &Caller, name: &str) -> Result<ImageRow, Error> {
    match d.store.image_by_name(name)? {
        Some(i) if caller.can_see_shared(i.owner_uid) => Ok(i),
        _ => Err(Error::not_found("image", name)
            .hint("see `banger image list`, or add one with `banger image register`")),
    }
}

/// The images the caller may see (filtered in the query), as shown.
pub fn list(d: &Registry, caller: &Caller) -> Result<Vec<ImageInfo>, Error> {
    d.store
        .list_images_visible(caller.uid_filter())?
        .iter()
        .map(|x| info(d, caller, x))
        .collect()
}

/// The image a new VM of `caller` gets: the named one, else their default.
/// Its kernel must be visible to the caller too ([`bootable_kernel`]).
pub fn for_create(d: &Registry, caller: &Caller, name: Option<&str>) -> Result<ImageRow, Error> {
    let image = match name {
        Some(name) => find(d, caller, name)?,
        None => {
            let id = d.store.default_image_for(caller.uid)?.ok_or_else(|| {
                Error::precondition("no image given and no default image").hint(
                    "pass --image NAME, or make one the default with `banger image promote NAME`",
                )
            })?;
            d.store
                .image_by_id(&id)?
                .ok_or_else(|| Error::internal("default image vanished"))?
        }
    };
    bootable_kernel(&d.store, caller.uid, &image)?;
    Ok(image)
}

/// The kernel a VM owned by `owner_uid` boots from `image`, checked for
/// visibility to that owner: the image and its kernel must be root's (shared)
/// or the owner's own. Checked at create and at every start, so an image or
/// kernel of another user (a default root once promoted, a record from before
/// the reserved names) never boots in someone else's VM.
pub fn bootable_kernel(
    store: &banger_core::store::Store,
    owner_uid: u32,
    image: &ImageRow,
) -> Result<banger_core::store::KernelRow, Error> {
    let visible = |owner: u32| owner_uid == 0 || owner == 0 || owner == owner_uid;
    if !visible(image.owner_uid) {
        return Err(Error::denied(format!(
            "image {:?} belongs to uid {}, not to the VM's owner (uid {owner_uid}) or root",
            image.name, image.owner_uid
        )));
    }
    let kernel = store
        .kernel_by_id(&image.kernel_id)?
        .ok_or_else(|| Error::internal("the image's kernel record is missing"))?;
    if !visible(kernel.owner_uid) {
        return Err(Error::denied(format!(
            "kernel {:?} of image {:?} belongs to uid {}, not to the VM's owner (uid \
             {owner_uid}) or root: it will not boot in this VM",
            kernel.name, image.name, kernel.owner_uid
        )));
    }
    Ok(kernel)
}

pub fn info(d: &Registry, caller: &Caller, i: &ImageRow) -> Result<ImageInfo, Error> {
    let kernel = d
        .store
        .kernel_by_id(&i.kernel_id)?
        .map(|k| k.name)
        .unwrap_or_else(|| i.kernel_id.clone());
    let default = d.store.default_image_for(caller.uid)?;
    Ok(ImageInfo {
        id: i.id.clone(),
        name: i.name.clone(),
        owner_uid: i.owner_uid,
        kernel,
        rootfs: file_info(d, &i.rootfs),
        work_seed: i.work_seed.as_ref().map(|f| file_info(d, f)),
        default: default.as_deref() == Some(i.id.as_str()),
        created_at: i.created_at.clone(),
        // Only the VMs the caller may see: other users' VM names are theirs.
        used_by: d.store.image_users(&i.id, caller.uid_filter())?,
        features: i.features.clone(),
    })
}

/// Checks that `f` is a regular file holding a complete ext4 filesystem.
/// Cheap (one superblock read), so it runs before the operation starts and a
/// wrong file fails the request itself. The caller's file may be on a
/// filesystem that never answers: the read is bounded
/// ([`crate::caller_files`]).
pub async fn validate_ext4(f: File, what: &str) -> Result<File, Error> {
    let w = what.to_string();
    let (f, _info) = crate::caller_files::check(f, what, move |f| {
        stage::require_regular(f, &w).map_err(Error::from)?;
        ext4::inspect(f).map_err(|e| Error::ext4(w.as_str(), e))
    })
    .await?;
    Ok(f)
}

pub struct RegisterJob {
    pub owner_uid: u32,
    pub name: String,
    pub kernel_id: String,
    pub rootfs: File,
    pub work_seed: Option<File>,
    pub features: Vec<String>,
}

/// The body of an `image.register` operation.
pub async fn register(
    d: Arc<Registry>,
    op: OpHandle,
    job: RegisterJob,
) -> Result<ImageInfo, Error> {
    let scratch = Scratch::new(&d.paths, &op.id())?;
    op.stage("copy-rootfs");
    let rootfs = copy(&op, job.rootfs, scratch.path(ROOTFS)).await?;
    let seed = match job.work_seed {
        Some(src) => {
            op.stage("copy-work-seed");
            Some(copy(&op, src, scratch.path(WORK_SEED)).await?)
        }
        None => None,
    };
    op.stage("commit");
    op.check()?;
    let id = ids::new_id();
    let placed = Placed::new(d.paths.images_dir().join(&id));
    commit(&scratch.path(ROOTFS), &placed.path(ROOTFS))?;
    if seed.is_some() {
        commit(&scratch.path(WORK_SEED), &placed.path(WORK_SEED))?;
    }
    let stored = |f: &str, s: stage::Staged| StoredFile {
        rel_path: format!("images/{id}/{f}"),
        size: s.size,
        sha256: s.sha256,
    };
    tracing::info!(
        image = %job.name,
        rootfs_copy = rootfs.method.as_str(),
        "image staged"
    );
    let row = ImageRow {
        id: id.clone(),
        name: job.name,
        owner_uid: job.owner_uid,
        kernel_id: job.kernel_id,
        rootfs: stored(ROOTFS, rootfs),
        work_seed: seed.map(|s| stored(WORK_SEED, s)),
        created_at: timefmt::now(),
        features: job.features,
    };
    d.store.insert_image(&row)?;
    placed.keep();
    let owner = Caller {
        uid: row.owner_uid,
        gid: 0,
        pid: 0,
    };
    let info = info(&d, &owner, &row)?;
    Ok(info)
}

/// Deletes the image row (refused while VMs use it), then its files.
pub async fn delete(d: &Registry, caller: &Caller, name: &str) -> Result<(), Error> {
    let i = find(d, caller, name)?;
    if !caller.can_change(i.owner_uid) {
        return Err(Error::denied(format!(
            "image {name:?} belongs to uid {}; only its owner or root can delete it",
            i.owner_uid
        )));
    }
    d.store.delete_image(&i.id)?;
    crate::staging::remove_dir_blocking(d.paths.images_dir().join(&i.id)).await;
    tracing::info!(image = %name, uid = caller.uid, "image deleted");
    Ok(())
}

/// Root sets everyone's default; a user sets their own (over root's).
/// Only one's own or a root-owned image may be promoted: root promoting a
/// user's image would make it every user's fallback default while that user
/// can still replace or delete it, so that is refused (register or build a
/// root-owned copy instead).
pub fn promote(d: &Registry, caller: &Caller, name: &str) -> Result<ImageInfo, Error> {
    let img = find(d, caller, name)?;
    if img.owner_uid != 0 && img.owner_uid != caller.uid {
        return Err(Error::denied(format!(
            "image {name:?} belongs to uid {}; only its owner may make it a default (a default \
             root sets is every user's, so it must be root-owned)",
            img.owner_uid
        )));
    }
    d.store.set_default_image(caller.uid, &img.id)?;
    tracing::info!(image = %name, uid = caller.uid, "image promoted to default");
    info(d, caller, &img)
}
