//! The AWS event stream decoder on arbitrary bytes split into arbitrary chunks, and Bedrock's
//! stream folds on well-framed streams of arbitrary events.
//!
//! Raw mode (first byte even): no panic; no message over the limit; the same messages as one
//! whole push when the stream decodes cleanly; and every decoded message whose headers are
//! all strings re-encodes to exactly the bytes it came from (the framing is canonical).
//! Framed mode (first byte odd): the rest, split at `0xFF`, becomes messages (first byte of
//! each picks the event type, the rest is the payload), framed correctly and parsed as a
//! `ConverseStream` or `InvokeModelWithResponseStream` answer: no panic, sizes preserved.
#![no_main]

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use veil::exchange::eventstream::{EventStreamDecoder, HeaderValue, Message, encode};
use veil::exchange::{
    Body, Exchange, ExchangeId, Outcome, ParseOptions, Pricing, Route, Timings, Upstream, parse,
};

/// Small, so the size limit is exercised often.
const MAX_MESSAGE: usize = 4096;

const EVENTS: &[&str] = &[
    "messageStart",
    "contentBlockStart",
    "contentBlockDelta",
    "contentBlockStop",
    "messageStop",
    "metadata",
    "chunk",
    "exception",
];

fn decode_all(stream: &[u8], size: usize) -> (Vec<Message>, bool) {
    let mut d = EventStreamDecoder::new(MAX_MESSAGE);
    let mut out = Vec::new();
    for piece in stream.chunks(size) {
        d.push(piece);
        loop {
            match d.next_message() {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(_) => return (out, false),
            }
        }
    }
    let clean = d.finish().is_ok();
    (out, clean)
}

fn raw(size: usize, stream: &[u8]) {
    let (split, clean) = decode_all(stream, size);
    let (whole, whole_clean) = decode_all(stream, stream.len().max(1));
    let mut at = 0;
    for m in &whole {
        let headers: Option<Vec<(&str, &str)>> = m
            .headers
            .iter()
            .map(|(n, v)| match v {
                HeaderValue::String(s) => Some((n.as_str(), s.as_str())),
                _ => None,
            })
            .collect();
        let len = u32::from_be_bytes(stream[at..at + 4].try_into().unwrap()) as usize;
        assert!(len <= MAX_MESSAGE);
        if let Some(h) = headers {
            assert_eq!(encode(&h, &m.payload), &stream[at..at + len]);
        }
        at += len;
    }
    if clean && whole_clean {
        assert_eq!(split, whole);
    }
}

fn framed(choice: u8, size: usize, rest: &[u8]) {
    let mut stream = Vec::new();
    for piece in rest.split(|&b| b == 0xFF) {
        let Some((&kind, payload)) = piece.split_first() else {
            continue;
        };
        let event = EVENTS[usize::from(kind) % EVENTS.len()];
        let headers: &[(&str, &str)] = if event == "exception" {
            &[
                (":message-type", "exception"),
                (":exception-type", "throttlingException"),
            ]
        } else {
            &[(":message-type", "event"), (":event-type", event)]
        };
        stream.extend(encode(headers, payload));
    }
    let path = if choice & 2 == 0 {
        "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/converse-stream"
    } else {
        "/model/us.anthropic.claude-sonnet-4-5-20250929-v1%3A0/invoke-with-response-stream"
    };
    let req: &[u8] = if choice & 4 == 0 {
        br#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#
    } else {
        br#"{"anthropic_version":"bedrock-2023-05-31","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#
    };
    let body = |b: &[u8]| Body {
        chunks: b.chunks(size).map(Bytes::copy_from_slice).collect(),
        wire_len: b.len() as u64,
        truncated: false,
        content_encoding: None,
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
            host: "bedrock-runtime.us-east-1.amazonaws.com".into(),
            port: 443,
        },
        client_version: "HTTP/1.1".into(),
        method: "POST".into(),
        path: path.into(),
        request_headers: Default::default(),
        tags: Default::default(),
        api_key_fingerprint: None,
        request_body: body(req),
        status: Some(200),
        response_headers: vec![(
            "content-type".into(),
            "application/vnd.amazon.eventstream".into(),
        )]
        .into(),
        response_body: body(&stream),
        outcome: Outcome::Complete,
        websocket: None,
    };
    let opts = ParseOptions {
        max_event: MAX_MESSAGE,
        decode_limit: 1 << 20,
    };
    let c = parse(&ex, &opts, &Pricing::default());
    assert_eq!(c.response_bytes, stream.len() as u64);
    assert_eq!(c.finish_reasons.len(), c.output_messages.len());
    assert_eq!(c.provider.as_str(), "aws.bedrock");
}

fuzz_target!(|data: &[u8]| {
    // First byte: mode (bit 0), endpoint and body (bits 1-2), chunk size (bits 3-7).
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let size = usize::from(first >> 3) + 1;
    if first & 1 == 0 {
        raw(size, rest);
    } else {
        framed(first, size, rest);
    }
});
