//! # Proxy errors: veil's own answers, and which side failed.
//!
//! Every error the proxy answers an app with is one [`ProxyError`]: the side that failed (the
//! app, the upstream, or veil itself), the status and `error.code` of the JSON answer, a
//! message for the app (never content), and the counter it belongs to
//! ([`ProxyError::metric_label`]). Routing ([`route`](super::route)) and forwarding build
//! them; the listener answers and counts them in one place, so an app that breaks off its own
//! upload is counted as a client error and never as an upstream one (veil#11).
//!
//! This module only describes errors: it never logs, counts or touches a socket.

use std::fmt;

use http::StatusCode;

use super::upstream::UpstreamError;

/// Which party an error is attributed to (after pingora's `ErrorSource`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The app: a malformed request, a destination it may not reach, an upload it broke off
    /// or let stall.
    Client,
    /// The upstream: unreachable, TLS failure, no answer in time, a broken response.
    Upstream,
    /// veil itself: recording cannot be made durable, an upstream URL it cannot build.
    Internal,
}

/// The counters a [`ProxyError`] is counted under (see [`ProxyError::metric_label`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Metric {
    BadRequest,
    Refused,
    TimedOut,
    ClientAborted,
    UpstreamError,
    AuditUnavailable,
    Internal,
}

/// One error the proxy answers with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyError {
    side: Side,
    status: StatusCode,
    code: String,
    message: String,
    metric: Metric,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ProxyError {}

impl ProxyError {
    fn new(side: Side, status: StatusCode, code: &str, message: String, metric: Metric) -> Self {
        ProxyError {
            side,
            status,
            code: code.to_string(),
            message,
            metric,
        }
    }

    /// A malformed request from the app (400) or an unknown gateway route (404); `code` is
    /// `bad_request`, `bad_port` or `no_route`. Not counted.
    pub fn bad_request(status: StatusCode, code: &str, message: String) -> Self {
        Self::new(Side::Client, status, code, message, Metric::BadRequest)
    }

    /// A destination veil does not reach for apps: 403 `port_not_allowed`.
    pub fn port_not_allowed(message: String) -> Self {
        Self::new(
            Side::Client,
            StatusCode::FORBIDDEN,
            "port_not_allowed",
            message,
            Metric::Refused,
        )
    }

    /// The app's request body stopped arriving: 408 `request_body_timeout`.
    pub fn body_stalled(message: String) -> Self {
        Self::new(
            Side::Client,
            StatusCode::REQUEST_TIMEOUT,
            "request_body_timeout",
            message,
            Metric::TimedOut,
        )
    }

    /// The app broke off its own upload while veil forwarded it: 400 `client_aborted` (the
    /// app rarely reads it; what matters is that the upstream is not blamed).
    pub fn client_aborted(message: String) -> Self {
        Self::new(
            Side::Client,
            StatusCode::BAD_REQUEST,
            "client_aborted",
            message,
            Metric::ClientAborted,
        )
    }

    /// An upstream failure as [`UpstreamError`] classified it: 502/504 `upstream_<kind>`, or,
    /// for a destination veil refused ([`UpstreamError::refused`]), the app's 403
    /// `destination_refused`.
    pub fn upstream(err: &UpstreamError) -> Self {
        let (side, metric) = if err.refused {
            (Side::Client, Metric::Refused)
        } else {
            (Side::Upstream, Metric::UpstreamError)
        };
        Self::new(side, err.status(), &err.code(), err.message.clone(), metric)
    }

    /// Recording cannot be made durable under `audit = "required"`: 503 `audit_unavailable`.
    pub fn audit_unavailable(message: String) -> Self {
        Self::new(
            Side::Internal,
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            message,
            Metric::AuditUnavailable,
        )
    }

    /// veil could not do its own part (e.g. build the upstream URL): `status` with `code`.
    pub fn internal(status: StatusCode, code: &str, message: String) -> Self {
        Self::new(Side::Internal, status, code, message, Metric::Internal)
    }

    /// The side that failed.
    pub fn side(&self) -> Side {
        self.side
    }

    /// The status veil answers with.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The `error.code` of veil's JSON answer.
    pub fn code(&self) -> &str {
        &self.code
    }

    /// What went wrong, for the app and the operator (no content).
    pub fn message(&self) -> &str {
        &self.message
    }

    /// True when a destination rule refused the request (counted under `refused`).
    pub fn is_refused(&self) -> bool {
        self.metric == Metric::Refused
    }

    /// The counter this error is counted under: `bad_request`, `refused`, `timed_out`,
    /// `client_aborted`, `upstream_error`, `audit_unavailable` or `internal_error`. Stable:
    /// metrics and dashboards key on it.
    pub fn metric_label(&self) -> &'static str {
        match self.metric {
            Metric::BadRequest => "bad_request",
            Metric::Refused => "refused",
            Metric::TimedOut => "timed_out",
            Metric::ClientAborted => "client_aborted",
            Metric::UpstreamError => "upstream_error",
            Metric::AuditUnavailable => "audit_unavailable",
            Metric::Internal => "internal_error",
        }
    }
}

/// The error for a forwarded request whose upstream call failed with `failure`:
/// `request_body_failed` (the app's upload broke off, as the recording or the error chain
/// saw it) makes it the client's, whatever the upstream side then reported.
pub fn forward_failure(failure: &UpstreamError, request_body_failed: bool) -> ProxyError {
    if request_body_failed && !failure.refused {
        ProxyError::client_aborted(format!(
            "the app broke off the request body ({})",
            failure.message
        ))
    } else {
        ProxyError::upstream(failure)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::UpstreamFailure;

    fn upstream(kind: UpstreamFailure) -> UpstreamError {
        UpstreamError::new(kind, "upstream said no".into())
    }

    #[test]
    fn an_upstream_failure_is_the_upstreams() {
        let e = ProxyError::upstream(&upstream(UpstreamFailure::Connect));
        assert_eq!(e.side(), Side::Upstream);
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(e.code(), "upstream_connect");
        assert_eq!(e.metric_label(), "upstream_error");
        let e = ProxyError::upstream(&upstream(UpstreamFailure::Timeout));
        assert_eq!(e.status(), StatusCode::GATEWAY_TIMEOUT);
    }

    #[test]
    fn a_refused_destination_is_the_clients_and_counted_refused() {
        let mut err = upstream(UpstreamFailure::Connect);
        err.refused = true;
        let e = ProxyError::upstream(&err);
        assert_eq!(e.side(), Side::Client);
        assert_eq!(e.status(), StatusCode::FORBIDDEN);
        assert_eq!(e.code(), "destination_refused");
        assert!(e.is_refused());
        assert_eq!(e.metric_label(), "refused");
        let e = ProxyError::port_not_allowed("no".into());
        assert!(e.is_refused() && e.side() == Side::Client);
    }

    #[test]
    fn an_aborted_upload_is_the_clients_not_the_upstreams() {
        let failure = upstream(UpstreamFailure::Protocol);
        let e = forward_failure(&failure, true);
        assert_eq!(e.side(), Side::Client);
        assert_eq!(e.metric_label(), "client_aborted");
        assert_eq!(e.code(), "client_aborted");
        let e = forward_failure(&failure, false);
        assert_eq!(e.side(), Side::Upstream);
        assert_eq!(e.metric_label(), "upstream_error");
    }

    #[test]
    fn each_constructor_has_its_side_status_and_label() {
        let cases = [
            (
                ProxyError::bad_request(StatusCode::NOT_FOUND, "no_route", "x".into()),
                Side::Client,
                404,
                "bad_request",
            ),
            (
                ProxyError::body_stalled("x".into()),
                Side::Client,
                408,
                "timed_out",
            ),
            (
                ProxyError::audit_unavailable("x".into()),
                Side::Internal,
                503,
                "audit_unavailable",
            ),
            (
                ProxyError::internal(StatusCode::BAD_REQUEST, "bad_request", "x".into()),
                Side::Internal,
                400,
                "internal_error",
            ),
        ];
        for (e, side, status, label) in cases {
            assert_eq!(
                (e.side(), e.status().as_u16(), e.metric_label()),
                (side, status, label),
                "{e:?}"
            );
            assert!(!e.is_refused());
        }
    }
}
