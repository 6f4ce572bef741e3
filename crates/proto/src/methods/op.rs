//! `op.*`: asynchronous operations (imports now, VM create next).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::method;
use crate::RpcError;

method!(
    /// The current state of one operation.
    Status = "op.status", OpIdParams => OperationInfo
);
method!(
    /// Waits (bounded) until the operation's revision passes `after_revision`.
    Wait = "op.wait", WaitParams => OperationInfo
);
method!(
    /// Asks a running operation to stop; it cleans up what it made.
    Cancel = "op.cancel", OpIdParams => OperationInfo
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpIdParams {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitParams {
    pub id: String,
    #[serde(default)]
    pub after_revision: u64,
    /// Capped by the daemon at 30 s.
    #[serde(default = "default_wait_ms")]
    pub timeout_ms: u64,
}

fn default_wait_ms() -> u64 {
    10_000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpState {
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl OpState {
    pub fn is_finished(self) -> bool {
        self != OpState::Running
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OpState::Running => "running",
            OpState::Succeeded => "succeeded",
            OpState::Failed => "failed",
            OpState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<OpState> {
        [
            OpState::Running,
            OpState::Succeeded,
            OpState::Failed,
            OpState::Cancelled,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
    /// What is counted, e.g. `bytes`.
    pub unit: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageInfo {
    pub name: String,
    pub started_at: String,
    /// Set once the stage ended.
    #[serde(default)]
    pub duration_ms: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OperationInfo {
    pub id: String,
    /// e.g. `kernel.import`, `image.register`, `vm.create`.
    pub kind: String,
    /// The name of the object being made.
    pub target: String,
    pub owner_uid: u32,
    pub state: OpState,
    /// The current (or last) stage.
    pub stage: String,
    #[serde(default)]
    pub progress: Option<Progress>,
    pub stages: Vec<StageInfo>,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub error: Option<RpcError>,
    pub created_at: String,
    #[serde(default)]
    pub finished_at: Option<String>,
    /// Grows on every change; `op.wait` returns when it passes the given one.
    pub revision: u64,
}
