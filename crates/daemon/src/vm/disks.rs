//! Which root-disk backend new VMs get: `[vm] disk_backend` in the config
//! (`auto` by default: reflink, else dm-snapshot, else copy).

use banger_proto::{ErrorKind, RpcError};

use crate::daemon::Daemon;
use crate::disk::{self, RootBackend};

pub fn backend(d: &Daemon) -> Result<RootBackend, RpcError> {
    let pref = match d.config.vm.disk_backend.as_str() {
        "auto" => None,
        "reflink" => Some(RootBackend::Reflink),
        "dm-snapshot" => Some(RootBackend::DmSnapshot),
        "copy" => Some(RootBackend::Copy),
        other => {
            return Err(RpcError::new(
                ErrorKind::PreconditionFailed,
                format!(
                    "config [vm] disk_backend = {other:?}: use auto, reflink, dm-snapshot or copy"
                ),
            ))
        }
    };
    disk::choose_backend(pref, &d.paths.vms_dir(), d.host.as_ref())
        .map_err(crate::errors::from_disk)
}
