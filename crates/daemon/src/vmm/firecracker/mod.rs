//! The Firecracker backend's building blocks: [`launch`] spawns one
//! Firecracker process per VM and waits for its API socket; [`api`] is a typed
//! client for that API (the v1.12 swagger is the reference).

pub mod api;
pub mod launch;

#[cfg(test)]
mod tests;
