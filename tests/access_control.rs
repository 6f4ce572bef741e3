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
