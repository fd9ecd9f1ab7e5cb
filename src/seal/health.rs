//! # Health: is sealing working right now, and how often has it failed.
//!
//! Owns [`Health`], the lock-free [`SealHealth`] handle and [`StoreStats`], a view of the
//! store's numbers in the counter registry (`seal` section: `veil.seal.writes.failed`,
//! `veil.seal.recoveries`, `veil.seals.failed`). The store's writer thread is the only one that
//! changes them: a failed write (segment, key slots, index commit,
//! receipts) makes the store *degraded*; a successful recovery (space probe, index reopened,
//! state reloaded from the committed index) makes it *ok* again. Everyone else only reads:
//! `/healthz`, the metrics, and the proxy's `audit = "required"` admission check, which asks
//! [`SealHealth::is_ok`] on the hot path (one atomic load, no lock, no syscall).
//!
//! This module never touches files or the index.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::counters::Counters;

/// Whether the sealed store can make seals durable right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// The last write succeeded (or nothing has failed since the last recovery).
    Ok,
    /// A write failed and the store has not recovered yet: new seals are refused at once
    /// (`ErrorKind::Degraded`), `forget`/`purge` destroy nothing, reads may fail. The writer
    /// retries on its own every [`RETRY_INTERVAL`](super::store::RETRY_INTERVAL) and on every
    /// operator command.
    Degraded {
        /// When the first failure of this episode happened.
        since: SystemTime,
        /// The most recent failure (a recovery attempt that failed updates it). Names files
        /// and OS errors, never content.
        last_error: String,
    },
}

impl Health {
    /// True for [`Health::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, Health::Ok)
    }
}

/// The store's failure and recovery counters (monotonic): a snapshot of the `seal` section of
/// the registry the store was opened with ([`SealOptions::counters`](super::SealOptions)), so
/// they count from the registry's creation (the process start, under `veil run`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Writes that failed: seal batches whose commit failed, and forget/purge/compact/rewrap
    /// calls that failed on an I/O error. One failed batch counts once, however many
    /// exchanges it held.
    pub failed_commits: u64,
    /// Times the store went from degraded back to ok without a restart.
    pub recoveries: u64,
    /// Detached seals (the pipeline's) lost after they were queued: their batch failed, or the
    /// store was degraded when the writer reached them. Seals refused at
    /// [`submit`](super::SealStore::submit) are counted by the caller, not here.
    pub detached_failures: u64,
}

/// A cheap, cloneable view of the store's health, for hot paths: [`SealHealth::is_ok`] is one
/// atomic load. Stays valid (and current) for as long as any clone lives, also after the store
/// is dropped (it then reports the last state).
#[derive(Debug, Clone)]
pub struct SealHealth(pub(crate) Arc<HealthState>);

impl SealHealth {
    /// True when sealing works: no write has failed since the last recovery. Lock-free (one
    /// `Acquire` load); call it per request.
    ///
    /// A `true` is not a promise that the next seal will be durable (the disk may fill up a
    /// microsecond later); wait for the seal's [`SealAck`](super::SealAck) for that. A `false`
    /// means the next seal will be refused.
    pub fn is_ok(&self) -> bool {
        self.0.ok.load(Ordering::Acquire)
    }

    /// The full state, with when and why it degraded (takes a short lock).
    pub fn get(&self) -> Health {
        self.0.get()
    }
}

/// Shared between the writer (which changes it) and every reader.
#[derive(Debug)]
pub(crate) struct HealthState {
    ok: AtomicBool,
    /// `(since, last_error)` while degraded.
    detail: Mutex<Option<(SystemTime, String)>>,
    /// The registry: failures and recoveries count in its `seal` section.
    pub(crate) counters: Arc<Counters>,
    /// veil's recording health, told of every change ([`crate::health::Part::Seal`]).
    pub(crate) shared: Option<Arc<crate::health::Health>>,
}

impl HealthState {
    /// A healthy state that counts in `counters` and reports its changes to `shared` too.
    pub(crate) fn new(shared: Option<Arc<crate::health::Health>>, counters: Arc<Counters>) -> Self {
        HealthState {
            ok: AtomicBool::new(true),
            detail: Mutex::new(None),
            counters,
            shared,
        }
    }

    pub(crate) fn is_ok(&self) -> bool {
        self.ok.load(Ordering::Acquire)
    }

    pub(crate) fn get(&self) -> Health {
        match &*self.detail.lock().unwrap_or_else(|p| p.into_inner()) {
            None => Health::Ok,
            Some((since, last_error)) => Health::Degraded {
                since: *since,
                last_error: last_error.clone(),
            },
        }
    }

    /// A write failed: count it and become (or stay) degraded. Returns true on the transition
    /// from ok, so the caller logs the episode once.
    pub(crate) fn failed(&self, error: &str) -> bool {
        self.counters.seal.failed_commits.inc();
        self.degraded(error)
    }

    /// Degraded (again) without counting a failed commit: a recovery attempt failed.
    pub(crate) fn degraded(&self, error: &str) -> bool {
        let mut d = self.detail.lock().unwrap_or_else(|p| p.into_inner());
        let first = d.is_none();
        let since = d.as_ref().map_or_else(SystemTime::now, |(s, _)| *s);
        *d = Some((since, error.to_string()));
        // Stored under the lock, so `get` and `is_ok` never disagree for long.
        self.ok.store(false, Ordering::Release);
        if let Some(h) = &self.shared {
            h.degrade(crate::health::Part::Seal, error);
        }
        first
    }

    /// Recovered: ok again. Returns when the episode began.
    pub(crate) fn recovered(&self) -> Option<SystemTime> {
        let mut d = self.detail.lock().unwrap_or_else(|p| p.into_inner());
        let since = d.take().map(|(s, _)| s);
        if since.is_some() {
            self.counters.seal.recoveries.inc();
        }
        self.ok.store(true, Ordering::Release);
        if let Some(h) = &self.shared {
            h.recover(crate::health::Part::Seal);
        }
        since
    }

    pub(crate) fn stats(&self) -> StoreStats {
        let c = &self.counters.seal;
        StoreStats {
            failed_commits: c.failed_commits.get(),
            recoveries: c.recoveries.get(),
            detached_failures: c.detached_failures.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degrade_and_recover_keep_since_and_count() {
        let h = Arc::new(HealthState::new(None, Arc::default()));
        let handle = SealHealth(h.clone());
        assert!(handle.is_ok());
        assert_eq!(handle.get(), Health::Ok);
        assert!(h.failed("first"), "first failure starts an episode");
        let Health::Degraded { since, last_error } = handle.get() else {
            panic!("degraded expected");
        };
        assert_eq!(last_error, "first");
        assert!(!handle.is_ok());
        assert!(!h.degraded("probe failed"), "same episode");
        assert_eq!(
            handle.get(),
            Health::Degraded {
                since,
                last_error: "probe failed".into()
            },
            "since is kept, the error is the latest"
        );
        assert_eq!(h.recovered(), Some(since));
        assert!(handle.is_ok());
        assert_eq!(h.recovered(), None, "recovering twice counts once");
        assert_eq!(
            h.stats(),
            StoreStats {
                failed_commits: 1,
                recoveries: 1,
                detached_failures: 0
            }
        );
    }
}
