//! # The pipeline: the threads that run `Exchange → Conversation → Record → {export, seal}`.
//!
//! Off the hot path. The proxy hands finished exchanges to a bounded queue; worker threads
//! (plain OS threads, so parsing and scanning never steal the async runtime that forwards
//! traffic) take them one by one:
//! 1. parse the provider's JSON / SSE into a [`Conversation`](crate::exchange::Conversation)
//!    ([`exchange::parse`]);
//! 2. build the redacted [`Record`](crate::record::Record) under the compiled rules of the
//!    exchange's scope ([`record::build`]);
//! 3. hand the record to the exporter (without waiting in best-effort mode: a full exporter
//!    queue is a counted drop);
//! 4. seal the full exchange under its request ID (the store encrypts on this thread and
//!    group-commits on its own; a failure is logged and counted, never retried into memory).
//!
//! Steps 3 and 4 of exchanges taken while more wait in the queue go together, as soon as the
//! queue is empty or the group is full ([`GROUP`] exchanges, [`GROUP_BYTES`] of records, or
//! a first exchange that has waited [`GROUP_WAIT`]): each hand-off wakes a parked thread (the
//! exporter's, the seal writer's), and under a backlog one wake-up then serves a group
//! instead of one exchange (a group's records reach the exporter as one item). An exchange
//! that arrives alone is handed off at once.
//!
//! This module owns the threads, the hand-offs (drop or wait) and their counters; what a
//! record holds is `record`'s business, what the rules are is `redact`'s. The rules can be
//! swapped while traffic flows ([`RulesHandle::reload`], on SIGHUP): each exchange is
//! processed under the rules current when its processing starts, and its record carries that
//! rules digest.

use std::sync::{Arc, Mutex};

use crate::counters::{Counters, LogEvery};
use crate::exchange::queue::{ExchangeReceiver, Queued};
use crate::exchange::{self, Exchange, ParseOptions, Pricing};
use crate::export::ExporterHandle;
use crate::health::Part;
use crate::record;
use crate::redact::{Budget, RulesHandle};
use crate::seal::SealStore;

/// Rate limits of the pipeline's repeated lines, shared by its workers.
#[derive(Debug, Default)]
struct Logs {
    /// "exporter queue refused a record".
    export: LogEvery,
    /// "cannot seal exchange" (a degraded store refuses every one).
    seal: LogEvery,
    /// "the pipeline panicked on this exchange" (a bug every exchange may trigger).
    failed: LogEvery,
    /// A thread waits to clear the `pipeline` degradation ([`PANIC_HOLD`]).
    recovery_pending: std::sync::atomic::AtomicBool,
}

/// How long recording stays degraded after the last panic when no exchange is processed
/// meanwhile. Under `audit = "required"` a degraded veil refuses new requests, so no exchange
/// would come to recover it: without this clock one panic would refuse traffic until a
/// restart. With it, a bug that panics on every exchange lets one exchange through (answered,
/// not recorded) per hold, and a one-off panic costs at most a hold of refusals.
pub const PANIC_HOLD: std::time::Duration = std::time::Duration::from_secs(5);

/// What the pipeline does when the next step has no room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HandOff {
    /// Drop and count (audit best-effort): recording never holds anything back.
    #[default]
    Drop,
    /// Wait for room (audit required): an exchange admitted by the proxy was promised a
    /// record and a seal, so the pipeline waits and the back-pressure reaches the recording
    /// queue, where the proxy refuses new requests with 503.
    Wait,
}

/// Most exchanges whose hand-offs (steps 3 and 4) wait to go together. At ~45 µs of
/// processing each, 16 exchanges delay the first one's hand-off by under a millisecond, and
/// only while more are queued behind it.
pub const GROUP: usize = 16;

/// Most record bytes ([`record::Record::wire_bytes`]) a group holds: the built records are
/// not counted against the recording queue's byte bound (their exchanges still are), so a
/// group of large exchanges goes early rather than hold 16 large records per worker.
pub const GROUP_BYTES: u64 = 1 << 20;

/// Longest the first exchange of a group waits for its hand-offs (an exchange near its
/// redaction budget takes far longer than 45 µs to build; the group does not wait for 15
/// of those).
pub const GROUP_WAIT: std::time::Duration = std::time::Duration::from_millis(2);

/// An exchange processed up to its hand-offs.
struct Built {
    queued: Queued,
    /// Boxed where it is built: a record is ~1.2 KB, and from its building to the exporter's
    /// queue it passes through the panic guard, the group and the hand-off.
    record: Box<record::Record>,
}

/// The exchanges a worker has built and not yet handed off.
#[derive(Default)]
struct Group {
    built: Vec<Built>,
    bytes: u64,
    since: Option<std::time::Instant>,
}

impl Group {
    fn push(&mut self, b: Built) {
        self.bytes += b.record.wire_bytes();
        self.since.get_or_insert_with(std::time::Instant::now);
        self.built.push(b);
    }

    /// Whether the group must go now, more exchanges queued or not.
    fn full(&self) -> bool {
        self.full_at(std::time::Instant::now())
    }

    /// Whether the group must go at `now`: by count, by bytes, or by the age of its first.
    fn full_at(&self, now: std::time::Instant) -> bool {
        self.built.len() >= GROUP
            || self.bytes >= GROUP_BYTES
            || self
                .since
                .is_some_and(|t| now.saturating_duration_since(t) >= GROUP_WAIT)
    }

    fn is_empty(&self) -> bool {
        self.built.is_empty()
    }
}

/// How long a waiting hand-off sleeps between tries when the sealed store is busy.
const BUSY_RETRY: std::time::Duration = std::time::Duration::from_millis(2);

/// How long a failed request is remembered: the same request again within it is a retry.
const RETRY_WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

/// Most failed requests remembered at once (16 bytes and an instant each).
const RETRY_MEMORY: usize = 8192;

/// Retries an SDK does not mark (curl loops, hand-written clients, gateways): an exchange
/// whose host, path and request body are those of a request that failed (408, 409, 429, 5xx,
/// 529, or no answer) less than 60 s ago is counted as a retry in
/// `veil.retries`, like one with `x-stainless-retry-count` above 0. Only repeats of a failure
/// count, so an app that sends one prompt twice on purpose is not a retrier.
///
/// Memory only, never written; the requests are remembered by a BLAKE3 hash keyed with a
/// random key made at start, so no two processes (and no reader of memory without the key)
/// can test a guess against it.
#[derive(Debug)]
pub struct Retries {
    key: [u8; 32],
    failed: Mutex<std::collections::HashMap<[u8; 16], std::time::Instant>>,
}

impl Default for Retries {
    fn default() -> Self {
        Retries {
            key: rand::random(),
            failed: Mutex::default(),
        }
    }
}

impl Retries {
    /// Notes `ex` and says whether it repeats a recent failure.
    pub fn is_retry(&self, ex: &Exchange) -> bool {
        let failed = match ex.status {
            Some(s) => matches!(s, 408 | 409 | 429 | 500..=599),
            None => true,
        } || !matches!(
            ex.outcome,
            exchange::Outcome::Complete | exchange::Outcome::ClientAborted
        );
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(ex.upstream.host.as_bytes());
        h.update(&[0]);
        h.update(ex.path.as_bytes());
        h.update(&[0]);
        for chunk in &ex.request_body.chunks {
            h.update(chunk);
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&h.finalize().as_bytes()[..16]);
        let now = std::time::Instant::now();
        let mut map = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        let repeat = map
            .get(&id)
            .is_some_and(|t| now.duration_since(*t) < RETRY_WINDOW);
        if failed {
            if map.len() >= RETRY_MEMORY {
                map.retain(|_, t| now.duration_since(*t) < RETRY_WINDOW);
                if map.len() >= RETRY_MEMORY {
                    // A burst of distinct failures: forget them all rather than grow.
                    map.clear();
                }
            }
            map.insert(id, now);
        } else if repeat {
            map.remove(&id);
        }
        repeat
    }
}

/// What the workers need.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// The rules in force.
    pub rules: Arc<RulesHandle>,
    /// Prices for cost estimates.
    pub pricing: Arc<Pricing>,
    /// Parser bounds and extra user-ID paths.
    pub parse: ParseOptions,
    /// Where records go.
    pub exporter: Option<ExporterHandle>,
    /// Where full exchanges go.
    pub store: Option<SealStore>,
    /// The registry: the workers count in its `pipeline` section.
    pub counters: Arc<Counters>,
    /// Niceness of the worker threads (see [`crate::os::RECORDING_NICE`]; 0 = as the caller).
    pub nice: i32,
    /// Drop or wait when the exporter or the store has no room.
    pub hand_off: HandOff,
    /// What redacting one exchange may cost before its content is dropped from the record.
    pub redaction_budget: Budget,
    /// Where each recorded exchange is remembered for the feedback API (veil#14), if served.
    pub recent: Option<Arc<crate::feedback::Recent>>,
    /// Recent failed requests, to count the retries SDKs do not mark.
    pub retries: Arc<Retries>,
    /// Recording health: a panic while processing an exchange degrades [`Part::Pipeline`]
    /// until a later exchange is processed or [`PANIC_HOLD`] passes, so `audit = "required"`
    /// refuses rather than answer what it cannot record.
    pub health: Option<Arc<crate::health::Health>>,
}

impl Pipeline {
    /// Starts `workers` threads consuming `rx`. They exit when every sender is gone and the
    /// queue is empty; join the returned handles to wait for that.
    pub fn spawn(self, rx: ExchangeReceiver, workers: usize) -> Vec<std::thread::JoinHandle<()>> {
        let rx = Arc::new(Mutex::new(rx));
        // One rate limit per line for all the workers, so N workers still log once per period.
        let logs = Arc::new(Logs::default());
        (0..workers.max(1))
            .map(|i| {
                let rx = rx.clone();
                let this = self.clone();
                let logs = logs.clone();
                std::thread::Builder::new()
                    .name(format!("veil-pipeline-{i}"))
                    .spawn(move || {
                        crate::os::lower_thread_priority(this.nice);
                        let mut group = Group::default();
                        let mut courtesy = crate::os::Courtesy::default();
                        loop {
                            // One receiver shared by the workers; the lock is held only while
                            // waiting for the next exchange. A worker with a group never waits
                            // for it: a lock held by another worker means that one waits for
                            // the queue, so the queue is empty and the group goes.
                            let next = if group.is_empty() {
                                let mut rx = rx.lock().unwrap_or_else(|e| e.into_inner());
                                courtesy.next(|block| {
                                    if block {
                                        rx.blocking_recv()
                                    } else {
                                        rx.try_recv()
                                    }
                                })
                            } else {
                                match rx.try_lock() {
                                    Ok(mut rx) => rx.try_recv(),
                                    Err(std::sync::TryLockError::Poisoned(e)) => {
                                        e.into_inner().try_recv()
                                    }
                                    Err(std::sync::TryLockError::WouldBlock) => None,
                                }
                            };
                            let Some(exchange) = next else {
                                if group.is_empty() {
                                    break;
                                }
                                // The queue is empty (or closed): the group goes now.
                                this.hand_off_all(&mut group, &logs);
                                continue;
                            };
                            let built = this.build_caught(exchange, &logs);
                            // Between exchanges: a forwarding thread woken onto this core
                            // runs now, not after the group (`os::Courtesy`).
                            courtesy.offer();
                            let Some(built) = built else {
                                continue;
                            };
                            group.push(built);
                            if group.full() {
                                this.hand_off_all(&mut group, &logs);
                            }
                        }
                    })
                    .expect("invariant: a pipeline thread can be spawned")
            })
            .collect()
    }

    /// [`Pipeline::build`], surviving a panic in it: a bug that one exchange's bytes trigger
    /// (in a parser, a detector, the rules) must cost that exchange, not the worker thread,
    /// the exchanges grouped behind it, and with every worker gone, all recording after it.
    /// The exchange is not recorded nor sealed (without its record veil does not know its
    /// users, which a seal is filed under for `forget --user`): counted as dropped
    /// (`pipeline_failed`), marked dropped in the journal, logged with its id (rate-limited),
    /// and recording marked degraded (`pipeline`) until an exchange is processed again or
    /// [`PANIC_HOLD`] passes without another panic, so `audit = "required"` refuses new
    /// requests meanwhile instead of answering them unrecorded. The panic's location is on
    /// stderr from veil's panic hook, its message withheld (`cli::panics`). The hand-offs
    /// after the build (export queue, sealing) are not covered.
    fn build_caught(&self, queued: Queued, logs: &Arc<Logs>) -> Option<Built> {
        let id = queued.id;
        let mark = queued.journal().cloned().zip(queued.slot());
        // The state a panic can leave half-updated is behind mutexes every user recovers
        // from (`unwrap_or_else(into_inner)`): the retry memory, the recent exchanges.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.build(queued))) {
            Ok(built) => {
                if let Some(h) = &self.health {
                    // One atomic load unless degraded.
                    h.recover(Part::Pipeline);
                }
                Some(built)
            }
            Err(_) => {
                if let Some((journal, slot)) = mark {
                    journal.dropped(slot);
                }
                let n = self.counters.pipeline.failed.inc();
                if let Some(h) = &self.health {
                    h.degrade(
                        Part::Pipeline,
                        "processing an exchange panicked (a bug: the panic's location is in the log)",
                    );
                    self.recover_later(h, logs);
                }
                if let Some(since) = logs.failed.hit() {
                    tracing::error!(
                        exchange.id = %id,
                        failed_total = n,
                        since_last_line = since,
                        "recording failed: the pipeline panicked on this exchange, which is not recorded (a bug: please report it with the panic line above)"
                    );
                }
                None
            }
        }
    }

    /// Clears the `pipeline` degradation once [`PANIC_HOLD`] has passed with no new panic, on
    /// a thread of its own (one at a time: a panic while it waits only extends the wait). If
    /// the thread cannot be started, the next processed exchange still recovers it.
    fn recover_later(&self, health: &Arc<crate::health::Health>, logs: &Arc<Logs>) {
        use std::sync::atomic::Ordering;
        if logs.recovery_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let (health, logs2, counters) = (health.clone(), logs.clone(), self.counters.clone());
        let spawned = std::thread::Builder::new()
            .name("veil-pipeline-recover".into())
            .spawn(move || {
                let mut seen = counters.pipeline.failed.get();
                loop {
                    std::thread::sleep(PANIC_HOLD);
                    let now = counters.pipeline.failed.get();
                    if now == seen {
                        break;
                    }
                    seen = now;
                }
                // Cleared before recovering: a panic from here on starts a new wait.
                logs2.recovery_pending.store(false, Ordering::Release);
                if counters.pipeline.failed.get() == seen {
                    health.recover(Part::Pipeline);
                }
            });
        if spawned.is_err() {
            logs.recovery_pending.store(false, Ordering::Release);
        }
    }

    /// Steps 1 and 2 of one exchange taken from the queue: parse, build the record, note it
    /// for retries and feedback. Its hand-offs follow in [`Pipeline::hand_off_all`].
    fn build(&self, queued: Queued) -> Built {
        let exchange: &Exchange = &queued;
        let _span = tracing::debug_span!("process_exchange", exchange.id = %exchange.id).entered();
        #[cfg(test)]
        if exchange.path == tests::PANICS {
            panic!("a test's exchange");
        }
        let rules = self.rules.current();
        // When the build ends, also by a panic: a forget that ran since this exchange started
        // may cover it, so what its redaction filed in the memo goes.
        let _after_forget = MemoAfterForget(&rules, exchange.started_at);
        let conversation = exchange::parse(exchange, &self.parse, &self.pricing);
        let mut record = Box::new(record::build_within(
            exchange,
            &conversation,
            &rules,
            self.redaction_budget,
        ));
        // The record keeps the exchange's place in the queue's bounds until it is freed
        // (after the exporter and the ledger's writer are done with it).
        record.in_flight = queued.in_flight();
        // Every exchange is noted (its failure may be retried later), also one its SDK
        // already marked.
        record.retry |= self.retries.is_retry(exchange);
        // The content's JSON text, made here on one of several workers rather than on the
        // ledger's single writer thread or again by the span encoder.
        record.prepare();
        // Before the record leaves: a feedback posted right after the answer finds it here
        // while the record is still on its way to the ledger.
        if let Some(recent) = &self.recent {
            recent.insert_of(&record);
        }
        // Freed here, on the thread that made them, when no sink reads them (the ledger,
        // spans and the feedback API read the text made above).
        if self
            .exporter
            .as_ref()
            .is_some_and(|e| !e.reads_content_trees())
        {
            record.shed_content_trees();
        }
        Built { queued, record }
    }

    /// Steps 3 and 4 for every exchange of `group` (emptied), in order: the records to the
    /// exporter as one item (one wake-up of its thread per group, not per record), then each
    /// exchange to the store. An exchange's journal slot is marked dropped here when a
    /// hand-off drops it (counted), and recorded or sealed by the exporter and the store once
    /// durable. The raw exchanges are dropped here, after their records and frames have been
    /// handed on (so the disk watch's count of unprocessed bytes never misses them); their
    /// places and bytes in the queue's bounds stay held by those until they are freed. Under
    /// `audit = "required"` a group's seals wait until all its records are queued for export
    /// (at most [`GROUP`] records behind a slow exporter), where each exchange once waited for
    /// its own record only.
    fn hand_off_all(&self, group: &mut Group, logs: &Logs) {
        group.bytes = 0;
        group.since = None;
        let mut sealing = Vec::with_capacity(group.built.len());
        let mut records = Vec::with_capacity(group.built.len());
        for Built { queued, record } in group.built.drain(..) {
            // Counted as it leaves the pipeline, so `processed` never counts an exchange still
            // held in a group (the drain-timeout message counts those as lost).
            self.counters.pipeline.processed.inc();
            let users = record.user_pseudonyms.clone();
            records.push((*record, queued.slot()));
            sealing.push((queued, users));
        }
        if let Some(exporter) = &self.exporter {
            let sent = match self.hand_off {
                HandOff::Drop => exporter.try_send_group(records),
                HandOff::Wait => exporter.send_group_blocking(records),
            };
            if let Err(e) = sent {
                // The group's last records came back: their exchanges are the last ones.
                let full = e.is_full();
                let back = e.into_inner().len();
                for (queued, _) in &sealing[sealing.len() - back..] {
                    journal_dropped(queued, "export queue");
                }
                let n = self.counters.pipeline.export_dropped.add(back as u64);
                if let Some(since) = logs.export.hit_n(back as u64) {
                    tracing::warn!(
                        exchange.id = %sealing[sealing.len() - back].0.id,
                        records = back,
                        dropped_total = n,
                        since_last_line = since,
                        full,
                        "exporter queue refused a record"
                    );
                }
            }
        }
        for (queued, users) in sealing {
            self.seal(queued, &users, logs);
        }
    }

    /// Step 4: the full exchange to the sealed store, filed under its record's `users`. The
    /// store tells the journal how the seal ended (durable, or failed); a refusal is marked
    /// dropped here, counted and logged.
    fn seal(&self, queued: Queued, users: &[crate::keys::UserPseudonym], logs: &Logs) {
        let exchange: &Exchange = &queued;
        let slot = queued.slot();
        if let Some(store) = &self.store {
            // The store tells the journal how the seal ended: durable, or failed (counted by
            // the store's writer, so a crash does not report it again).
            let on_done = || {
                let mark = queued.journal().cloned().zip(slot);
                mark.map(|(j, s)| crate::seal::OnDone::Journal(j, s))
            };
            // The frame keeps the exchange's place in the queue's bounds until it is freed.
            let submit =
                || store.submit_detached_users(exchange, users, on_done(), queued.in_flight());
            let mut result = submit();
            while self.hand_off == HandOff::Wait
                && matches!(&result, Err(e) if e.kind() == crate::seal::ErrorKind::Busy)
            {
                std::thread::sleep(BUSY_RETRY);
                result = submit();
            }
            if let Err(e) = result {
                journal_dropped(&queued, "seal refused");
                let n = self.counters.pipeline.seal_refused.inc();
                if let Some(since) = logs.seal.hit() {
                    // Busy is best-effort doing what it promises under a burst (the disk is
                    // behind; counted, traffic flows): a warning, as for a full recording
                    // queue. Anything else is a store that cannot seal: an error.
                    if e.kind() == crate::seal::ErrorKind::Busy {
                        tracing::warn!(
                            exchange.id = %exchange.id,
                            error = %e,
                            refused_total = n,
                            since_last_line = since,
                            "cannot seal exchange: the sealed store is behind (audit = best-effort)"
                        );
                    } else {
                        tracing::error!(
                            exchange.id = %exchange.id,
                            error = %e,
                            refused_total = n,
                            since_last_line = since,
                            "cannot seal exchange"
                        );
                    }
                }
            }
        }
    }
}

/// On drop, [`crate::redact::CompiledRules::clear_memo_if_forgotten_since`] for an exchange
/// that started at the time it holds.
struct MemoAfterForget<'a>(&'a crate::redact::CompiledRules, std::time::SystemTime);

impl Drop for MemoAfterForget<'_> {
    fn drop(&mut self) {
        self.0.clear_memo_if_forgotten_since(self.1);
    }
}

/// Marks the journal slot of `queued` dropped: a hand-off refused it, for `why`.
fn journal_dropped(queued: &Queued, why: &str) {
    if let (Some(j), Some(s)) = (queued.journal(), queued.slot()) {
        j.dropped(s);
    }
    tracing::trace!(exchange.id = %queued.id, why, "journal: dropped");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::{Body, ExchangeId, Outcome, Route, Timings, Upstream};
    use bytes::Bytes;

    fn ex(path: &str, body: &str, status: Option<u16>, outcome: Outcome) -> Exchange {
        Exchange {
            id: ExchangeId::new(),
            started_at: std::time::SystemTime::now(),
            timings: Timings::default(),
            client_addr: None,
            route: Route::Intercept,
            upstream: Upstream {
                scheme: "https".into(),
                host: "api.openai.com".into(),
                port: 443,
            },
            client_version: "HTTP/1.1".into(),
            method: "POST".into(),
            path: path.into(),
            request_headers: Default::default(),
            tags: Default::default(),
            api_key_fingerprint: None,
            request_body: Body {
                chunks: vec![Bytes::copy_from_slice(body.as_bytes())],
                wire_len: body.len() as u64,
                ..Body::default()
            },
            status,
            response_headers: Default::default(),
            response_body: Body::default(),
            outcome,
            websocket: None,
        }
    }

    #[test]
    fn the_same_request_after_a_failure_is_a_retry_after_a_success_it_is_not() {
        let r = Retries::default();
        let path = "/v1/chat/completions";
        // Sent twice on purpose, both answered: no retry.
        assert!(!r.is_retry(&ex(path, "{\"a\":1}", Some(200), Outcome::Complete)));
        assert!(!r.is_retry(&ex(path, "{\"a\":1}", Some(200), Outcome::Complete)));
        // 429, then the same again (still limited), then answered: two retries.
        assert!(!r.is_retry(&ex(path, "{\"b\":2}", Some(429), Outcome::Complete)));
        assert!(r.is_retry(&ex(path, "{\"b\":2}", Some(429), Outcome::Complete)));
        assert!(r.is_retry(&ex(path, "{\"b\":2}", Some(200), Outcome::Complete)));
        // Answered once, the failure is forgotten: a third send is a new request.
        assert!(!r.is_retry(&ex(path, "{\"b\":2}", Some(200), Outcome::Complete)));
        // No answer at all (veil's 502), then the same body: a retry; another body or path
        // is not.
        let failed = Outcome::UpstreamFailed {
            kind: crate::exchange::UpstreamFailure::Connect,
            reason: "refused".into(),
        };
        assert!(!r.is_retry(&ex(path, "{\"c\":3}", None, failed)));
        assert!(!r.is_retry(&ex(path, "{\"c\":4}", Some(200), Outcome::Complete)));
        assert!(!r.is_retry(&ex(
            "/v1/embeddings",
            "{\"c\":3}",
            Some(200),
            Outcome::Complete
        )));
        assert!(r.is_retry(&ex(path, "{\"c\":3}", Some(200), Outcome::Complete)));
        // A 400 is the app's mistake, not a transient failure: resending it is no retry.
        assert!(!r.is_retry(&ex(path, "{\"d\":5}", Some(400), Outcome::Complete)));
        assert!(!r.is_retry(&ex(path, "{\"d\":5}", Some(200), Outcome::Complete)));
    }

    /// The path of an exchange whose build panics (`Pipeline::build`, test builds only).
    pub(super) const PANICS: &str = "/veil-test/panics";

    /// What [`pipeline`] hands a test: the recording queue's sender, the exporter queue it
    /// reads, the worker threads, the registry and the health.
    type Harness = (
        crate::exchange::queue::ExchangeSender,
        crate::export::TestQueue,
        Vec<std::thread::JoinHandle<()>>,
        Arc<Counters>,
        Arc<crate::health::Health>,
    );

    /// A pipeline with one worker over a bare exporter queue the test reads, no store.
    fn pipeline() -> Harness {
        pipeline_reading_trees(true)
    }

    /// [`pipeline`] with an exporter that reads the records' content trees or not.
    fn pipeline_reading_trees(trees: bool) -> Harness {
        pipeline_with(1024, trees, |_| None)
    }

    /// A pipeline with one worker over a recording queue of `capacity` places and a bare
    /// exporter queue the test reads, sealing into the store `store` opens with the
    /// pipeline's keyring, if any.
    fn pipeline_with(
        capacity: usize,
        trees: bool,
        store: impl FnOnce(crate::keys::Keyring) -> Option<SealStore>,
    ) -> Harness {
        pipeline_over(capacity, trees, store, default_rules())
    }

    /// The built-in rules with the memo at its default bound, as `veil run` starts.
    fn default_rules() -> Arc<RulesHandle> {
        let rules = crate::redact::CompiledRules::from_str("version = 1\n", &keys()).unwrap();
        Arc::new(RulesHandle::from_rules("rules.toml".into(), rules))
    }

    /// The keys of every harness.
    fn keys() -> crate::keys::Keyring {
        use crate::keys::{KeyId, Keyring, MasterKey};
        Keyring::single(MasterKey::from_bytes(KeyId(1), [7; 32]))
    }

    /// [`pipeline_with`] under the rules `rules` hands out.
    fn pipeline_over(
        capacity: usize,
        trees: bool,
        store: impl FnOnce(crate::keys::Keyring) -> Option<SealStore>,
        rules: Arc<RulesHandle>,
    ) -> Harness {
        let counters = Arc::new(Counters::default());
        let keys = keys();
        let (exporter, queue) = ExporterHandle::for_tests(1024, counters.clone());
        let exporter = if trees {
            exporter
        } else {
            exporter.without_content_trees()
        };
        let health = Arc::new(crate::health::Health::new(counters.clone()));
        let (tx, rx) = crate::exchange::queue::channel(capacity, 64 << 20, counters.clone());
        let workers = Pipeline {
            rules,
            pricing: Arc::new(Pricing::builtin()),
            parse: ParseOptions::default(),
            exporter: Some(exporter),
            store: store(keys),
            counters: counters.clone(),
            nice: 0,
            hand_off: HandOff::Drop,
            redaction_budget: Budget::default(),
            recent: None,
            retries: Arc::default(),
            health: Some(health.clone()),
        }
        .spawn(rx, 1);
        (tx, queue, workers, counters, health)
    }

    #[test]
    fn content_trees_are_freed_when_no_sink_reads_them_and_their_text_stays() {
        let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"say hi"}]}"#;
        let mut texts = Vec::new();
        for trees in [true, false] {
            let (tx, mut queue, workers, _, _) = pipeline_reading_trees(trees);
            tx.try_send(ex(
                "/v1/chat/completions",
                body,
                Some(200),
                Outcome::Complete,
            ))
            .unwrap();
            let r = queue
                .next_full(std::time::Duration::from_secs(10))
                .expect("a record");
            assert_eq!(r.input_messages.is_some(), trees, "trees kept: {trees}");
            assert_eq!(r.content_trees_shed(), !trees);
            let text = r.prepare().content.clone();
            // Without its trees a clone must keep the text: there is nothing to remake it from.
            assert_eq!(r.clone().prepare().content, text);
            texts.push(text);
            drop(tx);
            for w in workers {
                w.join().unwrap();
            }
        }
        assert_eq!(
            texts[0], texts[1],
            "the same text with or without the trees"
        );
        let input = texts[1][1].as_deref().expect("the input's text");
        // Chat Completions' system message stays among the input messages.
        assert!(
            input.contains("say hi") && input.contains("be brief"),
            "{input}"
        );
    }

    // See: veil#18. `queue_capacity` bounds what recording holds end to end: the record the
    // pipeline built and the sealed frame it queued each keep their exchange's place until
    // they are freed, so a backlog after the queue (records for the ledger, frames for the
    // disk) no longer comes on top of the queue's own.
    #[test]
    fn the_record_and_the_sealed_frame_keep_their_exchanges_place() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = None;
        let (tx, mut queue, workers, counters, _) = pipeline_with(1, true, |keys| {
            store = Some(SealStore::open(dir.path(), keys, Default::default()).unwrap());
            store.clone()
        });
        let store = store.unwrap();
        let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
        let exchange = ex("/v1/chat/completions", body, Some(200), Outcome::Complete);
        let id = exchange.id;
        tx.try_send(exchange).unwrap();
        let record = queue
            .next_full(std::time::Duration::from_secs(10))
            .expect("a record");
        assert!(
            record.in_flight.holds(),
            "the record holds its exchange's place"
        );
        // Sealed and durable: the frame is freed, the record still holds the place.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !matches!(store.entry(id), Ok(Some(_))) {
            assert!(std::time::Instant::now() < deadline, "never sealed");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(counters.pipeline.processed.get(), 1);
        assert_eq!(counters.queue.depth.get(), 0, "the worker took it");
        assert_eq!(counters.queue.in_flight.get(), 1);
        assert_eq!(
            tx.try_admit().unwrap_err(),
            crate::exchange::queue::Refusal::Full
        );
        drop(record);
        // The worker drops its `Queued` right after the seal is queued, which may come after
        // the seal is visible: wait for it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while (counters.queue.in_flight.get(), counters.queue.bytes.get()) != (0, 0) {
            assert!(
                std::time::Instant::now() < deadline,
                "the place never came back"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        tx.try_admit().unwrap();
        drop(tx);
        for w in workers {
            w.join().unwrap();
        }
    }

    #[test]
    fn a_panic_on_one_exchange_costs_that_exchange_not_the_worker() {
        let (tx, mut queue, workers, counters, health) = pipeline();
        let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
        tx.try_send(ex(PANICS, body, Some(200), Outcome::Complete))
            .unwrap();
        // Degraded until an exchange is processed again (so `required` refuses meanwhile).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !health.is_degraded(crate::health::Part::Pipeline) {
            assert!(std::time::Instant::now() < deadline, "never degraded");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(counters.pipeline.failed.get(), 1);
        let after = ex("/v1/chat/completions", body, Some(200), Outcome::Complete);
        let id = after.id.to_string();
        tx.try_send(after).unwrap();
        // The only worker panicked on the first exchange; the second is recorded all the same.
        assert_eq!(
            queue.next_record(std::time::Duration::from_secs(10)),
            Some(id)
        );
        assert!(health.is_ok(), "recovered by the next exchange");
        assert_eq!(counters.pipeline.failed.get(), 1);
        assert_eq!(counters.pipeline.processed.get(), 1);
        // A panic and then nothing (as under `required`, which refuses while degraded): the
        // hold clears it, or one panic would refuse traffic until a restart.
        tx.try_send(ex(PANICS, body, Some(200), Outcome::Complete))
            .unwrap();
        let degraded_at = std::time::Instant::now();
        while !health.is_degraded(crate::health::Part::Pipeline) {
            assert!(degraded_at.elapsed() < std::time::Duration::from_secs(10));
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        while !health.is_ok() {
            assert!(
                degraded_at.elapsed() < PANIC_HOLD * 3,
                "still degraded after {:?}",
                degraded_at.elapsed()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(degraded_at.elapsed() >= PANIC_HOLD - std::time::Duration::from_millis(100));
        assert_eq!(counters.pipeline.failed.get(), 2);
        drop(tx);
        for w in workers {
            w.join().expect("the worker ends normally");
        }
    }

    #[test]
    fn an_exchange_alone_is_handed_off_at_once_and_a_backlog_in_full_and_in_order() {
        let (tx, mut queue, workers, _, _) = pipeline();
        let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
        let chat = |_| ex("/v1/chat/completions", body, Some(200), Outcome::Complete);
        // One exchange and nothing behind it: its record must not wait for a group to fill
        // (the queue stays open, so only "the queue is empty" can send it on).
        let alone = chat(0);
        let id = alone.id.to_string();
        tx.try_send(alone).unwrap();
        assert_eq!(
            queue.next_record(std::time::Duration::from_secs(10)),
            Some(id)
        );
        // A backlog of several groups' worth: every record, in the order taken.
        let backlog: Vec<Exchange> = (0..GROUP * 3 + 5).map(chat).collect();
        let ids: Vec<String> = backlog.iter().map(|e| e.id.to_string()).collect();
        for e in backlog {
            tx.try_send(e).unwrap();
        }
        let got: Vec<String> = (0..ids.len())
            .map_while(|_| queue.next_record(std::time::Duration::from_secs(10)))
            .collect();
        assert_eq!(got, ids);
        // Sent 53 at once while the worker built one at a time, they went on in groups, each
        // one item for the exporter (one wake-up of its thread per group, not per record).
        // Only "fewer items than records" is asserted: how the groups fall depends on timing.
        assert!(
            queue.items <= ids.len(),
            "{} items for {} records",
            queue.items,
            ids.len() + 1
        );
        drop(tx);
        for w in workers {
            w.join().unwrap();
        }
    }

    #[test]
    fn a_group_goes_when_full_by_count_by_bytes_or_by_age() {
        let counters = Arc::new(Counters::default());
        let (tx, mut rx) = crate::exchange::queue::channel(64, 64 << 20, counters);
        let mut built = |wire: u64| {
            tx.try_send(ex("/p", "{}", Some(200), Outcome::Complete))
                .unwrap();
            let mut record = crate::export::testing::base_record("r");
            record.request_bytes = wire;
            record.response_bytes = 0;
            Built {
                queued: rx.try_recv().unwrap(),
                record: Box::new(record),
            }
        };
        // Count and bytes are judged at the instant of the group's first push, so a slow
        // machine (a push that takes longer than GROUP_WAIT) cannot make them pass by age.
        let young = |g: &Group| g.full_at(g.since.expect("pushed"));
        let mut by_count = Group::default();
        for _ in 0..GROUP - 1 {
            by_count.push(built(10));
            assert!(!young(&by_count));
        }
        by_count.push(built(10));
        assert!(young(&by_count), "{GROUP} exchanges");

        let mut by_bytes = Group::default();
        by_bytes.push(built(GROUP_BYTES / 2));
        assert!(!young(&by_bytes));
        by_bytes.push(built(GROUP_BYTES / 2));
        assert!(young(&by_bytes), "{GROUP_BYTES} bytes of records");

        let mut by_age = Group::default();
        by_age.push(built(10));
        let first = by_age.since.expect("pushed");
        assert!(!by_age.full_at(first + GROUP_WAIT - std::time::Duration::from_micros(1)));
        assert!(
            by_age.full_at(first + GROUP_WAIT),
            "the first exchange waited {GROUP_WAIT:?}"
        );
        std::thread::sleep(GROUP_WAIT + std::time::Duration::from_millis(1));
        assert!(by_age.full(), "full() reads the clock");
    }

    // See: veil#18. The redaction memo holds redacted output; a forget empties it. An exchange
    // that was already queued when the forget ran (it may be one the forget covers) must not
    // leave what its redaction filed there once it is built; one that started after the
    // forget fills the memo as usual.
    #[test]
    fn an_exchange_that_started_before_a_forget_leaves_nothing_in_the_redaction_memo() {
        let text = "Please summarise the attached quarterly report for the board and keep the tone \
                    neutral; highlight revenue, churn and the hiring plan in three short bullets.";
        let body = serde_json::json!({
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": text}, {"role": "user", "content": text}],
        })
        .to_string();
        let rules = default_rules();
        let (tx, mut queue, workers, _, _) = pipeline_over(1024, true, |_| None, rules.clone());
        let mut send = |e: Exchange| {
            tx.try_send(e).unwrap();
            queue
                .next_full(std::time::Duration::from_secs(10))
                .expect("a record")
        };
        let path = "/v1/chat/completions";
        let queued = ex(path, &body, Some(200), Outcome::Complete);
        // The forget runs while the exchange waits in the queue.
        rules.current().clear_memo();
        send(queued);
        assert_eq!(rules.current().memo_held(), 0, "filed after the forget");
        // An exchange that started after the forget: its text, seen twice, is remembered.
        std::thread::sleep(std::time::Duration::from_millis(2));
        send(ex(path, &body, Some(200), Outcome::Complete));
        assert!(rules.current().memo_held() > 0);
        let hits = rules.current().memo_hits();
        send(ex(path, &body, Some(200), Outcome::Complete));
        assert!(rules.current().memo_hits() >= hits + 2);
        drop(tx);
        for w in workers {
            w.join().unwrap();
        }
    }

    /// A number the app chose is exported as sent, unless its digits are something a
    /// detector masks (a card number as `seed`): then it is not exported at all, and counted.
    #[test]
    fn a_card_number_sent_as_a_numeric_parameter_is_not_exported() {
        use crate::keys::{KeyId, Keyring, MasterKey};
        let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [3; 32]));
        // The default profile, and the strict one, which hashes every field.
        for profile in [
            crate::redact::BUILTIN_DEFAULT_RULES,
            include_str!("../rules/strict.toml"),
        ] {
            let rules = crate::redact::CompiledRules::from_str(profile, &keys).unwrap();
            numeric_parameters_under(&rules);
        }
    }

    fn numeric_parameters_under(rules: &crate::redact::CompiledRules) {
        for (seed, kept) in [
            (serde_json::json!(4111111111111111u64), false),
            (serde_json::json!(-5500005555555559i64), false),
            (serde_json::json!(4111111111111112u64), true), // fails Luhn
            (serde_json::json!(42), true),
            (serde_json::json!(1.5), true),
            // Rounded past 2^53: no detector can check it, so it is not exported (not counted).
            (serde_json::json!(6011000000000000004.0f64), false),
        ] {
            let body = serde_json::json!({"model": "gpt-4o", "seed": seed, "temperature": 0.2,
                "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
            let ex = ex("/v1/chat/completions", &body, None, Outcome::ClientAborted);
            let conv = exchange::parse(&ex, &ParseOptions::default(), &Pricing::builtin());
            assert_eq!(conv.params.get("seed"), Some(&seed), "parsed as sent");
            let rec = record::build(&ex, &conv, rules);
            assert_eq!(rec.request_params.contains_key("seed"), kept, "{seed}");
            assert_eq!(
                rec.request_params.get("temperature"),
                Some(&serde_json::json!(0.2))
            );
            let cards = rec.redactions.get("CREDIT_CARD").copied().unwrap_or(0);
            let counted = !kept && seed.is_i64();
            assert_eq!(cards, u64::from(counted), "{seed}: {:?}", rec.redactions);
        }
    }

    /// A label is capped at [`record::MAX_LABEL_CHARS`] characters, not bytes: a label of
    /// exactly the cap stays whole (ASCII, and multi-byte characters, which a cap in bytes
    /// would cut), one character more is cut to the cap.
    #[test]
    fn labels_are_capped_in_characters() {
        use crate::keys::{KeyId, Keyring, MasterKey};
        let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [3; 32]));
        let rules =
            crate::redact::CompiledRules::from_str(crate::redact::BUILTIN_DEFAULT_RULES, &keys)
                .unwrap();
        let n = record::MAX_LABEL_CHARS;
        for (model, kept) in [
            ("m".repeat(n), n),
            ("m".repeat(n + 1), n),
            ("é".repeat(n), n),
            ("é".repeat(n + 40), n),
            ("é".repeat(n / 2 + 1), n / 2 + 1),
        ] {
            let body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
                .to_string();
            let ex = ex("/v1/chat/completions", &body, None, Outcome::ClientAborted);
            let conv = exchange::parse(&ex, &ParseOptions::default(), &Pricing::builtin());
            assert_eq!(conv.request_model.as_deref(), Some(model.as_str()));
            let rec = record::build(&ex, &conv, &rules);
            let got = rec.request_model.expect("a model");
            let c = model.chars().next().unwrap();
            assert_eq!(
                got,
                c.to_string().repeat(kept),
                "{} of {c}",
                model.chars().count()
            );
        }
    }

    #[test]
    fn the_memory_of_failures_is_bounded() {
        let r = Retries::default();
        for i in 0..(RETRY_MEMORY + 10) {
            let body = format!("{{\"i\":{i}}}");
            r.is_retry(&ex("/p", &body, Some(503), Outcome::Complete));
        }
        assert!(r.failed.lock().unwrap().len() <= RETRY_MEMORY);
    }
}
