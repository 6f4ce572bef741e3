//! Talking to guests: SSH keys and readiness ([`ssh`]), the guest agent
//! ([`agent`]).

pub mod agent;
pub mod ssh;
