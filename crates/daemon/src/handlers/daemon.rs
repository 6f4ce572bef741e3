//! `daemon.*` handlers.

use std::sync::Arc;

use banger_proto::methods::daemon::{
    DoctorReport, LogChunk, LogsParams, OperationsListParams, PathsInfo, StatusInfo,
};
use banger_proto::methods::op::OperationInfo;
use banger_proto::methods::Empty;
use banger_proto::{RpcError, PROTOCOL_VERSION};

use crate::caller::Ctx;
use crate::daemon::Daemon;
use crate::errors::Rpc;
use crate::logging::LogTarget;

pub async fn status(d: Arc<Daemon>, _cx: Ctx, _p: Empty) -> Result<StatusInfo, RpcError> {
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
        dns: d
            .dns
            .as_ref()
            .map(|s| s.local_addrs().iter().map(|a| a.to_string()).collect())
            .unwrap_or_default(),
    })
}

pub async fn shutdown(d: Arc<Daemon>, cx: Ctx, _p: Empty) -> Result<Empty, RpcError> {
    let me = rustix::process::geteuid().as_raw();
    if !(cx.caller.is_root() || cx.caller.uid == me) {
        return Err(RpcError::permission_denied(
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

pub async fn logs(d: Arc<Daemon>, _cx: Ctx, p: LogsParams) -> Result<LogChunk, RpcError> {
    let path = d.paths.log_file();
    if !matches!(d.log_target, LogTarget::File(_)) {
        // journald (or stderr): the client reads the journal itself.
        return Ok(LogChunk {
            path: path.display().to_string(),
            journald: d.log_target == LogTarget::Journald,
            offset: 0,
            next_offset: 0,
            data: String::new(),
        });
    }
    crate::logfile::read_chunk(&path, p.offset, p.tail_bytes)
}

pub async fn operations_list(
    d: Arc<Daemon>,
    cx: Ctx,
    p: OperationsListParams,
) -> Result<Vec<OperationInfo>, RpcError> {
    d.ops.list(cx.caller.uid_filter(), p.all).rpc()
}

pub async fn doctor(d: Arc<Daemon>, _cx: Ctx, _p: Empty) -> Result<DoctorReport, RpcError> {
    let d2 = d.clone();
    let checks =
        tokio::task::spawn_blocking(move || banger_core::doctor::run_checks(&d2.paths, &d2.config))
            .await
            .map_err(|e| RpcError::internal(e.to_string()))?;
    Ok(DoctorReport {
        source: "daemon".into(),
        checks,
    })
}
