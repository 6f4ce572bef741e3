//! Atomic staging of user files into the state directory.
//!
//! The daemon receives files as open descriptors passed over its socket. It
//! stages each one in two steps: [`copy_into`] fills a fresh temporary file
//! next to the destination (cloning the extents with `FICLONE` when the
//! filesystem can, else copying only the data extents so holes stay holes)
//! and fsyncs it; [`commit`] renames it into place and fsyncs the directory.
//! A crash leaves at most a stray temporary file, never a half-written
//! destination; any error or cancellation removes the temporary file.
//!
//! The source descriptor is shared with the sending process, so it is only
//! ever read with positioned reads: its file offset never moves.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{FileType, SeekFrom};
use sha2::{Digest, Sha256};

use super::read_full_at;

/// Bytes read, hashed and written per step; cancellation is checked and
/// progress reported once per step.
const CHUNK: usize = 1 << 20;
/// Granularity at which all-zero data is left as a hole in the copy.
const ZERO_BLOCK: usize = 4096;
static ZEROS: [u8; CHUNK] = [0; CHUNK];

/// How the bytes got into the staged file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    /// `FICLONE`: the staged file shares the source's extents; no data copied.
    Reflink,
    /// Data extents copied, holes (and all-zero blocks) left as holes.
    SparseCopy,
}

impl CopyMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            CopyMethod::Reflink => "reflink",
            CopyMethod::SparseCopy => "sparse-copy",
        }
    }
}

impl std::fmt::Display for CopyMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`copy_into`] produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Staged {
    /// Logical size in bytes.
    pub size: u64,
    /// SHA-256 of the full logical content (holes read as zeros), lowercase hex.
    pub sha256: String,
    pub method: CopyMethod,
}

/// Cancellation and progress for a long copy or hash.
#[derive(Clone, Copy)]
pub struct Ctl<'a> {
    /// Checked once per chunk; when set the operation stops with
    /// [`StageError::Cancelled`] and cleans up.
    pub cancel: &'a AtomicBool,
    /// Called once per chunk with (bytes done, bytes total).
    pub progress: &'a (dyn Fn(u64, u64) + Sync),
}

static NEVER_CANCELLED: AtomicBool = AtomicBool::new(false);

impl Ctl<'static> {
    /// Never cancelled, reports nothing.
    pub fn none() -> Ctl<'static> {
        Ctl {
            cancel: &NEVER_CANCELLED,
            progress: &|_, _| {},
        }
    }
}

impl Ctl<'_> {
    fn check(&self) -> Result<(), StageError> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(StageError::Cancelled)
        } else {
            Ok(())
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// A filesystem operation failed; `what` says which, `path` names the file.
    #[error("{what} {path}: {source}")]
    Io {
        what: String,
        path: PathBuf,
        source: io::Error,
    },
    /// The file given is a directory, FIFO, socket, device, ... — only regular
    /// files can be staged.
    #[error("{what} is a {kind}, not a regular file; give the path of a regular file")]
    NotRegular { what: String, kind: &'static str },
    /// The operation was cancelled; the temporary file was removed.
    #[error("cancelled")]
    Cancelled,
    /// The filesystem holding `path` has not enough free space (checked before
    /// copying, or hit during the copy); the temporary file was removed.
    #[error(
        "not enough free space for {path}: about {} needed, {} available; free some \
         space on that filesystem and try again",
        human(.needed),
        human(.available)
    )]
    NoSpace {
        path: PathBuf,
        needed: u64,
        available: u64,
    },
    /// The source ended before its size said it would: something truncated or
    /// rewrote it while it was being copied.
    #[error(
        "the source file changed while being copied to {path} (expected {expected} bytes, it \
         ended at {found}); make sure nothing writes to it and try again"
    )]
    SourceChanged {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    /// [`commit`] was asked to move a file across filesystems, which cannot be
    /// atomic.
    #[error(
        "cannot move {tmp} to {dest} atomically: they are on different filesystems; \
         create the temporary file in the destination's filesystem"
    )]
    CrossFilesystem { tmp: PathBuf, dest: PathBuf },
}

type Result<T, E = StageError> = std::result::Result<T, E>;

fn io_err(
    what: impl Into<String>,
    path: impl Into<PathBuf>,
) -> impl FnOnce(io::Error) -> StageError {
    let (what, path) = (what.into(), path.into());
    move |source| StageError::Io { what, path, source }
}

/// `1536` → `1.5 KiB`; for messages.
fn human(bytes: &u64) -> String {
    const UNITS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = *bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The file's path as the kernel knows it, for error messages only.
fn fd_path(f: &File) -> PathBuf {
    let fd = f.as_raw_fd();
    std::fs::read_link(format!("/proc/self/fd/{fd}"))
        .unwrap_or_else(|_| PathBuf::from(format!("<descriptor {fd}>")))
}

/// Names a file type for users ("directory", "FIFO", ...).
pub(crate) fn file_kind(t: FileType) -> &'static str {
    match t {
        FileType::RegularFile => "regular file",
        FileType::Directory => "directory",
        FileType::Symlink => "symbolic link",
        FileType::Fifo => "FIFO (named pipe)",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        FileType::Unknown => "file of unknown type",
    }
}

/// Checks with `fstat` that `f` is a regular file and returns its size.
/// `what` names the file in the error ("the rootfs image /x/y.ext4").
pub fn require_regular(f: &File, what: &str) -> Result<u64> {
    let st = rustix::fs::fstat(f)
        .map_err(io::Error::from)
        .map_err(io_err(format!("cannot inspect {what}"), fd_path(f)))?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => Ok(st.st_size as u64),
        other => Err(StageError::NotRegular {
            what: what.to_string(),
            kind: file_kind(other),
        }),
    }
}

/// Removes the temporary file on drop unless disarmed.
struct TmpGuard<'a> {
    path: &'a Path,
    armed: bool,
}

impl Drop for TmpGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            if let Err(e) = std::fs::remove_file(self.path) {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot remove staging file");
            }
        }
    }
}

/// Creates `tmp` (which must not exist: `O_CREAT|O_EXCL`, mode 0644) and fills
/// it with `src`'s content: `FICLONE` when both are on one reflink-capable
/// filesystem, else a sparse-aware copy (`SEEK_DATA`/`SEEK_HOLE` over `src`,
/// only data written, all-zero 4 KiB blocks left as holes too). Hashes the full
/// logical content with SHA-256 in the same pass; after a clone the clone
/// itself is hashed, so the hash always describes what was stored.
///
/// `src` is read only with positioned reads; its offset never moves (hole
/// probing uses a separate open of the same file via `/proc/self/fd`). Free
/// space is checked before a copy. `tmp` is fsynced before returning; on any
/// error or cancellation it is removed.
pub fn copy_into(src: &File, tmp: &Path, ctl: &Ctl) -> Result<Staged> {
    copy_into_impl(src, tmp, ctl, true)
}

fn copy_into_impl(src: &File, tmp: &Path, ctl: &Ctl, check_space: bool) -> Result<Staged> {
    ctl.check()?;
    let size = require_regular(src, "the source file")?;
    let out = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(tmp)
        .map_err(io_err("cannot create staging file", tmp))?;
    let mut guard = TmpGuard {
        path: tmp,
        armed: true,
    };
    // The mode above went through the umask.
    out.set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(io_err("cannot set the mode of staging file", tmp))?;

    let (size, sha256, method) = match rustix::fs::ioctl_ficlone(&out, src) {
        Ok(()) => {
            let (size, sha256) = hash_impl(&out, ctl, tmp)?;
            (size, sha256, CopyMethod::Reflink)
        }
        Err(e) => {
            // Not supported here, different filesystems, or anything else:
            // copying reports real problems with better context.
            tracing::debug!(tmp = %tmp.display(), error = %e, "FICLONE failed; copying");
            out.set_len(0)
                .map_err(io_err("cannot truncate staging file", tmp))?;
            if check_space {
                require_space(src, &out, tmp, size)?;
            }
            let sha256 = sparse_copy(src, &out, tmp, size, ctl)?;
            (size, sha256, CopyMethod::SparseCopy)
        }
    };
    out.sync_all().map_err(|e| write_err(e, &out, tmp, size))?;
    guard.armed = false;
    Ok(Staged {
        size,
        sha256,
        method,
    })
}

/// Free bytes on `f`'s filesystem that an unprivileged process may use
/// (`f_bavail`), even when this process is root: the root daemon writes for
/// its users, and must not fill the reserve the host keeps for root.
fn free_bytes(f: &File) -> io::Result<u64> {
    let v = rustix::fs::fstatvfs(f)?;
    Ok(v.f_bavail.saturating_mul(v.f_frsize))
}

fn no_space(out: &File, tmp: &Path, needed: u64) -> StageError {
    StageError::NoSpace {
        path: tmp.to_path_buf(),
        needed,
        available: free_bytes(out).unwrap_or(0),
    }
}

fn write_err(e: io::Error, out: &File, tmp: &Path, needed: u64) -> StageError {
    match e.raw_os_error() {
        Some(libc::ENOSPC) | Some(libc::EDQUOT) => no_space(out, tmp, needed),
        _ => StageError::Io {
            what: "cannot write staging file".into(),
            path: tmp.to_path_buf(),
            source: e,
        },
    }
}

/// Fails early when the source's allocated size clearly does not fit.
fn require_space(src: &File, out: &File, tmp: &Path, size: u64) -> Result<()> {
    let st = rustix::fs::fstat(src)
        .map_err(io::Error::from)
        .map_err(io_err("cannot inspect the source file", fd_path(src)))?;
    let needed = (st.st_blocks as u64).saturating_mul(512).min(size);
    let available = free_bytes(out).map_err(io_err("cannot read free space for", tmp))?;
    if needed > available {
        return Err(StageError::NoSpace {
            path: tmp.to_path_buf(),
            needed,
            available,
        });
    }
    Ok(())
}

/// A second open file description of `f`, so `SEEK_DATA`/`SEEK_HOLE` do not
/// move the offset the sender shares with us.
fn reopen(f: &File) -> Option<File> {
    File::open(format!("/proc/self/fd/{}", f.as_raw_fd())).ok()
}

/// The next data extent at or after `off`, clamped to `size`: (start, end).
/// Without hole information everything is data.
fn next_data(seeker: Option<&File>, off: u64, size: u64) -> (u64, u64) {
    let Some(s) = seeker else {
        return (off, size);
    };
    let Ok(pos) = i64::try_from(off) else {
        return (off, size);
    };
    let data = match rustix::fs::seek(s, SeekFrom::Data(pos)) {
        Ok(d) => d.min(size),
        // ENXIO: only a hole from here to the end.
        Err(rustix::io::Errno::NXIO) => return (size, size),
        Err(_) => return (off, size),
    };
    let end = i64::try_from(data)
        .ok()
        .and_then(|d| rustix::fs::seek(s, SeekFrom::Hole(d)).ok())
        .unwrap_or(size)
        .min(size);
    (data, end.max(data))
}

/// Reads until `buf` is full or EOF; returns the bytes read.
fn is_zero(b: &[u8]) -> bool {
    match b.split_first() {
        None => true,
        Some((&first, rest)) => first == 0 && rest == &b[..b.len() - 1],
    }
}

/// Writes `buf` at `off`, skipping all-zero blocks (the file is fresh, so
/// they read back as zeros from the hole).
fn write_skipping_zeros(out: &File, buf: &[u8], off: u64) -> io::Result<()> {
    let mut run_start: Option<usize> = None;
    let mut i = 0;
    while i < buf.len() {
        let end = (i + ZERO_BLOCK).min(buf.len());
        if is_zero(&buf[i..end]) {
            if let Some(s) = run_start.take() {
                out.write_all_at(&buf[s..i], off + s as u64)?;
            }
        } else if run_start.is_none() {
            run_start = Some(i);
        }
        i = end;
    }
    if let Some(s) = run_start {
        out.write_all_at(&buf[s..], off + s as u64)?;
    }
    Ok(())
}

fn sparse_copy(src: &File, out: &File, tmp: &Path, size: u64, ctl: &Ctl) -> Result<String> {
    let seeker = reopen(src);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut off = 0u64;
    while off < size {
        let (data, end) = next_data(seeker.as_ref(), off, size);
        // The hole [off, data): hash zeros, write nothing.
        while off < data {
            ctl.check()?;
            let n = (data - off).min(CHUNK as u64) as usize;
            hasher.update(&ZEROS[..n]);
            off += n as u64;
            (ctl.progress)(off, size);
        }
        // The data [data, end).
        while off < end {
            ctl.check()?;
            let want = (end - off).min(CHUNK as u64) as usize;
            let n = read_full_at(src, &mut buf[..want], off)
                .map_err(io_err("cannot read the source file", fd_path(src)))?;
            if n < want {
                return Err(StageError::SourceChanged {
                    path: tmp.to_path_buf(),
                    expected: size,
                    found: off + n as u64,
                });
            }
            hasher.update(&buf[..n]);
            write_skipping_zeros(out, &buf[..n], off).map_err(|e| write_err(e, out, tmp, size))?;
            off += n as u64;
            (ctl.progress)(off, size);
        }
    }
    // Trailing holes (and skipped zero blocks at the end) need the length set.
    out.set_len(size)
        .map_err(|e| write_err(e, out, tmp, size))?;
    Ok(hex::encode(hasher.finalize()))
}

/// SHA-256 of `f`'s full content (holes read as zeros), read with positioned
/// reads (the offset does not move): (size, lowercase hex).
pub fn hash_file(f: &File, ctl: &Ctl) -> Result<(u64, String)> {
    hash_impl(f, ctl, &fd_path(f))
}

fn hash_impl(f: &File, ctl: &Ctl, path: &Path) -> Result<(u64, String)> {
    let total = f.metadata().map_err(io_err("cannot inspect", path))?.len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    loop {
        ctl.check()?;
        let n = read_full_at(f, &mut buf, done).map_err(io_err("cannot read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        done += n as u64;
        (ctl.progress)(done, total.max(done));
    }
    Ok((done, hex::encode(hasher.finalize())))
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("cannot fsync directory", dir))
}

fn non_empty_parent(p: &Path) -> &Path {
    match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

/// Creates `dir` and its missing ancestors with mode 0755, fsyncing each new
/// directory's parent so the new entries are durable.
fn create_dirs(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut cur = dir;
    while !cur.try_exists().map_err(io_err("cannot inspect", cur))? {
        missing.push(cur);
        match cur.parent() {
            Some(p) if !p.as_os_str().is_empty() => cur = p,
            _ => break,
        }
    }
    for d in missing.into_iter().rev() {
        match DirBuilder::new().mode(0o755).create(d) {
            Ok(()) => {
                std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
                    .map_err(io_err("cannot set the mode of directory", d))?;
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(io_err("cannot create directory", d)(e)),
        }
        fsync_dir(non_empty_parent(d))?;
    }
    Ok(())
}

/// Renames `tmp` to `dest` atomically (an existing `dest` is replaced; both
/// must be on one filesystem), creating `dest`'s missing parent directories
/// (0755) first, then fsyncs `dest`'s directory (and `tmp`'s, if different).
pub fn commit(tmp: &Path, dest: &Path) -> Result<()> {
    let dir = non_empty_parent(dest);
    create_dirs(dir)?;
    if let Err(e) = std::fs::rename(tmp, dest) {
        return Err(if e.raw_os_error() == Some(libc::EXDEV) {
            StageError::CrossFilesystem {
                tmp: tmp.to_path_buf(),
                dest: dest.to_path_buf(),
            }
        } else {
            StageError::Io {
                what: format!("cannot move {} to", tmp.display()),
                path: dest.to_path_buf(),
                source: e,
            }
        });
    }
    fsync_dir(dir)?;
    let tmp_dir = non_empty_parent(tmp);
    if tmp_dir != dir {
        fsync_dir(tmp_dir)?;
    }
    Ok(())
}

/// Does `dir`'s filesystem support `FICLONE`? Creates two small files in
/// `dir`, tries to clone one into the other and removes both.
pub fn reflink_supported(dir: &Path) -> io::Result<bool> {
    let id = crate::ids::new_id();
    let a = dir.join(format!(".banger-reflink-probe-{id}-a"));
    let b = dir.join(format!(".banger-reflink-probe-{id}-b"));
    let create = |p: &Path| {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(p)
    };
    let result = (|| {
        let fa = create(&a)?;
        fa.write_all_at(&[0xa5; 4096], 0)?;
        let fb = create(&b)?;
        match rustix::fs::ioctl_ficlone(&fb, &fa) {
            Ok(()) => Ok(true),
            Err(e) if is_unsupported(e) => Ok(false),
            Err(e) => Err(io::Error::from(e)),
        }
    })();
    for p in [&a, &b] {
        match std::fs::remove_file(p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    result
}

fn is_unsupported(e: rustix::io::Errno) -> bool {
    use rustix::io::Errno;
    [
        Errno::OPNOTSUPP,
        Errno::NOTTY,
        Errno::INVAL,
        Errno::NOSYS,
        Errno::XDEV,
    ]
    .contains(&e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Seek;
    use std::os::unix::fs::MetadataExt;
    use std::process::Command;
    use std::sync::atomic::AtomicU64;
    use std::time::{Duration, Instant};

    const MIB: u64 = 1 << 20;

    fn require_root() {
        assert!(
            rustix::process::geteuid().is_root(),
            "this test loop-mounts filesystems and must run as root (CI does); \
             run it with `sudo -E cargo test -p banger-core`"
        );
    }

    fn run(cmd: &str, args: &[&str]) -> String {
        let out = Command::new(cmd)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
        assert!(
            out.status.success(),
            "{cmd} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn sha256sum(p: &Path) -> String {
        run("sha256sum", &[p.to_str().unwrap()])
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    }

    /// Deterministic non-zero pseudo-random bytes (xorshift).
    fn fill_random(buf: &mut [u8], seed: u64) {
        let mut x = seed | 1;
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }

    /// Writes `len` bytes of pseudo-random data at `off`.
    fn write_random(f: &File, off: u64, len: u64, seed: u64) {
        let mut buf = vec![0u8; MIB as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MIB) as usize;
            fill_random(&mut buf[..n], seed.wrapping_add(done));
            f.write_all_at(&buf[..n], off + done).unwrap();
            done += n as u64;
        }
    }

    /// A filesystem image loop-mounted on a temporary directory; unmounted
    /// on drop (also while unwinding from a failed assertion). `mount -o loop`
    /// sets autoclear, so the unmount releases the loop device.
    struct LoopMount {
        dir: tempfile::TempDir,
    }

    impl LoopMount {
        fn new(image: &Path, size: u64, mkfs: &[&str]) -> LoopMount {
            require_root();
            File::create(image).unwrap().set_len(size).unwrap();
            let mut args = mkfs[1..].to_vec();
            args.push(image.to_str().unwrap());
            run(mkfs[0], &args);
            let dir = tempfile::tempdir().unwrap();
            run(
                "mount",
                &[
                    "-o",
                    "loop",
                    image.to_str().unwrap(),
                    dir.path().to_str().unwrap(),
                ],
            );
            LoopMount { dir }
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }
    }

    impl Drop for LoopMount {
        fn drop(&mut self) {
            let dir = self.dir.path().to_str().unwrap();
            let ok = Command::new("umount")
                .arg(dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                // Something still holds it open; detach now, free when released.
                let _ = Command::new("umount").args(["-l", dir]).status();
            }
        }
    }

    /// Asserts no loop device is left attached to `image`.
    fn assert_loop_released(image: &Path) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let out = run("losetup", &["-j", image.to_str().unwrap()]);
            if out.trim().is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "loop device still attached: {out}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn free_bytes_at(p: &Path) -> u64 {
        let v = rustix::fs::statvfs(p).unwrap();
        v.f_bfree * v.f_frsize
    }

    fn open_rw(p: &Path) -> File {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(p)
            .unwrap()
    }

    #[test]
    fn sparse_copy_keeps_holes_content_and_the_source_offset() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src.img");
        {
            let f = open_rw(&src_path);
            write_random(&f, 0, MIB + 123, 1);
            write_random(&f, 10 * MIB, 3 * MIB + 5, 2);
            // An allocated but all-zero MiB: may become a hole in the copy.
            f.write_all_at(&vec![0u8; MIB as usize], 16 * MIB).unwrap();
            write_random(&f, 20 * MIB, 4096, 3);
            f.set_len(40 * MIB).unwrap();
            f.sync_all().unwrap();
        }
        let mut src = File::open(&src_path).unwrap();
        src.seek(io::SeekFrom::Start(12345)).unwrap();

        let reports = std::sync::Mutex::new(Vec::new());
        let progress = |done, total| reports.lock().unwrap().push((done, total));
        let cancel = AtomicBool::new(false);
        let ctl = Ctl {
            cancel: &cancel,
            progress: &progress,
        };
        let tmp = dir.path().join("dest.tmp");
        let staged = copy_into(&src, &tmp, &ctl).unwrap();

        assert_eq!(
            src.stream_position().unwrap(),
            12345,
            "the source offset moved"
        );
        // /tmp here is not reflink-capable (asserted in another test).
        assert_eq!(staged.method, CopyMethod::SparseCopy);
        assert_eq!(staged.size, 40 * MIB);
        assert_eq!(staged.sha256, sha256sum(&src_path));
        assert_eq!(
            std::fs::read(&tmp).unwrap(),
            std::fs::read(&src_path).unwrap()
        );
        let (src_meta, tmp_meta) = (src_path.metadata().unwrap(), tmp.metadata().unwrap());
        assert!(
            tmp_meta.blocks() < src_meta.blocks(),
            "copy allocates {} blocks, source {}",
            tmp_meta.blocks(),
            src_meta.blocks()
        );
        // Data is ~5 MiB of 40: the copy must stay sparse.
        assert!(tmp_meta.blocks() * 512 < 6 * MIB, "copy is not sparse");
        assert_eq!(tmp_meta.mode() & 0o7777, 0o644);

        let reports = reports.into_inner().unwrap();
        assert!(
            reports.windows(2).all(|w| w[0].0 <= w[1].0),
            "progress went backwards"
        );
        assert_eq!(reports.last(), Some(&(40 * MIB, 40 * MIB)));

        let staged_file = File::open(&tmp).unwrap();
        assert_eq!(
            hash_file(&staged_file, &Ctl::none()).unwrap(),
            (40 * MIB, staged.sha256.clone())
        );
    }

    #[test]
    fn empty_source_and_hash_of_nothing() {
        let dir = tempfile::tempdir().unwrap();
        File::create(dir.path().join("empty")).unwrap();
        let src = File::open(dir.path().join("empty")).unwrap();
        let staged = copy_into(&src, &dir.path().join("t"), &Ctl::none()).unwrap();
        let empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!((staged.size, staged.sha256.as_str()), (0, empty));
        assert_eq!(
            hash_file(&src, &Ctl::none()).unwrap(),
            (0, empty.to_string())
        );
    }

    #[test]
    fn cancelled_copy_leaves_no_tmp() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src");
        write_random(&open_rw(&src_path), 0, 8 * MIB, 7);
        let src = File::open(&src_path).unwrap();
        let tmp = dir.path().join("t");

        // Cancelled mid-way, from the progress callback.
        let cancel = AtomicBool::new(false);
        let calls = AtomicU64::new(0);
        let progress = |_, _| {
            calls.fetch_add(1, Ordering::Relaxed);
            cancel.store(true, Ordering::Relaxed);
        };
        let ctl = Ctl {
            cancel: &cancel,
            progress: &progress,
        };
        assert!(matches!(
            copy_into(&src, &tmp, &ctl),
            Err(StageError::Cancelled)
        ));
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert!(!tmp.exists(), "tmp left behind");

        // Cancelled before starting: not even created.
        let ctl = Ctl {
            cancel: &cancel,
            progress: &|_, _| {},
        };
        assert!(matches!(
            copy_into(&src, &tmp, &ctl),
            Err(StageError::Cancelled)
        ));
        assert!(!tmp.exists());
        assert!(matches!(hash_file(&src, &ctl), Err(StageError::Cancelled)));
    }

    #[test]
    fn existing_tmp_is_refused_and_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src");
        std::fs::write(&src_path, b"new").unwrap();
        let tmp = dir.path().join("t");
        std::fs::write(&tmp, b"someone else's").unwrap();
        let err = copy_into(&File::open(&src_path).unwrap(), &tmp, &Ctl::none()).unwrap_err();
        match &err {
            StageError::Io { source, path, .. } => {
                assert_eq!(source.kind(), io::ErrorKind::AlreadyExists);
                assert_eq!(path, &tmp);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(std::fs::read(&tmp).unwrap(), b"someone else's");
    }

    #[test]
    fn commit_renames_into_new_directories() {
        let dir = tempfile::tempdir().unwrap();
        let src_path = dir.path().join("src");
        std::fs::write(&src_path, b"kernel bytes").unwrap();
        let tmp = dir.path().join("k.tmp");
        copy_into(&File::open(&src_path).unwrap(), &tmp, &Ctl::none()).unwrap();
        let dest = dir.path().join("kernels/abc/vmlinux");
        commit(&tmp, &dest).unwrap();
        assert!(!tmp.exists());
        assert_eq!(std::fs::read(&dest).unwrap(), b"kernel bytes");
        for d in ["kernels", "kernels/abc"] {
            let mode = dir.path().join(d).metadata().unwrap().mode();
            assert_eq!(mode & 0o7777, 0o755, "{d}");
        }

        // Replaces an existing destination.
        std::fs::write(&tmp, b"v2").unwrap();
        commit(&tmp, &dest).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"v2");

        // A missing tmp is an error naming the destination.
        match commit(&tmp, &dest) {
            Err(StageError::Io { path, source, .. }) => {
                assert_eq!(path, dest);
                assert_eq!(source.kind(), io::ErrorKind::NotFound);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn require_regular_names_what_it_found() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"12345").unwrap();
        assert_eq!(
            require_regular(&File::open(&file).unwrap(), "f").unwrap(),
            5
        );

        let err = require_regular(&File::open(dir.path()).unwrap(), "the rootfs").unwrap_err();
        assert!(
            matches!(
                &err,
                StageError::NotRegular {
                    kind: "directory",
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "the rootfs is a directory, not a regular file; give the path of a regular file"
        );

        let fifo = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        // Non-blocking, so opening a FIFO without a writer does not hang.
        let f = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let err = require_regular(&f, "the kernel").unwrap_err();
        assert!(matches!(
            err,
            StageError::NotRegular {
                kind: "FIFO (named pipe)",
                ..
            }
        ));
        // copy_into refuses it before creating anything.
        let tmp = dir.path().join("t");
        assert!(matches!(
            copy_into(&f, &tmp, &Ctl::none()),
            Err(StageError::NotRegular { .. })
        ));
        assert!(!tmp.exists());

        let sock = std::os::unix::net::UnixListener::bind(dir.path().join("sock")).unwrap();
        let sock = File::from(std::os::fd::OwnedFd::from(sock));
        assert!(matches!(
            require_regular(&sock, "x"),
            Err(StageError::NotRegular { kind: "socket", .. })
        ));
    }

    #[test]
    fn reflink_not_supported_on_tmp_or_tmpfs() {
        let dirs = [
            tempfile::tempdir().unwrap(),
            tempfile::tempdir_in("/dev/shm").unwrap(),
        ];
        for dir in &dirs {
            assert!(
                !reflink_supported(dir.path()).unwrap(),
                "{}",
                dir.path().display()
            );
            assert_eq!(
                std::fs::read_dir(dir.path()).unwrap().count(),
                0,
                "probe files left"
            );
        }
    }

    #[test]
    fn loop_mount_is_released_after_a_panic() {
        let images = tempfile::tempdir().unwrap();
        let image = images.path().join("p.ext4");
        let mountpoint = std::sync::Mutex::new(PathBuf::new());
        let result = std::panic::catch_unwind(|| {
            let m = LoopMount::new(&image, 4 * MIB, &["mkfs.ext4", "-q", "-F"]);
            *mountpoint.lock().unwrap() = m.path().to_path_buf();
            let _busy = File::create(m.path().join("open-file")).unwrap();
            panic!("test body failed");
        });
        assert!(result.is_err());
        let mountpoint = mountpoint.into_inner().unwrap();
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
        assert!(
            !mounts.contains(mountpoint.to_str().unwrap()),
            "still mounted"
        );
        assert_loop_released(&image);
    }

    #[test]
    fn no_space_on_a_tiny_filesystem() {
        let images = tempfile::tempdir().unwrap();
        let image = images.path().join("tiny.ext4");
        let src_path = images.path().join("src");
        write_random(&open_rw(&src_path), 0, 16 * MIB, 11);
        let src = File::open(&src_path).unwrap();
        {
            let m = LoopMount::new(&image, 4 * MIB, &["mkfs.ext4", "-q", "-F"]);
            let tmp = m.path().join("big.tmp");

            // Caught before copying.
            match copy_into(&src, &tmp, &Ctl::none()) {
                Err(StageError::NoSpace {
                    path,
                    needed,
                    available,
                }) => {
                    assert_eq!(path, tmp);
                    assert_eq!(needed, 16 * MIB);
                    assert!(available < 4 * MIB, "{available}");
                }
                other => panic!("expected NoSpace, got {other:?}"),
            }
            assert!(!tmp.exists(), "tmp left behind");

            // ENOSPC in the middle of the copy maps to NoSpace as well.
            match copy_into_impl(&src, &tmp, &Ctl::none(), false) {
                Err(e @ StageError::NoSpace { .. }) => {
                    assert!(
                        e.to_string().starts_with("not enough free space for"),
                        "{e}"
                    );
                }
                other => panic!("expected NoSpace, got {other:?}"),
            }
            assert!(!tmp.exists(), "tmp left behind");
            assert_eq!(
                std::fs::read_dir(m.path()).unwrap().count(),
                1,
                "only lost+found"
            );
        }
        assert_loop_released(&image);
    }

    /// Clones on a loop-mounted reflink-capable filesystem and checks the
    /// clone shares its extents with the source.
    fn reflink_for_real(image_size: u64, mkfs: &[&str], cross_fs: bool) {
        let images = tempfile::tempdir().unwrap();
        let image = images.path().join("fs.img");
        {
            let m = LoopMount::new(&image, image_size, mkfs);
            assert!(reflink_supported(m.path()).unwrap());

            let src_path = m.path().join("src");
            {
                let f = open_rw(&src_path);
                write_random(&f, 0, 64 * MIB, 42);
                f.sync_all().unwrap();
            }
            // The clone source is read-only: FICLONE only needs it readable.
            let src = File::open(&src_path).unwrap();
            let expected = sha256sum(&src_path);

            let free_before = free_bytes_at(m.path());
            let tmp = m.path().join("clone.tmp");
            let staged = copy_into(&src, &tmp, &Ctl::none()).unwrap();
            rustix::fs::syncfs(File::open(m.path()).unwrap()).unwrap();
            let grew = free_before.saturating_sub(free_bytes_at(m.path()));

            assert_eq!(staged.method, CopyMethod::Reflink);
            assert_eq!(staged.size, 64 * MIB);
            assert_eq!(staged.sha256, expected);
            assert_eq!(sha256sum(&tmp), expected);
            assert!(grew < 4 * MIB, "a clone of 64 MiB used {grew} bytes");
            let frag = run("filefrag", &["-v", tmp.to_str().unwrap()]);
            assert!(frag.contains("shared"), "clone extents not shared:\n{frag}");

            let dest = m.path().join("images/rootfs.ext4");
            commit(&tmp, &dest).unwrap();
            assert_eq!(sha256sum(&dest), expected);

            // Cancelled while hashing the clone: the clone is removed.
            let cancel = AtomicBool::new(false);
            let progress = |_, _| cancel.store(true, Ordering::Relaxed);
            let ctl = Ctl {
                cancel: &cancel,
                progress: &progress,
            };
            let tmp2 = m.path().join("clone2.tmp");
            assert!(matches!(
                copy_into(&src, &tmp2, &ctl),
                Err(StageError::Cancelled)
            ));
            assert!(!tmp2.exists());

            if cross_fs {
                // Across filesystems FICLONE fails and the copy takes over.
                let other = tempfile::tempdir().unwrap();
                let staged = copy_into(&src, &other.path().join("x"), &Ctl::none()).unwrap();
                assert_eq!(staged.method, CopyMethod::SparseCopy);
                assert_eq!(staged.sha256, expected);
            }
        }
        assert_loop_released(&image);
    }

    #[test]
    fn reflink_on_xfs() {
        reflink_for_real(300 * MIB, &["mkfs.xfs", "-q"], true);
    }

    #[test]
    fn reflink_on_btrfs() {
        reflink_for_real(256 * MIB, &["mkfs.btrfs", "-q"], false);
    }

    #[test]
    fn next_data_walks_extents_without_moving_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = open_rw(&path);
        write_random(&f, 0, MIB, 5);
        write_random(&f, 10 * MIB, 64 * 1024, 6);
        f.set_len(32 * MIB).unwrap();
        f.sync_all().unwrap();
        let mut src = File::open(&path).unwrap();
        src.seek(io::SeekFrom::Start(99)).unwrap();
        let seeker = reopen(&src).unwrap();
        let size = 32 * MIB;
        assert_eq!(next_data(Some(&seeker), 0, size), (0, MIB));
        assert_eq!(
            next_data(Some(&seeker), MIB, size),
            (10 * MIB, 10 * MIB + 64 * 1024)
        );
        assert_eq!(next_data(Some(&seeker), 11 * MIB, size), (size, size));
        // Clamped to the size the copy started with.
        assert_eq!(next_data(Some(&seeker), 0, MIB / 2), (0, MIB / 2));
        assert_eq!(next_data(None, 3, size), (3, size));
        assert_eq!(src.stream_position().unwrap(), 99);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(&0), "0 bytes");
        assert_eq!(human(&1023), "1023 bytes");
        assert_eq!(human(&1536), "1.5 KiB");
        assert_eq!(human(&(16 * MIB)), "16.0 MiB");
    }

    #[test]
    fn write_skipping_zeros_leaves_holes() {
        let dir = tempfile::tempdir().unwrap();
        let f = open_rw(&dir.path().join("f"));
        let mut buf = vec![0u8; 64 * 4096];
        buf[5] = 1;
        buf[40 * 4096 + 7] = 2;
        write_skipping_zeros(&f, &buf, 0).unwrap();
        f.set_len(buf.len() as u64).unwrap();
        f.sync_all().unwrap();
        assert_eq!(std::fs::read(dir.path().join("f")).unwrap(), buf);
        assert!(f.metadata().unwrap().blocks() * 512 <= 2 * 4096);
    }
}
