//! `banger vm run [PATH] [-- CMD ARGS...]` (and `banger run`): a fresh VM,
//! the workspace at PATH copied in (see [`workspace`](super::workspace)),
//! then CMD run in it with its stdin, output and exit status, or an
//! interactive shell there. `vm workspace prepare NAME PATH` is the copy
//! step alone, into a running VM.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use serde::Serialize;

use super::vm::{CreateArgs, ExecArgs, StreamFlags};
use super::workspace::{self, Snapshot};
use super::Env;
use crate::error::usage;
use crate::render::{Outcome, Render};

#[derive(Debug, Args)]
pub struct RunArgs {
    /// A directory to work in: a git repository arrives with its exact state
    /// (staged, unstaged, HEAD, branch, history); anything else is copied as it is.
    pub path: Option<PathBuf>,
    #[command(flatten)]
    pub create: CreateArgs,
    #[command(flatten)]
    pub stream: StreamFlags,
    /// Delete the VM when the command or shell ends (a VM whose guest never
    /// became reachable is kept for a post-mortem).
    #[arg(long)]
    pub rm: bool,
    /// Also copy untracked files (never ignored ones).
    #[arg(long)]
    pub include_untracked: bool,
    /// Put the guest's copy on this new, guest-only branch.
    #[arg(long, value_name = "NAME")]
    pub branch: Option<String>,
    /// Start the workspace from this commit (clean) instead of the working state.
    #[arg(long, value_name = "REF")]
    pub from: Option<String>,
    /// Print the VM spec and the files that would be copied; make nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The command (after `--`); none: an interactive shell.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// `--dry-run`'s answer.
#[derive(Serialize)]
struct DryRun {
    image: Option<String>,
    vcpus: Option<u32>,
    memory: Option<String>,
    disk_size: Option<String>,
    nat: bool,
    workspace: Option<String>,
    files: Vec<String>,
    command: Vec<String>,
}

impl Render for DryRun {
    fn text(&self) -> String {
        let mut s = format!(
            "would create a VM (image {}, vcpus {}, memory {}, disk {}{})\n",
            self.image.as_deref().unwrap_or("default"),
            self.vcpus.map_or("default".into(), |v| v.to_string()),
            self.memory.as_deref().unwrap_or("default"),
            self.disk_size.as_deref().unwrap_or("default"),
            if self.nat { ", NAT" } else { "" },
        );
        if let Some(w) = &self.workspace {
            s.push_str(&format!("would copy {} files to {w}:\n", self.files.len()));
            for f in &self.files {
                s.push_str(&format!("  {f}\n"));
            }
        }
        if self.command.is_empty() {
            s.push_str("then open a shell\n");
        } else {
            s.push_str(&format!("then run: {}\n", self.command.join(" ")));
        }
        s
    }
}

pub fn run(env: &Env, a: RunArgs) -> anyhow::Result<Outcome> {
    if a.create.no_start {
        return Err(usage(
            "vm run always starts the VM (--no-start is for vm create)",
        ));
    }
    if env.json && a.command.is_empty() {
        return Err(usage(
            "an interactive shell has no JSON form: give a command (banger --json vm run ... -- CMD...)",
        ));
    }
    if a.stream.detach && (a.command.is_empty() || a.rm) {
        return Err(usage(
            "-d/--detach needs a command (-- CMD...) and keeps the VM (no --rm)",
        ));
    }
    // The snapshot comes first: a bad PATH fails before a VM exists.
    let opts = workspace::Options {
        include_untracked: a.include_untracked,
        branch: a.branch.clone(),
        from: a.from.clone(),
    };
    let snap = match &a.path {
        Some(p) => Some(workspace::snapshot(p, &opts)?),
        None if a.branch.is_some() || a.from.is_some() || a.include_untracked => {
            return Err(usage(
                "--branch, --from and --include-untracked need a PATH",
            ))
        }
        None => None,
    };
    if a.dry_run {
        return Ok(Outcome::of(DryRun {
            image: a.create.image.clone(),
            vcpus: a.create.vcpus,
            memory: a.create.memory.clone(),
            disk_size: a.create.disk_size.clone(),
            nat: a.create.nat,
            workspace: snap.as_ref().map(|s| format!("/root/{}", s.name)),
            files: snap.map(|s| s.files).unwrap_or_default(),
            command: a.command,
        }));
    }
    let no_build = a.create.no_build;
    // A VM whose guest never answered fails here, and create keeps it (its
    // error says so and how to look at it).
    let (vm, op) = super::vm::create_vm(env, no_build, a.create.into_params()?)?;
    let name = vm.name.clone();
    if super::vm::reached_ssh(&op) {
        super::sync::after_create(env, &name, a.path.as_deref());
    }
    let result = in_vm(env, &name, snap.as_ref(), a.stream, a.command);
    if a.rm {
        let mut client = env.client()?;
        let deleted = client.call::<banger_proto::methods::vm::Delete>(
            &banger_proto::methods::vm::DeleteParams {
                name: name.clone(),
                force: true,
            },
        );
        if let Err(e) = deleted {
            eprintln!("warning: could not delete vm {name}: {e}");
        }
    } else if !env.json {
        eprintln!(
            "vm {name} is still running: banger vm ssh {name} to get back in, banger vm rm -f {name} to delete it"
        );
    }
    result
}

/// The workspace copy, then the command or shell.
fn in_vm(
    env: &Env,
    name: &str,
    snap: Option<&Snapshot>,
    stream: StreamFlags,
    command: Vec<String>,
) -> anyhow::Result<Outcome> {
    let workdir = match snap {
        Some(s) => Some(workspace::push(s, &|| super::ssh::ssh_to(env, name))?),
        None => None,
    };
    let command = if command.is_empty() {
        // A login shell in the workspace.
        ["sh", "-c", "exec \"${SHELL:-/bin/sh}\" -l"]
            .map(String::from)
            .to_vec()
    } else {
        command
    };
    super::ssh::vm_exec(
        env,
        ExecArgs {
            name: name.into(),
            workdir,
            stream,
            user: None,
            command,
        },
    )
}

#[derive(Debug, Subcommand)]
pub enum WorkspaceCmd {
    /// Copy a workspace into a running VM, at /root/<dir name>.
    Prepare {
        name: String,
        path: PathBuf,
        /// Also copy untracked files (never ignored ones).
        #[arg(long)]
        include_untracked: bool,
        /// Put the guest's copy on this new, guest-only branch.
        #[arg(long, value_name = "NAME")]
        branch: Option<String>,
        /// Start from this commit (clean) instead of the working state.
        #[arg(long, value_name = "REF")]
        from: Option<String>,
    },
    /// Bring the guest's own changes back (its commits since prepare and its
    /// working tree, never the host's state that was sent in); checked as
    /// hostile. Default: a patch on stdout.
    Export {
        name: String,
        /// The host repository (default: the current directory).
        #[arg(default_value = ".")]
        path: PathBuf,
        /// Write the changes into the host's working tree (merged with what
        /// the host changed since; a conflict writes nothing).
        #[arg(long, conflicts_with = "output")]
        apply: bool,
        /// Write a FILE.patch (git apply) or a FILE.bundle (git fetch FILE refs/banger/export).
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        /// Take the changes from this guest commit instead of the snapshot
        /// prepare left (refs/banger/base).
        #[arg(long, value_name = "REV")]
        base_commit: Option<String>,
    },
}

#[derive(Serialize)]
struct Prepared {
    name: String,
    path: String,
    files: usize,
}

impl Render for Prepared {
    fn text(&self) -> String {
        format!(
            "copied {} files into {}:{}\n",
            self.files, self.name, self.path
        )
    }
}

pub fn workspace_cmd(env: &Env, cmd: WorkspaceCmd) -> anyhow::Result<Outcome> {
    match cmd {
        WorkspaceCmd::Prepare {
            name,
            path,
            include_untracked,
            branch,
            from,
        } => {
            let opts = workspace::Options {
                include_untracked,
                branch,
                from,
            };
            let snap = workspace::snapshot(&path, &opts)?;
            let dir = workspace::push(&snap, &|| super::ssh::ssh_to(env, &name))?;
            Ok(Outcome::of(Prepared {
                name,
                path: dir,
                files: snap.files.len(),
            }))
        }
        WorkspaceCmd::Export {
            name,
            path,
            apply,
            output,
            base_commit,
        } => super::export::export(
            env,
            super::export::ExportArgs {
                name,
                path,
                apply,
                output,
                base_commit,
            },
        ),
    }
}
