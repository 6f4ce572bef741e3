//! Tests against the real Firecracker, booting the stub guest
//! ([`banger_core::stub_guest`]). They need root (for /dev/kvm) and fail,
//! rather than skip, without it. Every Firecracker started here is killed
//! and reaped by [`TestVm`]'s drop, also when a test panics.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use banger_core::stub_guest;
use rustix::process::{Signal, WaitId, WaitidOptions};

use super::api::*;
use super::launch::{self, LaunchError, LaunchPaths, API_READY_TIMEOUT};
use crate::vmm::process;

const BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 pci=off";
const BANNER_TIMEOUT: Duration = Duration::from_secs(10);

fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the Firecracker tests need root (for /dev/kvm)"
    );
}

fn firecracker_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("BANGER_TEST_FIRECRACKER") {
        return bin.into();
    }
    banger_core::tools::find_firecracker(&Default::default())
        .expect("firecracker lookup")
        .expect("firecracker not found (PATH, or set BANGER_TEST_FIRECRACKER)")
}

fn paths_in(dir: &Path) -> LaunchPaths {
    std::fs::create_dir_all(dir).unwrap();
    LaunchPaths {
        api_socket: dir.join("api.sock"),
        console_log: dir.join("console.log"),
        vmm_log: dir.join("firecracker.log"),
        metrics: dir.join("metrics.json"),
    }
}

/// One Firecracker process; killed (SIGKILL) and reaped on drop.
struct TestVm {
    paths: LaunchPaths,
    pidfd: OwnedFd,
    pid: u32,
    api: ApiClient,
    /// Spawn to API socket up.
    ready_after: Duration,
}

impl Drop for TestVm {
    fn drop(&mut self) {
        let _ = process::signal(&self.pidfd, Signal::Kill);
        // Blocks only until the SIGKILL lands; ECHILD once already reaped.
        let _ = rustix::process::waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitidOptions::EXITED);
    }
}

async fn start(dir: &Path, id: &str) -> TestVm {
    require_root();
    let paths = paths_in(dir);
    let t = Instant::now();
    let spawned = launch::launch(&firecracker_bin(), id, &paths).expect("launch");
    let mut vm = TestVm {
        api: ApiClient::new(&paths.api_socket),
        paths,
        pid: spawned.pid,
        pidfd: spawned.pidfd,
        ready_after: Duration::ZERO,
    };
    launch::wait_api_ready(&vm.paths, &vm.pidfd, API_READY_TIMEOUT)
        .await
        .expect("API ready");
    vm.ready_after = t.elapsed();
    vm
}

fn stub_kernel(dir: &Path) -> PathBuf {
    let path = dir.join("stub.elf");
    std::fs::write(&path, stub_guest::elf()).unwrap();
    path
}

fn small_ext4(dir: &Path) -> PathBuf {
    let path = dir.join("root.ext4");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let mkfs = banger_core::tools::find_system_tool("mkfs.ext4").expect("mkfs.ext4");
    let out = Command::new(mkfs)
        .args(["-q", "-F"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "mkfs.ext4: {out:?}");
    path
}

/// Per-call timings of a configuration and boot.
#[derive(Debug, Default)]
struct BootTimes {
    machine_config: Duration,
    boot_source: Duration,
    drive: Duration,
    instance_start: Duration,
    banner: Duration,
}

/// Configures 1 vCPU / 128 MiB, the stub kernel and a root drive, starts
/// the instance and waits for the banner on the console.
async fn boot(vm: &TestVm, dir: &Path) -> BootTimes {
    let kernel = stub_kernel(dir);
    let root = small_ext4(dir);
    let mut times = BootTimes::default();
    let t = Instant::now();
    vm.api
        .put_machine_config(&MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: None,
            track_dirty_pages: None,
        })
        .await
        .unwrap();
    times.machine_config = t.elapsed();
    let t = Instant::now();
    vm.api
        .put_boot_source(&BootSource {
            kernel_image_path: kernel,
            boot_args: Some(BOOT_ARGS.into()),
            initrd_path: None,
        })
        .await
        .unwrap();
    times.boot_source = t.elapsed();
    let t = Instant::now();
    vm.api
        .put_drive(&Drive {
            drive_id: "rootfs".into(),
            path_on_host: root,
            is_root_device: true,
            is_read_only: false,
            cache_type: None,
            io_engine: None,
        })
        .await
        .unwrap();
    times.drive = t.elapsed();
    let t = Instant::now();
    vm.api.action(Action::InstanceStart).await.unwrap();
    times.instance_start = t.elapsed();
    wait_for_text(&vm.paths.console_log, stub_guest::BANNER).await;
    times.banner = t.elapsed();
    times
}

async fn wait_for_text(path: &Path, needle: &str) {
    let deadline = Instant::now() + BANNER_TIMEOUT;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{needle:?} not in {} after {BANNER_TIMEOUT:?}: {text:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn state(vm: &TestVm) -> String {
    vm.api.instance_info().await.unwrap().state
}

#[tokio::test]
async fn boots_the_stub_guest_and_reports_its_config() {
    let dir = tempfile::tempdir().unwrap();
    let vm = start(&dir.path().join("vm"), "boot-test").await;
    let info = vm.api.instance_info().await.unwrap();
    assert_eq!(info.state, STATE_NOT_STARTED);
    assert_eq!(info.id, "boot-test");
    assert_eq!(info.app_name, "Firecracker");
    let defaults = vm.api.get_machine_config().await.unwrap();
    assert_eq!((defaults.vcpu_count, defaults.mem_size_mib), (1, 128));
    let vsock_path = dir.path().join("vsock.sock");
    vm.api
        .put_vsock(&Vsock {
            guest_cid: 3,
            uds_path: vsock_path.clone(),
        })
        .await
        .unwrap();

    let times = boot(&vm, dir.path()).await;
    eprintln!("api ready after {:?}; {times:?}", vm.ready_after);
    assert_eq!(state(&vm).await, STATE_RUNNING);

    let cfg = vm.api.vm_config().await.unwrap();
    let root = dir.path().join("root.ext4");
    assert_eq!(
        cfg["drives"][0]["path_on_host"],
        root.to_str().unwrap(),
        "{cfg}"
    );
    assert_eq!(cfg["drives"][0]["is_root_device"], true, "{cfg}");
    assert_eq!(cfg["boot-source"]["boot_args"], BOOT_ARGS, "{cfg}");
    assert_eq!(cfg["machine-config"]["mem_size_mib"], 128, "{cfg}");
    assert_eq!(
        cfg["vsock"]["uds_path"],
        vsock_path.to_str().unwrap(),
        "{cfg}"
    );
    assert!(
        vsock_path.exists(),
        "firecracker listens on the vsock socket"
    );
}

#[tokio::test]
async fn pause_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let vm = start(&dir.path().join("vm"), "pause-test").await;
    boot(&vm, dir.path()).await;
    vm.api.pause().await.unwrap();
    assert_eq!(state(&vm).await, STATE_PAUSED);
    vm.api.pause().await.unwrap(); // pausing twice is fine
    vm.api.resume().await.unwrap();
    assert_eq!(state(&vm).await, STATE_RUNNING);
}

#[tokio::test]
async fn snapshot_then_restore_in_a_fresh_firecracker() {
    let dir = tempfile::tempdir().unwrap();
    let snap = dir.path().join("vm.snap");
    let mem = dir.path().join("vm.mem");
    {
        let vm = start(&dir.path().join("vm"), "snap-test").await;
        boot(&vm, dir.path()).await;
        vm.api.pause().await.unwrap();
        let t = Instant::now();
        vm.api
            .snapshot_create(&SnapshotCreate {
                snapshot_type: SnapshotType::Full,
                snapshot_path: snap.clone(),
                mem_file_path: mem.clone(),
            })
            .await
            .unwrap();
        eprintln!("snapshot_create (128 MiB) took {:?}", t.elapsed());
        assert_eq!(std::fs::metadata(&mem).unwrap().len(), 128 << 20);
        // Dropping kills this Firecracker.
    }
    // Same directory: the first process's socket is stale now.
    let vm = start(&dir.path().join("vm"), "snap-test").await;
    let t = Instant::now();
    vm.api
        .snapshot_load(&SnapshotLoad {
            snapshot_path: snap,
            mem_backend: MemBackend::file(&mem),
            resume_vm: true,
            enable_diff_snapshots: None,
        })
        .await
        .unwrap();
    eprintln!("snapshot_load took {:?}", t.elapsed());
    assert_eq!(state(&vm).await, STATE_RUNNING);
    // The earlier boot's log was rotated, not overwritten.
    let old_log = std::fs::read_to_string(dir.path().join("vm/firecracker.log.1")).unwrap();
    assert!(old_log.contains("Running Firecracker v"), "{old_log}");
}

#[tokio::test]
async fn ctrl_alt_del_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let vm = start(&dir.path().join("vm"), "metrics-test").await;
    // --metrics-path at launch initialised the metrics: a second time is refused.
    let err = vm
        .api
        .put_metrics(&Metrics {
            metrics_path: vm.paths.metrics.clone(),
        })
        .await
        .unwrap_err();
    assert!(matches!(err, ApiError::Fault { status: 400, .. }), "{err}");
    boot(&vm, dir.path()).await;

    vm.api.action(Action::SendCtrlAltDel).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        process::exited(&vm.pidfd).is_none(),
        "the stub ignores Ctrl+Alt+Del"
    );
    assert_eq!(state(&vm).await, STATE_RUNNING);

    vm.api.action(Action::FlushMetrics).await.unwrap();
    let text = std::fs::read_to_string(&vm.paths.metrics).unwrap();
    let last = text.lines().last().expect("a metrics line");
    let m: serde_json::Value = serde_json::from_str(last).unwrap();
    assert!(m.get("utc_timestamp_ms").is_some(), "{last}");
    assert!(m["api_server"].is_object(), "{last}");
}

#[tokio::test]
async fn faults_carry_firecrackers_message() {
    let dir = tempfile::tempdir().unwrap();
    let vm = start(&dir.path().join("vm"), "fault-test").await;
    let bad = MachineConfig {
        vcpu_count: 0,
        mem_size_mib: 128,
        smt: None,
        track_dirty_pages: None,
    };
    let err = vm.api.put_machine_config(&bad).await.unwrap_err();
    match &err {
        ApiError::Fault {
            method,
            path,
            status,
            fault_message,
        } => {
            assert_eq!(
                (method.as_str(), path.as_str(), *status),
                ("PUT", "/machine-config", 400)
            );
            assert!(fault_message.contains("vCPU"), "{fault_message}");
        }
        other => panic!("expected a fault, got {other:?}"),
    }
    eprintln!("fault: {err}");
    assert!(err
        .to_string()
        .starts_with("firecracker refused PUT /machine-config (400): "));

    boot(&vm, dir.path()).await;
    let post_boot = MachineConfig {
        vcpu_count: 1,
        ..bad
    };
    let err = vm.api.put_machine_config(&post_boot).await.unwrap_err();
    eprintln!("fault: {err}");
    assert!(
        matches!(&err, ApiError::Fault { fault_message, .. } if fault_message.contains("after starting")),
        "{err}"
    );
    let err = vm
        .api
        .snapshot_create(&SnapshotCreate {
            snapshot_type: SnapshotType::Full,
            snapshot_path: dir.path().join("s"),
            mem_file_path: dir.path().join("m"),
        })
        .await
        .unwrap_err();
    eprintln!("fault: {err}");
    assert!(
        matches!(err, ApiError::Fault { .. }),
        "snapshot of a running VM: {err}"
    );
}

#[tokio::test]
async fn a_stale_socket_does_not_block_the_launch() {
    let dir = tempfile::tempdir().unwrap();
    let paths = paths_in(&dir.path().join("vm"));
    drop(std::os::unix::net::UnixListener::bind(&paths.api_socket).unwrap());
    assert!(paths.api_socket.exists());
    let vm = start(&dir.path().join("vm"), "stale-test").await;
    assert_eq!(state(&vm).await, STATE_NOT_STARTED);
}

#[tokio::test]
async fn an_early_exit_is_reported_at_once_with_the_log() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let paths = paths_in(dir.path());

    // Not firecracker at all.
    let cmd = launch::command(Path::new("/bin/false"), "false-test", &paths).unwrap();
    let spawned = process::spawn(cmd).unwrap();
    let vm_guard = Reap(spawned.pidfd);
    let t = Instant::now();
    let err = launch::wait_api_ready(&paths, &vm_guard.0, API_READY_TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    assert!(
        matches!(&err, LaunchError::Exited { exit, .. } if exit.code == Some(1)),
        "{err}"
    );
    assert!(err.to_string().contains("exited with code 1"), "{err}");
    // Not reaped by wait_api_ready: the status is still ours to collect.
    assert_eq!(process::wait_exit(&vm_guard.0).await.code, Some(1));

    // Firecracker with a flag it does not know.
    let mut cmd = launch::command(&firecracker_bin(), "flag-test", &paths).unwrap();
    cmd.arg("--no-such-flag");
    let spawned = process::spawn(cmd).unwrap();
    let vm_guard = Reap(spawned.pidfd);
    let t = Instant::now();
    let err = launch::wait_api_ready(&paths, &vm_guard.0, API_READY_TIMEOUT)
        .await
        .unwrap_err();
    eprintln!("bad flag error after {:?}: {err}", t.elapsed());
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    assert!(err.to_string().contains("no-such-flag"), "{err}");
}

/// Kills and reaps a process on drop (for processes not in a [`TestVm`]).
struct Reap(OwnedFd);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = process::signal(&self.0, Signal::Kill);
        let _ = rustix::process::waitid(WaitId::PidFd(self.0.as_fd()), WaitidOptions::EXITED);
    }
}

#[tokio::test]
async fn sigkill_is_reported_and_the_logs_stay() {
    let dir = tempfile::tempdir().unwrap();
    let vm = start(&dir.path().join("vm"), "kill-test").await;
    boot(&vm, dir.path()).await;
    let (rss, cpu) = process::rss_and_cpu(vm.pid).unwrap();
    eprintln!(
        "firecracker running the stub: rss {} KiB, cpu {cpu:.3} s",
        rss >> 10
    );
    assert!(rss > 0);
    process::signal(&vm.pidfd, Signal::Kill).unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(10), process::wait_exit(&vm.pidfd))
        .await
        .unwrap();
    assert_eq!(exit.signal, Some(9), "{exit}");
    let console = std::fs::read_to_string(&vm.paths.console_log).unwrap();
    assert!(console.contains(stub_guest::BANNER));
    let log = std::fs::read_to_string(&vm.paths.vmm_log).unwrap();
    assert!(log.contains("Running Firecracker v"), "{log}");
    assert!(log.contains(":INFO:"), "--show-level: {log}");
    assert!(
        vm.api.instance_info().await.is_err(),
        "API gone with the process"
    );
}

/// The guest agent's channel on the real Firecracker: the vsock device
/// listens, `CONNECT 10789` reaches Firecracker, and since the stub guest
/// has no vsock driver (nothing accepts), Firecracker gives up on the
/// connection and the caller gets a clear error within its timeout — not a
/// hang.
#[tokio::test]
async fn vsock_connect_to_a_guest_without_an_agent_fails_fast_and_clearly() {
    use crate::guest::agent::CONNECT_TIMEOUT;
    use crate::vmm::firecracker::vsock::{self, VsockError};

    let dir = tempfile::tempdir().unwrap();
    let vm = start(&dir.path().join("vm"), "vsock-test").await;
    let uds = dir.path().join("vsock.sock");
    vm.api
        .put_vsock(&Vsock {
            guest_cid: 3,
            uds_path: uds.clone(),
        })
        .await
        .unwrap();
    boot(&vm, dir.path()).await;
    assert!(uds.exists(), "firecracker listens on the vsock socket");

    let t = Instant::now();
    let e = vsock::connect(&uds, banger_proto::agent::AGENT_VSOCK_PORT, CONNECT_TIMEOUT)
        .await
        .unwrap_err();
    let took = t.elapsed();
    eprintln!("CONNECT to a guest without an agent: {e} (after {took:?})");
    assert!(
        matches!(e, VsockError::Refused { .. } | VsockError::Timeout { .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("10789"), "{e}");
    assert!(
        took <= CONNECT_TIMEOUT + Duration::from_millis(500),
        "{took:?}"
    );
    // Firecracker is fine afterwards.
    assert_eq!(state(&vm).await, STATE_RUNNING);
}
