//! `banger kernel build`: an uncompressed ELF `vmlinux` for the guests, built
//! from Debian's `linux-source-6.1` tarball (or an unpacked tree) with the
//! config fragment kept in the repository (`images/kernel/banger.config`).
//!
//! The recipe ([`build`]):
//!
//! 1. unpack the tarball into a scratch directory (a tree is used read-only and
//!    built out of tree with `O=`);
//! 2. configure: `make allnoconfig` (a minimal base: the fragment lists
//!    everything a microVM guest uses, so nothing else is built), merge the
//!    fragment onto `.config` (the semantics of `merge_config.sh -m`: each
//!    fragment line replaces that symbol's line, or is appended), then
//!    `make olddefconfig`; then check that every option the fragment sets
//!    survived ([`verify`]) — Kconfig silently drops an option whose
//!    dependencies are not met, so a dropped one stops the build;
//! 3. compile: `make -jN vmlinux`;
//! 4. install `vmlinux`, `.config`, `release` (`make -s kernelrelease`) and
//!    `build.log` into `cache_dir/<key>/`.
//!
//! Everything happens in `cache_dir/<key>.tmp-<pid>/`; the finished entry is
//! renamed into place, so an entry that exists is complete, and a build that
//! is killed leaves only a scratch directory, which the next [`build`] removes.
//! `make` and everything it starts run in their own process group, which is
//! killed on cancel (and `make` gets `SIGKILL` if the building thread dies).
//!
//! The cache key ([`cache_key`]) covers the source's identity, the fragment's
//! bytes and [`RECIPE`]; change any of them and the kernel is rebuilt.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::ControlFlow;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use crate::artifact::kernel_image;
use crate::build_lock::{lock_key, LockError};
use crate::proc::{Cmd, In, Out, ProcError};

/// Where Debian's `linux-source-6.1` package puts the kernel source.
pub const DEBIAN_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";

/// banger's config fragment (`images/kernel/banger.config`), built into the
/// binary so an installed daemon needs no copy of the repository.
pub const DEFAULT_FRAGMENT: &str = include_str!("../../../images/kernel/banger.config");

/// The recipe, hashed into every cache key: change the steps (or anything
/// else that changes the result for the same source and fragment) and bump it.
/// Version 1 configured `x86_64_defconfig` + `kvm_guest.config` + fragment.
pub const RECIPE: &str = "banger-kernel-recipe/2: allnoconfig + fragment \
                          (merge, olddefconfig, verify); make vmlinux";

/// How many compile steps (`  CC      foo.o` lines) a build of the banger
/// fragment on 6.1 prints, for the progress total. Measured on a real build;
/// the total grows if a build prints more.
pub const COMPILE_STEPS_ESTIMATE: u64 = 3000;

/// Lines of `build.log` in a [`KernelBuildError::Build`].
const LOG_TAIL_LINES: usize = 40;

/// Programs the build runs, and the Debian package that provides each.
const TOOLS: &[(&str, &str)] = &[
    ("make", "make"),
    ("gcc", "gcc"),
    ("flex", "flex"),
    ("bison", "bison"),
    ("bc", "bc"),
    ("tar", "tar"),
];

/// Headers the kernel's host tools compile against (objtool, sign-file), and
/// their Debian packages.
const HEADERS: &[(&str, &str)] = &[
    ("libelf.h", "libelf-dev"),
    ("openssl/opensslv.h", "libssl-dev"),
];

/// Variables that would change what the kernel's Makefiles do if inherited
/// from the caller's environment (`make` turns every environment variable into
/// a make variable; `MAKEFLAGS` could carry cargo's jobserver).
const SCRUBBED_ENV: &[&str] = &[
    "MAKEFLAGS",
    "MFLAGS",
    "MAKELEVEL",
    "MAKEFILES",
    "MAKEOVERRIDES",
    "GNUMAKEFLAGS",
    "ARCH",
    "SUBARCH",
    "CROSS_COMPILE",
    "LLVM",
    "CC",
    "LD",
    "KBUILD_OUTPUT",
    "KBUILD_EXTMOD",
    "KCONFIG_CONFIG",
    "LOCALVERSION",
    "KCFLAGS",
    "KCPPFLAGS",
    "KAFLAGS",
    "KBUILD_BUILD_TIMESTAMP",
    "O",
    "V",
    "W",
    "C",
    "M",
];

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    pub source: Source,
    /// The config fragment (`images/kernel/banger.config`).
    pub fragment: PathBuf,
    /// `make -j`; 0 means the number of CPUs.
    pub jobs: usize,
}

/// Where the kernel source comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// Debian's `linux-source-*.tar.xz` ([`DEBIAN_TARBALL`]), unpacked into
    /// the scratch directory.
    DebianTarball(PathBuf),
    /// An unpacked, unconfigured kernel tree, used read-only: the build runs
    /// out of tree (`make O=...`).
    Tree(PathBuf),
}

/// A built (or cached) kernel: the files in `cache_dir/<key>/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub vmlinux: PathBuf,
    pub config: PathBuf,
    /// `make -s kernelrelease`, e.g. `6.1.192-banger` (the guest's `uname -r`).
    pub release: String,
    pub key: String,
    /// True when the entry was already in the cache and nothing was built.
    pub cached: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum KernelBuildError {
    /// Build tools are missing; `tool` and `package` list each one (comma- and
    /// space-separated when several).
    #[error("missing build tools: {tool} (install with: apt-get install {package})")]
    MissingTool { tool: String, package: String },
    /// The source cannot be used.
    #[error("kernel source {}: {reason}", path.display())]
    Source { path: PathBuf, reason: String },
    /// After `make olddefconfig`, these fragment options were not as requested
    /// (usually a dependency the fragment does not enable).
    #[error(
        "Kconfig did not keep {} option(s) the fragment sets (missing dependencies?): {}",
        dropped.len(),
        dropped.join(", ")
    )]
    Config { dropped: Vec<String> },
    /// A `make` step failed.
    #[error("kernel build failed; the end of build.log:\n{log_tail}")]
    Build { log_tail: String },
    /// `cancel` was set; the running tools were killed and the scratch
    /// directory removed.
    #[error("kernel build cancelled")]
    Cancelled,
    /// A build tool could not be run or watched.
    #[error(transparent)]
    Run(ProcError),
    /// A file operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> KernelBuildError {
    let context = context.into();
    move |source| KernelBuildError::Io { context, source }
}

// ---------------------------------------------------------------------------
// Fragments and .config files

/// The options a config fragment (or a `.config`) sets, in order of first
/// appearance, a later setting of the same symbol replacing the earlier one:
/// `CONFIG_X=y` → `("CONFIG_X", "y")`, `# CONFIG_X is not set` and
/// `CONFIG_X=n` → `("CONFIG_X", "n")`; strings keep their quotes
/// (`"\"-banger\""`), numbers their spelling. Other lines are ignored.
pub fn fragment_options(text: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for line in text.lines() {
        let Some((name, value)) = parse_config_line(line) else {
            continue;
        };
        match out.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value.to_owned(),
            None => out.push((name.to_owned(), value.to_owned())),
        }
    }
    out
}

/// One `.config`-style line → (symbol, value), `n` for "is not set".
fn parse_config_line(line: &str) -> Option<(&str, &str)> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix('#') {
        let name = rest.trim().strip_suffix(" is not set")?.trim_end();
        return is_symbol(name).then_some((name, "n"));
    }
    let (name, value) = line.split_once('=')?;
    let (name, value) = (name.trim(), value.trim());
    (is_symbol(name) && !value.is_empty()).then_some((name, value))
}

fn is_symbol(name: &str) -> bool {
    name.strip_prefix("CONFIG_").is_some_and(|rest| {
        !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

/// The fragment options that `dot_config` does not have as requested, each as
/// `CONFIG_X=want (got ...)`. A symbol absent from `.config` counts as "not
/// set" (Kconfig omits invisible symbols whose dependencies are unmet).
pub fn verify(dot_config: &str, fragment: &[(String, String)]) -> Vec<String> {
    let actual = fragment_options(dot_config);
    fragment
        .iter()
        .filter_map(|(name, want)| {
            let got = actual
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str());
            let ok = match got {
                Some(v) => v == want,
                None => want == "n",
            };
            (!ok).then(|| {
                let got = match got {
                    Some("n") => "is not set".to_owned(),
                    Some(v) => v.to_owned(),
                    None => "absent".to_owned(),
                };
                format!("{name}={want} (got {got})")
            })
        })
        .collect()
}

/// Merges `fragment` onto `dot_config` the way `merge_config.sh -m` does:
/// every line (set or "is not set") of a symbol the fragment mentions is
/// removed, and the fragment's settings are appended in order.
pub fn merge_fragment(dot_config: &str, fragment: &[(String, String)]) -> String {
    let mut out = String::with_capacity(dot_config.len() + fragment.len() * 32);
    for line in dot_config.lines() {
        let replaced = parse_config_line(line)
            .is_some_and(|(name, _)| fragment.iter().any(|(n, _)| n == name));
        if !replaced {
            out.push_str(line);
            out.push('\n');
        }
    }
    for (name, value) in fragment {
        if value == "n" {
            out.push_str(&format!("# {name} is not set\n"));
        } else {
            out.push_str(&format!("{name}={value}\n"));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Cache key

/// The cache key: sha256 (hex) over the source's identity (the tarball's
/// sha256, or for a tree its Makefile `VERSION`/`PATCHLEVEL`/`SUBLEVEL`/
/// `EXTRAVERSION` plus `git describe --always --dirty` when the tree is a git
/// checkout), the fragment's bytes and [`RECIPE`]. Same inputs → same key.
/// A tarball is hashed once per process (remembered by device, inode, size
/// and mtime).
pub fn cache_key(spec: &BuildSpec) -> io::Result<String> {
    let fragment = fs::read(&spec.fragment)?;
    Ok(key_for(&source_identity(&spec.source)?, &fragment))
}

fn key_for(identity: &str, fragment: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(b"banger kernel build\0");
    h.update(RECIPE.as_bytes());
    h.update(b"\0");
    h.update(identity.as_bytes());
    h.update(b"\0");
    h.update((fragment.len() as u64).to_le_bytes());
    h.update(fragment);
    hex::encode(h.finalize())
}

fn source_identity(source: &Source) -> io::Result<String> {
    match source {
        Source::DebianTarball(path) => Ok(format!("tarball sha256={}", tarball_sha256(path)?)),
        Source::Tree(path) => {
            let makefile = fs::read_to_string(path.join("Makefile"))?;
            let version = makefile_version(&makefile).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} has no VERSION/PATCHLEVEL/SUBLEVEL: not a kernel tree",
                        path.join("Makefile").display()
                    ),
                )
            })?;
            let git = git_describe(path).unwrap_or_default();
            Ok(format!("tree version={version} git={git}"))
        }
    }
}

/// The source's `major.minor` series (`6.1`): from a tarball's name
/// (`linux-source-6.1.tar.xz`), or a tree's Makefile. `None` when neither says.
pub fn series(source: &Source) -> Option<String> {
    match source {
        Source::DebianTarball(p) => {
            let name = p.file_name()?.to_str()?;
            let v = name.strip_prefix("linux-source-")?.split(".tar").next()?;
            let mut parts = v.split('.');
            let (major, minor) = (parts.next()?, parts.next()?);
            let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
            (numeric(major) && numeric(minor)).then(|| format!("{major}.{minor}"))
        }
        Source::Tree(p) => {
            let v = makefile_version(&fs::read_to_string(p.join("Makefile")).ok()?)?;
            let mut parts = v.split('.');
            Some(format!("{}.{}", parts.next()?, parts.next()?))
        }
    }
}

/// The name a built kernel is registered under when none is given:
/// `banger-<major>-<minor>` (names allow no dots), or `banger` when the
/// series is unknown.
pub fn default_name(series: Option<&str>) -> String {
    match series {
        Some(s) => format!("banger-{}", s.replace('.', "-")),
        None => "banger".to_owned(),
    }
}

/// `VERSION.PATCHLEVEL.SUBLEVEL` + `EXTRAVERSION` from a kernel Makefile.
fn makefile_version(makefile: &str) -> Option<String> {
    let var = |name: &str| {
        makefile.lines().find_map(|line| {
            let (k, v) = line.split_once('=')?;
            (k.trim() == name).then(|| v.trim().to_owned())
        })
    };
    let (v, p, s) = (var("VERSION")?, var("PATCHLEVEL")?, var("SUBLEVEL")?);
    if v.is_empty() || p.is_empty() {
        return None;
    }
    Some(format!(
        "{v}.{p}.{s}{}",
        var("EXTRAVERSION").unwrap_or_default()
    ))
}

/// `git describe --always --dirty` of a tree that is itself a git checkout
/// (a `.git` in the tree, not in some parent directory).
fn git_describe(tree: &Path) -> Option<String> {
    if !tree.join(".git").exists() {
        return None;
    }
    let mut git = Cmd::new("git");
    git.arg("-C")
        .arg(tree)
        .args(["describe", "--always", "--dirty", "--tags"])
        .stderr(Out::Null);
    let out = git.output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// (dev, inode, size, mtime s, mtime ns) → sha256, for this process.
type FileIdent = (u64, u64, u64, i64, i64);
static TARBALL_SHA256: Mutex<Vec<(FileIdent, String)>> = Mutex::new(Vec::new());

fn tarball_sha256(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let m = f.metadata()?;
    if !m.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    let ident = (m.dev(), m.ino(), m.len(), m.mtime(), m.mtime_nsec());
    let memo = |s: &Mutex<Vec<(FileIdent, String)>>| {
        s.lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(i, _)| *i == ident)
            .map(|(_, h)| h.clone())
    };
    if let Some(h) = memo(&TARBALL_SHA256) {
        return Ok(h);
    }
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let hex = hex::encode(h.finalize());
    let mut memo = TARBALL_SHA256.lock().unwrap_or_else(|e| e.into_inner());
    if memo.len() >= 16 {
        memo.remove(0);
    }
    memo.push((ident, hex.clone()));
    Ok(hex)
}

// ---------------------------------------------------------------------------
// Host tools

/// The build tools missing from `path_var` (programs) and `include_root`
/// (headers), as one [`KernelBuildError::MissingTool`].
fn missing_tools(path_var: &OsStr, include_root: &Path) -> Option<KernelBuildError> {
    let mut tools = Vec::new();
    let mut packages = Vec::new();
    for (tool, package) in TOOLS {
        if crate::tools::find_in_path_var(tool, path_var).is_none() {
            tools.push(tool.to_string());
            packages.push(*package);
        }
    }
    for (header, package) in HEADERS {
        if !include_root.join(header).is_file() {
            tools.push(format!(
                "{} ({package})",
                include_root.join(header).display()
            ));
            packages.push(*package);
        }
    }
    (!tools.is_empty()).then(|| KernelBuildError::MissingTool {
        tool: tools.join(", "),
        package: packages.join(" "),
    })
}

fn host_path_var() -> OsString {
    std::env::var_os("PATH")
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"))
}

// ---------------------------------------------------------------------------
// Progress

/// Counts kbuild's step lines (`  CC      kernel/fork.o`) as they are
/// appended to the log.
struct StepCounter {
    offset: u64,
    partial: Vec<u8>,
    steps: u64,
}

impl StepCounter {
    fn at_end_of(log: &Path) -> io::Result<StepCounter> {
        Ok(StepCounter {
            offset: fs::metadata(log)?.len(),
            partial: Vec::new(),
            steps: 0,
        })
    }

    fn poll(&mut self, log: &mut File) -> io::Result<()> {
        log.seek(SeekFrom::Start(self.offset))?;
        let mut fresh = Vec::new();
        log.read_to_end(&mut fresh)?;
        self.offset += fresh.len() as u64;
        self.partial.extend_from_slice(&fresh);
        let Some(last_nl) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        self.steps += self.partial[..last_nl]
            .split(|&b| b == b'\n')
            .filter(|line| is_step_line(line))
            .count() as u64;
        self.partial.drain(..=last_nl);
        Ok(())
    }
}

/// kbuild's quiet output: two spaces, an upper-case tag (`CC`, `LD`, `AR`,
/// `HOSTCC`, `GEN`, ...), spaces, the target.
fn is_step_line(line: &[u8]) -> bool {
    let Some(rest) = line.strip_prefix(b"  ") else {
        return false;
    };
    let tag_len = rest
        .iter()
        .take_while(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || **b == b'_')
        .count();
    tag_len >= 2
        && rest[0].is_ascii_uppercase()
        && rest.get(tag_len) == Some(&b' ')
        && rest[tag_len..].iter().any(|b| !b.is_ascii_whitespace())
}

/// The end of the build log for an error: the last [`LOG_TAIL_LINES`] lines,
/// preceded by the last few earlier `error` lines if the tail has none (with
/// `-j`, the failing compiler's message can be followed by other output).
fn log_tail(log: &Path) -> String {
    let Ok(mut f) = File::open(log) else {
        return "(no build.log)".to_owned();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(256 * 1024);
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(start)).is_err() || f.read_to_end(&mut buf).is_err() {
        return "(build.log unreadable)".to_owned();
    }
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    let split = lines.len().saturating_sub(LOG_TAIL_LINES);
    let (head, tail) = lines.split_at(split);
    let is_error = |l: &&str| l.contains("error:") || l.contains("Error ");
    let mut out = Vec::new();
    if !tail.iter().any(is_error) {
        let earlier: Vec<&str> = head.iter().copied().filter(is_error).collect();
        if !earlier.is_empty() {
            out.extend_from_slice(&earlier[earlier.len().saturating_sub(5)..]);
            out.push("...");
        }
    }
    out.extend_from_slice(tail);
    out.join("\n")
}

/// Everything about one build in progress: the scratch layout and the log.
struct Work<'a> {
    src: PathBuf,
    obj: PathBuf,
    log: PathBuf,
    cancel: &'a AtomicBool,
}

impl Work<'_> {
    fn make(&self, args: &[&OsStr]) -> Command {
        let mut o = OsString::from("O=");
        o.push(&self.obj);
        let mut cmd = Command::new("make");
        cmd.arg("-C").arg(&self.src).arg(o).args(args);
        for var in SCRUBBED_ENV {
            cmd.env_remove(var);
        }
        cmd.env("LC_ALL", "C")
            .env("KBUILD_BUILD_USER", "banger")
            .env("KBUILD_BUILD_HOST", "banger");
        cmd
    }

    fn log_file(&self) -> Result<File, KernelBuildError> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io_ctx(format!("cannot open {}", self.log.display())))
    }

    /// Runs `cmd` with stdout (unless `stdout` is given) and stderr appended
    /// to build.log; a failure is a `Build` error with the log's tail.
    fn run(
        &self,
        cmd: Command,
        what: &str,
        stdout: Option<File>,
        tick: &mut dyn FnMut() -> Result<(), KernelBuildError>,
    ) -> Result<(), KernelBuildError> {
        let log = self.log_file()?;
        let out = match stdout {
            Some(f) => f,
            None => log
                .try_clone()
                .map_err(io_ctx("cannot duplicate the log descriptor"))?,
        };
        let mut stopped_by = None;
        let mut watch = || match tick() {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                stopped_by = Some(e);
                ControlFlow::Break(())
            }
        };
        let mut c = build_tool(cmd, self.cancel);
        c.stdout(Out::File(out))
            .stderr(Out::File(log))
            .tick(&mut watch);
        let status = match c.output() {
            Ok(done) => done.status,
            Err(ProcError::Cancelled { .. }) => {
                return Err(stopped_by.unwrap_or(KernelBuildError::Cancelled))
            }
            Err(e) => return Err(KernelBuildError::Run(e)),
        };
        if status.success() {
            return Ok(());
        }
        let _ = writeln!(self.log_file()?, "banger: {what} failed ({status})");
        Err(KernelBuildError::Build {
            log_tail: log_tail(&self.log),
        })
    }

    fn check_cancel(&self) -> Result<(), KernelBuildError> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(KernelBuildError::Cancelled)
        } else {
            Ok(())
        }
    }
}

fn no_tick() -> Result<(), KernelBuildError> {
    Ok(())
}

/// A build tool: in its own process group (so cancelling kills `make`'s
/// compilers too), killed if the building thread dies (the daemon is
/// killed: its compilers finish their one file and exit), stopped when
/// `cancel` is set.
fn build_tool(cmd: Command, cancel: &AtomicBool) -> Cmd<'_> {
    let mut c = Cmd::from(cmd);
    c.own_group().die_with_parent().cancel(cancel);
    c
}

// ---------------------------------------------------------------------------
// The scratch directory and the cache entry

/// Removes the scratch directory unless the build was committed.
struct Scratch {
    dir: PathBuf,
}

impl Drop for Scratch {
    /// After a cancel, compilers of the killed group may still be finishing
    /// a write (SIGKILL is delivered when their system call returns), so a
    /// file can appear while the tree is removed: `remove_dir_all` then
    /// fails with `ENOTEMPTY`. Retry, bounded, until the directory is gone.
    fn drop(&mut self) {
        for _ in 0..100 {
            match fs::remove_dir_all(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn fsync_path(path: &Path) -> io::Result<()> {
    File::open(path)?.sync_all()
}

/// `<64 hex>.tmp-<pid>` → (key, pid).
fn parse_scratch_name(name: &str) -> Option<(&str, u32)> {
    let (key, pid) = name.split_once(".tmp-")?;
    let key_ok = key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit());
    key_ok.then_some(())?;
    Some((key, pid.parse().ok()?))
}

/// Removes scratch directories left by builds that died: those whose process
/// is gone, and any of `key` (whose lock we hold, so no live build owns one).
fn remove_stale_scratch(cache_dir: &Path, key: &str) -> io::Result<()> {
    for entry in fs::read_dir(cache_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some((k, pid)) = name.to_str().and_then(parse_scratch_name) else {
            continue;
        };
        let alive = Path::new("/proc").join(pid.to_string()).exists();
        if k == key || !alive {
            tracing::info!(dir = %entry.path().display(), "removing a stale kernel build directory");
            fs::remove_dir_all(entry.path())?;
        }
    }
    Ok(())
}

fn cached_entry(entry: &Path, key: &str) -> Result<Option<Built>, KernelBuildError> {
    let vmlinux = entry.join("vmlinux");
    if !vmlinux.is_file() {
        return Ok(None);
    }
    let release_path = entry.join("release");
    let release = fs::read_to_string(&release_path)
        .map_err(io_ctx(format!("cannot read {}", release_path.display())))?;
    Ok(Some(Built {
        vmlinux,
        config: entry.join(".config"),
        release: release.trim().to_owned(),
        key: key.to_owned(),
        cached: true,
    }))
}

// ---------------------------------------------------------------------------
// The build

/// Builds the kernel into `cache_dir/<key>/` (`vmlinux`, `.config`,
/// `release`, `build.log`) unless that entry already exists (then it returns
/// at once with `cached: true`, running nothing). Work happens in
/// `cache_dir/<key>.tmp-<pid>/`, renamed into place only when complete;
/// stale scratch directories are removed first. `progress(stage, done,
/// total)` reports "unpack" (compressed bytes), "configure" (steps of 4),
/// "compile" (kbuild steps seen vs. [`COMPILE_STEPS_ESTIMATE`]) and "install".
/// `cancel` is checked at least every 100 ms; when set, the running tool's
/// whole process group is killed, the scratch directory removed, and
/// `Cancelled` returned.
pub fn build(
    spec: &BuildSpec,
    cache_dir: &Path,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<Built, KernelBuildError> {
    let fragment_bytes = fs::read(&spec.fragment).map_err(io_ctx(format!(
        "cannot read the config fragment {}",
        spec.fragment.display()
    )))?;
    let fragment = fragment_options(&String::from_utf8_lossy(&fragment_bytes));
    let source_path = match &spec.source {
        Source::DebianTarball(p) | Source::Tree(p) => p.clone(),
    };
    let identity = source_identity(&spec.source).map_err(|e| KernelBuildError::Source {
        path: source_path.clone(),
        reason: e.to_string(),
    })?;
    let key = key_for(&identity, &fragment_bytes);

    fs::create_dir_all(cache_dir)
        .map_err(io_ctx(format!("cannot create {}", cache_dir.display())))?;
    let cache_dir = cache_dir
        .canonicalize()
        .map_err(io_ctx(format!("cannot resolve {}", cache_dir.display())))?;
    let entry = cache_dir.join(&key);
    if let Some(built) = cached_entry(&entry, &key)? {
        return Ok(built);
    }
    if let Some(missing) = missing_tools(&host_path_var(), Path::new("/usr/include")) {
        return Err(missing);
    }
    let _lock = lock_key(&cache_dir, &key, cancel).map_err(|e| match e {
        LockError::Cancelled => KernelBuildError::Cancelled,
        LockError::Io { context, source } => KernelBuildError::Io { context, source },
    })?;
    // Another process may have built it while we waited for the lock.
    if let Some(built) = cached_entry(&entry, &key)? {
        return Ok(built);
    }
    remove_stale_scratch(&cache_dir, &key).map_err(io_ctx(format!(
        "cannot remove stale build directories in {}",
        cache_dir.display()
    )))?;

    let scratch = Scratch {
        dir: cache_dir.join(format!("{key}.tmp-{}", std::process::id())),
    };
    let out = scratch.dir.join("entry");
    let obj = scratch.dir.join("build");
    for d in [&out, &obj] {
        fs::create_dir_all(d).map_err(io_ctx(format!("cannot create {}", d.display())))?;
    }
    let log = out.join("build.log");
    File::create(&log).map_err(io_ctx(format!("cannot create {}", log.display())))?;

    let src = match &spec.source {
        Source::DebianTarball(tarball) => {
            let dest = scratch.dir.join("src");
            fs::create_dir_all(&dest)
                .map_err(io_ctx(format!("cannot create {}", dest.display())))?;
            unpack(tarball, &dest, &log, cancel, progress)?
        }
        Source::Tree(tree) => usable_tree(tree)?,
    };
    let work = Work {
        src,
        obj,
        log,
        cancel,
    };

    configure(&work, &fragment, progress)?;
    compile(&work, spec.jobs, progress)?;

    // Install.
    progress("install", 0, 2);
    let release_out = work.obj.join("kernelrelease.out");
    let capture = File::create(&release_out)
        .map_err(io_ctx(format!("cannot create {}", release_out.display())))?;
    let cmd = work.make(&["-s".as_ref(), "kernelrelease".as_ref()]);
    work.run(cmd, "make kernelrelease", Some(capture), &mut no_tick)?;
    let release = fs::read_to_string(&release_out)
        .map_err(io_ctx(format!("cannot read {}", release_out.display())))?
        .trim()
        .to_owned();
    if release.is_empty() || release.contains('\n') {
        return Err(KernelBuildError::Build {
            log_tail: format!("make -s kernelrelease printed {release:?}"),
        });
    }
    let vmlinux = out.join("vmlinux");
    fs::rename(work.obj.join("vmlinux"), &vmlinux)
        .map_err(io_ctx("cannot move vmlinux out of the build directory"))?;
    let elf = File::open(&vmlinux)
        .map_err(io_ctx(format!("cannot open {}", vmlinux.display())))
        .and_then(|f| {
            kernel_image::inspect_elf(&f).map_err(|e| KernelBuildError::Build {
                log_tail: format!("make vmlinux produced a file that cannot be booted: {e}"),
            })
        })?;
    tracing::info!(release, pvh = elf.pvh_note, "kernel built");
    fs::copy(work.obj.join(".config"), out.join(".config"))
        .map_err(io_ctx("cannot copy .config"))?;
    fs::write(out.join("release"), format!("{release}\n"))
        .map_err(io_ctx("cannot write the release file"))?;
    work.check_cancel()?;
    for name in ["vmlinux", ".config", "release", "build.log"] {
        fsync_path(&out.join(name)).map_err(io_ctx(format!("cannot fsync {name}")))?;
    }
    fsync_path(&out).map_err(io_ctx("cannot fsync the entry directory"))?;
    fs::rename(&out, &entry).map_err(io_ctx(format!(
        "cannot move the built kernel to {}",
        entry.display()
    )))?;
    fsync_path(&cache_dir).map_err(io_ctx(format!("cannot fsync {}", cache_dir.display())))?;
    progress("install", 1, 2);
    drop(scratch); // the unpacked tree and the objects: gigabytes
    progress("install", 2, 2);
    Ok(Built {
        vmlinux: entry.join("vmlinux"),
        config: entry.join(".config"),
        release,
        key,
        cached: false,
    })
}

/// A tree given as the source: canonical, a kernel Makefile, and clean
/// (kbuild refuses `O=` builds of a tree configured in place).
fn usable_tree(tree: &Path) -> Result<PathBuf, KernelBuildError> {
    let bad = |reason: String| KernelBuildError::Source {
        path: tree.to_path_buf(),
        reason,
    };
    let src = tree.canonicalize().map_err(|e| bad(e.to_string()))?;
    if !src.join("Makefile").is_file() {
        return Err(bad("has no Makefile: not a kernel tree".to_owned()));
    }
    if src.join(".config").exists() || src.join("include/config").exists() {
        return Err(bad(
            "is configured in place (.config or include/config); banger builds out of tree, \
             so pass a clean tree (make mrproper)"
                .to_owned(),
        ));
    }
    Ok(src)
}

/// Unpacks the `.tar.xz` into `dest` (decompressing here, `tar -x` reading a
/// pipe) and returns the tree inside it.
fn unpack(
    tarball: &Path,
    dest: &Path,
    log: &Path,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<PathBuf, KernelBuildError> {
    let bad = |reason: String| KernelBuildError::Source {
        path: tarball.to_path_buf(),
        reason,
    };
    let file = File::open(tarball).map_err(|e| bad(e.to_string()))?;
    let total = file.metadata().map_err(|e| bad(e.to_string()))?.len();
    let log_file = OpenOptions::new()
        .append(true)
        .open(log)
        .map_err(io_ctx(format!("cannot open {}", log.display())))?;
    let mut cmd = Command::new("tar");
    cmd.args(["-x", "--no-same-owner", "-f", "-", "-C"])
        .arg(dest);
    let mut c = build_tool(cmd, cancel);
    c.stdin(In::Piped)
        .stdout(Out::Null)
        .stderr(Out::File(log_file));
    let mut tar = c.spawn().map_err(KernelBuildError::Run)?;
    let mut stdin = tar.take_stdin().expect("stdin is piped");
    let mut xz = xz2::read::XzDecoder::new_multi_decoder(CountingReader {
        inner: io::BufReader::with_capacity(1 << 20, file),
        count: 0,
    });
    let mut buf = vec![0u8; 1 << 18];
    let mut reported = 0;
    progress("unpack", 0, total);
    let failure = loop {
        if cancel.load(Ordering::Relaxed) {
            tar.kill();
            return Err(KernelBuildError::Cancelled);
        }
        let n = match xz.read(&mut buf) {
            Ok(0) => break None,
            Ok(n) => n,
            Err(e) => break Some(format!("cannot decompress: {e}")),
        };
        if let Err(e) = stdin.write_all(&buf[..n]) {
            break Some(format!("tar stopped reading: {e}"));
        }
        let done = xz.get_ref().count;
        if done - reported >= 4 << 20 {
            reported = done;
            progress("unpack", done, total);
        }
    };
    drop(stdin);
    let status = match tar.wait() {
        Ok(done) => done.status,
        Err(ProcError::Cancelled { .. }) => return Err(KernelBuildError::Cancelled),
        Err(e) => return Err(KernelBuildError::Run(e)),
    };
    if let Some(reason) = failure {
        return Err(bad(format!("{reason}\n{}", log_tail(log))));
    }
    if !status.success() {
        return Err(bad(format!("tar failed ({status}):\n{}", log_tail(log))));
    }
    progress("unpack", total, total);
    let mut trees = Vec::new();
    for e in fs::read_dir(dest).map_err(io_ctx(format!("cannot list {}", dest.display())))? {
        let path = e
            .map_err(io_ctx("cannot list the unpacked tarball"))?
            .path();
        if path.join("Makefile").is_file() {
            trees.push(path);
        }
    }
    match trees.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(bad(format!(
            "expected one top-level directory with a Makefile, found {}",
            trees.len()
        ))),
    }
}

struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// allnoconfig, the fragment, olddefconfig, and the check that every
/// fragment option survived (four progress steps).
fn configure(
    work: &Work,
    fragment: &[(String, String)],
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<(), KernelBuildError> {
    progress("configure", 0, 4);
    let cmd = work.make(&["allnoconfig".as_ref()]);
    work.run(cmd, "make allnoconfig", None, &mut no_tick)?;
    progress("configure", 1, 4);
    let dot_config = work.obj.join(".config");
    let base = fs::read_to_string(&dot_config)
        .map_err(io_ctx(format!("cannot read {}", dot_config.display())))?;
    fs::write(&dot_config, merge_fragment(&base, fragment))
        .map_err(io_ctx(format!("cannot write {}", dot_config.display())))?;
    progress("configure", 2, 4);
    let cmd = work.make(&["olddefconfig".as_ref()]);
    work.run(cmd, "make olddefconfig", None, &mut no_tick)?;
    progress("configure", 3, 4);
    let result = fs::read_to_string(&dot_config)
        .map_err(io_ctx(format!("cannot read {}", dot_config.display())))?;
    let dropped = verify(&result, fragment);
    if !dropped.is_empty() {
        return Err(KernelBuildError::Config { dropped });
    }
    progress("configure", 4, 4);
    work.check_cancel()
}

/// `make -jN vmlinux`, counting kbuild's step lines for progress.
fn compile(
    work: &Work,
    jobs: usize,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<(), KernelBuildError> {
    let jobs = match jobs {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut counter = StepCounter::at_end_of(&work.log)
        .map_err(io_ctx(format!("cannot read {}", work.log.display())))?;
    let mut reader =
        File::open(&work.log).map_err(io_ctx(format!("cannot read {}", work.log.display())))?;
    let mut reported = u64::MAX;
    progress("compile", 0, COMPILE_STEPS_ESTIMATE);
    let mut tick = || {
        counter
            .poll(&mut reader)
            .map_err(io_ctx("cannot read build.log"))?;
        if counter.steps != reported {
            reported = counter.steps;
            progress(
                "compile",
                counter.steps,
                COMPILE_STEPS_ESTIMATE.max(counter.steps),
            );
        }
        Ok(())
    };
    let j = format!("-j{jobs}");
    let cmd = work.make(&[j.as_ref(), "vmlinux".as_ref()]);
    work.run(cmd, "make vmlinux", None, &mut tick)?;
    progress("compile", counter.steps, counter.steps);
    work.check_cancel()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    const FAKE_MAKEFILE: &str = r#"# A fake kernel tree for banger's kernel_build tests.
VERSION = 6
PATCHLEVEL = 1
SUBLEVEL = 99
EXTRAVERSION =
SRC := $(CURDIR)
O ?= .

allnoconfig:
	@echo run allnoconfig >> $(SRC)/runs.log
	@echo "  HOSTCC  scripts/kconfig/conf.o"
	@mkdir -p $(O)
	@printf '# CONFIG_64BIT is not set\n# CONFIG_MODULES is not set\n# CONFIG_PVH is not set\nCONFIG_LOCALVERSION=""\nCONFIG_NR_CPUS=8\n' > $(O)/.config

# The bases of recipe 1, which recipe 2 must not use.
x86_64_defconfig:
	@printf 'CONFIG_64BIT=y\nCONFIG_MODULES=y\nCONFIG_NR_CPUS=64\n' > $(O)/.config

kvm_guest.config:
	@printf 'CONFIG_KVM_GUEST=y\n' >> $(O)/.config

# Kconfig drops an option whose dependency is missing.
olddefconfig:
	@sed -i -e '/CONFIG_NEEDS_MISSING_DEP[= ]/d' $(O)/.config

vmlinux:
	@echo run vmlinux >> $(SRC)/runs.log
	@for f in a b c d e; do echo "  CC      kernel/$$f.o"; done
	@echo "some other line"
	@if [ -e $(SRC)/fail ]; then echo "kernel/fork.c:12:3: error: fake compile failure" >&2; exit 2; fi
	@if [ -e $(SRC)/slow ]; then sh -c 'echo $$$$ > $(SRC)/sleeper.pid; exec sleep 300' & wait; fi
	@gcc -static -nostdlib -no-pie -Wl,--build-id=none -o $(O)/vmlinux $(SRC)/entry.S
	@echo "  LD      vmlinux"

kernelrelease:
	@echo "6.1.99$$(sed -n 's/^CONFIG_LOCALVERSION="\(.*\)"$$/\1/p' $(O)/.config)"
"#;

    /// A tiny x86-64 ELF with the Xen PVH entry note, like a real vmlinux.
    const FAKE_ENTRY_S: &str = r#"
	.section .note.Xen,"a",@note
	.balign 4
	.long 4, 4, 18
	.asciz "Xen"
	.balign 4
	.long _start
	.balign 4
	.section .note.GNU-stack,"",@progbits
	.text
	.globl _start
_start:
	hlt
	jmp _start
"#;

    const FAKE_FRAGMENT: &str = "# test fragment\n# CONFIG_MODULES is not set\nCONFIG_PVH=y\n\
                                 CONFIG_LOCALVERSION=\"-banger\"\n";

    fn fake_tree(dir: &Path, markers: &[&str]) -> PathBuf {
        let tree = dir.join("linux-fake");
        fs::create_dir_all(&tree).unwrap();
        fs::write(tree.join("Makefile"), FAKE_MAKEFILE).unwrap();
        fs::write(tree.join("entry.S"), FAKE_ENTRY_S).unwrap();
        for m in markers {
            fs::write(tree.join(m), "").unwrap();
        }
        tree
    }

    fn fragment_file(dir: &Path, text: &str) -> PathBuf {
        let p = dir.join("fragment.config");
        fs::write(&p, text).unwrap();
        p
    }

    fn runs(tree: &Path) -> usize {
        fs::read_to_string(tree.join("runs.log"))
            .unwrap_or_default()
            .lines()
            .count()
    }

    /// Names in the cache dir other than lock files.
    fn cache_names(cache: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect();
        v.sort();
        v
    }

    type Events = Vec<(String, u64, u64)>;

    fn run_build(
        spec: &BuildSpec,
        cache: &Path,
        cancel: &AtomicBool,
    ) -> (Result<Built, KernelBuildError>, Events) {
        let mut events = Vec::new();
        let r = build(spec, cache, cancel, &mut |s, d, t| {
            events.push((s.to_owned(), d, t))
        });
        (r, events)
    }

    #[test]
    fn fragment_options_parses_every_form() {
        let text = "\
# comment line
CONFIG_A=y
# CONFIG_B is not set
CONFIG_C=m
CONFIG_D=n
CONFIG_E=\"with spaces = and # hash\"
CONFIG_F=0x1000
  CONFIG_G=64  
not a line
CONFIG_=y
CONFIG_H=
#CONFIG_I is not set
CONFIG_A=n
";
        let opts = fragment_options(text);
        let want: Vec<(String, String)> = [
            ("CONFIG_A", "n"),
            ("CONFIG_B", "n"),
            ("CONFIG_C", "m"),
            ("CONFIG_D", "n"),
            ("CONFIG_E", "\"with spaces = and # hash\""),
            ("CONFIG_F", "0x1000"),
            ("CONFIG_G", "64"),
            ("CONFIG_I", "n"),
        ]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
        assert_eq!(opts, want);
    }

    #[test]
    fn verify_lists_options_not_as_requested() {
        let dot_config = "\
CONFIG_A=y
# CONFIG_B is not set
CONFIG_C=m
CONFIG_S=\"-banger\"
CONFIG_N=32
";
        let frag = fragment_options(
            "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\nCONFIG_S=\"-banger\"\nCONFIG_N=64\n\
             CONFIG_GONE=y\n# CONFIG_ABSENT is not set\nCONFIG_B2=n\n",
        );
        assert_eq!(
            verify(dot_config, &frag),
            vec![
                "CONFIG_C=y (got m)".to_owned(),
                "CONFIG_N=64 (got 32)".to_owned(),
                "CONFIG_GONE=y (got absent)".to_owned(),
            ]
        );
        let frag = fragment_options("CONFIG_B=y\nCONFIG_S=\"other\"\n");
        assert_eq!(
            verify(dot_config, &frag),
            vec![
                "CONFIG_B=y (got is not set)".to_owned(),
                "CONFIG_S=\"other\" (got \"-banger\")".to_owned(),
            ]
        );
        assert!(verify(dot_config, &[]).is_empty());
    }

    #[test]
    fn merge_replaces_and_appends() {
        let base = "#\n# Automatically generated\n#\nCONFIG_A=y\n# CONFIG_B is not set\n\
                    CONFIG_C=m\nCONFIG_S=\"\"\n";
        let frag =
            fragment_options("# CONFIG_A is not set\nCONFIG_B=y\nCONFIG_S=\"-x\"\nCONFIG_NEW=y\n");
        let merged = merge_fragment(base, &frag);
        assert_eq!(
            merged,
            "#\n# Automatically generated\n#\nCONFIG_C=m\n# CONFIG_A is not set\nCONFIG_B=y\n\
             CONFIG_S=\"-x\"\nCONFIG_NEW=y\n"
        );
        assert!(verify(&merged, &frag).is_empty());
    }

    #[test]
    fn step_lines_are_counted_across_partial_reads() {
        assert!(is_step_line(b"  CC      kernel/fork.o"));
        assert!(is_step_line(b"  HOSTCC  scripts/basic/fixdep"));
        assert!(is_step_line(b"  LD      vmlinux"));
        assert!(!is_step_line(b"kernel/fork.c:1: error: x"));
        assert!(!is_step_line(b"    |     ^~~~"));
        assert!(!is_step_line(b"  C"));
        assert!(!is_step_line(b"  CC"));
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        fs::write(&log, "  CC      old.o\n").unwrap();
        let mut c = StepCounter::at_end_of(&log).unwrap();
        let mut r = File::open(&log).unwrap();
        let mut w = OpenOptions::new().append(true).open(&log).unwrap();
        w.write_all(b"  CC      a.o\n  CC   ").unwrap();
        c.poll(&mut r).unwrap();
        assert_eq!(c.steps, 1);
        w.write_all(b"   b.o\nwarning: x\n  AR      lib.a\n")
            .unwrap();
        c.poll(&mut r).unwrap();
        assert_eq!(c.steps, 3);
    }

    #[test]
    fn cache_key_of_a_tarball_follows_its_bytes_and_the_fragment() {
        let dir = tempfile::tempdir().unwrap();
        let tarball = dir.path().join("linux-source.tar.xz");
        fs::write(&tarball, vec![7u8; 3 << 20]).unwrap();
        let frag = fragment_file(dir.path(), "CONFIG_A=y\n");
        let spec = BuildSpec {
            source: Source::DebianTarball(tarball.clone()),
            fragment: frag.clone(),
            jobs: 1,
        };
        let k1 = cache_key(&spec).unwrap();
        assert_eq!(k1.len(), 64);
        assert_eq!(cache_key(&spec).unwrap(), k1, "same inputs, same key");

        // The same bytes elsewhere: same key (content, not path).
        let copy = dir.path().join("copy.tar.xz");
        fs::copy(&tarball, &copy).unwrap();
        let spec_copy = BuildSpec {
            source: Source::DebianTarball(copy),
            ..spec.clone()
        };
        assert_eq!(cache_key(&spec_copy).unwrap(), k1);

        // One byte of the tarball changed (a new file: new inode, so no memo).
        let mut bytes = fs::read(&tarball).unwrap();
        bytes[1 << 20] = 8;
        let changed = dir.path().join("changed.tar.xz");
        fs::write(&changed, &bytes).unwrap();
        let spec_changed = BuildSpec {
            source: Source::DebianTarball(changed),
            ..spec.clone()
        };
        assert_ne!(cache_key(&spec_changed).unwrap(), k1);

        // The fragment changed.
        fs::write(&frag, "CONFIG_A=n\n").unwrap();
        let k2 = cache_key(&spec).unwrap();
        assert_ne!(k2, k1);
        fs::write(&frag, "CONFIG_A=y\n").unwrap();
        assert_eq!(cache_key(&spec).unwrap(), k1);
    }

    #[test]
    fn cache_key_of_a_tree_follows_version_and_git() {
        let dir = tempfile::tempdir().unwrap();
        let tree = fake_tree(dir.path(), &[]);
        let frag = fragment_file(dir.path(), FAKE_FRAGMENT);
        let spec = BuildSpec {
            source: Source::Tree(tree.clone()),
            fragment: frag,
            jobs: 1,
        };
        let k1 = cache_key(&spec).unwrap();
        assert_eq!(cache_key(&spec).unwrap(), k1);
        // Files other than the Makefile's version do not matter without git.
        fs::write(tree.join("other.c"), "int x;").unwrap();
        assert_eq!(cache_key(&spec).unwrap(), k1);

        let makefile = fs::read_to_string(tree.join("Makefile")).unwrap();
        fs::write(
            tree.join("Makefile"),
            makefile.replace("SUBLEVEL = 99", "SUBLEVEL = 100"),
        )
        .unwrap();
        let k_sub = cache_key(&spec).unwrap();
        assert_ne!(k_sub, k1);
        fs::write(
            tree.join("Makefile"),
            makefile.replace("EXTRAVERSION =", "EXTRAVERSION = -rc1"),
        )
        .unwrap();
        assert_ne!(cache_key(&spec).unwrap(), k1);
        fs::write(tree.join("Makefile"), &makefile).unwrap();
        assert_eq!(cache_key(&spec).unwrap(), k1);

        // Not a kernel tree.
        let bad = BuildSpec {
            source: Source::Tree(dir.path().to_path_buf()),
            ..spec.clone()
        };
        assert!(cache_key(&bad).is_err());

        // A git checkout: the key follows `git describe --dirty`.
        if crate::tools::find_in_path("git").is_none() {
            return;
        }
        let git = |args: &[&str]| {
            let st = Command::new("git")
                .arg("-C")
                .arg(&tree)
                .args(["-c", "user.name=t", "-c", "user.email=t@t"])
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "git {args:?}");
        };
        git(&["init", "-q"]);
        git(&["add", "-A"]);
        git(&["commit", "-q", "-m", "one"]);
        let k_git1 = cache_key(&spec).unwrap();
        assert_ne!(k_git1, k1);
        fs::write(tree.join("other.c"), "int y;").unwrap();
        let k_dirty = cache_key(&spec).unwrap();
        assert_ne!(k_dirty, k_git1);
        git(&["commit", "-q", "-am", "two"]);
        let k_git2 = cache_key(&spec).unwrap();
        assert_ne!(k_git2, k_git1);
        assert_ne!(k_git2, k_dirty);
    }

    #[test]
    fn missing_tools_names_their_packages() {
        let dir = tempfile::tempdir().unwrap();
        let empty_bin = dir.path().join("bin");
        fs::create_dir(&empty_bin).unwrap();
        let err = missing_tools(empty_bin.as_os_str(), dir.path()).unwrap();
        let KernelBuildError::MissingTool { tool, package } = &err else {
            panic!("{err:?}");
        };
        for t in [
            "make",
            "gcc",
            "flex",
            "bison",
            "bc",
            "libelf.h",
            "openssl/opensslv.h",
        ] {
            assert!(tool.contains(t), "{tool}");
        }
        assert_eq!(package, "make gcc flex bison bc tar libelf-dev libssl-dev");
        assert!(
            err.to_string().contains("apt-get install make gcc"),
            "{err}"
        );

        // Only bc missing.
        let bin = dir.path().join("bin2");
        fs::create_dir(&bin).unwrap();
        for t in ["make", "gcc", "flex", "bison", "tar"] {
            std::os::unix::fs::symlink("/bin/true", bin.join(t)).unwrap();
        }
        let inc = dir.path().join("include");
        fs::create_dir_all(inc.join("openssl")).unwrap();
        fs::write(inc.join("libelf.h"), "").unwrap();
        fs::write(inc.join("openssl/opensslv.h"), "").unwrap();
        match missing_tools(bin.as_os_str(), &inc) {
            Some(KernelBuildError::MissingTool { tool, package }) => {
                assert_eq!((tool.as_str(), package.as_str()), ("bc", "bc"));
            }
            other => panic!("{other:?}"),
        }
        std::os::unix::fs::symlink("/bin/true", bin.join("bc")).unwrap();
        assert!(missing_tools(bin.as_os_str(), &inc).is_none());
    }

    #[test]
    fn build_from_a_tree_then_cached() {
        let dir = tempfile::tempdir().unwrap();
        let tree = fake_tree(dir.path(), &[]);
        let cache = dir.path().join("cache");
        let spec = BuildSpec {
            source: Source::Tree(tree.clone()),
            fragment: fragment_file(dir.path(), FAKE_FRAGMENT),
            jobs: 2,
        };
        let cancel = AtomicBool::new(false);
        let (r, events) = run_build(&spec, &cache, &cancel);
        let built = r.unwrap();
        assert!(!built.cached);
        assert_eq!(built.release, "6.1.99-banger");
        assert_eq!(built.key, cache_key(&spec).unwrap());
        let entry = cache.canonicalize().unwrap().join(&built.key);
        assert_eq!(built.vmlinux, entry.join("vmlinux"));
        assert_eq!(built.config, entry.join(".config"));
        assert_eq!(runs(&tree), 2, "allnoconfig and vmlinux ran once each");
        assert_eq!(
            cache_names(&cache),
            vec![built.key.clone()],
            "no scratch left"
        );

        let elf = kernel_image::inspect_elf(&File::open(&built.vmlinux).unwrap()).unwrap();
        assert!(elf.pvh_note);
        let config = fs::read_to_string(&built.config).unwrap();
        assert!(verify(&config, &fragment_options(FAKE_FRAGMENT)).is_empty());
        // The base is allnoconfig, not x86_64_defconfig + kvm_guest.config.
        assert!(
            config.contains("# CONFIG_64BIT is not set\n") && config.contains("CONFIG_NR_CPUS=8\n"),
            "allnoconfig is the base: {config}"
        );
        assert!(
            !config.contains("CONFIG_KVM_GUEST=y") && !config.contains("CONFIG_NR_CPUS=64"),
            "neither defconfig nor kvm_guest.config ran: {config}"
        );
        assert_eq!(
            fs::read_to_string(entry.join("release")).unwrap(),
            "6.1.99-banger\n"
        );
        let log = fs::read_to_string(entry.join("build.log")).unwrap();
        assert!(log.contains("  CC      kernel/e.o"), "{log}");

        // Progress: configure 0..4, compile counts the 5 CC lines and the LD
        // (not the HOSTCC printed during configure), install; no unpack.
        let stages: Vec<&str> = events.iter().map(|e| e.0.as_str()).collect();
        assert!(!stages.contains(&"unpack"));
        let first = |s: &str| stages.iter().position(|x| *x == s).unwrap();
        assert!(first("configure") < first("compile") && first("compile") < first("install"));
        assert!(events.contains(&("configure".to_owned(), 4, 4)));
        assert!(events.contains(&("compile".to_owned(), 6, 6)), "{events:?}");
        assert_eq!(events.last().unwrap(), &("install".to_owned(), 2, 2));

        // Again: cached, instant, nothing run.
        let t = Instant::now();
        let (r, events) = run_build(&spec, &cache, &cancel);
        let again = r.unwrap();
        assert!(t.elapsed() < Duration::from_millis(500));
        assert!(again.cached);
        assert_eq!(
            again,
            Built {
                cached: true,
                ..built.clone()
            }
        );
        assert!(events.is_empty());
        assert_eq!(runs(&tree), 2, "make did not run again");

        // A different fragment is a different entry.
        fs::write(&spec.fragment, format!("{FAKE_FRAGMENT}CONFIG_NR_CPUS=8\n")).unwrap();
        let other = run_build(&spec, &cache, &cancel).0.unwrap();
        assert!(!other.cached);
        assert_ne!(other.key, built.key);
        assert!(fs::read_to_string(&other.config)
            .unwrap()
            .contains("CONFIG_NR_CPUS=8\n"));
        assert_eq!(runs(&tree), 4);
    }

    #[test]
    fn build_from_a_tarball_unpacks_it() {
        let dir = tempfile::tempdir().unwrap();
        let tree = fake_tree(dir.path(), &[]);
        let tarball = dir.path().join("linux-source-fake.tar.xz");
        let st = Command::new("tar")
            .arg("-cJf")
            .arg(&tarball)
            .arg("-C")
            .arg(dir.path())
            .arg(tree.file_name().unwrap())
            .status()
            .unwrap();
        assert!(st.success());
        let cache = dir.path().join("cache");
        let spec = BuildSpec {
            source: Source::DebianTarball(tarball.clone()),
            fragment: fragment_file(dir.path(), FAKE_FRAGMENT),
            jobs: 1,
        };
        let cancel = AtomicBool::new(false);
        let (r, events) = run_build(&spec, &cache, &cancel);
        let built = r.unwrap();
        assert_eq!(built.release, "6.1.99-banger");
        let size = fs::metadata(&tarball).unwrap().len();
        assert_eq!(events[0], ("unpack".to_owned(), 0, size));
        assert!(events.contains(&("unpack".to_owned(), size, size)));
        assert_eq!(runs(&tree), 0, "the tarball's copy ran, not the tree");
        assert_eq!(cache_names(&cache), vec![built.key.clone()]);
        assert!(run_build(&spec, &cache, &cancel).0.unwrap().cached);

        // Not a tarball.
        let junk = dir.path().join("junk.tar.xz");
        fs::write(&junk, "not xz").unwrap();
        let spec = BuildSpec {
            source: Source::DebianTarball(junk),
            ..spec
        };
        let err = run_build(&spec, &cache, &cancel).0.unwrap_err();
        assert!(matches!(err, KernelBuildError::Source { .. }), "{err:?}");
        assert_eq!(cache_names(&cache), vec![built.key]);
    }

    #[test]
    fn dropped_option_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let tree = fake_tree(dir.path(), &[]);
        let cache = dir.path().join("cache");
        let spec = BuildSpec {
            source: Source::Tree(tree.clone()),
            fragment: fragment_file(
                dir.path(),
                &format!("{FAKE_FRAGMENT}CONFIG_NEEDS_MISSING_DEP=y\n"),
            ),
            jobs: 1,
        };
        let err = run_build(&spec, &cache, &AtomicBool::new(false))
            .0
            .unwrap_err();
        match &err {
            KernelBuildError::Config { dropped } => {
                assert_eq!(
                    dropped,
                    &vec!["CONFIG_NEEDS_MISSING_DEP=y (got absent)".to_owned()]
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            err.to_string().contains("CONFIG_NEEDS_MISSING_DEP"),
            "{err}"
        );
        assert!(cache_names(&cache).is_empty(), "{:?}", cache_names(&cache));
        assert_eq!(runs(&tree), 1, "no compile after a config error");
    }

    #[test]
    fn failing_compile_is_a_build_error_with_the_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let tree = fake_tree(dir.path(), &["fail"]);
        let cache = dir.path().join("cache");
        let spec = BuildSpec {
            source: Source::Tree(tree),
            fragment: fragment_file(dir.path(), FAKE_FRAGMENT),
            jobs: 1,
        };
        let err = run_build(&spec, &cache, &AtomicBool::new(false))
            .0
            .unwrap_err();
        let KernelBuildError::Build { log_tail } = &err else {
            panic!("{err:?}");
        };
        assert!(
            log_tail.contains("error: fake compile failure"),
            "{log_tail}"
        );
        assert!(log_tail.contains("make vmlinux failed"), "{log_tail}");
        assert!(cache_names(&cache).is_empty());
    }

    #[test]
    fn configured_tree_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let tree = fake_tree(dir.path(), &[]);
        fs::write(tree.join(".config"), "CONFIG_A=y\n").unwrap();
        let spec = BuildSpec {
            source: Source::Tree(tree),
            fragment: fragment_file(dir.path(), FAKE_FRAGMENT),
            jobs: 1,
        };
        let err = run_build(&spec, &dir.path().join("cache"), &AtomicBool::new(false))
            .0
            .unwrap_err();
        assert!(err.to_string().contains("make mrproper"), "{err}");
    }

    fn process_gone(pid: u32) -> bool {
        match fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            // A zombie waiting for its reaper is dead too.
            Ok(stat) => stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z'),
        }
    }

    #[test]
    fn cancel_kills_the_process_group_and_leaves_no_entry() {
        let dir = tempfile::tempdir().unwrap();
        let tree = fake_tree(dir.path(), &["slow"]);
        let cache = dir.path().join("cache");
        let spec = BuildSpec {
            source: Source::Tree(tree.clone()),
            fragment: fragment_file(dir.path(), FAKE_FRAGMENT),
            jobs: 1,
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let pid_file = tree.join("sleeper.pid");
        let canceller = {
            let (cancel, pid_file) = (cancel.clone(), pid_file.clone());
            std::thread::spawn(move || {
                let t = Instant::now();
                while !fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n')) {
                    assert!(
                        t.elapsed() < Duration::from_secs(20),
                        "the sleeper never started"
                    );
                    std::thread::sleep(Duration::from_millis(20));
                }
                cancel.store(true, Ordering::Relaxed);
                Instant::now()
            })
        };
        let (r, events) = run_build(&spec, &cache, &cancel);
        let cancelled_at = canceller.join().unwrap();
        assert!(matches!(r, Err(KernelBuildError::Cancelled)), "{r:?}");
        assert!(
            cancelled_at.elapsed() < Duration::from_secs(2),
            "cancel was slow"
        );
        assert!(events.iter().any(|e| e.0 == "compile"));
        // The sleeper is make's grandchild: only a group kill reaches it.
        let pid: u32 = fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let t = Instant::now();
        while !process_gone(pid) {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "sleeper {pid} survived the cancel"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(cache_names(&cache).is_empty(), "{:?}", cache_names(&cache));

        // The same build without the marker now completes.
        fs::remove_file(tree.join("slow")).unwrap();
        let built = run_build(&spec, &cache, &AtomicBool::new(false)).0.unwrap();
        assert!(!built.cached);
    }

    #[test]
    fn series_and_default_names() {
        let tb = |n: &str| Source::DebianTarball(PathBuf::from(format!("/usr/src/{n}")));
        assert_eq!(
            series(&tb("linux-source-6.1.tar.xz")).as_deref(),
            Some("6.1")
        );
        assert_eq!(
            series(&tb("linux-source-6.12.tar.bz2")).as_deref(),
            Some("6.12")
        );
        assert_eq!(series(&tb("kernel.tar.xz")), None);
        assert_eq!(series(&tb("linux-source-x.1.tar.xz")), None);
        let dir = tempfile::tempdir().unwrap();
        let tree = fake_tree(dir.path(), &[]);
        assert_eq!(series(&Source::Tree(tree)).as_deref(), Some("6.1"));
        assert_eq!(series(&Source::Tree(dir.path().join("none"))), None);
        assert_eq!(default_name(Some("6.1")), "banger-6-1");
        assert_eq!(default_name(None), "banger");
        for n in [default_name(Some("6.12")), default_name(None)] {
            banger_proto::names::validate_name(&n).unwrap();
        }
        // The embedded fragment is the repository's file, byte for byte (the
        // cache key hashes these bytes).
        let repo = fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../images/kernel/banger.config"),
        )
        .unwrap();
        assert_eq!(DEFAULT_FRAGMENT, repo);
        assert!(fragment_options(DEFAULT_FRAGMENT)
            .iter()
            .any(|(k, v)| k == "CONFIG_PVH" && v == "y"));
    }

    #[test]
    fn stale_scratch_dirs_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let tree = fake_tree(dir.path(), &[]);
        let cache = dir.path().join("cache");
        fs::create_dir_all(&cache).unwrap();
        let spec = BuildSpec {
            source: Source::Tree(tree),
            fragment: fragment_file(dir.path(), FAKE_FRAGMENT),
            jobs: 1,
        };
        let key = cache_key(&spec).unwrap();
        let other = "a".repeat(64);
        // A killed build of this key (its pid may even be alive: we hold the
        // key's lock, so nobody else is building it), a killed build of
        // another key (pid beyond pid_max: dead), and a live one of another
        // key (our own pid), which must stay.
        let own = std::process::id();
        let stale_same = cache.join(format!("{key}.tmp-{own}"));
        let stale_other = cache.join(format!("{other}.tmp-999999999"));
        let live_other = cache.join(format!("{other}.tmp-{own}"));
        for d in [&stale_same, &stale_other, &live_other] {
            fs::create_dir_all(d.join("entry")).unwrap();
            fs::write(d.join("entry/vmlinux"), "half").unwrap();
        }
        let built = run_build(&spec, &cache, &AtomicBool::new(false)).0.unwrap();
        let mut want = vec![built.key.clone(), format!("{other}.tmp-{own}")];
        want.sort();
        assert_eq!(cache_names(&cache), want);
        assert_eq!(
            parse_scratch_name(&format!("{key}.tmp-12")),
            Some((key.as_str(), 12))
        );
        assert_eq!(parse_scratch_name("abc.tmp-12"), None);
        assert_eq!(parse_scratch_name(&key), None);
    }
}
