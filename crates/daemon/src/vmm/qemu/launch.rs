//! Spawning one QEMU (`-M microvm`) per VM and waiting for its QMP socket.
//!
//! QEMU is configured entirely on its command line ([`args`]); it starts with
//! `-S` (vCPUs stopped), so the guest runs only after QMP `cont`, and the
//! lifecycle's spawn → configure → boot stages mean what they mean for
//! Firecracker. What QEMU 7.2 does with the files it is given:
//!
//! - The serial console goes to a `file` chardev opened with `append=on`
//!   (`O_APPEND`), so each boot follows the previous one and the daemon's
//!   log capping (truncate + continue at the new end) works as for
//!   Firecracker. [`command`] creates it first, so its mode is ours.
//! - QEMU writes its own diagnostics (and a failed start's reason: "could not
//!   load kernel", a tap it cannot open) to stderr, which goes to the VMM log
//!   (`O_APPEND`); the previous launch's log is rotated to `<name>.1` first.
//! - Unix socket chardevs (`server=on`) unlink an existing path before
//!   binding and remove the socket when QEMU exits. [`command`] still removes
//!   a stale socket itself, so that nothing can answer on it before QEMU
//!   binds, and refuses a path that is not a socket.
//! - QMP connections are served by QEMU's main loop, which starts after the
//!   machine is built (kernel loaded): a launch that fails there may have
//!   bound the QMP socket already, but never sends a greeting. So readiness
//!   is "greeting + `qmp_capabilities` answered", not "socket accepts".

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use banger_core::proc::{Cmd, In, ProcError};
use serde::{Deserialize, Serialize};

use super::qmp::{Greeting, Qmp};
use crate::vmm::backend::LaunchSpec;
use crate::vmm::launch_files::{log_tail, open_append, remove_stale_socket, rotate};
use crate::vmm::process::{self, ExitInfo, Spawned};

/// The QEMU binary banger runs (looked up in PATH).
pub const BINARY: &str = "qemu-system-x86_64";

/// File names in the VM's runtime dir.
pub const QMP_SOCKET: &str = "qmp.sock";
pub const AGENT_SOCKET: &str = "agent.sock";

/// The guest agent's virtio-serial port name: the guest sees it as
/// `/dev/virtio-ports/org.banger.agent.0`.
pub const AGENT_PORT_NAME: &str = banger_proto::guest::AGENT_SERIAL_NAME;

/// How long QEMU may take from exec to answering QMP (TCG: ~50 ms here);
/// callers may pass more.
pub const QMP_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The bound on the KVM probe ([`probe_kvm`]).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// The QEMU seccomp policy: no obsolete syscalls, no setuid & co., no
/// fork/exec (so `-netdev tap` must use `script=no`), no scheduler or
/// affinity changes. Only used where QEMU was built with seccomp.
const SANDBOX: &str = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny";

/// How the guest's CPU is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation (`-accel kvm -cpu host`).
    Kvm,
    /// QEMU's software emulation (`-accel tcg -cpu max`): slower, but runs
    /// everywhere, also under nested paravirtual KVM.
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }

    fn cpu(self) -> &'static str {
        match self {
            Accel::Kvm => "host",
            Accel::Tcg => "max",
        }
    }
}

/// What the caller knows about the binary (from preflight).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// QEMU was built with seccomp: pass `-sandbox`.
    pub sandbox: bool,
}

/// The files of one QEMU process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPaths {
    /// QMP (`<run_dir>/qmp.sock`): the VMM handle's control socket.
    pub qmp_socket: PathBuf,
    /// The guest agent's virtio-serial port, host end
    /// (`<run_dir>/agent.sock`).
    pub agent_socket: PathBuf,
    /// The guest's serial output, appended to.
    pub console_log: PathBuf,
    /// QEMU's stdout and stderr, appended to (rotated at each launch).
    pub vmm_log: PathBuf,
}

impl LaunchPaths {
    /// The layout under a VM's runtime and state dirs (the same console and
    /// VMM log names as Firecracker's).
    pub fn new(run_dir: &Path, vm_dir: &Path) -> LaunchPaths {
        LaunchPaths {
            qmp_socket: run_dir.join(QMP_SOCKET),
            agent_socket: run_dir.join(AGENT_SOCKET),
            console_log: vm_dir.join(crate::vm::record::CONSOLE_LOG),
            vmm_log: vm_dir.join(crate::vm::record::VMM_LOG),
        }
    }
}

/// Why a QEMU could not be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A file of the launch could not be prepared.
    #[error("cannot prepare the qemu launch: {0}")]
    Prepare(#[source] io::Error),
    /// The binary could not be started.
    #[error("cannot start {}: {source}", bin.display())]
    Spawn {
        bin: PathBuf,
        #[source]
        source: io::Error,
    },
    /// QEMU exited before QMP answered; `log_tail` quotes its stderr.
    #[error("qemu {exit} before its QMP socket {} came up{log_tail}", socket.display())]
    Exited {
        socket: PathBuf,
        exit: ExitInfo,
        log_tail: String,
    },
    /// QEMU still runs, but QMP did not answer in time.
    #[error(
        "qemu's QMP socket {} did not answer within {} ms ({last_error}){log_tail}",
        socket.display(),
        waited.as_millis()
    )]
    Timeout {
        socket: PathBuf,
        waited: Duration,
        last_error: String,
        log_tail: String,
    },
}

/// QEMU's arguments (after the program name) for `spec`.
///
/// The root disk is the first virtio-blk device, the work disk the second
/// and the overlay disk, when there is one, the third (`/dev/vda`,
/// `/dev/vdb`, `/dev/vdc` in the guest, as under Firecracker); the
/// network device, when there is one, is `eth0`. Paths inside `-drive` and
/// `-chardev` option strings have their commas doubled (QEMU's escape).
pub fn args(
    spec: &LaunchSpec,
    accel: Accel,
    features: Features,
    paths: &LaunchPaths,
) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(OsString::from));
    push(&["-M", "microvm,acpi=off,x-option-roms=off"]);
    push(&["-accel", accel.as_str(), "-cpu", accel.cpu()]);
    let smp = spec.vcpus.to_string();
    let mem = format!("{}M", spec.memory_mib);
    push(&["-smp", &smp, "-m", &mem]);
    push(&["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"]);
    if features.sandbox {
        push(&["-sandbox", SANDBOX]);
    }
    // vCPUs stay stopped until QMP `cont` (Vmm::boot).
    push(&["-S"]);
    a.push("-kernel".into());
    a.push(spec.kernel.clone().into_os_string());
    if let Some(initrd) = &spec.initrd {
        a.push("-initrd".into());
        a.push(initrd.clone().into_os_string());
    }
    a.push("-append".into());
    a.push(spec.boot_args.clone().into());
    // `readonly=on`: QEMU opens the file O_RDONLY (and takes only a shared
    // lock on it, so every VM of an image can attach its rootfs at once) and
    // the guest sees a read-only virtio disk.
    let drives = [
        ("root", Some(&spec.root_disk), spec.root_read_only),
        ("work", Some(&spec.work_disk), false),
        ("overlay", spec.overlay_disk.as_ref(), false),
    ];
    for (id, file, read_only) in drives {
        let Some(file) = file else { continue };
        a.push("-drive".into());
        a.push(opt(
            &format!("id={id},file="),
            file,
            if read_only {
                ",format=raw,if=none,readonly=on,cache=writeback"
            } else {
                ",format=raw,if=none,cache=writeback,discard=unmap"
            },
        ));
        a.push("-device".into());
        a.push(format!("virtio-blk-device,drive={id}").into());
    }
    if let Some(net) = &spec.net {
        a.push("-netdev".into());
        a.push(format!("tap,id=n0,ifname={},script=no,downscript=no", net.tap).into());
        a.push("-device".into());
        a.push(format!("virtio-net-device,netdev=n0,mac={}", net.mac).into());
    }
    a.push("-chardev".into());
    a.push(opt("file,id=ser0,path=", &paths.console_log, ",append=on"));
    a.push("-serial".into());
    a.push("chardev:ser0".into());
    a.push("-qmp".into());
    a.push(opt("unix:", &paths.qmp_socket, ",server=on,wait=off"));
    a.push("-chardev".into());
    a.push(opt(
        "socket,id=agent,path=",
        &paths.agent_socket,
        ",server=on,wait=off",
    ));
    a.push("-device".into());
    a.push("virtio-serial-device".into());
    a.push("-device".into());
    a.push(format!("virtserialport,chardev=agent,name={AGENT_PORT_NAME}").into());
    a
}

/// `prefix` + `path` with its commas doubled + `suffix`, byte-exact (paths
/// need not be UTF-8).
fn opt(prefix: &str, path: &Path, suffix: &str) -> OsString {
    let mut out = prefix.as_bytes().to_vec();
    for &b in path.as_os_str().as_bytes() {
        out.push(b);
        if b == b',' {
            out.push(b',');
        }
    }
    out.extend_from_slice(suffix.as_bytes());
    OsString::from_vec(out)
}

/// Builds the command that runs `bin` for `spec`, and prepares its files:
/// removes stale sockets, rotates a non-empty VMM log to `<name>.1`, creates
/// the console log. QEMU's environment is emptied; stdin is `/dev/null`.
///
/// The caller must make sure no live QEMU uses `paths` any more: its sockets
/// would be unlinked from under it.
pub fn command(
    bin: &Path,
    spec: &LaunchSpec,
    accel: Accel,
    features: Features,
    paths: &LaunchPaths,
) -> io::Result<Command> {
    remove_stale_socket(&paths.qmp_socket)?;
    remove_stale_socket(&paths.agent_socket)?;
    rotate(&paths.vmm_log)?;
    drop(open_append(&paths.console_log)?);
    let stderr = open_append(&paths.vmm_log)?;
    let stdout = stderr.try_clone()?;
    let mut cmd = Command::new(bin);
    cmd.args(args(spec, accel, features, paths))
        .env_clear()
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    Ok(cmd)
}

/// [`command`] + [`process::spawn`] (own session, pidfd).
pub fn launch(
    bin: &Path,
    spec: &LaunchSpec,
    accel: Accel,
    features: Features,
    paths: &LaunchPaths,
) -> Result<Spawned, LaunchError> {
    let cmd = command(bin, spec, accel, features, paths).map_err(LaunchError::Prepare)?;
    process::spawn(cmd).map_err(|source| LaunchError::Spawn {
        bin: bin.to_path_buf(),
        source,
    })
}

/// Waits until QMP greets and accepts `qmp_capabilities` (polling the
/// socket every 1 ms, growing to 10 ms), then disconnects. Fails at once if
/// the process exits first, quoting the VMM log (QEMU's stderr); the exit is
/// observed without reaping, so the caller's [`process::wait_exit`] still
/// gets the status. On error the process is left as it is: the caller kills
/// (if needed) and reaps it.
pub async fn wait_qmp_ready(
    paths: &LaunchPaths,
    pidfd: &OwnedFd,
    timeout: Duration,
) -> Result<Greeting, LaunchError> {
    let socket = &paths.qmp_socket;
    let start = Instant::now();
    let mut step = Duration::from_millis(1);
    let exit_seen = process::wait_readable(pidfd.as_fd());
    tokio::pin!(exit_seen);
    let mut exit_signalled = false;
    let exited = |exit| LaunchError::Exited {
        socket: socket.clone(),
        exit,
        log_tail: log_tail(&paths.vmm_log),
    };
    loop {
        let remaining = timeout
            .saturating_sub(start.elapsed())
            .max(Duration::from_millis(1));
        let last_error = match Qmp::connect(socket, remaining).await {
            Ok(qmp) => return Ok(qmp.greeting().clone()),
            Err(e) => e,
        };
        if !last_error.is_connect() && process::exited(pidfd).is_none() && !exit_signalled {
            // Connected but QMP broke off: QEMU is most likely exiting (a
            // failed machine setup closes the socket just before the process
            // ends). Give the exit a moment to show.
            tokio::select! {
                _ = &mut exit_seen => exit_signalled = true,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        if let Some(exit) = process::exited(pidfd) {
            return Err(exited(exit));
        }
        let waited = start.elapsed();
        if waited >= timeout || !last_error.is_connect() {
            return Err(LaunchError::Timeout {
                socket: socket.clone(),
                waited,
                last_error: last_error.to_string(),
                log_tail: log_tail(&paths.vmm_log),
            });
        }
        tokio::select! {
            _ = &mut exit_seen, if !exit_signalled => exit_signalled = true,
            _ = tokio::time::sleep(step.min(timeout - waited)) => {}
        }
        step = (step * 2).min(Duration::from_millis(10));
    }
}

/// Whether this QEMU can run a microvm with KVM here: starts it with
/// `-accel kvm -cpu host`, stopped (`-S`) and without a kernel, with QMP on
/// its stdin/stdout, and asks for `query-kvm`, `cont`, `query-status` and
/// `quit`. `Err` carries QEMU's complaint (under nested PVM KVM here: "failed
/// to set MSR 0x10a", then an assertion). Blocking; at most `timeout`.
pub fn probe_kvm(bin: &Path, timeout: Duration) -> Result<(), String> {
    let script = [
        r#"{"execute": "qmp_capabilities", "id": 1}"#,
        r#"{"execute": "query-kvm", "id": 2}"#,
        r#"{"execute": "cont", "id": 3}"#,
        r#"{"execute": "query-status", "id": 4}"#,
        r#"{"execute": "quit", "id": 5}"#,
    ];
    let mut cmd = Cmd::new(bin);
    cmd.args([
        "-M",
        "microvm,acpi=off,x-option-roms=off",
        "-accel",
        "kvm",
        "-cpu",
        "host",
        "-smp",
        "1",
        "-m",
        "32M",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-S",
        "-qmp",
        "stdio",
    ])
    // A QEMU that dies early closes its end of stdin: its exit says why.
    .stdin(In::Bytes((script.join("\n") + "\n").into_bytes()))
    .own_group()
    .timeout(timeout)
    .command_mut()
    .env_clear();
    let done = match cmd.output() {
        Ok(done) => done,
        Err(ProcError::Timeout { .. }) => {
            return Err(format!(
                "the KVM probe did not finish within {} ms",
                timeout.as_millis()
            ))
        }
        Err(ProcError::Spawn { source, .. }) => {
            return Err(format!("cannot start {}: {source}", bin.display()))
        }
        Err(e) => return Err(e.to_string()),
    };
    let stdout = done.stdout_text();
    let stderr = done.stderr_text();
    let first_lines = || {
        let s: Vec<&str> = stderr.lines().take(3).collect();
        if s.is_empty() {
            String::new()
        } else {
            format!(": {}", s.join(" / "))
        }
    };
    let status = done.status;
    let answers: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let answer = |id: u64| answers.iter().find(|a| a["id"] == id);
    let kvm_on = answer(2).is_some_and(|a| a["return"]["enabled"] == true);
    let ran = answer(4).is_some_and(|a| a["return"]["running"] == true);
    if status.success() && kvm_on && ran {
        Ok(())
    } else if !status.success() {
        Err(format!("qemu with KVM {status}{}", first_lines()))
    } else {
        Err(format!("qemu did not run a KVM guest{}", first_lines()))
    }
}

/// Whether `-help` lists an option (QEMU leaves out options it was built
/// without, such as `-sandbox` without seccomp).
pub fn help_lists(help: &str, option: &str) -> bool {
    help.lines()
        .any(|l| l.split_whitespace().next() == Some(option))
}

/// Reads `/proc/<pid>/cmdline` as arguments (lossily decoded).
pub fn proc_cmdline(pid: u32) -> io::Result<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline"))?;
    Ok(raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| OsStr::from_bytes(a).to_string_lossy().into_owned())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::backend::NetAttach;

    pub(crate) fn sample_spec(dir: &Path) -> LaunchSpec {
        LaunchSpec {
            vm_id: "0123456789abcdef".into(),
            vcpus: 2,
            memory_mib: 512,
            kernel: dir.join("vmlinux"),
            initrd: None,
            boot_args: "console=ttyS0 root=/dev/vda rw".into(),
            root_disk: dir.join("root,1.ext4"),
            root_read_only: false,
            work_disk: dir.join("work.ext4"),
            overlay_disk: None,
            net: None,
            run_dir: dir.join("run"),
            vm_dir: dir.join("vm"),
        }
    }

    fn strings(a: &[OsString]) -> Vec<String> {
        a.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    fn value_after<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn args_describe_the_machine() {
        let dir = Path::new("/srv/b");
        let mut spec = sample_spec(dir);
        let paths = LaunchPaths::new(&spec.run_dir, &spec.vm_dir);
        let a = strings(&args(&spec, Accel::Tcg, Features::default(), &paths));
        assert_eq!(
            value_after(&a, "-M"),
            ["microvm,acpi=off,x-option-roms=off"]
        );
        assert_eq!(value_after(&a, "-accel"), ["tcg"]);
        assert_eq!(value_after(&a, "-cpu"), ["max"]);
        assert_eq!(value_after(&a, "-smp"), ["2"]);
        assert_eq!(value_after(&a, "-m"), ["512M"]);
        assert!(a.contains(&"-S".to_string()));
        assert!(!a.contains(&"-sandbox".to_string()));
        assert!(!a.contains(&"-initrd".to_string()));
        assert!(!a.contains(&"-netdev".to_string()));
        assert_eq!(
            value_after(&a, "-append"),
            ["console=ttyS0 root=/dev/vda rw"]
        );
        // Root first (vda), then work (vdb); the comma in the path doubled.
        assert_eq!(
            value_after(&a, "-drive"),
            [
                "id=root,file=/srv/b/root,,1.ext4,format=raw,if=none,cache=writeback,discard=unmap",
                "id=work,file=/srv/b/work.ext4,format=raw,if=none,cache=writeback,discard=unmap"
            ]
        );
        assert_eq!(
            value_after(&a, "-device"),
            [
                "virtio-blk-device,drive=root",
                "virtio-blk-device,drive=work",
                "virtio-serial-device",
                "virtserialport,chardev=agent,name=org.banger.agent.0"
            ]
        );
        assert_eq!(
            value_after(&a, "-chardev"),
            [
                "file,id=ser0,path=/srv/b/vm/console.log,append=on",
                "socket,id=agent,path=/srv/b/run/agent.sock,server=on,wait=off"
            ]
        );
        assert_eq!(
            value_after(&a, "-qmp"),
            ["unix:/srv/b/run/qmp.sock,server=on,wait=off"]
        );

        spec.initrd = Some(dir.join("initrd.img"));
        spec.net = Some(NetAttach {
            tap: "bgr-0123456789".into(),
            mac: "02:01:23:45:67:89".into(),
            ip: "172.16.213.5".parse().unwrap(),
            gateway: "172.16.213.1".parse().unwrap(),
            prefix: 24,
        });
        let a = strings(&args(&spec, Accel::Kvm, Features { sandbox: true }, &paths));
        assert_eq!(value_after(&a, "-accel"), ["kvm"]);
        assert_eq!(value_after(&a, "-cpu"), ["host"]);
        assert_eq!(value_after(&a, "-initrd"), ["/srv/b/initrd.img"]);
        assert_eq!(value_after(&a, "-sandbox"), [SANDBOX]);
        assert_eq!(
            value_after(&a, "-netdev"),
            ["tap,id=n0,ifname=bgr-0123456789,script=no,downscript=no"]
        );
        assert!(a.contains(&"virtio-net-device,netdev=n0,mac=02:01:23:45:67:89".to_string()));

        // The overlay layout: the shared rootfs read-only (no discard on a
        // read-only drive), then work, then the overlay disk (vdc).
        spec.root_read_only = true;
        spec.overlay_disk = Some(dir.join("overlay.ext4"));
        let a = strings(&args(&spec, Accel::Tcg, Features::default(), &paths));
        assert_eq!(
            value_after(&a, "-drive"),
            [
                "id=root,file=/srv/b/root,,1.ext4,format=raw,if=none,readonly=on,cache=writeback",
                "id=work,file=/srv/b/work.ext4,format=raw,if=none,cache=writeback,discard=unmap",
                "id=overlay,file=/srv/b/overlay.ext4,format=raw,if=none,cache=writeback,discard=unmap"
            ]
        );
        assert_eq!(
            value_after(&a, "-device")[..3],
            [
                "virtio-blk-device,drive=root",
                "virtio-blk-device,drive=work",
                "virtio-blk-device,drive=overlay"
            ]
        );
    }

    #[test]
    fn command_prepares_files() {
        let dir = tempfile::tempdir().unwrap();
        let spec = sample_spec(dir.path());
        std::fs::create_dir_all(&spec.run_dir).unwrap();
        std::fs::create_dir_all(&spec.vm_dir).unwrap();
        let p = LaunchPaths::new(&spec.run_dir, &spec.vm_dir);
        std::fs::write(&p.vmm_log, "old boot\n").unwrap();
        std::fs::write(&p.console_log, "old console\n").unwrap();
        drop(std::os::unix::net::UnixListener::bind(&p.qmp_socket).unwrap());
        drop(std::os::unix::net::UnixListener::bind(&p.agent_socket).unwrap());

        let cmd = command(
            Path::new("/usr/bin/qemu-system-x86_64"),
            &spec,
            Accel::Tcg,
            Features::default(),
            &p,
        )
        .unwrap();
        assert_eq!(cmd.get_envs().count(), 0, "environment cleared");
        assert!(
            !p.qmp_socket.exists() && !p.agent_socket.exists(),
            "stale sockets removed"
        );
        assert_eq!(std::fs::read_to_string(&p.vmm_log).unwrap(), "");
        let rotated = spec.vm_dir.join("vmm.log.1");
        assert_eq!(std::fs::read_to_string(rotated).unwrap(), "old boot\n");
        assert_eq!(
            std::fs::read_to_string(&p.console_log).unwrap(),
            "old console\n"
        );

        std::fs::write(&p.qmp_socket, "not a socket").unwrap();
        let err = command(Path::new("/x"), &spec, Accel::Tcg, Features::default(), &p).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
    }

    #[test]
    fn help_parsing_and_tails() {
        use crate::vmm::launch_files::tail_lines;
        let help = "-sandbox on[,obsolete=allow|deny]\n                Enable seccomp mode 2\n-S   freeze CPU";
        assert!(help_lists(help, "-sandbox"));
        assert!(help_lists(help, "-S"));
        assert!(!help_lists(help, "-seccomp"));
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("log");
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&f, text).unwrap();
        assert_eq!(tail_lines(&f, 2), "line 29\nline 30");
        assert_eq!(log_tail(&dir.path().join("absent")), "");
    }
}
