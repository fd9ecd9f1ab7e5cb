//! # Batcher: records and audit events → encoded OTLP requests, one per signal.
//!
//! The exporter's middle stage: a tokio task drains the handle's queue
//! ([`super::handle`]), gathers records into a [`Batch`] (flushed at `batch_max` records or
//! `batch_age`), adds each record to the registry's series, encodes each request ([`super::otlp`]) and
//! hands it as a [`Payload`] to the signal's delivery task ([`super::deliver`]). Journal
//! slots ride along in [`BatchDone`] and are marked once both payloads are durable.
//!
//! Owns: batch timing and the journal marks. Never touches the network or the spool.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::erase::{self, Erased, SignalErased, Targets};
use super::handle::{Item, ItemReceiver};
use super::otlp::{self, Batch};
use super::{Destination, Encoding, ExporterSettings, Signal};
use crate::counters::Counters;
use crate::journal::{Journal, Slot};
use crate::ledger::LedgerHandle;
use crate::record::Record;

/// What a signal's delivery task receives, in order: requests to make durable, and erases
/// (a forget) to run on its spool and records files between two of them.
pub(super) enum Job {
    Payload(Payload),
    Erase(EraseJob),
}

/// One signal's part of a forget: erase `targets`, answer on `reply`.
pub(super) struct EraseJob {
    pub(super) targets: Arc<Targets>,
    pub(super) reply: oneshot::Sender<SignalErased>,
}

/// One encoded request on its way to a signal's sender, and who to tell once it is durable.
pub(super) struct Payload {
    pub(super) body: Bytes,
    pub(super) done: Option<Arc<BatchDone>>,
    /// Its records' share of `export.unwritten_bytes`, held until every payload made from
    /// them is dropped (written, delivered, spooled or lost).
    unwritten: Option<Arc<Unwritten>>,
}

impl Payload {
    pub(super) fn new(body: Bytes) -> Self {
        Payload {
            body,
            done: None,
            unwritten: None,
        }
    }

    /// The payload is durable (written, spooled or delivered) or definitely lost.
    pub(super) fn complete(&self, durable: bool) {
        if let Some(d) = &self.done {
            d.complete(durable);
        }
    }
}

/// A flushed batch's records as `export.unwritten_bytes` (their wire bytes), given back when
/// dropped: the disk watch (`server::Backlog`) counts them until their last payload has left
/// the sender's queue, not only until the batcher hands the payloads over. Without it, up to
/// [`SENDER_QUEUE`](super::SENDER_QUEUE) encoded batches per signal waiting for the records
/// files were counted by nothing once the record's queue place was freed (stop 52).
struct Unwritten {
    counters: Arc<Counters>,
    bytes: u64,
}

impl Drop for Unwritten {
    fn drop(&mut self) {
        self.counters.export.unwritten_bytes.sub(self.bytes);
    }
}

/// The records of one batch travel as two payloads (traces and logs); they are recorded
/// when both are durable. Marks the journal slots of the batch's exchanges then: recorded,
/// or dropped when a payload was lost (that loss is counted where it happened).
pub(super) struct BatchDone {
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
            // One write per run of consecutive slots, not one per record.
            if self.lost.load(Acquire) {
                self.journal.dropped_all(&self.slots);
            } else {
                self.journal.recorded_all(&self.slots);
            }
        }
    }
}

/// Accumulates records into batches and cumulative metrics; encodes and hands requests to the
/// per-signal senders.
pub(super) struct Batcher {
    pub(super) settings: Arc<ExporterSettings>,
    pub(super) counters: Arc<Counters>,
    pub(super) started: SystemTime,
    pub(super) batch: Batch,
    pub(super) records_in_batch: usize,
    /// The records of the batch, for the ledger (empty without one).
    pub(super) records: Vec<Record>,
    /// Places reserved for the next batch's records at its first: the recent batches' size
    /// ([`otlp::recent_size`]). Grown by doubling instead, the vector of ~1.2 KB records
    /// reallocating and copying itself was 3 % of the exporter thread at 64 connections
    /// (stop 58's profile).
    pub(super) records_hint: usize,
    /// Journal slots of the records in `batch`.
    pub(super) slots: Vec<Slot>,
    /// `export.unwritten_bytes` of the records in `batch`, released once they are
    /// handed on.
    pub(super) unwritten_bytes: u64,
    /// In [`Signal::ALL`] order; `None` for a signal that goes nowhere ([`Destination::Off`]).
    pub(super) sender_txs: Vec<Option<mpsc::Sender<Job>>>,
    /// The SQLite ledger, when on.
    pub(super) ledger: Option<LedgerHandle>,
    /// The targets of recent forgets, so their records still in flight are not exported.
    pub(super) forgotten: Forgotten,
    /// Offers the core between records ([`crate::os::Courtesy`]).
    pub(super) courtesy: crate::os::Courtesy,
}

/// How long the batcher remembers a forget's targets. The queue is FIFO: a record queued
/// before the erase was flushed and then erased by it; one still on a pipeline worker when the
/// forget ran (built from an exchange that happened before it) reaches the batcher after the
/// erase, seconds later at most, and would otherwise be exported after its own deletion event.
/// Ten minutes is generous; the sealed store and the ledger keep their own tombstones.
const FORGOTTEN_TTL: Duration = Duration::from_secs(600);

/// At most this many remembered request ids and pseudonyms; past it the oldest go first.
const FORGOTTEN_MAX: usize = 100_000;

/// A deadline that never comes (no batch pending).
const FAR: Duration = Duration::from_secs(86_400 * 365);

/// How long the batcher waits after a wake-up before it takes what else was queued. Each
/// item sent while the batcher waits on the queue wakes its runtime's thread (an `eventfd`
/// write by the sender and a wake-up here); at one connection each record came alone and
/// paid that whole round (`veil-export` ~5–7 µs per exchange, `benches/load`). Records are
/// batched for up to `batch_age` (1 s) anyway, so waiting 1 ms costs nothing a reader sees.
/// The queue's bound is unchanged: a pipeline that finds it full still drops or waits.
const LINGER: Duration = Duration::from_millis(1);

/// The request ids and user pseudonyms of the forgets of the last [`FORGOTTEN_TTL`], in
/// memory (a restart loses them, and with them nothing in flight: a restart drains or loses
/// the queue first).
#[derive(Debug, Default)]
pub(super) struct Forgotten {
    keys: HashMap<String, Instant>,
    order: VecDeque<(Instant, String)>,
}

impl Forgotten {
    fn remember(&mut self, targets: &Targets, now: Instant) {
        self.prune(now);
        for k in targets.request_ids().iter().chain(targets.users()) {
            self.keys.insert(k.clone(), now);
            self.order.push_back((now, k.clone()));
        }
        while self.keys.len() > FORGOTTEN_MAX {
            let Some((at, k)) = self.order.pop_front() else {
                break;
            };
            if self.keys.get(&k) == Some(&at) {
                self.keys.remove(&k);
            }
        }
    }

    /// Whether `r`'s request id, or any user pseudonym its identity sources named, was
    /// forgotten in the last [`FORGOTTEN_TTL`].
    fn covers(&mut self, r: &Record, now: Instant) -> bool {
        if self.keys.is_empty() {
            return false;
        }
        self.prune(now);
        self.keys.contains_key(&r.request_id)
            || r.user_pseudonym
                .iter()
                .chain(&r.user_pseudonyms)
                .any(|u| self.keys.contains_key(u.as_str()))
    }

    fn prune(&mut self, now: Instant) {
        while let Some((at, _)) = self.order.front() {
            if now.duration_since(*at) < FORGOTTEN_TTL {
                break;
            }
            let (at, k) = self.order.pop_front().expect("invariant: front exists");
            if self.keys.get(&k) == Some(&at) {
                self.keys.remove(&k);
            }
        }
    }
}

/// What `signal`'s payloads are encoded in.
fn encoding(settings: &ExporterSettings, signal: Signal) -> Encoding {
    match settings.signal(signal).destination {
        // The ledger is OTLP/JSON lines whatever the wire protocol.
        Destination::File => Encoding::Json,
        Destination::Otlp(_) | Destination::Off => settings.signal(signal).encoding,
    }
}

impl Batcher {
    /// A batcher with nothing pending. `sender_txs` is in [`Signal::ALL`] order, `None` for a
    /// signal that goes nowhere.
    pub(super) fn new(
        settings: Arc<ExporterSettings>,
        counters: Arc<Counters>,
        sender_txs: Vec<Option<mpsc::Sender<Job>>>,
        ledger: Option<LedgerHandle>,
    ) -> Batcher {
        let batch = Batch::new(
            encoding(&settings, Signal::Traces),
            encoding(&settings, Signal::Logs),
        );
        Batcher {
            settings,
            counters,
            started: SystemTime::now(),
            batch,
            records_in_batch: 0,
            records: Vec::new(),
            records_hint: 0,
            slots: Vec::new(),
            unwritten_bytes: 0,
            sender_txs,
            ledger,
            forgotten: Forgotten::default(),
            courtesy: crate::os::Courtesy::default(),
        }
    }

    pub(super) async fn run(mut self, mut rx: ItemReceiver, mut shutdown: oneshot::Receiver<()>) {
        let mut batch_deadline = Instant::now() + FAR;
        let mut metrics_tick = tokio::time::interval(self.settings.metrics_interval);
        metrics_tick.tick().await;
        let mut exported_exchanges = 0;
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                item = rx.recv() => match item {
                    None => break,
                    Some(item) => {
                        self.courtesy.rested();
                        self.take(item, &mut batch_deadline).await;
                        // Linger, then take what came meanwhile: while this task sleeps it
                        // is not waiting on the queue, so a record sent meanwhile wakes no
                        // thread. One wake-up of this runtime then serves every record of
                        // the next LINGER instead of one each.
                        tokio::time::sleep(LINGER).await;
                        self.courtesy.rested();
                        // At most a batch's worth per wake-up: a queue that a backlog keeps
                        // full must not keep this loop from the other branches (shutdown,
                        // the metrics tick, the batch deadline).
                        let mut taken = 0;
                        while taken < self.settings.batch_max {
                            let Ok(item) = rx.try_recv() else { break };
                            taken += item.places().max(1);
                            self.take(item, &mut batch_deadline).await;
                        }
                    }
                },
                _ = tokio::time::sleep_until(batch_deadline), if self.pending() => {
                    self.flush().await;
                    batch_deadline = Instant::now() + FAR;
                }
                _ = metrics_tick.tick() => {
                    // Only when something changed: no empty envelopes for an idle proxy.
                    let now = self.counters.export.exchanges.get() + self.counters.export.audit_events.get();
                    if now != exported_exchanges && self.exports(Signal::Metrics) {
                        exported_exchanges = now;
                        self.flush_metrics().await;
                    }
                }
            }
        }
        // Drain what is queued (bounded by the queue's room), then the last batch.
        rx.close();
        while let Ok(item) = rx.try_recv() {
            if let Item::Erase(targets, reply) = item {
                self.erase(*targets, reply).await;
                continue;
            }
            self.push(item);
            if self.batch_full() {
                self.flush().await;
            }
        }
        self.flush().await;
        if !self.counters.series.lock().is_empty() && self.exports(Signal::Metrics) {
            self.flush_metrics().await;
        }
    }

    /// Takes one received item: an erase runs at once; anything else joins the batch, which
    /// is flushed when full (`batch_max` records) and otherwise by `batch_deadline`, set
    /// `batch_age` from its first item.
    async fn take(&mut self, item: Item, batch_deadline: &mut Instant) {
        if let Item::Erase(targets, reply) = item {
            self.erase(*targets, reply).await;
            return;
        }
        if !self.pending() {
            *batch_deadline = Instant::now() + self.settings.batch_age;
        }
        self.push(item);
        if self.batch_full() || self.batch.len() >= 2 * self.settings.batch_max {
            self.flush().await;
            *batch_deadline = Instant::now() + FAR;
        }
    }

    /// Whether the batch holds `batch_max` records or, with the ledger on, half of the
    /// recording queue's places (`queue_capacity`): records kept for the ledger hold their
    /// exchanges' places ([`Record::in_flight`]), so under a `queue_capacity` below
    /// `batch_max` a batch waiting for `batch_age` would hold every place and stop admission
    /// for up to a second.
    fn batch_full(&self) -> bool {
        let max = if self.ledger.is_some() {
            self.settings
                .batch_max
                .min((self.settings.queue_capacity / 2).max(1))
        } else {
            self.settings.batch_max
        };
        self.records_in_batch >= max
    }

    /// Whether a record or an audit event waits to be flushed.
    fn pending(&self) -> bool {
        self.records_in_batch > 0 || !self.batch.is_empty()
    }

    /// Whether `signal` goes anywhere (an OTLP endpoint or records files).
    fn exports(&self, signal: Signal) -> bool {
        self.sender_txs[signal as usize].is_some()
    }

    fn push(&mut self, item: Item) {
        match item {
            Item::Records(group) => {
                for (r, slot) in group {
                    self.push_record(r, slot);
                }
            }
            Item::Erase(..) => unreachable!("invariant: erases are handled by run"),
            Item::Audit(a) => {
                self.counters.export.audit_events.inc();
                // The sealed store keeps its own durable audit log; this is the copy for
                // the collector or the records files.
                if self.exports(Signal::Logs) {
                    self.batch.push_log(otlp::audit_log(&a));
                }
            }
            Item::Feedback(f) => {
                // The ledger row is the feedback API's own write; this is the copy for the
                // collector or the records files.
                if self.exports(Signal::Logs) {
                    self.batch.push_log(otlp::feedback_log(&f));
                }
            }
        }
    }

    /// One record of a received group: counted, built into the OTLP batch for each signal
    /// that goes somewhere, and kept for the ledger.
    fn push_record(&mut self, r: Record, slot: Option<Slot>) {
        // The exporter's own runtime has this one worker thread: yielding it holds up no task
        // of the forwarding runtime (`os::Courtesy`).
        self.courtesy.offer();
        self.slots.extend(slot);
        self.unwritten_bytes = self.unwritten_bytes.saturating_add(r.wire_bytes());
        self.counters.export.exchanges.inc();
        if r.content_dropped.is_some() {
            self.counters.export.content_dropped.inc();
        }
        // Spans and logs are built only for a signal that goes somewhere: with the
        // ledger as the only sink, no OTLP is encoded at all. A record whose exchange
        // or user was forgotten while it was in flight is never exported (the ledger
        // lands it erased by its own tombstones).
        let forgotten = self.forgotten.covers(&r, Instant::now());
        if forgotten {
            tracing::debug!("a record forgotten while in flight is not exported");
        } else {
            let to = otlp::Signals {
                traces: self.exports(Signal::Traces),
                logs: self.exports(Signal::Logs),
            };
            self.batch.push_record_to(&r, to);
        }
        if self.exports(Signal::Metrics) || self.settings.observe_series {
            super::metrics::observe(&self.counters, &r);
        }
        self.records_in_batch += 1;
        if self.ledger.is_some() {
            if self.records.capacity() == 0 {
                self.records.reserve(self.records_hint);
            }
            self.records.push(r);
        }
    }

    fn encoding(&self, signal: Signal) -> Encoding {
        encoding(&self.settings, signal)
    }

    async fn flush(&mut self) {
        self.records_in_batch = 0;
        let res = &self.settings.resource;
        let traces = self.batch.traces_payload(res).map(Payload::new);
        let logs = self.batch.logs_payload(res).map(Payload::new);
        let mut payloads: Vec<(Signal, Payload)> = [(Signal::Traces, traces), (Signal::Logs, logs)]
            .into_iter()
            .filter_map(|(s, p)| p.map(|p| (s, p)))
            .collect();
        payloads.retain(|(s, _)| self.exports(*s));
        let records = std::mem::take(&mut self.records);
        self.records_hint = otlp::recent_size(self.records_hint, records.len());
        let records = otlp::fitted(records);
        let slots = std::mem::take(&mut self.slots);
        let to_ledger = self.ledger.is_some() && !records.is_empty();
        let parts = payloads.len() + usize::from(to_ledger);
        let mut ledger_done: Option<crate::ledger::Done> = None;
        if let Some(journal) = &self.settings.journal
            && !slots.is_empty()
            && parts > 0
        {
            let done = Arc::new(BatchDone {
                remaining: parts.into(),
                lost: false.into(),
                slots,
                journal: journal.clone(),
            });
            for (_, p) in &mut payloads {
                p.done = Some(done.clone());
            }
            if to_ledger {
                ledger_done = Some(Box::new(move |ok| done.complete(ok)));
            }
        }
        // Given back when the last payload is dropped, or below when there is none.
        let unwritten = Arc::new(Unwritten {
            counters: self.counters.clone(),
            bytes: std::mem::take(&mut self.unwritten_bytes),
        });
        for (_, p) in &mut payloads {
            p.unwritten = Some(unwritten.clone());
        }
        for (signal, payload) in payloads {
            self.hand_over(signal, payload).await;
        }
        if let (Some(ledger), true) = (&self.ledger, to_ledger) {
            // The ledger counts these bytes as its own from here (`ledger.queued_bytes`).
            ledger.send(records, ledger_done).await;
        }
        drop(unwritten);
    }

    async fn flush_metrics(&mut self) {
        let req = otlp::metrics_request(
            &self.settings.resource,
            &self.counters,
            self.started,
            SystemTime::now(),
        );
        let body = otlp::encode(&req, self.encoding(Signal::Metrics));
        self.hand_over(Signal::Metrics, Payload::new(Bytes::from(body)))
            .await;
    }

    /// A forget: flushes the batch being gathered (its records may be the forgotten ones),
    /// then queues the erase behind it on each records signal's delivery task, which owns its
    /// spool and records files; a signal that goes nowhere has no task, and its files (left
    /// by an earlier run) are erased on a blocking thread. Answers on `reply` once all have,
    /// without holding up the batcher meanwhile.
    async fn erase(&mut self, targets: Targets, reply: oneshot::Sender<Erased>) {
        self.forgotten.remember(&targets, Instant::now());
        self.flush().await;
        let targets = Arc::new(targets);
        let mut answers = Vec::new();
        for signal in erase::SIGNALS {
            let (tx, rx) = oneshot::channel();
            let job = EraseJob {
                targets: targets.clone(),
                reply: tx,
            };
            match &self.sender_txs[signal as usize] {
                Some(stx) => {
                    if stx.send(Job::Erase(job)).await.is_err() {
                        let mut part = SignalErased::default();
                        part.errors
                            .push(format!("the {} sender has stopped", signal.name()));
                        answers.push(Err(part));
                        continue;
                    }
                }
                None => {
                    let data = self.settings.data_dir.clone();
                    tokio::task::spawn_blocking(move || {
                        let mut part = SignalErased::default();
                        erase::erase_spool_dir(&data, signal, &job.targets, &mut part);
                        erase::erase_records(&data, signal, &job.targets, &mut part);
                        let _ = job.reply.send(part);
                    });
                }
            }
            answers.push(Ok((signal, rx)));
        }
        tokio::spawn(async move {
            let mut parts = Vec::new();
            for a in answers {
                parts.push(match a {
                    Err(part) => part,
                    Ok((signal, rx)) => rx.await.unwrap_or_else(|_| SignalErased {
                        errors: vec![format!(
                            "the {} exporter task stopped before erasing",
                            signal.name()
                        )],
                        ..Default::default()
                    }),
                });
            }
            let _ = reply.send(erase::combine(&targets, parts));
        });
    }

    /// Waits for room at the sender: the batcher is off the hot path, and the senders never
    /// block long (they spool while the collector is away), so back-pressure ends at the
    /// record channel, where `try_send` reports it.
    async fn hand_over(&self, signal: Signal, payload: Payload) {
        let Some(tx) = &self.sender_txs[signal as usize] else {
            return;
        };
        if let Err(e) = tx.send(Job::Payload(payload)).await {
            tracing::error!(signal = signal.name(), "export: sender stopped; batch lost");
            self.counters.export.batches_rejected.inc();
            if let Job::Payload(p) = e.0 {
                p.complete(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batcher whose exported signals are `exported`, without sender tasks behind them
    /// (nothing is flushed here).
    fn batcher(exported: &[Signal]) -> Batcher {
        let dir = tempfile::tempdir().unwrap();
        let settings =
            ExporterSettings::resolve(None, dir.path().to_path_buf(), &|_: &str| None).unwrap();
        let sender_txs = Signal::ALL
            .iter()
            .map(|s| exported.contains(s).then(|| mpsc::channel::<Job>(1).0))
            .collect();
        Batcher::new(
            Arc::new(settings),
            Arc::new(Counters::default()),
            sender_txs,
            None,
        )
    }

    // See: veil#18. Records kept for the ledger hold their exchanges' places in the recording
    // queue: with `queue_capacity = 64` a batch waiting for 512 records or a second held all
    // 64, and admission stopped until the batch's age flushed it.
    #[test]
    fn with_the_ledger_a_batch_is_full_at_half_the_queues_places() {
        let dir = tempfile::tempdir().unwrap();
        let settings = crate::ledger::LedgerSettings::new(dir.path().join("ledger.db"));
        let ledger = crate::ledger::Ledger::open(settings, None, Default::default()).unwrap();
        for (with_ledger, capacity, full_at) in [
            (true, 4, 2),
            (true, 1, 1),
            (true, 4096, 512),
            (false, 4, 512),
        ] {
            let mut b = batcher(&[Signal::Traces]);
            let mut settings = (*b.settings).clone();
            settings.queue_capacity = capacity;
            b.settings = Arc::new(settings);
            b.ledger = with_ledger.then(|| ledger.handle());
            for n in 1..=full_at {
                assert!(!b.batch_full(), "{capacity} places: full before {n}");
                b.push_record(crate::export::testing::openai_chat("r-1"), None);
            }
            assert!(b.batch_full(), "{capacity} places, ledger {with_ledger}");
        }
    }

    /// A flushed batch's records stay counted as unwritten (what the disk watch adds up)
    /// while their payloads wait in the senders' queues, and are given back once the last
    /// payload is dropped, not when the batcher hands them over.
    #[tokio::test]
    async fn flushed_records_stay_unwritten_until_their_last_payload_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let settings =
            ExporterSettings::resolve(None, dir.path().to_path_buf(), &|_: &str| None).unwrap();
        let (traces_tx, mut traces) = mpsc::channel::<Job>(1);
        let (logs_tx, mut logs) = mpsc::channel::<Job>(1);
        let sender_txs = vec![Some(traces_tx), Some(logs_tx), None];
        assert_eq!(Signal::ALL[..2], [Signal::Traces, Signal::Logs]);
        let counters = Arc::new(Counters::default());
        let mut b = Batcher::new(Arc::new(settings), counters.clone(), sender_txs, None);
        let record = crate::export::testing::openai_chat("r-1");
        let bytes = record.wire_bytes();
        // As the exporter's handle counts it on the way in.
        counters.export.unwritten_bytes.add(bytes);
        b.push_record(record, None);
        b.flush().await;
        let gauge = || counters.export.unwritten_bytes.get();
        assert_eq!(gauge(), bytes, "both payloads wait for their senders");
        let Some(Job::Payload(trace)) = traces.recv().await else {
            panic!("a traces payload")
        };
        drop(trace);
        assert_eq!(gauge(), bytes, "the logs payload is still unwritten");
        drop(logs.recv().await);
        assert_eq!(gauge(), 0);
    }

    #[test]
    fn a_record_is_built_only_into_the_signals_that_are_exported() {
        for (exported, spans, logs) in [
            (&[Signal::Traces, Signal::Logs][..], 1, 1),
            (&[Signal::Traces][..], 1, 0),
            (&[Signal::Logs][..], 0, 1),
            (&[Signal::Metrics][..], 0, 0),
        ] {
            let mut b = batcher(exported);
            b.push_record(crate::export::testing::openai_chat("r-1"), None);
            assert_eq!(b.batch.counts(), (spans, logs), "exported: {exported:?}");
            // Counted and flushed as a record whatever it was built into.
            assert_eq!(b.records_in_batch, 1);
            assert_eq!(b.counters.export.exchanges.get(), 1);
        }
    }
}
