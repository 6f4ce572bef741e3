//! `image bundle` / `kernel bundle`: an object the caller can see, written
//! as a bundle ([`banger_core::bundle`]) to a regular file the caller
//! opened for writing and passed as a descriptor. The daemon never opens a
//! path of the caller's: the CLI opens `-o FILE` as the user, so the file
//! lands where and as the user could write it.
//!
//! The manifest's sizes and digests come from the store (recorded when the
//! object was registered), and the writer checks each file against them
//! while it writes, so a file changed behind banger's back fails the
//! bundle instead of producing one whose manifest lies. Importing is the
//! CLI's job (it reads the untrusted bundle as the user, then registers the
//! checked files through `image.register` / `kernel.import`).

use std::fs::File;
use std::io::BufWriter;
use std::path::PathBuf;

use banger_core::bundle::{self, BundleFile, KernelRef, Kind, Manifest};
use banger_core::store::StoredFile;
use banger_proto::methods::image::{BundleParams, BundleResult, BundledFile};

use crate::caller::{Caller, Fds};
use crate::error::Error;
use crate::ops::OpHandle;
use crate::registry::Registry;
use crate::{caller_files, images, kernels, staging};

/// A bundle to write: checked at the request, written by the operation.
pub struct BundleJob {
    pub name: String,
    manifest: Manifest,
    paths: Vec<PathBuf>,
    out: File,
}

fn entry(d: &Registry, name: &str, f: &StoredFile) -> (BundleFile, PathBuf) {
    (
        BundleFile {
            name: name.into(),
            size: f.size,
            sha256: f.sha256.clone(),
        },
        d.paths.state_dir.join(&f.rel_path),
    )
}

fn manifest(kind: Kind, name: &str, files: Vec<BundleFile>) -> Manifest {
    Manifest {
        format: bundle::FORMAT.into(),
        kind,
        name: name.into(),
        arch: "x86_64".into(),
        files,
        kernel: None,
        features: Vec::new(),
        banger_version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// The output descriptor: a regular file, opened for writing.
async fn output(fds: &mut Fds, p: &BundleParams) -> Result<File, Error> {
    let out = fds.take(p.out, "output")?;
    caller_files::require_writable(&out, "output")?;
    caller_files::regular(out, "output").await
}

/// `image.bundle`: an image the caller can see, with the name and digest of
/// its kernel (a kernel bundle carries the kernel itself).
pub async fn image_job(
    d: &Registry,
    caller: &Caller,
    fds: &mut Fds,
    p: BundleParams,
) -> Result<BundleJob, Error> {
    let image = images::find(d, caller, &p.name)?;
    let kernel = d.store.kernel_by_id(&image.kernel_id)?;
    let mut files = vec![entry(d, "rootfs.ext4", &image.rootfs)];
    if let Some(seed) = &image.work_seed {
        files.push(entry(d, "work-seed.ext4", seed));
    }
    let (entries, paths): (Vec<_>, Vec<_>) = files.into_iter().unzip();
    let mut m = manifest(Kind::Image, &image.name, entries);
    m.kernel = kernel.map(|k| KernelRef {
        name: k.name,
        sha256: k.vmlinux.sha256,
    });
    m.features = image.features.clone();
    Ok(BundleJob {
        name: image.name,
        manifest: m,
        paths,
        out: output(fds, &p).await?,
    })
}

/// `kernel.bundle`: a kernel the caller can see (its vmlinux, and initrd).
pub async fn kernel_job(
    d: &Registry,
    caller: &Caller,
    fds: &mut Fds,
    p: BundleParams,
) -> Result<BundleJob, Error> {
    let k = kernels::find(d, caller, &p.name)?;
    let mut files = vec![entry(d, "vmlinux", &k.vmlinux)];
    if let Some(initrd) = &k.initrd {
        files.push(entry(d, "initrd", initrd));
    }
    let (entries, paths): (Vec<_>, Vec<_>) = files.into_iter().unzip();
    Ok(BundleJob {
        name: k.name.clone(),
        manifest: manifest(Kind::Kernel, &k.name, entries),
        paths,
        out: output(fds, &p).await?,
    })
}

/// The operation: writes the bundle on a blocking thread, with byte
/// progress; a cancel stops it (the CLI removes the partial file it made).
pub async fn run(op: OpHandle, job: BundleJob) -> Result<BundleResult, Error> {
    op.stage("write");
    let total: u64 = job.manifest.files.iter().map(|f| f.size).sum();
    let flag = op.cancel_flag();
    let op2 = op.clone();
    let BundleJob {
        name,
        manifest,
        paths,
        out,
    } = job;
    let m = manifest.clone();
    let bytes = staging::blocking(move || {
        let mut w = BufWriter::new(&out);
        bundle::write(&mut w, &m, &paths, &flag, &mut |done| {
            op2.progress(done, total, "bytes")
        })?;
        drop(w);
        out.sync_all()
            .map_err(|e| Error::internal(format!("cannot sync the bundle: {e}")))?;
        out.metadata()
            .map(|m| m.len())
            .map_err(|e| Error::internal(format!("cannot stat the bundle: {e}")))
    })
    .await?;
    op.check()?;
    Ok(BundleResult {
        name,
        kind: manifest.kind.as_str().into(),
        files: manifest
            .files
            .into_iter()
            .map(|f| BundledFile {
                name: f.name,
                size: f.size,
                sha256: f.sha256,
            })
            .collect(),
        bytes,
    })
}
