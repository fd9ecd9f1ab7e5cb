//! Heap allocations per exchange in each step of the recording pipeline (parse, redact into a
//! record, prepare the content's text, seal), counted by a wrapping global allocator. The
//! count, not the time, is what this shows: under load, allocating and freeing is about a
//! third of the pipeline thread's CPU (veil#18, docs/performance.md). `ALLOC_PROFILE=parse`,
//! `build` or `seal` writes dhat's profile of that step by call site instead.
//!
//! ```text
//! cargo run --release --no-default-features --example alloc_count
//! ```
//! `--no-default-features` leaves mimalloc out, so dhat's counting allocator can be the global
//! one (the counts are the same under any allocator; a dev build counts as a release one).
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use veil::exchange::{
    Body, Exchange, ExchangeId, Outcome, ParseOptions, Pricing, Route, Timings, Upstream, parse,
};
use veil::feedback::Rated;
use veil::keys::{KeyId, Keyring, MasterKey};
use veil::record;
use veil::redact::{BUILTIN_DEFAULT_RULES, CompiledRules};
use veil::seal::envelope::{fresh_data_key, seal_frame};

#[cfg(not(feature = "mimalloc"))]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn body(bytes: String) -> Body {
    Body {
        wire_len: bytes.len() as u64,
        chunks: vec![Bytes::from(bytes)],
        truncated: false,
        content_encoding: None,
    }
}

/// The load bench's kind of exchange: a system prompt, a user turn with an email and a card
/// number, a ~2 KB completion (as `benches/pipeline.rs`).
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
            ("user-agent".into(), "OpenAI/Python 1.54.0".into()),
            ("x-stainless-retry-count".into(), "0".into()),
        ],
        tags: vec![("x-veil-feature".into(), "support-bot".into())],
        api_key_fingerprint: Some("fp_0123456789abcdef".into()),
        request_body: body(request.to_string()),
        status: Some(200),
        response_headers: vec![
            ("content-type".into(), "application/json".into()),
            ("x-request-id".into(), "req_0123456789".into()),
        ],
        response_body: body(response.to_string()),
        outcome: Outcome::Complete,
        websocket: None,
    }
}

/// Allocations (blocks, bytes) made by `f`, the second of two calls (the first warms the
/// caches of compiled patterns and lazily built tables).
fn count<T>(mut f: impl FnMut() -> T) -> (u64, u64, T) {
    drop(f());
    let before = dhat::HeapStats::get();
    let out = f();
    let after = dhat::HeapStats::get();
    (
        after.total_blocks - before.total_blocks,
        after.total_bytes - before.total_bytes,
        out,
    )
}

fn main() {
    if cfg!(feature = "mimalloc") {
        eprintln!(
            "alloc_count: mimalloc is the global allocator in this build, so nothing can count; \
             run `cargo run --release --no-default-features --example alloc_count`"
        );
        std::process::exit(2);
    }
    if let Ok(step) = std::env::var("ALLOC_PROFILE") {
        return profile(&step);
    }
    let _profiler = dhat::Profiler::builder().testing().build();
    let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [42; 32]));
    let rules = CompiledRules::from_str(BUILTIN_DEFAULT_RULES, &keys).expect("default rules");
    let pricing = Pricing::builtin();
    let opts = ParseOptions::default();
    let ex = exchange();

    let mut rows = Vec::new();
    let (n, b, conv) = count(|| parse(&ex, &opts, &pricing));
    rows.push(("parse", n, b));
    let (n, b, _) = count(|| record::build(&ex, &conv, &rules));
    rows.push(("redact into a record", n, b));
    let (n, b, _) = count(|| {
        let r = record::build(&ex, &conv, &rules);
        r.prepare();
        r
    });
    rows.push((
        "prepare the text (ledger, spans)",
        n - rows[1].1,
        b - rows[1].2,
    ));
    let record = record::build(&ex, &conv, &rules);
    record.prepare();
    let key = record::scope_key(&ex, &conv);
    let (n, b, _) = count(|| Rated::of(&record, &key));
    rows.push(("feedback's recent entry", n, b));
    let data_key = fresh_data_key();
    let (n, b, _) = count(|| seal_frame(&ex, &data_key, KeyId(1)).expect("seals"));
    rows.push(("seal frame", n, b));
    let (n, b, _) = count(|| {
        let conv = parse(&ex, &opts, &pricing);
        let mut record = record::build(&ex, &conv, &rules);
        record.prepare();
        let key = record::scope_key(&ex, &conv);
        let rated = Rated::of(&record, &key);
        record.shed_content_trees();
        let sealed = seal_frame(&ex, &data_key, KeyId(1)).expect("seals");
        (record, rated, sealed)
    });
    rows.push(("all of it", n, b));

    println!("| step | allocations | bytes allocated |");
    println!("| --- | ---: | ---: |");
    for (step, n, b) in rows {
        println!("| {step} | {n} | {b} |");
    }
}

/// `ALLOC_PROFILE=build`: dhat's per-call-site profile of one step, run 1,000 times, written to
/// `dhat-heap.json` (open it in dhat's viewer, or sort its program points by `tb`).
fn profile(step: &str) {
    let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [42; 32]));
    let rules = CompiledRules::from_str(BUILTIN_DEFAULT_RULES, &keys).expect("default rules");
    let pricing = Pricing::builtin();
    let opts = ParseOptions::default();
    let ex = exchange();
    let conv = parse(&ex, &opts, &pricing);
    drop(record::build(&ex, &conv, &rules));
    let _profiler = dhat::Profiler::new_heap();
    for _ in 0..1000 {
        match step {
            "parse" => drop(parse(&ex, &opts, &pricing)),
            "build" => drop(record::build(&ex, &conv, &rules)),
            "seal" => drop(seal_frame(&ex, &fresh_data_key(), KeyId(1))),
            other => panic!("ALLOC_PROFILE={other}: parse, build or seal"),
        }
    }
}
