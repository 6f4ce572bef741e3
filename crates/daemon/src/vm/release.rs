//! Ending a VM's VMM process and releasing what a running VM holds. Shared
//! by stop, kill, delete, failed starts and creates, and the reaper.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use banger_core::timefmt;
use banger_proto::methods::vm::{ExitRecord, VmState};
use rustix::process::Signal;

use super::access;
use super::record::{self, Vm};
use crate::staging::{blocking, remove_dir};
use crate::vm::Vms;

/// How long to wait for a VMM to die after SIGKILL (it is reaped by then).
const KILL_WAIT: Duration = Duration::from_secs(10);

/// SIGKILLs the VM's VMM if it still runs, and waits for it to be gone.
pub async fn kill_process(d: &Arc<Vms>, vm: &Vm, why: &str) {
    if let Some(proc) = d.procs.get(vm.id()) {
        if proc.exited().is_none() {
            proc.expect_exit(why);
            if let Err(e) = proc.signal(Signal::Kill) {
                tracing::warn!(vm = %vm.name(), error = %e, "cannot signal VMM");
            }
            if proc.wait(KILL_WAIT).await.is_none() {
                tracing::error!(vm = %vm.name(), pid = proc.pid, "VMM still alive after SIGKILL");
            }
        }
        d.procs.forget(vm.id(), proc.pid);
    } else if let Some(h) = &vm.runtime.vmm {
        // Not tracked (e.g. adoption failed): kill by verified identity only.
        if let Some(fd) = crate::vmm::process::adopt(h.pid, h.start_time) {
            let _ = crate::vmm::process::signal(&fd, Signal::Kill);
        }
    }
}

/// Releases root-disk devices, the network and the control socket. Best
/// effort: every step runs; failures are logged and the first is returned.
pub async fn release_runtime(d: &Arc<Vms>, vm: &Vm) -> Result<(), Error> {
    let mut first: Option<Error> = None;
    if let Some(active) = vm.runtime.active_root.clone() {
        let host = d.disks.clone();
        let r = blocking(move || {
            crate::disk::deactivate(&active, host.as_ref())
                .map_err(|e| Error::internal(format!("releasing the root disk: {e}")))
        })
        .await;
        if let Err(e) = r {
            tracing::error!(vm = %vm.name(), error = %e, "release failed");
            first.get_or_insert(e);
        }
    }
    if let Err(e) = super::network::release(d, vm).await {
        tracing::error!(vm = %vm.name(), error = %e, "network release failed");
        first.get_or_insert(e);
    }
    remove_dir(&record::run_dir(&d.paths, vm.id()));
    match first {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Releases the runtime and moves the VM from `from` (a state this caller
/// owns) to stopped, recording how it ended.
pub async fn settle_stopped(
    d: &Arc<Vms>,
    id: &str,
    from: VmState,
    by: &str,
    detail: String,
) -> Result<Vm, Error> {
    let vm = access::load(d, id)?;
    let released = release_runtime(d, &vm).await;
    let vm = access::settle(d, id, from, VmState::Stopped, |vm| {
        vm.runtime.vmm = None;
        vm.runtime.net = None;
        vm.runtime.started_at = None;
        if released.is_ok() {
            vm.runtime.active_root = None;
        }
        vm.runtime.last_exit = Some(ExitRecord {
            at: timefmt::now(),
            by: by.to_string(),
            detail,
        });
    })?;
    released.map(|()| vm)
}

/// Removes everything a VM has: process, devices, files, record.
pub async fn teardown(d: &Arc<Vms>, id: &str) -> Result<(), Error> {
    let vm = access::load(d, id)?;
    kill_process(d, &vm, "delete").await;
    release_runtime(d, &vm).await?;
    // The disks are files of up to many GiB: unlinking them is slow work.
    let dir = record::vm_dir(&d.paths, id);
    blocking(move || {
        remove_dir(&dir);
        Ok(())
    })
    .await?;
    d.store.delete_vm(id).map_err(Error::from)?;
    tracing::info!(vm = %vm.name(), "vm removed");
    Ok(())
}
