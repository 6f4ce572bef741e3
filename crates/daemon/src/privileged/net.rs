//! The network half of [`SystemHost`](super::SystemHost): links, addresses
//! and routes over rtnetlink, tap devices with the tun ioctls, sysctls by
//! writing `/proc/sys`, and nftables with `nft`.
//!
//! Netlink is spoken synchronously: each call opens a `NETLINK_ROUTE`
//! socket, sends one request at a time and reads the replies carrying its
//! sequence number up to the acknowledgement (or the end of a dump). A socket
//! belongs to the network namespace of the thread that opened it, and so do
//! `/proc/sys/net` and the `nft` processes started from that thread: every
//! function here acts on the calling thread's namespace, which is what lets
//! the tests run them inside private namespaces.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_ACK_TLVS, NLM_F_CAPPED,
    NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoTun, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

use nftables::schema::{NfListObject, NfObject, Nftables};
use nftables::types::NfFamily;

use super::system::{Ran, Tool};
use super::{BridgeChange, HostError};

/// The longest interface name (IFNAMSIZ - 1).
pub(super) const IFNAME_MAX: usize = 15;

const NFT: Tool = Tool {
    name: "nft",
    package: "nftables",
};

/// How long to wait for the kernel's answer before calling it a failure.
const NETLINK_TIMEOUT: Duration = Duration::from_secs(10);
/// Bigger than any single netlink datagram the kernel sends (dumps are cut
/// into datagrams of at most 32 KiB).
const RECV_BUF: usize = 64 * 1024;

const RT_TABLE_MAIN: u32 = 254;
const RT_TABLE_LOCAL: u32 = 255;

// IFLA_TUN_* (linux/if_link.h): the tun driver's link info.
const IFLA_TUN_TYPE: u16 = 3;
const IFLA_TUN_PERSIST: u16 = 6;
const IFLA_TUN_MULTI_QUEUE: u16 = 7;

// ---------------------------------------------------------------------------
// Names and errors

/// Refuses names the kernel would refuse (empty, longer than 15 bytes, `/`,
/// `:`, whitespace, `.`/`..`) and, so every name can be quoted in an nft
/// script, quotes and backslashes.
pub(crate) fn check_ifname(name: &str) -> Result<(), HostError> {
    let bad_char =
        |c: char| c == '/' || c == ':' || c == '"' || c == '\'' || c == '\\' || c.is_whitespace();
    if name.is_empty()
        || name.len() > IFNAME_MAX
        || name == "."
        || name == ".."
        || name.chars().any(|c| bad_char(c) || c.is_control())
    {
        return Err(invalid(
            "invalid interface name",
            name,
            format!(
                "an interface name is 1 to {IFNAME_MAX} bytes without '/', ':', quotes, \
                 backslashes or whitespace"
            ),
        ));
    }
    Ok(())
}

fn invalid(what: &str, name: &str, why: String) -> HostError {
    HostError::io(
        what,
        Path::new(name),
        io::Error::new(io::ErrorKind::InvalidInput, why),
    )
}

/// A netlink request the kernel refused, with its extended-ack message.
#[derive(Debug)]
struct NlError {
    source: io::Error,
    message: Option<String>,
}

impl NlError {
    fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    /// As a [`HostError::Io`]: `what` and `name` say which operation on which
    /// link failed.
    fn host(self, what: &str, name: &str) -> HostError {
        let source = match self.message {
            Some(m) => io::Error::new(self.source.kind(), format!("{} ({m})", self.source)),
            None => self.source,
        };
        HostError::io(what, Path::new(name), source)
    }
}

impl From<io::Error> for NlError {
    fn from(source: io::Error) -> NlError {
        NlError {
            source,
            message: None,
        }
    }
}

// ---------------------------------------------------------------------------
// A blocking rtnetlink socket

struct Rtnl {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Rtnl {
    fn open() -> Result<Rtnl, HostError> {
        let fail = |e: io::Error| HostError::io("cannot open", Path::new("a netlink socket"), e);
        let mut sock = Socket::new(NETLINK_ROUTE).map_err(fail)?;
        sock.bind_auto().map_err(fail)?;
        sock.connect(&SocketAddr::new(0, 0)).map_err(fail)?;
        // Best effort (old kernels): error messages from the kernel, and acks
        // that do not echo the whole request.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        rustix::net::sockopt::set_socket_timeout(
            &sock,
            rustix::net::sockopt::Timeout::Recv,
            Some(NETLINK_TIMEOUT),
        )
        .map_err(|e| fail(e.into()))?;
        Ok(Rtnl {
            sock,
            seq: 0,
            buf: vec![0; RECV_BUF],
        })
    }

    /// Sends `msg` and collects the replies to it. A dump (`NLM_F_DUMP` in
    /// `flags`) ends with `NLMSG_DONE`; anything else is sent with
    /// `NLM_F_ACK` and ends with the acknowledgement.
    fn request(
        &mut self,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, NlError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        req.finalize();
        let mut out = vec![0; req.buffer_len()];
        req.serialize(&mut out);
        self.sock.send(&out, 0)?;

        let mut replies = Vec::new();
        loop {
            let n = match self.sock.recv(&mut &mut self.buf[..], 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            let mut off = 0;
            while off < n {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[off..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
                let len = msg.header.length as usize;
                if len == 0 {
                    break;
                }
                off += (len + 3) & !3;
                if msg.header.sequence_number != seq {
                    continue; // a late answer to an earlier request
                }
                match msg.payload {
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(code) => Err(NlError {
                                source: io::Error::from_raw_os_error(-code.get()),
                                message: ext_ack_message(msg.header.flags, &e.header),
                            }),
                        };
                    }
                    NetlinkPayload::Done(d) => {
                        return if d.code == 0 {
                            Ok(replies)
                        } else {
                            Err(io::Error::from_raw_os_error(d.code.abs()).into())
                        };
                    }
                    _ => {}
                }
            }
        }
    }

    fn get_link(&mut self, name: &str) -> Result<Option<LinkMessage>, NlError> {
        let mut m = LinkMessage::default();
        m.attributes.push(LinkAttribute::IfName(name.into()));
        self.get_link_msg(m)
    }

    fn get_link_by_index(&mut self, index: u32) -> Result<Option<LinkMessage>, NlError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        self.get_link_msg(m)
    }

    fn get_link_msg(&mut self, m: LinkMessage) -> Result<Option<LinkMessage>, NlError> {
        match self.request(RouteNetlinkMessage::GetLink(m), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn links(&mut self) -> Result<Vec<LinkMessage>, NlError> {
        let replies = self.request(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            NLM_F_DUMP,
        )?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewLink(l) => Some(l),
                _ => None,
            })
            .collect())
    }

    /// `RTM_NEWLINK` on the existing link `index` with `attributes`, and
    /// `up` when given.
    fn change_link(
        &mut self,
        index: u32,
        up: bool,
        attributes: Vec<LinkAttribute>,
    ) -> Result<(), NlError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        if up {
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
        }
        m.attributes = attributes;
        self.request(RouteNetlinkMessage::NewLink(m), 0)?;
        Ok(())
    }

    fn delete_link(&mut self, index: u32) -> Result<(), NlError> {
        let mut m = LinkMessage::default();
        m.header.index = index;
        match self.request(RouteNetlinkMessage::DelLink(m), 0) {
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
            other => other.map(drop),
        }
    }

    /// The IPv4 addresses of link `index`, as (address, prefix length).
    fn ipv4_addresses(&mut self, index: u32) -> Result<Vec<(Ipv4Addr, u8)>, NlError> {
        let mut req = AddressMessage::default();
        req.header.family = AddressFamily::Inet;
        req.header.index = index;
        let replies = self.request(RouteNetlinkMessage::GetAddress(req), NLM_F_DUMP)?;
        let mut out = Vec::new();
        for r in replies {
            let RouteNetlinkMessage::NewAddress(a) = r else {
                continue;
            };
            if a.header.family != AddressFamily::Inet || a.header.index != index {
                continue;
            }
            // IFA_LOCAL is the address itself; IFA_ADDRESS differs from it
            // only on point-to-point links.
            let local = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            let address = a.attributes.iter().find_map(|at| match at {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            });
            if let Some(ip) = local.or(address) {
                out.push((ip, a.header.prefix_len));
            }
        }
        Ok(out)
    }

    fn address_change(
        &mut self,
        add: bool,
        index: u32,
        ip: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<(), NlError> {
        let mut m = AddressMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.prefix_len = prefix_len;
        m.header.index = index;
        m.header.scope = AddressScope::Universe;
        m.attributes.push(AddressAttribute::Local(ip.into()));
        m.attributes.push(AddressAttribute::Address(ip.into()));
        if add {
            let broadcast = Ipv4Addr::from(u32::from(ip) | !mask(prefix_len));
            m.attributes.push(AddressAttribute::Broadcast(broadcast));
            match self.request(
                RouteNetlinkMessage::NewAddress(m),
                NLM_F_CREATE | NLM_F_EXCL,
            ) {
                Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
                other => other.map(drop),
            }
        } else {
            match self.request(RouteNetlinkMessage::DelAddress(m), 0) {
                Err(e) if e.errno() == Some(libc::EADDRNOTAVAIL) => Ok(()),
                other => other.map(drop),
            }
        }
    }

    fn ipv4_routes(&mut self) -> Result<Vec<RouteMessage>, NlError> {
        let mut req = RouteMessage::default();
        req.header.address_family = AddressFamily::Inet;
        let replies = self.request(RouteNetlinkMessage::GetRoute(req), NLM_F_DUMP)?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                RouteNetlinkMessage::NewRoute(r)
                    if r.header.address_family == AddressFamily::Inet =>
                {
                    Some(r)
                }
                _ => None,
            })
            .collect())
    }
}

/// The kernel's message from an extended ack (`NLMSGERR_ATTR_MSG`), if any.
/// `payload` is what follows the error code: the request's header (all of
/// the request unless `NLM_F_CAPPED`), then attributes when `NLM_F_ACK_TLVS`.
fn ext_ack_message(flags: u16, payload: &[u8]) -> Option<String> {
    const NLMSGERR_ATTR_MSG: u16 = 1;
    if flags & NLM_F_ACK_TLVS == 0 || payload.len() < 16 {
        return None;
    }
    let mut off = if flags & NLM_F_CAPPED != 0 {
        16
    } else {
        u32::from_ne_bytes(payload[..4].try_into().ok()?) as usize
    };
    while off + 4 <= payload.len() {
        let len = u16::from_ne_bytes([payload[off], payload[off + 1]]) as usize;
        let kind = u16::from_ne_bytes([payload[off + 2], payload[off + 3]]) & 0x3fff;
        if len < 4 || off + len > payload.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let text = &payload[off + 4..off + len];
            let text = text.split(|b| *b == 0).next().unwrap_or_default();
            return Some(String::from_utf8_lossy(text).into_owned()).filter(|s| !s.is_empty());
        }
        off += (len + 3) & !3;
    }
    None
}

// ---------------------------------------------------------------------------
// Reading link messages

fn link_name(l: &LinkMessage) -> Option<&str> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.as_str()),
        _ => None,
    })
}

fn link_kind(l: &LinkMessage) -> Option<&InfoKind> {
    link_infos(l).find_map(|i| match i {
        LinkInfo::Kind(k) => Some(k),
        _ => None,
    })
}

fn link_infos(l: &LinkMessage) -> impl Iterator<Item = &LinkInfo> {
    l.attributes
        .iter()
        .filter_map(|a| match a {
            LinkAttribute::LinkInfo(infos) => Some(infos.iter()),
            _ => None,
        })
        .flatten()
}

fn link_controller(l: &LinkMessage) -> Option<u32> {
    l.attributes.iter().find_map(|a| match a {
        LinkAttribute::Controller(i) => Some(*i),
        _ => None,
    })
}

fn is_up(l: &LinkMessage) -> bool {
    l.header.flags.contains(LinkFlags::Up)
}

fn kind_name(k: Option<&InfoKind>) -> String {
    k.map_or_else(
        || "a device without a kind".into(),
        |k| format!("a {k} device"),
    )
}

/// What the tun driver says about a tun/tap link.
#[derive(Debug, Default)]
struct TunInfo {
    tap: bool,
    persist: bool,
    multi_queue: bool,
}

fn tun_info(l: &LinkMessage) -> Option<TunInfo> {
    if link_kind(l) != Some(&InfoKind::Tun) {
        return None;
    }
    let mut info = TunInfo::default();
    for i in link_infos(l) {
        let LinkInfo::Data(InfoData::Tun(attrs)) = i else {
            continue;
        };
        for attr in attrs {
            let InfoTun::Other(nla) = attr else {
                continue;
            };
            use netlink_packet_core::Nla;
            let mut v = vec![0u8; nla.value_len()];
            nla.emit_value(&mut v);
            let flag = v.first().copied().unwrap_or(0);
            match nla.kind() {
                IFLA_TUN_TYPE => info.tap = flag == libc::IFF_TAP as u8,
                IFLA_TUN_PERSIST => info.persist = flag != 0,
                IFLA_TUN_MULTI_QUEUE => info.multi_queue = flag != 0,
                _ => {}
            }
        }
    }
    Some(info)
}

fn mask(prefix_len: u8) -> u32 {
    match prefix_len {
        0 => 0,
        n => u32::MAX << (32 - u32::from(n.min(32))),
    }
}

/// A bridge's MAC address: locally administered, fixed for a given name
/// (FNV-1a of it). With an address set explicitly the kernel keeps it, where
/// it would otherwise take the lowest port's MAC and change it whenever a
/// tap comes or goes, leaving guests with a stale ARP entry for the gateway.
fn bridge_mac(name: &str) -> Vec<u8> {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    let [_, a, b, c] = h.to_be_bytes();
    vec![0x02, 0x62, 0x67, a, b, c]
}

// ---------------------------------------------------------------------------
// Sysctls

/// Sets the sysctl at `/proc/sys/<path>` to 1; returns whether it was not 1
/// already.
fn sysctl_enable(path: &str) -> Result<bool, HostError> {
    let file = Path::new("/proc/sys").join(path);
    let now = std::fs::read_to_string(&file).map_err(|e| HostError::io("cannot read", &file, e))?;
    if now.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(&file, "1\n").map_err(|e| HostError::io("cannot write", &file, e))?;
    tracing::debug!(sysctl = path, "sysctl set to 1");
    Ok(true)
}

// ---------------------------------------------------------------------------
// The HostOps methods

pub(super) fn bridge_ensure(
    name: &str,
    gateway: Ipv4Addr,
    prefix_len: u8,
) -> Result<BridgeChange, HostError> {
    check_ifname(name)?;
    if !(1..=30).contains(&prefix_len) {
        return Err(invalid(
            "invalid prefix length for bridge",
            name,
            format!("/{prefix_len}: the subnet needs room for the gateway and guests (1 to 30)"),
        ));
    }
    let host_bits = u32::from(gateway) & !mask(prefix_len);
    if host_bits == 0 || host_bits == !mask(prefix_len) {
        return Err(invalid(
            "invalid gateway for bridge",
            name,
            format!("{gateway} is the network or broadcast address of its /{prefix_len}"),
        ));
    }
    let mut nl = Rtnl::open()?;
    let mut change = BridgeChange::default();
    let link = match nl
        .get_link(name)
        .map_err(|e| e.host("cannot look up", name))?
    {
        Some(l) if link_kind(&l) == Some(&InfoKind::Bridge) => l,
        Some(l) => {
            return Err(invalid(
                "cannot use as the bridge",
                name,
                format!("it exists and is {}", kind_name(link_kind(&l))),
            ))
        }
        None => {
            let mut m = LinkMessage::default();
            m.attributes.push(LinkAttribute::IfName(name.into()));
            m.attributes.push(LinkAttribute::Address(bridge_mac(name)));
            m.attributes
                .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
                    InfoKind::Bridge,
                )]));
            match nl.request(RouteNetlinkMessage::NewLink(m), NLM_F_CREATE | NLM_F_EXCL) {
                Ok(_) => change.created = true,
                // Made by someone else meanwhile: checked below like any other.
                Err(e) if e.errno() == Some(libc::EEXIST) => {}
                Err(e) => return Err(e.host("cannot create bridge", name)),
            }
            match nl
                .get_link(name)
                .map_err(|e| e.host("cannot look up", name))?
            {
                Some(l) if link_kind(&l) == Some(&InfoKind::Bridge) => l,
                _ => {
                    return Err(invalid(
                        "cannot use as the bridge",
                        name,
                        "it vanished or is not a bridge right after creation".into(),
                    ))
                }
            }
        }
    };
    let index = link.header.index;

    let addresses = nl
        .ipv4_addresses(index)
        .map_err(|e| e.host("cannot list the addresses of", name))?;
    let mut has_gateway = false;
    for (ip, len) in addresses {
        if ip == gateway && len == prefix_len {
            has_gateway = true;
            continue;
        }
        nl.address_change(false, index, ip, len)
            .map_err(|e| e.host(&format!("cannot remove {ip}/{len} from"), name))?;
        change.removed_addresses.push(format!("{ip}/{len}"));
    }
    if !has_gateway {
        nl.address_change(true, index, gateway, prefix_len)
            .map_err(|e| e.host(&format!("cannot add {gateway}/{prefix_len} to"), name))?;
        change.address_added = true;
    }
    if !is_up(&link) {
        nl.change_link(index, true, Vec::new())
            .map_err(|e| e.host("cannot set up", name))?;
        change.brought_up = true;
    }
    change.route_localnet_set = sysctl_enable(&format!("net/ipv4/conf/{name}/route_localnet"))?;
    if !change.is_unchanged() {
        tracing::info!(bridge = name, %gateway, prefix_len, change = %change, "bridge ensured");
    }
    Ok(change)
}

pub(super) fn bridge_delete(name: &str) -> Result<(), HostError> {
    check_ifname(name)?;
    let mut nl = Rtnl::open()?;
    let Some(link) = nl
        .get_link(name)
        .map_err(|e| e.host("cannot look up", name))?
    else {
        return Ok(());
    };
    if link_kind(&link) != Some(&InfoKind::Bridge) {
        return Err(invalid(
            "refusing to delete",
            name,
            format!("it is {}, not a bridge", kind_name(link_kind(&link))),
        ));
    }
    nl.delete_link(link.header.index)
        .map_err(|e| e.host("cannot delete bridge", name))?;
    tracing::info!(bridge = name, "bridge deleted");
    Ok(())
}

pub(super) fn link_exists(name: &str) -> Result<bool, HostError> {
    check_ifname(name)?;
    let mut nl = Rtnl::open()?;
    Ok(nl
        .get_link(name)
        .map_err(|e| e.host("cannot look up", name))?
        .is_some())
}

pub(super) fn links_with_prefix(prefix: &str) -> Result<Vec<String>, HostError> {
    let mut nl = Rtnl::open()?;
    let mut names: Vec<String> = nl
        .links()
        .map_err(|e| e.host("cannot list", "network links"))?
        .iter()
        .filter_map(link_name)
        .filter(|n| n.starts_with(prefix))
        .map(String::from)
        .collect();
    names.sort();
    Ok(names)
}

pub(super) fn tap_create(name: &str, bridge: &str, isolated: bool) -> Result<(), HostError> {
    check_ifname(name)?;
    check_ifname(bridge)?;
    let mut nl = Rtnl::open()?;
    let br = bridge_index(&mut nl, bridge)?;
    match nl
        .get_link(name)
        .map_err(|e| e.host("cannot look up", name))?
    {
        None => make_persistent_tap(name)?,
        Some(l) => match tun_info(&l) {
            Some(t) if t.tap && !t.multi_queue => {
                if !t.persist {
                    // Made by a process for itself; take it over.
                    make_persistent_tap(name)?;
                }
            }
            Some(_) => {
                return Err(invalid(
                    "cannot use as a tap",
                    name,
                    "it exists and is a tun or multi-queue device".into(),
                ))
            }
            None => {
                return Err(invalid(
                    "cannot use as a tap",
                    name,
                    format!("it exists and is {}", kind_name(link_kind(&l))),
                ))
            }
        },
    }
    attach_port(&mut nl, name, br, isolated)?;
    tracing::debug!(tap = name, bridge, isolated, "tap ready");
    Ok(())
}

/// The index of bridge `name`; an error when it is missing or not a bridge.
fn bridge_index(nl: &mut Rtnl, name: &str) -> Result<u32, HostError> {
    match nl
        .get_link(name)
        .map_err(|e| e.host("cannot look up", name))?
    {
        Some(l) if link_kind(&l) == Some(&InfoKind::Bridge) => Ok(l.header.index),
        Some(l) => Err(invalid(
            "cannot attach to",
            name,
            format!("it is {}, not a bridge", kind_name(link_kind(&l))),
        )),
        None => Err(invalid(
            "cannot attach to bridge",
            name,
            "it does not exist".into(),
        )),
    }
}

/// Makes link `name` a port of the bridge with index `bridge`, sets it up
/// and sets its `isolated` port flag. The flag is bridge-port data, which
/// the kernel accepts only once the link is a port: two requests.
fn attach_port(nl: &mut Rtnl, name: &str, bridge: u32, isolated: bool) -> Result<(), HostError> {
    let link = nl
        .get_link(name)
        .map_err(|e| e.host("cannot look up", name))?
        .ok_or_else(|| invalid("cannot attach", name, "it vanished".into()))?;
    let index = link.header.index;
    if link_controller(&link) != Some(bridge) || !is_up(&link) {
        nl.change_link(index, true, vec![LinkAttribute::Controller(bridge)])
            .map_err(|e| e.host("cannot attach to the bridge and set up", name))?;
    }
    nl.change_link(
        index,
        false,
        vec![LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::Isolated(
                isolated,
            )])),
        ])],
    )
    .map_err(|e| e.host("cannot set the isolated flag of bridge port", name))
}

/// Attaches an existing link (a veth end, in tests) to a bridge the way
/// [`tap_create`] attaches a tap.
#[cfg(test)]
pub(crate) fn attach_to_bridge(name: &str, bridge: &str, isolated: bool) -> Result<(), HostError> {
    let mut nl = Rtnl::open()?;
    let br = bridge_index(&mut nl, bridge)?;
    attach_port(&mut nl, name, br, isolated)
}

/// The `struct ifreq` of TUNSETIFF: a name and the flags (40 bytes on
/// 64-bit Linux, the rest unused).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Creates tap `name` (or attaches to the existing, unused one) with the
/// flags Firecracker opens it with, and makes it persistent, so it outlives
/// the descriptor closed here. Firecracker then opens it by name with
/// TUNSETIFF; a tap and its opener must agree on `IFF_MULTI_QUEUE`, which
/// neither sets.
fn make_persistent_tap(name: &str) -> Result<(), HostError> {
    let dev = Path::new("/dev/net/tun");
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(dev)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                HostError::Unavailable(
                    "/dev/net/tun does not exist: load the tun module (modprobe tun)".into(),
                )
            } else {
                HostError::io("cannot open", dev, e)
            }
        })?;
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is
    // laid out as and outlives the call; the descriptor is open.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) } < 0 {
        return Err(HostError::io(
            "cannot create tap (TUNSETIFF)",
            Path::new(name),
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: TUNSETPERSIST takes an integer argument, no pointer.
    if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(HostError::io(
            "cannot make tap persistent (TUNSETPERSIST)",
            Path::new(name),
            io::Error::last_os_error(),
        ));
    }
    Ok(())
}

pub(super) fn tap_delete(name: &str) -> Result<(), HostError> {
    check_ifname(name)?;
    let mut nl = Rtnl::open()?;
    let Some(link) = nl
        .get_link(name)
        .map_err(|e| e.host("cannot look up", name))?
    else {
        return Ok(());
    };
    if tun_info(&link).is_none() {
        return Err(invalid(
            "refusing to delete",
            name,
            format!("it is {}, not a tap", kind_name(link_kind(&link))),
        ));
    }
    nl.delete_link(link.header.index)
        .map_err(|e| e.host("cannot delete tap", name))?;
    tracing::debug!(tap = name, "tap deleted");
    Ok(())
}

fn route_table(r: &RouteMessage) -> u32 {
    r.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(r.header.table))
}

/// The output device of a route: its `RTA_OIF`, or the first hop's.
fn route_oif(r: &RouteMessage) -> Option<u32> {
    r.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        RouteAttribute::MultiPath(hops) => hops.first().map(|h| h.interface_index),
        _ => None,
    })
}

fn route_v4(
    r: &RouteMessage,
    pick: impl Fn(&RouteAttribute) -> Option<&RouteAddress>,
) -> Option<Ipv4Addr> {
    r.attributes.iter().find_map(|a| match pick(a) {
        Some(RouteAddress::Inet(ip)) => Some(*ip),
        _ => None,
    })
}

pub(super) fn default_route_dev() -> Result<Option<String>, HostError> {
    let mut nl = Rtnl::open()?;
    let routes = nl
        .ipv4_routes()
        .map_err(|e| e.host("cannot list", "IPv4 routes"))?;
    let best = routes
        .iter()
        .filter(|r| {
            r.header.destination_prefix_length == 0
                && r.header.kind == RouteType::Unicast
                && route_table(r) == RT_TABLE_MAIN
        })
        .filter_map(|r| {
            let metric = r
                .attributes
                .iter()
                .find_map(|a| match a {
                    RouteAttribute::Priority(p) => Some(*p),
                    _ => None,
                })
                .unwrap_or(0);
            Some((metric, route_oif(r)?))
        })
        .min();
    let Some((_, index)) = best else {
        return Ok(None);
    };
    let link = nl
        .get_link_by_index(index)
        .map_err(|e| e.host("cannot look up", &format!("link #{index}")))?;
    Ok(link.as_ref().and_then(link_name).map(String::from))
}

pub(super) fn ip_forward_enable() -> Result<(), HostError> {
    if sysctl_enable("net/ipv4/ip_forward")? {
        tracing::info!("net.ipv4.ip_forward turned on");
    }
    Ok(())
}

/// Whether `a/alen` and `b/blen` share an address: the shorter prefix
/// contains the other's network.
fn cidrs_overlap(a: Ipv4Addr, alen: u8, b: Ipv4Addr, blen: u8) -> bool {
    let m = mask(alen.min(blen));
    u32::from(a) & m == u32::from(b) & m
}

pub(super) fn routes_overlapping(
    net: Ipv4Addr,
    prefix: u8,
    except_dev: Option<&str>,
) -> Result<Vec<String>, HostError> {
    if prefix > 32 {
        return Err(invalid(
            "invalid prefix length",
            &format!("{net}/{prefix}"),
            "at most 32".into(),
        ));
    }
    let mut nl = Rtnl::open()?;
    let names: std::collections::HashMap<u32, String> = nl
        .links()
        .map_err(|e| e.host("cannot list", "network links"))?
        .iter()
        .filter_map(|l| Some((l.header.index, link_name(l)?.to_string())))
        .collect();
    let routes = nl
        .ipv4_routes()
        .map_err(|e| e.host("cannot list", "IPv4 routes"))?;
    let mut out = Vec::new();
    for r in &routes {
        let len = r.header.destination_prefix_length;
        let table = route_table(r);
        let kind = match r.header.kind {
            RouteType::Unicast => "",
            RouteType::BlackHole => "blackhole ",
            RouteType::Unreachable => "unreachable ",
            RouteType::Prohibit => "prohibit ",
            _ => continue, // local, broadcast, multicast, anycast
        };
        if len == 0 || table == RT_TABLE_LOCAL {
            continue;
        }
        let dst = route_v4(r, |a| match a {
            RouteAttribute::Destination(d) => Some(d),
            _ => None,
        })
        .unwrap_or(Ipv4Addr::UNSPECIFIED);
        if !cidrs_overlap(dst, len, net, prefix) {
            continue;
        }
        let dev = route_oif(r).and_then(|i| names.get(&i)).map(String::as_str);
        if dev.is_some() && dev == except_dev {
            continue;
        }
        let mut s = format!("{kind}{dst}/{len}");
        if let Some(gw) = route_v4(r, |a| match a {
            RouteAttribute::Gateway(g) => Some(g),
            _ => None,
        }) {
            s.push_str(&format!(" via {gw}"));
        }
        if let Some(dev) = dev {
            s.push_str(&format!(" dev {dev}"));
        }
        if table != RT_TABLE_MAIN {
            s.push_str(&format!(" table {table}"));
        }
        out.push(s);
    }
    Ok(out)
}

pub(super) fn nft_apply(batch: &Nftables<'_>) -> Result<(), HostError> {
    let program = NFT.locate()?;
    let args = ["-j", "-f", "-"];
    let json = serde_json::to_vec(batch).map_err(|e| {
        HostError::io(
            "cannot write the JSON for",
            Path::new("nft -j -f -"),
            io::Error::new(io::ErrorKind::InvalidData, e),
        )
    })?;
    tracing::debug!(objects = batch.objects.len(), "running nft -j -f -");
    let mut child = Command::new(&program)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| HostError::io("cannot run", &program, e))?;
    if let Some(mut stdin) = child.stdin.take() {
        // nft reads the whole document before it answers; a write error
        // means it exited early, and its status and stderr say why.
        let _ = stdin.write_all(&json);
    }
    let output = child
        .wait_with_output()
        .map_err(|e| HostError::io("cannot wait for", &program, e))?;
    Ran {
        program,
        args: args.iter().map(|s| s.to_string()).collect(),
        output,
    }
    .stdout_if_success()
    .map(drop)
}

/// `nft -j ARGS`, its output parsed as an nftables document.
fn nft_json(args: &[&str]) -> Result<Nftables<'static>, HostError> {
    let program: PathBuf = NFT.locate()?;
    let ran = super::system::execute(program, std::iter::once("-j").chain(args.iter().copied()))?;
    if !ran.output.status.success() {
        return Err(ran.into_error());
    }
    serde_json::from_slice(&ran.output.stdout).map_err(|e| {
        HostError::io(
            "cannot parse the JSON of",
            Path::new(&format!("nft -j {}", args.join(" "))),
            io::Error::new(io::ErrorKind::InvalidData, e),
        )
    })
}

pub(super) fn nft_list_table(
    family: NfFamily,
    table: &str,
) -> Result<Option<Nftables<'static>>, HostError> {
    if table.is_empty()
        || !table
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(invalid(
            "invalid nftables name",
            table,
            "letters, digits, '_' and '-' only".into(),
        ));
    }
    let family_word = match serde_json::to_value(family) {
        Ok(serde_json::Value::String(w)) => w,
        _ => unreachable!("an nftables family serialises as its name"),
    };
    // Whether the table exists is read from the list of tables, not from
    // the wording of the error `list table` gives for a missing one.
    let exists = |tables: &Nftables<'_>| {
        tables.objects.iter().any(|o| {
            matches!(o, NfObject::ListObject(NfListObject::Table(t))
                if t.family == family && t.name == table)
        })
    };
    if !exists(&nft_json(&["list", "tables", &family_word])?) {
        return Ok(None);
    }
    match nft_json(&["list", "table", &family_word, table]) {
        Ok(listed) => Ok(Some(listed)),
        // Deleted in between: as missing as if it had never been there.
        Err(e) if !exists(&nft_json(&["list", "tables", &family_word])?) => {
            tracing::debug!(error = %e, "the nftables table went away while being listed");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------------------
// Network namespaces for tests

/// Test helper: named network namespaces (`ip netns add`), deleted on drop,
/// and threads that run inside them.
///
/// A thread that entered a namespace with `setns(CLONE_NEWNET)` opens its
/// sockets there, sees that namespace's `/proc/sys/net`, and the processes it
/// starts (`ip`, `nft`) inherit it; other threads are unaffected. So a test
/// calls the real [`SystemHost`](super::SystemHost) methods from such a
/// thread and never touches the machine's own namespace. Deleting the
/// namespace destroys the bridges, taps and veths in it once the last thread
/// or socket inside it is gone.
#[cfg(test)]
pub(crate) mod netns {
    use std::fs::File;
    use std::os::fd::AsFd;
    use std::process::Command;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::thread::JoinHandle;

    use super::super::testutil::{require_root, run};

    pub(crate) struct Netns {
        name: String,
    }

    impl Netns {
        /// Creates `banger-t-<tag>-<pid>-<n>` with its loopback up.
        pub(crate) fn new(tag: &str) -> Netns {
            require_root("creates network namespaces");
            static COUNTER: AtomicU32 = AtomicU32::new(0);
            let name = format!(
                "banger-t-{tag}-{}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            run("ip", &["netns", "add", &name]);
            let ns = Netns { name };
            ns.ip(&["link", "set", "lo", "up"]);
            ns
        }

        pub(crate) fn name(&self) -> &str {
            &self.name
        }

        /// `ip -n <ns> args...`, asserting success; returns stdout.
        pub(crate) fn ip(&self, args: &[&str]) -> String {
            let mut all = vec!["-n", self.name.as_str()];
            all.extend_from_slice(args);
            run("ip", &all)
        }

        /// Runs `f` on a new thread inside the namespace and returns its
        /// result (a panic in `f` is re-raised here).
        pub(crate) fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
            std::thread::scope(|s| {
                let h = s.spawn(|| {
                    enter(&self.name);
                    f()
                });
                match h.join() {
                    Ok(v) => v,
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            })
        }

        /// Starts `f` on a thread inside the namespace. Join it before the
        /// namespace is dropped.
        pub(crate) fn spawn<T: Send + 'static>(
            &self,
            f: impl FnOnce() -> T + Send + 'static,
        ) -> JoinHandle<T> {
            let name = self.name.clone();
            std::thread::spawn(move || {
                enter(&name);
                f()
            })
        }
    }

    fn enter(name: &str) {
        let f = File::open(format!("/run/netns/{name}"))
            .unwrap_or_else(|e| panic!("cannot open netns {name}: {e}"));
        rustix::thread::move_into_link_name_space(
            f.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .unwrap_or_else(|e| panic!("cannot enter netns {name}: {e}"));
    }

    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "delete", &self.name])
                .status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::netns::Netns;
    use super::*;
    use crate::privileged::{HostOps, SystemHost};

    /// `ip -j [-d] link show dev` in the namespace, parsed.
    fn link_json(ns: &Netns, dev: &str, details: bool) -> serde_json::Value {
        let out = if details {
            ns.ip(&["-j", "-d", "link", "show", "dev", dev])
        } else {
            ns.ip(&["-j", "link", "show", "dev", dev])
        };
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0].clone()
    }

    fn ipv4_addrs(ns: &Netns, dev: &str) -> Vec<String> {
        let out = ns.ip(&["-j", "-4", "addr", "show", "dev", dev]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v[0]["addr_info"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]))
            .collect()
    }

    fn link_missing(ns: &Netns, dev: &str) -> bool {
        !Command::new("ip")
            .args(["-n", ns.name(), "link", "show", "dev", dev])
            .stderr(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    }

    #[test]
    fn interface_names_are_checked() {
        assert!(check_ifname("br-banger").is_ok());
        assert!(check_ifname("a23456789012345").is_ok());
        for bad in [
            "",
            "a234567890123456",
            "a/b",
            "a:b",
            "a b",
            "a\"b",
            ".",
            "..",
        ] {
            let e = check_ifname(bad).unwrap_err();
            assert!(e.to_string().contains("1 to 15 bytes"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn overlap_and_masks() {
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert!(cidrs_overlap(ip("10.0.0.0"), 8, ip("10.77.0.0"), 24));
        assert!(cidrs_overlap(ip("10.77.0.128"), 25, ip("10.77.0.0"), 24));
        assert!(!cidrs_overlap(ip("10.78.0.0"), 24, ip("10.77.0.0"), 24));
        assert!(!cidrs_overlap(ip("192.168.0.0"), 16, ip("10.77.0.0"), 24));
        assert_eq!(mask(24), 0xffff_ff00);
        assert_eq!(mask(0), 0);
        assert_eq!(mask(32), u32::MAX);
        assert_eq!(bridge_mac("br-banger")[..3], [0x02, 0x62, 0x67]);
        assert_eq!(bridge_mac("br-banger"), bridge_mac("br-banger"));
    }

    #[test]
    fn bridge_and_tap_lifecycle() {
        let ns = Netns::new("br");
        let host = SystemHost;
        let gw: Ipv4Addr = "10.77.0.1".parse().unwrap();
        ns.run(|| {
            let c = host.bridge_ensure("br-t", gw, 24).unwrap();
            assert!(
                c.created && c.address_added && c.brought_up && c.route_localnet_set,
                "{c:?}"
            );
            assert!(c.removed_addresses.is_empty(), "{c:?}");
            let rl =
                std::fs::read_to_string("/proc/sys/net/ipv4/conf/br-t/route_localnet").unwrap();
            assert_eq!(rl.trim(), "1");
            // Idempotent.
            let again = host.bridge_ensure("br-t", gw, 24).unwrap();
            assert!(again.is_unchanged(), "{again}");
            assert_eq!(again.to_string(), "unchanged");
            assert!(host.link_exists("br-t").unwrap());
            assert!(!host.link_exists("br-nope").unwrap());
        });
        let br = link_json(&ns, "br-t", true);
        assert_eq!(br["linkinfo"]["info_kind"], "bridge");
        assert!(
            br["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
            "{br}"
        );
        assert_eq!(
            br["address"],
            "02:62:67:".to_string()
                + &{
                    let m = bridge_mac("br-t");
                    format!("{:02x}:{:02x}:{:02x}", m[3], m[4], m[5])
                }
        );
        assert_eq!(ipv4_addrs(&ns, "br-t"), ["10.77.0.1/24"]);

        // A wrong prefix and a leftover address are replaced; a downed
        // bridge is set up again; route_localnet is restored.
        ns.ip(&["addr", "flush", "dev", "br-t"]);
        ns.ip(&["addr", "add", "10.77.0.1/16", "dev", "br-t"]);
        ns.ip(&["addr", "add", "10.99.0.1/24", "dev", "br-t"]);
        ns.ip(&["link", "set", "br-t", "down"]);
        ns.run(|| {
            std::fs::write("/proc/sys/net/ipv4/conf/br-t/route_localnet", "0").unwrap();
            let c = host.bridge_ensure("br-t", gw, 24).unwrap();
            assert!(
                !c.created && c.address_added && c.brought_up && c.route_localnet_set,
                "{c:?}"
            );
            let mut removed = c.removed_addresses.clone();
            removed.sort();
            assert_eq!(removed, ["10.77.0.1/16", "10.99.0.1/24"]);
            assert!(host.bridge_ensure("br-t", gw, 24).unwrap().is_unchanged());
        });
        assert_eq!(ipv4_addrs(&ns, "br-t"), ["10.77.0.1/24"]);

        // Taps: persistent (the creating descriptor is closed by now),
        // attached, up, isolated as asked; idempotent; re-attachable.
        ns.run(|| {
            host.tap_create("tap-t0", "br-t", true).unwrap();
            host.tap_create("tap-t1", "br-t", false).unwrap();
            host.tap_create("tap-t0", "br-t", true).unwrap();
            assert_eq!(
                host.links_with_prefix("tap-t").unwrap(),
                ["tap-t0", "tap-t1"]
            );
        });
        let t0 = link_json(&ns, "tap-t0", true);
        assert_eq!(t0["master"], "br-t", "{t0}");
        assert_eq!(t0["linkinfo"]["info_kind"], "tun");
        assert_eq!(t0["linkinfo"]["info_data"]["type"], "tap");
        assert_eq!(t0["linkinfo"]["info_data"]["pi"], false);
        assert_eq!(t0["linkinfo"]["info_data"]["vnet_hdr"], true);
        assert_eq!(t0["linkinfo"]["info_data"]["persist"], true);
        assert_eq!(t0["linkinfo"]["info_data"]["multi_queue"], false);
        assert_eq!(t0["linkinfo"]["info_slave_kind"], "bridge");
        assert_eq!(t0["linkinfo"]["info_slave_data"]["isolated"], true);
        assert!(
            t0["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
            "{t0}"
        );
        let t1 = link_json(&ns, "tap-t1", true);
        assert_eq!(t1["master"], "br-t");
        assert_eq!(t1["linkinfo"]["info_slave_data"]["isolated"], false);

        // Detached and downed behind our back: tap_create puts it back, and
        // flips the isolated flag when asked.
        ns.ip(&["link", "set", "tap-t1", "nomaster"]);
        ns.ip(&["link", "set", "tap-t1", "down"]);
        ns.run(|| host.tap_create("tap-t1", "br-t", true).unwrap());
        let t1 = link_json(&ns, "tap-t1", true);
        assert_eq!(t1["master"], "br-t");
        assert_eq!(t1["linkinfo"]["info_slave_data"]["isolated"], true);
        assert!(
            t1["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
            "{t1}"
        );

        // Refusals.
        // Kernels may lack the dummy driver; a veth is just as much "not a
        // tap and not a bridge".
        ns.ip(&[
            "link", "add", "veth-t", "type", "veth", "peer", "name", "veth-t2",
        ]);
        ns.run(|| {
            let e = host.tap_create("veth-t", "br-t", true).unwrap_err();
            assert!(e.to_string().contains("is a veth device"), "{e}");
            let e = host.tap_delete("veth-t").unwrap_err();
            assert!(e.to_string().contains("not a tap"), "{e}");
            let e = host.bridge_delete("veth-t").unwrap_err();
            assert!(e.to_string().contains("not a bridge"), "{e}");
            let e = host.bridge_ensure("veth-t", gw, 24).unwrap_err();
            assert!(e.to_string().contains("is a veth device"), "{e}");
            let e = host.tap_create("tap-t2", "veth-t", true).unwrap_err();
            assert!(e.to_string().contains("not a bridge"), "{e}");
            let e = host.tap_create("tap-t2", "br-missing", true).unwrap_err();
            assert!(e.to_string().contains("does not exist"), "{e}");
            let e = host
                .tap_create("tap-name-too-long", "br-t", true)
                .unwrap_err();
            assert!(e.to_string().contains("1 to 15 bytes"), "{e}");
            let e = host.bridge_ensure("br-name-too-long", gw, 24).unwrap_err();
            assert!(e.to_string().contains("1 to 15 bytes"), "{e}");
            let e = host
                .bridge_ensure("br-t", "10.77.0.0".parse().unwrap(), 24)
                .unwrap_err();
            assert!(e.to_string().contains("network or broadcast"), "{e}");
            let e = host.bridge_ensure("br-t", gw, 31).unwrap_err();
            assert!(e.to_string().contains("1 to 30"), "{e}");
        });
        assert!(link_missing(&ns, "tap-t2"));

        // Deletion; missing is fine.
        ns.run(|| {
            host.tap_delete("tap-t0").unwrap();
            host.tap_delete("tap-t0").unwrap();
            host.tap_delete("tap-t1").unwrap();
            assert!(host.links_with_prefix("tap-t").unwrap().is_empty());
            host.bridge_delete("br-t").unwrap();
            host.bridge_delete("br-t").unwrap();
            assert!(!host.link_exists("br-t").unwrap());
        });
        assert!(link_missing(&ns, "tap-t0"));
        assert!(link_missing(&ns, "br-t"));
    }

    #[test]
    fn tap_delete_while_held_open() {
        let ns = Netns::new("tapheld");
        let host = SystemHost;
        ns.run(|| {
            host.bridge_ensure("br-h", "10.78.0.1".parse().unwrap(), 24)
                .unwrap();
            host.tap_create("tap-h", "br-h", true).unwrap();
            // As Firecracker would: open it by name with the same flags.
            let tun = OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/net/tun")
                .unwrap();
            let mut req = IfReq {
                name: [0; 16],
                flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
                _pad: [0; 22],
            };
            req.name[..5].copy_from_slice(b"tap-h");
            // EBUSY while a fork of another test thread (between fork and
            // exec) still holds tap_create's descriptor: that clears at its
            // exec, so retry briefly, as a VMM opening the tap would.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            loop {
                // SAFETY: as in make_persistent_tap.
                let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) };
                let err = io::Error::last_os_error();
                if rc == 0 {
                    break;
                }
                assert!(
                    err.raw_os_error() == Some(libc::EBUSY) && std::time::Instant::now() < deadline,
                    "TUNSETIFF: {err}"
                );
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            // In use: re-running tap_create still works (no TUNSETIFF needed).
            host.tap_create("tap-h", "br-h", true).unwrap();
            host.tap_delete("tap-h").unwrap();
            assert!(!host.link_exists("tap-h").unwrap());
            drop(tun);
        });
    }

    #[test]
    fn default_route_and_overlapping_routes() {
        let ns = Netns::new("route");
        let peer = Netns::new("routepeer");
        let host = SystemHost;
        ns.run(|| assert_eq!(host.default_route_dev().unwrap(), None));
        ns.ip(&[
            "link",
            "add",
            "up-t",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            peer.name(),
        ]);
        ns.ip(&["addr", "add", "198.51.100.1/24", "dev", "up-t"]);
        ns.ip(&["link", "set", "up-t", "up"]);
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            "198.51.100.2",
            "dev",
            "up-t",
        ]);
        ns.run(|| {
            assert_eq!(host.default_route_dev().unwrap().as_deref(), Some("up-t"));
            assert!(host
                .routes_overlapping("10.77.0.0".parse().unwrap(), 24, None)
                .unwrap()
                .is_empty());
        });
        // A route that contains the subnet, one inside it, one beside it, one
        // in another table, and the bridge's own.
        ns.ip(&[
            "route",
            "add",
            "10.0.0.0/8",
            "via",
            "198.51.100.3",
            "dev",
            "up-t",
        ]);
        ns.ip(&["route", "add", "blackhole", "10.77.0.128/25"]);
        ns.ip(&["route", "add", "10.78.0.0/24", "via", "198.51.100.3"]);
        ns.ip(&["route", "add", "10.77.0.0/16", "dev", "up-t", "table", "52"]);
        ns.run(|| {
            host.bridge_ensure("br-r", "10.77.0.1".parse().unwrap(), 24)
                .unwrap();
            let net: Ipv4Addr = "10.77.0.0".parse().unwrap();
            let mut found = host.routes_overlapping(net, 24, Some("br-r")).unwrap();
            found.sort();
            assert_eq!(
                found,
                [
                    "10.0.0.0/8 via 198.51.100.3 dev up-t",
                    "10.77.0.0/16 dev up-t table 52",
                    "blackhole 10.77.0.128/25",
                ]
            );
            let with_bridge = host.routes_overlapping(net, 24, None).unwrap();
            assert!(
                with_bridge.contains(&"10.77.0.0/24 dev br-r".to_string()),
                "{with_bridge:?}"
            );
            // A lower-metric default wins.
            run_ok(&[
                "link", "add", "veth-r", "type", "veth", "peer", "name", "veth-r2",
            ]);
            run_ok(&["link", "set", "veth-r", "up"]);
            run_ok(&["link", "set", "veth-r2", "up"]);
            run_ok(&["route", "del", "default"]);
            run_ok(&[
                "route",
                "add",
                "default",
                "via",
                "198.51.100.2",
                "metric",
                "10",
            ]);
            run_ok(&["route", "add", "default", "dev", "veth-r", "metric", "5"]);
            assert_eq!(host.default_route_dev().unwrap().as_deref(), Some("veth-r"));
            host.ip_forward_enable().unwrap();
            let fwd = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
            assert_eq!(fwd.trim(), "1");
            host.ip_forward_enable().unwrap();
        });
    }

    /// `ip args...` from the current thread (so in its namespace).
    fn run_ok(args: &[&str]) {
        super::super::testutil::run("ip", args);
    }

    #[test]
    fn nft_apply_and_list() {
        use nftables::expr::{Expression, NamedExpression, Payload, PayloadField};
        use nftables::schema::{Chain, NfCmd, Rule, Table};
        use nftables::stmt::{Match, Operator, Statement};

        let ns = Netns::new("nft");
        let host = SystemHost;
        let table = || {
            NfListObject::Table(Table {
                family: NfFamily::IP,
                name: "banger_t".into(),
                handle: None,
            })
        };
        let chain = NfListObject::Chain(Chain {
            family: NfFamily::IP,
            table: "banger_t".into(),
            name: "c".into(),
            newname: None,
            handle: None,
            _type: None,
            hook: None,
            prio: None,
            dev: None,
            policy: None,
        });
        let rule = |expr: Vec<Statement<'static>>| {
            NfListObject::Rule(Rule {
                family: NfFamily::IP,
                table: "banger_t".into(),
                chain: "c".into(),
                expr: expr.into(),
                handle: None,
                index: None,
                comment: Some("x".into()),
            })
        };
        let batch = |cmds: Vec<NfCmd<'static>>| Nftables {
            objects: cmds
                .into_iter()
                .map(NfObject::CmdObject)
                .collect::<Vec<_>>()
                .into(),
        };
        ns.run(|| {
            assert_eq!(host.nft_list_table(NfFamily::IP, "banger_t").unwrap(), None);
            host.nft_apply(&batch(vec![
                NfCmd::Add(table()),
                NfCmd::Add(chain.clone()),
                NfCmd::Add(rule(vec![Statement::Accept(None)])),
            ]))
            .unwrap();
            let v = host
                .nft_list_table(NfFamily::IP, "banger_t")
                .unwrap()
                .unwrap();
            let text = serde_json::to_string(&v).unwrap();
            assert!(text.contains("\"comment\":\"x\""), "{text}");
            // One transaction: a bad item leaves everything as it was.
            let bogus = Statement::Match(Match {
                left: Expression::Named(NamedExpression::Payload(Payload::PayloadField(
                    PayloadField {
                        protocol: "tcp".into(),
                        field: "bogus".into(),
                    },
                ))),
                right: Expression::Number(1),
                op: Operator::EQ,
            });
            let e = host
                .nft_apply(&batch(vec![
                    NfCmd::Delete(table()),
                    NfCmd::Add(table()),
                    NfCmd::Add(chain.clone()),
                    NfCmd::Add(rule(vec![bogus])),
                ]))
                .unwrap_err();
            match &e {
                HostError::Command { stderr, .. } => assert!(stderr.contains("bogus"), "{stderr}"),
                other => panic!("{other:?}"),
            }
            assert!(host
                .nft_list_table(NfFamily::IP, "banger_t")
                .unwrap()
                .is_some());
            host.nft_apply(&batch(vec![NfCmd::Delete(table())]))
                .unwrap();
            assert_eq!(host.nft_list_table(NfFamily::IP, "banger_t").unwrap(), None);
            assert!(host.nft_list_table(NfFamily::IP, "bad name").is_err());
        });
    }
}
