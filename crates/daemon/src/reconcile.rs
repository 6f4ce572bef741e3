//! Start-up reconciliation of the store against the disk, so that whatever a
//! crash (or SIGKILL) interrupted leaves nothing behind: operations the store
//! still shows running are marked failed, the scratch area is emptied, and
//! artifact directories no row references are removed.

use std::collections::HashSet;
use std::path::Path;

use banger_core::paths::Paths;
use banger_core::store::Store;

use crate::ops::Ops;
use crate::staging::remove_dir;

pub fn at_start(paths: &Paths, store: &Store, ops: &Ops) -> anyhow::Result<()> {
    let failed = ops.fail_interrupted()?;
    if failed > 0 {
        tracing::warn!(
            count = failed,
            "marked operations interrupted by the last stop as failed"
        );
    }
    let staging = paths.staging_dir();
    if staging.exists() {
        for entry in std::fs::read_dir(&staging)?.flatten() {
            tracing::info!(path = %entry.path().display(), "removing half-staged files");
            remove_path(&entry.path());
        }
    }
    let kernels: HashSet<String> = store.list_kernels()?.into_iter().map(|k| k.id).collect();
    remove_orphans(&paths.kernels_dir(), &kernels);
    let images: HashSet<String> = store.list_images()?.into_iter().map(|i| i.id).collect();
    remove_orphans(&paths.images_dir(), &images);
    Ok(())
}

fn remove_orphans(dir: &Path, known: &HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !known.contains(&name) {
            tracing::warn!(path = %entry.path().display(), "removing files no record refers to");
            remove_path(&entry.path());
        }
    }
}

fn remove_path(p: &Path) {
    if p.is_dir() {
        remove_dir(p);
    } else if let Err(e) = std::fs::remove_file(p) {
        tracing::warn!(path = %p.display(), error = %e, "cannot remove");
    }
}
