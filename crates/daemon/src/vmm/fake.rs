//! A fake [`Vmm`] for unit tests of the lifecycle: its "VMM" is a real
//! `sleep` process (so pidfds, exits, signals and the reaper are the real
//! ones), its API calls are recorded, and any of spawn/configure/boot/
//! pause/resume can be made to fail.

use std::os::fd::OwnedFd;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use rustix::process::Signal;
use tokio::net::UnixStream;

use super::backend::{LaunchSpec, Vmm, VmmError, VmmHandle};
use super::process;

pub const KIND: &str = "fake";

#[derive(Default)]
pub struct FakeVmm {
    /// The step (`spawn`, `configure`, `boot`) that fails, if any.
    pub fail: Mutex<Option<&'static str>>,
    pub calls: Mutex<Vec<String>>,
    /// Pids of the "VMMs" paused now (pause/resume/status act on it, so a
    /// re-adoption reads back what the lifecycle did).
    pub paused: Mutex<std::collections::HashSet<u32>>,
    /// Every spec `spawn` was given.
    pub specs: Mutex<Vec<LaunchSpec>>,
}

impl FakeVmm {
    pub fn fail_at(&self, step: Option<&'static str>) {
        *self.fail.lock().unwrap() = step;
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn step(&self, name: &str) -> Result<(), VmmError> {
        self.calls.lock().unwrap().push(name.to_string());
        if *self.fail.lock().unwrap() == Some(name) {
            return Err(VmmError::Api(format!("injected failure at {name}")));
        }
        Ok(())
    }
}

#[async_trait]
impl Vmm for FakeVmm {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn preflight(&self) -> Result<(), VmmError> {
        Ok(())
    }

    async fn spawn(&self, spec: &LaunchSpec) -> Result<(VmmHandle, OwnedFd), VmmError> {
        self.step("spawn")?;
        self.specs.lock().unwrap().push(spec.clone());
        let mut cmd = Command::new("sleep");
        cmd.arg("600");
        let s = process::spawn(cmd).map_err(|e| VmmError::Launch(format!("sleep: {e}")))?;
        let handle = VmmHandle {
            kind: KIND.into(),
            pid: s.pid,
            start_time: s.start_time,
            api_socket: spec.run_dir.join("fake.sock"),
            metrics: None,
            agent_socket: None,
            accel: None,
        };
        Ok((handle, s.pidfd))
    }

    async fn configure(&self, _h: &VmmHandle, _spec: &LaunchSpec) -> Result<(), VmmError> {
        self.step("configure")
    }

    async fn boot(&self, _h: &VmmHandle) -> Result<(), VmmError> {
        self.step("boot")
    }

    /// The "guest" shuts down at once: the process gets SIGTERM.
    async fn request_shutdown(&self, h: &VmmHandle) -> Result<(), VmmError> {
        self.step("request_shutdown")?;
        let fd = process::adopt(h.pid, h.start_time)
            .ok_or_else(|| VmmError::Api("the fake VMM is gone".into()))?;
        process::signal(&fd, Signal::Term).map_err(|e| VmmError::Api(e.to_string()))
    }

    async fn agent_connect(
        &self,
        _h: &VmmHandle,
        _timeout: Duration,
    ) -> Result<UnixStream, VmmError> {
        Err(VmmError::AgentChannel("the fake VMM has no agent".into()))
    }

    async fn pause(&self, h: &VmmHandle) -> Result<(), VmmError> {
        self.step("pause")?;
        self.paused.lock().unwrap().insert(h.pid);
        Ok(())
    }

    async fn resume(&self, h: &VmmHandle) -> Result<(), VmmError> {
        self.step("resume")?;
        self.paused.lock().unwrap().remove(&h.pid);
        Ok(())
    }

    async fn status(&self, h: &VmmHandle) -> Result<String, VmmError> {
        Ok(if self.paused.lock().unwrap().contains(&h.pid) {
            "Paused"
        } else {
            "Running"
        }
        .into())
    }

    async fn metrics(&self, _h: &VmmHandle) -> Result<Option<serde_json::Value>, VmmError> {
        Ok(None)
    }

    async fn effective_config(&self, _h: &VmmHandle) -> Result<serde_json::Value, VmmError> {
        Ok(serde_json::json!({}))
    }
}
