//! A daemon killed with SIGKILL mid-operation: after restart the operation
//! shows as failed, nothing half-staged remains, and the store is intact.

mod common;

use std::time::{Duration, Instant};

use common::raw::Raw;
use common::{fixtures, require_root, Home};
use serde_json::json;

#[test]
fn sigkill_during_image_import_leaves_nothing_behind() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    let k = h.path().join("k.vmlinux");
    fixtures::write_stub_kernel(&k);
    h.ok(&["kernel", "import", k.to_str().unwrap(), "--name", "k"]);

    // A large, fully written (not sparse) rootfs so copying it takes a while.
    let rootfs = h.path().join("big.ext4");
    fixtures::ext4(&rootfs, 1024);
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&rootfs)
            .unwrap();
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(64 << 20)).unwrap();
        let block = vec![0x5au8; 1 << 20];
        for _ in 0..768 {
            f.write_all(&block).unwrap();
        }
    }

    let mut cli = h
        .banger()
        .args([
            "image", "register", "--name", "big", "--kernel", "k", "--rootfs",
        ])
        .arg(&rootfs)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();

    // Wait until the copy is under way (some bytes staged), then SIGKILL.
    let mut c = Raw::connect(&h.socket());
    let deadline = Instant::now() + Duration::from_secs(60);
    let op_id = loop {
        assert!(Instant::now() < deadline, "copy never started");
        let ops = c.call(1, "daemon.operations.list", json!({}));
        let running = ops["result"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| {
                o["kind"] == "image.register"
                    && o["state"] == "running"
                    && o["progress"]["done"].as_u64().unwrap_or(0) > 0
            })
            .cloned();
        if let Some(op) = running {
            break op["id"].as_str().unwrap().to_string();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert!(!h.staged_files().is_empty(), "something is being staged");
    h.kill_daemon();
    let _ = cli.wait();

    // Restart: the operation is failed, staging is empty, no image exists.
    h.start_daemon();
    let mut c = Raw::connect(&h.socket());
    let st = c.call(2, "op.status", json!({"id": op_id}));
    assert_eq!(st["result"]["state"], "failed", "{st}");
    assert!(st["result"]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("interrupted"));
    assert!(h.staged_files().is_empty(), "left: {:?}", h.staged_files());
    assert!(std::fs::read_dir(h.state().join("images"))
        .unwrap()
        .next()
        .is_none());
    assert!(h.json(&["image", "list"]).as_array().unwrap().is_empty());

    // The store opens cleanly.
    let db = rusqlite::Connection::open(h.state().join("state.db")).unwrap();
    let ok: String = db
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");

    // And the same import now succeeds.
    h.ok(&[
        "image",
        "register",
        "--name",
        "big",
        "--kernel",
        "k",
        "--rootfs",
        rootfs.to_str().unwrap(),
    ]);
}

#[test]
fn cancelling_an_import_removes_what_it_made() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    let k = h.path().join("k.vmlinux");
    fixtures::write_stub_kernel(&k);
    h.ok(&["kernel", "import", k.to_str().unwrap(), "--name", "k"]);
    let rootfs = h.path().join("big.ext4");
    fixtures::ext4(&rootfs, 1024);
    {
        use std::io::{Seek, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&rootfs)
            .unwrap();
        f.seek(std::io::SeekFrom::Start(64 << 20)).unwrap();
        let block = vec![0xa5u8; 1 << 20];
        for _ in 0..768 {
            f.write_all(&block).unwrap();
        }
    }
    let mut cli = h
        .banger()
        .args([
            "image", "register", "--name", "big", "--kernel", "k", "--rootfs",
        ])
        .arg(&rootfs)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut c = Raw::connect(&h.socket());
    let deadline = Instant::now() + Duration::from_secs(60);
    let id = loop {
        assert!(Instant::now() < deadline, "copy never started");
        let ops = c.call(1, "daemon.operations.list", json!({}));
        if let Some(op) = ops["result"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["state"] == "running" && o["kind"] == "image.register")
        {
            break op["id"].as_str().unwrap().to_string();
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // Ctrl-C in the CLI: it asks the daemon to cancel and exits 130.
    common::kill(cli.id() as i32, libc::SIGINT);
    let st = common::wait_timeout(&mut cli, Duration::from_secs(30)).expect("cli exits");
    assert_eq!(st.code(), Some(130), "Ctrl-C exit code");
    let done = c.call(
        2,
        "op.wait",
        json!({"id": id, "after_revision": 0, "timeout_ms": 100}),
    );
    // It may take a moment for cleanup to finish.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut state = done["result"]["state"].clone();
    while state == "running" && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        state = c.call(3, "op.status", json!({"id": id}))["result"]["state"].clone();
    }
    assert_eq!(state, "cancelled");
    assert!(h.staged_files().is_empty());
    assert!(std::fs::read_dir(h.state().join("images"))
        .unwrap()
        .next()
        .is_none());
}
