//! Anthropic Messages API (`POST /v1/messages`), JSON and streamed.
//!
//! The stream (`message_start`, `content_block_start/delta/stop`, `message_delta`,
//! `message_stop`) is folded back into a `message` object, tool inputs rebuilt from their
//! `input_json_delta` fragments, and parsed like a non-streamed response.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::direct::{self, Text};
use super::{
    UNFINISHED, arguments, blob, copy_number, copy_stop, finish_reason, media_from_url, str_of,
    text_or_blocks, u64_of,
};
use crate::exchange::model::Usage;
use crate::exchange::model::{Conversation, InputMessage, Modality, OutputMessage, Part, Role};

/// A Messages request.
pub(super) fn request(req: &Value, c: &mut Conversation) {
    request_head(req, c);
    for m in req
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        c.input_messages.push(InputMessage {
            role: role(m.get("role").and_then(Value::as_str)),
            parts: blocks(m.get("content")),
            name: None,
        });
    }
}

/// Everything of a Messages request but its `messages`: model, parameters, the user in
/// `metadata`, tool names and the system prompt.
fn request_head(req: &Value, c: &mut Conversation) {
    c.request_model = str_of(req, "model");
    copy_number(c, req, "max_tokens", "max_tokens");
    copy_number(c, req, "temperature", "temperature");
    copy_number(c, req, "top_p", "top_p");
    copy_number(c, req, "top_k", "top_k");
    copy_stop(c, req, "stop_sequences");
    c.stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    c.user_id = req.get("metadata").and_then(|m| str_of(m, "user_id"));
    for tool in req
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        c.tool_names
            .extend(str_of(tool, "name").or_else(|| str_of(tool, "type")));
    }
    c.system_instructions = blocks(req.get("system"));
}

/// A message's role: `assistant`, else the user (Messages has no other).
fn role(r: Option<&str>) -> Role {
    match r {
        Some("assistant") => Role::Assistant,
        _ => Role::User,
    }
}

/// A Messages request read from the text (`super::direct`, veil#18): each message's blocks
/// read as they are parsed, their text borrowed from the body, every other member of the
/// request kept as a tree and read by [`request_head`]. `None`, and `c` untouched, when the
/// body is not an object whose `messages`, messages and blocks have the types this reads (or
/// is not JSON at all): the caller then parses the tree, which decides. When `Some`, `c` holds
/// what [`request`] of the body's tree would have put there, and the value is that tree
/// without its `messages` member.
pub(super) fn request_direct(body: &[u8], c: &mut Conversation) -> Option<Value> {
    let request =
        crate::exchange::json::parse_text::<direct::Request<RequestMessage>>(body).ok()?;
    let rest = Value::Object(request.rest);
    request_head(&rest, c);
    for m in request.messages.into_iter().flatten() {
        let parts = match m.content {
            Some(direct::TextOr::Text(s)) => vec![Part::text(s.into_owned())],
            Some(direct::TextOr::List(blocks)) => blocks
                .into_iter()
                .filter_map(RequestBlock::into_part)
                .collect(),
            Some(direct::TextOr::Tree(_)) | None => Vec::new(),
        };
        c.input_messages.push(InputMessage {
            role: role(m.role.get()),
            parts,
            name: None,
        });
    }
    Some(rest)
}

/// Content that is a string or a list of blocks.
fn blocks(content: Option<&Value>) -> Vec<Part> {
    match content {
        Some(Value::String(s)) => vec![Part::text(s.clone())],
        Some(Value::Array(items)) => items.iter().filter_map(block).collect(),
        _ => Vec::new(),
    }
}

/// A content block of a tree.
fn block(b: &Value) -> Option<Part> {
    let text = |key: &str| b.get(key).and_then(Value::as_str);
    block_part(BlockView {
        kind: text("type"),
        text: text("text"),
        thinking: text("thinking"),
        id: text("id"),
        name: text("name"),
        tool_use_id: text("tool_use_id"),
        source: b.get("source"),
        input: b.get("input"),
        content: b.get("content").map(Cow::Borrowed),
    })
}

/// What [`block_part`] reads of one content block, from either reading (the tree, or
/// [`RequestBlock`] read from the text).
struct BlockView<'a> {
    kind: Option<&'a str>,
    text: Option<&'a str>,
    thinking: Option<&'a str>,
    id: Option<&'a str>,
    name: Option<&'a str>,
    tool_use_id: Option<&'a str>,
    source: Option<&'a Value>,
    input: Option<&'a Value>,
    content: Option<Cow<'a, Value>>,
}

/// The part of a content block; `None` for a block without a `type`.
fn block_part(b: BlockView) -> Option<Part> {
    let nonempty = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_string);
    let kind = b.kind?;
    Some(match kind {
        "text" => Part::text(b.text.unwrap_or_default().to_string()),
        "image" | "document" => {
            let fallback = (kind == "image").then_some(Modality::Image);
            let src = b.source.unwrap_or(&Value::Null);
            match src.get("type").and_then(Value::as_str) {
                Some("base64") => blob(
                    src.get("media_type").and_then(Value::as_str),
                    src.get("data").and_then(Value::as_str),
                    fallback,
                ),
                Some("url") => media_from_url(&str_of(src, "url")?, fallback),
                Some("file") => Part::File {
                    modality: fallback,
                    file_id: str_of(src, "file_id")?,
                },
                // Plain-text documents are content: keep them so redaction sees them.
                Some("text") => Part::text(str_of(src, "data").unwrap_or_default()),
                _ => Part::Other {
                    kind: kind.to_string(),
                },
            }
        }
        "tool_use" => Part::ToolCall {
            id: nonempty(b.id),
            name: nonempty(b.name).unwrap_or_default(),
            arguments: b.input.and_then(arguments),
        },
        "tool_result" => Part::ToolCallResponse {
            id: nonempty(b.tool_use_id),
            response: match b.content {
                None => Value::Null,
                // A string result is the response itself: moved, not copied.
                Some(Cow::Owned(v @ Value::String(_))) => v,
                Some(v) => text_or_blocks(&v, block),
            },
        },
        "thinking" => Part::Reasoning {
            content: b.thinking.unwrap_or_default().to_string(),
        },
        // Encrypted by Anthropic: present, but nothing readable.
        "redacted_thinking" => Part::Reasoning {
            content: String::new(),
        },
        other => Part::Other {
            kind: other.to_string(),
        },
    })
}

// A Messages request's messages as `request` reads them, from the text
// (`super::direct::Request`): message by message and block by block.

#[derive(Default)]
struct RequestMessage<'de> {
    role: Text<'de>,
    /// `null` reads as absent: neither makes a part.
    content: Option<direct::TextOr<'de, RequestBlock<'de>>>,
}

direct::object!(RequestMessage, "a message", [role, content]);

#[derive(Default)]
struct RequestBlock<'de> {
    kind: Text<'de>,
    text: Text<'de>,
    thinking: Text<'de>,
    id: Text<'de>,
    name: Text<'de>,
    tool_use_id: Text<'de>,
    source: Option<Value>,
    input: Option<Value>,
    content: Option<Value>,
}

direct::object!(RequestBlock, "a content block", |out, key, map| {
    match key {
        "type" => out.kind = map.next_value()?,
        "text" => out.text = map.next_value()?,
        "thinking" => out.thinking = map.next_value()?,
        "id" => out.id = map.next_value()?,
        "name" => out.name = map.next_value()?,
        "tool_use_id" => out.tool_use_id = map.next_value()?,
        "source" => out.source = map.next_value()?,
        "input" => out.input = map.next_value()?,
        "content" => out.content = map.next_value()?,
        _ => return Ok(false),
    }
    Ok(true)
});

impl RequestBlock<'_> {
    /// What [`block`] makes of the same block's tree.
    fn into_part(self) -> Option<Part> {
        block_part(BlockView {
            kind: self.kind.get(),
            text: self.text.get(),
            thinking: self.thinking.get(),
            id: self.id.get(),
            name: self.name.get(),
            tool_use_id: self.tool_use_id.get(),
            source: self.source.as_ref(),
            input: self.input.as_ref(),
            content: self.content.map(Cow::Owned),
        })
    }
}

/// Anthropic usage: `input_tokens` excludes cache reads and writes, the GenAI
/// convention includes them, so they are summed.
fn usage(u: &Value) -> Usage {
    let read = u64_of(u, "cache_read_input_tokens");
    let write = u64_of(u, "cache_creation_input_tokens");
    Usage {
        input_tokens: u64_of(u, "input_tokens").map(|i| {
            i.saturating_add(read.unwrap_or(0))
                .saturating_add(write.unwrap_or(0))
        }),
        output_tokens: u64_of(u, "output_tokens"),
        cache_read_tokens: read,
        cache_creation_tokens: write,
        reasoning_tokens: None,
        ..Usage::default()
    }
}

/// A `message` response object.
pub(super) fn response(resp: &Value, c: &mut Conversation) {
    c.response_id = str_of(resp, "id");
    c.response_model = str_of(resp, "model");
    if let Some(u) = resp.get("usage").filter(|u| u.is_object()) {
        c.usage = usage(u);
    }
    let parts = blocks(resp.get("content"));
    let reason = resp.get("stop_reason").and_then(Value::as_str);
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
    start: Value,
    text: String,
    json: String,
    thinking: String,
}

/// Accumulates streamed events into a `message`.
#[derive(Default)]
pub(super) struct Stream {
    message: Option<Value>,
    usage: Map<String, Value>,
    blocks: BTreeMap<u64, Block>,
    stop_reason: Option<String>,
}

impl Stream {
    pub(super) fn event(&mut self, v: &Value) {
        let idx = u64_of(v, "index").unwrap_or(0);
        match v.get("type").and_then(Value::as_str).unwrap_or("") {
            "message_start" => {
                if let Some(m) = v.get("message") {
                    self.merge_usage(m.get("usage"));
                    self.message = Some(m.clone());
                }
            }
            "content_block_start" => {
                let start = v.get("content_block").cloned().unwrap_or(Value::Null);
                self.blocks.insert(
                    idx,
                    Block {
                        start,
                        ..Block::default()
                    },
                );
            }
            "content_block_delta" => {
                let d = v.get("delta").unwrap_or(&Value::Null);
                let b = self.blocks.entry(idx).or_default();
                let s = |k| d.get(k).and_then(Value::as_str).unwrap_or("");
                match d.get("type").and_then(Value::as_str).unwrap_or("") {
                    "text_delta" => b.text.push_str(s("text")),
                    "input_json_delta" => b.json.push_str(s("partial_json")),
                    "thinking_delta" => b.thinking.push_str(s("thinking")),
                    _ => {} // signature_delta, citations_delta: no content to keep
                }
            }
            "message_delta" => {
                if let Some(r) = v
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                {
                    self.stop_reason = Some(r.to_string());
                }
                self.merge_usage(v.get("usage"));
            }
            _ => {} // content_block_stop, message_stop, ping, error (read by the driver)
        }
    }

    /// `message_delta` usage counts are cumulative: later values replace earlier ones.
    fn merge_usage(&mut self, u: Option<&Value>) {
        if let Some(Value::Object(u)) = u {
            for (k, v) in u {
                if !v.is_null() {
                    self.usage.insert(k.clone(), v.clone());
                }
            }
        }
    }

    pub(super) fn finish(self, c: &mut Conversation) {
        let content: Vec<Value> = self
            .blocks
            .into_values()
            .map(|b| {
                let mut start = b.start;
                match start.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let mut text = str_of(&start, "text").unwrap_or_default();
                        text.push_str(&b.text);
                        start["text"] = text.into();
                    }
                    Some("tool_use" | "server_tool_use") if !b.json.is_empty() => {
                        start["input"] = serde_json::from_str(&b.json).unwrap_or(b.json.into());
                    }
                    Some("thinking") => {
                        let mut thinking = str_of(&start, "thinking").unwrap_or_default();
                        thinking.push_str(&b.thinking);
                        start["thinking"] = thinking.into();
                    }
                    _ => {}
                }
                start
            })
            .collect();
        let mut msg = self.message.unwrap_or_else(|| json!({}));
        if let Some(obj) = msg.as_object_mut() {
            obj.insert("content".into(), content.into());
            obj.insert("stop_reason".into(), self.stop_reason.into());
            obj.insert("usage".into(), Value::Object(self.usage));
        }
        response(&msg, c);
    }
}
