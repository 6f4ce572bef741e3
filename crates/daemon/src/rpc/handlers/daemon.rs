//! `daemon.*` handlers.

use crate::error::Error;
use std::sync::Arc;

use banger_proto::methods::daemon::{
    Check, CheckStatus, DoctorReport, LogChunk, LogsParams, OperationsListParams, PathsInfo,
    StatusInfo,
};
use banger_proto::methods::op::OperationInfo;
use banger_proto::methods::Empty;
use banger_proto::PROTOCOL_VERSION;

use crate::app::App;
use crate::caller::Ctx;
use crate::logging::LogTarget;

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
        dns: d
            .vms
            .dns
            .as_ref()
            .map(|s| s.local_addrs().iter().map(|a| a.to_string()).collect())
            .unwrap_or_default(),
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

/// The daemon's log names every user's VMs, images and operations, so only
/// root (or the user a per-user daemon runs as) may read it.
pub async fn logs(d: Arc<App>, cx: Ctx, p: LogsParams) -> Result<LogChunk, Error> {
    if !cx.caller.is_admin() {
        return Err(Error::denied(
            "the daemon log covers every user's VMs; only root can read it \
             (try: sudo banger daemon logs)",
        ));
    }
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
    d: Arc<App>,
    cx: Ctx,
    p: OperationsListParams,
) -> Result<Vec<OperationInfo>, Error> {
    d.ops
        .list(cx.caller.uid_filter(), p.all)
        .map_err(|e| Error::internal(format!("{e:#}")))
}

pub async fn doctor(d: Arc<App>, _cx: Ctx, _p: Empty) -> Result<DoctorReport, Error> {
    let d2 = d.clone();
    let checks = tokio::task::spawn_blocking(move || {
        let mut checks = banger_core::doctor::run_checks(&d2.paths, &d2.config);
        // Checks only the daemon can make: it owns the bridge and the DNS server.
        checks.push(network_check(&d2));
        checks.push(dns_check(&d2));
        checks
    })
    .await
    .map_err(|e| Error::internal(e.to_string()))?;
    Ok(DoctorReport {
        source: "daemon".into(),
        checks,
    })
}

/// The bridge's subnet against the host's routes.
fn network_check(d: &App) -> Check {
    let name = "network".to_string();
    let cfg = &d.config.network;
    if !cfg.enabled {
        return Check {
            name,
            status: CheckStatus::Skip,
            detail: "networking is off ([network] enabled = false)".into(),
            fix: None,
        };
    }
    let subnet = match banger_core::net_alloc::Subnet::parse(&cfg.bridge_cidr) {
        Ok(s) => s,
        Err(e) => {
            return Check {
                name,
                status: CheckStatus::Fail,
                detail: e,
                fix: Some(
                    "set [network] bridge_cidr to a private /24 such as 172.16.213.0/24".into(),
                ),
            }
        }
    };
    let Some(host) = d.vms.net_host.as_ref() else {
        return Check {
            name,
            status: CheckStatus::Skip,
            detail: "networking is off ([network] enabled = false)".into(),
            fix: None,
        };
    };
    match host.routes_overlapping(subnet.network, subnet.prefix, Some(&cfg.bridge_name)) {
        Ok(routes) if routes.is_empty() => Check {
            name,
            status: CheckStatus::Ok,
            detail: format!(
                "bridge {} on {subnet} (gateway {}), no conflicting routes",
                cfg.bridge_name,
                subnet.gateway()
            ),
            fix: None,
        },
        Ok(routes) => Check {
            name,
            status: CheckStatus::Warn,
            detail: format!("{subnet} overlaps existing routes: {}", routes.join("; ")),
            fix: Some(
                "set [network] bridge_cidr in the config to a range no other network uses".into(),
            ),
        },
        Err(e) => Check {
            name,
            status: CheckStatus::Skip,
            detail: format!("cannot read routes: {e}"),
            fix: None,
        },
    }
}

/// How `<name>.vm` resolution is wired on this host.
fn dns_check(d: &App) -> Check {
    use crate::dns::resolved::{self, Resolver};
    let name = "dns".to_string();
    let Some(dns) = &d.vms.dns else {
        return Check {
            name,
            status: if d.config.network.enabled {
                CheckStatus::Fail
            } else {
                CheckStatus::Skip
            },
            detail: "the DNS server is not running (see `banger daemon logs`)".into(),
            fix: Some("check [network] dns_listen is a free address:port".into()),
        };
    };
    let addrs: Vec<String> = dns.local_addrs().iter().map(|a| a.to_string()).collect();
    let loopback = dns.local_addrs().into_iter().find(|a| a.ip().is_loopback());
    match resolved::detect() {
        Resolver::Resolved => Check {
            name,
            status: CheckStatus::Ok,
            detail: format!(
                "answering on {}; systemd-resolved {} *.vm to the bridge address",
                addrs.join(", "),
                if d.vms.net.resolved_routed.load(std::sync::atomic::Ordering::SeqCst) { "routes" } else { "will route (once the bridge is up)" }
            ),
            fix: None,
        },
        Resolver::Other(how) => Check {
            name,
            status: CheckStatus::Warn,
            detail: format!("answering on {}, but the host resolves through {how}, which does not ask banger for *.vm", addrs.join(", ")),
            fix: loopback.map(resolved::manual_fix),
        },
    }
}
