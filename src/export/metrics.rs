//! # Metrics: one record's points in the registry's per-exchange series.
//!
//! [`observe`] turns a record into the points of every series metric
//! ([`crate::counters::series::SERIES`]): the GenAI client histograms (otel-genai.md §1.3),
//! requests, cost, tokens, rate limits, retries and veil's added latency. The exporter's
//! batcher calls it once per record, off the hot path, when something reads the series (an
//! OTLP metrics destination or `/metrics`). Both encoders then read the same maps.
//!
//! Owns: which record field becomes which attribute of which series. Never touches a record's
//! content: every attribute is metadata (provider, operation, model, feature, status, outcome,
//! finish reason), and the two an app chooses freely besides the model (feature, model) are
//! capped in number ([`SeriesState::cap`]).

use crate::counters::Counters;
use crate::counters::series::{
    ADDED_LATENCY, COST, OPERATION_DURATION, RATE_LIMITED, REQUESTS, RETRIES, SeriesKey,
    SeriesState, SeriesValue, TIME_PER_OUTPUT_CHUNK, TIME_TO_FIRST_CHUNK, TOKEN_USAGE, TOKENS,
    Text,
};
use crate::record::Record;

use super::otlp::error_type;

/// Finish reasons the providers document (OpenAI `finish_reason`, Anthropic `stop_reason`,
/// Gemini `finishReason`), kept as static text; any other is allocated per record.
const FINISH_REASONS: &[&str] = &[
    "stop",
    "length",
    "tool_calls",
    "content_filter",
    "function_call",
    "end_turn",
    "max_tokens",
    "stop_sequence",
    "tool_use",
    "pause_turn",
    "refusal",
    "STOP",
    "MAX_TOKENS",
    "SAFETY",
];

/// `key` and then `more`, in one allocation (a clone grown by a push reallocated: 1.5 % of
/// the exporter thread at 64 connections, stop 58's profile).
fn with<I>(key: &SeriesKey, more: I) -> SeriesKey
where
    I: IntoIterator<Item = (&'static str, SeriesValue)>,
    I::IntoIter: ExactSizeIterator,
{
    let more = more.into_iter();
    let mut k = Vec::with_capacity(key.len() + more.len());
    k.extend(key.iter().cloned());
    k.extend(more);
    k
}

/// Adds one record's points to the per-exchange series of `counters`.
pub fn observe(counters: &Counters, r: &Record) {
    let mut s = counters.series.lock();
    let capped = Capped::of(&mut s, counters, r);
    // Names veil writes are static; a value from traffic is allocated once per record.
    let fixed = |v: &'static str| SeriesValue::Str(Text::Static(v));
    let str = |v: &str| SeriesValue::Str(v.into());
    let provider = ("gen_ai.provider.name", fixed(r.provider.as_str()));
    let operation = ("gen_ai.operation.name", fixed(r.operation.as_str()));
    let error = error_type(r);

    // The GenAI histograms: the semantic conventions' attributes, plus the feature.
    let mut base: SeriesKey = vec![
        operation.clone(),
        provider.clone(),
        ("server.address", str(&r.server_address)),
        ("server.port", SeriesValue::Int(i64::from(r.server_port))),
        ("veil.feature", capped.feature.clone()),
    ];
    if let Some(m) = &capped.request_model {
        base.push(("gen_ai.request.model", m.clone()));
    }
    if let Some(m) = &capped.response_model {
        base.push(("gen_ai.response.model", m.clone()));
    }
    for (ty, n) in [
        ("input", r.usage.input_tokens),
        ("output", r.usage.output_tokens),
    ] {
        // Without counts, MUST NOT report.
        if let Some(n) = n {
            let k = with(&base, [("gen_ai.token.type", fixed(ty))]);
            s.observe(&TOKEN_USAGE, k, n as f64);
        }
    }
    let k = with(&base, error.as_deref().map(|e| ("error.type", str(e))));
    s.observe(&OPERATION_DURATION, k, r.duration.as_secs_f64());
    if let Some(t) = r.time_to_first_chunk {
        s.observe(&TIME_TO_FIRST_CHUNK, base.clone(), t.as_secs_f64());
    }
    if r.stream {
        s.observe_gaps(&TIME_PER_OUTPUT_CHUNK, base, &r.chunk_gaps);
    }

    // veil's per-exchange counters: fewer attributes, so a dashboard sums them cheaply.
    let model = capped
        .request_model
        .clone()
        .or_else(|| capped.response_model.clone())
        .unwrap_or_else(|| fixed(""));
    let short: SeriesKey = vec![
        provider.clone(),
        ("gen_ai.request.model", model),
        ("veil.feature", capped.feature.clone()),
    ];
    let status_class = match r.status.map(|s| s / 100) {
        Some(1) => "1xx",
        Some(2) => "2xx",
        Some(3) => "3xx",
        Some(4) => "4xx",
        Some(5) => "5xx",
        _ => "none",
    };
    let finish_reason = r.finish_reasons.first().map_or("", String::as_str);
    let k = with(
        &short,
        [
            operation,
            ("http.status_class", fixed(status_class)),
            ("veil.outcome", fixed(r.outcome.as_str())),
            (
                "error.type",
                error.as_deref().map_or_else(|| fixed(""), str),
            ),
            (
                "gen_ai.response.finish_reason",
                match FINISH_REASONS.iter().find(|f| **f == finish_reason) {
                    Some(f) => fixed(f),
                    None => str(finish_reason),
                },
            ),
        ],
    );
    s.add(&REQUESTS, k, 1.0);
    if let Some(cost) = r.cost_usd.filter(|c| c.is_finite() && *c >= 0.0) {
        s.add(&COST, short.clone(), cost);
    }
    for (ty, n) in [
        ("input", r.usage.input_tokens),
        ("output", r.usage.output_tokens),
        ("cache_read", r.usage.cache_read_tokens),
        ("cache_write", r.usage.cache_creation_tokens),
        ("reasoning", r.usage.reasoning_tokens),
    ] {
        if let Some(n) = n {
            let k = with(&short, [("gen_ai.token.type", fixed(ty))]);
            s.add(&TOKENS, k, n as f64);
        }
    }
    if let Some(code @ (429 | 529)) = r.status {
        s.add(
            &RATE_LIMITED,
            vec![
                provider.clone(),
                (
                    "http.response.status_code",
                    SeriesValue::Int(i64::from(code)),
                ),
            ],
            1.0,
        );
    }
    if r.retry {
        s.add(
            &RETRIES,
            vec![provider, ("veil.feature", capped.feature)],
            1.0,
        );
    }
    for (direction, t) in [
        ("request", r.added_latency.0),
        ("response", r.added_latency.1),
    ] {
        if let Some(t) = t {
            s.observe(
                &ADDED_LATENCY,
                vec![("direction", fixed(direction))],
                t.as_secs_f64(),
            );
        }
    }
}

/// The app-chosen values of a record after the cardinality cap.
struct Capped {
    feature: SeriesValue,
    request_model: Option<SeriesValue>,
    response_model: Option<SeriesValue>,
}

impl Capped {
    fn of(s: &mut SeriesState, counters: &Counters, r: &Record) -> Capped {
        let mut cap = |key: &'static str, value: &str, counter: &crate::counters::Counter| {
            let (v, capped) = s.cap(key, value);
            if capped {
                counter.inc();
            }
            v
        };
        let m = &counters.metrics;
        Capped {
            feature: cap(
                "veil.feature",
                r.feature.as_deref().unwrap_or(""),
                &m.capped_feature,
            ),
            request_model: r
                .request_model
                .as_deref()
                .map(|v| cap("gen_ai.request.model", v, &m.capped_request_model)),
            response_model: r
                .response_model
                .as_deref()
                .map(|v| cap("gen_ai.response.model", v, &m.capped_response_model)),
        }
    }
}
