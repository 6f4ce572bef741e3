//! Race-free tracking of VMM processes (Firecracker now, QEMU later).
//!
//! While the daemon runs, a VMM is held by its pidfd: signals and waits go
//! through the pidfd, so a recycled pid can never be hit. Across a daemon
//! restart the pidfd is lost; the store keeps `(pid, start_time)` instead and
//! [`adopt`] reopens a pidfd only if the process at that pid started at the
//! recorded time.
//!
//! VMMs run in their own session ([`spawn`]): a signal to the daemon's process
//! group or terminal never reaches them, and they outlive a daemon restart.
//! Only the daemon that spawned a VMM can reap it; after a restart the VMM is
//! not our child any more and its exit status is unknown ([`ExitInfo`]).

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::process::Command;
use std::time::Duration;

use banger_core::proc::{exited_unreaped, pidfd_open, Cmd, In, Out, ProcError};
use rustix::event::{PollFd, PollFlags};
use rustix::process::{Signal, WaitId, WaitidOptions, WaitidStatus};
use tokio::io::unix::AsyncFd;

/// A freshly spawned process, held by its pidfd.
#[derive(Debug)]
pub struct Spawned {
    /// The process id (for logs, /proc and the store; act through `pidfd`).
    pub pid: u32,
    /// The pidfd: signal and wait through it, never through `pid`.
    pub pidfd: OwnedFd,
    /// Field 22 of /proc/<pid>/stat (clock ticks since boot); `(pid,
    /// start_time)` names this process across daemon restarts.
    pub start_time: u64,
}

/// Spawns `cmd` in a new session through [`banger_core::proc`] (stdin,
/// stdout and stderr as `cmd` has them) and detaches it: from here on the
/// process is reached only through the returned pidfd, and reaped by
/// [`wait_exit`]. The VMM outlives this call and, on purpose, the daemon.
pub fn spawn(cmd: Command) -> io::Result<Spawned> {
    let mut c = Cmd::from(cmd);
    c.new_session()
        .stdin(In::Keep)
        .stdout(Out::Keep)
        .stderr(Out::Keep);
    let child = c.spawn().map_err(into_io)?;
    // Still our unreaped child, so its pid names exactly this process; if
    // the start time cannot be read, dropping `child` kills and reaps it.
    let start_time = proc_start_time(child.id())?;
    let (pid, pidfd) = child.detach();
    Ok(Spawned {
        pid,
        pidfd,
        start_time,
    })
}

fn into_io(e: ProcError) -> io::Error {
    match e {
        ProcError::Spawn { source, .. } | ProcError::Io { source, .. } => source,
        e => io::Error::other(e.to_string()),
    }
}

/// Reopens a pidfd for a process recorded before a daemon restart: `None`
/// when it is gone or `pid` now belongs to another process (start time
/// differs).
pub fn adopt(pid: u32, start_time: u64) -> Option<OwnedFd> {
    // Open first, then check: if the stat read afterwards matches, the pid
    // was not recycled in between, so the pidfd names the recorded process.
    let pidfd = pidfd_open(pid).ok()?;
    let stat = read_stat(pid).ok()?;
    // A zombie has exited already; it lingers only until its parent (init,
    // for a VMM whose daemon died) reaps it, which some inits never do.
    (stat.start_time == start_time && !stat.zombie).then_some(pidfd)
}

/// The start time (field 22 of /proc/<pid>/stat, clock ticks since boot).
pub fn proc_start_time(pid: u32) -> io::Result<u64> {
    Ok(read_stat(pid)?.start_time)
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    /// The exit code, when it exited normally.
    pub code: Option<i32>,
    /// The signal that killed it.
    pub signal: Option<i32>,
}

impl ExitInfo {
    /// The status of a process that was not our child (both fields `None`).
    pub const UNKNOWN: ExitInfo = ExitInfo {
        code: None,
        signal: None,
    };

    fn from_status(status: &WaitidStatus) -> ExitInfo {
        ExitInfo {
            code: status.exit_status().map(|c| c as i32),
            signal: status.terminating_signal().map(|s| s as i32),
        }
    }

    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exited with code {code}"),
            (None, Some(sig)) => match signal_name(sig) {
                Some(name) => write!(f, "killed by signal {sig} ({name})"),
                None => write!(f, "killed by signal {sig}"),
            },
            (None, None) => f.write_str("exited (status unknown: not our child)"),
        }
    }
}

fn signal_name(sig: i32) -> Option<&'static str> {
    Some(match sig {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGSYS => "SIGSYS",
        _ => return None,
    })
}

/// Waits until the process exits and reaps it. For a process that is not
/// our child (adopted after a restart) it returns [`ExitInfo::UNKNOWN`] once
/// the process is gone. Cancel-safe: dropping the future leaves the process
/// unreaped.
pub async fn wait_exit(pidfd: &OwnedFd) -> ExitInfo {
    loop {
        wait_readable(pidfd.as_fd()).await;
        // A pidfd turns readable when the process exits; a child is then a
        // zombie waiting to be reaped, so NOHANG does not miss it.
        match rustix::process::waitid(
            WaitId::PidFd(pidfd.as_fd()),
            WaitidOptions::EXITED | WaitidOptions::NOHANG,
        ) {
            Ok(Some(status)) => return ExitInfo::from_status(&status),
            Ok(None) => tokio::time::sleep(Duration::from_millis(10)).await,
            // ECHILD: not our child (or already reaped): nothing to learn.
            Err(_) => return ExitInfo::UNKNOWN,
        }
    }
}

/// Whether the process has exited, without reaping it (so a later
/// [`wait_exit`] still gets the status): `None` while it runs.
pub fn exited(pidfd: &OwnedFd) -> Option<ExitInfo> {
    if !is_readable(pidfd.as_fd()) {
        return None;
    }
    match exited_unreaped(pidfd.as_fd()) {
        Ok(Some(status)) => Some(ExitInfo::from_status(&status)),
        Ok(None) | Err(_) => Some(ExitInfo::UNKNOWN),
    }
}

/// Sends `sig` through the pidfd. A process that is already gone is not an
/// error.
pub fn signal(pidfd: &OwnedFd, sig: Signal) -> io::Result<()> {
    match rustix::process::pidfd_send_signal(pidfd, sig) {
        Ok(()) | Err(rustix::io::Errno::SRCH) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Resident memory in bytes (VmRSS) and CPU time in seconds (user + system).
pub fn rss_and_cpu(pid: u32) -> io::Result<(u64, f64)> {
    let stat = read_stat(pid)?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = parse_vm_rss(&status).unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = if ticks > 0 { ticks as f64 } else { 100.0 };
    Ok((rss, (stat.utime + stat.stime) as f64 / ticks))
}

fn is_readable(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    matches!(rustix::event::poll(&mut fds, 0), Ok(n) if n > 0)
}

/// Waits until the pidfd is readable (the process exited).
pub(crate) async fn wait_readable(fd: BorrowedFd<'_>) {
    // A duplicate, so that several waiters on one pidfd each register their
    // own descriptor with the reactor (epoll refuses the same one twice).
    let registered = fd.try_clone_to_owned().and_then(|dup| {
        // SAFETY: the AsyncFd owns `dup`, an open descriptor that stays open
        // and unchanged until the AsyncFd is dropped.
        unsafe { AsyncFd::register_with_interest(dup, tokio::io::Interest::READABLE) }
            .map_err(io::Error::from)
    });
    match registered {
        Ok(async_fd) => {
            let _ = async_fd.readable().await;
        }
        Err(_) => {
            // No reactor registration possible: poll gently instead.
            while !is_readable(fd) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The fields of /proc/<pid>/stat that we use.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    /// State `Z`: exited, not yet reaped.
    zombie: bool,
    utime: u64,
    stime: u64,
    start_time: u64,
}

fn read_stat(pid: u32) -> io::Result<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat(&text).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot parse /proc/{pid}/stat: {text:?}"),
        )
    })
}

/// Parses /proc/<pid>/stat. The comm field (2) is in parentheses and may hold
/// spaces and ')', so fields are counted after the last ')'.
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // `rest` starts at field 3 (state): field N is at index N - 3.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
    Some(Stat {
        zombie: fields.first()? == &"Z",
        utime: field(14)?,
        stime: field(15)?,
        start_time: field(22)?,
    })
}

/// VmRSS from /proc/<pid>/status, in bytes (`None` for kernel threads).
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut words = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = words.next()?.parse().ok()?;
    match words.next() {
        Some("kB") | None => Some(value * 1024),
        Some(_) => None,
    }
}

#[cfg(test)]
/// (tests) The open flags (`O_ACCMODE` of /proc/PID/fdinfo) of every file `pid`
/// holds under `dir`, by file name.
pub(crate) fn open_access_modes(pid: u32, dir: &std::path::Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let e = e.unwrap();
        let Ok(target) = std::fs::read_link(e.path()) else {
            continue;
        };
        if !target.starts_with(dir) {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            e.file_name().to_string_lossy()
        ))
        .unwrap();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
            .unwrap();
        let name = target.file_name().unwrap().to_string_lossy().into_owned();
        out.push((name, flags & libc::O_ACCMODE as u32));
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use std::process::Stdio;

    use super::*;

    const WAIT_LIMIT: Duration = Duration::from_secs(10);

    /// Kills (SIGKILL) and reaps the process when dropped, even when the test
    /// panics first.
    struct KillOnDrop(OwnedFd);

    impl Drop for KillOnDrop {
        fn drop(&mut self) {
            let _ = signal(&self.0, Signal::Kill);
            // Blocks only until the SIGKILL lands; ECHILD for non-children.
            let _ = rustix::process::waitid(WaitId::PidFd(self.0.as_fd()), WaitidOptions::EXITED);
        }
    }

    fn spawn_guarded(program: &str, args: &[&str]) -> (u32, u64, KillOnDrop) {
        let mut cmd = Command::new(program);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null());
        let s = spawn(cmd).expect("spawn");
        (s.pid, s.start_time, KillOnDrop(s.pidfd))
    }

    async fn wait_limited(pidfd: &OwnedFd) -> ExitInfo {
        tokio::time::timeout(WAIT_LIMIT, wait_exit(pidfd))
            .await
            .expect("wait_exit hung")
    }

    #[tokio::test]
    async fn spawned_process_has_its_own_session_and_identity() {
        let (pid, start_time, guard) = spawn_guarded("sleep", &["1000"]);
        // libc rather than rustix: in a container our own session can be led by
        // a process outside our pid namespace, and getsid then returns 0, which
        // rustix's Pid cannot represent (CI hit exactly that).
        // SAFETY: getsid only reads the kernel's process table.
        let ours = unsafe { libc::getsid(0) };
        let theirs = unsafe { libc::getsid(pid as libc::pid_t) };
        assert_ne!(ours, theirs);
        assert_eq!(theirs as u32, pid, "it leads its session");
        assert_eq!(proc_start_time(pid).unwrap(), start_time);
        assert!(adopt(pid, start_time).is_some());
        assert!(
            adopt(pid, start_time + 1).is_none(),
            "a recycled pid is refused"
        );
        assert!(exited(&guard.0).is_none());

        signal(&guard.0, Signal::Term).unwrap();
        let info = wait_limited(&guard.0).await;
        assert_eq!(
            info,
            ExitInfo {
                code: None,
                signal: Some(15)
            }
        );
        assert_eq!(info.to_string(), "killed by signal 15 (SIGTERM)");
        // Gone and reaped: signalling again is fine, adopting is not.
        signal(&guard.0, Signal::Kill).unwrap();
        assert!(adopt(pid, start_time).is_none());
    }

    #[tokio::test]
    async fn exit_code_is_reported_and_peeking_does_not_reap() {
        let (_, _, guard) = spawn_guarded("sh", &["-c", "exit 3"]);
        let deadline = std::time::Instant::now() + WAIT_LIMIT;
        let peeked = loop {
            if let Some(info) = exited(&guard.0) {
                break info;
            }
            assert!(std::time::Instant::now() < deadline, "sh did not exit");
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(peeked.code, Some(3));
        let info = wait_limited(&guard.0).await;
        assert_eq!(
            info,
            ExitInfo {
                code: Some(3),
                signal: None
            }
        );
        assert_eq!(info.to_string(), "exited with code 3");
        assert!(!info.success());
    }

    #[tokio::test]
    async fn sigkill_is_reported_and_two_waiters_both_wake() {
        let (_, _, guard) = spawn_guarded("sleep", &["1000"]);
        let fd = &guard.0;
        let (a, b) = tokio::join!(wait_readable(fd.as_fd()), async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            signal(fd, Signal::Kill).unwrap();
            wait_limited(fd).await
        });
        let () = a;
        assert_eq!(b.signal, Some(9));
        assert_eq!(b.to_string(), "killed by signal 9 (SIGKILL)");
    }

    #[tokio::test]
    async fn adopted_non_child_ends_with_unknown_status() {
        let out = Command::new("sh")
            .args(["-c", "sleep 1000 >/dev/null 2>&1 & echo $!"])
            .output()
            .unwrap();
        let pid: u32 = String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let start_time = proc_start_time(pid).unwrap();
        let pidfd = adopt(pid, start_time).expect("adopt");
        let guard = KillOnDrop(pidfd);
        assert!(exited(&guard.0).is_none());
        signal(&guard.0, Signal::Kill).unwrap();
        let info = wait_limited(&guard.0).await;
        assert_eq!(info, ExitInfo::UNKNOWN);
        assert_eq!(info.to_string(), "exited (status unknown: not our child)");
    }

    #[test]
    fn spawn_failure_is_an_error() {
        let err = spawn(Command::new("/nonexistent/banger-test-binary")).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn rss_and_cpu_of_ourselves() {
        // Burn a little CPU so the counter is not zero.
        let mut x = 0u64;
        let t = std::time::Instant::now();
        while t.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let (rss, cpu) = rss_and_cpu(std::process::id()).unwrap();
        assert!(rss > 1 << 20 && rss < 64 << 30, "rss {rss}");
        assert!(cpu > 0.0 && cpu < 1e6, "cpu {cpu}");
    }

    #[test]
    fn stat_parsing_survives_odd_comm() {
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[0] = "S".into();
        let text = format!("1234 (a) (b c) {}\n", fields.join(" "));
        assert_eq!(
            parse_stat(&text),
            Some(Stat {
                zombie: false,
                utime: 14,
                stime: 15,
                start_time: 22
            })
        );
        fields[0] = "Z".into();
        let zombie = format!("1234 (x) {}\n", fields.join(" "));
        assert!(parse_stat(&zombie).unwrap().zombie);
        assert_eq!(parse_stat("1234 (trunc"), None);
        assert_eq!(parse_stat("1234 (x) S 1 2"), None);
    }

    #[test]
    fn vm_rss_parsing() {
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t    2048 kB\n"),
            Some(2 << 20)
        );
        assert_eq!(parse_vm_rss("Name:\tkthreadd\n"), None);
    }
}
