//! The daemon's protocol behaviour under load and under bad input, over a raw
//! socket: concurrency, disconnects, malformed and oversized requests,
//! batches, notifications, and the one-daemon-per-home rule.

mod common;

use std::io::Write;
use std::time::Duration;

use common::raw::{code, Raw};
use common::{require_root, Home};
use serde_json::{json, Value};

#[test]
fn two_clients_hundred_requests_each_and_a_rude_one() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    let socket = h.socket();
    // A client that sends half a request and vanishes, repeatedly.
    let rude_socket = socket.clone();
    let rude = std::thread::spawn(move || {
        for _ in 0..20 {
            let mut s = std::os::unix::net::UnixStream::connect(&rude_socket).unwrap();
            s.write_all(br#"{"jsonrpc":"2.0","id":1,"method":"daemon.st"#)
                .unwrap();
            drop(s);
        }
    });
    let workers: Vec<_> = (0..2)
        .map(|w| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                let mut c = Raw::connect(&socket);
                for i in 0..100u64 {
                    let id = w * 1000 + i;
                    let r = c.call(id, "daemon.status", json!({}));
                    assert_eq!(r["id"], id, "{r}");
                    assert_eq!(r["result"]["protocol"], 1);
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    rude.join().unwrap();
    // Still healthy.
    let mut c = Raw::connect(&socket);
    assert_eq!(
        c.call(1, "daemon.status", json!({}))["result"]["protocol"],
        1
    );
}

#[test]
fn bad_input_gets_the_right_error_and_the_daemon_stays_up() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    let mut c = Raw::connect(&h.socket());

    c.send(b"{this is not json\n");
    let r = c.read();
    assert_eq!(code(&r), -32700);
    assert_eq!(r["id"], Value::Null);

    c.send(b"{\"jsonrpc\":\"2.0\",\"id\":5,\"method\":42}\n");
    let r = c.read();
    assert_eq!(code(&r), -32600);
    assert_eq!(r["id"], 5);

    let r = c.call(6, "no.such.method", json!({}));
    assert_eq!(code(&r), -32601);
    assert_eq!(r["error"]["data"]["kind"], "method_not_found");

    // Wrong types and unknown fields.
    let r = c.call(7, "kernel.show", json!({"name": 12}));
    assert_eq!(code(&r), -32602);
    let r = c.call(8, "op.status", json!({"id": "x", "extra": true}));
    assert_eq!(code(&r), -32602);
    let r = c.call(9, "kernel.show", json!(["positional"]));
    assert_eq!(code(&r), -32602);

    // Typed errors beyond the standard ones carry a kind.
    let r = c.call(10, "kernel.show", json!({"name": "missing"}));
    assert_eq!(code(&r), -32001);
    assert_eq!(r["error"]["data"]["kind"], "not_found");

    // A 10 MiB line: one error, then the same connection keeps working.
    let mut big = Vec::with_capacity(10 << 20);
    big.extend_from_slice(
        br#"{"jsonrpc":"2.0","id":11,"method":"daemon.status","params":{"pad":""#,
    );
    big.resize(10 << 20, b'a');
    big.extend_from_slice(b"\"}}\n");
    let writer = {
        let mut s = c.stream.try_clone().unwrap();
        std::thread::spawn(move || s.write_all(&big).unwrap())
    };
    let r = c.read();
    writer.join().unwrap();
    assert_eq!(code(&r), -32007);
    assert_eq!(r["error"]["data"]["kind"], "request_too_large");
    let r = c.call(12, "daemon.status", json!({}));
    assert_eq!(r["id"], 12);
    assert!(r["result"].is_object(), "{r}");

    // Other connections never noticed.
    let mut c2 = Raw::connect(&h.socket());
    c2.send(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"daemon.status\"}\n");
    assert!(c2.read()["result"].is_object(), "params may be omitted");
    // ...but `"params": null` is not a valid request.
    assert_eq!(code(&c2.call(2, "daemon.status", Value::Null)), -32600);
}

#[test]
fn batches_and_notifications() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    let mut c = Raw::connect(&h.socket());
    c.send(b"[]\n");
    assert_eq!(code(&c.read()), -32600);

    c.send(
        br#"[{"jsonrpc":"2.0","id":1,"method":"daemon.status"},{"jsonrpc":"2.0","method":"daemon.status"},{"jsonrpc":"2.0","id":2,"method":"nope"},7]
"#,
    );
    let r = c.read();
    let items = r.as_array().expect("batch answer is an array");
    assert_eq!(items.len(), 3, "the notification gets no entry: {r}");
    assert_eq!(items[0]["id"], 1);
    assert!(items[0]["result"].is_object());
    assert_eq!(code(&items[1]), -32601);
    assert_eq!(code(&items[2]), -32600);

    // A notification alone gets no answer: the next thing read answers id 3.
    c.send(b"{\"jsonrpc\":\"2.0\",\"method\":\"daemon.status\"}\n");
    let r = c.call(3, "daemon.status", json!({}));
    assert_eq!(r["id"], 3);
}

#[test]
fn one_daemon_per_home_and_stale_socket_replaced() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    let out = std::process::Command::new(common::BANGERD)
        .arg("--home")
        .arg(h.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already serving"), "{err}");

    // Kill it hard: the socket file stays behind, nothing answers it.
    h.kill_daemon();
    assert!(h.socket().exists(), "SIGKILL leaves the socket file");
    assert!(std::os::unix::net::UnixStream::connect(h.socket()).is_err());
    // A new daemon replaces it.
    h.start_daemon();
    let mut c = Raw::connect(&h.socket());
    assert!(c.call(1, "daemon.status", json!({}))["result"].is_object());
}

#[test]
fn sigterm_and_shutdown_exit_cleanly() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    let st = h.term_daemon();
    assert!(st.success(), "SIGTERM exit status {st}");
    assert!(!h.socket().exists());

    h.start_daemon();
    let mut c = Raw::connect(&h.socket());
    let r = c.call(1, "daemon.shutdown", json!({}));
    assert!(r["result"].is_object(), "{r}");
    let mut child = h.take_daemon().unwrap();
    let st = common::wait_timeout(&mut child, Duration::from_secs(20)).expect("exits");
    assert!(st.success());
    // The store was closed cleanly: it opens and checks out.
    let db = rusqlite::Connection::open(h.state().join("state.db")).unwrap();
    let ok: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}

/// Runs `f` on a thread whose own credentials (not the process's: the raw
/// syscalls change only the calling thread) are `uid`/`gid`, so the daemon's
/// SO_PEERCRED sees that user for sockets connected there.
fn as_user<T: Send + 'static>(uid: u32, gid: u32, f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(move || {
        // SAFETY: plain syscalls on this thread's credentials.
        unsafe {
            assert_eq!(
                libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
                0
            );
            assert_eq!(libc::syscall(libc::SYS_setresgid, gid, gid, gid), 0);
            assert_eq!(libc::syscall(libc::SYS_setresuid, uid, uid, uid), 0);
        }
        f()
    })
    .join()
    .unwrap()
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn a_user_cannot_hog_connections_or_descriptors() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    let socket = h.socket();
    let pid = h.daemon_pid().unwrap();

    // nobody opens connections up to the per-user cap (64), each usable.
    let s = socket.clone();
    let mut held = as_user(common::NOBODY, common::NOBODY, move || {
        (0..64)
            .map(|i| {
                let mut c = Raw::connect(&s);
                assert_eq!(
                    c.call(i, "daemon.status", json!({}))["result"]["protocol"],
                    1
                );
                c
            })
            .collect::<Vec<_>>()
    });
    // The next one is answered with a busy error and closed.
    let s = socket.clone();
    let refused = as_user(common::NOBODY, common::NOBODY, move || {
        let mut c = Raw::connect(&s);
        c.read()
    });
    assert_eq!(refused["error"]["data"]["kind"], "busy", "{refused}");
    let msg = refused["error"]["message"].as_str().unwrap();
    assert!(msg.contains("too many connections from your user"), "{msg}");
    // Root is not crowded out.
    let mut root = Raw::connect(&socket);
    assert_eq!(
        root.call(1, "daemon.status", json!({}))["result"]["protocol"],
        1
    );
    // A closed connection frees its slot.
    drop(held.pop());
    let s = socket.clone();
    let again = common::eventually(10, "a freed connection slot", move || {
        let s = s.clone();
        as_user(common::NOBODY, common::NOBODY, move || {
            let mut c = Raw::connect(&s);
            let r = c.call(7, "daemon.status", json!({}));
            (r["result"]["protocol"] == 1).then_some(c)
        })
    });
    held.push(again);
    drop(held);

    // Descriptors piled onto one unfinished request line are not kept: the
    // daemon holds at most one request's worth (4) per connection.
    let before = open_fds(pid);
    let s = socket.clone();
    let flooder = as_user(common::NOBODY, common::NOBODY, move || {
        let stream = std::os::unix::net::UnixStream::connect(&s).unwrap();
        let null = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        for _ in 0..300 {
            let fds = [null.as_fd(), null.as_fd(), null.as_fd(), null.as_fd()];
            let mut space = [0u8; rustix::cmsg_space!(ScmRights(4))];
            let mut anc = rustix::net::SendAncillaryBuffer::new(&mut space);
            assert!(anc.push(rustix::net::SendAncillaryMessage::ScmRights(&fds)));
            rustix::net::sendmsg(
                &stream,
                &[std::io::IoSlice::new(b"x")],
                &mut anc,
                rustix::net::SendFlags::empty(),
            )
            .unwrap();
        }
        stream
    });
    // Let the daemon read all of it, then count what it holds.
    let mut probe = Raw::connect(&socket);
    assert_eq!(
        probe.call(2, "daemon.status", json!({}))["result"]["protocol"],
        1
    );
    std::thread::sleep(Duration::from_millis(300));
    let during = open_fds(pid);
    assert!(
        during <= before + 4 + 2,
        "daemon holds {during} descriptors after the flood, {before} before"
    );
    // The line, once finished, is answered (without the dropped descriptors).
    let mut flooder = common::raw::Raw::from_stream(flooder);
    flooder.send(b"\n");
    let r = flooder.read();
    assert_eq!(code(&r), -32700, "{r}");
    drop(flooder);
    drop(probe);
    drop(root);
}
