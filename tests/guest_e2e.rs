//! End to end with a real Linux guest, through the CLI: the kernel and the
//! minimal Debian image built from packages (`kernel build`, `image build`;
//! cached across runs under `$BANGER_TEST_ASSETS/build`, keyed by their
//! inputs: see `common::guest`), a VM booted from them, reached over SSH with pinned keys, asked
//! by `vm health` and `vm ports` through the guest agent, stopped cleanly
//! by the guest, started again with its work disk intact, and deleted
//! leaving nothing behind. On a state dir without reflinks (ext4, as on
//! these machines) the guest runs on the overlay root: its checks (overlayfs
//! on `/`, the shared rootfs read-only and unchanged, root changes kept
//! across stop/start and unseen by a second VM, the degraded boot when the
//! overlay cannot be assembled) run on the same guest.
//!
//! The VMM is QEMU by default: on these machines a Linux guest boots only
//! under QEMU with TCG. `BANGER_E2E_VMM=firecracker` runs the same flow
//! under Firecracker; that is what `scripts/e2e-kvm.sh` does on a KVM host.

mod common;

use std::process::{Command, Output};
use std::time::Instant;

use common::guest::build_home;
use common::{require_root, Home};
use serde_json::{json, Value};

fn vmm() -> String {
    std::env::var("BANGER_E2E_VMM").unwrap_or_else(|_| "qemu".into())
}

/// `banger ARGS` inside the test's network namespace, where the bridge and
/// the guest are (`vm ssh` runs OpenSSH to the guest's address).
fn banger_in_ns(h: &mut Home, args: &[&str]) -> Output {
    banger_in_ns_with_stdin(h, args, b"")
}

/// `banger ARGS` inside the test's namespace with `input` on stdin.
fn banger_in_ns_with_stdin(h: &mut Home, args: &[&str], input: &[u8]) -> Output {
    use std::io::Write;
    let ns = h.netns();
    let c = h.banger();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns])
        .arg(common::BANGER)
        .args(args)
        .envs(
            c.get_envs()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v.to_owned()))),
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// `banger vm exec -T g1 -- sh -c SCRIPT` in its own process group, with
/// Ctrl-C (SIGINT to the group, as a terminal sends it) pressed `presses`
/// times once SCRIPT has printed its first line: (exit code, stdout, stderr).
fn ctrl_c_exec(h: &Home, script: &str, presses: usize) -> (i32, String, String) {
    use std::io::{BufRead, Read};
    use std::os::unix::process::CommandExt;
    let mut child = h
        .banger_in_netns()
        .args(["vm", "exec", "-T", "g1", "--", "sh", "-c", script])
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut out = String::new();
    stdout.read_line(&mut out).unwrap();
    assert_eq!(out, "ready\n", "the guest command started");
    for _ in 0..presses {
        common::kill(-(child.id() as i32), libc::SIGINT);
        std::thread::sleep(std::time::Duration::from_secs(3));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("banger vm exec did not end after {presses} Ctrl-C");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    stdout.read_to_string(&mut out).unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap().code().unwrap_or(-1), out, err)
}

/// `banger vm exec ARGS...` in the namespace: (exit code, stdout, stderr).
fn exec(h: &mut Home, args: &[&str], input: &[u8]) -> (i32, String, String) {
    let mut all = vec!["vm", "exec"];
    all.extend_from_slice(args);
    let out = banger_in_ns_with_stdin(h, &all, input);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `banger vm ssh NAME -- CMD...`, asserting success; returns stdout.
fn ssh(h: &mut Home, name: &str, cmd: &[&str]) -> String {
    let mut args = vec!["vm", "ssh", name, "--"];
    args.extend_from_slice(cmd);
    let out = banger_in_ns(h, &args);
    assert!(
        out.status.success(),
        "vm ssh {cmd:?}: {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn stage_ms(stages: &Value) -> Vec<(String, f64)> {
    stages
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    (
                        s["name"].as_str().unwrap_or("?").to_string(),
                        s["duration_ms"].as_f64().unwrap_or(0.0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The VMM's own run state, asked directly (not through banger): QMP
/// `query-status` for QEMU (`running`, `paused`), Firecracker's `GET /`
/// instance info (`Running`, `Paused`).
fn vmm_run_state(h: &Home, name: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let show = h.json(&["vm", "show", name]);
    let sock = show["api_socket"]
        .as_str()
        .expect("a running VM has a control socket");
    let s = std::os::unix::net::UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    if show["vmm"] == "firecracker" {
        w.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut all = String::new();
        std::io::Read::read_to_string(&mut r, &mut all).unwrap();
        let body = &all[all.find("\r\n\r\n").unwrap() + 4..];
        let v: Value = serde_json::from_str(body).unwrap();
        return v["state"].as_str().unwrap().to_string();
    }
    r.read_line(&mut line).unwrap(); // greeting
    w.write_all(b"{\"execute\": \"qmp_capabilities\"}\n{\"execute\": \"query-status\"}\n")
        .unwrap();
    loop {
        line.clear();
        assert!(r.read_line(&mut line).unwrap() > 0, "QMP closed");
        let v: Value = serde_json::from_str(&line).unwrap();
        if let Some(st) = v["return"]["status"].as_str() {
            return st.to_string();
        }
    }
}

fn ports_of(h: &Home, name: &str) -> Vec<Value> {
    h.json(&["vm", "ports", name])["ports"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[test]
fn real_guest_boots_answers_ssh_agent_and_survives_stop_start() {
    require_root();
    let vmm = vmm();
    let mut h = build_home();

    // Kernel and image, built from Debian packages (or found in the cache),
    // by a daemon the CLI starts in the host's network namespace: the image
    // build needs Debian's mirror. The VM then runs under a daemon in the
    // test's own namespace, where its bridge, tap and rules stay.
    let t = Instant::now();
    h.ok(&["kernel", "build", "--name", "e2e-kernel"]);
    eprintln!("kernel build: {:.1}s", t.elapsed().as_secs_f64());
    let kernel = h.json(&["kernel", "show", "e2e-kernel"]);
    let release = kernel["release"]
        .as_str()
        .unwrap_or_else(|| panic!("kernel show has no release: {kernel}"))
        .to_string();
    let t = Instant::now();
    h.ok(&[
        "image",
        "build",
        "debian-bookworm",
        "--variant",
        "minimal",
        "--name",
        "e2e",
        "--kernel",
        "e2e-kernel",
    ]);
    eprintln!("image build: {:.1}s", t.elapsed().as_secs_f64());
    let image = h.json(&["image", "show", "e2e"]);
    let features = image["features"].to_string();
    assert!(
        features.contains("ssh") && features.contains("agent"),
        "{image}"
    );
    h.ok(&["daemon", "stop"]);
    h.start_daemon();

    // Create: returns once sshd answers (the image has the ssh feature).
    let t = Instant::now();
    let created = h.json(&[
        "vm",
        "create",
        "--name",
        "g1",
        "--image",
        "e2e",
        "--vmm",
        &vmm,
        "--vcpu",
        "2",
        "--memory",
        "1G",
        "--disk-size",
        "1G",
    ]);
    let wall = t.elapsed().as_secs_f64();
    let vm = &created["vm"];
    assert_eq!(vm["state"], "running", "{created}");
    assert_eq!(vm["vmm"], vmm.as_str());
    let accel = vm["accel"]
        .as_str()
        .unwrap_or_else(|| panic!("no accel: {vm}"));
    if vmm == "qemu" {
        assert_eq!(
            accel,
            common::expected_qemu_accel(),
            "QEMU's acceleration on this host"
        );
    } else {
        assert_eq!(accel, "kvm", "Firecracker runs on KVM only");
    }
    let stages = stage_ms(&created["operation"]["stages"]);
    assert!(stages.iter().any(|(n, _)| n == "ssh"), "{stages:?}");
    eprintln!("create -> SSH ready under {vmm}/{accel}: {wall:.2}s wall; stages: {stages:?}");

    // The root disk: on a state filesystem without reflinks (ext4, as on
    // these machines) the image's rootfs is shared read-only under a
    // per-VM overlay; with reflinks, a clone.
    let rootfs = image["rootfs"]["path"].as_str().unwrap().to_string();
    let rootfs_sha = image["rootfs"]["sha256"].as_str().unwrap().to_string();
    let overlay = vm["root_disk"]["backend"] == "overlay";
    let fstype = String::from_utf8(
        Command::new("stat")
            .args(["-f", "-c", "%T"])
            .arg(h.state())
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    if fstype.trim() == "ext2/ext3" {
        assert!(overlay, "ext4 state dir: {}", vm["root_disk"]);
    } else {
        eprintln!(
            "state dir on {}: root disk {} (the overlay checks below need overlay)",
            fstype.trim(),
            vm["root_disk"]
        );
    }
    if overlay {
        assert_eq!(vm["root_disk"]["lower"], rootfs.as_str(), "{vm}");
        assert!(
            vm["root_disk"]["path"]
                .as_str()
                .unwrap()
                .ends_with("/overlay.ext4"),
            "{vm}"
        );
        // The guest's / is overlayfs; the kernel mounted the shared root
        // read-only and the agent ran first as init.
        assert_eq!(
            ssh(&mut h, "g1", &["findmnt", "-n", "-o", "FSTYPE", "/"]).trim(),
            "overlay"
        );
        let cmdline = ssh(&mut h, "g1", &["cat", "/proc/cmdline"]);
        assert!(
            cmdline.contains(" ro ") && cmdline.contains("init=/usr/local/bin/banger-agent"),
            "{cmdline}"
        );
        assert_eq!(
            ssh(&mut h, "g1", &["cat", "/proc/1/comm"]).trim(),
            "systemd"
        );
        // The VMM holds the shared rootfs open read-only, and nothing else
        // of it.
        let pid = vm["pid"].as_u64().unwrap();
        let mut modes = Vec::new();
        for e in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
            let e = e.unwrap();
            if std::fs::read_link(e.path()).ok().as_deref() == Some(std::path::Path::new(&rootfs)) {
                let info = std::fs::read_to_string(format!(
                    "/proc/{pid}/fdinfo/{}",
                    e.file_name().to_string_lossy()
                ))
                .unwrap();
                let flags = info
                    .lines()
                    .find_map(|l| l.strip_prefix("flags:"))
                    .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
                    .unwrap();
                modes.push(flags & 0o3);
            }
        }
        assert!(
            !modes.is_empty() && modes.iter().all(|&m| m == 0),
            "the VMM's opens of {rootfs}: access modes {modes:?} (0 = O_RDONLY)"
        );
        // A file written on / lands on the VM's overlay disk only.
        ssh(
            &mut h,
            "g1",
            &["sh", "-c", "echo g1-root > /etc/banger-e2e-root && sync"],
        );
    }

    // SSH: the built kernel, Debian 12.
    assert_eq!(ssh(&mut h, "g1", &["uname", "-r"]).trim(), release);
    let os = ssh(&mut h, "g1", &["cat", "/etc/os-release"]);
    assert!(os.contains("VERSION_ID=\"12\""), "{os}");
    assert!(os.contains("ID=debian"), "{os}");
    assert_eq!(ssh(&mut h, "g1", &["hostname"]).trim(), "g1");

    // vm exec: the exit status, stdout and stderr apart, stdin forwarded, an
    // argv that no shell re-splits, -w, -e, -u, and a signal death as 128+N.
    assert_eq!(exec(&mut h, &["g1", "--", "sh", "-c", "exit 3"], b"").0, 3);
    let (code, out, err) = exec(
        &mut h,
        &["g1", "--", "sh", "-c", "echo out; echo err >&2"],
        b"",
    );
    assert_eq!((code, out.as_str(), err.as_str()), (0, "out\n", "err\n"));
    let (code, out, _) = exec(&mut h, &["g1", "--", "cat"], b"hi from stdin\n");
    assert_eq!((code, out.as_str()), (0, "hi from stdin\n"));
    let (code, out, err) = exec(
        &mut h,
        &[
            "g1", "--", "printf", "[%s]\\n", "a b", "it's", "$HOME", "-n",
        ],
        b"",
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "[a b]\n[it's]\n[$HOME]\n[-n]\n");
    let (code, out, err) = exec(
        &mut h,
        &[
            "-w",
            "/tmp",
            "-e",
            "FOO=a b",
            "g1",
            "--",
            "sh",
            "-c",
            "pwd; echo \"$FOO\"",
        ],
        b"",
    );
    assert_eq!((code, out.as_str()), (0, "/tmp\na b\n"), "{err}");
    let (code, out, err) = exec(&mut h, &["-u", "nobody", "g1", "--", "id", "-un"], b"");
    assert_eq!((code, out.trim()), (0, "nobody"), "{err}");
    assert_eq!(
        exec(&mut h, &["g1", "--", "sh", "-c", "kill -TERM $$"], b"").0,
        128 + 15,
        "a command killed by SIGTERM"
    );
    let (code, _, err) = exec(&mut h, &["-w", "/no/such/dir", "g1", "--", "true"], b"");
    assert_ne!(code, 0, "cd into a missing directory fails");
    assert!(err.contains("/no/such/dir"), "{err}");

    // Ctrl-C without a terminal (-T): the first reaches the guest command
    // (its INT handler runs and chooses the status); a command that ignores
    // it is left running by a second Ctrl-C, which detaches.
    let (code, out, err) = ctrl_c_exec(
        &h,
        "trap 'echo got-int; exit 7' INT; echo ready; while :; do sleep 1; done",
        1,
    );
    assert_eq!((code, out.as_str()), (7, "ready\ngot-int\n"), "{err}");
    assert!(err.contains("sending SIGINT"), "{err}");
    let (code, out, err) = ctrl_c_exec(
        &h,
        "trap '' INT; echo ready; exec sleep 3600 # banger-detach-probe",
        2,
    );
    assert_eq!((code, out.as_str()), (130, "ready\n"), "{err}");
    assert!(err.contains("detached"), "{err}");
    // (`vm ssh` runs its line as given, without exec's marker.)
    let out = ssh(
        &mut h,
        "g1",
        &["pgrep -f '^sleep 3600' >/dev/null && echo left-running; pkill -f '^sleep 3600'; ls /run | grep -c banger-exec"],
    );
    assert_eq!(
        out, "left-running\n1\n",
        "the detached command still runs, its marker with it"
    );
    // The next exec sweeps markers whose process is gone.
    assert_eq!(exec(&mut h, &["g1", "--", "true"], b"").0, 0);
    let out = ssh(&mut h, "g1", &["ls /run | grep -c banger-exec; true"]);
    assert_eq!(
        out, "0\n",
        "no marker is left once the detached command ended"
    );

    // Workspaces: the guest's `git status` equals the host's, for staged and
    // unstaged changes of one file, deletions, a staged rename, a mode
    // change, a symlink, odd names, CRLF content, untracked files (only with
    // --include-untracked) and never ignored ones.
    let fx = h.path().join("fixture");
    let repo = fx.join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    let sh = |script: &str| {
        let st = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&repo)
            .status()
            .unwrap();
        assert!(st.success(), "{script}");
    };
    sh("git init -q -b trunk && git config user.email t@t && git config user.name t \
        && git remote add origin https://example.invalid/team/repo.git \
        && printf 'one\n' > a.txt && printf 'bee\n' > b.txt && printf 'echo hi\n' > c.sh \
        && printf 'dee\n' > d.txt && ln -s a.txt link && printf 'x\n' > ' odd name ü.txt' \
        && printf 'y\n' > -dash && printf 'crlf\r\nline\r\n' > crlf.txt && printf '*.log\n' > .gitignore \
        && git add -A && git commit -qm first && printf 'two\n' >> a.txt && git commit -qam second \
        && printf 'staged\n' >> a.txt && git add a.txt && printf 'unstaged\n' >> a.txt \
        && rm b.txt && git mv d.txt e.txt && chmod +x c.sh && printf 'new\n' > new.txt && git add new.txt \
        && printf 'untracked\n' > u.txt && printf 'noise\n' > debug.log");
    let host_status = |dir: &std::path::Path| {
        let out = Command::new("git")
            .args([
                "--no-optional-locks",
                "status",
                "--porcelain=v2",
                "--branch",
            ])
            .current_dir(dir)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let want = host_status(&repo);
    assert!(want.contains("? u.txt") && want.contains("2 R."), "{want}");
    let prepared = banger_in_ns(
        &mut h,
        &[
            "vm",
            "workspace",
            "prepare",
            "g1",
            repo.to_str().unwrap(),
            "--include-untracked",
        ],
    );
    assert!(prepared.status.success(), "{prepared:?}");
    let guest_status = |h: &mut Home, dir: &str| {
        ssh(
            h,
            "g1",
            &["git", "-C", dir, "status", "--porcelain=v2", "--branch"],
        )
    };
    assert_eq!(
        guest_status(&mut h, "/root/repo"),
        want,
        "status parity with untracked files"
    );
    assert_eq!(
        ssh(
            &mut h,
            "g1",
            &["git", "-C", "/root/repo", "remote", "get-url", "origin"]
        )
        .trim(),
        "https://example.invalid/team/repo.git"
    );
    assert_eq!(
        ssh(
            &mut h,
            "g1",
            &["git", "-C", "/root/repo", "rev-list", "--count", "HEAD"]
        )
        .trim(),
        "2"
    );
    assert_eq!(
        exec(
            &mut h,
            &["g1", "--", "test", "-e", "/root/repo/debug.log"],
            b""
        )
        .0,
        1,
        "ignored files are never copied"
    );
    // Without --include-untracked: the same minus the untracked file; and a
    // second prepare never merges over an existing directory.
    let again = banger_in_ns(
        &mut h,
        &["vm", "workspace", "prepare", "g1", repo.to_str().unwrap()],
    );
    assert!(!again.status.success(), "{again:?}");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already exists"),
        "{again:?}"
    );
    let repo2 = fx.join("repo2");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(&repo)
        .arg(&repo2)
        .status()
        .unwrap()
        .success());
    let prepared = banger_in_ns(
        &mut h,
        &["vm", "workspace", "prepare", "g1", repo2.to_str().unwrap()],
    );
    assert!(prepared.status.success(), "{prepared:?}");
    let want2: String = host_status(&repo2)
        .lines()
        .filter(|l| !l.starts_with("? "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        guest_status(&mut h, "/root/repo2"),
        want2,
        "status parity, tracked only"
    );

    // Workspace export: the guest's commits and working tree come back, the
    // host's dirty state sent in does not; over host changes elsewhere it
    // merges; over the same lines it conflicts and writes nothing; each
    // hostile change is refused.
    let ex = fx.join("exp");
    std::fs::create_dir_all(&ex).unwrap();
    let shx = |script: &str| -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&ex)
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    shx(
        "git init -q -b main && git config user.email t@t && git config user.name t \
         && for f in a b c d; do printf '%s1\\n%s2\\n%s3\\n' $f $f $f > $f.txt; done \
         && git add -A && git commit -qm one && echo host-dirty >> a.txt",
    );
    let exs = ex.to_str().unwrap();
    let prepared = banger_in_ns(&mut h, &["vm", "workspace", "prepare", "g1", exs]);
    assert!(prepared.status.success(), "{prepared:?}");
    ssh(
        &mut h,
        "g1",
        &["sh", "-c", "cd /root/exp && echo guest-commit >> b.txt \
          && git -c user.name=g -c user.email=g@g commit -qam 'guest: b' \
          && echo guest-wt >> c.txt && echo new > n.txt && printf '#!/bin/sh\\n' > tool.sh && chmod +x tool.sh"],
    );
    let export = |h: &mut Home, extra: &[&str]| {
        let mut args = vec!["vm", "workspace", "export", "g1", exs];
        args.extend_from_slice(extra);
        banger_in_ns(h, &args)
    };
    let patch = fx.join("exp.patch");
    let out = export(&mut h, &["-o", patch.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains("1 guest commit") && summary.contains("flagged: tool.sh: new executable"),
        "{summary}"
    );
    let text = std::fs::read_to_string(&patch).unwrap();
    for want in ["+guest-commit", "+guest-wt", "b/n.txt", "b/tool.sh"] {
        assert!(text.contains(want), "{want} in {text}");
    }
    assert!(
        !text.contains("host-dirty") && !text.contains("a.txt"),
        "{text}"
    );
    let stdout = export(&mut h, &[]);
    assert!(stdout.status.success(), "{stdout:?}");
    assert_eq!(
        String::from_utf8_lossy(&stdout.stdout),
        text,
        "the patch on stdout"
    );
    // The host moved on elsewhere: merged.
    shx("echo host-later >> d.txt");
    let out = export(&mut h, &["--apply"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("merged with the host's changes"),
        "{out:?}"
    );
    assert_eq!(
        shx("cat a.txt b.txt c.txt d.txt n.txt; test -x tool.sh && git log --format=%s"),
        "a1\na2\na3\nhost-dirty\nb1\nb2\nb3\nguest-commit\nc1\nc2\nc3\nguest-wt\nd1\nd2\nd3\nhost-later\nnew\none\n"
    );
    // The same lines changed on the host: a conflict, the host untouched.
    shx("sed -i s/guest-wt/host-other/ c.txt");
    let host_state = "sha256sum *.txt tool.sh; git status --porcelain";
    let before = shx(host_state);
    let out = export(&mut h, &["--apply"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(err.contains("conflict") && err.contains("c.txt"), "{err}");
    assert_eq!(shx(host_state), before, "a conflict writes nothing");
    // Hostile changes, one at a time: refused, nothing written. The .git
    // path needs a guest that lies (porcelain git never writes one): a `git`
    // in the guest's PATH that sends a crafted bundle.
    let hostile: [(&str, &str, &str); 5] = [
        ("ln -s /etc/passwd evil", "absolute symlink", "rm evil"),
        ("mkdir sub && ln -s ../../outside sub/evil", "outside the repository", "rm -r sub"),
        (
            "git init -q inner && git -C inner -c user.name=g -c user.email=g@g commit -q --allow-empty -m x",
            "gitlink",
            "rm -rf inner",
        ),
        (
            "printf '[submodule \"x\"]\\n\\tpath = x\\n\\turl = https://example.invalid/x\\n' > .gitmodules",
            ".gitmodules",
            "rm .gitmodules",
        ),
        (
            "b=$(echo x | git hash-object -w --stdin) \
             && sub=$(printf '100644 blob %s\\tpost-checkout\\n' $b | git mktree) \
             && hooks=$(printf '040000 tree %s\\thooks\\n' $sub | git mktree) \
             && tree=$(printf '040000 tree %s\\t.git\\n' $hooks | git mktree) \
             && base=$(git rev-parse refs/banger/base) \
             && e=$(git -c user.name=g -c user.email=g@g commit-tree $tree -p $base -m evil) \
             && git update-ref refs/banger/export $e && git update-ref refs/banger/export-base $base \
             && git bundle create -q /root/evil.bundle refs/banger/export refs/banger/export-base ^$base^ \
             && git update-ref -d refs/banger/export && git update-ref -d refs/banger/export-base \
             && printf '#!/bin/sh\\nif [ \"$1\" = bundle ]; then cat /root/evil.bundle; exit 0; fi\\nexec /usr/bin/git \"$@\"\\n' > /usr/local/bin/git \
             && chmod +x /usr/local/bin/git",
            ".git",
            "rm -f /usr/local/bin/git /root/evil.bundle",
        ),
    ];
    let before = shx(host_state);
    let refused = fx.join("refused.patch");
    for (make, want, undo) in hostile {
        ssh(
            &mut h,
            "g1",
            &["sh", "-c", &format!("cd /root/exp && {make}")],
        );
        let out = export(&mut h, &["-o", refused.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{want}: accepted: {out:?}");
        assert!(
            err.contains("refused") && err.contains(want),
            "{want}: {err}"
        );
        assert!(!refused.exists(), "{want}: a refused export writes nothing");
        ssh(
            &mut h,
            "g1",
            &["sh", "-c", &format!("cd /root/exp && {undo}")],
        );
    }
    assert_eq!(shx(host_state), before, "refusals write nothing");

    // file_sync and the git identity: `vm sync` copies the config's files
    // (read by the CLI as the user) under /root with their mode, and sets
    // the host user's git identity in the guest.
    let npmrc = fx.join("npmrc");
    std::fs::write(&npmrc, "//registry.example.invalid/:_authToken=t0k3n\n").unwrap();
    h.config(&format!(
        "[[file_sync]]\nhost = \"{}\"\nguest = \"~/.config/npm/npmrc\"\nmode = \"0600\"\n",
        npmrc.display()
    ));
    let user_home = h.path().join("user-home");
    std::fs::create_dir_all(&user_home).unwrap();
    std::fs::write(
        user_home.join(".gitconfig"),
        "[user]\n\tname = Ada Tester\n\temail = ada@example.invalid\n",
    )
    .unwrap();
    let synced = banger_in_ns(&mut h, &["vm", "sync", "g1"]);
    assert!(synced.status.success(), "{synced:?}");
    assert_eq!(
        ssh(
            &mut h,
            "g1",
            &[
                "sh",
                "-c",
                "stat -c %a /root/.config/npm/npmrc && cat /root/.config/npm/npmrc \
              && git config --global user.name && git config --global user.email"
            ]
        ),
        "600\n//registry.example.invalid/:_authToken=t0k3n\nAda Tester\nada@example.invalid\n"
    );
    std::fs::remove_file(user_home.join(".gitconfig")).unwrap();

    // Detached: `vm exec -d` returns at once with a run id; `vm attach`
    // follows the output to its end and exits with the command's status; a
    // finished run can be attached again (the latest by default).
    let started = banger_in_ns(
        &mut h,
        &[
            "--json",
            "vm",
            "exec",
            "-d",
            "-w",
            "/tmp",
            "g1",
            "--",
            "sh",
            "-c",
            "pwd; sleep 4; echo done >&2; exit 7",
        ],
    );
    assert!(started.status.success(), "{started:?}");
    let started: Value = serde_json::from_slice(&started.stdout).unwrap();
    let run_id = started["run_id"].as_str().unwrap().to_string();
    let attached = banger_in_ns(&mut h, &["vm", "attach", "g1", &run_id]);
    assert_eq!(attached.status.code(), Some(7), "{attached:?}");
    assert_eq!(String::from_utf8_lossy(&attached.stdout), "/tmp\ndone\n");
    let again = banger_in_ns(&mut h, &["vm", "attach", "g1"]);
    assert_eq!(again.status.code(), Some(7), "{again:?}");
    assert_eq!(String::from_utf8_lossy(&again.stdout), "/tmp\ndone\n");
    // --json: where the run is and its log, without following (here through
    // the top-level `attach`, the same command).
    let report = banger_in_ns(&mut h, &["--json", "attach", "g1"]);
    assert!(report.status.success(), "{report:?}");
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(
        (
            &report["run_id"],
            &report["state"],
            &report["exit_code"],
            &report["log"]
        ),
        (
            &json!(run_id),
            &json!("done"),
            &json!(7),
            &json!("/tmp\ndone\n")
        ),
        "{report}"
    );
    let missing = banger_in_ns(&mut h, &["--json", "vm", "attach", "g1", "nosuch"]);
    let missing: Value = serde_json::from_slice(&missing.stdout).unwrap();
    assert_eq!(missing["error"]["kind"], "not_found", "{missing}");

    // vm cp: a tree with an executable, a symlink and an empty directory,
    // there and back with modes, links and mtimes; a tar stream on stdout;
    // a 64 MiB file streamed intact.
    let cpdir = fx.join("cp");
    std::fs::create_dir_all(cpdir.join("tree/empty")).unwrap();
    let shc = |script: &str| {
        let st = Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&cpdir)
            .status()
            .unwrap();
        assert!(st.success(), "{script}");
    };
    shc(
        "printf '#!/bin/sh\necho ran\n' > tree/exe && chmod 755 tree/exe && ln -s exe tree/link \
         && printf data > tree/data && chmod 640 tree/data && touch -h -d @978307200 tree/data \
         && head -c 67108864 /dev/urandom > big",
    );
    let cp = |h: &mut Home, from: &str, to: &str| {
        let out = banger_in_ns(h, &["vm", "cp", from, to]);
        assert!(out.status.success(), "vm cp {from} {to}: {out:?}");
        out
    };
    cp(&mut h, cpdir.join("tree").to_str().unwrap(), "g1:/root/");
    assert_eq!(
        ssh(&mut h, "g1", &["sh", "-c", "cd /root/tree && stat -c '%n %a %U' exe data && stat -c %Y data && readlink link && test -d empty && ./exe"]),
        "exe 755 root\ndata 640 root\n978307200\nexe\nran\n"
    );
    let back = cpdir.join("back");
    cp(&mut h, "g1:/root/tree", back.to_str().unwrap());
    let meta = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(p).unwrap();
        (m.mode() & 0o7777, m.mtime())
    };
    for f in ["exe", "data"] {
        assert_eq!(
            meta(&back.join(f)),
            meta(&cpdir.join("tree").join(f)),
            "{f}"
        );
    }
    assert_eq!(
        std::fs::read_link(back.join("link")).unwrap(),
        std::path::Path::new("exe")
    );
    assert!(back.join("empty").is_dir());
    let stream = banger_in_ns(&mut h, &["vm", "cp", "g1:/root/tree", "-"]);
    assert!(stream.status.success(), "{stream:?}");
    std::fs::write(cpdir.join("t.tar"), &stream.stdout).unwrap();
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(cpdir.join("t.tar"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(
        listing.contains("tree/exe") && listing.contains("tree/empty/"),
        "{listing}"
    );
    cp(&mut h, cpdir.join("big").to_str().unwrap(), "g1:/root/big");
    let sum = |out: &str| out.split_whitespace().next().unwrap_or("").to_string();
    let host_sum = Command::new("sha256sum")
        .arg(cpdir.join("big"))
        .output()
        .unwrap();
    assert_eq!(
        sum(&ssh(&mut h, "g1", &["sha256sum", "/root/big"])),
        sum(&String::from_utf8_lossy(&host_sum.stdout))
    );
    ssh(&mut h, "g1", &["sh", "-c", "rm -f /root/big && sync"]);

    // vm run: a fresh VM with the workspace, the command's streams and exit
    // status, stdin forwarded, and --rm leaves nothing.
    let run = banger_in_ns_with_stdin(
        &mut h,
        &[
            "run",
            "--rm",
            "--image",
            "e2e",
            "--vmm",
            &vmm,
            "--disk-size",
            "1G",
            repo.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            // A second VM of the same image does not see g1's file on /.
            "test ! -e /etc/banger-e2e-root || exit 9; \
             cat a.txt; cat >&2; git rev-parse --abbrev-ref HEAD; exit 3",
        ],
        b"from stdin\n",
    );
    let (out, err) = (
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr),
    );
    assert_eq!(run.status.code(), Some(3), "stdout {out}\nstderr {err}");
    assert_eq!(out, "one\ntwo\nstaged\nunstaged\ntrunk\n", "stderr {err}");
    assert!(err.contains("from stdin"), "{err}");
    let left = h.json(&["vm", "list", "-a"]);
    assert_eq!(
        left.as_array().map(|a| a.len()),
        Some(1),
        "only g1 is left: {left}"
    );

    // The agent answers health (it may come up a moment after sshd); ports
    // shows sshd.
    let health = common::eventually(60, "the guest agent to answer", || {
        let out = h
            .banger()
            .args(["--json", "vm", "health", "g1"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["healthy"] == true).then_some(v)
    });
    assert_eq!(health["healthy"], true, "{health}");
    assert_eq!(health["checked"], "agent", "{health}");
    assert_eq!(health["agent"]["hostname"], "g1", "{health}");
    assert_eq!(
        health["agent"]["kernel_release"],
        release.as_str(),
        "{health}"
    );
    let ports = ports_of(&h, "g1");
    assert!(
        ports.iter().any(|p| p["port"] == 22
            && p["proto"].as_str().unwrap_or("").starts_with("tcp")
            && p["process"].as_str().unwrap_or("").contains("sshd")),
        "{ports:?}"
    );

    // A listener started in the guest shows up, with its endpoint and link.
    // perl-base is part of every Debian system; the minimal image has no
    // python or netcat.
    ssh(
        &mut h,
        "g1",
        &[
            "sh",
            "-c",
            "nohup perl -MIO::Socket::INET -e '$s = IO::Socket::INET->new(LocalPort => 8080, Listen => 5, ReuseAddr => 1) or die $!; sleep 600' >/dev/null 2>&1 &",
        ],
    );
    let listener = common::eventually(20, "the guest listener in vm ports", || {
        ports_of(&h, "g1").into_iter().find(|p| p["port"] == 8080)
    });
    assert_eq!(listener["process"], "perl", "{listener}");
    assert_eq!(listener["endpoint"], "g1.vm:8080", "{listener}");
    assert_eq!(listener["url"], "http://g1.vm:8080/", "{listener}");

    // Pause: the VMM's own state says paused, `vm exec` is refused with the
    // way out, and after resume the same guest answers again.
    let r = h.json(&["vm", "pause", "g1"]);
    assert_eq!(r[0]["vm"]["state"], "paused", "{r}");
    assert_eq!(h.json(&["vm", "show", "g1"])["state"], "paused");
    let paused_vmm = vmm_run_state(&h, "g1");
    assert!(
        matches!(paused_vmm.as_str(), "paused" | "Paused"),
        "{paused_vmm}"
    );
    let (code, _, err) = exec(&mut h, &["g1", "--", "true"], b"");
    assert_ne!(code, 0, "vm exec of a paused VM must fail");
    assert!(
        err.contains("paused") && err.contains("banger vm resume g1"),
        "{err}"
    );
    let r = h.json(&["vm", "resume", "g1"]);
    assert_eq!(r[0]["vm"]["state"], "running", "{r}");
    let running_vmm = vmm_run_state(&h, "g1");
    assert!(
        matches!(running_vmm.as_str(), "running" | "Running"),
        "{running_vmm}"
    );
    let (code, _, err) = exec(&mut h, &["g1", "--", "true"], b"");
    assert_eq!(code, 0, "vm exec after resume: {err}");
    assert!(
        ports_of(&h, "g1").iter().any(|p| p["port"] == 8080),
        "the guest's listener lived through the pause"
    );

    // A file on the work disk (/root) survives stop and start.
    ssh(
        &mut h,
        "g1",
        &[
            "sh",
            "-c",
            "echo kept-across-boots > /root/kept.txt && sync",
        ],
    );
    let boot_id = health["agent"]["boot_id"].as_str().unwrap().to_string();
    // A generous bound: under TCG on a loaded 2-core machine the guest's
    // shutdown (syncing what the tests above wrote) can pass the default 10 s.
    let stopped = h.json(&["vm", "stop", "-t", "60", "g1"]);
    assert_eq!(
        stopped[0]["ended_by"], "guest",
        "a clean power-off: {stopped}"
    );
    assert_eq!(stopped[0]["vm"]["state"], "stopped");

    let started = h.json(&["vm", "start", "g1"]);
    assert_eq!(started[0]["vm"]["state"], "running", "{started}");
    assert_eq!(
        ssh(&mut h, "g1", &["cat", "/root/kept.txt"]).trim(),
        "kept-across-boots"
    );
    if overlay {
        // The root's changes persist on the overlay disk across stop and
        // start, and none of the writes reached the shared image.
        assert_eq!(
            ssh(&mut h, "g1", &["cat", "/etc/banger-e2e-root"]).trim(),
            "g1-root"
        );
        assert_eq!(
            ssh(&mut h, "g1", &["findmnt", "-n", "-o", "FSTYPE", "/"]).trim(),
            "overlay"
        );
        let sum = Command::new("sha256sum").arg(&rootfs).output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&sum.stdout)
                .split_whitespace()
                .next(),
            Some(rootfs_sha.as_str()),
            "the image's rootfs changed under its VMs"
        );
    }
    let health = common::eventually(60, "the guest agent after the restart", || {
        let out = h
            .banger()
            .args(["--json", "vm", "health", "g1"])
            .output()
            .unwrap();
        let v: Value = serde_json::from_slice(&out.stdout).ok()?;
        (v["healthy"] == true).then_some(v)
    });
    assert_ne!(health["agent"]["boot_id"], boot_id.as_str(), "a new boot");

    if overlay {
        // When the overlay cannot be assembled (here: the overlay disk's
        // label is not banger's), the agent says why on the console and
        // boots systemd on the read-only root: reachable, writes to /
        // refused, the image untouched. Put right, the VM's changes are back.
        let stop = |h: &Home| {
            let stopped = h.json(&["vm", "stop", "-t", "60", "g1"]);
            assert_eq!(stopped[0]["vm"]["state"], "stopped", "{stopped}");
        };
        let overlay_disk = vm["root_disk"]["path"].as_str().unwrap().to_string();
        let relabel = |label: &str| {
            let st = Command::new("e2label")
                .arg(&overlay_disk)
                .arg(label)
                .status()
                .unwrap();
            assert!(st.success(), "e2label {overlay_disk} {label}");
        };
        let console = started[0]["vm"]["console_log"]
            .as_str()
            .unwrap()
            .to_string();
        let banners = || {
            std::fs::read_to_string(&console)
                .unwrap_or_default()
                .matches("CANNOT ASSEMBLE THE OVERLAY ROOT")
                .count()
        };
        assert_eq!(banners(), 0, "{console}");
        stop(&h);
        relabel("not-banger");
        let degraded = h.json(&["vm", "start", "g1"]);
        assert_eq!(degraded[0]["vm"]["state"], "running", "{degraded}");
        assert_eq!(banners(), 1, "the reason on the console ({console})");
        let log = std::fs::read_to_string(&console).unwrap();
        assert!(log.contains("\"not-banger\""), "the label named: {log}");
        // The degraded system comes up more slowly than a normal boot (units
        // fail on the read-only root); a command whose ssh connection fails
        // (255) is tried again, and the guest's console shown if it never
        // gets through.
        let console_tail = || {
            let log = std::fs::read_to_string(&console).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(150)..].join("\n")
        };
        let mut degraded_exec = |cmd: &[&str]| -> (i32, String, String) {
            let mut args = vec!["g1", "--"];
            args.extend_from_slice(cmd);
            for attempt in 0..30 {
                let r = exec(&mut h, &args, b"");
                if r.0 != 255 {
                    return r;
                }
                eprintln!(
                    "degraded guest: {cmd:?}: ssh failed (attempt {attempt}): {}",
                    r.2
                );
                std::thread::sleep(std::time::Duration::from_secs(2));
            }
            panic!(
                "no SSH into the degraded guest; its console:\n{}",
                console_tail()
            );
        };
        let (code, out, err) = degraded_exec(&["findmnt", "-n", "-o", "FSTYPE", "/"]);
        assert_eq!((code, out.trim()), (0, "ext4"), "{err}");
        let (code, _, err) = degraded_exec(&["touch", "/etc/x"]);
        assert_ne!(code, 0, "a write on the read-only root");
        assert!(err.contains("Read-only file system"), "{err}");
        assert_eq!(
            degraded_exec(&["test", "-e", "/etc/banger-e2e-root"]).0,
            1,
            "the image itself never had g1's file"
        );
        stop(&h);
        relabel(banger_proto::guest::OVERLAY_LABEL);
        let again = h.json(&["vm", "start", "g1"]);
        assert_eq!(again[0]["vm"]["state"], "running", "{again}");
        assert_eq!(
            ssh(&mut h, "g1", &["cat", "/etc/banger-e2e-root"]).trim(),
            "g1-root"
        );
        assert_eq!(banners(), 1, "no new failure");
        let sum = Command::new("sha256sum").arg(&rootfs).output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&sum.stdout)
                .split_whitespace()
                .next(),
            Some(rootfs_sha.as_str()),
            "the image's rootfs after a degraded boot"
        );
    }

    // Delete: no process, tap, rule, file or known_hosts entry left.
    let ns = h.netns();
    let tap = started[0]["vm"]["network"]["tap"]
        .as_str()
        .unwrap()
        .to_string();
    h.ok(&["vm", "delete", "-f", "g1"]);
    common::assert_no_vm_leftovers(&h);
    let links = Command::new("ip")
        .args(["-n", &ns, "-o", "link"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&links.stdout).contains(&tap),
        "tap {tap} left"
    );
    let nft = Command::new("ip")
        .args(["netns", "exec", &ns, "nft", "list", "ruleset"])
        .output()
        .unwrap();
    let rules = String::from_utf8_lossy(&nft.stdout);
    assert!(!rules.contains(&tap), "rules for {tap} left: {rules}");
    let known = h.ok(&["ssh-known-hosts"]);
    assert!(!known.contains("g1.vm"), "known_hosts entry left: {known}");
}
