//! The daemon's shared state, handed to every handler as `Arc<Daemon>`.
//!
//! Nothing here is behind a daemon-wide lock: the store serialises its own
//! statements, the operation registry guards its own map, and the rest is
//! read-only after start.

use std::sync::Arc;
use std::time::Instant;

use banger_core::config::Config;
use banger_core::paths::Paths;
use banger_core::store::Store;
use tokio_util::sync::CancellationToken;

use crate::logging::LogTarget;
use crate::ops::Ops;
use crate::privileged::HostOps;
use crate::vm::procs::Procs;
use crate::vmm::registry::Vmms;

pub struct Daemon {
    pub paths: Paths,
    pub config: Config,
    pub store: Arc<Store>,
    pub ops: Ops,
    pub started_at: String,
    pub started: Instant,
    /// Tripped by SIGTERM/SIGINT or `daemon.shutdown`.
    pub shutdown: CancellationToken,
    pub log_target: LogTarget,
    /// Every privileged host operation goes through this (see crate::privileged).
    pub host: Arc<dyn HostOps>,
    /// The VMM backends.
    pub vmms: Vmms,
    /// Live VMM processes.
    pub procs: Procs,
    /// The `<name>.vm` DNS server (None when networking is off).
    pub dns: Option<crate::dns::DnsServer>,
    pub net: crate::vm::network::NetState,
}

impl Daemon {
    /// Absolute path of a file the store records relative to the state dir.
    pub fn state_path(&self, rel: &str) -> std::path::PathBuf {
        self.paths.state_dir.join(rel)
    }
}
