//! Finding external programs and asking them their version.
//!
//! banger drives Firecracker (and optionally QEMU) as child processes and
//! shells out to host tools (`ip`, `nft`, `mkfs.ext4`, ...). This module only
//! answers "where is it" and "which version is it"; programs are run by
//! [`crate::proc`].

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use crate::config::Config;
use crate::proc::{Cmd, Out, ProcError};

/// How long `<bin> --version` may take before it is killed.
pub const VERSION_TIMEOUT: Duration = Duration::from_secs(5);

/// Directories searched after PATH by [`find_system_tool`]: a non-root user's
/// PATH on Debian lacks them, yet `ip`, `nft` and `mkfs.ext4` live there.
pub const SYSTEM_SBIN_DIRS: &[&str] = &["/usr/local/sbin", "/usr/sbin", "/sbin"];

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    /// A configured program path does not exist.
    #[error("config key {key} points at {path}, which does not exist")]
    ConfiguredMissing { key: &'static str, path: PathBuf },
    /// A configured program path exists but is not an executable file.
    #[error("config key {key} points at {path}, which is not an executable file")]
    ConfiguredNotExecutable { key: &'static str, path: PathBuf },
    /// Running `<bin> --version` failed, timed out or exited unsuccessfully.
    #[error(transparent)]
    Run(#[from] ProcError),
    /// The text holds no `X.Y.Z` version.
    #[error("cannot find a version (X.Y.Z) in {text:?}")]
    BadVersion { text: String },
}

/// Whether `path` is a regular file (after following symlinks) with an execute
/// bit that the current process may use.
pub fn is_executable_file(path: &Path) -> bool {
    match std::fs::metadata(path) {
        Ok(m) => {
            m.is_file()
                && m.permissions().mode() & 0o111 != 0
                && rustix::fs::access(path, rustix::fs::Access::EXEC_OK).is_ok()
        }
        Err(_) => false,
    }
}

/// Looks for `name` in the `PATH` environment variable; returns the first
/// executable regular file. See [`find_in_path_var`].
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path_var = std::env::var_os("PATH")?;
    find_in_path_var(name, &path_var)
}

/// Looks for `name` in the directories of `path_var` (a `PATH`-style string),
/// in order; returns the first executable regular file. Empty entries are
/// skipped rather than meaning "the current directory" (a root daemon should
/// not run programs from wherever it was started), and a `name` containing `/`
/// is not a program name, so it is never found.
pub fn find_in_path_var(name: &str, path_var: &OsStr) -> Option<PathBuf> {
    if name.is_empty() || name.contains('/') {
        return None;
    }
    std::env::split_paths(path_var)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable_file(candidate))
}

/// [`find_in_path`], then [`SYSTEM_SBIN_DIRS`]: for host tools that normally
/// live in `/usr/sbin`, so `banger doctor` run by a user agrees with the daemon.
pub fn find_system_tool(name: &str) -> Option<PathBuf> {
    find_in_path(name).or_else(|| {
        let sbin = std::env::join_paths(SYSTEM_SBIN_DIRS).ok()?;
        find_in_path_var(name, &sbin)
    })
}

/// Where the firecracker binary is: `config.firecracker_bin` when set (it must
/// exist and be executable, else an error naming the key), else PATH, else the
/// directory of the running executable. `Ok(None)` when not found anywhere.
pub fn find_firecracker(config: &Config) -> Result<Option<PathBuf>, ToolError> {
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    find_firecracker_in(config, &path_var, exe_dir.as_deref())
}

const FIRECRACKER_BIN_KEY: &str = "firecracker_bin";

fn find_firecracker_in(
    config: &Config,
    path_var: &OsStr,
    exe_dir: Option<&Path>,
) -> Result<Option<PathBuf>, ToolError> {
    if let Some(configured) = &config.firecracker_bin {
        return configured_program(FIRECRACKER_BIN_KEY, configured).map(Some);
    }
    if let Some(found) = find_in_path_var("firecracker", path_var) {
        return Ok(Some(found));
    }
    Ok(exe_dir
        .map(|dir| dir.join("firecracker"))
        .filter(|candidate| is_executable_file(candidate)))
}

const AGENT_BIN_KEY: &str = "agent_bin";

/// The guest agent's file name, installed next to `bangerd`.
pub const AGENT_NAME: &str = "banger-agent";

/// Where the static `banger-agent` that image builds install is:
/// `config.agent_bin` when set (it must exist and be executable, else an error
/// naming the key), else `banger-agent` next to the running executable.
/// `Ok(None)` when neither has one. Never PATH: a host's own `banger-agent`
/// would be a dynamically linked development build.
pub fn find_agent(config: &Config) -> Result<Option<PathBuf>, ToolError> {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    find_agent_in(config, exe_dir.as_deref())
}

fn find_agent_in(config: &Config, exe_dir: Option<&Path>) -> Result<Option<PathBuf>, ToolError> {
    if let Some(configured) = &config.agent_bin {
        return configured_program(AGENT_BIN_KEY, configured).map(Some);
    }
    Ok(exe_dir
        .map(|dir| dir.join(AGENT_NAME))
        .filter(|candidate| is_executable_file(candidate)))
}

fn configured_program(key: &'static str, path: &Path) -> Result<PathBuf, ToolError> {
    if !path.exists() {
        return Err(ToolError::ConfiguredMissing {
            key,
            path: path.to_path_buf(),
        });
    }
    if !is_executable_file(path) {
        return Err(ToolError::ConfiguredNotExecutable {
            key,
            path: path.to_path_buf(),
        });
    }
    Ok(path.to_path_buf())
}

/// A release version, `major.minor.patch`; ordered field by field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl Version {
    pub const fn new(major: u32, minor: u32, patch: u32) -> Version {
        Version {
            major,
            minor,
            patch,
        }
    }

    /// Finds the version in a program's `--version` output: the first word of
    /// the first non-empty line that reads as a version ("Firecracker v1.12.1",
    /// "QEMU emulator version 7.2.15 (Debian ...)").
    pub fn from_version_output(text: &str) -> Result<Version, ToolError> {
        let line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .unwrap_or("");
        line.split_whitespace()
            .find_map(|word| word.parse::<Version>().ok())
            .ok_or_else(|| ToolError::BadVersion {
                text: line.chars().take(200).collect(),
            })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl FromStr for Version {
    type Err = ToolError;

    /// `1.12.1`, `v1.12.1`, or a whole `--version` line such as
    /// "Firecracker v1.12.1" (see [`Version::from_version_output`]). A
    /// pre-release or build suffix on the patch number (`1.13.0-dev`,
    /// `1.2.3+abc`) is ignored.
    fn from_str(s: &str) -> Result<Version, ToolError> {
        let bad = || ToolError::BadVersion {
            text: s.chars().take(200).collect(),
        };
        let s = s.trim();
        if s.split_whitespace().nth(1).is_some() {
            return Version::from_version_output(s).map_err(|_| bad());
        }
        let s = s.strip_prefix('v').unwrap_or(s);
        let mut parts = s.splitn(3, '.');
        let (Some(major), Some(minor), Some(rest)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let patch = rest.split(['-', '+']).next().unwrap_or("");
        let number = |p: &str| -> Result<u32, ToolError> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse().map_err(|_| bad())
        };
        Ok(Version {
            major: number(major)?,
            minor: number(minor)?,
            patch: number(patch)?,
        })
    }
}

/// The oldest Firecracker banger supports.
pub const FIRECRACKER_MIN: Version = Version::new(1, 10, 0);
/// The first Firecracker banger does not support (a new major may change the API).
pub const FIRECRACKER_MAX_EXCLUSIVE: Version = Version::new(2, 0, 0);

/// `Ok` for versions banger supports (`FIRECRACKER_MIN <= v < FIRECRACKER_MAX_EXCLUSIVE`),
/// else the reason.
pub fn check_firecracker_supported(v: Version) -> Result<(), String> {
    if v < FIRECRACKER_MIN {
        Err(format!(
            "firecracker {v} is older than {FIRECRACKER_MIN}, the oldest banger supports \
             (snapshot and vsock APIs changed)"
        ))
    } else if v >= FIRECRACKER_MAX_EXCLUSIVE {
        Err(format!(
            "firecracker {v} is newer than banger supports (below {FIRECRACKER_MAX_EXCLUSIVE}); \
             a new major version may change the API"
        ))
    } else {
        Ok(())
    }
}

/// Runs `<bin> --version` (killed after [`VERSION_TIMEOUT`]) and parses the
/// first line.
pub fn firecracker_version(bin: &Path) -> Result<Version, ToolError> {
    program_version(bin, VERSION_TIMEOUT)
}

/// Runs `<bin> --version` with a deadline and parses its first line. The
/// program runs in its own process group; on timeout the whole group is
/// killed (so a shell wrapper's children go too) and the child is reaped.
pub fn program_version(bin: &Path, timeout: Duration) -> Result<Version, ToolError> {
    let mut cmd = Cmd::new(bin);
    // A version line is short; keep a bounded amount, drain the rest.
    cmd.arg("--version")
        .own_group()
        .timeout(timeout)
        .stdout(Out::Capture(64 * 1024));
    let done = cmd.run()?;
    Version::from_version_output(&done.stdout_text())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;
    use std::time::Instant;

    /// Writes an executable shell script (closed before returning).
    fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn version_parses_good_strings() {
        let v = Version::new(1, 12, 1);
        assert_eq!("1.12.1".parse::<Version>().unwrap(), v);
        assert_eq!("v1.12.1".parse::<Version>().unwrap(), v);
        assert_eq!("Firecracker v1.12.1".parse::<Version>().unwrap(), v);
        assert_eq!(
            "  v1.13.0-dev ".parse::<Version>().unwrap(),
            Version::new(1, 13, 0)
        );
        assert_eq!(
            Version::from_version_output(
                "Firecracker v1.12.1\n\nSupported snapshot data format versions: v5.0.0\n"
            )
            .unwrap(),
            v
        );
        assert_eq!(
            Version::from_version_output(
                "QEMU emulator version 7.2.15 (Debian 1:7.2+dfsg-7+deb12u16)\nCopyright"
            )
            .unwrap(),
            Version::new(7, 2, 15)
        );
        assert_eq!(v.to_string(), "1.12.1");
    }

    #[test]
    fn version_refuses_bad_strings() {
        for bad in [
            "",
            "Firecracker",
            "v1.12",
            "1.12",
            "1..1",
            "1.12.x",
            "a.b.c",
            "1.2.3.4",
            "v",
            "-1.2.3",
            "1.2.99999999999",
            "vv1.2.3",
            "1.+2.3",
        ] {
            let e = bad.parse::<Version>().unwrap_err();
            assert!(
                matches!(e, ToolError::BadVersion { .. }),
                "{bad:?} -> {e:?}"
            );
        }
        let e = Version::from_version_output("Firecracker\nv1.12.1\n").unwrap_err();
        assert!(e.to_string().contains("\"Firecracker\""), "{e}");
    }

    #[test]
    fn version_ordering_and_supported_range() {
        assert!(Version::new(1, 10, 0) > Version::new(1, 9, 99));
        assert!(Version::new(2, 0, 0) > Version::new(1, 99, 99));
        assert!(check_firecracker_supported(Version::new(1, 10, 0)).is_ok());
        assert!(check_firecracker_supported(Version::new(1, 12, 1)).is_ok());
        assert!(check_firecracker_supported(Version::new(1, 999, 0)).is_ok());
        let old = check_firecracker_supported(Version::new(1, 4, 0)).unwrap_err();
        assert_eq!(
            old,
            "firecracker 1.4.0 is older than 1.10.0, the oldest banger supports (snapshot and vsock APIs changed)"
        );
        assert!(check_firecracker_supported(Version::new(1, 9, 9)).is_err());
        let new = check_firecracker_supported(Version::new(2, 0, 0)).unwrap_err();
        assert!(new.contains("2.0.0") && new.contains("newer"), "{new}");
    }

    #[test]
    fn find_in_path_takes_first_executable_regular_file() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let exe = script(b.path(), "tool-x", "exit 0");
        script(a.path(), "tool-dir", "");
        std::fs::remove_file(a.path().join("tool-dir")).unwrap();
        std::fs::create_dir(a.path().join("tool-dir")).unwrap();
        std::fs::set_permissions(
            a.path().join("tool-dir"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::fs::write(a.path().join("tool-x"), "#!/bin/sh\n").unwrap(); // not executable
        std::fs::write(b.path().join("tool-y"), "#!/bin/sh\n").unwrap(); // not executable
        let path: OsString =
            std::env::join_paths([Path::new("/nonexistent-banger"), a.path(), b.path()]).unwrap();
        // The non-executable tool-x in `a` is skipped; `b`'s executable is found.
        assert_eq!(find_in_path_var("tool-x", &path), Some(exe.clone()));
        assert_eq!(find_in_path_var("tool-y", &path), None);
        assert_eq!(find_in_path_var("tool-dir", &path), None);
        assert_eq!(find_in_path_var("missing", &path), None);
        assert_eq!(find_in_path_var(exe.to_str().unwrap(), &path), None);
        // Two executables: the earlier directory wins.
        let first = script(a.path(), "tool-z", "exit 0");
        script(b.path(), "tool-z", "exit 0");
        assert_eq!(find_in_path_var("tool-z", &path), Some(first));
        // Empty entries do not mean the current directory.
        assert_eq!(find_in_path_var("tool-z", OsStr::new("::")), None);
        // The real PATH finds the real shell.
        assert!(find_in_path("sh").is_some());
    }

    #[test]
    fn find_agent_honours_config_then_exe_dir_never_path() {
        let dir = tempfile::tempdir().unwrap();
        let exe_dir = dir.path().join("bin");
        std::fs::create_dir(&exe_dir).unwrap();
        // Nothing configured, nothing next to the executable: None.
        assert_eq!(
            find_agent_in(&Config::default(), Some(&exe_dir)).unwrap(),
            None
        );
        assert_eq!(find_agent_in(&Config::default(), None).unwrap(), None);
        // Next to the executable (only when executable).
        let beside = exe_dir.join(AGENT_NAME);
        std::fs::write(&beside, "x").unwrap();
        assert_eq!(
            find_agent_in(&Config::default(), Some(&exe_dir)).unwrap(),
            None
        );
        std::fs::set_permissions(&beside, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            find_agent_in(&Config::default(), Some(&exe_dir)).unwrap(),
            Some(beside.clone())
        );
        // The config wins, and a wrong config is an error naming the key.
        let configured = script(dir.path(), "my-agent", "");
        let c = Config {
            agent_bin: Some(configured.clone()),
            ..Config::default()
        };
        assert_eq!(find_agent_in(&c, Some(&exe_dir)).unwrap(), Some(configured));
        let c = Config {
            agent_bin: Some(dir.path().join("nope")),
            ..Config::default()
        };
        let e = find_agent_in(&c, Some(&exe_dir)).unwrap_err();
        assert!(e.to_string().contains("agent_bin"), "{e}");
    }

    #[test]
    fn find_firecracker_honours_config_then_path_then_exe_dir() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Config {
            firecracker_bin: Some(dir.path().join("nope")),
            ..Config::default()
        };
        let e = find_firecracker(&missing).unwrap_err();
        assert!(matches!(e, ToolError::ConfiguredMissing { .. }), "{e:?}");
        assert!(e.to_string().contains("firecracker_bin"), "{e}");

        let plain = dir.path().join("plain");
        std::fs::write(&plain, "x").unwrap();
        let not_exec = Config {
            firecracker_bin: Some(plain),
            ..Config::default()
        };
        let e = find_firecracker(&not_exec).unwrap_err();
        assert!(
            matches!(e, ToolError::ConfiguredNotExecutable { .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("firecracker_bin"), "{e}");

        let fake = script(dir.path(), "fc-old", "echo 'Firecracker v1.3.0'");
        let old = Config {
            firecracker_bin: Some(fake.clone()),
            ..Config::default()
        };
        assert_eq!(find_firecracker(&old).unwrap(), Some(fake.clone()));
        let v = firecracker_version(&fake).unwrap();
        assert_eq!(v, Version::new(1, 3, 0));
        let why = check_firecracker_supported(v).unwrap_err();
        assert!(why.contains("older than 1.10.0"), "{why}");

        // Unconfigured: PATH first, then the executable's directory.
        let in_path = tempfile::tempdir().unwrap();
        let exe_dir = tempfile::tempdir().unwrap();
        let next_to_exe = script(exe_dir.path(), "firecracker", "exit 0");
        let none = Config::default();
        assert_eq!(
            find_firecracker_in(&none, OsStr::new(""), Some(exe_dir.path())).unwrap(),
            Some(next_to_exe)
        );
        let on_path = script(in_path.path(), "firecracker", "exit 0");
        assert_eq!(
            find_firecracker_in(&none, in_path.path().as_os_str(), Some(exe_dir.path())).unwrap(),
            Some(on_path)
        );
        assert_eq!(
            find_firecracker_in(&none, OsStr::new(""), Some(dir.path())).unwrap(),
            None
        );
        assert_eq!(
            find_firecracker_in(&none, OsStr::new(""), None).unwrap(),
            None
        );
    }

    #[test]
    fn version_errors_carry_status_and_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let failing = script(dir.path(), "fails", "echo 'bad flag' >&2; exit 3");
        let e = program_version(&failing, Duration::from_secs(5)).unwrap_err();
        match &e {
            ToolError::Run(ProcError::Failed { status, stderr, .. }) => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(stderr.trim(), "bad flag");
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("bad flag"), "{e}");
        let garbage = script(dir.path(), "garbage", "echo 'no version here'");
        assert!(matches!(
            program_version(&garbage, Duration::from_secs(5)).unwrap_err(),
            ToolError::BadVersion { .. }
        ));
        let e = program_version(&dir.path().join("absent"), Duration::from_secs(5)).unwrap_err();
        assert!(
            matches!(e, ToolError::Run(ProcError::Spawn { .. })),
            "{e:?}"
        );
    }

    use crate::proc::tests::process_running;

    #[test]
    fn version_times_out_kills_and_reaps() {
        let dir = tempfile::tempdir().unwrap();
        let pids = dir.path().join("pids");
        let hang = script(
            dir.path(),
            "hang",
            &format!(
                "echo $$ > {p}.self\nsleep 1000 &\necho $! > {p}.child\nwait",
                p = pids.display()
            ),
        );
        let started = Instant::now();
        let e = program_version(&hang, Duration::from_millis(500)).unwrap_err();
        let took = started.elapsed();
        assert!(
            matches!(e, ToolError::Run(ProcError::Timeout { .. })),
            "{e:?}"
        );
        assert!(took < Duration::from_secs(4), "took {took:?}");
        let read_pid = |ext: &str| -> u32 {
            std::fs::read_to_string(pids.with_extension(ext))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        let shell = read_pid("self");
        let sleeper = read_pid("child");
        // Our child was reaped: no /proc entry at all (a zombie would still have one).
        assert!(
            !Path::new(&format!("/proc/{shell}")).exists(),
            "child {shell} not reaped"
        );
        // Its own child (same process group) was killed too.
        let deadline = Instant::now() + Duration::from_secs(3);
        while process_running(sleeper) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            !process_running(sleeper),
            "grandchild {sleeper} still running"
        );
    }

    #[test]
    fn real_firecracker_version() {
        let fc = find_in_path("firecracker").expect(
            "firecracker is not on PATH: sudo scripts/install-firecracker.sh (test.sh checks it)",
        );
        let v = firecracker_version(&fc).unwrap();
        assert!(v.major >= 1, "{v}");
    }
}
