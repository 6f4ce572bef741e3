//! No request, however slow its work, delays another caller's
//! `daemon.status`: the daemon runs tokio on two worker threads, so two
//! requests doing blocking work on them would stop every RPC, the accept
//! loop and DNS.
//!
//! The slow work here is the VMM's version check: `firecracker_bin` is a
//! wrapper whose `--version` takes [`SLOW_VERSION`] before it runs the real
//! Firecracker. Two `vm.create.begin` requests (each checks the VMM before it
//! makes anything) are in flight on their own connections while a third
//! caller asks `daemon.status` several times; each answer must come long
//! before the creates return, and they must still be waiting when it does.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use common::raw::Raw;
use common::{require_root, Home};
use serde_json::{json, Value};

/// How long the wrapper's `--version` takes.
const SLOW_VERSION: Duration = Duration::from_secs(3);

/// A generous bound on one `daemon.status` while the creates wait: it
/// answers in about a millisecond when nothing blocks the workers, and not
/// before the version check ends (3 s) when something does.
const STATUS_BOUND: Duration = Duration::from_secs(1);

/// Whether a response has arrived on `c` (without consuming it).
fn answered(c: &Raw) -> bool {
    use rustix::net::RecvFlags;
    match rustix::net::recv(
        &c.stream,
        &mut [0u8; 1],
        RecvFlags::PEEK | RecvFlags::DONTWAIT,
    ) {
        Ok(_) => true,
        Err(rustix::io::Errno::AGAIN) => false,
        Err(e) => panic!("peek: {e}"),
    }
}

fn begin_create(h: &Home, name: &str) -> Raw {
    let mut c = Raw::connect(&h.socket());
    let req = json!({
        "jsonrpc": "2.0",
        "id": 1,
        "method": "vm.create.begin",
        "params": {"name": name, "memory_mib": 128, "disk_bytes": 128u64 << 20},
    });
    c.send(format!("{req}\n").as_bytes());
    c
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn status_answers_while_two_creates_wait_on_a_slow_vmm() {
    require_root();
    let mut h = Home::new();
    let real = banger_core::tools::find_in_path("firecracker").expect("firecracker installed");
    let slow = h.path().join("slow-version-firecracker");
    std::fs::write(
        &slow,
        format!(
            "#!/bin/sh\n[ \"$1\" = --version ] && sleep {}\nexec {} \"$@\"\n",
            SLOW_VERSION.as_secs(),
            real.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&slow, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cfg = h.path().join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!("firecracker_bin = {:?}\n{text}", slow.display().to_string()),
    )
    .unwrap();
    h.start_daemon();
    common::stub_image(&h);

    let mut status = Raw::connect(&h.socket());
    let idle = Instant::now();
    assert!(status.call(1, "daemon.status", json!({}))["result"]["pid"].is_u64());
    let idle = idle.elapsed();

    let t0 = Instant::now();
    let mut a = begin_create(&h, "slow-a");
    let mut b = begin_create(&h, "slow-b");
    // Let both requests reach the version check.
    std::thread::sleep(Duration::from_millis(300));

    let mut took = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        let r = status.call(10 + i, "daemon.status", json!({}));
        took.push(t.elapsed());
        assert!(r["result"]["pid"].is_u64(), "{r}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let pending = (!answered(&a), !answered(&b));
    let window = t0.elapsed();
    let worst = *took.iter().max().unwrap();
    eprintln!(
        "daemon.status: idle {idle:?}; with two creates in flight: median {:?}, max {worst:?} \
         (all {took:?}); creates pending after {window:?}: {pending:?}",
        median(&mut took.clone())
    );
    assert!(
        worst < STATUS_BOUND,
        "daemon.status took {worst:?} while two creates waited on the VMM check: \
         something blocks the runtime's workers ({took:?})"
    );
    assert!(
        window < SLOW_VERSION,
        "the statuses took {window:?}, longer than the version check itself"
    );
    assert_eq!(
        pending,
        (true, true),
        "a create answered before the slow version check could have ended"
    );

    // Both creates do finish, once the check has.
    let began: Vec<Value> = [&mut a, &mut b].into_iter().map(|c| c.read()).collect();
    let elapsed = t0.elapsed();
    assert!(elapsed >= SLOW_VERSION, "{elapsed:?}");
    for (r, name) in began.iter().zip(["slow-a", "slow-b"]) {
        let op = r["result"]["operation_id"]
            .as_str()
            .unwrap_or_else(|| panic!("{name}: {r}"))
            .to_string();
        common::eventually(60, &format!("{name} running"), || {
            let s = status.call(99, "op.status", json!({"id": op}));
            match s["result"]["state"].as_str() {
                Some("running") => None,
                Some("succeeded") => Some(()),
                other => panic!("{name}: operation {other:?}: {s}"),
            }
        });
    }
    for name in ["slow-a", "slow-b"] {
        h.ok(&["vm", "delete", "-f", name]);
    }
    common::assert_no_vm_leftovers(&h);
}

/// A FUSE filesystem with one regular file, `root.ext4`, whose reads are
/// never answered: what a hung FUSE or network mount looks like to the
/// daemon. Lookups, attributes and opens are answered, so a caller can open
/// the file and pass it. Dropping it stops the server and closes
/// `/dev/fuse`, which aborts the connection: pending reads then fail.
struct HungFuse {
    mountpoint: std::path::PathBuf,
    dev: Option<std::os::fd::OwnedFd>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    server: Option<std::thread::JoinHandle<()>>,
    /// How many READ requests arrived (and were left unanswered).
    reads: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

mod fuse_abi {
    //! The few parts of the kernel's FUSE protocol (linux/fuse.h) the
    //! server needs.
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const RELEASE: u32 = 18;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const INTERRUPT: u32 = 36;
    pub const BATCH_FORGET: u32 = 42;
    pub const IN_HEADER: usize = 40;
    pub const FILE_SIZE: u64 = 64 << 20;
    pub const FILE_NODE: u64 = 2;

    /// `fuse_attr`: 88 bytes.
    pub fn attr(node: u64) -> Vec<u8> {
        let (mode, size) = if node == 1 {
            (libc::S_IFDIR | 0o755, 0)
        } else {
            (libc::S_IFREG | 0o644, FILE_SIZE)
        };
        let mut a = Vec::with_capacity(88);
        for v in [node, size, size / 512, 0, 0, 0] {
            a.extend_from_slice(&v.to_ne_bytes());
        }
        for v in [0u32, 0, 0, mode, 1, 0, 0, 0, 4096, 0] {
            a.extend_from_slice(&v.to_ne_bytes());
        }
        a
    }
}

impl HungFuse {
    fn mount(at: &std::path::Path) -> HungFuse {
        use std::ffi::CString;
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        use std::os::unix::ffi::OsStrExt;
        use std::sync::atomic::{AtomicBool, AtomicUsize};
        use std::sync::Arc;

        std::fs::create_dir_all(at).unwrap();
        // SAFETY: plain syscalls on a path and flags we own.
        let fd = unsafe { libc::open(c"/dev/fuse".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        assert!(
            fd >= 0,
            "open /dev/fuse: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: fd was just opened and is owned by nobody else.
        let dev = unsafe { OwnedFd::from_raw_fd(fd) };
        let target = CString::new(at.as_os_str().as_bytes()).unwrap();
        let opts = CString::new(format!(
            "fd={},rootmode=40000,user_id=0,group_id=0,allow_other",
            dev.as_raw_fd()
        ))
        .unwrap();
        // SAFETY: valid NUL-terminated strings; the data is fuse's options.
        let r = unsafe {
            libc::mount(
                c"banger-test-hung".as_ptr(),
                target.as_ptr(),
                c"fuse".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(r, 0, "mount fuse: {}", std::io::Error::last_os_error());
        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicUsize::new(0));
        let server = {
            let dev = dev.try_clone().unwrap();
            let (stop, reads) = (stop.clone(), reads.clone());
            std::thread::spawn(move || serve(dev, &stop, &reads))
        };
        HungFuse {
            mountpoint: at.to_path_buf(),
            dev: Some(dev),
            stop,
            server: Some(server),
            reads,
        }
    }

    fn file(&self) -> std::path::PathBuf {
        self.mountpoint.join("root.ext4")
    }
}

impl Drop for HungFuse {
    fn drop(&mut self) {
        use std::os::unix::ffi::OsStrExt;
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(s) = self.server.take() {
            let _ = s.join();
        }
        let target = std::ffi::CString::new(self.mountpoint.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path; MNT_DETACH never blocks on the filesystem.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        // The last /dev/fuse descriptor: closing it aborts the connection.
        drop(self.dev.take());
    }
}

/// Answers INIT, LOOKUP, GETATTR, OPEN, FLUSH and RELEASE; leaves READ
/// unanswered; ENOSYS for the rest.
fn serve(
    dev: std::os::fd::OwnedFd,
    stop: &std::sync::atomic::AtomicBool,
    reads: &std::sync::atomic::AtomicUsize,
) {
    use fuse_abi::*;
    use std::os::fd::AsRawFd;
    use std::sync::atomic::Ordering;

    let mut buf = vec![0u8; (1 << 20) + 4096];
    while !stop.load(Ordering::SeqCst) {
        let mut pfd = libc::pollfd {
            fd: dev.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut pfd, 1, 50) } <= 0 {
            continue;
        }
        let n = match rustix::io::read(&dev, &mut buf) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
            Err(_) => return,
        };
        let req = &buf[..n];
        let u32_at = |o: usize| u32::from_ne_bytes(req[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_ne_bytes(req[o..o + 8].try_into().unwrap());
        let (opcode, unique, node) = (u32_at(4), u64_at(8), u64_at(16));
        let body = &req[IN_HEADER..];
        let reply: Option<Result<Vec<u8>, i32>> = match opcode {
            INIT => {
                let max_readahead = u32::from_ne_bytes(body[8..12].try_into().unwrap());
                let mut out = Vec::with_capacity(64);
                for v in [7u32, 31, max_readahead, 0] {
                    out.extend_from_slice(&v.to_ne_bytes());
                }
                out.extend_from_slice(&[0u8; 4]); // max_background, congestion_threshold
                out.extend_from_slice(&4096u32.to_ne_bytes()); // max_write
                out.resize(64, 0);
                Some(Ok(out))
            }
            LOOKUP => {
                let name = body.split(|&b| b == 0).next().unwrap_or_default();
                if node == 1 && name == b"root.ext4" {
                    let mut out = Vec::with_capacity(128);
                    for v in [FILE_NODE, 0, 0, 0] {
                        out.extend_from_slice(&v.to_ne_bytes());
                    }
                    out.extend_from_slice(&[0u8; 8]);
                    out.extend_from_slice(&attr(FILE_NODE));
                    Some(Ok(out))
                } else {
                    Some(Err(libc::ENOENT))
                }
            }
            GETATTR => {
                let mut out = vec![0u8; 16];
                out.extend_from_slice(&attr(node));
                Some(Ok(out))
            }
            OPEN => Some(Ok(vec![0u8; 16])),
            FLUSH | RELEASE => Some(Ok(Vec::new())),
            READ => {
                reads.fetch_add(1, Ordering::SeqCst);
                None
            }
            FORGET | BATCH_FORGET | INTERRUPT => None,
            _ => Some(Err(libc::ENOSYS)),
        };
        let Some(reply) = reply else { continue };
        let (error, payload) = match reply {
            Ok(p) => (0i32, p),
            Err(e) => (-e, Vec::new()),
        };
        let mut out = Vec::with_capacity(16 + payload.len());
        out.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&error.to_ne_bytes());
        out.extend_from_slice(&unique.to_ne_bytes());
        out.extend_from_slice(&payload);
        let _ = rustix::io::write(&dev, &out);
    }
}

/// A caller passes a file whose reads never return (on a FUSE mount that
/// does not answer): `image.register` fails with `timeout` after
/// `caller_files::READ_TIMEOUT` (10 s), naming the file, and the daemon
/// answers everyone else meanwhile.
#[test]
fn a_passed_file_that_never_answers_times_out_and_blocks_nobody() {
    require_root();
    let mut h = Home::new();
    h.start_daemon();
    common::stub_image(&h);
    let fuse = HungFuse::mount(&h.path().join("hung"));
    // Opening and inspecting it works; only reads hang.
    let md = std::fs::metadata(fuse.file()).unwrap();
    assert!(md.is_file());
    assert_eq!(md.len(), fuse_abi::FILE_SIZE);

    let local = h.path().join("local-root.ext4");
    common::fixtures::ext4(&local, 64);

    let t0 = Instant::now();
    let mut cli = h
        .banger()
        .args([
            "--json", "image", "register", "--name", "hung", "--kernel", "stub", "--rootfs",
        ])
        .arg(fuse.file())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::eventually(10, "the daemon reads the file", || {
        (fuse.reads.load(std::sync::atomic::Ordering::SeqCst) > 0).then_some(())
    });
    let mut status = Raw::connect(&h.socket());
    let mut took = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        let r = status.call(i, "daemon.status", json!({}));
        took.push(t.elapsed());
        assert!(r["result"]["pid"].is_u64(), "{r}");
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("daemon.status while a passed file hangs: {took:?}");
    assert!(took.iter().all(|t| *t < STATUS_BOUND), "{took:?}");
    // Another caller's file, on a filesystem that answers, is registered
    // meanwhile.
    h.ok(&[
        "image",
        "register",
        "--name",
        "fine",
        "--kernel",
        "stub",
        "--rootfs",
        local.to_str().unwrap(),
    ]);
    assert!(
        cli.try_wait().unwrap().is_none(),
        "the hung register is still waiting"
    );
    assert!(
        common::wait_timeout(&mut cli, Duration::from_secs(30)).is_some(),
        "the register did not give up"
    );
    let out = cli.wait_with_output().unwrap();
    let waited = t0.elapsed();
    assert!(!out.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("register gave up after {waited:?}: {text}");
    assert!(text.contains("did not finish within 10 s"), "{text}");
    assert!(text.contains("rootfs"), "{text}");
    assert!(waited >= Duration::from_secs(10), "{waited:?}");
    drop(fuse);
    // The image was not registered; the daemon carries on.
    assert!(h.fails(&["image", "show", "hung"]).contains("hung"));
    assert!(status.call(9, "daemon.status", json!({}))["result"]["pid"].is_u64());
}
