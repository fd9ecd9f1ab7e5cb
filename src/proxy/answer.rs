//! # Answer: veil's own responses, and the one place they are counted.
//!
//! Every stage that answers an app itself, rather than passing an upstream response on,
//! comes here: [`Shared::answer`] turns a [`ProxyError`] into a short JSON body shaped like
//! the providers' errors (`error.message`, so SDKs surface the reason), with the request ID
//! when the exchange is recorded, and counts it under its
//! [`metric_label`](ProxyError::metric_label); [`empty_ok`] is the 200 that opens a CONNECT
//! tunnel. Nothing here reads a request or talks to an upstream.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};

use crate::exchange::ExchangeId;

use super::error::ProxyError;
use super::{ProxyBody, REQUEST_ID_HEADER, Shared};

impl Shared {
    /// Answers with `err` (veil's JSON error), counting it under its
    /// [`ProxyError::metric_label`].
    pub(super) fn answer(&self, err: &ProxyError, id: Option<ExchangeId>) -> Response<ProxyBody> {
        let counter = match err.metric_label() {
            "refused" => Some(&self.counters.proxy.refused),
            "timed_out" => Some(&self.counters.proxy.timed_out),
            "client_aborted" => Some(&self.counters.proxy.client_aborted),
            "upstream_error" => Some(&self.counters.proxy.upstream_errors),
            // Malformed requests were never counted; audit refusals are counted by the
            // recording queue (queue.refused) where they arise.
            _ => None,
        };
        if let Some(counter) = counter {
            counter.inc();
        }
        json_error(err.status(), err.code(), err.message(), id)
    }
}

pub(super) fn id_header(id: ExchangeId) -> HeaderValue {
    let mut text = [0; 36];
    HeaderValue::from_str(id.encode(&mut text)).expect("invariant: a UUID is a valid header value")
}

pub(super) fn empty_ok() -> Response<ProxyBody> {
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
