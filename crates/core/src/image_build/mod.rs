//! `banger image build debian-bookworm [--variant minimal|full]`: a golden
//! image — `rootfs.ext4` plus `work-seed.ext4` (the guest's `/root`) — made
//! from Debian packages, without booting anything and without mounting. The
//! guest it makes follows [`banger_proto::guest`], the layout the daemon and
//! the agent rely on.
//!
//! The recipe ([`build`]), one module per step:
//!
//! 1. [`bootstrap`]: `mmdebstrap --mode=root --variant=minbase --include=...`
//!    into a directory, in a private mount namespace (the `/proc`, `/sys` and
//!    `/dev` mounts it makes for the package scripts vanish with it, even if it
//!    is killed);
//! 2. [`configure`]: files written straight into the tree (no chroot; units
//!    are enabled and masked by making the symlinks `systemctl` would). The
//!    files are real files under `images/guest/`, embedded by [`recipe`]:
//!    - sshd: keys only, root by key only, and the host key read from
//!      `/root/.banger/ssh/ssh_host_ed25519_key` on the VM's own work disk
//!      (the daemon writes a fresh key there at create and pins it), so every
//!      `/etc/ssh/ssh_host_*` key the package generated is deleted: no two VMs
//!      share a key and nothing is trusted on first use. `ssh.service` requires
//!      the `/root` mount. (Debian has no regenerate-keys-on-boot service;
//!      one would be masked.)
//!    - network from the kernel command line (`ip=`; no DHCP, no
//!      networkd/ifupdown config), `/etc/resolv.conf` → `/proc/net/pnp` (where
//!      the kernel's autoconfiguration writes `nameserver`), an empty
//!      `/etc/hostname` (`systemd.hostname=` names the guest;
//!      `libnss-myhostname` resolves that name), localhost-only `/etc/hosts`;
//!    - `/etc/fstab`: `/dev/vda` on `/`; the work disk `/dev/vdb` goes on
//!      `/root` through `banger-work-disk.service` (no wait for udev);
//!    - root's password locked (login by SSH key only); the serial getty that
//!      systemd starts from `console=ttyS0` is left alone (never masked);
//!    - [`MASKED_UNITS`]: timers and waits that only cost time in a sandbox;
//!    - the agent binary as `/usr/local/bin/banger-agent`, with
//!      `banger-agent.service` enabled;
//!    - apt lists and caches dropped, and for `minimal` the docs (copyright
//!      files kept), man/info pages and translations; `/etc/machine-id` empty
//!      (systemd makes one per VM on its first boot);
//!    - `/root` moved out into the work seed's tree (with `.ssh/` and
//!      `.banger/ssh/`, both 0700), leaving `/root` empty in the rootfs;
//! 3. [`pack`]: `mkfs.ext4 -d` turns each tree into an image — owners, modes,
//!    xattrs and hard links preserved — sized to its content + 25% + 64 MiB.
//!
//! Everything happens in `cache_dir/<key>.tmp/` (one build per key at a time,
//! under `cache_dir/<key>.lock`), renamed to `cache_dir/<key>/` when complete,
//! so an entry that exists is complete; a build killed half-way leaves a
//! `.tmp` directory that the next build of that key removes ([`cache`];
//! [`tree`] removes such directories without crossing into a mount left
//! inside them).
//!
//! Time sync: `systemd-timesyncd` is not installed and is masked. The guest
//! clock is the hypervisor's paravirtual clock (kvm-clock), which follows the
//! host's; NTP would need `--nat`, and stepping the clock in the middle of a
//! build confuses `make`. (After a pause/resume the guest clock lags by the
//! pause; setting it is the host's job, through the agent.)

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use banger_proto::guest::{ROOT_LABEL, WORK_LABEL};

use crate::build_lock::{lock_key, LockError};
use crate::tools::find_system_tool;

mod bootstrap;
pub mod cache;
pub mod configure;
pub mod pack;
pub mod recipe;
mod run;
mod spec;
pub mod tree;

pub use cache::cache_key;
pub use configure::configure;
pub use pack::{image_size, tree_size, TreeSize, HEADROOM};
pub use recipe::{FULL_EXTRA_PACKAGES, MASKED_UNITS, MINIMAL_PACKAGES, RECIPE_VERSION};
pub use spec::{check_spec, elf_is_static_x86_64, ImageSpec, Variant};
pub use tree::remove_tree;

/// The files of a built image, in `cache_dir/<key>/`.
pub const ROOTFS_FILE: &str = "rootfs.ext4";
pub const WORK_SEED_FILE: &str = "work-seed.ext4";
/// What went into the image (JSON: key, spec, packages, sizes).
pub const BUILD_INFO_FILE: &str = "build.json";

/// A built (or cached) image: the files in `cache_dir/<key>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    pub rootfs: PathBuf,
    pub work_seed: PathBuf,
    pub key: String,
    /// True when the entry was already in the cache and nothing was built.
    pub cached: bool,
    /// `rootfs.ext4`'s length in bytes (the file is sparse).
    pub size_rootfs: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ImageBuildError {
    /// A host tool is missing.
    #[error("missing build tool: {tool} (install with: apt-get install {package})")]
    MissingTool { tool: String, package: String },
    /// The spec cannot be built (unknown distribution, bad mirror URL, an
    /// agent binary that is not a static x86-64 executable).
    #[error("{0}")]
    Invalid(String),
    /// mmdebstrap needs root to make a tree owned by the right users.
    #[error("building an image needs root (mmdebstrap --mode=root, file ownership in the image)")]
    NotRoot,
    /// mmdebstrap failed.
    #[error("mmdebstrap failed; the end of its output:\n{log_tail}")]
    Bootstrap { log_tail: String },
    /// mkfs.ext4 or debugfs failed.
    #[error("{tool} failed; the end of its output:\n{log_tail}")]
    Pack { tool: String, log_tail: String },
    /// `cancel` was set; the running tool was killed and the scratch
    /// directory removed.
    #[error("image build cancelled")]
    Cancelled,
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = ImageBuildError> = std::result::Result<T, E>;

pub(crate) fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> ImageBuildError {
    let context = context.into();
    move |source| ImageBuildError::Io { context, source }
}

/// Builds the image into `cache_dir/<key>/` ([`ROOTFS_FILE`],
/// [`WORK_SEED_FILE`], [`BUILD_INFO_FILE`]) unless that entry already exists
/// (then it returns at once with `cached: true`). Needs root. `progress(stage,
/// done, total)` reports "bootstrap" (mmdebstrap's phases), "configure"
/// (steps) and "pack" (images). `cancel` is checked at least every 100 ms;
/// when set, the running tool's process group is killed (SIGTERM, then
/// SIGKILL after 10 s), the scratch directory removed, and `Cancelled`
/// returned.
pub fn build(
    spec: &ImageSpec,
    cache_dir: &Path,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<BuiltImage> {
    check_spec(spec)?;
    let distro = recipe::find_distro(&spec.distro).expect("checked by check_spec");
    let key = cache_key(spec).map_err(io_ctx("cannot compute the cache key"))?;

    let cache_dir = cache::open_cache_dir(cache_dir)?;
    let entry = cache_dir.join(&key);
    if let Some(built) = cache::cached_entry(&entry, &key) {
        return Ok(built);
    }
    if !rustix::process::geteuid().is_root() {
        return Err(ImageBuildError::NotRoot);
    }
    let mmdebstrap = require_tool("mmdebstrap", "mmdebstrap")?;
    let mkfs = require_tool("mkfs.ext4", "e2fsprogs")?;
    let debugfs = require_tool("debugfs", "e2fsprogs")?;

    let _lock = lock_key(&cache_dir, &key, cancel).map_err(|e| match e {
        LockError::Cancelled => ImageBuildError::Cancelled,
        LockError::Io { context, source } => ImageBuildError::Io { context, source },
    })?;
    // Another build of this key may have finished while we waited.
    if let Some(built) = cache::cached_entry(&entry, &key) {
        return Ok(built);
    }
    let started = Instant::now();
    let scratch = cache::Scratch::create(&cache_dir, &key)?;
    let tmp = scratch.path().to_path_buf();

    let tree = tmp.join("tree");
    let seed = tmp.join("seed");
    let bootstrapped = bootstrap::bootstrap_cached(
        &mmdebstrap,
        distro,
        spec,
        &cache_dir,
        &tree,
        cancel,
        progress,
    )?;
    let bootstrap_secs = started.elapsed().as_secs_f64();
    configure(&tree, &seed, spec, cancel, progress)?;
    let configure_secs = started.elapsed().as_secs_f64() - bootstrap_secs;

    let total = 2;
    progress("pack", 0, total);
    let rootfs_tmp = tmp.join(ROOTFS_FILE);
    let seed_tmp = tmp.join(WORK_SEED_FILE);
    let size_rootfs = pack::pack(&mkfs, &tree, &rootfs_tmp, ROOT_LABEL, "8192", None, cancel)?;
    progress("pack", 1, total);
    let size_seed = pack::pack(&mkfs, &seed, &seed_tmp, WORK_LABEL, "16384", None, cancel)?;
    pack::set_root_mode(&debugfs, &seed_tmp, 0o700, cancel)?;
    progress("pack", 2, total);
    let pack_secs = started.elapsed().as_secs_f64() - bootstrap_secs - configure_secs;

    let packages = installed_packages(&tree);
    remove_tree(&tree).map_err(io_ctx(format!("cannot remove {}", tree.display())))?;
    remove_tree(&seed).map_err(io_ctx(format!("cannot remove {}", seed.display())))?;
    let info = serde_json::json!({
        "key": key,
        "recipe_version": RECIPE_VERSION,
        "distro": distro.name,
        "variant": spec.variant.as_str(),
        "mirror": spec.mirror.as_deref().unwrap_or(distro.mirror),
        "agent_sha256": cache::sha256_file(&spec.agent_binary).map_err(io_ctx("cannot hash the agent"))?,
        "packages": packages,
        "rootfs_bytes": size_rootfs,
        "work_seed_bytes": size_seed,
        "build_secs": started.elapsed().as_secs_f64(),
        // Where the minutes went; "bootstrap_from": "cache" when the tree
        // came from the bootstrap tarball.
        "bootstrap_from": bootstrapped.as_str(),
        "bootstrap_key": bootstrap::bootstrap_key(distro, spec),
        "stage_secs": {
            "bootstrap": bootstrap_secs,
            "configure": configure_secs,
            "pack": pack_secs,
        },
    });
    let info_path = tmp.join(BUILD_INFO_FILE);
    fs::write(&info_path, format!("{info:#}\n"))
        .map_err(io_ctx(format!("cannot write {}", info_path.display())))?;
    scratch.commit(&[&rootfs_tmp, &seed_tmp, &info_path], &entry)?;
    tracing::info!(
        key,
        secs = started.elapsed().as_secs_f64(),
        size_rootfs,
        size_seed,
        "image built"
    );
    Ok(BuiltImage {
        rootfs: entry.join(ROOTFS_FILE),
        work_seed: entry.join(WORK_SEED_FILE),
        key,
        cached: false,
        size_rootfs,
    })
}

pub(crate) fn require_tool(tool: &str, package: &str) -> Result<PathBuf> {
    find_system_tool(tool).ok_or_else(|| ImageBuildError::MissingTool {
        tool: tool.to_string(),
        package: package.to_string(),
    })
}

/// Names of the packages `dpkg` records as installed, sorted.
fn installed_packages(tree: &Path) -> Vec<String> {
    let Ok(status) = fs::read_to_string(configure::at(tree, "var/lib/dpkg/status")) else {
        return Vec::new();
    };
    let mut names: Vec<String> = status
        .split("\n\n")
        .filter(|stanza| stanza.lines().any(|l| l == "Status: install ok installed"))
        .filter_map(|stanza| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix("Package: "))
                .map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests;
