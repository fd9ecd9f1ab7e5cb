//! # Counters: the atomic numbers every step of veil keeps about itself.
//!
//! A leaf module with no dependencies inside veil, so the proxy, the pipeline, the sealed
//! store and the exporter can all count with the same types without importing each other.
//! Who reports a number (OTLP metrics today) reads these; who counts never waits.

use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one and returns the new value.
    pub fn inc(&self) -> u64 {
        self.add(1)
    }

    /// Adds `n` and returns the new value (wrapping after 2^64, which no process reaches).
    pub fn add(&self, n: u64) -> u64 {
        self.0.fetch_add(n, Ordering::Relaxed).wrapping_add(n)
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (a queue's or the spool's size).
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// Subtracts `n`, saturating at zero.
    pub fn sub(&self, n: u64) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Rate limit for a log line about a repeated event (drops, failures): the first occurrence
/// is logged at once, later ones at most once per `every`, with the count since the last line,
/// so a stuck consumer cannot flood the log and an operator still sees every loss summed up.
#[derive(Debug)]
pub struct LogEvery {
    every_ms: u64,
    /// Milliseconds since `epoch` of the last line (`u64::MAX`: never logged).
    last: AtomicU64,
    /// Occurrences not yet reported in a line.
    unreported: AtomicU64,
    epoch: std::time::Instant,
}

impl Default for LogEvery {
    /// At most one line per 10 s.
    fn default() -> Self {
        LogEvery::new(std::time::Duration::from_secs(10))
    }
}

impl LogEvery {
    /// At most one line per `every`.
    pub fn new(every: std::time::Duration) -> Self {
        LogEvery {
            every_ms: every.as_millis().try_into().unwrap_or(u64::MAX),
            last: AtomicU64::new(u64::MAX),
            unreported: AtomicU64::new(0),
            epoch: std::time::Instant::now(),
        }
    }

    /// Notes one occurrence; returns `Some(n)` when the caller should log now, `n` being the
    /// occurrences since the previous line (this one included).
    pub fn hit(&self) -> Option<u64> {
        self.unreported.fetch_add(1, Ordering::Relaxed);
        let now = self
            .epoch
            .elapsed()
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX - 1);
        let last = self.last.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= self.every_ms;
        if due
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            return Some(self.unreported.swap(0, Ordering::Relaxed));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn counters_and_gauges() {
        let c = Counter::default();
        assert_eq!(c.inc(), 1);
        assert_eq!(c.add(2), 3);
        assert_eq!(c.get(), 3);
        let g = Gauge::default();
        g.add(5);
        g.sub(7);
        assert_eq!(g.get(), 0, "saturates");
    }

    #[test]
    fn log_every_reports_the_first_hit_then_sums_the_rest() {
        let l = LogEvery::new(Duration::from_millis(50));
        assert_eq!(l.hit(), Some(1));
        for _ in 0..99 {
            assert_eq!(l.hit(), None);
        }
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            l.hit(),
            Some(100),
            "the 99 silent ones are summed into the next line"
        );
    }
}
