//! Spawning one Firecracker per VM and waiting for its API socket.
//!
//! What Firecracker v1.12 does with the files it is given (read in its
//! source: `vmm/src/logger/logging.rs`, `vmm/src/vmm_config/mod.rs`
//! `open_file_nonblock`, `firecracker/src/main.rs`, `api_server_adapter.rs`):
//!
//! - `--log-path` and `--metrics-path` are opened `O_RDWR | O_NONBLOCK`,
//!   without `O_CREAT`, `O_TRUNC` or `O_APPEND`: the file must exist (else
//!   Firecracker exits at once), and writing starts at offset 0 over whatever
//!   the file held, without truncating it. So [`command`] moves a non-empty
//!   earlier file to `<name>.1` and creates an empty one.
//! - Until `--log-path` is applied (argument parsing, instance id check) log
//!   lines go to stdout, i.e. the console log. On a failed exit `main` logs
//!   the error and also prints `Error: {err:?}` to stderr.
//! - The guest's serial port (ttyS0) is written to stdout (made
//!   `O_NONBLOCK`); v1.12 has no other serial destination. [`command`] opens
//!   the console log `O_APPEND`, so each boot follows the previous one.
//! - The API socket is bound at start; an existing path makes Firecracker
//!   exit ("Failed to bind socket"), and Firecracker does not remove the
//!   socket when it exits. [`command`] removes a stale one.
//!
//! stderr is appended to the VMM log as well (a crash before the logger is
//! up is still recorded). The logger writes at its own offset, so a stderr
//! line written while the logger is active can be overwritten by the next log
//! line; in v1.12 the only such line is the `Error:` one at a failed exit,
//! which repeats the error the logger has just written.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::net::UnixStream;

use crate::vmm::launch_files::{
    annotate, open_append, remove_stale_socket, tail_lines, LOG_MODE, TAIL_LINES,
};
use crate::vmm::process::{self, ExitInfo, Spawned};

/// How long Firecracker normally needs to bring its API socket up (a few
/// ms); callers may pass more.
pub const API_READY_TIMEOUT: Duration = Duration::from_secs(5);

/// The files of one Firecracker process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchPaths {
    /// The API socket (removed first if stale).
    pub api_socket: PathBuf,
    /// The guest's serial output (Firecracker's stdout), appended to.
    pub console_log: PathBuf,
    /// Firecracker's own log (`--log-path`, and its stderr).
    pub vmm_log: PathBuf,
    /// JSON metric lines (`--metrics-path`): one per 60 s and per
    /// FlushMetrics.
    pub metrics: PathBuf,
}

/// Why a Firecracker could not be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// A file of the launch could not be prepared (or the id is invalid).
    #[error("cannot prepare the firecracker launch: {0}")]
    Prepare(#[source] io::Error),
    /// The firecracker binary could not be started.
    #[error("cannot start {}: {source}", bin.display())]
    Spawn {
        bin: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Firecracker exited before its API socket accepted a connection;
    /// `log_tail` quotes its last log lines.
    #[error("firecracker {exit} before its API socket {} came up{log_tail}", socket.display())]
    Exited {
        socket: PathBuf,
        exit: ExitInfo,
        log_tail: String,
    },
    /// Firecracker still runs, but its API socket did not accept a
    /// connection in time.
    #[error(
        "firecracker's API socket {} did not come up within {} ms ({last_error}){log_tail}",
        socket.display(),
        waited.as_millis()
    )]
    Timeout {
        socket: PathBuf,
        waited: Duration,
        last_error: String,
        log_tail: String,
    },
}

/// Builds the command that runs `bin` for the VM `id`, and prepares its
/// files: removes a stale API socket, rotates a non-empty VMM log or metrics
/// file to `<name>.1` and creates an empty one, opens the console log for
/// appending. Seccomp stays on (never `--no-seccomp`).
///
/// The caller must make sure no live Firecracker uses `paths` any more: its
/// socket would be unlinked from under it.
pub fn command(bin: &Path, id: &str, paths: &LaunchPaths) -> io::Result<Command> {
    validate_id(id)?;
    remove_stale_socket(&paths.api_socket)?;
    fresh_file(&paths.vmm_log)?;
    fresh_file(&paths.metrics)?;
    let console = open_append(&paths.console_log)?;
    let stderr = open_append(&paths.vmm_log)?;

    let mut cmd = Command::new(bin);
    cmd.arg("--api-sock")
        .arg(&paths.api_socket)
        .arg("--id")
        .arg(id)
        .arg("--log-path")
        .arg(&paths.vmm_log)
        .arg("--level")
        .arg("Info")
        .arg("--show-level")
        .arg("--show-log-origin")
        .arg("--metrics-path")
        .arg(&paths.metrics)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(console)
        .stderr(stderr);
    Ok(cmd)
}

/// [`command`] + [`process::spawn`].
pub fn launch(bin: &Path, id: &str, paths: &LaunchPaths) -> Result<Spawned, LaunchError> {
    let cmd = command(bin, id, paths).map_err(LaunchError::Prepare)?;
    process::spawn(cmd).map_err(|source| LaunchError::Spawn {
        bin: bin.to_path_buf(),
        source,
    })
}

/// Waits until the API socket accepts a connection (polling every 1 ms,
/// growing to 10 ms). Fails at once if the process exits first, quoting the
/// tail of its logs; the exit is observed without reaping, so the caller's
/// [`process::wait_exit`] still gets the status. On error the process is
/// left as it is: the caller kills (if needed) and reaps it.
pub async fn wait_api_ready(
    paths: &LaunchPaths,
    pidfd: &OwnedFd,
    timeout: Duration,
) -> Result<(), LaunchError> {
    let socket = &paths.api_socket;
    let start = Instant::now();
    let mut step = Duration::from_millis(1);
    let exit_seen = process::wait_readable(pidfd.as_fd());
    tokio::pin!(exit_seen);
    let mut exit_signalled = false;
    loop {
        let last_error = match UnixStream::connect(socket).await {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if let Some(exit) = process::exited(pidfd) {
            return Err(LaunchError::Exited {
                socket: socket.clone(),
                exit,
                log_tail: log_tails(paths),
            });
        }
        let waited = start.elapsed();
        if waited >= timeout {
            return Err(LaunchError::Timeout {
                socket: socket.clone(),
                waited,
                last_error: last_error.to_string(),
                log_tail: log_tails(paths),
            });
        }
        tokio::select! {
            _ = &mut exit_seen, if !exit_signalled => exit_signalled = true,
            _ = tokio::time::sleep(step.min(timeout - waited)) => {}
        }
        step = (step * 2).min(Duration::from_millis(10));
    }
}

/// Firecracker accepts ids of 1 to 64 alphanumerics and '-'; anything else
/// makes it panic at start.
fn validate_id(id: &str) -> io::Result<()> {
    let ok =
        (1..=64).contains(&id.len()) && id.bytes().all(|b| b == b'-' || b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid firecracker id {id:?} (1-64 ASCII letters, digits or '-')"),
        ))
    }
}

/// Leaves an empty regular file at `path` (Firecracker writes it from offset
/// 0): a non-empty earlier one becomes `<name>.1`, replacing an older `.1`.
/// A FIFO is left alone.
fn fresh_file(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() && meta.len() > 0 => {
            let mut rotated = path.as_os_str().to_owned();
            rotated.push(".1");
            std::fs::rename(path, &rotated)
                .map_err(|e| annotate(e, format!("cannot rotate {}", path.display())))?;
        }
        Ok(meta) if meta.file_type().is_file() || meta.file_type().is_fifo() => return Ok(()),
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is neither a file nor a FIFO", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(annotate(e, format!("cannot inspect {}", path.display()))),
    }
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(LOG_MODE)
        .open(path)
        .map(drop)
        .map_err(|e| annotate(e, format!("cannot create {}", path.display())))
}

/// The last lines of the VMM log and of the console log (where Firecracker
/// logs before its logger is configured), each under a heading; empty when
/// both are empty.
fn log_tails(paths: &LaunchPaths) -> String {
    let mut out = String::new();
    for path in [&paths.vmm_log, &paths.console_log] {
        let tail = tail_lines(path, TAIL_LINES);
        if !tail.is_empty() {
            out.push_str(&format!(
                "\n--- last lines of {} ---\n{tail}",
                path.display()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths_in(dir: &Path) -> LaunchPaths {
        LaunchPaths {
            api_socket: dir.join("api.sock"),
            console_log: dir.join("console.log"),
            vmm_log: dir.join("firecracker.log"),
            metrics: dir.join("metrics.json"),
        }
    }

    #[test]
    fn command_prepares_files_and_passes_flags() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths_in(dir.path());
        std::fs::write(&p.vmm_log, "old boot\n").unwrap();
        std::fs::write(&p.console_log, "old console\n").unwrap();
        let _stale = std::os::unix::net::UnixListener::bind(&p.api_socket).unwrap();

        let cmd = command(Path::new("/usr/local/bin/firecracker"), "vm-1", &p).unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(!args.iter().any(|a| a == "--no-seccomp"));
        for flag in [
            "--api-sock",
            "--id",
            "--log-path",
            "--level",
            "--show-level",
            "--metrics-path",
        ] {
            assert!(
                args.iter().any(|a| a == flag),
                "{flag} missing from {args:?}"
            );
        }
        assert!(!p.api_socket.exists(), "stale socket removed");
        assert_eq!(std::fs::read_to_string(&p.vmm_log).unwrap(), "");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("firecracker.log.1")).unwrap(),
            "old boot\n"
        );
        assert!(p.metrics.exists());
        assert_eq!(
            std::fs::read_to_string(&p.console_log).unwrap(),
            "old console\n"
        );
        let mode = std::fs::metadata(&p.metrics).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            LOG_MODE
        );
    }

    #[test]
    fn command_refuses_bad_ids_and_non_socket_paths() {
        let dir = tempfile::tempdir().unwrap();
        let p = paths_in(dir.path());
        let bin = Path::new("/usr/local/bin/firecracker");
        for id in ["", "a b", "a_b", &"x".repeat(65)] {
            assert!(command(bin, id, &p).is_err(), "{id:?}");
        }
        std::fs::write(&p.api_socket, "not a socket").unwrap();
        let err = command(bin, "ok", &p).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
    }

    #[test]
    fn tail_takes_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("log");
        let text: String = (1..=30).map(|i| format!("line {i}\n")).collect();
        std::fs::write(&f, text).unwrap();
        let tail = tail_lines(&f, 3);
        assert_eq!(tail, "line 28\nline 29\nline 30");
        assert_eq!(tail_lines(&dir.path().join("absent"), 3), "");
    }
}
