//! A VM as the store keeps it: the row plus its typed `spec` (what the user
//! asked for) and `runtime` (what the daemon made and runs for it) documents.

use std::path::PathBuf;

use crate::error::Error;
use banger_core::paths::Paths;
use banger_core::store::VmRow;
use banger_proto::methods::op::StageInfo;
use banger_proto::methods::vm::{ExitRecord, VmState};
use serde::{Deserialize, Serialize};

use crate::disk::{ActiveRoot, RootDisk, WorkDisk};
use crate::vmm::backend::{NetAttach, VmmHandle};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spec {
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Work disk size.
    pub disk_bytes: u64,
    #[serde(default)]
    pub nat: bool,
    pub vmm: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Runtime {
    #[serde(default)]
    pub root: Option<RootDisk>,
    #[serde(default)]
    pub work: Option<WorkDisk>,
    /// Devices set up for the root disk while the VM runs (dm-snapshot).
    #[serde(default)]
    pub active_root: Option<ActiveRoot>,
    #[serde(default)]
    pub net: Option<NetAttach>,
    /// The VMM process while there is one.
    #[serde(default)]
    pub vmm: Option<VmmHandle>,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub last_exit: Option<ExitRecord>,
    #[serde(default)]
    pub last_start: Vec<StageInfo>,
    /// The VM's pinned SSH host public key (made at create).
    #[serde(default)]
    pub ssh_host_key: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Vm {
    pub row: VmRow,
    pub state: VmState,
    pub spec: Spec,
    pub runtime: Runtime,
}

impl Vm {
    pub fn from_row(row: VmRow) -> Result<Vm, Error> {
        let corrupt = |what: &str, e: String| {
            Error::internal(format!("vm {:?}: unreadable {what}: {e}", row.name))
        };
        let state =
            VmState::parse(&row.state).ok_or_else(|| corrupt("state", row.state.clone()))?;
        let spec: Spec =
            serde_json::from_str(&row.spec).map_err(|e| corrupt("spec", e.to_string()))?;
        let runtime: Runtime =
            serde_json::from_str(&row.runtime).map_err(|e| corrupt("runtime", e.to_string()))?;
        Ok(Vm {
            row,
            state,
            spec,
            runtime,
        })
    }

    pub fn id(&self) -> &str {
        &self.row.id
    }

    pub fn name(&self) -> &str {
        &self.row.name
    }
}

/// Serialises a document for the row (these types always serialise).
pub fn encode<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("VM documents serialise")
}

/// Persistent per-VM files: disks, console and VMM logs, metrics.
pub fn vm_dir(paths: &Paths, id: &str) -> PathBuf {
    paths.vms_dir().join(id)
}

/// Per-VM runtime files: the VMM's control socket (gone after a reboot).
pub fn run_dir(paths: &Paths, id: &str) -> PathBuf {
    paths.runtime_dir.join("vms").join(id)
}

/// Makes a VM's runtime dir (and `vms/` above it) 0700, whatever the umask,
/// and tightens one left from before: it holds the VMM's control sockets.
pub fn make_run_dir(run_dir: &std::path::Path) -> Result<(), Error> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(run_dir)
        .map_err(|e| Error::internal(format!("cannot create {}: {e}", run_dir.display())))?;
    let parent = run_dir.parent().into_iter();
    for d in parent.chain(std::iter::once(run_dir)) {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::internal(format!("cannot set mode of {}: {e}", d.display())))?;
    }
    Ok(())
}

pub const CONSOLE_LOG: &str = "console.log";
pub const VMM_LOG: &str = "vmm.log";
pub const METRICS: &str = "metrics.json";
