//! `kernel.*`: the kernel registry.

use serde::{Deserialize, Serialize};

use super::{method, Empty, FileInfo, NameParams, OpBegun};
use crate::FdRef;

method!(
    /// Imports a vmlinux or bzImage (extracting the ELF) passed as a descriptor.
    ImportBegin = "kernel.import.begin", ImportParams => OpBegun
);
method!(
    /// Builds a vmlinux from kernel source with a config fragment (cached by
    /// source + fragment) and registers it.
    BuildBegin = "kernel.build.begin", BuildParams => OpBegun
);
method!(
    /// Writes a kernel as a bundle (see `image.bundle.begin`).
    BundleBegin = "kernel.bundle.begin", super::image::BundleParams => OpBegun
);
method!(
    /// Kernels visible to the caller.
    List = "kernel.list", Empty => Vec<KernelInfo>
);
method!(
    /// One kernel.
    Show = "kernel.show", NameParams => KernelInfo
);
method!(
    /// Removes a kernel no image uses.
    Delete = "kernel.delete", NameParams => Empty
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportParams {
    pub name: String,
    pub kernel: FdRef,
    #[serde(default)]
    pub initrd: Option<FdRef>,
    /// The path as the user typed it, for messages only: never opened.
    #[serde(default)]
    pub source: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildParams {
    /// Absent: `banger-<major>-<minor>` of the source (e.g. `banger-6-1`).
    #[serde(default)]
    pub name: Option<String>,
    /// An unpacked, unconfigured kernel tree, passed as an `O_DIRECTORY`
    /// descriptor (root only, see docs). Absent: Debian's `linux-source-6.1`.
    #[serde(default)]
    pub source: Option<FdRef>,
    /// A config fragment passed as a descriptor. Absent: banger's own
    /// (`images/kernel/banger.config`, built into the daemon).
    #[serde(default)]
    pub config: Option<FdRef>,
    /// `make -j`; absent or 0: `[build] jobs`, else the number of CPUs.
    #[serde(default)]
    pub jobs: Option<u32>,
    /// When a kernel of that name exists with other content: replace it
    /// (refused while images use it) instead of failing.
    #[serde(default)]
    pub replace: bool,
    /// Paths as typed, for messages only: never opened.
    #[serde(default)]
    pub source_path: Option<String>,
    #[serde(default)]
    pub config_path: Option<String>,
}

/// The result of `kernel.build` (the operation's `result`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildResult {
    pub kernel: KernelInfo,
    /// The build cache entry was used: nothing was compiled.
    pub cached: bool,
    /// A kernel of that name with the same content was registered already
    /// and is what `kernel` is.
    pub reused: bool,
    /// The build cache key (sha256 of source, fragment and recipe).
    pub cache_key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KernelInfo {
    pub id: String,
    pub name: String,
    pub owner_uid: u32,
    /// `elf`, or `bzimage+<compression>` when banger extracted the ELF.
    pub format: String,
    /// The kernel release string found in the image, if any.
    #[serde(default)]
    pub release: Option<String>,
    pub vmlinux: FileInfo,
    #[serde(default)]
    pub initrd: Option<FileInfo>,
    pub created_at: String,
    /// Images that use this kernel.
    pub used_by: Vec<String>,
}
