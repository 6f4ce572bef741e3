//! Test helpers for code that touches the host for real: running tools,
//! loop-mounted scratch filesystems, and guards that release loop devices
//! even when an assertion fails.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub const MIB: u64 = 1 << 20;

/// Fails (never skips) the test when not root.
pub fn require_root(what: &str) {
    assert!(
        rustix::process::geteuid().is_root(),
        "this test {what} and must run as root (CI does); run it with \
         `sudo -E CARGO_TARGET_DIR=/work/target-disk cargo test -p banger-daemon`"
    );
}

/// Runs `cmd args`, asserts success, returns stdout.
pub fn run(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .env("LC_ALL", "C")
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

/// Writes `len` bytes of non-zero pseudo-random data (xorshift) at `off`.
pub fn write_random(f: &File, off: u64, len: u64, seed: u64) {
    let mut buf = vec![0u8; MIB as usize];
    let mut x = seed | 1;
    let mut done = 0;
    while done < len {
        let n = (len - done).min(MIB) as usize;
        for chunk in buf[..n].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&(x | 1).to_le_bytes()[..chunk.len()]);
        }
        f.write_all_at(&buf[..n], off + done).unwrap();
        done += n as u64;
    }
}

/// Bytes actually allocated to `p`.
pub fn allocated(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).unwrap().blocks() * 512
}

pub fn free_bytes_at(p: &Path) -> u64 {
    let v = rustix::fs::statvfs(p).unwrap();
    v.f_bfree * v.f_frsize
}

/// Loop devices attached to `file`, according to `losetup -j`.
pub fn losetup_j(file: &Path) -> String {
    run("losetup", &["-j", file.to_str().unwrap()])
}

/// Asserts (within 5 s: detaching can be lazy) that no loop device is
/// attached to `file`.
pub fn assert_no_loops(file: &Path) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let out = losetup_j(file);
        if out.trim().is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "loop device still attached to {}: {out}",
            file.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Detaches the loop devices it holds on drop (also while unwinding).
#[derive(Default)]
pub struct LoopGuard(pub Vec<PathBuf>);

impl Drop for LoopGuard {
    fn drop(&mut self) {
        for dev in self.0.iter().rev() {
            let _ = Command::new("losetup").arg("--detach").arg(dev).status();
        }
    }
}

/// A scratch filesystem in an image file, loop-mounted on a temporary
/// directory and unmounted on drop. `mount -o loop` sets autoclear, so the
/// unmount frees the loop device; [`LoopMount::finish`] checks it did.
pub struct LoopMount {
    /// Holds the image file.
    _img_dir: tempfile::TempDir,
    image: PathBuf,
    dir: tempfile::TempDir,
}

impl LoopMount {
    /// `mkfs` is the program and its options; the image path is appended.
    pub fn new(size: u64, mkfs: &[&str]) -> LoopMount {
        require_root("loop-mounts a scratch filesystem");
        let img_dir = tempfile::tempdir().unwrap();
        let image = img_dir.path().join("fs.img");
        File::create(&image).unwrap().set_len(size).unwrap();
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
        LoopMount {
            _img_dir: img_dir,
            image,
            dir,
        }
    }

    pub fn xfs(size: u64) -> LoopMount {
        LoopMount::new(size, &["mkfs.xfs", "-q", "-f", "-m", "reflink=1"])
    }

    pub fn btrfs(size: u64) -> LoopMount {
        LoopMount::new(size, &["mkfs.btrfs", "-q", "-f"])
    }

    pub fn ext4(size: u64) -> LoopMount {
        LoopMount::new(size, &["mkfs.ext4", "-q", "-F"])
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Unmounts now and asserts the loop device is gone.
    pub fn finish(self) {
        let image = self.image.clone();
        drop(self);
        assert_no_loops(&image);
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
            // Something still holds it open; detach now, freed when released.
            let _ = Command::new("umount").args(["-l", dir]).status();
        }
    }
}
