//! Cost of recording a match-dense prompt (veil#10): time per MB of
//! `lorem ipsum alice@example.com sit amet ` repeated, through the whole record build
//! (`exchange::parse` then `record::build` under the shipped default rules).
//!
//! ```text
//! cargo run --release --example dense_prompt -- [MB ...]        # default: 1 2 4 8
//! ```
//!
//! Prints one line per size: the seconds and seconds per MB with no redaction budget (the
//! engine's cost), then what the default budget does with the same exchange (recorded, or
//! dropped and why) and how long that took. Time per MB that stays flat as the size doubles
//! is linear cost; a quadratic engine doubles it every line.
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use veil::exchange::{
    Body, Exchange, ExchangeId, Outcome, ParseOptions, Pricing, Route, Timings, Upstream, parse,
};
use veil::keys::{KeyId, Keyring, MasterKey};
use veil::record;
use veil::redact::{BUILTIN_DEFAULT_RULES, Budget, CompiledRules};

/// The prompt of the report: one email every 39 bytes.
const UNIT: &str = "lorem ipsum alice@example.com sit amet ";

fn body(bytes: Vec<u8>) -> Body {
    Body {
        wire_len: bytes.len() as u64,
        chunks: vec![Bytes::from(bytes)],
        truncated: false,
        content_encoding: None,
    }
}

fn exchange(mb: usize) -> Exchange {
    let prompt = UNIT.repeat((mb << 20) / UNIT.len());
    let request = serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": prompt}],
    });
    let response = serde_json::json!({
        "id": "chatcmpl-dense", "object": "chat.completion", "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": "ok"}}],
        "usage": {"prompt_tokens": 1_000_000, "completion_tokens": 1, "total_tokens": 1_000_001}
    });
    Exchange {
        id: ExchangeId::new(),
        started_at: SystemTime::now(),
        timings: Timings {
            end: Duration::from_millis(10),
            ..Timings::default()
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
        request_headers: vec![("content-type".into(), "application/json".into())].into(),
        tags: Default::default(),
        api_key_fingerprint: None,
        request_body: body(request.to_string().into_bytes()),
        status: Some(200),
        response_headers: vec![("content-type".into(), "application/json".into())].into(),
        response_body: body(response.to_string().into_bytes()),
        outcome: Outcome::Complete,
        websocket: None,
    }
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![1, 2, 4, 8]
    } else {
        sizes
    };
    let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [7; 32]));
    let mut rules = CompiledRules::from_str(BUILTIN_DEFAULT_RULES, &keys).expect("default rules");
    // The scan is measured, not a remembered answer.
    rules.set_memo_bytes(0);
    let (opts, pricing) = (ParseOptions::default(), Pricing::builtin());
    // Warm the lazy DFA caches once.
    let warm = exchange(1);
    let _ = record::build_within(
        &warm,
        &parse(&warm, &opts, &pricing),
        &rules,
        Budget::UNLIMITED,
    );
    for mb in sizes {
        let ex = exchange(mb);
        let conv = parse(&ex, &opts, &pricing);
        let t = Instant::now();
        let record = record::build_within(&ex, &conv, &rules, Budget::UNLIMITED);
        let secs = t.elapsed().as_secs_f64();
        let emails = record.redactions.get("EMAIL").copied().unwrap_or(0);
        let t = Instant::now();
        let budgeted = record::build_within(&ex, &conv, &rules, Budget::DEFAULT);
        let budget_secs = t.elapsed().as_secs_f64();
        println!(
            "{mb:>3} MB  {secs:>8.3} s  {:>7.4} s/MB  emails masked {emails:>7}  default budget: {} in {budget_secs:.3} s",
            secs / mb as f64,
            match budgeted.content_dropped {
                None => "recorded".to_string(),
                Some(why) => format!("dropped ({why})"),
            },
        );
    }
}
