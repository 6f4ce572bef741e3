//! What an image is made of: the distributions, the packages of each
//! variant, the units masked, and the files written into the tree — the files
//! are real files under `images/guest/` (laid out as in the guest's `/`),
//! embedded here. Everything in this module is hashed into the cache key
//! ([`super::cache::cache_key`]), so changing any of it makes a new image.

/// Hashed into every cache key with the package lists and every file the
/// recipe writes: bump it when the steps change in a way those do not show.
pub const RECIPE_VERSION: u32 = 1;

/// The distributions [`super::build`] knows.
pub(super) struct Distro {
    pub name: &'static str,
    pub suite: &'static str,
    pub mirror: &'static str,
    /// The security archive, used with the default mirror only.
    pub security: &'static str,
}

pub(super) const DISTROS: &[Distro] = &[Distro {
    name: "debian-bookworm",
    suite: "bookworm",
    mirror: "http://deb.debian.org/debian",
    security: "http://deb.debian.org/debian-security",
}];

pub(super) fn find_distro(name: &str) -> Option<&'static Distro> {
    DISTROS.iter().find(|d| d.name == name)
}

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

/// Added by [`super::Variant::Full`].
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
pub(super) const KEYGEN_UNITS: &[&str] = &[
    "regenerate_ssh_host_keys.service",
    "sshd-keygen.service",
    "ssh-keygen.service",
];

/// A file the configure step writes into the tree, root-owned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestFile {
    /// Relative to the tree's root.
    pub path: &'static str,
    pub content: &'static str,
    pub mode: u32,
}

/// Embeds `images/guest/<path>` as a [`GuestFile`] installed at `<path>`.
macro_rules! guest_file {
    ($path:literal, $mode:literal) => {
        GuestFile {
            path: $path,
            content: include_str!(concat!("../../../../images/guest/", $path)),
            mode: $mode,
        }
    };
}

/// sshd: keys only, root by key only, and the VM's own host key
/// ([`banger_proto::guest::GUEST_HOST_KEY_PATH`], on the work disk).
pub const SSHD_DROPIN: GuestFile = guest_file!("etc/ssh/sshd_config.d/banger.conf", 0o644);
/// `ssh.service` requires the work disk, where its host key is.
pub const SSH_SERVICE_DROPIN: GuestFile =
    guest_file!("etc/systemd/system/ssh.service.d/banger.conf", 0o644);
/// [`banger_proto::guest::ROOT_DEVICE`] on `/`; nothing else (see [`WORK_DISK_UNIT`]).
pub const FSTAB: GuestFile = guest_file!("etc/fstab", 0o644);
/// localhost only; `libnss-myhostname` resolves the guest's own name.
pub const HOSTS: GuestFile = guest_file!("etc/hosts", 0o644);
/// Empty: `systemd.hostname=` on the kernel command line names the guest.
pub const HOSTNAME: GuestFile = guest_file!("etc/hostname", 0o644);
/// Empty: not a first boot (no preset-all), but systemd makes a machine id
/// on every VM's first boot; each VM's root disk keeps its own.
pub const MACHINE_ID: GuestFile = guest_file!("etc/machine-id", 0o444);
pub const LOCALE: GuestFile = guest_file!("etc/default/locale", 0o644);
/// Runs [`banger_proto::guest::AGENT_PATH`], restarted whenever it exits.
pub const AGENT_UNIT: GuestFile = guest_file!("etc/systemd/system/banger-agent.service", 0o644);
/// The work disk on /root, mounted by a service rather than from fstab: an
/// fstab mount waits for udev to announce `dev-vdb.device`, which under
/// QEMU/TCG came 11-14 s into boot and put everything after it (sshd needs
/// the host key on /root) that late. The kernel's devtmpfs has `/dev/vdb`
/// before init starts (virtio-blk is built in), so nothing needs to wait.
/// No fsck: ext4's journal replays at mount.
pub const WORK_DISK_UNIT: GuestFile =
    guest_file!("etc/systemd/system/banger-work-disk.service", 0o644);

/// Every file the configure step writes: hashed into the cache key, in this
/// order.
pub const GUEST_FILES: &[GuestFile] = &[
    SSHD_DROPIN,
    SSH_SERVICE_DROPIN,
    FSTAB,
    HOSTS,
    HOSTNAME,
    MACHINE_ID,
    LOCALE,
    AGENT_UNIT,
    WORK_DISK_UNIT,
];

/// The units of [`AGENT_UNIT`] and [`WORK_DISK_UNIT`], which
/// [`super::configure`] enables.
pub(super) const AGENT_SERVICE: &str = "banger-agent.service";
pub(super) const WORK_DISK_SERVICE: &str = "banger-work-disk.service";

#[cfg(test)]
mod tests {
    use banger_proto::guest;

    use super::super::Variant;
    use super::*;

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

    /// The files say what the guest contract says: the devices, the mount
    /// point, the host key, the agent's path, the unit names.
    #[test]
    fn guest_files_follow_the_guest_contract() {
        assert!(SSHD_DROPIN
            .content
            .contains(&format!("\nHostKey {}\n", guest::GUEST_HOST_KEY_PATH)));
        assert!(FSTAB
            .content
            .contains(&format!("\n{} / ext4 ", guest::ROOT_DEVICE)));
        let mount = format!("{} {}\n", guest::WORK_DEVICE, guest::WORK_MOUNT);
        assert!(WORK_DISK_UNIT.content.contains(&mount));
        assert!(WORK_DISK_UNIT
            .content
            .contains(&format!("ConditionPathExists={}\n", guest::WORK_DEVICE)));
        assert!(WORK_DISK_UNIT
            .content
            .contains("WantedBy=local-fs.target\n"));
        assert!(AGENT_UNIT
            .content
            .contains(&format!("\nExecStart={}\n", guest::AGENT_PATH)));
        assert!(AGENT_UNIT.content.contains("WantedBy=multi-user.target\n"));
        assert!(SSH_SERVICE_DROPIN
            .content
            .contains(&format!("Requires={WORK_DISK_SERVICE}\n")));
        assert_eq!(
            AGENT_UNIT.path,
            format!("etc/systemd/system/{AGENT_SERVICE}")
        );
        assert_eq!(
            WORK_DISK_UNIT.path,
            format!("etc/systemd/system/{WORK_DISK_SERVICE}")
        );
        assert_eq!(HOSTNAME.content, "");
        assert_eq!(MACHINE_ID.content, "");
        assert_eq!(LOCALE.content, "LANG=C.UTF-8\n");
        let mut paths: Vec<_> = GUEST_FILES.iter().map(|f| f.path).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), GUEST_FILES.len(), "each file once");
    }
}
