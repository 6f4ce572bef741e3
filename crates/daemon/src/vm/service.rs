//! [`Vms`]: the VM lifecycle service and exactly what it depends on — the
//! store, the host operations, the VMM backends, the live processes, the
//! host network and the DNS server. It knows nothing of the RPC layer, the
//! image and kernel registry or the daemon's own bookkeeping; handlers call
//! its verbs (crate::vm::verbs) and tests build one with a fake VMM and a
//! fake host (crate::vm::tests).

use std::path::PathBuf;
use std::sync::Arc;

use banger_core::config::Config;
use banger_core::paths::Paths;
use banger_core::store::Store;
use tokio_util::sync::CancellationToken;

use super::network::NetState;
use super::procs::Procs;
use crate::dns::DnsServer;
use crate::error::Error;
use crate::privileged::{DiskHost, NetHost};
use crate::vmm::registry::Vmms;

pub struct Vms {
    pub paths: Paths,
    pub config: Config,
    pub store: Arc<Store>,
    /// Loop devices, device-mapper and ext4 images (see crate::privileged).
    pub disks: Arc<dyn DiskHost>,
    /// The bridge, taps, routes and nftables; `None` exactly when
    /// networking is off (`[network] enabled = false`), so nothing can touch
    /// the host network then (see crate::privileged).
    pub net_host: Option<Arc<dyn NetHost>>,
    /// The VMM backends.
    pub vmms: Vmms,
    /// Live VMM processes.
    pub procs: Procs,
    pub net: NetState,
    /// The `<name>.vm` DNS server (None when networking is off).
    pub dns: Option<DnsServer>,
    /// Tripped when the daemon shuts down.
    pub shutdown: CancellationToken,
}

impl Vms {
    /// Absolute path of a file the store records relative to the state dir.
    pub fn state_path(&self, rel: &str) -> PathBuf {
        self.paths.state_dir.join(rel)
    }

    /// The network host, for code that has checked networking is on.
    pub fn net_host(&self) -> Result<Arc<dyn NetHost>, Error> {
        self.net_host
            .clone()
            .ok_or_else(|| Error::internal("networking is off ([network] enabled = false)"))
    }
}
