//! `exchange::parse` on arbitrary bodies for every dialect: never panics, always returns
//! a model whose sizes match the input.
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use veil::exchange::{
    Body, Exchange, ExchangeId, Outcome, ParseOptions, Pricing, Route, Timings, Upstream, parse,
};

const ENDPOINTS: &[(&str, &str)] = &[
    ("api.openai.com", "/v1/chat/completions"),
    ("api.openai.com", "/v1/responses"),
    ("api.openai.com", "/v1/embeddings"),
    ("api.openai.com", "/v1/completions"),
    ("api.anthropic.com", "/v1/messages"),
    (
        "generativelanguage.googleapis.com",
        "/v1beta/models/gemini-2.5-flash:generateContent",
    ),
    (
        "generativelanguage.googleapis.com",
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
    ),
    (
        "generativelanguage.googleapis.com",
        "/v1beta/models/gemini-embedding-001:embedContent",
    ),
    (
        "us-east5-aiplatform.googleapis.com",
        "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict",
    ),
    ("127.0.0.1", "/api/chat"),
    ("127.0.0.1", "/api/generate"),
    (
        "bedrock-runtime.us-east-1.amazonaws.com",
        "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse",
    ),
    (
        "bedrock-runtime.us-east-1.amazonaws.com",
        "/model/meta.llama3-70b-instruct-v1%3A0/invoke-with-response-stream",
    ),
];

/// Parsed once: re-parsing the TOML table on every input cost most of each execution.
fn pricing() -> &'static Pricing {
    static PRICING: OnceLock<Pricing> = OnceLock::new();
    PRICING.get_or_init(Pricing::builtin)
}

fn body(bytes: &[u8], chunk: usize) -> Body {
    Body {
        chunks: bytes.chunks(chunk).map(Bytes::copy_from_slice).collect(),
        wire_len: bytes.len() as u64,
        truncated: false,
        content_encoding: None,
    }
}

fuzz_target!(|data: &[u8]| {
    // Header bytes: endpoint, content type, status class, split point, chunk size.
    let [which, kind, status, split, chunk, rest @ ..] = data else {
        return;
    };
    let (host, path) = ENDPOINTS[usize::from(*which) % ENDPOINTS.len()];
    let split = (usize::from(*split) * rest.len()) / 256;
    let (req, resp) = rest.split_at(split);
    let ctype = match kind % 3 {
        0 => "text/event-stream",
        1 => "application/json",
        _ => "application/vnd.amazon.eventstream",
    };
    let ex = Exchange {
        id: ExchangeId::new(),
        started_at: SystemTime::UNIX_EPOCH,
        timings: Timings {
            first_byte: Some(Duration::from_millis(10)),
            end: Duration::from_millis(20),
            ..Timings::default()
        },
        client_addr: None,
        route: Route::Intercept,
        upstream: Upstream {
            scheme: "https".into(),
            host: host.into(),
            port: 443,
        },
        client_version: "HTTP/1.1".into(),
        method: "POST".into(),
        path: path.into(),
        request_headers: Default::default(),
        tags: Default::default(),
        api_key_fingerprint: None,
        request_body: body(req, usize::from(*chunk) + 1),
        status: Some(if status % 4 == 0 { 429 } else { 200 }),
        response_headers: vec![("content-type".into(), ctype.into())].into(),
        response_body: body(resp, usize::from(*chunk) + 1),
        outcome: Outcome::Complete,
        websocket: None,
    };
    let opts = ParseOptions {
        max_event: 4096,
        decode_limit: 1 << 20,
        ..ParseOptions::default()
    };
    let c = parse(&ex, &opts, pricing());
    assert_eq!(c.request_bytes, req.len() as u64);
    assert_eq!(c.finish_reasons.len(), c.output_messages.len());
});
