//! The host-operations seam: the privileged changes the daemon makes to the
//! host's disks and network go through two small traits, [`DiskHost`]
//! (loop devices, device-mapper, making, growing and writing ext4 images)
//! and [`NetHost`] (the bridge, tap devices, routes, sysctls and nftables).
//! Outside them: systemd-resolved routing (`resolvectl`, behind its own
//! `CommandRunner` seam in crate::dns::resolved), the VMM processes
//! (crate::vmm) and `ssh-keygen` (crate::guest::ssh).
//! [`SystemHost`] implements both for real; each caller takes only the one
//! it uses (the disk code a `DiskHost`, the network stage and the nftables
//! writer a `NetHost`), so a test fake implements only what its test needs.
//!
//! Two reasons for the seam. The logic above it (which devices to set up, in
//! which order, what to undo when a step fails) is unit-tested with recording
//! fakes, without root and on machines that lack a feature (these machines
//! have no device-mapper). And the real implementation is small and
//! self-contained, so it can later move into a root helper process while the
//! daemon itself drops privileges.
//!
//! Layout: `system.rs` is the disk half of [`SystemHost`], `net.rs` the
//! network half, `cmd.rs` the command plumbing both use (host tools run
//! through [`banger_core::proc`]); the two halves do not depend on each other.
//!
//! The methods are synchronous: each is one quick command, ioctl or netlink
//! exchange. Callers on the async runtime run them with `spawn_blocking`.
//! Paths are absolute. Network methods act on the network namespace of the
//! calling thread (tests run them on a thread inside a private namespace).

mod cmd;
mod confined;
#[cfg(test)]
pub(crate) mod fake_net;
mod net;
mod system;
#[cfg(test)]
pub(crate) mod testutil;

pub(crate) use net::check_ifname;
#[cfg(test)]
pub(crate) use net::{attach_to_bridge, netns};

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use banger_core::proc::{command_line, stderr_suffix};

/// The real host: [`DiskHost`] in `system.rs`, [`NetHost`] in `net.rs`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemHost;

/// A file to put into a guest filesystem image ([`DiskHost::ext4_write_files`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestFile {
    /// Absolute path inside the filesystem, e.g. `/.ssh/authorized_keys`.
    /// Only `[A-Za-z0-9._/-]`: it goes into a debugfs script.
    pub path: String,
    pub contents: Vec<u8>,
    /// Permission bits, e.g. 0o600.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// A failed host operation.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// A host tool ran and failed; `stderr` holds what it said.
    #[error(
        "{} failed ({status}){}",
        command_line(program, args),
        stderr_suffix(stderr)
    )]
    Command {
        program: PathBuf,
        args: Vec<String>,
        status: ExitStatus,
        stderr: String,
    },
    /// A system call or starting a tool failed; `what` says which, `path`
    /// names the file or program.
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The host cannot do this at all: a tool is not installed (the message
    /// names the Debian package) or a kernel feature is missing (no
    /// device-mapper).
    #[error("{0}")]
    Unavailable(String),
}

impl HostError {
    pub(crate) fn io(what: impl Into<String>, path: &Path, source: std::io::Error) -> HostError {
        HostError::Io {
            what: what.into(),
            path: path.to_path_buf(),
            source,
        }
    }
}

/// One line of a device-mapper table: `<start> <sectors> <target> <params>`,
/// in 512-byte sectors. `Display` prints exactly what `dmsetup create
/// --table` takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DmTable {
    pub start: u64,
    pub sectors: u64,
    pub target: String,
    pub params: String,
}

impl fmt::Display for DmTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {}",
            self.start, self.sectors, self.target, self.params
        )
    }
}

/// The table of a `snapshot` target: reads come from `cow_dev` for chunks
/// written since, else from `origin_dev`; writes go to `cow_dev` only.
/// `persistent` (`P`) keeps the exception table in the COW device so the
/// snapshot survives being torn down and set up again (a VM stop and start);
/// `N` keeps it in memory only. `chunk_sectors` is the copy-on-write unit
/// (8 = 4 KiB, the ext4 block size).
pub fn snapshot_table(
    origin_dev: &Path,
    cow_dev: &Path,
    sectors: u64,
    persistent: bool,
    chunk_sectors: u64,
) -> DmTable {
    DmTable {
        start: 0,
        sectors,
        target: "snapshot".into(),
        params: format!(
            "{} {} {} {chunk_sectors}",
            origin_dev.display(),
            cow_dev.display(),
            if persistent { "P" } else { "N" },
        ),
    }
}

/// What [`NetHost::bridge_ensure`] had to change. All false and empty when
/// the bridge was already as asked ([`BridgeChange::is_unchanged`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeChange {
    /// The bridge did not exist and was created.
    pub created: bool,
    /// IPv4 addresses that were removed from it (`a.b.c.d/len`): a wrong
    /// prefix length or a subnet from an earlier configuration.
    pub removed_addresses: Vec<String>,
    /// The gateway address was added.
    pub address_added: bool,
    /// It was down and was set up.
    pub brought_up: bool,
    /// `route_localnet` was off and was turned on.
    pub route_localnet_set: bool,
}

impl BridgeChange {
    pub fn is_unchanged(&self) -> bool {
        *self == BridgeChange::default()
    }
}

impl fmt::Display for BridgeChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if self.created {
            parts.push("created".into());
        }
        for a in &self.removed_addresses {
            parts.push(format!("removed {a}"));
        }
        if self.address_added {
            parts.push("address added".into());
        }
        if self.brought_up {
            parts.push("set up".into());
        }
        if self.route_localnet_set {
            parts.push("route_localnet turned on".into());
        }
        if parts.is_empty() {
            f.write_str("unchanged")
        } else {
            f.write_str(&parts.join(", "))
        }
    }
}

/// Privileged operations on the host's disks. [`SystemHost`] is the real
/// one; tests use fakes. No method has a default, so a fake must decide what
/// each does.
pub trait DiskHost: Send + Sync {
    // ---- Loop devices ----

    /// Attaches `file` to a free loop device and returns its path
    /// (`/dev/loopN`). `read_only` makes the device refuse writes.
    fn loop_attach(&self, file: &Path, read_only: bool) -> Result<PathBuf, HostError>;

    /// Detaches loop device `dev`. A device still held open (by a
    /// device-mapper table, say) is detached by the kernel when released.
    fn loop_detach(&self, dev: &Path) -> Result<(), HostError>;

    /// The loop devices whose backing file is `file` (none: empty). The reaper
    /// uses it to find devices leaked by a crash.
    fn loop_devices_for(&self, file: &Path) -> Result<Vec<PathBuf>, HostError>;

    // ---- Device-mapper ----

    /// Whether device-mapper can be used: the kernel driver is there and
    /// `dmsetup` is installed. Never fails; `false` when unsure.
    fn dm_available(&self) -> bool;

    /// Creates device `name` with the one-line `table`, active, and returns
    /// its path (`/dev/mapper/<name>`). [`HostError::Unavailable`] without
    /// device-mapper.
    fn dm_create(&self, name: &str, table: &DmTable) -> Result<PathBuf, HostError>;

    /// Removes device `name`.
    fn dm_remove(&self, name: &str) -> Result<(), HostError>;

    /// Whether a device named `name` exists.
    fn dm_exists(&self, name: &str) -> Result<bool, HostError>;

    // ---- Block devices and images ----

    /// The size of a block device or regular file in 512-byte sectors
    /// (rounded down).
    fn block_size_sectors(&self, dev_or_file: &Path) -> Result<u64, HostError>;

    /// Makes an empty ext4 filesystem labelled `label` (at most 16 bytes)
    /// filling `file`: creates the file (mode 0600) or empties an existing
    /// one, sets its length to `size_bytes` without allocating (sparse), then
    /// runs `mkfs.ext4`. The root directory is owned by root; blocks are 4 KiB.
    fn mkfs_ext4(&self, file: &Path, size_bytes: u64, label: &str) -> Result<(), HostError>;

    /// Checks and repairs the unmounted ext4 image `file` (`e2fsck -f -y`).
    /// Succeeds when the filesystem is clean or every error was fixed.
    fn fsck_ext4(&self, file: &Path) -> Result<(), HostError>;

    /// Grows the unmounted ext4 image `file` to `new_size` bytes: extends the
    /// file sparse, checks it ([`DiskHost::fsck_ext4`], which `resize2fs`
    /// requires) and grows the filesystem to fill it. Never shrinks: a
    /// `new_size` below the file's length is refused.
    fn resize_ext4(&self, file: &Path, new_size: u64) -> Result<(), HostError>;

    /// Writes `files` into the unmounted ext4 image `image` (debugfs, no
    /// mount): missing parent directories are made (root, 0700), an
    /// existing file is replaced, each file gets its mode and owner. Then
    /// reads every file back and fails unless it holds what was written.
    fn ext4_write_files(&self, image: &Path, files: &[GuestFile]) -> Result<(), HostError>;
}

/// Privileged operations on the host's network. [`SystemHost`] is the real
/// one; tests use fakes (or the real one inside a private namespace).
pub trait NetHost: Send + Sync {
    // ---- Links, addresses, routes, sysctls ----
    //
    // Interface names are 1 to 15 bytes without '/', ':', whitespace, quotes
    // or backslashes (the kernel's rule, plus what keeps them safe to quote
    // in an nft script); anything else is refused before touching the host.

    /// Makes sure bridge `name` exists, holds `gateway/prefix_len` as its
    /// only IPv4 address, is up and has `net.ipv4.conf.<name>.route_localnet`
    /// set (so connections from 127.0.0.1 that nftables DNATs to a guest may
    /// leave through it). The bridge is banger's: any other IPv4 address on
    /// it is a leftover and is removed. Created bridges get a fixed MAC
    /// address, so it does not change as taps come and go. A link of that
    /// name that is not a bridge is an error. Returns what it changed.
    fn bridge_ensure(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<BridgeChange, HostError>;

    /// Deletes bridge `name` (its ports are released, not deleted). Missing:
    /// `Ok`. A link of that name that is not a bridge is an error.
    fn bridge_delete(&self, name: &str) -> Result<(), HostError>;

    /// Whether a network link named `name` exists.
    fn link_exists(&self, name: &str) -> Result<bool, HostError>;

    /// The names of the links whose name starts with `prefix`, sorted (the
    /// reaper uses it to find taps leaked by a crash).
    fn links_with_prefix(&self, prefix: &str) -> Result<Vec<String>, HostError>;

    /// Makes `name` a persistent TAP device (`IFF_TAP | IFF_NO_PI |
    /// IFF_VNET_HDR`, single queue, as Firecracker opens it), a port of
    /// `bridge`, and up. `isolated` sets the bridge port flag that stops it
    /// exchanging frames with other isolated ports (VM-to-VM traffic) while
    /// it still reaches the bridge itself. An existing tap of that name is
    /// reused and re-attached with the given flag; an existing link that is
    /// not a tap is an error.
    fn tap_create(&self, name: &str, bridge: &str, isolated: bool) -> Result<(), HostError>;

    /// Deletes tap `name`, even while a VMM holds it open. Missing: `Ok`. A
    /// link of that name that is not a tun/tap device is an error.
    fn tap_delete(&self, name: &str) -> Result<(), HostError>;

    /// The device of the IPv4 default route in the main table (the lowest
    /// metric when there are several; the first hop of a multipath route),
    /// or `None` without one. NAT masquerades out of it.
    fn default_route_dev(&self) -> Result<Option<String>, HostError>;

    /// Sets `net.ipv4.ip_forward=1` (no write when it already is).
    fn ip_forward_enable(&self) -> Result<(), HostError>;

    /// IPv4 routes, in any table, that overlap `net/prefix` (either contains
    /// the other), described as `ip route` would (`10.0.0.0/8 via 192.0.2.1
    /// dev eth0`). Default routes, local and broadcast routes and routes
    /// through `except_dev` (the banger bridge itself) are left out. For
    /// `doctor`'s subnet conflict check.
    fn routes_overlapping(
        &self,
        net: Ipv4Addr,
        prefix: u8,
        except_dev: Option<&str>,
    ) -> Result<Vec<String>, HostError>;

    // ---- nftables ----

    /// Runs `batch` with `nft -j -f -`: one transaction, all or nothing.
    fn nft_apply(&self, batch: &nftables::schema::Nftables<'_>) -> Result<(), HostError>;

    /// `nft -j list table <family> <table>` parsed, or `None` when the table
    /// does not exist (seen in `nft -j list tables`, not in an error).
    fn nft_list_table(
        &self,
        family: nftables::types::NfFamily,
        table: &str,
    ) -> Result<Option<nftables::schema::Nftables<'static>>, HostError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_table_is_one_dmsetup_line() {
        let t = snapshot_table(
            Path::new("/dev/loop7"),
            Path::new("/dev/loop8"),
            409600,
            true,
            8,
        );
        assert_eq!(t.to_string(), "0 409600 snapshot /dev/loop7 /dev/loop8 P 8");
        assert_eq!(t.target, "snapshot");
        assert_eq!((t.start, t.sectors), (0, 409600));
        let n = snapshot_table(Path::new("/dev/a"), Path::new("/dev/b"), 16, false, 16);
        assert_eq!(n.to_string(), "0 16 snapshot /dev/a /dev/b N 16");
    }

    #[test]
    fn command_errors_show_the_command_and_stderr() {
        use std::os::unix::process::ExitStatusExt;
        let e = HostError::Command {
            program: "/sbin/losetup".into(),
            args: vec!["--detach".into(), "/dev/loop9".into()],
            status: ExitStatus::from_raw(1 << 8),
            stderr: "losetup: /dev/loop9: detach failed: No such device or address\n\n".into(),
        };
        assert_eq!(
            e.to_string(),
            "/sbin/losetup --detach /dev/loop9 failed (exit status: 1): losetup: /dev/loop9: \
             detach failed: No such device or address"
        );
        let quiet = HostError::Command {
            program: "/sbin/e2fsck".into(),
            args: vec![],
            status: ExitStatus::from_raw(8 << 8),
            stderr: " \n".into(),
        };
        assert_eq!(quiet.to_string(), "/sbin/e2fsck failed (exit status: 8)");
        let long = stderr_suffix("1\n2\n3\n4\n5\n6\n");
        assert_eq!(long, ": 1; 2; 3; 4; 5; ...");
    }
}
