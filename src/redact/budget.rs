//! # Budget: how much redaction one exchange may cost.
//!
//! Redaction runs on the pipeline's worker threads, one exchange at a time, so an exchange
//! that takes long to redact stalls every exchange queued behind it (veil#10: a 4 MB prompt
//! of `alice@example.com` repeated cost seconds). The scanner is linear in the text, but a
//! 30 MB capture is still 30 MB, and a custom regex can be slower than the built-ins. A
//! [`Budget`] bounds what one exchange may spend; past it, the caller drops the exchange's
//! content from the record whole (marked and counted) instead of recording it half redacted.
//!
//! Two limits, because each catches what the other cannot:
//! - **bytes**: the text handed to the detectors, each string counted once however many
//!   scrub passes it needs. Deterministic (the same exchange is always treated the same,
//!   whatever the load) and checked *before* a string is scanned, so an oversized prompt
//!   costs nothing at all.
//! - **CPU time** of the worker thread since the meter started (not wall time: a busy
//!   machine must not turn ordinary exchanges into dropped ones). A safety net for what a
//!   byte count cannot see: a slow custom pattern, a path not yet known to be super-linear.
//!
//! A [`Meter`] also counts *work units*: bytes the engine was asked to look at, plus candidates
//! and overlap decisions. They are not a time, but they grow the way the time does, so tests
//! can assert that redaction cost per byte stays flat without timing anything.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

/// Limits on the redaction of one exchange. `Copy`: pass it by value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Most bytes of text the detectors may be asked to scan (each string counted once).
    pub max_bytes: u64,
    /// Most CPU time the redaction may use, measured on the calling thread.
    pub max_cpu: Duration,
}

impl Budget {
    /// The default: **8 MiB** of text and **1 s** of CPU per exchange.
    ///
    /// 8 MiB is 8x a long agent conversation (~1 MB re-sent every turn) and 2x a full
    /// million-token context window, so real traffic is recorded; a 20 MB prompt stops at the
    /// byte check without a byte scanned. The linear scanner takes about 0.01 s per MB of
    /// prose dense with emails and about 0.1 s per MB of the slowest text found (IPv6
    /// look-alikes, `1:2:3:…`), so 8 MiB of anything stays near or under the 1 s, which only
    /// fires on pathological input or slow custom patterns. No worker is held much longer.
    pub const DEFAULT: Budget = Budget {
        max_bytes: 8 << 20,
        max_cpu: Duration::from_secs(1),
    };

    /// No limit: tools (`veil rules test`) and tests.
    pub const UNLIMITED: Budget = Budget {
        max_bytes: u64::MAX,
        max_cpu: Duration::MAX,
    };

    /// Starts metering against this budget. The CPU clock is the calling thread's: use the
    /// meter on the thread that started it (it is not `Send`).
    ///
    /// The clock is first read after 64 Ki work units, not here: reading a thread's
    /// CPU clock is a system call (about 1 µs on a VM, 10% of building a typical record),
    /// and most exchanges never get that far. So the CPU limit counts from there, and the
    /// first ~64 KiB of text (well under a millisecond) are not counted against it.
    pub fn start(self) -> Meter {
        Meter {
            budget: self,
            bytes: 0,
            work: 0,
            next_check: CHECK_EVERY,
            started: None,
            unlimited_cpu: self.max_cpu == Duration::MAX,
            exceeded: None,
            not_send: PhantomData,
        }
    }
}

impl Default for Budget {
    fn default() -> Self {
        Budget::DEFAULT
    }
}

/// Which limit of a [`Budget`] was exceeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exceeded {
    /// More text than `max_bytes`.
    Bytes,
    /// More CPU time than `max_cpu`.
    Cpu,
}

impl Exceeded {
    /// Short stable name for records and metrics: `redaction_bytes` or `redaction_cpu`.
    pub fn reason(self) -> &'static str {
        match self {
            Exceeded::Bytes => "redaction_bytes",
            Exceeded::Cpu => "redaction_cpu",
        }
    }
}

impl fmt::Display for Exceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Exceeded::Bytes => "redaction budget exceeded: too many bytes to scan",
            Exceeded::Cpu => "redaction budget exceeded: too much CPU time",
        })
    }
}

impl std::error::Error for Exceeded {}

/// Work units between two reads of the CPU clock: about 64 KiB of text, so the clock (a
/// system call on some kernels, ~100 ns) costs nothing measurable and the limit is still
/// enforced within a millisecond or so.
const CHECK_EVERY: u64 = 64 << 10;

/// The running account of one exchange's redaction. Once a limit is exceeded it stays
/// exceeded: every later charge fails with the same reason.
#[derive(Debug)]
pub struct Meter {
    budget: Budget,
    /// Bytes handed to the detectors so far.
    bytes: u64,
    /// Work units so far.
    work: u64,
    /// `work` at which the CPU clock is read next.
    next_check: u64,
    /// Thread CPU time at the first clock read (see [`Budget::start`]).
    started: Option<Duration>,
    /// No CPU limit: the clock is never read.
    unlimited_cpu: bool,
    exceeded: Option<Exceeded>,
    /// The CPU clock is per thread.
    not_send: PhantomData<*const ()>,
}

impl Meter {
    /// A meter with no limits.
    pub fn unlimited() -> Meter {
        Budget::UNLIMITED.start()
    }

    /// Charges `n` bytes of text about to be scanned. Fails, before any scanning, when they
    /// would take the total past `max_bytes`.
    pub(crate) fn scan(&mut self, n: usize) -> Result<(), Exceeded> {
        if let Some(e) = self.exceeded {
            return Err(e);
        }
        let total = self.bytes.saturating_add(n as u64);
        if total > self.budget.max_bytes {
            self.exceeded = Some(Exceeded::Bytes);
            return Err(Exceeded::Bytes);
        }
        self.bytes = total;
        Ok(())
    }

    /// Charges `n` work units; reads the CPU clock every [`CHECK_EVERY`] units.
    #[inline]
    pub(crate) fn work(&mut self, n: usize) -> Result<(), Exceeded> {
        self.work = self.work.saturating_add(n as u64);
        if self.work >= self.next_check {
            return self.check();
        }
        match self.exceeded {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    #[cold]
    fn check(&mut self) -> Result<(), Exceeded> {
        self.next_check = self.work.saturating_add(CHECK_EVERY);
        if let Some(e) = self.exceeded {
            return Err(e);
        }
        if self.unlimited_cpu {
            return Ok(());
        }
        let now = thread_cpu();
        let started = *self.started.get_or_insert(now);
        if now.saturating_sub(started) > self.budget.max_cpu {
            self.exceeded = Some(Exceeded::Cpu);
            return Err(Exceeded::Cpu);
        }
        Ok(())
    }

    /// Bytes of text charged so far.
    pub fn bytes_scanned(&self) -> u64 {
        self.bytes
    }

    /// Work units charged so far: bytes the engine looked at plus candidates and overlap
    /// decisions. Proportional to time for a given machine, but deterministic.
    pub fn work_done(&self) -> u64 {
        self.work
    }

    /// The limit that was exceeded, if any.
    pub fn exceeded(&self) -> Option<Exceeded> {
        self.exceeded
    }
}

/// CPU time consumed by the calling thread.
fn thread_cpu() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_refused_before_they_are_scanned_and_stay_refused() {
        let mut m = Budget {
            max_bytes: 10,
            max_cpu: Duration::MAX,
        }
        .start();
        assert_eq!(m.scan(6), Ok(()));
        assert_eq!(m.scan(5), Err(Exceeded::Bytes));
        assert_eq!(m.bytes_scanned(), 6, "the refused string is not counted");
        assert_eq!(m.scan(1), Err(Exceeded::Bytes), "sticky");
        assert_eq!(m.work(1), Err(Exceeded::Bytes), "sticky for work too");
        assert_eq!(m.exceeded().map(Exceeded::reason), Some("redaction_bytes"));
    }

    #[test]
    fn cpu_limit_fires_on_the_next_clock_read() {
        let mut m = Budget {
            max_bytes: u64::MAX,
            max_cpu: Duration::ZERO,
        }
        .start();
        assert_eq!(m.work(1), Ok(()), "the clock is not read on every unit");
        // The first read starts the clock...
        assert_eq!(m.work(CHECK_EVERY as usize), Ok(()));
        // ... burn a little CPU so the thread clock moves past it ...
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        // ... and the second read finds the limit exceeded.
        assert_eq!(m.work(CHECK_EVERY as usize), Err(Exceeded::Cpu));
        assert_eq!(m.scan(0), Err(Exceeded::Cpu));
        assert_eq!(m.work_done(), 1 + 2 * CHECK_EVERY);
    }

    #[test]
    fn unlimited_never_fails() {
        let mut m = Meter::unlimited();
        for _ in 0..100 {
            m.scan(usize::MAX / 200).unwrap();
            m.work(usize::MAX / 200).unwrap();
        }
        assert!(m.exceeded().is_none());
    }
}
