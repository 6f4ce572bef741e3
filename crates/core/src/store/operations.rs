//! Rows of `operations`: the durable trace of asynchronous work, so a client
//! can learn what happened to an operation even across a daemon restart.

use rusqlite::{params, OptionalExtension, Row};

use super::{Result, Store};

#[derive(Debug, Clone, PartialEq)]
pub struct OperationRow {
    pub id: String,
    pub kind: String,
    pub target: String,
    pub owner_uid: u32,
    pub state: String,
    pub stage: String,
    /// JSON array of stage records.
    pub stages: String,
    pub progress: Option<String>,
    pub result: Option<String>,
    pub error: Option<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub revision: u64,
}

const COLUMNS: &str = "id, kind, target, owner_uid, state, stage, stages, progress, result, \
     error, created_at, finished_at, revision";

fn from_row(r: &Row<'_>) -> rusqlite::Result<OperationRow> {
    Ok(OperationRow {
        id: r.get(0)?,
        kind: r.get(1)?,
        target: r.get(2)?,
        owner_uid: r.get(3)?,
        state: r.get(4)?,
        stage: r.get(5)?,
        stages: r.get(6)?,
        progress: r.get(7)?,
        result: r.get(8)?,
        error: r.get(9)?,
        created_at: r.get(10)?,
        finished_at: r.get(11)?,
        revision: r.get::<_, i64>(12)? as u64,
    })
}

impl Store {
    /// Inserts or replaces the operation's row.
    pub fn put_operation(&self, o: &OperationRow) -> Result<()> {
        self.lock().execute(
            &format!(
                "INSERT OR REPLACE INTO operations ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
            ),
            params![
                o.id,
                o.kind,
                o.target,
                o.owner_uid,
                o.state,
                o.stage,
                o.stages,
                o.progress,
                o.result,
                o.error,
                o.created_at,
                o.finished_at,
                o.revision as i64,
            ],
        )?;
        Ok(())
    }

    pub fn operation(&self, id: &str) -> Result<Option<OperationRow>> {
        Ok(self
            .lock()
            .query_row(
                &format!("SELECT {COLUMNS} FROM operations WHERE id = ?"),
                [id],
                from_row,
            )
            .optional()?)
    }

    /// Newest first; `since` (RFC 3339) limits to operations created after it
    /// or still running; `owner` (None: all) to one user's. The owner filter
    /// is in the query, before the limit, so other users' rows cannot crowd
    /// out the caller's.
    pub fn list_operations(
        &self,
        since: Option<&str>,
        limit: u32,
        owner: Option<u32>,
    ) -> Result<Vec<OperationRow>> {
        let conn = self.lock();
        let mut st = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM operations \
             WHERE (?1 IS NULL OR created_at >= ?1 OR state = 'running') \
             AND (?3 IS NULL OR owner_uid = ?3) \
             ORDER BY created_at DESC, rowid DESC LIMIT ?2"
        ))?;
        let rows = st
            .query_map(params![since, limit, owner], from_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Deletes finished operations created before `before` (RFC 3339), and
    /// beyond the newest `keep_per_owner` finished ones of each owner.
    /// Running ones always stay. Returns how many rows went.
    pub fn prune_operations(&self, before: &str, keep_per_owner: u32) -> Result<usize> {
        let conn = self.lock();
        let old = conn.execute(
            "DELETE FROM operations WHERE state != 'running' AND created_at < ?1",
            [before],
        )?;
        let excess = conn.execute(
            "DELETE FROM operations WHERE rowid IN ( \
                 SELECT rowid FROM ( \
                     SELECT rowid, ROW_NUMBER() OVER ( \
                         PARTITION BY owner_uid ORDER BY created_at DESC, rowid DESC) AS n \
                     FROM operations WHERE state != 'running') \
                 WHERE n > ?1)",
            [keep_per_owner],
        )?;
        Ok(old + excess)
    }

    /// Marks every operation still recorded as running as failed with `error`
    /// (JSON), returning them: at daemon start, those were cut off by a crash.
    pub fn fail_running_operations(&self, error: &str, now: &str) -> Result<Vec<OperationRow>> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let rows: Vec<OperationRow> = tx
            .prepare(&format!(
                "SELECT {COLUMNS} FROM operations WHERE state = 'running'"
            ))?
            .query_map([], from_row)?
            .collect::<rusqlite::Result<_>>()?;
        tx.execute(
            "UPDATE operations SET state = 'failed', error = ?1, finished_at = ?2, \
             revision = revision + 1 WHERE state = 'running'",
            params![error, now],
        )?;
        tx.commit()?;
        Ok(rows)
    }
}
