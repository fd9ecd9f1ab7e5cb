//! # The proxy: the hot path.
//!
//! Listener, CONNECT and blind tunnels, TLS interception with minted leaves, the gateway, the
//! upstream client, and the tee that captures both bodies. It knows nothing of rules, OTLP or
//! crypto beyond fingerprinting credentials; each finished exchange leaves through a bounded
//! queue with `try_send` (see [`capture`]).
//!
//! ```text
//! accept (semaphore permit first) ──▶ HTTP/1.1 or h2c on the proxy port
//!   CONNECT host:port ── port not allowed ──▶ 403
//!        ├─ intercepted ──▶ 200, TLS with a minted leaf, h2/http1 by ALPN ──▶ forward()
//!        └─ otherwise ───▶ connect upstream (502 if it fails), 200, blind byte copy
//!   GET http://host/…  (absolute form) ──▶ forward() (recorded if the host is intercepted)
//!   /NAME/…            (gateway route)  ──▶ forward() to the route's base URL
//! ```

pub mod capture;
pub mod forward;
pub mod mitm;

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Audit, Config};
use crate::exchange::queue::{ExchangeSender, QueueCounters};
use crate::exchange::{ExchangeId, Route, Upstream, UpstreamFailure};
use crate::health::Health;
use capture::{Fingerprinter, Recording, RecordingRef, RequestMeta, Side, Sink, TeeBody};
use forward::{UpstreamClient, UpstreamError};
use mitm::{CertificateAuthority, LeafResolver};

/// The response header that carries the request ID.
pub const REQUEST_ID_HEADER: &str = "x-veil-request-id";

/// A TLS handshake with the app must finish within this; a silent client must not hold a task.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for an HTTP/1 request head, against slowloris-style idle sockets.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// Requests that got a 502/504 from veil.
    pub upstream_errors: AtomicU64,
}

/// Why the proxy could not be built.
#[derive(Debug)]
pub struct ProxyError(String);

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ProxyError {}

/// The proxy, ready to serve a listener.
#[derive(Debug, Clone)]
pub struct Proxy {
    shared: Arc<Shared>,
}

struct Shared {
    /// Resolved settings; never change while serving.
    config: Arc<Config>,
    /// Pooled upstream client shared by every connection.
    client: UpstreamClient<TeeBody<Incoming>>,
    /// `--resolve` overrides, for blind tunnels (the client has its own copy).
    resolver: forward::Resolver,
    /// TLS toward apps, leaves minted per SNI.
    tls: TlsAcceptor,
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
    /// Every connection and tunnel task, so shutdown can wait for them (bounded).
    tracker: TaskTracker,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("listen", &self.config.listen)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Builds the proxy. `queue` receives one [`Exchange`] per intercepted request.
    pub fn try_new(
        config: Config,
        ca: Arc<CertificateAuthority>,
        fingerprinter: Fingerprinter,
        queue: ExchangeSender,
    ) -> Result<Self, ProxyError> {
        let client = forward::client(&config).map_err(ProxyError)?;
        let resolver = Arc::new(LeafResolver::new(ca));
        let tls = TlsAcceptor::from(mitm::server_config(resolver));
        let stats = Arc::new(ProxyStats {
            capture: queue.counters().clone(),
            ..Default::default()
        });
        Ok(Proxy {
            shared: Arc::new(Shared {
                resolver: forward::Resolver::new(config.resolve.clone()),
                config: Arc::new(config),
                client,
                tls,
                fingerprinter,
                queue,
                health: None,
                stats,
                cancel: CancellationToken::new(),
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

    /// Serves `listener` until `shutdown` resolves, then stops accepting, lets in-flight
    /// exchanges finish (bounded by `drain_timeout`) and returns.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let shared = self.shared;
        let limit = Arc::new(Semaphore::new(shared.config.max_connections));
        let mut shutdown = pin!(shutdown);
        let mut backoff = Duration::from_secs(1);
        loop {
            // Take a permit before accepting: at the limit, connections wait in the kernel's
            // backlog instead of being accepted and starved.
            let permit = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                p = limit.clone().acquire_owned() => p.expect("invariant: the semaphore is never closed"),
            };
            let accepted = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                r = listener.accept() => r,
            };
            let (stream, addr) = match accepted {
                Ok(ok) => {
                    backoff = Duration::from_secs(1);
                    ok
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning or
                    // exiting, 1 s doubling to 64 s.
                    tracing::warn!(error = %e, backoff_s = backoff.as_secs(), "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(64));
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            shared.stats.connections.fetch_add(1, Ordering::Relaxed);
            let conn_shared = shared.clone();
            shared.tracker.spawn(async move {
                conn_shared.serve_client(stream, addr).await;
                drop(permit);
            });
        }
        drop(listener);
        tracing::info!("shutting down: no longer accepting, draining in-flight exchanges");
        shared.cancel.cancel();
        shared.tracker.close();
        let drain = shared.config.drain_timeout;
        if tokio::time::timeout(drain, shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = shared.tracker.len(),
                "drain timeout ({}s) reached; cutting remaining connections",
                drain.as_secs()
            );
        }
    }
}

impl Shared {
    /// Serves one app connection on the proxy port (HTTP/1.1 with upgrades, or h2c).
    async fn serve_client(self: Arc<Self>, stream: TcpStream, addr: SocketAddr) {
        let shared = self.clone();
        let svc = service_fn(move |req| {
            let shared = shared.clone();
            async move { Ok::<_, Infallible>(shared.route(req, addr).await) }
        });
        let builder = http_server();
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
        let result = until_cancelled(conn, &self.cancel, |c| c.graceful_shutdown()).await;
        if let Err(e) = result {
            log_conn_error("client connection", &*e);
        }
    }

    /// Decides what a request on the proxy port is: CONNECT, absolute-form, or gateway.
    async fn route(
        self: &Arc<Self>,
        req: Request<Incoming>,
        addr: SocketAddr,
    ) -> Response<ProxyBody> {
        if req.method() == Method::CONNECT {
            return self.connect(req, addr).await;
        }
        if req.uri().scheme().is_some() && req.uri().authority().is_some() {
            return self.absolute(req, addr).await;
        }
        self.gateway(req, addr).await
    }

    async fn connect(
        self: &Arc<Self>,
        req: Request<Incoming>,
        addr: SocketAddr,
    ) -> Response<ProxyBody> {
        let Some(authority) = req.uri().authority().cloned() else {
            return json_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "CONNECT needs host:port",
                None,
            );
        };
        let host = authority
            .host()
            .trim_matches(['[', ']'])
            .to_ascii_lowercase();
        let port = authority.port_u16().unwrap_or(443);
        if !self.config.is_port_allowed(&host, port) {
            return json_error(
                StatusCode::FORBIDDEN,
                "port_not_allowed",
                &format!(
                    "CONNECT to port {port} is not allowed (allowed: {:?}; see allow_ports)",
                    self.config.allow_ports
                ),
                None,
            );
        }
        if self.config.is_intercepted(&host, port) {
            let shared = self.clone();
            self.tracker.spawn(async move {
                match hyper::upgrade::on(req).await {
                    Ok(upgraded) => shared.intercept(upgraded, host, port, addr).await,
                    Err(e) => log_conn_error("CONNECT upgrade", &e),
                }
            });
            return empty_ok();
        }
        // Blind tunnel: connect first, so an unreachable target is a 502, not a dead tunnel.
        let upstream = match self
            .resolver
            .connect(&host, port, self.config.connect_timeout)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                self.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
                return upstream_error_response(&e, None);
            }
        };
        let stats = self.stats.clone();
        self.tracker.spawn(async move {
            let upgraded = match hyper::upgrade::on(req).await {
                Ok(u) => u,
                Err(e) => return log_conn_error("CONNECT upgrade", &e),
            };
            stats.tunnels.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let mut app = TokioIo::new(upgraded);
            let mut upstream = upstream;
            // Metadata only: which host, how many bytes, how long. Never content.
            match tokio::io::copy_bidirectional(&mut app, &mut upstream).await {
                Ok((up, down)) => tracing::debug!(host, port, bytes_up = up, bytes_down = down, duration_ms = started.elapsed().as_millis() as u64, "tunnel closed"),
                Err(e) => tracing::debug!(host, port, error = %e, duration_ms = started.elapsed().as_millis() as u64, "tunnel ended with error"),
            }
        });
        empty_ok()
    }

    /// Terminates the app's TLS with a minted leaf and serves HTTP/1.1 or h2 inside.
    async fn intercept(
        self: Arc<Self>,
        upgraded: hyper::upgrade::Upgraded,
        host: String,
        port: u16,
        addr: SocketAddr,
    ) {
        let accepted =
            tokio::time::timeout(HANDSHAKE_TIMEOUT, self.tls.accept(TokioIo::new(upgraded))).await;
        let tls = match accepted {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                tracing::warn!(host, error = %e, "TLS handshake with app failed (does it trust veil's CA? see `veil ca path`)");
                return;
            }
            Err(_) => {
                tracing::debug!(host, "TLS handshake with app timed out");
                return;
            }
        };
        // The leaf was minted for the SNI; it must be the host the app CONNECTed to, or an
        // app could obtain a leaf for any name through an allowed tunnel.
        if let Some(sni) = tls.get_ref().1.server_name()
            && !sni.eq_ignore_ascii_case(&host)
        {
            tracing::warn!(host, sni, "SNI does not match the CONNECT host; closing");
            return;
        }
        let shared = self.clone();
        let target = Arc::new(Target {
            scheme: "https",
            host,
            port,
            prefix: String::new(),
            route: Route::Intercept,
            record: true,
        });
        let svc = service_fn(move |req: Request<Incoming>| {
            let shared = shared.clone();
            let target = target.clone();
            async move {
                let pq = req
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string();
                Ok::<_, Infallible>(shared.forward(req, &target, &pq, addr).await)
            }
        });
        let builder = http_server();
        let conn = builder.serve_connection(TokioIo::new(tls), svc);
        let result = until_cancelled(conn, &self.cancel, |c| c.graceful_shutdown()).await;
        if let Err(e) = result {
            log_conn_error("intercepted connection", &*e);
        }
    }

    /// `GET http://host/path` through the proxy: plain HTTP, recorded if the host is intercepted.
    async fn absolute(
        self: &Arc<Self>,
        req: Request<Incoming>,
        addr: SocketAddr,
    ) -> Response<ProxyBody> {
        let uri = req.uri();
        let scheme = match uri.scheme_str() {
            Some("http") => "http",
            Some("https") => "https",
            _ => {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "only http:// and https:// URLs can be proxied",
                    None,
                );
            }
        };
        let host = uri
            .host()
            .unwrap_or_default()
            .trim_matches(['[', ']'])
            .to_ascii_lowercase();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        let pq = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
        let target = Target {
            scheme,
            record: self.config.is_intercepted(&host, port),
            host,
            port,
            prefix: String::new(),
            route: Route::PlainHttp,
        };
        self.forward(req, &target, &pq, addr).await
    }

    /// `/NAME/rest` → the route's base URL + `/rest`.
    async fn gateway(
        self: &Arc<Self>,
        req: Request<Incoming>,
        addr: SocketAddr,
    ) -> Response<ProxyBody> {
        let pq = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let trimmed = pq.trim_start_matches('/');
        let name_end = trimmed.find(['/', '?']).unwrap_or(trimmed.len());
        let name = &trimmed[..name_end];
        let Some(route) = self.config.routes.get(name) else {
            let names: Vec<&str> = self.config.routes.keys().map(String::as_str).collect();
            return json_error(
                StatusCode::NOT_FOUND,
                "no_route",
                &format!(
                    "no gateway route {name:?}; use http://{}/ROUTE/... with ROUTE one of: {} (or set HTTPS_PROXY to use veil as a proxy)",
                    self.config.listen,
                    names.join(", ")
                ),
                None,
            );
        };
        let rest = &trimmed[name_end..];
        let rest = if rest.starts_with('/') {
            rest.to_string()
        } else {
            format!("/{rest}")
        };
        let target = Target {
            scheme: if route.scheme == "https" {
                "https"
            } else {
                "http"
            },
            host: route.host.clone(),
            port: route.port,
            prefix: route.prefix.clone(),
            route: Route::Gateway {
                name: route.name.clone(),
            },
            record: true,
        };
        self.forward(req, &target, &rest, addr).await
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
            let sink = match self.config.audit {
                Audit::BestEffort => Sink::BestEffort(self.queue.clone()),
                Audit::Required if self.health.as_ref().is_some_and(|h| !h.is_ok()) => {
                    let why = self
                        .health
                        .as_ref()
                        .map(|h| h.summary())
                        .unwrap_or_default();
                    self.stats.capture.refused.inc();
                    return json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "audit_unavailable",
                        &format!(
                            "veil cannot make this request's record durable ({why}) and audit = \"required\"; retry later"
                        ),
                        Some(id),
                    );
                }
                Audit::Required => match self.queue.try_reserve() {
                    Ok(reservation) => Sink::Reserved(reservation),
                    Err(why) => {
                        return json_error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "audit_unavailable",
                            &format!(
                                "veil cannot record this request ({why}) and audit = \"required\"; retry later"
                            ),
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
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    &format!("cannot build upstream URL: {e}"),
                    Some(id),
                );
            }
        };
        parts.uri = uri;
        // hyper-util picks h2 by ALPN per connection; a request marked HTTP/2 would be refused
        // on an HTTP/1 connection.
        parts.version = Version::HTTP_11;
        let body = match &recording {
            Some(rec) => {
                TeeBody::recording(body, Side::Request, self.config.capture_limit, rec.clone())
            }
            None => TeeBody::passthrough(body),
        };
        let sent = tokio::time::timeout(
            self.config.upstream_timeout,
            self.client.request(Request::from_parts(parts, body)),
        )
        .await;
        let recorded = recording.is_some();
        let failure = match sent {
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
                        TeeBody::recording(body, Side::Response, self.config.capture_limit, rec)
                    }
                    None => TeeBody::passthrough(body),
                };
                if recorded {
                    parts.headers.insert(REQUEST_ID_HEADER, id_header(id));
                }
                return Response::from_parts(parts, Either::Left(body));
            }
            Ok(Err(e)) => forward::classify(&e, &shown),
            Err(_) => UpstreamError {
                kind: UpstreamFailure::Timeout,
                message: format!(
                    "no response headers from upstream {shown} within {}s",
                    self.config.upstream_timeout.as_secs_f32()
                ),
            },
        };
        self.stats.upstream_errors.fetch_add(1, Ordering::Relaxed);
        if let Some(rec) = &recording {
            let mut rec = lock(rec);
            if rec.request_body_failed() {
                // The app broke off its own upload; that is not the upstream's fault.
                tracing::debug!(exchange.id = %id, "app aborted while sending the request body");
            }
            rec.upstream_failed(failure.kind, failure.message.clone());
        }
        tracing::warn!(exchange.id = %id, kind = failure.kind.as_str(), "{}", failure.message);
        upstream_error_response(&failure, recorded.then_some(id))
    }
}

/// The HTTP server for app connections (the proxy port and intercepted TLS): HTTP/1.1 or h2
/// by preface, with a bound on how long a request head may take.
fn http_server() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder
}

/// Drives `conn` to the end; when shutdown begins, asks it to finish gracefully (in-flight
/// requests complete, no new ones start) and keeps driving it.
async fn until_cancelled<C: Future>(
    conn: C,
    cancel: &CancellationToken,
    graceful: impl FnOnce(std::pin::Pin<&mut C>),
) -> C::Output {
    let mut conn = pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        _ = cancel.cancelled() => {
            graceful(conn.as_mut());
            conn.await
        }
    }
}

/// Where a forwarded request goes and whether it is recorded.
#[derive(Debug)]
struct Target {
    scheme: &'static str,
    host: String,
    port: u16,
    /// Path prefix of a gateway route's base URL.
    prefix: String,
    route: Route,
    record: bool,
}

fn lock(rec: &RecordingRef) -> std::sync::MutexGuard<'_, Recording> {
    rec.lock().unwrap_or_else(|e| e.into_inner())
}

fn id_header(id: ExchangeId) -> HeaderValue {
    HeaderValue::from_str(&id.to_string()).expect("invariant: a UUID is a valid header value")
}

fn content_encoding(headers: &HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| !v.is_empty() && v != "identity")
}

/// Removes the `x-veil-*` headers (they tag the record and never go upstream) and returns them.
fn take_veil_headers(headers: &mut HeaderMap) -> Vec<(String, String)> {
    let names: Vec<HeaderName> = headers
        .keys()
        .filter(|n| n.as_str().starts_with("x-veil-"))
        .cloned()
        .collect();
    let mut tags = Vec::with_capacity(names.len());
    for name in names {
        for value in headers.get_all(&name) {
            tags.push((
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            ));
        }
        headers.remove(&name);
    }
    tags
}

/// Hop-by-hop headers (RFC 9110 §7.6.1) belong to one connection, not to the message.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    if headers
        .get(header::TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
}

/// h2 sends one `cookie` header per crumb; HTTP/1.1 upstreams expect one header.
fn join_cookies(headers: &mut HeaderMap) {
    let cookies: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    if cookies.len() > 1 {
        let joined = cookies.join(&b"; "[..]);
        if let Ok(value) = HeaderValue::from_bytes(&joined) {
            headers.insert(header::COOKIE, value);
        }
    }
}

fn empty_ok() -> Response<ProxyBody> {
    Response::new(Either::Right(Full::new(Bytes::new())))
}

fn upstream_error_response(err: &UpstreamError, id: Option<ExchangeId>) -> Response<ProxyBody> {
    json_error(
        err.status(),
        &format!("upstream_{}", err.kind.as_str()),
        &err.message,
        id,
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veil_headers_are_taken_and_hop_by_hop_stripped() {
        let mut h = HeaderMap::new();
        h.insert("x-veil-feature", "seo".parse().unwrap());
        h.insert("x-veil-user", "alice".parse().unwrap());
        h.insert("connection", "keep-alive, x-custom".parse().unwrap());
        h.insert("x-custom", "1".parse().unwrap());
        h.insert("te", "gzip".parse().unwrap());
        h.insert("content-type", "application/json".parse().unwrap());
        let tags = take_veil_headers(&mut h);
        strip_hop_by_hop(&mut h);
        assert_eq!(tags.len(), 2);
        assert!(h.keys().all(|k| !k.as_str().starts_with("x-veil-")));
        assert!(
            h.get("x-custom").is_none() && h.get("connection").is_none() && h.get("te").is_none()
        );
        assert!(h.get("content-type").is_some());
    }

    #[test]
    fn cookies_are_joined_for_http1() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1".parse().unwrap());
        h.append("cookie", "b=2".parse().unwrap());
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h.get("cookie").unwrap(), "a=1; b=2");
    }
}
