//! `banger daemon status|start|stop|logs`.

use std::time::{Duration, Instant};

use anyhow::bail;
use banger_proto::methods::daemon::{LogChunk, Logs, LogsParams, Shutdown, Status, StatusInfo};
use banger_proto::methods::Empty;
use clap::Subcommand;
use serde::Serialize;

use super::Env;
use crate::autostart;
use crate::client::Client;
use crate::output;
use crate::render::{self, Outcome, Render};

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
        /// Only the last N lines.
        #[arg(short = 'n', long, value_name = "N", conflicts_with = "tail_bytes")]
        tail: Option<usize>,
        /// How much of the end of the log to print first.
        #[arg(long, default_value_t = 16 * 1024, value_name = "BYTES")]
        tail_bytes: u64,
    },
}

pub fn run(env: &Env, cmd: DaemonCmd) -> anyhow::Result<Outcome> {
    match cmd {
        DaemonCmd::Status | DaemonCmd::Start => status(env),
        DaemonCmd::Stop => stop(env),
        DaemonCmd::Logs {
            follow,
            tail,
            tail_bytes,
        } => logs(env, follow, tail, tail_bytes),
    }
}

/// `daemon status`.
#[derive(Serialize)]
#[serde(transparent)]
struct StatusView(StatusInfo);

impl Render for StatusView {
    fn text(&self) -> String {
        let st = &self.0;
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
        t.render()
    }
}

fn status(env: &Env) -> anyhow::Result<Outcome> {
    Ok(Outcome::of(StatusView(
        env.client()?.call::<Status>(&Empty {})?,
    )))
}

/// `daemon stop`: `{"stopped": bool, "pid": N|null}` (false: none ran).
#[derive(Serialize)]
struct Stopped {
    stopped: bool,
    pid: Option<u32>,
}

impl Render for Stopped {
    fn text(&self) -> String {
        match self.pid {
            Some(pid) => format!("bangerd (pid {pid}) stopped\n"),
            None => "bangerd is not running\n".into(),
        }
    }
}

fn stop(env: &Env) -> anyhow::Result<Outcome> {
    let socket = env.paths.socket();
    let mut client = match autostart::connect(&env.paths, false) {
        Ok(c) => c,
        Err(_) => {
            return Ok(Outcome::of(Stopped {
                stopped: false,
                pid: None,
            }))
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
    Ok(Outcome::of(Stopped {
        stopped: true,
        pid: Some(pid),
    }))
}

/// A piece of the daemon's log.
#[derive(Serialize)]
#[serde(transparent)]
struct LogPiece(LogChunk);

impl Render for LogPiece {
    fn text(&self) -> String {
        self.0.data.clone()
    }
}

fn logs(env: &Env, follow: bool, tail: Option<usize>, tail_bytes: u64) -> anyhow::Result<Outcome> {
    let mut client = env.client()?;
    let mut fetch = |offset: Option<u64>, tail_bytes: Option<u64>| {
        client.call::<Logs>(&LogsParams { offset, tail_bytes })
    };
    let mut chunk = match tail {
        Some(n) => super::logtail::last_lines(&mut fetch, n)?,
        None => fetch(None, Some(tail_bytes))?,
    };
    if chunk.journald {
        // The journal has it; journalctl prints it (as JSON lines with --json).
        let mut cmd = std::process::Command::new("journalctl");
        cmd.args(["-u", "bangerd", "--no-pager"]);
        if let Some(n) = tail {
            cmd.arg(format!("--lines={n}"));
        }
        if follow {
            cmd.arg("-f");
        }
        if env.json {
            cmd.args(["-o", "json"]);
        }
        let status = cmd.status()?;
        return Ok(Outcome::Streamed(crate::commands::exit_status(status)));
    }
    if !follow {
        // Everything up to the end, as one piece (more than one call when
        // --tail-bytes asks for more than the daemon returns at once).
        let mut all = chunk;
        while tail.is_none() {
            let next = fetch(Some(all.next_offset), None)?;
            if next.data.is_empty() {
                break;
            }
            all.data.push_str(&next.data);
            all.next_offset = next.next_offset;
        }
        return Ok(Outcome::of(LogPiece(all)));
    }
    loop {
        if !chunk.data.is_empty() {
            render::stream(&LogPiece(chunk.clone()), env.json)?;
        }
        if chunk.next_offset == chunk.offset {
            std::thread::sleep(Duration::from_millis(300));
        }
        chunk = fetch(Some(chunk.next_offset), None)?;
    }
}
