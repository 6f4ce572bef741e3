//! Finding a VM the caller may act on, and claiming it for an operation.
//!
//! VMs are private: their owner and root see them; nobody else learns they
//! exist. Claiming is the compare-and-set of [`banger_core::store::Store::transition_vm`]:
//! the transitional state written is the VM's lock, so conflicting requests
//! fail fast with `busy` (or `invalid_state`) instead of queueing behind slow work.

use banger_core::store::Transition;
use banger_proto::methods::vm::VmState;
use banger_proto::{ErrorKind, RpcError};

use super::record::Vm;
use crate::caller::Caller;
use crate::daemon::Daemon;
use crate::errors::Rpc;

pub fn find(d: &Daemon, caller: &Caller, name: &str) -> Result<Vm, RpcError> {
    match d.store.vm_by_name(name).rpc()? {
        Some(row) if caller.can_change(row.owner_uid) => Vm::from_row(row),
        _ => Err(RpcError::not_found("vm", name).with("hint", "see `banger vm list -a`")),
    }
}

pub fn load(d: &Daemon, id: &str) -> Result<Vm, RpcError> {
    match d.store.vm_by_id(id).rpc()? {
        Some(row) => Vm::from_row(row),
        None => Err(RpcError::not_found("vm", id)),
    }
}

/// Moves the VM from one of `from` to `to`, or explains why it cannot.
/// `verb` names the operation in the error ("start", "stop", ...).
pub fn claim(
    d: &Daemon,
    vm: &Vm,
    from: &[VmState],
    to: VmState,
    verb: &str,
) -> Result<Vm, RpcError> {
    let from: Vec<&str> = from.iter().map(|s| s.as_str()).collect();
    match d
        .store
        .transition_vm(vm.id(), &from, to.as_str(), |_| {})
        .rpc()?
    {
        Transition::Done(row) => Vm::from_row(row),
        Transition::WrongState(row) => {
            let current = VmState::parse(&row.state).unwrap_or(VmState::Stopped);
            Err(state_error(&row.name, current, verb))
        }
        Transition::Missing => Err(RpcError::not_found("vm", vm.name())),
    }
}

/// Moves a VM this operation owns to its next state (no conflict possible).
pub fn settle(
    d: &Daemon,
    id: &str,
    from: VmState,
    to: VmState,
    f: impl FnOnce(&mut Vm),
) -> Result<Vm, RpcError> {
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
        )
        .rpc()?;
    if let Some(e) = err {
        return Err(e);
    }
    match t {
        Transition::Done(row) => Vm::from_row(row),
        Transition::WrongState(row) => Err(RpcError::internal(format!(
            "vm {:?} was {} when this operation expected {}",
            row.name,
            row.state,
            from.as_str()
        ))),
        Transition::Missing => Err(RpcError::not_found("vm", id)),
    }
}

/// Updates the runtime/spec documents without changing the state.
pub fn update(d: &Daemon, id: &str, f: impl FnOnce(&mut Vm)) -> Result<Vm, RpcError> {
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
        })
        .rpc()?;
    if let Some(e) = err {
        return Err(e);
    }
    row.map(Vm::from_row)
        .unwrap_or_else(|| Err(RpcError::not_found("vm", id)))
}

pub fn state_error(name: &str, current: VmState, verb: &str) -> RpcError {
    if current.is_transitional() {
        RpcError::new(
            ErrorKind::Busy,
            format!(
                "vm {name:?} is {}; try again when that has finished",
                current.as_str()
            ),
        )
        .with("state", current.as_str())
    } else {
        let hint = match (verb, current) {
            ("start", VmState::Running) => "it is already running",
            ("stop" | "restart" | "kill", VmState::Stopped) => "it is not running",
            ("delete", VmState::Running) => "stop it first, or use --force",
            ("set", VmState::Running) => "stop it first: settings change only while stopped",
            _ => "not in this state",
        };
        RpcError::new(
            ErrorKind::InvalidState,
            format!("cannot {verb} vm {name:?}: {hint}"),
        )
        .with("state", current.as_str())
    }
}
