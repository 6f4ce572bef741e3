//! The lifecycle (create, start, stop, kill, delete, the reaper, cleanup
//! after failures) driven through the service's verbs with a fake VMM (a
//! real `sleep` process, see crate::vmm::fake), a fake host and a real
//! SQLite store in a temporary home. No root, no network, no Firecracker:
//! what is exercised is the lifecycle's own logic — claims, settles,
//! records, releases — which the integration tests cover only end to end.

use std::sync::Arc;
use std::time::Duration;

use banger_core::config::Config;
use banger_core::paths::Paths;
use banger_core::store::{ImageRow, KernelRow, Store, StoredFile};
use banger_proto::methods::op::VmCreate;
use banger_proto::methods::vm::{CreateParams, DeleteParams, KillParams, StopParams, VmState};
use banger_proto::methods::NameParams;
use tokio_util::sync::CancellationToken;

use super::procs::Procs;
use super::service::Deps;
use super::{verbs, Vms};
use crate::caller::Caller;
use crate::disk::fake::FakeHost;
use crate::error::Error;
use crate::ops::Ops;
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
    let home = tempfile::tempdir().unwrap();
    let paths = Paths::resolve(Some(home.path()));
    for d in [&paths.state_dir, &paths.runtime_dir, &paths.vms_dir()] {
        std::fs::create_dir_all(d).unwrap();
    }
    let mut config = Config::default();
    config.network.enabled = false;
    config.vm.vmm = fake::KIND.into();
    config.vm.disk_backend = "copy".into();
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
        work_seed: Some(file("work-seed.ext4", 1 << 20)),
        created_at: "2026-01-01T00:00:00Z".into(),
        features: vec![],
    };
    store.insert_image(&image).unwrap();
    let vmm = Arc::new(FakeVmm::default());
    let (procs, exits) = Procs::new();
    let vms = Arc::new(Vms::new(Deps {
        paths,
        config: config.clone(),
        store: store.clone(),
        disks: Arc::new(FakeHost::new()),
        net_host: None,
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
        let p = CreateParams {
            name: Some(name.into()),
            image: None,
            vcpus: Some(1),
            memory_mib: Some(128),
            disk_bytes: Some(64 << 20),
            no_start,
            nat: false,
            ports: vec![],
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
