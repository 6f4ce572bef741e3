//! `banger`: the command-line client. Each subcommand lives in
//! [`commands`]; they talk to the daemon through [`client`] (started on
//! demand by [`autostart`]) and print tables or `--json`.

pub mod autostart;
pub mod client;
pub mod commands;
pub mod output;
pub mod progress;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::client::ClientError;

#[derive(Debug, Parser)]
#[command(
    name = "banger",
    version,
    about = "One-command development sandboxes on Firecracker microVMs",
    propagate_version = true
)]
pub struct Cli {
    /// Keep config, state, cache, runtime files and logs under DIR.
    #[arg(long, global = true, env = "BANGER_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// Print machine-readable JSON (stable fields, see docs/json.md).
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the client's and the daemon's versions.
    Version,
    /// Check the host: KVM, Firecracker, networking tools, disks, the store.
    Doctor,
    /// Control the daemon.
    #[command(subcommand)]
    Daemon(commands::daemon::DaemonCmd),
    /// Manage root filesystem images.
    #[command(subcommand)]
    Image(commands::image::ImageCmd),
    /// Create, run and manage VMs.
    #[command(subcommand)]
    Vm(commands::vm::VmCmd),
    /// Manage guest kernels.
    #[command(subcommand)]
    Kernel(commands::kernel::KernelCmd),
    /// Inspect and cancel asynchronous operations (imports, creates).
    #[command(subcommand, visible_alias = "op")]
    Operation(commands::operation::OperationCmd),
    /// Install or remove the systemd service for bangerd.
    #[command(subcommand)]
    System(commands::system::SystemCmd),
    /// Add (or remove) `Host *.vm` to ~/.ssh/config, so `ssh NAME.vm` works.
    SshConfig {
        #[arg(
            long,
            conflicts_with = "uninstall",
            required_unless_present = "uninstall"
        )]
        install: bool,
        #[arg(long)]
        uninstall: bool,
    },
    /// Print pinned host keys of your VMs (used by OpenSSH's KnownHostsCommand).
    #[command(hide = true)]
    SshKnownHosts,
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Measure banger itself.
    #[command(subcommand)]
    Bench(commands::bench::BenchCmd),
}

/// The `banger` binary's main.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = commands::Env::new(&cli);
    let result = match cli.command {
        Command::Version => commands::version::run(&env),
        Command::Doctor => commands::doctor::run(&env),
        Command::Daemon(c) => commands::daemon::run(&env, c),
        Command::Image(c) => commands::image::run(&env, c),
        Command::Kernel(c) => commands::kernel::run(&env, c),
        Command::Vm(c) => commands::vm::run(&env, c),
        Command::Operation(c) => commands::operation::run(&env, c),
        Command::System(c) => commands::system::run(&env, c),
        Command::Completion { shell } => commands::completion::run(shell),
        Command::SshConfig { install, .. } => commands::ssh::ssh_config(&env, install),
        Command::SshKnownHosts => commands::ssh::known_hosts(&env),
        Command::Bench(c) => commands::bench::run(&env, c),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            report(&e);
            ExitCode::FAILURE
        }
    }
}

/// `error: NAME: ...` for one of several targets.
pub(crate) fn report_for(name: &str, e: &anyhow::Error) {
    match e.downcast_ref::<ClientError>().and_then(ClientError::rpc) {
        Some(rpc) => {
            eprintln!("error: {name}: {}", rpc.message);
            if let Some(hint) = rpc.hint() {
                eprintln!("hint: {hint}");
            }
        }
        None => eprintln!("error: {name}: {e:#}"),
    }
}

/// `error: ...` plus the daemon's hint, if it gave one.
fn report(e: &anyhow::Error) {
    match e.downcast_ref::<ClientError>().and_then(ClientError::rpc) {
        Some(rpc) => {
            eprintln!("error: {}", rpc.message);
            if let Some(hint) = rpc.hint() {
                eprintln!("hint: {hint}");
            }
        }
        None => eprintln!("error: {e:#}"),
    }
}
