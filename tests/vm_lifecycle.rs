//! The VM lifecycle on the real Firecracker with the stub guest: create,
//! console, stop, start, delete, daemon restarts, concurrency, failures.

mod common;

use std::time::Duration;

use common::raw::Raw;
use common::{fixtures, require_root, Home};
use serde_json::{json, Value};

fn state(h: &Home, name: &str) -> String {
    h.json(&["vm", "show", name])["state"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn create_console_stop_start_delete() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    common::stub_image(&h);
    let r = h.json(&[
        "vm",
        "create",
        "--name",
        "box",
        "--vcpu",
        "1",
        "--memory",
        "128M",
        "--disk-size",
        "256M",
    ]);
    let vm = &r["vm"];
    assert_eq!(vm["state"], "running");
    assert_eq!(vm["vcpus"], 1);
    assert_eq!(vm["memory_mib"], 128);
    assert_eq!(vm["image"], "stub");
    let pid = vm["pid"].as_i64().unwrap() as i32;
    assert!(common::alive(pid));
    let stages: Vec<&str> = r["operation"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for s in [
        "disk-root",
        "disk-work",
        "disk",
        "network",
        "spawn",
        "configure",
        "boot",
    ] {
        assert!(stages.contains(&s), "stage {s} missing from {stages:?}");
    }
    // The stub's line reaches the console log.
    common::eventually(10, "the stub's banner on the console", || {
        h.ok(&["vm", "logs", "box"])
            .contains(fixtures::STUB_BANNER)
            .then_some(())
    });
    assert!(
        h.ok(&["vm", "logs", "box", "--vmm"])
            .contains("Running Firecracker"),
        "vmm log"
    );

    // Firecracker's view: our disks are configured.
    let show = h.json(&["vm", "show", "box"]);
    let root = show["root_disk"]["path"].as_str().unwrap();
    assert!(std::path::Path::new(root).exists());
    assert_eq!(show["work_disk"]["size"], 256 << 20);

    let stats = h.json(&["vm", "stats", "box"]);
    assert_eq!(stats["pid"], pid);
    assert!(stats["rss_bytes"].as_u64().unwrap() > 0);
    assert!(stats["vmm_metrics"].is_object(), "{stats}");
    let ping = h.json(&["vm", "ping", "box"]);
    assert_eq!(ping["healthy"], true);
    assert_eq!(ping["vmm_state"], "Running");

    // Listing: running VMs by default, all with -a.
    let list = h.json(&["vm", "ps"]);
    assert_eq!(list.as_array().unwrap().len(), 1);

    // The stub ignores Ctrl-Alt-Del: stop escalates and says so.
    let r = h.json(&["vm", "stop", "box", "--timeout", "1"]);
    let by = r[0]["ended_by"].as_str().unwrap();
    assert!(by == "sigterm" || by == "sigkill", "{r}");
    assert_eq!(r[0]["vm"]["state"], "stopped");
    common::wait_gone(pid);
    assert!(h.json(&["vm", "ps"]).as_array().unwrap().is_empty());
    assert_eq!(h.json(&["vm", "ls", "-a"]).as_array().unwrap().len(), 1);
    let show = h.json(&["vm", "show", "box"]);
    assert_eq!(show["last_exit"]["by"], by);
    assert!(show["pid"].is_null());

    // Start again: a new VMM, the same disks.
    let r = h.json(&["vm", "start", "box"]);
    assert_eq!(r[0]["vm"]["state"], "running");
    let pid2 = r[0]["vm"]["pid"].as_i64().unwrap() as i32;
    assert_ne!(pid, pid2);
    assert_eq!(r[0]["vm"]["root_disk"]["path"].as_str().unwrap(), root);

    // A running VM is not deleted without --force.
    assert!(h.fails(&["vm", "delete", "box"]).contains("--force"));
    h.ok(&["vm", "delete", "--force", "box"]);
    common::wait_gone(pid2);
    assert!(h.fails(&["vm", "show", "box"]).contains("not found"));
    common::assert_no_vm_leftovers(&h);
    // The image is free again.
    h.ok(&["image", "delete", "stub"]);
}

#[test]
fn wrong_states_are_refused_clearly() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    common::stub_image(&h);
    h.ok(&[
        "vm",
        "create",
        "--name",
        "idle",
        "--no-start",
        "--disk-size",
        "128M",
    ]);
    assert_eq!(state(&h, "idle"), "stopped");
    assert!(h.fails(&["vm", "stop", "idle"]).contains("not running"));
    assert!(h.fails(&["vm", "kill", "idle"]).contains("not running"));
    // set: grow only, stopped only.
    let v = h.json(&[
        "vm",
        "set",
        "idle",
        "--vcpu",
        "2",
        "--memory",
        "256M",
        "--disk-size",
        "192M",
    ]);
    assert_eq!(
        (
            v["vcpus"].as_u64(),
            v["memory_mib"].as_u64(),
            v["disk_bytes"].as_u64()
        ),
        (Some(2), Some(256), Some(192 << 20))
    );
    let work = v["work_disk"]["path"].as_str().unwrap();
    assert_eq!(std::fs::metadata(work).unwrap().len(), 192 << 20);
    assert!(h
        .fails(&["vm", "set", "idle", "--disk-size", "128M"])
        .contains("only grow"));
    h.ok(&["vm", "start", "idle"]);
    assert!(h
        .fails(&["vm", "start", "idle"])
        .contains("already running"));
    assert!(h
        .fails(&["vm", "set", "idle", "--vcpu", "1"])
        .contains("stop it first"));
    // The image and kernel are in use.
    assert!(h.fails(&["image", "delete", "stub"]).contains("in use"));
    assert!(h.fails(&["kernel", "rm", "stub"]).contains("in use"));
    h.ok(&["vm", "kill", "idle"]);
    common::eventually(10, "killed VM settles", || {
        (state(&h, "idle") == "stopped").then_some(())
    });
    let show = h.json(&["vm", "show", "idle"]);
    assert!(
        show["last_exit"]["by"]
            .as_str()
            .unwrap()
            .starts_with("kill"),
        "{show}"
    );
    // prune deletes stopped VMs.
    let p = h.json(&["vm", "prune", "-f"]);
    assert_eq!(p["deleted"], json!(["idle"]));
    common::assert_no_vm_leftovers(&h);
}

#[test]
fn daemon_sigkill_keeps_vms_running_and_readopts_them() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    common::stub_image(&h);
    for n in ["a1", "a2"] {
        h.ok(&[
            "vm",
            "create",
            "--name",
            n,
            "--memory",
            "128M",
            "--disk-size",
            "128M",
        ]);
    }
    let pid = |h: &Home, n: &str| h.json(&["vm", "show", n])["pid"].as_i64().unwrap() as i32;
    let (p1, p2) = (pid(&h, "a1"), pid(&h, "a2"));

    h.kill_daemon();
    assert!(
        common::alive(p1) && common::alive(p2),
        "a daemon crash must not kill VMs"
    );
    h.start_daemon();
    assert_eq!(state(&h, "a1"), "running");
    assert_eq!(pid(&h, "a1"), p1, "re-adopted, not restarted");
    assert_eq!(pid(&h, "a2"), p2);
    assert_eq!(h.json(&["vm", "ping", "a1"])["healthy"], true);

    // A VMM dying by itself is noticed and its VM settled.
    common::kill(p1, libc::SIGKILL);
    common::eventually(10, "reaper settles a1", || {
        (state(&h, "a1") == "stopped").then_some(())
    });
    let show = h.json(&["vm", "show", "a1"]);
    assert_eq!(show["last_exit"]["by"], "crashed", "{show}");
    assert_eq!(state(&h, "a2"), "running");

    // A clean daemon stop leaves VMs running too.
    h.ok(&["daemon", "stop"]);
    assert!(common::alive(p2));
    let _ = h.take_daemon().map(|mut c| c.wait());
    h.start_daemon();
    assert_eq!(pid(&h, "a2"), p2);

    // The VMM dying while the daemon is down is noticed at start.
    h.kill_daemon();
    common::kill(p2, libc::SIGKILL);
    common::wait_gone(p2);
    h.start_daemon();
    let show = h.json(&["vm", "show", "a2"]);
    assert_eq!(show["state"], "stopped");
    assert_eq!(show["last_exit"]["by"], "exited-while-daemon-down");
    h.ok(&["vm", "delete", "a1", "a2"]);
    common::assert_no_vm_leftovers(&h);
}

#[test]
fn ten_vms_created_concurrently_all_run() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    common::stub_image(&h);
    let home = h.path().to_path_buf();
    let workers: Vec<_> = (0..10)
        .map(|i| {
            let home = home.clone();
            std::thread::spawn(move || {
                let out = std::process::Command::new(common::BANGER)
                    .env("BANGER_HOME", &home)
                    .args([
                        "--json",
                        "vm",
                        "create",
                        "--name",
                        &format!("c{i}"),
                        "--memory",
                        "128M",
                        "--disk-size",
                        "128M",
                    ])
                    .output()
                    .unwrap();
                common::assert_success(&out, &["vm create"]);
                let v: Value = serde_json::from_slice(&out.stdout).unwrap();
                v["vm"]["state"].as_str().unwrap().to_string()
            })
        })
        .collect();
    for w in workers {
        assert_eq!(w.join().unwrap(), "running");
    }
    let list = h.json(&["vm", "ps"]);
    assert_eq!(list.as_array().unwrap().len(), 10);
    let names: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    let mut args = vec!["vm", "delete", "-f"];
    args.extend(names.iter().map(String::as_str));
    h.ok(&args);
    common::assert_no_vm_leftovers(&h);
}

#[test]
fn concurrent_lifecycle_calls_never_corrupt_a_vm() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    common::stub_image(&h);
    h.ok(&[
        "vm",
        "create",
        "--name",
        "hot",
        "--memory",
        "128M",
        "--disk-size",
        "128M",
    ]);
    let socket = h.socket();
    let calls = [
        ("vm.stop", json!({"name": "hot", "timeout_secs": 0})),
        ("vm.start", json!({"name": "hot"})),
        ("vm.restart", json!({"name": "hot", "timeout_secs": 0})),
        ("vm.kill", json!({"name": "hot"})),
        ("vm.set", json!({"name": "hot", "vcpus": 2})),
    ];
    for round in 0..3 {
        let workers: Vec<_> = (0..10)
            .map(|i| {
                let socket = socket.clone();
                let (method, params) = calls[(i + round) % calls.len()].clone();
                std::thread::spawn(move || {
                    let mut c = Raw::connect(&socket);
                    let r = c.call(1, method, params);
                    if let Some(code) = r["error"]["code"].as_i64() {
                        // Acceptable: "busy", "wrong state", or a start aborted
                        // because a concurrent kill ended its VMM.
                        assert!(matches!(code, -32006 | -32003 | -32008), "{method}: {r}");
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        // Settled, and the record agrees with reality.
        let show = common::eventually(20, "the VM settles", || {
            let v = h.json(&["vm", "show", "hot"]);
            matches!(v["state"].as_str(), Some("running" | "stopped")).then_some(v)
        });
        match show["state"].as_str().unwrap() {
            "running" => {
                let pid = show["pid"].as_i64().unwrap() as i32;
                assert!(common::alive(pid));
                assert_eq!(common::processes_under(h.path()), vec![pid]);
            }
            _ => {
                assert!(show["pid"].is_null());
                assert!(common::processes_under(h.path()).is_empty());
            }
        }
    }
    h.ok(&["vm", "delete", "-f", "hot"]);
    common::assert_no_vm_leftovers(&h);
}

#[test]
fn show_answers_while_a_start_is_slow() {
    require_root();
    let mut h = Home::new();
    // A firecracker that takes 3 s to come up (but answers --version at once).
    let real = banger_core::tools::find_in_path("firecracker").expect("firecracker installed");
    let slow = h.path().join("slow-firecracker");
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\n[ \"$1\" = --version ] && exec {real} \"$@\"\nsleep 3\nexec {real} \"$@\"\n",
            real = real.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = h.path().join("config.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.insert_str(
        0,
        &format!("firecracker_bin = {:?}\n", slow.display().to_string()),
    );
    std::fs::write(&cfg, text).unwrap();
    h.start_daemon();
    common::stub_image(&h);

    let mut c = Raw::connect(&h.socket());
    let begun = c.call(
        1,
        "vm.create.begin",
        json!({"name": "slow", "memory_mib": 128, "disk_bytes": 128u64 << 20}),
    );
    let op = begun["result"]["operation_id"]
        .as_str()
        .unwrap()
        .to_string();
    common::eventually(20, "the create reaches spawn", || {
        let s = c.call(2, "op.status", json!({"id": op}));
        (s["result"]["stage"] == "spawn").then_some(())
    });
    // While the VMM is still coming up, reads answer — and the start is still
    // under way after they have answered, so they did not wait for it.
    let show = h.json(&["vm", "show", "slow"]);
    assert_eq!(show["state"], "starting");
    assert_eq!(h.json(&["vm", "ps"])[0]["state"], "starting");
    let stats = h.json(&["vm", "stats", "slow"]);
    assert_eq!(stats["state"], "starting");
    let st = c.call(3, "op.status", json!({"id": op}));
    assert_eq!(
        st["result"]["state"], "running",
        "the start was still in progress: {st}"
    );
    // Conflicting lifecycle calls are refused as busy, not queued.
    let r = c.call(4, "vm.stop", json!({"name": "slow"}));
    assert_eq!(r["error"]["code"], -32006, "{r}");
    assert_eq!(r["error"]["data"]["kind"], "busy");
    // And it does finish.
    common::eventually(30, "slow VM running", || {
        (state(&h, "slow") == "running").then_some(())
    });
    h.ok(&["vm", "delete", "-f", "slow"]);
    common::assert_no_vm_leftovers(&h);
}

#[test]
fn cancelling_a_create_removes_everything() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    common::stub_image(&h);
    let mut c = Raw::connect(&h.socket());
    // A big work disk from a seedless mkfs is quick; cancel right away.
    let begun = c.call(
        1,
        "vm.create.begin",
        json!({"name": "gone", "memory_mib": 128, "disk_bytes": 256u64 << 20}),
    );
    let op = begun["result"]["operation_id"]
        .as_str()
        .unwrap()
        .to_string();
    let r = c.call(2, "vm.create.cancel", json!({"id": op}));
    assert!(r["result"].is_object(), "{r}");
    let end = common::eventually(30, "the create ends", || {
        let s = c.call(3, "vm.create.status", json!({"id": op}));
        (s["result"]["state"] != "running").then_some(s)
    });
    // It may have finished before the cancel landed; either way the outcome is clean.
    match end["result"]["state"].as_str().unwrap() {
        "cancelled" => {
            assert!(h.fails(&["vm", "show", "gone"]).contains("not found"));
            common::assert_no_vm_leftovers(&h);
        }
        "succeeded" => {
            h.ok(&["vm", "delete", "-f", "gone"]);
            common::assert_no_vm_leftovers(&h);
        }
        s => panic!("unexpected end state {s}: {end}"),
    }
}

#[test]
fn create_failures_leave_nothing_behind() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    // No image at all.
    let e = h.fails(&["vm", "create", "--name", "x"]);
    assert!(e.contains("no image"), "{e}");
    common::stub_image(&h);
    assert!(h
        .fails(&["vm", "create", "--image", "nope"])
        .contains("image \"nope\" not found"));
    assert!(h
        .fails(&["vm", "create", "--name", "Bad!"])
        .contains("lowercase"));
    assert!(h
        .fails(&["vm", "create", "--memory", "64M"])
        .contains("at least 128 MiB"));
    h.ok(&[
        "vm",
        "create",
        "--name",
        "dup",
        "--no-start",
        "--disk-size",
        "128M",
    ]);
    assert!(h
        .fails(&["vm", "create", "--name", "dup"])
        .contains("already exists"));
    h.ok(&["vm", "delete", "dup"]);

    // The kernel file vanished from under the registry: the boot fails at
    // configure and the create undoes itself.
    let k = h.json(&["kernel", "show", "stub"]);
    let kpath = k["vmlinux"]["path"].as_str().unwrap().to_string();
    let saved = std::fs::read(&kpath).unwrap();
    std::fs::remove_file(&kpath).unwrap();
    let e = h.fails(&[
        "vm",
        "create",
        "--name",
        "nokernel",
        "--memory",
        "128M",
        "--disk-size",
        "128M",
    ]);
    assert!(e.contains("error"), "{e}");
    std::fs::write(&kpath, saved).unwrap();
    assert!(h.fails(&["vm", "show", "nokernel"]).contains("not found"));
    common::assert_no_vm_leftovers(&h);
}

#[test]
fn firecracker_missing_is_a_clear_precondition_error() {
    require_root();
    let mut h = Home::new();
    let cfg = h.path().join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!("firecracker_bin = \"/nonexistent/firecracker\"\n{text}"),
    )
    .unwrap();
    h.start_daemon();
    common::stub_image(&h);
    let mut c = Raw::connect(&h.socket());
    let r = c.call(1, "vm.create.begin", json!({"name": "nofc"}));
    assert_eq!(r["error"]["code"], -32004, "{r}");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("firecracker_bin"),
        "{r}"
    );
    assert!(h.fails(&["vm", "show", "nofc"]).contains("not found"));
    common::assert_no_vm_leftovers(&h);
}

#[test]
fn a_full_disk_fails_the_create_cleanly() {
    require_root();
    let mut h = Home::new();
    // The state dir on a tiny ext4: room for the image, not for a VM's copy.
    let img = h.path().join("tiny.img");
    fixtures::ext4(&img, 48);
    std::fs::create_dir_all(h.state()).unwrap();
    let st = std::process::Command::new("mount")
        .arg("-o")
        .arg("loop")
        .arg(&img)
        .arg(h.state())
        .status()
        .unwrap();
    assert!(st.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(h.state());
    let cfg = h.path().join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    // Into Home's own [vm] table (a second [vm] would be invalid TOML).
    assert!(text.contains("[vm]\n"), "{text}");
    let text = text.replace("[vm]\n", "[vm]\ndisk_backend = \"copy\"\n");
    std::fs::write(&cfg, text).unwrap();
    h.start_daemon();
    let k = h.path().join("k.vmlinux");
    fixtures::write_stub_kernel(&k);
    h.ok(&["kernel", "import", k.to_str().unwrap(), "--name", "stub"]);
    // A rootfs full of data (not sparse): 26 of its 30 MiB. It fits once in
    // the ~39 MiB the tiny filesystem offers, not twice.
    let rootfs = h.path().join("full.ext4");
    fixtures::ext4(&rootfs, 30);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open(&rootfs)
            .unwrap();
        f.seek(SeekFrom::Start(4 << 20)).unwrap();
        f.write_all(&vec![0x77u8; 26 << 20]).unwrap();
    }
    h.ok(&[
        "image",
        "register",
        "--name",
        "full",
        "--kernel",
        "stub",
        "--rootfs",
        rootfs.to_str().unwrap(),
    ]);
    let e = h.fails(&[
        "vm",
        "create",
        "--name",
        "big",
        "--image",
        "full",
        "--memory",
        "128M",
        "--disk-size",
        "64M",
    ]);
    assert!(e.contains("space"), "{e}");
    assert!(h.fails(&["vm", "show", "big"]).contains("not found"));
    common::assert_no_vm_leftovers(&h);
    h.kill_daemon();
}

#[test]
fn reflink_backend_on_xfs() {
    require_root();
    let mut h = Home::new();
    let img = h.path().join("xfs.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(512 << 20)
        .unwrap();
    assert!(std::process::Command::new("mkfs.xfs")
        .arg("-q")
        .arg(&img)
        .status()
        .unwrap()
        .success());
    std::fs::create_dir_all(h.state()).unwrap();
    assert!(std::process::Command::new("mount")
        .arg("-o")
        .arg("loop")
        .arg(&img)
        .arg(h.state())
        .status()
        .unwrap()
        .success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(h.state());
    h.start_daemon();
    common::stub_image(&h);
    let r = h.json(&[
        "vm",
        "create",
        "--name",
        "cow",
        "--no-start",
        "--disk-size",
        "128M",
    ]);
    assert_eq!(r["vm"]["root_disk"]["backend"], "reflink");
    h.ok(&["vm", "delete", "cow"]);
    common::assert_no_vm_leftovers(&h);
    h.kill_daemon();
    std::thread::sleep(Duration::from_millis(50));
}

/// The counter values on `name`'s console so far.
fn counter(h: &Home, name: &str) -> (usize, Vec<u64>) {
    let log = h.ok(&["vm", "logs", name]);
    (log.len(), banger_core::stub_guest::counter_values(&log))
}

/// `secs` seconds in two halves: the console must not grow in either.
fn assert_console_still(h: &Home, name: &str, secs: f64) -> usize {
    let (len, _) = counter(h, name);
    for _ in 0..2 {
        std::thread::sleep(Duration::from_secs_f64(secs / 2.0));
        let (now, _) = counter(h, name);
        assert_eq!(now, len, "the console of paused vm {name} grew");
    }
    len
}

/// Pause and resume on the real Firecracker with the counter stub: a paused
/// guest prints nothing, a resumed one goes on counting from where it was
/// (no reboot: every number is the previous one + 1), `paused` survives a
/// daemon SIGKILL and restart, and the verbs a paused VM cannot do say so.
#[test]
fn pause_freezes_the_counter_and_resume_continues_it() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    common::stub_image(&h);
    let k = h.path().join("counter.vmlinux");
    std::fs::write(&k, banger_core::stub_guest::counter_elf()).unwrap();
    h.ok(&["kernel", "import", k.to_str().unwrap(), "--name", "ctr"]);
    let rootfs = h.path().join("ctr-root.ext4");
    fixtures::ext4(&rootfs, 64);
    let rootfs = rootfs.to_str().unwrap();
    h.ok(&[
        "image", "register", "--name", "ctr", "--kernel", "ctr", "--rootfs", rootfs,
    ]);
    h.ok(&[
        "vm",
        "create",
        "--name",
        "c",
        "--image",
        "ctr",
        "--memory",
        "128M",
        "--disk-size",
        "128M",
    ]);
    let pid = h.json(&["vm", "show", "c"])["pid"].as_i64().unwrap() as i32;
    common::eventually(60, "the counter to reach 3", || {
        (counter(&h, "c").1.len() >= 3).then_some(())
    });

    // Invalid transitions of a running VM.
    assert!(h
        .fails(&["vm", "resume", "c"])
        .contains("not paused (it is running)"));

    let r = h.json(&["vm", "pause", "c"]);
    assert_eq!(r[0]["vm"]["state"], "paused", "{r}");
    assert_eq!(state(&h, "c"), "paused");
    assert!(
        h.json(&["vm", "ps"])
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["state"] == "paused"),
        "vm ps lists a paused VM"
    );
    assert!(h.ok(&["vm", "ls"]).contains("paused"));
    let out = h
        .banger()
        .args(["--json", "vm", "ping", "c"])
        .output()
        .unwrap();
    let ping: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(ping["healthy"], false, "{ping}");
    assert_eq!(ping["state"], "paused", "{ping}");
    // The console stops growing (no new line over ~1 s, twice).
    assert_console_still(&h, "c", 2.0);
    let (_, before) = counter(&h, "c");

    // What a paused VM refuses, with the way out.
    for args in [
        &["vm", "exec", "c", "--", "true"][..],
        &["vm", "ssh", "c", "--", "true"],
        &["vm", "start", "c"],
        &["vm", "pause", "c"],
    ] {
        let err = h.fails(args);
        assert!(err.contains("paused"), "{args:?}: {err}");
        assert!(err.contains("banger vm resume c"), "{args:?}: {err}");
    }
    let out = h
        .banger()
        .args(["--json", "vm", "exec", "c", "--", "true"])
        .output()
        .unwrap();
    let e: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(e["error"]["kind"], "invalid_state", "{e}");
    assert!(h.fails(&["vm", "delete", "c"]).contains("--force"));

    // A daemon crash and restart keep it paused (the VMM says so), with its
    // TAP and rules (a paused VM resumes with its network).
    let ns = h.netns();
    let tap = h.json(&["vm", "show", "c"])["network"]["tap"]
        .as_str()
        .expect("the VM has a network")
        .to_string();
    assert!(
        common::taps_in(&ns).contains(&tap),
        "a paused VM keeps its TAP"
    );
    let rules = common::vm_rules_in(&ns);
    assert!(!rules.is_empty(), "a paused VM keeps its rules");
    h.kill_daemon();
    assert!(
        common::alive(pid),
        "a daemon crash must not kill a paused VM"
    );
    h.start_daemon();
    assert_eq!(state(&h, "c"), "paused");
    assert!(common::taps_in(&ns).contains(&tap), "restart kept the TAP");
    assert_eq!(common::vm_rules_in(&ns), rules, "restart kept the rules");
    assert_eq!(h.json(&["vm", "show", "c"])["pid"], pid);
    assert_console_still(&h, "c", 1.0);

    // Resume: the same guest counts on.
    let r = h.json(&["vm", "resume", "c"]);
    assert_eq!(r[0]["vm"]["state"], "running", "{r}");
    let last = *before.last().unwrap();
    let after = common::eventually(60, "new counter lines after resume", || {
        let (_, v) = counter(&h, "c");
        (v.len() > before.len() + 1).then_some(v)
    });
    assert_eq!(after[..before.len()], before[..], "the old lines stay");
    assert_eq!(after[before.len()], last + 1, "no reboot: {after:?}");
    for w in after.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "the counter runs on, never from 0 again: {after:?}"
        );
    }
    assert_eq!(h.json(&["vm", "show", "c"])["pid"], pid, "same VMM");

    // The docker words, and stop of a paused VM (resumed, then stopped).
    h.ok(&["pause", "c"]);
    assert_eq!(state(&h, "c"), "paused");
    h.ok(&["unpause", "c"]);
    assert_eq!(state(&h, "c"), "running");
    h.ok(&["vm", "pause", "c"]);
    let r = h.json(&["vm", "stop", "c", "--timeout", "1"]);
    assert_eq!(r[0]["vm"]["state"], "stopped", "{r}");
    common::wait_gone(pid);
    assert!(h.fails(&["vm", "pause", "c"]).contains("not running"));
    assert!(h
        .fails(&["vm", "resume", "c"])
        .contains("not paused (it is stopped)"));

    // kill and delete --force of a paused VM.
    h.ok(&["vm", "start", "c"]);
    h.ok(&["vm", "pause", "c"]);
    let pid = h.json(&["vm", "show", "c"])["pid"].as_i64().unwrap() as i32;
    h.ok(&["vm", "kill", "c"]);
    common::wait_gone(pid);
    common::eventually(10, "the killed paused VM settled", || {
        (state(&h, "c") == "stopped").then_some(())
    });
    h.ok(&["vm", "start", "c"]);
    h.ok(&["vm", "pause", "c"]);
    let pid = h.json(&["vm", "show", "c"])["pid"].as_i64().unwrap() as i32;
    h.ok(&["vm", "delete", "--force", "c"]);
    common::wait_gone(pid);
    common::assert_no_vm_leftovers(&h);
}
