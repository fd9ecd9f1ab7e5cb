//! Seals exchanges in a loop and prints `ACK <id>` (flushed) for each one the store reports
//! durable. A crash-test driver: kill it at any moment (SIGKILL), reopen the store, and every
//! printed ID must unseal.
//!
//! ```text
//! cargo run --release --example seal_load -- DATA_DIR [COUNT]
//! ```
//! The master key is `VEIL_MASTER_KEY` if set, else a fixed test key (never use it for real data).
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use veil::exchange::{Body, Exchange, ExchangeId, Outcome, Route, Timings, Upstream};
use veil::keys::{Keyring, MASTER_ENV};
use veil::seal::{SealOptions, SealStore};

fn exchange(n: usize) -> Exchange {
    let body = |len: usize| Body {
        chunks: vec![Bytes::from(vec![b'a' + (n % 26) as u8; len])],
        wire_len: len as u64,
        truncated: false,
        content_encoding: None,
    };
    Exchange {
        id: ExchangeId::new(),
        started_at: SystemTime::now(),
        timings: Timings {
            end: Duration::from_millis(5),
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
        request_headers: vec![("content-type".into(), "application/json".into())].into(),
        tags: Default::default(),
        api_key_fingerprint: None,
        request_body: body(200 + n * 31 % 4000),
        status: Some(200),
        response_headers: Default::default(),
        response_body: body(1000 + n * 997 % 150_000),
        outcome: Outcome::Complete,
        websocket: None,
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().expect("usage: seal_load DATA_DIR [COUNT]"));
    let count: usize = args
        .next()
        .map_or(usize::MAX, |c| c.parse().expect("COUNT"));
    let keyring = match std::env::var(MASTER_ENV) {
        Ok(text) => Keyring::parse(&text).expect("VEIL_MASTER_KEY"),
        Err(_) => Keyring::parse(&"42".repeat(32)).expect("test key"),
    };
    let store = SealStore::open(&dir, keyring, SealOptions::default()).expect("open store");
    let mut out = std::io::stdout().lock();
    let mut n = 0;
    while n < count {
        // 16 in flight at a time, so group commit batches them.
        let acks: Vec<_> = (n..(n + 16).min(count))
            .map(|i| store.submit(&exchange(i), None).expect("submit"))
            .collect();
        n += acks.len();
        for ack in acks {
            let id = ack.wait().expect("durable");
            writeln!(out, "ACK {id}").expect("stdout");
            out.flush().expect("stdout");
        }
    }
}
