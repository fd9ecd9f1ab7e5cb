//! # Admin API documents: what crosses the wire between the server and its clients.
//!
//! The reference of the admin API: every request ([`AdminRequest`]) and every JSON document an
//! answer carries, as types that the server ([`super::server`]) encodes and the client
//! ([`super::client`], hence `veil unseal|forget|purge|compact|keys`) decodes. One definition
//! for both sides, so a field renamed on one cannot silently become `null` on the other.
//! Pure: no I/O, no store, no HTTP connection.
//!
//! - `request`: [`AdminRequest`] (method, path, query) and the router's [`RequestError`].
//! - `answers`: the answer documents of every request but unseal.
//! - `exchange`: [`ExchangeView`], the unsealed exchange.
//!
//! | request | 2xx answer | failure answer |
//! | --- | --- | --- |
//! | `GET /healthz` (no token) | `200 ok` (plain text) | `503` [`DegradedHealth`] |
//! | `GET /v1/exchanges/{id}[?reason=R]` | [`ExchangeView`] | [`ErrorResponse`] (404 unknown, 503 audit log or store degraded) |
//! | `DELETE /v1/exchanges/{id}[?reason=R]` | [`ForgetResponse`] (`200` also when already forgotten; the `404` body for an ID never sealed) | [`DestroyFailure`] |
//! | `DELETE /v1/users/{user}/exchanges[?reason=R]` | [`ForgetUserResponse`] | [`DestroyFailure`] |
//! | `POST /v1/purge?older_than=D` | [`PurgeResponse`] | [`DestroyFailure`] |
//! | `GET /v1/purge?older_than=D` (dry run) | [`PurgePreviewResponse`] | [`ErrorResponse`] |
//! | `POST /v1/compact` | [`CompactResponse`] | [`ErrorResponse`] |
//! | `POST /v1/keys/reload` | [`KeysReloadResponse`] | [`ErrorResponse`] |
//! | `POST /v1/keys/rewrap` | [`RewrapResponse`] | [`ErrorResponse`] |
//! | `POST /v1/rules/reload` | [`RulesReloadResponse`] | [`ErrorResponse`] (422: the file does not compile, the old rules stay) |
//! | `GET /v1/ca` | [`CaResponse`] | [`ErrorResponse`] |
//!
//! Any request can also be refused with an [`ErrorResponse`]: 400 (a malformed ID, user or
//! duration), 401 (missing or wrong token, TCP only), 403 (the control socket: a caller of
//! another uid), 404 (no such endpoint, or one this listener does not serve).
//!
//! ## Compatibility
//!
//! Field names and shapes are the contract; key order is not (the server writes fields in the
//! order the types declare them). Every response type refuses fields it does not know
//! (`deny_unknown_fields`), and a missing required field is an error too, so a client talking
//! to a veil of another version fails with an error naming the field instead of printing an
//! exchange without it or reporting a forget without one of its ID lists. Rejected:
//! ignoring unknown fields, which is the usual choice for forward compatibility but would let
//! `veil unseal` drop a field silently and a failed forget under-report what it destroyed.
//!
//! Values the client acts on are typed ([`ExchangeId`](crate::exchange::ExchangeId),
//! [`KeyId`](crate::keys::KeyId), [`UserPseudonym`](crate::keys::UserPseudonym),
//! counts); values it only shows an operator (times, reasons, names) are text, with their
//! format given on the field.

mod answers;
mod exchange;
mod request;
#[cfg(test)]
mod tests;

pub use answers::{
    CaResponse, CompactResponse, DegradedHealth, DestroyFailure, ErrorResponse, FeedbackResponse,
    ForgetResponse, ForgetUserResponse, HealthStatus, KeysReloadResponse, PurgePreviewResponse,
    PurgeResponse, RecordingHealth, RewrapResponse, RulesReloadResponse, SealingHealth,
};
pub use exchange::{BodyView, ExchangeView, OutcomeView, RouteView, TimingsView, UpstreamView};
pub use request::{AdminRequest, RequestError};

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
