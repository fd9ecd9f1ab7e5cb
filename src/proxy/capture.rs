//! # Capture: tee both bodies into a bounded buffer and hand off one `Exchange`.
//!
//! [`TeeBody`] wraps a body and forwards every frame as it arrives; data frames are also
//! cloned (a `Bytes` refcount bump, no copy) into the tee's own [`Capture`], up to the limit.
//! No lock is taken per frame: each tee deposits its capture into the shared [`Recording`] once,
//! when its body ends or is dropped.
//!
//! An exchange ends exactly once by construction: the `Recording` sits behind an `Arc` held by
//! the request tee, the response tee and the handler, and it emits its `Exchange` in `Drop`,
//! when the last of them lets go, whatever happened (end of stream, error, client hang-up).
//! The hand-off is a `try_send` (or a slot reserved up front in audit-required mode): the hot
//! path never waits on recording.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::{Instant, SystemTime};

use crate::exchange::credentials::{self, CredentialHeader};
use crate::exchange::queue::{ExchangeSender, Reservation};
use crate::exchange::{
    Body, Exchange, ExchangeId, Headers, Outcome, Route, Timings, Upstream, UpstreamFailure,
};
use crate::keys::DerivedKey;
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};

/// Keyed fingerprints of credentials (`fp_` + 16 hex), so spend can be attributed per key
/// without ever storing the key. Which headers and query parameters are credentials is
/// [`credentials`]'s call, the same list the rules and the seal use.
#[derive(Debug, Clone)]
pub struct Fingerprinter {
    key: DerivedKey,
}

impl Fingerprinter {
    /// A fingerprinter under `key` (`Purpose::Fingerprint` of the identity master key).
    pub fn new(key: DerivedKey) -> Self {
        Fingerprinter { key }
    }

    /// `fp_` + the first 8 bytes of the keyed BLAKE3 of `secret`, in hex.
    pub fn fingerprint(&self, secret: &str) -> String {
        let hex = self.key.mac(secret.as_bytes()).to_hex();
        let mut out = String::with_capacity(19);
        out.push_str("fp_");
        out.push_str(&hex[..16]);
        out
    }

    /// The recorded copy of `headers`: credential values replaced by fingerprints, lowercase
    /// names, wire order. Returns the headers and the API key's fingerprint, if any.
    pub fn record_headers(&self, headers: &HeaderMap) -> (Headers, Option<String>) {
        let mut out = Vec::with_capacity(headers.len());
        let mut api_key = None;
        for (name, value) in headers {
            let name = name.as_str();
            let text = String::from_utf8_lossy(value.as_bytes());
            if let Some(kind) = credentials::classify_header(name) {
                let fp = self.fingerprint(credentials::secret_of(name, &text));
                if api_key.is_none() && kind == CredentialHeader::ApiKey {
                    api_key = Some(fp.clone());
                }
                out.push((name.to_string(), fp));
            } else {
                out.push((name.to_string(), text.into_owned()));
            }
        }
        (out, api_key)
    }

    /// `path?query` with credential query parameters fingerprinted. Returns the path and the
    /// fingerprint of the first credential parameter.
    pub fn record_path(&self, path_and_query: &str) -> (String, Option<String>) {
        let Some((path, query)) = path_and_query.split_once('?') else {
            return (path_and_query.to_string(), None);
        };
        let mut api_key = None;
        let mut out = String::with_capacity(path_and_query.len());
        out.push_str(path);
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((k, v)) if credentials::is_credential_param(k) => {
                    let fp = self.fingerprint(v);
                    api_key.get_or_insert_with(|| fp.clone());
                    out.push_str(k);
                    out.push('=');
                    out.push_str(&fp);
                }
                _ => out.push_str(pair),
            }
        }
        (out, api_key)
    }
}

/// Where a finished exchange goes.
#[derive(Debug)]
pub enum Sink {
    /// Best-effort: `try_send` at the end; a full queue drops and counts (in the queue).
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
#[derive(Debug)]
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
    pub client_version: String,
    /// Method.
    pub method: String,
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
    response_body: Body,
    first_byte: Option<Instant>,
    response_end: Option<(Instant, End)>,
    failure: Option<(UpstreamFailure, String)>,
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
            response_headers: Vec::new(),
            response_headers_at: None,
            response_body: Body::default(),
            first_byte: None,
            response_end: None,
            failure: None,
        }))
    }

    /// Notes the upstream response head.
    pub fn response_head(
        &mut self,
        status: u16,
        headers: Headers,
        content_encoding: Option<String>,
    ) {
        self.status = Some(status);
        self.response_headers = headers;
        self.response_headers_at = Some(Instant::now());
        self.response_body.content_encoding = content_encoding;
    }

    /// Notes that no response arrived because the upstream failed.
    pub fn upstream_failed(&mut self, kind: UpstreamFailure, reason: String) {
        self.failure = Some((kind, reason));
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
        };
        sink.emit(exchange);
    }
}

/// A bounded capture of one body's data frames.
#[derive(Debug)]
pub struct Capture {
    chunks: Vec<Bytes>,
    captured: usize,
    wire_len: u64,
    truncated: bool,
    limit: usize,
}

impl Capture {
    /// An empty capture keeping at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Capture {
            chunks: Vec::new(),
            captured: 0,
            wire_len: 0,
            truncated: false,
            limit,
        }
    }

    /// Records one data frame (a refcount bump; a slice when it crosses the limit).
    pub fn push(&mut self, data: &Bytes) {
        self.wire_len += data.len() as u64;
        let room = self.limit - self.captured;
        if data.len() <= room {
            if !data.is_empty() {
                self.chunks.push(data.clone());
                self.captured += data.len();
            }
        } else {
            if room > 0 {
                self.chunks.push(data.slice(..room));
                self.captured += room;
            }
            self.truncated = true;
        }
    }

    fn into_body(self, content_encoding: Option<String>) -> Body {
        Body {
            chunks: self.chunks,
            wire_len: self.wire_len,
            truncated: self.truncated,
            content_encoding,
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
}

impl<B: HttpBody> TeeBody<B> {
    /// A tee that records into `recording`, keeping at most `limit` bytes.
    pub fn recording(inner: B, side: Side, limit: usize, recording: RecordingRef) -> Self {
        TeeBody {
            inner,
            side,
            tap: Some((Capture::new(limit), recording)),
            first_byte: None,
        }
    }

    /// A tee that records nothing (traffic to hosts that are not intercepted).
    pub fn passthrough(inner: B) -> Self {
        TeeBody {
            inner,
            side: Side::Request,
            tap: None,
            first_byte: None,
        }
    }

    fn finish(&mut self, end: End) {
        let Some((capture, recording)) = self.tap.take() else {
            return;
        };
        let now = Instant::now();
        let mut rec = recording.lock().unwrap_or_else(|e| e.into_inner());
        match self.side {
            Side::Request => {
                let enc = rec.request_body.content_encoding.take();
                rec.request_body = capture.into_body(enc);
                rec.request_end = Some((now, end));
            }
            Side::Response => {
                let enc = rec.response_body.content_encoding.take();
                rec.response_body = capture.into_body(enc);
                rec.first_byte = self.first_byte;
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
                    if this.first_byte.is_none() && !data.is_empty() {
                        this.first_byte = Some(Instant::now());
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
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    fn fingerprinter() -> Fingerprinter {
        let key = crate::keys::MasterKey::from_bytes(crate::keys::KeyId(1), [3; 32]);
        Fingerprinter::new(key.derive(crate::keys::Purpose::Fingerprint))
    }

    fn meta() -> RequestMeta {
        RequestMeta {
            id: ExchangeId::new(),
            started_at: SystemTime::now(),
            t0: Instant::now(),
            client_addr: None,
            route: Route::Intercept,
            upstream: Upstream {
                scheme: "https".into(),
                host: "api.openai.com".into(),
                port: 443,
            },
            client_version: "HTTP/1.1".into(),
            method: "POST".into(),
            path: "/v1/chat/completions".into(),
            headers: vec![],
            tags: vec![],
            api_key_fingerprint: None,
        }
    }

    #[test]
    fn credentials_are_fingerprinted_never_kept() {
        let fp = fingerprinter();
        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer sk-live-SECRET".parse().unwrap());
        h.insert("x-api-key", "sk-live-SECRET".parse().unwrap());
        h.insert("cookie", "session=COOKIESECRET".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        let (headers, api_key) = fp.record_headers(&h);
        let text = format!("{headers:?}");
        assert!(!text.contains("SECRET"), "{text}");
        // The same key via Bearer or x-api-key has the same fingerprint.
        assert_eq!(headers[0].1, headers[1].1);
        assert_eq!(api_key.as_deref(), Some(headers[0].1.as_str()));
        assert!(headers.contains(&("content-type".into(), "application/json".into())));

        let (path, key) = fp.record_path("/v1beta/models/g:generateContent?alt=sse&key=AIzaSECRET");
        assert!(!path.contains("SECRET"), "{path}");
        assert!(path.starts_with("/v1beta/models/g:generateContent?alt=sse&key=fp_"));
        assert!(key.is_some());
        assert_eq!(fp.record_path("/v1/x").0, "/v1/x");
        // OAuth tokens and percent-encoded names are credentials too.
        let (path, _) = fp.record_path("/x?access_token=ya29.SECRET&k%65y=AIzaSECRET2&alt=json");
        assert!(!path.contains("SECRET"), "{path}");
        assert!(path.ends_with("&alt=json"), "{path}");
    }

    #[test]
    fn capture_is_bounded_and_marks_truncation() {
        let mut c = Capture::new(10);
        c.push(&Bytes::from_static(b"0123456"));
        c.push(&Bytes::from_static(b"789abc"));
        c.push(&Bytes::from_static(b"def"));
        let body = c.into_body(None);
        assert_eq!(&body.bytes()[..], b"0123456789");
        assert_eq!(body.wire_len, 16);
        assert!(body.truncated);
    }

    #[tokio::test]
    async fn exchange_is_emitted_once_with_both_bodies() {
        let (tx, mut rx) = crate::exchange::queue::channel(4, 1 << 20);
        let rec = Recording::start(meta(), Sink::BestEffort(tx.clone()));
        let req = TeeBody::recording(
            Full::new(Bytes::from_static(b"{\"q\":1}")),
            Side::Request,
            1024,
            rec.clone(),
        );
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"data: a\n\n"))),
            Ok(Frame::data(Bytes::from_static(b"data: b\n\n"))),
        ];
        let resp_inner = StreamBody::new(futures_lite_stream(chunks));
        rec.lock().unwrap().response_head(200, vec![], None);
        let resp = TeeBody::recording(resp_inner, Side::Response, 1024, rec.clone());
        drop(rec);
        assert_eq!(req.collect().await.unwrap().to_bytes(), "{\"q\":1}");
        assert!(
            rx.try_recv().is_none(),
            "not emitted while the response is in flight"
        );
        assert_eq!(
            resp.collect().await.unwrap().to_bytes(),
            "data: a\n\ndata: b\n\n"
        );
        let ex = rx.try_recv().expect("emitted when the last tee ended");
        assert_eq!(ex.outcome, Outcome::Complete);
        assert_eq!(&ex.request_body.bytes()[..], b"{\"q\":1}");
        assert_eq!(&ex.response_body.bytes()[..], b"data: a\n\ndata: b\n\n");
        assert!(ex.timings.first_byte.is_some());
        assert!(rx.try_recv().is_none(), "exactly once");
        assert_eq!(tx.counters().queued.get(), 1);
    }

    #[tokio::test]
    async fn dropped_response_is_client_aborted_and_full_queue_counts_drops() {
        let (tx, mut rx) = crate::exchange::queue::channel(1, 1 << 20);
        for _ in 0..2 {
            let rec = Recording::start(meta(), Sink::BestEffort(tx.clone()));
            rec.lock().unwrap().response_head(200, vec![], None);
            let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
                vec![Ok(Frame::data(Bytes::from_static(b"partial")))];
            let mut resp = TeeBody::recording(
                StreamBody::new(futures_lite_stream(chunks).chain_pending()),
                Side::Response,
                1024,
                rec,
            );
            let _ = resp.frame().await;
            drop(resp);
        }
        let ex = rx.try_recv().unwrap();
        assert_eq!(ex.outcome, Outcome::ClientAborted);
        assert_eq!(&ex.response_body.bytes()[..], b"partial");
        assert_eq!(tx.counters().dropped_full.get(), 1);
    }

    /// A minimal stream over a vector, optionally never ending afterwards.
    fn futures_lite_stream<T: Unpin>(items: Vec<T>) -> VecStream<T> {
        VecStream {
            items: items.into_iter().collect(),
            pending_after: false,
        }
    }

    struct VecStream<T> {
        items: std::collections::VecDeque<T>,
        pending_after: bool,
    }

    impl<T> VecStream<T> {
        fn chain_pending(mut self) -> Self {
            self.pending_after = true;
            self
        }
    }

    impl<T: Unpin> futures_core::Stream for VecStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<T>> {
            match self.items.pop_front() {
                Some(item) => Poll::Ready(Some(item)),
                None if self.pending_after => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }
}
