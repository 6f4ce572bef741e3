use std::os::unix::fs::MetadataExt;

use super::*;

fn manifest(kind: Kind, files: Vec<BundleFile>) -> Manifest {
    Manifest {
        format: FORMAT.into(),
        kind,
        name: "img".into(),
        arch: "x86_64".into(),
        files,
        kernel: Some(KernelRef {
            name: "k".into(),
            sha256: "0".repeat(64),
        }),
        features: vec!["ssh".into(), "agent".into()],
        banger_version: "test".into(),
    }
}

fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A bundle made by hand: `members` as (name, type, content), zstd'd.
fn craft(members: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
    let mut zst = zstd::Encoder::new(Vec::new(), 1).unwrap();
    {
        let mut t = tar::Builder::new(&mut zst);
        for (name, ty, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_entry_type(*ty);
            h.set_mode(0o644);
            // Raw name bytes, so `../` survives as written.
            h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
            if *ty == tar::EntryType::Symlink {
                h.set_link_name("/etc/passwd").unwrap();
            }
            h.set_cksum();
            t.append(&h, *data).unwrap();
        }
        t.finish().unwrap();
    }
    zst.finish().unwrap()
}

fn json(m: &Manifest) -> Vec<u8> {
    serde_json::to_vec(m).unwrap()
}

fn no_cancel() -> AtomicBool {
    AtomicBool::new(false)
}

/// Reads `bundle` into a fresh directory inside a parent that must stay
/// otherwise empty: (result, files left in the directory, anything beside it).
fn read_in_sandbox(bundle: &[u8]) -> (Result<Unpacked, BundleError>, usize, usize) {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("in");
    fs::create_dir(&dir).unwrap();
    let r = read(bundle, &dir, &no_cancel(), &mut |_| {});
    let inside = fs::read_dir(&dir).unwrap().count();
    let beside = fs::read_dir(parent.path()).unwrap().count() - 1;
    // Keep the dir alive until counted.
    (r, inside, beside)
}

#[test]
fn round_trip_keeps_content_names_and_holes() {
    let t = tempfile::tempdir().unwrap();
    let rootfs = t.path().join("rootfs.ext4");
    let seed = t.path().join("work-seed.ext4");
    {
        let f = File::create(&rootfs).unwrap();
        f.set_len(64 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(b"superblock", 1024).unwrap();
        f.write_all_at(b"the end", (64 << 20) - 7).unwrap();
    }
    fs::write(&seed, b"seed").unwrap();
    let files = vec![
        describe("rootfs.ext4", &rootfs).unwrap(),
        describe("work-seed.ext4", &seed).unwrap(),
    ];
    let m = manifest(Kind::Image, files);
    let mut out = Vec::new();
    let mut last = 0;
    write(
        &mut out,
        &m,
        &[rootfs.clone(), seed.clone()],
        &no_cancel(),
        &mut |n| last = n,
    )
    .unwrap();
    assert_eq!(last, (64 << 20) + 4);
    assert!(out.len() < 1 << 20, "zeros compress: {} bytes", out.len());

    let dir = t.path().join("in");
    fs::create_dir(&dir).unwrap();
    let u = read(out.as_slice(), &dir, &no_cancel(), &mut |_| {}).unwrap();
    assert_eq!(u.manifest, m);
    assert_eq!(
        u.files,
        vec![
            ("rootfs.ext4".to_string(), dir.join("rootfs.ext4")),
            ("work-seed.ext4".to_string(), dir.join("work-seed.ext4"))
        ]
    );
    assert_eq!(describe("rootfs.ext4", &u.files[0].1).unwrap(), m.files[0]);
    assert_eq!(fs::read(&u.files[1].1).unwrap(), b"seed");
    let meta = fs::metadata(&u.files[0].1).unwrap();
    assert_eq!(meta.len(), 64 << 20);
    assert!(meta.blocks() * 512 < 1 << 20, "the holes stay holes");
    assert_eq!(meta.mode() & 0o777, 0o600);
}

#[test]
fn a_file_that_changes_while_bundled_fails_the_bundle() {
    let t = tempfile::tempdir().unwrap();
    let f = t.path().join("vmlinux");
    fs::write(&f, b"kernel one").unwrap();
    let m = manifest(Kind::Kernel, vec![describe("vmlinux", &f).unwrap()]);
    fs::write(&f, b"kernel two").unwrap();
    let r = write(Vec::new(), &m, &[f], &no_cancel(), &mut |_| {});
    assert!(matches!(r, Err(BundleError::Corrupt { .. })), "{r:?}");
}

#[test]
fn manifests_that_name_paths_or_unknown_files_are_refused() {
    let f = |name: &str| BundleFile {
        name: name.into(),
        size: 1,
        sha256: sha(b"x"),
    };
    for (files, want) in [
        (vec![f("../../etc/passwd")], "not one a image bundle holds"),
        (vec![f("/etc/passwd")], "not one a image bundle holds"),
        (vec![f("rootfs.ext4/../x")], "not one a image bundle holds"),
        (vec![f("vmlinux")], "not one a image bundle holds"),
        (vec![f("work-seed.ext4")], "needs rootfs.ext4"),
        (vec![f("rootfs.ext4"), f("rootfs.ext4")], "listed twice"),
    ] {
        let m = manifest(Kind::Image, files);
        let err = m.check().unwrap_err().to_string();
        assert!(err.contains(want), "{err}");
        // And through read: refused before any file is written.
        let (r, inside, beside) =
            read_in_sandbox(&craft(&[(MANIFEST, tar::EntryType::Regular, &json(&m))]));
        assert!(r.unwrap_err().to_string().contains(want));
        assert_eq!((inside, beside), (0, 0));
    }
    let mut m = manifest(Kind::Image, vec![f("rootfs.ext4")]);
    m.files[0].sha256 = "Z".repeat(64);
    assert!(m.check().unwrap_err().to_string().contains("sha256"));
    let mut m = manifest(Kind::Image, vec![f("rootfs.ext4")]);
    m.arch = "aarch64".into();
    assert!(m.check().unwrap_err().to_string().contains("arch"));
    let mut m = manifest(Kind::Image, vec![f("rootfs.ext4")]);
    m.format = "banger-bundle/9".into();
    assert!(m.check().unwrap_err().to_string().contains("format"));
}

#[test]
fn hostile_bundles_are_refused_and_leave_nothing() {
    let data: &[u8] = b"rootfs bytes";
    let good = manifest(
        Kind::Image,
        vec![BundleFile {
            name: "rootfs.ext4".into(),
            size: data.len() as u64,
            sha256: sha(data),
        }],
    );
    let mj = json(&good);
    let reg = tar::EntryType::Regular;
    let mut wrong_sha = good.clone();
    wrong_sha.files[0].sha256 = sha(b"something else");
    let ws = json(&wrong_sha);
    let mut extra_field = serde_json::to_value(&good).unwrap();
    extra_field["run"] = "rm -rf /".into();
    let ef = serde_json::to_vec(&extra_field).unwrap();
    let big = vec![b' '; (MANIFEST_MAX + 1) as usize];
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "the good one",
            craft(&[(MANIFEST, reg, &mj), ("rootfs.ext4", reg, data)]),
            "",
        ),
        (
            "wrong sha256",
            craft(&[(MANIFEST, reg, &ws), ("rootfs.ext4", reg, data)]),
            "corrupt: sha256",
        ),
        (
            "longer than said",
            craft(&[
                (MANIFEST, reg, &mj),
                ("rootfs.ext4", reg, b"rootfs bytes+1"),
            ]),
            "bytes where the manifest says",
        ),
        (
            "member path escapes",
            craft(&[(MANIFEST, reg, &mj), ("../../etc/passwd", reg, data)]),
            "where the manifest lists",
        ),
        (
            "./ prefix",
            craft(&[(MANIFEST, reg, &mj), ("./rootfs.ext4", reg, data)]),
            "where the manifest lists",
        ),
        (
            "a symlink",
            craft(&[
                (MANIFEST, reg, &mj),
                ("rootfs.ext4", tar::EntryType::Symlink, b""),
            ]),
            "not a regular file",
        ),
        (
            "a hard link",
            craft(&[
                (MANIFEST, reg, &mj),
                ("rootfs.ext4", tar::EntryType::Link, b""),
            ]),
            "not a regular file",
        ),
        (
            "manifest not first",
            craft(&[("rootfs.ext4", reg, data), (MANIFEST, reg, &mj)]),
            "not the manifest",
        ),
        (
            "file missing",
            craft(&[(MANIFEST, reg, &mj)]),
            "rootfs.ext4 is missing",
        ),
        (
            "extra member",
            craft(&[
                (MANIFEST, reg, &mj),
                ("rootfs.ext4", reg, data),
                ("work-seed.ext4", reg, data),
            ]),
            "after the manifest's files",
        ),
        (
            "unknown manifest field",
            craft(&[(MANIFEST, reg, &ef), ("rootfs.ext4", reg, data)]),
            "unknown field",
        ),
        (
            "huge manifest",
            craft(&[(MANIFEST, reg, &big)]),
            "too large",
        ),
        ("not zstd", b"plain text, no bundle".to_vec(), ""),
    ];
    for (what, bundle, want) in cases {
        let (r, inside, beside) = read_in_sandbox(&bundle);
        assert_eq!(beside, 0, "{what}: nothing beside the directory");
        match (what, r) {
            ("the good one", Ok(u)) => {
                assert_eq!(inside, 1);
                assert_eq!(u.manifest, good);
            }
            ("the good one", Err(e)) => panic!("the good one: {e}"),
            (_, Ok(_)) => panic!("{what}: accepted"),
            (_, Err(e)) => {
                assert!(e.to_string().contains(want), "{what}: {e}");
                assert_eq!(inside, 0, "{what}: files left behind");
            }
        }
    }
    // Cut short: a truncated stream is an error and leaves nothing.
    let whole = craft(&[
        (MANIFEST, reg, &mj),
        ("rootfs.ext4", reg, &vec![7u8; 1 << 20]),
    ]);
    let (r, inside, _) = read_in_sandbox(&whole[..whole.len() / 2]);
    assert!(r.is_err());
    assert_eq!(inside, 0);
}

#[test]
fn cancel_stops_a_read_and_leaves_nothing() {
    let data = vec![1u8; 4 << 20];
    let m = manifest(
        Kind::Kernel,
        vec![BundleFile {
            name: "vmlinux".into(),
            size: data.len() as u64,
            sha256: sha(&data),
        }],
    );
    let bundle = craft(&[
        (MANIFEST, tar::EntryType::Regular, &json(&m)),
        ("vmlinux", tar::EntryType::Regular, &data),
    ]);
    let t = tempfile::tempdir().unwrap();
    let cancel = AtomicBool::new(false);
    let r = read(bundle.as_slice(), t.path(), &cancel, &mut |n| {
        if n > 1 << 20 {
            cancel.store(true, Ordering::Relaxed)
        }
    });
    assert!(matches!(r, Err(BundleError::Cancelled)), "{r:?}");
    assert_eq!(fs::read_dir(t.path()).unwrap().count(), 0);
}
