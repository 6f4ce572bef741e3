//! `vm.*` handlers: parameter checks and permission, then the lifecycle code
//! in crate::vm does the work.

use std::sync::Arc;

use banger_core::{ids, timefmt};
use banger_proto::methods::daemon::LogChunk;
use banger_proto::methods::op::{OpIdParams, OperationInfo};
use banger_proto::methods::vm::{
    CreateBegun, CreateParams, DeleteParams, KillParams, LifecycleResult, ListParams, LogSource,
    PortAddParams, PortMapping, PortRemoveParams, PruneResult, SetParams, StopParams, VmHealth,
    VmInfo, VmLogsParams, VmPorts, VmState, VmStats,
};
use banger_proto::methods::{Empty, NameParams};
use banger_proto::names::validate_name;
use banger_proto::{ErrorKind, RpcError};

use crate::caller::Ctx;
use crate::daemon::Daemon;
use crate::errors::{self, Rpc};
use crate::vm::record::{self, Spec, Vm};
use crate::vm::{access, create, defaults, delete, info, names, network, set, start, stop};

pub async fn create_begin(
    d: Arc<Daemon>,
    cx: Ctx,
    p: CreateParams,
) -> Result<CreateBegun, RpcError> {
    let name = match p.name.as_deref().filter(|n| !n.is_empty()) {
        Some(n) => {
            validate_name(n).map_err(|e| RpcError::invalid_params(e.to_string()))?;
            if d.store.vm_by_name(n).rpc()?.is_some() {
                return Err(RpcError::already_exists("vm", n));
            }
            n.to_string()
        }
        None => {
            let seed = u64::from_str_radix(&ids::new_id()[..12], 16).unwrap_or(0);
            names::generate(seed, |n| d.store.vm_by_name(n).ok().flatten().is_some())
        }
    };
    let image = match p.image.as_deref() {
        Some(i) => crate::images::find(&d, &cx.caller, i)?,
        None => {
            let id = d.store.default_image_for(cx.caller.uid).rpc()?.ok_or_else(|| {
                RpcError::new(ErrorKind::PreconditionFailed, "no image given and no default image")
                    .with("hint", "pass --image NAME, or make one the default with `banger image promote NAME`")
            })?;
            d.store
                .image_by_id(&id)
                .rpc()?
                .ok_or_else(|| RpcError::internal("default image vanished"))?
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
    if !p.no_start {
        // Fail before making anything when the VM could not start anyway.
        d.vmms
            .get(&spec.vmm)?
            .preflight()
            .await
            .map_err(errors::from_vmm)?;
    }
    let now = timefmt::now();
    let row = banger_core::store::VmRow {
        id: ids::new_id(),
        name: name.clone(),
        owner_uid: cx.caller.uid,
        image_id: image.id.clone(),
        kernel_id: image.kernel_id.clone(),
        state: VmState::Creating.as_str().into(),
        spec: record::encode(&spec),
        runtime: "{}".into(),
        created_at: now.clone(),
        updated_at: now,
    };
    d.store.insert_vm(&row).rpc()?;
    // Address and ports are part of the reservation: if either fails, the
    // row goes and nothing is left half-made.
    if let Err(e) = reserve_network(&d, &row.id, &p.ports) {
        d.store.delete_vm(&row.id).rpc()?;
        return Err(e);
    }
    let vm = Vm::from_row(row)?;
    let vm_info = info::vm_info(&d, &vm)?;
    let (d2, id, no_start) = (d.clone(), vm.id().to_string(), p.no_start);
    let op = d.ops.begin("vm.create", &name, cx.caller.uid, move |op| {
        create::run(d2, op, id, no_start)
    });
    Ok(CreateBegun {
        operation_id: op,
        vm: vm_info,
    })
}

fn reserve_network(d: &Daemon, vm_id: &str, ports: &[PortMapping]) -> Result<(), RpcError> {
    let ip = network::allocate(d, vm_id)?;
    if ip.is_none() && !ports.is_empty() {
        return Err(RpcError::new(
            ErrorKind::PreconditionFailed,
            "cannot publish ports: networking is off ([network] enabled = false)",
        ));
    }
    for p in ports {
        add_port_row(d, vm_id, p)?;
    }
    Ok(())
}

fn add_port_row(d: &Daemon, vm_id: &str, p: &PortMapping) -> Result<(), RpcError> {
    if p.proto != "tcp" && p.proto != "udp" {
        return Err(RpcError::invalid_params(format!(
            "protocol {:?}: use tcp or udp",
            p.proto
        )));
    }
    if network::host_port_in_use(p) {
        return Err(RpcError::new(
            ErrorKind::AlreadyExists,
            format!("host port {p} is already in use by a process on the host"),
        ));
    }
    d.store
        .add_port(&banger_core::store::PortRow {
            vm_id: vm_id.to_string(),
            host_ip: p.host_ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
            host_port: p.host_port,
            guest_port: p.guest_port,
            proto: p.proto.clone(),
        })
        .rpc()
}

fn ports_of(d: &Daemon, vm_id: &str) -> Result<Vec<PortMapping>, RpcError> {
    Ok(d.store
        .ports_of(vm_id)
        .rpc()?
        .iter()
        .map(network::mapping)
        .collect())
}

/// Rules follow the store for running VMs.
async fn resync_if_running(d: &Arc<Daemon>, vm: &Vm) -> Result<(), RpcError> {
    let now = access::load(d, vm.id())?;
    if matches!(now.state, VmState::Running | VmState::Starting) {
        network::sync(d, None).await?;
    }
    Ok(())
}

pub async fn port_add(
    d: Arc<Daemon>,
    cx: Ctx,
    p: PortAddParams,
) -> Result<Vec<PortMapping>, RpcError> {
    let vm = access::find(&d, &cx.caller, &p.name)?;
    if d.store.vm_address(vm.id()).rpc()?.is_none() {
        return Err(RpcError::new(
            ErrorKind::PreconditionFailed,
            format!("vm {:?} has no network", p.name),
        ));
    }
    add_port_row(&d, vm.id(), &p.port)?;
    resync_if_running(&d, &vm).await?;
    ports_of(&d, vm.id())
}

pub async fn port_remove(
    d: Arc<Daemon>,
    cx: Ctx,
    p: PortRemoveParams,
) -> Result<Vec<PortMapping>, RpcError> {
    let vm = access::find(&d, &cx.caller, &p.name)?;
    if !d.store.remove_port(vm.id(), p.host_port, &p.proto).rpc()? {
        return Err(RpcError::not_found(
            "published port",
            &format!("{}/{} of vm {}", p.host_port, p.proto, p.name),
        ));
    }
    resync_if_running(&d, &vm).await?;
    ports_of(&d, vm.id())
}

pub async fn port_list(
    d: Arc<Daemon>,
    cx: Ctx,
    p: NameParams,
) -> Result<Vec<PortMapping>, RpcError> {
    let vm = access::find(&d, &cx.caller, &p.name)?;
    ports_of(&d, vm.id())
}

fn create_op(d: &Daemon, cx: &Ctx, id: &str) -> Result<OperationInfo, RpcError> {
    match d.ops.info(id, cx.caller.uid_filter()) {
        Some(o) if o.kind == "vm.create" => Ok(o),
        _ => Err(RpcError::not_found("vm create operation", id)),
    }
}

pub async fn create_status(
    d: Arc<Daemon>,
    cx: Ctx,
    p: OpIdParams,
) -> Result<OperationInfo, RpcError> {
    create_op(&d, &cx, &p.id)
}

pub async fn create_cancel(
    d: Arc<Daemon>,
    cx: Ctx,
    p: OpIdParams,
) -> Result<OperationInfo, RpcError> {
    create_op(&d, &cx, &p.id)?;
    d.ops
        .cancel(&p.id, cx.caller.uid_filter())
        .ok_or_else(|| RpcError::not_found("vm create operation", &p.id))
}

fn result(
    d: &Daemon,
    vm: &Vm,
    ended_by: Option<String>,
    stages: &crate::vm::stages::Stages,
) -> Result<LifecycleResult, RpcError> {
    Ok(LifecycleResult {
        vm: info::vm_info(d, vm)?,
        ended_by,
        stages: stages.finish(),
    })
}

pub async fn start(d: Arc<Daemon>, cx: Ctx, p: NameParams) -> Result<LifecycleResult, RpcError> {
    let vm = access::find(&d, &cx.caller, &p.name)?;
    let (vm, stages) = start::start(&d, vm).await?;
    result(&d, &vm, None, &stages)
}

pub async fn stop(d: Arc<Daemon>, cx: Ctx, p: StopParams) -> Result<LifecycleResult, RpcError> {
    let vm = access::find(&d, &cx.caller, &p.name)?;
    let (vm, by, stages) = stop::stop(&d, vm, p.timeout_secs).await?;
    result(&d, &vm, Some(by), &stages)
}

pub async fn restart(d: Arc<Daemon>, cx: Ctx, p: StopParams) -> Result<LifecycleResult, RpcError> {
    let vm = access::find(&d, &cx.caller, &p.name)?;
    let (vm, by, stages) = stop::restart(&d, vm, p.timeout_secs).await?;
    result(&d, &vm, Some(by), &stages)
}

pub async fn kill(d: Arc<Daemon>, cx: Ctx, p: KillParams) -> Result<LifecycleResult, RpcError> {
    let vm = access::find(&d, &cx.caller, &p.name)?;
    let (vm, by) = stop::kill(&d, vm, p.signal.as_deref()).await?;
    Ok(LifecycleResult {
        vm: info::vm_info(&d, &vm)?,
        ended_by: Some(by),
        stages: Vec::new(),
    })
}

pub async fn delete(d: Arc<Daemon>, cx: Ctx, p: DeleteParams) -> Result<Empty, RpcError> {
    let vm = access::find(&d, &cx.caller, &p.name)?;
    delete::delete(&d, vm, p.force).await?;
    Ok(Empty {})
}

pub async fn prune(d: Arc<Daemon>, cx: Ctx, _p: Empty) -> Result<PruneResult, RpcError> {
    Ok(PruneResult {
        deleted: delete::prune(&d, &cx.caller).await?,
    })
}

pub async fn set(d: Arc<Daemon>, cx: Ctx, p: SetParams) -> Result<VmInfo, RpcError> {
    let vm = access::find(&d, &cx.caller, &p.name)?;
    let only_nat = p.vcpus.is_none() && p.memory_mib.is_none() && p.disk_bytes.is_none();
    let vm = match (p.nat, only_nat) {
        // NAT is a rule, not a machine setting: it changes in any state.
        (Some(nat), true) => {
            let vm = access::update(&d, vm.id(), |v| v.spec.nat = nat)?;
            resync_if_running(&d, &vm).await?;
            vm
        }
        _ => set::set(&d, vm, &p).await?,
    };
    info::vm_info(&d, &vm)
}

pub async fn list(d: Arc<Daemon>, cx: Ctx, p: ListParams) -> Result<Vec<VmInfo>, RpcError> {
    let mut out = Vec::new();
    for row in d.store.list_vms().rpc()? {
        if !cx.caller.can_change(row.owner_uid) {
            continue;
        }
        let vm = Vm::from_row(row)?;
        if p.all || vm.state != VmState::Stopped {
            out.push(info::vm_info(&d, &vm)?);
        }
    }
    Ok(out)
}

pub async fn show(d: Arc<Daemon>, cx: Ctx, p: NameParams) -> Result<VmInfo, RpcError> {
    info::vm_info(&d, &access::find(&d, &cx.caller, &p.name)?)
}

pub async fn logs(d: Arc<Daemon>, cx: Ctx, p: VmLogsParams) -> Result<LogChunk, RpcError> {
    let vm = access::find(&d, &cx.caller, &p.name)?;
    let file = match p.source {
        LogSource::Console => record::CONSOLE_LOG,
        LogSource::Vmm => record::VMM_LOG,
    };
    let path = record::vm_dir(&d.paths, vm.id()).join(file);
    crate::logfile::read_chunk(&path, p.offset, p.tail_bytes)
}

pub async fn stats(d: Arc<Daemon>, cx: Ctx, p: NameParams) -> Result<VmStats, RpcError> {
    info::stats(&d, &access::find(&d, &cx.caller, &p.name)?).await
}

pub async fn health(d: Arc<Daemon>, cx: Ctx, p: NameParams) -> Result<VmHealth, RpcError> {
    info::health(&d, &access::find(&d, &cx.caller, &p.name)?, false).await
}

pub async fn ping(d: Arc<Daemon>, cx: Ctx, p: NameParams) -> Result<VmHealth, RpcError> {
    info::health(&d, &access::find(&d, &cx.caller, &p.name)?, true).await
}

pub async fn ports(d: Arc<Daemon>, cx: Ctx, p: NameParams) -> Result<VmPorts, RpcError> {
    info::ports(&d, &access::find(&d, &cx.caller, &p.name)?).await
}
