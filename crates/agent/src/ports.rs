//! `ports`: which sockets listen in the guest, and who holds them.
//!
//! Sockets come from `/proc/net/{tcp,tcp6,udp,udp6}`: TCP sockets in state
//! `0A` (LISTEN), and UDP sockets bound to a port and not connected (remote
//! address and port zero). Addresses there are hex dumps of the kernel's
//! in-memory (network byte order) address, printed as native-endian 32-bit
//! words, so each word is turned back into bytes with `to_ne_bytes`
//! (little-endian on x86). The owner is found by matching each socket's inode
//! against the `socket:[inode]` links in `/proc/<pid>/fd/`.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use banger_proto::agent::{ListeningPort, PortProto};

/// TCP_LISTEN in `/proc/net/tcp*`'s `st` column.
const TCP_LISTEN: u8 = 0x0A;

/// A listening socket read from `/proc/net/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcSocket {
    pub proto: PortProto,
    pub address: IpAddr,
    pub port: u16,
    pub inode: u64,
}

/// Every listening socket in the agent's network namespace, with its owner
/// where one is found, sorted by protocol, port and address.
pub fn listening_ports() -> io::Result<Vec<ListeningPort>> {
    listening_ports_in(Path::new("/proc"))
}

/// [`listening_ports`] against another procfs root.
pub fn listening_ports_in(proc_root: &Path) -> io::Result<Vec<ListeningPort>> {
    let mut sockets = Vec::new();
    for proto in [
        PortProto::Tcp,
        PortProto::Tcp6,
        PortProto::Udp,
        PortProto::Udp6,
    ] {
        let file = proc_root.join("net").join(proto.as_str());
        match std::fs::read_to_string(&file) {
            Ok(text) => sockets.extend(parse_proc_net(&text, proto)),
            // No IPv6 in this kernel (or disabled): nothing listens there.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", file.display()))),
        }
    }
    let inodes: HashSet<u64> = sockets
        .iter()
        .map(|s| s.inode)
        .filter(|&i| i != 0)
        .collect();
    let owners = socket_owners(proc_root, &inodes);
    let mut ports: Vec<ListeningPort> = sockets
        .into_iter()
        .map(|s| {
            let owner = owners.get(&s.inode);
            ListeningPort {
                proto: s.proto,
                address: s.address.to_string(),
                port: s.port,
                pid: owner.map(|o| o.0),
                process: owner.map(|o| o.1.clone()),
            }
        })
        .collect();
    ports.sort_by(|a, b| {
        (a.proto, a.port, &a.address, a.pid).cmp(&(b.proto, b.port, &b.address, b.pid))
    });
    // SO_REUSEPORT groups show up once per socket; report the port once.
    ports.dedup_by(|b, a| a.proto == b.proto && a.port == b.port && a.address == b.address);
    Ok(ports)
}

/// The listening sockets in the text of one `/proc/net/<proto>` file. Lines
/// that do not parse (the header, anything unexpected) are skipped.
pub fn parse_proc_net(text: &str, proto: PortProto) -> Vec<ProcSocket> {
    let v6 = matches!(proto, PortProto::Tcp6 | PortProto::Udp6);
    let tcp = matches!(proto, PortProto::Tcp | PortProto::Tcp6);
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_ascii_whitespace().collect();
            if f.len() < 10 || !f[0].ends_with(':') {
                return None;
            }
            let (address, port) = parse_endpoint(f[1], v6)?;
            let (remote, remote_port) = parse_endpoint(f[2], v6)?;
            let state = u8::from_str_radix(f[3], 16).ok()?;
            let inode: u64 = f[9].parse().ok()?;
            let listening = if tcp {
                state == TCP_LISTEN
            } else {
                port != 0 && remote.is_unspecified() && remote_port == 0
            };
            listening.then_some(ProcSocket {
                proto,
                address,
                port,
                inode,
            })
        })
        .collect()
}

/// `0100007F:0CEA` → (127.0.0.1, 3306); 32 hex digits before the colon for IPv6.
pub fn parse_endpoint(field: &str, v6: bool) -> Option<(IpAddr, u16)> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    if !addr.is_ascii() {
        return None;
    }
    let address = if v6 {
        if addr.len() != 32 {
            return None;
        }
        let mut bytes = [0u8; 16];
        for (i, chunk) in bytes.chunks_exact_mut(4).enumerate() {
            let word = u32::from_str_radix(&addr[i * 8..i * 8 + 8], 16).ok()?;
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(bytes))
    } else {
        if addr.len() != 8 {
            return None;
        }
        let word = u32::from_str_radix(addr, 16).ok()?;
        IpAddr::V4(Ipv4Addr::from(word.to_ne_bytes()))
    };
    Some((address, port))
}

/// For each of `inodes`, the lowest pid holding it and that process's `comm`.
/// Processes that vanish or cannot be read are skipped.
pub fn socket_owners(proc_root: &Path, inodes: &HashSet<u64>) -> HashMap<u64, (u32, String)> {
    let mut owners: HashMap<u64, (u32, String)> = HashMap::new();
    if inodes.is_empty() {
        return owners;
    }
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return owners;
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    pids.sort_unstable();
    for pid in pids {
        let dir = proc_root.join(pid.to_string());
        let Ok(fds) = std::fs::read_dir(dir.join("fd")) else {
            continue;
        };
        let mut comm: Option<String> = None;
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = target.to_str().and_then(socket_inode) else {
                continue;
            };
            if !inodes.contains(&inode) || owners.contains_key(&inode) {
                continue;
            }
            let name = comm.get_or_insert_with(|| {
                std::fs::read_to_string(dir.join("comm"))
                    .map(|c| c.trim_end_matches('\n').to_string())
                    .unwrap_or_default()
            });
            owners.insert(inode, (pid, name.clone()));
        }
        if owners.len() == inodes.len() {
            break;
        }
    }
    owners
}

/// `socket:[12345]` → 12345.
fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, UdpSocket};

    use super::*;

    const TCP: &str = "\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0CEA 00000000:0000 0A 00000000:00000000 00:00000000 00000000   999        0 22557 1 0000000000000000 100 0 0 10 0
   1: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 15001 1 0000000000000000 100 0 0 10 0
   2: 0F02000A:0016 0202000A:C350 01 00000000:00000000 02:000A7B6A 00000000     0        0 16000 4 0000000000000000 20 4 30 10 -1
   3: 0F02000A:9C40 0202000A:0050 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000
   4: garbage
";

    const TCP6: &str = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:0016 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 15003 1 0000000000000000 100 0 0 10 0
   1: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 15004 1 0000000000000000 100 0 0 10 0
   2: 000080FE000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 15005 1 0000000000000000 100 0 0 10 0
   3: 0000000000000000FFFF00000100007F:1F90 0000000000000000FFFF00000100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 15006 1 0000000000000000 20 4 0 10 -1
";

    const UDP: &str = "\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  110: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 17000 2 0000000000000000 0
  120: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 17001 2 0000000000000000 0
  130: 0F02000A:A1B2 08080808:0035 01 00000000:00000000 00:00000000 00000000     0        0 17002 2 0000000000000000 0
  140: 00000000:0000 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 17004 2 0000000000000000 0
";

    const UDP6: &str = "\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 2345: 00000000000000000000000000000000:14E9 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000   104        0 17003 2 0000000000000000 0
 2346: 00000000000000000000000001000000:8000 00000000000000000000000001000000:0035 01 00000000:00000000 00:00000000 00000000   104        0 17005 2 0000000000000000 0
";

    fn brief(sockets: &[ProcSocket]) -> Vec<(String, u16, u64)> {
        sockets
            .iter()
            .map(|s| (s.address.to_string(), s.port, s.inode))
            .collect()
    }

    fn owned(v: &[(&str, u16, u64)]) -> Vec<(String, u16, u64)> {
        v.iter().map(|&(a, p, i)| (a.to_string(), p, i)).collect()
    }

    #[test]
    fn tcp_listen_only() {
        let s = parse_proc_net(TCP, PortProto::Tcp);
        assert_eq!(
            brief(&s),
            owned(&[("127.0.0.1", 3306, 22557), ("0.0.0.0", 22, 15001)])
        );
        assert!(s.iter().all(|s| s.proto == PortProto::Tcp));
    }

    #[test]
    fn tcp6_addresses() {
        let s = parse_proc_net(TCP6, PortProto::Tcp6);
        assert_eq!(
            brief(&s),
            owned(&[
                ("::", 22, 15003),
                ("::1", 8080, 15004),
                ("fe80::1", 80, 15005)
            ])
        );
    }

    #[test]
    fn udp_bound_and_unconnected_only() {
        let s = parse_proc_net(UDP, PortProto::Udp);
        assert_eq!(
            brief(&s),
            owned(&[("0.0.0.0", 68, 17000), ("127.0.0.53", 53, 17001)])
        );
        let s = parse_proc_net(UDP6, PortProto::Udp6);
        assert_eq!(brief(&s), owned(&[("::", 5353, 17003)]));
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            parse_endpoint("0100007F:0CEA", false),
            Some(("127.0.0.1".parse().unwrap(), 3306))
        );
        assert_eq!(
            parse_endpoint("0000000000000000FFFF00000100007F:1F90", true),
            Some(("::ffff:127.0.0.1".parse().unwrap(), 8080))
        );
        for bad in [
            "",
            "0100007F",
            "0100007F:",
            "0100007:0016",
            "0100007G:0016",
            "0100007F:10000",
        ] {
            assert_eq!(parse_endpoint(bad, false), None, "{bad}");
        }
        assert_eq!(parse_endpoint("0100007F:0016", true), None);
        assert_eq!(parse_endpoint("ää00007F:0016", false), None);
        assert_eq!(socket_inode("socket:[42]"), Some(42));
        assert_eq!(socket_inode("pipe:[42]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn finds_our_own_listeners_and_pid() {
        let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp_port = tcp.local_addr().unwrap().port();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let udp_port = udp.local_addr().unwrap().port();
        // A connected UDP socket is not listening.
        let connected = UdpSocket::bind("127.0.0.1:0").unwrap();
        connected.connect(("127.0.0.1", udp_port)).unwrap();
        let connected_port = connected.local_addr().unwrap().port();

        let ports = listening_ports().unwrap();
        let me = std::process::id();
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        let comm = comm.trim_end();

        let find = |proto: PortProto, port: u16| {
            ports
                .iter()
                .find(|p| p.proto == proto && p.port == port && p.address == "127.0.0.1")
        };
        let t = find(PortProto::Tcp, tcp_port).expect("our TCP listener");
        assert_eq!(t.pid, Some(me), "{t:?}");
        assert_eq!(t.process.as_deref(), Some(comm));
        let u = find(PortProto::Udp, udp_port).expect("our UDP socket");
        assert_eq!(u.pid, Some(me));
        assert!(find(PortProto::Udp, connected_port).is_none());
        drop((tcp, udp, connected));
    }
}
