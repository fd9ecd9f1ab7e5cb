//! # Feedback: scores and labels an app attaches to an answer by its request id (veil#14).
//!
//! `POST /veil/v1/feedback` on the proxy port reaches [`FeedbackService`] through the proxy's
//! reserved-path hook ([`VeilApi`]); `veil feedback` reaches the same service through the
//! control socket. One feedback is checked ([`request::parse`]), matched to the exchange it
//! rates (the [`Recent`] map the pipeline fills and the ledger writer empties as it commits,
//! else the ledger row), its comment scrubbed by
//! the rules with the rated exchange's scope (as content: the same field rules, default and
//! detectors as `gen_ai.input.messages`), then written as a `feedback` row through the ledger
//! writer's queue and exported as a `gen_ai.evaluation.result` OTLP log record on the rated
//! exchange's span. The raw comment is never stored, logged or exported; `name` and `label`
//! are identifiers (a restricted character set) and are refused when a detector matches them.
//!
//! ```text
//! app ─POST /veil/v1/feedback─▶ proxy (reserved.rs: token, 16 KiB) ─▶ FeedbackService::handle
//!        (blocking thread)  parse ─▶ Rated (Recent | ledger) ─▶ scrub ─▶ ledger queue ─▶ feedback row
//!                                                                     └▶ export queue ─▶ OTLP log
//! ```
//!
//! Answers: `202 {"id": "fb_<16 hex>"}`; `400` a malformed body (the field and why), `401` a
//! missing or wrong token (only when `listen` is not loopback), `404` an unknown or forgotten
//! request id, `413` a body over 16 KiB, `503` the ledger's queue is full. Every error is
//! `{"error": {"type", "message"}}` with a message that says what to do (`docs/feedback.md`).
//! Each answer of [`FeedbackService::handle`] and each refused token is counted in the
//! registry's `feedback` section (`veil.feedback.accepted`, `veil.feedback.refused` by reason,
//! `veil.feedback.export.dropped`). `veil forget` (the admin API's `on_forget` hook, wired by
//! `veil run`) removes forgotten exchanges from [`Recent`].

pub mod recent;
pub mod request;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http::StatusCode;

use crate::admin::AdminToken;
use crate::config::Secret;
use crate::counters::Counters;
use crate::export::{ExporterHandle, FeedbackEvent};
use crate::ledger::LedgerHandle;
use crate::ledger::feedback::{FeedbackRow, RatedRow};
use crate::proxy::reserved::{ApiAnswer, VeilApi};
use crate::redact::{RulesHandle, ScopeKey, Target};

pub use recent::{Rated, Recent, Waited};
pub use request::{FeedbackRequest, Invalid, Scope};

/// How long a feedback waits for an exchange veil issued moments ago and is still recording.
pub const FRESH_WAIT: Duration = Duration::from_secs(2);

/// A request id younger than this (its UUIDv7 time) may still be on its way to the
/// [`Recent`] map, and is waited for; an older unknown one is 404 at once.
const FRESH_AGE: Duration = Duration::from_secs(60);

/// Feedback requests waiting at once; past this an unknown id is 404 without waiting, so
/// made-up fresh ids cannot hold the blocking pool.
const MAX_WAITERS: usize = 32;

/// Why a feedback was refused; each maps to one HTTP status and error type.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedbackError {
    /// 400 `invalid_request`: the body, with the field at fault.
    Invalid(Invalid),
    /// 404 `not_found`: veil knows no exchange with this request id (or it was forgotten).
    UnknownRequest(String),
    /// 401 `unauthorized`.
    Unauthorized(String),
    /// 503 `unavailable`: the ledger's queue is full or the ledger is closed.
    Unavailable(String),
}

impl FeedbackError {
    /// The answer to the app.
    pub fn answer(&self) -> ApiAnswer {
        match self {
            FeedbackError::Invalid(i) => {
                let mut a =
                    ApiAnswer::error(StatusCode::BAD_REQUEST, "invalid_request", &i.message);
                if let Some(f) = i.field {
                    a.body["error"]["field"] = serde_json::Value::from(f);
                }
                a
            }
            FeedbackError::UnknownRequest(id) => ApiAnswer::error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!(
                    "no recorded exchange has request id {id}; send the x-veil-request-id header of an answer this veil recorded (forgotten exchanges and those past retention cannot be rated)"
                ),
            ),
            FeedbackError::Unauthorized(m) => {
                ApiAnswer::error(StatusCode::UNAUTHORIZED, "unauthorized", m)
            }
            FeedbackError::Unavailable(m) => {
                ApiAnswer::error(StatusCode::SERVICE_UNAVAILABLE, "unavailable", m)
            }
        }
    }
}

impl std::fmt::Display for FeedbackError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let a = self.answer();
        f.write_str(
            a.body["error"]["message"]
                .as_str()
                .unwrap_or("feedback refused"),
        )
    }
}

impl std::error::Error for FeedbackError {}

/// Who may post feedback on the proxy port.
#[derive(Debug, Clone)]
pub enum Access {
    /// `listen` is loopback: anyone who can reach it is on this host; no token.
    Loopback,
    /// `listen` is not loopback: `Authorization: Bearer` with one of these tokens.
    Token {
        /// `feedback_token`.
        feedback: Option<Secret>,
        /// The admin token (`VEIL_ADMIN_TOKEN` or `<keys>/admin.token`), when there is one.
        admin: Option<AdminToken>,
    },
}

/// The feedback service: checks, matches, scrubs, and hands on to the ledger and OTLP.
#[derive(Debug)]
pub struct FeedbackService {
    /// The rules in force (reloads apply to the next feedback).
    pub rules: Arc<RulesHandle>,
    /// Exchanges recorded lately (the pipeline inserts).
    pub recent: Arc<Recent>,
    /// The ledger writer's queue and the file, when the ledger is on.
    pub ledger: Option<(LedgerHandle, PathBuf)>,
    /// The exporter's queue.
    pub exporter: Option<ExporterHandle>,
    /// Who may post on the proxy port.
    pub access: Access,
    /// Where accepted and refused feedback is counted (the registry's `feedback` section;
    /// `veil run` hands its one registry through [`FeedbackService::with_counters`]).
    pub counters: Arc<Counters>,
    waiters: AtomicUsize,
}

impl FeedbackService {
    /// A service over these parts.
    pub fn new(
        rules: Arc<RulesHandle>,
        recent: Arc<Recent>,
        ledger: Option<(LedgerHandle, PathBuf)>,
        exporter: Option<ExporterHandle>,
        access: Access,
    ) -> Self {
        FeedbackService {
            rules,
            recent,
            ledger,
            exporter,
            access,
            counters: Arc::default(),
            waiters: AtomicUsize::new(0),
        }
    }

    /// The same service, counting in `counters` (the registry `veil run` exports).
    pub fn with_counters(mut self, counters: Arc<Counters>) -> Self {
        self.counters = counters;
        self
    }

    /// Counts one answer of the service: accepted, or refused by why.
    fn count(&self, result: &Result<String, FeedbackError>) {
        let c = &self.counters.feedback;
        match result {
            Ok(_) => c.accepted.inc(),
            Err(FeedbackError::Invalid(_)) => c.refused_invalid.inc(),
            Err(FeedbackError::UnknownRequest(_)) => c.refused_not_found.inc(),
            Err(FeedbackError::Unauthorized(_)) => c.refused_unauthorized.inc(),
            Err(FeedbackError::Unavailable(_)) => c.refused_unavailable.inc(),
        };
    }

    /// Handles one body: the answer veil sends (202 with the id, or the error). Counted in
    /// the registry's `feedback` section.
    pub fn handle(&self, body: &[u8]) -> ApiAnswer {
        let result = request::parse(body)
            .map_err(FeedbackError::Invalid)
            .and_then(|r| self.submit(&r));
        self.count(&result);
        match result {
            Ok(id) => ApiAnswer {
                status: StatusCode::ACCEPTED,
                body: serde_json::json!({ "id": id }),
            },
            Err(e) => e.answer(),
        }
    }

    /// Accepts one checked feedback; returns its id (`fb_<16 hex>`).
    ///
    /// # Errors
    /// [`FeedbackError::UnknownRequest`] (no such exchange, or forgotten),
    /// [`FeedbackError::Invalid`] (`scope = task` for an exchange of no task, or a `name` or
    /// `label` a detector matches), [`FeedbackError::Unavailable`] (the ledger's queue is full).
    pub fn submit(&self, req: &FeedbackRequest) -> Result<String, FeedbackError> {
        let request_id = req.request_id.to_string();
        let rated = self.rated(req, &request_id)?;
        let task = match req.scope {
            Scope::Exchange => None,
            Scope::Task => Some(rated.task.clone().ok_or_else(|| {
                FeedbackError::Invalid(Invalid {
                    field: Some("scope"),
                    message: "scope: \"task\" needs an exchange that belongs to a trace (a traceparent header) or a conversation, and this one has neither; rate it with scope \"exchange\"".to_string(),
                })
            })?),
        };
        let rules = self.rules.current();
        let key = ScopeKey {
            host: rated.host.as_deref(),
            route: rated.route.as_deref(),
            model: rated.model.as_deref(),
            feature: rated.feature.as_deref(),
        };
        let scope = rules.scope_for(&key);
        for (field, value) in [("name", Some(&req.name)), ("label", req.label.as_ref())] {
            let Some(value) = value else { continue };
            let (_, found) = rules.redact_text(value, scope);
            if found.total() > 0 {
                let detectors: Vec<&str> = found.iter().map(|(d, _)| d).collect();
                return Err(FeedbackError::Invalid(Invalid {
                    field: Some(field),
                    message: format!(
                        "{field}: the rules' detectors found personal data in it ({}); use an identifier such as \"thumbs_down\" and put free text in comment, which veil scrubs",
                        detectors.join(", ")
                    ),
                }));
            }
        }
        let comment = req
            .comment
            .as_deref()
            .and_then(|c| scrub_comment(&rules, scope, c));
        let id = feedback_id();
        let now = SystemTime::now();
        if let Some((ledger, _)) = &self.ledger {
            let row = FeedbackRow {
                id: id.clone(),
                request_id: request_id.clone(),
                scope: req.scope.as_str(),
                task: task.clone(),
                at: crate::ledger::row::iso_utc(now),
                name: req.name.clone(),
                score: req.score,
                label: req.label.clone(),
                comment: comment.clone(),
                user: rated.user.clone(),
            };
            ledger.try_send_feedback(row).map_err(|_| {
                FeedbackError::Unavailable(
                    "veil's ledger is busy or closed and cannot take the feedback now; send it again in a few seconds".to_string(),
                )
            })?;
        }
        if let Some(exporter) = &self.exporter {
            let event = FeedbackEvent {
                id: id.clone(),
                request_id,
                name: req.name.clone(),
                score: req.score,
                label: req.label.clone(),
                explanation: comment,
                response_id: rated.response_id.clone(),
                scope: req.scope.as_str(),
                task,
                trace_id: rated.trace_id,
                span_id: rated.span_id,
                time: now,
            };
            if let Err(e) = exporter.try_send_feedback(event) {
                self.counters.feedback.export_dropped.inc();
                tracing::warn!(feedback.id = %id, error = %e, "feedback not exported over OTLP (it is in the ledger)");
            }
        }
        tracing::debug!(feedback.id = %id, "feedback accepted");
        Ok(id)
    }

    /// The exchange `req` rates: from the [`Recent`] map while its record is on its way to
    /// the ledger, else from its ledger row (which knows whether it was forgotten); an id
    /// issued in the last minute that neither has is waited for, up to [`FRESH_WAIT`].
    fn rated(&self, req: &FeedbackRequest, id: &str) -> Result<Rated, FeedbackError> {
        let unknown = || FeedbackError::UnknownRequest(id.to_string());
        let conn = self.ledger.as_ref().and_then(|(_, path)| {
            match crate::ledger::schema::open_read_only(path) {
                Ok(c) => Some(c),
                Err(crate::ledger::LedgerError::Missing(_)) => None,
                Err(e) => {
                    tracing::warn!(error = %e, "feedback: cannot read the ledger; using recent exchanges only");
                    None
                }
            }
        });
        // The map first: the ledger writer takes an exchange out of it only after its row is
        // committed, so a miss here followed by a read of the ledger cannot miss both.
        let row = |conn: &Option<rusqlite::Connection>| match conn {
            Some(c) => crate::ledger::feedback::exchange(c, id).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "feedback: ledger lookup failed");
                None
            }),
            None => None,
        };
        let seen = self.recent.commits();
        let rated = match self.recent.get(id) {
            Some(recent) => recent,
            None => match row(&conn) {
                Some(row) if row.forgotten => return Err(unknown()),
                Some(row) => from_row(id, row),
                None if self.is_fresh(req) => match self.wait_for(id, seen, || row(&conn)) {
                    Some(Ok(rated)) => rated,
                    Some(Err(())) | None => return Err(unknown()),
                },
                None => return Err(unknown()),
            },
        };
        // Forgotten in the last day while its record was still on its way (or after the map
        // took it in): the ledger's tombstones say so.
        if let Some(c) = &conn
            && crate::ledger::feedback::tombstoned(c, id, rated.user.as_deref()).unwrap_or(false)
        {
            return Err(unknown());
        }
        Ok(rated)
    }

    /// Whether the request id was issued in the last [`FRESH_AGE`] (its UUIDv7 time).
    fn is_fresh(&self, req: &FeedbackRequest) -> bool {
        req.request_id
            .timestamp()
            .and_then(|t| {
                SystemTime::now()
                    .duration_since(t)
                    .ok()
                    .or(Some(Duration::ZERO))
            })
            .is_some_and(|age| age <= FRESH_AGE)
    }

    /// Waits for an exchange that was neither in the map nor in the ledger when the map had
    /// seen `seen` commits, up to [`FRESH_WAIT`]: `Some(Ok)` when it arrives in either (`row`
    /// reads the ledger again after each commit since), `Some(Err)` when its row says it was
    /// forgotten, `None` at the deadline or when [`MAX_WAITERS`] already wait.
    fn wait_for(
        &self,
        id: &str,
        mut seen: u64,
        row: impl Fn() -> Option<RatedRow>,
    ) -> Option<Result<Rated, ()>> {
        if self.waiters.fetch_add(1, Ordering::AcqRel) >= MAX_WAITERS {
            self.waiters.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let look = || {
            row().map(|row| match row.forgotten {
                true => Err(()),
                false => Ok(from_row(id, row)),
            })
        };
        let until = Instant::now() + FRESH_WAIT;
        let got = loop {
            match self.recent.wait_for(id, until, &mut seen) {
                Waited::Found(r) => break Some(Ok(*r)),
                // A last look: the row may have landed after a commit this wait missed.
                Waited::TimedOut => break look(),
                Waited::Committed => {
                    if let Some(got) = look() {
                        break Some(got);
                    }
                }
            }
        };
        self.waiters.fetch_sub(1, Ordering::AcqRel);
        got
    }

    /// The token check for the proxy port (see [`Access`]); a refusal is counted
    /// (`veil.feedback.refused`, `unauthorized`).
    ///
    /// # Errors
    /// [`FeedbackError::Unauthorized`] with what to send.
    pub fn authorize(&self, authorization: Option<&str>) -> Result<(), FeedbackError> {
        let checked = self.check_token(authorization);
        if checked.is_err() {
            self.counters.feedback.refused_unauthorized.inc();
        }
        checked
    }

    fn check_token(&self, authorization: Option<&str>) -> Result<(), FeedbackError> {
        let Access::Token { feedback, admin } = &self.access else {
            return Ok(());
        };
        if feedback.is_none() && admin.is_none() {
            return Err(FeedbackError::Unauthorized(
                "veil listens beyond loopback and has no feedback_token: set feedback_token in veil's config and send it as Authorization: Bearer <token>".to_string(),
            ));
        }
        let presented = authorization.and_then(|h| {
            let (scheme, token) = h.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        let Some(presented) = presented else {
            return Err(FeedbackError::Unauthorized(
                "feedback needs Authorization: Bearer <token> (veil's feedback_token or admin token) because veil listens beyond loopback".to_string(),
            ));
        };
        // Both compared, whichever matches: the time taken does not tell which token exists.
        let by_feedback = feedback.as_ref().is_some_and(|t| t.verify(presented));
        let by_admin = admin.as_ref().is_some_and(|t| t.verify(presented));
        if by_feedback || by_admin {
            Ok(())
        } else {
            Err(FeedbackError::Unauthorized(
                "the bearer token is not veil's feedback_token nor its admin token; check the token the app sends".to_string(),
            ))
        }
    }
}

impl VeilApi for FeedbackService {
    fn authorize(&self, authorization: Option<&str>) -> Result<(), ApiAnswer> {
        FeedbackService::authorize(self, authorization).map_err(|e| e.answer())
    }

    fn feedback(&self, body: &[u8]) -> ApiAnswer {
        self.handle(body)
    }
}

/// What feedback needs of an exchange, from its ledger row: veil's span ids are derived from
/// the request id (and the app's trace) as the exporter derived them.
fn from_row(id: &str, row: RatedRow) -> Rated {
    let parent = row.trace_id.as_deref().and_then(parse_hex16);
    let (trace_id, span_id) = crate::exchange::traceparent::veil_span_in(id, parent);
    let task = match (row.trace_id, row.conversation) {
        (Some(t), _) => Some(format!("trace:{t}")),
        (None, Some(c)) => Some(format!("conversation:{c}")),
        (None, None) => None,
    };
    Rated {
        request_id: id.to_string(),
        host: row.host,
        route: row.route,
        model: row.request_model,
        feature: row.feature,
        user: row.user,
        task,
        response_id: row.response_id,
        trace_id,
        span_id,
    }
}

/// The comment as the rules let it out, scrubbed as a user message of the rated exchange
/// (`gen_ai.input.messages` shape, so field rules, the default action and the detectors
/// apply as they do to content); `None` when the rules drop it.
fn scrub_comment(
    rules: &crate::redact::CompiledRules,
    scope: &crate::redact::Scope,
    comment: &str,
) -> Option<String> {
    let mut v = serde_json::json!([
        {"role": "user", "parts": [{"type": "text", "content": comment}]}
    ]);
    rules.redact_json(&mut v, Target::InputMessages, scope);
    match v.pointer("/0/parts/0/content") {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Some(s.clone()),
        None | Some(serde_json::Value::Null) | Some(serde_json::Value::String(_)) => None,
        // A hash or ciphertext the rules put in its place: kept as they made it.
        Some(other) => Some(other.to_string()),
    }
}

/// `fb_` + 16 random hex digits.
fn feedback_id() -> String {
    let raw: [u8; 8] = rand::random();
    let mut s = String::with_capacity(19);
    s.push_str("fb_");
    for b in raw {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn parse_hex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests;
