//! # OTLP log records: the event of one record, and the event of one operator action.
//!
//! Third stage of the OTLP encoder: a record's log event carries the span's attributes
//! (from [`attributes`](super::attributes)) and the redacted content as a structured kvlist
//! body, correlated to the span by its [`SpanIds`]; a [`FeedbackEvent`] becomes a
//! `gen_ai.evaluation.result` log record on the rated exchange's span; an [`AuditEvent`] (forget, unseal,
//! retention purge) becomes a `veil.audit.<kind>` log record with no trace.
//!
//! Owns: the log shapes, severities and event names. Never sees more than the record
//! (already redacted) or the audit event (pseudonyms only).

use std::time::SystemTime;

use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, KeyValueList, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;

use super::attributes::{content, is_failed, json_to_any, kv, record_attributes, str_value};
use super::span::SpanIds;
use super::{EVENT_NAME, unix_nanos};
use crate::record::Record;

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

/// One feedback about an exchange (veil#14), exported as the GenAI conventions'
/// `gen_ai.evaluation.result` event. Every text is already safe: the explanation is the
/// comment after the rules scrubbed it.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackEvent {
    /// `fb_` + 16 hex (`veil.feedback.id`).
    pub id: String,
    /// The rated exchange's request id (`veil.request.id`).
    pub request_id: String,
    /// `gen_ai.evaluation.name`.
    pub name: String,
    /// `gen_ai.evaluation.score.value`.
    pub score: Option<f64>,
    /// `gen_ai.evaluation.score.label`.
    pub label: Option<String>,
    /// `gen_ai.evaluation.explanation`: the scrubbed comment.
    pub explanation: Option<String>,
    /// `gen_ai.response.id` of the rated answer, when veil still knows it.
    pub response_id: Option<String>,
    /// `exchange` or `task` (`veil.feedback.scope`).
    pub scope: &'static str,
    /// The task rated, for `scope = task` (`veil.feedback.task`).
    pub task: Option<String>,
    /// The rated exchange's span: its trace and veil's span id
    /// ([`veil_span`](crate::exchange::traceparent::veil_span)).
    pub trace_id: [u8; 16],
    /// veil's span id of the rated exchange.
    pub span_id: [u8; 8],
    /// When veil received it.
    pub time: SystemTime,
}

/// `event_name` of a feedback log record (GenAI semantic conventions, evaluation event).
pub const EVALUATION_EVENT: &str = "gen_ai.evaluation.result";

/// The log record of one feedback: `gen_ai.evaluation.result`, correlated to the rated
/// exchange's span by `trace_id` and `span_id`; no body (the explanation is an attribute, as
/// the conventions define it).
pub fn feedback_log(e: &FeedbackEvent) -> LogRecord {
    let t = unix_nanos(e.time);
    let mut attributes = vec![kv("gen_ai.evaluation.name", str_value(&e.name))];
    if let Some(score) = e.score {
        attributes.push(kv(
            "gen_ai.evaluation.score.value",
            AnyValue {
                value: Some(any_value::Value::DoubleValue(score)),
            },
        ));
    }
    if let Some(l) = &e.label {
        attributes.push(kv("gen_ai.evaluation.score.label", str_value(l)));
    }
    if let Some(x) = &e.explanation {
        attributes.push(kv("gen_ai.evaluation.explanation", str_value(x)));
    }
    if let Some(r) = &e.response_id {
        attributes.push(kv("gen_ai.response.id", str_value(r)));
    }
    attributes.push(kv("veil.request.id", str_value(&e.request_id)));
    attributes.push(kv("veil.feedback.id", str_value(&e.id)));
    attributes.push(kv("veil.feedback.scope", str_value(e.scope)));
    if let Some(task) = &e.task {
        attributes.push(kv("veil.feedback.task", str_value(task)));
    }
    LogRecord {
        time_unix_nano: t,
        observed_time_unix_nano: t,
        severity_number: 9,
        severity_text: "INFO".to_string(),
        body: None,
        attributes,
        dropped_attributes_count: 0,
        flags: 0,
        trace_id: e.trace_id.to_vec(),
        span_id: e.span_id.to_vec(),
        event_name: EVALUATION_EVENT.to_string(),
    }
}

/// The log event of one record: the span's attributes, the redacted content as a structured
/// kvlist body, correlated to the span.
pub fn record_log(r: &Record, ids: &SpanIds) -> LogRecord {
    log_with(r, ids, record_attributes(r))
}

pub(super) fn log_with(r: &Record, ids: &SpanIds, attributes: Vec<KeyValue>) -> LogRecord {
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
