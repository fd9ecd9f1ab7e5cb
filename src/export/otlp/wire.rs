//! # Protobuf for the traces and logs requests, each nested message measured once.
//!
//! `prost` writes a nested message as its tag, its length, then its fields, and it works the
//! length out by walking the message (`encoded_len`) just before writing it. A value `d`
//! messages deep is therefore walked `d` times, and a record's log event is deep: its body is
//! the redacted content as an `AnyValue` tree (messages → parts → text) under the log record,
//! its scope, its resource and the request, ~18 levels at the text of a part. Encoding one
//! exchange's span and log event this way cost ~53k instructions, more than parsing its
//! bodies (callgrind on `benches/pipeline.rs`, docs/performance.md, stop 53).
//!
//! [`traces`] and [`logs`] write the same bytes in two passes over the same code
//! ([`Fields`]): the first measures every nested message bottom-up and keeps the lengths in
//! visiting order, the second writes, taking each length as it reaches the message. Each value
//! is visited twice whatever its depth. The shallow parts that occur once per request (the
//! resource, the instrumentation scope) and the span's events, links and status (veil writes
//! none of the first two, and the status is flat) go through `prost` itself.
//!
//! The exporter's batches go further ([`RecordSpan`], [`RecordLog`], [`append`]): a record's
//! span and log event are written straight from the `Record` as it is pushed, with no
//! `Span` or `LogRecord` built, kept and dropped, and at the flush the request's [`head`]
//! goes into room left before them and its [`tail`] after them ([`around`] when there is no
//! room). The attributes are named once, by `attributes::each_attribute`, for
//! both this writer and the built messages.
//!
//! The bytes are `prost`'s, byte for byte: fields in tag order (as `prost-derive` sorts
//! them), proto3 scalars omitted at their default, a set `oneof` member and a present
//! optional message always written, `int32` and enum values sign-extended to ten bytes when
//! negative (<https://protobuf.dev/programming-guides/encoding/>). The unit tests compare
//! both on random and real messages, and the records written straight against their built
//! messages encoded by `prost` (`record_tests`). Every field of the message types is named in a
//! destructuring pattern, so a field added to `opentelemetry-proto` fails the build here
//! instead of being left out of the bytes.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::Status;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use prost::encoding::encoded_len_varint;

use super::attributes::{Key, Val, content, each_attribute, is_failed};
use super::log::record_log;
use super::span::{SpanIds, failure_status, record_span, span_name};
use super::{EVENT_NAME, SCHEMA_URL, unix_nanos};
use crate::record::{CONTENT_ATTRIBUTES, Record};

/// `ExportTraceServiceRequest` as protobuf: the bytes of `prost`'s `encode_to_vec`.
pub fn traces(req: &ExportTraceServiceRequest) -> Vec<u8> {
    let mut m = Measure::default();
    traces_fields(&mut m, req);
    m.write(|w| traces_fields(w, req))
}

/// `ExportLogsServiceRequest` as protobuf: the bytes of `prost`'s `encode_to_vec`.
pub fn logs(req: &ExportLogsServiceRequest) -> Vec<u8> {
    let mut m = Measure::default();
    logs_fields(&mut m, req);
    m.write(|w| logs_fields(w, req))
}

/// One span as protobuf (a message on its own, as `prost`'s `encode_to_vec` writes it).
pub fn span(s: &Span) -> Vec<u8> {
    let mut m = Measure::default();
    span_fields(&mut m, s);
    m.write(|w| span_fields(w, s))
}

/// One log record as protobuf (a message on its own, as `prost`'s `encode_to_vec` writes it).
pub fn log_record(r: &LogRecord) -> Vec<u8> {
    let mut m = Measure::default();
    log_record_fields(&mut m, r);
    m.write(|w| log_record_fields(w, r))
}

/// Where a message's fields go: counted ([`Measure`]) or written ([`Write`]). The field
/// helpers take the field's number; the caller decides omission where proto3 omits a default.
pub(super) trait Fields {
    /// A length-delimited field of raw bytes (string, bytes).
    fn bytes(&mut self, tag: u32, b: &[u8]);
    /// A varint field.
    fn varint(&mut self, tag: u32, v: u64);
    /// A fixed 64-bit field (fixed64, double).
    fn fixed64(&mut self, tag: u32, v: u64);
    /// A fixed 32-bit field.
    fn fixed32(&mut self, tag: u32, v: u32);
    /// A nested message whose fields `body` writes.
    fn message(&mut self, tag: u32, body: impl FnOnce(&mut Self));
    /// A nested message `prost` encodes (shallow ones only: it walks `m` twice).
    fn prost<M: Message>(&mut self, tag: u32, m: &M);
    /// A string field written from an attribute name's parts ([`Key`]), not joined first.
    fn key(&mut self, tag: u32, k: Key<'_>);
}

const LEN: u32 = 2;
const VARINT: u32 = 0;
const I64: u32 = 1;
const I32: u32 = 5;

fn key_len(tag: u32) -> usize {
    encoded_len_varint(u64::from(tag << 3))
}

/// The first pass: bytes counted, and each nested message's length kept in visiting order.
#[derive(Default)]
struct Measure {
    len: usize,
    lens: Vec<usize>,
}

impl Measure {
    /// The second pass, into a buffer of exactly the measured size: `fields` must visit
    /// what the first pass visited.
    fn write(self, fields: impl FnOnce(&mut Write)) -> Vec<u8> {
        let mut w = Write {
            out: Vec::with_capacity(self.len),
            lens: self.lens,
            next: 0,
        };
        fields(&mut w);
        debug_assert_eq!(
            w.out.len(),
            self.len,
            "the two passes wrote different lengths"
        );
        w.out
    }
}

impl Fields for Measure {
    fn bytes(&mut self, tag: u32, b: &[u8]) {
        self.len += key_len(tag) + encoded_len_varint(b.len() as u64) + b.len();
    }
    fn varint(&mut self, tag: u32, v: u64) {
        self.len += key_len(tag) + encoded_len_varint(v);
    }
    fn fixed64(&mut self, tag: u32, _: u64) {
        self.len += key_len(tag) + 8;
    }
    fn fixed32(&mut self, tag: u32, _: u32) {
        self.len += key_len(tag) + 4;
    }
    fn message(&mut self, tag: u32, body: impl FnOnce(&mut Self)) {
        let at = self.lens.len();
        self.lens.push(0);
        let outer = std::mem::take(&mut self.len);
        body(self);
        let inner = std::mem::replace(&mut self.len, outer);
        self.lens[at] = inner;
        self.len += key_len(tag) + encoded_len_varint(inner as u64) + inner;
    }
    fn prost<M: Message>(&mut self, tag: u32, m: &M) {
        let inner = m.encoded_len();
        self.len += key_len(tag) + encoded_len_varint(inner as u64) + inner;
    }
    fn key(&mut self, tag: u32, k: Key<'_>) {
        let n = k.prefix.len() + k.name.len();
        self.len += key_len(tag) + encoded_len_varint(n as u64) + n;
    }
}

/// Appends `v` as a base-128 varint, low group first. `prost`'s `encode_varint` writes the
/// same bytes through `BufMut`, whose per-byte calls were 13 % of writing a batch (callgrind,
/// `benches/export.rs`); most values here (tags, short lengths) are one byte.
#[inline]
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// The second pass: the bytes, each nested message's length taken from the first pass.
struct Write {
    out: Vec<u8>,
    lens: Vec<usize>,
    next: usize,
}

impl Write {
    fn tag(&mut self, tag: u32, wire: u32) {
        varint(&mut self.out, u64::from(tag << 3 | wire));
    }
}

impl Fields for Write {
    fn bytes(&mut self, tag: u32, b: &[u8]) {
        self.tag(tag, LEN);
        varint(&mut self.out, b.len() as u64);
        self.out.extend_from_slice(b);
    }
    fn varint(&mut self, tag: u32, v: u64) {
        self.tag(tag, VARINT);
        varint(&mut self.out, v);
    }
    fn fixed64(&mut self, tag: u32, v: u64) {
        self.tag(tag, I64);
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn fixed32(&mut self, tag: u32, v: u32) {
        self.tag(tag, I32);
        self.out.extend_from_slice(&v.to_le_bytes());
    }
    fn message(&mut self, tag: u32, body: impl FnOnce(&mut Self)) {
        // The passes visit the same messages in the same order, so the index cannot run
        // past the lengths; `unwrap_or` keeps a bug from panicking on the exporter's thread
        // (the debug assertion in [`Measure::write`] and the tests would catch it).
        let len = self.lens.get(self.next).copied().unwrap_or(0);
        self.next += 1;
        self.tag(tag, LEN);
        varint(&mut self.out, len as u64);
        body(self);
    }
    fn prost<M: Message>(&mut self, tag: u32, m: &M) {
        prost::encoding::message::encode(tag, m, &mut self.out);
    }
    fn key(&mut self, tag: u32, k: Key<'_>) {
        self.tag(tag, LEN);
        varint(&mut self.out, (k.prefix.len() + k.name.len()) as u64);
        self.out.extend_from_slice(k.prefix.as_bytes());
        if k.lower {
            self.out
                .extend(k.name.bytes().map(|b| b.to_ascii_lowercase()));
        } else {
            self.out.extend_from_slice(k.name.as_bytes());
        }
    }
}

// proto3 scalars: omitted at their default value, as prost does.

fn string<F: Fields>(f: &mut F, tag: u32, s: &str) {
    if !s.is_empty() {
        f.bytes(tag, s.as_bytes());
    }
}

fn uint32<F: Fields>(f: &mut F, tag: u32, v: u32) {
    if v != 0 {
        f.varint(tag, u64::from(v));
    }
}

/// int32 and enum fields: a negative value is sign-extended to 64 bits (ten bytes).
fn int32<F: Fields>(f: &mut F, tag: u32, v: i32) {
    if v != 0 {
        f.varint(tag, i64::from(v) as u64);
    }
}

fn fixed64<F: Fields>(f: &mut F, tag: u32, v: u64) {
    if v != 0 {
        f.fixed64(tag, v);
    }
}

fn fixed32<F: Fields>(f: &mut F, tag: u32, v: u32) {
    if v != 0 {
        f.fixed32(tag, v);
    }
}

fn traces_fields<F: Fields>(f: &mut F, req: &ExportTraceServiceRequest) {
    let ExportTraceServiceRequest { resource_spans } = req;
    for rs in resource_spans {
        f.message(1, |f| resource_spans_fields(f, rs));
    }
}

fn resource_spans_fields<F: Fields>(f: &mut F, rs: &ResourceSpans) {
    let ResourceSpans {
        resource,
        scope_spans,
        schema_url,
    } = rs;
    if let Some(r) = resource {
        f.prost(1, r);
    }
    for ss in scope_spans {
        f.message(2, |f| scope_spans_fields(f, ss));
    }
    string(f, 3, schema_url);
}

fn scope_spans_fields<F: Fields>(f: &mut F, ss: &ScopeSpans) {
    let ScopeSpans {
        scope,
        spans,
        schema_url,
    } = ss;
    if let Some(s) = scope {
        f.prost(1, s);
    }
    for s in spans {
        f.message(2, |f| span_fields(f, s));
    }
    string(f, 3, schema_url);
}

fn span_fields<F: Fields>(f: &mut F, s: &Span) {
    let Span {
        trace_id,
        span_id,
        trace_state,
        parent_span_id,
        flags,
        name,
        kind,
        start_time_unix_nano,
        end_time_unix_nano,
        attributes,
        dropped_attributes_count,
        events,
        dropped_events_count,
        links,
        dropped_links_count,
        status,
    } = s;
    if !trace_id.is_empty() {
        f.bytes(1, trace_id);
    }
    if !span_id.is_empty() {
        f.bytes(2, span_id);
    }
    string(f, 3, trace_state);
    if !parent_span_id.is_empty() {
        f.bytes(4, parent_span_id);
    }
    string(f, 5, name);
    int32(f, 6, *kind);
    fixed64(f, 7, *start_time_unix_nano);
    fixed64(f, 8, *end_time_unix_nano);
    for kv in attributes {
        f.message(9, |f| key_value_fields(f, kv));
    }
    uint32(f, 10, *dropped_attributes_count);
    for e in events {
        f.prost(11, e);
    }
    uint32(f, 12, *dropped_events_count);
    for l in links {
        f.prost(13, l);
    }
    uint32(f, 14, *dropped_links_count);
    if let Some(st) = status {
        f.prost(15, st);
    }
    fixed32(f, 16, *flags);
}

fn logs_fields<F: Fields>(f: &mut F, req: &ExportLogsServiceRequest) {
    let ExportLogsServiceRequest { resource_logs } = req;
    for rl in resource_logs {
        f.message(1, |f| resource_logs_fields(f, rl));
    }
}

fn resource_logs_fields<F: Fields>(f: &mut F, rl: &ResourceLogs) {
    let ResourceLogs {
        resource,
        scope_logs,
        schema_url,
    } = rl;
    if let Some(r) = resource {
        f.prost(1, r);
    }
    for sl in scope_logs {
        f.message(2, |f| scope_logs_fields(f, sl));
    }
    string(f, 3, schema_url);
}

fn scope_logs_fields<F: Fields>(f: &mut F, sl: &ScopeLogs) {
    let ScopeLogs {
        scope,
        log_records,
        schema_url,
    } = sl;
    if let Some(s) = scope {
        f.prost(1, s);
    }
    for r in log_records {
        f.message(2, |f| log_record_fields(f, r));
    }
    string(f, 3, schema_url);
}

fn log_record_fields<F: Fields>(f: &mut F, r: &LogRecord) {
    let LogRecord {
        time_unix_nano,
        observed_time_unix_nano,
        severity_number,
        severity_text,
        body,
        attributes,
        dropped_attributes_count,
        flags,
        trace_id,
        span_id,
        event_name,
    } = r;
    fixed64(f, 1, *time_unix_nano);
    int32(f, 2, *severity_number);
    string(f, 3, severity_text);
    if let Some(b) = body {
        f.message(5, |f| any_value_fields(f, b));
    }
    for kv in attributes {
        f.message(6, |f| key_value_fields(f, kv));
    }
    uint32(f, 7, *dropped_attributes_count);
    fixed32(f, 8, *flags);
    if !trace_id.is_empty() {
        f.bytes(9, trace_id);
    }
    if !span_id.is_empty() {
        f.bytes(10, span_id);
    }
    fixed64(f, 11, *observed_time_unix_nano);
    string(f, 12, event_name);
}

fn key_value_fields<F: Fields>(f: &mut F, kv: &KeyValue) {
    let KeyValue {
        key,
        value,
        key_strindex,
    } = kv;
    string(f, 1, key);
    if let Some(v) = value {
        f.message(2, |f| any_value_fields(f, v));
    }
    int32(f, 3, *key_strindex);
}

/// A set `oneof` member is written even at its type's default (an empty string, `false`, 0).
fn any_value_fields<F: Fields>(f: &mut F, v: &AnyValue) {
    use any_value::Value;
    let AnyValue { value } = v;
    match value {
        None => {}
        Some(Value::StringValue(s)) => f.bytes(1, s.as_bytes()),
        Some(Value::BoolValue(b)) => f.varint(2, u64::from(*b)),
        Some(Value::IntValue(i)) => f.varint(3, *i as u64),
        Some(Value::DoubleValue(d)) => f.fixed64(4, d.to_bits()),
        Some(Value::ArrayValue(ArrayValue { values })) => f.message(5, |f| {
            for v in values {
                f.message(1, |f| any_value_fields(f, v));
            }
        }),
        Some(Value::KvlistValue(KeyValueList { values })) => f.message(6, |f| {
            for kv in values {
                f.message(1, |f| key_value_fields(f, kv));
            }
        }),
        Some(Value::BytesValue(b)) => f.bytes(7, b),
        Some(Value::StringValueStrindex(i)) => f.varint(8, i64::from(*i) as u64),
    }
}

// Records written straight from the `Record`: the bytes of the span and log record that
// `span::record_span` and `log::record_log` build, without building them (the tests compare
// the two). The attributes come from the one naming of a record's fields,
// [`each_attribute`], borrowed where the record holds them.

/// A record's span, ready to be written: what the span needs that is made rather than read
/// (its name, its status), made once for both passes.
pub(super) struct RecordSpan<'a> {
    r: &'a Record,
    ids: &'a SpanIds,
    name: String,
    status: Option<Status>,
}

impl<'a> RecordSpan<'a> {
    pub(super) fn new(r: &'a Record, ids: &'a SpanIds) -> Self {
        RecordSpan {
            r,
            ids,
            name: span_name(r),
            status: failure_status(r),
        }
    }
}

/// A record's log event, ready to be written.
pub(super) struct RecordLog<'a> {
    r: &'a Record,
    ids: &'a SpanIds,
}

impl<'a> RecordLog<'a> {
    pub(super) fn new(r: &'a Record, ids: &'a SpanIds) -> Self {
        RecordLog { r, ids }
    }
}

/// A message whose fields can be visited by both passes.
pub(super) trait Describe {
    /// Visits the message's fields, in `prost`'s order.
    fn fields<F: Fields>(&self, f: &mut F);
    /// The same message built and encoded by `prost`, as field `tag`: what [`append`] falls
    /// back to should its two passes ever disagree.
    fn prost_field(&self, tag: u32, out: &mut Vec<u8>);
}

impl Describe for RecordSpan<'_> {
    fn fields<F: Fields>(&self, f: &mut F) {
        let (r, ids) = (self.r, self.ids);
        f.bytes(1, &ids.trace_id);
        f.bytes(2, &ids.span_id);
        string(f, 3, &ids.trace_state);
        if let Some(p) = &ids.parent_span_id {
            f.bytes(4, p);
        }
        string(f, 5, &self.name);
        int32(f, 6, SpanKind::Client as i32);
        fixed64(f, 7, unix_nanos(r.start));
        fixed64(f, 8, unix_nanos(r.start + r.duration));
        each_attribute(r, |k, v| f.message(9, |f| attribute_fields(f, k, &v)));
        // On spans, content is a JSON string (otel-genai.md §1.2).
        for (name, text) in CONTENT_ATTRIBUTES.iter().zip(&r.prepare().content) {
            if let Some(text) = text {
                f.message(9, |f| {
                    string(f, 1, name);
                    f.message(2, |f| f.bytes(1, text.as_bytes()));
                });
            }
        }
        // No dropped counts, events or links.
        if let Some(st) = &self.status {
            f.prost(15, st);
        }
        fixed32(f, 16, ids.flags);
    }
    fn prost_field(&self, tag: u32, out: &mut Vec<u8>) {
        prost::encoding::message::encode(tag, &record_span(self.r, self.ids), out);
    }
}

impl Describe for RecordLog<'_> {
    fn fields<F: Fields>(&self, f: &mut F) {
        let (r, ids) = (self.r, self.ids);
        let failed = is_failed(r);
        let end = unix_nanos(r.start + r.duration);
        fixed64(f, 1, end);
        int32(f, 2, if failed { 17 } else { 9 });
        string(f, 3, if failed { "ERROR" } else { "INFO" });
        // The body: the content as a kvlist, present even when empty.
        f.message(5, |f| {
            f.message(6, |f| {
                for (name, v) in content(r) {
                    f.message(1, |f| {
                        string(f, 1, name);
                        f.message(2, |f| json_fields(f, v));
                    });
                }
            })
        });
        each_attribute(r, |k, v| f.message(6, |f| attribute_fields(f, k, &v)));
        fixed32(f, 8, ids.flags & 0xff);
        f.bytes(9, &ids.trace_id);
        f.bytes(10, &ids.span_id);
        fixed64(f, 11, end);
        string(f, 12, EVENT_NAME);
    }
    fn prost_field(&self, tag: u32, out: &mut Vec<u8>) {
        prost::encoding::message::encode(tag, &record_log(self.r, self.ids), out);
    }
}

impl Describe for Span {
    fn fields<F: Fields>(&self, f: &mut F) {
        span_fields(f, self);
    }
    fn prost_field(&self, tag: u32, out: &mut Vec<u8>) {
        prost::encoding::message::encode(tag, self, out);
    }
}

impl Describe for LogRecord {
    fn fields<F: Fields>(&self, f: &mut F) {
        log_record_fields(f, self);
    }
    fn prost_field(&self, tag: u32, out: &mut Vec<u8>) {
        prost::encoding::message::encode(tag, self, out);
    }
}

/// Appends `m` to `out` as field `tag` (its key, its length, its fields), as `prost` writes
/// a repeated message field. `lens` is scratch for the nested lengths, kept by the caller so
/// a batch of messages reuses one allocation. Returns `false` when the two passes disagreed
/// (a bug: the tests assert `true`), in which case `prost` wrote the message instead.
pub(super) fn append<D: Describe>(
    out: &mut Vec<u8>,
    lens: &mut Vec<usize>,
    tag: u32,
    m: &D,
) -> bool {
    lens.clear();
    let mut measure = Measure {
        len: 0,
        lens: std::mem::take(lens),
    };
    measure.message(tag, |f| m.fields(f));
    let (len, lens_measured) = (measure.len, measure.lens);
    out.reserve(len);
    let start = out.len();
    let mut w = Write {
        out: std::mem::take(out),
        lens: lens_measured,
        next: 0,
    };
    w.message(tag, |f| m.fields(f));
    let agreed = w.out.len() - start == len && w.next == w.lens.len();
    *out = w.out;
    *lens = w.lens;
    if !agreed {
        // Not reachable by any input the tests found; were it, the message would go out
        // wrong and its whole batch be refused by the collector. `prost` writes it instead.
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| {
            tracing::error!(
                "OTLP writer: the two passes disagreed on a message; written by prost instead \
                 (a bug in veil: please report it)"
            )
        });
        out.truncate(start);
        m.prost_field(tag, out);
    }
    agreed
}

/// A traces or logs request of one resource and one scope around `items`: spans or log
/// records already written as the scope's repeated field ([`append`] with tag 2). The
/// requests, resources and scopes of the two signals number their fields alike (resource 1,
/// scopes 2, schema_url 3; scope 1, items 2, schema_url 3), so one writer serves both. The
/// bytes are those of the request `Batch::traces_request` or `Batch::logs_request` makes of
/// the same items: [`head`], the items, then [`tail`].
pub(super) fn around(resource: &Resource, scope: &InstrumentationScope, items: &[u8]) -> Vec<u8> {
    let mut out = head(resource, scope, items.len());
    out.reserve(items.len() + tail_len());
    out.extend_from_slice(items);
    tail(&mut out);
    out
}

/// The bytes of the request that come before `items` bytes of written items:
/// `Request { resource_* 1: { resource 1, scope_* 2: { scope 1, ` (the outer `schema_url`
/// is empty and omitted). A batch reserves room for them before its first item, so that
/// the request is made without copying the items (`batch::Written`).
pub(super) fn head(resource: &Resource, scope: &InstrumentationScope, items: usize) -> Vec<u8> {
    let field = |tag: u32, inner: usize| key_len(tag) + encoded_len_varint(inner as u64) + inner;
    let scopes = field(1, scope.encoded_len()) + items + tail_len();
    let request = field(1, resource.encoded_len()) + field(2, scopes);
    // All of the request but its items and tail.
    let len = key_len(1) + encoded_len_varint(request as u64) + request - items - tail_len();
    let mut w = Write {
        out: Vec::with_capacity(len),
        lens: Vec::new(),
        next: 0,
    };
    w.tag(1, LEN);
    varint(&mut w.out, request as u64);
    w.prost(1, resource);
    w.tag(2, LEN);
    varint(&mut w.out, scopes as u64);
    w.prost(1, scope);
    debug_assert_eq!(w.out.len(), len, "the head's length was miscounted");
    w.out
}

/// The bytes of the request after its items: ` schema_url 3 } }`.
pub(super) fn tail(out: &mut Vec<u8>) {
    let mut w = Write {
        out: std::mem::take(out),
        lens: Vec::new(),
        next: 0,
    };
    string(&mut w, 3, SCHEMA_URL);
    *out = w.out;
}

/// The length of [`tail`]'s bytes.
fn tail_len() -> usize {
    let mut m = Measure::default();
    string(&mut m, 3, SCHEMA_URL);
    m.len
}

/// A record's attribute as a `KeyValue`'s fields (`key_strindex` 0, omitted).
fn attribute_fields<F: Fields>(f: &mut F, k: Key<'_>, v: &Val<'_>) {
    if !k.prefix.is_empty() || !k.name.is_empty() {
        f.key(1, k);
    }
    f.message(2, |f| match v {
        Val::Str(s) => f.bytes(1, s.as_bytes()),
        Val::String(s) => f.bytes(1, s.as_bytes()),
        Val::Int(i) => f.varint(3, *i as u64),
        Val::Double(d) => f.fixed64(4, d.to_bits()),
        Val::Bool(b) => f.varint(2, u64::from(*b)),
        Val::Strs(items) => f.message(5, |f| {
            items.each(|s| f.message(1, |f| f.bytes(1, s.as_bytes())));
        }),
        Val::Json(j) => json_fields(f, j),
    });
}

/// The `AnyValue` fields of [`json_to_any`]`(v)`.
///
/// [`json_to_any`]: super::json_to_any
fn json_fields<F: Fields>(f: &mut F, v: &serde_json::Value) {
    use serde_json::Value as J;
    match v {
        J::Null => {}
        J::Bool(b) => f.varint(2, u64::from(*b)),
        J::Number(n) => match n.as_i64() {
            Some(i) => f.varint(3, i as u64),
            None => f.fixed64(4, n.as_f64().unwrap_or(0.0).to_bits()),
        },
        J::String(s) => f.bytes(1, s.as_bytes()),
        J::Array(a) => f.message(5, |f| {
            for x in a {
                f.message(1, |f| json_fields(f, x));
            }
        }),
        J::Object(o) => f.message(6, |f| {
            for (k, x) in o {
                f.message(1, |f| {
                    string(f, 1, k);
                    f.message(2, |f| json_fields(f, x));
                });
            }
        }),
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod record_tests;
