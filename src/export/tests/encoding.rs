//! OTLP shapes: spans, logs and encodings as a real collector receives them ([`super::super::otlp`]).

use super::*;

#[tokio::test]
async fn spans_follow_the_genai_conventions() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let metrics = export_all(settings(dir.path(), Some(&rx.endpoint()), &[]), records()).await;
    assert_eq!(metrics.export.exchanges.get(), 5);
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
        ("user.id", "u_3f9a1c0e7b2d4a5c"),
        ("enduser.pseudo.id", "u_3f9a1c0e7b2d4a5c"),
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
    assert_eq!(
        tok.data_points[0].explicit_bounds,
        crate::counters::series::TOKEN_BUCKETS
    );
    assert_eq!(
        tok.data_points[0].bucket_counts.len(),
        crate::counters::series::TOKEN_BUCKETS.len() + 1
    );
    let Some(metric::Data::Histogram(dur)) = &metrics["gen_ai.client.operation.duration"].data
    else {
        panic!("duration is not a histogram");
    };
    assert_eq!(dur.data_points.iter().map(|p| p.count).sum::<u64>(), 5);
    assert_eq!(
        dur.data_points[0].explicit_bounds,
        crate::counters::series::DURATION_BUCKETS
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

/// The interpreter with `tests/python/requirements.txt`: `$VEIL_PYTHON` (set by `.ci/run`),
/// else `<repo>/.venv/bin/python3`, else `python3` (as `tests/it/support/python.rs` finds it).
fn python() -> std::path::PathBuf {
    if let Some(p) = std::env::var_os("VEIL_PYTHON").filter(|p| !p.is_empty()) {
        return p.into();
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python3");
    if venv.is_file() {
        return venv;
    }
    "python3".into()
}

/// Writes a protobuf `ExportTraceServiceRequest` and decodes it with the official Python
/// `opentelemetry-proto` package (an independent decoder). Ignored by a plain `cargo test`;
/// `cargo test -- --include-ignored` (`.ci/run`) runs it, and a missing package fails it.
#[tokio::test]
#[ignore = "needs opentelemetry-proto in .venv or $VEIL_PYTHON (README); run with cargo test -- --include-ignored"]
async fn python_opentelemetry_proto_decodes_our_protobuf() {
    let python = python();
    let probe = std::process::Command::new(&python)
        .args([
            "-c",
            "import opentelemetry.proto.collector.trace.v1.trace_service_pb2",
        ])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "{} cannot import opentelemetry.proto: python3 -m venv .venv && .venv/bin/pip install \
             -r tests/python/requirements.txt\n{}",
            python.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("cannot run {}: {e}", python.display()),
    }
    // The batch the exporter makes: spans written straight from the records.
    let mut batch = otlp::Batch::new(Encoding::Protobuf, Encoding::Protobuf);
    batch.push_record(&testing::openai_chat("py-1"));
    batch.push_record(&testing::upstream_error("py-2"));
    let res = otlp::ResourceInfo::from_env(&|_| None, Some("host-a".into()));
    let bytes = batch.traces_payload(&res).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("traces.pb");
    std::fs::write(&file, bytes).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/otlp_decode.py");
    let out = std::process::Command::new(&python)
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
    assert_eq!(spans[0]["attributes"]["user.id"], "u_3f9a1c0e7b2d4a5c");
    assert_eq!(
        spans[0]["attributes"]["gen_ai.response.finish_reasons"],
        serde_json::json!(["stop"])
    );
    assert_eq!(spans[1]["status"]["code"], "STATUS_CODE_ERROR");
    assert_eq!(spans[1]["attributes"]["error.type"], "rate_limit_exceeded");
    assert_eq!(v["resource"]["service.name"], "veil");
    assert_eq!(v["resource"]["host.name"], "host-a");
}

#[tokio::test]
async fn spans_carry_the_content_of_a_record_that_shed_its_trees() {
    // Traces to a collector, logs nowhere (only a traces endpoint; the SQLite ledger would be
    // the local sink): the pipeline sheds the content's trees, and the span must still carry
    // the content, from the text.
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let traces = format!("{}/v1/traces", rx.endpoint());
    let s = settings(
        dir.path(),
        None,
        &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", &traces)],
    )
    .without_files();
    let exporter = Exporter::start(s, Arc::default()).unwrap();
    assert!(!exporter.handle().reads_content_trees());
    let mut r = testing::openai_chat("r-shed");
    r.shed_content_trees();
    assert!(r.input_messages.is_none() && r.output_messages.is_none());
    exporter.handle().try_send(r).unwrap();
    let report = exporter.shutdown(Duration::from_secs(10)).await;
    assert!(report.drained, "{report:?}");
    let spans = rx.spans();
    assert_eq!(spans.len(), 1);
    let a = attrs(&spans[0].attributes);
    let input: serde_json::Value =
        serde_json::from_str(&testing::s(&a, "gen_ai.input.messages").unwrap()).unwrap();
    assert_eq!(
        input[0]["parts"][0]["content"],
        "I am [PERSON_1] ([EMAIL_1]), reset my password"
    );
    assert!(testing::s(&a, "gen_ai.output.messages").is_some_and(|o| o.contains("Link sent")));
    assert!(rx.logs().is_empty(), "logs go nowhere");
}
