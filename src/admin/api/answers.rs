//! # Admin API answers: the documents of every request but unseal, and the error documents.

use serde::{Deserialize, Serialize};

use crate::exchange::ExchangeId;
use crate::keys::{KeyId, UserPseudonym};

/// `POST /v1/feedback` (202): the feedback's id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackResponse {
    /// `fb_` + 16 hex.
    pub id: String,
}

// === Errors ===

/// `{"error": …}`: a refused or failed request that destroyed nothing. Statuses: 400
/// malformed, 401 token, 404 unknown exchange or endpoint, 409 key missing or wrong, 503 the
/// store is degraded, the audit log cannot be written or the queue is full (nothing was done;
/// retry later), 500 anything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorResponse {
    /// What went wrong, for operators: names files, IDs and OS errors, never content or a
    /// raw user ID.
    pub error: String,
}

/// What a destructive request that failed did anyway (veil#10: "failed" alone left the
/// operator guessing). Every ID asked for is in exactly one list, except that a failed purge
/// or forget-by-user only lists the exchanges it had found. Statuses as [`ErrorResponse`].
///
/// The endpoint-specific fields say which request it answers: `request_id` and `forgotten`
/// for `DELETE /v1/exchanges/{id}`, `user` for `DELETE /v1/users/{user}/exchanges`, `purged`
/// for `POST /v1/purge`; absent for the others.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestroyFailure {
    /// What went wrong, for operators (no content).
    pub error: String,
    /// Destroyed: data key shredded, receipt written. Gone for good.
    pub destroyed: Vec<ExchangeId>,
    /// Receipted but not yet shredded: no longer readable, and shredding completes when the
    /// store recovers (at the latest on the next start).
    pub pending: Vec<ExchangeId>,
    /// Untouched: still sealed, no receipt. Retry them.
    pub not_destroyed: Vec<ExchangeId>,
    /// `DELETE /v1/exchanges/{id}`: the ID asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<ExchangeId>,
    /// `DELETE /v1/exchanges/{id}`: always `false` here (see the lists).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forgotten: Option<bool>,
    /// `DELETE /v1/users/{user}/exchanges`: the user's pseudonym (never the raw ID).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<UserPseudonym>,
    /// `POST /v1/purge`: how many were destroyed (the length of `destroyed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purged: Option<u64>,
}

impl DestroyFailure {
    /// The lists of a store error, without endpoint-specific fields.
    pub fn from_forget_error(e: &crate::seal::ForgetError) -> Self {
        DestroyFailure {
            error: e.to_string(),
            destroyed: e.destroyed().to_vec(),
            pending: e.pending().to_vec(),
            not_destroyed: e.not_destroyed().to_vec(),
            request_id: None,
            forgotten: None,
            user: None,
            purged: None,
        }
    }
}

// === Forget, purge ===

/// `DELETE /v1/exchanges/{id}`: `200` when it was forgotten now or before (then
/// `already_forgotten`: a receipt names it), `404` when the store never had an exchange with
/// this ID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgetResponse {
    /// The ID asked for.
    pub request_id: ExchangeId,
    /// `true` (200): its data key is shredded and a receipt written. `false`: see
    /// `already_forgotten`.
    pub forgotten: bool,
    /// `true` (200, `forgotten` false): it was forgotten before (forgetting is idempotent).
    /// Absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub already_forgotten: bool,
    /// Why it was not forgotten (404 only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What the forget removed from the exporter's copies on this host (spool, records
    /// files) and which request ids had already left for the collector. Absent when the
    /// veil has no exporter to ask (a bare store) or on 404.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exports: Option<crate::export::erase::Erased>,
}

/// `DELETE /v1/users/{user}/exchanges`, `200`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForgetUserResponse {
    /// The user's pseudonym (`u_` + 16 hex digits), computed by the server from the raw ID.
    pub user: UserPseudonym,
    /// Every exchange of that user destroyed; empty when the store had none.
    pub forgotten: Vec<ExchangeId>,
    /// `true` when `forgotten` is empty because the user was forgotten before (a receipt or
    /// a recent ledger tombstone names the pseudonym). Absent when false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub already_forgotten: bool,
    /// As [`ForgetResponse::exports`], for the user's exchanges and pseudonym.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exports: Option<crate::export::erase::Erased>,
}

/// `GET /v1/purge?older_than=D`, `200`: what a purge would destroy now; nothing is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgePreviewResponse {
    /// How many exchanges a purge would destroy (the length of `ids`).
    pub would_purge: u64,
    /// Those exchanges, oldest first.
    pub ids: Vec<ExchangeId>,
}

/// `POST /v1/purge`, `200`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeResponse {
    /// How many exchanges were destroyed (the length of `ids`).
    pub purged: u64,
    /// Every exchange destroyed, oldest first.
    pub ids: Vec<ExchangeId>,
}

// === Maintenance ===

/// `POST /v1/compact`, `200`: what one compaction pass did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactResponse {
    /// Segment files deleted.
    pub segments_removed: u64,
    /// Live frames moved to the active segment.
    pub frames_moved: u64,
    /// Bytes given back to the file system.
    pub bytes_reclaimed: u64,
}

impl From<crate::seal::CompactStats> for CompactResponse {
    fn from(s: crate::seal::CompactStats) -> Self {
        CompactResponse {
            segments_removed: s.segments_removed as u64,
            frames_moved: s.frames_moved as u64,
            bytes_reclaimed: s.bytes_reclaimed,
        }
    }
}

/// `POST /v1/keys/reload`, `200`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysReloadResponse {
    /// The master key new seals use now (`k<number>`).
    pub current: KeyId,
}

/// `POST /v1/keys/rewrap`, `200`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewrapResponse {
    /// The master key every data key is wrapped under now (`k<number>`).
    pub current: KeyId,
    /// Data keys re-wrapped (those already under `current` are not counted).
    pub rewrapped: u64,
}

/// `POST /v1/rules/reload`, `200`: the rules file was read again and compiled; new exchanges
/// use it. A file that does not compile answers `422` with an [`ErrorResponse`] naming
/// file:line:col, and the previous rules stay in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RulesReloadResponse {
    /// The digest of the rules now in force (hex BLAKE3 of the file as compiled).
    pub digest: String,
}

/// `GET /v1/ca`, `200`: what an app needs to go through this running veil (`veil env`,
/// `veil ca path`). Paths are absolute, on the host veil runs on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaResponse {
    /// veil's CA certificate (PEM file), the one apps must trust (`<keys>/ca.pem`).
    pub cert: String,
    /// The trust bundle: the system roots followed by veil's CA (`<keys>/ca-bundle.pem`), for
    /// `SSL_CERT_FILE`-style variables that replace a client's trust store.
    pub bundle: String,
    /// The CA certificate itself, PEM.
    pub pem: String,
    /// The proxy's bound address (`HOST:PORT`), what `HTTPS_PROXY` points at.
    pub proxy: String,
}

// === Health ===

/// `GET /healthz`, `503`: recording is degraded. (A healthy veil answers `200` with the
/// plain text `ok`, no JSON.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DegradedHealth {
    /// Always [`HealthStatus::Degraded`] (`"degraded"`).
    pub status: HealthStatus,
    /// Present while the sealed store is degraded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealing: Option<SealingHealth>,
    /// The other parts recording depends on that are degraded (empty when only sealing is).
    pub recording: Vec<RecordingHealth>,
}

/// The `status` of a [`DegradedHealth`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// `degraded`: something recording depends on fails; an operator is needed.
    Degraded,
}

/// Why the sealed store is degraded, and its failure counters since start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SealingHealth {
    /// When the first failure of this episode happened: RFC 3339 UTC with milliseconds
    /// (`2026-11-29T08:42:03.630Z`).
    pub since: String,
    /// The most recent failure: names files and OS errors, never content.
    pub last_error: String,
    /// Group commits that failed.
    pub failed_commits: u64,
    /// Times the store recovered from a degraded episode.
    pub recoveries: u64,
    /// Seals submitted without waiting for their acknowledgement that failed.
    pub detached_failures: u64,
}

/// One degraded part other than the sealed store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingHealth {
    /// Which part: `records` (records files or the export spool), `disk` (free space below
    /// `disk_reserve`) or `ledger` (the SQLite ledger).
    pub part: String,
    /// Degraded since: RFC 3339 UTC with milliseconds.
    pub since: String,
    /// Why, for operators: paths and OS errors only.
    pub reason: String,
}
