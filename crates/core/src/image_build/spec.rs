//! What to build ([`ImageSpec`]) and the checks made before any work: a
//! known distribution, a mirror URL safe on an apt sources line, a static
//! x86-64 agent.

use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use object::elf;
use object::read::elf::{FileHeader as _, ProgramHeader as _};
use object::read::ReadCache;

use super::recipe::{find_distro, FULL_EXTRA_PACKAGES, MINIMAL_PACKAGES};
use super::{io_ctx, ImageBuildError, Result};

/// `minimal` or `full`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    Minimal,
    Full,
}

impl Variant {
    pub fn as_str(self) -> &'static str {
        match self {
            Variant::Minimal => "minimal",
            Variant::Full => "full",
        }
    }

    /// The packages installed on top of `minbase`, sorted.
    pub fn packages(self) -> Vec<&'static str> {
        let mut p: Vec<&str> = MINIMAL_PACKAGES.to_vec();
        if self == Variant::Full {
            p.extend_from_slice(FULL_EXTRA_PACKAGES);
        }
        p.sort_unstable();
        p
    }
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Variant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "minimal" => Ok(Variant::Minimal),
            "full" => Ok(Variant::Full),
            _ => Err(format!("unknown image variant {s:?} (minimal or full)")),
        }
    }
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// "debian-bookworm".
    pub distro: String,
    pub variant: Variant,
    /// A static x86-64 `banger-agent` (see the `banger-agent` crate).
    pub agent_binary: PathBuf,
    /// A Debian archive URL replacing `http://deb.debian.org/debian` (then
    /// the security archive is not used). Part of the cache key: another
    /// mirror may serve other packages, and a user's mirror must never fill
    /// the cache slot of root's default build.
    pub mirror: Option<String>,
}

/// Checks what [`super::build`] checks before any work: a known
/// distribution, a usable mirror URL and a static x86-64 agent. Cheap.
pub fn check_spec(spec: &ImageSpec) -> Result<()> {
    find_distro(&spec.distro).ok_or_else(|| {
        ImageBuildError::Invalid(format!("unknown distribution {:?}", spec.distro))
    })?;
    if let Some(m) = &spec.mirror {
        check_mirror(m)?;
    }
    check_agent(&spec.agent_binary)
}

/// An http(s) or file URL that is safe to put on an apt sources line.
pub(super) fn check_mirror(m: &str) -> Result<()> {
    let ok_scheme = ["http://", "https://", "file:/"]
        .iter()
        .any(|s| m.starts_with(s));
    let ok_chars = m
        .chars()
        .all(|c| c.is_ascii_graphic() && !matches!(c, '[' | ']' | '"' | '\''));
    if ok_scheme && ok_chars && m.len() < 1024 {
        Ok(())
    } else {
        Err(ImageBuildError::Invalid(format!(
            "mirror {m:?} is not an http(s):// or file:/ URL"
        )))
    }
}

/// The agent must be an x86-64 ELF executable without a program
/// interpreter (static, or static-pie): the guest's libc is not the host's.
pub(super) fn check_agent(path: &Path) -> Result<()> {
    let bad = |reason: &str| {
        ImageBuildError::Invalid(format!(
            "the agent binary {} {reason}; build it with: RUSTFLAGS=\"-C target-feature=+crt-static\" \
             cargo build --release -p banger-agent --target x86_64-unknown-linux-gnu",
            path.display()
        ))
    };
    let f = File::open(path).map_err(io_ctx(format!(
        "cannot open the agent binary {}",
        path.display()
    )))?;
    match elf_is_static_x86_64(&f) {
        Ok(true) => Ok(()),
        Ok(false) => Err(bad("is dynamically linked")),
        Err(e) => Err(bad(&format!("is not an x86-64 executable ({e})"))),
    }
}

/// Whether `f` is an x86-64 ELF executable (`ET_EXEC`, or `ET_DYN` for
/// static-pie) with no `PT_INTERP` segment. Reads only the headers.
pub fn elf_is_static_x86_64(f: &File) -> io::Result<bool> {
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let data = ReadCache::new(f);
    let header = elf::FileHeader64::<object::Endianness>::parse(&data)
        .map_err(|e| invalid(format!("not a 64-bit ELF file: {e}")))?;
    let endian = header.endian().map_err(|e| invalid(e.to_string()))?;
    if endian != object::Endianness::Little {
        return Err(invalid("not a little-endian ELF file".into()));
    }
    let e_type = header.e_type(endian);
    if !(e_type == elf::ET_EXEC || e_type == elf::ET_DYN)
        || header.e_machine(endian) != elf::EM_X86_64
    {
        return Err(invalid("not an x86-64 executable".into()));
    }
    let phdrs = header
        .program_headers(endian, &data)
        .map_err(|e| invalid(format!("bad program headers: {e}")))?;
    if phdrs.is_empty() {
        return Err(invalid("no program headers".into()));
    }
    Ok(!phdrs.iter().any(|ph| ph.p_type(endian) == elf::PT_INTERP))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn mirrors_and_agents_are_checked() {
        check_mirror("http://deb.debian.org/debian").unwrap();
        check_mirror("https://mirror.example:8443/debian/").unwrap();
        check_mirror("file:/srv/mirror").unwrap();
        for bad in [
            "ftp://x/debian",
            "http://x/debian main\ndeb http://evil",
            "http://x/[a]",
            "debian",
        ] {
            assert!(check_mirror(bad).is_err(), "{bad:?}");
        }
        // The test binary itself is dynamically linked.
        let me = File::open("/proc/self/exe").unwrap();
        assert!(!elf_is_static_x86_64(&me).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("agent.sh");
        fs::write(&script, "#!/bin/sh\n").unwrap();
        assert!(elf_is_static_x86_64(&File::open(&script).unwrap()).is_err());
        let e = check_agent(&script).unwrap_err();
        assert!(e.to_string().contains("crt-static"), "{e}");
    }

    /// The Firecracker stub guest: a static x86-64 executable with no
    /// interpreter; a 32-bit or non-x86 header is refused.
    #[test]
    fn static_elf_is_recognised() {
        let dir = tempfile::tempdir().unwrap();
        let stub = dir.path().join("stub");
        fs::write(&stub, crate::stub_guest::elf()).unwrap();
        assert!(elf_is_static_x86_64(&File::open(&stub).unwrap()).unwrap());
        let mut bytes = fs::read(&stub).unwrap();
        bytes[18] = 0xb7; // e_machine = EM_AARCH64
        let arm = dir.path().join("arm");
        fs::write(&arm, &bytes).unwrap();
        let e = elf_is_static_x86_64(&File::open(&arm).unwrap()).unwrap_err();
        assert!(e.to_string().contains("x86-64"), "{e}");
    }
}
