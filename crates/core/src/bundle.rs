//! Bundles: an image or a kernel as one `.tar.zst` file to share, made by
//! `banger image bundle` / `banger kernel bundle` and imported by `banger
//! image pull FILE.tar.zst` / `banger kernel pull FILE.tar.zst`.
//!
//! The format: a zstd-compressed tar whose first member is `manifest.json`
//! ([`Manifest`]: name, kind, arch, the sha256 and size of each file, the
//! kernel an image wants, its features, banger's version), then each file
//! the manifest lists, in its order, as a plain member at the top level.
//!
//! A bundle is untrusted input. [`read`] accepts exactly that shape and
//! nothing else: the manifest first and bounded in size; file names from a
//! short fixed list (so a name like `../../etc/passwd` is refused before it
//! is used); only regular-file members; each file's length and sha256
//! checked while it streams to disk, in a directory the caller chose, with
//! names the reader makes itself; no member twice, none missing, nothing
//! after the last. On any error the files written so far are removed.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The format's name and version, in every manifest.
pub const FORMAT: &str = "banger-bundle/1";
/// The manifest's member name.
pub const MANIFEST: &str = "manifest.json";
/// Largest manifest accepted.
const MANIFEST_MAX: u64 = 1 << 20;

/// What a bundle carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Image,
    Kernel,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Image => "image",
            Kind::Kernel => "kernel",
        }
    }

    /// The file names a bundle of this kind may hold; anything else is refused.
    pub fn allowed_files(self) -> &'static [&'static str] {
        match self {
            Kind::Image => &["rootfs.ext4", "work-seed.ext4"],
            Kind::Kernel => &["vmlinux", "initrd"],
        }
    }

    /// The file a bundle of this kind must hold.
    pub fn required_file(self) -> &'static str {
        match self {
            Kind::Image => "rootfs.ext4",
            Kind::Kernel => "vmlinux",
        }
    }
}

/// One file of a bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleFile {
    pub name: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// The kernel an image bundle was made with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelRef {
    pub name: String,
    /// The kernel image's sha256 (lowercase hex).
    pub sha256: String,
}

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// [`FORMAT`].
    pub format: String,
    pub kind: Kind,
    /// The object's name where it was bundled (the default name on import).
    pub name: String,
    /// `x86_64`.
    pub arch: String,
    pub files: Vec<BundleFile>,
    /// Images: the kernel they were registered with.
    #[serde(default)]
    pub kernel: Option<KernelRef>,
    /// Images: `ssh`, `agent`, ...
    #[serde(default)]
    pub features: Vec<String>,
    /// The banger that made it.
    pub banger_version: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bundle is not one banger accepts; nothing was kept.
    #[error("not a valid banger bundle: {0}")]
    Invalid(String),
    /// A file's content does not match the manifest.
    #[error("{name} in the bundle is corrupt: {what}")]
    Corrupt { name: String, what: String },
    #[error("bundle cancelled")]
    Cancelled,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

fn io_ctx(context: impl Into<String>) -> impl FnOnce(io::Error) -> BundleError {
    let context = context.into();
    move |source| BundleError::Io { context, source }
}

fn invalid(msg: impl Into<String>) -> BundleError {
    BundleError::Invalid(msg.into())
}

impl Manifest {
    /// Checks what [`read`] relies on: the format, a known kind, file names
    /// from the kind's list (each once, the required one present), hex
    /// digests, an x86_64 arch.
    pub fn check(&self) -> Result<(), BundleError> {
        if self.format != FORMAT {
            return Err(invalid(format!(
                "format {:?} (this banger reads {FORMAT})",
                self.format
            )));
        }
        if self.arch != "x86_64" {
            return Err(invalid(format!(
                "arch {:?}: this host runs x86_64 guests",
                self.arch
            )));
        }
        let allowed = self.kind.allowed_files();
        let mut seen: Vec<&str> = Vec::new();
        for f in &self.files {
            if !allowed.contains(&f.name.as_str()) {
                return Err(invalid(format!(
                    "file {:?} is not one a {} bundle holds ({})",
                    f.name,
                    self.kind.as_str(),
                    allowed.join(", ")
                )));
            }
            if seen.contains(&f.name.as_str()) {
                return Err(invalid(format!("file {:?} is listed twice", f.name)));
            }
            seen.push(&f.name);
            if f.sha256.len() != 64
                || !f
                    .sha256
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            {
                return Err(invalid(format!("file {:?} has no valid sha256", f.name)));
            }
        }
        if !seen.contains(&self.kind.required_file()) {
            return Err(invalid(format!(
                "a {} bundle needs {}",
                self.kind.as_str(),
                self.kind.required_file()
            )));
        }
        Ok(())
    }
}

/// The sha256 and size of a file, for a manifest.
pub fn describe(name: &str, path: &Path) -> Result<BundleFile, BundleError> {
    let mut f = File::open(path).map_err(io_ctx(format!("cannot open {}", path.display())))?;
    let mut h = Sha256::new();
    let size = io::copy(&mut f, &mut HashWriter(&mut h))
        .map_err(io_ctx(format!("cannot read {}", path.display())))?;
    Ok(BundleFile {
        name: name.into(),
        size,
        sha256: hex::encode(h.finalize()),
    })
}

struct HashWriter<'a>(&'a mut Sha256);

impl Write for HashWriter<'_> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.update(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes the bundle of `manifest` to `out`: the manifest, then each file
/// of `manifest.files` from `paths` (same order). The files' content is
/// checked against the manifest while it is written (a file that changed
/// since [`describe`] fails the bundle). `progress(bytes)` counts input
/// bytes; `cancel` is checked between chunks.
pub fn write(
    out: impl Write,
    manifest: &Manifest,
    paths: &[PathBuf],
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Result<(), BundleError> {
    manifest.check()?;
    if paths.len() != manifest.files.len() {
        return Err(invalid("one path per manifest file"));
    }
    let mut zst = zstd::Encoder::new(out, 3).map_err(io_ctx("zstd"))?;
    {
        let mut tar = tar::Builder::new(&mut zst);
        let json = serde_json::to_vec_pretty(manifest).expect("a manifest serialises");
        let mut header = member_header(json.len() as u64);
        tar.append_data(&mut header, MANIFEST, json.as_slice())
            .map_err(io_ctx("cannot write the manifest"))?;
        let mut done = 0u64;
        for (f, path) in manifest.files.iter().zip(paths) {
            let file =
                File::open(path).map_err(io_ctx(format!("cannot open {}", path.display())))?;
            let mut reader = Checked::new(file, done, cancel, &mut *progress);
            let mut header = member_header(f.size);
            tar.append_data(&mut header, &f.name, (&mut reader).take(f.size))
                .map_err(|e| {
                    if cancel.load(Ordering::Relaxed) {
                        BundleError::Cancelled
                    } else {
                        BundleError::Io {
                            context: format!("cannot write {} into the bundle", f.name),
                            source: e,
                        }
                    }
                })?;
            let (read, sha) = (reader.read, hex::encode(reader.hasher.finalize()));
            if read != f.size || sha != f.sha256 {
                return Err(BundleError::Corrupt {
                    name: f.name.clone(),
                    what: "it changed while the bundle was written".into(),
                });
            }
            done += read;
        }
        tar.finish().map_err(io_ctx("cannot finish the bundle"))?;
    }
    zst.finish()
        .and_then(|mut w| w.flush())
        .map_err(io_ctx("cannot finish the bundle"))?;
    Ok(())
}

fn member_header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o600);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h
}

/// A reader that hashes and counts what passes, reports progress (bytes of
/// all files so far: `before` + its own) and stops when cancelled.
struct Checked<'a, R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    before: u64,
    cancel: &'a AtomicBool,
    progress: &'a mut dyn FnMut(u64),
}

impl<'a, R> Checked<'a, R> {
    fn new(
        inner: R,
        before: u64,
        cancel: &'a AtomicBool,
        progress: &'a mut dyn FnMut(u64),
    ) -> Self {
        Checked {
            inner,
            hasher: Sha256::new(),
            read: 0,
            before,
            cancel,
            progress,
        }
    }
}

impl<R: Read> Read for Checked<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
        }
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        (self.progress)(self.before + self.read);
        Ok(n)
    }
}

/// A bundle read into a directory: the manifest and where each file is.
#[derive(Debug)]
pub struct Unpacked {
    pub manifest: Manifest,
    /// `(name, path)` in the manifest's order.
    pub files: Vec<(String, PathBuf)>,
}

/// Reads a bundle from `input` into `dir` (an empty directory the caller
/// owns), checking everything the module doc lists. `progress(bytes)`
/// counts file bytes written. On error, the files written so far are
/// removed.
pub fn read(
    input: impl Read,
    dir: &Path,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Result<Unpacked, BundleError> {
    let mut written: Vec<PathBuf> = Vec::new();
    let r = read_inner(input, dir, cancel, progress, &mut written);
    if r.is_err() {
        for p in &written {
            let _ = fs::remove_file(p);
        }
    }
    r
}

fn read_inner(
    input: impl Read,
    dir: &Path,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(u64),
    written: &mut Vec<PathBuf>,
) -> Result<Unpacked, BundleError> {
    let zst = zstd::Decoder::new(input).map_err(io_ctx("zstd"))?;
    let mut archive = tar::Archive::new(zst);
    let mut entries = archive
        .entries()
        .map_err(|e| invalid(format!("not a tar stream: {e}")))?;
    let bad_tar = |e: io::Error| invalid(format!("broken tar stream: {e}"));

    let mut first = entries
        .next()
        .ok_or_else(|| invalid("empty bundle"))?
        .map_err(bad_tar)?;
    let name = member_name(&first)?;
    if name != MANIFEST || first.header().entry_type() != tar::EntryType::Regular {
        return Err(invalid(format!(
            "the first member is {name:?}, not the manifest"
        )));
    }
    if first.size() > MANIFEST_MAX {
        return Err(invalid("the manifest is too large"));
    }
    let mut json = Vec::new();
    (&mut first)
        .take(MANIFEST_MAX)
        .read_to_end(&mut json)
        .map_err(bad_tar)?;
    let manifest: Manifest =
        serde_json::from_slice(&json).map_err(|e| invalid(format!("manifest.json: {e}")))?;
    manifest.check()?;

    let mut files = Vec::new();
    let mut done = 0u64;
    for want in &manifest.files {
        let mut entry = entries
            .next()
            .ok_or_else(|| invalid(format!("{} is missing", want.name)))?
            .map_err(bad_tar)?;
        let name = member_name(&entry)?;
        if name != want.name {
            return Err(invalid(format!(
                "member {name:?} where the manifest lists {:?}",
                want.name
            )));
        }
        if entry.header().entry_type() != tar::EntryType::Regular {
            return Err(invalid(format!("{name} is not a regular file")));
        }
        if entry.size() != want.size {
            return Err(BundleError::Corrupt {
                name,
                what: format!(
                    "{} bytes where the manifest says {}",
                    entry.size(),
                    want.size
                ),
            });
        }
        // The name is one of the kind's fixed list (checked above): a plain
        // file name, never a path.
        let path = dir.join(&want.name);
        let out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_ctx(format!("cannot create {}", path.display())))?;
        written.push(path.clone());
        let mut out = BufWriter::new(out);
        let mut reader = Checked::new(&mut entry, done, cancel, &mut *progress);
        let copied = copy_sparse(&mut reader, &mut out).map_err(|e| {
            if cancel.load(Ordering::Relaxed) {
                BundleError::Cancelled
            } else {
                bad_tar(e)
            }
        })?;
        let sha = hex::encode(reader.hasher.finalize());
        if copied != want.size {
            return Err(BundleError::Corrupt {
                name,
                what: format!("{copied} bytes where the manifest says {}", want.size),
            });
        }
        if sha != want.sha256 {
            return Err(BundleError::Corrupt {
                name,
                what: format!("sha256 {sha} where the manifest says {}", want.sha256),
            });
        }
        let out = out.into_inner().map_err(|e| BundleError::Io {
            context: format!("cannot write {}", path.display()),
            source: e.into_error(),
        })?;
        out.set_len(copied)
            .and_then(|_| out.sync_all())
            .map_err(io_ctx(format!("cannot write {}", path.display())))?;
        done += copied;
        files.push((want.name.clone(), path));
    }
    if let Some(extra) = entries.next() {
        let extra = extra.map_err(bad_tar)?;
        return Err(invalid(format!(
            "member {:?} after the manifest's files",
            member_name(&extra)?
        )));
    }
    Ok(Unpacked { manifest, files })
}

/// A member's name as raw text (no normalising: `./x` or `a/../x` are not
/// the names the manifest allows and so are refused).
fn member_name<R: Read>(e: &tar::Entry<R>) -> Result<String, BundleError> {
    let raw = e.path_bytes();
    String::from_utf8(raw.into_owned()).map_err(|_| invalid("a member name is not UTF-8"))
}

/// Copies `r` to `w`, seeking over all-zero 64 KiB blocks instead of writing
/// them, so a sparse ext4 image stays sparse (the caller sets the final
/// length). Returns the bytes read.
fn copy_sparse(r: &mut impl Read, w: &mut BufWriter<File>) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut buf = vec![0u8; 64 << 10];
    let mut total = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = r.read(&mut buf[filled..])?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        if buf[..filled].iter().all(|&b| b == 0) {
            w.seek(SeekFrom::Current(filled as i64))?;
        } else {
            w.write_all(&buf[..filled])?;
        }
        total += filled as u64;
        if filled < buf.len() {
            break;
        }
    }
    w.flush()?;
    Ok(total)
}

#[cfg(test)]
mod tests;
