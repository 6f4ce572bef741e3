//! Bundles through the real binaries: an image and its kernel bundled on one
//! "machine" (a home with its own daemon), imported on another with the same
//! sha256 and metadata; hostile bundles refused with nothing registered and
//! nothing left in the import's temporary directory.

mod common;

use std::path::{Path, PathBuf};

use common::{fixtures, require_root, Home, NOBODY};
use serde_json::{json, Value};

fn sha256_of(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// A home with kernel `k1` and image `img1` (rootfs, /root seed, features).
fn source_home() -> (Home, PathBuf, PathBuf) {
    let h = Home::new();
    let k = h.path().join("k1.vmlinux");
    fixtures::write_stub_kernel(&k);
    h.json(&["kernel", "import", k.to_str().unwrap(), "--name", "k1"]);
    let rootfs = h.path().join("root.ext4");
    let seed = h.path().join("seed.ext4");
    fixtures::ext4(&rootfs, 16);
    fixtures::ext4(&seed, 8);
    h.json(&[
        "image",
        "register",
        "--name",
        "img1",
        "--kernel",
        "k1",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--work-seed",
        seed.to_str().unwrap(),
        "--features",
        "ssh,agent",
    ]);
    (h, rootfs, seed)
}

/// `banger ARGS` with TMPDIR set (where imports unpack).
fn with_tmp(h: &Home, tmp: &Path, args: &[&str]) -> std::process::Output {
    h.banger().env("TMPDIR", tmp).args(args).output().unwrap()
}

#[test]
fn image_and_kernel_bundles_round_trip() {
    require_root();
    let (a, rootfs, seed) = source_home();
    let out = tempfile::tempdir().unwrap();
    let ib = out.path().join("img1.tar.zst");
    let kb = out.path().join("k1.tar.zst");
    let r = a.json(&["image", "bundle", "img1", "-o", ib.to_str().unwrap()]);
    assert_eq!(r["kind"], "image", "{r}");
    assert_eq!(r["files"][0]["name"], "rootfs.ext4");
    assert_eq!(r["files"][0]["sha256"], sha256_of(&rootfs).as_str());
    assert_eq!(r["files"][1]["sha256"], sha256_of(&seed).as_str());
    assert_eq!(r["bytes"], std::fs::metadata(&ib).unwrap().len());
    let r = a.json(&["kernel", "bundle", "k1", "-o", kb.to_str().unwrap()]);
    assert_eq!(r["kind"], "kernel", "{r}");
    // Unknown names are not_found, and leave no file.
    let missing = out.path().join("none.tar.zst");
    let e = a.fails(&["image", "bundle", "nope", "-o", missing.to_str().unwrap()]);
    assert!(e.contains("not found"), "{e}");
    assert!(!missing.exists());

    // Another machine: the image wants its kernel first.
    let b = Home::new();
    let tmp = tempfile::tempdir().unwrap();
    let o = with_tmp(&b, tmp.path(), &["image", "pull", ib.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("kernel pull"), "{err}");
    let k = b.json(&["kernel", "pull", kb.to_str().unwrap()]);
    assert_eq!(k["kernel"]["name"], "k1", "{k}");
    let ka = a.json(&["kernel", "show", "k1"]);
    assert_eq!(k["kernel"]["vmlinux"]["sha256"], ka["vmlinux"]["sha256"]);
    let o = with_tmp(
        &b,
        tmp.path(),
        &["--json", "image", "pull", ib.to_str().unwrap()],
    );
    common::assert_success(&o, &["image", "pull", "bundle"]);
    let i: Value = serde_json::from_slice(&o.stdout).unwrap();
    let img = &i["image"];
    assert_eq!(img["name"], "img1", "{i}");
    assert_eq!(img["kernel"], "k1");
    assert_eq!(img["rootfs"]["sha256"], sha256_of(&rootfs).as_str());
    assert_eq!(img["work_seed"]["sha256"], sha256_of(&seed).as_str());
    assert_eq!(img["features"], json!(["ssh", "agent"]));
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "the import's temporary copy is gone"
    );
    // A second import under another name, with an explicit kernel.
    let i2 = b.json(&[
        "image",
        "pull",
        ib.to_str().unwrap(),
        "--name",
        "img2",
        "--kernel",
        "k1",
    ]);
    assert_eq!(i2["image"]["name"], "img2");
    // A kernel bundle is not an image.
    let e = b.fails(&["image", "pull", kb.to_str().unwrap(), "--name", "x"]);
    assert!(e.contains("kernel bundle"), "{e}");
}

/// A change to a bundle's manifest and members.
type Edit = dyn Fn(&mut Value, &mut Vec<(String, Vec<u8>)>);

/// Rewrites a bundle: decompress, let `edit` change (manifest JSON, members),
/// recompress.
fn rewrite(src: &Path, dst: &Path, edit: &Edit) {
    use std::io::Read;
    let raw = zstd::decode_all(std::fs::File::open(src).unwrap()).unwrap();
    let mut ar = tar::Archive::new(raw.as_slice());
    let mut members: Vec<(String, Vec<u8>)> = Vec::new();
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        members.push((name, data));
    }
    let mut manifest: Value = serde_json::from_slice(&members[0].1).unwrap();
    edit(&mut manifest, &mut members);
    members[0].1 = serde_json::to_vec(&manifest).unwrap();
    let mut t = tar::Builder::new(Vec::new());
    for (name, data) in &members {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
        h.set_cksum();
        t.append(&h, data.as_slice()).unwrap();
    }
    let tarred = t.into_inner().unwrap();
    std::fs::write(dst, zstd::encode_all(tarred.as_slice(), 1).unwrap()).unwrap();
}

#[test]
fn hostile_bundles_are_refused_and_leave_nothing() {
    require_root();
    let (a, _, _) = source_home();
    let out = tempfile::tempdir().unwrap();
    let ib = out.path().join("img1.tar.zst");
    a.json(&["image", "bundle", "img1", "-o", ib.to_str().unwrap()]);
    let cases: Vec<(&str, Box<Edit>, &str)> = vec![
        (
            "wrong sha256",
            Box::new(|m, _| m["files"][0]["sha256"] = json!("0".repeat(64))),
            "corrupt",
        ),
        (
            "a flipped byte",
            Box::new(|_, members| members[1].1[2000] ^= 1),
            "corrupt",
        ),
        (
            "manifest names ../../etc/passwd",
            Box::new(|m, members| {
                m["files"][0]["name"] = json!("../../etc/passwd");
                members[1].0 = "../../etc/passwd".into();
            }),
            "not one a image bundle holds",
        ),
        (
            "member renamed to escape",
            Box::new(|_, members| members[1].0 = "../rootfs.ext4".into()),
            "where the manifest lists",
        ),
    ];
    let b = Home::new();
    let k = b.path().join("k1.vmlinux");
    fixtures::write_stub_kernel(&k);
    b.json(&["kernel", "import", k.to_str().unwrap(), "--name", "k1"]);
    for (what, edit, want) in cases {
        let bad = out.path().join("bad.tar.zst");
        rewrite(&ib, &bad, &*edit);
        let tmp = tempfile::tempdir().unwrap();
        let o = with_tmp(
            &b,
            tmp.path(),
            &["image", "pull", bad.to_str().unwrap(), "--kernel", "k1"],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{what}: accepted");
        assert!(err.contains(want), "{what}: {err}");
        assert_eq!(
            std::fs::read_dir(tmp.path()).unwrap().count(),
            0,
            "{what}: nothing left in TMPDIR"
        );
        assert!(
            b.json(&["image", "list"]).as_array().unwrap().is_empty(),
            "{what}: nothing registered"
        );
        assert!(!Path::new("/etc/passwd.tmp").exists());
    }
}

/// Another user's private image cannot be bundled (it is not found for
/// them); its owner and root can.
#[test]
fn a_user_cannot_bundle_another_users_image() {
    require_root();
    use std::os::unix::fs::PermissionsExt;
    let mut h = Home::new();
    h.start_daemon();
    let k = h.path().join("k.vmlinux");
    fixtures::write_stub_kernel(&k);
    h.ok(&["kernel", "import", k.to_str().unwrap(), "--name", "shared"]);
    // Files a second user (uid 60001, in the socket's group) can read.
    let pub_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(pub_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let rootfs = pub_dir.path().join("root.ext4");
    fixtures::ext4(&rootfs, 8);
    std::fs::set_permissions(&rootfs, std::fs::Permissions::from_mode(0o644)).unwrap();
    let as_user = |uid: u32, args: &[&str]| {
        let home = pub_dir.path().join(format!("home-{uid}"));
        std::fs::create_dir_all(&home).unwrap();
        std::os::unix::fs::chown(&home, Some(uid), Some(NOBODY)).unwrap();
        h.banger_as(uid, NOBODY)
            .env("HOME", &home)
            .current_dir(&home)
            .args(args)
            .output()
            .unwrap()
    };
    let r = as_user(
        60001,
        &[
            "image",
            "register",
            "--name",
            "priv",
            "--kernel",
            "shared",
            "--rootfs",
            rootfs.to_str().unwrap(),
        ],
    );
    common::assert_success(&r, &["image", "register", "as 60001"]);
    let theirs = pub_dir.path().join("home-65534/priv.tar.zst");
    let o = as_user(
        NOBODY,
        &["image", "bundle", "priv", "-o", theirs.to_str().unwrap()],
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not found"),
        "{o:?}"
    );
    assert!(!theirs.exists(), "no file left by the refused bundle");
    let mine = pub_dir.path().join("home-60001/priv.tar.zst");
    let o = as_user(
        60001,
        &["image", "bundle", "priv", "-o", mine.to_str().unwrap()],
    );
    common::assert_success(&o, &["image", "bundle", "as its owner"]);
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(&mine).unwrap().uid(),
        60001,
        "the bundle is the user's file"
    );
}
