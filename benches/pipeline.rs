//! The cost of the whole pipeline per exchange, off the hot path: parse the provider JSON,
//! redact under the shipped default rules into a `Record`, encode its OTLP span and log
//! (protobuf), and seal the full exchange (serialize + AES-256-GCM + key wrap, no disk I/O).
//! The stages are timed alone too, so a regression points at its step. Every iteration
//! redacts the same exchange, so these run without the redaction memo (real answers are new
//! texts each time): they measure the scan.
//!
//! `pipeline_conversation` measures the memo: the twelve exchanges of one support
//! conversation, each re-sending the system prompt and every earlier turn, redacted into
//! records in order with the memo off and on (emptied before each conversation).
//!
//! `cargo bench --bench pipeline`

#[path = "fixtures/support_bot.rs"]
mod support_bot;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use support_bot::{exchange, exchange_with};
use veil::exchange::{ParseOptions, Pricing, parse};
use veil::export::otlp::{Batch, Encoding, ResourceInfo, SpanIds, encode, record_log, record_span};
use veil::keys::{KeyId, Keyring, MasterKey};
use veil::record;
use veil::redact::{BUILTIN_DEFAULT_RULES, CompiledRules};
use veil::seal::envelope::{fresh_data_key, seal_frame};

fn bench(c: &mut Criterion) {
    let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [42; 32]));
    let mut rules = CompiledRules::from_str(BUILTIN_DEFAULT_RULES, &keys).unwrap();
    rules.set_memo_bytes(0);
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

/// The exchanges of one support conversation of `turns` turns: turn k's request carries the
/// system prompt (~2.4 KB) and the k − 1 earlier turns (a ~300-byte question, some with an
/// email, a phone number or a name, and a ~600-byte answer each), its response the k-th answer.
fn conversation(turns: usize) -> Vec<veil::exchange::Exchange> {
    let system = format!(
        "You are the support assistant of Northwind Bank. {}",
        "Answer in two short paragraphs, cite the relevant policy section, never promise a \
         refund before the dispute team confirmed it, and escalate fraud reports at once. "
            .repeat(12)
    );
    let question = |k: usize| {
        let contact = match k % 3 {
            0 => format!("You can reach me at customer{k}@example.com."),
            1 => format!("Call me back on +44 20 7946 {:04}.", 1000 + k),
            _ => "My name is Dana Scully, by the way.".to_string(),
        };
        format!(
            "Question {k}: the payment I made on Monday still shows as pending and the \
             merchant says it never arrived; what should I do next, and how long does a \
             trace usually take? {contact} Thanks for your help with this, it is urgent."
        )
    };
    let answer = |k: usize| {
        format!(
            "Answer {k}: I'm sorry about the delay. {}",
            "Pending card payments usually settle within three working days; if the merchant \
             still has not received it after that, we open a trace with the card network. "
                .repeat(4)
        )
    };
    (1..=turns)
        .map(|k| {
            let mut messages = vec![serde_json::json!({"role": "system", "content": system})];
            for j in 1..k {
                messages.push(serde_json::json!({"role": "user", "content": question(j)}));
                messages.push(serde_json::json!({"role": "assistant", "content": answer(j)}));
            }
            messages.push(serde_json::json!({"role": "user", "content": question(k)}));
            let request = serde_json::json!({
                "model": "gpt-4o-mini", "user": "customer-4711", "messages": messages
            });
            let response = serde_json::json!({
                "id": format!("chatcmpl-{k}"), "object": "chat.completion",
                "created": 1_795_183_387, "model": "gpt-4o-mini-2024-07-18",
                "choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": answer(k)}}],
                "usage": {"prompt_tokens": 600 * k, "completion_tokens": 150, "total_tokens": 600 * k + 150}
            });
            exchange_with(&request, &response)
        })
        .collect()
}

fn bench_conversation(c: &mut Criterion) {
    let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [42; 32]));
    let mut off = CompiledRules::from_str(BUILTIN_DEFAULT_RULES, &keys).unwrap();
    off.set_memo_bytes(0);
    let on = CompiledRules::from_str(BUILTIN_DEFAULT_RULES, &keys).unwrap();
    let (opts, pricing) = (ParseOptions::default(), Pricing::builtin());
    let exchanges = conversation(12);
    let parsed: Vec<_> = exchanges
        .iter()
        .map(|ex| (ex, parse(ex, &opts, &pricing)))
        .collect();

    // Checked once before timing: the memo changes no record, and it answers.
    for (ex, conv) in &parsed {
        let (a, b) = (record::build(ex, conv, &off), record::build(ex, conv, &on));
        assert_eq!(a.input_messages, b.input_messages);
        assert_eq!(a.output_messages, b.output_messages);
        assert_eq!(a.redactions, b.redactions);
        let input = a.input_messages.as_ref().unwrap().to_string();
        assert!(!input.contains("Dana Scully") && !input.contains("customer3@example.com"));
    }
    assert!(on.memo_hits() > 0 && off.memo_hits() == 0);

    let mut g = c.benchmark_group("pipeline_conversation");
    g.measurement_time(Duration::from_secs(5));
    for (name, rules) in [("memo_off", &off), ("memo_on", &on)] {
        g.bench_function(name, |b| {
            b.iter(|| {
                rules.clear_memo();
                for (ex, conv) in &parsed {
                    black_box(record::build(ex, conv, rules));
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench, bench_conversation);
criterion_main!(benches);
