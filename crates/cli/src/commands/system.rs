//! `banger system install|uninstall|status`: the systemd unit for bangerd.
//!
//! The unit uses `KillMode=process` so that stopping or restarting the daemon
//! never kills the Firecracker processes of running VMs (a restarted daemon
//! re-adopts them), and keeps `/run/banger` across restarts for the same
//! reason (VM sockets live there).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context};
use clap::Subcommand;

use super::Env;
use crate::autostart;

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

pub fn run(env: &Env, cmd: SystemCmd) -> anyhow::Result<ExitCode> {
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
        bail!("this needs root: sudo banger system ...");
    }
    Ok(())
}

fn install(
    env: &Env,
    bin: Option<PathBuf>,
    unit_dir: &Path,
    no_start: bool,
) -> anyhow::Result<ExitCode> {
    require_root()?;
    if env.paths.home.is_some() {
        bail!("the systemd unit serves the system layout; unset BANGER_HOME / --home");
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
    println!("wrote {}", path.display());
    if !manage_with_systemctl(unit_dir) {
        println!(
            "not managed by systemctl here: start the daemon with `sudo {}`",
            bin.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    ensure_group()?;
    systemctl(&["daemon-reload"])?;
    if no_start {
        systemctl(&["enable", UNIT])?;
    } else {
        systemctl(&["enable", "--now", UNIT])?;
        println!("bangerd enabled and started");
    }
    Ok(ExitCode::SUCCESS)
}

/// Members of `banger` may use the socket; adding users is left to the admin.
fn ensure_group() -> anyhow::Result<()> {
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
        println!("created group banger; add users with: sudo usermod -aG banger USER");
    }
    Ok(())
}

fn uninstall(env: &Env, unit_dir: &Path) -> anyhow::Result<ExitCode> {
    require_root()?;
    // Removing the network under running VMs would cut them off silently.
    if let Ok(mut c) = autostart::connect(&env.paths, false) {
        let running: Vec<String> = c
            .call::<banger_proto::methods::vm::List>(&Default::default())?
            .into_iter()
            .map(|v| v.name)
            .collect();
        if !running.is_empty() {
            bail!(
                "{} VM(s) still run ({}): delete or stop them first (banger vm delete -f NAME...)",
                running.len(),
                running.join(", ")
            );
        }
    }
    let path = unit_dir.join(UNIT);
    if manage_with_systemctl(unit_dir) && path.exists() {
        // Stopping first: disable --now also stops it.
        systemctl(&["disable", "--now", UNIT])?;
    }
    match std::fs::remove_file(&path) {
        Ok(()) => println!("removed {}", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!("{} was not installed", path.display())
        }
        Err(e) => return Err(e).context(format!("cannot remove {}", path.display())),
    }
    if manage_with_systemctl(unit_dir) {
        systemctl(&["daemon-reload"])?;
    }
    // A daemon not under systemd (started by hand or by the CLI) stops too.
    if let Ok(mut c) = autostart::connect(&env.paths, false) {
        let _ = c.call::<banger_proto::methods::daemon::Shutdown>(&Default::default());
    }
    remove_host_network(env);
    println!(
        "state in /var/lib/banger and the banger group were kept (remove them by hand to purge)"
    );
    Ok(ExitCode::SUCCESS)
}

/// Everything banger adds to the host network, found by name: its nftables
/// table, `bgr-*` TAPs, the bridge, systemd-resolved routing. Nothing else is
/// touched. Best effort: each step reports and the rest go on.
fn remove_host_network(env: &Env) {
    let config = banger_core::config::Config::load(&env.paths.config_file).unwrap_or_default();
    let bridge = config.network.bridge_name;
    let quiet = |cmd: &mut Command| {
        cmd.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
    };
    if quiet(Command::new("nft").args(["list", "table", "ip", "banger"])).is_ok_and(|s| s.success())
    {
        match quiet(Command::new("nft").args(["delete", "table", "ip", "banger"])) {
            Ok(s) if s.success() => println!("removed nftables table ip banger"),
            _ => eprintln!("warning: could not remove nftables table ip banger"),
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
        match quiet(Command::new("ip").args(["link", "delete", &n])) {
            Ok(s) if s.success() => println!("removed {n}"),
            _ => eprintln!("warning: could not remove {n}"),
        }
    }
}

fn status(env: &Env, unit_dir: &Path) -> anyhow::Result<ExitCode> {
    let path = unit_dir.join(UNIT);
    println!(
        "unit: {}",
        if path.exists() {
            path.display().to_string()
        } else {
            "not installed".into()
        }
    );
    if manage_with_systemctl(unit_dir) && path.exists() {
        let out = Command::new("systemctl")
            .args(["is-active", UNIT])
            .output()?;
        println!("service: {}", String::from_utf8_lossy(&out.stdout).trim());
    }
    match autostart::connect(&env.paths, false) {
        Ok(mut c) => {
            let st = autostart::check_protocol(&mut c)?;
            println!("daemon: running (pid {}, version {})", st.pid, st.version);
        }
        Err(_) => println!("daemon: not running"),
    }
    Ok(ExitCode::SUCCESS)
}
