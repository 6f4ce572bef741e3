//! Scratch space for one operation and the rule that nothing half-made stays.
//!
//! Every file an operation produces is written under `state/tmp/<op id>/`
//! first and renamed into its final directory only when complete. The
//! [`Scratch`] guard removes the scratch directory when dropped (success,
//! error or cancellation alike), and [`Placed`] removes a final directory
//! unless the operation reached the point where the store references it. The
//! daemon also empties `state/tmp` at start, which covers a crash.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use banger_core::artifact::stage;

use crate::error::Error;
use banger_core::paths::Paths;

use crate::ops::OpHandle;

pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    pub fn new(paths: &Paths, op_id: &str) -> Result<Scratch, Error> {
        let dir = paths.staging_dir().join(op_id);
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::internal(format!("cannot create scratch dir {}: {e}", dir.display()))
        })?;
        Ok(Scratch { dir })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        remove_dir(&self.dir);
    }
}

/// A final directory that is removed on drop unless [`Placed::keep`] was called.
pub struct Placed {
    dir: PathBuf,
    keep: bool,
}

impl Placed {
    pub fn new(dir: PathBuf) -> Placed {
        Placed { dir, keep: false }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn keep(mut self) {
        self.keep = true;
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        if !self.keep {
            remove_dir(&self.dir);
        }
    }
}

pub fn remove_dir(dir: &Path) {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(dir = %dir.display(), error = %e, "cannot remove"),
    }
}

/// [`remove_dir`] on a blocking thread: a registered image or kernel is
/// gigabytes of files.
pub async fn remove_dir_blocking(dir: PathBuf) {
    let _ = blocking(move || {
        remove_dir(&dir);
        Ok(())
    })
    .await;
}

/// Runs blocking work off the async threads.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::internal(format!("worker failed: {e}")))?
}

pub fn hash(op: &OpHandle, flag: &AtomicBool, f: &File) -> Result<(u64, String), Error> {
    let report = |done, total| op.progress(done, total, "bytes");
    let ctl = stage::Ctl {
        cancel: flag,
        progress: &report,
    };
    stage::hash_file(f, &ctl).map_err(Error::from)
}

/// Copies `src` into the scratch file `tmp` (reflink when possible).
pub async fn copy(op: &OpHandle, src: File, tmp: PathBuf) -> Result<stage::Staged, Error> {
    let op = op.clone();
    blocking(move || {
        let flag = op.cancel_flag();
        let report = |done, total| op.progress(done, total, "bytes");
        let ctl = stage::Ctl {
            cancel: &flag,
            progress: &report,
        };
        stage::copy_into(&src, &tmp, &ctl).map_err(Error::from)
    })
    .await
}

pub fn commit(tmp: &Path, dest: &Path) -> Result<(), Error> {
    stage::commit(tmp, dest).map_err(Error::from)
}
