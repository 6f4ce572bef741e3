//! What `vm create` uses when a flag is not given: `[vm_defaults]` in the
//! config, else host heuristics — vCPUs = host CPUs / 4 (1..=4), memory = host
//! RAM / 8 (256 MiB..=8 GiB), work disk 8 GiB.

use crate::error::Error;
use banger_core::config::VmDefaults;
use banger_core::size;

pub const DEFAULT_DISK_BYTES: u64 = 8 << 30;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resolved {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_bytes: u64,
}

/// Host facts the heuristics read; separate so tests can pass their own.
#[derive(Debug, Clone, Copy)]
pub struct Host {
    pub cpus: u32,
    pub mem_bytes: u64,
}

impl Host {
    pub fn detect() -> Host {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let mem_bytes = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<u64>().ok())
            })
            .map_or(2 << 30, |kb| kb * 1024);
        Host { cpus, mem_bytes }
    }
}

pub fn resolve(
    cfg: &VmDefaults,
    host: Host,
    vcpus: Option<u32>,
    memory_mib: Option<u64>,
    disk_bytes: Option<u64>,
) -> Result<Resolved, Error> {
    let bad =
        |what: &str, e: String| Error::precondition(format!("config [vm_defaults] {what}: {e}"));
    let vcpus = match vcpus.or(cfg.vcpus) {
        Some(v) => v,
        None => (host.cpus / 4).clamp(1, 4),
    };
    let memory_mib = match (memory_mib, &cfg.memory) {
        (Some(m), _) => m,
        (None, Some(s)) => size::parse_mib(s).map_err(|e| bad("memory", e))?,
        (None, None) => ((host.mem_bytes / 8) >> 20).clamp(256, 8192),
    };
    let disk_bytes = match (disk_bytes, &cfg.disk_size) {
        (Some(d), _) => d,
        (None, Some(s)) => size::parse(s).map_err(|e| bad("disk_size", e))?,
        (None, None) => DEFAULT_DISK_BYTES,
    };
    validate(vcpus, memory_mib, disk_bytes)?;
    Ok(Resolved {
        vcpus,
        memory_mib,
        disk_bytes,
    })
}

/// Limits Firecracker and ext4 impose, checked before anything is made.
pub fn validate(vcpus: u32, memory_mib: u64, disk_bytes: u64) -> Result<(), Error> {
    if !(1..=32).contains(&vcpus) {
        return Err(Error::invalid(format!("vcpus must be 1..32, not {vcpus}")));
    }
    if memory_mib < 128 {
        return Err(Error::invalid(format!(
            "memory must be at least 128 MiB, not {memory_mib} MiB"
        )));
    }
    if disk_bytes < (64 << 20) {
        return Err(Error::invalid(format!(
            "disk size must be at least 64 MiB, not {disk_bytes} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOST: Host = Host {
        cpus: 16,
        mem_bytes: 32 << 30,
    };

    #[test]
    fn heuristics() {
        let r = resolve(&VmDefaults::default(), HOST, None, None, None).unwrap();
        assert_eq!(
            r,
            Resolved {
                vcpus: 4,
                memory_mib: 4096,
                disk_bytes: 8 << 30
            }
        );
        let small = Host {
            cpus: 2,
            mem_bytes: 1 << 30,
        };
        let r = resolve(&VmDefaults::default(), small, None, None, None).unwrap();
        assert_eq!((r.vcpus, r.memory_mib), (1, 256));
        let big = Host {
            cpus: 64,
            mem_bytes: 256 << 30,
        };
        let r = resolve(&VmDefaults::default(), big, None, None, None).unwrap();
        assert_eq!((r.vcpus, r.memory_mib), (4, 8192));
    }

    #[test]
    fn config_then_flags_win() {
        let cfg = VmDefaults {
            vcpus: Some(2),
            memory: Some("1G".into()),
            disk_size: Some("16G".into()),
        };
        let r = resolve(&cfg, HOST, None, None, None).unwrap();
        assert_eq!(
            r,
            Resolved {
                vcpus: 2,
                memory_mib: 1024,
                disk_bytes: 16 << 30
            }
        );
        let r = resolve(&cfg, HOST, Some(3), Some(512), Some(1 << 30)).unwrap();
        assert_eq!(
            r,
            Resolved {
                vcpus: 3,
                memory_mib: 512,
                disk_bytes: 1 << 30
            }
        );
    }

    #[test]
    fn limits() {
        assert!(resolve(&VmDefaults::default(), HOST, Some(0), None, None).is_err());
        assert!(resolve(&VmDefaults::default(), HOST, None, Some(64), None).is_err());
        let cfg = VmDefaults {
            memory: Some("lots".into()),
            ..Default::default()
        };
        assert!(resolve(&cfg, HOST, None, None, None).is_err());
    }
}
