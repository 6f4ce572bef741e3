//! Shared test helpers, and the real builds (root, mmdebstrap, Debian's
//! mirrors).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::*;

const MIB: u64 = 1 << 20;

pub(super) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

pub(super) fn spec(agent: &Path, variant: Variant) -> ImageSpec {
    ImageSpec {
        distro: "debian-bookworm".into(),
        variant,
        agent_binary: agent.to_path_buf(),
        mirror: None,
    }
}

/// Tests run as root (scripts/test.sh): a missing privilege fails them
/// rather than skipping them silently.
pub(super) fn require_root(why: &str) {
    assert!(
        is_root(),
        "this test needs root ({why}): run it as root (sudo scripts/test.sh)"
    );
}

fn assets() -> PathBuf {
    std::env::var_os("BANGER_TEST_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/banger-test"))
}

/// The static agent: `BANGER_TEST_AGENT_BIN`, else built here with the
/// documented command into `$BANGER_TEST_ASSETS/agent-target`.
fn static_agent() -> PathBuf {
    static AGENT: OnceLock<PathBuf> = OnceLock::new();
    AGENT
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("BANGER_TEST_AGENT_BIN") {
                return PathBuf::from(p);
            }
            let target = assets().join("agent-target");
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
            let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(&workspace)
                .args([
                    "build",
                    "--release",
                    "-p",
                    "banger-agent",
                    "--target",
                    "x86_64-unknown-linux-gnu",
                ])
                .env("CARGO_TARGET_DIR", &target)
                .env("RUSTFLAGS", "-C target-feature=+crt-static")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .status()
                .expect("run cargo");
            assert!(status.success(), "building the static agent failed");
            target.join("x86_64-unknown-linux-gnu/release/banger-agent")
        })
        .clone()
}

/// Root and mmdebstrap, or a failure saying how to get them.
fn require_image_build_tools() {
    require_root("mmdebstrap --mode=root, file ownership in the image");
    assert!(
        find_system_tool("mmdebstrap").is_some(),
        "mmdebstrap is not installed: apt-get install mmdebstrap (scripts/test.sh and \
         install.sh --deps-only install it)"
    );
}

/// `debugfs -R request image`'s output.
fn debugfs(image: &Path, request: &str) -> String {
    let out = Command::new(find_system_tool("debugfs").unwrap())
        .args(["-R", request])
        .arg(image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "debugfs {request}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// (mode, uid, gid, name) of every entry of `dir` (`ls -p`).
fn ls(image: &Path, dir: &str) -> Vec<(u32, u32, u32, String)> {
    debugfs(image, &format!("ls -p {dir}"))
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('/').collect();
            (f.len() >= 7).then(|| {
                (
                    u32::from_str_radix(f[2], 8).unwrap(),
                    f[3].parse().unwrap(),
                    f[4].parse().unwrap(),
                    f[5].to_string(),
                )
            })
        })
        .filter(|e| e.3 != "." && e.3 != "..")
        .collect()
}

fn entry(image: &Path, dir: &str, name: &str) -> Option<(u32, u32, u32)> {
    ls(image, dir)
        .into_iter()
        .find(|e| e.3 == name)
        .map(|e| (e.0, e.1, e.2))
}

fn symlink_target(image: &Path, path: &str) -> String {
    let stat = debugfs(image, &format!("stat {path}"));
    assert!(stat.contains("Type: symlink"), "{path}: {stat}");
    let dest = stat
        .lines()
        .find_map(|l| l.trim().strip_prefix("Fast link dest: "))
        .unwrap_or_else(|| panic!("{path}: {stat}"));
    dest.trim_matches('"').to_string()
}

#[test]
fn real_minimal_build_then_cached() {
    require_image_build_tools();
    let agent = static_agent();
    assert!(elf_is_static_x86_64(&File::open(&agent).unwrap()).unwrap());
    // The cache bangerd uses in the integration tests (`[build] cache_dir`
    // = $BANGER_TEST_ASSETS/build), so one real build serves both.
    let cache = assets().join("build/images");
    let s = spec(&agent, Variant::Minimal);
    let cancel = AtomicBool::new(false);
    let mut stages: Vec<(String, u64, u64)> = Vec::new();
    let started = Instant::now();
    let built = build(&s, &cache, &cancel, &mut |st, d, t| {
        stages.push((st.into(), d, t))
    })
    .unwrap();
    eprintln!(
        "image {} (cached: {}) in {:.1}s: rootfs {} MiB, work seed {} MiB",
        built.key,
        built.cached,
        started.elapsed().as_secs_f64(),
        built.size_rootfs / MIB,
        fs::metadata(&built.work_seed).unwrap().len() / MIB
    );
    if !built.cached {
        for st in ["bootstrap", "configure", "pack"] {
            let last = stages.iter().rev().find(|x| x.0 == st).unwrap();
            assert_eq!(last.1, last.2, "{st} finished: {stages:?}");
        }
    }
    assert_eq!(built.key, cache_key(&s).unwrap());
    assert_eq!(
        built.rootfs,
        cache
            .canonicalize()
            .unwrap()
            .join(&built.key)
            .join(ROOTFS_FILE)
    );
    assert!(!cache.join(format!("{}.tmp", built.key)).exists());

    let root = &built.rootfs;
    let sb = crate::artifact::ext4::inspect(&File::open(root).unwrap()).unwrap();
    assert_eq!(sb.volume_name.as_deref(), Some(ROOT_LABEL));
    assert_eq!(sb.block_size, 4096);
    assert_eq!(sb.fs_size, built.size_rootfs);
    assert!(sb.has_journal && sb.has_extents);

    assert_eq!(
        debugfs(root, "cat /etc/ssh/sshd_config.d/banger.conf"),
        recipe::SSHD_DROPIN.content
    );
    let ssh = ls(root, "/etc/ssh");
    assert!(ssh.iter().any(|e| e.3 == "sshd_config"), "{ssh:?}");
    assert!(!ssh.iter().any(|e| e.3.starts_with("ssh_host_")), "{ssh:?}");
    assert_eq!(debugfs(root, "cat /etc/fstab"), recipe::FSTAB.content);
    assert_eq!(symlink_target(root, "/etc/resolv.conf"), "/proc/net/pnp");
    assert_eq!(
        symlink_target(
            root,
            "/etc/systemd/system/multi-user.target.wants/banger-agent.service"
        ),
        "/etc/systemd/system/banger-agent.service"
    );
    assert_eq!(
        debugfs(root, "cat /etc/systemd/system/banger-agent.service"),
        recipe::AGENT_UNIT.content
    );
    assert_eq!(
        symlink_target(
            root,
            "/etc/systemd/system/multi-user.target.wants/ssh.service"
        ),
        "/lib/systemd/system/ssh.service"
    );
    for (unit, _) in MASKED_UNITS {
        assert_eq!(
            symlink_target(root, &format!("/etc/systemd/system/{unit}")),
            "/dev/null"
        );
    }
    assert!(entry(root, "/etc/systemd/system", "serial-getty@ttyS0.service").is_none());
    assert_eq!(
        entry(root, "/usr/local/bin", "banger-agent"),
        Some((0o100755, 0, 0))
    );
    let dumped = tempfile::NamedTempFile::new().unwrap();
    debugfs(
        root,
        &format!(
            "dump /usr/local/bin/banger-agent {}",
            dumped.path().display()
        ),
    );
    assert_eq!(fs::read(dumped.path()).unwrap(), fs::read(&agent).unwrap());
    // Ownership survived mkfs -d: /etc/shadow is root:shadow 0640.
    let shadow_gid = debugfs(root, "cat /etc/group")
        .lines()
        .find_map(|l| l.strip_prefix("shadow:x:"))
        .and_then(|r| r.split(':').next())
        .and_then(|g| g.parse::<u32>().ok())
        .unwrap();
    assert_eq!(
        entry(root, "/etc", "shadow"),
        Some((0o100640, 0, shadow_gid))
    );
    let shadow = debugfs(root, "cat /etc/shadow");
    let root_entry = shadow.lines().find(|l| l.starts_with("root:")).unwrap();
    assert!(root_entry.starts_with("root:*:"), "{root_entry}");
    assert_eq!(debugfs(root, "cat /etc/hostname"), "");
    assert_eq!(debugfs(root, "cat /etc/machine-id"), "");
    assert!(debugfs(root, "cat /etc/nsswitch.conf").contains("myhostname"));
    assert!(ls(root, "/var/lib/apt/lists")
        .iter()
        .all(|e| e.3 == "partial" || e.3 == "lock"));
    // /root is empty (0700) in the rootfs ...
    assert_eq!(entry(root, "/", "root"), Some((0o40700, 0, 0)));
    assert_eq!(ls(root, "/root"), vec![]);
    // ... and its content is the work seed's.
    let seed = &built.work_seed;
    let sb = crate::artifact::ext4::inspect(&File::open(seed).unwrap()).unwrap();
    assert_eq!(sb.volume_name.as_deref(), Some(WORK_LABEL));
    assert!(debugfs(seed, "stat /").contains("Mode:  0700"));
    assert_eq!(entry(seed, "/", ".ssh"), Some((0o40700, 0, 0)));
    assert_eq!(entry(seed, "/", ".banger"), Some((0o40700, 0, 0)));
    assert_eq!(entry(seed, "/.banger", "ssh"), Some((0o40700, 0, 0)));
    assert_eq!(ls(seed, "/.banger/ssh"), vec![]);
    assert!(entry(seed, "/", ".bashrc").is_some());
    let info: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(built.rootfs.with_file_name(BUILD_INFO_FILE)).unwrap(),
    )
    .unwrap();
    assert_eq!(info["key"], built.key.as_str());
    assert!(info["packages"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p == "openssh-server"));

    // Again: from the cache, nothing run.
    let t = Instant::now();
    let again = build(&s, &cache, &cancel, &mut |_, _, _| {
        panic!("no progress for a cached image")
    })
    .unwrap();
    assert!(again.cached);
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(
        (&again.rootfs, &again.work_seed, &again.key),
        (&built.rootfs, &built.work_seed, &built.key)
    );

    // Another agent is another image, but the same bootstrap: in a cache of
    // its own that holds only the first build's bootstrap tarball, the tree
    // comes from the tarball (mmdebstrap does not run) and the image has the
    // same packages and the new agent.
    let distro = recipe::find_distro(&s.distro).unwrap();
    let tarball = bootstrap::bootstrap_tarball(
        &cache.canonicalize().unwrap(),
        &bootstrap::bootstrap_key(distro, &s),
    );
    let other_cache = tempfile::tempdir_in(assets().join("build")).unwrap();
    let linked = tarball.is_file();
    if linked {
        let dest =
            bootstrap::bootstrap_tarball(other_cache.path(), &bootstrap::bootstrap_key(distro, &s));
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        fs::hard_link(&tarball, &dest).unwrap();
    } else {
        // An image cached before bootstrap tarballs existed: this build
        // bootstraps (slowly) and must leave the tarball.
        eprintln!(
            "no bootstrap tarball for {} yet: the second build runs mmdebstrap",
            built.key
        );
    }
    let agent2 = other_cache.path().join("agent");
    let mut bytes = fs::read(&agent).unwrap();
    bytes.extend_from_slice(b"\0another agent build");
    fs::write(&agent2, &bytes).unwrap();
    let s2 = spec(&agent2, Variant::Minimal);
    let t = Instant::now();
    let other = build(&s2, other_cache.path(), &cancel, &mut |_, _, _| {}).unwrap();
    eprintln!(
        "image with another agent in {:.1}s (bootstrap tarball: {linked})",
        t.elapsed().as_secs_f64()
    );
    assert!(!other.cached);
    assert_ne!(other.key, built.key);
    let info2: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(other.rootfs.with_file_name(BUILD_INFO_FILE)).unwrap(),
    )
    .unwrap();
    assert_eq!(
        info2["bootstrap_from"],
        if linked { "cache" } else { "mmdebstrap" },
        "{info2}"
    );
    let made =
        bootstrap::bootstrap_tarball(other_cache.path(), &bootstrap::bootstrap_key(distro, &s));
    assert!(made.is_file());
    if !linked {
        // The shared cache gets it, so the next run takes the fast path.
        fs::create_dir_all(tarball.parent().unwrap()).unwrap();
        fs::hard_link(&made, &tarball).unwrap();
    }
    assert_eq!(info2["packages"], info["packages"]);
    debugfs(
        &other.rootfs,
        &format!(
            "dump /usr/local/bin/banger-agent {}",
            dumped.path().display()
        ),
    );
    assert_eq!(fs::read(dumped.path()).unwrap(), bytes);
    assert_eq!(
        entry(&other.rootfs, "/etc", "shadow"),
        Some((0o100640, 0, shadow_gid))
    );
    assert_eq!(
        debugfs(&other.rootfs, "cat /etc/fstab"),
        recipe::FSTAB.content
    );
}

#[test]
fn cancel_during_bootstrap_leaves_nothing() {
    require_image_build_tools();
    let agent = static_agent();
    let cache = tempfile::tempdir_in("/var/tmp").unwrap();
    let s = spec(&agent, Variant::Minimal);
    let key = cache_key(&s).unwrap();
    let cancel = AtomicBool::new(false);
    let mut cancelled_at = None;
    let r = build(&s, cache.path(), &cancel, &mut |st, done, _| {
        // Cancel once packages are being downloaded.
        if st == "bootstrap" && done >= 2 && cancelled_at.is_none() {
            cancelled_at = Some(Instant::now());
            cancel.store(true, Ordering::Relaxed);
        }
    });
    assert!(matches!(r, Err(ImageBuildError::Cancelled)), "{r:?}");
    let took = cancelled_at.expect("bootstrap progressed").elapsed();
    eprintln!("cancelled in {:.1}s", took.as_secs_f64());
    assert!(took < Duration::from_secs(15));
    let left: Vec<String> = fs::read_dir(cache.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec![format!("{key}.lock")], "no entry, no .tmp");
    // No mount and no process refers to the scratch directory.
    let scratch = cache
        .path()
        .canonicalize()
        .unwrap()
        .join(format!("{key}.tmp"));
    let scratch = scratch.to_string_lossy().into_owned();
    assert!(!fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .contains(&scratch));
    for p in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = fs::read(p.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            assert!(!cmd.contains(&scratch), "still running: {cmd}");
        }
    }
}
