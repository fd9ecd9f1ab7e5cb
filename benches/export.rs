//! Exporter throughput: records/s encoded (protobuf, JSON), their metric series updated, and
//! delivered to a local OTLP/HTTP receiver through the full exporter, against a baseline that
//! POSTs the same pre-encoded batches directly (the cost of HTTP alone).
//!
//! `cargo bench --bench export` (add `-- --quick` for a short run).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prost::Message;
use veil::counters::Counters;
use veil::exchange::{Operation, OutcomeKind, TraceParent, Usage};
use veil::export::otlp::{Batch, ResourceInfo};
use veil::export::sender::{Attempt, OtlpClient};
use veil::export::{Encoding, Exporter, ExporterSettings, Signal};
use veil::keys::UserPseudonym;
use veil::record::Record;

/// Records per iteration: one full default batch.
const BATCH: usize = 512;

fn record(i: usize) -> Record {
    let mut params = BTreeMap::new();
    params.insert("temperature".to_string(), serde_json::json!(0.2));
    params.insert("max_tokens".to_string(), serde_json::json!(256));
    let mut redactions = BTreeMap::new();
    redactions.insert("EMAIL".to_string(), 2);
    Record {
        request_id: format!("0193a1b2-0000-7000-8000-{i:012}"),
        start: SystemTime::now(),
        duration: Duration::from_millis(1422),
        time_to_first_chunk: Some(Duration::from_millis(300)),
        trace_parent: i.is_multiple_of(2).then_some(TraceParent {
            trace_id: [0x4b; 16],
            parent_span_id: [0x0f; 8],
            flags: 1,
            trace_state: None,
        }),
        provider: veil::exchange::Provider::OpenAi,
        operation: Operation::Chat,
        request_model: Some("gpt-4o-mini".into()),
        response_model: Some("gpt-4o-mini-2024-07-18".into()),
        response_id: Some(format!("chatcmpl-{i}")),
        conversation_id: None,
        server_address: "api.openai.com".into(),
        server_port: 443,
        route: "/v1/chat/completions".into(),
        status: Some(200),
        error_type: None,
        finish_reasons: vec!["stop".into()],
        usage: Usage {
            input_tokens: Some(52),
            output_tokens: Some(19),
            cache_read_tokens: Some(12),
            ..Usage::default()
        },
        stream: true,
        request_params: params,
        cost_usd: Some(0.0000192),
        user_pseudonym: Some(UserPseudonym::parse("u_3f9a1c0e7b2d4a5c").unwrap()),
        user_pseudonyms: vec![UserPseudonym::parse("u_3f9a1c0e7b2d4a5c").unwrap()],
        feature: Some("support".into()),
        api_key_fingerprint: Some("fp_1a2b".into()),
        rules_digest: "b3:0123456789abcdef".into(),
        redactions,
        redactions_input: 2,
        redactions_output: 0,
        truncated: false,
        aborted: false,
        outcome: OutcomeKind::Complete,
        system_instructions: None,
        input_messages: Some(serde_json::json!([
            {"role":"user","parts":[{"type":"text","content":"I am [PERSON_1] ([EMAIL_1]), please reset my password for the staging account"}]}
        ])),
        output_messages: Some(serde_json::json!([
            {"role":"assistant","parts":[{"type":"text","content":"A reset link was sent to [EMAIL_1]."}],"finish_reason":"stop"}
        ])),
        tool_names: Vec::new(),
        request_headers: Default::default(),
        response_headers: Default::default(),
        request_bytes: 300,
        response_bytes: 900,
        websocket: None,
        content_dropped: None,
        parse_error: None,
        added_latency: (None, None),
        chunk_gaps: Default::default(),
        retry: false,
        prepared: Default::default(),
        in_flight: Default::default(),
    }
}

/// One batch of `records` as the exporter's batcher makes it: pushed into its batch (made for
/// one encoding and kept from one flush to the next, as the batcher keeps it; protobuf is
/// written as records are pushed), then the two requests' bytes.
fn encode_batch(b: &mut Batch, records: &[Record], res: &ResourceInfo) -> (Bytes, Bytes) {
    for r in records {
        b.push_record(r);
    }
    let t = b.traces_payload(res).unwrap();
    let l = b.logs_payload(res).unwrap();
    (t, l)
}

/// A receiver that reads each body and answers 200 (no decoding: the collector's cost is
/// not ours to measure).
async fn receiver() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await?;
                    Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::new())))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn bench(c: &mut Criterion) {
    let records: Vec<Record> = (0..BATCH).map(record).collect();
    let res = ResourceInfo::from_env(&|_| None, Some("bench".into()));

    // Assert once before timing: the batch decodes back to BATCH spans.
    let (t, _) = encode_batch(
        &mut Batch::new(Encoding::Protobuf, Encoding::Protobuf),
        &records,
        &res,
    );
    let req =
        opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest::decode(&t[..])
            .unwrap();
    assert_eq!(req.resource_spans[0].scope_spans[0].spans.len(), BATCH);

    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(BATCH as u64));
    for (name, enc) in [("protobuf", Encoding::Protobuf), ("json", Encoding::Json)] {
        let mut batch = Batch::new(enc, enc);
        g.bench_function(name, |b| {
            b.iter(|| encode_batch(&mut batch, &records, &res))
        });
    }
    g.finish();

    // The per-exchange metric series a batch's records update (the batcher calls this for
    // every record when metrics are exported), in steady state: after the first iteration
    // every series exists.
    let counters = Counters::default();
    let mut g = c.benchmark_group("metrics");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("observe", |b| {
        b.iter(|| {
            for r in &records {
                veil::export::metrics::observe(&counters, r);
            }
        })
    });
    g.finish();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addr = rt.block_on(receiver());
    let endpoint = format!("http://{addr}");

    let mut g = c.benchmark_group("send");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(20);
    g.measurement_time(Duration::from_secs(8));

    // Baseline: the same batches, pre-encoded, POSTed directly.
    let (t, l) = encode_batch(
        &mut Batch::new(Encoding::Protobuf, Encoding::Protobuf),
        &records,
        &res,
    );
    let client = OtlpClient::new();
    g.bench_function("direct_post_protobuf", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    for (sig, body) in [(Signal::Traces, &t), (Signal::Logs, &l)] {
                        let url = format!("{endpoint}/v1/{}", sig.name());
                        let a = client
                            .clone()
                            .send(
                                url,
                                sig,
                                Encoding::Protobuf,
                                body.clone(),
                                Vec::new(),
                                false,
                                Duration::from_secs(10),
                            )
                            .await;
                        assert_eq!(a, Attempt::Delivered);
                    }
                }
                start.elapsed()
            })
        })
    });

    for (name, protocol, gzip) in [
        ("exporter_protobuf", "http/protobuf", "none"),
        ("exporter_json", "http/json", "none"),
        ("exporter_protobuf_gzip", "http/protobuf", "gzip"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let env = move |k: &str| match k {
            "OTEL_EXPORTER_OTLP_PROTOCOL" => Some(protocol.to_string()),
            "OTEL_EXPORTER_OTLP_COMPRESSION" => Some(gzip.to_string()),
            _ => None,
        };
        let mut s =
            ExporterSettings::resolve(Some(&endpoint), dir.path().to_path_buf(), &env).unwrap();
        s.batch_max = BATCH;
        s.metrics_interval = Duration::from_secs(3600);
        s.queue_capacity = 4 * BATCH;
        let counters = Arc::new(Counters::default());
        let metrics = &counters.export;
        let exporter = rt.block_on(async { Exporter::start(s, counters.clone()).unwrap() });
        let h = exporter.handle();
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let before = metrics.batches_delivered.get();
                    let start = Instant::now();
                    for _ in 0..iters {
                        for r in &records {
                            let mut r = r.clone();
                            // Bounded: the exporter drains the queue within a batch time.
                            for _ in 0..100_000 {
                                match h.try_send(r) {
                                    Ok(()) => break,
                                    Err(e) => {
                                        r = e.into_inner();
                                        tokio::task::yield_now().await;
                                    }
                                }
                            }
                        }
                    }
                    let want = before + 2 * iters;
                    for _ in 0..1_000_000 {
                        if metrics.batches_delivered.get() >= want {
                            break;
                        }
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                    assert!(
                        metrics.batches_delivered.get() >= want,
                        "batches not delivered"
                    );
                    start.elapsed()
                })
            })
        });
        rt.block_on(exporter.shutdown(Duration::from_secs(5)));
        assert_eq!(metrics.spool_bytes.get(), 0);
        assert_eq!(metrics.export_failures.get(), 0);
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
