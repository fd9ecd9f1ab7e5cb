//! # Admin API: operators act on the sealed store over HTTP, on the control socket or behind a bearer token.
//!
//! The remote half of the operator boundary: `veil run` serves it ([`server`]) on its control
//! socket `<data>/veil.sock` (always; no token, veil's own uid only: [`control`]) and, when
//! `admin_listen` is set, on TCP (bearer token). The CLI calls it through [`client`] when a
//! running veil holds the store, and both speak the documents of [`api`]. This file owns the
//! admin token. The server calls [`SealStore`](crate::seal::SealStore) and the hooks `veil run`
//! hands it ([`Instance`]: rules reload, the CA's paths) and nothing else: it never touches the
//! proxy, the rules or OTLP itself, and it never logs content or raw user IDs.
//!
//! | method and path | what |
//! | --- | --- |
//! | `GET /healthz` | `200 ok` when recording works; `503` and a JSON body while it is degraded: `status`, `sealing` (`since`, `last_error`, failure counters) when the sealed store is, and `recording` (`part`: `records`, `disk` or `ledger`, `since`, `reason`) for the rest (no token needed) |
//! | `GET /v1/exchanges/{id}[?reason=R]` | unseal (audited); the exchange as JSON |
//! | `DELETE /v1/exchanges/{id}[?reason=R]` | forget one; 404 when unknown; `exports`: what the running veil's exporter erased from its spool and records files, and the ids already delivered (`not_reached`) |
//! | `DELETE /v1/users/{user}/exchanges[?reason=R]` | forget a user's; `{user}` is the *raw* user ID (percent-encoded), pseudonymized here with the store's keyring |
//! | `POST /v1/purge?older_than=30d` | retention purge now; `purged` (a count) and `ids` |
//! | `POST /v1/compact` | compaction pass |
//! | `POST /v1/keys/reload` | re-read the keys dir (after `veil keys rotate`) |
//! | `POST /v1/keys/rewrap` | reload, then rewrap every data key under the newest key |
//! | `POST /v1/rules/reload` | read and compile the rules file again (`veil reload`, like SIGHUP); 422 when it does not compile (the old rules stay) |
//! | `GET /v1/ca` | the CA certificate's path and PEM, the trust bundle's path, the proxy address (`veil env`, `veil ca path`) |
//!
//! Every field of every answer, with its units, is documented on the types of [`api`] (the
//! admin API's reference; its module docs map each request to its answers).
//!
//! A destructive request that fails answers with what it did anyway: `error`, plus
//! `destroyed`, `pending` (receipted, unreadable, shredding completed on recovery) and
//! `not_destroyed` (untouched) ID lists; 503 when the store is degraded or the audit log cannot
//! be written (retry later), 500 for other failures.
//!
//! On the control socket no token is asked: the socket is 0600 in the 0700 data dir, and a
//! peer whose uid (`SO_PEERCRED`) is not veil's gets 403 on every request, logged; the audit
//! actor is `control:uid=U,pid=P`.
//!
//! On TCP every `/v1` request needs `Authorization: Bearer <token>`; the token comes from
//! `VEIL_ADMIN_TOKEN` or `<keys>/admin.token` (created 0600 with 256 random bits if missing)
//! and is compared in constant time. An `x-veil-actor` request header (the CLI sends
//! `cli:<user>`) is appended to the audit actor, which is always `admin:<peer address>`.
//!
//! Connections are bounded in number ([`ADMIN_MAX_CONNECTIONS`]) and in time, by the same
//! clock as the proxy's ([`crate::proxy::conn`]): a request head is due `header_read_timeout`
//! after the connection opens (or after its first byte, later on a kept-alive connection), a
//! connection with no request in flight closes after `idle_timeout`, and a long request (a
//! compaction, a rewrap) is never cut.

//!
//! - [`server`]: the HTTP server, routing, status codes, connection limits.
//! - [`control`]: the control socket: its path and length limit, stale sockets, peer uids.
//! - [`client`]: [`AdminClient`], one request per call.
//! - [`api`]: what crosses the wire both ways: [`AdminRequest`] and one type per answer
//!   document ([`ExchangeView`], [`ForgetResponse`], [`DestroyFailure`], …), plus the percent
//!   coding of path segments and queries.

use std::fmt;
use std::path::Path;

use zeroize::Zeroizing;

use crate::keys::{KeyError, Unsaved, create_file};

pub mod api;
pub mod client;
pub mod control;
pub mod server;
#[cfg(test)]
mod tests;

#[cfg(test)]
use api::percent_encode;
pub use api::{
    AdminRequest, BodyView, CaResponse, CompactResponse, DegradedHealth, DestroyFailure,
    ErrorResponse, ExchangeView, FeedbackResponse, ForgetResponse, ForgetUserResponse,
    HealthStatus, KeysReloadResponse, OutcomeView, PurgePreviewResponse, PurgeResponse,
    RecordingHealth, RequestError, RewrapResponse, RouteView, RulesReloadResponse, SealingHealth,
    TimingsView, UpstreamView,
};
pub use client::{AdminClient, AdminError, AdminErrorKind, Endpoint, HealthResponse};
pub use control::{ControlError, ControlErrorKind, ControlSocket, SOCKET_FILE, socket_path};
pub use server::{
    ADMIN_MAX_CONNECTIONS, EraseExports, Exposition, Instance, OnForget, ReloadRules,
    SubmitFeedback, serve, serve_control, serve_metrics, serve_tcp, serve_with,
};

/// File name of the admin token inside the keys dir.
pub const TOKEN_FILE: &str = "admin.token";
/// Environment variable that may carry the admin token instead of the file.
pub const TOKEN_ENV: &str = "VEIL_ADMIN_TOKEN";

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
                match create_file(&path, hex.as_bytes(), Unsaved::SECRET) {
                    Ok(()) => {
                        tracing::info!(path = %path.display(), "created admin token");
                        Ok(Self::from_secret(hex.as_str()))
                    }
                    // Another process created one meanwhile: never replaced, used.
                    Err(KeyError::Appeared(_)) => Self::load(keys_dir),
                    Err(e) => Err(e),
                }
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
