//! The VMM backends a VM can use, by name (`VmSpec.vmm`).
//!
//! The lifecycle only sees `Arc<dyn Vmm>`: the daemon registers Firecracker
//! and QEMU ([`Vmms::new`]); tests register a fake ([`Vmms::with`]) and drive
//! the same create/start/stop/delete code with it.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use banger_core::config::Config;
use banger_core::vmm_select::{self, Choice, HostFacts};

use super::backend::Vmm;
use super::firecracker_vmm::FirecrackerVmm;
use super::qemu_vmm::{QemuOptions, QemuVmm};
use crate::error::Error;

pub struct Vmms {
    config: Config,
    backends: BTreeMap<&'static str, Arc<dyn Vmm>>,
    /// What `auto` means on this host, decided on first need.
    auto: OnceLock<Choice>,
}

impl Vmms {
    /// Firecracker and QEMU, as configured.
    pub fn new(config: &Config) -> Vmms {
        Vmms::with(
            config,
            vec![
                Arc::new(FirecrackerVmm::new(config.clone())),
                Arc::new(QemuVmm::new(QemuOptions::default())),
            ],
        )
    }

    /// Exactly these backends, each under its [`Vmm::kind`]. With a backend
    /// list that lacks the host's `auto` choice, `auto` picks the first.
    pub fn with(config: &Config, backends: Vec<Arc<dyn Vmm>>) -> Vmms {
        Vmms {
            config: config.clone(),
            backends: backends.into_iter().map(|b| (b.kind(), b)).collect(),
            auto: OnceLock::new(),
        }
    }

    /// The backend a new VM gets: `requested` (`firecracker`, `qemu` or
    /// `auto`), else the config's `[vm] vmm`; `auto` is resolved by
    /// [`vmm_select::choose`] once per daemon.
    pub fn resolve(&self, requested: Option<&str>) -> Result<&'static str, Error> {
        let want = requested.unwrap_or(&self.config.vm.vmm);
        if let Some((kind, _)) = self.backends.get_key_value(want) {
            return Ok(kind);
        }
        vmm_select::validate(want).map_err(Error::invalid)?;
        if want != "auto" {
            return Err(Error::precondition(format!(
                "the {want} VMM is not available"
            )));
        }
        let c = self.auto.get_or_init(|| {
            let c = vmm_select::choose(&HostFacts::detect(&self.config));
            tracing::info!(vmm = c.vmm, reason = %c.reason, "auto VMM");
            c
        });
        match self.backends.get_key_value(c.vmm) {
            Some((kind, _)) => Ok(kind),
            None => self
                .backends
                .keys()
                .next()
                .copied()
                .ok_or_else(|| Error::precondition("no VMM backend is registered")),
        }
    }

    pub fn get(&self, kind: &str) -> Result<Arc<dyn Vmm>, Error> {
        self.backends
            .get(kind)
            .cloned()
            .ok_or_else(|| Error::precondition(format!("unknown VMM {kind:?}")))
    }
}
