//! Provider detection and the parse driver: [`Exchange`] → [`Conversation`].
//!
//! Part of the exchange step, off the hot path. [`detect`] names the provider and the API
//! from the host and path the request was sent to (gateway routes included: their
//! `upstream.host` is the real provider and their path is the upstream path). [`parse`]
//! then decodes the bodies (bounded), runs the dialect's request and response parsers, and
//! fills the metadata every record needs whatever happened: sizes, status, timings, tags,
//! identity, trace context and cost.
//!
//! `parse` is infallible on purpose: the pipeline must record every exchange, so anything
//! not understood (unknown endpoint, undecodable or non-JSON body, truncated capture)
//! becomes an *opaque* conversation with `operation = "unknown"` rather than an error.
//!
//! The dialect modules (`openai`, `anthropic`, `gemini`) read `serde_json::Value`s and never
//! index blindly: every field is optional, because the input is whatever crossed the wire.
//! Streams are folded back into the non-streamed response shape of the same API and then
//! parsed by the same function, so a streamed and a non-streamed response of the same
//! content produce the same model by construction. The most common exchanges are first read
//! without trees: a Chat Completions response (`openai::chat_response_direct`) and request
//! (`openai::chat_request_direct`), and a Messages request (`anthropic::request_direct`): a
//! request's messages read as they are parsed, its other members kept as a tree for the
//! parameters and the rules' identity paths; all built on `direct`.
//! Each falls back to the tree for anything it does not expect, and is tested to give what
//! the tree gives whenever it does not.

mod anthropic;
mod bedrock;
mod direct;
mod gemini;
mod ollama;
mod openai;
mod realtime;
#[cfg(test)]
mod tests;

use bytes::Bytes;
use serde_json::Value;

use super::model::{Conversation, ConversationTimings, Modality, Part};
use super::operation::Operation;
use super::pricing::Pricing;
use super::providers::Provider;
use super::sse::{SseError, SseEvent, SseParser};
use super::{Exchange, Outcome, json, traceparent};

/// Knobs for [`parse`]: the parser's memory bounds. `veil run` uses the defaults; the fuzz
/// target and the tests lower them to reach the limits with small inputs. (The end-user ID
/// JSON paths that once lived here are the rules' `[identity] json`, looked up by the record
/// step in [`Conversation::request_json`].)
#[derive(Debug, Clone)]
pub struct ParseOptions {
    /// Largest decoded body veil parses, in bytes (bounds decompression).
    pub decode_limit: usize,
    /// Largest single server-sent event, in bytes.
    pub max_event: usize,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            // Twice the default capture limit: a compressed 32 MiB capture of JSON rarely
            // inflates further, and anything bigger is not worth holding in memory twice.
            decode_limit: 64 << 20,
            max_event: super::sse::DEFAULT_MAX_EVENT,
        }
    }
}

/// The API dialect of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI Chat Completions (`/chat/completions`), and every compatible server.
    OpenAiChat,
    /// OpenAI Responses (`/responses`).
    OpenAiResponses,
    /// OpenAI Embeddings (`/embeddings`).
    OpenAiEmbeddings,
    /// OpenAI legacy Completions (`/completions`).
    OpenAiCompletions,
    /// Anthropic Messages (`/v1/messages`).
    AnthropicMessages,
    /// Gemini `generateContent` / `streamGenerateContent` (Generative Language or Vertex AI).
    GeminiGenerate,
    /// Gemini `embedContent` / `batchEmbedContents`.
    GeminiEmbed,
    /// Ollama's native chat (`/api/chat`), NDJSON when streamed.
    OllamaChat,
    /// Ollama's native completion (`/api/generate`), NDJSON when streamed.
    OllamaGenerate,
    /// One response of an OpenAI Realtime session (`…/realtime`, WebSocket): the bodies the
    /// proxy built at its `response.done` (see `exchange::realtime`).
    OpenAiRealtime,
    /// Bedrock `Converse` / `ConverseStream` (`/model/{modelId}/converse[-stream]`).
    BedrockConverse,
    /// Bedrock `InvokeModel` / `InvokeModelWithResponseStream`
    /// (`/model/{modelId}/invoke[-with-response-stream]`): the model's native body, parsed as
    /// Anthropic Messages when it is one (`anthropic_version`), else metadata and usage only.
    BedrockInvoke,
}

/// What [`detect`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `gen_ai.provider.name`.
    pub provider: Provider,
    /// `gen_ai.operation.name`.
    pub operation: Operation,
    /// The dialect to parse.
    pub api: Api,
    /// The model named in the path (Gemini `models/{m}:…`, Azure deployments).
    pub path_model: Option<String>,
    /// The path asks for a stream (Gemini `streamGenerateContent`).
    pub path_stream: bool,
}

/// Names the provider, operation and dialect of an exchange from its method, host and path.
///
/// Path rules match on suffixes so that any prefix works: `/v1/chat/completions`,
/// `/openai/v1/…`, `/api/v1/…` (OpenRouter), `/openai/deployments/{d}/chat/completions`
/// (Azure). An OpenAI-shaped path on an unknown host (vLLM, Ollama, LiteLLM, …) is
/// `openai_compatible`. Returns `None` for anything else, which makes the exchange opaque.
pub fn detect(ex: &Exchange) -> Option<Target> {
    let (path, _query) = ex.path.split_once('?').unwrap_or((&ex.path, ""));
    let path = path.trim_end_matches('/');
    let host_provider = Provider::for_host(&ex.upstream.host);
    let target = |provider, operation, api| Target {
        provider,
        operation,
        api,
        path_model: None,
        path_stream: false,
    };
    // A Realtime response's exchange (made by the proxy at `response.done`); the session's
    // own exchange, and any other WebSocket, stay opaque.
    if ex.websocket.as_ref().is_some_and(|w| w.session.is_some()) && path.ends_with("/realtime") {
        return Some(target(
            host_provider.unwrap_or(Provider::OpenAiCompatible),
            Operation::Chat,
            Api::OpenAiRealtime,
        ));
    }
    if !ex.method.eq_ignore_ascii_case("POST") {
        return None;
    }

    // Bedrock Runtime: `/model/{modelId}/{action}`, the model ID percent-encoded (an ARN of
    // an inference profile may arrive with its `/` unencoded, hence the last `/`).
    if let Some(rest) = path.strip_prefix("/model/")
        && let Some((model, action)) = rest.rsplit_once('/')
    {
        let (api, stream) = match action {
            "converse" => (Api::BedrockConverse, false),
            "converse-stream" => (Api::BedrockConverse, true),
            "invoke" => (Api::BedrockInvoke, false),
            "invoke-with-response-stream" => (Api::BedrockInvoke, true),
            _ => return None,
        };
        let model = percent_encoding::percent_decode_str(model).decode_utf8_lossy();
        if model.is_empty() {
            return None;
        }
        return Some(Target {
            path_model: Some(model.into_owned()),
            path_stream: stream,
            ..target(
                host_provider.unwrap_or(Provider::AwsBedrock),
                Operation::Chat,
                api,
            )
        });
    }

    // Gemini: `/v1beta/models/{model}:{method}` (Vertex: `…/publishers/google/models/…`).
    if let Some((before, method)) = path.rsplit_once(':')
        && !method.contains('/')
        && let Some(idx) = before.rfind("/models/")
    {
        let model = &before[idx + "/models/".len()..];
        let (operation, api, stream) = match method {
            // Vertex AI's partner models: Anthropic Messages under
            // `…/publishers/anthropic/models/{model}:rawPredict` (streamed: `streamRawPredict`),
            // the model named by the path only.
            "rawPredict" | "streamRawPredict" if before.contains("/publishers/anthropic/") => (
                Operation::Chat,
                Api::AnthropicMessages,
                method == "streamRawPredict",
            ),
            "generateContent" => (Operation::GenerateContent, Api::GeminiGenerate, false),
            "streamGenerateContent" => (Operation::GenerateContent, Api::GeminiGenerate, true),
            "embedContent" | "batchEmbedContents" => {
                (Operation::Embeddings, Api::GeminiEmbed, false)
            }
            _ => return None,
        };
        if model.is_empty() || model.contains('/') {
            return None;
        }
        return Some(Target {
            path_model: Some(model.to_string()),
            path_stream: stream,
            ..target(host_provider.unwrap_or(Provider::GcpGemini), operation, api)
        });
    }

    // Ollama's native API (local models): `/api/chat`, `/api/generate`.
    if path.ends_with("/api/chat") || path.ends_with("/api/generate") {
        let (operation, api) = if path.ends_with("/api/chat") {
            (Operation::Chat, Api::OllamaChat)
        } else {
            (Operation::TextCompletion, Api::OllamaGenerate)
        };
        return Some(target(
            host_provider.unwrap_or(Provider::Ollama),
            operation,
            api,
        ));
    }

    if path.ends_with("/v1/messages") || path == "/messages" {
        return Some(target(
            host_provider.unwrap_or(Provider::AnthropicCompatible),
            Operation::Chat,
            Api::AnthropicMessages,
        ));
    }

    let (operation, api) = if path.ends_with("/chat/completions") {
        (Operation::Chat, Api::OpenAiChat)
    } else if path.ends_with("/responses") {
        (Operation::Chat, Api::OpenAiResponses)
    } else if path.ends_with("/embeddings") {
        (Operation::Embeddings, Api::OpenAiEmbeddings)
    } else if path.ends_with("/completions") {
        (Operation::TextCompletion, Api::OpenAiCompletions)
    } else {
        return None;
    };
    let mut t = target(
        host_provider.unwrap_or(Provider::OpenAiCompatible),
        operation,
        api,
    );
    // Azure: `/openai/deployments/{deployment}/…`; the deployment stands in for the model.
    if let Some(rest) = path.split("/openai/deployments/").nth(1) {
        t.path_model = rest.split('/').next().map(str::to_string);
    }
    Some(t)
}

/// Parses one exchange into the normalized model. Never fails and never panics: what is
/// not understood makes the conversation opaque (`operation` [`Operation::Unknown`], content
/// fields empty), with [`Conversation::parse_error`] saying why when a body failed to parse.
pub fn parse(ex: &Exchange, opts: &ParseOptions, pricing: &Pricing) -> Conversation {
    let mut c = base(ex);
    let target = detect(ex);
    if let Some(t) = &target {
        c.provider = t.provider;
    }
    // Decoded and parsed once, whatever the endpoint: the record step looks the user up in
    // it too (rules `[identity] json`), also where veil parses nothing else. A Chat
    // Completions or Messages request is read without the tree of its messages when it can
    // be (`openai::chat_request_direct`, `anthropic::request_direct`); `read` then says its
    // dialect parser has run.
    let direct = target.as_ref().map(|t| t.api).filter(|&api| {
        matches!(api, Api::OpenAiChat | Api::AnthropicMessages)
            && !ex.request_body.truncated
            && !unread_before_upstream_failed(ex)
    });
    let mut read = false;
    let request = decoded_request(ex, opts).and_then(|raw| {
        let rest = match direct {
            Some(Api::OpenAiChat) => openai::chat_request_direct(&raw, &mut c),
            Some(_) => anthropic::request_direct(&raw, &mut c),
            None => None,
        };
        if let Some(rest) = rest {
            read = true;
            c.request_messages_omitted = Some(raw);
            return Ok(rest);
        }
        json::from_slice(&raw).map_err(|e| not_json("request", &e))
    });
    let understood = match &target {
        // The upstream failed before veil read any of the request body (hyper sends it only
        // on a connection): nothing to parse, and "not JSON" would blame the app's body for
        // the upstream's failure. The endpoint still says what was asked.
        Some(t) if unread_before_upstream_failed(ex) => {
            c.operation = t.operation;
            c.request_model = t.path_model.clone();
            c.stream = t.path_stream;
            Ok(())
        }
        Some(t) => parse_bodies(ex, t, &request, read, opts, &mut c),
        None => Err("unrecognized endpoint".to_string()),
    };
    c.request_json = request.ok();
    if let Err(reason) = understood {
        // With a target every failure is about a body; without one nothing was meant to be
        // parsed, and `operation = unknown` says it all.
        if target.is_some() {
            c.parse_error = Some(reason);
        }
        make_opaque(&mut c);
    }
    finish(ex, pricing, &mut c);
    c
}

/// True when the upstream failed (no response) and veil read none of the request body.
fn unread_before_upstream_failed(ex: &Exchange) -> bool {
    matches!(ex.outcome, Outcome::UpstreamFailed { .. })
        && ex.status.is_none()
        && ex.request_body.wire_len == 0
        && ex.request_body.captured_len() == 0
}

/// The metadata that needs no body parsing. An upstream failure (no response) is the
/// `error_type` whatever the bodies hold (`connect`, `tls`, `timeout`, `protocol`), so an
/// exchange whose request body cannot be parsed still counts among the errors.
fn base(ex: &Exchange) -> Conversation {
    Conversation {
        provider: Provider::for_host(&ex.upstream.host).unwrap_or(Provider::Unknown),
        operation: Operation::Unknown,
        server_address: ex.upstream.host.clone(),
        server_port: ex.upstream.port,
        request_model: None,
        response_model: None,
        response_id: None,
        conversation_id: None,
        params: Default::default(),
        stream: false,
        system_instructions: Vec::new(),
        input_messages: Vec::new(),
        output_messages: Vec::new(),
        finish_reasons: Vec::new(),
        usage: Default::default(),
        tool_names: Vec::new(),
        cost_usd: None,
        user_id: None,
        feature: ex.tag("feature").map(str::to_string),
        trace_parent: ex
            .request_header("traceparent")
            .and_then(|tp| traceparent::parse(tp, ex.request_header("tracestate"))),
        timings: ConversationTimings::default(),
        status: ex.status,
        error_type: match &ex.outcome {
            Outcome::UpstreamFailed { kind, .. } if ex.status.is_none() => {
                Some(kind.as_str().to_string())
            }
            _ => None,
        },
        parse_error: None,
        aborted: ex.outcome.is_aborted(),
        truncated: ex.is_truncated(),
        request_bytes: ex.request_body.wire_len,
        response_bytes: ex.response_body.wire_len,
        request_json: None,
        request_messages_omitted: None,
    }
}

/// Drops everything parsed from content: an opaque record carries metadata only.
fn make_opaque(c: &mut Conversation) {
    c.operation = Operation::Unknown;
    c.request_model = None;
    c.response_model = None;
    c.response_id = None;
    c.conversation_id = None;
    c.params.clear();
    c.system_instructions.clear();
    c.input_messages.clear();
    c.output_messages.clear();
    c.usage = Default::default();
    c.tool_names.clear();
    c.user_id = None;
}

/// The request body decoded (bounded by `decode_limit`), or why not.
fn decoded_request(ex: &Exchange, opts: &ParseOptions) -> Result<Bytes, String> {
    ex.request_body
        .decoded(opts.decode_limit)
        .map_err(|e| format!("request body: {e}"))
}

/// `read`: the request's dialect parser already ran on it (`request` is then the tree
/// without the members it read directly).
fn parse_bodies(
    ex: &Exchange,
    t: &Target,
    request: &Result<Value, String>,
    read: bool,
    opts: &ParseOptions,
    c: &mut Conversation,
) -> Result<(), String> {
    if ex.request_body.truncated {
        return Err("request body truncated at the capture limit".into());
    }
    let req = request.as_ref().map_err(Clone::clone)?;
    if !req.is_object() {
        return Err("request body is not a JSON object".into());
    }
    c.operation = t.operation;
    // Bedrock's InvokeModel carries the model's own body: Anthropic Messages is parsed as
    // such (its stream arrives wrapped in event stream chunks), other formats are not.
    let invoke_anthropic;
    let t = if t.api == Api::BedrockInvoke && req.get("anthropic_version").is_some() {
        invoke_anthropic = Target {
            api: Api::AnthropicMessages,
            ..t.clone()
        };
        &invoke_anthropic
    } else {
        t
    };
    match t.api {
        _ if read => {}
        Api::OpenAiChat => openai::chat_request(req, c),
        Api::OpenAiCompletions => openai::completions_request(req, c),
        Api::OpenAiResponses => openai::responses_request(req, c),
        Api::OpenAiEmbeddings => openai::embeddings_request(req, c),
        Api::AnthropicMessages => anthropic::request(req, c),
        Api::GeminiGenerate => gemini::request(req, c),
        Api::GeminiEmbed => gemini::embed_request(req, c),
        Api::OllamaChat => ollama::chat_request(req, c),
        Api::OllamaGenerate => ollama::generate_request(req, c),
        Api::OpenAiRealtime => realtime::request(req, c),
        Api::BedrockConverse => bedrock::converse_request(req, c),
        Api::BedrockInvoke => bedrock::invoke_request(req, t.path_model.as_deref(), c),
    }
    if c.request_model.is_none() {
        c.request_model = t.path_model.clone();
    }
    c.stream |= t.path_stream;
    parse_response(ex, t, opts, c)
}

fn parse_response(
    ex: &Exchange,
    t: &Target,
    opts: &ParseOptions,
    c: &mut Conversation,
) -> Result<(), String> {
    // No response: an upstream failure is already the error type (`base`).
    let Some(status) = ex.status else {
        return Ok(());
    };
    let content_type = ex
        .response_header("content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    // Decoding without an encoding is the identity; keep the wire chunks then, so the
    // SSE parser sees them as they arrived (and nothing is copied).
    let chunks: Vec<Bytes> = if ex.response_body.content_encoding.is_none() {
        ex.response_body.chunks.clone()
    } else {
        match ex.response_body.decoded(opts.decode_limit) {
            Ok(b) => vec![b],
            Err(e) if status < 400 => return Err(format!("response body: {e}")),
            Err(_) => Vec::new(),
        }
    };
    if status >= 400 {
        let body = join(&chunks);
        let parsed: Option<Value> = json::from_slice(&body).ok();
        let kind = parsed
            .as_ref()
            .and_then(error_type)
            .or_else(|| aws_error_type(ex));
        c.error_type = Some(kind.unwrap_or_else(|| status.to_string()));
        return Ok(());
    }
    if matches!(t.api, Api::BedrockConverse | Api::BedrockInvoke)
        || (t.provider == Provider::AwsBedrock && t.api == Api::AnthropicMessages)
    {
        bedrock_response(ex, t, opts, c, &chunks, &content_type)?;
        bedrock::usage_from_headers(
            ex.response_header("x-amzn-bedrock-input-token-count"),
            ex.response_header("x-amzn-bedrock-output-token-count"),
            c,
        );
        if c.response_id.is_none() {
            c.response_id = ex.response_header("x-amzn-requestid").map(str::to_string);
        }
        return Ok(());
    }
    if matches!(t.api, Api::OllamaChat | Api::OllamaGenerate) {
        ollama::answer(&join(&chunks), c, ex.response_body.truncated);
        return Ok(());
    }
    let first = first_non_space(&chunks);
    let is_sse = content_type.contains("text/event-stream")
        || (!content_type.contains("json")
            && matches!(first, Some(b'd' | b'e' | b':' | b'i' | b'r')));
    if is_sse {
        c.stream = true;
        return parse_sse(&chunks, t, opts, c, ex.response_body.truncated);
    }
    let body = join(&chunks);
    if t.api == Api::GeminiGenerate && first == Some(b'[') {
        c.stream = true;
        // Parsed element by element, so lone surrogates are rewritten up front (the scan is
        // cheap and copies nothing when there is none).
        let body = json::repair_surrogates(&body);
        return gemini::json_array_stream(&body, c, ex.response_body.truncated);
    }
    if ex.response_body.truncated {
        return Err("response body truncated at the capture limit".into());
    }
    // The most common answer, read without a tree when it is what it should be; anything
    // else (or anything odd about it) goes the tree's way below.
    if matches!(t.api, Api::OpenAiChat | Api::OpenAiCompletions)
        && openai::chat_response_direct(&body, c)
    {
        return Ok(());
    }
    let resp: Value = match json::from_slice(&body) {
        Ok(v) => v,
        // An empty body (HEAD-like answers, 204) has nothing to parse.
        Err(_) if body.iter().all(u8::is_ascii_whitespace) => return Ok(()),
        Err(e) => return Err(not_json("response", &e)),
    };
    match t.api {
        Api::OpenAiChat | Api::OpenAiCompletions => openai::chat_response(&resp, c),
        Api::OpenAiResponses => openai::responses_response(&resp, c),
        Api::OpenAiEmbeddings => openai::embeddings_response(&resp, c),
        Api::AnthropicMessages => anthropic::response(&resp, c),
        Api::GeminiGenerate => gemini::response(&resp, c),
        Api::BedrockConverse => bedrock::converse_response(&resp, c),
        Api::OpenAiRealtime => realtime::response(&resp, c),
        Api::GeminiEmbed | Api::OllamaChat | Api::OllamaGenerate | Api::BedrockInvoke => {}
    }
    Ok(())
}

/// The error type of an AWS error answer without a JSON `error` object: the
/// `x-amzn-errortype` header (`ThrottlingException:http://internal.amazon.com/…`), its name
/// only.
fn aws_error_type(ex: &Exchange) -> Option<String> {
    let v = ex.response_header("x-amzn-errortype")?;
    let name = v.split(':').next().unwrap_or("").trim();
    (!name.is_empty()).then(|| name.to_string())
}

/// A Bedrock answer: an event stream when streamed (the content type says so), else JSON
/// (Converse, or a model's native body). Errors inside a stream are exception messages.
fn bedrock_response(
    ex: &Exchange,
    t: &Target,
    opts: &ParseOptions,
    c: &mut Conversation,
    chunks: &[Bytes],
    content_type: &str,
) -> Result<(), String> {
    if content_type.contains("application/vnd.amazon.eventstream") {
        c.stream = true;
        parse_eventstream(chunks, t, opts, c, ex.response_body.truncated);
        return Ok(());
    }
    if ex.response_body.truncated {
        return Err("response body truncated at the capture limit".into());
    }
    let body = join(chunks);
    let resp: Value = match json::from_slice(&body) {
        Ok(v) => v,
        Err(_) if body.iter().all(u8::is_ascii_whitespace) => return Ok(()),
        // A native body veil does not parse need not be JSON; usage is in the headers.
        Err(_) if t.api == Api::BedrockInvoke => return Ok(()),
        Err(e) => return Err(not_json("response", &e)),
    };
    match t.api {
        Api::BedrockConverse => bedrock::converse_response(&resp, c),
        Api::AnthropicMessages => anthropic::response(&resp, c),
        _ => {}
    }
    Ok(())
}

/// Folds a Bedrock event stream: `ConverseStream` events by their `:event-type`, or
/// `InvokeModelWithResponseStream` `chunk` events whose payload `{"bytes":"<base64>"}` is one
/// event of the model's own stream (Anthropic's are parsed; any model's last chunk carries
/// `amazon-bedrock-invocationMetrics`). An `exception` message names the error type; a
/// framing fault or a cut stream marks the conversation aborted with what was seen.
fn parse_eventstream(
    chunks: &[Bytes],
    t: &Target,
    opts: &ParseOptions,
    c: &mut Conversation,
    truncated: bool,
) {
    use super::eventstream::EventStreamDecoder;
    use base64::Engine as _;

    let mut acc = match t.api {
        Api::BedrockConverse => Stream::Converse(Default::default()),
        Api::AnthropicMessages => Stream::Anthropic(Default::default()),
        _ => Stream::Opaque,
    };
    let mut metrics = None;
    let mut unparsed = 0u64;
    let mut dec = EventStreamDecoder::new(opts.max_event);
    let mut failure = None;
    'chunks: for chunk in chunks {
        dec.push(chunk);
        loop {
            let msg = match dec.next_message() {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    break 'chunks;
                }
            };
            match msg.header_str(":message-type") {
                Some("exception" | "error") => {
                    let kind = msg
                        .header_str(":exception-type")
                        .or_else(|| msg.header_str(":error-code"))
                        .unwrap_or("_OTHER");
                    c.error_type.get_or_insert_with(|| kind.to_string());
                    continue;
                }
                Some("event") | None => {}
                Some(_) => continue,
            }
            let Ok(payload) = json::from_slice(&msg.payload) else {
                unparsed += 1;
                continue;
            };
            let event_type = msg.header_str(":event-type").unwrap_or("");
            if let Stream::Converse(s) = &mut acc {
                s.event(event_type, &payload);
                continue;
            }
            if event_type != "chunk" {
                continue;
            }
            let Some(inner) = payload
                .get("bytes")
                .and_then(Value::as_str)
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .and_then(|raw| json::from_slice(&raw).ok())
            else {
                unparsed += 1;
                continue;
            };
            if let Some(u) = bedrock::invocation_metrics(&inner) {
                metrics = Some(u);
            }
            if let Stream::Anthropic(_) = acc {
                on_json(&mut acc, &inner, c);
            }
        }
    }
    let failure = failure.or_else(|| dec.finish().err());
    if unparsed > 0 {
        c.parse_error = Some(format!("{unparsed} stream event(s) are not JSON"));
    }
    if let Some(e) = failure {
        c.aborted = true;
        if e != super::eventstream::EventStreamError::Aborted {
            c.parse_error = Some(e.to_string());
        }
    }
    if truncated {
        c.aborted = true;
    }
    match acc {
        Stream::Converse(s) => s.finish(c),
        Stream::Anthropic(s) => s.finish(c),
        _ => {}
    }
    if c.usage.input_tokens.is_none()
        && c.usage.output_tokens.is_none()
        && let Some(u) = metrics
    {
        c.usage = u;
    }
}

/// A dialect's stream accumulator.
enum Stream {
    Chat(openai::ChatStream),
    Responses(openai::ResponsesStream),
    Anthropic(anthropic::Stream),
    Gemini(gemini::Stream),
    /// Bedrock `ConverseStream`.
    Converse(bedrock::ConverseStream),
    /// A stream whose events veil does not fold (a Bedrock model's native stream).
    Opaque,
}

fn parse_sse(
    chunks: &[Bytes],
    t: &Target,
    opts: &ParseOptions,
    c: &mut Conversation,
    truncated: bool,
) -> Result<(), String> {
    let mut acc = match t.api {
        Api::OpenAiChat | Api::OpenAiCompletions => Stream::Chat(Default::default()),
        Api::OpenAiResponses => Stream::Responses(Default::default()),
        Api::AnthropicMessages => Stream::Anthropic(Default::default()),
        Api::GeminiGenerate => Stream::Gemini(Default::default()),
        Api::OpenAiEmbeddings
        | Api::OpenAiRealtime
        | Api::GeminiEmbed
        | Api::OllamaChat
        | Api::OllamaGenerate
        | Api::BedrockConverse
        | Api::BedrockInvoke => {
            return Err("unexpected event stream for this endpoint".into());
        }
    };
    let mut parser = SseParser::new(opts.max_event);
    let mut failure = None;
    let mut unparsed = 0u64;
    'chunks: for chunk in chunks {
        parser.push(chunk);
        loop {
            match parser.next_event() {
                Ok(Some(ev)) => on_event(&mut acc, &ev, c, &mut unparsed),
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    break 'chunks;
                }
            }
        }
    }
    if failure.is_none() {
        failure = parser.finish().err();
    }
    if unparsed > 0 {
        c.parse_error = Some(format!("{unparsed} stream event(s) are not JSON"));
    }
    match failure {
        Some(SseError::Aborted) => c.aborted = true,
        Some(e @ SseError::TooLarge(_)) => {
            c.aborted = true;
            c.parse_error = Some(e.to_string());
        }
        None => {}
    }
    if truncated {
        c.aborted = true;
    }
    match acc {
        Stream::Chat(s) => s.finish(c),
        Stream::Responses(s) => s.finish(c),
        Stream::Anthropic(s) => s.finish(c),
        Stream::Gemini(s) => s.finish(c),
        Stream::Converse(s) => s.finish(c),
        Stream::Opaque => {}
    }
    Ok(())
}

/// Folds one event into the accumulator. `unparsed` counts events that look like JSON (an
/// object or array) but do not parse: content or usage lost, so the record says so.
fn on_event(acc: &mut Stream, ev: &SseEvent, c: &mut Conversation, unparsed: &mut u64) {
    let data = ev.data.trim();
    if data == "[DONE]" || data.is_empty() {
        return;
    }
    let Ok(v) = json::from_str(data) else {
        // A non-JSON event (keep-alive text) carries nothing for the model.
        if data.starts_with(['{', '[']) {
            *unparsed += 1;
        }
        return;
    };
    on_json(acc, &v, c);
}

/// Folds one parsed stream event (an SSE event's data, or a Bedrock chunk) into the
/// accumulator, noting an error event's type.
fn on_json(acc: &mut Stream, v: &Value, c: &mut Conversation) {
    // Anthropic and OpenAI Chat put an `error` object in the event; the Responses API
    // sends `{"type":"error","code","message"}` itself.
    let err = match v.get("error").filter(|e| !e.is_null()) {
        Some(e) => Some(e.clone()),
        None if v.get("type").and_then(Value::as_str) == Some("error") => Some(v.clone()),
        None => None,
    };
    if let Some(err) = err {
        let kind = error_type(&serde_json::json!({ "error": err }));
        c.error_type = kind.or_else(|| Some("_OTHER".into()));
    }
    match acc {
        Stream::Chat(s) => s.event(v),
        Stream::Responses(s) => s.event(v),
        Stream::Anthropic(s) => s.event(v),
        Stream::Gemini(s) => s.event(v),
        Stream::Converse(_) | Stream::Opaque => {}
    }
}

/// Fills what depends on the parsed content: finish reasons, identity, cost, timings.
fn finish(ex: &Exchange, pricing: &Pricing, c: &mut Conversation) {
    c.finish_reasons = c
        .output_messages
        .iter()
        .map(|m| m.finish_reason.clone())
        .collect();
    if let Some(user) = ex.tag("user").filter(|u| !u.is_empty()) {
        c.user_id = Some(user.to_string());
    }
    if let Some(conv) = ex.tag("conversation").filter(|u| !u.is_empty()) {
        c.conversation_id = Some(conv.to_string());
    }
    if c.error_type.is_none()
        && let Some(status) = ex.status.filter(|s| *s >= 400)
    {
        c.error_type = Some(status.to_string());
    }
    let model = c.response_model.as_deref().or(c.request_model.as_deref());
    c.cost_usd = model.and_then(|m| pricing.cost(c.provider.as_str(), m, &c.usage));
    if c.cost_usd.is_none()
        && let Some(m) = c.request_model.as_deref()
    {
        // A fine-tune or deployment alias in the response, a list name in the request.
        c.cost_usd = pricing.cost(c.provider.as_str(), m, &c.usage);
    }
    if c.cost_usd.is_none()
        && c.provider == Provider::Ollama
        && (c.usage.input_tokens.is_some() || c.usage.output_tokens.is_some())
    {
        // A local model costs nothing per token unless the operator's table prices it.
        c.cost_usd = Some(0.0);
    }

    let t = &ex.timings;
    c.timings.duration = t.end;
    c.timings.time_to_first_chunk = t.first_byte;
}

// === shared helpers for the dialect modules ===

/// Longest parse error kept: serde_json's messages are a fixed phrase and a position.
const MAX_PARSE_ERROR: usize = 120;

/// `"{which} body is not JSON: {serde's fault and position}"`, capped. serde_json's message for
/// a document parsed into a `Value` names the kind of fault and the line and column only (no
/// content: there is no "invalid type" error when any value is acceptable).
fn not_json(which: &str, e: &serde_json::Error) -> String {
    let mut s = format!("{which} body is not JSON: {e}");
    if s.len() > MAX_PARSE_ERROR {
        s.truncate(s.floor_char_boundary(MAX_PARSE_ERROR));
    }
    s
}

fn join(chunks: &[Bytes]) -> Bytes {
    match chunks {
        [] => Bytes::new(),
        [one] => one.clone(),
        many => Bytes::from(many.concat()),
    }
}

fn first_non_space(chunks: &[Bytes]) -> Option<u8> {
    chunks
        .iter()
        .flat_map(|c| c.iter())
        .find(|b| !b.is_ascii_whitespace())
        .copied()
}

/// A provider error body's type (`error.type` of the record). Handles OpenAI
/// `{"error":{"type","code","message"}}`, Anthropic `{"type":"error","error":{"type",
/// "message"}}` and Gemini `{"error":{"code":429,"status","message"}}` (also wrapped in an
/// array): a string code when there is one, else the type, else the status. The message is
/// not kept: it may echo the request's content, and nothing downstream needs it.
fn error_type(v: &Value) -> Option<String> {
    let v = match v {
        Value::Array(items) => items.first().unwrap_or(&Value::Null),
        other => other,
    };
    let err = v.get("error").filter(|e| e.is_object())?;
    str_of(err, "code")
        .or_else(|| str_of(err, "type"))
        .or_else(|| str_of(err, "status"))
}

/// A non-empty string field.
fn str_of(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The first of two spellings (Gemini accepts both `camelCase` and `snake_case`).
fn get2<'a>(v: &'a Value, camel: &str, snake: &str) -> Option<&'a Value> {
    v.get(camel)
        .or_else(|| v.get(snake))
        .filter(|x| !x.is_null())
}

/// A non-negative integer field.
fn u64_of(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

/// Copies a numeric parameter under its `gen_ai.request.` suffix.
fn copy_number(c: &mut Conversation, from: &Value, key: &str, as_name: &str) {
    if let Some(n) = from.get(key).filter(|n| n.is_number()) {
        c.params.insert(as_name.to_string(), n.clone());
    }
}

/// `stop`: a string or an array of strings → `stop_sequences` (always an array).
fn copy_stop(c: &mut Conversation, from: &Value, key: &str) {
    let stops: Vec<Value> = match from.get(key) {
        Some(Value::String(s)) => vec![Value::String(s.clone())],
        Some(Value::Array(a)) => a.iter().filter(|s| s.is_string()).cloned().collect(),
        _ => return,
    };
    if !stops.is_empty() {
        c.params
            .insert("stop_sequences".to_string(), Value::Array(stops));
    }
}

/// Tool-call arguments: JSON when the provider's string parses, the raw string otherwise.
fn arguments(raw: &Value) -> Option<Value> {
    match raw {
        Value::Null => None,
        Value::String(s) if s.trim().is_empty() => None,
        Value::String(s) => Some(serde_json::from_str(s).unwrap_or_else(|_| raw.clone())),
        other => Some(other.clone()),
    }
}

/// A media reference from a URL: `data:` URLs become a blob *without* the bytes.
fn media_from_url(url: &str, modality: Option<Modality>) -> Part {
    if let Some(rest) = url.strip_prefix("data:") {
        let (meta, data) = rest.split_once(',').unwrap_or((rest, ""));
        let mime = meta.split(';').next().filter(|m| !m.is_empty());
        return Part::Blob {
            modality: mime.and_then(Modality::from_mime).or(modality),
            mime_type: mime.map(str::to_string),
            byte_len: Some(if meta.ends_with(";base64") {
                base64_len(data)
            } else {
                data.len() as u64
            }),
        };
    }
    Part::Uri {
        modality,
        uri: url.to_string(),
    }
}

/// Decoded size of base64 text, without decoding it.
fn base64_len(data: &str) -> u64 {
    let clean = data.trim_end_matches('=').len() as u64;
    clean * 3 / 4
}

/// Inline base64 media → blob reference.
fn blob(mime: Option<&str>, data: Option<&str>, fallback: Option<Modality>) -> Part {
    Part::Blob {
        modality: mime.and_then(Modality::from_mime).or(fallback),
        mime_type: mime.map(str::to_string),
        byte_len: data.map(base64_len),
    }
}

/// A tool result that may be a string or a list of blocks: the texts joined when every block
/// is text, else each block as the dialect's `part` reads it (media as type and size, never
/// their bytes: a tool may return a screenshot or a scanned document), serialized.
fn text_or_blocks(v: &Value, part: fn(&Value) -> Option<Part>) -> Value {
    match v {
        Value::Array(items) => {
            let texts: Vec<&str> = items
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect();
            if texts.len() == items.len() {
                Value::String(texts.join("\n"))
            } else {
                Value::Array(
                    items
                        .iter()
                        .filter_map(part)
                        .filter_map(|p| serde_json::to_value(p).ok())
                        .collect(),
                )
            }
        }
        other => other.clone(),
    }
}

/// Normalizes a finish reason to the GenAI values where one applies.
fn finish_reason(raw: &str) -> String {
    match raw {
        "stop" | "end_turn" | "stop_sequence" | "STOP" | "completed" => "stop".into(),
        "length" | "max_tokens" | "MAX_TOKENS" | "max_output_tokens" => "length".into(),
        "tool_calls" | "function_call" | "tool_use" => "tool_call".into(),
        "content_filter"
        | "refusal"
        | "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "guardrail_intervened"
        | "content_filtered"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY" => "content_filter".into(),
        "MALFORMED_FUNCTION_CALL" | "error" | "failed" => "error".into(),
        // Another provider value is kept when it is shaped like one (a short identifier);
        // anything else is upstream-controlled text that must not reach records or metric
        // labels unredacted.
        other
            if !other.is_empty()
                && other.len() <= 32
                && other
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
        {
            other.to_ascii_lowercase()
        }
        _ => "_OTHER".into(),
    }
}

/// The finish reason of a choice that never finished (a cut stream).
const UNFINISHED: &str = "unknown";
