//! Which VMM a VM gets when it asks for `auto` (`vm create --vmm auto`, the
//! default `[vm] vmm = "auto"`).
//!
//! Firecracker is banger's first-class backend, but it needs KVM that can
//! run a Linux guest. Under nested *paravirtual* KVM (the `kvm_pvm` module:
//! `/dev/kvm` opens and `KVM_CREATE_VM` works, but the CPU has no vmx/svm) a
//! Linux guest dies a few seconds into boot (`KVM_EXIT_INTERNAL_ERROR` after
//! the FPU init), while QEMU with TCG boots it. So `auto` means Firecracker
//! when KVM is usable and hardware-backed and Firecracker is installed, QEMU
//! otherwise. [`choose`] is the rule, a pure function of [`HostFacts`];
//! [`HostFacts::detect`] reads this host.

use std::fs::OpenOptions;
use std::path::Path;

use crate::config::Config;
use crate::tools;

/// The two backends.
pub const FIRECRACKER: &str = "firecracker";
pub const QEMU: &str = "qemu";

/// What the choice depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFacts {
    /// `/dev/kvm` opens read-write; `Err` says why not.
    pub kvm: Result<(), String>,
    /// The `kvm_pvm` module is loaded: KVM is nested and paravirtual.
    pub kvm_pvm: bool,
    /// `/proc/cpuinfo` lists `vmx` or `svm`: KVM is hardware-backed.
    pub cpu_virt: bool,
    /// A Firecracker binary was found.
    pub firecracker: bool,
    /// `qemu-system-x86_64` was found.
    pub qemu: bool,
}

impl HostFacts {
    pub fn detect(config: &Config) -> HostFacts {
        let kvm = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .map(drop)
            .map_err(|e| format!("/dev/kvm: {e}"));
        let cpu_virt = std::fs::read_to_string("/proc/cpuinfo").is_ok_and(|s| cpu_has_virt(&s));
        HostFacts {
            kvm,
            kvm_pvm: Path::new("/sys/module/kvm_pvm").exists(),
            cpu_virt,
            firecracker: matches!(tools::find_firecracker(config), Ok(Some(_))),
            qemu: tools::find_in_path("qemu-system-x86_64").is_some(),
        }
    }
}

/// Whether a `flags` line of /proc/cpuinfo lists `vmx` (Intel VT-x) or
/// `svm` (AMD-V).
pub fn cpu_has_virt(cpuinfo: &str) -> bool {
    cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .flat_map(|l| l.split_once(':').map_or("", |(_, v)| v).split_whitespace())
        .any(|f| f == "vmx" || f == "svm")
}

/// Whether Linux guests can boot under Firecracker here; `Err` says why not.
pub fn firecracker_boots_guests(h: &HostFacts) -> Result<(), String> {
    if let Err(e) = &h.kvm {
        return Err(format!("no usable KVM ({e})"));
    }
    if h.kvm_pvm {
        return Err(
            "KVM here is kvm_pvm (nested, paravirtual): Linux guests hang under Firecracker".into(),
        );
    }
    if !h.cpu_virt {
        return Err(
            "the CPU shows no vmx/svm: KVM is not hardware-backed, Linux guests may not boot under Firecracker"
                .into(),
        );
    }
    if !h.firecracker {
        return Err("firecracker is not installed".into());
    }
    Ok(())
}

/// The `auto` choice and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    pub vmm: &'static str,
    pub reason: String,
}

/// `auto`: Firecracker when it can boot guests here, else QEMU (also when
/// QEMU is missing: then the VM's start says how to install it).
pub fn choose(h: &HostFacts) -> Choice {
    match firecracker_boots_guests(h) {
        Ok(()) => Choice {
            vmm: FIRECRACKER,
            reason: "KVM is hardware-backed and firecracker is installed".into(),
        },
        Err(why) => Choice {
            vmm: QEMU,
            reason: if h.qemu {
                why
            } else {
                format!("{why}; QEMU is not installed either (apt install qemu-system-x86)")
            },
        },
    }
}

/// Checks a requested VMM name: `auto`, `firecracker` or `qemu`.
pub fn validate(requested: &str) -> Result<(), String> {
    match requested {
        "auto" | FIRECRACKER | QEMU => Ok(()),
        other => Err(format!(
            "unknown VMM {other:?}: use firecracker, qemu or auto"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bare_metal() -> HostFacts {
        HostFacts {
            kvm: Ok(()),
            kvm_pvm: false,
            cpu_virt: true,
            firecracker: true,
            qemu: true,
        }
    }

    #[test]
    fn firecracker_on_hardware_kvm() {
        let c = choose(&bare_metal());
        assert_eq!(c.vmm, FIRECRACKER, "{c:?}");
    }

    #[test]
    fn qemu_under_nested_pvm_without_kvm_or_without_firecracker() {
        // This machine's case: /dev/kvm works, but it is kvm_pvm, no vmx/svm.
        let pvm = HostFacts {
            kvm_pvm: true,
            cpu_virt: false,
            ..bare_metal()
        };
        let c = choose(&pvm);
        assert_eq!(c.vmm, QEMU);
        assert!(c.reason.contains("kvm_pvm"), "{c:?}");

        let no_kvm = HostFacts {
            kvm: Err("/dev/kvm: No such file or directory (os error 2)".into()),
            ..bare_metal()
        };
        let c = choose(&no_kvm);
        assert_eq!(c.vmm, QEMU);
        assert!(
            c.reason
                .starts_with("no usable KVM (/dev/kvm: No such file"),
            "{c:?}"
        );

        let no_flags = HostFacts {
            cpu_virt: false,
            ..bare_metal()
        };
        assert!(choose(&no_flags).reason.contains("vmx/svm"));

        let no_fc = HostFacts {
            firecracker: false,
            ..bare_metal()
        };
        let c = choose(&no_fc);
        assert_eq!(
            (c.vmm, c.reason.as_str()),
            (QEMU, "firecracker is not installed")
        );

        let nothing = HostFacts {
            qemu: false,
            ..no_fc
        };
        assert!(choose(&nothing)
            .reason
            .contains("apt install qemu-system-x86"));
    }

    #[test]
    fn cpuinfo_flags() {
        let intel = "processor\t: 0\nflags\t\t: fpu vme de pse vmx ssse3\nbugs\t\t: spectre\n";
        assert!(cpu_has_virt(intel));
        assert!(cpu_has_virt("flags : sse2 svm\n"));
        // "vmx" inside another word or on another line does not count.
        assert!(!cpu_has_virt("flags : fpu vmxe\nmodel name : vmx cpu\n"));
        assert!(!cpu_has_virt(""));
    }

    #[test]
    fn this_host() {
        let h = HostFacts::detect(&Config::default());
        let c = choose(&h);
        eprintln!("{h:?} -> {c:?}");
        // The rule, spelled out against what this host is.
        let fc_ok = h.kvm.is_ok() && !h.kvm_pvm && h.cpu_virt && h.firecracker;
        assert_eq!(c.vmm, if fc_ok { FIRECRACKER } else { QEMU });
        assert_eq!(firecracker_boots_guests(&h).is_ok(), fc_ok);
        // The reason names the fact that decided it.
        let why = &c.reason;
        if h.kvm.is_err() {
            assert!(why.contains("no usable KVM"), "{why}");
        } else if h.kvm_pvm {
            assert!(why.contains("kvm_pvm"), "{why}");
        } else if !h.cpu_virt {
            assert!(why.contains("vmx/svm"), "{why}");
        } else if !h.firecracker {
            assert!(why.contains("not installed"), "{why}");
        } else {
            assert!(why.contains("hardware-backed"), "{why}");
        }
        if !h.qemu && !fc_ok {
            assert!(why.contains("apt install qemu-system-x86"), "{why}");
        }
    }

    #[test]
    fn names() {
        for ok in ["auto", "firecracker", "qemu"] {
            validate(ok).unwrap();
        }
        assert!(validate("kvm")
            .unwrap_err()
            .contains("firecracker, qemu or auto"));
    }
}
