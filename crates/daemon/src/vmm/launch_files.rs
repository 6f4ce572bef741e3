//! File chores both VMM launchers share: a stale control socket removed (both
//! refuse to bind over an existing one), logs rotated and opened for append,
//! and the tail of a log quoted in an error when a VMM dies at launch.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// Mode of the logs a VMM writes (console, VMM log): the daemon's group may
/// read them, nobody else.
pub const LOG_MODE: u32 = 0o640;

/// How many lines of a log an error quotes.
pub const TAIL_LINES: usize = 20;

/// Removes a socket left by an earlier VMM; refuses anything that is not a
/// socket (never delete a file we did not make).
pub fn remove_stale_socket(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(|e| {
            annotate(
                e,
                format!("cannot remove the stale socket {}", path.display()),
            )
        }),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(annotate(e, format!("cannot inspect {}", path.display()))),
    }
}

/// Moves a non-empty regular file to `<name>.1` (replacing an older one);
/// leaves anything else where it is.
pub fn rotate(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_file() && meta.len() > 0 => {
            let mut rotated = path.as_os_str().to_owned();
            rotated.push(".1");
            std::fs::rename(path, &rotated)
                .map_err(|e| annotate(e, format!("cannot rotate {}", path.display())))
        }
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(annotate(e, format!("cannot inspect {}", path.display()))),
    }
}

/// Opens (creating with [`LOG_MODE`]) a log for appending.
pub fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(LOG_MODE)
        .open(path)
        .map_err(|e| annotate(e, format!("cannot open {}", path.display())))
}

/// The same error with what we were doing in front of it.
pub fn annotate(e: io::Error, context: String) -> io::Error {
    io::Error::new(e.kind(), format!("{context}: {e}"))
}

/// The last [`TAIL_LINES`] lines of a log under a heading; empty when the
/// log is empty or unreadable.
pub fn log_tail(path: &Path) -> String {
    let tail = tail_lines(path, TAIL_LINES);
    if tail.is_empty() {
        String::new()
    } else {
        format!("\n--- last lines of {} ---\n{tail}", path.display())
    }
}

/// The last `n` lines of a file (at most its last 16 KiB), lossily decoded;
/// empty when unreadable.
pub fn tail_lines(path: &Path, n: usize) -> String {
    const WINDOW: u64 = 16 * 1024;
    let read = || -> io::Result<Vec<u8>> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(WINDOW)))?;
        let mut buf = Vec::new();
        f.take(WINDOW).read_to_end(&mut buf)?;
        Ok(buf)
    };
    let Ok(buf) = read() else {
        return String::new();
    };
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotate_tail_and_stale_sockets() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("vmm.log");
        rotate(&log).unwrap(); // nothing there: fine
        std::fs::write(&log, "one\ntwo\nthree\n").unwrap();
        assert_eq!(tail_lines(&log, 2), "two\nthree");
        assert!(log_tail(&log).ends_with("---\none\ntwo\nthree"));
        rotate(&log).unwrap();
        assert!(!log.exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("vmm.log.1")).unwrap(),
            "one\ntwo\nthree\n"
        );
        assert_eq!(log_tail(&log), "");

        let sock = dir.path().join("api.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        remove_stale_socket(&sock).unwrap();
        assert!(!sock.exists());
        std::fs::write(&sock, "not a socket").unwrap();
        let e = remove_stale_socket(&sock).unwrap_err();
        assert!(e.to_string().contains("is not a socket"), "{e}");
        assert!(sock.exists(), "a file we did not make is left alone");
    }
}
