//! The VMM seam: what the VM lifecycle needs from a virtual machine monitor.
//!
//! The lifecycle code (crate::vm) only talks to this trait; Firecracker is
//! one implementation, QEMU will be another. Process-level control (signals,
//! waiting for exit, identity across daemon restarts) is not here: every VMM
//! is a process tracked by pidfd in [`super::process`], the same way.

use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;

/// Everything needed to launch one VM.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub vm_id: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub boot_args: String,
    /// What the VMM opens as the root disk (a file or a /dev/mapper device).
    pub root_disk: PathBuf,
    /// Attach `root_disk` read-only, for the guest and for the VMM's own
    /// open (the overlay backend's rootfs, shared by every VM of its image).
    pub root_read_only: bool,
    pub work_disk: PathBuf,
    /// The overlay disk (overlay backend): the third drive, read-write.
    pub overlay_disk: Option<PathBuf>,
    pub net: Option<NetAttach>,
    /// Per-VM runtime dir (sockets); per-VM state dir (logs, metrics).
    pub run_dir: PathBuf,
    pub vm_dir: PathBuf,
}

/// A host network device handed to the guest, and the address the guest
/// takes (from the kernel command line: no DHCP).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetAttach {
    pub tap: String,
    pub mac: String,
    pub ip: std::net::Ipv4Addr,
    pub gateway: std::net::Ipv4Addr,
    pub prefix: u8,
}

/// What the daemon records to find a VMM again, also after a restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmmHandle {
    /// `firecracker` or `qemu`.
    pub kind: String,
    pub pid: u32,
    /// /proc starttime: with the pid, identifies the process across restarts.
    pub start_time: u64,
    /// The VMM's control socket (Firecracker API / QMP).
    pub api_socket: PathBuf,
    #[serde(default)]
    pub metrics: Option<PathBuf>,
    /// The host end of the guest agent's channel: Firecracker's vsock Unix
    /// socket, or QEMU's virtio-serial chardev socket. `None` for VMMs
    /// started before banger had an agent channel.
    #[serde(default)]
    pub agent_socket: Option<PathBuf>,
    /// How the guest's CPU runs: `kvm` or `tcg` (QEMU's software
    /// emulation). `None` for records made before it was recorded.
    #[serde(default)]
    pub accel: Option<String>,
}

/// Why a VMM operation failed. The backends' own errors are kept typed (the
/// launch, API and QMP failures with their sources), so the one mapping to
/// protocol errors (`rpc/errors.rs`) and logs see what happened, not a string.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The VMM binary is missing or unusable; the message says how to fix it.
    #[error("{0}")]
    Unavailable(String),
    /// Firecracker did not come up.
    #[error(transparent)]
    FirecrackerLaunch(#[from] super::firecracker::launch::LaunchError),
    /// QEMU did not come up.
    #[error(transparent)]
    QemuLaunch(#[from] super::qemu::launch::LaunchError),
    /// Firecracker's API refused or failed a request.
    #[error(transparent)]
    FirecrackerApi(#[from] super::firecracker::api::ApiError),
    /// QEMU's QMP refused or failed a command.
    #[error(transparent)]
    Qmp(#[from] super::qemu::qmp::QmpError),
    /// Firecracker's vsock socket refused the agent's port.
    #[error(transparent)]
    Vsock(#[from] super::firecracker::vsock::VsockError),
    /// A file of the VMM's could not be read or removed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    /// The VMM process did not come up for another reason (the fake's spawn).
    #[error("{0}")]
    Launch(String),
    /// A request banger could not make: the VMM process is gone, or the spec
    /// does not fit what the VMM takes.
    #[error("{0}")]
    Api(String),
    /// The operation is not supported by this VMM.
    #[error("{0}")]
    Unsupported(String),
    /// The host end of the guest agent's channel could not be opened or the
    /// VMM refused to connect it to the guest.
    #[error("{0}")]
    AgentChannel(String),
}

#[async_trait]
pub trait Vmm: Send + Sync {
    fn kind(&self) -> &'static str;
    /// Checks the binary exists and its version is supported. The check
    /// runs the binary, so it runs on a blocking thread, once per binary:
    /// callers arriving meanwhile await the same answer.
    async fn preflight(&self) -> Result<(), VmmError>;
    /// Starts the VMM process and waits until it accepts configuration.
    async fn spawn(&self, spec: &LaunchSpec) -> Result<(VmmHandle, OwnedFd), VmmError>;
    /// Machine, kernel, disks, network, logging.
    async fn configure(&self, h: &VmmHandle, spec: &LaunchSpec) -> Result<(), VmmError>;
    /// Starts the guest.
    async fn boot(&self, h: &VmmHandle) -> Result<(), VmmError>;
    /// Asks the guest to shut down (Ctrl-Alt-Del or equivalent).
    async fn request_shutdown(&self, h: &VmmHandle) -> Result<(), VmmError>;
    /// Whether [`Vmm::request_shutdown`] can reach a guest at all. QEMU's
    /// microvm runs without ACPI, so its power button goes nowhere: the
    /// lifecycle then asks the guest agent, or escalates at once.
    fn shutdown_reaches_guest(&self) -> bool {
        true
    }
    /// A byte stream to the guest agent (the caller speaks
    /// [`banger_proto::agent`] on it), opened within `timeout`.
    /// Firecracker: its vsock Unix socket and the `CONNECT <port>`
    /// handshake, which fails when nothing listens in the guest. QEMU: the
    /// virtio-serial port's chardev socket, which always connects; a guest
    /// without an agent then simply never answers.
    async fn agent_connect(&self, h: &VmmHandle, timeout: Duration)
        -> Result<UnixStream, VmmError>;
    async fn pause(&self, h: &VmmHandle) -> Result<(), VmmError>;
    async fn resume(&self, h: &VmmHandle) -> Result<(), VmmError>;
    /// The VMM's view of the guest (`Running`, `Paused`, `Not started`).
    async fn status(&self, h: &VmmHandle) -> Result<String, VmmError>;
    /// The VMM's metrics, freshly flushed, if it has any.
    async fn metrics(&self, h: &VmmHandle) -> Result<Option<serde_json::Value>, VmmError>;
    /// The effective configuration as the VMM reports it.
    async fn effective_config(&self, h: &VmmHandle) -> Result<serde_json::Value, VmmError>;
}
