//! `vm.*`: the VM lifecycle.

use serde::{Deserialize, Serialize};

use super::daemon::LogChunk;
use super::op::{OpIdParams, OperationInfo, StageInfo};
use super::{method, Empty, NameParams};

method!(
    /// Validates, reserves the name and starts the `vm.create` operation.
    CreateBegin = "vm.create.begin", CreateParams => CreateBegun
);
method!(
    /// The create operation's state (like `op.status`, for `vm.create` operations).
    CreateStatus = "vm.create.status", OpIdParams => OperationInfo
);
method!(
    /// Cancels a create; everything it made is removed.
    CreateCancel = "vm.create.cancel", OpIdParams => OperationInfo
);
method!(
    /// Boots a stopped VM; returns when it runs.
    Start = "vm.start", NameParams => LifecycleResult
);
method!(
    /// Ctrl-Alt-Del, then SIGTERM, then SIGKILL; returns when stopped.
    Stop = "vm.stop", StopParams => LifecycleResult
);
method!(
    /// Stop, then start.
    Restart = "vm.restart", StopParams => LifecycleResult
);
method!(
    /// Sends a signal to the VMM now (default SIGKILL).
    Kill = "vm.kill", KillParams => LifecycleResult
);
method!(
    /// Deletes a VM and everything it owns (`force` also kills a running one).
    Delete = "vm.delete", DeleteParams => Empty
);
method!(
    /// Deletes the caller's stopped VMs.
    Prune = "vm.prune", Empty => PruneResult
);
method!(
    /// Changes vcpus, memory or the work disk size of a stopped VM.
    Set = "vm.set", SetParams => VmInfo
);
method!(
    /// VMs visible to the caller.
    List = "vm.list", ListParams => Vec<VmInfo>
);
method!(
    /// One VM.
    Show = "vm.show", NameParams => VmInfo
);
method!(
    /// A chunk of the VM's console or VMM log.
    Logs = "vm.logs", VmLogsParams => LogChunk
);
method!(
    /// Resource use of the VM's VMM process plus the VMM's own metrics.
    Stats = "vm.stats", NameParams => VmStats
);
method!(
    /// Is the VM healthy? (VMM liveness until the guest agent lands.)
    Health = "vm.health", NameParams => VmHealth
);
method!(
    /// A round trip to the VM's VMM.
    Ping = "vm.ping", NameParams => VmHealth
);

/// VM states. Transitional states (`creating`, `starting`, `stopping`,
/// `updating`, `deleting`) mean an operation owns the VM; conflicting
/// requests get a `busy` error until it settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Creating,
    Stopped,
    Starting,
    Running,
    Stopping,
    Updating,
    Deleting,
}

impl VmState {
    pub const ALL: [VmState; 7] = [
        VmState::Creating,
        VmState::Stopped,
        VmState::Starting,
        VmState::Running,
        VmState::Stopping,
        VmState::Updating,
        VmState::Deleting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Creating => "creating",
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Stopping => "stopping",
            VmState::Updating => "updating",
            VmState::Deleting => "deleting",
        }
    }

    pub fn parse(s: &str) -> Option<VmState> {
        VmState::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// An operation owns the VM right now.
    pub fn is_transitional(self) -> bool {
        !matches!(self, VmState::Stopped | VmState::Running)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// Empty or absent: a generated name.
    #[serde(default)]
    pub name: Option<String>,
    /// Absent: the caller's default image.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Work disk (/root) size in bytes.
    #[serde(default)]
    pub disk_bytes: Option<u64>,
    #[serde(default)]
    pub no_start: bool,
    #[serde(default)]
    pub nat: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateBegun {
    pub operation_id: String,
    /// The VM as reserved (state `creating`), with the resolved spec.
    pub vm: VmInfo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopParams {
    pub name: String,
    /// Seconds to wait for the guest after Ctrl-Alt-Del (default: config).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillParams {
    pub name: String,
    /// A signal name (`KILL`, `SIGTERM`, ...) or number; default KILL.
    #[serde(default)]
    pub signal: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    pub name: String,
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruneResult {
    pub deleted: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetParams {
    pub name: String,
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    #[serde(default)]
    pub disk_bytes: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Include VMs that are not running.
    #[serde(default)]
    pub all: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogSource {
    /// The guest's serial console.
    #[default]
    Console,
    /// The VMM's own log.
    Vmm,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmLogsParams {
    pub name: String,
    #[serde(default)]
    pub source: LogSource,
    #[serde(default)]
    pub offset: Option<u64>,
    #[serde(default)]
    pub tail_bytes: Option<u64>,
}

/// The result of start/stop/restart/kill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleResult {
    pub vm: VmInfo,
    /// For stops and kills: what ended the VMM (`guest`, `sigterm`, `sigkill`,
    /// `signal N`); `null` otherwise.
    #[serde(default)]
    pub ended_by: Option<String>,
    /// Per-stage host-side timing of this call.
    pub stages: Vec<StageInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// `dm-snapshot`, `reflink` or `copy` for the root disk; `ext4` for work.
    pub backend: String,
    pub path: String,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub at: String,
    /// `guest`, `sigterm`, `sigkill`, `crashed`, `daemon-restart`, `start-failed`, ...
    pub by: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    pub id: String,
    pub name: String,
    pub owner_uid: u32,
    pub state: VmState,
    pub image: String,
    pub kernel: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Work disk size in bytes.
    pub disk_bytes: u64,
    pub nat: bool,
    /// `firecracker` (later also `qemu`).
    pub vmm: String,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub api_socket: Option<String>,
    #[serde(default)]
    pub root_disk: Option<DiskInfo>,
    #[serde(default)]
    pub work_disk: Option<DiskInfo>,
    pub created_at: String,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub uptime_secs: Option<u64>,
    #[serde(default)]
    pub last_exit: Option<ExitRecord>,
    /// Host-side timing of the last start.
    #[serde(default)]
    pub last_start: Vec<StageInfo>,
    pub console_log: String,
    pub vmm_log: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmStats {
    pub name: String,
    pub state: VmState,
    #[serde(default)]
    pub uptime_secs: Option<u64>,
    #[serde(default)]
    pub pid: Option<u32>,
    /// Resident memory of the VMM process, bytes.
    #[serde(default)]
    pub rss_bytes: Option<u64>,
    /// CPU time of the VMM process (user + system), seconds.
    #[serde(default)]
    pub cpu_secs: Option<f64>,
    /// The VMM's latest metrics document (Firecracker's metrics JSON).
    #[serde(default)]
    pub vmm_metrics: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmHealth {
    pub name: String,
    pub healthy: bool,
    pub state: VmState,
    /// The VMM's own view (`Running`, `Paused`, `Not started`).
    #[serde(default)]
    pub vmm_state: Option<String>,
    /// Round trip to the VMM's API, milliseconds.
    #[serde(default)]
    pub latency_ms: Option<f64>,
    pub detail: String,
}
