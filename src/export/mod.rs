//! # Export: redacted records out as OTLP, with nothing lost while the collector is away.
//!
//! Step 4 of the flow (`proxy → exchange → redact → {export, seal}`). The pipeline hands each
//! [`Record`](crate::record::Record) to [`ExporterHandle::try_send`], which never waits. A batcher task turns records
//! into one CLIENT span, one log event and histogram points each ([`otlp`]), and every batch
//! into one encoded request per signal. One sender task per signal POSTs it over OTLP/HTTP
//! ([`sender`]); while the collector fails or is unreachable, batches go to a bounded disk
//! spool ([`spool`]) and are replayed in order when it returns, also after a restart. With no
//! endpoint configured, requests are appended as OTLP/JSON lines under `<data>/records/`
//! ([`ledger`]), which `veil tail` ([`tail`]) follows.
//!
//! ```text
//! try_send ─▶ [queue bounded in records] ─▶ batcher ─┬─▶ traces sender ─▶ POST /v1/traces  ⇄ spool/traces/
//!                                                    ├─▶ logs sender   ─▶ POST /v1/logs    ⇄ spool/logs/
//!                                                    └─▶ metrics sender ▶ POST /v1/metrics ⇄ spool/metrics/
//! ```
//!
//! ## Wiring (in `veil run`)
//! ```no_run
//! # async fn run(config: veil::config::Config, record: veil::record::Record) -> Result<(), veil::export::StartError> {
//! use std::time::Duration;
//! use veil::export::Exporter;
//!
//! // Inside the tokio runtime. Errors name the bad OTEL_* variable or TLS file.
//! // The registry comes from `veil run`, which hands the same one to every step.
//! let counters = std::sync::Arc::new(veil::counters::Counters::default());
//! let exporter = Exporter::from_config(
//!     &config, &|k| std::env::var(k).ok(), counters.clone(), None, None, None,
//! )?;
//! let handle = exporter.handle(); // clone into the pipeline workers
//! if let Err(e) = handle.try_send(record) {
//!     // Full (or shut down): never waits. Best-effort audit: count and go on.
//!     counters.pipeline.export_dropped.inc();
//!     tracing::warn!(error = %e, "record dropped");
//! }
//! // On shutdown, after the pipeline has drained: bounded flush, the rest stays spooled.
//! let report = exporter.shutdown(config.drain_timeout).await;
//! # let _ = (report, Duration::ZERO);
//! # Ok(()) }
//! ```
//!
//! Owns: `<data>/spool/` and `<data>/records/`, and its network connections to the collector.
//! Reads `Record`s (already redacted) and audit events only: never an `Exchange`, never raw
//! content, never keys.

mod batcher;
mod deliver;
pub mod erase;
mod handle;
pub mod ledger;
pub mod metrics;
pub mod otlp;
pub mod sender;
pub mod settings;
pub mod spool;
pub mod tail;
#[cfg(test)]
pub mod testing;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[cfg(test)]
pub(crate) use handle::TestQueue;
pub use handle::{ExporterHandle, Journaled, TrySendError};
pub use otlp::{AuditEvent, Encoding, FeedbackEvent, Signal};
pub use settings::{Destination, ExporterSettings, SettingsError, StartError};

use crate::config::Config;
use crate::counters::Counters;
use crate::health::Health;
use crate::journal::Journal;
use crate::ledger::LedgerHandle;
use batcher::{Batcher, Job};
use deliver::{OtlpSender, run_ledger};
use sender::OtlpClient;
use spool::Spool;

/// Batches buffered between the batcher and one signal's sender before the batcher waits.
const SENDER_QUEUE: usize = 16;

/// What [`Exporter::shutdown`] managed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Batches still in the spool (delivered at the next start).
    pub spooled_batches: usize,
    /// True when every sender finished before the deadline.
    pub drained: bool,
}

/// The running exporter: owns its tasks. Dropping it without [`Exporter::shutdown`] aborts
/// them at once (what a crash does): only spooled batches survive.
pub struct Exporter {
    handle: ExporterHandle,
    shutdown_tx: Option<oneshot::Sender<()>>,
    stop_tx: watch::Sender<bool>,
    batcher: Option<JoinHandle<()>>,
    senders: Vec<JoinHandle<usize>>,
}

impl fmt::Debug for Exporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporter")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Some(b) = &self.batcher {
            b.abort();
        }
        for s in &self.senders {
            s.abort();
        }
    }
}

/// Batches an earlier run spooled for `signal`'s collector: `(batches, bytes)`, `None` when
/// there are none (or no spool directory: it is never created here).
fn spool_left(data_dir: &std::path::Path, signal: Signal) -> Option<(usize, u64)> {
    let dir = data_dir.join("spool").join(signal.name());
    if !dir.is_dir() {
        return None;
    }
    let spool = Spool::open(&dir, u64::MAX).ok()?;
    (!spool.is_empty()).then(|| (spool.len(), spool.bytes()))
}

impl Exporter {
    /// Resolves settings from the config and `env` (use `|k| std::env::var(k).ok()` in the
    /// binary) and starts the exporter counting in `counters` (every entry of which its
    /// metrics requests export), reporting records writes to `health` and marking records
    /// durable in `journal` when given. Must run inside a tokio runtime.
    ///
    /// Records also go to `ledger` when given. Without an OTLP endpoint, records are written
    /// as OTLP/JSON lines under `<data>/records/` only when `records_files` is set or there is
    /// no ledger (so they always land somewhere local).
    ///
    /// Errors: [`StartError::Settings`] for a bad `OTEL_*` variable or endpoint,
    /// [`StartError::Io`] for a spool directory or TLS file that cannot be opened.
    pub fn from_config(
        config: &Config,
        env: &dyn Fn(&str) -> Option<String>,
        counters: Arc<Counters>,
        health: Option<Arc<Health>>,
        journal: Option<Arc<Journal>>,
        ledger: Option<LedgerHandle>,
    ) -> Result<Exporter, StartError> {
        let mut settings =
            ExporterSettings::resolve(config.otlp_endpoint.as_deref(), config.data.clone(), env)?;
        if ledger.is_some() && !config.records_files {
            settings = settings.without_files();
        }
        if config.records_files
            && settings
                .signals
                .iter()
                .all(|s| matches!(s.destination, settings::Destination::Otlp(_)))
        {
            // Asked for and not written: say so once, where the operator looks.
            tracing::warn!(
                "records_files = true has no effect: every signal goes to the OTLP collector \
                 (spooled under data/spool/ while it is down); records files are written only \
                 for signals with no collector"
            );
        }
        settings.queue_capacity = config.queue_capacity;
        settings.journal = journal;
        settings.observe_series = config.metrics_listen.is_some();
        Ok(Exporter::start_with_ledger(
            settings, counters, ledger, health,
        )?)
    }

    /// Starts the exporter with resolved settings, opening the spools (their batches are
    /// replayed first), counting in `counters`. Must run inside a tokio runtime.
    pub fn start(settings: ExporterSettings, counters: Arc<Counters>) -> std::io::Result<Exporter> {
        Exporter::start_with_ledger(settings, counters, None, None)
    }

    /// [`Exporter::start`], also handing every batch of records to the SQLite ledger; a
    /// batch's journal slots are marked recorded once its OTLP payloads and its ledger
    /// transaction are all durable. Records writes (the records files, the spool) are reported
    /// to `health` when given ([`crate::health::Part::Records`]).
    pub fn start_with_ledger(
        settings: ExporterSettings,
        counters: Arc<Counters>,
        ledger: Option<LedgerHandle>,
        health: Option<Arc<Health>>,
    ) -> std::io::Result<Exporter> {
        let settings = Arc::new(settings);
        let (mut handle, rx) = handle::queue(settings.queue_capacity, counters.clone());
        // Only log events read the content's trees, and they leave only when the logs signal
        // goes somewhere (`Batch::push_record_to` builds each signal only when it is
        // exported).
        handle.content_trees = settings.signal(Signal::Logs).destination != Destination::Off;
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut senders = Vec::new();
        let mut sender_txs = Vec::new();
        for signal in Signal::ALL {
            let (stx, srx) = mpsc::channel::<Job>(SENDER_QUEUE);
            let destination = &settings.signal(signal).destination;
            if !matches!(destination, Destination::Otlp(_))
                && let Some((batches, bytes)) = spool_left(&settings.data_dir, signal)
            {
                tracing::warn!(
                    "export: {batches} {} batch(es) ({bytes} bytes) from a run with a collector wait in {}; no collector takes {} now, so they stay until one does (they are sent then); `veil forget` still reaches them, and deleting the directory drops them",
                    signal.name(),
                    settings
                        .data_dir
                        .join("spool")
                        .join(signal.name())
                        .display(),
                    signal.name()
                );
            }
            let task = match destination {
                Destination::Off => {
                    sender_txs.push(None);
                    continue;
                }
                Destination::File => {
                    let data = settings.data_dir.clone();
                    let counters = counters.clone();
                    let health = health.clone();
                    tokio::spawn(run_ledger(data, signal, srx, counters, health))
                }
                Destination::Otlp(url) => {
                    let dir = settings.data_dir.join("spool").join(signal.name());
                    let spool = Spool::open(&dir, settings.spool_max_bytes)?;
                    if !spool.is_empty() {
                        tracing::info!(
                            signal = signal.name(),
                            batches = spool.len(),
                            bytes = spool.bytes(),
                            "export: replaying spooled batches"
                        );
                    }
                    counters.export.spool_bytes.add(spool.bytes());
                    let s = OtlpSender {
                        signal,
                        url: url.clone(),
                        settings: settings.clone(),
                        // One client per signal: each may have its own TLS files.
                        client: OtlpClient::with_tls(&settings.signal(signal).tls)?,
                        spool,
                        counters: counters.clone(),
                        health: health.clone(),
                        failures: 0,
                    };
                    tokio::spawn(s.run(srx, stop_rx.clone()))
                }
            };
            senders.push(task);
            sender_txs.push(Some(stx));
        }
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let batcher = Batcher::new(settings.clone(), counters.clone(), sender_txs, ledger);
        let batcher = tokio::spawn(batcher.run(rx, shutdown_rx));
        Ok(Exporter {
            handle,
            shutdown_tx: Some(shutdown_tx),
            stop_tx,
            batcher: Some(batcher),
            senders,
        })
    }

    /// A handle for the pipeline (clone it freely).
    pub fn handle(&self) -> ExporterHandle {
        self.handle.clone()
    }

    /// The registry the exporter counts in.
    pub fn counters(&self) -> &Arc<Counters> {
        &self.handle.counters
    }

    /// Graceful stop: takes what is queued, sends the last batch and the metrics, then keeps
    /// delivering until `deadline`; what is still undelivered then is spooled for the next
    /// start (when an endpoint is configured).
    pub async fn shutdown(mut self, deadline: Duration) -> ShutdownReport {
        let until = Instant::now() + deadline;
        if let Some(tx) = self.shutdown_tx.take() {
            let _ = tx.send(());
        }
        if let Some(b) = self.batcher.take() {
            let _ = tokio::time::timeout_at(until, b).await;
        }
        let mut senders = std::mem::take(&mut self.senders);
        let mut drained = true;
        let mut spooled = 0;
        let all = futures_join(&mut senders);
        let results = match tokio::time::timeout_at(until, all).await {
            Ok(r) => r,
            Err(_) => {
                drained = false;
                let _ = self.stop_tx.send(true);
                // Senders spool what they hold and return promptly once stopped.
                futures_join(&mut senders).await
            }
        };
        for r in results {
            spooled += r;
        }
        ShutdownReport {
            spooled_batches: spooled,
            drained: drained && spooled == 0,
        }
    }
}

/// Awaits every handle in order (each resolves once; the vector is left empty when done).
async fn futures_join(handles: &mut Vec<JoinHandle<usize>>) -> Vec<usize> {
    let mut out = Vec::new();
    while let Some(h) = handles.first_mut() {
        out.push(h.await.unwrap_or(0));
        handles.remove(0);
    }
    out
}

#[cfg(test)]
mod tests;
