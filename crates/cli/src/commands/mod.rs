//! One module per subcommand.

pub mod bench;
pub mod completion;
pub mod daemon;
pub mod doctor;
pub mod image;
pub mod kernel;
pub mod operation;
pub mod ssh;
pub mod system;
pub mod version;
pub mod vm;

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
