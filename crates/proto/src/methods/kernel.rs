//! `kernel.*`: the kernel registry.

use serde::{Deserialize, Serialize};

use super::{method, Empty, FileInfo, NameParams, OpBegun};
use crate::FdRef;

method!(
    /// Imports a vmlinux or bzImage (extracting the ELF) passed as a descriptor.
    ImportBegin = "kernel.import.begin", ImportParams => OpBegun
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
