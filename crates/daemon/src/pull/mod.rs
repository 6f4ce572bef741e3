//! `image.pull`: an OCI image from a registry made into a registered banger
//! image. Stages: `resolve` (tag → digest → linux/amd64 manifest),
//! `download` (each layer not in the layer cache, streamed and verified into
//! it; progress in bytes), `unpack` (oldest to newest into the operation's
//! scratch dir, bounded by `--size`; progress in layers), `configure`,
//! `pack`, `check` (banger's guest setup, `mkfs.ext4 -d`, `e2fsck -fn`),
//! then `image.register`'s own `copy-rootfs`, `copy-work-seed`, `commit`.
//!
//! The daemon fetches as root from a URL the user gave, so: it reads no
//! user's files (credentials come in the request, read by the CLI), talks
//! plain HTTP only to loopback or with `--insecure`, trusts no byte of the
//! registry's (digests checked while streaming, lengths against the
//! descriptor, every unpacked path resolved inside the scratch tree, the
//! guest setup confined to it by `chroot`), and bounds the unpacked size.

pub mod registry;

use std::fs::File;
use std::path::PathBuf;
use std::sync::Arc;

use banger_core::image_build::ImageBuildError;
use banger_core::oci::cache::{BlobError, LayerCache};
use banger_core::oci::unpack::{unpack_layers, UnpackError};
use banger_core::oci::{bootable, Digest};
use banger_proto::methods::image::{PullResult, RegistryAuth};

use crate::error::Error;
use crate::images::{self, RegisterJob};
use crate::ops::OpHandle;
use crate::registry::Registry;
use crate::staging::{blocking, Scratch};

/// The unpacked content's bound without `--size`.
pub const DEFAULT_MAX_UNPACKED: u64 = 16 << 30;
/// More layers than any real image has.
pub const MAX_LAYERS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The image or its reference is unacceptable (platform, media type,
    /// digest algorithm, a blob that is not what it claims).
    #[error("{0}")]
    Refused(String),
    #[error("registry: {0}")]
    Registry(String),
    /// A failure worth retrying (429, 5xx, a broken connection).
    #[error("registry: {0}")]
    Transient(String),
    #[error("the registry refused the credentials or requires some ({0}); log in with `docker login` (the CLI passes ~/.docker/config.json's credentials)")]
    Unauthorized(String),
    #[error("not found in the registry: {0}")]
    NotFound(String),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(transparent)]
    Unpack(#[from] UnpackError),
    #[error("pull cancelled")]
    Cancelled,
}

impl PullError {
    pub fn is_cancelled(&self) -> bool {
        matches!(
            self,
            PullError::Cancelled | PullError::Unpack(UnpackError::Cancelled)
        )
    }
}

pub struct PullJob {
    pub owner_uid: u32,
    pub name: String,
    pub kernel_id: String,
    pub reference: String,
    pub insecure: bool,
    pub auth: Option<RegistryAuth>,
    pub size: Option<u64>,
    pub agent: PathBuf,
}

/// The layer media types banger unpacks (OCI and Docker schema2; the
/// compression is told by the blob's first bytes).
fn layer_type_ok(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
    )
}

/// The body of an `image.pull` operation.
pub async fn pull_op(d: Arc<Registry>, op: OpHandle, job: PullJob) -> Result<PullResult, Error> {
    op.stage("resolve");
    let remote = registry::Remote::new(
        &job.reference,
        job.insecure,
        job.auth.map(|a| (a.username, a.password)),
    )?;
    let resolved = remote.resolve(&op).await?;
    let layers = &resolved.manifest.layers;
    if layers.is_empty() || layers.len() > MAX_LAYERS {
        return Err(PullError::Refused(format!(
            "the manifest has {} layers (1 to {MAX_LAYERS} accepted)",
            layers.len()
        ))
        .into());
    }
    let max = job.size.unwrap_or(DEFAULT_MAX_UNPACKED);
    for l in layers {
        if !layer_type_ok(&l.media_type) {
            return Err(PullError::Refused(format!(
                "layer {} has media type {:?}, which banger does not unpack",
                l.digest, l.media_type
            ))
            .into());
        }
        Digest::parse(&l.digest).map_err(PullError::Refused)?;
    }
    let compressed: i64 = layers.iter().map(|l| l.size.max(0)).sum();
    if compressed as u64 > max {
        return Err(PullError::from(UnpackError::TooBig {
            layer: 0,
            limit: max,
        })
        .into());
    }

    let scratch = Scratch::new(&d.paths, &format!("{}-pull", op.id()))?;
    let mkdir = |p: &PathBuf| {
        std::fs::create_dir_all(p).map_err(|e| crate::error::io("cannot create", p, e))
    };
    let (blobs, tree, out) = (
        scratch.path("blobs"),
        scratch.path("tree"),
        scratch.path("out"),
    );
    for p in [&blobs, &tree, &out] {
        mkdir(p)?;
    }
    let cache = LayerCache::open(&d.paths.layers_dir())
        .map_err(|e| crate::error::io("cannot open the layer cache", &d.paths.layers_dir(), e))?;

    op.stage("download");
    let mut paths = Vec::new();
    let mut cached = 0u32;
    let mut missing = Vec::new();
    for l in layers {
        let digest = Digest::parse(&l.digest).map_err(PullError::Refused)?;
        match cache.get(&digest, l.size as u64) {
            Some(p) => {
                cached += 1;
                paths.push(Some(p));
            }
            None => {
                missing.push(paths.len());
                paths.push(None);
            }
        }
    }
    let total: u64 = missing.iter().map(|&i| layers[i].size as u64).sum();
    let mut done = 0u64;
    for &i in &missing {
        let l = &layers[i];
        let tmp = blobs.join(Digest::parse(&l.digest).map_err(PullError::Refused)?.hex());
        let p = remote.fetch(&op, &cache, l, &tmp, &mut done, total).await?;
        tracing::info!(layer = %l.digest, size = l.size, "layer downloaded");
        paths[i] = Some(p);
    }
    let paths: Vec<PathBuf> = paths.into_iter().map(|p| p.expect("all fetched")).collect();

    op.stage("unpack");
    let report = {
        let (op, tree, n) = (op.clone(), tree.clone(), paths.len() as u64);
        blocking(move || {
            let flag = op.cancel_flag();
            unpack_layers(&tree, &paths, max, &flag, &mut |i| {
                op.progress(i as u64, n, "layers")
            })
            .map_err(|e| Error::from(PullError::from(e)))
        })
        .await?
    };
    tracing::info!(
        bytes = report.bytes,
        entries = report.entries,
        devices_skipped = report.devices_skipped,
        "layers unpacked"
    );

    let packed = {
        let (op, tree, out, agent) = (op.clone(), tree.clone(), out.clone(), job.agent.clone());
        let size = job.size;
        blocking(move || {
            let flag = op.cancel_flag();
            bootable::make_image(&tree, &out, &agent, size, &flag, &mut |s| op.stage(s))
                .map_err(|e: ImageBuildError| Error::from(e))
        })
        .await?
    };
    op.check()?;
    let open = |p: &PathBuf| File::open(p).map_err(|e| crate::error::io("cannot open", p, e));
    let info = images::register(
        d.clone(),
        op.clone(),
        RegisterJob {
            owner_uid: job.owner_uid,
            name: job.name.clone(),
            kernel_id: job.kernel_id,
            rootfs: open(&packed.rootfs)?,
            work_seed: Some(open(&packed.work_seed)?),
            features: packed.features,
        },
    )
    .await?;
    drop(scratch);
    tracing::info!(image = %job.name, reference = %job.reference, digest = %resolved.digest, "image pulled");
    Ok(PullResult {
        image: info,
        digest: resolved.digest,
        layers: layers.len() as u32,
        layers_cached: cached,
        downloaded: done,
        devices_skipped: report.devices_skipped,
    })
}

/// The name an image pulled from `reference` gets without `--name`: the
/// repository's last component, then the tag unless it is `latest`, made a
/// DNS label (lowercase; `.` and `_` become `-`).
pub fn default_name(reference: &str) -> Result<String, PullError> {
    let r = registry::parse_reference(reference)?;
    let repo = r
        .repository()
        .rsplit('/')
        .next()
        .unwrap_or("image")
        .to_string();
    let mut name = match r.tag() {
        Some(t) if t != "latest" => format!("{repo}-{t}"),
        _ => repo,
    };
    name = name
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    name.truncate(63);
    Ok(name.trim_matches('-').to_string())
}

#[cfg(test)]
mod tests {
    use super::default_name;

    #[test]
    fn default_names() {
        assert_eq!(default_name("debian:bookworm").unwrap(), "debian-bookworm");
        assert_eq!(
            default_name("ghcr.io/org/devbox:1.4").unwrap(),
            "devbox-1-4"
        );
        assert_eq!(default_name("localhost:5000/team/img").unwrap(), "img");
        let d = format!("localhost:5000/team/img@sha256:{}", "a".repeat(64));
        assert_eq!(default_name(&d).unwrap(), "img");
    }
}
