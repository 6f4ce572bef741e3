//! `banger kernel import|build|list|show|rm`.

use std::os::fd::AsFd;
use std::path::PathBuf;

use banger_proto::methods::kernel::{
    BuildBegin, BuildParams, BuildResult, Delete, ImportBegin, ImportParams, KernelInfo, List, Show,
};
use banger_proto::methods::{Empty, NameParams};
use banger_proto::FdRef;
use clap::Subcommand;
use serde::Serialize;
use serde_json::json;

use super::{open_input, Env};
use crate::client::Client;
use crate::progress::{OpResult, OpSummary};
use crate::render::{Outcome, Render};
use crate::{output, progress, render};

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
    /// Import a kernel bundle made by `kernel bundle` (checked first).
    Pull {
        /// The bundle, FILE.tar.zst.
        bundle: PathBuf,
        /// Name to register it under (default: the name in the bundle).
        #[arg(long)]
        name: Option<String>,
    },
    /// Write a kernel as one file to share (manifest.json and vmlinux in a
    /// tar.zst); `banger kernel pull FILE.tar.zst` imports it.
    Bundle {
        name: String,
        /// The bundle to write (replaced if it exists).
        #[arg(short = 'o', long = "output", value_name = "FILE.tar.zst")]
        output: PathBuf,
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
        /// A Kconfig fragment merged onto allnoconfig
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

pub fn run(env: &Env, cmd: KernelCmd) -> anyhow::Result<Outcome> {
    let mut client = env.client()?;
    Ok(match cmd {
        KernelCmd::Import { path, name, initrd } => {
            let kernel = open_input(&path, "kernel")?;
            let initrd_file = initrd
                .as_deref()
                .map(|p| open_input(p, "initrd"))
                .transpose()?;
            Outcome::of(import(
                env,
                &mut client,
                name,
                &kernel,
                initrd_file.as_ref(),
                path.display().to_string(),
            )?)
        }
        KernelCmd::Pull { bundle, name } => {
            super::bundle::import_kernel(env, &mut client, &bundle, name)?
        }
        KernelCmd::Bundle { name, output } => super::bundle::write(
            env,
            &mut client,
            banger_core::bundle::Kind::Kernel,
            name,
            &output,
        )?,
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
            let r: BuildResult = op.result_of::<banger_proto::methods::op::KernelBuild>()?;
            Outcome::of(Built {
                kernel: r.kernel,
                cached: r.cached,
                reused: r.reused,
                cache_key: r.cache_key,
                operation: OpSummary::of(&op),
            })
        }
        KernelCmd::List => Outcome::of(KernelTable(client.call::<List>(&Empty {})?)),
        KernelCmd::Show { name } => {
            Outcome::of(KernelShow(client.call::<Show>(&NameParams { name })?))
        }
        KernelCmd::Rm { name } => {
            client.call::<Delete>(&NameParams { name: name.clone() })?;
            let text = format!("deleted kernel {name}");
            Outcome::of(render::said(json!({ "deleted": name }), text))
        }
    })
}

/// `kernel import`: the kernel and the operation that made it.
#[derive(Serialize)]
pub(super) struct Imported {
    pub(super) kernel: KernelInfo,
    operation: OpSummary,
}

/// `kernel import` of `kernel` (descriptor 0) and `initrd` (1), followed to
/// its end.
pub(super) fn import(
    env: &Env,
    client: &mut Client,
    name: String,
    kernel: &std::fs::File,
    initrd: Option<&std::fs::File>,
    source: String,
) -> anyhow::Result<Imported> {
    let interrupt = progress::Interrupt::install()?;
    let mut fds = vec![kernel.as_fd()];
    if let Some(f) = initrd {
        fds.push(f.as_fd());
    }
    let begun = client.call_with_fds::<ImportBegin>(
        &ImportParams {
            name,
            kernel: FdRef { fd: 0 },
            initrd: initrd.map(|_| FdRef { fd: 1 }),
            source: Some(source),
        },
        &fds,
    )?;
    let op = progress::follow(client, &begun.operation_id, env.json, &interrupt)?;
    Ok(Imported {
        kernel: op.result_of::<banger_proto::methods::op::KernelImport>()?,
        operation: OpSummary::of(&op),
    })
}

impl Render for Imported {
    fn text(&self) -> String {
        let k = &self.kernel;
        format!(
            "imported kernel {} ({}, {}{}) in {}\n",
            k.name,
            k.format,
            output::size(k.vmlinux.size),
            k.release
                .as_deref()
                .map(|r| format!(", {r}"))
                .unwrap_or_default(),
            progress::stage_summary(&self.operation.stages)
        )
    }
}

/// `kernel build`.
#[derive(Serialize)]
struct Built {
    kernel: KernelInfo,
    cached: bool,
    reused: bool,
    cache_key: String,
    operation: OpSummary,
}

impl Render for Built {
    fn text(&self) -> String {
        let how = match (self.reused, self.cached) {
            (true, _) => "already registered",
            (false, true) => "from the build cache",
            (false, false) => "built",
        };
        format!(
            "kernel {} ({}, {}) {how} in {}\n",
            self.kernel.name,
            self.kernel.release.as_deref().unwrap_or("-"),
            output::size(self.kernel.vmlinux.size),
            progress::stage_summary(&self.operation.stages)
        )
    }
}

/// `kernel list`.
#[derive(Serialize)]
#[serde(transparent)]
struct KernelTable(Vec<KernelInfo>);

impl Render for KernelTable {
    fn text(&self) -> String {
        let mut t = output::Table::new(&["NAME", "RELEASE", "FORMAT", "SIZE", "INITRD", "CREATED"]);
        for k in &self.0 {
            t.row(vec![
                k.name.clone(),
                k.release.clone().unwrap_or_else(|| "-".into()),
                k.format.clone(),
                output::size(k.vmlinux.size),
                if k.initrd.is_some() { "yes" } else { "no" }.into(),
                output::ago(&k.created_at),
            ]);
        }
        t.render()
    }
}

/// `kernel show`.
#[derive(Serialize)]
#[serde(transparent)]
struct KernelShow(KernelInfo);

impl Render for KernelShow {
    fn text(&self) -> String {
        let k = &self.0;
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
        t.render()
    }
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
