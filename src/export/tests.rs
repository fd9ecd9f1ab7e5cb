//! Exporter tests against a real OTLP/HTTP receiver on 127.0.0.1:0.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::metric;

use super::testing::{self, Receiver, attrs};
use super::*;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

/// Settings tuned for tests: short batch age and retry delays.
fn settings(data: &Path, endpoint: Option<&str>, env: &[(&str, &str)]) -> ExporterSettings {
    let mut s = ExporterSettings::resolve(endpoint, data.to_path_buf(), &env_of(env)).unwrap();
    s.batch_age = Duration::from_millis(20);
    s.retry_initial = Duration::from_millis(10);
    s.retry_max = Duration::from_millis(100);
    s.metrics_interval = Duration::from_millis(50);
    s
}

/// Polls `cond` every 10 ms, at most `limit`; returns whether it became true.
async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let rounds = limit.as_millis() / 10 + 1;
    for _ in 0..rounds {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// Request ID → number of accepted spans carrying it.
fn span_counts(rx: &Receiver) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for span in rx.spans() {
        let id = testing::s(&attrs(&span.attributes), "veil.request.id").unwrap();
        *m.entry(id).or_insert(0) += 1;
    }
    m
}

fn records() -> Vec<Record> {
    vec![
        testing::openai_chat("r-openai"),
        testing::anthropic_stream("r-anthropic"),
        testing::embeddings("r-embed"),
        testing::upstream_error("r-error"),
        testing::opaque("r-opaque"),
    ]
}

async fn export_all(s: ExporterSettings, recs: Vec<Record>) -> Arc<Metrics> {
    let exporter = Exporter::start(s, Arc::default()).unwrap();
    let h = exporter.handle();
    for r in recs {
        h.try_send(r).unwrap();
    }
    let metrics = exporter.metrics();
    let report = exporter.shutdown(Duration::from_secs(10)).await;
    assert!(report.drained, "{report:?}");
    metrics
}

#[tokio::test]
async fn spans_follow_the_genai_conventions() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let metrics = export_all(settings(dir.path(), Some(&rx.endpoint()), &[]), records()).await;
    assert_eq!(metrics.exchanges.get(), 5);
    let got = rx.received();
    assert!(
        got.iter()
            .all(|r| r.content_type == "application/x-protobuf"),
        "{got:?}"
    );
    assert!(got.iter().all(|r| r.content_encoding.is_none()));
    let spans: BTreeMap<String, _> = rx
        .spans()
        .into_iter()
        .map(|s| {
            (
                testing::s(&attrs(&s.attributes), "veil.request.id").unwrap(),
                s,
            )
        })
        .collect();
    assert_eq!(spans.len(), 5, "{:?}", spans.keys());

    // OpenAI chat, child of the app's traceparent.
    let sp = &spans["r-openai"];
    let a = attrs(&sp.attributes);
    assert_eq!(sp.name, "chat gpt-4o-mini");
    assert_eq!(sp.kind, 3);
    assert_eq!(hex(&sp.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&sp.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(sp.flags, 769);
    assert_eq!(sp.trace_state, "congo=t61rcWkgMzE");
    assert_eq!(sp.span_id.len(), 8);
    assert_ne!(sp.span_id, vec![0; 8]);
    assert_eq!(
        sp.end_time_unix_nano - sp.start_time_unix_nano,
        1_422_000_000
    );
    assert!(sp.status.is_none());
    for (k, v) in [
        ("gen_ai.operation.name", "chat"),
        ("gen_ai.provider.name", "openai"),
        ("gen_ai.request.model", "gpt-4o-mini"),
        ("gen_ai.response.model", "gpt-4o-mini-2024-07-18"),
        ("gen_ai.response.id", "chatcmpl-9J3u"),
        ("gen_ai.conversation.id", "conv_5j66"),
        ("server.address", "api.openai.com"),
        ("user.id", "u_hmac_3f9a1c0e7b2d"),
        ("enduser.pseudo.id", "u_hmac_3f9a1c0e7b2d"),
        ("veil.request.id", "r-openai"),
        ("veil.feature", "support"),
        ("veil.rules.digest", "b3:abc"),
        ("veil.api_key.fingerprint", "fp_1a2b"),
        ("veil.outcome", "complete"),
    ] {
        assert_eq!(testing::s(&a, k).as_deref(), Some(v), "{k}");
    }
    for (k, v) in [
        ("server.port", 443),
        ("gen_ai.usage.input_tokens", 52),
        ("gen_ai.usage.output_tokens", 19),
        ("gen_ai.usage.cache_read.input_tokens", 12),
        ("gen_ai.usage.reasoning.output_tokens", 4),
        ("gen_ai.request.max_tokens", 256),
        ("veil.redaction.input.count", 2),
        ("veil.redaction.output.count", 1),
        ("veil.redaction.count.email", 2),
        ("veil.redaction.count.person", 1),
        ("http.response.status_code", 200),
    ] {
        assert_eq!(testing::i(&a, k), Some(v), "{k}");
    }
    assert_eq!(testing::d(&a, "gen_ai.request.temperature"), Some(0.2));
    assert_eq!(testing::d(&a, "veil.cost.usd"), Some(0.0000192));
    assert_eq!(testing::b(&a, "veil.truncated"), Some(false));
    assert_eq!(testing::b(&a, "veil.aborted"), Some(false));
    assert_eq!(
        testing::sa(&a, "gen_ai.response.finish_reasons"),
        Some(vec!["stop".to_string()])
    );
    assert_eq!(
        testing::sa(&a, "veil.redaction.types"),
        Some(vec!["EMAIL".to_string(), "PERSON".to_string()])
    );
    assert_eq!(
        testing::sa(&a, "http.request.header.user-agent"),
        Some(vec!["openai-python/1.0".to_string()])
    );
    let input: serde_json::Value =
        serde_json::from_str(&testing::s(&a, "gen_ai.input.messages").unwrap()).unwrap();
    assert_eq!(
        input[0]["parts"][0]["content"],
        "I am [PERSON_1] ([EMAIL_1]), reset my password"
    );
    let output: serde_json::Value =
        serde_json::from_str(&testing::s(&a, "gen_ai.output.messages").unwrap()).unwrap();
    assert_eq!(output[0]["finish_reason"], "stop");
    assert!(!a.contains_key("gen_ai.system_instructions"));
    assert!(!a.contains_key("gen_ai.request.stream"));
    assert!(!a.contains_key("error.type"));

    // Anthropic streaming: new root trace, cache tokens, TTFC, system instructions.
    let sp = &spans["r-anthropic"];
    let a = attrs(&sp.attributes);
    assert_eq!(sp.name, "chat claude-sonnet-4-5");
    assert_eq!(sp.flags, 3);
    assert!(sp.parent_span_id.is_empty());
    assert_eq!(sp.trace_id.len(), 16);
    assert_ne!(sp.trace_id, vec![0; 16]);
    assert_eq!(testing::b(&a, "gen_ai.request.stream"), Some(true));
    assert_eq!(
        testing::d(&a, "gen_ai.response.time_to_first_chunk"),
        Some(0.35)
    );
    assert_eq!(testing::i(&a, "gen_ai.usage.input_tokens"), Some(1200));
    assert_eq!(
        testing::i(&a, "gen_ai.usage.cache_read.input_tokens"),
        Some(1000)
    );
    assert_eq!(
        testing::i(&a, "gen_ai.usage.cache_creation.input_tokens"),
        Some(150)
    );
    assert_eq!(
        testing::s(&a, "gen_ai.provider.name").as_deref(),
        Some("anthropic")
    );
    let sys: serde_json::Value =
        serde_json::from_str(&testing::s(&a, "gen_ai.system_instructions").unwrap()).unwrap();
    assert_eq!(sys[0]["content"], "You support [ORG_1].");
    assert!(!a.contains_key("gen_ai.output.messages"));
    assert_ne!(spans["r-anthropic"].trace_id, spans["r-embed"].trace_id);

    // Embeddings: no finish reasons, no output tokens.
    let sp = &spans["r-embed"];
    let a = attrs(&sp.attributes);
    assert_eq!(sp.name, "embeddings text-embedding-3-small");
    assert!(!a.contains_key("gen_ai.response.finish_reasons"));
    assert!(!a.contains_key("gen_ai.usage.output_tokens"));
    assert_eq!(testing::i(&a, "gen_ai.usage.input_tokens"), Some(8));
    assert_eq!(
        testing::sa(&a, "gen_ai.request.encoding_formats"),
        Some(vec!["float".to_string()])
    );

    // Upstream error: status ERROR, error.type, no usage.
    let sp = &spans["r-error"];
    let a = attrs(&sp.attributes);
    let status = sp.status.as_ref().unwrap();
    assert_eq!(status.code, 2);
    assert!(status.message.contains("429"), "{}", status.message);
    assert_eq!(
        testing::s(&a, "error.type").as_deref(),
        Some("rate_limit_exceeded")
    );
    assert_eq!(testing::i(&a, "http.response.status_code"), Some(429));
    assert!(!a.contains_key("gen_ai.usage.input_tokens"));
    assert!(!a.contains_key("veil.cost.usd"));

    // Opaque: no model in the name, no user, truncated flag.
    let sp = &spans["r-opaque"];
    let a = attrs(&sp.attributes);
    assert_eq!(sp.name, "unknown");
    assert_eq!(testing::b(&a, "veil.truncated"), Some(true));
    assert_eq!(testing::i(&a, "server.port"), Some(8443));
    assert!(!a.contains_key("user.id"));
    assert!(!a.contains_key("gen_ai.request.model"));
    assert!(!a.contains_key("gen_ai.input.messages"));

    // One log event per exchange, correlated, with structured content.
    let logs = rx.logs();
    assert_eq!(logs.len(), 5);
    for log in &logs {
        assert_eq!(log.event_name, otlp::EVENT_NAME);
        let id = testing::s(&attrs(&log.attributes), "veil.request.id").unwrap();
        assert_eq!(log.trace_id, spans[&id].trace_id, "{id}");
        assert_eq!(log.span_id, spans[&id].span_id, "{id}");
    }
    let log = logs
        .iter()
        .find(|l| {
            testing::s(&attrs(&l.attributes), "veil.request.id").as_deref() == Some("r-openai")
        })
        .unwrap();
    assert_eq!(log.flags, 1);
    let Some(any_value::Value::KvlistValue(body)) = log.body.as_ref().and_then(|b| b.value.clone())
    else {
        panic!("log body is not a kvlist: {:?}", log.body);
    };
    let body = attrs(&body.values);
    let Some(any_value::Value::ArrayValue(msgs)) = body["gen_ai.input.messages"].value.clone()
    else {
        panic!("input messages are not structured: {body:?}");
    };
    let Some(any_value::Value::KvlistValue(msg)) = msgs.values[0].value.clone() else {
        panic!("message is not a kvlist");
    };
    assert_eq!(
        testing::s(&attrs(&msg.values), "role").as_deref(),
        Some("user")
    );
    let err_log = logs
        .iter()
        .find(|l| {
            testing::s(&attrs(&l.attributes), "veil.request.id").as_deref() == Some("r-error")
        })
        .unwrap();
    assert_eq!(err_log.severity_number, 17);

    // Metrics: the GenAI histograms with the recommended buckets, and veil's counters.
    let m = rx.metrics();
    let last = m.last().expect("a metrics export at shutdown");
    let metrics: BTreeMap<_, _> = last.resource_metrics[0].scope_metrics[0]
        .metrics
        .iter()
        .map(|m| (m.name.clone(), m.clone()))
        .collect();
    let Some(metric::Data::Histogram(tok)) = &metrics["gen_ai.client.token.usage"].data else {
        panic!("token usage is not a histogram");
    };
    assert_eq!(tok.aggregation_temporality, 2);
    let types: Vec<String> = tok
        .data_points
        .iter()
        .map(|p| testing::s(&attrs(&p.attributes), "gen_ai.token.type").unwrap())
        .collect();
    assert!(types.contains(&"input".to_string()) && types.contains(&"output".to_string()));
    // openai + anthropic + embeddings report input; openai + anthropic report output.
    let input: u64 = tok
        .data_points
        .iter()
        .filter(|p| {
            testing::s(&attrs(&p.attributes), "gen_ai.token.type").as_deref() == Some("input")
        })
        .map(|p| p.count)
        .sum();
    assert_eq!(input, 3);
    assert_eq!(tok.data_points[0].explicit_bounds, metrics::TOKEN_BUCKETS);
    assert_eq!(
        tok.data_points[0].bucket_counts.len(),
        metrics::TOKEN_BUCKETS.len() + 1
    );
    let Some(metric::Data::Histogram(dur)) = &metrics["gen_ai.client.operation.duration"].data
    else {
        panic!("duration is not a histogram");
    };
    assert_eq!(dur.data_points.iter().map(|p| p.count).sum::<u64>(), 5);
    assert_eq!(
        dur.data_points[0].explicit_bounds,
        metrics::DURATION_BUCKETS
    );
    assert!(dur.data_points.iter().any(|p| {
        testing::s(&attrs(&p.attributes), "error.type").as_deref() == Some("rate_limit_exceeded")
    }));
    assert_eq!(metrics["gen_ai.client.operation.duration"].unit, "s");
    let Some(metric::Data::Histogram(ttfc)) =
        &metrics["gen_ai.client.operation.time_to_first_chunk"].data
    else {
        panic!("ttfc is not a histogram");
    };
    assert_eq!(ttfc.data_points.iter().map(|p| p.count).sum::<u64>(), 1);
    let Some(metric::Data::Sum(ex)) = &metrics["veil.exchanges"].data else {
        panic!("veil.exchanges is not a sum");
    };
    assert!(ex.is_monotonic);
    assert_eq!(
        ex.data_points[0].value,
        Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(5))
    );
    for name in [
        "veil.exchanges.dropped",
        "veil.export.failures",
        "veil.spool.bytes",
    ] {
        assert!(metrics.contains_key(name), "{name}");
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test]
async fn json_and_gzip_encodings() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "x-project-name=veil-test"),
        ("OTEL_SERVICE_NAME", "veil-json"),
    ];
    export_all(settings(dir.path(), Some(&rx.endpoint()), &env), records()).await;
    let got = rx.received();
    assert!(!got.is_empty());
    for r in &got {
        assert_eq!(r.content_type, "application/json", "{}", r.path);
        assert_eq!(r.content_encoding.as_deref(), Some("gzip"), "{}", r.path);
    }
    let traces = got.iter().find(|r| r.path == "/v1/traces").unwrap();
    let text = std::str::from_utf8(&traces.body).unwrap();
    // OTLP/JSON quirks (otel-genai.md §2): hex IDs, integer enums, string int64s.
    assert!(
        text.contains(r#""traceId":"4bf92f3577b34da6a3ce929d0e0e4736""#),
        "{text}"
    );
    assert!(text.contains(r#""parentSpanId":"00f067aa0ba902b7""#));
    assert!(text.contains(r#""kind":3"#));
    assert!(text.contains(r#""flags":769"#));
    assert!(text.contains(r#""intValue":"52""#));
    assert!(text.contains(r#""stringValue":"veil-json""#));
    assert_eq!(span_counts(&rx).len(), 5);
    assert_eq!(rx.logs().len(), 5);
    let m = rx.metrics();
    assert!(!m.is_empty());
}

#[tokio::test]
async fn outage_loses_nothing_and_duplicates_nothing() {
    let mut rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), Some(&rx.endpoint()), &[]);
    s.batch_max = 4;
    let exporter = Exporter::start(s, Arc::default()).unwrap();
    let h = exporter.handle();
    let mut n = 0;
    let mut send = |count: usize| {
        for _ in 0..count {
            h.try_send(testing::base_record(&format!("req-{n:04}")))
                .unwrap();
            n += 1;
        }
    };
    // Healthy, then 503, then connections refused, then healthy again.
    send(10);
    assert!(wait_until(Duration::from_secs(10), || span_counts(&rx).len() == 10).await);
    rx.answer(503);
    send(10);
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(10);
    rx.stop();
    send(10);
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(10);
    assert!(
        exporter.metrics().spool_bytes.get() > 0,
        "nothing was spooled during the outage"
    );
    assert!(exporter.metrics().export_failures.get() > 0);
    rx.answer(200);
    rx.restart().await;
    send(10);
    let done = wait_until(Duration::from_secs(20), || span_counts(&rx).len() == 60).await;
    let metrics = exporter.metrics();
    let report = exporter.shutdown(Duration::from_secs(10)).await;
    let counts = span_counts(&rx);
    assert!(done, "only {} of 60 arrived: {counts:?}", counts.len());
    for i in 0..60 {
        let id = format!("req-{i:04}");
        assert_eq!(counts.get(&id), Some(&1), "{id}: {counts:?}");
    }
    assert!(report.drained, "{report:?}");
    assert_eq!(metrics.spool_bytes.get(), 0);
    assert_eq!(metrics.spool_batches_dropped.get(), 0);
    assert_eq!(metrics.batches_rejected.get(), 0);
    // 503 answers were seen and not counted as delivered.
    assert!(rx.received().iter().any(|r| r.answered == 503));
}

#[tokio::test]
async fn non_retryable_answers_are_dropped_and_counted() {
    let rx = Receiver::start().await;
    rx.answer(400);
    let dir = tempfile::tempdir().unwrap();
    let metrics = {
        let exporter = Exporter::start(
            settings(dir.path(), Some(&rx.endpoint()), &[]),
            Arc::default(),
        )
        .unwrap();
        exporter
            .handle()
            .try_send(testing::base_record("bad"))
            .unwrap();
        let m = exporter.metrics();
        let report = exporter.shutdown(Duration::from_secs(5)).await;
        assert!(report.drained);
        m
    };
    // Each request was tried exactly once: never retried, never spooled.
    let traces: Vec<_> = rx
        .received()
        .into_iter()
        .filter(|r| r.path == "/v1/traces")
        .collect();
    assert_eq!(traces.len(), 1);
    assert!(
        metrics.batches_rejected.get() >= 2,
        "traces and logs rejected"
    );
    assert_eq!(metrics.spool_bytes.get(), 0);
}

#[tokio::test]
async fn spool_is_bounded_and_counts_what_it_drops() {
    let mut rx = Receiver::start().await;
    let endpoint = rx.endpoint();
    rx.stop();
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), Some(&endpoint), &[]);
    s.batch_max = 1;
    s.spool_max_bytes = 6_000;
    let exporter = Exporter::start(s.clone(), Arc::default()).unwrap();
    let h = exporter.handle();
    let metrics = exporter.metrics();
    for i in 0..40 {
        h.try_send(testing::base_record(&format!("b-{i:02}")))
            .unwrap();
        // One batch per record: give the batcher its 20 ms batch age now and then.
        if i % 8 == 7 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    let report = exporter.shutdown(Duration::from_millis(300)).await;
    assert!(!report.drained);
    assert!(metrics.spool_batches_dropped.get() > 0, "nothing dropped");
    assert!(metrics.spool_bytes_dropped.get() > 0);
    let on_disk: u64 = std::fs::read_dir(dir.path().join("spool/traces"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(on_disk <= 6_000, "spool holds {on_disk} bytes");
    // The collector returns: what survived is the newest, delivered once, in order.
    rx.restart().await;
    let exporter = Exporter::start(s, Arc::default()).unwrap();
    let ok = wait_until(Duration::from_secs(10), || {
        span_counts(&rx).contains_key("b-39")
    })
    .await;
    let report = exporter.shutdown(Duration::from_secs(5)).await;
    assert!(ok && report.drained, "{report:?}");
    let counts = span_counts(&rx);
    assert!(
        !counts.contains_key("b-00"),
        "oldest should have been dropped"
    );
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    let order: Vec<String> = rx
        .spans()
        .iter()
        .map(|s| testing::s(&attrs(&s.attributes), "veil.request.id").unwrap())
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "replay out of order");
}

#[tokio::test]
async fn spooled_batches_survive_a_crash() {
    let mut rx = Receiver::start().await;
    let endpoint = rx.endpoint();
    rx.stop();
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path(), Some(&endpoint), &[]);
    let exporter = Exporter::start(s.clone(), Arc::default()).unwrap();
    for i in 0..20 {
        exporter
            .handle()
            .try_send(testing::base_record(&format!("c-{i:02}")))
            .unwrap();
    }
    // Wait until both the traces and the logs batches are spooled, then crash (no flush).
    let spool = dir.path().join("spool");
    let spooled = wait_until(Duration::from_secs(10), || {
        ["traces", "logs"].iter().all(|sig| {
            std::fs::read_dir(spool.join(sig))
                .map(|d| {
                    d.filter_map(Result::ok)
                        .any(|e| e.path().extension().is_some_and(|x| x == "batch"))
                })
                .unwrap_or(false)
        })
    })
    .await;
    assert!(spooled, "nothing reached the spool");
    drop(exporter);
    rx.restart().await;
    let exporter = Exporter::start(s, Arc::default()).unwrap();
    let ok = wait_until(Duration::from_secs(10), || span_counts(&rx).len() == 20).await;
    let report = exporter.shutdown(Duration::from_secs(5)).await;
    let counts = span_counts(&rx);
    assert!(ok, "{counts:?}");
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    assert_eq!(rx.logs().len(), 20);
    assert!(report.drained);
}

#[tokio::test]
async fn audit_events_are_log_records() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let exporter = Exporter::start(
        settings(dir.path(), Some(&rx.endpoint()), &[]),
        Arc::default(),
    )
    .unwrap();
    exporter
        .handle()
        .try_send_audit(AuditEvent {
            kind: "forget".into(),
            request_id: "0193a1b2-0000-7000-8000-000000000001".into(),
            time: std::time::SystemTime::now(),
            actor: "admin-api".into(),
            reason: Some("GDPR art. 17".into()),
            user_pseudonym: Some("u_x".into()),
        })
        .unwrap();
    let metrics = exporter.metrics();
    exporter.shutdown(Duration::from_secs(5)).await;
    let logs = rx.logs();
    assert_eq!(logs.len(), 1);
    let a = attrs(&logs[0].attributes);
    assert_eq!(logs[0].event_name, "veil.audit.forget");
    assert_eq!(
        testing::s(&a, "veil.request.id").as_deref(),
        Some("0193a1b2-0000-7000-8000-000000000001")
    );
    assert_eq!(
        testing::s(&a, "veil.audit.actor").as_deref(),
        Some("admin-api")
    );
    assert_eq!(
        testing::s(&a, "veil.audit.reason").as_deref(),
        Some("GDPR art. 17")
    );
    assert_eq!(testing::s(&a, "user.id").as_deref(), Some("u_x"));
    assert!(rx.spans().is_empty());
    assert_eq!(metrics.audit_events.get(), 1);
}

#[tokio::test]
async fn try_send_never_waits_and_returns_the_record_when_full() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), None, &[]);
    s.queue_capacity = 2;
    let exporter = Exporter::start(s, Arc::default()).unwrap();
    let h = exporter.handle();
    // Current-thread runtime: the batcher cannot run until this task yields.
    h.try_send(testing::base_record("q1")).unwrap();
    h.try_send(testing::base_record("q2")).unwrap();
    let err = h.try_send(testing::base_record("q3")).unwrap_err();
    assert!(err.is_full());
    assert_eq!(err.into_inner().request_id, "q3");
    h.metrics().exchanges_dropped.inc();
    assert_eq!(exporter.metrics().exchanges_dropped.get(), 1);
    exporter.shutdown(Duration::from_secs(5)).await;
    let err = h.try_send(testing::base_record("q4")).unwrap_err();
    assert!(err.is_closed());
}

#[tokio::test]
async fn no_endpoint_writes_the_otlp_json_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(
        dir.path(),
        None,
        &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
    );
    export_all(s, records()).await;
    let today = ledger::utc_date(std::time::SystemTime::now());
    let traces = dir.path().join(format!("records/traces-{today}.jsonl"));
    let text = std::fs::read_to_string(&traces).unwrap();
    let mut spans = 0;
    for line in text.lines() {
        // The collector file exporter's format: one ExportTraceServiceRequest per line.
        let req: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest =
            serde_json::from_str(line).unwrap();
        spans += req.resource_spans[0].scope_spans[0].spans.len();
    }
    assert_eq!(spans, 5);
    assert!(
        dir.path()
            .join(format!("records/logs-{today}.jsonl"))
            .exists()
    );
    assert!(
        dir.path()
            .join(format!("records/metrics-{today}.jsonl"))
            .exists()
    );
    assert!(!dir.path().join("spool").exists());

    // `veil tail` renders one line per exchange.
    let mut f = tail::Follower::new(dir.path());
    let lines = f.poll().unwrap();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    let openai = lines.iter().find(|l| l.contains("r-openai")).unwrap();
    for part in [
        "u_hmac_3f9a1c0e7b2d",
        "support",
        "gpt-4o-mini-2024-07-18",
        "52→19",
        "$0.000019",
        "1.422s",
        "complete",
    ] {
        assert!(openai.contains(part), "{part} missing in {openai}");
    }
    let err = lines.iter().find(|l| l.contains("r-error")).unwrap();
    assert!(err.contains("error:rate_limit_exceeded"), "{err}");
    // Nothing new: nothing printed; a new record: one line.
    assert!(f.poll().unwrap().is_empty());
    export_all(
        settings(dir.path(), None, &[]),
        vec![testing::base_record("later")],
    )
    .await;
    let more = f.poll().unwrap();
    assert_eq!(more.len(), 1);
    assert!(more[0].contains("later"));
}

/// Writes a protobuf `ExportTraceServiceRequest` and decodes it with the official Python
/// `opentelemetry-proto` package (an independent decoder).
#[tokio::test]
async fn python_opentelemetry_proto_decodes_our_protobuf() {
    let ok = std::process::Command::new("python3")
        .args([
            "-c",
            "import opentelemetry.proto.collector.trace.v1.trace_service_pb2",
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var("CI").is_ok_and(|v| !v.is_empty()) {
            panic!(
                "CI is set but python3 cannot import opentelemetry.proto: pip install opentelemetry-proto"
            );
        }
        eprintln!("skipping: python3 with the opentelemetry-proto package is not available");
        return;
    }
    let mut batch = otlp::Batch::default();
    batch.push_record(&testing::openai_chat("py-1"));
    batch.push_record(&testing::upstream_error("py-2"));
    let res = otlp::ResourceInfo::from_env(&|_| None, Some("host-a".into()));
    let req = batch.traces_request(&res).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("traces.pb");
    std::fs::write(&file, otlp::encode(&req, Encoding::Protobuf)).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/otlp_decode.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let spans = v["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0]["name"], "chat gpt-4o-mini");
    assert_eq!(spans[0]["kind"], "SPAN_KIND_CLIENT");
    assert_eq!(spans[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(spans[0]["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(spans[0]["flags"], 769);
    assert_eq!(spans[0]["attributes"]["gen_ai.usage.input_tokens"], 52);
    assert_eq!(spans[0]["attributes"]["user.id"], "u_hmac_3f9a1c0e7b2d");
    assert_eq!(
        spans[0]["attributes"]["gen_ai.response.finish_reasons"],
        serde_json::json!(["stop"])
    );
    assert_eq!(spans[1]["status"]["code"], "STATUS_CODE_ERROR");
    assert_eq!(spans[1]["attributes"]["error.type"], "rate_limit_exceeded");
    assert_eq!(v["resource"]["service.name"], "veil");
    assert_eq!(v["resource"]["host.name"], "host-a");
}

#[tokio::test(start_paused = true)]
async fn a_hung_collector_times_out_and_the_batch_is_spooled() {
    let rx = Receiver::start().await;
    rx.hang(true);
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(
        dir.path(),
        Some(&rx.endpoint()),
        &[("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "5000")],
    );
    s.retry_initial = Duration::from_secs(1);
    s.retry_max = Duration::from_secs(2);
    let exporter = Exporter::start(s, Arc::default()).unwrap();
    let metrics = exporter.metrics();
    let t0 = tokio::time::Instant::now();
    exporter
        .handle()
        .try_send(testing::base_record("hung"))
        .unwrap();
    let failed = wait_until(Duration::from_secs(60), || {
        metrics.export_failures.get() >= 2 && metrics.spool_bytes.get() > 0
    })
    .await;
    assert!(failed, "no timeout seen");
    // The traces attempt waited its 5 s timeout (virtual time) before giving up.
    assert!(t0.elapsed() >= Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(rx.spans().is_empty());
    rx.hang(false);
    let ok = wait_until(Duration::from_secs(60), || span_counts(&rx).len() == 1).await;
    let report = exporter.shutdown(Duration::from_secs(30)).await;
    assert!(ok && report.drained, "{report:?}");
    assert_eq!(span_counts(&rx)["hung"], 1);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let rx = Receiver::start().await;
    rx.answer(429);
    rx.retry_after(Some("7"));
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), Some(&rx.endpoint()), &[]);
    s.retry_initial = Duration::from_millis(10);
    s.retry_max = Duration::from_secs(60);
    let exporter = Exporter::start(s, Arc::default()).unwrap();
    exporter
        .handle()
        .try_send(testing::base_record("ra"))
        .unwrap();
    let traces = |rx: &Receiver| -> Vec<testing::Received> {
        rx.received()
            .into_iter()
            .filter(|r| r.path == "/v1/traces")
            .collect()
    };
    assert!(wait_until(Duration::from_secs(5), || !traces(&rx).is_empty()).await);
    rx.answer(200);
    assert!(wait_until(Duration::from_secs(30), || span_counts(&rx).len() == 1).await);
    let got = traces(&rx);
    assert_eq!(got.len(), 2, "one refused attempt, one delivery");
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_secs(7) && gap < Duration::from_secs(8),
        "retried after {gap:?}, not after Retry-After: 7"
    );
    exporter.shutdown(Duration::from_secs(5)).await;
}

// See: veil#10. One saturated run exported `veil.exchanges.dropped = 294` while 118,287
// exchanges went unrecorded: the proxy → pipeline drops were never exported.
#[test]
fn every_drop_point_is_exported_under_veil_exchanges_dropped() {
    use crate::exchange::queue;
    let (tx, rx) = queue::channel(1, 1 << 20);
    let counters = rx.counters().clone();
    counters.dropped_full.add(118_000);
    counters.dropped_bytes.add(280);
    counters.refused.add(7);
    drop(rx);
    let ex = crate::seal::tests::openai_chat();
    assert!(
        tx.try_send(ex).is_err(),
        "a closed queue drops, and counts it"
    );
    let m = Metrics {
        recording_queue: Some(counters),
        ..Default::default()
    };
    m.exchanges_dropped.add(294);
    let req = otlp::metrics_request(
        &otlp::ResourceInfo::from_env(&|_| None, None),
        &metrics::Histograms::default(),
        &m,
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
    let Some(metric::Data::Sum(refused)) = &find("veil.exchanges.refused").data else {
        panic!("veil.exchanges.refused is not a sum");
    };
    assert_eq!(
        refused.data_points[0].value,
        Some(opentelemetry_proto::tonic::metrics::v1::number_data_point::Value::AsInt(7))
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
    assert_eq!(metrics.content_dropped.get(), 1);

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

// See: veil#10. Under load, audit = "required" once dropped exchanges already answered 200 at
// the pipeline → exporter hand-off (1,534 in one 8 s run): the pipeline used `try_send` there
// too. `send_blocking` waits for room; only a shut-down exporter refuses.
#[test]
fn send_blocking_waits_for_room_instead_of_dropping() {
    let (tx, mut rx) = mpsc::channel(1);
    let handle = ExporterHandle {
        tx,
        metrics: Arc::new(Metrics::default()),
    };
    handle
        .try_send(testing::openai_chat("r-1"))
        .expect("room for one");
    assert!(
        handle.try_send(testing::openai_chat("r-2")).is_err(),
        "best-effort would drop the second"
    );
    let waiting = {
        let handle = handle.clone();
        std::thread::spawn(move || handle.send_blocking(testing::openai_chat("r-2"), None))
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(!waiting.is_finished(), "waits while the queue is full");
    assert!(matches!(rx.blocking_recv(), Some(Item::Record(..))));
    waiting.join().unwrap().expect("sent once there was room");
    let Some(Item::Record(r, _)) = rx.blocking_recv() else {
        panic!("the waiting record arrived");
    };
    assert_eq!(r.request_id, "r-2");
    drop(rx);
    assert!(
        handle
            .send_blocking(testing::openai_chat("r-3"), None)
            .unwrap_err()
            .is_closed()
    );
}
