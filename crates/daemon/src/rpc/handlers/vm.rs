//! `vm.*` handlers: params in, one call to the VM service's verb
//! (crate::vm::verbs), result out.

use std::sync::Arc;

use banger_proto::methods::daemon::LogChunk;
use banger_proto::methods::op::{OpIdParams, OperationInfo};
use banger_proto::methods::vm::{
    CreateBegun, CreateParams, DeleteParams, KillParams, LifecycleResult, ListParams,
    PortAddParams, PortMapping, PortRemoveParams, PruneResult, SetParams, StopParams, VmHealth,
    VmInfo, VmLogsParams, VmPorts, VmStats,
};
use banger_proto::methods::{Empty, NameParams};

use crate::app::App;
use crate::caller::Ctx;
use crate::error::Error;
use crate::vm::verbs;

/// The registry resolves the image (named, or the caller's default); the
/// VM service does the rest.
pub async fn create_begin(d: Arc<App>, cx: Ctx, p: CreateParams) -> Result<CreateBegun, Error> {
    let image = crate::images::for_create(&d.registry, &cx.caller, p.image.as_deref())?;
    verbs::create_begin(&d.vms, &d.ops, &cx.caller, p, image).await
}

pub async fn create_status(d: Arc<App>, cx: Ctx, p: OpIdParams) -> Result<OperationInfo, Error> {
    verbs::create_status(&d.ops, &cx.caller, p)
}

pub async fn create_cancel(d: Arc<App>, cx: Ctx, p: OpIdParams) -> Result<OperationInfo, Error> {
    verbs::create_cancel(&d.ops, &cx.caller, p)
}

pub async fn start(d: Arc<App>, cx: Ctx, p: NameParams) -> Result<LifecycleResult, Error> {
    verbs::start(&d.vms, &cx.caller, p).await
}

pub async fn stop(d: Arc<App>, cx: Ctx, p: StopParams) -> Result<LifecycleResult, Error> {
    verbs::stop(&d.vms, &cx.caller, p).await
}

pub async fn restart(d: Arc<App>, cx: Ctx, p: StopParams) -> Result<LifecycleResult, Error> {
    verbs::restart(&d.vms, &cx.caller, p).await
}

pub async fn pause(d: Arc<App>, cx: Ctx, p: NameParams) -> Result<LifecycleResult, Error> {
    verbs::pause(&d.vms, &cx.caller, p).await
}

pub async fn resume(d: Arc<App>, cx: Ctx, p: NameParams) -> Result<LifecycleResult, Error> {
    verbs::resume(&d.vms, &cx.caller, p).await
}

pub async fn kill(d: Arc<App>, cx: Ctx, p: KillParams) -> Result<LifecycleResult, Error> {
    verbs::kill(&d.vms, &cx.caller, p).await
}

pub async fn delete(d: Arc<App>, cx: Ctx, p: DeleteParams) -> Result<Empty, Error> {
    verbs::delete(&d.vms, &cx.caller, p).await
}

pub async fn prune(d: Arc<App>, cx: Ctx, p: Empty) -> Result<PruneResult, Error> {
    verbs::prune(&d.vms, &cx.caller, p).await
}

pub async fn set(d: Arc<App>, cx: Ctx, p: SetParams) -> Result<VmInfo, Error> {
    verbs::set(&d.vms, &cx.caller, p).await
}

pub async fn list(d: Arc<App>, cx: Ctx, p: ListParams) -> Result<Vec<VmInfo>, Error> {
    verbs::list(&d.vms, &cx.caller, p).await
}

pub async fn show(d: Arc<App>, cx: Ctx, p: NameParams) -> Result<VmInfo, Error> {
    verbs::show(&d.vms, &cx.caller, p).await
}

pub async fn logs(d: Arc<App>, cx: Ctx, p: VmLogsParams) -> Result<LogChunk, Error> {
    verbs::logs(&d.vms, &cx.caller, p).await
}

pub async fn stats(d: Arc<App>, cx: Ctx, p: NameParams) -> Result<VmStats, Error> {
    verbs::stats(&d.vms, &cx.caller, p).await
}

pub async fn health(d: Arc<App>, cx: Ctx, p: NameParams) -> Result<VmHealth, Error> {
    verbs::health(&d.vms, &cx.caller, p).await
}

pub async fn ping(d: Arc<App>, cx: Ctx, p: NameParams) -> Result<VmHealth, Error> {
    verbs::ping(&d.vms, &cx.caller, p).await
}

pub async fn ports(d: Arc<App>, cx: Ctx, p: NameParams) -> Result<VmPorts, Error> {
    verbs::ports(&d.vms, &cx.caller, p).await
}

pub async fn port_add(d: Arc<App>, cx: Ctx, p: PortAddParams) -> Result<Vec<PortMapping>, Error> {
    verbs::port_add(&d.vms, &cx.caller, p).await
}

pub async fn port_remove(
    d: Arc<App>,
    cx: Ctx,
    p: PortRemoveParams,
) -> Result<Vec<PortMapping>, Error> {
    verbs::port_remove(&d.vms, &cx.caller, p).await
}

pub async fn port_list(d: Arc<App>, cx: Ctx, p: NameParams) -> Result<Vec<PortMapping>, Error> {
    verbs::port_list(&d.vms, &cx.caller, p).await
}
