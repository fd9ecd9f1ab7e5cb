//! # Admin API server: routes, status codes and connection limits.
//!
//! Serves the table in [`crate::admin`]'s docs on a listener `veil run` hands it: a TCP one
//! (`admin_listen`, every `/v1` request needs the token: [`serve_tcp`]) or the control socket
//! (the peer's uid must be veil's: [`serve_control`]). It calls [`SealStore`] (on blocking
//! threads) and the hooks of [`Instance`] (rules reload, the CA's paths, feedback, what a
//! forget must also drop from memory) and nothing else:
//! it never touches the proxy's traffic, the rules or OTLP itself, and it never logs content
//! or raw user IDs. Response documents that the CLI also prints come from [`super::api`]; so
//! does the router ([`AdminRequest::parse`]).

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use serde::Serialize;

use super::AdminToken;
use super::api::{
    AdminRequest, CaResponse, CompactResponse, DegradedHealth, DestroyFailure, ErrorResponse,
    ExchangeView, ForgetResponse, ForgetUserResponse, HealthStatus, KeysReloadResponse,
    PurgePreviewResponse, PurgeResponse, RecordingHealth, RewrapResponse, RulesReloadResponse,
    SealingHealth,
};
use super::control::{ControlSocket, Peer};
use crate::keys::pseudonymize_user;
use crate::proxy::conn::{Activity, Ended, Limits, Tracked, Watched, drive};
use crate::proxy::{ACCEPT_RETRY, AcceptFailures};
use crate::seal::{ErrorKind, ForgetError, Health, SealError, SealStore};

/// How long in-flight admin requests may run after shutdown is signalled.
const DRAIN: Duration = Duration::from_secs(10);
/// At most this many admin connections at once; more wait in the kernel's backlog. The admin
/// API serves a few operators and scripts (the CLI opens one connection per command), and must
/// not be a way to use up veil's file descriptors.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

type Body = Full<Bytes>;

/// Reads and compiles the rules file again; the new digest, or why the file was rejected
/// (`file:line:col: …`; the old rules stay in force). Built by `veil run`, so this module
/// never names the rules engine.
pub type ReloadRules = Arc<dyn Fn() -> Result<String, String> + Send + Sync>;

/// Takes one feedback document (the JSON of `POST /veil/v1/feedback`); the status and JSON
/// answer of the feedback service. Built by `veil run`, so this module never names the
/// rules or the ledger.
pub type SubmitFeedback = Arc<dyn Fn(&[u8]) -> (StatusCode, serde_json::Value) + Send + Sync>;

/// Erases forgotten records from the exporter's spool and records files (a forget's last
/// step, see [`crate::export::erase`]); `None` when the exporter has shut down. Built by
/// `veil run` around its exporter handle, so this module never reaches the exporter itself.
pub type EraseExports = Arc<
    dyn Fn(
            crate::export::erase::Targets,
        )
            -> std::pin::Pin<Box<dyn Future<Output = Option<crate::export::erase::Erased>> + Send>>
        + Send
        + Sync,
>;

/// Told what a forget is about to erase, so that what veil holds in memory about those
/// exchanges goes too (the feedback service's recent exchanges, veil#14): the request ids
/// (`x-veil-request-id`) and, for `forget --user`, the user's pseudonym (`u_…`). Called before
/// the sealed store is asked (`forget`, `forget --user`: an exchange being forgotten cannot be
/// rated while the forget runs) or after it answers (`purge`, whose ids only it knows); never
/// fails. Built by `veil run`, so this module never names the feedback service.
pub type OnForget = Arc<dyn Fn(&[String], Option<&str>) + Send + Sync>;

/// What the admin API reaches of the running veil besides its sealed store. All are absent
/// in tests and tools that serve a bare store: their routes then answer 404 (and forgets
/// answer without `exports`).
#[derive(Clone, Default)]
pub struct Instance {
    /// `POST /v1/rules/reload` (`veil reload`).
    pub reload_rules: Option<ReloadRules>,
    /// `GET /v1/ca` (`veil env`, `veil ca path`).
    pub ca: Option<CaResponse>,
    /// `POST /v1/feedback` (`veil feedback`).
    pub feedback: Option<SubmitFeedback>,
    /// The forgets' erase of the exporter's copies.
    pub erase_exports: Option<EraseExports>,
    /// Told of every `forget`, `forget --user` and `purge` (see [`OnForget`]).
    pub on_forget: Option<OnForget>,
}

impl fmt::Debug for Instance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Instance")
            .field("reload_rules", &self.reload_rules.is_some())
            .field("ca", &self.ca.as_ref().map(|c| &c.cert))
            .field("feedback", &self.feedback.is_some())
            .field("erase_exports", &self.erase_exports.is_some())
            .field("on_forget", &self.on_forget.is_some())
            .finish()
    }
}

/// Who is on the other end of one admin connection, decided when it is accepted.
#[derive(Debug, Clone)]
enum Caller {
    /// A TCP peer: every `/v1` request must carry the token.
    Network { peer: SocketAddr, token: AdminToken },
    /// A control socket peer (veil's own uid, or refused).
    Local(Peer),
}

/// A JSON answer: one document of [`super::api`] and a newline.
fn json(status: StatusCode, doc: &impl Serialize) -> Response<Body> {
    // The api types hold only strings, integers, finite floats and string-keyed maps, so
    // encoding cannot fail; if it ever did, a 500 says so instead of a panic.
    let (status, body) = match serde_json::to_vec(doc) {
        Ok(mut b) => {
            b.push(b'\n');
            (status, b)
        }
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{{\"error\":\"cannot encode the answer: {e}\"}}\n").into_bytes(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("invariant: static response parts are valid")
}

fn error(status: StatusCode, msg: impl fmt::Display) -> Response<Body> {
    json(
        status,
        &ErrorResponse {
            error: msg.to_string(),
        },
    )
}

fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::KeyMissing | ErrorKind::WrongKey => StatusCode::CONFLICT,
        // Nothing was done and a retry may work: the disk fills up, the audit log is
        // unwritable, the queue is full.
        ErrorKind::Degraded | ErrorKind::Audit | ErrorKind::Busy => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn seal_error(e: &SealError) -> Response<Body> {
    error(status_of(e.kind()), e)
}

/// A failed destructive request: the error and exactly what was and was not destroyed, plus
/// the endpoint's own fields (`with` fills them).
fn forget_error(e: &ForgetError, with: impl FnOnce(&mut DestroyFailure)) -> Response<Body> {
    let mut doc = DestroyFailure::from_forget_error(e);
    with(&mut doc);
    json(status_of(e.kind()), &doc)
}

/// `GET /healthz`: `200 ok` while sealing works; `503` with the reason while the sealed store
/// is degraded. 503, not 200 with a body, because monitors look at the status: a degraded
/// store loses seals (best-effort) or refuses requests (`audit = "required"`), and either
/// needs an operator. It is not a liveness signal: restarting veil does not free disk space.
fn healthz(store: &SealStore) -> Response<Body> {
    // Everything recording depends on (records writes, free disk), when veil shares it.
    let recording: Vec<RecordingHealth> = store
        .recording_health()
        .map(|h| h.report())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.part != crate::health::Part::Seal)
        .map(|p| RecordingHealth {
            part: p.part.as_str().to_string(),
            since: crate::seal::audit::rfc3339(p.since),
            reason: p.reason,
        })
        .collect();
    let sealing = match store.health() {
        Health::Ok if recording.is_empty() => {
            return Response::builder()
                .header("content-type", "text/plain")
                .body(Full::new(Bytes::from_static(b"ok\n")))
                .expect("invariant: static response parts are valid");
        }
        Health::Ok => None,
        Health::Degraded { since, last_error } => {
            let stats = store.stats();
            Some(SealingHealth {
                since: crate::seal::audit::rfc3339(since),
                last_error,
                failed_commits: stats.failed_commits,
                recoveries: stats.recoveries,
                detached_failures: stats.detached_failures,
            })
        }
    };
    json(
        StatusCode::SERVICE_UNAVAILABLE,
        &DegradedHealth {
            status: HealthStatus::Degraded,
            sealing,
            recording,
        },
    )
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, SealError> + Send + 'static,
) -> Result<T, SealError> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|_| Err(SealError::new(ErrorKind::Closed, "admin task panicked")))
}

async fn blocking_forget<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ForgetError> + Send + 'static,
) -> Result<T, ForgetError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|_| {
        Err(ForgetError::nothing(
            SealError::new(
                ErrorKind::Closed,
                "admin task panicked: receipts.jsonl lists what was destroyed",
            ),
            Vec::new(),
        ))
    })
}

/// A forget's erase of the exporter's copies of `ids` (and of `user`'s records), when this
/// veil has an exporter.
async fn erase_exports(
    instance: &Instance,
    ids: Vec<String>,
    user: Option<String>,
) -> Option<crate::export::erase::Erased> {
    let erase = instance.erase_exports.as_ref()?;
    erase(crate::export::erase::Targets::new(ids, user)).await
}

async fn handle(
    req: Request<Incoming>,
    store: SealStore,
    instance: Instance,
    caller: Caller,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    // Only the route's first two segments: the rest may be a raw user ID.
    let route = || path.split('/').take(3).collect::<Vec<_>>().join("/");
    let mut actor = match &caller {
        Caller::Local(Peer::Stranger { uid, pid, owner }) => {
            let uid = uid.map_or_else(|| "unknown".to_string(), |u| u.to_string());
            let pid = pid.map_or_else(|| "unknown".to_string(), |p| p.to_string());
            tracing::warn!(peer.uid = %uid, peer.pid = %pid, route = %route(), "control socket request from another uid refused");
            return Ok(error(
                StatusCode::FORBIDDEN,
                format!(
                    "this control socket serves uid {owner} only (the user veil runs as); uid {uid} may not use it"
                ),
            ));
        }
        Caller::Local(Peer::Owner { uid, pid }) => match pid {
            Some(p) => format!("control:uid={uid},pid={p}"),
            None => format!("control:uid={uid}"),
        },
        Caller::Network { peer, token } => {
            if path == "/healthz" && req.method() == Method::GET {
                return Ok(healthz(&store));
            }
            let presented = req
                .headers()
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            if !token.verify(presented.trim()) {
                tracing::warn!(peer = %peer, route = %route(), "admin request without a valid token");
                let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
                r.headers_mut()
                    .insert("www-authenticate", http::HeaderValue::from_static("Bearer"));
                return Ok(r);
            }
            format!("admin:{peer}")
        }
    };
    if let Some(a) = req
        .headers()
        .get("x-veil-actor")
        .and_then(|v| v.to_str().ok())
    {
        let a: String = a.chars().filter(|c| !c.is_control()).take(64).collect();
        actor.push_str(&format!(" ({a})"));
    }
    // Parsed after the caller is checked: a refused caller learns nothing, not even whether
    // its request was well-formed.
    let request = match AdminRequest::parse(req.method(), req.uri()) {
        Ok(r) => r,
        Err(e) => return Ok(error(e.status(), e)),
    };
    let reason = |r: Option<String>| r.unwrap_or_else(|| "admin api".to_string());
    let resp = match request {
        AdminRequest::Health => healthz(&store),
        AdminRequest::Unseal { id, reason: r } => {
            let reason = reason(r);
            match blocking(move || store.unseal(id, &actor, &reason)).await {
                Ok(ex) => json(StatusCode::OK, &ExchangeView::of(&ex)),
                Err(e) => seal_error(&e),
            }
        }
        AdminRequest::Forget { id, reason: r } => {
            let reason = reason(r);
            if let Some(on_forget) = &instance.on_forget {
                on_forget(&[id.to_string()], None);
            }
            let s = store.clone();
            // Also after an earlier forget: a spooled copy may have outlived it.
            let exports = || erase_exports(&instance, vec![id.to_string()], None);
            match blocking_forget(move || s.forget(&[id], &actor, &reason)).await {
                Ok(out) if out.first().is_some_and(|o| o.forgotten) => json(
                    StatusCode::OK,
                    &ForgetResponse {
                        request_id: id,
                        forgotten: true,
                        already_forgotten: false,
                        error: None,
                        exports: exports().await,
                    },
                ),
                Ok(_) => match blocking(move || store.already_forgotten(&[id])).await {
                    Ok(before) if !before.is_empty() => json(
                        StatusCode::OK,
                        &ForgetResponse {
                            request_id: id,
                            forgotten: false,
                            already_forgotten: true,
                            error: None,
                            exports: exports().await,
                        },
                    ),
                    Ok(_) => json(
                        StatusCode::NOT_FOUND,
                        &ForgetResponse {
                            request_id: id,
                            forgotten: false,
                            already_forgotten: false,
                            error: Some("no exchange with this id was ever sealed".to_string()),
                            exports: None,
                        },
                    ),
                    Err(e) => seal_error(&e),
                },
                Err(e) => forget_error(&e, |d| {
                    d.request_id = Some(id);
                    d.forgotten = Some(false);
                }),
            }
        }
        AdminRequest::ForgetUser { user, reason: r } => {
            let reason = reason(r);
            let pseudonym = pseudonymize_user(&store.keyring(), &user);
            if let Some(on_forget) = &instance.on_forget {
                on_forget(&[], Some(pseudonym.as_str()));
            }
            let p = pseudonym.clone();
            // Asked before the forget, which leaves a tombstone of its own.
            let before =
                blocking(move || store.user_already_forgotten(&p).map(|b| (b, store))).await;
            let (already, store) = match before {
                Ok(x) => x,
                Err(e) => return Ok(seal_error(&e)),
            };
            let p = pseudonym.clone();
            match blocking_forget(move || store.forget_user(&p, &actor, &reason)).await {
                Ok(ids) => {
                    let exports = erase_exports(
                        &instance,
                        ids.iter().map(ToString::to_string).collect(),
                        Some(pseudonym.to_string()),
                    )
                    .await;
                    json(
                        StatusCode::OK,
                        &ForgetUserResponse {
                            user: pseudonym,
                            already_forgotten: ids.is_empty() && already,
                            forgotten: ids,
                            exports,
                        },
                    )
                }
                Err(e) => forget_error(&e, |d| d.user = Some(pseudonym)),
            }
        }
        AdminRequest::Purge { older_than } => {
            let purged = blocking_forget(move || store.purge(older_than, &actor)).await;
            if let Some(on_forget) = &instance.on_forget {
                let ids = match &purged {
                    Ok(ids) => ids.as_slice(),
                    Err(e) => e.destroyed(),
                };
                let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
                on_forget(&ids, None);
            }
            match purged {
                Ok(ids) => json(
                    StatusCode::OK,
                    &PurgeResponse {
                        purged: ids.len() as u64,
                        ids,
                    },
                ),
                Err(e) => forget_error(&e, |d| d.purged = Some(e.destroyed().len() as u64)),
            }
        }
        AdminRequest::PurgePreview { older_than } => {
            let cutoff = std::time::SystemTime::now()
                .checked_sub(older_than)
                .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
            match blocking(move || store.ids_before(cutoff)).await {
                Ok(ids) => json(
                    StatusCode::OK,
                    &PurgePreviewResponse {
                        would_purge: ids.len() as u64,
                        ids,
                    },
                ),
                Err(e) => seal_error(&e),
            }
        }
        AdminRequest::Compact => match blocking(move || store.compact()).await {
            Ok(s) => json(StatusCode::OK, &CompactResponse::from(s)),
            Err(e) => seal_error(&e),
        },
        AdminRequest::ReloadKeys => match store.reload_keys() {
            Ok(current) => json(StatusCode::OK, &KeysReloadResponse { current }),
            Err(e) => seal_error(&e),
        },
        AdminRequest::Rewrap => {
            let r = blocking(move || {
                let id = store.reload_keys()?;
                store.rewrap(&actor).map(|n| (id, n))
            })
            .await;
            match r {
                Ok((current, n)) => json(
                    StatusCode::OK,
                    &RewrapResponse {
                        current,
                        rewrapped: n as u64,
                    },
                ),
                Err(e) => seal_error(&e),
            }
        }
        AdminRequest::ReloadRules => match instance.reload_rules {
            Some(reload) => match tokio::task::spawn_blocking(move || reload()).await {
                Ok(Ok(digest)) => {
                    tracing::info!(rules.digest = %digest, actor = %actor, "rules reloaded");
                    json(StatusCode::OK, &RulesReloadResponse { digest })
                }
                Ok(Err(e)) => {
                    tracing::error!("rules reload rejected, previous rules stay in force: {e}");
                    error(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("{e} (the previous rules stay in force)"),
                    )
                }
                Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "rules reload panicked"),
            },
            None => error(StatusCode::NOT_FOUND, "this listener does not reload rules"),
        },
        AdminRequest::Ca => match instance.ca {
            Some(ca) => json(StatusCode::OK, &ca),
            None => error(StatusCode::NOT_FOUND, "this listener does not serve the CA"),
        },
        AdminRequest::Feedback { body } => match instance.feedback {
            Some(submit) => {
                match tokio::task::spawn_blocking(move || submit(body.as_bytes())).await {
                    Ok((status, answer)) if status.is_success() => json(status, &answer),
                    // The admin API's error document: the feedback service's message.
                    Ok((status, answer)) => error(
                        status,
                        answer["error"]["message"]
                            .as_str()
                            .unwrap_or("feedback refused")
                            .to_string(),
                    ),
                    Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "feedback panicked"),
                }
            }
            None => error(
                StatusCode::NOT_FOUND,
                "this listener does not take feedback",
            ),
        },
    };
    Ok(resp)
}

/// Serves the admin API on `listener` until `shutdown` resolves, then lets in-flight requests
/// finish (bounded by 10 s). Connection limits are the config defaults (10 s to send a request
/// head, 120 s idle); [`serve_with`] takes them from the config.
pub async fn serve(
    listener: tokio::net::TcpListener,
    store: SealStore,
    token: AdminToken,
    shutdown: impl Future<Output = ()>,
) {
    let limits = Limits {
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(120),
    };
    serve_with(listener, store, token, limits, shutdown).await;
}

/// [`serve`] with the connection time limits `limits` (`header_read_timeout`, `idle_timeout`).
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    store: SealStore,
    token: AdminToken,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    serve_tcp(
        listener,
        store,
        token,
        Instance::default(),
        limits,
        shutdown,
    )
    .await;
}

/// The TCP admin API (`admin_listen`): [`serve_with`] plus the routes of `instance`. Every
/// `/v1` request needs the bearer `token`.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    store: SealStore,
    token: AdminToken,
    instance: Instance,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let accept = || async {
        let (stream, peer) = listener.accept().await?;
        let caller = Caller::Network {
            peer,
            token: token.clone(),
        };
        Ok((stream, caller))
    };
    let handler = move |req, caller| handle(req, store.clone(), instance.clone(), caller);
    serve_loop("admin", accept, handler, limits, shutdown).await;
}

/// The control socket: the same routes as [`serve_tcp`], no token; a peer whose uid is not
/// veil's is answered 403 (and logged) on every request. The socket file is removed when
/// this returns.
pub async fn serve_control(
    socket: ControlSocket,
    store: SealStore,
    instance: Instance,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let accept = || async {
        let (stream, peer) = socket.accept().await?;
        Ok((stream, Caller::Local(peer)))
    };
    let handler = move |req, caller| handle(req, store.clone(), instance.clone(), caller);
    serve_loop("control", accept, handler, limits, shutdown).await;
    drop(socket);
}

/// What `GET /metrics` answers: the text and its `Content-Type`, made at each scrape.
pub type Exposition = Arc<dyn Fn() -> String + Send + Sync>;

/// The Prometheus listener (`metrics_listen`): `GET /metrics` (and `HEAD`) answers
/// `exposition()` as [`crate::counters::exposition::CONTENT_TYPE`]; any other path is 404,
/// any other method 405. No token: what it shows is numbers and the label values veil's
/// cardinality cap kept (models, features, providers), never a user, request id or content;
/// past loopback, `veil run` warns. The admin API's connection clocks and cap apply.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    exposition: Exposition,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let accept = || async {
        let (stream, _) = listener.accept().await?;
        Ok((stream, ()))
    };
    let handler = move |req: Request<Incoming>, ()| {
        let exposition = exposition.clone();
        async move { Ok::<_, Infallible>(metrics_answer(&req, &exposition)) }
    };
    serve_loop("metrics", accept, handler, limits, shutdown).await;
}

fn metrics_answer(req: &Request<Incoming>, exposition: &Exposition) -> Response<Body> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut r = Response::new(Body::from(text));
        *r.status_mut() = status;
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        r
    };
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found: veil serves GET /metrics here\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use GET\n",
        );
        r.headers_mut().insert(
            http::header::ALLOW,
            http::HeaderValue::from_static("GET, HEAD"),
        );
        return r;
    }
    let text = exposition();
    let mut r = Response::new(if req.method() == Method::HEAD {
        Body::default()
    } else {
        Body::from(text)
    });
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(crate::counters::exposition::CONTENT_TYPE),
    );
    r
}

/// The accept loop both listeners share: a permit first, back-off on accept errors, one
/// HTTP/1.1 connection per accepted stream with the proxy's connection clocks, and a bounded
/// drain at shutdown. `what` names the listener in logs.
async fn serve_loop<S, C, A, F, H, HF>(
    what: &'static str,
    accept: A,
    handler: H,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    C: Clone + Send + Sync + 'static,
    A: Fn() -> F,
    F: Future<Output = std::io::Result<(S, C)>>,
    H: Fn(Request<Incoming>, C) -> HF + Clone + Send + Sync + 'static,
    HF: Future<Output = Result<Response<Body>, Infallible>> + Send + 'static,
{
    let cancel = CancellationToken::new();
    let tracker = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));
    let mut failures = AcceptFailures::default();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A permit first: at the cap, connections wait in the backlog instead of being
        // accepted and starved.
        let permit = tokio::select! {
            biased;
            () = &mut shutdown => break,
            p = slots.clone().acquire_owned() => p.expect("invariant: the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            biased;
            () = &mut shutdown => break,
            r = accept() => r,
        };
        let (stream, caller) = match accepted {
            Ok(x) => x,
            Err(e) => {
                failures.note(what, &e);
                drop(permit);
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_RETRY) => continue,
                }
            }
        };
        let activity = Activity::new();
        let handler = handler.clone();
        let watched = activity.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let in_flight = watched.begin(req.version());
            let answer = handler(req, caller.clone());
            async move {
                let resp = answer.await?;
                Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, in_flight)))
            }
        });
        // hyper's own head timer is off: its clock would also cut idle keep-alive connections
        // after the head limit (see proxy::conn).
        let conn = hyper::server::conn::http1::Builder::new()
            .header_read_timeout(None)
            .serve_connection(TokioIo::new(Watched::new(stream, activity.clone())), svc);
        let cancel = cancel.clone();
        tracker.spawn(async move {
            let _permit = permit;
            if let Ended::TimedOut(why) =
                drive(conn, &activity, limits, &cancel, |c| c.graceful_shutdown()).await
            {
                tracing::debug!(reason = why.as_str(), "closing {what} connection");
            }
        });
    }
    cancel.cancel();
    tracker.close();
    tokio::select! {
        () = tracker.wait() => {}
        () = tokio::time::sleep(DRAIN) => tracing::warn!("{what} API drain timed out"),
    }
}
