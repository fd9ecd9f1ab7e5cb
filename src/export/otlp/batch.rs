//! # OTLP batch: finished spans and log records gathered into one request per signal.
//!
//! Fifth stage of the OTLP encoder: the batcher pushes each record (its span and log event,
//! each only when its signal is exported) and audit log; on flush, [`Batch`] hands out the
//! traces and logs requests under veil's [`ResourceInfo`] and scope.
//!
//! A signal that goes out as protobuf ([`Batch::new`]) is written as it is pushed, straight
//! from the record ([`wire`](super::wire)): no `Span` or `LogRecord` is built, kept until the
//! flush, then walked and dropped. That was most of the exporter thread's work (stop 53's
//! profile: building 31 %, dropping 11 %, encoding 29 %). A signal that goes out as OTLP/JSON
//! keeps the built messages, which the JSON encoder serializes.
//!
//! Owns: the request envelopes. Never sends or spools.

use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

use super::attributes::record_attributes;
use super::log::log_with;
use super::resource::ResourceInfo;
use super::span::{SpanIds, span_with};
use super::wire::{self, RecordLog, RecordSpan};
use super::{Encoding, SCHEMA_URL, encode, scope};
use crate::record::Record;

/// A batch of finished spans and log records, ready to become OTLP requests.
#[derive(Debug, Default)]
pub struct Batch {
    /// Spans, one per record, of a signal kept as messages (OTLP/JSON).
    pub spans: Vec<Span>,
    /// Log records (one per record, one per audit event) of a signal kept as messages.
    pub logs: Vec<LogRecord>,
    /// The spans of a signal that goes out as protobuf, already written.
    written_spans: Option<Written>,
    /// The log records of a signal that goes out as protobuf, already written.
    written_logs: Option<Written>,
    /// Scratch for the writer's nested lengths, one allocation for the batch.
    lens: Vec<usize>,
}

/// Messages written as a repeated field (`ScopeSpans.spans`, `ScopeLogs.log_records`: tag 2),
/// and how many.
#[derive(Debug, Default)]
struct Written {
    /// `gap` bytes of room for the request's head ([`wire::head`]), then the items. The
    /// request is made in place and handed out as a slice of this buffer: the head written
    /// at the end of the room, the tail appended. Putting the request around a copy of the
    /// items instead was 1 % of veil's CPU at 64 connections, and as much again in page
    /// faults on the fresh copy (stop 58's profile, docs/performance.md).
    bytes: Vec<u8>,
    count: usize,
    /// The recent batches' items in bytes ([`recent_size`]); a quarter more is reserved at
    /// the first message of the next: a batch grown by doubling copied itself ~2× over on its
    /// way to a few MB (callgrind, `benches/export.rs`), and one that outgrew the last
    /// batch's size (a full batch after one flushed by its age) was copied once more (stop
    /// 58's profile). Reserved only once a message comes, so an idle exporter holds no
    /// buffer.
    hint: usize,
    /// The room kept for the head: the last head's length and [`HEAD_SLACK`] (0 before the
    /// first request, whose head is then put around a copy of the items).
    gap: usize,
}

/// Room kept for the head beyond the last head's length: the head's two lengths that count
/// the items can each grow by up to 9 bytes from one batch to the next (10-byte varints).
const HEAD_SLACK: usize = 18;

impl Written {
    /// Appends `m` as one more item.
    fn push<D: wire::Describe>(&mut self, lens: &mut Vec<usize>, m: &D) {
        if self.bytes.is_empty() {
            self.bytes.reserve(self.gap + self.hint + self.hint / 4);
            self.bytes.resize(self.gap, 0);
        }
        // A disagreement of the writer's passes is logged there, and the message written by
        // `prost` instead: nothing to do here either way.
        let _ = wire::append(&mut self.bytes, lens, ITEMS, m);
        self.count += 1;
    }

    /// The request around the items, which are taken, with `kept` (messages pushed into the
    /// batch as messages) written after them; `None` when there is nothing. Gives the
    /// writer's scratch back once it has grown past what ordinary records need: a record with
    /// a huge content tree (a million parts) needs one entry per nested message, and an idle
    /// exporter must not keep that (found by review at stop 54).
    fn take_request<M: wire::Describe>(
        &mut self,
        lens: &mut Vec<usize>,
        kept: Vec<M>,
        res: &ResourceInfo,
    ) -> Option<Bytes> {
        const KEEP: usize = 1 << 14;
        for m in &kept {
            self.push(lens, m);
        }
        if lens.capacity() > KEEP {
            *lens = Vec::new();
        }
        if self.count == 0 {
            return None;
        }
        let mut bytes = std::mem::take(&mut self.bytes);
        let gap = std::mem::replace(&mut self.gap, 0);
        self.count = 0;
        let items = bytes.len() - gap;
        self.hint = recent_size(self.hint, items);
        let (resource, scope) = (res.to_proto(), scope());
        let head = wire::head(&resource, &scope, items);
        self.gap = head.len() + HEAD_SLACK;
        let Some(at) = gap.checked_sub(head.len()) else {
            // No room (the first request, or a resource that grew): around a copy.
            return Some(wire::around(&resource, &scope, &bytes[gap..]).into());
        };
        bytes[at..gap].copy_from_slice(&head);
        wire::tail(&mut bytes);
        Some(Bytes::from(fitted(bytes)).slice(at..))
    }
}

/// The size to reserve for the next batch, given the last reservation's `hint` and the size
/// of the batch just flushed: the larger of the two, the hint shrinking by a quarter per
/// batch, so that one small batch (flushed by its age) does not leave the next full one to
/// grow by copying, and the reservation still follows the load down within a few batches.
pub(crate) fn recent_size(hint: usize, last: usize) -> usize {
    last.max(hint - hint.div_ceil(4))
}

/// `v` with its spare capacity given back when it is more than half its length: a small
/// batch after a large one (the reservation follows the load down only gradually) would
/// otherwise keep the large one's room while it waits in a queue, where only its length is
/// counted. The allocator shrinks a large allocation in place; a small one is copied, which
/// costs little.
pub(crate) fn fitted<T>(mut v: Vec<T>) -> Vec<T> {
    if v.capacity() - v.len() > v.len() / 2 {
        v.shrink_to_fit();
    }
    v
}

/// The repeated field of the items in `ScopeSpans` and `ScopeLogs`.
const ITEMS: u32 = 2;

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
    /// An empty batch whose traces and logs go out in `traces` and `logs`: a protobuf signal
    /// is written as records are pushed, an OTLP/JSON one kept as messages. `Batch::default()`
    /// keeps both as messages (OTLP/JSON).
    pub fn new(traces: Encoding, logs: Encoding) -> Self {
        let written = |e: Encoding| (e == Encoding::Protobuf).then(Written::default);
        Batch {
            written_spans: written(traces),
            written_logs: written(logs),
            ..Batch::default()
        }
    }

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
        // Built once when a signal keeps messages: the log event carries the span's attributes.
        let span_message = to.traces && self.written_spans.is_none();
        let log_message = to.logs && self.written_logs.is_none();
        let mut attributes = (span_message || log_message).then(|| record_attributes(r));
        if to.traces {
            match &mut self.written_spans {
                Some(w) => w.push(&mut self.lens, &RecordSpan::new(r, &ids)),
                None => {
                    let a = if log_message {
                        attributes.clone()
                    } else {
                        attributes.take()
                    };
                    self.spans.push(span_with(r, &ids, a.unwrap_or_default()));
                }
            }
        }
        if to.logs {
            match &mut self.written_logs {
                Some(w) => w.push(&mut self.lens, &RecordLog::new(r, &ids)),
                None => self
                    .logs
                    .push(log_with(r, &ids, attributes.take().unwrap_or_default())),
            }
        }
    }

    /// Adds a log record made elsewhere (an audit or feedback event).
    pub fn push_log(&mut self, log: LogRecord) {
        match &mut self.written_logs {
            Some(w) => w.push(&mut self.lens, &log),
            None => self.logs.push(log),
        }
    }

    /// The spans and log records in the batch.
    pub fn counts(&self) -> (usize, usize) {
        let written = |w: &Option<Written>| w.as_ref().map_or(0, |w| w.count);
        (
            self.spans.len() + written(&self.written_spans),
            self.logs.len() + written(&self.written_logs),
        )
    }

    /// Number of items (spans plus logs).
    pub fn len(&self) -> usize {
        let (spans, logs) = self.counts();
        spans + logs
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The traces request in the encoding given to [`Batch::new`], `None` when there are no
    /// spans; the batch's spans are taken (a span pushed as a message into a protobuf batch
    /// goes out with the written ones).
    pub fn traces_payload(&mut self, res: &ResourceInfo) -> Option<Bytes> {
        match &mut self.written_spans {
            Some(w) => w.take_request(&mut self.lens, std::mem::take(&mut self.spans), res),
            None => self
                .traces_request(res)
                .map(|req| encode(&req, Encoding::Json).into()),
        }
    }

    /// The logs request in the encoding given to [`Batch::new`], `None` when there are no log
    /// records; the batch's log records are taken.
    pub fn logs_payload(&mut self, res: &ResourceInfo) -> Option<Bytes> {
        match &mut self.written_logs {
            Some(w) => w.take_request(&mut self.lens, std::mem::take(&mut self.logs), res),
            None => self
                .logs_request(res)
                .map(|req| encode(&req, Encoding::Json).into()),
        }
    }

    /// The traces request of the spans kept as messages, `None` when there are none (no
    /// empty envelopes).
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

    /// The logs request of the log records kept as messages, `None` when there are none.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::testing;

    #[test]
    fn a_huge_records_scratch_is_given_back_at_the_flush() {
        let mut r = testing::openai_chat("r-huge");
        let part = serde_json::json!({"type": "text", "content": "a"});
        r.input_messages = Some(serde_json::json!([
            {"role": "user", "parts": vec![part; 20_000]}
        ]));
        let res = ResourceInfo::from_env(&|_| None, None);
        let mut b = Batch::new(Encoding::Protobuf, Encoding::Protobuf);
        b.push_record(&r);
        // One length per nested message: well past what the batch keeps between flushes.
        assert!(b.lens.capacity() > 1 << 14, "{}", b.lens.capacity());
        assert!(b.traces_payload(&res).is_some());
        assert!(b.logs_payload(&res).is_some());
        assert_eq!(b.lens.capacity(), 0);
        // An ordinary record's scratch stays for the next batch.
        b.push_record(&testing::openai_chat("r-small"));
        let kept = b.lens.capacity();
        assert!(kept > 0);
        b.traces_payload(&res);
        b.logs_payload(&res);
        assert_eq!(b.lens.capacity(), kept);
    }

    /// The memory of a written signal's buffer: its room for the head, then its items.
    fn items_at(w: &Option<Written>) -> std::ops::Range<usize> {
        let w = w.as_ref().expect("a protobuf signal");
        let base = w.bytes.as_ptr() as usize;
        base..base + w.bytes.capacity()
    }

    #[test]
    fn requests_are_made_around_the_items_in_place_and_are_prosts_bytes() {
        use prost::Message;
        let host = |h: &str| ResourceInfo::from_env(&|_| None, Some(h.into()));
        let mut b = Batch::new(Encoding::Protobuf, Encoding::Protobuf);
        // Batch sizes that move the items' lengths across varint widths (1 record, ~2 KB,
        // then 300, ~500 KB), a resource that grows between two batches (no room: around a
        // copy) and shrinks back, and a small batch after large ones (its unused room given
        // back: a small buffer moves). Whether each request is a slice of the buffer its
        // items were written into: `None` where that is not the point.
        let rounds = [
            (1, host("h"), Some(false)),
            (300, host("h"), Some(true)),
            (300, host("h"), Some(true)),
            (300, host("a-much-longer-host-name.example"), Some(false)),
            (300, host("h"), Some(true)),
            (1, host("h"), None),
        ];
        for (round, (records, res, in_place)) in rounds.iter().enumerate() {
            let mut built = Batch::default();
            for i in 0..*records {
                let r = testing::openai_chat(&format!("r-{round}-{i}"));
                b.push_record(&r);
                built.push_record(&r);
            }
            let (spans, logs) = (items_at(&b.written_spans), items_at(&b.written_logs));
            let traces = b.traces_payload(res).expect("spans");
            let logs_req = b.logs_payload(res).expect("logs");
            assert_eq!(
                &traces[..],
                &built.traces_request(res).unwrap().encode_to_vec()[..],
                "round {round}"
            );
            assert_eq!(
                &logs_req[..],
                &built.logs_request(res).unwrap().encode_to_vec()[..],
                "round {round}"
            );
            let Some(in_place) = *in_place else { continue };
            for (payload, buffer) in [(&traces, spans), (&logs_req, logs)] {
                assert_eq!(
                    buffer.contains(&(payload.as_ptr() as usize)),
                    in_place,
                    "round {round}"
                );
            }
        }
    }

    #[test]
    fn a_batch_gives_back_room_it_did_not_use() {
        let mut v: Vec<u8> = Vec::with_capacity(1 << 20);
        v.extend_from_slice(&[1; 1000]);
        let v = fitted(v);
        assert!(v.capacity() < 1500, "{}", v.capacity());
        assert_eq!(v, [1; 1000]);
        // A batch about the size reserved keeps its buffer as it is.
        let mut v: Vec<u8> = Vec::with_capacity(1 << 20);
        v.resize(900 << 10, 2);
        let at = v.as_ptr();
        let kept = fitted(v);
        assert_eq!((kept.as_ptr(), kept.capacity()), (at, 1 << 20));
    }

    #[test]
    fn the_reservation_outlasts_one_small_batch_and_follows_the_load_down() {
        assert_eq!(recent_size(0, 1000), 1000);
        // A batch flushed by its age after a full one keeps most of the reservation.
        assert_eq!(recent_size(1000, 10), 750);
        // A larger batch raises it at once.
        assert_eq!(recent_size(750, 2000), 2000);
        // Small batches bring it down within a few dozen flushes, to zero when idle.
        let mut hint = 1 << 20;
        for _ in 0..60 {
            hint = recent_size(hint, 0);
        }
        assert_eq!(hint, 0);
    }
}
