//! OpenAI Realtime responses: the bodies [`exchange::realtime`](crate::exchange::realtime)
//! builds at each `response.done`, parsed like a chat exchange. The request body lists the
//! conversation items the session added since the previous response; the response body is
//! the Realtime `response` object (output items, status, status details, usage with text,
//! audio and cached token details).

use serde_json::Value;

use super::{UNFINISHED, arguments, str_of, u64_of};
use crate::exchange::model::{Conversation, InputMessage, Modality, OutputMessage, Part, Role};

/// The synthesized request: `{"model","instructions"?,"tools"?,"session_id"?,"input":[…]}`.
pub(super) fn request(req: &Value, c: &mut Conversation) {
    c.request_model = str_of(req, "model");
    c.stream = true;
    if let Some(i) = str_of(req, "instructions") {
        c.system_instructions = vec![Part::text(i)];
    }
    c.tool_names = req
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|t| t.as_str().map(str::to_string))
        .collect();
    // The provider's session id is the conversation's, unless the app tagged one.
    c.conversation_id = str_of(req, "session_id");
    for item in req
        .get("input")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (role, parts) = item_parts(item);
        if !parts.is_empty() {
            c.input_messages.push(InputMessage {
                role,
                parts,
                name: None,
            });
        }
    }
}

/// One conversation item as a role and parts.
fn item_parts(item: &Value) -> (Role, Vec<Part>) {
    match item.get("type").and_then(Value::as_str) {
        Some("function_call") => (
            Role::Assistant,
            vec![Part::ToolCall {
                id: str_of(item, "call_id"),
                name: str_of(item, "name").unwrap_or_default(),
                arguments: item.get("arguments").and_then(arguments),
            }],
        ),
        Some("function_call_output") => (
            Role::Tool,
            vec![Part::ToolCallResponse {
                id: str_of(item, "call_id"),
                response: item.get("output").cloned().unwrap_or(Value::Null),
            }],
        ),
        _ => {
            let role = match item.get("role").and_then(Value::as_str) {
                Some("assistant") => Role::Assistant,
                Some("system") => Role::System,
                _ => Role::User,
            };
            let parts = item
                .get("content")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .flat_map(content_parts)
                .collect();
            (role, parts)
        }
    }
}

/// A content part: text as text; audio as its transcript (text, redacted like any) and a
/// blob with its size, never its bytes.
fn content_parts(p: &Value) -> Vec<Part> {
    match p.get("type").and_then(Value::as_str) {
        Some("input_text" | "text" | "output_text") => {
            vec![Part::text(str_of(p, "text").unwrap_or_default())]
        }
        Some("input_audio" | "audio" | "output_audio") => {
            let mut parts = Vec::new();
            if let Some(t) = str_of(p, "transcript") {
                parts.push(Part::text(t));
            }
            if let Some(n) = u64_of(p, "audio_bytes") {
                parts.push(Part::Blob {
                    modality: Some(Modality::Audio),
                    mime_type: None,
                    byte_len: Some(n),
                });
            }
            parts
        }
        Some(other) => vec![Part::Other {
            kind: other.to_string(),
        }],
        None => Vec::new(),
    }
}

/// The Realtime `response` object.
pub(super) fn response(resp: &Value, c: &mut Conversation) {
    c.response_id = str_of(resp, "id");
    if let Some(u) = resp.get("usage").filter(|u| u.is_object()) {
        c.usage = super::openai::usage(u);
    }
    let mut parts = Vec::new();
    let mut called = false;
    for item in resp
        .get("output")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (_, p) = item_parts(item);
        called |= item.get("type").and_then(Value::as_str) == Some("function_call");
        parts.extend(p);
    }
    let details = resp.get("status_details").unwrap_or(&Value::Null);
    let reason = details.get("reason").and_then(Value::as_str);
    let finish = match resp.get("status").and_then(Value::as_str) {
        Some("completed") if called => "tool_call".to_string(),
        Some("completed") => "stop".to_string(),
        Some("incomplete") => match reason {
            Some("max_output_tokens") => "length".to_string(),
            Some("content_filter") => "content_filter".to_string(),
            Some(other) => other.to_string(),
            None => UNFINISHED.to_string(),
        },
        Some("cancelled") => "cancelled".to_string(),
        Some("failed") => {
            let err = details.get("error").unwrap_or(&Value::Null);
            c.error_type = str_of(err, "code")
                .or_else(|| str_of(err, "type"))
                .or_else(|| Some("_OTHER".into()));
            "error".to_string()
        }
        _ => UNFINISHED.to_string(),
    };
    c.output_messages.push(OutputMessage {
        role: Role::Assistant,
        parts,
        finish_reason: finish,
    });
}
