//! Test inputs made on the spot: ext4 images by the real mkfs.ext4, and the
//! stub guest kernel (a real x86-64 ELF that Firecracker boots here).

use std::path::Path;
use std::process::Command;

/// Makes an ext4 image of `mib` MiB at `path` with real mkfs.ext4.
pub fn ext4(path: &Path, mib: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(mib << 20).unwrap();
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F"])
        .arg(path)
        .status()
        .expect("mkfs.ext4 (e2fsprogs) is installed");
    assert!(st.success(), "mkfs.ext4 failed");
}

#[allow(unused_imports)] // not every test binary uses it
pub use banger_core::stub_guest::BANNER as STUB_BANNER;

/// The stub guest kernel's bytes.
pub fn stub_kernel() -> Vec<u8> {
    banger_core::stub_guest::elf()
}

/// Writes the stub kernel to `path`.
pub fn write_stub_kernel(path: &Path) {
    std::fs::write(path, stub_kernel()).unwrap();
}

/// The real Debian cloud kernel (bzImage, LZ4 payload) fetched by
/// scripts/fetch-test-assets.sh.
pub fn debian_vmlinuz() -> std::path::PathBuf {
    let p = std::env::var_os("BANGER_TEST_VMLINUZ")
        .map(Into::into)
        .unwrap_or_else(|| {
            std::path::PathBuf::from(
                std::env::var("BANGER_TEST_ASSETS")
                    .unwrap_or_else(|_| "/var/cache/banger-test".into()),
            )
            .join("vmlinuz-cloud-amd64")
        });
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-test-assets.sh",
        p.display()
    );
    p
}
