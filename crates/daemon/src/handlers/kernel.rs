//! `kernel.*` handlers.

use std::sync::Arc;

use banger_proto::methods::kernel::{ImportParams, KernelInfo};
use banger_proto::methods::{Empty, NameParams, OpBegun};
use banger_proto::names::validate_name;
use banger_proto::RpcError;

use crate::caller::Ctx;
use crate::daemon::Daemon;
use crate::errors::Rpc;
use crate::kernels;

pub async fn import_begin(
    d: Arc<Daemon>,
    mut cx: Ctx,
    p: ImportParams,
) -> Result<OpBegun, RpcError> {
    validate_name(&p.name).map_err(|e| RpcError::invalid_params(e.to_string()))?;
    if d.store.kernel_by_name(&p.name).rpc()?.is_some() {
        return Err(RpcError::already_exists("kernel", &p.name));
    }
    let kernel = cx.fds.take(p.kernel, "kernel")?;
    banger_core::artifact::stage::require_regular(&kernel, "kernel")
        .map_err(crate::errors::from_stage)?;
    let initrd = match p.initrd {
        Some(r) => {
            let f = cx.fds.take(r, "initrd")?;
            banger_core::artifact::stage::require_regular(&f, "initrd")
                .map_err(crate::errors::from_stage)?;
            Some(f)
        }
        None => None,
    };
    let owner = cx.caller.uid;
    let name = p.name.clone();
    let d2 = d.clone();
    let id = d.ops.begin("kernel.import", &p.name, owner, move |op| {
        kernels::import(d2, op, owner, name, kernel, initrd)
    });
    Ok(OpBegun { operation_id: id })
}

pub async fn list(d: Arc<Daemon>, cx: Ctx, _p: Empty) -> Result<Vec<KernelInfo>, RpcError> {
    d.store
        .list_kernels()
        .rpc()?
        .iter()
        .filter(|k| cx.caller.can_see_shared(k.owner_uid))
        .map(|k| kernels::info(&d, k))
        .collect()
}

pub async fn show(d: Arc<Daemon>, cx: Ctx, p: NameParams) -> Result<KernelInfo, RpcError> {
    kernels::info(&d, &kernels::find(&d, &cx.caller, &p.name)?)
}

pub async fn delete(d: Arc<Daemon>, cx: Ctx, p: NameParams) -> Result<Empty, RpcError> {
    kernels::delete(&d, &cx.caller, &p.name)?;
    Ok(Empty {})
}
