//! The normalized, provider-independent model of one exchange: a [`Conversation`].
//!
//! Part of the exchange step. The provider parsers (`provider/`) fill it from the raw bodies;
//! the redaction step reads it to build the [`Record`](crate::record::Record). Message types
//! serialize to exactly the OpenTelemetry GenAI JSON shapes (`gen_ai.input.messages`,
//! `gen_ai.output.messages`, `gen_ai.system_instructions`, semconv v1.41), so the redactor
//! can walk them as a `serde_json::Value`, rewrite text leaves, and hand them to the exporter
//! without a second mapping.
//!
//! What the model never holds: credentials (fingerprinted before the exchange was built),
//! image/audio/file bytes (only a reference: modality, MIME type, URI or file ID), and
//! pseudonyms (pseudonymizing the raw user ID is the redactor's job).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::Value;

use super::operation::Operation;
use super::providers::Provider;
use super::traceparent::TraceParent;

/// `gen_ai.provider.name` / `gen_ai.operation.name` value for what veil did not recognize.
pub const UNKNOWN: &str = "unknown";

/// Token counts as the provider reported them. Absent counts are `None`, never 0.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input (prompt) tokens, including cached ones.
    pub input_tokens: Option<u64>,
    /// Output (completion) tokens, including reasoning ones.
    pub output_tokens: Option<u64>,
    /// Input tokens read from the provider's prompt cache.
    pub cache_read_tokens: Option<u64>,
    /// Input tokens written to the provider's prompt cache.
    pub cache_creation_tokens: Option<u64>,
    /// Output tokens spent on reasoning.
    pub reasoning_tokens: Option<u64>,
    /// Of `input_tokens`, the audio ones (OpenAI Realtime's and audio chat models'
    /// `audio_tokens` details), priced at the model's audio rates.
    pub input_audio_tokens: Option<u64>,
    /// Of `output_tokens`, the audio ones.
    pub output_audio_tokens: Option<u64>,
    /// Of `cache_read_tokens`, the audio ones.
    pub cache_read_audio_tokens: Option<u64>,
}

/// Media kind of a non-text part (`modality` in the GenAI schema).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Modality {
    /// Pictures.
    Image,
    /// Video.
    Video,
    /// Sound.
    Audio,
}

impl Modality {
    /// Guesses the modality from a MIME type; documents (PDF, text) have none.
    pub fn from_mime(mime: &str) -> Option<Modality> {
        let top = mime.split('/').next().unwrap_or("").to_ascii_lowercase();
        match top.as_str() {
            "image" => Some(Modality::Image),
            "video" => Some(Modality::Video),
            "audio" => Some(Modality::Audio),
            _ => None,
        }
    }
}

/// One part of a message.
///
/// Serialized with a `type` tag as in the GenAI schema. Inline media is a [`Part::Blob`]
/// *without* its `content`: veil keeps the reference (modality, MIME type, size) but never
/// copies image or audio bytes into the model, so they can neither leak into telemetry nor
/// cost memory twice. The full body stays in the sealed store.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    /// `{"type":"text","content":…}`.
    Text {
        /// The text.
        content: String,
    },
    /// `{"type":"tool_call","id"?,"name","arguments"?}`: a tool call the model made.
    ToolCall {
        /// The call ID, when the API has one.
        id: Option<String>,
        /// The tool (function) name.
        name: String,
        /// Arguments as JSON (parsed from the provider's string when it is valid JSON,
        /// otherwise the raw string, e.g. a stream cut mid-arguments).
        arguments: Option<Value>,
    },
    /// `{"type":"tool_call_response","id"?,"response"}`: a tool's result sent back.
    ToolCallResponse {
        /// The call ID it answers.
        id: Option<String>,
        /// The result (text or JSON).
        response: Value,
    },
    /// `{"type":"blob","modality","mime_type"?}`: inline media, bytes omitted.
    Blob {
        /// Media kind (`None` for documents); serialized as `modality` when known.
        modality: Option<Modality>,
        /// MIME type, when declared.
        mime_type: Option<String>,
        /// Size of the omitted content in bytes (base64-decoded estimate), veil extension.
        byte_len: Option<u64>,
    },
    /// `{"type":"uri","modality","uri"}`: media referenced by URL.
    Uri {
        /// Media kind, when known.
        modality: Option<Modality>,
        /// The URL.
        uri: String,
    },
    /// `{"type":"file","modality"?,"file_id"}`: media uploaded to the provider earlier.
    File {
        /// Media kind, when known.
        modality: Option<Modality>,
        /// The provider's file ID.
        file_id: String,
    },
    /// `{"type":"reasoning","content"}`: the model's visible reasoning (thinking).
    Reasoning {
        /// The reasoning text (empty when the provider sent it encrypted or redacted).
        content: String,
    },
    /// `{"type":"refusal","content"}`: the model declined (OpenAI `refusal`). A generic
    /// part in GenAI terms.
    Refusal {
        /// The refusal text.
        content: String,
    },
    /// `{"type":…}`: any other part, only its provider type name kept (no content).
    Other {
        /// The provider's part type.
        kind: String,
    },
}

impl Part {
    /// A text part.
    pub fn text(content: impl Into<String>) -> Part {
        Part::Text {
            content: content.into(),
        }
    }
}

impl Serialize for Part {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        match self {
            Part::Text { content } => {
                m.serialize_entry("type", "text")?;
                m.serialize_entry("content", content)?;
            }
            Part::ToolCall {
                id,
                name,
                arguments,
            } => {
                m.serialize_entry("type", "tool_call")?;
                if let Some(id) = id {
                    m.serialize_entry("id", id)?;
                }
                m.serialize_entry("name", name)?;
                if let Some(args) = arguments {
                    m.serialize_entry("arguments", args)?;
                }
            }
            Part::ToolCallResponse { id, response } => {
                m.serialize_entry("type", "tool_call_response")?;
                if let Some(id) = id {
                    m.serialize_entry("id", id)?;
                }
                m.serialize_entry("response", response)?;
            }
            Part::Blob {
                modality,
                mime_type,
                byte_len,
            } => {
                m.serialize_entry("type", "blob")?;
                if let Some(modality) = modality {
                    m.serialize_entry("modality", modality)?;
                }
                if let Some(mime) = mime_type {
                    m.serialize_entry("mime_type", mime)?;
                }
                if let Some(len) = byte_len {
                    m.serialize_entry("byte_len", len)?;
                }
            }
            Part::Uri { modality, uri } => {
                m.serialize_entry("type", "uri")?;
                if let Some(modality) = modality {
                    m.serialize_entry("modality", modality)?;
                }
                m.serialize_entry("uri", uri)?;
            }
            Part::File { modality, file_id } => {
                m.serialize_entry("type", "file")?;
                if let Some(modality) = modality {
                    m.serialize_entry("modality", modality)?;
                }
                m.serialize_entry("file_id", file_id)?;
            }
            Part::Reasoning { content } => {
                m.serialize_entry("type", "reasoning")?;
                m.serialize_entry("content", content)?;
            }
            Part::Refusal { content } => {
                m.serialize_entry("type", "refusal")?;
                m.serialize_entry("content", content)?;
            }
            Part::Other { kind } => {
                m.serialize_entry("type", kind)?;
            }
        }
        m.end()
    }
}

/// Message roles of the GenAI schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// System or developer instructions sent as a message.
    System,
    /// The end user (and, for Anthropic, tool results).
    User,
    /// The model.
    Assistant,
    /// A tool result message (OpenAI `tool` role).
    Tool,
}

/// One element of `gen_ai.input.messages`: `{role, parts, name?}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InputMessage {
    /// Who spoke.
    pub role: Role,
    /// What was said, in order.
    pub parts: Vec<Part>,
    /// Participant name, when the API carries one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One element of `gen_ai.output.messages`: `{role, parts, finish_reason}`, one per choice.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OutputMessage {
    /// Always `assistant` for the providers veil parses; kept for the schema.
    pub role: Role,
    /// The generated parts.
    pub parts: Vec<Part>,
    /// Normalized finish reason (`stop`, `length`, `content_filter`, `tool_call`, `error`,
    /// or the provider's own value lowercased). Required by the schema: receivers drop
    /// output messages without it, so an unfinished choice says `unknown`.
    pub finish_reason: String,
}

/// Timings derived from the exchange.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConversationTimings {
    /// Request arrival to the end of the exchange.
    pub duration: Duration,
    /// Request arrival to the first response body byte, when one arrived.
    pub time_to_first_chunk: Option<Duration>,
}

/// The normalized view of one exchange.
///
/// Fields that the provider did not report stay `None` (never 0, never a guess). An
/// *opaque* conversation (the request was not understood: `operation` is
/// [`Operation::Unknown`], and `parse_error` says why when a body failed to parse) carries only
/// the metadata that needs no parsing: provider by host, sizes, status, timings, tags and
/// identity headers.
///
/// Every field is read by the record step (`record::build`) or `veil rules test`; a field
/// nothing reads goes (veil#11: `api_type`, `output_type`, `error_message`, `opaque`,
/// `opaque_reason`, `chunk_count` and `output_tokens_per_second` went that way).
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    /// `gen_ai.provider.name`: `openai`, `anthropic`, `gcp.gemini`, `azure.ai.openai`, …,
    /// `openai_compatible` for unknown hosts speaking the OpenAI API, or `unknown`.
    pub provider: Provider,
    /// `gen_ai.operation.name`: `chat`, `embeddings`, `generate_content`,
    /// `text_completion`, or `unknown`.
    pub operation: Operation,
    /// `server.address`: the host the app addressed (the real provider for gateway routes).
    pub server_address: String,
    /// `server.port`.
    pub server_port: u16,
    /// `gen_ai.request.model`, exactly as requested (Azure: the deployment when the body
    /// has no model).
    pub request_model: Option<String>,
    /// `gen_ai.response.model`.
    pub response_model: Option<String>,
    /// `gen_ai.response.id`.
    pub response_id: Option<String>,
    /// `gen_ai.conversation.id`, where the API has one (OpenAI Responses `conversation`
    /// or `previous_response_id`), or the `x-veil-conversation` tag.
    pub conversation_id: Option<String>,
    /// Request parameters keyed by their `gen_ai.request.` suffix: `temperature`,
    /// `max_tokens`, `top_p`, `top_k`, `frequency_penalty`, `presence_penalty`,
    /// `stop_sequences` (array), `seed`, `choice.count` (only when ≠ 1).
    pub params: BTreeMap<String, Value>,
    /// `gen_ai.request.stream`.
    pub stream: bool,
    /// `gen_ai.system_instructions`: a flat parts array, only for APIs with a separate
    /// system field (Anthropic `system`, Gemini `systemInstruction`, Responses `instructions`).
    pub system_instructions: Vec<Part>,
    /// `gen_ai.input.messages`, in the order sent.
    pub input_messages: Vec<InputMessage>,
    /// `gen_ai.output.messages`, one per choice/candidate, in index order.
    pub output_messages: Vec<OutputMessage>,
    /// `gen_ai.response.finish_reasons`: one per output message.
    pub finish_reasons: Vec<String>,
    /// Token usage; input counts include cached tokens (Anthropic's are summed).
    pub usage: Usage,
    /// Names of the tools offered to the model (`gen_ai.tool.definitions` names).
    pub tool_names: Vec<String>,
    /// Estimated cost in USD from the pricing table; `None` for an unknown model or no usage.
    pub cost_usd: Option<f64>,
    /// The raw end-user ID (OpenAI `user`/`safety_identifier`, Anthropic
    /// `metadata.user_id`, a configured JSON path, or the `x-veil-user` tag; later ones in
    /// that list win, the explicit tag above all). PII: pseudonymize it.
    pub user_id: Option<String>,
    /// The `x-veil-feature` tag.
    pub feature: Option<String>,
    /// The app's `traceparent`/`tracestate`, when valid.
    pub trace_parent: Option<TraceParent>,
    /// Timings.
    pub timings: ConversationTimings,
    /// Upstream HTTP status, when a response arrived.
    pub status: Option<u16>,
    /// `error.type`: the provider's error type/code, the HTTP status, or veil's upstream
    /// failure class (`connect`, `tls`, `timeout`, `protocol`).
    pub error_type: Option<String>,
    /// Why a body, or part of a streamed one, could not be parsed: set when the request or
    /// response body was not understood (not JSON, undecodable, cut at the capture limit; the
    /// conversation is then opaque), and when stream events were lost (not JSON, over the size
    /// limit; what came before still counts).
    /// Short, for operators; no content. `None` for an unrecognized endpoint (nothing was
    /// meant to be parsed) and when everything parsed.
    pub parse_error: Option<String>,
    /// The exchange was aborted, or the event stream was cut mid-event.
    pub aborted: bool,
    /// A body was cut at the capture limit.
    pub truncated: bool,
    /// Request body size on the wire.
    pub request_bytes: u64,
    /// Response body size on the wire.
    pub response_bytes: u64,
    /// The request body as the parse decoded and parsed it (any JSON value, also for an
    /// endpoint veil does not understand), so the record step never decodes it again.
    /// `None` when it is not JSON or could not be decoded. Raw content: redact before use.
    pub request_json: Option<Value>,
    /// The decoded request body when [`Conversation::request_json`] lacks its `messages`
    /// member (a Chat Completions or Messages request whose messages were read from the text
    /// without a tree, veil#18); `None` otherwise. A rules identity path that reaches into
    /// `messages` parses the whole tree from it ([`Conversation::request_tree`]). Raw content,
    /// like `request_json`.
    pub request_messages_omitted: Option<bytes::Bytes>,
}

impl Conversation {
    /// The request body's whole tree, for a rules identity path that reaches into
    /// `messages`: [`Conversation::request_json`] itself when it is whole, else parsed from
    /// [`Conversation::request_messages_omitted`] (the same bytes `request_json` was read from,
    /// so the same tree). `None` when the body is not JSON.
    pub fn request_tree(&self) -> Option<std::borrow::Cow<'_, Value>> {
        match &self.request_messages_omitted {
            None => self.request_json.as_ref().map(std::borrow::Cow::Borrowed),
            Some(raw) => crate::exchange::json::from_slice(raw)
                .ok()
                .map(std::borrow::Cow::Owned),
        }
    }

    /// `gen_ai.input.messages` as JSON.
    pub fn input_messages_json(&self) -> Value {
        to_json(&self.input_messages)
    }

    /// `gen_ai.output.messages` as JSON.
    pub fn output_messages_json(&self) -> Value {
        to_json(&self.output_messages)
    }

    /// `gen_ai.system_instructions` as JSON.
    pub fn system_instructions_json(&self) -> Value {
        to_json(&self.system_instructions)
    }
}

fn to_json<T: Serialize>(v: &T) -> Value {
    // Serializing these types to a Value cannot fail: no maps with non-string keys and no
    // floats outside JSON (arguments are already Values).
    serde_json::to_value(v).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parts_serialize_to_the_genai_shapes() {
        let parts = vec![
            Part::text("hi"),
            Part::ToolCall {
                id: Some("call_1".into()),
                name: "get_weather".into(),
                arguments: Some(json!({"city": "Paris"})),
            },
            Part::ToolCallResponse {
                id: None,
                response: json!("sunny"),
            },
            Part::Blob {
                modality: Some(Modality::Image),
                mime_type: Some("image/png".into()),
                byte_len: Some(3),
            },
            Part::Uri {
                modality: Some(Modality::Image),
                uri: "https://x/y.png".into(),
            },
            Part::File {
                modality: None,
                file_id: "file-1".into(),
            },
            Part::Reasoning {
                content: "hmm".into(),
            },
            Part::Other {
                kind: "server_tool_use".into(),
            },
        ];
        assert_eq!(
            to_json(&parts),
            json!([
                {"type": "text", "content": "hi"},
                {"type": "tool_call", "id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}},
                {"type": "tool_call_response", "response": "sunny"},
                {"type": "blob", "modality": "image", "mime_type": "image/png", "byte_len": 3},
                {"type": "uri", "modality": "image", "uri": "https://x/y.png"},
                {"type": "file", "file_id": "file-1"},
                {"type": "reasoning", "content": "hmm"},
                {"type": "server_tool_use"},
            ])
        );
    }

    #[test]
    fn messages_serialize_with_role_and_finish_reason() {
        let input = InputMessage {
            role: Role::User,
            parts: vec![Part::text("q")],
            name: None,
        };
        let output = OutputMessage {
            role: Role::Assistant,
            parts: vec![Part::text("a")],
            finish_reason: "stop".into(),
        };
        assert_eq!(
            to_json(&input),
            json!({"role": "user", "parts": [{"type": "text", "content": "q"}]})
        );
        assert_eq!(
            to_json(&output),
            json!({"role": "assistant", "parts": [{"type": "text", "content": "a"}], "finish_reason": "stop"})
        );
        assert_eq!(Modality::from_mime("IMAGE/jpeg"), Some(Modality::Image));
        assert_eq!(Modality::from_mime("application/pdf"), None);
    }
}
