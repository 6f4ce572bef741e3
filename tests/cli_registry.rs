//! CLI <-> daemon round trips for the foundation commands, through the real
//! binaries, a real socket and a real SQLite file in a temp BANGER_HOME.

mod common;

use common::{fixtures, require_root, Home};
use serde_json::Value;

/// Imports the stub kernel as `name` and returns the import's JSON.
fn import_stub(h: &Home, name: &str) -> Value {
    let k = h.path().join(format!("{name}.vmlinux"));
    fixtures::write_stub_kernel(&k);
    h.json(&["kernel", "import", k.to_str().unwrap(), "--name", name])
}

#[test]
fn version_and_autostart_and_stop() {
    require_root();
    let mut h = Home::new();
    // Nothing running yet: version says so and does not start one.
    let v = h.json(&["version"]);
    assert_eq!(v["client"]["protocol"], 1);
    assert!(v["daemon"].is_null());
    assert!(!h.socket().exists());

    // `daemon status` auto-starts the daemon (we are root).
    let st = h.json(&["daemon", "status"]);
    assert_eq!(st["protocol"], 1);
    assert_eq!(st["paths"]["socket"], h.socket().to_str().unwrap());
    let pid = st["pid"].as_i64().unwrap() as i32;
    assert_eq!(h.daemon_pid(), Some(pid));
    assert!(common::alive(pid));

    // Human output is a table naming the fields.
    let out = h.ok(&["daemon", "status"]);
    assert!(
        out.contains("version") && out.contains(&pid.to_string()),
        "{out}"
    );

    let v = h.json(&["version"]);
    assert_eq!(v["daemon"]["pid"], pid);

    let out = h.ok(&["daemon", "stop"]);
    assert!(out.contains("stopped"), "{out}");
    common::wait_gone(pid);
    assert!(!h.socket().exists(), "socket removed on clean stop");
    // Stopping again is not an error.
    assert!(h.ok(&["daemon", "stop"]).contains("not running"));
    h.kill_daemon();
}

#[test]
fn kernel_import_list_show_rm() {
    require_root();
    let h = Home::new();
    let imp = import_stub(&h, "stub");
    assert_eq!(imp["kernel"]["name"], "stub");
    assert_eq!(imp["kernel"]["format"], "elf");
    let stages: Vec<&str> = imp["operation"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert!(
        stages.contains(&"extract") && stages.contains(&"commit"),
        "{stages:?}"
    );

    // The stored copy is byte-identical and its sha256 recorded.
    let stored = imp["kernel"]["vmlinux"]["path"].as_str().unwrap();
    assert!(stored.starts_with(h.state().to_str().unwrap()));
    assert_eq!(std::fs::read(stored).unwrap(), fixtures::stub_kernel());
    let sha = sha256_of(stored);
    assert_eq!(imp["kernel"]["vmlinux"]["sha256"], sha);

    let list = h.json(&["kernel", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let show = h.json(&["kernel", "show", "stub"]);
    assert_eq!(show["id"], imp["kernel"]["id"]);
    let table = h.ok(&["kernel", "list"]);
    assert!(
        table.starts_with("NAME") && table.contains("stub"),
        "{table}"
    );

    // Duplicate name, bad name, missing file, non-kernel file.
    assert!(h
        .fails(&["kernel", "import", stored, "--name", "stub"])
        .contains("already exists"));
    assert!(h
        .fails(&["kernel", "import", stored, "--name", "Bad_Name"])
        .contains("lowercase"));
    assert!(h
        .fails(&["kernel", "import", "/nonexistent", "--name", "x"])
        .contains("cannot open"));
    let junk = h.path().join("junk");
    std::fs::write(&junk, vec![7u8; 4096]).unwrap();
    let err = h.fails(&["kernel", "import", junk.to_str().unwrap(), "--name", "junk"]);
    assert!(err.contains("not a kernel"), "{err}");
    assert!(
        h.staged_files().is_empty(),
        "failed import left {:?}",
        h.staged_files()
    );

    h.ok(&["kernel", "rm", "stub"]);
    assert!(!std::path::Path::new(stored).exists());
    assert!(h.fails(&["kernel", "show", "stub"]).contains("not found"));
}

#[test]
fn image_register_list_show_promote_delete() {
    require_root();
    let h = Home::new();
    import_stub(&h, "k1");
    let rootfs = h.path().join("root.ext4");
    let seed = h.path().join("seed.ext4");
    fixtures::ext4(&rootfs, 16);
    fixtures::ext4(&seed, 8);

    let r = h.json(&[
        "image",
        "register",
        "--name",
        "img1",
        "--kernel",
        "k1",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--work-seed",
        seed.to_str().unwrap(),
    ]);
    let img = &r["image"];
    assert_eq!(img["kernel"], "k1");
    assert_eq!(img["rootfs"]["size"], 16 << 20);
    assert_eq!(img["rootfs"]["sha256"], sha256_of(rootfs.to_str().unwrap()));
    assert_eq!(
        img["work_seed"]["sha256"],
        sha256_of(seed.to_str().unwrap())
    );
    assert_eq!(img["default"], false);

    // Refusals: unknown kernel, not ext4, duplicate.
    let e = h.fails(&[
        "image",
        "register",
        "--name",
        "i2",
        "--kernel",
        "nope",
        "--rootfs",
        rootfs.to_str().unwrap(),
    ]);
    assert!(e.contains("kernel \"nope\" not found"), "{e}");
    let notfs = h.path().join("notfs");
    std::fs::write(&notfs, vec![0u8; 1 << 20]).unwrap();
    let e = h.fails(&[
        "image",
        "register",
        "--name",
        "i2",
        "--kernel",
        "k1",
        "--rootfs",
        notfs.to_str().unwrap(),
    ]);
    assert!(e.contains("ext4"), "{e}");
    let e = h.fails(&[
        "image",
        "register",
        "--name",
        "img1",
        "--kernel",
        "k1",
        "--rootfs",
        rootfs.to_str().unwrap(),
    ]);
    assert!(e.contains("already exists"), "{e}");

    // A kernel an image uses cannot be removed.
    let e = h.fails(&["kernel", "rm", "k1"]);
    assert!(e.contains("in use") && e.contains("img1"), "{e}");

    let p = h.json(&["image", "promote", "img1"]);
    assert_eq!(p["default"], true);
    let list = h.json(&["image", "list"]);
    assert_eq!(list[0]["default"], true);
    assert!(h.ok(&["image", "list"]).contains('*'));

    h.ok(&["image", "delete", "img1"]);
    assert!(h.json(&["image", "list"]).as_array().unwrap().is_empty());
    assert!(std::fs::read_dir(h.state().join("images"))
        .unwrap()
        .next()
        .is_none());
    h.ok(&["kernel", "rm", "k1"]);
}

#[test]
fn debian_bzimage_is_extracted_to_an_elf() {
    require_root();
    let h = Home::new();
    let src = fixtures::debian_vmlinuz();
    let r = h.json(&[
        "kernel",
        "import",
        src.to_str().unwrap(),
        "--name",
        "debian-cloud",
    ]);
    let k = &r["kernel"];
    assert_eq!(k["format"], "bzimage+lz4");
    assert!(k["release"].as_str().unwrap().starts_with("6.1."), "{k}");
    let data = std::fs::read(k["vmlinux"]["path"].as_str().unwrap()).unwrap();
    use object::read::elf::{ElfFile64, ProgramHeader};
    let elf =
        ElfFile64::<object::LittleEndian>::parse(&*data).expect("extracted kernel parses as ELF64");
    assert_eq!(
        elf.elf_header().e_machine.get(object::LittleEndian),
        object::elf::EM_X86_64
    );
    let loads = elf
        .elf_program_headers()
        .iter()
        .filter(|p| p.p_type(object::LittleEndian) == object::elf::PT_LOAD)
        .count();
    assert!(loads >= 1);
}

#[test]
fn operations_logs_doctor_completion() {
    require_root();
    let h = Home::new();
    import_stub(&h, "k");
    let ops = h.json(&["operation", "list"]);
    let op = &ops[0];
    assert_eq!(op["kind"], "kernel.import");
    assert_eq!(op["state"], "succeeded");
    let id = op["id"].as_str().unwrap();
    let one = h.json(&["op", "show", id]);
    assert_eq!(one["target"], "k");
    assert!(one["stages"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["duration_ms"].is_number()));

    let logs = h.ok(&["daemon", "logs"]);
    assert!(logs.contains("bangerd listening"), "{logs}");
    assert!(logs.contains("kernel imported"), "{logs}");

    // doctor (through the daemon) lists every check; --json is parseable.
    let out = h.banger().args(["--json", "doctor"]).output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["source"], "daemon");
    let names: Vec<&str> = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for n in [
        "daemon",
        "kvm",
        "firecracker",
        "store",
        "reflink",
        "disk-backend",
        "disk-space",
        "network",
        "dns",
    ] {
        assert!(names.contains(&n), "doctor lacks {n}: {names:?}");
    }
    let failed = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["status"] == "fail");
    assert_eq!(out.status.success(), !failed, "exit code follows the fails");

    for shell in ["bash", "zsh", "fish"] {
        let s = h.ok(&["completion", shell]);
        assert!(s.contains("banger") && s.contains("image"), "{shell}");
    }
}

#[test]
fn doctor_runs_without_a_daemon_and_does_not_start_one() {
    require_root();
    let h = Home::new();
    let out = h.banger().args(["--json", "doctor"]).output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["source"], "local");
    assert_eq!(report["checks"][0]["name"], "daemon");
    assert_eq!(report["checks"][0]["status"], "warn");
    assert!(!h.socket().exists(), "doctor must not start the daemon");
}

#[test]
fn system_install_writes_a_unit_that_keeps_vms_alive() {
    require_root();
    let h = Home::new();
    let units = h.path().join("units");
    // The unit serves the system layout, so BANGER_HOME must not be set.
    let out = std::process::Command::new(common::BANGER)
        .env_remove("BANGER_HOME")
        .args([
            "system",
            "install",
            "--no-start",
            "--unit-dir",
            units.to_str().unwrap(),
            "--bin",
            common::BANGERD,
        ])
        .output()
        .unwrap();
    common::assert_success(&out, &["system", "install"]);
    let unit = std::fs::read_to_string(units.join("bangerd.service")).unwrap();
    assert!(unit.contains("KillMode=process"), "{unit}");
    assert!(unit.contains("Type=notify"));
    assert!(unit.contains(&format!(
        "ExecStart={}",
        std::fs::canonicalize(common::BANGERD).unwrap().display()
    )));
    let out = std::process::Command::new(common::BANGER)
        .env_remove("BANGER_HOME")
        .args(["system", "uninstall", "--unit-dir", units.to_str().unwrap()])
        .output()
        .unwrap();
    common::assert_success(&out, &["system", "uninstall"]);
    assert!(!units.join("bangerd.service").exists());
    // With a home set, install refuses (it would serve the wrong layout).
    assert!(h
        .fails(&["system", "install", "--unit-dir", units.to_str().unwrap()])
        .contains("BANGER_HOME"));
}

fn sha256_of(path: &str) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
