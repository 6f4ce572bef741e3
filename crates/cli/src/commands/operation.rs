//! `banger operation list|show|wait|cancel`.

use banger_proto::methods::daemon::{OperationsList, OperationsListParams};
use banger_proto::methods::op::{Cancel, OpIdParams, OperationInfo, Status};
use clap::Subcommand;
use serde::Serialize;

use super::Env;
use crate::render::{self, Outcome, Render};
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

pub fn run(env: &Env, cmd: OperationCmd) -> anyhow::Result<Outcome> {
    let mut client = env.client()?;
    Ok(match cmd {
        OperationCmd::List { all } => Outcome::of(OpTable(
            client.call::<OperationsList>(&OperationsListParams { all })?,
        )),
        OperationCmd::Show { id } => {
            Outcome::of(OpShow(client.call::<Status>(&OpIdParams { id })?))
        }
        OperationCmd::Wait { id } => {
            let interrupt = progress::Interrupt::install()?;
            Outcome::of(OpShow(progress::follow(
                &mut client,
                &id,
                env.json,
                &interrupt,
            )?))
        }
        OperationCmd::Cancel { id } => {
            let info = client.call::<Cancel>(&OpIdParams { id })?;
            let text = format!("cancelling {} ({} {})", info.id, info.kind, info.target);
            Outcome::of(render::said(info, text))
        }
    })
}

/// `operation list`.
#[derive(Serialize)]
#[serde(transparent)]
struct OpTable(Vec<OperationInfo>);

impl Render for OpTable {
    fn text(&self) -> String {
        let mut t = output::Table::new(&["ID", "KIND", "TARGET", "STATE", "STAGE", "CREATED"]);
        for o in &self.0 {
            t.row(vec![
                banger_core::ids::short(&o.id).to_string(),
                o.kind.clone(),
                o.target.clone(),
                o.state.as_str().to_string(),
                o.stage.clone(),
                output::ago(&o.created_at),
            ]);
        }
        t.render()
    }
}

/// `operation show|wait`.
#[derive(Serialize)]
#[serde(transparent)]
struct OpShow(OperationInfo);

impl Render for OpShow {
    fn text(&self) -> String {
        let o = &self.0;
        let mut t = output::Table::new(&["FIELD", "VALUE"]);
        t.row(vec!["id".into(), o.id.clone()]);
        t.row(vec!["kind".into(), o.kind.clone()]);
        t.row(vec!["target".into(), o.target.clone()]);
        t.row(vec!["state".into(), o.state.as_str().into()]);
        t.row(vec!["stage".into(), o.stage.clone()]);
        t.row(vec!["stages".into(), progress::stage_summary(&o.stages)]);
        t.row(vec!["created".into(), o.created_at.clone()]);
        if let Some(f) = &o.finished_at {
            t.row(vec!["finished".into(), f.clone()]);
        }
        if let Some(e) = &o.error {
            t.row(vec!["error".into(), e.message.clone()]);
        }
        t.render()
    }
}
