//! [`Vms`]: the VM lifecycle service and exactly what it depends on — the
//! store, the host operations, the VMM backends, the live processes, the
//! host network and the DNS server. It knows nothing of the RPC layer, the
//! image and kernel registry or the daemon's own bookkeeping; handlers call
//! its verbs (crate::vm::verbs) and tests build one with a fake VMM and a
//! fake host (crate::vm::tests).
//!
//! Its parts are private to `crate::vm`: the daemon hands them over once
//! ([`Vms::new`] with [`Deps`]) and from then on reaches the service only
//! through its verbs and the few methods below, so nothing outside the
//! lifecycle can touch the store rows, processes or host state it manages.

use std::net::SocketAddr;
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
    pub(super) paths: Paths,
    pub(super) config: Config,
    pub(super) store: Arc<Store>,
    /// Loop devices, device-mapper and ext4 images (see crate::privileged).
    pub(super) disks: Arc<dyn DiskHost>,
    /// The bridge, taps, routes and nftables; `None` exactly when
    /// networking is off (`[network] enabled = false`), so nothing can touch
    /// the host network then (see crate::privileged).
    pub(super) net_host: Option<Arc<dyn NetHost>>,
    /// The VMM backends.
    pub(super) vmms: Vmms,
    /// Live VMM processes.
    pub(super) procs: Procs,
    pub(super) net: NetState,
    /// The `<name>.vm` DNS server: `None` when networking is off or its
    /// socket could not be bound (VMs then run without name resolution;
    /// nothing in the lifecycle depends on it).
    pub(super) dns: Option<DnsServer>,
    /// Tripped when the daemon shuts down.
    pub(super) shutdown: CancellationToken,
}

/// What a [`Vms`] is made of: the daemon passes the real host and VMMs,
/// tests pass fakes.
pub struct Deps {
    pub paths: Paths,
    pub config: Config,
    pub store: Arc<Store>,
    pub disks: Arc<dyn DiskHost>,
    /// `Some` exactly when `config.network.enabled`.
    pub net_host: Option<Arc<dyn NetHost>>,
    pub vmms: Vmms,
    /// The registry whose exits the reaper (crate::vm::reaper::run) consumes.
    pub procs: Procs,
    pub dns: Option<DnsServer>,
    pub shutdown: CancellationToken,
}

impl Vms {
    pub fn new(d: Deps) -> Vms {
        Vms {
            paths: d.paths,
            config: d.config,
            store: d.store,
            disks: d.disks,
            net_host: d.net_host,
            vmms: d.vmms,
            procs: d.procs,
            net: NetState::default(),
            dns: d.dns,
            shutdown: d.shutdown,
        }
    }

    /// Where the `<name>.vm` DNS server answers (empty without one).
    pub fn dns_addrs(&self) -> Vec<SocketAddr> {
        self.dns
            .as_ref()
            .map(|s| s.local_addrs())
            .unwrap_or_default()
    }

    /// Absolute path of a file the store records relative to the state dir.
    pub(super) fn state_path(&self, rel: &str) -> PathBuf {
        self.paths.state_dir.join(rel)
    }

    /// The network host, for code that has checked networking is on.
    pub(super) fn net_host(&self) -> Result<Arc<dyn NetHost>, Error> {
        self.net_host
            .clone()
            .ok_or_else(|| Error::internal("networking is off ([network] enabled = false)"))
    }
}
