//! `op.*` handlers: read, wait on and cancel asynchronous operations.

use std::sync::Arc;
use std::time::Duration;

use crate::error::Error;
use banger_proto::methods::op::{OpIdParams, OperationInfo, WaitParams};

use crate::app::App;
use crate::caller::Ctx;

/// Upper bound of one `op.wait`, so a forgotten client cannot pin a task.
const MAX_WAIT: Duration = Duration::from_secs(30);

fn not_found(id: &str) -> Error {
    Error::not_found("operation", id)
}

pub async fn status(d: Arc<App>, cx: Ctx, p: OpIdParams) -> Result<OperationInfo, Error> {
    d.ops
        .info(&p.id, cx.caller.uid_filter())
        .ok_or_else(|| not_found(&p.id))
}

pub async fn wait(d: Arc<App>, cx: Ctx, p: WaitParams) -> Result<OperationInfo, Error> {
    let timeout = Duration::from_millis(p.timeout_ms).min(MAX_WAIT);
    d.ops
        .wait(&p.id, cx.caller.uid_filter(), p.after_revision, timeout)
        .await
        .ok_or_else(|| not_found(&p.id))
}

pub async fn cancel(d: Arc<App>, cx: Ctx, p: OpIdParams) -> Result<OperationInfo, Error> {
    d.ops
        .cancel(&p.id, cx.caller.uid_filter())
        .ok_or_else(|| not_found(&p.id))
}
