//! Running a build tool through [`crate::proc`]: its own process group,
//! stdout and stderr read line by line (for progress and for the tail an
//! error shows), stopped when the build is cancelled (SIGTERM to the group,
//! SIGKILL after [`TERM_GRACE`]), and whatever the group still holds when the
//! leader exits killed before the leader is reaped (mmdebstrap's children
//! must not outlive it).

use std::collections::VecDeque;
use std::io;
use std::process::{Command, ExitStatus};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::proc::{Cmd, Out, ProcError};

use super::{ImageBuildError, Result};

/// How long a cancelled tool gets to clean up after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(10);
/// Lines of tool output kept for errors.
const LOG_TAIL_LINES: usize = 40;
/// Bytes of each stream [`crate::proc`] keeps; the lines shown come from
/// `on_line`, so this only bounds memory.
const STREAM_TAIL: usize = 16 << 10;

/// Runs `cmd` in its own process group with stdout and stderr read line by
/// line (`on_line` sees each), stopped when `cancel` is set. Returns the
/// exit status and the last [`LOG_TAIL_LINES`] lines of both streams.
pub(super) fn run_tool(
    cmd: Command,
    tool: &str,
    cancel: &AtomicBool,
    on_line: &mut dyn FnMut(&str),
) -> Result<(ExitStatus, String)> {
    let mut tail: VecDeque<String> = VecDeque::new();
    let result = {
        let mut keep = |line: &str| {
            on_line(line);
            if tail.len() == LOG_TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line.trim_end().to_string());
        };
        let mut cmd = Cmd::from(cmd);
        cmd.own_group()
            .cancel(cancel)
            .term_grace(TERM_GRACE)
            .stdout(Out::Tail(STREAM_TAIL))
            .stderr(Out::Tail(STREAM_TAIL))
            .on_line(&mut keep);
        cmd.output()
    };
    match result {
        Ok(done) => Ok((done.status, Vec::from(tail).join("\n"))),
        Err(ProcError::Cancelled { .. }) => Err(ImageBuildError::Cancelled),
        Err(ProcError::Spawn { source, .. }) => Err(ImageBuildError::Io {
            context: format!("cannot run {tool}"),
            source,
        }),
        Err(ProcError::Io { source, .. }) => Err(ImageBuildError::Io {
            context: format!("cannot wait for {tool}"),
            source,
        }),
        // No deadline is set and `output` returns failures as a status.
        Err(e @ (ProcError::Timeout { .. } | ProcError::Failed { .. })) => {
            Err(ImageBuildError::Io {
                context: format!("{tool} did not finish"),
                source: io::Error::other(e.to_string()),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::sync::atomic::Ordering;
    use std::time::Instant;

    use super::*;

    #[test]
    fn run_tool_cancel_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let script = format!(
            "sleep 300 & echo $! > {}; echo started; wait",
            pidfile.display()
        );
        let cancel = AtomicBool::new(false);
        let started = Instant::now();
        let mut seen = Vec::new();
        let mut sh = Command::new("sh");
        sh.args(["-c", &script]);
        let r = run_tool(sh, "sh", &cancel, &mut |l| {
            seen.push(l.to_string());
            cancel.store(true, Ordering::Relaxed);
        });
        assert!(matches!(r, Err(ImageBuildError::Cancelled)), "{r:?}");
        assert_eq!(seen, ["started"]);
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid = fs::read_to_string(&pidfile).unwrap().trim().to_string();
        // The background sleep got the signal too: gone, or a zombie about
        // to be reaped by init.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => break,
                Ok(stat) if stat.contains(") Z ") => break,
                Ok(stat) => {
                    assert!(Instant::now() < deadline, "sleep survived: {stat}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        }
        // A normal run: status and the tail of the output.
        let mut sh = Command::new("sh");
        sh.args(["-c", "echo one; echo two >&2; exit 3"]);
        let (status, tail) = run_tool(sh, "sh", &AtomicBool::new(false), &mut |_| {}).unwrap();
        assert_eq!(status.code(), Some(3));
        let mut lines: Vec<&str> = tail.lines().collect();
        lines.sort();
        assert_eq!(lines, ["one", "two"]);
    }
}
