//! `[[file_sync]]` and the git identity into a guest: `banger vm sync
//! NAME`, and after `vm create` / `vm run` once the guest answers SSH.
//!
//! The CLI reads each host file itself, with the user's rights (a file the
//! user cannot read is refused here, before any VM is contacted; the root
//! daemon never opens a path for this), and streams it over SSH into the
//! guest: written beside its destination, given its mode, renamed into
//! place. Guest paths are under /root only (checked in
//! [`banger_core::config::FileSync::guest_path`]). The user's `git config
//! user.name` / `user.email` (global, or as the workspace sees them for `vm
//! run PATH`) go into the guest's global git config.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context;
use banger_core::config::{Config, FileSync};
use banger_core::proc::Cmd;
use banger_proto::ErrorKind;
use serde::Serialize;

use super::ssh::shell_quote as q;
use super::Env;
use crate::error::refuse;
use crate::render::{Outcome, Render};

/// A host file opened and ready to send.
struct Opened {
    host: PathBuf,
    guest: String,
    mode: u32,
    file: File,
}

/// What to send: the files (opened) and the identity.
pub(crate) struct Plan {
    files: Vec<Opened>,
    identity: Vec<(&'static str, String)>,
}

impl Plan {
    pub(crate) fn is_empty(&self) -> bool {
        self.files.is_empty() && self.identity.is_empty()
    }
}

/// Reads the config's `[[file_sync]]` entries and opens every host file
/// as the user; the first one that is wrong or unreadable is the error.
/// `git_dir`: the workspace whose git identity goes in (none: the user's
/// global one).
pub(crate) fn plan(env: &Env, git_dir: Option<&Path>) -> anyhow::Result<Plan> {
    let mut entries = Config::load(&env.paths.config_file)?.file_sync;
    entries.extend(user_entries()?);
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let mut files = Vec::new();
    for e in &entries {
        let bad = |m: String| refuse(ErrorKind::InvalidParams, m);
        let host = e.host_path(home.as_deref()).map_err(bad)?;
        let guest = e.guest_path().map_err(bad)?;
        let mode = e.mode_bits().map_err(bad)?;
        let file = File::open(&host).map_err(|err| {
            let kind = if err.kind() == std::io::ErrorKind::PermissionDenied {
                ErrorKind::PermissionDenied
            } else {
                ErrorKind::NotFound
            };
            refuse(
                kind,
                format!(
                    "file_sync: cannot read {} as you (uid {}): {err}; file_sync copies only files you can read",
                    host.display(),
                    rustix::process::getuid().as_raw()
                ),
            )
        })?;
        let md = file.metadata()?;
        if !md.is_file() {
            return Err(refuse(
                ErrorKind::InvalidParams,
                format!(
                    "file_sync: {} is not a regular file (directories are not synced; use banger vm cp)",
                    host.display()
                ),
            ));
        }
        files.push(Opened {
            host,
            guest,
            mode: mode.unwrap_or(md.mode() & 0o7777),
            file,
        });
    }
    Ok(Plan {
        files,
        identity: git_identity(git_dir),
    })
}

/// The user's own `~/.config/banger/config.toml` (or under
/// `$XDG_CONFIG_HOME`): only `[[file_sync]]` entries, for users who cannot
/// edit the system config.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UserConfig {
    #[serde(default)]
    file_sync: Vec<FileSync>,
}

fn user_entries() -> anyhow::Result<Vec<FileSync>> {
    let Some(dir) = super::ssh::user_dir()
        .ok()
        .and_then(|d| d.parent().map(Path::to_path_buf))
    else {
        return Ok(Vec::new());
    };
    let path = dir.join("config.toml");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let c: UserConfig = toml::from_str(&text).map_err(|e| {
                refuse(
                    ErrorKind::InvalidParams,
                    format!(
                        "invalid {} (only [[file_sync]] entries go there): {e}",
                        path.display()
                    ),
                )
            })?;
            Ok(c.file_sync)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// `user.name` and `user.email` as the host's git sees them, when set: in
/// the workspace `dir` (its own config first), else the user's global ones.
fn git_identity(dir: Option<&Path>) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    for key in ["user.name", "user.email"] {
        let mut c = Cmd::new("git");
        match dir {
            Some(d) => c.arg("-C").arg(d).args(["config", "--get", key]),
            None => c.args(["config", "--global", "--get", key]),
        };
        if let Ok(done) = c.run() {
            let v = done.stdout_text().trim().to_string();
            if !v.is_empty() && !v.contains(['\n', '\0']) {
                out.push((key, v));
            }
        }
    }
    out
}

#[derive(Serialize)]
struct SyncedFile {
    host: String,
    guest: String,
    mode: String,
}

/// `vm sync`'s answer.
#[derive(Serialize)]
struct Synced {
    name: String,
    files: Vec<SyncedFile>,
    /// The git config keys set in the guest.
    git_identity: Vec<String>,
}

impl Render for Synced {
    fn text(&self) -> String {
        let mut s = String::new();
        for f in &self.files {
            s.push_str(&format!(
                "{} -> {}:{} ({})\n",
                f.host, self.name, f.guest, f.mode
            ));
        }
        if !self.git_identity.is_empty() {
            s.push_str(&format!(
                "git {} set in {}\n",
                self.git_identity.join(", "),
                self.name
            ));
        }
        if s.is_empty() {
            s.push_str("nothing to sync (no [[file_sync]] entries, no git identity)\n");
        }
        s
    }
}

/// Sends `plan` into the running VM `name`.
fn send(env: &Env, name: &str, plan: Plan) -> anyhow::Result<Synced> {
    let mut out = Synced {
        name: name.into(),
        files: Vec::new(),
        git_identity: Vec::new(),
    };
    for f in plan.files {
        let tmp = format!("{}.banger-sync", f.guest);
        let dir = Path::new(&f.guest)
            .parent()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "/root".into());
        let script = format!(
            "set -e; umask 077; mkdir -p -- {d}; cat > {t}; chmod {m:o} {t}; mv -f -- {t} {g}",
            d = q(&dir),
            t = q(&tmp),
            m = f.mode,
            g = q(&f.guest),
        );
        let mut ssh = super::ssh::ssh_to(env, name)?;
        ssh.arg("-T").arg("--").arg(script);
        ssh.stdin(Stdio::from(f.file));
        let st = ssh.status().context("cannot run ssh")?;
        if !st.success() {
            anyhow::bail!(
                "file_sync: copying {} to {name}:{} failed ({st})",
                f.host.display(),
                f.guest
            );
        }
        out.files.push(SyncedFile {
            host: f.host.display().to_string(),
            guest: f.guest,
            mode: format!("{:04o}", f.mode),
        });
    }
    if !plan.identity.is_empty() {
        let mut lines = vec!["command -v git >/dev/null || exit 0".to_string()];
        for (k, v) in &plan.identity {
            lines.push(format!("git config --global {k} {}", q(v)));
        }
        let mut ssh = super::ssh::ssh_to(env, name)?;
        ssh.arg("-T").arg("--").arg(lines.join("\n"));
        ssh.stdin(Stdio::null());
        let st = ssh.status().context("cannot run ssh")?;
        if !st.success() {
            anyhow::bail!("setting the git identity in {name} failed ({st})");
        }
        out.git_identity = plan.identity.iter().map(|(k, _)| k.to_string()).collect();
    }
    Ok(out)
}

/// `banger vm sync NAME`: the files are all opened (as the user) before the
/// VM is contacted.
pub fn vm_sync(env: &Env, name: &str) -> anyhow::Result<Outcome> {
    let plan = plan(env, None)?;
    Ok(Outcome::of(send(env, name, plan)?))
}

/// After a create whose guest answered SSH: the same sync; a failure is a
/// warning (the VM is made; `banger vm sync NAME` retries).
pub(crate) fn after_create(env: &Env, name: &str, git_dir: Option<&Path>) {
    let result = plan(env, git_dir).and_then(|p| {
        if p.is_empty() {
            return Ok(None);
        }
        send(env, name, p).map(Some)
    });
    match result {
        Ok(Some(s)) if !env.json => {
            for f in &s.files {
                eprintln!("file_sync: {} -> {name}:{}", f.host, f.guest);
            }
        }
        Ok(_) => {}
        Err(e) => eprintln!("warning: {e:#}; the VM is made: fix it and run banger vm sync {name}"),
    }
}
