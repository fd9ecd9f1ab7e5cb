//! # Admin API server: routes, status codes and connection limits.
//!
//! Serves the table in [`crate::admin`]'s docs on a listener `veil run` hands it. It calls
//! [`SealStore`] (on blocking threads) and nothing else: it never touches the proxy's traffic,
//! the rules or OTLP, and it never logs content or raw user IDs. Response documents that the
//! CLI also prints come from [`super::api`].

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

use super::AdminToken;
use super::api::{exchange_to_json, percent_decode};
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

fn json(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string() + "\n")))
        .expect("invariant: static response parts are valid")
}

fn error(status: StatusCode, msg: impl fmt::Display) -> Response<Body> {
    json(status, serde_json::json!({ "error": msg.to_string() }))
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

fn ids_json(ids: &[crate::exchange::ExchangeId]) -> serde_json::Value {
    ids.iter().map(|i| i.to_string()).collect()
}

/// A failed destructive request: the error and exactly what was and was not destroyed.
fn forget_error(e: &ForgetError, extra: serde_json::Value) -> Response<Body> {
    let mut v = serde_json::json!({
        "error": e.to_string(),
        "destroyed": ids_json(e.destroyed()),
        "pending": ids_json(e.pending()),
        "not_destroyed": ids_json(e.not_destroyed()),
    });
    if let (Some(o), serde_json::Value::Object(x)) = (v.as_object_mut(), extra) {
        o.extend(x);
    }
    json(status_of(e.kind()), v)
}

/// `GET /healthz`: `200 ok` while sealing works; `503` with the reason while the sealed store
/// is degraded. 503, not 200 with a body, because monitors look at the status: a degraded
/// store loses seals (best-effort) or refuses requests (`audit = "required"`), and either
/// needs an operator. It is not a liveness signal: restarting veil does not free disk space.
fn healthz(store: &SealStore) -> Response<Body> {
    // Everything recording depends on (records writes, free disk), when veil shares it.
    let others: Vec<serde_json::Value> = store
        .recording_health()
        .map(|h| h.report())
        .unwrap_or_default()
        .into_iter()
        .filter(|p| p.part != crate::health::Part::Seal)
        .map(|p| {
            serde_json::json!({
                "part": p.part.as_str(),
                "since": crate::seal::audit::rfc3339(p.since),
                "reason": p.reason,
            })
        })
        .collect();
    match store.health() {
        Health::Ok if !others.is_empty() => json(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "status": "degraded", "recording": others }),
        ),
        Health::Ok => Response::builder()
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from_static(b"ok\n")))
            .expect("invariant: static response parts are valid"),
        Health::Degraded { since, last_error } => {
            let stats = store.stats();
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({
                    "status": "degraded",
                    "sealing": {
                        "since": crate::seal::audit::rfc3339(since),
                        "last_error": last_error,
                        "failed_commits": stats.failed_commits,
                        "recoveries": stats.recoveries,
                        "detached_failures": stats.detached_failures,
                    },
                    "recording": others,
                }),
            )
        }
    }
}
fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name)
            .then(|| percent_decode(&v.replace('+', " ")))
            .flatten()
    })
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

async fn handle(
    req: Request<Incoming>,
    store: SealStore,
    token: AdminToken,
    peer: SocketAddr,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
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
        // Only the route's first two segments: the rest may be a raw user ID.
        let route: String = path.split('/').take(3).collect::<Vec<_>>().join("/");
        tracing::warn!(peer = %peer, route = %route, "admin request without a valid token");
        let mut r = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        r.headers_mut()
            .insert("www-authenticate", http::HeaderValue::from_static("Bearer"));
        return Ok(r);
    }
    let mut actor = format!("admin:{peer}");
    if let Some(a) = req
        .headers()
        .get("x-veil-actor")
        .and_then(|v| v.to_str().ok())
    {
        let a: String = a.chars().filter(|c| !c.is_control()).take(64).collect();
        actor.push_str(&format!(" ({a})"));
    }
    let reason = query_param(&req, "reason").unwrap_or_else(|| "admin api".to_string());
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    let resp = match (&method, segs.as_slice()) {
        (&Method::GET, ["v1", "exchanges", id]) | (&Method::DELETE, ["v1", "exchanges", id]) => {
            let id = match id.parse::<crate::exchange::ExchangeId>() {
                Ok(id) => id,
                Err(e) => return Ok(error(StatusCode::BAD_REQUEST, e)),
            };
            if method == Method::GET {
                match blocking(move || store.unseal(id, &actor, &reason)).await {
                    Ok(ex) => json(StatusCode::OK, exchange_to_json(&ex)),
                    Err(e) => seal_error(&e),
                }
            } else {
                match blocking_forget(move || store.forget(&[id], &actor, &reason)).await {
                    Ok(out) if out.first().is_some_and(|o| o.forgotten) => json(
                        StatusCode::OK,
                        serde_json::json!({"request_id": id.to_string(), "forgotten": true}),
                    ),
                    Ok(_) => json(
                        StatusCode::NOT_FOUND,
                        serde_json::json!({"request_id": id.to_string(), "forgotten": false,
                            "error": "no sealed exchange with this id (never sealed, or already forgotten)"}),
                    ),
                    Err(e) => forget_error(
                        &e,
                        serde_json::json!({"request_id": id.to_string(), "forgotten": false}),
                    ),
                }
            }
        }
        (&Method::DELETE, ["v1", "users", user, "exchanges"]) => {
            let Some(raw) = percent_decode(user).filter(|u| !u.is_empty()) else {
                return Ok(error(StatusCode::BAD_REQUEST, "bad user id encoding"));
            };
            let pseudonym = pseudonymize_user(&store.keyring(), &raw);
            let p = pseudonym.clone();
            match blocking_forget(move || store.forget_user(&p, &actor, &reason)).await {
                Ok(ids) => json(
                    StatusCode::OK,
                    serde_json::json!({ "user": pseudonym, "forgotten": ids_json(&ids) }),
                ),
                Err(e) => forget_error(&e, serde_json::json!({ "user": pseudonym })),
            }
        }
        (&Method::POST, ["v1", "purge"]) => {
            let Some(older) = query_param(&req, "older_than") else {
                return Ok(error(StatusCode::BAD_REQUEST, "older_than is required"));
            };
            let older = match crate::config::parse_duration(&older) {
                Ok(d) => d,
                Err(e) => return Ok(error(StatusCode::BAD_REQUEST, e)),
            };
            match blocking_forget(move || store.purge(older, &actor)).await {
                Ok(ids) => json(
                    StatusCode::OK,
                    serde_json::json!({ "purged": ids.len(), "ids": ids_json(&ids) }),
                ),
                Err(e) => forget_error(&e, serde_json::json!({ "purged": e.destroyed().len() })),
            }
        }
        (&Method::POST, ["v1", "compact"]) => match blocking(move || store.compact()).await {
            Ok(s) => json(
                StatusCode::OK,
                serde_json::json!({
                    "segments_removed": s.segments_removed,
                    "frames_moved": s.frames_moved,
                    "bytes_reclaimed": s.bytes_reclaimed,
                }),
            ),
            Err(e) => seal_error(&e),
        },
        (&Method::POST, ["v1", "keys", "reload"]) => match store.reload_keys() {
            Ok(id) => json(
                StatusCode::OK,
                serde_json::json!({ "current": id.to_string() }),
            ),
            Err(e) => seal_error(&e),
        },
        (&Method::POST, ["v1", "keys", "rewrap"]) => {
            let r = blocking(move || {
                let id = store.reload_keys()?;
                store.rewrap(&actor).map(|n| (id, n))
            })
            .await;
            match r {
                Ok((id, n)) => json(
                    StatusCode::OK,
                    serde_json::json!({ "current": id.to_string(), "rewrapped": n }),
                ),
                Err(e) => seal_error(&e),
            }
        }
        _ => error(StatusCode::NOT_FOUND, "no such admin endpoint"),
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
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                failures.note("admin", &e);
                drop(permit);
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(ACCEPT_RETRY) => continue,
                }
            }
        };
        let activity = Activity::new();
        let store = store.clone();
        let token = token.clone();
        let watched = activity.clone();
        let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
            let in_flight = watched.begin(req.version());
            let answer = handle(req, store.clone(), token.clone(), peer);
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
                tracing::debug!(reason = why.as_str(), "closing admin connection");
            }
        });
    }
    drop(listener);
    cancel.cancel();
    tracker.close();
    tokio::select! {
        () = tracker.wait() => {}
        () = tokio::time::sleep(DRAIN) => tracing::warn!("admin API drain timed out"),
    }
}
