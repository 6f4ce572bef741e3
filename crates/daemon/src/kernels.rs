//! The kernel registry: import (an async operation), lookup with visibility
//! rules, delete.

use std::fs::File;
use std::sync::Arc;

use crate::error::Error;
use banger_core::artifact::kernel_image;
use banger_core::store::{KernelRow, StoredFile};
use banger_core::{ids, timefmt};
use banger_proto::methods::kernel::KernelInfo;
use banger_proto::methods::FileInfo;

use crate::caller::Caller;
use crate::ops::OpHandle;
use crate::registry::Registry;
use crate::staging::{blocking, commit, copy, hash, Placed, Scratch};

/// A kernel the caller may see, by name.
pub fn find(d: &Registry, caller: &Caller, name: &str) -> Result<KernelRow, Error> {
    match d.store.kernel_by_name(name)? {
        Some(k) if caller.can_see_shared(k.owner_uid) => Ok(k),
        _ => Err(Error::not_found("kernel", name)
            .hint("see `banger kernel list`, or add one with `banger kernel import`")),
    }
}

/// The kernels the caller may see (filtered in the query), as shown.
pub fn list(d: &Registry, caller: &Caller) -> Result<Vec<KernelInfo>, Error> {
    d.store
        .list_kernels_visible(caller.uid_filter())?
        .iter()
        .map(|x| info(d, caller, x))
        .collect()
}

/// `used_by` lists only what `caller` may see (root: everything).
pub fn info(d: &Registry, caller: &Caller, k: &KernelRow) -> Result<KernelInfo, Error> {
    Ok(KernelInfo {
        id: k.id.clone(),
        name: k.name.clone(),
        owner_uid: k.owner_uid,
        format: k.format.clone(),
        release: k.release.clone(),
        vmlinux: file_info(d, &k.vmlinux),
        initrd: k.initrd.as_ref().map(|f| file_info(d, f)),
        created_at: k.created_at.clone(),
        used_by: d.store.kernel_users(&k.id, caller.uid_filter())?,
    })
}

pub fn file_info(d: &Registry, f: &StoredFile) -> FileInfo {
    FileInfo {
        path: d.state_path(&f.rel_path).display().to_string(),
        size: f.size,
        sha256: f.sha256.clone(),
    }
}

/// What a `kernel.import` registers: the caller's checked descriptors.
pub struct ImportJob {
    pub owner_uid: u32,
    pub name: String,
    pub kernel: File,
    pub initrd: Option<File>,
}

/// The body of a `kernel.import` operation.
pub async fn import(d: Arc<Registry>, op: OpHandle, job: ImportJob) -> Result<KernelInfo, Error> {
    let ImportJob {
        owner_uid,
        name,
        kernel,
        initrd,
    } = job;
    let scratch = Scratch::new(&d.paths, &op.id())?;
    op.stage("extract");
    let vmlinux_tmp = scratch.path("vmlinux");
    let (extracted, vmlinux) = {
        let op = op.clone();
        let tmp = vmlinux_tmp.clone();
        blocking(move || {
            let flag = op.cancel_flag();
            let mut out = std::fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .read(true)
                .open(&tmp)
                .map_err(|e| Error::internal(format!("cannot create {}: {e}", tmp.display())))?;
            let mut report = |n| op.progress(n, 0, "bytes");
            let ex = kernel_image::extract_vmlinux(&kernel, &mut out, &flag, &mut report)
                .map_err(Error::from)?;
            out.sync_all()
                .map_err(|e| Error::internal(format!("cannot sync {}: {e}", tmp.display())))?;
            let (size, sha256) = hash(&op, &flag, &out)?;
            Ok((ex, (size, sha256)))
        })
        .await?
    };
    let initrd_staged = match initrd {
        Some(src) => {
            op.stage("copy-initrd");
            let tmp = scratch.path("initrd");
            Some(copy(&op, src, tmp).await?)
        }
        None => None,
    };

    op.stage("commit");
    op.check()?;
    let id = ids::new_id();
    let placed = Placed::new(d.paths.kernels_dir().join(&id));
    let rel = |f: &str| format!("kernels/{id}/{f}");
    commit(&vmlinux_tmp, &placed.path("vmlinux"))?;
    if initrd_staged.is_some() {
        commit(&scratch.path("initrd"), &placed.path("initrd"))?;
    }
    let row = KernelRow {
        id: id.clone(),
        name,
        owner_uid,
        format: extracted.format.label(),
        release: extracted.release.clone(),
        vmlinux: StoredFile {
            rel_path: rel("vmlinux"),
            size: vmlinux.0,
            sha256: vmlinux.1,
        },
        initrd: initrd_staged.map(|s| StoredFile {
            rel_path: rel("initrd"),
            size: s.size,
            sha256: s.sha256,
        }),
        created_at: timefmt::now(),
    };
    d.store.insert_kernel(&row)?;
    placed.keep();
    tracing::info!(kernel = %row.name, id = %row.id, format = %row.format, "kernel imported");
    let owner = Caller {
        uid: owner_uid,
        gid: 0,
        pid: 0,
    };
    let info = info(&d, &owner, &row)?;
    Ok(info)
}

/// Deletes the kernel row (refused while images or VMs use it), then its files.
pub async fn delete(d: &Registry, caller: &Caller, name: &str) -> Result<(), Error> {
    let k = find(d, caller, name)?;
    if !caller.can_change(k.owner_uid) {
        return Err(Error::denied(format!(
            "kernel {name:?} belongs to uid {}; only its owner or root can delete it",
            k.owner_uid
        )));
    }
    d.store.delete_kernel(&k.id)?;
    crate::staging::remove_dir_blocking(d.paths.kernels_dir().join(&k.id)).await;
    tracing::info!(kernel = %name, uid = caller.uid, "kernel deleted");
    Ok(())
}
