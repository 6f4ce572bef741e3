//! Validating an ext4 image without mounting it: [`inspect`] reads the
//! superblock and checks the file is big enough to hold the filesystem it
//! describes.
//!
//! ext2 and ext3 images (no `extents` feature) are accepted: the guest's ext4
//! driver mounts them. [`Ext4Info::has_extents`] tells them apart for callers
//! that want to warn. A file larger than its filesystem is accepted too (the
//! filesystem can be grown with `resize2fs`); a smaller one is not.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use rustix::fs::FileType;

/// The superblock lives at this byte offset, whatever the block size.
const SB_OFFSET: u64 = 1024;
const SB_LEN: usize = 1024;
const MAGIC: u16 = 0xEF53;
/// Block sizes above 64 KiB are not valid ext4.
const MAX_LOG_BLOCK_SIZE: u32 = 6;

const COMPAT_HAS_JOURNAL: u32 = 0x4;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;

/// What the superblock says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ext4Info {
    pub block_size: u32,
    pub blocks: u64,
    /// `blocks * block_size`: the bytes the filesystem spans.
    pub fs_size: u64,
    /// The label (`mkfs.ext4 -L`), if set.
    pub volume_name: Option<String>,
    /// Lowercase 8-4-4-4-12 hex.
    pub uuid: String,
    pub has_journal: bool,
    pub is_64bit: bool,
    /// False for ext2/ext3 images, which are accepted anyway.
    pub has_extents: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    /// Reading the file failed.
    #[error("cannot read the image: {0}")]
    Io(#[from] io::Error),
    /// The image is a directory, device, FIFO, ... rather than a file.
    #[error("the image is a {kind}, not a regular file")]
    NotRegular { kind: &'static str },
    /// The file is too short to hold a superblock.
    #[error(
        "not an ext4 image: the file is only {file_size} bytes, but an ext4 superblock ends at \
         byte 2048"
    )]
    TooSmall { file_size: u64 },
    /// No ext2/3/4 magic where the superblock should be.
    #[error(
        "not an ext4 image: no ext2/3/4 superblock magic 0xEF53 at byte 1080 (found \
         0x{found:04X}); make the image with mkfs.ext4"
    )]
    NotExt4 { found: u16 },
    /// The magic is there but the superblock makes no sense.
    #[error("corrupt ext4 superblock: {reason}; check the image with `e2fsck -n`")]
    Corrupt { reason: String },
    /// The filesystem extends past the end of the file: an interrupted
    /// download or copy.
    #[error(
        "truncated ext4 image: the filesystem spans {fs_size} bytes but the file has only \
         {file_size}; the download or copy was probably cut short, make it again"
    )]
    Truncated { fs_size: u64, file_size: u64 },
}

fn le16(sb: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([sb[at], sb[at + 1]])
}

fn le32(sb: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(sb[at..at + 4].try_into().expect("4 bytes"))
}

/// Reads and checks `f`'s superblock (byte 1024) with positioned reads only:
/// `f`'s offset does not move.
pub fn inspect(f: &File) -> Result<Ext4Info, Ext4Error> {
    let st = rustix::fs::fstat(f).map_err(io::Error::from)?;
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => {}
        other => {
            return Err(Ext4Error::NotRegular {
                kind: super::stage::file_kind(other),
            })
        }
    }
    let file_size = st.st_size as u64;
    if file_size < SB_OFFSET + SB_LEN as u64 {
        return Err(Ext4Error::TooSmall { file_size });
    }
    let mut sb = [0u8; SB_LEN];
    match f.read_exact_at(&mut sb, SB_OFFSET) {
        Ok(()) => {}
        // Shrunk since the fstat.
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            return Err(Ext4Error::TooSmall { file_size })
        }
        Err(e) => return Err(e.into()),
    }
    parse(&sb, file_size)
}

/// Interprets a superblock read from a file of `file_size` bytes.
fn parse(sb: &[u8; SB_LEN], file_size: u64) -> Result<Ext4Info, Ext4Error> {
    let magic = le16(sb, 0x38);
    if magic != MAGIC {
        return Err(Ext4Error::NotExt4 { found: magic });
    }
    let log_block_size = le32(sb, 0x18);
    if log_block_size > MAX_LOG_BLOCK_SIZE {
        return Err(Ext4Error::Corrupt {
            reason: format!("block size 1024 << {log_block_size} is over the 64 KiB maximum"),
        });
    }
    let block_size = 1024u32 << log_block_size;
    // Revision 0 superblocks have no feature fields.
    let (compat, incompat) = if le32(sb, 0x4C) == 0 {
        (0, 0)
    } else {
        (le32(sb, 0x5C), le32(sb, 0x60))
    };
    let is_64bit = incompat & INCOMPAT_64BIT != 0;
    let mut blocks = u64::from(le32(sb, 0x04));
    if is_64bit {
        blocks |= u64::from(le32(sb, 0x150)) << 32;
    }
    if blocks == 0 {
        return Err(Ext4Error::Corrupt {
            reason: "the block count is 0".into(),
        });
    }
    let fs_size = blocks
        .checked_mul(u64::from(block_size))
        .ok_or_else(|| Ext4Error::Corrupt {
            reason: format!("{blocks} blocks of {block_size} bytes overflow 64 bits"),
        })?;
    if fs_size > file_size {
        return Err(Ext4Error::Truncated { fs_size, file_size });
    }

    let u = &sb[0x68..0x78];
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        hex::encode(&u[0..4]),
        hex::encode(&u[4..6]),
        hex::encode(&u[6..8]),
        hex::encode(&u[8..10]),
        hex::encode(&u[10..16])
    );
    let name = &sb[0x78..0x88];
    let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
    let volume_name = (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned());

    Ok(Ext4Info {
        block_size,
        blocks,
        fs_size,
        volume_name,
        uuid,
        has_journal: compat & COMPAT_HAS_JOURNAL != 0,
        is_64bit,
        has_extents: incompat & INCOMPAT_EXTENTS != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Seek;
    use std::process::Command;

    const MIB: u64 = 1 << 20;

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

    /// An 8 MiB image made by the real `mkfs` (`mkfs.ext4` unless `-t` says).
    fn mkfs(args: &[&str]) -> tempfile::NamedTempFile {
        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(8 * MIB).unwrap();
        let mut all = vec!["-q", "-F"];
        all.extend_from_slice(args);
        all.push(img.path().to_str().unwrap());
        run("mke2fs", &all);
        img
    }

    /// `dumpe2fs -h` field `key`.
    fn dumpe2fs(img: &std::path::Path, key: &str) -> String {
        let out = run("dumpe2fs", &["-h", img.to_str().unwrap()]);
        out.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {key} in dumpe2fs output"))
            .trim()
            .to_string()
    }

    /// Inspects `img` and checks every field against `dumpe2fs`.
    fn inspect_and_compare(img: &std::path::Path) -> Ext4Info {
        let info = inspect(&File::open(img).unwrap()).unwrap();
        assert_eq!(info.block_size.to_string(), dumpe2fs(img, "Block size"));
        assert_eq!(info.blocks.to_string(), dumpe2fs(img, "Block count"));
        assert_eq!(info.fs_size, info.blocks * u64::from(info.block_size));
        assert_eq!(info.uuid, dumpe2fs(img, "Filesystem UUID"));
        let name = dumpe2fs(img, "Filesystem volume name");
        assert_eq!(info.volume_name.as_deref().unwrap_or("<none>"), name);
        let features = dumpe2fs(img, "Filesystem features");
        let has = |f: &str| features.split_whitespace().any(|x| x == f);
        assert_eq!(info.has_journal, has("has_journal"), "{features}");
        assert_eq!(info.is_64bit, has("64bit"), "{features}");
        assert_eq!(info.has_extents, has("extent"), "{features}");
        info
    }

    #[test]
    fn ext4_1k_blocks_with_label() {
        let img = mkfs(&["-t", "ext4", "-b", "1024", "-L", "rootfs"]);
        let info = inspect_and_compare(img.path());
        assert_eq!(info.block_size, 1024);
        assert_eq!(info.blocks, 8192);
        assert_eq!(info.fs_size, 8 * MIB);
        assert_eq!(info.volume_name.as_deref(), Some("rootfs"));
        assert!(info.has_journal && info.has_extents);
    }

    #[test]
    fn ext4_4k_blocks_64bit_and_not() {
        let img = mkfs(&[
            "-t",
            "ext4",
            "-b",
            "4096",
            "-O",
            "64bit",
            "-L",
            "sixteen-chars-ok",
        ]);
        let info = inspect_and_compare(img.path());
        assert_eq!((info.block_size, info.blocks), (4096, 2048));
        assert!(info.is_64bit);
        assert_eq!(info.volume_name.as_deref(), Some("sixteen-chars-ok"));

        let img = mkfs(&["-t", "ext4", "-b", "4096", "-O", "^64bit,^has_journal"]);
        let info = inspect_and_compare(img.path());
        assert!(!info.is_64bit && !info.has_journal);
        assert_eq!(info.volume_name, None);
    }

    #[test]
    fn ext2_and_ext3_are_accepted() {
        let info = inspect_and_compare(mkfs(&["-t", "ext2"]).path());
        assert!(!info.has_extents && !info.has_journal);
        let info = inspect_and_compare(mkfs(&["-t", "ext3"]).path());
        assert!(!info.has_extents && info.has_journal);
    }

    #[test]
    fn offset_does_not_move_and_bigger_files_are_fine() {
        let img = mkfs(&["-t", "ext4"]);
        img.as_file().set_len(12 * MIB).unwrap();
        let mut f = File::open(img.path()).unwrap();
        f.seek(io::SeekFrom::Start(777)).unwrap();
        let info = inspect(&f).unwrap();
        assert_eq!(info.fs_size, 8 * MIB);
        assert_eq!(f.stream_position().unwrap(), 777);
    }

    #[test]
    fn truncated_copy() {
        let img = mkfs(&["-t", "ext4", "-b", "4096"]);
        let copy = tempfile::NamedTempFile::new().unwrap();
        std::fs::copy(img.path(), copy.path()).unwrap();
        copy.as_file().set_len(5 * MIB + 17).unwrap();
        let err = inspect(&File::open(copy.path()).unwrap()).unwrap_err();
        assert!(
            matches!(err, Ext4Error::Truncated { fs_size, file_size }
                if fs_size == 8 * MIB && file_size == 5 * MIB + 17),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("truncated ext4 image"), "{err}");
    }

    /// Rewrites one little-endian u32 in the image's superblock.
    fn patch_sb(img: &std::path::Path, at: u64, value: u32) {
        let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
        f.write_all_at(&value.to_le_bytes(), SB_OFFSET + at)
            .unwrap();
    }

    #[test]
    fn high_block_count_only_counts_with_64bit() {
        let img = mkfs(&["-t", "ext4", "-b", "4096", "-O", "64bit"]);
        patch_sb(img.path(), 0x150, 1);
        let err = inspect(&File::open(img.path()).unwrap()).unwrap_err();
        let expected = ((1u64 << 32) + 2048) * 4096;
        assert!(
            matches!(err, Ext4Error::Truncated { fs_size, .. } if fs_size == expected),
            "{err:?}"
        );

        let img = mkfs(&["-t", "ext4", "-b", "4096", "-O", "^64bit"]);
        patch_sb(img.path(), 0x150, 1);
        assert_eq!(
            inspect(&File::open(img.path()).unwrap()).unwrap().blocks,
            2048
        );
    }

    #[test]
    fn absurd_block_size_is_corrupt() {
        let img = mkfs(&["-t", "ext4"]);
        patch_sb(img.path(), 0x18, 7);
        let err = inspect(&File::open(img.path()).unwrap()).unwrap_err();
        assert!(matches!(err, Ext4Error::Corrupt { .. }), "{err:?}");
        assert!(err.to_string().contains("64 KiB"), "{err}");
    }

    #[test]
    fn zeros_and_noise_are_not_ext4() {
        let zeros = tempfile::NamedTempFile::new().unwrap();
        zeros.as_file().set_len(8 * MIB).unwrap();
        let err = inspect(zeros.as_file()).unwrap_err();
        assert!(matches!(err, Ext4Error::NotExt4 { found: 0 }), "{err:?}");
        assert_eq!(
            err.to_string(),
            "not an ext4 image: no ext2/3/4 superblock magic 0xEF53 at byte 1080 (found 0x0000); \
             make the image with mkfs.ext4"
        );

        let mut noise = vec![0u8; 64 * 1024];
        getrandom::getrandom(&mut noise).unwrap();
        noise[1080] = 0x12; // 1 in 65536 random files would carry the magic
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), &noise).unwrap();
        let err = inspect(f.as_file()).unwrap_err();
        assert!(matches!(err, Ext4Error::NotExt4 { .. }), "{err:?}");
    }

    #[test]
    fn short_files_are_too_small() {
        for len in [0u64, 1080, 2047] {
            let f = tempfile::NamedTempFile::new().unwrap();
            f.as_file().set_len(len).unwrap();
            let err = inspect(f.as_file()).unwrap_err();
            assert!(
                matches!(err, Ext4Error::TooSmall { file_size } if file_size == len),
                "{err:?}"
            );
        }
    }

    #[test]
    fn directory_is_not_an_image() {
        let dir = tempfile::tempdir().unwrap();
        let err = inspect(&File::open(dir.path()).unwrap()).unwrap_err();
        assert!(
            matches!(err, Ext4Error::NotRegular { kind: "directory" }),
            "{err:?}"
        );
    }
}
