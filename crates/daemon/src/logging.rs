//! `tracing` output: a size-capped, rotated log file by default; stderr (which
//! systemd hands to journald) when running under systemd or when asked.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use banger_core::config::Config;
use banger_core::paths::Paths;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    File(PathBuf),
    Journald,
    Stderr,
}

impl LogTarget {
    pub fn label(&self) -> &'static str {
        match self {
            LogTarget::File(_) => "file",
            LogTarget::Journald => "journald",
            LogTarget::Stderr => "stderr",
        }
    }
}

/// Installs the global subscriber. `level` is an EnvFilter directive
/// (`RUST_LOG` wins when set).
pub fn init(paths: &Paths, config: &Config, stderr: bool, level: &str) -> io::Result<LogTarget> {
    // hickory logs every answered query at info; banger logs what matters itself.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!("{level},hickory_server=warn,hickory_proto=warn"))
    });
    let under_systemd = std::env::var_os("JOURNAL_STREAM").is_some();
    let target = match (stderr, config.daemon.log_target.as_str(), under_systemd) {
        (true, _, _) => LogTarget::Stderr,
        (_, "journald", _) | (_, "auto", true) => LogTarget::Journald,
        _ => LogTarget::File(paths.log_file()),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let result = match &target {
        LogTarget::File(path) => {
            let w = RotatingFile::open(path, config.daemon.log_max_bytes, config.daemon.log_keep)?;
            builder.with_writer(w).try_init()
        }
        // journald stamps lines itself.
        LogTarget::Journald => builder.without_time().with_writer(io::stderr).try_init(),
        LogTarget::Stderr => builder.with_writer(io::stderr).try_init(),
    };
    // Already initialised (tests run several daemons in one process): keep it.
    let _ = result;
    Ok(target)
}

/// An append-only file that is renamed to `.1` (shifting older ones up to
/// `keep`) when it passes `max_bytes`.
#[derive(Clone)]
pub struct RotatingFile {
    inner: Arc<Mutex<Inner>>,
}

struct Inner {
    path: PathBuf,
    file: File,
    size: u64,
    max_bytes: u64,
    keep: u32,
}

impl RotatingFile {
    pub fn open(path: &Path, max_bytes: u64, keep: u32) -> io::Result<RotatingFile> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(RotatingFile {
            inner: Arc::new(Mutex::new(Inner {
                path: path.to_path_buf(),
                file,
                size,
                max_bytes: max_bytes.max(4096),
                keep,
            })),
        })
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

impl Inner {
    fn rotate(&mut self) -> io::Result<()> {
        for i in (1..self.keep).rev() {
            let from = rotated(&self.path, i);
            if from.exists() {
                std::fs::rename(&from, rotated(&self.path, i + 1))?;
            }
        }
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            std::fs::rename(&self.path, rotated(&self.path, 1))?;
        }
        self.file = open_append(&self.path)?;
        self.size = 0;
        Ok(())
    }
}

fn rotated(path: &Path, i: u32) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(format!(".{i}"));
    PathBuf::from(s)
}

impl Write for RotatingFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.size + buf.len() as u64 > g.max_bytes && g.size > 0 {
            // A failed rotation must not stop logging: keep appending.
            let _ = g.rotate();
        }
        g.file.write_all(buf)?;
        g.size += buf.len() as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for RotatingFile {
    type Writer = RotatingFile;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_and_keeps_n() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.log");
        let mut w = RotatingFile::open(&path, 4096, 2).unwrap();
        let line = [b'x'; 1000];
        for _ in 0..20 {
            w.write_all(&line).unwrap();
        }
        assert!(std::fs::metadata(&path).unwrap().len() <= 4096);
        assert!(rotated(&path, 1).exists());
        assert!(rotated(&path, 2).exists());
        assert!(!rotated(&path, 3).exists());
    }
}
