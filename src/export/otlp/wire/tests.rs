//! `wire` against `prost`: the same bytes for real records and for random messages that use
//! every field, every `AnyValue` member and the values proto3 treats specially (defaults,
//! negative `int32`s, NaN and -0.0, empty strings inside a `oneof`).

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    AnyValue, ArrayValue, EntityRef, InstrumentationScope, KeyValue, KeyValueList, any_value,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status, span};
use proptest::prelude::*;
use prost::Message;

use super::{log_record, logs, span as span_bytes, traces};
use crate::export::otlp::{Batch, ResourceInfo};
use crate::export::testing;

#[test]
fn real_records_encode_to_prosts_bytes() {
    let res = ResourceInfo::from_env(
        &|k| (k == "OTEL_RESOURCE_ATTRIBUTES").then(|| "deployment.environment=prod".into()),
        Some("host-a".into()),
    );
    let mut batch = Batch::default();
    for r in testing::fixtures() {
        batch.push_record(&r);
    }
    let t = batch.traces_request(&res).expect("spans");
    let l = batch.logs_request(&res).expect("logs");
    // The content bodies are what the encoder is for: the fixture must have some.
    let deepest = l.resource_logs[0].scope_logs[0]
        .log_records
        .iter()
        .filter_map(|r| r.body.as_ref())
        .map(depth)
        .max();
    assert!(deepest >= Some(6), "a log body {deepest:?} levels deep");
    assert_eq!(traces(&t), t.encode_to_vec());
    assert_eq!(logs(&l), l.encode_to_vec());
    for s in &t.resource_spans[0].scope_spans[0].spans {
        assert_eq!(span_bytes(s), s.encode_to_vec());
    }
    for r in &l.resource_logs[0].scope_logs[0].log_records {
        assert_eq!(log_record(r), r.encode_to_vec());
    }
}

#[test]
fn empty_requests_and_messages_encode_to_prosts_bytes() {
    let t = ExportTraceServiceRequest::default();
    assert_eq!(traces(&t), t.encode_to_vec());
    let l = ExportLogsServiceRequest::default();
    assert_eq!(logs(&l), l.encode_to_vec());
    // Present but empty nested messages are written (tag and a zero length), not omitted.
    let t = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource::default()),
            scope_spans: vec![ScopeSpans::default()],
            schema_url: String::new(),
        }],
    };
    assert_eq!(traces(&t), t.encode_to_vec());
    let r = LogRecord {
        body: Some(AnyValue { value: None }),
        attributes: vec![KeyValue::default()],
        ..Default::default()
    };
    assert_eq!(log_record(&r), r.encode_to_vec());
}

/// How many `AnyValue`s deep a value goes.
fn depth(v: &AnyValue) -> usize {
    use any_value::Value;
    1 + match &v.value {
        Some(Value::ArrayValue(a)) => a.values.iter().map(depth).max().unwrap_or(0),
        Some(Value::KvlistValue(l)) => l
            .values
            .iter()
            .filter_map(|kv| kv.value.as_ref())
            .map(depth)
            .max()
            .unwrap_or(0),
        _ => 0,
    }
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-zé\u{1F600} ]{0,12}"]
}

fn id() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![Just(Vec::new()), prop::collection::vec(any::<u8>(), 8..=16)]
}

fn i32_edge() -> impl Strategy<Value = i32> {
    prop_oneof![
        Just(0),
        Just(-1),
        Just(i32::MIN),
        Just(i32::MAX),
        any::<i32>()
    ]
}

fn u64_edge() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()]
}

fn any_value() -> impl Strategy<Value = AnyValue> {
    use any_value::Value;
    let leaf = prop_oneof![
        Just(None),
        text().prop_map(|s| Some(Value::StringValue(s))),
        any::<bool>().prop_map(|b| Some(Value::BoolValue(b))),
        prop_oneof![Just(0i64), Just(-1), Just(i64::MIN), any::<i64>()]
            .prop_map(|i| Some(Value::IntValue(i))),
        prop_oneof![
            Just(0.0f64),
            Just(-0.0),
            Just(f64::NAN),
            Just(f64::INFINITY),
            any::<f64>()
        ]
        .prop_map(|d| Some(Value::DoubleValue(d))),
        prop::collection::vec(any::<u8>(), 0..6).prop_map(|b| Some(Value::BytesValue(b))),
        i32_edge().prop_map(|i| Some(Value::StringValueStrindex(i))),
    ]
    .prop_map(|value| AnyValue { value });
    leaf.prop_recursive(6, 48, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|values| AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue { values })),
            }),
            prop::collection::vec(key_value_with(inner), 0..4).prop_map(|values| AnyValue {
                value: Some(any_value::Value::KvlistValue(KeyValueList { values })),
            }),
        ]
    })
}

fn key_value_with(value: impl Strategy<Value = AnyValue>) -> impl Strategy<Value = KeyValue> {
    (text(), prop::option::of(value), i32_edge()).prop_map(|(key, value, key_strindex)| KeyValue {
        key,
        value,
        key_strindex,
    })
}

fn attributes() -> impl Strategy<Value = Vec<KeyValue>> {
    prop::collection::vec(key_value_with(any_value()), 0..4)
}

fn resource() -> impl Strategy<Value = Option<Resource>> {
    prop::option::of(
        (attributes(), any::<u32>(), text()).prop_map(|(attributes, d, s)| Resource {
            attributes,
            dropped_attributes_count: d,
            entity_refs: vec![EntityRef {
                schema_url: s.clone(),
                r#type: s,
                id_keys: vec!["k".into()],
                description_keys: Vec::new(),
            }],
        }),
    )
}

fn scope() -> impl Strategy<Value = Option<InstrumentationScope>> {
    prop::option::of((text(), text(), attributes(), any::<u32>()).prop_map(
        |(name, version, attributes, dropped_attributes_count)| InstrumentationScope {
            name,
            version,
            attributes,
            dropped_attributes_count,
        },
    ))
}

fn span_strategy() -> impl Strategy<Value = Span> {
    (
        (id(), id(), text(), id(), any::<u32>(), text(), i32_edge()),
        (
            u64_edge(),
            u64_edge(),
            attributes(),
            any::<u32>(),
            any::<u32>(),
        ),
        (any::<u32>(), prop::option::of((text(), i32_edge()))),
        (any::<bool>(), attributes(), any::<u32>()),
    )
        .prop_map(
            |(
                (trace_id, span_id, trace_state, parent_span_id, flags, name, kind),
                (start, end, attributes, dropped_attributes_count, dropped_events_count),
                (dropped_links_count, status),
                (with_event_and_link, link_attributes, link_flags),
            )| Span {
                trace_id: trace_id.clone(),
                span_id: span_id.clone(),
                trace_state: trace_state.clone(),
                parent_span_id,
                flags,
                name,
                kind,
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                attributes,
                dropped_attributes_count,
                events: if with_event_and_link {
                    vec![span::Event {
                        time_unix_nano: start,
                        name: "e".into(),
                        attributes: link_attributes.clone(),
                        dropped_attributes_count: 1,
                    }]
                } else {
                    Vec::new()
                },
                dropped_events_count,
                links: if with_event_and_link {
                    vec![span::Link {
                        trace_id,
                        span_id,
                        trace_state,
                        attributes: link_attributes,
                        dropped_attributes_count: 0,
                        flags: link_flags,
                    }]
                } else {
                    Vec::new()
                },
                dropped_links_count,
                status: status.map(|(message, code)| Status { message, code }),
            },
        )
}

fn log_strategy() -> impl Strategy<Value = LogRecord> {
    (
        (u64_edge(), u64_edge(), i32_edge(), text()),
        (
            prop::option::of(any_value()),
            attributes(),
            any::<u32>(),
            any::<u32>(),
        ),
        (id(), id(), text()),
    )
        .prop_map(
            |(
                (time_unix_nano, observed_time_unix_nano, severity_number, severity_text),
                (body, attributes, dropped_attributes_count, flags),
                (trace_id, span_id, event_name),
            )| LogRecord {
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
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_traces_requests_encode_to_prosts_bytes(
        parts in prop::collection::vec(
            (resource(), prop::collection::vec(
                (scope(), prop::collection::vec(span_strategy(), 0..4), text()), 0..3), text()),
            0..3),
    ) {
        let req = ExportTraceServiceRequest {
            resource_spans: parts
                .into_iter()
                .map(|(resource, scopes, schema_url)| ResourceSpans {
                    resource,
                    scope_spans: scopes
                        .into_iter()
                        .map(|(scope, spans, schema_url)| ScopeSpans { scope, spans, schema_url })
                        .collect(),
                    schema_url,
                })
                .collect(),
        };
        prop_assert_eq!(traces(&req), req.encode_to_vec());
    }

    #[test]
    fn random_logs_requests_encode_to_prosts_bytes(
        parts in prop::collection::vec(
            (resource(), prop::collection::vec(
                (scope(), prop::collection::vec(log_strategy(), 0..4), text()), 0..3), text()),
            0..3),
    ) {
        let req = ExportLogsServiceRequest {
            resource_logs: parts
                .into_iter()
                .map(|(resource, scopes, schema_url)| ResourceLogs {
                    resource,
                    scope_logs: scopes
                        .into_iter()
                        .map(|(scope, log_records, schema_url)| ScopeLogs {
                            scope,
                            log_records,
                            schema_url,
                        })
                        .collect(),
                    schema_url,
                })
                .collect(),
        };
        prop_assert_eq!(logs(&req), req.encode_to_vec());
    }
}
