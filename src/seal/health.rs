//! # Health: is sealing working right now, and how often has it failed.
//!
//! Owns [`Health`], the lock-free [`SealHealth`] handle and [`StoreStats`]. The store's writer
//! thread is the only one that changes them: a failed write (segment, key slots, index commit,
//! receipts) makes the store *degraded*; a successful recovery (space probe, index reopened,
//! state reloaded from the committed index) makes it *ok* again. Everyone else only reads:
//! `/healthz`, the metrics, and the proxy's `audit = "required"` admission check, which asks
//! [`SealHealth::is_ok`] on the hot path (one atomic load, no lock, no syscall).
//!
//! This module never touches files or the index.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

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

/// Counters of the store's failures and recoveries since it was opened (monotonic).
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
    failed_commits: AtomicU64,
    recoveries: AtomicU64,
    pub(crate) detached_failures: AtomicU64,
    /// veil's recording health, told of every change ([`crate::health::Part::Seal`]).
    pub(crate) shared: Option<Arc<crate::health::Health>>,
}

impl Default for HealthState {
    fn default() -> Self {
        HealthState {
            ok: AtomicBool::new(true),
            detail: Mutex::new(None),
            failed_commits: AtomicU64::new(0),
            recoveries: AtomicU64::new(0),
            detached_failures: AtomicU64::new(0),
            shared: None,
        }
    }
}

impl HealthState {
    /// A healthy state that reports its changes to `shared` too.
    pub(crate) fn reporting_to(shared: Option<Arc<crate::health::Health>>) -> Self {
        HealthState {
            shared,
            ..HealthState::default()
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
        self.failed_commits.fetch_add(1, Ordering::Relaxed);
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
            self.recoveries.fetch_add(1, Ordering::Relaxed);
        }
        self.ok.store(true, Ordering::Release);
        if let Some(h) = &self.shared {
            h.recover(crate::health::Part::Seal);
        }
        since
    }

    pub(crate) fn stats(&self) -> StoreStats {
        StoreStats {
            failed_commits: self.failed_commits.load(Ordering::Relaxed),
            recoveries: self.recoveries.load(Ordering::Relaxed),
            detached_failures: self.detached_failures.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degrade_and_recover_keep_since_and_count() {
        let h = Arc::new(HealthState::default());
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
