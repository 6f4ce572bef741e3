//! The server for real, on loopback: hickory's client over UDP and TCP,
//! malformed packets, a stalled TCP connection, extra listeners, shutdown.
//! Every socket is on 127.0.0.0/8 with an ephemeral port.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use hickory_server::net::client::{Client, ClientHandle};
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::net::tcp::TcpClientStream;
use hickory_server::net::udp::UdpClientStream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use super::{DnsServer, Lookup, TTL};

const BOX: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// How long a good query may take after the abuse ("promptly").
const PROMPT: Duration = Duration::from_secs(1);

fn lookup() -> Lookup {
    let vms: HashMap<String, Ipv4Addr> = [
        ("box".to_string(), BOX),
        ("other-1".to_string(), Ipv4Addr::new(10, 0, 0, 3)),
    ]
    .into();
    Arc::new(move |n: &str| vms.get(n).copied())
}

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

async fn start() -> DnsServer {
    DnsServer::start(&[loopback()], lookup(), CancellationToken::new())
        .await
        .unwrap()
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    Udp,
    Tcp,
}

async fn client(addr: SocketAddr, t: Transport) -> Client<TokioRuntimeProvider> {
    let provider = TokioRuntimeProvider::default();
    match t {
        Transport::Udp => {
            let conn = UdpClientStream::builder(addr, provider)
                .with_timeout(Some(PROMPT))
                .build();
            let (client, bg) = Client::<TokioRuntimeProvider>::from_sender(conn);
            tokio::spawn(bg);
            client
        }
        Transport::Tcp => {
            let (fut, sender) = TcpClientStream::new(addr, None, Some(PROMPT), provider);
            let stream = fut.await.unwrap();
            let (client, bg) = Client::<TokioRuntimeProvider>::with_timeout(stream, sender, PROMPT);
            tokio::spawn(bg);
            client
        }
    }
}

async fn ask(c: &mut Client<TokioRuntimeProvider>, name: &str, t: RecordType) -> Message {
    let name = Name::from_str(name).unwrap();
    timeout(PROMPT, c.query(name, DNSClass::IN, t))
        .await
        .expect("answered promptly")
        .expect("a response")
        .into_message()
}

fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// Checks the answers of the zone through `addr` over `t`.
async fn check_answers(addr: SocketAddr, t: Transport) {
    let mut c = client(addr, t).await;

    for name in ["box.vm", "box.vm.", "BOX.vm.", "Box.VM"] {
        let m = ask(&mut c, name, RecordType::A).await;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NoError,
            "{t:?} {name}"
        );
        assert!(m.metadata.authoritative, "{t:?} {name}");
        assert!(!m.metadata.recursion_available);
        assert_eq!(a_records(&m), [BOX], "{t:?} {name}");
        assert_eq!(m.answers[0].ttl, TTL);
    }
    let m = ask(&mut c, "other-1.vm.", RecordType::A).await;
    assert_eq!(a_records(&m), [Ipv4Addr::new(10, 0, 0, 3)]);

    for name in ["nope.vm.", "a.box.vm.", "bad_name.vm."] {
        let m = ask(&mut c, name, RecordType::A).await;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::NXDomain,
            "{t:?} {name}"
        );
        assert!(m.answers.is_empty());
        assert!(m.metadata.authoritative);
        assert_eq!(m.authorities.len(), 1, "{t:?} {name}");
        assert_eq!(m.authorities[0].record_type(), RecordType::SOA);
        assert_eq!(m.authorities[0].name.to_ascii(), "vm.");
    }

    let m = ask(&mut c, "box.vm.", RecordType::AAAA).await;
    assert_eq!(
        m.metadata.response_code,
        ResponseCode::NoError,
        "{t:?} AAAA"
    );
    assert!(m.answers.is_empty(), "{t:?} AAAA");
    assert!(m.metadata.authoritative);

    for name in ["example.com.", "box.vm.example.", "localhost."] {
        let m = ask(&mut c, name, RecordType::A).await;
        assert_eq!(
            m.metadata.response_code,
            ResponseCode::Refused,
            "{t:?} {name}"
        );
        assert!(m.answers.is_empty());
    }

    let m = ask(&mut c, "vm.", RecordType::SOA).await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].record_type(), RecordType::SOA);
    let m = ask(&mut c, "vm.", RecordType::NS).await;
    assert_eq!(m.answers.len(), 1);
    assert_eq!(m.answers[0].record_type(), RecordType::NS);
}

#[tokio::test]
async fn answers_over_udp_and_tcp() {
    let server = start().await;
    let addr = server.local_addrs()[0];
    assert!(addr.ip().is_loopback() && addr.port() != 0);
    check_answers(addr, Transport::Udp).await;
    check_answers(addr, Transport::Tcp).await;
    server.shutdown().await;
}

/// A well-formed query for `box.vm.` A, as raw bytes.
fn raw_query(id: u16) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(
        Name::from_ascii("box.vm.").unwrap(),
        RecordType::A,
    ));
    m.to_vec().unwrap()
}

/// Sends `packet` and returns the reply, if one comes within `wait`.
async fn exchange(sock: &UdpSocket, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    sock.send(packet).await.unwrap();
    let mut buf = vec![0u8; 4096];
    match timeout(wait, sock.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// Deterministic junk (xorshift64), so a failure can be replayed.
fn junk(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn header(id: u16, flags: u16, qd: u16) -> Vec<u8> {
    let mut h = Vec::with_capacity(12);
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&flags.to_be_bytes());
    h.extend_from_slice(&qd.to_be_bytes());
    h.extend_from_slice(&[0; 6]);
    h
}

/// A good query answers promptly, over UDP (late replies to earlier packets
/// are skipped).
async fn assert_answers_udp(sock: &UdpSocket, id: u16) {
    let start = Instant::now();
    sock.send(&raw_query(id)).await.unwrap();
    let mut buf = vec![0u8; 4096];
    loop {
        let left = PROMPT.saturating_sub(start.elapsed());
        let n = timeout(left, sock.recv(&mut buf))
            .await
            .expect("a good query is answered promptly")
            .unwrap();
        let Ok(m) = Message::from_vec(&buf[..n]) else {
            continue;
        };
        if m.metadata.id == id {
            assert_eq!(a_records(&m), [BOX]);
            return;
        }
    }
}

#[tokio::test]
async fn malformed_packets_do_not_stall_the_server() {
    let server = DnsServer::start_with(
        &[loopback()],
        lookup(),
        CancellationToken::new(),
        Duration::from_millis(300),
    )
    .await
    .unwrap();
    let addr = server.local_addrs()[0];
    let sock = UdpSocket::bind(loopback()).await.unwrap();
    sock.connect(addr).await.unwrap();
    assert_answers_udp(&sock, 1).await;

    // A TCP connection that announces 64 bytes and sends nothing more; it
    // stays open while everything else goes on.
    let mut half_open = TcpStream::connect(addr).await.unwrap();
    half_open.write_all(&[0, 64]).await.unwrap();

    let short = Duration::from_millis(50);
    // No reply expected to these: not even a header.
    for packet in [vec![], vec![0x42], junk(1, 11)] {
        exchange(&sock, &packet, short).await;
    }
    // A header claiming 50 questions, with no body: FORMERR.
    let reply = exchange(&sock, &header(0x5050, 0x0100, 50), PROMPT)
        .await
        .expect("FORMERR");
    assert_eq!(&reply[..2], &[0x50, 0x50]);
    assert_eq!(reply[3] & 0x0f, 1, "rcode FORMERR");
    // A question whose name is a compression pointer to itself, and one
    // whose two labels point at each other: FORMERR, no loop.
    let mut self_loop = header(0x6161, 0x0100, 1);
    self_loop.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1]);
    let mut pair_loop = header(0x6262, 0x0100, 1);
    pair_loop.extend_from_slice(&[1, b'a', 0xc0, 16, 1, b'b', 0xc0, 12, 0, 1, 0, 1]);
    // A name cut off in the middle of a label.
    let mut truncated = header(0x6363, 0x0100, 1);
    truncated.extend_from_slice(&[3, b'b', b'o']);
    for (packet, id) in [
        (self_loop, 0x6161),
        (pair_loop, 0x6262),
        (truncated, 0x6363),
    ] {
        if let Some(reply) = exchange(&sock, &packet, PROMPT).await {
            assert_eq!(u16::from_be_bytes([reply[0], reply[1]]), id);
            assert_ne!(reply[3] & 0x0f, 0, "an error rcode for {id:#x}");
        }
    }
    // A "response" (QR set) is never answered: no reflection.
    let mut response = raw_query(7);
    response[2] |= 0x80;
    assert!(exchange(&sock, &response, short).await.is_none());
    // Random 512-byte packets.
    for seed in 2..202 {
        exchange(&sock, &junk(seed, 512), Duration::ZERO).await;
    }
    // A 512-byte packet with a plausible header and junk behind it.
    for seed in 300..400 {
        let mut p = header(seed as u16, 0x0100, 1);
        p.extend(junk(seed, 500));
        exchange(&sock, &p, Duration::ZERO).await;
    }

    assert_answers_udp(&sock, 2).await;
    let fresh = UdpSocket::bind(loopback()).await.unwrap();
    fresh.connect(addr).await.unwrap();
    assert_answers_udp(&fresh, 3).await;
    let mut c = client(addr, Transport::Tcp).await;
    let m = ask(&mut c, "box.vm.", RecordType::A).await;
    assert_eq!(a_records(&m), [BOX]);

    // The stalled connection is closed once idle for the timeout.
    let mut buf = [0u8; 16];
    let closed = timeout(Duration::from_secs(3), half_open.read(&mut buf))
        .await
        .expect("the server closes an idle connection");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");

    server.shutdown().await;
}

#[tokio::test]
async fn many_stalled_tcp_connections_do_not_block_udp_or_tcp() {
    let server = start().await;
    let addr = server.local_addrs()[0];
    let mut stalled = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&[0xff, 0xff, 0, 1]).await.unwrap();
        stalled.push(s);
    }
    let sock = UdpSocket::bind(loopback()).await.unwrap();
    sock.connect(addr).await.unwrap();
    assert_answers_udp(&sock, 3).await;
    let mut c = client(addr, Transport::Tcp).await;
    assert_eq!(
        a_records(&ask(&mut c, "box.vm.", RecordType::A).await),
        [BOX]
    );
    drop(stalled);
    server.shutdown().await;
}

#[tokio::test]
async fn listen_adds_an_address() {
    let server = start().await;
    let first = server.local_addrs()[0];
    let second = server
        .listen(SocketAddr::from(([127, 0, 0, 2], 0)))
        .await
        .unwrap();
    assert_eq!(second.ip(), Ipv4Addr::new(127, 0, 0, 2));
    assert_ne!(second.port(), 0);
    assert_eq!(server.local_addrs(), [first, second]);

    check_answers(second, Transport::Udp).await;
    check_answers(second, Transport::Tcp).await;

    // Idempotent, whether asked with port 0 again or with the bound port.
    let again = server.listen(SocketAddr::from(([127, 0, 0, 2], 0))).await;
    assert_eq!(again.unwrap(), second);
    assert_eq!(server.listen(second).await.unwrap(), second);
    assert_eq!(server.listen(first).await.unwrap(), first);
    assert_eq!(server.local_addrs().len(), 2);

    server.shutdown().await;
    for addr in [first, second] {
        UdpSocket::bind(addr).await.unwrap();
        TcpListener::bind(addr).await.unwrap();
    }
}

#[tokio::test]
async fn shutdown_frees_the_ports() {
    let server = start().await;
    let addr = server.local_addrs()[0];
    // An open client connection must not keep the port.
    let mut c = client(addr, Transport::Tcp).await;
    ask(&mut c, "box.vm.", RecordType::A).await;
    let started = Instant::now();
    server.shutdown().await;
    assert!(started.elapsed() < PROMPT);
    UdpSocket::bind(addr).await.expect("UDP port free");
    TcpListener::bind(addr).await.expect("TCP port free");
}

#[tokio::test]
async fn the_token_stops_the_server() {
    let token = CancellationToken::new();
    let server = DnsServer::start(&[loopback()], lookup(), token.clone())
        .await
        .unwrap();
    let addr = server.local_addrs()[0];
    token.cancel();
    // The listeners close on their own...
    let deadline = Instant::now() + PROMPT;
    loop {
        if UdpSocket::bind(addr).await.is_ok() && TcpListener::bind(addr).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "ports still held after cancel");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ... no new listener can be added, and shutdown still returns.
    assert!(server.listen(loopback()).await.is_err());
    let other = SocketAddr::from(([127, 0, 0, 4], 0));
    assert!(server.listen(other).await.is_err());
    server.shutdown().await;
}

#[tokio::test]
async fn start_binds_all_or_nothing() {
    let taken = TcpListener::bind(loopback()).await.unwrap();
    let busy = taken.local_addr().unwrap();
    let free = UdpSocket::bind(loopback()).await.unwrap();
    let free_addr = free.local_addr().unwrap();
    drop(free);
    let err = DnsServer::start(&[free_addr, busy], lookup(), CancellationToken::new())
        .await
        .err()
        .expect("the TCP port is taken");
    assert!(err.to_string().contains(&busy.to_string()), "{err}");
    // The first address was released again.
    UdpSocket::bind(free_addr).await.unwrap();
}

#[tokio::test]
async fn several_addresses_at_start() {
    let server = DnsServer::start(
        &[loopback(), SocketAddr::from(([127, 0, 0, 3], 0))],
        lookup(),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let addrs = server.local_addrs();
    assert_eq!(addrs.len(), 2);
    for addr in addrs {
        let mut c = client(addr, Transport::Udp).await;
        assert_eq!(
            a_records(&ask(&mut c, "box.vm", RecordType::A).await),
            [BOX]
        );
    }
    server.shutdown().await;
}

#[tokio::test]
async fn dropping_the_server_frees_the_ports() {
    let server = start().await;
    let addr = server.local_addrs()[0];
    drop(server);
    let deadline = Instant::now() + PROMPT;
    while UdpSocket::bind(addr).await.is_err() || TcpListener::bind(addr).await.is_err() {
        assert!(Instant::now() < deadline, "ports still held after drop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// 1000 sequential A queries over UDP through hickory's client; prints the
/// median and p99 (see with `--nocapture`).
#[tokio::test]
async fn udp_query_latency() {
    let server = start().await;
    let addr = server.local_addrs()[0];
    let mut c = client(addr, Transport::Udp).await;
    let name = Name::from_ascii("box.vm.").unwrap();
    let mut times = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let t = Instant::now();
        let r = c
            .query(name.clone(), DNSClass::IN, RecordType::A)
            .await
            .unwrap();
        times.push(t.elapsed());
        assert_eq!(r.answers.len(), 1);
    }
    times.sort();
    let (median, p99) = (times[500], times[990]);
    eprintln!("dns udp latency over 1000 queries: median {median:?}, p99 {p99:?}");
    assert!(median < Duration::from_millis(50), "median {median:?}");
    server.shutdown().await;
}

/// Labels no name parser would produce, straight on the wire.
#[tokio::test]
async fn odd_labels_over_the_wire() {
    let server = start().await;
    let sock = UdpSocket::bind(loopback()).await.unwrap();
    sock.connect(server.local_addrs()[0]).await.unwrap();
    let cases: [(&[u8], u8); 6] = [
        (b"-box", 3),
        (b"b.x", 3),
        (b"b\0x", 3),
        (b"\xff\xfe", 3),
        (b"BoX", 0),
        (b"box", 0),
    ];
    for (i, (label, rcode)) in cases.into_iter().enumerate() {
        let id = 0x7000 + i as u16;
        let mut p = header(id, 0x0100, 1);
        p.push(label.len() as u8);
        p.extend_from_slice(label);
        p.extend_from_slice(&[2, b'v', b'm', 0, 0, 1, 0, 1]);
        let reply = exchange(&sock, &p, PROMPT).await.expect("a reply");
        let m = Message::from_vec(&reply).unwrap();
        assert_eq!(m.metadata.id, id);
        assert_eq!(m.metadata.response_code.low(), rcode, "{label:?}");
        if rcode == 0 {
            assert_eq!(a_records(&m), [BOX]);
            // The answer spells the name as asked.
            assert_eq!(m.answers[0].name.iter().next(), Some(label));
        }
    }
    server.shutdown().await;
}

/// The daemon keeps the server in shared state and calls it from spawned
/// tasks.
#[allow(dead_code)]
fn server_and_futures_are_send() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<DnsServer>();
    let lookup = lookup();
    send(&DnsServer::start(&[], lookup, CancellationToken::new()));
    let server: Option<DnsServer> = None;
    if let Some(s) = server {
        send(&s.listen(loopback()));
        send(&s.shutdown());
    }
}
