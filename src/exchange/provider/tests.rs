//! Fixture tests: every provider, operation and mode, asserted field by field; streams
//! re-parsed split at every byte boundary and compared with their non-streamed twin.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;
use crate::exchange::model::Usage;
use crate::exchange::model::{InputMessage, Modality, OutputMessage, Part, Role};
use crate::exchange::{Body, ExchangeId, Route, Timings, Upstream, UpstreamFailure};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/providers/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path}: {e}"))
}

fn body(chunks: Vec<Bytes>) -> Body {
    let len = chunks.iter().map(Bytes::len).sum::<usize>() as u64;
    Body {
        chunks,
        wire_len: len,
        truncated: false,
        content_encoding: None,
    }
}

/// A completed exchange to `https://{host}{path}`.
fn exchange(host: &str, path: &str, req: &[u8], status: u16, ctype: &str, resp: &[u8]) -> Exchange {
    Exchange {
        id: ExchangeId::new(),
        started_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_183_387),
        timings: Timings {
            request_end: Some(Duration::from_millis(5)),
            response_headers: Some(Duration::from_millis(300)),
            first_byte: Some(Duration::from_millis(320)),
            end: Duration::from_millis(1320),
            ..Default::default()
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
        request_headers: vec![("content-type".into(), "application/json".into())].into(),
        tags: Default::default(),
        api_key_fingerprint: Some("fp_test".into()),
        request_body: body(vec![Bytes::copy_from_slice(req)]),
        status: Some(status),
        response_headers: vec![("content-type".into(), ctype.into())].into(),
        response_body: body(vec![Bytes::copy_from_slice(resp)]),
        outcome: Outcome::Complete,
        websocket: None,
    }
}

/// Not understood: content fields empty, `operation = unknown`.
fn opaque(c: &Conversation) -> bool {
    c.operation == Operation::Unknown
}

fn run(ex: &Exchange) -> Conversation {
    parse(ex, &ParseOptions::default(), &Pricing::builtin())
}

/// The request fixture with `"stream": true` added.
fn streaming(req: &[u8]) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(req).unwrap();
    v["stream"] = true.into();
    serde_json::to_vec(&v).unwrap()
}

fn text(s: &str) -> Part {
    Part::text(s)
}

fn out(parts: Vec<Part>, finish: &str) -> OutputMessage {
    OutputMessage {
        role: Role::Assistant,
        parts,
        finish_reason: finish.into(),
    }
}

/// What a streamed and a non-streamed response of the same content must agree on.
fn assert_same_result(streamed: &Conversation, whole: &Conversation) {
    assert!(streamed.stream, "streamed exchange not marked stream");
    assert!(!streamed.aborted && !opaque(streamed), "{streamed:?}");
    assert_eq!(streamed.usage, whole.usage, "usage");
    assert_eq!(
        streamed.finish_reasons, whole.finish_reasons,
        "finish reasons"
    );
    assert_eq!(streamed.output_messages, whole.output_messages, "output");
    assert_eq!(streamed.response_id, whole.response_id, "response id");
    assert_eq!(
        streamed.response_model, whole.response_model,
        "response model"
    );
    assert_eq!(streamed.cost_usd, whole.cost_usd, "cost");
    assert_eq!(streamed.input_messages, whole.input_messages, "input");
}

/// Re-parses `ex` with its response body split at every byte boundary, and in many random
/// pieces, asserting the same model each time.
fn assert_split_invariant(ex: &Exchange) {
    let expected = run(ex);
    let whole = ex.response_body.bytes();
    for cut in 0..=whole.len() {
        let mut split = ex.clone();
        split.response_body = body(vec![whole.slice(..cut), whole.slice(cut..)]);
        assert_eq!(run(&split), expected, "split at byte {cut}");
    }
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig::with_cases(64));
    runner
        .run(
            &proptest::collection::vec(0..whole.len(), 0..16),
            |mut cuts| {
                cuts.sort_unstable();
                let mut chunks = Vec::new();
                let mut at = 0;
                for c in cuts.into_iter().chain([whole.len()]) {
                    chunks.push(whole.slice(at..c));
                    at = c;
                }
                let mut split = ex.clone();
                split.response_body = body(chunks);
                prop_assert_eq!(run(&split), expected.clone());
                Ok(())
            },
        )
        .unwrap();
}

const SSE: &str = "text/event-stream; charset=utf-8";
const JSON: &str = "application/json";

// === detect ===

#[test]
fn detect_names_provider_operation_and_dialect() {
    type Want = Option<(&'static str, &'static str, Api)>;
    let cases: &[(&str, &str, Want)] = &[
        (
            "api.openai.com",
            "/v1/chat/completions",
            Some(("openai", "chat", Api::OpenAiChat)),
        ),
        (
            "api.openai.com",
            "/v1/responses",
            Some(("openai", "chat", Api::OpenAiResponses)),
        ),
        (
            "api.openai.com",
            "/v1/embeddings",
            Some(("openai", "embeddings", Api::OpenAiEmbeddings)),
        ),
        (
            "api.openai.com",
            "/v1/completions",
            Some(("openai", "text_completion", Api::OpenAiCompletions)),
        ),
        (
            "api.anthropic.com",
            "/v1/messages",
            Some(("anthropic", "chat", Api::AnthropicMessages)),
        ),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            Some(("gcp.gemini", "generate_content", Api::GeminiGenerate)),
        ),
        (
            "us-central1-aiplatform.googleapis.com",
            "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent",
            Some(("gcp.vertex_ai", "generate_content", Api::GeminiGenerate)),
        ),
        (
            "us-east5-aiplatform.googleapis.com",
            "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:rawPredict",
            Some(("gcp.vertex_ai", "chat", Api::AnthropicMessages)),
        ),
        (
            "aiplatform.googleapis.com",
            "/v1/projects/p/locations/global/publishers/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict",
            Some(("gcp.vertex_ai", "chat", Api::AnthropicMessages)),
        ),
        (
            // rawPredict of another publisher is not a Messages call.
            "us-central1-aiplatform.googleapis.com",
            "/v1/projects/p/locations/us-central1/publishers/google/models/gemini-2.0-flash:rawPredict",
            None,
        ),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-embedding-001:embedContent",
            Some(("gcp.gemini", "embeddings", Api::GeminiEmbed)),
        ),
        (
            "myco.openai.azure.com",
            "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21",
            Some(("azure.ai.openai", "chat", Api::OpenAiChat)),
        ),
        (
            "openrouter.ai",
            "/api/v1/chat/completions",
            Some(("openrouter", "chat", Api::OpenAiChat)),
        ),
        (
            "api.groq.com",
            "/openai/v1/chat/completions",
            Some(("groq", "chat", Api::OpenAiChat)),
        ),
        (
            "api.together.xyz",
            "/v1/chat/completions",
            Some(("together_ai", "chat", Api::OpenAiChat)),
        ),
        (
            "api.mistral.ai",
            "/v1/chat/completions",
            Some(("mistral_ai", "chat", Api::OpenAiChat)),
        ),
        (
            "api.deepseek.com",
            "/chat/completions",
            Some(("deepseek", "chat", Api::OpenAiChat)),
        ),
        (
            "localhost",
            "/v1/chat/completions",
            Some(("openai_compatible", "chat", Api::OpenAiChat)),
        ),
        (
            "vllm.internal",
            "/v1/completions",
            Some((
                "openai_compatible",
                "text_completion",
                Api::OpenAiCompletions,
            )),
        ),
        ("api.openai.com", "/v1/files", None),
        ("api.openai.com", "/v1/threads/t_1/messages", None),
        (
            "generativelanguage.googleapis.com",
            "/v1beta/models/gemini-2.5-flash:countTokens",
            None,
        ),
        ("example.com", "/", None),
    ];
    for (host, path, want) in cases {
        let ex = exchange(host, path, b"{}", 200, JSON, b"{}");
        let got = detect(&ex).map(|t| (t.provider.as_str(), t.operation.as_str(), t.api));
        assert_eq!(got, *want, "{host}{path}");
    }
    let azure = exchange(
        "myco.openai.azure.com",
        "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21",
        b"{}",
        200,
        JSON,
        b"{}",
    );
    assert_eq!(
        detect(&azure).unwrap().path_model.as_deref(),
        Some("prod-gpt4o")
    );
    let mut get = exchange(
        "api.openai.com",
        "/v1/chat/completions",
        b"",
        200,
        JSON,
        b"{}",
    );
    get.method = "GET".into();
    assert_eq!(detect(&get), None);
}

#[test]
fn gateway_exchanges_are_detected_by_their_upstream() {
    let mut ex = exchange(
        "api.anthropic.com",
        "/v1/messages",
        &fixture("anthropic/messages_request.json"),
        200,
        JSON,
        &fixture("anthropic/messages_response.json"),
    );
    ex.route = Route::Gateway {
        name: "anthropic".into(),
    };
    let c = run(&ex);
    assert_eq!(
        (c.provider.as_str(), c.operation.as_str()),
        ("anthropic", "chat")
    );
    assert_eq!(c.server_address, "api.anthropic.com");
}

// === OpenAI Chat Completions ===

fn chat_tools(resp: &str, ctype: &str, stream: bool) -> Exchange {
    let req = fixture("openai/chat_tools_request.json");
    let req = if stream { streaming(&req) } else { req };
    exchange(
        "api.openai.com",
        "/v1/chat/completions",
        &req,
        200,
        ctype,
        &fixture(resp),
    )
}

#[test]
fn openai_chat_request_and_tool_call_response() {
    let ex = chat_tools("openai/chat_tools_response.json", JSON, false);
    let c = run(&ex);
    assert!(!opaque(&c), "{:?}", c.parse_error);
    assert_eq!(c.provider.as_str(), "openai");
    assert_eq!(c.operation.as_str(), "chat");
    assert_eq!(detect(&ex).map(|t| t.api), Some(Api::OpenAiChat));
    assert_eq!(
        (c.server_address.as_str(), c.server_port),
        ("api.openai.com", 443)
    );
    assert_eq!(c.request_model.as_deref(), Some("gpt-4o"));
    assert_eq!(c.response_model.as_deref(), Some("gpt-4o-2024-08-06"));
    assert_eq!(
        c.response_id.as_deref(),
        Some("chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG")
    );
    assert!(!c.stream);
    assert_eq!(
        c.user_id.as_deref(),
        Some("sid-5b1c9e"),
        "safety_identifier wins over user"
    );
    assert_eq!(c.tool_names, ["get_weather", "get_time"]);
    assert_eq!(c.params["temperature"], json!(0.2));
    assert_eq!(c.params["top_p"], json!(0.9));
    assert_eq!(c.params["max_tokens"], json!(300));
    assert_eq!(c.params["stop_sequences"], json!(["END"]));
    assert_eq!(c.params["seed"], json!(42));
    assert!(!c.params.contains_key("choice.count"));
    assert!(
        c.system_instructions.is_empty(),
        "chat system messages stay in input"
    );

    assert_eq!(c.input_messages.len(), 6);
    assert_eq!(c.input_messages[0].role, Role::System);
    assert_eq!(
        c.input_messages[1],
        InputMessage {
            role: Role::User,
            parts: vec![
                text("What's the weather and time where this was taken? It's Paris."),
                Part::Blob {
                    modality: Some(Modality::Image),
                    mime_type: Some("image/png".into()),
                    byte_len: Some(70),
                },
                Part::Uri {
                    modality: Some(Modality::Image),
                    uri: "https://example.com/paris.jpg".into(),
                },
            ],
            name: Some("alice".into()),
        }
    );
    assert_eq!(
        c.input_messages[2].parts,
        [Part::ToolCall {
            id: Some("call_prev1".into()),
            name: "get_weather".into(),
            arguments: Some(json!({"location": "Lyon"})),
        }]
    );
    assert_eq!(
        c.input_messages[3],
        InputMessage {
            role: Role::Tool,
            parts: vec![Part::ToolCallResponse {
                id: Some("call_prev1".into()),
                response: json!("{\"temp_c\":21}"),
            }],
            name: None,
        }
    );

    assert_eq!(
        c.output_messages,
        [out(
            vec![
                Part::ToolCall {
                    id: Some("call_abc123".into()),
                    name: "get_weather".into(),
                    arguments: Some(json!({"location": "Paris, France", "unit": "celsius"})),
                },
                Part::ToolCall {
                    id: Some("call_def456".into()),
                    name: "get_time".into(),
                    arguments: Some(json!({"timezone": "Europe/Paris"})),
                },
            ],
            "tool_call",
        )]
    );
    assert_eq!(c.finish_reasons, ["tool_call"]);
    assert_eq!(
        c.usage,
        Usage {
            input_tokens: Some(1117),
            output_tokens: Some(46),
            cache_read_tokens: Some(1024),
            cache_creation_tokens: None,
            reasoning_tokens: Some(0),
            // The fixture reports `audio_tokens: 0` both ways.
            input_audio_tokens: Some(0),
            output_audio_tokens: Some(0),
            cache_read_audio_tokens: None,
        }
    );
    // gpt-4o-2024-08-06 → gpt-4o: 93 uncached at 2.50, 1024 cached at 1.25, 46 out at 10.
    let want = (93.0 * 2.5 + 1024.0 * 1.25 + 46.0 * 10.0) / 1e6;
    assert!(
        (c.cost_usd.unwrap() - want).abs() < 1e-12,
        "{:?}",
        c.cost_usd
    );
    assert_eq!(c.timings.duration, Duration::from_millis(1320));
    assert_eq!(
        c.timings.time_to_first_chunk,
        Some(Duration::from_millis(320))
    );
    assert_eq!(c.status, Some(200));
    assert_eq!(c.error_type, None);
}

#[test]
fn openai_chat_messages_serialize_to_genai_json() {
    let c = run(&chat_tools("openai/chat_tools_response.json", JSON, false));
    let input = c.input_messages_json();
    assert_eq!(
        input[1]["parts"][1],
        json!({"type": "blob", "modality": "image", "mime_type": "image/png", "byte_len": 70})
    );
    assert!(
        !input.to_string().contains("iVBORw0KGgo"),
        "image bytes leaked"
    );
    assert_eq!(
        c.output_messages_json(),
        json!([{"role": "assistant", "finish_reason": "tool_call", "parts": [
            {"type": "tool_call", "id": "call_abc123", "name": "get_weather",
             "arguments": {"location": "Paris, France", "unit": "celsius"}},
            {"type": "tool_call", "id": "call_def456", "name": "get_time",
             "arguments": {"timezone": "Europe/Paris"}}]}])
    );
}

#[test]
fn openai_chat_stream_with_tool_argument_deltas_equals_json() {
    let whole = run(&chat_tools("openai/chat_tools_response.json", JSON, false));
    let ex = chat_tools("openai/chat_tools_stream.sse", SSE, true);
    let streamed = run(&ex);
    assert_same_result(&streamed, &whole);
    assert_split_invariant(&ex);
}

/// veil#17: parallel tool calls streamed as several OpenAI-compatible servers send them, with
/// the same `index` or with none, a new `id` each: two calls, not one named `fg` with
/// arguments `{}{}`. A continuation chunk without an `id` still extends its call.
#[test]
fn openai_stream_parallel_tool_calls_with_a_shared_or_missing_index_stay_apart() {
    let chunk = |call: Value| {
        let v = json!({"id": "c1", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": null}]});
        format!("data: {v}\n\n")
    };
    for index in [Some(0), None] {
        let call = |id: Option<&str>, name: Option<&str>, args: &str| {
            let mut c = json!({"function": {"arguments": args}});
            if let Some(i) = index {
                c["index"] = i.into();
            }
            if let Some(id) = id {
                c["id"] = id.into();
                c["type"] = "function".into();
            }
            if let Some(n) = name {
                c["function"]["name"] = n.into();
            }
            c
        };
        let mut sse = chunk(call(Some("call_a"), Some("f"), "{\"x\""));
        sse += &chunk(call(None, None, ":1}"));
        sse += &chunk(call(Some("call_b"), Some("g"), "{}"));
        sse += "data: {\"id\":\"c1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n";
        sse += "data: [DONE]\n\n";
        let ex = exchange(
            "api.openai.com",
            "/v1/chat/completions",
            br#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
            200,
            SSE,
            sse.as_bytes(),
        );
        let c = run(&ex);
        assert_eq!(
            c.output_messages_json(),
            json!([{"role": "assistant", "finish_reason": "tool_call", "parts": [
                {"type": "tool_call", "id": "call_a", "name": "f", "arguments": {"x": 1}},
                {"type": "tool_call", "id": "call_b", "name": "g", "arguments": {}}]}]),
            "index {index:?}"
        );
        assert_split_invariant(&ex);
    }
}

/// veil#17: an audio answer (`modalities: ["text", "audio"]`). Its transcript is the answer's
/// text, streamed or not; the audio is recorded as its size only, never its bytes.
#[test]
fn openai_audio_answer_records_the_transcript_and_only_the_size_of_the_audio() {
    // A 44-byte WAV header as base64 (60 characters, one `=`), whole and in two chunks.
    let b64 = "UklGRiQAAABXQVZFZm10IBAAAAABAAEAQB8AAEAfAAABAAgAZGF0YQAAAAA=";
    let req = br#"{"model":"gpt-4o-audio-preview","modalities":["text","audio"],
        "audio":{"voice":"alloy","format":"wav"},"messages":[{"role":"user","content":"hi"}]}"#;
    let whole = format!(
        r#"{{"id":"c1","object":"chat.completion","model":"gpt-4o-audio-preview",
        "choices":[{{"index":0,"finish_reason":"stop","message":{{"role":"assistant",
        "content":null,"audio":{{"id":"audio_1","expires_at":1,"data":"{b64}",
        "transcript":"Hello there"}}}}}}]}}"#
    );
    let chunk = |delta: Value, finish: Value| {
        let v = json!({"id": "c1", "object": "chat.completion.chunk",
            "model": "gpt-4o-audio-preview",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        format!("data: {v}\n\n")
    };
    let (b1, b2) = b64.split_at(32);
    let mut sse = chunk(
        json!({"role": "assistant", "audio": {"id": "audio_1", "transcript": "Hello "}}),
        Value::Null,
    );
    sse += &chunk(json!({"audio": {"data": b1}}), Value::Null);
    sse += &chunk(
        json!({"audio": {"data": b2, "transcript": "there"}}),
        Value::Null,
    );
    // The issue's input: the last chunk carries text and the finish reason together.
    sse += &chunk(json!({"audio": {"expires_at": 1}}), json!("stop"));
    sse += "data: [DONE]\n\n";
    let streamed_req = streaming(req);
    for (name, ex) in [
        (
            "json",
            exchange(
                "api.openai.com",
                "/v1/chat/completions",
                req,
                200,
                JSON,
                whole.as_bytes(),
            ),
        ),
        (
            "stream",
            exchange(
                "api.openai.com",
                "/v1/chat/completions",
                &streamed_req,
                200,
                SSE,
                sse.as_bytes(),
            ),
        ),
    ] {
        let c = run(&ex);
        let out = c.output_messages_json();
        assert_eq!(
            out,
            json!([{"role": "assistant", "finish_reason": "stop", "parts": [
                {"type": "text", "content": "Hello there"},
                {"type": "blob", "modality": "audio", "byte_len": 44}]}]),
            "{name}"
        );
        assert!(
            !out.to_string().contains(&b64[..16]),
            "{name}: audio bytes recorded"
        );
    }
    // The streamed transcript alone, as the issue reported it: one chunk with text and finish.
    let one = chunk(
        json!({"audio": {"transcript": "Hello there"}}),
        json!("stop"),
    ) + "data: [DONE]\n\n";
    let ex = exchange(
        "api.openai.com",
        "/v1/chat/completions",
        &streamed_req,
        200,
        SSE,
        one.as_bytes(),
    );
    assert_eq!(run(&ex).output_messages[0].parts[0], text("Hello there"));
    assert_split_invariant(&ex);
}

fn chat_n2(resp: &str, ctype: &str, stream: bool) -> Exchange {
    let req = fixture("openai/chat_n2_request.json");
    let req = if stream { streaming(&req) } else { req };
    exchange(
        "api.openai.com",
        "/v1/chat/completions",
        &req,
        200,
        ctype,
        &fixture(resp),
    )
}

#[test]
fn openai_chat_n2_choices_json_and_stream() {
    let whole = run(&chat_n2("openai/chat_n2_response.json", JSON, false));
    assert_eq!(whole.params["choice.count"], json!(2));
    assert_eq!(whole.params["max_tokens"], json!(12));
    assert_eq!(whole.params["presence_penalty"], json!(0.5));
    assert_eq!(whole.params["frequency_penalty"], json!(0.1));
    assert_eq!(whole.params["stop_sequences"], json!(["\n\n", "###"]));
    assert_eq!(whole.finish_reasons, ["stop", "length"]);
    assert_eq!(
        whole.output_messages[0].parts,
        [text("{\"fr\": \"Bonjour, je m'appelle Jane Doe.\"}")]
    );
    assert_eq!(
        whole.output_messages[1].parts,
        [text("{\"fr\": \"Bonjour, mon nom est")]
    );
    assert_eq!(whole.usage.input_tokens, Some(25));
    assert_eq!(whole.usage.cache_read_tokens, Some(0));
    assert_eq!(whole.user_id, None);
    // gpt-4o-mini-2024-07-18 must be priced as gpt-4o-mini, not gpt-4o.
    let want = (25.0 * 0.15 + 24.0 * 0.60) / 1e6;
    assert!((whole.cost_usd.unwrap() - want).abs() < 1e-12);

    let ex = chat_n2("openai/chat_n2_stream.sse", SSE, true);
    assert_same_result(&run(&ex), &whole);
    assert_split_invariant(&ex);
}

#[test]
fn openai_refusal_is_its_own_part() {
    let ex = exchange(
        "api.openai.com",
        "/v1/chat/completions",
        &fixture("openai/chat_n2_request.json"),
        200,
        JSON,
        &fixture("openai/chat_refusal_response.json"),
    );
    let c = run(&ex);
    assert_eq!(
        c.output_messages,
        [out(
            vec![Part::Refusal {
                content: "I'm sorry, I can't help with that.".into()
            }],
            "stop"
        )]
    );
    assert_eq!(c.usage.cache_read_tokens, None, "absent is None, never 0");
    assert_eq!(c.usage.reasoning_tokens, None);
}

#[test]
fn openai_stream_cut_mid_event_keeps_what_was_seen() {
    let full = fixture("openai/chat_n2_stream.sse");
    let text = String::from_utf8(full).unwrap();
    // Cut inside the event that carries choice 1's second delta.
    let cut = text.find("mon nom est").unwrap();
    let mut ex = chat_n2("openai/chat_n2_stream.sse", SSE, true);
    ex.response_body = body(vec![Bytes::copy_from_slice(&text.as_bytes()[..cut])]);
    ex.outcome = Outcome::UpstreamAborted {
        reason: "connection reset".into(),
    };
    let c = run(&ex);
    assert!(c.aborted && !opaque(&c));
    assert_eq!(c.response_id.as_deref(), Some("chatcmpl-AXj2kq0n2"));
    assert_eq!(
        c.output_messages,
        [
            out(
                vec![text_part("{\"fr\": \"Bonjour, je m'appelle Jane Doe.\"}")],
                "unknown"
            ),
            out(vec![text_part("{\"fr\": \"Bonjour, ")], "unknown"),
        ]
    );
    assert_eq!(c.usage, Usage::default());
    assert_eq!(c.cost_usd, None);
}

fn text_part(s: &str) -> Part {
    Part::text(s)
}

#[test]
fn azure_and_compatible_servers_parse_as_openai_chat() {
    let mut req: Value = serde_json::from_slice(&fixture("openai/chat_n2_request.json")).unwrap();
    req.as_object_mut().unwrap().remove("model");
    let ex = exchange(
        "myco.openai.azure.com",
        "/openai/deployments/prod-gpt4o/chat/completions?api-version=2024-10-21",
        &serde_json::to_vec(&req).unwrap(),
        200,
        JSON,
        &fixture("openai/chat_n2_response.json"),
    );
    let c = run(&ex);
    assert_eq!(c.provider.as_str(), "azure.ai.openai");
    assert_eq!(c.request_model.as_deref(), Some("prod-gpt4o"));
    assert_eq!(c.finish_reasons, ["stop", "length"]);
    assert!(c.cost_usd.is_some(), "azure prices alias openai's");

    let mut ex = chat_n2("openai/chat_n2_stream.sse", SSE, true);
    ex.upstream.host = "127.0.0.1".into();
    ex.upstream.port = 11434;
    let c = run(&ex);
    assert_eq!(c.provider.as_str(), "openai_compatible");
    assert_eq!(c.finish_reasons, ["stop", "length"]);
    assert_eq!(c.cost_usd, None, "unknown provider: no price, not 0");
}

#[test]
fn openai_error_bodies_give_the_error_type() {
    let req = fixture("openai/chat_n2_request.json");
    let c = run(&exchange(
        "api.openai.com",
        "/v1/chat/completions",
        &req,
        429,
        JSON,
        &fixture("openai/error_429.json"),
    ));
    assert_eq!(c.error_type.as_deref(), Some("rate_limit_exceeded"));
    // The provider's message may echo the request's content: the conversation keeps none of
    // it (only the type above), so no record can carry it.
    assert!(
        !format!("{c:?}").contains("Rate limit reached"),
        "error message kept"
    );
    assert!(!opaque(&c));
    assert_eq!(c.request_model.as_deref(), Some("gpt-4o-mini"));
    assert!(c.output_messages.is_empty() && c.finish_reasons.is_empty());

    let c = run(&exchange(
        "api.openai.com",
        "/v1/chat/completions",
        &req,
        400,
        JSON,
        &fixture("openai/error_400.json"),
    ));
    assert_eq!(c.error_type.as_deref(), Some("invalid_request_error"));

    let c = run(&exchange(
        "api.openai.com",
        "/v1/chat/completions",
        &req,
        502,
        "text/html",
        b"<html>Bad gateway</html>",
    ));
    assert_eq!(c.error_type.as_deref(), Some("502"));
    assert!(!opaque(&c));
}

// === OpenAI Responses ===

fn responses(resp: &str, ctype: &str, stream: bool) -> Exchange {
    let req = fixture("openai/responses_request.json");
    let req = if stream { streaming(&req) } else { req };
    exchange(
        "api.openai.com",
        "/v1/responses",
        &req,
        200,
        ctype,
        &fixture(resp),
    )
}

#[test]
fn openai_responses_request_and_response() {
    let ex = responses("openai/responses_response.json", JSON, false);
    let c = run(&ex);
    assert_eq!(detect(&ex).map(|t| t.api), Some(Api::OpenAiResponses));
    assert_eq!(c.operation.as_str(), "chat");
    assert_eq!(c.request_model.as_deref(), Some("gpt-4.1"));
    assert_eq!(c.response_model.as_deref(), Some("gpt-4.1-2025-04-14"));
    assert_eq!(c.conversation_id.as_deref(), Some("resp_prev_68af"));
    assert_eq!(c.user_id.as_deref(), Some("sid-responses-1"));
    assert_eq!(c.params["max_tokens"], json!(500));
    assert_eq!(c.tool_names, ["get_weather", "web_search_preview"]);
    assert_eq!(
        c.system_instructions,
        [text("You are a concise travel assistant.")]
    );
    assert_eq!(
        c.input_messages,
        [
            InputMessage {
                role: Role::User,
                parts: vec![
                    text("What's the weather in Paris? My email is jane@example.com."),
                    Part::Uri {
                        modality: Some(Modality::Image),
                        uri: "https://example.com/paris.jpg".into()
                    },
                    Part::File {
                        modality: None,
                        file_id: "file-6F2ksmvXxt4VdoqmHRw6kL".into()
                    },
                ],
                name: None,
            },
            InputMessage {
                role: Role::Assistant,
                parts: vec![
                    Part::Reasoning {
                        content: "Need the weather tool.".into()
                    },
                    Part::ToolCall {
                        id: Some("call_1".into()),
                        name: "get_weather".into(),
                        arguments: Some(json!({"city": "Paris"})),
                    },
                ],
                name: None,
            },
            InputMessage {
                role: Role::Tool,
                parts: vec![Part::ToolCallResponse {
                    id: Some("call_1".into()),
                    response: json!("{\"temp_c\":18,\"sky\":\"sunny\"}"),
                }],
                name: None,
            },
        ]
    );
    assert_eq!(
        c.output_messages,
        [out(
            vec![
                Part::Reasoning {
                    content: "Format as JSON.".into()
                },
                text("{\"city\":\"Paris\",\"summary\":\"18 °C and sunny\"}"),
            ],
            "stop"
        )]
    );
    assert_eq!(
        c.usage,
        Usage {
            input_tokens: Some(328),
            output_tokens: Some(52),
            cache_read_tokens: Some(256),
            cache_creation_tokens: None,
            reasoning_tokens: Some(32),
            ..Usage::default()
        }
    );
    let want = (72.0 * 2.0 + 256.0 * 0.5 + 52.0 * 8.0) / 1e6;
    assert!((c.cost_usd.unwrap() - want).abs() < 1e-12);
}

#[test]
fn openai_responses_stream_equals_json() {
    let whole = run(&responses("openai/responses_response.json", JSON, false));
    let ex = responses("openai/responses_stream.sse", SSE, true);
    assert_same_result(&run(&ex), &whole);
    assert_split_invariant(&ex);
}

#[test]
fn openai_responses_stream_cut_before_completion_is_rebuilt_from_items() {
    let full = String::from_utf8(fixture("openai/responses_stream.sse")).unwrap();
    let cut = full.find("event: response.completed").unwrap();
    let mut ex = responses("openai/responses_stream.sse", SSE, true);
    ex.response_body = body(vec![Bytes::copy_from_slice(&full.as_bytes()[..cut])]);
    ex.outcome = Outcome::ClientAborted;
    let c = run(&ex);
    assert!(c.aborted);
    assert_eq!(
        c.response_id.as_deref(),
        Some("resp_67ccd2bed1ec8190b14f964abc0542670bb6a6b452d3795b")
    );
    assert_eq!(
        c.output_messages,
        [out(
            vec![
                Part::Reasoning {
                    content: "Format as JSON.".into()
                },
                text("{\"city\":\"Paris\",\"summary\":\"18 °C and sunny\"}"),
            ],
            "unknown"
        )]
    );
    assert_eq!(c.usage.input_tokens, None);

    // Cut even earlier: the message item was added, only text deltas arrived.
    let cut = full.find("event: response.output_text.done").unwrap();
    ex.response_body = body(vec![Bytes::copy_from_slice(&full.as_bytes()[..cut])]);
    let c = run(&ex);
    assert_eq!(
        c.output_messages[0].parts[1],
        text("{\"city\":\"Paris\",\"summary\":\"18 °C and sunny\"}")
    );
}

// === OpenAI Embeddings ===

#[test]
fn openai_embeddings() {
    let ex = exchange(
        "api.openai.com",
        "/v1/embeddings",
        &fixture("openai/embeddings_request.json"),
        200,
        JSON,
        &fixture("openai/embeddings_response.json"),
    );
    let c = run(&ex);
    assert_eq!(c.operation.as_str(), "embeddings");
    assert_eq!(c.request_model.as_deref(), Some("text-embedding-3-small"));
    assert_eq!(c.response_model.as_deref(), Some("text-embedding-3-small"));
    assert_eq!(c.user_id.as_deref(), Some("user-emb-9"));
    assert_eq!(c.params["embeddings.dimension.count"], json!(256));
    assert_eq!(
        c.input_messages[0].parts,
        [
            text("The food was delicious and the waiter was friendly."),
            text("Call me at +1 555 0100.")
        ]
    );
    assert!(c.output_messages.is_empty());
    assert_eq!(c.usage.input_tokens, Some(19));
    assert_eq!(c.usage.output_tokens, None);
    assert!((c.cost_usd.unwrap() - 19.0 * 0.02 / 1e6).abs() < 1e-15);
}

// === Anthropic ===

fn anthropic(resp: &str, ctype: &str, stream: bool) -> Exchange {
    let req = fixture("anthropic/messages_request.json");
    let req = if stream { streaming(&req) } else { req };
    exchange(
        "api.anthropic.com",
        "/v1/messages",
        &req,
        200,
        ctype,
        &fixture(resp),
    )
}

#[test]
fn anthropic_messages_request_and_response() {
    let ex = anthropic("anthropic/messages_response.json", JSON, false);
    let c = run(&ex);
    assert_eq!(
        (c.provider.as_str(), c.operation.as_str()),
        ("anthropic", "chat")
    );
    assert_eq!(detect(&ex).map(|t| t.api), Some(Api::AnthropicMessages));
    assert_eq!(
        c.request_model.as_deref(),
        Some("claude-sonnet-4-5-20250929")
    );
    assert_eq!(
        c.response_model.as_deref(),
        Some("claude-sonnet-4-5-20250929")
    );
    assert_eq!(c.response_id.as_deref(), Some("msg_01Aq9w938a90dw8q"));
    assert_eq!(c.user_id.as_deref(), Some("usr_8f14e45fceea167a"));
    assert_eq!(c.params["max_tokens"], json!(2048));
    assert_eq!(c.params["stop_sequences"], json!(["\n\nHuman:"]));
    assert_eq!(c.tool_names, ["get_weather", "get_forecast"]);
    assert_eq!(
        c.system_instructions,
        [
            text("You are a helpful weather bot."),
            text("Always cite the tool you used.")
        ]
    );
    assert_eq!(
        c.input_messages,
        [
            InputMessage {
                role: Role::User,
                parts: vec![
                    Part::Blob {
                        modality: Some(Modality::Image),
                        mime_type: Some("image/png".into()),
                        byte_len: Some(70),
                    },
                    text("What's the weather where this photo was taken? It's Paris."),
                ],
                name: None,
            },
            InputMessage {
                role: Role::Assistant,
                parts: vec![
                    Part::Reasoning {
                        content: "The user wants the weather in Paris. I should call get_weather."
                            .into()
                    },
                    Part::ToolCall {
                        id: Some("toolu_01A09q90qw90lq917835lq9".into()),
                        name: "get_weather".into(),
                        arguments: Some(json!({"location": "Paris, France"})),
                    },
                ],
                name: None,
            },
            InputMessage {
                role: Role::User,
                parts: vec![Part::ToolCallResponse {
                    id: Some("toolu_01A09q90qw90lq917835lq9".into()),
                    response: json!("18°C, sunny"),
                }],
                name: None,
            },
        ]
    );
    assert_eq!(
        c.output_messages,
        [out(
            vec![
                Part::Reasoning {
                    content: "I have the weather. Let me also get tomorrow's forecast.".into()
                },
                text("It's 18°C and sunny in Paris. Let me check tomorrow too."),
                Part::ToolCall {
                    id: Some("toolu_02".into()),
                    name: "get_forecast".into(),
                    arguments: Some(json!({"location": "Paris, France", "days": 1})),
                },
            ],
            "tool_call"
        )]
    );
    // input_tokens excludes the cache on Anthropic; the model includes it.
    assert_eq!(
        c.usage,
        Usage {
            input_tokens: Some(472 + 1822),
            output_tokens: Some(96),
            cache_read_tokens: Some(1822),
            cache_creation_tokens: Some(0),
            reasoning_tokens: None,
            ..Usage::default()
        }
    );
    let want = (472.0 * 3.0 + 1822.0 * 0.30 + 96.0 * 15.0) / 1e6;
    assert!(
        (c.cost_usd.unwrap() - want).abs() < 1e-12,
        "{:?}",
        c.cost_usd
    );
    assert_eq!(
        c.system_instructions_json(),
        json!([{"type": "text", "content": "You are a helpful weather bot."},
               {"type": "text", "content": "Always cite the tool you used."}])
    );
}

/// Claude on Vertex AI: Anthropic Messages without `model` (the path names it) and with
/// `anthropic_version`, to `:rawPredict` or `:streamRawPredict`.
fn vertex_anthropic(resp: &str, ctype: &str, stream: bool) -> Exchange {
    let mut req: Value =
        serde_json::from_slice(&fixture("anthropic/messages_request.json")).unwrap();
    req.as_object_mut().unwrap().remove("model");
    req["anthropic_version"] = json!("vertex-2023-10-16");
    if stream {
        req["stream"] = json!(true);
    }
    let method = if stream {
        "streamRawPredict"
    } else {
        "rawPredict"
    };
    exchange(
        "us-east5-aiplatform.googleapis.com",
        &format!(
            "/v1/projects/p/locations/us-east5/publishers/anthropic/models/claude-sonnet-4-5@20250929:{method}"
        ),
        &serde_json::to_vec(&req).unwrap(),
        200,
        ctype,
        &fixture(resp),
    )
}

#[test]
fn claude_on_vertex_is_recorded_like_claude_with_the_model_from_the_path_and_priced() {
    let direct = run(&anthropic("anthropic/messages_response.json", JSON, false));
    let whole = run(&vertex_anthropic(
        "anthropic/messages_response.json",
        JSON,
        false,
    ));
    assert_eq!(
        (whole.provider.as_str(), whole.operation.as_str()),
        ("gcp.vertex_ai", "chat")
    );
    assert_eq!(
        whole.request_model.as_deref(),
        Some("claude-sonnet-4-5@20250929")
    );
    assert_eq!(whole.usage, direct.usage);
    assert_eq!(whole.output_messages, direct.output_messages);
    // Anthropic's list price, through the gcp.vertex_ai alias list.
    let cost = whole.cost_usd.expect("Claude on Vertex is priced");
    assert!(cost > 0.0);
    assert!((cost - direct.cost_usd.unwrap()).abs() < 1e-12);

    let ex = vertex_anthropic("anthropic/messages_stream.sse", SSE, true);
    let streamed = run(&ex);
    assert!(streamed.stream);
    assert_same_result(&streamed, &whole);
    assert_split_invariant(&ex);
}

#[test]
fn anthropic_stream_equals_json() {
    let whole = run(&anthropic("anthropic/messages_response.json", JSON, false));
    let ex = anthropic("anthropic/messages_stream.sse", SSE, true);
    let streamed = run(&ex);
    assert_same_result(&streamed, &whole);
    assert_split_invariant(&ex);
}

#[test]
fn anthropic_errors_in_body_and_mid_stream() {
    let mut ex = anthropic("anthropic/error_529.json", JSON, false);
    ex.status = Some(529);
    let c = run(&ex);
    assert_eq!(c.error_type.as_deref(), Some("overloaded_error"));

    let c = run(&anthropic("anthropic/stream_error.sse", SSE, true));
    assert_eq!(c.error_type.as_deref(), Some("overloaded_error"));
    assert_eq!(c.output_messages, [out(vec![text("Partial")], "unknown")]);
    assert_eq!(c.usage.input_tokens, Some(12));
}

// === Gemini ===

fn gemini(method: &str, resp: &str, ctype: &str) -> Exchange {
    exchange(
        "generativelanguage.googleapis.com",
        &format!("/v1beta/models/gemini-2.5-flash:{method}"),
        &fixture("gemini/generate_request.json"),
        200,
        ctype,
        &fixture(resp),
    )
}

#[test]
fn gemini_generate_content_request_and_response() {
    let c = run(&gemini(
        "generateContent",
        "gemini/generate_response.json",
        JSON,
    ));
    assert_eq!(
        (c.provider.as_str(), c.operation.as_str()),
        ("gcp.gemini", "generate_content")
    );
    assert_eq!(c.request_model.as_deref(), Some("gemini-2.5-flash"));
    assert_eq!(c.response_model.as_deref(), Some("gemini-2.5-flash"));
    assert_eq!(c.response_id.as_deref(), Some("mAitaLmkHPPlz7IPvtfUqQ4"));
    assert!(!c.stream);
    assert_eq!(c.params["temperature"], json!(0.7));
    assert_eq!(c.params["top_p"], json!(0.95));
    assert_eq!(c.params["top_k"], json!(40));
    assert_eq!(c.params["max_tokens"], json!(800));
    assert_eq!(c.params["stop_sequences"], json!(["END"]));
    assert!(!c.params.contains_key("choice.count"));
    assert_eq!(c.tool_names, ["get_weather", "googleSearch"]);
    assert_eq!(
        c.system_instructions,
        [text("You are a cheerful assistant.")]
    );
    assert_eq!(
        c.input_messages,
        [
            InputMessage {
                role: Role::User,
                parts: vec![
                    text("Describe this picture and check the weather in Paris."),
                    Part::Blob {
                        modality: Some(Modality::Image),
                        mime_type: Some("image/jpeg".into()),
                        byte_len: Some(28),
                    },
                ],
                name: None,
            },
            InputMessage {
                role: Role::Assistant,
                parts: vec![Part::ToolCall {
                    id: None,
                    name: "get_weather".into(),
                    arguments: Some(json!({"city": "Paris"})),
                }],
                name: None,
            },
            InputMessage {
                role: Role::User,
                parts: vec![Part::ToolCallResponse {
                    id: None,
                    response: json!({"temp_c": 18, "sky": "sunny"}),
                }],
                name: None,
            },
        ]
    );
    assert_eq!(
        c.output_messages,
        [out(
            vec![text(
                "A sunny street in Paris. It's 18°C and sunny there today!"
            )],
            "stop"
        )]
    );
    assert_eq!(
        c.usage,
        Usage {
            input_tokens: Some(1290),
            output_tokens: Some(18 + 42),
            cache_read_tokens: Some(1024),
            cache_creation_tokens: None,
            reasoning_tokens: Some(42),
            ..Usage::default()
        }
    );
    let want = (266.0 * 0.30 + 1024.0 * 0.03 + 60.0 * 2.50) / 1e6;
    assert!((c.cost_usd.unwrap() - want).abs() < 1e-12);
}

#[test]
fn gemini_sse_and_json_array_streams_equal_json() {
    let whole = run(&gemini(
        "generateContent",
        "gemini/generate_response.json",
        JSON,
    ));
    let sse = gemini("streamGenerateContent?alt=sse", "gemini/stream.sse", SSE);
    let streamed = run(&sse);
    assert_same_result(&streamed, &whole);
    assert_split_invariant(&sse);

    let array = gemini("streamGenerateContent", "gemini/stream.json", JSON);
    let streamed = run(&array);
    assert_same_result(&streamed, &whole);
    assert_split_invariant(&array);

    // Cut the array mid-element: the earlier elements are kept, the model is aborted.
    let raw = fixture("gemini/stream.json");
    let text = String::from_utf8(raw).unwrap();
    let cut = text.find("and sunny there").unwrap();
    let mut ex = array.clone();
    ex.response_body = body(vec![Bytes::copy_from_slice(&text.as_bytes()[..cut])]);
    let c = run(&ex);
    assert!(c.aborted && !opaque(&c));
    assert_eq!(
        c.output_messages,
        [out(
            vec![text_part("A sunny street in Paris. It's 18°C")],
            "unknown"
        )]
    );
}

#[test]
fn gemini_function_call_and_thought_parts() {
    let mut ex = gemini(
        "generateContent",
        "gemini/function_call_response.json",
        JSON,
    );
    ex.path = "/v1beta/models/gemini-2.0-flash:generateContent".into();
    let c = run(&ex);
    assert_eq!(
        c.output_messages,
        [out(
            vec![
                Part::Reasoning {
                    content: "Let me check.".into()
                },
                Part::ToolCall {
                    id: None,
                    name: "get_weather".into(),
                    arguments: Some(json!({"city": "Paris"})),
                },
            ],
            "tool_call"
        )]
    );
    assert_eq!(c.usage.output_tokens, Some(12));
    assert_eq!(c.usage.reasoning_tokens, None);
    assert_eq!(c.response_model.as_deref(), Some("gemini-2.0-flash-001"));
    assert!(
        c.cost_usd.is_some(),
        "gemini-2.0-flash-001 → gemini-2.0-flash"
    );
}

#[test]
fn gemini_error_body() {
    let mut ex = gemini("generateContent", "gemini/error_429.json", JSON);
    ex.status = Some(429);
    let c = run(&ex);
    assert_eq!(c.error_type.as_deref(), Some("RESOURCE_EXHAUSTED"));
    assert_eq!(c.request_model.as_deref(), Some("gemini-2.5-flash"));
}

// === opaque exchanges ===

#[test]
fn opaque_exchanges_keep_metadata_and_drop_content() {
    let good = fixture("openai/chat_n2_request.json");
    let resp = fixture("openai/chat_n2_response.json");
    let mut cases = Vec::new();
    cases.push((
        "unrecognized endpoint",
        exchange("api.openai.com", "/v1/files", &good, 200, JSON, &resp),
    ));
    cases.push((
        "request body is not JSON",
        exchange(
            "api.openai.com",
            "/v1/chat/completions",
            b"{\"model\": ",
            200,
            JSON,
            &resp,
        ),
    ));
    let mut truncated = exchange(
        "api.openai.com",
        "/v1/chat/completions",
        &good,
        200,
        JSON,
        &resp,
    );
    truncated.request_body.truncated = true;
    truncated.request_body.wire_len = 99_999_999;
    cases.push(("request body truncated at the capture limit", truncated));
    let mut bad_gzip = exchange(
        "api.openai.com",
        "/v1/chat/completions",
        &good,
        200,
        JSON,
        &resp,
    );
    bad_gzip.request_body.content_encoding = Some("gzip".into());
    cases.push(("request body: corrupt", bad_gzip));
    cases.push((
        "response body is not JSON",
        exchange(
            "api.openai.com",
            "/v1/chat/completions",
            &good,
            200,
            JSON,
            b"<html>",
        ),
    ));
    for (reason, ex) in cases {
        let c = run(&ex);
        assert!(opaque(&c), "{reason}");
        // A body that failed to parse says why; an endpoint veil does not parse needs no why.
        if reason == "unrecognized endpoint" {
            assert_eq!(c.parse_error, None);
        } else {
            assert!(
                c.parse_error.as_deref().unwrap().starts_with(reason),
                "{reason}: {:?}",
                c.parse_error
            );
        }
        assert_eq!(c.operation.as_str(), "unknown");
        assert_eq!(
            c.provider.as_str(),
            "openai",
            "provider by host still known"
        );
        assert_eq!(c.status, Some(200));
        assert_eq!(c.request_bytes, ex.request_body.wire_len);
        assert_eq!(c.response_bytes, ex.response_body.wire_len);
        assert_eq!(c.timings.duration, Duration::from_millis(1320));
        assert!(c.input_messages.is_empty() && c.output_messages.is_empty());
        assert_eq!((c.request_model, c.cost_usd), (None, None));
    }
    let c = run(&exchange(
        "unknown.example",
        "/x",
        b"\xff",
        404,
        "text/plain",
        b"nope",
    ));
    assert_eq!(
        (c.provider.as_str(), c.operation.as_str()),
        ("unknown", "unknown")
    );
    assert_eq!(c.error_type.as_deref(), Some("404"));
}

#[test]
fn upstream_failure_is_the_error_type() {
    let mut ex = chat_n2("openai/chat_n2_response.json", JSON, false);
    ex.status = None;
    ex.response_body = Body::default();
    ex.outcome = Outcome::UpstreamFailed {
        kind: UpstreamFailure::Timeout,
        reason: "no headers in 300s".into(),
    };
    let c = run(&ex);
    assert!(!opaque(&c));
    assert_eq!(c.error_type.as_deref(), Some("timeout"));
    assert_eq!(c.request_model.as_deref(), Some("gpt-4o-mini"));
    assert!(c.output_messages.is_empty());
}

/// `ex` as it is recorded when the upstream could not be reached: no response, and none of
/// the request body read (hyper sends it only on a connection); parsed.
fn refused_before_reading(mut ex: Exchange) -> Conversation {
    ex.status = None;
    ex.request_body = Body::default();
    ex.response_body = Body::default();
    ex.outcome = Outcome::UpstreamFailed {
        kind: UpstreamFailure::Connect,
        reason: "connection refused".into(),
    };
    run(&ex)
}

/// The upstream could not be reached, so the exchange holds no request body. The failure is
/// the error and the endpoint the operation; the empty body is not reported as a body that
/// is not JSON. (The ledger row used to have no `error_type`, so `veil report` counted no
/// error for it.)
#[test]
fn upstream_failure_before_the_body_was_read_is_an_error_not_a_parse_failure() {
    let c = refused_before_reading(chat_n2("openai/chat_n2_response.json", JSON, false));
    assert_eq!(c.error_type.as_deref(), Some("connect"));
    assert_eq!(c.parse_error, None);
    assert_eq!(c.operation.as_str(), "chat");
    assert_eq!(c.provider.as_str(), "openai");

    // The path still names the model and the stream when it does (Gemini).
    let c = refused_before_reading(gemini(
        "streamGenerateContent",
        "gemini/generate_response.json",
        JSON,
    ));
    assert_eq!(c.error_type.as_deref(), Some("connect"));
    assert_eq!(c.parse_error, None);
    assert_eq!(c.request_model.as_deref(), Some("gemini-2.5-flash"));
    assert!(c.stream);
}

/// A request body that is not JSON still leaves an upstream failure counted as an error.
#[test]
fn upstream_failure_with_a_body_that_is_not_json_is_still_an_error() {
    let mut ex = chat_n2("openai/chat_n2_response.json", JSON, false);
    ex.status = None;
    ex.request_body = body(vec![Bytes::from_static(b"{\"model\": \"gpt")]);
    ex.request_body.wire_len = 15;
    ex.response_body = Body::default();
    ex.outcome = Outcome::UpstreamFailed {
        kind: UpstreamFailure::Tls,
        reason: "bad certificate".into(),
    };
    let c = run(&ex);
    assert_eq!(c.error_type.as_deref(), Some("tls"));
    assert!(
        c.parse_error
            .as_deref()
            .is_some_and(|e| e.starts_with("request body is not JSON")),
        "{:?}",
        c.parse_error
    );
}

#[test]
fn gzip_encoded_stream_is_decoded_first() {
    use std::io::Write as _;
    let raw = fixture("anthropic/messages_stream.sse");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(&raw).unwrap();
    let gz = enc.finish().unwrap();
    let mut ex = anthropic("anthropic/messages_stream.sse", SSE, true);
    ex.response_body = body(vec![Bytes::from(gz)]);
    ex.response_body.content_encoding = Some("gzip".into());
    let c = run(&ex);
    assert_eq!(c.finish_reasons, ["tool_call"]);
    assert_eq!(c.usage.output_tokens, Some(96));
}

// === identity and tags ===

#[test]
fn identity_tags_and_trace_context() {
    let mut ex = chat_tools("openai/chat_tools_response.json", JSON, false);
    ex.request_headers.push(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    ex.request_headers.push("tracestate", "congo=t61rcWkgMzE");
    ex.tags.push("x-veil-feature", "seo-audit");
    let c = run(&ex);
    assert_eq!(c.feature.as_deref(), Some("seo-audit"));
    let tp = c.trace_parent.unwrap();
    assert_eq!(tp.parent_span_id[7], 0xb7);
    assert_eq!(tp.trace_state.as_deref(), Some("congo=t61rcWkgMzE"));

    // The explicit tag beats the provider's field. (Configured JSON paths are the rules'
    // `[identity] json`, looked up by the record step.)
    assert_eq!(c.user_id.as_deref(), Some("sid-5b1c9e"));
    ex.tags.push("x-veil-user", "tagged-user");
    ex.tags.push("x-veil-conversation", "conv-7");
    let c = run(&ex);
    assert_eq!(c.user_id.as_deref(), Some("tagged-user"));
    assert_eq!(c.conversation_id.as_deref(), Some("conv-7"));

    ex.request_headers.retain(|k, _| k != "traceparent");
    ex.request_headers.push(
        "traceparent",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
    );
    assert_eq!(run(&ex).trace_parent, None);
}

// === robustness ===

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Arbitrary bytes as either body, for every dialect: no panic, and sizes always kept.
    #[test]
    fn arbitrary_bodies_never_panic(
        which in 0usize..7,
        req in proptest::collection::vec(any::<u8>(), 0..256),
        resp in proptest::collection::vec(any::<u8>(), 0..256),
        sse in any::<bool>(),
    ) {
        let (host, path) = [
            ("api.openai.com", "/v1/chat/completions"),
            ("api.openai.com", "/v1/responses"),
            ("api.openai.com", "/v1/embeddings"),
            ("api.openai.com", "/v1/completions"),
            ("api.anthropic.com", "/v1/messages"),
            ("generativelanguage.googleapis.com", "/v1beta/models/g:streamGenerateContent"),
            ("generativelanguage.googleapis.com", "/v1beta/models/g:embedContent"),
        ][which];
        let ex = exchange(host, path, &req, 200, if sse { SSE } else { JSON }, &resp);
        let c = run(&ex);
        prop_assert_eq!(c.request_bytes, req.len() as u64);
        prop_assert_eq!(c.finish_reasons.len(), c.output_messages.len());
    }

    /// Mutated fixtures (valid JSON shapes with wrong types) never panic.
    #[test]
    fn mutated_stream_fixtures_never_panic(
        which in 0usize..5,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let (host, path, req, resp) = [
            ("api.openai.com", "/v1/chat/completions", "openai/chat_tools_request.json", "openai/chat_tools_stream.sse"),
            ("api.openai.com", "/v1/responses", "openai/responses_request.json", "openai/responses_stream.sse"),
            ("api.anthropic.com", "/v1/messages", "anthropic/messages_request.json", "anthropic/messages_stream.sse"),
            ("generativelanguage.googleapis.com", "/v1beta/models/g:streamGenerateContent", "gemini/generate_request.json", "gemini/stream.json"),
            ("generativelanguage.googleapis.com", "/v1beta/models/g:streamGenerateContent?alt=sse", "gemini/generate_request.json", "gemini/stream.sse"),
        ][which];
        let mut req = fixture(req);
        let mut resp = fixture(resp);
        for (i, (at, byte)) in flips.into_iter().enumerate() {
            let target = if i % 2 == 0 { &mut resp } else { &mut req };
            let idx = at.index(target.len());
            target[idx] = byte;
        }
        let _ = run(&exchange(host, path, &req, 200, SSE, &resp));
    }
}

#[test]
fn responses_stream_error_event_sets_the_error_type() {
    let stream = b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"model\":\"gpt-4.1\",\"status\":\"in_progress\",\"output\":[]}}\n\n\
event: error\ndata: {\"type\":\"error\",\"code\":\"server_error\",\"message\":\"The server had an error.\"}\n\n";
    let req = streaming(&fixture("openai/responses_request.json"));
    let c = run(&exchange(
        "api.openai.com",
        "/v1/responses",
        &req,
        200,
        SSE,
        stream,
    ));
    assert_eq!(c.error_type.as_deref(), Some("server_error"));
    assert_eq!(c.response_id.as_deref(), Some("resp_1"));
    assert!(c.output_messages.is_empty());
}

// === legacy Completions and Gemini embeddings ===

#[test]
fn openai_legacy_completions_json_and_stream() {
    let req = fixture("openai/completions_request.json");
    let ex = exchange(
        "api.openai.com",
        "/v1/completions",
        &req,
        200,
        JSON,
        &fixture("openai/completions_response.json"),
    );
    let whole = run(&ex);
    assert_eq!(whole.operation.as_str(), "text_completion");
    assert_eq!(detect(&ex).map(|t| t.api), Some(Api::OpenAiCompletions));
    assert_eq!(
        whole.request_model.as_deref(),
        Some("gpt-3.5-turbo-instruct")
    );
    assert_eq!(whole.user_id.as_deref(), Some("user-legacy-3"));
    assert_eq!(whole.params["max_tokens"], json!(16));
    assert_eq!(
        whole.input_messages[0].parts,
        [text("Write a tagline for an ice cream shop.")]
    );
    assert_eq!(
        whole.output_messages,
        [out(
            vec![text("\n\nScoops of happiness in every cone.")],
            "length"
        )]
    );
    assert_eq!(whole.usage.input_tokens, Some(9));
    assert_eq!(whole.usage.output_tokens, Some(16));
    assert!(
        whole.cost_usd.is_none(),
        "gpt-3.5-turbo-instruct is not gpt-3.5-turbo"
    );

    let ex = exchange(
        "api.openai.com",
        "/v1/completions",
        &streaming(&req),
        200,
        SSE,
        &fixture("openai/completions_stream.sse"),
    );
    assert_same_result(&run(&ex), &whole);
    assert_split_invariant(&ex);
}

#[test]
fn gemini_embed_content() {
    let ex = exchange(
        "generativelanguage.googleapis.com",
        "/v1beta/models/gemini-embedding-001:embedContent",
        &fixture("gemini/embed_request.json"),
        200,
        JSON,
        &fixture("gemini/embed_response.json"),
    );
    let c = run(&ex);
    assert_eq!(
        (c.provider.as_str(), c.operation.as_str()),
        ("gcp.gemini", "embeddings")
    );
    assert_eq!(c.request_model.as_deref(), Some("gemini-embedding-001"));
    assert_eq!(
        c.input_messages[0].parts,
        [text("What is the meaning of life?")]
    );
    assert_eq!(c.params["embeddings.dimension.count"], json!(768));
    assert_eq!(c.usage, Usage::default(), "embedContent reports no usage");
    assert_eq!(c.cost_usd, None);
    assert!(!opaque(&c));
}

// === lone surrogates and parse errors (veil#10) ===

/// `haystack` with the first `from` replaced by `to`.
fn splice(haystack: &[u8], from: &str, to: &str) -> Vec<u8> {
    let text = String::from_utf8(haystack.to_vec()).unwrap();
    assert!(text.contains(from), "{from:?} not in the fixture");
    text.replacen(from, to, 1).into_bytes()
}

// See: veil#10
#[test]
fn lone_ud800_escape_in_a_prompt_keeps_model_tokens_and_cost() {
    let clean = chat_n2("openai/chat_n2_response.json", JSON, false);
    let mut ex = clean.clone();
    // Half an emoji and a lone low surrogate, as JSON.stringify writes them.
    let req = splice(
        &fixture("openai/chat_n2_request.json"),
        "my name is",
        r"my \ud83d name \udc00 is",
    );
    ex.request_body = body(vec![Bytes::from(req)]);
    let c = run(&ex);
    let want = run(&clean);
    assert!(!opaque(&c), "{:?}", c.parse_error);
    assert_eq!(c.parse_error, None);
    assert_eq!(c.request_model, want.request_model);
    assert_eq!(c.response_model, want.response_model);
    assert_eq!(c.usage, want.usage);
    assert_eq!(c.cost_usd, want.cost_usd);
    assert_eq!(
        c.input_messages[1].parts,
        [text("Good morning, my \u{fffd} name \u{fffd} is Jane Doe.")]
    );
}

// See: veil#10
#[test]
fn lone_ud800_escape_in_a_stream_event_keeps_the_event() {
    let clean = chat_n2("openai/chat_n2_stream.sse", SSE, true);
    let want = run(&clean);
    let mut ex = clean.clone();
    let sse = splice(
        &fixture("openai/chat_n2_stream.sse"),
        r#""content":"{\"fr\": \"Bonjour, "}"#,
        r#""content":"{\"fr\": \"Bonjour\ud800, "}"#,
    );
    ex.response_body = body(vec![Bytes::from(sse)]);
    let c = run(&ex);
    assert_eq!(c.parse_error, None);
    assert_eq!(c.usage, want.usage);
    assert_eq!(c.cost_usd, want.cost_usd);
    assert_eq!(
        c.output_messages[0].parts,
        [text(
            "{\"fr\": \"Bonjour\u{fffd}, je m'appelle Jane Doe.\"}"
        )]
    );
    assert_eq!(c.output_messages[1].parts, want.output_messages[1].parts);

    // The same in a Gemini JSON array stream (parsed element by element).
    let array = gemini("streamGenerateContent", "gemini/stream.json", JSON);
    let want = run(&array);
    let mut ex = array.clone();
    let raw = splice(
        &fixture("gemini/stream.json"),
        "A sunny street",
        r"A sunny \udfff street",
    );
    ex.response_body = body(vec![Bytes::from(raw)]);
    let c = run(&ex);
    assert!(!c.aborted);
    assert_eq!(c.usage, want.usage);
    let Part::Text { content } = &c.output_messages[0].parts[0] else {
        panic!("{:?}", c.output_messages);
    };
    assert!(
        content.starts_with("A sunny \u{fffd} street in Paris"),
        "{content}"
    );
}

// See: veil#10
#[test]
fn a_body_that_is_not_json_says_why_and_a_lost_stream_event_is_counted() {
    let mut ex = chat_n2("openai/chat_n2_response.json", JSON, false);
    ex.request_body = body(vec![Bytes::from_static(
        br#"{"model": "gpt-4o-mini", "messages": [{"content": "Jane Do"#,
    )]);
    let c = run(&ex);
    assert!(opaque(&c));
    let why = c.parse_error.as_deref().unwrap();
    assert!(
        why.starts_with("request body is not JSON: EOF while parsing a string"),
        "{why}"
    );
    assert!(!why.contains("Jane"), "no content in the reason: {why}");

    let mut ex = chat_n2("openai/chat_n2_response.json", JSON, false);
    ex.response_body = body(vec![Bytes::from_static(b"{\"id\": 1,")]);
    let c = run(&ex);
    assert!(
        c.parse_error
            .as_deref()
            .unwrap()
            .starts_with("response body is not JSON"),
        "{:?}",
        c.parse_error
    );

    // A stream event that looks like JSON but is not: the rest of the stream still counts.
    let clean = chat_n2("openai/chat_n2_stream.sse", SSE, true);
    let want = run(&clean);
    let mut ex = clean.clone();
    let sse = splice(
        &fixture("openai/chat_n2_stream.sse"),
        "data: {\"id\"",
        "data: {\"broken\"\n\ndata: {\"id\"",
    );
    ex.response_body = body(vec![Bytes::from(sse)]);
    let c = run(&ex);
    assert_eq!(
        c.parse_error.as_deref(),
        Some("1 stream event(s) are not JSON")
    );
    assert_eq!(c.usage, want.usage);
    assert_eq!(c.output_messages, want.output_messages);

    // Nothing was meant to be parsed: no parse error.
    let c = run(&exchange("unknown.example", "/x", b"\xff", 200, JSON, b"{"));
    assert!(opaque(&c) && c.parse_error.is_none());
    // Everything parsed: none either.
    assert_eq!(want.parse_error, None);
}

// === Ollama (native API) ===

const NDJSON: &str = "application/x-ndjson";

/// An Ollama `/api/chat` exchange through a gateway route to a local server.
fn ollama_chat(stream: bool, resp: &str) -> Exchange {
    let req = json!({
        "model": "llama3.2",
        "stream": stream,
        "options": {"temperature": 0.2, "num_predict": 128},
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Weather in Paris? Mail me at jane@example.com", "images": ["aGVsbG8="]}
        ]
    });
    let mut ex = exchange(
        "127.0.0.1",
        "/api/chat",
        &serde_json::to_vec(&req).unwrap(),
        200,
        if stream { NDJSON } else { JSON },
        resp.as_bytes(),
    );
    ex.route = Route::Gateway {
        name: "ollama".into(),
    };
    ex
}

const OLLAMA_WHOLE: &str = r#"{"model":"llama3.2","created_at":"2026-11-30T10:00:00Z","message":{"role":"assistant","content":"Sunny, 21 C."},"done":true,"done_reason":"stop","total_duration":912000000,"prompt_eval_count":31,"eval_count":7}"#;

const OLLAMA_STREAM: &str = concat!(
    r#"{"model":"llama3.2","created_at":"2026-11-30T10:00:00Z","message":{"role":"assistant","content":"Sunny"},"done":false}"#,
    "\n",
    r#"{"model":"llama3.2","created_at":"2026-11-30T10:00:00Z","message":{"role":"assistant","content":", 21 C."},"done":false}"#,
    "\n",
    r#"{"model":"llama3.2","created_at":"2026-11-30T10:00:01Z","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","total_duration":912000000,"prompt_eval_count":31,"eval_count":7}"#,
    "\n"
);

#[test]
fn ollama_chat_json_and_ndjson_stream_give_the_same_record() {
    let whole = run(&ollama_chat(false, OLLAMA_WHOLE));
    assert_eq!(
        (whole.provider.as_str(), whole.operation.as_str()),
        ("ollama", "chat")
    );
    assert_eq!(whole.request_model.as_deref(), Some("llama3.2"));
    assert_eq!(whole.response_model.as_deref(), Some("llama3.2"));
    assert_eq!(whole.usage.input_tokens, Some(31));
    assert_eq!(whole.usage.output_tokens, Some(7));
    assert_eq!(whole.finish_reasons, vec!["stop".to_string()]);
    assert_eq!(whole.tool_names, vec!["get_weather".to_string()]);
    assert_eq!(whole.params["max_tokens"], json!(128));
    // A local model costs nothing unless priced.
    assert_eq!(whole.cost_usd, Some(0.0));
    assert_eq!(
        whole.output_messages,
        vec![out(vec![text("Sunny, 21 C.")], "stop")]
    );
    assert_eq!(whole.input_messages.len(), 2);
    assert_eq!(whole.input_messages[0].role, Role::System);
    assert!(matches!(
        whole.input_messages[1].parts[1],
        Part::Blob {
            byte_len: Some(5),
            ..
        }
    ));
    assert!(!whole.stream);

    let ex = ollama_chat(true, OLLAMA_STREAM);
    let streamed = run(&ex);
    assert_same_result(&streamed, &whole);
    assert_split_invariant(&ex);
}

#[test]
fn ollama_generate_stream_cut_short_and_an_error_line() {
    let req =
        json!({"model": "qwen2.5:7b", "prompt": "Why is the sky blue?", "system": "Be brief."});
    let stream = concat!(
        r#"{"model":"qwen2.5:7b","response":"Rayleigh","done":false}"#,
        "\n",
        r#"{"model":"qwen2.5:7b","response":" scattering.","done":false}"#,
        "\n"
    );
    let ex = exchange(
        "localhost",
        "/api/generate",
        &serde_json::to_vec(&req).unwrap(),
        200,
        NDJSON,
        stream.as_bytes(),
    );
    let c = run(&ex);
    assert_eq!(
        (c.provider.as_str(), c.operation.as_str()),
        ("ollama", "text_completion")
    );
    // `stream` absent: Ollama streams by default.
    assert!(c.stream);
    assert!(c.aborted, "no done object: the stream was cut");
    assert_eq!(
        c.output_messages,
        vec![out(vec![text("Rayleigh scattering.")], "unknown")]
    );
    assert_eq!(c.system_instructions, vec![text("Be brief.")]);
    assert_eq!(c.cost_usd, None, "no token counts, no cost");

    let failed = concat!(
        r#"{"model":"qwen2.5:7b","response":"Ray","done":false}"#,
        "\n",
        r#"{"error":"model runner stopped: out of memory while reading Why is the sky blue?"}"#,
        "\n"
    );
    let mut ex = ex.clone();
    ex.response_body = body(vec![Bytes::from_static(failed.as_bytes())]);
    let c = run(&ex);
    assert_eq!(c.error_type.as_deref(), Some("_OTHER"));
    assert!(
        !format!("{c:?}").contains("out of memory"),
        "error text is not kept"
    );
}

// === Bedrock ===

const EVENTSTREAM: &str = "application/vnd.amazon.eventstream";
const BEDROCK: &str = "bedrock-runtime.us-east-1.amazonaws.com";
const CLAUDE_ON_BEDROCK: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";

/// The path of `action` for `model`, the model ID percent-encoded as the AWS SDKs send it.
fn bedrock_path(model: &str, action: &str) -> String {
    let encoded = percent_encoding::utf8_percent_encode(model, percent_encoding::NON_ALPHANUMERIC);
    format!("/model/{encoded}/{action}")
}

/// `converse_stream.json` framed as the event stream Bedrock sends.
fn converse_stream_bytes() -> Vec<u8> {
    let events: Vec<(String, Value)> =
        serde_json::from_slice(&fixture("bedrock/converse_stream.json")).unwrap();
    events
        .iter()
        .flat_map(|(kind, payload)| {
            crate::exchange::eventstream::encode(
                &[
                    (":event-type", kind),
                    (":content-type", "application/json"),
                    (":message-type", "event"),
                ],
                payload.to_string().as_bytes(),
            )
        })
        .collect()
}

/// Each event of an Anthropic SSE fixture as an `InvokeModelWithResponseStream` chunk.
fn invoke_stream_bytes(sse: &[u8], metrics: Option<Value>) -> Vec<u8> {
    use base64::Engine as _;
    let text = String::from_utf8(sse.to_vec()).unwrap();
    let mut events: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    if let (Some(m), Some(last)) = (metrics, events.last_mut()) {
        last["amazon-bedrock-invocationMetrics"] = m;
    }
    events
        .iter()
        .flat_map(|e| {
            let b64 = base64::engine::general_purpose::STANDARD.encode(e.to_string());
            crate::exchange::eventstream::encode(
                &[
                    (":event-type", "chunk"),
                    (":content-type", "application/json"),
                    (":message-type", "event"),
                ],
                json!({ "bytes": b64, "p": "abcdef" })
                    .to_string()
                    .as_bytes(),
            )
        })
        .collect()
}

fn converse(resp: &[u8], ctype: &str, stream: bool) -> Exchange {
    let action = if stream {
        "converse-stream"
    } else {
        "converse"
    };
    exchange(
        BEDROCK,
        &bedrock_path(CLAUDE_ON_BEDROCK, action),
        &fixture("bedrock/converse_request.json"),
        200,
        ctype,
        resp,
    )
}

#[test]
fn bedrock_paths_name_the_api_and_the_model() {
    for (action, api, stream) in [
        ("converse", Api::BedrockConverse, false),
        ("converse-stream", Api::BedrockConverse, true),
        ("invoke", Api::BedrockInvoke, false),
        ("invoke-with-response-stream", Api::BedrockInvoke, true),
    ] {
        let ex = exchange(
            BEDROCK,
            &bedrock_path(CLAUDE_ON_BEDROCK, action),
            b"{}",
            200,
            JSON,
            b"{}",
        );
        let t = detect(&ex).unwrap();
        assert_eq!(
            (t.provider, t.api, t.path_stream),
            (Provider::AwsBedrock, api, stream)
        );
        assert_eq!(t.path_model.as_deref(), Some(CLAUDE_ON_BEDROCK));
    }
    // An inference profile ARN, its `/` left unencoded.
    let arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a1b2c3";
    let ex = exchange(
        BEDROCK,
        &format!("/model/{arn}/converse"),
        b"{}",
        200,
        JSON,
        b"{}",
    );
    assert_eq!(detect(&ex).unwrap().path_model.as_deref(), Some(arn));
    // Other actions (`apply-guardrail`, async invoke) and the bare prefix are not parsed.
    for path in [
        "/model/m/apply-guardrail",
        "/model//converse",
        "/model/converse",
    ] {
        let ex = exchange(BEDROCK, path, b"{}", 200, JSON, b"{}");
        assert_eq!(detect(&ex), None, "{path}");
    }
}

#[test]
fn bedrock_converse_request_and_response() {
    let c = run(&converse(
        &fixture("bedrock/converse_response.json"),
        JSON,
        false,
    ));
    assert_eq!(
        (c.provider.as_str(), c.operation.as_str()),
        ("aws.bedrock", "chat")
    );
    assert_eq!(c.request_model.as_deref(), Some(CLAUDE_ON_BEDROCK));
    assert!(!c.stream && !c.aborted && c.parse_error.is_none(), "{c:?}");
    assert_eq!(c.params["max_tokens"], json!(512));
    assert_eq!(c.params["top_p"], json!(0.9));
    assert_eq!(c.params["stop_sequences"], json!(["END"]));
    assert_eq!(c.tool_names, ["get_weather", "get_forecast"]);
    assert_eq!(
        c.system_instructions,
        [text("You are a travel assistant for Acme Travel.")]
    );
    assert_eq!(c.input_messages.len(), 3);
    assert_eq!(
        c.input_messages[0].parts[1],
        Part::Blob {
            modality: Some(Modality::Image),
            mime_type: Some("image/png".into()),
            byte_len: Some(45),
        }
    );
    assert_eq!(
        c.input_messages[1].parts,
        [Part::ToolCall {
            id: Some("tooluse_kZJMlvQmRJ6eAyJE5GIl7Q".into()),
            name: "get_weather".into(),
            arguments: Some(json!({"location": "Paris, France"})),
        }]
    );
    assert_eq!(
        c.input_messages[2].parts,
        [
            Part::ToolCallResponse {
                id: Some("tooluse_kZJMlvQmRJ6eAyJE5GIl7Q".into()),
                response: json!([{"temperature_c": 18, "sky": "sunny"}]),
            },
            text("Flight AF1234 on 12 May, seat 14C."),
        ]
    );
    assert_eq!(
        c.output_messages,
        [out(
            vec![
                Part::Reasoning {
                    content: "I have the weather. Let me also get tomorrow's forecast.".into()
                },
                text("It's 18°C and sunny in Paris. Let me check tomorrow too."),
                Part::ToolCall {
                    id: Some("tooluse_Xq2b7".into()),
                    name: "get_forecast".into(),
                    arguments: Some(json!({"location": "Paris, France", "days": 1})),
                },
            ],
            "tool_call"
        )]
    );
    // Bedrock's inputTokens excludes cache reads and writes; the record's includes them.
    assert_eq!(
        c.usage,
        Usage {
            input_tokens: Some(472 + 1822),
            output_tokens: Some(96),
            cache_read_tokens: Some(1822),
            cache_creation_tokens: Some(0),
            reasoning_tokens: None,
            ..Usage::default()
        }
    );
    // Anthropic's list prices for the model inside the Bedrock ID (cache reads at 0.30/M).
    let want = (472.0 * 3.0 + 1822.0 * 0.30 + 96.0 * 15.0) / 1e6;
    assert!(
        (c.cost_usd.unwrap() - want).abs() < 1e-12,
        "{:?}",
        c.cost_usd
    );
}

#[test]
fn bedrock_converse_stream_equals_json_at_every_split() {
    let whole = run(&converse(
        &fixture("bedrock/converse_response.json"),
        JSON,
        false,
    ));
    let ex = converse(&converse_stream_bytes(), EVENTSTREAM, true);
    let streamed = run(&ex);
    assert!(streamed.parse_error.is_none(), "{:?}", streamed.parse_error);
    assert_same_result(&streamed, &whole);
    assert_split_invariant(&ex);
}

#[test]
fn bedrock_converse_stream_exception_cut_and_corruption() {
    let bytes = converse_stream_bytes();
    // An exception message after some text: the error type is the exception's.
    let events: Vec<(String, Value)> =
        serde_json::from_slice(&fixture("bedrock/converse_stream.json")).unwrap();
    let mut with_error: Vec<u8> = events[..6]
        .iter()
        .flat_map(|(k, p)| {
            crate::exchange::eventstream::encode(
                &[(":event-type", k), (":message-type", "event")],
                p.to_string().as_bytes(),
            )
        })
        .collect();
    with_error.extend(crate::exchange::eventstream::encode(
        &[
            (":exception-type", "throttlingException"),
            (":message-type", "exception"),
        ],
        br#"{"message":"Too many tokens, please wait before trying again."}"#,
    ));
    let c = run(&converse(&with_error, EVENTSTREAM, true));
    assert_eq!(c.error_type.as_deref(), Some("throttlingException"));
    assert_eq!(
        c.output_messages[0].parts.last(),
        Some(&text("It's 18°C and sunny in Paris."))
    );
    assert_eq!(c.finish_reasons, ["unknown"]);

    // Cut inside a message: what was seen, marked aborted, no parse error.
    let c = run(&converse(&bytes[..bytes.len() - 10], EVENTSTREAM, true));
    assert!(c.aborted && c.parse_error.is_none(), "{c:?}");
    assert_eq!(c.usage.input_tokens, None, "the metadata event was cut");
    assert!(!c.output_messages.is_empty());

    // A flipped byte: the decoder stops there and says why.
    let mut corrupt = bytes.clone();
    corrupt[200] ^= 0x40;
    let c = run(&converse(&corrupt, EVENTSTREAM, true));
    assert!(c.aborted);
    assert!(c.parse_error.as_deref().unwrap().contains("CRC"), "{c:?}");
}

fn invoke_claude(resp: &[u8], ctype: &str, stream: bool) -> Exchange {
    let mut req: Value =
        serde_json::from_slice(&fixture("anthropic/messages_request.json")).unwrap();
    req.as_object_mut().unwrap().remove("model");
    req.as_object_mut().unwrap().remove("stream");
    req["anthropic_version"] = json!("bedrock-2023-05-31");
    let action = if stream {
        "invoke-with-response-stream"
    } else {
        "invoke"
    };
    exchange(
        BEDROCK,
        &bedrock_path(CLAUDE_ON_BEDROCK, action),
        &serde_json::to_vec(&req).unwrap(),
        200,
        ctype,
        resp,
    )
}

#[test]
fn claude_through_invoke_model_is_recorded_like_claude_and_priced() {
    let direct = run(&anthropic("anthropic/messages_response.json", JSON, false));
    let whole = run(&invoke_claude(
        &fixture("anthropic/messages_response.json"),
        JSON,
        false,
    ));
    assert_eq!(
        (whole.provider.as_str(), whole.operation.as_str()),
        ("aws.bedrock", "chat")
    );
    assert_eq!(whole.input_messages, direct.input_messages);
    assert_eq!(whole.output_messages, direct.output_messages);
    assert_eq!(whole.usage, direct.usage);
    assert!((whole.cost_usd.unwrap() - direct.cost_usd.unwrap()).abs() < 1e-12);

    let metrics = json!({"inputTokenCount": 1, "outputTokenCount": 1, "invocationLatency": 900, "firstByteLatency": 300});
    let ex = invoke_claude(
        &invoke_stream_bytes(&fixture("anthropic/messages_stream.sse"), Some(metrics)),
        EVENTSTREAM,
        true,
    );
    let streamed = run(&ex);
    // Anthropic's own usage wins over the invocation metrics.
    assert_same_result(&streamed, &whole);
    assert_split_invariant(&ex);
}

#[test]
fn other_models_through_invoke_model_record_usage_but_no_content() {
    let llama = "meta.llama3-70b-instruct-v1:0";
    let req = br#"{"prompt":"<|begin_of_text|>Email dana.whitfield@example.com about Paris","max_gen_len":128}"#;
    let resp = br#"{"generation":"Dear Dana, Paris is sunny.","prompt_token_count":18,"generation_token_count":7,"stop_reason":"stop"}"#;
    let mut ex = exchange(
        BEDROCK,
        &bedrock_path(llama, "invoke"),
        req,
        200,
        JSON,
        resp,
    );
    ex.response_headers.extend([
        ("x-amzn-bedrock-input-token-count", "18"),
        ("x-amzn-bedrock-output-token-count", "7"),
        ("x-amzn-requestid", "5d1e2c3b-aaaa-bbbb-cccc-0123456789ab"),
    ]);
    let c = run(&ex);
    assert_eq!(
        (c.provider.as_str(), c.operation.as_str()),
        ("aws.bedrock", "text_completion")
    );
    assert_eq!(c.request_model.as_deref(), Some(llama));
    assert_eq!(
        (c.usage.input_tokens, c.usage.output_tokens),
        (Some(18), Some(7))
    );
    assert_eq!(
        c.response_id.as_deref(),
        Some("5d1e2c3b-aaaa-bbbb-cccc-0123456789ab")
    );
    assert!(c.input_messages.is_empty() && c.output_messages.is_empty());
    // The request as parsed stays for the identity lookup only (never recorded); nothing
    // else holds content.
    let mut rest = c.clone();
    rest.request_json = None;
    assert!(
        !format!("{rest:?}").contains("dana"),
        "content is not recorded"
    );

    // Streamed: usage from the last chunk's invocation metrics.
    use base64::Engine as _;
    let chunk = |v: Value| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(v.to_string());
        crate::exchange::eventstream::encode(
            &[(":event-type", "chunk"), (":message-type", "event")],
            json!({ "bytes": b64 }).to_string().as_bytes(),
        )
    };
    let mut stream = chunk(json!({"generation": "Dear Dana,"}));
    stream.extend(chunk(
        json!({"generation": " Paris is sunny.", "stop_reason": "stop",
        "amazon-bedrock-invocationMetrics": {"inputTokenCount": 18, "outputTokenCount": 7}}),
    ));
    let ex = exchange(
        BEDROCK,
        &bedrock_path(llama, "invoke-with-response-stream"),
        req,
        200,
        EVENTSTREAM,
        &stream,
    );
    let c = run(&ex);
    assert!(c.stream && !c.aborted && c.parse_error.is_none(), "{c:?}");
    assert_eq!(
        (c.usage.input_tokens, c.usage.output_tokens),
        (Some(18), Some(7))
    );
    assert!(c.output_messages.is_empty());
    assert!(
        !format!("{c:?}").contains("Dana"),
        "the answer is not recorded"
    );
}

#[test]
fn hostile_bedrock_streams_found_by_the_fuzzer_do_not_panic() {
    let frame = |event: &str, payload: Value| {
        crate::exchange::eventstream::encode(
            &[(":message-type", "event"), (":event-type", event)],
            payload.to_string().as_bytes(),
        )
    };
    // A `toolUse` start that is not an object, then input for it.
    let mut stream = frame("contentBlockStart", json!({"start": {"toolUse": 1}}));
    stream.extend(frame(
        "contentBlockDelta",
        json!({"delta": {"toolUse": {"input": "x"}}}),
    ));
    let c = run(&converse(&stream, EVENTSTREAM, true));
    assert!(
        c.output_messages.iter().all(|m| m.parts.is_empty()),
        "{c:?}"
    );
    // Token counts that overflow when summed saturate (Bedrock, Anthropic, Gemini alike).
    let stream = frame(
        "metadata",
        json!({"usage": {"inputTokens": u64::MAX, "cacheReadInputTokens": 1}}),
    );
    let c = run(&converse(&stream, EVENTSTREAM, true));
    assert_eq!(c.usage.input_tokens, Some(u64::MAX));
    let resp = json!({"type": "message", "content": [], "stop_reason": "end_turn",
        "usage": {"input_tokens": u64::MAX, "output_tokens": 1, "cache_read_input_tokens": 5}});
    let ex = exchange(
        "api.anthropic.com",
        "/v1/messages",
        &fixture("anthropic/messages_request.json"),
        200,
        JSON,
        resp.to_string().as_bytes(),
    );
    assert_eq!(run(&ex).usage.input_tokens, Some(u64::MAX));
    // An upstream's unknown stop reason is kept only when shaped like an identifier.
    let stop = |reason: &str| {
        let resp =
            json!({"output": {"message": {"content": [{"text": "hi"}]}}, "stopReason": reason});
        run(&converse(resp.to_string().as_bytes(), JSON, false)).finish_reasons
    };
    assert_eq!(
        stop("model_context_window_exceeded"),
        ["model_context_window_exceeded"]
    );
    assert_eq!(stop("Patient jane.doe@example.com HIV+"), ["_OTHER"]);
    // Media a tool returned is recorded by type and size, never its bytes.
    let req = json!({"messages": [{"role": "user", "content": [{"toolResult": {"toolUseId": "t",
        "content": [{"text": "screenshot:"}, {"image": {"format": "png", "source": {"bytes": "iVBORw0KGgoAAAANSUhEUg"}}},
                    {"document": {"format": "pdf", "name": "scan", "source": {"bytes": "JVBERi0xLjQKJcfs"}}}]}}]}]});
    let ex = exchange(
        BEDROCK,
        &bedrock_path(CLAUDE_ON_BEDROCK, "converse"),
        req.to_string().as_bytes(),
        200,
        JSON,
        &fixture("bedrock/converse_response.json"),
    );
    let c = run(&ex);
    let recorded = serde_json::to_string(&c.input_messages).unwrap();
    assert!(
        recorded.contains("screenshot:") && recorded.contains("\"blob\""),
        "{recorded}"
    );
    assert!(
        !recorded.contains("iVBOR") && !recorded.contains("JVBER"),
        "{recorded}"
    );
    // The same for an Anthropic tool_result (the shared reader the OpenAI dialects use too).
    let req = json!({"model": "claude-sonnet-4-5", "max_tokens": 8, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "t", "content": [
            {"type": "text", "text": "screenshot:"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgoAAAANSUhEUg"}}]}]}]});
    let ex = exchange(
        "api.anthropic.com",
        "/v1/messages",
        req.to_string().as_bytes(),
        200,
        JSON,
        &fixture("anthropic/messages_response.json"),
    );
    let recorded = serde_json::to_string(&run(&ex).input_messages).unwrap();
    assert!(
        recorded.contains("screenshot:") && recorded.contains("image/png"),
        "{recorded}"
    );
    assert!(!recorded.contains("iVBOR"), "{recorded}");
}

#[test]
fn bedrock_error_answers_take_their_type_from_x_amzn_errortype() {
    let mut ex = converse(
        br#"{"message":"Too many requests, please wait before trying again."}"#,
        JSON,
        false,
    );
    ex.status = Some(429);
    ex.response_headers.push(
        "x-amzn-errortype",
        "ThrottlingException:http://internal.amazon.com/coral/com.amazon.bedrock/",
    );
    let c = run(&ex);
    assert_eq!(c.error_type.as_deref(), Some("ThrottlingException"));
    assert!(!format!("{c:?}").contains("Too many requests"));
}

// === OpenAI Realtime ===

/// A Realtime response's exchange as the proxy makes it at `response.done`.
fn realtime(request: Value, response: Value) -> Exchange {
    let mut ex = exchange(
        "api.openai.com",
        "/v1/realtime?model=gpt-realtime",
        request.to_string().as_bytes(),
        101,
        JSON,
        response.to_string().as_bytes(),
    );
    ex.method = "GET".into();
    ex.websocket = Some(crate::exchange::WebSocketSession {
        session: Some("0190f0f0-0000-7000-8000-000000000001".into()),
        ..Default::default()
    });
    ex
}

#[test]
fn realtime_responses_parse_like_chat_with_audio_priced_at_audio_rates() {
    let ex = realtime(
        json!({"model": "gpt-realtime", "instructions": "Be brief.", "tools": ["get_weather"],
               "session_id": "sess_1", "input": [
            {"type": "message", "role": "user", "content": [
                {"type": "input_audio", "audio_bytes": 9600, "transcript": "Weather in Paris?"}]},
            {"type": "function_call_output", "call_id": "call_0", "output": "{\"c\":18}"}]}),
        json!({"id": "resp_1", "status": "completed", "output": [
            {"type": "message", "role": "assistant", "content": [
                {"type": "output_audio", "transcript": "It is 18 degrees.", "audio_bytes": 48000}]},
            {"type": "function_call", "name": "get_weather", "call_id": "call_1", "arguments": "{\"city\":\"Paris\"}"}],
            "usage": {"total_tokens": 160, "input_tokens": 120, "output_tokens": 40,
                "input_token_details": {"text_tokens": 20, "audio_tokens": 100, "cached_tokens": 64,
                    "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 64}},
                "output_token_details": {"text_tokens": 10, "audio_tokens": 30}}}),
    );
    let c = run(&ex);
    assert_eq!(
        (c.provider.as_str(), c.operation.as_str()),
        ("openai", "chat")
    );
    assert!(c.parse_error.is_none(), "{c:?}");
    assert_eq!(c.request_model.as_deref(), Some("gpt-realtime"));
    assert_eq!(c.conversation_id.as_deref(), Some("sess_1"));
    assert_eq!(c.response_id.as_deref(), Some("resp_1"));
    assert_eq!(c.system_instructions, [text("Be brief.")]);
    assert_eq!(c.tool_names, ["get_weather"]);
    let audio = |n| Part::Blob {
        modality: Some(Modality::Audio),
        mime_type: None,
        byte_len: Some(n),
    };
    assert_eq!(
        c.input_messages[0].parts,
        [text("Weather in Paris?"), audio(9600)]
    );
    assert_eq!(c.input_messages[1].role, Role::Tool);
    assert_eq!(
        c.output_messages,
        [out(
            vec![
                text("It is 18 degrees."),
                audio(48000),
                Part::ToolCall {
                    id: Some("call_1".into()),
                    name: "get_weather".into(),
                    arguments: Some(json!({"city": "Paris"})),
                },
            ],
            "tool_call"
        )]
    );
    assert_eq!(
        c.usage,
        Usage {
            input_tokens: Some(120),
            output_tokens: Some(40),
            cache_read_tokens: Some(64),
            input_audio_tokens: Some(100),
            output_audio_tokens: Some(30),
            cache_read_audio_tokens: Some(64),
            ..Usage::default()
        }
    );
    // gpt-realtime: 20 text in at $4, 36 audio in at $32, 64 cached audio at $0.40,
    // 10 text out at $16, 30 audio out at $64 (per million).
    let want = (20.0 * 4.0 + 36.0 * 32.0 + 64.0 * 0.40 + 10.0 * 16.0 + 30.0 * 64.0) / 1e6;
    assert!(
        (c.cost_usd.unwrap() - want).abs() < 1e-12,
        "{:?}",
        c.cost_usd
    );

    // Cut short by the token limit, cancelled, failed.
    for (status, details, finish, error) in [
        (
            "incomplete",
            json!({"reason": "max_output_tokens"}),
            "length",
            None,
        ),
        (
            "cancelled",
            json!({"reason": "turn_detected"}),
            "cancelled",
            None,
        ),
        (
            "failed",
            json!({"error": {"type": "server_error", "code": "rate_limit_exceeded"}}),
            "error",
            Some("rate_limit_exceeded"),
        ),
    ] {
        let c = run(&realtime(
            json!({"model": "gpt-realtime", "input": []}),
            json!({"id": "r", "status": status, "status_details": details, "output": []}),
        ));
        assert_eq!(c.finish_reasons, [finish], "{status}");
        assert_eq!(c.error_type.as_deref(), error, "{status}");
    }
    // The session's own exchange (no `session`) stays opaque.
    let mut session = ex.clone();
    session.websocket = Some(Default::default());
    assert_eq!(run(&session).operation, Operation::Unknown);
}

// === Chat Completions answers read without a tree (openai::chat_response_direct) ===

/// The conversation both readings start from.
fn blank() -> Conversation {
    base(&exchange(
        "api.openai.com",
        "/v1/chat/completions",
        b"{}",
        200,
        "application/json",
        b"{}",
    ))
}

/// What the tree reading (`json::from_slice`, then `openai::chat_response`) makes of `body`,
/// `None` when the tree parse refuses it.
fn chat_answer_by_tree(body: &[u8]) -> Option<Conversation> {
    let v = json::from_slice(body).ok()?;
    let mut c = blank();
    openai::chat_response(&v, &mut c);
    Some(c)
}

/// What the direct reading makes of `body`, `None` when it leaves it to the tree.
fn chat_answer_direct(body: &[u8]) -> Option<Conversation> {
    let mut c = blank();
    if openai::chat_response_direct(body, &mut c) {
        Some(c)
    } else {
        assert_eq!(c, blank(), "a refusal leaves the conversation untouched");
        None
    }
}

/// Real answers (the fixtures and the audio answer's shape) are read directly, and to the same
/// conversation as the tree gives: id, model, usage with details, choices out of order, tool
/// calls (parsed and unparsable arguments, the legacy `function_call`), reasoning, refusal,
/// audio, legacy Completions text, and strings with escapes.
#[test]
fn direct_chat_answers_equal_the_tree_reading() {
    let mut bodies: Vec<Vec<u8>> = [
        "openai/chat_n2_response.json",
        "openai/chat_refusal_response.json",
        "openai/chat_tools_response.json",
        "openai/completions_response.json",
    ]
    .iter()
    .map(|f| fixture(f))
    .collect();
    bodies.push(
        json!({"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
            "system_fingerprint": null, "service_tier": "default",
            "choices": [
                {"index": 1, "finish_reason": "length", "logprobs": null,
                 "message": {"role": "assistant", "content": "second \"quoted\" \\ line\nnext é 🦀",
                             "reasoning_content": "think", "annotations": []}},
                {"index": 0, "finish_reason": "tool_calls",
                 "message": {"role": "assistant", "content": null, "refusal": null,
                    "tool_calls": [
                        {"id": "call_1", "type": "function",
                         "function": {"name": "lookup", "arguments": "{\"q\": \"x\"}"}},
                        {"id": "call_2", "type": "function",
                         "function": {"name": "broken", "arguments": "{not json"}}],
                    "function_call": {"name": "legacy", "arguments": "{}"}}},
                {"index": 2, "finish_reason": null,
                 "message": {"role": "assistant", "reasoning": "fallback reasoning",
                    "audio": {"id": "a", "data": "UklGRg==", "transcript": "Hello"}}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
                "prompt_tokens_details": {"cached_tokens": 3, "audio_tokens": 1},
                "completion_tokens_details": {"reasoning_tokens": 2, "audio_tokens": 4}}})
        .to_string()
        .into_bytes(),
    );
    // Escapes in keys and values: decoded, not borrowed, and still the same members.
    bodies.push(
        br#"{"\u0069d":"c\u00e9","model":"gpt-4o-mini","choices":[{"index":0,"message":{"content":"tab\there \ud83e\udd80"},"finish_reason":"stop"}]}"#
            .to_vec(),
    );
    for (k, body) in bodies.iter().enumerate() {
        let direct =
            chat_answer_direct(body).unwrap_or_else(|| panic!("answer {k} is read directly"));
        let tree = chat_answer_by_tree(body).expect("the tree reads it too");
        assert_eq!(direct, tree, "answer {k}");
        assert!(!direct.output_messages.is_empty(), "answer {k} has choices");
    }
}

/// Bodies the direct reading must leave to the tree, each for a reason the module doc names:
/// a member of an unexpected type, not an object, a lone surrogate, invalid UTF-8, and what
/// only the tree refuses (a number out of range, nesting past serde_json's limit, in members
/// the direct reading does not otherwise read).
#[test]
fn direct_chat_reading_leaves_odd_answers_to_the_tree() {
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let cases: Vec<Vec<u8>> = vec![
        br#"{"id":5,"choices":[]}"#.to_vec(),
        br#"{"choices":{"0":{}}}"#.to_vec(),
        br#"{"choices":[1]}"#.to_vec(),
        br#"{"choices":[{"message":"hi"}]}"#.to_vec(),
        br#"{"choices":[{"message":{"content":[{"type":"text","text":"hi"}]}}]}"#.to_vec(),
        br#"[]"#.to_vec(),
        b"   ".to_vec(),
        br#"{"choices":[{"message":{"content":"cut \ud800 here"}}]}"#.to_vec(),
        b"{\"model\":\"m\xff\"}".to_vec(),
        br#"{"created":1e400,"choices":[]}"#.to_vec(),
        format!(r#"{{"extra":{deep},"choices":[]}}"#).into_bytes(),
        br#"{"choices":[]} trailing"#.to_vec(),
    ];
    for (k, body) in cases.iter().enumerate() {
        assert!(
            chat_answer_direct(body).is_none(),
            "case {k} is left to the tree"
        );
    }
    // The tree makes something of some of them (the surrogate is repaired; odd members are
    // read as absent), so leaving them is what keeps the two readings the same.
    assert!(chat_answer_by_tree(&cases[0]).is_some());
    assert!(chat_answer_by_tree(&cases[7]).is_some());
}

/// A JSON value of any type, as text: the leaves include what the two readings could disagree
/// on (escapes, a lone surrogate, an out-of-range number, empty strings, deep nesting).
fn any_json() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        Just("0".to_string()),
        Just("3".to_string()),
        Just("-1".to_string()),
        Just("1.5".to_string()),
        Just("18446744073709551616".to_string()),
        Just("1e400".to_string()),
        Just(r#""""#.to_string()),
        Just(r#""plain""#.to_string()),
        Just(r#""stop""#.to_string()),
        Just(r#""q\"uote\\ \n é""#.to_string()),
        Just(r#""\ud800 lone""#.to_string()),
        Just(r#""\ud83e\udd80""#.to_string()),
        Just(r#"{"name":"f","arguments":"{\"a\":1}"}"#.to_string()),
        Just(format!("{}{}", "[".repeat(130), "]".repeat(130))),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|v| format!("[{}]", v.join(","))),
            proptest::collection::vec(("[a-z_]{1,8}", inner), 0..4).prop_map(|v| {
                let m: Vec<String> = v.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", m.join(","))
            }),
        ]
    })
}

/// An object whose members are drawn from `keys` (each may repeat, as JSON allows) with values
/// from `value`, plus members nobody reads.
fn object_of(
    keys: &'static [&'static str],
    value: impl Strategy<Value = String> + Clone,
) -> impl Strategy<Value = String> {
    let key = proptest::sample::select(keys.to_vec());
    proptest::collection::vec((key, value), 0..6).prop_map(|members| {
        let m: Vec<String> = members
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", m.join(","))
    })
}

fn chat_answer_text() -> impl Strategy<Value = String> {
    let message = object_of(
        &[
            "content",
            "reasoning_content",
            "reasoning",
            "refusal",
            "audio",
            "tool_calls",
            "function_call",
            "role",
            "annotations",
        ],
        prop_oneof![
            3 => any_json(),
            1 => Just(r#"{"data":"UklGRg==","transcript":"hi"}"#.to_string()),
            1 => Just(r#"[{"id":"c","function":{"name":"f","arguments":"{}"}}]"#.to_string()),
        ],
    );
    let choice = object_of(
        &["index", "text", "message", "finish_reason", "logprobs"],
        prop_oneof![2 => any_json(), 2 => message],
    );
    let choices = proptest::collection::vec(prop_oneof![4 => choice, 1 => any_json()], 0..4)
        .prop_map(|v| format!("[{}]", v.join(",")));
    object_of(
        &["id", "model", "usage", "choices", "object", "created"],
        prop_oneof![
            2 => any_json(),
            3 => choices,
            1 => Just(r#"{"prompt_tokens":5,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":1}}"#.to_string()),
        ],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Whenever the direct reading takes an answer, the tree reads the same answer to the same
    /// conversation; when the tree refuses a body, so does the direct reading.
    #[test]
    fn direct_chat_reading_agrees_with_the_tree(body in chat_answer_text()) {
        let tree = chat_answer_by_tree(body.as_bytes());
        if let Some(direct) = chat_answer_direct(body.as_bytes()) {
            prop_assert_eq!(Some(direct), tree, "{}", body);
        }
    }
}

// === Chat Completions requests read without their messages' tree (openai::chat_request_direct) ===

/// What the tree reading (`json::from_slice`, then `openai::chat_request`) makes of `body`,
/// and the tree without its `messages`; `None` when the tree parse refuses it or it is not an
/// object (which `parse` refuses before any dialect reads it).
fn chat_request_by_tree(body: &[u8]) -> Option<(Conversation, Value)> {
    let mut v = json::from_slice(body).ok()?;
    v.is_object().then_some(())?;
    let mut c = blank();
    openai::chat_request(&v, &mut c);
    v.as_object_mut().unwrap().remove("messages");
    Some((c, v))
}

/// What the direct reading makes of `body`, `None` when it leaves it to the tree.
fn chat_request_direct(body: &[u8]) -> Option<(Conversation, Value)> {
    let mut c = blank();
    match openai::chat_request_direct(body, &mut c) {
        Some(rest) => Some((c, rest)),
        None => {
            assert_eq!(c, blank(), "a refusal leaves the conversation untouched");
            None
        }
    }
}

/// Real requests (the fixtures) and one with every kind of message are read directly, to the
/// same conversation as the tree gives and with the same tree less `messages`: system and
/// developer prompts, parts, a tool message's text and blocks, an assistant's tool calls and
/// legacy `function_call`, names, refusal, escapes, a `null` content, and the parameters,
/// tools and user members read from the rest.
#[test]
fn direct_chat_requests_equal_the_tree_reading() {
    let mut bodies: Vec<Vec<u8>> = [
        "openai/chat_n2_request.json",
        "openai/chat_tools_request.json",
    ]
    .iter()
    .map(|f| fixture(f))
    .collect();
    bodies.push(
        json!({"model": "gpt-4o", "temperature": 0.2, "max_completion_tokens": 50,
            "stop": ["END", 3], "n": 2, "stream": true, "user": "u-1",
            "metadata": {"user_id": "m-1"},
            "tools": [{"type": "function", "function": {"name": "lookup"}},
                      {"type": "file_search"}],
            "functions": [{"name": "legacy_fn"}],
            "messages": [
                {"role": "developer", "content": "Be brief. \"quoted\" \\ é 🦀"},
                {"role": "system", "content": [{"type": "text", "text": "part one"}]},
                {"role": "user", "name": "jane", "content": [
                    {"type": "text", "text": "look"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
                    {"type": "input_audio", "input_audio": {"format": "wav", "data": "UklGRg=="}},
                    {"type": "file", "file": {"file_id": "file-1"}},
                    {"type": "mystery"}]},
                {"role": "assistant", "content": null, "refusal": "no",
                 "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "lookup", "arguments": "{\"q\": \"x\"}"}}],
                 "function_call": {"name": "legacy", "arguments": "{bad"}},
                {"role": "tool", "tool_call_id": "call_1", "name": "ignored", "content": "sunny"},
                {"role": "tool", "tool_call_id": "call_2",
                 "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "function", "content": [{"type": "text", "text": "a"},
                    {"type": "image_url", "image_url": "https://example.com/x.png"}]},
                {"role": "tool"},
                {"role": "user", "content": ""},
                {"role": "user", "content": 5},
                {"content": "no role"}]})
        .to_string()
        .into_bytes(),
    );
    // Escapes in keys and values; `messages` given twice (the last wins); a `null` list.
    bodies.push(
        br#"{"m\u006fdel":"g","messages":[{"role":"user","content":"x"}],"messages":[{"r\u006fle":"user","content":"tab\there \ud83e\udd80"}]}"#
            .to_vec(),
    );
    bodies.push(br#"{"model":"g","messages":null}"#.to_vec());
    bodies.push(br#"{}"#.to_vec());
    for (k, body) in bodies.iter().enumerate() {
        let direct =
            chat_request_direct(body).unwrap_or_else(|| panic!("request {k} is read directly"));
        let tree = chat_request_by_tree(body).expect("the tree reads it too");
        assert_eq!(direct, tree, "request {k}");
    }
    // The one with every kind reads to something: the comparison is not of two empties.
    let (c, rest) = chat_request_direct(&bodies[2]).unwrap();
    assert_eq!(c.input_messages.len(), 11);
    assert_eq!(c.tool_names, ["lookup", "file_search", "legacy_fn"]);
    assert_eq!(c.user_id.as_deref(), Some("u-1"));
    assert!(rest.get("metadata").is_some() && rest.get("messages").is_none());
}

/// Bodies the direct reading must leave to the tree: a message or field of an unexpected type,
/// `messages` not a list, not an object, a lone surrogate, invalid UTF-8, and what only the tree
/// refuses (a number out of range, nesting past serde_json's limit, in members read as trees).
#[test]
fn direct_chat_request_reading_leaves_odd_requests_to_the_tree() {
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let cases: Vec<Vec<u8>> = vec![
        br#"{"messages":{"0":{}}}"#.to_vec(),
        br#"{"messages":[1]}"#.to_vec(),
        br#"{"messages":[{"role":5,"content":"hi"}]}"#.to_vec(),
        br#"{"messages":[{"role":"user","name":["x"]}]}"#.to_vec(),
        br#"[]"#.to_vec(),
        b"   ".to_vec(),
        br#"{"messages":[{"content":"cut \ud800 here"}]}"#.to_vec(),
        b"{\"model\":\"m\xff\"}".to_vec(),
        br#"{"temperature":1e400,"messages":[]}"#.to_vec(),
        format!(r#"{{"messages":[{{"content":{deep}}}]}}"#).into_bytes(),
        format!(r#"{{"tools":{deep},"messages":[]}}"#).into_bytes(),
        br#"{"messages":[]} trailing"#.to_vec(),
    ];
    for (k, body) in cases.iter().enumerate() {
        assert!(
            chat_request_direct(body).is_none(),
            "case {k} is left to the tree"
        );
    }
    // The tree makes something of some of them (odd members read as absent; the surrogate
    // repaired), so leaving them is what keeps the two readings the same.
    assert!(chat_request_by_tree(&cases[0]).is_some());
    assert!(chat_request_by_tree(&cases[6]).is_some());
}

fn chat_request_text() -> impl Strategy<Value = String> {
    let message = object_of(
        &[
            "role",
            "content",
            "name",
            "refusal",
            "tool_call_id",
            "tool_calls",
            "function_call",
            "audio",
        ],
        prop_oneof![
            3 => any_json(),
            1 => Just(r#""tool""#.to_string()),
            1 => Just(r#""assistant""#.to_string()),
            2 => Just(r#""plain \"text\" é""#.to_string()),
            1 => Just(r#"[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"https://x/y.png"}}]"#.to_string()),
            1 => Just(r#"[{"id":"c","function":{"name":"f","arguments":"{}"}}]"#.to_string()),
        ],
    );
    let messages = proptest::collection::vec(prop_oneof![4 => message, 1 => any_json()], 0..4)
        .prop_map(|v| format!("[{}]", v.join(",")));
    object_of(
        &[
            "messages",
            "model",
            "user",
            "tools",
            "stop",
            "temperature",
            "stream",
            "n",
            "max_tokens",
        ],
        prop_oneof![
            2 => any_json(),
            3 => messages,
            1 => Just(r#"[{"type":"function","function":{"name":"f"}}]"#.to_string()),
        ],
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Whenever the direct reading takes a request, the tree reads the same request to the
    /// same conversation and the same tree less `messages`; when the tree refuses a body, so
    /// does the direct reading.
    #[test]
    fn direct_chat_request_reading_agrees_with_the_tree(body in chat_request_text()) {
        let tree = chat_request_by_tree(body.as_bytes());
        if let Some(direct) = chat_request_direct(body.as_bytes()) {
            prop_assert_eq!(Some(direct), tree, "{}", body);
        }
    }
}

/// The record step finds a user named inside the messages of a request read directly (its
/// tree lacks them) by reading the whole tree again, and only for rules that look there: the
/// shipped rules read root members, which the direct reading keeps.
#[test]
fn identity_paths_into_messages_find_users_of_requests_read_directly() {
    use crate::keys::{KeyId, Keyring, MasterKey};
    use crate::redact::{BUILTIN_DEFAULT_RULES, CompiledRules};
    let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [3; 32]));
    let body = json!({"model": "gpt-4o", "user": "root-user",
        "messages": [{"role": "user", "name": "named-user", "content": "hi",
                      "metadata": {"tenant_user": "deep-user"}}]})
    .to_string();
    let ex = exchange(
        "api.openai.com",
        "/v1/chat/completions",
        body.as_bytes(),
        200,
        "application/json",
        &fixture("openai/chat_n2_response.json"),
    );
    let conv = run(&ex);
    assert!(conv.request_messages_omitted.is_some(), "read directly");
    assert_eq!(conv.input_messages.len(), 1);
    let rules = CompiledRules::from_str(
        "version = 1\n[identity]\njson = [\"$.messages[0].name\", \"$..tenant_user\", \"$.user\"]\n",
        &keys,
    )
    .unwrap();
    assert!(rules.identity_may_reach("messages"));
    let record = crate::record::build(&ex, &conv, &rules);
    let want: Vec<_> = ["named-user", "deep-user", "root-user"]
        .iter()
        .map(|u| crate::keys::pseudonymize_user(&keys, u))
        .collect();
    assert_eq!(record.user_pseudonyms, want);
    let shipped = CompiledRules::from_str(BUILTIN_DEFAULT_RULES, &keys).unwrap();
    assert!(!shipped.identity_may_reach("messages"));
    let record = crate::record::build(&ex, &conv, &shipped);
    assert_eq!(
        record.user_pseudonym,
        Some(crate::keys::pseudonymize_user(&keys, "root-user"))
    );
}

/// What the tree reading of a Messages request makes of `body`: the conversation, and the tree
/// less `messages`.
fn messages_request_by_tree(body: &[u8]) -> Option<(Conversation, Value)> {
    let mut v = json::from_slice(body).ok()?;
    v.is_object().then_some(())?;
    let mut c = blank();
    anthropic::request(&v, &mut c);
    v.as_object_mut().unwrap().remove("messages");
    Some((c, v))
}

/// What the direct reading of a Messages request makes of `body`, `None` when it leaves it to
/// the tree.
fn messages_request_direct(body: &[u8]) -> Option<(Conversation, Value)> {
    let mut c = blank();
    match anthropic::request_direct(body, &mut c) {
        Some(rest) => Some((c, rest)),
        None => {
            assert_eq!(c, blank(), "a refusal leaves the conversation untouched");
            None
        }
    }
}

/// A real Messages request (the fixture) and one with every kind of block are read directly,
/// to the same conversation as the tree gives and with the same tree less `messages`: text,
/// images and documents of each source, tool use with object and string inputs, tool results
/// as text, blocks and `null`, thinking, redacted thinking, unknown and typeless blocks, the
/// system prompt, tools and the user in `metadata`.
#[test]
fn direct_messages_requests_equal_the_tree_reading() {
    let mut bodies: Vec<Vec<u8>> = vec![fixture("anthropic/messages_request.json")];
    bodies.push(
        json!({"model": "claude-sonnet-4-5", "max_tokens": 1024, "temperature": 0.5,
            "top_k": 5, "stop_sequences": ["END", 7], "stream": true,
            "metadata": {"user_id": "u-7"},
            "system": [{"type": "text", "text": "Be brief. \"quoted\" \\ é 🦀",
                        "cache_control": {"type": "ephemeral"}}],
            "tools": [{"name": "lookup", "input_schema": {"type": "object"}},
                      {"type": "web_search_20250305"}],
            "messages": [
                {"role": "user", "content": "plain"},
                {"role": "user", "content": [
                    {"type": "text", "text": "look", "citations": null},
                    {"type": "text", "text": ""},
                    {"type": "text"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                                 "data": "iVBORw0KGgo="}},
                    {"type": "image", "source": {"type": "url", "url": "https://x.example/a.png"}},
                    {"type": "image", "source": {"type": "url"}},
                    {"type": "document", "source": {"type": "file", "file_id": "file_1"}},
                    {"type": "document", "source": {"type": "text", "data": "the doc",
                                                    "media_type": "text/plain"}},
                    {"type": "document", "source": null},
                    {"type": "image"},
                    {"type": "mystery", "text": "x"},
                    {"text": "no type"}]},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "calling"},
                    {"type": "tool_use", "id": "toolu_1", "name": "lookup",
                     "input": {"q": "x"}},
                    {"type": "tool_use", "id": "", "name": "raw", "input": "{\"a\": 1}"},
                    {"type": "tool_use", "input": null}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": true,
                     "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                    {"type": "tool_result", "tool_use_id": "toolu_3",
                     "content": [{"type": "text", "text": "see"},
                                 {"type": "image", "source": {"type": "base64",
                                    "media_type": "image/jpeg", "data": "/9j/"}}]},
                    {"type": "tool_result", "tool_use_id": "toolu_4", "content": null},
                    {"type": "tool_result", "content": {"odd": 1}},
                    {"type": "tool_result"}]},
                {"role": "system", "content": "an unknown role"},
                {"content": "no role"},
                {"role": "user", "content": null},
                {"role": "user", "content": 5},
                {"role": "user", "content": {"type": "text", "text": "an object"}},
                {"role": "user"}]})
        .to_string()
        .into_bytes(),
    );
    // Escapes in keys and values; `messages` given twice (the last wins); a `null` list.
    bodies.push(
        br#"{"m\u006fdel":"c","messages":[{"role":"user","content":"x"}],"messages":[{"r\u006fle":"assistant","content":[{"t\u0079pe":"text","text":"tab\there \ud83e\udd80"}]}]}"#
            .to_vec(),
    );
    bodies.push(br#"{"model":"c","messages":null}"#.to_vec());
    bodies.push(br#"{}"#.to_vec());
    for (k, body) in bodies.iter().enumerate() {
        let direct =
            messages_request_direct(body).unwrap_or_else(|| panic!("request {k} is read directly"));
        let tree = messages_request_by_tree(body).expect("the tree reads it too");
        assert_eq!(direct, tree, "request {k}");
    }
    // The one with every kind reads to something: the comparison is not of two empties.
    let (c, rest) = messages_request_direct(&bodies[1]).unwrap();
    assert_eq!(c.input_messages.len(), 10);
    assert_eq!(
        c.input_messages[1].parts.len(),
        10,
        "the typeless block and the image without its URL are no parts"
    );
    assert_eq!(c.input_messages[3].parts.len(), 6);
    assert_eq!(c.tool_names, ["lookup", "web_search_20250305"]);
    assert_eq!(c.user_id.as_deref(), Some("u-7"));
    assert_eq!(c.system_instructions.len(), 1);
    assert!(rest.get("system").is_some() && rest.get("messages").is_none());
    // A string tool result is the response itself.
    assert!(matches!(&c.input_messages[3].parts[0],
        Part::ToolCallResponse { response: Value::String(s), .. } if s == "sunny"));
}

/// Bodies the direct reading of a Messages request does not take: a member of a type it
/// does not read (the tree reads it as absent), anything serde_json refuses, a lone surrogate
/// (the tree repairs it), nesting past the limit.
#[test]
fn direct_messages_request_reading_leaves_odd_requests_to_the_tree() {
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let cases: Vec<Vec<u8>> = vec![
        br#"{"messages":{"0":{}}}"#.to_vec(),
        br#"{"messages":[1]}"#.to_vec(),
        br#"{"messages":[{"role":5,"content":"hi"}]}"#.to_vec(),
        br#"{"messages":[{"role":"user","content":[3]}]}"#.to_vec(),
        br#"{"messages":[{"role":"user","content":[{"type":1}]}]}"#.to_vec(),
        br#"{"messages":[{"role":"user","content":[{"type":"text","text":["x"]}]}]}"#.to_vec(),
        br#"{"messages":[{"role":"user","content":[{"type":"tool_use","id":7}]}]}"#.to_vec(),
        br#"[]"#.to_vec(),
        br#"{"messages":[{"content":"cut \ud800 here"}]}"#.to_vec(),
        b"{\"model\":\"m\xff\"}".to_vec(),
        br#"{"max_tokens":1e400,"messages":[]}"#.to_vec(),
        format!(r#"{{"messages":[{{"content":[{{"type":"tool_result","content":{deep}}}]}}]}}"#)
            .into_bytes(),
        format!(r#"{{"system":{deep},"messages":[]}}"#).into_bytes(),
        br#"{"messages":[]} trailing"#.to_vec(),
    ];
    for (k, body) in cases.iter().enumerate() {
        assert!(
            messages_request_direct(body).is_none(),
            "case {k} is left to the tree"
        );
    }
    // The tree makes something of some of them (odd members read as absent; the surrogate
    // repaired), so leaving them is what keeps the two readings the same.
    assert!(messages_request_by_tree(&cases[0]).is_some());
    assert!(messages_request_by_tree(&cases[3]).is_some());
    assert!(messages_request_by_tree(&cases[8]).is_some());
}

fn messages_request_text() -> impl Strategy<Value = String> {
    // Each member mostly of the type the direct reading takes, sometimes anything: a body
    // the direct reading takes must often hold blocks, or the agreement says little.
    let text = || {
        prop_oneof![
            12 => prop_oneof![
                Just(r#""plain""#.to_string()),
                Just(r#""q\"uote\\ \n é""#.to_string()),
                Just(r#""""#.to_string()),
                Just("null".to_string()),
            ],
            1 => any_json(),
        ]
        .boxed()
    };
    let kind = prop_oneof![
        12 => prop_oneof![
            Just(r#""text""#.to_string()),
            Just(r#""tool_use""#.to_string()),
            Just(r#""tool_result""#.to_string()),
            Just(r#""image""#.to_string()),
            Just(r#""document""#.to_string()),
            Just(r#""thinking""#.to_string()),
            Just(r#""redacted_thinking""#.to_string()),
            Just(r#""other""#.to_string()),
        ],
        1 => any_json(),
    ]
    .boxed();
    let source = prop_oneof![
        2 => Just(r#"{"type":"base64","media_type":"image/png","data":"iVBO"}"#.to_string()),
        1 => Just(r#"{"type":"url","url":"https://x/y.png"}"#.to_string()),
        1 => Just(r#"{"type":"text","data":"doc"}"#.to_string()),
        1 => Just(r#"{"type":"file","file_id":"f"}"#.to_string()),
        2 => any_json(),
    ]
    .boxed();
    let result = prop_oneof![
        2 => text(),
        2 => Just(r#"[{"type":"text","text":"a"},{"type":"text","text":"b"}]"#.to_string()),
        1 => Just(r#"[{"type":"text","text":"a"},{"type":"image","source":{"type":"url","url":"https://x/y.png"}}]"#.to_string()),
        1 => any_json(),
    ]
    .boxed();
    let member = prop_oneof![
        1 => (Just("type"), kind.clone()),
        2 => (Just("text"), text()),
        1 => (Just("thinking"), text()),
        1 => (Just("id"), text()),
        1 => (Just("name"), text()),
        1 => (Just("tool_use_id"), text()),
        1 => (Just("source"), source),
        1 => (Just("input"), any_json().boxed()),
        1 => (Just("content"), result),
        1 => (Just("citations"), any_json().boxed()),
    ];
    // Mostly typed first (a block without a type is no part), sometimes not at all.
    let first_type =
        prop_oneof![6 => kind.prop_map(|k| format!("\"type\":{k}")), 1 => Just(String::new())];
    let block =
        (first_type, proptest::collection::vec(member, 0..5)).prop_map(|(first, members)| {
            let m: Vec<String> = (!first.is_empty())
                .then_some(first)
                .into_iter()
                .chain(members.iter().map(|(k, v)| format!("\"{k}\":{v}")))
                .collect();
            format!("{{{}}}", m.join(","))
        });
    let blocks = proptest::collection::vec(prop_oneof![16 => block, 1 => any_json()], 0..4)
        .prop_map(|v| format!("[{}]", v.join(",")));
    let role = prop_oneof![
        2 => Just(r#""user""#.to_string()),
        2 => Just(r#""assistant""#.to_string()),
        1 => text(),
    ]
    .boxed();
    let content = prop_oneof![4 => blocks, 2 => text()].boxed();
    let message = proptest::collection::vec(
        prop_oneof![(Just("role"), role), (Just("content"), content)],
        0..3,
    )
    .prop_map(|members| {
        let m: Vec<String> = members
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", m.join(","))
    });
    let messages = proptest::collection::vec(prop_oneof![8 => message, 1 => any_json()], 0..4)
        .prop_map(|v| format!("[{}]", v.join(",")));
    let other = prop_oneof![
        2 => any_json(),
        1 => Just(r#"[{"name":"f","input_schema":{}}]"#.to_string()),
        1 => Just(r#"{"user_id":"u"}"#.to_string()),
        1 => Just(r#"[{"type":"text","text":"sys"}]"#.to_string()),
    ]
    .boxed();
    let member = prop_oneof![
        3 => (Just("messages"), prop_oneof![8 => messages, 1 => any_json()].boxed()),
        1 => (
            proptest::sample::select(vec![
                "model", "system", "tools", "metadata", "stop_sequences", "temperature",
                "stream", "max_tokens",
            ]),
            other,
        ),
    ];
    proptest::collection::vec(member, 0..6).prop_map(|members| {
        let m: Vec<String> = members
            .iter()
            .map(|(k, v)| format!("\"{k}\":{v}"))
            .collect();
        format!("{{{}}}", m.join(","))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Whenever the direct reading takes a Messages request, the tree reads the same request
    /// to the same conversation and the same tree less `messages`; when the tree refuses a
    /// body, so does the direct reading.
    #[test]
    fn direct_messages_request_reading_agrees_with_the_tree(body in messages_request_text()) {
        let tree = messages_request_by_tree(body.as_bytes());
        if let Some(direct) = messages_request_direct(body.as_bytes()) {
            prop_assert_eq!(Some(direct), tree, "{}", body);
        }
    }
}

/// As for Chat Completions: a Messages request read directly keeps `metadata` in its tree
/// (the shipped rules' `$.metadata.user_id`), and rules with a path into the messages read
/// the whole tree again.
#[test]
fn identity_paths_into_messages_find_users_of_messages_requests_read_directly() {
    use crate::keys::{KeyId, Keyring, MasterKey};
    use crate::redact::{BUILTIN_DEFAULT_RULES, CompiledRules};
    let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [4; 32]));
    let body = json!({"model": "claude-sonnet-4-5", "max_tokens": 10,
        "metadata": {"user_id": "meta-user"},
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "hi", "tenant_user": "deep-user"}]}]})
    .to_string();
    let ex = exchange(
        "api.anthropic.com",
        "/v1/messages",
        body.as_bytes(),
        200,
        "application/json",
        &fixture("anthropic/messages_response.json"),
    );
    let conv = run(&ex);
    assert!(conv.request_messages_omitted.is_some(), "read directly");
    assert_eq!(conv.input_messages.len(), 1);
    let rules = CompiledRules::from_str(
        "version = 1\n[identity]\njson = [\"$..tenant_user\", \"$.metadata.user_id\"]\n",
        &keys,
    )
    .unwrap();
    let record = crate::record::build(&ex, &conv, &rules);
    let want: Vec<_> = ["deep-user", "meta-user"]
        .iter()
        .map(|u| crate::keys::pseudonymize_user(&keys, u))
        .collect();
    assert_eq!(record.user_pseudonyms, want);
    let shipped = CompiledRules::from_str(BUILTIN_DEFAULT_RULES, &keys).unwrap();
    let record = crate::record::build(&ex, &conv, &shipped);
    assert_eq!(
        record.user_pseudonym,
        Some(crate::keys::pseudonymize_user(&keys, "meta-user"))
    );
}
