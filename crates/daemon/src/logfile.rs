//! Reading a log file in chunks for `daemon logs` and `vm logs` (with
//! `-f`, the client keeps asking from the offset it got).

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::caller::Caller;
use crate::error::Error;
use crate::logging::LogTarget;
use banger_proto::methods::daemon::{LogChunk, LogsParams};

/// Most bytes one call returns.
const CHUNK: u64 = 256 * 1024;
const DEFAULT_TAIL: u64 = 16 * 1024;

/// `daemon.logs`: a chunk of the daemon's log at `path`, which names every
/// user's VMs, images and operations, so only root (or the user a per-user
/// daemon runs as) may read it. Logging to journald (or stderr), there is
/// nothing to read here: the client reads the journal itself.
pub fn daemon_log(
    path: &Path,
    target: &LogTarget,
    caller: &Caller,
    p: &LogsParams,
) -> Result<LogChunk, Error> {
    if !caller.is_admin() {
        return Err(Error::denied(
            "the daemon log covers every user's VMs; only root can read it \
             (try: sudo banger daemon logs)",
        ));
    }
    if !matches!(target, LogTarget::File(_)) {
        // journald (or stderr): the client reads the journal itself.
        return Ok(LogChunk {
            path: path.display().to_string(),
            journald: *target == LogTarget::Journald,
            offset: 0,
            next_offset: 0,
            data: String::new(),
        });
    }
    read_chunk(path, p.offset, p.tail_bytes)
}

/// From `offset` (or the last `tail` bytes, starting at a line boundary).
/// An offset past the end means the file was cut back: start over at 0.
pub fn read_chunk(path: &Path, offset: Option<u64>, tail: Option<u64>) -> Result<LogChunk, Error> {
    let chunk = |offset, next_offset, data| LogChunk {
        path: path.display().to_string(),
        journald: false,
        offset,
        next_offset,
        data,
    };
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(chunk(0, 0, String::new()))
        }
        Err(e) => {
            return Err(Error::internal(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    let io = |e: std::io::Error| Error::internal(format!("cannot read {}: {e}", path.display()));
    let len = f.metadata().map_err(io)?.len();
    let mut start = match offset {
        Some(o) if o > len => 0,
        Some(o) => o,
        None => len.saturating_sub(tail.unwrap_or(DEFAULT_TAIL)),
    };
    f.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut buf = Vec::new();
    f.take((len - start).min(CHUNK))
        .read_to_end(&mut buf)
        .map_err(io)?;
    if offset.is_none() && start > 0 {
        if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            buf.drain(..=nl);
            start += nl as u64 + 1;
        }
    }
    let next = start + buf.len() as u64;
    Ok(chunk(
        start,
        next,
        String::from_utf8_lossy(&buf).into_owned(),
    ))
}
