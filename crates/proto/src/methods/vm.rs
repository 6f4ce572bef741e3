//! `vm.*`: the VM lifecycle.

use serde::{Deserialize, Serialize};

use super::daemon::LogChunk;
use super::op::{OpIdParams, OperationInfo, StageInfo};
use super::{method, Empty, NameParams};

method!(
    /// Validates, reserves the name and starts the `vm.create` operation.
    CreateBegin = "vm.create.begin", CreateParams => CreateBegun
);
method!(
    /// The create operation's state (like `op.status`, for `vm.create` operations).
    CreateStatus = "vm.create.status", OpIdParams => OperationInfo
);
method!(
    /// Cancels a create; everything it made is removed.
    CreateCancel = "vm.create.cancel", OpIdParams => OperationInfo
);
method!(
    /// Boots a stopped VM; returns when it runs.
    Start = "vm.start", NameParams => LifecycleResult
);
method!(
    /// Ctrl-Alt-Del, then SIGTERM, then SIGKILL; returns when stopped.
    Stop = "vm.stop", StopParams => LifecycleResult
);
method!(
    /// Stop, then start.
    Restart = "vm.restart", StopParams => LifecycleResult
);
method!(
    /// Freezes a running VM's vCPUs (memory and devices stay); returns when
    /// the VMM reports it paused.
    Pause = "vm.pause", NameParams => LifecycleResult
);
method!(
    /// Lets a paused VM's vCPUs run again, from where they were.
    Resume = "vm.resume", NameParams => LifecycleResult
);
method!(
    /// Sends a signal to the VMM now (default SIGKILL).
    Kill = "vm.kill", KillParams => LifecycleResult
);
method!(
    /// Deletes a VM and everything it owns (`force` also kills a running one).
    Delete = "vm.delete", DeleteParams => Empty
);
method!(
    /// Deletes the caller's stopped VMs.
    Prune = "vm.prune", Empty => PruneResult
);
method!(
    /// Changes vcpus, memory or the work disk size of a stopped VM.
    Set = "vm.set", SetParams => VmInfo
);
method!(
    /// VMs visible to the caller.
    List = "vm.list", ListParams => Vec<VmInfo>
);
method!(
    /// One VM.
    Show = "vm.show", NameParams => VmInfo
);
method!(
    /// A chunk of the VM's console or VMM log.
    Logs = "vm.logs", VmLogsParams => LogChunk
);
method!(
    /// Resource use of the VM's VMM process plus the VMM's own metrics.
    Stats = "vm.stats", NameParams => VmStats
);
method!(
    /// Publishes a host port to a guest port.
    PortAdd = "vm.port.add", PortAddParams => Vec<PortMapping>
);
method!(
    /// Stops publishing a host port.
    PortRemove = "vm.port.rm", PortRemoveParams => Vec<PortMapping>
);
method!(
    /// The VM's published ports.
    PortList = "vm.port.list", NameParams => Vec<PortMapping>
);
method!(
    /// Is the VM healthy? The guest agent's answer when the image has one,
    /// else VMM liveness (and `detail` says so).
    Health = "vm.health", NameParams => VmHealth
);
method!(
    /// A round trip to the guest agent (or, without one, to the VMM).
    Ping = "vm.ping", NameParams => VmHealth
);
method!(
    /// Sockets listening in the guest, from its agent, with the endpoints
    /// they are reachable at from the host.
    Ports = "vm.ports", NameParams => VmPorts
);

/// VM states. Stable states: `stopped`, `running`, `paused` (the VMM
/// process lives, the vCPUs are frozen). Transitional states (`creating`,
/// `starting`, `stopping`, `updating`, `deleting`, `pausing`, `resuming`)
/// mean an operation owns the VM; conflicting requests get a `busy` error
/// until it settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmState {
    Creating,
    Stopped,
    Starting,
    Running,
    Stopping,
    Updating,
    Deleting,
    Pausing,
    Paused,
    Resuming,
}

impl VmState {
    pub const ALL: [VmState; 10] = [
        VmState::Creating,
        VmState::Stopped,
        VmState::Starting,
        VmState::Running,
        VmState::Stopping,
        VmState::Updating,
        VmState::Deleting,
        VmState::Pausing,
        VmState::Paused,
        VmState::Resuming,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VmState::Creating => "creating",
            VmState::Stopped => "stopped",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Stopping => "stopping",
            VmState::Updating => "updating",
            VmState::Deleting => "deleting",
            VmState::Pausing => "pausing",
            VmState::Paused => "paused",
            VmState::Resuming => "resuming",
        }
    }

    pub fn parse(s: &str) -> Option<VmState> {
        VmState::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// An operation owns the VM right now.
    pub fn is_transitional(self) -> bool {
        !matches!(self, VmState::Stopped | VmState::Running | VmState::Paused)
    }

    /// The VM's VMM has booted the guest and holds its runtime (devices,
    /// TAP, published ports), whether its vCPUs run or are paused.
    pub fn is_booted(self) -> bool {
        matches!(
            self,
            VmState::Running | VmState::Pausing | VmState::Paused | VmState::Resuming
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    /// Empty or absent: a generated name.
    #[serde(default)]
    pub name: Option<String>,
    /// Absent: the caller's default image.
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    /// Work disk (/root) size in bytes.
    #[serde(default)]
    pub disk_bytes: Option<u64>,
    #[serde(default)]
    pub no_start: bool,
    #[serde(default)]
    pub nat: bool,
    /// Ports to publish (`-p`).
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// `firecracker`, `qemu` or `auto`; absent: the config's `[vm] vmm`.
    #[serde(default)]
    pub vmm: Option<String>,
}

/// A published port: host `host_ip:host_port` (all host addresses when
/// `host_ip` is absent) forwards to the guest's `guest_port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortMapping {
    #[serde(default)]
    pub host_ip: Option<std::net::Ipv4Addr>,
    pub host_port: u16,
    pub guest_port: u16,
    /// `tcp` (default) or `udp`.
    #[serde(default = "default_proto")]
    pub proto: String,
}

fn default_proto() -> String {
    "tcp".into()
}

impl PortMapping {
    /// Parses `[HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|udp]` (docker's `-p`).
    pub fn parse(s: &str) -> Result<PortMapping, String> {
        let bad = |why: &str| {
            format!(
                "invalid port mapping {s:?}: {why} (use [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|udp])"
            )
        };
        let (spec, proto) = match s.rsplit_once('/') {
            Some((spec, p)) if p == "tcp" || p == "udp" => (spec, p.to_string()),
            Some(_) => return Err(bad("the protocol must be tcp or udp")),
            None => (s, "tcp".to_string()),
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let port = |p: &str| -> Result<u16, String> {
            match p.parse::<u16>() {
                Ok(0) | Err(_) => Err(bad(&format!("{p:?} is not a port (1-65535)"))),
                Ok(n) => Ok(n),
            }
        };
        let (host_ip, host_port, guest_port) = match parts.as_slice() {
            [h, g] => (None, port(h)?, port(g)?),
            [ip, h, g] => (
                Some(
                    ip.parse()
                        .map_err(|_| bad(&format!("{ip:?} is not an IPv4 address")))?,
                ),
                port(h)?,
                port(g)?,
            ),
            _ => return Err(bad("wrong number of fields")),
        };
        Ok(PortMapping {
            host_ip,
            host_port,
            guest_port,
            proto,
        })
    }
}

impl std::fmt::Display for PortMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(ip) = self.host_ip {
            write!(f, "{ip}:")?;
        }
        write!(f, "{}:{}/{}", self.host_port, self.guest_port, self.proto)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortAddParams {
    pub name: String,
    pub port: PortMapping,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRemoveParams {
    pub name: String,
    pub host_port: u16,
    #[serde(default = "default_proto")]
    pub proto: String,
}

/// The VM's place on the host network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkInfo {
    pub ip: std::net::Ipv4Addr,
    pub gateway: std::net::Ipv4Addr,
    pub prefix: u8,
    /// `<name>.vm`, answered by the daemon's DNS.
    pub dns_name: String,
    /// The TAP device and guest MAC (the tap exists only while the VM runs).
    pub tap: String,
    pub mac: String,
    pub ports: Vec<PortMapping>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateBegun {
    pub operation_id: String,
    /// The VM as reserved (state `creating`), with the resolved spec.
    pub vm: VmInfo,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopParams {
    pub name: String,
    /// Seconds to wait for the guest after Ctrl-Alt-Del (default: config).
    #[serde(default)]
    pub timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KillParams {
    pub name: String,
    /// A signal name (`KILL`, `SIGTERM`, ...) or number; default KILL.
    #[serde(default)]
    pub signal: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    pub name: String,
    #[serde(default)]
    pub force: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PruneResult {
    pub deleted: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetParams {
    pub name: String,
    #[serde(default)]
    pub vcpus: Option<u32>,
    #[serde(default)]
    pub memory_mib: Option<u64>,
    #[serde(default)]
    pub disk_bytes: Option<u64>,
    /// NAT on or off (also while running).
    #[serde(default)]
    pub nat: Option<bool>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Include VMs that are not running.
    #[serde(default)]
    pub all: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogSource {
    /// The guest's serial console.
    #[default]
    Console,
    /// The VMM's own log.
    Vmm,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmLogsParams {
    pub name: String,
    #[serde(default)]
    pub source: LogSource,
    #[serde(default)]
    pub offset: Option<u64>,
    #[serde(default)]
    pub tail_bytes: Option<u64>,
}

/// The result of start/stop/restart/kill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleResult {
    pub vm: VmInfo,
    /// For stops and kills: what ended the VMM (`guest`, `sigterm`, `sigkill`,
    /// `signal N`); `null` otherwise.
    #[serde(default)]
    pub ended_by: Option<String>,
    /// Per-stage host-side timing of this call.
    pub stages: Vec<StageInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskInfo {
    /// `dm-snapshot`, `reflink`, `overlay` or `copy` for the root disk;
    /// `ext4` for work.
    pub backend: String,
    /// The VM's own file (overlay: the overlay disk) or device.
    pub path: String,
    pub size: u64,
    /// Overlay: the image's rootfs the VM shares, read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lower: Option<String>,
    /// Why this backend and not a cheaper one, when `auto` had to settle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub at: String,
    /// `guest`, `sigterm`, `sigkill`, `crashed`, `daemon-restart`, `start-failed`, ...
    pub by: String,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    pub id: String,
    pub name: String,
    pub owner_uid: u32,
    pub state: VmState,
    pub image: String,
    pub kernel: String,
    pub vcpus: u32,
    pub memory_mib: u64,
    /// Work disk size in bytes.
    pub disk_bytes: u64,
    pub nat: bool,
    /// `firecracker` or `qemu`: the VMM this VM runs under (chosen at create).
    pub vmm: String,
    /// How the guest's CPU runs while the VM runs: `kvm`, or `tcg` (QEMU's
    /// software emulation). Absent while stopped.
    #[serde(default)]
    pub accel: Option<String>,
    #[serde(default)]
    pub pid: Option<u32>,
    #[serde(default)]
    pub api_socket: Option<String>,
    #[serde(default)]
    pub root_disk: Option<DiskInfo>,
    #[serde(default)]
    pub work_disk: Option<DiskInfo>,
    pub created_at: String,
    #[serde(default)]
    pub started_at: Option<String>,
    #[serde(default)]
    pub uptime_secs: Option<u64>,
    #[serde(default)]
    pub last_exit: Option<ExitRecord>,
    /// Host-side timing of the last start.
    #[serde(default)]
    pub last_start: Vec<StageInfo>,
    pub console_log: String,
    pub vmm_log: String,
    /// Absent when the VM has no network (networking disabled at create).
    #[serde(default)]
    pub network: Option<NetworkInfo>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmStats {
    pub name: String,
    pub state: VmState,
    #[serde(default)]
    pub uptime_secs: Option<u64>,
    #[serde(default)]
    pub pid: Option<u32>,
    /// Resident memory of the VMM process, bytes.
    #[serde(default)]
    pub rss_bytes: Option<u64>,
    /// CPU time of the VMM process (user + system), seconds.
    #[serde(default)]
    pub cpu_secs: Option<f64>,
    /// The VMM's latest metrics document (Firecracker's metrics JSON).
    #[serde(default)]
    pub vmm_metrics: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmHealth {
    pub name: String,
    pub healthy: bool,
    pub state: VmState,
    /// The VMM's own view (`Running`, `Paused`, `Not started`).
    #[serde(default)]
    pub vmm_state: Option<String>,
    /// Round trip to what answered (`checked`), milliseconds.
    #[serde(default)]
    pub latency_ms: Option<f64>,
    /// What is asked about the guest: `agent` (the image runs the guest
    /// agent) or `vmm` (no agent: VMM liveness only). Empty from daemons
    /// older than the agent.
    #[serde(default)]
    pub checked: String,
    /// The agent's answer, when it gave one.
    #[serde(default)]
    pub agent: Option<crate::agent::Health>,
    pub detail: String,
}

/// `vm.ports`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmPorts {
    pub name: String,
    /// `<name>.vm`, when the VM has a network.
    #[serde(default)]
    pub dns_name: Option<String>,
    #[serde(default)]
    pub ip: Option<std::net::Ipv4Addr>,
    pub ports: Vec<GuestPort>,
}

/// A socket listening in the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestPort {
    /// `tcp`, `udp`, `tcp6`, `udp6`.
    pub proto: String,
    /// The guest address it is bound to (`0.0.0.0`/`::`: all).
    pub address: String,
    pub port: u16,
    #[serde(default)]
    pub pid: Option<u32>,
    /// The owning process's name.
    #[serde(default)]
    pub process: Option<String>,
    /// `<name>.vm:PORT` when the host can reach it (bound to all addresses
    /// or the VM's own; not loopback-only); absent otherwise.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `http://<name>.vm:PORT/` for reachable TCP ports.
    #[serde(default)]
    pub url: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::PortMapping;

    #[test]
    fn port_specs() {
        let p = PortMapping::parse("8080:80").unwrap();
        assert_eq!(
            (p.host_ip, p.host_port, p.guest_port, p.proto.as_str()),
            (None, 8080, 80, "tcp")
        );
        let p = PortMapping::parse("127.0.0.1:5353:53/udp").unwrap();
        assert_eq!(p.host_ip, Some(std::net::Ipv4Addr::LOCALHOST));
        assert_eq!(p.proto, "udp");
        assert_eq!(p.to_string(), "127.0.0.1:5353:53/udp");
        for bad in [
            "80",
            "0:80",
            "70000:80",
            "a:80",
            "1.2.3:80:80",
            "80:80/sctp",
            "1:2:3:4",
        ] {
            assert!(PortMapping::parse(bad).is_err(), "{bad}");
        }
    }
}
