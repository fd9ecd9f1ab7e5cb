//! # Tee: both bodies forwarded frame by frame, copied into a bounded capture, one `Exchange` out.
//!
//! The forward stage starts a [`Recording`] for a recorded request (its [`RequestMeta`] and
//! the [`Sink`] it goes to) and wraps the request body and, later, the response body in a
//! [`TeeBody`]. Each tee forwards every frame as it arrives; data frames are also copied into
//! the tee's own [`Capture`] (from the frame that would take the copy past [`COPY_MAX`] on,
//! cloned: a `Bytes` refcount bump), up to the limit. No lock is
//! taken per frame: each tee deposits its capture into the shared `Recording` once, when its
//! body ends or is dropped.
//!
//! An exchange ends exactly once by construction: the `Recording` sits behind an `Arc` held by
//! the request tee, the response tee and the handler, and it emits its `Exchange` in `Drop`,
//! when the last of them lets go, whatever happened (end of stream, error, client hang-up).
//! The hand-off uses a slot reserved before the request went upstream (best-effort: without
//! waiting, and a request the queue has no room for is not recorded at all; audit required:
//! waiting up to `queue_wait`), or a `try_send` at the end for a WebSocket session: the hot
//! path never waits on recording in best-effort mode. This module never parses, logs or looks into a body.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use crate::counters::series::ChunkGaps;
use crate::exchange::queue::{ExchangeSender, Reservation};
use crate::exchange::{
    Body, Exchange, ExchangeId, Headers, Outcome, Route, Timings, Upstream, UpstreamFailure,
    WebSocketSession,
};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

/// Where a finished exchange goes.
#[derive(Debug)]
pub enum Sink {
    /// Best-effort, handed over at the end with `try_send` (an HTTP request was first admitted
    /// with [`ExchangeSender::try_admit`], which reserves nothing); a full queue drops and
    /// counts (in the queue).
    BestEffort(ExchangeSender),
    /// Audit-required: room reserved before the request went upstream.
    Reserved(Reservation),
}

impl Sink {
    fn emit(self, exchange: Exchange) {
        match self {
            // A refusal is counted and logged by the queue.
            Sink::BestEffort(tx) => {
                let _ = tx.try_send(exchange);
            }
            Sink::Reserved(r) => r.send(exchange),
        }
    }
}

/// Request-side facts fixed when the request arrives.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// Request ID.
    pub id: ExchangeId,
    /// Wall-clock arrival.
    pub started_at: SystemTime,
    /// Monotonic arrival (timings are offsets from it).
    pub t0: Instant,
    /// App address.
    pub client_addr: Option<std::net::SocketAddr>,
    /// How the app reached veil.
    pub route: Route,
    /// What the app addressed.
    pub upstream: Upstream,
    /// App's HTTP version.
    pub client_version: std::borrow::Cow<'static, str>,
    /// Method.
    pub method: std::borrow::Cow<'static, str>,
    /// Path and query, credentials fingerprinted.
    pub path: String,
    /// Request headers, credentials fingerprinted.
    pub headers: Headers,
    /// `x-veil-*` tags.
    pub tags: Headers,
    /// API key fingerprint.
    pub api_key_fingerprint: Option<String>,
}

/// How a tee's body ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// Reached end of stream.
    Complete,
    /// The inner body returned an error.
    Error(String),
    /// Dropped before the end (the reader went away).
    Dropped,
}

/// How a relayed WebSocket session stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEnd {
    /// Either side closed it (after a close handshake, or a clean end of its stream).
    Closed,
    /// The relay failed (a reset, a TLS error), with the reason.
    Broken(String),
    /// veil cut it: nothing crossed it for `tunnel_idle_timeout`, or veil shut down.
    Cut,
}

/// One exchange being recorded; emits its [`Exchange`] when dropped.
#[derive(Debug)]
pub struct Recording {
    meta: Option<RequestMeta>,
    sink: Option<Sink>,
    request_body: Body,
    request_end: Option<(Instant, End)>,
    status: Option<u16>,
    response_headers: Headers,
    response_headers_at: Option<Instant>,
    /// veil's own time: (before the upstream send, on the response head).
    added: Option<(Duration, Duration)>,
    response_body: Body,
    first_byte: Option<Instant>,
    chunk_gaps: ChunkGaps,
    response_end: Option<(Instant, End)>,
    failure: Option<(UpstreamFailure, String)>,
    websocket: Option<WebSocketSession>,
}

/// Shared handle to a [`Recording`].
pub type RecordingRef = Arc<Mutex<Recording>>;

impl Recording {
    /// Starts recording an exchange that will go to `sink`.
    pub fn start(meta: RequestMeta, sink: Sink) -> RecordingRef {
        Arc::new(Mutex::new(Recording {
            meta: Some(meta),
            sink: Some(sink),
            request_body: Body::default(),
            request_end: None,
            status: None,
            response_headers: Headers::new(),
            response_headers_at: None,
            added: None,
            response_body: Body::default(),
            first_byte: None,
            chunk_gaps: ChunkGaps::new(),
            response_end: None,
            failure: None,
            websocket: None,
        }))
    }

    /// Notes the upstream response head, which arrived at `arrived` for a request whose
    /// upstream send started at `sent`: veil's own time is `sent - t0` on the request and the
    /// time from `arrived` to now (this call is the last step before the head goes back to
    /// the app) on the response.
    pub fn response_head(
        &mut self,
        status: u16,
        headers: Headers,
        content_encoding: Option<String>,
        sent: Instant,
        arrived: Instant,
    ) {
        self.status = Some(status);
        self.response_headers = headers;
        self.response_headers_at = Some(arrived);
        if let Some(meta) = &self.meta {
            self.added = Some((sent.saturating_duration_since(meta.t0), arrived.elapsed()));
        }
        self.response_body.content_encoding = content_encoding;
    }

    /// Notes that no response arrived because the upstream failed.
    pub fn upstream_failed(&mut self, kind: UpstreamFailure, reason: String) {
        self.failure = Some((kind, reason));
    }

    /// Notes how a relayed WebSocket session ended: its frame counts and close code, the
    /// bytes each way (the bodies' `wire_len`; nothing is captured), and how the relay
    /// stopped (outcome `complete`, `upstream_aborted` for a broken relay, `client_aborted`
    /// when veil or the idle limit cut it).
    pub fn websocket_ended(
        &mut self,
        session: WebSocketSession,
        (sent, received): (u64, u64),
        end: SessionEnd,
    ) {
        let now = Instant::now();
        self.request_body.wire_len = sent;
        self.response_body.wire_len = received;
        self.request_end = Some((now, End::Complete));
        self.response_end = Some((
            now,
            match end {
                SessionEnd::Closed => End::Complete,
                SessionEnd::Broken(reason) => End::Error(reason),
                SessionEnd::Cut => End::Dropped,
            },
        ));
        self.websocket = Some(session);
    }

    /// The request facts, until the exchange is emitted.
    pub fn meta(&self) -> Option<&RequestMeta> {
        self.meta.as_ref()
    }

    /// Makes this the exchange of one OpenAI Realtime response (see `proxy::realtime`):
    /// status `101` (the session's), the bodies built at its `response.done` as JSON, and
    /// `session` (the session's request id) in its WebSocket facts. Complete when emitted.
    pub fn realtime_response(&mut self, request: Bytes, response: Bytes, session: String) {
        let now = Instant::now();
        let body = |b: Bytes| Body {
            wire_len: b.len() as u64,
            chunks: vec![b],
            truncated: false,
            content_encoding: None,
        };
        self.request_body = body(request);
        self.response_body = body(response);
        self.status = Some(101);
        self.response_headers = [("content-type", "application/json")].into_iter().collect();
        self.response_headers_at = Some(now);
        self.request_end = Some((now, End::Complete));
        self.response_end = Some((now, End::Complete));
        self.websocket = Some(WebSocketSession {
            session: Some(session),
            ..WebSocketSession::default()
        });
    }

    /// Sets the request body's content encoding (known from the request head).
    pub fn request_encoding(&mut self, content_encoding: Option<String>) {
        self.request_body.content_encoding = content_encoding;
    }

    /// True when the request body ended with an error from the app's side.
    pub fn request_body_failed(&self) -> bool {
        matches!(self.request_end, Some((_, End::Error(_))))
    }

    fn outcome(&self) -> Outcome {
        if let Some((kind, reason)) = &self.failure {
            if self.request_body_failed() {
                return Outcome::ClientAborted;
            }
            return Outcome::UpstreamFailed {
                kind: *kind,
                reason: reason.clone(),
            };
        }
        match &self.response_end {
            Some((_, End::Complete)) => Outcome::Complete,
            Some((_, End::Error(reason))) => Outcome::UpstreamAborted {
                reason: reason.clone(),
            },
            Some((_, End::Dropped)) | None => Outcome::ClientAborted,
        }
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        let (Some(meta), Some(sink)) = (self.meta.take(), self.sink.take()) else {
            return;
        };
        let now = Instant::now();
        let since = |t: Instant| t.saturating_duration_since(meta.t0);
        let end = self.response_end.as_ref().map_or(now, |(t, _)| *t);
        let exchange = Exchange {
            id: meta.id,
            started_at: meta.started_at,
            timings: Timings {
                request_end: self.request_end.as_ref().map(|(t, _)| since(*t)),
                response_headers: self.response_headers_at.map(since),
                first_byte: self.first_byte.map(since),
                end: since(end),
                added_request: self.added.map(|a| a.0),
                added_response: self.added.map(|a| a.1),
                chunk_gaps: std::mem::take(&mut self.chunk_gaps),
            },
            client_addr: meta.client_addr,
            route: meta.route,
            upstream: meta.upstream,
            client_version: meta.client_version,
            method: meta.method,
            path: meta.path,
            request_headers: meta.headers,
            tags: meta.tags,
            api_key_fingerprint: meta.api_key_fingerprint,
            request_body: std::mem::take(&mut self.request_body),
            status: self.status,
            response_headers: std::mem::take(&mut self.response_headers),
            response_body: std::mem::take(&mut self.response_body),
            outcome: self.outcome(),
            websocket: self.websocket.take(),
        };
        sink.emit(exchange);
    }
}

/// A bounded capture of one body's data frames.
///
/// Its frames are copied as they pass into one buffer of the capture's own, whole frames
/// while the total stays within [`COPY_MAX`]. A frame's bytes are a slice of the connection's
/// read buffer (hyper's, or rustls' for h2); a capture that kept that slice kept the buffer
/// alive until the body ended, so hyper could not reuse it and read the next chunk into new
/// memory. Streams paid for it in page faults on the forwarding threads (~27 per stream of 50
/// chunks, from the allocator's purged pages; `perf record -e page-faults` during
/// `LOAD_ONLY=ttfc`) and every body in the recording queue pinned a read buffer (veil's peak
/// RSS at 64 connections was ~196 MB before bodies were copied at their end, at stop 38).
/// The frame that would take the copy past `COPY_MAX`, and every frame after it, is kept as
/// the shared frame it came in: large frames fill the buffers they pin, and copying them
/// would cost more than it saves.
#[derive(Debug)]
pub struct Capture {
    /// The copied frames, back to back; its capacity never exceeds `COPY_MAX`.
    copied: Vec<u8>,
    /// Where each copied chunk ends in `copied`, in order.
    ends: Vec<usize>,
    /// The chunks after those, as forwarded (shared).
    shared: Vec<Bytes>,
    captured: usize,
    wire_len: u64,
    truncated: bool,
    limit: usize,
}

/// Whole frames are copied as they arrive while a capture holds at most this many bytes
/// ([`Capture`]); the rest of a body is kept as the frames it came in.
pub const COPY_MAX: usize = 256 << 10;

impl Capture {
    /// An empty capture keeping at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Capture {
            copied: Vec::new(),
            ends: Vec::new(),
            shared: Vec::new(),
            captured: 0,
            wire_len: 0,
            truncated: false,
            limit,
        }
    }

    /// Records one data frame: copied while the copy stays within [`COPY_MAX`] bytes, a shared
    /// clone from the first frame that would not fit; cut at the limit, which marks the
    /// capture truncated.
    pub fn push(&mut self, data: &Bytes) {
        self.wire_len += data.len() as u64;
        let take = data.len().min(self.limit - self.captured);
        if take < data.len() {
            self.truncated = true;
        }
        if take == 0 {
            return;
        }
        self.captured += take;
        let need = self.copied.len() + take;
        if self.shared.is_empty() && need <= COPY_MAX {
            if need > self.copied.capacity() {
                // Exact for a body that comes in one frame; doubling after that, never past
                // COPY_MAX (`reserve_exact`: `reserve` would double past it on its own), so a
                // stream of small chunks is copied about twice while it arrives.
                let capacity = need.max(self.copied.capacity() * 2).min(COPY_MAX);
                self.copied.reserve_exact(capacity - self.copied.len());
            }
            self.copied.extend_from_slice(&data[..take]);
            self.ends.push(self.copied.len());
        } else if take == data.len() {
            self.shared.push(data.clone());
        } else {
            self.shared.push(data.slice(..take));
        }
    }

    /// The captured body, its chunks as they crossed the wire (the copied ones are slices of
    /// one buffer), without a content encoding.
    fn into_body(self) -> Body {
        let mut copied = self.copied;
        let len = copied.len();
        // A buffer that grew by doubling may hold up to twice its bytes; one that would waste
        // more than a quarter is shrunk to its exact size (a copy, unless the allocator shrinks
        // it in place), so a body waiting in the recording queue holds about what the queue
        // counts.
        if copied.capacity() - len > len / 4 {
            copied.shrink_to_fit();
        }
        let mut all = Bytes::from(copied);
        let mut chunks = Vec::with_capacity(self.ends.len() + self.shared.len());
        let mut start = 0;
        for end in self.ends {
            chunks.push(all.split_to(end - start));
            start = end;
        }
        chunks.extend(self.shared);
        Body {
            chunks,
            wire_len: self.wire_len,
            truncated: self.truncated,
            content_encoding: None,
        }
    }
}

/// Which body a tee wraps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The app's request body, on its way upstream.
    Request,
    /// The upstream's response body, on its way to the app.
    Response,
}

/// A body that forwards every frame as it arrives and tees data into a bounded capture.
#[derive(Debug)]
pub struct TeeBody<B: HttpBody> {
    inner: B,
    side: Side,
    tap: Option<(Capture, RecordingRef)>,
    first_byte: Option<Instant>,
    /// The last data frame's arrival and the gaps between frames (response side only).
    last_data: Option<Instant>,
    chunk_gaps: ChunkGaps,
}

impl<B: HttpBody> TeeBody<B> {
    /// A tee that records into `recording`, keeping at most `limit` bytes.
    pub fn recording(inner: B, side: Side, limit: usize, recording: RecordingRef) -> Self {
        TeeBody {
            inner,
            side,
            tap: Some((Capture::new(limit), recording)),
            first_byte: None,
            last_data: None,
            chunk_gaps: ChunkGaps::new(),
        }
    }

    /// A tee that records nothing (traffic to hosts that are not intercepted).
    pub fn passthrough(inner: B) -> Self {
        TeeBody {
            inner,
            side: Side::Request,
            tap: None,
            first_byte: None,
            last_data: None,
            chunk_gaps: ChunkGaps::new(),
        }
    }

    fn finish(&mut self, end: End) {
        let Some((capture, recording)) = self.tap.take() else {
            return;
        };
        let now = Instant::now();
        // Built before the lock (it may copy), so the other side never waits on it.
        let mut body = capture.into_body();
        let mut rec = recording.lock().unwrap_or_else(|e| e.into_inner());
        match self.side {
            Side::Request => {
                body.content_encoding = rec.request_body.content_encoding.take();
                rec.request_body = body;
                rec.request_end = Some((now, end));
            }
            Side::Response => {
                body.content_encoding = rec.response_body.content_encoding.take();
                rec.response_body = body;
                rec.first_byte = self.first_byte;
                rec.chunk_gaps = std::mem::take(&mut self.chunk_gaps);
                rec.response_end = Some((now, end));
            }
        }
    }
}

impl<B> HttpBody for TeeBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let (Some(data), Some((capture, _))) = (frame.data_ref(), this.tap.as_mut()) {
                    if !data.is_empty() {
                        if this.side == Side::Response {
                            // One clock read per chunk: the gap to the previous one.
                            let now = Instant::now();
                            match this.last_data {
                                Some(last) => this.chunk_gaps.record(now - last),
                                None => this.first_byte = Some(now),
                            }
                            this.last_data = Some(now);
                        } else if this.first_byte.is_none() {
                            this.first_byte = Some(Instant::now());
                        }
                    }
                    capture.push(data);
                }
            }
            Some(Err(e)) => this.finish(End::Error(e.to_string())),
            None => this.finish(End::Complete),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: HttpBody> Drop for TeeBody<B> {
    fn drop(&mut self) {
        if self.tap.is_some() {
            // An empty body may never be polled: hyper checks is_end_stream() first.
            let end = if self.inner.is_end_stream() {
                End::Complete
            } else {
                End::Dropped
            };
            self.finish(end);
        }
    }
}

#[cfg(test)]
#[path = "tee_tests.rs"]
mod tests;
