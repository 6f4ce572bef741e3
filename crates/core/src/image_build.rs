//! `banger image build debian-bookworm [--variant minimal|full]`: a golden
//! image — `rootfs.ext4` plus `work-seed.ext4` (the guest's `/root`) — made
//! from Debian packages, without booting anything and without mounting.
//!
//! The recipe ([`build`]):
//!
//! 1. **bootstrap**: `mmdebstrap --mode=root --variant=minbase --include=...`
//!    into a directory, in a private mount namespace (the `/proc`, `/sys` and
//!    `/dev` mounts it makes for the package scripts vanish with it, even if it
//!    is killed);
//! 2. **configure**: files written straight into the tree (no chroot; units
//!    are enabled and masked by making the symlinks `systemctl` would):
//!    - sshd: keys only, root by key only, and the host key read from
//!      `/root/.banger/ssh/ssh_host_ed25519_key` on the VM's own work disk
//!      (the daemon writes a fresh key there at create and pins it), so every
//!      `/etc/ssh/ssh_host_*` key the package generated is deleted: no two VMs
//!      share a key and nothing is trusted on first use. `ssh.service` requires
//!      the `/root` mount. (Debian has no regenerate-keys-on-boot service;
//!      one would be masked.)
//!    - network from the kernel command line (`ip=`; no DHCP, no
//!      networkd/ifupdown config), `/etc/resolv.conf` → `/proc/net/pnp` (where
//!      the kernel's autoconfiguration writes `nameserver`), an empty
//!      `/etc/hostname` (`systemd.hostname=` names the guest;
//!      `libnss-myhostname` resolves that name), localhost-only `/etc/hosts`;
//!    - `/etc/fstab`: `/dev/vda` on `/`; the work disk `/dev/vdb` goes on
//!      `/root` through `banger-work-disk.service` (no wait for udev);
//!    - root's password locked (login by SSH key only); the serial getty that
//!      systemd starts from `console=ttyS0` is left alone (never masked);
//!    - [`MASKED_UNITS`]: timers and waits that only cost time in a sandbox;
//!    - the agent binary as `/usr/local/bin/banger-agent`, with
//!      `banger-agent.service` enabled;
//!    - apt lists and caches dropped, and for `minimal` the docs (copyright
//!      files kept), man/info pages and translations; `/etc/machine-id` empty
//!      (systemd makes one per VM on its first boot);
//!    - `/root` moved out into the work seed's tree (with `.ssh/` and
//!      `.banger/ssh/`, both 0700), leaving `/root` empty in the rootfs;
//! 3. **pack**: `mkfs.ext4 -d` turns each tree into an image — owners, modes,
//!    xattrs and hard links preserved — sized to its content + 25% + 64 MiB.
//!
//! Everything happens in `cache_dir/<key>.tmp/` (one build per key at a time,
//! under `cache_dir/<key>.lock`), renamed to `cache_dir/<key>/` when complete,
//! so an entry that exists is complete; a build killed half-way leaves a
//! `.tmp` directory that the next build of that key removes.
//!
//! Time sync: `systemd-timesyncd` is not installed and is masked. The guest
//! clock is the hypervisor's paravirtual clock (kvm-clock), which follows the
//! host's; NTP would need `--nat`, and stepping the clock in the middle of a
//! build confuses `make`. (After a pause/resume the guest clock lags by the
//! pause; setting it is the host's job, through the agent.)

use std::collections::{HashSet, VecDeque};
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{
    symlink, DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt,
};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::build_lock::{lock_key, LockError};
use crate::tools::find_system_tool;

/// Hashed into every cache key with the package lists and every file the
/// recipe writes: bump it when the steps change in a way those do not show.
pub const RECIPE_VERSION: u32 = 1;

/// The files of a built image, in `cache_dir/<key>/`.
pub const ROOTFS_FILE: &str = "rootfs.ext4";
pub const WORK_SEED_FILE: &str = "work-seed.ext4";
/// What went into the image (JSON: key, spec, packages, sizes).
pub const BUILD_INFO_FILE: &str = "build.json";

/// Filesystem labels.
pub const ROOT_LABEL: &str = "banger-root";
pub const WORK_LABEL: &str = "banger-work";

/// Where the agent is installed in the guest.
pub const AGENT_GUEST_PATH: &str = "usr/local/bin/banger-agent";

/// Free space added to each image: 25% of the content plus this.
pub const HEADROOM: u64 = 64 << 20;

const MIB: u64 = 1 << 20;
/// How often a running tool is polled for exit, output and cancellation.
const POLL: Duration = Duration::from_millis(100);
/// How long a cancelled tool gets to clean up after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(10);
/// Lines of tool output kept for errors.
const LOG_TAIL_LINES: usize = 40;

/// The distributions [`build`] knows.
struct Distro {
    name: &'static str,
    suite: &'static str,
    mirror: &'static str,
    /// The security archive, used with the default mirror only.
    security: &'static str,
}

const DISTROS: &[Distro] = &[Distro {
    name: "debian-bookworm",
    suite: "bookworm",
    mirror: "http://deb.debian.org/debian",
    security: "http://deb.debian.org/debian-security",
}];

/// Packages on top of `minbase` (Essential + apt). Recommends are not
/// installed. udev is what makes `/dev/vdb` a device unit systemd can mount;
/// dbus + libpam-systemd give SSH logins a proper session.
pub const MINIMAL_PACKAGES: &[&str] = &[
    "systemd-sysv",
    "udev",
    "dbus",
    "libpam-systemd",
    "libnss-myhostname",
    "openssh-server",
    "openssh-sftp-server",
    "sudo",
    "ca-certificates",
    "curl",
    "git",
    "iproute2",
    "iputils-ping",
    "netbase",
    "procps",
    "less",
    "nano",
];

/// Added by [`Variant::Full`].
pub const FULL_EXTRA_PACKAGES: &[&str] = &[
    "build-essential",
    "docker.io",
    "python3",
    "jq",
    "vim",
    "htop",
    "unzip",
    "rsync",
    "man-db",
];

/// Units masked in every image, with why.
pub const MASKED_UNITS: &[(&str, &str)] = &[
    (
        "systemd-networkd-wait-online.service",
        "the kernel configures eth0 from ip= before init; nothing to wait for",
    ),
    ("apt-daily.timer", "no unattended apt runs in a sandbox"),
    (
        "apt-daily-upgrade.timer",
        "no unattended upgrades in a sandbox",
    ),
    (
        "man-db.timer",
        "index rebuilds are wasted work in a short-lived VM",
    ),
    (
        "e2scrub_all.timer",
        "LVM snapshots scrubbing: there is no LVM",
    ),
    ("e2scrub_reap.service", "runs at every boot, for LVM only"),
    ("fstrim.timer", "the host owns the disk files"),
    ("dpkg-db-backup.timer", "daily backups of a disposable root"),
    (
        "systemd-timesyncd.service",
        "the clock is the hypervisor's kvm-clock; NTP needs --nat",
    ),
    (
        "getty@tty1.service",
        "no virtual terminal in a microVM; the serial getty is the console",
    ),
    (
        "systemd-modules-load.service",
        "banger's kernel has no modules: everything is built in",
    ),
    (
        "modprobe@.service",
        "no modules to load (each instance cost ~2 s of boot under TCG)",
    ),
];

/// SSH-key regeneration services some distributions run at boot; masked
/// when present (Debian has none: its keys come from the package's postinst).
const KEYGEN_UNITS: &[&str] = &[
    "regenerate_ssh_host_keys.service",
    "sshd-keygen.service",
    "ssh-keygen.service",
];

const SSHD_DROPIN: &str = "\
# banger: root logs in with an SSH key only. The host key is this VM's own,
# on its work disk (/root), written by bangerd when the VM was created.
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
HostKey /root/.banger/ssh/ssh_host_ed25519_key
";

const SSH_SERVICE_DROPIN: &str = "\
# banger: the host key is on the work disk, which banger-work-disk.service
# mounts at /root.
[Unit]
Requires=banger-work-disk.service
After=banger-work-disk.service
";

const FSTAB: &str = "\
# banger: the root disk. The VM's work disk (/dev/vdb) is mounted on /root by
# banger-work-disk.service, not here: see that unit.
/dev/vda / ext4 rw,noatime 0 1
";

/// The work disk on /root, mounted by a service rather than from fstab: an
/// fstab mount waits for udev to announce `dev-vdb.device`, which under
/// QEMU/TCG came 11-14 s into boot and put everything after it (sshd needs
/// the host key on /root) that late. The kernel's devtmpfs has `/dev/vdb`
/// before init starts (virtio-blk is built in), so nothing needs to wait.
/// No fsck: ext4's journal replays at mount.
const WORK_DISK_UNIT: &str = "\
[Unit]
Description=banger work disk on /root
DefaultDependencies=no
After=systemd-remount-fs.service
Before=local-fs.target
ConditionPathExists=/dev/vdb

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/mount -t ext4 -o rw,noatime /dev/vdb /root

[Install]
WantedBy=local-fs.target
";

const HOSTS: &str = "\
127.0.0.1\tlocalhost
::1\t\tlocalhost ip6-localhost ip6-loopback
ff02::1\t\tip6-allnodes
ff02::2\t\tip6-allrouters
";

const LOCALE: &str = "LANG=C.UTF-8\n";

const AGENT_UNIT: &str = "\
[Unit]
Description=banger guest agent
After=local-fs.target
StartLimitIntervalSec=0

[Service]
Type=simple
ExecStart=/usr/local/bin/banger-agent
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
";

/// Every file the configure step writes, as (path in the tree, content):
/// hashed into the cache key.
const GUEST_FILES: &[(&str, &str)] = &[
    ("etc/ssh/sshd_config.d/banger.conf", SSHD_DROPIN),
    (
        "etc/systemd/system/ssh.service.d/banger.conf",
        SSH_SERVICE_DROPIN,
    ),
    ("etc/fstab", FSTAB),
    ("etc/hosts", HOSTS),
    ("etc/hostname", ""),
    ("etc/machine-id", ""),
    ("etc/default/locale", LOCALE),
    ("etc/systemd/system/banger-agent.service", AGENT_UNIT),
    (
        "etc/systemd/system/banger-work-disk.service",
        WORK_DISK_UNIT,
    ),
];

/// `minimal` or `full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    Minimal,
    Full,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Minimal => "minimal",
            Variant::Full => "full",
        }
    }

    /// The packages installed on top of `minbase`, sorted.
    pub fn packages(self) -> Vec<&'static str> {
        let mut p: Vec<&str> = MINIMAL_PACKAGES.to_vec();
        if self == Variant::Full {
            p.extend_from_slice(FULL_EXTRA_PACKAGES);
        }
        p.sort_unstable();
        p
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Variant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "minimal" => Ok(Variant::Minimal),
            "full" => Ok(Variant::Full),
            _ => Err(format!("unknown image variant {s:?} (minimal or full)")),
        }
    }
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// "debian-bookworm".
    pub distro: String,
    pub variant: Variant,
    /// A static x86-64 `banger-agent` (see the `banger-agent` crate).
    pub agent_binary: PathBuf,
    /// A Debian archive URL replacing `http://deb.debian.org/debian` (then
    /// the security archive is not used). Not part of the cache key: the
    /// same suite from another mirror is the same image.
    pub mirror: Option<String>,
}

/// A built (or cached) image: the files in `cache_dir/<key>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    pub rootfs: PathBuf,
    pub work_seed: PathBuf,
    pub key: String,
    /// True when the entry was already in the cache and nothing was built.
    pub cached: bool,
    /// `rootfs.ext4`'s length in bytes (the file is sparse).
    pub size_rootfs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageBuildError {
    /// A host tool is missing.
    #[error("missing build tool: {tool} (install with: apt-get install {package})")]
    MissingTool { tool: String, package: String },
    /// The spec cannot be built (unknown distribution, bad mirror URL, an
    /// agent binary that is not a static x86-64 executable).
    #[error("{0}")]
    Invalid(String),
    /// mmdebstrap needs root to make a tree owned by the right users.
    #[error("building an image needs root (mmdebstrap --mode=root, file ownership in the image)")]
    NotRoot,
    /// mmdebstrap failed.
    #[error("mmdebstrap failed; the end of its output:\n{log_tail}")]
    Bootstrap { log_tail: String },
    /// mkfs.ext4 or debugfs failed.
    #[error("{tool} failed; the end of its output:\n{log_tail}")]
    Pack { tool: String, log_tail: String },
    /// `cancel` was set; the running tool was killed and the scratch
    /// directory removed.
    #[error("image build cancelled")]
    Cancelled,
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = ImageBuildError> = std::result::Result<T, E>;

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> ImageBuildError {
    let context = context.into();
    move |source| ImageBuildError::Io { context, source }
}

fn find_distro(name: &str) -> Option<&'static Distro> {
    DISTROS.iter().find(|d| d.name == name)
}

// ---------------------------------------------------------------------------
// Cache key

/// `<distro>-<variant>-<16 hex>`: the hex is sha256 over [`RECIPE_VERSION`],
/// the distribution, the variant, its package list, every file the recipe
/// writes, the masked units and the agent binary's sha256. Errors when the
/// distribution is unknown or the agent cannot be read.
pub fn cache_key(spec: &ImageSpec) -> io::Result<String> {
    let distro = find_distro(&spec.distro).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "unknown distribution {:?} (known: {})",
                spec.distro,
                DISTROS
                    .iter()
                    .map(|d| d.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })?;
    let agent = sha256_file(&spec.agent_binary)?;
    let mut h = Sha256::new();
    h.update(format!("banger-image-recipe/{RECIPE_VERSION}\n"));
    h.update(format!("distro {} {}\n", distro.name, distro.suite));
    h.update(format!("variant {}\n", spec.variant));
    h.update(format!("packages {}\n", spec.variant.packages().join(",")));
    for (path, content) in GUEST_FILES {
        h.update(format!("file {path} {}\n", content.len()));
        h.update(content);
    }
    for (unit, _) in MASKED_UNITS {
        h.update(format!("mask {unit}\n"));
    }
    h.update(format!("agent {agent}\n"));
    let digest = hex::encode(h.finalize());
    Ok(format!(
        "{}-{}-{}",
        distro.name,
        spec.variant,
        &digest[..16]
    ))
}

fn sha256_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

// ---------------------------------------------------------------------------
// Build

/// Builds the image into `cache_dir/<key>/` ([`ROOTFS_FILE`],
/// [`WORK_SEED_FILE`], [`BUILD_INFO_FILE`]) unless that entry already exists
/// (then it returns at once with `cached: true`). Needs root. `progress(stage,
/// done, total)` reports "bootstrap" (mmdebstrap's phases), "configure"
/// (steps) and "pack" (images). `cancel` is checked at least every 100 ms;
/// when set, the running tool's process group is killed (SIGTERM, then
/// SIGKILL after 10 s), the scratch directory removed, and `Cancelled`
/// returned.
pub fn build(
    spec: &ImageSpec,
    cache_dir: &Path,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<BuiltImage> {
    let distro = find_distro(&spec.distro).ok_or_else(|| {
        ImageBuildError::Invalid(format!("unknown distribution {:?}", spec.distro))
    })?;
    if let Some(m) = &spec.mirror {
        check_mirror(m)?;
    }
    check_agent(&spec.agent_binary)?;
    let key = cache_key(spec).map_err(io_ctx("cannot compute the cache key"))?;

    if !cache_dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(cache_dir)
            .map_err(io_ctx(format!("cannot create {}", cache_dir.display())))?;
    }
    let cache_dir = cache_dir
        .canonicalize()
        .map_err(io_ctx(format!("cannot resolve {}", cache_dir.display())))?;
    let entry = cache_dir.join(&key);
    if let Some(built) = cached_entry(&entry, &key)? {
        return Ok(built);
    }
    if !rustix::process::geteuid().is_root() {
        return Err(ImageBuildError::NotRoot);
    }
    let mmdebstrap = require_tool("mmdebstrap", "mmdebstrap")?;
    let mkfs = require_tool("mkfs.ext4", "e2fsprogs")?;
    let debugfs = require_tool("debugfs", "e2fsprogs")?;

    let _lock = lock_key(&cache_dir, &key, cancel).map_err(|e| match e {
        LockError::Cancelled => ImageBuildError::Cancelled,
        LockError::Io { context, source } => ImageBuildError::Io { context, source },
    })?;
    // Another build of this key may have finished while we waited.
    if let Some(built) = cached_entry(&entry, &key)? {
        return Ok(built);
    }
    let started = Instant::now();
    let tmp = cache_dir.join(format!("{key}.tmp"));
    if fs::symlink_metadata(&tmp).is_ok() {
        tracing::info!(dir = %tmp.display(), "removing a stale image build directory");
        remove_tree(&tmp).map_err(io_ctx(format!("cannot remove {}", tmp.display())))?;
    }
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&tmp)
        .map_err(io_ctx(format!("cannot create {}", tmp.display())))?;
    let guard = ScratchGuard(Some(tmp.clone()));

    let tree = tmp.join("tree");
    let seed = tmp.join("seed");
    bootstrap(&mmdebstrap, distro, spec, &tree, cancel, progress)?;
    configure(&tree, &seed, spec, cancel, progress)?;

    let total = 2;
    progress("pack", 0, total);
    let rootfs_tmp = tmp.join(ROOTFS_FILE);
    let seed_tmp = tmp.join(WORK_SEED_FILE);
    let size_rootfs = pack(&mkfs, &tree, &rootfs_tmp, ROOT_LABEL, "8192", cancel)?;
    progress("pack", 1, total);
    let size_seed = pack(&mkfs, &seed, &seed_tmp, WORK_LABEL, "16384", cancel)?;
    // mkfs -d gives the filesystem's root directory mode 0755; /root is 0700.
    run_quiet(
        Command::new(&debugfs).args([
            OsStr::new("-w"),
            OsStr::new("-R"),
            OsStr::new("sif / mode 040700"),
            seed_tmp.as_os_str(),
        ]),
        "debugfs",
        cancel,
    )?;
    progress("pack", 2, total);

    let packages = installed_packages(&tree);
    remove_tree(&tree).map_err(io_ctx(format!("cannot remove {}", tree.display())))?;
    remove_tree(&seed).map_err(io_ctx(format!("cannot remove {}", seed.display())))?;
    let info = serde_json::json!({
        "key": key,
        "recipe_version": RECIPE_VERSION,
        "distro": distro.name,
        "variant": spec.variant.as_str(),
        "mirror": spec.mirror.as_deref().unwrap_or(distro.mirror),
        "agent_sha256": sha256_file(&spec.agent_binary).map_err(io_ctx("cannot hash the agent"))?,
        "packages": packages,
        "rootfs_bytes": size_rootfs,
        "work_seed_bytes": size_seed,
        "build_secs": started.elapsed().as_secs_f64(),
    });
    let info_path = tmp.join(BUILD_INFO_FILE);
    fs::write(&info_path, format!("{info:#}\n"))
        .map_err(io_ctx(format!("cannot write {}", info_path.display())))?;
    for f in [&rootfs_tmp, &seed_tmp, &info_path] {
        File::open(f)
            .and_then(|f| f.sync_all())
            .map_err(io_ctx(format!("cannot sync {}", f.display())))?;
    }
    fs::rename(&tmp, &entry).map_err(io_ctx(format!(
        "cannot rename {} to {}",
        tmp.display(),
        entry.display()
    )))?;
    guard.disarm();
    File::open(&cache_dir)
        .and_then(|d| d.sync_all())
        .map_err(io_ctx(format!("cannot sync {}", cache_dir.display())))?;
    tracing::info!(
        key,
        secs = started.elapsed().as_secs_f64(),
        size_rootfs,
        size_seed,
        "image built"
    );
    Ok(BuiltImage {
        rootfs: entry.join(ROOTFS_FILE),
        work_seed: entry.join(WORK_SEED_FILE),
        key,
        cached: false,
        size_rootfs,
    })
}

/// Checks what [`build`] checks before any work: a known distribution, a
/// usable mirror URL and a static x86-64 agent. Cheap.
pub fn check_spec(spec: &ImageSpec) -> Result<()> {
    find_distro(&spec.distro).ok_or_else(|| {
        ImageBuildError::Invalid(format!("unknown distribution {:?}", spec.distro))
    })?;
    if let Some(m) = &spec.mirror {
        check_mirror(m)?;
    }
    check_agent(&spec.agent_binary)
}

fn cached_entry(entry: &Path, key: &str) -> Result<Option<BuiltImage>> {
    let rootfs = entry.join(ROOTFS_FILE);
    let work_seed = entry.join(WORK_SEED_FILE);
    let Ok(meta) = fs::metadata(&rootfs) else {
        return Ok(None);
    };
    if !work_seed.is_file() {
        return Ok(None);
    }
    Ok(Some(BuiltImage {
        rootfs,
        work_seed,
        key: key.to_string(),
        cached: true,
        size_rootfs: meta.len(),
    }))
}

fn require_tool(tool: &str, package: &str) -> Result<PathBuf> {
    find_system_tool(tool).ok_or_else(|| ImageBuildError::MissingTool {
        tool: tool.to_string(),
        package: package.to_string(),
    })
}

/// An http(s) or file URL that is safe to put on an apt sources line.
fn check_mirror(m: &str) -> Result<()> {
    let ok_scheme = ["http://", "https://", "file:/"]
        .iter()
        .any(|s| m.starts_with(s));
    let ok_chars = m
        .chars()
        .all(|c| c.is_ascii_graphic() && !matches!(c, '[' | ']' | '"' | '\''));
    if ok_scheme && ok_chars && m.len() < 1024 {
        Ok(())
    } else {
        Err(ImageBuildError::Invalid(format!(
            "mirror {m:?} is not an http(s):// or file:/ URL"
        )))
    }
}

/// The agent must be an x86-64 ELF executable without a program
/// interpreter (static, or static-pie): the guest's libc is not the host's.
fn check_agent(path: &Path) -> Result<()> {
    let bad = |reason: &str| {
        ImageBuildError::Invalid(format!(
            "the agent binary {} {reason}; build it with: RUSTFLAGS=\"-C target-feature=+crt-static\" \
             cargo build --release -p banger-agent --target x86_64-unknown-linux-gnu",
            path.display()
        ))
    };
    let f = File::open(path).map_err(io_ctx(format!(
        "cannot open the agent binary {}",
        path.display()
    )))?;
    match elf_is_static_x86_64(&f) {
        Ok(true) => Ok(()),
        Ok(false) => Err(bad("is dynamically linked")),
        Err(e) => Err(bad(&format!("is not an x86-64 executable ({e})"))),
    }
}

/// Whether `f` is an x86-64 ELF executable with no `PT_INTERP` segment.
pub fn elf_is_static_x86_64(f: &File) -> io::Result<bool> {
    const PT_INTERP: u32 = 3;
    const EM_X86_64: u16 = 62;
    let invalid = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
    let mut h = [0u8; 64];
    f.read_exact_at(&mut h, 0)
        .map_err(|_| invalid("too short"))?;
    if &h[..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        return Err(invalid("not a 64-bit little-endian ELF file"));
    }
    let u16_at = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]);
    let e_type = u16_at(16);
    if !(e_type == 2 || e_type == 3) || u16_at(18) != EM_X86_64 {
        return Err(invalid("not an x86-64 executable"));
    }
    let phoff = u64::from_le_bytes(h[32..40].try_into().expect("8 bytes"));
    let phentsize = u64::from(u16_at(54));
    let phnum = u64::from(u16_at(56));
    if phentsize < 56 || phnum == 0 || phnum > 256 {
        return Err(invalid("bad program headers"));
    }
    let mut ph = [0u8; 4];
    for i in 0..phnum {
        f.read_exact_at(&mut ph, phoff + i * phentsize)
            .map_err(|_| invalid("truncated program headers"))?;
        if u32::from_le_bytes(ph) == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Removes the scratch directory unless disarmed (the build completed).
struct ScratchGuard(Option<PathBuf>);

impl ScratchGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take() {
            if let Err(e) = remove_tree(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the image build directory");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Step 1: bootstrap

/// mmdebstrap's `I:` lines that mark its phases, in order: the progress.
const BOOTSTRAP_PHASES: &[&str] = &[
    "running apt-get update",
    "downloading packages",
    "extracting archives",
    "installing essential packages",
    "installing remaining packages",
    "cleaning package lists",
];

fn sources(distro: &Distro, mirror: Option<&str>) -> Vec<String> {
    let suite = distro.suite;
    let main = mirror.unwrap_or(distro.mirror);
    let mut s = vec![
        format!("deb {main} {suite} main"),
        format!("deb {main} {suite}-updates main"),
    ];
    if mirror.is_none() {
        s.push(format!("deb {} {suite}-security main", distro.security));
    }
    s
}

fn bootstrap(
    mmdebstrap: &Path,
    distro: &Distro,
    spec: &ImageSpec,
    tree: &Path,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<()> {
    let total = BOOTSTRAP_PHASES.len() as u64 + 1;
    progress("bootstrap", 0, total);
    let mut cmd = Command::new(mmdebstrap);
    cmd.args([
        "--mode=root",
        "--format=directory",
        "--variant=minbase",
        "--aptopt=Apt::Install-Recommends \"false\"",
    ])
    .arg(format!("--include={}", spec.variant.packages().join(",")))
    .arg(distro.suite)
    .arg(tree)
    .args(sources(distro, spec.mirror.as_deref()))
    .env("LC_ALL", "C.UTF-8");
    // SAFETY: runs between fork and exec; unshare(2) and mount(2) are
    // async-signal-safe system calls and nothing is allocated.
    unsafe {
        cmd.pre_exec(|| {
            // mmdebstrap mounts /proc, /sys and /dev inside the tree while the
            // package scripts run. In a private mount namespace those mounts
            // disappear with its processes, whatever ends them.
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(io::Error::last_os_error());
            }
            let root = c"/";
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut on_line = |line: &str| {
        if let Some(i) = BOOTSTRAP_PHASES.iter().position(|p| line.contains(p)) {
            progress("bootstrap", i as u64 + 1, total);
        }
    };
    let (status, tail) = run_tool(&mut cmd, "mmdebstrap", cancel, &mut on_line)?;
    if !status.success() {
        return Err(ImageBuildError::Bootstrap {
            log_tail: format!("{tail}\n(mmdebstrap {status})"),
        });
    }
    progress("bootstrap", total, total);
    Ok(())
}

// ---------------------------------------------------------------------------
// Step 2: configure

/// Configures the bootstrapped `tree` for banger (see the module doc) and
/// moves `/root`'s content into `seed` (created). Cancellation is checked
/// between steps.
pub fn configure(
    tree: &Path,
    seed: &Path,
    spec: &ImageSpec,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<()> {
    type Step<'a> = (&'a str, Box<dyn Fn() -> io::Result<()> + 'a>);
    let steps: Vec<Step> = vec![
        ("sshd", Box::new(|| configure_sshd(tree))),
        ("network", Box::new(|| configure_network(tree))),
        (
            "fstab and system files",
            Box::new(|| configure_system(tree)),
        ),
        ("root account", Box::new(|| lock_root_password(tree))),
        ("units", Box::new(|| configure_units(tree))),
        (
            "agent",
            Box::new(|| install_agent(tree, &spec.agent_binary)),
        ),
        ("cleanup", Box::new(|| clean_tree(tree, spec.variant))),
        ("work seed", Box::new(|| split_root(tree, seed))),
    ];
    let total = steps.len() as u64;
    for (i, (name, step)) in steps.iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(ImageBuildError::Cancelled);
        }
        progress("configure", i as u64, total);
        step().map_err(io_ctx(format!("configure ({name})")))?;
    }
    progress("configure", total, total);
    Ok(())
}

/// `tree` joined with a relative path inside it.
fn at(tree: &Path, rel: &str) -> PathBuf {
    tree.join(rel.trim_start_matches('/'))
}

/// Writes a root-owned file (parents created 0755) with exactly `mode`.
fn write_file(tree: &Path, rel: &str, content: &str, mode: u32) -> io::Result<()> {
    let path = at(tree, rel);
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    if fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
        remove_tree(&path)?;
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&path)?;
    f.write_all(content.as_bytes())?;
    f.set_permissions(fs::Permissions::from_mode(mode))?;
    std::os::unix::fs::fchown(&f, Some(0), Some(0))
}

/// Replaces whatever is at `rel` with a symlink to `target`.
fn force_symlink(tree: &Path, rel: &str, target: &str) -> io::Result<()> {
    let path = at(tree, rel);
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    match fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => remove_tree(&path)?,
        Ok(_) => fs::remove_file(&path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    symlink(target, &path)
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn configure_sshd(tree: &Path) -> io::Result<()> {
    write_file(tree, GUEST_FILES[0].0, SSHD_DROPIN, 0o644)?;
    write_file(tree, GUEST_FILES[1].0, SSH_SERVICE_DROPIN, 0o644)?;
    let ssh = at(tree, "etc/ssh");
    if let Ok(entries) = fs::read_dir(&ssh) {
        for e in entries {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                fs::remove_file(e.path())?;
            }
        }
    }
    for unit in KEYGEN_UNITS {
        if unit_exists(tree, unit) {
            mask(tree, unit)?;
        }
    }
    Ok(())
}

fn configure_network(tree: &Path) -> io::Result<()> {
    force_symlink(tree, "etc/resolv.conf", "/proc/net/pnp")?;
    write_file(tree, "etc/hostname", "", 0o644)?;
    write_file(tree, "etc/hosts", HOSTS, 0o644)?;
    // Nothing may configure eth0 but the kernel command line.
    for dir in ["etc/systemd/network", "etc/network/interfaces.d"] {
        if let Ok(entries) = fs::read_dir(at(tree, dir)) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| !t.is_dir()) {
                    fs::remove_file(e.path())?;
                }
            }
        }
    }
    Ok(())
}

fn configure_system(tree: &Path) -> io::Result<()> {
    write_file(tree, "etc/fstab", FSTAB, 0o644)?;
    write_file(
        tree,
        "etc/systemd/system/banger-work-disk.service",
        WORK_DISK_UNIT,
        0o644,
    )?;
    enable(tree, "banger-work-disk.service", "local-fs.target")?;
    write_file(tree, "etc/default/locale", LOCALE, 0o644)?;
    // Empty: not a first boot (no preset-all), but systemd makes a machine
    // id on every VM's first boot; each VM's root disk keeps its own.
    write_file(tree, "etc/machine-id", "", 0o444)?;
    let dbus_id = at(tree, "var/lib/dbus/machine-id");
    if fs::symlink_metadata(&dbus_id).is_ok() {
        fs::remove_file(&dbus_id)?;
        symlink("/etc/machine-id", &dbus_id)?;
    }
    Ok(())
}

/// Root's password field becomes `*` unless it is already locked (`*` or
/// `!...`): no password login anywhere, the serial console included.
fn lock_root_password(tree: &Path) -> io::Result<()> {
    let path = at(tree, "etc/shadow");
    let text = fs::read_to_string(&path)?;
    let mut changed = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let mut fields: Vec<&str> = line.split(':').collect();
            if fields.first() == Some(&"root")
                && fields.len() > 1
                && !(fields[1] == "*" || fields[1].starts_with('!'))
            {
                fields[1] = "*";
                changed = true;
            }
            fields.join(":")
        })
        .collect();
    if changed {
        // Rewriting in place keeps the file's owner and mode (root:shadow 0640).
        let mut f = OpenOptions::new().write(true).truncate(true).open(&path)?;
        f.write_all((lines.join("\n") + "\n").as_bytes())?;
    }
    Ok(())
}

const UNIT_DIRS: &[&str] = &[
    "etc/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
];

fn unit_exists(tree: &Path, unit: &str) -> bool {
    UNIT_DIRS
        .iter()
        .any(|d| fs::symlink_metadata(at(tree, d).join(unit)).is_ok())
}

/// `systemctl mask`: `/etc/systemd/system/<unit>` → `/dev/null`, and no
/// `*.wants/` link left pointing at it.
fn mask(tree: &Path, unit: &str) -> io::Result<()> {
    let etc = at(tree, "etc/systemd/system");
    if let Ok(entries) = fs::read_dir(&etc) {
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".wants") || name.ends_with(".requires") {
                remove_if_exists(&e.path().join(unit))?;
            }
        }
    }
    force_symlink(tree, &format!("etc/systemd/system/{unit}"), "/dev/null")
}

/// `systemctl enable` of a unit with `WantedBy=<target>`.
fn enable(tree: &Path, unit: &str, target: &str) -> io::Result<()> {
    force_symlink(
        tree,
        &format!("etc/systemd/system/{target}.wants/{unit}"),
        &format!("/etc/systemd/system/{unit}"),
    )
}

fn configure_units(tree: &Path) -> io::Result<()> {
    for (unit, _why) in MASKED_UNITS {
        mask(tree, unit)?;
    }
    // The serial console must keep its getty (systemd starts
    // serial-getty@ttyS0 from console=ttyS0).
    for unit in ["serial-getty@ttyS0.service", "serial-getty@.service"] {
        let p = at(tree, "etc/systemd/system").join(unit);
        if fs::read_link(&p).is_ok_and(|t| t == Path::new("/dev/null")) {
            fs::remove_file(&p)?;
        }
    }
    Ok(())
}

fn install_agent(tree: &Path, agent: &Path) -> io::Result<()> {
    let dest = at(tree, AGENT_GUEST_PATH);
    if let Some(parent) = dest.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    fs::copy(agent, &dest)?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::chown(&dest, Some(0), Some(0))?;
    write_file(
        tree,
        "etc/systemd/system/banger-agent.service",
        AGENT_UNIT,
        0o644,
    )?;
    enable(tree, "banger-agent.service", "multi-user.target")
}

/// Empties `dir` (not following symlinks) except the names in `keep`.
fn empty_dir_except(dir: &Path, keep: &[&str]) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        if keep.iter().any(|k| e.file_name() == OsStr::new(k)) {
            continue;
        }
        if e.file_type()?.is_dir() {
            remove_tree(&e.path())?;
        } else {
            fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

fn clean_tree(tree: &Path, variant: Variant) -> io::Result<()> {
    // apt: lists and caches (`apt update` first in the guest, as in any
    // container image), and mmdebstrap's no-Recommends setting, so apt in
    // the guest behaves as Debian's does.
    empty_dir_except(&at(tree, "var/lib/apt/lists"), &["partial", "lock"])?;
    empty_dir_except(&at(tree, "var/cache/apt"), &["archives"])?;
    empty_dir_except(&at(tree, "var/cache/apt/archives"), &["partial", "lock"])?;
    remove_if_exists(&at(tree, "etc/apt/apt.conf.d/99mmdebstrap"))?;
    // The build's logs and leftovers.
    for f in [
        "var/log/dpkg.log",
        "var/log/alternatives.log",
        "var/log/bootstrap.log",
    ] {
        remove_if_exists(&at(tree, f))?;
    }
    empty_dir_except(&at(tree, "var/log/apt"), &[])?;
    empty_dir_except(&at(tree, "tmp"), &[])?;
    empty_dir_except(&at(tree, "var/tmp"), &[])?;
    for f in [
        "var/cache/debconf/config.dat-old",
        "var/cache/debconf/templates.dat-old",
    ] {
        remove_if_exists(&at(tree, f))?;
    }
    if variant == Variant::Minimal {
        empty_dir_except(&at(tree, "usr/share/man"), &[])?;
        empty_dir_except(&at(tree, "usr/share/info"), &[])?;
        empty_dir_except(&at(tree, "usr/share/locale"), &["locale.alias"])?;
        // Docs go, licences stay.
        if let Ok(entries) = fs::read_dir(at(tree, "usr/share/doc")) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    empty_dir_except(&e.path(), &["copyright"])?;
                }
            }
        }
    }
    Ok(())
}

/// Moves `/root`'s content into `seed` (0700, the work disk's root), adds
/// `.ssh/` and `.banger/ssh/` (0700), and leaves `/root` empty (0700).
fn split_root(tree: &Path, seed: &Path) -> io::Result<()> {
    let root = at(tree, "root");
    fs::DirBuilder::new().mode(0o700).create(seed)?;
    fs::set_permissions(seed, fs::Permissions::from_mode(0o700))?;
    if let Ok(entries) = fs::read_dir(&root) {
        for e in entries {
            let e = e?;
            fs::rename(e.path(), seed.join(e.file_name()))?;
        }
    } else {
        fs::DirBuilder::new().mode(0o700).create(&root)?;
    }
    fs::set_permissions(&root, fs::Permissions::from_mode(0o700))?;
    for d in [".ssh", ".banger", ".banger/ssh"] {
        let p = seed.join(d);
        if !p.is_dir() {
            fs::DirBuilder::new().mode(0o700).create(&p)?;
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700))?;
        std::os::unix::fs::chown(&p, Some(0), Some(0))?;
    }
    std::os::unix::fs::chown(seed, Some(0), Some(0))
}

/// Names of the packages `dpkg` records as installed, sorted.
fn installed_packages(tree: &Path) -> Vec<String> {
    let Ok(status) = fs::read_to_string(at(tree, "var/lib/dpkg/status")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = status
        .split("\n\n")
        .filter(|stanza| stanza.lines().any(|l| l == "Status: install ok installed"))
        .filter_map(|stanza| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix("Package: "))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------
// Step 3: pack

/// Bytes and inodes a tree occupies (hard links counted once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TreeSize {
    pub bytes: u64,
    pub inodes: u64,
}

/// Walks `root` without following symlinks or leaving its filesystem.
pub fn tree_size(root: &Path) -> io::Result<TreeSize> {
    fn walk(
        p: &Path,
        dev: u64,
        seen: &mut HashSet<(u64, u64)>,
        size: &mut TreeSize,
    ) -> io::Result<()> {
        let m = fs::symlink_metadata(p)?;
        if m.nlink() > 1 && !m.is_dir() && !seen.insert((m.dev(), m.ino())) {
            return Ok(());
        }
        size.inodes += 1;
        size.bytes += m.blocks() * 512;
        if m.is_dir() && m.dev() == dev {
            for e in fs::read_dir(p)? {
                walk(&e?.path(), dev, seen, size)?;
            }
        }
        Ok(())
    }
    let dev = fs::symlink_metadata(root)?.dev();
    let mut size = TreeSize::default();
    walk(root, dev, &mut HashSet::new(), &mut size)?;
    Ok(size)
}

/// Image size for `content` bytes: content + 25% + [`HEADROOM`], in whole MiB.
pub fn image_size(content: u64) -> u64 {
    let raw = content + content / 4 + HEADROOM;
    raw.div_ceil(MIB) * MIB
}

/// `mkfs.ext4 -d tree` into a new sparse file of [`image_size`]. Returns the
/// file's size.
fn pack(
    mkfs: &Path,
    tree: &Path,
    out: &Path,
    label: &str,
    inode_ratio: &str,
    cancel: &AtomicBool,
) -> Result<u64> {
    let content = tree_size(tree).map_err(io_ctx(format!("cannot measure {}", tree.display())))?;
    let size = image_size(content.bytes);
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(out)
        .map_err(io_ctx(format!("cannot create {}", out.display())))?;
    f.set_len(size)
        .map_err(io_ctx(format!("cannot size {}", out.display())))?;
    drop(f);
    // -T default: not the "small" profile (1 KiB blocks, 128-byte inodes) a
    // sub-512 MiB size would pick; images are grown later.
    run_quiet(
        Command::new(mkfs).args([
            OsStr::new("-q"),
            OsStr::new("-F"),
            OsStr::new("-T"),
            OsStr::new("default"),
            OsStr::new("-b"),
            OsStr::new("4096"),
            OsStr::new("-i"),
            OsStr::new(inode_ratio),
            OsStr::new("-L"),
            OsStr::new(label),
            OsStr::new("-E"),
            OsStr::new("root_owner=0:0"),
            OsStr::new("-d"),
            tree.as_os_str(),
            out.as_os_str(),
        ]),
        "mkfs.ext4",
        cancel,
    )?;
    tracing::debug!(file = %out.display(), content = content.bytes, inodes = content.inodes, size, "ext4 image packed");
    Ok(size)
}

/// Runs a tool that should succeed; its output only matters when it fails.
fn run_quiet(cmd: &mut Command, tool: &str, cancel: &AtomicBool) -> Result<()> {
    cmd.env("LC_ALL", "C");
    let (status, tail) = run_tool(cmd, tool, cancel, &mut |_| {})?;
    if status.success() {
        Ok(())
    } else {
        Err(ImageBuildError::Pack {
            tool: tool.to_string(),
            log_tail: format!("{tail}\n({tool} {status})"),
        })
    }
}

// ---------------------------------------------------------------------------
// Running tools

/// Runs `cmd` in its own process group with stdout and stderr read line by
/// line (`on_line` sees each), polling for `cancel`. Returns the exit status
/// and the last [`LOG_TAIL_LINES`] lines. Whatever the group still holds
/// when the leader exits is killed before the leader is reaped.
fn run_tool(
    cmd: &mut Command,
    tool: &str,
    cancel: &AtomicBool,
    on_line: &mut dyn FnMut(&str),
) -> Result<(ExitStatus, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(io_ctx(format!("cannot run {tool}")))?;
    let (tx, rx) = mpsc::channel::<String>();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(pipe);
            let mut buf = Vec::new();
            while matches!(r.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                buf.clear();
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut keep = |line: String, on_line: &mut dyn FnMut(&str)| {
        on_line(&line);
        if tail.len() == LOG_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    };
    let mut pipes_open = true;
    loop {
        if pipes_open {
            match rx.recv_timeout(POLL) {
                Ok(line) => {
                    keep(line, on_line);
                    while let Ok(line) = rx.try_recv() {
                        keep(line, on_line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => pipes_open = false,
            }
        } else {
            std::thread::sleep(POLL);
        }
        if cancel.load(Ordering::Relaxed) {
            terminate_group(&mut child);
            return Err(ImageBuildError::Cancelled);
        }
        if leader_exited(&child) {
            break;
        }
    }
    kill_group(&child);
    let status = child
        .wait()
        .map_err(io_ctx(format!("cannot wait for {tool}")))?;
    // Lines still in the pipes (the group is gone, so they close soon).
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        keep(line, on_line);
    }
    Ok((status, Vec::from(tail).join("\n")))
}

/// Whether the child has exited, without reaping it (`WNOWAIT`): while it is
/// a zombie its pid still names its process group and no other.
fn leader_exited(child: &Child) -> bool {
    // SAFETY: siginfo_t is plain old data; waitid fills it in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pid and a writable siginfo_t.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            child.id(),
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: reading si_pid of a siginfo_t waitid filled in (0 if nothing).
    r == 0 && unsafe { info.si_pid() } != 0
}

fn signal_group(child: &Child, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

/// SIGKILL to the group; the leader must not be reaped yet.
fn kill_group(child: &Child) {
    signal_group(child, rustix::process::Signal::Kill);
}

/// Cancel: SIGTERM to the group (mmdebstrap cleans up on it), SIGKILL after
/// [`TERM_GRACE`], then reap the leader.
fn terminate_group(child: &mut Child) {
    signal_group(child, rustix::process::Signal::Term);
    let deadline = Instant::now() + TERM_GRACE;
    while !leader_exited(child) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_group(child);
    let _ = child.wait();
}

// ---------------------------------------------------------------------------
// Removing trees

/// Removes `path` and everything under it without following symlinks and
/// without entering another filesystem: mount points left under the scratch
/// directory are detached first, and a directory on another device that is
/// still there is an error rather than something to empty.
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return fs::remove_file(path);
    }
    detach_mounts_under(path);
    fn walk(p: &Path, dev: u64) -> io::Result<()> {
        for e in fs::read_dir(p)? {
            let e = e?;
            let child = e.path();
            let m = fs::symlink_metadata(&child)?;
            if m.is_dir() {
                if m.dev() != dev {
                    return Err(io::Error::other(format!(
                        "{} is on another filesystem (a mount point?); not removing it",
                        child.display()
                    )));
                }
                walk(&child, dev)?;
                fs::remove_dir(&child)?;
            } else {
                fs::remove_file(&child)?;
            }
        }
        Ok(())
    }
    walk(path, meta.dev())?;
    fs::remove_dir(path)
}

/// Lazily unmounts every mount point strictly under `dir` (deepest first).
fn detach_mounts_under(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let Ok(dir) = dir.canonicalize() else {
        return;
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(&dir) && p != &dir)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for p in points {
        tracing::warn!(mount = %p.display(), "detaching a mount left in an image build directory");
        let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
            continue;
        };
        // SAFETY: a valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    fn spec(agent: &Path, variant: Variant) -> ImageSpec {
        ImageSpec {
            distro: "debian-bookworm".into(),
            variant,
            agent_binary: agent.to_path_buf(),
            mirror: None,
        }
    }

    #[test]
    fn cache_key_behaviour() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent");
        fs::write(&agent, b"agent v1").unwrap();
        let s = spec(&agent, Variant::Minimal);
        let k = cache_key(&s).unwrap();
        assert!(k.starts_with("debian-bookworm-minimal-"), "{k}");
        assert_eq!(k.len(), "debian-bookworm-minimal-".len() + 16);
        assert_eq!(cache_key(&s).unwrap(), k, "stable");

        // The mirror is not part of the key.
        let mirrored = ImageSpec {
            mirror: Some("http://mirror.example/debian".into()),
            ..s.clone()
        };
        assert_eq!(cache_key(&mirrored).unwrap(), k);

        // The variant and the agent's bytes are.
        let full = cache_key(&spec(&agent, Variant::Full)).unwrap();
        assert!(full.starts_with("debian-bookworm-full-"));
        assert_ne!(full[full.len() - 16..], k[k.len() - 16..]);
        fs::write(&agent, b"agent v2").unwrap();
        let k2 = cache_key(&s).unwrap();
        assert_ne!(k2, k);

        // Unknown distribution, missing agent.
        let other = ImageSpec {
            distro: "ubuntu-noble".into(),
            ..s.clone()
        };
        let e = cache_key(&other).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("debian-bookworm"), "{e}");
        fs::remove_file(&agent).unwrap();
        assert_eq!(cache_key(&s).unwrap_err().kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn variants_and_packages() {
        assert_eq!("minimal".parse::<Variant>(), Ok(Variant::Minimal));
        assert_eq!("full".parse::<Variant>(), Ok(Variant::Full));
        assert!("huge".parse::<Variant>().is_err());
        let min = Variant::Minimal.packages();
        let full = Variant::Full.packages();
        assert!(min.windows(2).all(|w| w[0] < w[1]), "sorted, unique");
        assert!(min.iter().all(|p| full.contains(p)));
        for p in ["openssh-server", "systemd-sysv", "udev", "git", "curl"] {
            assert!(min.contains(&p), "{p}");
        }
        for p in ["docker.io", "build-essential", "python3"] {
            assert!(!min.contains(&p) && full.contains(&p), "{p}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(image_size(0), 64 * MIB);
        assert_eq!(image_size(100 * MIB), 189 * MIB);
        assert_eq!(image_size(1), 65 * MIB, "rounded up to a MiB");
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), vec![1u8; 10_000]).unwrap();
        fs::hard_link(dir.path().join("a"), dir.path().join("b")).unwrap();
        symlink("a", dir.path().join("c")).unwrap();
        let s = tree_size(dir.path()).unwrap();
        assert_eq!(s.inodes, 3, "dir + file (linked twice) + symlink");
        assert!(s.bytes >= 10_000 && s.bytes < 64 * 1024, "{s:?}");
    }

    #[test]
    fn mirrors_and_agents_are_checked() {
        check_mirror("http://deb.debian.org/debian").unwrap();
        check_mirror("https://mirror.example:8443/debian/").unwrap();
        check_mirror("file:/srv/mirror").unwrap();
        for bad in [
            "ftp://x/debian",
            "http://x/debian main\ndeb http://evil",
            "http://x/[a]",
            "debian",
        ] {
            assert!(check_mirror(bad).is_err(), "{bad:?}");
        }
        // The test binary itself is dynamically linked.
        let me = File::open("/proc/self/exe").unwrap();
        assert!(!elf_is_static_x86_64(&me).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("agent.sh");
        fs::write(&script, "#!/bin/sh\n").unwrap();
        assert!(elf_is_static_x86_64(&File::open(&script).unwrap()).is_err());
        let e = check_agent(&script).unwrap_err();
        assert!(e.to_string().contains("crt-static"), "{e}");
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b\011c\\d"), "/a b\tc\\\\d");
        assert_eq!(unescape_mountinfo(r"/x\134y"), r"/x\y");
        assert_eq!(unescape_mountinfo(r"/end\04"), r"/end\04");
    }

    /// A fake bootstrapped tree, as mmdebstrap leaves it, for [`configure`].
    fn fake_tree(root: &Path) {
        let w = |rel: &str, content: &str, mode: u32| {
            let p = at(root, rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, content).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        };
        for k in ["rsa", "ecdsa", "ed25519"] {
            w(&format!("etc/ssh/ssh_host_{k}_key"), "secret", 0o600);
            w(&format!("etc/ssh/ssh_host_{k}_key.pub"), "public", 0o644);
        }
        w(
            "etc/ssh/sshd_config",
            "Include /etc/ssh/sshd_config.d/*.conf\n",
            0o644,
        );
        w(
            "etc/shadow",
            "root::19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",
            0o640,
        );
        std::os::unix::fs::chown(at(root, "etc/shadow"), Some(0), Some(42)).unwrap();
        w("etc/resolv.conf", "nameserver 10.0.0.1\n", 0o644);
        w("etc/hostname", "buildhost\n", 0o644);
        w(
            "etc/machine-id",
            "0123456789abcdef0123456789abcdef\n",
            0o444,
        );
        w(
            "etc/systemd/network/eth0.network",
            "[Match]\nName=eth0\n",
            0o644,
        );
        w(
            "etc/apt/apt.conf.d/99mmdebstrap",
            "Apt::Install-Recommends \"false\";\n",
            0o644,
        );
        w("usr/lib/systemd/system/getty@.service", "[Unit]\n", 0o644);
        w("usr/lib/systemd/system/apt-daily.timer", "[Unit]\n", 0o644);
        w(
            "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease",
            "x",
            0o644,
        );
        w("var/lib/apt/lists/lock", "", 0o640);
        w("var/cache/apt/pkgcache.bin", "x", 0o644);
        w("usr/share/doc/git/copyright", "GPL", 0o644);
        w("usr/share/doc/git/changelog.gz", "x", 0o644);
        w("usr/share/man/man1/git.1.gz", "x", 0o644);
        w("usr/share/locale/de/LC_MESSAGES/git.mo", "x", 0o644);
        w("usr/share/locale/locale.alias", "x", 0o644);
        w("root/.bashrc", "# bashrc\n", 0o644);
        w("root/.profile", "# profile\n", 0o644);
        fs::set_permissions(at(root, "root"), fs::Permissions::from_mode(0o700)).unwrap();
        let wants = at(root, "etc/systemd/system/getty.target.wants");
        fs::create_dir_all(&wants).unwrap();
        symlink(
            "/usr/lib/systemd/system/getty@.service",
            wants.join("getty@tty1.service"),
        )
        .unwrap();
        let timers = at(root, "etc/systemd/system/timers.target.wants");
        fs::create_dir_all(&timers).unwrap();
        symlink(
            "/usr/lib/systemd/system/apt-daily.timer",
            timers.join("apt-daily.timer"),
        )
        .unwrap();
        symlink(
            "/dev/null",
            at(root, "etc/systemd/system/serial-getty@ttyS0.service"),
        )
        .unwrap();
    }

    fn link(p: &Path) -> String {
        fs::read_link(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .display()
            .to_string()
    }

    #[test]
    fn configure_a_fake_tree() {
        require_root("chown");
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        let seed = dir.path().join("seed");
        fake_tree(&tree);
        let agent = dir.path().join("agent");
        fs::write(&agent, b"\x7fELF fake agent").unwrap();
        let mut stages = Vec::new();
        let cancel = AtomicBool::new(false);
        configure(
            &tree,
            &seed,
            &spec(&agent, Variant::Minimal),
            &cancel,
            &mut |s, d, t| stages.push((s.to_string(), d, t)),
        )
        .unwrap();
        assert_eq!(stages.first().unwrap().1, 0);
        assert_eq!(stages.last().unwrap(), &("configure".to_string(), 8, 8));

        let read = |rel: &str| fs::read_to_string(at(&tree, rel)).unwrap();
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
        // sshd
        assert_eq!(read("etc/ssh/sshd_config.d/banger.conf"), SSHD_DROPIN);
        assert!(read("etc/systemd/system/ssh.service.d/banger.conf")
            .contains("After=banger-work-disk.service"));
        let keys: Vec<_> = fs::read_dir(at(&tree, "etc/ssh"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("ssh_host_"))
            .collect();
        assert!(keys.is_empty(), "{keys:?}");
        // network, hostname, fstab, machine id, locale
        assert_eq!(link(&at(&tree, "etc/resolv.conf")), "/proc/net/pnp");
        assert_eq!(read("etc/hostname"), "");
        assert!(read("etc/hosts").starts_with("127.0.0.1\tlocalhost\n"));
        assert!(!at(&tree, "etc/systemd/network/eth0.network").exists());
        assert_eq!(read("etc/fstab"), FSTAB);
        assert_eq!(read("etc/machine-id"), "");
        assert_eq!(mode(&at(&tree, "etc/machine-id")), 0o444);
        assert_eq!(read("etc/default/locale"), "LANG=C.UTF-8\n");
        // root locked, shadow keeps owner and mode
        assert!(
            read("etc/shadow").starts_with("root:*:19000:"),
            "{}",
            read("etc/shadow")
        );
        assert!(read("etc/shadow").contains("\ndaemon:*:19000:"));
        let sh = fs::metadata(at(&tree, "etc/shadow")).unwrap();
        assert_eq!((sh.mode() & 0o7777, sh.uid(), sh.gid()), (0o640, 0, 42));
        // units
        for (unit, _) in MASKED_UNITS {
            assert_eq!(
                link(&at(&tree, "etc/systemd/system").join(unit)),
                "/dev/null",
                "{unit}"
            );
        }
        assert!(fs::symlink_metadata(at(
            &tree,
            "etc/systemd/system/getty.target.wants/getty@tty1.service"
        ))
        .is_err());
        assert!(fs::symlink_metadata(at(
            &tree,
            "etc/systemd/system/timers.target.wants/apt-daily.timer"
        ))
        .is_err());
        assert!(
            fs::symlink_metadata(at(&tree, "etc/systemd/system/serial-getty@ttyS0.service"))
                .is_err()
        );
        // agent
        let installed = at(&tree, AGENT_GUEST_PATH);
        assert_eq!(fs::read(&installed).unwrap(), b"\x7fELF fake agent");
        assert_eq!(mode(&installed), 0o755);
        assert_eq!(read("etc/systemd/system/banger-agent.service"), AGENT_UNIT);
        // the work disk: a service (no wait for udev), ssh after it
        assert_eq!(
            read("etc/systemd/system/banger-work-disk.service"),
            WORK_DISK_UNIT
        );
        assert_eq!(
            link(&at(
                &tree,
                "etc/systemd/system/local-fs.target.wants/banger-work-disk.service"
            )),
            "/etc/systemd/system/banger-work-disk.service"
        );
        assert!(!read("etc/fstab").contains("/dev/vdb /root"));
        assert!(read("etc/systemd/system/ssh.service.d/banger.conf")
            .contains("Requires=banger-work-disk.service"));
        assert_eq!(
            link(&at(
                &tree,
                "etc/systemd/system/multi-user.target.wants/banger-agent.service"
            )),
            "/etc/systemd/system/banger-agent.service"
        );
        // cleanup
        assert!(!at(&tree, "etc/apt/apt.conf.d/99mmdebstrap").exists());
        assert_eq!(
            fs::read_dir(at(&tree, "var/lib/apt/lists"))
                .unwrap()
                .count(),
            1,
            "only the lock"
        );
        assert!(!at(&tree, "var/cache/apt/pkgcache.bin").exists());
        assert!(at(&tree, "usr/share/doc/git/copyright").exists());
        assert!(!at(&tree, "usr/share/doc/git/changelog.gz").exists());
        assert!(!at(&tree, "usr/share/man/man1").exists());
        assert!(!at(&tree, "usr/share/locale/de").exists());
        assert!(at(&tree, "usr/share/locale/locale.alias").exists());
        // /root split into the seed
        assert_eq!(fs::read_dir(at(&tree, "root")).unwrap().count(), 0);
        assert_eq!(mode(&at(&tree, "root")), 0o700);
        assert_eq!(
            fs::read_to_string(seed.join(".bashrc")).unwrap(),
            "# bashrc\n"
        );
        for d in ["", ".ssh", ".banger", ".banger/ssh"] {
            let m = fs::metadata(seed.join(d)).unwrap();
            assert!(m.is_dir());
            assert_eq!((m.mode() & 0o7777, m.uid()), (0o700, 0), "{d}");
        }

        // Configuring again (a retried build) changes nothing.
        let seed2 = dir.path().join("seed2");
        configure(
            &tree,
            &seed2,
            &spec(&agent, Variant::Minimal),
            &cancel,
            &mut |_, _, _| {},
        )
        .unwrap();
        assert!(read("etc/shadow").starts_with("root:*:"));
    }

    #[test]
    fn configure_checks_cancel() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = AtomicBool::new(true);
        let e = configure(
            dir.path(),
            &dir.path().join("seed"),
            &spec(Path::new("/nonexistent"), Variant::Minimal),
            &cancel,
            &mut |_, _, _| {},
        )
        .unwrap_err();
        assert!(matches!(e, ImageBuildError::Cancelled), "{e}");
    }

    #[test]
    fn remove_tree_detaches_mounts_instead_of_emptying_them() {
        require_root("bind mount");
        let dir = tempfile::tempdir().unwrap();
        let outside = dir.path().join("outside");
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("precious"), "keep me").unwrap();
        let scratch = dir.path().join("scratch");
        let mnt = scratch.join("tree/proc");
        fs::create_dir_all(&mnt).unwrap();
        fs::write(scratch.join("tree/file"), "x").unwrap();
        symlink(&outside, scratch.join("tree/link")).unwrap();
        let ok = Command::new("mount")
            .arg("--bind")
            .arg(&outside)
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(ok.success());
        let r = remove_tree(&scratch);
        // Should the detach have failed, make sure the test leaves nothing mounted.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&mnt)
            .stderr(Stdio::null())
            .status();
        r.unwrap();
        assert!(!scratch.exists());
        assert_eq!(
            fs::read_to_string(outside.join("precious")).unwrap(),
            "keep me"
        );
    }

    #[test]
    fn run_tool_cancel_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!(
            "sleep 300 & echo $! > {}; echo started; wait",
            pidfile.display()
        );
        let cancel = AtomicBool::new(false);
        let started = Instant::now();
        let mut seen = Vec::new();
        let r = run_tool(
            Command::new("sh").args(["-c", &script]),
            "sh",
            &cancel,
            &mut |l| {
                seen.push(l.to_string());
                cancel.store(true, Ordering::Relaxed);
            },
        );
        assert!(matches!(r, Err(ImageBuildError::Cancelled)), "{r:?}");
        assert_eq!(seen, ["started"]);
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid = fs::read_to_string(&pidfile).unwrap().trim().to_string();
        // The background sleep got the signal too: gone, or a zombie about
        // to be reaped by init.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => break,
                Ok(stat) if stat.contains(") Z ") => break,
                Ok(stat) => {
                    assert!(Instant::now() < deadline, "sleep survived: {stat}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        // A normal run: status and the tail of the output.
        let (status, tail) = run_tool(
            Command::new("sh").args(["-c", "echo one; echo two >&2; exit 3"]),
            "sh",
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(status.code(), Some(3));
        let mut lines: Vec<&str> = tail.lines().collect();
        lines.sort();
        assert_eq!(lines, ["one", "two"]);
    }

    // ---- Real builds (root, mmdebstrap, Debian's mirrors) ----

    fn assets() -> PathBuf {
        std::env::var_os("BANGER_TEST_ASSETS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/cache/banger-test"))
    }

    /// The static agent: `BANGER_TEST_AGENT_BIN`, else built here with the
    /// documented command into `$BANGER_TEST_ASSETS/agent-target`.
    fn static_agent() -> PathBuf {
        static AGENT: OnceLock<PathBuf> = OnceLock::new();
        AGENT
            .get_or_init(|| {
                if let Some(p) = std::env::var_os("BANGER_TEST_AGENT_BIN") {
                    return PathBuf::from(p);
                }
                let target = assets().join("agent-target");
                let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
                let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
                let status = Command::new(cargo)
                    .current_dir(&workspace)
                    .args([
                        "build",
                        "--release",
                        "-p",
                        "banger-agent",
                        "--target",
                        "x86_64-unknown-linux-gnu",
                    ])
                    .env("CARGO_TARGET_DIR", &target)
                    .env("RUSTFLAGS", "-C target-feature=+crt-static")
                    .env_remove("CARGO_ENCODED_RUSTFLAGS")
                    .status()
                    .expect("run cargo");
                assert!(status.success(), "building the static agent failed");
                target.join("x86_64-unknown-linux-gnu/release/banger-agent")
            })
            .clone()
    }

    /// Tests run as root (scripts/test.sh): a missing privilege fails them
    /// rather than skipping them silently.
    fn require_root(why: &str) {
        assert!(
            is_root(),
            "this test needs root ({why}): run it as root (sudo scripts/test.sh)"
        );
    }

    /// Root and mmdebstrap, or a failure saying how to get them.
    fn require_image_build_tools() {
        require_root("mmdebstrap --mode=root, file ownership in the image");
        assert!(
            find_system_tool("mmdebstrap").is_some(),
            "mmdebstrap is not installed: apt-get install mmdebstrap (scripts/test.sh and \
             install.sh --deps-only install it)"
        );
    }

    /// `debugfs -R request image`'s output.
    fn debugfs(image: &Path, request: &str) -> String {
        let out = Command::new(find_system_tool("debugfs").unwrap())
            .args(["-R", request])
            .arg(image)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "debugfs {request}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// (mode, uid, gid, name) of every entry of `dir` (`ls -p`).
    fn ls(image: &Path, dir: &str) -> Vec<(u32, u32, u32, String)> {
        debugfs(image, &format!("ls -p {dir}"))
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split('/').collect();
                (f.len() >= 7).then(|| {
                    (
                        u32::from_str_radix(f[2], 8).unwrap(),
                        f[3].parse().unwrap(),
                        f[4].parse().unwrap(),
                        f[5].to_string(),
                    )
                })
            })
            .filter(|e| e.3 != "." && e.3 != "..")
            .collect()
    }

    fn entry(image: &Path, dir: &str, name: &str) -> Option<(u32, u32, u32)> {
        ls(image, dir)
            .into_iter()
            .find(|e| e.3 == name)
            .map(|e| (e.0, e.1, e.2))
    }

    fn symlink_target(image: &Path, path: &str) -> String {
        let stat = debugfs(image, &format!("stat {path}"));
        assert!(stat.contains("Type: symlink"), "{path}: {stat}");
        let dest = stat
            .lines()
            .find_map(|l| l.trim().strip_prefix("Fast link dest: "))
            .unwrap_or_else(|| panic!("{path}: {stat}"));
        dest.trim_matches('"').to_string()
    }

    #[test]
    fn real_minimal_build_then_cached() {
        require_image_build_tools();
        let agent = static_agent();
        assert!(elf_is_static_x86_64(&File::open(&agent).unwrap()).unwrap());
        // The cache bangerd uses in the integration tests (`[build] cache_dir`
        // = $BANGER_TEST_ASSETS/build), so one real build serves both.
        let cache = assets().join("build/images");
        let s = spec(&agent, Variant::Minimal);
        let cancel = AtomicBool::new(false);
        let mut stages: Vec<(String, u64, u64)> = Vec::new();
        let started = Instant::now();
        let built = build(&s, &cache, &cancel, &mut |st, d, t| {
            stages.push((st.into(), d, t))
        })
        .unwrap();
        eprintln!(
            "image {} (cached: {}) in {:.1}s: rootfs {} MiB, work seed {} MiB",
            built.key,
            built.cached,
            started.elapsed().as_secs_f64(),
            built.size_rootfs / MIB,
            fs::metadata(&built.work_seed).unwrap().len() / MIB
        );
        if !built.cached {
            for st in ["bootstrap", "configure", "pack"] {
                let last = stages.iter().rev().find(|x| x.0 == st).unwrap();
                assert_eq!(last.1, last.2, "{st} finished: {stages:?}");
            }
        }
        assert_eq!(built.key, cache_key(&s).unwrap());
        assert_eq!(
            built.rootfs,
            cache
                .canonicalize()
                .unwrap()
                .join(&built.key)
                .join(ROOTFS_FILE)
        );
        assert!(!cache.join(format!("{}.tmp", built.key)).exists());

        let root = &built.rootfs;
        let sb = crate::artifact::ext4::inspect(&File::open(root).unwrap()).unwrap();
        assert_eq!(sb.volume_name.as_deref(), Some(ROOT_LABEL));
        assert_eq!(sb.block_size, 4096);
        assert_eq!(sb.fs_size, built.size_rootfs);
        assert!(sb.has_journal && sb.has_extents);

        assert_eq!(
            debugfs(root, "cat /etc/ssh/sshd_config.d/banger.conf"),
            SSHD_DROPIN
        );
        let ssh = ls(root, "/etc/ssh");
        assert!(ssh.iter().any(|e| e.3 == "sshd_config"), "{ssh:?}");
        assert!(!ssh.iter().any(|e| e.3.starts_with("ssh_host_")), "{ssh:?}");
        assert_eq!(debugfs(root, "cat /etc/fstab"), FSTAB);
        assert_eq!(symlink_target(root, "/etc/resolv.conf"), "/proc/net/pnp");
        assert_eq!(
            symlink_target(
                root,
                "/etc/systemd/system/multi-user.target.wants/banger-agent.service"
            ),
            "/etc/systemd/system/banger-agent.service"
        );
        assert_eq!(
            debugfs(root, "cat /etc/systemd/system/banger-agent.service"),
            AGENT_UNIT
        );
        assert_eq!(
            symlink_target(
                root,
                "/etc/systemd/system/multi-user.target.wants/ssh.service"
            ),
            "/lib/systemd/system/ssh.service"
        );
        for (unit, _) in MASKED_UNITS {
            assert_eq!(
                symlink_target(root, &format!("/etc/systemd/system/{unit}")),
                "/dev/null"
            );
        }
        assert!(entry(root, "/etc/systemd/system", "serial-getty@ttyS0.service").is_none());
        assert_eq!(
            entry(root, "/usr/local/bin", "banger-agent"),
            Some((0o100755, 0, 0))
        );
        let dumped = tempfile::NamedTempFile::new().unwrap();
        debugfs(
            root,
            &format!(
                "dump /usr/local/bin/banger-agent {}",
                dumped.path().display()
            ),
        );
        assert_eq!(fs::read(dumped.path()).unwrap(), fs::read(&agent).unwrap());
        // Ownership survived mkfs -d: /etc/shadow is root:shadow 0640.
        let shadow_gid = debugfs(root, "cat /etc/group")
            .lines()
            .find_map(|l| l.strip_prefix("shadow:x:"))
            .and_then(|r| r.split(':').next())
            .and_then(|g| g.parse::<u32>().ok())
            .unwrap();
        assert_eq!(
            entry(root, "/etc", "shadow"),
            Some((0o100640, 0, shadow_gid))
        );
        let shadow = debugfs(root, "cat /etc/shadow");
        let root_entry = shadow.lines().find(|l| l.starts_with("root:")).unwrap();
        assert!(root_entry.starts_with("root:*:"), "{root_entry}");
        assert_eq!(debugfs(root, "cat /etc/hostname"), "");
        assert_eq!(debugfs(root, "cat /etc/machine-id"), "");
        assert!(debugfs(root, "cat /etc/nsswitch.conf").contains("myhostname"));
        assert!(ls(root, "/var/lib/apt/lists")
            .iter()
            .all(|e| e.3 == "partial" || e.3 == "lock"));
        // /root is empty (0700) in the rootfs ...
        assert_eq!(entry(root, "/", "root"), Some((0o40700, 0, 0)));
        assert_eq!(ls(root, "/root"), vec![]);
        // ... and its content is the work seed's.
        let seed = &built.work_seed;
        let sb = crate::artifact::ext4::inspect(&File::open(seed).unwrap()).unwrap();
        assert_eq!(sb.volume_name.as_deref(), Some(WORK_LABEL));
        assert!(debugfs(seed, "stat /").contains("Mode:  0700"));
        assert_eq!(entry(seed, "/", ".ssh"), Some((0o40700, 0, 0)));
        assert_eq!(entry(seed, "/", ".banger"), Some((0o40700, 0, 0)));
        assert_eq!(entry(seed, "/.banger", "ssh"), Some((0o40700, 0, 0)));
        assert_eq!(ls(seed, "/.banger/ssh"), vec![]);
        assert!(entry(seed, "/", ".bashrc").is_some());
        let info: serde_json::Value = serde_json::from_str(
            &fs::read_to_string(built.rootfs.with_file_name(BUILD_INFO_FILE)).unwrap(),
        )
        .unwrap();
        assert_eq!(info["key"], built.key.as_str());
        assert!(info["packages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p == "openssh-server"));

        // Again: from the cache, nothing run.
        let t = Instant::now();
        let again = build(&s, &cache, &cancel, &mut |_, _, _| {
            panic!("no progress for a cached image")
        })
        .unwrap();
        assert!(again.cached);
        assert!(t.elapsed() < Duration::from_secs(5));
        assert_eq!(
            (&again.rootfs, &again.work_seed, &again.key),
            (&built.rootfs, &built.work_seed, &built.key)
        );
    }

    #[test]
    fn cancel_during_bootstrap_leaves_nothing() {
        require_image_build_tools();
        let agent = static_agent();
        let cache = tempfile::tempdir_in("/var/tmp").unwrap();
        let s = spec(&agent, Variant::Minimal);
        let key = cache_key(&s).unwrap();
        let cancel = AtomicBool::new(false);
        let mut cancelled_at = None;
        let r = build(&s, cache.path(), &cancel, &mut |st, done, _| {
            // Cancel once packages are being downloaded.
            if st == "bootstrap" && done >= 2 && cancelled_at.is_none() {
                cancelled_at = Some(Instant::now());
                cancel.store(true, Ordering::Relaxed);
            }
        });
        assert!(matches!(r, Err(ImageBuildError::Cancelled)), "{r:?}");
        let took = cancelled_at.expect("bootstrap progressed").elapsed();
        eprintln!("cancelled in {:.1}s", took.as_secs_f64());
        assert!(took < Duration::from_secs(15));
        let left: Vec<String> = fs::read_dir(cache.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, vec![format!("{key}.lock")], "no entry, no .tmp");
        // No mount and no process refers to the scratch directory.
        let scratch = cache
            .path()
            .canonicalize()
            .unwrap()
            .join(format!("{key}.tmp"));
        let scratch = scratch.to_string_lossy().into_owned();
        assert!(!fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .contains(&scratch));
        for p in fs::read_dir("/proc").unwrap().flatten() {
            if let Ok(cmd) = fs::read(p.path().join("cmdline")) {
                let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
                assert!(!cmd.contains(&scratch), "still running: {cmd}");
            }
        }
    }
}
