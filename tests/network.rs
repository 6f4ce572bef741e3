//! Host networking, for real, inside network namespaces the tests create:
//! bridge, TAP, addresses, nftables NAT and port rules, port publishing end
//! to end, DNS for `<name>.vm`, reconciliation after a daemon crash.
//! Every daemon here runs in its test's own namespace (see common::Home), so
//! nothing touches the machine's network.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{require_root, Home};
use serde_json::Value;

const GW: &str = "172.16.213.1";

fn ip_json(h: &mut Home, args: &[&str]) -> Value {
    let out = h.in_netns("ip", args);
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn link_exists(h: &mut Home, dev: &str) -> bool {
    h.in_netns("ip", &["link", "show", dev]).status.success()
}

/// The rules of banger's table as (chain, rule text) pairs, from `nft -j`.
fn nft_rules(h: &mut Home) -> Vec<(String, String)> {
    let out = h.in_netns("nft", &["-j", "list", "table", "ip", "banger"]);
    if !out.status.success() {
        return Vec::new();
    }
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("rule"))
        .map(|r| {
            (
                r["chain"].as_str().unwrap().to_string(),
                r["expr"].to_string(),
            )
        })
        .collect()
}

fn rules_mentioning(h: &mut Home, what: &str) -> usize {
    nft_rules(h)
        .iter()
        .filter(|(_, e)| e.contains(what))
        .count()
}

/// GET /vm/config from the VM's Firecracker API socket (reads exactly
/// Content-Length bytes: Firecracker keeps the connection open).
fn firecracker_config(api_socket: &str) -> Value {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(api_socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /vm/config HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s);
    let mut len = 0usize;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap();
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).unwrap();
    serde_json::from_slice(&body).unwrap()
}

#[test]
fn bridge_tap_address_rules_and_firecracker_config() {
    require_root();
    let mut h = Home::new();
    let ns = h.netns();
    let _uplink = Outside::new(&ns);
    h.start_daemon();
    common::stub_image(&h);
    let vm = h.json(&[
        "vm",
        "create",
        "--name",
        "n1",
        "--nat",
        "-p",
        "18080:8080",
        "--memory",
        "128M",
        "--disk-size",
        "128M",
    ])["vm"]
        .clone();
    let net = &vm["network"];
    assert_eq!(net["ip"], "172.16.213.2");
    assert_eq!(net["gateway"], GW);
    assert_eq!(net["dns_name"], "n1.vm");
    let tap = net["tap"].as_str().unwrap().to_string();
    assert!(tap.starts_with("bgr-") && tap.len() <= 15);
    let mac = net["mac"].as_str().unwrap().to_string();
    // The tap is pinned to the VM's MAC and address (IPv4 and ARP sender),
    // and banger's taps pass nothing else.
    let out = h.in_netns("nft", &["list", "table", "bridge", "banger"]);
    let bridge_rules = String::from_utf8_lossy(&out.stdout).to_string();
    let pinned = |needle: &str| {
        bridge_rules
            .lines()
            .filter(|l| l.contains(&format!("iifname \"{tap}\"")) && l.contains(needle))
            .count()
    };
    assert_eq!(
        pinned(&format!("ether saddr {mac} ip saddr 172.16.213.2 accept")),
        1,
        "{bridge_rules}"
    );
    assert_eq!(
        pinned(&format!(
            "arp saddr ether {mac} arp saddr ip 172.16.213.2 accept"
        )),
        1,
        "{bridge_rules}"
    );
    assert!(
        bridge_rules.contains("iifname \"bgr-*\" drop"),
        "{bridge_rules}"
    );

    // The bridge: up, holding the gateway address.
    let addrs = ip_json(&mut h, &["-j", "addr", "show", "br-banger"]);
    let a = &addrs[0];
    assert!(
        a["flags"].as_array().unwrap().iter().any(|f| f == "UP"),
        "{a}"
    );
    let inet: Vec<String> = a["addr_info"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["family"] == "inet")
        .map(|i| format!("{}/{}", i["local"].as_str().unwrap(), i["prefixlen"]))
        .collect();
    assert_eq!(inet, ["172.16.213.1/24"]);
    // The tap: attached to the bridge, isolated from other VMs, up.
    let l = &ip_json(&mut h, &["-j", "-d", "link", "show", &tap])[0];
    assert_eq!(l["master"], "br-banger", "{l}");
    assert_eq!(l["linkinfo"]["info_slave_data"]["isolated"], true, "{l}");

    // Firecracker got the tap, the MAC and the address on the command line.
    let cfg = firecracker_config(vm["api_socket"].as_str().unwrap());
    let ifaces = cfg["network-interfaces"].as_array().unwrap();
    assert_eq!(ifaces.len(), 1);
    assert_eq!(ifaces[0]["host_dev_name"], tap.as_str());
    assert_eq!(ifaces[0]["guest_mac"], mac.as_str());
    let args = cfg["boot-source"]["boot_args"].as_str().unwrap();
    assert!(
        args.contains("ip=172.16.213.2::172.16.213.1:255.255.255.0:n1:eth0:off:172.16.213.1"),
        "{args}"
    );

    // nftables: NAT for its address, the published port in both DNAT paths.
    assert!(rules_mentioning(&mut h, "masquerade") >= 1);
    let rules = nft_rules(&mut h);
    let dnat: Vec<&(String, String)> = rules
        .iter()
        .filter(|(_, e)| e.contains("dnat") && e.contains("18080"))
        .collect();
    let chains: Vec<&str> = dnat.iter().map(|(c, _)| c.as_str()).collect();
    assert!(
        chains.contains(&"prerouting") && chains.contains(&"output"),
        "{rules:?}"
    );
    assert!(dnat
        .iter()
        .all(|(_, e)| e.contains("172.16.213.2") && e.contains("8080")));
    let vm_rules = rules_mentioning(&mut h, "172.16.213.2");

    // Stop: the tap and the VM's rules go; start: they come back, the same.
    h.ok(&["vm", "stop", "n1", "--timeout", "0"]);
    assert!(!link_exists(&mut h, &tap));
    assert_eq!(
        rules_mentioning(&mut h, "172.16.213.2"),
        0,
        "{:?}",
        nft_rules(&mut h)
    );
    h.ok(&["vm", "start", "n1"]);
    assert!(link_exists(&mut h, &tap));
    assert_eq!(rules_mentioning(&mut h, "172.16.213.2"), vm_rules);

    // NAT off while running: the masquerade rule goes, the ports stay.
    h.ok(&["vm", "set", "n1", "--nat", "off"]);
    let after: Vec<(String, String)> = nft_rules(&mut h)
        .into_iter()
        .filter(|(_, e)| e.contains("172.16.213.2"))
        .collect();
    assert!(
        after.iter().all(|(_, e)| !e.contains("masquerade")),
        "{after:?}"
    );
    assert!(after.iter().any(|(_, e)| e.contains("dnat")));

    // Delete: everything of the VM is gone and its address is free again.
    h.ok(&["vm", "delete", "-f", "n1"]);
    assert!(!link_exists(&mut h, &tap));
    assert_eq!(rules_mentioning(&mut h, "172.16.213.2"), 0);
    let v = h.json(&[
        "vm",
        "create",
        "--name",
        "n2",
        "--no-start",
        "--disk-size",
        "128M",
    ]);
    assert_eq!(
        v["vm"]["network"]["ip"], "172.16.213.2",
        "address reused after delete"
    );
    h.ok(&["vm", "delete", "n2"]);
    common::assert_no_vm_leftovers(&h);

    // Uninstall refuses while VMs run, then removes all banger added: the
    // table, the bridge (and any taps); it stops the daemon.
    h.ok(&[
        "vm",
        "create",
        "--name",
        "n3",
        "--memory",
        "128M",
        "--disk-size",
        "128M",
    ]);
    let units = h.path().join("units");
    let uninstall = |h: &mut Home| {
        let ns = h.netns();
        Command::new("ip")
            .args([
                "netns",
                "exec",
                &ns,
                common::BANGER,
                "system",
                "uninstall",
                "--unit-dir",
                units.to_str().unwrap(),
            ])
            .env("BANGER_HOME", h.path())
            .output()
            .unwrap()
    };
    let out = uninstall(&mut h);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("n3"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    h.ok(&["vm", "delete", "-f", "n3"]);
    let out = uninstall(&mut h);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for family in ["ip", "bridge"] {
        assert!(
            !h.in_netns("nft", &["list", "table", family, "banger"])
                .status
                .success(),
            "table {family} banger removed"
        );
    }
    assert!(!link_exists(&mut h, "br-banger"), "bridge removed");
    common::eventually(20, "the daemon stops", || {
        (!h.socket().exists()).then_some(())
    });
}

/// A process inside a namespace, killed (by pid) when dropped.
struct NsProc(Child);

impl Drop for NsProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn echo_server(ns: &str, port: u16) -> NsProc {
    let code = format!(
        "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
         s.bind(('0.0.0.0',{port}));s.listen(8)\nprint('ready',flush=True)\n\
         while True:\n c,_=s.accept()\n d=c.recv(100)\n c.sendall(b'echo:'+d)\n c.close()\n"
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &code])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::BufRead;
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    NsProc(child)
}

/// Connects from inside `ns` to addr:port; the echo, or None on failure.
fn echo_client(ns: &str, addr: &str, port: u16) -> Option<String> {
    let code = format!(
        "import socket\ns=socket.create_connection(('{addr}',{port}),timeout=2)\ns.sendall(b'hi')\nprint(s.recv(100).decode())\n"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "python3", "-c", &code])
        .output()
        .unwrap();
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Stands in for a guest: a namespace whose veth is on the bridge with the
/// VM's address, removed on drop.
struct FakeGuest {
    ns: String,
}

impl FakeGuest {
    fn new(host_ns: &str, ip: &str) -> FakeGuest {
        let ns = format!("banger-g-{}", &banger_core::ids::new_id()[..8]);
        let host_end = format!("vg{}", &ns[9..15]);
        let run = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        run(&["netns", "add", &ns]);
        run(&[
            "-n", host_ns, "link", "add", &host_end, "type", "veth", "peer", "name", "eth0",
            "netns", &ns,
        ]);
        run(&[
            "-n",
            host_ns,
            "link",
            "set",
            &host_end,
            "master",
            "br-banger",
            "up",
        ]);
        run(&["-n", &ns, "link", "set", "lo", "up"]);
        run(&["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        run(&["-n", &ns, "link", "set", "eth0", "up"]);
        run(&["-n", &ns, "route", "add", "default", "via", GW]);
        FakeGuest { ns }
    }
}

impl Drop for FakeGuest {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

#[test]
fn published_ports_reach_the_guest_and_stop_when_removed() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    common::stub_image(&h);
    let vm = h.json(&[
        "vm",
        "create",
        "--name",
        "web",
        "-p",
        "18080:8080",
        "--memory",
        "128M",
        "--disk-size",
        "128M",
    ])["vm"]
        .clone();
    let ip = vm["network"]["ip"].as_str().unwrap().to_string();
    let ns = h.netns();
    // The stub guest has no network stack: a namespace takes its address.
    let guest = FakeGuest::new(&ns, &ip);
    let _server = echo_server(&guest.ns, 8080);

    // From the host (its namespace): localhost, and the bridge address.
    assert_eq!(
        echo_client(&ns, "127.0.0.1", 18080).as_deref(),
        Some("echo:hi")
    );
    assert_eq!(echo_client(&ns, GW, 18080).as_deref(), Some("echo:hi"));

    // A clashing port is refused clearly.
    let e = h.fails(&["vm", "port", "add", "web", "18080:9090"]);
    assert!(e.contains("already exists") || e.contains("in use"), "{e}");

    h.ok(&["vm", "port", "rm", "web", "18080"]);
    assert_eq!(
        echo_client(&ns, "127.0.0.1", 18080),
        None,
        "unpublished port still reaches the guest"
    );
    let ports = h.json(&["vm", "port", "add", "web", "127.0.0.1:18081:8080"]);
    assert_eq!(ports.as_array().unwrap().len(), 1);
    assert_eq!(
        echo_client(&ns, "127.0.0.1", 18081).as_deref(),
        Some("echo:hi")
    );
    assert_eq!(h.json(&["vm", "port", "ls", "web"])[0]["host_port"], 18081);
    // A host process that starts listening on a published port is not
    // shadowed: the next sync (here: another port added) leaves that
    // mapping out of the table; once the process is gone it returns.
    h.ok(&["vm", "port", "add", "web", "18083:8080"]);
    assert!(rules_mentioning(&mut h, "18083") > 0);
    let host_srv = echo_server(&ns, 18083);
    h.ok(&["vm", "port", "add", "web", "18084:8080"]);
    assert_eq!(
        rules_mentioning(&mut h, "18083"),
        0,
        "{:?}",
        nft_rules(&mut h)
    );
    assert!(rules_mentioning(&mut h, "18084") > 0);
    drop(host_srv);
    h.ok(&["vm", "port", "rm", "web", "18084"]);
    assert!(rules_mentioning(&mut h, "18083") > 0, "the port returns");
    // Root's VM may publish a privileged port.
    h.ok(&["vm", "port", "add", "web", "127.0.0.1:81:8080"]);
    assert_eq!(
        echo_client(&ns, "127.0.0.1", 81).as_deref(),
        Some("echo:hi")
    );
    h.ok(&["vm", "delete", "-f", "web"]);
    assert_eq!(echo_client(&ns, "127.0.0.1", 18081), None);
}

/// An "outside" namespace behind an uplink veth that carries the host
/// namespace's default route (what NAT masquerades out of); removed on drop.
struct Outside {
    ns: String,
}

impl Outside {
    fn new(host_ns: &str) -> Outside {
        let ns = format!("banger-o-{}", &banger_core::ids::new_id()[..8]);
        let run = |args: &[&str]| {
            assert!(
                Command::new("ip").args(args).status().unwrap().success(),
                "ip {args:?}"
            )
        };
        run(&["netns", "add", &ns]);
        let me = Outside { ns: ns.clone() };
        run(&[
            "-n", host_ns, "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ]);
        run(&["-n", host_ns, "addr", "add", "198.18.0.1/24", "dev", "up0"]);
        run(&["-n", host_ns, "link", "set", "up0", "up"]);
        run(&[
            "-n",
            host_ns,
            "route",
            "add",
            "default",
            "via",
            "198.18.0.2",
        ]);
        run(&["-n", &ns, "addr", "add", "198.18.0.2/24", "dev", "eth0"]);
        run(&["-n", &ns, "link", "set", "eth0", "up"]);
        run(&["-n", &ns, "link", "set", "lo", "up"]);
        me
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

#[test]
fn guests_reach_only_the_host_without_nat() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    common::stub_image(&h);
    let ns = h.netns();
    let uplink = Outside::new(&ns);
    let outside = uplink.ns.clone();
    let _server = echo_server(&outside, 7000);

    let vm = h.json(&[
        "vm",
        "create",
        "--name",
        "iso",
        "--memory",
        "128M",
        "--disk-size",
        "128M",
    ])["vm"]
        .clone();
    let guest = FakeGuest::new(&ns, vm["network"]["ip"].as_str().unwrap());
    assert_eq!(
        echo_client(&guest.ns, "198.18.0.2", 7000),
        None,
        "no NAT: the outside is unreachable"
    );
    // The host itself only on what banger offers a guest: DNS on the
    // bridge address. Another service there, or one on the host's
    // loopback reached through the gateway, is not.
    let host_srv = echo_server(&ns, 7001);
    assert_eq!(
        echo_client(&guest.ns, GW, 7001),
        None,
        "a guest reached a host service other than DNS"
    );
    drop(host_srv);
    let ans = dig(&guest.ns, GW, "53", "iso.vm", "A");
    assert!(ans.contains("status: NOERROR"), "DNS on the bridge: {ans}");
    h.ok(&["vm", "set", "iso", "--nat", "on"]);
    assert_eq!(
        echo_client(&guest.ns, "198.18.0.2", 7000).as_deref(),
        Some("echo:hi"),
        "NAT on: outside reachable"
    );
    h.ok(&["vm", "delete", "-f", "iso"]);
}

#[test]
fn rules_match_the_store_after_a_daemon_crash() {
    require_root();
    let mut h = Home::new();
    let ns = h.netns();
    let _uplink = Outside::new(&ns);
    h.start_daemon();
    common::stub_image(&h);
    let a = h.json(&[
        "vm",
        "create",
        "--name",
        "ra",
        "--nat",
        "-p",
        "18090:80",
        "--memory",
        "128M",
        "--disk-size",
        "128M",
    ])["vm"]
        .clone();
    let b = h.json(&[
        "vm",
        "create",
        "--name",
        "rb",
        "--nat",
        "--memory",
        "128M",
        "--disk-size",
        "128M",
    ])["vm"]
        .clone();
    let (ip_a, ip_b) = (
        a["network"]["ip"].as_str().unwrap().to_string(),
        b["network"]["ip"].as_str().unwrap().to_string(),
    );
    let before = nft_rules(&mut h);
    h.kill_daemon();
    // A's VMM dies while no daemon watches.
    let pid_a = a["pid"].as_i64().unwrap() as i32;
    common::kill(pid_a, libc::SIGKILL);
    common::wait_gone(pid_a);
    h.start_daemon();
    assert_eq!(h.json(&["vm", "show", "ra"])["state"], "stopped");
    assert_eq!(
        rules_mentioning(&mut h, &ip_a),
        0,
        "dead VM's rules are gone"
    );
    assert!(
        rules_mentioning(&mut h, &ip_b) > 0,
        "live VM's rules are kept"
    );
    assert!(
        !link_exists(&mut h, a["network"]["tap"].as_str().unwrap()),
        "dead VM's tap is gone"
    );
    assert!(link_exists(&mut h, b["network"]["tap"].as_str().unwrap()));
    // Restarting again changes nothing: the rule set is exact and idempotent.
    let now = nft_rules(&mut h);
    h.kill_daemon();
    h.start_daemon();
    assert_eq!(nft_rules(&mut h), now);
    // Published ports survive restarts in the store: A's returns with A.
    h.ok(&["vm", "start", "ra"]);
    let mut expected = before.clone();
    expected.sort();
    let mut again = nft_rules(&mut h);
    again.sort();
    assert_eq!(
        again, expected,
        "both VMs running again: the same rules as before the crash"
    );
    h.ok(&["vm", "delete", "-f", "ra", "rb"]);
    common::assert_no_vm_leftovers(&h);
}

fn dig(ns: &str, server: &str, port: &str, name: &str, qtype: &str) -> String {
    dig_with(ns, server, port, name, qtype, false)
}

/// `dig` from inside `ns` (over TCP with `tcp`); fails the test when dig is
/// missing (scripts/test.sh installs bind9-dnsutils).
fn dig_with(ns: &str, server: &str, port: &str, name: &str, qtype: &str, tcp: bool) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "dig", "+time=2", "+tries=1"])
        .args(tcp.then_some("+tcp"))
        .args([&format!("@{server}"), "-p", port, name, qtype])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("No such file"),
        "dig is missing (apt-get install bind9-dnsutils): {out:?}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn dns_answers_vm_names_on_loopback_and_the_bridge() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    common::stub_image(&h);
    h.ok(&[
        "vm",
        "create",
        "--name",
        "named",
        "--memory",
        "128M",
        "--disk-size",
        "128M",
    ]);
    let st = h.json(&["daemon", "status"]);
    let lo = st["dns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .find(|a| a.starts_with("127.0.0.1:"))
        .unwrap()
        .to_string();
    let (server, port) = lo.split_once(':').unwrap();
    let ns = h.netns();
    let ans = dig(&ns, server, port, "named.vm", "A");
    assert!(
        ans.contains("status: NOERROR") && ans.contains("172.16.213.2"),
        "{ans}"
    );
    let ans = dig(&ns, server, port, "nobody.vm", "A");
    assert!(ans.contains("status: NXDOMAIN"), "{ans}");
    // Malformed packets do not take it down.
    let code = format!(
        "import socket,os\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n\
         for p in [b'',b'\\x00',os.urandom(512),b'\\x12\\x34\\x01\\x00\\x00\\x32'+b'\\x00'*6,b'\\x00\\x01\\x01\\x00\\x00\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\xc0\\x0c']:\n s.sendto(p,('{server}',{port}))\n"
    );
    assert!(Command::new("ip")
        .args(["netns", "exec", &ns, "python3", "-c", &code])
        .status()
        .unwrap()
        .success());
    let ans = dig(&ns, server, port, "named.vm", "A");
    assert!(
        ans.contains("172.16.213.2"),
        "still answering after garbage: {ans}"
    );
    // Guests ask the gateway (the bridge address, port 53).
    let guest = FakeGuest::new(&ns, "172.16.213.50");
    let ans = dig(&guest.ns, GW, "53", "named.vm", "A");
    assert!(ans.contains("172.16.213.2"), "{ans}");
    // Only `.vm`: a recursive question is refused, over udp and tcp, with
    // no recursion offered and nothing answered (no amplification).
    for tcp in [false, true] {
        let ans = dig_with(&guest.ns, GW, "53", "example.com", "ANY", tcp);
        assert!(ans.contains("status: REFUSED"), "{ans}");
        assert!(ans.contains("ANSWER: 0,"), "{ans}");
        let flags = ans.lines().find(|l| l.contains(";; flags:")).unwrap_or("");
        assert!(!flags.contains(" ra"), "recursion available: {ans}");
    }
    drop(guest);
    h.ok(&["vm", "delete", "-f", "named"]);
    let ans = dig(&ns, server, port, "named.vm", "A");
    assert!(
        ans.contains("status: NXDOMAIN"),
        "deleted VM no longer resolves: {ans}"
    );
}

#[test]
fn address_exhaustion_is_clear_and_leaves_nothing() {
    require_root();
    let mut h = Home::new();
    // Home's config ends in its [network] table: this key joins it.
    h.config("bridge_cidr = \"10.77.0.0/30\"");
    h.start_daemon();
    common::stub_image(&h);
    let v = h.json(&[
        "vm",
        "create",
        "--name",
        "only",
        "--memory",
        "128M",
        "--disk-size",
        "128M",
    ]);
    assert_eq!(v["vm"]["network"]["ip"], "10.77.0.2");
    let e = h.fails(&[
        "vm",
        "create",
        "--name",
        "more",
        "--memory",
        "128M",
        "--disk-size",
        "128M",
    ]);
    assert!(
        e.contains("no free address") && e.contains("10.77.0.0/30"),
        "{e}"
    );
    assert!(h.fails(&["vm", "show", "more"]).contains("not found"));
    assert_eq!(h.json(&["vm", "ls", "-a"]).as_array().unwrap().len(), 1);
    h.ok(&["vm", "delete", "-f", "only"]);
    common::assert_no_vm_leftovers(&h);
    std::thread::sleep(Duration::from_millis(10));
}
