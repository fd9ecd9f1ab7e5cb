//! # Forward: one request sent upstream, both bodies teed into a recording.
//!
//! Receives a request and the [`Target`] [`route`](super::route) chose (absolute form or a
//! gateway route from the listener; every request inside an intercepted TLS session from
//! [`intercept`](super::intercept)). For a recorded target it first admits the request
//! under the audit mode (a reservation in the recording queue under `audit = "required"`),
//! fingerprints the head ([`Fingerprinter`](super::Fingerprinter)) and starts a
//! [`Recording`]. It then rewrites the head ([`headers`](super::headers)), wraps the body in
//! the stall clock, the drain (a body dropped unread, as by the early answers here, is read
//! and discarded, bounded, so h2 apps get the answer instead of a reset: see
//! [`drain`](super::drain)) and the tee, sends it through the pooled [`upstream`]
//! client within `upstream_timeout`, and hands back the response with its body teed into the
//! same recording, or veil's own error ([`ProxyError`]) with the side that failed. The
//! recording emits one `Exchange` when the last body lets go (see [`tee`](super::tee)).
//! It never parses or logs a body.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header;
use http::uri::PathAndQuery;
use http::{Request, Response, Version};
use http_body_util::Either;
use hyper::body::Incoming;

use crate::config::Audit;
use crate::exchange::queue::{Refusal, Reservation};
use crate::exchange::{ExchangeId, Upstream, UpstreamFailure};

use super::answer::id_header;
use super::drain::{ANSWER_WAIT_MAX, Drain, DrainPolicy, Settled};
use super::error::{self, ProxyError};
use super::headers::{content_encoding, join_cookies, strip_hop_by_hop, take_veil_headers};
use super::route::Target;
use super::stall::{BodyError, StallClock};
use super::tee::{Recording, RecordingRef, RequestMeta, Side, Sink, TeeBody};
use super::upstream::{self, UpstreamError};
use super::{ProxyBody, REQUEST_ID_HEADER, Shared, Slot};

/// Whether a best-effort exchange asks the recording queue for room when it arrives. Either
/// way it is offered to the queue when it ends, and holds no slot meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum HandOff {
    /// Asked when the request arrives: one the queue has no room for then is forwarded and
    /// not captured at all (a counted drop).
    Admit,
    /// Not asked: a WebSocket session may last hours, and the queue's room when it starts
    /// says little about its room when it ends.
    AtEnd,
}

impl Shared {
    /// Sends one request upstream and streams the response back, teeing both bodies into a
    /// recording when the target is recorded. A WebSocket handshake goes to
    /// [`websocket`](super::websocket) instead, which holds `slot` for the session.
    pub(super) async fn forward(
        self: &Arc<Self>,
        req: Request<Incoming>,
        target: &Target,
        path_and_query: PathAndQuery,
        addr: SocketAddr,
        slot: &Slot,
    ) -> Response<ProxyBody> {
        if super::websocket::is_upgrade(&req) {
            // Boxed, as are the other rare branches (the early answers, the wait for room
            // under audit = "required"): a future holds room for its largest branch, and
            // every request's future is copied into its box when it starts.
            return Box::pin(self.websocket(req, target, path_and_query, addr, slot.clone())).await;
        }
        let id = ExchangeId::new();
        let t0 = Instant::now();
        let started_at = SystemTime::now();
        let (mut parts, body) = req.into_parts();
        let client_version = parts.version;
        // Wrapped before any early answer below, so a body dropped unread is drained, and
        // each of veil's own answers waits (bounded) for that drain: see `drain`.
        let mut body = self.request_body(body, client_version);
        let settled = body.settled();
        let tags = take_veil_headers(&mut parts.headers);
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::HOST);
        join_cookies(&mut parts.headers);

        // For the error messages only: not formatted for a request that succeeds.
        let shown = || format!("{}:{}", target.host, target.port);
        let path_and_query = match target.with_prefix(path_and_query) {
            Ok(pq) => pq,
            Err(e) => {
                drop(body);
                return answer_unread(settled, self.answer(&e, None)).await;
            }
        };
        let recording = match self
            .start_recording(
                &parts,
                target,
                path_and_query.as_str(),
                tags,
                (id, t0, started_at),
                (addr, HandOff::Admit),
            )
            .await
        {
            Ok(r) => r,
            Err(answer) => {
                drop(body);
                return answer_unread(settled, *answer).await;
            }
        };
        if let Some(rec) = &recording {
            lock(rec).request_encoding(content_encoding(&parts.headers));
        }

        let uri = match target.upstream_uri(path_and_query) {
            Ok(uri) => uri,
            Err(e) => {
                drop(body);
                // The request id only where a record of the exchange will exist.
                let id = recording.is_some().then_some(id);
                return answer_unread(settled, self.answer(&e, id)).await;
            }
        };
        parts.uri = uri;
        // hyper-util picks h2 by ALPN per connection; a request marked HTTP/2 would be refused
        // on an HTTP/1 connection.
        parts.version = Version::HTTP_11;
        let body = Box::new(match &recording {
            Some(rec) => TeeBody::recording(
                body,
                Side::Request,
                self.settings.capture_limit,
                rec.clone(),
            ),
            None => TeeBody::passthrough(body),
        });
        // Counted as handed to the pool, new connection or reused (the connector counts
        // the new ones), whatever the upstream then answers.
        self.counters.upstream.requests.inc();
        // One clock read for both (tokio's clock is the system's unless a test pauses it).
        let now = tokio::time::Instant::now();
        let sent_at = now.into_std();
        // The connection's kept timer, not `tokio::time::timeout`'s new one (see
        // `ClientSlot::upstream_timer`).
        let deadline = now + self.settings.upstream_timeout;
        let mut timer = slot.upstream_timer(deadline);
        let mut request = self.client.request(Request::from_parts(parts, body));
        let sent = loop {
            tokio::select! {
                biased;
                r = &mut request => break Ok(r),
                () = timer.as_mut() => {
                    if tokio::time::Instant::now() >= deadline {
                        break Err(());
                    }
                    // A kept timer that was due before this request's deadline.
                    timer.as_mut().reset(deadline);
                }
            }
        };
        drop(request);
        slot.keep_timer(timer);
        let arrived = Instant::now();
        let recorded = recording.is_some();
        let (failure, body_failed) = match sent {
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                parts.version = client_version;
                let body = match recording {
                    Some(rec) => {
                        let (headers, _) = self.fingerprinter.record_headers(&parts.headers);
                        let encoding = content_encoding(&parts.headers);
                        parts.headers.insert(REQUEST_ID_HEADER, id_header(id));
                        // Last, so veil's added time on the response covers its header work.
                        lock(&rec).response_head(
                            parts.status.as_u16(),
                            headers,
                            encoding,
                            sent_at,
                            arrived,
                        );
                        TeeBody::recording(body, Side::Response, self.settings.capture_limit, rec)
                    }
                    None => TeeBody::passthrough(body),
                };
                return Response::from_parts(parts, Either::Left(body));
            }
            Ok(Err(e)) if request_body_stalled(&e) => {
                // The app's side: its upload stopped. Not the upstream's fault, not a 502.
                if let Some(rec) = &recording {
                    lock(rec).upstream_failed(UpstreamFailure::Protocol, e.to_string());
                }
                let answer = self.answer(
                    &ProxyError::body_stalled(format!(
                        "the request body stalled: nothing arrived for {}s (header_read_timeout)",
                        self.settings.limits.header_read.as_secs_f32()
                    )),
                    recorded.then_some(id),
                );
                drop(recording);
                return answer_unread(settled, answer).await;
            }
            Ok(Err(e)) => (upstream::classify(&e, &shown()), request_body_failed(&e)),
            Err(_) => (
                UpstreamError::new(
                    UpstreamFailure::Timeout,
                    format!(
                        "no response headers from upstream {} within {}s",
                        shown(),
                        self.settings.upstream_timeout.as_secs_f32()
                    ),
                ),
                false,
            ),
        };
        // The app broke off its own upload (the recording or the error chain saw the request
        // body fail): that is the app's side, not the upstream's, whatever hyper reported.
        let body_failed = body_failed
            || recording
                .as_ref()
                .is_some_and(|r| lock(r).request_body_failed());
        if let Some(rec) = &recording {
            lock(rec).upstream_failed(failure.kind, failure.message.clone());
        }
        let err = error::forward_failure(&failure, body_failed);
        if err.side() == error::Side::Client {
            tracing::debug!(exchange.id = %id, "app aborted while sending the request body");
        } else {
            tracing::warn!(exchange.id = %id, kind = failure.kind.as_str(), "{}", failure.message);
        }
        let answer = self.answer(&err, recorded.then_some(id));
        // Let go before the wait: the exchange is recorded as it ended, and a reservation
        // under audit = "required" is not held longer.
        drop(recording);
        answer_unread(settled, answer).await
    }
}

/// veil's own `answer` to a request whose body it let go of before its end, sent once that
/// body's drain has stopped or after [`ANSWER_WAIT_MAX`], whichever comes first: an h2 app
/// that can finish its upload then has, and does not end it short on seeing the answer,
/// which h2 would reset together with the answer (see [`drain`](super::drain)). At once for
/// a body that ended, failed, or is HTTP/1.1.
///
/// Boxed: an early answer is rare, and the wait's ~870 bytes of state would otherwise be
/// part of every request's future, which is built and moved on every request.
pub(super) fn answer_unread(
    settled: Settled,
    answer: Response<ProxyBody>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Response<ProxyBody>> + Send>> {
    Box::pin(async move {
        settled.wait(ANSWER_WAIT_MAX).await;
        answer
    })
}

impl Shared {
    /// For a recorded target: admits the request under the audit mode, fingerprints its head
    /// and starts its [`Recording`], whose clocks started at `t0` / `started_at`. Best-effort
    /// with [`HandOff::Admit`] first asks the queue whether it has room now, reserving nothing
    /// ([`ExchangeSender::try_admit`]); the exchange is offered to the queue when it ends.
    /// `audit = "required"` goes through [`Shared::admit_required`].
    /// `None` for a target that is not recorded (every target in a build with the
    /// `forward-only` feature), and for a best-effort request the queue has
    /// no room for (counted as a drop: it is forwarded, nothing of it captured); veil's 503
    /// answer for a request not admitted under `audit = "required"`.
    ///
    /// [`ExchangeSender::try_admit`]: crate::exchange::queue::ExchangeSender::try_admit
    pub(super) async fn start_recording(
        &self,
        parts: &http::request::Parts,
        target: &Target,
        path_and_query: &str,
        tags: crate::exchange::Headers,
        (id, t0, started_at): (ExchangeId, Instant, SystemTime),
        (addr, hand_off): (SocketAddr, HandOff),
    ) -> Result<Option<RecordingRef>, Box<Response<ProxyBody>>> {
        // A `forward-only` build (the load bench's measure of forwarding alone) records
        // nothing: every target is forwarded as one that is not recorded.
        if !target.record || cfg!(feature = "forward-only") {
            return Ok(None);
        }
        let sink = match (self.settings.audit, hand_off) {
            (Audit::BestEffort, HandOff::Admit) => match self.queue.try_admit() {
                Ok(()) => Sink::BestEffort(self.queue.clone()),
                // Counted and logged by the queue as a drop: forwarded, not recorded, and
                // nothing captured for it. Intercepted all the same, so that intercepted =
                // made into records + dropped before recording (the shutdown line).
                Err(_) => {
                    self.counters.proxy.intercepted.inc();
                    return Ok(None);
                }
            },
            (Audit::BestEffort, HandOff::AtEnd) => Sink::BestEffort(self.queue.clone()),
            // A refusal (503) never goes upstream: not intercepted.
            (Audit::Required, _) => Sink::Reserved(Box::pin(self.admit_required(id)).await?),
        };
        self.counters.proxy.intercepted.inc();
        let (headers, key_fp) = self.fingerprinter.record_headers(&parts.headers);
        let (path, query_fp) = self.fingerprinter.record_path(path_and_query);
        let meta = RequestMeta {
            id,
            started_at,
            t0,
            client_addr: Some(addr),
            route: target.route.clone(),
            upstream: Upstream {
                scheme: target.scheme.into(),
                host: target.host.clone(),
                port: target.port,
            },
            client_version: crate::exchange::version_name(parts.version),
            method: crate::exchange::method_name(&parts.method),
            path,
            headers,
            tags,
            api_key_fingerprint: key_fp.or(query_fp),
        };
        Ok(Some(Recording::start(meta, sink)))
    }

    /// Admits a request under `audit = "required"`: recording must be able to make it durable
    /// ([`Health`](crate::health::Health)) and the recording queue must have room for it,
    /// waited for up to `queue_wait` (back-pressure, [`ExchangeSender::reserve`]). Health is
    /// judged again after a wait, which may have lasted while recording degraded; a wait
    /// ends at once when shutdown begins. Refusals are counted in `queue.refused` (by the
    /// queue for its own) and answered 503 `audit_unavailable`.
    ///
    /// [`ExchangeSender::reserve`]: crate::exchange::queue::ExchangeSender::reserve
    async fn admit_required(
        &self,
        id: ExchangeId,
    ) -> Result<Reservation, Box<Response<ProxyBody>>> {
        self.healthy_for_required(id)?;
        let reserved = tokio::select! {
            biased;
            r = self.queue.reserve(self.settings.queue_wait) => r,
            _ = self.cancel.cancelled() => {
                self.counters.queue.refused.inc();
                Err(Refusal::Closed)
            }
        };
        let reservation = reserved.map_err(|why| {
            Box::new(self.answer(
                &ProxyError::audit_unavailable(format!(
                    "veil cannot record this request ({why}) and audit = \"required\"; retry later"
                )),
                Some(id),
            ))
        })?;
        if reservation.waited() {
            // Dropping the reservation on refusal gives its slot back.
            self.healthy_for_required(id)?;
        }
        Ok(reservation)
    }

    /// `Err` (veil's 503, counted as refused) when recording cannot be made durable now.
    fn healthy_for_required(&self, id: ExchangeId) -> Result<(), Box<Response<ProxyBody>>> {
        let Some(health) = self.health.as_ref().filter(|h| !h.is_ok()) else {
            return Ok(());
        };
        self.counters.queue.refused.inc();
        Err(Box::new(self.answer(
            &ProxyError::audit_unavailable(format!(
                "veil cannot make this request's record durable ({}) and audit = \"required\"; retry later",
                health.summary()
            )),
            Some(id),
        )))
    }

    /// The app's request body as veil forwards it: a body that stops arriving ends the request
    /// instead of holding its slot ([`StallClock`]), and an h2 body dropped before its end
    /// (an early answer, an upstream that failed) is drained, bounded ([`Drain`]).
    pub(super) fn request_body(
        &self,
        body: Incoming,
        version: Version,
    ) -> Drain<StallClock<Incoming>> {
        Drain::new(
            StallClock::new(body, self.settings.limits.header_read),
            DrainPolicy::for_version(version, &self.cancel),
        )
    }
}

/// True when `err` carries a failure of the app's request body ([`BodyError`]): it
/// broke off or stalled.
fn request_body_failed(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.downcast_ref::<BodyError<hyper::Error>>().is_some() {
            return true;
        }
        current = e.source();
    }
    false
}

/// True when `err` is a request body that stopped arriving ([`BodyError::Stalled`]).
fn request_body_stalled(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.downcast_ref::<BodyError<hyper::Error>>()
            .is_some_and(|b| b.is_stalled())
        {
            return true;
        }
        current = e.source();
    }
    false
}

pub(super) fn lock(rec: &RecordingRef) -> std::sync::MutexGuard<'_, Recording> {
    rec.lock().unwrap_or_else(|e| e.into_inner())
}
