//! # The pipeline: `Exchange → Conversation → rules → Record → {export, seal}`.
//!
//! Off the hot path. The proxy hands finished exchanges to a bounded queue; worker threads
//! (plain OS threads, so parsing and scanning never steal the async runtime that forwards
//! traffic) take them one by one:
//! 1. parse the provider's JSON / SSE into a [`Conversation`](crate::exchange::Conversation);
//! 2. redact it under the compiled rules of the exchange's scope into a [`Record`];
//! 3. hand the record to the exporter (`try_send`: a full exporter queue is a counted drop);
//! 4. seal the full exchange under its request ID (the store encrypts on this thread and
//!    group-commits on its own; a failure is logged and counted, never retried into memory).
//!
//! The rules can be swapped while traffic flows ([`RulesHandle::reload`], on SIGHUP): each
//! exchange is processed under the rules current when its processing starts, and its record
//! carries that rules digest.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde_json::Value;

use crate::counters::LogEvery;
use crate::exchange::queue::{ExchangeReceiver, Queued};
use crate::exchange::{self, Conversation, Exchange, ParseOptions, Pricing};
use crate::export::ExporterHandle;
use crate::keys::Keyring;
use crate::record::Record;
use crate::redact::{Budget, CompiledRules, Counts, ScopeKey, Target};
use crate::seal::SealStore;

/// The shipped default profile (`rules/default.toml`).
pub const BUILTIN_DEFAULT_RULES: &str = include_str!("../rules/default.toml");

/// The compiled rules in force, swappable at run time.
#[derive(Debug)]
pub struct RulesHandle {
    path: PathBuf,
    current: RwLock<Arc<CompiledRules>>,
}

impl RulesHandle {
    /// Loads and compiles `path`. A bad file is an error naming file, line and column.
    pub fn load(path: PathBuf, keys: &Keyring) -> Result<Self, crate::redact::RulesError> {
        let rules = CompiledRules::load(&path, keys)?;
        Ok(RulesHandle {
            path,
            current: RwLock::new(Arc::new(rules)),
        })
    }

    /// The shipped `rules/default.toml`, compiled into the binary: used when `veil run` starts
    /// outside a checkout and no `--rules` was given. Reload re-reads `path` if it appears.
    pub fn builtin_default(
        path: PathBuf,
        keys: &Keyring,
    ) -> Result<Self, crate::redact::RulesError> {
        let rules = CompiledRules::from_str(BUILTIN_DEFAULT_RULES, keys)?;
        Ok(Self::from_rules(path, rules))
    }

    /// Wraps already compiled rules (tests, tools).
    pub fn from_rules(path: PathBuf, rules: CompiledRules) -> Self {
        RulesHandle {
            path,
            current: RwLock::new(Arc::new(rules)),
        }
    }

    /// The rules in force.
    pub fn current(&self) -> Arc<CompiledRules> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Recompiles the rules file. On success the new rules apply to every exchange processed
    /// from now on and their digest is returned; on failure the old rules stay in force and the
    /// error (file:line:col) is returned for logging.
    pub fn reload(&self, keys: &Keyring) -> Result<String, crate::redact::RulesError> {
        let rules = CompiledRules::load(&self.path, keys)?;
        let digest = rules.digest().to_string();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
        Ok(digest)
    }
}

/// Counters of the pipeline.
#[derive(Debug, Default)]
pub struct PipelineStats {
    /// Exchanges processed.
    pub processed: AtomicU64,
    /// Records the exporter refused (its queue was full or closed).
    pub export_dropped: AtomicU64,
    /// Exchanges the store refused (failures after queueing: `SealStore::detached_failures`).
    pub seal_failed: AtomicU64,
    /// Rate limit of the "exporter queue refused a record" line.
    log_export: LogEvery,
    /// Rate limit of the "cannot seal exchange" line (a degraded store refuses every one).
    log_seal: LogEvery,
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
    /// Counters.
    pub stats: Arc<PipelineStats>,
    /// Niceness of the worker threads (see [`crate::os::RECORDING_NICE`]; 0 = as the caller).
    pub nice: i32,
    /// Drop or wait when the exporter or the store has no room.
    pub hand_off: HandOff,
    /// What redacting one exchange may cost before its content is dropped from the record.
    pub redaction_budget: Budget,
}

impl Pipeline {
    /// Starts `workers` threads consuming `rx`. They exit when every sender is gone and the
    /// queue is empty; join the returned handles to wait for that.
    pub fn spawn(self, rx: ExchangeReceiver, workers: usize) -> Vec<std::thread::JoinHandle<()>> {
        let rx = Arc::new(Mutex::new(rx));
        (0..workers.max(1))
            .map(|i| {
                let rx = rx.clone();
                let this = self.clone();
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
                            this.process(&exchange);
                        }
                    })
                    .expect("invariant: a pipeline thread can be spawned")
            })
            .collect()
    }

    /// Processes one exchange taken from the queue: record to the exporter, exchange to the
    /// store; its journal slot is marked dropped here when a hand-off drops it (counted), and
    /// recorded or sealed by the exporter and the store once durable.
    pub fn process(&self, queued: &Queued) {
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
        let record = build_record_within(exchange, &conversation, &rules, self.redaction_budget);
        let user = record.user_pseudonym.clone();
        self.stats.processed.fetch_add(1, Ordering::Relaxed);
        if let Some(exporter) = &self.exporter {
            let sent = match self.hand_off {
                HandOff::Drop => exporter.try_send_journaled(record, slot),
                HandOff::Wait => exporter.send_blocking(record, slot),
            };
            if let Err(e) = sent {
                dropped("export queue");
                let n = self.stats.export_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                exporter.metrics().exchanges_dropped.inc();
                if let Some(since) = self.stats.log_export.hit() {
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
            let mut result = store.submit_detached_then(exchange, user.as_deref(), on_done());
            while self.hand_off == HandOff::Wait
                && matches!(&result, Err(e) if e.kind() == crate::seal::ErrorKind::Busy)
            {
                std::thread::sleep(BUSY_RETRY);
                result = store.submit_detached_then(exchange, user.as_deref(), on_done());
            }
            if let Err(e) = result {
                dropped("seal refused");
                let n = self.stats.seal_failed.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(since) = self.stats.log_seal.hit() {
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

/// Builds the redacted record of one exchange under the default redaction budget
/// ([`Budget::DEFAULT`]); see [`build_record_within`].
pub fn build_record(ex: &Exchange, conv: &Conversation, rules: &CompiledRules) -> Record {
    build_record_within(ex, conv, rules, Budget::DEFAULT)
}

/// Builds the redacted record of one exchange. Nothing raw leaves here: content goes through
/// the scope's rules, the user ID through the pseudonym key, headers through the allowlist.
///
/// Content (system instructions, input and output messages, free-text request parameters) is
/// redacted under `budget`. When it runs out, all of it is left out of the record, none kept
/// half redacted, and [`Record::content_dropped`] says which limit; the metadata (model,
/// tokens, cost, status, labels, headers: each bounded in size) is recorded as usual, and the
/// redaction counts then cover that metadata only.
pub fn build_record_within(
    ex: &Exchange,
    conv: &Conversation,
    rules: &CompiledRules,
    budget: Budget,
) -> Record {
    let route = ex.path.split('?').next().unwrap_or("/");
    let scope = rules.scope_for(&ScopeKey {
        host: Some(&conv.server_address),
        route: Some(route),
        model: conv.request_model.as_deref(),
        feature: conv.feature.as_deref(),
    });

    let mut meter = budget.start();
    let mut redact = |value: Value, target: Target, counts: &mut Counts| -> Option<Value> {
        let mut value = value;
        if is_empty(&value) {
            return None;
        }
        // After an overrun every call fails at once (the meter stays exceeded).
        let found = rules
            .redact_json_within(&mut value, target, scope, &mut meter)
            .ok()?;
        counts.merge(&found);
        (!is_empty(&value)).then_some(value)
    };
    let mut input = Counts::default();
    let mut system_instructions = redact(
        conv.system_instructions_json(),
        Target::SystemInstructions,
        &mut input,
    );
    let mut input_messages = redact(
        conv.input_messages_json(),
        Target::InputMessages,
        &mut input,
    );
    let mut output = Counts::default();
    let mut output_messages = redact(
        conv.output_messages_json(),
        Target::OutputMessages,
        &mut output,
    );

    // Request parameters are not content, but stop sequences are free text.
    let mut params_found = Counts::default();
    let mut request_params: BTreeMap<String, Value> = conv
        .params
        .iter()
        .filter_map(|(k, v)| {
            if matches!(v, Value::Number(_) | Value::Bool(_) | Value::Null) {
                return Some((k.clone(), v.clone()));
            }
            let mut v = v.clone();
            let found = rules
                .redact_json_within(&mut v, Target::Request, scope, &mut meter)
                .ok()?;
            params_found.merge(&found);
            Some((k.clone(), v))
        })
        .collect();

    let content_dropped = meter.exceeded().map(|e| e.reason());
    let mut all = Counts::default();
    if content_dropped.is_some() {
        // All or nothing: what was redacted before the budget ran out goes too, so the
        // record never holds part of the content (nor counts of what it does not hold).
        system_instructions = None;
        input_messages = None;
        output_messages = None;
        request_params.retain(|_, v| matches!(v, Value::Number(_) | Value::Bool(_) | Value::Null));
        input = Counts::default();
        output = Counts::default();
    } else {
        all.merge(&input);
        all.merge(&output);
        all.merge(&params_found);
    }

    // Label-like fields come from the app or the provider and could carry anything (an email
    // as a model alias, free text in an error code): detectors and a length cap apply.
    let mut label = |s: &str| -> String {
        let capped: String = s.chars().take(MAX_LABEL_CHARS).collect();
        let (text, found) = rules.redact_text(&capped, scope);
        all.merge(&found);
        text
    };
    let request_model = conv.request_model.as_deref().map(&mut label);
    let response_model = conv.response_model.as_deref().map(&mut label);
    let conversation_id = conv.conversation_id.as_deref().map(&mut label);
    let feature = conv.feature.as_deref().map(&mut label);
    let error_type = conv.error_type.as_deref().map(&mut label);
    let response_id = conv.response_id.as_deref().map(&mut label);
    let tool_names: Vec<String> = conv
        .tool_names
        .iter()
        .take(MAX_TOOL_NAMES)
        .map(|t| label(t))
        .collect();

    // The user: the rules file's identity headers/paths first, then what the parser found.
    let mut identity_headers = ex.tags.clone();
    identity_headers.extend(ex.request_headers.iter().cloned());
    let request_json: Option<Value> = ex
        .request_body
        .decoded(64 << 20)
        .ok()
        .and_then(|b| exchange::json::from_slice(&b).ok());
    let user_pseudonym = rules
        .find_user(request_json.as_ref(), &identity_headers)
        .or_else(|| conv.user_id.as_deref().map(|u| rules.pseudonymize_user(u)));

    Record {
        request_id: ex.id.to_string(),
        start: ex.started_at,
        duration: conv.timings.duration,
        time_to_first_chunk: conv.timings.time_to_first_chunk,
        trace_parent: conv.trace_parent.clone(),
        provider: conv.provider.clone(),
        operation: conv.operation.clone(),
        request_model,
        response_model,
        response_id,
        conversation_id,
        server_address: conv.server_address.clone(),
        server_port: conv.server_port,
        status: conv.status,
        error_type,
        finish_reasons: conv.finish_reasons.clone(),
        usage: conv.usage.clone(),
        stream: conv.stream,
        request_params,
        cost_usd: conv.cost_usd,
        user_pseudonym,
        feature,
        api_key_fingerprint: ex.api_key_fingerprint.clone(),
        rules_digest: rules.digest().to_string(),
        redactions: all.into_map(),
        redactions_input: input.total(),
        redactions_output: output.total(),
        truncated: conv.truncated || ex.is_truncated(),
        aborted: conv.aborted || ex.outcome.is_aborted(),
        outcome: ex.outcome.as_str().to_string(),
        system_instructions,
        input_messages,
        output_messages,
        tool_names,
        request_headers: rules.filter_headers(&ex.request_headers),
        response_headers: rules.filter_headers(&ex.response_headers),
        request_bytes: conv.request_bytes,
        response_bytes: conv.response_bytes,
        content_dropped,
        parse_error: conv.parse_error.clone(),
    }
}

/// Most tool names recorded per exchange. Real requests offer a few dozen tools; the names are
/// redacted outside the content budget, so an app sending thousands must not buy unbudgeted
/// scanning with them (256 × 256 characters at most).
const MAX_TOOL_NAMES: usize = 256;

/// Longest label (model, feature, conversation id, error type, tool name) exported. Real ones
/// are short; a long one is an app putting content where metadata belongs.
const MAX_LABEL_CHARS: usize = 256;

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::String(s) => s.is_empty(),
        _ => false,
    }
}
