//! # OTLP batch: finished spans and log records gathered into one request per signal.
//!
//! Fifth stage of the OTLP encoder: the batcher pushes each record (its span and log event,
//! each only when its signal is exported, from attributes built once) and audit log; on
//! flush, [`Batch`] hands out the traces and logs requests under veil's [`ResourceInfo`] and
//! scope, then [`encode`](super::encode) turns them into bytes for the senders.
//!
//! Owns: the request envelopes. Never encodes, sends or spools.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use super::attributes::record_attributes;
use super::log::log_with;
use super::resource::ResourceInfo;
use super::span::{SpanIds, span_with};
use super::{SCHEMA_URL, scope};
use crate::record::Record;

/// A batch of finished spans and log records, ready to become OTLP requests.
#[derive(Debug, Default)]
pub struct Batch {
    /// Spans, one per record.
    pub spans: Vec<Span>,
    /// Log records: one per record, one per audit event.
    pub logs: Vec<LogRecord>,
}

/// Which signals a record is built into: a signal that goes nowhere costs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Signals {
    /// Build the record's span.
    pub traces: bool,
    /// Build the record's log event (the only reader of its content trees).
    pub logs: bool,
}

impl Signals {
    /// Both the span and the log event.
    pub const BOTH: Signals = Signals {
        traces: true,
        logs: true,
    };
}

impl Batch {
    /// Adds one record's span and log event.
    pub fn push_record(&mut self, r: &Record) {
        self.push_record_to(r, Signals::BOTH);
    }

    /// Adds one record's span and/or log event, as `to` asks; nothing when it asks neither.
    pub fn push_record_to(&mut self, r: &Record, to: Signals) {
        if !to.traces && !to.logs {
            return;
        }
        let ids = SpanIds::for_record(r);
        // Built once: the log event carries the span's attributes.
        let attributes = record_attributes(r);
        match (to.traces, to.logs) {
            (true, true) => {
                self.spans.push(span_with(r, &ids, attributes.clone()));
                self.logs.push(log_with(r, &ids, attributes));
            }
            (true, false) => self.spans.push(span_with(r, &ids, attributes)),
            _ => self.logs.push(log_with(r, &ids, attributes)),
        }
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
