//! Detached guest commands: `vm run -d` / `vm exec -d` start the command in
//! the guest and return; `banger vm attach NAME [ID]` follows its output and
//! ends with its exit status.
//!
//! In the guest, under `/root/.banger/run-<id>`: a new session (`setsid`,
//! so the end of the SSH session does not end it) runs the same line `vm
//! exec` would, with stdout and stderr into `run-<id>.log` (one stream,
//! interleaved as written) and stdin from /dev/null; the log, the boot id
//! (`.boot`) and the session leader's pid (`.pid`) exist before the start
//! returns, so an attach right after it finds the run; the exit status (128+N
//! for signal N) to `.status` when it ends (written beside and renamed, so
//! it is never read half-written). Attach looks once (done, running in this
//! boot, or lost), then prints the log: `tail -f --pid` while it runs, which
//! ends once the command has ended and its last output is out. The files
//! stay on the work disk, so a finished run can be attached again.

use std::process::Stdio;

use anyhow::Context;
use banger_proto::ErrorKind;
use serde::Serialize;

use super::ssh::shell_quote as q;
use super::Env;
use crate::error::refuse;
use crate::render::{Outcome, Render};

const DIR: &str = "/root/.banger";

/// `vm run -d` / `vm exec -d`'s answer.
#[derive(Serialize)]
struct Detached {
    name: String,
    run_id: String,
    /// The log in the guest.
    log: String,
}

impl Render for Detached {
    fn text(&self) -> String {
        format!(
            "started run {id} in {name} (output: {name}:{log}); follow it with: banger vm attach {name} {id}\n",
            id = self.run_id,
            name = self.name,
            log = self.log
        )
    }
}

/// The guest line that starts `line` (a `vm exec` line) detached as run `id`.
fn start_script(id: &str, line: &str) -> String {
    let b = format!("{DIR}/run-{id}");
    format!(
        "set -e; mkdir -p {DIR}; : > {b}.log; cat /proc/sys/kernel/random/boot_id > {b}.boot; \
         setsid sh -c 'echo $$ > \"$1.pid\"; \
         sh -c \"$2\" >> \"$1.log\" 2>&1 < /dev/null; echo $? > \"$1.status.tmp\"; mv -f \"$1.status.tmp\" \"$1.status\"' \
         sh {b} {line} > /dev/null 2>&1 < /dev/null & echo $! > {b}.pid",
        b = q(&b),
        line = q(line),
    )
}

/// Starts `line` detached in VM `name`.
pub(crate) fn start(env: &Env, name: &str, line: &str) -> anyhow::Result<Outcome> {
    let id = banger_core::ids::new_id()[..8].to_string();
    let mut ssh = super::ssh::ssh_to(env, name)?;
    ssh.arg("-T").arg("--").arg(start_script(&id, line));
    ssh.stdin(Stdio::null());
    let st = ssh.status().context("cannot run ssh")?;
    if !st.success() {
        anyhow::bail!("starting the command in {name} failed ({st})");
    }
    Ok(Outcome::of(Detached {
        name: name.into(),
        run_id: id.clone(),
        log: format!("{DIR}/run-{id}.log"),
    }))
}

/// The guest line that says where run `id` (none: the latest) is:
/// `missing`, or its base path then `done N`, `running PID` or `lost`.
fn query_script(id: Option<&str>) -> String {
    let pick = match id {
        Some(id) => format!("b={}", q(&format!("{DIR}/run-{id}"))),
        None => format!("l=$(ls -t {DIR}/run-*.log 2>/dev/null | head -n 1); b=${{l%.log}}"),
    };
    format!(
        "{pick}; if [ -z \"$b\" ] || [ ! -e \"$b.log\" ]; then echo missing; exit 0; fi; echo \"$b\"; \
         if [ -s \"$b.status\" ]; then echo \"done $(cat \"$b.status\")\"; \
         elif [ \"$(cat \"$b.boot\" 2>/dev/null)\" = \"$(cat /proc/sys/kernel/random/boot_id)\" ] \
              && kill -0 \"$(cat \"$b.pid\")\" 2>/dev/null; then echo \"running $(cat \"$b.pid\")\"; \
         else echo lost; fi"
    )
}

/// What [`query_script`] printed.
#[derive(Debug, PartialEq)]
enum State {
    Missing,
    Done { base: String, status: u8 },
    Running { base: String, pid: u32 },
    Lost { base: String },
}

fn parse_state(out: &str) -> anyhow::Result<State> {
    let mut lines = out.lines();
    let first = lines.next().unwrap_or("");
    if first == "missing" {
        return Ok(State::Missing);
    }
    let base = first.to_string();
    if !base.starts_with(&format!("{DIR}/run-")) {
        anyhow::bail!("unexpected answer from the guest: {out:?}");
    }
    let second = lines.next().unwrap_or("");
    let bad = || anyhow::anyhow!("unexpected answer from the guest: {out:?}");
    Ok(match second.split_once(' ') {
        Some(("done", n)) => State::Done {
            base,
            status: n.trim().parse::<u16>().map_err(|_| bad())?.min(255) as u8,
        },
        Some(("running", p)) => State::Running {
            base,
            pid: p.trim().parse().map_err(|_| bad())?,
        },
        _ if second == "lost" => State::Lost { base },
        _ => return Err(bad()),
    })
}

/// `banger vm attach NAME [ID]`: the run's output (all of it, then as it
/// comes) and its exit status. Ctrl-C leaves the command running.
pub fn attach(env: &Env, name: &str, id: Option<&str>) -> anyhow::Result<Outcome> {
    if let Some(id) = id {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(refuse(
                ErrorKind::InvalidParams,
                format!("{id:?} is not a run id"),
            ));
        }
    }
    let out = guest_output(env, name, &query_script(id), "asking about its runs")?;
    let state = parse_state(&String::from_utf8_lossy(&out))?;
    let follow = match &state {
        State::Missing => {
            return Err(refuse(
                ErrorKind::NotFound,
                match id {
                    Some(id) => format!("no run {id} in vm {name}"),
                    None => format!("no detached runs in vm {name} (start one with vm run -d or vm exec -d)"),
                },
            ))
        }
        State::Done { base, status } => format!("cat -- {b}.log; exit {status}", b = q(base)),
        State::Running { base, pid } => format!(
            "tail -n +1 -f --pid={pid} -- {b}.log; \
             if [ -s {b}.status ]; then exit \"$(cat {b}.status)\"; fi; \
             echo 'the command ended without a status (the guest stopped?)' >&2; exit 255",
            b = q(base)
        ),
        State::Lost { base } => format!(
            "cat -- {b}.log; echo 'the command did not finish: the guest restarted or it was killed' >&2; exit 255",
            b = q(base)
        ),
    };
    if env.json {
        return report(env, name, state);
    }
    let mut ssh = super::ssh::ssh_to(env, name)?;
    ssh.arg("-T").arg("--").arg(follow);
    let _ctrl_c = crate::progress::Interrupt::install()?;
    let st = ssh.status().context("cannot run ssh")?;
    Ok(Outcome::Streamed(super::exit_status(st)))
}

/// The stdout of `script` run in VM `name` without a terminal (stderr goes
/// to ours); a failure names `what` was being done.
fn guest_output(env: &Env, name: &str, script: &str, what: &str) -> anyhow::Result<Vec<u8>> {
    let mut ssh = super::ssh::ssh_to(env, name)?;
    ssh.arg("-T").arg("--").arg(script);
    let out = ssh
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run ssh")?;
    if !out.status.success() {
        anyhow::bail!("{what} in vm {name} failed ({})", out.status);
    }
    Ok(out.stdout)
}

/// `vm attach --json`: where the run is and its log so far, without
/// following it (a script polls; a person attaches).
#[derive(Serialize)]
struct RunReport {
    name: String,
    run_id: String,
    /// `running`, `done` or `lost` (the guest restarted or the run was killed).
    state: &'static str,
    /// Only when done.
    exit_code: Option<u8>,
    log: String,
}

impl Render for RunReport {
    fn text(&self) -> String {
        format!("{} {} {}\n{}", self.name, self.run_id, self.state, self.log)
    }
}

fn report(env: &Env, name: &str, state: State) -> anyhow::Result<Outcome> {
    let (base, state, exit_code) = match state {
        State::Missing => unreachable!("a missing run was refused before"),
        State::Done { base, status } => (base, "done", Some(status)),
        State::Running { base, .. } => (base, "running", None),
        State::Lost { base } => (base, "lost", None),
    };
    let log = guest_output(
        env,
        name,
        &format!("cat -- {}.log", q(&base)),
        "reading the log",
    )?;
    Ok(Outcome::of(RunReport {
        name: name.into(),
        run_id: base
            .strip_prefix(&format!("{DIR}/run-"))
            .unwrap_or(&base)
            .to_string(),
        state,
        exit_code,
        log: String::from_utf8_lossy(&log).into_owned(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states() {
        assert_eq!(parse_state("missing\n").unwrap(), State::Missing);
        assert_eq!(
            parse_state("/root/.banger/run-ab12\ndone 7\n").unwrap(),
            State::Done {
                base: "/root/.banger/run-ab12".into(),
                status: 7
            }
        );
        assert_eq!(
            parse_state("/root/.banger/run-ab12\nrunning 42\n").unwrap(),
            State::Running {
                base: "/root/.banger/run-ab12".into(),
                pid: 42
            }
        );
        assert!(parse_state("/etc/x\ndone 1\n").is_err());
        assert!(parse_state("/root/.banger/run-a\nweird\n").is_err());
    }

    /// The start and query lines, run by this host's shell in a scratch
    /// directory standing in for /root/.banger.
    #[test]
    fn start_then_query_locally() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().display().to_string();
        let local = |s: String| s.replace(DIR, &dir);
        let run = |script: String| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(script)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        run(local(start_script(
            "r1",
            "echo out; echo err >&2; sleep 1; exit 7",
        )));
        let q1 = run(local(query_script(Some("r1"))));
        assert!(q1.contains("\nrunning "), "{q1}");
        std::thread::sleep(std::time::Duration::from_millis(2500));
        let q2 = run(local(query_script(None)));
        assert_eq!(q2, format!("{dir}/run-r1\ndone 7\n"));
        assert_eq!(
            std::fs::read_to_string(t.path().join("run-r1.log")).unwrap(),
            "out\nerr\n"
        );
        assert_eq!(run(local(query_script(Some("nope")))), "missing\n");
    }
}
