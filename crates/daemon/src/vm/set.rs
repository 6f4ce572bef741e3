//! `vm set`: vcpus, memory and work-disk size of a stopped VM. The disk only
//! grows (shrinking ext4 under a user's files is not something to do
//! quietly); growing runs e2fsck + resize2fs, so the VM is `updating` meanwhile.

use std::sync::Arc;

use crate::error::Error;
use banger_proto::methods::vm::{SetParams, VmState};

use super::access;
use super::defaults;
use super::record::Vm;
use crate::staging::blocking;
use crate::vm::Vms;

pub async fn set(d: &Arc<Vms>, vm: Vm, p: &SetParams) -> Result<Vm, Error> {
    let vcpus = p.vcpus.unwrap_or(vm.spec.vcpus);
    let memory_mib = p.memory_mib.unwrap_or(vm.spec.memory_mib);
    let disk_bytes = p.disk_bytes.unwrap_or(vm.spec.disk_bytes);
    defaults::validate(vcpus, memory_mib, disk_bytes)?;
    if disk_bytes < vm.spec.disk_bytes {
        return Err(Error::invalid(format!(
            "the work disk can only grow: it is {} bytes, {} asked",
            vm.spec.disk_bytes, disk_bytes
        )));
    }
    let vm = access::claim(d, &vm, &[VmState::Stopped], VmState::Updating, "set")?;
    let grown = match (&vm.runtime.work, disk_bytes > vm.spec.disk_bytes) {
        (Some(work), true) => {
            let (work, host) = (work.clone(), d.disks.clone());
            blocking(move || {
                crate::disk::grow_work(&work, disk_bytes, host.as_ref()).map_err(Error::from)
            })
            .await
            .map(Some)
        }
        _ => Ok(None),
    };
    match grown {
        Ok(work) => access::settle(d, vm.id(), VmState::Updating, VmState::Stopped, |vm| {
            if let Some(nat) = p.nat {
                vm.spec.nat = nat;
            }
            vm.spec.vcpus = vcpus;
            vm.spec.memory_mib = memory_mib;
            vm.spec.disk_bytes = disk_bytes;
            if let Some(w) = work {
                vm.runtime.work = Some(w);
            }
        }),
        Err(e) => {
            access::settle(d, vm.id(), VmState::Updating, VmState::Stopped, |_| {})?;
            Err(e)
        }
    }
}
