//! `poweroff`: shut the guest down, cleanly when systemd runs it.

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

/// Powers the guest off. Under systemd (`/run/systemd/system` exists, the
/// `sd_booted()` test), `systemctl poweroff --no-block` queues a clean
/// shutdown — services stopped, filesystems unmounted — and returns at once.
/// Otherwise, or when that fails: `sync()` and `reboot(RB_POWER_OFF)`.
pub fn poweroff() -> io::Result<()> {
    if Path::new("/run/systemd/system").is_dir() {
        match Command::new("systemctl")
            .args(["poweroff", "--no-block"])
            .stdin(Stdio::null())
            .status()
        {
            Ok(s) if s.success() => return Ok(()),
            Ok(s) => crate::log!("systemctl poweroff failed ({s}); powering off directly"),
            Err(e) => crate::log!("cannot run systemctl ({e}); powering off directly"),
        }
    }
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    // SAFETY: reboot(2) with a valid command; it returns only on failure.
    if unsafe { libc::reboot(libc::RB_POWER_OFF) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
