//! # The unsealed exchange as the admin API answers it and `veil unseal` prints it.

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::exchange::{Exchange, ExchangeId, Headers, Outcome, Route};

/// Decoded bodies larger than this are shown as base64 of the captured bytes instead.
const DECODE_LIMIT: usize = 64 << 20;

/// `GET /v1/exchanges/{id}`, `200`: one unsealed exchange, every field, as `veil unseal`
/// prints it. Raw content (prompts, answers, headers): treat the document like the sealed
/// store itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeView {
    /// The request ID.
    pub id: ExchangeId,
    /// Wall-clock arrival of the request: RFC 3339 UTC with milliseconds.
    pub started_at: String,
    /// Milestones, in milliseconds after `started_at`.
    pub timings_ms: TimingsView,
    /// The app's address (`ip:port`), when known.
    pub client_addr: Option<SocketAddr>,
    /// How the app reached veil.
    pub route: RouteView,
    /// What the app addressed (before any `--resolve` override).
    pub upstream: UpstreamView,
    /// HTTP version the app spoke to veil (`HTTP/1.1`, `HTTP/2.0`).
    pub client_version: String,
    /// Request method.
    pub method: String,
    /// Path and query as sent upstream (credential query parameters fingerprinted).
    pub path: String,
    /// Request headers as sent upstream, `[name, value]` pairs in wire order, names
    /// lowercase; credentials are fingerprints (`fp_…`).
    pub request_headers: Headers,
    /// The `x-veil-*` headers the app sent (stripped before upstream), `[name, value]` pairs.
    pub tags: Headers,
    /// Keyed fingerprint of the API key the app sent (`fp_…`), if any.
    pub api_key_fingerprint: Option<String>,
    /// The request body.
    pub request_body: BodyView,
    /// Upstream response status; `null` when no response arrived.
    pub status: Option<u16>,
    /// Response headers as received, `[name, value]` pairs (credentials fingerprinted).
    pub response_headers: Headers,
    /// The response body.
    pub response_body: BodyView,
    /// How the exchange ended.
    pub outcome: OutcomeView,
    /// The WebSocket session's frame counts and close code, for an accepted upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<crate::exchange::WebSocketSession>,
}

/// Milestones of an exchange in milliseconds (fractional) after its start; `null` when it was
/// not reached.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimingsView {
    /// The last request body byte was sent upstream.
    pub request_end: Option<f64>,
    /// Upstream response headers arrived.
    pub response_headers: Option<f64>,
    /// The first response body byte arrived.
    pub first_byte: Option<f64>,
    /// The exchange ended (completed, failed or aborted).
    pub end: f64,
}

/// How the app reached veil: `{"kind": "intercept" | "gateway" | "plain_http", …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RouteView {
    /// `CONNECT` to an intercepted host, TLS terminated with a minted leaf. (`{}`: a struct
    /// variant, so an unknown field next to `kind` is refused like everywhere else.)
    Intercept {},
    /// A request to a named gateway route (`/openai/v1/...`).
    Gateway {
        /// The route name (`openai`, `anthropic`, ...).
        name: String,
    },
    /// An absolute-form plain-HTTP proxy request.
    PlainHttp {},
}

/// Where the exchange was sent, as the app addressed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamView {
    /// `https` or `http`.
    pub scheme: String,
    /// Host name, lowercase.
    pub host: String,
    /// Port.
    pub port: u16,
}

/// A captured body: always the captured bytes (`wire_base64`), plus exactly one of `text`
/// (decoded, UTF-8), `decoded_base64` (decoded, not UTF-8) or `decode_error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodyView {
    /// Bytes captured (at most the capture limit).
    pub captured_len: u64,
    /// Bytes that crossed the wire, including any beyond the capture limit.
    pub wire_len: u64,
    /// True when only a prefix was captured (`wire_len` > capture limit).
    pub truncated: bool,
    /// `Content-Encoding` of the captured bytes (`gzip`, `br`, `zstd`, `deflate`), if any.
    pub content_encoding: Option<String>,
    /// Number of chunks the body arrived in.
    pub chunks: u64,
    /// The captured bytes as they crossed the wire (still encoded), standard base64.
    pub wire_base64: String,
    /// The body after removing `Content-Encoding`, when that is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The body after removing `Content-Encoding`, when that is not UTF-8: standard base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decoded_base64: Option<String>,
    /// Why the body could not be decoded (bad encoding, or more than 64 MiB decoded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_error: Option<String>,
}

impl BodyView {
    /// The view of a captured body.
    pub fn of(b: &crate::exchange::Body) -> Self {
        let raw = b.bytes();
        let b64 = &base64::engine::general_purpose::STANDARD;
        let mut v = BodyView {
            captured_len: raw.len() as u64,
            wire_len: b.wire_len,
            truncated: b.truncated,
            content_encoding: b.content_encoding.clone(),
            chunks: b.chunks.len() as u64,
            wire_base64: b64.encode(&raw),
            text: None,
            decoded_base64: None,
            decode_error: None,
        };
        match b.decoded(DECODE_LIMIT) {
            Ok(d) => match std::str::from_utf8(&d) {
                Ok(text) => v.text = Some(text.to_string()),
                Err(_) => v.decoded_base64 = Some(b64.encode(&d)),
            },
            Err(e) => v.decode_error = Some(e.to_string()),
        }
        v
    }

    /// The captured bytes (`wire_base64` decoded); `None` when it is not valid base64.
    pub fn wire_bytes(&self) -> Option<Vec<u8>> {
        base64::engine::general_purpose::STANDARD
            .decode(&self.wire_base64)
            .ok()
    }
}

/// How the exchange ended: `{"kind": "complete" | "client_aborted" | "upstream_aborted" |
/// "upstream_failed", …}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OutcomeView {
    /// Both bodies were passed through to the end. (`{}`: a struct variant, so an unknown
    /// field next to `kind` is refused like everywhere else.)
    Complete {},
    /// The app went away before the response ended.
    ClientAborted {},
    /// The upstream connection broke mid-response.
    UpstreamAborted {
        /// What went wrong, for operators (no content).
        reason: String,
    },
    /// No response from upstream; veil answered 502/504 itself.
    UpstreamFailed {
        /// The failure class: `connect`, `tls`, `timeout` or `protocol`.
        failure: String,
        /// What went wrong, for operators (no content).
        reason: String,
    },
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl ExchangeView {
    /// The view of an unsealed exchange: every field; bodies as `text` (after
    /// `Content-Encoding` is removed) when UTF-8, else `decoded_base64`, and always
    /// `wire_base64`.
    pub fn of(ex: &Exchange) -> Self {
        ExchangeView {
            id: ex.id,
            started_at: crate::seal::audit::rfc3339(ex.started_at),
            timings_ms: TimingsView {
                request_end: ex.timings.request_end.map(ms),
                response_headers: ex.timings.response_headers.map(ms),
                first_byte: ex.timings.first_byte.map(ms),
                end: ms(ex.timings.end),
            },
            client_addr: ex.client_addr,
            route: match &ex.route {
                Route::Intercept => RouteView::Intercept {},
                Route::Gateway { name } => RouteView::Gateway { name: name.clone() },
                Route::PlainHttp => RouteView::PlainHttp {},
            },
            upstream: UpstreamView {
                scheme: ex.upstream.scheme.to_string(),
                host: ex.upstream.host.clone(),
                port: ex.upstream.port,
            },
            client_version: ex.client_version.to_string(),
            method: ex.method.to_string(),
            path: ex.path.clone(),
            request_headers: ex.request_headers.clone(),
            tags: ex.tags.clone(),
            api_key_fingerprint: ex.api_key_fingerprint.clone(),
            request_body: BodyView::of(&ex.request_body),
            status: ex.status,
            response_headers: ex.response_headers.clone(),
            response_body: BodyView::of(&ex.response_body),
            outcome: match &ex.outcome {
                Outcome::Complete => OutcomeView::Complete {},
                Outcome::ClientAborted => OutcomeView::ClientAborted {},
                Outcome::UpstreamAborted { reason } => OutcomeView::UpstreamAborted {
                    reason: reason.clone(),
                },
                Outcome::UpstreamFailed { kind, reason } => OutcomeView::UpstreamFailed {
                    failure: kind.as_str().to_string(),
                    reason: reason.clone(),
                },
            },
            websocket: ex.websocket.clone(),
        }
    }
}
