//! `image.*`: the image registry.

use serde::{Deserialize, Serialize};

use super::{method, Empty, FileInfo, NameParams, OpBegun};
use crate::FdRef;

method!(
    /// Registers an ext4 rootfs (and optional work seed) passed as descriptors.
    RegisterBegin = "image.register.begin", RegisterParams => OpBegun
);
method!(
    /// Builds a golden image from distribution packages (cached by recipe)
    /// and registers it, building the default kernel first when needed.
    BuildBegin = "image.build.begin", BuildParams => OpBegun
);
method!(
    /// Pulls an OCI image from a registry, makes it bootable and registers it.
    PullBegin = "image.pull.begin", PullParams => OpBegun
);
method!(
    /// Writes an image as a bundle (`manifest.json` and its files in a
    /// tar.zst) to a regular file the caller opened for writing.
    BundleBegin = "image.bundle.begin", BundleParams => OpBegun
);
method!(
    /// Images visible to the caller.
    List = "image.list", Empty => Vec<ImageInfo>
);
method!(
    /// One image.
    Show = "image.show", NameParams => ImageInfo
);
method!(
    /// Removes an image no VM uses.
    Delete = "image.delete", NameParams => Empty
);
method!(
    /// Makes the image the caller's default (root: everyone's default).
    Promote = "image.promote", NameParams => ImageInfo
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterParams {
    pub name: String,
    /// Name of a registered kernel.
    pub kernel: String,
    pub rootfs: FdRef,
    #[serde(default)]
    pub work_seed: Option<FdRef>,
    /// Paths as typed, for messages only: never opened.
    #[serde(default)]
    pub rootfs_source: Option<String>,
    #[serde(default)]
    pub work_seed_source: Option<String>,
    /// What the guest offers: `ssh` (sshd reading the VM's host key and
    /// authorized_keys from the work disk, see docs), `agent` (banger-agent).
    #[serde(default)]
    pub features: Vec<String>,
}

/// The distributions `image.build` knows.
pub const DISTROS: &[&str] = &["debian-bookworm"];

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildParams {
    /// `debian-bookworm`.
    pub distro: String,
    /// `minimal` (default) or `full`.
    #[serde(default)]
    pub variant: Option<String>,
    /// Absent: the distro name, plus `-full` for the full variant. Built
    /// from banger's defaults under that name, the image is root's (shared).
    #[serde(default)]
    pub name: Option<String>,
    /// A registered kernel. Absent: the default built kernel (`banger-6-1`),
    /// built first when missing.
    #[serde(default)]
    pub kernel: Option<String>,
    /// A Debian mirror URL instead of deb.debian.org.
    #[serde(default)]
    pub mirror: Option<String>,
    /// When an image of that name exists with other content: replace it
    /// (refused while VMs use it) instead of failing.
    #[serde(default)]
    pub replace: bool,
    /// The first-use build `vm create` asks for when no image is registered:
    /// banger's defaults only (no name, kernel, mirror or replace; minimal);
    /// the kernel and image are shared (owned by root) and the image becomes
    /// everyone's default when root has none. Refused when `[build] auto =
    /// false`.
    #[serde(default)]
    pub auto: bool,
}

/// The result of `image.build` (the operation's `result`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildResult {
    pub image: ImageInfo,
    /// The image build cache entry was used: nothing was bootstrapped.
    pub cached: bool,
    /// An image of that name with the same content was registered already.
    pub reused: bool,
    /// The kernel was built (or taken from the build cache) by this operation.
    pub kernel_built: bool,
    pub cache_key: String,
}

#[derive(Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PullParams {
    /// `[registry/]repository[:tag|@sha256:...]`; no registry: docker.io.
    pub reference: String,
    /// Absent: the repository's last component (and the tag, unless `latest`).
    #[serde(default)]
    pub name: Option<String>,
    /// A registered kernel. Absent: the default kernel (`banger-6-1`), which
    /// must be registered.
    #[serde(default)]
    pub kernel: Option<String>,
    /// The root filesystem's size in bytes; also the bound on the unpacked
    /// content. Absent: content + 25% + 64 MiB, content at most 16 GiB.
    #[serde(default)]
    pub size: Option<u64>,
    /// `linux/amd64` (the only platform banger's guests run).
    #[serde(default)]
    pub platform: Option<String>,
    /// Plain HTTP to a registry that is not on loopback.
    #[serde(default)]
    pub insecure: bool,
    /// Credentials for the reference's registry, read by the CLI (as the
    /// user) from their `~/.docker/config.json`. The daemon reads no home.
    #[serde(default)]
    pub auth: Option<RegistryAuth>,
}

/// `Debug` leaves the password out.
impl std::fmt::Debug for PullParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PullParams")
            .field("reference", &self.reference)
            .field("name", &self.name)
            .field("kernel", &self.kernel)
            .field("size", &self.size)
            .field("platform", &self.platform)
            .field("insecure", &self.insecure)
            .field("auth", &self.auth.as_ref().map(|a| &a.username))
            .finish()
    }
}

#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
}

/// The result of `image.pull` (the operation's `result`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullResult {
    pub image: ImageInfo,
    /// The manifest's digest (the tag resolved).
    pub digest: String,
    pub layers: u32,
    /// Layers found in the layer cache (not downloaded).
    pub layers_cached: u32,
    /// Bytes downloaded by this pull.
    pub downloaded: u64,
    /// Device nodes in the layers, skipped.
    pub devices_skipped: u64,
}

/// The image features banger knows.
pub const FEATURES: &[&str] = &["ssh", "agent", crate::guest::OVERLAY_FEATURE];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub id: String,
    pub name: String,
    pub owner_uid: u32,
    pub kernel: String,
    pub rootfs: FileInfo,
    #[serde(default)]
    pub work_seed: Option<FileInfo>,
    /// This image is what `vm create` uses for the caller when no `--image` is given.
    pub default: bool,
    pub created_at: String,
    /// VMs that use this image.
    pub used_by: Vec<String>,
    /// `ssh`, `agent`.
    #[serde(default)]
    pub features: Vec<String>,
}

/// `image.bundle.begin` / `kernel.bundle.begin`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleParams {
    /// The image or kernel.
    pub name: String,
    /// Where the bundle goes: a regular file opened for writing (the CLI
    /// opens `-o FILE` as the user).
    pub out: FdRef,
}

/// The result of `image.bundle` / `kernel.bundle`: what the bundle holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundleResult {
    pub name: String,
    /// `image` or `kernel`.
    pub kind: String,
    /// Each file: its name in the bundle, size and sha256.
    pub files: Vec<BundledFile>,
    /// The bundle's own size (compressed).
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BundledFile {
    pub name: String,
    pub size: u64,
    pub sha256: String,
}
