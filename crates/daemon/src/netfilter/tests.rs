//! The netfilter tests: the plan's rules, validation, and the real table
//! in network namespaces, end to end.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::*;
use crate::privileged::netns::Netns;
use crate::privileged::{attach_to_bridge, SystemHost};
use nftables::schema::{NfCmd, NfListObject, NfObject, Nftables};
use nftables::stmt::Statement;

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

/// Its tap is `bgr-<name>`, its MAC `02:62:67:00:00:<last octet>`.
fn vm(name: &str, addr: &str, nat: bool, ports: Vec<PortMap>) -> VmNet {
    let ip = ip(addr);
    VmNet {
        vm_id: format!("id-{name}"),
        vm_name: name.into(),
        ip,
        tap: format!("bgr-{name}"),
        mac: format!("02:62:67:00:00:{:02x}", ip.octets()[3]),
        nat,
        ports,
    }
}

fn plan(bridge: &str, uplink: &str, vms: Vec<VmNet>) -> Plan {
    Plan {
        bridge: bridge.into(),
        subnet: (ip("10.77.0.0"), 24),
        gateway: ip("10.77.0.1"),
        vm_to_vm: false,
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

/// The sample's table in nft's own syntax: what [`desired`] must equal
/// once nft has parsed it (checked for real by [`sample_is_its_nft_text`]).
const SAMPLE_SCRIPT: &str = "\
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
		iifname \"br-banger\" oifname \"br-banger\" drop comment \"banger\"
	}
INPUT}
table bridge banger {
	chain from_taps {
		type filter hook prerouting priority filter; policy accept;
		iifname \"bgr-db\" ether saddr 02:62:67:00:00:03 ip saddr 10.77.0.3 accept comment \"vm=db\"
		iifname \"bgr-db\" ether saddr 02:62:67:00:00:03 arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp saddr ether 02:62:67:00:00:03 arp saddr ip 10.77.0.3 accept comment \"vm=db\"
		iifname \"bgr-web\" ether saddr 02:62:67:00:00:02 ip saddr 10.77.0.2 accept comment \"vm=web\"
		iifname \"bgr-web\" ether saddr 02:62:67:00:00:02 arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp saddr ether 02:62:67:00:00:02 arp saddr ip 10.77.0.2 accept comment \"vm=web\"
		iifname \"bgr-*\" drop comment \"banger\"
	}
}
";

/// `text` (an nft script declaring `table ip banger`) as nft itself
/// parses it: applied in a namespace of its own, listed back, read into
/// the model. So the expected rules are written the way people read them,
/// and nft is the only parser of that syntax.
fn parsed_by_nft(text: &str) -> Table {
    let ns = Netns::new("nfttext");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("table.nft");
    std::fs::write(&file, script(text)).unwrap();
    ns.run(|| {
        crate::privileged::testutil::run("nft", &["-f", file.to_str().unwrap()]);
        current(&SystemHost)
            .unwrap()
            .expect("the text declares table ip banger")
    })
}

/// The fixed rules alone: the table of a plan without VMs.
const FIXED_SCRIPT: &str = "\
table ip banger {
	chain prerouting {
		type nat hook prerouting priority dstnat; policy accept;
	}
	chain output {
		type nat hook output priority -100; policy accept;
	}
	chain postrouting {
		type nat hook postrouting priority srcnat; policy accept;
		oifname \"br-banger\" ip saddr 127.0.0.0/8 masquerade comment \"banger\"
	}
	chain forward {
		type filter hook forward priority filter; policy accept;
		ct state established,related accept comment \"banger\"
		iifname \"br-banger\" oifname != \"br-banger\" drop comment \"banger\"
		iifname \"br-banger\" oifname \"br-banger\" drop comment \"banger\"
	}
INPUT}
table bridge banger {
	chain from_taps {
		type filter hook prerouting priority filter; policy accept;
		iifname \"bgr-*\" drop comment \"banger\"
	}
}
";

/// The `input` chain, the same with or without VMs.
const INPUT: &str = "
	chain input {
		type filter hook input priority filter; policy accept;
		iifname \"br-banger\" ct state established,related accept comment \"banger\"
		iifname \"br-banger\" ip daddr 127.0.0.0/8 drop comment \"banger\"
		iifname \"br-banger\" ip daddr 10.77.0.1 udp dport 53 accept comment \"banger\"
		iifname \"br-banger\" ip daddr 10.77.0.1 tcp dport 53 accept comment \"banger\"
		iifname \"br-banger\" reject comment \"banger\"
	}
";

/// A script with the [`INPUT`] chain in its place.
fn script(text: &str) -> String {
    text.replace("INPUT}", &format!("{INPUT}}}"))
}

#[test]
fn table_is_deterministic() {
    let p = sample();
    let t = desired(&p).unwrap();
    // Order of VMs and ports does not matter.
    let mut shuffled = p.clone();
    shuffled.vms.reverse();
    shuffled.vms[1].ports.reverse();
    assert_eq!(desired(&shuffled).unwrap(), t);
    // A subnet given with host bits is normalised.
    let mut hostbits = p.clone();
    hostbits.subnet = (ip("10.77.0.1"), 24);
    assert_eq!(desired(&hostbits).unwrap(), t);
    // The same table, the same JSON, byte for byte.
    let json = |t: &Table| serde_json::to_string(&t.replace()).unwrap();
    assert_eq!(json(&desired(&shuffled).unwrap()), json(&t));

    // The transaction: make sure the table exists, delete it, declare it
    // again, its chains, its rules.
    let batch = t.replace();
    let kinds: Vec<String> = batch
        .objects
        .iter()
        .map(|o| match o {
            NfObject::CmdObject(NfCmd::Add(NfListObject::Table(_))) => "add table".into(),
            NfObject::CmdObject(NfCmd::Delete(NfListObject::Table(_))) => "delete table".into(),
            NfObject::CmdObject(NfCmd::Add(NfListObject::Chain(c))) => format!("chain {}", c.name),
            NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(r))) => format!("rule {}", r.chain),
            other => panic!("{other:?}"),
        })
        .collect();
    // Both tables, ip then bridge.
    let mut want: Vec<String> = [
        "add table",
        "delete table",
        "add table",
        "delete table",
        "add table",
        "add table",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for c in [
        "prerouting",
        "output",
        "postrouting",
        "forward",
        "input",
        "from_taps",
    ] {
        want.push(format!("chain {c}"));
    }
    for (c, n) in [
        ("prerouting", 2),
        ("output", 2),
        ("postrouting", 2),
        ("forward", 6),
        ("input", 5),
        ("from_taps", 5),
    ] {
        want.extend(std::iter::repeat_n(format!("rule {c}"), n));
    }
    assert_eq!(kinds, want);
    let comments: Vec<&str> = t
        .rules
        .iter()
        .map(|r| r.comment.as_deref().unwrap())
        .collect();
    assert_eq!(
        comments,
        [
            "vm=web", "vm=web", "vm=web", "vm=web", "vm=web", "banger", "banger", "vm=web",
            "vm=web", "vm=web", "banger", "banger", "banger", "banger", "banger", "banger",
            "banger", "vm=db", "vm=db", "vm=web", "vm=web", "banger"
        ]
    );
    assert_eq!(Table::remove().objects.len(), 4);
    // With VM-to-VM traffic allowed, only the br-to-br drop is gone.
    let mut open = p.clone();
    open.vm_to_vm = true;
    assert_eq!(desired(&open).unwrap().rules.len(), t.rules.len() - 1);
}

#[test]
fn sample_is_its_nft_text() {
    // Every rule, exactly: nft's reading of the text is the model's table.
    assert_eq!(parsed_by_nft(SAMPLE_SCRIPT), desired(&sample()).unwrap());
    assert_eq!(
        parsed_by_nft(FIXED_SCRIPT),
        desired(&plan("br-banger", "eth0", vec![])).unwrap()
    );
}

#[test]
fn equal_means_the_same_rules() {
    // nft prints flag lists in its own order and a one-flag list as the
    // flag: the model puts both in one form.
    let t = desired(&sample()).unwrap();
    let mut json = serde_json::to_value(t.replace()).unwrap();
    let text = json.to_string();
    assert!(text.contains(r#"["established","related"]"#), "{text}");
    let swapped = text.replace(
        r#"["established","related"]"#,
        r#"["related","established"]"#,
    );
    json = serde_json::from_str(&swapped).unwrap();
    let doc: Nftables<'static> = serde_json::from_value(json).unwrap();
    let listed: Vec<NfObject<'static>> = doc
        .objects
        .iter()
        .filter_map(|o| match o {
            NfObject::CmdObject(NfCmd::Add(NfListObject::Table(_))) => None,
            NfObject::CmdObject(NfCmd::Add(o)) => Some(NfObject::ListObject(o.clone())),
            _ => None,
        })
        .collect();
    let reread = Table::from_listing(Nftables {
        objects: listed.into(),
    });
    assert_eq!(reread, t);
    // A rule that differs is a different table.
    let mut other = sample();
    other.vms[0].ports[1].guest_port = 8081;
    assert_ne!(desired(&other).unwrap(), t);
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
    let masq_vm = |t: &Table| {
        t.rules.iter().any(|r| {
            r.comment.as_deref().is_some_and(|c| c.starts_with("vm="))
                && r.expr.iter().any(|s| matches!(s, Statement::Masquerade(_)))
        })
    };
    assert!(masq_vm(&desired(&sample()).unwrap()));
    assert!(!masq_vm(&desired(&p).unwrap()));

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
    // What the anti-spoofing rules rely on: a tap the fixed drop covers
    // and no wildcard, a well-formed MAC, a bridge address in the subnet.
    let mut p = sample();
    p.vms[0].tap = "tap-web".into();
    Refuses::check(&p, "bgr- and letters or digits");
    p.vms[0].tap = "bgr-*".into();
    Refuses::check(&p, "bgr- and letters or digits");
    let mut p = sample();
    p.bridge = "br*".into();
    Refuses::check(&p, "would match others");
    let mut p = sample();
    p.vms[0].mac = "02:62:67:00:00:0A".into();
    Refuses::check(&p, "lower case");
    let mut p = sample();
    p.gateway = ip("10.78.0.1");
    Refuses::check(&p, "host address of 10.77.0.0/24");
    let mut p = sample();
    p.gateway = ip("10.77.0.2");
    Refuses::check(&p, "the bridge's");
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
    let sample_text = parsed_by_nft(SAMPLE_SCRIPT);
    let fixed_text = parsed_by_nft(FIXED_SCRIPT);
    let ns = Netns::new("nft");
    let host = SystemHost;
    ns.run(|| {
        assert_eq!(current(&host).unwrap(), None);
        remove(&host).unwrap(); // missing is fine
        let p = sample();
        apply(&host, &p).unwrap();
        let got = current(&host).unwrap().unwrap();
        assert_eq!(got, sample_text);
        // What nft lists back is what we predicted.
        assert_eq!(got, desired(&p).unwrap());
        let listed = host.nft_list_table(FAMILY, TABLE).unwrap().unwrap();
        let chains: Vec<(String, String, i64, String)> = serde_json::to_value(&listed).unwrap()
            ["nftables"]
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
                chain("input", "input", 0),
            ]
        );

        // Twice: the same.
        apply(&host, &p).unwrap();
        assert_eq!(current(&host).unwrap().unwrap(), got);

        // No VMs: only the fixed rules remain.
        let empty = plan("br-banger", "eth0", vec![]);
        apply(&host, &empty).unwrap();
        let fixed = current(&host).unwrap().unwrap();
        assert_eq!(fixed, fixed_text);
        // postrouting 1, forward 3, input 5, from_taps 1.
        assert_eq!(fixed.rules.len(), 10);
        assert!(fixed
            .rules
            .iter()
            .all(|r| r.comment.as_deref() == Some("banger")));

        // A refused plan changes nothing.
        let mut bad = sample();
        bad.uplink = None;
        assert!(apply(&host, &bad).is_err());
        assert_eq!(current(&host).unwrap().unwrap(), fixed);

        // A chain added by hand is gone after the next apply: the table
        // is rebuilt, not patched. While it is there, the table read back
        // is not the one written.
        let mut stray = Table::new(Vec::new(), Vec::new());
        stray.chains.push(nftables::schema::Chain {
            family: FAMILY,
            table: TABLE.into(),
            name: "stray".into(),
            newname: None,
            handle: None,
            _type: None,
            hook: None,
            prio: None,
            dev: None,
            policy: None,
        });
        let add_stray = Nftables {
            objects: vec![
                NfObject::CmdObject(NfCmd::Add(NfListObject::Chain(stray.chains[0].clone()))),
                NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(nftables::schema::Rule {
                    family: FAMILY,
                    table: TABLE.into(),
                    chain: "stray".into(),
                    expr: vec![Statement::Accept(None)].into(),
                    handle: None,
                    index: None,
                    comment: None,
                }))),
            ]
            .into(),
        };
        host.nft_apply(&add_stray).unwrap();
        assert_ne!(current(&host).unwrap().unwrap(), fixed);
        apply(&host, &p).unwrap();
        assert_eq!(current(&host).unwrap().unwrap(), got);
        let listed = host.nft_list_table(FAMILY, TABLE).unwrap().unwrap();
        assert!(!serde_json::to_string(&listed).unwrap().contains("stray"));

        remove(&host).unwrap();
        assert_eq!(host.nft_list_table(FAMILY, TABLE).unwrap(), None);
        assert_eq!(host.nft_list_table(BRIDGE_FAMILY, TABLE).unwrap(), None);
        assert_eq!(current(&host).unwrap(), None);
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
/// [`ask`], retried for up to 10 s: for the controls, which run right after
/// a MAC or address change, while neighbour discovery and the bridge's
/// forwarding table settle.
fn ask_settled(addr: &str) -> std::io::Result<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = ask(addr);
        if r.is_ok() || std::time::Instant::now() > deadline {
            return r;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

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

/// Makes `bridge-nf-call-iptables` exist in this kernel (loading the
/// module if it is one), or fails saying why: the br_netfilter variant
/// never passes without checking anything.
fn require_br_netfilter(ns: &Netns, knob: &str) {
    if ns.run(|| std::path::Path::new(knob).exists()) {
        return;
    }
    let loaded = std::process::Command::new("modprobe")
        .arg("br_netfilter")
        .output();
    assert!(
        ns.run(|| std::path::Path::new(knob).exists()),
        "this test checks the rules with bridged IPv4 passing the IP hooks, which needs \
         br_netfilter: {knob} is missing and `modprobe br_netfilter` did not add it ({loaded:?})"
    );
}

/// Sends one raw Ethernet frame out of `ifname` (an AF_PACKET socket in
/// the calling thread's namespace): what a guest with root can put on its
/// wire, whatever its own stack would do.
fn send_frame(ifname: &str, frame: &[u8]) {
    let name = std::ffi::CString::new(ifname).unwrap();
    // SAFETY: plain syscalls on a socket owned here; the sockaddr is
    // initialised and its size passed.
    unsafe {
        let index = libc::if_nametoindex(name.as_ptr());
        assert!(index != 0, "no interface {ifname}");
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(
            fd >= 0,
            "AF_PACKET socket: {}",
            std::io::Error::last_os_error()
        );
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = index as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        let n = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(n, frame.len() as isize, "sendto: {err}");
    }
}

fn mac_bytes(mac: &str) -> [u8; 6] {
    let v: Vec<u8> = mac
        .split(':')
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect();
    v.try_into().unwrap()
}

/// An ARP request, broadcast: "who has `target`? tell `sender_ip` at
/// `sender_mac`", which makes the target's host (re)learn `sender_ip` as
/// `sender_mac`.
fn arp_request(sender_mac: &str, sender_ip: &str, target: &str) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend(mac_bytes(sender_mac));
    f.extend([0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
    f.extend(mac_bytes(sender_mac));
    f.extend(ip(sender_ip).octets());
    f.extend([0; 6]);
    f.extend(ip(target).octets());
    f.resize(60, 0);
    f
}

/// The MAC the host's neighbour table holds for `addr` on `dev`, if any.
fn neighbour(ns: &Netns, addr: &str, dev: &str) -> Option<String> {
    let out = ns.ip(&["neigh", "show", addr, "dev", dev]);
    let mut words = out.split_whitespace();
    words.find(|w| *w == "lladdr")?;
    words.next().map(str::to_string)
}

/// Counts UDP datagrams arriving on `addr` in namespace `ns` for `wait`,
/// with their sources.
fn udp_received(ns: &Netns, addr: &str, wait: Duration, send: impl FnOnce()) -> Vec<String> {
    let sock = ns.run(|| std::net::UdpSocket::bind(addr).unwrap());
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    send();
    let mut seen = Vec::new();
    let until = Instant::now() + wait;
    let mut buf = [0u8; 64];
    while Instant::now() < until {
        if let Ok((_, from)) = sock.recv_from(&mut buf) {
            seen.push(from.ip().to_string());
        }
    }
    seen
}

/// From inside `ns`: one UDP datagram from `from` to `to`.
fn udp_send(ns: &Netns, from: &str, to: &str) {
    ns.run(|| {
        let s = std::net::UdpSocket::bind(from).unwrap();
        for _ in 0..3 {
            let _ = s.send_to(b"leak", to);
        }
    });
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
    if br_netfilter {
        require_br_netfilter(&host_ns, knob);
    }
    if host_ns.run(|| std::path::Path::new(knob).exists()) {
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
    // Two guests on isolated bridge ports (veths named like taps stand in
    // for them), with the MACs the plan gives them.
    let (vm_a, vm_b) = (
        vm("a", "10.77.0.2", false, vec![]),
        vm("b", "10.77.0.3", false, vec![]),
    );
    for (g, v) in [(&ga, &vm_a), (&gb, &vm_b)] {
        let veth = v.tap.as_str();
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
        g.ip(&["link", "set", "eth0", "address", &v.mac]);
        g.ip(&["addr", "add", &format!("{}/24", v.ip), "dev", "eth0"]);
        g.ip(&["link", "set", "eth0", "up"]);
        g.ip(&["route", "add", "default", "via", "10.77.0.1"]);
    }
    let uplink = host_ns.run(|| host.default_route_dev().unwrap());
    assert_eq!(uplink.as_deref(), Some("up-e"));

    let _web = Server::echo(&ga, "0.0.0.0:8080");
    let _other = Server::echo(&gb, "0.0.0.0:8080");
    let _a_says = Server::start(&ga, "0.0.0.0:8081", |_, _| b"a".to_vec());
    let _b_says = Server::start(&gb, "0.0.0.0:8081", |_, _| b"b".to_vec());
    let _on_host = Server::echo(&host_ns, "10.77.0.1:7000");
    // Stands in for banger's DNS (its tcp side) on the bridge address.
    let _dns = Server::echo(&host_ns, "10.77.0.1:53");
    // A host service that listens on loopback only.
    let _loopback_only = Server::echo(&host_ns, "127.0.0.1:7100");
    let _outside = Server::whoami(&out, "198.51.100.2:9000");

    let apply_with = |a_nat: bool, a_ports: Vec<PortMap>, vm_to_vm: bool| {
        let mut p = plan(
            "br-e",
            "up-e",
            vec![
                VmNet {
                    nat: a_nat,
                    ports: a_ports,
                    ..vm_a.clone()
                },
                vm_b.clone(),
            ],
        );
        p.vm_to_vm = vm_to_vm;
        host_ns.run(|| apply(&host, &p).unwrap());
    };
    let apply_plan = |a_nat: bool, a_ports: Vec<PortMap>| apply_with(a_nat, a_ports, false);
    let without_tables = |check: &dyn Fn()| {
        host_ns.run(|| remove(&host).unwrap());
        check();
    };

    // Published port: from the host by loopback and by the bridge
    // address, and from outside by the uplink address. Guests are not
    // DNATed: they get the host's own port, which refuses them.
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

    // The host: guests reach DNS on the bridge address and no other host
    // port there (refused at once, not a hang).
    for g in [&ga, &gb] {
        g.run(|| {
            assert_eq!(ask("10.77.0.1:53").unwrap(), "ping");
            let t = Instant::now();
            let e = ask("10.77.0.1:7000").unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
            assert!(t.elapsed() < Duration::from_secs(1));
        });
    }

    // Isolation: the guests do not reach each other; with B's port no
    // longer isolated (and VM-to-VM allowed in the plan, as
    // allow_vm_to_vm does both) they do (so it was the flag that stopped
    // them).
    ga.run(|| {
        let t = Instant::now();
        assert!(ask("10.77.0.3:8080").is_err(), "guest A reached guest B");
        assert!(t.elapsed() < Duration::from_secs(5));
    });
    gb.run(|| assert!(ask("10.77.0.2:8080").is_err(), "guest B reached guest A"));
    apply_with(false, vec![], true);
    host_ns.run(|| attach_to_bridge("bgr-b", "br-e", false).unwrap());
    ga.run(|| assert_eq!(ask("10.77.0.3:8080").unwrap(), "ping"));
    host_ns.run(|| attach_to_bridge("bgr-b", "br-e", true).unwrap());
    apply_plan(false, vec![]);

    // Without NAT a guest reaches only the host...
    ga.run(|| assert!(ask("198.51.100.2:9000").is_err(), "no-NAT guest got out"));
    // ...with NAT it gets out, masqueraded behind the uplink address,
    // while the other guest (no NAT) still does not.
    apply_plan(true, vec![]);
    ga.run(|| assert_eq!(ask("198.51.100.2:9000").unwrap(), "198.51.100.1"));
    gb.run(|| assert!(ask("198.51.100.2:9000").is_err(), "no-NAT guest got out"));

    // ---- Attacks by a guest, each with its control: the same attack with
    // banger's tables gone succeeds, so the tables are what stop it. ----

    // 1. Loopback through the gateway: B routes 127.0.0.1 to the bridge
    // (as a root guest can), where route_localnet would deliver it to a
    // service listening on the host's loopback only.
    gb.ip(&["rule", "add", "pref", "100", "lookup", "local"]);
    gb.ip(&["rule", "del", "pref", "0"]);
    gb.ip(&[
        "rule",
        "add",
        "pref",
        "10",
        "to",
        "127.0.0.1/32",
        "lookup",
        "100",
    ]);
    gb.ip(&[
        "route",
        "add",
        "127.0.0.1/32",
        "via",
        "10.77.0.1",
        "dev",
        "eth0",
        "src",
        "10.77.0.3",
        "table",
        "100",
    ]);
    gb.run(|| {
        std::fs::write("/proc/sys/net/ipv4/conf/eth0/route_localnet", "1").unwrap();
        std::fs::write("/proc/sys/net/ipv4/conf/all/route_localnet", "1").unwrap();
    });
    let loopback_attack = || gb.run(|| ask("127.0.0.1:7100"));
    assert!(
        loopback_attack().is_err(),
        "a guest reached the host's loopback"
    );
    without_tables(&|| {
        assert_eq!(
            loopback_attack().expect("control: with no tables the guest reaches 127.0.0.1"),
            "ping"
        )
    });
    apply_plan(true, vec![]);
    gb.ip(&["rule", "del", "pref", "10"]);

    // 2. Another host port on the bridge address (above) and a host
    // address beyond it: the uplink address is the host's too.
    gb.run(|| assert!(ask("198.51.100.1:7000").is_err()));
    without_tables(&|| gb.run(|| assert_eq!(ask_settled("10.77.0.1:7000").unwrap(), "ping")));
    apply_plan(true, vec![]);

    // 3. B (no NAT) forges A's source (A has NAT) to get out.
    // `ip -br link`: name, state, MAC, flags.
    let brief = host_ns.ip(&["-br", "link", "show", "br-e"]);
    let bridge_mac = brief.split_whitespace().nth(2).unwrap().to_string();
    gb.ip(&["addr", "add", "10.77.0.2/32", "dev", "eth0"]);
    gb.ip(&[
        "neigh",
        "replace",
        "10.77.0.1",
        "lladdr",
        &bridge_mac,
        "dev",
        "eth0",
        "nud",
        "permanent",
    ]);
    let forged = || {
        udp_received(
            &out,
            "198.51.100.2:9001",
            Duration::from_millis(500),
            || udp_send(&gb, "10.77.0.2:0", "198.51.100.2:9001"),
        )
    };
    assert_eq!(forged(), Vec::<String>::new(), "a forged source got out");
    without_tables(&|| {
        assert!(
            !forged().is_empty(),
            "control: the forged datagram gets out"
        )
    });
    apply_plan(true, vec![]);

    // 4. ARP: B claims A's address with its own MAC. The host keeps A's
    // MAC and its connections to A still reach A.
    host_ns.run(|| assert_eq!(ask("10.77.0.2:8081").unwrap(), "a"));
    let spoof = || {
        gb.run(|| {
            for _ in 0..3 {
                send_frame("eth0", &arp_request(&vm_b.mac, "10.77.0.2", "10.77.0.1"));
            }
        });
        std::thread::sleep(Duration::from_millis(200));
    };
    spoof();
    assert_eq!(
        neighbour(&host_ns, "10.77.0.2", "br-e").as_deref(),
        Some(vm_a.mac.as_str()),
        "the host's neighbour entry for A was taken over"
    );
    host_ns.run(|| assert_eq!(ask("10.77.0.2:8081").unwrap(), "a"));
    without_tables(&|| {
        spoof();
        assert_eq!(
            neighbour(&host_ns, "10.77.0.2", "br-e").as_deref(),
            Some(vm_b.mac.as_str()),
            "control: with no tables the ARP spoof takes A's address"
        );
    });
    host_ns.ip(&["neigh", "flush", "dev", "br-e"]);
    gb.ip(&["addr", "del", "10.77.0.2/32", "dev", "eth0"]);
    apply_plan(true, vec![]);
    host_ns.run(|| assert_eq!(ask("10.77.0.2:8081").unwrap(), "a"));

    // 5. B takes A's MAC: nothing it sends passes; with its own back it
    // reaches DNS again.
    gb.ip(&["link", "set", "eth0", "address", &vm_a.mac]);
    gb.ip(&["neigh", "flush", "dev", "eth0"]);
    gb.run(|| assert!(ask("10.77.0.1:53").is_err(), "a forged MAC passed"));
    without_tables(&|| gb.run(|| assert_eq!(ask_settled("10.77.0.1:53").unwrap(), "ping")));
    apply_plan(true, vec![]);
    gb.ip(&["link", "set", "eth0", "address", &vm_b.mac]);
    gb.ip(&["neigh", "flush", "dev", "eth0"]);
    host_ns.ip(&["neigh", "flush", "dev", "br-e"]);
    gb.run(|| assert_eq!(ask("10.77.0.1:53").unwrap(), "ping"));

    // 6. IPv6 from a tap: a host service on the bridge's IPv6 address is
    // out of reach.
    host_ns.ip(&["-6", "addr", "add", "fd77::1/64", "dev", "br-e", "nodad"]);
    ga.ip(&["-6", "addr", "add", "fd77::2/64", "dev", "eth0", "nodad"]);
    let _v6 = Server::echo(&host_ns, "[fd77::1]:7600");
    ga.run(|| assert!(ask("[fd77::1]:7600").is_err(), "IPv6 from a tap passed"));
    without_tables(&|| ga.run(|| assert_eq!(ask_settled("[fd77::1]:7600").unwrap(), "ping")));
    apply_plan(true, vec![]);

    // 7. A reaches B through the gateway (routed, not switched): dropped
    // when VM-to-VM traffic is not allowed.
    ga.ip(&["route", "add", "10.77.0.3/32", "via", "10.77.0.1"]);
    gb.ip(&["route", "add", "10.77.0.2/32", "via", "10.77.0.1"]);
    ga.run(|| {
        assert!(
            ask("10.77.0.3:8081").is_err(),
            "A reached B via the gateway"
        )
    });
    without_tables(&|| ga.run(|| assert_eq!(ask_settled("10.77.0.3:8081").unwrap(), "b")));
    apply_plan(true, vec![]);

    // Control: with banger's table gone, B is routed out unmasqueraded,
    // so the drop rule was what kept it in.
    host_ns.run(|| remove(&host).unwrap());
    gb.run(|| assert_eq!(ask("198.51.100.2:9000").unwrap(), "10.77.0.3"));
}
