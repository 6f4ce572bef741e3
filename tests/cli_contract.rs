//! The CLI's contract with scripts (docs/json.md): `--json` errors on stdout,
//! exit statuses by error kind, results that say which targets failed, and
//! the docker-style habits (`ps -q`, `stop -t`, `logs --tail`, top-level
//! shortcuts) with the real daemon and Firecracker's stub guest.

mod common;

use std::process::Output;

use common::{require_root, Home};
use serde_json::{json, Value};

/// Runs `banger ARGS`; returns (exit code, stdout, stderr).
fn run(h: &Home, args: &[&str]) -> (i32, String, String) {
    let out: Output = h.banger().args(args).output().unwrap();
    (
        out.status.code().expect("exited, not signalled"),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// Runs `banger --json ARGS` expecting failure with `code`; returns the
/// parsed stdout (which must be JSON, and the only thing on stdout).
fn json_fails(h: &Home, args: &[&str], code: i32) -> Value {
    let mut full = vec!["--json"];
    full.extend_from_slice(args);
    let (got, out, err) = run(h, &full);
    assert_eq!(got, code, "banger {full:?}: stdout {out} stderr {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{full:?}: not JSON ({e}): {out}"))
}

fn kind(v: &Value) -> &str {
    v["error"]["kind"].as_str().unwrap_or_else(|| panic!("{v}"))
}

#[test]
fn errors_have_json_and_exit_codes_by_kind() {
    require_root();
    let mut h = Home::new();

    // No daemon, and this command never starts one: daemon_unavailable (10).
    let v = json_fails(&h, &["ssh-known-hosts"], 10);
    assert_eq!(kind(&v), "daemon_unavailable");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not running"));

    // Usage errors, clap's and ours: 2, JSON with --json, stderr without.
    let v = json_fails(&h, &["vm", "frobnicate"], 2);
    assert_eq!(kind(&v), "usage");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("frobnicate"),
        "{v}"
    );
    let (code, out, err) = run(&h, &["vm", "frobnicate"]);
    assert_eq!((code, out.as_str()), (2, ""));
    assert!(err.contains("frobnicate"), "{err}");
    // Help is not an error.
    assert_eq!(run(&h, &["--help"]).0, 0);

    h.start_daemon();
    let v = json_fails(&h, &["vm", "create", "--memory", "lots", "--no-build"], 2);
    assert_eq!(kind(&v), "usage");

    // not_found (3), with the daemon's data; the human form on stderr.
    let v = json_fails(&h, &["vm", "show", "ghost"], 3);
    assert_eq!(
        v["error"],
        json!({
            "kind": "not_found",
            "message": "vm \"ghost\" not found",
            "hint": "see `banger vm list -a`",
            "data": {"resource": "vm", "name": "ghost"},
        })
    );
    let (code, out, err) = run(&h, &["vm", "show", "ghost"]);
    assert_eq!((code, out.as_str()), (3, ""));
    assert!(err.starts_with("error: vm \"ghost\" not found"), "{err}");
    assert_eq!(
        kind(&json_fails(&h, &["kernel", "rm", "ghost"], 3)),
        "not_found"
    );
    // A local file that is not there is not_found too.
    let v = json_fails(&h, &["kernel", "import", "/nonexistent", "--name", "x"], 3);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/nonexistent"),
        "{v}"
    );

    // already_exists (4).
    let k = h.path().join("stub.vmlinux");
    common::fixtures::write_stub_kernel(&k);
    h.ok(&["kernel", "import", k.to_str().unwrap(), "--name", "stub"]);
    let v = json_fails(
        &h,
        &["kernel", "import", k.to_str().unwrap(), "--name", "stub"],
        4,
    );
    assert_eq!(kind(&v), "already_exists");

    // permission_denied (7): another user may not install the service.
    let out = h
        .banger_as(common::NOBODY, common::NOBODY)
        .args(["--json", "system", "install"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(kind(&v), "permission_denied");

    // Every command's success is JSON too, even those that print text.
    let v = h.json(&["completion", "bash"]);
    assert!(v["script"].as_str().unwrap().contains("banger"));
    let logs = h.json(&["daemon", "logs"]);
    assert!(
        logs["data"].is_string() && logs["next_offset"].is_u64(),
        "{logs}"
    );
}

#[test]
fn tail_keeps_the_last_lines() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    common::stub_image(&h); // a few log lines in the daemon's log
    let full = h.ok(&["daemon", "logs"]);
    assert!(full.lines().count() > 3, "{full}");
    let tail = h.ok(&["daemon", "logs", "--tail", "3"]);
    assert_eq!(tail.lines().count(), 3, "{tail}");
    assert!(h.ok(&["daemon", "logs"]).contains(&tail));
    assert_eq!(h.ok(&["daemon", "logs", "-n", "0"]), "");
}

#[test]
fn docker_habits_and_partial_failures() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    common::stub_image(&h);
    // `banger create` is `vm create`.
    let r = h.json(&[
        "create",
        "--name",
        "p1",
        "--no-start",
        "--disk-size",
        "128M",
    ]);
    assert_eq!(r["vm"]["state"], "stopped");

    // exec on a stopped VM: invalid_state (5), saying how to start it; on
    // another user's VM: not_found (3), as if it did not exist.
    let v = json_fails(&h, &["exec", "p1", "--", "true"], 5);
    assert_eq!(kind(&v), "invalid_state");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("banger vm start p1"),
        "{v}"
    );
    let out = h
        .banger_as(common::NOBODY, common::NOBODY)
        .args(["--json", "vm", "exec", "p1", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(kind(&v), "not_found");
    // A bad -e is a usage error before anything is contacted.
    assert_eq!(run(&h, &["exec", "-e", "1X=y", "p1", "--", "true"]).0, 2);

    // One name fails, the other is done, and the JSON says which.
    let (code, out, err) = run(&h, &["--json", "vm", "start", "p1", "ghost"]);
    assert_eq!(code, 3, "{out}{err}");
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r[0]["vm"]["state"], "running");
    assert_eq!(r[1]["name"], "ghost");
    assert_eq!(r[1]["error"]["kind"], "not_found");
    // Without --json: the done one on stdout, the failed one on stderr.
    let (code, out, err) = run(&h, &["stop", "-t", "0", "ghost", "p1"]);
    assert_eq!(code, 3);
    assert!(out.starts_with("stopped p1"), "{out}");
    assert!(err.starts_with("error: ghost: "), "{err}");

    // ps / vm ls -q: names only.
    assert_eq!(h.ok(&["ps", "-q"]), "");
    assert_eq!(h.ok(&["ps", "-a", "-q"]), "p1\n");
    assert_eq!(h.json(&["vm", "ls", "-aq"]), json!(["p1"]));
    let (code, _, _) = run(&h, &["start", "p1"]);
    assert_eq!(code, 0);
    assert_eq!(h.ok(&["vm", "ls", "-q"]), "p1\n");
    let table = h.ok(&["ps"]);
    assert!(table.starts_with("NAME") && table.contains("p1"), "{table}");

    // invalid_state (5): already running.
    let v = json_fails(&h, &["start", "p1"], 5);
    assert_eq!(v[0]["error"]["kind"], "invalid_state", "{v}");
    let v = json_fails(&h, &["image", "delete", "stub"], 5);
    assert_eq!(kind(&v), "invalid_state");

    // logs --tail: the last N lines of what `logs` prints.
    common::eventually(10, "Firecracker's log", || {
        (h.ok(&["vm", "logs", "p1", "--vmm"]).lines().count() > 3).then_some(())
    });
    let tail = h.ok(&["logs", "p1", "--vmm", "--tail", "2"]);
    assert_eq!(tail.lines().count(), 2, "{tail}");
    assert!(h.ok(&["vm", "logs", "p1", "--vmm"]).contains(&tail));
    let j = h.json(&["vm", "logs", "p1", "--vmm", "-n", "1"]);
    assert_eq!(j["data"].as_str().unwrap().lines().count(), 1, "{j}");

    // rm is `vm delete`: one deleted, one failed, said in the JSON.
    let (code, out, _) = run(&h, &["--json", "rm", "-f", "p1", "ghost"]);
    assert_eq!(code, 3);
    let r: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["deleted"], json!(["p1"]));
    assert_eq!(r["failed"][0]["name"], "ghost");
    assert_eq!(r["failed"][0]["error"]["kind"], "not_found");
    common::assert_no_vm_leftovers(&h);
}
