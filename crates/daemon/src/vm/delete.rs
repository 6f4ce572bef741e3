//! `vm delete` and `vm prune`.

use std::sync::Arc;

use banger_proto::methods::vm::VmState;
use banger_proto::RpcError;

use super::access;
use super::record::Vm;
use super::release;
use crate::caller::Caller;
use crate::daemon::Daemon;
use crate::errors::Rpc;

/// Deletes a stopped VM (or, with `force`, a running one: killed first).
pub async fn delete(d: &Arc<Daemon>, vm: Vm, force: bool) -> Result<(), RpcError> {
    let from: &[VmState] = if force {
        &[VmState::Stopped, VmState::Running]
    } else {
        &[VmState::Stopped]
    };
    let vm = access::claim(d, &vm, from, VmState::Deleting, "delete")?;
    release::teardown(d, vm.id()).await
}

/// Deletes the caller's own stopped VMs; returns their names.
pub async fn prune(d: &Arc<Daemon>, caller: &Caller) -> Result<Vec<String>, RpcError> {
    let mut deleted = Vec::new();
    for row in d.store.list_vms().rpc()? {
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
