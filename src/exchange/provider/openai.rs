//! OpenAI dialects: Chat Completions, Responses, Embeddings and legacy Completions.
//!
//! Also every OpenAI-compatible server (Azure OpenAI, vLLM, Ollama, OpenRouter, Groq,
//! Together, DeepSeek, Mistral…): their extensions that carry content (`reasoning_content`)
//! are read, the rest is ignored. Streams are folded back into the non-streamed response
//! object and parsed by the same function (see the parent module).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::direct::{self, Text};
use super::{
    UNFINISHED, arguments, copy_number, copy_stop, finish_reason, media_from_url, str_of,
    text_or_blocks, u64_of,
};
use crate::exchange::model::Usage;
use crate::exchange::model::{Conversation, InputMessage, Modality, OutputMessage, Part, Role};

// === shared ===

/// Sampling parameters common to the OpenAI dialects.
fn params(req: &Value, c: &mut Conversation) {
    copy_number(c, req, "temperature", "temperature");
    copy_number(c, req, "top_p", "top_p");
    copy_number(c, req, "frequency_penalty", "frequency_penalty");
    copy_number(c, req, "presence_penalty", "presence_penalty");
    copy_number(c, req, "seed", "seed");
    // Newest name first: `max_tokens` is deprecated for o-series models in favour of
    // `max_completion_tokens`; the Responses API says `max_output_tokens`.
    for key in ["max_completion_tokens", "max_output_tokens", "max_tokens"] {
        if req.get(key).is_some_and(Value::is_number) {
            copy_number(c, req, key, "max_tokens");
            break;
        }
    }
    copy_stop(c, req, "stop");
    if let Some(n) = u64_of(req, "n").filter(|n| *n != 1) {
        c.params.insert("choice.count".into(), n.into());
    }
    c.stream = req.get("stream").and_then(Value::as_bool).unwrap_or(false);
    c.request_model = str_of(req, "model");
    // `safety_identifier` replaces `user` for abuse detection; prefer it when both are sent.
    c.user_id = str_of(req, "safety_identifier").or_else(|| str_of(req, "user"));
}

/// Tool names from `tools` (Chat: `{type, function:{name}}`; Responses: `{type, name}`;
/// built-in tools: their type) and the legacy `functions`.
fn tool_names(req: &Value, c: &mut Conversation) {
    for tool in req
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = tool
            .get("function")
            .and_then(|f| str_of(f, "name"))
            .or_else(|| str_of(tool, "name"))
            .or_else(|| str_of(tool, "type"));
        c.tool_names.extend(name);
    }
    for f in req
        .get("functions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        c.tool_names.extend(str_of(f, "name"));
    }
}

/// `usage` in either naming family (`prompt_tokens`… or `input_tokens`…).
pub(super) fn usage(u: &Value) -> Usage {
    let input = u64_of(u, "prompt_tokens").or_else(|| u64_of(u, "input_tokens"));
    let output = u64_of(u, "completion_tokens").or_else(|| u64_of(u, "output_tokens"));
    // Chat Completions, Responses, and Realtime (`input_token_details`) spellings.
    let in_details = u
        .get("prompt_tokens_details")
        .or_else(|| u.get("input_tokens_details"))
        .or_else(|| u.get("input_token_details"))
        .unwrap_or(&Value::Null);
    let out_details = u
        .get("completion_tokens_details")
        .or_else(|| u.get("output_tokens_details"))
        .or_else(|| u.get("output_token_details"))
        .unwrap_or(&Value::Null);
    Usage {
        input_tokens: input,
        output_tokens: output,
        // DeepSeek reports cache hits at the top level.
        cache_read_tokens: u64_of(in_details, "cached_tokens")
            .or_else(|| u64_of(u, "prompt_cache_hit_tokens")),
        cache_creation_tokens: None,
        reasoning_tokens: u64_of(out_details, "reasoning_tokens"),
        input_audio_tokens: u64_of(in_details, "audio_tokens"),
        output_audio_tokens: u64_of(out_details, "audio_tokens"),
        cache_read_audio_tokens: in_details
            .get("cached_tokens_details")
            .and_then(|d| u64_of(d, "audio_tokens")),
    }
}

fn role(raw: Option<&str>) -> Role {
    match raw {
        Some("system" | "developer") => Role::System,
        Some("assistant") => Role::Assistant,
        Some("tool" | "function") => Role::Tool,
        _ => Role::User,
    }
}

/// A content part of either dialect (Chat `text`/`image_url`/…, Responses
/// `input_text`/`input_image`/…).
fn content_part(p: &Value) -> Option<Part> {
    let kind = p.get("type").and_then(Value::as_str).unwrap_or("text");
    Some(match kind {
        "text" | "input_text" | "output_text" => Part::text(str_of(p, "text").unwrap_or_default()),
        "refusal" => Part::Refusal {
            content: str_of(p, "refusal").unwrap_or_default(),
        },
        "image_url" => {
            let url = p
                .get("image_url")
                .and_then(|u| u.as_str().map(str::to_string).or_else(|| str_of(u, "url")))?;
            media_from_url(&url, Some(Modality::Image))
        }
        "input_image" => match (str_of(p, "image_url"), str_of(p, "file_id")) {
            (Some(url), _) => media_from_url(&url, Some(Modality::Image)),
            (None, Some(file_id)) => Part::File {
                modality: Some(Modality::Image),
                file_id,
            },
            (None, None) => return None,
        },
        "input_audio" => {
            let audio = p.get("input_audio").unwrap_or(p);
            super::blob(
                str_of(audio, "format")
                    .map(|f| format!("audio/{f}"))
                    .as_deref(),
                audio.get("data").and_then(Value::as_str),
                Some(Modality::Audio),
            )
        }
        "file" | "input_file" => {
            let file = p.get("file").unwrap_or(p);
            if let Some(file_id) = str_of(file, "file_id") {
                Part::File {
                    modality: None,
                    file_id,
                }
            } else if let Some(data) = str_of(file, "file_data") {
                media_from_url(&data, None)
            } else if let Some(url) = str_of(file, "file_url") {
                media_from_url(&url, None)
            } else {
                return None;
            }
        }
        other => Part::Other {
            kind: other.to_string(),
        },
    })
}

fn content_parts(content: Option<&Value>) -> Vec<Part> {
    match content {
        Some(Value::String(s)) => vec![Part::text(s.clone())],
        Some(Value::Array(items)) => items.iter().filter_map(content_part).collect(),
        _ => Vec::new(),
    }
}

// === Chat Completions ===

/// A Chat Completions request.
pub(super) fn chat_request(req: &Value, c: &mut Conversation) {
    params(req, c);
    tool_names(req, c);
    for m in req
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        c.input_messages.push(chat_message(m));
    }
}

/// [`chat_request`] of `body`, read without building the tree of its `messages`
/// ([`super::direct`]): each message's fields read as they are parsed, a string `content`
/// borrowed from the text, every other member of the request parsed as a tree. `None`, with
/// `c` untouched, when the body is not an object whose `messages` and message fields have the
/// types this reads (or is not JSON at all): the caller then parses the tree, which decides.
/// When `Some`, `c` holds what [`chat_request`] of the body's tree would have put there, and
/// the value is that tree without its `messages` member (what the record step reads for the
/// rules' identity paths; `Conversation::request_tree` when one reaches into the messages).
pub(super) fn chat_request_direct(body: &[u8], c: &mut Conversation) -> Option<Value> {
    let request =
        crate::exchange::json::parse_text::<direct::Request<RequestMessage>>(body).ok()?;
    let rest = Value::Object(request.rest);
    params(&rest, c);
    tool_names(&rest, c);
    for m in request.messages.into_iter().flatten() {
        c.input_messages.push(m.into_input());
    }
    Some(rest)
}

fn chat_message(m: &Value) -> InputMessage {
    let text = |key: &str| m.get(key).and_then(Value::as_str);
    input_message(InputView {
        role: text("role"),
        content: m.get("content").map(|c| match c {
            Value::String(s) => ContentView::Text(s.into()),
            other => ContentView::Tree(std::borrow::Cow::Borrowed(other)),
        }),
        name: text("name"),
        refusal: text("refusal"),
        tool_call_id: text("tool_call_id"),
        tool_calls: m.get("tool_calls"),
        function_call: m.get("function_call"),
    })
}

/// What [`chat_message`] reads of one request message, from either reading (the tree, or
/// [`RequestMessage`] read from the text).
struct InputView<'a> {
    role: Option<&'a str>,
    content: Option<ContentView<'a>>,
    name: Option<&'a str>,
    refusal: Option<&'a str>,
    tool_call_id: Option<&'a str>,
    tool_calls: Option<&'a Value>,
    function_call: Option<&'a Value>,
}

/// A message's `content`: a string, or any other value (parts, `null`).
enum ContentView<'a> {
    Text(std::borrow::Cow<'a, str>),
    Tree(std::borrow::Cow<'a, Value>),
}

/// The input message of a Chat Completions request message.
fn input_message(m: InputView) -> InputMessage {
    let nonempty = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_string);
    let role = role(m.role);
    let mut parts = Vec::new();
    if role == Role::Tool {
        let response = match m.content {
            None => Value::Null,
            Some(ContentView::Text(s)) => Value::String(s.into_owned()),
            Some(ContentView::Tree(v)) => text_or_blocks(&v, content_part),
        };
        parts.push(Part::ToolCallResponse {
            id: nonempty(m.tool_call_id),
            response,
        });
    } else {
        match m.content {
            None => {}
            Some(ContentView::Text(s)) => parts.push(Part::text(s.into_owned())),
            Some(ContentView::Tree(v)) => parts.extend(content_parts(Some(&v))),
        }
    }
    if let Some(refusal) = nonempty(m.refusal) {
        parts.push(Part::Refusal { content: refusal });
    }
    parts.extend(tool_call_parts(m.tool_calls, m.function_call));
    InputMessage {
        role,
        parts,
        // A `function` message's name is the function's, not a participant's.
        name: if role == Role::Tool {
            None
        } else {
            nonempty(m.name)
        },
    }
}

/// `tool_calls` (and legacy `function_call`) of an assistant message (Ollama's messages carry
/// the same shape, with `arguments` as an object).
pub(super) fn tool_calls(m: &Value) -> Vec<Part> {
    tool_call_parts(m.get("tool_calls"), m.get("function_call"))
}

/// [`tool_calls`] of a message whose `tool_calls` and `function_call` members are these.
fn tool_call_parts(calls: Option<&Value>, function_call: Option<&Value>) -> Vec<Part> {
    let mut parts = Vec::new();
    for call in calls.and_then(Value::as_array).into_iter().flatten() {
        let f = call.get("function").unwrap_or(&Value::Null);
        parts.push(Part::ToolCall {
            id: str_of(call, "id"),
            name: str_of(f, "name")
                .or_else(|| str_of(call, "type"))
                .unwrap_or_default(),
            arguments: f.get("arguments").and_then(arguments),
        });
    }
    if let Some(f) = function_call.filter(|f| f.is_object()) {
        parts.push(Part::ToolCall {
            id: None,
            name: str_of(f, "name").unwrap_or_default(),
            arguments: f.get("arguments").and_then(arguments),
        });
    }
    parts
}

/// A Chat Completions (or legacy Completions) response object.
pub(super) fn chat_response(resp: &Value, c: &mut Conversation) {
    let choices = resp
        .get("choices")
        .and_then(Value::as_array)
        .map(|a| a.iter().map(ChoiceView::of_tree).collect())
        .unwrap_or_default();
    fill_chat_response(
        resp.get("id").and_then(Value::as_str),
        resp.get("model").and_then(Value::as_str),
        resp.get("usage"),
        choices,
        c,
    );
}

/// [`chat_response`] of `body`, read without building its tree ([`super::direct`]). `false`,
/// with `c` untouched, when the body is not a Chat Completions object whose members have the
/// types this reads (or is not JSON at all): the caller then parses the tree, which decides.
/// When `true`, `c` holds what [`chat_response`] of the body's tree would have put there.
pub(super) fn chat_response_direct(body: &[u8], c: &mut Conversation) -> bool {
    let Ok(answer) = crate::exchange::json::parse_text::<ChatAnswer>(body) else {
        return false;
    };
    let choices = answer
        .choices
        .iter()
        .flatten()
        .map(ChoiceView::of_direct)
        .collect();
    fill_chat_response(
        answer.id.get(),
        answer.model.get(),
        answer.usage.as_ref(),
        choices,
        c,
    );
    true
}

/// What [`chat_response`] reads of one choice, from either reading.
struct ChoiceView<'a> {
    index: Option<u64>,
    text: Option<&'a str>,
    /// Only an object counts as a message.
    message: Option<MessageView<'a>>,
    finish_reason: Option<&'a str>,
}

/// What [`chat_response`] reads of a choice's message.
struct MessageView<'a> {
    reasoning_content: Option<&'a str>,
    reasoning: Option<&'a str>,
    content: Option<&'a str>,
    refusal: Option<&'a str>,
    audio: Option<&'a Value>,
    tool_calls: Option<&'a Value>,
    function_call: Option<&'a Value>,
}

impl<'a> ChoiceView<'a> {
    fn of_tree(ch: &'a Value) -> Self {
        let text = |v: &'a Value, key: &str| v.get(key).and_then(Value::as_str);
        ChoiceView {
            index: u64_of(ch, "index"),
            text: text(ch, "text"),
            message: ch
                .get("message")
                .filter(|m| m.is_object())
                .map(|m| MessageView {
                    reasoning_content: text(m, "reasoning_content"),
                    reasoning: text(m, "reasoning"),
                    content: text(m, "content"),
                    refusal: text(m, "refusal"),
                    audio: m.get("audio"),
                    tool_calls: m.get("tool_calls"),
                    function_call: m.get("function_call"),
                }),
            finish_reason: text(ch, "finish_reason"),
        }
    }

    fn of_direct(ch: &'a ChatChoice<'_>) -> Self {
        ChoiceView {
            index: ch.index.as_ref().and_then(Value::as_u64),
            text: ch.text.get(),
            message: ch.message.as_ref().map(|m| MessageView {
                reasoning_content: m.reasoning_content.get(),
                reasoning: m.reasoning.get(),
                content: m.content.get(),
                refusal: m.refusal.get(),
                audio: m.audio.as_ref(),
                tool_calls: m.tool_calls.as_ref(),
                function_call: m.function_call.as_ref(),
            }),
            finish_reason: ch.finish_reason.get(),
        }
    }
}

/// The conversation's answer from a Chat Completions response's members (either reading).
fn fill_chat_response(
    id: Option<&str>,
    model: Option<&str>,
    usage_member: Option<&Value>,
    mut choices: Vec<ChoiceView>,
    c: &mut Conversation,
) {
    // A non-empty string field, as `str_of` reads one.
    let nonempty = |s: Option<&str>| s.filter(|s| !s.is_empty()).map(str::to_string);
    c.response_id = nonempty(id);
    c.response_model = nonempty(model);
    if let Some(u) = usage_member.filter(|u| u.is_object()) {
        c.usage = usage(u);
    }
    choices.sort_by_key(|ch| ch.index.unwrap_or(0));
    for ch in choices {
        let mut parts = Vec::new();
        if let Some(text) = nonempty(ch.text) {
            parts.push(Part::text(text)); // legacy Completions
        }
        if let Some(m) = ch.message {
            if let Some(reasoning) = nonempty(m.reasoning_content).or_else(|| nonempty(m.reasoning))
            {
                parts.push(Part::Reasoning { content: reasoning });
            }
            if let Some(text) = nonempty(m.content) {
                parts.push(Part::text(text));
            }
            if let Some(refusal) = nonempty(m.refusal) {
                parts.push(Part::Refusal { content: refusal });
            }
            if let Some(audio) = m.audio.filter(|a| a.is_object()) {
                // An audio answer (`modalities: ["text", "audio"]`): its transcript is the
                // answer's text, recorded (and redacted) as any text; the audio itself only as
                // its size. A folded stream carries the size, not the bytes (`STREAMED_AUDIO_BYTES`).
                if let Some(transcript) = str_of(audio, "transcript").filter(|t| !t.is_empty()) {
                    parts.push(Part::text(transcript));
                }
                let mut blob = super::blob(
                    None,
                    audio.get("data").and_then(Value::as_str),
                    Some(Modality::Audio),
                );
                if let Part::Blob { byte_len, .. } = &mut blob
                    && byte_len.is_none()
                {
                    *byte_len = u64_of(audio, STREAMED_AUDIO_BYTES);
                }
                parts.push(blob);
            }
            parts.extend(tool_call_parts(m.tool_calls, m.function_call));
        }
        c.output_messages.push(OutputMessage {
            role: Role::Assistant,
            parts,
            finish_reason: ch
                .finish_reason
                .map_or_else(|| UNFINISHED.to_string(), finish_reason),
        });
    }
}

// A Chat Completions request's messages as `chat_request` reads them, from the text
// (`super::direct::Request`): member by member.

#[derive(Default)]
struct RequestMessage<'de> {
    role: Text<'de>,
    /// `null` reads as absent: both make no part (a tool message: a `null` response).
    content: Option<direct::TextOr<'de>>,
    name: Text<'de>,
    refusal: Text<'de>,
    tool_call_id: Text<'de>,
    tool_calls: Option<Value>,
    function_call: Option<Value>,
}

direct::object!(
    RequestMessage,
    "a message",
    [
        role,
        content,
        name,
        refusal,
        tool_call_id,
        tool_calls,
        function_call
    ]
);

impl RequestMessage<'_> {
    /// What [`chat_message`] makes of the same message's tree.
    fn into_input(self) -> InputMessage {
        input_message(InputView {
            role: self.role.get(),
            content: self.content.map(|c| match c {
                direct::TextOr::Text(s) => ContentView::Text(s),
                direct::TextOr::List(v) => {
                    ContentView::Tree(std::borrow::Cow::Owned(Value::Array(v)))
                }
                direct::TextOr::Tree(v) => ContentView::Tree(std::borrow::Cow::Owned(v)),
            }),
            name: self.name.get(),
            refusal: self.refusal.get(),
            tool_call_id: self.tool_call_id.get(),
            tool_calls: self.tool_calls.as_ref(),
            function_call: self.function_call.as_ref(),
        })
    }
}

// The members of a Chat Completions answer that `chat_response` reads, read from the text
// (`super::direct`): text fields borrowed, the small or rare structured ones as trees, every
// other member parsed as a tree and dropped.

#[derive(Default)]
struct ChatAnswer<'de> {
    id: Text<'de>,
    model: Text<'de>,
    usage: Option<Value>,
    choices: Option<Vec<ChatChoice<'de>>>,
}

direct::object!(
    ChatAnswer,
    "a Chat Completions response",
    [id, model, usage, choices]
);

#[derive(Default)]
struct ChatChoice<'de> {
    index: Option<Value>,
    text: Text<'de>,
    message: Option<ChatMessage<'de>>,
    finish_reason: Text<'de>,
}

direct::object!(
    ChatChoice,
    "a choice",
    [index, text, message, finish_reason]
);

#[derive(Default)]
struct ChatMessage<'de> {
    reasoning_content: Text<'de>,
    reasoning: Text<'de>,
    content: Text<'de>,
    refusal: Text<'de>,
    audio: Option<Value>,
    tool_calls: Option<Value>,
    function_call: Option<Value>,
}

direct::object!(
    ChatMessage,
    "a message",
    [
        reasoning_content,
        reasoning,
        content,
        refusal,
        audio,
        tool_calls,
        function_call
    ]
);

/// Key of a folded stream's `message.audio` that carries the decoded size of the audio it
/// streamed: the fold keeps the size, never the base64 bytes.
const STREAMED_AUDIO_BYTES: &str = "veil_streamed_bytes";

/// A streamed audio answer (`delta.audio`): its transcript, id and how much base64 it sent.
#[derive(Default)]
struct AudioDelta {
    id: Option<String>,
    transcript: String,
    /// Base64 characters of `data`, padding excluded, over every chunk.
    base64_chars: u64,
}

#[derive(Default)]
struct ToolDelta {
    id: Option<String>,
    kind: Option<String>,
    name: String,
    arguments: String,
}

#[derive(Default)]
struct ChoiceDelta {
    text: String,
    legacy_text: String,
    reasoning: String,
    refusal: String,
    /// The audio answer, when the stream carried one.
    audio: Option<AudioDelta>,
    /// Tool calls in the order they started.
    tools: Vec<ToolDelta>,
    /// `index` → position in `tools` of the call that index last named.
    tool_at: BTreeMap<u64, usize>,
    /// `id` → position in `tools` (a map, not a search: a hostile stream may name many).
    tool_by_id: BTreeMap<String, usize>,
    finish: Option<String>,
}

impl ChoiceDelta {
    /// The call a streamed `tool_calls` item continues, or a new one. OpenAI names a call by
    /// `index` across chunks and sends its `id` on the first; several compatible servers
    /// (vLLM, llama.cpp, Ollama's OpenAI API) give parallel calls the same `index`, or none,
    /// with a new `id` each. So an `id` not seen before starts a new call whatever its
    /// `index`; an `id` seen before continues that call; without an `id`, `index` picks the
    /// call it last named, and without either the item continues the latest call.
    fn tool(&mut self, index: Option<u64>, id: Option<&str>) -> &mut ToolDelta {
        let known = match id {
            Some(id) => self.tool_by_id.get(id).copied(),
            None => match index {
                Some(i) => self.tool_at.get(&i).copied(),
                None => self.tools.len().checked_sub(1),
            },
        };
        let at = known.unwrap_or_else(|| {
            self.tools.push(ToolDelta {
                id: id.map(str::to_string),
                ..ToolDelta::default()
            });
            let at = self.tools.len() - 1;
            if let Some(id) = id {
                self.tool_by_id.insert(id.to_string(), at);
            }
            at
        });
        if let Some(i) = index {
            self.tool_at.insert(i, at);
        }
        &mut self.tools[at]
    }
}

/// Accumulates `chat.completion.chunk` events (and legacy completion chunks).
#[derive(Default)]
pub(super) struct ChatStream {
    id: Option<String>,
    model: Option<String>,
    usage: Option<Value>,
    choices: BTreeMap<u64, ChoiceDelta>,
}

impl ChatStream {
    pub(super) fn event(&mut self, v: &Value) {
        if self.id.is_none() {
            self.id = str_of(v, "id");
        }
        if self.model.is_none() {
            self.model = str_of(v, "model");
        }
        // With `stream_options.include_usage` the usage arrives on a last chunk with no
        // choices; some compatible servers send it on every chunk, so the last one wins.
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(u.clone());
        }
        for ch in v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let acc = self
                .choices
                .entry(u64_of(ch, "index").unwrap_or(0))
                .or_default();
            if let Some(t) = ch.get("text").and_then(Value::as_str) {
                acc.legacy_text.push_str(t);
            }
            if let Some(f) = ch.get("finish_reason").and_then(Value::as_str) {
                acc.finish = Some(f.to_string());
            }
            let Some(d) = ch.get("delta").filter(|d| d.is_object()) else {
                continue;
            };
            if let Some(t) = d.get("content").and_then(Value::as_str) {
                acc.text.push_str(t);
            }
            for key in ["reasoning_content", "reasoning"] {
                if let Some(t) = d.get(key).and_then(Value::as_str) {
                    acc.reasoning.push_str(t);
                }
            }
            if let Some(t) = d.get("refusal").and_then(Value::as_str) {
                acc.refusal.push_str(t);
            }
            if let Some(a) = d.get("audio").filter(|a| a.is_object()) {
                let audio = acc.audio.get_or_insert_default();
                if audio.id.is_none() {
                    audio.id = str_of(a, "id");
                }
                if let Some(t) = a.get("transcript").and_then(Value::as_str) {
                    audio.transcript.push_str(t);
                }
                if let Some(data) = a.get("data").and_then(Value::as_str) {
                    let chars = data.trim_end_matches('=').len() as u64;
                    audio.base64_chars = audio.base64_chars.saturating_add(chars);
                }
            }
            for call in d
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let id = call.get("id").and_then(Value::as_str);
                let tool = acc.tool(u64_of(call, "index"), id);
                if tool.kind.is_none() {
                    tool.kind = str_of(call, "type");
                }
                if let Some(f) = call.get("function") {
                    if let Some(n) = f.get("name").and_then(Value::as_str) {
                        tool.name.push_str(n);
                    }
                    if let Some(a) = f.get("arguments").and_then(Value::as_str) {
                        tool.arguments.push_str(a);
                    }
                }
            }
        }
    }

    /// Folds the chunks into a `chat.completion` object and parses that.
    pub(super) fn finish(self, c: &mut Conversation) {
        let choices: Vec<Value> = self
            .choices
            .into_iter()
            .map(|(index, ch)| {
                let mut message = Map::new();
                message.insert("role".into(), "assistant".into());
                let some = |s: String| if s.is_empty() { Value::Null } else { s.into() };
                message.insert("content".into(), some(ch.text));
                message.insert("refusal".into(), some(ch.refusal));
                message.insert("reasoning_content".into(), some(ch.reasoning));
                if let Some(a) = ch.audio {
                    message.insert(
                        "audio".into(),
                        json!({"id": a.id, "transcript": a.transcript,
                               STREAMED_AUDIO_BYTES: a.base64_chars.saturating_mul(3) / 4}),
                    );
                }
                if !ch.tools.is_empty() {
                    let calls: Vec<Value> = ch
                        .tools
                        .into_iter()
                        .map(|t| {
                            json!({"id": t.id, "type": t.kind,
                                   "function": {"name": t.name, "arguments": t.arguments}})
                        })
                        .collect();
                    message.insert("tool_calls".into(), calls.into());
                }
                let mut choice = json!({"index": index, "message": message,
                                        "finish_reason": ch.finish});
                if !ch.legacy_text.is_empty() {
                    choice["text"] = ch.legacy_text.into();
                }
                choice
            })
            .collect();
        let resp = json!({"id": self.id, "model": self.model, "choices": choices,
                          "usage": self.usage});
        chat_response(&resp, c);
    }
}

// === legacy Completions ===

/// A legacy Completions request: `prompt` is a string or a list of strings.
pub(super) fn completions_request(req: &Value, c: &mut Conversation) {
    params(req, c);
    let prompts: Vec<String> = match req.get("prompt") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|p| p.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    for p in prompts {
        c.input_messages.push(InputMessage {
            role: Role::User,
            parts: vec![Part::text(p)],
            name: None,
        });
    }
}

// === Embeddings ===

/// An Embeddings request: each input string becomes a text part of one user message
/// (token-ID inputs carry no text and are skipped).
pub(super) fn embeddings_request(req: &Value, c: &mut Conversation) {
    c.request_model = str_of(req, "model");
    c.user_id = str_of(req, "user");
    let texts: Vec<Part> = match req.get("input") {
        Some(Value::String(s)) => vec![Part::text(s.clone())],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|p| p.as_str().map(Part::text))
            .collect(),
        _ => Vec::new(),
    };
    if !texts.is_empty() {
        c.input_messages.push(InputMessage {
            role: Role::User,
            parts: texts,
            name: None,
        });
    }
    if let Some(d) = u64_of(req, "dimensions") {
        c.params
            .insert("embeddings.dimension.count".into(), d.into());
    }
}

/// An Embeddings response: model and usage only (vectors are not content worth keeping).
pub(super) fn embeddings_response(resp: &Value, c: &mut Conversation) {
    c.response_model = str_of(resp, "model");
    if let Some(u) = resp.get("usage").filter(|u| u.is_object()) {
        c.usage = usage(u);
    }
}

// === Responses ===

/// A Responses API request.
pub(super) fn responses_request(req: &Value, c: &mut Conversation) {
    params(req, c);
    tool_names(req, c);
    c.conversation_id = match req.get("conversation") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(obj @ Value::Object(_)) => str_of(obj, "id"),
        _ => None,
    }
    .or_else(|| str_of(req, "previous_response_id"));
    match req.get("instructions") {
        Some(Value::String(s)) => c.system_instructions.push(Part::text(s.clone())),
        Some(Value::Array(items)) => {
            for item in items {
                c.system_instructions
                    .extend(content_parts(item.get("content")));
            }
        }
        _ => {}
    }
    match req.get("input") {
        Some(Value::String(s)) => c.input_messages.push(InputMessage {
            role: Role::User,
            parts: vec![Part::text(s.clone())],
            name: None,
        }),
        Some(Value::Array(items)) => {
            for item in items {
                input_item(item, &mut c.input_messages);
            }
        }
        _ => {}
    }
}

/// One Responses input item. Tool calls and reasoning join the preceding assistant
/// message, as they would in a Chat transcript.
fn input_item(item: &Value, out: &mut Vec<InputMessage>) {
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    let assistant_part = match kind {
        "message" => {
            out.push(InputMessage {
                role: role(item.get("role").and_then(Value::as_str)),
                parts: content_parts(item.get("content")),
                name: None,
            });
            return;
        }
        "function_call_output" | "custom_tool_call_output" => {
            out.push(InputMessage {
                role: Role::Tool,
                parts: vec![Part::ToolCallResponse {
                    id: str_of(item, "call_id"),
                    response: item
                        .get("output")
                        .map(|o| text_or_blocks(o, content_part))
                        .unwrap_or(Value::Null),
                }],
                name: None,
            });
            return;
        }
        "function_call" | "custom_tool_call" => Part::ToolCall {
            id: str_of(item, "call_id"),
            name: str_of(item, "name").unwrap_or_default(),
            arguments: item
                .get("arguments")
                .or_else(|| item.get("input"))
                .and_then(arguments),
        },
        "reasoning" => Part::Reasoning {
            content: reasoning_text(item),
        },
        other => Part::Other {
            kind: other.to_string(),
        },
    };
    match out.last_mut() {
        Some(last) if last.role == Role::Assistant => last.parts.push(assistant_part),
        _ => out.push(InputMessage {
            role: Role::Assistant,
            parts: vec![assistant_part],
            name: None,
        }),
    }
}

fn reasoning_text(item: &Value) -> String {
    let texts: Vec<&str> = ["summary", "content"]
        .iter()
        .filter_map(|k| item.get(*k).and_then(Value::as_array))
        .flatten()
        .filter_map(|s| s.get("text").and_then(Value::as_str))
        .collect();
    texts.join("\n")
}

/// A Responses API `response` object: all output items form one assistant message.
pub(super) fn responses_response(resp: &Value, c: &mut Conversation) {
    c.response_id = str_of(resp, "id");
    c.response_model = str_of(resp, "model");
    if let Some(u) = resp.get("usage").filter(|u| u.is_object()) {
        c.usage = usage(u);
    }
    if let Some(err) = resp.get("error").filter(|e| e.is_object()) {
        c.error_type = str_of(err, "code").or_else(|| Some("_OTHER".into()));
    }
    let mut parts = Vec::new();
    let mut called_tool = false;
    for item in resp
        .get("output")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match item.get("type").and_then(Value::as_str).unwrap_or("") {
            "message" => parts.extend(content_parts(item.get("content"))),
            "function_call" | "custom_tool_call" => {
                called_tool = true;
                parts.push(Part::ToolCall {
                    id: str_of(item, "call_id"),
                    name: str_of(item, "name").unwrap_or_default(),
                    arguments: item
                        .get("arguments")
                        .or_else(|| item.get("input"))
                        .and_then(arguments),
                });
            }
            "reasoning" => parts.push(Part::Reasoning {
                content: reasoning_text(item),
            }),
            other => parts.push(Part::Other {
                kind: other.to_string(),
            }),
        }
    }
    let status = resp.get("status").and_then(Value::as_str);
    let reason = match status {
        Some("completed") if called_tool => "tool_call".to_string(),
        Some("completed") => "stop".to_string(),
        Some("incomplete") => resp
            .get("incomplete_details")
            .and_then(|d| d.get("reason"))
            .and_then(Value::as_str)
            .map_or_else(|| "length".to_string(), finish_reason),
        Some("failed") => "error".to_string(),
        Some(other @ "cancelled") => other.to_string(),
        _ => UNFINISHED.to_string(),
    };
    if !parts.is_empty() || status.is_some_and(|s| s != "in_progress") {
        c.output_messages.push(OutputMessage {
            role: Role::Assistant,
            parts,
            finish_reason: reason,
        });
    }
}

/// Accumulates Responses streaming events. The terminal event (`response.completed`,
/// `.incomplete`, `.failed`) repeats the whole response, which is then used as is; a cut
/// stream is rebuilt from the `output_item` events and deltas seen so far.
#[derive(Default)]
pub(super) struct ResponsesStream {
    response: Option<Value>,
    final_response: Option<Value>,
    items: BTreeMap<u64, Value>,
    done: BTreeMap<u64, Value>,
    text: BTreeMap<u64, String>,
    args: BTreeMap<u64, String>,
    reasoning: BTreeMap<u64, String>,
}

impl ResponsesStream {
    pub(super) fn event(&mut self, v: &Value) {
        let kind = v.get("type").and_then(Value::as_str).unwrap_or("");
        let idx = u64_of(v, "output_index").unwrap_or(0);
        let delta = || v.get("delta").and_then(Value::as_str).unwrap_or("");
        match kind {
            "response.created" | "response.in_progress" => {
                self.response = v.get("response").cloned();
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                self.final_response = v.get("response").cloned();
            }
            "response.output_item.added" => {
                if let Some(item) = v.get("item") {
                    self.items.insert(idx, item.clone());
                }
            }
            "response.output_item.done" => {
                if let Some(item) = v.get("item") {
                    self.done.insert(idx, item.clone());
                }
            }
            "response.output_text.delta" | "response.refusal.delta" => {
                self.text.entry(idx).or_default().push_str(delta());
            }
            "response.function_call_arguments.delta" => {
                self.args.entry(idx).or_default().push_str(delta());
            }
            "response.reasoning_summary_text.delta" | "response.reasoning_text.delta" => {
                self.reasoning.entry(idx).or_default().push_str(delta());
            }
            _ => {}
        }
    }

    pub(super) fn finish(mut self, c: &mut Conversation) {
        if let Some(resp) = self.final_response {
            responses_response(&resp, c);
            return;
        }
        let mut resp = self.response.take().unwrap_or_else(|| json!({}));
        let indexes: std::collections::BTreeSet<u64> =
            self.items.keys().chain(self.done.keys()).copied().collect();
        let output: Vec<Value> = indexes
            .into_iter()
            .filter_map(|i| {
                if let Some(item) = self.done.remove(&i) {
                    return Some(item);
                }
                let mut item = self.items.remove(&i)?;
                match item.get("type").and_then(Value::as_str) {
                    Some("message") => {
                        let text = self.text.remove(&i).unwrap_or_default();
                        item["content"] = json!([{"type": "output_text", "text": text}]);
                    }
                    Some("function_call") => {
                        item["arguments"] = self.args.remove(&i).unwrap_or_default().into();
                    }
                    Some("reasoning") => {
                        let text = self.reasoning.remove(&i).unwrap_or_default();
                        item["summary"] = json!([{"type": "summary_text", "text": text}]);
                    }
                    _ => {}
                }
                Some(item)
            })
            .collect();
        if let Some(obj) = resp.as_object_mut() {
            obj.insert("output".into(), output.into());
            // The stream never said how it ended.
            obj.insert("status".into(), "in_progress".into());
        }
        responses_response(&resp, c);
    }
}
