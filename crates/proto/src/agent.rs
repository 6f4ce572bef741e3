//! The protocol between the daemon and `banger-agent`, the small program that
//! runs as root inside every guest.
//!
//! Newline-delimited JSON over a byte stream: Firecracker's vsock (the host
//! connects to the VM's vsock Unix socket and sends `CONNECT 10789\n`) or, under
//! QEMU, the virtio-serial port named [`AGENT_SERIAL_NAME`]. One request per
//! line, one response line per request, in order:
//!
//! ```text
//! -> {"id":1,"method":"health"}
//! <- {"id":1,"result":{"agent_version":"0.1.0","protocol":1,"uptime_secs":4.2,...}}
//! -> {"id":2,"method":"reboot"}
//! <- {"id":2,"error":"unknown variant `reboot`, expected one of `health`, `ports`, `poweroff`"}
//! ```
//!
//! A response to a line whose `id` could not be read carries `"id": 0`, so
//! callers number their requests from 1. Lines longer than
//! [`MAX_LINE_BYTES`] are answered with an error and skipped up to their
//! newline. Unknown request fields are ignored, so a newer host may add some.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Where the agent listens: part of the guest contract, [`crate::guest`].
pub use crate::guest::{AGENT_SERIAL_NAME, AGENT_VSOCK_PORT};

/// Bumped whenever the agent protocol changes incompatibly; `health` reports it.
pub const PROTOCOL: u32 = 1;

/// Longest request line the agent reads (without its newline).
pub const MAX_LINE_BYTES: usize = 64 * 1024;

/// What the host asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentMethod {
    /// → [`Health`].
    Health,
    /// → `Vec<`[`ListeningPort`]`>`.
    Ports,
    /// → `{}`, sent before the guest starts shutting down.
    Poweroff,
}

impl AgentMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentMethod::Health => "health",
            AgentMethod::Ports => "ports",
            AgentMethod::Poweroff => "poweroff",
        }
    }
}

/// One request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRequest {
    pub id: u64,
    pub method: AgentMethod,
}

/// One response line: `{"id":N,"result":...}` or `{"id":N,"error":"..."}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentResponse {
    pub id: u64,
    #[serde(flatten)]
    pub outcome: AgentOutcome,
}

/// The body of a response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentOutcome {
    Result(serde_json::Value),
    Error(String),
}

impl AgentResponse {
    /// A successful response carrying `result`.
    pub fn ok<T: Serialize>(id: u64, result: &T) -> AgentResponse {
        let outcome = match serde_json::to_value(result) {
            Ok(v) => AgentOutcome::Result(v),
            Err(e) => AgentOutcome::Error(format!("cannot encode the result: {e}")),
        };
        AgentResponse { id, outcome }
    }

    pub fn error(id: u64, message: impl Into<String>) -> AgentResponse {
        AgentResponse {
            id,
            outcome: AgentOutcome::Error(message.into()),
        }
    }

    /// The result decoded as `T`, or the agent's error message.
    pub fn into_result<T: DeserializeOwned>(self) -> Result<T, String> {
        match self.outcome {
            AgentOutcome::Result(v) => {
                serde_json::from_value(v).map_err(|e| format!("malformed agent result: {e}"))
            }
            AgentOutcome::Error(e) => Err(e),
        }
    }
}

/// Ties a method to its result type, for typed callers.
pub trait AgentCall {
    const METHOD: AgentMethod;
    type Result: Serialize + DeserializeOwned;
}

/// `health`.
pub enum HealthCall {}
impl AgentCall for HealthCall {
    const METHOD: AgentMethod = AgentMethod::Health;
    type Result = Health;
}

/// `ports`.
pub enum PortsCall {}
impl AgentCall for PortsCall {
    const METHOD: AgentMethod = AgentMethod::Ports;
    type Result = Vec<ListeningPort>;
}

/// `poweroff`.
pub enum PoweroffCall {}
impl AgentCall for PoweroffCall {
    const METHOD: AgentMethod = AgentMethod::Poweroff;
    type Result = crate::methods::Empty;
}

/// The result of `health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub agent_version: String,
    /// The agent's [`PROTOCOL`].
    pub protocol: u32,
    /// Seconds since the guest kernel booted (`/proc/uptime`).
    pub uptime_secs: f64,
    /// `/proc/sys/kernel/random/boot_id`: changes on every boot.
    pub boot_id: String,
    pub hostname: String,
    /// `uname -r`.
    pub kernel_release: String,
}

/// Socket family and transport of a [`ListeningPort`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProto {
    Tcp,
    Udp,
    Tcp6,
    Udp6,
}

impl PortProto {
    pub fn as_str(self) -> &'static str {
        match self {
            PortProto::Tcp => "tcp",
            PortProto::Udp => "udp",
            PortProto::Tcp6 => "tcp6",
            PortProto::Udp6 => "udp6",
        }
    }
}

/// A socket listening in the guest: a TCP socket in LISTEN state or a bound,
/// unconnected UDP socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListeningPort {
    pub proto: PortProto,
    /// The local address, `0.0.0.0` / `::` for all addresses.
    pub address: String,
    pub port: u16,
    /// The owning process (the lowest pid holding the socket), when found.
    pub pid: Option<u32>,
    /// That process's `comm` (at most 15 bytes).
    pub process: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_form() {
        let r = AgentRequest {
            id: 7,
            method: AgentMethod::Ports,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"id":7,"method":"ports"}"#
        );
        let back: AgentRequest =
            serde_json::from_str(r#"{"id":7,"method":"poweroff","extra":1}"#).unwrap();
        assert_eq!(back.method, AgentMethod::Poweroff);
        assert!(serde_json::from_str::<AgentRequest>(r#"{"id":7,"method":"reboot"}"#).is_err());
    }

    #[test]
    fn response_wire_form() {
        let ok = AgentResponse::ok(3, &crate::methods::Empty {});
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            r#"{"id":3,"result":{}}"#
        );
        let err = AgentResponse::error(0, "bad");
        let text = serde_json::to_string(&err).unwrap();
        assert_eq!(text, r#"{"id":0,"error":"bad"}"#);
        let back: AgentResponse = serde_json::from_str(&text).unwrap();
        assert_eq!(back, err);
        assert_eq!(back.into_result::<Health>(), Err("bad".to_string()));

        let port = ListeningPort {
            proto: PortProto::Tcp6,
            address: "::".into(),
            port: 22,
            pid: Some(1),
            process: Some("sshd".into()),
        };
        let text = serde_json::to_string(&AgentResponse::ok(9, &vec![port.clone()])).unwrap();
        // Result objects go through `serde_json::Value`: keys come out sorted.
        assert_eq!(
            text,
            r#"{"id":9,"result":[{"address":"::","pid":1,"port":22,"process":"sshd","proto":"tcp6"}]}"#
        );
        let back: AgentResponse = serde_json::from_str(&text).unwrap();
        assert_eq!(
            back.into_result::<Vec<ListeningPort>>().unwrap(),
            vec![port]
        );
        // Both or neither is not a response.
        assert!(serde_json::from_str::<AgentResponse>(r#"{"id":1}"#).is_err());
    }
}
