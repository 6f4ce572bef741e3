//! The Firecracker backend's building blocks: [`launch`] spawns one
//! Firecracker process per VM and waits for its API socket; [`api`] is a typed
//! client for that API (the v1.12 swagger is the reference); [`vsock`] opens
//! host-initiated vsock connections through Firecracker's vsock socket.

pub mod api;
pub mod launch;
pub mod vsock;

#[cfg(test)]
mod tests;
