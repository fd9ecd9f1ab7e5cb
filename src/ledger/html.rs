//! # The HTML report: one self-contained page of charts over the ledger.
//!
//! `veil report --format html --out report.html`. Its place in the flow:
//!
//! ```text
//! data/ledger.db ──(read-only)──▶ gather: report() ×4, cards(), token counts ──▶ Page
//!                                                                                 │ render (pure)
//!        cli writes --out (0600, temp + rename) ◀── one HTML text with inline SVG ◀┘
//! ```
//!
//! [`gather`] runs the ledger's own queries ([`super::report::report`] by day × model,
//! feature, model and user; [`super::cards::cards`]; the tokens of each request) over the
//! exchanges a [`Filter`] selects; [`render`] turns that [`Page`] into text without touching
//! anything else, so it is tested without a database. Charts are inline SVG drawn by
//! `plotters` (SVG backend only: text goes out as `<text>` for the browser to lay out, so no
//! system font is read); tables beside them carry the exact figures, costs as exact decimal
//! USD from integer nano-USD.
//!
//! The page loads nothing: no script, no font, no stylesheet, no image. A
//! `Content-Security-Policy` meta (`default-src 'none'; style-src 'unsafe-inline'; img-src
//! data:`) makes the browser refuse anything else, so opening it from `file://` offline is
//! the intended use.
//!
//! Every string from the ledger is attacker-influenced (feature tags, model names and user
//! pseudonyms come from request headers and bodies): in HTML it goes through [`escape`]; in
//! SVG through plotters' backend, which escapes text and attribute values (its
//! `escape_and_push`), after [`label`] has cut it short and replaced control characters.
//! Users appear only as pseudonyms (`u_…`); a `user` value that is not one is left out and
//! counted, never shown. Reads the ledger only; writes nothing (the CLI writes the file).

mod chart;
mod sections;
mod shape;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::time::SystemTime;

use plotters::style::RGBColor;
use rusqlite::Connection;

use super::LedgerError;
use super::cards::{Card, cards};
use super::report::{Dim, Filter, ReportRow, report};
use shape::{pct, thousands, utc, utc_text};

pub use shape::{Stack, escape, histogram, label, stack, usd};

/// The page's Content-Security-Policy: nothing may load; inline styles (the page's own
/// `<style>` and SVG attributes) and `data:` images are all it needs.
pub const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; img-src data:";

/// Categories (features, models) drawn in a bar chart; the tables list every one.
const BARS: usize = 15;
/// Users in "top users by cost".
const TOP_USERS: usize = 10;

/// Everything one HTML report shows, as the ledger's queries answered it.
#[derive(Debug, Clone)]
pub struct Page {
    /// When the report was made (shown in UTC).
    pub generated: SystemTime,
    /// Which exchanges it covers (`--since`, `--until`, `--where`).
    pub filter: Filter,
    /// First and last `start` (UTC text) of the matching exchanges; `None` when there are none.
    pub span: Option<(String, String)>,
    /// All matching exchanges together.
    pub total: ReportRow,
    /// Grouped by day, model (group `[day, model]`).
    pub day_model: Vec<ReportRow>,
    /// Grouped by feature, most expensive first.
    pub features: Vec<ReportRow>,
    /// Grouped by model, most expensive first.
    pub models: Vec<ReportRow>,
    /// Grouped by user pseudonym, most expensive first.
    pub users: Vec<ReportRow>,
    /// The cost cards, most expensive feature first.
    pub cards: Vec<Card>,
    /// Input + output tokens of each exchange that reported any (saturating).
    pub request_tokens: Vec<u64>,
}

/// Runs the queries a page needs over the exchanges `filter` selects.
///
/// # Errors
/// [`LedgerError::Query`] when the database cannot be read.
pub fn gather(
    conn: &Connection,
    filter: &Filter,
    generated: SystemTime,
) -> Result<Page, LedgerError> {
    let by_day_model = report(conn, &[Dim::Day, Dim::Model], filter)?;
    let (cond, values) = filter.sql();
    let span = conn.query_row(
        &format!("SELECT MIN(start), MAX(start) FROM exchanges {cond}"),
        rusqlite::params_from_iter(values.iter()),
        |r| {
            Ok((
                r.get::<_, Option<String>>(0)?,
                r.get::<_, Option<String>>(1)?,
            ))
        },
    )?;
    let mut stmt = conn.prepare(&format!(
        "SELECT input_tokens, output_tokens FROM exchanges {cond}
         AND (input_tokens IS NOT NULL OR output_tokens IS NOT NULL)"
    ))?;
    let mut rows = stmt.query(rusqlite::params_from_iter(values.iter()))?;
    let mut request_tokens = Vec::new();
    // Token counts come from upstream: absurd ones saturate rather than wrap.
    let tok = |v: Option<i64>| v.map_or(0, |v| u64::try_from(v).unwrap_or(0));
    while let Some(r) = rows.next()? {
        request_tokens.push(tok(r.get(0)?).saturating_add(tok(r.get(1)?)));
    }
    Ok(Page {
        generated,
        filter: filter.clone(),
        span: match span {
            (Some(a), Some(b)) => Some((a, b)),
            _ => None,
        },
        total: by_day_model.total,
        day_model: by_day_model.rows,
        features: report(conn, &[Dim::Feature], filter)?.rows,
        models: report(conn, &[Dim::Model], filter)?.rows,
        users: report(conn, &[Dim::User], filter)?.rows,
        cards: cards(conn, filter)?,
        request_tokens,
    })
}

const STYLE: &str = "
body{font-family:sans-serif;margin:24px auto;max-width:1100px;color:#222;background:#fff;padding:0 16px}
h1{margin:0 0 4px}h2{margin:32px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.period{color:#444;margin:2px 0}
.summary{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.summary div{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:120px}
.summary b{display:block;font-size:1.3em}
figure{margin:8px 0}svg{max-width:100%;height:auto}
table{border-collapse:collapse;margin:8px 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
td.n{text-align:right;font-variant-numeric:tabular-nums}
td.t{max-width:380px;overflow-wrap:anywhere}
.legend{display:flex;flex-wrap:wrap;gap:4px 14px;margin:4px 0;font-size:.9em}
.legend span{overflow-wrap:anywhere;max-width:380px}
.legend i{display:inline-block;width:12px;height:12px;margin-right:5px;vertical-align:-1px}
.empty,.note{color:#555}
footer{margin-top:40px;color:#666;font-size:.85em}
";

/// A table cell: text (escaped) or a number (right-aligned, already formatted).
enum Td {
    Text(String),
    Num(String),
}

fn table(out: &mut String, header: &[&str], rows: &[Vec<Td>]) {
    out.push_str("<table><thead><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", escape(h));
    }
    out.push_str("</tr></thead><tbody>\n");
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            match c {
                Td::Text(s) => {
                    let _ = write!(out, "<td class=\"t\">{}</td>", escape(s));
                }
                Td::Num(s) => {
                    let _ = write!(out, "<td class=\"n\">{}</td>", escape(s));
                }
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody></table>\n");
}

fn legend(out: &mut String, items: &[(String, RGBColor)]) {
    out.push_str("<div class=\"legend\">");
    for (name, c) in items {
        let _ = write!(
            out,
            "<span><i style=\"background:#{:02x}{:02x}{:02x}\"></i>{}</span>",
            c.0,
            c.1,
            c.2,
            escape(name)
        );
    }
    out.push_str("</div>\n");
}

fn figure(out: &mut String, chart: Result<String, String>) {
    match chart {
        Ok(svg) => {
            out.push_str("<figure>");
            out.push_str(&svg);
            out.push_str("</figure>\n");
        }
        // plotters' string backend does no I/O; should it fail, the tables still tell.
        Err(e) => {
            let _ = writeln!(
                out,
                "<p class=\"note\">This chart could not be drawn ({}); the table has its figures.</p>",
                escape(&e)
            );
        }
    }
}

fn note(out: &mut String, text: &str) {
    let _ = writeln!(out, "<p class=\"empty\">{}</p>", escape(text));
}

fn section(out: &mut String, id: &str, title: &str) {
    let _ = writeln!(out, "<section id=\"{id}\"><h2>{}</h2>", escape(title));
}

/// The whole page as HTML text (UTF-8). Pure: the same page always renders the same text.
pub fn render(page: &Page) -> String {
    let mut out = String::with_capacity(64 << 10);
    let period = period(page);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>veil report {}</title>\n<style>{STYLE}</style></head>\n<body>\n",
        escape(&period)
    );
    header(&mut out, page, &period);
    if page.total.requests == 0 {
        note(
            &mut out,
            "No data: no exchange in the ledger matches this period and filter.",
        );
    } else {
        sections::cost_per_day(&mut out, page);
        sections::cost_by_feature(&mut out, page);
        sections::cost_cards(&mut out, page);
        sections::latency_by_model(&mut out, page);
        sections::tokens_per_request(&mut out, page);
        sections::top_users(&mut out, page);
    }
    let _ = write!(
        out,
        "<footer>Made by veil {} at {} (UTC) from the ledger. Costs are estimates from the \
         pricing table (tokens × list price); exchanges whose model has no price count as \
         unpriced, never as 0. Users are pseudonyms.</footer>\n</body></html>\n",
        env!("CARGO_PKG_VERSION"),
        utc(page.generated)
    );
    out
}

fn period(page: &Page) -> String {
    let since = page.filter.since.map_or("the first exchange".into(), utc);
    let until = page
        .filter
        .until
        .map_or_else(|| format!("{} (now)", utc(page.generated)), utc);
    format!("from {since} to {until}, times in UTC")
}

fn header(out: &mut String, page: &Page, period: &str) {
    let _ = writeln!(
        out,
        "<header><h1>veil report</h1><p class=\"period\">Period: {}</p>",
        escape(period)
    );
    for (dim, v) in &page.filter.equals {
        let _ = writeln!(
            out,
            "<p class=\"period\">Only exchanges where {} = {}</p>",
            escape(dim.name()),
            escape(v)
        );
    }
    if let Some((first, last)) = &page.span {
        let _ = writeln!(
            out,
            "<p class=\"period\">Exchanges from {} to {} (UTC)</p>",
            escape(&utc_text(first)),
            escape(&utc_text(last))
        );
    }
    out.push_str("</header>\n");
    let t = &page.total;
    let tiles = [
        ("requests", thousands(u128::from(t.requests))),
        (
            "errors",
            format!(
                "{} ({})",
                thousands(u128::from(t.errors)),
                pct(t.error_rate)
            ),
        ),
        ("cost", usd(t.cost_nusd)),
        ("unpriced requests", thousands(u128::from(t.unpriced))),
        ("input tokens", thousands(u128::from(t.input_tokens))),
        ("output tokens", thousands(u128::from(t.output_tokens))),
    ];
    out.push_str("<div class=\"summary\">");
    for (name, value) in tiles {
        let _ = write!(out, "<div>{}<b>{}</b></div>", escape(name), escape(&value));
    }
    out.push_str("</div>\n");
}
