//! # `veil sql`: the user's own questions, read-only and bounded in time.
//!
//! The connection is opened read-only and `query_only` ([`super::schema::open_read_only`]):
//! no statement can write, whatever it says (`INSERT`, `DROP`, `ATTACH` + write, `PRAGMA`
//! that changes state). A watchdog interrupts a query that runs past its time limit, and the
//! number of rows returned is capped, so a careless query cannot hang a terminal or fill a
//! disk.

use std::sync::mpsc;
use std::time::Duration;

use rusqlite::Connection;
use rusqlite::types::ValueRef;

use super::LedgerError;

/// A query's answer: column names and rows of JSON values (integers, reals, text; blobs as
/// base64 text; NULL as null).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Table {
    /// Column names, in order.
    pub columns: Vec<String>,
    /// Rows, each as long as `columns`.
    pub rows: Vec<Vec<serde_json::Value>>,
    /// More rows matched than `max_rows`; the rest were not read.
    pub truncated: bool,
}

/// Runs one statement on a read-only connection, interrupted after `timeout`, returning at
/// most `max_rows` rows.
///
/// # Errors
/// [`LedgerError::Query`] with SQLite's message: a syntax error, a write refused
/// ("attempt to write a readonly database"), several statements, or "interrupted" when the
/// time limit passed (the message says so and names the limit).
pub fn query(
    conn: &Connection,
    sql: &str,
    timeout: Duration,
    max_rows: usize,
) -> Result<Table, LedgerError> {
    let interrupt = conn.get_interrupt_handle();
    let (stop, stopped) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(timeout) {
            interrupt.interrupt();
        }
    });
    let result = run(conn, sql, max_rows);
    drop(stop);
    let _ = watchdog.join();
    result.map_err(|e| match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::OperationInterrupted) => LedgerError::Query(format!(
            "the query ran longer than {:.0?} and was stopped (narrow it, or pass --timeout)",
            timeout
        )),
        _ => LedgerError::Query(e.to_string()),
    })
}

fn run(conn: &Connection, sql: &str, max_rows: usize) -> rusqlite::Result<Table> {
    let mut stmt = conn.prepare(sql)?;
    // The connection is read-only and query_only already; this also refuses statements
    // that would create a file before failing (`VACUUM INTO '/path'`).
    if !stmt.readonly() {
        return Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
            Some(
                "attempt to write a readonly database: veil sql runs read-only statements only"
                    .into(),
            ),
        ));
    }
    let columns: Vec<String> = stmt.column_names().map(str::to_string).collect();
    let n = columns.len();
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    let mut truncated = false;
    while let Some(r) = rows.next()? {
        if out.len() == max_rows {
            truncated = true;
            break;
        }
        let mut cells = Vec::with_capacity(n);
        for i in 0..n {
            cells.push(match r.get_ref(i)? {
                ValueRef::Null => serde_json::Value::Null,
                ValueRef::Integer(v) => v.into(),
                ValueRef::Real(v) => v.into(),
                ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
                ValueRef::Blob(b) => {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD.encode(b).into()
                }
            });
        }
        out.push(cells);
    }
    Ok(Table {
        columns,
        rows: out,
        truncated,
    })
}
