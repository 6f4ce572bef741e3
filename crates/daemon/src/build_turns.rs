//! One build per cache key at a time inside the daemon, waited for without
//! holding a thread.
//!
//! The core builders take a file lock per cache key (`core::build_lock`), so
//! two processes never build one entry at once; but that wait is a blocking
//! loop, and a build body runs on a blocking thread. Without this, every
//! caller asking for the same build while one runs would hold a thread for
//! its whole duration. So the daemon first waits here, on an async lock per
//! key (cancellable with the operation), and only the build that holds its
//! key's turn goes to a blocking thread, where the file lock is then free
//! (unless another process holds it: that wait still blocks, one thread per
//! build the other process runs).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use tokio::sync::OwnedMutexGuard;

use tokio_util::sync::CancellationToken;

use crate::error::Error;

/// The per-key turns; entries nobody holds or waits for are dropped.
#[derive(Default)]
pub struct BuildTurns {
    keys: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

/// This operation's turn at a key, until dropped.
pub type Turn = OwnedMutexGuard<()>;

impl BuildTurns {
    /// Waits for `key`'s turn, calling `on_wait` first when another build of
    /// the same key holds it (the operation shows a `waiting` stage). A
    /// cancelled operation stops waiting at once.
    pub async fn wait(
        &self,
        key: &str,
        cancel: &CancellationToken,
        on_wait: impl FnOnce(),
    ) -> Result<Turn, Error> {
        let lock = {
            let mut keys = self.keys.lock().expect("build turns poisoned");
            keys.retain(|_, w| w.strong_count() > 0);
            match keys.get(key).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    keys.insert(key.to_owned(), Arc::downgrade(&l));
                    l
                }
            }
        };
        if let Ok(turn) = lock.clone().try_lock_owned() {
            return Ok(turn);
        }
        on_wait();
        tokio::select! {
            turn = lock.lock_owned() => Ok(turn),
            () = cancel.cancelled() => Err(Error::Cancelled),
        }
    }

    /// Keys someone holds or waits for.
    #[cfg(test)]
    fn live(&self) -> usize {
        let keys = self.keys.lock().expect("build turns poisoned");
        keys.values().filter(|w| w.strong_count() > 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// On a one-thread runtime: a waiter that held a thread would leave none
    /// for the holder, and the test would hang instead of finishing.
    #[tokio::test(flavor = "current_thread")]
    async fn waiters_hold_no_thread_run_one_at_a_time_and_cancel() {
        let turns = Arc::new(BuildTurns::default());
        let none = CancellationToken::new();
        let first = turns.wait("k", &none, || panic!("free key")).await.unwrap();
        let waited = Arc::new(AtomicUsize::new(0));
        let inside = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (turns, waited, inside) = (turns.clone(), waited.clone(), inside.clone());
            tasks.push(tokio::spawn(async move {
                let token = CancellationToken::new();
                let turn = turns
                    .wait("k", &token, || {
                        waited.fetch_add(1, Ordering::SeqCst);
                    })
                    .await
                    .unwrap();
                // One at a time: nobody else is inside while this one is.
                assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0);
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
                drop(turn);
            }));
        }
        // Let every task run to its wait (a bounded number of rounds).
        for _ in 0..10_000 {
            if waited.load(Ordering::SeqCst) == 100 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(waited.load(Ordering::SeqCst), 100);
        // Another key is not held up.
        drop(
            turns
                .wait("other", &none, || panic!("free key"))
                .await
                .unwrap(),
        );
        // A cancelled waiter stops waiting.
        let cancelled = CancellationToken::new();
        let stuck = {
            let turns = turns.clone();
            let c = cancelled.clone();
            tokio::spawn(async move { turns.wait("k", &c, || {}).await.map(drop) })
        };
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(!stuck.is_finished(), "waits while the key is held");
        cancelled.cancel();
        assert!(matches!(stuck.await.unwrap(), Err(Error::Cancelled)));
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(turns.live(), 0, "entries nobody holds are dropped");
    }
}
