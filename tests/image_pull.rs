//! `banger image pull` against a real registry: Debian's `docker-registry`
//! on loopback (its own config: storage in a temp dir, no auth), images
//! pushed with `skopeo` from OCI layouts this test writes (layers are
//! tar.gz made with the `tar` crate). Blob downloads are counted in the
//! registry's access log. A small tampering proxy of the test's own stands
//! between banger and the registry for the hostile cases (a blob longer than
//! its descriptor, a blob that does not match its digest).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{fixtures, require_root, Home};
use serde_json::json;
use sha2::{Digest as _, Sha256};

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// A `docker-registry` on 127.0.0.1, ended (by pid) on drop.
struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    fn start() -> Registry {
        let bin = Path::new("/usr/bin/docker-registry");
        assert!(
            bin.exists(),
            "docker-registry is missing: apt-get install docker-registry"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  \
                 filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let child = Command::new(bin)
            .args(["serve", config.to_str().unwrap()])
            .stdout(std::fs::File::create(dir.path().join("access.log")).unwrap())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .unwrap();
        let r = Registry { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while http_get(port, "/v2/").is_none() {
            assert!(
                Instant::now() < deadline,
                "the registry did not come up: {}",
                r.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        r
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// GET requests for `blob` so far (the access log, with the app log as
    /// a fallback: both name the request's URI).
    fn blob_gets(&self, digest: &str) -> usize {
        let needle = format!("/blobs/{digest}");
        let access =
            std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        let n = access
            .lines()
            .filter(|l| l.contains("\"GET ") && l.contains(&needle))
            .count();
        if n > 0 || !access.is_empty() {
            return n;
        }
        self.log()
            .lines()
            .filter(|l| {
                l.contains("response completed")
                    && l.contains("http.request.method=GET")
                    && l.contains(&needle)
            })
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        common::kill(self.child.id() as i32, libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// A bare HTTP/1.0 GET on loopback; the status line's code.
fn http_get(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    line.split_whitespace().nth(1)?.parse().ok()
}

enum Entry<'a> {
    File(&'a str, &'a str),
    Dir(&'a str),
    Sym(&'a str, &'a str),
}

/// An uncompressed tar of `entries` and its gzip.
fn layer(entries: &[Entry]) -> (Vec<u8>, Vec<u8>) {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            Entry::File(p, content) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o755);
                h.set_size(content.len() as u64);
                b.append_data(&mut h, p, content.as_bytes()).unwrap();
            }
            Entry::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, p, std::io::empty()).unwrap();
            }
            Entry::Sym(p, t) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
        }
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (tar, gz.finish().unwrap())
}

/// Writes an OCI layout of one image (`layers`: (tar, tar.gz)) tagged `tag`
/// into `dir`; returns the layers' blob digests.
fn oci_layout(dir: &Path, tag: &str, layers: &[&(Vec<u8>, Vec<u8>)]) -> Vec<String> {
    oci_layout_for(dir, tag, layers, "amd64")
}

fn oci_layout_for(
    dir: &Path,
    tag: &str,
    layers: &[&(Vec<u8>, Vec<u8>)],
    arch: &str,
) -> Vec<String> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| {
        let h = sha256_hex(b);
        std::fs::write(blobs.join(&h), b).unwrap();
        format!("sha256:{h}")
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (tar, gz) in layers {
        diff_ids.push(format!("sha256:{}", sha256_hex(tar)));
        descs.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": put(gz),
            "size": gz.len(),
        }));
    }
    let config = serde_json::to_vec(&json!({
        "architecture": arch, "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(&config), "size": config.len()},
        "layers": descs,
    }))
    .unwrap();
    let m = put(&manifest);
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    std::fs::write(
        dir.join("index.json"),
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": m, "size": manifest.len(),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }],
        }))
        .unwrap(),
    )
    .unwrap();
    descs
        .iter()
        .map(|d| d["digest"].as_str().unwrap().to_string())
        .collect()
}

fn push(layout: &Path, tag: &str, port: u16, name: &str) {
    let out = Command::new("skopeo")
        .args([
            "--insecure-policy",
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:{tag}", layout.display()),
            &format!("docker://127.0.0.1:{port}/{name}:{tag}"),
        ])
        .output()
        .expect("skopeo (apt-get install skopeo)");
    common::assert_success(&out, &["skopeo", "copy"]);
}

/// `cat` of a file in an ext4 image with debugfs; `None` when absent.
fn ext4_cat(img: &str, path: &str) -> Option<String> {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {path}"), img])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("not found") {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ext4_ls(img: &str, path: &str) -> Vec<String> {
    let out = Command::new("debugfs")
        .args(["-R", &format!("ls -p {path}"), img])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split('/').nth(5).map(str::to_string))
        .filter(|n| !n.is_empty() && n != "." && n != "..")
        .collect()
}

fn home_with_kernel() -> Home {
    let h = common::guest::build_home();
    let k = h.path().join("stub.vmlinux");
    fixtures::write_stub_kernel(&k);
    h.json(&["kernel", "import", k.to_str().unwrap(), "--name", "stub"]);
    h
}

fn base_layer() -> (Vec<u8>, Vec<u8>) {
    layer(&[
        Entry::Dir("etc"),
        Entry::File("etc/os-release", "ID=pulltest\n"),
        Entry::File("etc/gone", "lower\n"),
        Entry::File("etc/shadow", "root:$6$x:19000:0:99999:7:::\n"),
        Entry::Dir("sbin"),
        Entry::File("sbin/init", "#!/bin/sh\n"),
        Entry::Dir("opq"),
        Entry::File("opq/lower", "lower\n"),
        Entry::Dir("usr/sbin"),
        Entry::File("usr/sbin/sshd", "not really\n"),
        Entry::Sym("bin", "usr/bin"),
        Entry::Dir("root"),
        Entry::File("root/.profile", "# root's\n"),
    ])
}

/// The files left in the state dir's scratch area.
fn scratch_left(h: &Home) -> Vec<PathBuf> {
    common::walk(&h.state().join("tmp"))
}

#[test]
fn pull_applies_layers_and_shares_the_layer_cache() {
    require_root();
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let base = base_layer();
    let top_a = layer(&[
        Entry::File("etc/.wh.gone", ""),
        Entry::File("opq/.wh..wh..opq", ""),
        Entry::File("opq/new", "upper\n"),
        Entry::File("a-file", "from a\n"),
    ]);
    let top_b = layer(&[Entry::File("b-file", "from b\n")]);
    let la = oci_layout(&work.path().join("a"), "1", &[&base, &top_a]);
    let lb = oci_layout(&work.path().join("b"), "1", &[&base, &top_b]);
    assert_eq!(la[0], lb[0], "the same base layer");
    push(&work.path().join("a"), "1", reg.port, "test/a");
    push(&work.path().join("b"), "1", reg.port, "test/b");
    let before = (
        reg.blob_gets(&la[0]),
        reg.blob_gets(&la[1]),
        reg.blob_gets(&lb[1]),
    );

    let h = home_with_kernel();
    let a_ref = format!("127.0.0.1:{}/test/a:1", reg.port);
    let r = h.json(&["image", "pull", &a_ref, "--kernel", "stub"]);
    assert_eq!(r["image"]["name"], "a-1", "{r}");
    assert_eq!(r["layers"], 2);
    assert_eq!(r["layers_cached"], 0);
    assert_eq!(r["image"]["kernel"], "stub");
    assert_eq!(r["image"]["features"], json!(["ssh", "agent", "overlay"]));
    let stages: Vec<&str> = r["operation"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    for s in [
        "resolve",
        "download",
        "unpack",
        "configure",
        "pack",
        "check",
        "commit",
    ] {
        assert!(stages.contains(&s), "{stages:?}");
    }
    let img = r["image"]["rootfs"]["path"].as_str().unwrap().to_string();
    assert_eq!(
        ext4_cat(&img, "/etc/os-release").as_deref(),
        Some("ID=pulltest\n")
    );
    assert_eq!(ext4_cat(&img, "/a-file").as_deref(), Some("from a\n"));
    assert_eq!(ext4_cat(&img, "/etc/gone"), None, "whiteout applied");
    assert_eq!(ext4_ls(&img, "/opq"), vec!["new".to_string()], "opaque dir");
    assert!(
        ext4_cat(&img, banger_proto::guest::AGENT_PATH).is_some_and(|a| a.starts_with("\x7fELF")),
        "the agent is installed"
    );
    assert_eq!(
        ext4_ls(&img, "/root"),
        Vec::<String>::new(),
        "/root moved to the work seed"
    );
    let seed = r["image"]["work_seed"]["path"].as_str().unwrap();
    assert_eq!(ext4_cat(seed, "/.profile").as_deref(), Some("# root's\n"));
    let shadow = ext4_cat(&img, "/etc/shadow").unwrap();
    assert!(
        shadow.starts_with("root:*:"),
        "root's password locked: {shadow}"
    );
    assert_eq!(
        (
            reg.blob_gets(&la[0]) - before.0,
            reg.blob_gets(&la[1]) - before.1
        ),
        (1, 1),
        "each layer downloaded once"
    );
    assert!(scratch_left(&h).is_empty(), "{:?}", scratch_left(&h));

    // The second image shares the base layer: only its own is downloaded.
    let b_ref = format!("127.0.0.1:{}/test/b:1", reg.port);
    let r = h.json(&["image", "pull", &b_ref, "--kernel", "stub", "--name", "bee"]);
    assert_eq!(r["image"]["name"], "bee");
    assert_eq!(
        (r["layers"].as_u64(), r["layers_cached"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        reg.blob_gets(&la[0]) - before.0,
        1,
        "the base layer came from the cache"
    );
    assert_eq!(reg.blob_gets(&lb[1]) - before.2, 1);
    let img = r["image"]["rootfs"]["path"].as_str().unwrap();
    assert_eq!(ext4_cat(img, "/b-file").as_deref(), Some("from b\n"));
    assert_eq!(ext4_cat(img, "/etc/gone").as_deref(), Some("lower\n"));
    assert_eq!(ext4_cat(img, "/a-file"), None);

    // The name is taken now.
    let e = h.fails(&["image", "pull", &b_ref, "--kernel", "stub", "--name", "bee"]);
    assert!(e.contains("already exists"), "{e}");
    let list = h.json(&["image", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2);
}

#[test]
fn refused_pulls_register_nothing_and_leave_nothing() {
    require_root();
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let base = base_layer();
    let evil = layer(&[Entry::File("x", "x")]);
    // A hostile path, written raw (tar's builder refuses `..`).
    let evil = {
        let mut h = tar::Header::new_ustar();
        h.as_old_mut().name[..13].copy_from_slice(b"../escaped-up");
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append(&h, &b"x"[..]).unwrap();
        let tar = b.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&tar).unwrap();
        let _ = evil;
        (tar.clone(), gz.finish().unwrap())
    };
    oci_layout(&work.path().join("evil"), "1", &[&base, &evil]);
    push(&work.path().join("evil"), "1", reg.port, "test/evil");
    let bomb_data = "\0".repeat(200 << 20);
    let bomb = layer(&[Entry::File("bomb", &bomb_data)]);
    oci_layout(&work.path().join("bomb"), "1", &[&base, &bomb]);
    push(&work.path().join("bomb"), "1", reg.port, "test/bomb");
    drop(bomb_data);
    oci_layout_for(&work.path().join("arm"), "1", &[&base], "arm64");
    push(&work.path().join("arm"), "1", reg.port, "test/arm");

    let h = home_with_kernel();
    let state_before = common::walk(&h.state().join("images"));
    let e = h.fails(&[
        "image",
        "pull",
        &format!("127.0.0.1:{}/test/evil:1", reg.port),
        "--kernel",
        "stub",
    ]);
    assert!(e.contains("`..`") && e.contains("escaped-up"), "{e}");
    assert!(!h.state().join("escaped-up").exists() && !h.state().join("tmp/escaped-up").exists());
    let e = h.fails(&[
        "image",
        "pull",
        &format!("127.0.0.1:{}/test/bomb:1", reg.port),
        "--kernel",
        "stub",
        "--size",
        "100M",
    ]);
    assert!(e.contains("more than") && e.contains("--size"), "{e}");
    let e = h.fails(&[
        "image",
        "pull",
        &format!("127.0.0.1:{}/test/arm:1", reg.port),
        "--kernel",
        "stub",
    ]);
    assert!(
        e.contains("linux/arm64") && e.contains("linux/amd64"),
        "{e}"
    );
    // Not found; a platform banger does not run; a reserved name.
    let e = h.fails(&[
        "image",
        "pull",
        &format!("127.0.0.1:{}/test/none:1", reg.port),
        "--kernel",
        "stub",
    ]);
    assert!(
        e.to_lowercase().contains("not found") || e.contains("unknown"),
        "{e}"
    );
    let out = h
        .banger_as(common::NOBODY, common::NOBODY)
        .args([
            "image",
            "pull",
            &format!("127.0.0.1:{}/test/evil:1", reg.port),
            "--kernel",
            "stub",
            "--name",
            "debian-bookworm",
        ])
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("reserved"), "{e}");

    assert_eq!(h.json(&["image", "list"]), json!([]), "nothing registered");
    assert_eq!(common::walk(&h.state().join("images")), state_before);
    assert!(scratch_left(&h).is_empty(), "{:?}", scratch_left(&h));
    let ops = h.json(&["operation", "list", "--all"]);
    let failed = ops
        .as_array()
        .unwrap()
        .iter()
        .filter(|o| o["kind"] == "image.pull" && o["state"] == "failed")
        .count();
    assert!(failed >= 3, "{ops}");
}

/// A proxy that answers each request with the registry's response, closing
/// each connection, and rewrites blob bodies as `tamper` says.
struct Proxy {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone, Copy, PartialEq)]
enum Tamper {
    /// Nothing changed.
    None,
    /// The first two requests for the blob answered `429`, then `503`.
    Busy,
    /// Half the blob, then nothing for a minute.
    Stall,
    /// One byte more than the descriptor says.
    Append,
    /// The first byte changed.
    Flip,
}

impl Proxy {
    fn start(upstream: u16, blob: String, tamper: Tamper) -> Proxy {
        Proxy::start_gated(upstream, blob, tamper, None)
    }

    /// With `gate`, the proxy is also a Bearer-token registry front: every
    /// registry request needs `Authorization: Bearer <token>` (else a 401
    /// naming the realm `/token` on this proxy), and `/token` hands out the
    /// token, to anyone or only for the given Basic credentials. Each token
    /// request's query is recorded.
    fn start_gated(upstream: u16, blob: String, tamper: Tamper, gate: Option<Gate>) -> Proxy {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let port = l.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let served = Arc::new(Mutex::new(0usize));
        let gate = gate.map(Arc::new);
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        let (blob, served, gate) = (blob.clone(), served.clone(), gate.clone());
                        std::thread::spawn(move || {
                            let _ = proxy_one(c, upstream, &blob, tamper, gate.as_ref(), port);
                            *served.lock().unwrap() += 1;
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Proxy {
            port,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Gate {
    token: String,
    /// `Authorization: Basic ...` the token server wants, if any.
    basic: Option<String>,
    queries: Mutex<Vec<String>>,
}

fn respond(c: &mut TcpStream, status: &str, headers: &[String], body: &str) -> std::io::Result<()> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.push_str(body);
    c.write_all(r.as_bytes())
}

fn proxy_one(
    mut c: TcpStream,
    upstream: u16,
    blob: &str,
    tamper: Tamper,
    gate: Option<&Arc<Gate>>,
    port: u16,
) -> std::io::Result<()> {
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    // The request head (GET/HEAD only: no body).
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if c.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let first = text.lines().next().unwrap_or("").to_string();
    let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
    let authz = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
        .map(|l| l["authorization:".len()..].trim().to_string());
    if let Some(g) = gate {
        if let Some(q) = path.strip_prefix("/token") {
            g.queries.lock().unwrap().push(q.to_string());
            if g.basic.is_some() && authz != g.basic {
                return respond(&mut c, "401 Unauthorized", &[], "{}");
            }
            let body = format!(r#"{{"token":"{0}","access_token":"{0}"}}"#, g.token);
            return respond(
                &mut c,
                "200 OK",
                &["Content-Type: application/json".into()],
                &body,
            );
        }
        if authz.as_deref() != Some(format!("Bearer {}", g.token).as_str()) {
            let challenge = format!(
                r#"WWW-Authenticate: Bearer realm="http://127.0.0.1:{port}/token",service="test-registry""#
            );
            return respond(&mut c, "401 Unauthorized", &[challenge], "{}");
        }
    }
    let is_blob = tamper != Tamper::None && text.starts_with("GET ") && first.contains(blob);
    if is_blob && tamper == Tamper::Busy {
        static BUSY: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        match BUSY.fetch_add(1, Ordering::SeqCst) {
            0 => {
                return respond(
                    &mut c,
                    "429 Too Many Requests",
                    &["Retry-After: 1".into()],
                    "{}",
                )
            }
            1 => return respond(&mut c, "503 Service Unavailable", &[], "{}"),
            _ => {}
        }
    }
    let mut lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    lines.retain(|l| {
        let l = l.to_ascii_lowercase();
        !l.starts_with("connection:") && !l.starts_with("authorization:")
    });
    let req = format!("{}\r\nConnection: close\r\n\r\n", lines.join("\r\n"));
    let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
    up.write_all(req.as_bytes())?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    if is_blob {
        let split = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let (h, body) = resp.split_at(split);
        let mut body = body.to_vec();
        match tamper {
            Tamper::Append => body.push(b'!'),
            Tamper::Flip => body[0] ^= 0xff,
            Tamper::Stall => {
                let half = body.len() / 2;
                let h = String::from_utf8_lossy(h).to_string();
                c.write_all(h.as_bytes())?;
                c.write_all(&body[..half])?;
                c.flush()?;
                std::thread::sleep(Duration::from_secs(60));
                return Ok(());
            }
            Tamper::None | Tamper::Busy => {}
        }
        let h = String::from_utf8_lossy(h)
            .split("\r\n")
            .map(|l| {
                if l.to_ascii_lowercase().starts_with("content-length:") {
                    format!("Content-Length: {}", body.len())
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\r\n");
        c.write_all(h.as_bytes())?;
        c.write_all(&body)?;
    } else {
        c.write_all(&resp)?;
    }
    Ok(())
}

#[test]
fn tampered_blobs_are_refused_and_leave_nothing() {
    require_root();
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let base = base_layer();
    let digests = oci_layout(&work.path().join("t"), "1", &[&base]);
    push(&work.path().join("t"), "1", reg.port, "test/t");
    let h = home_with_kernel();
    for (tamper, needle) in [
        (Tamper::Append, "longer than its descriptor"),
        (Tamper::Flip, "does not match its digest"),
    ] {
        let proxy = Proxy::start(reg.port, digests[0].clone(), tamper);
        let e = h.fails(&[
            "image",
            "pull",
            &format!("127.0.0.1:{}/test/t:1", proxy.port),
            "--kernel",
            "stub",
        ]);
        assert!(e.contains(needle), "{e}");
        drop(proxy);
    }
    assert_eq!(h.json(&["image", "list"]), json!([]));
    assert!(scratch_left(&h).is_empty(), "{:?}", scratch_left(&h));
    let layers = h.state().join("layers/sha256");
    assert!(
        common::walk(&layers).is_empty(),
        "no tampered blob cached: {:?}",
        common::walk(&layers)
    );

    // 429, then 503: retried with backoff, then the pull succeeds.
    let proxy = Proxy::start(reg.port, digests[0].clone(), Tamper::Busy);
    let r = h.json(&[
        "image",
        "pull",
        &format!("127.0.0.1:{}/test/t:1", proxy.port),
        "--kernel",
        "stub",
    ]);
    assert_eq!(r["layers_cached"], 0);
    assert_eq!(
        common::walk(&layers).len(),
        1,
        "the layer is cached once verified"
    );
    drop(proxy);
}

#[test]
fn bearer_tokens_and_docker_config_credentials() {
    require_root();
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    let base = base_layer();
    oci_layout(&work.path().join("t"), "1", &[&base]);
    push(&work.path().join("t"), "1", reg.port, "test/t");
    let h = home_with_kernel();

    // Anonymous: the challenge's realm hands out a token to anyone.
    let anon = Proxy::start_gated(
        reg.port,
        String::new(),
        Tamper::None,
        Some(Gate {
            token: "anon-token".into(),
            basic: None,
            queries: Mutex::new(Vec::new()),
        }),
    );
    let r = h.json(&[
        "image",
        "pull",
        &format!("127.0.0.1:{}/test/t:1", anon.port),
        "--kernel",
        "stub",
        "--name",
        "anon",
    ]);
    assert_eq!(r["image"]["name"], "anon");
    drop(anon);

    // Private: the token server wants the user's credentials, which the CLI
    // reads from their docker config and the daemon gets in the request.
    let gate = Gate {
        token: "private-token".into(),
        basic: Some("Basic dXNlcjpzM2NyZXQ=".into()), // user:s3cret
        queries: Mutex::new(Vec::new()),
    };
    let private = Proxy::start_gated(reg.port, String::new(), Tamper::None, Some(gate));
    let reference = format!("127.0.0.1:{}/test/t:1", private.port);
    let e = h.fails(&[
        "image", "pull", &reference, "--kernel", "stub", "--name", "priv",
    ]);
    assert!(e.contains("credentials") || e.contains("authoriz"), "{e}");
    let docker = h.path().join("user-home/.docker");
    std::fs::create_dir_all(&docker).unwrap();
    std::fs::write(
        docker.join("config.json"),
        serde_json::to_vec(&json!({"auths": {format!("127.0.0.1:{}", private.port): {"auth": "dXNlcjpzM2NyZXQ="}}}))
            .unwrap(),
    )
    .unwrap();
    let r = h.json(&[
        "image", "pull", &reference, "--kernel", "stub", "--name", "priv",
    ]);
    assert_eq!(r["image"]["name"], "priv");
    assert_eq!(
        r["layers_cached"], 1,
        "the layer cache is shared across registries"
    );
    drop(private);
    assert!(scratch_left(&h).is_empty(), "{:?}", scratch_left(&h));
}

/// `banger ARGS` inside the test's network namespace (where the VM's bridge
/// and the daemon started by `start_daemon` are).
fn banger_in_ns(h: &mut Home, args: &[&str]) -> std::process::Output {
    h.netns();
    h.banger_in_netns()
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// A tar writer that hashes what it writes.
struct Hashing<W: Write> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(b)?;
        self.hasher.update(&b[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The minimal Debian image's tree (from `image build`, dumped with
/// debugfs), pushed as a one-layer OCI image, pulled, bundled and imported
/// again (same sha256), booted under QEMU (TCG here), and answering `vm
/// exec` through SSH.
#[test]
fn a_pulled_debian_image_boots() {
    require_root();
    let mut h = common::guest::build_home();
    h.ok(&["kernel", "build", "--name", "e2e-kernel"]);
    h.ok(&[
        "image",
        "build",
        "debian-bookworm",
        "--variant",
        "minimal",
        "--name",
        "src",
        "--kernel",
        "e2e-kernel",
    ]);
    let src = h.json(&["image", "show", "src"]);
    let rootfs = src["rootfs"]["path"].as_str().unwrap().to_string();
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    let out = Command::new("debugfs")
        .args(["-R", &format!("rdump / {}", tree.display()), &rootfs])
        .output()
        .unwrap();
    common::assert_success(&out, &["debugfs", "rdump"]);
    let _ = std::fs::remove_dir(tree.join("lost+found"));

    // One uncompressed layer, streamed to its blob file while hashing.
    let layout = work.path().join("layout");
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let tmp = blobs.join("layer.tmp");
    let mut w = Hashing {
        inner: std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap()),
        hasher: Sha256::new(),
        len: 0,
    };
    {
        let mut b = tar::Builder::new(&mut w);
        b.follow_symlinks(false);
        b.append_dir_all(".", &tree).unwrap();
        b.finish().unwrap();
    }
    w.flush().unwrap();
    let (hex_digest, len) = (hex::encode(w.hasher.clone().finalize()), w.len);
    drop(w);
    std::fs::rename(&tmp, blobs.join(&hex_digest)).unwrap();
    let put = |b: &[u8]| {
        let h = sha256_hex(b);
        std::fs::write(blobs.join(&h), b).unwrap();
        format!("sha256:{h}")
    };
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{hex_digest}")]},
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": put(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{hex_digest}"), "size": len}],
    }))
    .unwrap();
    let m = put(&manifest);
    std::fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": m,
            "size": manifest.len(), "annotations": {"org.opencontainers.image.ref.name": "bookworm"}}]}))
        .unwrap(),
    )
    .unwrap();
    std::fs::remove_dir_all(&tree).unwrap();

    let reg = Registry::start();
    push(&layout, "bookworm", reg.port, "test/debian");
    let r = h.json(&[
        "image",
        "pull",
        &format!("127.0.0.1:{}/test/debian:bookworm", reg.port),
        "--name",
        "pulled",
        "--kernel",
        "e2e-kernel",
    ]);
    assert_eq!(
        r["image"]["features"],
        json!(["ssh", "agent", "overlay"]),
        "{r}"
    );
    drop(reg);

    // Bundled and imported again (as another machine would): the same
    // files and features; the VM below boots the imported copy, so one TCG
    // boot covers "pulled image boots" and "bundle round trip boots".
    let bundle = work.path().join("pulled.tar.zst");
    h.json(&["image", "bundle", "pulled", "-o", bundle.to_str().unwrap()]);
    let imported = h.json(&[
        "image",
        "pull",
        bundle.to_str().unwrap(),
        "--name",
        "imported",
    ]);
    for f in ["rootfs", "work_seed"] {
        assert_eq!(
            imported["image"][f]["sha256"], r["image"][f]["sha256"],
            "{f}: {imported}"
        );
    }
    assert_eq!(imported["image"]["features"], r["image"]["features"]);
    assert_eq!(imported["image"]["kernel"], "e2e-kernel");
    std::fs::remove_file(&bundle).unwrap();

    h.ok(&["daemon", "stop"]);
    h.start_daemon();
    let out = banger_in_ns(
        &mut h,
        &[
            "--json",
            "vm",
            "create",
            "--name",
            "p1",
            "--image",
            "imported",
            "--vmm",
            "qemu",
            "--vcpu",
            "2",
            "--memory",
            "1G",
            "--disk-size",
            "1G",
        ],
    );
    common::assert_success(&out, &["vm", "create"]);
    let out = banger_in_ns(
        &mut h,
        &["vm", "exec", "p1", "--", "cat", "/etc/os-release"],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let del = banger_in_ns(&mut h, &["vm", "delete", "--force", "p1"]);
    common::assert_success(&out, &["vm", "exec"]);
    assert!(text.contains("bookworm"), "{text}");
    common::assert_success(&del, &["vm", "delete"]);
}

/// Cancelling a pull in the middle of a download ends it as `cancelled` and
/// leaves no image, no scratch file and no partial blob.
#[test]
fn a_cancelled_pull_leaves_nothing() {
    require_root();
    let reg = Registry::start();
    let work = tempfile::tempdir().unwrap();
    // Incompressible enough that half the blob passes the 1 MiB progress step.
    let mut big = String::with_capacity(8 << 20);
    let mut seed = Sha256::digest(b"seed");
    while big.len() < 8 << 20 {
        seed = Sha256::digest(seed);
        big.push_str(&hex::encode(seed));
    }
    let base = layer(&[
        Entry::Dir("sbin"),
        Entry::File("sbin/init", "#!/bin/sh\n"),
        Entry::File("big", &big),
    ]);
    let digests = oci_layout(&work.path().join("s"), "1", &[&base]);
    push(&work.path().join("s"), "1", reg.port, "test/s");
    let h = home_with_kernel();
    let proxy = Proxy::start(reg.port, digests[0].clone(), Tamper::Stall);
    let mut pull = h
        .banger()
        .args([
            "image",
            "pull",
            &format!("127.0.0.1:{}/test/s:1", proxy.port),
            "--kernel",
            "stub",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        let ops = h.json(&["operation", "list"]);
        let running = ops.as_array().unwrap().iter().find(|o| {
            o["kind"] == "image.pull" && o["state"] == "running" && o["stage"] == "download"
        });
        if let Some(o) = running {
            if o["progress"]["done"].as_u64().unwrap_or(0) > 0 {
                break o["id"].as_str().unwrap().to_string();
            }
        }
        assert!(Instant::now() < deadline, "no download seen: {ops}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        !common::walk(&h.state().join("tmp")).is_empty(),
        "the download is under way in the scratch dir"
    );
    h.ok(&["operation", "cancel", &id]);
    let status = common::wait_timeout(&mut pull, Duration::from_secs(30)).expect("the CLI ends");
    assert!(!status.success());
    let op = h.json(&["operation", "show", &id]);
    assert_eq!(op["state"], "cancelled", "{op}");
    assert_eq!(h.json(&["image", "list"]), json!([]));
    assert!(scratch_left(&h).is_empty(), "{:?}", scratch_left(&h));
    assert!(common::walk(&h.state().join("layers/sha256")).is_empty());
    drop(proxy);
}
