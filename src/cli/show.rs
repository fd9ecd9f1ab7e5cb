//! # `veil show ID`: the redacted record of one exchange, from the ledger.
//!
//! Opens `<data>/ledger.db` read-only and prints what it holds for one request id: the
//! exchange's fields (model, user pseudonym, tokens, cost, timings, outcome…) and its content
//! as the rules let it out. Text by default, for a person: fields one per line, messages as
//! `role: text`, every value an app or upstream chose passed through
//! [`printable`](super::table::printable) so it cannot drive the terminal. `--format json`
//! prints every column (nulls included) and the content as the JSON it is.
//!
//! Exit codes: 0 printed; 1 no exchange with that id in the ledger, or no ledger to read;
//! 2 bad arguments.

use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use serde_json::Value;

use super::table::printable;
use crate::ledger::{schema, show};

/// Arguments of `veil show`.
#[derive(Debug, Clone, clap::Args)]
pub(super) struct ShowArgs {
    /// The exchange's request id (the `x-veil-request-id` response header, or a row of
    /// `veil tail`).
    id: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: ShowFormat,
}

/// `--format` of `veil show`: one record is no table of rows, so no CSV or HTML.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ShowFormat {
    /// Readable text: the fields, one per line, then the messages.
    Table,
    /// One JSON object: every column (nulls too) and `content`.
    Json,
}

/// Runs `veil show`.
pub(super) fn run_show(args: ShowArgs, data: &Path) -> anyhow::Result<ExitCode> {
    let json = args.format == ShowFormat::Json;
    let path = data.join(crate::ledger::FILE_NAME);
    let conn = match schema::open_read_only(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("veil show: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let Some(shown) = show::exchange(&conn, &args.id)? else {
        // Request ids are UUIDs (36 characters); a prefix copied from a table finds nothing.
        let hint = if args.id.len() == 36 {
            ""
        } else {
            "; give the whole request id, 36 characters as `veil tail` prints it"
        };
        eprintln!(
            "veil show: no exchange {} in the ledger {} (not recorded yet, forgotten whole by \
             retention, or recorded by a veil with another --data directory; `veil tail` lists \
             the latest ids){hint}",
            printable(&args.id),
            path.display()
        );
        return Ok(ExitCode::FAILURE);
    };
    let mut out = std::io::stdout().lock();
    if json {
        let mut doc = serde_json::Map::new();
        for (name, v) in &shown.columns {
            doc.insert(name.clone(), v.clone());
        }
        let content: serde_json::Map<String, Value> = shown.content.iter().cloned().collect();
        doc.insert("content".into(), Value::Object(content));
        serde_json::to_writer_pretty(&mut out, &Value::Object(doc))?;
        writeln!(out)?;
    } else {
        out.write_all(text(&shown).as_bytes())?;
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}

/// The readable form: a header, the fields that have a value, then the content.
fn text(shown: &show::Shown) -> String {
    let mut s = String::new();
    let id = shown
        .get("request_id")
        .and_then(Value::as_str)
        .unwrap_or("?");
    let _ = writeln!(
        s,
        "# exchange {} (times UTC; empty fields left out, --format json has them all)",
        printable(id)
    );
    let width = shown
        .columns
        .iter()
        .map(|(n, _)| n.len())
        .max()
        .unwrap_or(0);
    for (name, v) in &shown.columns {
        if v.is_null() || name == "request_id" {
            continue;
        }
        let _ = writeln!(s, "{name:<width$}  {}", field(name, v));
    }
    if shown.get("forgotten").and_then(Value::as_i64) == Some(1) {
        let _ = writeln!(s, "\nforgotten: its content and user pseudonym were erased");
    }
    if shown.content.is_empty() {
        let _ = writeln!(
            s,
            "\ncontent: none in the ledger (the rules let none out, it aged out \
             (ledger_content_retention), or it was forgotten)"
        );
    }
    for (name, v) in &shown.content {
        let _ = writeln!(s, "\n{}:", name.replace('_', " "));
        messages(&mut s, v);
    }
    s
}

/// One field's value, with its unit where the column name carries one.
fn field(name: &str, v: &Value) -> String {
    match (v.as_i64(), name) {
        (Some(n), "cost_nusd") => format!("{n}  ({:.6} USD)", n as f64 / 1e9),
        (Some(n), _) if name.ends_with("_us") => format!("{n}  ({:.1} ms)", n as f64 / 1e3),
        _ => match v {
            Value::String(t) => printable(t),
            other => printable(&other.to_string()),
        },
    }
}

/// Messages (`[{role, parts: [{type, content}], finish_reason}]`) as `role: text` lines, or
/// system instructions (`[{type, content}]`) as text; any other shape as compact JSON.
fn messages(s: &mut String, v: &Value) {
    let Some(items) = v.as_array() else {
        let _ = writeln!(s, "  {}", printable(&v.to_string()));
        return;
    };
    for item in items {
        match item.get("role").and_then(Value::as_str) {
            Some(role) => {
                let mut head = printable(role);
                if let Some(f) = item.get("finish_reason").and_then(Value::as_str) {
                    head.push_str(&format!(" (finish: {})", printable(f)));
                }
                let parts = item.get("parts").and_then(Value::as_array);
                let body = parts.map_or_else(|| item.to_string(), |p| parts_text(p));
                indented(s, &format!("{head}: "), &body);
            }
            None => indented(s, "", &parts_text(std::slice::from_ref(item))),
        }
    }
}

/// The text of message parts: `text` parts as their content, others (tool calls, tool
/// results, media) as compact JSON so nothing is hidden.
fn parts_text(parts: &[Value]) -> String {
    parts
        .iter()
        .map(|p| {
            match (
                p.get("type").and_then(Value::as_str),
                p.get("content").and_then(Value::as_str),
            ) {
                (Some("text"), Some(t)) => t.to_string(),
                _ => p.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `first` then `body`, its lines indented under the first and each made printable.
fn indented(s: &mut String, first: &str, body: &str) {
    for (i, line) in body.split('\n').enumerate() {
        let lead = if i == 0 { first } else { "" };
        let _ = writeln!(s, "  {lead}{}", printable(line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // See: veil#10. Content is the app's: an escape sequence in it must not reach the terminal.
    #[test]
    fn text_is_readable_and_carries_no_control_bytes() {
        let shown = show::Shown {
            columns: vec![
                ("request_id".into(), "r1".into()),
                ("request_model".into(), "gpt-4o\u{1b}[2J".into()),
                ("user".into(), Value::Null),
                ("cost_nusd".into(), 19_200.into()),
                ("duration_us".into(), 1_500.into()),
            ],
            content: vec![(
                "output_messages".into(),
                serde_json::json!([{"role": "assistant", "finish_reason": "stop",
                    "parts": [{"type": "text", "content": "line one\nline\u{1b}]two"},
                              {"type": "tool_call", "name": "get_weather"}]}]),
            )],
        };
        let t = text(&shown);
        assert!(!t.bytes().any(|b| b == 0x1b), "{t}");
        assert!(t.contains("# exchange r1"), "{t}");
        assert!(t.contains("cost_nusd      19200  (0.000019 USD)"), "{t}");
        assert!(t.contains("duration_us    1500  (1.5 ms)"), "{t}");
        assert!(!t.contains("user "), "null fields are left out: {t}");
        assert!(
            t.contains("output messages:\n  assistant (finish: stop): line one\n  line"),
            "{t}"
        );
        assert!(
            t.contains(r#"{"name":"get_weather","type":"tool_call"}"#),
            "{t}"
        );
    }
}
