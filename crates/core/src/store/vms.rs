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

/// The outcome of [`Store::transition_vm`].
#[derive(Debug, Clone, PartialEq)]
pub enum Transition {
    /// Applied; the row as written.
    Done(VmRow),
    /// The VM was not in an allowed state; the row as found.
    WrongState(VmRow),
    /// No such VM.
    Missing,
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
        self.list_vms_of(None)
    }

    /// The VMs of `owner` (None: all), filtered in the query.
    pub fn list_vms_of(&self, owner: Option<u32>) -> Result<Vec<VmRow>> {
        let conn = self.lock();
        let mut st = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM vms WHERE ?1 IS NULL OR owner_uid = ?1 ORDER BY name"
        ))?;
        let rows = st
            .query_map([owner], from_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    pub fn vm_by_id(&self, id: &str) -> Result<Option<VmRow>> {
        Ok(self
            .lock()
            .query_row(
                &format!("SELECT {COLUMNS} FROM vms WHERE id = ?"),
                [id],
                from_row,
            )
            .optional()?)
    }

    /// Compare-and-set of a VM's state: if the VM is in one of `from`, moves it
    /// to `to` and applies `f`, all in one transaction. This is how lifecycle
    /// operations claim a VM: the transitional state they write is the lock,
    /// visible to every reader and surviving a crash, and no mutex is held
    /// while the slow work it guards runs.
    pub fn transition_vm(
        &self,
        id: &str,
        from: &[&str],
        to: &str,
        f: impl FnOnce(&mut VmRow),
    ) -> Result<Transition> {
        self.modify_vm(id, |row| {
            if !from.contains(&row.state.as_str()) {
                return false;
            }
            row.state = to.to_string();
            f(row);
            true
        })
    }

    /// Read-modify-write of one VM row in one transaction, whatever its state.
    pub fn update_vm(&self, id: &str, f: impl FnOnce(&mut VmRow)) -> Result<Option<VmRow>> {
        Ok(
            match self.modify_vm(id, |row| {
                f(row);
                true
            })? {
                Transition::Done(r) => Some(r),
                _ => None,
            },
        )
    }

    fn modify_vm(&self, id: &str, f: impl FnOnce(&mut VmRow) -> bool) -> Result<Transition> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let row = tx
            .query_row(
                &format!("SELECT {COLUMNS} FROM vms WHERE id = ?"),
                [id],
                from_row,
            )
            .optional()?;
        let Some(mut row) = row else {
            return Ok(Transition::Missing);
        };
        if !f(&mut row) {
            return Ok(Transition::WrongState(row));
        }
        row.updated_at = crate::timefmt::now();
        tx.execute(
            "UPDATE vms SET state = ?2, spec = ?3, runtime = ?4, updated_at = ?5 WHERE id = ?1",
            params![row.id, row.state, row.spec, row.runtime, row.updated_at],
        )?;
        tx.commit()?;
        Ok(Transition::Done(row))
    }

    pub fn delete_vm(&self, id: &str) -> Result<()> {
        self.lock().execute("DELETE FROM vms WHERE id = ?", [id])?;
        Ok(())
    }
}
