//! SSH into guests, without trust-on-first-use.
//!
//! - Each user gets one ed25519 key pair, made by the daemon on first need
//!   (`state/ssh/users/<uid>/id_ed25519`, 0600) and handed to that user's CLI
//!   over the socket (`ssh.identity`, checked by peer credentials).
//! - Each VM gets its own host key, made by the daemon at create and written,
//!   with the owner's public key as `authorized_keys`, onto the VM's work disk
//!   ([`HOST_KEY_PATH`], [`AUTHORIZED_KEYS_PATH`]) before the first boot.
//!   Images built by banger ship no host keys and point sshd at that file, so
//!   no two VMs share a key. The public half is recorded with the VM: the
//!   host key is pinned from the start, nothing is trusted on first use, and
//!   a changed key is an error, never a prompt.
//! - `ssh.known_hosts` serves the pinned keys of the caller's VMs (OpenSSH's
//!   KnownHostsCommand asks for them), so a deleted VM's entry is gone at once.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use banger_core::proc::{Cmd, ProcError};
use banger_core::store::Store;
use banger_proto::methods::ssh::SshIdentity;
use tokio::io::AsyncReadExt;

use crate::error::Error;

use crate::privileged::GuestFile;

/// Where the guest's sshd finds its host key and root's authorized keys, on
/// the work disk (the guest contract).
pub use banger_proto::guest::{AUTHORIZED_KEYS_PATH, HOST_KEY_PATH, HOST_KEY_PUB_PATH};

fn keygen(path: &Path, comment: &str) -> Result<(), Error> {
    let mut cmd = Cmd::new("ssh-keygen");
    cmd.args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path);
    match cmd.run() {
        Ok(_) => Ok(()),
        Err(e @ ProcError::Spawn { .. }) => {
            Err(Error::precondition(e.to_string()).hint("sudo apt-get install openssh-client"))
        }
        Err(e) => Err(Error::internal(e.to_string())),
    }
}

fn read(path: &Path) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::internal(format!("cannot read {}: {e}", path.display())))
}

/// The user's key pair (private key path, public key line), made if missing
/// under `state_dir`.
pub fn user_key(state_dir: &Path, uid: u32) -> Result<(PathBuf, String), Error> {
    let dir = state_dir.join("ssh/users").join(uid.to_string());
    let key = dir.join("id_ed25519");
    if !key.exists() {
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::internal(format!("cannot create {}: {e}", dir.display())))?;
        // Made under a temporary name and renamed: two first uses at once
        // cannot leave a private key without its public half.
        let tmp = dir.join(format!(".id_ed25519.{}", banger_core::ids::new_id()));
        keygen(&tmp, &format!("banger-uid-{uid}"))?;
        let mut tmp_pub = tmp.clone().into_os_string();
        tmp_pub.push(".pub");
        std::fs::rename(&tmp_pub, dir.join("id_ed25519.pub"))
            .and_then(|()| std::fs::rename(&tmp, &key))
            .map_err(|e| Error::internal(format!("cannot store the key: {e}")))?;
    }
    Ok((key, read(&dir.join("id_ed25519.pub"))?.trim().to_string()))
}

/// The user's key pair as `ssh.identity` hands it to their CLI (made if
/// missing). Blocking: files and maybe `ssh-keygen`.
pub fn identity(state_dir: &Path, uid: u32) -> Result<SshIdentity, Error> {
    let (key, public_key) = user_key(state_dir, uid)?;
    Ok(SshIdentity {
        private_key: read(&key)?,
        public_key,
    })
}

/// A fresh host key pair: (private key file contents, public key line).
pub fn new_host_key() -> Result<(Vec<u8>, String), Error> {
    let dir = tempfile::tempdir().map_err(|e| Error::internal(e.to_string()))?;
    let path = dir.path().join("host");
    keygen(&path, "banger-vm")?;
    let private = std::fs::read(&path).map_err(|e| Error::internal(e.to_string()))?;
    let public = read(&dir.path().join("host.pub"))?.trim().to_string();
    Ok((private, public))
}

/// The files that give a VM its host key and let its owner in.
pub fn guest_files(user_pub: &str, host_private: Vec<u8>, host_pub: &str) -> Vec<GuestFile> {
    let file = |path: &str, contents: Vec<u8>, mode| GuestFile {
        path: path.into(),
        contents,
        mode,
        uid: 0,
        gid: 0,
    };
    vec![
        file(
            AUTHORIZED_KEYS_PATH,
            format!("{user_pub}\n").into_bytes(),
            0o600,
        ),
        file(HOST_KEY_PATH, host_private, 0o600),
        file(
            HOST_KEY_PUB_PATH,
            format!("{host_pub}\n").into_bytes(),
            0o644,
        ),
    ]
}

/// known_hosts lines for the VMs `uid` may reach (root: all): the key type
/// and body of each pinned host key, under `<name>.vm` and its address.
pub fn known_hosts(store: &Store, uid: Option<u32>) -> Result<String, Error> {
    let mut out = String::new();
    for row in store.list_vms().map_err(Error::from)? {
        if uid.is_some_and(|u| u != row.owner_uid) {
            continue;
        }
        let vm = crate::vm::record::Vm::from_row(row)?;
        let Some(key) = &vm.runtime.ssh_host_key else {
            continue;
        };
        let mut hosts = format!("{}.vm", vm.name());
        if let Ok(Some(ip)) = store.vm_address(vm.id()) {
            hosts.push_str(&format!(",{ip}"));
        }
        // "ssh-ed25519 AAAA... comment" -> drop the comment.
        let body: Vec<&str> = key.split_whitespace().take(2).collect();
        out.push_str(&format!("{hosts} {}\n", body.join(" ")));
    }
    Ok(out)
}

/// Waits until something speaking SSH answers at `addr` (the guest's
/// ip:22), or `timeout` passes; the error says what the last try saw.
pub async fn wait_for_sshd(addr: SocketAddr, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    let mut last = String::from("no attempt");
    while start.elapsed() < timeout {
        let attempt = async {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            let mut banner = [0u8; 4];
            s.read_exact(&mut banner).await?;
            if &banner == b"SSH-" {
                Ok(())
            } else {
                Err(std::io::Error::other("not an SSH banner"))
            }
        };
        match tokio::time::timeout(Duration::from_secs(3), attempt).await {
            Ok(Ok(())) => return Ok(start.elapsed()),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no banner within 3s".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_keys_are_fresh_and_files_are_laid_out() {
        let (a_priv, a_pub) = new_host_key().unwrap();
        let (_, b_pub) = new_host_key().unwrap();
        assert!(a_pub.starts_with("ssh-ed25519 "));
        assert_ne!(a_pub, b_pub, "every VM gets its own key");
        let files = guest_files("ssh-ed25519 USER", a_priv, &a_pub);
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [AUTHORIZED_KEYS_PATH, HOST_KEY_PATH, HOST_KEY_PUB_PATH]
        );
        assert_eq!(files[0].mode, 0o600);
        assert_eq!(files[1].mode, 0o600);
        assert!(String::from_utf8_lossy(&files[1].contents).contains("OPENSSH PRIVATE KEY"));
    }

    async fn server(reply: &'static [u8]) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            while let Ok((mut s, _)) = l.accept().await {
                let _ = s.write_all(reply).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn waits_for_an_ssh_banner() {
        let ok = server(b"SSH-2.0-OpenSSH_9.2\r\n").await;
        assert!(wait_for_sshd(ok, Duration::from_secs(5)).await.is_ok());
        let http = server(b"HTTP/1.1 400 Bad\r\n").await;
        let e = wait_for_sshd(http, Duration::from_millis(500))
            .await
            .unwrap_err();
        assert!(e.contains("not an SSH banner"), "{e}");
        // A port nobody listens on: refused until the deadline.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = l.local_addr().unwrap();
        drop(l);
        assert!(wait_for_sshd(closed, Duration::from_millis(300))
            .await
            .is_err());
    }
}
