//! The agent as PID 1: assembles the overlay root, then executes the real
//! init (systemd), which becomes PID 1 in its place.
//!
//! The host attaches the image's `rootfs.ext4` read-only (shared by every VM
//! of the image) as the root disk and a per-VM ext4 disk for the VM's writes,
//! and boots with `root=<root> ro init=<agent> banger_overlay=<device>`
//! ([`banger_proto::guest`] has the names). The kernel mounts the read-only
//! root, runs the agent as init and passes it `banger_overlay` in its
//! environment. The agent then ([`plan`]):
//!
//! 1. checks that the overlay device carries the [`OVERLAY_LABEL`] ext4
//!    label (so the work disk or a stray device is never taken for it), and
//!    mounts devtmpfs on `/dev` first if the device node is missing (the
//!    kernel's `CONFIG_DEVTMPFS_MOUNT` normally did);
//! 2. mounts a scratch tmpfs on [`INIT_RUN`] (the root is read-only: it has
//!    no room for mount points) and makes its mount points there;
//! 3. mounts the overlay disk, makes [`OVERLAY_UPPER`] and [`OVERLAY_WORK`]
//!    on it when missing (a fresh disk), and mounts overlayfs with the
//!    read-only root as its lower layer; when the image has Docker or
//!    containerd, bind-mounts their state directories from the overlay disk
//!    into it ([`NATIVE_DIRS`]: overlay2 refuses an overlayfs backing
//!    filesystem);
//! 4. pivots into the overlay (`pivot_root(".", ".")`) and detaches the old
//!    root with everything mounted under it (`umount2(".", MNT_DETACH)`, as
//!    container runtimes do): the lower layer is not visible in the guest,
//!    and `findmnt /` shows `overlay`. overlayfs holds its own references to
//!    its layers, so detaching their original mounts costs it nothing;
//! 5. executes [`REAL_INIT`] with the arguments the kernel gave the agent and
//!    its environment minus `banger_overlay`.
//!
//! # When the overlay cannot be assembled
//!
//! The agent says why on the console (the serial log the user reads with
//! `banger vm logs`), in a banner that cannot be missed, undoes the steps it
//! took (so systemd finds the mounts the kernel left), and boots the real
//! init on the read-only root. That guest is degraded but reachable (SSH, the
//! agent and the work disk on `/root` work; every write elsewhere fails with
//! EROFS, so nothing is silently lost) and the reason is in its console log;
//! the alternative, halting, would turn a diagnosable guest into a start
//! that only times out. Nothing can reach the shared image either way: its
//! drive is read-only in the VMM. If the real init cannot be executed, the
//! agent exits, which the kernel reports as "Attempted to kill init".
//!
//! Without `banger_overlay` (an image booted the old way with `init=` set by
//! hand) the agent executes the real init at once.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use banger_proto::guest::{
    INIT_RUN, OVERLAY_DISK_MOUNT, OVERLAY_ENV, OVERLAY_LABEL, OVERLAY_ROOT_MOUNT, OVERLAY_UPPER,
    OVERLAY_WORK, REAL_INIT,
};

/// What the kernel gave init, sorted out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitArgs {
    /// The overlay device ([`OVERLAY_ENV`]), when the host asked for one.
    pub overlay: Option<PathBuf>,
    /// Arguments for the real init (the kernel's, after the program name).
    pub args: Vec<OsString>,
    /// The environment for the real init: the kernel's, minus [`OVERLAY_ENV`].
    pub env: Vec<(OsString, OsString)>,
}

impl InitArgs {
    /// Sorts the program's arguments (the first is its own name) and
    /// environment. An empty `banger_overlay=` counts as none.
    pub fn parse(
        args: impl IntoIterator<Item = OsString>,
        env: impl IntoIterator<Item = (OsString, OsString)>,
    ) -> InitArgs {
        let mut overlay = None;
        let mut rest = Vec::new();
        for (k, v) in env {
            if k == OVERLAY_ENV {
                overlay = (!v.is_empty()).then(|| PathBuf::from(v));
            } else {
                rest.push((k, v));
            }
        }
        InitArgs {
            overlay,
            args: args.into_iter().skip(1).collect(),
            env: rest,
        }
    }
}

/// One step of assembling the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Mount devtmpfs on `/dev` unless `device` already exists.
    EnsureDevice { device: PathBuf },
    /// Refuse `device` unless it is ext4 labelled `label`.
    CheckLabel { device: PathBuf, label: String },
    /// `mount(source, target, fstype, flags, data)`.
    Mount {
        source: String,
        target: PathBuf,
        fstype: String,
        flags: MountFlags,
        data: String,
    },
    /// `mkdir target` (mode 0755); an existing directory is fine.
    Mkdir { path: PathBuf },
    /// When `when` exists: `mkdir source` and `target`, then bind-mount
    /// `source` onto `target` (see [`NATIVE_DIRS`]).
    BindIf {
        when: PathBuf,
        source: PathBuf,
        target: PathBuf,
    },
    /// Into `new_root`: `pivot_root(".", ".")`, detach the old root.
    Pivot { new_root: PathBuf },
}

/// Directories that must not live on overlayfs, with the program whose
/// presence in the image asks for them: Docker's `overlay2` and
/// containerd's overlayfs snapshotter refuse an overlayfs backing
/// filesystem (Docker falls back to the slow, space-hungry `vfs` driver).
/// Each is bind-mounted from `native/<name>` on the overlay disk (plain
/// ext4, the VM's own, kept across stop/start like the rest of the VM's
/// writes).
pub const NATIVE_DIRS: &[(&str, &str, &str)] = &[
    // Debian's docker.io installs dockerd in /usr/sbin; Docker's own
    // packages in /usr/bin. Both are looked for (one bind either way).
    ("var/lib/docker", "usr/sbin/dockerd", "var-lib-docker"),
    ("var/lib/docker", "usr/bin/dockerd", "var-lib-docker"),
    (
        "var/lib/containerd",
        "usr/bin/containerd",
        "var-lib-containerd",
    ),
];

/// The mount flags the plan uses (a subset of `MS_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MountFlags {
    pub nosuid: bool,
    pub nodev: bool,
    pub noexec: bool,
    pub noatime: bool,
    /// `MS_BIND`.
    pub bind: bool,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::EnsureDevice { device } => {
                write!(
                    f,
                    "make sure {} exists (devtmpfs on /dev)",
                    device.display()
                )
            }
            Step::CheckLabel { device, label } => {
                write!(
                    f,
                    "check that {} is ext4 labelled {label}",
                    device.display()
                )
            }
            Step::Mount {
                source,
                target,
                fstype,
                data,
                ..
            } => write!(
                f,
                "mount -t {fstype} {source} {}{}",
                target.display(),
                if data.is_empty() {
                    String::new()
                } else {
                    format!(" -o {data}")
                }
            ),
            Step::Mkdir { path } => write!(f, "mkdir {}", path.display()),
            Step::BindIf { source, target, .. } => {
                write!(f, "mount --bind {} {}", source.display(), target.display())
            }
            Step::Pivot { new_root } => write!(f, "pivot_root into {}", new_root.display()),
        }
    }
}

/// The steps that put an overlay root with its upper layer on `device`
/// under the running system.
pub fn plan(device: &Path) -> Vec<Step> {
    let disk = PathBuf::from(OVERLAY_DISK_MOUNT);
    let root = PathBuf::from(OVERLAY_ROOT_MOUNT);
    let upper = disk.join(OVERLAY_UPPER);
    let work = disk.join(OVERLAY_WORK);
    let scratch = Path::new(OVERLAY_DISK_MOUNT)
        .parent()
        .expect("the disk mount point has a parent")
        .to_path_buf();
    vec![
        Step::EnsureDevice {
            device: device.to_path_buf(),
        },
        Step::CheckLabel {
            device: device.to_path_buf(),
            label: OVERLAY_LABEL.to_string(),
        },
        Step::Mount {
            source: "banger-init".into(),
            target: INIT_RUN.into(),
            fstype: "tmpfs".into(),
            flags: MountFlags {
                nosuid: true,
                nodev: true,
                noexec: true,
                ..MountFlags::default()
            },
            data: "mode=0700,size=64k".into(),
        },
        Step::Mkdir { path: scratch },
        Step::Mkdir { path: disk.clone() },
        Step::Mkdir { path: root.clone() },
        Step::Mount {
            source: device.display().to_string(),
            target: disk.clone(),
            fstype: "ext4".into(),
            flags: MountFlags {
                noatime: true,
                ..MountFlags::default()
            },
            data: String::new(),
        },
        Step::Mkdir {
            path: upper.clone(),
        },
        Step::Mkdir { path: work.clone() },
        Step::Mount {
            source: "overlay".into(),
            target: root.clone(),
            fstype: "overlay".into(),
            flags: MountFlags {
                noatime: true,
                ..MountFlags::default()
            },
            data: format!(
                "lowerdir=/,upperdir={},workdir={}",
                upper.display(),
                work.display()
            ),
        },
    ]
    .into_iter()
    .chain(NATIVE_DIRS.iter().map(|(dir, when, name)| Step::BindIf {
        when: root.join(when),
        source: disk.join("native").join(name),
        target: root.join(dir),
    }))
    .chain([Step::Pivot {
        new_root: root.clone(),
    }])
    .collect()
}

/// What the steps do to the system; [`System`] for real, a recording one in
/// the tests.
pub trait Sys {
    fn exists(&self, path: &Path) -> bool;
    /// The ext4 label of `device`, `None` when it is not ext4.
    fn ext4_label(&self, device: &Path) -> io::Result<Option<String>>;
    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MountFlags,
        data: &str,
    ) -> io::Result<()>;
    fn unmount(&self, target: &Path) -> io::Result<()>;
    fn mkdir(&self, path: &Path) -> io::Result<()>;
    fn pivot(&self, new_root: &Path) -> io::Result<()>;
}

/// A step that failed, and what was undone.
#[derive(Debug)]
pub struct Failed {
    pub step: String,
    pub error: io::Error,
    /// Mounts that could not be undone (target, error).
    pub left: Vec<(PathBuf, io::Error)>,
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.step, self.error)?;
        for (t, e) in &self.left {
            write!(f, "; and {} could not be unmounted again: {e}", t.display())?;
        }
        Ok(())
    }
}

/// Runs `steps` in order. On a failure, unmounts what the steps mounted, in
/// reverse (directories made in a scratch tmpfs go with it), and returns
/// which step failed and why.
pub fn execute(steps: &[Step], sys: &dyn Sys) -> Result<(), Failed> {
    let mut mounted: Vec<PathBuf> = Vec::new();
    for step in steps {
        let result = match step {
            Step::EnsureDevice { device } => {
                if sys.exists(device) {
                    Ok(())
                } else {
                    let dev = Path::new("/dev");
                    let flags = MountFlags {
                        nosuid: true,
                        ..MountFlags::default()
                    };
                    sys.mount("devtmpfs", dev, "devtmpfs", flags, "mode=0755")
                        .and_then(|()| {
                            if sys.exists(device) {
                                Ok(())
                            } else {
                                Err(io::Error::new(
                                    io::ErrorKind::NotFound,
                                    "no such device (is the VMM's third drive attached?)",
                                ))
                            }
                        })
                }
            }
            Step::CheckLabel { device, label } => match sys.ext4_label(device) {
                Ok(Some(l)) if &l == label => Ok(()),
                Ok(Some(l)) => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("its ext4 label is {l:?}, not {label:?}: not banger's overlay disk"),
                )),
                Ok(None) => Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "it holds no ext4 filesystem",
                )),
                Err(e) => Err(e),
            },
            Step::Mount {
                source,
                target,
                fstype,
                flags,
                data,
            } => sys
                .mount(source, target, fstype, *flags, data)
                .map(|()| mounted.push(target.clone())),
            Step::Mkdir { path } => sys.mkdir(path),
            Step::BindIf {
                when,
                source,
                target,
            } => {
                if !mounted.contains(target) && sys.exists(when) {
                    let bind = MountFlags {
                        bind: true,
                        ..MountFlags::default()
                    };
                    source
                        .parent()
                        .map_or(Ok(()), |p| sys.mkdir(p))
                        .and_then(|()| sys.mkdir(source))
                        .and_then(|()| sys.mkdir(target))
                        .and_then(|()| {
                            sys.mount(&source.display().to_string(), target, "", bind, "")
                        })
                        .map(|()| mounted.push(target.clone()))
                } else {
                    Ok(())
                }
            }
            Step::Pivot { new_root } => sys.pivot(new_root),
        };
        if let Err(error) = result {
            let mut left = Vec::new();
            for target in mounted.iter().rev() {
                if let Err(e) = sys.unmount(target) {
                    left.push((target.clone(), e));
                }
            }
            return Err(Failed {
                step: step.to_string(),
                error,
                left,
            });
        }
    }
    Ok(())
}

/// The volume label of the ext4 filesystem whose first 2 KiB are `head`;
/// `None` when `head` holds no ext4 superblock.
pub fn ext4_label_of(head: &[u8]) -> Option<String> {
    const SB: usize = 1024;
    let magic = head.get(SB + 0x38..SB + 0x3a)?;
    if magic != [0x53, 0xef] {
        return None;
    }
    let name = head.get(SB + 0x78..SB + 0x88)?;
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    Some(String::from_utf8_lossy(&name[..end]).into_owned())
}

/// The real system calls.
pub struct System;

fn mount_flags(f: MountFlags) -> rustix::mount::MountFlags {
    use rustix::mount::MountFlags as M;
    let mut m = M::empty();
    for (on, flag) in [
        (f.nosuid, M::NOSUID),
        (f.nodev, M::NODEV),
        (f.noexec, M::NOEXEC),
        (f.noatime, M::NOATIME),
        (f.bind, M::BIND),
    ] {
        if on {
            m |= flag;
        }
    }
    m
}

impl Sys for System {
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn ext4_label(&self, device: &Path) -> io::Result<Option<String>> {
        let mut head = vec![0u8; 2048];
        let mut f = std::fs::File::open(device)?;
        f.read_exact(&mut head)?;
        Ok(ext4_label_of(&head))
    }

    fn mount(
        &self,
        source: &str,
        target: &Path,
        fstype: &str,
        flags: MountFlags,
        data: &str,
    ) -> io::Result<()> {
        rustix::mount::mount(source, target, fstype, mount_flags(flags), data)?;
        Ok(())
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        rustix::mount::unmount(target, rustix::mount::UnmountFlags::DETACH)?;
        Ok(())
    }

    fn mkdir(&self, path: &Path) -> io::Result<()> {
        match std::fs::create_dir(path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
            other => other,
        }
    }

    fn pivot(&self, new_root: &Path) -> io::Result<()> {
        rustix::process::chdir(new_root)?;
        if let Err(e) = rustix::process::pivot_root(".", ".") {
            let _ = rustix::process::chdir("/");
            return Err(e.into());
        }
        // The old root now sits on top of the new one at "/": detach it,
        // and everything mounted under it, lazily.
        let detached = rustix::mount::unmount(".", rustix::mount::UnmountFlags::DETACH);
        rustix::process::chdir("/")?;
        if let Err(e) = detached {
            // Past the point of undoing: the old (read-only) root stays
            // visible above the overlay. Say so and carry on.
            say(&format!(
                "WARNING: the old root could not be detached after pivot_root ({e}); \
                 / may still show the read-only root"
            ));
        }
        Ok(())
    }
}

/// One line on the console (init's stderr is `/dev/console`).
fn say(line: &str) {
    eprintln!("banger-init: {line}");
}

/// PID 1: assemble the overlay root when asked to, then become the real
/// init. Returns only when the real init cannot be executed.
pub fn run() -> i32 {
    let a = InitArgs::parse(std::env::args_os(), std::env::vars_os());
    if let Some(device) = &a.overlay {
        match execute(&plan(device), &System) {
            Ok(()) => say(&format!(
                "root is an overlay: the image's root read-only below, this VM's changes on {} \
                 ({OVERLAY_LABEL})",
                device.display()
            )),
            Err(f) => {
                let bar = "!".repeat(72);
                eprintln!("{bar}");
                say(&format!("CANNOT ASSEMBLE THE OVERLAY ROOT: {f}"));
                say("booting on the image's READ-ONLY root instead: every write outside /root");
                say("fails (EROFS). Report this with the console log (banger vm logs NAME).");
                eprintln!("{bar}");
            }
        }
    }
    let err = std::process::Command::new(REAL_INIT)
        .args(&a.args)
        .env_clear()
        .envs(a.env.iter().map(|(k, v)| (k.as_os_str(), v.as_os_str())))
        .exec();
    say(&format!(
        "cannot execute {REAL_INIT}: {err}; nothing left to run as init"
    ));
    1
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    #[test]
    fn parse_takes_the_overlay_out_of_the_environment() {
        let env = |kv: &[(&str, &str)]| -> Vec<(OsString, OsString)> {
            kv.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect()
        };
        let a = InitArgs::parse(
            ["/usr/local/bin/banger-agent", "single"].map(OsString::from),
            env(&[
                ("HOME", "/"),
                ("banger_overlay", "/dev/vdc"),
                ("TERM", "linux"),
            ]),
        );
        assert_eq!(a.overlay.as_deref(), Some(Path::new("/dev/vdc")));
        assert_eq!(a.args, vec![OsString::from("single")]);
        assert_eq!(a.env, env(&[("HOME", "/"), ("TERM", "linux")]));
        let a = InitArgs::parse(
            ["/init"].map(OsString::from),
            env(&[("banger_overlay", "")]),
        );
        assert_eq!(a.overlay, None);
        assert!(a.args.is_empty() && a.env.is_empty());
    }

    #[test]
    fn plan_mounts_the_disk_then_the_overlay_then_pivots() {
        let steps = plan(Path::new("/dev/vdc"));
        let text: Vec<String> = steps.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            text,
            [
                "make sure /dev/vdc exists (devtmpfs on /dev)",
                "check that /dev/vdc is ext4 labelled banger-overlay",
                "mount -t tmpfs banger-init /run -o mode=0700,size=64k",
                "mkdir /run/banger-init",
                "mkdir /run/banger-init/disk",
                "mkdir /run/banger-init/root",
                "mount -t ext4 /dev/vdc /run/banger-init/disk",
                "mkdir /run/banger-init/disk/upper",
                "mkdir /run/banger-init/disk/work",
                "mount -t overlay overlay /run/banger-init/root -o \
                 lowerdir=/,upperdir=/run/banger-init/disk/upper,workdir=/run/banger-init/disk/work",
                "mount --bind /run/banger-init/disk/native/var-lib-docker /run/banger-init/root/var/lib/docker",
                "mount --bind /run/banger-init/disk/native/var-lib-docker /run/banger-init/root/var/lib/docker",
                "mount --bind /run/banger-init/disk/native/var-lib-containerd /run/banger-init/root/var/lib/containerd",
                "pivot_root into /run/banger-init/root",
            ]
        );
        // The label check comes before anything is mounted.
        let first_mount = steps
            .iter()
            .position(|s| matches!(s, Step::Mount { .. }))
            .unwrap();
        assert!(matches!(steps[1], Step::CheckLabel { .. }) && first_mount == 2);
    }

    /// Records what it is asked; fails the n-th call of one kind.
    #[derive(Default)]
    struct Fake {
        calls: RefCell<Vec<String>>,
        fail_mount: Option<usize>,
        fail_pivot: bool,
        label: Option<String>,
        missing: bool,
        /// The image has dockerd and containerd.
        programs: bool,
    }

    impl Sys for Fake {
        fn exists(&self, p: &Path) -> bool {
            self.calls
                .borrow_mut()
                .push(format!("exists {}", p.display()));
            let p_text = p.to_string_lossy();
            if p_text.contains("/usr/bin/") || p_text.contains("/usr/sbin/") {
                return self.programs;
            }
            !self.missing
        }
        fn ext4_label(&self, _: &Path) -> io::Result<Option<String>> {
            Ok(self.label.clone())
        }
        fn mount(&self, _: &str, t: &Path, fs: &str, _: MountFlags, _: &str) -> io::Result<()> {
            let n = self
                .calls
                .borrow()
                .iter()
                .filter(|c| c.starts_with("mount "))
                .count();
            self.calls
                .borrow_mut()
                .push(format!("mount {fs} {}", t.display()));
            if self.fail_mount == Some(n) {
                return Err(io::Error::from_raw_os_error(19)); // ENODEV
            }
            Ok(())
        }
        fn unmount(&self, t: &Path) -> io::Result<()> {
            self.calls
                .borrow_mut()
                .push(format!("umount {}", t.display()));
            Ok(())
        }
        fn mkdir(&self, _: &Path) -> io::Result<()> {
            Ok(())
        }
        fn pivot(&self, r: &Path) -> io::Result<()> {
            self.calls
                .borrow_mut()
                .push(format!("pivot {}", r.display()));
            if self.fail_pivot {
                return Err(io::Error::from_raw_os_error(22));
            }
            Ok(())
        }
    }

    fn mounts_and_more(f: &Fake) -> Vec<String> {
        f.calls
            .borrow()
            .iter()
            .filter(|c| !c.starts_with("exists"))
            .cloned()
            .collect()
    }

    /// With Docker in the image, its directories are bind-mounted from the
    /// overlay disk before the pivot (so they are ext4, not overlayfs), and
    /// undone with the rest when the pivot fails.
    #[test]
    fn docker_and_containerd_state_stays_off_overlayfs() {
        let steps = plan(Path::new("/dev/vdc"));
        let f = Fake {
            label: Some(OVERLAY_LABEL.to_string()),
            programs: true,
            fail_pivot: true,
            ..Fake::default()
        };
        execute(&steps, &f).unwrap_err();
        assert_eq!(
            mounts_and_more(&f)[3..],
            [
                " /run/banger-init/root/var/lib/docker",
                " /run/banger-init/root/var/lib/containerd",
                "pivot /run/banger-init/root",
                "umount /run/banger-init/root/var/lib/containerd",
                "umount /run/banger-init/root/var/lib/docker",
                "umount /run/banger-init/root",
                "umount /run/banger-init/disk",
                "umount /run",
            ]
            .map(|s| if s.starts_with(' ') {
                format!("mount {s}")
            } else {
                s.to_string()
            })
        );
    }

    #[test]
    fn execute_in_order_and_undo_on_failure() {
        let label = Some(OVERLAY_LABEL.to_string());
        let steps = plan(Path::new("/dev/vdc"));
        let ok = Fake {
            label: label.clone(),
            ..Fake::default()
        };
        execute(&steps, &ok).unwrap();
        assert_eq!(
            mounts_and_more(&ok),
            [
                "mount tmpfs /run",
                "mount ext4 /run/banger-init/disk",
                "mount overlay /run/banger-init/root",
                "pivot /run/banger-init/root"
            ]
        );

        // overlayfs refused: the disk and the tmpfs are unmounted again.
        let f = Fake {
            label: label.clone(),
            fail_mount: Some(2),
            ..Fake::default()
        };
        let e = execute(&steps, &f).unwrap_err();
        assert!(e.step.starts_with("mount -t overlay"), "{e}");
        assert_eq!(
            mounts_and_more(&f)[3..],
            ["umount /run/banger-init/disk", "umount /run"]
        );

        // The pivot fails: every mount undone, newest first.
        let f = Fake {
            label: label.clone(),
            fail_pivot: true,
            ..Fake::default()
        };
        let e = execute(&steps, &f).unwrap_err();
        assert!(e.to_string().starts_with("pivot_root into"), "{e}");
        assert_eq!(
            mounts_and_more(&f)[4..],
            [
                "umount /run/banger-init/root",
                "umount /run/banger-init/disk",
                "umount /run"
            ]
        );
    }

    #[test]
    fn a_wrong_or_missing_device_mounts_nothing() {
        let steps = plan(Path::new("/dev/vdc"));
        let f = Fake {
            label: Some("banger-work".into()),
            ..Fake::default()
        };
        let e = execute(&steps, &f).unwrap_err();
        assert!(e.to_string().contains("\"banger-work\""), "{e}");
        assert!(mounts_and_more(&f).is_empty());
        let f = Fake::default();
        assert!(execute(&steps, &f)
            .unwrap_err()
            .to_string()
            .contains("no ext4 filesystem"));
        // The node is missing even after devtmpfs: devtmpfs stays (systemd
        // wants it on /dev anyway), nothing else is tried.
        let f = Fake {
            missing: true,
            ..Fake::default()
        };
        let e = execute(&steps, &f).unwrap_err();
        assert!(e.to_string().contains("third drive"), "{e}");
        assert_eq!(mounts_and_more(&f), ["mount devtmpfs /dev"]);
    }

    #[test]
    fn ext4_label_from_a_real_filesystem() {
        let dir = std::env::temp_dir().join(format!("banger-agent-label-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("o.ext4");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let st = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", OVERLAY_LABEL])
            .arg(&img)
            .status()
            .expect("mkfs.ext4 (e2fsprogs) is needed for this test");
        assert!(st.success());
        assert_eq!(
            System.ext4_label(&img).unwrap().as_deref(),
            Some(OVERLAY_LABEL)
        );
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        assert_eq!(System.ext4_label(&img).unwrap(), None);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(ext4_label_of(&[0u8; 100]), None);
    }
}
