//! Turning a user-supplied kernel file into the uncompressed ELF `vmlinux`
//! Firecracker boots.
//!
//! Two inputs are accepted:
//!
//! - an ELF `vmlinux` (x86-64, `ET_EXEC`), which is checked and copied as is;
//! - a `bzImage` (what distributions ship as `/boot/vmlinuz-*`), whose setup
//!   header (Linux `Documentation/arch/x86/boot.rst`, boot protocol >= 2.08)
//!   locates the compressed `vmlinux` payload. The payload is decompressed
//!   (gzip, xz, lzma, lz4 legacy frame or zstd) straight into the output file,
//!   and the result must again be an x86-64 ELF.
//!
//! The source is a descriptor handed over by another process, so it is read
//! only with positioned reads (`pread`): its file offset never moves. Input is
//! treated as hostile: every length is checked against the file size, no
//! allocation depends on an unchecked header field, and the decompressed size
//! is capped at [`MAX_VMLINUX_SIZE`].

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

use object::elf;
use object::read::elf::{FileHeader as _, ProgramHeader as _};
use object::read::{ReadCache, ReadRef};

use super::read_full_at;

/// Largest decompressed kernel accepted from a bzImage (a bound against
/// decompression bombs; real `vmlinux` payloads are well under 100 MiB).
pub const MAX_VMLINUX_SIZE: u64 = 1 << 30;

/// `note type` of the Xen ELF note carrying the 32-bit PVH entry point,
/// which Firecracker uses to boot a `vmlinux` in PVH mode.
pub const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// Indexes into `e_ident`.
const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;
const HDRS_MAGIC: &[u8; 4] = b"HdrS";
/// Offsets in the bzImage setup header (boot.rst, "THE REAL-MODE KERNEL HEADER").
const OFF_SETUP_SECTS: usize = 0x1f1;
const OFF_HEADER_MAGIC: usize = 0x202;
const OFF_VERSION: usize = 0x206;
const OFF_KERNEL_VERSION: usize = 0x20e;
const OFF_PAYLOAD_OFFSET: usize = 0x248;
const OFF_PAYLOAD_LENGTH: usize = 0x24c;
/// Bytes of the setup header this module reads (through `payload_length`).
const SETUP_HEADER_END: usize = 0x250;
/// First boot protocol with `payload_offset` / `payload_length`.
const MIN_PROTOCOL: u16 = 0x0208;

/// Magic of the LZ4 legacy frame (`lz4 -l`), as a little-endian u32.
const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
/// Uncompressed size of every block of an LZ4 legacy frame but the last.
const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// `LZ4_compressBound(LZ4_LEGACY_BLOCK)`: no valid block is larger.
const LZ4_LEGACY_MAX_COMPRESSED: usize = LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK / 255 + 16;
/// Memory liblzma may use to decode xz/lzma payloads. Kernel builds use a
/// 32 MiB (xz) or 64 MiB (`lzma -9`) dictionary; a hostile header asking for
/// more fails instead of allocating.
const LZMA_MEMLIMIT: u64 = 256 << 20;

/// Size of the chunks read, written and checked for cancellation.
const CHUNK: usize = 1 << 20;
/// How often (in bytes written) `progress` is called.
const PROGRESS_EVERY: u64 = 4 << 20;

/// Compression of a bzImage payload, as recognised by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    Gzip,
    Xz,
    Lzma,
    Lz4,
    Zstd,
    /// Recognised, but not decompressed: [`KernelImageError::UnsupportedCompression`].
    Bzip2,
    /// Recognised, but not decompressed: [`KernelImageError::UnsupportedCompression`].
    Lzo,
}

impl Compression {
    /// Lower-case name, as in the kernel's `CONFIG_KERNEL_*` options.
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Lzma => "lzma",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
            Compression::Bzip2 => "bzip2",
            Compression::Lzo => "lzo",
        }
    }

    /// Whether [`extract_vmlinux`] can decompress this payload.
    pub fn is_supported(self) -> bool {
        !matches!(self, Compression::Bzip2 | Compression::Lzo)
    }

    /// Recognises a payload from its first bytes.
    fn from_magic(magic: &[u8]) -> Option<Compression> {
        const MAGICS: &[(&[u8], Compression)] = &[
            (b"\x1f\x8b", Compression::Gzip),
            (b"\xfd7zXZ\x00", Compression::Xz),
            (b"\x5d\x00\x00", Compression::Lzma),
            (b"\x02\x21\x4c\x18", Compression::Lz4),
            (b"\x28\xb5\x2f\xfd", Compression::Zstd),
            (b"BZh", Compression::Bzip2),
            (b"\x89LZO", Compression::Lzo),
        ];
        MAGICS
            .iter()
            .find(|(m, _)| magic.starts_with(m))
            .map(|&(_, c)| c)
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What kind of kernel file was supplied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelFormat {
    /// An uncompressed ELF `vmlinux`.
    Elf,
    /// A bzImage whose payload uses the given compression.
    BzImage(Compression),
}

impl KernelFormat {
    /// Short label for logs and the database: `elf`, `bzimage+gzip`, `bzimage+lz4`, ...
    pub fn label(&self) -> String {
        match self {
            KernelFormat::Elf => "elf".to_owned(),
            KernelFormat::BzImage(c) => format!("bzimage+{c}"),
        }
    }
}

/// The facts about an ELF `vmlinux` that matter for booting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfSummary {
    /// `e_machine` (always `EM_X86_64` = 62 once checked).
    pub machine: u16,
    /// `e_entry`.
    pub entry: u64,
    /// Number of `PT_LOAD` program headers (at least one).
    pub load_segments: usize,
    /// Whether a `PT_NOTE` segment carries the Xen PVH entry note
    /// (name "Xen", type [`XEN_ELFNOTE_PHYS32_ENTRY`]).
    pub pvh_note: bool,
}

/// Result of [`extract_vmlinux`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// The format of the source file.
    pub format: KernelFormat,
    /// Kernel release (`uname -r`, e.g. `6.1.0-18-cloud-amd64`), if found.
    pub release: Option<String>,
    /// The written `vmlinux`.
    pub elf: ElfSummary,
    /// Size in bytes of the written `vmlinux`.
    pub size: u64,
}

/// Why a kernel file could not be turned into a `vmlinux`.
#[derive(Debug, thiserror::Error)]
pub enum KernelImageError {
    /// The file starts with neither the ELF magic nor a bzImage setup header.
    #[error("not a kernel image: neither an ELF vmlinux nor a bzImage (no 'HdrS' boot header)")]
    NotAKernel,
    /// The file has a bzImage boot header but ends inside it.
    #[error(
        "bzImage is truncated: its boot header needs {need} bytes but the file has only {size}"
    )]
    TruncatedHeader { need: u64, size: u64 },
    /// The bzImage predates boot protocol 2.08, which added `payload_offset`.
    #[error(
        "bzImage boot protocol {}.{:02} is too old to locate its payload (need >= 2.08)",
        .version >> 8,
        .version & 0xff
    )]
    ProtocolTooOld { version: u16 },
    /// The payload location in the boot header lies (partly) outside the file.
    #[error(
        "bzImage payload ({length} bytes at offset {offset}) does not fit in the {size}-byte \
         file: the image is truncated or corrupt"
    )]
    PayloadOutOfBounds { offset: u64, length: u64, size: u64 },
    /// The payload starts with no known compression magic.
    #[error(
        "unrecognised compression in bzImage payload (first bytes: {magic}); expected gzip, xz, \
         lzma, lz4 or zstd"
    )]
    UnknownCompression { magic: String },
    /// The payload uses a compression banger recognises but does not decompress.
    #[error(
        "unsupported compression {0} in bzImage payload (supported: gzip, xz, lzma, lz4, zstd); \
         supply the uncompressed vmlinux instead"
    )]
    UnsupportedCompression(Compression),
    /// The compressed payload is corrupt or ends early.
    #[error("bzImage {compression} payload is corrupt or truncated: {source}")]
    Decompress {
        compression: Compression,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The payload decompresses to more than [`MAX_VMLINUX_SIZE`] bytes.
    #[error("bzImage payload decompresses to more than {limit} bytes; refusing it as corrupt")]
    OutputTooLarge { limit: u64 },
    /// The file is not an ELF `vmlinux` Firecracker can boot.
    #[error("not a bootable x86-64 ELF vmlinux: {reason}")]
    BadElf { reason: String },
    /// The bzImage payload decompressed fine but is not a bootable ELF.
    #[error("decompressed payload is not an x86-64 ELF: {reason}")]
    PayloadNotElf { reason: String },
    /// Reading the source or writing the output failed.
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: io::Error,
    },
    /// The caller asked to stop.
    #[error("kernel extraction was cancelled")]
    Cancelled,
}

const READING_SOURCE: &str = "reading the kernel image";
const WRITING_OUTPUT: &str = "writing the extracted vmlinux";
const READING_OUTPUT: &str = "reading back the extracted vmlinux";

fn io_err(context: &'static str) -> impl FnOnce(io::Error) -> KernelImageError {
    move |source| KernelImageError::Io { context, source }
}

/// Reads `src` (only with positioned reads), writes the ELF `vmlinux` to
/// `out` (a fresh empty file), calls `progress(bytes_written)` every few MiB
/// and at the end, and checks `cancel` before every MiB written.
pub fn extract_vmlinux(
    src: &File,
    out: &mut File,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(u64),
) -> Result<Extracted, KernelImageError> {
    let size = file_len(src, READING_SOURCE)?;
    let (format, header_release, elf, written) = match probe(src, size)? {
        Probe::Elf => {
            let elf = inspect_elf(src)?;
            let mut sink = Sink::new(out, u64::MAX, cancel, progress);
            copy_range(src, 0, size, &mut sink)?;
            (KernelFormat::Elf, None, elf, sink.finish())
        }
        Probe::BzImage(bz) => {
            let compression = bz.compression()?;
            if !compression.is_supported() {
                return Err(KernelImageError::UnsupportedCompression(compression));
            }
            let mut sink = Sink::new(out, MAX_VMLINUX_SIZE, cancel, progress);
            decompress(src, &bz, compression, &mut sink)?;
            let written = sink.finish();
            let elf = inspect_elf(out).map_err(|e| match e {
                KernelImageError::BadElf { reason } => KernelImageError::PayloadNotElf { reason },
                KernelImageError::Io { source, .. } => io_err(READING_OUTPUT)(source),
                e => e,
            })?;
            let release = header_release(src, size, &bz)?;
            (KernelFormat::BzImage(compression), release, elf, written)
        }
    };
    let release = match header_release {
        Some(r) => Some(r),
        None => find_linux_version(out, written, cancel)?,
    };
    Ok(Extracted {
        format,
        release,
        elf,
        size: written,
    })
}

/// Detects the format from the first bytes (and, for a bzImage, the magic at
/// the start of its payload) without extracting anything.
pub fn detect(src: &File) -> Result<KernelFormat, KernelImageError> {
    let size = file_len(src, READING_SOURCE)?;
    match probe(src, size)? {
        Probe::Elf => Ok(KernelFormat::Elf),
        Probe::BzImage(bz) => Ok(KernelFormat::BzImage(bz.compression()?)),
    }
}

/// Parses and checks an ELF `vmlinux` already on disk: ELF64, little-endian,
/// `EM_X86_64`, `ET_EXEC`, at least one `PT_LOAD`, every `PT_LOAD` inside the
/// file. Reports whether it carries the Xen PVH entry note. Uses positioned
/// reads only, so `f`'s offset is left alone.
pub fn inspect_elf(f: &File) -> Result<ElfSummary, KernelImageError> {
    let len = file_len(f, READING_SOURCE)?;
    let cache = ReadCache::new(PreadOps {
        file: f,
        pos: 0,
        len,
        error: None,
    });
    let summary = summarize_elf(&cache, len);
    if let Some(source) = cache.into_inner().error {
        return Err(io_err(READING_SOURCE)(source));
    }
    summary.map_err(|reason| KernelImageError::BadElf { reason })
}

fn summarize_elf<'a, R: ReadRef<'a>>(data: R, len: u64) -> Result<ElfSummary, String> {
    let head = data
        .read_bytes_at(0, 64)
        .map_err(|()| format!("file is too short ({len} bytes) for an ELF64 header"))?;
    if &head[..4] != ELF_MAGIC {
        return Err("missing ELF magic".to_owned());
    }
    if head[EI_CLASS] != elf::ELFCLASS64 {
        return Err("not a 64-bit (ELFCLASS64) file".to_owned());
    }
    if head[EI_DATA] != elf::ELFDATA2LSB {
        return Err("not little-endian".to_owned());
    }
    let header = elf::FileHeader64::<object::Endianness>::parse(data)
        .map_err(|e| format!("bad ELF header: {e}"))?;
    let endian = header.endian().map_err(|e| e.to_string())?;
    let machine = header.e_machine(endian);
    if machine != elf::EM_X86_64 {
        return Err(format!(
            "e_machine is {machine}, not EM_X86_64 ({})",
            elf::EM_X86_64
        ));
    }
    let e_type = header.e_type(endian);
    if e_type != elf::ET_EXEC {
        return Err(format!(
            "ELF type is {e_type}, not ET_EXEC ({}); a relocatable object or shared library \
             cannot be booted",
            elf::ET_EXEC
        ));
    }
    let phdrs = header
        .program_headers(endian, data)
        .map_err(|e| format!("bad program headers: {e}"))?;
    let mut load_segments = 0;
    let mut pvh_note = false;
    for ph in phdrs {
        match ph.p_type(endian) {
            elf::PT_LOAD => {
                load_segments += 1;
                let (offset, filesz) = (ph.p_offset(endian), ph.p_filesz(endian));
                if filesz > len || offset > len - filesz {
                    return Err(format!(
                        "PT_LOAD segment ({filesz} bytes at offset {offset}) extends past the \
                         end of the {len}-byte file; it is truncated"
                    ));
                }
            }
            elf::PT_NOTE if !pvh_note => {
                let Some(mut notes) = ph
                    .notes(endian, data)
                    .map_err(|e| format!("bad PT_NOTE segment: {e}"))?
                else {
                    continue;
                };
                while let Some(note) = notes.next().map_err(|e| format!("bad ELF note: {e}"))? {
                    if note.name() == b"Xen" && note.n_type(endian) == XEN_ELFNOTE_PHYS32_ENTRY {
                        pvh_note = true;
                        break;
                    }
                }
            }
            _ => {}
        }
    }
    if load_segments == 0 {
        return Err("no PT_LOAD segment".to_owned());
    }
    Ok(ElfSummary {
        machine,
        entry: header.e_entry(endian),
        load_segments,
        pvh_note,
    })
}

/// [`object::read::ReadCacheOps`] over positioned reads, remembering the first I/O error
/// (object's `ReadRef` only reports `()`).
struct PreadOps<'a> {
    file: &'a File,
    pos: u64,
    len: u64,
    error: Option<io::Error>,
}

impl PreadOps<'_> {
    fn fail(&mut self, e: io::Error) {
        self.error.get_or_insert(e);
    }
}

impl object::read::ReadCacheOps for PreadOps<'_> {
    fn len(&mut self) -> Result<u64, ()> {
        Ok(self.len)
    }

    fn seek(&mut self, pos: u64) -> Result<u64, ()> {
        self.pos = pos;
        Ok(pos)
    }

    fn read(&mut self, buf: &mut [u8]) -> Result<usize, ()> {
        match read_full_at(self.file, buf, self.pos) {
            Ok(n) => {
                self.pos += n as u64;
                Ok(n)
            }
            Err(e) => {
                self.fail(e);
                Err(())
            }
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ()> {
        match self.file.read_exact_at(buf, self.pos) {
            Ok(()) => {
                self.pos += buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.fail(e);
                Err(())
            }
        }
    }
}

enum Probe<'a> {
    Elf,
    BzImage(BzImage<'a>),
}

/// The parts of a bzImage setup header this module uses.
struct BzImage<'a> {
    src: &'a File,
    payload_start: u64,
    payload_len: u64,
    kernel_version: u16,
}

impl BzImage<'_> {
    fn compression(&self) -> Result<Compression, KernelImageError> {
        let mut magic = [0u8; 6];
        let want = (magic.len() as u64).min(self.payload_len) as usize;
        let n = read_full_at(self.src, &mut magic[..want], self.payload_start)
            .map_err(io_err(READING_SOURCE))?;
        Compression::from_magic(&magic[..n]).ok_or_else(|| KernelImageError::UnknownCompression {
            magic: if n == 0 {
                "none, the payload is empty".to_owned()
            } else {
                magic[..n]
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            },
        })
    }
}

fn probe(src: &File, size: u64) -> Result<Probe<'_>, KernelImageError> {
    let mut hdr = [0u8; SETUP_HEADER_END];
    let n = read_full_at(src, &mut hdr, 0).map_err(io_err(READING_SOURCE))?;
    let hdr = &hdr[..n];
    if hdr.starts_with(ELF_MAGIC) {
        return Ok(Probe::Elf);
    }
    if hdr.get(OFF_HEADER_MAGIC..OFF_HEADER_MAGIC + 4) != Some(HDRS_MAGIC) {
        return Err(KernelImageError::NotAKernel);
    }
    let truncated = || KernelImageError::TruncatedHeader {
        need: SETUP_HEADER_END as u64,
        size,
    };
    let u16_at = |off: usize| {
        hdr.get(off..off + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or_else(truncated)
    };
    let u32_at = |off: usize| {
        hdr.get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(truncated)
    };
    let version = u16_at(OFF_VERSION)?;
    if version < MIN_PROTOCOL {
        return Err(KernelImageError::ProtocolTooOld { version });
    }
    if n < SETUP_HEADER_END {
        return Err(truncated());
    }
    let setup_sects = match hdr[OFF_SETUP_SECTS] {
        0 => 4,
        s => u64::from(s),
    };
    let payload_offset = u64::from(u32_at(OFF_PAYLOAD_OFFSET)?);
    let payload_len = u64::from(u32_at(OFF_PAYLOAD_LENGTH)?);
    // The protected-mode kernel starts right after the setup sectors and the boot sector.
    let payload_start = (setup_sects + 1) * 512 + payload_offset;
    if payload_start + payload_len > size {
        return Err(KernelImageError::PayloadOutOfBounds {
            offset: payload_start,
            length: payload_len,
            size,
        });
    }
    Ok(Probe::BzImage(BzImage {
        src,
        payload_start,
        payload_len,
        kernel_version: u16_at(OFF_KERNEL_VERSION)?,
    }))
}

/// The release from the bzImage's `kernel_version` string, if it has one.
fn header_release(
    src: &File,
    size: u64,
    bz: &BzImage<'_>,
) -> Result<Option<String>, KernelImageError> {
    if bz.kernel_version == 0 {
        return Ok(None);
    }
    let offset = u64::from(bz.kernel_version) + 0x200;
    if offset >= size {
        return Ok(None);
    }
    let mut buf = [0u8; 256];
    let n = read_full_at(src, &mut buf, offset).map_err(io_err(READING_SOURCE))?;
    let s = &buf[..n];
    let s = &s[..memchr::memchr(0, s).unwrap_or(s.len())];
    Ok(first_token(s).filter(|t| !t.is_empty()))
}

/// The leading run of printable, non-space ASCII in `s`, if `s` starts with
/// optional whitespace followed by such a run that is then terminated (or
/// runs to the end of `s`).
fn first_token(s: &[u8]) -> Option<String> {
    let start = s.iter().position(|b| !b.is_ascii_whitespace())?;
    let s = &s[start..];
    let end = s
        .iter()
        .position(|b| !b.is_ascii_graphic())
        .unwrap_or(s.len());
    let terminated = end == s.len() || s[end].is_ascii_whitespace() || s[end] == 0;
    (end > 0 && end <= 64 && terminated).then(|| String::from_utf8_lossy(&s[..end]).into_owned())
}

/// The token after the first `Linux version ` (followed by a digit) in the
/// first `len` bytes of `f`: the kernel's `linux_banner`.
fn find_linux_version(
    f: &File,
    len: u64,
    cancel: &AtomicBool,
) -> Result<Option<String>, KernelImageError> {
    const NEEDLE: &[u8] = b"Linux version ";
    // Enough to see a whole token after a match that starts in the window.
    const OVERLAP: usize = 256;
    let finder = memchr::memmem::Finder::new(NEEDLE);
    let mut buf = vec![0u8; CHUNK + OVERLAP];
    let mut pos = 0u64;
    while pos < len {
        check_cancel(cancel)?;
        let want = (len - pos).min(buf.len() as u64) as usize;
        let n = read_full_at(f, &mut buf[..want], pos).map_err(io_err(READING_OUTPUT))?;
        if n == 0 {
            break;
        }
        let hay = &buf[..n];
        for at in finder.find_iter(hay) {
            if at >= CHUNK {
                break; // The next window sees it whole.
            }
            let rest = &hay[at + NEEDLE.len()..];
            if rest.first().is_some_and(u8::is_ascii_digit) {
                if let Some(token) = first_token(rest) {
                    return Ok(Some(token));
                }
            }
        }
        pos += CHUNK as u64;
    }
    Ok(None)
}

/// Where decompressed (or copied) bytes go: the output file, with the
/// cancellation check, progress reports and size cap.
struct Sink<'a> {
    out: &'a mut File,
    written: u64,
    limit: u64,
    next_report: u64,
    cancel: &'a AtomicBool,
    progress: &'a mut dyn FnMut(u64),
}

impl<'a> Sink<'a> {
    fn new(
        out: &'a mut File,
        limit: u64,
        cancel: &'a AtomicBool,
        progress: &'a mut dyn FnMut(u64),
    ) -> Self {
        Sink {
            out,
            written: 0,
            limit,
            next_report: PROGRESS_EVERY,
            cancel,
            progress,
        }
    }

    fn write(&mut self, mut data: &[u8]) -> Result<(), KernelImageError> {
        while !data.is_empty() {
            check_cancel(self.cancel)?;
            let (now, rest) = data.split_at(data.len().min(CHUNK));
            if self.written + now.len() as u64 > self.limit {
                return Err(KernelImageError::OutputTooLarge { limit: self.limit });
            }
            self.out.write_all(now).map_err(io_err(WRITING_OUTPUT))?;
            self.written += now.len() as u64;
            if self.written >= self.next_report {
                (self.progress)(self.written);
                self.next_report = self.written + PROGRESS_EVERY;
            }
            data = rest;
        }
        Ok(())
    }

    /// Reports the final size and returns it.
    fn finish(self) -> u64 {
        (self.progress)(self.written);
        self.written
    }
}

fn check_cancel(cancel: &AtomicBool) -> Result<(), KernelImageError> {
    if cancel.load(Ordering::Relaxed) {
        Err(KernelImageError::Cancelled)
    } else {
        Ok(())
    }
}

fn copy_range(
    src: &File,
    start: u64,
    len: u64,
    sink: &mut Sink<'_>,
) -> Result<(), KernelImageError> {
    let mut buf = vec![0u8; CHUNK];
    let mut pos = start;
    let end = start + len;
    while pos < end {
        let want = (end - pos).min(CHUNK as u64) as usize;
        let n = read_full_at(src, &mut buf[..want], pos).map_err(io_err(READING_SOURCE))?;
        if n < want {
            return Err(io_err(READING_SOURCE)(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the file shrank while it was being read",
            )));
        }
        sink.write(&buf[..n])?;
        pos += n as u64;
    }
    Ok(())
}

/// Decompresses the payload into `sink`. Every decoder streams: at most a
/// few MiB of input and output are held in memory at once.
fn decompress(
    src: &File,
    bz: &BzImage<'_>,
    compression: Compression,
    sink: &mut Sink<'_>,
) -> Result<(), KernelImageError> {
    let reader = RangeReader::new(src, bz.payload_start, bz.payload_len);
    let corrupt = |source: Box<dyn std::error::Error + Send + Sync>| KernelImageError::Decompress {
        compression,
        source,
    };
    // Decoders that pull from a `Read` report our read errors as their own;
    // `SourceReadError` tells them apart from corrupt data.
    let classify = |e: io::Error| {
        if e.get_ref().is_some_and(|i| i.is::<SourceReadError>()) {
            io_err(READING_SOURCE)(e)
        } else {
            corrupt(e.into())
        }
    };
    match compression {
        Compression::Gzip => {
            // One gzip member; anything after it (e.g. an appended size) is ignored.
            let decoder = flate2::bufread::GzDecoder::new(BufReader::with_capacity(CHUNK, reader));
            pump(decoder, sink, classify)
        }
        Compression::Zstd => {
            let decoder =
                zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(CHUNK, reader))
                    .map_err(classify)?
                    .single_frame();
            pump(decoder, sink, classify)
        }
        Compression::Xz | Compression::Lzma => {
            let stream = if compression == Compression::Xz {
                // Without LZMA_CONCATENATED: stop at the end of the first stream.
                xz2::stream::Stream::new_stream_decoder(LZMA_MEMLIMIT, 0)
            } else {
                xz2::stream::Stream::new_lzma_decoder(LZMA_MEMLIMIT)
            }
            .map_err(|e| corrupt(e.into()))?;
            decode_lzma(
                stream,
                BufReader::with_capacity(CHUNK, reader),
                sink,
                classify,
                corrupt,
            )
        }
        Compression::Lz4 => decode_lz4_legacy(src, bz, sink, corrupt),
        Compression::Bzip2 | Compression::Lzo => {
            Err(KernelImageError::UnsupportedCompression(compression))
        }
    }
}

/// Copies a decoder's output into `sink`.
fn pump(
    mut decoder: impl Read,
    sink: &mut Sink<'_>,
    classify: impl Fn(io::Error) -> KernelImageError,
) -> Result<(), KernelImageError> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match decoder.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(classify(e)),
        };
        sink.write(&buf[..n])?;
    }
}

/// Runs a liblzma decoder (xz or legacy lzma) until the end of its stream;
/// trailing bytes (the kernel build appends the uncompressed size) are ignored.
fn decode_lzma(
    mut stream: xz2::stream::Stream,
    mut input: impl BufRead,
    sink: &mut Sink<'_>,
    classify: impl Fn(io::Error) -> KernelImageError,
    corrupt: impl Fn(Box<dyn std::error::Error + Send + Sync>) -> KernelImageError,
) -> Result<(), KernelImageError> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let data = input.fill_buf().map_err(&classify)?;
        let eof = data.is_empty();
        let action = if eof {
            xz2::stream::Action::Finish
        } else {
            xz2::stream::Action::Run
        };
        let (in_before, out_before) = (stream.total_in(), stream.total_out());
        let status = stream
            .process(data, &mut buf, action)
            .map_err(|e| corrupt(e.into()))?;
        let consumed = (stream.total_in() - in_before) as usize;
        let produced = (stream.total_out() - out_before) as usize;
        input.consume(consumed);
        sink.write(&buf[..produced])?;
        if status == xz2::stream::Status::StreamEnd {
            return Ok(());
        }
        if eof && produced == 0 {
            return Err(corrupt(
                "the payload ends before the compressed stream does".into(),
            ));
        }
    }
}

/// Decodes the LZ4 legacy frame the kernel build writes with `lz4 -l`:
/// the magic, then `[u32 LE compressed size][block]` until the payload ends.
/// The build appends the uncompressed size after the last block, so a block
/// size that is 0 or would run past the payload ends the stream cleanly; a
/// repeated magic starts a concatenated stream, as in the kernel's
/// `lib/decompress_unlz4.c`. A stream cut inside a block therefore decodes
/// short, and [`inspect_elf`] then finds its segments missing.
fn decode_lz4_legacy(
    src: &File,
    bz: &BzImage<'_>,
    sink: &mut Sink<'_>,
    corrupt: impl Fn(Box<dyn std::error::Error + Send + Sync>) -> KernelImageError,
) -> Result<(), KernelImageError> {
    let end = bz.payload_start + bz.payload_len;
    let mut pos = bz.payload_start + 4; // after the magic `compression()` checked
    let mut input = Vec::new();
    let mut output = vec![0u8; LZ4_LEGACY_BLOCK];
    let mut blocks = 0usize;
    while end - pos >= 4 {
        let mut word = [0u8; 4];
        src.read_exact_at(&mut word, pos)
            .map_err(io_err(READING_SOURCE))?;
        let block_len = u32::from_le_bytes(word);
        if block_len == LZ4_LEGACY_MAGIC {
            pos += 4;
            continue;
        }
        if block_len == 0 || u64::from(block_len) > end - pos - 4 {
            break;
        }
        let block_len = block_len as usize;
        if block_len > LZ4_LEGACY_MAX_COMPRESSED {
            return Err(corrupt(
                format!(
                    "block {blocks} is {block_len} bytes, more than an 8 MiB legacy-frame block \
                     can compress to"
                )
                .into(),
            ));
        }
        input.resize(block_len, 0);
        src.read_exact_at(&mut input, pos + 4)
            .map_err(io_err(READING_SOURCE))?;
        let n = lz4_flex::block::decompress_into(&input, &mut output)
            .map_err(|e| corrupt(format!("block {blocks}: {e}").into()))?;
        sink.write(&output[..n])?;
        blocks += 1;
        pos += 4 + block_len as u64;
    }
    if blocks == 0 {
        return Err(corrupt(
            "no complete lz4 block in the payload (it is cut short)".into(),
        ));
    }
    Ok(())
}

/// Marks an I/O error of the source file that passed through a decoder.
#[derive(Debug)]
struct SourceReadError(io::Error);

impl fmt::Display for SourceReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceReadError {}

/// `Read` over `[start, start + len)` of a file, with positioned reads.
struct RangeReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl<'a> RangeReader<'a> {
    fn new(file: &'a File, start: u64, len: u64) -> Self {
        RangeReader {
            file,
            pos: start,
            end: start + len,
        }
    }
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        loop {
            match self.file.read_at(&mut buf[..want], self.pos) {
                Ok(n) => {
                    self.pos += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io::Error::new(e.kind(), SourceReadError(e))),
            }
        }
    }
}

/// Fills `buf` from `f` at `offset` until it is full or the file ends.
fn file_len(f: &File, context: &'static str) -> Result<u64, KernelImageError> {
    Ok(f.metadata().map_err(io_err(context))?.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom};
    use std::process::{Command, Stdio};
    use std::sync::OnceLock;

    const TEST_RELEASE: &str = "9.9.9-banger-test";

    /// Deterministic, moderately compressible filler (words picked by an LCG).
    fn filler(len: usize) -> Vec<u8> {
        const WORDS: &[&[u8]] = &[
            b"kernel ",
            b"page ",
            b"\x00\x00\x00\x00",
            b"\x48\x89\xe5",
            b"irq ",
            b"sched ",
            b"\xff\xff\xff\xff\x81",
            b"virtio ",
            b"\xe8\x00\x10\x00\x00",
            b"mm ",
        ];
        let mut out = Vec::with_capacity(len + 8);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        while out.len() < len {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            out.extend_from_slice(WORDS[(x >> 59) as usize % WORDS.len()]);
            if x & 0xff < 24 {
                out.push((x >> 16) as u8);
            }
        }
        out.truncate(len);
        out
    }

    /// Builds a real static x86-64 ELF executable with gcc: a `.note.Xen`
    /// PVH entry note (optional), a `linux_banner`-like string and `filler_len`
    /// bytes of data.
    fn build_elf(filler_len: usize, pvh_note: bool) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("filler.bin"), filler(filler_len)).unwrap();
        let note = if pvh_note {
            ".section .note.Xen,\"a\",@note\n.balign 4\n.long 4, 4, 18\n.asciz \"Xen\"\n\
             .balign 4\n.long _start\n"
        } else {
            ""
        };
        let asm = format!(
            "{note}.section .rodata\n\
             .asciz \"Linux version {TEST_RELEASE} (test@example) #1 SMP PREEMPT_DYNAMIC\"\n\
             .balign 16\n.incbin \"filler.bin\"\n\
             .text\n.globl _start\n_start:\n hlt\n jmp _start\n"
        );
        std::fs::write(dir.path().join("entry.S"), asm).unwrap();
        let status = Command::new("gcc")
            .current_dir(dir.path())
            .args([
                "-nostdlib",
                "-static",
                "-no-pie",
                "-Wl,-Ttext=0x1000000",
                "-Wl,--build-id=none",
                "-o",
                "vmlinux",
                "entry.S",
            ])
            .status()
            .expect("running gcc");
        assert!(status.success(), "gcc failed");
        std::fs::read(dir.path().join("vmlinux")).unwrap()
    }

    fn small_elf() -> &'static [u8] {
        static ELF: OnceLock<Vec<u8>> = OnceLock::new();
        ELF.get_or_init(|| build_elf(200 << 10, true))
    }

    /// Larger than one 8 MiB LZ4 legacy block, and than a few progress steps.
    fn big_elf() -> &'static [u8] {
        static ELF: OnceLock<Vec<u8>> = OnceLock::new();
        ELF.get_or_init(|| build_elf(10 << 20, true))
    }

    /// Runs a real compressor as the kernel build does (`cat vmlinux.bin | tool`).
    fn compress(argv: &[&str], data: &[u8]) -> Vec<u8> {
        let mut child = Command::new(argv[0])
            .args(&argv[1..])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", argv[0]));
        let mut stdin = child.stdin.take().unwrap();
        let input = data.to_vec();
        let writer = std::thread::spawn(move || stdin.write_all(&input));
        let output = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(output.status.success(), "{argv:?} failed");
        output.stdout
    }

    /// `size_append` from scripts/Makefile.lib: the uncompressed size, u32 LE.
    fn with_size(mut payload: Vec<u8>, uncompressed: &[u8]) -> Vec<u8> {
        payload.extend_from_slice(&(uncompressed.len() as u32).to_le_bytes());
        payload
    }

    struct Bz {
        setup_sects: u8,
        version: u16,
        release: Option<&'static str>,
    }

    const BZ: Bz = Bz {
        setup_sects: 4,
        version: 0x020f,
        release: Some("9.9.9-banger-test (test@example) #1 SMP PREEMPT_DYNAMIC"),
    };

    /// A synthetic bzImage: setup sectors with a boot header, then the
    /// protected-mode part: some "decompressor" bytes, the payload, more bytes.
    fn bzimage(payload: &[u8], bz: &Bz) -> Vec<u8> {
        let sects = if bz.setup_sects == 0 {
            4
        } else {
            bz.setup_sects as usize
        };
        let mut img = vec![0u8; (sects + 1) * 512];
        img[0x1f1] = bz.setup_sects;
        img[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
        img[0x202..0x206].copy_from_slice(b"HdrS");
        img[0x206..0x208].copy_from_slice(&bz.version.to_le_bytes());
        if let Some(release) = bz.release {
            img[0x20e..0x210].copy_from_slice(&0x200u16.to_le_bytes());
            img[0x400..0x400 + release.len()].copy_from_slice(release.as_bytes());
        }
        let payload_offset = 0x180u32;
        img[0x248..0x24c].copy_from_slice(&payload_offset.to_le_bytes());
        img[0x24c..0x250].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        img.extend_from_slice(&vec![0xcc; payload_offset as usize]);
        img.extend_from_slice(payload);
        img.extend_from_slice(&[0x90; 100]);
        img
    }

    /// A source file whose own offset is deliberately not 0.
    const SRC_OFFSET: u64 = 3;

    fn source(bytes: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        f.seek(SeekFrom::Start(SRC_OFFSET)).unwrap();
        f
    }

    fn extract_with(
        src: &File,
        cancel: &AtomicBool,
        progress: &mut dyn FnMut(u64),
    ) -> (Result<Extracted, KernelImageError>, Vec<u8>) {
        let mut out = tempfile::tempfile().unwrap();
        let result = extract_vmlinux(src, &mut out, cancel, progress);
        let mut written = Vec::new();
        out.seek(SeekFrom::Start(0)).unwrap();
        out.read_to_end(&mut written).unwrap();
        (result, written)
    }

    fn extract(bytes: &[u8]) -> (Result<Extracted, KernelImageError>, Vec<u8>) {
        let mut src = source(bytes);
        let mut last = 0;
        let r = extract_with(&src, &AtomicBool::new(false), &mut |n| last = n);
        assert_eq!(
            src.stream_position().unwrap(),
            SRC_OFFSET,
            "source offset moved"
        );
        if let Ok(x) = &r.0 {
            assert_eq!(last, x.size, "last progress report is the final size");
        }
        r
    }

    fn assert_extracts(image: &[u8], elf: &[u8], format: KernelFormat, release: &str) {
        let (result, out) = extract(image);
        let x = result.unwrap_or_else(|e| panic!("{}: {e}", format.label()));
        assert!(
            out == elf,
            "{}: output differs from the original ELF",
            format.label()
        );
        assert_eq!(x.format, format);
        assert_eq!(x.release.as_deref(), Some(release));
        assert_eq!(x.size, elf.len() as u64);
        assert_eq!(x.elf.machine, elf::EM_X86_64);
        assert_eq!(x.elf.entry, 0x100_0000);
        assert!(x.elf.load_segments >= 1);
        assert!(x.elf.pvh_note);
        assert_eq!(detect(&source(image)).unwrap(), format);
    }

    #[test]
    fn elf_input_is_copied_verbatim() {
        let elf = small_elf();
        assert_extracts(elf, elf, KernelFormat::Elf, TEST_RELEASE);
    }

    #[test]
    fn inspect_elf_reports_the_pvh_note_only_when_present() {
        assert!(inspect_elf(&source(small_elf())).unwrap().pvh_note);
        let plain = inspect_elf(&source(&build_elf(1024, false))).unwrap();
        assert!(!plain.pvh_note);
        assert_eq!(plain.machine, elf::EM_X86_64);
    }

    #[test]
    fn bzimage_gzip_extracts() {
        let elf = small_elf();
        let payload = compress(&["gzip", "-n", "-f", "-9"], elf);
        let fmt = KernelFormat::BzImage(Compression::Gzip);
        assert_eq!(fmt.label(), "bzimage+gzip");
        assert_extracts(&bzimage(&payload, &BZ), elf, fmt, TEST_RELEASE);
        // Older kernels appended the size after gzip payloads too.
        let payload = with_size(payload, elf);
        assert_extracts(&bzimage(&payload, &BZ), elf, fmt, TEST_RELEASE);
    }

    #[test]
    fn bzimage_xz_with_x86_bcj_extracts() {
        let elf = small_elf();
        let payload = compress(&["xz", "--check=crc32", "--x86", "--lzma2=preset=6"], elf);
        let payload = with_size(payload, elf);
        let fmt = KernelFormat::BzImage(Compression::Xz);
        assert_eq!(fmt.label(), "bzimage+xz");
        assert_extracts(&bzimage(&payload, &BZ), elf, fmt, TEST_RELEASE);
    }

    #[test]
    fn bzimage_lzma_extracts() {
        let elf = small_elf();
        let payload = with_size(compress(&["lzma", "-9"], elf), elf);
        let fmt = KernelFormat::BzImage(Compression::Lzma);
        assert_eq!(fmt.label(), "bzimage+lzma");
        assert_extracts(&bzimage(&payload, &BZ), elf, fmt, TEST_RELEASE);
    }

    #[test]
    fn bzimage_lz4_legacy_multi_block_extracts() {
        let elf = big_elf();
        let compressed = compress(&["lz4", "-l", "-9"], elf);
        let first_block = u32::from_le_bytes(compressed[4..8].try_into().unwrap()) as usize;
        assert!(
            compressed.len() > 8 + first_block + 4,
            "expected several lz4 blocks"
        );
        let payload = with_size(compressed, elf);
        let fmt = KernelFormat::BzImage(Compression::Lz4);
        assert_eq!(fmt.label(), "bzimage+lz4");
        assert_extracts(&bzimage(&payload, &BZ), elf, fmt, TEST_RELEASE);
    }

    #[test]
    fn bzimage_lz4_small_and_concatenated_extract() {
        let elf = small_elf();
        let payload = with_size(compress(&["lz4", "-l", "-9"], elf), elf);
        let fmt = KernelFormat::BzImage(Compression::Lz4);
        assert_extracts(&bzimage(&payload, &BZ), elf, fmt, TEST_RELEASE);
        // Two legacy streams back to back decode as one.
        let (a, b) = elf.split_at(elf.len() / 2);
        let mut payload = compress(&["lz4", "-l", "-9"], a);
        payload.extend(compress(&["lz4", "-l", "-9"], b));
        assert_extracts(&bzimage(&payload, &BZ), elf, fmt, TEST_RELEASE);
    }

    #[test]
    fn bzimage_zstd_extracts() {
        let elf = small_elf();
        let payload = with_size(compress(&["zstd", "-19", "-c"], elf), elf);
        let fmt = KernelFormat::BzImage(Compression::Zstd);
        assert_eq!(fmt.label(), "bzimage+zstd");
        assert_extracts(&bzimage(&payload, &BZ), elf, fmt, TEST_RELEASE);
    }

    #[test]
    fn release_falls_back_to_the_linux_banner() {
        let elf = small_elf();
        let payload = compress(&["gzip", "-9"], elf);
        let no_release = Bz {
            release: None,
            ..BZ
        };
        let fmt = KernelFormat::BzImage(Compression::Gzip);
        assert_extracts(&bzimage(&payload, &no_release), elf, fmt, TEST_RELEASE);
        // The header wins over the banner; setup_sects 0 means 4.
        let other = Bz {
            setup_sects: 0,
            release: Some("1.2.3-header #1"),
            ..BZ
        };
        assert_extracts(&bzimage(&payload, &other), elf, fmt, "1.2.3-header");
    }

    #[test]
    fn bzip2_and_lzo_are_detected_but_unsupported() {
        let payload = with_size(compress(&["bzip2", "-9"], small_elf()), small_elf());
        let image = bzimage(&payload, &BZ);
        assert_eq!(
            detect(&source(&image)).unwrap(),
            KernelFormat::BzImage(Compression::Bzip2)
        );
        let (r, out) = extract(&image);
        assert!(matches!(
            r,
            Err(KernelImageError::UnsupportedCompression(Compression::Bzip2))
        ));
        assert!(out.is_empty());

        let image = bzimage(b"\x89LZO\x00\x0d\x0a\x1a\x0a rest of an lzop file", &BZ);
        assert_eq!(
            detect(&source(&image)).unwrap(),
            KernelFormat::BzImage(Compression::Lzo)
        );
        let err = extract(&image).0.unwrap_err();
        assert!(matches!(
            err,
            KernelImageError::UnsupportedCompression(Compression::Lzo)
        ));
        assert!(err
            .to_string()
            .starts_with("unsupported compression lzo in bzImage payload"));
    }

    #[test]
    fn bad_magic_is_not_a_kernel() {
        for bytes in [&b""[..], b"hello", &[0u8; 4096][..], &filler(100_000)] {
            assert!(matches!(
                extract(bytes).0,
                Err(KernelImageError::NotAKernel)
            ));
            assert!(matches!(
                detect(&source(bytes)),
                Err(KernelImageError::NotAKernel)
            ));
        }
    }

    #[test]
    fn truncated_header_is_reported() {
        let image = bzimage(&compress(&["gzip"], small_elf()), &BZ);
        for len in [0x206, 0x220, 0x24f] {
            let err = extract(&image[..len]).0.unwrap_err();
            assert!(
                matches!(err, KernelImageError::TruncatedHeader { need: 0x250, size } if size == len as u64),
                "{len}: {err}"
            );
        }
        // Shorter than the magic: nothing says it is a bzImage.
        assert!(matches!(
            extract(&image[..0x204]).0,
            Err(KernelImageError::NotAKernel)
        ));
    }

    #[test]
    fn old_boot_protocol_is_rejected() {
        let old = Bz {
            version: 0x0207,
            ..BZ
        };
        let err = extract(&bzimage(&compress(&["gzip"], small_elf()), &old))
            .0
            .unwrap_err();
        assert!(matches!(
            err,
            KernelImageError::ProtocolTooOld { version: 0x0207 }
        ));
        assert_eq!(
            err.to_string(),
            "bzImage boot protocol 2.07 is too old to locate its payload (need >= 2.08)"
        );
    }

    #[test]
    fn payload_outside_the_file_is_rejected() {
        let payload = compress(&["gzip"], small_elf());
        let image = bzimage(&payload, &BZ);
        let size = image.len() as u64;

        let mut past = image.clone();
        past[0x248..0x24c].copy_from_slice(&(u32::MAX).to_le_bytes());
        let mut long = image.clone();
        long[0x24c..0x250].copy_from_slice(&(u32::MAX).to_le_bytes());
        let mut giant_setup = image.clone();
        giant_setup[0x1f1] = 255;
        let truncated = &image[..image.len() - 100 - payload.len() / 2];

        for (name, bytes) in [
            ("payload_offset past EOF", &past[..]),
            ("payload_length past EOF", &long),
            ("giant setup_sects", &giant_setup),
            ("file truncated in the payload", truncated),
        ] {
            let err = extract(bytes).0.unwrap_err();
            assert!(
                matches!(err, KernelImageError::PayloadOutOfBounds { size: s, .. } if s <= size),
                "{name}: {err}"
            );
        }
    }

    #[test]
    fn garbage_payload_is_unknown_compression() {
        let err = extract(&bzimage(&filler(5000), &BZ)).0.unwrap_err();
        assert!(
            matches!(&err, KernelImageError::UnknownCompression { magic } if magic.len() == 17),
            "{err}"
        );
        let empty = extract(&bzimage(b"", &BZ)).0.unwrap_err();
        assert!(matches!(empty, KernelImageError::UnknownCompression { .. }));
    }

    #[test]
    fn corrupt_or_truncated_streams_are_decompress_errors() {
        let elf = small_elf();
        for argv in [
            &["gzip", "-9"][..],
            &["xz", "--check=crc32", "--x86", "--lzma2=preset=6"],
            &["lzma"],
            &["zstd", "-c"],
        ] {
            let payload = compress(argv, elf);
            // Cut short (payload_length says so too, so the header is consistent).
            let short = &payload[..payload.len() * 2 / 3];
            let err = extract(&bzimage(short, &BZ)).0.unwrap_err();
            assert!(
                matches!(err, KernelImageError::Decompress { .. }),
                "{argv:?} truncated: {err}"
            );
            // Bytes flipped in the middle.
            let mut bad = payload.clone();
            let mid = bad.len() / 2;
            for b in &mut bad[mid..mid + 64] {
                *b ^= 0x5a;
            }
            let err = extract(&bzimage(&bad, &BZ)).0.unwrap_err();
            assert!(
                matches!(err, KernelImageError::Decompress { .. }),
                "{argv:?} corrupt: {err}"
            );
        }
    }

    #[test]
    fn lz4_corrupt_or_truncated_is_rejected() {
        let elf = big_elf();
        let payload = compress(&["lz4", "-l", "-9"], elf);
        // Cut inside the second block: the first decodes, the ELF is short.
        let short = &payload[..payload.len() - 1000];
        let err = extract(&bzimage(short, &BZ)).0.unwrap_err();
        assert!(
            matches!(&err, KernelImageError::PayloadNotElf { reason } if reason.contains("truncated")),
            "{err}"
        );
        // A block length no legacy block can have.
        let mut huge = payload[..4].to_vec();
        huge.extend_from_slice(&(64u32 << 20).to_le_bytes());
        huge.resize(huge.len() + (64 << 20), 0);
        let err = extract(&bzimage(&huge, &BZ)).0.unwrap_err();
        assert!(matches!(err, KernelImageError::Decompress { .. }), "{err}");
        // Garbage inside a block.
        let mut bad = payload.clone();
        for b in &mut bad[100..200] {
            *b = 0xff;
        }
        let err = extract(&bzimage(&bad, &BZ)).0.unwrap_err();
        assert!(matches!(err, KernelImageError::Decompress { .. }), "{err}");
        // Only the magic.
        let err = extract(&bzimage(&payload[..4], &BZ)).0.unwrap_err();
        assert!(matches!(err, KernelImageError::Decompress { .. }), "{err}");
    }

    #[test]
    fn payload_that_is_not_an_x86_64_elf_is_rejected() {
        let text = compress(&["gzip"], &filler(50_000));
        let err = extract(&bzimage(&text, &BZ)).0.unwrap_err();
        assert!(
            matches!(err, KernelImageError::PayloadNotElf { .. }),
            "{err}"
        );

        let mut arm = small_elf().to_vec();
        arm[18..20].copy_from_slice(&elf::EM_AARCH64.to_le_bytes());
        let err = extract(&bzimage(&compress(&["gzip"], &arm), &BZ))
            .0
            .unwrap_err();
        assert!(
            matches!(&err, KernelImageError::PayloadNotElf { reason } if reason.contains("e_machine")),
            "{err}"
        );
        assert!(err
            .to_string()
            .starts_with("decompressed payload is not an x86-64 ELF"));
        // The same file given directly.
        let err = extract(&arm).0.unwrap_err();
        assert!(matches!(err, KernelImageError::BadElf { .. }), "{err}");

        let mut dyn_elf = small_elf().to_vec();
        dyn_elf[16..18].copy_from_slice(&elf::ET_DYN.to_le_bytes());
        assert!(matches!(
            inspect_elf(&source(&dyn_elf)),
            Err(KernelImageError::BadElf { .. })
        ));
        let mut elf32 = small_elf().to_vec();
        elf32[4] = elf::ELFCLASS32;
        assert!(matches!(
            inspect_elf(&source(&elf32)),
            Err(KernelImageError::BadElf { .. })
        ));
        assert!(matches!(
            inspect_elf(&source(&small_elf()[..40])),
            Err(KernelImageError::BadElf { .. })
        ));
    }

    #[test]
    fn cancel_stops_extraction() {
        let elf = big_elf();
        let image = bzimage(&compress(&["lz4", "-l", "-9"], elf), &BZ);
        let src = source(&image);
        let cancel = AtomicBool::new(false);
        let mut reports = Vec::new();
        let (r, out) = extract_with(&src, &cancel, &mut |n| {
            reports.push(n);
            cancel.store(true, Ordering::Relaxed);
        });
        assert!(matches!(r, Err(KernelImageError::Cancelled)), "{r:?}");
        assert_eq!(reports, [PROGRESS_EVERY]);
        assert!(out.len() as u64 <= PROGRESS_EVERY + CHUNK as u64);

        // Already cancelled: nothing is written, for either format.
        for input in [&image[..], elf] {
            let (r, out) = extract_with(&source(input), &AtomicBool::new(true), &mut |_| {});
            assert!(matches!(r, Err(KernelImageError::Cancelled)), "{r:?}");
            assert!(out.is_empty());
        }
    }

    #[test]
    fn progress_is_reported_along_the_way() {
        let elf = big_elf();
        let image = bzimage(&with_size(compress(&["zstd", "-3", "-c"], elf), elf), &BZ);
        let mut reports = Vec::new();
        let (r, _) = extract_with(&source(&image), &AtomicBool::new(false), &mut |n| {
            reports.push(n)
        });
        r.unwrap();
        assert!(reports.len() >= 3, "{reports:?}");
        assert!(reports.windows(2).all(|w| w[0] < w[1]), "{reports:?}");
        assert_eq!(*reports.last().unwrap(), elf.len() as u64);
    }

    /// The real thing: a Debian cloud kernel (an LZ4 bzImage).
    #[test]
    fn debian_cloud_kernel_extracts() {
        let path = std::env::var_os("BANGER_TEST_VMLINUZ")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "/var/cache/banger-test/vmlinuz-cloud-amd64".into());
        let src = File::open(&path).unwrap_or_else(|e| {
            panic!(
                "test kernel {} is missing ({e}); run scripts/fetch-test-assets.sh \
                 (or set BANGER_TEST_VMLINUZ to a Debian cloud-amd64 vmlinuz)",
                path.display()
            )
        });
        assert_eq!(
            detect(&src).unwrap(),
            KernelFormat::BzImage(Compression::Lz4)
        );
        let mut out = tempfile::tempfile().unwrap();
        let mut reports = 0;
        let x = extract_vmlinux(&src, &mut out, &AtomicBool::new(false), &mut |_| {
            reports += 1
        })
        .unwrap();
        assert_eq!(x.format, KernelFormat::BzImage(Compression::Lz4));
        let release = x.release.clone().unwrap();
        assert!(release.starts_with("6.1."), "{release}");
        assert_eq!(x.elf.machine, 62);
        assert!(x.elf.load_segments >= 1);
        assert!(
            x.elf.pvh_note,
            "Debian cloud kernels are built with CONFIG_PVH=y"
        );
        assert!(reports > 1);
        assert_eq!(out.metadata().unwrap().len(), x.size);
        assert_eq!(inspect_elf(&out).unwrap(), x.elf);
        // The banner inside the vmlinux agrees with the setup header.
        let banner = find_linux_version(&out, x.size, &AtomicBool::new(false)).unwrap();
        assert_eq!(banner.as_deref(), Some(release.as_str()));
    }
}
