//! banger's nftables table: `table ip banger`, the only nftables state
//! banger owns. It is never edited rule by rule: [`script`] turns the
//! desired state (a [`Plan`]: the bridge, the uplink, the running VMs with
//! their NAT flag and published ports) into one nft script that deletes the
//! table and builds it again, applied as one transaction ([`apply`]). So the
//! table is always exactly what the plan says, applying a plan twice is the
//! same as once, a failed apply changes nothing, and [`remove`] undoes it
//! all.
//!
//! The rules, chain by chain (every rule carries `comment "vm=<name>"` or,
//! for the fixed ones, `comment "banger"`):
//!
//! - `prerouting` (nat, dstnat): a published port, `ip saddr != SUBNET
//!   (ip daddr HOST_IP | fib daddr type local) <proto> dport HOST_PORT dnat
//!   to GUEST:PORT`. Without a host address it matches every local address
//!   of the host (`fib daddr type local`), and only those, so traffic routed
//!   through the host to elsewhere is never captured. Connections from the
//!   guests themselves are not DNATed (they reach the host's own port, which
//!   normally refuses them): where `br_netfilter` is active (Docker loads
//!   it; these machines have it built in) this hook runs while the frame is
//!   still in the bridge, and a DNAT back into the same bridge is then
//!   *bridged* to the target guest instead of routed, which isolated ports
//!   drop: the connection would hang instead of failing.
//! - `output` (nat, -100): the same rules for connections made by the host
//!   itself (`curl localhost:HOST_PORT`). Those from 127.0.0.1 leave through
//!   the bridge with a loopback source, which the kernel allows only with
//!   `route_localnet` on the bridge ([`HostOps::bridge_ensure`] sets it).
//! - `postrouting` (nat, srcnat): a NAT VM's traffic leaving by the uplink is
//!   masqueraded; connections from 127.0.0.0/8 into the bridge are
//!   masqueraded to the bridge address (the guest would otherwise answer to
//!   its own loopback).
//! - `forward` (filter, policy accept; the host's own forwarding policy is
//!   never changed): established and related traffic passes; a NAT VM may go
//!   out the uplink; DNATed connections to a published guest port pass; and
//!   anything else arriving from the bridge and leaving by another
//!   interface is dropped, so a VM without NAT reaches the host (input, not
//!   forward) and nothing beyond it. Routed guest traffic enters on the
//!   bridge device, not the tap, so rules match the bridge name.
//!
//! VM-to-VM traffic is not filtered here: it is switched inside the bridge,
//! below IP, and stopped there by isolated bridge ports
//! ([`HostOps::tap_create`]). With `br_netfilter` such bridged frames also
//! pass the `forward` hook, with the bridge as both input and output
//! interface, which the drop rule leaves alone (so allowed VM-to-VM traffic
//! still flows).

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::privileged::{HostError, HostOps};

/// The table's family and name.
pub const FAMILY: &str = "ip";
pub const TABLE: &str = "banger";

/// The comment of the rules that do not belong to one VM.
const FIXED: &str = "banger";

/// The chains, in the order the script declares them.
const CHAINS: [(&str, &str); 4] = [
    (
        "prerouting",
        "type nat hook prerouting priority dstnat; policy accept;",
    ),
    (
        "output",
        "type nat hook output priority -100; policy accept;",
    ),
    (
        "postrouting",
        "type nat hook postrouting priority srcnat; policy accept;",
    ),
    (
        "forward",
        "type filter hook forward priority filter; policy accept;",
    ),
];

/// A transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// A protocol that is neither `tcp` nor `udp`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown protocol {0:?} (expected tcp or udp)")]
pub struct UnknownProto(pub String);

impl FromStr for Proto {
    type Err = UnknownProto;

    fn from_str(s: &str) -> Result<Proto, UnknownProto> {
        match s {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            other => Err(UnknownProto(other.into())),
        }
    }
}

/// A published port: connections to `host_ip:host_port` go to the guest's
/// `guest_port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMap {
    /// `None`: every address of the host.
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub guest_port: u16,
    pub proto: Proto,
}

/// One running VM's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNet {
    pub vm_id: String,
    /// Used in rule comments (`vm=<name>`): a DNS label.
    pub vm_name: String,
    pub ip: Ipv4Addr,
    /// Its tap (not used by the rules: routed guest traffic is seen on the
    /// bridge).
    pub tap: String,
    /// Whether it may reach beyond the host, masqueraded out of the uplink.
    pub nat: bool,
    pub ports: Vec<PortMap>,
}

/// The desired state of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub bridge: String,
    /// The bridge's subnet (network address, prefix length).
    pub subnet: (Ipv4Addr, u8),
    /// The interface NAT masquerades out of (the default route's device);
    /// required when any VM has NAT.
    pub uplink: Option<String>,
    /// Running VMs only.
    pub vms: Vec<VmNet>,
}

/// One rule of the table, as [`rules`] reads it back (and [`expected_rules`]
/// predicts it): its chain, its statement in nft's own syntax without the
/// comment (`ip saddr 10.0.0.2 oifname "eth0" masquerade`), and its comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    pub text: String,
    pub comment: Option<String>,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.chain, self.text)?;
        if let Some(c) = &self.comment {
            write!(f, " comment {c:?}")?;
        }
        Ok(())
    }
}

fn mask(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        n => u32::MAX << (32 - u32::from(n.min(32))),
    }
}

fn network(plan: &Plan) -> Ipv4Addr {
    let (net, prefix) = plan.subnet;
    Ipv4Addr::from(u32::from(net) & mask(prefix))
}

/// The VMs sorted by name then id, and each one's ports sorted, so the same
/// plan always gives the same script whatever order the caller listed them.
fn sorted(plan: &Plan) -> Vec<(&VmNet, Vec<&PortMap>)> {
    let mut vms: Vec<&VmNet> = plan.vms.iter().collect();
    vms.sort_by(|a, b| (&a.vm_name, &a.vm_id).cmp(&(&b.vm_name, &b.vm_id)));
    vms.into_iter()
        .map(|vm| {
            let mut ports: Vec<&PortMap> = vm.ports.iter().collect();
            ports.sort_by_key(|p| (p.proto, p.host_ip, p.host_port, p.guest_port));
            (vm, ports)
        })
        .collect()
}

/// The rules [`script`] writes for `plan`, in order, exactly as [`rules`]
/// reads them back once applied. `doctor` compares the two to find drift.
pub fn expected_rules(plan: &Plan) -> Vec<Rule> {
    let br = &plan.bridge;
    let vms = sorted(plan);
    let mut out = Vec::new();
    let mut push = |chain: &str, text: String, comment: &str| {
        out.push(Rule {
            chain: chain.into(),
            text,
            comment: Some(comment.into()),
        })
    };
    let vm_comment = |vm: &VmNet| format!("vm={}", vm.vm_name);

    let subnet = format!("{}/{}", network(plan), plan.subnet.1);

    // prerouting and output: one DNAT per published port; in prerouting not
    // for connections from the guests (see the module doc).
    for chain in ["prerouting", "output"] {
        let not_guests = if chain == "prerouting" {
            format!("ip saddr != {subnet} ")
        } else {
            String::new()
        };
        for (vm, ports) in &vms {
            for p in ports {
                let dst = match p.host_ip {
                    Some(ip) => format!("ip daddr {ip}"),
                    None => "fib daddr type local".into(),
                };
                push(
                    chain,
                    format!(
                        "{not_guests}{dst} {} dport {} dnat to {}:{}",
                        p.proto, p.host_port, vm.ip, p.guest_port
                    ),
                    &vm_comment(vm),
                );
            }
        }
    }

    // postrouting
    if let Some(uplink) = &plan.uplink {
        for (vm, _) in vms.iter().filter(|(vm, _)| vm.nat) {
            push(
                "postrouting",
                format!("ip saddr {} oifname \"{uplink}\" masquerade", vm.ip),
                &vm_comment(vm),
            );
        }
    }
    push(
        "postrouting",
        format!("oifname \"{br}\" ip saddr 127.0.0.0/8 masquerade"),
        FIXED,
    );

    // forward
    push(
        "forward",
        "ct state established,related accept".into(),
        FIXED,
    );
    if let Some(uplink) = &plan.uplink {
        for (vm, _) in vms.iter().filter(|(vm, _)| vm.nat) {
            push(
                "forward",
                format!(
                    "iifname \"{br}\" ip saddr {} oifname \"{uplink}\" accept",
                    vm.ip
                ),
                &vm_comment(vm),
            );
        }
    }
    for (vm, ports) in &vms {
        for p in ports {
            push(
                "forward",
                format!(
                    "oifname \"{br}\" ip daddr {} {} dport {} ct status dnat accept",
                    vm.ip, p.proto, p.guest_port
                ),
                &vm_comment(vm),
            );
        }
    }
    push(
        "forward",
        format!("iifname \"{br}\" oifname != \"{br}\" drop"),
        FIXED,
    );
    out
}

/// The whole table as one nft script. It first makes sure the table exists
/// (`table ip banger {}` is a no-op when it does) so it can delete it, then
/// declares it again with its chains and rules: in one transaction the old
/// content, chains included, is replaced by exactly the new one. Same plan,
/// same script. Names are assumed valid ([`apply`] checks them).
pub fn script(plan: &Plan) -> String {
    let rules = expected_rules(plan);
    let mut s = format!(
        "# banger: generated, applied as one transaction; do not edit\n\
         table {FAMILY} {TABLE} {{}}\n\
         delete table {FAMILY} {TABLE}\n\
         table {FAMILY} {TABLE} {{\n"
    );
    for (i, (chain, spec)) in CHAINS.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        s.push_str(&format!("\tchain {chain} {{\n\t\t{spec}\n"));
        for r in rules.iter().filter(|r| r.chain == *chain) {
            let comment = r.comment.as_deref().unwrap_or(FIXED);
            s.push_str(&format!("\t\t{} comment \"{comment}\"\n", r.text));
        }
        s.push_str("\t}\n");
    }
    s.push_str("}\n");
    s
}

fn refuse(what: &str, why: String) -> HostError {
    HostError::io(
        "refusing to apply the nftables plan:",
        Path::new(what),
        std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
    )
}

/// Checks what [`script`] assumes: names that quote safely, guests inside
/// the subnet, an uplink when a VM wants NAT, no host port published twice.
fn validate(plan: &Plan) -> Result<(), HostError> {
    crate::privileged::check_ifname(&plan.bridge)?;
    if let Some(u) = &plan.uplink {
        crate::privileged::check_ifname(u)?;
        if *u == plan.bridge {
            return Err(refuse(u, "the uplink cannot be the bridge".into()));
        }
    }
    let (_, prefix) = plan.subnet;
    if !(1..=30).contains(&prefix) {
        return Err(refuse(
            &format!("{}/{prefix}", plan.subnet.0),
            "the prefix length must be 1 to 30".into(),
        ));
    }
    // (proto, host port, host address, VM) of every mapping seen so far.
    let mut published: Vec<(Proto, u16, Option<Ipv4Addr>, &str)> = Vec::new();
    for vm in &plan.vms {
        let name_ok = !vm.vm_name.is_empty()
            && vm
                .vm_name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(refuse(
                &vm.vm_name,
                "a VM name in a rule comment must be letters, digits, '-', '_' or '.'".into(),
            ));
        }
        if u32::from(vm.ip) & mask(prefix) != u32::from(network(plan)) {
            return Err(refuse(
                &vm.vm_name,
                format!(
                    "its address {} is outside {}/{prefix}",
                    vm.ip,
                    network(plan)
                ),
            ));
        }
        if vm.nat && plan.uplink.is_none() {
            return Err(HostError::Unavailable(format!(
                "VM {} wants NAT but the host has no IPv4 default route to masquerade out of",
                vm.vm_name
            )));
        }
        for p in &vm.ports {
            if p.host_port == 0 || p.guest_port == 0 {
                return Err(refuse(&vm.vm_name, "port 0 cannot be published".into()));
            }
            // Two mappings of a port clash when their host addresses can be
            // the same: equal, or either is "every address".
            if let Some((.., other)) = published.iter().find(|(proto, port, ip, _)| {
                *proto == p.proto
                    && *port == p.host_port
                    && (ip.is_none() || p.host_ip.is_none() || *ip == p.host_ip)
            }) {
                return Err(refuse(
                    &vm.vm_name,
                    format!(
                        "host port {}/{} is also published by VM {other}",
                        p.proto, p.host_port
                    ),
                ));
            }
            published.push((p.proto, p.host_port, p.host_ip, &vm.vm_name));
        }
    }
    Ok(())
}

/// Replaces the table with what `plan` says, in one nft transaction.
/// Refuses (and changes nothing) when a VM wants NAT but `plan.uplink` is
/// `None`, or the plan is otherwise invalid.
pub fn apply(host: &dyn HostOps, plan: &Plan) -> Result<(), HostError> {
    validate(plan)?;
    let script = script(plan);
    host.nft_apply(&script)?;
    tracing::debug!(
        vms = plan.vms.len(),
        uplink = plan.uplink.as_deref().unwrap_or("-"),
        "nftables table applied"
    );
    Ok(())
}

/// Deletes the table and everything in it. Missing: `Ok`.
pub fn remove(host: &dyn HostOps) -> Result<(), HostError> {
    host.nft_apply(&format!(
        "table {FAMILY} {TABLE} {{}}\ndelete table {FAMILY} {TABLE}\n"
    ))?;
    tracing::info!("nftables table removed");
    Ok(())
}

/// The rules of the table as it is now, in chain then rule order (empty
/// when the table does not exist), in the normalised form of [`Rule`].
pub fn rules(host: &dyn HostOps) -> Result<Vec<Rule>, HostError> {
    let Some(json) = host.nft_list_table(FAMILY, TABLE)? else {
        return Ok(Vec::new());
    };
    Ok(rules_from_json(&json))
}

/// [`rules`] on an `nft -j list table` document.
pub fn rules_from_json(json: &Value) -> Vec<Rule> {
    let items = json["nftables"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    let mut chain_order: Vec<&str> = Vec::new();
    let mut by_chain: BTreeMap<&str, Vec<Rule>> = BTreeMap::new();
    for item in items {
        if let Some(name) = item["chain"]["name"].as_str() {
            chain_order.push(name);
        }
        let rule = &item["rule"];
        let Some(chain) = rule["chain"].as_str() else {
            continue;
        };
        let text = rule["expr"]
            .as_array()
            .map(|exprs| {
                exprs
                    .iter()
                    .map(render_statement)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        by_chain.entry(chain).or_default().push(Rule {
            chain: chain.into(),
            text,
            comment: rule["comment"].as_str().map(String::from),
        });
    }
    // nft lists chains before their rules; keep its chain order.
    let mut out = Vec::new();
    for c in chain_order {
        out.extend(by_chain.remove(c).unwrap_or_default());
    }
    for (_, rest) in by_chain {
        out.extend(rest);
    }
    out
}

/// One statement of a rule's `expr` array in nft's text syntax, for the
/// statements banger writes; anything else is shown as compact JSON.
fn render_statement(stmt: &Value) -> String {
    let Some((kind, body)) = stmt.as_object().and_then(|o| o.iter().next()) else {
        return stmt.to_string();
    };
    match kind.as_str() {
        "match" => {
            let left = &body["left"];
            let quoted = matches!(left["meta"]["key"].as_str(), Some("iifname" | "oifname"));
            let l = render_value(left, false);
            let r = render_value(&body["right"], quoted);
            match body["op"].as_str() {
                Some("==" | "in") | None => format!("{l} {r}"),
                Some(op) => format!("{l} {op} {r}"),
            }
        }
        "accept" | "drop" | "return" | "continue" if body.is_null() => kind.clone(),
        "masquerade" if body.is_null() => "masquerade".into(),
        "counter" => "counter".into(),
        "dnat" | "snat" => match (body["addr"].as_str(), &body["port"]) {
            (Some(addr), Value::Number(port)) => format!("{kind} to {addr}:{port}"),
            (Some(addr), Value::Null) => format!("{kind} to {addr}"),
            _ => stmt.to_string(),
        },
        _ => stmt.to_string(),
    }
}

fn render_value(v: &Value, quoted: bool) -> String {
    match v {
        Value::String(s) if quoted => format!("\"{s}\""),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Array(items) => items
            .iter()
            .map(|i| render_value(i, quoted))
            .collect::<Vec<_>>()
            .join(","),
        Value::Object(o) => {
            if let Some(p) = o.get("prefix") {
                return format!("{}/{}", render_value(&p["addr"], false), p["len"]);
            }
            if let Some(set) = o.get("set") {
                return format!("{{ {} }}", render_value(set, quoted).replace(',', ", "));
            }
            if let Some(m) = o.get("meta") {
                return match m["key"].as_str() {
                    Some(k @ ("iifname" | "oifname" | "iif" | "oif" | "mark")) => k.into(),
                    Some(k) => format!("meta {k}"),
                    None => v.to_string(),
                };
            }
            if let Some(p) = o.get("payload") {
                if let (Some(proto), Some(field)) = (p["protocol"].as_str(), p["field"].as_str()) {
                    return format!("{proto} {field}");
                }
            }
            if let Some(f) = o.get("fib") {
                let flags = render_value(&f["flags"], false).replace(',', " . ");
                return format!("fib {flags} {}", f["result"].as_str().unwrap_or("?"));
            }
            if let Some(ct) = o.get("ct") {
                if let Some(k) = ct["key"].as_str() {
                    return format!("ct {k}");
                }
            }
            v.to_string()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{mpsc, Arc};
    use std::thread::JoinHandle;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::privileged::netns::Netns;
    use crate::privileged::{attach_to_bridge, SystemHost};

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn tcp(host_port: u16, guest_port: u16) -> PortMap {
        PortMap {
            host_ip: None,
            host_port,
            guest_port,
            proto: Proto::Tcp,
        }
    }

    fn vm(name: &str, addr: &str, nat: bool, ports: Vec<PortMap>) -> VmNet {
        VmNet {
            vm_id: format!("id-{name}"),
            vm_name: name.into(),
            ip: ip(addr),
            tap: format!("bgr-{name}"),
            nat,
            ports,
        }
    }

    fn plan(bridge: &str, uplink: &str, vms: Vec<VmNet>) -> Plan {
        Plan {
            bridge: bridge.into(),
            subnet: (ip("10.77.0.0"), 24),
            uplink: Some(uplink.into()),
            vms,
        }
    }

    /// One NAT VM with two published ports (one on every host address, one
    /// on loopback only) and one VM with neither.
    fn sample() -> Plan {
        let udp = PortMap {
            host_ip: Some(ip("127.0.0.1")),
            host_port: 15353,
            guest_port: 53,
            proto: Proto::Udp,
        };
        plan(
            "br-banger",
            "eth0",
            vec![
                vm("web", "10.77.0.2", true, vec![udp, tcp(18080, 8080)]),
                vm("db", "10.77.0.3", false, vec![]),
            ],
        )
    }

    const SAMPLE_SCRIPT: &str = "\
# banger: generated, applied as one transaction; do not edit
table ip banger {}
delete table ip banger
table ip banger {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
		ip saddr != 10.77.0.0/24 fib daddr type local tcp dport 18080 dnat to 10.77.0.2:8080 comment \"vm=web\"
		ip saddr != 10.77.0.0/24 ip daddr 127.0.0.1 udp dport 15353 dnat to 10.77.0.2:53 comment \"vm=web\"
	}

	chain output {
		type nat hook output priority -100; policy accept;
		fib daddr type local tcp dport 18080 dnat to 10.77.0.2:8080 comment \"vm=web\"
		ip daddr 127.0.0.1 udp dport 15353 dnat to 10.77.0.2:53 comment \"vm=web\"
	}

	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		ip saddr 10.77.0.2 oifname \"eth0\" masquerade comment \"vm=web\"
		oifname \"br-banger\" ip saddr 127.0.0.0/8 masquerade comment \"banger\"
	}

	chain forward {
		type filter hook forward priority filter; policy accept;
		ct state established,related accept comment \"banger\"
		iifname \"br-banger\" ip saddr 10.77.0.2 oifname \"eth0\" accept comment \"vm=web\"
		oifname \"br-banger\" ip daddr 10.77.0.2 tcp dport 8080 ct status dnat accept comment \"vm=web\"
		oifname \"br-banger\" ip daddr 10.77.0.2 udp dport 53 ct status dnat accept comment \"vm=web\"
		iifname \"br-banger\" oifname != \"br-banger\" drop comment \"banger\"
	}
}
";

    /// (chain, text, comment) of the sample's rules.
    const SAMPLE_RULES: &[(&str, &str, &str)] = &[
        (
            "prerouting",
            "ip saddr != 10.77.0.0/24 fib daddr type local tcp dport 18080 dnat to 10.77.0.2:8080",
            "vm=web",
        ),
        (
            "prerouting",
            "ip saddr != 10.77.0.0/24 ip daddr 127.0.0.1 udp dport 15353 dnat to 10.77.0.2:53",
            "vm=web",
        ),
        (
            "output",
            "fib daddr type local tcp dport 18080 dnat to 10.77.0.2:8080",
            "vm=web",
        ),
        (
            "output",
            "ip daddr 127.0.0.1 udp dport 15353 dnat to 10.77.0.2:53",
            "vm=web",
        ),
        (
            "postrouting",
            "ip saddr 10.77.0.2 oifname \"eth0\" masquerade",
            "vm=web",
        ),
        (
            "postrouting",
            "oifname \"br-banger\" ip saddr 127.0.0.0/8 masquerade",
            "banger",
        ),
        ("forward", "ct state established,related accept", "banger"),
        (
            "forward",
            "iifname \"br-banger\" ip saddr 10.77.0.2 oifname \"eth0\" accept",
            "vm=web",
        ),
        (
            "forward",
            "oifname \"br-banger\" ip daddr 10.77.0.2 tcp dport 8080 ct status dnat accept",
            "vm=web",
        ),
        (
            "forward",
            "oifname \"br-banger\" ip daddr 10.77.0.2 udp dport 53 ct status dnat accept",
            "vm=web",
        ),
        (
            "forward",
            "iifname \"br-banger\" oifname != \"br-banger\" drop",
            "banger",
        ),
    ];

    fn as_rules(list: &[(&str, &str, &str)]) -> Vec<Rule> {
        list.iter()
            .map(|(c, t, m)| Rule {
                chain: c.to_string(),
                text: t.to_string(),
                comment: Some(m.to_string()),
            })
            .collect()
    }

    #[test]
    fn script_is_exact_and_deterministic() {
        let p = sample();
        assert_eq!(script(&p), SAMPLE_SCRIPT);
        assert_eq!(expected_rules(&p), as_rules(SAMPLE_RULES));
        // Order of VMs and ports does not matter.
        let mut shuffled = p.clone();
        shuffled.vms.reverse();
        shuffled.vms[1].ports.reverse();
        assert_eq!(script(&shuffled), SAMPLE_SCRIPT);
        // A subnet given with host bits is normalised.
        let mut hostbits = p.clone();
        hostbits.subnet = (ip("10.77.0.1"), 24);
        assert_eq!(script(&hostbits), SAMPLE_SCRIPT);
    }

    #[test]
    fn plans_are_validated() {
        struct Refuses;
        impl Refuses {
            fn check(p: &Plan, needle: &str) {
                let e = validate(p).unwrap_err().to_string();
                assert!(e.contains(needle), "{needle:?} not in {e:?}");
            }
        }
        assert!(validate(&sample()).is_ok());

        let mut p = sample();
        p.uplink = None;
        match validate(&p).unwrap_err() {
            HostError::Unavailable(m) => assert!(m.contains("VM web wants NAT"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Without NAT VMs no uplink is fine.
        p.vms[0].nat = false;
        assert!(validate(&p).is_ok());
        assert!(!script(&p).contains("masquerade comment \"vm="));

        let mut p = sample();
        p.vms[1].ports.push(tcp(18080, 9000));
        Refuses::check(&p, "host port tcp/18080 is also published by VM web");
        // Same port on two different specific addresses is fine; on a
        // specific one and "all" it is not.
        let mut p = sample();
        let on_loopback = p.vms[0].ports[0].clone();
        assert_eq!(on_loopback.host_ip, Some(ip("127.0.0.1")));
        p.vms[1].ports.push(PortMap {
            host_ip: Some(ip("127.0.0.2")),
            ..on_loopback.clone()
        });
        assert!(validate(&p).is_ok(), "{:?}", validate(&p));
        p.vms[1].ports.push(PortMap {
            host_ip: None,
            ..on_loopback
        });
        Refuses::check(&p, "also published");
        // UDP and TCP on the same number do not clash.
        let mut p = sample();
        p.vms[1].ports.push(PortMap {
            proto: Proto::Udp,
            ..tcp(18080, 53)
        });
        assert!(validate(&p).is_ok());

        let mut p = sample();
        p.vms[1].ip = ip("10.78.0.3");
        Refuses::check(&p, "outside 10.77.0.0/24");
        let mut p = sample();
        p.vms[1].vm_name = "x\" drop".into();
        Refuses::check(&p, "rule comment");
        let mut p = sample();
        p.bridge = "br\"x".into();
        Refuses::check(&p, "invalid interface name");
        let mut p = sample();
        p.uplink = Some("a-very-long-uplink".into());
        Refuses::check(&p, "1 to 15 bytes");
        let mut p = sample();
        p.vms[0].ports[0].host_port = 0;
        Refuses::check(&p, "port 0");
    }

    #[test]
    fn proto_text() {
        assert_eq!(Proto::Tcp.to_string(), "tcp");
        assert_eq!("udp".parse::<Proto>().unwrap(), Proto::Udp);
        assert!("sctp"
            .parse::<Proto>()
            .unwrap_err()
            .to_string()
            .contains("sctp"));
        assert_eq!(serde_json::to_string(&Proto::Udp).unwrap(), "\"udp\"");
    }

    #[test]
    fn apply_rules_and_remove() {
        let ns = Netns::new("nft");
        let host = SystemHost;
        ns.run(|| {
            assert!(rules(&host).unwrap().is_empty());
            remove(&host).unwrap(); // missing is fine
            let p = sample();
            apply(&host, &p).unwrap();
            let got = rules(&host).unwrap();
            assert_eq!(got, as_rules(SAMPLE_RULES));
            // What nft lists back is what we predicted.
            assert_eq!(got, expected_rules(&p));
            let listed = host.nft_list_table(FAMILY, TABLE).unwrap().unwrap();
            let chains: Vec<(String, String, i64, String)> = listed["nftables"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|i| {
                    let c = &i["chain"];
                    Some((
                        c["name"].as_str()?.to_string(),
                        c["hook"].as_str()?.to_string(),
                        c["prio"].as_i64()?,
                        c["policy"].as_str()?.to_string(),
                    ))
                })
                .collect();
            let chain =
                |n: &str, h: &str, p: i64| (n.to_string(), h.to_string(), p, "accept".to_string());
            assert_eq!(
                chains,
                [
                    chain("prerouting", "prerouting", -100),
                    chain("output", "output", -100),
                    chain("postrouting", "postrouting", 100),
                    chain("forward", "forward", 0),
                ]
            );

            // Twice: the same.
            apply(&host, &p).unwrap();
            assert_eq!(rules(&host).unwrap(), got);

            // No VMs: only the fixed rules remain.
            let empty = plan("br-banger", "eth0", vec![]);
            apply(&host, &empty).unwrap();
            let fixed = rules(&host).unwrap();
            assert_eq!(
                fixed,
                as_rules(&[
                    (
                        "postrouting",
                        "oifname \"br-banger\" ip saddr 127.0.0.0/8 masquerade",
                        "banger"
                    ),
                    ("forward", "ct state established,related accept", "banger"),
                    (
                        "forward",
                        "iifname \"br-banger\" oifname != \"br-banger\" drop",
                        "banger"
                    ),
                ])
            );
            assert!(fixed.iter().all(|r| r.comment.as_deref() == Some("banger")));

            // A refused plan changes nothing.
            let mut bad = sample();
            bad.uplink = None;
            assert!(apply(&host, &bad).is_err());
            assert_eq!(rules(&host).unwrap(), fixed);

            // A chain added by hand is gone after the next apply: the table
            // is rebuilt, not patched.
            host.nft_apply("add chain ip banger stray\nadd rule ip banger stray accept\n")
                .unwrap();
            apply(&host, &p).unwrap();
            assert_eq!(rules(&host).unwrap(), got);
            let listed = host.nft_list_table(FAMILY, TABLE).unwrap().unwrap();
            assert!(!listed.to_string().contains("stray"));

            remove(&host).unwrap();
            assert_eq!(host.nft_list_table(FAMILY, TABLE).unwrap(), None);
            assert!(rules(&host).unwrap().is_empty());
            remove(&host).unwrap();
        });
    }

    // ---- End to end, in namespaces ----

    /// A TCP server on a thread inside a namespace; stopped and joined on
    /// drop. Each connection gets `reply(request, peer)` back.
    struct Server {
        stop: Arc<AtomicBool>,
        handle: Option<JoinHandle<()>>,
    }

    impl Server {
        fn start(ns: &Netns, addr: &str, reply: fn(&[u8], SocketAddr) -> Vec<u8>) -> Server {
            let stop = Arc::new(AtomicBool::new(false));
            let (tx, rx) = mpsc::channel();
            let addr = addr.to_string();
            let flag = stop.clone();
            let handle = ns.spawn(move || {
                let l = TcpListener::bind(&addr).unwrap();
                l.set_nonblocking(true).unwrap();
                tx.send(()).unwrap();
                while !flag.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((mut s, peer)) => {
                            s.set_nonblocking(false).unwrap();
                            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                            let mut buf = [0u8; 64];
                            let n = s.read(&mut buf).unwrap_or(0);
                            let _ = s.write_all(&reply(&buf[..n], peer));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
            rx.recv_timeout(Duration::from_secs(5))
                .expect("server did not start");
            Server {
                stop,
                handle: Some(handle),
            }
        }

        fn echo(ns: &Netns, addr: &str) -> Server {
            Server::start(ns, addr, |req, _| req.to_vec())
        }

        /// Answers with the client's address as it sees it.
        fn whoami(ns: &Netns, addr: &str) -> Server {
            Server::start(ns, addr, |_, peer| peer.ip().to_string().into_bytes())
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(h) = self.handle.take() {
                let _ = h.join();
            }
        }
    }

    /// Connects (1 s timeout), sends "ping", returns the whole answer.
    fn ask(addr: &str) -> std::io::Result<String> {
        let addr: SocketAddr = addr.parse().unwrap();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"ping")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    }

    /// The same checks with the host's bridged IPv4 traffic passing through
    /// its IP hooks (`br_netfilter` with `bridge-nf-call-iptables=1`, as on
    /// Docker hosts and these machines) and without.
    #[test]
    fn end_to_end_with_br_netfilter() {
        end_to_end(true);
    }

    #[test]
    fn end_to_end_without_br_netfilter() {
        end_to_end(false);
    }

    fn end_to_end(br_netfilter: bool) {
        // Drop order (reverse of declaration): servers first, then the
        // namespaces, which take their bridge and veths with them.
        let host_ns = Netns::new("e2ehost");
        let ga = Netns::new("e2ega");
        let gb = Netns::new("e2egb");
        let out = Netns::new("e2eout");
        let host = SystemHost;
        // Per network namespace; present when the kernel has br_netfilter.
        let knob = "/proc/sys/net/bridge/bridge-nf-call-iptables";
        let have = host_ns.run(|| std::path::Path::new(knob).exists());
        if br_netfilter && !have {
            eprintln!("no br_netfilter in this kernel: nothing to test");
            return;
        }
        if have {
            host_ns.run(|| std::fs::write(knob, if br_netfilter { "1" } else { "0" }).unwrap());
        }

        // "host": the bridge, and an uplink veth to "outside" that carries
        // the default route. "outside" routes the bridge subnet back, so
        // only the forward rules stand between a guest and it.
        host_ns.run(|| {
            host.bridge_ensure("br-e", ip("10.77.0.1"), 24).unwrap();
            host.ip_forward_enable().unwrap();
        });
        host_ns.ip(&[
            "link",
            "add",
            "up-e",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            out.name(),
        ]);
        host_ns.ip(&["addr", "add", "198.51.100.1/24", "dev", "up-e"]);
        host_ns.ip(&["link", "set", "up-e", "up"]);
        host_ns.ip(&["route", "add", "default", "via", "198.51.100.2"]);
        out.ip(&["addr", "add", "198.51.100.2/24", "dev", "eth0"]);
        out.ip(&["link", "set", "eth0", "up"]);
        out.ip(&["route", "add", "10.77.0.0/24", "via", "198.51.100.1"]);
        // Two guests on isolated bridge ports (veths stand in for taps).
        for (g, veth, addr) in [(&ga, "ve-a", "10.77.0.2/24"), (&gb, "ve-b", "10.77.0.3/24")] {
            host_ns.ip(&[
                "link",
                "add",
                veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                g.name(),
            ]);
            host_ns.run(|| attach_to_bridge(veth, "br-e", true).unwrap());
            g.ip(&["addr", "add", addr, "dev", "eth0"]);
            g.ip(&["link", "set", "eth0", "up"]);
            g.ip(&["route", "add", "default", "via", "10.77.0.1"]);
        }
        let uplink = host_ns.run(|| host.default_route_dev().unwrap());
        assert_eq!(uplink.as_deref(), Some("up-e"));

        let _web = Server::echo(&ga, "0.0.0.0:8080");
        let _other = Server::echo(&gb, "0.0.0.0:8080");
        let _on_host = Server::echo(&host_ns, "10.77.0.1:7000");
        let _outside = Server::whoami(&out, "198.51.100.2:9000");

        let apply_plan = |a_nat: bool, a_ports: Vec<PortMap>| {
            let p = plan(
                "br-e",
                "up-e",
                vec![
                    vm("a", "10.77.0.2", a_nat, a_ports),
                    vm("b", "10.77.0.3", false, vec![]),
                ],
            );
            host_ns.run(|| apply(&host, &p).unwrap());
        };

        // Published port: from the host by loopback and by the bridge
        // address, and from outside by the uplink address. Guests are not
        // DNATed: they get the host's own (closed) port, a clean refusal.
        apply_plan(false, vec![tcp(18080, 8080)]);
        host_ns.run(|| {
            assert_eq!(ask("127.0.0.1:18080").unwrap(), "ping");
            assert_eq!(ask("10.77.0.1:18080").unwrap(), "ping");
        });
        out.run(|| assert_eq!(ask("198.51.100.1:18080").unwrap(), "ping"));
        gb.run(|| {
            let e = ask("10.77.0.1:18080").unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
        });

        // Not published any more: refused (nothing listens on the host).
        apply_plan(false, vec![]);
        host_ns.run(|| {
            let e = ask("127.0.0.1:18080").unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
            assert!(ask("10.77.0.1:18080").is_err());
        });
        out.run(|| assert!(ask("198.51.100.1:18080").is_err()));

        // Isolation: the guests reach the bridge address but not each
        // other; with B's port no longer isolated they do (so it was the
        // flag that stopped them).
        ga.run(|| {
            assert_eq!(ask("10.77.0.1:7000").unwrap(), "ping");
            let t = Instant::now();
            assert!(ask("10.77.0.3:8080").is_err(), "guest A reached guest B");
            assert!(t.elapsed() < Duration::from_secs(5));
        });
        gb.run(|| {
            assert_eq!(ask("10.77.0.1:7000").unwrap(), "ping");
            assert!(ask("10.77.0.2:8080").is_err(), "guest B reached guest A");
        });
        host_ns.run(|| attach_to_bridge("ve-b", "br-e", false).unwrap());
        ga.run(|| assert_eq!(ask("10.77.0.3:8080").unwrap(), "ping"));
        host_ns.run(|| attach_to_bridge("ve-b", "br-e", true).unwrap());

        // Without NAT a guest reaches only the host...
        ga.run(|| assert!(ask("198.51.100.2:9000").is_err(), "no-NAT guest got out"));
        // ...with NAT it gets out, masqueraded behind the uplink address,
        // while the other guest (no NAT) still does not.
        apply_plan(true, vec![]);
        ga.run(|| assert_eq!(ask("198.51.100.2:9000").unwrap(), "198.51.100.1"));
        gb.run(|| assert!(ask("198.51.100.2:9000").is_err(), "no-NAT guest got out"));
        // Control: with banger's table gone, B is routed out unmasqueraded,
        // so the drop rule was what kept it in.
        host_ns.run(|| remove(&host).unwrap());
        gb.run(|| assert_eq!(ask("198.51.100.2:9000").unwrap(), "10.77.0.3"));
    }
}
