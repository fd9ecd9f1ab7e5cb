//! # Admin API requests: the method, path and query a client sends and the server routes.

use std::fmt;
use std::time::Duration;

use http::{Method, StatusCode, Uri};

use super::{percent_decode, percent_encode};
use crate::exchange::ExchangeId;

/// One admin API request: the method, path and query the client sends and the server routes.
///
/// Requests carry no body; everything is in the path and the query. `reason` (any text,
/// percent-encoded, `+` read as a space) goes into the audit log and the receipts; the server
/// writes `admin api` when it is absent. `Debug` leaves out the raw user ID.
#[derive(Clone, PartialEq, Eq)]
pub enum AdminRequest {
    /// `GET /healthz`: can veil record right now. The only request without a token.
    Health,
    /// `GET /v1/exchanges/{id}[?reason=R]`: unseal one exchange (audited first).
    Unseal {
        /// The request ID (`x-veil-request-id`).
        id: ExchangeId,
        /// Why the operator reads it.
        reason: Option<String>,
    },
    /// `DELETE /v1/exchanges/{id}[?reason=R]`: forget (crypto-shred) one exchange.
    Forget {
        /// The request ID.
        id: ExchangeId,
        /// Why (receipt and audit log).
        reason: Option<String>,
    },
    /// `DELETE /v1/users/{user}/exchanges[?reason=R]`: forget every exchange of a user.
    ForgetUser {
        /// The *raw* user ID (percent-encoded in the path, never empty); the server
        /// pseudonymizes it with its keyring and neither side stores or logs it.
        user: String,
        /// Why (receipts and audit log).
        reason: Option<String>,
    },
    /// `POST /v1/purge?older_than=D`: forget every exchange older than `older_than` now.
    Purge {
        /// Age limit. Sent in whole milliseconds (`older_than=2592000000ms`); the server
        /// accepts any `parse_duration` form (`30d`, `12h`, `500ms`) up to 100 years.
        older_than: Duration,
    },
    /// `GET /v1/purge?older_than=D`: what `POST /v1/purge` would destroy now, destroying
    /// nothing (`veil purge --dry-run`).
    PurgePreview {
        /// Age limit, as for [`AdminRequest::Purge`].
        older_than: Duration,
    },
    /// `POST /v1/compact`: one compaction pass (reclaim forgotten bytes).
    Compact,
    /// `POST /v1/keys/reload`: re-read the keys dir (after `veil keys rotate`).
    ReloadKeys,
    /// `POST /v1/keys/rewrap`: reload, then re-wrap every data key under the newest key.
    Rewrap,
    /// `POST /v1/rules/reload`: read and compile the rules file again (`veil reload`; what
    /// SIGHUP does).
    ReloadRules,
    /// `GET /v1/ca`: the running veil's CA and proxy address (`veil env`, `veil ca path`).
    Ca,
    /// `POST /v1/feedback?body=JSON`: one feedback, the JSON body of `POST
    /// /veil/v1/feedback` (`veil feedback`). In the query, as every admin request carries
    /// no body; the server never logs a query, and `Debug` leaves it out (the comment is raw).
    Feedback {
        /// The feedback document (`{"request_id", "name", "score", …}`).
        body: String,
    },
}

impl fmt::Debug for AdminRequest {
    // A raw user ID is PII: Debug shows the endpoint and the ID-free fields only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminRequest::Unseal { id, .. } | AdminRequest::Forget { id, .. } => {
                write!(f, "{} ({id})", self.endpoint())
            }
            AdminRequest::Purge { older_than } | AdminRequest::PurgePreview { older_than } => {
                write!(f, "{} ({}ms)", self.endpoint(), older_than.as_millis())
            }
            _ => f.write_str(self.endpoint()),
        }
    }
}

impl AdminRequest {
    /// The HTTP method.
    pub fn method(&self) -> Method {
        match self {
            AdminRequest::Health
            | AdminRequest::Unseal { .. }
            | AdminRequest::Ca
            | AdminRequest::PurgePreview { .. } => Method::GET,
            AdminRequest::Forget { .. } | AdminRequest::ForgetUser { .. } => Method::DELETE,
            AdminRequest::Purge { .. }
            | AdminRequest::Compact
            | AdminRequest::ReloadKeys
            | AdminRequest::Rewrap
            | AdminRequest::ReloadRules
            | AdminRequest::Feedback { .. } => Method::POST,
        }
    }

    /// The endpoint as a template without values (`DELETE /v1/users/{user}/exchanges`), for
    /// error messages and logs: never a raw user ID.
    pub fn endpoint(&self) -> &'static str {
        match self {
            AdminRequest::Health => "GET /healthz",
            AdminRequest::Unseal { .. } => "GET /v1/exchanges/{id}",
            AdminRequest::Forget { .. } => "DELETE /v1/exchanges/{id}",
            AdminRequest::ForgetUser { .. } => "DELETE /v1/users/{user}/exchanges",
            AdminRequest::Purge { .. } => "POST /v1/purge",
            AdminRequest::PurgePreview { .. } => "GET /v1/purge",
            AdminRequest::Compact => "POST /v1/compact",
            AdminRequest::ReloadKeys => "POST /v1/keys/reload",
            AdminRequest::Rewrap => "POST /v1/keys/rewrap",
            AdminRequest::ReloadRules => "POST /v1/rules/reload",
            AdminRequest::Ca => "GET /v1/ca",
            AdminRequest::Feedback { .. } => "POST /v1/feedback",
        }
    }

    /// True for the requests that destroy sealed exchanges (forget, forget a user, purge):
    /// their failures answer with a [`DestroyFailure`](super::DestroyFailure).
    pub fn is_destructive(&self) -> bool {
        matches!(
            self,
            AdminRequest::Forget { .. }
                | AdminRequest::ForgetUser { .. }
                | AdminRequest::Purge { .. }
        )
    }

    /// The path and query to send, values percent-encoded.
    pub fn path_and_query(&self) -> String {
        let reason = |r: &Option<String>| {
            r.as_deref()
                .map(|r| format!("?reason={}", percent_encode(r)))
                .unwrap_or_default()
        };
        match self {
            AdminRequest::Health => "/healthz".to_string(),
            AdminRequest::Unseal { id, reason: r } | AdminRequest::Forget { id, reason: r } => {
                format!("/v1/exchanges/{id}{}", reason(r))
            }
            AdminRequest::ForgetUser { user, reason: r } => {
                format!("/v1/users/{}/exchanges{}", percent_encode(user), reason(r))
            }
            AdminRequest::Purge { older_than } | AdminRequest::PurgePreview { older_than } => {
                format!("/v1/purge?older_than={}ms", older_than.as_millis())
            }
            AdminRequest::Compact => "/v1/compact".to_string(),
            AdminRequest::ReloadKeys => "/v1/keys/reload".to_string(),
            AdminRequest::Rewrap => "/v1/keys/rewrap".to_string(),
            AdminRequest::ReloadRules => "/v1/rules/reload".to_string(),
            AdminRequest::Ca => "/v1/ca".to_string(),
            AdminRequest::Feedback { body } => {
                format!("/v1/feedback?body={}", percent_encode(body))
            }
        }
    }

    /// The request a method and URI name (the server's router).
    ///
    /// Errors: [`RequestError`] with 404 for an unknown method or path, 400 for a malformed
    /// request ID, user ID encoding, or a missing or malformed `older_than`.
    pub fn parse(method: &Method, uri: &Uri) -> Result<AdminRequest, RequestError> {
        let segs: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
        let reason = || query_param(uri, "reason");
        let id = |s: &str| {
            s.parse::<ExchangeId>()
                .map_err(|e| RequestError::bad(e.to_string()))
        };
        match (method, segs.as_slice()) {
            (&Method::GET, ["healthz"]) => Ok(AdminRequest::Health),
            (&Method::GET, ["v1", "exchanges", i]) => Ok(AdminRequest::Unseal {
                id: id(i)?,
                reason: reason(),
            }),
            (&Method::DELETE, ["v1", "exchanges", i]) => Ok(AdminRequest::Forget {
                id: id(i)?,
                reason: reason(),
            }),
            (&Method::DELETE, ["v1", "users", user, "exchanges"]) => {
                let user = percent_decode(user)
                    .filter(|u| !u.is_empty())
                    .ok_or_else(|| RequestError::bad("bad user id encoding"))?;
                Ok(AdminRequest::ForgetUser {
                    user,
                    reason: reason(),
                })
            }
            (&Method::POST | &Method::GET, ["v1", "purge"]) => {
                let older = query_param(uri, "older_than")
                    .ok_or_else(|| RequestError::bad("older_than is required"))?;
                let older_than =
                    crate::config::parse_duration(&older).map_err(RequestError::bad)?;
                Ok(if method == Method::GET {
                    AdminRequest::PurgePreview { older_than }
                } else {
                    AdminRequest::Purge { older_than }
                })
            }
            (&Method::POST, ["v1", "compact"]) => Ok(AdminRequest::Compact),
            (&Method::POST, ["v1", "keys", "reload"]) => Ok(AdminRequest::ReloadKeys),
            (&Method::POST, ["v1", "keys", "rewrap"]) => Ok(AdminRequest::Rewrap),
            (&Method::POST, ["v1", "rules", "reload"]) => Ok(AdminRequest::ReloadRules),
            (&Method::GET, ["v1", "ca"]) => Ok(AdminRequest::Ca),
            (&Method::POST, ["v1", "feedback"]) => Ok(AdminRequest::Feedback {
                body: query_param(uri, "body")
                    .ok_or_else(|| RequestError::bad("body is required (the feedback JSON)"))?,
            }),
            _ => Err(RequestError {
                status: StatusCode::NOT_FOUND,
                message: "no such admin endpoint".to_string(),
            }),
        }
    }
}

/// The first `name=` value of the query, `+` as space, percent-decoded (`None` when absent
/// or not valid percent-encoded UTF-8).
fn query_param(uri: &Uri, name: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name)
            .then(|| percent_decode(&v.replace('+', " ")))
            .flatten()
    })
}

/// A request the server cannot route: the status to answer (400 or 404) and why. The message
/// names the problem, never a raw user ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    status: StatusCode,
    message: String,
}

impl RequestError {
    fn bad(message: impl Into<String>) -> Self {
        RequestError {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }

    /// The status to answer: 400 (malformed) or 404 (no such endpoint).
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RequestError {}
