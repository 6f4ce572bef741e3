//! Rows of `vm_addresses` and `vm_ports`.

use std::net::Ipv4Addr;

use rusqlite::{params, OptionalExtension};

use super::{Result, Store, StoreError};

/// A published port. `host_ip` 0.0.0.0 means every host address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRow {
    pub vm_id: String,
    pub host_ip: Ipv4Addr,
    pub host_port: u16,
    pub guest_port: u16,
    pub proto: String,
}

impl Store {
    /// Gives `vm_id` the first address `pick` chooses among those not taken,
    /// in one transaction (so two creates never get the same address).
    /// `pick` returns None when the range is exhausted.
    pub fn allocate_address(
        &self,
        vm_id: &str,
        pick: impl FnOnce(&[Ipv4Addr]) -> Option<Ipv4Addr>,
    ) -> Result<Option<Ipv4Addr>> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let taken: Vec<Ipv4Addr> = tx
            .prepare("SELECT ip FROM vm_addresses")?
            .query_map([], |r| r.get::<_, String>(0))?
            .filter_map(|r| r.ok().and_then(|s| s.parse().ok()))
            .collect();
        let Some(ip) = pick(&taken) else {
            return Ok(None);
        };
        tx.execute(
            "INSERT INTO vm_addresses (vm_id, ip) VALUES (?1, ?2)",
            params![vm_id, ip.to_string()],
        )?;
        tx.commit()?;
        Ok(Some(ip))
    }

    pub fn vm_address(&self, vm_id: &str) -> Result<Option<Ipv4Addr>> {
        let s: Option<String> = self
            .lock()
            .query_row(
                "SELECT ip FROM vm_addresses WHERE vm_id = ?",
                [vm_id],
                |r| r.get(0),
            )
            .optional()?;
        Ok(s.and_then(|s| s.parse().ok()))
    }

    /// The address of the VM named `name`, for DNS.
    pub fn address_by_vm_name(&self, name: &str) -> Result<Option<Ipv4Addr>> {
        let s: Option<String> = self
            .lock()
            .query_row(
                "SELECT a.ip FROM vm_addresses a JOIN vms v ON v.id = a.vm_id WHERE v.name = ?",
                [name],
                |r| r.get(0),
            )
            .optional()?;
        Ok(s.and_then(|s| s.parse().ok()))
    }

    /// Publishes a port, refusing one that clashes with an existing mapping:
    /// same port and protocol on the same host address, or on all addresses
    /// (0.0.0.0) against any specific one.
    pub fn add_port(&self, p: &PortRow) -> Result<()> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let clash: Option<(String, String)> = tx
            .query_row(
                "SELECT v.name, p.host_ip FROM vm_ports p JOIN vms v ON v.id = p.vm_id \
                 WHERE p.host_port = ?1 AND p.proto = ?2 \
                   AND (p.host_ip = ?3 OR p.host_ip = '0.0.0.0' OR ?3 = '0.0.0.0')",
                params![p.host_port, p.proto, p.host_ip.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((vm, ip)) = clash {
            return Err(StoreError::AlreadyExists {
                what: "published port",
                name: format!("{ip}:{}/{} (used by vm {vm})", p.host_port, p.proto),
            });
        }
        tx.execute(
            "INSERT INTO vm_ports (vm_id, host_ip, host_port, guest_port, proto) VALUES (?1,?2,?3,?4,?5)",
            params![p.vm_id, p.host_ip.to_string(), p.host_port, p.guest_port, p.proto],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Unpublishes `host_port/proto` of `vm_id`; returns whether it existed.
    pub fn remove_port(&self, vm_id: &str, host_port: u16, proto: &str) -> Result<bool> {
        let n = self.lock().execute(
            "DELETE FROM vm_ports WHERE vm_id = ?1 AND host_port = ?2 AND proto = ?3",
            params![vm_id, host_port, proto],
        )?;
        Ok(n > 0)
    }

    pub fn ports_of(&self, vm_id: &str) -> Result<Vec<PortRow>> {
        let conn = self.lock();
        let mut st = conn.prepare(
            "SELECT vm_id, host_ip, host_port, guest_port, proto FROM vm_ports \
             WHERE vm_id = ? ORDER BY host_port, proto",
        )?;
        let rows = st
            .query_map([vm_id], |r| {
                Ok(PortRow {
                    vm_id: r.get(0)?,
                    host_ip: r
                        .get::<_, String>(1)?
                        .parse()
                        .unwrap_or(Ipv4Addr::UNSPECIFIED),
                    host_port: r.get(2)?,
                    guest_port: r.get(3)?,
                    proto: r.get(4)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }
}
