//! `banger vm ...`: the VM lifecycle.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use banger_core::size;
use banger_proto::methods::op::StageInfo;
use banger_proto::methods::vm::{
    CreateBegin, CreateParams, Delete, DeleteParams, Health, Kill, KillParams, LifecycleResult,
    List, ListParams, LogSource, Logs, Ping, PortAdd, PortAddParams, PortList, PortMapping,
    PortRemove, PortRemoveParams, Ports, Prune, Restart, Set, SetParams, Show, Start, Stats, Stop,
    StopParams, VmInfo, VmLogsParams, VmPorts,
};
use banger_proto::methods::{Empty, NameParams};
use clap::Subcommand;
use serde_json::json;

use super::Env;
use crate::client::Client;
use crate::{output, progress};

#[derive(Debug, Subcommand)]
pub enum VmCmd {
    /// Create a VM (and start it, unless --no-start).
    Create {
        /// Name (default: a generated one like brave-otter).
        #[arg(long)]
        name: Option<String>,
        /// Image (default: your default image, see `banger image promote`).
        #[arg(long)]
        image: Option<String>,
        /// Virtual CPUs.
        #[arg(long = "vcpu", value_name = "N")]
        vcpus: Option<u32>,
        /// Memory, e.g. 2G or 512M (a bare number is MiB).
        #[arg(long, value_name = "SIZE")]
        memory: Option<String>,
        /// Size of the work disk mounted at /root, e.g. 8G.
        #[arg(long, value_name = "SIZE")]
        disk_size: Option<String>,
        /// Make the disks but do not boot.
        #[arg(long)]
        no_start: bool,
        /// Never build an image first (by default, when no image is
        /// registered, debian-bookworm minimal is built).
        #[arg(long)]
        no_build: bool,
        /// Let the guest reach the outside network (NAT).
        #[arg(long)]
        nat: bool,
        /// Publish a guest port on the host: [HOST_IP:]HOST_PORT:GUEST_PORT[/tcp|udp] (repeatable).
        #[arg(short = 'p', long = "publish", value_name = "SPEC", value_parser = parse_port)]
        ports: Vec<PortMapping>,
        /// The VMM: firecracker, qemu, or auto (Firecracker where it can boot guests, else
        /// QEMU; `banger doctor` says which). Default: config [vm] vmm, else auto.
        #[arg(long, value_name = "firecracker|qemu|auto", value_parser = ["firecracker", "qemu", "auto"])]
        vmm: Option<String>,
    },
    /// Boot stopped VMs.
    Start {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Stop VMs: Ctrl-Alt-Del, then SIGTERM, then SIGKILL.
    Stop {
        #[arg(required = true)]
        names: Vec<String>,
        /// Seconds to wait for the guest before SIGTERM (default: config, 10).
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
    /// Stop, then start.
    Restart {
        #[arg(required = true)]
        names: Vec<String>,
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
    /// Send a signal to the VMs' VMM now (for when stop hangs).
    Kill {
        #[arg(required = true)]
        names: Vec<String>,
        /// Signal name or number.
        #[arg(short, long, default_value = "KILL")]
        signal: String,
    },
    /// Delete VMs and their disks (irreversible).
    #[command(visible_alias = "rm")]
    Delete {
        #[arg(required = true)]
        names: Vec<String>,
        /// Also delete running VMs (they are killed).
        #[arg(short, long)]
        force: bool,
    },
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
    /// List running VMs (-a: all).
    #[command(visible_aliases = ["ps", "ls"])]
    List {
        #[arg(short, long)]
        all: bool,
    },
    /// Show one VM.
    Show { name: String },
    /// The guest's serial console (or, with --vmm, the VMM's own log).
    Logs {
        name: String,
        #[arg(short, long)]
        follow: bool,
        #[arg(long)]
        vmm: bool,
    },
    /// State, uptime, VMM pid, RSS and CPU, VMM metrics.
    Stats { name: String },
    /// Is the VM healthy?
    Health { name: String },
    /// Open a shell in the VM, or run a command: banger vm ssh NAME [-- CMD...]
    Ssh {
        name: String,
        #[arg(last = true)]
        command: Vec<String>,
    },
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

pub fn run(env: &Env, cmd: VmCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        VmCmd::Create {
            name,
            image,
            vcpus,
            memory,
            disk_size,
            no_start,
            no_build,
            nat,
            ports,
            vmm,
        } => create(
            env,
            no_build,
            CreateParams {
                ports,
                name,
                image,
                vcpus,
                memory_mib: memory
                    .as_deref()
                    .map(size::parse_mib)
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
                disk_bytes: disk_size
                    .as_deref()
                    .map(size::parse)
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
                no_start,
                nat,
                vmm,
            },
        ),
        VmCmd::Start { names } => each(env, names, "started", |c, n| {
            c.call::<Start>(&NameParams { name: n.into() })
        }),
        VmCmd::Stop { names, timeout } => each(env, names, "stopped", move |c, n| {
            c.call::<Stop>(&StopParams {
                name: n.into(),
                timeout_secs: timeout,
            })
        }),
        VmCmd::Restart { names, timeout } => each(env, names, "restarted", move |c, n| {
            c.call::<Restart>(&StopParams {
                name: n.into(),
                timeout_secs: timeout,
            })
        }),
        VmCmd::Kill { names, signal } => each(env, names, "signalled", move |c, n| {
            c.call::<Kill>(&KillParams {
                name: n.into(),
                signal: Some(signal.clone()),
            })
        }),
        VmCmd::Delete { names, force } => delete(env, names, force),
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
                memory_mib: memory
                    .as_deref()
                    .map(size::parse_mib)
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
                disk_bytes: disk_size
                    .as_deref()
                    .map(size::parse)
                    .transpose()
                    .map_err(anyhow::Error::msg)?,
            })?;
            if env.json {
                output::json(&vm)?;
            } else {
                println!("{}: {}", vm.name, spec_line(&vm));
            }
            Ok(ExitCode::SUCCESS)
        }
        VmCmd::Port(p) => port(env, p),
        VmCmd::List { all } => list(env, all),
        VmCmd::Show { name } => {
            let vm = env.client()?.call::<Show>(&NameParams { name })?;
            if env.json {
                output::json(&vm)?;
            } else {
                show(&vm);
            }
            Ok(ExitCode::SUCCESS)
        }
        VmCmd::Logs { name, follow, vmm } => logs(env, name, follow, vmm),
        VmCmd::Stats { name } => {
            let s = env.client()?.call::<Stats>(&NameParams { name })?;
            if env.json {
                output::json(&s)?;
            } else {
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
                t.print();
            }
            Ok(ExitCode::SUCCESS)
        }
        VmCmd::Health { name } => health(env, name, false),
        VmCmd::Ssh { name, command } => super::ssh::vm_ssh(env, &name, &command),
        VmCmd::Ping { name } => health(env, name, true),
        VmCmd::Ports { name } => {
            let p = env.client()?.call::<Ports>(&NameParams { name })?;
            if env.json {
                output::json(&p)?;
            } else {
                print!("{}", ports_table(&p));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
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

fn spec_line(vm: &VmInfo) -> String {
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

fn stages_line(stages: &[StageInfo]) -> String {
    stages
        .iter()
        .map(|s| {
            format!(
                "{} {}",
                s.name,
                output::millis(s.duration_ms.unwrap_or(0.0))
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn create(env: &Env, no_build: bool, params: CreateParams) -> anyhow::Result<ExitCode> {
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
    let vm: VmInfo = serde_json::from_value(op.result.clone().unwrap_or_default())
        .context("unexpected create result")?;
    if env.json {
        output::json(&json!({ "vm": vm, "operation": { "id": op.id, "stages": op.stages } }))?;
    } else {
        let total: f64 = op.stages.iter().filter_map(|s| s.duration_ms).sum();
        println!(
            "created vm {} ({}) in {}: {}",
            vm.name,
            vm.state.as_str(),
            output::millis(total),
            stages_line(&op.stages)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `call` for every name in parallel (a connection each), prints one
/// line per VM in the order given; fails if any failed.
fn each<F>(env: &Env, names: Vec<String>, done: &str, call: F) -> anyhow::Result<ExitCode>
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
    let mut failed = false;
    for (name, h) in names.iter().zip(handles) {
        match h.join().map_err(|_| anyhow::anyhow!("worker panicked"))? {
            Ok(r) => {
                if !env.json {
                    let by = r
                        .ended_by
                        .as_deref()
                        .map(|b| format!(" (by {b})"))
                        .unwrap_or_default();
                    let timing = if r.stages.is_empty() {
                        String::new()
                    } else {
                        format!(": {}", stages_line(&r.stages))
                    };
                    println!("{done} {}{by}{timing}", r.vm.name);
                }
                results.push(json!(r));
            }
            Err(e) => {
                failed = true;
                crate::report_for(name, &e);
                results.push(json!({ "name": name, "error": format!("{e:#}") }));
            }
        }
    }
    if env.json {
        output::json(&results)?;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn delete(env: &Env, names: Vec<String>, force: bool) -> anyhow::Result<ExitCode> {
    let mut client = env.client()?;
    let mut failed = false;
    for name in &names {
        match client.call::<Delete>(&DeleteParams {
            name: name.clone(),
            force,
        }) {
            Ok(_) => {
                if !env.json {
                    println!("deleted {name}");
                }
            }
            Err(e) => {
                failed = true;
                crate::report_for(name, &e.into());
            }
        }
    }
    if env.json {
        output::json(&json!({ "deleted": names, "failed": failed }))?;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn prune(env: &Env, force: bool) -> anyhow::Result<ExitCode> {
    let mut client = env.client()?;
    if !force {
        let me = rustix::process::geteuid().as_raw();
        let stopped: Vec<String> = client
            .call::<List>(&ListParams { all: true })?
            .into_iter()
            .filter(|v| v.owner_uid == me && v.state.as_str() == "stopped")
            .map(|v| v.name)
            .collect();
        if stopped.is_empty() {
            println!("no stopped VMs");
            return Ok(ExitCode::SUCCESS);
        }
        if !std::io::stdin().is_terminal() {
            bail!(
                "refusing to delete {} VM(s) without confirmation: use -f",
                stopped.len()
            );
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
            println!("nothing deleted");
            return Ok(ExitCode::SUCCESS);
        }
    }
    let r = client.call::<Prune>(&Empty {})?;
    if env.json {
        output::json(&r)?;
    } else if r.deleted.is_empty() {
        println!("no stopped VMs");
    } else {
        println!("deleted {}", r.deleted.join(", "));
    }
    Ok(ExitCode::SUCCESS)
}

fn port(env: &Env, cmd: PortCmd) -> anyhow::Result<ExitCode> {
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
                .map_err(|_| anyhow::anyhow!("{port:?}: expected HOST_PORT[/tcp|udp]"))?;
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
    if env.json {
        output::json(&ports)?;
    } else if ports.is_empty() {
        println!("{name}: no published ports");
    } else {
        let mut t = output::Table::new(&["HOST", "GUEST", "PROTO"]);
        for p in &ports {
            let host = match p.host_ip {
                Some(ip) => format!("{ip}:{}", p.host_port),
                None => format!("*:{}", p.host_port),
            };
            t.row(vec![host, p.guest_port.to_string(), p.proto.clone()]);
        }
        t.print();
    }
    Ok(ExitCode::SUCCESS)
}

fn list(env: &Env, all: bool) -> anyhow::Result<ExitCode> {
    let vms = env.client()?.call::<List>(&ListParams { all })?;
    if env.json {
        output::json(&vms)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = output::Table::new(&[
        "NAME", "STATE", "IMAGE", "VCPU", "MEMORY", "DISK", "PID", "UPTIME", "CREATED",
    ]);
    for v in &vms {
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
    t.print();
    Ok(ExitCode::SUCCESS)
}

fn show(v: &VmInfo) {
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
        row("last start", stages_line(&v.last_start));
    }
    if let Some(e) = &v.last_exit {
        row("last exit", format!("{} by {}: {}", e.at, e.by, e.detail));
    }
    row("console log", v.console_log.clone());
    row("vmm log", v.vmm_log.clone());
    t.print();
}

fn logs(env: &Env, name: String, follow: bool, vmm: bool) -> anyhow::Result<ExitCode> {
    let mut client = env.client()?;
    let source = if vmm {
        LogSource::Vmm
    } else {
        LogSource::Console
    };
    let mut offset = None;
    let mut out = std::io::stdout();
    loop {
        let chunk = client.call::<Logs>(&VmLogsParams {
            name: name.clone(),
            source,
            offset,
            tail_bytes: if offset.is_none() {
                Some(64 * 1024)
            } else {
                None
            },
        })?;
        out.write_all(chunk.data.as_bytes())?;
        out.flush()?;
        let caught_up = chunk.next_offset == chunk.offset;
        offset = Some(chunk.next_offset);
        if caught_up {
            if !follow {
                break;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn health(env: &Env, name: String, ping: bool) -> anyhow::Result<ExitCode> {
    let mut c = env.client()?;
    let h = if ping {
        c.call::<Ping>(&NameParams { name })?
    } else {
        c.call::<Health>(&NameParams { name })?
    };
    if env.json {
        output::json(&h)?;
    } else if ping {
        match h.latency_ms {
            Some(ms) if h.healthy => {
                let what = match &h.agent {
                    Some(a) => format!("agent {}", a.agent_version),
                    None => h.vmm_state.clone().unwrap_or_else(|| "?".into()),
                };
                println!("{}: {what} ({}) in {ms:.2}ms", h.name, h.checked)
            }
            _ => println!("{}: no answer ({})", h.name, h.detail),
        }
    } else {
        println!(
            "{}: {} — {}",
            h.name,
            if h.healthy { "healthy" } else { "unhealthy" },
            h.detail
        );
    }
    Ok(if h.healthy {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use banger_proto::methods::vm::{GuestPort, VmPorts};

    use super::ports_table;

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
