//! An unpacked OCI tree made into a banger image: banger's guest setup
//! ([`crate::image_build::configure`], the very function `image build` uses:
//! sshd and network from the kernel command line, `/root` on the work disk,
//! the per-VM host key path, the agent and its unit), then `mkfs.ext4 -d`
//! for the root filesystem and the work seed, and `e2fsck -fn`.
//!
//! The tree is hostile: `configure` works with paths, and an image whose
//! `/etc` is a symlink to the host's `/etc` would have it write there. So it
//! runs on a thread of its own that unshares its filesystem attributes
//! (`unshare(CLONE_FS)`, which only that thread's root and working directory
//! follow) and `chroot`s into the tree: every absolute symlink and `..`
//! resolves inside it, as in the guest. The agent binary and the seed
//! directory go through the tree itself (`/.banger-agent`, `/.banger-seed`,
//! removed or moved out afterwards).

use std::fs;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use banger_proto::guest::{self, ROOT_LABEL, WORK_LABEL};
use rustix::fs::{Mode, OFlags, ResolveFlags};

use crate::image_build::{self, pack, ImageBuildError, ImageSpec, Variant};

const AGENT_IN_TREE: &str = ".banger-agent";
const SEED_IN_TREE: &str = ".banger-seed";

/// The result: `rootfs.ext4` and `work-seed.ext4` in the output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    pub rootfs: PathBuf,
    pub work_seed: PathBuf,
    pub size_rootfs: u64,
    /// `agent` always; `ssh` when the image has `/usr/sbin/sshd`.
    pub features: Vec<String>,
}

/// Whether `rel` resolves (following symlinks, inside the tree) to something.
fn exists_in(tree: &Path, rel: &str) -> bool {
    let Ok(root) = rustix::fs::open(tree, OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
    else {
        return false;
    };
    rustix::fs::openat2(
        &root,
        rel,
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
    )
    .is_ok()
}

/// Configures `tree` (consumed: it is removed) and packs it into `out_dir`.
/// `size`: the root filesystem's size (else content + headroom).
pub fn make_image(
    tree: &Path,
    out_dir: &Path,
    agent: &Path,
    size: Option<u64>,
    cancel: &AtomicBool,
    stage: &mut dyn FnMut(&str),
) -> Result<Packed, ImageBuildError> {
    let mkfs = image_build::require_tool("mkfs.ext4", "e2fsprogs")?;
    let debugfs = image_build::require_tool("debugfs", "e2fsprogs")?;
    let e2fsck = image_build::require_tool("e2fsck", "e2fsprogs")?;
    if !exists_in(tree, "sbin/init") {
        return Err(ImageBuildError::Invalid(
            "the image has no /sbin/init: images without an init system (systemd) are not \
             supported yet"
                .into(),
        ));
    }
    // banger's agent is installed below, with the init mode the overlay root
    // needs.
    let mut features = vec!["agent".to_string(), guest::OVERLAY_FEATURE.to_string()];
    if exists_in(tree, "usr/sbin/sshd") {
        features.insert(0, "ssh".to_string());
    }

    stage("configure");
    // The helpers' names are direct children of the tree: nothing to follow.
    for name in [AGENT_IN_TREE, SEED_IN_TREE] {
        image_build::remove_tree(&tree.join(name)).map_err(image_build::io_ctx(format!(
            "cannot clear /{name} in the image"
        )))?;
    }
    {
        let mut src = fs::File::open(agent).map_err(image_build::io_ctx(format!(
            "cannot open {}",
            agent.display()
        )))?;
        let mut dst = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(tree.join(AGENT_IN_TREE))
            .map_err(image_build::io_ctx("cannot place the agent in the image"))?;
        std::io::copy(&mut src, &mut dst)
            .map_err(image_build::io_ctx("cannot place the agent in the image"))?;
    }
    let spec = ImageSpec {
        distro: "oci".into(),
        variant: Variant::Full,
        agent_binary: PathBuf::from("/").join(AGENT_IN_TREE),
        mirror: None,
    };
    let root_fd = rustix::fs::open(
        tree,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| image_build::io_ctx(format!("cannot open {}", tree.display()))(e.into()))?;
    let configured = std::thread::scope(|s| {
        s.spawn(|| -> Result<(), ImageBuildError> {
            let confine = || -> std::io::Result<()> {
                rustix::thread::unshare(rustix::thread::UnshareFlags::FS)?;
                rustix::process::fchdir(&root_fd)?;
                rustix::process::chroot(".")?;
                Ok(())
            };
            confine().map_err(image_build::io_ctx("cannot confine the configure step"))?;
            let seed = PathBuf::from("/").join(SEED_IN_TREE);
            image_build::configure(Path::new("/"), &seed, &spec, cancel, &mut |_, _, _| {})
        })
        .join()
    });
    let configured = configured.unwrap_or_else(|_| {
        Err(ImageBuildError::Invalid(
            "the configure step panicked".into(),
        ))
    });
    let _ = fs::remove_file(tree.join(AGENT_IN_TREE));
    configured?;
    let seed_tree = out_dir.join("seed-tree");
    fs::rename(tree.join(SEED_IN_TREE), &seed_tree).map_err(image_build::io_ctx(
        "cannot move the work seed out of the image",
    ))?;

    stage("pack");
    let rootfs = out_dir.join(image_build::ROOTFS_FILE);
    let work_seed = out_dir.join(image_build::WORK_SEED_FILE);
    let size_rootfs = pack::pack(&mkfs, tree, &rootfs, ROOT_LABEL, "8192", size, cancel)?;
    pack::pack(
        &mkfs, &seed_tree, &work_seed, WORK_LABEL, "16384", None, cancel,
    )?;
    pack::set_root_mode(&debugfs, &work_seed, 0o700, cancel)?;
    stage("check");
    pack::fsck(&e2fsck, &rootfs, cancel)?;
    pack::fsck(&e2fsck, &work_seed, cancel)?;
    image_build::remove_tree(tree).map_err(image_build::io_ctx(format!(
        "cannot remove {}",
        tree.display()
    )))?;
    image_build::remove_tree(&seed_tree).map_err(image_build::io_ctx(format!(
        "cannot remove {}",
        seed_tree.display()
    )))?;
    Ok(Packed {
        rootfs,
        work_seed,
        size_rootfs,
        features,
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// An image whose `/etc` (and `/var/log/apt`, which the setup empties) are
    /// symlinks to host directories: the setup, confined to the tree, writes
    /// and removes only inside it.
    #[test]
    fn the_guest_setup_never_leaves_the_tree() {
        if !rustix::process::geteuid().is_root() {
            panic!("needs root (chroot, file owners)");
        }
        let dir = tempfile::tempdir().unwrap();
        let host = dir.path().join("host");
        fs::create_dir_all(host.join("etc")).unwrap();
        fs::write(host.join("etc/hostname"), "host\n").unwrap();
        fs::create_dir_all(host.join("log")).unwrap();
        fs::write(host.join("log/keep"), "keep\n").unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir_all(tree.join("sbin")).unwrap();
        fs::write(tree.join("sbin/init"), "#!/bin/sh\n").unwrap();
        symlink(host.join("etc"), tree.join("etc")).unwrap();
        fs::create_dir_all(tree.join("var/log")).unwrap();
        symlink(host.join("log"), tree.join("var/log/apt")).unwrap();
        fs::create_dir_all(tree.join("root")).unwrap();
        let agent = dir.path().join("agent");
        fs::write(&agent, b"\x7fELF agent").unwrap();
        let out = dir.path().join("out");
        fs::create_dir(&out).unwrap();

        let r = make_image(
            &tree,
            &out,
            &agent,
            None,
            &AtomicBool::new(false),
            &mut |_| {},
        );
        assert_eq!(
            fs::read_to_string(host.join("etc/hostname")).unwrap(),
            "host\n"
        );
        assert_eq!(fs::read_to_string(host.join("log/keep")).unwrap(), "keep\n");
        let host_entries: Vec<_> = fs::read_dir(host.join("etc")).unwrap().collect();
        assert_eq!(host_entries.len(), 1, "nothing written into the host's etc");
        // The setup may fail on a tree this odd (its /etc leads nowhere in the
        // tree); whether it did or not, nothing outside changed.
        if let Ok(p) = r {
            assert!(p.rootfs.exists() && p.work_seed.exists());
            assert_eq!(
                p.features,
                vec!["agent".to_string(), guest::OVERLAY_FEATURE.to_string()]
            );
        }
    }
}
