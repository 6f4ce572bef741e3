//! Shared test rig: a temporary BANGER_HOME with a real `bangerd`, the real
//! `banger` CLI, raw socket clients, and fixtures (ext4 images, a stub kernel).
//!
//! Every daemon a test starts (directly or through CLI auto-start) is killed
//! by pid when the [`Home`] drops, even if the test panicked.

#![allow(dead_code)]

pub mod fixtures;
pub mod guest;
pub mod raw;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BANGER: &str = env!("CARGO_BIN_EXE_banger");
pub const BANGERD: &str = env!("CARGO_BIN_EXE_bangerd");

/// The uid/gid tests use as "another user" (nobody/nogroup).
pub const NOBODY: u32 = 65534;

pub struct Home {
    pub dir: tempfile::TempDir,
    daemon: Option<Child>,
    /// The network namespace daemons started by [`Home::start_daemon`] run in
    /// (made on first use): bridges, taps, nftables rules and VMMs stay in it.
    netns: Option<String>,
}

impl Home {
    /// A fresh home, traversable by other users (so tests can act as nobody),
    /// whose socket group is nogroup, and whose VMs run under Firecracker
    /// unless a test says `--vmm` (the stub guest of [`stub_image`] is
    /// Firecracker's; `auto` would pick QEMU on hosts like CI's).
    pub fn new() -> Home {
        let dir = tempfile::Builder::new()
            .prefix("banger-test-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            dir.path().join("config.toml"),
            format!(
                "[daemon]\nsocket_group = \"{NOBODY}\"\n\n[vm]\nvmm = \"firecracker\"\n\n[network]\ndns_listen = \"127.0.0.1:0\"\n"
            ),
        )
        .unwrap();
        Home {
            dir,
            daemon: None,
            netns: None,
        }
    }

    /// Appends TOML to the config (before the daemon starts).
    pub fn config(&self, toml: &str) {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.path().join("config.toml"))
            .unwrap();
        writeln!(f, "\n{toml}").unwrap();
    }

    /// The test's own network namespace, created on first use.
    pub fn netns(&mut self) -> String {
        if let Some(ns) = &self.netns {
            return ns.clone();
        }
        let ns = format!("banger-t-{}", &banger_core::ids::new_id()[..10]);
        let st = Command::new("ip")
            .args(["netns", "add", &ns])
            .status()
            .unwrap();
        assert!(st.success(), "ip netns add {ns}");
        let st = Command::new("ip")
            .args(["-n", &ns, "link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(st.success());
        self.netns = Some(ns.clone());
        ns
    }

    /// Runs a command inside the test's network namespace.
    pub fn in_netns(&mut self, program: &str, args: &[&str]) -> Output {
        let ns = self.netns();
        Command::new("ip")
            .args(["netns", "exec", &ns, program])
            .args(args)
            .output()
            .unwrap()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.path().join("run/bangerd.sock")
    }

    pub fn state(&self) -> PathBuf {
        self.path().join("state")
    }

    /// `banger` with this home; HOME points into it too, so files the CLI
    /// writes for the user (SSH identity, ~/.ssh/config) stay in the test.
    pub fn banger(&self) -> Command {
        let mut c = Command::new(BANGER);
        c.env("BANGER_HOME", self.path())
            .env("HOME", self.path().join("user-home"))
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("RUST_LOG");
        c
    }

    /// `banger` run inside the test's network namespace (where the bridge,
    /// the guests and a daemon started by `start_daemon` are), with this
    /// home's environment: `vm ssh`/`vm exec` reach guest addresses from there.
    /// The namespace must exist already ([`Home::netns`] makes it).
    pub fn banger_in_netns(&self) -> Command {
        let ns = self
            .netns
            .clone()
            .expect("Home::netns() makes the namespace before banger runs in it");
        let env: Vec<_> = self
            .banger()
            .get_envs()
            .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned())))
            .collect();
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &ns, BANGER]).envs(env);
        c
    }

    /// `banger` as another uid/gid.
    pub fn banger_as(&self, uid: u32, gid: u32) -> Command {
        let mut c = self.banger();
        c.uid(uid).gid(gid);
        c
    }

    /// Runs `banger ARGS`, asserting success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.banger().args(args).output().unwrap();
        assert_success(&out, args);
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs `banger --json ARGS`, asserting success; parses stdout.
    pub fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let out = self.ok(&full);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: bad JSON ({e}): {out}"))
    }

    /// Runs `banger ARGS`, asserting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.banger().args(args).output().unwrap();
        assert!(
            !out.status.success(),
            "banger {args:?} should have failed; stdout: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    /// Starts `bangerd` directly (not through the CLI), inside the test's own
    /// network namespace, and waits for its socket.
    pub fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "daemon already started by this test");
        let ns = self.netns();
        // `ip netns exec` execs the program, so the child's pid is bangerd's.
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, BANGERD])
            .arg("--home")
            .arg(self.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        self.daemon = Some(child);
        self.wait_socket();
    }

    /// Waits until the socket answers a connect.
    pub fn wait_socket(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::os::unix::net::UnixStream::connect(self.socket()).is_err() {
            assert!(Instant::now() < deadline, "bangerd did not come up");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The pid in the lock file of the daemon serving this home.
    pub fn daemon_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.path().join("run/bangerd.lock"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGKILLs the daemon (however it was started) and reaps it if ours.
    pub fn kill_daemon(&mut self) {
        if let Some(pid) = self.daemon_pid() {
            kill(pid, libc::SIGKILL);
        }
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(pid) = self.daemon_pid() {
            wait_gone(pid);
        }
    }

    /// SIGTERMs the daemon this test started and returns its exit status.
    pub fn term_daemon(&mut self) -> std::process::ExitStatus {
        let mut c = self.daemon.take().expect("no daemon started by this test");
        kill(c.id() as i32, libc::SIGTERM);
        wait_timeout(&mut c, Duration::from_secs(20)).expect("bangerd did not exit after SIGTERM")
    }

    /// Takes the child handle of a daemon this test started (to wait on it).
    pub fn take_daemon(&mut self) -> Option<Child> {
        self.daemon.take()
    }

    /// Files under `state/tmp` (half-staged work).
    pub fn staged_files(&self) -> Vec<PathBuf> {
        walk(&self.state().join("tmp"))
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        self.kill_daemon();
        // VMMs outlive their daemon by design; a test that failed midway may
        // leave some: end them by pid.
        for pid in processes_under(self.path()) {
            kill(pid, libc::SIGKILL);
        }
        if let Some(ns) = self.netns.take() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
    }
}

pub fn assert_success(out: &Output, what: &[&str]) {
    assert!(
        out.status.success(),
        "banger {what:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn kill(pid: i32, sig: i32) {
    // SAFETY: plain syscall on a pid this test owns.
    unsafe {
        libc::kill(pid, sig);
    }
}

pub fn alive(pid: i32) -> bool {
    // Signal 0 probes existence; a zombie still counts, so check its state.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    !stat.is_empty() && !stat.contains(") Z ")
}

pub fn wait_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive(pid) {
        assert!(Instant::now() < deadline, "pid {pid} did not exit");
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn wait_timeout(c: &mut Child, d: Duration) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + d;
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            return Some(st);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
                out.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

pub fn require_root() {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests drive a root daemon: run them as root (sudo scripts/test.sh)"
    );
}

/// Registers the stub rootfs again as image `name` with image features
/// (e.g. `ssh`), on the `stub` kernel.
pub fn stub_image_with(h: &Home, name: &str, features: &str) {
    let rootfs = h.path().join(format!("{name}-root.ext4"));
    fixtures::ext4(&rootfs, 64);
    h.ok(&[
        "image",
        "register",
        "--name",
        name,
        "--kernel",
        "stub",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--features",
        features,
    ]);
}

/// Registers the stub guest kernel and a small ext4 rootfs as image `stub`
/// (the default), so `vm create` works with the real Firecracker here.
pub fn stub_image(h: &Home) {
    let k = h.path().join("stub.vmlinux");
    fixtures::write_stub_kernel(&k);
    h.ok(&["kernel", "import", k.to_str().unwrap(), "--name", "stub"]);
    let rootfs = h.path().join("stub-root.ext4");
    fixtures::ext4(&rootfs, 64);
    h.ok(&[
        "image",
        "register",
        "--name",
        "stub",
        "--kernel",
        "stub",
        "--rootfs",
        rootfs.to_str().unwrap(),
    ]);
    h.ok(&["image", "promote", "stub"]);
}

/// pids of VMM processes (Firecracker, QEMU) whose command line mentions
/// this home (VMMs we made).
pub fn processes_under(home: &Path) -> Vec<i32> {
    let needle = home.to_string_lossy().into_owned();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let vmm = cmd.contains("firecracker") || cmd.contains("qemu-system");
        if vmm && cmd.contains(&needle) && alive(pid) {
            out.push(pid);
        }
    }
    out
}

/// Loop devices backed by banger's files under `home` (its state dir; a
/// test's own loop-mounted filesystem image lives beside it, not in it).
pub fn loops_under(home: &Path) -> Vec<String> {
    let out = Command::new("losetup")
        .args(["-a", "-n", "-O", "NAME,BACK-FILE"])
        .output()
        .unwrap();
    let state = home.join("state");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&*state.to_string_lossy()))
        .map(str::to_string)
        .collect()
}

/// Nothing a VM made is left: no VMM process, loop device, VM dir or socket.
pub fn assert_no_vm_leftovers(h: &Home) {
    assert!(
        processes_under(h.path()).is_empty(),
        "VMM processes left: {:?}",
        processes_under(h.path())
    );
    assert!(
        loops_under(h.path()).is_empty(),
        "loop devices left: {:?}",
        loops_under(h.path())
    );
    let vms = walk(&h.state().join("vms"));
    assert!(vms.is_empty(), "VM files left: {vms:?}");
    let run = walk(&h.path().join("run/vms"));
    assert!(run.is_empty(), "VM runtime files left: {run:?}");
    let dm = dm_devices("banger-");
    assert!(dm.is_empty(), "device-mapper tables left: {dm:?}");
    let rows = vm_rows(h);
    assert!(rows.is_empty(), "VM rows left in the state db: {rows:?}");
    if let Some(ns) = &h.netns {
        let taps = taps_in(ns);
        assert!(taps.is_empty(), "tap devices left in {ns}: {taps:?}");
        let rules = vm_rules_in(ns);
        assert!(
            rules.is_empty(),
            "per-VM nftables rules left in {ns}: {rules:?}"
        );
    }
}

/// Device-mapper devices whose name starts with `prefix` (none where the
/// kernel has no device-mapper: /sys/block has no dm-* then).
pub fn dm_devices(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("dm/name")).ok())
        .map(|n| n.trim().to_string())
        .filter(|n| n.starts_with(prefix))
        .collect()
}

/// Rows of the state db that belong to a VM (`vms`, `vm_addresses`,
/// `vm_ports`), as `table: row count`; nothing when no db was made.
pub fn vm_rows(h: &Home) -> Vec<String> {
    let db = h.state().join("state.db");
    if !db.exists() {
        return Vec::new();
    }
    let conn =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
    ["vms", "vm_addresses", "vm_ports"]
        .into_iter()
        .filter_map(|t| {
            let n: i64 = conn
                .query_row(&format!("SELECT count(*) FROM {t}"), [], |r| r.get(0))
                .unwrap_or_else(|e| panic!("count {t}: {e}"));
            (n > 0).then(|| format!("{t}: {n}"))
        })
        .collect()
}

/// banger's tap devices (`bgr-*`) in network namespace `ns`.
pub fn taps_in(ns: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ip -n {ns} link show: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_string())
        .filter(|n| n.starts_with("bgr-"))
        .collect()
}

/// nftables rules in namespace `ns` whose comment names a VM (`vm=<name>`):
/// the per-VM rules, which must go with the VM.
pub fn vm_rules_in(ns: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "list", "ruleset"])
        .output()
        .unwrap();
    assert!(out.status.success(), "nft list ruleset in {ns}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("comment \"vm="))
        .map(|l| l.trim().to_string())
        .collect()
}

/// Polls `f` until it returns Some (or panics after `secs`).
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What this host is, read the way banger reads it.
fn host_facts() -> banger_core::vmm_select::HostFacts {
    banger_core::vmm_select::HostFacts::detect(&banger_core::config::Config::default())
}

/// The acceleration QEMU must get on this host: TCG under nested paravirtual
/// KVM (`kvm_pvm`: QEMU's KVM dies on an MSR assertion there), without a
/// usable `/dev/kvm`, or without vmx/svm; KVM otherwise.
pub fn expected_qemu_accel() -> &'static str {
    let h = host_facts();
    if h.kvm.is_err() || h.kvm_pvm || !h.cpu_virt {
        "tcg"
    } else {
        "kvm"
    }
}

/// The VMM `--vmm auto` must pick on this host: Firecracker only where KVM is
/// usable, hardware-backed and not PVM, and Firecracker is installed.
pub fn expected_auto_vmm() -> &'static str {
    let h = host_facts();
    if h.kvm.is_ok() && !h.kvm_pvm && h.cpu_virt && h.firecracker {
        "firecracker"
    } else {
        "qemu"
    }
}
