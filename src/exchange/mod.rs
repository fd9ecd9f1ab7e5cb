//! # The exchange: one intercepted request/response pair, as the proxy saw it.
//!
//! Step 2 of the flow (`proxy → exchange → redact → {export, seal}`). The proxy's capture
//! produces exactly one [`Exchange`] per intercepted request, whatever happened to it
//! (completed, failed upstream, aborted by either side), and hands it to the recording queue.
//!
//! An `Exchange` holds raw captured bytes. Credentials have already been replaced by keyed
//! fingerprints before the value is built (see `proxy::fingerprint`), so nothing downstream
//! ever sees an API key, a bearer token or a cookie. Request bodies and response bodies are
//! kept as the chunks that crossed the wire, boundaries kept (whole frames copied out of the
//! connection's buffers as they passed while the copy stays within 256 KiB, the rest shared:
//! `proxy::tee::Capture`); decoding `Content-Encoding` happens here, off the hot path, with a
//! bound.
//!
//! This module must never touch the network, the rules, OTLP or crypto.

pub mod credentials;
pub mod decode;
pub mod eventstream;
pub mod headers;
pub mod json;
pub mod model;
pub mod operation;
pub mod pricing;
pub mod provider;
pub mod providers;
pub mod queue;
pub mod realtime;
pub mod sse;
pub mod traceparent;

pub use headers::Headers;
pub use model::{Conversation, Usage};
pub use operation::Operation;
pub use pricing::Pricing;
pub use provider::{ParseOptions, parse};
pub use providers::Provider;
pub use traceparent::TraceParent;

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};

use crate::counters::series::ChunkGaps;

/// The request ID: a UUIDv7, so IDs sort by creation time. Sent to the app as
/// `x-veil-request-id` and used as the key of the sealed store.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExchangeId(uuid::Uuid);

impl ExchangeId {
    /// A fresh, time-ordered ID.
    pub fn new() -> Self {
        ExchangeId(uuid::Uuid::now_v7())
    }

    /// The ID as text, the same as `to_string()` gives (hyphenated, lowercase, 36 bytes),
    /// written into `buf`: for the response header the proxy adds to every recorded exchange,
    /// without a `String` or the formatting machinery on the forwarding path.
    pub fn encode<'b>(&self, buf: &'b mut [u8; 36]) -> &'b str {
        self.0.hyphenated().encode_lower(buf)
    }

    /// The 16 raw bytes (big-endian UUID layout).
    pub fn as_bytes(&self) -> &[u8; 16] {
        self.0.as_bytes()
    }

    /// Rebuilds an ID from its 16 raw bytes.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        ExchangeId(uuid::Uuid::from_bytes(bytes))
    }

    /// The creation time embedded in a UUIDv7, if this is one.
    pub fn timestamp(&self) -> Option<SystemTime> {
        let ts = self.0.get_timestamp()?;
        let (secs, nanos) = ts.to_unix();
        Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
    }
}

impl Default for ExchangeId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for ExchangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl fmt::Debug for ExchangeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ExchangeId({self})")
    }
}

/// Serialized as its text form (`0190a5e2-…`, hyphenated lowercase UUID), the form every
/// operator-facing document uses (admin API, receipts).
impl serde::Serialize for ExchangeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parsed from its text form; anything else is an error naming the input's first 64
/// characters.
impl<'de> serde::Deserialize<'de> for ExchangeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Error returned when a string is not a request ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseIdError(String);

impl fmt::Display for ParseIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "not a request id (expected a UUID): {:?}", self.0)
    }
}

impl std::error::Error for ParseIdError {}

impl FromStr for ExchangeId {
    type Err = ParseIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        uuid::Uuid::parse_str(s.trim())
            .map(ExchangeId)
            .map_err(|_| ParseIdError(s.chars().take(64).collect()))
    }
}

/// How the app reached veil for this exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `CONNECT host:port` to an intercepted host, TLS terminated with a minted leaf.
    Intercept,
    /// An origin-form request to a named gateway route (`/openai/v1/...`).
    Gateway {
        /// The route name (`openai`, `anthropic`, ...).
        name: String,
    },
    /// An absolute-form plain-HTTP proxy request (`GET http://host/path`).
    PlainHttp,
}

/// Where the exchange was sent: what the app addressed, before any `--resolve` override.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// `https` or `http` (borrowed when the proxy captured it: no allocation per exchange).
    pub scheme: Cow<'static, str>,
    /// Host name as the app addressed it (lowercase), e.g. `api.openai.com`.
    pub host: String,
    /// Port as the app addressed it.
    pub port: u16,
}

/// A captured body: the chunks that crossed the wire, bounded.
#[derive(Clone, Default)]
pub struct Body {
    /// The captured chunks, in order. Their total length is at most the capture limit.
    pub chunks: Vec<Bytes>,
    /// Total bytes that crossed the wire, including any beyond the capture limit.
    pub wire_len: u64,
    /// True when `wire_len` exceeded the capture limit and `chunks` hold only a prefix.
    pub truncated: bool,
    /// The `Content-Encoding` the bytes are in (`gzip`, `br`, `zstd`, `deflate`), if any.
    pub content_encoding: Option<String>,
}

impl Body {
    /// The captured bytes as one buffer (no copy when there is a single chunk).
    pub fn bytes(&self) -> Bytes {
        match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks[0].clone(),
            _ => {
                let len = self.chunks.iter().map(Bytes::len).sum();
                let mut buf = BytesMut::with_capacity(len);
                for chunk in &self.chunks {
                    buf.extend_from_slice(chunk);
                }
                buf.freeze()
            }
        }
    }

    /// Number of captured bytes (not counting what was cut off by the limit).
    pub fn captured_len(&self) -> usize {
        self.chunks.iter().map(Bytes::len).sum()
    }

    /// The body with its `Content-Encoding` removed, at most `limit` decoded bytes.
    ///
    /// Returns the bytes unchanged when there is no encoding. A body that decodes to more
    /// than `limit` bytes (a decompression bomb, or a very large body) is an error, never an
    /// allocation of unbounded size.
    pub fn decoded(&self, limit: usize) -> Result<Bytes, decode::DecodeError> {
        decode::decode(self.content_encoding.as_deref(), &self.bytes(), limit)
    }
}

impl fmt::Debug for Body {
    // Bodies may hold PII: Debug shows sizes only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Body")
            .field("captured_len", &self.captured_len())
            .field("wire_len", &self.wire_len)
            .field("truncated", &self.truncated)
            .field("content_encoding", &self.content_encoding)
            .finish()
    }
}

/// Offsets from [`Exchange::started_at`] (monotonic clock).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timings {
    /// The last byte of the request body was sent upstream.
    pub request_end: Option<Duration>,
    /// Upstream response headers arrived.
    pub response_headers: Option<Duration>,
    /// The first response body byte arrived from upstream.
    pub first_byte: Option<Duration>,
    /// The exchange ended (completed, failed or aborted).
    pub end: Duration,
    /// veil's own time on the request: from the request head reaching veil's forwarding to
    /// the upstream request being started (`veil.added_latency`, `direction=request`). Set
    /// when a response head arrived; never sealed (an operational number, not the exchange).
    pub added_request: Option<Duration>,
    /// veil's own time on the response head: from its arrival from upstream to its hand-off
    /// to the app's connection (`veil.added_latency`, `direction=response`). Never sealed.
    pub added_response: Option<Duration>,
    /// Gaps between the response body's consecutive data chunks (streams:
    /// `gen_ai.client.operation.time_per_output_chunk`). Never sealed.
    pub chunk_gaps: ChunkGaps,
}

/// Why an upstream request failed before a response arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Name resolution or TCP connect failed.
    Connect,
    /// The TLS handshake failed (certificate not trusted, wrong name, protocol error).
    Tls,
    /// No response headers within the upstream timeout.
    Timeout,
    /// The connection broke or the peer spoke invalid HTTP.
    Protocol,
}

impl UpstreamFailure {
    /// Short stable name (`connect`, `tls`, `timeout`, `protocol`).
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Tls => "tls",
            UpstreamFailure::Timeout => "timeout",
            UpstreamFailure::Protocol => "protocol",
        }
    }
}

/// How the exchange ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Both bodies were passed through to the end.
    Complete,
    /// The app went away (or reset the stream) before the response ended.
    ClientAborted,
    /// The upstream connection broke mid-response.
    UpstreamAborted {
        /// What went wrong, for operators (no content).
        reason: String,
    },
    /// No response from upstream; veil answered with a 502/504 itself.
    UpstreamFailed {
        /// The failure class.
        kind: UpstreamFailure,
        /// What went wrong, for operators (no content).
        reason: String,
    },
}

impl Outcome {
    /// True for the two aborted variants.
    pub fn is_aborted(&self) -> bool {
        matches!(
            self,
            Outcome::ClientAborted | Outcome::UpstreamAborted { .. }
        )
    }

    /// Which of the four endings this is, without the operator-facing details.
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::Complete => OutcomeKind::Complete,
            Outcome::ClientAborted => OutcomeKind::ClientAborted,
            Outcome::UpstreamAborted { .. } => OutcomeKind::UpstreamAborted,
            Outcome::UpstreamFailed { .. } => OutcomeKind::UpstreamFailed,
        }
    }

    /// Short stable name (`complete`, `client_aborted`, `upstream_aborted`, `upstream_failed`).
    pub fn as_str(&self) -> &'static str {
        self.kind().as_str()
    }
}

/// How an exchange ended, without the details: what a [`Record`](crate::record::Record)
/// carries (the `reason` strings of [`Outcome`] stay in the sealed copy and the logs).
///
/// An enum rather than a `String` so the exporter's "failed" test and the ledger column
/// cannot drift from the four names (rejected: reusing [`Outcome`], whose free-text reasons
/// must not reach the record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutcomeKind {
    /// `complete`: both bodies were passed through to the end.
    Complete,
    /// `client_aborted`: the app went away before the response ended.
    ClientAborted,
    /// `upstream_aborted`: the upstream connection broke mid-response.
    UpstreamAborted,
    /// `upstream_failed`: no response from upstream; veil answered itself.
    UpstreamFailed,
}

impl OutcomeKind {
    /// The wire name, as written to `veil.outcome` and the ledger's `outcome` column:
    /// `complete`, `client_aborted`, `upstream_aborted`, `upstream_failed`.
    pub const fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Complete => "complete",
            OutcomeKind::ClientAborted => "client_aborted",
            OutcomeKind::UpstreamAborted => "upstream_aborted",
            OutcomeKind::UpstreamFailed => "upstream_failed",
        }
    }

    /// True for the two aborted kinds.
    pub const fn is_aborted(self) -> bool {
        matches!(
            self,
            OutcomeKind::ClientAborted | OutcomeKind::UpstreamAborted
        )
    }
}

impl fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A WebSocket session relayed on an intercepted host (veil#17), counted from the frame
/// headers (RFC 6455 §5.2) as they cross, never from their content. The bytes each way are
/// the exchange's body `wire_len`s; the session's length is its duration.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WebSocketSession {
    /// Frames the app sent, control frames (ping, pong, close) included.
    pub frames_sent: u64,
    /// Frames the upstream sent, control frames included.
    pub frames_received: u64,
    /// The status code of the first Close frame either side sent (RFC 6455 §7.4: 1000
    /// normal, 1001 going away, 1006 is never sent); `None` when the session ended without
    /// one or the frame carried no code.
    pub close_code: Option<u16>,
    /// True when a frame header could not be read (a peer that is not speaking RFC 6455
    /// after its 101): the bytes were still relayed, and the frame counts stop there.
    pub unframed: bool,
    /// On one model response of an OpenAI Realtime session (its own exchange, made at its
    /// `response.done`): the request ID of the session it belongs to. Its frame counts are 0.
    #[serde(default)]
    pub session: Option<String>,
    /// On a Realtime session's own exchange: its totals over every response.
    #[serde(default)]
    pub realtime: Option<realtime::RealtimeTotals>,
}

/// `version` as an [`Exchange`] names it: `HTTP/0.9`, `HTTP/1.0`, `HTTP/1.1`, `HTTP/2.0`,
/// `HTTP/3.0` (the `http` crate's `Debug` names), borrowed for every version it knows.
pub fn version_name(version: http::Version) -> Cow<'static, str> {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9".into(),
        http::Version::HTTP_10 => "HTTP/1.0".into(),
        http::Version::HTTP_11 => "HTTP/1.1".into(),
        http::Version::HTTP_2 => "HTTP/2.0".into(),
        http::Version::HTTP_3 => "HTTP/3.0".into(),
        other => format!("{other:?}").into(),
    }
}

/// `method` as an [`Exchange`] names it (RFC 9110's token, as sent): borrowed for the
/// methods RFC 9110 and RFC 5789 define, copied for an extension method.
pub fn method_name(method: &http::Method) -> Cow<'static, str> {
    const KNOWN: [&str; 9] = [
        "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "CONNECT", "PATCH", "TRACE",
    ];
    let name = method.as_str();
    match KNOWN.iter().find(|k| **k == name) {
        Some(k) => Cow::Borrowed(k),
        None => name.to_owned().into(),
    }
}

/// One intercepted request/response pair. Built once by the proxy's capture, read by
/// every later step; nothing mutates it after the hand-off.
#[derive(Debug, Clone)]
pub struct Exchange {
    /// The request ID (also in `x-veil-request-id` on the response).
    pub id: ExchangeId,
    /// Wall-clock time the request arrived.
    pub started_at: SystemTime,
    /// Monotonic offsets of the exchange's milestones.
    pub timings: Timings,
    /// The app's address, when known.
    pub client_addr: Option<SocketAddr>,
    /// How the app reached veil.
    pub route: Route,
    /// What the app addressed.
    pub upstream: Upstream,
    /// HTTP version the app spoke to veil (`HTTP/1.1`, `HTTP/2.0`; see [`version_name`]).
    pub client_version: Cow<'static, str>,
    /// Request method (see [`method_name`]).
    pub method: Cow<'static, str>,
    /// Path and query as sent upstream, with credential query parameters (`key=`) fingerprinted.
    pub path: String,
    /// Request headers as sent upstream (lowercase names, wire order; credentials
    /// fingerprinted, `x-veil-*` removed).
    pub request_headers: Headers,
    /// The `x-veil-*` request headers the app sent (name lowercase, prefix kept), stripped
    /// before the request went upstream. E.g. `("x-veil-feature", "seo-audit")`.
    pub tags: Headers,
    /// Keyed fingerprint of the API key the app sent (`fp_…`), if any: attributes spend per key.
    pub api_key_fingerprint: Option<String>,
    /// The request body as captured.
    pub request_body: Body,
    /// Upstream response status (absent when no response arrived).
    pub status: Option<u16>,
    /// Response headers as received (credentials such as `set-cookie` fingerprinted).
    pub response_headers: Headers,
    /// The response body as captured.
    pub response_body: Body,
    /// How it ended.
    pub outcome: Outcome,
    /// The WebSocket session, when the request was an upgrade the upstream accepted (101).
    pub websocket: Option<WebSocketSession>,
}

impl Exchange {
    /// The first value of request header `name` (lowercase).
    pub fn request_header(&self, name: &str) -> Option<&str> {
        find_header(&self.request_headers, name)
    }

    /// The first value of response header `name` (lowercase).
    pub fn response_header(&self, name: &str) -> Option<&str> {
        find_header(&self.response_headers, name)
    }

    /// The value of tag `x-veil-<name>`, e.g. `tag("feature")`.
    pub fn tag(&self, name: &str) -> Option<&str> {
        self.tags
            .iter()
            .find(|(k, _)| k.strip_prefix("x-veil-") == Some(name))
            .map(|(_, v)| v)
    }

    /// True when either body was cut at the capture limit.
    pub fn is_truncated(&self) -> bool {
        self.request_body.truncated || self.response_body.truncated
    }
}

fn find_header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers.get(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_and_method_names_are_the_http_crates_and_borrowed_when_known() {
        use http::{Method, Version};
        for v in [
            Version::HTTP_09,
            Version::HTTP_10,
            Version::HTTP_11,
            Version::HTTP_2,
            Version::HTTP_3,
        ] {
            let name = version_name(v);
            assert_eq!(name, format!("{v:?}"));
            assert!(matches!(name, Cow::Borrowed(_)), "{v:?} allocated");
        }
        for m in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::HEAD,
            Method::OPTIONS,
            Method::CONNECT,
            Method::PATCH,
            Method::TRACE,
        ] {
            let name = method_name(&m);
            assert_eq!(name, m.as_str());
            assert!(matches!(name, Cow::Borrowed(_)), "{m} allocated");
        }
        let odd = Method::from_bytes(b"PROPFIND").unwrap();
        assert_eq!(method_name(&odd), "PROPFIND");
    }

    #[test]
    fn id_round_trips_and_orders_by_time() {
        let a = ExchangeId::new();
        std::thread::sleep(Duration::from_millis(2));
        let b = ExchangeId::new();
        assert!(a < b);
        assert_eq!(a.to_string().parse::<ExchangeId>().unwrap(), a);
        assert_eq!(ExchangeId::from_bytes(*a.as_bytes()), a);
        assert!(a.timestamp().unwrap() <= SystemTime::now());
        assert!("not-an-id".parse::<ExchangeId>().is_err());
        // The header's text is the ID's text, which parses back to it.
        let mut buf = [0; 36];
        assert_eq!(a.encode(&mut buf), a.to_string());
        assert_eq!(b.encode(&mut buf).parse::<ExchangeId>().unwrap(), b);
    }

    #[test]
    fn body_concatenates_chunks_and_hides_content_in_debug() {
        let body = Body {
            chunks: vec![
                Bytes::from_static(b"secret-"),
                Bytes::from_static(b"prompt"),
            ],
            wire_len: 13,
            truncated: false,
            content_encoding: None,
        };
        assert_eq!(&body.bytes()[..], b"secret-prompt");
        assert_eq!(body.captured_len(), 13);
        assert!(!format!("{body:?}").contains("secret"));
    }
}
