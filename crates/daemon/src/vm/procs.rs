//! The live VMM processes, by VM id: each tracked by its pidfd, with a
//! watcher task that reaps it when it exits and tells the reaper.
//!
//! The map's mutex is a leaf: held only to insert, look up or remove.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::daemon::Daemon;
use crate::vmm::process::{self, ExitInfo};

#[derive(Default)]
pub struct Procs {
    map: Mutex<HashMap<String, Arc<Proc>>>,
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
    /// Starts tracking `pidfd` for `vm_id`; its exit is reaped and reported.
    pub fn track(&self, d: &Arc<Daemon>, vm_id: &str, pid: u32, pidfd: OwnedFd) -> Arc<Proc> {
        let (tx, rx) = watch::channel(None);
        let proc = Arc::new(Proc {
            pid,
            pidfd,
            exit: rx,
            expected: Mutex::new(None),
        });
        lock(&self.map).insert(vm_id.to_string(), proc.clone());
        let d = d.clone();
        let id = vm_id.to_string();
        let watched = proc.clone();
        tokio::spawn(async move {
            let info = process::wait_exit(&watched.pidfd).await;
            tracing::info!(vm = %id, pid = watched.pid, exit = %info, "VMM exited");
            let _ = tx.send(Some(info));
            let expected = lock(&watched.expected).clone();
            super::reaper::on_exit(d, id, info, expected).await;
        });
        proc
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
