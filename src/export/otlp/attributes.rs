//! # OTLP attributes: `Record` → the `KeyValue` list shared by its span and log event.
//!
//! First stage of the OTLP encoder: names every field of a [`Record`] after the GenAI
//! semantic conventions (`gen_ai.*`, `server.*`, `http.*`, otel-genai.md §1) or veil's own
//! `veil.*`, and converts values (JSON → `AnyValue`). [`span`](super::span) and
//! [`log`](super::log) consume the list; [`metrics`](super::metrics) reuses `error.type`.
//!
//! Owns: the attribute names and value helpers. Never adds content (the redacted messages):
//! [`content`] lists them for the span and log stages, which place them differently.

use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, KeyValue, KeyValueList, any_value,
};

use crate::exchange::OutcomeKind;
use crate::record::Record;

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

pub(super) fn kv(key: &str, value: AnyValue) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(value),
        key_strindex: 0,
    }
}

pub(super) fn str_value(s: &str) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(s.to_string())),
    }
}

pub(super) fn int_value(i: i64) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::IntValue(i)),
    }
}

pub(super) fn double_value(d: f64) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::DoubleValue(d)),
    }
}

pub(super) fn bool_value(b: bool) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::BoolValue(b)),
    }
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

/// True when the record describes a failed exchange (status ERROR on the span).
pub fn is_failed(r: &Record) -> bool {
    r.error_type.is_some()
        || r.status.is_some_and(|s| s >= 400)
        || r.outcome == OutcomeKind::UpstreamFailed
}

/// `error.type` for a failed record: its own, else the HTTP status, else `_OTHER`.
pub fn error_type(r: &Record) -> Option<String> {
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

/// An attribute's name: `prefix` then `name`, the latter ASCII-lowercased when `lower` (an
/// HTTP header or a detector name under its `http.*.header.` or `veil.redaction.count.`
/// prefix). Kept in parts so the protobuf writer needs no joined `String`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Key<'a> {
    pub prefix: &'static str,
    pub name: &'a str,
    pub lower: bool,
}

impl Key<'_> {
    /// The whole name, as the attribute list carries it.
    pub fn joined(&self) -> String {
        let mut k = String::with_capacity(self.prefix.len() + self.name.len());
        k.push_str(self.prefix);
        if self.lower {
            k.extend(self.name.chars().map(|c| c.to_ascii_lowercase()));
        } else {
            k.push_str(self.name);
        }
        k
    }
}

fn name(name: &'static str) -> Key<'static> {
    Key {
        prefix: name,
        name: "",
        lower: false,
    }
}

/// The strings of an array attribute, borrowed from the record.
#[derive(Debug, Clone, Copy)]
pub(super) enum Strs<'a> {
    /// A list of strings.
    List(&'a [String]),
    /// The names of a map (the detectors that counted).
    Keys(&'a std::collections::BTreeMap<String, u64>),
}

impl<'a> Strs<'a> {
    /// Each string, in order.
    pub fn each(self, mut f: impl FnMut(&'a str)) {
        match self {
            Strs::List(l) => l.iter().for_each(|s| f(s)),
            Strs::Keys(m) => m.keys().for_each(|s| f(s)),
        }
    }
}

/// An attribute's value, borrowed from the record where it can be.
#[derive(Debug, Clone)]
pub(super) enum Val<'a> {
    Str(&'a str),
    /// A string made for the attribute (`error.type` from a status, a parameter as JSON).
    String(String),
    Int(i64),
    Double(f64),
    Bool(bool),
    Strs(Strs<'a>),
    /// A JSON value as [`json_to_any`] converts it.
    Json(&'a serde_json::Value),
}

impl Val<'_> {
    /// The `AnyValue` the attribute list carries.
    pub fn to_any(&self) -> AnyValue {
        match self {
            Val::Str(s) => str_value(s),
            Val::String(s) => AnyValue {
                value: Some(any_value::Value::StringValue(s.clone())),
            },
            Val::Int(i) => int_value(*i),
            Val::Double(d) => double_value(*d),
            Val::Bool(b) => bool_value(*b),
            Val::Strs(items) => {
                let mut values = Vec::new();
                items.each(|s| values.push(str_value(s)));
                AnyValue {
                    value: Some(any_value::Value::ArrayValue(ArrayValue { values })),
                }
            }
            Val::Json(v) => json_to_any(v),
        }
    }
}

fn u64_val<'a>(n: u64) -> Val<'a> {
    Val::Int(i64::try_from(n).unwrap_or(i64::MAX))
}

/// A request parameter as an attribute value: scalars and scalar arrays as they are,
/// anything else as a JSON string; `None` for JSON null.
fn param_val(v: &serde_json::Value) -> Option<Val<'_>> {
    use serde_json::Value as J;
    match v {
        J::Null => None,
        J::Bool(_) | J::Number(_) | J::String(_) => Some(Val::Json(v)),
        J::Array(a) if a.iter().all(|x| matches!(x, J::String(_))) => Some(Val::Json(v)),
        J::Array(a) if a.iter().all(|x| x.is_number()) => Some(Val::Json(v)),
        _ => Some(Val::String(v.to_string())),
    }
}

/// Attributes common to the span and the log event (no content).
pub(super) fn record_attributes(r: &Record) -> Vec<KeyValue> {
    let mut a = Vec::with_capacity(40);
    each_attribute(r, |k, v| {
        a.push(KeyValue {
            key: k.joined(),
            value: Some(v.to_any()),
            key_strindex: 0,
        })
    });
    a
}

/// Calls `emit` with each attribute common to the span and the log event (no content), in
/// the order the attribute list has them: the one naming of a record's fields, shared by the
/// attribute list ([`record_attributes`]) and the protobuf writer (`wire`).
pub(super) fn each_attribute<'a>(r: &'a Record, mut emit: impl FnMut(Key<'a>, Val<'a>)) {
    emit(
        name("gen_ai.operation.name"),
        Val::Str(r.operation.as_str()),
    );
    emit(name("gen_ai.provider.name"), Val::Str(r.provider.as_str()));
    if let Some(m) = &r.request_model {
        emit(name("gen_ai.request.model"), Val::Str(m));
    }
    emit(name("server.address"), Val::Str(&r.server_address));
    emit(name("server.port"), Val::Int(i64::from(r.server_port)));
    if let Some(e) = error_type(r) {
        emit(name("error.type"), Val::String(e));
    }
    if let Some(s) = r.status {
        emit(name("http.response.status_code"), Val::Int(i64::from(s)));
    }
    if let Some(v) = &r.conversation_id {
        emit(name("gen_ai.conversation.id"), Val::Str(v));
    }
    if r.stream {
        emit(name("gen_ai.request.stream"), Val::Bool(true));
    }
    for (k, v) in &r.request_params {
        let prefix = if k.starts_with("gen_ai.") {
            ""
        } else if GENAI_PARAMS.contains(&k.as_str()) {
            "gen_ai.request."
        } else {
            "veil.request."
        };
        if let Some(val) = param_val(v) {
            let key = Key {
                prefix,
                name: k,
                lower: false,
            };
            emit(key, val);
        }
    }
    if let Some(v) = &r.response_id {
        emit(name("gen_ai.response.id"), Val::Str(v));
    }
    if let Some(v) = &r.response_model {
        emit(name("gen_ai.response.model"), Val::Str(v));
    }
    if !r.finish_reasons.is_empty() {
        emit(
            name("gen_ai.response.finish_reasons"),
            Val::Strs(Strs::List(&r.finish_reasons)),
        );
    }
    if let Some(t) = r.time_to_first_chunk {
        emit(
            name("gen_ai.response.time_to_first_chunk"),
            Val::Double(t.as_secs_f64()),
        );
    }
    let u = &r.usage;
    for (label, v) in [
        ("gen_ai.usage.input_tokens", u.input_tokens),
        ("gen_ai.usage.output_tokens", u.output_tokens),
        ("gen_ai.usage.cache_read.input_tokens", u.cache_read_tokens),
        (
            "gen_ai.usage.cache_creation.input_tokens",
            u.cache_creation_tokens,
        ),
        ("gen_ai.usage.reasoning.output_tokens", u.reasoning_tokens),
        // Not in the GenAI registry: the audio share of the counts above (Realtime).
        ("veil.usage.input_audio_tokens", u.input_audio_tokens),
        ("veil.usage.output_audio_tokens", u.output_audio_tokens),
        (
            "veil.usage.cache_read.input_audio_tokens",
            u.cache_read_audio_tokens,
        ),
    ] {
        if let Some(n) = v {
            emit(name(label), u64_val(n));
        }
    }
    if let Some(p) = &r.user_pseudonym {
        emit(name("user.id"), Val::Str(p.as_str()));
        emit(name("enduser.pseudo.id"), Val::Str(p.as_str()));
    }
    emit(name("veil.request.id"), Val::Str(&r.request_id));
    if let Some(f) = &r.feature {
        emit(name("veil.feature"), Val::Str(f));
    }
    emit(name("veil.rules.digest"), Val::Str(&r.rules_digest));
    emit(
        name("veil.redaction.input.count"),
        u64_val(r.redactions_input),
    );
    emit(
        name("veil.redaction.output.count"),
        u64_val(r.redactions_output),
    );
    if !r.redactions.is_empty() {
        emit(
            name("veil.redaction.types"),
            Val::Strs(Strs::Keys(&r.redactions)),
        );
        for (detector, n) in &r.redactions {
            let key = Key {
                prefix: "veil.redaction.count.",
                name: detector,
                lower: true,
            };
            emit(key, u64_val(*n));
        }
    }
    if let Some(c) = r.cost_usd {
        emit(name("veil.cost.usd"), Val::Double(c));
        // Langfuse reads the cost from here (otel-genai.md §5).
        emit(name("gen_ai.usage.cost"), Val::Double(c));
    }
    emit(name("veil.truncated"), Val::Bool(r.truncated));
    emit(name("veil.aborted"), Val::Bool(r.aborted));
    if let Some(reason) = r.content_dropped {
        emit(name("veil.content_dropped"), Val::Str(reason));
    }
    if let Some(e) = &r.parse_error {
        emit(name("veil.parse_error"), Val::Str(e));
    }
    if let Some(fp) = &r.api_key_fingerprint {
        emit(name("veil.api_key.fingerprint"), Val::Str(fp));
    }
    emit(name("veil.outcome"), Val::Str(r.outcome.as_str()));
    if !r.tool_names.is_empty() {
        emit(
            name("veil.tool.names"),
            Val::Strs(Strs::List(&r.tool_names)),
        );
    }
    for (prefix, headers) in [
        ("http.request.header.", &r.request_headers),
        ("http.response.header.", &r.response_headers),
    ] {
        for (header, value) in headers {
            let key = Key {
                prefix,
                name: header,
                lower: true,
            };
            emit(key, Val::Strs(Strs::List(std::slice::from_ref(value))));
        }
    }
    emit(name("http.request.body.size"), u64_val(r.request_bytes));
    emit(name("http.response.body.size"), u64_val(r.response_bytes));
    if let Some(ws) = r.websocket.as_ref().filter(|w| w.session.is_some()) {
        // One response of a Realtime session: its session's request id, no frame counts.
        if let Some(s) = &ws.session {
            emit(name("veil.websocket.session_id"), Val::Str(s.as_str()));
        }
    } else if let Some(ws) = &r.websocket {
        emit(name("veil.websocket.frames_sent"), u64_val(ws.frames_sent));
        emit(
            name("veil.websocket.frames_received"),
            u64_val(ws.frames_received),
        );
        if let Some(code) = ws.close_code {
            emit(name("veil.websocket.close_code"), u64_val(u64::from(code)));
        }
        if let Some(t) = &ws.realtime {
            for (label, n) in [
                ("veil.realtime.responses", t.responses),
                ("veil.realtime.input_tokens", t.input_tokens),
                ("veil.realtime.output_tokens", t.output_tokens),
                ("veil.realtime.input_audio_bytes", t.input_audio_bytes),
                ("veil.realtime.output_audio_bytes", t.output_audio_bytes),
                ("veil.realtime.events_lost", t.events_lost),
            ] {
                emit(name(label), u64_val(n));
            }
        }
    }
}

/// Content fields present in the record, by attribute name.
pub(super) fn content(r: &Record) -> Vec<(&'static str, &serde_json::Value)> {
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
