//! The vsock transport (Firecracker): listen on a port of any CID, one thread
//! per connection.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use crate::{log, serve, Agent};

/// The host's CID (`VMADDR_CID_HOST`): connections the host makes through
/// Firecracker's vsock Unix socket come from it.
pub const CID_HOST: u32 = 2;

/// Connections served at once; more are closed on accept.
pub const MAX_CONNECTIONS: usize = 16;

/// A listening `AF_VSOCK` stream socket on `port` of any CID.
pub fn listen(port: u32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_vm is plain old data; all-zero is valid.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = libc::VMADDR_CID_ANY;
    addr.svm_port = port;
    // SAFETY: `addr` is a valid sockaddr_vm of the length given.
    let r = unsafe {
        libc::bind(
            sock.as_raw_fd(),
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: listen(2) on our socket.
    if unsafe { libc::listen(sock.as_raw_fd(), 16) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

/// Accepts connections forever, serving each on its own thread. With
/// `only_cid`, connections from any other CID are closed at once.
pub fn serve_listener(agent: Arc<Agent>, listener: OwnedFd, only_cid: Option<u32>) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let (conn, cid) = match accept(&listener) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                log!("vsock accept failed: {e}");
                thread::sleep(Duration::from_millis(200));
                continue;
            }
        };
        if only_cid.is_some_and(|want| want != cid) {
            log!("refused a vsock connection from CID {cid}");
            continue;
        }
        if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            log!("refused a vsock connection: {MAX_CONNECTIONS} already open");
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let agent = agent.clone();
        let done = active.clone();
        let spawned = thread::Builder::new()
            .name("vsock-conn".into())
            .spawn(move || {
                if let Err(e) = serve(&agent, File::from(conn)) {
                    log!("vsock connection: {e}");
                }
                done.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            active.fetch_sub(1, Ordering::SeqCst);
            log!("cannot start a connection thread: {e}");
        }
    }
}

/// accept4(2): the connection and the peer's CID.
fn accept(listener: &OwnedFd) -> io::Result<(OwnedFd, u32)> {
    // SAFETY: sockaddr_vm is plain old data; all-zero is valid.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
    // SAFETY: `addr`/`len` describe a writable buffer of that size.
    let fd = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_vm).cast(),
            &mut len,
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    Ok((unsafe { OwnedFd::from_raw_fd(fd) }, addr.svm_cid))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The listener part runs wherever the kernel has AF_VSOCK (connecting
    /// needs a VM or vsock loopback, which these machines lack).
    #[test]
    fn listens_where_vsock_exists() {
        match listen(0xBA_0001) {
            Ok(fd) => {
                // A second listener on the same port is refused.
                let again = listen(0xBA_0001).unwrap_err();
                assert_eq!(again.raw_os_error(), Some(libc::EADDRINUSE));
                drop(fd);
            }
            // A kernel without AF_VSOCK is a host that cannot test this (and
            // cannot run the agent's vsock channel): say so by failing.
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
                panic!("this kernel has no AF_VSOCK (try `modprobe vsock`): {e}")
            }
            Err(e) => panic!("{e}"),
        }
    }
}
