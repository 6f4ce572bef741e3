//! `daemon.*` handlers.

use crate::error::Error;
use std::sync::Arc;

use banger_proto::methods::daemon::{
    DoctorReport, LogChunk, LogsParams, OperationsListParams, PathsInfo, StatusInfo,
};
use banger_proto::methods::op::OperationInfo;
use banger_proto::methods::Empty;
use banger_proto::PROTOCOL_VERSION;

use crate::app::App;
use crate::caller::Ctx;

pub async fn status(d: Arc<App>, _cx: Ctx, _p: Empty) -> Result<StatusInfo, Error> {
    let p = &d.paths;
    Ok(StatusInfo {
        version: env!("CARGO_PKG_VERSION").to_string(),
        protocol: PROTOCOL_VERSION,
        pid: std::process::id(),
        uid: rustix::process::geteuid().as_raw(),
        started_at: d.started_at.clone(),
        uptime_secs: d.started.elapsed().as_secs(),
        paths: PathsInfo {
            config: p.config_file.display().to_string(),
            state: p.state_dir.display().to_string(),
            cache: p.cache_dir.display().to_string(),
            runtime: p.runtime_dir.display().to_string(),
            socket: p.socket().display().to_string(),
            log: p.log_file().display().to_string(),
        },
        log_target: d.log_target.label().to_string(),
        operations_running: d.ops.running() as u32,
        dns: d.vms.dns_addrs().iter().map(|a| a.to_string()).collect(),
    })
}

pub async fn shutdown(d: Arc<App>, cx: Ctx, _p: Empty) -> Result<Empty, Error> {
    if !cx.caller.is_admin() {
        return Err(Error::denied(
            "only root can stop the daemon (try: sudo banger daemon stop)",
        ));
    }
    tracing::info!(
        uid = cx.caller.uid,
        pid = cx.caller.pid,
        "shutdown requested"
    );
    d.shutdown.cancel();
    Ok(Empty {})
}

pub async fn logs(d: Arc<App>, cx: Ctx, p: LogsParams) -> Result<LogChunk, Error> {
    crate::logfile::daemon_log(&d.paths.log_file(), &d.log_target, &cx.caller, &p)
}

pub async fn operations_list(
    d: Arc<App>,
    cx: Ctx,
    p: OperationsListParams,
) -> Result<Vec<OperationInfo>, Error> {
    d.ops
        .list(cx.caller.uid_filter(), p.all)
        .map_err(|e| Error::internal(format!("{e:#}")))
}

pub async fn doctor(d: Arc<App>, _cx: Ctx, _p: Empty) -> Result<DoctorReport, Error> {
    crate::doctor::report(&d.paths, &d.config, &d.vms).await
}
