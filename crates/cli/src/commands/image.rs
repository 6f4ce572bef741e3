//! `banger image register|list|show|delete|promote`.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;

use banger_proto::methods::image::{
    Delete, ImageInfo, List, Promote, RegisterBegin, RegisterParams, Show,
};
use banger_proto::methods::{Empty, NameParams};
use banger_proto::FdRef;
use clap::Subcommand;
use serde_json::json;

use super::kernel::list_or_dash;
use super::{open_input, Env};
use crate::{output, progress};

#[derive(Debug, Subcommand)]
pub enum ImageCmd {
    /// Register an ext4 root filesystem (and optional /root seed) with a kernel.
    Register {
        #[arg(long)]
        name: String,
        /// The root filesystem, an ext4 image.
        #[arg(long)]
        rootfs: PathBuf,
        /// Name of a registered kernel (see `banger kernel list`).
        #[arg(long)]
        kernel: String,
        /// An ext4 image whose content seeds each VM's /root disk.
        #[arg(long)]
        work_seed: Option<PathBuf>,
        /// What the guest offers: ssh, agent (comma-separated).
        #[arg(long, value_delimiter = ',')]
        features: Vec<String>,
    },
    /// List images.
    #[command(visible_alias = "ls")]
    List,
    /// Show one image.
    Show { name: String },
    /// Delete an image no VM uses.
    #[command(visible_alias = "rm")]
    Delete { name: String },
    /// Make an image the default for `vm create` (root: for everyone).
    Promote { name: String },
}

pub fn run(env: &Env, cmd: ImageCmd) -> anyhow::Result<ExitCode> {
    let mut client = env.client()?;
    match cmd {
        ImageCmd::Register {
            name,
            rootfs,
            kernel,
            work_seed,
            features,
        } => {
            let interrupt = progress::Interrupt::install()?;
            let root = open_input(&rootfs, "rootfs")?;
            let seed = work_seed
                .as_deref()
                .map(|p| open_input(p, "work seed"))
                .transpose()?;
            let mut fds = vec![root.as_fd()];
            if let Some(f) = &seed {
                fds.push(f.as_fd());
            }
            let begun = client.call_with_fds::<RegisterBegin>(
                &RegisterParams {
                    name,
                    kernel,
                    rootfs: FdRef { fd: 0 },
                    work_seed: seed.as_ref().map(|_| FdRef { fd: 1 }),
                    rootfs_source: Some(rootfs.display().to_string()),
                    work_seed_source: work_seed.map(|p| p.display().to_string()),
                    features,
                },
                &fds,
            )?;
            let op = progress::follow(&mut client, &begun.operation_id, env.json, &interrupt)?;
            let img: ImageInfo = serde_json::from_value(op.result.clone().unwrap_or_default())?;
            if env.json {
                output::json(&json!({
                    "image": img,
                    "operation": { "id": op.id, "stages": op.stages },
                }))?;
            } else {
                println!(
                    "registered image {} (rootfs {}, kernel {}) in {}",
                    img.name,
                    output::size(img.rootfs.size),
                    img.kernel,
                    progress::stage_summary(&op)
                );
            }
        }
        ImageCmd::List => {
            let imgs = client.call::<List>(&Empty {})?;
            if env.json {
                output::json(&imgs)?;
            } else {
                let mut t = output::Table::new(&[
                    "NAME",
                    "KERNEL",
                    "ROOTFS",
                    "WORK SEED",
                    "DEFAULT",
                    "CREATED",
                ]);
                for i in &imgs {
                    t.row(vec![
                        i.name.clone(),
                        i.kernel.clone(),
                        output::size(i.rootfs.size),
                        i.work_seed
                            .as_ref()
                            .map_or("-".into(), |s| output::size(s.size)),
                        if i.default { "*" } else { "" }.into(),
                        output::ago(&i.created_at),
                    ]);
                }
                t.print();
            }
        }
        ImageCmd::Show { name } => {
            let i = client.call::<Show>(&NameParams { name })?;
            if env.json {
                output::json(&i)?;
            } else {
                show(&i);
            }
        }
        ImageCmd::Delete { name } => {
            client.call::<Delete>(&NameParams { name: name.clone() })?;
            if env.json {
                output::json(&json!({ "deleted": name }))?;
            } else {
                println!("deleted image {name}");
            }
        }
        ImageCmd::Promote { name } => {
            let i = client.call::<Promote>(&NameParams { name })?;
            if env.json {
                output::json(&i)?;
            } else {
                println!("image {} is now the default", i.name);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show(i: &ImageInfo) {
    let mut t = output::Table::new(&["FIELD", "VALUE"]);
    t.row(vec!["name".into(), i.name.clone()]);
    t.row(vec!["id".into(), i.id.clone()]);
    t.row(vec!["owner".into(), format!("uid {}", i.owner_uid)]);
    t.row(vec!["kernel".into(), i.kernel.clone()]);
    t.row(vec![
        "rootfs".into(),
        format!("{} ({})", i.rootfs.path, output::size(i.rootfs.size)),
    ]);
    t.row(vec!["rootfs sha256".into(), i.rootfs.sha256.clone()]);
    if let Some(s) = &i.work_seed {
        t.row(vec![
            "work seed".into(),
            format!("{} ({})", s.path, output::size(s.size)),
        ]);
    }
    t.row(vec![
        "default".into(),
        if i.default { "yes" } else { "no" }.into(),
    ]);
    t.row(vec!["created".into(), i.created_at.clone()]);
    t.row(vec!["used by".into(), list_or_dash(&i.used_by)]);
    t.print();
}
