//! Google Gemini: `generateContent`, `streamGenerateContent` (SSE with `alt=sse`, or a JSON
//! array without it), `embedContent` / `batchEmbedContents`; Generative Language API and
//! Vertex AI alike.
//!
//! The API accepts both `camelCase` and `snake_case` field names (proto3 JSON), so both are
//! read. Streamed chunks are merged per candidate (consecutive text pieces joined) into one
//! `GenerateContentResponse`, then parsed like a non-streamed one.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{UNFINISHED, arguments, blob, copy_number, finish_reason, get2, str_of, u64_of};
use crate::exchange::model::Usage;
use crate::exchange::model::{Conversation, InputMessage, OutputMessage, Part, Role};

/// A `generateContent` / `streamGenerateContent` request (model and stream come from the
/// path).
pub(super) fn request(req: &Value, c: &mut Conversation) {
    if let Some(cfg) = get2(req, "generationConfig", "generation_config") {
        for (camel, snake, name) in [
            ("temperature", "temperature", "temperature"),
            ("topP", "top_p", "top_p"),
            ("topK", "top_k", "top_k"),
            ("maxOutputTokens", "max_output_tokens", "max_tokens"),
            ("seed", "seed", "seed"),
            ("presencePenalty", "presence_penalty", "presence_penalty"),
            ("frequencyPenalty", "frequency_penalty", "frequency_penalty"),
        ] {
            copy_number(c, cfg, camel, name);
            copy_number(c, cfg, snake, name);
        }
        if let Some(Value::Array(stops)) = get2(cfg, "stopSequences", "stop_sequences") {
            c.params
                .insert("stop_sequences".into(), Value::Array(stops.clone()));
        }
        if let Some(n) = get2(cfg, "candidateCount", "candidate_count")
            .and_then(Value::as_u64)
            .filter(|n| *n != 1)
        {
            c.params.insert("choice.count".into(), n.into());
        }
    }
    for tool in req
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match get2(tool, "functionDeclarations", "function_declarations") {
            Some(Value::Array(decls)) => {
                c.tool_names
                    .extend(decls.iter().filter_map(|d| str_of(d, "name")));
            }
            // Built-in tools (`googleSearch`, `codeExecution`, …) are named by their key.
            _ => c
                .tool_names
                .extend(tool.as_object().into_iter().flat_map(|o| o.keys().cloned())),
        }
    }
    if let Some(sys) = get2(req, "systemInstruction", "system_instruction") {
        c.system_instructions = match sys {
            Value::String(s) => vec![Part::text(s.clone())],
            other => parts(other),
        };
    }
    for content in req
        .get("contents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        c.input_messages.push(InputMessage {
            role: role(content),
            parts: parts(content),
            name: None,
        });
    }
}

fn role(content: &Value) -> Role {
    match content.get("role").and_then(Value::as_str) {
        Some("model") => Role::Assistant,
        Some("function" | "tool") => Role::Tool,
        _ => Role::User,
    }
}

/// The `parts` of a `Content`.
fn parts(content: &Value) -> Vec<Part> {
    content
        .get("parts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(part)
        .collect()
}

fn part(p: &Value) -> Option<Part> {
    if let Some(text) = p.get("text").and_then(Value::as_str) {
        return Some(if p.get("thought").and_then(Value::as_bool) == Some(true) {
            Part::Reasoning {
                content: text.to_string(),
            }
        } else {
            Part::text(text)
        });
    }
    if let Some(d) = get2(p, "inlineData", "inline_data") {
        let mime = get2(d, "mimeType", "mime_type").and_then(Value::as_str);
        return Some(blob(mime, d.get("data").and_then(Value::as_str), None));
    }
    if let Some(f) = get2(p, "fileData", "file_data") {
        let mime = get2(f, "mimeType", "mime_type").and_then(Value::as_str);
        let uri = get2(f, "fileUri", "file_uri").and_then(Value::as_str)?;
        return Some(Part::Uri {
            modality: mime.and_then(crate::exchange::model::Modality::from_mime),
            uri: uri.to_string(),
        });
    }
    if let Some(f) = get2(p, "functionCall", "function_call") {
        return Some(Part::ToolCall {
            id: str_of(f, "id"),
            name: str_of(f, "name").unwrap_or_default(),
            arguments: f.get("args").and_then(arguments),
        });
    }
    if let Some(f) = get2(p, "functionResponse", "function_response") {
        return Some(Part::ToolCallResponse {
            id: str_of(f, "id"),
            response: f.get("response").cloned().unwrap_or(Value::Null),
        });
    }
    let kind = p.as_object()?.keys().find(|k| {
        !matches!(
            k.as_str(),
            "thought" | "thoughtSignature" | "thought_signature"
        )
    })?;
    Some(Part::Other { kind: kind.clone() })
}

fn usage(u: &Value) -> Usage {
    let candidates =
        get2(u, "candidatesTokenCount", "candidates_token_count").and_then(Value::as_u64);
    let thoughts = get2(u, "thoughtsTokenCount", "thoughts_token_count").and_then(Value::as_u64);
    Usage {
        input_tokens: get2(u, "promptTokenCount", "prompt_token_count").and_then(Value::as_u64),
        // Gemini counts thinking apart from the candidates; GenAI output includes reasoning.
        output_tokens: match (candidates, thoughts) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
        },
        cache_read_tokens: get2(u, "cachedContentTokenCount", "cached_content_token_count")
            .and_then(Value::as_u64),
        cache_creation_tokens: None,
        reasoning_tokens: thoughts,
        ..Usage::default()
    }
}

/// A `GenerateContentResponse`.
pub(super) fn response(resp: &Value, c: &mut Conversation) {
    c.response_id = get2(resp, "responseId", "response_id")
        .and_then(Value::as_str)
        .map(str::to_string);
    c.response_model = get2(resp, "modelVersion", "model_version")
        .and_then(Value::as_str)
        .map(str::to_string);
    if let Some(u) = get2(resp, "usageMetadata", "usage_metadata") {
        c.usage = usage(u);
    }
    let mut candidates: Vec<&Value> = resp
        .get("candidates")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    candidates.sort_by_key(|cand| u64_of(cand, "index").unwrap_or(0));
    for cand in candidates {
        let parts = cand.get("content").map(parts).unwrap_or_default();
        let raw = get2(cand, "finishReason", "finish_reason").and_then(Value::as_str);
        // Gemini says STOP after a function call; GenAI says tool_call.
        let called = parts.iter().any(|p| matches!(p, Part::ToolCall { .. }));
        let reason = match raw {
            Some("STOP") if called => "tool_call".to_string(),
            Some(r) => finish_reason(r),
            None => UNFINISHED.to_string(),
        };
        c.output_messages.push(OutputMessage {
            role: Role::Assistant,
            parts,
            finish_reason: reason,
        });
    }
    if c.output_messages.is_empty()
        && let Some(block) = get2(resp, "promptFeedback", "prompt_feedback")
            .and_then(|f| get2(f, "blockReason", "block_reason"))
            .and_then(Value::as_str)
    {
        // The prompt itself was blocked: no candidate, but the reason matters.
        c.error_type = Some(block.to_string());
    }
}

#[derive(Default)]
struct Candidate {
    parts: Vec<Value>,
    finish: Option<Value>,
}

/// Merges streamed `GenerateContentResponse` chunks.
#[derive(Default)]
pub(super) struct Stream {
    id: Option<Value>,
    model: Option<Value>,
    usage: Option<Value>,
    feedback: Option<Value>,
    candidates: BTreeMap<u64, Candidate>,
}

impl Stream {
    pub(super) fn event(&mut self, v: &Value) {
        if let Some(id) = get2(v, "responseId", "response_id") {
            self.id.get_or_insert_with(|| id.clone());
        }
        if let Some(m) = get2(v, "modelVersion", "model_version") {
            self.model.get_or_insert_with(|| m.clone());
        }
        if let Some(u) = get2(v, "usageMetadata", "usage_metadata") {
            self.usage = Some(u.clone());
        }
        if let Some(f) = get2(v, "promptFeedback", "prompt_feedback") {
            self.feedback = Some(f.clone());
        }
        for cand in v
            .get("candidates")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let acc = self
                .candidates
                .entry(u64_of(cand, "index").unwrap_or(0))
                .or_default();
            if let Some(r) = get2(cand, "finishReason", "finish_reason") {
                acc.finish = Some(r.clone());
            }
            let new_parts = cand
                .get("content")
                .and_then(|c| c.get("parts"))
                .and_then(Value::as_array);
            for p in new_parts.into_iter().flatten() {
                append_part(&mut acc.parts, p);
            }
        }
    }

    pub(super) fn finish(self, c: &mut Conversation) {
        let candidates: Vec<Value> = self
            .candidates
            .into_iter()
            .map(|(index, cand)| {
                json!({"index": index, "content": {"role": "model", "parts": cand.parts},
                       "finishReason": cand.finish})
            })
            .collect();
        let resp = json!({"candidates": candidates, "usageMetadata": self.usage,
                          "modelVersion": self.model, "responseId": self.id,
                          "promptFeedback": self.feedback});
        response(&resp, c);
    }
}

/// Appends a streamed part, joining text onto the previous part when both are text of the
/// same kind (answer or thought): the stream splits one part into many.
fn append_part(parts: &mut Vec<Value>, p: &Value) {
    let is_thought = |v: &Value| v.get("thought").and_then(Value::as_bool) == Some(true);
    if let (Some(text), Some(last)) = (p.get("text").and_then(Value::as_str), parts.last_mut())
        && is_thought(last) == is_thought(p)
        && let Some(prev) = last.get("text").and_then(Value::as_str)
    {
        let joined = format!("{prev}{text}");
        last["text"] = joined.into();
        return;
    }
    parts.push(p.clone());
}

/// `streamGenerateContent` without `alt=sse`: one JSON array, elements arriving over time.
/// Parsed element by element so that a cut stream keeps the elements before the cut.
pub(super) fn json_array_stream(
    body: &[u8],
    c: &mut Conversation,
    truncated: bool,
) -> Result<(), String> {
    let mut s = Stream::default();
    let mut rest = body;
    let skip = |r: &mut &[u8]| {
        while let Some((b, tail)) = r.split_first() {
            if b.is_ascii_whitespace() || *b == b',' {
                *r = tail;
            } else {
                break;
            }
        }
    };
    skip(&mut rest);
    rest = rest.strip_prefix(b"[").unwrap_or(rest);
    let mut complete = false;
    loop {
        skip(&mut rest);
        if rest.is_empty() {
            break;
        }
        if rest[0] == b']' {
            complete = true;
            break;
        }
        let mut it = serde_json::Deserializer::from_slice(rest).into_iter::<Value>();
        match it.next() {
            Some(Ok(v)) => {
                if let Some(err) = v.get("error").filter(|e| e.is_object()) {
                    c.error_type = str_of(err, "status").or_else(|| Some("_OTHER".into()));
                }
                s.event(&v);
                rest = &rest[it.byte_offset()..];
            }
            _ => break, // cut mid-element (or garbage): keep what was seen
        }
    }
    if !complete || truncated {
        c.aborted = true;
    }
    s.finish(c);
    Ok(())
}

/// An `embedContent` / `batchEmbedContents` request: the texts become one user message.
pub(super) fn embed_request(req: &Value, c: &mut Conversation) {
    let mut texts = Vec::new();
    let contents: Vec<&Value> = match req.get("requests").and_then(Value::as_array) {
        Some(reqs) => reqs.iter().filter_map(|r| r.get("content")).collect(),
        None => req.get("content").into_iter().collect(),
    };
    for content in contents {
        texts.extend(parts(content));
    }
    if !texts.is_empty() {
        c.input_messages.push(InputMessage {
            role: Role::User,
            parts: texts,
            name: None,
        });
    }
    if let Some(d) =
        get2(req, "outputDimensionality", "output_dimensionality").and_then(Value::as_u64)
    {
        c.params
            .insert("embeddings.dimension.count".into(), d.into());
    }
}
