//! What `vm list/show/stats/health/ping/ports` report. These only read the
//! store and /proc (and ask the VMM or the guest agent, each with a short
//! timeout): they never wait for a lifecycle operation.

use std::sync::Arc;
use std::time::Instant;

use crate::error::Error;
use banger_core::timefmt;
use banger_proto::agent::{ListeningPort, PortProto};
use banger_proto::methods::vm::{
    DiskInfo, GuestPort, NetworkInfo, VmHealth, VmInfo, VmPorts, VmState, VmStats,
};

use super::access;
use super::record::{self, Vm};
use crate::disk::RootBackend;
use crate::guest::agent;
use crate::vm::Vms;

pub fn vm_info(d: &Vms, vm: &Vm) -> Result<VmInfo, Error> {
    let image = d.store.image_by_id(&vm.row.image_id)?;
    let kernel = d.store.kernel_by_id(&vm.row.kernel_id)?;
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
        accel: rt
            .vmm
            .as_ref()
            .filter(|_| vm.state != VmState::Stopped)
            .and_then(|h| h.accel.clone()),
        pid: rt.vmm.as_ref().map(|h| h.pid),
        api_socket: rt.vmm.as_ref().map(|h| h.api_socket.display().to_string()),
        root_disk: rt.root.as_ref().map(|r| DiskInfo {
            backend: r.backend.as_str().to_string(),
            // dm-snapshot: the device while it is set up; overlay: the VM's
            // overlay disk, never the shared rootfs (that is `lower`).
            path: rt
                .active_root
                .as_ref()
                .filter(|_| r.backend != RootBackend::Overlay)
                .map_or(&r.file, |a| &a.device)
                .display()
                .to_string(),
            size: r.size,
            lower: (r.backend == RootBackend::Overlay).then(|| r.origin.display().to_string()),
            note: r.note.clone(),
        }),
        work_disk: rt.work.as_ref().map(|w| DiskInfo {
            backend: "ext4".into(),
            path: w.file.display().to_string(),
            size: w.size,
            lower: None,
            note: None,
        }),
        created_at: vm.row.created_at.clone(),
        started_at: rt.started_at.clone(),
        uptime_secs: rt
            .started_at
            .as_deref()
            .filter(|_| vm.state.is_booted())
            .map(timefmt::age_secs),
        last_exit: rt.last_exit.clone(),
        last_start: rt.last_start.clone(),
        console_log: dir.join(record::CONSOLE_LOG).display().to_string(),
        vmm_log: dir.join(record::VMM_LOG).display().to_string(),
        network: network_info(d, vm)?,
    })
}

fn network_info(d: &Vms, vm: &Vm) -> Result<Option<NetworkInfo>, Error> {
    let Some(ip) = d.store.vm_address(vm.id())? else {
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
            .ports_of(vm.id())?
            .iter()
            .map(super::network::mapping)
            .collect(),
    }))
}

pub async fn stats(d: &Arc<Vms>, vm: &Vm) -> Result<VmStats, Error> {
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
    let Some(h) = vm.runtime.vmm.as_ref().filter(|_| vm.state.is_booted()) else {
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

/// `vm health` (`ping == false`) and `vm ping`.
///
/// With an image that has the `agent` feature the guest agent answers
/// (`checked: "agent"`): healthy means the agent replied to `health`, and
/// its answer (version, uptime, boot id, hostname) is included. Without one,
/// VMM liveness only (`checked: "vmm"`): the process is alive and its API
/// answers, and `detail` says that no agent was asked. `health` also asks
/// the VMM for its state; `ping` makes one round trip only.
pub async fn health(d: &Arc<Vms>, vm: &Vm, ping: bool) -> Result<VmHealth, Error> {
    let has_agent = agent::vm_has_agent(&d.store, vm);
    let mut h = VmHealth {
        name: vm.name().to_string(),
        healthy: false,
        state: vm.state,
        vmm_state: None,
        latency_ms: None,
        checked: if has_agent { "agent" } else { "vmm" }.into(),
        agent: None,
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
    let mut vmm_detail = String::new();
    if !has_agent || !ping {
        let t = Instant::now();
        match vmm.status(handle).await {
            Ok(s) => {
                h.latency_ms = Some(millis(t));
                h.healthy = s == "Running";
                vmm_detail = format!("{} (pid {}) answers: {s}", vm.spec.vmm, handle.pid);
                h.vmm_state = Some(s);
            }
            Err(e) => {
                h.detail = format!("the VMM does not answer: {e}");
                return Ok(h);
            }
        }
    }
    if !has_agent {
        h.detail = format!(
            "{vmm_detail}; no guest agent in image {} (VMM liveness only)",
            image_name(d, vm)
        );
        return Ok(h);
    }
    let t = Instant::now();
    let answer = match agent::connect(&d.vmms, vm).await {
        Ok(mut c) => c.health().await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(a) => {
            h.latency_ms = Some(millis(t));
            h.healthy = true;
            h.detail = format!(
                "agent {} answers: up {:.0}s, hostname {}, kernel {}, boot {}",
                a.agent_version,
                a.uptime_secs,
                a.hostname,
                a.kernel_release,
                a.boot_id.get(..8).unwrap_or(&a.boot_id)
            );
            h.agent = Some(a);
        }
        Err(e) => {
            h.healthy = false;
            h.latency_ms = None;
            h.detail = agent::not_answering(vm.name(), &e);
            if !vmm_detail.is_empty() {
                h.detail.push_str(&format!(" ({vmm_detail})"));
            }
        }
    }
    Ok(h)
}

fn millis(t: Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e6).round() / 1e3
}

fn image_name(d: &Vms, vm: &Vm) -> String {
    d.store
        .image_by_id(&vm.row.image_id)
        .ok()
        .flatten()
        .map_or_else(|| vm.row.image_id.clone(), |i| i.name)
}

/// `vm ports`: the guest's listening sockets, from its agent.
pub async fn ports(d: &Arc<Vms>, vm: &Vm) -> Result<VmPorts, Error> {
    if vm.state == VmState::Paused {
        return Err(access::state_error(
            vm.name(),
            vm.state,
            "list the ports of",
        ));
    }
    if vm.state != VmState::Running || vm.runtime.vmm.is_none() {
        return Err(Error::InvalidState {
            message: format!(
                "vm {:?} is {}: start it to see its ports",
                vm.name(),
                vm.state.as_str()
            ),
            state: Some(vm.state.as_str().into()),
            hint: None,
        });
    }
    if !agent::vm_has_agent(&d.store, vm) {
        return Err(Error::precondition(format!(
            "image {} has no guest agent (image feature `{}`): vm ports asks the agent",
            image_name(d, vm),
            agent::FEATURE
        )));
    }
    let answer = match agent::connect(&d.vmms, vm).await {
        Ok(mut c) => c.ports().await,
        Err(e) => Err(e),
    };
    let listening = answer.map_err(|e| Error::Agent {
        vm: vm.name().to_string(),
        message: agent::not_answering(vm.name(), &e),
        source: e,
    })?;
    let ip = d.store.vm_address(vm.id())?;
    Ok(VmPorts {
        name: vm.name().to_string(),
        dns_name: ip.map(|_| format!("{}.vm", vm.name())),
        ip,
        ports: guest_ports(vm.name(), ip, listening),
    })
}

/// The agent's sockets as `vm ports` shows them, sorted by port then
/// protocol. A socket the host can reach — bound to all addresses or to the
/// VM's own, on a VM with a network — gets the `<name>.vm:PORT` endpoint,
/// and a TCP one the `http://<name>.vm:PORT/` link; loopback-only sockets
/// and those bound to other guest addresses (a container bridge) get none.
pub fn guest_ports(
    name: &str,
    ip: Option<std::net::Ipv4Addr>,
    listening: Vec<ListeningPort>,
) -> Vec<GuestPort> {
    let mut out: Vec<GuestPort> = listening
        .into_iter()
        .map(|p| {
            let reachable = ip.is_some_and(|ip| {
                matches!(p.address.as_str(), "0.0.0.0" | "::")
                    || p.address == ip.to_string()
                    || p.address == format!("::ffff:{ip}")
            });
            let tcp = matches!(p.proto, PortProto::Tcp | PortProto::Tcp6);
            GuestPort {
                proto: p.proto.as_str().to_string(),
                address: p.address,
                port: p.port,
                pid: p.pid,
                process: p.process,
                endpoint: reachable.then(|| format!("{name}.vm:{}", p.port)),
                url: (reachable && tcp).then(|| format!("http://{name}.vm:{}/", p.port)),
            }
        })
        .collect();
    out.sort_by(|a, b| (a.port, &a.proto, &a.address).cmp(&(b.port, &b.proto, &b.address)));
    out
}

#[cfg(test)]
mod tests {
    use banger_proto::agent::{ListeningPort, PortProto};

    use super::guest_ports;

    fn lp(proto: PortProto, address: &str, port: u16, process: &str) -> ListeningPort {
        ListeningPort {
            proto,
            address: address.into(),
            port,
            pid: Some(100 + u32::from(port)),
            process: Some(process.into()),
        }
    }

    #[test]
    fn endpoints_only_for_what_the_host_can_reach() {
        let ip = Some("172.16.213.2".parse().unwrap());
        let ports = guest_ports(
            "box",
            ip,
            vec![
                lp(PortProto::Tcp6, "::", 22, "sshd"),
                lp(PortProto::Tcp, "0.0.0.0", 22, "sshd"),
                lp(PortProto::Tcp, "127.0.0.1", 5432, "postgres"),
                lp(PortProto::Udp, "0.0.0.0", 53, "dnsmasq"),
                lp(PortProto::Tcp, "172.16.213.2", 8080, "python3"),
                lp(PortProto::Tcp, "172.17.0.1", 9000, "dockerd"),
            ],
        );
        let rows: Vec<(u16, &str, Option<&str>, Option<&str>)> = ports
            .iter()
            .map(|p| {
                (
                    p.port,
                    p.proto.as_str(),
                    p.endpoint.as_deref(),
                    p.url.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            rows,
            vec![
                (22, "tcp", Some("box.vm:22"), Some("http://box.vm:22/")),
                (22, "tcp6", Some("box.vm:22"), Some("http://box.vm:22/")),
                (53, "udp", Some("box.vm:53"), None),
                (5432, "tcp", None, None),
                (
                    8080,
                    "tcp",
                    Some("box.vm:8080"),
                    Some("http://box.vm:8080/")
                ),
                (9000, "tcp", None, None),
            ]
        );
        assert_eq!(ports[0].process.as_deref(), Some("sshd"));
        // Without a network nothing is reachable from the host.
        let none = guest_ports(
            "box",
            None,
            vec![lp(PortProto::Tcp, "0.0.0.0", 80, "nginx")],
        );
        assert_eq!(
            (none[0].endpoint.as_ref(), none[0].url.as_ref()),
            (None, None)
        );
    }
}
