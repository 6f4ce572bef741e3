//! `banger-agent`: the small program banger installs in every guest image
//! ([`AGENT_PATH`], run as root by `banger-agent.service`). It
//! answers the host's questions about the guest — [`health`], listening
//! [`ports`] — and powers the guest off cleanly on request ([`power`]). The
//! protocol (newline-delimited JSON, one response per request, in order) is
//! [`banger_proto::agent`]; [`serve`] implements it over any byte stream.
//!
//! # Two transports
//!
//! - **vsock** ([`vsock`]): Firecracker's host↔guest channel. The agent
//!   listens on port [`AGENT_VSOCK_PORT`] of any CID; the daemon connects to
//!   the VM's vsock Unix socket and sends `CONNECT 10789\n`. Only the host
//!   (CID 2) is served: other guest processes cannot reach the agent this way.
//!   One thread per connection.
//! - **virtio-serial** ([`serial`]): for QEMU, because the machines banger is
//!   developed on have no `/dev/vhost-vsock`, so a QEMU guest gets no vsock
//!   device. A virtio-serial port named [`AGENT_SERIAL_NAME`] is a point-to-point
//!   pipe to the host's chardev: it is not on any network, only the host end
//!   can talk to it, so it needs no secret. The agent opens it and serves it in
//!   a loop, reopening it after every end of file or error (the host connects
//!   and disconnects as it pleases).
//!
//! Both run when present.
//!
//! # Init mode
//!
//! Run as PID 1 (the kernel's `init=`), the agent assembles the VM's overlay
//! root and then executes systemd: see [`init`].
//!
//! The program depends on std, `serde_json`, `libc` and `rustix` only (plus
//! the protocol types) and is built as a static binary so it runs in any
//! guest userland:
//!
//! ```text
//! RUSTFLAGS="-C target-feature=+crt-static" \
//!     cargo build --release -p banger-agent --target x86_64-unknown-linux-gnu
//! ```
//!
//! [`AGENT_PATH`]: banger_proto::guest::AGENT_PATH
//! [`AGENT_VSOCK_PORT`]: banger_proto::guest::AGENT_VSOCK_PORT
//! [`AGENT_SERIAL_NAME`]: banger_proto::guest::AGENT_SERIAL_NAME

use std::sync::Arc;
use std::thread;

pub mod health;
pub mod init;
pub mod ports;
pub mod power;
pub mod serial;
pub mod serve;
pub mod vsock;

pub use serve::{serve, Agent};

/// Writes one line to stderr (journald, under systemd).
#[macro_export]
macro_rules! log {
    ($($arg:tt)*) => {
        eprintln!("banger-agent: {}", format_args!($($arg)*))
    };
}

/// The program: starts every transport that exists and serves until they all
/// end (which they do only when neither can work). Returns the exit status.
pub fn run() -> i32 {
    let agent = Arc::new(Agent::new());
    let mut threads = Vec::new();

    match vsock::listen(banger_proto::guest::AGENT_VSOCK_PORT) {
        Ok(listener) => {
            log!(
                "listening on vsock port {}",
                banger_proto::guest::AGENT_VSOCK_PORT
            );
            let agent = agent.clone();
            threads.push(
                thread::Builder::new()
                    .name("vsock".into())
                    .spawn(move || vsock::serve_listener(agent, listener, Some(vsock::CID_HOST))),
            );
        }
        Err(e) => log!("vsock unavailable: {e}"),
    }

    let serial_agent = agent.clone();
    threads.push(
        thread::Builder::new()
            .name("serial".into())
            .spawn(move || serial::run(&serial_agent)),
    );

    let mut running = 0;
    for t in threads {
        match t {
            Ok(handle) => {
                running += 1;
                let _ = handle.join();
            }
            Err(e) => log!("cannot start a transport thread: {e}"),
        }
    }
    log!("no transport left to serve ({running} ended)");
    1
}
