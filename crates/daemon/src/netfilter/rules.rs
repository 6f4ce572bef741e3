//! The rules of a [`Plan`], as data ([`table`]): each rule is built from
//! the same few expressions nft itself prints for them, so the table nft
//! lists back equals the one written. The module doc of
//! [`netfilter`](super) says what each rule is for; the tests hold the
//! same rules in nft's text syntax.

use std::borrow::Cow;
use std::collections::HashSet;
use std::net::Ipv4Addr;

use nftables::expr::{Expression, Fib, FibFlag, FibResult, Meta, MetaKey, NamedExpression};
use nftables::expr::{Payload, PayloadField, Prefix, CT};
use nftables::schema::{Chain, Rule};
use nftables::stmt::{Accept, Drop, Match, Operator, Reject, RejectType, Statement, NAT};
use nftables::types::{NfChainPolicy, NfChainType, NfFamily, NfHook, RejectCode};

use super::table::{Table, BRIDGE_FAMILY, FAMILY, TABLE};
use super::{network, PortMap, VmNet, TAP_PREFIX};
use crate::netfilter::Plan;

/// The comment of the rules that do not belong to one VM.
pub const FIXED: &str = "banger";

/// The chains, in the order they are declared: family, name, type, hook
/// and priority (nft's `dstnat` is -100, `srcnat` 100, `filter` 0, and in
/// the bridge family `filter` is -200; it lists priorities as numbers).
/// Chain names are unique across both tables.
const CHAINS: [(NfFamily, &str, NfChainType, NfHook, i32); 6] = [
    (
        FAMILY,
        "prerouting",
        NfChainType::NAT,
        NfHook::Prerouting,
        -100,
    ),
    (FAMILY, "output", NfChainType::NAT, NfHook::Output, -100),
    (
        FAMILY,
        "postrouting",
        NfChainType::NAT,
        NfHook::Postrouting,
        100,
    ),
    (FAMILY, "forward", NfChainType::Filter, NfHook::Forward, 0),
    (FAMILY, "input", NfChainType::Filter, NfHook::Input, 0),
    (
        BRIDGE_FAMILY,
        "from_taps",
        NfChainType::Filter,
        NfHook::Prerouting,
        -200,
    ),
];

fn family_of(chain: &str) -> NfFamily {
    CHAINS.iter().find(|c| c.1 == chain).map_or(FAMILY, |c| c.0)
}

fn chain(
    family: NfFamily,
    name: &'static str,
    kind: NfChainType,
    hook: NfHook,
    prio: i32,
) -> Chain<'static> {
    Chain {
        family,
        table: Cow::Borrowed(TABLE),
        name: Cow::Borrowed(name),
        newname: None,
        handle: None,
        _type: Some(kind),
        hook: Some(hook),
        prio: Some(prio),
        dev: None,
        // The host's own policy is never changed: banger's chains only add
        // what they match.
        policy: Some(NfChainPolicy::Accept),
    }
}

// ---- Expressions, named after the nft syntax they stand for ----

/// `ip saddr`, `tcp dport`, ...
fn payload(protocol: &'static str, field: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::Payload(Payload::PayloadField(
        PayloadField {
            protocol: Cow::Borrowed(protocol),
            field: Cow::Borrowed(field),
        },
    )))
}

/// `iifname`, `oifname`.
fn meta(key: MetaKey) -> Expression<'static> {
    Expression::Named(NamedExpression::Meta(Meta { key }))
}

/// `ct state`, `ct status`.
fn ct(key: &'static str) -> Expression<'static> {
    Expression::Named(NamedExpression::CT(CT {
        key: Cow::Borrowed(key),
        family: None,
        dir: None,
    }))
}

/// `fib daddr type`.
fn fib_daddr_type() -> Expression<'static> {
    Expression::Named(NamedExpression::Fib(Fib {
        result: FibResult::Type,
        flags: HashSet::from([FibFlag::Daddr]),
    }))
}

fn text(s: impl Into<String>) -> Expression<'static> {
    Expression::String(Cow::Owned(s.into()))
}

fn addr(ip: Ipv4Addr) -> Expression<'static> {
    text(ip.to_string())
}

/// `NET/LEN`.
fn prefix(net: Ipv4Addr, len: u8) -> Expression<'static> {
    Expression::Named(NamedExpression::Prefix(Prefix {
        addr: Box::new(addr(net)),
        len: u32::from(len),
    }))
}

fn port(p: u16) -> Expression<'static> {
    Expression::Number(u32::from(p))
}

fn matches(
    op: Operator,
    left: Expression<'static>,
    right: Expression<'static>,
) -> Statement<'static> {
    Statement::Match(Match { left, right, op })
}

/// `LEFT RIGHT`: equality.
fn is(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matches(Operator::EQ, left, right)
}

/// `LEFT != RIGHT`.
fn is_not(left: Expression<'static>, right: Expression<'static>) -> Statement<'static> {
    matches(Operator::NEQ, left, right)
}

/// `LEFT FLAG,FLAG`: any of the flags is set (what nft writes as `in`).
fn has_any(left: Expression<'static>, flags: &[&'static str]) -> Statement<'static> {
    let flags = flags.iter().map(|f| Expression::String(Cow::Borrowed(*f)));
    matches(Operator::IN, left, Expression::List(flags.collect()))
}

fn accept() -> Statement<'static> {
    Statement::Accept(None::<Accept>)
}

fn drop_packet() -> Statement<'static> {
    Statement::Drop(None::<Drop>)
}

/// `reject`: ICMP port unreachable, which a TCP client sees as a
/// refused connection, not a hang.
fn reject() -> Statement<'static> {
    Statement::Reject(Some(Reject::new(
        Some(RejectType::ICMP),
        Some(RejectCode::PortUnreach),
    )))
}

fn masquerade() -> Statement<'static> {
    Statement::Masquerade(None)
}

/// `dnat to IP:PORT`.
fn dnat(ip: Ipv4Addr, to_port: u16) -> Statement<'static> {
    Statement::DNAT(Some(NAT {
        addr: Some(addr(ip)),
        family: None,
        port: Some(port(to_port)),
        flags: None,
    }))
}

/// `<proto> dport PORT`.
fn dport(m: &PortMap, p: u16) -> Statement<'static> {
    is(payload(proto_name(m), "dport"), port(p))
}

fn proto_name(m: &PortMap) -> &'static str {
    match m.proto {
        super::Proto::Tcp => "tcp",
        super::Proto::Udp => "udp",
    }
}

/// The VMs sorted by name then id, and each one's ports sorted, so the same
/// plan always gives the same table whatever order the caller listed them.
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

/// The whole table for `plan`. Names are assumed valid
/// ([`super::desired`] checks them first).
pub fn table(plan: &Plan) -> Table {
    let br = || text(plan.bridge.clone());
    let vms = sorted(plan);
    let mut rules = Vec::new();
    let mut push = |chain: &'static str, expr: Vec<Statement<'static>>, comment: String| {
        rules.push(Rule {
            family: family_of(chain),
            table: Cow::Borrowed(TABLE),
            chain: Cow::Borrowed(chain),
            expr: expr.into(),
            handle: None,
            index: None,
            comment: Some(Cow::Owned(comment)),
        })
    };
    let vm_comment = |vm: &VmNet| format!("vm={}", vm.vm_name);
    let fixed = || FIXED.to_string();
    let nat_vms = || {
        vms.iter()
            .filter(|(vm, _)| vm.nat)
            .filter_map(|(vm, _)| Some((*vm, plan.uplink.as_deref()?)))
    };

    // prerouting and output: one DNAT per published port; in prerouting not
    // for connections from the guests (see the module doc).
    for chain in ["prerouting", "output"] {
        for (vm, ports) in &vms {
            for p in ports {
                let mut expr = Vec::new();
                if chain == "prerouting" {
                    expr.push(is_not(
                        payload("ip", "saddr"),
                        prefix(network(plan), plan.subnet.1),
                    ));
                }
                expr.push(match p.host_ip {
                    Some(ip) => is(payload("ip", "daddr"), addr(ip)),
                    None => is(fib_daddr_type(), text("local")),
                });
                expr.push(dport(p, p.host_port));
                expr.push(dnat(vm.ip, p.guest_port));
                push(chain, expr, vm_comment(vm));
            }
        }
    }

    // postrouting
    for (vm, uplink) in nat_vms() {
        push(
            "postrouting",
            vec![
                is(payload("ip", "saddr"), addr(vm.ip)),
                is(meta(MetaKey::Oifname), text(uplink)),
                masquerade(),
            ],
            vm_comment(vm),
        );
    }
    push(
        "postrouting",
        vec![
            is(meta(MetaKey::Oifname), br()),
            is(
                payload("ip", "saddr"),
                prefix(Ipv4Addr::new(127, 0, 0, 0), 8),
            ),
            masquerade(),
        ],
        fixed(),
    );

    // forward
    push(
        "forward",
        vec![has_any(ct("state"), &["established", "related"]), accept()],
        fixed(),
    );
    for (vm, uplink) in nat_vms() {
        push(
            "forward",
            vec![
                is(meta(MetaKey::Iifname), br()),
                is(payload("ip", "saddr"), addr(vm.ip)),
                is(meta(MetaKey::Oifname), text(uplink)),
                accept(),
            ],
            vm_comment(vm),
        );
    }
    for (vm, ports) in &vms {
        for p in ports {
            push(
                "forward",
                vec![
                    is(meta(MetaKey::Oifname), br()),
                    is(payload("ip", "daddr"), addr(vm.ip)),
                    dport(p, p.guest_port),
                    has_any(ct("status"), &["dnat"]),
                    accept(),
                ],
                vm_comment(vm),
            );
        }
    }
    push(
        "forward",
        vec![
            is(meta(MetaKey::Iifname), br()),
            is_not(meta(MetaKey::Oifname), br()),
            drop_packet(),
        ],
        fixed(),
    );
    if !plan.vm_to_vm {
        push(
            "forward",
            vec![
                is(meta(MetaKey::Iifname), br()),
                is(meta(MetaKey::Oifname), br()),
                drop_packet(),
            ],
            fixed(),
        );
    }

    // input: what the guests reach on the host itself.
    push(
        "input",
        vec![
            is(meta(MetaKey::Iifname), br()),
            has_any(ct("state"), &["established", "related"]),
            accept(),
        ],
        fixed(),
    );
    push(
        "input",
        vec![
            is(meta(MetaKey::Iifname), br()),
            is(
                payload("ip", "daddr"),
                prefix(Ipv4Addr::new(127, 0, 0, 0), 8),
            ),
            drop_packet(),
        ],
        fixed(),
    );
    for proto in ["udp", "tcp"] {
        push(
            "input",
            vec![
                is(meta(MetaKey::Iifname), br()),
                is(payload("ip", "daddr"), addr(plan.gateway)),
                is(payload(proto, "dport"), port(crate::dns::BRIDGE_PORT)),
                accept(),
            ],
            fixed(),
        );
    }
    push(
        "input",
        vec![is(meta(MetaKey::Iifname), br()), reject()],
        fixed(),
    );

    // from_taps: each tap passes its VM's own IPv4 and ARP, nothing else.
    for (vm, _) in &vms {
        let tap = || is(meta(MetaKey::Iifname), text(vm.tap.clone()));
        let mac = || text(vm.mac.clone());
        push(
            "from_taps",
            vec![
                tap(),
                is(payload("ether", "saddr"), mac()),
                is(payload("ip", "saddr"), addr(vm.ip)),
                accept(),
            ],
            vm_comment(vm),
        );
        push(
            "from_taps",
            vec![
                tap(),
                is(payload("ether", "saddr"), mac()),
                is(payload("arp", "htype"), Expression::Number(1)),
                is(payload("arp", "ptype"), text("ip")),
                is(payload("arp", "hlen"), Expression::Number(6)),
                is(payload("arp", "plen"), Expression::Number(4)),
                is(payload("arp", "saddr ether"), mac()),
                is(payload("arp", "saddr ip"), addr(vm.ip)),
                accept(),
            ],
            vm_comment(vm),
        );
    }
    push(
        "from_taps",
        vec![
            is(meta(MetaKey::Iifname), text(format!("{TAP_PREFIX}*"))),
            drop_packet(),
        ],
        fixed(),
    );

    let chains = CHAINS
        .iter()
        .map(|&(family, name, kind, hook, prio)| chain(family, name, kind, hook, prio))
        .collect();
    Table::new(chains, rules)
}
