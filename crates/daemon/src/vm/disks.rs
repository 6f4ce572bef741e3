//! Which root-disk backend new VMs get: `[vm] disk_backend` in the config
//! (`auto` by default: reflink, else dm-snapshot, else copy).

use crate::error::Error;

use crate::disk::{self, RootBackend};
use crate::vm::Vms;

pub fn backend(d: &Vms) -> Result<RootBackend, Error> {
    let pref = match d.config.vm.disk_backend.as_str() {
        "auto" => None,
        "reflink" => Some(RootBackend::Reflink),
        "dm-snapshot" => Some(RootBackend::DmSnapshot),
        "copy" => Some(RootBackend::Copy),
        other => {
            return Err(Error::precondition(format!(
                "config [vm] disk_backend = {other:?}: use auto, reflink, dm-snapshot or copy"
            )))
        }
    };
    disk::choose_backend(pref, &d.paths.vms_dir(), d.disks.as_ref()).map_err(Error::from)
}
