//! The VM lifecycle.
//!
//! A VM's state lives in the store (`vms.state`). Lifecycle operations claim
//! a VM by compare-and-set from a stable state (`stopped`, `running`,
//! `paused`) to a transitional one (`creating`, `starting`, `stopping`,
//! `updating`, `deleting`, `pausing`, `resuming`) and settle it when done. That claim is the per-VM lock: it is
//! held across slow work (spawn, boot, waiting for a guest), but it is not a
//! mutex — readers never wait for it, and a conflicting request fails at once
//! with `busy`. No in-memory lock is held across any slow step (see
//! ARCHITECTURE.md, "Locks").
//!
//! [`Vms`] is the service; [`verbs`] has one function per request. Modules:
//! [`access`] (lookup, claim, settle), [`create`], [`start`] (the
//! start pipeline), [`stop`] (stop/kill/restart), [`pause`]
//! (pause/resume), [`delete`], [`set`],
//! [`release`] (process end and resource release), [`reaper`] (exits and
//! start-up reconciliation), [`procs`] (live VMM processes), [`info`]
//! (list/show/stats/health), [`network`] (the network stage's seam),
//! [`disks`], [`defaults`], [`names`], [`record`], [`stages`], [`checks`]
//! (the daemon's own `doctor` checks: bridge subnet, DNS wiring).

pub mod access;
pub mod checks;
pub mod create;
pub mod defaults;
pub mod delete;
pub mod disks;
pub mod info;
pub mod names;
pub mod network;
pub mod pause;
pub mod procs;
pub mod reaper;
pub mod record;
pub mod release;
pub mod service;
pub mod set;
pub mod stages;
pub mod start;
pub mod stop;
#[cfg(test)]
mod tests;
pub mod verbs;

pub use service::Vms;
