//! # `veil tail` over the ledger: the latest exchanges, then new ones as they commit.
//!
//! Rows are read by their `id` (insertion order), so following is "rows after the last id
//! seen", one indexed range read per poll; the reader never blocks the writer (WAL).

use rusqlite::{Connection, params};

use super::LedgerError;

/// One exchange as `veil tail` shows it. Times are UTC.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TailRow {
    /// Row id (insertion order).
    #[serde(skip)]
    pub id: i64,
    /// Start, ISO 8601 UTC.
    pub start: String,
    /// Request id.
    pub request_id: String,
    /// Provider.
    pub provider: String,
    /// Operation.
    pub operation: String,
    /// Response model, else request model.
    pub model: Option<String>,
    /// Feature tag.
    pub feature: Option<String>,
    /// User pseudonym.
    pub user: Option<String>,
    /// HTTP status from upstream.
    pub status: Option<u16>,
    /// Outcome.
    pub outcome: String,
    /// `error.type`.
    pub error_type: Option<String>,
    /// Input tokens.
    pub input_tokens: Option<i64>,
    /// Output tokens.
    pub output_tokens: Option<i64>,
    /// Cost, nano-USD.
    pub cost_nusd: Option<i64>,
    /// Duration, µs.
    pub duration_us: i64,
    /// Time to first chunk, µs.
    pub ttfc_us: Option<i64>,
}

const COLUMNS: &str = "id, start, request_id, provider, operation,
    COALESCE(response_model, request_model), feature, user, status, outcome, error_type,
    input_tokens, output_tokens, cost_nusd, duration_us, ttfc_us";

fn map(r: &rusqlite::Row<'_>) -> rusqlite::Result<TailRow> {
    Ok(TailRow {
        id: r.get(0)?,
        start: r.get(1)?,
        request_id: r.get(2)?,
        provider: r.get(3)?,
        operation: r.get(4)?,
        model: r.get(5)?,
        feature: r.get(6)?,
        user: r.get(7)?,
        status: r.get(8)?,
        outcome: r.get(9)?,
        error_type: r.get(10)?,
        input_tokens: r.get(11)?,
        output_tokens: r.get(12)?,
        cost_nusd: r.get(13)?,
        duration_us: r.get(14)?,
        ttfc_us: r.get(15)?,
    })
}

/// The latest `n` exchanges, oldest first.
///
/// # Errors
/// [`LedgerError::Query`] when the database cannot be read.
pub fn latest(conn: &Connection, n: usize) -> Result<Vec<TailRow>, LedgerError> {
    let sql = format!("SELECT {COLUMNS} FROM exchanges ORDER BY id DESC LIMIT ?1");
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt
        .query_map([i64::try_from(n).unwrap_or(i64::MAX)], map)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    rows.reverse();
    Ok(rows)
}

/// Exchanges committed after row `id`, oldest first, at most `limit`.
///
/// # Errors
/// [`LedgerError::Query`] when the database cannot be read.
pub fn after(conn: &Connection, id: i64, limit: usize) -> Result<Vec<TailRow>, LedgerError> {
    let sql = format!("SELECT {COLUMNS} FROM exchanges WHERE id > ?1 ORDER BY id LIMIT ?2");
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt
        .query_map(params![id, i64::try_from(limit).unwrap_or(i64::MAX)], map)?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}
