//! One module per subcommand.

pub mod attach;
pub mod bench;
mod bench_run;
pub mod bundle;
pub mod completion;
pub mod cp;
pub mod daemon;
pub mod doctor;
pub mod export;
mod guest_interrupt;
pub mod image;
pub mod kernel;
pub mod logtail;
pub mod operation;
pub mod run;
pub mod ssh;
pub mod sync;
pub mod system;
pub mod version;
pub mod vm;
pub mod workspace;

use std::fs::File;
use std::path::Path;

use anyhow::Context;
use banger_core::paths::Paths;

use crate::client::Client;
use crate::Cli;

/// What every command needs: where things are and how to print.
pub struct Env {
    pub paths: Paths,
    pub json: bool,
}

impl Env {
    pub fn new(cli: &Cli) -> Env {
        Env {
            paths: Paths::resolve(cli.home.as_deref()),
            json: cli.json,
        }
    }

    /// A connected client, starting the daemon if needed and allowed.
    pub fn client(&self) -> anyhow::Result<Client> {
        crate::autostart::connect(&self.paths, true)
    }
}

/// Opens a file the user named, with the user's own rights; the descriptor
/// is what goes to the daemon.
pub fn open_input(path: &Path, what: &str) -> anyhow::Result<File> {
    File::open(path).with_context(|| format!("cannot open {what} {}", path.display()))
}

/// A child's exit status as ours: its code, or 128 + the signal that
/// ended it (what a shell reports), so a guest command's status passes
/// through unchanged.
pub fn exit_status(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code.clamp(0, 255) as u8,
        (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
        (None, None) => 1,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::process::ExitStatus;

    #[test]
    fn exit_status_passes_through() {
        assert_eq!(super::exit_status(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(super::exit_status(ExitStatus::from_raw(0)), 0);
        assert_eq!(super::exit_status(ExitStatus::from_raw(255 << 8)), 255);
        // Killed by SIGINT (2): 130, as a shell says.
        assert_eq!(super::exit_status(ExitStatus::from_raw(2)), 130);
    }
}
