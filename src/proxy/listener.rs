//! # Listener: the accept loop, each app connection, and the hand-off by route.
//!
//! First stage of the flow. It takes a connection slot (a `max_connections` permit) before
//! accepting, so at the limit connections wait in the kernel's backlog; serves each accepted
//! socket as HTTP/1.1 or h2c under the connection clock ([`conn::drive`]);
//! asks [`route`] what each request is and hands it on: a [`Route::Intercept`]
//! to [`intercept`](super::intercept) (after the 200), a [`Route::Tunnel`] to
//! [`tunnel`](super::tunnel), a [`Route::Forward`] to [`forward`](super::forward), a
//! [`Route::Reject`] to [`answer`](super::answer). On shutdown it stops accepting, drains
//! in-flight exchanges for `drain_timeout`, then cuts what is left. Accept failures are
//! retried after [`ACCEPT_RETRY`] and logged at most every 10 s
//! ([`AcceptFailures`], shared with the admin listener). It never reads a body (one it
//! refuses is left to [`drain`](super::drain)) and never talks to an upstream.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::answer::empty_ok;
use super::conn::{self, Activity, Ended, Tracked, Watched};
use super::route::{self, RequestHead, Route};
use super::upstream;
use super::{ACCEPT_RETRY, ClientSlot, Proxy, ProxyBody, Shared, Slot};

/// Accept failures are logged at most this often (with a count), so a descriptor shortage
/// does not also flood the log.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);
/// h2 connections to apps are pinged this often when quiet, so a peer that vanished (no FIN,
/// NAT dropped) is noticed during a long silent stream instead of holding its slot.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
/// ...and closed when a ping is not answered within this.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

impl Proxy {
    /// Serves `listener` until `shutdown` resolves, then stops accepting, lets in-flight
    /// exchanges finish (bounded by `drain_timeout`) and returns.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let shared = self.shared;
        if let Ok(bound) = listener.local_addr() {
            shared.settings.resolver.destinations().set_bound(bound);
        }
        let limit = Arc::new(Semaphore::new(shared.settings.max_connections));
        let mut shutdown = pin!(shutdown);
        let mut failures = AcceptFailures::default();
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
                Ok(ok) => ok,
                Err(e) => {
                    // Out of file descriptors and the like: neither spin nor exit; retry soon.
                    failures.note("proxy", &e);
                    drop(permit);
                    tokio::select! {
                        biased;
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(ACCEPT_RETRY) => continue,
                    }
                }
            };
            let _ = stream.set_nodelay(true);
            shared.counters.proxy.connections.inc();
            let slot = ClientSlot::open(permit, &shared.counters);
            let conn_shared = shared.clone();
            shared.spawn(async move {
                conn_shared.serve_client(stream, addr, slot).await;
            });
        }
        drop(listener);
        tracing::info!("shutting down: no longer accepting, draining in-flight exchanges");
        shared.cancel.cancel();
        shared.tracker.close();
        let drain = shared.settings.drain_timeout;
        if tokio::time::timeout(drain, shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = shared.tracker.len(),
                "drain timeout ({}s) reached; cutting remaining connections",
                drain.as_secs()
            );
            // Dropping the connections ends their exchanges (recorded as client_aborted) and
            // lets go of the recording queue, so the pipeline can drain and stop.
            shared.kill.cancel();
            let _ = tokio::time::timeout(KILL_GRACE, shared.tracker.wait()).await;
        }
    }
}

/// Rate-limited logging of accept failures: the first at once, then one line with a count at
/// most every 10 s.
#[derive(Debug, Default)]
pub struct AcceptFailures {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl AcceptFailures {
    /// Notes one failure of the `what` listener.
    pub fn note(&mut self, what: &str, err: &std::io::Error) {
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|t| now.duration_since(t) < ACCEPT_LOG_EVERY)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            listener = what,
            error = %err,
            retry_ms = ACCEPT_RETRY.as_millis() as u64,
            failures_since_last_log = self.suppressed,
            "accept failed (out of file descriptors? see ulimit -n and max_connections)"
        );
        self.last_logged = Some(now);
        self.suppressed = 0;
    }
}

/// How long cut connections get to let go of their tasks after the drain time is up.
const KILL_GRACE: Duration = Duration::from_millis(200);

impl Shared {
    /// Serves one app connection on the proxy port (HTTP/1.1 with upgrades, or h2c).
    async fn serve_client(self: Arc<Self>, stream: TcpStream, addr: SocketAddr, slot: Slot) {
        let activity = Activity::new();
        let shared = self.clone();
        let watched = activity.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let shared = shared.clone();
            let slot = slot.clone();
            let in_flight = watched.begin(req.version());
            // Boxed per request, as in an intercepted session (`intercept`): hyper keeps room
            // for the service's future for the connection's life.
            Box::pin(async move {
                let resp = shared.dispatch(req, addr, slot).await;
                Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, in_flight)))
            })
        });
        let builder = http_server();
        let io = TokioIo::new(Watched::new(stream, activity.clone()));
        let conn = Box::pin(builder.serve_connection_with_upgrades(io, svc));
        self.finish("client connection", conn, &activity, |c| {
            c.graceful_shutdown()
        })
        .await;
    }

    /// Drives one app connection under its clock, counting and logging how it ended.
    ///
    /// The connection comes boxed: hyper's connection (~2.8 KB for an intercepted one, whose
    /// TLS stream is inline) held by
    /// value was stored once per async frame it passed through (the caller's, this one's,
    /// [`conn::drive`]'s), which made an intercepted connection's task 9.6 KB; boxed (and its
    /// TLS handshake too), the task is 1.3 KB and the connection is on the heap once (veil#18:
    /// memory per idle connection).
    pub(super) async fn finish<C, E>(
        &self,
        what: &'static str,
        conn: std::pin::Pin<Box<C>>,
        activity: &Activity,
        graceful: impl Fn(std::pin::Pin<&mut C>),
    ) where
        C: Future<Output = Result<(), E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let graceful =
            |c: std::pin::Pin<&mut std::pin::Pin<Box<C>>>| graceful(c.get_mut().as_mut());
        match conn::drive(conn, activity, self.settings.limits, &self.cancel, graceful).await {
            Ended::Done(Ok(())) => {}
            Ended::Done(Err(e)) => log_conn_error(what, &*e.into()),
            Ended::TimedOut(why) => {
                self.counters.proxy.timed_out.inc();
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
        // Before routing: no gateway route (nor an absolute-form URL) can take `/veil/`.
        if super::reserved::is_reserved(&req) {
            return self.reserved(req).await;
        }
        match route::route(RequestHead::of(&req), &self.settings) {
            Route::Intercept { host, port } => {
                let shared = self.clone();
                // Taken here, not in the task: a request moved inside it would keep its room
                // (~250 bytes) for the connection's life.
                let upgrade = hyper::upgrade::on(req);
                self.spawn(async move {
                    match upgrade.await {
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
            } => {
                self.forward(req, &target, path_and_query, addr, &slot)
                    .await
            }
            Route::Reject(why) => {
                let (parts, body) = req.into_parts();
                // Unread: an h2 body is drained (bounded), and the answer waits for that
                // (bounded), so it is not followed by a reset some clients trip on (see `drain`).
                let mut body = self.request_body(body, parts.version);
                let settled = body.settled();
                drop(body);
                super::forward::answer_unread(settled, self.answer(&why, None)).await
            }
        }
    }
}

/// The HTTP server for app connections (the proxy port and intercepted TLS): HTTP/1.1 or h2
/// by preface. Head-read and idle limits come from [`conn::drive`], not hyper's
/// `header_read_timeout` (see [`conn`] for why it is switched off); h2 connections are pinged
/// when quiet so dead peers are noticed.
pub(super) fn http_server() -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_TIMEOUT);
    builder
}

/// [`http_server`]'s HTTP/1.1 half alone (the same settings), for an intercepted TLS session
/// whose ALPN did not choose h2.
pub(super) fn http1_server() -> hyper::server::conn::http1::Builder {
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder.header_read_timeout(None);
    builder
}

/// Logs a connection error unless it is the ordinary noise of peers going away.
pub(super) fn log_conn_error(what: &str, err: &(dyn std::error::Error + 'static)) {
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
    tracing::debug!(error = %upstream::chain(err), "{what} ended with an error");
}
