//! A small typed client for Firecracker's HTTP API over its Unix socket.
//!
//! The types mirror the v1.12 swagger (`src/firecracker/swagger/firecracker.yaml`)
//! but carry only the fields banger uses; `None` fields are left out of the
//! request so Firecracker applies its defaults. Firecracker rejects unknown
//! fields, so nothing here may be renamed freely.
//!
//! One connection per request; every request has a deadline
//! ([`REQUEST_TIMEOUT`], longer for snapshots: [`SNAPSHOT_TIMEOUT`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;

/// Deadline of one API request (connect, send, read the whole reply).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Deadline of snapshot create/load: they write or map the whole guest
/// memory file, which takes seconds per GiB on slow disks.
pub const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);

/// `InstanceInfo.state` before InstanceStart (or snapshot load).
pub const STATE_NOT_STARTED: &str = "Not started";
/// `InstanceInfo.state` of a running guest.
pub const STATE_RUNNING: &str = "Running";
/// `InstanceInfo.state` of a paused guest.
pub const STATE_PAUSED: &str = "Paused";

/// What can go wrong talking to Firecracker.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The API socket accepts no connection: the VMM is gone or not up yet.
    #[error("cannot connect to the firecracker API at {}: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Firecracker did not answer within the deadline.
    #[error("firecracker did not answer {what} in time")]
    Timeout { what: String },
    /// Firecracker answered with an error status; `fault_message` is its
    /// explanation (the body `{"fault_message": "..."}`).
    #[error("firecracker refused {method} {path} ({status}): {fault_message}")]
    Fault {
        method: String,
        path: String,
        status: u16,
        fault_message: String,
    },
    /// A successful reply whose body is not what the swagger promises.
    #[error("cannot decode firecracker's reply to {what}: {message}")]
    Decode { what: String, message: String },
    /// The HTTP exchange itself failed (connection reset, malformed reply).
    #[error("HTTP exchange with firecracker failed: {0}")]
    Http(String),
}

/// `PUT/GET /machine-config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineConfig {
    /// Number of vCPUs: 1..=32 (1 or even with SMT).
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: u64,
    /// Simultaneous multithreading (x86 only); default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// Track dirty pages so that Diff snapshots can be taken; default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
}

/// `PUT /boot-source`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootSource {
    /// Host path of the uncompressed (ELF) kernel.
    pub kernel_image_path: PathBuf,
    /// Kernel command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Host path of an initrd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
}

/// Host-side caching of a drive (`Drive.cache_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Flush requests from the guest are ignored (the default).
    Unsafe,
    /// Flush requests from the guest reach the host file (fsync).
    Writeback,
}

/// How Firecracker does a drive's I/O (`Drive.io_engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Blocking I/O on the VMM thread (the default).
    Sync,
    /// io_uring (host kernel > 5.10.51).
    Async,
}

/// `PUT /drives/{drive_id}`: a virtio-block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drive {
    /// Identifier (ASCII letters, digits, '_'), also the request's last
    /// path segment.
    pub drive_id: String,
    /// Host path of the backing file or block device.
    pub path_on_host: PathBuf,
    /// Whether this is the guest's root device (at most one).
    pub is_root_device: bool,
    /// Whether the guest sees the drive read-only.
    pub is_read_only: bool,
    /// Host caching; default `Unsafe`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_type: Option<CacheType>,
    /// I/O engine; default `Sync`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
}

/// `PUT /network-interfaces/{iface_id}`: a virtio-net device on a TAP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkInterface {
    /// Identifier (ASCII letters, digits, '_'), also the request's last
    /// path segment.
    pub iface_id: String,
    /// Name of the host TAP device.
    pub host_dev_name: String,
    /// The guest's MAC address (`aa:bb:cc:dd:ee:ff`); random when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
}

/// `PUT /vsock`: the virtio-vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vsock {
    /// The guest's context id (>= 3).
    pub guest_cid: u32,
    /// Host Unix socket Firecracker listens on for host-initiated
    /// connections (`CONNECT <port>\n`); guest-initiated ones go to
    /// `<uds_path>_<port>`.
    pub uds_path: PathBuf,
}

/// Log level of Firecracker's own log (`Logger.level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogLevel {
    Error,
    Warning,
    Info,
    Debug,
    Trace,
    Off,
}

/// `PUT /logger` (pre-boot only).
///
/// Quirk (v1.12 `logger/logging.rs`): a `log_path` is opened read-write
/// without truncation or `O_APPEND`, so writing starts at offset 0 and
/// overwrites what the file held. Reopening the `--log-path` of the launch
/// here would overwrite the launch's log lines: leave `log_path` `None` to
/// change only the level or format.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Logger {
    /// File or FIFO for the log; it must already exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// Level; default `Info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// Prefix each line with its level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Prefix each line with its source file and line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
}

/// `PUT /metrics` (pre-boot only, and only once: refused when the launch
/// passed `--metrics-path`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metrics {
    /// File or FIFO for JSON metric lines; it must already exist and is
    /// written from offset 0.
    pub metrics_path: PathBuf,
}

/// `PUT /actions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Boot the configured guest.
    InstanceStart,
    /// Press Ctrl+Alt+Del (i8042 reset; a guest without a keyboard driver
    /// ignores it).
    SendCtrlAltDel,
    /// Write one metrics line now (metrics are otherwise flushed every 60 s).
    FlushMetrics,
}

/// Snapshot kind (`SnapshotCreateParams.snapshot_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// The whole guest memory.
    Full,
    /// Memory dirtied since the last snapshot (needs `track_dirty_pages`).
    Diff,
}

/// `PUT /snapshot/create` (the VM must be paused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCreate {
    /// Full or Diff.
    pub snapshot_type: SnapshotType,
    /// Where the microVM state goes.
    pub snapshot_path: PathBuf,
    /// Where the guest memory goes.
    pub mem_file_path: PathBuf,
}

/// Where restored guest memory comes from (`MemoryBackend.backend_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemBackendType {
    /// A memory file written by snapshot create (mapped privately).
    File,
    /// A userfaultfd page-fault handler listening on a Unix socket.
    Uffd,
}

/// `SnapshotLoadParams.mem_backend` (v1.12 deprecates `mem_file_path`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemBackend {
    /// File or Uffd.
    pub backend_type: MemBackendType,
    /// The memory file, or the UFFD handler's socket.
    pub backend_path: PathBuf,
}

impl MemBackend {
    /// Memory from a file written by [`ApiClient::snapshot_create`].
    pub fn file(path: impl Into<PathBuf>) -> MemBackend {
        MemBackend {
            backend_type: MemBackendType::File,
            backend_path: path.into(),
        }
    }
}

/// `PUT /snapshot/load` (only on a fresh Firecracker: nothing configured,
/// not started).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotLoad {
    /// The microVM state file.
    pub snapshot_path: PathBuf,
    /// The guest memory source.
    pub mem_backend: MemBackend,
    /// Resume the guest once loaded (else it stays Paused).
    pub resume_vm: bool,
    /// Track dirty pages, to take Diff snapshots later; default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_diff_snapshots: Option<bool>,
}

/// `GET /`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The `--id` given at launch.
    pub id: String,
    /// [`STATE_NOT_STARTED`], [`STATE_RUNNING`] or [`STATE_PAUSED`].
    pub state: String,
    /// Firecracker's version, e.g. `1.12.1`.
    pub vmm_version: String,
    /// Always `Firecracker`.
    pub app_name: String,
}

#[derive(Serialize)]
struct ActionBody {
    action_type: Action,
}

#[derive(Serialize)]
struct VmStateBody {
    state: &'static str,
}

#[derive(Deserialize)]
struct FaultBody {
    fault_message: String,
}

/// A client for one Firecracker's API socket. Cheap to clone; holds no
/// connection.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    /// A client for the API socket at `socket`, with [`REQUEST_TIMEOUT`].
    pub fn new(socket: impl Into<PathBuf>) -> ApiClient {
        ApiClient {
            socket: socket.into(),
            timeout: REQUEST_TIMEOUT,
        }
    }

    /// The same client with another per-request deadline.
    pub fn with_timeout(mut self, timeout: Duration) -> ApiClient {
        self.timeout = timeout;
        self
    }

    /// The API socket's path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `PUT /machine-config` (pre-boot).
    pub async fn put_machine_config(&self, config: &MachineConfig) -> Result<(), ApiError> {
        self.put("/machine-config", config).await
    }

    /// `GET /machine-config`.
    pub async fn get_machine_config(&self) -> Result<MachineConfig, ApiError> {
        self.get("/machine-config").await
    }

    /// `PUT /boot-source` (pre-boot).
    pub async fn put_boot_source(&self, boot: &BootSource) -> Result<(), ApiError> {
        self.put("/boot-source", boot).await
    }

    /// `PUT /drives/{drive_id}` (pre-boot).
    pub async fn put_drive(&self, drive: &Drive) -> Result<(), ApiError> {
        let path = format!("/drives/{}", path_segment(&drive.drive_id)?);
        self.put(&path, drive).await
    }

    /// `PUT /network-interfaces/{iface_id}` (pre-boot).
    pub async fn put_network_interface(&self, iface: &NetworkInterface) -> Result<(), ApiError> {
        let path = format!("/network-interfaces/{}", path_segment(&iface.iface_id)?);
        self.put(&path, iface).await
    }

    /// `PUT /vsock` (pre-boot).
    pub async fn put_vsock(&self, vsock: &Vsock) -> Result<(), ApiError> {
        self.put("/vsock", vsock).await
    }

    /// `PUT /logger` (pre-boot; see [`Logger`] for the offset-0 quirk).
    pub async fn put_logger(&self, logger: &Logger) -> Result<(), ApiError> {
        self.put("/logger", logger).await
    }

    /// `PUT /metrics` (pre-boot, once).
    pub async fn put_metrics(&self, metrics: &Metrics) -> Result<(), ApiError> {
        self.put("/metrics", metrics).await
    }

    /// `PUT /actions`.
    pub async fn action(&self, action: Action) -> Result<(), ApiError> {
        self.put(
            "/actions",
            &ActionBody {
                action_type: action,
            },
        )
        .await
    }

    /// `PATCH /vm` to Paused.
    pub async fn pause(&self) -> Result<(), ApiError> {
        self.patch("/vm", &VmStateBody { state: "Paused" }).await
    }

    /// `PATCH /vm` to Resumed.
    pub async fn resume(&self) -> Result<(), ApiError> {
        self.patch("/vm", &VmStateBody { state: "Resumed" }).await
    }

    /// `PUT /snapshot/create` (paused VM; deadline at least [`SNAPSHOT_TIMEOUT`]).
    pub async fn snapshot_create(&self, params: &SnapshotCreate) -> Result<(), ApiError> {
        let body = encode(params)?;
        self.request(
            Method::PUT,
            "/snapshot/create",
            Some(body),
            self.snapshot_timeout(),
        )
        .await
        .map(drop)
    }

    /// `PUT /snapshot/load` (fresh VMM; deadline at least [`SNAPSHOT_TIMEOUT`]).
    pub async fn snapshot_load(&self, params: &SnapshotLoad) -> Result<(), ApiError> {
        let body = encode(params)?;
        self.request(
            Method::PUT,
            "/snapshot/load",
            Some(body),
            self.snapshot_timeout(),
        )
        .await
        .map(drop)
    }

    /// `GET /`: id, state and version.
    pub async fn instance_info(&self) -> Result<InstanceInfo, ApiError> {
        self.get("/").await
    }

    /// `GET /vm/config`: the full effective configuration (boot-source,
    /// drives, machine-config, network-interfaces, vsock, logger, metrics...).
    pub async fn vm_config(&self) -> Result<serde_json::Value, ApiError> {
        self.get("/vm/config").await
    }

    fn snapshot_timeout(&self) -> Duration {
        self.timeout.max(SNAPSHOT_TIMEOUT)
    }

    async fn put<T: Serialize>(&self, path: &str, body: &T) -> Result<(), ApiError> {
        let body = encode(body)?;
        self.request(Method::PUT, path, Some(body), self.timeout)
            .await
            .map(drop)
    }

    async fn patch<T: Serialize>(&self, path: &str, body: &T) -> Result<(), ApiError> {
        let body = encode(body)?;
        self.request(Method::PATCH, path, Some(body), self.timeout)
            .await
            .map(drop)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let body = self.request(Method::GET, path, None, self.timeout).await?;
        serde_json::from_slice(&body).map_err(|e| ApiError::Decode {
            what: format!("GET {path}"),
            message: format!("{e}; body: {}", snippet(&body)),
        })
    }

    /// One request on a fresh connection, under `timeout`. Returns the body
    /// of a 2xx reply; anything else is a [`ApiError::Fault`].
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Bytes, ApiError> {
        let what = format!("{method} {path}");
        let exchange = self.exchange(method.clone(), path, body);
        let (status, reply) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ApiError::Timeout { what })??;
        if status.is_success() {
            return Ok(reply);
        }
        let fault_message = match serde_json::from_slice::<FaultBody>(&reply) {
            Ok(f) => f.fault_message,
            Err(_) => snippet(&reply),
        };
        Err(ApiError::Fault {
            method: method.to_string(),
            path: path.to_owned(),
            status: status.as_u16(),
            fault_message,
        })
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ApiError> {
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ApiError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ApiError::Http(e.to_string()))?;
        // The connection is driven by its own task, ended when we return.
        let driver = AbortOnDrop(tokio::spawn(async move {
            let _ = conn.await;
        }));

        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "localhost")
            .header(header::ACCEPT, "application/json");
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ApiError::Http(format!("bad request for {path}: {e}")))?;
        let reply = sender
            .send_request(req)
            .await
            .map_err(|e| ApiError::Http(e.to_string()))?;
        let status = reply.status();
        let bytes = reply
            .into_body()
            .collect()
            .await
            .map_err(|e| ApiError::Http(e.to_string()))?
            .to_bytes();
        drop(driver);
        Ok((status, bytes))
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An id used as a path segment. Firecracker accepts only alphanumerics and
/// '_' (`checked_id`); anything else is refused here, before it could change
/// the request's path.
fn path_segment(id: &str) -> Result<&str, ApiError> {
    if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        Ok(id)
    } else {
        Err(ApiError::Http(format!(
            "refusing to send the invalid id {id:?} (letters, digits, '_')"
        )))
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ApiError> {
    // Serialising these plain structs cannot fail (non-UTF-8 paths aside).
    serde_json::to_vec(value).map_err(|e| ApiError::Decode {
        what: "the request body".into(),
        message: e.to_string(),
    })
}

/// A body for an error message: UTF-8 (lossy), trimmed, at most 500 chars.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    match text.char_indices().nth(500) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    use super::*;

    #[test]
    fn bodies_match_the_swagger_and_omit_none() {
        let v = |x: &dyn erased::Ser| x.json();
        assert_eq!(
            v(&MachineConfig {
                vcpu_count: 2,
                mem_size_mib: 512,
                smt: None,
                track_dirty_pages: Some(true)
            }),
            json!({"vcpu_count": 2, "mem_size_mib": 512, "track_dirty_pages": true})
        );
        assert_eq!(
            v(&Drive {
                drive_id: "rootfs".into(),
                path_on_host: "/r.ext4".into(),
                is_root_device: true,
                is_read_only: false,
                cache_type: Some(CacheType::Writeback),
                io_engine: None,
            }),
            json!({"drive_id": "rootfs", "path_on_host": "/r.ext4", "is_root_device": true,
                   "is_read_only": false, "cache_type": "Writeback"})
        );
        assert_eq!(
            v(&ActionBody {
                action_type: Action::InstanceStart
            }),
            json!({"action_type": "InstanceStart"})
        );
        assert_eq!(
            v(&SnapshotLoad {
                snapshot_path: "/s".into(),
                mem_backend: MemBackend::file("/m"),
                resume_vm: true,
                enable_diff_snapshots: None,
            }),
            json!({"snapshot_path": "/s", "mem_backend": {"backend_type": "File", "backend_path": "/m"},
                   "resume_vm": true})
        );
        assert_eq!(
            v(&Logger {
                level: Some(LogLevel::Warning),
                ..Logger::default()
            }),
            json!({"level": "Warning"})
        );
        assert_eq!(
            v(&SnapshotCreate {
                snapshot_type: SnapshotType::Diff,
                snapshot_path: "/s".into(),
                mem_file_path: "/m".into(),
            }),
            json!({"snapshot_type": "Diff", "snapshot_path": "/s", "mem_file_path": "/m"})
        );
    }

    /// Type-erased serialisation for the table above.
    mod erased {
        pub trait Ser {
            fn json(&self) -> serde_json::Value;
        }
        impl<T: serde::Serialize> Ser for T {
            fn json(&self) -> serde_json::Value {
                serde_json::to_value(self).unwrap()
            }
        }
    }

    /// A one-shot fake API server: reads one request, answers `reply`, and
    /// hands the request text back.
    fn fake_server(socket: &Path, reply: &'static str) -> tokio::task::JoinHandle<String> {
        let listener = UnixListener::bind(socket).unwrap();
        tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = Vec::new();
            // Headers end with an empty line; our bodies are tiny and follow
            // in the same reads.
            loop {
                let n = conn.read(&mut buf).await.unwrap();
                got.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&got).into_owned();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse::<usize>().unwrap())
                        })
                        .unwrap_or(0);
                    if got.len() >= end + 4 + len || n == 0 {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            conn.write_all(reply.as_bytes()).await.unwrap();
            conn.shutdown().await.unwrap();
            String::from_utf8_lossy(&got).into_owned()
        })
    }

    #[tokio::test]
    async fn fault_body_becomes_the_error_message() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let server = fake_server(
            &sock,
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 34\r\n\r\n{\"fault_message\": \"vcpu is wrong\"}",
        );
        let client = ApiClient::new(&sock);
        let err = client
            .put_machine_config(&MachineConfig {
                vcpu_count: 0,
                mem_size_mib: 128,
                smt: None,
                track_dirty_pages: None,
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "firecracker refused PUT /machine-config (400): vcpu is wrong"
        );
        let request = server.await.unwrap();
        assert!(
            request.starts_with("PUT /machine-config HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(
            request.ends_with(r#"{"vcpu_count":0,"mem_size_mib":128}"#),
            "{request}"
        );
    }

    #[tokio::test]
    async fn get_decodes_and_reports_bad_bodies() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let body =
            r#"{"id":"vm-1","state":"Running","vmm_version":"1.12.1","app_name":"Firecracker"}"#;
        let reply: &'static str = Box::leak(
            format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_boxed_str(),
        );
        let server = fake_server(&sock, reply);
        let info = ApiClient::new(&sock).instance_info().await.unwrap();
        assert_eq!(info.state, STATE_RUNNING);
        assert_eq!(info.id, "vm-1");
        assert!(server.await.unwrap().starts_with("GET / HTTP/1.1\r\n"));

        std::fs::remove_file(&sock).unwrap();
        let server = fake_server(&sock, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]");
        let err = ApiClient::new(&sock).instance_info().await.unwrap_err();
        assert!(matches!(err, ApiError::Decode { .. }), "{err}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn ids_cannot_escape_their_path_segment() {
        let client = ApiClient::new("/nonexistent/api.sock");
        let drive = Drive {
            drive_id: "../actions".into(),
            path_on_host: "/x".into(),
            is_root_device: false,
            is_read_only: true,
            cache_type: None,
            io_engine: None,
        };
        let err = client.put_drive(&drive).await.unwrap_err();
        assert!(matches!(err, ApiError::Http(_)), "{err}");
    }

    #[tokio::test]
    async fn silence_times_out_and_absence_is_connect() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let err = ApiClient::new(&sock).instance_info().await.unwrap_err();
        assert!(matches!(err, ApiError::Connect { .. }), "{err}");

        let _listener = UnixListener::bind(&sock).unwrap(); // never accepts
        let t = std::time::Instant::now();
        let err = ApiClient::new(&sock)
            .with_timeout(Duration::from_millis(200))
            .pause()
            .await
            .unwrap_err();
        assert!(matches!(err, ApiError::Timeout { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            "firecracker did not answer PATCH /vm in time"
        );
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
