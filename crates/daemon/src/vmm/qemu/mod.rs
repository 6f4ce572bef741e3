//! The QEMU backend's building blocks: [`launch`] builds the `-M microvm`
//! command line for a VM, spawns QEMU (vCPUs stopped) and waits for QMP;
//! [`qmp`] is a typed client for QMP. [`super::qemu_vmm`] maps the
//! lifecycle's verbs onto them.
//!
//! QEMU is the second VMM next to Firecracker (the default). It matters where
//! Firecracker cannot boot a real Linux guest — nested paravirtual KVM, where
//! QEMU runs one with TCG (software emulation). Its kernel must be an
//! uncompressed vmlinux with the PVH ELF note (`CONFIG_PVH=y`) or a bzImage.

pub mod launch;
pub mod qmp;
