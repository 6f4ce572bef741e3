//! `banger system install|uninstall|status`: the systemd unit for bangerd.
//!
//! The unit uses `KillMode=process` so that stopping or restarting the daemon
//! never kills the Firecracker processes of running VMs (a restarted daemon
//! re-adopts them), and keeps `/run/banger` across restarts for the same
//! reason (VM sockets live there).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context};
use banger_proto::ErrorKind;
use clap::Subcommand;
use serde::Serialize;

use super::Env;
use crate::autostart;
use crate::error::{refuse, usage, Failure, Kind};
use crate::render::{Outcome, Render};

const UNIT: &str = "bangerd.service";
const SYSTEM_UNIT_DIR: &str = "/etc/systemd/system";

#[derive(Debug, Subcommand)]
pub enum SystemCmd {
    /// Write, enable and start the bangerd systemd unit; create the `banger` group.
    Install {
        /// The bangerd binary the unit runs (default: next to this banger).
        #[arg(long)]
        bin: Option<PathBuf>,
        /// Where to write the unit.
        #[arg(long, default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
        /// Write and enable the unit but do not start it.
        #[arg(long)]
        no_start: bool,
    },
    /// Stop and disable the service, remove the unit and banger's host
    /// network state (nftables table, TAPs, bridge, resolved routing).
    /// Refused while VMs run. State is kept.
    Uninstall {
        #[arg(long, default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
    },
    /// Show whether the unit is installed and the daemon answers.
    Status {
        #[arg(long, default_value = "/etc/systemd/system")]
        unit_dir: PathBuf,
    },
}

pub fn run(env: &Env, cmd: SystemCmd) -> anyhow::Result<Outcome> {
    match cmd {
        SystemCmd::Install {
            bin,
            unit_dir,
            no_start,
        } => install(env, bin, &unit_dir, no_start),
        SystemCmd::Uninstall { unit_dir } => uninstall(env, &unit_dir),
        SystemCmd::Status { unit_dir } => status(env, &unit_dir),
    }
}

/// The unit file text for `bin`.
pub fn unit_text(bin: &Path) -> String {
    format!(
        "# Written by `banger system install`; removed by `banger system uninstall`.\n\
         [Unit]\n\
         Description=banger daemon: development sandboxes on Firecracker microVMs\n\
         After=network.target\n\
         \n\
         [Service]\n\
         Type=notify\n\
         ExecStart={}\n\
         # VMs are child processes of bangerd; restarting the daemon must not kill them.\n\
         KillMode=process\n\
         Restart=on-failure\n\
         RestartSec=2\n\
         RuntimeDirectory=banger\n\
         RuntimeDirectoryPreserve=yes\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        bin.display()
    )
}

/// systemctl is used only for the real unit directory of a running systemd;
/// a unit written elsewhere (`--unit-dir`, for packaging or tests) is just a file.
fn manage_with_systemctl(unit_dir: &Path) -> bool {
    Path::new("/run/systemd/system").is_dir() && unit_dir == Path::new(SYSTEM_UNIT_DIR)
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new("systemctl")
        .args(args)
        .status()
        .context("cannot run systemctl")?;
    if !st.success() {
        bail!("systemctl {} failed ({st})", args.join(" "));
    }
    Ok(())
}

fn require_root() -> anyhow::Result<()> {
    if !rustix::process::geteuid().is_root() {
        return Err(refuse(
            ErrorKind::PermissionDenied,
            "this needs root: sudo banger system ...",
        ));
    }
    Ok(())
}

/// `system install`.
#[derive(Serialize)]
struct Installed {
    unit: PathBuf,
    bin: PathBuf,
    /// systemctl manages the unit (the real unit directory of a running systemd).
    managed: bool,
    started: bool,
    group_created: bool,
}

impl Render for Installed {
    fn text(&self) -> String {
        let mut s = format!("wrote {}\n", self.unit.display());
        if !self.managed {
            s.push_str(&format!(
                "not managed by systemctl here: start the daemon with `sudo {}`\n",
                self.bin.display()
            ));
        }
        if self.group_created {
            s.push_str("created group banger; add users with: sudo usermod -aG banger USER\n");
        }
        if self.started {
            s.push_str("bangerd enabled and started\n");
        }
        s
    }
}

fn install(
    env: &Env,
    bin: Option<PathBuf>,
    unit_dir: &Path,
    no_start: bool,
) -> anyhow::Result<Outcome> {
    require_root()?;
    if env.paths.home.is_some() {
        return Err(usage(
            "the systemd unit serves the system layout; unset BANGER_HOME / --home",
        ));
    }
    let bin = match bin {
        Some(b) => b,
        None => autostart::daemon_binary()?,
    };
    let bin =
        std::fs::canonicalize(&bin).with_context(|| format!("no bangerd at {}", bin.display()))?;
    std::fs::create_dir_all(unit_dir)?;
    let path = unit_dir.join(UNIT);
    let tmp = unit_dir.join(format!(".{UNIT}.tmp"));
    std::fs::write(&tmp, unit_text(&bin))?;
    std::fs::rename(&tmp, &path)?;
    let mut r = Installed {
        unit: path,
        bin,
        managed: manage_with_systemctl(unit_dir),
        started: false,
        group_created: false,
    };
    if !r.managed {
        return Ok(Outcome::of(r));
    }
    r.group_created = ensure_group()?;
    systemctl(&["daemon-reload"])?;
    if no_start {
        systemctl(&["enable", UNIT])?;
    } else {
        systemctl(&["enable", "--now", UNIT])?;
        r.started = true;
    }
    Ok(Outcome::of(r))
}

/// Members of `banger` may use the socket; adding users is left to the
/// admin. True when the group was created now.
fn ensure_group() -> anyhow::Result<bool> {
    let exists = Command::new("getent")
        .args(["group", "banger"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !exists {
        let st = Command::new("groupadd")
            .args(["--system", "banger"])
            .status()?;
        if !st.success() {
            bail!("groupadd --system banger failed");
        }
    }
    Ok(!exists)
}

/// `system uninstall`: what was removed, and what could not be.
#[derive(Serialize)]
struct Uninstalled {
    unit: PathBuf,
    unit_removed: bool,
    /// Host network objects removed (`nftables table ip banger` and `... bridge banger`, TAPs, the bridge).
    removed: Vec<String>,
    failed: Vec<NotRemoved>,
}

#[derive(Serialize)]
struct NotRemoved {
    name: String,
    error: Failure,
}

impl Render for Uninstalled {
    fn text(&self) -> String {
        let mut s = if self.unit_removed {
            format!("removed {}\n", self.unit.display())
        } else {
            format!("{} was not installed\n", self.unit.display())
        };
        for r in &self.removed {
            s.push_str(&format!("removed {r}\n"));
        }
        s.push_str(
            "state in /var/lib/banger and the banger group were kept (remove them by hand to purge)\n",
        );
        s
    }

    fn failures(&self) -> Vec<(&str, &Failure)> {
        self.failed
            .iter()
            .map(|f| (f.name.as_str(), &f.error))
            .collect()
    }
}

fn uninstall(env: &Env, unit_dir: &Path) -> anyhow::Result<Outcome> {
    require_root()?;
    // Removing the network under running VMs would cut them off silently.
    if let Ok(mut c) = autostart::connect(&env.paths, false) {
        let running: Vec<String> = c
            .call::<banger_proto::methods::vm::List>(&Default::default())?
            .into_iter()
            .map(|v| v.name)
            .collect();
        if !running.is_empty() {
            return Err(refuse(
                ErrorKind::InvalidState,
                format!(
                    "{} VM(s) still run ({}): delete or stop them first (banger vm delete -f NAME...)",
                    running.len(),
                    running.join(", ")
                ),
            ));
        }
    }
    let path = unit_dir.join(UNIT);
    if manage_with_systemctl(unit_dir) && path.exists() {
        // Stopping first: disable --now also stops it.
        systemctl(&["disable", "--now", UNIT])?;
    }
    let unit_removed = match std::fs::remove_file(&path) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(e).context(format!("cannot remove {}", path.display())),
    };
    if manage_with_systemctl(unit_dir) {
        systemctl(&["daemon-reload"])?;
    }
    // A daemon not under systemd (started by hand or by the CLI) stops too.
    if let Ok(mut c) = autostart::connect(&env.paths, false) {
        let _ = c.call::<banger_proto::methods::daemon::Shutdown>(&Default::default());
    }
    let mut r = Uninstalled {
        unit: path,
        unit_removed,
        removed: Vec::new(),
        failed: Vec::new(),
    };
    remove_host_network(env, &mut r);
    Ok(Outcome::of(r))
}

/// Everything banger adds to the host network, found by name: its nftables
/// table, `bgr-*` TAPs, the bridge, systemd-resolved routing. Nothing else is
/// touched. Best effort: each step is recorded and the rest go on.
fn remove_host_network(env: &Env, r: &mut Uninstalled) {
    let config = banger_core::config::Config::load(&env.paths.config_file).unwrap_or_default();
    let bridge = config.network.bridge_name;
    let quiet = |cmd: &mut Command| {
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
    };
    let mut outcome = |name: String, ok: bool| {
        if ok {
            r.removed.push(name);
        } else {
            let error = Failure::new(Kind::Failed, format!("could not remove {name}"));
            r.failed.push(NotRemoved { name, error });
        }
    };
    for family in ["ip", "bridge"] {
        if quiet(Command::new("nft").args(["list", "table", family, "banger"]))
            .is_ok_and(|s| s.success())
        {
            let ok = quiet(Command::new("nft").args(["delete", "table", family, "banger"]))
                .is_ok_and(|s| s.success());
            outcome(format!("nftables table {family} banger"), ok);
        }
    }
    let links = Command::new("ip")
        .args(["-j", "link", "show"])
        .output()
        .ok();
    let names: Vec<String> = links
        .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|l| l["ifname"].as_str().map(str::to_string))
        .filter(|n| n.starts_with("bgr-") || *n == bridge)
        .collect();
    if names.contains(&bridge) {
        let _ = quiet(Command::new("resolvectl").args(["revert", &bridge]));
    }
    for n in names {
        let ok = quiet(Command::new("ip").args(["link", "delete", &n])).is_ok_and(|s| s.success());
        outcome(n, ok);
    }
}

/// `system status`.
#[derive(Serialize)]
struct SystemStatus {
    /// The unit file, or null when not installed.
    unit: Option<PathBuf>,
    /// `systemctl is-active`, when systemd manages the unit.
    service: Option<String>,
    daemon: Option<DaemonUp>,
}

#[derive(Serialize)]
struct DaemonUp {
    pid: u32,
    version: String,
}

impl Render for SystemStatus {
    fn text(&self) -> String {
        let mut s = format!(
            "unit: {}\n",
            self.unit
                .as_ref()
                .map_or("not installed".into(), |p| p.display().to_string())
        );
        if let Some(svc) = &self.service {
            s.push_str(&format!("service: {svc}\n"));
        }
        s.push_str(&match &self.daemon {
            Some(d) => format!("daemon: running (pid {}, version {})\n", d.pid, d.version),
            None => "daemon: not running\n".into(),
        });
        s
    }
}

fn status(env: &Env, unit_dir: &Path) -> anyhow::Result<Outcome> {
    let path = unit_dir.join(UNIT);
    let installed = path.exists();
    let service = if manage_with_systemctl(unit_dir) && installed {
        let out = Command::new("systemctl")
            .args(["is-active", UNIT])
            .output()?;
        Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        None
    };
    let daemon = match autostart::connect(&env.paths, false) {
        Ok(mut c) => {
            let st = autostart::check_protocol(&mut c)?;
            Some(DaemonUp {
                pid: st.pid,
                version: st.version,
            })
        }
        Err(_) => None,
    };
    Ok(Outcome::of(SystemStatus {
        unit: installed.then_some(path),
        service,
        daemon,
    }))
}
