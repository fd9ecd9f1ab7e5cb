//! # Feedback in the ledger: rows of the `feedback` table, and what the API reads back.
//!
//! The feedback API (`src/feedback/`) builds one [`FeedbackRow`] per accepted feedback, with
//! the comment already scrubbed by the rules, and hands it to the writer thread through
//! [`LedgerHandle::try_send_feedback`](super::LedgerHandle::try_send_feedback): the same one
//! writer connection as the exchanges, never a second one. The writer inserts it unless the
//! rated exchange (or its user) was forgotten in the last day (a tombstone in `forgotten`):
//! feedback about a forgotten exchange is personal data about it and is dropped, counted in
//! the log. [`exchange`] reads the rated exchange's row back, for a feedback that arrives
//! after veil no longer holds the exchange in memory (a restart).
//!
//! The table (schema v4) is documented in `docs/ledger.md`; rows go with their exchange on
//! `forget` ([`erase`](super::erase)) and by age with row retention (the writer's bounds).

use rusqlite::{Connection, OptionalExtension, params};

/// One `feedback` row, as the writer inserts it. Every text is safe to store: `comment` is
/// the scrubbed comment (never the raw one), `user` a pseudonym.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedbackRow {
    /// `fb_` + 16 hex.
    pub id: String,
    /// The rated exchange's request id.
    pub request_id: String,
    /// `exchange` or `task`.
    pub scope: &'static str,
    /// For `scope = task`: `trace:<32 hex>` or `conversation:<id>` (the cost cards' task).
    pub task: Option<String>,
    /// When veil received it, ISO 8601 UTC with microseconds (`row::iso_utc`).
    pub at: String,
    /// `gen_ai.evaluation.name`.
    pub name: String,
    /// `gen_ai.evaluation.score.value`, finite.
    pub score: Option<f64>,
    /// `gen_ai.evaluation.score.label`.
    pub label: Option<String>,
    /// The comment after the rules scrubbed it; `None` when there was none or the rules
    /// dropped it.
    pub comment: Option<String>,
    /// The rated exchange's user pseudonym (`u_…`), so `forget --user` finds the row.
    pub user: Option<String>,
}

const INSERT: &str = "INSERT OR IGNORE INTO feedback
    (id, request_id, scope, task, at, name, score, label, comment, user)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

/// Inserts `rows` in the writer's transaction, skipping the rows of a forgotten exchange or
/// user (`forgotten_request`, `forgotten_user` tell, from the transaction's tombstones).
/// Returns how many were inserted.
pub(super) fn insert(
    tx: &Connection,
    rows: &[FeedbackRow],
    forgotten_request: impl Fn(&str) -> bool,
    forgotten_user: impl Fn(&str) -> bool,
) -> rusqlite::Result<u64> {
    let mut ins = tx.prepare_cached(INSERT)?;
    let mut n = 0;
    for r in rows {
        if forgotten_request(&r.request_id) || r.user.as_deref().is_some_and(&forgotten_user) {
            tracing::info!(
                feedback.id = %r.id,
                "feedback about a forgotten exchange or user: not stored"
            );
            continue;
        }
        n += ins.execute(params![
            r.id,
            r.request_id,
            r.scope,
            r.task,
            r.at,
            r.name,
            r.score,
            r.label,
            r.comment,
            r.user
        ])? as u64;
    }
    Ok(n)
}

/// The rated exchange as its ledger row has it: what feedback needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RatedRow {
    /// `exchanges.feature`.
    pub feature: Option<String>,
    /// `exchanges.user` (NULL once forgotten).
    pub user: Option<String>,
    /// `exchanges.conversation`.
    pub conversation: Option<String>,
    /// `exchanges.trace_id`: the app's trace (32 hex), when it sent a `traceparent`.
    pub trace_id: Option<String>,
    /// `exchanges.request_model`, for the rules' scope.
    pub request_model: Option<String>,
    /// `exchanges.host`, for the rules' scope (NULL in rows written before schema version 6).
    pub host: Option<String>,
    /// `exchanges.route`, for the rules' scope (likewise).
    pub route: Option<String>,
    /// `exchanges.response_id` (likewise).
    pub response_id: Option<String>,
    /// `exchanges.forgotten`.
    pub forgotten: bool,
}

/// The row of the exchange with `request_id`, if the ledger has one.
///
/// # Errors
/// A failed query.
pub fn exchange(conn: &Connection, request_id: &str) -> rusqlite::Result<Option<RatedRow>> {
    conn.query_row(
        "SELECT feature, user, conversation, trace_id, request_model, host, route, response_id,
                forgotten
         FROM exchanges WHERE request_id = ?1",
        [request_id],
        |r| {
            Ok(RatedRow {
                feature: r.get(0)?,
                user: r.get(1)?,
                conversation: r.get(2)?,
                trace_id: r.get(3)?,
                request_model: r.get(4)?,
                host: r.get(5)?,
                route: r.get(6)?,
                response_id: r.get(7)?,
                forgotten: r.get(8)?,
            })
        },
    )
    .optional()
}

/// Whether the ledger holds a tombstone (the last day's erases) for `request_id` or `user`.
///
/// # Errors
/// A failed query.
pub fn tombstoned(
    conn: &Connection,
    request_id: &str,
    user: Option<&str>,
) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM forgotten WHERE (kind = 'request' AND key = ?1)
                                                    OR (kind = 'user' AND key = ?2))",
        params![request_id, user],
        |r| r.get(0),
    )
}
