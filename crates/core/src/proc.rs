//! One way to run a program: every child process banger starts (host tools,
//! `make`, `tar`, `--version` probes, the VMMs) is spawned, watched, captured,
//! cancelled and killed here, and every failure is one [`ProcError`] that
//! names the program and carries its exit status and the tail of its stderr.
//!
//! A [`Cmd`] wraps a [`std::process::Command`] (so callers keep its builder
//! for arguments, environment and `pre_exec`) and adds:
//!
//! - **where the child runs**: in its own process group ([`Cmd::own_group`])
//!   or session ([`Cmd::new_session`]), so one signal reaches it and whatever
//!   it started; killed with `SIGKILL` if the spawning *thread* dies
//!   ([`Cmd::die_with_parent`]);
//! - **its input and output**: stdin closed by default, or given bytes, or a
//!   pipe for the caller; stdout kept up to a bound (head), stderr's last
//!   bytes kept (tail), or either sent to a file, dropped or left as the
//!   `Command` had it; each line handed to a callback ([`Cmd::on_line`]);
//! - **how long it may run**: a deadline ([`Cmd::timeout`]), a cancel flag
//!   ([`Cmd::cancel`]) and a periodic callback that may stop it
//!   ([`Cmd::tick`]); stopping sends `SIGTERM` first when a grace period is
//!   set ([`Cmd::term_grace`]), then `SIGKILL`, to the whole group.
//!
//! The child is watched through a pidfd: one `poll(2)` waits for its exit and
//! its output at once, so a quick tool costs no polling delay and a chatty one
//! cannot block on a full pipe. Its exit is noticed without reaping it
//! (`waitid(WNOWAIT)`): while the leader is an unreaped zombie its pid, which
//! is also its process group id, cannot be reused, so killing the group
//! afterwards (what a wrapper script left running) can never hit an unrelated
//! process. Only then is the leader reaped. A [`Child`] dropped unreaped kills
//! its group and reaps it.
//!
//! Synchronous by design: callers on the async runtime run it on a blocking
//! thread (`spawn_blocking`), the builds run on their own threads.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};
use rustix::process::{Pid, PidfdFlags, Signal, WaitId, WaitidOptions, WaitidStatus};

/// How much of stdout [`Out::Capture`] keeps by default (the start of it).
pub const DEFAULT_STDOUT_LIMIT: usize = 16 << 20;
/// How much of stderr [`Out::Tail`] keeps by default (the end of it).
pub const DEFAULT_STDERR_TAIL: usize = 64 << 10;
/// How often the cancel flag, the deadline and the tick are checked while the
/// child neither exits nor writes.
pub const POLL: Duration = Duration::from_millis(50);
/// How long output is still read after the leader exited and its group was
/// killed. Only a process that left the group (setsid) can hold the pipes
/// longer; its output is then given up rather than waited for.
const DRAIN: Duration = Duration::from_secs(1);
/// Longest line handed to [`Cmd::on_line`]; a longer one arrives in pieces.
const MAX_LINE: usize = 64 << 10;
/// Lines of stderr shown in a [`ProcError::Failed`] message.
const MESSAGE_LINES: usize = 5;

/// A program that could not be run, or ran and failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// The program could not be started (missing, not executable, ...).
    #[error("cannot run {}: {source}", command_line(program, args))]
    Spawn {
        program: PathBuf,
        args: Vec<String>,
        #[source]
        source: io::Error,
    },
    /// Watching the running program failed; it was killed and reaped.
    #[error("lost track of {}: {source}", program.display())]
    Io {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    /// It did not finish within `timeout`; its group was killed and it was
    /// reaped.
    #[error("{} did not finish within {}s (killed)", command_line(program, args), timeout.as_secs_f32())]
    Timeout {
        program: PathBuf,
        args: Vec<String>,
        timeout: Duration,
    },
    /// The cancel flag was set or the tick asked to stop; its group was
    /// killed and it was reaped.
    #[error("{} was cancelled (killed)", command_line(program, args))]
    Cancelled { program: PathBuf, args: Vec<String> },
    /// It exited unsuccessfully; `stderr` is the end of what it said (empty
    /// when stderr was not captured).
    #[error(
        "{} failed ({status}){}",
        command_line(program, args),
        stderr_suffix(stderr)
    )]
    Failed {
        program: PathBuf,
        args: Vec<String>,
        status: ExitStatus,
        stderr: String,
    },
}

impl ProcError {
    /// The program this error is about.
    pub fn program(&self) -> &Path {
        match self {
            ProcError::Spawn { program, .. }
            | ProcError::Io { program, .. }
            | ProcError::Timeout { program, .. }
            | ProcError::Cancelled { program, .. }
            | ProcError::Failed { program, .. } => program,
        }
    }

    /// The exit status, for [`ProcError::Failed`].
    pub fn status(&self) -> Option<ExitStatus> {
        match self {
            ProcError::Failed { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// What it said on stderr, for [`ProcError::Failed`] (else empty).
    pub fn stderr(&self) -> &str {
        match self {
            ProcError::Failed { stderr, .. } => stderr,
            _ => "",
        }
    }
}

/// `program arg arg ...`, as shown in messages.
pub fn command_line(program: &Path, args: &[String]) -> String {
    let mut s = program.display().to_string();
    for a in args {
        s.push(' ');
        s.push_str(a);
    }
    s
}

/// `": <stderr>"` with blank lines dropped and at most 5 lines kept (joined
/// by "; "), or nothing when the program said nothing.
pub fn stderr_suffix(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    let mut s = format!(": {}", lines[..lines.len().min(MESSAGE_LINES)].join("; "));
    if lines.len() > MESSAGE_LINES {
        s.push_str("; ...");
    }
    s
}

/// What the child reads.
#[derive(Debug)]
pub enum In {
    /// `/dev/null` (the default).
    Null,
    /// These bytes, then end of file (written from a thread, so a program
    /// that answers before reading everything cannot deadlock us).
    Bytes(Vec<u8>),
    /// A pipe the caller writes through [`Child::take_stdin`].
    Piped,
    /// Whatever the wrapped `Command` was given.
    Keep,
}

/// Where one of the child's output streams goes.
#[derive(Debug)]
pub enum Out {
    /// Kept, up to this many bytes from the start (the rest is read and
    /// dropped). The default for stdout ([`DEFAULT_STDOUT_LIMIT`]).
    Capture(usize),
    /// The last this many bytes kept. The default for stderr
    /// ([`DEFAULT_STDERR_TAIL`]).
    Tail(usize),
    /// Appended to this file.
    File(File),
    /// `/dev/null`.
    Null,
    /// Whatever the wrapped `Command` was given.
    Keep,
}

/// A program to run; see the module doc.
pub struct Cmd<'a> {
    cmd: Command,
    stdin: In,
    stdout: Out,
    stderr: Out,
    group: bool,
    timeout: Option<Duration>,
    term_grace: Option<Duration>,
    cancel: Option<&'a AtomicBool>,
    tick: Option<&'a mut dyn FnMut() -> ControlFlow<()>>,
    on_line: Option<&'a mut dyn FnMut(&str)>,
}

impl From<Command> for Cmd<'_> {
    fn from(cmd: Command) -> Self {
        Cmd {
            cmd,
            stdin: In::Null,
            stdout: Out::Capture(DEFAULT_STDOUT_LIMIT),
            stderr: Out::Tail(DEFAULT_STDERR_TAIL),
            group: false,
            timeout: None,
            term_grace: None,
            cancel: None,
            tick: None,
            on_line: None,
        }
    }
}

impl<'a> Cmd<'a> {
    /// `program` (a path, or a name looked up in `PATH` by `execvp`).
    pub fn new(program: impl AsRef<std::ffi::OsStr>) -> Cmd<'a> {
        Cmd::from(Command::new(program))
    }

    pub fn arg(&mut self, arg: impl AsRef<std::ffi::OsStr>) -> &mut Self {
        self.cmd.arg(arg);
        self
    }

    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    pub fn env(
        &mut self,
        key: impl AsRef<std::ffi::OsStr>,
        value: impl AsRef<std::ffi::OsStr>,
    ) -> &mut Self {
        self.cmd.env(key, value);
        self
    }

    /// The wrapped `Command`, for what this builder does not cover
    /// (`env_remove`, `current_dir`, `pre_exec`).
    pub fn command_mut(&mut self) -> &mut Command {
        &mut self.cmd
    }

    pub fn stdin(&mut self, stdin: In) -> &mut Self {
        self.stdin = stdin;
        self
    }

    pub fn stdout(&mut self, stdout: Out) -> &mut Self {
        self.stdout = stdout;
        self
    }

    pub fn stderr(&mut self, stderr: Out) -> &mut Self {
        self.stderr = stderr;
        self
    }

    /// Runs the child in a new process group, so stopping it stops
    /// everything it started (unless that left the group).
    pub fn own_group(&mut self) -> &mut Self {
        self.cmd.process_group(0);
        self.group = true;
        self
    }

    /// Runs the child in a new session (and so a new process group): a
    /// signal to our group or terminal never reaches it.
    pub fn new_session(&mut self) -> &mut Self {
        // SAFETY: runs between fork and exec; setsid is async-signal-safe
        // and nothing is allocated.
        unsafe {
            self.cmd.pre_exec(|| {
                rustix::process::setsid()?;
                Ok(())
            });
        }
        self.group = true;
        self
    }

    /// `SIGKILL` to the child when the thread that spawned it dies (a build
    /// thread of a daemon that is killed). The child checks that its parent
    /// is still the spawning process, so one that died during the fork is
    /// not missed.
    pub fn die_with_parent(&mut self) -> &mut Self {
        let parent = std::process::id();
        // SAFETY: runs between fork and exec and calls only async-signal-safe
        // functions (prctl, getppid), allocating nothing.
        unsafe {
            self.cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::getppid() as u32 != parent {
                    return Err(io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            });
        }
        self
    }

    /// Stops the child (its group, with [`Cmd::own_group`]) once it has run
    /// this long: [`ProcError::Timeout`].
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = Some(timeout);
        self
    }

    /// Stopping sends `SIGTERM` and waits this long for the leader to exit
    /// before `SIGKILL` (for tools that clean up on `SIGTERM`).
    pub fn term_grace(&mut self, grace: Duration) -> &mut Self {
        self.term_grace = Some(grace);
        self
    }

    /// Stops the child as soon as `cancel` is set (checked at least every
    /// [`POLL`]): [`ProcError::Cancelled`].
    pub fn cancel(&mut self, cancel: &'a AtomicBool) -> &mut Self {
        self.cancel = Some(cancel);
        self
    }

    /// Called at least every [`POLL`] while the child runs, and once after it
    /// exits; `Break` stops it ([`ProcError::Cancelled`]).
    pub fn tick(&mut self, tick: &'a mut dyn FnMut() -> ControlFlow<()>) -> &mut Self {
        self.tick = Some(tick);
        self
    }

    /// Each line of captured output (stdout and stderr as they come, without
    /// the newline) is handed to `on_line` as it arrives.
    pub fn on_line(&mut self, on_line: &'a mut dyn FnMut(&str)) -> &mut Self {
        self.on_line = Some(on_line);
        self
    }

    fn program(&self) -> PathBuf {
        PathBuf::from(self.cmd.get_program())
    }

    fn shown_args(&self) -> Vec<String> {
        self.cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    /// Starts the child.
    pub fn spawn(self) -> Result<Child<'a>, ProcError> {
        let Cmd {
            mut cmd,
            stdin,
            stdout,
            stderr,
            group,
            timeout,
            term_grace,
            cancel,
            tick,
            on_line,
        } = self;
        let program = PathBuf::from(cmd.get_program());
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let spawn_err = |source| ProcError::Spawn {
            program: program.clone(),
            args: args.clone(),
            source,
        };
        match &stdin {
            In::Null => {
                cmd.stdin(Stdio::null());
            }
            In::Bytes(_) | In::Piped => {
                cmd.stdin(Stdio::piped());
            }
            In::Keep => {}
        }
        for (out, is_stdout) in [(&stdout, true), (&stderr, false)] {
            let stdio = match out {
                Out::Capture(_) | Out::Tail(_) => Stdio::piped(),
                Out::File(f) => Stdio::from(f.try_clone().map_err(spawn_err)?),
                Out::Null => Stdio::null(),
                Out::Keep => continue,
            };
            if is_stdout {
                cmd.stdout(stdio);
            } else {
                cmd.stderr(stdio);
            }
        }
        tracing::debug!(program = %program.display(), ?args, "running");
        let mut child = spawn_retrying_busy(&mut cmd).map_err(spawn_err)?;
        // The child is unreaped until we reap it, so its pid cannot name
        // another process before pidfd_open: the pidfd is this child's.
        let pidfd = match pidfd_open(child.id()) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ProcError::Io { program, source: e });
            }
        };
        let mut stdin_pipe = child.stdin.take();
        let mut feeder = None;
        if let In::Bytes(bytes) = stdin {
            if let Some(mut pipe) = stdin_pipe.take() {
                feeder = Some(std::thread::spawn(move || {
                    // A write error means the program exited early; its status
                    // and stderr say why.
                    let _ = pipe.write_all(&bytes);
                }));
            }
        }
        Ok(Child {
            stdout_pipe: child.stdout.take(),
            stderr_pipe: child.stderr.take(),
            stdout: Sink::new(&stdout),
            stderr: Sink::new(&stderr),
            stdin: stdin_pipe,
            feeder,
            inner: child,
            pidfd,
            reaped: false,
            program,
            args,
            group,
            timeout,
            term_grace,
            cancel,
            tick,
            on_line,
            started: Instant::now(),
        })
    }

    /// Runs the child to its end; the result holds its status whatever it
    /// is (see [`Finished::ok`]).
    pub fn output(self) -> Result<Finished, ProcError> {
        self.spawn()?.wait()
    }

    /// Runs the child to its end and requires exit status 0
    /// ([`ProcError::Failed`] otherwise).
    pub fn run(self) -> Result<Finished, ProcError> {
        self.output()?.ok()
    }
}

impl fmt::Debug for Cmd<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cmd")
            .field("program", &self.program())
            .field("args", &self.shown_args())
            .field("group", &self.group)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// `execve` fails with ETXTBSY while any process (a fork of another thread,
/// in a multithreaded caller) still holds the file open for writing; that
/// clears quickly, so retry briefly.
fn spawn_retrying_busy(cmd: &mut Command) -> io::Result<std::process::Child> {
    let mut tries = 0;
    loop {
        match cmd.spawn() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 20 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(25));
            }
            other => return other,
        }
    }
}

/// A captured stream: the bytes kept and the partial line not yet handed on.
struct Sink {
    mode: SinkMode,
    kept: Vec<u8>,
    truncated: bool,
    partial: Vec<u8>,
}

#[derive(Clone, Copy)]
enum SinkMode {
    Head(usize),
    Tail(usize),
    None,
}

impl Sink {
    fn new(out: &Out) -> Sink {
        Sink {
            mode: match out {
                Out::Capture(n) => SinkMode::Head(*n),
                Out::Tail(n) => SinkMode::Tail(*n),
                _ => SinkMode::None,
            },
            kept: Vec::new(),
            truncated: false,
            partial: Vec::new(),
        }
    }

    fn push(&mut self, data: &[u8], on_line: &mut Option<&mut dyn FnMut(&str)>) {
        match self.mode {
            SinkMode::Head(max) => {
                let room = max.saturating_sub(self.kept.len());
                self.kept.extend_from_slice(&data[..data.len().min(room)]);
                self.truncated |= data.len() > room;
            }
            SinkMode::Tail(max) => {
                self.kept.extend_from_slice(data);
                if self.kept.len() > max {
                    let cut = self.kept.len() - max;
                    self.kept.drain(..cut);
                    self.truncated = true;
                }
            }
            SinkMode::None => {}
        }
        let Some(on_line) = on_line else { return };
        for &b in data {
            if b == b'\n' {
                on_line(String::from_utf8_lossy(&self.partial).trim_end_matches('\r'));
                self.partial.clear();
            } else {
                self.partial.push(b);
                if self.partial.len() >= MAX_LINE {
                    on_line(&String::from_utf8_lossy(&self.partial));
                    self.partial.clear();
                }
            }
        }
    }

    fn finish(&mut self, on_line: &mut Option<&mut dyn FnMut(&str)>) {
        if let Some(on_line) = on_line {
            if !self.partial.is_empty() {
                on_line(&String::from_utf8_lossy(&self.partial));
            }
        }
        self.partial.clear();
    }
}

/// A running child; see the module doc. Dropped unreaped, it kills its group
/// (or itself) and reaps it.
pub struct Child<'a> {
    inner: std::process::Child,
    pidfd: OwnedFd,
    reaped: bool,
    program: PathBuf,
    args: Vec<String>,
    group: bool,
    stdin: Option<ChildStdin>,
    feeder: Option<std::thread::JoinHandle<()>>,
    stdout_pipe: Option<ChildStdout>,
    stderr_pipe: Option<ChildStderr>,
    stdout: Sink,
    stderr: Sink,
    timeout: Option<Duration>,
    term_grace: Option<Duration>,
    cancel: Option<&'a AtomicBool>,
    tick: Option<&'a mut dyn FnMut() -> ControlFlow<()>>,
    on_line: Option<&'a mut dyn FnMut(&str)>,
    started: Instant,
}

/// How a child that ran to its end finished.
#[derive(Debug)]
pub struct Finished {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub status: ExitStatus,
    /// Captured stdout ([`Out::Capture`] / [`Out::Tail`]; else empty).
    pub stdout: Vec<u8>,
    /// Captured stderr ([`Out::Capture`] / [`Out::Tail`]; else empty).
    pub stderr: Vec<u8>,
    /// Whether either stream had more than its bound.
    pub truncated: bool,
}

impl Finished {
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    /// Itself when the status is success, else [`ProcError::Failed`].
    pub fn ok(self) -> Result<Finished, ProcError> {
        if self.status.success() {
            Ok(self)
        } else {
            Err(self.into_error())
        }
    }

    /// The [`ProcError::Failed`] this result makes (whatever its status).
    pub fn into_error(self) -> ProcError {
        ProcError::Failed {
            stderr: self.stderr_text(),
            program: self.program,
            args: self.args,
            status: self.status,
        }
    }
}

enum Stop {
    Timeout(Duration),
    Cancelled,
}

impl<'a> Child<'a> {
    /// The child's pid (its process group id too, with a group).
    pub fn id(&self) -> u32 {
        self.inner.id()
    }

    /// The pipe to the child's stdin, with [`In::Piped`]; drop it to send
    /// end of file.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    /// Gives up watching: the pid and pidfd of a child that keeps running,
    /// is not killed on drop, and must be reaped through the pidfd
    /// (`waitid(P_PIDFD)`). Output pipes are closed.
    pub fn detach(mut self) -> (u32, OwnedFd) {
        self.reaped = true; // not ours to kill any more
        let pid = self.inner.id();
        let fd = self
            .pidfd
            .try_clone()
            .expect("dup of a pidfd we hold (EMFILE)");
        (pid, fd)
    }

    fn sigkill(&self) {
        if self.reaped {
            return;
        }
        if self.group {
            signal_group(self.inner.id(), Signal::Kill);
        } else {
            let _ = rustix::process::pidfd_send_signal(&self.pidfd, Signal::Kill);
        }
    }

    /// `SIGKILL` to the group (or the child) and reap it. Idempotent.
    pub fn kill(&mut self) {
        if self.reaped {
            return;
        }
        self.sigkill();
        let _ = self.inner.wait();
        self.reaped = true;
    }

    /// `SIGTERM` to the group (or the child), up to `grace` for the leader to
    /// exit, then [`Child::kill`].
    pub fn terminate(&mut self, grace: Duration) {
        if self.reaped {
            return;
        }
        if self.group {
            signal_group(self.inner.id(), Signal::Term);
        } else {
            let _ = rustix::process::pidfd_send_signal(&self.pidfd, Signal::Term);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(exited_unreaped(self.pidfd.as_fd()), Ok(Some(_)) | Err(_)) {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            wait_readable(self.pidfd.as_fd(), left.min(POLL));
        }
        self.kill();
    }

    fn stop(&mut self) {
        match self.term_grace {
            Some(grace) => self.terminate(grace),
            None => self.kill(),
        }
    }

    /// Waits for the child to exit, reading its output, honouring the
    /// deadline, the cancel flag and the tick; then kills what is left of its
    /// group, reaps it and returns how it ended.
    pub fn wait(mut self) -> Result<Finished, ProcError> {
        let deadline = self.timeout.map(|t| (self.started + t, t));
        let stopped = loop {
            let mut wait = POLL;
            if let Some((at, _)) = deadline {
                wait = wait.min(at.saturating_duration_since(Instant::now()));
            }
            let exited = match self.poll_once(wait, true) {
                Ok(exited) => exited,
                Err(source) => {
                    self.kill();
                    return Err(ProcError::Io {
                        program: self.program.clone(),
                        source,
                    });
                }
            };
            if self.cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                break Some(Stop::Cancelled);
            }
            if let Some(tick) = self.tick.as_mut() {
                if tick().is_break() {
                    break Some(Stop::Cancelled);
                }
            }
            if exited {
                break None;
            }
            if let Some((at, t)) = deadline {
                if Instant::now() >= at {
                    break Some(Stop::Timeout(t));
                }
            }
        };
        if let Some(stop) = stopped {
            self.stop();
            return Err(match stop {
                Stop::Timeout(timeout) => ProcError::Timeout {
                    program: self.program.clone(),
                    args: std::mem::take(&mut self.args),
                    timeout,
                },
                Stop::Cancelled => ProcError::Cancelled {
                    program: self.program.clone(),
                    args: std::mem::take(&mut self.args),
                },
            });
        }
        // The leader has exited and is still unreaped: whatever it left
        // running in its group would hold the pipes open, so end it first.
        if self.group {
            signal_group(self.inner.id(), Signal::Kill);
        }
        let status = match self.inner.wait() {
            Ok(status) => status,
            Err(source) => {
                self.reaped = true;
                return Err(ProcError::Io {
                    program: self.program.clone(),
                    source,
                });
            }
        };
        self.reaped = true;
        let drain_until = Instant::now() + DRAIN;
        while self.stdout_pipe.is_some() || self.stderr_pipe.is_some() {
            let left = drain_until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            if let Err(source) = self.poll_once(left, false) {
                return Err(ProcError::Io {
                    program: self.program.clone(),
                    source,
                });
            }
        }
        self.stdout.finish(&mut self.on_line);
        self.stderr.finish(&mut self.on_line);
        if let Some(feeder) = self.feeder.take() {
            // Its pipe's reader is gone, so the write has ended.
            let _ = feeder.join();
        }
        Ok(Finished {
            program: std::mem::take(&mut self.program),
            args: std::mem::take(&mut self.args),
            status,
            truncated: self.stdout.truncated || self.stderr.truncated,
            stdout: std::mem::take(&mut self.stdout.kept),
            stderr: std::mem::take(&mut self.stderr.kept),
        })
    }

    /// One `poll(2)` over the pidfd (when `watch_exit`) and the open output
    /// pipes, for at most `wait`; reads what is there. Returns whether the
    /// child has exited (it is left unreaped).
    fn poll_once(&mut self, wait: Duration, watch_exit: bool) -> io::Result<bool> {
        let mut buf = [0u8; 16 << 10];
        let (out_ready, err_ready, exit_ready) = {
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(3);
            let mut slots = [None; 3];
            if watch_exit {
                slots[0] = Some(fds.len());
                fds.push(PollFd::new(&self.pidfd, PollFlags::IN));
            }
            if let Some(p) = &self.stdout_pipe {
                slots[1] = Some(fds.len());
                fds.push(PollFd::new(p, PollFlags::IN));
            }
            if let Some(p) = &self.stderr_pipe {
                slots[2] = Some(fds.len());
                fds.push(PollFd::new(p, PollFlags::IN));
            }
            let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
            match rustix::event::poll(&mut fds, ms) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            let ready = |slot: Option<usize>| slot.is_some_and(|i| !fds[i].revents().is_empty());
            (ready(slots[1]), ready(slots[2]), ready(slots[0]))
        };
        if out_ready {
            if let Some(p) = self.stdout_pipe.as_mut() {
                match read_some(p, &mut buf)? {
                    0 => self.stdout_pipe = None,
                    n => self.stdout.push(&buf[..n], &mut self.on_line),
                }
            }
        }
        if err_ready {
            if let Some(p) = self.stderr_pipe.as_mut() {
                match read_some(p, &mut buf)? {
                    0 => self.stderr_pipe = None,
                    n => self.stderr.push(&buf[..n], &mut self.on_line),
                }
            }
        }
        if !watch_exit {
            return Ok(false);
        }
        // Readable means exited; confirm without reaping.
        Ok(exit_ready && exited_unreaped(self.pidfd.as_fd())?.is_some())
    }
}

fn read_some(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match r.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

impl Drop for Child<'_> {
    fn drop(&mut self) {
        self.kill();
    }
}

impl fmt::Debug for Child<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Child")
            .field("pid", &self.inner.id())
            .field("program", &self.program)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// `SIGKILL`/`SIGTERM`/... to process group `pgid`. Only for the group of an
/// unreaped child of ours: then `pgid` cannot name another group. A group
/// already gone (ESRCH) is fine.
fn signal_group(pgid: u32, sig: Signal) {
    if let Some(pid) = i32::try_from(pgid).ok().and_then(Pid::from_raw) {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}

/// Opens a pidfd for `pid` (Linux 5.3+).
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("bad pid {pid}")))?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// Whether the child behind `pidfd` has exited, leaving it unreaped
/// (`waitid(WNOHANG | WNOWAIT)`): `Some(status)` once it has. ECHILD for a
/// process that is not our child.
pub fn exited_unreaped(pidfd: BorrowedFd<'_>) -> io::Result<Option<WaitidStatus>> {
    Ok(rustix::process::waitid(
        WaitId::PidFd(pidfd),
        WaitidOptions::EXITED | WaitidOptions::NOHANG | WaitidOptions::NOWAIT,
    )?)
}

/// Waits up to `wait` for `fd` to turn readable (a pidfd: the process
/// exited).
fn wait_readable(fd: BorrowedFd<'_>, wait: Duration) {
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
    let _ = rustix::event::poll(&mut fds, ms);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sh<'a>(script: &str) -> Cmd<'a> {
        let mut c = Cmd::new("sh");
        c.args(["-c", script]);
        c
    }

    /// Gone, or a zombie waiting for a parent that is not us: not running.
    /// (Also used by the tests of `tools`.)
    pub(crate) fn process_running(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => {
                let state = stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .next();
                !matches!(state, Some("Z") | Some("X"))
            }
            Err(_) => false,
        }
    }

    fn wait_gone(pid: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(3);
        while process_running(pid) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        !process_running(pid)
    }

    fn read_pid(path: &Path) -> u32 {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(s) = std::fs::read_to_string(path) {
                if let Ok(pid) = s.trim().parse() {
                    return pid;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} never written",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn captures_stdout_and_stderr_and_status() {
        let done = sh("echo out; echo err >&2; exit 0").run().unwrap();
        assert!(done.status.success());
        assert_eq!(done.stdout_text(), "out\n");
        assert_eq!(done.stderr_text(), "err\n");
        assert!(!done.truncated);
    }

    #[test]
    fn failure_carries_program_status_and_stderr_tail() {
        let e = sh("echo one >&2; echo two >&2; exit 3").run().unwrap_err();
        match &e {
            ProcError::Failed {
                program,
                args,
                status,
                stderr,
            } => {
                assert_eq!(program, Path::new("sh"));
                assert_eq!(args[0], "-c");
                assert_eq!(status.code(), Some(3));
                assert_eq!(stderr, "one\ntwo\n");
            }
            other => panic!("{other:?}"),
        }
        let msg = e.to_string();
        assert!(msg.starts_with("sh -c "), "{msg}");
        assert!(msg.ends_with("failed (exit status: 3): one; two"), "{msg}");
        // output() returns the same result without judging it.
        let done = sh("exit 4").output().unwrap();
        assert_eq!(done.status.code(), Some(4));
    }

    #[test]
    fn stderr_suffix_keeps_five_lines() {
        assert_eq!(stderr_suffix(" \n"), "");
        assert_eq!(stderr_suffix("a\n\n b \n"), ": a; b");
        assert_eq!(stderr_suffix("1\n2\n3\n4\n5\n6\n"), ": 1; 2; 3; 4; 5; ...");
    }

    #[test]
    fn missing_program_is_a_spawn_error() {
        let e = Cmd::new("/nonexistent/banger-proc-test").run().unwrap_err();
        assert!(matches!(e, ProcError::Spawn { .. }), "{e:?}");
        assert!(e
            .to_string()
            .starts_with("cannot run /nonexistent/banger-proc-test: "));
    }

    #[test]
    fn capture_is_bounded_head_and_tail() {
        // 1 MiB on each stream: more than a pipe holds, so this also shows a
        // chatty child cannot block on a full pipe.
        let mut c = sh("head -c 1048576 /dev/zero | tr '\\0' a; head -c 1048576 /dev/zero | tr '\\0' b >&2; printf END >&2");
        c.stdout(Out::Capture(10)).stderr(Out::Tail(5));
        let done = c.run().unwrap();
        assert_eq!(done.stdout, b"aaaaaaaaaa");
        assert_eq!(done.stderr, b"bbEND");
        assert!(done.truncated);
    }

    #[test]
    fn stdin_bytes_reach_the_child() {
        let big: Vec<u8> = (0..300_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let mut c = Cmd::new("wc");
        c.arg("-c").stdin(In::Bytes(big));
        let done = c.run().unwrap();
        assert_eq!(done.stdout_text().trim(), "300000");
        // Default stdin is /dev/null: cat ends at once.
        assert_eq!(Cmd::new("cat").run().unwrap().stdout, b"");
    }

    #[test]
    fn piped_stdin_for_the_caller() {
        let mut c = Cmd::new("cat");
        c.stdin(In::Piped);
        let mut child = c.spawn().unwrap();
        let mut w = child.take_stdin().unwrap();
        w.write_all(b"hello").unwrap();
        drop(w);
        assert_eq!(child.wait().unwrap().stdout, b"hello");
    }

    #[test]
    fn output_to_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let f = File::create(&log).unwrap();
        let mut c = sh("echo to-log; echo err-log >&2");
        c.stdout(Out::File(f.try_clone().unwrap()))
            .stderr(Out::File(f));
        let done = c.run().unwrap();
        assert!(done.stdout.is_empty() && done.stderr.is_empty());
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "to-log\nerr-log\n");
    }

    #[test]
    fn lines_are_handed_on_as_they_come() {
        let mut lines = Vec::new();
        let mut on_line = |l: &str| lines.push(l.to_owned());
        let mut c = sh("echo one; echo two >&2; printf 'three'");
        c.on_line(&mut on_line);
        c.run().unwrap();
        lines.sort();
        assert_eq!(lines, ["one", "three", "two"]);
    }

    #[test]
    fn timeout_kills_the_group_and_reaps() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let script = format!(
            "echo $$ > {p}.self; sleep 1000 & echo $! > {p}.child; wait",
            p = pids.display()
        );
        let mut c = sh(&script);
        c.own_group().timeout(Duration::from_millis(500));
        let started = Instant::now();
        let e = c.run().unwrap_err();
        assert!(matches!(e, ProcError::Timeout { .. }), "{e:?}");
        assert!(e.to_string().contains("did not finish within 0.5s"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(4));
        let shell = read_pid(&pids.with_extension("self"));
        let sleeper = read_pid(&pids.with_extension("child"));
        assert!(
            !Path::new(&format!("/proc/{shell}")).exists(),
            "child {shell} not reaped"
        );
        assert!(wait_gone(sleeper), "grandchild {sleeper} still running");
    }

    #[test]
    fn leftovers_of_the_group_are_killed_when_the_leader_exits() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("bg");
        // The background sleeper holds stdout open; without the group kill
        // this would wait for it (DRAIN) or leak it.
        let script = format!("sleep 1000 & echo $! > {}; echo done", pid_file.display());
        let mut c = sh(&script);
        c.own_group();
        let done = c.run().unwrap();
        assert_eq!(done.stdout_text(), "done\n");
        assert!(wait_gone(read_pid(&pid_file)));
    }

    #[test]
    fn cancel_terminates_then_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("bg");
        let trapped = dir.path().join("trapped");
        // The leader traps SIGTERM (records it, keeps running); the group
        // still dies by SIGKILL after the grace period.
        let script = format!(
            "trap 'echo term > {t}' TERM; sleep 1000 & echo $! > {p}; while :; do sleep 0.05; done",
            t = trapped.display(),
            p = pid_file.display()
        );
        let cancel = AtomicBool::new(false);
        let mut c = sh(&script);
        c.own_group()
            .term_grace(Duration::from_millis(300))
            .cancel(&cancel);
        let child = c.spawn().unwrap();
        let leader = child.id();
        let sleeper = read_pid(&pid_file);
        let setter = {
            let cancel = &cancel;
            std::thread::scope(|s| {
                s.spawn(move || {
                    std::thread::sleep(Duration::from_millis(200));
                    cancel.store(true, Ordering::Relaxed);
                });
                child.wait()
            })
        };
        let e = setter.unwrap_err();
        assert!(matches!(e, ProcError::Cancelled { .. }), "{e:?}");
        assert!(!Path::new(&format!("/proc/{leader}")).exists());
        assert!(wait_gone(sleeper), "sleeper {sleeper} still running");
        assert_eq!(std::fs::read_to_string(&trapped).unwrap(), "term\n");
    }

    #[test]
    fn tick_can_stop_the_child() {
        let mut ticks = 0;
        let mut tick = || {
            ticks += 1;
            if ticks >= 3 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let mut c = Cmd::new("sleep");
        c.arg("1000").tick(&mut tick);
        let e = c.run().unwrap_err();
        assert!(matches!(e, ProcError::Cancelled { .. }), "{e:?}");
        assert_eq!(ticks, 3);
    }

    #[test]
    fn dropped_child_is_killed_and_reaped() {
        let mut c = Cmd::new("sleep");
        c.arg("1000").own_group();
        let child = c.spawn().unwrap();
        let pid = child.id();
        drop(child);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn new_session_and_detach() {
        let mut c = Cmd::new("sleep");
        c.arg("1000")
            .new_session()
            .stdin(In::Null)
            .stdout(Out::Null)
            .stderr(Out::Null);
        let (pid, pidfd) = c.spawn().unwrap().detach();
        // Still running after the Child is gone, in a session of its own.
        assert!(process_running(pid));
        let sid = rustix::process::getsid(Pid::from_raw(pid as i32)).unwrap();
        assert_eq!(sid.as_raw_nonzero().get() as u32, pid);
        assert!(exited_unreaped(pidfd.as_fd()).unwrap().is_none());
        rustix::process::pidfd_send_signal(&pidfd, Signal::Kill).unwrap();
        wait_readable(pidfd.as_fd(), Duration::from_secs(5));
        let st = exited_unreaped(pidfd.as_fd()).unwrap().expect("exited");
        assert_eq!(st.terminating_signal(), Some(libc::SIGKILL as _));
        // Peeking did not reap; this does.
        rustix::process::waitid(WaitId::PidFd(pidfd.as_fd()), WaitidOptions::EXITED).unwrap();
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }

    #[test]
    fn executable_written_just_now_is_run() {
        // ETXTBSY from another thread's fork holding the file: retried.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tool");
        std::fs::write(&p, "#!/bin/sh\necho ran\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(Cmd::new(&p).run().unwrap().stdout_text(), "ran\n");
    }
}
