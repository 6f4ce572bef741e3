//! `banger vm ...`: the VM lifecycle. Each command returns one typed result
//! (see [`crate::render`]); the top-level shortcuts (`banger ps`, `banger
//! stop`, ...) are these same commands.

use std::io::{BufRead, IsTerminal, Write};
use std::time::Duration;

use banger_core::size;
use banger_proto::methods::daemon::LogChunk;
use banger_proto::methods::vm::{
    CreateBegin, CreateParams, Delete, DeleteParams, Health, Kill, KillParams, LifecycleResult,
    List, ListParams, LogSource, Logs, Pause, Ping, PortAdd, PortAddParams, PortList, PortMapping,
    PortRemove, PortRemoveParams, Ports, Prune, PruneResult, Restart, Resume, Set, SetParams, Show,
    Start, Stats, Stop, StopParams, VmHealth, VmInfo, VmLogsParams, VmPorts, VmStats,
};
use banger_proto::methods::{Empty, NameParams};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::Env;
use crate::client::Client;
use crate::error::{usage, Failure};
use crate::progress::OpResult;
use crate::render::{Outcome, Render};
use crate::{output, progress, render};

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Name (default: a generated one like brave-otter).
    #[arg(long)]
    pub(crate) name: Option<String>,
    /// Image (default: your default image, see `banger image promote`).
    #[arg(long)]
    pub(crate) image: Option<String>,
    /// Virtual CPUs.
    #[arg(long = "vcpu", value_name = "N")]
    pub(crate) vcpus: Option<u32>,
    /// Memory, e.g. 2G or 512M (a bare number is MiB).
    #[arg(long, value_name = "SIZE")]
    pub(crate) memory: Option<String>,
    /// Size of the work disk mounted at /root, e.g. 8G.
    #[arg(long, value_name = "SIZE")]
    pub(crate) disk_size: Option<String>,
    /// Make the disks but do not boot.
    #[arg(long)]
    pub(crate) no_start: bool,
    /// Never build an image first (by default, when no image is
    /// registered, debian-bookworm minimal is built).
    #[arg(long)]
    pub(crate) no_build: bool,
    /// Let the guest reach the outside network (NAT).
    #[arg(long)]
    pub(crate) nat: bool,
    /// Publish a guest port on the host: [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|udp] (repeatable).
    #[arg(short = 'p', long = "publish", value_name = "SPEC", value_parser = parse_port)]
    pub(crate) ports: Vec<PortMapping>,
    /// The VMM: firecracker, qemu, or auto (Firecracker where it can boot guests, else
    /// QEMU; `banger doctor` says which). Default: config [vm] vmm, else auto.
    #[arg(long, value_name = "firecracker|qemu|auto", value_parser = ["firecracker", "qemu", "auto"])]
    pub(crate) vmm: Option<String>,
}

impl CreateArgs {
    /// The daemon's parameters (sizes parsed).
    pub(crate) fn into_params(self) -> anyhow::Result<CreateParams> {
        Ok(CreateParams {
            ports: self.ports,
            name: self.name,
            image: self.image,
            vcpus: self.vcpus,
            memory_mib: mib(self.memory.as_deref())?,
            disk_bytes: bytes(self.disk_size.as_deref())?,
            no_start: self.no_start,
            nat: self.nat,
            vmm: self.vmm,
        })
    }
}

#[derive(Debug, Args)]
pub struct NamesArgs {
    #[arg(required = true)]
    names: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    #[arg(required = true)]
    names: Vec<String>,
    /// Seconds to wait for the guest before SIGTERM (default: config, 10).
    #[arg(short = 't', long, value_name = "SECS")]
    timeout: Option<u64>,
}

#[derive(Debug, Args)]
pub struct KillArgs {
    #[arg(required = true)]
    names: Vec<String>,
    /// Signal name or number.
    #[arg(short, long, default_value = "KILL")]
    signal: String,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[arg(required = true)]
    names: Vec<String>,
    /// Also delete running VMs (they are killed).
    #[arg(short, long)]
    force: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// All VMs, not only running ones.
    #[arg(short, long)]
    all: bool,
    /// Only the names, one a line (with --json: an array of names).
    #[arg(short, long)]
    quiet: bool,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    name: String,
    /// Keep printing what is appended.
    #[arg(short, long)]
    follow: bool,
    /// The VMM's own log instead of the guest's console.
    #[arg(long)]
    vmm: bool,
    /// Only the last N lines (default: the last 64 KiB).
    #[arg(short = 'n', long, value_name = "N")]
    tail: Option<usize>,
}

#[derive(Debug, Args)]
pub struct SshArgs {
    name: String,
    /// The command to run (after `--`); none: an interactive shell.
    #[arg(last = true)]
    command: Vec<String>,
}

/// How a guest command gets its environment and terminal: `vm exec` and
/// `vm run` take the same flags.
#[derive(Debug, Args)]
pub struct StreamFlags {
    /// Set an environment variable for the command (repeatable).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Allocate a terminal (default: when stdin and stdout are terminals).
    #[arg(short = 't', long, conflicts_with = "no_tty")]
    pub tty: bool,
    /// Never allocate a terminal.
    #[arg(short = 'T', long)]
    pub no_tty: bool,
    /// Start the command and return; its output goes to a log in the guest
    /// that `banger vm attach NAME` follows.
    #[arg(short = 'd', long, conflicts_with = "tty")]
    pub detach: bool,
}

#[derive(Debug, Args)]
pub struct AttachArgs {
    pub name: String,
    /// The run (default: the latest).
    #[arg(value_name = "RUN_ID")]
    pub id: Option<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    pub name: String,
    /// Working directory in the guest (default: the user's home).
    #[arg(short = 'w', long, value_name = "DIR")]
    pub workdir: Option<String>,
    #[command(flatten)]
    pub stream: StreamFlags,
    /// Run as this guest user (default: root).
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
    /// The program and its arguments (after `--`), passed as an argv.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum VmCmd {
    /// Create a VM (and start it, unless --no-start).
    Create(CreateArgs),
    /// Boot stopped VMs.
    Start(NamesArgs),
    /// Stop VMs: Ctrl-Alt-Del, then SIGTERM, then SIGKILL.
    Stop(StopArgs),
    /// Stop, then start.
    Restart(StopArgs),
    /// Freeze running VMs' vCPUs (memory, disks and network stay; `vm
    /// resume` carries on where they were).
    Pause(NamesArgs),
    /// Let paused VMs run again, from where they were.
    #[command(visible_alias = "unpause")]
    Resume(NamesArgs),
    /// Send a signal to the VMs' VMM now (for when stop hangs).
    Kill(KillArgs),
    /// Delete VMs and their disks (irreversible).
    #[command(visible_alias = "rm")]
    Delete(DeleteArgs),
    /// Delete all your stopped VMs.
    Prune {
        /// Do not ask.
        #[arg(short, long)]
        force: bool,
    },
    /// Change a stopped VM's vCPUs, memory or work disk size (grow only).
    Set {
        name: String,
        #[arg(long = "vcpu", value_name = "N")]
        vcpus: Option<u32>,
        #[arg(long, value_name = "SIZE")]
        memory: Option<String>,
        #[arg(long, value_name = "SIZE")]
        disk_size: Option<String>,
        /// NAT on or off (also while running).
        #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
        nat: Option<bool>,
    },
    /// Published ports: add, remove, list.
    #[command(subcommand)]
    Port(PortCmd),
    /// List running VMs (-a: all, -q: names only).
    #[command(visible_aliases = ["ps", "ls"])]
    List(ListArgs),
    /// Show one VM.
    Show { name: String },
    /// The guest's serial console (or, with --vmm, the VMM's own log).
    Logs(LogsArgs),
    /// State, uptime, VMM pid, RSS and CPU, VMM metrics.
    Stats { name: String },
    /// Is the VM healthy?
    Health { name: String },
    /// Open a shell in the VM, or run a command: banger vm ssh NAME [-- CMD...]
    Ssh(SshArgs),
    /// A fresh VM with a workspace in it, a command run there (or a shell):
    /// banger vm run [PATH] [-- CMD ARGS...]
    Run(super::run::RunArgs),
    /// Copy files and trees between the host and a VM: banger vm cp SRC NAME:DST | NAME:SRC DST
    Cp(super::cp::CpArgs),
    /// Workspaces in running VMs: banger vm workspace prepare NAME PATH
    #[command(subcommand)]
    Workspace(super::run::WorkspaceCmd),
    /// Run a program in a running VM with its stdin, stdout, stderr and exit
    /// status: banger vm exec NAME [-w DIR] [-e K=V]... -- CMD ARGS...
    Exec(ExecArgs),
    /// Copy the config's [[file_sync]] files and your git identity into a
    /// running VM (also done at create): banger vm sync NAME
    Sync { name: String },
    /// Follow a detached command's output (vm run -d, vm exec -d) and end
    /// with its exit status: banger vm attach NAME [RUN_ID] (default: the
    /// latest); with --json, its state and log so far, without following
    Attach(AttachArgs),
    /// Round trip to the VM (its guest agent, else its VMM).
    Ping { name: String },
    /// Sockets listening in the guest (from its agent), with <name>.vm endpoints.
    Ports { name: String },
}

#[derive(Debug, Subcommand)]
pub enum PortCmd {
    /// Publish HOST_PORT on the host to GUEST_PORT in the VM.
    Add {
        name: String,
        /// [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|udp]
        #[arg(value_parser = parse_port)]
        spec: PortMapping,
    },
    /// Stop publishing HOST_PORT[/tcp|udp].
    #[command(visible_alias = "remove")]
    Rm { name: String, port: String },
    /// The VM's published ports.
    #[command(visible_alias = "ls")]
    List { name: String },
}

fn parse_port(s: &str) -> Result<PortMapping, String> {
    PortMapping::parse(s)
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" | "true" | "yes" => Ok(true),
        "off" | "false" | "no" => Ok(false),
        _ => Err(format!("{s:?}: use on or off")),
    }
}

fn mib(s: Option<&str>) -> anyhow::Result<Option<u64>> {
    s.map(size::parse_mib).transpose().map_err(usage)
}

fn bytes(s: Option<&str>) -> anyhow::Result<Option<u64>> {
    s.map(size::parse).transpose().map_err(usage)
}

pub fn run(env: &Env, cmd: VmCmd) -> anyhow::Result<Outcome> {
    match cmd {
        VmCmd::Create(a) => {
            let no_build = a.no_build;
            create(env, no_build, a.into_params()?)
        }
        VmCmd::Run(a) => super::run::run(env, a),
        VmCmd::Workspace(c) => super::run::workspace_cmd(env, c),
        VmCmd::Cp(a) => super::cp::cp(env, a),
        VmCmd::Sync { name } => super::sync::vm_sync(env, &name),
        VmCmd::Attach(a) => super::attach::attach(env, &a.name, a.id.as_deref()),
        VmCmd::Start(a) => each(env, a.names, "started", |c, n| {
            c.call::<Start>(&NameParams { name: n.into() })
        }),
        VmCmd::Stop(a) => each(env, a.names, "stopped", move |c, n| {
            c.call::<Stop>(&StopParams {
                name: n.into(),
                timeout_secs: a.timeout,
            })
        }),
        VmCmd::Restart(a) => each(env, a.names, "restarted", move |c, n| {
            c.call::<Restart>(&StopParams {
                name: n.into(),
                timeout_secs: a.timeout,
            })
        }),
        VmCmd::Pause(a) => each(env, a.names, "paused", |c, n| {
            c.call::<Pause>(&NameParams { name: n.into() })
        }),
        VmCmd::Resume(a) => each(env, a.names, "resumed", |c, n| {
            c.call::<Resume>(&NameParams { name: n.into() })
        }),
        VmCmd::Kill(a) => {
            let signal = a.signal;
            each(env, a.names, "signalled", move |c, n| {
                c.call::<Kill>(&KillParams {
                    name: n.into(),
                    signal: Some(signal.clone()),
                })
            })
        }
        VmCmd::Delete(a) => delete(env, a.names, a.force),
        VmCmd::Prune { force } => prune(env, force),
        VmCmd::Set {
            name,
            vcpus,
            memory,
            disk_size,
            nat,
        } => {
            let vm = env.client()?.call::<Set>(&SetParams {
                name,
                nat,
                vcpus,
                memory_mib: mib(memory.as_deref())?,
                disk_bytes: bytes(disk_size.as_deref())?,
            })?;
            Ok(Outcome::of(VmSet(vm)))
        }
        VmCmd::Port(p) => port(env, p),
        VmCmd::List(a) => list(env, a),
        VmCmd::Show { name } => Ok(Outcome::of(VmShow(
            env.client()?.call::<Show>(&NameParams { name })?,
        ))),
        VmCmd::Logs(a) => logs(env, a),
        VmCmd::Stats { name } => Ok(Outcome::of(StatsView(
            env.client()?.call::<Stats>(&NameParams { name })?,
        ))),
        VmCmd::Health { name } => health(env, name, false),
        VmCmd::Ssh(a) => super::ssh::vm_ssh(env, &a.name, &a.command),
        VmCmd::Exec(a) => super::ssh::vm_exec(env, a),
        VmCmd::Ping { name } => health(env, name, true),
        VmCmd::Ports { name } => Ok(Outcome::of(PortsView(
            env.client()?.call::<Ports>(&NameParams { name })?,
        ))),
    }
}

/// `vm set`: the VM as changed.
#[derive(Serialize)]
#[serde(transparent)]
struct VmSet(VmInfo);

impl Render for VmSet {
    fn text(&self) -> String {
        format!("{}: {}\n", self.0.name, spec_line(&self.0))
    }
}

/// `vm show`.
#[derive(Serialize)]
#[serde(transparent)]
struct VmShow(VmInfo);

impl Render for VmShow {
    fn text(&self) -> String {
        show(&self.0)
    }
}

/// `vm stats`.
#[derive(Serialize)]
#[serde(transparent)]
struct StatsView(VmStats);

impl Render for StatsView {
    fn text(&self) -> String {
        let s = &self.0;
        let mut t = output::Table::new(&["FIELD", "VALUE"]);
        t.row(vec!["name".into(), s.name.clone()]);
        t.row(vec!["state".into(), s.state.as_str().into()]);
        t.row(vec![
            "uptime".into(),
            s.uptime_secs.map_or("-".into(), output::age),
        ]);
        t.row(vec![
            "vmm pid".into(),
            s.pid.map_or("-".into(), |p| p.to_string()),
        ]);
        t.row(vec![
            "vmm rss".into(),
            s.rss_bytes.map_or("-".into(), output::size),
        ]);
        t.row(vec![
            "vmm cpu".into(),
            s.cpu_secs.map_or("-".into(), |c| format!("{c:.2}s")),
        ]);
        t.row(vec![
            "vmm metrics".into(),
            if s.vmm_metrics.is_some() {
                "yes (--json)"
            } else {
                "-"
            }
            .into(),
        ]);
        t.render()
    }
}

/// `vm ports`.
#[derive(Serialize)]
#[serde(transparent)]
struct PortsView(VmPorts);

impl Render for PortsView {
    fn text(&self) -> String {
        ports_table(&self.0)
    }
}

/// `vm create`: the VM and the operation that made it.
#[derive(Serialize)]
struct Created {
    vm: VmInfo,
    operation: progress::OpSummary,
}

impl Render for Created {
    fn text(&self) -> String {
        format!(
            "created vm {} ({}) in {}: {}\n",
            self.vm.name,
            self.vm.state.as_str(),
            output::millis(self.operation.total_ms()),
            progress::stage_summary(&self.operation.stages)
        )
    }
}

fn create(env: &Env, no_build: bool, params: CreateParams) -> anyhow::Result<Outcome> {
    let (vm, operation) = create_vm(env, no_build, params)?;
    if reached_ssh(&operation) {
        super::sync::after_create(env, &vm.name, None);
    }
    Ok(Outcome::of(Created { vm, operation }))
}

/// Whether a create waited for (and got) the guest's sshd: then
/// `[[file_sync]]` can go in.
pub(crate) fn reached_ssh(op: &progress::OpSummary) -> bool {
    op.stages.iter().any(|s| s.name == "ssh")
}

/// Creates (and by default starts) a VM, following the operation's progress
/// on stderr; `vm create` and `vm run`.
pub(crate) fn create_vm(
    env: &Env,
    no_build: bool,
    params: CreateParams,
) -> anyhow::Result<(VmInfo, progress::OpSummary)> {
    let interrupt = progress::Interrupt::install()?;
    let mut client = env.client()?;
    super::image::ensure_image(
        &mut client,
        env,
        params.image.is_some(),
        no_build,
        &interrupt,
    )?;
    let begun = client.call::<CreateBegin>(&params)?;
    if !env.json {
        eprintln!("spec: {}", spec_line(&begun.vm));
    }
    let op = progress::follow(&mut client, &begun.operation_id, env.json, &interrupt)?;
    Ok((
        op.result_of::<banger_proto::methods::op::VmCreate>()?,
        progress::OpSummary::of(&op),
    ))
}

/// One entry per VM named, in the order given: its result or its failure.
struct Each<T> {
    done: &'static str,
    results: Vec<(String, Result<T, Failure>)>,
}

/// An array: the result's own fields, or `{"name", "error": {...}}`.
impl<T: Serialize> Serialize for Each<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Entry<'a, T> {
            Ok(&'a T),
            Err { name: &'a str, error: &'a Failure },
        }
        s.collect_seq(self.results.iter().map(|(name, r)| match r {
            Ok(v) => Entry::Ok(v),
            Err(error) => Entry::Err { name, error },
        }))
    }
}

impl Render for Each<LifecycleResult> {
    fn text(&self) -> String {
        let mut out = String::new();
        for r in self.results.iter().filter_map(|(_, r)| r.as_ref().ok()) {
            let by = r
                .ended_by
                .as_deref()
                .map(|b| format!(" (by {b})"))
                .unwrap_or_default();
            let timing = if r.stages.is_empty() {
                String::new()
            } else {
                format!(": {}", progress::stage_summary(&r.stages))
            };
            out.push_str(&format!("{} {}{by}{timing}\n", self.done, r.vm.name));
        }
        out
    }

    fn failures(&self) -> Vec<(&str, &Failure)> {
        self.results
            .iter()
            .filter_map(|(n, r)| r.as_ref().err().map(|f| (n.as_str(), f)))
            .collect()
    }
}

/// Runs `call` for every name in parallel (a connection each).
fn each<F>(env: &Env, names: Vec<String>, done: &'static str, call: F) -> anyhow::Result<Outcome>
where
    F: Fn(&mut Client, &str) -> Result<LifecycleResult, crate::client::ClientError>
        + Send
        + Sync
        + Clone
        + 'static,
{
    drop(env.client()?); // start the daemon once, before the fan-out
    let handles: Vec<_> = names
        .iter()
        .map(|n| {
            let (n, call, paths) = (n.clone(), call.clone(), env.paths.clone());
            std::thread::spawn(move || -> anyhow::Result<LifecycleResult> {
                let mut c = crate::autostart::connect(&paths, false)?;
                Ok(call(&mut c, &n)?)
            })
        })
        .collect();
    let mut results = Vec::new();
    for (name, h) in names.into_iter().zip(handles) {
        let r = h.join().map_err(|_| anyhow::anyhow!("worker panicked"))?;
        results.push((name, r.map_err(|e| Failure::from_error(&e))));
    }
    Ok(Outcome::of(Each { done, results }))
}

/// `vm delete`: what was deleted and what was not.
#[derive(Serialize)]
struct Deleted {
    deleted: Vec<String>,
    failed: Vec<NamedFailure>,
}

#[derive(Serialize)]
struct NamedFailure {
    name: String,
    error: Failure,
}

impl Render for Deleted {
    fn text(&self) -> String {
        self.deleted
            .iter()
            .map(|n| format!("deleted {n}\n"))
            .collect()
    }

    fn failures(&self) -> Vec<(&str, &Failure)> {
        self.failed
            .iter()
            .map(|f| (f.name.as_str(), &f.error))
            .collect()
    }
}

fn delete(env: &Env, names: Vec<String>, force: bool) -> anyhow::Result<Outcome> {
    let mut client = env.client()?;
    let mut r = Deleted {
        deleted: Vec::new(),
        failed: Vec::new(),
    };
    for name in names {
        match client.call::<Delete>(&DeleteParams {
            name: name.clone(),
            force,
        }) {
            Ok(_) => r.deleted.push(name),
            Err(e) => r.failed.push(NamedFailure {
                name,
                error: Failure::from_error(&e.into()),
            }),
        }
    }
    Ok(Outcome::of(r))
}

/// `vm prune`.
#[derive(Serialize)]
#[serde(transparent)]
struct Pruned {
    result: PruneResult,
    #[serde(skip)]
    declined: bool,
}

impl Render for Pruned {
    fn text(&self) -> String {
        if self.declined {
            "nothing deleted\n".into()
        } else if self.result.deleted.is_empty() {
            "no stopped VMs\n".into()
        } else {
            format!("deleted {}\n", self.result.deleted.join(", "))
        }
    }
}

fn prune(env: &Env, force: bool) -> anyhow::Result<Outcome> {
    let mut client = env.client()?;
    let nothing = |declined| {
        Ok(Outcome::of(Pruned {
            result: PruneResult { deleted: vec![] },
            declined,
        }))
    };
    if !force {
        let me = rustix::process::geteuid().as_raw();
        let stopped: Vec<String> = client
            .call::<List>(&ListParams { all: true })?
            .into_iter()
            .filter(|v| v.owner_uid == me && v.state.as_str() == "stopped")
            .map(|v| v.name)
            .collect();
        if stopped.is_empty() {
            return nothing(false);
        }
        if !std::io::stdin().is_terminal() {
            return Err(usage(format!(
                "refusing to delete {} VM(s) without confirmation: use -f",
                stopped.len()
            )));
        }
        eprint!(
            "delete {} stopped VM(s): {}? [y/N] ",
            stopped.len(),
            stopped.join(", ")
        );
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if !matches!(answer.trim(), "y" | "Y" | "yes") {
            return nothing(true);
        }
    }
    let result = client.call::<Prune>(&Empty {})?;
    Ok(Outcome::of(Pruned {
        result,
        declined: false,
    }))
}

/// `vm port add|rm|ls`: the VM's published ports afterwards.
#[derive(Serialize)]
#[serde(transparent)]
struct Published {
    #[serde(skip)]
    name: String,
    ports: Vec<PortMapping>,
}

impl Render for Published {
    fn text(&self) -> String {
        if self.ports.is_empty() {
            return format!("{}: no published ports\n", self.name);
        }
        let mut t = output::Table::new(&["HOST", "GUEST", "PROTO"]);
        for p in &self.ports {
            let host = match p.host_ip {
                Some(ip) => format!("{ip}:{}", p.host_port),
                None => format!("*:{}", p.host_port),
            };
            t.row(vec![host, p.guest_port.to_string(), p.proto.clone()]);
        }
        t.render()
    }
}

fn port(env: &Env, cmd: PortCmd) -> anyhow::Result<Outcome> {
    let mut c = env.client()?;
    let (name, ports) = match cmd {
        PortCmd::Add { name, spec } => {
            let r = c.call::<PortAdd>(&PortAddParams {
                name: name.clone(),
                port: spec,
            })?;
            (name, r)
        }
        PortCmd::Rm { name, port } => {
            let (p, proto) = port.split_once('/').unwrap_or((&port, "tcp"));
            let host_port = p
                .parse()
                .map_err(|_| usage(format!("{port:?}: expected HOST_PORT[/tcp|udp]")))?;
            let r = c.call::<PortRemove>(&PortRemoveParams {
                name: name.clone(),
                host_port,
                proto: proto.into(),
            })?;
            (name, r)
        }
        PortCmd::List { name } => {
            let r = c.call::<PortList>(&NameParams { name: name.clone() })?;
            (name, r)
        }
    };
    Ok(Outcome::of(Published { name, ports }))
}

/// `vm ls`: a table.
#[derive(Serialize)]
#[serde(transparent)]
struct VmTable(Vec<VmInfo>);

impl Render for VmTable {
    fn text(&self) -> String {
        let mut t = output::Table::new(&[
            "NAME", "STATE", "IMAGE", "VCPU", "MEMORY", "DISK", "PID", "UPTIME", "CREATED",
        ]);
        for v in &self.0 {
            t.row(vec![
                v.name.clone(),
                v.state.as_str().into(),
                v.image.clone(),
                v.vcpus.to_string(),
                output::size(v.memory_mib << 20),
                output::size(v.disk_bytes),
                v.pid.map_or("-".into(), |p| p.to_string()),
                v.uptime_secs.map_or("-".into(), output::age),
                output::ago(&v.created_at),
            ]);
        }
        t.render()
    }
}

/// `vm ls -q`: names, one a line, for `xargs` and `$(...)`.
#[derive(Serialize)]
#[serde(transparent)]
struct VmNames(Vec<String>);

impl Render for VmNames {
    fn text(&self) -> String {
        self.0.iter().map(|n| format!("{n}\n")).collect()
    }
}

fn list(env: &Env, a: ListArgs) -> anyhow::Result<Outcome> {
    let vms = env.client()?.call::<List>(&ListParams { all: a.all })?;
    Ok(if a.quiet {
        Outcome::of(VmNames(vms.into_iter().map(|v| v.name).collect()))
    } else {
        Outcome::of(VmTable(vms))
    })
}

/// A piece of a VM's log: the text as it is, or the chunk as JSON.
#[derive(Serialize)]
#[serde(transparent)]
pub struct LogPiece(pub LogChunk);

impl Render for LogPiece {
    fn text(&self) -> String {
        self.0.data.clone()
    }
}

/// How much of the end of a log a plain `logs` prints.
const DEFAULT_TAIL_BYTES: u64 = 64 * 1024;

fn logs(env: &Env, a: LogsArgs) -> anyhow::Result<Outcome> {
    let mut client = env.client()?;
    let source = if a.vmm {
        LogSource::Vmm
    } else {
        LogSource::Console
    };
    let name = a.name;
    let mut fetch = |offset: Option<u64>, tail_bytes: Option<u64>| {
        client.call::<Logs>(&VmLogsParams {
            name: name.clone(),
            source,
            offset,
            tail_bytes,
        })
    };
    let first = match a.tail {
        Some(n) => super::logtail::last_lines(&mut fetch, n)?,
        None => fetch(None, Some(DEFAULT_TAIL_BYTES))?,
    };
    if !a.follow {
        return Ok(Outcome::of(LogPiece(first)));
    }
    let mut chunk = first;
    loop {
        if !chunk.data.is_empty() {
            render::stream(&LogPiece(chunk.clone()), env.json)?;
        }
        let caught_up = chunk.next_offset == chunk.offset;
        if caught_up {
            std::thread::sleep(Duration::from_millis(250));
        }
        chunk = fetch(Some(chunk.next_offset), None)?;
    }
}

/// `vm health` and `vm ping`: exit status 1 when unhealthy.
#[derive(Serialize)]
#[serde(transparent)]
struct HealthView {
    h: VmHealth,
    #[serde(skip)]
    ping: bool,
}

impl Render for HealthView {
    fn text(&self) -> String {
        let h = &self.h;
        if self.ping {
            match h.latency_ms {
                Some(ms) if h.healthy => {
                    let what = match &h.agent {
                        Some(a) => format!("agent {}", a.agent_version),
                        None => h.vmm_state.clone().unwrap_or_else(|| "?".into()),
                    };
                    format!("{}: {what} ({}) in {ms:.2}ms\n", h.name, h.checked)
                }
                _ => format!("{}: no answer ({})\n", h.name, h.detail),
            }
        } else {
            format!(
                "{}: {} — {}\n",
                h.name,
                if h.healthy { "healthy" } else { "unhealthy" },
                h.detail
            )
        }
    }

    fn status(&self) -> u8 {
        u8::from(!self.h.healthy)
    }
}

fn health(env: &Env, name: String, ping: bool) -> anyhow::Result<Outcome> {
    let mut c = env.client()?;
    let h = if ping {
        c.call::<Ping>(&NameParams { name })?
    } else {
        c.call::<Health>(&NameParams { name })?
    };
    Ok(Outcome::of(HealthView { h, ping }))
}

/// `vm ports` as text: one row per socket, then the links.
pub fn ports_table(p: &VmPorts) -> String {
    if p.ports.is_empty() {
        return format!("{}: nothing listens in the guest\n", p.name);
    }
    let mut t = output::Table::new(&["PROTO", "ADDRESS", "PORT", "PROCESS", "ENDPOINT"]);
    for g in &p.ports {
        let process = match (&g.process, g.pid) {
            (Some(name), Some(pid)) => format!("{name} ({pid})"),
            (Some(name), None) => name.clone(),
            (None, Some(pid)) => format!("pid {pid}"),
            (None, None) => "-".into(),
        };
        t.row(vec![
            g.proto.clone(),
            g.address.clone(),
            g.port.to_string(),
            process,
            g.endpoint.clone().unwrap_or_else(|| "guest only".into()),
        ]);
    }
    let mut out = t.render();
    let mut urls: Vec<&str> = p.ports.iter().filter_map(|g| g.url.as_deref()).collect();
    urls.dedup();
    for u in urls {
        out.push_str(u);
        out.push('\n');
    }
    out
}

pub(crate) fn spec_line(vm: &VmInfo) -> String {
    format!(
        "{} vcpu, {} memory, {} disk, image {}, kernel {}, vmm {}",
        vm.vcpus,
        output::size(vm.memory_mib << 20),
        output::size(vm.disk_bytes),
        vm.image,
        vm.kernel,
        vm.vmm
    )
}

fn show(v: &VmInfo) -> String {
    let mut t = output::Table::new(&["FIELD", "VALUE"]);
    let mut row = |k: &str, v: String| t.row(vec![k.into(), v]);
    row("name", v.name.clone());
    row("id", v.id.clone());
    row("state", v.state.as_str().into());
    row("owner", format!("uid {}", v.owner_uid));
    row("spec", spec_line(v));
    row(
        "vmm",
        match v.pid {
            Some(p) => format!("{} (pid {p})", v.vmm),
            None => v.vmm.clone(),
        },
    );
    if let Some(a) = &v.accel {
        row(
            "accel",
            match a.as_str() {
                "tcg" => "tcg (software emulation: no usable KVM for QEMU here)".into(),
                other => other.into(),
            },
        );
    }
    if let Some(s) = &v.api_socket {
        row("api socket", s.clone());
    }
    if let Some(d) = &v.root_disk {
        row(
            "root disk",
            format!("{} ({}, {})", d.path, d.backend, output::size(d.size)),
        );
        if let Some(lower) = &d.lower {
            row(
                "root lower",
                format!("{lower} (the image's, read-only, shared)"),
            );
        }
        if let Some(note) = &d.note {
            row("root note", note.clone());
        }
    }
    if let Some(d) = &v.work_disk {
        row(
            "work disk",
            format!("{} ({})", d.path, output::size(d.size)),
        );
    }
    match &v.network {
        Some(n) => {
            row(
                "address",
                format!("{}/{} via {} ({})", n.ip, n.prefix, n.gateway, n.dns_name),
            );
            row("tap", format!("{} (mac {})", n.tap, n.mac));
            if !n.ports.is_empty() {
                row(
                    "ports",
                    n.ports
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                );
            }
        }
        None => row("network", "none".into()),
    }
    row("nat", if v.nat { "on" } else { "off" }.into());
    row("created", v.created_at.clone());
    if let Some(s) = &v.started_at {
        row("started", s.clone());
    }
    if let Some(u) = v.uptime_secs {
        row("uptime", output::age(u));
    }
    if !v.last_start.is_empty() {
        row("last start", progress::stage_summary(&v.last_start));
    }
    if let Some(e) = &v.last_exit {
        row("last exit", format!("{} by {}: {}", e.at, e.by, e.detail));
    }
    row("console log", v.console_log.clone());
    row("vmm log", v.vmm_log.clone());
    t.render()
}

#[cfg(test)]
mod tests {
    use banger_proto::methods::vm::{GuestPort, VmPorts};
    use clap::Parser;

    use super::{ports_table, VmCmd};
    use crate::{Cli, Command};

    fn vm(args: &[&str]) -> VmCmd {
        let mut full = vec!["banger", "vm"];
        full.extend_from_slice(args);
        match Cli::try_parse_from(full).unwrap().command {
            Command::Vm(c) => c,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_says_which_failed() {
        use super::{Each, Failure};
        use crate::error::Kind;
        use banger_proto::ErrorKind;
        let each: Each<serde_json::Value> = Each {
            done: "stopped",
            results: vec![
                ("a".into(), Ok(serde_json::json!({"vm": {"name": "a"}}))),
                (
                    "b".into(),
                    Err(Failure::new(
                        Kind::Rpc(ErrorKind::InvalidState),
                        "not running",
                    )),
                ),
                (
                    "c".into(),
                    Err(Failure::new(Kind::Rpc(ErrorKind::NotFound), "gone")),
                ),
            ],
        };
        assert_eq!(
            serde_json::to_value(&each).unwrap(),
            serde_json::json!([
                {"vm": {"name": "a"}},
                {"name": "b", "error": {"kind": "invalid_state", "message": "not running", "hint": null, "data": null}},
                {"name": "c", "error": {"kind": "not_found", "message": "gone", "hint": null, "data": null}},
            ])
        );
    }

    #[test]
    fn partial_failure_exits_with_the_first_failure() {
        use super::{Deleted, Failure, NamedFailure};
        use crate::error::Kind;
        use crate::render::{exit_of, Render};
        use banger_proto::ErrorKind;
        let ok = Deleted {
            deleted: vec!["a".into()],
            failed: vec![],
        };
        assert_eq!(exit_of(&ok), 0);
        let part = Deleted {
            deleted: vec!["a".into()],
            failed: vec![NamedFailure {
                name: "b".into(),
                error: Failure::new(Kind::Rpc(ErrorKind::Busy), "busy"),
            }],
        };
        assert_eq!(exit_of(&part), 6);
        assert_eq!(part.text(), "deleted a\n");
        assert_eq!(part.failures()[0].0, "b");
    }

    #[test]
    fn docker_style_flags() {
        match vm(&["ls", "-q", "-a"]) {
            VmCmd::List(a) => assert!(a.quiet && a.all),
            other => panic!("{other:?}"),
        }
        match vm(&["stop", "-t", "7", "a"]) {
            VmCmd::Stop(a) => assert_eq!((a.timeout, a.names), (Some(7), vec!["a".to_string()])),
            other => panic!("{other:?}"),
        }
        match vm(&["stop", "--timeout", "0", "a"]) {
            VmCmd::Stop(a) => assert_eq!(a.timeout, Some(0)),
            other => panic!("{other:?}"),
        }
        match vm(&["logs", "box", "--tail", "20", "-f"]) {
            VmCmd::Logs(a) => assert_eq!((a.tail, a.follow), (Some(20), true)),
            other => panic!("{other:?}"),
        }
        match vm(&["logs", "box", "-n", "3"]) {
            VmCmd::Logs(a) => assert_eq!(a.tail, Some(3)),
            other => panic!("{other:?}"),
        }
    }

    fn port(
        proto: &str,
        address: &str,
        port: u16,
        process: Option<&str>,
        reach: bool,
    ) -> GuestPort {
        GuestPort {
            proto: proto.into(),
            address: address.into(),
            port,
            pid: process.map(|_| 400),
            process: process.map(str::to_string),
            endpoint: reach.then(|| format!("box.vm:{port}")),
            url: (reach && proto.starts_with("tcp")).then(|| format!("http://box.vm:{port}/")),
        }
    }

    #[test]
    fn ports_table_rows_and_links() {
        let p = VmPorts {
            name: "box".into(),
            dns_name: Some("box.vm".into()),
            ip: Some("172.16.213.2".parse().unwrap()),
            ports: vec![
                port("tcp", "0.0.0.0", 22, Some("sshd"), true),
                port("tcp6", "::", 22, Some("sshd"), true),
                port("udp", "0.0.0.0", 53, None, true),
                port("tcp", "127.0.0.1", 5432, Some("postgres"), false),
            ],
        };
        let text = ports_table(&p);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("PROTO"), "{text}");
        assert!(
            lines[1].contains("sshd (400)") && lines[1].contains("box.vm:22"),
            "{text}"
        );
        assert!(
            lines[3].contains("53") && lines[3].contains("box.vm:53"),
            "{text}"
        );
        assert!(
            lines[4].contains("postgres (400)") && lines[4].ends_with("guest only"),
            "{text}"
        );
        // One link per reachable TCP port, duplicates (tcp + tcp6) folded.
        assert_eq!(&lines[5..], ["http://box.vm:22/"], "{text}");

        let empty = VmPorts { ports: vec![], ..p };
        assert_eq!(ports_table(&empty), "box: nothing listens in the guest\n");
    }
}
