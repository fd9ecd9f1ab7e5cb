//! # Tabular output for the ledger commands: aligned table, CSV or JSON on stdout.
//!
//! One shape for every command that prints rows (`report`, `sql`, `tail`): a header and
//! rows of cells. Tables right-align numbers and neutralize control characters, so a value
//! an app chose (a feature tag, a model name) cannot move the terminal's cursor; CSV follows
//! RFC 4180 (the `csv` crate); JSON is an array of objects keyed by column name.

use std::io::Write;

/// `--format` of the ledger commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Format {
    /// Aligned columns with a header row.
    Table,
    /// RFC 4180 CSV with a header row.
    Csv,
    /// A JSON document.
    Json,
    /// A self-contained HTML page of charts (`veil report --out FILE` only).
    Html,
}

/// `--format` of `veil sql`: rows only (the page of charts is `veil report`'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum RowsFormat {
    /// Aligned columns with a header row.
    Table,
    /// RFC 4180 CSV with a header row.
    Csv,
    /// A JSON document.
    Json,
}

/// `--format` of `veil tail`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum TailFormat {
    /// Aligned columns with a header row.
    Table,
    /// One JSON object per line.
    Json,
}

/// One cell: text, or a number (right-aligned in tables, unquoted in JSON).
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Cell {
    /// Text (or nothing: `None` prints `-` in tables, empty in CSV, null in JSON).
    Text(Option<String>),
    /// A number, and how to show it in a table.
    Num(serde_json::Number, String),
}

impl Cell {
    pub(super) fn text(s: impl Into<String>) -> Cell {
        Cell::Text(Some(s.into()))
    }

    pub(super) fn opt(s: Option<impl Into<String>>) -> Cell {
        Cell::Text(s.map(Into::into))
    }

    pub(super) fn int(n: impl Into<i128>) -> Cell {
        let n: i128 = n.into();
        let num = i64::try_from(n).map_or_else(|_| serde_json::Number::from(0), Into::into);
        Cell::Num(num, n.to_string())
    }

    /// A real shown with `decimals` places in tables (full precision in CSV and JSON).
    pub(super) fn real(v: f64, decimals: usize) -> Cell {
        match serde_json::Number::from_f64(v) {
            Some(n) => Cell::Num(n, format!("{v:.decimals$}")),
            None => Cell::Text(None),
        }
    }

    pub(super) fn opt_real(v: Option<f64>, decimals: usize) -> Cell {
        v.map_or(Cell::Text(None), |v| Cell::real(v, decimals))
    }

    /// A USD amount shown with four decimals, or with as many as three significant digits
    /// need below that (`0.0000216`, not `0.0000`: LLM calls cost fractions of a cent), at
    /// most nine (nano-USD, the ledger's unit); trailing zeros past the fourth decimal are
    /// dropped. csv and json carry the number itself.
    pub(super) fn usd(v: f64) -> Cell {
        let a = v.abs();
        let decimals = if a == 0.0 || a >= 1e-3 {
            4
        } else {
            ((-a.log10()).ceil() as usize + 2).clamp(4, 9)
        };
        match Cell::real(v, decimals) {
            Cell::Num(n, mut s) => {
                while s.len() > s.find('.').map_or(usize::MAX, |d| d + 5) && s.ends_with('0') {
                    s.pop();
                }
                Cell::Num(n, s)
            }
            other => other,
        }
    }

    pub(super) fn opt_usd(v: Option<f64>) -> Cell {
        v.map_or(Cell::Text(None), Cell::usd)
    }

    fn shown(&self) -> String {
        match self {
            Cell::Text(Some(s)) => printable(s),
            Cell::Text(None) => "-".into(),
            Cell::Num(_, s) => s.clone(),
        }
    }

    fn raw(&self) -> String {
        match self {
            Cell::Text(s) => s.clone().unwrap_or_default(),
            // Plain decimals, never `9e-6` (`f64`'s Display never uses an exponent): a CSV
            // column of costs reads the same in every row and in every spreadsheet.
            Cell::Num(n, _) => match n.as_f64().filter(|_| n.is_f64()) {
                Some(f) => f.to_string(),
                None => n.to_string(),
            },
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Cell::Text(s) => s.clone().map_or(serde_json::Value::Null, Into::into),
            Cell::Num(n, _) => serde_json::Value::Number(n.clone()),
        }
    }
}

/// `s` with control characters replaced by U+FFFD, so a model name or feature tag chosen by an
/// app cannot move the operator's cursor or recolor the terminal.
pub(super) fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect()
}

/// Writes `rows` under `header` as an aligned table (numbers right-aligned, two spaces
/// between columns).
pub(super) fn write_table(
    out: &mut (impl Write + ?Sized),
    header: &[&str],
    rows: &[Vec<Cell>],
) -> std::io::Result<()> {
    let shown: Vec<Vec<String>> = rows
        .iter()
        .map(|r| r.iter().map(Cell::shown).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &shown {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let numeric: Vec<bool> = (0..header.len())
        .map(|i| {
            !rows.is_empty()
                && rows
                    .iter()
                    .all(|r| !matches!(r.get(i), Some(Cell::Text(Some(_)))))
        })
        .collect();
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i].saturating_sub(c.chars().count());
            if i > 0 {
                s.push_str("  ");
            }
            if numeric[i] {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                if i + 1 < cells.len() {
                    s.push_str(&" ".repeat(pad));
                }
            }
        }
        s
    };
    writeln!(
        out,
        "{}",
        line(header.iter().map(|h| h.to_string()).collect())
    )?;
    for r in shown {
        writeln!(out, "{}", line(r))?;
    }
    Ok(())
}

/// Writes `rows` as CSV with a header row.
pub(super) fn write_csv(
    out: &mut (impl Write + ?Sized),
    header: &[&str],
    rows: &[Vec<Cell>],
) -> std::io::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(header)?;
    for r in rows {
        w.write_record(r.iter().map(Cell::raw))?;
    }
    w.flush()
}

/// The rows as JSON objects keyed by column name.
pub(super) fn json_rows(header: &[&str], rows: &[Vec<Cell>]) -> Vec<serde_json::Value> {
    rows.iter()
        .map(|r| {
            let mut m = serde_json::Map::new();
            for (h, c) in header.iter().zip(r) {
                m.insert((*h).to_string(), c.json());
            }
            serde_json::Value::Object(m)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A trial found `0.0000` for a feature that cost $0.0000216: small costs keep three
    /// significant digits.
    #[test]
    fn usd_keeps_three_significant_digits_of_small_costs() {
        let shown = |v: f64| Cell::usd(v).shown();
        assert_eq!(shown(0.0000216), "0.0000216");
        assert_eq!(shown(0.0000054), "0.0000054");
        assert_eq!(shown(0.00012345), "0.000123");
        assert_eq!(shown(1234.5), "1234.5000");
        assert_eq!(shown(0.0), "0.0000");
        assert_eq!(shown(0.000000001), "0.000000001");
        assert_eq!(shown(1e-12), "0.0000");
    }

    #[test]
    fn tables_align_numbers_right_and_neutralize_control_characters() {
        let rows = vec![
            vec![Cell::text("billing"), Cell::int(12), Cell::real(0.5, 2)],
            vec![Cell::text("a\x1b[31mb"), Cell::int(3), Cell::Text(None)],
        ];
        let mut out = Vec::new();
        write_table(&mut out, &["feature", "requests", "cost_usd"], &rows).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "feature  requests  cost_usd");
        assert_eq!(lines[1], "billing        12      0.50");
        assert_eq!(lines[2], "a\u{FFFD}[31mb         3         -");
        let mut out = Vec::new();
        write_csv(
            &mut out,
            &["n"],
            &[vec![Cell::usd(0.000009)], vec![Cell::usd(1e-12)]],
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "n\n0.000009\n0.000000000001\n"
        );
        let mut out = Vec::new();
        write_csv(&mut out, &["feature", "requests", "cost_usd"], &rows).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "feature,requests,cost_usd\nbilling,12,0.5\n\"a\x1b[31mb\",3,\n".replace('"', "")
        );
        let j = json_rows(&["feature", "requests"], &rows[..1]);
        assert_eq!(
            j[0],
            serde_json::json!({"feature": "billing", "requests": 12})
        );
    }
}
