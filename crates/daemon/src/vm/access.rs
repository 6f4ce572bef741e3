//! Finding a VM the caller may act on, and claiming it for an operation.
//!
//! VMs are private: their owner and root see them; nobody else learns they
//! exist. Claiming is the compare-and-set of [`banger_core::store::Store::transition_vm`]:
//! the transitional state written is the VM's lock, so conflicting requests
//! fail fast with `busy` (or `invalid_state`) instead of queueing behind slow work.

use crate::error::Error;
use banger_core::store::Transition;
use banger_proto::methods::vm::VmState;

use super::record::Vm;
use crate::caller::Caller;
use crate::vm::Vms;

pub fn find(d: &Vms, caller: &Caller, name: &str) -> Result<Vm, Error> {
    match d.store.vm_by_name(name)? {
        Some(row) if caller.can_change(row.owner_uid) => Vm::from_row(row),
        _ => Err(Error::not_found("vm", name).hint("see `banger vm list -a`")),
    }
}

pub fn load(d: &Vms, id: &str) -> Result<Vm, Error> {
    match d.store.vm_by_id(id)? {
        Some(row) => Vm::from_row(row),
        None => Err(Error::not_found("vm", id)),
    }
}

/// Moves the VM from one of `from` to `to`, or explains why it cannot.
/// `verb` names the operation in the error ("start", "stop", ...).
pub fn claim(d: &Vms, vm: &Vm, from: &[VmState], to: VmState, verb: &str) -> Result<Vm, Error> {
    let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
    match d.store.transition_vm(vm.id(), &from, to.as_str(), |_| {})? {
        Transition::Done(row) => Vm::from_row(row),
        Transition::WrongState(row) => {
            let current = VmState::parse(&row.state).unwrap_or(VmState::Stopped);
            Err(state_error(&row.name, current, verb))
        }
        Transition::Missing => Err(Error::not_found("vm", vm.name())),
    }
}

/// Moves a VM this operation owns to its next state (no conflict possible).
pub fn settle(
    d: &Vms,
    id: &str,
    from: VmState,
    to: VmState,
    f: impl FnOnce(&mut Vm),
) -> Result<Vm, Error> {
    let mut err = None;
    let t = d
        .store
        .transition_vm(
            id,
            &[from.as_str()],
            to.as_str(),
            |row| match Vm::from_row(row.clone()) {
                Ok(mut vm) => {
                    f(&mut vm);
                    row.spec = super::record::encode(&vm.spec);
                    row.runtime = super::record::encode(&vm.runtime);
                }
                Err(e) => err = Some(e),
            },
        )?;
    if let Some(e) = err {
        return Err(e);
    }
    match t {
        Transition::Done(row) => Vm::from_row(row),
        Transition::WrongState(row) => Err(Error::internal(format!(
            "vm {:?} was {} when this operation expected {}",
            row.name,
            row.state,
            from.as_str()
        ))),
        Transition::Missing => Err(Error::not_found("vm", id)),
    }
}

/// Updates the runtime/spec documents without changing the state.
pub fn update(d: &Vms, id: &str, f: impl FnOnce(&mut Vm)) -> Result<Vm, Error> {
    let mut err = None;
    let row = d
        .store
        .update_vm(id, |row| match Vm::from_row(row.clone()) {
            Ok(mut vm) => {
                f(&mut vm);
                row.spec = super::record::encode(&vm.spec);
                row.runtime = super::record::encode(&vm.runtime);
            }
            Err(e) => err = Some(e),
        })?;
    if let Some(e) = err {
        return Err(e);
    }
    row.map(Vm::from_row)
        .unwrap_or_else(|| Err(Error::not_found("vm", id)))
}

pub fn state_error(name: &str, current: VmState, verb: &str) -> Error {
    if current.is_transitional() {
        Error::Busy {
            message: format!(
                "vm {name:?} is {}; try again when that has finished",
                current.as_str()
            ),
            state: Some(current.as_str().into()),
        }
    } else {
        let why = match (verb, current) {
            ("start", VmState::Running) => "it is already running",
            ("start", VmState::Paused) => "it is paused, not stopped",
            ("stop" | "restart" | "kill" | "pause", VmState::Stopped) => "it is not running",
            ("pause", VmState::Paused) => "it is already paused",
            ("resume", VmState::Running) => "it is not paused (it is running)",
            ("resume", VmState::Stopped) => "it is not paused (it is stopped)",
            ("delete", VmState::Running | VmState::Paused) => "stop it first, or use --force",
            ("set", VmState::Running | VmState::Paused) => {
                "stop it first: settings change only while stopped"
            }
            (_, VmState::Paused) => "it is paused",
            _ => "not in this state",
        };
        let hint = match (verb, current) {
            ("resume", VmState::Stopped) => Some(format!("start it: banger vm start {name}")),
            ("delete" | "set", _) => None,
            (_, VmState::Paused) => Some(format!("resume it: banger vm resume {name}")),
            _ => None,
        };
        Error::InvalidState {
            message: format!("cannot {verb} vm {name:?}: {why}"),
            state: Some(current.as_str().into()),
            hint,
        }
    }
}
