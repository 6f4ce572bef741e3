//! Virtual machine monitors: the processes that run a VM.
//!
//! [`process`] tracks a VMM process race-free (pidfd + start time), whatever
//! the VMM; [`firecracker`] spawns Firecracker and drives its HTTP API;
//! [`registry`] holds the backends by name, swappable (tests use `fake`).

pub mod backend;
#[cfg(test)]
pub mod fake;
pub mod firecracker;
pub mod firecracker_vmm;
pub mod launch_files;
pub mod probe;
pub mod process;
pub mod qemu;
pub mod qemu_vmm;
pub mod registry;
