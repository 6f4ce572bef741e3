//! The JSON-RPC front end of the domain: [`dispatch`] decodes params and finds
//! the method's handler, [`handlers`] holds one thin adapter per method
//! (params → domain call → result), [`errors`] turns domain errors into
//! protocol errors. Nothing here decides anything about VMs, images or
//! kernels; that is the domain's (crate::vm, crate::images, ...).

pub mod dispatch;
pub mod errors;
pub mod handlers;
