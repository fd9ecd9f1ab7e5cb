//! # The proxy: the hot path.
//!
//! Listener, CONNECT and blind tunnels, TLS interception with minted leaves, the gateway, the
//! upstream client, and the tee that captures both bodies. It knows nothing of rules, OTLP or
//! crypto beyond fingerprinting credentials; each finished exchange leaves through a bounded
//! queue with `try_send` (see [`tee`]). It reads the configuration once, in
//! [`ProxySettings::from_config`]; every stage reads its part of [`ProxySettings`].
//!
//! ```text
//! accept (semaphore permit first; it lives as long as the connection, tunnel or TLS session)
//!   ──▶ HTTP/1.1 or h2c on the proxy port, under the connection clock (conn::drive)
//!   CONNECT host:port ── bad port ──▶ 400; port not allowed or local/own address ──▶ 403
//!        ├─ intercepted ──▶ 200, ClientHello read, SNI must be the CONNECT host (else closed,
//!        │                  no leaf minted), TLS with a minted leaf, h2/http1 by ALPN ──▶ forward
//!        └─ otherwise ───▶ connect upstream (checked address; 502 if it fails), 200, blind
//!                          byte copy until either side closes or it carries nothing for
//!                          tunnel_idle_timeout
//!   GET http://host/…  (absolute form) ── same port and address rules as CONNECT ──▶ forward
//!                                          (recorded if the host is intercepted)
//!   /veil/…            (reserved, before any route; also inside intercepted TLS)
//!                                       ──▶ veil's own API: POST /veil/v1/feedback
//!   /NAME/…            (gateway route)  ──▶ forward to the route's base URL
//! ```
//!
//! One file per stage, in the order a request meets them (the same table is in
//! `docs/architecture.md`):
//!
//! | file | stage | hands on |
//! | --- | --- | --- |
//! | `settings.rs` | the one reader of `Config` (`tests/architecture.rs` checks): `ProxySettings`, with each stage's own settings (`conn::Limits`, `Destinations`, `CaScope`) | `ProxySettings`, built once |
//! | `listener.rs` | accept loop (a `max_connections` permit first), one HTTP/1.1-or-h2c server per app connection, shutdown drain | each request head to `route`, then the request to its stage |
//! | `reserved.rs` | `/veil/…`, before routing (proxy port and intercepted TLS): method, the `VeilApi` hook's token check, the body within 16 KiB | the body to the hook (the feedback service); its JSON answer to the app |
//! | `route.rs` | pure: request head + `ProxySettings` → `Route` | `Intercept`, `Tunnel`, `Forward { Target }` or `Reject(ProxyError)` |
//! | `tunnel.rs` | CONNECT to a host not intercepted: checked connect, 200, blind copy with an idle clock | byte counts to the log, never content |
//! | `intercept.rs` | CONNECT to an intercepted host: ClientHello read, SNI must be the CONNECT host (else closed, no leaf minted), TLS, h2/h1 by ALPN | each inner request with a recorded `Target` to `forward` |
//! | `ca.rs`, `name_constraints.rs` | veil's CA: load or create, name constraints held to the intercepted hosts, leaf signing | `CertificateAuthority` |
//! | `leaf.rs` | leaves by SNI, minted once per host, bounded cache | the `rustls::ServerConfig` `intercept` serves |
//! | `forward.rs` | one request upstream: audit admission, `fingerprint`, `headers`, `stall` clock, `drain`, `tee`, the `upstream` client | the response to the app; a `Recording` |
//! | `websocket.rs` | a WebSocket handshake (from `forward`): upgrade headers restored, sent on an HTTP/1.1-only client, the `101` returned, both upgraded streams spliced with a frame-header reader on each direction, the connection slot held until the session ends | one `Exchange` per session: bytes and frames each way, close code, never content |
//! | `realtime.rs` | on a Realtime session (`…/realtime`), from `websocket`'s frame readers: text messages reassembled and unmasked, audio events only sized, each handed to a bounded channel with `try_send`; a task per session follows the events (`exchange::realtime`) | one `Exchange` per `response.done` into the recording queue; the session's totals to its own record |
//! | `headers.rs`, `fingerprint.rs` | hop-by-hop and `x-veil-*` headers; credentials → keyed fingerprints | a rewritten `HeaderMap`; recorded headers and path |
//! | `upstream.rs` | pooled hyper-util client (rustls, h1/h2), failure classification | the response, or an `UpstreamError` |
//! | `destinations.rs` | `--resolve`, the destination policy, the one checked connect | a `TcpStream`, or an `UpstreamError` (`refused` for 403) |
//! | `tee.rs` | bodies forwarded frame by frame, copied into a bounded capture | one `Exchange` into the recording queue, exactly once |
//! | `error.rs`, `answer.rs` | `ProxyError` (side, status, code, metric label); veil's JSON answer, counted in one place | the response to the app |
//! | `conn.rs`, `woken.rs`, `stall.rs`, `drain.rs` | connection clocks (the admin API's too), whose shutdown tokens and timers are polled only when they fire; the request-body stall clock; the bounded drain of an h2 request body dropped unread, which veil's own early answers wait for (bounded, 1 s), so the answer is not followed or cut short by a reset the app trips on | — |

mod answer;
pub mod ca;
pub mod conn;
pub mod destinations;
mod drain;
pub mod error;
pub mod fingerprint;
mod forward;
mod headers;
mod intercept;
pub mod leaf;
mod listener;
mod name_constraints;
mod realtime;
pub mod reserved;
pub mod route;
pub mod settings;
mod stall;
pub mod tee;
mod tunnel;
pub mod upstream;
mod websocket;
pub mod woken;

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::counters::Counters;
use crate::exchange::queue::ExchangeSender;
use crate::health::Health;
use drain::Drain;
use leaf::LeafResolver;
use stall::StallClock;
use tee::TeeBody;
use upstream::UpstreamClient;

pub use ca::{CaError, CaScope, CertificateAuthority};
pub use fingerprint::Fingerprinter;
pub use listener::AcceptFailures;
pub use settings::ProxySettings;

/// The response header that carries the request ID.
pub const REQUEST_ID_HEADER: &str = "x-veil-request-id";

/// Pause after a failed `accept` (out of file descriptors, usually) before trying again.
/// Fixed and short: the condition clears as soon as connections close (the idle clock closes
/// them), and a doubling backoff kept veil deaf for up to a minute after it had (veil#10).
pub const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// A connection's place under `max_connections`: held by the connection task and by any tunnel
/// or TLS session it turns into, released when the last of them ends.
type Slot = Arc<ClientSlot>;

/// What an accepted app connection holds while any task serves it: its `max_connections`
/// permit and its count in `veil.proxy.connections.open`. Both are given back on drop, so
/// every way a connection ends (close, error, timeout, a task dropped at the shutdown cut)
/// counts it off; counting down at each exit instead would miss one sooner or later.
struct ClientSlot {
    _permit: OwnedSemaphorePermit,
    counters: Arc<Counters>,
    /// The `upstream_timeout` timer of the connection's last request, kept for its next one
    /// ([`ClientSlot::upstream_timer`]).
    timer: std::sync::Mutex<Option<Pin<Box<Sleep>>>>,
}

impl ClientSlot {
    /// Counts a just-accepted connection open until the returned slot's last clone is dropped.
    fn open(permit: OwnedSemaphorePermit, counters: &Arc<Counters>) -> Slot {
        counters.proxy.connections_open.add(1);
        Arc::new(ClientSlot {
            _permit: permit,
            counters: counters.clone(),
            timer: std::sync::Mutex::new(None),
        })
    }

    /// A timer for a request due by `deadline`: the one the connection's last request gave
    /// back ([`ClientSlot::keep_timer`]), else a new one (the first request, and each request
    /// of an h2 connection that runs beside another). It fires at `deadline` or earlier: a
    /// kept timer still running towards an earlier deadline is left as it is, and the caller
    /// that sees it fire before `deadline` moves it there (`Sleep::reset`) and waits again.
    ///
    /// Kept, and moved only when it fires, because a new `Sleep` per request takes the
    /// runtime's handle (a reference count both forwarding threads write) and adds and
    /// removes a timer-wheel entry, and even `Sleep::reset` takes the handle: ~0.5 µs per
    /// response at 64 connections (stop 62's profile). A kept timer fires about once per
    /// `upstream_timeout` while the connection is busy.
    fn upstream_timer(&self, deadline: tokio::time::Instant) -> Pin<Box<Sleep>> {
        let kept = self
            .timer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match kept {
            Some(t) if t.deadline() <= deadline && !t.is_elapsed() => t,
            Some(mut t) => {
                t.as_mut().reset(deadline);
                t
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        }
    }

    /// Gives `timer` back for the connection's next request (one is kept).
    fn keep_timer(&self, timer: Pin<Box<Sleep>>) {
        let mut kept = self
            .timer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.is_none() {
            *kept = Some(timer);
        }
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.counters.proxy.connections_open.sub(1);
    }
}

/// The body veil answers with: an upstream body passing through the tee, or veil's own.
pub type ProxyBody = Either<TeeBody<Incoming>, Full<Bytes>>;

/// The app's request body as the upstream client carries it: boxed, one allocation per
/// request, so the request hyper-util moves through its futures and queues is a pointer plus
/// the head (~230 bytes) instead of ~540. Unboxed, those moves copied ~6 KB more per request
/// on the forwarding threads than the same client with hyper's own body (`benches/load`,
/// counted with a `perf probe` on `memmove`: see docs/performance.md).
type UpstreamBody = Box<TeeBody<Drain<StallClock<Incoming>>>>;

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
    client: UpstreamClient<UpstreamBody>,
    /// HTTP/1.1-only client for WebSocket handshakes (an upgrade cannot ride an h2
    /// connection); an upgraded connection leaves its pool.
    ws_client: UpstreamClient<http_body_util::Empty<Bytes>>,
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
    /// veil's own API under `/veil/` (the feedback service), when `veil run` hands one.
    api: reserved::Api,
    /// The registry, taken from the recording queue (the same one it counts in): the proxy
    /// counts in its `proxy` section, and audit refusals in `queue.refused`.
    counters: Arc<Counters>,
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
    /// receives one [`Exchange`](crate::exchange::Exchange) per intercepted request; the proxy
    /// counts in the registry the queue was made with ([`ExchangeSender::counters`]).
    pub fn try_new(
        settings: ProxySettings,
        ca: Arc<CertificateAuthority>,
        fingerprinter: Fingerprinter,
        queue: ExchangeSender,
    ) -> Result<Self, BuildError> {
        let counters = queue.counters().clone();
        let client = upstream::client(&settings, counters.clone(), upstream::Versions::Any)
            .map_err(BuildError)?;
        let ws_client = upstream::client(&settings, counters.clone(), upstream::Versions::Http1)
            .map_err(BuildError)?;
        let leaves = Arc::new(LeafResolver::new(ca, counters.clone()));
        let tls = leaf::server_config(leaves.clone());
        Ok(Proxy {
            shared: Arc::new(Shared {
                settings,
                client,
                ws_client,
                tls,
                leaves,
                fingerprinter,
                queue,
                health: None,
                api: None,
                counters,
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

    /// Serves veil's reserved API (`POST /veil/v1/feedback`) with `api`. Without it, `/veil/`
    /// is still reserved and answers 404. Call right after [`Proxy::try_new`], as
    /// [`Proxy::with_health`].
    pub fn with_api(mut self, api: Arc<dyn reserved::VeilApi>) -> Self {
        match Arc::get_mut(&mut self.shared) {
            Some(shared) => shared.api = Some(api),
            None => tracing::error!("with_api called on a shared proxy: ignored"),
        }
        self
    }

    /// The registry the proxy counts in (its queue's).
    pub fn counters(&self) -> &Arc<Counters> {
        &self.shared.counters
    }
}

impl Shared {
    /// Spawns a connection or tunnel task: tracked (shutdown waits for it, bounded) and
    /// dropped when the drain time is up.
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        self.tracker.spawn(killable(task, &self.kill));
    }
}

/// `task`, dropped when `kill` fires, held once ([`woken::Killable`]: the token is looked at
/// only when it fired, not on each of the task's wake-ups).
///
/// Not an `async move` block around `select!`: a future moved inside an async block keeps its
/// room there after the move, so such a wrapper held every connection's task twice (an
/// intercepted connection's was ~5.4 KB, for as long as the app keeps the connection).
fn killable<F: Future>(task: F, kill: &CancellationToken) -> woken::Killable<F> {
    woken::Killable::new(task, kill.clone())
}
