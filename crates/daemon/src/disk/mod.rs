//! A VM's disks: its root disk (a copy-on-write view of its image's read-only
//! `rootfs.ext4`) and its work disk (an ext4 image the guest mounts at
//! `/root`).
//!
//! # Root disk backends
//!
//! [`choose_backend`] picks one per VM, automatically unless configured
//! (`auto` is reflink, else overlay when the image can, else copy;
//! dm-snapshot is opt-in, see below):
//!
//! - [`RootBackend::Reflink`]: `FICLONE` of the rootfs into the VM directory.
//!   O(1) in time and space at create (only metadata is copied; blocks are
//!   shared until the guest writes them), and the result is a plain file: no
//!   devices to set up at start or leak at a crash. Needs the state directory
//!   on a filesystem with reflinks (xfs, btrfs), with the images and VM
//!   directories on that same filesystem.
//! - [`RootBackend::DmSnapshot`]: at create only a sparse COW file is made
//!   (O(1)); at each start the rootfs is attached to a read-only loop device,
//!   the COW to a read-write one, and a device-mapper `snapshot` target joins
//!   them as `/dev/mapper/banger-<vm id>`. The COW is persistent (survives
//!   stop and start). It costs space only for the 4 KiB chunks the guest
//!   writes (plus 1/256 of that for the exception table), but it is sized to
//!   hold every chunk of the origin (see [`cow_size`]) so it cannot overflow:
//!   an overflowing snapshot is invalidated by the kernel and the guest sees
//!   I/O errors. Sparse means the filesystem holding it can still fill up: a
//!   full state filesystem fails the guest's writes. **Not exercised on real
//!   device-mapper**: the machines this was written on have no device-mapper
//!   driver; the table, the setup and teardown order and the rollback are
//!   unit-tested against a recording fake [`DiskHost`] only. So `auto` never
//!   picks it: it is used only when configured (`[vm] disk_backend =
//!   "dm-snapshot"`), and `banger doctor` warns that it is unproven.
//! - [`RootBackend::Overlay`]: the image's `rootfs.ext4` itself is the root
//!   disk, attached **read-only** and shared by every VM of the image (QEMU
//!   `readonly=on`, which opens the file `O_RDONLY` and shows the guest a
//!   read-only virtio disk; Firecracker `is_read_only`, which does the same),
//!   and a per-VM overlay disk `overlay.ext4` (a fresh sparse ext4 labelled
//!   [`banger_proto::guest::OVERLAY_LABEL`], made by `mkfs.ext4` with lazy
//!   inode-table and journal init: O(1) in the image size, ~10 ms and
//!   ~1 MiB allocated for a 32 MiB or a 4 GiB one) is attached read-write as
//!   the third drive. In the guest the agent, run as init, mounts overlayfs
//!   (lower: the read-only root; upper: the overlay disk) and executes
//!   systemd on it (`banger_agent::init`). Works on every filesystem and
//!   needs no host devices, but needs the guest's cooperation: only images
//!   with the [`banger_proto::guest::OVERLAY_FEATURE`] (built or pulled by a
//!   banger whose agent has the init mode) get it; `auto` gives the others a
//!   copy and records why ([`RootDisk::note`]). The overlay disk is as large
//!   as the image's rootfs, so the guest can write on `/` at least what a
//!   copy of the rootfs would hold, and it is sparse, so it costs only what
//!   the guest writes (`--disk-size` stays the work disk's size, as before:
//!   the root disk's size was and is the image's). The image must not change
//!   under the VM (overlayfs over a changed lower is undefined): images are
//!   immutable, and deleting or replacing one is refused while VMs use it.
//! - [`RootBackend::Copy`]: a sparse copy (holes and zero blocks stay holes).
//!   O(data) in time and space; the last resort.
//!
//! All host work (loop devices, device-mapper, mkfs, resize) goes through
//! [`DiskHost`], so this module's logic is testable without root.
//!
//! Files in the VM directory: `root.ext4` (reflink/copy), `root.cow`
//! (dm-snapshot) or `overlay.ext4` (overlay), and `work.ext4`. Each is made under a `.tmp` name and
//! renamed into place, so a failure or cancel never leaves a half-made disk;
//! all are mode 0600.

mod root;
mod work;

#[cfg(test)]
pub(crate) mod fake;

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use banger_core::artifact::stage::{self, CopyMethod, StageError};
use serde::{Deserialize, Serialize};

use crate::privileged::{DiskHost, HostError};

pub use root::{activate, cow_size, create_root, deactivate, dm_name};
pub use work::{create_work, grow_work};

/// The root disk's file for the reflink and copy backends.
pub const ROOT_FILE: &str = "root.ext4";
/// The root disk's COW file for the dm-snapshot backend.
pub const COW_FILE: &str = "root.cow";
/// The work disk's file.
pub const WORK_FILE: &str = "work.ext4";
/// The overlay disk's file for the overlay backend.
pub const OVERLAY_FILE: &str = "overlay.ext4";
/// The smallest overlay disk made, whatever the image's size.
pub const OVERLAY_MIN_BYTES: u64 = 16 << 20;

/// How a VM's root disk is made from its image's rootfs. Serialized (store,
/// config, JSON) as its [`RootBackend::as_str`] name: `"dm-snapshot"`,
/// `"reflink"`, `"overlay"`, `"copy"`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "kebab-case")]
pub enum RootBackend {
    /// Device-mapper snapshot over loop devices; see the module docs.
    DmSnapshot,
    /// `FICLONE` clone of the rootfs (xfs, btrfs).
    Reflink,
    /// The rootfs read-only plus a per-VM overlay disk, joined in the guest.
    Overlay,
    /// Sparse copy of the rootfs.
    Copy,
}

impl RootBackend {
    pub const ALL: [RootBackend; 4] = [
        RootBackend::DmSnapshot,
        RootBackend::Reflink,
        RootBackend::Overlay,
        RootBackend::Copy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RootBackend::DmSnapshot => "dm-snapshot",
            RootBackend::Reflink => "reflink",
            RootBackend::Overlay => "overlay",
            RootBackend::Copy => "copy",
        }
    }
}

impl fmt::Display for RootBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RootBackend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RootBackend::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown root-disk backend {s:?}; use dm-snapshot, reflink, overlay or copy"
                )
            })
    }
}

/// A VM's root disk as made at create; stored with the VM.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RootDisk {
    /// What was actually done: [`create_root`] records `Copy` when a reflink
    /// was asked for but the clone fell back to copying, and `Reflink` when
    /// a copy was asked for but the clone succeeded.
    pub backend: RootBackend,
    /// The clone (reflink, copy), the COW file (dm-snapshot) or the overlay
    /// disk (overlay).
    pub file: PathBuf,
    /// The image's rootfs.
    pub origin: PathBuf,
    /// Bytes the guest sees: the origin's size.
    pub size: u64,
    /// Why this backend rather than a cheaper one, when `auto` had to settle
    /// (e.g. "the image cannot do overlay: ..."); shown by `vm show`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A root disk set up for a running VM. Device paths are valid only while
/// the daemon that made them holds them: after a daemon restart, find leaked
/// loop devices by file ([`DiskHost::loop_devices_for`]), not by these paths.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ActiveRoot {
    /// What the VMM opens: the file, or `/dev/mapper/<name>`.
    pub device: PathBuf,
    /// The device-mapper device, for dm-snapshot.
    pub dm_name: Option<String>,
    /// Loop devices, in attach order (origin, then COW).
    pub loops: Vec<PathBuf>,
    /// The VMM attaches `device` read-only (overlay: the shared rootfs).
    #[serde(default)]
    pub read_only: bool,
    /// The overlay disk, attached read-write after the work disk (overlay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overlay: Option<PathBuf>,
}

/// A VM's work disk.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct WorkDisk {
    pub file: PathBuf,
    /// Bytes (file length = filesystem size).
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// A root-disk backend was asked for explicitly but this host cannot do
    /// it; `reason` says why.
    #[error("the {backend} root-disk backend cannot be used here: {reason}")]
    Unsupported {
        backend: RootBackend,
        reason: String,
    },
    /// The filesystem holding `path` (the state directory) has not enough
    /// free space; nothing partial was left behind.
    #[error(
        "not enough free space for {}: about {} needed, {} available; free some space on \
         that filesystem and try again",
        path.display(),
        human(*needed),
        human(*available)
    )]
    NoSpace {
        path: PathBuf,
        needed: u64,
        available: u64,
    },
    /// The work disk can only grow.
    #[error(
        "the work disk is {} ({current} bytes) and cannot shrink to {} ({requested} bytes); \
         give a size of at least {}",
        human(*current),
        human(*requested),
        human(*current)
    )]
    Shrink { current: u64, requested: u64 },
    /// The operation was cancelled; partial files were removed.
    #[error("cancelled")]
    Cancelled,
    /// The VM id cannot form a device-mapper name.
    #[error("VM id {0:?} cannot name a device-mapper device (1-100 of [A-Za-z0-9_-])")]
    InvalidVmId(String),
    /// A host operation (loop, device-mapper, mkfs, resize) failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// Copying or cloning failed (other than for space or cancel).
    #[error(transparent)]
    Stage(StageError),
    /// A filesystem operation failed; `what` says which, `path` names the file.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: String,
        path: PathBuf,
        source: io::Error,
    },
}

impl DiskError {
    /// Whether this is [`DiskError::NoSpace`].
    pub fn is_no_space(&self) -> bool {
        matches!(self, DiskError::NoSpace { .. })
    }

    /// Whether this is [`DiskError::Cancelled`].
    pub fn is_cancelled(&self) -> bool {
        matches!(self, DiskError::Cancelled)
    }
}

impl From<StageError> for DiskError {
    fn from(e: StageError) -> Self {
        match e {
            StageError::NoSpace {
                path,
                needed,
                available,
            } => DiskError::NoSpace {
                path,
                needed,
                available,
            },
            StageError::Cancelled => DiskError::Cancelled,
            e => DiskError::Stage(e),
        }
    }
}

fn io_err(what: impl Into<String>, path: &Path) -> impl FnOnce(io::Error) -> DiskError {
    let (what, path) = (what.into(), path.to_path_buf());
    move |source| DiskError::Io { what, path, source }
}

/// `1536` → `1.5 KiB`; for messages.
fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
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

/// What [`choose_backend`] settled on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub backend: RootBackend,
    /// Why not a cheaper backend, when `auto` had to fall back to copy.
    pub note: Option<String>,
}

/// Picks the root-disk backend for a VM of an image. Without a preference
/// (`auto`): reflink when `state_dir`'s filesystem can clone (O(1), nothing
/// to set up at start, no guest cooperation), else overlay when the image
/// can do it (`overlay` is `Ok`; `Err` says why not), else copy, with the
/// reason overlay was not possible in [`Choice::note`]. dm-snapshot is
/// opt-in (`[vm] disk_backend = "dm-snapshot"`) and never picked silently:
/// it has not run against a real device-mapper, and a crash during its
/// activation may leak loops and tables (`banger doctor` says so). A
/// preference the host or the image cannot honour is
/// [`DiskError::Unsupported`] saying why.
pub fn choose_backend(
    pref: Option<RootBackend>,
    state_dir: &Path,
    host: &dyn DiskHost,
    overlay: Result<(), String>,
) -> Result<Choice, DiskError> {
    let reflink = || {
        stage::reflink_supported(state_dir).map_err(io_err(
            "cannot probe reflink support (FICLONE) in",
            state_dir,
        ))
    };
    let plain = |backend| Choice {
        backend,
        note: None,
    };
    let chosen = match pref {
        None => {
            if reflink()? {
                plain(RootBackend::Reflink)
            } else {
                match overlay {
                    Ok(()) => plain(RootBackend::Overlay),
                    Err(why) => Choice {
                        backend: RootBackend::Copy,
                        note: Some(format!(
                            "copied: no reflinks on the state filesystem, and the image cannot \
                             do overlay: {why}"
                        )),
                    },
                }
            }
        }
        Some(RootBackend::Reflink) => {
            if !reflink()? {
                return Err(DiskError::Unsupported {
                    backend: RootBackend::Reflink,
                    reason: format!(
                        "the filesystem holding {} cannot clone files (FICLONE); reflinks need \
                         xfs (with reflink=1, the default) or btrfs",
                        state_dir.display()
                    ),
                });
            }
            plain(RootBackend::Reflink)
        }
        Some(RootBackend::Overlay) => {
            if let Err(reason) = overlay {
                return Err(DiskError::Unsupported {
                    backend: RootBackend::Overlay,
                    reason,
                });
            }
            plain(RootBackend::Overlay)
        }
        Some(RootBackend::DmSnapshot) => {
            if !host.dm_available() {
                return Err(DiskError::Unsupported {
                    backend: RootBackend::DmSnapshot,
                    reason: "device-mapper is not available on this host (no device-mapper \
                             driver in the kernel, or dmsetup not installed: apt-get install \
                             dmsetup)"
                        .into(),
                });
            }
            plain(RootBackend::DmSnapshot)
        }
        Some(RootBackend::Copy) => plain(RootBackend::Copy),
    };
    tracing::debug!(backend = %chosen.backend, note = ?chosen.note, preferred = ?pref, state_dir = %state_dir.display(), "root-disk backend chosen");
    Ok(chosen)
}

/// Removes the VM's disk files (and any `.tmp` leftovers) from `vm_dir`.
/// Missing files, or a missing `vm_dir`, are fine. Tries every file and
/// returns the first error.
pub fn remove_files(vm_dir: &Path) -> Result<(), DiskError> {
    let mut first = None;
    for name in [ROOT_FILE, COW_FILE, OVERLAY_FILE, WORK_FILE] {
        let file = vm_dir.join(name);
        for p in [tmp_path(&file), file] {
            match std::fs::remove_file(&p) {
                Ok(()) => tracing::debug!(file = %p.display(), "disk file removed"),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %p.display(), error = %e, "cannot remove disk file");
                    first.get_or_insert_with(|| io_err("cannot remove", &p)(e));
                }
            }
        }
    }
    first.map_or(Ok(()), Err)
}

/// `dest` + `.tmp`: where a disk is made before being renamed into place.
fn tmp_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// A disk being made at a temporary path; removed on drop unless committed.
struct Pending {
    tmp: PathBuf,
    dest: PathBuf,
    armed: bool,
}

impl Pending {
    /// Starts making `dest`: removes a `.tmp` left by a crash.
    fn new(dest: &Path) -> Result<Pending, DiskError> {
        let tmp = tmp_path(dest);
        match std::fs::remove_file(&tmp) {
            Ok(()) => tracing::info!(file = %tmp.display(), "removed a stale temporary disk"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot remove", &tmp)(e)),
        }
        Ok(Pending {
            tmp,
            dest: dest.to_path_buf(),
            armed: true,
        })
    }

    /// Sets mode 0600 and renames into place (durably).
    fn commit(mut self) -> Result<(), DiskError> {
        std::fs::set_permissions(&self.tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err("cannot set the mode of", &self.tmp))?;
        stage::commit(&self.tmp, &self.dest)?;
        self.armed = false;
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.armed {
            match std::fs::remove_file(&self.tmp) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(file = %self.tmp.display(), error = %e, "cannot remove temporary disk")
                }
            }
        }
    }
}

/// Fills `pending.tmp` with `src`'s content: `FICLONE` when the filesystem
/// can (O(1): no data read, unlike [`stage::copy_into`], which hashes the
/// clone), else [`stage::copy_into`]'s sparse copy with its free-space
/// check, progress and cancel.
fn clone_or_copy(
    src: &File,
    src_path: &Path,
    pending: &Pending,
    ctl: &stage::Ctl,
) -> Result<CopyMethod, DiskError> {
    if ctl.cancel.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(DiskError::Cancelled);
    }
    let size = stage::require_regular(src, &src_path.display().to_string())?;
    let tmp = &pending.tmp;
    let out = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(io_err("cannot create", tmp))?;
    match rustix::fs::ioctl_ficlone(&out, src) {
        Ok(()) => {
            out.sync_all().map_err(io_err("cannot fsync", tmp))?;
            (ctl.progress)(size, size);
            Ok(CopyMethod::Reflink)
        }
        Err(e) => {
            tracing::debug!(src = %src_path.display(), error = %e, "FICLONE failed; copying");
            drop(out);
            std::fs::remove_file(tmp).map_err(io_err("cannot remove", tmp))?;
            Ok(stage::copy_into(src, tmp, ctl)?.method)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeHost;
    use super::*;
    use crate::privileged::testutil::*;

    /// What an image without the overlay feature gives `choose_backend`.
    fn no_overlay() -> Result<(), String> {
        Err("image i has no overlay feature".into())
    }

    #[test]
    fn backend_names() {
        for b in RootBackend::ALL {
            assert_eq!(b.as_str().parse::<RootBackend>().unwrap(), b);
            assert_eq!(
                serde_json::to_string(&b).unwrap(),
                format!("\"{}\"", b.as_str())
            );
            assert_eq!(b.to_string(), b.as_str());
        }
        assert!("dm_snapshot".parse::<RootBackend>().is_err());
        let d: RootDisk = serde_json::from_str(
            r#"{"backend":"dm-snapshot","file":"/v/root.cow","origin":"/i/rootfs.ext4","size":4096}"#,
        )
        .unwrap();
        assert_eq!(d.backend, RootBackend::DmSnapshot);
    }

    #[test]
    fn choose_backend_on_ext4_without_and_with_dm() {
        // /tmp is ext4 here: no reflinks.
        let dir = tempfile::tempdir().unwrap();
        assert!(
            !stage::reflink_supported(dir.path()).unwrap(),
            "this test expects {} on a filesystem without reflinks",
            dir.path().display()
        );
        let no_dm = FakeHost::new();
        let dm = FakeHost {
            dm: true,
            ..FakeHost::new()
        };
        assert_eq!(
            choose_backend(None, dir.path(), &no_dm, no_overlay())
                .unwrap()
                .backend,
            RootBackend::Copy
        );
        // dm-snapshot is opt-in (issue 9 §6: it has never run against a real
        // device-mapper): auto picks copy even where device-mapper is, and
        // does not even ask.
        assert_eq!(
            choose_backend(None, dir.path(), &dm, no_overlay())
                .unwrap()
                .backend,
            RootBackend::Copy
        );
        assert_eq!(dm.calls(), vec![]);
        let e =
            choose_backend(Some(RootBackend::Reflink), dir.path(), &dm, no_overlay()).unwrap_err();
        assert!(
            matches!(
                e,
                DiskError::Unsupported {
                    backend: RootBackend::Reflink,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("FICLONE"), "{e}");
        let e = choose_backend(
            Some(RootBackend::DmSnapshot),
            dir.path(),
            &no_dm,
            no_overlay(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("device-mapper"), "{e}");
        assert_eq!(
            choose_backend(Some(RootBackend::DmSnapshot), dir.path(), &dm, no_overlay())
                .unwrap()
                .backend,
            RootBackend::DmSnapshot
        );
        assert_eq!(
            choose_backend(Some(RootBackend::Copy), dir.path(), &dm, no_overlay())
                .unwrap()
                .backend,
            RootBackend::Copy
        );
        // The probe left nothing behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn choose_backend_on_xfs_is_reflink() {
        let mnt = LoopMount::xfs(300 * MIB);
        let dm = FakeHost {
            dm: true,
            ..FakeHost::new()
        };
        assert_eq!(
            choose_backend(None, mnt.path(), &dm, no_overlay())
                .unwrap()
                .backend,
            RootBackend::Reflink
        );
        assert_eq!(
            choose_backend(
                Some(RootBackend::Reflink),
                mnt.path(),
                &FakeHost::new(),
                no_overlay()
            )
            .unwrap()
            .backend,
            RootBackend::Reflink
        );
        // An explicit preference wins over reflink.
        assert_eq!(
            choose_backend(Some(RootBackend::Copy), mnt.path(), &dm, no_overlay())
                .unwrap()
                .backend,
            RootBackend::Copy
        );
        // Reflink is probed first; device-mapper was never asked about.
        assert_eq!(dm.calls(), vec![]);
        mnt.finish();
    }

    #[test]
    fn auto_picks_overlay_on_ext4_for_images_that_can() {
        let dir = tempfile::tempdir().unwrap();
        let host = FakeHost {
            dm: true,
            ..FakeHost::new()
        };
        // No reflinks here (/tmp is ext4): overlay, with nothing to explain.
        assert_eq!(
            choose_backend(None, dir.path(), &host, Ok(())).unwrap(),
            Choice {
                backend: RootBackend::Overlay,
                note: None
            }
        );
        // An image that cannot: copy, and the record says why.
        let c = choose_backend(None, dir.path(), &host, no_overlay()).unwrap();
        assert_eq!(c.backend, RootBackend::Copy);
        let note = c.note.unwrap();
        assert!(
            note.contains("cannot do overlay") && note.contains("no overlay feature"),
            "{note}"
        );
        // Asked for explicitly: refused with the image's reason.
        let e = choose_backend(Some(RootBackend::Overlay), dir.path(), &host, no_overlay())
            .unwrap_err();
        assert!(
            matches!(
                e,
                DiskError::Unsupported {
                    backend: RootBackend::Overlay,
                    ..
                }
            ) && e.to_string().contains("no overlay feature"),
            "{e}"
        );
        assert_eq!(
            choose_backend(Some(RootBackend::Overlay), dir.path(), &host, Ok(()))
                .unwrap()
                .backend,
            RootBackend::Overlay
        );
        // Copy stays copy when asked for, overlay or not.
        assert_eq!(
            choose_backend(Some(RootBackend::Copy), dir.path(), &host, Ok(()))
                .unwrap()
                .backend,
            RootBackend::Copy
        );
        assert_eq!(host.calls(), vec![]);
        assert_eq!("overlay".parse::<RootBackend>(), Ok(RootBackend::Overlay));
    }

    #[test]
    fn auto_keeps_reflink_over_overlay_on_xfs() {
        let mnt = LoopMount::xfs(300 * MIB);
        assert_eq!(
            choose_backend(None, mnt.path(), &FakeHost::new(), Ok(())).unwrap(),
            Choice {
                backend: RootBackend::Reflink,
                note: None
            }
        );
        assert_eq!(
            choose_backend(
                Some(RootBackend::Overlay),
                mnt.path(),
                &FakeHost::new(),
                Ok(())
            )
            .unwrap()
            .backend,
            RootBackend::Overlay
        );
        mnt.finish();
    }

    #[test]
    fn remove_files_removes_disks_and_leftovers_only() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "root.ext4",
            "root.cow",
            "overlay.ext4",
            "overlay.ext4.tmp",
            "work.ext4",
            "work.ext4.tmp",
            "vm.log",
        ] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        remove_files(dir.path()).unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec!["vm.log".to_string()]);
        // Again, and on a missing directory: fine.
        remove_files(dir.path()).unwrap();
        remove_files(&dir.path().join("gone")).unwrap();
    }

    #[test]
    fn stage_errors_keep_no_space_and_cancel_apart() {
        let e: DiskError = StageError::NoSpace {
            path: "/s/vms/x/root.ext4.tmp".into(),
            needed: 16 * MIB,
            available: 3 * MIB,
        }
        .into();
        assert!(e.is_no_space());
        assert_eq!(
            e.to_string(),
            "not enough free space for /s/vms/x/root.ext4.tmp: about 16.0 MiB needed, 3.0 MiB \
             available; free some space on that filesystem and try again"
        );
        let e: DiskError = StageError::Cancelled.into();
        assert!(e.is_cancelled() && !e.is_no_space());
        let e = DiskError::Shrink {
            current: 64 * MIB,
            requested: 32 * MIB,
        };
        assert!(e.to_string().contains("64.0 MiB"), "{e}");
    }
}
