//! One build per cache key at a time, across processes: the kernel and image
//! builders both hold `cache_dir/<key>.lock` (flock) while they build, so two
//! daemons (or two homes sharing a cache) never build the same entry twice at
//! once; the second waits, then finds the entry in the cache.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Why [`lock_key`] gave up.
#[derive(Debug)]
pub enum LockError {
    /// `cancel` was set while waiting.
    Cancelled,
    /// The lock file could not be opened or locked.
    Io { context: String, source: io::Error },
}

/// Holds `cache_dir/<key>.lock` (0600) until the returned file is dropped,
/// checking `cancel` every 200 ms while another process holds it.
pub fn lock_key(cache_dir: &Path, key: &str, cancel: &AtomicBool) -> Result<File, LockError> {
    use rustix::fs::{flock, FlockOperation};
    let path = cache_dir.join(format!("{key}.lock"));
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&path)
        .map_err(|source| LockError::Io {
            context: format!("cannot open {}", path.display()),
            source,
        })?;
    loop {
        match flock(&f, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(f),
            Err(rustix::io::Errno::WOULDBLOCK) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(LockError::Io {
                    context: format!("cannot lock {}", path.display()),
                    source: e.into(),
                })
            }
        }
        if cancel.load(Ordering::Relaxed) {
            return Err(LockError::Cancelled);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_waits_and_can_be_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let no = AtomicBool::new(false);
        let held = lock_key(dir.path(), "k", &no).unwrap();
        // Another open file description: flock conflicts as between processes.
        let cancel = AtomicBool::new(true);
        assert!(matches!(
            lock_key(dir.path(), "k", &cancel),
            Err(LockError::Cancelled)
        ));
        // A different key is independent.
        drop(lock_key(dir.path(), "other", &no).unwrap());
        drop(held);
        drop(lock_key(dir.path(), "k", &cancel).unwrap());
        let e = lock_key(&dir.path().join("missing"), "k", &no).unwrap_err();
        assert!(matches!(e, LockError::Io { .. }), "{e:?}");
    }
}
