//! Talking to guests: SSH keys and readiness ([`ssh`]).

pub mod ssh;
