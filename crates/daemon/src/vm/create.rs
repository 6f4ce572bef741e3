//! `vm create`: an asynchronous operation. The begin handler validates,
//! resolves the spec and reserves the name (a row in state `creating`);
//! the operation body makes the disks and, unless `--no-start`, runs the
//! start pipeline. Any failure or a cancel removes everything it made,
//! including the row.

use std::sync::Arc;

use crate::error::Error;
use banger_core::artifact::stage;
use banger_proto::methods::vm::{VmInfo, VmState};

use super::access;
use super::record::{self, Vm};
use super::release;
use super::stages::Stages;
use super::start;
use crate::ops::OpHandle;
use crate::staging::blocking;
use crate::vm::Vms;

pub async fn run(
    d: Arc<Vms>,
    op: OpHandle,
    vm_id: String,
    no_start: bool,
) -> Result<VmInfo, Error> {
    let stages = Stages::new(Some(op.clone()));
    match make(&d, &op, &vm_id, no_start, &stages).await {
        Ok(vm) => super::info::vm_info(&d, &vm),
        // sshd did not come up: the VM runs and is kept for inspection.
        Err(e) if e.kept_vm() => Err(e),
        Err(e) => {
            let e = super::start::explain(&d, &vm_id, e);
            stages.stage("cleanup");
            if let Err(te) = release::teardown(&d, &vm_id).await {
                tracing::error!(vm = %vm_id, error = %te, "cleanup after a failed create failed");
            }
            Err(e)
        }
    }
}

async fn make(
    d: &Arc<Vms>,
    op: &OpHandle,
    id: &str,
    no_start: bool,
    stages: &Stages,
) -> Result<Vm, Error> {
    let vm = access::load(d, id)?;
    let image = d
        .store
        .image_by_id(&vm.row.image_id)
        .map_err(Error::from)?
        .ok_or_else(|| Error::internal("the image record vanished"))?;
    let vm_dir = record::vm_dir(&d.paths, id);
    std::fs::create_dir_all(&vm_dir)
        .map_err(|e| Error::internal(format!("cannot create {}: {e}", vm_dir.display())))?;
    // Probes the host (reflink, device-mapper, maybe `modprobe`): off the
    // async threads.
    let choice = {
        let (d, image) = (d.clone(), image.clone());
        blocking(move || super::disks::backend(&d, &image)).await?
    };

    stages.stage("disk-root");
    let origin = d.state_path(&image.rootfs.rel_path);
    let (op2, dir, host) = (op.clone(), vm_dir.clone(), d.disks.clone());
    let root = blocking(move || {
        let flag = op2.cancel_flag();
        let report = |done, total| op2.progress(done, total, "bytes");
        let ctl = stage::Ctl {
            cancel: &flag,
            progress: &report,
        };
        crate::disk::create_root(
            choice.backend,
            &origin,
            &dir,
            host.as_ref(),
            choice.note,
            &ctl,
        )
        .map_err(Error::from)
    })
    .await?;
    access::update(d, id, |vm| vm.runtime.root = Some(root))?;
    op.check()?;

    stages.stage("disk-work");
    let seed = image.work_seed.as_ref().map(|f| d.state_path(&f.rel_path));
    let (op2, dir, host, size) = (
        op.clone(),
        vm_dir.clone(),
        d.disks.clone(),
        vm.spec.disk_bytes,
    );
    let work = blocking(move || {
        let flag = op2.cancel_flag();
        let report = |done, total| op2.progress(done, total, "bytes");
        let ctl = stage::Ctl {
            cancel: &flag,
            progress: &report,
        };
        crate::disk::create_work(seed.as_deref(), &dir, size, host.as_ref(), &ctl)
            .map_err(Error::from)
    })
    .await?;
    let work_file = work.file.clone();
    access::update(d, id, |vm| vm.runtime.work = Some(work))?;
    op.check()?;

    if image.has("ssh") {
        stages.stage("ssh-keys");
        let (d2, owner, host) = (d.clone(), vm.row.owner_uid, d.disks.clone());
        let host_pub = blocking(move || {
            let (_, user_pub) = crate::guest::ssh::user_key(&d2.paths.state_dir, owner)?;
            let (host_priv, host_pub) = crate::guest::ssh::new_host_key()?;
            let files = crate::guest::ssh::guest_files(&user_pub, host_priv, &host_pub);
            host.ext4_write_files(&work_file, &files).map_err(|e| {
                Error::internal(format!("writing SSH keys onto the work disk: {e}"))
            })?;
            Ok(host_pub)
        })
        .await?;
        access::update(d, id, |vm| vm.runtime.ssh_host_key = Some(host_pub))?;
    }

    if no_start {
        return access::settle(d, id, VmState::Creating, VmState::Stopped, |_| {});
    }
    let vm = access::settle(d, id, VmState::Creating, VmState::Starting, |_| {})?;
    start::boot(d, &vm, stages, op.token()).await?;
    start::mark_running(d, id, stages)?;
    start::wait_ready(d, id, stages).await?;
    access::load(d, id)
}
