//! `op.*`: asynchronous operations, and [`Operation`]: which `*.begin`
//! method starts which kind of operation and what its result is.

use serde::de::DeserializeOwned;
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

/// An operation kind, typed by its output: the daemon's body must return an
/// `Output` (it is checked at compile time there) and a client decodes
/// `OperationInfo::result` as one with [`OperationInfo::output`].
pub trait Operation {
    /// `OperationInfo::kind`.
    const KIND: &'static str;
    type Output: Serialize + DeserializeOwned + Send + 'static;
}

macro_rules! operation {
    ($(#[$doc:meta])* $name:ident = $kind:literal => $out:ty) => {
        $(#[$doc])*
        pub struct $name;
        impl Operation for $name {
            const KIND: &'static str = $kind;
            type Output = $out;
        }
    };
}

operation!(
    /// Started by `kernel.import.begin`.
    KernelImport = "kernel.import" => super::kernel::KernelInfo
);
operation!(
    /// Started by `kernel.build.begin`.
    KernelBuild = "kernel.build" => super::kernel::BuildResult
);
operation!(
    /// Started by `image.register.begin`.
    ImageRegister = "image.register" => super::image::ImageInfo
);
operation!(
    /// Started by `image.build.begin`.
    ImageBuild = "image.build" => super::image::BuildResult
);
operation!(
    /// Started by `image.pull.begin`.
    ImagePull = "image.pull" => super::image::PullResult
);
operation!(
    /// Started by `image.bundle.begin`.
    ImageBundle = "image.bundle" => super::image::BundleResult
);
operation!(
    /// Started by `kernel.bundle.begin`.
    KernelBundle = "kernel.bundle" => super::image::BundleResult
);
operation!(
    /// Started by `vm.create.begin`.
    VmCreate = "vm.create" => super::vm::VmInfo
);

/// Why [`OperationInfo::output`] has no output.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("operation {id} is a {actual}, not a {expected}")]
    WrongKind {
        id: String,
        actual: String,
        expected: &'static str,
    },
    #[error("operation {0} is still running")]
    Running(String),
    #[error(transparent)]
    Failed(RpcError),
    #[error("operation {id} ended {state} without a result")]
    NoResult { id: String, state: &'static str },
    #[error("operation {id}: unreadable result: {source}")]
    Decode {
        id: String,
        #[source]
        source: serde_json::Error,
    },
}

impl OperationInfo {
    /// The finished operation's typed result, or why there is none (its
    /// error when it failed or was cancelled).
    pub fn output<O: Operation>(&self) -> Result<O::Output, OutputError> {
        if self.kind != O::KIND {
            return Err(OutputError::WrongKind {
                id: self.id.clone(),
                actual: self.kind.clone(),
                expected: O::KIND,
            });
        }
        if !self.state.is_finished() {
            return Err(OutputError::Running(self.id.clone()));
        }
        if let Some(e) = &self.error {
            return Err(OutputError::Failed(e.clone()));
        }
        let Some(v) = &self.result else {
            return Err(OutputError::NoResult {
                id: self.id.clone(),
                state: self.state.as_str(),
            });
        };
        O::Output::deserialize(v).map_err(|source| OutputError::Decode {
            id: self.id.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod operation_tests {
    use super::*;

    fn info(
        kind: &str,
        state: OpState,
        result: Option<Value>,
        error: Option<RpcError>,
    ) -> OperationInfo {
        OperationInfo {
            id: "op1".into(),
            kind: kind.into(),
            target: "t".into(),
            owner_uid: 0,
            state,
            stage: "done".into(),
            progress: None,
            stages: vec![],
            result,
            error,
            created_at: "now".into(),
            finished_at: None,
            revision: 2,
        }
    }

    #[test]
    fn output_is_typed_by_kind_and_state() {
        let k = serde_json::json!({"name": "k"});
        let i = info("vm.create", OpState::Succeeded, Some(k.clone()), None);
        assert!(matches!(
            i.output::<KernelImport>(),
            Err(OutputError::WrongKind { .. })
        ));
        let i = info("kernel.import", OpState::Running, None, None);
        assert!(matches!(
            i.output::<KernelImport>(),
            Err(OutputError::Running(_))
        ));
        let e = RpcError::internal("boom");
        let i = info("kernel.import", OpState::Failed, None, Some(e.clone()));
        assert!(matches!(i.output::<KernelImport>(), Err(OutputError::Failed(x)) if x == e));
        let i = info("kernel.import", OpState::Succeeded, Some(k), None);
        assert!(matches!(
            i.output::<KernelImport>(),
            Err(OutputError::Decode { .. })
        ));
    }
}
