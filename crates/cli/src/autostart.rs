//! Finding the daemon, and starting it when nothing answers and the caller
//! may: root, or anyone using their own `BANGER_HOME` (a user-level install).
//! Anyone else is told how to get a daemon running.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use banger_core::paths::Paths;
use banger_proto::methods::daemon::{Status, StatusInfo};
use banger_proto::methods::Empty;
use banger_proto::{ErrorKind, PROTOCOL_VERSION};

use crate::client::Client;
use crate::error::Kind;

/// Why no daemon could be reached; each has its kind and exit status.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nothing answers and this caller may not (or was not asked to) start it.
    #[error("bangerd is not running (no answer at {})", socket.display())]
    NotRunning { socket: PathBuf, may_start: bool },
    /// The socket is there but not ours to use.
    #[error("permission denied on {}", socket.display())]
    PermissionDenied { socket: PathBuf },
    /// The daemon speaks another protocol version.
    #[error(
        "this banger speaks protocol {PROTOCOL_VERSION} but bangerd {version} (pid {pid}) speaks {protocol}"
    )]
    Incompatible {
        version: String,
        pid: u32,
        protocol: u32,
    },
    /// A daemon this command started did not come up.
    #[error("{0}")]
    StartFailed(String),
}

impl ConnectError {
    pub fn kind(&self) -> Kind {
        match self {
            ConnectError::NotRunning { .. } | ConnectError::StartFailed(_) => {
                Kind::DaemonUnavailable
            }
            ConnectError::PermissionDenied { .. } => Kind::Rpc(ErrorKind::PermissionDenied),
            ConnectError::Incompatible { .. } => Kind::Rpc(ErrorKind::IncompatibleProtocol),
        }
    }

    pub fn hint(&self) -> Option<&'static str> {
        match self {
            ConnectError::NotRunning {
                may_start: false, ..
            } => Some(
                "start it with `sudo banger system install` (systemd), or run `sudo bangerd &`",
            ),
            ConnectError::NotRunning { .. } | ConnectError::StartFailed(_) => None,
            ConnectError::PermissionDenied { .. } => Some(
                "ask an admin to add you to the `banger` group \
                 (sudo usermod -aG banger $USER, then log in again)",
            ),
            ConnectError::Incompatible { .. } => {
                Some("restart the daemon so both are the same version (sudo banger daemon stop)")
            }
        }
    }
}

/// How long to wait for a daemon we started to answer.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// Connects, starting the daemon if allowed, and checks the protocol.
pub fn connect(paths: &Paths, autostart: bool) -> anyhow::Result<Client> {
    let socket = paths.socket();
    let mut client = match Client::connect_raw(&socket) {
        Ok(c) => c,
        Err(e) if is_absent(&e) => {
            if !autostart {
                return Err(ConnectError::NotRunning {
                    socket,
                    may_start: true,
                }
                .into());
            }
            if !may_start(paths) {
                return Err(ConnectError::NotRunning {
                    socket,
                    may_start: false,
                }
                .into());
            }
            start(paths)?
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(ConnectError::PermissionDenied { socket }.into())
        }
        Err(e) => return Err(e).context(format!("cannot connect to {}", socket.display())),
    };
    check_protocol(&mut client)?;
    Ok(client)
}

pub fn check_protocol(client: &mut Client) -> anyhow::Result<StatusInfo> {
    let st = client.call::<Status>(&Empty {})?;
    if st.protocol != PROTOCOL_VERSION {
        return Err(ConnectError::Incompatible {
            version: st.version,
            pid: st.pid,
            protocol: st.protocol,
        }
        .into());
    }
    Ok(st)
}

fn is_absent(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
    )
}

/// Root may start the system daemon; a user may start one for their own home.
fn may_start(paths: &Paths) -> bool {
    if rustix::process::geteuid().is_root() {
        return true;
    }
    match &paths.home {
        Some(home) => {
            let probe = if home.exists() {
                home.clone()
            } else {
                parent_or_self(home)
            };
            rustix::fs::access(&probe, rustix::fs::Access::WRITE_OK).is_ok()
        }
        None => false,
    }
}

fn parent_or_self(p: &Path) -> PathBuf {
    p.parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| p.to_path_buf())
}

/// The `bangerd` to start: next to this `banger`, else on PATH.
pub fn daemon_binary() -> anyhow::Result<PathBuf> {
    if let Ok(exe) = std::env::current_exe() {
        let sibling = exe.with_file_name("bangerd");
        if sibling.is_file() {
            return Ok(sibling);
        }
    }
    banger_core::tools::find_in_path("bangerd")
        .ok_or_else(|| anyhow!("cannot find bangerd next to banger or on PATH"))
}

fn start(paths: &Paths) -> anyhow::Result<Client> {
    let bin = daemon_binary()?;
    std::fs::create_dir_all(&paths.runtime_dir)
        .with_context(|| format!("cannot create {}", paths.runtime_dir.display()))?;
    // Early failures (before the daemon's log is open) land here.
    let errfile = paths.runtime_dir.join("bangerd.start.log");
    let err = std::fs::File::create(&errfile)
        .with_context(|| format!("cannot create {}", errfile.display()))?;
    let mut cmd = Command::new(&bin);
    if let Some(home) = &paths.home {
        cmd.arg("--home").arg(home);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err);
    // Its own session: the daemon outlives this terminal and its Ctrl-C.
    unsafe {
        cmd.pre_exec(|| {
            rustix::process::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    eprintln!("banger: started bangerd (pid {})", child.id());
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if let Ok(c) = Client::connect_raw(&paths.socket()) {
            // Reap it later from nowhere: it is a daemon now; dropping `child`
            // does not kill it. Its zombie, if it exits while we run, is brief.
            return Ok(c);
        }
        if let Some(status) = child.try_wait()? {
            let msg = std::fs::read_to_string(&errfile).unwrap_or_default();
            return Err(ConnectError::StartFailed(format!(
                "bangerd exited during start-up ({status}):\n{}",
                msg.trim()
            ))
            .into());
        }
        if Instant::now() > deadline {
            return Err(ConnectError::StartFailed(format!(
                "bangerd did not answer within {}s; see {} and {}",
                START_TIMEOUT.as_secs(),
                errfile.display(),
                paths.log_file().display()
            ))
            .into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
