//! `ssh.*`: what the CLI needs to run OpenSSH against the caller's VMs.

use serde::{Deserialize, Serialize};

use super::{method, Empty};

method!(
    /// The caller's SSH key pair (made on first use). Only ever the caller's own.
    Identity = "ssh.identity", Empty => SshIdentity
);
method!(
    /// known_hosts lines with the pinned host keys of the caller's VMs.
    KnownHosts = "ssh.known_hosts", Empty => KnownHostsText
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SshIdentity {
    /// OpenSSH private key file contents.
    pub private_key: String,
    pub public_key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KnownHostsText {
    pub text: String,
}
