//! Host-side building blocks shared by the daemon and the CLI: where things
//! live ([`paths`]), what the user configured ([`config`]), the durable state
//! ([`store`]), file artifacts ([`artifact`]: kernel images, ext4 images,
//! atomic staging) and host diagnostics ([`doctor`]).
//!
//! Nothing here speaks JSON-RPC or holds daemon state; everything here can be
//! used from a test without a daemon.

pub mod artifact;
pub mod build_lock;
pub mod bundle;
pub mod config;
pub mod doctor;
pub mod ids;
pub mod image_build;
pub mod kernel_build;
pub mod net_alloc;
pub mod oci;
pub mod paths;
pub mod proc;
pub mod size;
pub mod store;
pub mod stub_guest;
pub mod timefmt;
pub mod tools;
pub mod vmm_select;
