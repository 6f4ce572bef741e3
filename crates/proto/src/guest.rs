//! The guest contract: what a banger image and the host agree on, in one
//! place. The image build (`banger_core::image_build`) lays the guest out this
//! way, the daemon writes into the VM's work disk and attaches its disks and
//! agent transports this way, and `banger-agent` listens where this says.
//!
//! - The root disk is the first virtio block device, [`ROOT_DEVICE`], an ext4
//!   filesystem labelled [`ROOT_LABEL`] mounted on `/` (with the overlay root,
//!   below: read-only, as the lower layer of the overlayfs on `/`).
//! - The work disk is the second, [`WORK_DEVICE`], labelled [`WORK_LABEL`] and
//!   mounted on [`WORK_MOUNT`] (`/root`, root's home): it survives a rebuilt
//!   root disk. Paths *on the work disk* are absolute from the work disk's own
//!   root ([`HOST_KEY_PATH`], [`AUTHORIZED_KEYS_PATH`]), because the daemon
//!   writes them into the filesystem image before the first boot; in the
//!   running guest they sit under [`WORK_MOUNT`] ([`GUEST_HOST_KEY_PATH`]).
//! - sshd's only host key is [`GUEST_HOST_KEY_PATH`], made per VM by the
//!   daemon: images carry none.
//! - The agent is [`AGENT_PATH`], listening on vsock port [`AGENT_VSOCK_PORT`]
//!   (Firecracker) or the virtio-serial port [`AGENT_SERIAL_NAME`] (QEMU); its
//!   protocol is [`crate::agent`].
//! - The overlay root (images with the [`OVERLAY_FEATURE`]): the root disk is
//!   the image's own `rootfs.ext4`, attached read-only and shared by every VM
//!   of the image, and the VM's writes go to a third disk, [`OVERLAY_DEVICE`]
//!   (ext4, labelled [`OVERLAY_LABEL`]). The kernel runs the agent as init
//!   ([`AGENT_PATH`] with `init=`) and passes it the overlay device in the
//!   environment variable [`OVERLAY_ENV`] (an unknown `key=value` kernel
//!   parameter without a dot becomes init's environment). The agent mounts
//!   the overlay disk on [`OVERLAY_DISK_MOUNT`] (in a tmpfs on [`INIT_RUN`]),
//!   assembles overlayfs (lower: the read-only root; upper and work:
//!   [`OVERLAY_UPPER`] and [`OVERLAY_WORK`] on the overlay disk) on
//!   [`OVERLAY_ROOT_MOUNT`], pivots into it, detaches the old root (the lower
//!   is not visible in the guest), and executes [`REAL_INIT`] (systemd),
//!   which is PID 1 as before. The work disk stays [`WORK_DEVICE`].

/// The root disk in the guest (the VMM's first drive).
pub const ROOT_DEVICE: &str = "/dev/vda";
/// The work disk in the guest (the VMM's second drive).
pub const WORK_DEVICE: &str = "/dev/vdb";
/// Where the work disk is mounted in the guest: root's home.
pub const WORK_MOUNT: &str = "/root";

/// The root filesystem's ext4 label.
pub const ROOT_LABEL: &str = "banger-root";
/// The work filesystem's ext4 label (image work seeds and the disks banger makes).
pub const WORK_LABEL: &str = "banger-work";

/// Directories on the work disk, each 0700 and root's: root's `.ssh`, and
/// banger's own files (the SSH host key).
pub const WORK_DIRS: &[&str] = &[".ssh", ".banger", ".banger/ssh"];
/// The VM's SSH host key (private half; the public one is
/// [`HOST_KEY_PUB_PATH`]), on the work disk.
pub const HOST_KEY_PATH: &str = "/.banger/ssh/ssh_host_ed25519_key";
/// The public half of [`HOST_KEY_PATH`], next to it: `<private>.pub`.
pub const HOST_KEY_PUB_PATH: &str = "/.banger/ssh/ssh_host_ed25519_key.pub";
/// The same key as sshd sees it: [`WORK_MOUNT`] + [`HOST_KEY_PATH`].
pub const GUEST_HOST_KEY_PATH: &str = "/root/.banger/ssh/ssh_host_ed25519_key";
/// root's `authorized_keys`, on the work disk.
pub const AUTHORIZED_KEYS_PATH: &str = "/.ssh/authorized_keys";

/// Where images install the agent binary.
pub const AGENT_PATH: &str = "/usr/local/bin/banger-agent";
/// The vsock port the agent listens on (any CID).
pub const AGENT_VSOCK_PORT: u32 = 10789;
/// The virtio-serial port name (`/dev/virtio-ports/<name>` in the guest).
pub const AGENT_SERIAL_NAME: &str = "org.banger.agent.0";

/// The image feature saying the image's agent can assemble the overlay root
/// (images built or pulled by a banger with the agent's init mode).
pub const OVERLAY_FEATURE: &str = "overlay";
/// The per-VM overlay disk in the guest (the VMM's third drive, after the
/// read-only root and the work disk).
pub const OVERLAY_DEVICE: &str = "/dev/vdc";
/// The overlay disk's ext4 label; the agent refuses a device without it.
pub const OVERLAY_LABEL: &str = "banger-overlay";
/// The kernel parameter (and so init's environment variable) naming the
/// overlay device. No dot: the kernel keeps dotted parameters for modules.
pub const OVERLAY_ENV: &str = "banger_overlay";
/// What the agent's init mode executes once the root is assembled.
pub const REAL_INIT: &str = "/sbin/init";
/// A directory every systemd image has, where the agent's init mode mounts a
/// scratch tmpfs for its mount points (systemd mounts its own tmpfs on
/// `/run` later; the scratch one goes with the old root).
pub const INIT_RUN: &str = "/run";
/// Where the overlay disk is mounted while the root is assembled.
pub const OVERLAY_DISK_MOUNT: &str = "/run/banger-init/disk";
/// Where the overlay root is assembled before the pivot.
pub const OVERLAY_ROOT_MOUNT: &str = "/run/banger-init/root";
/// overlayfs's upper directory, from the overlay disk's root.
pub const OVERLAY_UPPER: &str = "upper";
/// overlayfs's work directory, from the overlay disk's root.
pub const OVERLAY_WORK: &str = "work";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_paths_agree() {
        assert_eq!(GUEST_HOST_KEY_PATH, format!("{WORK_MOUNT}{HOST_KEY_PATH}"));
        assert_eq!(HOST_KEY_PUB_PATH, format!("{HOST_KEY_PATH}.pub"));
        for p in [HOST_KEY_PATH, HOST_KEY_PUB_PATH, AUTHORIZED_KEYS_PATH] {
            let dir = p.rsplit_once('/').unwrap().0.trim_start_matches('/');
            assert!(WORK_DIRS.contains(&dir), "{p}: {dir} is made by the image");
        }
        for p in [OVERLAY_DISK_MOUNT, OVERLAY_ROOT_MOUNT] {
            assert!(p.starts_with(&format!("{INIT_RUN}/")), "{p}");
        }
        assert!(OVERLAY_LABEL.len() <= 16, "an ext4 label has 16 bytes");
        assert!(!OVERLAY_ENV.contains('.') && !OVERLAY_ENV.contains('='));
    }
}
