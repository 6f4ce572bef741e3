//! Rows of `vms`. The VM lifecycle fills `spec` and `runtime` (JSON documents
//! owned by the lifecycle code); the registry only needs to know which VMs use
//! which image and kernel.

use rusqlite::{params, OptionalExtension, Row};

use super::{unique_violation, Result, Store};

#[derive(Debug, Clone, PartialEq)]
pub struct VmRow {
    pub id: String,
    pub name: String,
    pub owner_uid: u32,
    pub image_id: String,
    pub kernel_id: String,
    pub state: String,
    pub spec: String,
    pub runtime: String,
    pub created_at: String,
    pub updated_at: String,
}

const COLUMNS: &str =
    "id, name, owner_uid, image_id, kernel_id, state, spec, runtime, created_at, updated_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<VmRow> {
    Ok(VmRow {
        id: r.get(0)?,
        name: r.get(1)?,
        owner_uid: r.get(2)?,
        image_id: r.get(3)?,
        kernel_id: r.get(4)?,
        state: r.get(5)?,
        spec: r.get(6)?,
        runtime: r.get(7)?,
        created_at: r.get(8)?,
        updated_at: r.get(9)?,
    })
}

impl Store {
    pub fn insert_vm(&self, v: &VmRow) -> Result<()> {
        self.lock()
            .execute(
                &format!("INSERT INTO vms ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)"),
                params![
                    v.id,
                    v.name,
                    v.owner_uid,
                    v.image_id,
                    v.kernel_id,
                    v.state,
                    v.spec,
                    v.runtime,
                    v.created_at,
                    v.updated_at
                ],
            )
            .map_err(|e| unique_violation(e, "vm", &v.name))?;
        Ok(())
    }

    pub fn vm_by_name(&self, name: &str) -> Result<Option<VmRow>> {
        Ok(self
            .lock()
            .query_row(
                &format!("SELECT {COLUMNS} FROM vms WHERE name = ?"),
                [name],
                from_row,
            )
            .optional()?)
    }

    pub fn list_vms(&self) -> Result<Vec<VmRow>> {
        let conn = self.lock();
        let mut st = conn.prepare(&format!("SELECT {COLUMNS} FROM vms ORDER BY name"))?;
        let rows = st
            .query_map([], from_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    pub fn delete_vm(&self, id: &str) -> Result<()> {
        self.lock().execute("DELETE FROM vms WHERE id = ?", [id])?;
        Ok(())
    }
}
