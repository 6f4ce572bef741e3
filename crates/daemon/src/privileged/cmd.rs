//! The command plumbing both halves of [`SystemHost`](super::SystemHost) use:
//! a host tool and the Debian package that ships it, found on every call (so
//! installing one while the daemon runs is enough), run through
//! [`banger_core::proc`] with `LC_ALL=C` and stdin closed (or given bytes),
//! its stdout kept and the tail of its stderr kept for the error.
//!
//! No tool is given a timeout: each is quick, except `e2fsck` and
//! `resize2fs` on a large image, which must not be cut short.

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::ExitStatus;

use banger_core::proc::{Cmd, Finished, In, ProcError};
use banger_core::tools::find_system_tool;

use super::HostError;

/// A host tool and the Debian package that ships it.
pub(super) struct Tool {
    pub(super) name: &'static str,
    pub(super) package: &'static str,
}

impl Tool {
    /// The tool's path, or [`HostError::Unavailable`] naming the package.
    pub(super) fn locate(&self) -> Result<PathBuf, HostError> {
        find_system_tool(self.name).ok_or_else(|| {
            HostError::Unavailable(format!(
                "{} is not installed (looked in PATH and /usr/local/sbin, /usr/sbin, /sbin); \
                 install the Debian package {} (apt-get install {})",
                self.name, self.package, self.package
            ))
        })
    }

    /// Runs the tool; returns its output whatever the exit status.
    pub(super) fn output<I, S>(&self, args: I) -> Result<Ran, HostError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        execute(self.locate()?, args)
    }

    /// Runs the tool and requires exit status 0; returns its stdout.
    pub(super) fn run<I, S>(&self, args: I) -> Result<String, HostError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.output(args)?.stdout_if_success()
    }
}

/// Runs `program` with `args` (stdin closed, `LC_ALL=C`); returns its output
/// whatever the exit status.
pub(super) fn execute<I, S>(program: PathBuf, args: I) -> Result<Ran, HostError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    execute_with_input(program, args, In::Null)
}

/// [`execute`] with `stdin` for the tool's input (`nft -f -`).
pub(super) fn execute_with_input<I, S>(
    program: PathBuf,
    args: I,
    stdin: In,
) -> Result<Ran, HostError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = Cmd::new(&program);
    cmd.args(args).env("LC_ALL", "C").stdin(stdin);
    Ok(Ran(cmd.output()?))
}

/// A tool that ran to its end.
pub(super) struct Ran(Finished);

impl From<Finished> for Ran {
    fn from(done: Finished) -> Ran {
        Ran(done)
    }
}

impl Ran {
    pub(super) fn status(&self) -> ExitStatus {
        self.0.status
    }

    pub(super) fn stdout_bytes(&self) -> &[u8] {
        &self.0.stdout
    }

    pub(super) fn stderr(&self) -> String {
        self.0.stderr_text()
    }

    /// Its stdout when it exited 0, else [`Ran::into_error`].
    pub(super) fn stdout_if_success(self) -> Result<String, HostError> {
        if self.0.status.success() {
            Ok(self.0.stdout_text())
        } else {
            Err(self.into_error())
        }
    }

    /// The [`HostError::Command`] this run makes (whatever its status).
    pub(super) fn into_error(self) -> HostError {
        self.0.into_error().into()
    }
}

impl From<ProcError> for HostError {
    fn from(e: ProcError) -> HostError {
        match e {
            ProcError::Failed {
                program,
                args,
                status,
                stderr,
            } => HostError::Command {
                program,
                args,
                status,
                stderr,
            },
            ProcError::Spawn {
                program, source, ..
            } => HostError::io("cannot run", &program, source),
            ProcError::Io { program, source } => HostError::io("cannot wait for", &program, source),
            // No host tool is given a deadline or a cancel flag.
            e @ (ProcError::Timeout { .. } | ProcError::Cancelled { .. }) => {
                let program = e.program().to_path_buf();
                HostError::io("stopped", &program, std::io::Error::other(e.to_string()))
            }
        }
    }
}
