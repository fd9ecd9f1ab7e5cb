//! # The proxy: the hot path.
//!
//! Listener, CONNECT and blind tunnels, TLS interception with minted leaves, the gateway, the
//! upstream client, and the tee that captures both bodies. It knows nothing of rules, OTLP or
//! crypto beyond fingerprinting credentials; each finished exchange leaves through a bounded
//! queue with `try_send` (see [`capture`]).
//!
//! ```text
//! accept (semaphore permit first; it lives as long as the connection, tunnel or TLS session)
//!   ──▶ HTTP/1.1 or h2c on the proxy port, under the connection clock (conn::drive)
//!   CONNECT host:port ── bad port ──▶ 400; port not allowed or local/own address ──▶ 403
//!        ├─ intercepted ──▶ 200, ClientHello read, SNI must be the CONNECT host (else closed,
//!        │                  no leaf minted), TLS with a minted leaf, h2/http1 by ALPN ──▶ forward()
//!        └─ otherwise ───▶ connect upstream (checked address; 502 if it fails), 200, blind
//!                          byte copy until either side closes or it carries nothing for
//!                          tunnel_idle_timeout
//!   GET http://host/…  (absolute form) ── same port and address rules as CONNECT ──▶ forward()
//!                                          (recorded if the host is intercepted)
//!   /NAME/…            (gateway route)  ──▶ forward() to the route's base URL
//! ```
//!
//! Every upstream connection, pooled or tunnelled, is opened by [`forward::Resolver`], which
//! refuses loopback, link-local, unspecified and veil's own addresses unless the operator named
//! the destination ([`forward::Destinations`]).

pub mod capture;
pub mod conn;
pub mod error;
pub mod forward;
mod headers;
mod intercept;
mod listener;
pub mod mitm;
pub mod route;
pub mod settings;
mod tunnel;

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Audit;
use crate::exchange::queue::{ExchangeSender, QueueCounters};
use crate::exchange::{ExchangeId, Upstream, UpstreamFailure};
use crate::health::Health;
use capture::{Fingerprinter, Recording, RecordingRef, RequestMeta, Side, Sink, TeeBody};
use conn::{Activity, Ended, StallClock, Tracked, Watched};
use error::ProxyError;
use forward::{UpstreamClient, UpstreamError};
use headers::{content_encoding, join_cookies, strip_hop_by_hop, take_veil_headers};
pub use listener::AcceptFailures;
use mitm::{CertificateAuthority, LeafResolver};
use route::{RequestHead, Route, Target};
pub use settings::ProxySettings;

/// The response header that carries the request ID.
pub const REQUEST_ID_HEADER: &str = "x-veil-request-id";

/// Pause after a failed `accept` (out of file descriptors, usually) before trying again.
/// Fixed and short: the condition clears as soon as connections close (the idle clock closes
/// them), and a doubling backoff kept veil deaf for up to a minute after it had (veil#10).
pub const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// Accept failures are logged at most this often (with a count), so a descriptor shortage
/// does not also flood the log.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);
/// h2 connections to apps are pinged this often when quiet, so a peer that vanished (no FIN,
/// NAT dropped) is noticed during a long silent stream instead of holding its slot.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
/// ...and closed when a ping is not answered within this.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// A connection's place under `max_connections`: held by the connection task and by any tunnel
/// or TLS session it turns into, released when the last of them ends.
type Slot = Arc<OwnedSemaphorePermit>;

/// The body veil answers with: an upstream body passing through the tee, or veil's own.
pub type ProxyBody = Either<TeeBody<Incoming>, Full<Bytes>>;

/// Counters of the proxy, for metrics and tests.
#[derive(Debug, Default)]
pub struct ProxyStats {
    /// Recording hand-off counters (the queue's own).
    pub capture: Arc<QueueCounters>,
    /// Client connections accepted.
    pub connections: AtomicU64,
    /// CONNECT tunnels passed through blind.
    pub tunnels: AtomicU64,
    /// Requests forwarded with recording.
    pub intercepted: AtomicU64,
    /// Requests that got a 502/504 from veil because of the upstream.
    pub upstream_errors: AtomicU64,
    /// Forwarded requests whose app broke off its own upload (counted here, not as upstream
    /// errors).
    pub client_aborted: AtomicU64,
    /// Requests refused with 403: a port outside `allow_ports`, or a destination veil does
    /// not connect to for apps (loopback, link-local, unspecified, its own listeners).
    pub refused: AtomicU64,
    /// Client connections and tunnels closed by a clock: TLS handshake, request head, idle
    /// keep-alive or tunnel idle timeout.
    pub timed_out: AtomicU64,
    /// Leaf certificates minted (not served from the cache).
    pub leaves_minted: Arc<AtomicU64>,
}

/// Why the proxy could not be built.
#[derive(Debug)]
pub struct BuildError(String);

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BuildError {}

/// The proxy, ready to serve a listener.
#[derive(Debug, Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

struct Shared {
    /// Resolved settings; never change while serving. Its resolver (`--resolve` overrides
    /// and the destination policy) serves blind tunnels and literal checks; the client holds
    /// a clone.
    settings: ProxySettings,
    /// Pooled upstream client shared by every connection.
    client: UpstreamClient<TeeBody<StallClock<Incoming>>>,
    /// TLS toward apps, leaves minted per SNI (checked against the CONNECT host first).
    tls: Arc<rustls::ServerConfig>,
    /// Mints and caches the leaves behind `tls`.
    leaves: Arc<LeafResolver>,
    /// Credential fingerprints for recorded headers.
    fingerprinter: Fingerprinter,
    /// The recording queue; the proxy only ever `try_send`s or reserves.
    queue: ExchangeSender,
    /// Whether recording can be made durable now (audit = required admits only then).
    health: Option<Arc<Health>>,
    /// Counters.
    stats: Arc<ProxyStats>,
    /// Fired when shutdown begins: connections finish in-flight requests and close.
    cancel: CancellationToken,
    /// Fired when the drain time is up: connections still open are dropped, so the exchanges
    /// they carry end (recorded as aborted) and recording can drain and stop.
    kill: CancellationToken,
    /// Every connection and tunnel task, so shutdown can wait for them (bounded).
    tracker: TaskTracker,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("listen", &self.settings.listen)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Builds the proxy from its `settings` (see [`ProxySettings::from_config`]). `queue`
    /// receives one [`Exchange`](crate::exchange::Exchange) per intercepted request.
    pub fn try_new(
        settings: ProxySettings,
        ca: Arc<CertificateAuthority>,
        fingerprinter: Fingerprinter,
        queue: ExchangeSender,
    ) -> Result<Self, BuildError> {
        let client = forward::client(&settings).map_err(BuildError)?;
        let leaves = Arc::new(LeafResolver::new(ca));
        let tls = mitm::server_config(leaves.clone());
        let stats = Arc::new(ProxyStats {
            capture: queue.counters().clone(),
            leaves_minted: leaves.minted_counter(),
            ..ProxyStats::default()
        });
        Ok(Proxy {
            shared: Arc::new(Shared {
                settings,
                client,
                tls,
                leaves,
                fingerprinter,
                queue,
                health: None,
                stats,
                cancel: CancellationToken::new(),
                kill: CancellationToken::new(),
                tracker: TaskTracker::new(),
            }),
        })
    }

    /// Admits requests under `audit = "required"` only while `health` says recording can be
    /// made durable (checked per request: one atomic load). Call right after
    /// [`Proxy::try_new`], before the proxy is cloned or served.
    pub fn with_health(mut self, health: Arc<Health>) -> Self {
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => shared.health = Some(health),
            None => tracing::error!("with_health called on a shared proxy: ignored"),
        }
        self
    }

    /// The proxy's counters.
    pub fn stats(&self) -> Arc<ProxyStats> {
        self.shared.stats.clone()
    }
}

impl Shared {
    /// Spawns a connection or tunnel task: tracked (shutdown waits for it, bounded) and
    /// dropped when the drain time is up.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let kill = self.kill.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = task => {}
                () = kill.cancelled() => {}
            }
        });
    }

    /// Serves one app connection on the proxy port (HTTP/1.1 with upgrades, or h2c).
    async fn serve_client(self: Arc<Self>, stream: TcpStream, addr: SocketAddr, slot: Slot) {
        let activity = Activity::new();
        let shared = self.clone();
        let watched = activity.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let shared = shared.clone();
            let slot = slot.clone();
            let in_flight = watched.begin(req.version());
            async move {
                let resp = shared.dispatch(req, addr, slot).await;
                Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, in_flight)))
            }
        });
        let builder = http_server();
        let io = TokioIo::new(Watched::new(stream, activity.clone()));
        let conn = builder.serve_connection_with_upgrades(io, svc);
        self.finish("client connection", conn, &activity, |c| {
            c.graceful_shutdown()
        })
        .await;
    }

    /// Drives one app connection under its clock, counting and logging how it ended.
    async fn finish<C, E>(
        &self,
        what: &'static str,
        conn: C,
        activity: &Activity,
        graceful: impl Fn(std::pin::Pin<&mut C>),
    ) where
        C: Future<Output = Result<(), E>>,
        E: std::ops::Deref<Target = dyn std::error::Error + Send + Sync>,
    {
        match conn::drive(conn, activity, self.settings.limits, &self.cancel, graceful).await {
            Ended::Done(Ok(())) => {}
            Ended::Done(Err(e)) => log_conn_error(what, &*e),
            Ended::TimedOut(why) => {
                self.stats.timed_out.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(reason = why.as_str(), "closing {what}");
            }
        }
    }

    /// Serves one request on the proxy port as [`route::route`] decides: intercept, tunnel,
    /// forward, or veil's own error.
    async fn dispatch(
        self: &Arc<Self>,
        req: Request<Incoming>,
        addr: SocketAddr,
        slot: Slot,
    ) -> Response<ProxyBody> {
        match route::route(RequestHead::of(&req), &self.settings) {
            Route::Intercept { host, port } => {
                let shared = self.clone();
                self.spawn(async move {
                    match hyper::upgrade::on(req).await {
                        Ok(upgraded) => shared.intercept(upgraded, host, port, addr, slot).await,
                        Err(e) => log_conn_error("CONNECT upgrade", &e),
                    }
                });
                empty_ok()
            }
            Route::Tunnel { host, port } => self.tunnel(req, host, port, slot).await,
            Route::Forward {
                target,
                path_and_query,
            } => self.forward(req, &target, &path_and_query, addr).await,
            Route::Reject(why) => self.answer(&why, None),
        }
    }

    /// Sends one request upstream and streams the response back, teeing both bodies into a
    /// recording when the target is recorded.
    async fn forward(
        self: &Arc<Self>,
        req: Request<Incoming>,
        target: &Target,
        path_and_query: &str,
        addr: SocketAddr,
    ) -> Response<ProxyBody> {
        let id = ExchangeId::new();
        let t0 = Instant::now();
        let started_at = SystemTime::now();
        let (mut parts, body) = req.into_parts();
        let client_version = parts.version;
        let tags = take_veil_headers(&mut parts.headers);
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(header::HOST);
        join_cookies(&mut parts.headers);

        let path_and_query = format!("{}{}", target.prefix, path_and_query);
        let shown = format!("{}:{}", target.host, target.port);
        let recording = if target.record {
            let sink = match self.settings.audit {
                Audit::BestEffort => Sink::BestEffort(self.queue.clone()),
                Audit::Required if self.health.as_ref().is_some_and(|h| !h.is_ok()) => {
                    let why = self
                        .health
                        .as_ref()
                        .map(|h| h.summary())
                        .unwrap_or_default();
                    self.stats.capture.refused.inc();
                    return self.answer(
                        &ProxyError::audit_unavailable(format!(
                            "veil cannot make this request's record durable ({why}) and audit = \"required\"; retry later"
                        )),
                        Some(id),
                    );
                }
                Audit::Required => match self.queue.try_reserve() {
                    Ok(reservation) => Sink::Reserved(reservation),
                    Err(why) => {
                        return self.answer(
                            &ProxyError::audit_unavailable(format!(
                                "veil cannot record this request ({why}) and audit = \"required\"; retry later"
                            )),
                            Some(id),
                        );
                    }
                },
            };
            self.stats.intercepted.fetch_add(1, Ordering::Relaxed);
            let (headers, key_fp) = self.fingerprinter.record_headers(&parts.headers);
            let (path, query_fp) = self.fingerprinter.record_path(&path_and_query);
            let meta = RequestMeta {
                id,
                started_at,
                t0,
                client_addr: Some(addr),
                route: target.route.clone(),
                upstream: Upstream {
                    scheme: target.scheme.to_string(),
                    host: target.host.clone(),
                    port: target.port,
                },
                client_version: format!("{client_version:?}"),
                method: parts.method.as_str().to_string(),
                path,
                headers,
                tags,
                api_key_fingerprint: key_fp.or(query_fp),
            };
            let rec = Recording::start(meta, sink);
            lock(&rec).request_encoding(content_encoding(&parts.headers));
            Some(rec)
        } else {
            None
        };

        let default_port = if target.scheme == "https" { 443 } else { 80 };
        let authority = if target.port == default_port {
            target.host.clone()
        } else {
            format!("{}:{}", target.host, target.port)
        };
        let uri = match Uri::builder()
            .scheme(target.scheme)
            .authority(authority)
            .path_and_query(path_and_query)
            .build()
        {
            Ok(uri) => uri,
            Err(e) => {
                return self.answer(
                    &ProxyError::internal(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        format!("cannot build upstream URL: {e}"),
                    ),
                    Some(id),
                );
            }
        };
        parts.uri = uri;
        // hyper-util picks h2 by ALPN per connection; a request marked HTTP/2 would be refused
        // on an HTTP/1 connection.
        parts.version = Version::HTTP_11;
        // A body that stops arriving ends the request instead of holding its slot.
        let body = StallClock::new(body, self.settings.limits.header_read);
        let body = match &recording {
            Some(rec) => TeeBody::recording(
                body,
                Side::Request,
                self.settings.capture_limit,
                rec.clone(),
            ),
            None => TeeBody::passthrough(body),
        };
        let sent = tokio::time::timeout(
            self.settings.upstream_timeout,
            self.client.request(Request::from_parts(parts, body)),
        )
        .await;
        let recorded = recording.is_some();
        let (failure, body_failed) = match sent {
            Ok(Ok(resp)) => {
                let (mut parts, body) = resp.into_parts();
                strip_hop_by_hop(&mut parts.headers);
                parts.version = client_version;
                let body = match recording {
                    Some(rec) => {
                        let (headers, _) = self.fingerprinter.record_headers(&parts.headers);
                        lock(&rec).response_head(
                            parts.status.as_u16(),
                            headers,
                            content_encoding(&parts.headers),
                        );
                        TeeBody::recording(body, Side::Response, self.settings.capture_limit, rec)
                    }
                    None => TeeBody::passthrough(body),
                };
                if recorded {
                    parts.headers.insert(REQUEST_ID_HEADER, id_header(id));
                }
                return Response::from_parts(parts, Either::Left(body));
            }
            Ok(Err(e)) if request_body_stalled(&e) => {
                // The app's side: its upload stopped. Not the upstream's fault, not a 502.
                if let Some(rec) = &recording {
                    lock(rec).upstream_failed(UpstreamFailure::Protocol, e.to_string());
                }
                return self.answer(
                    &ProxyError::body_stalled(format!(
                        "the request body stalled: nothing arrived for {}s (header_read_timeout)",
                        self.settings.limits.header_read.as_secs_f32()
                    )),
                    recorded.then_some(id),
                );
            }
            Ok(Err(e)) => (forward::classify(&e, &shown), request_body_failed(&e)),
            Err(_) => (
                UpstreamError::new(
                    UpstreamFailure::Timeout,
                    format!(
                        "no response headers from upstream {shown} within {}s",
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
        self.answer(&err, recorded.then_some(id))
    }

    /// Answers with `err` (veil's JSON error), counting it under its
    /// [`ProxyError::metric_label`].
    fn answer(&self, err: &ProxyError, id: Option<ExchangeId>) -> Response<ProxyBody> {
        let counter = match err.metric_label() {
            "refused" => Some(&self.stats.refused),
            "timed_out" => Some(&self.stats.timed_out),
            "client_aborted" => Some(&self.stats.client_aborted),
            "upstream_error" => Some(&self.stats.upstream_errors),
            // Malformed requests were never counted; audit refusals are counted by the
            // recording queue (capture.refused) where they arise.
            _ => None,
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        json_error(err.status(), err.code(), err.message(), id)
    }
}

/// True when `err` carries a failure of the app's request body ([`conn::BodyError`]): it
/// broke off or stalled.
fn request_body_failed(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.downcast_ref::<conn::BodyError<hyper::Error>>().is_some() {
            return true;
        }
        current = e.source();
    }
    false
}

/// True when `err` is a request body that stopped arriving ([`conn::BodyError::Stalled`]).
fn request_body_stalled(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(err);
    while let Some(e) = current {
        if e.downcast_ref::<conn::BodyError<hyper::Error>>()
            .is_some_and(|b| b.is_stalled())
        {
            return true;
        }
        current = e.source();
    }
    false
}

/// The HTTP server for app connections (the proxy port and intercepted TLS): HTTP/1.1 or h2
/// by preface. Head-read and idle limits come from [`conn::drive`], not hyper's
/// `header_read_timeout` (see [`conn`] for why it is switched off); h2 connections are pinged
/// when quiet so dead peers are noticed.
fn http_server() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_TIMEOUT);
    builder
}

fn lock(rec: &RecordingRef) -> std::sync::MutexGuard<'_, Recording> {
    rec.lock().unwrap_or_else(|e| e.into_inner())
}

fn id_header(id: ExchangeId) -> HeaderValue {
    HeaderValue::from_str(&id.to_string()).expect("invariant: a UUID is a valid header value")
}

fn empty_ok() -> Response<ProxyBody> {
    Response::new(Either::Right(Full::new(Bytes::new())))
}

/// veil's own error: a short JSON body shaped like the providers' (`error.message`), so SDKs
/// surface the reason.
fn json_error(
    status: StatusCode,
    code: &str,
    message: &str,
    id: Option<ExchangeId>,
) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "error": {
            "message": format!("veil: {message}"),
            "type": "veil_error",
            "code": code,
            "request_id": id.map(|id| id.to_string()),
        }
    });
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(id) = id {
        resp.headers_mut().insert(REQUEST_ID_HEADER, id_header(id));
    }
    resp
}

/// Logs a connection error unless it is the ordinary noise of peers going away.
fn log_conn_error(what: &str, err: &(dyn std::error::Error + 'static)) {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(h) = e.downcast_ref::<hyper::Error>()
            && (h.is_incomplete_message() || h.is_canceled() || h.is_closed())
        {
            return;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            if matches!(
                io.kind(),
                UnexpectedEof | ConnectionReset | BrokenPipe | ConnectionAborted | NotConnected
            ) {
                return;
            }
        }
        current = e.source();
    }
    tracing::debug!(error = %forward::chain(err), "{what} ended with an error");
}
