//! # Admin API: operators act on the sealed store over HTTP, behind a bearer token.
//!
//! Owns the admin HTTP server (hyper 1, HTTP/1.1) and the admin token. It calls
//! [`SealStore`](crate::seal::SealStore) and nothing else: it never touches the proxy, the
//! rules or OTLP, and it never logs content or raw user IDs.
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET /healthz` | `200 ok` when recording works; `503` and a JSON body while it is degraded: `status`, `sealing` (`since`, `last_error`, failure counters) when the sealed store is, and `recording` (`part`: `records` or `disk`, `since`, `reason`) for the rest (no token needed) |
//! | `GET /v1/exchanges/{id}[?reason=R]` | unseal (audited); the exchange as JSON |
//! | `DELETE /v1/exchanges/{id}[?reason=R]` | forget one; 404 when unknown |
//! | `DELETE /v1/users/{user}/exchanges[?reason=R]` | forget a user's; `{user}` is the *raw* user ID (percent-encoded), pseudonymized here with the store's keyring |
//! | `POST /v1/purge?older_than=30d` | retention purge now; `purged` (a count) and `ids` |
//! | `POST /v1/compact` | compaction pass |
//! | `POST /v1/keys/reload` | re-read the keys dir (after `veil keys rotate`) |
//! | `POST /v1/keys/rewrap` | reload, then rewrap every data key under the newest key |
//!
//! A destructive request that fails answers with what it did anyway: `error`, plus
//! `destroyed`, `pending` (receipted, unreadable, shredding completed on recovery) and
//! `not_destroyed` (untouched) ID lists; 503 when the store is degraded or the audit log cannot
//! be written (retry later), 500 for other failures.
//!
//! Every `/v1` request needs `Authorization: Bearer <token>`; the token comes from
//! `VEIL_ADMIN_TOKEN` or `<keys>/admin.token` (created 0600 with 256 random bits if missing)
//! and is compared in constant time. An `x-veil-actor` request header (the CLI sends
//! `cli:<user>`) is appended to the audit actor, which is always `admin:<peer address>`.
//!
//! Connections are bounded in number ([`ADMIN_MAX_CONNECTIONS`]) and in time, by the same
//! clock as the proxy's ([`crate::proxy::conn`]): a request head is due `header_read_timeout`
//! after the connection opens (or after its first byte, later on a kept-alive connection), a
//! connection with no request in flight closes after `idle_timeout`, and a long request (a
//! compaction, a rewrap) is never cut.

use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zeroize::Zeroizing;

use crate::exchange::{Exchange, Outcome, Route};
use crate::keys::{KeyError, pseudonymize_user, write_secret_file};
use crate::proxy::conn::{Activity, Ended, Limits, Tracked, Watched, drive};
use crate::proxy::{ACCEPT_RETRY, AcceptFailures};
use crate::seal::{ErrorKind, ForgetError, Health, SealError, SealStore};

/// File name of the admin token inside the keys dir.
pub const TOKEN_FILE: &str = "admin.token";
/// Environment variable that may carry the admin token instead of the file.
pub const TOKEN_ENV: &str = "VEIL_ADMIN_TOKEN";
/// How long in-flight admin requests may run after shutdown is signalled.
const DRAIN: Duration = Duration::from_secs(10);
/// At most this many admin connections at once; more wait in the kernel's backlog. The admin
/// API serves a few operators and scripts (the CLI opens one connection per command), and must
/// not be a way to use up veil's file descriptors.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;

/// The admin bearer token. Zeroized on drop; `Debug` prints `<redacted>`.
#[derive(Clone)]
pub struct AdminToken(Zeroizing<String>);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// A token with this exact text (tests and tools).
    pub fn from_secret(secret: impl Into<String>) -> Self {
        AdminToken(Zeroizing::new(secret.into()))
    }

    /// `VEIL_ADMIN_TOKEN`, else `<keys>/admin.token`; missing → [`KeyError::Missing`].
    pub fn load(keys_dir: &Path) -> Result<Self, KeyError> {
        if let Ok(t) = std::env::var(TOKEN_ENV)
            && !t.trim().is_empty()
        {
            return Ok(Self::from_secret(t.trim()));
        }
        let path = keys_dir.join(TOKEN_FILE);
        match std::fs::read_to_string(&path) {
            Ok(t) if !t.trim().is_empty() => Ok(Self::from_secret(t.trim())),
            Ok(_) => Err(KeyError::Invalid(format!("{} is empty", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(KeyError::Missing(path)),
            Err(e) => Err(KeyError::Io(path, e)),
        }
    }

    /// Like [`AdminToken::load`], creating `<keys>/admin.token` (0600, 64 hex digits) when
    /// neither exists.
    pub fn load_or_create(keys_dir: &Path) -> Result<Self, KeyError> {
        match Self::load(keys_dir) {
            Err(KeyError::Missing(path)) => {
                let mut raw = Zeroizing::new([0u8; 32]);
                rand::fill(&mut raw[..]);
                let mut hex = Zeroizing::new(String::with_capacity(64));
                for b in raw.iter() {
                    hex.push_str(&format!("{b:02x}"));
                }
                write_secret_file(&path, hex.as_bytes())?;
                tracing::info!(path = %path.display(), "created admin token");
                Ok(Self::from_secret(hex.as_str()))
            }
            other => other,
        }
    }

    /// The token text, for a client's `Authorization` header.
    pub fn secret(&self) -> &str {
        &self.0
    }

    /// Constant-time check of a presented token: compares BLAKE3 digests, whose `==` is
    /// constant-time, so neither content nor length leaks through timing.
    pub fn verify(&self, presented: &str) -> bool {
        blake3::hash(presented.as_bytes()) == blake3::hash(self.0.as_bytes())
    }
}

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

/// Decodes `%XX` escapes (and leaves everything else as is).
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes everything but unreserved characters (for path segments and queries).
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name)
            .then(|| percent_decode(&v.replace('+', " ")))
            .flatten()
    })
}

// === The unsealed exchange as JSON (GET /v1/exchanges/{id} and `veil unseal`) ===

/// Decoded bodies larger than this are shown as base64 of the captured bytes instead.
const DECODE_LIMIT: usize = 64 << 20;

fn body_json(b: &crate::exchange::Body) -> serde_json::Value {
    let raw = b.bytes();
    let mut v = serde_json::json!({
        "captured_len": raw.len(),
        "wire_len": b.wire_len,
        "truncated": b.truncated,
        "content_encoding": b.content_encoding,
        "chunks": b.chunks.len(),
        "wire_base64": base64::engine::general_purpose::STANDARD.encode(&raw),
    });
    match b.decoded(DECODE_LIMIT) {
        Ok(d) => match std::str::from_utf8(&d) {
            Ok(text) => v["text"] = serde_json::Value::String(text.to_string()),
            Err(_) => {
                v["decoded_base64"] =
                    serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(&d))
            }
        },
        Err(e) => v["decode_error"] = serde_json::Value::String(e.to_string()),
    }
    v
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The JSON an operator sees for an unsealed exchange: every field; bodies as `text` (after
/// `Content-Encoding` is removed) when UTF-8, else `decoded_base64`, and always `wire_base64`
/// (the captured bytes as they crossed the wire).
pub fn exchange_to_json(ex: &Exchange) -> serde_json::Value {
    serde_json::json!({
        "id": ex.id.to_string(),
        "started_at": crate::seal::audit::rfc3339(ex.started_at),
        "timings_ms": {
            "request_end": ex.timings.request_end.map(ms),
            "response_headers": ex.timings.response_headers.map(ms),
            "first_byte": ex.timings.first_byte.map(ms),
            "end": ms(ex.timings.end),
        },
        "client_addr": ex.client_addr.map(|a| a.to_string()),
        "route": match &ex.route {
            Route::Intercept => serde_json::json!({"kind": "intercept"}),
            Route::Gateway { name } => serde_json::json!({"kind": "gateway", "name": name}),
            Route::PlainHttp => serde_json::json!({"kind": "plain_http"}),
        },
        "upstream": {"scheme": ex.upstream.scheme, "host": ex.upstream.host, "port": ex.upstream.port},
        "client_version": ex.client_version,
        "method": ex.method,
        "path": ex.path,
        "request_headers": ex.request_headers,
        "tags": ex.tags,
        "api_key_fingerprint": ex.api_key_fingerprint,
        "request_body": body_json(&ex.request_body),
        "status": ex.status,
        "response_headers": ex.response_headers,
        "response_body": body_json(&ex.response_body),
        "outcome": match &ex.outcome {
            Outcome::UpstreamAborted { reason } => serde_json::json!({"kind": ex.outcome.as_str(), "reason": reason}),
            Outcome::UpstreamFailed { kind, reason } => serde_json::json!({"kind": ex.outcome.as_str(), "failure": kind.as_str(), "reason": reason}),
            _ => serde_json::json!({"kind": ex.outcome.as_str()}),
        },
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

/// A minimal admin API client (used by the CLI when a running veil holds the store).
#[derive(Debug, Clone)]
pub struct AdminClient {
    /// Where the admin API listens.
    pub addr: SocketAddr,
    /// The bearer token.
    pub token: AdminToken,
    /// Sent as `x-veil-actor`, so the audit trail names the operator.
    pub actor: String,
}

impl AdminClient {
    /// Sends one request; returns the status and the JSON body (or `null`).
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
    ) -> Result<(StatusCode, serde_json::Value), String> {
        let stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("cannot reach the admin API at {}: {e}", self.addr))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("admin API handshake: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header("host", self.addr.to_string())
            .header("authorization", format!("Bearer {}", self.token.secret()))
            .header("x-veil-actor", &self.actor)
            .body(Full::new(Bytes::new()))
            .map_err(|e| format!("bad admin request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("admin API request: {e}"))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("admin API response: {e}"))?
            .to_bytes();
        let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        Ok((status, v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seal::tests::{MemorySink, openai_chat, ring};
    use std::sync::Arc;

    async fn start(
        store: SealStore,
        token: AdminToken,
    ) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, store, token, async {
            let _ = rx.await;
        }));
        (addr, stop)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn auth_unseal_forget_by_id_and_user() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(MemorySink::default());
        let store = SealStore::open(
            dir.path(),
            ring(1),
            crate::seal::SealOptions {
                audit: Some(sink.clone()),
                ..Default::default()
            },
        )
        .unwrap();
        let alice = pseudonymize_user(&ring(1), "alice@example.com");
        let a = openai_chat();
        let b = openai_chat();
        let c = openai_chat();
        store.seal(&a, None).await.unwrap();
        store.seal(&b, Some(&alice)).await.unwrap();
        store.seal(&c, Some(&alice)).await.unwrap();
        let token = AdminToken::from_secret("s3cret-token");
        let (addr, stop) = start(store.clone(), token.clone()).await;
        let client = |t: &str| AdminClient {
            addr,
            token: AdminToken::from_secret(t),
            actor: "cli:test".into(),
        };
        let path = format!("/v1/exchanges/{}", a.id);
        let (s, _) = client("").request(Method::GET, &path).await.unwrap();
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _) = client("wrong").request(Method::GET, &path).await.unwrap();
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        let (s, _) = client("wrong")
            .request(Method::DELETE, &path)
            .await
            .unwrap();
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert!(
            store.entry(a.id).unwrap().is_some(),
            "unauthorized forget did nothing"
        );
        assert!(sink.0.lock().unwrap().is_empty());
        let (s, _) = client("").request(Method::GET, "/healthz").await.unwrap();
        assert_eq!(s, StatusCode::OK);

        let ok = client("s3cret-token");
        let (s, v) = ok.request(Method::GET, &path).await.unwrap();
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["id"], a.id.to_string());
        assert!(
            v["request_body"]["text"]
                .as_str()
                .unwrap()
                .contains("PLANTED-PROMPT")
        );
        {
            let ev = sink.0.lock().unwrap();
            assert_eq!(ev.len(), 1);
            assert!(
                ev[0].actor.starts_with("admin:127.0.0.1:"),
                "{}",
                ev[0].actor
            );
            assert!(ev[0].actor.ends_with("(cli:test)"), "{}", ev[0].actor);
        }
        let (s, _) = ok
            .request(Method::DELETE, &format!("{path}?reason=user%20asked"))
            .await
            .unwrap();
        assert_eq!(s, StatusCode::OK);
        let (s, _) = ok.request(Method::DELETE, &path).await.unwrap();
        assert_eq!(s, StatusCode::NOT_FOUND, "second forget says unknown");
        let (s, _) = ok.request(Method::GET, &path).await.unwrap();
        assert_eq!(s, StatusCode::NOT_FOUND);

        let (s, v) = ok
            .request(
                Method::DELETE,
                &format!(
                    "/v1/users/{}/exchanges",
                    percent_encode("alice@example.com")
                ),
            )
            .await
            .unwrap();
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["user"], alice);
        assert_eq!(v["forgotten"].as_array().unwrap().len(), 2);
        assert!(store.is_empty().unwrap());
        let (s, _) = ok.request(Method::POST, "/v1/purge").await.unwrap();
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, v) = ok
            .request(Method::POST, "/v1/purge?older_than=30d")
            .await
            .unwrap();
        assert_eq!((s, v["purged"].as_u64()), (StatusCode::OK, Some(0)));
        stop.send(()).unwrap();
    }

    // See: veil#10
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn healthz_reports_a_degraded_store_with_503_until_it_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let store = SealStore::open(
            dir.path(),
            ring(1),
            crate::seal::SealOptions {
                audit: Some(Arc::new(MemorySink::default())),
                ..Default::default()
            },
        )
        .unwrap();
        let token = AdminToken::from_secret("t");
        let (addr, stop) = start(store.clone(), token.clone()).await;
        let client = AdminClient {
            addr,
            token,
            actor: "cli:test".into(),
        };
        let (s, _) = client.request(Method::GET, "/healthz").await.unwrap();
        assert_eq!(s, StatusCode::OK);
        store.degrade_for_test("segments/00000001.seg: No space left on device (os error 28)");
        let (s, v) = client.request(Method::GET, "/healthz").await.unwrap();
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert_eq!(v["status"], "degraded");
        assert!(
            v["sealing"]["last_error"]
                .as_str()
                .unwrap()
                .contains("No space left"),
            "{v}"
        );
        assert!(
            v["sealing"]["since"].as_str().unwrap().ends_with('Z'),
            "{v}"
        );
        assert_eq!(v["sealing"]["failed_commits"], 1);
        assert_eq!(v["sealing"]["recoveries"], 0);
        // An operator command recovers first (the disk here has room), and health follows.
        let (s, v) = client.request(Method::POST, "/v1/compact").await.unwrap();
        assert_eq!(s, StatusCode::OK, "{v}");
        let (s, _) = client.request(Method::GET, "/healthz").await.unwrap();
        assert_eq!(s, StatusCode::OK);
        assert_eq!(store.stats().recoveries, 1);
        stop.send(()).unwrap();
    }

    // See: veil#10
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_forget_and_purge_answer_with_what_was_and_was_not_destroyed() {
        let dir = tempfile::tempdir().unwrap();
        let store = SealStore::open(dir.path(), ring(1), Default::default()).unwrap();
        let mut old = openai_chat();
        old.started_at -= Duration::from_secs(40 * 86_400);
        store.seal(&old, None).await.unwrap();
        // The audit log cannot be written (a directory where the file should be).
        std::fs::create_dir(dir.path().join("audit.jsonl")).unwrap();
        let token = AdminToken::from_secret("t");
        let (addr, stop) = start(store.clone(), token.clone()).await;
        let client = AdminClient {
            addr,
            token,
            actor: "cli:test".into(),
        };
        let (s, v) = client
            .request(Method::DELETE, &format!("/v1/exchanges/{}", old.id))
            .await
            .unwrap();
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert_eq!(v["forgotten"], false);
        assert_eq!(v["not_destroyed"], serde_json::json!([old.id.to_string()]));
        assert_eq!(v["destroyed"], serde_json::json!([]));
        let (s, v) = client
            .request(Method::POST, "/v1/purge?older_than=30d")
            .await
            .unwrap();
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
        assert_eq!(v["purged"], 0);
        assert_eq!(v["not_destroyed"], serde_json::json!([old.id.to_string()]));
        let (s, v) = client
            .request(Method::GET, &format!("/v1/exchanges/{}", old.id))
            .await
            .unwrap();
        assert_eq!(
            s,
            StatusCode::SERVICE_UNAVAILABLE,
            "unseal fails closed: {v}"
        );
        assert!(v.get("request_body").is_none());
        std::fs::remove_dir(dir.path().join("audit.jsonl")).unwrap();
        let (s, v) = client
            .request(Method::POST, "/v1/purge?older_than=30d")
            .await
            .unwrap();
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(v["purged"], 1);
        assert_eq!(v["ids"], serde_json::json!([old.id.to_string()]));
        stop.send(()).unwrap();
    }

    #[test]
    fn token_file_is_created_0600_and_debug_is_redacted() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let t = AdminToken::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(t.secret().len(), 64);
        assert!(t.verify(t.secret()));
        assert!(!t.verify(&t.secret()[..63]));
        let again = AdminToken::load_or_create(dir.path()).unwrap();
        assert_eq!(again.secret(), t.secret());
        assert!(!format!("{t:?}").contains(t.secret()));
    }

    #[test]
    fn percent_coding_round_trips() {
        for s in ["alice@example.com", "a b/c?d=e&f", "ünï"] {
            assert_eq!(percent_decode(&percent_encode(s)).unwrap(), s);
        }
        assert!(percent_decode("%zz").is_none());
    }
}
