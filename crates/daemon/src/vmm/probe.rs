//! Checks of a VMM binary (its version, its features), made once per binary
//! and off the async runtime.
//!
//! A check runs the binary (`--version`, `-help`): up to seconds. The first
//! caller that needs it runs it on a blocking thread; callers arriving
//! meanwhile await the same answer in a [`tokio::sync::OnceCell`] without
//! holding a worker thread, and later callers read it from the cell. The
//! answer is kept for the binary's path and modification time, so replacing
//! the binary makes the next caller check again.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use tokio::sync::OnceCell;

type Cell<T> = Arc<OnceCell<Result<T, String>>>;

pub struct BinaryCheck<T> {
    /// The binary and mtime the cell answers for. A leaf lock, held to
    /// compare or replace the key, never while the check runs.
    current: Mutex<Option<(PathBuf, SystemTime, Cell<T>)>>,
}

impl<T> Default for BinaryCheck<T> {
    fn default() -> Self {
        BinaryCheck {
            current: Mutex::new(None),
        }
    }
}

impl<T: Clone + Send + Sync + 'static> BinaryCheck<T> {
    /// `check(bin)`'s outcome for `bin` as it is now: from the cell when
    /// this binary was checked already, else run on a blocking thread.
    pub async fn get(
        &self,
        bin: &Path,
        check: impl FnOnce(&Path) -> Result<T, String> + Send + 'static,
    ) -> Result<T, String> {
        let bin = bin.to_path_buf();
        let (bin, mtime) = off_runtime(move || {
            let m = std::fs::metadata(&bin).and_then(|m| m.modified());
            m.map(|t| (bin.clone(), t))
                .map_err(|e| format!("{}: {e}", bin.display()))
        })
        .await?;
        let cell = {
            let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
            match cur.as_ref() {
                Some((b, t, cell)) if *b == bin && *t == mtime => cell.clone(),
                _ => {
                    let cell = Cell::default();
                    *cur = Some((bin.clone(), mtime, cell.clone()));
                    cell
                }
            }
        };
        cell.get_or_init(|| off_runtime(move || check(&bin)))
            .await
            .clone()
    }

    /// Whether the current binary's check has finished (for tests).
    #[cfg(test)]
    pub fn settled(&self) -> bool {
        let cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        cur.as_ref().is_some_and(|(_, _, c)| c.initialized())
    }
}

/// Runs `f` on a blocking thread; a panic in it becomes an error.
pub async fn off_runtime<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(format!("the check failed: {e}")))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    use super::*;

    /// A slow check runs once for callers arriving together, keeps the
    /// runtime's only worker free while it runs, and runs again when the
    /// binary changes.
    #[tokio::test(flavor = "current_thread")]
    async fn one_check_per_binary_off_the_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("vmm");
        std::fs::write(&bin, "v1").unwrap();
        let probe = Arc::new(BinaryCheck::<String>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let slow = |runs: Arc<AtomicUsize>| {
            move |b: &Path| -> Result<String, String> {
                runs.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(500));
                Ok(std::fs::read_to_string(b).unwrap())
            }
        };
        let callers: Vec<_> = (0..2)
            .map(|_| {
                let (p, b, f) = (probe.clone(), bin.clone(), slow(runs.clone()));
                tokio::spawn(async move { p.get(&b, f).await })
            })
            .collect();
        // The one worker thread keeps running other tasks meanwhile.
        let t = Instant::now();
        let mut ticks = 0;
        while !probe.settled() {
            tokio::time::sleep(Duration::from_millis(10)).await;
            ticks += 1;
        }
        assert!(ticks >= 20, "{ticks} ticks in {:?}", t.elapsed());
        for c in callers {
            assert_eq!(c.await.unwrap().unwrap(), "v1");
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(probe.get(&bin, slow(runs.clone())).await.unwrap(), "v1");
        assert_eq!(runs.load(Ordering::SeqCst), 1);

        // A new binary (another mtime) is checked again.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&bin, "v2").unwrap();
        let f = std::fs::File::options().write(true).open(&bin).unwrap();
        f.set_modified(SystemTime::now() + Duration::from_secs(1))
            .unwrap();
        assert_eq!(probe.get(&bin, slow(runs.clone())).await.unwrap(), "v2");
        assert_eq!(runs.load(Ordering::SeqCst), 2);

        let e = probe
            .get(&dir.path().join("missing"), slow(runs.clone()))
            .await
            .unwrap_err();
        assert!(e.contains("missing"), "{e}");
    }
}
