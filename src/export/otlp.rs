//! # OTLP encoding: `Record` → span, log record and metric points.
//!
//! Builds the `opentelemetry-proto` messages for one batch, following the GenAI semantic
//! conventions v1.41.1 (`shared/otel-genai.md` §1) and veil's own `veil.*` attributes, and
//! encodes them as protobuf or OTLP/JSON.
//!
//! Owns: attribute names, span/log/metric shapes, trace IDs, the resource. Reads [`Record`]s
//! and [`AuditEvent`]s only, whose content is already redacted; it must never see an
//! `Exchange` or raw content, and never touches the network or the disk.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    self as pm, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric,
    number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use prost::Message;

use super::metrics::{
    DURATION_BUCKETS, Histograms, Metrics, SeriesKey, SeriesValue, TOKEN_BUCKETS,
};
use crate::record::Record;

/// Schema of the attribute names veil emits (semconv v1.41, see otel-genai.md §0).
pub const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.41.0";

/// Instrumentation scope name.
pub const SCOPE_NAME: &str = "veil";

/// `event_name` of the per-exchange log record (otel-genai.md §1.2).
pub const EVENT_NAME: &str = "gen_ai.client.inference.operation.details";

/// `Span.flags` bits telling that the parent's remoteness is known (0x100) and that it is
/// remote (0x200): the app's span lives in another process (otel-genai.md §2).
const FLAGS_PARENT_REMOTE: u32 = 0x300;

/// Request parameters with a `gen_ai.request.*` name; others become `veil.request.*`.
const GENAI_PARAMS: &[&str] = &[
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "frequency_penalty",
    "presence_penalty",
    "stop_sequences",
    "seed",
    "choice.count",
    "encoding_formats",
];

/// An operator action on the sealed store, exported as an OTLP log record.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    /// What happened: `forget`, `unseal`, `retention_purge`, ...
    pub kind: String,
    /// The request ID the action applied to.
    pub request_id: String,
    /// When it happened.
    pub time: SystemTime,
    /// Who did it (operator name, `admin-api`, `retention`).
    pub actor: String,
    /// Why, as the operator stated it.
    pub reason: Option<String>,
    /// The user pseudonym concerned, if any (never a raw user ID).
    pub user_pseudonym: Option<String>,
}

/// Which of the three OTLP signals a payload carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Signal {
    /// `ExportTraceServiceRequest`, `/v1/traces`.
    Traces,
    /// `ExportLogsServiceRequest`, `/v1/logs`.
    Logs,
    /// `ExportMetricsServiceRequest`, `/v1/metrics`.
    Metrics,
}

impl Signal {
    /// All signals, in a fixed order.
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Logs, Signal::Metrics];

    /// `traces`, `logs`, `metrics`: the URL path segment, file and directory name.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Logs => "logs",
            Signal::Metrics => "metrics",
        }
    }
}

/// How a payload is encoded on the wire and in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// `application/x-protobuf` (OTLP default).
    Protobuf,
    /// `application/json` (OTLP/JSON).
    Json,
}

impl Encoding {
    /// The `Content-Type` (exactly; Phoenix refuses parameters, otel-genai.md §7).
    pub fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => "application/x-protobuf",
            Encoding::Json => "application/json",
        }
    }
}

/// The OTLP resource veil reports: `service.name`, `service.version`, `host.name` and
/// `OTEL_RESOURCE_ATTRIBUTES`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceInfo {
    /// Resource attributes, in order, keys unique.
    pub attributes: Vec<(String, String)>,
}

impl ResourceInfo {
    /// Builds the resource from environment variables read through `env`
    /// (`OTEL_SERVICE_NAME` wins over `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, which
    /// wins over the default `veil`), and the host name `host`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>, host: Option<String>) -> Self {
        let mut attrs: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: String| {
            if let Some(slot) = attrs.iter_mut().find(|(key, _)| key == k) {
                slot.1 = v;
            } else {
                attrs.push((k.to_string(), v));
            }
        };
        set("service.name", "veil".to_string());
        set("service.version", env!("CARGO_PKG_VERSION").to_string());
        if let Some(h) = host.filter(|h| !h.is_empty()) {
            set("host.name", h);
        }
        if let Some(list) = env("OTEL_RESOURCE_ATTRIBUTES") {
            for (k, v) in parse_key_values(&list) {
                set(&k, v);
            }
        }
        if let Some(name) = env("OTEL_SERVICE_NAME").filter(|s| !s.trim().is_empty()) {
            set("service.name", name.trim().to_string());
        }
        ResourceInfo { attributes: attrs }
    }

    fn to_proto(&self) -> Resource {
        Resource {
            attributes: self
                .attributes
                .iter()
                .map(|(k, v)| kv(k, str_value(v)))
                .collect(),
            dropped_attributes_count: 0,
            entity_refs: Vec::new(),
        }
    }
}

/// Parses `k1=v1,k2=v2` (W3C baggage-like, values percent-decoded), as
/// `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_EXPORTER_OTLP_HEADERS` are written. Malformed
/// entries are skipped.
pub fn parse_key_values(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|item| {
            let (k, v) = item.split_once('=')?;
            let k = percent_decode(k.trim());
            if k.is_empty() {
                return None;
            }
            Some((k, percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// === attribute helpers ===

fn kv(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(value),
        key_strindex: 0,
    }
}

fn str_value(s: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s.to_string())),
    }
}

fn int_value(i: i64) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::IntValue(i)),
    }
}

fn double_value(d: f64) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::DoubleValue(d)),
    }
}

fn bool_value(b: bool) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::BoolValue(b)),
    }
}

fn str_array(items: &[String]) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::ArrayValue(ArrayValue {
            values: items.iter().map(|s| str_value(s)).collect(),
        })),
    }
}

fn u64_int(n: u64) -> AnyValue {
    int_value(i64::try_from(n).unwrap_or(i64::MAX))
}

/// Converts JSON to a structured `AnyValue` (objects → kvlist, arrays → array), as the log
/// event's body must be structured (otel-genai.md §1.2).
pub fn json_to_any(v: &serde_json::Value) -> AnyValue {
    use serde_json::Value as J;
    let value = match v {
        J::Null => None,
        J::Bool(b) => Some(any_value::Value::BoolValue(*b)),
        J::Number(n) => Some(match n.as_i64() {
            Some(i) => any_value::Value::IntValue(i),
            None => any_value::Value::DoubleValue(n.as_f64().unwrap_or(0.0)),
        }),
        J::String(s) => Some(any_value::Value::StringValue(s.clone())),
        J::Array(a) => Some(any_value::Value::ArrayValue(ArrayValue {
            values: a.iter().map(json_to_any).collect(),
        })),
        J::Object(o) => Some(any_value::Value::KvlistValue(KeyValueList {
            values: o.iter().map(|(k, v)| kv(k, json_to_any(v))).collect(),
        })),
    };
    AnyValue { value }
}

/// A request parameter as an attribute value: scalars and scalar arrays as they are,
/// anything else as a JSON string.
fn param_value(v: &serde_json::Value) -> Option<AnyValue> {
    use serde_json::Value as J;
    match v {
        J::Null => None,
        J::Bool(_) | J::Number(_) | J::String(_) => Some(json_to_any(v)),
        J::Array(a) if a.iter().all(|x| matches!(x, J::String(_))) => Some(json_to_any(v)),
        J::Array(a) if a.iter().all(|x| x.is_number()) => Some(json_to_any(v)),
        _ => Some(str_value(&v.to_string())),
    }
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn random_nonzero<const N: usize>() -> [u8; N] {
    // Bounded: a zero draw has probability 2^-64 or less; the counter only guards the loop.
    for _ in 0..16 {
        let id: [u8; N] = rand::random();
        if id.iter().any(|b| *b != 0) {
            return id;
        }
    }
    let mut id = [0u8; N];
    id[N - 1] = 1;
    id
}

/// The span identity of one exchange: its trace, its own ID, its parent and flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanIds {
    /// 16-byte trace ID.
    pub trace_id: [u8; 16],
    /// veil's 8-byte span ID (random).
    pub span_id: [u8; 8],
    /// The app's span, when it sent a `traceparent`.
    pub parent_span_id: Option<[u8; 8]>,
    /// `Span.flags`: W3C flags in bits 0-7, plus 0x300 under a remote parent.
    pub flags: u32,
    /// The incoming `tracestate`.
    pub trace_state: String,
}

impl SpanIds {
    /// The child of `record.trace_parent`, or a new random trace (flags `03`: sampled,
    /// random trace ID; otel-genai.md §3).
    pub fn for_record(record: &Record) -> Self {
        match &record.trace_parent {
            Some(tp) => SpanIds {
                trace_id: tp.trace_id,
                span_id: random_nonzero(),
                parent_span_id: Some(tp.parent_span_id),
                flags: u32::from(tp.flags) | FLAGS_PARENT_REMOTE,
                trace_state: tp.trace_state.clone().unwrap_or_default(),
            },
            None => SpanIds {
                trace_id: random_nonzero(),
                span_id: random_nonzero(),
                parent_span_id: None,
                flags: 0x03,
                trace_state: String::new(),
            },
        }
    }
}

/// True when the record describes a failed exchange (status ERROR on the span).
pub fn is_failed(r: &Record) -> bool {
    r.error_type.is_some() || r.status.is_some_and(|s| s >= 400) || r.outcome == "upstream_failed"
}

/// `error.type` for a failed record: its own, else the HTTP status, else `_OTHER`.
fn error_type(r: &Record) -> Option<String> {
    if !is_failed(r) {
        return None;
    }
    Some(
        r.error_type
            .clone()
            .or_else(|| r.status.filter(|s| *s >= 400).map(|s| s.to_string()))
            .unwrap_or_else(|| "_OTHER".to_string()),
    )
}

/// The span name: `{operation} {model}`, or the operation alone without a model.
pub fn span_name(r: &Record) -> String {
    match &r.request_model {
        Some(m) if !m.is_empty() => format!("{} {m}", r.operation),
        _ => r.operation.clone(),
    }
}

/// Attributes common to the span and the log event (no content).
fn record_attributes(r: &Record) -> Vec<KeyValue> {
    let mut a = Vec::with_capacity(40);
    a.push(kv("gen_ai.operation.name", str_value(&r.operation)));
    a.push(kv("gen_ai.provider.name", str_value(&r.provider)));
    if let Some(m) = &r.request_model {
        a.push(kv("gen_ai.request.model", str_value(m)));
    }
    a.push(kv("server.address", str_value(&r.server_address)));
    a.push(kv("server.port", int_value(i64::from(r.server_port))));
    if let Some(e) = error_type(r) {
        a.push(kv("error.type", str_value(&e)));
    }
    if let Some(s) = r.status {
        a.push(kv("http.response.status_code", int_value(i64::from(s))));
    }
    if let Some(v) = &r.conversation_id {
        a.push(kv("gen_ai.conversation.id", str_value(v)));
    }
    if r.stream {
        a.push(kv("gen_ai.request.stream", bool_value(true)));
    }
    for (k, v) in &r.request_params {
        let name = if k.starts_with("gen_ai.") {
            k.clone()
        } else if GENAI_PARAMS.contains(&k.as_str()) {
            format!("gen_ai.request.{k}")
        } else {
            format!("veil.request.{k}")
        };
        if let Some(val) = param_value(v) {
            a.push(kv(&name, val));
        }
    }
    if let Some(v) = &r.response_id {
        a.push(kv("gen_ai.response.id", str_value(v)));
    }
    if let Some(v) = &r.response_model {
        a.push(kv("gen_ai.response.model", str_value(v)));
    }
    if !r.finish_reasons.is_empty() {
        a.push(kv(
            "gen_ai.response.finish_reasons",
            str_array(&r.finish_reasons),
        ));
    }
    if let Some(t) = r.time_to_first_chunk {
        a.push(kv(
            "gen_ai.response.time_to_first_chunk",
            double_value(t.as_secs_f64()),
        ));
    }
    let u = &r.usage;
    for (name, v) in [
        ("gen_ai.usage.input_tokens", u.input_tokens),
        ("gen_ai.usage.output_tokens", u.output_tokens),
        ("gen_ai.usage.cache_read.input_tokens", u.cache_read_tokens),
        (
            "gen_ai.usage.cache_creation.input_tokens",
            u.cache_creation_tokens,
        ),
        ("gen_ai.usage.reasoning.output_tokens", u.reasoning_tokens),
    ] {
        if let Some(n) = v {
            a.push(kv(name, u64_int(n)));
        }
    }
    if let Some(p) = &r.user_pseudonym {
        a.push(kv("user.id", str_value(p)));
        a.push(kv("enduser.pseudo.id", str_value(p)));
    }
    a.push(kv("veil.request.id", str_value(&r.request_id)));
    if let Some(f) = &r.feature {
        a.push(kv("veil.feature", str_value(f)));
    }
    a.push(kv("veil.rules.digest", str_value(&r.rules_digest)));
    a.push(kv(
        "veil.redaction.input.count",
        u64_int(r.redactions_input),
    ));
    a.push(kv(
        "veil.redaction.output.count",
        u64_int(r.redactions_output),
    ));
    if !r.redactions.is_empty() {
        let types: Vec<String> = r.redactions.keys().cloned().collect();
        a.push(kv("veil.redaction.types", str_array(&types)));
        for (detector, n) in &r.redactions {
            let key = format!("veil.redaction.count.{}", detector.to_ascii_lowercase());
            a.push(kv(&key, u64_int(*n)));
        }
    }
    if let Some(c) = r.cost_usd {
        a.push(kv("veil.cost.usd", double_value(c)));
        // Langfuse reads the cost from here (otel-genai.md §5).
        a.push(kv("gen_ai.usage.cost", double_value(c)));
    }
    a.push(kv("veil.truncated", bool_value(r.truncated)));
    a.push(kv("veil.aborted", bool_value(r.aborted)));
    if let Some(reason) = r.content_dropped {
        a.push(kv("veil.content_dropped", str_value(reason)));
    }
    if let Some(e) = &r.parse_error {
        a.push(kv("veil.parse_error", str_value(e)));
    }
    if let Some(fp) = &r.api_key_fingerprint {
        a.push(kv("veil.api_key.fingerprint", str_value(fp)));
    }
    a.push(kv("veil.outcome", str_value(&r.outcome)));
    if !r.tool_names.is_empty() {
        a.push(kv("veil.tool.names", str_array(&r.tool_names)));
    }
    for (prefix, headers) in [
        ("http.request.header.", &r.request_headers),
        ("http.response.header.", &r.response_headers),
    ] {
        for (name, value) in headers {
            let key = format!("{prefix}{}", name.to_ascii_lowercase());
            a.push(kv(&key, str_array(std::slice::from_ref(value))));
        }
    }
    a.push(kv("http.request.body.size", u64_int(r.request_bytes)));
    a.push(kv("http.response.body.size", u64_int(r.response_bytes)));
    a
}

/// Content fields present in the record, by attribute name.
fn content(r: &Record) -> Vec<(&'static str, &serde_json::Value)> {
    let mut c = Vec::new();
    if let Some(v) = &r.system_instructions {
        c.push(("gen_ai.system_instructions", v));
    }
    if let Some(v) = &r.input_messages {
        c.push(("gen_ai.input.messages", v));
    }
    if let Some(v) = &r.output_messages {
        c.push(("gen_ai.output.messages", v));
    }
    c
}

/// The CLIENT span of one record.
pub fn record_span(r: &Record, ids: &SpanIds) -> Span {
    span_with(r, ids, record_attributes(r))
}

fn span_with(r: &Record, ids: &SpanIds, mut attributes: Vec<KeyValue>) -> Span {
    for (name, v) in content(r) {
        // On spans, content is a JSON string (otel-genai.md §1.2).
        attributes.push(kv(name, str_value(&v.to_string())));
    }
    let start = unix_nanos(r.start);
    let end = unix_nanos(r.start + r.duration);
    let status = if is_failed(r) {
        let message = match (r.status, &r.error_type) {
            (Some(s), Some(e)) => format!("upstream answered {s} ({e})"),
            (Some(s), None) => format!("upstream answered {s}"),
            (None, Some(e)) => format!("exchange failed: {e} ({})", r.outcome),
            (None, None) => format!("exchange failed ({})", r.outcome),
        };
        Some(Status { message, code: 2 })
    } else {
        None
    };
    Span {
        trace_id: ids.trace_id.to_vec(),
        span_id: ids.span_id.to_vec(),
        trace_state: ids.trace_state.clone(),
        parent_span_id: ids.parent_span_id.map(|p| p.to_vec()).unwrap_or_default(),
        flags: ids.flags,
        name: span_name(r),
        kind: span::SpanKind::Client as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        attributes,
        dropped_attributes_count: 0,
        events: Vec::new(),
        dropped_events_count: 0,
        links: Vec::new(),
        dropped_links_count: 0,
        status,
    }
}

/// The log event of one record: the span's attributes, the redacted content as a structured
/// kvlist body, correlated to the span.
pub fn record_log(r: &Record, ids: &SpanIds) -> LogRecord {
    log_with(r, ids, record_attributes(r))
}

fn log_with(r: &Record, ids: &SpanIds, attributes: Vec<KeyValue>) -> LogRecord {
    let body = KeyValueList {
        values: content(r)
            .into_iter()
            .map(|(name, v)| kv(name, json_to_any(v)))
            .collect(),
    };
    let failed = is_failed(r);
    let end = unix_nanos(r.start + r.duration);
    LogRecord {
        time_unix_nano: end,
        observed_time_unix_nano: end,
        severity_number: if failed { 17 } else { 9 },
        severity_text: if failed { "ERROR" } else { "INFO" }.to_string(),
        body: Some(AnyValue {
            value: Some(any_value::Value::KvlistValue(body)),
        }),
        attributes,
        dropped_attributes_count: 0,
        flags: ids.flags & 0xff,
        trace_id: ids.trace_id.to_vec(),
        span_id: ids.span_id.to_vec(),
        event_name: EVENT_NAME.to_string(),
    }
}

/// The log record of one audit event (`event_name` = `veil.audit.<kind>`).
pub fn audit_log(e: &AuditEvent) -> LogRecord {
    let t = unix_nanos(e.time);
    let mut attributes = vec![
        kv("veil.audit.kind", str_value(&e.kind)),
        kv("veil.request.id", str_value(&e.request_id)),
        kv("veil.audit.actor", str_value(&e.actor)),
    ];
    if let Some(r) = &e.reason {
        attributes.push(kv("veil.audit.reason", str_value(r)));
    }
    if let Some(p) = &e.user_pseudonym {
        attributes.push(kv("user.id", str_value(p)));
        attributes.push(kv("enduser.pseudo.id", str_value(p)));
    }
    LogRecord {
        time_unix_nano: t,
        observed_time_unix_nano: unix_nanos(SystemTime::now()),
        severity_number: 9,
        severity_text: "INFO".to_string(),
        body: Some(str_value(&format!(
            "{} {} by {}",
            e.kind, e.request_id, e.actor
        ))),
        attributes,
        dropped_attributes_count: 0,
        flags: 0,
        trace_id: Vec::new(),
        span_id: Vec::new(),
        event_name: format!("veil.audit.{}", e.kind),
    }
}

fn series_base(r: &Record) -> SeriesKey {
    let mut k: SeriesKey = vec![
        (
            "gen_ai.operation.name",
            SeriesValue::Str(r.operation.clone()),
        ),
        ("gen_ai.provider.name", SeriesValue::Str(r.provider.clone())),
        ("server.address", SeriesValue::Str(r.server_address.clone())),
        ("server.port", SeriesValue::Int(i64::from(r.server_port))),
    ];
    if let Some(m) = &r.request_model {
        k.push(("gen_ai.request.model", SeriesValue::Str(m.clone())));
    }
    if let Some(m) = &r.response_model {
        k.push(("gen_ai.response.model", SeriesValue::Str(m.clone())));
    }
    k
}

/// Adds one record's points to the GenAI client histograms (otel-genai.md §1.3).
pub fn observe(h: &mut Histograms, r: &Record) {
    let base = series_base(r);
    for (ty, n) in [
        ("input", r.usage.input_tokens),
        ("output", r.usage.output_tokens),
    ] {
        // Without counts, MUST NOT report.
        if let Some(n) = n {
            let mut k = base.clone();
            k.push(("gen_ai.token.type", SeriesValue::Str(ty.to_string())));
            k.sort();
            h.record("gen_ai.client.token.usage", TOKEN_BUCKETS, k, n as f64);
        }
    }
    let mut k = base.clone();
    if let Some(e) = error_type(r) {
        k.push(("error.type", SeriesValue::Str(e)));
    }
    k.sort();
    h.record(
        "gen_ai.client.operation.duration",
        DURATION_BUCKETS,
        k,
        r.duration.as_secs_f64(),
    );
    if let Some(t) = r.time_to_first_chunk {
        let mut k = base;
        k.sort();
        h.record(
            "gen_ai.client.operation.time_to_first_chunk",
            DURATION_BUCKETS,
            k,
            t.as_secs_f64(),
        );
    }
}

fn metric_meta(name: &str) -> (&'static str, &'static str) {
    match name {
        "gen_ai.client.token.usage" => ("{token}", "Number of input and output tokens used."),
        "gen_ai.client.operation.duration" => ("s", "GenAI operation duration."),
        "gen_ai.client.operation.time_to_first_chunk" => {
            ("s", "Time to receive the first chunk of a response.")
        }
        _ => ("", ""),
    }
}

fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        attributes: Vec::new(),
        dropped_attributes_count: 0,
    }
}

/// A batch of finished spans and log records, ready to become OTLP requests.
#[derive(Debug, Default)]
pub struct Batch {
    /// Spans, one per record.
    pub spans: Vec<Span>,
    /// Log records: one per record, one per audit event.
    pub logs: Vec<LogRecord>,
}

impl Batch {
    /// Adds one record's span and log event.
    pub fn push_record(&mut self, r: &Record) {
        let ids = SpanIds::for_record(r);
        // Built once: the log event carries the span's attributes.
        let attributes = record_attributes(r);
        self.spans.push(span_with(r, &ids, attributes.clone()));
        self.logs.push(log_with(r, &ids, attributes));
    }

    /// Number of items (spans plus logs).
    pub fn len(&self) -> usize {
        self.spans.len() + self.logs.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty() && self.logs.is_empty()
    }

    /// The traces request, `None` when there are no spans (no empty envelopes).
    pub fn traces_request(&mut self, res: &ResourceInfo) -> Option<ExportTraceServiceRequest> {
        if self.spans.is_empty() {
            return None;
        }
        Some(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(res.to_proto()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope()),
                    spans: std::mem::take(&mut self.spans),
                    schema_url: SCHEMA_URL.to_string(),
                }],
                schema_url: String::new(),
            }],
        })
    }

    /// The logs request, `None` when there are no logs.
    pub fn logs_request(&mut self, res: &ResourceInfo) -> Option<ExportLogsServiceRequest> {
        if self.logs.is_empty() {
            return None;
        }
        Some(ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(res.to_proto()),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope()),
                    log_records: std::mem::take(&mut self.logs),
                    schema_url: SCHEMA_URL.to_string(),
                }],
                schema_url: String::new(),
            }],
        })
    }
}

fn series_attrs(k: &SeriesKey) -> Vec<KeyValue> {
    k.iter()
        .map(|(name, v)| match v {
            SeriesValue::Str(s) => kv(name, str_value(s)),
            SeriesValue::Int(i) => kv(name, int_value(*i)),
            SeriesValue::Bool(b) => kv(name, bool_value(*b)),
        })
        .collect()
}

fn sum_metric(
    name: &str,
    desc: &str,
    unit: &str,
    v: u64,
    monotonic: bool,
    start: u64,
    now: u64,
) -> Metric {
    let point = NumberDataPoint {
        attributes: Vec::new(),
        start_time_unix_nano: start,
        time_unix_nano: now,
        exemplars: Vec::new(),
        flags: 0,
        value: Some(number_data_point::Value::AsInt(
            i64::try_from(v).unwrap_or(i64::MAX),
        )),
    };
    let data = if monotonic {
        metric::Data::Sum(pm::Sum {
            data_points: vec![point],
            aggregation_temporality: 2,
            is_monotonic: true,
        })
    } else {
        metric::Data::Gauge(pm::Gauge {
            data_points: vec![point],
        })
    };
    Metric {
        name: name.to_string(),
        description: desc.to_string(),
        unit: unit.to_string(),
        metadata: Vec::new(),
        data: Some(data),
    }
}

/// The metrics request: cumulative histograms since `start` plus veil's counters.
pub fn metrics_request(
    res: &ResourceInfo,
    h: &Histograms,
    m: &Metrics,
    start: SystemTime,
    now: SystemTime,
) -> ExportMetricsServiceRequest {
    let (start, now) = (unix_nanos(start), unix_nanos(now));
    let mut metrics = Vec::new();
    for (name, series) in &h.series {
        let (unit, desc) = metric_meta(name);
        let points = series
            .iter()
            .map(|(k, hist)| HistogramDataPoint {
                attributes: series_attrs(k),
                start_time_unix_nano: start,
                time_unix_nano: now,
                count: hist.count,
                sum: Some(hist.sum),
                bucket_counts: hist.counts.clone(),
                explicit_bounds: hist.bounds.to_vec(),
                exemplars: Vec::new(),
                flags: 0,
                min: Some(hist.min),
                max: Some(hist.max),
            })
            .collect();
        metrics.push(Metric {
            name: name.to_string(),
            description: desc.to_string(),
            unit: unit.to_string(),
            metadata: Vec::new(),
            data: Some(metric::Data::Histogram(pm::Histogram {
                data_points: points,
                aggregation_temporality: 2,
            })),
        });
    }
    let counters: [(&str, &str, &str, u64, bool); 9] = [
        (
            "veil.export.batches.delivered",
            "Batches the collector accepted.",
            "{batch}",
            m.batches_delivered.get(),
            true,
        ),
        (
            "veil.exchanges",
            "Exchanges recorded.",
            "{exchange}",
            m.exchanges.get(),
            true,
        ),
        (
            "veil.exchanges.content_dropped",
            "Exchanges recorded without their content: redaction exceeded its budget.",
            "{exchange}",
            m.content_dropped.get(),
            true,
        ),
        (
            "veil.export.failures",
            "Failed export attempts.",
            "{attempt}",
            m.export_failures.get(),
            true,
        ),
        (
            "veil.export.batches.rejected",
            "Batches given up after a non-retryable answer.",
            "{batch}",
            m.batches_rejected.get(),
            true,
        ),
        (
            "veil.spool.batches.dropped",
            "Batches dropped because the spool was full.",
            "{batch}",
            m.spool_batches_dropped.get(),
            true,
        ),
        (
            "veil.spool.bytes.dropped",
            "Bytes dropped because the spool was full.",
            "By",
            m.spool_bytes_dropped.get(),
            true,
        ),
        (
            "veil.spool.bytes",
            "Bytes waiting in the spool.",
            "By",
            m.spool_bytes.get(),
            false,
        ),
        (
            "veil.audit.events",
            "Audit events recorded.",
            "{event}",
            m.audit_events.get(),
            true,
        ),
    ];
    for (name, desc, unit, v, mono) in counters {
        metrics.push(sum_metric(name, desc, unit, v, mono, start, now));
    }
    // Every place an exchange can be lost, as one metric: operators sum it or split it by
    // `veil.drop.reason` (the recording queue's drops once went unreported here).
    let q = m.recording_queue.as_deref();
    let get = |c: Option<&crate::counters::Counter>| c.map_or(0, |c| c.get());
    let mut dropped = sum_metric(
        "veil.exchanges.dropped",
        "Exchanges that could not be recorded, by where they were lost.",
        "{exchange}",
        0,
        true,
        start,
        now,
    );
    if let Some(metric::Data::Sum(sum)) = &mut dropped.data {
        let template = sum.data_points.pop().expect("invariant: one point");
        for (reason, v) in [
            ("recording_queue_full", get(q.map(|q| &q.dropped_full))),
            ("recording_queue_bytes", get(q.map(|q| &q.dropped_bytes))),
            ("recording_stopped", get(q.map(|q| &q.dropped_closed))),
            ("export_queue_full", m.exchanges_dropped.get()),
        ] {
            let mut p = template.clone();
            p.attributes = vec![kv("veil.drop.reason", str_value(reason))];
            p.value = Some(number_data_point::Value::AsInt(
                i64::try_from(v).unwrap_or(i64::MAX),
            ));
            sum.data_points.push(p);
        }
    }
    metrics.push(dropped);
    if let Some(h) = &m.health {
        metrics.push(sum_metric(
            "veil.recording.degradations",
            "Times recording went from healthy to degraded (disk full, write failures).",
            "{event}",
            h.degradations.get(),
            true,
            start,
            now,
        ));
        metrics.push(sum_metric(
            "veil.recording.degraded",
            "1 while recording is degraded (see /healthz for why), else 0.",
            "1",
            u64::from(!h.is_ok()),
            false,
            start,
            now,
        ));
    }
    metrics.push(sum_metric(
        "veil.exchanges.refused",
        "Requests refused with 503 because they could not be recorded (audit = required).",
        "{request}",
        get(q.map(|q| &q.refused)),
        true,
        start,
        now,
    ));
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(res.to_proto()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics,
                schema_url: SCHEMA_URL.to_string(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// Encodes a request in `enc`. JSON through the crate's serde (hex IDs, string int64s).
pub fn encode<M: Message + serde::Serialize>(msg: &M, enc: Encoding) -> Vec<u8> {
    match enc {
        Encoding::Protobuf => msg.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(msg).expect("invariant: OTLP messages serialize"),
    }
}
