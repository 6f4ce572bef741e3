//! [`Registry`]: the kernel and image registry service (crate::kernels,
//! crate::images) and the builds that feed it (crate::builds), with what
//! they depend on: the store, the daemon's directories and its config.
//! Nothing here touches VMs, VMMs or the host network.

use std::path::PathBuf;
use std::sync::Arc;

use banger_core::config::Config;
use banger_core::paths::Paths;
use banger_core::store::Store;

use crate::build_turns::BuildTurns;

pub struct Registry {
    pub paths: Paths,
    pub config: Config,
    pub store: Arc<Store>,
    /// One build per cache key at a time, waited for asynchronously.
    pub turns: BuildTurns,
}

impl Registry {
    /// Absolute path of a file the store records relative to the state dir.
    pub fn state_path(&self, rel: &str) -> PathBuf {
        self.paths.state_dir.join(rel)
    }
}
