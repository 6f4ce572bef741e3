//! `vm stop`, `vm kill`, `vm restart`.
//!
//! stop: ask the guest to power off (its agent, else Ctrl-Alt-Del where the
//! VMM can deliver it), wait `timeout`, then SIGTERM, wait, then SIGKILL;
//! the result says which one ended the VMM. A paused VM is resumed first
//! (as `docker stop` does with a paused container): a frozen guest could
//! not shut down cleanly.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use banger_proto::methods::vm::VmState;
use rustix::process::Signal;
use tokio_util::sync::CancellationToken;

use super::access;
use super::record::Vm;
use super::release;
use super::stages::Stages;
use super::start;
use crate::guest::agent;
use crate::vm::Vms;

const TERM_WAIT: Duration = Duration::from_secs(5);
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Ends the VMM politely, then less so. Returns what ended it.
///
/// The polite step: the guest agent's `poweroff` when the image has an
/// agent (a clean systemd shutdown, under either VMM), else the VMM's own
/// request (Firecracker: Ctrl-Alt-Del). If neither can reach the guest —
/// QEMU's microvm has no ACPI, so its power button goes nowhere — there is
/// nothing to wait for and the stop goes straight to SIGTERM.
async fn shut_down(d: &Arc<Vms>, vm: &Vm, timeout: Duration, stages: &Stages) -> String {
    let Some(proc) = d.procs.get(vm.id()) else {
        return "already-exited".into();
    };
    if proc.exited().is_some() {
        return "already-exited".into();
    }
    let vmm = d.vmms.get(&vm.spec.vmm).ok();
    if let (Some(h), Some(vmm)) = (&vm.runtime.vmm, &vmm) {
        // The VMM's word, not the store's: the VM was claimed from
        // `running` or `paused`, and only the VMM knows which it is now.
        if vmm.status(h).await.ok().as_deref() == Some("Paused") {
            stages.stage("resume");
            if let Err(e) = vmm.resume(h).await {
                tracing::info!(vm = %vm.name(), error = %e, "resume before stop failed; escalating");
            }
        }
    }
    let mut asked = false;
    if agent::vm_has_agent(&d.store, vm) {
        stages.stage("agent-poweroff");
        let answer = match agent::connect(&d.vmms, vm).await {
            Ok(mut c) => c.poweroff().await.map(drop),
            Err(e) => Err(e),
        };
        match answer {
            Ok(()) => asked = true,
            Err(e) => {
                tracing::info!(vm = %vm.name(), error = %e, "agent poweroff failed; trying the VMM")
            }
        }
    }
    if !asked {
        if let (Some(h), Some(vmm)) = (&vm.runtime.vmm, &vmm) {
            if vmm.shutdown_reaches_guest() {
                stages.stage("ctrl-alt-del");
                match vmm.request_shutdown(h).await {
                    Ok(()) => asked = true,
                    Err(e) => {
                        tracing::info!(vm = %vm.name(), error = %e, "shutdown request failed; escalating")
                    }
                }
            }
        }
    }
    if asked && proc.wait(timeout).await.is_some() {
        return "guest".into();
    }
    stages.stage("sigterm");
    proc.expect_exit("sigterm");
    let _ = proc.signal(Signal::Term);
    if proc.wait(TERM_WAIT).await.is_some() {
        return "sigterm".into();
    }
    stages.stage("sigkill");
    proc.expect_exit("sigkill");
    let _ = proc.signal(Signal::Kill);
    if proc.wait(KILL_WAIT).await.is_none() {
        tracing::error!(vm = %vm.name(), pid = proc.pid, "VMM survived SIGKILL");
    }
    "sigkill".into()
}

fn stop_timeout(d: &Vms, secs: Option<u64>) -> Duration {
    Duration::from_secs(secs.unwrap_or(d.config.vm.stop_timeout_secs))
}

/// `vm stop`.
pub async fn stop(
    d: &Arc<Vms>,
    vm: Vm,
    timeout: Option<u64>,
) -> Result<(Vm, String, Stages), Error> {
    let vm = access::claim(
        d,
        &vm,
        &[VmState::Running, VmState::Paused],
        VmState::Stopping,
        "stop",
    )?;
    let stages = Stages::new(None);
    let by = shut_down(d, &vm, stop_timeout(d, timeout), &stages).await;
    stages.stage("release");
    let vm = release::settle_stopped(
        d,
        vm.id(),
        VmState::Stopping,
        &by,
        format!("stopped by {by}"),
    )
    .await?;
    Ok((vm, by, stages))
}

/// `vm restart`: stop, then start without passing through `stopped`, so no
/// other request can slip in between.
pub async fn restart(
    d: &Arc<Vms>,
    vm: Vm,
    timeout: Option<u64>,
) -> Result<(Vm, String, Stages), Error> {
    let vm = access::claim(
        d,
        &vm,
        &[VmState::Running, VmState::Paused],
        VmState::Stopping,
        "restart",
    )?;
    let stages = Stages::new(None);
    let by = shut_down(d, &vm, stop_timeout(d, timeout), &stages).await;
    stages.stage("release");
    release::kill_process(d, &vm, "restart").await;
    release::release_runtime(d, &access::load(d, vm.id())?).await?;
    let vm = access::settle(d, vm.id(), VmState::Stopping, VmState::Starting, |vm| {
        vm.runtime.vmm = None;
        vm.runtime.active_root = None;
        vm.runtime.net = None;
        vm.runtime.started_at = None;
    })?;
    match start::boot(d, &vm, &stages, &CancellationToken::new()).await {
        Ok(_) => {
            start::mark_running(d, vm.id(), &stages)?;
            start::wait_ready(d, vm.id(), &stages).await?;
            Ok((access::load(d, vm.id())?, by, stages))
        }
        Err(e) => {
            let e = start::explain(d, vm.id(), e);
            start::abort(d, vm.id(), &e).await;
            Err(e)
        }
    }
}

/// Parses `KILL`, `SIGKILL`, `kill`, `9`.
pub fn parse_signal(s: &str) -> Result<Signal, Error> {
    let up = s.trim().to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    let sig = match name {
        "KILL" | "9" => Signal::Kill,
        "TERM" | "15" => Signal::Term,
        "INT" | "2" => Signal::Int,
        "QUIT" | "3" => Signal::Quit,
        "HUP" | "1" => Signal::Hup,
        "USR1" | "10" => Signal::Usr1,
        "USR2" | "12" => Signal::Usr2,
        "STOP" | "19" => Signal::Stop,
        "CONT" | "18" => Signal::Cont,
        _ => {
            return Err(Error::invalid(format!(
                "unknown signal {s:?}: use a name like KILL, TERM, INT, HUP, USR1 or a number"
            )))
        }
    };
    Ok(sig)
}

fn is_fatal(sig: Signal) -> bool {
    matches!(
        sig,
        Signal::Kill | Signal::Term | Signal::Int | Signal::Quit | Signal::Hup
    )
}

/// `vm kill`: the signal, now. Allowed while paused, starting, stopping,
/// pausing or resuming too — that is what kill is for when a stop hangs. The
/// operation (or the reaper, for a running or paused VM) settles the state
/// when the VMM dies. (A paused VMM process is not frozen: only its vCPUs
/// are, so it takes signals as usual.)
pub async fn kill(d: &Arc<Vms>, vm: Vm, signal: Option<&str>) -> Result<(Vm, String), Error> {
    let sig = parse_signal(signal.unwrap_or("KILL"))?;
    if !(vm.state.is_booted() || matches!(vm.state, VmState::Starting | VmState::Stopping)) {
        return Err(access::state_error(vm.name(), vm.state, "kill"));
    }
    let proc = d
        .procs
        .get(vm.id())
        .ok_or_else(|| access::state_error(vm.name(), VmState::Stopped, "kill"))?;
    let label = format!("sig{}", format!("{sig:?}").to_ascii_lowercase());
    if is_fatal(sig) {
        proc.expect_exit(&format!("kill ({label})"));
    }
    proc.signal(sig)
        .map_err(|e| Error::internal(format!("cannot signal pid {}: {e}", proc.pid)))?;
    if is_fatal(sig) && proc.wait(KILL_WAIT).await.is_some() {
        // The reaper settles a running VM; wait for it so the caller sees `stopped`.
        for _ in 0..200 {
            let now = access::load(d, vm.id())?;
            if !matches!(now.state, VmState::Running | VmState::Paused) {
                return Ok((now, label));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok((access::load(d, vm.id())?, label))
}
