//! The disk half of [`SystemHost`]: [`DiskHost`] done for real, by running
//! the standard host tools (`losetup`, `dmsetup`, `mkfs.ext4`) as the
//! daemon's user (root) through [`super::cmd`], and the parsers of untrusted
//! images (`e2fsck`, `resize2fs`, `debugfs`) through [`super::confined`]. A missing tool is [`HostError::Unavailable`] naming the
//! Debian package.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use banger_core::doctor::kernel_has_device_mapper;

use super::cmd::{execute, Tool};
use super::confined;
use super::{DiskHost, DmTable, HostError, SystemHost};

const LOSETUP: Tool = Tool {
    name: "losetup",
    package: "mount",
};
const DMSETUP: Tool = Tool {
    name: "dmsetup",
    package: "dmsetup",
};
const MODPROBE: Tool = Tool {
    name: "modprobe",
    package: "kmod",
};
const MKFS_EXT4: Tool = Tool {
    name: "mkfs.ext4",
    package: "e2fsprogs",
};
const E2FSCK: Tool = Tool {
    name: "e2fsck",
    package: "e2fsprogs",
};
const RESIZE2FS: Tool = Tool {
    name: "resize2fs",
    package: "e2fsprogs",
};
const DEBUGFS: Tool = Tool {
    name: "debugfs",
    package: "e2fsprogs",
};

/// The longest device-mapper name the kernel takes (DM_NAME_LEN - 1).
const DM_NAME_MAX: usize = 127;
/// The longest ext4 label.
const EXT4_LABEL_MAX: usize = 16;

fn invalid(what: &str, path: &Path, why: String) -> HostError {
    HostError::io(what, path, io::Error::new(io::ErrorKind::InvalidInput, why))
}

/// `dmsetup`, once device-mapper is known to be there. Never runs `dmsetup`
/// before that: it creates `/dev/mapper/control` as a side effect even when
/// the kernel has no driver behind it.
fn dmsetup() -> Result<PathBuf, HostError> {
    let path = DMSETUP.locate()?;
    if !kernel_has_device_mapper() {
        try_load_dm();
        if !kernel_has_device_mapper() {
            return Err(HostError::Unavailable(
                "device-mapper is not available: this kernel has no device-mapper driver \
                 (none in /proc/misc, and `modprobe dm_mod` did not load one); use the reflink \
                 or copy root-disk backend"
                    .into(),
            ));
        }
    }
    Ok(path)
}

/// Device-mapper built as a module and not loaded yet: load it, as LVM does.
/// Failure is fine (the caller re-checks /proc/misc).
fn try_load_dm() {
    match MODPROBE.output(["-q", "dm_mod"]) {
        Ok(ran) if !ran.status().success() => {
            tracing::debug!(stderr = %ran.stderr(), "modprobe dm_mod failed");
        }
        Ok(_) => {}
        Err(e) => tracing::debug!(error = %e, "cannot run modprobe"),
    }
}

fn check_dm_name(name: &str) -> Result<(), HostError> {
    if name.is_empty()
        || name.len() > DM_NAME_MAX
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            "invalid device-mapper name",
            Path::new(name),
            format!("a name is 1 to {DM_NAME_MAX} bytes without '/', spaces or control characters"),
        ));
    }
    Ok(())
}

impl DiskHost for SystemHost {
    fn loop_attach(&self, file: &Path, read_only: bool) -> Result<PathBuf, HostError> {
        let mut args: Vec<&OsStr> = vec!["--find".as_ref(), "--show".as_ref()];
        if read_only {
            args.push("--read-only".as_ref());
        }
        args.push(file.as_os_str());
        let out = LOSETUP.run(&args)?;
        let dev = out.trim();
        if !dev.starts_with("/dev/") {
            return Err(invalid(
                "losetup printed no device for",
                file,
                format!("unexpected output {dev:?}"),
            ));
        }
        tracing::debug!(file = %file.display(), device = dev, read_only, "loop device attached");
        Ok(PathBuf::from(dev))
    }

    fn loop_detach(&self, dev: &Path) -> Result<(), HostError> {
        LOSETUP.run([OsStr::new("--detach"), dev.as_os_str()])?;
        tracing::debug!(device = %dev.display(), "loop device detached");
        Ok(())
    }

    fn loop_devices_for(&self, file: &Path) -> Result<Vec<PathBuf>, HostError> {
        let out = LOSETUP.run([
            OsStr::new("--list"),
            OsStr::new("--noheadings"),
            OsStr::new("--output"),
            OsStr::new("NAME"),
            OsStr::new("--associated"),
            file.as_os_str(),
        ])?;
        Ok(out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(PathBuf::from)
            .collect())
    }

    fn dm_available(&self) -> bool {
        dmsetup().is_ok()
    }

    fn dm_create(&self, name: &str, table: &DmTable) -> Result<PathBuf, HostError> {
        check_dm_name(name)?;
        let dmsetup = dmsetup()?;
        let line = table.to_string();
        execute(dmsetup.clone(), ["create", name, "--table", &line])?.stdout_if_success()?;
        let dev = Path::new("/dev/mapper").join(name);
        if !dev.exists() {
            // No udev to make the node (a minimal host or container).
            execute(dmsetup, ["mknodes", name])?.stdout_if_success()?;
        }
        tracing::debug!(name, table = %line, device = %dev.display(), "dm device created");
        Ok(dev)
    }

    fn dm_remove(&self, name: &str) -> Result<(), HostError> {
        check_dm_name(name)?;
        let dmsetup = dmsetup()?;
        // --retry: udev may hold the device open for a moment after a change.
        execute(dmsetup, ["remove", "--retry", name])?.stdout_if_success()?;
        tracing::debug!(name, "dm device removed");
        Ok(())
    }

    fn dm_exists(&self, name: &str) -> Result<bool, HostError> {
        check_dm_name(name)?;
        let dmsetup = dmsetup()?;
        let ran = execute(dmsetup, ["info", name])?;
        if ran.status().success() {
            Ok(true)
        } else if ran.stderr().contains("does not exist") {
            Ok(false)
        } else {
            Err(ran.into_error())
        }
    }

    fn block_size_sectors(&self, dev_or_file: &Path) -> Result<u64, HostError> {
        // Seeking to the end gives the size of block devices and files alike.
        let f = std::fs::File::open(dev_or_file)
            .map_err(|e| HostError::io("cannot open", dev_or_file, e))?;
        let end = rustix::fs::seek(&f, rustix::fs::SeekFrom::End(0))
            .map_err(|e| HostError::io("cannot find the size of", dev_or_file, e.into()))?;
        Ok(end / 512)
    }

    fn mkfs_ext4(&self, file: &Path, size_bytes: u64, label: &str) -> Result<(), HostError> {
        if label.len() > EXT4_LABEL_MAX {
            return Err(invalid(
                "invalid ext4 label for",
                file,
                format!("{label:?} is longer than {EXT4_LABEL_MAX} bytes"),
            ));
        }
        let mkfs = MKFS_EXT4.locate()?;
        // Truncating to 0 first drops any old data blocks, so the file is
        // fully sparse before mkfs writes its metadata.
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(file)
            .map_err(|e| HostError::io("cannot create", file, e))?;
        f.set_len(size_bytes)
            .map_err(|e| HostError::io("cannot set the size of", file, e))?;
        drop(f);
        execute(
            mkfs,
            [
                OsStr::new("-q"),
                OsStr::new("-F"),
                OsStr::new("-b"),
                OsStr::new("4096"),
                OsStr::new("-L"),
                OsStr::new(label),
                OsStr::new("-E"),
                // The file was just made sparse: its unwritten inode tables
                // and journal read as zeros already, so mkfs need not write
                // them (a 4 GiB filesystem allocates ~1 MiB instead of its
                // 64 MiB journal, in ~10 ms either way).
                OsStr::new("root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1"),
                file.as_os_str(),
            ],
        )?
        .stdout_if_success()?;
        tracing::debug!(file = %file.display(), size_bytes, label, "ext4 filesystem made");
        Ok(())
    }

    fn fsck_ext4(&self, file: &Path) -> Result<(), HostError> {
        // -f: check even if marked clean; -y: fix whatever it finds, as a
        // boot-time fsck with fsck.repair=yes would (nobody is there to ask).
        // Confined: the image may be a user's seed or what a guest wrote.
        let ran = confined::run(
            E2FSCK.locate()?,
            &[
                OsStr::new("-f"),
                OsStr::new("-y"),
                OsStr::new(confined::IMAGE),
            ],
            file,
            None,
        )?;
        // e2fsck(8): exit codes are OR-ed bits. 1 = errors corrected; 2 = errors
        // corrected, reboot needed (meaningful only for a mounted root
        // filesystem, never for an image file). 4 and up: errors left
        // uncorrected, operational or usage error, cancelled.
        match ran.status().code() {
            Some(0) => Ok(()),
            Some(code) if code & !3 == 0 => {
                tracing::info!(file = %file.display(), code, "e2fsck corrected errors");
                Ok(())
            }
            _ => Err(ran.into_error()),
        }
    }

    fn resize_ext4(&self, file: &Path, new_size: u64) -> Result<(), HostError> {
        let resize2fs = RESIZE2FS.locate()?;
        let f = OpenOptions::new()
            .write(true)
            .open(file)
            .map_err(|e| HostError::io("cannot open", file, e))?;
        let len = f
            .metadata()
            .map_err(|e| HostError::io("cannot inspect", file, e))?
            .len();
        if new_size < len {
            return Err(invalid(
                "refusing to shrink",
                file,
                format!("it has {len} bytes, asked for {new_size}; ext4 images are only grown"),
            ));
        }
        f.set_len(new_size)
            .map_err(|e| HostError::io("cannot set the size of", file, e))?;
        drop(f);
        self.fsck_ext4(file)?;
        // Without a size argument resize2fs fills the file.
        confined::run(resize2fs, &[OsStr::new(confined::IMAGE)], file, None)?
            .stdout_if_success()?;
        tracing::debug!(file = %file.display(), new_size, "ext4 filesystem grown");
        Ok(())
    }

    fn ext4_write_files(&self, image: &Path, files: &[super::GuestFile]) -> Result<(), HostError> {
        let debugfs = DEBUGFS.locate()?;
        let safe = |p: &str| {
            p.starts_with('/')
                && !p.contains("..")
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b))
        };
        if let Some(bad) = files.iter().find(|f| !safe(&f.path)) {
            return Err(invalid(
                "refusing to write",
                image,
                format!("unsafe path {:?}", bad.path),
            ));
        }
        let tmp = tempfile::Builder::new()
            .prefix("banger-guestfiles-")
            .tempdir()
            .map_err(|e| HostError::io("cannot make a temporary dir for", image, e))?;
        // debugfs carries on past a failed command and exits 0, so the
        // script is written to be harmless to rerun (mkdir of an existing
        // directory and rm of a missing file just print errors) and the
        // result is verified by reading every file back.
        let mut script = String::new();
        let mut dirs: Vec<String> = Vec::new();
        for (i, f) in files.iter().enumerate() {
            let mut parent = String::new();
            let comps: Vec<&str> = f.path.trim_start_matches('/').split('/').collect();
            for c in &comps[..comps.len() - 1] {
                parent.push('/');
                parent.push_str(c);
                if !dirs.contains(&parent) {
                    script.push_str(&format!("mkdir {parent}\nsif {parent} mode 040700\n"));
                    dirs.push(parent.clone());
                }
            }
            let local = tmp.path().join(format!("f{i}"));
            std::fs::write(&local, &f.contents)
                .map_err(|e| HostError::io("cannot stage", &local, e))?;
            script.push_str(&format!(
                "rm {p}\nwrite {stage}/f{i} {p}\nsif {p} mode 0{m:o}\nsif {p} uid {u}\nsif {p} gid {g}\n",
                p = f.path,
                stage = confined::STAGE,
                m = 0o100000 | (f.mode & 0o7777),
                u = f.uid,
                g = f.gid
            ));
        }
        let cmds = tmp.path().join("script");
        std::fs::write(&cmds, script).map_err(|e| HostError::io("cannot stage", &cmds, e))?;
        let script_arg = format!("{}/script", confined::STAGE);
        confined::run(
            debugfs.clone(),
            &[
                OsStr::new("-w"),
                OsStr::new("-f"),
                OsStr::new(&script_arg),
                OsStr::new(confined::IMAGE),
            ],
            image,
            Some(tmp.path()),
        )?
        .stdout_if_success()?;
        for f in files {
            let out = confined::run(
                debugfs.clone(),
                &[
                    OsStr::new("-R"),
                    OsStr::new(&format!("cat {}", f.path)),
                    OsStr::new(confined::IMAGE),
                ],
                image,
                None,
            )?;
            if out.stdout_bytes() != f.contents.as_slice() {
                return Err(invalid(
                    "writing into",
                    image,
                    format!("{} did not read back as written: {}", f.path, out.stderr()),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use banger_core::artifact::ext4;
    use std::fs::File;

    #[test]
    fn loop_attach_read_only_then_detach() {
        require_root("attaches loop devices");
        let host = SystemHost;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("disk.img");
        File::create(&file).unwrap().set_len(8 * MIB).unwrap();
        let mut guard = LoopGuard::default();
        let dev = host.loop_attach(&file, true).unwrap();
        guard.0.push(dev.clone());
        assert!(dev.to_str().unwrap().starts_with("/dev/loop"), "{dev:?}");
        let name = dev.file_name().unwrap().to_str().unwrap();
        let ro = std::fs::read_to_string(format!("/sys/block/{name}/ro")).unwrap();
        assert_eq!(ro.trim(), "1", "{dev:?} is not read-only");
        assert_eq!(host.loop_devices_for(&file).unwrap(), vec![dev.clone()]);
        assert_eq!(host.block_size_sectors(&dev).unwrap(), 8 * MIB / 512);
        assert_eq!(host.block_size_sectors(&file).unwrap(), 8 * MIB / 512);

        host.loop_detach(&dev).unwrap();
        guard.0.clear();
        assert_no_loops(&file);
        assert!(host.loop_devices_for(&file).unwrap().is_empty());

        // A read-write one.
        let rw = host.loop_attach(&file, false).unwrap();
        guard.0.push(rw.clone());
        let name = rw.file_name().unwrap().to_str().unwrap();
        let ro = std::fs::read_to_string(format!("/sys/block/{name}/ro")).unwrap();
        assert_eq!(ro.trim(), "0");
        host.loop_detach(&rw).unwrap();
        guard.0.clear();
        assert_no_loops(&file);
    }

    #[test]
    fn loop_errors_carry_stderr() {
        require_root("attaches loop devices");
        let host = SystemHost;
        let e = host
            .loop_attach(Path::new("/nonexistent/banger-disk.img"), true)
            .unwrap_err();
        match &e {
            HostError::Command { stderr, status, .. } => {
                assert!(!status.success());
                assert!(stderr.contains("banger-disk.img"), "{stderr}");
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("losetup"), "{e}");
    }

    #[test]
    fn mkfs_is_sparse_and_resize_grows() {
        let host = SystemHost;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("work.ext4");
        host.mkfs_ext4(&file, 64 * MIB, "banger-work").unwrap();
        let info = ext4::inspect(&File::open(&file).unwrap()).unwrap();
        assert_eq!(info.fs_size, 64 * MIB);
        assert_eq!(info.block_size, 4096);
        assert_eq!(info.volume_name.as_deref(), Some("banger-work"));
        let used = allocated(&file);
        assert!(used < 16 * MIB, "mkfs allocated {used} bytes of 64 MiB");
        host.fsck_ext4(&file).unwrap();

        host.resize_ext4(&file, 128 * MIB).unwrap();
        let info = ext4::inspect(&File::open(&file).unwrap()).unwrap();
        assert_eq!(info.fs_size, 128 * MIB);
        assert_eq!(std::fs::metadata(&file).unwrap().len(), 128 * MIB);
        assert!(allocated(&file) < 16 * MIB);

        // Never shrinks.
        let e = host.resize_ext4(&file, 64 * MIB).unwrap_err();
        assert!(e.to_string().contains("refusing to shrink"), "{e}");
        assert_eq!(
            ext4::inspect(&File::open(&file).unwrap()).unwrap().fs_size,
            128 * MIB
        );

        // mkfs over an existing file starts from scratch.
        host.mkfs_ext4(&file, 32 * MIB, "again").unwrap();
        let info = ext4::inspect(&File::open(&file).unwrap()).unwrap();
        assert_eq!(info.fs_size, 32 * MIB);
        assert_eq!(info.volume_name.as_deref(), Some("again"));

        let e = host
            .mkfs_ext4(&file, 32 * MIB, "a-label-that-is-too-long")
            .unwrap_err();
        assert!(e.to_string().contains("longer than 16"), "{e}");
    }

    #[test]
    fn fsck_fails_on_garbage() {
        let host = SystemHost;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("junk.img");
        std::fs::write(&file, vec![0x5a; 1 << 20]).unwrap();
        match host.fsck_ext4(&file).unwrap_err() {
            HostError::Command { status, .. } => assert_eq!(status.code(), Some(8)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn device_mapper_absent_here_is_unavailable() {
        let host = SystemHost;
        let had_control = Path::new("/dev/mapper/control").exists();
        if kernel_has_device_mapper() {
            eprintln!("this kernel has device-mapper; only checking dm_available");
            assert_eq!(host.dm_available(), DMSETUP.locate().is_ok());
            return;
        }
        assert!(!host.dm_available());
        let table = super::super::snapshot_table(
            Path::new("/dev/loop0"),
            Path::new("/dev/loop1"),
            8,
            true,
            8,
        );
        for e in [
            host.dm_create("banger-test", &table).unwrap_err(),
            host.dm_remove("banger-test").unwrap_err(),
            host.dm_exists("banger-test").unwrap_err(),
        ] {
            match &e {
                HostError::Unavailable(msg) => {
                    assert!(msg.contains("device-mapper"), "{msg}");
                }
                other => panic!("{other:?}"),
            }
        }
        // dmsetup was never run: it would have made /dev/mapper/control.
        assert_eq!(Path::new("/dev/mapper/control").exists(), had_control);
        assert!(matches!(
            host.dm_create("bad/name", &table).unwrap_err(),
            HostError::Io { .. }
        ));
    }

    #[test]
    fn missing_tools_name_the_package() {
        let t = Tool {
            name: "banger-no-such-tool",
            package: "banger-pkg",
        };
        match t.run(["x"]).unwrap_err() {
            HostError::Unavailable(msg) => {
                assert!(
                    msg.contains("banger-no-such-tool is not installed"),
                    "{msg}"
                );
                assert!(msg.contains("apt-get install banger-pkg"), "{msg}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ext4_write_files_puts_files_with_modes_and_owners() {
        require_root("ext4_write_files");
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("work.ext4");
        let host = SystemHost;
        host.mkfs_ext4(&img, 32 << 20, "t").unwrap();
        let files = [
            super::super::GuestFile {
                path: "/.ssh/authorized_keys".into(),
                contents: b"ssh-ed25519 AAAA test\n".to_vec(),
                mode: 0o600,
                uid: 0,
                gid: 0,
            },
            super::super::GuestFile {
                path: "/.banger/ssh/host_key".into(),
                contents: vec![7u8; 3000],
                mode: 0o640,
                uid: 1000,
                gid: 1000,
            },
        ];
        host.ext4_write_files(&img, &files).unwrap();
        // Again: replaces instead of failing.
        host.ext4_write_files(&img, &files).unwrap();
        let stat = |p: &str| {
            let mut debugfs = banger_core::proc::Cmd::new("debugfs");
            debugfs.args(["-R", &format!("stat {p}")]).arg(&img);
            debugfs.run().unwrap().stdout_text()
        };
        let s = stat("/.banger/ssh/host_key");
        assert!(
            s.contains("Mode:  0640") || s.contains("Mode:  00640"),
            "{s}"
        );
        assert!(s.contains("User:  1000"), "{s}");
        assert!(s.contains("Size: 3000"), "{s}");
        let d = stat("/.ssh");
        assert!(
            d.contains("Mode:  0700") || d.contains("Mode:  00700"),
            "{d}"
        );
        let bad = [super::super::GuestFile {
            path: "/a b".into(),
            contents: vec![],
            mode: 0o600,
            uid: 0,
            gid: 0,
        }];
        assert!(host.ext4_write_files(&img, &bad).is_err());
    }
}
