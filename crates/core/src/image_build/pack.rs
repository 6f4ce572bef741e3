//! Step 3: `mkfs.ext4 -d` turns a tree into an image — owners, modes, xattrs
//! and hard links preserved, no mount — sized to its content + 25% + 64 MiB.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::AtomicBool;

use super::run::run_tool;
use super::{io_ctx, ImageBuildError, Result};
use std::process::Command;

/// Free space added to each image: 25% of the content plus this.
pub const HEADROOM: u64 = 64 << 20;

const MIB: u64 = 1 << 20;

/// Bytes and inodes a tree occupies (hard links counted once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TreeSize {
    pub bytes: u64,
    pub inodes: u64,
}

/// Walks `root` without following symlinks or leaving its filesystem.
pub fn tree_size(root: &Path) -> io::Result<TreeSize> {
    fn walk(
        p: &Path,
        dev: u64,
        seen: &mut HashSet<(u64, u64)>,
        size: &mut TreeSize,
    ) -> io::Result<()> {
        let m = fs::symlink_metadata(p)?;
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            return Ok(());
        }
        size.inodes += 1;
        size.bytes += m.blocks() * 512;
        if m.is_dir() && m.dev() == dev {
            for e in fs::read_dir(p)? {
                walk(&e?.path(), dev, seen, size)?;
            }
        }
        Ok(())
    }
    let dev = fs::symlink_metadata(root)?.dev();
    let mut size = TreeSize::default();
    walk(root, dev, &mut HashSet::new(), &mut size)?;
    Ok(size)
}

/// Image size for `content` bytes: content + 25% + [`HEADROOM`], in whole MiB.
pub fn image_size(content: u64) -> u64 {
    let raw = content + content / 4 + HEADROOM;
    raw.div_ceil(MIB) * MIB
}

/// `mkfs.ext4 -d tree` into a new sparse file of [`image_size`] (or `size`
/// when given: it must hold the content with a tenth to spare), labelled
/// `label`, one inode per `inode_ratio` bytes. Returns the file's size.
pub(crate) fn pack(
    mkfs: &Path,
    tree: &Path,
    out: &Path,
    label: &str,
    inode_ratio: &str,
    size: Option<u64>,
    cancel: &AtomicBool,
) -> Result<u64> {
    let content = tree_size(tree).map_err(io_ctx(format!("cannot measure {}", tree.display())))?;
    let size = match size {
        None => image_size(content.bytes),
        Some(s) if s >= content.bytes + content.bytes / 10 + HEADROOM / 4 => s.div_ceil(MIB) * MIB,
        Some(s) => {
            return Err(ImageBuildError::Invalid(format!(
                "a size of {s} bytes cannot hold the image's {} bytes of content (with room for \
                 the filesystem); give a larger --size",
                content.bytes
            )))
        }
    };
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(out)
        .map_err(io_ctx(format!("cannot create {}", out.display())))?;
    f.set_len(size)
        .map_err(io_ctx(format!("cannot size {}", out.display())))?;
    drop(f);
    // -T default: not the "small" profile (1 KiB blocks, 128-byte inodes) a
    // sub-512 MiB size would pick; images are grown later.
    let mut cmd = Command::new(mkfs);
    cmd.args([
        OsStr::new("-q"),
        OsStr::new("-F"),
        OsStr::new("-T"),
        OsStr::new("default"),
        OsStr::new("-b"),
        OsStr::new("4096"),
        OsStr::new("-i"),
        OsStr::new(inode_ratio),
        OsStr::new("-L"),
        OsStr::new(label),
        OsStr::new("-E"),
        OsStr::new("root_owner=0:0"),
        OsStr::new("-d"),
        tree.as_os_str(),
        out.as_os_str(),
    ]);
    run_quiet(cmd, "mkfs.ext4", cancel)?;
    tracing::debug!(file = %out.display(), content = content.bytes, inodes = content.inodes, size, "ext4 image packed");
    Ok(size)
}

/// Sets the mode of the image's root directory: `mkfs -d` gives it 0755,
/// and a work seed's root is `/root` (0700).
pub(crate) fn set_root_mode(
    debugfs: &Path,
    image: &Path,
    mode: u32,
    cancel: &AtomicBool,
) -> Result<()> {
    let request = format!("sif / mode 04{mode:04o}");
    let mut cmd = Command::new(debugfs);
    cmd.args([
        OsStr::new("-w"),
        OsStr::new("-R"),
        OsStr::new(&request),
        image.as_os_str(),
    ]);
    run_quiet(cmd, "debugfs", cancel)
}

/// `e2fsck -fn`: a full check that changes nothing; any finding fails.
pub(crate) fn fsck(e2fsck: &Path, image: &Path, cancel: &AtomicBool) -> Result<()> {
    let mut cmd = Command::new(e2fsck);
    cmd.args([OsStr::new("-f"), OsStr::new("-n"), image.as_os_str()]);
    run_quiet(cmd, "e2fsck", cancel)
}

/// Runs a tool that should succeed; its output only matters when it fails.
fn run_quiet(mut cmd: Command, tool: &str, cancel: &AtomicBool) -> Result<()> {
    cmd.env("LC_ALL", "C");
    let (status, tail) = run_tool(cmd, tool, cancel, &mut |_| {})?;
    if status.success() {
        Ok(())
    } else {
        Err(ImageBuildError::Pack {
            tool: tool.to_string(),
            log_tail: format!("{tail}\n({tool} {status})"),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(image_size(0), 64 * MIB);
        assert_eq!(image_size(100 * MIB), 189 * MIB);
        assert_eq!(image_size(1), 65 * MIB, "rounded up to a MiB");
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), vec![1u8; 10_000]).unwrap();
        fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        symlink("a", dir.path().join("c")).unwrap();
        let s = tree_size(dir.path()).unwrap();
        assert_eq!(s.inodes, 3, "dir + file (linked twice) + symlink");
        assert!(s.bytes >= 10_000 && s.bytes < 64 * 1024, "{s:?}");
    }
}
