//! `daemon.*`: the daemon itself.

use serde::{Deserialize, Serialize};

use super::op::OperationInfo;
use super::{method, Empty};

method!(
    /// Version, protocol, pid, uptime and paths.
    Status = "daemon.status", Empty => StatusInfo
);
method!(
    /// Stops the daemon cleanly (root or the daemon's own user only). Running VMs keep running.
    Shutdown = "daemon.shutdown", Empty => Empty
);
method!(
    /// A chunk of the daemon's log file.
    Logs = "daemon.logs", LogsParams => LogChunk
);
method!(
    /// Asynchronous operations, newest first.
    OperationsList = "daemon.operations.list", OperationsListParams => Vec<OperationInfo>
);
method!(
    /// Host checks as the daemon sees them.
    Doctor = "daemon.doctor", Empty => DoctorReport
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusInfo {
    pub version: String,
    pub protocol: u32,
    pub pid: u32,
    pub uid: u32,
    pub started_at: String,
    pub uptime_secs: u64,
    pub paths: PathsInfo,
    /// `file` or `journald`.
    pub log_target: String,
    pub operations_running: u32,
    /// Where the `<name>.vm` DNS server answers.
    #[serde(default)]
    pub dns: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathsInfo {
    pub config: String,
    pub state: String,
    pub cache: String,
    pub runtime: String,
    pub socket: String,
    pub log: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsParams {
    /// Byte offset to read from; `None` means "the last `tail_bytes`".
    #[serde(default)]
    pub offset: Option<u64>,
    #[serde(default)]
    pub tail_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogChunk {
    pub path: String,
    /// Set when the daemon logs to journald; then `data` is empty and the CLI
    /// reads the journal itself.
    pub journald: bool,
    pub offset: u64,
    pub next_offset: u64,
    pub data: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OperationsListParams {
    /// Include finished operations (default: only running ones and the last hour's).
    #[serde(default)]
    pub all: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Ok,
    Warn,
    Fail,
    Skip,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub status: CheckStatus,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DoctorReport {
    /// `daemon` when the daemon ran the checks, `local` when the CLI did.
    pub source: String,
    pub checks: Vec<Check>,
}

impl DoctorReport {
    pub fn failed(&self) -> bool {
        self.checks.iter().any(|c| c.status == CheckStatus::Fail)
    }
}
