//! Running a build tool: its own process group, stdout and stderr read line
//! by line (for progress and for the tail an error shows), cancellation
//! polled, and the whole group killed when the leader exits or the build is
//! cancelled (mmdebstrap's children must not outlive it).

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{io_ctx, ImageBuildError, Result};

/// How often a running tool is polled for exit, output and cancellation.
const POLL: Duration = Duration::from_millis(100);
/// How long a cancelled tool gets to clean up after SIGTERM before SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(10);
/// Lines of tool output kept for errors.
const LOG_TAIL_LINES: usize = 40;

/// Runs `cmd` in its own process group with stdout and stderr read line by
/// line (`on_line` sees each), polling for `cancel`. Returns the exit status
/// and the last [`LOG_TAIL_LINES`] lines. Whatever the group still holds
/// when the leader exits is killed before the leader is reaped.
pub(super) fn run_tool(
    cmd: &mut Command,
    tool: &str,
    cancel: &AtomicBool,
    on_line: &mut dyn FnMut(&str),
) -> Result<(ExitStatus, String)> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().map_err(io_ctx(format!("cannot run {tool}")))?;
    let (tx, rx) = mpsc::channel::<String>();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(pipe);
            let mut buf = Vec::new();
            while matches!(r.read_until(b'\n', &mut buf), Ok(n) if n > 0) {
                let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                buf.clear();
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut keep = |line: String, on_line: &mut dyn FnMut(&str)| {
        on_line(&line);
        if tail.len() == LOG_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    };
    let mut pipes_open = true;
    loop {
        if pipes_open {
            match rx.recv_timeout(POLL) {
                Ok(line) => {
                    keep(line, on_line);
                    while let Ok(line) = rx.try_recv() {
                        keep(line, on_line);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => pipes_open = false,
            }
        } else {
            std::thread::sleep(POLL);
        }
        if cancel.load(Ordering::Relaxed) {
            terminate_group(&mut child);
            return Err(ImageBuildError::Cancelled);
        }
        if leader_exited(&child) {
            break;
        }
    }
    kill_group(&child);
    let status = child
        .wait()
        .map_err(io_ctx(format!("cannot wait for {tool}")))?;
    // Lines still in the pipes (the group is gone, so they close soon).
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        keep(line, on_line);
    }
    Ok((status, Vec::from(tail).join("\n")))
}

/// Whether the child has exited, without reaping it (`WNOWAIT`): while it is
/// a zombie its pid still names its process group and no other.
fn leader_exited(child: &Child) -> bool {
    // SAFETY: siginfo_t is plain old data; waitid fills it in.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pid and a writable siginfo_t.
    let r = unsafe {
        libc::waitid(
            libc::P_PID,
            child.id(),
            &mut info,
            libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
        )
    };
    // SAFETY: reading si_pid of a siginfo_t waitid filled in (0 if nothing).
    r == 0 && unsafe { info.si_pid() } != 0
}

fn signal_group(child: &Child, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

/// SIGKILL to the group; the leader must not be reaped yet.
fn kill_group(child: &Child) {
    signal_group(child, rustix::process::Signal::Kill);
}

/// Cancel: SIGTERM to the group (mmdebstrap cleans up on it), SIGKILL after
/// [`TERM_GRACE`], then reap the leader.
fn terminate_group(child: &mut Child) {
    signal_group(child, rustix::process::Signal::Term);
    let deadline = Instant::now() + TERM_GRACE;
    while !leader_exited(child) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_group(child);
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use std::fs;

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
        let r = run_tool(
            Command::new("sh").args(["-c", &script]),
            "sh",
            &cancel,
            &mut |l| {
                seen.push(l.to_string());
                cancel.store(true, Ordering::Relaxed);
            },
        );
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
        let (status, tail) = run_tool(
            Command::new("sh").args(["-c", "echo one; echo two >&2; exit 3"]),
            "sh",
            &AtomicBool::new(false),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(status.code(), Some(3));
        let mut lines: Vec<&str> = tail.lines().collect();
        lines.sort();
        assert_eq!(lines, ["one", "two"]);
    }
}
