//! The live VMM processes, by VM id: each tracked by its pidfd, with a
//! watcher task that reaps it when it exits and publishes the exit on a
//! channel. One task ([`super::reaper::run`]) consumes the channel and settles
//! the VM; this module knows nothing of the lifecycle above it.
//!
//! The map's mutex is a leaf: held only to insert, look up or remove.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::vmm::process::{self, ExitInfo};

/// A VMM process ended.
#[derive(Debug, Clone)]
pub struct Exited {
    pub vm_id: String,
    pub pid: u32,
    pub info: ExitInfo,
    /// Why the daemon ended it, if it did (see [`Proc::expect_exit`]).
    pub expected: Option<String>,
}

pub struct Procs {
    map: Mutex<HashMap<String, Arc<Proc>>>,
    exits: mpsc::UnboundedSender<Exited>,
}

pub struct Proc {
    pub pid: u32,
    pidfd: OwnedFd,
    exit: watch::Receiver<Option<ExitInfo>>,
    /// Why the daemon is about to end this process (`kill`, `sigterm`, ...),
    /// so the reaper records an intended exit as such, not as a crash.
    expected: Mutex<Option<String>>,
}

impl Procs {
    /// The registry and the receiving end of its exits (for the reaper).
    pub fn new() -> (Procs, mpsc::UnboundedReceiver<Exited>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let procs = Procs {
            map: Mutex::new(HashMap::new()),
            exits: tx,
        };
        (procs, rx)
    }

    /// Starts tracking `pidfd` for `vm_id`; its exit is reaped and published.
    pub fn track(&self, vm_id: &str, pid: u32, pidfd: OwnedFd) -> Arc<Proc> {
        let (tx, rx) = watch::channel(None);
        let proc = Arc::new(Proc {
            pid,
            pidfd,
            exit: rx,
            expected: Mutex::new(None),
        });
        lock(&self.map).insert(vm_id.to_string(), proc.clone());
        let exits = self.exits.clone();
        let id = vm_id.to_string();
        let watched = proc.clone();
        tokio::spawn(async move {
            let info = process::wait_exit(&watched.pidfd).await;
            tracing::info!(vm = %id, pid = watched.pid, exit = %info, "VMM exited");
            let _ = tx.send(Some(info));
            let expected = lock(&watched.expected).clone();
            // Fails only when the reaper is gone, i.e. the daemon is exiting.
            let _ = exits.send(Exited {
                vm_id: id,
                pid: watched.pid,
                info,
                expected,
            });
        });
        proc
    }

    /// Publishes an exit that was seen before anyone listened for it (a
    /// start that raced its VMM's death).
    pub fn republish(&self, vm_id: &str, proc: &Proc) {
        if let Some(info) = proc.exited() {
            let _ = self.exits.send(Exited {
                vm_id: vm_id.to_string(),
                pid: proc.pid,
                info,
                expected: None,
            });
        }
    }

    pub fn get(&self, vm_id: &str) -> Option<Arc<Proc>> {
        lock(&self.map).get(vm_id).cloned()
    }

    /// Drops the entry if it still is `pid`'s (a new start may have replaced it).
    pub fn forget(&self, vm_id: &str, pid: u32) {
        let mut m = lock(&self.map);
        if m.get(vm_id).is_some_and(|p| p.pid == pid) {
            m.remove(vm_id);
        }
    }
}

impl Proc {
    /// The exit, if it happened.
    pub fn exited(&self) -> Option<ExitInfo> {
        *self.exit.borrow()
    }

    /// Waits up to `timeout` for the exit.
    pub async fn wait(&self, timeout: Duration) -> Option<ExitInfo> {
        let mut rx = self.exit.clone();
        let _ = tokio::time::timeout(timeout, rx.wait_for(Option::is_some)).await;
        self.exited()
    }

    /// Sends `sig` (through the pidfd: never hits a recycled pid).
    pub fn signal(&self, sig: rustix::process::Signal) -> std::io::Result<()> {
        process::signal(&self.pidfd, sig)
    }

    /// Why the daemon ended (or is ending) the process, if it did.
    pub fn expected_exit(&self) -> Option<String> {
        lock(&self.expected).clone()
    }

    /// Records why the daemon is about to end the process.
    pub fn expect_exit(&self, why: &str) {
        *lock(&self.expected) = Some(why.to_string());
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
