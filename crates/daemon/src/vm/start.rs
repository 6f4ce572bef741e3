//! The start pipeline, shared by `vm start`, `vm restart` and `vm create`:
//! disk → network → spawn → configure → boot, each a timed stage. The VM is
//! in `starting` the whole time — claimed in the store, not locked in memory
//! — so `vm list/show/stats` answer immediately while it boots.

use std::sync::Arc;

use crate::error::Error;
use banger_core::timefmt;
use banger_proto::methods::vm::VmState;
use tokio_util::sync::CancellationToken;

use super::access;
use super::record::{self, Vm};
use super::release;
use super::stages::Stages;
use crate::staging::blocking;
use crate::vm::Vms;
use crate::vmm::backend::{LaunchSpec, NetAttach};

/// Boots a VM the caller has claimed (`starting`). On error the caller runs
/// [`abort`] (or a create's full teardown).
pub async fn boot(
    d: &Arc<Vms>,
    vm: &Vm,
    stages: &Stages,
    cancel: &CancellationToken,
) -> Result<Vm, Error> {
    let id = vm.id().to_string();
    let check = || {
        if cancel.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    };
    let image = d
        .store
        .image_by_id(&vm.row.image_id)
        .map_err(Error::from)?
        .ok_or_else(|| Error::internal("the VM's image record is missing"))?;
    // Checked at every start: the kernel must still be visible to the VM's
    // owner (root's or their own).
    let kernel = crate::images::bootable_kernel(&d.store, vm.row.owner_uid, &image)?;
    let vmm = d.vmms.get(&vm.spec.vmm)?;
    vmm.preflight().await.map_err(Error::from)?;
    let root = vm
        .runtime
        .root
        .clone()
        .ok_or_else(|| Error::internal("the VM has no root disk record"))?;
    let work = vm
        .runtime
        .work
        .clone()
        .ok_or_else(|| Error::internal("the VM has no work disk record"))?;

    stages.stage("disk");
    let host = d.disks.clone();
    let vm_id = id.clone();
    let active =
        blocking(move || crate::disk::activate(&root, &vm_id, host.as_ref()).map_err(Error::from))
            .await?;
    let root_device = active.device.clone();
    // Devices (dm-snapshot) must be on record before anything else can fail,
    // so a crash leaves enough behind to release them; a plain file needs no
    // record until the VM runs.
    if active.dm_name.is_some() || !active.loops.is_empty() {
        access::update(d, &id, |vm| vm.runtime.active_root = Some(active.clone()))?;
    }
    check()?;

    stages.stage("network");
    let net = super::network::attach(d, vm).await?;
    if net.is_some() {
        access::update(d, &id, |vm| vm.runtime.net = net.clone())?;
    }
    check()?;

    stages.stage("spawn");
    let run_dir = record::run_dir(&d.paths, &id);
    record::make_run_dir(&run_dir)?;
    let spec = LaunchSpec {
        vm_id: id.clone(),
        vcpus: vm.spec.vcpus,
        memory_mib: vm.spec.memory_mib,
        kernel: d.state_path(&kernel.vmlinux.rel_path),
        initrd: kernel.initrd.as_ref().map(|f| d.state_path(&f.rel_path)),
        boot_args: boot_args(
            &d.config.vm.boot_args,
            vm.name(),
            net.as_ref(),
            active.overlay.is_some(),
        ),
        root_disk: root_device,
        root_read_only: active.read_only,
        work_disk: work.file.clone(),
        overlay_disk: active.overlay.clone(),
        net,
        run_dir,
        vm_dir: record::vm_dir(&d.paths, &id),
    };
    let (handle, pidfd) = vmm.spawn(&spec).await.map_err(Error::from)?;
    let pid = handle.pid;
    // Recorded before anything else can fail, so a crash from here on leaves
    // enough behind for the next start to find and end this process.
    access::update(d, &id, |vm| {
        vm.runtime.vmm = Some(handle.clone());
        vm.runtime.active_root = Some(active.clone());
    })?;
    d.procs.track(&id, pid, pidfd);
    check()?;

    stages.stage("configure");
    vmm.configure(&handle, &spec).await.map_err(Error::from)?;
    check()?;

    stages.stage("boot");
    vmm.boot(&handle).await.map_err(Error::from)?;
    access::load(d, &id)
}

/// The kernel command line: the configured base, the disks, the VM's name
/// and, with a network, its static address (`ip=` autoconfiguration:
/// client::gateway:netmask:hostname:device:off:dns) — the gateway also
/// answers DNS, so the guest resolves `<name>.vm` with no DHCP involved.
///
/// With an overlay root the root device is mounted read-only and the agent
/// runs first as init, told the overlay device through its environment
/// (`banger_overlay=`: an unknown parameter without a dot becomes init's
/// environment); it assembles the overlay and executes systemd
/// (`banger_agent::init`).
pub fn boot_args(base: &str, name: &str, net: Option<&NetAttach>, overlay: bool) -> String {
    use banger_proto::guest::{AGENT_PATH, OVERLAY_DEVICE, OVERLAY_ENV, ROOT_DEVICE};
    let mut args = if overlay {
        format!(
            "{base} root={ROOT_DEVICE} ro init={AGENT_PATH} {OVERLAY_ENV}={OVERLAY_DEVICE} \
             systemd.hostname={name}"
        )
    } else {
        format!("{base} root={ROOT_DEVICE} rw systemd.hostname={name}")
    };
    if let Some(n) = net {
        let mask = banger_core::net_alloc::Subnet {
            network: n.gateway,
            prefix: n.prefix,
        }
        .mask();
        args.push_str(&format!(
            " ip={}::{}:{}:{name}:eth0:off:{}",
            n.ip, n.gateway, mask, n.gateway
        ));
    }
    args
}

/// `starting` → `running`, recording the start's stages. If the VMM died
/// while we were finishing, hand it to the reaper right away.
pub fn mark_running(d: &Arc<Vms>, id: &str, stages: &Stages) -> Result<Vm, Error> {
    let timing = stages.since("disk");
    let vm = access::settle(d, id, VmState::Starting, VmState::Running, |vm| {
        vm.runtime.started_at = Some(timefmt::now());
        vm.runtime.last_start = timing;
    })?;
    if let Some(proc) = d.procs.get(id) {
        d.procs.republish(id, &proc);
    }
    Ok(vm)
}

/// When a start fails because its VMM died under it (a concurrent `vm kill`,
/// a crash), say so instead of quoting the API error that followed.
pub fn explain(d: &Vms, id: &str, err: Error) -> Error {
    match d
        .procs
        .get(id)
        .and_then(|p| p.exited().map(|e| (p.expected_exit(), e)))
    {
        Some((Some(why), exit)) => Error::StartAborted {
            why,
            exit: exit.to_string(),
        },
        Some((None, exit)) => Error::VmmDied {
            exit: exit.to_string(),
        },
        None => err,
    }
}

/// After boot: for images whose guest runs sshd, wait (bounded) until it
/// answers, so "running" means "you can ssh in". A timeout leaves the VM
/// running for inspection and says where to look.
pub async fn wait_ready(d: &Arc<Vms>, id: &str, stages: &Stages) -> Result<(), Error> {
    let vm = access::load(d, id)?;
    let image = d.store.image_by_id(&vm.row.image_id).map_err(Error::from)?;
    let Some(image) = image.filter(|i| i.has("ssh")) else {
        return Ok(());
    };
    let Some(ip) = d.store.vm_address(id).map_err(Error::from)? else {
        return Ok(());
    };
    stages.stage("ssh");
    let timeout = std::time::Duration::from_secs(d.config.vm.ssh_wait_secs);
    match crate::guest::ssh::wait_for_sshd((ip, 22).into(), timeout).await {
        Ok(took) => {
            tracing::info!(vm = %vm.name(), image = %image.name, ms = took.as_millis() as u64, "sshd answers");
            Ok(())
        }
        Err(last) => Err(Error::SshTimeout {
            vm: vm.name().to_string(),
            addr: format!("{ip}:22"),
            secs: timeout.as_secs(),
            last: last.to_string(),
        }),
    }
}

/// A start failed: end the VMM, release what was set up, back to stopped.
pub async fn abort(d: &Arc<Vms>, id: &str, err: &Error) {
    if let Ok(vm) = access::load(d, id) {
        release::kill_process(d, &vm, "start-failed").await;
    }
    if let Err(e) =
        release::settle_stopped(d, id, VmState::Starting, "start-failed", err.to_string()).await
    {
        tracing::error!(vm = id, error = %e, "cleanup after a failed start failed");
    }
}

/// `vm start`.
pub async fn start(d: &Arc<Vms>, vm: Vm) -> Result<(Vm, Stages), Error> {
    let vm = access::claim(d, &vm, &[VmState::Stopped], VmState::Starting, "start")?;
    let stages = Stages::new(None);
    match boot(d, &vm, &stages, &CancellationToken::new()).await {
        Ok(_) => {
            mark_running(d, vm.id(), &stages)?;
            wait_ready(d, vm.id(), &stages).await?;
            Ok((access::load(d, vm.id())?, stages))
        }
        Err(e) => {
            let e = explain(d, vm.id(), e);
            abort(d, vm.id(), &e).await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_args_carry_the_address() {
        assert_eq!(
            boot_args("console=ttyS0", "box", None, false),
            "console=ttyS0 root=/dev/vda rw systemd.hostname=box"
        );
        assert_eq!(
            boot_args("console=ttyS0", "box", None, true),
            "console=ttyS0 root=/dev/vda ro init=/usr/local/bin/banger-agent \
             banger_overlay=/dev/vdc systemd.hostname=box"
        );
        let net = NetAttach {
            tap: "bgr-0123456789".into(),
            mac: "02:01:23:45:67:89".into(),
            ip: "172.16.213.5".parse().unwrap(),
            gateway: "172.16.213.1".parse().unwrap(),
            prefix: 24,
        };
        assert!(boot_args("c", "box", Some(&net), false)
            .ends_with(" ip=172.16.213.5::172.16.213.1:255.255.255.0:box:eth0:off:172.16.213.1"));
    }
}
