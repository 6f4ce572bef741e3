//! `vm pause` and `vm resume`: the VMM freezes or thaws the guest's vCPUs
//! (Firecracker `PATCH /vm`, QEMU QMP `stop`/`cont`). Memory, devices, the
//! TAP and the published ports stay as they are, so a resumed guest carries
//! on from the instruction it was at.
//!
//! Each verb claims the VM (`running` → `pausing`, `paused` → `resuming`),
//! makes the one VMM call, and settles it (`paused`, `running`). A failed
//! call settles it back where it was. The transitional states are the lock
//! (as for start and stop): a `vm resume` racing a `vm pause` gets `busy`
//! instead of reaching the VMM before the pause did. A VMM that dies while
//! its VM is `pausing` or `resuming` is handed to the reaper once the state
//! is stable again.

use std::sync::Arc;

use banger_proto::methods::vm::VmState;

use super::access;
use super::record::Vm;
use super::stages::Stages;
use crate::error::Error;
use crate::vm::Vms;

/// `vm pause`: `running` → `paused`.
pub async fn pause(d: &Arc<Vms>, vm: Vm) -> Result<(Vm, Stages), Error> {
    let vm = access::claim(d, &vm, &[VmState::Running], VmState::Pausing, "pause")?;
    let stages = Stages::new(None);
    stages.stage("pause");
    let r = call(d, &vm, true).await;
    settle(
        d,
        &vm,
        VmState::Pausing,
        r,
        VmState::Paused,
        VmState::Running,
        stages,
    )
    .await
}

/// `vm resume`: `paused` → `running`.
pub async fn resume(d: &Arc<Vms>, vm: Vm) -> Result<(Vm, Stages), Error> {
    let vm = access::claim(d, &vm, &[VmState::Paused], VmState::Resuming, "resume")?;
    let stages = Stages::new(None);
    stages.stage("resume");
    let r = call(d, &vm, false).await;
    settle(
        d,
        &vm,
        VmState::Resuming,
        r,
        VmState::Running,
        VmState::Paused,
        stages,
    )
    .await
}

async fn call(d: &Vms, vm: &Vm, pause: bool) -> Result<(), Error> {
    let h = vm
        .runtime
        .vmm
        .as_ref()
        .ok_or_else(|| Error::internal(format!("vm {:?} has no VMM record", vm.name())))?;
    let vmm = d.vmms.get(&vm.spec.vmm)?;
    let r = if pause {
        vmm.pause(h).await
    } else {
        vmm.resume(h).await
    };
    r.map_err(Error::from)
}

/// Settles `from` as `ok` or, when the call failed, back as `failed`; then
/// hands the reaper an exit it ignored while the VM was transitional.
async fn settle(
    d: &Arc<Vms>,
    vm: &Vm,
    from: VmState,
    r: Result<(), Error>,
    ok: VmState,
    failed: VmState,
    stages: Stages,
) -> Result<(Vm, Stages), Error> {
    let to = if r.is_ok() { ok } else { failed };
    let settled = access::settle(d, vm.id(), from, to, |_| {});
    if let Some(proc) = d.procs.get(vm.id()) {
        d.procs.republish(vm.id(), &proc);
    }
    let settled = settled?;
    match r {
        Ok(()) => {
            tracing::info!(vm = %vm.name(), state = to.as_str(), "vm {}", to.as_str());
            Ok((settled, stages))
        }
        Err(e) => {
            tracing::warn!(vm = %vm.name(), error = %e, "{} failed", from.as_str());
            Err(e)
        }
    }
}
