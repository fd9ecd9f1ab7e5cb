//! The cost of the whole pipeline per exchange, off the hot path: parse the provider JSON,
//! redact under the shipped default rules into a `Record`, encode its OTLP span and log
//! (protobuf), and seal the full exchange (serialize + AES-256-GCM + key wrap, no disk I/O).
//! The stages are timed alone too, so a regression points at its step.
//!
//! `cargo bench --bench pipeline`

#[path = "fixtures/support_bot.rs"]
mod support_bot;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use support_bot::exchange;
use veil::exchange::{ParseOptions, Pricing, parse};
use veil::export::otlp::{Batch, Encoding, ResourceInfo, SpanIds, encode, record_log, record_span};
use veil::keys::{KeyId, Keyring, MasterKey};
use veil::record;
use veil::redact::{BUILTIN_DEFAULT_RULES, CompiledRules};
use veil::seal::envelope::{fresh_data_key, seal_frame};

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
    // As the exporter writes protobuf: straight from the record into its batch, here a
    // batch of one (a collector's request per exchange, the most it can cost per record).
    let resource = ResourceInfo::from_env(&|_| None, Some("bench".into()));
    let mut batch = Batch::new(Encoding::Protobuf, Encoding::Protobuf);
    g.bench_function("otlp_encode_span_and_log", |b| {
        b.iter(|| {
            batch.push_record(&record);
            black_box((
                batch.traces_payload(&resource),
                batch.logs_payload(&resource),
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
            batch.push_record(&record);
            let span = batch.traces_payload(&resource);
            let log = batch.logs_payload(&resource);
            let sealed = seal_frame(&ex, &fresh_data_key(), KeyId(1)).unwrap();
            black_box((span, log, sealed))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
