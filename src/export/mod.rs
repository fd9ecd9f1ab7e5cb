//! # Export: redacted records out as OTLP, with nothing lost while the collector is away.
//!
//! Step 4 of the flow (`proxy → exchange → redact → {export, seal}`). The pipeline hands each
//! [`Record`] to [`ExporterHandle::try_send`], which never waits. A batcher task turns records
//! into one CLIENT span, one log event and histogram points each ([`otlp`]), and every batch
//! into one encoded request per signal. One sender task per signal POSTs it over OTLP/HTTP
//! ([`sender`]); while the collector fails or is unreachable, batches go to a bounded disk
//! spool ([`spool`]) and are replayed in order when it returns, also after a restart. With no
//! endpoint configured, requests are appended as OTLP/JSON lines under `<data>/records/`
//! ([`ledger`]), which `veil tail` ([`tail`]) follows.
//!
//! ```text
//! try_send ─▶ [bounded channel] ─▶ batcher ─┬─▶ traces sender ─▶ POST /v1/traces  ⇄ spool/traces/
//!                                            ├─▶ logs sender   ─▶ POST /v1/logs    ⇄ spool/logs/
//!                                            └─▶ metrics sender ▶ POST /v1/metrics ⇄ spool/metrics/
//! ```
//!
//! ## Wiring (in `veil run`)
//! ```no_run
//! # async fn run(config: veil::config::Config, record: veil::record::Record) -> anyhow::Result<()> {
//! use std::time::Duration;
//! use veil::export::Exporter;
//!
//! // Inside the tokio runtime. Errors name the bad OTEL_* variable or TLS file.
//! let exporter = Exporter::from_config(&config, &|k| std::env::var(k).ok(), Default::default(), None)?;
//! let handle = exporter.handle(); // clone into the pipeline workers
//! if let Err(e) = handle.try_send(record) {
//!     // Full (or shut down): never waits. Best-effort audit: count and go on.
//!     handle.metrics().exchanges_dropped.inc();
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
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

pub use metrics::Metrics;
pub use otlp::{AuditEvent, Encoding, Signal};
pub use settings::{Destination, ExporterSettings, SettingsError};

use crate::config::Config;
use crate::journal::{Journal, Slot};
use crate::record::Record;
use metrics::Histograms;
use otlp::Batch;
use sender::{Attempt, OtlpClient};
use spool::Spool;

/// Batches buffered between the batcher and one signal's sender before the batcher waits.
const SENDER_QUEUE: usize = 16;

enum Item {
    /// A record, with the journal slot of its exchange when it has one.
    Record(Box<Record>, Option<Slot>),
    Audit(AuditEvent),
}

/// One encoded request on its way to a signal's sender, and who to tell once it is durable.
struct Payload {
    body: Bytes,
    done: Option<Arc<BatchDone>>,
}

impl Payload {
    fn new(body: Bytes) -> Self {
        Payload { body, done: None }
    }

    /// The payload is durable (written, spooled or delivered) or definitely lost.
    fn complete(&self, durable: bool) {
        if let Some(d) = &self.done {
            d.complete(durable);
        }
    }
}

/// The records of one batch travel as two payloads (traces and logs); they are recorded
/// when both are durable. Marks the journal slots of the batch's exchanges then: recorded,
/// or dropped when a payload was lost (that loss is counted where it happened).
struct BatchDone {
    remaining: std::sync::atomic::AtomicUsize,
    lost: std::sync::atomic::AtomicBool,
    slots: Vec<Slot>,
    journal: Arc<Journal>,
}

impl BatchDone {
    fn complete(&self, durable: bool) {
        use std::sync::atomic::Ordering::{AcqRel, Acquire, Release};
        if !durable {
            self.lost.store(true, Release);
        }
        if self.remaining.fetch_sub(1, AcqRel) == 1 {
            let lost = self.lost.load(Acquire);
            for s in &self.slots {
                if lost {
                    self.journal.dropped(*s);
                } else {
                    self.journal.recorded(*s);
                }
            }
        }
    }
}

/// Why [`ExporterHandle::try_send`] refused an item; the item comes back.
#[derive(Debug)]
pub struct TrySendError<T> {
    /// Boxed: a `Record` is large, and the error path should not copy it around.
    item: Box<T>,
    closed: bool,
}

impl<T> TrySendError<T> {
    /// True when the queue was full (the exporter is behind); false when it is shut down.
    pub fn is_full(&self) -> bool {
        !self.closed
    }

    /// True when the exporter has shut down.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The refused item.
    pub fn into_inner(self) -> T {
        *self.item
    }
}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.closed {
            f.write_str("exporter is shut down")
        } else {
            f.write_str("export queue is full")
        }
    }
}

impl<T: fmt::Debug> std::error::Error for TrySendError<T> {}

/// The cheap, cloneable side the pipeline holds: queue records and audit events, reach the
/// counters. Never waits.
#[derive(Clone)]
pub struct ExporterHandle {
    tx: mpsc::Sender<Item>,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for ExporterHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExporterHandle")
            .field("queued", &(self.tx.max_capacity() - self.tx.capacity()))
            .finish()
    }
}

impl ExporterHandle {
    /// Queues one record without waiting. On a full queue the record comes back in the
    /// error and nothing is counted: the caller decides (count it in
    /// [`Metrics::exchanges_dropped`], or refuse the request under `audit = "required"`).
    pub fn try_send(&self, record: Record) -> Result<(), TrySendError<Record>> {
        self.try_send_journaled(record, None)
    }

    /// [`ExporterHandle::try_send`] for a record whose exchange holds journal slot `slot`:
    /// the slot is marked recorded once the record is durable.
    pub fn try_send_journaled(
        &self,
        record: Record,
        slot: Option<Slot>,
    ) -> Result<(), TrySendError<Record>> {
        self.tx
            .try_send(Item::Record(Box::new(record), slot))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(Item::Record(r, _)) => TrySendError {
                    item: r,
                    closed: false,
                },
                mpsc::error::TrySendError::Closed(Item::Record(r, _)) => TrySendError {
                    item: r,
                    closed: true,
                },
                _ => unreachable!("invariant: a record was sent"),
            })
    }

    /// Queues one record, waiting for room (audit required: the pipeline must not drop what
    /// the proxy admitted). Call from an OS thread, never from inside the async runtime.
    /// Fails only when the exporter has shut down.
    pub fn send_blocking(
        &self,
        record: Record,
        slot: Option<Slot>,
    ) -> Result<(), TrySendError<Record>> {
        self.tx
            .blocking_send(Item::Record(Box::new(record), slot))
            .map_err(|e| match e.0 {
                Item::Record(r, _) => TrySendError {
                    item: r,
                    closed: true,
                },
                _ => unreachable!("invariant: a record was sent"),
            })
    }

    /// Queues one audit event without waiting, as an OTLP log record.
    pub fn try_send_audit(&self, event: AuditEvent) -> Result<(), TrySendError<AuditEvent>> {
        self.tx.try_send(Item::Audit(event)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(Item::Audit(a)) => TrySendError {
                item: Box::new(a),
                closed: false,
            },
            mpsc::error::TrySendError::Closed(Item::Audit(a)) => TrySendError {
                item: Box::new(a),
                closed: true,
            },
            _ => unreachable!("invariant: an audit event was sent"),
        })
    }

    /// The shared counters (`veil.exchanges.dropped` and the others).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

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

impl Exporter {
    /// Resolves settings from the config and `env` (use `|k| std::env::var(k).ok()` in the
    /// binary) and starts the exporter with `metrics` as its counters (set
    /// [`Metrics::recording_queue`] to export the proxy's drops), marking records durable in
    /// `journal` when given. Must run inside a tokio runtime.
    pub fn from_config(
        config: &Config,
        env: &dyn Fn(&str) -> Option<String>,
        metrics: Metrics,
        journal: Option<Arc<Journal>>,
    ) -> anyhow::Result<Exporter> {
        let mut settings =
            ExporterSettings::resolve(config.otlp_endpoint.as_deref(), config.data.clone(), env)?;
        settings.queue_capacity = config.queue_capacity;
        settings.journal = journal;
        Ok(Exporter::start(settings, Arc::new(metrics))?)
    }

    /// Starts the exporter with resolved settings, opening the spools (their batches are
    /// replayed first). Must run inside a tokio runtime.
    pub fn start(settings: ExporterSettings, metrics: Arc<Metrics>) -> std::io::Result<Exporter> {
        let settings = Arc::new(settings);
        let (tx, rx) = mpsc::channel(settings.queue_capacity.max(1));
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut senders = Vec::new();
        let mut sender_txs = Vec::new();
        for signal in Signal::ALL {
            let (stx, srx) = mpsc::channel::<Payload>(SENDER_QUEUE);
            let task = match &settings.signal(signal).destination {
                Destination::File => {
                    let data = settings.data_dir.clone();
                    let metrics = metrics.clone();
                    tokio::spawn(run_ledger(data, signal, srx, metrics))
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
                    metrics.spool_bytes.add(spool.bytes());
                    let s = OtlpSender {
                        signal,
                        url: url.clone(),
                        settings: settings.clone(),
                        // One client per signal: each may have its own TLS files.
                        client: OtlpClient::with_tls(&settings.signal(signal).tls)?,
                        spool,
                        metrics: metrics.clone(),
                        failures: 0,
                    };
                    tokio::spawn(s.run(srx, stop_rx.clone()))
                }
            };
            senders.push(task);
            sender_txs.push(stx);
        }
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let batcher = Batcher {
            settings: settings.clone(),
            metrics: metrics.clone(),
            histograms: Histograms::default(),
            started: SystemTime::now(),
            batch: Batch::default(),
            records_in_batch: 0,
            slots: Vec::new(),
            sender_txs,
        };
        let batcher = tokio::spawn(batcher.run(rx, shutdown_rx));
        Ok(Exporter {
            handle: ExporterHandle { tx, metrics },
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

    /// The shared counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.handle.metrics.clone()
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

// === impl Batcher ===

/// Accumulates records into batches and cumulative metrics; encodes and hands requests to the
/// per-signal senders.
struct Batcher {
    settings: Arc<ExporterSettings>,
    metrics: Arc<Metrics>,
    histograms: Histograms,
    started: SystemTime,
    batch: Batch,
    records_in_batch: usize,
    /// Journal slots of the records in `batch`.
    slots: Vec<Slot>,
    /// In [`Signal::ALL`] order.
    sender_txs: Vec<mpsc::Sender<Payload>>,
}

impl Batcher {
    async fn run(mut self, mut rx: mpsc::Receiver<Item>, mut shutdown: oneshot::Receiver<()>) {
        let far = Duration::from_secs(86_400 * 365);
        let mut batch_deadline = Instant::now() + far;
        let mut metrics_tick = tokio::time::interval(self.settings.metrics_interval);
        metrics_tick.tick().await;
        let mut exported_exchanges = 0;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                item = rx.recv() => match item {
                    None => break,
                    Some(item) => {
                        if self.batch.is_empty() {
                            batch_deadline = Instant::now() + self.settings.batch_age;
                        }
                        self.push(item);
                        if self.records_in_batch >= self.settings.batch_max
                            || self.batch.len() >= 2 * self.settings.batch_max
                        {
                            self.flush().await;
                            batch_deadline = Instant::now() + far;
                        }
                    }
                },
                _ = tokio::time::sleep_until(batch_deadline), if !self.batch.is_empty() => {
                    self.flush().await;
                    batch_deadline = Instant::now() + far;
                }
                _ = metrics_tick.tick() => {
                    // Only when something changed: no empty envelopes for an idle proxy.
                    let now = self.metrics.exchanges.get() + self.metrics.audit_events.get();
                    if now != exported_exchanges {
                        exported_exchanges = now;
                        self.flush_metrics().await;
                    }
                }
            }
        }
        // Drain what is queued (bounded by the channel's capacity), then the last batch.
        rx.close();
        while let Ok(item) = rx.try_recv() {
            self.push(item);
            if self.records_in_batch >= self.settings.batch_max {
                self.flush().await;
            }
        }
        self.flush().await;
        if !self.histograms.is_empty() {
            self.flush_metrics().await;
        }
    }

    fn push(&mut self, item: Item) {
        match item {
            Item::Record(r, slot) => {
                self.slots.extend(slot);
                self.metrics.exchanges.inc();
                if r.content_dropped.is_some() {
                    self.metrics.content_dropped.inc();
                }
                self.batch.push_record(&r);
                otlp::observe(&mut self.histograms, &r);
                self.records_in_batch += 1;
            }
            Item::Audit(a) => {
                self.metrics.audit_events.inc();
                self.batch.logs.push(otlp::audit_log(&a));
            }
        }
    }

    fn encoding(&self, signal: Signal) -> Encoding {
        match self.settings.signal(signal).destination {
            // The ledger is OTLP/JSON lines whatever the wire protocol.
            Destination::File => Encoding::Json,
            Destination::Otlp(_) => self.settings.signal(signal).encoding,
        }
    }

    async fn flush(&mut self) {
        self.records_in_batch = 0;
        let res = &self.settings.resource;
        let traces = self.batch.traces_request(res).map(|req| {
            Payload::new(Bytes::from(otlp::encode(
                &req,
                self.encoding(Signal::Traces),
            )))
        });
        let logs = self
            .batch
            .logs_request(res)
            .map(|req| Payload::new(Bytes::from(otlp::encode(&req, self.encoding(Signal::Logs)))));
        let mut payloads: Vec<(Signal, Payload)> = [(Signal::Traces, traces), (Signal::Logs, logs)]
            .into_iter()
            .filter_map(|(s, p)| p.map(|p| (s, p)))
            .collect();
        let slots = std::mem::take(&mut self.slots);
        if let Some(journal) = &self.settings.journal
            && !slots.is_empty()
            && !payloads.is_empty()
        {
            let done = Arc::new(BatchDone {
                remaining: payloads.len().into(),
                lost: false.into(),
                slots,
                journal: journal.clone(),
            });
            for (_, p) in &mut payloads {
                p.done = Some(done.clone());
            }
        }
        for (signal, payload) in payloads {
            self.hand_over(signal, payload).await;
        }
    }

    async fn flush_metrics(&mut self) {
        let req = otlp::metrics_request(
            &self.settings.resource,
            &self.histograms,
            &self.metrics,
            self.started,
            SystemTime::now(),
        );
        let body = otlp::encode(&req, self.encoding(Signal::Metrics));
        self.hand_over(Signal::Metrics, Payload::new(Bytes::from(body)))
            .await;
    }

    /// Waits for room at the sender: the batcher is off the hot path, and the senders never
    /// block long (they spool while the collector is away), so back-pressure ends at the
    /// record channel, where `try_send` reports it.
    async fn hand_over(&self, signal: Signal, payload: Payload) {
        if let Err(e) = self.sender_txs[signal as usize].send(payload).await {
            tracing::error!(signal = signal.name(), "export: sender stopped; batch lost");
            self.metrics.batches_rejected.inc();
            e.0.complete(false);
        }
    }
}

// === impl ledger sender ===

async fn run_ledger(
    data: std::path::PathBuf,
    signal: Signal,
    mut rx: mpsc::Receiver<Payload>,
    metrics: Arc<Metrics>,
) -> usize {
    while let Some(payload) = rx.recv().await {
        let dir = data.clone();
        let body = payload.body.clone();
        let res = tokio::task::spawn_blocking(move || {
            ledger::append(&dir, signal, &body, SystemTime::now())
        })
        .await;
        payload.complete(matches!(res, Ok(Ok(()))));
        let err = match res {
            Ok(Ok(())) => {
                metrics.observe_write::<String>(signal, &Ok(()));
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        metrics.observe_write(
            signal,
            &Err(format!(
                "records ledger {}: {err}",
                ledger::records_dir(&data).display()
            )),
        );
        metrics.export_failures.inc();
        tracing::error!(signal = signal.name(), error = %err, dir = %ledger::records_dir(&data).display(), "export: could not write the records ledger");
    }
    0
}

// === impl OtlpSender ===

type InFlight = Pin<Box<dyn Future<Output = Attempt> + Send>>;

/// One signal's delivery loop: direct sends while the collector is healthy, the spool while
/// it is not.
struct OtlpSender {
    signal: Signal,
    url: String,
    settings: Arc<ExporterSettings>,
    client: OtlpClient,
    spool: Spool,
    metrics: Arc<Metrics>,
    /// Consecutive failed attempts (drives the backoff).
    failures: u32,
}

impl OtlpSender {
    fn attempt(&self, enc: Encoding, body: Bytes) -> InFlight {
        let s = self.settings.signal(self.signal);
        Box::pin(self.client.clone().send(
            self.url.clone(),
            self.signal,
            enc,
            body,
            s.headers.clone(),
            s.gzip,
            s.timeout,
        ))
    }

    /// Spools `payload`; it counts as durable once it is in the spool.
    fn spool(&mut self, enc: Encoding, payload: &Payload) {
        let body = &payload.body[..];
        let pushed = self.spool.push(enc, body);
        payload.complete(pushed.is_ok());
        match pushed {
            Ok(loss) => {
                self.metrics.observe_write::<String>(self.signal, &Ok(()));
                self.metrics.spool_bytes.add((body.len() + 13) as u64);
                self.account_loss(loss, "spool full: oldest batches dropped");
            }
            Err(e) => {
                self.metrics.observe_write(
                    self.signal,
                    &Err(format!("export spool ({}): {e}", self.signal.name())),
                );
                self.metrics.batches_rejected.inc();
                tracing::error!(signal = self.signal.name(), error = %e, "export: could not spool a batch; it is lost");
            }
        }
    }

    fn account_loss(&self, loss: spool::Loss, why: &str) {
        if loss.batches > 0 {
            self.metrics.spool_bytes.sub(loss.bytes);
            self.metrics.spool_batches_dropped.add(loss.batches);
            self.metrics.spool_bytes_dropped.add(loss.bytes);
            tracing::error!(
                signal = self.signal.name(),
                batches = loss.batches,
                bytes = loss.bytes,
                "export: {why}"
            );
        }
    }

    /// Delay before the next attempt: `Retry-After` when given (capped at `retry_max`), else
    /// exponential from `retry_initial` with full jitter in [d/2, d].
    fn backoff(&mut self, after: Option<Duration>) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let max = self.settings.retry_max;
        if let Some(a) = after {
            return a.min(max);
        }
        let exp = self.failures.saturating_sub(1).min(20);
        let d = self
            .settings
            .retry_initial
            .saturating_mul(1 << exp)
            .min(max);
        let jitter: f64 = rand::random::<f64>() * 0.5 + 0.5;
        d.mul_f64(jitter)
    }

    /// Runs until the batcher is gone and the spool is empty, or until `stop`; returns the
    /// number of batches left in the spool.
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Payload>,
        mut stop: watch::Receiver<bool>,
    ) -> usize {
        let enc = self.settings.signal(self.signal).encoding;
        let mut open = true;
        let mut next_try = Instant::now();
        // The attempt in flight, and the direct (not yet spooled) payload it carries.
        let mut inflight: Option<InFlight> = None;
        let mut direct: Option<Payload> = None;
        loop {
            if !open && inflight.is_none() && self.spool.is_empty() {
                break;
            }
            let can_read = open && direct.is_none();
            let can_replay = inflight.is_none() && !self.spool.is_empty();
            tokio::select! {
                _ = stop.changed() => {
                    if let Some(b) = direct.take() {
                        self.spool(enc, &b);
                    }
                    while let Ok(b) = rx.try_recv() {
                        self.spool(enc, &b);
                    }
                    break;
                }
                msg = rx.recv(), if can_read => match msg {
                    None => open = false,
                    Some(payload) => {
                        if inflight.is_none() && self.spool.is_empty() && Instant::now() >= next_try {
                            inflight = Some(self.attempt(enc, payload.body.clone()));
                            direct = Some(payload);
                        } else {
                            // Behind a failure or older batches: keep the order.
                            self.spool(enc, &payload);
                        }
                    }
                },
                attempt = async { inflight.as_mut().expect("invariant: guarded").await }, if inflight.is_some() => {
                    inflight = None;
                    let from_spool = direct.is_none();
                    match attempt {
                        Attempt::Delivered => {
                            self.metrics.observe_write::<String>(self.signal, &Ok(()));
                            self.metrics.batches_delivered.inc();
                            self.failures = 0;
                            next_try = Instant::now();
                            if let Some(p) = direct.take() {
                                p.complete(true);
                            }
                            if from_spool {
                                let n = self.spool.pop_front();
                                self.metrics.spool_bytes.sub(n);
                            }
                        }
                        Attempt::Reject { why } => {
                            self.metrics.export_failures.inc();
                            self.metrics.batches_rejected.inc();
                            tracing::error!(signal = self.signal.name(), %why, "export: batch rejected, not retried");
                            if let Some(p) = direct.take() {
                                p.complete(false);
                            }
                            if from_spool {
                                let n = self.spool.pop_front();
                                self.metrics.spool_bytes.sub(n);
                            }
                        }
                        Attempt::Retry { after, why } => {
                            self.metrics.export_failures.inc();
                            let delay = self.backoff(after);
                            tracing::warn!(signal = self.signal.name(), %why, retry_in = ?delay, spooled = self.spool.len(), "export: collector unavailable, spooling");
                            next_try = Instant::now() + delay;
                            if let Some(b) = direct.take() {
                                self.spool(enc, &b);
                            }
                        }
                    }
                }
                _ = tokio::time::sleep_until(next_try), if can_replay => {
                    let (front, loss) = self.spool.front();
                    self.account_loss(loss, "corrupted spooled batches discarded");
                    if let Some((e, body)) = front {
                        inflight = Some(self.attempt(e, Bytes::from(body)));
                    }
                }
            }
        }
        self.spool.len()
    }
}

#[cfg(test)]
mod tests;
