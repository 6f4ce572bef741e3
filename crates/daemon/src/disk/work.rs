//! The work disk: an ext4 image the guest mounts at `/root`
//! ([`banger_proto::guest::WORK_MOUNT`]), made from the
//! image's optional seed or from scratch ([`create_work`]) and grown on
//! request ([`grow_work`]).

use std::fs::File;
use std::path::Path;

use banger_core::artifact::stage;
use banger_proto::guest::WORK_LABEL;

use super::{clone_or_copy, io_err, DiskError, Pending, WorkDisk, WORK_FILE};
use crate::privileged::DiskHost;

/// Makes the VM's work disk `vm_dir/work.ext4`, at VM create. With a `seed`
/// (the image's `work-seed.ext4`): clones it (reflink when possible, else a
/// sparse copy, with progress and cancel through `ctl`), then grows the
/// filesystem to `size` when that is larger; a seed larger than `size` keeps
/// its size (the returned [`WorkDisk::size`] says so). Without: a fresh ext4
/// filesystem of `size` bytes labelled [`WORK_LABEL`]. Made under a `.tmp`
/// name and renamed into place; on any error nothing is left behind.
pub fn create_work(
    seed: Option<&Path>,
    vm_dir: &Path,
    size: u64,
    host: &dyn DiskHost,
    ctl: &stage::Ctl,
) -> Result<WorkDisk, DiskError> {
    let dest = vm_dir.join(WORK_FILE);
    let pending = Pending::new(&dest)?;
    let made = match seed {
        Some(seed) => {
            let src = File::open(seed).map_err(io_err("cannot open the work seed", seed))?;
            let method = clone_or_copy(&src, seed, &pending, ctl)?;
            let seed_size = std::fs::metadata(&pending.tmp)
                .map_err(io_err("cannot inspect", &pending.tmp))?
                .len();
            let made = if size > seed_size {
                host.resize_ext4(&pending.tmp, size)?;
                size
            } else {
                if size < seed_size {
                    tracing::info!(seed = %seed.display(), seed_size, size, "work seed is larger than the disk size asked for; keeping its size");
                }
                seed_size
            };
            tracing::debug!(seed = %seed.display(), method = %method, "work disk seeded");
            made
        }
        None => {
            host.mkfs_ext4(&pending.tmp, size, WORK_LABEL)?;
            size
        }
    };
    pending.commit()?;
    tracing::info!(file = %dest.display(), size = made, seeded = seed.is_some(), "work disk created");
    Ok(WorkDisk {
        file: dest,
        size: made,
    })
}

/// Grows the work disk to `new_size` bytes (`vm set --disk-size`); the VM
/// must be stopped, which is the caller's job. Only grows: a smaller size is
/// [`DiskError::Shrink`]; the same size does nothing.
pub fn grow_work(
    work: &WorkDisk,
    new_size: u64,
    host: &dyn DiskHost,
) -> Result<WorkDisk, DiskError> {
    if new_size < work.size {
        return Err(DiskError::Shrink {
            current: work.size,
            requested: new_size,
        });
    }
    if new_size > work.size {
        host.resize_ext4(&work.file, new_size)?;
        tracing::info!(file = %work.file.display(), from = work.size, to = new_size, "work disk grown");
    }
    Ok(WorkDisk {
        file: work.file.clone(),
        size: new_size,
    })
}

#[cfg(test)]
mod tests {
    use super::super::fake::{Call, FakeHost};
    use super::*;
    use crate::privileged::testutil::*;
    use crate::privileged::SystemHost;
    use banger_core::artifact::ext4;
    use banger_core::artifact::stage::Ctl;
    use std::path::PathBuf;

    fn fs_size(p: &Path) -> u64 {
        ext4::inspect(&File::open(p).unwrap()).unwrap().fs_size
    }

    /// A 32 MiB ext4 seed holding /hostname.
    fn make_seed(dir: &Path) -> PathBuf {
        let seed = dir.join("work-seed.ext4");
        SystemHost.mkfs_ext4(&seed, 32 * MIB, "seed").unwrap();
        let content = dir.join("hostname.txt");
        std::fs::write(&content, "banger-seeded\n").unwrap();
        run(
            "debugfs",
            &[
                "-w",
                "-R",
                &format!("write {} hostname", content.display()),
                seed.to_str().unwrap(),
            ],
        );
        seed
    }

    fn cat(image: &Path, file: &str) -> String {
        run(
            "debugfs",
            &["-R", &format!("cat {file}"), image.to_str().unwrap()],
        )
    }

    #[test]
    fn seeded_work_disk_is_grown_and_keeps_the_seed_files() {
        let dir = tempfile::tempdir().unwrap();
        let seed = make_seed(dir.path());
        assert_eq!(cat(&seed, "/hostname"), "banger-seeded\n");
        let vm = dir.path().join("vm");
        std::fs::create_dir(&vm).unwrap();
        let work = create_work(Some(&seed), &vm, 64 * MIB, &SystemHost, &Ctl::none()).unwrap();
        assert_eq!(work.file, vm.join("work.ext4"));
        assert_eq!(work.size, 64 * MIB);
        assert_eq!(fs_size(&work.file), 64 * MIB);
        assert_eq!(cat(&work.file, "/hostname"), "banger-seeded\n");
        assert!(allocated(&work.file) < 16 * MIB);
        // The seed is untouched.
        assert_eq!(fs_size(&seed), 32 * MIB);
        assert_eq!(std::fs::metadata(&seed).unwrap().len(), 32 * MIB);
        assert_eq!(std::fs::read_dir(&vm).unwrap().count(), 1);

        // Smaller than the seed: the seed's size.
        std::fs::remove_file(&work.file).unwrap();
        let work = create_work(Some(&seed), &vm, 16 * MIB, &SystemHost, &Ctl::none()).unwrap();
        assert_eq!(work.size, 32 * MIB);
        assert_eq!(fs_size(&work.file), 32 * MIB);
    }

    #[test]
    fn fresh_work_disk_and_growing_it() {
        let dir = tempfile::tempdir().unwrap();
        let work = create_work(None, dir.path(), 64 * MIB, &SystemHost, &Ctl::none()).unwrap();
        assert_eq!(work.size, 64 * MIB);
        let info = ext4::inspect(&File::open(&work.file).unwrap()).unwrap();
        assert_eq!(info.fs_size, 64 * MIB);
        assert_eq!(info.volume_name.as_deref(), Some(WORK_LABEL));

        let grown = grow_work(&work, 96 * MIB, &SystemHost).unwrap();
        assert_eq!(grown.size, 96 * MIB);
        assert_eq!(fs_size(&grown.file), 96 * MIB);
        assert_eq!(grow_work(&grown, 96 * MIB, &SystemHost).unwrap(), grown);

        let e = grow_work(&grown, 64 * MIB, &SystemHost).unwrap_err();
        match &e {
            DiskError::Shrink { current, requested } => {
                assert_eq!((*current, *requested), (96 * MIB, 64 * MIB))
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("96.0 MiB"), "{e}");
        assert_eq!(fs_size(&grown.file), 96 * MIB);
    }

    #[test]
    fn work_disk_steps_go_through_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let host = FakeHost::new();
        let tmp = dir.path().join("work.ext4.tmp");
        // The fake's mkfs makes nothing, so committing fails: nothing is left.
        let e = create_work(None, dir.path(), 8 * MIB, &host, &Ctl::none()).unwrap_err();
        assert!(e.to_string().contains("work.ext4.tmp"), "{e}");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        assert_eq!(
            host.calls(),
            vec![Call::MkfsExt4(tmp, 8 * MIB, WORK_LABEL.into())]
        );
        let work = WorkDisk {
            file: dir.path().join("work.ext4"),
            size: 8 * MIB,
        };
        grow_work(&work, 16 * MIB, &host).unwrap();
        assert_eq!(
            host.calls()[1..],
            [Call::ResizeExt4(work.file.clone(), 16 * MIB)]
        );
    }

    #[test]
    fn a_broken_seed_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let seed = dir.path().join("seed.ext4");
        std::fs::write(&seed, vec![0x11; 1 << 20]).unwrap();
        let vm = dir.path().join("vm");
        std::fs::create_dir(&vm).unwrap();
        let e = create_work(Some(&seed), &vm, 8 * MIB, &SystemHost, &Ctl::none()).unwrap_err();
        assert!(matches!(e, DiskError::Host(_)), "{e:?}");
        assert!(e.to_string().contains("e2fsck"), "{e}");
        assert_eq!(std::fs::read_dir(&vm).unwrap().count(), 0);
    }
}
