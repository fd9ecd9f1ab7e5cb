//! # OTLP span: one CLIENT span per record, child of the app's `traceparent` when it sent one.
//!
//! Second stage of the OTLP encoder: takes the attributes from
//! [`attributes`](super::attributes), adds the content as JSON strings, sets the span's
//! identity ([`SpanIds`]), times and ERROR status. The [`log`](super::log) stage reuses the
//! same [`SpanIds`] so the log event correlates to the span.
//!
//! Owns: trace and span IDs, the span name and status. Never encodes or sends.

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::{Span, Status, span};

use super::attributes::{is_failed, kv, record_attributes, str_value};
use super::unix_nanos;
use crate::record::{CONTENT_ATTRIBUTES, Record};

/// `Span.flags` bits telling that the parent's remoteness is known (0x100) and that it is
/// remote (0x200): the app's span lives in another process (otel-genai.md §2).
const FLAGS_PARENT_REMOTE: u32 = 0x300;

/// The span identity of one exchange: its trace, its own ID, its parent and flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanIds {
    /// 16-byte trace ID.
    pub trace_id: [u8; 16],
    /// veil's 8-byte span ID ([`veil_span`](crate::exchange::traceparent::veil_span): derived from the request ID).
    pub span_id: [u8; 8],
    /// The app's span, when it sent a `traceparent`.
    pub parent_span_id: Option<[u8; 8]>,
    /// `Span.flags`: W3C flags in bits 0-7, plus 0x300 under a remote parent.
    pub flags: u32,
    /// The incoming `tracestate`.
    pub trace_state: String,
}

impl SpanIds {
    /// The child of `record.trace_parent`, or a new trace (flags `03`: sampled, random
    /// trace ID; otel-genai.md §3). The ids are [`veil_span`](crate::exchange::traceparent::veil_span) of the request ID, so the
    /// feedback API names the same span (veil#14).
    pub fn for_record(record: &Record) -> Self {
        let p = record.prepare();
        let (trace_id, span_id) = (p.trace_id, p.span_id);
        match &record.trace_parent {
            Some(tp) => SpanIds {
                trace_id,
                span_id,
                parent_span_id: Some(tp.parent_span_id),
                flags: u32::from(tp.flags) | FLAGS_PARENT_REMOTE,
                trace_state: tp.trace_state.clone().unwrap_or_default(),
            },
            None => SpanIds {
                trace_id,
                span_id,
                parent_span_id: None,
                flags: 0x03,
                trace_state: String::new(),
            },
        }
    }
}

/// The span name: `{operation} {model}`, or the operation alone without a model.
pub fn span_name(r: &Record) -> String {
    match &r.request_model {
        Some(m) if !m.is_empty() => format!("{} {m}", r.operation.as_str()),
        _ => r.operation.as_str().to_string(),
    }
}

/// The CLIENT span of one record.
pub fn record_span(r: &Record, ids: &SpanIds) -> Span {
    span_with(r, ids, record_attributes(r))
}

/// The span's ERROR status with what failed, for a failed record; `None` (unset) otherwise.
pub(super) fn failure_status(r: &Record) -> Option<Status> {
    if !is_failed(r) {
        return None;
    }
    let message = match (r.status, &r.error_type) {
        (Some(s), Some(e)) => format!("upstream answered {s} ({e})"),
        (Some(s), None) => format!("upstream answered {s}"),
        (None, Some(e)) => format!("exchange failed: {e} ({})", r.outcome.as_str()),
        (None, None) => format!("exchange failed ({})", r.outcome.as_str()),
    };
    Some(Status { message, code: 2 })
}

pub(super) fn span_with(r: &Record, ids: &SpanIds, mut attributes: Vec<KeyValue>) -> Span {
    // On spans, content is a JSON string (otel-genai.md §1.2): the text the pipeline worker
    // already made for the ledger.
    for (name, text) in CONTENT_ATTRIBUTES.iter().zip(&r.prepare().content) {
        if let Some(text) = text {
            attributes.push(kv(name, str_value(text)));
        }
    }
    let start = unix_nanos(r.start);
    let end = unix_nanos(r.start + r.duration);
    let status = failure_status(r);
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
