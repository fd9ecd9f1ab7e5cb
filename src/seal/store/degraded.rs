//! # Store: failed writes, degraded mode, and recovery without a restart.
//!
//! Owns what the writer does when a write fails (ENOSPC in a segment, the key slots, the
//! receipts or the index commit): mark the store degraded, refuse seals at once, retry every
//! [`RETRY_INTERVAL`] and before every operator command (a [`PROBE_LEN`] space probe, reopen
//! a poisoned index, reload everything as at open). The health itself lives in
//! [`crate::seal::health`].

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Duration, Instant};

use super::io_err;
use super::submit::SealJob;
use super::writer::Writer;
use crate::seal::audit::rfc3339;
use crate::seal::health::{Health, HealthState};
use crate::seal::{ErrorKind, SealError};

/// How often a degraded store tries to recover on its own (operator commands try at once).
/// Short enough that sealing resumes within a fraction of a second once space returns; long
/// enough that a disk that stays full costs four small probe writes a second, not a busy loop.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(250);
/// Bytes a recovery attempt must be able to write and fsync in `<data>/sealed/` before it
/// reopens anything: a store that recovered into a disk with a few free pages would fail its
/// next commit at once and flap between ok and degraded. 256 KiB covers a redb commit of a
/// typical batch plus its frames; a larger batch that still does not fit degrades again.
pub const PROBE_LEN: usize = 256 << 10;

/// The error for anything refused while degraded, naming since when and why.
pub(super) fn degraded_error(health: &HealthState) -> SealError {
    match health.get() {
        Health::Ok => SealError::new(
            ErrorKind::Degraded,
            "the sealed store is recovering from a write error; nothing was written",
        ),
        Health::Degraded { since, last_error } => SealError::new(
            ErrorKind::Degraded,
            format!(
                "the sealed store is degraded since {} ({last_error}); nothing was written, retry once the disk has room",
                rfc3339(since)
            ),
        ),
    }
}

impl Writer {
    /// A write failed: the store is degraded until a recovery succeeds. Nothing the writer
    /// holds in memory is trusted after this: recovery reloads it from the committed index.
    pub(super) fn fail(&mut self, e: &SealError) {
        if self.health.failed(&e.to_string()) {
            tracing::error!(error = %e, "sealed store degraded: seals are refused until it recovers (retried every {} ms)", RETRY_INTERVAL.as_millis());
        } else {
            tracing::warn!(error = %e, "sealed store: another write failed while degraded");
        }
        self.stage.clear();
        self.failed_attempts = 0;
        self.last_attempt = Instant::now();
    }

    /// [`Writer::fail`] when `e` is an I/O error (others leave the files as they were).
    pub(super) fn fail_if_io(&mut self, e: Option<&SealError>) {
        if let Some(e) = e.filter(|e| e.kind() == ErrorKind::Io) {
            self.fail(e);
        }
    }

    /// For operator commands: recover first if degraded (whatever the retry pacing), and
    /// refuse with [`ErrorKind::Degraded`] if that fails.
    pub(super) fn ready(&mut self) -> Result<(), SealError> {
        if !self.health.is_ok() {
            self.maybe_recover(true);
        }
        if self.health.is_ok() {
            Ok(())
        } else {
            Err(degraded_error(&self.health))
        }
    }

    /// Tries to recover when degraded, at most every [`RETRY_INTERVAL`] unless `force`.
    pub(super) fn maybe_recover(&mut self, force: bool) {
        if !force && self.last_attempt.elapsed() < RETRY_INTERVAL {
            return;
        }
        self.last_attempt = Instant::now();
        match self.try_recover() {
            Ok(()) => {
                let since = self.health.recovered();
                let secs = since
                    .and_then(|s| s.elapsed().ok())
                    .map_or(0.0, |d| d.as_secs_f64());
                tracing::info!(
                    degraded_secs = secs,
                    attempts = self.failed_attempts + 1,
                    "sealed store recovered: sealing resumes"
                );
                self.failed_attempts = 0;
            }
            Err(e) => {
                self.failed_attempts += 1;
                self.health.degraded(&e.to_string());
                // Every 40th attempt (10 s at the retry interval) so a full disk does not
                // flood the log.
                if self.failed_attempts % 40 == 1 {
                    tracing::warn!(error = %e, attempts = self.failed_attempts, "sealed store still degraded");
                }
            }
        }
    }

    /// Space probe, then reopen the index if redb is poisoned, then reload all state.
    fn try_recover(&mut self) -> Result<(), SealError> {
        let probe = self.dir.join(".space-probe");
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&probe)
            .and_then(|f| {
                f.write_all_at(&vec![0u8; PROBE_LEN], 0)?;
                f.sync_data()
            });
        let _ = fs::remove_file(&probe);
        written.map_err(|e| io_err(format!("space probe ({PROBE_LEN} bytes)"), e))?;
        if self.index.is_poisoned() {
            self.index.reopen()?;
        }
        self.reload()
    }

    /// Answers every job of `batch` with the degraded error (or counts it, when detached).
    pub(super) fn refuse_batch(&mut self, batch: Vec<SealJob>) {
        let e = degraded_error(&self.health);
        self.health.counters.seal.pending.sub(batch.len() as u64);
        for job in batch {
            match job.ack {
                Some(ack) => {
                    let _ = ack.send(Err(e.clone()));
                }
                None => {
                    let n = self.health.counters.seal.detached_failures.inc();
                    // The degradation itself is logged once; per exchange only at debug.
                    tracing::debug!(exchange.id = %job.id, failed_total = n, "not sealed: store degraded");
                }
            }
        }
    }
}
