//! Applying OCI layers to a directory, safely, as root.
//!
//! Layers are applied oldest to newest into `root`, which the caller made
//! (empty). Each layer is read twice from its cached blob: the first pass
//! applies its whiteouts (`.wh.NAME` removes NAME, `.wh..wh..opq` empties its
//! directory), which by the OCI spec only hide lower layers' files, so an
//! opaque marker that comes after its siblings in the tar cannot remove them;
//! the second pass adds its entries.
//!
//! Every path is resolved with `openat2(RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`
//! from a descriptor of `root`: a symlink (absolute or `../..`) met on the way
//! resolves inside the tree, exactly as it would in the guest, and never
//! reaches the host. The last component is never followed (`O_NOFOLLOW`,
//! `O_EXCL`, `AT_SYMLINK_NOFOLLOW`), and whatever is there is removed first,
//! without following anything. `tar`'s own `unpack_in` is not used.
//!
//! Refused, each with an error naming the layer and the entry: a path or
//! hardlink target with a `..` component or an absolute path (real layers
//! never have them), a `.wh.` component that is not the last, a whiteout of
//! `.`, `..` or nothing, any `.wh..wh.` name but the opaque marker, a
//! hardlink to a directory, an entry type tar does not define, and content
//! past the size bound (a "decompression bomb" stops as soon as it passes it:
//! each entry counts as its data rounded up to 4 KiB, at least 4 KiB).
//!
//! Character and block devices are skipped (and counted): the guest's `/dev`
//! is the kernel's devtmpfs, and a device node in an image is at best
//! useless. FIFOs are made.
//!
//! Kept: symlink targets verbatim, hardlinks (also to files of lower layers),
//! owners, modes with setuid/setgid/sticky (set after the owner, which would
//! clear them), xattrs as raw bytes (PAX `SCHILY.xattr.*`, set after the
//! owner, which clears `security.capability`), mtimes; directories' owners,
//! modes, xattrs and times are applied last, deepest first, so writing their
//! content does not undo them.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags, Timespec, Timestamps, XattrFlags};
use rustix::io::Errno;

/// What one entry counts for, at least (and the rounding of its data).
pub const BLOCK: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// A layer entry that is refused (see the module doc).
    #[error("layer {layer}: entry {path:?}: {reason}")]
    Refused {
        layer: usize,
        path: String,
        reason: String,
    },
    /// The unpacked content passed the bound.
    #[error(
        "the image unpacks to more than {limit} bytes (stopped in layer {layer}); a larger --size \
         allows more"
    )]
    TooBig { layer: usize, limit: u64 },
    #[error("layer {layer}: {context}: {source}")]
    Io {
        layer: usize,
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("unpack cancelled")]
    Cancelled,
}

/// What the unpack did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Bytes counted against the bound.
    pub bytes: u64,
    pub entries: u64,
    pub whiteouts: u64,
    /// Device nodes skipped.
    pub devices_skipped: u64,
    /// xattrs the scratch filesystem does not support (skipped).
    pub xattrs_skipped: u64,
}

/// Applies `layers` (blob files, oldest first; gzip, zstd or plain tar,
/// told apart by their first bytes) to the empty directory `root`, counting
/// at most `max_bytes`. `progress(layer index)` is called as each starts.
pub fn unpack_layers(
    root: &Path,
    layers: &[PathBuf],
    max_bytes: u64,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(usize),
) -> Result<Report, UnpackError> {
    let root_fd = rustix::fs::open(
        root,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| UnpackError::Io {
        layer: 0,
        context: format!("cannot open {}", root.display()),
        source: e.into(),
    })?;
    let mut u = Unpacker {
        root: root_fd,
        max_bytes,
        report: Report::default(),
        dirs: Vec::new(),
        dir_index: HashMap::new(),
        cancel,
        layer: 0,
    };
    for (i, blob) in layers.iter().enumerate() {
        u.layer = i + 1;
        progress(i);
        u.pass(blob, true)?;
        u.pass(blob, false)?;
    }
    u.apply_dirs()?;
    Ok(u.report)
}

struct DirMeta {
    path: PathBuf,
    meta: Meta,
}

#[derive(Clone)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct Unpacker<'a> {
    root: OwnedFd,
    max_bytes: u64,
    report: Report,
    dirs: Vec<DirMeta>,
    dir_index: HashMap<PathBuf, usize>,
    cancel: &'a AtomicBool,
    layer: usize,
}

/// The layer's decompressed tar stream.
fn open_layer(blob: &Path) -> io::Result<Box<dyn Read>> {
    let mut f = BufReader::with_capacity(256 << 10, File::open(blob)?);
    let head = {
        use std::io::BufRead;
        f.fill_buf()?
            .get(..4)
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    };
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(f))
    } else if head == [0x28, 0xb5, 0x2f, 0xfd] {
        Box::new(zstd::stream::read::Decoder::with_buffer(f)?)
    } else {
        Box::new(f)
    })
}

/// An archive path made relative, or why it is refused. `None`: the root.
fn relative(raw: &Path) -> Result<Option<PathBuf>, String> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err("absolute path: refused".into())
            }
            Component::ParentDir => return Err("path with a `..` component: refused".into()),
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

fn errno_io(e: Errno) -> io::Error {
    e.into()
}

impl Unpacker<'_> {
    fn refused(&self, path: &Path, reason: impl Into<String>) -> UnpackError {
        UnpackError::Refused {
            layer: self.layer,
            path: path.display().to_string(),
            reason: reason.into(),
        }
    }

    fn io(&self, context: impl Into<String>) -> impl FnOnce(io::Error) -> UnpackError {
        let (layer, context) = (self.layer, context.into());
        move |source| UnpackError::Io {
            layer,
            context,
            source,
        }
    }

    fn check_cancel(&self) -> Result<(), UnpackError> {
        if self.cancel.load(Ordering::Relaxed) {
            Err(UnpackError::Cancelled)
        } else {
            Ok(())
        }
    }

    fn charge(&mut self, bytes: u64) -> Result<(), UnpackError> {
        self.report.bytes += bytes.div_ceil(BLOCK).max(1) * BLOCK;
        if self.report.bytes > self.max_bytes {
            return Err(UnpackError::TooBig {
                layer: self.layer,
                limit: self.max_bytes,
            });
        }
        Ok(())
    }

    /// `rel` resolved inside the root (`O_PATH`-free: a real descriptor).
    fn resolve(&self, rel: &Path, flags: OFlags) -> rustix::io::Result<OwnedFd> {
        let rel: &Path = if rel.as_os_str().is_empty() {
            Path::new(".")
        } else {
            rel
        };
        rustix::fs::openat2(
            &self.root,
            rel,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// The directory `rel` (resolved in the root), created 0755 component by
    /// component when `create`; `None` when missing and not `create`.
    fn dir(&self, rel: &Path, create: bool) -> Result<Option<OwnedFd>, UnpackError> {
        let flags = OFlags::DIRECTORY | OFlags::RDONLY;
        match self.resolve(rel, flags) {
            Ok(fd) => return Ok(Some(fd)),
            Err(Errno::NOENT) if !create => return Ok(None),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(self.refused(rel, format!("its directory cannot be opened: {e}"))),
        }
        let mut cur = self
            .resolve(Path::new(""), flags)
            .map_err(errno_io)
            .map_err(self.io("cannot open the unpack root"))?;
        let mut prefix = PathBuf::new();
        for c in rel.components() {
            prefix.push(c);
            cur = match self.resolve(&prefix, flags) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => {
                    match rustix::fs::mkdirat(&cur, c.as_os_str(), Mode::from_raw_mode(0o755)) {
                        Ok(()) => {}
                        // There, but resolving to nothing: a dangling symlink.
                        Err(Errno::EXIST) => {
                            return Err(self.refused(
                                rel,
                                format!(
                                    "{} is a symlink to nothing in the image: refused",
                                    prefix.display()
                                ),
                            ))
                        }
                        Err(e) => {
                            return Err(self.io(format!("cannot create {}", prefix.display()))(
                                e.into(),
                            ))
                        }
                    }
                    self.resolve(&prefix, flags)
                        .map_err(errno_io)
                        .map_err(self.io(format!("cannot open {}", prefix.display())))?
                }
                Err(e) => {
                    return Err(self.refused(
                        rel,
                        format!("{} is not a directory ({e})", prefix.display()),
                    ))
                }
            };
        }
        Ok(Some(cur))
    }

    fn pass(&mut self, blob: &Path, whiteouts: bool) -> Result<(), UnpackError> {
        let reader =
            open_layer(blob).map_err(self.io(format!("cannot open {}", blob.display())))?;
        let mut archive = tar::Archive::new(reader);
        let entries = archive
            .entries()
            .map_err(self.io("cannot read the layer's tar stream"))?;
        for entry in entries {
            self.check_cancel()?;
            let entry = entry.map_err(self.io("cannot read the layer's tar stream"))?;
            self.entry(entry, whiteouts)?;
        }
        Ok(())
    }

    fn entry<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
        whiteouts: bool,
    ) -> Result<(), UnpackError> {
        let raw = entry
            .path()
            .map_err(self.io("an entry's path cannot be read"))?
            .into_owned();
        let rel = match relative(&raw) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()), // the root itself: banger sets its owner and mode
            Err(why) => return Err(self.refused(&raw, why)),
        };
        let name = rel.file_name().expect("a normal last component").to_owned();
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        if parent
            .components()
            .any(|c| c.as_os_str().as_bytes().starts_with(b".wh."))
        {
            return Err(self.refused(&raw, "a whiteout name as a directory: refused"));
        }
        if let Some(target) = name.as_bytes().strip_prefix(b".wh.") {
            if !whiteouts {
                return Ok(());
            }
            return self.whiteout(&raw, &parent, target);
        }
        if whiteouts {
            return Ok(());
        }
        let header = entry.header();
        let kind = header.entry_type();
        let meta = Meta {
            mode: header.mode().map_err(self.io("bad mode"))? & 0o7777,
            uid: header.uid().map_err(self.io("bad uid"))? as u32,
            gid: header.gid().map_err(self.io("bad gid"))? as u32,
            mtime: header.mtime().unwrap_or(0),
            xattrs: xattrs(&mut entry).map_err(self.io("bad PAX header"))?,
        };
        self.report.entries += 1;
        use tar::EntryType as T;
        match kind {
            T::Char | T::Block => {
                self.report.devices_skipped += 1;
                tracing::debug!(path = %rel.display(), "device node skipped");
                return Ok(());
            }
            T::Regular | T::Continuous | T::GNUSparse => {
                self.charge(entry.size())?;
            }
            T::Directory | T::Symlink | T::Link | T::Fifo => self.charge(0)?,
            other => {
                return Err(self.refused(&raw, format!("unsupported tar entry type {other:?}")))
            }
        }
        let pfd = self.dir(&parent, true)?.expect("created");
        let existing = match rustix::fs::statat(&pfd, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Some(FileType::from_raw_mode(st.st_mode)),
            Err(Errno::NOENT) => None,
            Err(e) => return Err(self.io(format!("cannot stat {}", rel.display()))(e.into())),
        };
        if kind == T::Directory {
            if existing != Some(FileType::Directory) {
                if existing.is_some() {
                    self.remove_at(&pfd, &name, &rel)?;
                }
                rustix::fs::mkdirat(&pfd, name.as_os_str(), Mode::from_raw_mode(0o700))
                    .map_err(errno_io)
                    .map_err(self.io(format!("cannot create {}", rel.display())))?;
            }
            match self.dir_index.get(&rel) {
                Some(&i) => self.dirs[i].meta = meta,
                None => {
                    self.dir_index.insert(rel.clone(), self.dirs.len());
                    self.dirs.push(DirMeta { path: rel, meta });
                }
            }
            return Ok(());
        }
        if kind == T::Link {
            let target_raw = entry
                .link_name()
                .map_err(self.io("a hardlink's target cannot be read"))?
                .ok_or_else(|| self.refused(&raw, "hardlink without a target"))?
                .into_owned();
            let target = match relative(&target_raw) {
                Ok(Some(t)) => t,
                Ok(None) => return Err(self.refused(&raw, "hardlink to the root: refused")),
                Err(why) => return Err(self.refused(&raw, format!("hardlink target: {why}"))),
            };
            if target == rel {
                return Ok(());
            }
            let tfd = self
                .resolve(&target, OFlags::PATH | OFlags::NOFOLLOW)
                .map_err(|e| {
                    self.refused(
                        &raw,
                        format!("hardlink target {} not in the image: {e}", target.display()),
                    )
                })?;
            let st = rustix::fs::fstat(&tfd)
                .map_err(errno_io)
                .map_err(self.io("cannot stat a hardlink target"))?;
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                return Err(self.refused(&raw, "hardlink to a directory: refused"));
            }
            if existing.is_some() {
                self.remove_at(&pfd, &name, &rel)?;
            }
            rustix::fs::linkat(&tfd, "", &pfd, name.as_os_str(), AtFlags::EMPTY_PATH)
                .map_err(errno_io)
                .map_err(self.io(format!("cannot link {}", rel.display())))?;
            return Ok(());
        }
        if existing.is_some() {
            self.remove_at(&pfd, &name, &rel)?;
        }
        match kind {
            T::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.refused(&raw, "symlink without a target"))?
                    .into_owned();
                rustix::fs::symlinkat(OsStr::from_bytes(&target), &pfd, name.as_os_str())
                    .map_err(errno_io)
                    .map_err(self.io(format!("cannot create symlink {}", rel.display())))?;
                self.chown_at(&pfd, &name, &meta, &rel)?;
                let ts = times(meta.mtime);
                // Best effort: a symlink's time matters to nobody.
                let _ =
                    rustix::fs::utimensat(&pfd, name.as_os_str(), &ts, AtFlags::SYMLINK_NOFOLLOW);
            }
            T::Fifo => {
                rustix::fs::mknodat(
                    &pfd,
                    name.as_os_str(),
                    FileType::Fifo,
                    Mode::from_raw_mode(0o600),
                    0,
                )
                .map_err(errno_io)
                .map_err(self.io(format!("cannot create fifo {}", rel.display())))?;
                // Through the name in the directory descriptor: nothing else
                // writes the tree, and the fifo was just made there.
                self.chown_at(&pfd, &name, &meta, &rel)?;
                rustix::fs::chmodat(
                    &pfd,
                    name.as_os_str(),
                    Mode::from_raw_mode(meta.mode),
                    AtFlags::empty(),
                )
                .map_err(errno_io)
                .map_err(self.io(format!("cannot chmod {}", rel.display())))?;
            }
            _ => {
                let fd = rustix::fs::openat(
                    &pfd,
                    name.as_os_str(),
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                )
                .map_err(errno_io)
                .map_err(self.io(format!("cannot create {}", rel.display())))?;
                let mut file = File::from(fd);
                self.copy_data(&mut entry, &mut file, &rel)?;
                self.apply_meta(file.as_fd(), &meta, &rel)?;
            }
        }
        Ok(())
    }

    fn copy_data<R: Read>(
        &self,
        from: &mut R,
        to: &mut File,
        rel: &Path,
    ) -> Result<(), UnpackError> {
        use std::io::Write;
        let mut buf = vec![0u8; 128 << 10];
        loop {
            let n = from
                .read(&mut buf)
                .map_err(self.io(format!("cannot read {} from the layer", rel.display())))?;
            if n == 0 {
                return Ok(());
            }
            to.write_all(&buf[..n])
                .map_err(self.io(format!("cannot write {}", rel.display())))?;
            self.check_cancel()?;
        }
    }

    fn chown_at(
        &self,
        dir: &OwnedFd,
        name: &OsStr,
        meta: &Meta,
        rel: &Path,
    ) -> Result<(), UnpackError> {
        // SAFETY: from_raw is unsafe only because -1 means "unchanged";
        // tar's ids are at most 2^32-1 and -1 would only leave it as is.
        let (uid, gid) = unsafe {
            (
                rustix::fs::Uid::from_raw(meta.uid),
                rustix::fs::Gid::from_raw(meta.gid),
            )
        };
        rustix::fs::chownat(dir, name, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(errno_io)
            .map_err(self.io(format!("cannot chown {}", rel.display())))
    }

    /// Owner, then mode (the owner change clears setuid), then xattrs (it
    /// clears `security.capability`), then the time.
    fn apply_meta(
        &mut self,
        fd: std::os::fd::BorrowedFd<'_>,
        meta: &Meta,
        rel: &Path,
    ) -> Result<(), UnpackError> {
        std::os::unix::fs::fchown(fd, Some(meta.uid), Some(meta.gid))
            .map_err(self.io(format!("cannot chown {}", rel.display())))?;
        rustix::fs::fchmod(fd, Mode::from_raw_mode(meta.mode))
            .map_err(errno_io)
            .map_err(self.io(format!("cannot chmod {}", rel.display())))?;
        for (k, v) in &meta.xattrs {
            match rustix::fs::fsetxattr(fd, OsStr::from_bytes(k), v, XattrFlags::empty()) {
                Ok(()) => {}
                Err(Errno::OPNOTSUPP) => self.report.xattrs_skipped += 1,
                Err(e) => {
                    return Err(self.io(format!(
                        "cannot set xattr {} on {}",
                        String::from_utf8_lossy(k),
                        rel.display()
                    ))(e.into()))
                }
            }
        }
        rustix::fs::futimens(fd, &times(meta.mtime))
            .map_err(errno_io)
            .map_err(self.io(format!("cannot set the time of {}", rel.display())))
    }

    fn whiteout(&mut self, raw: &Path, parent: &Path, target: &[u8]) -> Result<(), UnpackError> {
        self.report.whiteouts += 1;
        let opaque = target == b".wh..opq";
        if !opaque {
            if target.starts_with(b".wh.") {
                return Err(self.refused(raw, "unknown `.wh..wh.` name: refused"));
            }
            if target.is_empty() || target == b"." || target == b".." {
                return Err(self.refused(raw, "whiteout of `.`, `..` or nothing: refused"));
            }
        }
        let Some(pfd) = self.dir(parent, false)? else {
            return Ok(());
        };
        if opaque {
            self.empty_dir(&pfd, parent)
        } else {
            let name = OsStr::from_bytes(target);
            self.remove_at(&pfd, name, &parent.join(name))
        }
    }

    /// Removes `name` in `dir` (a tree, without following anything).
    fn remove_at(&self, dir: &OwnedFd, name: &OsStr, rel: &Path) -> Result<(), UnpackError> {
        match rustix::fs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => return Ok(()),
            Err(Errno::ISDIR) => {}
            Err(e) => {
                return Err(self.io(format!("cannot remove {}", rel.display()))(
                    e.into(),
                ))
            }
        }
        let sub = rustix::fs::openat(
            dir,
            name,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno_io)
        .map_err(self.io(format!("cannot open {}", rel.display())))?;
        self.empty_dir(&sub, rel)?;
        rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)
            .map_err(errno_io)
            .map_err(self.io(format!("cannot remove {}", rel.display())))
    }

    fn empty_dir(&self, dir: &OwnedFd, rel: &Path) -> Result<(), UnpackError> {
        let names: Vec<Vec<u8>> = rustix::fs::Dir::read_from(dir)
            .map_err(errno_io)
            .map_err(self.io(format!("cannot read {}", rel.display())))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_bytes().to_vec())
            .filter(|n| n != b"." && n != b"..")
            .collect();
        for n in names {
            let n = OsStr::from_bytes(&n);
            self.remove_at(dir, n, &rel.join(n))?;
        }
        Ok(())
    }

    /// Directories' metadata, deepest first; one replaced since by a
    /// non-directory or removed is skipped.
    fn apply_dirs(&mut self) -> Result<(), UnpackError> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.path.components().count()));
        for d in &dirs {
            self.check_cancel()?;
            let fd = match self.resolve(
                &d.path,
                OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW,
            ) {
                Ok(fd) => fd,
                Err(_) => continue,
            };
            self.apply_meta(fd.as_fd(), &d.meta, &d.path)?;
        }
        Ok(())
    }
}

fn times(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime.min(i64::MAX as u64) as i64,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// The entry's xattrs from its PAX header (`SCHILY.xattr.NAME`), raw.
fn xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    if let Some(exts) = entry.pax_extensions()? {
        for ext in exts {
            let ext = ext?;
            if let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                out.push((name.to_vec(), ext.value_bytes().to_vec()));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
