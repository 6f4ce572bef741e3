//! The unpacker against real tar layers, hostile ones included. Every
//! hostile case runs with the root inside an "outer" directory that also
//! holds a host stand-in (`host/etc/shadow`), and checks that nothing outside
//! the root changed.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use super::*;

enum E<'a> {
    File(&'a str, &'a [u8], u32),
    Dir(&'a str, u32),
    Sym(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Dev(&'a str),
    Fifo(&'a str),
    /// A file with an xattr in a PAX header.
    XattrFile(&'a str, &'a str, &'a [u8]),
    Owned(&'a str, u32, u32),
}

/// Writes the name bytes straight into the header (tar's `set_path`
/// refuses `..`, which is what these layers are made of).
fn header(kind: tar::EntryType, name: &str, size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    let field = &mut h.as_old_mut().name;
    field.fill(0);
    field[..name.len()].copy_from_slice(name.as_bytes());
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(1_700_000_000);
    h
}

fn link_header(kind: tar::EntryType, name: &str, target: &str) -> tar::Header {
    let mut h = header(kind, name, 0, 0o777);
    let field = &mut h.as_old_mut().linkname;
    field.fill(0);
    field[..target.len()].copy_from_slice(target.as_bytes());
    h
}

/// A gzip layer of `entries` at `path`.
fn layer(path: &Path, entries: &[E]) -> PathBuf {
    let gz =
        flate2::write::GzEncoder::new(fs::File::create(path).unwrap(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for e in entries {
        match e {
            E::File(n, data, mode) => {
                let mut h = header(tar::EntryType::Regular, n, data.len() as u64, *mode);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
            E::Owned(n, uid, gid) => {
                let mut h = header(tar::EntryType::Regular, n, 1, 0o4755);
                h.set_uid(*uid as u64);
                h.set_gid(*gid as u64);
                h.set_cksum();
                b.append(&h, &b"x"[..]).unwrap();
            }
            E::Dir(n, mode) => {
                let mut h = header(tar::EntryType::Directory, n, 0, *mode);
                h.set_cksum();
                b.append(&h, io::empty()).unwrap();
            }
            E::Sym(n, t) | E::Hard(n, t) => {
                let kind = if matches!(e, E::Sym(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                let mut h = link_header(kind, n, t);
                h.set_cksum();
                b.append(&h, io::empty()).unwrap();
            }
            E::Dev(n) => {
                let mut h = header(tar::EntryType::Char, n, 0, 0o666);
                h.set_device_major(1).unwrap();
                h.set_device_minor(3).unwrap();
                h.set_cksum();
                b.append(&h, io::empty()).unwrap();
            }
            E::Fifo(n) => {
                let mut h = header(tar::EntryType::Fifo, n, 0, 0o640);
                h.set_cksum();
                b.append(&h, io::empty()).unwrap();
            }
            E::XattrFile(n, k, v) => {
                let key = format!("SCHILY.xattr.{k}");
                b.append_pax_extensions([(key.as_str(), *v)]).unwrap();
                let mut h = header(tar::EntryType::Regular, n, 2, 0o755);
                h.set_cksum();
                b.append(&h, &b"ok"[..]).unwrap();
            }
        }
    }
    b.into_inner().unwrap().finish().unwrap().flush().unwrap();
    path.to_path_buf()
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("host/etc")).unwrap();
        fs::write(dir.path().join("host/etc/shadow"), "root:secret:1::::::\n").unwrap();
        fs::create_dir(dir.path().join("root")).unwrap();
        fs::create_dir(dir.path().join("layers")).unwrap();
        Fixture { dir }
    }
    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }
    fn layer(&self, i: usize, entries: &[E]) -> PathBuf {
        layer(&self.dir.path().join(format!("layers/{i}.tar.gz")), entries)
    }
    fn unpack(&self, layers: &[PathBuf], max: u64) -> Result<Report, UnpackError> {
        unpack_layers(
            &self.root(),
            layers,
            max,
            &AtomicBool::new(false),
            &mut |_| {},
        )
    }
    /// Everything outside the root, with sizes.
    fn outside(&self) -> Vec<(PathBuf, u64)> {
        let mut out = Vec::new();
        fn walk(p: &Path, base: &Path, skip: &Path, out: &mut Vec<(PathBuf, u64)>) {
            for e in fs::read_dir(p).unwrap() {
                let e = e.unwrap();
                let path = e.path();
                if path == skip {
                    continue;
                }
                let m = fs::symlink_metadata(&path).unwrap();
                out.push((path.strip_prefix(base).unwrap().to_path_buf(), m.len()));
                if m.is_dir() {
                    walk(&path, base, skip, out);
                }
            }
        }
        walk(self.dir.path(), self.dir.path(), &self.root(), &mut out);
        out.sort();
        out
    }
    /// Runs a hostile unpack: it must fail with a refusal naming `needle`,
    /// and leave everything outside the root as it was.
    fn refused(&self, layers: &[PathBuf], needle: &str) {
        let before = self.outside();
        let e = self.unpack(layers, 1 << 30).unwrap_err();
        assert!(
            matches!(e, UnpackError::Refused { .. }) && e.to_string().contains(needle),
            "{e}"
        );
        assert_eq!(before, self.outside(), "nothing outside the root changed");
        assert_eq!(
            fs::read_to_string(self.dir.path().join("host/etc/shadow")).unwrap(),
            "root:secret:1::::::\n"
        );
    }
}

const GIB: u64 = 1 << 30;

#[test]
fn layers_apply_with_whiteouts_opaque_dirs_links_and_metadata() {
    let f = Fixture::new();
    let l1 = f.layer(
        1,
        &[
            E::Dir("etc/", 0o755),
            E::File("etc/passwd", b"root:x:0:0::/root:/bin/sh\n", 0o644),
            E::File("etc/gone", b"bye", 0o644),
            E::Dir("opq/", 0o750),
            E::File("opq/lower", b"lower", 0o644),
            E::Dir("opq/sub/", 0o755),
            E::File("opq/sub/deep", b"deep", 0o644),
            E::File("bin/busybox", b"\x7fELF", 0o755),
            E::Sym("bin/sh", "/bin/busybox"),
            E::Sym("abs", "/etc/passwd"),
            E::Owned("usr/bin/su", 0, 0),
            E::Owned("home/u/file", 1000, 1001),
            E::XattrFile(
                "usr/bin/ping",
                "security.capability",
                b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            ),
            E::Dev("dev/null"),
            E::Fifo("run/fifo"),
        ],
    );
    let l2 = f.layer(
        2,
        &[
            E::File(".wh.ignored-missing", b"", 0o644),
            E::File("etc/.wh.gone", b"", 0o644),
            // Siblings first, then the opaque marker: they must survive.
            E::File("opq/upper", b"upper", 0o644),
            E::File("opq/.wh..wh..opq", b"", 0o644),
            E::Hard("passwd-link", "etc/passwd"),
            E::Dir("etc/", 0o700),
        ],
    );
    let r = f.unpack(&[l1, l2], GIB).unwrap();
    let root = f.root();
    assert_eq!(r.devices_skipped, 1);
    assert!(!root.join("dev/null").exists(), "device nodes are skipped");
    assert_eq!(
        fs::read_to_string(root.join("etc/passwd")).unwrap(),
        "root:x:0:0::/root:/bin/sh\n"
    );
    assert!(!root.join("etc/gone").exists(), "whiteout applied");
    assert!(
        !root.join("opq/lower").exists() && !root.join("opq/sub").exists(),
        "opaque dir emptied"
    );
    assert_eq!(
        fs::read_to_string(root.join("opq/upper")).unwrap(),
        "upper",
        "same-layer sibling kept"
    );
    assert_eq!(
        fs::read_link(root.join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(
        fs::read_link(root.join("abs")).unwrap(),
        Path::new("/etc/passwd"),
        "absolute symlink verbatim"
    );
    let a = fs::metadata(root.join("etc/passwd")).unwrap();
    let b = fs::metadata(root.join("passwd-link")).unwrap();
    assert_eq!(
        (a.ino(), a.nlink()),
        (b.ino(), 2),
        "hardlink to a lower layer's file"
    );
    let su = fs::metadata(root.join("usr/bin/su")).unwrap();
    assert_eq!(su.permissions().mode() & 0o7777, 0o4755, "setuid kept");
    let home = fs::metadata(root.join("home/u/file")).unwrap();
    assert_eq!(
        (home.uid(), home.gid(), home.mode() & 0o7777),
        (1000, 1001, 0o4755)
    );
    let cap = xattr_get(&root.join("usr/bin/ping"), "security.capability");
    assert_eq!(
        cap.as_deref().map(|c| c.len()),
        Some(20),
        "capability xattr raw"
    );
    let etc = fs::metadata(root.join("etc")).unwrap();
    assert_eq!(
        etc.permissions().mode() & 0o7777,
        0o700,
        "the newest layer's dir mode, applied last"
    );
    assert_eq!(
        etc.mtime(),
        1_700_000_000,
        "dir times applied after its content"
    );
    assert_eq!(
        fs::metadata(root.join("opq")).unwrap().permissions().mode() & 0o777,
        0o750
    );
    let fifo = fs::symlink_metadata(root.join("run/fifo")).unwrap();
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&fifo.file_type()));
}

fn xattr_get(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::lgetxattr(p, name, &mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

#[test]
fn parent_paths_are_refused() {
    let f = Fixture::new();
    let l = f.layer(1, &[E::File("../host/etc/shadow", b"pwned", 0o644)]);
    f.refused(&[l], "`..`");
    let l = f.layer(2, &[E::File("a/../../host/x", b"pwned", 0o644)]);
    f.refused(&[l], "`..`");
}

#[test]
fn absolute_paths_are_refused() {
    let f = Fixture::new();
    let outside = f.dir.path().join("host/etc/shadow");
    let l = f.layer(1, &[E::File(outside.to_str().unwrap(), b"pwned", 0o644)]);
    f.refused(&[l], "absolute");
}

#[test]
fn a_symlinked_directory_resolves_inside_the_root() {
    let f = Fixture::new();
    let host_etc = f.dir.path().join("host/etc");
    let host_etc_s = host_etc.to_str().unwrap();
    // Absolute and climbing symlinks to the host's directory, then files
    // written through them by the next layer.
    let l1 = f.layer(
        1,
        &[
            E::Sym("abs", host_etc_s),
            E::Sym("up", "../../../../../../host/etc"),
        ],
    );
    let l2 = f.layer(2, &[E::File("abs/shadow", b"pwned", 0o644)]);
    f.refused(&[l1.clone(), l2], "symlink to nothing in the image");
    let l2 = f.layer(3, &[E::File("up/shadow", b"pwned", 0o644)]);
    fs::remove_dir_all(f.root()).unwrap();
    fs::create_dir(f.root()).unwrap();
    f.refused(&[l1.clone(), l2], "symlink to nothing in the image");

    // With the directories present in the image, the writes land there: the
    // links resolve as the guest would, inside the root.
    fs::remove_dir_all(f.root()).unwrap();
    fs::create_dir(f.root()).unwrap();
    let inside_abs = format!("{}/", host_etc_s.trim_start_matches('/'));
    let l0 = f.layer(4, &[E::Dir(&inside_abs, 0o755), E::Dir("host/etc/", 0o755)]);
    let l2 = f.layer(
        5,
        &[
            E::File("abs/shadow", b"pwned", 0o644),
            E::File("up/shadow", b"pwned2", 0o644),
        ],
    );
    let before = f.outside();
    f.unpack(&[l0, l1, l2], GIB).unwrap();
    assert_eq!(before, f.outside(), "nothing outside the root changed");
    let root = f.root();
    assert_eq!(
        fs::read_to_string(root.join(&inside_abs).join("shadow")).unwrap(),
        "pwned"
    );
    assert_eq!(
        fs::read_to_string(root.join("host/etc/shadow")).unwrap(),
        "pwned2"
    );
}

#[test]
fn hardlinks_to_host_files_are_refused() {
    let f = Fixture::new();
    let l = f.layer(1, &[E::Hard("shadow", "/etc/shadow")]);
    f.refused(&[l], "absolute");
    let l = f.layer(2, &[E::Hard("shadow", "../host/etc/shadow")]);
    f.refused(&[l], "`..`");
    // Through a symlink: it resolves inside the root, where there is none.
    let l = f.layer(
        3,
        &[
            E::Sym("h", f.dir.path().join("host").to_str().unwrap()),
            E::Hard("shadow", "h/etc/shadow"),
        ],
    );
    f.refused(&[l], "not in the image");
    let l = f.layer(4, &[E::Dir("d/", 0o755), E::Hard("dl", "d")]);
    f.refused(&[l], "directory");
}

#[test]
fn bad_whiteout_names_are_refused() {
    let f = Fixture::new();
    for (i, n) in [".wh..", ".wh...", ".wh.", "d/.wh..wh.foo", ".wh.x/y"]
        .iter()
        .enumerate()
    {
        let l = f.layer(i, &[E::File(n, b"", 0o644)]);
        f.refused(&[l], "refused");
    }
}

#[test]
fn a_decompression_bomb_stops_at_the_bound() {
    let f = Fixture::new();
    let zeros = vec![0u8; 64 << 20];
    let l = f.layer(1, &[E::File("bomb", &zeros, 0o644)]);
    assert!(
        fs::metadata(&l).unwrap().len() < 1 << 20,
        "it compresses well"
    );
    let e = f.unpack(&[l], 16 << 20).unwrap_err();
    assert!(matches!(e, UnpackError::TooBig { .. }), "{e}");
    assert!(e.to_string().contains("--size"), "{e}");
    assert!(
        !f.root().join("bomb").exists(),
        "charged before anything is written"
    );
    // Many small entries count too.
    let names: Vec<String> = (0..5000).map(|i| format!("f{i}")).collect();
    let entries: Vec<E> = names.iter().map(|n| E::File(n, b"", 0o644)).collect();
    let l = f.layer(2, &entries);
    let e = f.unpack(&[l], 16 << 20).unwrap_err();
    assert!(matches!(e, UnpackError::TooBig { .. }), "{e}");
}

#[test]
fn cancel_stops_the_unpack() {
    let f = Fixture::new();
    let l = f.layer(1, &[E::File("a", b"a", 0o644)]);
    let e = unpack_layers(&f.root(), &[l], GIB, &AtomicBool::new(true), &mut |_| {}).unwrap_err();
    assert!(matches!(e, UnpackError::Cancelled));
}
