//! # Health: can veil record right now?
//!
//! One shared answer to "is recording healthy", fed by the places that actually write (the
//! sealed store's commits, the records ledger and spool writes, the free space of the data
//! disk) and read by those that must act on it: the proxy, which with `audit = "required"`
//! refuses (503) a request it could not make durable, and `/healthz`.
//!
//! A leaf module like [`crate::counters`]: writers and readers share it without importing each
//! other. Reading is one atomic load, cheap enough for every request on the hot path.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use crate::counters::Counters;

/// What can be degraded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The sealed store cannot commit (disk full, I/O error, index poisoned).
    Seal,
    /// Records cannot be written (the records ledger or the export spool fails).
    Records,
    /// The data disk has less free space than `disk_reserve`.
    Disk,
    /// The SQLite ledger cannot commit (disk full, locked, I/O error).
    Ledger,
    /// Processing the last exchange panicked (a bug): it was not recorded. Recovers when a
    /// later exchange is processed, or after [`crate::pipeline::PANIC_HOLD`] without another
    /// panic.
    Pipeline,
}

impl Part {
    /// Every part, in report order.
    pub const ALL: [Part; 5] = [
        Part::Seal,
        Part::Records,
        Part::Disk,
        Part::Ledger,
        Part::Pipeline,
    ];

    /// Short stable name (`seal`, `records`, `disk`, `ledger`, `pipeline`).
    pub fn as_str(self) -> &'static str {
        match self {
            Part::Seal => "seal",
            Part::Records => "records",
            Part::Disk => "disk",
            Part::Ledger => "ledger",
            Part::Pipeline => "pipeline",
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u32)
    }
}

#[derive(Debug, Default)]
struct State {
    since: Option<SystemTime>,
    reason: String,
}

/// How a blocking task ended without a result, for logs and health reasons: tokio's own text
/// for a panicked task quotes the panic's message, which may quote the data being processed
/// (see `cli::panics`), so it is never used.
pub fn task_failure(e: &tokio::task::JoinError) -> &'static str {
    if e.is_panic() {
        "the task panicked (a bug: its location is in the log)"
    } else {
        "the task was cancelled"
    }
}

/// The recording health of one veil. Share it as `Arc<Health>`.
#[derive(Debug)]
pub struct Health {
    /// One bit per degraded [`Part`].
    degraded: AtomicU32,
    states: [Mutex<State>; Part::ALL.len()],
    /// The registry: `recording.degradations` counts each part's transition to degraded,
    /// `recording.degraded` mirrors "any part degraded" (1/0).
    counters: Arc<Counters>,
    /// Held while `recording.degraded` is set from `degraded`, so the last transition's value
    /// wins: each setter reads the bits after its own change, under this lock.
    publish: Mutex<()>,
}

/// A snapshot of one part, for `/healthz` and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartReport {
    /// Which part.
    pub part: Part,
    /// Degraded since when.
    pub since: SystemTime,
    /// Why, for operators (no content: paths and OS errors only).
    pub reason: String,
}

impl Health {
    /// A healthy state, keeping its numbers in `counters.recording`.
    pub fn new(counters: Arc<Counters>) -> Self {
        Health {
            degraded: AtomicU32::new(0),
            states: Default::default(),
            counters,
            publish: Mutex::new(()),
        }
    }

    /// Sets the `recording.degraded` gauge from the bits (on transitions only).
    fn publish(&self) {
        let _one_at_a_time = self.publish.lock().unwrap_or_else(|e| e.into_inner());
        let any = self.degraded.load(Ordering::Acquire) != 0;
        self.counters.recording.degraded.set(u64::from(any));
    }

    /// True when every part is healthy. One atomic load.
    pub fn is_ok(&self) -> bool {
        self.degraded.load(Ordering::Acquire) == 0
    }

    /// True when `part` is degraded.
    pub fn is_degraded(&self, part: Part) -> bool {
        self.degraded.load(Ordering::Acquire) & part.bit() != 0
    }

    /// Marks `part` degraded for `reason`. Logged (as an error) only on the transition, so a
    /// writer may call this on every failure.
    pub fn degrade(&self, part: Part, reason: impl fmt::Display) {
        let mut st = self.states[part as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        st.reason = reason.to_string();
        let before = self.degraded.fetch_or(part.bit(), Ordering::AcqRel);
        if before & part.bit() == 0 {
            st.since = Some(SystemTime::now());
            self.counters.recording.degradations.inc();
            self.publish();
            tracing::error!(part = part.as_str(), reason = %st.reason, "recording degraded");
        }
    }

    /// Marks `part` healthy again (logged on the transition only).
    pub fn recover(&self, part: Part) {
        if !self.is_degraded(part) {
            return;
        }
        let mut st = self.states[part as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let before = self.degraded.fetch_and(!part.bit(), Ordering::AcqRel);
        if before & part.bit() != 0 {
            let for_s = st
                .since
                .and_then(|s| s.elapsed().ok())
                .map_or(0.0, |d| d.as_secs_f64());
            tracing::info!(
                part = part.as_str(),
                degraded_for_s = for_s,
                "recording recovered"
            );
            *st = State::default();
            self.publish();
        }
    }

    /// Sets `part` from a write's result: degraded with the error, or recovered.
    pub fn observe<E: fmt::Display>(&self, part: Part, result: &Result<(), E>) {
        match result {
            Ok(()) => self.recover(part),
            Err(e) => self.degrade(part, e),
        }
    }

    /// The degraded parts, with since when and why.
    pub fn report(&self) -> Vec<PartReport> {
        Part::ALL
            .iter()
            .filter(|p| self.is_degraded(**p))
            .filter_map(|&part| {
                let st = self.states[part as usize]
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                Some(PartReport {
                    part,
                    since: st.since?,
                    reason: st.reason.clone(),
                })
            })
            .collect()
    }

    /// One line for an error message: `seal: <reason>; disk: <reason>`, or `ok`.
    pub fn summary(&self) -> String {
        let parts = self.report();
        if parts.is_empty() {
            return "ok".to_string();
        }
        parts
            .iter()
            .map(|p| format!("{}: {}", p.part.as_str(), p.reason))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Free bytes available to veil on the file system holding `path` (`statvfs`: blocks
/// available to unprivileged users × fragment size).
pub fn free_bytes(path: &std::path::Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(path)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_degrade_and_recover_independently() {
        let h = Health::new(Arc::default());
        let degraded = || h.counters.recording.degraded.get();
        assert!(h.is_ok());
        h.degrade(Part::Seal, "No space left on device");
        assert_eq!(degraded(), 1);
        h.degrade(Part::Seal, "still full");
        h.degrade(Part::Disk, "12 MiB free, below disk_reserve 64 MiB");
        assert!(!h.is_ok());
        assert_eq!(
            h.counters.recording.degradations.get(),
            2,
            "counted on transitions only"
        );
        assert_eq!(
            h.summary(),
            "seal: still full; disk: 12 MiB free, below disk_reserve 64 MiB"
        );
        h.recover(Part::Seal);
        assert!(!h.is_ok() && !h.is_degraded(Part::Seal));
        assert_eq!(degraded(), 1, "the disk is still degraded");
        h.observe::<String>(Part::Disk, &Ok(()));
        assert!(h.is_ok());
        assert_eq!(degraded(), 0);
        assert_eq!(h.summary(), "ok");
        assert!(h.report().is_empty());
    }

    #[test]
    fn free_bytes_reads_the_file_system() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_bytes(dir.path()).unwrap() > 0);
        assert!(free_bytes(&dir.path().join("missing")).is_err());
    }
}
