//! A [`DiskHost`] that records what it is asked to do and fails on demand;
//! loop devices are named `/dev/loopA`, `/dev/loopB`, ... in attach order.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::Mutex;

use crate::privileged::{DiskHost, DmTable, HostError};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    LoopAttach(PathBuf, bool),
    LoopDetach(PathBuf),
    LoopDevicesFor(PathBuf),
    DmAvailable,
    /// The name and the table line.
    DmCreate(String, String),
    DmRemove(String),
    DmExists(String),
    BlockSizeSectors(PathBuf),
    MkfsExt4(PathBuf, u64, String),
    FsckExt4(PathBuf),
    ResizeExt4(PathBuf, u64),
}

pub struct FakeHost {
    /// What `dm_available` answers.
    pub dm: bool,
    /// What `block_size_sectors` answers.
    pub sectors: u64,
    /// Fail the n-th (0-based) `loop_attach`.
    pub fail_loop_attach: Option<usize>,
    pub fail_dm_create: bool,
    pub fail_dm_remove: bool,
    pub fail_loop_detach: bool,
    pub calls: Mutex<Vec<Call>>,
}

impl FakeHost {
    pub fn new() -> FakeHost {
        FakeHost {
            dm: false,
            sectors: 409600,
            fail_loop_attach: None,
            fail_dm_create: false,
            fail_dm_remove: false,
            fail_loop_detach: false,
            calls: Mutex::new(Vec::new()),
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    fn record(&self, c: Call) {
        self.calls.lock().unwrap().push(c);
    }

    fn attached(&self) -> usize {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| matches!(c, Call::LoopAttach(..)))
            .count()
    }
}

/// The error a fake step fails with.
pub fn injected(program: &str) -> HostError {
    HostError::Command {
        program: program.into(),
        args: vec![],
        status: ExitStatus::from_raw(1 << 8),
        stderr: "injected failure".into(),
    }
}

impl DiskHost for FakeHost {
    fn loop_attach(&self, file: &Path, read_only: bool) -> Result<PathBuf, HostError> {
        let n = self.attached();
        self.record(Call::LoopAttach(file.to_path_buf(), read_only));
        if self.fail_loop_attach == Some(n) {
            return Err(injected("losetup"));
        }
        Ok(PathBuf::from(format!(
            "/dev/loop{}",
            (b'A' + n as u8) as char
        )))
    }

    fn loop_detach(&self, dev: &Path) -> Result<(), HostError> {
        self.record(Call::LoopDetach(dev.to_path_buf()));
        if self.fail_loop_detach {
            return Err(injected("losetup"));
        }
        Ok(())
    }

    fn loop_devices_for(&self, file: &Path) -> Result<Vec<PathBuf>, HostError> {
        self.record(Call::LoopDevicesFor(file.to_path_buf()));
        Ok(vec![])
    }

    fn dm_available(&self) -> bool {
        self.record(Call::DmAvailable);
        self.dm
    }

    fn dm_create(&self, name: &str, table: &DmTable) -> Result<PathBuf, HostError> {
        self.record(Call::DmCreate(name.into(), table.to_string()));
        if self.fail_dm_create {
            return Err(injected("dmsetup"));
        }
        Ok(Path::new("/dev/mapper").join(name))
    }

    fn dm_remove(&self, name: &str) -> Result<(), HostError> {
        self.record(Call::DmRemove(name.into()));
        if self.fail_dm_remove {
            return Err(injected("dmsetup"));
        }
        Ok(())
    }

    fn dm_exists(&self, name: &str) -> Result<bool, HostError> {
        self.record(Call::DmExists(name.into()));
        Ok(false)
    }

    fn block_size_sectors(&self, dev_or_file: &Path) -> Result<u64, HostError> {
        self.record(Call::BlockSizeSectors(dev_or_file.to_path_buf()));
        Ok(self.sectors)
    }

    fn mkfs_ext4(&self, file: &Path, size_bytes: u64, label: &str) -> Result<(), HostError> {
        self.record(Call::MkfsExt4(file.to_path_buf(), size_bytes, label.into()));
        Ok(())
    }

    fn fsck_ext4(&self, file: &Path) -> Result<(), HostError> {
        self.record(Call::FsckExt4(file.to_path_buf()));
        Ok(())
    }

    fn resize_ext4(&self, file: &Path, new_size: u64) -> Result<(), HostError> {
        self.record(Call::ResizeExt4(file.to_path_buf(), new_size));
        Ok(())
    }

    fn ext4_write_files(
        &self,
        _: &Path,
        _: &[crate::privileged::GuestFile],
    ) -> Result<(), HostError> {
        Err(HostError::Unavailable(
            "the recording fake writes no files".into(),
        ))
    }
}
