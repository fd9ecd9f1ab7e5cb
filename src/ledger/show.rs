//! # One exchange of the ledger, whole: its row and its redacted content (`veil show ID`).
//!
//! Reads what the ledger holds for one request id over a read-only connection: every column
//! of its `exchanges` row, by name, and its `content` row (the messages as the rules let them
//! out). The columns are read by name from the row itself rather than from a list kept here,
//! so a column a later schema adds is shown too. Nothing here unseals: the sealed exchange
//! stays behind `veil unseal`.

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension};
use serde_json::Value;

use super::LedgerError;

/// Columns whose text is JSON written by the ledger (parsed back for `--format json`).
const JSON_COLUMNS: [&str; 1] = ["redactions"];

/// Internal columns left out: the row id is the ledger's own key, not the exchange's.
const HIDDEN_COLUMNS: [&str; 1] = ["id"];

/// One exchange as the ledger holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    /// Every column of its `exchanges` row in schema order, as JSON values (`null` for SQL
    /// `NULL`), the row id left out.
    pub columns: Vec<(String, Value)>,
    /// Its redacted content, `system_instructions`, `input_messages`, `output_messages` in
    /// that order, each the JSON the rules emitted; absent parts are left out (all of them
    /// when the rules let no content out, the content aged out, or the exchange was forgotten).
    pub content: Vec<(String, Value)>,
}

impl Shown {
    /// The value of column `name`, `None` when there is no such column.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.columns.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// The exchange with request id `request_id`, `Ok(None)` when the ledger has no such row.
///
/// # Errors
/// [`LedgerError::Query`] when the database cannot be read.
pub fn exchange(conn: &Connection, request_id: &str) -> Result<Option<Shown>, LedgerError> {
    let mut stmt = conn.prepare("SELECT * FROM exchanges WHERE request_id = ?1")?;
    let names: Vec<String> = stmt.column_names().map(str::to_string).collect();
    let row = stmt
        .query_row([request_id], |r| {
            let mut id = None;
            let mut columns = Vec::with_capacity(names.len());
            for (i, name) in names.iter().enumerate() {
                let v = value(r.get_ref(i)?);
                if name == "id" {
                    id = v.as_i64();
                }
                if HIDDEN_COLUMNS.contains(&name.as_str()) {
                    continue;
                }
                let v = match (&v, JSON_COLUMNS.contains(&name.as_str())) {
                    (Value::String(s), true) => serde_json::from_str(s).unwrap_or(v),
                    _ => v,
                };
                columns.push((name.clone(), v));
            }
            Ok((id, columns))
        })
        .optional()?;
    let Some((id, columns)) = row else {
        return Ok(None);
    };
    let mut content = Vec::new();
    if let Some(id) = id {
        let parts = conn
            .query_row(
                "SELECT system_instructions, input_messages, output_messages FROM content
                 WHERE exchange = ?1",
                [id],
                |r| {
                    Ok([
                        r.get::<_, Option<String>>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, Option<String>>(2)?,
                    ])
                },
            )
            .optional()?;
        let names = ["system_instructions", "input_messages", "output_messages"];
        for (name, text) in names.iter().zip(parts.into_iter().flatten()) {
            if let Some(text) = text {
                // The writer stores JSON text; anything else is shown as the text it is.
                let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
                content.push((name.to_string(), v));
            }
        }
    }
    Ok(Some(Shown { columns, content }))
}

fn value(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => i.into(),
        ValueRef::Real(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        ValueRef::Text(t) => String::from_utf8_lossy(t).into_owned().into(),
        ValueRef::Blob(b) => super::row::hex(b).into(),
    }
}
