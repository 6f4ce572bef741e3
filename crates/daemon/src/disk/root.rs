//! The root disk: made at VM create ([`create_root`]), set up at each start
//! ([`activate`]) and torn down at stop ([`deactivate`]).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use banger_core::artifact::stage::{self, CopyMethod};

use super::{
    clone_or_copy, io_err, ActiveRoot, DiskError, Pending, RootBackend, RootDisk, COW_FILE,
    OVERLAY_FILE, OVERLAY_MIN_BYTES, ROOT_FILE,
};
use crate::privileged::{snapshot_table, DiskHost, HostError};
use banger_proto::guest::OVERLAY_LABEL;

/// The snapshot's copy-on-write unit: 8 sectors = 4 KiB, the ext4 block.
const DM_CHUNK_SECTORS: u64 = 8;
const DM_CHUNK_BYTES: u64 = DM_CHUNK_SECTORS * 512;
/// Exceptions per metadata chunk of a persistent COW (16 bytes each).
const EXCEPTIONS_PER_CHUNK: u64 = DM_CHUNK_BYTES / 16;
const MIB: u64 = 1 << 20;
/// Longest VM id accepted in a device-mapper name.
const VM_ID_MAX: usize = 100;

/// The device-mapper name of VM `vm_id`'s root disk: `banger-<vm_id>`.
pub fn dm_name(vm_id: &str) -> Result<String, DiskError> {
    let ok = !vm_id.is_empty()
        && vm_id.len() <= VM_ID_MAX
        && vm_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !ok {
        return Err(DiskError::InvalidVmId(vm_id.to_string()));
    }
    Ok(format!("banger-{vm_id}"))
}

/// The length of a persistent dm-snapshot COW file that can hold every chunk
/// of an `origin_size`-byte origin: one header chunk, every data chunk, and
/// one metadata chunk per 256 data chunks, rounded up to a MiB. The file is
/// sparse, so only written chunks take space.
pub fn cow_size(origin_size: u64) -> u64 {
    let chunks = origin_size.div_ceil(DM_CHUNK_BYTES);
    let metadata = chunks.div_ceil(EXCEPTIONS_PER_CHUNK);
    ((1 + metadata + chunks) * DM_CHUNK_BYTES).div_ceil(MIB) * MIB
}

/// Makes VM's root disk in `vm_dir` from the image rootfs `origin`, at VM
/// create. Reflink or copy: clones `origin` to `vm_dir/root.ext4` (made under
/// a `.tmp` name and renamed; progress and cancel through `ctl`; a full
/// filesystem is [`DiskError::NoSpace`] with nothing left behind). The
/// returned [`RootDisk::backend`] says what happened: the clone falls back to
/// copying when `FICLONE` fails. Dm-snapshot: a sparse, zeroed COW file
/// `vm_dir/root.cow` of [`cow_size`] (O(1)). Overlay: a fresh sparse ext4
/// `vm_dir/overlay.ext4` labelled [`OVERLAY_LABEL`], as large as `origin`
/// (at least [`OVERLAY_MIN_BYTES`]), made through `host` (O(1): `origin`'s
/// data is never read). `note` goes into the record as it is.
pub fn create_root(
    backend: RootBackend,
    origin: &Path,
    vm_dir: &Path,
    host: &dyn DiskHost,
    note: Option<String>,
    ctl: &stage::Ctl,
) -> Result<RootDisk, DiskError> {
    let src = File::open(origin).map_err(io_err("cannot open the image rootfs", origin))?;
    let size = stage::require_regular(&src, &format!("the image rootfs {}", origin.display()))?;
    let (backend, file) = match backend {
        RootBackend::DmSnapshot => {
            let cow = vm_dir.join(COW_FILE);
            let pending = Pending::new(&cow)?;
            let f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&pending.tmp)
                .map_err(io_err("cannot create", &pending.tmp))?;
            f.set_len(cow_size(size))
                .map_err(io_err("cannot set the size of", &pending.tmp))?;
            f.sync_all().map_err(io_err("cannot fsync", &pending.tmp))?;
            drop(f);
            pending.commit()?;
            (RootBackend::DmSnapshot, cow)
        }
        RootBackend::Overlay => {
            if ctl.cancel.load(std::sync::atomic::Ordering::Relaxed) {
                return Err(DiskError::Cancelled);
            }
            let file = vm_dir.join(OVERLAY_FILE);
            let pending = Pending::new(&file)?;
            host.mkfs_ext4(&pending.tmp, size.max(OVERLAY_MIN_BYTES), OVERLAY_LABEL)?;
            pending.commit()?;
            (ctl.progress)(size, size);
            (RootBackend::Overlay, file)
        }
        asked @ (RootBackend::Reflink | RootBackend::Copy) => {
            let dest = vm_dir.join(ROOT_FILE);
            let pending = Pending::new(&dest)?;
            let done = match clone_or_copy(&src, origin, &pending, ctl)? {
                CopyMethod::Reflink => RootBackend::Reflink,
                CopyMethod::SparseCopy => RootBackend::Copy,
            };
            pending.commit()?;
            if done != asked {
                tracing::warn!(asked = %asked, done = %done, origin = %origin.display(), "root disk made another way than chosen");
            }
            (done, dest)
        }
    };
    tracing::info!(backend = %backend, file = %file.display(), origin = %origin.display(), size, "root disk created");
    Ok(RootDisk {
        backend,
        file,
        origin: origin.to_path_buf(),
        size,
        note,
    })
}

/// Sets up VM `vm_id`'s root disk for its VMM, at VM start. Reflink and
/// copy: nothing to do, the device is the file. Overlay: nothing to do
/// either; the device is the image's rootfs, read-only, and the overlay disk
/// goes with it. Dm-snapshot: attaches the
/// origin to a read-only loop device and the COW to a read-write one, then
/// creates `banger-<vm_id>` as a persistent snapshot of the origin (4 KiB
/// chunks). When a step fails, the loop devices attached so far are
/// detached again before the error is returned.
pub fn activate(
    root: &RootDisk,
    vm_id: &str,
    host: &dyn DiskHost,
) -> Result<ActiveRoot, DiskError> {
    match root.backend {
        RootBackend::DmSnapshot => {}
        RootBackend::Overlay => {
            return Ok(ActiveRoot {
                device: root.origin.clone(),
                dm_name: None,
                loops: Vec::new(),
                read_only: true,
                overlay: Some(root.file.clone()),
            })
        }
        RootBackend::Reflink | RootBackend::Copy => {
            return Ok(ActiveRoot {
                device: root.file.clone(),
                dm_name: None,
                loops: Vec::new(),
                read_only: false,
                overlay: None,
            })
        }
    }
    let name = dm_name(vm_id)?;
    let mut loops: Vec<PathBuf> = Vec::new();
    let result = (|| -> Result<PathBuf, HostError> {
        loops.push(host.loop_attach(&root.origin, true)?);
        loops.push(host.loop_attach(&root.file, false)?);
        let sectors = host.block_size_sectors(&loops[0])?;
        let table = snapshot_table(&loops[0], &loops[1], sectors, true, DM_CHUNK_SECTORS);
        host.dm_create(&name, &table)
    })();
    match result {
        Ok(device) => {
            tracing::info!(vm = vm_id, device = %device.display(), loops = ?loops, "root disk activated");
            Ok(ActiveRoot {
                device,
                dm_name: Some(name),
                loops,
                read_only: false,
                overlay: None,
            })
        }
        Err(e) => {
            tracing::warn!(vm = vm_id, error = %e, "root disk activation failed; undoing");
            for dev in loops.iter().rev() {
                match host.loop_detach(dev) {
                    Ok(()) => tracing::debug!(device = %dev.display(), "rolled back loop device"),
                    Err(d) => {
                        tracing::warn!(device = %dev.display(), error = %d, "cannot detach loop device while rolling back")
                    }
                }
            }
            Err(e.into())
        }
    }
}

/// Tears down what [`activate`] set up, at VM stop or delete: removes the
/// device-mapper device first (it holds the loop devices), then detaches the
/// loop devices in reverse attach order. Best effort: every step is tried
/// (and logged) even after a failure; the first error is returned.
pub fn deactivate(active: &ActiveRoot, host: &dyn DiskHost) -> Result<(), DiskError> {
    let mut first: Option<HostError> = None;
    if let Some(name) = &active.dm_name {
        match host.dm_remove(name) {
            Ok(()) => tracing::debug!(name, "dm device removed"),
            Err(e) => {
                tracing::warn!(name, error = %e, "cannot remove dm device");
                first.get_or_insert(e);
            }
        }
    }
    for dev in active.loops.iter().rev() {
        match host.loop_detach(dev) {
            Ok(()) => tracing::debug!(device = %dev.display(), "loop device detached"),
            Err(e) => {
                tracing::warn!(device = %dev.display(), error = %e, "cannot detach loop device");
                first.get_or_insert(e);
            }
        }
    }
    match first {
        None => {
            if active.dm_name.is_some() || !active.loops.is_empty() {
                tracing::info!(device = %active.device.display(), "root disk deactivated");
            }
            Ok(())
        }
        Some(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::fake::{Call, FakeHost};
    use super::*;
    use crate::privileged::testutil::{allocated, free_bytes_at, run, write_random, LoopMount};
    use banger_core::artifact::stage::Ctl;
    use std::sync::atomic::AtomicBool;
    use std::time::Instant;

    const VM: &str = "0123456789abcdef0123456789abcdef";

    fn dm_root() -> RootDisk {
        RootDisk {
            backend: RootBackend::DmSnapshot,
            file: "/state/vms/x/root.cow".into(),
            origin: "/state/images/y/rootfs.ext4".into(),
            size: 409600 * 512,
            note: None,
        }
    }

    fn attach(file: &str, ro: bool) -> Call {
        Call::LoopAttach(file.into(), ro)
    }

    fn detach(dev: &str) -> Call {
        Call::LoopDetach(dev.into())
    }

    #[test]
    fn dm_activate_builds_the_snapshot_in_order() {
        let host = FakeHost::new();
        let active = activate(&dm_root(), VM, &host).unwrap();
        let name = format!("banger-{VM}");
        assert_eq!(
            host.calls(),
            vec![
                attach("/state/images/y/rootfs.ext4", true),
                attach("/state/vms/x/root.cow", false),
                Call::BlockSizeSectors("/dev/loopA".into()),
                Call::DmCreate(
                    name.clone(),
                    "0 409600 snapshot /dev/loopA /dev/loopB P 8".into()
                ),
            ]
        );
        assert_eq!(
            active,
            ActiveRoot {
                device: PathBuf::from(format!("/dev/mapper/{name}")),
                dm_name: Some(name.clone()),
                loops: vec!["/dev/loopA".into(), "/dev/loopB".into()],
                read_only: false,
                overlay: None,
            }
        );

        let host = FakeHost::new();
        deactivate(&active, &host).unwrap();
        assert_eq!(
            host.calls(),
            vec![
                Call::DmRemove(name),
                detach("/dev/loopB"),
                detach("/dev/loopA")
            ]
        );
    }

    #[test]
    fn dm_activate_rolls_back_when_dm_create_fails() {
        let host = FakeHost {
            fail_dm_create: true,
            ..FakeHost::new()
        };
        let e = activate(&dm_root(), VM, &host).unwrap_err();
        assert!(e.to_string().contains("injected failure"), "{e}");
        let calls = host.calls();
        assert!(matches!(calls[3], Call::DmCreate(..)), "{calls:?}");
        assert_eq!(calls[4..], [detach("/dev/loopB"), detach("/dev/loopA")]);
    }

    #[test]
    fn dm_activate_rolls_back_when_the_second_loop_fails() {
        let host = FakeHost {
            fail_loop_attach: Some(1),
            ..FakeHost::new()
        };
        activate(&dm_root(), VM, &host).unwrap_err();
        assert_eq!(
            host.calls(),
            vec![
                attach("/state/images/y/rootfs.ext4", true),
                attach("/state/vms/x/root.cow", false),
                detach("/dev/loopA"),
            ]
        );
        // The first attach failing leaves nothing to undo.
        let host = FakeHost {
            fail_loop_attach: Some(0),
            ..FakeHost::new()
        };
        activate(&dm_root(), VM, &host).unwrap_err();
        assert_eq!(
            host.calls(),
            vec![attach("/state/images/y/rootfs.ext4", true)]
        );
    }

    #[test]
    fn dm_deactivate_keeps_going_after_a_failure() {
        let active = ActiveRoot {
            device: "/dev/mapper/banger-x".into(),
            dm_name: Some("banger-x".into()),
            loops: vec!["/dev/loopA".into(), "/dev/loopB".into()],
            read_only: false,
            overlay: None,
        };
        let host = FakeHost {
            fail_dm_remove: true,
            ..FakeHost::new()
        };
        let e = deactivate(&active, &host).unwrap_err();
        assert!(e.to_string().contains("dmsetup"), "{e}");
        assert_eq!(
            host.calls(),
            vec![
                Call::DmRemove("banger-x".into()),
                detach("/dev/loopB"),
                detach("/dev/loopA")
            ]
        );
        // Every detach failing: both tried, the first error returned.
        let host = FakeHost {
            fail_loop_detach: true,
            ..FakeHost::new()
        };
        let e = deactivate(&active, &host).unwrap_err();
        assert!(e.to_string().contains("losetup"), "{e}");
        assert_eq!(host.calls().len(), 3);
    }

    #[test]
    fn file_backends_activate_without_the_host() {
        let host = FakeHost::new();
        for backend in [RootBackend::Reflink, RootBackend::Copy] {
            let root = RootDisk {
                backend,
                file: "/state/vms/x/root.ext4".into(),
                origin: "/o".into(),
                size: 4096,
                note: None,
            };
            let active = activate(&root, VM, &host).unwrap();
            assert_eq!(active.device, root.file);
            assert_eq!((active.dm_name.as_deref(), active.loops.len()), (None, 0));
            deactivate(&active, &host).unwrap();
        }
        assert_eq!(host.calls(), vec![]);
        assert!(matches!(
            activate(&dm_root(), "../evil", &host).unwrap_err(),
            DiskError::InvalidVmId(_)
        ));
        assert_eq!(host.calls(), vec![]);
    }

    #[test]
    fn cow_holds_every_chunk() {
        // 200 MiB = 51200 chunks, 200 metadata chunks, 1 header.
        assert_eq!(cow_size(200 * MIB), 201 * MIB);
        assert_eq!(cow_size(4096), MIB);
        for size in [1u64, 4096, 5000, 256 * 4096, 257 * 4096, 3 << 30] {
            let chunks = size.div_ceil(4096);
            assert!(cow_size(size) >= (1 + chunks + chunks.div_ceil(256)) * 4096);
            assert_eq!(cow_size(size) % MIB, 0);
        }
    }

    #[test]
    fn dm_create_root_makes_a_sparse_cow() {
        let dir = tempfile::tempdir().unwrap();
        let origin = dir.path().join("rootfs.ext4");
        let f = File::create(&origin).unwrap();
        write_random(&f, 0, 8 * MIB, 1);
        let vm = dir.path().join("vm");
        std::fs::create_dir(&vm).unwrap();
        let root = create_root(
            RootBackend::DmSnapshot,
            &origin,
            &vm,
            &FakeHost::new(),
            None,
            &Ctl::none(),
        )
        .unwrap();
        assert_eq!(root.file, vm.join("root.cow"));
        assert_eq!(root.size, 8 * MIB);
        let meta = std::fs::metadata(&root.file).unwrap();
        assert_eq!(meta.len(), cow_size(8 * MIB));
        assert_eq!(allocated(&root.file), 0);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    }

    /// A 200 MiB origin, fully written with non-zero data.
    fn make_origin(dir: &Path) -> PathBuf {
        let origin = dir.join("rootfs.ext4");
        let f = File::create(&origin).unwrap();
        write_random(&f, 0, 200 * MIB, 7);
        f.sync_all().unwrap();
        origin
    }

    fn sha(p: &Path) -> String {
        stage::hash_file(&File::open(p).unwrap(), &Ctl::none())
            .unwrap()
            .1
    }

    fn reflink_root_is_o1(mnt: &LoopMount, origin_mib: u64) -> PathBuf {
        let images = mnt.path().join("images");
        std::fs::create_dir(&images).unwrap();
        let origin = images.join("rootfs.ext4");
        let f = File::create(&origin).unwrap();
        write_random(&f, 0, origin_mib * MIB, 7);
        f.sync_all().unwrap();
        drop(f);
        let vm = mnt.path().join("vm");
        std::fs::create_dir(&vm).unwrap();
        let free_before = free_bytes_at(mnt.path());
        let t = Instant::now();
        let root = create_root(
            RootBackend::Reflink,
            &origin,
            &vm,
            &FakeHost::new(),
            None,
            &Ctl::none(),
        )
        .unwrap();
        let took = t.elapsed();
        eprintln!("create_root reflink of a {origin_mib} MiB origin: {took:?}");
        let free_after = free_bytes_at(mnt.path());
        assert_eq!(root.backend, RootBackend::Reflink);
        assert_eq!(root.file, vm.join("root.ext4"));
        assert_eq!(root.size, origin_mib * MIB);
        let used = free_before.saturating_sub(free_after);
        assert!(used < 4 * MIB, "the clone took {used} bytes");
        assert_eq!(sha(&root.file), sha(&origin));
        assert!(!vm.join("root.ext4.tmp").exists());
        root.file
    }

    #[test]
    fn reflink_root_on_xfs_shares_extents() {
        let mnt = LoopMount::xfs(300 * MIB);
        let file = reflink_root_is_o1(&mnt, 200);
        let frag = run("filefrag", &["-v", file.to_str().unwrap()]);
        assert!(
            frag.contains("shared"),
            "filefrag shows no shared extents:\n{frag}"
        );
        mnt.finish();
    }

    #[test]
    fn reflink_root_on_btrfs_shares_extents() {
        let mnt = LoopMount::btrfs(512 * MIB);
        let file = reflink_root_is_o1(&mnt, 64);
        let frag = run("filefrag", &["-v", file.to_str().unwrap()]);
        assert!(
            frag.contains("shared"),
            "filefrag shows no shared extents:\n{frag}"
        );
        mnt.finish();
    }

    #[test]
    fn copy_root_on_ext4_is_sparse_and_equal() {
        let dir = tempfile::tempdir().unwrap();
        let origin = make_origin(dir.path());
        // A 16 MiB hole in the middle, and a hole at the end.
        let f = OpenOptions::new().write(true).open(&origin).unwrap();
        rustix::fs::fallocate(
            &f,
            rustix::fs::FallocateFlags::PUNCH_HOLE | rustix::fs::FallocateFlags::KEEP_SIZE,
            64 * MIB,
            16 * MIB,
        )
        .unwrap();
        f.set_len(232 * MIB).unwrap();
        drop(f);
        let vm = dir.path().join("vm");
        std::fs::create_dir(&vm).unwrap();
        let progress_calls = std::sync::atomic::AtomicU64::new(0);
        let progress = |_: u64, _: u64| {
            progress_calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        };
        let cancel = AtomicBool::new(false);
        let ctl = Ctl {
            cancel: &cancel,
            progress: &progress,
        };
        let t = Instant::now();
        let root = create_root(
            RootBackend::Copy,
            &origin,
            &vm,
            &FakeHost::new(),
            None,
            &ctl,
        )
        .unwrap();
        eprintln!(
            "create_root copy of a 200 MiB origin (232 MiB file): {:?}",
            t.elapsed()
        );
        assert_eq!(root.backend, RootBackend::Copy);
        assert_eq!(root.size, 232 * MIB);
        assert!(progress_calls.load(std::sync::atomic::Ordering::Relaxed) > 0);
        assert_eq!(sha(&root.file), sha(&origin));
        let used = allocated(&root.file);
        assert!(
            (200 * MIB - 16 * MIB..=200 * MIB).contains(&used),
            "the copy allocated {used} bytes"
        );
        assert_eq!(std::fs::read_dir(&vm).unwrap().count(), 1);

        // Cancelled: an error, nothing left.
        std::fs::remove_file(&root.file).unwrap();
        cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        let e = create_root(
            RootBackend::Copy,
            &origin,
            &vm,
            &FakeHost::new(),
            None,
            &ctl,
        )
        .unwrap_err();
        assert!(matches!(e, DiskError::Cancelled), "{e:?}");
        assert_eq!(std::fs::read_dir(&vm).unwrap().count(), 0);
    }

    #[test]
    fn copy_root_without_space_is_no_space_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let origin = dir.path().join("rootfs.ext4");
        let f = File::create(&origin).unwrap();
        write_random(&f, 0, 16 * MIB, 3);
        drop(f);
        let mnt = LoopMount::ext4(4 * MIB);
        let vm = mnt.path().join("vm");
        std::fs::create_dir(&vm).unwrap();
        let e = create_root(
            RootBackend::Copy,
            &origin,
            &vm,
            &FakeHost::new(),
            None,
            &Ctl::none(),
        )
        .unwrap_err();
        assert!(e.is_no_space(), "{e:?}");
        assert!(e.to_string().contains("not enough free space"), "{e}");
        assert_eq!(
            std::fs::read_dir(&vm).unwrap().count(),
            0,
            "partial file left in {}",
            vm.display()
        );
        mnt.finish();
    }

    #[test]
    fn create_root_of_a_missing_origin_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let e = create_root(
            RootBackend::Copy,
            &dir.path().join("nope.ext4"),
            dir.path(),
            &FakeHost::new(),
            None,
            &Ctl::none(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("nope.ext4"), "{e}");
        let e = create_root(
            RootBackend::Copy,
            dir.path(),
            dir.path(),
            &FakeHost::new(),
            None,
            &Ctl::none(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }

    #[test]
    fn overlay_root_is_made_through_the_host_and_never_reads_the_origin() {
        let dir = tempfile::tempdir().unwrap();
        let origin = make_origin(dir.path());
        let vm = dir.path().join("vm");
        std::fs::create_dir(&vm).unwrap();
        let host = FakeHost::new();
        let tmp = vm.join("overlay.ext4.tmp");
        // The fake's mkfs makes nothing, so committing fails: nothing is left.
        let e = create_root(
            RootBackend::Overlay,
            &origin,
            &vm,
            &host,
            None,
            &Ctl::none(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("overlay.ext4.tmp"), "{e}");
        assert_eq!(
            host.calls(),
            vec![Call::MkfsExt4(tmp, 200 * MIB, OVERLAY_LABEL.into())]
        );
        assert_eq!(std::fs::read_dir(&vm).unwrap().count(), 0);
        // A tiny image still gets a usable overlay disk.
        let small = dir.path().join("small.ext4");
        File::create(&small).unwrap().set_len(4 * MIB).unwrap();
        let host = FakeHost::new();
        create_root(RootBackend::Overlay, &small, &vm, &host, None, &Ctl::none()).unwrap_err();
        assert!(
            matches!(&host.calls()[0], Call::MkfsExt4(_, size, _) if *size == OVERLAY_MIN_BYTES),
            "{:?}",
            host.calls()
        );
        // Cancelled before anything: the host is not asked.
        let cancel = AtomicBool::new(true);
        let ctl = Ctl {
            cancel: &cancel,
            progress: &|_, _| {},
        };
        let host = FakeHost::new();
        let e = create_root(RootBackend::Overlay, &origin, &vm, &host, None, &ctl).unwrap_err();
        assert!(e.is_cancelled(), "{e:?}");
        assert_eq!(host.calls(), vec![]);
    }

    /// The real thing on ext4: a sparse labelled filesystem of ~1 MiB
    /// allocated for a 32 MiB and a 2 GiB origin alike, the origin untouched,
    /// and start-up
    /// attaches the origin read-only with the overlay disk beside it.
    #[test]
    fn overlay_root_on_ext4_is_o1_in_the_image_size() {
        use crate::privileged::SystemHost;
        use banger_core::artifact::ext4;
        let dir = tempfile::tempdir().unwrap();
        let mut took = Vec::new();
        for (name, mib) in [("small", 32u64), ("big", 2048)] {
            let origin = dir.path().join(format!("{name}.ext4"));
            let f = File::create(&origin).unwrap();
            // Data at both ends, a hole between (the big one would be slow
            // to fill, and the overlay never reads it anyway).
            write_random(&f, 0, MIB, 5);
            write_random(&f, (mib - 1) * MIB, MIB, 6);
            f.sync_all().unwrap();
            drop(f);
            let before = sha(&origin);
            let vm = dir.path().join(format!("vm-{name}"));
            std::fs::create_dir(&vm).unwrap();
            let t = Instant::now();
            let root = create_root(
                RootBackend::Overlay,
                &origin,
                &vm,
                &SystemHost,
                None,
                &Ctl::none(),
            )
            .unwrap();
            took.push(t.elapsed());
            assert_eq!(root.backend, RootBackend::Overlay);
            assert_eq!(root.file, vm.join("overlay.ext4"));
            assert_eq!(
                (root.origin.as_path(), root.size),
                (origin.as_path(), mib * MIB)
            );
            let info = ext4::inspect(&File::open(&root.file).unwrap()).unwrap();
            assert_eq!(info.volume_name.as_deref(), Some(OVERLAY_LABEL));
            assert_eq!(info.fs_size, mib * MIB);
            let used = allocated(&root.file);
            assert!(
                used < 4 * MIB,
                "{name}: the overlay disk allocated {used} bytes"
            );
            assert_eq!(sha(&origin), before, "{name}: the origin changed");
            let active = activate(&root, VM, &FakeHost::new()).unwrap();
            assert_eq!(active.device, origin);
            assert!(active.read_only);
            assert_eq!(active.overlay.as_deref(), Some(root.file.as_path()));
            assert!(active.dm_name.is_none() && active.loops.is_empty());
        }
        // O(1) shows in the allocation above (no test asserts a time).
        eprintln!(
            "create_root overlay: 32 MiB origin {:?}, 2 GiB origin {:?}",
            took[0], took[1]
        );
    }
}
