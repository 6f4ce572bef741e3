//! Step 1: `mmdebstrap --mode=root --variant=minbase --include=...` into a
//! directory, in a private mount namespace: the `/proc`, `/sys` and `/dev`
//! mounts it makes for the package scripts vanish with it, even if it is
//! killed.

use std::io;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::AtomicBool;

use super::recipe::Distro;
use super::run::run_tool;
use super::{ImageBuildError, ImageSpec, Result};

/// mmdebstrap's `I:` lines that mark its phases, in order: the progress.
const BOOTSTRAP_PHASES: &[&str] = &[
    "running apt-get update",
    "downloading packages",
    "extracting archives",
    "installing essential packages",
    "installing remaining packages",
    "cleaning package lists",
];

/// The apt sources: the suite and its updates from `mirror` (default: the
/// distribution's), plus the security archive with the default mirror only.
fn sources(distro: &Distro, mirror: Option<&str>) -> Vec<String> {
    let suite = distro.suite;
    let main = mirror.unwrap_or(distro.mirror);
    let mut s = vec![
        format!("deb {main} {suite} main"),
        format!("deb {main} {suite}-updates main"),
    ];
    if mirror.is_none() {
        s.push(format!("deb {} {suite}-security main", distro.security));
    }
    s
}

/// Bootstraps `tree` (which must not exist or be empty). `progress("bootstrap",
/// done, total)` follows mmdebstrap's phases.
pub(super) fn bootstrap(
    mmdebstrap: &Path,
    distro: &Distro,
    spec: &ImageSpec,
    tree: &Path,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<()> {
    let total = BOOTSTRAP_PHASES.len() as u64 + 1;
    progress("bootstrap", 0, total);
    let mut cmd = Command::new(mmdebstrap);
    cmd.args([
        "--mode=root",
        "--format=directory",
        "--variant=minbase",
        "--aptopt=Apt::Install-Recommends \"false\"",
    ])
    .arg(format!("--include={}", spec.variant.packages().join(",")))
    .arg(distro.suite)
    .arg(tree)
    .args(sources(distro, spec.mirror.as_deref()))
    .env("LC_ALL", "C.UTF-8");
    // SAFETY: runs between fork and exec; unshare(2), mount(2) and prctl(2)
    // are async-signal-safe system calls and nothing is allocated.
    unsafe {
        cmd.pre_exec(private_mount_namespace);
    }
    let mut on_line = |line: &str| {
        if let Some(i) = BOOTSTRAP_PHASES.iter().position(|p| line.contains(p)) {
            progress("bootstrap", i as u64 + 1, total);
        }
    };
    let (status, tail) = run_tool(cmd, "mmdebstrap", cancel, &mut on_line)?;
    if !status.success() {
        return Err(ImageBuildError::Bootstrap {
            log_tail: format!("{tail}\n(mmdebstrap {status})"),
        });
    }
    progress("bootstrap", total, total);
    Ok(())
}

/// In the child before exec: a mount namespace of its own whose mounts do
/// not propagate back (mmdebstrap mounts /proc, /sys and /dev inside the tree
/// while the package scripts run; they disappear with its processes, whatever
/// ends them), and SIGKILL should the builder die first.
fn private_mount_namespace() -> io::Result<()> {
    // SAFETY: plain system calls on constant arguments.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(io::Error::last_os_error());
        }
        let root = c"/";
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::recipe::find_distro;
    use super::*;

    #[test]
    fn sources_use_the_security_archive_with_the_default_mirror_only() {
        let d = find_distro("debian-bookworm").unwrap();
        assert_eq!(
            sources(d, None),
            [
                "deb http://deb.debian.org/debian bookworm main",
                "deb http://deb.debian.org/debian bookworm-updates main",
                "deb http://deb.debian.org/debian-security bookworm-security main",
            ]
        );
        assert_eq!(
            sources(d, Some("file:/srv/m")),
            [
                "deb file:/srv/m bookworm main",
                "deb file:/srv/m bookworm-updates main"
            ]
        );
    }
}
