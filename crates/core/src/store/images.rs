//! Rows of `images` and `default_images`.

use rusqlite::{params, OptionalExtension, Row};

use super::{opt_file, unique_violation, Result, Store, StoreError, StoredFile};

#[derive(Debug, Clone, PartialEq)]
pub struct ImageRow {
    pub id: String,
    pub name: String,
    pub owner_uid: u32,
    pub kernel_id: String,
    pub rootfs: StoredFile,
    pub work_seed: Option<StoredFile>,
    pub created_at: String,
    /// `ssh`, `agent`: what the guest offers (see migrations V3).
    pub features: Vec<String>,
}

impl ImageRow {
    pub fn has(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }
}

const COLUMNS: &str = "id, name, owner_uid, kernel_id, rootfs_path, rootfs_size, rootfs_sha256, \
     work_seed_path, work_seed_size, work_seed_sha256, created_at, features";

fn from_row(r: &Row<'_>) -> rusqlite::Result<ImageRow> {
    Ok(ImageRow {
        id: r.get(0)?,
        name: r.get(1)?,
        owner_uid: r.get(2)?,
        kernel_id: r.get(3)?,
        rootfs: StoredFile {
            rel_path: r.get(4)?,
            size: r.get::<_, i64>(5)? as u64,
            sha256: r.get(6)?,
        },
        work_seed: opt_file(r.get(7)?, r.get(8)?, r.get(9)?),
        created_at: r.get(10)?,
        features: r
            .get::<_, String>(11)?
            .split(',')
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

impl Store {
    pub fn insert_image(&self, i: &ImageRow) -> Result<()> {
        insert(&self.lock(), i)
    }

    /// Replaces the image `old_id` by `i` (usually of the same name) in one
    /// transaction, refused while VMs use the old one; whoever had the old
    /// one as default image gets the new one.
    pub fn replace_image(&self, old_id: &str, i: &ImageRow) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let name: Option<String> = tx
            .query_row("SELECT name FROM images WHERE id = ?", [old_id], |r| {
                r.get(0)
            })
            .optional()?;
        let Some(name) = name else {
            return Err(StoreError::NotFound {
                what: "image",
                key: old_id.to_string(),
            });
        };
        let users: Vec<String> = tx
            .prepare("SELECT 'vm ' || name FROM vms WHERE image_id = ? ORDER BY name")?
            .query_map([old_id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if !users.is_empty() {
            return Err(StoreError::InUse {
                what: "image",
                name,
                users,
            });
        }
        let defaults: Vec<u32> = tx
            .prepare("SELECT owner_uid FROM default_images WHERE image_id = ?")?
            .query_map([old_id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        tx.execute("DELETE FROM default_images WHERE image_id = ?", [old_id])?;
        tx.execute("DELETE FROM images WHERE id = ?", [old_id])?;
        insert(&tx, i)?;
        for uid in defaults {
            tx.execute(
                "INSERT INTO default_images (owner_uid, image_id) VALUES (?1, ?2)",
                params![uid, i.id],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    pub fn image_by_name(&self, name: &str) -> Result<Option<ImageRow>> {
        Ok(self
            .lock()
            .query_row(
                &format!("SELECT {COLUMNS} FROM images WHERE name = ?"),
                [name],
                from_row,
            )
            .optional()?)
    }

    pub fn image_by_id(&self, id: &str) -> Result<Option<ImageRow>> {
        Ok(self
            .lock()
            .query_row(
                &format!("SELECT {COLUMNS} FROM images WHERE id = ?"),
                [id],
                from_row,
            )
            .optional()?)
    }

    pub fn list_images(&self) -> Result<Vec<ImageRow>> {
        self.list_images_visible(None)
    }

    /// The images `uid` may see (its own and root's; None: all), filtered in
    /// the query.
    pub fn list_images_visible(&self, uid: Option<u32>) -> Result<Vec<ImageRow>> {
        let conn = self.lock();
        let mut st = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM images WHERE ?1 IS NULL OR owner_uid IN (?1, 0) ORDER BY name"
        ))?;
        let rows = st
            .query_map([uid], from_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Names of VMs that use the image; with `owner`, only that owner's VMs
    /// (what a non-root caller may see).
    pub fn image_users(&self, id: &str, owner: Option<u32>) -> Result<Vec<String>> {
        let conn = self.lock();
        let mut st = conn.prepare(
            "SELECT name FROM vms WHERE image_id = ?1 AND (?2 IS NULL OR owner_uid = ?2) \
             ORDER BY name",
        )?;
        let rows = st
            .query_map(params![id, owner], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Deletes the row unless a VM still uses it; its default markers go with it.
    pub fn delete_image(&self, id: &str) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        let name: Option<String> = tx
            .query_row("SELECT name FROM images WHERE id = ?", [id], |r| r.get(0))
            .optional()?;
        let Some(name) = name else {
            return Err(StoreError::NotFound {
                what: "image",
                key: id.to_string(),
            });
        };
        let users: Vec<String> = tx
            .prepare("SELECT 'vm ' || name FROM vms WHERE image_id = ? ORDER BY name")?
            .query_map([id], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        if !users.is_empty() {
            return Err(StoreError::InUse {
                what: "image",
                name,
                users,
            });
        }
        tx.execute("DELETE FROM images WHERE id = ?", [id])?;
        tx.commit()?;
        Ok(())
    }

    /// Makes `image_id` the default for `owner_uid`.
    pub fn set_default_image(&self, owner_uid: u32, image_id: &str) -> Result<()> {
        self.lock().execute(
            "INSERT INTO default_images (owner_uid, image_id) VALUES (?1, ?2) \
             ON CONFLICT(owner_uid) DO UPDATE SET image_id = excluded.image_id",
            params![owner_uid, image_id],
        )?;
        Ok(())
    }

    /// The image id `vm create` uses for `uid`: its own default, else root's.
    pub fn default_image_for(&self, uid: u32) -> Result<Option<String>> {
        Ok(self
            .lock()
            .query_row(
                "SELECT image_id FROM default_images WHERE owner_uid IN (?1, 0) \
                 ORDER BY owner_uid = ?1 DESC LIMIT 1",
                [uid],
                |r| r.get(0),
            )
            .optional()?)
    }
}

fn insert(conn: &rusqlite::Connection, i: &ImageRow) -> Result<()> {
    let seed = i.work_seed.as_ref();
    conn.execute(
        &format!("INSERT INTO images ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"),
        params![
            i.id,
            i.name,
            i.owner_uid,
            i.kernel_id,
            i.rootfs.rel_path,
            i.rootfs.size as i64,
            i.rootfs.sha256,
            seed.map(|f| &f.rel_path),
            seed.map(|f| f.size as i64),
            seed.map(|f| &f.sha256),
            i.created_at,
            i.features.join(","),
        ],
    )
    .map_err(|e| match e {
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY =>
        {
            StoreError::NotFound {
                what: "kernel",
                key: i.kernel_id.clone(),
            }
        }
        e => unique_violation(e, "image", &i.name),
    })?;
    Ok(())
}
