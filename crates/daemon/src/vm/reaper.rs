//! The stale reaper: notices VMMs that died on their own, and at daemon
//! start reconciles the store with reality — re-adopting VMMs that still run
//! (a daemon restart never kills VMs), settling those that died meanwhile,
//! finishing or undoing operations a crash interrupted, and ending orphan
//! VMM processes and files no record owns.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use banger_core::store::Transition;
use banger_proto::methods::vm::VmState;
use rustix::process::Signal;

use super::procs::Exited;
use super::record::{self, Vm};
use super::{access, release};
use crate::staging::remove_dir;
use crate::vm::Vms;
use crate::vmm::process::{self, ExitInfo};

/// The reaper: settles VMs whose VMM exited, one exit at a time, for as long
/// as the daemon runs. Exits come from [`super::procs::Procs`]' watchers.
pub async fn run(d: Arc<Vms>, mut exits: tokio::sync::mpsc::UnboundedReceiver<Exited>) {
    while let Some(e) = exits.recv().await {
        on_exit(&d, e.vm_id, e.info, e.expected).await;
    }
}

/// Only a `running` or `paused` VM is settled here; a VM in a transitional
/// state belongs to the operation that put it there, which sees the exit
/// itself (or republishes it once it has settled).
pub async fn on_exit(d: &Arc<Vms>, id: String, info: ExitInfo, expected: Option<String>) {
    let claimed = d
        .store
        .transition_vm(&id, &["running", "paused"], "stopping", |_| {});
    let Ok(Transition::Done(row)) = claimed else {
        return;
    };
    let by = expected.unwrap_or_else(|| "crashed".into());
    tracing::warn!(vm = %row.name, by = %by, exit = %info, "VMM exited; releasing its resources");
    if let Some(p) = d.procs.get(&id) {
        d.procs.forget(&id, p.pid);
    }
    if let Err(e) = release::settle_stopped(d, &id, VmState::Stopping, &by, info.to_string()).await
    {
        tracing::error!(vm = %row.name, error = %e, "settling an exited VM failed");
    }
}

/// Forces a state during start-up reconciliation (no operation runs yet).
fn force_state(d: &Vms, id: &str, state: VmState) {
    if let Err(e) = d
        .store
        .update_vm(id, |r| r.state = state.as_str().to_string())
    {
        tracing::error!(vm = id, error = %e, "cannot record state");
    }
}

pub async fn reconcile_at_start(d: &Arc<Vms>) -> anyhow::Result<()> {
    let mut known = HashSet::new();
    let mut tracked_pids = HashSet::new();
    for row in d.store.list_vms()? {
        let vm = match Vm::from_row(row) {
            Ok(vm) => vm,
            Err(e) => {
                tracing::error!(error = %e, "skipping unreadable VM record");
                continue;
            }
        };
        known.insert(vm.id().to_string());
        match vm.state {
            VmState::Creating | VmState::Deleting => {
                tracing::warn!(vm = %vm.name(), state = vm.state.as_str(), "finishing an interrupted create/delete by removing the VM");
                known.remove(vm.id());
                if let Err(e) = release::teardown(d, vm.id()).await {
                    tracing::error!(vm = %vm.name(), error = %e, "cleanup failed");
                }
            }
            VmState::Updating => force_state(d, vm.id(), VmState::Stopped),
            VmState::Stopped => {
                if vm.runtime.active_root.is_some() || vm.runtime.vmm.is_some() {
                    force_state(d, vm.id(), VmState::Stopping);
                    let _ = release::settle_stopped(
                        d,
                        vm.id(),
                        VmState::Stopping,
                        "stopped",
                        "released leftovers at daemon start".into(),
                    )
                    .await;
                }
            }
            VmState::Starting
            | VmState::Running
            | VmState::Stopping
            | VmState::Pausing
            | VmState::Paused
            | VmState::Resuming => {
                if let Some(pid) = adopt_or_settle(d, &vm).await {
                    tracked_pids.insert(pid);
                }
            }
        }
    }
    end_orphan_processes(&d.paths.runtime_dir, &tracked_pids);
    remove_orphan_dirs(&d.paths.vms_dir(), &known);
    remove_orphan_dirs(&d.paths.runtime_dir.join("vms"), &known);
    Ok(())
}

/// Returns the pid if the VM's VMM was adopted.
async fn adopt_or_settle(d: &Arc<Vms>, vm: &Vm) -> Option<u32> {
    let found = vm
        .runtime
        .vmm
        .clone()
        .and_then(|h| process::adopt(h.pid, h.start_time).map(|fd| (h, fd)));
    let Some((h, fd)) = found else {
        tracing::warn!(vm = %vm.name(), "VMM is gone; settling the VM as stopped");
        force_state(d, vm.id(), VmState::Stopping);
        let _ = release::settle_stopped(
            d,
            vm.id(),
            VmState::Stopping,
            "exited-while-daemon-down",
            "the VMM was not running when the daemon started".into(),
        )
        .await;
        return None;
    };
    let status = match d.vmms.get(&vm.spec.vmm) {
        Ok(vmm) => vmm.status(&h).await.ok(),
        Err(_) => None,
    };
    // The VMM's own word decides `running` or `paused`: a pause or resume
    // the daemon died in the middle of (`pausing`/`resuming`) either
    // reached the VMM or did not, and only the VMM knows which.
    let now = match status.as_deref() {
        Some("Running") => Some(VmState::Running),
        Some("Paused") => Some(VmState::Paused),
        _ => None,
    };
    let proc = d.procs.track(vm.id(), h.pid, fd);
    if let Some(now) = now.filter(|_| vm.state != VmState::Stopping) {
        let _ = access::update(d, vm.id(), |v| {
            if v.runtime.started_at.is_none() {
                v.runtime.started_at = Some(banger_core::timefmt::now());
            }
        });
        let recorded = match vm.state {
            VmState::Paused | VmState::Pausing => VmState::Paused,
            _ => VmState::Running,
        };
        if now != recorded {
            tracing::warn!(vm = %vm.name(), recorded = vm.state.as_str(), vmm = now.as_str(), "the store and the VMM disagree on the run state; trusting the VMM");
        }
        force_state(d, vm.id(), now);
        tracing::info!(vm = %vm.name(), pid = h.pid, state = now.as_str(), "re-adopted VM");
        if let Some(info) = proc.exited() {
            on_exit(d, vm.id().to_string(), info, None).await;
        }
        return Some(h.pid);
    }
    // It was being stopped, or never finished booting: finish the job.
    tracing::warn!(vm = %vm.name(), state = vm.state.as_str(), vmm_state = ?status, "ending a VMM left mid-operation");
    force_state(d, vm.id(), VmState::Stopping);
    proc.expect_exit("daemon-restart");
    let _ = proc.signal(Signal::Kill);
    proc.wait(Duration::from_secs(10)).await;
    d.procs.forget(vm.id(), h.pid);
    let _ = release::settle_stopped(
        d,
        vm.id(),
        VmState::Stopping,
        "daemon-restart",
        format!(
            "the daemon restarted while the VM was {}",
            vm.state.as_str()
        ),
    )
    .await;
    None
}

/// Kills VMM processes whose control socket lives under our runtime dir but
/// that no VM record owns (e.g. a create cut off between spawn and record).
fn end_orphan_processes(runtime_dir: &Path, tracked: &HashSet<u32>) {
    let marker = runtime_dir.join("vms");
    let marker = marker.to_string_lossy();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if tracked.contains(&pid) || pid == std::process::id() {
            continue;
        }
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_vmm = args
            .first()
            .is_some_and(|a| a.ends_with("firecracker") || a.contains("qemu-system"));
        if is_vmm && args.iter().any(|a| a.contains(marker.as_ref())) {
            tracing::warn!(pid, "killing an orphan VMM no VM record owns");
            if let Ok(start) = process::proc_start_time(pid) {
                if let Some(fd) = process::adopt(pid, start) {
                    let _ = process::signal(&fd, Signal::Kill);
                }
            }
        }
    }
}

fn remove_orphan_dirs(dir: &Path, known: &HashSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !known.contains(&name) {
            tracing::warn!(path = %e.path().display(), "removing VM files no record owns");
            remove_dir(&e.path());
        }
    }
}

/// The console and VMM logs of running VMs are cut back when they pass the
/// configured size: the current content moves to `<log>.1`, the file is
/// emptied. The VMM writes with O_APPEND, so it carries on at the new end.
pub async fn cap_logs_forever(d: Arc<Vms>) {
    let mut tick = tokio::time::interval(Duration::from_secs(15));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = d.shutdown.cancelled() => return,
        }
        let Ok(rows) = d.store.list_vms() else {
            continue;
        };
        // Copying a log of many MiB is slow work: off the runtime.
        let d2 = d.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for row in rows {
                let dir = record::vm_dir(&d2.paths, &row.id);
                for name in [record::CONSOLE_LOG, record::VMM_LOG] {
                    cap_log(&dir.join(name), d2.config.vm.log_max_bytes);
                }
            }
        })
        .await;
    }
}

pub fn cap_log(path: &Path, max: u64) {
    let Ok(md) = std::fs::metadata(path) else {
        return;
    };
    if md.len() <= max {
        return;
    }
    let mut old = path.as_os_str().to_owned();
    old.push(".1");
    if let Err(e) = std::fs::copy(path, &old).and_then(|_| {
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)?
            .set_len(0)
    }) {
        tracing::warn!(path = %path.display(), error = %e, "cannot cap log");
    }
}
