//! The durable state: one SQLite file (`state.db`), WAL, foreign keys on,
//! `synchronous=FULL` so a write the daemon acknowledged survives a crash.
//!
//! The schema is versioned with `PRAGMA user_version`; [`migrations`] lists the
//! forward steps and [`Store::open`] applies the missing ones, each in its own
//! transaction. A database from a newer banger is refused rather than guessed at.
//! [`Store::open_read_only`] is for `doctor` and never writes.
//!
//! One connection behind a mutex: every statement is short, and serialising
//! them removes any question of SQLITE_BUSY inside the daemon. The mutex is a
//! leaf lock: nothing else is locked while it is held.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{Connection, OpenFlags};

mod images;
mod kernels;
pub mod migrations;
mod network;
mod operations;
mod vms;

pub use images::ImageRow;
pub use kernels::KernelRow;
pub use network::PortRow;
pub use operations::OperationRow;
pub use vms::{Transition, VmRow};

/// A file the store points at, relative to the state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredFile {
    pub rel_path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("state database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A unique name is taken.
    #[error("{what} {name:?} already exists")]
    AlreadyExists { what: &'static str, name: String },
    /// Other objects still refer to this one.
    #[error("{what} {name:?} is in use by {}", users.join(", "))]
    InUse {
        what: &'static str,
        name: String,
        users: Vec<String>,
    },
    /// The row does not exist.
    #[error("{what} {key:?} not found")]
    NotFound { what: &'static str, key: String },
    /// The file was written by a newer banger.
    #[error("state database {path} has schema version {found}, newer than this banger knows ({known}); upgrade banger")]
    NewerSchema {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    /// A row holds something this code cannot read.
    #[error("corrupt row in {table}: {message}")]
    Corrupt {
        table: &'static str,
        message: String,
    },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `path`.
    pub fn open(path: &Path) -> Result<Store> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations::migrate(&mut conn, path)?;
        Ok(Store {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    /// Opens without ever writing (for `doctor`). Refuses a newer schema too.
    pub fn open_read_only(path: &Path) -> Result<Store> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let found = migrations::user_version(&conn)?;
        if found > migrations::LATEST {
            return Err(StoreError::NewerSchema {
                path: path.to_path_buf(),
                found,
                known: migrations::LATEST,
            });
        }
        Ok(Store {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn schema_version(&self) -> Result<u32> {
        migrations::user_version(&self.lock())
    }

    /// `PRAGMA quick_check` plus a foreign-key check; empty means healthy.
    pub fn integrity_problems(&self) -> Result<Vec<String>> {
        let conn = self.lock();
        let mut problems: Vec<String> = conn
            .prepare("PRAGMA quick_check")?
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<_>>()?;
        problems.retain(|p| p != "ok");
        let fk: Vec<String> = conn
            .prepare("PRAGMA foreign_key_check")?
            .query_map([], |r| {
                Ok(format!(
                    "foreign key violation in {} row {}",
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?
                ))
            })?
            .collect::<rusqlite::Result<_>>()?;
        problems.extend(fk);
        Ok(problems)
    }

    /// Checkpoints the WAL so the main file is complete on its own; called at
    /// clean shutdown.
    pub fn checkpoint(&self) -> Result<()> {
        self.lock()
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (every
        // write is a transaction), so a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Maps a UNIQUE violation to `AlreadyExists`.
fn unique_violation(e: rusqlite::Error, what: &'static str, name: &str) -> StoreError {
    match &e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE
                || f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY =>
        {
            StoreError::AlreadyExists {
                what,
                name: name.to_string(),
            }
        }
        _ => StoreError::Sqlite(e),
    }
}

fn opt_file(rel: Option<String>, size: Option<i64>, sha: Option<String>) -> Option<StoredFile> {
    Some(StoredFile {
        rel_path: rel?,
        size: size? as u64,
        sha256: sha?,
    })
}

#[cfg(test)]
mod tests;
