//! Throughput of the redaction engine against a naive baseline measured in the same run.
//!
//! - `scan/*`: the default profile's detectors over realistic chat text (prose with sparse
//!   PII), `veil` (one prefiltered multi-pattern scan + validators) vs `naive` (one
//!   `regex::Regex` per built-in pattern, run in sequence, no validation).
//! - `e2e/*`: a chat-completions request as bytes: parse, redact every string, serialize.
//!
//! - `scan_dense/*`: the same detectors over PII-dense text (a value every ~25 words, ~150
//!   bytes, names and street addresses included), which is what the PII corpus looks like.
//!
//! Each group also runs `veil_structured`: the default profile without the `person` and
//! `street_address` code detectors (veil#16), so their cost is measured in the same run.
//!
//! `cargo bench --bench redact`; targets: e2e ≥ 150 MB/s per core with every detector on
//! (veil#16); scan ≥ 400 MB/s for the structured detectors (before veil#16).
use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use veil::keys::{KeyId, Keyring, MasterKey};
use veil::redact::{CompiledRules, Target, detect::builtin_patterns};

const WORDS: &[&str] = &[
    "the",
    "customer",
    "asked",
    "about",
    "their",
    "invoice",
    "and",
    "whether",
    "we",
    "could",
    "summarise",
    "meeting",
    "notes",
    "please",
    "rewrite",
    "this",
    "paragraph",
    "in",
    "a",
    "more",
    "friendly",
    "tone",
    "explain",
    "how",
    "function",
    "works",
    "error",
    "handling",
    "should",
    "retry",
    "with",
    "backoff",
    "thanks",
    "for",
    "help",
    "project",
    "deadline",
    "team",
    "review",
    "draft",
    "email",
    "to",
    "client",
    "product",
    "launch",
    "plan",
    "budget",
    "quarter",
    "report",
    "is",
    "it",
    "possible",
    "that",
    "I",
    "you",
    "our",
    "will",
    "can",
    "be",
    "of",
    "on",
    "at",
];

const PII: &[&str] = &[
    "jane.doe@example.com",
    "+44 20 7946 0958",
    "(415) 555-2671",
    "4111 1111 1111 1111",
    "GB82 WEST 1234 5698 7654 32",
    "123-45-6789",
    "192.168.1.20",
    "2001:db8::8a2e:370:7334",
    "ghp_0123456789abcdefghijABCDEFGHIJ012345",
    "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
    "AKIAIOSFODNN7EXAMPLE",
    "on 2024-05-17",
    "version 3",
    "in 2 weeks",
    "step 1.",
];

/// What PII-dense text adds: names after cues and street addresses (veil#16).
const PII_DENSE: &[&str] = &[
    "my name is Abigail Fisher",
    "Thanks Priya",
    "account holder Tomasz Nowak",
    "ship it to 48 Linden Road, Leeds LS6 2AB",
    "Lindenstraße 48, 10115 Berlin",
    "Dear Ms O'Neil",
];

/// Deterministic pseudo-random chat messages: mostly prose, with a digit-bearing token or a PII
/// value every few hundred bytes, as in real support and coding chats.
fn messages(total: usize) -> Vec<String> {
    messages_with(total, 60, &[])
}

/// [`messages`] with a PII value every `every` words on average, drawn from [`PII`] and
/// `extra`.
fn messages_with(total: usize, every: u64, extra: &[&'static str]) -> Vec<String> {
    let pii: Vec<&str> = PII.iter().chain(extra).copied().collect();
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut out = Vec::new();
    let mut size = 0;
    while size < total {
        let len = 200 + (next() % 1800) as usize;
        let mut m = String::with_capacity(len + 64);
        let mut sentence = 0;
        while m.len() < len {
            if next() % every == 0 {
                m.push_str(pii[(next() % pii.len() as u64) as usize]);
            } else {
                m.push_str(WORDS[(next() % WORDS.len() as u64) as usize]);
            }
            sentence += 1;
            if sentence % 12 == 0 {
                m.push_str(". ");
            } else {
                m.push(' ');
            }
        }
        size += m.len();
        out.push(m);
    }
    out
}

fn naive_regexes() -> Vec<regex::Regex> {
    builtin_patterns()
        .into_iter()
        .map(|(_, p)| regex::Regex::new(p).expect("built-in pattern"))
        .collect()
}

fn naive_scan(res: &[regex::Regex], text: &str) -> usize {
    res.iter().map(|r| r.find_iter(text).count()).sum()
}

fn naive_redact(res: &[regex::Regex], v: &mut Value) {
    match v {
        Value::String(s) => {
            for r in res {
                if let std::borrow::Cow::Owned(n) = r.replace_all(s, "[X]") {
                    *s = n;
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|c| naive_redact(res, c)),
        Value::Object(m) => m.values_mut().for_each(|c| naive_redact(res, c)),
        _ => {}
    }
}

/// The default profile, without the redaction memo: every iteration scans, as every new
/// text does (`pipeline/conversation` measures the memo).
fn rules() -> CompiledRules {
    let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [7; 32]));
    let mut rules = CompiledRules::from_str(include_str!("../rules/default.toml"), &keys)
        .expect("default rules compile");
    rules.set_memo_bytes(0);
    rules
}

/// The default profile without the `person` and `street_address` detectors.
fn rules_structured() -> CompiledRules {
    let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [7; 32]));
    let toml = include_str!("../rules/default.toml").replace(
        r#"builtin = ["all"]"#,
        r#"builtin = ["email", "iban", "credit_card", "us_ssn", "phone", "ipv6", "ipv4", "date_of_birth"]"#,
    );
    assert!(!toml.contains(r#"builtin = ["all"]"#));
    let mut rules = CompiledRules::from_str(&toml, &keys).expect("structured rules compile");
    rules.set_memo_bytes(0);
    rules
}

/// Times `scanner` over `msgs` as benchmark `name` of group `g`.
fn bench_scan(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    scanner: &veil::redact::detect::Scanner,
    msgs: &[String],
) {
    g.bench_function(name, |b| {
        let mut found = Vec::new();
        b.iter(|| {
            let mut n = 0;
            for m in msgs {
                scanner.find(black_box(m), &mut found);
                n += found.len();
            }
            n
        })
    });
}

fn scan(c: &mut Criterion) {
    let rules = rules();
    let scanner = rules.base_scope().scanner();
    let msgs = messages(1 << 20);
    let bytes: usize = msgs.iter().map(String::len).sum();
    let res = naive_regexes();
    // Sanity once before timing: both engines see PII.
    let mut found = Vec::new();
    let veil_hits: usize = msgs
        .iter()
        .map(|m| {
            scanner.find(m, &mut found);
            found.len()
        })
        .sum();
    assert!(veil_hits > 100, "veil found {veil_hits}");
    assert!(msgs.iter().map(|m| naive_scan(&res, m)).sum::<usize>() >= veil_hits / 2);

    let structured = rules_structured();
    let mut g = c.benchmark_group("scan");
    g.throughput(Throughput::Bytes(bytes as u64));
    bench_scan(&mut g, "veil", scanner, &msgs);
    bench_scan(
        &mut g,
        "veil_structured",
        structured.base_scope().scanner(),
        &msgs,
    );
    g.bench_function("naive", |b| {
        b.iter(|| {
            msgs.iter()
                .map(|m| naive_scan(&res, black_box(m)))
                .sum::<usize>()
        })
    });
    g.finish();
}

fn scan_dense(c: &mut Criterion) {
    let rules = rules();
    let structured = rules_structured();
    let msgs = messages_with(1 << 20, 25, PII_DENSE);
    let bytes: usize = msgs.iter().map(String::len).sum();
    let mut g = c.benchmark_group("scan_dense");
    g.throughput(Throughput::Bytes(bytes as u64));
    bench_scan(&mut g, "veil", rules.base_scope().scanner(), &msgs);
    bench_scan(
        &mut g,
        "veil_structured",
        structured.base_scope().scanner(),
        &msgs,
    );
    g.finish();
}

fn e2e(c: &mut Criterion) {
    let rules = rules();
    let msgs = messages(256 << 10);
    let body = json!({
        "model": "gpt-4o-mini",
        "user": "user-1234",
        "temperature": 0.2,
        "messages": msgs.iter().enumerate().map(|(i, m)| json!({
            "role": if i % 2 == 0 { "user" } else { "assistant" },
            "content": m,
        })).collect::<Vec<_>>(),
    });
    let raw = serde_json::to_vec(&body).expect("serialize");
    let res = naive_regexes();
    let redact_with = |rules: &CompiledRules, raw: &[u8]| -> Vec<u8> {
        let mut v: Value = serde_json::from_slice(raw).expect("valid JSON");
        rules.redact_json(&mut v, Target::Request, rules.base_scope());
        serde_json::to_vec(&v).expect("serialize")
    };

    let redact = |raw: &[u8]| redact_with(&rules, raw);
    let structured = rules_structured();
    let out = String::from_utf8(redact(&raw)).expect("utf-8");
    assert!(!out.contains("jane.doe@example.com") && out.contains("[EMAIL]"));

    let mut g = c.benchmark_group("e2e");
    g.throughput(Throughput::Bytes(raw.len() as u64));
    g.bench_function("veil", |b| b.iter(|| redact(black_box(&raw))));
    g.bench_function("veil_structured", |b| {
        b.iter(|| redact_with(&structured, black_box(&raw)))
    });
    g.bench_function("naive", |b| {
        b.iter(|| {
            let mut v: Value = serde_json::from_slice(black_box(&raw)).expect("valid JSON");
            naive_redact(&res, &mut v);
            serde_json::to_vec(&v).expect("serialize")
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(4));
    targets = scan, scan_dense, e2e
}
criterion_main!(benches);
