//! The VM lifecycle under QEMU (`--vmm qemu`), through the CLI, with the PVH
//! stub guest (`banger_core::stub_guest::pvh_elf`): create → running (vmm,
//! accel, tap), health and ping without an agent, stop (escalation
//! reported), start, daemon SIGKILL + restart re-adopting the running QEMU,
//! the reaper noticing a QEMU that died, delete leaving nothing. Then the guest agent paths against guests that
//! run no agent, under both VMMs: the errors must be clear and fast.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{fixtures, require_root, Home};
use serde_json::Value;

/// Registers the PVH stub as kernel `pvh` and a small rootfs as images
/// `pvh` (no features) and `pvh-agent` (feature `agent`).
fn pvh_images(h: &Home) {
    let k = h.path().join("stub-pvh.elf");
    std::fs::write(&k, banger_core::stub_guest::pvh_elf()).unwrap();
    h.ok(&["kernel", "import", k.to_str().unwrap(), "--name", "pvh"]);
    for (name, features) in [("pvh", None), ("pvh-agent", Some("agent"))] {
        let rootfs = h.path().join(format!("{name}-root.ext4"));
        fixtures::ext4(&rootfs, 64);
        let mut args = vec![
            "image",
            "register",
            "--name",
            name,
            "--kernel",
            "pvh",
            "--rootfs",
            rootfs.to_str().unwrap(),
        ];
        if let Some(f) = features {
            args.extend(["--features", f]);
        }
        h.ok(&args);
    }
}

fn create(h: &Home, name: &str, image: &str, vmm: &str, extra: &[&str]) -> Value {
    let mut args = vec![
        "vm",
        "create",
        "--name",
        name,
        "--image",
        image,
        "--vmm",
        vmm,
        "--vcpu",
        "1",
        "--memory",
        "128M",
        "--disk-size",
        "128M",
    ];
    args.extend_from_slice(extra);
    h.json(&args)["vm"].clone()
}

fn pid_of(v: &Value) -> i32 {
    v["pid"].as_i64().unwrap_or_else(|| panic!("no pid: {v}")) as i32
}

#[test]
fn qemu_create_stop_start_readopt_delete() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    pvh_images(&h);

    let vm = create(&h, "q", "pvh", "qemu", &[]);
    assert_eq!(vm["state"], "running", "{vm}");
    assert_eq!(vm["vmm"], "qemu");
    let accel = vm["accel"].as_str().unwrap().to_string();
    assert_eq!(
        accel,
        common::expected_qemu_accel(),
        "the acceleration this host allows (tcg under nested PVM or without hardware KVM)"
    );
    let pid = pid_of(&vm);
    assert!(common::alive(pid));
    assert!(vm["api_socket"].as_str().unwrap().ends_with("qmp.sock"));
    // Human output says it too.
    let text = h.ok(&["vm", "show", "q"]);
    assert!(text.contains(&format!("qemu (pid {pid})")), "{text}");
    assert!(
        text.contains(&format!("accel  {accel}")) || text.contains(&accel),
        "{text}"
    );

    // The tap QEMU opened by name is on banger's bridge, carrier up.
    let tap = vm["network"]["tap"].as_str().unwrap().to_string();
    let link = String::from_utf8(
        h.in_netns("ip", &["-j", "link", "show", "dev", &tap])
            .stdout,
    )
    .unwrap();
    assert!(link.contains("\"master\":\"br-banger\""), "{link}");
    assert!(link.contains("LOWER_UP"), "{link}");
    let ip = vm["network"]["ip"].as_str().unwrap();
    let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .replace('\0', " ");
    assert!(
        cmdline.contains(&format!("ifname={tap},script=no,downscript=no")),
        "{cmdline}"
    );
    assert!(cmdline.contains(&format!(" ip={ip}::")), "{cmdline}");

    // The stub's line reaches the console log.
    common::eventually(10, "the stub's banner on the console", || {
        h.ok(&["vm", "logs", "q"])
            .contains(fixtures::STUB_BANNER)
            .then_some(())
    });

    // No agent in this image: VMM liveness, and it says so.
    let ping = h.json(&["vm", "ping", "q"]);
    assert_eq!(ping["healthy"], true, "{ping}");
    assert_eq!(ping["checked"], "vmm");
    assert_eq!(ping["vmm_state"], "Running");
    let health = h.json(&["vm", "health", "q"]);
    assert_eq!(health["healthy"], true, "{health}");
    let detail = health["detail"].as_str().unwrap();
    assert!(detail.contains("no guest agent in image pvh"), "{detail}");
    let err = h.fails(&["vm", "ports", "q"]);
    assert!(err.contains("has no guest agent"), "{err}");

    let stats = h.json(&["vm", "stats", "q"]);
    assert_eq!(stats["pid"], pid);
    assert!(stats["rss_bytes"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["cpu_secs"].as_f64().is_some(), "{stats}");

    // Stop: no agent, and QEMU's power button reaches no microvm guest, so
    // straight to SIGTERM (no wait), reported.
    let t = Instant::now();
    let r = h.json(&["vm", "stop", "q"]);
    let took = t.elapsed();
    assert_eq!(r[0]["ended_by"], "sigterm", "{r}");
    assert_eq!(r[0]["vm"]["state"], "stopped");
    assert!(r[0]["vm"]["accel"].is_null(), "{r}");
    assert!(took < Duration::from_secs(5), "stop took {took:?}");
    let stages: Vec<&str> = r[0]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(!stages.contains(&"ctrl-alt-del"), "{stages:?}");
    common::wait_gone(pid);
    assert_eq!(h.json(&["vm", "show", "q"])["last_exit"]["by"], "sigterm");
    let link = h.in_netns("ip", &["link", "show", "dev", &tap]);
    assert!(!link.status.success(), "the tap goes with the VM's stop");

    // Start again: a new QEMU on the same disks.
    let r = h.json(&["vm", "start", "q"]);
    let started = &r[0]["vm"];
    assert_eq!(started["state"], "running", "{r}");
    assert_eq!(started["vmm"], "qemu");
    let pid2 = pid_of(started);
    assert_ne!(pid, pid2);

    // The daemon dies hard; the next one re-adopts the running QEMU.
    h.kill_daemon();
    assert!(common::alive(pid2), "a daemon crash must not take VMs down");
    h.start_daemon();
    let show = h.json(&["vm", "show", "q"]);
    assert_eq!(show["state"], "running", "{show}");
    assert_eq!(pid_of(&show), pid2);
    assert_eq!(show["accel"], accel.as_str());
    let ping = h.json(&["vm", "ping", "q"]);
    assert_eq!(ping["healthy"], true, "QMP answers the new daemon: {ping}");
    // And it still controls it.
    let r = h.json(&["vm", "stop", "q"]);
    assert_eq!(r[0]["ended_by"], "sigterm", "{r}");
    common::wait_gone(pid2);

    // The reaper: a QEMU that dies on its own (here: killed behind the
    // daemon's back) is noticed and the VM settled as crashed, tap removed.
    let r = h.json(&["vm", "start", "q"]);
    let pid3 = pid_of(&r[0]["vm"]);
    common::kill(pid3, libc::SIGKILL);
    let exit = common::eventually(10, "the reaper to settle the VM", || {
        let show = h.json(&["vm", "show", "q"]);
        (show["state"] == "stopped").then(|| show["last_exit"].clone())
    });
    assert_eq!(exit["by"], "crashed", "{exit}");
    assert!(!h
        .in_netns("ip", &["link", "show", "dev", &tap])
        .status
        .success());

    h.ok(&["vm", "delete", "q"]);
    common::assert_no_vm_leftovers(&h);
}

/// Images with the `agent` feature whose guest runs no agent (the stubs):
/// `vm health`, `vm ping` and `vm ports` say "agent not answering" within
/// seconds, under QEMU (virtio-serial: nobody reads the port) and under
/// Firecracker (vsock: nothing accepts `CONNECT 10789`); `vm stop` tries
/// the agent, then escalates.
#[test]
fn agent_not_answering_is_clear_and_fast_under_both_vmms() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    pvh_images(&h);
    common::stub_image(&h);
    common::stub_image_with(&h, "stub-agent", "agent");

    let q = create(&h, "qa", "pvh-agent", "qemu", &[]);
    let f = create(&h, "fa", "stub-agent", "firecracker", &[]);
    assert_eq!(
        (q["vmm"].as_str(), f["vmm"].as_str()),
        (Some("qemu"), Some("firecracker"))
    );
    assert_eq!(f["accel"], "kvm");

    for (name, why) in [
        ("qa", "no answer to health within"),
        ("fa", "nothing in the guest accepted vsock port 10789"),
    ] {
        for method in ["health", "ping"] {
            let t = Instant::now();
            let out = h
                .banger()
                .args(["--json", "vm", method, name])
                .output()
                .unwrap();
            let took = t.elapsed();
            assert!(!out.status.success(), "an unanswered agent is not healthy");
            let r: Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(r["healthy"], false, "{r}");
            assert_eq!(r["checked"], "agent", "{r}");
            let detail = r["detail"].as_str().unwrap();
            eprintln!("vm {method} {name}: {detail} ({took:?})");
            assert!(
                detail.starts_with(&format!("agent not answering on VM {name}: ")),
                "{detail}"
            );
            assert!(detail.contains(why), "{detail}");
            assert!(
                took < Duration::from_secs(6),
                "{method} {name} took {took:?}"
            );
        }
        let t = Instant::now();
        let err = h.fails(&["vm", "ports", name]);
        assert!(
            err.contains(&format!("agent not answering on VM {name}")),
            "{err}"
        );
        assert!(t.elapsed() < Duration::from_secs(6));
    }

    // Stop asks the agent first (it does not answer), then escalates.
    for name in ["qa", "fa"] {
        let r = h.json(&["vm", "stop", name, "--timeout", "1"]);
        let by = r[0]["ended_by"].as_str().unwrap();
        assert!(by == "sigterm" || by == "sigkill", "{r}");
        let stages: Vec<&str> = r[0]["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(stages[0], "agent-poweroff", "{stages:?}");
    }

    // auto picks what doctor says for this host.
    let v = h.json(&[
        "vm",
        "create",
        "--name",
        "au",
        "--image",
        "pvh",
        "--vmm",
        "auto",
        "--no-start",
        "--disk-size",
        "128M",
    ]);
    let picked = v["vm"]["vmm"].as_str().unwrap();
    assert_eq!(
        picked,
        common::expected_auto_vmm(),
        "what auto must pick here"
    );
    let doctor = h.ok(&["doctor"]);
    assert!(doctor.contains(&format!("auto picks {picked}")), "{doctor}");
    assert!(h
        .fails(&["vm", "create", "--name", "bad", "--vmm", "bhyve"])
        .contains("bhyve"));

    for name in ["qa", "fa", "au"] {
        h.ok(&["vm", "delete", name]);
    }
    common::assert_no_vm_leftovers(&h);
}

/// The daemon side end to end with an agent that answers: a QEMU VM whose
/// image has the `agent` feature, and the real agent code (crates/agent)
/// serving where the guest's end would be — the VM's `agent.sock` path is
/// re-bound by this test (the PVH stub runs no agent). The agent reads this
/// host's /proc, so it reports the host's hostname and sockets. Its
/// `poweroff` ends the QEMU process, as the guest's reset would under
/// `-no-reboot`, so `vm stop` is ended by the guest.
#[test]
fn a_stand_in_agent_answers_health_ports_and_stop() {
    use std::os::unix::net::UnixListener;

    require_root();
    let mut h = Home::new();
    h.start_daemon();
    pvh_images(&h);
    let vm = create(&h, "qs", "pvh-agent", "qemu", &[]);
    let pid = pid_of(&vm);
    let run_dir = Path::new(vm["api_socket"].as_str().unwrap())
        .parent()
        .unwrap()
        .to_path_buf();
    let sock = run_dir.join("agent.sock");
    std::fs::remove_file(&sock).unwrap();
    let listener = UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            std::thread::spawn(move || {
                let agent = banger_agent::Agent::with_poweroff(move || {
                    common::kill(pid, libc::SIGTERM);
                    Ok(())
                });
                let _ = banger_agent::serve(&agent, conn);
            });
        }
    });

    let health = h.json(&["vm", "health", "qs"]);
    assert_eq!(health["healthy"], true, "{health}");
    assert_eq!(health["checked"], "agent");
    assert_eq!(health["vmm_state"], "Running");
    let hostname = rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned();
    assert_eq!(health["agent"]["hostname"], hostname.as_str(), "{health}");
    assert_eq!(health["agent"]["boot_id"].as_str().unwrap().len(), 36);
    let detail = health["detail"].as_str().unwrap();
    assert!(detail.starts_with("agent "), "{detail}");
    let ping = h.json(&["vm", "ping", "qs"]);
    assert_eq!(
        (ping["healthy"].as_bool(), ping["checked"].as_str()),
        (Some(true), Some("agent"))
    );
    assert!(ping["latency_ms"].as_f64().unwrap() < 3000.0, "{ping}");
    assert!(h.ok(&["vm", "ping", "qs"]).contains("(agent) in"));

    // A loopback-only socket of ours: listed with its process, no endpoint.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let ports = h.json(&["vm", "ports", "qs"]);
    assert_eq!(ports["dns_name"], "qs.vm");
    let rows = ports["ports"].as_array().unwrap();
    let mine = rows
        .iter()
        .find(|p| p["port"] == port && p["proto"] == "tcp")
        .unwrap_or_else(|| panic!("port {port} missing: {ports}"));
    assert_eq!(mine["address"], "127.0.0.1");
    assert_eq!(mine["pid"], std::process::id());
    assert!(
        mine["endpoint"].is_null() && mine["url"].is_null(),
        "{mine}"
    );
    for p in rows {
        if p["address"] == "0.0.0.0" {
            let n = &p["port"];
            assert_eq!(p["endpoint"], format!("qs.vm:{n}").as_str(), "{p}");
            if p["proto"] == "tcp" {
                assert_eq!(p["url"], format!("http://qs.vm:{n}/").as_str(), "{p}");
            }
        }
    }
    let text = h.ok(&["vm", "ports", "qs"]);
    assert!(text.starts_with("PROTO"), "{text}");
    assert!(
        text.contains("127.0.0.1  ") && text.contains("guest only"),
        "{text}"
    );

    // Stop: the agent's poweroff ends the VMM, so the guest ended it.
    let t = Instant::now();
    let r = h.json(&["vm", "stop", "qs"]);
    assert_eq!(r[0]["ended_by"], "guest", "{r}");
    assert_eq!(r[0]["stages"][0]["name"], "agent-poweroff", "{r}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    common::wait_gone(pid);
    drop(l);
    h.ok(&["vm", "delete", "qs"]);
    common::assert_no_vm_leftovers(&h);
}
