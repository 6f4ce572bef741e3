//! `banger doctor`: is this host able to run banger, and if not, what to do.
//!
//! Each check is a small function returning one [`Check`] (ok, warn, fail or
//! skip, a one-line detail, and a concrete one-line fix when not ok), so the
//! daemon, the CLI and tests can call them one by one; [`run_checks`] runs
//! them all in the order of [`CHECK_NAMES`].
//!
//! The daemon runs as root. A check that needs root and finds itself
//! unprivileged reports `skip` ("run as root to check") instead of a failure
//! that would not apply to the daemon.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use banger_proto::methods::daemon::{Check, CheckStatus};

use crate::config::Config;
use crate::paths::Paths;
use crate::proc::{Cmd, Out};
use crate::store::{migrations, Store, StoreError};
use crate::tools;

/// Every check [`run_checks`] reports, in its order.
pub const CHECK_NAMES: &[&str] = &[
    "kvm",
    "firecracker",
    "ip",
    "nft",
    "tun",
    "bridge",
    "loop",
    "device-mapper",
    "reflink",
    "disk-backend",
    "e2fsprogs",
    "git",
    "ssh",
    "qemu",
    "vmm",
    "disk-space",
    "store",
];

/// Runs every check, in the order of [`CHECK_NAMES`].
pub fn run_checks(paths: &Paths, config: &Config) -> Vec<Check> {
    let dm = check_device_mapper();
    let reflink = check_reflink(&paths.state_dir);
    let backend = check_disk_backend(&config.vm.disk_backend, &dm, &reflink);
    vec![
        check_kvm(),
        check_firecracker(config),
        check_ip(),
        check_nft(),
        check_tun(),
        check_bridge(),
        check_loop(),
        dm,
        reflink,
        backend,
        check_e2fsprogs(),
        check_git(),
        check_ssh(),
        check_qemu(),
        check_vmm(config),
        check_disk_space(&paths.state_dir),
        check_store(&paths.db()),
    ]
}

fn ok(name: &str, detail: impl Into<String>) -> Check {
    check(name, CheckStatus::Ok, detail, None)
}

fn warn(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    check(name, CheckStatus::Warn, detail, Some(fix.into()))
}

fn fail(name: &str, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    check(name, CheckStatus::Fail, detail, Some(fix.into()))
}

fn skip(name: &str, detail: impl Into<String>) -> Check {
    check(name, CheckStatus::Skip, detail, None)
}

fn check(name: &str, status: CheckStatus, detail: impl Into<String>, fix: Option<String>) -> Check {
    Check {
        name: name.to_string(),
        status,
        detail: detail.into(),
        fix,
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// Access was refused and we are not root: the daemon (root) may well succeed.
fn unprivileged_denial(e: &std::io::Error) -> bool {
    !is_root() && matches!(e.kind(), ErrorKind::PermissionDenied)
}

// ---------------------------------------------------------------- kvm

const KVM_GET_API_VERSION: u64 = 0xAE00;
const KVM_API_VERSION: i32 = 12;

/// `/dev/kvm` opens read-write and speaks KVM API version 12.
pub fn check_kvm() -> Check {
    check_kvm_at(Path::new("/dev/kvm"))
}

fn check_kvm_at(dev: &Path) -> Check {
    const NAME: &str = "kvm";
    let file = match OpenOptions::new().read(true).write(true).open(dev) {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return fail(
                NAME,
                format!("{} does not exist", dev.display()),
                "sudo modprobe kvm_intel (or kvm_amd); if that fails, enable virtualization (VT-x/AMD-V) in the firmware or hypervisor",
            )
        }
        Err(e) if unprivileged_denial(&e) => {
            return skip(
                NAME,
                format!("uid {} cannot open {}; run as root to check (the daemon runs as root)", uid(), dev.display()),
            )
        }
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            return fail(
                NAME,
                format!("cannot open {} read-write: {e}", dev.display()),
                "allow the KVM device (in a container: --device /dev/kvm), or sudo chmod 660 /dev/kvm and add your user to group kvm",
            )
        }
        Err(e) => {
            return fail(
                NAME,
                format!("cannot open {} read-write: {e}", dev.display()),
                "sudo modprobe kvm_intel (or kvm_amd), and add your user to group kvm",
            )
        }
    };
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int;
    // the fd is open for the duration of the call.
    let version = unsafe { libc::ioctl(file.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if version < 0 {
        return fail(
            NAME,
            format!(
                "{} is not a KVM device (KVM_GET_API_VERSION: {})",
                dev.display(),
                std::io::Error::last_os_error()
            ),
            "sudo modprobe kvm_intel (or kvm_amd)",
        );
    }
    if version != KVM_API_VERSION {
        return fail(
            NAME,
            format!("KVM API version {version}, expected {KVM_API_VERSION}"),
            "use a Linux kernel with standard KVM (API version 12)",
        );
    }
    let modules: Vec<&str> = ["kvm_intel", "kvm_amd", "kvm_pvm"]
        .into_iter()
        .filter(|m| Path::new("/sys/module").join(m).exists())
        .collect();
    let via = if modules.is_empty() {
        String::new()
    } else {
        format!(" ({})", modules.join(", "))
    };
    ok(
        NAME,
        format!(
            "{} opens read-write, KVM API version {version}{via}",
            dev.display()
        ),
    )
}

// ---------------------------------------------------------------- firecracker

const INSTALL_FIRECRACKER: &str =
    "run ./install.sh (installs a pinned, checksum-verified Firecracker)";

/// Firecracker is found (see [`tools::find_firecracker`]) and its version is
/// one banger supports.
pub fn check_firecracker(config: &Config) -> Check {
    const NAME: &str = "firecracker";
    let bin = match tools::find_firecracker(config) {
        Ok(Some(bin)) => bin,
        Ok(None) => {
            return fail(
                NAME,
                "firecracker not found in PATH or next to the banger binaries",
                INSTALL_FIRECRACKER,
            )
        }
        Err(e) => {
            return fail(
                NAME,
                e.to_string(),
                "fix firecracker_bin in config.toml, or remove it to search PATH",
            )
        }
    };
    let version = match tools::firecracker_version(&bin) {
        Ok(v) => v,
        Err(e) => return fail(NAME, format!("{}: {e}", bin.display()), INSTALL_FIRECRACKER),
    };
    match tools::check_firecracker_supported(version) {
        Ok(()) => ok(NAME, format!("{} (v{version})", bin.display())),
        Err(reason) => fail(
            NAME,
            format!("{}: {reason}", bin.display()),
            INSTALL_FIRECRACKER,
        ),
    }
}

// ---------------------------------------------------------------- binaries

fn check_required_tool(name: &str, program: &str, package: &str) -> Check {
    match tools::find_system_tool(program) {
        Some(p) => ok(name, p.display().to_string()),
        None => fail(
            name,
            format!("{program} not found ({package})"),
            format!("sudo apt-get install {package}"),
        ),
    }
}

/// `ip` (iproute2) is installed.
pub fn check_ip() -> Check {
    check_required_tool("ip", "ip", "iproute2")
}

/// `nft` (nftables) is installed.
pub fn check_nft() -> Check {
    check_required_tool("nft", "nft", "nftables")
}

fn check_optional_tool(name: &str, program: &str, package: &str, needed_for: &str) -> Check {
    match tools::find_system_tool(program) {
        Some(p) => ok(name, p.display().to_string()),
        None => warn(
            name,
            format!("{program} not found: needed for {needed_for}"),
            format!("sudo apt-get install {package}"),
        ),
    }
}

/// `git` is installed (workspaces).
pub fn check_git() -> Check {
    check_optional_tool("git", "git", "git", "workspaces")
}

/// `ssh` (openssh-client) is installed (`banger vm ssh`).
pub fn check_ssh() -> Check {
    check_optional_tool("ssh", "ssh", "openssh-client", "`banger vm ssh`")
}

/// The e2fsprogs programs banger runs on ext4 images.
pub const E2FSPROGS: &[&str] = &["mkfs.ext4", "e2fsck", "resize2fs", "debugfs"];

/// `mkfs.ext4`, `e2fsck`, `resize2fs` and `debugfs` are installed.
pub fn check_e2fsprogs() -> Check {
    e2fsprogs_with(tools::find_system_tool)
}

fn e2fsprogs_with(find: impl Fn(&str) -> Option<PathBuf>) -> Check {
    const NAME: &str = "e2fsprogs";
    let mut missing = Vec::new();
    let mut dirs = BTreeSet::new();
    for program in E2FSPROGS {
        match find(program) {
            Some(p) => {
                dirs.insert(
                    p.parent()
                        .map(|d| d.display().to_string())
                        .unwrap_or_default(),
                );
            }
            None => missing.push(*program),
        }
    }
    if missing.is_empty() {
        let dirs: Vec<String> = dirs.into_iter().collect();
        ok(
            NAME,
            format!("{} in {}", E2FSPROGS.join(", "), dirs.join(", ")),
        )
    } else {
        fail(
            NAME,
            format!("missing: {}", missing.join(", ")),
            "sudo apt-get install e2fsprogs",
        )
    }
}

/// `qemu-system-x86_64` is installed (optional: the QEMU backend).
pub fn check_qemu() -> Check {
    const NAME: &str = "qemu";
    const FIX: &str = "sudo apt-get install qemu-system-x86";
    let Some(bin) = tools::find_system_tool("qemu-system-x86_64") else {
        return warn(
            NAME,
            "optional: the QEMU backend (--vmm qemu) needs qemu-system-x86",
            FIX,
        );
    };
    match tools::program_version(&bin, tools::VERSION_TIMEOUT) {
        Ok(v) => ok(NAME, format!("{} ({v})", bin.display())),
        Err(e) => warn(NAME, format!("{}: {e}", bin.display()), FIX),
    }
}

/// Which VMM `auto` picks here and why ([`crate::vmm_select`]), and
/// whether the configured `[vm] vmm` can run guests here.
pub fn check_vmm(config: &Config) -> Check {
    use crate::vmm_select::{self, HostFacts};
    const NAME: &str = "vmm";
    let facts = HostFacts::detect(config);
    let auto = vmm_select::choose(&facts);
    let auto_says = format!("auto picks {}: {}", auto.vmm, auto.reason);
    let configured = config.vm.vmm.as_str();
    if let Err(e) = vmm_select::validate(configured) {
        return fail(
            NAME,
            format!("[vm] vmm: {e}"),
            "set [vm] vmm to auto, firecracker or qemu",
        );
    }
    let vmm = match configured {
        "auto" => auto.vmm,
        vmm_select::FIRECRACKER => vmm_select::FIRECRACKER,
        _ => vmm_select::QEMU,
    };
    let detail = if configured == "auto" {
        auto_says
    } else {
        format!("[vm] vmm = {configured} ({auto_says})")
    };
    if vmm == vmm_select::FIRECRACKER && auto.vmm != vmm_select::FIRECRACKER {
        return warn(
            NAME,
            detail,
            "set [vm] vmm = \"auto\" (or qemu), or pass --vmm qemu, to boot guests under QEMU here",
        );
    }
    if vmm == vmm_select::QEMU && !facts.qemu {
        return fail(NAME, detail, "sudo apt-get install qemu-system-x86");
    }
    ok(NAME, detail)
}

// ---------------------------------------------------------------- devices and modules

/// `/dev/net/tun` exists and opens read-write.
pub fn check_tun() -> Check {
    check_tun_at(Path::new("/dev/net/tun"))
}

fn check_tun_at(dev: &Path) -> Check {
    const NAME: &str = "tun";
    match OpenOptions::new().read(true).write(true).open(dev) {
        Ok(_) => ok(NAME, format!("{} opens read-write", dev.display())),
        Err(e) if e.kind() == ErrorKind::NotFound => fail(
            NAME,
            format!("{} does not exist", dev.display()),
            "sudo modprobe tun (in a container: --device /dev/net/tun)",
        ),
        Err(e) if unprivileged_denial(&e) => skip(
            NAME,
            format!(
                "uid {} cannot open {}; run as root to check",
                uid(),
                dev.display()
            ),
        ),
        Err(e) => fail(
            NAME,
            format!("cannot open {} read-write: {e}", dev.display()),
            "sudo modprobe tun (in a container: --device /dev/net/tun)",
        ),
    }
}

/// What the kernel can do about a module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Module {
    /// `/sys/module/<name>` exists.
    Loaded,
    /// Listed in `modules.builtin` for the running kernel.
    BuiltIn,
    /// `modprobe -n -q <name>` succeeds: it would load.
    Loadable,
    /// None of the above, and modprobe says it cannot load it.
    Unavailable,
    /// Not loaded, not known built in, and no modprobe to ask.
    Unknown,
}

fn module_state(name: &str) -> Module {
    if Path::new("/sys/module").join(name).exists() {
        return Module::Loaded;
    }
    if module_builtin(name) {
        return Module::BuiltIn;
    }
    let Some(modprobe) = tools::find_system_tool("modprobe") else {
        return Module::Unknown;
    };
    // A dry run (`-n`): doctor only reports, it loads nothing.
    let mut cmd = Cmd::new(modprobe);
    cmd.args(["-n", "-q", name])
        .timeout(Duration::from_secs(10))
        .stdout(Out::Null);
    match cmd.output() {
        Ok(done) if done.status.success() => Module::Loadable,
        Ok(_) => Module::Unavailable,
        Err(_) => Module::Unknown,
    }
}

fn module_builtin(name: &str) -> bool {
    let uname = rustix::system::uname();
    let release = uname.release().to_string_lossy();
    let Ok(list) = std::fs::read_to_string(format!("/lib/modules/{release}/modules.builtin"))
    else {
        return false;
    };
    let want = format!("{}.ko", name.replace('-', "_"));
    list.lines().any(|line| {
        line.rsplit('/')
            .next()
            .is_some_and(|file| file.replace('-', "_") == want)
    })
}

/// The Linux bridge module is loaded, built in, or loadable.
pub fn check_bridge() -> Check {
    const NAME: &str = "bridge";
    match module_state("bridge") {
        Module::Loaded => ok(NAME, "bridge module loaded"),
        Module::BuiltIn => ok(NAME, "bridge support built into the kernel"),
        Module::Loadable => warn(NAME, "not loaded; banger loads it on first use", "sudo modprobe bridge"),
        Module::Unavailable => fail(
            NAME,
            "the bridge module is not loaded and cannot be loaded",
            "install this kernel's modules (Debian: linux-image-$(uname -r)) or use a kernel with CONFIG_BRIDGE",
        ),
        Module::Unknown => fail(
            NAME,
            "the bridge module is not loaded, and without modprobe banger cannot load it",
            "sudo apt-get install kmod && sudo modprobe bridge",
        ),
    }
}

/// `/dev/loop-control` exists.
pub fn check_loop() -> Check {
    const NAME: &str = "loop";
    let dev = Path::new("/dev/loop-control");
    if dev.exists() {
        ok(NAME, format!("{} exists", dev.display()))
    } else {
        fail(
            NAME,
            format!("{} does not exist", dev.display()),
            "sudo modprobe loop (in a container: --device /dev/loop-control)",
        )
    }
}

/// Whether the kernel's device-mapper driver is registered (listed in
/// `/proc/misc`). The one probe: `doctor` and the daemon's `dmsetup` both ask
/// it, and neither runs `dmsetup` first (it creates `/dev/mapper/control` as a
/// side effect even when no driver is behind it).
pub fn kernel_has_device_mapper() -> bool {
    std::fs::read_to_string("/proc/misc").is_ok_and(|misc| {
        misc.lines()
            .any(|l| l.split_whitespace().nth(1) == Some("device-mapper"))
    })
}

/// device-mapper with dm-snapshot; optional (a warning when missing).
pub fn check_device_mapper() -> Check {
    const NAME: &str = "device-mapper";
    let mut missing = Vec::new();
    if !Path::new("/dev/mapper/control").exists() {
        missing.push("no /dev/mapper/control");
    }
    if !kernel_has_device_mapper() {
        missing.push("device-mapper not in /proc/misc");
    }
    let snapshot = module_state("dm_snapshot");
    if matches!(snapshot, Module::Unavailable | Module::Unknown) {
        missing.push("dm_snapshot not available");
    }
    if missing.is_empty() {
        let how = match snapshot {
            Module::Loadable => "dm-snapshot loads on first use",
            Module::BuiltIn => "dm-snapshot built in",
            _ => "dm-snapshot loaded",
        };
        ok(NAME, format!("device-mapper available; {how}"))
    } else {
        warn(
            NAME,
            format!(
                "device-mapper unavailable: root disks use reflink or sparse copies instead ({})",
                missing.join(", ")
            ),
            "optional: sudo modprobe dm_snapshot (needs a kernel with CONFIG_BLK_DEV_DM and CONFIG_DM_SNAPSHOT)",
        )
    }
}

// ---------------------------------------------------------------- filesystem

/// `path`, or its nearest ancestor that exists (the state dir may not exist
/// before the daemon's first start).
fn nearest_existing(path: &Path) -> PathBuf {
    let mut p = path;
    loop {
        if p.exists() {
            return p.to_path_buf();
        }
        match p.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => p = parent,
            _ => return PathBuf::from("/"),
        }
    }
}

/// A name for a `statfs` `f_type`.
fn fs_type_name(magic: u32) -> String {
    match magic {
        0x5846_5342 => "xfs".into(),
        0x9123_683e => "btrfs".into(),
        0xEF53 => "ext4".into(),
        0x0102_1994 => "tmpfs".into(),
        0x794c_7630 => "overlayfs".into(),
        other => format!("filesystem type {other:#x}"),
    }
}

fn fs_type_of(dir: &Path) -> String {
    match rustix::fs::statfs(dir) {
        // f_type is a 32-bit magic number in a wider signed field.
        Ok(st) => fs_type_name(st.f_type as u32),
        Err(_) => "an unknown filesystem".into(),
    }
}

/// Which root-disk backend new VMs get, from the config and the two checks
/// above (the daemon picks the same way: `auto` is reflink, else overlay for
/// images with the `overlay` feature, else copy; which one a VM got, and why,
/// is in its `vm show`).
/// dm-snapshot is opt-in: `auto` never picks it, because its paths have not
/// run against a real device-mapper (none on the machines banger was written
/// on), and its crash recovery (leaked loops and tables) is not proven; the
/// check says so when the host has device-mapper.
pub fn check_disk_backend(configured: &str, dm: &Check, reflink: &Check) -> Check {
    const NAME: &str = "disk-backend";
    let has_reflink = reflink.status == CheckStatus::Ok;
    let has_dm = dm.status == CheckStatus::Ok;
    let usable = |b: &str| match b {
        "reflink" => has_reflink,
        "dm-snapshot" => has_dm,
        "copy" | "overlay" => true,
        _ => false,
    };
    match configured {
        "auto" => {
            let (b, why) = if has_reflink {
                ("reflink", "O(1) copy-on-write clones")
            } else {
                (
                    "copy or overlay",
                    "no reflinks here: VMs of images with the overlay feature share the image's \
                     rootfs read-only with a sparse per-VM overlay disk (O(1)); others get a \
                     full sparse copy of their image",
                )
            };
            let dm_note = if has_dm && !has_reflink {
                "; device-mapper is here, but auto does not pick dm-snapshot: it is opt-in \
                 ([vm] disk_backend = \"dm-snapshot\") because it has never run against a real \
                 device-mapper and its crash recovery is unproven"
            } else {
                ""
            };
            ok(
                NAME,
                format!("VM root disks: {b} ({why}; [vm] disk_backend = auto){dm_note}"),
            )
        }
        "dm-snapshot" if has_dm => warn(
            NAME,
            "VM root disks: dm-snapshot (set in config); opt-in and not yet exercised against a \
             real device-mapper: a crash during activation may leak loop devices and the \
             banger-<id> table",
            "set [vm] disk_backend = \"auto\" for reflink, overlay or copy",
        ),
        b if usable(b) => ok(NAME, format!("VM root disks: {b} (set in config)")),
        b @ ("reflink" | "dm-snapshot") => fail(
            NAME,
            format!("config [vm] disk_backend = {b:?}, but this host cannot do it"),
            "set [vm] disk_backend = \"auto\" (or fix the host, see the checks above)",
        ),
        b => fail(
            NAME,
            format!("config [vm] disk_backend = {b:?} is not a backend"),
            "use auto, reflink, overlay, dm-snapshot or copy",
        ),
    }
}

/// Whether the state dir's filesystem can reflink (O(1) VM disk clones).
pub fn check_reflink(state_dir: &Path) -> Check {
    const NAME: &str = "reflink";
    let dir = nearest_existing(state_dir);
    let fstype = fs_type_of(&dir);
    let probed_in = if dir == state_dir {
        String::new()
    } else {
        format!(
            " (probed in {}, the state dir does not exist yet)",
            dir.display()
        )
    };
    match crate::artifact::stage::reflink_supported(&dir) {
        Ok(true) => ok(NAME, format!("state dir on {fstype} supports reflink clones{probed_in}")),
        Ok(false) => warn(
            NAME,
            format!("state dir on {fstype}: no reflink, so VM disks will be full sparse copies{probed_in}"),
            "put the state dir on xfs or btrfs for O(1) clones (or BANGER_HOME on such a filesystem)",
        ),
        Err(e) if unprivileged_denial(&e) || (!is_root() && e.raw_os_error() == Some(libc::EROFS)) => {
            skip(NAME, format!("cannot write a probe file in {}; run as root to check", dir.display()))
        }
        Err(e) => warn(
            NAME,
            format!("could not probe reflink in {}: {e}", dir.display()),
            format!("make {} writable by root", dir.display()),
        ),
    }
}

const GIB: u64 = 1 << 30;
/// Below this much free space in the state dir, the check fails.
pub const DISK_FAIL_BELOW: u64 = 2 * GIB;
/// Below this much free space in the state dir, the check warns.
pub const DISK_WARN_BELOW: u64 = 10 * GIB;

/// The status [`check_disk_space`] gives for `free_bytes`.
pub fn disk_space_status(free_bytes: u64) -> CheckStatus {
    if free_bytes < DISK_FAIL_BELOW {
        CheckStatus::Fail
    } else if free_bytes < DISK_WARN_BELOW {
        CheckStatus::Warn
    } else {
        CheckStatus::Ok
    }
}

/// Bytes available to unprivileged writers on the filesystem holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Free space on the state dir's filesystem: fail below 2 GiB, warn below 10.
pub fn check_disk_space(state_dir: &Path) -> Check {
    const NAME: &str = "disk-space";
    let dir = nearest_existing(state_dir);
    let free = match free_bytes(&dir) {
        Ok(f) => f,
        Err(e) if unprivileged_denial(&e) => {
            return skip(
                NAME,
                format!("cannot statvfs {}; run as root to check", dir.display()),
            )
        }
        Err(e) => {
            return fail(
                NAME,
                format!("cannot statvfs {}: {e}", dir.display()),
                format!("check that {} is accessible", dir.display()),
            )
        }
    };
    let detail = format!(
        "{:.1} GiB free on {}",
        free as f64 / GIB as f64,
        dir.display()
    );
    let fix = format!(
        "free space on {} (images and VM disks live there), or move the state dir with BANGER_HOME",
        dir.display()
    );
    match disk_space_status(free) {
        CheckStatus::Ok => ok(NAME, detail),
        CheckStatus::Warn => warn(
            NAME,
            format!("only {detail}; 10 GiB or more recommended"),
            fix,
        ),
        _ => fail(
            NAME,
            format!("only {detail}; banger needs at least 2 GiB"),
            fix,
        ),
    }
}

// ---------------------------------------------------------------- store

/// The state database opens read-only, has a schema this banger knows, and
/// passes SQLite's quick check and the foreign-key check.
pub fn check_store(db: &Path) -> Check {
    const NAME: &str = "store";
    let restore = format!(
        "stop bangerd and restore {} from a backup, or move it aside to start empty (banger then forgets its VMs, images and kernels)",
        db.display()
    );
    let denied = || {
        skip(
            NAME,
            format!("cannot read {}; run as root to check", db.display()),
        )
    };
    match std::fs::metadata(db) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return ok(
                NAME,
                "not created yet (the daemon creates it on first start)",
            )
        }
        Err(e) if e.kind() == ErrorKind::PermissionDenied => return denied(),
        Err(e) => return fail(NAME, format!("cannot stat {}: {e}", db.display()), restore),
        Ok(m) if !m.is_file() => {
            return fail(
                NAME,
                format!("{} is not a regular file", db.display()),
                restore,
            )
        }
        Ok(_) => {}
    }
    // SQLite reports a refused open as a generic CANTOPEN; ask the OS first.
    if let Err(e) = std::fs::File::open(db) {
        if e.kind() == ErrorKind::PermissionDenied {
            return denied();
        }
    }
    let store = match Store::open_read_only(db) {
        Ok(s) => s,
        Err(e @ StoreError::NewerSchema { .. }) => {
            return fail(
                NAME,
                e.to_string(),
                "upgrade banger (a newer banger wrote this database)",
            )
        }
        Err(e) => return fail(NAME, format!("{}: {e}", db.display()), restore),
    };
    let version = match store.schema_version() {
        Ok(v) => v,
        Err(e) => return fail(NAME, format!("{}: {e}", db.display()), restore),
    };
    match store.integrity_problems() {
        Ok(problems) if problems.is_empty() => {
            let pending = if version < migrations::LATEST {
                format!(
                    " (the daemon migrates it to v{} on start)",
                    migrations::LATEST
                )
            } else {
                String::new()
            };
            ok(NAME, format!("schema v{version}, integrity ok{pending}"))
        }
        Ok(problems) => {
            let shown: Vec<&str> = problems.iter().take(5).map(String::as_str).collect();
            let more = if problems.len() > shown.len() {
                format!(" (and {} more)", problems.len() - shown.len())
            } else {
                String::new()
            };
            fail(
                NAME,
                format!(
                    "schema v{version}, integrity problems: {}{more}",
                    shown.join("; ")
                ),
                restore,
            )
        }
        Err(e) => fail(NAME, format!("{}: {e}", db.display()), restore),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn kvm_check_fails_on_missing_or_wrong_device() {
        let c = check_kvm_at(Path::new("/nonexistent/kvm"));
        assert_eq!(c.status, CheckStatus::Fail, "{c:?}");
        assert!(c.detail.contains("does not exist"), "{c:?}");
        assert!(
            c.fix.as_deref().unwrap().contains("modprobe kvm_intel"),
            "{c:?}"
        );
        // /dev/null opens read-write but is no KVM device: the ioctl decides.
        let c = check_kvm_at(Path::new("/dev/null"));
        assert_eq!(c.status, CheckStatus::Fail, "{c:?}");
        assert!(c.detail.contains("KVM_GET_API_VERSION"), "{c:?}");
    }

    #[test]
    fn kvm_check_on_this_machine_agrees_with_opening_dev_kvm() {
        let c = check_kvm();
        let opens = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok();
        if opens {
            assert_eq!(c.status, CheckStatus::Ok, "{c:?}");
            assert!(c.detail.contains("API version 12"), "{c:?}");
        } else {
            assert_ne!(c.status, CheckStatus::Ok, "{c:?}");
        }
    }

    #[test]
    fn tun_check_fails_on_missing_device() {
        let c = check_tun_at(Path::new("/nonexistent/tun"));
        assert_eq!(c.status, CheckStatus::Fail);
        assert!(c.fix.unwrap().contains("modprobe tun"));
    }

    #[test]
    fn e2fsprogs_names_the_missing_programs() {
        let c = e2fsprogs_with(|p| {
            (p == "mkfs.ext4" || p == "e2fsck").then(|| PathBuf::from("/sbin").join(p))
        });
        assert_eq!(c.status, CheckStatus::Fail);
        assert_eq!(c.detail, "missing: resize2fs, debugfs");
        assert_eq!(c.fix.as_deref(), Some("sudo apt-get install e2fsprogs"));
        let c = e2fsprogs_with(|p| Some(PathBuf::from("/usr/sbin").join(p)));
        assert_eq!(c.status, CheckStatus::Ok, "{c:?}");
        assert!(c.detail.ends_with("in /usr/sbin"), "{c:?}");
    }

    #[test]
    fn firecracker_check_reports_unsupported_and_misconfigured() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fc");
        std::fs::write(&fake, "#!/bin/sh\necho 'Firecracker v1.3.0'\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = check_firecracker(&Config {
            firecracker_bin: Some(fake),
            ..Config::default()
        });
        assert_eq!(c.status, CheckStatus::Fail, "{c:?}");
        assert!(c.detail.contains("1.3.0 is older than 1.10.0"), "{c:?}");
        assert_eq!(c.fix.as_deref(), Some(INSTALL_FIRECRACKER));

        let c = check_firecracker(&Config {
            firecracker_bin: Some(dir.path().join("absent")),
            ..Config::default()
        });
        assert_eq!(c.status, CheckStatus::Fail, "{c:?}");
        assert!(c.detail.contains("firecracker_bin"), "{c:?}");
    }

    #[test]
    fn store_check_missing_migrated_newer_garbage_and_broken() {
        let home = tempfile::tempdir().unwrap();
        let paths = Paths::under(home.path());
        let db = paths.db();

        let c = check_store(&db);
        assert_eq!(c.status, CheckStatus::Ok, "{c:?}");
        assert_eq!(
            c.detail,
            "not created yet (the daemon creates it on first start)"
        );

        std::fs::create_dir_all(&paths.state_dir).unwrap();
        drop(Store::open(&db).unwrap());
        let c = check_store(&db);
        assert_eq!(c.status, CheckStatus::Ok, "{c:?}");
        assert_eq!(
            c.detail,
            format!("schema v{}, integrity ok", migrations::LATEST)
        );

        // A dangling foreign key (written with enforcement off) is a problem.
        {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.pragma_update(None, "foreign_keys", false).unwrap();
            conn.execute(
                "INSERT INTO default_images (owner_uid, image_id) VALUES (0, 'ghost')",
                [],
            )
            .unwrap();
        }
        let c = check_store(&db);
        assert_eq!(c.status, CheckStatus::Fail, "{c:?}");
        assert!(
            c.detail.contains("foreign key violation in default_images"),
            "{c:?}"
        );
        {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.execute("DELETE FROM default_images", []).unwrap();
            conn.pragma_update(None, "user_version", migrations::LATEST + 1)
                .unwrap();
        }
        let c = check_store(&db);
        assert_eq!(c.status, CheckStatus::Fail, "{c:?}");
        assert!(c.detail.contains("newer than this banger knows"), "{c:?}");
        assert!(
            c.fix.as_deref().unwrap().contains("upgrade banger"),
            "{c:?}"
        );

        for f in ["state.db", "state.db-wal", "state.db-shm"] {
            let _ = std::fs::remove_file(paths.state_dir.join(f));
        }
        std::fs::write(&db, vec![0x42u8; 8192]).unwrap();
        let c = check_store(&db);
        assert_eq!(c.status, CheckStatus::Fail, "{c:?}");
        assert!(c.detail.contains("not a database"), "{c:?}");
        assert!(c.fix.as_deref().unwrap().contains("backup"), "{c:?}");
    }

    #[test]
    fn disk_space_thresholds() {
        assert_eq!(disk_space_status(0), CheckStatus::Fail);
        assert_eq!(disk_space_status(2 * GIB - 1), CheckStatus::Fail);
        assert_eq!(disk_space_status(2 * GIB), CheckStatus::Warn);
        assert_eq!(disk_space_status(10 * GIB - 1), CheckStatus::Warn);
        assert_eq!(disk_space_status(10 * GIB), CheckStatus::Ok);
    }

    #[test]
    fn disk_space_check_agrees_with_statvfs() {
        let home = tempfile::tempdir().unwrap();
        // The state dir does not exist: the nearest existing ancestor is used.
        let state = home.path().join("state");
        let c = check_disk_space(&state);
        let st = rustix::fs::statvfs(home.path()).unwrap();
        let free = st.f_bavail * st.f_frsize;
        assert_eq!(c.status, disk_space_status(free), "{c:?} vs {free} bytes");
        assert!(
            c.detail.contains(&home.path().display().to_string()),
            "{c:?}"
        );
        let gib: f64 = c
            .detail
            .split_whitespace()
            .find_map(|w| w.parse().ok())
            .unwrap();
        assert!(
            (gib - free as f64 / GIB as f64).abs() < 0.2,
            "{c:?} vs {free}"
        );
        assert_eq!(c.fix.is_some(), c.status != CheckStatus::Ok);
    }

    #[test]
    fn reflink_probe_matches_filesystem_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let c = check_reflink(&dir.path().join("state"));
        let fstype = fs_type_of(dir.path());
        assert!(c.detail.contains(&fstype), "{c:?}");
        match fstype.as_str() {
            "ext4" | "tmpfs" => assert_eq!(c.status, CheckStatus::Warn, "{c:?}"),
            "xfs" | "btrfs" => assert_eq!(c.status, CheckStatus::Ok, "{c:?}"),
            _ => {}
        }
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "probe files left behind"
        );
    }

    /// A real positive: an xfs filesystem (reflink on by default) on a loop
    /// device. Needs root, mkfs.xfs and loop mounts (scripts/test.sh runs as
    /// root; install.sh installs xfsprogs): fails, never skips, without them.
    #[test]
    fn reflink_ok_on_xfs_loop_mount() {
        let (Some(mkfs), Some(mount), Some(umount)) = (
            tools::find_system_tool("mkfs.xfs"),
            tools::find_system_tool("mount"),
            tools::find_system_tool("umount"),
        ) else {
            panic!("mkfs.xfs, mount or umount not found (apt-get install xfsprogs mount)");
        };
        assert!(
            is_root(),
            "needs root: run the tests with sudo scripts/test.sh"
        );
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("xfs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        std::fs::File::create(&img)
            .unwrap()
            .set_len(320 << 20)
            .unwrap();
        let quiet = |cmd: &mut Command| {
            cmd.stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
        };
        assert!(quiet(Command::new(&mkfs).arg("-q").arg(&img)).success());
        assert!(
            quiet(
                Command::new(&mount)
                    .arg("-o")
                    .arg("loop")
                    .arg(&img)
                    .arg(&mnt),
            )
            .success(),
            "loop mount of an xfs image failed"
        );
        struct Unmount(PathBuf, PathBuf);
        impl Drop for Unmount {
            fn drop(&mut self) {
                let _ = Command::new(&self.0).arg(&self.1).status();
            }
        }
        let _unmount = Unmount(umount, mnt.clone());
        let state = mnt.join("state");
        std::fs::create_dir(&state).unwrap();
        let c = check_reflink(&state);
        assert_eq!(c.status, CheckStatus::Ok, "{c:?}");
        assert_eq!(c.detail, "state dir on xfs supports reflink clones");
        assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0);
    }

    #[test]
    fn run_checks_reports_every_check_once_in_order() {
        let home = tempfile::tempdir().unwrap();
        let paths = Paths::under(home.path());
        let checks = run_checks(&paths, &Config::default());
        for c in &checks {
            eprintln!(
                "{:<14} {:<5} {}",
                c.name,
                format!("{:?}", c.status).to_lowercase(),
                c.detail
            );
            if let Some(fix) = &c.fix {
                eprintln!("{:<20} fix: {fix}", "");
            }
        }
        let names: Vec<&str> = checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, CHECK_NAMES);
        for c in &checks {
            assert!(!c.detail.is_empty(), "{c:?}");
            let needs_fix = matches!(c.status, CheckStatus::Warn | CheckStatus::Fail);
            assert_eq!(c.fix.is_some(), needs_fix, "{c:?}");
        }
        // The home is fresh: no database yet, and it was not created.
        let store = checks.last().unwrap();
        assert_eq!(store.status, CheckStatus::Ok, "{store:?}");
        assert!(!paths.db().exists());
    }

    #[test]
    fn disk_backend_follows_the_host_and_config() {
        let okc = |n: &str| Check {
            name: n.into(),
            status: CheckStatus::Ok,
            detail: String::new(),
            fix: None,
        };
        let warnc = |n: &str| Check {
            name: n.into(),
            status: CheckStatus::Warn,
            detail: String::new(),
            fix: None,
        };
        let b = check_disk_backend("auto", &warnc("device-mapper"), &okc("reflink"));
        assert!(b.detail.contains("reflink"), "{b:?}");
        let b = check_disk_backend("auto", &okc("device-mapper"), &warnc("reflink"));
        assert!(b.detail.contains("dm-snapshot"), "{b:?}");
        // dm-snapshot is opt-in (issue 9 §6): auto picks copy and says why.
        assert!(b.detail.starts_with("VM root disks: copy"), "{b:?}");
        assert!(b.detail.contains("opt-in"), "{b:?}");
        let b = check_disk_backend("dm-snapshot", &okc("device-mapper"), &warnc("r"));
        assert_eq!(b.status, CheckStatus::Warn, "{b:?}");
        assert!(b.detail.contains("not yet exercised"), "{b:?}");
        let b = check_disk_backend("auto", &warnc("device-mapper"), &warnc("reflink"));
        assert!(b.detail.contains("copy"), "{b:?}");
        assert!(b.detail.contains("overlay feature"), "{b:?}");
        assert_eq!(
            check_disk_backend("overlay", &warnc("dm"), &warnc("r")).status,
            CheckStatus::Ok
        );
        assert_eq!(
            check_disk_backend("reflink", &okc("dm"), &warnc("r")).status,
            CheckStatus::Fail
        );
        assert_eq!(
            check_disk_backend("copy", &warnc("dm"), &warnc("r")).status,
            CheckStatus::Ok
        );
        assert_eq!(
            check_disk_backend("zfs", &okc("dm"), &okc("r")).status,
            CheckStatus::Fail
        );
    }
}
