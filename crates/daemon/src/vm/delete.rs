//! `vm delete` and `vm prune`.

use std::sync::Arc;

use crate::error::Error;
use banger_proto::methods::vm::VmState;

use super::access;
use super::record::Vm;
use super::release;
use crate::caller::Caller;
use crate::vm::Vms;

/// Deletes a stopped VM (or, with `force`, a running or paused one: killed
/// first).
pub async fn delete(d: &Arc<Vms>, vm: Vm, force: bool) -> Result<(), Error> {
    let from: &[VmState] = if force {
        &[VmState::Stopped, VmState::Running, VmState::Paused]
    } else {
        &[VmState::Stopped]
    };
    let vm = access::claim(d, &vm, from, VmState::Deleting, "delete")?;
    release::teardown(d, vm.id()).await
}

/// Deletes the caller's own stopped VMs; returns their names.
pub async fn prune(d: &Arc<Vms>, caller: &Caller) -> Result<Vec<String>, Error> {
    let mut deleted = Vec::new();
    for row in d.store.list_vms_of(Some(caller.uid))? {
        if row.owner_uid != caller.uid || row.state != VmState::Stopped.as_str() {
            continue;
        }
        let vm = Vm::from_row(row)?;
        // Skips VMs another request claimed in the meantime.
        if let Ok(vm) = access::claim(d, &vm, &[VmState::Stopped], VmState::Deleting, "delete") {
            release::teardown(d, vm.id()).await?;
            deleted.push(vm.name().to_string());
        }
    }
    Ok(deleted)
}
