//! Ctrl-C for a guest command that runs without a terminal (`vm exec -T`,
//! or `vm exec`/`vm run -- CMD` with stdin or stdout redirected).
//!
//! With a terminal, ssh puts the local one in raw mode and Ctrl-C travels to
//! the guest's pty as a byte, so the guest's line discipline signals the
//! command there. Without one, the terminal's SIGINT reaches ssh, which
//! exits and leaves the guest command running: sshd does not signal a
//! session's processes when a non-pty connection drops. So here:
//!
//! - ssh starts with SIGINT ignored (OpenSSH keeps an inherited `SIG_IGN`
//!   for SIGINT), so Ctrl-C no longer ends the connection;
//! - the guest's shell, a process-group leader (sshd calls `setsid` for each
//!   session), writes its pid to a marker file named per run, and traps
//!   SIGINT with a no-op (a handler, not an ignore, so the command it runs
//!   gets the default disposition back at `exec`);
//! - the first Ctrl-C sends SIGINT to that process group over a second ssh
//!   connection; the command's own exit status comes back as usual (130 when
//!   SIGINT ends it, or whatever its handler chooses);
//! - a second Ctrl-C detaches: the local ssh is ended, the guest command is
//!   left as it is, and the user is told how to look at it or stop the VM.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::progress::Interrupt;
use crate::render::Outcome;

/// Where one run's guest shell records its process group: under `/run`
/// (tmpfs, root's) when the guest has it, else `/tmp`.
pub struct Marker {
    file: String,
}

impl Marker {
    pub fn new() -> Marker {
        Marker {
            file: format!("banger-exec-{}", &banger_core::ids::new_id()[..16]),
        }
    }

    /// Shell that sets `$m` to the marker's path in the guest.
    fn path_var(&self) -> String {
        let f = &self.file;
        format!("m=/run/{f}; [ -d /run ] || m=/tmp/{f}")
    }

    /// The guest line that runs `body` (a shell command list without its
    /// final `exit`) so that [`Marker::interrupt_line`] can signal it, and
    /// ends with `body`'s status.
    ///
    /// The shell removes its marker when `body` ends, but a shell that does
    /// not outlive its connection (seen after a detach: the command lives
    /// on, its shell does not) leaves it behind, so each run first removes
    /// the markers whose process is gone. A stale marker is never read
    /// again anyway (each run's name is new).
    pub fn wrap(&self, body: &str) -> String {
        format!(
            "{}; for f in \"${{m%/*}}\"/banger-exec-*; do [ -f \"$f\" ] && \
             {{ kill -0 \"$(cat \"$f\")\" 2>/dev/null || rm -f \"$f\"; }}; done; \
             trap : INT; echo $$ > \"$m\"; {body}; s=$?; rm -f \"$m\"; exit $s",
            self.path_var()
        )
    }

    /// The guest line that sends SIGINT to the wrapped command's group.
    pub fn interrupt_line(&self) -> String {
        format!(
            "{}; p=$(cat \"$m\" 2>/dev/null) && kill -INT -- \"-$p\"",
            self.path_var()
        )
    }
}

/// Runs `ssh` (the session running a [`Marker::wrap`]ped line) to its end,
/// turning Ctrl-C into SIGINT for the guest command (first press) or a
/// detach (second press). `interrupt` makes the whole ssh command that
/// runs [`Marker::interrupt_line`].
pub fn run(
    mut ssh: Command,
    interrupt: &dyn Fn() -> anyhow::Result<Command>,
    name: &str,
) -> anyhow::Result<Outcome> {
    let ctrl_c = Interrupt::install()?;
    // SAFETY: signal(2) is async-signal-safe; nothing else runs between
    // fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        ssh.pre_exec(|| {
            libc::signal(libc::SIGINT, libc::SIG_IGN);
            Ok(())
        });
    }
    let mut child = ssh.spawn().context(super::ssh::CANNOT_RUN_SSH)?;
    let mut senders: Vec<Child> = Vec::new();
    let outcome = loop {
        if let Some(status) = child.try_wait()? {
            break Outcome::Streamed(super::exit_status(status));
        }
        if ctrl_c.take() {
            if senders.is_empty() {
                eprintln!(
                    "banger: sending SIGINT to the command in vm {name} (Ctrl-C again to detach)"
                );
                let sender = interrupt()?
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context(super::ssh::CANNOT_RUN_SSH)?;
                senders.push(sender);
            } else {
                let _ = child.kill();
                let _ = child.wait();
                eprintln!(
                    "banger: detached; the command may still be running in vm {name}: \
                     banger vm ssh {name} to look at it, banger vm stop {name} to stop the VM"
                );
                // 130, as a shell says for an interrupted command.
                break Outcome::Streamed(130);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // A sender still running has nothing left to do: the command is over
    // (or left behind on purpose).
    for mut s in senders {
        let _ = s.kill();
        let _ = s.wait();
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wrapped_line_records_its_group_and_keeps_the_status() {
        let m = Marker {
            file: "banger-exec-x".into(),
        };
        assert_eq!(
            m.wrap("env -- true"),
            "m=/run/banger-exec-x; [ -d /run ] || m=/tmp/banger-exec-x; \
             for f in \"${m%/*}\"/banger-exec-*; do [ -f \"$f\" ] && \
             { kill -0 \"$(cat \"$f\")\" 2>/dev/null || rm -f \"$f\"; }; done; \
             trap : INT; echo $$ > \"$m\"; env -- true; s=$?; rm -f \"$m\"; exit $s"
        );
        assert_eq!(
            m.interrupt_line(),
            "m=/run/banger-exec-x; [ -d /run ] || m=/tmp/banger-exec-x; \
             p=$(cat \"$m\" 2>/dev/null) && kill -INT -- \"-$p\""
        );
    }

    /// The wrapped line under a real local shell in its own session (as sshd
    /// starts it): SIGINT to the group ends the command, the shell survives
    /// to report 130 and removes its marker.
    #[test]
    fn sigint_to_the_group_ends_the_command_not_the_shell() {
        let dir = tempfile::tempdir().unwrap();
        let m = Marker {
            file: "banger-exec-test".into(),
        };
        // The same line with the marker in the test's directory.
        let line = m
            .wrap("sleep 30")
            .replace("/run/", &format!("{}/", dir.path().display()))
            .replace("[ -d /run ]", "true");
        let stale = dir.path().join("banger-exec-stale");
        std::fs::write(&stale, "999999999\n").unwrap();
        let mut sh = Command::new("sh");
        sh.args(["-c", &line]);
        unsafe {
            use std::os::unix::process::CommandExt;
            sh.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = sh.spawn().unwrap();
        let marker = dir.path().join("banger-exec-test");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !marker.exists() {
            assert!(std::time::Instant::now() < deadline, "no marker written");
            std::thread::sleep(Duration::from_millis(20));
        }
        // The sleep starts right after the marker; give it a moment.
        std::thread::sleep(Duration::from_millis(200));
        let pgid: i32 = std::fs::read_to_string(&marker)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(pgid, child.id() as i32);
        unsafe { libc::kill(-pgid, libc::SIGINT) };
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(130), "{status:?}");
        assert!(!marker.exists(), "the marker is removed");
        assert!(!stale.exists(), "a marker whose process is gone is swept");
    }
}
