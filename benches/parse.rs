//! Parsing throughput of `exchange::parse`: a 50-chunk streamed chat completion, a 100 KB
//! Chat Completions request and a 100 KB Anthropic Messages request of content blocks (an
//! agent's transcript: text, tool use and tool results), plus the bare SSE parser on the
//! same stream.
//!
//! Each input is parsed and checked once before timing, so a regression that silently
//! parses nothing cannot look fast.

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use veil::exchange::sse::parse_all;
use veil::exchange::{
    Body, Exchange, ExchangeId, Outcome, ParseOptions, Pricing, Route, Timings, Upstream, parse,
};

fn body(chunks: Vec<Bytes>) -> Body {
    Body {
        wire_len: chunks.iter().map(|c| c.len() as u64).sum(),
        chunks,
        truncated: false,
        content_encoding: None,
    }
}

fn exchange(req: Vec<u8>, ctype: &str, resp: Vec<Bytes>) -> Exchange {
    Exchange {
        id: ExchangeId::new(),
        started_at: SystemTime::UNIX_EPOCH,
        timings: Timings {
            first_byte: Some(Duration::from_millis(200)),
            end: Duration::from_millis(1200),
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
        request_headers: Default::default(),
        tags: Default::default(),
        api_key_fingerprint: None,
        request_body: body(vec![Bytes::from(req)]),
        status: Some(200),
        response_headers: vec![("content-type".into(), ctype.into())].into(),
        response_body: body(resp),
        outcome: Outcome::Complete,
        websocket: None,
    }
}

/// 50 `chat.completion.chunk` events (role, 47 content deltas, finish, usage) plus
/// `[DONE]`, one network chunk each, as OpenAI sends them.
fn stream_50() -> Vec<Bytes> {
    let mut out = Vec::new();
    let event = |delta: &str, finish: &str, usage: &str| {
        Bytes::from(format!(
            "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1741570283,\
\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_06737a9306\",\"choices\":[{{\"index\":0,\
\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}],\"usage\":{usage}}}\n\n"
        ))
    };
    out.push(event(
        r#"{"role":"assistant","content":""}"#,
        "null",
        "null",
    ));
    for i in 0..47 {
        out.push(event(
            &format!(r#"{{"content":" word{i} of the answer,"}}"#),
            "null",
            "null",
        ));
    }
    out.push(event("{}", "\"stop\"", "null"));
    out.push(Bytes::from_static(
        b"data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":1200,\"completion_tokens\":190,\"total_tokens\":1390}}\n\n",
    ));
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}

/// A ~100 KB chat request: a long transcript of alternating turns.
fn request_100k() -> Vec<u8> {
    let turn = "Please summarize the following paragraph about observability pipelines, \
                keeping names like Jane Doe and emails like jane@example.com intact. ";
    let mut messages = vec![serde_json::json!({"role": "system", "content": "You are terse."})];
    let mut i = 0;
    while serde_json::to_vec(&messages).map_or(0, |v| v.len()) < 100_000 {
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages.push(serde_json::json!({"role": role, "content": turn.repeat(6)}));
        i += 1;
    }
    serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o-mini", "messages": messages, "temperature": 0.2, "stream": true
    }))
    .expect("invariant: a json! value serializes")
}

/// A ~100 KB Messages request of content blocks, as an agent sends it: a system prompt,
/// then turns of a user's text, an assistant's text and tool use, and the tool's result.
fn messages_request_100k() -> Vec<u8> {
    let text = "Please summarize the following paragraph about observability pipelines, \
                keeping names like Jane Doe and emails like jane@example.com intact. ";
    let mut messages = Vec::new();
    let (mut i, mut len) = (0, 0);
    while len < 100_000 {
        let turn = [
            serde_json::json!({"role": "user", "content": [
                {"type": "text", "text": text.repeat(2)},
                {"type": "tool_result", "tool_use_id": format!("toolu_{i}"), "content": text.repeat(2)}]}),
            serde_json::json!({"role": "assistant", "content": [
                {"type": "text", "text": text},
                {"type": "tool_use", "id": format!("toolu_{}", i + 1), "name": "search",
                 "input": {"query": "observability pipelines", "limit": 5}}]}),
        ];
        len += turn.iter().map(|m| m.to_string().len()).sum::<usize>();
        messages.extend(turn);
        i += 1;
    }
    serde_json::to_vec(&serde_json::json!({
        "model": "claude-sonnet-4-5", "max_tokens": 1024, "stream": true,
        "system": [{"type": "text", "text": "You are terse."}],
        "tools": [{"name": "search", "input_schema": {"type": "object"}}],
        "messages": messages
    }))
    .expect("invariant: a json! value serializes")
}

fn bench(c: &mut Criterion) {
    let pricing = Pricing::builtin();
    let opts = ParseOptions::default();
    let small_req =
        br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true}"#;

    let chunks = stream_50();
    let stream_len: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    let stream_ex = exchange(small_req.to_vec(), "text/event-stream", chunks.clone());
    let check = parse(&stream_ex, &opts, &pricing);
    // Every content delta parsed: the first and the last of the 47 are in the answer.
    let answer = serde_json::to_string(&check.output_messages_json()).expect("invariant: JSON");
    assert!(answer.contains(" word0 of") && answer.contains(" word46 of the answer,"));
    assert_eq!(check.finish_reasons, ["stop"]);
    assert_eq!(check.usage.output_tokens, Some(190));

    let mut g = c.benchmark_group("parse");
    g.throughput(Throughput::Bytes(stream_len));
    g.bench_function("stream_50_chunks", |b| {
        b.iter(|| black_box(parse(black_box(&stream_ex), &opts, &pricing)))
    });
    let joined: Vec<u8> = chunks.concat();
    g.bench_function("sse_only_50_chunks", |b| {
        b.iter(|| black_box(parse_all(black_box(&joined), 1 << 20)))
    });

    let req = request_100k();
    g.throughput(Throughput::Bytes(req.len() as u64));
    let req_ex = exchange(
        req,
        "application/json",
        vec![Bytes::from_static(b"{\"id\":\"x\",\"choices\":[]}")],
    );
    let check = parse(&req_ex, &opts, &pricing);
    assert!(
        check.input_messages.len() > 100,
        "{}",
        check.input_messages.len()
    );
    g.bench_function("request_100k", |b| {
        b.iter(|| black_box(parse(black_box(&req_ex), &opts, &pricing)))
    });

    let req = messages_request_100k();
    g.throughput(Throughput::Bytes(req.len() as u64));
    let mut messages_ex = exchange(
        req,
        "application/json",
        vec![Bytes::from_static(
            b"{\"id\":\"msg_x\",\"type\":\"message\",\"content\":[]}",
        )],
    );
    messages_ex.upstream.host = "api.anthropic.com".into();
    messages_ex.path = "/v1/messages".into();
    let check = parse(&messages_ex, &opts, &pricing);
    assert!(
        check.input_messages.len() > 100 && check.tool_names == ["search"],
        "{} {:?}",
        check.input_messages.len(),
        check.tool_names
    );
    g.bench_function("messages_request_100k", |b| {
        b.iter(|| black_box(parse(black_box(&messages_ex), &opts, &pricing)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
