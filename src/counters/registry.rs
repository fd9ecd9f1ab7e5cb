//! The list: every counter and gauge of veil, in the order an exchange meets them.
//!
//! Adding a number is adding one entry here (see `CONTRIBUTING.md`): its field, kind, name,
//! unit and help. It is then exported with the others, by OTLP today and `/metrics` (veil#15)
//! next; `docs/metrics.md` lists it (a test fails until it does).

use super::{Counter, Gauge, MetricDesc, MetricKind};

/// Help of `veil.proxy.errors` (one text for every `error.type`).
const PROXY_ERRORS: &str = "Requests and connections veil ended itself, by error.type: refused (403, SNI mismatch), timed_out (a clock closed it), client_aborted (the app broke off its upload), upstream_error (502/504).";

/// Help of `veil.exchanges.dropped` (one text for every `veil.drop.reason`).
const DROPPED: &str = "Exchanges that could not be recorded, by where they were lost.";

/// Help of `veil.seals.failed` (one text for every `veil.seal.stage`).
const SEALS_FAILED: &str = "Exchanges whose sealed copy was not made, by stage: submit (the store refused it), writer (lost after it was queued).";

/// Help of `veil.metrics.values.capped` (one text for every `veil.metrics.label`).
const VALUES_CAPPED: &str = "Exchanges whose model or feature was reported as `other` in the per-exchange series because the label already had its maximum of distinct values.";

/// Help of `veil.rules.reloads` (one text for every `veil.reload.result`).
const RULES_RELOADS: &str = "Rules reloads (SIGHUP, POST /v1/rules/reload, veil reload), by veil.reload.result: ok (the new rules are in force), failed (the old rules stay).";

/// Help of `veil.feedback.refused` (one text for every `veil.feedback.reason`).
const FEEDBACK_REFUSED: &str = "Feedback refused by the feedback service, by veil.feedback.reason: invalid (400), not_found (404), unauthorized (401), unavailable (503).";

registry! {
    /// The proxy (hot path): connections, tunnels, recorded requests, veil's own error answers,
    /// minted leaves.
    proxy: ProxyCounters {
        /// Client connections accepted (`listener`).
        connections: Counter => "veil.proxy.connections",
            "{connection}", "Client connections accepted.";
        /// CONNECT tunnels passed through blind: hosts not intercepted (`tunnel`).
        tunnels: Counter => "veil.proxy.tunnels",
            "{tunnel}", "CONNECT tunnels passed through blind (hosts not intercepted).";
        /// Requests to recorded hosts forwarded upstream: with their recording, or (best-effort)
        /// without it when the recording queue had no room, counted in `veil.exchanges.dropped`
        /// too. A request refused with 503 (`audit = "required"`) is not counted (`forward`).
        intercepted: Counter => "veil.proxy.intercepted",
            "{request}", "Requests to recorded hosts forwarded upstream, recorded or dropped from recording.";
        /// Requests refused with 403: a port outside `allow_ports`, or a destination veil does
        /// not connect to for apps (loopback, link-local, unspecified, its own listeners); also
        /// a TLS session whose SNI is not the CONNECT host (`answer`, `intercept`).
        refused: Counter => "veil.proxy.errors" ["error.type" = "refused"],
            "{request}", PROXY_ERRORS;
        /// Client connections and tunnels closed by a clock: TLS handshake, request head, idle
        /// keep-alive or tunnel idle timeout (`listener`, `intercept`, `tunnel`, `answer`).
        timed_out: Counter => "veil.proxy.errors" ["error.type" = "timed_out"],
            "{request}", PROXY_ERRORS;
        /// Forwarded requests whose app broke off its own upload: the client's error, never
        /// counted as an upstream one (`answer`).
        client_aborted: Counter => "veil.proxy.errors" ["error.type" = "client_aborted"],
            "{request}", PROXY_ERRORS;
        /// Requests that got a 502/504 from veil because of the upstream (`answer`).
        upstream_errors: Counter => "veil.proxy.errors" ["error.type" = "upstream_error"],
            "{request}", PROXY_ERRORS;
        /// Leaf certificates minted, i.e. leaf-cache misses (`leaf`).
        leaves_minted: Counter => "veil.proxy.leaves.minted",
            "{certificate}", "Leaf certificates minted (leaf cache misses).";
        /// Leaf lookups served from the cache, without minting (`leaf`): a TLS handshake
        /// with an intercepted host seen within the leaf's cache life. Racers that wait for
        /// a first mint in progress count here too, so hits + `leaves_minted` = lookups.
        leaf_cache_hits: Counter => "veil.proxy.leaf_cache.hits",
            "{certificate}", "Leaf certificates served from the leaf cache (hits; misses are veil.proxy.leaves.minted).";
        /// App connections open now on the proxy port: up on accept, down when the last task
        /// holding the connection (its HTTP server, a blind tunnel or an intercepted TLS
        /// session) ends, on every path: close, error, timeout, shutdown cut (`listener`,
        /// through the connection's slot).
        connections_open: Gauge => "veil.proxy.connections.open",
            "{connection}", "Client connections open now.";
    }

    /// The recording queue (proxy → pipeline): hand-offs, drops, audit refusals, bytes held.
    queue: QueueCounters {
        /// Exchanges handed to the pipeline.
        queued: Counter => "veil.queue.exchanges",
            "{exchange}", "Exchanges handed to the recording queue.";
        /// Exchanges dropped because the queue held `queue_capacity` exchanges (best-effort).
        dropped_full: Counter => "veil.exchanges.dropped" ["veil.drop.reason" = "recording_queue_full"],
            "{exchange}", DROPPED;
        /// Exchanges dropped because the queue held `queue_max_bytes` of bodies (best-effort).
        dropped_bytes: Counter => "veil.exchanges.dropped" ["veil.drop.reason" = "recording_queue_bytes"],
            "{exchange}", DROPPED;
        /// Exchanges dropped because recording had stopped (shutdown).
        dropped_closed: Counter => "veil.exchanges.dropped" ["veil.drop.reason" = "recording_stopped"],
            "{exchange}", DROPPED;
        /// Requests refused with 503 before going upstream because no room could be reserved
        /// (audit required); counted by the queue and by the proxy's admission check.
        refused: Counter => "veil.exchanges.refused",
            "{request}", "Requests refused with 503 because they could not be recorded (audit = required).";
        /// Requests that found the queue full and waited for room (up to `queue_wait`)
        /// before going upstream (audit required); those still without room are also
        /// `refused`.
        waited: Counter => "veil.queue.waits",
            "{request}", "Requests that waited for room in the recording queue before going upstream (audit = required).";
        /// Requests waiting for room in the queue now (audit required).
        waiting: Gauge => "veil.queue.waiting",
            "{request}", "Requests waiting now for room in the recording queue (audit = required).";
        /// Captured body bytes of the exchanges in flight (`in_flight`): released when
        /// recording is done with the exchange (its record and sealed frame freed), not when
        /// a worker takes it.
        bytes: Gauge => "veil.queue.bytes",
            "By", "Captured body bytes of the exchanges in flight in recording (counted against queue_max_bytes).";
        /// Exchanges admitted to recording (or reserved for, under `audit = "required"`)
        /// whose exchange, record or sealed frame is still in memory: queued, being
        /// processed, waiting for the exporter, the ledger or the sealed store. At most
        /// `capacity`; at it, best-effort requests are forwarded unrecorded (`dropped_full`).
        in_flight: Gauge => "veil.queue.in_flight",
            "{exchange}", "Exchanges in flight in recording: queued, being processed, or waiting for the exporter, the ledger or the sealed store (at most queue_capacity).";
        /// `queue_capacity`, set when the queue is made (`channel`).
        capacity: Gauge => "veil.queue.capacity",
            "{exchange}", "Exchanges recording holds in flight at most (queue_capacity).";
        /// Exchanges handed over and not yet taken by a pipeline worker (a slot reserved for
        /// a request in flight under `audit = "required"` counts once its exchange is sent):
        /// the part of `in_flight` that waits for a worker.
        depth: Gauge => "veil.queue.depth",
            "{exchange}", "Exchanges waiting in the recording queue for a pipeline worker.";
    }

    /// The pipeline workers: exchanges processed, and the hand-offs to export and seal that
    /// failed.
    pipeline: PipelineCounters {
        /// Exchanges processed (parsed, redacted, handed on).
        processed: Counter => "veil.pipeline.exchanges",
            "{exchange}", "Exchanges the pipeline parsed, redacted and handed on.";
        /// Exchanges whose processing panicked (a bug): not recorded, not sealed; the worker
        /// goes on with the next.
        failed: Counter => "veil.exchanges.dropped" ["veil.drop.reason" = "pipeline_failed"],
            "{exchange}", DROPPED;
        /// Records the exporter's queue refused (full, or shut down).
        export_dropped: Counter => "veil.exchanges.dropped" ["veil.drop.reason" = "export_queue_full"],
            "{exchange}", DROPPED;
        /// Exchanges the sealed store refused when handed over (degraded, busy under
        /// best-effort, closed); failures after that are `seal.detached_failures`.
        seal_refused: Counter => "veil.seals.failed" ["veil.seal.stage" = "submit"],
            "{exchange}", SEALS_FAILED;
    }

    /// The pooled upstream client (`upstream`): connections its connector opened, requests
    /// handed to it. Blind tunnels open their own connections and are counted as
    /// `proxy.tunnels`, not here.
    upstream: UpstreamCounters {
        /// TCP connections the upstream client's connector opened (after `--resolve` and the
        /// destination check; TLS may still fail on them).
        connections_opened: Counter => "veil.upstream.connections.opened",
            "{connection}", "New connections the upstream client opened.";
        /// Requests handed to the upstream client (`forward`), whether on a new or a pooled
        /// connection: requests - connections opened = requests that reused a connection.
        requests: Counter => "veil.upstream.requests",
            "{request}", "Requests sent upstream (requests minus connections opened = requests on reused connections).";
    }

    /// The exporter: records and audit events accepted, OTLP delivery, the spool.
    export: ExportCounters {
        /// Records accepted by the exporter.
        exchanges: Counter => "veil.exchanges",
            "{exchange}", "Exchanges recorded.";
        /// Records accepted without their content because redacting it exceeded the redaction
        /// budget (the record says why in `veil.content_dropped`).
        content_dropped: Counter => "veil.exchanges.content_dropped",
            "{exchange}", "Exchanges recorded without their content: redaction exceeded its budget.";
        /// Audit events accepted by the exporter.
        audit_events: Counter => "veil.audit.events",
            "{event}", "Audit events recorded.";
        /// Batches the collector accepted.
        batches_delivered: Counter => "veil.export.batches.delivered",
            "{batch}", "Batches the collector accepted.";
        /// Export attempts that failed, retryable or not.
        export_failures: Counter => "veil.export.failures",
            "{attempt}", "Failed export attempts.";
        /// Batches given up without delivery: non-retryable answers, oversize payloads.
        batches_rejected: Counter => "veil.export.batches.rejected",
            "{batch}", "Batches given up after a non-retryable answer.";
        /// Batches written to the spool instead of sent at once: the collector failed or
        /// older batches were waiting ahead of them (also at shutdown).
        spool_batches_written: Counter => "veil.spool.batches.written",
            "{batch}", "Batches written to the spool to wait for the collector.";
        /// Batches lost because the spool exceeded its bound.
        spool_batches_dropped: Counter => "veil.spool.batches.dropped",
            "{batch}", "Batches dropped because the spool was full.";
        /// Bytes lost because the spool exceeded its bound.
        spool_bytes_dropped: Counter => "veil.spool.bytes.dropped",
            "By", "Bytes dropped because the spool was full.";
        /// Bytes currently held in the spool, all signals.
        spool_bytes: Gauge => "veil.spool.bytes",
            "By", "Bytes waiting in the spool.";
        /// Wire bytes ([`Record::wire_bytes`](crate::record::Record::wire_bytes)) of the
        /// records accepted and not yet handed to their writers (the ledger's queue, the records
        /// files or the collector): the disk watch counts them against `disk_reserve`.
        unwritten_bytes: Gauge => "veil.export.bytes.unwritten",
            "By", "Wire bytes of records accepted by the exporter and not yet handed to their writers.";
    }

    /// The SQLite ledger's writer.
    ledger: LedgerCounters {
        /// Exchange rows committed.
        rows: Counter => "veil.ledger.rows",
            "{row}", "Exchange rows committed to the ledger.";
        /// Records that did not reach the ledger (write failed or the ledger was shut down).
        dropped: Counter => "veil.exchanges.dropped" ["veil.drop.reason" = "ledger_write_failed"],
            "{exchange}", DROPPED;
        /// Transactions that failed (each rolls back whole).
        failures: Counter => "veil.ledger.failures",
            "{transaction}", "Ledger transactions that failed (each rolled back whole).";
        /// Content rows deleted by `ledger_content_retention` or `ledger_max_size`.
        content_evicted: Counter => "veil.ledger.content.evicted",
            "{row}", "Content rows deleted by ledger_content_retention or ledger_max_size.";
        /// Exchange rows deleted by `ledger_retention` or `ledger_max_size`.
        rows_evicted: Counter => "veil.ledger.rows.evicted",
            "{row}", "Exchange rows deleted by ledger_retention or ledger_max_size.";
        /// Bytes of pages in use, at the last check.
        bytes: Gauge => "veil.ledger.bytes",
            "By", "Bytes of ledger pages in use, at the last check.";
        /// Wire bytes ([`Record::wire_bytes`](crate::record::Record::wire_bytes)) of the
        /// records queued for the writer and not yet committed or dropped: the disk watch
        /// counts them against `disk_reserve`.
        queued_bytes: Gauge => "veil.ledger.bytes.queued",
            "By", "Wire bytes of records queued for the ledger and not yet committed.";
    }

    /// The sealed store's writer: failed writes, recoveries, seals lost after queueing.
    seal: SealCounters {
        /// Writes that failed: seal batches whose commit failed, and forget/purge/compact/rewrap
        /// calls that failed on an I/O error. One failed batch counts once, however many
        /// exchanges it held.
        failed_commits: Counter => "veil.seal.writes.failed",
            "{write}", "Sealed-store writes that failed (a failed batch counts once).";
        /// Times the store went from degraded back to ok without a restart.
        recoveries: Counter => "veil.seal.recoveries",
            "{event}", "Times the sealed store recovered from degraded without a restart.";
        /// Detached seals (the pipeline's) lost after they were queued: their batch failed, or
        /// the store was degraded when the writer reached them.
        detached_failures: Counter => "veil.seals.failed" ["veil.seal.stage" = "writer"],
            "{exchange}", SEALS_FAILED;
        /// Seals handed to the writer thread and not yet committed or failed (`submit`
        /// adds, the writer takes a batch off once its outcome is known).
        pending: Gauge => "veil.seals.pending",
            "{exchange}", "Seals queued for the sealed store's writer and not yet committed or failed.";
    }

    /// The feedback service (veil#14): feedback accepted and refused, on the proxy port and
    /// the control socket alike (`FeedbackService::handle` and its token check). Answers the
    /// proxy gives before the service sees the body (413, 405, 404 for another `/veil/` path)
    /// are not counted here.
    feedback: FeedbackCounters {
        /// Feedback accepted (202): handed to the ledger's queue (when the ledger is on) and
        /// offered to the exporter.
        accepted: Counter => "veil.feedback.accepted",
            "{feedback}", "Feedback accepted (202).";
        /// Malformed bodies, a `scope` the exchange has no task for, a `name` or `label` a
        /// detector matches (400).
        refused_invalid: Counter => "veil.feedback.refused" ["veil.feedback.reason" = "invalid"],
            "{feedback}", FEEDBACK_REFUSED;
        /// Unknown, forgotten or expired request ids (404).
        refused_not_found: Counter => "veil.feedback.refused" ["veil.feedback.reason" = "not_found"],
            "{feedback}", FEEDBACK_REFUSED;
        /// Missing or wrong token when veil listens beyond loopback (401).
        refused_unauthorized: Counter => "veil.feedback.refused" ["veil.feedback.reason" = "unauthorized"],
            "{feedback}", FEEDBACK_REFUSED;
        /// The ledger's queue was full or closed (503): nothing stored.
        refused_unavailable: Counter => "veil.feedback.refused" ["veil.feedback.reason" = "unavailable"],
            "{feedback}", FEEDBACK_REFUSED;
        /// Accepted feedback whose OTLP event the exporter's queue refused (full or shut
        /// down): it is in the ledger, not at the collector.
        export_dropped: Counter => "veil.feedback.export.dropped",
            "{feedback}", "Accepted feedback whose OTLP event the exporter's queue refused (it is in the ledger only).";
    }

    /// Rules reloads: SIGHUP, `POST /v1/rules/reload` and `veil reload` run the same reload
    /// (`server::rules_reloader`), which counts each outcome.
    rules: RulesCounters {
        /// Reloads whose file compiled: the new rules are in force.
        reloads_ok: Counter => "veil.rules.reloads" ["veil.reload.result" = "ok"],
            "{reload}", RULES_RELOADS;
        /// Reloads rejected (the keyring or the rules file did not load): the old rules stay.
        reloads_failed: Counter => "veil.rules.reloads" ["veil.reload.result" = "failed"],
            "{reload}", RULES_RELOADS;
    }

    /// Recording health ([`Health`](crate::health::Health) keeps these current).
    recording: RecordingCounters {
        /// Times a part of recording ([`Part`](crate::health::Part)) went from healthy to
        /// degraded (two parts failing at once count twice).
        degradations: Counter => "veil.recording.degradations",
            "{event}", "Times a part of recording (seal, records, disk, ledger) went from healthy to degraded.";
        /// 1 while any part of recording is degraded, else 0.
        degraded: Gauge => "veil.recording.degraded",
            "1", "1 while recording is degraded (see /healthz for why), else 0.";
    }

    /// The per-exchange series ([`super::series`]): values the cardinality cap replaced with
    /// `other` (counted by the exporter when it observes a record).
    metrics: MetricsCounters {
        /// Exchanges whose `gen_ai.request.model` became `other`.
        capped_request_model: Counter => "veil.metrics.values.capped" ["veil.metrics.label" = "gen_ai.request.model"],
            "{exchange}", VALUES_CAPPED;
        /// Exchanges whose `gen_ai.response.model` became `other`.
        capped_response_model: Counter => "veil.metrics.values.capped" ["veil.metrics.label" = "gen_ai.response.model"],
            "{exchange}", VALUES_CAPPED;
        /// Exchanges whose `veil.feature` became `other`.
        capped_feature: Counter => "veil.metrics.values.capped" ["veil.metrics.label" = "veil.feature"],
            "{exchange}", VALUES_CAPPED;
    }
}

impl QueueCounters {
    /// Every exchange not recorded because of the queue (all three drop reasons).
    pub fn dropped(&self) -> u64 {
        self.dropped_full.get() + self.dropped_bytes.get() + self.dropped_closed.get()
    }
}
