//! banger's table as data: the chains and rules of `table ip banger` in
//! the `nftables` crate's schema of nft's JSON, the one model used both
//! ways. [`Table::replace`] turns it into the transaction `nft -j -f -`
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

/// The table's family and name.
pub const FAMILY: NfFamily = NfFamily::IP;
pub const TABLE: &str = "banger";

/// The content of banger's table.
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

fn table_object() -> NfListObject<'static> {
    NfListObject::Table(schema::Table {
        family: FAMILY,
        name: Cow::Borrowed(TABLE),
        handle: None,
    })
}

/// "Make sure the table exists, then delete it": a no-op when the table
/// exists, and it makes the delete succeed when it does not.
fn drop_table() -> [NfObject<'static>; 2] {
    [
        NfObject::CmdObject(NfCmd::Add(table_object())),
        NfObject::CmdObject(NfCmd::Delete(table_object())),
    ]
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

    /// The transaction that replaces whatever the table holds with exactly
    /// this: delete the table (making sure it exists first, so the delete
    /// cannot fail), declare it again, its chains, its rules. nft applies
    /// it all or nothing, so the old content, chains included, is replaced
    /// in one step.
    pub fn replace(&self) -> Nftables<'static> {
        let mut objects: Vec<NfObject<'static>> = drop_table().into();
        objects.push(NfObject::CmdObject(NfCmd::Add(table_object())));
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

    /// The transaction that deletes the table; a no-op when it is missing.
    pub fn remove() -> Nftables<'static> {
        Nftables {
            objects: Vec::from(drop_table()).into(),
        }
    }

    /// The table as `nft -j list table ip banger` printed it. Objects of
    /// other tables (there are none in such a listing) and the metainfo
    /// are left out.
    pub fn from_listing(doc: Nftables<'static>) -> Table {
        let ours = |family: NfFamily, table: &str| family == FAMILY && table == TABLE;
        let mut t = Table::default();
        for o in doc.objects.into_owned() {
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

    /// The rules of one chain, in order.
    pub fn rules_of<'t>(&'t self, chain: &'t str) -> impl Iterator<Item = &'t Rule<'static>> {
        self.rules.iter().filter(move |r| r.chain == chain)
    }

    /// Puts the table in the one form where equal means "does the same":
    /// no handles or positions; rules grouped by chain in chain order
    /// (keeping each chain's order, which is evaluation order); and the
    /// right-hand side of every match in canonical form ([`canonical`]).
    fn normalise(&mut self) {
        for c in &mut self.chains {
            c.handle = None;
        }
        for r in &mut self.rules {
            r.handle = None;
            r.index = None;
            for s in r.expr.to_mut() {
                if let Statement::Match(m) = s {
                    canonical(&mut m.right);
                }
            }
        }
        let position = |chain: &str| {
            self.chains
                .iter()
                .position(|c| c.name == chain)
                .unwrap_or(usize::MAX)
        };
        let mut keyed: Vec<(usize, Rule<'static>)> = std::mem::take(&mut self.rules)
            .into_iter()
            .map(|r| (position(&r.chain), r))
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
