//! The VMM backends a VM can use, by name (`VmSpec.vmm`).

use std::sync::Arc;

use banger_core::config::Config;
use banger_proto::{ErrorKind, RpcError};

use super::backend::Vmm;
use super::firecracker_vmm::FirecrackerVmm;

pub struct Vmms {
    firecracker: Arc<FirecrackerVmm>,
}

impl Vmms {
    pub fn new(config: &Config) -> Vmms {
        Vmms {
            firecracker: Arc::new(FirecrackerVmm::new(config.clone())),
        }
    }

    pub fn get(&self, kind: &str) -> Result<Arc<dyn Vmm>, RpcError> {
        match kind {
            "firecracker" => Ok(self.firecracker.clone()),
            other => Err(RpcError::new(
                ErrorKind::PreconditionFailed,
                format!("unknown VMM {other:?}"),
            )),
        }
    }
}
