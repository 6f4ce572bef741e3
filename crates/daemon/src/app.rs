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

use std::future::Future;

use banger_proto::methods::op::Operation;
use banger_proto::methods::OpBegun;

use crate::caller::Caller;
use crate::error::Error;
use crate::logging::LogTarget;
use crate::ops::{OpHandle, Ops};
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

impl App {
    /// Begins a registry operation (a build, import, register or pull) for
    /// `caller` on `target`, refused when the caller already runs
    /// `[limits] running_operations` of them. The body gets the registry.
    pub fn begin_registry_op<O, F, Fut>(
        &self,
        caller: &Caller,
        target: &str,
        body: F,
    ) -> Result<OpBegun, Error>
    where
        O: Operation,
        F: FnOnce(Arc<Registry>, OpHandle) -> Fut + Send + 'static,
        Fut: Future<Output = Result<O::Output, Error>> + Send + 'static,
    {
        self.ops
            .check_limit(caller.uid, self.config.limits.running_operations)?;
        let registry = self.registry.clone();
        let id = self
            .ops
            .begin::<O, _, _>(target, caller.uid, move |op| body(registry, op));
        Ok(OpBegun { operation_id: id })
    }
}
