//! Forward-only schema migrations, applied in order at open.

use std::path::Path;

use rusqlite::Connection;

use super::{Result, StoreError};

/// Each entry moves the schema from version N to N+1 (index 0: empty -> 1).
pub const MIGRATIONS: &[&str] = &[V1, V2, V3];

pub const LATEST: u32 = MIGRATIONS.len() as u32;

const V1: &str = r#"
CREATE TABLE kernels (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL UNIQUE,
    owner_uid       INTEGER NOT NULL,
    format          TEXT NOT NULL,
    release         TEXT,
    vmlinux_path    TEXT NOT NULL,
    vmlinux_size    INTEGER NOT NULL,
    vmlinux_sha256  TEXT NOT NULL,
    initrd_path     TEXT,
    initrd_size     INTEGER,
    initrd_sha256   TEXT,
    created_at      TEXT NOT NULL
);

CREATE TABLE images (
    id                TEXT PRIMARY KEY,
    name              TEXT NOT NULL UNIQUE,
    owner_uid         INTEGER NOT NULL,
    kernel_id         TEXT NOT NULL REFERENCES kernels(id) ON DELETE RESTRICT,
    rootfs_path       TEXT NOT NULL,
    rootfs_size       INTEGER NOT NULL,
    rootfs_sha256     TEXT NOT NULL,
    work_seed_path    TEXT,
    work_seed_size    INTEGER,
    work_seed_sha256  TEXT,
    created_at        TEXT NOT NULL
);

-- The image `vm create` uses when none is named: per owner; root's row is the
-- fallback for everyone.
CREATE TABLE default_images (
    owner_uid  INTEGER PRIMARY KEY,
    image_id   TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE
);

CREATE TABLE vms (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    owner_uid   INTEGER NOT NULL,
    image_id    TEXT NOT NULL REFERENCES images(id) ON DELETE RESTRICT,
    kernel_id   TEXT NOT NULL REFERENCES kernels(id) ON DELETE RESTRICT,
    state       TEXT NOT NULL,
    spec        TEXT NOT NULL,
    runtime     TEXT NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE operations (
    id           TEXT PRIMARY KEY,
    kind         TEXT NOT NULL,
    target       TEXT NOT NULL,
    owner_uid    INTEGER NOT NULL,
    state        TEXT NOT NULL,
    stage        TEXT NOT NULL,
    stages       TEXT NOT NULL,
    progress     TEXT,
    result       TEXT,
    error        TEXT,
    created_at   TEXT NOT NULL,
    finished_at  TEXT,
    revision     INTEGER NOT NULL
);
CREATE INDEX operations_by_created ON operations(created_at);
"#;

/// Host networking: one address per VM (unique, freed with the VM), and the
/// ports it publishes on the host.
const V2: &str = r#"
CREATE TABLE vm_addresses (
    vm_id  TEXT PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
    ip     TEXT NOT NULL UNIQUE
);

CREATE TABLE vm_ports (
    vm_id       TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
    host_ip     TEXT NOT NULL,
    host_port   INTEGER NOT NULL,
    guest_port  INTEGER NOT NULL,
    proto       TEXT NOT NULL,
    PRIMARY KEY (host_ip, host_port, proto)
);
CREATE INDEX vm_ports_by_vm ON vm_ports(vm_id);
"#;

/// What an image's guest offers banger: `ssh` (sshd with banger's key
/// layout), `agent` (banger-agent). Comma-separated.
const V3: &str = r#"
ALTER TABLE images ADD COLUMN features TEXT NOT NULL DEFAULT '';
"#;

pub fn user_version(conn: &Connection) -> Result<u32> {
    Ok(conn.query_row("PRAGMA user_version", [], |r| r.get::<_, u32>(0))?)
}

pub fn migrate(conn: &mut Connection, path: &Path) -> Result<()> {
    let found = user_version(conn)?;
    if found > LATEST {
        return Err(StoreError::NewerSchema {
            path: path.to_path_buf(),
            found,
            known: LATEST,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as u32)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "migrated state database");
    }
    Ok(())
}
