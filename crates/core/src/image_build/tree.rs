//! Removing a build's directory tree safely. A killed bootstrap can leave
//! mounts (`/proc`, `/sys`, `/dev` of the package scripts) under the scratch
//! directory if it ever ran outside its private mount namespace; a naive
//! recursive delete would then empty the host's `/dev`. So mounts under the
//! tree are detached first (found in `/proc/self/mountinfo`), and the walk
//! never follows a symlink nor enters another filesystem.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Removes `path` and everything under it without following symlinks and
/// without entering another filesystem: mount points left under it are
/// detached first, and a directory on another device that is still there is
/// an error rather than something to empty.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    detach_mounts_under(path);
    fn walk(p: &Path, dev: u64) -> io::Result<()> {
        for e in fs::read_dir(p)? {
            let e = e?;
            let child = e.path();
            let m = fs::symlink_metadata(&child)?;
            if m.is_dir() {
                if m.dev() != dev {
                    return Err(io::Error::other(format!(
                        "{} is on another filesystem (a mount point?); not removing it",
                        child.display()
                    )));
                }
                walk(&child, dev)?;
                fs::remove_dir(&child)?;
            } else {
                fs::remove_file(&child)?;
            }
        }
        Ok(())
    }
    walk(path, meta.dev())?;
    fs::remove_dir(path)
}

/// Lazily unmounts every mount point strictly under `dir` (deepest first).
fn detach_mounts_under(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let Ok(dir) = dir.canonicalize() else {
        return;
    };
    let mut points = mount_points_under(&info, &dir);
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for p in points {
        tracing::warn!(mount = %p.display(), "detaching a mount left in an image build directory");
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// The mount points (field 5 of each `mountinfo` line) strictly under `dir`.
fn mount_points_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::process::{Command, Stdio};

    use super::super::tests::require_root;
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b\011c\\d"), "/a b\tc\\\\d");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mountinfo(r"/end\04"), r"/end\04");
        assert_eq!(unescape_mountinfo(r"/end\040"), "/end ");
    }

    /// Only mount points strictly under the directory, by path component
    /// (`/t/a` is not under `/t/ab`), unescaped.
    #[test]
    fn mount_points_under_a_directory() {
        let info = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:5 / /t/ab rw shared:2 - proc proc rw
31 22 0:6 / /t/a/proc rw shared:3 - proc proc rw
32 22 0:7 / /t/a/my\\040dev rw shared:4 - devtmpfs udev rw
33 22 0:8 / /t/a rw shared:5 - tmpfs tmpfs rw
";
        assert_eq!(
            mount_points_under(info, Path::new("/t/a")),
            [PathBuf::from("/t/a/proc"), PathBuf::from("/t/a/my dev")]
        );
    }

    #[test]
    fn remove_tree_detaches_mounts_instead_of_emptying_them() {
        require_root("bind mount");
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("precious"), "keep me").unwrap();
        let scratch = dir.path().join("scratch");
        let mnt = scratch.join("tree/proc");
        fs::create_dir_all(&mnt).unwrap();
        fs::write(scratch.join("tree/file"), "x").unwrap();
        symlink(&outside, scratch.join("tree/link")).unwrap();
        let ok = Command::new("mount")
            .arg("--bind")
            .arg(&outside)
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(ok.success());
        let r = remove_tree(&scratch);
        // Should the detach have failed, make sure the test leaves nothing mounted.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&mnt)
            .stderr(Stdio::null())
            .status();
        r.unwrap();
        assert!(!scratch.exists());
        assert_eq!(
            fs::read_to_string(outside.join("precious")).unwrap(),
            "keep me"
        );
    }
}
