//! The VMM backends a VM can use, by name (`VmSpec.vmm`).

use std::sync::Arc;

use banger_core::config::Config;
use banger_proto::{ErrorKind, RpcError};

use super::backend::Vmm;
use super::firecracker_vmm::FirecrackerVmm;
use super::qemu_vmm::{QemuOptions, QemuVmm};

pub struct Vmms {
    firecracker: Arc<FirecrackerVmm>,
    qemu: Arc<QemuVmm>,
}

impl Vmms {
    pub fn new(config: &Config) -> Vmms {
        Vmms {
            firecracker: Arc::new(FirecrackerVmm::new(config.clone())),
            qemu: Arc::new(QemuVmm::new(QemuOptions::default())),
        }
    }

    /// The QEMU backend itself (for [`QemuVmm::accel`]).
    pub fn qemu(&self) -> &Arc<QemuVmm> {
        &self.qemu
    }

    pub fn get(&self, kind: &str) -> Result<Arc<dyn Vmm>, RpcError> {
        match kind {
            "firecracker" => Ok(self.firecracker.clone()),
            "qemu" => Ok(self.qemu.clone()),
            other => Err(RpcError::new(
                ErrorKind::PreconditionFailed,
                format!("unknown VMM {other:?}"),
            )),
        }
    }
}
