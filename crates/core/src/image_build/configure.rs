//! Step 2: files written straight into the bootstrapped tree — no chroot;
//! units are enabled and masked by making the symlinks `systemctl` would.
//! See the [module doc](super) for what each step does and why; the files
//! themselves are [`super::recipe`]'s.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{symlink, DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use banger_proto::guest;

use super::recipe::{
    GuestFile, AGENT_SERVICE, AGENT_UNIT, FSTAB, HOSTNAME, HOSTS, KEYGEN_UNITS, LOCALE, MACHINE_ID,
    MASKED_UNITS, SSHD_DROPIN, SSH_SERVICE_DROPIN, WORK_DISK_SERVICE, WORK_DISK_UNIT,
};
use super::tree::remove_tree;
use super::{io_ctx, ImageBuildError, ImageSpec, Result, Variant};

/// Configures the bootstrapped `tree` for banger (see the module doc) and
/// moves `/root`'s content into `seed` (created). Cancellation is checked
/// between steps.
pub fn configure(
    tree: &Path,
    seed: &Path,
    spec: &ImageSpec,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<()> {
    type Step<'a> = (&'a str, Box<dyn Fn() -> io::Result<()> + 'a>);
    let steps: Vec<Step> = vec![
        ("sshd", Box::new(|| configure_sshd(tree))),
        ("network", Box::new(|| configure_network(tree))),
        (
            "fstab and system files",
            Box::new(|| configure_system(tree)),
        ),
        ("root account", Box::new(|| lock_root_password(tree))),
        ("units", Box::new(|| configure_units(tree))),
        (
            "agent",
            Box::new(|| install_agent(tree, &spec.agent_binary)),
        ),
        ("cleanup", Box::new(|| clean_tree(tree, spec.variant))),
        ("work seed", Box::new(|| split_root(tree, seed))),
    ];
    let total = steps.len() as u64;
    for (i, (name, step)) in steps.iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            return Err(ImageBuildError::Cancelled);
        }
        progress("configure", i as u64, total);
        step().map_err(io_ctx(format!("configure ({name})")))?;
    }
    progress("configure", total, total);
    Ok(())
}

/// `tree` joined with a relative path inside it.
pub(super) fn at(tree: &Path, rel: &str) -> PathBuf {
    tree.join(rel.trim_start_matches('/'))
}

/// Writes `file` root-owned (parents created 0755) with exactly its mode.
fn write_file(tree: &Path, file: &GuestFile) -> io::Result<()> {
    let path = at(tree, file.path);
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    if fs::symlink_metadata(&path).is_ok_and(|m| !m.is_file()) {
        remove_tree(&path)?;
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(file.mode)
        .open(&path)?;
    f.write_all(file.content.as_bytes())?;
    f.set_permissions(fs::Permissions::from_mode(file.mode))?;
    std::os::unix::fs::fchown(&f, Some(0), Some(0))
}

/// Replaces whatever is at `rel` with a symlink to `target`.
fn force_symlink(tree: &Path, rel: &str, target: &str) -> io::Result<()> {
    let path = at(tree, rel);
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    match fs::symlink_metadata(&path) {
        Ok(m) if m.is_dir() => remove_tree(&path)?,
        Ok(_) => fs::remove_file(&path)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    symlink(target, &path)
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn configure_sshd(tree: &Path) -> io::Result<()> {
    write_file(tree, &SSHD_DROPIN)?;
    write_file(tree, &SSH_SERVICE_DROPIN)?;
    let ssh = at(tree, "etc/ssh");
    if let Ok(entries) = fs::read_dir(&ssh) {
        for e in entries {
            let e = e?;
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                fs::remove_file(e.path())?;
            }
        }
    }
    for unit in KEYGEN_UNITS {
        if unit_exists(tree, unit) {
            mask(tree, unit)?;
        }
    }
    Ok(())
}

fn configure_network(tree: &Path) -> io::Result<()> {
    force_symlink(tree, "etc/resolv.conf", "/proc/net/pnp")?;
    write_file(tree, &HOSTNAME)?;
    write_file(tree, &HOSTS)?;
    // Nothing may configure eth0 but the kernel command line.
    for dir in ["etc/systemd/network", "etc/network/interfaces.d"] {
        if let Ok(entries) = fs::read_dir(at(tree, dir)) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| !t.is_dir()) {
                    fs::remove_file(e.path())?;
                }
            }
        }
    }
    Ok(())
}

fn configure_system(tree: &Path) -> io::Result<()> {
    write_file(tree, &FSTAB)?;
    write_file(tree, &WORK_DISK_UNIT)?;
    enable(tree, WORK_DISK_SERVICE, "local-fs.target")?;
    write_file(tree, &LOCALE)?;
    write_file(tree, &MACHINE_ID)?;
    let dbus_id = at(tree, "var/lib/dbus/machine-id");
    if fs::symlink_metadata(&dbus_id).is_ok() {
        fs::remove_file(&dbus_id)?;
        symlink("/etc/machine-id", &dbus_id)?;
    }
    Ok(())
}

/// Root's password field becomes `*` unless it is already locked (`*` or
/// `!...`): no password login anywhere, the serial console included.
fn lock_root_password(tree: &Path) -> io::Result<()> {
    let path = at(tree, "etc/shadow");
    // An image without shadow passwords (a pulled one may be) has none to lock.
    let text = match fs::read_to_string(&path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        r => r?,
    };
    let mut changed = false;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let mut fields: Vec<&str> = line.split(':').collect();
            if fields.first() == Some(&"root")
                && fields.len() > 1
                && !(fields[1] == "*" || fields[1].starts_with('!'))
            {
                fields[1] = "*";
                changed = true;
            }
            fields.join(":")
        })
        .collect();
    if changed {
        // Rewriting in place keeps the file's owner and mode (root:shadow 0640).
        let mut f = OpenOptions::new().write(true).truncate(true).open(&path)?;
        f.write_all((lines.join("\n") + "\n").as_bytes())?;
    }
    Ok(())
}

const UNIT_DIRS: &[&str] = &[
    "etc/systemd/system",
    "usr/lib/systemd/system",
    "lib/systemd/system",
];

fn unit_exists(tree: &Path, unit: &str) -> bool {
    UNIT_DIRS
        .iter()
        .any(|d| fs::symlink_metadata(at(tree, d).join(unit)).is_ok())
}

/// `systemctl mask`: `/etc/systemd/system/<unit>` → `/dev/null`, and no
/// `*.wants/` link left pointing at it.
fn mask(tree: &Path, unit: &str) -> io::Result<()> {
    let etc = at(tree, "etc/systemd/system");
    if let Ok(entries) = fs::read_dir(&etc) {
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".wants") || name.ends_with(".requires") {
                remove_if_exists(&e.path().join(unit))?;
            }
        }
    }
    force_symlink(tree, &format!("etc/systemd/system/{unit}"), "/dev/null")
}

/// `systemctl enable` of a unit with `WantedBy=<target>`.
fn enable(tree: &Path, unit: &str, target: &str) -> io::Result<()> {
    force_symlink(
        tree,
        &format!("etc/systemd/system/{target}.wants/{unit}"),
        &format!("/etc/systemd/system/{unit}"),
    )
}

fn configure_units(tree: &Path) -> io::Result<()> {
    for (unit, _why) in MASKED_UNITS {
        mask(tree, unit)?;
    }
    // The serial console must keep its getty (systemd starts
    // serial-getty@ttyS0 from console=ttyS0).
    for unit in ["serial-getty@ttyS0.service", "serial-getty@.service"] {
        let p = at(tree, "etc/systemd/system").join(unit);
        if fs::read_link(&p).is_ok_and(|t| t == Path::new("/dev/null")) {
            fs::remove_file(&p)?;
        }
    }
    Ok(())
}

fn install_agent(tree: &Path, agent: &Path) -> io::Result<()> {
    let dest = at(tree, guest::AGENT_PATH);
    if let Some(parent) = dest.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)?;
    }
    fs::copy(agent, &dest)?;
    fs::set_permissions(&dest, fs::Permissions::from_mode(0o755))?;
    std::os::unix::fs::chown(&dest, Some(0), Some(0))?;
    write_file(tree, &AGENT_UNIT)?;
    enable(tree, AGENT_SERVICE, "multi-user.target")
}

/// Empties `dir` (not following symlinks) except the names in `keep`.
fn empty_dir_except(dir: &Path, keep: &[&str]) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        let e = e?;
        if keep.iter().any(|k| e.file_name() == OsStr::new(k)) {
            continue;
        }
        if e.file_type()?.is_dir() {
            remove_tree(&e.path())?;
        } else {
            fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

fn clean_tree(tree: &Path, variant: Variant) -> io::Result<()> {
    // apt: lists and caches (`apt update` first in the guest, as in any
    // container image), and mmdebstrap's no-Recommends setting, so apt in
    // the guest behaves as Debian's does.
    empty_dir_except(&at(tree, "var/lib/apt/lists"), &["partial", "lock"])?;
    empty_dir_except(&at(tree, "var/cache/apt"), &["archives"])?;
    empty_dir_except(&at(tree, "var/cache/apt/archives"), &["partial", "lock"])?;
    remove_if_exists(&at(tree, "etc/apt/apt.conf.d/99mmdebstrap"))?;
    // The build's logs and leftovers.
    for f in [
        "var/log/dpkg.log",
        "var/log/alternatives.log",
        "var/log/bootstrap.log",
    ] {
        remove_if_exists(&at(tree, f))?;
    }
    empty_dir_except(&at(tree, "var/log/apt"), &[])?;
    empty_dir_except(&at(tree, "tmp"), &[])?;
    empty_dir_except(&at(tree, "var/tmp"), &[])?;
    for f in [
        "var/cache/debconf/config.dat-old",
        "var/cache/debconf/templates.dat-old",
    ] {
        remove_if_exists(&at(tree, f))?;
    }
    if variant == Variant::Minimal {
        empty_dir_except(&at(tree, "usr/share/man"), &[])?;
        empty_dir_except(&at(tree, "usr/share/info"), &[])?;
        empty_dir_except(&at(tree, "usr/share/locale"), &["locale.alias"])?;
        // Docs go, licences stay.
        if let Ok(entries) = fs::read_dir(at(tree, "usr/share/doc")) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    empty_dir_except(&e.path(), &["copyright"])?;
                }
            }
        }
    }
    Ok(())
}

/// Moves `/root`'s content into `seed` (0700, the work disk's root), adds
/// the work disk's directories ([`guest::WORK_DIRS`], 0700), and leaves
/// `/root` empty (0700).
fn split_root(tree: &Path, seed: &Path) -> io::Result<()> {
    let root = at(tree, "root");
    fs::DirBuilder::new().mode(0o700).create(seed)?;
    fs::set_permissions(seed, fs::Permissions::from_mode(0o700))?;
    if let Ok(entries) = fs::read_dir(&root) {
        for e in entries {
            let e = e?;
            fs::rename(e.path(), seed.join(e.file_name()))?;
        }
    } else {
        fs::DirBuilder::new().mode(0o700).create(&root)?;
    }
    fs::set_permissions(&root, fs::Permissions::from_mode(0o700))?;
    for d in guest::WORK_DIRS {
        let p = seed.join(d);
        if !p.is_dir() {
            fs::DirBuilder::new().mode(0o700).create(&p)?;
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700))?;
        std::os::unix::fs::chown(&p, Some(0), Some(0))?;
    }
    std::os::unix::fs::chown(seed, Some(0), Some(0))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::super::tests::{require_root, spec};
    use super::*;

    /// A fake bootstrapped tree, as mmdebstrap leaves it, for [`configure`].
    fn fake_tree(root: &Path) {
        let w = |rel: &str, content: &str, mode: u32| {
            let p = at(root, rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, content).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        };
        for k in ["rsa", "ecdsa", "ed25519"] {
            w(&format!("etc/ssh/ssh_host_{k}_key"), "secret", 0o600);
            w(&format!("etc/ssh/ssh_host_{k}_key.pub"), "public", 0o644);
        }
        w(
            "etc/ssh/sshd_config",
            "Include /etc/ssh/sshd_config.d/*.conf\n",
            0o644,
        );
        w(
            "etc/shadow",
            "root::19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",
            0o640,
        );
        std::os::unix::fs::chown(at(root, "etc/shadow"), Some(0), Some(42)).unwrap();
        w("etc/resolv.conf", "nameserver 10.0.0.1\n", 0o644);
        w("etc/hostname", "buildhost\n", 0o644);
        w(
            "etc/machine-id",
            "0123456789abcdef0123456789abcdef\n",
            0o444,
        );
        w(
            "etc/systemd/network/eth0.network",
            "[Match]\nName=eth0\n",
            0o644,
        );
        w(
            "etc/apt/apt.conf.d/99mmdebstrap",
            "Apt::Install-Recommends \"false\";\n",
            0o644,
        );
        w("usr/lib/systemd/system/getty@.service", "[Unit]\n", 0o644);
        w("usr/lib/systemd/system/apt-daily.timer", "[Unit]\n", 0o644);
        w(
            "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease",
            "x",
            0o644,
        );
        w("var/lib/apt/lists/lock", "", 0o640);
        w("var/cache/apt/pkgcache.bin", "x", 0o644);
        w("usr/share/doc/git/copyright", "GPL", 0o644);
        w("usr/share/doc/git/changelog.gz", "x", 0o644);
        w("usr/share/man/man1/git.1.gz", "x", 0o644);
        w("usr/share/locale/de/LC_MESSAGES/git.mo", "x", 0o644);
        w("usr/share/locale/locale.alias", "x", 0o644);
        w("root/.bashrc", "# bashrc\n", 0o644);
        w("root/.profile", "# profile\n", 0o644);
        fs::set_permissions(at(root, "root"), fs::Permissions::from_mode(0o700)).unwrap();
        let wants = at(root, "etc/systemd/system/getty.target.wants");
        fs::create_dir_all(&wants).unwrap();
        symlink(
            "/usr/lib/systemd/system/getty@.service",
            wants.join("getty@tty1.service"),
        )
        .unwrap();
        let timers = at(root, "etc/systemd/system/timers.target.wants");
        fs::create_dir_all(&timers).unwrap();
        symlink(
            "/usr/lib/systemd/system/apt-daily.timer",
            timers.join("apt-daily.timer"),
        )
        .unwrap();
        symlink(
            "/dev/null",
            at(root, "etc/systemd/system/serial-getty@ttyS0.service"),
        )
        .unwrap();
    }

    fn link(p: &Path) -> String {
        fs::read_link(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .display()
            .to_string()
    }

    #[test]
    fn configure_a_fake_tree() {
        require_root("chown");
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        let seed = dir.path().join("seed");
        fake_tree(&tree);
        let agent = dir.path().join("agent");
        fs::write(&agent, b"\x7fELF fake agent").unwrap();
        let mut stages = Vec::new();
        let cancel = AtomicBool::new(false);
        configure(
            &tree,
            &seed,
            &spec(&agent, Variant::Minimal),
            &cancel,
            &mut |s, d, t| stages.push((s.to_string(), d, t)),
        )
        .unwrap();
        assert_eq!(stages.first().unwrap().1, 0);
        assert_eq!(stages.last().unwrap(), &("configure".to_string(), 8, 8));

        let read = |rel: &str| fs::read_to_string(at(&tree, rel)).unwrap();
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
        // sshd
        assert_eq!(
            read("etc/ssh/sshd_config.d/banger.conf"),
            SSHD_DROPIN.content
        );
        assert!(read("etc/systemd/system/ssh.service.d/banger.conf")
            .contains("After=banger-work-disk.service"));
        let keys: Vec<_> = fs::read_dir(at(&tree, "etc/ssh"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("ssh_host_"))
            .collect();
        assert!(keys.is_empty(), "{keys:?}");
        // network, hostname, fstab, machine id, locale
        assert_eq!(link(&at(&tree, "etc/resolv.conf")), "/proc/net/pnp");
        assert_eq!(read("etc/hostname"), "");
        assert!(read("etc/hosts").starts_with("127.0.0.1\tlocalhost\n"));
        assert!(!at(&tree, "etc/systemd/network/eth0.network").exists());
        assert_eq!(read("etc/fstab"), FSTAB.content);
        assert_eq!(read("etc/machine-id"), "");
        assert_eq!(mode(&at(&tree, "etc/machine-id")), 0o444);
        assert_eq!(read("etc/default/locale"), "LANG=C.UTF-8\n");
        // root locked, shadow keeps owner and mode
        assert!(
            read("etc/shadow").starts_with("root:*:19000:"),
            "{}",
            read("etc/shadow")
        );
        assert!(read("etc/shadow").contains("\ndaemon:*:19000:"));
        let sh = fs::metadata(at(&tree, "etc/shadow")).unwrap();
        assert_eq!((sh.mode() & 0o7777, sh.uid(), sh.gid()), (0o640, 0, 42));
        // units
        for (unit, _) in MASKED_UNITS {
            assert_eq!(
                link(&at(&tree, "etc/systemd/system").join(unit)),
                "/dev/null",
                "{unit}"
            );
        }
        assert!(fs::symlink_metadata(at(
            &tree,
            "etc/systemd/system/getty.target.wants/getty@tty1.service"
        ))
        .is_err());
        assert!(fs::symlink_metadata(at(
            &tree,
            "etc/systemd/system/timers.target.wants/apt-daily.timer"
        ))
        .is_err());
        assert!(
            fs::symlink_metadata(at(&tree, "etc/systemd/system/serial-getty@ttyS0.service"))
                .is_err()
        );
        // agent
        let installed = at(&tree, guest::AGENT_PATH);
        assert_eq!(fs::read(&installed).unwrap(), b"\x7fELF fake agent");
        assert_eq!(mode(&installed), 0o755);
        assert_eq!(
            read("etc/systemd/system/banger-agent.service"),
            AGENT_UNIT.content
        );
        // the work disk: a service (no wait for udev), ssh after it
        assert_eq!(
            read("etc/systemd/system/banger-work-disk.service"),
            WORK_DISK_UNIT.content
        );
        assert_eq!(
            link(&at(
                &tree,
                "etc/systemd/system/local-fs.target.wants/banger-work-disk.service"
            )),
            "/etc/systemd/system/banger-work-disk.service"
        );
        assert!(!read("etc/fstab").contains("/dev/vdb /root"));
        assert!(read("etc/systemd/system/ssh.service.d/banger.conf")
            .contains("Requires=banger-work-disk.service"));
        assert_eq!(
            link(&at(
                &tree,
                "etc/systemd/system/multi-user.target.wants/banger-agent.service"
            )),
            "/etc/systemd/system/banger-agent.service"
        );
        // cleanup
        assert!(!at(&tree, "etc/apt/apt.conf.d/99mmdebstrap").exists());
        assert_eq!(
            fs::read_dir(at(&tree, "var/lib/apt/lists"))
                .unwrap()
                .count(),
            1,
            "only the lock"
        );
        assert!(!at(&tree, "var/cache/apt/pkgcache.bin").exists());
        assert!(at(&tree, "usr/share/doc/git/copyright").exists());
        assert!(!at(&tree, "usr/share/doc/git/changelog.gz").exists());
        assert!(!at(&tree, "usr/share/man/man1").exists());
        assert!(!at(&tree, "usr/share/locale/de").exists());
        assert!(at(&tree, "usr/share/locale/locale.alias").exists());
        // /root split into the seed
        assert_eq!(fs::read_dir(at(&tree, "root")).unwrap().count(), 0);
        assert_eq!(mode(&at(&tree, "root")), 0o700);
        assert_eq!(
            fs::read_to_string(seed.join(".bashrc")).unwrap(),
            "# bashrc\n"
        );
        for d in ["", ".ssh", ".banger", ".banger/ssh"] {
            let m = fs::metadata(seed.join(d)).unwrap();
            assert!(m.is_dir());
            assert_eq!((m.mode() & 0o7777, m.uid()), (0o700, 0), "{d}");
        }

        // Configuring again (a retried build) changes nothing.
        let seed2 = dir.path().join("seed2");
        configure(
            &tree,
            &seed2,
            &spec(&agent, Variant::Minimal),
            &cancel,
            &mut |_, _, _| {},
        )
        .unwrap();
        assert!(read("etc/shadow").starts_with("root:*:"));
    }

    #[test]
    fn configure_checks_cancel() {
        let dir = tempfile::tempdir().unwrap();
        let cancel = AtomicBool::new(true);
        let e = configure(
            dir.path(),
            &dir.path().join("seed"),
            &spec(Path::new("/nonexistent"), Variant::Minimal),
            &cancel,
            &mut |_, _, _| {},
        )
        .unwrap_err();
        assert!(matches!(e, ImageBuildError::Cancelled), "{e}");
    }
}
