//! `banger kernel import|build|list|show|rm`.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use banger_proto::methods::kernel::{
    BuildBegin, BuildParams, BuildResult, Delete, ImportBegin, ImportParams, KernelInfo, List, Show,
};
use banger_proto::methods::{Empty, NameParams};
use banger_proto::FdRef;
use clap::Subcommand;
use serde_json::json;

use super::{open_input, Env};
use crate::{output, progress};

#[derive(Debug, Subcommand)]
pub enum KernelCmd {
    /// Import a kernel: an ELF vmlinux, or a bzImage/vmlinuz (the ELF is extracted).
    Import {
        /// The kernel file.
        path: PathBuf,
        /// Name to register it under.
        #[arg(long)]
        name: String,
        /// An initrd to boot it with.
        #[arg(long)]
        initrd: Option<PathBuf>,
    },
    /// Build a vmlinux from Debian's linux-source-6.1 (or a kernel tree) with
    /// banger's config fragment (or yours), and register it. Cached by source
    /// and fragment: building the same inputs again takes seconds.
    Build {
        /// Name to register it under (default: banger-<major>-<minor> of the
        /// source, e.g. banger-6-1).
        #[arg(long)]
        name: Option<String>,
        /// An unpacked, clean kernel tree, built out of tree (root only: its
        /// Makefiles run as root).
        #[arg(long, value_name = "DIR", conflicts_with = "debian_source")]
        source: Option<PathBuf>,
        /// Debian's linux-source-6.1 package (the default).
        #[arg(long)]
        debian_source: bool,
        /// A Kconfig fragment merged onto x86_64_defconfig + kvm_guest.config
        /// (default: banger's own, built into bangerd).
        #[arg(long = "config", value_name = "FRAGMENT")]
        config: Option<PathBuf>,
        /// Parallel make jobs (default: [build] jobs, else the number of CPUs).
        #[arg(long, value_name = "N")]
        jobs: Option<u32>,
        /// If a kernel of that name exists with other content, replace it
        /// (refused while images use it) instead of failing.
        #[arg(long)]
        replace: bool,
    },
    /// List kernels.
    #[command(visible_alias = "ls")]
    List,
    /// Show one kernel.
    Show { name: String },
    /// Remove a kernel no image uses.
    #[command(visible_alias = "delete")]
    Rm { name: String },
}

pub fn run(env: &Env, cmd: KernelCmd) -> anyhow::Result<ExitCode> {
    let mut client = env.client()?;
    match cmd {
        KernelCmd::Import { path, name, initrd } => {
            let interrupt = progress::Interrupt::install()?;
            let kernel = open_input(&path, "kernel")?;
            let initrd_file = initrd
                .as_deref()
                .map(|p| open_input(p, "initrd"))
                .transpose()?;
            let mut fds = vec![kernel.as_fd()];
            if let Some(f) = &initrd_file {
                fds.push(f.as_fd());
            }
            let begun = client.call_with_fds::<ImportBegin>(
                &ImportParams {
                    name,
                    kernel: FdRef { fd: 0 },
                    initrd: initrd_file.as_ref().map(|_| FdRef { fd: 1 }),
                    source: Some(path.display().to_string()),
                },
                &fds,
            )?;
            let op = progress::follow(&mut client, &begun.operation_id, env.json, &interrupt)?;
            let k: KernelInfo = serde_json::from_value(op.result.clone().unwrap_or_default())?;
            if env.json {
                output::json(&json!({
                    "kernel": k,
                    "operation": { "id": op.id, "stages": op.stages },
                }))?;
            } else {
                println!(
                    "imported kernel {} ({}, {}{}) in {}",
                    k.name,
                    k.format,
                    output::size(k.vmlinux.size),
                    k.release
                        .as_deref()
                        .map(|r| format!(", {r}"))
                        .unwrap_or_default(),
                    progress::stage_summary(&op)
                );
            }
        }
        KernelCmd::Build {
            name,
            source,
            debian_source: _,
            config,
            jobs,
            replace,
        } => {
            let interrupt = progress::Interrupt::install()?;
            let source_dir = source.as_deref().map(open_dir).transpose()?;
            let fragment = config
                .as_deref()
                .map(|p| open_input(p, "config fragment"))
                .transpose()?;
            let mut fds = Vec::new();
            let mut source_ref = None;
            let mut config_ref = None;
            for (file, slot) in [(&source_dir, &mut source_ref), (&fragment, &mut config_ref)] {
                if let Some(f) = file {
                    *slot = Some(FdRef {
                        fd: fds.len() as u32,
                    });
                    fds.push(f.as_fd());
                }
            }
            let params = BuildParams {
                name,
                source: source_ref,
                config: config_ref,
                jobs,
                replace,
                source_path: source.map(|p| p.display().to_string()),
                config_path: config.map(|p| p.display().to_string()),
            };
            let begun = client.call_with_fds::<BuildBegin>(&params, &fds)?;
            let op = progress::follow(&mut client, &begun.operation_id, env.json, &interrupt)?;
            let r: BuildResult = serde_json::from_value(op.result.clone().unwrap_or_default())?;
            if env.json {
                output::json(&json!({
                    "kernel": r.kernel,
                    "cached": r.cached,
                    "reused": r.reused,
                    "cache_key": r.cache_key,
                    "operation": { "id": op.id, "stages": op.stages },
                }))?;
            } else {
                let how = match (r.reused, r.cached) {
                    (true, _) => "already registered",
                    (false, true) => "from the build cache",
                    (false, false) => "built",
                };
                println!(
                    "kernel {} ({}, {}) {how} in {}",
                    r.kernel.name,
                    r.kernel.release.as_deref().unwrap_or("-"),
                    output::size(r.kernel.vmlinux.size),
                    progress::stage_summary(&op)
                );
            }
        }
        KernelCmd::List => {
            let ks = client.call::<List>(&Empty {})?;
            if env.json {
                output::json(&ks)?;
            } else {
                let mut t =
                    output::Table::new(&["NAME", "RELEASE", "FORMAT", "SIZE", "INITRD", "CREATED"]);
                for k in &ks {
                    t.row(vec![
                        k.name.clone(),
                        k.release.clone().unwrap_or_else(|| "-".into()),
                        k.format.clone(),
                        output::size(k.vmlinux.size),
                        if k.initrd.is_some() { "yes" } else { "no" }.into(),
                        output::ago(&k.created_at),
                    ]);
                }
                t.print();
            }
        }
        KernelCmd::Show { name } => {
            let k = client.call::<Show>(&NameParams { name })?;
            if env.json {
                output::json(&k)?;
            } else {
                show(&k);
            }
        }
        KernelCmd::Rm { name } => {
            client.call::<Delete>(&NameParams { name: name.clone() })?;
            if env.json {
                output::json(&json!({ "deleted": name }))?;
            } else {
                println!("deleted kernel {name}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show(k: &KernelInfo) {
    let mut t = output::Table::new(&["FIELD", "VALUE"]);
    t.row(vec!["name".into(), k.name.clone()]);
    t.row(vec!["id".into(), k.id.clone()]);
    t.row(vec!["owner".into(), format!("uid {}", k.owner_uid)]);
    t.row(vec!["format".into(), k.format.clone()]);
    t.row(vec![
        "release".into(),
        k.release.clone().unwrap_or_else(|| "-".into()),
    ]);
    t.row(vec!["vmlinux".into(), k.vmlinux.path.clone()]);
    t.row(vec!["size".into(), output::size(k.vmlinux.size)]);
    t.row(vec!["sha256".into(), k.vmlinux.sha256.clone()]);
    if let Some(i) = &k.initrd {
        t.row(vec![
            "initrd".into(),
            format!("{} ({})", i.path, output::size(i.size)),
        ]);
    }
    t.row(vec!["created".into(), k.created_at.clone()]);
    t.row(vec!["used by".into(), list_or_dash(&k.used_by)]);
    t.print();
}

pub fn list_or_dash(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(", ")
    }
}

/// Opens a kernel tree as a directory descriptor, with the user's rights.
fn open_dir(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use anyhow::Context;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(path)
        .with_context(|| format!("cannot open the source tree {}", path.display()))
}
