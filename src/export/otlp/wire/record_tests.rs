//! Spans and log records written straight from a record ([`RecordSpan`], [`RecordLog`],
//! [`Batch::new`] with protobuf) against the messages `span::record_span` and
//! `log::record_log` build, encoded by `prost`: the same bytes, for the export fixtures, for a
//! record that sets every optional field, and for random records.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use prost::Message;

use super::{Describe, Fields, RecordLog, RecordSpan, append};
use crate::exchange::OutcomeKind;
use crate::exchange::WebSocketSession;
use crate::exchange::realtime::RealtimeTotals;
use crate::exchange::traceparent::TraceParent;
use crate::export::otlp::{
    AuditEvent, Batch, Encoding, ResourceInfo, Signals, SpanIds, audit_log, encode, record_log,
    record_span,
};
use crate::export::testing;
use crate::record::Record;
use opentelemetry_proto::tonic::logs::v1::LogRecord;

/// What `prost` writes for `m` as field 2 of its parent (a scope's repeated items).
fn as_item<M: Message>(m: &M) -> Vec<u8> {
    let mut out = Vec::new();
    prost::encoding::message::encode(2, m, &mut out);
    out
}

/// `r`'s span and log record written straight, against the built messages' bytes.
fn assert_written_as_built(r: &Record) {
    let ids = SpanIds::for_record(r);
    let (mut out, mut lens) = (Vec::new(), Vec::new());
    append(&mut out, &mut lens, 2, &RecordSpan::new(r, &ids));
    assert_eq!(
        out,
        as_item(&record_span(r, &ids)),
        "span of {}",
        r.request_id
    );
    out.clear();
    append(&mut out, &mut lens, 2, &RecordLog::new(r, &ids));
    assert_eq!(
        out,
        as_item(&record_log(r, &ids)),
        "log of {}",
        r.request_id
    );
}

/// A record with every optional field the attributes read set, in the forms that have their
/// own encoding: parameters of each JSON kind, header and detector names in capitals, a
/// content tree with empty keys and nulls, numbers past `i64`.
fn every_field(id: &str) -> Record {
    let mut r = testing::openai_chat(id);
    r.trace_parent = Some(TraceParent {
        trace_id: [7; 16],
        parent_span_id: [9; 8],
        flags: 0,
        trace_state: None,
    });
    r.time_to_first_chunk = Some(Duration::from_micros(1234));
    r.status = Some(503);
    r.error_type = None;
    r.stream = true;
    r.usage.cache_creation_tokens = Some(u64::MAX);
    r.usage.input_audio_tokens = Some(0);
    r.usage.output_audio_tokens = Some(3);
    r.usage.cache_read_audio_tokens = Some(1);
    r.request_params = BTreeMap::from([
        ("gen_ai.request.custom".into(), serde_json::json!("x")),
        ("seed".into(), serde_json::json!(-4)),
        ("stop_sequences".into(), serde_json::json!(["\n", ""])),
        ("logit_bias".into(), serde_json::json!({"50256": -100})),
        ("mixed".into(), serde_json::json!([1, "a"])),
        ("nothing".into(), serde_json::Value::Null),
        ("big".into(), serde_json::json!(u64::MAX)),
        ("numbers".into(), serde_json::json!([1.5, -2, 3])),
        ("empty".into(), serde_json::json!([])),
        ("flag".into(), serde_json::json!(false)),
    ]);
    r.redactions.insert("API_KEY".into(), 0);
    r.cost_usd = Some(-0.0);
    r.truncated = true;
    r.aborted = true;
    r.content_dropped = Some("over_budget");
    r.parse_error = Some("unexpected end of input".into());
    r.tool_names = vec!["lookup".into(), String::new()];
    r.request_headers = vec![
        ("X-Request-ID".into(), "abc".into()),
        ("accept".into(), String::new()),
    ];
    r.response_headers = vec![("OpenAI-Processing-MS".into(), "310".into())];
    r.websocket = Some(WebSocketSession {
        frames_sent: 4,
        frames_received: 9,
        close_code: Some(1000),
        unframed: false,
        session: None,
        realtime: Some(RealtimeTotals {
            responses: 2,
            input_tokens: 10,
            output_tokens: 20,
            input_audio_bytes: 0,
            output_audio_bytes: 4800,
            events_lost: 1,
        }),
    });
    r.system_instructions = Some(serde_json::json!([{"type": "text", "content": ""}]));
    r.input_messages = Some(serde_json::json!([
        {"role": "user", "": null, "parts": [{"type": "text", "content": "é\u{1F600}"}],
         "n": 1e300, "m": -1, "u": u64::MAX, "t": true, "a": [[], {}]}
    ]));
    r.output_messages = Some(serde_json::json!([]));
    r
}

#[test]
fn records_are_written_as_their_built_messages_encode() {
    let mut session_response = testing::openai_chat("r-session");
    session_response.websocket = Some(WebSocketSession {
        session: Some("r-parent".into()),
        ..WebSocketSession::default()
    });
    let mut failed_no_status = testing::opaque("r-failed");
    failed_no_status.status = None;
    failed_no_status.outcome = OutcomeKind::UpstreamFailed;
    let mut failed_with_type = testing::upstream_error("r-typed");
    failed_with_type.status = None;
    let others = [
        every_field("r-every"),
        session_response,
        failed_no_status,
        failed_with_type,
    ];
    for r in testing::fixtures().iter().chain(&others) {
        assert_written_as_built(r);
    }
}

/// Equal bytes; on a difference, where it starts rather than two dumps of kilobytes.
fn same(a: &[u8], b: &[u8]) {
    let at = a.iter().zip(b).position(|(x, y)| x != y);
    assert!(
        a == b,
        "lengths {} and {}, first difference at {at:?}",
        a.len(),
        b.len()
    );
}

/// A message whose second visit writes more than its first: a writer bug, made on purpose.
struct Fickle(std::cell::Cell<u32>);

impl Describe for Fickle {
    fn fields<F: Fields>(&self, f: &mut F) {
        let visits = self.0.get() + 1;
        self.0.set(visits);
        f.bytes(1, &b"abc"[..visits as usize]);
    }
    fn prost_field(&self, tag: u32, out: &mut Vec<u8>) {
        prost::encoding::string::encode(tag, &"prost".to_string(), out);
    }
}

#[test]
fn passes_that_disagree_leave_the_message_to_prost() {
    let (mut out, mut lens) = (b"before".to_vec(), Vec::new());
    assert!(!append(&mut out, &mut lens, 2, &Fickle(Default::default())));
    let mut expected = b"before".to_vec();
    prost::encoding::string::encode(2, &"prost".to_string(), &mut expected);
    assert_eq!(out, expected);
}

fn resource() -> ResourceInfo {
    ResourceInfo::from_env(
        &|k| (k == "OTEL_RESOURCE_ATTRIBUTES").then(|| "deployment.environment=prod".into()),
        Some("host-a".into()),
    )
}

fn audit() -> AuditEvent {
    AuditEvent {
        kind: "forget".into(),
        request_id: "r-openai".into(),
        time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_183_400),
        actor: "admin-api".into(),
        reason: Some("erasure request".into()),
        user_pseudonym: Some("u_3f9a1c0e7b2d4a5c".into()),
    }
}

/// Pushes the fixtures (one of them as a span only, one as a log only) and an audit event
/// (built once by the caller: its observed time is the clock's).
fn fill(b: &mut Batch, audit: &LogRecord) {
    for r in [
        testing::openai_chat("r-openai"),
        every_field("r-every"),
        testing::upstream_error("r-error"),
    ] {
        b.push_record(&r);
    }
    b.push_record_to(
        &testing::embeddings("r-traces-only"),
        Signals {
            traces: true,
            logs: false,
        },
    );
    b.push_record_to(
        &testing::anthropic_stream("r-logs-only"),
        Signals {
            traces: false,
            logs: true,
        },
    );
    b.push_log(audit.clone());
}

#[test]
fn a_protobuf_batch_is_the_message_batchs_request() {
    let (res, event) = (resource(), audit_log(&audit()));
    let mut built = Batch::default();
    fill(&mut built, &event);
    let mut written = Batch::new(Encoding::Protobuf, Encoding::Protobuf);
    fill(&mut written, &event);
    assert_eq!(written.counts(), (4, 5));
    assert_eq!(written.counts(), built.counts());
    // A span pushed as a message into a written batch goes out with the others.
    let extra = record_span(
        &testing::opaque("r-extra"),
        &SpanIds::for_record(&testing::opaque("r-extra")),
    );
    built.spans.push(extra.clone());
    written.spans.push(extra);
    let traces = written.traces_payload(&res).unwrap();
    let logs = written.logs_payload(&res).unwrap();
    same(
        &traces,
        &built.traces_request(&res).unwrap().encode_to_vec(),
    );
    same(&logs, &built.logs_request(&res).unwrap().encode_to_vec());
    // Taken: the batch is empty again, and an empty signal makes no request.
    assert!(written.is_empty());
    assert_eq!(written.traces_payload(&res), None);
    assert_eq!(written.logs_payload(&res), None);
}

#[test]
fn a_json_batch_keeps_messages_and_encodes_them_as_json() {
    let (res, event) = (resource(), audit_log(&audit()));
    let mut built = Batch::default();
    fill(&mut built, &event);
    let traces = encode(&built.traces_request(&res).unwrap(), Encoding::Json);
    let logs = encode(&built.logs_request(&res).unwrap(), Encoding::Json);
    for mut kept in [Batch::new(Encoding::Json, Encoding::Json), Batch::default()] {
        fill(&mut kept, &event);
        assert_eq!(kept.counts(), (4, 5));
        let t = kept.traces_payload(&res).unwrap();
        assert!(
            t.starts_with(b"{\"resourceSpans\""),
            "{}",
            String::from_utf8_lossy(&t)
        );
        same(&t, &traces);
        same(&kept.logs_payload(&res).unwrap(), &logs);
        assert!(kept.is_empty());
    }
    // One signal written, the other kept: each in its own encoding.
    let mut mixed = Batch::new(Encoding::Protobuf, Encoding::Json);
    fill(&mut mixed, &event);
    let mut again = Batch::default();
    fill(&mut again, &event);
    same(
        &mixed.traces_payload(&res).unwrap(),
        &again.traces_request(&res).unwrap().encode_to_vec(),
    );
    same(&mixed.logs_payload(&res).unwrap(), &logs);
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value as J;
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        any::<i64>().prop_map(J::from),
        prop_oneof![Just(u64::MAX), any::<u64>()].prop_map(J::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(J::from),
        "[a-zé\u{1F600} ]{0,8}".prop_map(J::String),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(J::Array),
            prop::collection::btree_map("[a-z]{0,3}", inner, 0..4)
                .prop_map(|m| J::Object(m.into_iter().collect())),
        ]
    })
}

fn name() -> impl Strategy<Value = String> {
    "[A-Za-z_.-]{0,10}"
}

prop_compose! {
    fn random_record()(
        params in prop::collection::btree_map(name(), json_value(), 0..5),
        headers in prop::collection::vec((name(), "[ -~]{0,8}"), 0..4),
        redactions in prop::collection::btree_map("[A-Z_]{1,8}", any::<u64>(), 0..3),
        content in prop::collection::vec(prop::option::of(json_value()), 3),
        status in prop::option::of(prop_oneof![Just(200u16), Just(404), any::<u16>()]),
        error_type in prop::option::of("[a-z_]{0,10}"),
        parent in prop::option::of((any::<[u8; 8]>(), any::<u8>(), prop::option::of("[a-z=,]{0,10}"))),
        model in prop::option::of("[a-z0-9-]{0,10}"),
        tools in prop::collection::vec("[a-z]{0,5}", 0..3),
        cost in prop::option::of(any::<f64>()),
        ws in prop::option::of((any::<u64>(), prop::option::of(any::<u16>()), prop::option::of("[a-z]{1,4}"))),
    ) -> Record {
        let mut r = testing::openai_chat("r-random");
        r.request_params = params;
        r.request_headers = headers.clone();
        r.response_headers = headers;
        r.redactions = redactions;
        let mut content = content.into_iter();
        r.system_instructions = content.next().flatten();
        r.input_messages = content.next().flatten();
        r.output_messages = content.next().flatten();
        r.status = status;
        r.error_type = error_type;
        r.trace_parent = parent.map(|(span, flags, state)| TraceParent {
            trace_id: [3; 16],
            parent_span_id: span,
            flags,
            trace_state: state,
        });
        r.request_model = model;
        r.tool_names = tools;
        r.cost_usd = cost;
        r.websocket = ws.map(|(frames, close_code, session)| WebSocketSession {
            frames_sent: frames,
            frames_received: frames / 2,
            close_code,
            session,
            ..WebSocketSession::default()
        });
        r
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_records_are_written_as_their_built_messages_encode(r in random_record()) {
        let ids = SpanIds::for_record(&r);
        let (mut out, mut lens) = (Vec::new(), Vec::new());
        prop_assert!(append(&mut out, &mut lens, 2, &RecordSpan::new(&r, &ids)));
        prop_assert_eq!(&out, &as_item(&record_span(&r, &ids)));
        out.clear();
        prop_assert!(append(&mut out, &mut lens, 2, &RecordLog::new(&r, &ids)));
        prop_assert_eq!(&out, &as_item(&record_log(&r, &ids)));
    }
}
