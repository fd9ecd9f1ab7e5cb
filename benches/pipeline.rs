//! The cost of the whole pipeline per exchange, off the hot path: parse the provider JSON,
//! redact under the shipped default rules into a `Record`, encode its OTLP span and log
//! (protobuf), and seal the full exchange (serialize + AES-256-GCM + key wrap, no disk I/O).
//! The stages are timed alone too, so a regression points at its step.
//!
//! `cargo bench --bench pipeline`

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use veil::exchange::{
    Body, Exchange, ExchangeId, Outcome, ParseOptions, Pricing, Route, Timings, Upstream, parse,
};
use veil::export::otlp::{Encoding, SpanIds, encode, record_log, record_span};
use veil::keys::{KeyId, Keyring, MasterKey};
use veil::record;
use veil::redact::{BUILTIN_DEFAULT_RULES, CompiledRules};
use veil::seal::envelope::{fresh_data_key, seal_frame};

fn body(bytes: &str) -> Body {
    Body {
        wire_len: bytes.len() as u64,
        chunks: vec![Bytes::from(bytes.to_string())],
        truncated: false,
        content_encoding: None,
    }
}

/// A typical support-bot exchange: system prompt, a user turn with an email and a card
/// number, a ~2 KB completion.
fn exchange() -> Exchange {
    let request = serde_json::json!({
        "model": "gpt-4o-mini",
        "user": "customer-4711",
        "temperature": 0.2,
        "messages": [
            {"role": "system", "content": "You are a helpful support assistant for Northwind Bank. Be concise."},
            {"role": "user", "content": "Hi, I'm Dana (dana.scully@example.com). I was charged twice on card 4111 1111 1111 1111 for order 258-5178128-6570704. Please refund one."}
        ]
    });
    let response = serde_json::json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_795_183_387,
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "I'm sorry about the double charge. ".repeat(55)}}],
        "usage": {"prompt_tokens": 61, "completion_tokens": 410, "total_tokens": 471}
    });
    Exchange {
        id: ExchangeId::new(),
        started_at: SystemTime::now(),
        timings: Timings {
            request_end: Some(Duration::from_millis(1)),
            response_headers: Some(Duration::from_millis(300)),
            first_byte: Some(Duration::from_millis(300)),
            end: Duration::from_millis(900),
            ..Default::default()
        },
        client_addr: None,
        route: Route::Intercept,
        upstream: Upstream {
            scheme: "https".into(),
            host: "api.openai.com".into(),
            port: 443,
        },
        client_version: "HTTP/1.1".into(),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        request_headers: vec![
            ("content-type".into(), "application/json".into()),
            ("authorization".into(), "fp_0123456789abcdef".into()),
        ],
        tags: vec![("x-veil-feature".into(), "support-bot".into())],
        api_key_fingerprint: Some("fp_0123456789abcdef".into()),
        request_body: body(&request.to_string()),
        status: Some(200),
        response_headers: vec![("content-type".into(), "application/json".into())],
        response_body: body(&response.to_string()),
        outcome: Outcome::Complete,
        websocket: None,
    }
}

fn bench(c: &mut Criterion) {
    let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [42; 32]));
    let rules = CompiledRules::from_str(BUILTIN_DEFAULT_RULES, &keys).unwrap();
    let pricing = Pricing::builtin();
    let opts = ParseOptions::default();
    let ex = exchange();

    // Checked once before timing: the work being timed is the real work.
    let conv = parse(&ex, &opts, &pricing);
    assert_eq!(conv.usage.output_tokens, Some(410));
    let record = record::build(&ex, &conv, &rules);
    let input = record.input_messages.as_ref().unwrap().to_string();
    assert!(
        !input.contains("dana.scully@example.com") && !input.contains("4111"),
        "{input}"
    );
    assert!(
        record
            .user_pseudonym
            .as_ref()
            .unwrap()
            .as_str()
            .starts_with("u_")
    );

    let mut g = c.benchmark_group("pipeline");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("parse", |b| {
        b.iter(|| black_box(parse(black_box(&ex), &opts, &pricing)))
    });
    g.bench_function("redact_to_record", |b| {
        b.iter(|| black_box(record::build(black_box(&ex), &conv, &rules)))
    });
    g.bench_function("otlp_encode_span_and_log", |b| {
        b.iter(|| {
            let ids = SpanIds::for_record(&record);
            let span = record_span(&record, &ids);
            let log = record_log(&record, &ids);
            black_box((
                encode(&span, Encoding::Protobuf),
                encode(&log, Encoding::Protobuf),
            ))
        })
    });
    g.bench_function("otlp_json_span_and_log", |b| {
        // What the local ledger writes when no collector is configured.
        b.iter(|| {
            let ids = SpanIds::for_record(&record);
            let span = record_span(&record, &ids);
            let log = record_log(&record, &ids);
            black_box((encode(&span, Encoding::Json), encode(&log, Encoding::Json)))
        })
    });
    g.bench_function("seal_envelope", |b| {
        b.iter(|| black_box(seal_frame(black_box(&ex), &fresh_data_key(), KeyId(1)).unwrap()))
    });
    g.bench_function("whole_exchange", |b| {
        b.iter(|| {
            let conv = parse(&ex, &opts, &pricing);
            let record = record::build(&ex, &conv, &rules);
            let ids = SpanIds::for_record(&record);
            let span = encode(&record_span(&record, &ids), Encoding::Protobuf);
            let log = encode(&record_log(&record, &ids), Encoding::Protobuf);
            let sealed = seal_frame(&ex, &fresh_data_key(), KeyId(1)).unwrap();
            black_box((span, log, sealed))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
