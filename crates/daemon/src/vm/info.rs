//! What `vm list/show/stats/health/ping` report. These only read the store
//! and /proc (and ask the VMM, with a short timeout): they never wait for a
//! lifecycle operation.

use std::sync::Arc;
use std::time::Instant;

use banger_core::timefmt;
use banger_proto::methods::vm::{DiskInfo, NetworkInfo, VmHealth, VmInfo, VmState, VmStats};
use banger_proto::RpcError;

use super::record::{self, Vm};
use crate::daemon::Daemon;
use crate::errors::Rpc;

pub fn vm_info(d: &Daemon, vm: &Vm) -> Result<VmInfo, RpcError> {
    let image = d.store.image_by_id(&vm.row.image_id).rpc()?;
    let kernel = d.store.kernel_by_id(&vm.row.kernel_id).rpc()?;
    let rt = &vm.runtime;
    let dir = record::vm_dir(&d.paths, vm.id());
    Ok(VmInfo {
        id: vm.id().to_string(),
        name: vm.name().to_string(),
        owner_uid: vm.row.owner_uid,
        state: vm.state,
        image: image.map_or_else(|| vm.row.image_id.clone(), |i| i.name),
        kernel: kernel.map_or_else(|| vm.row.kernel_id.clone(), |k| k.name),
        vcpus: vm.spec.vcpus,
        memory_mib: vm.spec.memory_mib,
        disk_bytes: vm.spec.disk_bytes,
        nat: vm.spec.nat,
        vmm: vm.spec.vmm.clone(),
        pid: rt.vmm.as_ref().map(|h| h.pid),
        api_socket: rt.vmm.as_ref().map(|h| h.api_socket.display().to_string()),
        root_disk: rt.root.as_ref().map(|r| DiskInfo {
            backend: r.backend.as_str().to_string(),
            path: rt
                .active_root
                .as_ref()
                .map_or(&r.file, |a| &a.device)
                .display()
                .to_string(),
            size: r.size,
        }),
        work_disk: rt.work.as_ref().map(|w| DiskInfo {
            backend: "ext4".into(),
            path: w.file.display().to_string(),
            size: w.size,
        }),
        created_at: vm.row.created_at.clone(),
        started_at: rt.started_at.clone(),
        uptime_secs: rt
            .started_at
            .as_deref()
            .filter(|_| vm.state == VmState::Running)
            .map(timefmt::age_secs),
        last_exit: rt.last_exit.clone(),
        last_start: rt.last_start.clone(),
        console_log: dir.join(record::CONSOLE_LOG).display().to_string(),
        vmm_log: dir.join(record::VMM_LOG).display().to_string(),
        network: network_info(d, vm)?,
    })
}

fn network_info(d: &Daemon, vm: &Vm) -> Result<Option<NetworkInfo>, RpcError> {
    let Some(ip) = d.store.vm_address(vm.id()).rpc()? else {
        return Ok(None);
    };
    let subnet = super::network::subnet(d)?;
    Ok(Some(NetworkInfo {
        ip,
        gateway: subnet.gateway(),
        prefix: subnet.prefix,
        dns_name: format!("{}.vm", vm.name()),
        tap: super::network::tap_name(vm.id()),
        mac: super::network::mac_for(vm.id()),
        ports: d
            .store
            .ports_of(vm.id())
            .rpc()?
            .iter()
            .map(super::network::mapping)
            .collect(),
    }))
}

pub async fn stats(d: &Arc<Daemon>, vm: &Vm) -> Result<VmStats, RpcError> {
    let info = vm_info(d, vm)?;
    let mut out = VmStats {
        name: info.name,
        state: vm.state,
        uptime_secs: info.uptime_secs,
        pid: None,
        rss_bytes: None,
        cpu_secs: None,
        vmm_metrics: None,
    };
    let Some(h) = vm
        .runtime
        .vmm
        .as_ref()
        .filter(|_| vm.state == VmState::Running)
    else {
        return Ok(out);
    };
    out.pid = Some(h.pid);
    if let Ok((rss, cpu)) = crate::vmm::process::rss_and_cpu(h.pid) {
        out.rss_bytes = Some(rss);
        out.cpu_secs = Some(cpu);
    }
    if let Ok(vmm) = d.vmms.get(&vm.spec.vmm) {
        match vmm.metrics(h).await {
            Ok(m) => out.vmm_metrics = m,
            Err(e) => tracing::debug!(vm = %vm.name(), error = %e, "no metrics"),
        }
    }
    Ok(out)
}

/// VMM liveness: the process is alive and its API answers. (The guest
/// agent's health joins this when the agent exists.)
pub async fn health(d: &Arc<Daemon>, vm: &Vm) -> Result<VmHealth, RpcError> {
    let mut h = VmHealth {
        name: vm.name().to_string(),
        healthy: false,
        state: vm.state,
        vmm_state: None,
        latency_ms: None,
        detail: String::new(),
    };
    let (Some(handle), VmState::Running) = (vm.runtime.vmm.as_ref(), vm.state) else {
        h.detail = format!("vm is {}", vm.state.as_str());
        return Ok(h);
    };
    let alive = d.procs.get(vm.id()).is_some_and(|p| p.exited().is_none());
    if !alive {
        h.detail = "the VMM process is gone".into();
        return Ok(h);
    }
    let vmm = d.vmms.get(&vm.spec.vmm)?;
    let t = Instant::now();
    match vmm.status(handle).await {
        Ok(s) => {
            h.latency_ms = Some((t.elapsed().as_secs_f64() * 1e6).round() / 1e3);
            h.healthy = s == "Running";
            h.detail = format!("{} (pid {}) answers: {s}", vm.spec.vmm, handle.pid);
            h.vmm_state = Some(s);
        }
        Err(e) => h.detail = format!("the VMM does not answer: {e}"),
    }
    Ok(h)
}
