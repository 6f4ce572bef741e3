//! Where banger keeps things.
//!
//! System layout (the daemon runs as root): `/etc/banger/config.toml`, state in
//! `/var/lib/banger`, cache in `/var/cache/banger`, runtime files in
//! `/run/banger`, the log in `/var/log/banger`. `BANGER_HOME=DIR` (or `--home`)
//! puts all of them under one directory: `DIR/config.toml`, `DIR/state`,
//! `DIR/cache`, `DIR/run`, `DIR/log`.

use std::path::{Path, PathBuf};

/// The environment variable that relocates everything.
pub const HOME_ENV: &str = "BANGER_HOME";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Paths {
    /// Set when everything lives under one directory.
    pub home: Option<PathBuf>,
    pub config_file: PathBuf,
    pub state_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub log_dir: PathBuf,
}

impl Paths {
    pub fn system() -> Paths {
        Paths {
            home: None,
            config_file: "/etc/banger/config.toml".into(),
            state_dir: "/var/lib/banger".into(),
            cache_dir: "/var/cache/banger".into(),
            runtime_dir: "/run/banger".into(),
            log_dir: "/var/log/banger".into(),
        }
    }

    pub fn under(home: &Path) -> Paths {
        Paths {
            home: Some(home.to_path_buf()),
            config_file: home.join("config.toml"),
            state_dir: home.join("state"),
            cache_dir: home.join("cache"),
            runtime_dir: home.join("run"),
            log_dir: home.join("log"),
        }
    }

    /// `explicit` (from `--home`) wins over `BANGER_HOME`, which wins over the
    /// system layout. Relative homes are made absolute so the daemon, started
    /// from another directory, agrees with the CLI.
    pub fn resolve(explicit: Option<&Path>) -> Paths {
        let home = explicit.map(Path::to_path_buf).or_else(|| {
            std::env::var_os(HOME_ENV)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        });
        match home {
            Some(h) => Paths::under(&absolute(&h)),
            None => Paths::system(),
        }
    }

    pub fn socket(&self) -> PathBuf {
        self.runtime_dir.join("bangerd.sock")
    }

    /// Held (flock) by the one daemon serving this home.
    pub fn lock_file(&self) -> PathBuf {
        self.runtime_dir.join("bangerd.lock")
    }

    pub fn db(&self) -> PathBuf {
        self.state_dir.join("state.db")
    }

    pub fn log_file(&self) -> PathBuf {
        self.log_dir.join("bangerd.log")
    }

    pub fn kernels_dir(&self) -> PathBuf {
        self.state_dir.join("kernels")
    }

    pub fn images_dir(&self) -> PathBuf {
        self.state_dir.join("images")
    }

    pub fn vms_dir(&self) -> PathBuf {
        self.state_dir.join("vms")
    }

    /// The OCI layer cache: `sha256/<hex>`, each a verified, complete blob
    /// (downloads are written under [`Paths::staging_dir`] and renamed in).
    pub fn layers_dir(&self) -> PathBuf {
        self.state_dir.join("layers")
    }

    /// Half-made files live here until they are renamed into place; the daemon
    /// empties it at start, so a crash never leaves staged files behind.
    pub fn staging_dir(&self) -> PathBuf {
        self.state_dir.join("tmp")
    }
}

fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_puts_everything_under_one_dir() {
        let p = Paths::under(Path::new("/x"));
        for d in [
            &p.config_file,
            &p.state_dir,
            &p.cache_dir,
            &p.runtime_dir,
            &p.log_dir,
        ] {
            assert!(d.starts_with("/x"), "{d:?}");
        }
        assert_eq!(p.socket(), Path::new("/x/run/bangerd.sock"));
        assert_eq!(p.db(), Path::new("/x/state/state.db"));
    }

    #[test]
    fn explicit_home_wins_and_is_absolute() {
        let p = Paths::resolve(Some(Path::new("rel")));
        assert!(p.state_dir.is_absolute());
        assert!(p.state_dir.ends_with("rel/state"));
    }
}
