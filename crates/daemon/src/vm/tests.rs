//! The lifecycle (create, start, stop, kill, delete, the reaper, cleanup
//! after failures) driven through the service's verbs with a fake VMM (a
//! real `sleep` process, see crate::vmm::fake), a fake disk host and a real
//! SQLite store in a temporary home. No root, no network, no Firecracker:
//! what is exercised is the lifecycle's own logic — claims, settles,
//! records, releases — which the integration tests cover only end to end.
//!
//! The tests at the end run with networking on, against a fake network
//! host that keeps bridges, taps and the nftables tables as data
//! (crate::privileged::fake_net): addresses, taps and rules must follow
//! the VM through create, stop, start, a crash, a failed create and delete,
//! and nothing may be left behind. They run without a DNS server (`dns:
//! None`, as when its socket cannot be bound): the lifecycle never waits on
//! it, and the server itself is tested in crate::dns and tests/network.rs.

use std::sync::Arc;
use std::time::Duration;

use banger_core::config::Config;
use banger_core::paths::Paths;
use banger_core::store::{ImageRow, KernelRow, Store, StoredFile};
use banger_proto::methods::op::VmCreate;
use banger_proto::methods::vm::{
    CreateParams, DeleteParams, KillParams, PortMapping, StopParams, VmState,
};
use banger_proto::methods::NameParams;
use tokio_util::sync::CancellationToken;

use super::procs::Procs;
use super::service::Deps;
use super::{verbs, Vms};
use crate::caller::Caller;
use crate::disk::fake::FakeHost;
use crate::error::Error;
use crate::netfilter::{self, Plan, PortMap, Proto, VmNet};
use crate::ops::Ops;
use crate::privileged::fake_net::{Call, FakeNet, Tap};
use crate::privileged::NetHost;
use crate::vmm::backend::Vmm;
use crate::vmm::fake::{self, FakeVmm};
use crate::vmm::registry::Vmms;

struct World {
    _home: tempfile::TempDir,
    vms: Arc<Vms>,
    ops: Ops,
    vmm: Arc<FakeVmm>,
    image: ImageRow,
    alice: Caller,
}

fn world() -> World {
    world_with("copy", vec![], Arc::new(FakeHost::new()), true, None)
}

/// A world with networking on, against this fake host.
fn world_net(net: Arc<FakeNet>) -> World {
    world_with("copy", vec![], Arc::new(FakeHost::new()), true, Some(net))
}

/// A world whose VMs get root disks by `backend`, from an image with
/// `features`, made by `disks` (`seeded`: the image has a work seed, which
/// only the fake host can "grow"); `net`: networking on, against this fake
/// host.
fn world_with(
    backend: &str,
    features: Vec<String>,
    disks: Arc<dyn crate::privileged::DiskHost>,
    seeded: bool,
    net: Option<Arc<FakeNet>>,
) -> World {
    let home = tempfile::tempdir().unwrap();
    let paths = Paths::resolve(Some(home.path()));
    for d in [&paths.state_dir, &paths.runtime_dir, &paths.vms_dir()] {
        std::fs::create_dir_all(d).unwrap();
    }
    let mut config = Config::default();
    config.network.enabled = net.is_some();
    // Never systemd-resolved of the machine running the tests.
    config.network.resolved = false;
    config.vm.vmm = fake::KIND.into();
    config.vm.disk_backend = backend.into();
    let store = Arc::new(Store::open(&paths.db()).unwrap());
    // A kernel and an image on record, with real (small) files.
    let rootfs = paths.state_dir.join("rootfs.ext4");
    std::fs::write(&rootfs, vec![0u8; 1 << 20]).unwrap();
    std::fs::write(paths.state_dir.join("vmlinux"), b"not a kernel").unwrap();
    // The work disk is made from the seed (the fake host's mkfs makes no file).
    std::fs::write(paths.state_dir.join("work-seed.ext4"), vec![0u8; 1 << 20]).unwrap();
    let file = |rel: &str, size| StoredFile {
        rel_path: rel.into(),
        size,
        sha256: "0".repeat(64),
    };
    store
        .insert_kernel(&KernelRow {
            id: "k1".into(),
            name: "k".into(),
            owner_uid: 0,
            format: "elf".into(),
            release: None,
            vmlinux: file("vmlinux", 12),
            initrd: None,
            created_at: "2026-01-01T00:00:00Z".into(),
        })
        .unwrap();
    let image = ImageRow {
        id: "i1".into(),
        name: "img".into(),
        owner_uid: 0,
        kernel_id: "k1".into(),
        rootfs: file("rootfs.ext4", 1 << 20),
        work_seed: seeded.then(|| file("work-seed.ext4", 1 << 20)),
        created_at: "2026-01-01T00:00:00Z".into(),
        features,
    };
    store.insert_image(&image).unwrap();
    let vmm = Arc::new(FakeVmm::default());
    let (procs, exits) = Procs::new();
    let vms = Arc::new(Vms::new(Deps {
        paths,
        config: config.clone(),
        store: store.clone(),
        disks,
        net_host: net.map(|n| n as Arc<dyn NetHost>),
        vmms: Vmms::with(&config, vec![vmm.clone() as Arc<dyn Vmm>]),
        procs,
        dns: None,
        shutdown: CancellationToken::new(),
    }));
    tokio::spawn(super::reaper::run(vms.clone(), exits));
    World {
        _home: home,
        vms,
        ops: Ops::with_cancel_grace(store, Duration::from_secs(5)),
        vmm,
        image,
        alice: Caller {
            uid: 1000,
            gid: 1000,
            pid: 1,
        },
    }
}

impl World {
    /// `vm create` through the verb, waiting for its operation.
    async fn create(&self, name: &str, no_start: bool) -> Result<(), Error> {
        self.create_with(name, no_start, vec![]).await
    }

    async fn create_with(
        &self,
        name: &str,
        no_start: bool,
        ports: Vec<PortMapping>,
    ) -> Result<(), Error> {
        let p = CreateParams {
            name: Some(name.into()),
            image: None,
            vcpus: Some(1),
            memory_mib: Some(128),
            disk_bytes: Some(64 << 20),
            no_start,
            nat: false,
            ports,
            vmm: None,
        };
        let begun =
            verbs::create_begin(&self.vms, &self.ops, &self.alice, p, self.image.clone()).await?;
        let info = loop {
            let i = self
                .ops
                .wait(&begun.operation_id, None, 0, Duration::from_secs(10))
                .await
                .unwrap();
            if i.state.is_finished() {
                break i;
            }
        };
        match info.output::<VmCreate>() {
            Ok(vm) => {
                assert_eq!(vm.name, name);
                Ok(())
            }
            Err(e) => Err(Error::internal(e.to_string())),
        }
    }

    fn state(&self, name: &str) -> Option<VmState> {
        let row = self.vms.store.vm_by_name(name).unwrap()?;
        VmState::parse(&row.state)
    }

    fn pid(&self, name: &str) -> Option<u32> {
        let vm = super::access::find(&self.vms, &self.alice, name).ok()?;
        vm.runtime.vmm.map(|h| h.pid)
    }

    fn name(&self, name: &str) -> NameParams {
        NameParams { name: name.into() }
    }
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purposes: the reaper has not waited yet.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn create_runs_the_vm_and_stop_start_delete_follow_the_record() {
    let w = world();
    w.create("web", false).await.unwrap();
    assert_eq!(w.state("web"), Some(VmState::Running));
    let pid = w.pid("web").expect("a running VM records its VMM");
    assert!(alive(pid));
    assert_eq!(w.vmm.calls(), ["spawn", "configure", "boot"]);

    // A second start of a running VM is refused as invalid state, not busy.
    let e = verbs::start(&w.vms, &w.alice, w.name("web"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidState { .. }), "{e:?}");

    let stop = StopParams {
        name: "web".into(),
        timeout_secs: Some(5),
    };
    let r = verbs::stop(&w.vms, &w.alice, stop).await.unwrap();
    assert_eq!(r.ended_by.as_deref(), Some("guest"));
    assert_eq!(w.state("web"), Some(VmState::Stopped));
    assert!(!alive(pid), "stop leaves no VMM process");
    assert!(w.pid("web").is_none());

    let r = verbs::start(&w.vms, &w.alice, w.name("web")).await.unwrap();
    assert_eq!(r.vm.state, VmState::Running);
    let pid2 = w.pid("web").unwrap();
    assert_ne!(pid, pid2);

    let vm_dir = super::record::vm_dir(&w.vms.paths, &r.vm.id);
    assert!(vm_dir.is_dir());
    let del = DeleteParams {
        name: "web".into(),
        force: true,
    };
    verbs::delete(&w.vms, &w.alice, del).await.unwrap();
    assert_eq!(w.state("web"), None);
    assert!(!alive(pid2), "delete --force ends the VMM");
    assert!(!vm_dir.exists(), "delete removes the VM's files");
}

/// `auto` on this ext4 home with an image that can: the shared rootfs goes to
/// the VMM read-only, the VM's overlay disk beside it, the kernel is told to
/// run the agent first; a stop/start keeps the same overlay disk; delete
/// removes it and leaves the image's rootfs alone.
#[tokio::test]
async fn overlay_root_from_create_to_delete() {
    use crate::disk::RootBackend;
    use crate::privileged::SystemHost;
    let w = world_with(
        "auto",
        vec!["agent".into(), "overlay".into()],
        Arc::new(SystemHost),
        false,
        None,
    );
    let rootfs = w.vms.paths.state_dir.join("rootfs.ext4");
    let before = std::fs::read(&rootfs).unwrap();
    w.create("ov", false).await.unwrap();
    let vm = super::access::find(&w.vms, &w.alice, "ov").unwrap();
    let root = vm.runtime.root.clone().unwrap();
    assert_eq!(root.backend, RootBackend::Overlay, "{root:?}");
    assert_eq!(root.note, None);
    let vm_dir = super::record::vm_dir(&w.vms.paths, vm.id());
    assert_eq!(root.file, vm_dir.join("overlay.ext4"));
    assert!(root.file.is_file());
    let spec = w.vmm.specs.lock().unwrap()[0].clone();
    assert_eq!(spec.root_disk, rootfs);
    assert!(spec.root_read_only);
    assert_eq!(spec.overlay_disk.as_deref(), Some(root.file.as_path()));
    assert!(
        spec.boot_args.contains(
            " root=/dev/vda ro init=/usr/local/bin/banger-agent banger_overlay=/dev/vdc "
        ),
        "{}",
        spec.boot_args
    );
    let info = super::info::vm_info(&w.vms, &vm).unwrap();
    let disk = info.root_disk.unwrap();
    assert_eq!(
        (
            disk.backend.as_str(),
            disk.path.as_str(),
            disk.lower.as_deref()
        ),
        (
            "overlay",
            root.file.to_str().unwrap(),
            Some(rootfs.to_str().unwrap())
        )
    );

    let stop = StopParams {
        name: "ov".into(),
        timeout_secs: Some(5),
    };
    verbs::stop(&w.vms, &w.alice, stop).await.unwrap();
    verbs::start(&w.vms, &w.alice, w.name("ov")).await.unwrap();
    let again = w.vmm.specs.lock().unwrap()[1].clone();
    assert_eq!(
        (again.overlay_disk, again.root_read_only),
        (Some(root.file.clone()), true)
    );
    let del = DeleteParams {
        name: "ov".into(),
        force: true,
    };
    verbs::delete(&w.vms, &w.alice, del).await.unwrap();
    assert!(!root.file.exists() && !vm_dir.exists());
    assert_eq!(
        std::fs::read(&rootfs).unwrap(),
        before,
        "the image's rootfs"
    );
}

/// `auto` with an image that predates the overlay feature: a copy, and the
/// record and `vm show` say why.
#[tokio::test]
async fn auto_copies_for_an_image_without_overlay_and_says_why() {
    use crate::privileged::SystemHost;
    let w = world_with(
        "auto",
        vec!["agent".into()],
        Arc::new(SystemHost),
        false,
        None,
    );
    w.create("old", true).await.unwrap();
    let vm = super::access::find(&w.vms, &w.alice, "old").unwrap();
    let info = super::info::vm_info(&w.vms, &vm).unwrap();
    let disk = info.root_disk.unwrap();
    assert_eq!(disk.backend, "copy");
    assert_eq!(disk.lower, None);
    let note = disk.note.unwrap();
    assert!(
        note.contains("cannot do overlay") && note.contains("\"img\""),
        "{note}"
    );
}

#[tokio::test]
async fn the_reaper_settles_a_vmm_that_dies_behind_the_daemons_back() {
    let w = world();
    w.create("db", false).await.unwrap();
    let pid = w.pid("db").unwrap();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::Kill,
    )
    .unwrap();
    eventually("the reaper to settle the VM", || {
        w.state("db") == Some(VmState::Stopped)
    })
    .await;
    let vm = super::access::find(&w.vms, &w.alice, "db").unwrap();
    assert_eq!(vm.runtime.last_exit.unwrap().by, "crashed");
    assert!(vm.runtime.vmm.is_none());
}

#[tokio::test]
async fn kill_is_recorded_as_intended_not_as_a_crash() {
    let w = world();
    w.create("k", false).await.unwrap();
    let pid = w.pid("k").unwrap();
    let p = KillParams {
        name: "k".into(),
        signal: None,
    };
    verbs::kill(&w.vms, &w.alice, p).await.unwrap();
    // The signal is sent; the exit is settled by the reaper.
    eventually("the killed VM to be settled", || {
        w.state("k") == Some(VmState::Stopped)
    })
    .await;
    assert!(!alive(pid));
    let vm = super::access::find(&w.vms, &w.alice, "k").unwrap();
    assert_ne!(vm.runtime.last_exit.unwrap().by, "crashed");
}

#[tokio::test]
async fn a_create_that_fails_to_configure_leaves_nothing() {
    let w = world();
    w.vmm.fail_at(Some("configure"));
    let e = w.create("broken", false).await.unwrap_err();
    assert!(e.to_string().contains("injected failure"), "{e}");
    assert_eq!(w.state("broken"), None, "the record goes");
    let vms_dir = w.vms.paths.vms_dir();
    assert_eq!(std::fs::read_dir(&vms_dir).unwrap().count(), 0);
    // The spawned process was ended: no `sleep` of ours is left.
    assert_eq!(w.vmm.calls(), ["spawn", "configure"]);
    assert!(w.vms.procs.get("broken").is_none());
}

#[tokio::test]
async fn a_start_that_fails_to_boot_goes_back_to_stopped_and_ends_its_vmm() {
    let w = world();
    w.create("s", true).await.unwrap();
    assert_eq!(w.state("s"), Some(VmState::Stopped));
    assert!(w.vmm.calls().is_empty(), "--no-start never spawns");
    w.vmm.fail_at(Some("boot"));
    let e = verbs::start(&w.vms, &w.alice, w.name("s"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Vmm(_)), "{e:?}");
    assert_eq!(w.state("s"), Some(VmState::Stopped));
    let vm = super::access::find(&w.vms, &w.alice, "s").unwrap();
    assert!(vm.runtime.vmm.is_none());
    assert!(vm.runtime.active_root.is_none());
    // And it starts once the fault is gone.
    w.vmm.fail_at(None);
    verbs::start(&w.vms, &w.alice, w.name("s")).await.unwrap();
    assert_eq!(w.state("s"), Some(VmState::Running));
}

#[tokio::test]
async fn other_users_do_not_see_the_vm_and_names_are_unique() {
    let w = world();
    w.create("mine", true).await.unwrap();
    let bob = Caller {
        uid: 1001,
        gid: 1001,
        pid: 2,
    };
    let e = verbs::show(&w.vms, &bob, w.name("mine")).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    let e = w.create("mine", true).await.unwrap_err();
    assert!(matches!(e, Error::AlreadyExists { .. }), "{e:?}");
}

// --- pause / resume ---------------------------------------------------------

fn hint_of(e: &Error) -> Option<String> {
    match e {
        Error::InvalidState { hint, .. } => hint.clone(),
        _ => None,
    }
}

async fn delete_force(w: &World, name: &str) {
    let del = DeleteParams {
        name: name.into(),
        force: true,
    };
    verbs::delete(&w.vms, &w.alice, del).await.unwrap();
}

#[tokio::test]
async fn pause_and_resume_move_running_to_paused_and_back() {
    let w = world();
    w.create("p", false).await.unwrap();
    let pid = w.pid("p").unwrap();
    let r = verbs::pause(&w.vms, &w.alice, w.name("p")).await.unwrap();
    assert_eq!(r.vm.state, VmState::Paused);
    assert_eq!(w.state("p"), Some(VmState::Paused));
    assert_eq!(w.vmm.calls().last().map(String::as_str), Some("pause"));
    assert!(alive(pid), "a paused VM keeps its VMM");
    assert_eq!(r.vm.pid, Some(pid));

    // What a paused VM refuses, and how it says so.
    let e = verbs::pause(&w.vms, &w.alice, w.name("p"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already paused"), "{e}");
    let e = verbs::start(&w.vms, &w.alice, w.name("p"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidState { .. }), "{e:?}");
    assert_eq!(
        hint_of(&e).as_deref(),
        Some("resume it: banger vm resume p")
    );
    let e = verbs::ports(&w.vms, &w.alice, w.name("p"))
        .await
        .unwrap_err();
    assert_eq!(
        hint_of(&e).as_deref(),
        Some("resume it: banger vm resume p")
    );
    let del = DeleteParams {
        name: "p".into(),
        force: false,
    };
    let e = verbs::delete(&w.vms, &w.alice, del).await.unwrap_err();
    assert!(e.to_string().contains("--force"), "{e}");
    // Another user's paused VM does not exist for them.
    let bob = Caller {
        uid: 1001,
        gid: 1001,
        pid: 2,
    };
    let e = verbs::resume(&w.vms, &bob, w.name("p")).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");
    let e = verbs::pause(&w.vms, &bob, w.name("p")).await.unwrap_err();
    assert!(matches!(e, Error::NotFound { .. }), "{e:?}");

    let r = verbs::resume(&w.vms, &w.alice, w.name("p")).await.unwrap();
    assert_eq!(r.vm.state, VmState::Running);
    assert_eq!(w.vmm.calls().last().map(String::as_str), Some("resume"));
    assert_eq!(w.pid("p"), Some(pid), "resume is not a restart");
    let e = verbs::resume(&w.vms, &w.alice, w.name("p"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not paused (it is running)"), "{e}");
    delete_force(&w, "p").await;
    assert!(!alive(pid));
}

#[tokio::test]
async fn pause_of_a_stopped_vm_and_resume_of_a_stopped_vm_are_refused() {
    let w = world();
    w.create("s", true).await.unwrap();
    let e = verbs::pause(&w.vms, &w.alice, w.name("s"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidState { .. }), "{e:?}");
    assert!(e.to_string().contains("not running"), "{e}");
    let e = verbs::resume(&w.vms, &w.alice, w.name("s"))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("not paused (it is stopped)"), "{e}");
    assert_eq!(hint_of(&e).as_deref(), Some("start it: banger vm start s"));
    assert!(w.vmm.calls().is_empty(), "nothing reached the VMM");
    assert_eq!(w.state("s"), Some(VmState::Stopped));
}

#[tokio::test]
async fn a_failed_pause_or_resume_leaves_the_state_where_it_was() {
    let w = world();
    w.create("f", false).await.unwrap();
    w.vmm.fail_at(Some("pause"));
    let e = verbs::pause(&w.vms, &w.alice, w.name("f"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Vmm(_)), "{e:?}");
    assert_eq!(w.state("f"), Some(VmState::Running));
    w.vmm.fail_at(None);
    verbs::pause(&w.vms, &w.alice, w.name("f")).await.unwrap();
    w.vmm.fail_at(Some("resume"));
    verbs::resume(&w.vms, &w.alice, w.name("f"))
        .await
        .unwrap_err();
    assert_eq!(w.state("f"), Some(VmState::Paused));
    w.vmm.fail_at(None);
    delete_force(&w, "f").await;
}

#[tokio::test]
async fn stop_of_a_paused_vm_resumes_it_then_shuts_it_down() {
    let w = world();
    w.create("sp", false).await.unwrap();
    let pid = w.pid("sp").unwrap();
    verbs::pause(&w.vms, &w.alice, w.name("sp")).await.unwrap();
    let stop = StopParams {
        name: "sp".into(),
        timeout_secs: Some(5),
    };
    let r = verbs::stop(&w.vms, &w.alice, stop).await.unwrap();
    assert_eq!(r.ended_by.as_deref(), Some("guest"));
    assert_eq!(w.state("sp"), Some(VmState::Stopped));
    assert!(!alive(pid));
    let calls = w.vmm.calls();
    let tail: Vec<&str> = calls
        .iter()
        .rev()
        .take(3)
        .rev()
        .map(String::as_str)
        .collect();
    assert_eq!(tail, ["pause", "resume", "request_shutdown"]);
    let stages: Vec<&str> = r.stages.iter().map(|s| s.name.as_str()).collect();
    assert!(stages.contains(&"resume"), "{stages:?}");
}

#[tokio::test]
async fn kill_and_the_reaper_settle_a_paused_vm() {
    let w = world();
    w.create("k", false).await.unwrap();
    verbs::pause(&w.vms, &w.alice, w.name("k")).await.unwrap();
    let pid = w.pid("k").unwrap();
    // A VMM that dies while paused is settled like a running one.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::Kill,
    )
    .unwrap();
    eventually("the reaper to settle the paused VM", || {
        w.state("k") == Some(VmState::Stopped)
    })
    .await;
    let vm = super::access::find(&w.vms, &w.alice, "k").unwrap();
    assert_eq!(vm.runtime.last_exit.unwrap().by, "crashed");

    // `vm kill` of a paused VM.
    verbs::start(&w.vms, &w.alice, w.name("k")).await.unwrap();
    verbs::pause(&w.vms, &w.alice, w.name("k")).await.unwrap();
    let pid = w.pid("k").unwrap();
    let p = KillParams {
        name: "k".into(),
        signal: None,
    };
    let r = verbs::kill(&w.vms, &w.alice, p).await.unwrap();
    eventually("the killed paused VM to be settled", || {
        w.state("k") == Some(VmState::Stopped)
    })
    .await;
    assert!(!alive(pid));
    assert_eq!(r.ended_by.as_deref(), Some("sigkill"));
}

/// Daemon start: the VMM's own run state decides `running` or `paused`,
/// whatever the store says (and a pause cut off mid-way is settled by it).
#[tokio::test]
async fn re_adoption_trusts_the_vmms_run_state() {
    let w = world();
    w.create("r", false).await.unwrap();
    verbs::pause(&w.vms, &w.alice, w.name("r")).await.unwrap();
    let pid = w.pid("r").unwrap();
    let id = w.vms.store.vm_by_name("r").unwrap().unwrap().id;
    let readopt = |state: VmState| {
        w.vms
            .store
            .update_vm(&id, |row| row.state = state.as_str().into())
            .unwrap();
        w.vms.procs.forget(&id, pid);
        super::reaper::reconcile_at_start(&w.vms)
    };
    // Recorded paused, VMM paused: stays paused, same process.
    readopt(VmState::Paused).await.unwrap();
    assert_eq!(w.state("r"), Some(VmState::Paused));
    assert_eq!(w.pid("r"), Some(pid));
    // Recorded running, VMM paused: the VMM wins.
    readopt(VmState::Running).await.unwrap();
    assert_eq!(w.state("r"), Some(VmState::Paused));
    // A resume cut off before it reached the VMM: still paused.
    readopt(VmState::Resuming).await.unwrap();
    assert_eq!(w.state("r"), Some(VmState::Paused));
    // Recorded paused, VMM running (e.g. resumed behind banger's back).
    w.vmm.paused.lock().unwrap().clear();
    readopt(VmState::Paused).await.unwrap();
    assert_eq!(w.state("r"), Some(VmState::Running));
    assert!(alive(pid), "re-adoption never ends a live VMM");
    delete_force(&w, "r").await;
    assert!(!alive(pid));
}

#[tokio::test]
async fn restart_of_a_paused_vm_boots_it_again() {
    let w = world();
    w.create("rp", false).await.unwrap();
    let pid = w.pid("rp").unwrap();
    verbs::pause(&w.vms, &w.alice, w.name("rp")).await.unwrap();
    let p = StopParams {
        name: "rp".into(),
        timeout_secs: Some(5),
    };
    let r = verbs::restart(&w.vms, &w.alice, p).await.unwrap();
    assert_eq!(r.vm.state, VmState::Running);
    assert!(!alive(pid));
    let pid2 = w.pid("rp").unwrap();
    assert_ne!(pid, pid2);
    delete_force(&w, "rp").await;
}

// ---- With networking on (a fake network host) ----

fn net_world() -> (World, Arc<FakeNet>) {
    let net = Arc::new(FakeNet::new());
    (world_net(net.clone()), net)
}

impl World {
    fn id(&self, name: &str) -> String {
        self.vms.store.vm_by_name(name).unwrap().unwrap().id
    }

    fn address(&self, id: &str) -> Option<std::net::Ipv4Addr> {
        self.vms.store.vm_address(id).unwrap()
    }
}

fn ip(s: &str) -> std::net::Ipv4Addr {
    s.parse().unwrap()
}

/// The tables the fake host holds now (None: no table at all).
fn tables(net: &FakeNet) -> Option<netfilter::Table> {
    netfilter::current(net).unwrap()
}

/// The tables banger should hold with these VMs running: the default
/// bridge and subnet, the fake's uplink.
fn expected(vms: Vec<VmNet>) -> netfilter::Table {
    netfilter::desired(&Plan {
        bridge: "br-banger".into(),
        subnet: (ip("172.16.213.0"), 24),
        gateway: ip("172.16.213.1"),
        vm_to_vm: false,
        uplink: Some("eth0".into()),
        vms,
    })
    .unwrap()
}

fn vm_net(w: &World, name: &str, ports: Vec<PortMap>) -> VmNet {
    let id = w.id(name);
    VmNet {
        ip: w.address(&id).unwrap(),
        tap: super::network::tap_name(&id),
        mac: super::network::mac_for(&id),
        vm_id: id,
        vm_name: name.into(),
        nat: false,
        ports,
    }
}

/// Rules of the tables that name VM `name` in their comment.
fn rules_of_vm(t: &netfilter::Table, name: &str) -> usize {
    let tag = format!("vm={name}");
    t.rules
        .iter()
        .filter(|r| r.comment.as_deref() == Some(tag.as_str()))
        .count()
}

#[tokio::test]
async fn networking_follows_the_vm_through_create_stop_start_and_delete() {
    let (w, net) = net_world();
    w.create("web", false).await.unwrap();
    let id = w.id("web");
    let tap = super::network::tap_name(&id);

    // create: the first address of the subnet, the bridge, the tap as an
    // isolated port of it, and the VM's rules synced.
    assert_eq!(w.address(&id), Some(ip("172.16.213.2")));
    let s = net.state();
    assert_eq!(s.bridges["br-banger"], (ip("172.16.213.1"), 24));
    assert_eq!(
        s.taps,
        [(
            tap.clone(),
            Tap {
                bridge: "br-banger".into(),
                isolated: true,
            }
        )]
        .into()
    );
    let calls = net.calls();
    let pos = |c: &Call| calls.iter().position(|x| x == c).unwrap();
    let made = pos(&Call::TapCreate(tap.clone(), "br-banger".into(), true));
    assert!(
        pos(&Call::BridgeEnsure(
            "br-banger".into(),
            ip("172.16.213.1"),
            24
        )) < made
    );
    assert!(
        made < pos(&Call::NftApply),
        "rules after the tap: {calls:?}"
    );
    let t = tables(&net).expect("the first sync writes the tables");
    assert_eq!(t, expected(vec![vm_net(&w, "web", vec![])]));
    assert!(rules_of_vm(&t, "web") > 0);
    assert!(!s.ip_forward, "no NAT, no ports: no forwarding asked for");
    // The VMM is given that tap, MAC and address.
    let vm = super::access::find(&w.vms, &w.alice, "web").unwrap();
    let attach = vm.runtime.net.expect("the attach is on record");
    assert_eq!(
        (
            attach.tap.as_str(),
            attach.ip,
            attach.gateway,
            attach.prefix
        ),
        (tap.as_str(), ip("172.16.213.2"), ip("172.16.213.1"), 24)
    );
    assert_eq!(attach.mac, super::network::mac_for(&id));

    // stop: the tap and the rules go; the address stays the VM's.
    let stop = StopParams {
        name: "web".into(),
        timeout_secs: Some(5),
    };
    verbs::stop(&w.vms, &w.alice, stop).await.unwrap();
    assert!(net.taps().is_empty(), "{:?}", net.taps());
    let t = tables(&net).unwrap();
    assert_eq!(t, expected(vec![]));
    assert_eq!(rules_of_vm(&t, "web"), 0);
    assert_eq!(w.address(&id), Some(ip("172.16.213.2")));

    // start: the same tap and address again.
    verbs::start(&w.vms, &w.alice, w.name("web")).await.unwrap();
    assert_eq!(net.taps(), std::slice::from_ref(&tap));
    assert_eq!(
        tables(&net).unwrap(),
        expected(vec![vm_net(&w, "web", vec![])])
    );

    // delete: nothing left, and the address is free for the next VM.
    let del = DeleteParams {
        name: "web".into(),
        force: true,
    };
    verbs::delete(&w.vms, &w.alice, del).await.unwrap();
    assert!(net.taps().is_empty());
    assert_eq!(tables(&net).unwrap(), expected(vec![]));
    assert_eq!(w.address(&id), None);
    w.create("next", true).await.unwrap();
    assert_eq!(w.address(&w.id("next")), Some(ip("172.16.213.2")));
    assert!(net.taps().is_empty(), "--no-start makes no tap");
}

#[tokio::test]
async fn a_crashed_vm_loses_its_tap_and_rules_but_keeps_its_address() {
    let (w, net) = net_world();
    w.create("a", false).await.unwrap();
    w.create("b", false).await.unwrap();
    let (a, b) = (w.id("a"), w.id("b"));
    assert_eq!(net.taps().len(), 2);
    assert_eq!(
        tables(&net).unwrap(),
        expected(vec![vm_net(&w, "a", vec![]), vm_net(&w, "b", vec![])])
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(w.pid("a").unwrap() as i32).unwrap(),
        rustix::process::Signal::Kill,
    )
    .unwrap();
    eventually("the reaper to settle the VM", || {
        w.state("a") == Some(VmState::Stopped)
    })
    .await;
    // Settled means released: the reaper settles only after the release.
    assert_eq!(net.taps(), [super::network::tap_name(&b)]);
    assert_eq!(
        tables(&net).unwrap(),
        expected(vec![vm_net(&w, "b", vec![])])
    );
    assert_eq!(w.address(&a), Some(ip("172.16.213.2")));
    assert_eq!(w.address(&b), Some(ip("172.16.213.3")));
}

#[tokio::test]
async fn a_create_whose_tap_fails_leaves_nothing_behind() {
    let (w, net) = net_world();
    net.fail_tap_create
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let e = w.create("t", false).await.unwrap_err();
    assert!(e.to_string().contains("injected failure"), "{e}");
    assert_eq!(w.state("t"), None, "the record goes");
    assert!(net.taps().is_empty());
    assert!(w.vmm.calls().is_empty(), "no VMM without a network");
    assert_eq!(
        std::fs::read_dir(w.vms.paths.vms_dir()).unwrap().count(),
        0,
        "the disks go"
    );
    if let Some(t) = tables(&net) {
        assert_eq!(rules_of_vm(&t, "t"), 0);
    }
    // The address went with the record: the next VM gets it.
    net.fail_tap_create
        .store(false, std::sync::atomic::Ordering::SeqCst);
    w.create("u", false).await.unwrap();
    assert_eq!(w.address(&w.id("u")), Some(ip("172.16.213.2")));
}

#[tokio::test]
async fn a_create_whose_rules_fail_removes_the_tap_it_made() {
    let (w, net) = net_world();
    net.fail_nft_apply
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let e = w.create("r", false).await.unwrap_err();
    assert!(e.to_string().contains("injected failure"), "{e}");
    assert_eq!(w.state("r"), None);
    let calls = net.calls();
    assert!(
        calls.iter().any(|c| matches!(c, Call::TapCreate(..))),
        "{calls:?}"
    );
    assert!(net.taps().is_empty(), "the tap made for it is gone");
    assert!(tables(&net).is_none(), "no table was ever written");
    assert!(w.vmm.calls().is_empty());
}

#[tokio::test]
async fn a_published_port_is_in_the_rules_while_the_vm_runs_and_gone_after_delete() {
    let (w, net) = net_world();
    // A port nothing listens on (the check at create binds it).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mapping = PortMapping {
        host_ip: Some(ip("127.0.0.1")),
        host_port: port,
        guest_port: 80,
        proto: "tcp".into(),
    };
    w.create_with("web", false, vec![mapping]).await.unwrap();
    let published = PortMap {
        host_ip: Some(ip("127.0.0.1")),
        host_port: port,
        guest_port: 80,
        proto: Proto::Tcp,
    };
    let t = tables(&net).unwrap();
    assert_eq!(
        t,
        expected(vec![vm_net(&w, "web", vec![published.clone()])])
    );
    assert_ne!(
        t,
        expected(vec![vm_net(&w, "web", vec![])]),
        "the port makes a difference to the tables"
    );
    let dnat = t
        .rules_of("prerouting")
        .filter(|r| r.comment.as_deref() == Some("vm=web"))
        .count();
    assert_eq!(dnat, 1, "one DNAT rule for the port");
    assert!(net.state().ip_forward, "a published port needs forwarding");

    let del = DeleteParams {
        name: "web".into(),
        force: true,
    };
    let id = w.id("web");
    verbs::delete(&w.vms, &w.alice, del).await.unwrap();
    let t = tables(&net).unwrap();
    assert_eq!(t, expected(vec![]));
    assert_eq!(t.rules_of("prerouting").count(), 0);
    assert!(w.vms.store.ports_of(&id).unwrap().is_empty());
    assert!(net.taps().is_empty());
}

#[tokio::test]
async fn doctor_network_check_reads_the_hosts_routes() {
    use banger_proto::methods::daemon::CheckStatus;
    let (w, _net) = net_world();
    let c = super::checks::network(&w.vms);
    assert_eq!(c.status, CheckStatus::Ok, "{c:?}");
    assert!(c.detail.contains("br-banger"), "{}", c.detail);
    let mut busy = FakeNet::new();
    busy.routes = vec!["172.16.0.0/12 via 192.0.2.1 dev eth0".into()];
    let w = world_net(Arc::new(busy));
    let c = super::checks::network(&w.vms);
    assert_eq!(c.status, CheckStatus::Warn, "{c:?}");
    assert!(c.detail.contains("172.16.0.0/12"), "{}", c.detail);
    // Without networking: skipped, and the DNS check says so too.
    let off = world();
    assert_eq!(super::checks::network(&off.vms).status, CheckStatus::Skip);
    assert_eq!(super::checks::dns(&off.vms).status, CheckStatus::Skip);
}
