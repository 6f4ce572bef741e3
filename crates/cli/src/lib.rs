//! `banger`: the command-line client. Each subcommand lives in
//! [`commands`]; they talk to the daemon through [`client`] (started on
//! demand by [`autostart`]) and print tables or `--json`.

pub mod autostart;
pub mod client;
pub mod commands;
pub mod error;
pub mod output;
pub mod progress;
pub mod render;
pub mod style;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

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

    // Shortcuts for what people type most, as with docker and podman; each
    // is the `vm` command of the same name (one implementation).
    /// List running VMs (-a: all, -q: names only); same as `banger vm ls`.
    Ps(commands::vm::ListArgs),
    /// Create a VM; same as `banger vm create`.
    Create(commands::vm::CreateArgs),
    /// Boot stopped VMs; same as `banger vm start`.
    Start(commands::vm::NamesArgs),
    /// Stop VMs; same as `banger vm stop`.
    Stop(commands::vm::StopArgs),
    /// Stop, then start; same as `banger vm restart`.
    Restart(commands::vm::StopArgs),
    /// Freeze running VMs; same as `banger vm pause`.
    Pause(commands::vm::NamesArgs),
    /// Let paused VMs run again; same as `banger vm resume`.
    Unpause(commands::vm::NamesArgs),
    /// Signal VMs' VMMs; same as `banger vm kill`.
    Kill(commands::vm::KillArgs),
    /// Delete VMs; same as `banger vm rm`.
    Rm(commands::vm::DeleteArgs),
    /// A VM's console log; same as `banger vm logs`.
    Logs(commands::vm::LogsArgs),
    /// A shell or a command in a VM; same as `banger vm ssh`.
    Ssh(commands::vm::SshArgs),
    /// Run a program in a running VM; same as `banger vm exec`.
    Exec(commands::vm::ExecArgs),
    /// A fresh VM, a workspace, a command; same as `banger vm run`.
    Run(commands::run::RunArgs),
    /// Copy between the host and a VM; same as `banger vm cp`.
    Cp(commands::cp::CpArgs),
    /// Follow a detached command; same as `banger vm attach`.
    Attach(commands::vm::AttachArgs),
}

/// The `banger` binary's main: parse, run one command, render its result
/// once (text or `--json`), and return the exit status; nothing below exits
/// the process, so destructors (terminal state, temporary files) always run.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return parse_error(e),
    };
    let env = commands::Env::new(&cli);
    let json = env.json;
    match run(&env, cli.command) {
        Ok(render::Outcome::Value(v)) => render::emit(v.as_ref(), json),
        Ok(render::Outcome::Streamed(code)) => ExitCode::from(code),
        Err(e) => render::emit_error(&error::Failure::from_error(&e), json),
    }
}

fn run(env: &commands::Env, command: Command) -> anyhow::Result<render::Outcome> {
    use commands::vm::{self, VmCmd};
    match command {
        Command::Version => commands::version::run(env),
        Command::Doctor => commands::doctor::run(env),
        Command::Daemon(c) => commands::daemon::run(env, c),
        Command::Image(c) => commands::image::run(env, c),
        Command::Kernel(c) => commands::kernel::run(env, c),
        Command::Vm(c) => vm::run(env, c),
        Command::Operation(c) => commands::operation::run(env, c),
        Command::System(c) => commands::system::run(env, c),
        Command::Completion { shell } => commands::completion::run(env, shell),
        Command::SshConfig { install, .. } => commands::ssh::ssh_config(env, install),
        Command::SshKnownHosts => commands::ssh::known_hosts(env),
        Command::Bench(c) => commands::bench::run(env, c),
        // The shortcuts are the `vm` commands themselves.
        Command::Ps(a) => vm::run(env, VmCmd::List(a)),
        Command::Create(a) => vm::run(env, VmCmd::Create(a)),
        Command::Start(a) => vm::run(env, VmCmd::Start(a)),
        Command::Stop(a) => vm::run(env, VmCmd::Stop(a)),
        Command::Restart(a) => vm::run(env, VmCmd::Restart(a)),
        Command::Pause(a) => vm::run(env, VmCmd::Pause(a)),
        Command::Unpause(a) => vm::run(env, VmCmd::Resume(a)),
        Command::Kill(a) => vm::run(env, VmCmd::Kill(a)),
        Command::Rm(a) => vm::run(env, VmCmd::Delete(a)),
        Command::Logs(a) => vm::run(env, VmCmd::Logs(a)),
        Command::Ssh(a) => vm::run(env, VmCmd::Ssh(a)),
        Command::Exec(a) => vm::run(env, VmCmd::Exec(a)),
        Command::Run(a) => vm::run(env, VmCmd::Run(a)),
        Command::Cp(a) => vm::run(env, VmCmd::Cp(a)),
        Command::Attach(a) => vm::run(env, VmCmd::Attach(a)),
    }
}

/// Help and `--version` print as clap prints them; a usage error is a
/// failure of kind `usage` (exit 2), as JSON when `--json` was given.
fn parse_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind as K;
    if matches!(
        e.kind(),
        K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand
    ) || !std::env::args_os().any(|a| a == "--json")
    {
        let _ = e.print();
        return ExitCode::from(e.exit_code().clamp(0, 255) as u8);
    }
    let rendered = e.render().to_string();
    let message = rendered
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .trim()
        .trim_start_matches("error: ")
        .to_string();
    let f = error::Failure::new(error::Kind::Usage, message)
        .with_hint("see `banger --help` or `banger COMMAND --help`");
    render::emit_error(&f, true)
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Command};

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn shortcuts_parse_like_their_vm_commands() {
        let parse = |args: &[&str]| {
            let mut full = vec!["banger"];
            full.extend_from_slice(args);
            Cli::try_parse_from(full).unwrap_or_else(|e| panic!("{args:?}: {e}"))
        };
        assert!(matches!(parse(&["ps", "-aq"]).command, Command::Ps(_)));
        assert!(matches!(
            parse(&["stop", "-t", "3", "a", "b"]).command,
            Command::Stop(_)
        ));
        assert!(matches!(parse(&["rm", "-f", "a"]).command, Command::Rm(_)));
        assert!(matches!(
            parse(&["pause", "a", "b"]).command,
            Command::Pause(_)
        ));
        assert!(matches!(
            parse(&["unpause", "a"]).command,
            Command::Unpause(_)
        ));
        assert!(matches!(
            parse(&["logs", "a", "--tail", "5"]).command,
            Command::Logs(_)
        ));
        assert!(matches!(
            parse(&["ssh", "a", "--", "uname"]).command,
            Command::Ssh(_)
        ));
        assert!(matches!(
            parse(&["create", "--name", "x"]).command,
            Command::Create(_)
        ));
        assert!(matches!(
            parse(&["exec", "-w", "/x", "-e", "A=b", "a", "--", "ls", "-l"]).command,
            Command::Exec(_)
        ));
        match parse(&[
            "run", "--rm", "--vcpu", "2", "-p", "8080:80", "./repo", "--", "make", "-j2",
        ])
        .command
        {
            Command::Run(r) => {
                assert!(r.rm);
                assert_eq!(r.path.as_deref(), Some(std::path::Path::new("./repo")));
                assert_eq!(r.command, ["make", "-j2"]);
            }
            other => panic!("{other:?}"),
        }
        // A bare sandbox: no PATH, no command.
        assert!(matches!(parse(&["vm", "run"]).command, Command::Vm(_)));
        // exec needs a command.
        assert!(Cli::try_parse_from(["banger", "exec", "a"]).is_err());
        // -d detaches (not with -t); attach takes an optional run id.
        match parse(&["exec", "-d", "a", "--", "sleep", "9"]).command {
            Command::Exec(e) => assert!(e.stream.detach),
            other => panic!("{other:?}"),
        }
        assert!(Cli::try_parse_from(["banger", "exec", "-d", "-t", "a", "--", "x"]).is_err());
        assert!(matches!(
            parse(&["vm", "attach", "a"]).command,
            Command::Vm(_)
        ));
        assert!(matches!(
            parse(&["vm", "attach", "a", "r1"]).command,
            Command::Vm(_)
        ));
        match parse(&["attach", "a", "r1"]).command {
            Command::Attach(a) => assert_eq!((a.name.as_str(), a.id.as_deref()), ("a", Some("r1"))),
            other => panic!("{other:?}"),
        }
        // export: -o and --apply go apart.
        assert!(matches!(
            parse(&["vm", "workspace", "export", "a", "-o", "x.patch"]).command,
            Command::Vm(_)
        ));
        assert!(Cli::try_parse_from([
            "banger",
            "vm",
            "workspace",
            "export",
            "a",
            "--apply",
            "-o",
            "x.patch"
        ])
        .is_err());
        // --json is global: before or after the command.
        assert!(parse(&["ps", "--json"]).json);
        assert!(parse(&["--json", "vm", "ls"]).json);
    }
}
