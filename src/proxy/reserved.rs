//! # Reserved: veil's own API under `/veil/`, on the proxy port and inside intercepted TLS.
//!
//! `/veil/` is reserved before routing: a request whose origin-form path starts with it never
//! reaches [`route`](super::route) (so no gateway route can take it; `Config` refuses a route
//! named `veil` too) nor an upstream. Today it holds one endpoint, `POST /veil/v1/feedback`
//! (veil#14). This stage only checks the method, asks the [`VeilApi`] hook whether the
//! caller may use it, reads the body within [`MAX_BODY`] and a clock, and hands the bytes to
//! the hook on a blocking thread: what feedback means (validation, the rules that scrub its
//! comment, the ledger and OTLP it goes to) lives outside the proxy, which must not know the
//! rules or the sinks (`docs/architecture.md`). Never recorded, never counted as an exchange.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;

use super::drain::Drain;
use super::stall::StallClock;
use super::{ProxyBody, Shared};

/// The path prefix veil keeps for itself.
pub const PREFIX: &str = "/veil/";

/// The feedback endpoint.
pub const FEEDBACK_PATH: &str = "/veil/v1/feedback";

/// Largest request body the reserved API reads (16 KiB): a feedback is a few hundred bytes;
/// past this the answer is 413 and the rest of the body is not read.
pub const MAX_BODY: usize = 16 * 1024;

/// How long a reserved request may take to send its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// veil's answer to a reserved request: a status and a JSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiAnswer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The JSON body (`{"id": …}` or `{"error": {"type", "message", …}}`).
    pub body: serde_json::Value,
}

impl ApiAnswer {
    /// An error answer: `{"error": {"type": kind, "message": message}}`.
    pub fn error(status: StatusCode, kind: &str, message: impl Into<String>) -> Self {
        ApiAnswer {
            status,
            body: serde_json::json!({"error": {"type": kind, "message": message.into()}}),
        }
    }
}

/// What serves the reserved API: set once with [`Proxy::with_api`](super::Proxy::with_api)
/// (`veil run` hands the feedback service). Both methods may block (they run on a blocking
/// thread, never on the proxy's runtime).
pub trait VeilApi: Send + Sync + std::fmt::Debug + 'static {
    /// `Ok` when a request with this `Authorization` header value may use the API; else the
    /// answer (401). Called before the body is read.
    fn authorize(&self, authorization: Option<&str>) -> Result<(), ApiAnswer>;

    /// `POST /veil/v1/feedback` with `body` (at most [`MAX_BODY`] bytes).
    fn feedback(&self, body: &[u8]) -> ApiAnswer;
}

/// Whether `req`, on the proxy port, is addressed to veil's reserved API (origin form, path
/// under [`PREFIX`]); an absolute-form URL there names another host and is routed.
pub fn is_reserved<B>(req: &Request<B>) -> bool {
    req.method() != Method::CONNECT && req.uri().scheme().is_none() && reserved_path(req)
}

/// Whether `req`, inside an intercepted TLS session, is addressed to veil's reserved API: by
/// its path alone. Every request of the session goes to the intercepted host, and HTTP/2
/// requests always carry `:scheme` and `:authority` (hyper gives them an absolute-form URI),
/// so [`is_reserved`]'s origin-form test would forward `/veil/v1/feedback` (and its raw
/// comment) upstream over h2 (found by the HTTP/2 case of the feedback integration test).
pub fn is_reserved_in_session<B>(req: &Request<B>) -> bool {
    req.method() != Method::CONNECT && reserved_path(req)
}

fn reserved_path<B>(req: &Request<B>) -> bool {
    req.uri().path().starts_with(PREFIX) || req.uri().path() == "/veil"
}

impl Shared {
    /// Answers one request under `/veil/` (see the module docs).
    pub(super) async fn reserved(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let (parts, body) = req.into_parts();
        // A body left unread by an early answer (401, 404, 405, 413) is drained (bounded),
        // and the answer waits for that (bounded), as for veil's other answers (see `drain`);
        // one that stops arriving ends on the stall clock.
        let mut body = self.request_body(body, parts.version);
        let settled = body.settled();
        // The body is gone (read, or dropped unread) when the answer is ready.
        let answer = self.reserved_answer(&parts, body).await;
        super::forward::answer_unread(settled, json_answer(answer)).await
    }

    async fn reserved_answer(
        &self,
        parts: &http::request::Parts,
        body: Drain<StallClock<Incoming>>,
    ) -> ApiAnswer {
        let Some(api) = self.api.clone() else {
            return ApiAnswer::error(
                StatusCode::NOT_FOUND,
                "not_found",
                "this veil serves no API under /veil/ (it runs without the feedback service)",
            );
        };
        if parts.uri.path() != FEEDBACK_PATH {
            return ApiAnswer::error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no veil endpoint {:?}; /veil/ is reserved for veil's own API: POST {FEEDBACK_PATH}",
                    parts.uri.path()
                ),
            );
        }
        if parts.method != Method::POST {
            return ApiAnswer::error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!(
                    "{FEEDBACK_PATH} takes POST with a JSON body, not {}",
                    parts.method
                ),
            );
        }
        let authorization = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let authorized = {
            let api = api.clone();
            tokio::task::spawn_blocking(move || api.authorize(authorization.as_deref())).await
        };
        match authorized {
            Ok(Ok(())) => {}
            Ok(Err(answer)) => return answer,
            Err(_) => return internal(),
        }
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_BODY as u64) {
            return too_large();
        }
        let read = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect());
        let bytes: Bytes = match read.await {
            Ok(Ok(collected)) => collected.to_bytes(),
            Ok(Err(e))
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                return too_large();
            }
            Ok(Err(_)) => {
                return ApiAnswer::error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "the request body could not be read to its end; send it again",
                );
            }
            Err(_) => {
                return ApiAnswer::error(
                    StatusCode::REQUEST_TIMEOUT,
                    "timeout",
                    format!(
                        "the request body did not arrive within {}s; send it again",
                        BODY_TIMEOUT.as_secs()
                    ),
                );
            }
        };
        match tokio::task::spawn_blocking(move || api.feedback(&bytes)).await {
            Ok(answer) => answer,
            Err(_) => internal(),
        }
    }
}

fn too_large() -> ApiAnswer {
    ApiAnswer::error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!(
            "the body is larger than {} KiB; shorten the comment (feedback is a name, a score or label, and a short comment)",
            MAX_BODY / 1024
        ),
    )
}

fn internal() -> ApiAnswer {
    ApiAnswer::error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "veil failed while handling the request (see its log); send it again",
    )
}

fn json_answer(answer: ApiAnswer) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from(
        answer.body.to_string(),
    ))));
    *resp.status_mut() = answer.status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// The hook, shared by every connection.
pub(super) type Api = Option<Arc<dyn VeilApi>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: Method, uri: &str) -> Request<()> {
        Request::builder().method(method).uri(uri).body(()).unwrap()
    }

    // See: veil#14. Over HTTP/2 inside an intercepted session the URI is absolute
    // (`:scheme` + `:authority`): the origin-form test let /veil/v1/feedback go upstream.
    #[test]
    fn https_api_openai_com_veil_v1_feedback_over_h2_is_reserved_in_the_session() {
        let h2 = req(Method::POST, "https://api.openai.com/veil/v1/feedback");
        assert!(is_reserved_in_session(&h2));
        assert!(
            !is_reserved(&h2),
            "on the proxy port an absolute URL names another host"
        );
        let h1 = req(Method::POST, "/veil/v1/feedback");
        assert!(is_reserved(&h1) && is_reserved_in_session(&h1));
        assert!(is_reserved_in_session(&req(Method::GET, "/veil")));
        for other in ["/v1/chat/completions", "/veilx/v1", "/v1/veil/"] {
            assert!(
                !is_reserved_in_session(&req(Method::POST, other)),
                "{other}"
            );
            assert!(!is_reserved(&req(Method::POST, other)), "{other}");
        }
    }
}
