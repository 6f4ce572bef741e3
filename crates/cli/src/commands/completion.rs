//! `banger completion SHELL`: the script on stdout, or with `--json`
//! `{"shell", "script"}`.

use clap::CommandFactory;
use serde::Serialize;

use super::Env;
use crate::render::{Outcome, Render};

#[derive(Serialize)]
struct Completion {
    shell: String,
    script: String,
}

impl Render for Completion {
    fn text(&self) -> String {
        self.script.clone()
    }
}

pub fn run(_env: &Env, shell: clap_complete::Shell) -> anyhow::Result<Outcome> {
    let mut cmd = crate::Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "banger", &mut script);
    Ok(Outcome::of(Completion {
        shell: shell.to_string(),
        script: String::from_utf8(script)?,
    }))
}
