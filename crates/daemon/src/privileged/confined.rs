//! e2fsprogs on untrusted images, with the least privilege that works.
//!
//! `e2fsck`, `resize2fs` and `debugfs` parse whatever a work seed or a guest
//! wrote into an ext4 image. A bug in those parsers must not be a host root,
//! so each runs:
//!
//! - on the open descriptor: the daemon opens the image (and the staging
//!   directory of files `debugfs` copies in) and the tool gets them as
//!   `/proc/self/fd/3` and `/proc/self/fd/4`; it is given no host path;
//! - as an unprivileged uid of its own, one per concurrent run from a range
//!   no distribution allocates ([`UID_BASE`]..+[`UID_COUNT`]), so two runs
//!   cannot reach each other through `/proc/PID/fd`; the image (and staging
//!   directory) belong to that uid for the run and get their owner and mode
//!   back afterwards;
//! - with no capabilities (a uid change from root to non-root clears them,
//!   and `no_new_privs` keeps a setuid binary from bringing any back) and no
//!   supplementary groups;
//! - in private mount, network and IPC namespaces: no network at all, and
//!   the directories where data lives (`/root`, `/home`, `/tmp`, `/run`,
//!   `/var/lib`, ...) covered by empty read-only tmpfs mounts, so what the
//!   tool can see is the world-readable system (its own binaries and
//!   libraries) and nothing of banger's or the users'.
//!
//! `mkfs.ext4` writes a new filesystem and parses nothing, so it keeps the
//! plain runner.

use std::ffi::{CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use banger_core::proc::Cmd;

use super::cmd::Ran;
use super::HostError;

/// The image, as the confined tool names it.
pub(super) const IMAGE: &str = "/proc/self/fd/3";
/// The staging directory, as the confined tool names it.
pub(super) const STAGE: &str = "/proc/self/fd/4";

/// The first uid (and gid) of the confined runs: just below 2^31, above
/// every range distributions and systemd assign (systemd's container ranges
/// end at 0x6FFFFFFF, its "foreign" range at 0x7FFEFFFF).
pub const UID_BASE: u32 = 0x7FFF_0000;
/// How many uids the confined runs cycle through.
pub const UID_COUNT: u32 = 0xFFFF;

/// Covered by an empty read-only tmpfs in the tool's mount namespace, where
/// they exist: where users' and banger's data lives.
const HIDDEN: &[&str] = &[
    "/root",
    "/home",
    "/tmp",
    "/var/tmp",
    "/run",
    "/var/lib",
    "/var/cache",
    "/var/log",
    "/var/spool",
    "/srv",
    "/mnt",
    "/media",
    "/opt",
    "/dev/shm",
    "/boot",
];

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs `program` with `args` confined (see the module doc); `image` is
/// opened read-write and given as [`IMAGE`], `stage` (a directory whose
/// files the tool reads) as [`STAGE`]. Returns the output whatever the exit
/// status.
pub(super) fn run(
    program: PathBuf,
    args: &[&OsStr],
    image: &Path,
    stage: Option<&Path>,
) -> Result<Ran, HostError> {
    let uid = UID_BASE + NEXT.fetch_add(1, Ordering::Relaxed) % UID_COUNT;
    let image_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(|e| HostError::io("cannot open", image, e))?;
    let _image_owner = Lent::lend(&image_file, image, uid, 0o600)?;
    let stage_dir = match stage {
        Some(dir) => Some(File::open(dir).map_err(|e| HostError::io("cannot open", dir, e))?),
        None => None,
    };
    let mut _stage_owners = Vec::new();
    if let (Some(dir), Some(f)) = (stage, &stage_dir) {
        _stage_owners.push(Lent::lend(f, dir, uid, 0o700)?);
        let entries = std::fs::read_dir(dir).map_err(|e| HostError::io("cannot list", dir, e))?;
        for entry in entries {
            let path = entry
                .map_err(|e| HostError::io("cannot list", dir, e))?
                .path();
            let f = File::open(&path).map_err(|e| HostError::io("cannot open", &path, e))?;
            _stage_owners.push(Lent::lend(&f, &path, uid, 0o600)?);
        }
    }
    // Above 4, so the dup2 onto 3 and 4 in the child never overwrites one
    // with the other.
    let high = |f: &File, what: &Path| -> Result<OwnedFd, HostError> {
        rustix::io::fcntl_dupfd_cloexec(f.as_fd(), 10)
            .map_err(|e| HostError::io("cannot duplicate the descriptor of", what, e.into()))
    };
    let image_fd = high(&image_file, image)?;
    let stage_fd = match (&stage_dir, stage) {
        (Some(f), Some(p)) => Some(high(f, p)?),
        _ => None,
    };
    let hidden: Vec<CString> = HIDDEN
        .iter()
        .filter(|p| Path::new(p).is_dir())
        .map(|p| CString::new(*p).expect("no NUL in a constant"))
        .collect();
    let (img_raw, stage_raw) = (
        image_fd.as_raw_fd(),
        stage_fd.as_ref().map(|f| f.as_raw_fd()),
    );

    let mut cmd = Cmd::new(&program);
    cmd.args(args);
    cmd.command_mut().env_clear();
    cmd.env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("LC_ALL", "C");
    // SAFETY: runs between fork and exec; `confine` makes only system calls
    // on memory prepared before the fork, and allocates nothing.
    unsafe {
        cmd.command_mut()
            .pre_exec(move || confine(&hidden, img_raw, stage_raw, uid));
    }
    // After the credential change, which clears the parent-death signal.
    cmd.die_with_parent();
    let ran = cmd.output()?;
    drop((image_fd, stage_fd));
    Ok(Ran::from(ran))
}

/// In the child, as root, before exec: the namespaces and hidden mounts, the
/// descriptors onto 3 and 4, then root's privileges dropped for good.
fn confine(hidden: &[CString], image: RawFd, stage: Option<RawFd>, uid: u32) -> io::Result<()> {
    let check = |r: libc::c_int| {
        if r == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    };
    // SAFETY: plain system calls on pointers to data that outlives them.
    unsafe {
        check(libc::unshare(
            libc::CLONE_NEWNS | libc::CLONE_NEWNET | libc::CLONE_NEWIPC,
        ))?;
        check(libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        for dir in hidden {
            check(libc::mount(
                c"banger-confined".as_ptr(),
                dir.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                c"size=4k,mode=0755".as_ptr().cast(),
            ))?;
        }
        if libc::dup2(image, 3) < 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some(stage) = stage {
            if libc::dup2(stage, 4) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        check(libc::setgroups(0, std::ptr::null()))?;
        // The raw system calls, not libc's wrappers: in the child of a fork
        // there is one thread, and nothing to broadcast the change to.
        check(libc::syscall(libc::SYS_setresgid, uid, uid, uid) as libc::c_int)?;
        check(libc::syscall(libc::SYS_setresuid, uid, uid, uid) as libc::c_int)?;
        check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
    }
    Ok(())
}

/// A file handed to a confined uid for one run: owner and mode are put back
/// when this is dropped, whatever the run did.
struct Lent {
    file: File,
    path: PathBuf,
    uid: u32,
    gid: u32,
    mode: u32,
}

impl Lent {
    fn lend(f: &File, path: &Path, uid: u32, mode: u32) -> Result<Lent, HostError> {
        let meta = f
            .metadata()
            .map_err(|e| HostError::io("cannot inspect", path, e))?;
        let file = f
            .try_clone()
            .map_err(|e| HostError::io("cannot duplicate the descriptor of", path, e))?;
        // Still a confined uid's: a daemon killed during a run never gave it
        // back. It was the daemon's (root's) before.
        let stranded = (UID_BASE..UID_BASE + UID_COUNT).contains(&meta.uid());
        let lent = Lent {
            file,
            path: path.to_path_buf(),
            uid: if stranded { 0 } else { meta.uid() },
            gid: if stranded { 0 } else { meta.gid() },
            mode: meta.permissions().mode() & 0o7777,
        };
        std::os::unix::fs::fchown(f, Some(uid), Some(uid))
            .and_then(|()| f.set_permissions(std::fs::Permissions::from_mode(mode)))
            .map_err(|e| HostError::io("cannot hand to the confined tool", path, e))?;
        Ok(lent)
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        let back =
            std::os::unix::fs::fchown(&self.file, Some(self.uid), Some(self.gid)).and_then(|()| {
                self.file
                    .set_permissions(std::fs::Permissions::from_mode(self.mode))
            });
        if let Err(e) = back {
            tracing::error!(path = %self.path.display(), error = %e,
                "cannot give a file back its owner after a confined run");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a hostile tool would try, run as the tool: it reports into the
    /// image it was given (the one place it may write).
    #[test]
    fn a_confined_tool_has_no_privilege_and_sees_nothing_of_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image");
        std::fs::write(&image, "").unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "root only\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let stage = tempfile::tempdir().unwrap();
        std::fs::write(stage.path().join("f0"), "staged\n").unwrap();
        let script = format!(
            "exec >{IMAGE} 2>&1
             echo uid=$(id -u) gid=$(id -g) groups=$(id -G)
             grep -E '^(CapEff|CapPrm|CapAmb|NoNewPrivs)' /proc/self/status
             echo stage=$(cat {STAGE}/f0)
             cat {secret} >/dev/null 2>&1 && echo SECRET-READ
             echo hidden=$(for d in /root /tmp /var/lib /run; do ls -A $d; done | wc -l)
             touch /etc/banger-confined-probe 2>/dev/null && echo ETC-WRITTEN
             echo links=$(awk -F: 'NR > 2 {{ gsub(/ /, \"\", $1); printf \"%s,\", $1 }}' /proc/net/dev)
             kill -0 1 2>/dev/null && echo SIGNALLED-INIT
             echo done",
            secret = secret.display()
        );
        let ran = run(
            "/bin/sh".into(),
            &[OsStr::new("-c"), OsStr::new(&script)],
            &image,
            Some(stage.path()),
        )
        .unwrap();
        assert!(ran.status().success(), "{}", ran.stderr());
        let report = std::fs::read_to_string(&image).unwrap();
        let uid: u32 = report
            .split_whitespace()
            .find_map(|w| w.strip_prefix("uid="))
            .unwrap()
            .parse()
            .unwrap();
        assert!((UID_BASE..UID_BASE + UID_COUNT).contains(&uid), "{report}");
        assert!(
            report.contains(&format!("gid={uid} groups={uid}\n")),
            "{report}"
        );
        for cap in ["CapEff", "CapPrm", "CapAmb"] {
            assert!(
                report.contains(&format!("{cap}:\t0000000000000000")),
                "{cap} not empty: {report}"
            );
        }
        assert!(report.contains("NoNewPrivs:\t1"), "{report}");
        assert!(report.contains("stage=staged\n"), "{report}");
        // Each hidden directory is an empty mount.
        assert!(report.contains("hidden=0\n"), "{report}");
        assert!(
            report.contains("links=lo,\n"),
            "a network namespace of its own: {report}"
        );
        for bad in ["SECRET-READ", "ETC-WRITTEN", "SIGNALLED-INIT"] {
            assert!(!report.contains(bad), "{bad}: {report}");
        }
        assert!(report.ends_with("done\n"), "{report}");
        assert!(!Path::new("/etc/banger-confined-probe").exists());
        // Owner and mode are back.
        let meta = std::fs::metadata(&image).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0));
        let meta = std::fs::metadata(stage.path().join("f0")).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0));
    }
}
