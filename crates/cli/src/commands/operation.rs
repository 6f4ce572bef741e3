//! `banger operation list|show|wait|cancel`.

use std::process::ExitCode;

use banger_proto::methods::daemon::{OperationsList, OperationsListParams};
use banger_proto::methods::op::{Cancel, OpIdParams, OperationInfo, Status};
use clap::Subcommand;

use super::Env;
use crate::{output, progress};

#[derive(Debug, Subcommand)]
pub enum OperationCmd {
    /// Running and recent operations (newest first).
    #[command(visible_alias = "ls")]
    List {
        /// Include all finished operations, not just the last hour's.
        #[arg(short, long)]
        all: bool,
    },
    /// One operation with its stages.
    Show { id: String },
    /// Follow an operation until it ends.
    Wait { id: String },
    /// Cancel a running operation; what it made is removed.
    Cancel { id: String },
}

pub fn run(env: &Env, cmd: OperationCmd) -> anyhow::Result<ExitCode> {
    let mut client = env.client()?;
    match cmd {
        OperationCmd::List { all } => {
            let ops = client.call::<OperationsList>(&OperationsListParams { all })?;
            if env.json {
                output::json(&ops)?;
            } else {
                let mut t =
                    output::Table::new(&["ID", "KIND", "TARGET", "STATE", "STAGE", "CREATED"]);
                for o in &ops {
                    t.row(vec![
                        banger_core::ids::short(&o.id).to_string(),
                        o.kind.clone(),
                        o.target.clone(),
                        o.state.as_str().to_string(),
                        o.stage.clone(),
                        output::ago(&o.created_at),
                    ]);
                }
                t.print();
            }
        }
        OperationCmd::Show { id } => show(env, &client.call::<Status>(&OpIdParams { id })?)?,
        OperationCmd::Wait { id } => {
            let interrupt = progress::Interrupt::install()?;
            let info = progress::follow(&mut client, &id, env.json, &interrupt)?;
            show(env, &info)?;
        }
        OperationCmd::Cancel { id } => {
            let info = client.call::<Cancel>(&OpIdParams { id })?;
            if env.json {
                output::json(&info)?;
            } else {
                println!("cancelling {} ({} {})", info.id, info.kind, info.target);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn show(env: &Env, o: &OperationInfo) -> anyhow::Result<()> {
    if env.json {
        return output::json(o);
    }
    let mut t = output::Table::new(&["FIELD", "VALUE"]);
    t.row(vec!["id".into(), o.id.clone()]);
    t.row(vec!["kind".into(), o.kind.clone()]);
    t.row(vec!["target".into(), o.target.clone()]);
    t.row(vec!["state".into(), o.state.as_str().into()]);
    t.row(vec!["stage".into(), o.stage.clone()]);
    t.row(vec!["stages".into(), progress::stage_summary(o)]);
    t.row(vec!["created".into(), o.created_at.clone()]);
    if let Some(f) = &o.finished_at {
        t.row(vec!["finished".into(), f.clone()]);
    }
    if let Some(e) = &o.error {
        t.row(vec!["error".into(), e.message.clone()]);
    }
    t.print();
    Ok(())
}
