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

pub(super) fn str_array(items: &[String]) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::ArrayValue(ArrayValue {
            values: items.iter().map(|s| str_value(s)).collect(),
        })),
    }
}

pub(super) fn u64_int(n: u64) -> AnyValue {
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
pub(super) fn param_value(v: &serde_json::Value) -> Option<AnyValue> {
    use serde_json::Value as J;
    match v {
        J::Null => None,
        J::Bool(_) | J::Number(_) | J::String(_) => Some(json_to_any(v)),
        J::Array(a) if a.iter().all(|x| matches!(x, J::String(_))) => Some(json_to_any(v)),
        J::Array(a) if a.iter().all(|x| x.is_number()) => Some(json_to_any(v)),
        _ => Some(str_value(&v.to_string())),
    }
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

/// Attributes common to the span and the log event (no content).
pub(super) fn record_attributes(r: &Record) -> Vec<KeyValue> {
    let mut a = Vec::with_capacity(40);
    a.push(kv("gen_ai.operation.name", str_value(r.operation.as_str())));
    a.push(kv("gen_ai.provider.name", str_value(r.provider.as_str())));
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
        // Not in the GenAI registry: the audio share of the counts above (Realtime).
        ("veil.usage.input_audio_tokens", u.input_audio_tokens),
        ("veil.usage.output_audio_tokens", u.output_audio_tokens),
        (
            "veil.usage.cache_read.input_audio_tokens",
            u.cache_read_audio_tokens,
        ),
    ] {
        if let Some(n) = v {
            a.push(kv(name, u64_int(n)));
        }
    }
    if let Some(p) = &r.user_pseudonym {
        a.push(kv("user.id", str_value(p.as_str())));
        a.push(kv("enduser.pseudo.id", str_value(p.as_str())));
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
    a.push(kv("veil.outcome", str_value(r.outcome.as_str())));
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
    if let Some(ws) = r.websocket.as_ref().filter(|w| w.session.is_some()) {
        // One response of a Realtime session: its session's request id, no frame counts.
        if let Some(s) = &ws.session {
            a.push(kv("veil.websocket.session_id", str_value(s.as_str())));
        }
    } else if let Some(ws) = &r.websocket {
        a.push(kv("veil.websocket.frames_sent", u64_int(ws.frames_sent)));
        a.push(kv(
            "veil.websocket.frames_received",
            u64_int(ws.frames_received),
        ));
        if let Some(code) = ws.close_code {
            a.push(kv("veil.websocket.close_code", u64_int(u64::from(code))));
        }
        if let Some(t) = &ws.realtime {
            for (name, n) in [
                ("veil.realtime.responses", t.responses),
                ("veil.realtime.input_tokens", t.input_tokens),
                ("veil.realtime.output_tokens", t.output_tokens),
                ("veil.realtime.input_audio_bytes", t.input_audio_bytes),
                ("veil.realtime.output_audio_bytes", t.output_audio_bytes),
                ("veil.realtime.events_lost", t.events_lost),
            ] {
                a.push(kv(name, u64_int(n)));
            }
        }
    }
    a
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
