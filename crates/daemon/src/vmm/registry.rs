//! The VMM backends a VM can use, by name (`VmSpec.vmm`).

use std::sync::{Arc, OnceLock};

use banger_core::config::Config;
use banger_core::vmm_select::{self, Choice, HostFacts};
use banger_proto::{ErrorKind, RpcError};

use super::backend::Vmm;
use super::firecracker_vmm::FirecrackerVmm;
use super::qemu_vmm::{QemuOptions, QemuVmm};

pub struct Vmms {
    config: Config,
    firecracker: Arc<FirecrackerVmm>,
    qemu: Arc<QemuVmm>,
    /// What `auto` means on this host, decided on first need.
    auto: OnceLock<Choice>,
}

impl Vmms {
    pub fn new(config: &Config) -> Vmms {
        Vmms {
            config: config.clone(),
            firecracker: Arc::new(FirecrackerVmm::new(config.clone())),
            qemu: Arc::new(QemuVmm::new(QemuOptions::default())),
            auto: OnceLock::new(),
        }
    }

    /// The backend a new VM gets: `requested` (`firecracker`, `qemu` or
    /// `auto`), else the config's `[vm] vmm`; `auto` is resolved by
    /// [`vmm_select::choose`] once per daemon.
    pub fn resolve(&self, requested: Option<&str>) -> Result<&'static str, RpcError> {
        let want = requested.unwrap_or(&self.config.vm.vmm);
        vmm_select::validate(want).map_err(RpcError::invalid_params)?;
        Ok(match want {
            vmm_select::FIRECRACKER => vmm_select::FIRECRACKER,
            vmm_select::QEMU => vmm_select::QEMU,
            _ => {
                let c = self.auto.get_or_init(|| {
                    let c = vmm_select::choose(&HostFacts::detect(&self.config));
                    tracing::info!(vmm = c.vmm, reason = %c.reason, "auto VMM");
                    c
                });
                c.vmm
            }
        })
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
