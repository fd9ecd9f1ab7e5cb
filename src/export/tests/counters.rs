//! Exported counters: drops, content drops and parse errors reach `/v1/metrics` and the records (`otlp::metrics`).

use super::*;

// See: veil#10. One saturated run exported `veil.exchanges.dropped = 294` while 118,287
// exchanges went unrecorded: the proxy → pipeline drops were never exported.
#[test]
fn every_drop_point_is_exported_under_veil_exchanges_dropped() {
    use crate::exchange::queue;
    let registry = Arc::new(crate::counters::Counters::default());
    let (tx, rx) = queue::channel(1, 1 << 20, registry.clone());
    let counters = &rx.counters().queue;
    counters.dropped_full.add(118_000);
    counters.dropped_bytes.add(280);
    counters.refused.add(7);
    drop(rx);
    let ex = crate::seal::tests::openai_chat();
    assert!(
        tx.try_send(ex).is_err(),
        "a closed queue drops, and counts it"
    );
    registry.ledger.dropped.add(35);
    registry.pipeline.export_dropped.add(294);
    let req = otlp::metrics_request(
        &otlp::ResourceInfo::from_env(&|_| None, None),
        &registry,
        std::time::SystemTime::now(),
        std::time::SystemTime::now(),
    );
    let all = &req.resource_metrics[0].scope_metrics[0].metrics;
    let find = |name: &str| {
        all.iter()
            .find(|x| x.name == name)
            .unwrap_or_else(|| panic!("{name}"))
    };
    let Some(metric::Data::Sum(dropped)) = &find("veil.exchanges.dropped").data else {
        panic!("veil.exchanges.dropped is not a sum");
    };
    let by_reason: BTreeMap<String, i64> = dropped
        .data_points
        .iter()
        .map(|p| {
            let reason = testing::s(&attrs(&p.attributes), "veil.drop.reason").unwrap();
            let Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(v)) =
                p.value
            else {
                panic!("integer points");
            };
            (reason, v)
        })
        .collect();
    assert_eq!(by_reason["recording_queue_full"], 118_000);
    assert_eq!(by_reason["recording_queue_bytes"], 280);
    assert_eq!(by_reason["recording_stopped"], 1);
    assert_eq!(by_reason["export_queue_full"], 294);
    assert_eq!(by_reason["ledger_write_failed"], 35);
    let Some(metric::Data::Sum(refused)) = &find("veil.exchanges.refused").data else {
        panic!("veil.exchanges.refused is not a sum");
    };
    assert_eq!(
        refused.data_points[0].value,
        Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(7))
    );
}

/// Every entry of the registry reaches the metrics request under its name, label, kind, unit
/// and help, with its own value (each entry holds a distinct one, so a value exported under a
/// neighbour's name fails), and nothing else named `veil.*` is in it.
#[test]
fn every_registry_entry_is_in_the_metrics_request() {
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;
    let registry = crate::counters::Counters::default();
    registry.fill_distinct();
    let req = otlp::metrics_request(
        &otlp::ResourceInfo::from_env(&|_| None, None),
        &registry,
        std::time::SystemTime::now(),
        std::time::SystemTime::now(),
    );
    let all = &req.resource_metrics[0].scope_metrics[0].metrics;
    // (name, label value) → value, from the request.
    let mut exported: BTreeMap<(String, Option<String>), i64> = BTreeMap::new();
    for m in all.iter().filter(|m| m.name.starts_with("veil.")) {
        let points = match &m.data {
            Some(metric::Data::Sum(s)) => {
                assert!(
                    s.is_monotonic && s.aggregation_temporality == 2,
                    "{}",
                    m.name
                );
                &s.data_points
            }
            Some(metric::Data::Gauge(g)) => &g.data_points,
            other => panic!("{}: {other:?}", m.name),
        };
        for p in points {
            let label = p.attributes.first().map(|kv| {
                let Some(any_value::Value::StringValue(v)) =
                    kv.value.as_ref().and_then(|v| v.value.clone())
                else {
                    panic!("{}: string label expected", m.name);
                };
                v
            });
            let Some(Value::AsInt(v)) = p.value else {
                panic!("{}: integer points", m.name);
            };
            let key = (m.name.clone(), label);
            assert!(exported.insert(key.clone(), v).is_none(), "{key:?} twice");
        }
    }
    let snapshot = registry.snapshot();
    for (d, v) in &snapshot {
        let key = (d.name.to_string(), d.label.map(|(_, l)| l.to_string()));
        assert_eq!(
            exported.get(&key),
            Some(&(*v as i64)),
            "{} ({:?}) is not exported with its value",
            d.field,
            key
        );
        let m = all.iter().find(|m| m.name == d.name).unwrap();
        assert_eq!((m.unit.as_str(), m.description.as_str()), (d.unit, d.help));
        let is_sum = matches!(m.data, Some(metric::Data::Sum(_)));
        assert_eq!(
            is_sum,
            d.kind == crate::counters::MetricKind::Counter,
            "{}",
            d.name
        );
        if let Some((key, _)) = d.label {
            let labelled = match &m.data {
                Some(metric::Data::Sum(s)) => &s.data_points,
                Some(metric::Data::Gauge(g)) => &g.data_points,
                _ => unreachable!(),
            };
            assert!(
                labelled.iter().all(|p| p.attributes[0].key == key),
                "{}",
                d.name
            );
        }
    }
    assert_eq!(
        exported.len(),
        snapshot.len(),
        "only registry entries are veil.*"
    );
}

// See: veil#10
#[tokio::test]
async fn content_dropped_and_parse_error_are_attributes_and_the_drop_is_counted() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut dropped = testing::base_record("r-dropped");
    dropped.content_dropped = Some("redaction_bytes");
    let mut unparsed = testing::opaque("r-unparsed");
    unparsed.parse_error = Some("request body is not JSON: expected value at line 1".into());
    let recs = vec![dropped, unparsed, testing::openai_chat("r-plain")];
    let metrics = export_all(settings(dir.path(), Some(&rx.endpoint()), &[]), recs).await;
    assert_eq!(metrics.export.content_dropped.get(), 1);

    let spans: BTreeMap<String, BTreeMap<String, _>> = rx
        .spans()
        .into_iter()
        .map(|s| {
            let a = attrs(&s.attributes);
            (testing::s(&a, "veil.request.id").unwrap(), a)
        })
        .collect();
    assert_eq!(
        testing::s(&spans["r-dropped"], "veil.content_dropped").as_deref(),
        Some("redaction_bytes")
    );
    assert_eq!(
        testing::s(&spans["r-unparsed"], "veil.parse_error").as_deref(),
        Some("request body is not JSON: expected value at line 1")
    );
    for (id, a) in &spans {
        if id != "r-dropped" {
            assert!(testing::s(a, "veil.content_dropped").is_none(), "{id}");
        }
        if id != "r-unparsed" {
            assert!(testing::s(a, "veil.parse_error").is_none(), "{id}");
        }
    }
    let m = rx.metrics();
    let last = m.last().expect("a metrics export at shutdown");
    let counter = last.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .find(|m| m.name == "veil.exchanges.content_dropped")
        .expect("veil.exchanges.content_dropped is exported");
    let Some(metric::Data::Sum(sum)) = &counter.data else {
        panic!("veil.exchanges.content_dropped is not a sum");
    };
    assert!(sum.is_monotonic);
    assert_eq!(
        sum.data_points[0].value,
        Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(1))
    );
}
