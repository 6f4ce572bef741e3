//! What one client may hold of the daemon: connections (per user and in
//! all), and how long a connection may sit idle or halfway through a
//! request. The daemon is root and serves every member of its group; without
//! these a member could open connections until the daemon runs out of
//! descriptors, or start a request line and never finish it.
//!
//! Root is exempt from the connection caps, so an administrator can always
//! reach a daemon that others are crowding.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Connections one non-root user may have open at once.
pub const MAX_CONNECTIONS_PER_USER: usize = 64;
/// Connections of non-root users in all.
pub const MAX_CONNECTIONS: usize = 512;
/// How long a request line may take to arrive once its first byte has.
pub const PARTIAL_LINE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection may stay open with no request in flight and none
/// arriving. Long requests (`op.wait`, builds) are not idle: the clock only
/// runs while the daemon waits for the client.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Open connections by uid.
#[derive(Clone, Default)]
pub struct Connections {
    inner: Arc<Mutex<Counts>>,
    per_user: usize,
    total: usize,
}

#[derive(Default)]
struct Counts {
    by_uid: HashMap<u32, usize>,
    total: usize,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    PerUser(usize),
    Total(usize),
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::PerUser(n) => write!(
                f,
                "too many connections from your user (at most {n} at once); close some and retry"
            ),
            Refused::Total(n) => write!(
                f,
                "the daemon has too many connections (at most {n} at once); retry later"
            ),
        }
    }
}

/// A counted connection; dropping it gives the slot back.
pub struct Slot {
    conns: Connections,
    uid: Option<u32>,
}

impl Connections {
    pub fn new(per_user: usize, total: usize) -> Connections {
        Connections {
            inner: Arc::default(),
            per_user,
            total,
        }
    }

    /// Counts a new connection of `uid`, or says why it may not have one.
    pub fn admit(&self, uid: u32) -> Result<Slot, Refused> {
        if uid == 0 {
            return Ok(Slot {
                conns: self.clone(),
                uid: None,
            });
        }
        let mut c = self.inner.lock().expect("connection counts poisoned");
        let mine = c.by_uid.get(&uid).copied().unwrap_or(0);
        if mine >= self.per_user {
            return Err(Refused::PerUser(self.per_user));
        }
        if c.total >= self.total {
            return Err(Refused::Total(self.total));
        }
        *c.by_uid.entry(uid).or_default() += 1;
        c.total += 1;
        Ok(Slot {
            conns: self.clone(),
            uid: Some(uid),
        })
    }

    /// Open connections of `uid` (tests, `daemon.status`).
    pub fn of(&self, uid: u32) -> usize {
        let c = self.inner.lock().expect("connection counts poisoned");
        c.by_uid.get(&uid).copied().unwrap_or(0)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let Some(uid) = self.uid else { return };
        let mut c = self.conns.inner.lock().expect("connection counts poisoned");
        c.total -= 1;
        if let Some(n) = c.by_uid.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                c.by_uid.remove(&uid);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_user_and_in_all_and_root_is_exempt() {
        let c = Connections::new(2, 3);
        let a1 = c.admit(1000).unwrap();
        let _a2 = c.admit(1000).unwrap();
        assert_eq!(c.admit(1000).err(), Some(Refused::PerUser(2)));
        let _b1 = c.admit(1001).unwrap();
        assert_eq!(c.admit(1002).err(), Some(Refused::Total(3)));
        // Root gets in regardless and is not counted.
        let _r: Vec<_> = (0..10).map(|_| c.admit(0).unwrap()).collect();
        assert_eq!(c.of(0), 0);
        // A closed connection frees its slot.
        drop(a1);
        assert_eq!(c.of(1000), 1);
        c.admit(1002).unwrap();
    }
}
