//! # OpenAI Realtime: a WebSocket session's events → one exchange per model response.
//!
//! Part of the exchange step, fed off the hot path: the proxy's frame readers hand over each
//! complete text message of a Realtime session (`/v1/realtime`), and [`RealtimeSession`]
//! follows the conversation. Event shapes from OpenAI's Realtime API reference (client
//! events `session.update`, `conversation.item.create`, `input_audio_buffer.append`,
//! `response.create`; server events `session.created` / `session.updated`,
//! `conversation.item.created`, `input_audio_buffer.committed`,
//! `conversation.item.input_audio_transcription.completed`, `response.created`,
//! `response.done`). The GA names (`response.output_audio.delta`, `output_text`,
//! `output_audio`) and the beta ones (`response.audio.delta`, `text`, `audio`) are both read.
//!
//! Each `response.done` becomes a [`RealtimeResponse`]: a request body made of what the
//! session added since the previous response (new items, audio transcripts, the session's
//! model, instructions and tool names) and a response body that is the `response` object
//! itself (output items, status, usage with text/audio/cached token details). The proxy
//! wraps them into an [`Exchange`](super::Exchange) that the pipeline parses, redacts, seals
//! and records like any other. Audio never enters either body: `input_audio_buffer.append`
//! and `*audio.delta` events are counted by size by the frame reader, and any `audio` string
//! still inside an event is replaced by its decoded size (`audio_bytes`).
//!
//! Bounded: the pending input is capped ([`MAX_PENDING`] items); what does not fit is
//! counted in [`RealtimeTotals::events_lost`], as are events that are not JSON objects.

use serde_json::{Map, Value, json};

/// Which way an event went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the app (client events).
    Client,
    /// From the provider (server events).
    Server,
}

/// Items kept for the next response's record; more are counted as lost.
pub const MAX_PENDING: usize = 256;

/// What one event meant for the session's records.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// Nothing to record yet.
    Continue,
    /// The provider started a response (`response.created`): its record's clock starts.
    ResponseStarted,
    /// A response finished (`response.done`): its record.
    ResponseDone(RealtimeResponse),
}

/// The bodies of one response's exchange, as JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct RealtimeResponse {
    /// `{"model","instructions"?,"tools"?,"session_id"?,"input":[items]}`.
    pub request: Value,
    /// The `response` object of `response.done`, audio removed.
    pub response: Value,
}

/// Session totals, for the session's own record.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RealtimeTotals {
    /// `response.done` events seen.
    pub responses: u64,
    /// Sum of the responses' `usage.input_tokens`.
    pub input_tokens: u64,
    /// Sum of the responses' `usage.output_tokens`.
    pub output_tokens: u64,
    /// Audio the app sent (`input_audio_buffer.append`), bytes (base64-decoded estimate).
    pub input_audio_bytes: u64,
    /// Audio the provider sent (`*audio.delta`), bytes (base64-decoded estimate).
    pub output_audio_bytes: u64,
    /// Events not followed: not JSON, too large to capture, compressed, or beyond the
    /// pending bound.
    pub events_lost: u64,
}

/// One Realtime session's state; see the module docs.
#[derive(Debug, Default)]
pub struct RealtimeSession {
    model: Option<String>,
    session_id: Option<String>,
    instructions: Option<String>,
    tools: Vec<String>,
    /// Items added since the last response, by item id where they have one.
    pending: Vec<(Option<String>, Value)>,
    /// Audio appended to the input buffer since it was last committed or cleared.
    buffered_audio: u64,
    /// Audio the provider streamed since the last response finished.
    response_audio: u64,
    totals: RealtimeTotals,
}

impl RealtimeSession {
    /// A session for `model` (the handshake's `?model=`, if any).
    pub fn new(model: Option<String>) -> Self {
        RealtimeSession {
            model,
            ..Default::default()
        }
    }

    /// The totals so far.
    pub fn totals(&self) -> &RealtimeTotals {
        &self.totals
    }

    /// Notes an event that was not captured (too large, compressed, dropped).
    pub fn lost(&mut self) {
        self.totals.events_lost += 1;
    }

    /// Notes an audio event the frame reader did not capture: `wire_len` bytes of JSON,
    /// almost all base64 audio (decoded size ≈ ¾ of it).
    pub fn audio(&mut self, dir: Direction, wire_len: u64) {
        let bytes = wire_len.saturating_mul(3) / 4;
        match dir {
            Direction::Client => {
                self.buffered_audio += bytes;
                self.totals.input_audio_bytes += bytes;
            }
            Direction::Server => {
                self.response_audio += bytes;
                self.totals.output_audio_bytes += bytes;
            }
        }
    }

    /// Follows one complete text message.
    pub fn event(&mut self, dir: Direction, payload: &[u8]) -> Step {
        let Ok(Value::Object(mut ev)) = serde_json::from_slice::<Value>(payload) else {
            self.totals.events_lost += 1;
            return Step::Continue;
        };
        let kind = ev
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        match (dir, kind.as_str()) {
            (_, "session.update" | "session.created" | "session.updated") => {
                if let Some(Value::Object(s)) = ev.get("session") {
                    self.session(s);
                }
            }
            (Direction::Client, "input_audio_buffer.append") => {
                let n = ev.get("audio").and_then(Value::as_str).map_or(0, b64_len);
                self.buffered_audio += n;
                self.totals.input_audio_bytes += n;
            }
            (Direction::Client, "input_audio_buffer.clear") => self.buffered_audio = 0,
            // Audio deltas are usually only sized by the frame reader; one whose `type`
            // came after its audio was captured whole and is sized here.
            (Direction::Server, "response.output_audio.delta" | "response.audio.delta") => {
                let n = ev.get("delta").and_then(Value::as_str).map_or(0, b64_len);
                self.response_audio += n;
                self.totals.output_audio_bytes += n;
            }
            (Direction::Server, "input_audio_buffer.committed") => {
                let id = str_of(&ev, "item_id");
                let audio = std::mem::take(&mut self.buffered_audio);
                self.push(
                    id,
                    json!({"type": "message", "role": "user",
                           "content": [{"type": "input_audio", "audio_bytes": audio}]}),
                );
            }
            (Direction::Client, "conversation.item.create") => {
                if let Some(mut item) = ev.remove("item") {
                    strip_audio(&mut item);
                    let id = item.get("id").and_then(Value::as_str).map(str::to_string);
                    self.push(id, item);
                }
            }
            (Direction::Server, "conversation.item.input_audio_transcription.completed") => {
                let transcript = str_of(&ev, "transcript").unwrap_or_default();
                let id = str_of(&ev, "item_id");
                self.transcript(id, transcript);
            }
            (Direction::Client, "response.create") => {
                // Per-response instructions override the session's for that response.
                if let Some(i) = ev
                    .get("response")
                    .and_then(|r| r.get("instructions"))
                    .and_then(Value::as_str)
                {
                    self.push(
                        None,
                        json!({"type": "message", "role": "system",
                               "content": [{"type": "input_text", "text": i}]}),
                    );
                }
            }
            (Direction::Server, "response.created") => return Step::ResponseStarted,
            (Direction::Server, "response.done") => {
                let mut response = ev.remove("response").unwrap_or_else(|| json!({}));
                return Step::ResponseDone(self.finish(&mut response));
            }
            _ => {}
        }
        Step::Continue
    }

    fn session(&mut self, s: &Map<String, Value>) {
        if let Some(m) = s.get("model").and_then(Value::as_str) {
            self.model = Some(m.to_string());
        }
        if let Some(id) = s.get("id").and_then(Value::as_str) {
            self.session_id = Some(id.to_string());
        }
        if let Some(i) = s.get("instructions").and_then(Value::as_str) {
            self.instructions = Some(i.to_string());
        }
        if let Some(Value::Array(tools)) = s.get("tools") {
            self.tools = tools
                .iter()
                .filter_map(|t| t.get("name").and_then(Value::as_str))
                .map(str::to_string)
                .collect();
        }
    }

    fn push(&mut self, id: Option<String>, item: Value) {
        if self.pending.len() >= MAX_PENDING {
            self.totals.events_lost += 1;
            return;
        }
        self.pending.push((id, item));
    }

    /// A transcript of the user's audio: into its pending item, or (the item was already
    /// recorded with an earlier response) as an item of its own.
    fn transcript(&mut self, id: Option<String>, transcript: String) {
        let pending = self
            .pending
            .iter_mut()
            .find(|(i, _)| i.is_some() && *i == id)
            .and_then(|(_, item)| item.get_mut("content")?.as_array_mut()?.first_mut());
        match pending {
            Some(part) => part["transcript"] = transcript.into(),
            None => self.push(
                id,
                json!({"type": "message", "role": "user",
                       "content": [{"type": "input_audio", "transcript": transcript}]}),
            ),
        }
    }

    fn finish(&mut self, response: &mut Value) -> RealtimeResponse {
        strip_audio(response);
        // The audio streamed for this response, on its (first) audio part, as a size.
        let streamed = std::mem::take(&mut self.response_audio);
        if streamed > 0
            && let Some(part) = response
                .get_mut("output")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
                .filter_map(|item| item.get_mut("content")?.as_array_mut())
                .flatten()
                .find(|p| matches!(p["type"].as_str(), Some("audio" | "output_audio")))
            && part.get("audio_bytes").is_none()
        {
            part["audio_bytes"] = streamed.into();
        }
        self.totals.responses += 1;
        if let Some(u) = response.get("usage") {
            let n = |k| u.get(k).and_then(Value::as_u64).unwrap_or(0);
            // Provider numbers: saturate rather than overflow on a hostile count.
            self.totals.input_tokens = self.totals.input_tokens.saturating_add(n("input_tokens"));
            self.totals.output_tokens =
                self.totals.output_tokens.saturating_add(n("output_tokens"));
        }
        let mut request = Map::new();
        if let Some(m) = &self.model {
            request.insert("model".into(), m.clone().into());
        }
        if let Some(i) = &self.instructions {
            request.insert("instructions".into(), i.clone().into());
        }
        if !self.tools.is_empty() {
            request.insert("tools".into(), self.tools.clone().into());
        }
        if let Some(s) = &self.session_id {
            request.insert("session_id".into(), s.clone().into());
        }
        let input: Vec<Value> = std::mem::take(&mut self.pending)
            .into_iter()
            .map(|(_, item)| item)
            .collect();
        request.insert("input".into(), input.into());
        RealtimeResponse {
            request: Value::Object(request),
            response: std::mem::take(response),
        }
    }
}

/// Replaces every `"audio": "<base64>"` member (and `"delta"` of audio parts) under `v` by
/// `"audio_bytes": <decoded size>`.
fn strip_audio(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if let Some(Value::String(b64)) = map.get("audio") {
                let n = b64_len(b64);
                map.remove("audio");
                map.insert("audio_bytes".into(), n.into());
            }
            for child in map.values_mut() {
                strip_audio(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_audio),
        _ => {}
    }
}

/// Decoded size of base64 text.
fn b64_len(s: &str) -> u64 {
    (s.trim_end_matches('=').len() as u64) * 3 / 4
}

fn str_of(ev: &Map<String, Value>, key: &str) -> Option<String> {
    ev.get(key).and_then(Value::as_str).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(s: &mut RealtimeSession, dir: Direction, v: Value) -> Step {
        s.event(dir, v.to_string().as_bytes())
    }

    #[test]
    fn a_spoken_turn_and_a_typed_turn_become_two_response_records() {
        let mut s = RealtimeSession::new(Some("gpt-realtime".into()));
        let c = Direction::Client;
        let srv = Direction::Server;
        ev(
            &mut s,
            c,
            json!({"type": "session.update", "session": {
            "instructions": "Be brief.", "tools": [{"type": "function", "name": "get_weather"}]}}),
        );
        ev(
            &mut s,
            srv,
            json!({"type": "session.created", "session": {"id": "sess_1", "model": "gpt-realtime-2025-08-28"}}),
        );
        // Spoken: 8 bytes of audio (12 base64 chars), committed, transcribed.
        ev(
            &mut s,
            c,
            json!({"type": "input_audio_buffer.append", "audio": "AAAAAAAAAAAA"}),
        );
        ev(
            &mut s,
            srv,
            json!({"type": "input_audio_buffer.committed", "item_id": "item_a"}),
        );
        ev(
            &mut s,
            srv,
            json!({"type": "conversation.item.input_audio_transcription.completed",
            "item_id": "item_a", "content_index": 0, "transcript": "What's the weather?"}),
        );
        assert_eq!(
            ev(
                &mut s,
                srv,
                json!({"type": "response.created", "response": {"id": "resp_1"}})
            ),
            Step::ResponseStarted
        );
        let done = json!({"type": "response.done", "response": {
            "id": "resp_1", "status": "completed",
            "output": [{"type": "message", "role": "assistant", "content": [
                {"type": "output_audio", "transcript": "Sunny.", "audio": "QUJD"}]}],
            "usage": {"input_tokens": 30, "output_tokens": 12}}});
        let Step::ResponseDone(r) = ev(&mut s, srv, done) else {
            panic!("a record at response.done");
        };
        assert_eq!(r.request["model"], "gpt-realtime-2025-08-28");
        assert_eq!(r.request["instructions"], "Be brief.");
        assert_eq!(r.request["tools"], json!(["get_weather"]));
        assert_eq!(r.request["session_id"], "sess_1");
        assert_eq!(
            r.request["input"],
            json!([{"type": "message", "role": "user", "content": [
                {"type": "input_audio", "audio_bytes": 9, "transcript": "What's the weather?"}]}])
        );
        // The audio in the output is replaced by its size.
        let part = &r.response["output"][0]["content"][0];
        assert_eq!(part["audio_bytes"], 3);
        assert!(part.get("audio").is_none());

        // A typed turn with audio inline, a transcript arriving late for the first item.
        ev(
            &mut s,
            c,
            json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "And tomorrow?"}, {"type": "input_audio", "audio": "AAAA"}]}}),
        );
        ev(
            &mut s,
            srv,
            json!({"type": "conversation.item.input_audio_transcription.completed",
            "item_id": "item_a", "transcript": "What's the weather today?"}),
        );
        ev(
            &mut s,
            c,
            json!({"type": "response.create", "response": {"instructions": "Use Celsius."}}),
        );
        let Step::ResponseDone(r) = ev(
            &mut s,
            srv,
            json!({"type": "response.done", "response": {
            "id": "resp_2", "status": "completed", "output": [],
            "usage": {"input_tokens": 50, "output_tokens": 8}}}),
        ) else {
            panic!();
        };
        let input = r.request["input"].as_array().unwrap();
        assert_eq!(input.len(), 3, "{input:?}");
        assert_eq!(
            input[0]["content"][1],
            json!({"type": "input_audio", "audio_bytes": 3})
        );
        assert_eq!(
            input[1]["content"][0]["transcript"],
            "What's the weather today?"
        );
        assert_eq!(input[2]["role"], "system");

        ev(
            &mut s,
            c,
            json!({"type": "input_audio_buffer.append", "audio": "AAAA"}),
        );
        s.audio(Direction::Server, 400);
        // Streamed audio lands on the next response's audio part.
        let Step::ResponseDone(r) = ev(
            &mut s,
            srv,
            json!({"type": "response.done", "response": {
            "output": [{"type": "message", "content": [{"type": "output_audio", "transcript": "Ok."}]}]}}),
        ) else {
            panic!();
        };
        assert_eq!(r.response["output"][0]["content"][0]["audio_bytes"], 300);
        assert_eq!(s.event(c, b"not json"), Step::Continue);
        assert_eq!(
            *s.totals(),
            RealtimeTotals {
                responses: 3,
                input_tokens: 80,
                output_tokens: 20,
                input_audio_bytes: 9 + 3,
                output_audio_bytes: 300,
                events_lost: 1,
            }
        );
    }

    #[test]
    fn pending_items_are_bounded() {
        let mut s = RealtimeSession::new(None);
        for _ in 0..MAX_PENDING + 5 {
            ev(
                &mut s,
                Direction::Client,
                json!({"type": "conversation.item.create",
                "item": {"type": "message", "role": "user", "content": []}}),
            );
        }
        assert_eq!(s.totals().events_lost, 5);
        let Step::ResponseDone(r) = ev(&mut s, Direction::Server, json!({"type": "response.done"}))
        else {
            panic!();
        };
        assert_eq!(r.request["input"].as_array().unwrap().len(), MAX_PENDING);
    }
}
