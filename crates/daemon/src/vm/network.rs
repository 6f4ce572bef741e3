//! The network stage of the start pipeline.
//!
//! Host networking (bridge, TAP per VM, addresses, NAT, DNS) is not built
//! yet, so VMs run without a network interface: `attach` hands the VMM no
//! device and `release` has nothing to undo. This module is the seam the
//! networking work fills in; the lifecycle already calls it at the right
//! points and times the stage.

use std::sync::Arc;

use banger_proto::RpcError;

use super::record::Vm;
use crate::daemon::Daemon;
use crate::vmm::backend::NetAttach;

/// Prepares the VM's network device before its VMM starts.
pub async fn attach(_d: &Arc<Daemon>, _vm: &Vm) -> Result<Option<NetAttach>, RpcError> {
    Ok(None)
}

/// Undoes [`attach`] when the VM stops or is deleted.
pub async fn release(_d: &Arc<Daemon>, _vm: &Vm) -> Result<(), RpcError> {
    Ok(())
}
