//! # WebSocket: an upgrade on a recorded target, relayed and recorded opaque.
//!
//! [`forward`](super::forward) hands over a request that asks to become a WebSocket
//! (RFC 6455 §4.1: HTTP/1.1 `GET` with `Connection: upgrade` and `Upgrade: websocket`). Hop-by-
//! hop stripping would remove exactly the two headers the handshake needs, so this stage puts
//! them back, sends the request upstream on an HTTP/1.1-only client (an h2 connection cannot
//! carry an `Upgrade`), and returns the upstream's answer: its `101` (with
//! `Sec-WebSocket-Accept`, protocol and extensions untouched), or whatever else it said,
//! recorded like any response. After a `101` both upgraded streams are spliced as bytes, each
//! read written on as it arrives (no added buffering, frames untouched); a frame-header
//! reader on each direction counts frames and notes the first Close frame's code, never
//! keeping a payload. The session is one exchange: bytes and frames each way, its length,
//! the close code ([`WebSocketSession`]). It ends when either side closes, on a reset, when
//! nothing has crossed either way for `tunnel_idle_timeout`, or when veil begins to shut
//! down; it holds its connection slot (and under `audit = "required"` its place in the
//! recording queue) until then. A key sent as a subprotocol is fingerprinted with the other
//! headers ([`Fingerprinter`](super::Fingerprinter)).

use std::io::Cursor;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{Either, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, OpCode};

use crate::exchange::realtime::{Direction, RealtimeSession, RealtimeTotals};
use crate::exchange::{ExchangeId, UpstreamFailure, WebSocketSession};

use super::answer::id_header;
use super::conn::{Probe, Watched};
use super::error;
use super::forward::lock;
use super::headers::{content_encoding, strip_hop_by_hop, take_veil_headers};
use super::realtime::{self, Capture, Captured, Emitter};
use super::route::Target;
use super::tee::{RecordingRef, SessionEnd, Side, TeeBody};
use super::tunnel::{TunnelEnd, copy_tunnel};
use super::upstream;
use super::{ProxyBody, REQUEST_ID_HEADER, Shared, Slot};

/// True when `req` asks to become a WebSocket (RFC 6455 §4.1): HTTP/1.1, `GET`, a
/// `Connection` header listing `upgrade` and an `Upgrade` header listing `websocket`
/// (tokens compared without case).
pub(super) fn is_upgrade<B>(req: &Request<B>) -> bool {
    let lists = |name: header::HeaderName, token: &str| {
        req.headers()
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    };
    req.version() == Version::HTTP_11
        && req.method() == http::Method::GET
        && lists(header::CONNECTION, "upgrade")
        && lists(header::UPGRADE, "websocket")
}

impl Shared {
    /// Relays one WebSocket handshake upstream and, on its `101`, the session; see the module
    /// docs. `slot` (the app connection's) is held until the session ends.
    pub(super) async fn websocket(
        self: &Arc<Self>,
        mut req: Request<Incoming>,
        target: &Target,
        path_and_query: PathAndQuery,
        addr: SocketAddr,
        slot: Slot,
    ) -> Response<ProxyBody> {
        let id = ExchangeId::new();
        let t0 = Instant::now();
        let started_at = SystemTime::now();
        let app_side = hyper::upgrade::on(&mut req);
        // A handshake has no body (RFC 6455 §4.1); anything sent with it is not forwarded.
        let (mut parts, _body) = req.into_parts();
        let tags = take_veil_headers(&mut parts.headers);
        let upgrade = parts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::HOST);
        restore_upgrade(&mut parts.headers, upgrade);

        let path_and_query = match target.with_prefix(path_and_query) {
            Ok(pq) => pq,
            Err(e) => return self.answer(&e, None),
        };
        let realtime_model = realtime_model(path_and_query.as_str());
        let recording = match self
            .start_recording(
                &parts,
                target,
                path_and_query.as_str(),
                tags,
                (id, t0, started_at),
                (addr, super::forward::HandOff::AtEnd),
            )
            .await
        {
            Ok(r) => r,
            Err(answer) => return *answer,
        };
        parts.uri = match target.upstream_uri(path_and_query) {
            Ok(uri) => uri,
            // The request id only where a record of the session will exist.
            Err(e) => return self.answer(&e, recording.is_some().then_some(id)),
        };
        parts.version = Version::HTTP_11;
        self.counters.upstream.requests.inc();
        let sent_at = Instant::now();
        let sent = tokio::time::timeout(
            self.settings.upstream_timeout,
            self.ws_client
                .request(Request::from_parts(parts, Empty::new())),
        )
        .await;
        let arrived = Instant::now();
        let shown = format!("{}:{}", target.host, target.port);
        let failure = match sent {
            Ok(Ok(mut resp)) => {
                let up_side = (resp.status() == StatusCode::SWITCHING_PROTOCOLS)
                    .then(|| hyper::upgrade::on(&mut resp));
                let (mut parts, body) = resp.into_parts();
                let upgrade = parts.headers.get(header::UPGRADE).cloned();
                strip_hop_by_hop(&mut parts.headers);
                if up_side.is_some() {
                    restore_upgrade(&mut parts.headers, upgrade);
                }
                if let Some(rec) = &recording {
                    let (headers, _) = self.fingerprinter.record_headers(&parts.headers);
                    let encoding = content_encoding(&parts.headers);
                    parts.headers.insert(REQUEST_ID_HEADER, id_header(id));
                    lock(rec).response_head(
                        parts.status.as_u16(),
                        headers,
                        encoding,
                        sent_at,
                        arrived,
                    );
                }
                let Some(up_side) = up_side else {
                    // Refused (a 401, a 404 for a wrong path): the upstream's answer, recorded
                    // as any response is.
                    let body = match recording {
                        Some(rec) => TeeBody::recording(
                            body,
                            Side::Response,
                            self.settings.capture_limit,
                            rec,
                        ),
                        None => TeeBody::passthrough(body),
                    };
                    return Response::from_parts(parts, Either::Left(body));
                };
                // An OpenAI Realtime session is followed event by event (one record per
                // response) when it is recorded at all.
                let realtime = realtime_model
                    .zip(recording.as_ref())
                    .and_then(|(model, rec)| {
                        let meta = lock(rec).meta()?.clone();
                        Some((
                            RealtimeSession::new(model),
                            Emitter {
                                meta,
                                queue: self.queue.clone(),
                                audit: self.settings.audit,
                            },
                        ))
                    });
                self.relay(
                    app_side,
                    up_side,
                    recording,
                    slot,
                    target.host.clone(),
                    realtime,
                );
                return Response::from_parts(parts, Either::Right(Full::new(Bytes::new())));
            }
            Ok(Err(e)) => upstream::classify(&e, &shown),
            Err(_) => upstream::UpstreamError::new(
                UpstreamFailure::Timeout,
                format!(
                    "no response headers from upstream {shown} within {}s",
                    self.settings.upstream_timeout.as_secs_f32()
                ),
            ),
        };
        if let Some(rec) = &recording {
            lock(rec).upstream_failed(failure.kind, failure.message.clone());
        }
        tracing::warn!(exchange.id = %id, kind = failure.kind.as_str(), "{}", failure.message);
        let err = error::forward_failure(&failure, false);
        self.answer(&err, recording.is_some().then_some(id))
    }

    /// Splices the two upgraded streams on a tracked task and records the session when it
    /// ends: either side closes, the relay breaks, nothing crosses it for
    /// `tunnel_idle_timeout`, or veil begins to shut down (a session has no natural end a
    /// drain could wait for).
    fn relay(
        &self,
        app: hyper::upgrade::OnUpgrade,
        upstream: hyper::upgrade::OnUpgrade,
        recording: Option<RecordingRef>,
        slot: Slot,
        host: String,
        realtime: Option<(RealtimeSession, Emitter)>,
    ) {
        let idle = self.settings.tunnel_idle_timeout;
        let counters = self.counters.clone();
        let cancel = self.cancel.clone();
        self.spawn(async move {
            let _slot = slot;
            let mut session = Session::new(recording);
            let (app, upstream) = match tokio::try_join!(app, upstream) {
                Ok(both) => both,
                Err(e) => {
                    session.end(SessionEnd::Broken(format!("upgrade failed: {e}")), None);
                    return;
                }
            };
            // Realtime: both readers capture text messages for the session's own task.
            let tracker = realtime.map(|(rt, emitter)| {
                let (tx, rx) = tokio::sync::mpsc::channel::<Captured>(realtime::CHANNEL);
                lock_reader(&session.sent).capture =
                    Some(Capture::new(Direction::Client, tx.clone()));
                lock_reader(&session.received).capture = Some(Capture::new(Direction::Server, tx));
                tokio::spawn(realtime::track(rx, rt, emitter))
            });
            let app = Watched::new(TokioIo::new(app), session.sent.clone());
            let upstream = Watched::new(TokioIo::new(upstream), session.received.clone());
            let end = tokio::select! {
                end = copy_tunnel(app, upstream, idle) => match end {
                    TunnelEnd::Closed { .. } => SessionEnd::Closed,
                    TunnelEnd::Failed(e) => SessionEnd::Broken(format!("relay failed: {e}")),
                    TunnelEnd::Idle => {
                        counters.proxy.timed_out.inc();
                        SessionEnd::Cut
                    }
                },
                () = cancel.cancelled() => SessionEnd::Cut,
            };
            tracing::debug!(host, ended = ?end, "WebSocket session closed");
            // The readers' senders go; the task drains what is queued and returns totals.
            let dropped: u64 = [&session.sent, &session.received]
                .iter()
                .filter_map(|r| lock_reader(r).capture.take())
                .map(|c| c.dropped)
                .sum();
            let totals = match tracker {
                Some(task) => task.await.ok().map(|mut t| {
                    t.events_lost += dropped;
                    t
                }),
                None => None,
            };
            session.end(end, totals);
        });
    }
}

/// The model of an OpenAI Realtime session from its handshake's path and query
/// (`/v1/realtime?model=gpt-realtime`; Azure's `…/openai/realtime?deployment=NAME`):
/// `Some(model or None)` when the path ends in `/realtime`, `None` for any other WebSocket.
fn realtime_model(path_and_query: &str) -> Option<Option<String>> {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    if !path.trim_end_matches('/').ends_with("/realtime") {
        return None;
    }
    Some(
        query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "model" || *k == "deployment")
            .map(|(_, v)| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned()
            }),
    )
}

fn lock_reader(r: &Mutex<FrameReader>) -> std::sync::MutexGuard<'_, FrameReader> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// Puts back the two headers a WebSocket handshake needs after hop-by-hop stripping.
fn restore_upgrade(headers: &mut http::HeaderMap, upgrade: Option<HeaderValue>) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(
        header::UPGRADE,
        upgrade.unwrap_or_else(|| HeaderValue::from_static("websocket")),
    );
}

/// One session's recording and its two frame readers; records on [`Session::end`], or as
/// broken off when dropped first (veil's drain ran out).
struct Session {
    recording: Option<RecordingRef>,
    sent: Arc<Mutex<FrameReader>>,
    received: Arc<Mutex<FrameReader>>,
}

impl Session {
    fn new(recording: Option<RecordingRef>) -> Self {
        Session {
            recording,
            sent: Arc::default(),
            received: Arc::default(),
        }
    }

    fn end(&mut self, end: SessionEnd, realtime: Option<RealtimeTotals>) {
        let Some(rec) = self.recording.take() else {
            return;
        };
        let sent = std::mem::take(&mut *self.sent.lock().unwrap_or_else(|p| p.into_inner()));
        let received =
            std::mem::take(&mut *self.received.lock().unwrap_or_else(|p| p.into_inner()));
        // Once both sides have sent their Close frame the session is over (RFC 6455 §7.1.1),
        // however the transport then went away (many peers drop TCP without TLS
        // close_notify).
        let end = if sent.close.is_some() && received.close.is_some() {
            SessionEnd::Closed
        } else {
            end
        };
        let session = WebSocketSession {
            frames_sent: sent.frames,
            frames_received: received.frames,
            close_code: match (sent.close, received.close) {
                // The first Close frame's code: whichever side sent its close first. The
                // order between the two directions is the order veil saw them in.
                (Some((a, at_a)), Some((b, at_b))) => Some(if at_a <= at_b { a } else { b }),
                (a, b) => a.or(b).map(|(c, _)| c),
            }
            .flatten(),
            unframed: sent.lost || received.lost,
            session: None,
            realtime,
        };
        lock(&rec).websocket_ended(session, (sent.bytes, received.bytes), end);
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Dropped unfinished: the drain's end killed the task.
        self.end(SessionEnd::Cut, None);
    }
}

/// Reads frame headers (RFC 6455 §5.2) from one direction's bytes as they pass, with
/// tungstenite's header parser: counts frames and bytes and keeps the first Close frame's
/// status code. Payloads are skipped, never kept; a header it cannot read stops the
/// counting (`lost`), never the relay.
#[derive(Debug, Default)]
struct FrameReader {
    /// Header bytes seen so far of the frame being read (a header is at most 14 bytes).
    head: [u8; 14],
    have: usize,
    /// Payload bytes still to skip of the current frame.
    left: u64,
    /// Of a Close frame being read: its mask, how far into the payload, the code bytes so far.
    closing: Option<([u8; 4], u64, [u8; 2])>,
    frames: u64,
    bytes: u64,
    /// The first Close frame: its code (if it carried one) and when it ended.
    close: Option<(Option<u16>, Instant)>,
    lost: bool,
    /// A Realtime session's message capture (`proxy::realtime`), on such sessions only.
    capture: Option<Capture>,
}

impl FrameReader {
    fn feed(&mut self, mut data: &[u8]) {
        self.bytes += data.len() as u64;
        while !data.is_empty() && !self.lost {
            if self.left > 0 {
                let n = usize::try_from(self.left).map_or(data.len(), |l| l.min(data.len()));
                if let Some((mask, at, code)) = &mut self.closing {
                    for &b in &data[..n] {
                        if *at < 2 {
                            code[*at as usize] = b ^ mask[*at as usize % 4];
                        }
                        *at += 1;
                    }
                }
                if let Some(c) = &mut self.capture {
                    c.payload(&data[..n]);
                }
                data = &data[n..];
                self.left -= n as u64;
                if self.left == 0 {
                    self.frame_done();
                }
                continue;
            }
            let take = (self.head.len() - self.have).min(data.len());
            self.head[self.have..self.have + take].copy_from_slice(&data[..take]);
            let mut cursor = Cursor::new(&self.head[..self.have + take]);
            match FrameHeader::parse(&mut cursor) {
                Ok(Some((header, len))) => {
                    // RFC 6455 §5.2, §5.5: a length's top bit is 0; a control frame is final
                    // and at most 125 bytes. Otherwise this is not a frame boundary.
                    let control = matches!(header.opcode, OpCode::Control(_));
                    if len >> 63 != 0 || (control && (len > 125 || !header.is_final)) {
                        self.lost = true;
                        continue;
                    }
                    // The header ended `used` bytes into `data` (its start was buffered).
                    let used = cursor.position() as usize - self.have;
                    data = &data[used..];
                    self.have = 0;
                    self.frames += 1;
                    self.left = len;
                    if let Some(c) = &mut self.capture {
                        c.header(&header);
                    }
                    self.closing = (header.opcode == OpCode::Control(Control::Close))
                        .then(|| (header.mask.unwrap_or_default(), 0, [0; 2]));
                    if len == 0 {
                        self.frame_done();
                    }
                }
                Ok(None) => {
                    self.have += take;
                    data = &data[take..];
                }
                Err(_) => self.lost = true,
            }
        }
    }

    fn frame_done(&mut self) {
        if let Some(c) = &mut self.capture {
            c.frame_end();
        }
        if let Some((_, at, code)) = self.closing.take()
            && self.close.is_none()
        {
            let code = (at >= 2).then(|| u16::from_be_bytes(code));
            self.close = Some((code, Instant::now()));
        }
    }
}

/// A session direction's reads feed its frame reader.
impl Probe for Mutex<FrameReader> {
    fn on_read(&self) {}

    fn on_data(&self, data: &[u8]) {
        self.lock().unwrap_or_else(|p| p.into_inner()).feed(data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame as a client sends it (masked) or a server (not).
    fn frame(opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![0x80 | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(m | n as u8),
            n if n < 65536 => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(m | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        match mask {
            Some(k) => {
                out.extend_from_slice(&k);
                out.extend(payload.iter().enumerate().map(|(i, b)| b ^ k[i % 4]));
            }
            None => out.extend_from_slice(payload),
        }
        out
    }

    #[test]
    fn frames_are_counted_and_the_close_code_read_whatever_the_read_sizes() {
        let key = Some([0x11, 0x22, 0x33, 0x44]);
        let mut wire = Vec::new();
        wire.extend(frame(0x1, b"hello", key));
        wire.extend(frame(0x2, &vec![7u8; 70_000], key));
        wire.extend(frame(0x9, b"", key));
        wire.extend(frame(0x8, &[0x03, 0xE9, b'b', b'y', b'e'], key)); // 1001
        for step in [1, 2, 3, 7, 13, 4096, wire.len()] {
            let mut r = FrameReader::default();
            for chunk in wire.chunks(step) {
                r.feed(chunk);
            }
            assert_eq!(r.frames, 4, "read {step} bytes at a time");
            assert_eq!(r.bytes, wire.len() as u64);
            assert_eq!(r.close.map(|c| c.0), Some(Some(1001)), "step {step}");
            assert!(!r.lost);
        }
    }

    #[test]
    fn a_close_without_a_code_and_bytes_that_are_not_frames() {
        let mut r = FrameReader::default();
        r.feed(&frame(0x8, b"", None));
        assert_eq!(r.close.map(|c| c.0), Some(None));

        // Opcode 0x3 is reserved: counting stops there, bytes are still counted.
        let mut r = FrameReader::default();
        r.feed(&frame(0x1, b"a", None));
        r.feed(&[0x83, 0x00, 0xff, 0xff]);
        assert!(r.lost);
        assert_eq!((r.frames, r.bytes), (1, 7));

        // A ping of 200 bytes, an unfinished close, a length with its top bit set.
        for bad in [
            frame(0x9, &[0; 200], None),
            vec![0x08, 0x00],
            [&[0x82, 0x7f, 0x80][..], &[0; 7]].concat(),
        ] {
            let mut r = FrameReader::default();
            r.feed(&bad);
            assert!(r.lost, "{bad:?}");
            assert_eq!(r.frames, 0);
        }
    }

    #[test]
    fn only_a_get_with_both_upgrade_headers_is_a_websocket_handshake() {
        let req = |method: &str, conn: &str, upgrade: &str| {
            Request::builder()
                .method(method)
                .uri("/v1/realtime")
                .header(header::CONNECTION, conn)
                .header(header::UPGRADE, upgrade)
                .body(())
                .unwrap()
        };
        assert!(is_upgrade(&req("GET", "Upgrade", "websocket")));
        assert!(is_upgrade(&req("GET", "keep-alive, upgrade", "WebSocket")));
        assert!(!is_upgrade(&req("POST", "Upgrade", "websocket")));
        assert!(!is_upgrade(&req("GET", "keep-alive", "websocket")));
        assert!(!is_upgrade(&req("GET", "Upgrade", "h2c")));
    }
}
