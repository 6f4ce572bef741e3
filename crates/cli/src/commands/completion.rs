//! `banger completion SHELL`.

use std::process::ExitCode;

use clap::CommandFactory;

pub fn run(shell: clap_complete::Shell) -> anyhow::Result<ExitCode> {
    let mut cmd = crate::Cli::command();
    clap_complete::generate(shell, &mut cmd, "banger", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}
