//! The `full` image (Docker, build tools) on banger's microVM kernel, booted
//! for real (QEMU; TCG on machines without usable KVM): Docker's daemon
//! starts in the guest, with cgroup v2, overlay2, seccomp and its bridge
//! network, so the kernel fragment keeps what Docker needs; under the
//! overlay root, `/var/lib/docker` is ext4 (overlay2 refuses overlayfs). The first run on
//! a machine builds the `full` image (mmdebstrap: a few minutes); later runs
//! find it in the shared cache.
//!
//! Not exercised here: `docker run` of a real image (the guest has no
//! registry to pull from without NAT to the outside, which tests never use).

mod common;

use common::guest::build_home;
use common::require_root;
use serde_json::Value;

/// `banger vm exec d1 -- CMD...` from the test's namespace.
fn in_guest(h: &common::Home, cmd: &[&str]) -> std::process::Output {
    h.banger_in_netns()
        .args(["vm", "exec", "d1", "--"])
        .args(cmd)
        .output()
        .unwrap()
}

#[test]
fn docker_starts_in_a_full_guest() {
    require_root();
    let vmm = std::env::var("BANGER_E2E_VMM").unwrap_or_else(|_| "qemu".into());
    let mut h = build_home();
    // Built (or found in the cache) by a daemon in the host's namespace: the
    // image build needs Debian's mirror.
    h.ok(&["kernel", "build", "--name", "full-kernel"]);
    h.ok(&[
        "image",
        "build",
        "debian-bookworm",
        "--variant",
        "full",
        "--name",
        "full",
        "--kernel",
        "full-kernel",
    ]);
    h.ok(&["daemon", "stop"]);
    h.start_daemon();
    let created = h.json(&[
        "vm",
        "create",
        "--name",
        "d1",
        "--image",
        "full",
        "--vmm",
        &vmm,
        "--vcpu",
        "2",
        "--memory",
        "1G",
        "--disk-size",
        "2G",
    ]);
    assert_eq!(created["vm"]["state"], "running", "{created}");

    // dockerd starts at boot (socket-activated or by its unit); `docker
    // info` waits for it. Slow under TCG, hence the generous bound.
    let out = in_guest(
        &h,
        &["timeout", "600", "docker", "info", "--format", "{{json .}}"],
    );
    let journal = if out.status.success() {
        String::new()
    } else {
        let j = in_guest(&h, &["journalctl", "-u", "docker", "-b", "--no-pager"]);
        String::from_utf8_lossy(&j.stdout).into_owned()
    };
    // Under the overlay root, Docker's state is on the overlay disk's ext4
    // (bind-mounted by banger's init), not on overlayfs.
    let fstype = in_guest(
        &h,
        &[
            "findmnt",
            "-n",
            "-o",
            "FSTYPE",
            "--target",
            "/var/lib/docker",
        ],
    );
    let root_fs = in_guest(&h, &["findmnt", "-n", "-o", "FSTYPE", "/"]);
    // dockerd made its bridge (needs bridge, veth and the nftables/iptables
    // NAT rules in the kernel).
    let bridge = in_guest(&h, &["ip", "-o", "link", "show", "docker0"]);
    let deleted = h
        .banger()
        .args(["vm", "delete", "-f", "d1"])
        .output()
        .unwrap();
    common::assert_success(&deleted, &["vm", "delete"]);
    assert!(
        out.status.success(),
        "docker info failed ({}):\nstdout: {}\nstderr: {}\ndocker's journal:\n{journal}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let info: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "docker info JSON: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    eprintln!(
        "docker {} in the guest: cgroup v{}, storage {}, security {}, warnings {}",
        info["ServerVersion"],
        info["CgroupVersion"],
        info["Driver"],
        info["SecurityOptions"],
        info["Warnings"]
    );
    assert!(
        info["ServerVersion"]
            .as_str()
            .is_some_and(|v| !v.is_empty()),
        "{info}"
    );
    assert_eq!(info["CgroupVersion"], "2", "{info}");
    assert_eq!(info["Driver"], "overlay2", "{info}");
    assert!(
        info["SecurityOptions"].to_string().contains("seccomp"),
        "{}",
        info["SecurityOptions"]
    );
    common::assert_success(&bridge, &["ip", "link", "show", "docker0"]);
    assert_eq!(
        String::from_utf8_lossy(&root_fs.stdout).trim(),
        "overlay",
        "{root_fs:?}"
    );
    assert_eq!(
        String::from_utf8_lossy(&fstype.stdout).trim(),
        "ext4",
        "{fstype:?}"
    );
}
