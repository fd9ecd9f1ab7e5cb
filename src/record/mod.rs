//! # The record: one redacted ledger entry, safe to ship anywhere.
//!
//! Step 3 of the flow (`proxy → exchange → record → {export, seal}`). [`build`] turns an
//! [`Exchange`](crate::exchange::Exchange), its parsed
//! [`Conversation`](crate::exchange::Conversation) and the compiled rules into a [`Record`];
//! the exporter (`export/`) reads it and turns it into one OTLP span, one log record and
//! metric points. Nothing in a `Record` may be raw PII, a raw user ID or a credential: content
//! fields hold only what the rules produced (scrubbed, hashed, encrypted or nothing),
//! identities hold pseudonyms.
//!
//! - `build.rs`: content under the redaction budget, labels capped and scrubbed, headers
//!   through the allowlist: [`build`] and [`build_within`].
//! - `identity.rs`: which user the exchange belongs to, and every user any identity source
//!   named, as pseudonyms.
//!
//! The message fields use the JSON shapes of `gen_ai.input.messages`,
//! `gen_ai.output.messages` and `gen_ai.system_instructions` (see `shared/otel-genai.md`), so
//! the exporter serializes them as they are.
//!
//! This module reads the exchange and the rules; it never touches the network, OTLP, the
//! sealed store or the threads that run it (`pipeline`).

mod build;
mod identity;

#[cfg(test)]
pub(crate) use build::MAX_LABEL_CHARS;
pub use build::{build, build_within, scope_key};

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use crate::counters::series::ChunkGaps;
use crate::exchange::queue::InFlight;
use crate::exchange::{Operation, OutcomeKind, Provider, TraceParent, Usage};
use crate::keys::UserPseudonym;

/// One redacted exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The request ID (`x-veil-request-id`), as text.
    pub request_id: String,
    /// When the request arrived.
    pub start: SystemTime,
    /// Total duration of the exchange.
    pub duration: Duration,
    /// Time from the request to the first response chunk (streaming) or body byte.
    pub time_to_first_chunk: Option<Duration>,
    /// The app's trace context; veil's span becomes its child.
    pub trace_parent: Option<TraceParent>,
    /// `gen_ai.provider.name` (`openai`, `anthropic`, `gcp.gemini`, ...), or `unknown`.
    pub provider: Provider,
    /// `gen_ai.operation.name` (`chat`, `embeddings`, `generate_content`, ...), or `unknown`.
    pub operation: Operation,
    /// `gen_ai.request.model`.
    pub request_model: Option<String>,
    /// `gen_ai.response.model`.
    pub response_model: Option<String>,
    /// `gen_ai.response.id`.
    pub response_id: Option<String>,
    /// `gen_ai.conversation.id`, when the API has one.
    pub conversation_id: Option<String>,
    /// `server.address`: the host the app addressed.
    pub server_address: String,
    /// `server.port`.
    pub server_port: u16,
    /// The request path without its query (the rules' scope `route`), through the rules'
    /// detectors as a label is; the ledger keeps it so feedback finds the exchange's rules
    /// scope after the record has left memory. Not exported over OTLP.
    pub route: String,
    /// HTTP status from upstream (absent when none arrived).
    pub status: Option<u16>,
    /// `error.type`: the HTTP status or the provider's error type or veil's failure class.
    pub error_type: Option<String>,
    /// `gen_ai.response.finish_reasons`.
    pub finish_reasons: Vec<String>,
    /// Token usage.
    pub usage: Usage,
    /// `gen_ai.request.stream`.
    pub stream: bool,
    /// Request parameters that are not content (`temperature`, `max_tokens`, `top_p`, ...).
    pub request_params: BTreeMap<String, serde_json::Value>,
    /// Estimated cost in USD; absent when the model's price is unknown (never a fake 0).
    pub cost_usd: Option<f64>,
    /// Pseudonymized user (`u_…`): `user.id` and `enduser.pseudo.id`.
    pub user_pseudonym: Option<UserPseudonym>,
    /// Every identity source's pseudonym (`u_…`), deduplicated, [`Record::user_pseudonym`]
    /// first: what the sealed store's index and the ledger's `exchange_users` hold, so
    /// `forget --user` finds the exchange by any source that named a user, not only the one
    /// that won (veil#13). Not exported over OTLP. Empty when nothing names a user.
    pub user_pseudonyms: Vec<UserPseudonym>,
    /// The `x-veil-feature` tag.
    pub feature: Option<String>,
    /// Keyed fingerprint of the API key (`fp_…`).
    pub api_key_fingerprint: Option<String>,
    /// Digest of the compiled rules that produced this record.
    pub rules_digest: String,
    /// Redaction counts by detector name (`EMAIL` → 3).
    pub redactions: BTreeMap<String, u64>,
    /// Redactions in the request content.
    pub redactions_input: u64,
    /// Redactions in the response content.
    pub redactions_output: u64,
    /// A body was cut at the capture limit.
    pub truncated: bool,
    /// The exchange was aborted by either side.
    pub aborted: bool,
    /// `complete`, `client_aborted`, `upstream_aborted`, `upstream_failed`.
    pub outcome: OutcomeKind,
    /// Redacted `gen_ai.system_instructions`, if the rules let any content out.
    pub system_instructions: Option<serde_json::Value>,
    /// Redacted `gen_ai.input.messages`, if the rules let any content out.
    pub input_messages: Option<serde_json::Value>,
    /// Redacted `gen_ai.output.messages`, if the rules let any content out.
    pub output_messages: Option<serde_json::Value>,
    /// Names of the tools offered to the model.
    pub tool_names: Vec<String>,
    /// Request headers on the rules' export allowlist.
    pub request_headers: Vec<(String, String)>,
    /// Response headers on the rules' export allowlist.
    pub response_headers: Vec<(String, String)>,
    /// Request and response body sizes on the wire.
    pub request_bytes: u64,
    /// Response body size on the wire.
    pub response_bytes: u64,
    /// A relayed WebSocket session's frame counts and close code (veil#17); its bytes each
    /// way are `request_bytes` / `response_bytes`, its length `duration`.
    pub websocket: Option<crate::exchange::WebSocketSession>,
    /// Why the content fields are absent although the rules would have let content out:
    /// `redaction_bytes` or `redaction_cpu`, the redaction budget ran out (see
    /// [`Budget`](crate::redact::Budget)). Content is then dropped whole, never kept half
    /// redacted; the metadata (model, tokens, cost, status) is still recorded.
    pub content_dropped: Option<&'static str>,
    /// Why a body, or part of a streamed one, could not be parsed (`request body is not JSON:
    /// expected value at line 1 column 1`, `2 stream event(s) are not JSON`). Short, never
    /// content. See [`Conversation::parse_error`](crate::exchange::Conversation::parse_error).
    pub parse_error: Option<String>,
    /// veil's own time on the exchange, (request, response head): see
    /// [`Timings::added_request`](crate::exchange::Timings::added_request). Metrics only.
    pub added_latency: (Option<Duration>, Option<Duration>),
    /// Gaps between the response's data chunks (streams). Metrics only.
    pub chunk_gaps: ChunkGaps,
    /// The request retried an earlier one: its SDK marked it (`x-stainless-retry-count` above
    /// 0, sent by the official OpenAI and Anthropic SDKs; set by [`build`]), or it repeats a
    /// recent failure (set by the pipeline, `pipeline::Retries`). Metrics only.
    pub retry: bool,
    /// Text made once from the content above for every sink: see [`Record::prepare`].
    pub prepared: Prepared,
    /// The exchange's place in the recording queue's bounds (`queue_capacity`,
    /// `queue_max_bytes`), held while this record is in memory (through the exporter and the
    /// ledger's writer) so those bounds cover it; set by the pipeline. Not data: a clone holds
    /// none and any two compare equal. Build records with `in_flight: InFlight::default()`.
    pub in_flight: InFlight,
}

/// A cache of text derived from a record's content, filled once by [`Record::prepare`]. A
/// cache, not data: two records compare equal whatever their caches hold, and a clone starts
/// empty (so a clone whose content is then changed never carries its original's text), unless
/// the content's trees were freed ([`Record::shed_content_trees`]): the text is then all that
/// is left of the content, and a clone keeps it. Build records with
/// `prepared: Prepared::default()`.
#[derive(Debug, Default)]
pub struct Prepared {
    text: OnceLock<PreparedText>,
    /// The content's JSON trees were freed after the text was made.
    shed: bool,
}

impl Clone for Prepared {
    fn clone(&self) -> Self {
        if self.shed {
            Prepared {
                text: self.text.clone(),
                shed: true,
            }
        } else {
            Prepared::default()
        }
    }
}

impl PartialEq for Prepared {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// What [`Record::prepare`] derives from the content.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PreparedText {
    /// JSON text of `system_instructions`, `input_messages` and `output_messages`, in that
    /// order (the [`CONTENT_ATTRIBUTES`] order); `None` where the field is absent.
    pub content: [Option<Box<str>>; 3],
    /// Tool calls in the answer: `tool_call` parts of the output messages; `None` when the
    /// rules kept no output content (the count is then unknown, not zero).
    pub tool_calls: Option<u64>,
    /// [`Record::redactions`] as a JSON object (`{"EMAIL":3}`); `None` when there were none.
    pub redactions: Option<Box<str>>,
    /// The trace of veil's span: the app's (`traceparent`) or one derived from the request id
    /// ([`veil_span`](crate::exchange::traceparent::veil_span)).
    pub trace_id: [u8; 16],
    /// veil's span id of the exchange
    /// ([`veil_span`](crate::exchange::traceparent::veil_span) of the request id).
    pub span_id: [u8; 8],
}

/// The GenAI attribute names of the content fields, in [`PreparedText::content`] order
/// (`shared/otel-genai.md` §1.2).
pub const CONTENT_ATTRIBUTES: [&str; 3] = [
    "gen_ai.system_instructions",
    "gen_ai.input.messages",
    "gen_ai.output.messages",
];

thread_local! {
    /// Where [`PreparedText::of`] writes the content's text before boxing it: its capacity is
    /// kept between records, up to [`SCRATCH_KEPT`].
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The largest scratch capacity a thread keeps between records, bytes: a large exchange's
/// (the escaper reserves six times a string's length) is freed after use instead.
const SCRATCH_KEPT: usize = 256 << 10;

impl PreparedText {
    fn of(r: &Record) -> PreparedText {
        // serde_json's text, written with SIMD string escaping (`json::to_compact`: serde_json's
        // own escaping was 6.8 % of the pipeline thread, benches/load at 8 connections) into
        // this thread's scratch buffer, then copied once into a box of the text's size.
        let text = |v: &Option<serde_json::Value>| {
            v.as_ref().map(|v| {
                SCRATCH.with_borrow_mut(|scratch| {
                    let text = crate::exchange::json::to_compact(v, scratch);
                    if scratch.capacity() > SCRATCH_KEPT {
                        *scratch = Vec::new();
                    }
                    text
                })
            })
        };
        let tool_calls = r
            .output_messages
            .as_ref()
            .and_then(|v| v.as_array())
            .map(|ms| {
                ms.iter()
                    .filter_map(|m| m.get("parts")?.as_array())
                    .flatten()
                    .filter(|p| p.get("type").and_then(|t| t.as_str()) == Some("tool_call"))
                    .count() as u64
            });
        // Once per record: the ledger, the span encoder and the feedback service all read it.
        let (trace_id, span_id) =
            crate::exchange::traceparent::veil_span(&r.request_id, r.trace_parent.as_ref());
        PreparedText {
            content: [
                text(&r.system_instructions),
                text(&r.input_messages),
                text(&r.output_messages),
            ],
            tool_calls,
            trace_id,
            span_id,
            redactions: (!r.redactions.is_empty()).then(|| {
                // A map of strings to integers always serializes.
                serde_json::to_string(&r.redactions)
                    .unwrap_or_default()
                    .into()
            }),
        }
    }
}

impl Record {
    /// The content's JSON text, tool-call count and redaction counts as JSON, made on first
    /// call and kept. The pipeline
    /// worker that builds a record calls it before handing the record on, so the ledger's
    /// single writer thread and the OTLP span encoder read text instead of serializing the
    /// same JSON trees again (serialization was ~18% of the writer's CPU, veil#12). Call it
    /// only once the content fields are final: later changes to them are not seen.
    pub fn prepare(&self) -> &PreparedText {
        self.prepared.text.get_or_init(|| PreparedText::of(self))
    }

    /// Makes the content's text ([`Record::prepare`]), then frees the JSON trees it was made
    /// from (`system_instructions`, `input_messages`, `output_messages` become `None`), for a
    /// record whose sinks read only the text: the SQLite ledger, spans and the feedback API
    /// do; OTLP log events, whose body is the content as a structured value, need the trees
    /// (see [`ExporterHandle::reads_content_trees`](crate::export::ExporterHandle::reads_content_trees)).
    ///
    /// The trees are many small allocations, several times the text's size: freed here, on
    /// the pipeline thread that made them, they neither wait in the exporter's queue and the
    /// ledger's batches nor are freed later on another thread (veil#18).
    pub fn shed_content_trees(&mut self) {
        self.prepare();
        self.system_instructions = None;
        self.input_messages = None;
        self.output_messages = None;
        self.prepared.shed = true;
    }

    /// Whether [`Record::shed_content_trees`] freed the content's trees (the text stays in
    /// [`Record::prepare`]).
    pub fn content_trees_shed(&self) -> bool {
        self.prepared.shed
    }

    /// Request plus response body bytes on the wire (saturating): the size the disk watch
    /// uses to estimate what this record will still write (ledger content, records files).
    pub fn wire_bytes(&self) -> u64 {
        self.request_bytes.saturating_add(self.response_bytes)
    }
}
