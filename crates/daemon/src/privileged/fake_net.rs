//! A [`NetHost`] that keeps the host network as data — bridges, taps, the
//! `ip_forward` sysctl and nftables tables — records every call and fails on
//! demand. An nft transaction is interpreted object by object on a copy of
//! the tables and kept only when every object applied (all or nothing, as
//! nft does); a listing is printed back from those tables, so
//! [`crate::netfilter::current`] reads back what was written. The lifecycle
//! tests (crate::vm::tests) assert on this state: which taps exist, what the
//! tables hold.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use nftables::schema::{NfCmd, NfListObject, NfObject, Nftables};
use nftables::types::NfFamily;

use super::{BridgeChange, HostError, NetHost};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    BridgeEnsure(String, Ipv4Addr, u8),
    BridgeDelete(String),
    LinkExists(String),
    LinksWithPrefix(String),
    /// Name, bridge, isolated.
    TapCreate(String, String, bool),
    TapDelete(String),
    DefaultRouteDev,
    IpForwardEnable,
    RoutesOverlapping(Ipv4Addr, u8),
    NftApply,
    NftListTable(NfFamily, String),
}

/// A tap: the bridge it is a port of, and whether the port is isolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tap {
    pub bridge: String,
    pub isolated: bool,
}

#[derive(Debug, Clone, Default)]
pub struct State {
    /// Bridge name → (gateway, prefix length).
    pub bridges: BTreeMap<String, (Ipv4Addr, u8)>,
    pub taps: BTreeMap<String, Tap>,
    pub ip_forward: bool,
    /// (family, table) → the table's chains, rules and other objects, in
    /// the order they were added.
    tables: Vec<((NfFamily, String), Vec<NfListObject<'static>>)>,
}

pub struct FakeNet {
    /// What `default_route_dev` answers.
    pub uplink: Option<String>,
    /// What `routes_overlapping` answers.
    pub routes: Vec<String>,
    /// Fail every `tap_create` while set.
    pub fail_tap_create: AtomicBool,
    /// Fail every `nft_apply` while set (nothing is applied).
    pub fail_nft_apply: AtomicBool,
    state: Mutex<State>,
    calls: Mutex<Vec<Call>>,
}

/// The error a fake step fails with.
pub fn injected(program: &str) -> HostError {
    HostError::Command {
        program: program.into(),
        args: vec![],
        status: ExitStatus::from_raw(1 << 8),
        stderr: "injected failure".into(),
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeNet {
    pub fn new() -> FakeNet {
        FakeNet {
            uplink: Some("eth0".into()),
            routes: Vec::new(),
            fail_tap_create: AtomicBool::new(false),
            fail_nft_apply: AtomicBool::new(false),
            state: Mutex::new(State::default()),
            calls: Mutex::new(Vec::new()),
        }
    }

    pub fn calls(&self) -> Vec<Call> {
        lock(&self.calls).clone()
    }

    pub fn state(&self) -> State {
        lock(&self.state).clone()
    }

    /// The taps that exist now.
    pub fn taps(&self) -> Vec<String> {
        lock(&self.state).taps.keys().cloned().collect()
    }

    fn record(&self, c: Call) {
        lock(&self.calls).push(c);
    }
}

fn refused(what: &str) -> HostError {
    HostError::Command {
        program: "nft".into(),
        args: vec![],
        status: ExitStatus::from_raw(1 << 8),
        stderr: format!("Error: {what}"),
    }
}

type Key = (NfFamily, String);

fn table_mut<'s>(
    tables: &'s mut [(Key, Vec<NfListObject<'static>>)],
    family: NfFamily,
    name: &str,
) -> Option<&'s mut Vec<NfListObject<'static>>> {
    tables
        .iter_mut()
        .find(|((f, n), _)| *f == family && n == name)
        .map(|(_, objects)| objects)
}

/// Applies one command of a transaction to `tables`.
fn apply_one(
    tables: &mut Vec<(Key, Vec<NfListObject<'static>>)>,
    o: NfObject<'static>,
) -> Result<(), HostError> {
    let NfObject::CmdObject(cmd) = o else {
        return Err(refused("a transaction holds commands only"));
    };
    match cmd {
        NfCmd::Add(NfListObject::Table(t)) => {
            if table_mut(tables, t.family, &t.name).is_none() {
                tables.push(((t.family, t.name.into_owned()), Vec::new()));
            }
        }
        NfCmd::Delete(NfListObject::Table(t)) => {
            let before = tables.len();
            tables.retain(|((f, n), _)| !(*f == t.family && *n == t.name));
            if tables.len() == before {
                return Err(refused("Could not process rule: No such file or directory"));
            }
        }
        NfCmd::Add(NfListObject::Chain(c)) => {
            let objects = table_mut(tables, c.family, &c.table)
                .ok_or_else(|| refused("no such table for a chain"))?;
            objects.push(NfListObject::Chain(c));
        }
        NfCmd::Add(NfListObject::Rule(r)) => {
            let objects = table_mut(tables, r.family, &r.table)
                .ok_or_else(|| refused("no such table for a rule"))?;
            let chain_exists = objects
                .iter()
                .any(|o| matches!(o, NfListObject::Chain(c) if c.name == r.chain));
            if !chain_exists {
                return Err(refused("no such chain for a rule"));
            }
            objects.push(NfListObject::Rule(r));
        }
        other => return Err(refused(&format!("the fake does not apply {other:?}"))),
    }
    Ok(())
}

impl NetHost for FakeNet {
    fn bridge_ensure(
        &self,
        name: &str,
        gateway: Ipv4Addr,
        prefix_len: u8,
    ) -> Result<BridgeChange, HostError> {
        self.record(Call::BridgeEnsure(name.into(), gateway, prefix_len));
        let mut s = lock(&self.state);
        let created = !s.bridges.contains_key(name);
        s.bridges.insert(name.into(), (gateway, prefix_len));
        Ok(BridgeChange {
            created,
            address_added: created,
            brought_up: created,
            ..Default::default()
        })
    }

    fn bridge_delete(&self, name: &str) -> Result<(), HostError> {
        self.record(Call::BridgeDelete(name.into()));
        lock(&self.state).bridges.remove(name);
        Ok(())
    }

    fn link_exists(&self, name: &str) -> Result<bool, HostError> {
        self.record(Call::LinkExists(name.into()));
        let s = lock(&self.state);
        Ok(s.taps.contains_key(name) || s.bridges.contains_key(name))
    }

    fn links_with_prefix(&self, prefix: &str) -> Result<Vec<String>, HostError> {
        self.record(Call::LinksWithPrefix(prefix.into()));
        let s = lock(&self.state);
        Ok(s.taps
            .keys()
            .chain(s.bridges.keys())
            .filter(|n| n.starts_with(prefix))
            .cloned()
            .collect())
    }

    fn tap_create(&self, name: &str, bridge: &str, isolated: bool) -> Result<(), HostError> {
        self.record(Call::TapCreate(name.into(), bridge.into(), isolated));
        if self.fail_tap_create.load(Ordering::SeqCst) {
            return Err(injected("ip tuntap"));
        }
        let mut s = lock(&self.state);
        if !s.bridges.contains_key(bridge) {
            return Err(HostError::Unavailable(format!("no bridge {bridge}")));
        }
        s.taps.insert(
            name.into(),
            Tap {
                bridge: bridge.into(),
                isolated,
            },
        );
        Ok(())
    }

    fn tap_delete(&self, name: &str) -> Result<(), HostError> {
        self.record(Call::TapDelete(name.into()));
        lock(&self.state).taps.remove(name);
        Ok(())
    }

    fn default_route_dev(&self) -> Result<Option<String>, HostError> {
        self.record(Call::DefaultRouteDev);
        Ok(self.uplink.clone())
    }

    fn ip_forward_enable(&self) -> Result<(), HostError> {
        self.record(Call::IpForwardEnable);
        lock(&self.state).ip_forward = true;
        Ok(())
    }

    fn routes_overlapping(
        &self,
        net: Ipv4Addr,
        prefix: u8,
        _except_dev: Option<&str>,
    ) -> Result<Vec<String>, HostError> {
        self.record(Call::RoutesOverlapping(net, prefix));
        Ok(self.routes.clone())
    }

    fn nft_apply(&self, batch: &Nftables<'_>) -> Result<(), HostError> {
        self.record(Call::NftApply);
        if self.fail_nft_apply.load(Ordering::SeqCst) {
            return Err(injected("nft"));
        }
        // Through JSON, as nft gets it (and into owned values).
        let json = serde_json::to_vec(batch).expect("a batch serialises");
        let batch: Nftables<'static> = serde_json::from_slice(&json).expect("and reads back");
        let mut s = lock(&self.state);
        let mut tables = s.tables.clone();
        for o in batch.objects.into_owned() {
            apply_one(&mut tables, o)?;
        }
        s.tables = tables;
        Ok(())
    }

    fn nft_list_table(
        &self,
        family: NfFamily,
        table: &str,
    ) -> Result<Option<Nftables<'static>>, HostError> {
        self.record(Call::NftListTable(family, table.into()));
        let mut s = lock(&self.state);
        let Some(objects) = table_mut(&mut s.tables, family, table) else {
            return Ok(None);
        };
        let mut listing = vec![NfObject::ListObject(NfListObject::Table(
            nftables::schema::Table {
                family,
                name: table.to_string().into(),
                handle: None,
            },
        ))];
        listing.extend(objects.iter().cloned().map(NfObject::ListObject));
        Ok(Some(Nftables {
            objects: listing.into(),
        }))
    }
}
