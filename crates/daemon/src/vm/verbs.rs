//! The VM service's verbs, one per `vm.*` request (and the `ssh.*` ones:
//! the keys that reach the caller's VMs): find the caller's VM
//! (crate::vm::access), then the lifecycle module that does the work. The
//! RPC handlers (crate::rpc::handlers::vm, ::ssh) only adapt params and
//! results.

use std::sync::Arc;

use crate::error::Error;
use banger_core::store::ImageRow;
use banger_core::{ids, timefmt};
use banger_proto::methods::daemon::LogChunk;
use banger_proto::methods::op::{OpIdParams, Operation, OperationInfo, VmCreate};
use banger_proto::methods::ssh::{KnownHostsText, SshIdentity};
use banger_proto::methods::vm::{
    CreateBegun, CreateParams, DeleteParams, KillParams, LifecycleResult, ListParams, LogSource,
    PortAddParams, PortMapping, PortRemoveParams, PruneResult, SetParams, StopParams, VmHealth,
    VmInfo, VmLogsParams, VmPorts, VmState, VmStats,
};
use banger_proto::methods::{Empty, NameParams};
use banger_proto::names::validate_name;

use super::record::{self, Spec, Vm};
use super::{access, create, defaults, delete, info, names, network, pause, set, start, stop};
use crate::caller::Caller;
use crate::ops::Ops;
use crate::staging::blocking;
use crate::vm::Vms;

/// Validates, resolves the spec and reserves name, address and ports (a row
/// in state `creating`), then runs the rest as a `vm.create` operation.
/// `image` is what the registry resolved for the request.
pub async fn create_begin(
    d: &Arc<Vms>,
    ops: &Ops,
    caller: &Caller,
    p: CreateParams,
    image: ImageRow,
) -> Result<CreateBegun, Error> {
    let name = match p.name.as_deref().filter(|n| !n.is_empty()) {
        Some(n) => {
            validate_name(n).map_err(|e| Error::invalid(e.to_string()))?;
            if d.store.vm_by_name(n)?.is_some() {
                return Err(Error::already_exists("vm", n));
            }
            n.to_string()
        }
        None => {
            let seed = u64::from_str_radix(&ids::new_id()[..12], 16).unwrap_or(0);
            names::generate(seed, |n| d.store.vm_by_name(n).ok().flatten().is_some())
        }
    };
    let r = defaults::resolve(
        &d.config.vm_defaults,
        defaults::Host::detect(),
        p.vcpus,
        p.memory_mib,
        p.disk_bytes,
    )?;
    let spec = Spec {
        vcpus: r.vcpus,
        memory_mib: r.memory_mib,
        disk_bytes: r.disk_bytes,
        nat: p.nat,
        vmm: d.vmms.resolve(p.vmm.as_deref())?.into(),
    };
    check_limits(d, caller, &spec)?;
    ops.check_limit(caller.uid, d.config.limits.running_operations)?;
    if !p.no_start {
        // Fail before making anything when the VM could not start anyway.
        d.vmms
            .get(&spec.vmm)?
            .preflight()
            .await
            .map_err(Error::from)?;
    }
    let now = timefmt::now();
    let row = banger_core::store::VmRow {
        id: ids::new_id(),
        name: name.clone(),
        owner_uid: caller.uid,
        image_id: image.id.clone(),
        kernel_id: image.kernel_id.clone(),
        state: VmState::Creating.as_str().into(),
        spec: record::encode(&spec),
        runtime: "{}".into(),
        created_at: now.clone(),
        updated_at: now,
    };
    d.store.insert_vm(&row)?;
    // Address and ports are part of the reservation: if either fails, the
    // row goes and nothing is left half-made.
    if let Err(e) = reserve_network(d, &row.id, row.owner_uid, &p.ports) {
        d.store.delete_vm(&row.id)?;
        return Err(e);
    }
    let vm = Vm::from_row(row)?;
    let vm_info = info::vm_info(d, &vm)?;
    let (d2, id, no_start) = (d.clone(), vm.id().to_string(), p.no_start);
    let op = ops.begin::<VmCreate, _, _>(&name, caller.uid, move |op| {
        create::run(d2, op, id, no_start)
    });
    Ok(CreateBegun {
        operation_id: op,
        vm: vm_info,
    })
}

/// `[limits]` for a non-root caller's new VM: how many VMs, and the totals
/// of vCPUs, memory and work disk over their VMs with this one. Root is
/// exempt. (Checked at create; two concurrent creates may both pass, so a
/// limit can be overshot by the creates in flight, never by more.)
fn check_limits(d: &Vms, caller: &Caller, spec: &Spec) -> Result<(), Error> {
    if caller.is_root() {
        return Ok(());
    }
    let l = &d.config.limits;
    let mine = d.store.list_vms_of(Some(caller.uid))?;
    let (mut vcpus, mut mem, mut disk) = (spec.vcpus as u64, spec.memory_mib, spec.disk_bytes);
    for row in mine.iter() {
        let vm = Vm::from_row(row.clone())?;
        vcpus += vm.spec.vcpus as u64;
        mem += vm.spec.memory_mib;
        disk += vm.spec.disk_bytes;
    }
    let over = |what: &str, key: &str, max: String| {
        Err(Error::precondition(format!(
            "{what} over your VMs would pass the limit per user ([limits] {key} = {max})"
        ))
        .hint("delete a VM you no longer need (`banger vm prune` removes your stopped ones)"))
    };
    if mine.len() >= l.vms as usize {
        return over("the number of VMs", "vms", l.vms.to_string());
    }
    if vcpus > l.vcpus {
        return over("the total of vCPUs", "vcpus", l.vcpus.to_string());
    }
    if mem > l.memory_mib {
        return over("the total memory", "memory_mib", l.memory_mib.to_string());
    }
    if disk > l.disk_gib.saturating_mul(1 << 30) {
        return over(
            "the total work-disk size",
            "disk_gib",
            l.disk_gib.to_string(),
        );
    }
    Ok(())
}

fn reserve_network(
    d: &Vms,
    vm_id: &str,
    owner_uid: u32,
    ports: &[PortMapping],
) -> Result<(), Error> {
    let ip = network::allocate(d, vm_id)?;
    if ip.is_none() && !ports.is_empty() {
        return Err(Error::precondition(
            "cannot publish ports: networking is off ([network] enabled = false)",
        ));
    }
    for p in ports {
        add_port_row(d, vm_id, owner_uid, p)?;
    }
    Ok(())
}

/// `owner_uid`: the VM's owner (not the caller: root adding a port to a
/// user's VM still may not give it a privileged port).
fn add_port_row(d: &Vms, vm_id: &str, owner_uid: u32, p: &PortMapping) -> Result<(), Error> {
    if p.proto != "tcp" && p.proto != "udp" {
        return Err(Error::invalid(format!(
            "protocol {:?}: use tcp or udp",
            p.proto
        )));
    }
    if let Some(e) = network::port_refusal(owner_uid, p) {
        return Err(e);
    }
    d.store
        .add_port(&banger_core::store::PortRow {
            vm_id: vm_id.to_string(),
            host_ip: p.host_ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
            host_port: p.host_port,
            guest_port: p.guest_port,
            proto: p.proto.clone(),
        })
        .map_err(Error::from)
}

fn ports_of(d: &Vms, vm_id: &str) -> Result<Vec<PortMapping>, Error> {
    Ok(d.store
        .ports_of(vm_id)?
        .iter()
        .map(network::mapping)
        .collect())
}

/// Rules follow the store for running VMs.
async fn resync_if_running(d: &Arc<Vms>, vm: &Vm) -> Result<(), Error> {
    let now = access::load(d, vm.id())?;
    if now.state == VmState::Starting || now.state.is_booted() {
        network::sync(d, None).await?;
    }
    Ok(())
}

pub async fn port_add(
    d: &Arc<Vms>,
    caller: &Caller,
    p: PortAddParams,
) -> Result<Vec<PortMapping>, Error> {
    let vm = access::find(d, caller, &p.name)?;
    if d.store.vm_address(vm.id())?.is_none() {
        return Err(Error::precondition(format!(
            "vm {:?} has no network",
            p.name
        )));
    }
    add_port_row(d, vm.id(), vm.row.owner_uid, &p.port)?;
    resync_if_running(d, &vm).await?;
    ports_of(d, vm.id())
}

pub async fn port_remove(
    d: &Arc<Vms>,
    caller: &Caller,
    p: PortRemoveParams,
) -> Result<Vec<PortMapping>, Error> {
    let vm = access::find(d, caller, &p.name)?;
    if !d.store.remove_port(vm.id(), p.host_port, &p.proto)? {
        return Err(Error::not_found(
            "published port",
            format!("{}/{} of vm {}", p.host_port, p.proto, p.name),
        ));
    }
    resync_if_running(d, &vm).await?;
    ports_of(d, vm.id())
}

pub async fn port_list(
    d: &Arc<Vms>,
    caller: &Caller,
    p: NameParams,
) -> Result<Vec<PortMapping>, Error> {
    let vm = access::find(d, caller, &p.name)?;
    ports_of(d, vm.id())
}

/// `ssh.identity`: the caller's own key pair, made on first use. The uid
/// comes from SO_PEERCRED, so nobody can ask for someone else's.
pub async fn ssh_identity(d: &Arc<Vms>, caller: &Caller) -> Result<SshIdentity, Error> {
    let (d, uid) = (d.clone(), caller.uid);
    blocking(move || crate::guest::ssh::identity(&d.paths.state_dir, uid)).await
}

/// `ssh.known_hosts`: the pinned host keys of the VMs the caller may reach.
pub fn known_hosts(d: &Vms, caller: &Caller) -> Result<KnownHostsText, Error> {
    Ok(KnownHostsText {
        text: crate::guest::ssh::known_hosts(&d.store, caller.uid_filter())?,
    })
}

fn create_op(ops: &Ops, caller: &Caller, id: &str) -> Result<OperationInfo, Error> {
    match ops.info(id, caller.uid_filter()) {
        Some(o) if o.kind == VmCreate::KIND => Ok(o),
        _ => Err(Error::not_found("vm create operation", id)),
    }
}

pub fn create_status(ops: &Ops, caller: &Caller, p: OpIdParams) -> Result<OperationInfo, Error> {
    create_op(ops, caller, &p.id)
}

pub fn create_cancel(ops: &Ops, caller: &Caller, p: OpIdParams) -> Result<OperationInfo, Error> {
    create_op(ops, caller, &p.id)?;
    ops.cancel(&p.id, caller.uid_filter())
        .ok_or_else(|| Error::not_found("vm create operation", &p.id))
}

fn result(
    d: &Vms,
    vm: &Vm,
    ended_by: Option<String>,
    stages: &crate::vm::stages::Stages,
) -> Result<LifecycleResult, Error> {
    Ok(LifecycleResult {
        vm: info::vm_info(d, vm)?,
        ended_by,
        stages: stages.finish(),
    })
}

pub async fn start(d: &Arc<Vms>, caller: &Caller, p: NameParams) -> Result<LifecycleResult, Error> {
    let vm = access::find(d, caller, &p.name)?;
    let (vm, stages) = start::start(d, vm).await?;
    result(d, &vm, None, &stages)
}

pub async fn stop(d: &Arc<Vms>, caller: &Caller, p: StopParams) -> Result<LifecycleResult, Error> {
    let vm = access::find(d, caller, &p.name)?;
    let (vm, by, stages) = stop::stop(d, vm, p.timeout_secs).await?;
    result(d, &vm, Some(by), &stages)
}

pub async fn restart(
    d: &Arc<Vms>,
    caller: &Caller,
    p: StopParams,
) -> Result<LifecycleResult, Error> {
    let vm = access::find(d, caller, &p.name)?;
    let (vm, by, stages) = stop::restart(d, vm, p.timeout_secs).await?;
    result(d, &vm, Some(by), &stages)
}

pub async fn pause(d: &Arc<Vms>, caller: &Caller, p: NameParams) -> Result<LifecycleResult, Error> {
    let vm = access::find(d, caller, &p.name)?;
    let (vm, stages) = pause::pause(d, vm).await?;
    result(d, &vm, None, &stages)
}

pub async fn resume(
    d: &Arc<Vms>,
    caller: &Caller,
    p: NameParams,
) -> Result<LifecycleResult, Error> {
    let vm = access::find(d, caller, &p.name)?;
    let (vm, stages) = pause::resume(d, vm).await?;
    result(d, &vm, None, &stages)
}

pub async fn kill(d: &Arc<Vms>, caller: &Caller, p: KillParams) -> Result<LifecycleResult, Error> {
    let vm = access::find(d, caller, &p.name)?;
    let (vm, by) = stop::kill(d, vm, p.signal.as_deref()).await?;
    Ok(LifecycleResult {
        vm: info::vm_info(d, &vm)?,
        ended_by: Some(by),
        stages: Vec::new(),
    })
}

pub async fn delete(d: &Arc<Vms>, caller: &Caller, p: DeleteParams) -> Result<Empty, Error> {
    let vm = access::find(d, caller, &p.name)?;
    delete::delete(d, vm, p.force).await?;
    Ok(Empty {})
}

pub async fn prune(d: &Arc<Vms>, caller: &Caller, _p: Empty) -> Result<PruneResult, Error> {
    Ok(PruneResult {
        deleted: delete::prune(d, caller).await?,
    })
}

pub async fn set(d: &Arc<Vms>, caller: &Caller, p: SetParams) -> Result<VmInfo, Error> {
    let vm = access::find(d, caller, &p.name)?;
    let only_nat = p.vcpus.is_none() && p.memory_mib.is_none() && p.disk_bytes.is_none();
    let vm = match (p.nat, only_nat) {
        // NAT is a rule, not a machine setting: it changes in any state.
        (Some(nat), true) => {
            let vm = access::update(d, vm.id(), |v| v.spec.nat = nat)?;
            resync_if_running(d, &vm).await?;
            vm
        }
        _ => set::set(d, vm, &p).await?,
    };
    info::vm_info(d, &vm)
}

pub async fn list(d: &Arc<Vms>, caller: &Caller, p: ListParams) -> Result<Vec<VmInfo>, Error> {
    let mut out = Vec::new();
    // Filtered in the query: other users' rows never reach this loop.
    for row in d.store.list_vms_of(caller.uid_filter())? {
        let vm = Vm::from_row(row)?;
        if p.all || vm.state != VmState::Stopped {
            out.push(info::vm_info(d, &vm)?);
        }
    }
    Ok(out)
}

pub async fn show(d: &Arc<Vms>, caller: &Caller, p: NameParams) -> Result<VmInfo, Error> {
    info::vm_info(d, &access::find(d, caller, &p.name)?)
}

pub async fn logs(d: &Arc<Vms>, caller: &Caller, p: VmLogsParams) -> Result<LogChunk, Error> {
    let vm = access::find(d, caller, &p.name)?;
    let file = match p.source {
        LogSource::Console => record::CONSOLE_LOG,
        LogSource::Vmm => record::VMM_LOG,
    };
    let path = record::vm_dir(&d.paths, vm.id()).join(file);
    crate::logfile::read_chunk(&path, p.offset, p.tail_bytes)
}

pub async fn stats(d: &Arc<Vms>, caller: &Caller, p: NameParams) -> Result<VmStats, Error> {
    info::stats(d, &access::find(d, caller, &p.name)?).await
}

pub async fn health(d: &Arc<Vms>, caller: &Caller, p: NameParams) -> Result<VmHealth, Error> {
    info::health(d, &access::find(d, caller, &p.name)?, false).await
}

pub async fn ping(d: &Arc<Vms>, caller: &Caller, p: NameParams) -> Result<VmHealth, Error> {
    info::health(d, &access::find(d, caller, &p.name)?, true).await
}

pub async fn ports(d: &Arc<Vms>, caller: &Caller, p: NameParams) -> Result<VmPorts, Error> {
    info::ports(d, &access::find(d, caller, &p.name)?).await
}
