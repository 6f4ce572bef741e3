//! `health`: is the guest up, which boot is this, what is it running.

use std::ffi::CStr;
use std::io;

use banger_proto::agent::{Health, PROTOCOL};

/// Reads `/proc/uptime`, the boot id and `uname`.
pub fn health() -> io::Result<Health> {
    let uptime = std::fs::read_to_string("/proc/uptime")?;
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")?;
    let (hostname, kernel_release) = uname()?;
    Ok(Health {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        protocol: PROTOCOL,
        uptime_secs: parse_uptime(&uptime)?,
        boot_id: boot_id.trim().to_string(),
        hostname,
        kernel_release,
    })
}

/// The first field of `/proc/uptime` ("12345.67 23456.78").
pub fn parse_uptime(text: &str) -> io::Result<f64> {
    text.split_ascii_whitespace()
        .next()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|v| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected /proc/uptime: {text:?}"),
            )
        })
}

/// (nodename, release) from uname(2).
fn uname() -> io::Result<(String, String)> {
    // SAFETY: utsname is plain old data; all-zero is a valid value.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let field = |f: &[libc::c_char]| {
        // SAFETY: the kernel NUL-terminates every utsname field within its
        // array (zeroed above, so a terminator exists in any case).
        unsafe { CStr::from_ptr(f.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    Ok((field(&u.nodename), field(&u.release)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime() {
        assert_eq!(parse_uptime("350735.47 234388.90\n").unwrap(), 350735.47);
        assert!(parse_uptime("").is_err());
        assert!(parse_uptime("-1 2").is_err());
        assert!(parse_uptime("nan 2").is_err());
    }

    #[test]
    fn real_health() {
        let h = health().unwrap();
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert_eq!(h.kernel_release, release.trim());
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(h.hostname, host.trim());
    }
}
