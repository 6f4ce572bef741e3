//! banger's tables as data: the chains and rules of `table ip banger`
//! and `table bridge banger` in the `nftables` crate's schema of nft's
//! JSON, the one model used both ways (each chain and rule names its
//! family, so one [`Table`] holds both). [`Table::replace`] turns it into the transaction `nft -j -f -`
//! runs; [`Table::from_listing`] reads what `nft -j list table` prints
//! back into the same form. Two tables are equal when the kernel would do
//! the same with them: the handles nft assigns are dropped, and what nft
//! reorders or abbreviates when it prints a rule back is put in one form
//! ([`normalise`]).

use std::borrow::Cow;

use nftables::expr::{Expression, NamedExpression, SetItem};
use nftables::schema::{self, Chain, NfCmd, NfListObject, NfObject, Nftables, Rule};
use nftables::stmt::Statement;
use nftables::types::NfFamily;

/// The family of the routed table and the name of both tables.
pub const FAMILY: NfFamily = NfFamily::IP;
/// The family of the table that filters frames from the taps.
pub const BRIDGE_FAMILY: NfFamily = NfFamily::Bridge;
pub const TABLE: &str = "banger";
/// Both tables' families, in the order they are declared.
pub const FAMILIES: [NfFamily; 2] = [FAMILY, BRIDGE_FAMILY];

/// The content of banger's two tables.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Table {
    /// In the order they were declared (nft lists them in that order).
    pub chains: Vec<Chain<'static>>,
    /// Grouped by chain in the order of [`Table::chains`], each chain's
    /// rules in evaluation order.
    pub rules: Vec<Rule<'static>>,
    /// Anything else the table holds (sets, maps, counters, ...). banger
    /// writes none, so anything here is drift.
    pub other: Vec<NfListObject<'static>>,
}

fn table_object(family: NfFamily) -> NfListObject<'static> {
    NfListObject::Table(schema::Table {
        family,
        name: Cow::Borrowed(TABLE),
        handle: None,
    })
}

/// "Make sure each table exists, then delete it": a no-op when a table
/// exists, and it makes the delete succeed when it does not.
fn drop_tables() -> Vec<NfObject<'static>> {
    FAMILIES
        .iter()
        .flat_map(|&f| {
            [
                NfObject::CmdObject(NfCmd::Add(table_object(f))),
                NfObject::CmdObject(NfCmd::Delete(table_object(f))),
            ]
        })
        .collect()
}

impl Table {
    /// A table of these chains and rules, normalised.
    pub fn new(chains: Vec<Chain<'static>>, rules: Vec<Rule<'static>>) -> Table {
        let mut t = Table {
            chains,
            rules,
            other: Vec::new(),
        };
        t.normalise();
        t
    }

    /// The transaction that replaces whatever the tables hold with exactly
    /// this: delete both tables (making sure each exists first, so the
    /// delete cannot fail), declare them again, their chains, their rules.
    /// nft applies it all or nothing, so the old content, chains included,
    /// is replaced in one step.
    pub fn replace(&self) -> Nftables<'static> {
        let mut objects = drop_tables();
        for f in FAMILIES {
            objects.push(NfObject::CmdObject(NfCmd::Add(table_object(f))));
        }
        for c in &self.chains {
            objects.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Chain(
                c.clone(),
            ))));
        }
        for r in &self.rules {
            objects.push(NfObject::CmdObject(NfCmd::Add(NfListObject::Rule(
                r.clone(),
            ))));
        }
        for o in &self.other {
            objects.push(NfObject::CmdObject(NfCmd::Add(o.clone())));
        }
        Nftables {
            objects: objects.into(),
        }
    }

    /// The transaction that deletes both tables; a no-op for a missing one.
    pub fn remove() -> Nftables<'static> {
        Nftables {
            objects: drop_tables().into(),
        }
    }

    /// The tables as `nft -j list table ip banger` and `... bridge banger`
    /// printed them (either listing may be missing). Objects of other
    /// tables (there are none in such listings) and the metainfo are left
    /// out.
    pub fn from_listings(docs: impl IntoIterator<Item = Nftables<'static>>) -> Table {
        let ours = |family: NfFamily, table: &str| FAMILIES.contains(&family) && table == TABLE;
        let mut t = Table::default();
        for o in docs.into_iter().flat_map(|d| d.objects.into_owned()) {
            let NfObject::ListObject(o) = o else { continue };
            match o {
                NfListObject::Table(_) | NfListObject::MetainfoObject(_) => {}
                NfListObject::Chain(c) if ours(c.family, &c.table) => t.chains.push(c),
                NfListObject::Rule(r) if ours(r.family, &r.table) => t.rules.push(r),
                NfListObject::Chain(_) | NfListObject::Rule(_) => {}
                other => t.other.push(other),
            }
        }
        t.normalise();
        t
    }

    /// The table as one listing printed it.
    pub fn from_listing(doc: Nftables<'static>) -> Table {
        Table::from_listings([doc])
    }

    /// The rules of one chain, in order (chain names are unique across
    /// both families).
    pub fn rules_of<'t>(&'t self, chain: &'t str) -> impl Iterator<Item = &'t Rule<'static>> {
        self.rules.iter().filter(move |r| r.chain == chain)
    }

    /// Puts the table in the one form where equal means "does the same":
    /// no handles or positions; chains in declaration order (the routed
    /// table's first, as nft lists one table after the other); rules
    /// grouped by chain in chain order
    /// (keeping each chain's order, which is evaluation order); and the
    /// right-hand side of every match in canonical form ([`canonical`]).
    fn normalise(&mut self) {
        for c in &mut self.chains {
            c.handle = None;
        }
        let family_order = |f: NfFamily| FAMILIES.iter().position(|&x| x == f);
        // Stable: a family's chains keep their order.
        self.chains.sort_by_key(|c| family_order(c.family));
        for r in &mut self.rules {
            r.handle = None;
            r.index = None;
            for s in r.expr.to_mut() {
                if let Statement::Match(m) = s {
                    canonical(&mut m.right);
                }
            }
        }
        let position = |family: NfFamily, chain: &str| {
            self.chains
                .iter()
                .position(|c| c.family == family && c.name == chain)
                .unwrap_or(usize::MAX)
        };
        let mut keyed: Vec<(usize, Rule<'static>)> = std::mem::take(&mut self.rules)
            .into_iter()
            .map(|r| (position(r.family, &r.chain), r))
            .collect();
        // Stable: a chain's rules keep their order.
        keyed.sort_by_key(|(p, _)| *p);
        self.rules = keyed.into_iter().map(|(_, r)| r).collect();
    }
}

/// A match's right-hand side in one form. A list of flags
/// (`ct state established,related`) and an anonymous set are sets: nft
/// prints their items in its own order, so they are sorted; a list of one
/// is that one value (nft prints `ct status dnat` as `"dnat"`).
fn canonical(e: &mut Expression<'static>) {
    let key = |e: &Expression<'_>| serde_json::to_string(e).unwrap_or_default();
    let single = match e {
        Expression::List(items) => {
            items.iter_mut().for_each(canonical);
            items.sort_by_cached_key(key);
            (items.len() == 1).then(|| items.remove(0))
        }
        Expression::Named(NamedExpression::Set(items)) => {
            for i in items.iter_mut() {
                if let SetItem::Element(x) = i {
                    canonical(x);
                }
            }
            items.sort_by_cached_key(|i| serde_json::to_string(i).unwrap_or_default());
            None
        }
        _ => None,
    };
    if let Some(one) = single {
        *e = one;
    }
}
