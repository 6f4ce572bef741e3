//! `kernel build` and `image build`: the operation bodies around
//! [`banger_core::kernel_build`] and [`banger_core::image_build`], and the
//! registration of what they produce.
//!
//! The builds write into the build cache (`[build] cache_dir`, default the
//! daemon's cache dir; `kernels/` and `images/` under it), keyed by their
//! inputs, so a second build of the same inputs costs nothing. Registration
//! copies the result into the state dir (reflink when the filesystems allow),
//! hashing it on the way, like an import: the registry never points into the
//! cache, which may be shared or emptied.
//!
//! Names: a kernel built without `--name` is `banger-<major>-<minor>` of its
//! source (`banger-6-1`); an image is named after its distribution
//! (`debian-bookworm`, `debian-bookworm-full`). When that name is taken:
//! same content (sha256) → the existing object is reused; other content → an
//! `already_exists` error unless `replace` (refused while something uses the
//! old one; the swap is one store transaction).
//!
//! Ownership: what is built from banger's own default inputs under its
//! default name (the Debian kernel with banger's fragment; an image from
//! banger's recipe, the default mirror and root's default kernel) is the
//! host's, owned by root and so shared with every user, whoever asked first:
//! it is the same artifact for everyone, and a private copy would block
//! others' use of the name. A result is shared only when every input is
//! root's (the kernel's owner, the mirror, the fragment); anything else is
//! owned by the caller.
//!
//! The default names ([`RESERVED_NAMES`]) are reserved for root-owned
//! objects: a non-root import, register or build whose result would be the
//! caller's under such a name is refused, so no user can take `banger-6-1`
//! first and get their kernel into everyone's default image. `--replace` is
//! judged by the caller's right to change the existing object, never by the
//! owner of the result (a user's default build has a root-owned result, and
//! must still not replace root's image).

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::Error;
use banger_core::image_build::{self, ImageSpec, Variant};
use banger_core::kernel_build::{self, BuildSpec, Source};
use banger_core::store::{ImageRow, KernelRow, StoreError, StoredFile};
use banger_core::{ids, timefmt};
use banger_proto::methods::image::BuildResult as ImageBuildResult;
use banger_proto::methods::kernel::BuildResult as KernelBuildResult;

use crate::caller::Caller;
use crate::ops::OpHandle;
use crate::registry::Registry;
use crate::staging::{blocking, commit, copy, Placed, Scratch};
use crate::{images, kernels};

/// The largest config fragment accepted (banger's own is ~3 KiB).
pub const MAX_FRAGMENT: u64 = 256 * 1024;

/// String options a non-root caller's fragment may set. Every other string
/// option is refused for them: string options are how Kconfig names host
/// files to build into the kernel (`CONFIG_INITRAMFS_SOURCE`,
/// `CONFIG_SYSTEM_TRUSTED_KEYS`, `CONFIG_EXTRA_FIRMWARE`, ...), and the build
/// runs as root, so they would let a user read any file through the result.
pub const USER_STRING_OPTIONS: &[&str] = &[
    "CONFIG_LOCALVERSION",
    "CONFIG_CMDLINE",
    "CONFIG_DEFAULT_HOSTNAME",
];

/// The names banger's defaults register under: reserved for root-owned
/// objects (see the module doc). Every default name banger computes
/// ([`default_kernel_name`], [`default_image_name`] of every distribution and
/// variant) is in this list; a test keeps it so.
pub const RESERVED_NAMES: &[&str] = &["banger-6-1", "debian-bookworm", "debian-bookworm-full"];

/// Whether `name` is one of [`RESERVED_NAMES`].
pub fn is_reserved(name: &str) -> bool {
    RESERVED_NAMES.contains(&name)
}

/// Refuses an object owned by `owner_uid` under a reserved name unless root
/// owns it.
pub fn check_reserved(what: &'static str, name: &str, owner_uid: u32) -> Result<(), Error> {
    if owner_uid == 0 || !is_reserved(name) {
        return Ok(());
    }
    Err(Error::denied(format!(
        "{what} name {name:?} is reserved for banger's shared default, owned by root \
         (reserved: {}); pick another --name",
        RESERVED_NAMES.join(", ")
    )))
}

/// A root-owned image is every user's: its kernel must be root's too, or the
/// owner of that kernel would choose what boots in everyone's VMs.
pub fn check_shared_kernel(image_owner: u32, kernel: &KernelRow) -> Result<(), Error> {
    if image_owner != 0 || kernel.owner_uid == 0 {
        return Ok(());
    }
    Err(Error::denied(format!(
        "kernel {:?} belongs to uid {}; a root-owned image is shared with every user, so its \
         kernel must be root's too",
        kernel.name, kernel.owner_uid
    )))
}

/// Refuses `--replace` of an existing object the caller may not change.
pub fn check_replace(
    caller: &Caller,
    what: &'static str,
    name: &str,
    existing_owner: u32,
    replace: bool,
) -> Result<(), Error> {
    if replace && !caller.can_change(existing_owner) {
        return Err(Conflict::NotYours(existing_owner).into_error(what, name));
    }
    Ok(())
}

/// `--jobs` of a build: a non-root caller's is clamped to the host's CPUs
/// (a build runs as root; `-j 10000` would fork-bomb the host), root's is
/// taken as given.
pub fn clamp_jobs(caller: &Caller, jobs: usize) -> usize {
    if caller.is_root() {
        return jobs.max(1);
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    jobs.clamp(1, cpus)
}

/// Punctuation a non-root caller's string option value may contain besides
/// ASCII letters, digits and spaces.
pub const SAFE_STRING_PUNCT: &str = "._,:=/+-@";

/// Whether a string option's value (`"..."`, quotes included) holds only the
/// safe character set: these values land in a Makefile include (`$(...)`,
/// backslashes, quotes, `#` and newlines would be interpreted by make or the
/// shell it runs).
fn safe_string_value(value: &str) -> bool {
    let Some(inner) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) else {
        return false;
    };
    inner
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == ' ' || SAFE_STRING_PUNCT.contains(c))
}

/// The build cache root: `[build] cache_dir`, else the daemon's cache dir.
/// The static guest agent images get (`agent_bin`, else next to bangerd).
pub fn find_agent(config: &banger_core::config::Config) -> Result<PathBuf, Error> {
    banger_core::tools::find_agent(config)
        .map_err(|e| Error::precondition(e.to_string()))?
        .ok_or_else(|| {
            Error::precondition(format!(
                "no guest agent: {} is not next to bangerd and agent_bin is not set",
                banger_core::tools::AGENT_NAME
            ))
            .hint(
                "run ./install.sh (it builds the static agent and installs it next to bangerd), \
                 or set agent_bin in the config",
            )
        })
}

pub fn cache_root(d: &Registry) -> PathBuf {
    d.config
        .build
        .cache_dir
        .clone()
        .unwrap_or_else(|| d.paths.cache_dir.clone())
}

pub fn kernel_cache(d: &Registry) -> PathBuf {
    cache_root(d).join("kernels")
}

pub fn image_cache(d: &Registry) -> PathBuf {
    cache_root(d).join("images")
}

/// Debian's kernel source package, as a build source.
pub fn debian_source() -> Source {
    Source::DebianTarball(PathBuf::from(kernel_build::DEBIAN_TARBALL))
}

/// The name of the kernel images are built with by default (`banger-6-1`).
pub fn default_kernel_name() -> String {
    kernel_build::default_name(kernel_build::series(&debian_source()).as_deref())
}

/// The name an image build registers without `--name`.
pub fn default_image_name(distro: &str, variant: Variant) -> String {
    match variant {
        Variant::Minimal => distro.to_owned(),
        Variant::Full => format!("{distro}-full"),
    }
}

/// Who owns a build's result: root (shared) for banger's default artifact
/// under its default name, else the caller. See the module doc.
pub fn owner_of(caller_uid: u32, default_inputs: bool, default_name: bool) -> u32 {
    if default_inputs && default_name {
        0
    } else {
        caller_uid
    }
}

/// Checks the text of a fragment the caller passed: UTF-8, and for non-root
/// callers no string options outside [`USER_STRING_OPTIONS`].
pub fn check_fragment(text: &[u8], caller_is_root: bool) -> Result<(), Error> {
    let text = std::str::from_utf8(text)
        .map_err(|_| Error::invalid("--config: the fragment is not UTF-8 text"))?;
    let options = kernel_build::fragment_options(text);
    if options.is_empty() {
        return Err(Error::invalid(
            "--config: the fragment sets no CONFIG_ options",
        ));
    }
    if caller_is_root {
        return Ok(());
    }
    let refused: Vec<&str> = options
        .iter()
        .filter(|(name, value)| {
            value.starts_with('"') && !USER_STRING_OPTIONS.contains(&name.as_str())
        })
        .map(|(name, _)| name.as_str())
        .collect();
    if refused.is_empty() {
        for (name, value) in &options {
            // bool, tristate, int and hex values: y/m/n, digits, 0x...
            let plain = value.strip_prefix('-').unwrap_or(value);
            if !value.starts_with('"')
                && (plain.is_empty() || !plain.chars().all(|c| c.is_ascii_alphanumeric()))
            {
                return Err(Error::denied(format!(
                    "--config: {name}={value}: not a bool, tristate, int or hex value (it \
                     lands in a Makefile include)"
                )));
            }
            if value.starts_with('"') && !safe_string_value(value) {
                return Err(Error::denied(format!(
                    "--config: {name}: a string value may hold only letters, digits, spaces \
                     and {SAFE_STRING_PUNCT:?} (it lands in a Makefile include, where $, \
                     quotes, backslashes, # and the like would be interpreted)"
                )));
            }
        }
        return Ok(());
    }
    Err(Error::denied(format!(
        "--config: string options can name host files that a root build would read into \
             the kernel, so only root may set {}; users may set {} and any bool, tristate, int \
             or hex option",
        refused.join(", "),
        USER_STRING_OPTIONS.join(", ")
    )))
}

/// Reads a passed fragment descriptor (bounded in size, and in time: see
/// [`crate::caller_files`]).
pub async fn read_fragment(f: File) -> Result<Vec<u8>, Error> {
    let (_, bytes) = crate::caller_files::check(f, "--config", |f| {
        banger_core::artifact::stage::require_regular(f, "config fragment").map_err(Error::from)?;
        let mut bytes = Vec::new();
        f.take(MAX_FRAGMENT + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::invalid(format!("--config: cannot read it: {e}")))?;
        Ok(bytes)
    })
    .await?;
    if bytes.len() as u64 > MAX_FRAGMENT {
        return Err(Error::invalid(format!(
            "--config: larger than {} KiB; a fragment lists options, not a whole .config",
            MAX_FRAGMENT / 1024
        )));
    }
    Ok(bytes)
}

// ---------------------------------------------------------------------------
// Kernels

pub struct KernelJob {
    pub owner_uid: u32,
    /// Who asked: `replace` is judged by what they may change.
    pub caller_uid: u32,
    pub name: String,
    pub source: Source,
    /// For a tree: the caller's `O_DIRECTORY` descriptor, which `source`
    /// names as `/proc/self/fd/N`; kept open for the whole build.
    pub source_dir: Option<File>,
    pub fragment: Vec<u8>,
    pub jobs: usize,
    pub replace: bool,
}

pub struct KernelOutcome {
    pub row: KernelRow,
    pub cached: bool,
    pub reused: bool,
    pub key: String,
}

/// The body of a `kernel.build` operation.
pub async fn kernel_build_op(
    d: Arc<Registry>,
    op: OpHandle,
    job: KernelJob,
) -> Result<KernelBuildResult, Error> {
    let caller = Caller {
        uid: job.caller_uid,
        gid: 0,
        pid: 0,
    };
    let out = build_kernel(&d, &op, job, "").await?;
    let result = KernelBuildResult {
        kernel: kernels::info(&d, &caller, &out.row)?,
        cached: out.cached,
        reused: out.reused,
        cache_key: out.key,
    };
    Ok(result)
}

/// Builds (or finds in the cache) and registers a kernel; its stages are
/// named `<prefix><library stage>` (`unpack`, `configure`, `compile`,
/// `install`), then `<prefix>register`.
pub async fn build_kernel(
    d: &Arc<Registry>,
    op: &OpHandle,
    job: KernelJob,
    prefix: &str,
) -> Result<KernelOutcome, Error> {
    let scratch = Scratch::new(&d.paths, &format!("{}-kernel", op.id()))?;
    let fragment = scratch.path("fragment.config");
    std::fs::write(&fragment, &job.fragment)
        .map_err(|e| Error::internal(format!("cannot write {}: {e}", fragment.display())))?;
    let spec = BuildSpec {
        source: job.source,
        fragment,
        jobs: job.jobs,
    };
    let cache = kernel_cache(d);
    op.stage(&format!("{prefix}prepare"));
    let key = {
        let spec = spec.clone();
        blocking(move || {
            kernel_build::cache_key(&spec)
                .map_err(|e| Error::internal(format!("cannot compute the kernel cache key: {e}")))
        })
        .await?
    };
    let _turn = d
        .turns
        .wait(&key, op.token(), || op.stage(&format!("{prefix}waiting")))
        .await?;
    let built = {
        let (op, prefix, source_dir) = (op.clone(), prefix.to_owned(), job.source_dir);
        blocking(move || {
            let flag = op.cancel_flag();
            let mut report = StageReporter::new(&op, &prefix);
            let r = kernel_build::build(&spec, &cache, &flag, &mut |s, done, total| {
                report.report(s, done, total)
            });
            drop(source_dir);
            r.map_err(Error::from)
        })
        .await?
    };
    op.stage(&format!("{prefix}register"));
    let src = File::open(&built.vmlinux)
        .map_err(|e| Error::internal(format!("cannot open {}: {e}", built.vmlinux.display())))?;
    let staged = copy(op, src, scratch.path("vmlinux")).await?;
    op.check()?;
    let actor = Caller {
        uid: job.caller_uid,
        gid: 0,
        pid: 0,
    };
    let mut existing = d.store.kernel_by_name(&job.name)?;
    // Two attempts: a concurrent build may register the same name between
    // our look and our insert (then it is usually the same content).
    for _ in 0..2 {
        if let Some(k) = &existing {
            match decide(
                &actor,
                k.owner_uid,
                k.vmlinux.sha256 == staged.sha256,
                job.replace,
            ) {
                Registration::Reuse => {
                    tracing::info!(kernel = %k.name, "built kernel matches the registered one");
                    return Ok(KernelOutcome {
                        row: k.clone(),
                        cached: built.cached,
                        reused: true,
                        key: built.key,
                    });
                }
                Registration::Conflict(e) => return Err(e.into_error("kernel", &job.name)),
                Registration::Insert => {}
            }
        }
        let id = ids::new_id();
        let placed = Placed::new(d.paths.kernels_dir().join(&id));
        commit(&scratch.path("vmlinux"), &placed.path("vmlinux"))?;
        let row = KernelRow {
            id: id.clone(),
            name: job.name.clone(),
            owner_uid: job.owner_uid,
            format: "elf".into(),
            release: Some(built.release.clone()),
            vmlinux: StoredFile {
                rel_path: format!("kernels/{id}/vmlinux"),
                size: staged.size,
                sha256: staged.sha256.clone(),
            },
            initrd: None,
            created_at: timefmt::now(),
        };
        let inserted = match &existing {
            Some(old) => d.store.replace_kernel(&old.id, &row),
            None => d.store.insert_kernel(&row),
        };
        match inserted {
            Ok(()) => {
                placed.keep();
                if let Some(old) = &existing {
                    crate::staging::remove_dir_blocking(d.paths.kernels_dir().join(&old.id)).await;
                }
                tracing::info!(kernel = %row.name, id = %row.id, cached = built.cached, "kernel built");
                return Ok(KernelOutcome {
                    row,
                    cached: built.cached,
                    reused: false,
                    key: built.key,
                });
            }
            Err(StoreError::AlreadyExists { .. }) if existing.is_none() => {
                // `placed` goes; the file is still in the cache entry.
                drop(placed);
                let again = File::open(&built.vmlinux).map_err(|e| {
                    Error::internal(format!("cannot open {}: {e}", built.vmlinux.display()))
                })?;
                copy(op, again, scratch.path("vmlinux")).await?;
                existing = d.store.kernel_by_name(&job.name)?;
            }
            Err(e) => return Err(Error::from(e)),
        }
    }
    Err(Error::Busy {
        message: format!(
            "kernel {:?} is being registered concurrently; retry",
            job.name
        ),
        state: None,
    })
}

// ---------------------------------------------------------------------------
// Images

/// Which kernel a built image gets.
pub enum KernelChoice {
    /// One that is registered (`--kernel`, or the default one, found).
    Registered(Box<KernelRow>),
    /// The default kernel ([`default_kernel_name`]), built first.
    BuildDefault { jobs: usize },
}

pub struct ImageJob {
    pub owner_uid: u32,
    /// Who asked: `replace` is judged by what they may change.
    pub caller_uid: u32,
    pub name: String,
    pub spec: ImageSpec,
    pub kernel: KernelChoice,
    pub replace: bool,
}

/// The body of an `image.build` operation.
pub async fn image_build_op(
    d: Arc<Registry>,
    op: OpHandle,
    job: ImageJob,
) -> Result<ImageBuildResult, Error> {
    let (kernel, kernel_built) = match job.kernel {
        KernelChoice::Registered(k) => (*k, false),
        KernelChoice::BuildDefault { jobs } => {
            let kjob = KernelJob {
                owner_uid: 0,
                caller_uid: job.caller_uid,
                name: default_kernel_name(),
                source: debian_source(),
                source_dir: None,
                fragment: kernel_build::DEFAULT_FRAGMENT.as_bytes().to_vec(),
                jobs,
                replace: false,
            };
            (build_kernel(&d, &op, kjob, "kernel-").await?.row, true)
        }
    };

    let scratch = Scratch::new(&d.paths, &op.id())?;
    let cache = image_cache(&d);
    op.stage("prepare");
    let key = {
        let spec = job.spec.clone();
        blocking(move || {
            image_build::cache_key(&spec)
                .map_err(|e| Error::internal(format!("cannot compute the image cache key: {e}")))
        })
        .await?
    };
    let _turn = d
        .turns
        .wait(&key, op.token(), || op.stage("waiting"))
        .await?;
    let built = {
        let (op, spec) = (op.clone(), job.spec.clone());
        blocking(move || {
            let flag = op.cancel_flag();
            let mut report = StageReporter::new(&op, "");
            image_build::build(&spec, &cache, &flag, &mut |s, done, total| {
                report.report(s, done, total)
            })
            .map_err(Error::from)
        })
        .await?
    };

    op.stage("register-rootfs");
    let open = |p: &Path| {
        File::open(p).map_err(|e| Error::internal(format!("cannot open {}: {e}", p.display())))
    };
    let rootfs = copy(&op, open(&built.rootfs)?, scratch.path(images::ROOTFS)).await?;
    op.stage("register-work-seed");
    let seed = copy(
        &op,
        open(&built.work_seed)?,
        scratch.path(images::WORK_SEED),
    )
    .await?;
    op.stage("register");
    op.check()?;
    check_shared_kernel(job.owner_uid, &kernel)?;
    let owner = Caller {
        uid: job.owner_uid,
        gid: 0,
        pid: 0,
    };
    let actor = Caller {
        uid: job.caller_uid,
        gid: 0,
        pid: 0,
    };
    // The agent installed by this build has the init mode the overlay root
    // needs (banger_proto::guest).
    let features: Vec<String> = ["ssh", "agent", banger_proto::guest::OVERLAY_FEATURE]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let existing = d.store.image_by_name(&job.name)?;
    let (row, reused) = match existing.as_ref().map(|i| {
        let same = i.rootfs.sha256 == rootfs.sha256
            && i.work_seed.as_ref().map(|s| s.sha256.as_str()) == Some(seed.sha256.as_str())
            && i.kernel_id == kernel.id
            && i.features == features;
        (i, decide(&actor, i.owner_uid, same, job.replace))
    }) {
        Some((i, Registration::Reuse)) => (i.clone(), true),
        Some((_, Registration::Conflict(e))) => return Err(e.into_error("image", &job.name)),
        Some((_, Registration::Insert)) | None => {
            let id = ids::new_id();
            let placed = Placed::new(d.paths.images_dir().join(&id));
            commit(&scratch.path(images::ROOTFS), &placed.path(images::ROOTFS))?;
            commit(
                &scratch.path(images::WORK_SEED),
                &placed.path(images::WORK_SEED),
            )?;
            let stored = |f: &str, s: &banger_core::artifact::stage::Staged| StoredFile {
                rel_path: format!("images/{id}/{f}"),
                size: s.size,
                sha256: s.sha256.clone(),
            };
            let row = ImageRow {
                id: id.clone(),
                name: job.name.clone(),
                owner_uid: job.owner_uid,
                kernel_id: kernel.id.clone(),
                rootfs: stored(images::ROOTFS, &rootfs),
                work_seed: Some(stored(images::WORK_SEED, &seed)),
                created_at: timefmt::now(),
                features,
            };
            let inserted = match &existing {
                Some(old) => d.store.replace_image(&old.id, &row),
                None => d.store.insert_image(&row),
            };
            match inserted {
                Ok(()) => {}
                // A concurrent build (two first `vm create`s) registered it
                // between our look and our insert: the same content is fine.
                Err(StoreError::AlreadyExists { .. }) if existing.is_none() => {
                    return match d.store.image_by_name(&job.name)? {
                        Some(i)
                            if i.rootfs.sha256 == row.rootfs.sha256
                                && owner.can_see_shared(i.owner_uid) =>
                        {
                            let result = ImageBuildResult {
                                image: images::info(&d, &owner, &i)?,
                                cached: built.cached,
                                reused: true,
                                kernel_built,
                                cache_key: built.key,
                            };
                            Ok(result)
                        }
                        _ => Err(Conflict::Differs.into_error("image", &job.name)),
                    };
                }
                Err(e) => return Err(Error::from(e)),
            }
            placed.keep();
            if let Some(old) = &existing {
                crate::staging::remove_dir_blocking(d.paths.images_dir().join(&old.id)).await;
            }
            tracing::info!(image = %row.name, id = %row.id, cached = built.cached, "image built");
            (row, false)
        }
    };
    // The first image is the default: for everyone when it is shared (root's),
    // else for its owner only (a user's image never becomes another user's
    // default).
    let default_uid = row.owner_uid;
    if d.store.default_image_for(default_uid)?.is_none() {
        d.store.set_default_image(default_uid, &row.id)?;
        tracing::info!(image = %row.name, uid = default_uid, "built image made the default");
    }
    let result = ImageBuildResult {
        image: images::info(&d, &actor, &row)?,
        cached: built.cached,
        reused,
        kernel_built,
        cache_key: built.key,
    };
    Ok(result)
}

// ---------------------------------------------------------------------------
// Shared

/// What to do with a built result whose name is taken.
#[derive(Debug, PartialEq)]
pub enum Registration {
    /// Same content, visible to the owner: keep the registered one.
    Reuse,
    /// Register (replacing the existing one).
    Insert,
    Conflict(Conflict),
}

#[derive(Debug, PartialEq)]
pub enum Conflict {
    /// Another user's object, invisible to this owner.
    OtherOwner,
    /// Other content, no `replace`.
    Differs,
    /// `replace` of an object the owner may not change.
    NotYours(u32),
}

impl Conflict {
    fn into_error(self, what: &'static str, name: &str) -> Error {
        match self {
            Conflict::OtherOwner => {
                Error::already_exists(what, name).hint("pass --name to build it under another name")
            }
            Conflict::Differs => Error::ContentDiffers {
                what,
                name: name.to_string(),
            },
            Conflict::NotYours(uid) => Error::denied(format!(
                "{what} {name:?} belongs to uid {uid}; only its owner or root can replace it"
            )),
        }
    }
}

/// Reuse, replace or refuse, for a result asked for by `owner` (the caller,
/// not the result's owner: a user's default build yields a root-owned result
/// but must not replace root's object) whose name is taken by an object owned
/// by `existing_owner`.
pub fn decide(owner: &Caller, existing_owner: u32, same: bool, replace: bool) -> Registration {
    if !owner.can_see_shared(existing_owner) {
        return Registration::Conflict(Conflict::OtherOwner);
    }
    if same {
        return Registration::Reuse;
    }
    if !replace {
        return Registration::Conflict(Conflict::Differs);
    }
    if !owner.can_change(existing_owner) {
        return Registration::Conflict(Conflict::NotYours(existing_owner));
    }
    Registration::Insert
}

/// Maps a library's `progress(stage, done, total)` onto the operation: a new
/// stage (`<prefix><stage>`) whenever the name changes, progress otherwise.
struct StageReporter<'a> {
    op: &'a OpHandle,
    prefix: &'a str,
    last: String,
}

impl<'a> StageReporter<'a> {
    fn new(op: &'a OpHandle, prefix: &'a str) -> Self {
        StageReporter {
            op,
            prefix,
            last: String::new(),
        }
    }

    fn report(&mut self, stage: &str, done: u64, total: u64) {
        if stage != self.last {
            self.op.stage(&format!("{}{stage}", self.prefix));
            self.last = stage.to_owned();
        }
        let unit = if stage == "unpack" { "bytes" } else { "steps" };
        self.op.progress(done, total, unit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use banger_proto::{ErrorKind, RpcError};

    fn caller(uid: u32) -> Caller {
        Caller {
            uid,
            gid: 0,
            pid: 0,
        }
    }

    #[test]
    fn default_names() {
        assert_eq!(default_kernel_name(), "banger-6-1");
        assert_eq!(
            default_image_name("debian-bookworm", Variant::Minimal),
            "debian-bookworm"
        );
        assert_eq!(
            default_image_name("debian-bookworm", Variant::Full),
            "debian-bookworm-full"
        );
        for n in [
            default_kernel_name(),
            default_image_name("debian-bookworm", Variant::Full),
        ] {
            banger_proto::names::validate_name(&n).unwrap();
        }
    }

    #[test]
    fn every_default_name_is_reserved_and_only_root_may_hold_one() {
        assert!(is_reserved(&default_kernel_name()));
        for distro in banger_proto::methods::image::DISTROS {
            for v in [Variant::Minimal, Variant::Full] {
                let n = default_image_name(distro, v);
                assert!(is_reserved(&n), "{n} is a default name but not reserved");
            }
        }
        for n in RESERVED_NAMES {
            banger_proto::names::validate_name(n).unwrap();
            check_reserved("kernel", n, 0).unwrap();
            let e = RpcError::from(check_reserved("kernel", n, 1000).unwrap_err());
            assert!(e.is(ErrorKind::PermissionDenied), "{e:?}");
            assert!(e.message.contains("reserved"), "{}", e.message);
        }
        check_reserved("image", "mine", 1000).unwrap();
    }

    #[test]
    fn replace_is_judged_by_the_caller_and_shared_images_need_roots_kernel() {
        check_replace(&caller(1000), "image", "x", 1000, true).unwrap();
        check_replace(&caller(1000), "image", "x", 0, false).unwrap();
        let e = RpcError::from(check_replace(&caller(1000), "image", "x", 0, true).unwrap_err());
        assert!(e.is(ErrorKind::PermissionDenied), "{e:?}");
        check_replace(&caller(0), "image", "x", 1000, true).unwrap();
        let k = |owner| KernelRow {
            id: "k".into(),
            name: "k".into(),
            owner_uid: owner,
            format: "elf".into(),
            release: None,
            vmlinux: StoredFile {
                rel_path: "kernels/k/vmlinux".into(),
                size: 1,
                sha256: "0".into(),
            },
            initrd: None,
            created_at: "now".into(),
        };
        check_shared_kernel(0, &k(0)).unwrap();
        check_shared_kernel(1000, &k(1000)).unwrap();
        check_shared_kernel(1000, &k(0)).unwrap();
        let e = RpcError::from(check_shared_kernel(0, &k(1000)).unwrap_err());
        assert!(e.is(ErrorKind::PermissionDenied), "{e:?}");
    }

    #[test]
    fn user_jobs_are_clamped_to_the_host() {
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(clamp_jobs(&caller(1000), 100_000), cpus);
        assert_eq!(clamp_jobs(&caller(1000), 0), 1);
        assert_eq!(clamp_jobs(&caller(0), 100_000), 100_000);
    }

    #[test]
    fn shared_only_for_default_inputs_and_name() {
        assert_eq!(owner_of(1000, true, true), 0);
        assert_eq!(owner_of(1000, false, true), 1000);
        assert_eq!(owner_of(1000, true, false), 1000);
        assert_eq!(owner_of(0, false, false), 0);
    }

    #[test]
    fn reuse_replace_or_conflict() {
        let alice = caller(1000);
        // Same content: reuse (own, or a shared root one).
        assert_eq!(decide(&alice, 1000, true, false), Registration::Reuse);
        assert_eq!(decide(&alice, 0, true, false), Registration::Reuse);
        assert_eq!(decide(&alice, 0, true, true), Registration::Reuse);
        // Other content: an error unless replace, and replace only of one's own.
        assert_eq!(
            decide(&alice, 1000, false, false),
            Registration::Conflict(Conflict::Differs)
        );
        assert_eq!(decide(&alice, 1000, false, true), Registration::Insert);
        assert_eq!(
            decide(&alice, 0, false, true),
            Registration::Conflict(Conflict::NotYours(0))
        );
        // Another user's object is invisible: always a conflict.
        assert_eq!(
            decide(&alice, 2000, true, true),
            Registration::Conflict(Conflict::OtherOwner)
        );
        // Root may replace anything.
        assert_eq!(decide(&caller(0), 2000, false, true), Registration::Insert);
        let e = RpcError::from(Conflict::Differs.into_error("kernel", "banger-6-1"));
        assert!(e.is(ErrorKind::AlreadyExists));
        assert!(e.message.contains("--replace"), "{}", e.message);
    }

    #[test]
    fn user_fragments_cannot_name_host_files() {
        let ok = b"CONFIG_PVH=y\n# CONFIG_MODULES is not set\nCONFIG_NR_CPUS=8\nCONFIG_LOCALVERSION=\"-me\"\n";
        check_fragment(ok, false).unwrap();
        let bad = b"CONFIG_PVH=y\nCONFIG_INITRAMFS_SOURCE=\"/etc/shadow\"\n";
        let e = RpcError::from(check_fragment(bad, false).unwrap_err());
        assert!(e.is(ErrorKind::PermissionDenied));
        assert!(
            e.message.contains("CONFIG_INITRAMFS_SOURCE"),
            "{}",
            e.message
        );
        check_fragment(bad, true).unwrap();
        assert!(
            RpcError::from(check_fragment(b"hello\n", true).unwrap_err())
                .is(ErrorKind::InvalidParams)
        );
        assert!(
            RpcError::from(check_fragment(&[0xff, 0xfe], true).unwrap_err())
                .is(ErrorKind::InvalidParams)
        );
        // Allowed string options hold a safe character set only (they land
        // in a Makefile include).
        check_fragment(
            b"CONFIG_CMDLINE=\"console=ttyS0 root=/dev/vda rw quiet\"\n",
            false,
        )
        .unwrap();
        for bad in [
            &b"CONFIG_LOCALVERSION=\"$(shell id)\"\n"[..],
            b"CONFIG_LOCALVERSION=\"`id`\"\n",
            b"CONFIG_CMDLINE=\"a\\\" b\"\n",
            b"CONFIG_DEFAULT_HOSTNAME=\"x;rm\"\n",
            b"CONFIG_LOCALVERSION=\"a#b\"\n",
            b"CONFIG_NR_CPUS=8 $(shell id)\n",
        ] {
            let e = RpcError::from(check_fragment(bad, false).unwrap_err());
            assert!(e.is(ErrorKind::PermissionDenied), "{e:?}");
            assert!(e.message.contains("Makefile"), "{}", e.message);
            check_fragment(bad, true).unwrap();
        }
        // banger's own fragment passes as a user's.
        check_fragment(kernel_build::DEFAULT_FRAGMENT.as_bytes(), false).unwrap();
    }

    #[tokio::test]
    async fn fragments_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.config");
        std::fs::write(&p, vec![b'#'; MAX_FRAGMENT as usize + 1]).unwrap();
        let e = RpcError::from(read_fragment(File::open(&p).unwrap()).await.unwrap_err());
        assert!(e.message.contains("larger than"), "{}", e.message);
        std::fs::write(&p, b"CONFIG_A=y\n").unwrap();
        assert_eq!(
            read_fragment(File::open(&p).unwrap()).await.unwrap(),
            b"CONFIG_A=y\n"
        );
        let e = RpcError::from(
            read_fragment(File::open(dir.path()).unwrap())
                .await
                .unwrap_err(),
        );
        assert!(e.is(ErrorKind::InvalidParams), "{e:?}");
    }
}
