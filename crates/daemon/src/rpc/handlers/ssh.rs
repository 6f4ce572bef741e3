//! `ssh.*` handlers: params in, one call to the VM service's verb
//! (crate::vm::verbs), result out.

use std::sync::Arc;

use crate::error::Error;
use banger_proto::methods::ssh::{KnownHostsText, SshIdentity};
use banger_proto::methods::Empty;

use crate::app::App;
use crate::caller::Ctx;
use crate::vm::verbs;

pub async fn identity(d: Arc<App>, cx: Ctx, _p: Empty) -> Result<SshIdentity, Error> {
    verbs::ssh_identity(&d.vms, &cx.caller).await
}

pub async fn known_hosts(d: Arc<App>, cx: Ctx, _p: Empty) -> Result<KnownHostsText, Error> {
    verbs::known_hosts(&d.vms, &cx.caller)
}
