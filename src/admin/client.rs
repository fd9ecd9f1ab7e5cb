//! # Admin API client: one request to a running veil's admin API.
//!
//! Used by the CLI ([`crate::cli`]) when a running `veil run` holds the sealed store, on its
//! control socket ([`Endpoint::Control`], no token) or its TCP admin API ([`Endpoint::Tcp`],
//! bearer token). Sends the operator's name (`x-veil-actor`) and the token when it has one;
//! never logs either. The typed
//! methods ([`AdminClient::unseal`], [`AdminClient::forget`], …) send an [`AdminRequest`] and
//! decode the answer into the documents of [`super::api`], strictly: an answer in a shape this
//! veil does not know is an [`AdminError`] of kind [`AdminErrorKind::Unreadable`] that names
//! the field, never a document with a field missing.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

use super::AdminToken;
use super::api::{
    AdminRequest, CaResponse, CompactResponse, DegradedHealth, DestroyFailure, ErrorResponse,
    ExchangeView, ForgetResponse, ForgetUserResponse, KeysReloadResponse, PurgePreviewResponse,
    PurgeResponse, RewrapResponse, RulesReloadResponse,
};
use crate::exchange::ExchangeId;

/// Where a running veil's admin API is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// Its control socket (`<data>/veil.sock`): no token, same uid only.
    Control(PathBuf),
    /// Its TCP admin API (`admin_listen`): bearer token.
    Tcp(SocketAddr),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Control(p) => write!(f, "control socket {}", p.display()),
            Endpoint::Tcp(a) => write!(f, "admin API at {a}"),
        }
    }
}

/// A minimal admin API client (used by the CLI when a running veil holds the store).
#[derive(Debug, Clone)]
pub struct AdminClient {
    /// Where the admin API listens.
    pub endpoint: Endpoint,
    /// The bearer token (TCP); `None` on the control socket, which asks for none.
    pub token: Option<AdminToken>,
    /// Sent as `x-veil-actor`, so the audit trail names the operator.
    pub actor: String,
}

impl AdminClient {
    /// A client of the TCP admin API at `addr`, sending `token`.
    pub fn tcp(addr: SocketAddr, token: AdminToken, actor: impl Into<String>) -> Self {
        AdminClient {
            endpoint: Endpoint::Tcp(addr),
            token: Some(token),
            actor: actor.into(),
        }
    }

    /// A client of the control socket at `path` (`<data>/veil.sock`).
    pub fn control(path: impl Into<PathBuf>, actor: impl Into<String>) -> Self {
        AdminClient {
            endpoint: Endpoint::Control(path.into()),
            token: None,
            actor: actor.into(),
        }
    }
}

/// The answer to `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthResponse {
    /// `200 ok`: recording works.
    Ok,
    /// `503`: what is degraded.
    Degraded(DegradedHealth),
}

/// Which way an admin request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AdminErrorKind {
    /// No answer: connect, handshake or I/O failed. A request that was sent may have run.
    Unreachable,
    /// `401`: the token is missing or wrong. Nothing was done.
    Unauthorized,
    /// Another non-2xx answer with an [`ErrorResponse`] or, for a destructive request, a
    /// [`DestroyFailure`] ([`AdminError::failure`]).
    Refused,
    /// An answer in a shape this veil does not know (another veil version, or not veil). A
    /// destructive request may have run.
    Unreadable,
}

/// Why a typed admin request failed. `Display` is one line for operators; it names the
/// endpoint as a template (never a raw user ID) and never echoes a value from the answer.
#[derive(Debug, Clone)]
pub struct AdminError {
    kind: AdminErrorKind,
    at: Endpoint,
    status: Option<StatusCode>,
    endpoint: &'static str,
    detail: String,
    failure: Option<Box<DestroyFailure>>,
}

impl AdminError {
    /// Which way it failed.
    pub fn kind(&self) -> AdminErrorKind {
        self.kind
    }

    /// The answer's status, when one arrived.
    pub fn status(&self) -> Option<StatusCode> {
        self.status
    }

    /// What a failed destructive request did anyway, when the server said.
    pub fn failure(&self) -> Option<&DestroyFailure> {
        self.failure.as_deref()
    }
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.status.map(|s| s.to_string()).unwrap_or_default();
        match self.kind {
            AdminErrorKind::Unreachable => f.write_str(&self.detail),
            AdminErrorKind::Unauthorized => write!(
                f,
                "the {} refused the admin token (check VEIL_ADMIN_TOKEN / admin.token; the admin token is not the master key)",
                self.at
            ),
            AdminErrorKind::Refused => match self.at {
                Endpoint::Tcp(_) => write!(f, "admin API: {status}: {}", self.detail),
                // Same uid, same host: the operator's own veil refused, and its words say
                // why; the HTTP status of a local socket tells them nothing more.
                Endpoint::Control(_) => write!(f, "the running veil refused: {}", self.detail),
            },
            AdminErrorKind::Unreadable => write!(
                f,
                "the {} answered {status} to {} with a document this veil ({}) cannot read: {}; is it running another veil version?",
                self.at,
                self.endpoint,
                env!("CARGO_PKG_VERSION"),
                self.detail
            ),
        }
    }
}

impl std::error::Error for AdminError {}

/// A serde_json error without the values it quotes: `invalid type: string "…", expected u64`
/// would otherwise echo content of an unsealed exchange into an error message.
fn without_values(e: &serde_json::Error) -> String {
    let msg = e.to_string();
    let mut out = String::with_capacity(msg.len());
    let mut chars = msg.chars();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == '"' {
            // Skip to the closing quote (Debug-escaped: `\"` does not close).
            let mut escaped = false;
            for c in chars.by_ref() {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    break;
                }
            }
            out.push_str("…\"");
        }
    }
    out
}

impl AdminClient {
    /// Sends one request; returns the status and the JSON body (or `null` when it is not
    /// JSON). The untyped escape hatch for tests and scripts; the CLI uses the typed methods.
    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
    ) -> Result<(StatusCode, serde_json::Value), String> {
        let (status, body) = self.send(method, path_and_query).await?;
        let v = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        Ok((status, v))
    }

    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
    ) -> Result<(StatusCode, Bytes), String> {
        let mut req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header("x-veil-actor", &self.actor);
        if let Some(token) = &self.token {
            req = req.header("authorization", format!("Bearer {}", token.secret()));
        }
        match &self.endpoint {
            Endpoint::Tcp(addr) => {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|e| format!("cannot reach the admin API at {addr}: {e}"))?;
                exchange(stream, req.header("host", addr.to_string())).await
            }
            Endpoint::Control(path) => {
                let stream = super::control::connect(path).await.map_err(|e| {
                    format!("cannot reach the control socket {}: {e}", path.display())
                })?;
                exchange(stream, req.header("host", "localhost")).await
            }
        }
    }

    fn error(
        &self,
        req: &AdminRequest,
        kind: AdminErrorKind,
        status: Option<StatusCode>,
        detail: String,
    ) -> AdminError {
        AdminError {
            kind,
            at: self.endpoint.clone(),
            status,
            endpoint: req.endpoint(),
            detail,
            failure: None,
        }
    }

    /// Decodes `body` as `T`, strictly; the error names the field, not its value.
    fn decode<T: DeserializeOwned>(
        &self,
        req: &AdminRequest,
        status: StatusCode,
        body: &[u8],
    ) -> Result<T, AdminError> {
        serde_json::from_slice(body).map_err(|e| {
            let mut detail = without_values(&e);
            if req.is_destructive() {
                detail.push_str(" (it may have acted: check receipts.jsonl)");
            }
            self.error(req, AdminErrorKind::Unreadable, Some(status), detail)
        })
    }

    /// A non-2xx answer as an error: 401, a [`DestroyFailure`] (destructive requests whose
    /// answer carries the ID lists), or an [`ErrorResponse`].
    fn refusal(&self, req: &AdminRequest, status: StatusCode, body: &[u8]) -> AdminError {
        if status == StatusCode::UNAUTHORIZED {
            return self.error(
                req,
                AdminErrorKind::Unauthorized,
                Some(status),
                String::new(),
            );
        }
        let lists = req.is_destructive()
            && serde_json::from_slice::<serde_json::Value>(body)
                .is_ok_and(|v| v.get("destroyed").is_some());
        if lists {
            return match self.decode::<DestroyFailure>(req, status, body) {
                Ok(f) => {
                    let error = f.error.clone();
                    AdminError {
                        failure: Some(Box::new(f)),
                        ..self.error(req, AdminErrorKind::Refused, Some(status), error)
                    }
                }
                Err(e) => e,
            };
        }
        match self.decode::<ErrorResponse>(req, status, body) {
            Ok(e) => self.error(req, AdminErrorKind::Refused, Some(status), e.error),
            Err(e) => e,
        }
    }

    /// Sends `req`; decodes a status in `ok` as `T`, anything else as an error.
    async fn call<T: DeserializeOwned>(
        &self,
        req: &AdminRequest,
        ok: &[StatusCode],
    ) -> Result<T, AdminError> {
        let (status, body) = self
            .send(req.method(), &req.path_and_query())
            .await
            .map_err(|e| self.error(req, AdminErrorKind::Unreachable, None, e))?;
        if ok.contains(&status) {
            self.decode(req, status, &body)
        } else {
            Err(self.refusal(req, status, &body))
        }
    }

    /// `GET /healthz`.
    pub async fn health(&self) -> Result<HealthResponse, AdminError> {
        let req = AdminRequest::Health;
        let (status, body) = self
            .send(req.method(), &req.path_and_query())
            .await
            .map_err(|e| self.error(&req, AdminErrorKind::Unreachable, None, e))?;
        match status {
            StatusCode::OK => Ok(HealthResponse::Ok),
            StatusCode::SERVICE_UNAVAILABLE => {
                Ok(HealthResponse::Degraded(self.decode(&req, status, &body)?))
            }
            _ => Err(self.refusal(&req, status, &body)),
        }
    }

    /// `GET /v1/exchanges/{id}?reason=R`: the unsealed exchange (audited by the server).
    pub async fn unseal(&self, id: ExchangeId, reason: &str) -> Result<ExchangeView, AdminError> {
        let req = AdminRequest::Unseal {
            id,
            reason: Some(reason.to_string()),
        };
        self.call(&req, &[StatusCode::OK]).await
    }

    /// `DELETE /v1/exchanges/{id}?reason=R`: `forgotten` true (200) or false (404, unknown).
    /// A failure carries what was destroyed ([`AdminError::failure`]).
    pub async fn forget(&self, id: ExchangeId, reason: &str) -> Result<ForgetResponse, AdminError> {
        let req = AdminRequest::Forget {
            id,
            reason: Some(reason.to_string()),
        };
        self.call(&req, &[StatusCode::OK, StatusCode::NOT_FOUND])
            .await
    }

    /// `DELETE /v1/users/{user}/exchanges?reason=R` for the raw user ID `user`.
    pub async fn forget_user(
        &self,
        user: &str,
        reason: &str,
    ) -> Result<ForgetUserResponse, AdminError> {
        let req = AdminRequest::ForgetUser {
            user: user.to_string(),
            reason: Some(reason.to_string()),
        };
        self.call(&req, &[StatusCode::OK]).await
    }

    /// `POST /v1/purge?older_than=D` (sent in whole milliseconds).
    pub async fn purge(&self, older_than: Duration) -> Result<PurgeResponse, AdminError> {
        self.call(&AdminRequest::Purge { older_than }, &[StatusCode::OK])
            .await
    }

    /// `GET /v1/purge?older_than=D`: what a purge would destroy, destroying nothing.
    pub async fn purge_preview(
        &self,
        older_than: Duration,
    ) -> Result<PurgePreviewResponse, AdminError> {
        self.call(
            &AdminRequest::PurgePreview { older_than },
            &[StatusCode::OK],
        )
        .await
    }

    /// `POST /v1/compact`.
    pub async fn compact(&self) -> Result<CompactResponse, AdminError> {
        self.call(&AdminRequest::Compact, &[StatusCode::OK]).await
    }

    /// `POST /v1/keys/reload`.
    pub async fn reload_keys(&self) -> Result<KeysReloadResponse, AdminError> {
        self.call(&AdminRequest::ReloadKeys, &[StatusCode::OK])
            .await
    }

    /// `POST /v1/keys/rewrap`.
    pub async fn rewrap(&self) -> Result<RewrapResponse, AdminError> {
        self.call(&AdminRequest::Rewrap, &[StatusCode::OK]).await
    }

    /// `POST /v1/rules/reload`: the new digest; a file that does not compile is a
    /// [`AdminErrorKind::Refused`] (422) naming file:line:col.
    pub async fn reload_rules(&self) -> Result<RulesReloadResponse, AdminError> {
        self.call(&AdminRequest::ReloadRules, &[StatusCode::OK])
            .await
    }

    /// `POST /v1/feedback`: one feedback (`body`: the JSON of `POST /veil/v1/feedback`);
    /// its id (`fb_…`). A refusal's error says which field and why, or that the request id
    /// is unknown.
    pub async fn feedback(&self, body: &serde_json::Value) -> Result<String, AdminError> {
        let req = AdminRequest::Feedback {
            body: body.to_string(),
        };
        let answer: super::FeedbackResponse = self.call(&req, &[StatusCode::ACCEPTED]).await?;
        Ok(answer.id)
    }

    /// `GET /v1/ca`: the running veil's CA, trust bundle and proxy address.
    pub async fn ca(&self) -> Result<CaResponse, AdminError> {
        self.call(&AdminRequest::Ca, &[StatusCode::OK]).await
    }
}

/// Sends `req` (no body) on a fresh connection `stream`; the status and the whole body.
async fn exchange<S>(stream: S, req: http::request::Builder) -> Result<(StatusCode, Bytes), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("admin API handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = req
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
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A refusal on the control socket says what the veil said, without HTTP's words; on a
    /// TCP admin API (maybe a remote one) the status stays.
    #[test]
    fn a_refusal_on_the_control_socket_reads_without_http_status() {
        let refused = |at: Endpoint| AdminError {
            kind: AdminErrorKind::Refused,
            at,
            status: Some(StatusCode::NOT_FOUND),
            endpoint: "/veil/v1/exchanges/{id}",
            detail: "no exchange 01a2 is sealed here".into(),
            failure: None,
        };
        assert_eq!(
            refused(Endpoint::Control("data/veil.sock".into())).to_string(),
            "the running veil refused: no exchange 01a2 is sealed here"
        );
        assert_eq!(
            refused(Endpoint::Tcp("127.0.0.1:9000".parse().unwrap())).to_string(),
            "admin API: 404 Not Found: no exchange 01a2 is sealed here"
        );
    }

    /// A stand-in for a veil of another version: answers every request on 127.0.0.1:0 with
    /// `status` and `body`, until the returned sender is dropped.
    async fn fake_veil(
        status: StatusCode,
        body: &'static str,
    ) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = &mut stopped => return,
                    a = listener.accept() => a.unwrap(),
                };
                let svc = hyper::service::service_fn(move |_req| async move {
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(body.as_bytes())))
                            .unwrap(),
                    )
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        (addr, stop)
    }

    fn client(addr: SocketAddr) -> AdminClient {
        AdminClient::tcp(addr, AdminToken::from_secret("t"), "cli:test")
    }

    // See: veil#11
    #[tokio::test]
    async fn another_versions_answer_is_a_clear_error_naming_the_field() {
        // A newer veil added a field to the unseal view.
        let (addr, _stop) = fake_veil(
            StatusCode::OK,
            r#"{"id":"0190a5e2-7c4d-7b3e-8f00-000000000001","started_at":"x","sentiment":"PLANTED"}"#,
        )
        .await;
        let e = client(addr)
            .unseal(ExchangeId::new(), "test")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), AdminErrorKind::Unreadable);
        assert_eq!(e.status(), Some(StatusCode::OK));
        let msg = e.to_string();
        for want in [
            "unknown field `sentiment`",
            "GET /v1/exchanges/{id}",
            env!("CARGO_PKG_VERSION"),
            "another veil version",
        ] {
            assert!(msg.contains(want), "{want:?} not in {msg}");
        }
        assert!(!msg.contains("PLANTED"), "{msg}");

        // An older veil whose purge answer lacks a field: the purge may have run.
        let (addr, _stop) = fake_veil(StatusCode::OK, r#"{"purged":2}"#).await;
        let e = client(addr)
            .purge(Duration::from_secs(60))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), AdminErrorKind::Unreadable);
        let msg = e.to_string();
        assert!(msg.contains("missing field `ids`"), "{msg}");
        assert!(msg.contains("check receipts.jsonl"), "{msg}");

        // A failure document with a list this veil does not know is not read as "nothing
        // destroyed".
        let (addr, _stop) = fake_veil(
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"error":"x","destroyed":[],"pending":[],"not_destroyed":[],"quarantined":[]}"#,
        )
        .await;
        let e = client(addr)
            .forget(ExchangeId::new(), "test")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), AdminErrorKind::Unreadable);
        assert!(e.failure().is_none());
        assert!(e.to_string().contains("unknown field `quarantined`"), "{e}");

        // Not JSON at all (something else listens there).
        let (addr, _stop) = fake_veil(StatusCode::BAD_GATEWAY, "<html>bad gateway</html>").await;
        let e = client(addr).compact().await.unwrap_err();
        assert_eq!(e.kind(), AdminErrorKind::Unreadable);
        assert_eq!(e.status(), Some(StatusCode::BAD_GATEWAY));
    }

    #[tokio::test]
    async fn refusals_carry_the_error_and_what_was_destroyed() {
        let id = ExchangeId::new();
        let body: &'static str = Box::leak(
            format!(
                r#"{{"error":"audit log","destroyed":[],"pending":[],"not_destroyed":["{id}"],"request_id":"{id}","forgotten":false}}"#
            )
            .into_boxed_str(),
        );
        let (addr, _stop) = fake_veil(StatusCode::SERVICE_UNAVAILABLE, body).await;
        let e = client(addr).forget(id, "test").await.unwrap_err();
        assert_eq!(e.kind(), AdminErrorKind::Refused);
        assert_eq!(e.failure().unwrap().not_destroyed, [id]);
        assert_eq!(
            e.to_string(),
            "admin API: 503 Service Unavailable: audit log"
        );

        let (addr, _stop) = fake_veil(StatusCode::CONFLICT, r#"{"error":"wrong key"}"#).await;
        let e = client(addr).rewrap().await.unwrap_err();
        assert_eq!((e.kind(), e.failure()), (AdminErrorKind::Refused, None));
        assert_eq!(e.to_string(), "admin API: 409 Conflict: wrong key");

        let (addr, _stop) = fake_veil(StatusCode::UNAUTHORIZED, r#"{"error":"no"}"#).await;
        let e = client(addr).compact().await.unwrap_err();
        assert_eq!(e.kind(), AdminErrorKind::Unauthorized);
        assert!(e.to_string().contains("refused the admin token"), "{e}");

        // Nothing listens: unreachable, no status.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let e = client(addr).compact().await.unwrap_err();
        assert_eq!((e.kind(), e.status()), (AdminErrorKind::Unreachable, None));
    }

    #[test]
    fn decode_errors_never_quote_values() {
        let e = serde_json::from_str::<u64>(r#""PLANTED-PROMPT with \"quotes\"""#).unwrap_err();
        let s = without_values(&e);
        assert!(!s.contains("PLANTED"), "{s}");
        assert!(!s.contains("quotes"), "{s}");
        assert!(s.contains("expected u64"), "{s}");
    }
}
