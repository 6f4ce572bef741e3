//! `image.*`: the image registry.

use serde::{Deserialize, Serialize};

use super::{method, Empty, FileInfo, NameParams, OpBegun};
use crate::FdRef;

method!(
    /// Registers an ext4 rootfs (and optional work seed) passed as descriptors.
    RegisterBegin = "image.register.begin", RegisterParams => OpBegun
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

/// The image features banger knows.
pub const FEATURES: &[&str] = &["ssh", "agent"];

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
