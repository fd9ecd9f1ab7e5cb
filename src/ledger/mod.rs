//! # The ledger: every exchange as a row in an embedded SQLite database that answers questions.
//!
//! A sink beside the OTLP export, fed the same redacted [`Record`]s: the exporter's batcher
//! hands each batch to [`LedgerHandle::send`] and counts the batch recorded when both its OTLP
//! payloads and its ledger transaction are durable. One writer thread (`writer`) commits each
//! batch (and whatever queued behind it) in one transaction with prepared statements, keeps
//! the daily rollup, and enforces the bounds (content retention, row retention, size) on a
//! clock. Queries ([`report`], [`cards`], [`html`], [`sql`], [`tail`], [`show`]) open their
//! own read-only connections; erasure ([`erase`]) opens its own writing one, so `veil forget` reaches the
//! ledger whether or not veil runs.
//!
//! ```text
//! exporter batcher ─▶ [bounded channel] ─▶ ledger writer ─▶ data/ledger.db (WAL)
//!                                                              ▲
//!   veil report / sql / tail / show (read-only) ───────────────┤
//!        veil forget / purge (erase, secure_delete) ─────────────┘
//! ```
//!
//! Owns `<data>/ledger.db` (and its `-wal`/`-shm`). Reads records only: never an exchange,
//! raw content, keys or credentials. The schema is documented in `docs/ledger.md`.

pub mod cards;
pub mod dataset;
pub mod erase;
pub mod feedback;
pub mod html;
pub mod report;
pub mod row;
pub mod schema;
pub mod show;
pub mod sql;
pub mod tail;
#[cfg(test)]
pub(crate) mod testing;
#[cfg(test)]
mod tests;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::counters::Counters;
use crate::health::Health;
use crate::record::Record;

/// File name of the ledger inside the data directory.
pub const FILE_NAME: &str = "ledger.db";

/// Batches that may wait for the writer before senders wait.
const QUEUE_BATCHES: usize = 64;

/// How often a degraded ledger probes with a small write. Under `audit = "required"` a
/// degraded ledger refuses every request, so no batch arrives to show the cause is gone: the
/// probe is the only way back, and waiting for the next bounds check (a minute) would refuse
/// traffic for that long after the disk has room again.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Called once per batch: `true` when its rows are committed, `false` when they were dropped
/// (the drop is counted by the ledger).
pub type Done = Box<dyn FnOnce(bool) + Send>;

/// Where the ledger lives and how long it keeps what.
#[derive(Debug, Clone)]
pub struct LedgerSettings {
    /// The database file (`<data>/ledger.db`).
    pub path: PathBuf,
    /// Content rows older than this are deleted (`ledger_content_retention`, default 30 days).
    pub content_retention: Duration,
    /// Exchange rows older than this are deleted; the daily rollup stays
    /// (`ledger_retention`, default 400 days).
    pub retention: Duration,
    /// Past this many bytes of pages in use, the oldest content goes, then the oldest rows
    /// (`ledger_max_size`, default 2 GiB).
    pub max_size: u64,
    /// How often the bounds are checked (60 s; tests use less).
    pub check_every: Duration,
    /// Niceness of the writer thread ([`crate::os::RECORDING_NICE`] in best-effort mode, 0
    /// when the audit is required).
    pub nice: i32,
    /// The feedback API's map of exchanges on their way to the ledger: the writer takes out
    /// those it has committed ([`crate::feedback::Recent::committed`]).
    pub recent: Option<Arc<crate::feedback::Recent>>,
}

impl LedgerSettings {
    /// The defaults for a ledger at `path`.
    pub fn new(path: PathBuf) -> Self {
        LedgerSettings {
            path,
            content_retention: Duration::from_secs(30 * 86_400),
            retention: Duration::from_secs(400 * 86_400),
            max_size: 2 << 30,
            check_every: Duration::from_secs(60),
            nice: crate::os::RECORDING_NICE,
            recent: None,
        }
    }
}

/// Why the ledger cannot be opened or queried. Each message says what to do.
#[derive(Debug)]
pub enum LedgerError {
    /// The file cannot be opened or created (path, OS or SQLite error).
    Open {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// No ledger at this path.
    Missing(PathBuf),
    /// Written by a newer veil.
    Newer {
        /// The file.
        path: PathBuf,
        /// Its schema version.
        found: i64,
    },
    /// Another application's SQLite database.
    Foreign {
        /// The file.
        path: PathBuf,
        /// Its `application_id`.
        application_id: i64,
    },
    /// A query failed.
    Query(String),
}

impl LedgerError {
    pub(crate) fn open(path: &Path, reason: impl fmt::Display) -> Self {
        LedgerError::Open {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }
}

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // The ledger is always `<data>/ledger.db` (erasure finds it there), so the ways
            // out are the file itself, the data directory, or no ledger at all.
            LedgerError::Open { path, reason } => write!(
                f,
                "cannot open the ledger {}: {reason}; make it a writable file (veil creates it \
                 when missing), pass `--data DIR` with a writable directory, or set `ledger = \
                 false` to run without the ledger",
                path.display()
            ),
            LedgerError::Missing(path) => write!(
                f,
                "no ledger at {} (veil writes it while `veil run` records traffic; pass \
                 `--data DIR` if veil runs with another data directory)",
                path.display()
            ),
            LedgerError::Newer { path, found } => write!(
                f,
                "the ledger {} has schema version {found}, newer than this veil's {}: run the \
                 newer veil, or move the file away to start a new ledger",
                path.display(),
                schema::SCHEMA_VERSION
            ),
            LedgerError::Foreign {
                path,
                application_id,
            } => write!(
                f,
                "{} is not a veil ledger (SQLite application_id {application_id:#x}); it is left \
                 untouched: move it away (veil then starts a new ledger there), or pass `--data \
                 DIR` with another directory",
                path.display()
            ),
            LedgerError::Query(e) => write!(f, "ledger query failed: {e}"),
        }
    }
}

impl std::error::Error for LedgerError {}

impl From<rusqlite::Error> for LedgerError {
    fn from(e: rusqlite::Error) -> Self {
        LedgerError::Query(e.to_string())
    }
}

enum Msg {
    Batch(Vec<Record>, Option<Done>),
    /// One feedback row (the feedback API's), committed with the next group.
    Feedback(Box<feedback::FeedbackRow>),
    /// Run the bounds check now (tests, `check_blocking`).
    Check,
    /// The ticker's clock ([`PROBE_EVERY`]): the bounds check when `check_every` has passed,
    /// else a probe write if the ledger is degraded.
    Tick,
    /// Answer once everything sent before is committed (or dropped).
    Flush(std::sync::mpsc::Sender<()>),
}

impl fmt::Debug for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Msg::Batch(b, _) => write!(f, "Batch({} records)", b.len()),
            Msg::Feedback(r) => write!(f, "Feedback({})", r.id),
            Msg::Check => f.write_str("Check"),
            Msg::Tick => f.write_str("Tick"),
            Msg::Flush(_) => f.write_str("Flush"),
        }
    }
}

/// The running ledger writer. Dropping it without [`Ledger::shutdown`] lets the writer finish
/// the queue in the background.
#[derive(Debug)]
pub struct Ledger {
    tx: mpsc::Sender<Msg>,
    counters: Arc<Counters>,
    done: std::sync::mpsc::Receiver<()>,
    path: PathBuf,
}

/// A cheap, cloneable way to send batches to the ledger.
#[derive(Debug, Clone)]
pub struct LedgerHandle {
    tx: mpsc::Sender<Msg>,
    counters: Arc<Counters>,
}

impl Ledger {
    /// Opens (or creates) the ledger and starts its writer thread (and a ticker for the
    /// bounds), counting in `counters.ledger`. A corrupt file is moved aside and logged (see
    /// [`schema::open_writer`]).
    ///
    /// # Errors
    /// [`LedgerError`] when the file cannot be opened or is a newer or foreign database.
    pub fn open(
        settings: LedgerSettings,
        health: Option<Arc<Health>>,
        counters: Arc<Counters>,
    ) -> Result<Ledger, LedgerError> {
        let (conn, _aside) = schema::open_writer(&settings.path)?;
        let (tx, rx) = mpsc::channel(QUEUE_BATCHES);
        let (done_tx, done) = std::sync::mpsc::channel();
        let path = settings.path.clone();
        let tick = settings.check_every.min(PROBE_EVERY);
        let nice = settings.nice;
        let w = writer::Writer::new(conn, settings, counters.clone(), health);
        std::thread::Builder::new()
            .name("veil-ledger".into())
            .spawn(move || {
                crate::os::lower_thread_priority(nice);
                w.run(rx);
                let _ = done_tx.send(());
            })
            .map_err(|e| LedgerError::open(&path, e))?;
        let weak = tx.downgrade();
        std::thread::Builder::new()
            .name("veil-ledger-tick".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(tick);
                    let Some(tx) = weak.upgrade() else { return };
                    // Full queue: the writer is busy, and its batches tell health anyway.
                    let _ = tx.try_send(Msg::Tick);
                }
            })
            .map_err(|e| LedgerError::open(&path, e))?;
        Ok(Ledger {
            tx,
            counters,
            done,
            path,
        })
    }

    /// A handle for senders.
    pub fn handle(&self) -> LedgerHandle {
        LedgerHandle {
            tx: self.tx.clone(),
            counters: self.counters.clone(),
        }
    }

    /// The registry the ledger counts in (its `ledger` section).
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops taking batches and waits up to `deadline` (blocking) for the writer to commit
    /// what is queued. Returns whether it finished; if not, it goes on in the background
    /// and what it has not committed when the process exits is lost (and reported by the
    /// recording journal at the next start).
    pub fn shutdown(self, deadline: Duration) -> bool {
        drop(self.tx);
        self.done.recv_timeout(deadline).is_ok()
    }
}

impl LedgerHandle {
    /// Sends one batch, waiting while the writer's queue is full (the exporter's batcher
    /// calls this, so back-pressure reaches the exporter queue where drops are counted).
    /// `done` is called with the outcome. If the ledger is shut down, the batch is dropped,
    /// counted, and `done(false)` called.
    pub async fn send(&self, batch: Vec<Record>, done: Option<Done>) {
        self.counters.ledger.queued_bytes.add(wire_bytes(&batch));
        if let Err(mpsc::error::SendError(msg)) = self.tx.send(Msg::Batch(batch, done)).await {
            self.refused(msg);
        }
    }

    /// [`LedgerHandle::send`] from a thread outside the async runtime.
    pub fn send_blocking(&self, batch: Vec<Record>, done: Option<Done>) {
        self.counters.ledger.queued_bytes.add(wire_bytes(&batch));
        if let Err(mpsc::error::SendError(msg)) = self.tx.blocking_send(Msg::Batch(batch, done)) {
            self.refused(msg);
        }
    }

    /// Queues one feedback row for the writer without waiting (the feedback API calls this
    /// off the proxy's runtime). The row comes back when the queue is full or the ledger is
    /// shut down, and the API answers 503: a feedback is never dropped without the app
    /// knowing.
    pub fn try_send_feedback(
        &self,
        row: feedback::FeedbackRow,
    ) -> Result<(), Box<feedback::FeedbackRow>> {
        self.tx
            .try_send(Msg::Feedback(Box::new(row)))
            .map_err(|e| match e.into_inner() {
                Msg::Feedback(r) => r,
                _ => unreachable!("invariant: a feedback row was sent"),
            })
    }

    /// Blocks until everything sent before is committed or dropped (tests, `veil run`'s
    /// shutdown). Returns false if the writer is gone.
    pub fn flush_blocking(&self) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        self.tx.blocking_send(Msg::Flush(tx)).is_ok() && rx.recv().is_ok()
    }

    /// Asks the writer to check the bounds now.
    pub fn check_blocking(&self) {
        let _ = self.tx.blocking_send(Msg::Check);
    }

    /// The registry the ledger counts in (its `ledger` section).
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    fn refused(&self, msg: Msg) {
        if let Msg::Batch(batch, done) = msg {
            self.counters.ledger.queued_bytes.sub(wire_bytes(&batch));
            self.counters.ledger.dropped.add(batch.len() as u64);
            if let Some(done) = done {
                done(false);
            }
        }
    }
}
/// Sum of [`Record::wire_bytes`] over a batch (saturating).
pub(crate) fn wire_bytes(batch: &[Record]) -> u64 {
    batch
        .iter()
        .fold(0u64, |n, r| n.saturating_add(r.wire_bytes()))
}
