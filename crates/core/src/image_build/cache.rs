//! The image cache: `cache_dir/<key>/` holds a complete image, keyed by a
//! hash of everything that goes into it. A build works in `<key>.tmp/`
//! (removed on failure by [`Scratch`], or by the next build of that key
//! when the process died) and renames it to `<key>/` when complete, so an
//! entry that exists is complete.

use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::recipe::{find_distro, DISTROS, GUEST_FILES, MASKED_UNITS, RECIPE_VERSION};
use super::tree::remove_tree;
use super::{io_ctx, BuiltImage, ImageSpec, Result, ROOTFS_FILE, WORK_SEED_FILE};

/// `<distro>-<variant>-<16 hex>`: the hex is sha256 over [`RECIPE_VERSION`],
/// the distribution, the variant, its package list, every file the recipe
/// writes, the masked units, the agent binary's sha256 and the mirror (none
/// means the distribution's own archive plus its security archive). Every
/// input is in the key: a build from another mirror may hold other packages,
/// so it must never fill the slot a default build reads. Errors when the
/// distribution is unknown or the agent cannot be read.
pub fn cache_key(spec: &ImageSpec) -> io::Result<String> {
    let distro = find_distro(&spec.distro).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "unknown distribution {:?} (known: {})",
                spec.distro,
                DISTROS
                    .iter()
                    .map(|d| d.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    let agent = sha256_file(&spec.agent_binary)?;
    let mut h = Sha256::new();
    h.update(format!("banger-image-recipe/{RECIPE_VERSION}\n"));
    h.update(format!("distro {} {}\n", distro.name, distro.suite));
    h.update(format!("variant {}\n", spec.variant));
    h.update(format!("packages {}\n", spec.variant.packages().join(",")));
    for f in GUEST_FILES {
        h.update(format!("file {} {}\n", f.path, f.content.len()));
        h.update(f.content);
    }
    for (unit, _) in MASKED_UNITS {
        h.update(format!("mask {unit}\n"));
    }
    h.update(format!("agent {agent}\n"));
    match &spec.mirror {
        Some(m) => h.update(format!("mirror {m}\n")),
        None => h.update("mirror default\n"),
    }
    let digest = hex::encode(h.finalize());
    Ok(format!(
        "{}-{}-{}",
        distro.name,
        spec.variant,
        &digest[..16]
    ))
}

pub(super) fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// `cache_dir`, created (0700) if missing, resolved to an absolute path.
pub(super) fn open_cache_dir(cache_dir: &Path) -> Result<PathBuf> {
    if !cache_dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(cache_dir)
            .map_err(io_ctx(format!("cannot create {}", cache_dir.display())))?;
    }
    cache_dir
        .canonicalize()
        .map_err(io_ctx(format!("cannot resolve {}", cache_dir.display())))
}

/// The image in `entry` if it is there.
pub(super) fn cached_entry(entry: &Path, key: &str) -> Option<BuiltImage> {
    let rootfs = entry.join(ROOTFS_FILE);
    let work_seed = entry.join(WORK_SEED_FILE);
    let meta = fs::metadata(&rootfs).ok()?;
    if !work_seed.is_file() {
        return None;
    }
    Some(BuiltImage {
        rootfs,
        work_seed,
        key: key.to_string(),
        cached: true,
        size_rootfs: meta.len(),
    })
}

/// A build's scratch directory, `cache_dir/<key>.tmp/`: removed when dropped
/// unless [`Scratch::commit`]ted. Only made under the key's build lock.
pub(super) struct Scratch {
    dir: Option<PathBuf>,
}

impl Scratch {
    /// Makes `cache_dir/<key>.tmp/` (0700), removing what a killed build of
    /// the same key left there.
    pub fn create(cache_dir: &Path, key: &str) -> Result<Scratch> {
        let tmp = cache_dir.join(format!("{key}.tmp"));
        if fs::symlink_metadata(&tmp).is_ok() {
            tracing::info!(dir = %tmp.display(), "removing a stale image build directory");
            remove_tree(&tmp).map_err(io_ctx(format!("cannot remove {}", tmp.display())))?;
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(io_ctx(format!("cannot create {}", tmp.display())))?;
        Ok(Scratch { dir: Some(tmp) })
    }

    pub fn path(&self) -> &Path {
        self.dir.as_deref().expect("not committed")
    }

    /// Syncs `files` (in the scratch directory), renames the directory to
    /// `entry` and syncs the cache directory: the entry appears complete or
    /// not at all.
    pub fn commit(mut self, files: &[&Path], entry: &Path) -> Result<()> {
        let tmp = self.dir.take().expect("not committed");
        let done = (|| {
            for f in files {
                File::open(f)
                    .and_then(|f| f.sync_all())
                    .map_err(io_ctx(format!("cannot sync {}", f.display())))?;
            }
            fs::rename(&tmp, entry).map_err(io_ctx(format!(
                "cannot rename {} to {}",
                tmp.display(),
                entry.display()
            )))
        })();
        if let Err(e) = done {
            self.dir = Some(tmp);
            return Err(e);
        }
        let cache_dir = entry.parent().unwrap_or(Path::new("/"));
        File::open(cache_dir)
            .and_then(|d| d.sync_all())
            .map_err(io_ctx(format!("cannot sync {}", cache_dir.display())))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            if let Err(e) = remove_tree(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the image build directory");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::spec;
    use super::super::Variant;
    use super::*;

    #[test]
    fn cache_key_behaviour() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        fs::write(&agent, b"agent v1").unwrap();
        let s = spec(&agent, Variant::Minimal);
        let k = cache_key(&s).unwrap();
        assert!(k.starts_with("debian-bookworm-minimal-"), "{k}");
        assert_eq!(k.len(), "debian-bookworm-minimal-".len() + 16);
        assert_eq!(cache_key(&s).unwrap(), k, "stable");

        // The mirror is part of the key (issue 9: a user's `--mirror` build
        // must not fill the slot the next default build reads), and so is
        // naming the default archive explicitly (then the security archive
        // is not used, so it is another image).
        let mirrored = ImageSpec {
            mirror: Some("http://mirror.example/debian".into()),
            ..s.clone()
        };
        assert_ne!(cache_key(&mirrored).unwrap(), k);
        let other_mirror = ImageSpec {
            mirror: Some("http://other.example/debian".into()),
            ..s.clone()
        };
        assert_ne!(cache_key(&other_mirror).unwrap(), k);
        assert_ne!(
            cache_key(&other_mirror).unwrap(),
            cache_key(&mirrored).unwrap()
        );
        let explicit = ImageSpec {
            mirror: Some("http://deb.debian.org/debian".into()),
            ..s.clone()
        };
        assert_ne!(cache_key(&explicit).unwrap(), k);

        // The variant and the agent's bytes are.
        let full = cache_key(&spec(&agent, Variant::Full)).unwrap();
        assert!(full.starts_with("debian-bookworm-full-"));
        assert_ne!(full[full.len() - 16..], k[k.len() - 16..]);
        fs::write(&agent, b"agent v2").unwrap();
        let k2 = cache_key(&s).unwrap();
        assert_ne!(k2, k);

        // Unknown distribution, missing agent.
        let other = ImageSpec {
            distro: "ubuntu-noble".into(),
            ..s.clone()
        };
        let e = cache_key(&other).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("debian-bookworm"), "{e}");
        fs::remove_file(&agent).unwrap();
        assert_eq!(cache_key(&s).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    /// A scratch directory is removed unless committed; committed, it is the
    /// entry.
    #[test]
    fn scratch_is_removed_unless_committed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Scratch::create(dir.path(), "k").unwrap();
        fs::write(s.path().join("f"), "x").unwrap();
        drop(s);
        assert!(!dir.path().join("k.tmp").exists());

        // A stale one (a killed build) is replaced.
        fs::create_dir(dir.path().join("k.tmp")).unwrap();
        fs::write(dir.path().join("k.tmp/old"), "x").unwrap();
        let s = Scratch::create(dir.path(), "k").unwrap();
        assert!(!s.path().join("old").exists());
        let f = s.path().join("f");
        fs::write(&f, "x").unwrap();
        s.commit(&[&f], &dir.path().join("k")).unwrap();
        assert!(!dir.path().join("k.tmp").exists());
        assert_eq!(fs::read_to_string(dir.path().join("k/f")).unwrap(), "x");
    }
}
