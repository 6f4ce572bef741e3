//! [`App`]: the daemon's composition root, handed to every RPC handler as
//! `Arc<App>`. It holds the domain services — [`Vms`] (the VM lifecycle),
//! [`Registry`] (kernels, images, builds), [`Ops`] (asynchronous operations)
//! — and the daemon's own facts (paths, config, start time, log target,
//! shutdown token) for the `daemon.*` methods. Services do not see `App`:
//! each holds only what it uses.
//!
//! Nothing here is behind a daemon-wide lock: the store serialises its own
//! statements, the operation registry guards its own map, and the rest is
//! read-only after start.

use std::sync::Arc;
use std::time::Instant;

use banger_core::config::Config;
use banger_core::paths::Paths;
use tokio_util::sync::CancellationToken;

use crate::logging::LogTarget;
use crate::ops::Ops;
use crate::registry::Registry;
use crate::vm::Vms;

pub struct App {
    pub vms: Arc<Vms>,
    pub registry: Arc<Registry>,
    pub ops: Ops,
    pub paths: Paths,
    pub config: Config,
    pub started_at: String,
    pub started: Instant,
    /// Tripped by SIGTERM/SIGINT or `daemon.shutdown`.
    pub shutdown: CancellationToken,
    pub log_target: LogTarget,
}
