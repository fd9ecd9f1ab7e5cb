//! # OTLP encoding: `Record` → span, log record and metric points.
//!
//! Builds the `opentelemetry-proto` messages for one batch, following the GenAI semantic
//! conventions v1.41.1 (`shared/otel-genai.md` §1) and veil's own `veil.*` attributes, and
//! encodes them as protobuf or OTLP/JSON.
//!
//! Place in the flow: called by the exporter's batcher (`export::batcher`) for every record
//! and audit event; its output (encoded bytes) goes to the per-signal senders. The stages,
//! one file each:
//! - `attributes`: `Record` → the attribute list shared by span and log (no content);
//! - `span`: the CLIENT span and its IDs (W3C parent);
//! - `log`: the log event of a record (content as body) and of an audit event;
//! - `metrics`: histogram points per record and the metrics request;
//! - `batch`: spans and logs gathered into the traces and logs requests (written as protobuf
//!   as records are pushed, or kept as messages for OTLP/JSON);
//! - `resource`: the OTLP resource (`service.name`, `OTEL_RESOURCE_ATTRIBUTES`).
//! - `wire`: the traces and logs requests as protobuf, each nested message measured once
//!   (`prost`'s own bytes, without its walk of a deep message once per level above it), and
//!   a record's span and log event written straight from the record.
//!
//! This file holds the wire vocabulary ([`Signal`], [`Encoding`], [`encode`]) and the
//! instrumentation scope.
//!
//! Owns: attribute names, span/log/metric shapes, trace IDs, the resource. Reads [`Record`]s
//! and [`AuditEvent`]s only, whose content is already redacted; it must never see an
//! `Exchange` or raw content, and never touches the network or the disk.
//!
//! [`Record`]: crate::record::Record

mod attributes;
mod batch;
mod log;
mod metrics;
mod resource;
mod span;
mod wire;

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

pub use attributes::{error_type, is_failed, json_to_any};
pub use batch::{Batch, Signals};
pub(crate) use batch::{fitted, recent_size};
pub use log::{AuditEvent, EVALUATION_EVENT, FeedbackEvent, audit_log, feedback_log, record_log};
pub use metrics::metrics_request;
pub use resource::{ResourceInfo, parse_key_values};
pub use span::{SpanIds, record_span, span_name};

/// Schema of the attribute names veil emits (semconv v1.41, see otel-genai.md §0).
pub const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.41.0";

/// Instrumentation scope name.
pub const SCOPE_NAME: &str = "veil";

/// `event_name` of the per-exchange log record (otel-genai.md §1.2).
pub const EVENT_NAME: &str = "gen_ai.client.inference.operation.details";

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

pub(super) fn scope() -> InstrumentationScope {
    InstrumentationScope {
        name: SCOPE_NAME.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        attributes: Vec::new(),
        dropped_attributes_count: 0,
    }
}

pub(super) fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Encodes a request in `enc`. Protobuf as `prost` writes it ([`OtlpMessage::to_protobuf`]),
/// JSON through the crate's serde (hex IDs, string int64s).
pub fn encode<M: OtlpMessage>(msg: &M, enc: Encoding) -> Vec<u8> {
    match enc {
        Encoding::Protobuf => msg.to_protobuf(),
        Encoding::Json => serde_json::to_vec(msg).expect("invariant: OTLP messages serialize"),
    }
}

/// A message veil encodes: the three export requests, and one span or log record (benches).
pub trait OtlpMessage: Message + serde::Serialize + Sized {
    /// The protobuf bytes, exactly `prost`'s `encode_to_vec`. The traces and logs requests,
    /// spans and log records measure each nested message once (`wire`: `prost` walks a
    /// message once per level above it, and a log event's content body is deep); the
    /// metrics request is `prost`'s own.
    fn to_protobuf(&self) -> Vec<u8> {
        self.encode_to_vec()
    }
}

impl OtlpMessage for ExportTraceServiceRequest {
    fn to_protobuf(&self) -> Vec<u8> {
        wire::traces(self)
    }
}

impl OtlpMessage for ExportLogsServiceRequest {
    fn to_protobuf(&self) -> Vec<u8> {
        wire::logs(self)
    }
}

impl OtlpMessage for Span {
    fn to_protobuf(&self) -> Vec<u8> {
        wire::span(self)
    }
}

impl OtlpMessage for LogRecord {
    fn to_protobuf(&self) -> Vec<u8> {
        wire::log_record(self)
    }
}

impl OtlpMessage for ExportMetricsServiceRequest {}
