//! Rows of `kernels`.

use rusqlite::{params, OptionalExtension, Row};

use super::{opt_file, unique_violation, Result, Store, StoreError, StoredFile};

#[derive(Debug, Clone, PartialEq)]
pub struct KernelRow {
    pub id: String,
    pub name: String,
    pub owner_uid: u32,
    pub format: String,
    pub release: Option<String>,
    pub vmlinux: StoredFile,
    pub initrd: Option<StoredFile>,
    pub created_at: String,
}

const COLUMNS: &str = "id, name, owner_uid, format, release, vmlinux_path, vmlinux_size, \
     vmlinux_sha256, initrd_path, initrd_size, initrd_sha256, created_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<KernelRow> {
    Ok(KernelRow {
        id: r.get(0)?,
        name: r.get(1)?,
        owner_uid: r.get(2)?,
        format: r.get(3)?,
        release: r.get(4)?,
        vmlinux: StoredFile {
            rel_path: r.get(5)?,
            size: r.get::<_, i64>(6)? as u64,
            sha256: r.get(7)?,
        },
        initrd: opt_file(r.get(8)?, r.get(9)?, r.get(10)?),
        created_at: r.get(11)?,
    })
}

impl Store {
    pub fn insert_kernel(&self, k: &KernelRow) -> Result<()> {
        insert(&self.lock(), k)
    }

    /// Replaces the kernel `old_id` by `k` (usually of the same name) in one
    /// transaction, refused while images or VMs use the old one.
    pub fn replace_kernel(&self, old_id: &str, k: &KernelRow) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        refuse_in_use(&tx, old_id)?;
        tx.execute("DELETE FROM kernels WHERE id = ?", [old_id])?;
        insert(&tx, k)?;
        tx.commit()?;
        Ok(())
    }

    pub fn kernel_by_name(&self, name: &str) -> Result<Option<KernelRow>> {
        Ok(self
            .lock()
            .query_row(
                &format!("SELECT {COLUMNS} FROM kernels WHERE name = ?"),
                [name],
                from_row,
            )
            .optional()?)
    }

    pub fn kernel_by_id(&self, id: &str) -> Result<Option<KernelRow>> {
        Ok(self
            .lock()
            .query_row(
                &format!("SELECT {COLUMNS} FROM kernels WHERE id = ?"),
                [id],
                from_row,
            )
            .optional()?)
    }

    pub fn list_kernels(&self) -> Result<Vec<KernelRow>> {
        self.list_kernels_visible(None)
    }

    /// The kernels `uid` may see (its own and root's; None: all), filtered in
    /// the query.
    pub fn list_kernels_visible(&self, uid: Option<u32>) -> Result<Vec<KernelRow>> {
        let conn = self.lock();
        let mut st = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM kernels WHERE ?1 IS NULL OR owner_uid IN (?1, 0) ORDER BY name"
        ))?;
        let rows = st
            .query_map([uid], from_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Names of images (and VMs) that use the kernel; with `owner`, only the
    /// images that owner may see and that owner's VMs.
    pub fn kernel_users(&self, id: &str, owner: Option<u32>) -> Result<Vec<String>> {
        let conn = self.lock();
        let mut st = conn.prepare(
            "SELECT 'image ' || name FROM images WHERE kernel_id = ?1 \
               AND (?2 IS NULL OR owner_uid IN (?2, 0)) \
             UNION ALL SELECT 'vm ' || name FROM vms WHERE kernel_id = ?1 \
               AND (?2 IS NULL OR owner_uid = ?2) ORDER BY 1",
        )?;
        let rows = st
            .query_map(params![id, owner], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Deletes the row unless something still uses it (checked in the same
    /// transaction, so a concurrent image register cannot slip in between).
    pub fn delete_kernel(&self, id: &str) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        refuse_in_use(&tx, id)?;
        tx.execute("DELETE FROM kernels WHERE id = ?", [id])?;
        tx.commit()?;
        Ok(())
    }
}

fn insert(conn: &rusqlite::Connection, k: &KernelRow) -> Result<()> {
    let initrd = k.initrd.as_ref();
    conn.execute(
        &format!("INSERT INTO kernels ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"),
        params![
            k.id,
            k.name,
            k.owner_uid,
            k.format,
            k.release,
            k.vmlinux.rel_path,
            k.vmlinux.size as i64,
            k.vmlinux.sha256,
            initrd.map(|f| &f.rel_path),
            initrd.map(|f| f.size as i64),
            initrd.map(|f| &f.sha256),
            k.created_at,
        ],
    )
    .map_err(|e| unique_violation(e, "kernel", &k.name))?;
    Ok(())
}

/// `NotFound` if there is no kernel `id`, `InUse` if images or VMs use it.
fn refuse_in_use(conn: &rusqlite::Connection, id: &str) -> Result<()> {
    let name: Option<String> = conn
        .query_row("SELECT name FROM kernels WHERE id = ?", [id], |r| r.get(0))
        .optional()?;
    let Some(name) = name else {
        return Err(StoreError::NotFound {
            what: "kernel",
            key: id.to_string(),
        });
    };
    let users: Vec<String> = conn
        .prepare(
            "SELECT 'image ' || name FROM images WHERE kernel_id = ?1 \
             UNION ALL SELECT 'vm ' || name FROM vms WHERE kernel_id = ?1 ORDER BY 1",
        )?
        .query_map([id], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    if !users.is_empty() {
        return Err(StoreError::InUse {
            what: "kernel",
            name,
            users,
        });
    }
    Ok(())
}
