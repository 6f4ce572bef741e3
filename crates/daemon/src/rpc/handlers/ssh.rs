//! `ssh.*` handlers.

use std::sync::Arc;

use crate::error::Error;
use banger_proto::methods::ssh::{KnownHostsText, SshIdentity};
use banger_proto::methods::Empty;

use crate::app::App;
use crate::caller::Ctx;
use crate::staging::blocking;

/// The caller's own key pair; the uid comes from SO_PEERCRED, so nobody can
/// ask for someone else's.
pub async fn identity(d: Arc<App>, cx: Ctx, _p: Empty) -> Result<SshIdentity, Error> {
    let uid = cx.caller.uid;
    blocking(move || {
        let (key, public_key) = crate::guest::ssh::user_key(&d.vms, uid)?;
        let private_key = std::fs::read_to_string(&key)
            .map_err(|e| Error::internal(format!("cannot read {}: {e}", key.display())))?;
        Ok(SshIdentity {
            private_key,
            public_key,
        })
    })
    .await
}

pub async fn known_hosts(d: Arc<App>, cx: Ctx, _p: Empty) -> Result<KnownHostsText, Error> {
    Ok(KnownHostsText {
        text: crate::guest::ssh::known_hosts(&d.vms, cx.caller.uid_filter())?,
    })
}
