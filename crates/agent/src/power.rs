//! `poweroff`: shut the guest down, cleanly when systemd runs it, in the way
//! that ends the VMM.
//!
//! banger's machines have no power device: Firecracker has no ACPI, and
//! QEMU runs `-M microvm,acpi=off`. A kernel powering off there only halts
//! its CPUs and the VMM process keeps running. What ends both VMMs is a
//! reset: Firecracker exits on the guest's i8042 reset (the kernel command
//! line has `reboot=k`), QEMU runs with `-no-reboot`, so a reset makes it
//! exit. So the agent's "power off" is a clean shutdown that ends in a
//! reboot: services stopped, filesystems unmounted, then the reset, which
//! the VMM turns into its exit and the daemon sees as "ended by guest".

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

/// Shuts the guest down. Under systemd (`/run/systemd/system` exists, the
/// `sd_booted()` test), `systemctl reboot --no-block` queues a clean
/// shutdown — services stopped, filesystems unmounted — and returns at once.
/// Otherwise, or when that fails: `sync()` and `reboot(RB_AUTOBOOT)`.
pub fn poweroff() -> io::Result<()> {
    if Path::new("/run/systemd/system").is_dir() {
        match Command::new("systemctl")
            .args(["reboot", "--no-block"])
            .stdin(Stdio::null())
            .status()
        {
            Ok(s) if s.success() => return Ok(()),
            Ok(s) => crate::log!("systemctl reboot failed ({s}); resetting directly"),
            Err(e) => crate::log!("cannot run systemctl ({e}); resetting directly"),
        }
    }
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    // SAFETY: reboot(2) with a valid command; it returns only on failure.
    if unsafe { libc::reboot(libc::RB_AUTOBOOT) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
