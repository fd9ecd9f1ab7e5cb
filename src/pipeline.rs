//! # The pipeline: the threads that run `Exchange → Conversation → Record → {export, seal}`.
//!
//! Off the hot path. The proxy hands finished exchanges to a bounded queue; worker threads
//! (plain OS threads, so parsing and scanning never steal the async runtime that forwards
//! traffic) take them one by one:
//! 1. parse the provider's JSON / SSE into a [`Conversation`](crate::exchange::Conversation)
//!    ([`exchange::parse`]);
//! 2. build the redacted [`Record`](crate::record::Record) under the compiled rules of the
//!    exchange's scope ([`record::build`]);
//! 3. hand the record to the exporter (`try_send`: a full exporter queue is a counted drop);
//! 4. seal the full exchange under its request ID (the store encrypts on this thread and
//!    group-commits on its own; a failure is logged and counted, never retried into memory).
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
}

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

/// How long a waiting hand-off sleeps between tries when the sealed store is busy.
const BUSY_RETRY: std::time::Duration = std::time::Duration::from_millis(2);

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
                        loop {
                            // One receiver shared by the workers; the lock is held only while
                            // waiting for the next exchange.
                            let next = rx.lock().unwrap_or_else(|e| e.into_inner()).blocking_recv();
                            let Some(exchange) = next else { break };
                            // The exchange's bytes count against the queue's byte bound until
                            // it is dropped here, after processing.
                            this.process(&exchange, &logs);
                        }
                    })
                    .expect("invariant: a pipeline thread can be spawned")
            })
            .collect()
    }

    /// Processes one exchange taken from the queue: record to the exporter, exchange to the
    /// store; its journal slot is marked dropped here when a hand-off drops it (counted), and
    /// recorded or sealed by the exporter and the store once durable.
    fn process(&self, queued: &Queued, logs: &Logs) {
        let exchange: &Exchange = queued;
        let slot = queued.slot();
        let dropped = |why: &str| {
            if let (Some(j), Some(s)) = (queued.journal(), slot) {
                j.dropped(s);
            }
            tracing::trace!(exchange.id = %exchange.id, why, "journal: dropped");
        };
        let _span = tracing::debug_span!("process_exchange", exchange.id = %exchange.id).entered();
        let rules = self.rules.current();
        let conversation = exchange::parse(exchange, &self.parse, &self.pricing);
        let record = record::build_within(exchange, &conversation, &rules, self.redaction_budget);
        // The content's JSON text, made here on one of several workers rather than on the
        // ledger's single writer thread or again by the span encoder.
        record.prepare();
        let users = record.user_pseudonyms.clone();
        // Before the record leaves: a feedback posted right after the answer finds it here
        // while the record is still on its way to the ledger.
        if let Some(recent) = &self.recent {
            let key = record::scope_key(exchange, &conversation);
            recent.insert(crate::feedback::Rated::of(&record, &key));
        }
        self.counters.pipeline.processed.inc();
        if let Some(exporter) = &self.exporter {
            let sent = match self.hand_off {
                HandOff::Drop => exporter.try_send_journaled(record, slot),
                HandOff::Wait => exporter.send_blocking(record, slot),
            };
            if let Err(e) = sent {
                dropped("export queue");
                let n = self.counters.pipeline.export_dropped.inc();
                if let Some(since) = logs.export.hit() {
                    tracing::warn!(
                        exchange.id = %exchange.id,
                        dropped_total = n,
                        since_last_line = since,
                        full = e.is_full(),
                        "exporter queue refused a record"
                    );
                }
            }
        }
        if let Some(store) = &self.store {
            // The store tells the journal how the seal ended: durable, or failed (counted by
            // the store's writer, so a crash does not report it again).
            let on_done = || -> crate::seal::OnDone {
                let mark = queued.journal().cloned().zip(slot);
                Box::new(move |durable| {
                    if let Some((j, s)) = mark {
                        if durable { j.sealed(s) } else { j.dropped(s) }
                    }
                })
            };
            let mut result = store.submit_detached_users(exchange, &users, on_done());
            while self.hand_off == HandOff::Wait
                && matches!(&result, Err(e) if e.kind() == crate::seal::ErrorKind::Busy)
            {
                std::thread::sleep(BUSY_RETRY);
                result = store.submit_detached_users(exchange, &users, on_done());
            }
            if let Err(e) = result {
                dropped("seal refused");
                let n = self.counters.pipeline.seal_refused.inc();
                if let Some(since) = logs.seal.hit() {
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
