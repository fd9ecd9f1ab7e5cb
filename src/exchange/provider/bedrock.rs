//! Amazon Bedrock Runtime: `Converse` and `ConverseStream` (Bedrock's own message format),
//! and the usage of `InvokeModel` / `InvokeModelWithResponseStream` for models whose native
//! body veil does not parse (Anthropic's is parsed by `anthropic`).
//!
//! Shapes from the Bedrock API reference ("Converse", "ConverseStream", "ContentBlock",
//! "TokenUsage", "InvokeModel"). A Converse content block is an object with one member naming
//! its kind (`text`, `image`, `document`, `video`, `toolUse`, `toolResult`,
//! `reasoningContent`, `guardContent`, `cachePoint`). The stream's events arrive in AWS event
//! stream messages (see [`eventstream`](crate::exchange::eventstream)) named by their
//! `:event-type` header (`messageStart`, `contentBlockStart`, `contentBlockDelta`,
//! `contentBlockStop`, `messageStop`, `metadata`); they are folded back into a `Converse`
//! response and parsed by the same function, like every other dialect's stream.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{
    UNFINISHED, arguments, base64_len, copy_number, copy_stop, finish_reason, str_of, u64_of,
};
use crate::exchange::model::{
    Conversation, InputMessage, Modality, OutputMessage, Part, Role, Usage,
};
use crate::exchange::operation::Operation;

/// A `Converse` / `ConverseStream` request (the model is the path's).
pub(super) fn converse_request(req: &Value, c: &mut Conversation) {
    if let Some(cfg) = req.get("inferenceConfig") {
        copy_number(c, cfg, "maxTokens", "max_tokens");
        copy_number(c, cfg, "temperature", "temperature");
        copy_number(c, cfg, "topP", "top_p");
        copy_stop(c, cfg, "stopSequences");
    }
    for tool in req
        .get("toolConfig")
        .and_then(|t| t.get("tools"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        c.tool_names
            .extend(tool.get("toolSpec").and_then(|s| str_of(s, "name")));
    }
    c.system_instructions = blocks(req.get("system"));
    for m in req
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let role = match m.get("role").and_then(Value::as_str) {
            Some("assistant") => Role::Assistant,
            _ => Role::User,
        };
        c.input_messages.push(InputMessage {
            role,
            parts: blocks(m.get("content")),
            name: None,
        });
    }
}

fn blocks(content: Option<&Value>) -> Vec<Part> {
    content
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(block)
        .collect()
}

/// Inline bytes (base64 in JSON) or an S3 location → a blob without the bytes, or a URI.
fn media(m: &Value, modality: Option<Modality>, top: &str) -> Part {
    let format = str_of(m, "format");
    let src = m.get("source").unwrap_or(&Value::Null);
    if let Some(uri) = src.get("s3Location").and_then(|s| str_of(s, "uri")) {
        return Part::Uri { modality, uri };
    }
    Part::Blob {
        modality,
        mime_type: format.map(|f| format!("{top}/{f}")),
        byte_len: src.get("bytes").and_then(Value::as_str).map(base64_len),
    }
}

fn block(b: &Value) -> Option<Part> {
    let (kind, v) = b.as_object()?.iter().next()?;
    Some(match kind.as_str() {
        "text" => Part::text(v.as_str().unwrap_or_default().to_string()),
        "image" => media(v, Some(Modality::Image), "image"),
        "video" => media(v, Some(Modality::Video), "video"),
        "document" => {
            let src = v.get("source").unwrap_or(&Value::Null);
            // A text document is content: keep it so redaction sees it.
            match str_of(src, "text") {
                Some(text) => Part::text(text),
                None => media(v, None, "application"),
            }
        }
        "toolUse" => Part::ToolCall {
            id: str_of(v, "toolUseId"),
            name: str_of(v, "name").unwrap_or_default(),
            arguments: v.get("input").and_then(arguments),
        },
        "toolResult" => Part::ToolCallResponse {
            id: str_of(v, "toolUseId"),
            response: tool_result(v.get("content")),
        },
        "reasoningContent" => Part::Reasoning {
            // `redactedContent` is encrypted by the provider: present, nothing readable.
            content: v
                .get("reasoningText")
                .and_then(|r| str_of(r, "text"))
                .unwrap_or_default(),
        },
        "guardContent" => Part::text(
            v.get("text")
                .and_then(|t| str_of(t, "text"))
                .unwrap_or_default(),
        ),
        "cachePoint" => return None,
        other => Part::Other {
            kind: other.to_string(),
        },
    })
}

/// A tool result's content: its text blocks joined when that is all it has, else the
/// blocks as parts (`json` blocks as their value; images and documents as type and size,
/// never their bytes).
fn tool_result(content: Option<&Value>) -> Value {
    let Some(Value::Array(items)) = content else {
        return Value::Null;
    };
    let texts: Vec<&str> = items
        .iter()
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect();
    if texts.len() == items.len() {
        return Value::String(texts.join("\n"));
    }
    Value::Array(
        items
            .iter()
            .filter_map(|b| match b.get("json") {
                Some(json) => Some(json.clone()),
                None => block(b).and_then(|p| serde_json::to_value(p).ok()),
            })
            .collect(),
    )
}

/// Bedrock `TokenUsage`: `inputTokens` excludes cache reads and writes (`totalTokens` is the
/// sum of all four), the GenAI convention includes them, so they are added.
fn usage(u: &Value) -> Usage {
    let read = u64_of(u, "cacheReadInputTokens");
    let write = u64_of(u, "cacheWriteInputTokens");
    Usage {
        input_tokens: u64_of(u, "inputTokens").map(|i| {
            i.saturating_add(read.unwrap_or(0))
                .saturating_add(write.unwrap_or(0))
        }),
        output_tokens: u64_of(u, "outputTokens"),
        cache_read_tokens: read,
        cache_creation_tokens: write,
        reasoning_tokens: None,
        ..Usage::default()
    }
}

/// A `Converse` response: `{"output":{"message":{…}},"stopReason","usage","metrics"}`.
pub(super) fn converse_response(resp: &Value, c: &mut Conversation) {
    if let Some(u) = resp.get("usage").filter(|u| u.is_object()) {
        c.usage = usage(u);
    }
    let message = resp.get("output").and_then(|o| o.get("message"));
    let parts = blocks(message.and_then(|m| m.get("content")));
    let reason = resp.get("stopReason").and_then(Value::as_str);
    if parts.is_empty() && reason.is_none() {
        return;
    }
    c.output_messages.push(OutputMessage {
        role: Role::Assistant,
        parts,
        finish_reason: reason.map_or_else(|| UNFINISHED.to_string(), finish_reason),
    });
}

#[derive(Default)]
struct Block {
    /// `contentBlockStart.start` (a `toolUse` with its id and name), if any.
    start: Option<Value>,
    text: String,
    tool_input: String,
    reasoning: String,
}

/// Accumulates `ConverseStream` events into a `Converse` response.
#[derive(Default)]
pub(super) struct ConverseStream {
    blocks: BTreeMap<u64, Block>,
    stop_reason: Option<String>,
    usage: Option<Value>,
}

impl ConverseStream {
    /// One event: its `:event-type` and its JSON payload (the event's members; a payload
    /// wrapped in an object named by the event type is unwrapped too).
    pub(super) fn event(&mut self, kind: &str, v: &Value) {
        let v = v.get(kind).filter(|inner| inner.is_object()).unwrap_or(v);
        let idx = u64_of(v, "contentBlockIndex").unwrap_or(0);
        match kind {
            "contentBlockStart" => {
                self.blocks.entry(idx).or_default().start = v.get("start").cloned();
            }
            "contentBlockDelta" => {
                let d = v.get("delta").unwrap_or(&Value::Null);
                let b = self.blocks.entry(idx).or_default();
                if let Some(t) = d.get("text").and_then(Value::as_str) {
                    b.text.push_str(t);
                }
                if let Some(t) = d
                    .get("toolUse")
                    .and_then(|t| t.get("input"))
                    .and_then(Value::as_str)
                {
                    b.tool_input.push_str(t);
                }
                if let Some(t) = d
                    .get("reasoningContent")
                    .and_then(|r| r.get("text"))
                    .and_then(Value::as_str)
                {
                    b.reasoning.push_str(t);
                }
            }
            "messageStop" => self.stop_reason = str_of(v, "stopReason"),
            "metadata" => {
                if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
                    self.usage = Some(u.clone());
                }
            }
            _ => {} // messageStart (always the assistant), contentBlockStop
        }
    }

    pub(super) fn finish(self, c: &mut Conversation) {
        let content: Vec<Value> = self
            .blocks
            .into_values()
            .flat_map(|b| {
                let mut out = Vec::new();
                // `toolUse` is an object in a well-formed stream; anything else is not indexed
                // (assigning a member of a number or a string panics).
                if let Some(tool) = b
                    .start
                    .as_ref()
                    .and_then(|s| s.get("toolUse"))
                    .filter(|t| t.is_object())
                {
                    let mut tool = tool.clone();
                    if !b.tool_input.is_empty() {
                        tool["input"] = serde_json::from_str(&b.tool_input)
                            .unwrap_or(Value::String(b.tool_input));
                    }
                    out.push(json!({ "toolUse": tool }));
                }
                if !b.reasoning.is_empty() {
                    out.push(json!({"reasoningContent": {"reasoningText": {"text": b.reasoning}}}));
                }
                if !b.text.is_empty() {
                    out.push(json!({ "text": b.text }));
                }
                out
            })
            .collect();
        let mut resp = Map::new();
        resp.insert(
            "output".into(),
            json!({"message": {"role": "assistant", "content": content}}),
        );
        resp.insert("stopReason".into(), self.stop_reason.into());
        if let Some(u) = self.usage {
            resp.insert("usage".into(), u);
        }
        converse_response(&Value::Object(resp), c);
    }
}

/// An `InvokeModel` request whose body is a model's native format veil does not parse
/// (Amazon Titan and Nova, Meta Llama, Mistral, Cohere, …): only the operation is read off
/// its shape; content is not recorded, because veil cannot tell it from parameters.
pub(super) fn invoke_request(req: &Value, model: Option<&str>, c: &mut Conversation) {
    let embed = model.is_some_and(|m| m.contains("embed"));
    c.operation = if embed {
        Operation::Embeddings
    } else if req.get("messages").is_some() {
        Operation::Chat
    } else {
        Operation::TextCompletion
    };
}

/// Usage from `InvokeModel`'s response headers (`X-Amzn-Bedrock-Input-Token-Count`,
/// `X-Amzn-Bedrock-Output-Token-Count`), when the body gave none.
pub(super) fn usage_from_headers(input: Option<&str>, output: Option<&str>, c: &mut Conversation) {
    let parse = |v: Option<&str>| v.and_then(|s| s.trim().parse::<u64>().ok());
    if c.usage.input_tokens.is_none() && c.usage.output_tokens.is_none() {
        c.usage.input_tokens = parse(input);
        c.usage.output_tokens = parse(output);
    }
}

/// The `amazon-bedrock-invocationMetrics` object Bedrock adds to the last chunk of an
/// `InvokeModelWithResponseStream` (`inputTokenCount`, `outputTokenCount`, ...), as usage.
pub(super) fn invocation_metrics(chunk: &Value) -> Option<Usage> {
    let m = chunk.get("amazon-bedrock-invocationMetrics")?;
    let usage = Usage {
        input_tokens: u64_of(m, "inputTokenCount"),
        output_tokens: u64_of(m, "outputTokenCount"),
        cache_read_tokens: u64_of(m, "cacheReadInputTokenCount"),
        cache_creation_tokens: u64_of(m, "cacheWriteInputTokenCount"),
        reasoning_tokens: None,
        ..Usage::default()
    };
    (usage.input_tokens.is_some() || usage.output_tokens.is_some()).then_some(usage)
}
