//! QEMU (`-M microvm`) as a [`Vmm`]: one process per VM, configured entirely
//! on its command line and controlled over QMP. The building blocks (command
//! line, launch, QMP client) live in [`super::qemu`]; this file maps the
//! lifecycle's verbs onto them.
//!
//! - `spawn` starts QEMU with the whole machine on its command line and the
//!   vCPUs stopped (`-S`), and returns once QMP answers; `configure` has
//!   nothing left to do; `boot` is QMP `cont`. So the stages time the same
//!   things as with Firecracker.
//! - `request_shutdown` sends `system_powerdown`, the ACPI power button.
//!   microvm runs with `acpi=off`, so this is a no-op in the guest (QEMU
//!   accepts the command all the same): a guest is stopped cleanly by its
//!   agent's `poweroff` (a clean shutdown ending in a reset, which
//!   `-no-reboot` turns into QEMU's exit), else the lifecycle escalates to
//!   SIGTERM, on which QEMU exits at once with code 0.
//!   [`Vmm::shutdown_reaches_guest`] says so, so the lifecycle does not wait
//!   for a power-off that cannot come.
//! - `agent_connect` connects to the virtio-serial port's chardev socket
//!   (`agent.sock`): vsock would need `/dev/vhost-vsock` on the host.
//! - `pause`/`resume` are QMP `stop`/`cont`; `status` maps QMP's run state
//!   onto Firecracker's words (`Running`, `Paused`, `Not started`).
//! - Acceleration: KVM where QEMU can use it, else TCG (software emulation),
//!   decided once per daemon ([`QemuVmm::accel`]).
//! - The version/feature check and the KVM probe run QEMU (up to 5 s each):
//!   both run on blocking threads, once, and callers arriving meanwhile
//!   await the same answer ([`super::probe`]).

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use banger_core::tools::{self, Version};
use serde_json::json;
use tokio::net::UnixStream;
use tokio::sync::OnceCell;

use super::backend::{LaunchSpec, Vmm, VmmError, VmmHandle};
use super::probe::{off_runtime, BinaryCheck};
use super::process;
use super::qemu::launch::{self, Accel, Features, LaunchPaths, QMP_READY_TIMEOUT};
use super::qemu::qmp::{self, Qmp};

pub const KIND: &str = "qemu";

/// The oldest QEMU banger supports (Debian 12's; `server=on` chardev syntax,
/// microvm `x-option-roms`).
pub const QEMU_MIN: Version = Version::new(7, 2, 0);

/// Bound on `qemu-system-x86_64 --version` and `-help`.
const TOOL_TIMEOUT: Duration = Duration::from_secs(5);

/// How the acceleration is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AccelMode {
    /// KVM when `/dev/kvm` opens and a probe shows QEMU can run a guest with
    /// it; TCG otherwise.
    #[default]
    Auto,
    Kvm,
    Tcg,
}

impl FromStr for AccelMode {
    type Err = String;

    fn from_str(s: &str) -> Result<AccelMode, String> {
        match s {
            "auto" => Ok(AccelMode::Auto),
            "kvm" => Ok(AccelMode::Kvm),
            "tcg" => Ok(AccelMode::Tcg),
            other => Err(format!(
                "unknown QEMU acceleration {other:?} (auto, kvm or tcg)"
            )),
        }
    }
}

/// How the daemon runs QEMU.
#[derive(Debug, Clone, Default)]
pub struct QemuOptions {
    /// The binary; `None`: `qemu-system-x86_64` in PATH.
    pub binary: Option<PathBuf>,
    pub accel: AccelMode,
}

pub struct QemuVmm {
    options: QemuOptions,
    /// `--version` and `-help`: re-run only when the binary changes.
    checked: BinaryCheck<Features>,
    /// The acceleration and why, decided once (the KVM probe runs on a
    /// blocking thread).
    accel: OnceCell<(Accel, String)>,
}

impl QemuVmm {
    pub fn new(options: QemuOptions) -> QemuVmm {
        QemuVmm {
            options,
            checked: BinaryCheck::default(),
            accel: OnceCell::new(),
        }
    }

    /// The acceleration QEMU VMs get on this host: `"kvm"` or `"tcg"`
    /// (`"none"` while no QEMU binary is found). The first call may run the
    /// KVM probe (~100 ms here, 5 s at most, on a blocking thread); the
    /// answer is then fixed for the daemon's lifetime. A running VM's own
    /// acceleration is in its [`Vmm::effective_config`] (`accel`).
    pub async fn accel(&self) -> &'static str {
        match self.binary() {
            Ok(bin) => self.decide_accel(&bin).await.as_str(),
            Err(_) => "none",
        }
    }

    /// Why [`QemuVmm::accel`] chose what it chose (`None` before it did).
    pub fn accel_reason(&self) -> Option<&str> {
        self.accel.get().map(|(_, why)| why.as_str())
    }

    fn binary(&self) -> Result<PathBuf, VmmError> {
        match &self.options.binary {
            Some(p) if tools::is_executable_file(p) => Ok(p.clone()),
            Some(p) => Err(VmmError::Unavailable(format!(
                "{} is not an executable file",
                p.display()
            ))),
            None => tools::find_in_path(launch::BINARY).ok_or_else(|| {
                VmmError::Unavailable(format!(
                    "{} not found in PATH (Debian/Ubuntu: apt install qemu-system-x86)",
                    launch::BINARY
                ))
            }),
        }
    }

    /// The version check and feature detection, cached per binary and mtime.
    async fn check(&self, bin: &Path) -> Result<Features, VmmError> {
        self.checked
            .get(bin, check_binary)
            .await
            .map_err(VmmError::Unavailable)
    }

    async fn decide_accel(&self, bin: &Path) -> Accel {
        self.accel
            .get_or_init(|| async {
                let (accel, why) = match self.options.accel {
                    AccelMode::Kvm => (Accel::Kvm, "configured".to_string()),
                    AccelMode::Tcg => (Accel::Tcg, "configured".to_string()),
                    AccelMode::Auto => {
                        let bin = bin.to_path_buf();
                        match off_runtime(move || kvm_usable(&bin)).await {
                            Ok(()) => (Accel::Kvm, "qemu runs KVM guests here".to_string()),
                            Err(why) => (Accel::Tcg, format!("KVM is not usable: {why}")),
                        }
                    }
                };
                tracing::info!(accel = accel.as_str(), reason = %why, "QEMU acceleration");
                (accel, why)
            })
            .await
            .0
    }
}

/// `--version` ≥ [`QEMU_MIN`], and whether `-help` lists `-sandbox`.
fn check_binary(bin: &Path) -> Result<Features, String> {
    let v = tools::program_version(bin, TOOL_TIMEOUT)
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    if v < QEMU_MIN {
        return Err(format!(
            "{}: QEMU {v} is older than {QEMU_MIN}, the oldest banger supports",
            bin.display()
        ));
    }
    let mut help = banger_core::proc::Cmd::new(bin);
    help.arg("-help")
        .stderr(banger_core::proc::Out::Null)
        .timeout(TOOL_TIMEOUT)
        .command_mut()
        .env_clear();
    let help = help.output().map_err(|e| e.to_string())?;
    let help = String::from_utf8_lossy(&help.stdout);
    Ok(Features {
        sandbox: launch::help_lists(&help, "-sandbox"),
    })
}

/// `/dev/kvm` opens read-write and QEMU runs a microvm with `-accel kvm`.
fn kvm_usable(bin: &Path) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm: {e}"))?;
    launch::probe_kvm(bin, launch::PROBE_TIMEOUT)
}

/// QMP's run state in Firecracker's words (`Running`, `Paused`, `Not
/// started`); other states (`shutdown`, `internal-error`,
/// `guest-panicked`, ...) are passed through as QEMU names them.
pub fn status_word(status: &qmp::StatusInfo) -> String {
    match status.status.as_str() {
        "running" => "Running".into(),
        "paused" | "suspended" => "Paused".into(),
        "prelaunch" => "Not started".into(),
        other => other.into(),
    }
}

async fn connect(h: &VmmHandle) -> Result<Qmp, VmmError> {
    Qmp::connect(&h.api_socket, qmp::DEFAULT_TIMEOUT)
        .await
        .map_err(VmmError::from)
}

#[async_trait]
impl Vmm for QemuVmm {
    fn kind(&self) -> &'static str {
        KIND
    }

    async fn preflight(&self) -> Result<(), VmmError> {
        let bin = self.binary()?;
        self.check(&bin).await?;
        self.decide_accel(&bin).await;
        Ok(())
    }

    async fn spawn(&self, spec: &LaunchSpec) -> Result<(VmmHandle, OwnedFd), VmmError> {
        let bin = self.binary()?;
        let features = self.check(&bin).await?;
        let accel = self.decide_accel(&bin).await;
        let paths = LaunchPaths::new(&spec.run_dir, &spec.vm_dir);
        let spawned = launch::launch(&bin, spec, accel, features, &paths)?;
        if let Err(e) = launch::wait_qmp_ready(&paths, &spawned.pidfd, QMP_READY_TIMEOUT).await {
            // Nobody else knows this process yet: end and reap it here.
            let _ = process::signal(&spawned.pidfd, rustix::process::Signal::Kill);
            process::wait_exit(&spawned.pidfd).await;
            return Err(e.into());
        }
        let handle = VmmHandle {
            kind: KIND.into(),
            pid: spawned.pid,
            start_time: spawned.start_time,
            api_socket: paths.qmp_socket,
            metrics: None,
            agent_socket: Some(paths.agent_socket),
            accel: Some(accel.as_str().into()),
        };
        Ok((handle, spawned.pidfd))
    }

    /// Nothing: the machine was described on QEMU's command line at spawn.
    async fn configure(&self, _h: &VmmHandle, _spec: &LaunchSpec) -> Result<(), VmmError> {
        Ok(())
    }

    async fn boot(&self, h: &VmmHandle) -> Result<(), VmmError> {
        connect(h).await?.cont().await.map_err(VmmError::from)
    }

    /// `system_powerdown`; a no-op in a microvm guest (no ACPI): see the
    /// module documentation.
    async fn request_shutdown(&self, h: &VmmHandle) -> Result<(), VmmError> {
        connect(h)
            .await?
            .system_powerdown()
            .await
            .map_err(VmmError::from)
    }

    fn shutdown_reaches_guest(&self) -> bool {
        false
    }

    /// The virtio-serial port's chardev socket. It accepts one client at a
    /// time (a second waits until the first hangs up) and accepts even when
    /// nothing in the guest has the port open: then requests are never
    /// answered and the caller's timeout reports it.
    async fn agent_connect(
        &self,
        h: &VmmHandle,
        timeout: Duration,
    ) -> Result<UnixStream, VmmError> {
        let path = h.agent_socket.as_ref().ok_or_else(|| {
            VmmError::AgentChannel("the VM was started without an agent port".into())
        })?;
        match tokio::time::timeout(timeout, UnixStream::connect(path)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(VmmError::AgentChannel(format!(
                "cannot connect to the agent port's socket {}: {e}",
                path.display()
            ))),
            Err(_) => Err(VmmError::AgentChannel(format!(
                "the agent port's socket {} did not accept within {} ms (another client holds it?)",
                path.display(),
                timeout.as_millis()
            ))),
        }
    }

    async fn pause(&self, h: &VmmHandle) -> Result<(), VmmError> {
        connect(h).await?.stop().await.map_err(VmmError::from)
    }

    async fn resume(&self, h: &VmmHandle) -> Result<(), VmmError> {
        connect(h).await?.cont().await.map_err(VmmError::from)
    }

    async fn status(&self, h: &VmmHandle) -> Result<String, VmmError> {
        let status = connect(h)
            .await?
            .query_status()
            .await
            .map_err(VmmError::from)?;
        Ok(status_word(&status))
    }

    async fn metrics(&self, _h: &VmmHandle) -> Result<Option<serde_json::Value>, VmmError> {
        Ok(None)
    }

    /// `{"argv": [...], "accel": "tcg", "status": {"status", "running"},
    /// "version": {...}}`: the command line QEMU runs with (read from
    /// /proc, so it is also right after a daemon restart) and its QMP view.
    async fn effective_config(&self, h: &VmmHandle) -> Result<serde_json::Value, VmmError> {
        let gone = || VmmError::Api(format!("the QEMU process {} is gone", h.pid));
        if process::proc_start_time(h.pid).map_err(|_| gone())? != h.start_time {
            return Err(gone());
        }
        let argv = launch::proc_cmdline(h.pid).map_err(|_| gone())?;
        let accel = argv
            .windows(2)
            .find(|w| w[0] == "-accel")
            .map(|w| w[1].clone());
        let mut q = connect(h).await?;
        let status = q.query_status().await.map_err(VmmError::from)?;
        let version = q.greeting().version.clone();
        Ok(json!({
            "argv": argv,
            "accel": accel,
            "status": status,
            "version": version,
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;
    use std::time::Instant;

    use banger_core::stub_guest;
    use rustix::process::{Signal, WaitId, WaitidOptions};

    use super::*;
    use crate::vmm::backend::NetAttach;

    const BANNER_TIMEOUT: Duration = Duration::from_secs(10);

    /// A QEMU process; killed (SIGKILL) and reaped on drop, also when the
    /// test panics.
    struct Running {
        handle: VmmHandle,
        pidfd: OwnedFd,
    }

    impl Drop for Running {
        fn drop(&mut self) {
            let _ = process::signal(&self.pidfd, Signal::Kill);
            // Blocks only until the SIGKILL lands; ECHILD once reaped.
            let _ =
                rustix::process::waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitidOptions::EXITED);
        }
    }

    fn vmm() -> QemuVmm {
        QemuVmm::new(QemuOptions::default())
    }

    /// A VM spec with the PVH stub as kernel and two small raw disks.
    fn stub_spec(dir: &Path) -> LaunchSpec {
        let run_dir = dir.join("run");
        let vm_dir = dir.join("vm");
        std::fs::create_dir_all(&run_dir).unwrap();
        std::fs::create_dir_all(&vm_dir).unwrap();
        let kernel = dir.join("stub-pvh.elf");
        std::fs::write(&kernel, stub_guest::pvh_elf()).unwrap();
        let disk = |name: &str| {
            let p = dir.join(name);
            std::fs::File::create(&p).unwrap().set_len(8 << 20).unwrap();
            p
        };
        LaunchSpec {
            vm_id: "qemu-test".into(),
            vcpus: 1,
            memory_mib: 128,
            kernel,
            initrd: None,
            boot_args: "console=ttyS0".into(),
            root_disk: disk("root.img"),
            root_read_only: false,
            work_disk: disk("work.img"),
            overlay_disk: None,
            net: None,
            run_dir,
            vm_dir,
        }
    }

    async fn spawn(vmm: &QemuVmm, spec: &LaunchSpec) -> (Running, Duration) {
        vmm.preflight().await.expect("preflight");
        let t = Instant::now();
        let (handle, pidfd) = vmm.spawn(spec).await.expect("spawn");
        (Running { handle, pidfd }, t.elapsed())
    }

    async fn wait_for_text(path: &Path, text: &str) -> Duration {
        let t = Instant::now();
        loop {
            if std::fs::read_to_string(path).is_ok_and(|s| s.contains(text)) {
                return t.elapsed();
            }
            assert!(
                t.elapsed() < BANNER_TIMEOUT,
                "{text:?} did not appear in {}",
                path.display()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    fn console(spec: &LaunchSpec) -> PathBuf {
        spec.vm_dir.join(crate::vm::record::CONSOLE_LOG)
    }

    #[tokio::test]
    async fn boots_the_pvh_stub_pauses_and_resumes() {
        let dir = tempfile::tempdir().unwrap();
        let spec = stub_spec(dir.path());
        let vmm = vmm();
        let (vm, ready_after) = spawn(&vmm, &spec).await;
        let h = &vm.handle;
        assert_eq!(h.kind, "qemu");
        assert_eq!(h.api_socket, spec.run_dir.join("qmp.sock"));
        assert!(h.metrics.is_none());
        assert!(
            spec.run_dir.join("agent.sock").exists(),
            "agent socket bound"
        );
        // Started with -S: nothing ran yet.
        assert_eq!(vmm.status(h).await.unwrap(), "Not started");
        vmm.configure(h, &spec).await.unwrap();
        assert_eq!(std::fs::read_to_string(console(&spec)).unwrap(), "");

        let t = Instant::now();
        vmm.boot(h).await.unwrap();
        let cont_done = t.elapsed();
        let banner = wait_for_text(&console(&spec), stub_guest::BANNER).await + cont_done;
        eprintln!(
            "qemu ({}): spawn -> QMP ready {ready_after:?}, cont {cont_done:?}, cont -> banner {banner:?}",
            vmm.accel().await
        );
        assert_eq!(vmm.status(h).await.unwrap(), "Running");
        let mut q = Qmp::connect(&h.api_socket, qmp::DEFAULT_TIMEOUT)
            .await
            .unwrap();
        let st = q.query_status().await.unwrap();
        assert!(st.running && st.status == "running", "{st:?}");
        drop(q);

        vmm.pause(h).await.unwrap();
        assert_eq!(vmm.status(h).await.unwrap(), "Paused");
        vmm.pause(h).await.unwrap(); // idempotent
        vmm.resume(h).await.unwrap();
        assert_eq!(vmm.status(h).await.unwrap(), "Running");
        assert_eq!(vmm.metrics(h).await.unwrap(), None);

        let cfg = vmm.effective_config(h).await.unwrap();
        let argv: Vec<&str> = cfg["argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(argv[0].ends_with("qemu-system-x86_64"), "{argv:?}");
        assert!(
            argv.contains(&"-S") && !argv.contains(&"-netdev"),
            "{argv:?}"
        );
        assert_eq!(cfg["accel"], vmm.accel().await);
        assert_eq!(cfg["status"]["status"], "running");
        assert!(cfg["version"]["qemu"]["major"].as_u64().unwrap() >= 7);
        // The banner appears once: the guest did not restart.
        let text = std::fs::read_to_string(console(&spec)).unwrap();
        assert_eq!(text.matches(stub_guest::BANNER).count(), 1, "{text}");
    }

    /// The PVH counter stub under QEMU: QMP `stop` freezes it (the console
    /// does not grow over a window), `cont` lets it go on from the same
    /// number + 1.
    #[tokio::test]
    async fn qmp_stop_freezes_the_counter_stub_and_cont_continues_it() {
        let dir = tempfile::tempdir().unwrap();
        let spec = stub_spec(dir.path());
        std::fs::write(&spec.kernel, stub_guest::counter_pvh_elf()).unwrap();
        let vmm = vmm();
        let (vm, _) = spawn(&vmm, &spec).await;
        let h = &vm.handle;
        vmm.configure(h, &spec).await.unwrap();
        vmm.boot(h).await.unwrap();
        let values = || {
            let text = std::fs::read_to_string(console(&spec)).unwrap_or_default();
            (text.len(), stub_guest::counter_values(&text))
        };
        let t = Instant::now();
        while values().1.len() < 3 {
            assert!(
                t.elapsed() < Duration::from_secs(60),
                "no counter: {:?}",
                values()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        vmm.pause(h).await.unwrap();
        assert_eq!(vmm.status(h).await.unwrap(), "Paused");
        let (len, before) = values();
        for _ in 0..2 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert_eq!(values().0, len, "the console grew while paused");
        }
        vmm.resume(h).await.unwrap();
        let t = Instant::now();
        let after = loop {
            let (_, v) = values();
            if v.len() > before.len() + 1 {
                break v;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "no line after cont");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(after[0], 0, "{after:?}");
        for w in after.windows(2) {
            assert_eq!(w[1], w[0] + 1, "{after:?}");
        }
        assert!(after.len() > before.len());
    }

    /// The overlay layout for real: QEMU opens the shared rootfs O_RDONLY
    /// (a hostile guest cannot reach it through its VMM) and the overlay and
    /// work disks read-write, and a second QEMU attaches the same rootfs at
    /// the same time (shared lock).
    #[tokio::test]
    async fn overlay_layout_opens_the_rootfs_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut spec = stub_spec(dir.path());
        spec.root_read_only = true;
        let overlay = dir.path().join("overlay.img");
        std::fs::File::create(&overlay)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        spec.overlay_disk = Some(overlay);
        let vmm = vmm();
        let (vm, _) = spawn(&vmm, &spec).await;
        let (ro, rw) = (libc::O_RDONLY as u32, libc::O_RDWR as u32);
        let modes = process::open_access_modes(vm.handle.pid, dir.path());
        for (file, mode) in [("overlay.img", rw), ("root.img", ro), ("work.img", rw)] {
            assert!(
                modes.iter().any(|(n, m)| n == file && *m == mode),
                "{file} should be open with access mode {mode}: {modes:?}"
            );
            assert!(
                !modes.iter().any(|(n, m)| n == file && *m != mode),
                "{file} also open otherwise: {modes:?}"
            );
        }
        // A second VM of the same image: the same rootfs, its own disks.
        let dir2 = tempfile::tempdir().unwrap();
        let mut spec2 = stub_spec(dir2.path());
        spec2.vm_id = "qemu-test-2".into();
        spec2.root_disk = spec.root_disk.clone();
        spec2.root_read_only = true;
        let (vm2, _) = spawn(&vmm, &spec2).await;
        let modes2 = process::open_access_modes(vm2.handle.pid, dir.path());
        assert!(
            modes2.iter().any(|(n, m)| n == "root.img" && *m == ro),
            "{modes2:?}"
        );
        // Both QEMUs are killed and reaped when `vm` and `vm2` drop.
    }

    #[tokio::test]
    async fn shutdown_request_is_a_no_op_and_sigterm_ends_qemu() {
        let dir = tempfile::tempdir().unwrap();
        let spec = stub_spec(dir.path());
        let vmm = vmm();
        let (vm, _) = spawn(&vmm, &spec).await;
        vmm.boot(&vm.handle).await.unwrap();
        wait_for_text(&console(&spec), stub_guest::BANNER).await;

        vmm.request_shutdown(&vm.handle).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            process::exited(&vm.pidfd).is_none(),
            "with acpi=off, system_powerdown does not reach the guest"
        );
        assert_eq!(vmm.status(&vm.handle).await.unwrap(), "Running");

        let t = Instant::now();
        process::signal(&vm.pidfd, Signal::Term).unwrap();
        let exit = tokio::time::timeout(Duration::from_secs(10), process::wait_exit(&vm.pidfd))
            .await
            .expect("qemu did not exit on SIGTERM");
        eprintln!("SIGTERM -> exit in {:?}: {exit}", t.elapsed());
        assert_eq!(exit.code, Some(0), "{exit}");
        let log = std::fs::read_to_string(spec.vm_dir.join("vmm.log")).unwrap();
        assert!(log.contains("terminating on signal 15"), "{log}");
        assert!(
            !spec.run_dir.join("qmp.sock").exists(),
            "QEMU removes its socket"
        );
        assert!(vmm.status(&vm.handle).await.is_err());
    }

    /// The agent channel on the real QEMU: the virtio-serial port's socket
    /// connects, and since nothing in the stub guest opens the port, a
    /// request is never answered and the client's bound reports it.
    #[tokio::test]
    async fn agent_port_connects_and_an_absent_agent_times_out() {
        use crate::guest::agent::{AgentClient, AgentError};

        let dir = tempfile::tempdir().unwrap();
        let spec = stub_spec(dir.path());
        let vmm = vmm();
        let (vm, _) = spawn(&vmm, &spec).await;
        vmm.boot(&vm.handle).await.unwrap();
        wait_for_text(&console(&spec), stub_guest::BANNER).await;
        assert_eq!(
            vm.handle.agent_socket.as_deref(),
            Some(spec.run_dir.join("agent.sock").as_path())
        );
        assert!(!vmm.shutdown_reaches_guest());

        let stream = vmm
            .agent_connect(&vm.handle, Duration::from_secs(1))
            .await
            .unwrap();
        let mut c = AgentClient::new(stream, Duration::from_millis(500));
        let t = Instant::now();
        let e = c.health().await.unwrap_err();
        assert!(matches!(e, AgentError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // QEMU is unaffected.
        assert_eq!(vmm.status(&vm.handle).await.unwrap(), "Running");

        // A handle without the socket (a record from before the agent
        // channel) is refused with a clear error.
        let mut old = vm.handle.clone();
        old.agent_socket = None;
        let e = vmm
            .agent_connect(&old, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("without an agent port"), "{e}");
    }

    #[tokio::test]
    async fn stale_sockets_do_not_block_the_launch() {
        let dir = tempfile::tempdir().unwrap();
        let spec = stub_spec(dir.path());
        for name in ["qmp.sock", "agent.sock"] {
            drop(std::os::unix::net::UnixListener::bind(spec.run_dir.join(name)).unwrap());
        }
        let vmm = vmm();
        let (vm, _) = spawn(&vmm, &spec).await;
        assert_eq!(vmm.status(&vm.handle).await.unwrap(), "Not started");
    }

    #[tokio::test]
    async fn a_bad_kernel_fails_fast_quoting_qemu() {
        let dir = tempfile::tempdir().unwrap();
        let vmm = vmm();
        vmm.preflight().await.unwrap();
        let mut spec = stub_spec(dir.path());
        spec.kernel = dir.path().join("no-such-vmlinux");
        let t = Instant::now();
        let err = vmm.spawn(&spec).await.unwrap_err();
        let took = t.elapsed();
        eprintln!("missing kernel: failed in {took:?}: {err}");
        assert!(matches!(err, VmmError::QemuLaunch(_)), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("no-such-vmlinux"), "{msg}");
        assert!(msg.contains("exited with code 1"), "{msg}");
        assert!(took < Duration::from_secs(5), "{took:?}");

        // Firecracker's stub (no PVH note): QEMU refuses it, in its words.
        std::fs::write(&spec.kernel, stub_guest::elf()).unwrap();
        let err = vmm.spawn(&spec).await.unwrap_err().to_string();
        assert!(err.contains("without PVH ELF Note"), "{err}");
    }

    #[tokio::test]
    async fn accel_is_tcg_under_nested_pvm() {
        let vmm = vmm();
        let accel = vmm.accel().await;
        eprintln!("accel: {accel} ({})", vmm.accel_reason().unwrap_or("-"));
        // What this host allows, read independently of the probe: KVM only
        // where /dev/kvm opens, is hardware-backed and is not nested PVM.
        let facts = banger_core::vmm_select::HostFacts::detect(&Default::default());
        let expected = if facts.kvm.is_err() || facts.kvm_pvm || !facts.cpu_virt {
            "tcg"
        } else {
            "kvm"
        };
        assert_eq!(accel, expected, "{facts:?}");
        if Path::new("/sys/module/kvm_pvm").exists() {
            assert_eq!(accel, "tcg", "QEMU cannot use KVM under PVM");
            assert!(
                vmm.accel_reason().unwrap().contains("MSR"),
                "{:?}",
                vmm.accel_reason()
            );
        }
        let forced = QemuVmm::new(QemuOptions {
            binary: None,
            accel: AccelMode::Tcg,
        });
        assert_eq!(forced.accel().await, "tcg");
        assert_eq!(forced.accel_reason(), Some("configured"));
        assert_eq!("kvm".parse::<AccelMode>(), Ok(AccelMode::Kvm));
        assert!("fast".parse::<AccelMode>().is_err());
    }

    #[tokio::test]
    async fn preflight_refuses_missing_and_old_binaries() {
        let dir = tempfile::tempdir().unwrap();
        let missing = QemuVmm::new(QemuOptions {
            binary: Some(dir.path().join("qemu")),
            accel: AccelMode::Auto,
        });
        assert!(matches!(
            missing.preflight().await,
            Err(VmmError::Unavailable(_))
        ));
        assert_eq!(missing.accel().await, "none");

        let old = dir.path().join("old-qemu");
        std::fs::write(
            &old,
            "#!/bin/sh\necho 'QEMU emulator version 6.2.0 (Debian 1:6.2+dfsg-2ubuntu6)'\n",
        )
        .unwrap();
        let exec = <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755);
        std::fs::set_permissions(&old, exec).unwrap();
        let vmm = QemuVmm::new(QemuOptions {
            binary: Some(old),
            accel: AccelMode::Tcg,
        });
        let err = vmm.preflight().await.unwrap_err().to_string();
        assert!(err.contains("6.2.0 is older than 7.2.0"), "{err}");
        // The installed one passes (and says whether it has -sandbox).
        let real = QemuVmm::new(QemuOptions::default());
        real.preflight().await.unwrap();
        let bin = real.binary().unwrap();
        eprintln!("{}: {:?}", bin.display(), real.check(&bin).await.unwrap());
    }

    #[test]
    fn status_words() {
        let st = |s: &str| qmp::StatusInfo {
            status: s.into(),
            running: s == "running",
        };
        assert_eq!(status_word(&st("running")), "Running");
        assert_eq!(status_word(&st("paused")), "Paused");
        assert_eq!(status_word(&st("prelaunch")), "Not started");
        assert_eq!(status_word(&st("guest-panicked")), "guest-panicked");
    }

    /// A tap made the way the daemon makes it (persistent, `IFF_VNET_HDR`, on
    /// a bridge), inside a network namespace of the test's own; QEMU runs in
    /// that namespace and opens it.
    #[test]
    fn a_tap_in_a_netns_is_on_the_command_line_and_opened() {
        use crate::privileged::netns::Netns;
        use crate::privileged::{NetHost, SystemHost};

        let ns = Netns::new("qemu");
        let dir = tempfile::tempdir().unwrap();
        let mut spec = stub_spec(dir.path());
        let tap = "bgr-qemutest0";
        spec.net = Some(NetAttach {
            tap: tap.into(),
            mac: "02:aa:bb:cc:dd:ee".into(),
            ip: "10.78.0.2".parse().unwrap(),
            gateway: "10.78.0.1".parse().unwrap(),
            prefix: 24,
        });
        let vmm = vmm();
        let (vm, cfg) = ns.run(|| {
            let host = SystemHost;
            host.bridge_ensure("br-qt", "10.78.0.1".parse().unwrap(), 24)
                .unwrap();
            host.tap_create(tap, "br-qt", true).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            // QEMU is forked from this thread, so it lives in the namespace.
            rt.block_on(async {
                vmm.preflight().await.unwrap();
                let (vm, _) = spawn(&vmm, &spec).await;
                vmm.boot(&vm.handle).await.unwrap();
                let cfg = vmm.effective_config(&vm.handle).await.unwrap();
                (vm, cfg)
            })
        });
        let argv: Vec<String> = serde_json::from_value(cfg["argv"].clone()).unwrap();
        assert!(
            argv.contains(&format!("tap,id=n0,ifname={tap},script=no,downscript=no")),
            "{argv:?}"
        );
        assert!(
            argv.contains(&"virtio-net-device,netdev=n0,mac=02:aa:bb:cc:dd:ee".to_string()),
            "{argv:?}"
        );
        assert_eq!(cfg["status"]["status"], "running");
        // QEMU holds the tap open: its carrier is up.
        let link = ns.ip(&["-j", "link", "show", "dev", tap]);
        assert!(link.contains("LOWER_UP"), "{link}");
        drop(vm);
        let link = ns.ip(&["-j", "link", "show", "dev", tap]);
        assert!(link.contains("NO-CARRIER"), "{link}");
    }
}
