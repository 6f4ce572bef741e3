//! `banger daemon status|start|stop|logs`.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use banger_proto::methods::daemon::{Logs, LogsParams, Shutdown, Status};
use banger_proto::methods::Empty;
use clap::Subcommand;

use super::Env;
use crate::autostart;
use crate::client::Client;
use crate::output;

#[derive(Debug, Subcommand)]
pub enum DaemonCmd {
    /// Show the daemon's version, pid, uptime and paths (starts it if needed).
    Status,
    /// Start the daemon if it is not running.
    Start,
    /// Stop the daemon. Running VMs keep running.
    Stop,
    /// Print the daemon's log.
    Logs {
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// How much of the end of the log to print first.
        #[arg(long, default_value_t = 16 * 1024, value_name = "BYTES")]
        tail_bytes: u64,
    },
}

pub fn run(env: &Env, cmd: DaemonCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        DaemonCmd::Status | DaemonCmd::Start => status(env),
        DaemonCmd::Stop => stop(env),
        DaemonCmd::Logs { follow, tail_bytes } => logs(env, follow, tail_bytes),
    }
}

fn status(env: &Env) -> anyhow::Result<ExitCode> {
    let st = env.client()?.call::<Status>(&Empty {})?;
    if env.json {
        output::json(&st)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = output::Table::new(&["FIELD", "VALUE"]);
    for (k, v) in [
        ("version", st.version.clone()),
        ("protocol", st.protocol.to_string()),
        ("pid", st.pid.to_string()),
        ("uptime", output::age(st.uptime_secs)),
        ("operations", st.operations_running.to_string()),
        ("socket", st.paths.socket.clone()),
        ("state", st.paths.state.clone()),
        ("cache", st.paths.cache.clone()),
        ("config", st.paths.config.clone()),
        ("log", format!("{} ({})", st.paths.log, st.log_target)),
    ] {
        t.row(vec![k.to_string(), v]);
    }
    t.print();
    Ok(ExitCode::SUCCESS)
}

fn stop(env: &Env) -> anyhow::Result<ExitCode> {
    let socket = env.paths.socket();
    let mut client = match autostart::connect(&env.paths, false) {
        Ok(c) => c,
        Err(_) => {
            println!("bangerd is not running");
            return Ok(ExitCode::SUCCESS);
        }
    };
    let pid = client.call::<Status>(&Empty {})?.pid;
    client.call::<Shutdown>(&Empty {})?;
    // Done when the socket stops answering (the daemon removes it on exit).
    let deadline = Instant::now() + Duration::from_secs(20);
    while Client::connect_raw(&socket).is_ok() {
        if Instant::now() > deadline {
            bail!("bangerd (pid {pid}) is still answering after 20s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The socket is gone once the daemon stops serving; wait for the process too.
    while rustix::process::test_kill_process(rustix::process::Pid::from_raw(pid as i32).unwrap())
        .is_ok()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("bangerd (pid {pid}) stopped");
    Ok(ExitCode::SUCCESS)
}

fn logs(env: &Env, follow: bool, tail_bytes: u64) -> anyhow::Result<ExitCode> {
    let mut client = env.client()?;
    let mut chunk = client.call::<Logs>(&LogsParams {
        offset: None,
        tail_bytes: Some(tail_bytes),
    })?;
    if chunk.journald {
        let mut cmd = std::process::Command::new("journalctl");
        cmd.args(["-u", "bangerd", "--no-pager"]);
        if follow {
            cmd.arg("-f");
        }
        let status = cmd.status()?;
        return Ok(if status.success() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let mut out = std::io::stdout();
    loop {
        out.write_all(chunk.data.as_bytes())?;
        out.flush()?;
        let caught_up = chunk.next_offset == chunk.offset;
        if caught_up && !follow {
            break;
        }
        if caught_up {
            std::thread::sleep(Duration::from_millis(300));
        }
        let next = chunk.next_offset;
        chunk = client.call::<Logs>(&LogsParams {
            offset: Some(next),
            tail_bytes: None,
        })?;
        if !follow && chunk.data.is_empty() {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}
