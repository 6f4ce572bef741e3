//! SSH access without trust-on-first-use, against a real sshd: the daemon
//! writes a per-VM host key and the owner's key onto the work disk at
//! create, serves the pinned keys to OpenSSH, and `banger vm ssh` runs the
//! system ssh with them. The stub guest has no sshd, so a network namespace
//! holding the VM's address runs a real one with the keys from the work disk.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};

use banger_proto::guest;
use common::{require_root, Home};

fn debugfs_cat(image: &str, path: &str) -> Vec<u8> {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}"), image])
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

struct Sshd(Child, String);

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = Command::new("ip").args(["netns", "del", &self.1]).status();
    }
}

/// A namespace on the bridge with `ip`, running sshd with `host_key` and
/// `authorized_keys`.
fn fake_guest_sshd(
    host_ns: &str,
    ip: &str,
    dir: &std::path::Path,
    host_key: &[u8],
    authorized: &[u8],
) -> Sshd {
    let sshd = ["/usr/sbin/sshd", "/sbin/sshd"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .expect("a real sshd is needed: apt-get install openssh-server (install.sh does)");
    let ns = format!("banger-s-{}", &banger_core::ids::new_id()[..8]);
    let run = |args: &[&str]| {
        assert!(
            Command::new("ip").args(args).status().unwrap().success(),
            "ip {args:?}"
        )
    };
    run(&["netns", "add", &ns]);
    let veth = format!("vs{}", &ns[9..15]);
    run(&[
        "-n", host_ns, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
    ]);
    run(&[
        "-n",
        host_ns,
        "link",
        "set",
        &veth,
        "master",
        "br-banger",
        "up",
    ]);
    run(&["-n", &ns, "link", "set", "lo", "up"]);
    run(&["-n", &ns, "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
    run(&["-n", &ns, "link", "set", "eth0", "up"]);
    let key = dir.join("host_key");
    std::fs::write(&key, host_key).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let auth = dir.join("authorized_keys");
    std::fs::write(&auth, authorized).unwrap();
    std::fs::create_dir_all("/run/sshd").unwrap();
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            sshd,
            "-D",
            "-e",
            "-f",
            "/dev/null",
            "-o",
            "Port=22",
        ])
        .arg("-o")
        .arg(format!("HostKey={}", key.display()))
        .arg("-o")
        .arg(format!("AuthorizedKeysFile={}", auth.display()))
        .args([
            "-o",
            "PermitRootLogin=prohibit-password",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "KbdInteractiveAuthentication=no",
            "-o",
            "UsePAM=no",
            "-o",
            "StrictModes=no",
            "-o",
            "PidFile=none",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let me = Sshd(child, ns);
    common::eventually(10, "sshd listening", || {
        let out = Command::new("ip")
            .args(["netns", "exec", &me.1, "ss", "-ltn"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .contains(":22 ")
            .then_some(())
    });
    me
}

#[test]
fn vm_ssh_uses_pinned_keys_written_at_create() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    common::stub_image(&h);
    common::stub_image_with(&h, "stub-ssh", "ssh");
    let ns = h.netns();
    // A VM without sshd brings the bridge up.
    h.ok(&[
        "vm",
        "create",
        "--name",
        "plain",
        "--memory",
        "128M",
        "--disk-size",
        "128M",
    ]);
    let vm = h.json(&[
        "vm",
        "create",
        "--name",
        "s1",
        "--image",
        "stub-ssh",
        "--no-start",
        "--memory",
        "128M",
        "--disk-size",
        "128M",
    ])["vm"]
        .clone();
    let ip = vm["network"]["ip"].as_str().unwrap().to_string();
    let work = vm["work_disk"]["path"].as_str().unwrap().to_string();

    // The work disk holds the VM's own host key and its owner's public key.
    let host_key = debugfs_cat(&work, guest::HOST_KEY_PATH);
    let host_pub =
        String::from_utf8(debugfs_cat(&work, &format!("{}.pub", guest::HOST_KEY_PATH))).unwrap();
    let authorized = debugfs_cat(&work, guest::AUTHORIZED_KEYS_PATH);
    assert!(String::from_utf8_lossy(&host_key).contains("OPENSSH PRIVATE KEY"));
    assert!(String::from_utf8_lossy(&authorized).starts_with("ssh-ed25519 "));
    // Pinned at once: OpenSSH's KnownHostsCommand gets exactly that key.
    let known = h.ok(&["ssh-known-hosts"]);
    let key_body: Vec<&str> = host_pub.split_whitespace().take(2).collect();
    assert!(
        known.contains(&format!("s1.vm,{ip} {}", key_body.join(" "))),
        "{known}"
    );

    let dir = tempfile::tempdir().unwrap();
    let sshd = fake_guest_sshd(&ns, &ip, dir.path(), &host_key, &authorized);
    // `vm start` waits for sshd before it says running.
    let r = h.json(&["vm", "start", "s1"]);
    let stages: Vec<&str> = r[0]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(stages.contains(&"ssh"), "{stages:?}");

    let ssh = |args: &[&str]| {
        h.banger_in_netns()
            .args(["vm", "ssh", "s1", "--"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = ssh(&["echo", "hello-from-guest"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "hello-from-guest"
    );
    let out = ssh(&["exit", "3"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "the remote exit status propagates"
    );
    // With --json the guest command's output and status are captured, and
    // the status is still ours.
    let out = h
        .banger_in_netns()
        .args(["--json", "vm", "ssh", "s1", "--"])
        .args(["sh", "-c", "echo out; echo err >&2; exit 4"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["exit_code"], 4, "{v}");
    assert_eq!(v["stdout"], "out\n", "{v}");
    assert!(v["stderr"].as_str().unwrap().contains("err"), "{v}");

    // A changed host key is an error, never a prompt.
    drop(sshd);
    let (other_key, _) = {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        assert!(Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&p)
            .status()
            .unwrap()
            .success());
        (std::fs::read(&p).unwrap(), d)
    };
    // The impostor has a new MAC: forget the old one rather than wait for ARP.
    assert!(Command::new("ip")
        .args(["-n", &ns, "neigh", "flush", "dev", "br-banger"])
        .status()
        .unwrap()
        .success());
    let _impostor = fake_guest_sshd(&ns, &ip, dir.path(), &other_key, &authorized);
    let out = ssh(&["true"]);
    assert_eq!(out.status.code(), Some(255));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Host key verification failed")
            || err.contains("HOST IDENTIFICATION HAS CHANGED"),
        "{err}"
    );

    // Deleting the VM removes its entry.
    h.ok(&["vm", "delete", "-f", "s1", "plain"]);
    assert!(!h.ok(&["ssh-known-hosts"]).contains("s1.vm"));
}

#[test]
fn ssh_config_install_is_idempotent_and_leaves_other_lines_alone() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    let cfg = h.path().join("user-home/.ssh/config");
    std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
    std::fs::write(&cfg, "Host work\n  User me\n").unwrap();
    h.ok(&["ssh-config", "--install"]);
    let once = std::fs::read_to_string(&cfg).unwrap();
    h.ok(&["ssh-config", "--install"]);
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), once, "idempotent");
    assert!(
        once.contains("Include ") && once.ends_with("Host work\n  User me\n"),
        "{once}"
    );
    let ours = h.path().join("user-home/.config/banger/ssh/config");
    let text = std::fs::read_to_string(&ours).unwrap();
    assert!(
        text.contains("Host *.vm")
            && text.contains("KnownHostsCommand")
            && text.contains("StrictHostKeyChecking yes"),
        "{text}"
    );
    let key = h.path().join("user-home/.config/banger/ssh/id_ed25519");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    h.ok(&["ssh-config", "--uninstall"]);
    assert_eq!(
        std::fs::read_to_string(&cfg).unwrap(),
        "Host work\n  User me\n"
    );
    assert!(!ours.exists());
}
