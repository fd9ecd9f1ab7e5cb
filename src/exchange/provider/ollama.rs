//! Ollama's native API (`POST /api/chat`, `POST /api/generate`), streamed or not.
//!
//! Shapes from Ollama's API reference (`docs/api.md` in the ollama repository): a request
//! streams unless it says `"stream": false`; a streamed answer is NDJSON
//! (`application/x-ndjson`), one JSON object per line, each carrying a piece of
//! `message.content` (chat) or `response` (generate), the last one `"done": true` with
//! `done_reason`, `prompt_eval_count` (input tokens) and `eval_count` (output tokens). A
//! non-streamed answer is that last object with the whole text, so both are folded the same
//! way. Sampling settings sit under `options` (`num_predict` is the output token limit).

use serde_json::Value;

use super::{UNFINISHED, blob, copy_number, copy_stop, finish_reason, str_of, u64_of};
use crate::exchange::model::Usage;
use crate::exchange::model::{Conversation, InputMessage, OutputMessage, Part, Role};

/// A `/api/chat` request.
pub(super) fn chat_request(req: &Value, c: &mut Conversation) {
    common(req, c);
    for m in req
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mut parts = Vec::new();
        if let Some(t) = str_of(m, "content").filter(|t| !t.is_empty()) {
            parts.push(Part::text(t));
        }
        images(m, &mut parts);
        parts.extend(super::openai::tool_calls(m));
        match m.get("role").and_then(Value::as_str) {
            // As OpenAI chat's system messages: kept in place among the messages.
            Some("system") => c.input_messages.push(InputMessage {
                role: Role::System,
                parts,
                name: None,
            }),
            Some("assistant") => c.input_messages.push(InputMessage {
                role: Role::Assistant,
                parts,
                name: None,
            }),
            Some("tool") => c.input_messages.push(InputMessage {
                role: Role::Tool,
                parts: vec![Part::ToolCallResponse {
                    id: None,
                    response: m.get("content").cloned().unwrap_or(Value::Null),
                }],
                name: str_of(m, "tool_name"),
            }),
            _ => c.input_messages.push(InputMessage {
                role: Role::User,
                parts,
                name: None,
            }),
        }
    }
}

/// A `/api/generate` request: `prompt` (and its `images`) is the user's message, `system`
/// the system instructions.
pub(super) fn generate_request(req: &Value, c: &mut Conversation) {
    common(req, c);
    if let Some(s) = str_of(req, "system").filter(|s| !s.is_empty()) {
        c.system_instructions.push(Part::text(s));
    }
    let mut parts = Vec::new();
    if let Some(p) = str_of(req, "prompt") {
        parts.push(Part::text(p));
    }
    images(req, &mut parts);
    if !parts.is_empty() {
        c.input_messages.push(InputMessage {
            role: Role::User,
            parts,
            name: None,
        });
    }
}

fn common(req: &Value, c: &mut Conversation) {
    c.request_model = str_of(req, "model");
    c.stream = req.get("stream").and_then(Value::as_bool).unwrap_or(true);
    if let Some(o) = req.get("options").filter(|o| o.is_object()) {
        copy_number(c, o, "num_predict", "max_tokens");
        copy_number(c, o, "temperature", "temperature");
        copy_number(c, o, "top_p", "top_p");
        copy_number(c, o, "top_k", "top_k");
        copy_number(c, o, "seed", "seed");
        copy_stop(c, o, "stop");
    }
    for tool in req
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        c.tool_names
            .extend(tool.get("function").and_then(|f| str_of(f, "name")));
    }
}

/// `images`: base64 strings, recorded as blobs with their size only.
fn images(m: &Value, parts: &mut Vec<Part>) {
    for img in m
        .get("images")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        parts.push(blob(
            None,
            img.as_str(),
            Some(crate::exchange::model::Modality::Image),
        ));
    }
}

/// Folds an answer's NDJSON objects (one for a non-streamed answer) into the conversation.
#[derive(Default)]
pub(super) struct Fold {
    model: Option<String>,
    text: String,
    thinking: String,
    calls: Vec<Part>,
    done: Option<Value>,
    objects: usize,
    /// An `{"error": "..."}` object arrived (its text can quote the prompt: not kept).
    failed: bool,
}

impl Fold {
    /// One object of the answer.
    pub(super) fn object(&mut self, v: &Value) {
        self.objects += 1;
        if v.get("error").is_some() {
            self.failed = true;
            return;
        }
        if self.model.is_none() {
            self.model = str_of(v, "model");
        }
        // chat: `message`; generate: `response` and `thinking` at the top level.
        let m = v.get("message").unwrap_or(v);
        let piece = m
            .get("content")
            .or_else(|| v.get("response"))
            .and_then(Value::as_str);
        self.text.push_str(piece.unwrap_or(""));
        self.thinking
            .push_str(m.get("thinking").and_then(Value::as_str).unwrap_or(""));
        self.calls.extend(super::openai::tool_calls(m));
        if v.get("done").and_then(Value::as_bool) == Some(true) {
            self.done = Some(v.clone());
        }
    }

    /// The answer as the conversation's output, usage and finish reason. An answer without
    /// its `done` object (a cut stream) is marked aborted, its finish reason `unknown`.
    pub(super) fn finish(self, c: &mut Conversation) {
        if self.objects > 1 {
            c.stream = true;
        }
        c.response_model = self.model;
        if self.failed {
            // Ollama reports a failure inside a 200 stream as `{"error": "..."}`.
            c.error_type = Some("_OTHER".into());
        }
        let mut parts = Vec::new();
        if !self.thinking.is_empty() {
            parts.push(Part::Reasoning {
                content: self.thinking,
            });
        }
        if !self.text.is_empty() {
            parts.push(Part::text(self.text));
        }
        parts.extend(self.calls);
        let reason = match &self.done {
            Some(d) => {
                c.usage = Usage {
                    input_tokens: u64_of(d, "prompt_eval_count"),
                    output_tokens: u64_of(d, "eval_count"),
                    ..Usage::default()
                };
                str_of(d, "done_reason").map_or_else(|| "stop".to_string(), |r| finish_reason(&r))
            }
            None => {
                c.aborted = true;
                UNFINISHED.to_string()
            }
        };
        if parts.is_empty() && self.done.is_none() {
            return;
        }
        c.output_messages.push(OutputMessage {
            role: Role::Assistant,
            parts,
            finish_reason: reason,
        });
    }
}

/// Parses an answer body: NDJSON, or one JSON object. Lines that are not JSON are counted in
/// `parse_error`; a body cut at the capture limit loses its last (partial) line.
pub(super) fn answer(body: &[u8], c: &mut Conversation, truncated: bool) {
    let mut fold = Fold::default();
    let mut lines: Vec<&[u8]> = body
        .split(|&b| b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
        .collect();
    if truncated {
        lines.pop();
        c.parse_error = Some("response body truncated at the capture limit".into());
    }
    let mut unparsed = 0u64;
    for line in lines {
        match crate::exchange::json::from_slice(line) {
            Ok(v) if v.is_object() => fold.object(&v),
            _ => unparsed += 1,
        }
    }
    if unparsed > 0 && c.parse_error.is_none() {
        c.parse_error = Some(format!("{unparsed} stream line(s) are not JSON objects"));
    }
    fold.finish(c);
}
