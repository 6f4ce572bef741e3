//! The Unix socket: one daemon per home (flock on a lock file), safe
//! replacement of a crashed daemon's socket, peer credentials at accept, and
//! a connection task per client.

pub mod conn;
pub mod framing;
pub mod limits;

use std::fs::File;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use banger_core::paths::Paths;
use rustix::fs::{flock, FlockOperation};
use tokio::net::UnixListener;
use tokio_util::task::TaskTracker;

use crate::app::App;
use crate::caller::Caller;
use crate::rpc::dispatch::Table;

/// Takes the home's lock; fails if another daemon holds it. Holding it is what
/// makes an existing socket file provably stale.
pub fn acquire_lock(paths: &Paths) -> anyhow::Result<File> {
    let path = paths.lock_file();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o644)
        .open(&path)
        .with_context(|| format!("cannot open lock file {}", path.display()))?;
    if flock(&f, FlockOperation::NonBlockingLockExclusive).is_err() {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        bail!(
            "another bangerd (pid {}) is already serving {}",
            holder.trim(),
            paths.runtime_dir.display()
        );
    }
    use std::io::{Seek, Write};
    f.set_len(0)?;
    f.seek(std::io::SeekFrom::Start(0))?;
    writeln!(f, "{}", std::process::id())?;
    Ok(f)
}

/// Binds the socket (mode 0660, group `gid` when given). Call only while
/// holding the lock: any socket file present then belongs to a dead daemon.
pub fn bind(paths: &Paths, gid: Option<u32>) -> anyhow::Result<UnixListener> {
    let path = paths.socket();
    match std::fs::remove_file(&path) {
        Ok(()) => tracing::info!(path = %path.display(), "removed stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context(format!("cannot remove stale socket {}", path.display())),
    }
    // Created owner-only, then opened up: no moment where it is world-usable.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let listener = UnixListener::bind(&path);
    rustix::process::umask(old);
    let listener = listener.with_context(|| format!("cannot bind {}", path.display()))?;
    if let Some(gid) = gid {
        std::os::unix::fs::chown(&path, None, Some(gid))
            .with_context(|| format!("cannot give {} to gid {gid}", path.display()))?;
    }
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660))?;
    Ok(listener)
}

/// Accepts until shutdown, then waits for open connections to finish their
/// current request.
pub async fn serve(d: Arc<App>, table: Arc<Table>, listener: UnixListener) {
    let conns = TaskTracker::new();
    let counts =
        limits::Connections::new(limits::MAX_CONNECTIONS_PER_USER, limits::MAX_CONNECTIONS);
    loop {
        tokio::select! {
            _ = d.shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let caller = match rustix::net::sockopt::get_socket_peercred(&stream) {
                        Ok(c) => Caller {
                            uid: c.uid.as_raw(),
                            gid: c.gid.as_raw(),
                            pid: c.pid.as_raw_nonzero().get() as u32,
                        },
                        Err(e) => {
                            tracing::warn!(error = %e, "no peer credentials; dropping connection");
                            continue;
                        }
                    };
                    match counts.admit(caller.uid) {
                        Ok(slot) => {
                            let (d, table) = (d.clone(), table.clone());
                            conns.spawn(async move {
                                conn::serve(d, table, stream, caller).await;
                                drop(slot);
                            });
                        }
                        Err(why) => {
                            tracing::warn!(uid = caller.uid, %why, "connection refused");
                            conns.spawn(conn::refuse(stream, why));
                        }
                    }
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
    drop(listener);
    conns.close();
    conns.wait().await;
}

/// Removes the socket file at shutdown (only ours: we hold the lock).
pub fn remove_socket(path: &Path) {
    let _ = std::fs::remove_file(path);
}
