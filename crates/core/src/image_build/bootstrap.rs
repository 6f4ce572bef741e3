//! Step 1: `mmdebstrap --mode=root --variant=minbase --include=...` into a
//! directory, in a private mount namespace: the `/proc`, `/sys` and `/dev`
//! mounts it makes for the package scripts vanish with it, even if it is
//! killed.
//!
//! The bootstrapped tree is cached as a tarball, `cache_dir/bootstrap/<key>.tar`,
//! keyed by what mmdebstrap's output depends on ([`bootstrap_key`]: the
//! distribution, the apt sources, the package list, these options) and not
//! by the agent or banger's guest files. So a new agent or guest recipe
//! costs an extraction (seconds) instead of a download and install of every
//! package (minutes). GNU tar keeps owners (numerically), modes, xattrs,
//! hard links, device nodes and holes. Like the images themselves, a cached
//! bootstrap is not refreshed by later Debian updates: removing the file (or
//! the cache directory) makes the next build bootstrap anew. A tarball that
//! fails to extract is removed and the tree bootstrapped again.

use std::fs;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;

use sha2::{Digest, Sha256};

use super::recipe::Distro;
use super::run::run_tool;
use super::{io_ctx, require_tool, ImageBuildError, ImageSpec, Result};

/// Bumped when the bootstrap's options change meaning.
const BOOTSTRAP_VERSION: u32 = 1;

/// Where a tree came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    Mmdebstrap,
    Cache,
}

impl Source {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Source::Mmdebstrap => "mmdebstrap",
            Source::Cache => "cache",
        }
    }
}

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

/// The key of a bootstrapped tree: every input of mmdebstrap's run.
pub(super) fn bootstrap_key(distro: &Distro, spec: &ImageSpec) -> String {
    let mut h = Sha256::new();
    h.update(format!("banger-bootstrap/{BOOTSTRAP_VERSION}\n"));
    h.update(format!("distro {} {}\n", distro.name, distro.suite));
    for line in sources(distro, spec.mirror.as_deref()) {
        h.update(format!("source {line}\n"));
    }
    for arg in MMDEBSTRAP_OPTIONS {
        h.update(format!("option {arg}\n"));
    }
    h.update(format!("packages {}\n", spec.variant.packages().join(",")));
    let digest = hex::encode(h.finalize());
    format!("{}-{}-{}", distro.name, spec.variant, &digest[..16])
}

/// The cached tarball of a bootstrap key.
pub(super) fn bootstrap_tarball(cache_dir: &Path, key: &str) -> PathBuf {
    cache_dir.join("bootstrap").join(format!("{key}.tar"))
}

/// Makes `tree` (which must not exist or be empty) from the cached tarball
/// of its bootstrap key, else with mmdebstrap, then saves the tarball for
/// the next build. `progress("bootstrap", done, total)` follows mmdebstrap's
/// phases (or the extraction).
pub(super) fn bootstrap_cached(
    mmdebstrap: &Path,
    distro: &Distro,
    spec: &ImageSpec,
    cache_dir: &Path,
    tree: &Path,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<Source> {
    let tar = require_tool("tar", "tar")?;
    let key = bootstrap_key(distro, spec);
    let tarball = bootstrap_tarball(cache_dir, &key);
    if tarball.is_file() {
        progress("bootstrap", 0, 1);
        fs::create_dir_all(tree).map_err(io_ctx(format!("cannot create {}", tree.display())))?;
        match untar(&tar, &tarball, tree, cancel) {
            Ok(()) => {
                progress("bootstrap", 1, 1);
                return Ok(Source::Cache);
            }
            Err(ImageBuildError::Cancelled) => return Err(ImageBuildError::Cancelled),
            Err(e) => {
                tracing::warn!(tarball = %tarball.display(), error = %e,
                    "the cached bootstrap does not extract; removing it and bootstrapping anew");
                let _ = fs::remove_file(&tarball);
                super::remove_tree(tree)
                    .map_err(io_ctx(format!("cannot remove {}", tree.display())))?;
            }
        }
    }
    bootstrap(mmdebstrap, distro, spec, tree, cancel, progress)?;
    // The image does not need the tarball: failing to save it (a full
    // disk) is logged, not fatal; a cancel is still a cancel.
    match save(&tar, tree, &tarball, cancel) {
        Ok(()) => {}
        Err(ImageBuildError::Cancelled) => return Err(ImageBuildError::Cancelled),
        Err(e) => tracing::warn!(tarball = %tarball.display(), error = %e,
            "cannot cache the bootstrapped tree"),
    }
    Ok(Source::Mmdebstrap)
}

/// GNU tar's options for a root filesystem tree, both ways.
const TAR_TREE_OPTIONS: &[&str] = &["--xattrs", "--xattrs-include=*", "--numeric-owner"];

fn untar(tar: &Path, tarball: &Path, tree: &Path, cancel: &AtomicBool) -> Result<()> {
    let mut cmd = Command::new(tar);
    cmd.arg("--extract")
        .arg("--file")
        .arg(tarball)
        .arg("--directory")
        .arg(tree)
        .args(TAR_TREE_OPTIONS)
        .args(["--same-owner", "--same-permissions"]);
    run_tar(cmd, cancel)
}

/// Writes `tree` to `tarball` through a temporary name beside it, so the
/// tarball is complete or absent.
fn save(tar: &Path, tree: &Path, tarball: &Path, cancel: &AtomicBool) -> Result<()> {
    let dir = tarball.parent().expect("a tarball path has a directory");
    fs::create_dir_all(dir).map_err(io_ctx(format!("cannot create {}", dir.display())))?;
    // A name of its own: two builds of different images may save the same
    // bootstrap at once; the last rename wins, both complete.
    let tmp = dir.join(format!(".{}.tmp", &crate::ids::new_id()[..16]));
    let done = (|| {
        let mut cmd = Command::new(tar);
        cmd.arg("--create")
            .arg("--file")
            .arg(&tmp)
            .arg("--directory")
            .arg(tree)
            .args(TAR_TREE_OPTIONS)
            .args(["--sparse", "--one-file-system", "."]);
        run_tar(cmd, cancel)?;
        fs::File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(io_ctx("cannot sync the bootstrap tarball"))?;
        fs::rename(&tmp, tarball)
            .map_err(io_ctx(format!("cannot rename into {}", tarball.display())))
    })();
    if done.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    done
}

fn run_tar(cmd: Command, cancel: &AtomicBool) -> Result<()> {
    let (status, tail) = run_tool(cmd, "tar", cancel, &mut |_| {})?;
    if !status.success() {
        return Err(ImageBuildError::Io {
            context: format!("tar {status}"),
            source: io::Error::other(tail),
        });
    }
    Ok(())
}

/// mmdebstrap's options besides the packages, the suite, the target and
/// the sources (part of [`bootstrap_key`]).
const MMDEBSTRAP_OPTIONS: &[&str] = &[
    "--mode=root",
    "--format=directory",
    "--variant=minbase",
    "--aptopt=Apt::Install-Recommends \"false\"",
];

/// Bootstraps `tree` (which must not exist or be empty). `progress("bootstrap",
/// done, total)` follows mmdebstrap's phases.
fn bootstrap(
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
    cmd.args(MMDEBSTRAP_OPTIONS)
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
    use super::super::tests::spec;
    use super::super::Variant;
    use super::*;

    #[test]
    fn the_bootstrap_key_covers_mmdebstraps_inputs_only() {
        let d = find_distro("debian-bookworm").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (a1, a2) = (dir.path().join("a1"), dir.path().join("a2"));
        fs::write(&a1, b"agent 1").unwrap();
        fs::write(&a2, b"agent 2").unwrap();
        let min = bootstrap_key(d, &spec(&a1, Variant::Minimal));
        assert!(min.starts_with("debian-bookworm-minimal-"), "{min}");
        // Not the agent: a new agent reuses the bootstrap.
        assert_eq!(min, bootstrap_key(d, &spec(&a2, Variant::Minimal)));
        // The packages and the mirror.
        assert_ne!(min, bootstrap_key(d, &spec(&a1, Variant::Full)));
        let mut mirrored = spec(&a1, Variant::Minimal);
        mirrored.mirror = Some("http://127.0.0.1:9/debian".into());
        assert_ne!(min, bootstrap_key(d, &mirrored));
    }

    /// A tree with what a root filesystem has (owners, modes, a setuid
    /// file, a hard link, a symlink, an xattr, a device node, a hole) comes
    /// back from the tarball as it was; a broken tarball is an error.
    #[test]
    fn a_saved_tree_extracts_as_it_was() {
        super::super::tests::require_root("owners and device nodes in the tree");
        let tar = require_tool("tar", "tar").unwrap();
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("tree");
        fs::create_dir_all(tree.join("etc")).unwrap();
        fs::create_dir_all(tree.join("dev")).unwrap();
        let sh = |script: &str| {
            let st = Command::new("sh")
                .arg("-c")
                .arg(script)
                .current_dir(&tree)
                .status()
                .unwrap();
            assert!(st.success(), "{script}");
        };
        sh(
            "echo x > etc/shadow && chown 0:42 etc/shadow && chmod 0640 etc/shadow \
            && echo su > su && chmod 4755 su && ln su su-link && ln -s /etc/shadow abs-link \
            && mknod dev/null c 1 3 && truncate -s 64M sparse && echo end >> sparse",
        );
        // security.capability is binary (cap_net_raw+ep, VFS_CAP_REVISION_2).
        let cap: &[u8] = &[
            1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        // chmod after setxattr would drop the capability; set it last.
        rustix::fs::setxattr(
            tree.join("su"),
            "security.capability",
            cap,
            rustix::fs::XattrFlags::empty(),
        )
        .unwrap();
        let xattr = |p: &Path| {
            let mut buf = [0u8; 64];
            let n = rustix::fs::lgetxattr(p, "security.capability", &mut buf).unwrap();
            buf[..n].to_vec()
        };
        let cancel = AtomicBool::new(false);
        let tarball = bootstrap_tarball(t.path(), "k");
        save(&tar, &tree, &tarball, &cancel).unwrap();
        let back = t.path().join("back");
        fs::create_dir(&back).unwrap();
        untar(&tar, &tarball, &back, &cancel).unwrap();
        let listing = |dir: &Path| {
            let out = Command::new("sh")
                .arg("-c")
                .arg("find . -printf '%p %m %U %G %n %l %Y\\n' | sort; stat -c '%t:%T' dev/null; tail -c 4 sparse")
                .current_dir(dir)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        assert_eq!(listing(&back), listing(&tree));
        assert_eq!(xattr(&back.join("su")), cap);
        assert_eq!(
            xattr(&back.join("su-link")),
            cap,
            "a hard link of the same inode"
        );
        let blocks = |p: &Path| {
            use std::os::unix::fs::MetadataExt;
            fs::metadata(p).unwrap().blocks()
        };
        assert!(blocks(&back.join("sparse")) < 1024, "the hole stays a hole");
        // No temporary file is left beside the tarball.
        assert_eq!(fs::read_dir(tarball.parent().unwrap()).unwrap().count(), 1);
        fs::write(&tarball, b"not a tarball").unwrap();
        let again = t.path().join("again");
        fs::create_dir(&again).unwrap();
        assert!(untar(&tar, &tarball, &again, &cancel).is_err());
    }

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
