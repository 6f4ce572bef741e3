//! `config.toml`: everything optional, unknown keys refused (a typo should not
//! silently do nothing).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub daemon: DaemonConfig,
    /// Path of the firecracker binary; default: PATH, then next to bangerd.
    #[serde(default)]
    pub firecracker_bin: Option<PathBuf>,
    /// Defaults for `vm create` when the flags are not given.
    #[serde(default)]
    pub vm_defaults: VmDefaults,
    #[serde(default)]
    pub vm: VmConfig,
    #[serde(default)]
    pub network: NetworkConfig,
    /// The static `banger-agent` that `image build` installs in images;
    /// default: `banger-agent` next to `bangerd`.
    #[serde(default)]
    pub agent_bin: Option<PathBuf>,
    #[serde(default)]
    pub build: BuildConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[[file_sync]]`: host files the CLI copies into each new VM (and on
    /// `banger vm sync`). Only the CLI reads these, with the user's rights.
    #[serde(default)]
    pub file_sync: Vec<FileSync>,
}

/// One `[[file_sync]]` entry: `host = "~/.npmrc"`, `guest = "~/.npmrc"`,
/// `mode = "0600"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSync {
    /// A file on the host: absolute, or `~/...` in the user's home.
    pub host: String,
    /// Where it goes in the guest: under /root (`~/...` is /root/...).
    pub guest: String,
    /// Octal mode in the guest; default: the host file's permission bits.
    #[serde(default)]
    pub mode: Option<String>,
}

impl FileSync {
    /// The host path, `~/` expanded with `home`.
    pub fn host_path(&self, home: Option<&Path>) -> Result<PathBuf, String> {
        let h = &self.host;
        let p = match h.strip_prefix("~/") {
            Some(rest) => home
                .ok_or_else(|| format!("file_sync host {h:?}: HOME is not set"))?
                .join(rest),
            None => PathBuf::from(h),
        };
        if !p.is_absolute() {
            return Err(format!(
                "file_sync host {h:?}: give an absolute path or ~/..."
            ));
        }
        Ok(p)
    }

    /// The guest path: absolute, under /root, no `.` or `..` components.
    pub fn guest_path(&self) -> Result<String, String> {
        let g = &self.guest;
        let p = match g.strip_prefix("~/") {
            Some(rest) => format!("/root/{rest}"),
            None => g.clone(),
        };
        let Some(rest) = p.strip_prefix("/root/") else {
            return Err(format!(
                "file_sync guest {g:?}: only paths under /root (or ~/) are allowed"
            ));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        if parts
            .iter()
            .any(|c| c.is_empty() || *c == "." || *c == "..")
        {
            return Err(format!(
                "file_sync guest {g:?}: no empty, . or .. components (and a file name, not a directory)"
            ));
        }
        if p.bytes().any(|b| b.is_ascii_control()) {
            return Err(format!("file_sync guest {g:?}: control characters"));
        }
        Ok(p)
    }

    /// The mode, parsed (octal, at most 0o7777).
    pub fn mode_bits(&self) -> Result<Option<u32>, String> {
        self.mode
            .as_deref()
            .map(|m| {
                u32::from_str_radix(m.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|v| *v <= 0o7777)
                    .ok_or_else(|| format!("file_sync mode {m:?}: an octal mode such as \"0600\""))
            })
            .transpose()
    }
}

/// `[limits]`: what one non-root user may hold at once (root is exempt), so
/// no user can exhaust the host or crowd out the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// VMs a user may have (any state).
    #[serde(default = "default_limit_vms")]
    pub vms: u32,
    /// Operations (creates, builds, imports) a user may have running.
    #[serde(default = "default_limit_ops")]
    pub running_operations: u32,
    /// Total vCPUs over a user's VMs.
    #[serde(default = "default_limit_vcpus")]
    pub vcpus: u64,
    /// Total memory over a user's VMs, MiB.
    #[serde(default = "default_limit_memory_mib")]
    pub memory_mib: u64,
    /// Total work-disk size over a user's VMs, GiB.
    #[serde(default = "default_limit_disk_gib")]
    pub disk_gib: u64,
}

fn default_limit_vms() -> u32 {
    32
}

fn default_limit_ops() -> u32 {
    8
}

fn default_limit_vcpus() -> u64 {
    64
}

fn default_limit_memory_mib() -> u64 {
    64 * 1024
}

fn default_limit_disk_gib() -> u64 {
    512
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            vms: default_limit_vms(),
            running_operations: default_limit_ops(),
            vcpus: default_limit_vcpus(),
            memory_mib: default_limit_memory_mib(),
            disk_gib: default_limit_disk_gib(),
        }
    }
}

/// `[build]`: `kernel build`, `image build` and the automatic first build.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildConfig {
    /// Where built kernels (`kernels/`) and images (`images/`) are cached;
    /// default: the daemon's cache dir. Several homes may share one (the
    /// entries are locked per key).
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
    /// Let `vm create` build the default kernel and image when no image is
    /// registered.
    #[serde(default = "default_true")]
    pub auto: bool,
    /// `make -j` for kernel builds; 0 = the number of CPUs.
    #[serde(default)]
    pub jobs: u32,
    /// A Debian mirror for image builds (default: deb.debian.org).
    #[serde(default)]
    pub mirror: Option<String>,
}

impl Default for BuildConfig {
    fn default() -> Self {
        BuildConfig {
            cache_dir: None,
            auto: true,
            jobs: 0,
            mirror: None,
        }
    }
}

/// `[network]`: host networking for VMs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkConfig {
    /// Give VMs a network interface at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    #[serde(default = "default_bridge_name")]
    pub bridge_name: String,
    /// The bridge holds the first address; guests get the others.
    #[serde(default = "default_bridge_cidr")]
    pub bridge_cidr: String,
    /// Let VMs on the bridge talk to each other.
    #[serde(default)]
    pub allow_vm_to_vm: bool,
    /// Where the `<name>.vm` DNS server listens on the host (port 0: any).
    #[serde(default = "default_dns_listen")]
    pub dns_listen: String,
    /// Route the `vm` domain to banger's DNS through systemd-resolved when it runs.
    #[serde(default = "default_true")]
    pub resolved: bool,
}

fn default_true() -> bool {
    true
}

fn default_bridge_name() -> String {
    "br-banger".into()
}

/// A /24 inside 172.16.0.0/12 but away from the ranges Docker (172.17-172.31
/// upwards from .17), libvirt (192.168.122) and home routers (192.168.0/1) use
/// first; configurable when it collides anyway (`doctor` reports overlaps).
fn default_bridge_cidr() -> String {
    "172.16.213.0/24".into()
}

fn default_dns_listen() -> String {
    "127.0.0.1:42069".into()
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            enabled: true,
            bridge_name: default_bridge_name(),
            bridge_cidr: default_bridge_cidr(),
            allow_vm_to_vm: false,
            dns_listen: default_dns_listen(),
            resolved: true,
        }
    }
}

/// `[vm_defaults]`: each unset key falls back to a host heuristic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmDefaults {
    pub vcpus: Option<u32>,
    /// A size such as "2G".
    pub memory: Option<String>,
    /// Size of the work disk (/root), e.g. "8G".
    pub disk_size: Option<String>,
}

/// `[vm]`: lifecycle behaviour.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Seconds `vm stop` waits for the guest after Ctrl-Alt-Del before SIGTERM.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_secs: u64,
    /// Root disk backend: `auto`, `reflink`, `overlay`, `dm-snapshot` or `copy`.
    #[serde(default = "default_disk_backend")]
    pub disk_backend: String,
    /// Console and VMM logs are cut back to this size (the older half kept as `.1`).
    #[serde(default = "default_vm_log_max")]
    pub log_max_bytes: u64,
    /// Kernel command line before banger's own additions.
    #[serde(default = "default_boot_args")]
    pub boot_args: String,
    /// How long a start waits for the guest's sshd (images with `ssh`).
    #[serde(default = "default_ssh_wait")]
    pub ssh_wait_secs: u64,
    /// The VMM new VMs get when `vm create` does not say: `auto`
    /// (Firecracker where it can boot guests, else QEMU), `firecracker` or
    /// `qemu`.
    #[serde(default = "default_vmm")]
    pub vmm: String,
}

fn default_vmm() -> String {
    "auto".into()
}

fn default_ssh_wait() -> u64 {
    120
}

fn default_stop_timeout() -> u64 {
    10
}

fn default_disk_backend() -> String {
    "auto".into()
}

fn default_vm_log_max() -> u64 {
    8 << 20
}

/// `no_timer_check`: the kernel's IO-APIC timer check busy-waits for timer
/// ticks; under QEMU/TCG on a loaded host too few arrive and the guest panics
/// ("IO-APIC + timer doesn't work!"), seen here at load 11 on 2 cores. The
/// microVMs' timers are emulated and known good, so the check is skipped.
fn default_boot_args() -> String {
    "console=ttyS0 reboot=k panic=1 pci=off no_timer_check".into()
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            stop_timeout_secs: default_stop_timeout(),
            disk_backend: default_disk_backend(),
            log_max_bytes: default_vm_log_max(),
            boot_args: default_boot_args(),
            ssh_wait_secs: default_ssh_wait(),
            vmm: default_vmm(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Group allowed to use the socket (mode 0660). Default: `banger` when that
    /// group exists, else only root can connect. A name or a numeric gid.
    #[serde(default)]
    pub socket_group: Option<String>,
    /// The log file is rotated when it passes this size.
    #[serde(default = "default_log_max_bytes")]
    pub log_max_bytes: u64,
    /// Rotated log files kept (`bangerd.log.1` ..).
    #[serde(default = "default_log_keep")]
    pub log_keep: u32,
    /// `file`, `journald`, or `auto` (journald when started by systemd).
    #[serde(default = "default_log_target")]
    pub log_target: String,
}

fn default_log_max_bytes() -> u64 {
    10 << 20
}

fn default_log_keep() -> u32 {
    3
}

fn default_log_target() -> String {
    "auto".into()
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            socket_group: None,
            log_max_bytes: default_log_max_bytes(),
            log_keep: default_log_keep(),
            log_target: default_log_target(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not valid TOML for banger.
    #[error("invalid config {path}: {message}")]
    Parse { path: PathBuf, message: String },
}

impl Config {
    /// Reads `path`; a missing file means all defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text).map_err(|message| ConfigError::Parse {
                path: path.to_path_buf(),
                message,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    pub fn parse(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_default() {
        assert_eq!(Config::parse("").unwrap(), Config::default());
    }

    #[test]
    fn reads_keys_and_refuses_typos() {
        let c = Config::parse("[daemon]\nsocket_group = \"wheel\"\nlog_max_bytes = 5\n").unwrap();
        assert_eq!(c.daemon.socket_group.as_deref(), Some("wheel"));
        assert_eq!(c.daemon.log_max_bytes, 5);
        let e = Config::parse("[daemon]\nsocket_grup = \"x\"\n").unwrap_err();
        assert!(e.contains("socket_grup"), "{e}");
    }

    #[test]
    fn vmm_key() {
        assert_eq!(Config::default().vm.vmm, "auto");
        let c = Config::parse("[vm]\nvmm = \"qemu\"\n").unwrap();
        assert_eq!(c.vm.vmm, "qemu");
    }

    #[test]
    fn build_section() {
        let c = Config::default();
        assert!(c.build.auto);
        assert_eq!(c.build.cache_dir, None);
        let c = Config::parse(
            "agent_bin = \"/opt/banger-agent\"\n[build]\nauto = false\ncache_dir = \"/var/cache/x\"\n",
        )
        .unwrap();
        assert!(!c.build.auto);
        assert_eq!(
            c.build.cache_dir.as_deref(),
            Some(Path::new("/var/cache/x"))
        );
        assert_eq!(c.agent_bin.as_deref(), Some(Path::new("/opt/banger-agent")));
        assert!(Config::parse("[build]\nautomatic = true\n").is_err());
    }

    #[test]
    fn file_sync_entries_and_their_checks() {
        let c = Config::parse(
            "[[file_sync]]\nhost = \"~/.npmrc\"\nguest = \"~/.npmrc\"\nmode = \"0600\"\n\
             [[file_sync]]\nhost = \"/etc/x\"\nguest = \"/root/a/b\"\n",
        )
        .unwrap();
        assert_eq!(c.file_sync.len(), 2);
        let f = &c.file_sync[0];
        assert_eq!(
            f.host_path(Some(Path::new("/home/u"))).unwrap(),
            Path::new("/home/u/.npmrc")
        );
        assert_eq!(f.guest_path().unwrap(), "/root/.npmrc");
        assert_eq!(f.mode_bits().unwrap(), Some(0o600));
        assert_eq!(c.file_sync[1].guest_path().unwrap(), "/root/a/b");
        assert_eq!(c.file_sync[1].mode_bits().unwrap(), None);
        let e = |host: &str, guest: &str, mode: Option<&str>| FileSync {
            host: host.into(),
            guest: guest.into(),
            mode: mode.map(String::from),
        };
        for bad in [
            "/etc/passwd",
            "/root",
            "/root/",
            "~/../etc/x",
            "/root/a/../../etc/x",
            "/root/./x",
            "/root/a/",
            "/rootx/y",
            "relative",
            "~",
        ] {
            assert!(e("/x", bad, None).guest_path().is_err(), "{bad}");
        }
        assert!(e("rel/x", "~/x", None).host_path(None).is_err());
        assert!(e("~/x", "~/x", None).host_path(None).is_err());
        for bad in ["rw", "0800", "17777", "-1"] {
            assert!(e("/x", "~/x", Some(bad)).mode_bits().is_err(), "{bad}");
        }
        assert!(Config::parse("[[file_sync]]\nhost = \"/x\"\n").is_err());
        assert!(
            Config::parse("[[file_sync]]\nhost = \"/x\"\nguest = \"~/x\"\nmod = \"1\"\n").is_err()
        );
    }

    #[test]
    fn missing_file_is_default() {
        let c = Config::load(Path::new("/nonexistent/banger.toml")).unwrap();
        assert_eq!(c, Config::default());
    }
}
