//! Reads of files callers pass as descriptors: off the runtime and bounded
//! in time.
//!
//! A caller's file can be anything it can open: a file on a FUSE or network
//! mount whose server never answers makes `fstat` and `pread` wait forever.
//! On one of the runtime's two worker threads that would stop every other
//! request, so each check of a caller's file (its type, a superblock, a
//! config fragment) runs on a blocking thread, and the request gives up
//! after [`READ_TIMEOUT`] with an error that names the file. The thread
//! stays blocked until the filesystem answers (nothing can interrupt it),
//! so at most [`MAX_WAITING`] such threads may be outstanding: past that,
//! requests with files are refused as busy rather than pinning more of the
//! blocking pool.

use std::fs::File;
use std::time::Duration;

use crate::error::Error;
use rustix::fs::OFlags;
use tokio::sync::Semaphore;

/// How long one check of a caller's file may take. A local file answers in
/// microseconds; a slow network mount in well under this.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How many checks may be under way (or stuck) at once.
pub const MAX_WAITING: usize = 16;

static WAITING: Semaphore = Semaphore::const_new(MAX_WAITING);

/// Runs `check` on the caller's file `f` on a blocking thread and returns
/// the file with its outcome; fails after [`READ_TIMEOUT`]. Refuses
/// descriptors that cannot be read (`O_PATH`, write-only) before anything
/// touches the file.
pub async fn check<T: Send + 'static>(
    f: File,
    what: &str,
    check: impl FnOnce(&File) -> Result<T, Error> + Send + 'static,
) -> Result<(File, T), Error> {
    require_readable(&f, what)?;
    check_with(&WAITING, READ_TIMEOUT, f, what, check).await
}

/// [`check`] for a descriptor the daemon never reads through, only names
/// (a source tree as `/proc/self/fd/N`): any access mode, `O_PATH` too.
pub async fn check_named<T: Send + 'static>(
    f: File,
    what: &str,
    check: impl FnOnce(&File) -> Result<T, Error> + Send + 'static,
) -> Result<(File, T), Error> {
    check_with(&WAITING, READ_TIMEOUT, f, what, check).await
}

async fn check_with<T: Send + 'static>(
    waiting: &'static Semaphore,
    timeout: Duration,
    f: File,
    what: &str,
    check: impl FnOnce(&File) -> Result<T, Error> + Send + 'static,
) -> Result<(File, T), Error> {
    let permit = waiting.try_acquire().map_err(|_| {
        Error::busy(format!(
            "{what}: {MAX_WAITING} reads of passed files are still waiting on their \
             filesystems; retry later"
        ))
    })?;
    // The permit goes with the thread: it is returned when the read does,
    // not when the request gives up.
    permit.forget();
    let task = tokio::task::spawn_blocking(move || {
        let _returned = Returned(waiting);
        let r = check(&f);
        r.map(|v| (f, v))
    });
    match tokio::time::timeout(timeout, task).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(Error::internal(format!("{what}: the check failed: {e}"))),
        Err(_) => Err(Error::timeout(format!(
            "{what}: reading the passed file did not finish within {} s; is it on a FUSE \
                 or network filesystem that does not answer?",
            timeout.as_secs()
        ))
        .hint("copy the file to a local filesystem and pass the copy")),
    }
}

/// Gives the semaphore's permit back when the blocking read ends.
struct Returned(&'static Semaphore);

impl Drop for Returned {
    fn drop(&mut self) {
        self.0.add_permits(1);
    }
}

/// Refuses `O_PATH` and write-only descriptors: reading them fails anyway,
/// and the caller should hear why.
pub fn require_readable(f: &File, what: &str) -> Result<(), Error> {
    let flags = rustix::fs::fcntl_getfl(f)
        .map_err(|e| Error::internal(format!("{what}: cannot inspect the descriptor: {e}")))?;
    if flags.contains(OFlags::PATH) {
        return Err(Error::invalid(format!(
            "{what}: the descriptor was opened with O_PATH; pass one opened for reading"
        )));
    }
    if (flags & OFlags::RWMODE) == OFlags::WRONLY {
        return Err(Error::invalid(format!(
            "{what}: the descriptor is write-only; pass one opened for reading"
        )));
    }
    Ok(())
}

/// Refuses descriptors that cannot be written (`O_PATH`, read-only): where
/// the daemon writes for the caller (a bundle), only into what the caller
/// itself opened for writing.
pub fn require_writable(f: &File, what: &str) -> Result<(), Error> {
    let flags = rustix::fs::fcntl_getfl(f)
        .map_err(|e| Error::internal(format!("{what}: cannot inspect the descriptor: {e}")))?;
    if flags.contains(OFlags::PATH) || (flags & OFlags::RWMODE) == OFlags::RDONLY {
        return Err(Error::invalid(format!(
            "{what}: the descriptor is not open for writing; pass one opened read-write"
        )));
    }
    Ok(())
}

/// The caller's file, checked to be a regular file (bounded, off the
/// runtime).
pub async fn regular(f: File, what: &str) -> Result<File, Error> {
    let w = what.to_string();
    let (f, _size) = check(f, what, move |f| {
        banger_core::artifact::stage::require_regular(f, &w).map_err(Error::from)
    })
    .await?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use banger_proto::{ErrorKind, RpcError};

    #[test]
    fn only_descriptors_open_for_writing_are_written() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"").unwrap();
        let ro = File::open(&p).unwrap();
        assert!(require_writable(&ro, "output").is_err());
        let path_only: File = rustix::fs::open(&p, OFlags::PATH, rustix::fs::Mode::empty())
            .unwrap()
            .into();
        assert!(require_writable(&path_only, "output").is_err());
        let rw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        require_writable(&rw, "output").unwrap();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_check_that_never_ends_times_out_and_leaves_the_runtime_free() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"data").unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = Instant::now();
        let ticker = tokio::spawn(async {
            let mut n = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(10)).await;
                n += 1;
                if n == 20 {
                    return n;
                }
            }
        });
        static ONE: Semaphore = Semaphore::const_new(1);
        let e = check_with(
            &ONE,
            Duration::from_millis(500),
            File::open(&p).unwrap(),
            "the rootfs",
            move |_| {
                // Stands in for a read a FUSE server never answers.
                let _ = rx.recv();
                Ok(())
            },
        )
        .await
        .unwrap_err();
        let e = RpcError::from(e);
        let took = t.elapsed();
        assert_eq!(e.kind(), Some(ErrorKind::Timeout), "{e:?}");
        assert!(e.message.contains("the rootfs"), "{}", e.message);
        assert!(took >= Duration::from_millis(500), "{took:?}");
        // The one worker ran the ticker meanwhile.
        assert!(ticker.is_finished());
        assert_eq!(ticker.await.unwrap(), 20);
        // The stuck thread holds its permit until it ends: the next caller
        // is refused at once.
        assert_eq!(ONE.available_permits(), 0);
        let e = check_with(&ONE, READ_TIMEOUT, File::open(&p).unwrap(), "f", |_| Ok(()))
            .await
            .unwrap_err();
        let e = RpcError::from(e);
        assert_eq!(e.kind(), Some(ErrorKind::Busy), "{e:?}");
        drop(tx);
        let deadline = Instant::now() + Duration::from_secs(5);
        while ONE.available_permits() != 1 {
            assert!(Instant::now() < deadline, "permit not returned");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // A check that answers returns the file and its outcome.
        let (f, n) = check(File::open(&p).unwrap(), "f", |f| {
            Ok(f.metadata().unwrap().len())
        })
        .await
        .unwrap();
        assert_eq!(n, 4);
        assert!(regular(f, "f").await.is_ok());
        let e = regular(File::open(dir.path()).unwrap(), "the kernel")
            .await
            .unwrap_err();
        let e = RpcError::from(e);
        assert!(e.message.contains("is a directory"), "{}", e.message);
    }

    #[test]
    fn unreadable_descriptors_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"data").unwrap();
        let wo = File::options().write(true).open(&p).unwrap();
        let e = require_readable(&wo, "the rootfs").unwrap_err();
        let e = RpcError::from(e);
        assert!(e.message.contains("write-only"), "{}", e.message);
        let path_fd = rustix::fs::open(
            &p,
            OFlags::PATH | OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .unwrap();
        let path_fd = File::from(path_fd);
        let e = require_readable(&path_fd, "the kernel").unwrap_err();
        let e = RpcError::from(e);
        assert!(e.message.contains("O_PATH"), "{}", e.message);
        require_readable(&File::open(&p).unwrap(), "f").unwrap();
        let rw = File::options().read(true).write(true).open(&p).unwrap();
        require_readable(&rw, "f").unwrap();
    }
}
