//! The registry of asynchronous operations (the seed's `opstate`).
//!
//! `begin` records an operation (in memory and in the store), runs its body on
//! a tracked task and returns its id at once. The body reports stages and
//! progress through an [`OpHandle`]; clients read them with `op.status` or
//! long-poll with `op.wait` (woken on every change via a watch channel);
//! `op.cancel` trips the operation's token and its flag for blocking code.
//!
//! The store gets the operation at its start and at its end (with every
//! stage's timing); stages and progress in between live in memory, because a
//! write (an fsync) per stage would cost more than some stages take. At
//! daemon start every operation the store still shows as running is marked
//! failed: a crash cut it off.
//!
//! Locks: each entry's `state` mutex is a leaf, held only to copy or update a
//! few fields; `entries` is held only to insert or look up. Neither is held
//! across an await or a store call.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::Error;
use banger_core::store::{OperationRow, Store};
use banger_core::{ids, timefmt};
use banger_proto::methods::op::{OpState, Operation, OperationInfo, Progress, StageInfo};
use banger_proto::{ErrorKind, RpcError};
use serde_json::Value;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Finished operations stay in memory this long (the store keeps them longer).
const KEEP_FINISHED: Duration = Duration::from_secs(3600);

/// The store keeps finished operations this long...
const PRUNE_AFTER: Duration = Duration::from_secs(7 * 24 * 3600);

/// ...and at most this many finished ones per user: a user who starts
/// operations in a loop cannot grow the table without bound. Pruned at
/// every `begin`.
pub const KEEP_PER_OWNER: u32 = 200;

/// After a cancel, how long a body gets to clean up after itself before it
/// is dropped. Bodies check their token between steps and undo what they
/// made; dropping is the backstop for one that does not look.
const CANCEL_GRACE: Duration = Duration::from_secs(60);

pub struct Ops {
    entries: Mutex<HashMap<String, Arc<Entry>>>,
    store: Arc<Store>,
    tracker: TaskTracker,
    grace: Duration,
}

struct Entry {
    state: Mutex<EntryState>,
    changed: watch::Sender<u64>,
    token: CancellationToken,
    flag: Arc<AtomicBool>,
}

struct EntryState {
    info: OperationInfo,
    stage_started: Instant,
    finished_at: Option<Instant>,
}

/// What an operation's body uses to report and to notice cancellation.
#[derive(Clone)]
pub struct OpHandle {
    entry: Arc<Entry>,
    store: Arc<Store>,
}

impl Ops {
    pub fn new(store: Arc<Store>) -> Ops {
        Ops::with_cancel_grace(store, CANCEL_GRACE)
    }

    pub fn with_cancel_grace(store: Arc<Store>, grace: Duration) -> Ops {
        Ops {
            entries: Mutex::new(HashMap::new()),
            store,
            tracker: TaskTracker::new(),
            grace,
        }
    }

    /// Marks operations cut off by a previous crash as failed; returns how many.
    pub fn fail_interrupted(&self) -> anyhow::Result<usize> {
        let err = RpcError::from(Error::internal(
            "interrupted: the daemon stopped while this operation ran; nothing it made was kept",
        ));
        let rows = self
            .store
            .fail_running_operations(&serde_json::to_string(&err)?, &timefmt::now())?;
        Ok(rows.len())
    }

    /// Starts `body` as a new operation of kind `O` and returns its id. The
    /// body's output type is the one the protocol promises for `O`.
    pub fn begin<O, F, Fut>(&self, target: &str, owner_uid: u32, body: F) -> String
    where
        O: Operation,
        F: FnOnce(OpHandle) -> Fut + Send + 'static,
        Fut: Future<Output = Result<O::Output, Error>> + Send + 'static,
    {
        let kind = O::KIND;
        let id = ids::new_id();
        let now = timefmt::now();
        let info = OperationInfo {
            id: id.clone(),
            kind: kind.to_string(),
            target: target.to_string(),
            owner_uid,
            state: OpState::Running,
            stage: "queued".into(),
            progress: None,
            stages: Vec::new(),
            result: None,
            error: None,
            created_at: now,
            finished_at: None,
            revision: 1,
        };
        let entry = Arc::new(Entry {
            state: Mutex::new(EntryState {
                info,
                stage_started: Instant::now(),
                finished_at: None,
            }),
            changed: watch::channel(1).0,
            token: CancellationToken::new(),
            flag: Arc::new(AtomicBool::new(false)),
        });
        let handle = OpHandle {
            entry: entry.clone(),
            store: self.store.clone(),
        };
        if let Err(e) = self
            .store
            .prune_operations(&timefmt::ago(PRUNE_AFTER), KEEP_PER_OWNER)
        {
            tracing::warn!(error = %e, "cannot prune the operations table");
        }
        handle.persist();
        {
            let mut map = lock(&self.entries);
            map.retain(|_, e| !lock(&e.state).is_expired());
            map.insert(id.clone(), entry);
        }
        let grace = self.grace;
        self.tracker.spawn(async move {
            let token = handle.entry.token.clone();
            // The body sees cancellation through its handle and cleans up
            // itself; the grace timer guarantees a cancel ends the operation
            // even if a body never looks (its future is then dropped, which
            // still runs its synchronous cleanup guards).
            let outcome = tokio::select! {
                r = body(handle.clone()) => r.and_then(|out| {
                    serde_json::to_value(out).map_err(|e| Error::internal(format!("result: {e}")))
                }),
                _ = async { token.cancelled().await; tokio::time::sleep(grace).await } => Err(Error::Cancelled),
            };
            handle.finish(outcome);
        });
        id
    }

    /// The operation, if it exists and `uid` may see it (`None` = any).
    pub fn info(&self, id: &str, uid: Option<u32>) -> Option<OperationInfo> {
        let info = match self.entry(id) {
            Some(e) => lock(&e.state).info.clone(),
            None => row_to_info(&self.store.operation(id).ok()??)?,
        };
        visible(&info, uid).then_some(info)
    }

    /// Waits until the operation's revision passes `after` or `timeout` ends.
    pub async fn wait(
        &self,
        id: &str,
        uid: Option<u32>,
        after: u64,
        timeout: Duration,
    ) -> Option<OperationInfo> {
        let Some(entry) = self.entry(id) else {
            return self.info(id, uid);
        };
        let mut rx = entry.changed.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|rev| *rev > after)).await;
        let info = lock(&entry.state).info.clone();
        visible(&info, uid).then_some(info)
    }

    /// Asks the operation to stop. Returns its info (still running until its
    /// body has cleaned up).
    pub fn cancel(&self, id: &str, uid: Option<u32>) -> Option<OperationInfo> {
        let info = self.info(id, uid)?;
        if let Some(e) = self.entry(id) {
            e.flag.store(true, Ordering::SeqCst);
            e.token.cancel();
        }
        Some(info)
    }

    /// Newest first: running ones, then finished ones from the store.
    pub fn list(&self, uid: Option<u32>, all: bool) -> anyhow::Result<Vec<OperationInfo>> {
        let since = (!all).then(|| timefmt::ago(KEEP_FINISHED));
        let mut out: Vec<OperationInfo> = Vec::new();
        for row in self.store.list_operations(since.as_deref(), 500, uid)? {
            let info = match self.entry(&row.id) {
                Some(e) => lock(&e.state).info.clone(),
                None => match row_to_info(&row) {
                    Some(i) => i,
                    None => continue,
                },
            };
            if visible(&info, uid) {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Refuses a new operation for `uid` when it already has `max` running
    /// (`[limits] running_operations`; root is exempt).
    pub fn check_limit(&self, uid: u32, max: u32) -> Result<(), Error> {
        if uid == 0 {
            return Ok(());
        }
        let running = lock(&self.entries)
            .values()
            .filter(|e| {
                let s = lock(&e.state);
                s.info.owner_uid == uid && s.info.state == OpState::Running
            })
            .count();
        if running >= max as usize {
            return Err(Error::Busy {
                message: format!(
                    "you have {running} operations running, the limit per user ([limits] \
                     running_operations = {max}); wait for one to finish"
                ),
                state: None,
            });
        }
        Ok(())
    }

    pub fn running(&self) -> usize {
        lock(&self.entries)
            .values()
            .filter(|e| lock(&e.state).info.state == OpState::Running)
            .count()
    }

    /// Cancels everything and waits (bounded) for the bodies to clean up.
    pub async fn shutdown(&self, grace: Duration) {
        for e in lock(&self.entries).values() {
            e.flag.store(true, Ordering::SeqCst);
            e.token.cancel();
        }
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("operations still running after {grace:?}; leaving them");
        }
    }

    fn entry(&self, id: &str) -> Option<Arc<Entry>> {
        lock(&self.entries).get(id).cloned()
    }
}

impl EntryState {
    fn is_expired(&self) -> bool {
        self.finished_at
            .is_some_and(|t| t.elapsed() > KEEP_FINISHED)
    }

    fn bump(&mut self) -> u64 {
        self.info.revision += 1;
        self.info.revision
    }
}

impl OpHandle {
    /// Ends the current stage (recording its duration) and starts `name`.
    pub fn stage(&self, name: &str) {
        {
            let mut st = lock(&self.entry.state);
            close_stage(&mut st);
            st.info.stage = name.to_string();
            st.info.progress = None;
            st.info.stages.push(StageInfo {
                name: name.to_string(),
                started_at: timefmt::now(),
                duration_ms: None,
            });
            st.stage_started = Instant::now();
            let rev = st.bump();
            self.entry.changed.send_replace(rev);
        }
    }

    /// Updates progress within the current stage (memory only).
    pub fn progress(&self, done: u64, total: u64, unit: &str) {
        let mut st = lock(&self.entry.state);
        st.info.progress = Some(Progress {
            done,
            total,
            unit: unit.to_string(),
        });
        let rev = st.bump();
        self.entry.changed.send_replace(rev);
    }

    /// For blocking code: set once the operation is cancelled.
    pub fn cancel_flag(&self) -> Arc<AtomicBool> {
        self.entry.flag.clone()
    }

    pub fn token(&self) -> &CancellationToken {
        &self.entry.token
    }

    /// Errors with `Cancelled` if the operation was cancelled.
    pub fn check(&self) -> Result<(), Error> {
        if self.entry.token.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }

    pub fn id(&self) -> String {
        lock(&self.entry.state).info.id.clone()
    }

    fn finish(&self, outcome: Result<Value, Error>) {
        {
            let mut st = lock(&self.entry.state);
            close_stage(&mut st);
            st.info.progress = None;
            match outcome {
                Ok(v) => {
                    st.info.state = OpState::Succeeded;
                    st.info.result = Some(v);
                }
                Err(e) => {
                    let e = crate::rpc::errors::to_rpc(e);
                    st.info.state = if e.is(ErrorKind::Cancelled) {
                        OpState::Cancelled
                    } else {
                        OpState::Failed
                    };
                    tracing::info!(op = %st.info.id, kind = %st.info.kind, error = %e, "operation ended");
                    st.info.error = Some(e);
                }
            }
            st.info.finished_at = Some(timefmt::now());
            st.finished_at = Some(Instant::now());
            let rev = st.bump();
            self.entry.changed.send_replace(rev);
        }
        self.persist();
    }

    fn persist(&self) {
        let row = info_to_row(&lock(&self.entry.state).info);
        if let Err(e) = self.store.put_operation(&row) {
            tracing::error!(op = %row.id, error = %e, "cannot record operation");
        }
    }
}

fn close_stage(st: &mut EntryState) {
    let elapsed = st.stage_started.elapsed().as_secs_f64() * 1000.0;
    if let Some(last) = st.info.stages.last_mut() {
        if last.duration_ms.is_none() {
            last.duration_ms = Some((elapsed * 1000.0).round() / 1000.0);
        }
    }
}

fn visible(info: &OperationInfo, uid: Option<u32>) -> bool {
    uid.is_none_or(|u| u == info.owner_uid)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn info_to_row(i: &OperationInfo) -> OperationRow {
    OperationRow {
        id: i.id.clone(),
        kind: i.kind.clone(),
        target: i.target.clone(),
        owner_uid: i.owner_uid,
        state: i.state.as_str().to_string(),
        stage: i.stage.clone(),
        stages: serde_json::to_string(&i.stages).unwrap_or_else(|_| "[]".into()),
        progress: i.progress.as_ref().map(to_json),
        result: i.result.as_ref().map(to_json),
        error: i.error.as_ref().map(to_json),
        created_at: i.created_at.clone(),
        finished_at: i.finished_at.clone(),
        revision: i.revision,
    }
}

fn row_to_info(r: &OperationRow) -> Option<OperationInfo> {
    let parse = |s: &Option<String>| -> Option<Value> {
        s.as_deref().and_then(|s| serde_json::from_str(s).ok())
    };
    Some(OperationInfo {
        id: r.id.clone(),
        kind: r.kind.clone(),
        target: r.target.clone(),
        owner_uid: r.owner_uid,
        state: OpState::parse(&r.state)?,
        stage: r.stage.clone(),
        progress: parse(&r.progress).and_then(|v| serde_json::from_value(v).ok()),
        stages: serde_json::from_str(&r.stages).unwrap_or_default(),
        result: parse(&r.result),
        error: parse(&r.error).and_then(|v| serde_json::from_value(v).ok()),
        created_at: r.created_at.clone(),
        finished_at: r.finished_at.clone(),
        revision: r.revision,
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

#[cfg(test)]
mod tests;
