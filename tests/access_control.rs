//! Who may do what: the socket's mode and group, peer credentials, per-user
//! visibility, and the rule that the root daemon never opens a path for a
//! caller (files travel as descriptors the caller opened).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;

use common::raw::{code, Raw};
use common::{fixtures, require_root, Home, NOBODY};
use serde_json::json;

#[test]
fn socket_is_0660_with_the_configured_group() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    let md = std::fs::metadata(h.socket()).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o660);
    assert_eq!(md.gid(), NOBODY);
    // State is private to the daemon.
    let st = std::fs::metadata(h.state()).unwrap();
    assert_eq!(st.permissions().mode() & 0o777, 0o700);
}

#[test]
fn a_user_cannot_make_the_daemon_read_a_root_only_file() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    // Root's kernel, visible to everyone.
    let k = h.path().join("k.vmlinux");
    fixtures::write_stub_kernel(&k);
    h.ok(&["kernel", "import", k.to_str().unwrap(), "--name", "shared"]);

    // A file only root can read.
    let secret = h.path().join("secret.ext4");
    fixtures::ext4(&secret, 8);
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();

    // Through the CLI as nobody: refused when opening, before the daemon is asked.
    let out = h
        .banger_as(NOBODY, NOBODY)
        .args([
            "image", "register", "--name", "stolen", "--kernel", "shared", "--rootfs",
        ])
        .arg(&secret)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Permission denied"), "{err}");

    // Straight at the socket as nobody: there is no way to name a path.
    let mut c = raw_as_nobody(&h);
    let r = c.call(
        1,
        "image.register.begin",
        json!({
            "name": "stolen", "kernel": "shared", "rootfs": secret.to_str().unwrap()
        }),
    );
    assert_eq!(code(&r), -32602, "{r}");
    let r = c.call(
        2,
        "image.register.begin",
        json!({
            "name": "stolen", "kernel": "shared", "rootfs": {"fd": 0}
        }),
    );
    assert_eq!(code(&r), -32602, "no descriptor sent: {r}");
    assert!(r["error"]["message"]
        .as_str()
        .unwrap()
        .contains("descriptor"));

    assert!(h.json(&["image", "list"]).as_array().unwrap().is_empty());
}

#[test]
fn users_see_their_own_and_roots_objects_only() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    let k = h.path().join("k.vmlinux");
    fixtures::write_stub_kernel(&k);
    h.ok(&["kernel", "import", k.to_str().unwrap(), "--name", "rootk"]);

    // nobody imports its own kernel from a file it can read.
    let mine = h.path().join("mine.vmlinux");
    fixtures::write_stub_kernel(&mine);
    std::fs::set_permissions(&mine, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = h
        .banger_as(NOBODY, NOBODY)
        .args([
            "--json",
            "kernel",
            "import",
            mine.to_str().unwrap(),
            "--name",
            "nobodyk",
        ])
        .output()
        .unwrap();
    common::assert_success(&out, &["kernel import as nobody"]);

    let names = |uid: u32| -> Vec<String> {
        let out = h
            .banger_as(uid, uid)
            .args(["--json", "kernel", "list"])
            .output()
            .unwrap();
        common::assert_success(&out, &["kernel list"]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .map(|k| k["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(0), ["nobodyk", "rootk"], "root sees all");
    assert_eq!(
        names(NOBODY),
        ["nobodyk", "rootk"],
        "nobody sees its own and root's"
    );

    // Another uid in the socket group sees only root's kernel...
    let other = 65533;
    let out = h
        .banger()
        .uid(other)
        .gid(NOBODY)
        .args(["--json", "kernel", "list"])
        .output()
        .unwrap();
    common::assert_success(&out, &["kernel list as 65533"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["name"], "rootk");
    // ...cannot see nobody's, and cannot delete root's.
    let out = h
        .banger()
        .uid(other)
        .gid(NOBODY)
        .args(["kernel", "rm", "nobodyk"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let out = h
        .banger()
        .uid(other)
        .gid(NOBODY)
        .args(["kernel", "rm", "rootk"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("only its owner or root"));

    // Non-root cannot stop the daemon.
    let mut c = raw_as_nobody(&h);
    let r = c.call(1, "daemon.shutdown", json!({}));
    assert_eq!(code(&r), -32005);
}

#[test]
fn users_outside_the_socket_group_cannot_connect() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    let out = h
        .banger()
        .uid(65533)
        .gid(65533)
        .args(["kernel", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("permission denied") && err.contains("banger"),
        "{err}"
    );
}

/// `[[file_sync]]`: the CLI reads host files with the user's rights, so a
/// file only root can read is refused for nobody by the CLI itself, before
/// any VM or daemon is asked (the VM named does not even exist), and the
/// daemon never opens it.
#[test]
fn file_sync_of_a_root_only_file_is_refused_by_the_cli() {
    require_root();
    let mut h = Home::new();
    let secret = h.path().join("secret.npmrc");
    std::fs::write(&secret, "//registry/:_authToken=root-only\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    h.config(&format!(
        "[[file_sync]]\nhost = \"{}\"\nguest = \"~/.npmrc\"\nmode = \"0600\"\n",
        secret.display()
    ));
    h.start_daemon();
    let (kind, msg) = nobody_fails(&h, &["vm", "sync", "no-such-vm"]);
    assert_eq!(kind, "permission_denied", "{msg}");
    assert!(
        msg.contains("secret.npmrc")
            && msg.contains("Permission denied")
            && msg.contains("file_sync"),
        "{msg}"
    );
    // Root can read it: past the file, the VM is what is missing.
    let out = h
        .banger()
        .args(["--json", "vm", "sync", "no-such-vm"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "not_found", "{v}");
    // A guest path outside /root is refused before anything is read.
    let h2 = Home::new();
    h2.config("[[file_sync]]\nhost = \"/etc/hostname\"\nguest = \"/etc/passwd\"\n");
    let out = h2
        .banger()
        .args(["--json", "vm", "sync", "x"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"]["kind"], "invalid_params", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("under /root"),
        "{v}"
    );
}

/// A raw connection whose peer credentials say nobody: SO_PEERCRED records
/// the connecting process, so a child running as nobody connects and hands
/// the connected socket back to us over a socketpair (SCM_RIGHTS).
fn raw_as_nobody(h: &Home) -> Raw {
    use std::os::unix::process::CommandExt;
    let script = format!(
        "import socket,os,sys,array\n\
         s=socket.socket(socket.AF_UNIX);s.connect({sock:?})\n\
         p=socket.socket(socket.AF_UNIX,fileno=3)\n\
         p.sendmsg([b'x'],[(socket.SOL_SOCKET,socket.SCM_RIGHTS,array.array('i',[s.fileno()]))])\n",
        sock = h.socket().to_str().unwrap()
    );
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let theirs_fd = std::os::fd::AsRawFd::as_raw_fd(&theirs);
    let mut cmd = std::process::Command::new("python3");
    cmd.arg("-c").arg(script).uid(NOBODY).gid(NOBODY);
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(theirs_fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let st = cmd.status().unwrap();
    assert!(st.success(), "helper failed to connect as nobody");
    drop(theirs);
    let fd = recv_fd(&ours);
    Raw::from_stream(std::os::unix::net::UnixStream::from(fd))
}

fn recv_fd(s: &std::os::unix::net::UnixStream) -> std::os::fd::OwnedFd {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut space = [0u8; rustix::cmsg_space!(ScmRights(1))];
    let mut anc = RecvAncillaryBuffer::new(&mut space);
    let mut buf = [0u8; 1];
    rustix::net::recvmsg(
        s,
        &mut [std::io::IoSliceMut::new(&mut buf)],
        &mut anc,
        RecvFlags::empty(),
    )
    .unwrap();
    for m in anc.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = m {
            return fds.next().unwrap();
        }
    }
    panic!("no descriptor received");
}

/// `banger --json ARGS` as nobody, expected to fail: the error's kind.
fn nobody_fails(h: &Home, args: &[&str]) -> (String, String) {
    let out = h
        .banger_as(NOBODY, NOBODY)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "banger {args:?} as nobody should have failed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not JSON ({e}): {} / {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    // Commands over several names (vm stop/start/rm) answer a list.
    let e = if v.is_array() {
        &v[0]["error"]
    } else if v["failed"].is_array() {
        &v["failed"][0]["error"]
    } else {
        &v["error"]
    };
    (
        e["kind"].as_str().unwrap_or_default().to_string(),
        format!("{v}"),
    )
}

fn nobody_json(h: &Home, args: &[&str]) -> serde_json::Value {
    let out = h
        .banger_as(NOBODY, NOBODY)
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    common::assert_success(&out, args);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A readable stub kernel file for nobody.
fn nobody_kernel_file(h: &Home, name: &str) -> std::path::PathBuf {
    let k = h.path().join(name);
    fixtures::write_stub_kernel(&k);
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o644)).unwrap();
    k
}

/// Issue 9 §1: a user who takes a default name first would get their kernel
/// or image into every user's default. The default names are root's only.
#[test]
fn a_user_cannot_take_a_default_name() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    let k = nobody_kernel_file(&h, "mine.vmlinux");
    let (kind, msg) = nobody_fails(
        &h,
        &[
            "kernel",
            "import",
            k.to_str().unwrap(),
            "--name",
            "banger-6-1",
        ],
    );
    assert_eq!(kind, "permission_denied", "{msg}");
    assert!(msg.contains("reserved"), "{msg}");

    // With a kernel of its own, nobody cannot register the default image's name.
    nobody_json(
        &h,
        &["kernel", "import", k.to_str().unwrap(), "--name", "nk"],
    );
    let rootfs = h.path().join("n-root.ext4");
    fixtures::ext4(&rootfs, 8);
    std::fs::set_permissions(&rootfs, std::fs::Permissions::from_mode(0o644)).unwrap();
    for name in ["debian-bookworm", "debian-bookworm-full"] {
        let (kind, msg) = nobody_fails(
            &h,
            &[
                "image",
                "register",
                "--name",
                name,
                "--kernel",
                "nk",
                "--rootfs",
                rootfs.to_str().unwrap(),
            ],
        );
        assert_eq!(kind, "permission_denied", "{name}: {msg}");
        assert!(msg.contains("reserved"), "{msg}");
    }
    // Root's shared image may not use nobody's kernel either.
    let e = h.fails(&[
        "image",
        "register",
        "--name",
        "rooty",
        "--kernel",
        "nk",
        "--rootfs",
        rootfs.to_str().unwrap(),
    ]);
    assert!(e.contains("kernel must be root's"), "{e}");

    // A custom-config kernel build under the default name is refused for
    // nobody before any build starts; so is --replace of root's kernel.
    let tarball = std::path::Path::new("/usr/src/linux-source-6.1.tar.xz");
    assert!(
        tarball.is_file(),
        "this test needs linux-source-6.1 installed (apt-get install linux-source-6.1)"
    );
    let frag = h.path().join("frag.config");
    std::fs::write(&frag, "CONFIG_PVH=y\nCONFIG_NR_CPUS=4\n").unwrap();
    std::fs::set_permissions(&frag, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (kind, msg) = nobody_fails(&h, &["kernel", "build", "--config", frag.to_str().unwrap()]);
    assert_eq!(kind, "permission_denied", "{msg}");
    assert!(msg.contains("reserved"), "{msg}");
    // Root holds the name (root may import under it).
    let rk = h.path().join("root.vmlinux");
    fixtures::write_stub_kernel(&rk);
    h.ok(&[
        "kernel",
        "import",
        rk.to_str().unwrap(),
        "--name",
        "banger-6-1",
    ]);
    let (kind, msg) = nobody_fails(&h, &["kernel", "build", "--replace"]);
    assert_eq!(kind, "permission_denied", "{msg}");
    assert!(msg.contains("only its owner or root"), "{msg}");
    // Nothing changed, and no build ran.
    let ks = h.json(&["kernel", "list"]);
    let mut got: Vec<(String, u64)> = ks
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["name"].as_str().unwrap().to_string(),
                k["owner_uid"].as_u64().unwrap(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("banger-6-1".to_string(), 0),
            ("nk".to_string(), NOBODY as u64)
        ]
    );
    let ops = h.json(&["op", "list", "--all"]);
    assert!(
        !ops.as_array()
            .unwrap()
            .iter()
            .any(|o| o["kind"] == "kernel.build"),
        "{ops}"
    );
}

/// Issue 9 §1: root promoting a user's image would make it every user's
/// fallback default while that user can still replace or delete it.
#[test]
fn another_users_image_cannot_be_promoted() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    common::stub_image(&h);
    let k = nobody_kernel_file(&h, "mine.vmlinux");
    nobody_json(
        &h,
        &["kernel", "import", k.to_str().unwrap(), "--name", "nk"],
    );
    let rootfs = h.path().join("n-root.ext4");
    fixtures::ext4(&rootfs, 8);
    std::fs::set_permissions(&rootfs, std::fs::Permissions::from_mode(0o644)).unwrap();
    nobody_json(
        &h,
        &[
            "image",
            "register",
            "--name",
            "nimg",
            "--kernel",
            "nk",
            "--rootfs",
            rootfs.to_str().unwrap(),
        ],
    );
    let e = h.fails(&["image", "promote", "nimg"]);
    assert!(e.contains("only its owner"), "{e}");
    // Root's default is still root's; nobody may promote its own for itself,
    // but not root's image away from others.
    let shown = h.json(&["image", "show", "stub"]);
    assert_eq!(shown["default"], true, "{shown}");
    let mine = nobody_json(&h, &["image", "promote", "nimg"]);
    assert_eq!(mine["default"], true);
    let shown = h.json(&["image", "show", "stub"]);
    assert_eq!(shown["default"], true, "root's default unchanged: {shown}");
    let theirs = nobody_json(&h, &["image", "show", "stub"]);
    assert_eq!(theirs["default"], false);
}

/// Issue 9 §3, §4 and the cross-user tests: as another user, root's VM and
/// operations are not found, nothing changes, and `used_by` and the listings
/// never name them.
#[test]
fn another_user_cannot_touch_or_see_a_vm_or_its_operations() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    common::stub_image(&h);
    h.json(&[
        "vm",
        "create",
        "--name",
        "rootvm",
        "--no-start",
        "--disk-size",
        "64M",
    ]);
    let ops = h.json(&["op", "list", "--all"]);
    let op_id = ops[0]["id"].as_str().unwrap().to_string();

    for args in [
        &["vm", "stop", "rootvm"][..],
        &["vm", "rm", "rootvm"],
        &["vm", "logs", "rootvm"],
        &["vm", "ports", "rootvm"],
        &["vm", "port", "add", "rootvm", "8080:80"],
        &["vm", "start", "rootvm"],
        &["vm", "pause", "rootvm"],
        &["vm", "resume", "rootvm"],
        &["unpause", "rootvm"],
        &["vm", "show", "rootvm"],
        &["op", "wait", &op_id],
        &["op", "cancel", &op_id],
        &["op", "show", &op_id],
    ] {
        let (kind, msg) = nobody_fails(&h, args);
        assert_eq!(kind, "not_found", "{args:?}: {msg}");
    }
    let vm = h.json(&["vm", "show", "rootvm"]);
    assert_eq!(vm["state"], "stopped");
    assert!(h
        .json(&["vm", "port", "list", "rootvm"])
        .as_array()
        .unwrap()
        .is_empty());

    // Listings: nothing of root's; used_by: only the caller's VMs.
    assert!(nobody_json(&h, &["vm", "list", "-a"])
        .as_array()
        .unwrap()
        .is_empty());
    assert!(nobody_json(&h, &["op", "list", "--all"])
        .as_array()
        .unwrap()
        .is_empty());
    let theirs = nobody_json(&h, &["image", "show", "stub"]);
    assert_eq!(theirs["used_by"], serde_json::json!([]), "{theirs}");
    let ks = nobody_json(&h, &["kernel", "show", "stub"]);
    assert!(
        !ks["used_by"].to_string().contains("rootvm"),
        "kernel used_by names root's VM: {ks}"
    );
    let root_view = h.json(&["image", "show", "stub"]);
    assert_eq!(root_view["used_by"], serde_json::json!(["rootvm"]));

    // The daemon log (names, uids) is root's.
    let (kind, msg) = nobody_fails(&h, &["daemon", "logs"]);
    assert_eq!(kind, "permission_denied", "{msg}");

    // The per-VM runtime dir holds VMM sockets: 0700 when it exists.
    let run_vms = h.path().join("run/vms");
    let md = std::fs::metadata(&run_vms).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o700);
    h.ok(&["vm", "rm", "rootvm"]);
}

/// Issue 9 §3: per-user limits from the config; root is exempt.
#[test]
fn per_user_limits_hold_for_users_and_not_for_root() {
    require_root();
    let mut h = Home::new();
    h.config("[limits]\nvms = 1\nvcpus = 4");
    h.start_daemon();
    common::stub_image(&h);
    let create = |name: &str, vcpus: &str| {
        vec![
            "vm",
            "create",
            "--name",
            name,
            "--no-start",
            "--disk-size",
            "64M",
            "--memory",
            "128M",
            "--vcpu",
        ]
        .into_iter()
        .map(String::from)
        .chain([vcpus.to_string()])
        .collect::<Vec<String>>()
    };
    fn args(v: &[String]) -> Vec<&str> {
        v.iter().map(String::as_str).collect()
    }
    let too_many = create("n0", "8");
    let (kind, msg) = nobody_fails(&h, &args(&too_many));
    assert_eq!(kind, "precondition_failed", "{msg}");
    assert!(msg.contains("[limits] vcpus"), "{msg}");
    nobody_json(&h, &args(&create("n1", "1")));
    let (kind, msg) = nobody_fails(&h, &args(&create("n2", "1")));
    assert_eq!(kind, "precondition_failed", "{msg}");
    assert!(msg.contains("[limits] vms"), "{msg}");
    assert_eq!(
        nobody_json(&h, &["vm", "list", "-a"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // Root is exempt.
    h.json(&args(&create("r1", "8")));
    h.json(&args(&create("r2", "1")));
    h.ok(&["vm", "rm", "n1", "r1", "r2"]);
}

/// Issue 9 §2: a user's VM may not publish a privileged host port (the user
/// could not bind one either), at create or later; root's may (tests/network.rs).
#[test]
fn a_user_cannot_publish_a_privileged_port() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    common::stub_image(&h);
    let base = [
        "vm",
        "create",
        "--no-start",
        "--disk-size",
        "64M",
        "--memory",
        "128M",
    ];
    let with = |extra: &[&'static str]| -> Vec<&'static str> {
        base.iter().copied().chain(extra.iter().copied()).collect()
    };
    let (kind, msg) = nobody_fails(&h, &with(&["--name", "np0", "-p", "22:22"]));
    assert_eq!(kind, "precondition_failed", "{msg}");
    assert!(msg.contains("privileged"), "{msg}");
    assert!(
        nobody_json(&h, &["vm", "list", "-a"])
            .as_array()
            .unwrap()
            .is_empty(),
        "a refused create leaves no VM"
    );
    nobody_json(&h, &with(&["--name", "np1"]));
    for port in ["80:80", "127.0.0.1:443:8443", "1023:80/udp"] {
        let (kind, msg) = nobody_fails(&h, &["vm", "port", "add", "np1", port]);
        assert_eq!(kind, "precondition_failed", "{port}: {msg}");
        assert!(msg.contains("privileged"), "{port}: {msg}");
    }
    nobody_json(&h, &["vm", "port", "add", "np1", "18090:80"]);
    let ports = nobody_json(&h, &["vm", "port", "list", "np1"]);
    let ports = ports.as_array().unwrap();
    assert_eq!(ports.len(), 1, "{ports:?}");
    assert_eq!(ports[0]["host_port"], 18090);
    nobody_json(&h, &["vm", "rm", "np1"]);
}
