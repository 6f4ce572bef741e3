//! The `doctor` checks only the daemon can make, because it owns the bridge
//! and the DNS server: the bridge's subnet against the host's routes, and
//! how `<name>.vm` resolution is wired. Blocking (rtnetlink, files): run on
//! a blocking thread (crate::doctor does).

use std::sync::atomic::Ordering;

use banger_proto::methods::daemon::{Check, CheckStatus};

use crate::dns::resolved::{self, Resolver};
use crate::vm::Vms;

/// The bridge's subnet against the host's routes.
pub fn network(d: &Vms) -> Check {
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
    let Some(host) = d.net_host.as_ref() else {
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
pub fn dns(d: &Vms) -> Check {
    let name = "dns".to_string();
    let Some(dns) = &d.dns else {
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
                if d.net.resolved_routed.load(Ordering::SeqCst) { "routes" } else { "will route (once the bridge is up)" }
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
