//! banger's nftables tables: `table ip banger` (routed traffic: NAT,
//! published ports, what guests may reach on the host and beyond) and
//! `table bridge banger` (what a guest may send into the bridge at all),
//! the only nftables state banger owns. They are never edited rule by
//! rule: [`desired`] turns the desired state (a [`Plan`]: the bridge, its
//! address, the uplink, the running VMs with their tap, MAC, address, NAT
//! flag and published ports) into the tables as data ([`Table`], in the
//! `nftables` crate's schema of nft's JSON), and [`write`] replaces both
//! with it in one `nft -j -f -` transaction that deletes the tables and
//! builds them again. So the tables are always exactly what the plan says,
//! applying a plan twice is the same as once, a failed apply changes
//! nothing, and [`remove`] undoes it all. [`current`] reads the tables back
//! (`nft -j list table`) into the same model, so "are the tables what we
//! wrote" is a comparison of two values ([`table`] says what counts as
//! equal), and the daemon skips nft when the tables would not change.
//!
//! The rules, chain by chain (every rule carries `comment "vm=<name>"` or,
//! for the fixed ones, `comment "banger"`):
//!
//! - `prerouting` (ip, nat, dstnat): a published port, `ip saddr != SUBNET
//!   (ip daddr HOST_IP | fib daddr type local) <proto> dport HOST_PORT dnat
//!   to GUEST:PORT`. Without a host address it matches every local address
//!   of the host (`fib daddr type local`), and only those, so traffic routed
//!   through the host to elsewhere is never captured. Connections from the
//!   guests themselves are not DNATed (they reach the host's own port, which
//!   the `input` chain drops): where `br_netfilter` is active (Docker loads
//!   it; these machines have it built in) this hook runs while the frame is
//!   still in the bridge, and a DNAT back into the same bridge is then
//!   *bridged* to the target guest instead of routed, which isolated ports
//!   drop: the connection would hang instead of failing.
//! - `output` (ip, nat, -100): the same rules for connections made by the
//!   host itself (`curl localhost:HOST_PORT`). Those from 127.0.0.1 leave
//!   through the bridge with a loopback source, which the kernel allows only
//!   with `route_localnet` on the bridge ([`NetHost::bridge_ensure`] sets
//!   it).
//! - `postrouting` (ip, nat, srcnat): a NAT VM's traffic leaving by the
//!   uplink is masqueraded; connections from 127.0.0.0/8 into the bridge are
//!   masqueraded to the bridge address (the guest would otherwise answer to
//!   its own loopback).
//! - `input` (ip, filter, policy accept for everything not from the
//!   bridge): what a guest reaches on the host itself. Replies
//!   (established, related: the guest's answers to the host's SSH and
//!   published-port connections, whose DNAT conntrack undoes here) pass;
//!   anything else to 127.0.0.0/8 is dropped (`route_localnet` would
//!   otherwise deliver a guest's packets to 127.0.0.1 to services that
//!   listen on loopback only); DNS on the bridge address (udp and tcp,
//!   [`crate::dns::BRIDGE_PORT`]) passes; everything else from the bridge
//!   is rejected (ICMP port unreachable: a guest's connection to a host
//!   port fails at once, as if nothing listened). No banger DNAT leads from the bridge to a host address
//!   (guests are not DNATed), so no DNATed new connection is let in.
//! - `forward` (ip, filter, policy accept; the host's own forwarding
//!   policy is never changed): established and related traffic passes; a
//!   NAT VM may go out the uplink; DNATed connections to a published guest
//!   port pass; anything else arriving from the bridge and leaving by
//!   another interface is dropped, so a VM without NAT reaches nothing
//!   beyond the host; and unless `allow_vm_to_vm`, traffic the host would
//!   route from the bridge back into it (a guest reaching another by
//!   sending to the gateway) is dropped too. Routed guest traffic enters on
//!   the bridge device, not the tap, so rules match the bridge name.
//! - `from_taps` (bridge, filter, prerouting, -200): every frame a guest
//!   sends into the bridge, whether switched to another port or delivered
//!   to the host. A VM's tap passes IPv4 only with the VM's MAC as the
//!   Ethernet source and its address as the IPv4 source, and ARP only with
//!   its MAC and address as the sender (Ethernet/IPv4 ARP); then the fixed
//!   `iifname "bgr-*" drop` drops the rest from every banger tap: forged
//!   sources, IPv6, any other ethertype, and everything from a tap no
//!   running VM owns. So a guest cannot use a NAT VM's address to get out,
//!   take over another VM's address by ARP, or reach the host over IPv6.
//!   Guests get their address from the kernel command line, so no DHCP
//!   (source 0.0.0.0) is needed.
//!
//! VM-to-VM traffic on the direct path is switched inside the bridge, below
//! IP, and stopped there by isolated bridge ports ([`NetHost::tap_create`]).
//! With `br_netfilter` such bridged frames also pass the `forward` hook,
//! with the bridge as both input and output interface; they are only there
//! when ports are not isolated (`allow_vm_to_vm`), where the br-to-br drop
//! is not written either.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::privileged::{HostError, NetHost};

mod rules;
mod table;
#[cfg(test)]
mod tests;

pub use rules::FIXED;
pub use table::{Table, BRIDGE_FAMILY, FAMILIES, FAMILY, TABLE};

/// Every tap banger makes is named with this prefix; the `from_taps` chain
/// drops what comes from one without a running VM's rules.
pub const TAP_PREFIX: &str = "bgr-";

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
    /// Its tap: the bridge port its frames arrive on ([`TAP_PREFIX`]...).
    pub tap: String,
    /// Its MAC, `xx:xx:xx:xx:xx:xx` (lower case).
    pub mac: String,
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
    /// The bridge's own address, where guests reach banger's DNS.
    pub gateway: Ipv4Addr,
    /// `[network] allow_vm_to_vm`: guests may reach each other (then the
    /// bridge ports are not isolated either).
    pub vm_to_vm: bool,
    /// The interface NAT masquerades out of (the default route's device);
    /// required when any VM has NAT.
    pub uplink: Option<String>,
    /// Running VMs only.
    pub vms: Vec<VmNet>,
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

fn refuse(what: &str, why: String) -> HostError {
    HostError::io(
        "refusing to apply the nftables plan:",
        Path::new(what),
        std::io::Error::new(std::io::ErrorKind::InvalidInput, why),
    )
}

/// Checks what the rules assume: valid interface names, VM names fit for a
/// rule comment, guests inside the subnet, an uplink when a VM wants NAT,
/// no host port published twice.
fn validate(plan: &Plan) -> Result<(), HostError> {
    // nft reads `*` at the end of an interface name as a wildcard.
    let no_wildcard = |name: &str| {
        if name.contains('*') {
            Err(refuse(
                name,
                "an interface name with '*' would match others".into(),
            ))
        } else {
            Ok(())
        }
    };
    crate::privileged::check_ifname(&plan.bridge)?;
    no_wildcard(&plan.bridge)?;
    if let Some(u) = &plan.uplink {
        crate::privileged::check_ifname(u)?;
        no_wildcard(u)?;
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
    let host_bits = u32::from(plan.gateway) & !mask(prefix);
    if u32::from(plan.gateway) & mask(prefix) != u32::from(network(plan))
        || host_bits == 0
        || host_bits == !mask(prefix)
    {
        return Err(refuse(
            &plan.gateway.to_string(),
            format!(
                "the bridge address must be a host address of {}/{prefix}",
                network(plan)
            ),
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
        crate::privileged::check_ifname(&vm.tap)?;
        if !vm.tap.starts_with(TAP_PREFIX)
            || !vm.tap[TAP_PREFIX.len()..]
                .chars()
                .all(|c| c.is_ascii_alphanumeric())
        {
            return Err(refuse(
                &vm.tap,
                format!("a VM's tap is named {TAP_PREFIX} and letters or digits"),
            ));
        }
        let mac_ok = vm.mac.len() == 17
            && vm.mac.split(':').count() == 6
            && vm.mac.split(':').all(|b| {
                b.len() == 2
                    && b.chars()
                        .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
            });
        if !mac_ok {
            return Err(refuse(
                &vm.vm_name,
                format!(
                    "its MAC {:?} is not xx:xx:xx:xx:xx:xx in lower case",
                    vm.mac
                ),
            ));
        }
        if vm.ip == plan.gateway {
            return Err(refuse(&vm.vm_name, "its address is the bridge's".into()));
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

/// The table `plan` asks for. Refuses when a VM wants NAT but
/// `plan.uplink` is `None`, or the plan is otherwise invalid.
pub fn desired(plan: &Plan) -> Result<Table, HostError> {
    validate(plan)?;
    Ok(rules::table(plan))
}

/// Replaces the table with `table`, in one nft transaction.
pub fn write(host: &dyn NetHost, table: &Table) -> Result<(), HostError> {
    host.nft_apply(&table.replace())?;
    tracing::debug!(rules = table.rules.len(), "nftables table applied");
    Ok(())
}

/// Replaces the table with what `plan` says ([`desired`], then [`write`]);
/// changes nothing when the plan is refused.
pub fn apply(host: &dyn NetHost, plan: &Plan) -> Result<(), HostError> {
    write(host, &desired(plan)?)
}

/// Deletes both tables and everything in them. Missing: `Ok`.
pub fn remove(host: &dyn NetHost) -> Result<(), HostError> {
    host.nft_apply(&Table::remove())?;
    tracing::info!("nftables tables removed");
    Ok(())
}

/// The tables as they are now, `None` when neither exists.
pub fn current(host: &dyn NetHost) -> Result<Option<Table>, HostError> {
    let mut listings = Vec::new();
    for f in FAMILIES {
        listings.extend(host.nft_list_table(f, TABLE)?);
    }
    Ok((!listings.is_empty()).then(|| Table::from_listings(listings)))
}
