//! # `veil tail`'s reader: the records ledger, one readable line per exchange.
//!
//! Reads the OTLP/JSON trace lines under `<data>/records/` (written by [`super::ledger`])
//! and renders time, user pseudonym, feature, model, tokens, cost, latency and status. The
//! command itself (arguments, printing, following) is [`crate::cli`]'s `tail`.
//!
//! Owns: reading `<data>/records/`. Never writes anything, never touches the network.
//! The ledger holds only redacted records; tail prints no content at all.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use serde_json::Value;

use super::ledger;

/// One exchange, as a readable line.
fn span_line(span: &Value) -> Option<String> {
    let attrs = span.get("attributes")?.as_array()?;
    let attr = |key: &str| -> Option<&Value> {
        attrs
            .iter()
            .find(|a| a.get("key").and_then(Value::as_str) == Some(key))?
            .get("value")
    };
    let s = |key: &str| {
        attr(key)
            .and_then(|v| v.get("stringValue"))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let i = |key: &str| {
        attr(key)
            .and_then(|v| v.get("intValue"))
            .and_then(|v| v.as_i64().or_else(|| v.as_str()?.parse().ok()))
    };
    let f = |key: &str| {
        attr(key)
            .and_then(|v| v.get("doubleValue"))
            .and_then(Value::as_f64)
    };
    let nanos = |key: &str| {
        span.get(key)
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
    };
    let start = nanos("startTimeUnixNano").unwrap_or(0);
    let end = nanos("endTimeUnixNano").unwrap_or(start);
    let t = UNIX_EPOCH + Duration::from_nanos(start);
    let model = s("gen_ai.response.model")
        .or_else(|| s("gen_ai.request.model"))
        .unwrap_or_else(|| "-".into());
    let tokens = match (
        i("gen_ai.usage.input_tokens"),
        i("gen_ai.usage.output_tokens"),
    ) {
        (None, None) => "-".to_string(),
        (a, b) => format!(
            "{}→{}",
            a.map_or("?".into(), |n| n.to_string()),
            b.map_or("?".into(), |n| n.to_string())
        ),
    };
    let cost = f("veil.cost.usd").map_or("-".to_string(), |c| format!("${c:.6}"));
    let latency = format!("{:.3}s", end.saturating_sub(start) as f64 / 1e9);
    let status = match s("error.type") {
        Some(e) => format!("error:{e}"),
        None => s("veil.outcome").unwrap_or_else(|| "ok".into()),
    };
    Some(format!(
        "{} {}  {:<20} {:<16} {:<28} {:>14} {:>11} {:>8}  {}  {}",
        ledger::utc_date(t),
        ledger::utc_time(t),
        s("user.id").unwrap_or_else(|| "-".into()),
        s("veil.feature").unwrap_or_else(|| "-".into()),
        model,
        tokens,
        cost,
        latency,
        status,
        s("veil.request.id").unwrap_or_default(),
    ))
}

/// The readable lines of one ledger line (an `ExportTraceServiceRequest` JSON object).
/// Unparseable lines yield nothing.
pub fn render(line: &str) -> Vec<String> {
    let Ok(v) = serde_json::from_str::<Value>(line) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let empty = Vec::new();
    for rs in v
        .get("resourceSpans")
        .and_then(Value::as_array)
        .unwrap_or(&empty)
    {
        for ss in rs
            .get("scopeSpans")
            .and_then(Value::as_array)
            .unwrap_or(&empty)
        {
            for span in ss.get("spans").and_then(Value::as_array).unwrap_or(&empty) {
                out.extend(span_line(span));
            }
        }
    }
    out
}

/// Follows the trace ledger files: remembers how far each was read.
#[derive(Debug)]
pub struct Follower {
    dir: PathBuf,
    /// File being read and the offset of the first unread byte.
    pos: Option<(PathBuf, u64)>,
    /// A partial last line, kept until its newline arrives.
    partial: String,
}

impl Follower {
    /// A follower of `<data>/records/`, starting at the beginning of its oldest trace file.
    pub fn new(data_dir: &Path) -> Self {
        Follower {
            dir: ledger::records_dir(data_dir),
            pos: None,
            partial: String::new(),
        }
    }

    /// The directory followed (`<data>/records/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with("traces-") && n.ends_with(".jsonl"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Reads what was appended since the last call (across day files) and returns the
    /// readable lines.
    pub fn poll(&mut self) -> std::io::Result<Vec<String>> {
        let files = self.files();
        let mut out = Vec::new();
        // Bounded: at most one pass over the files present now.
        for file in files {
            let offset = match &self.pos {
                Some((p, off)) if *p == file => *off,
                Some((p, _)) if *p > file => continue,
                _ => 0,
            };
            let mut f = fs::File::open(&file)?;
            f.seek(SeekFrom::Start(offset))?;
            let mut buf = String::new();
            let n = f.read_to_string(&mut buf)? as u64;
            self.partial.push_str(&buf);
            if let Some(cut) = self.partial.rfind('\n') {
                let complete: String = self.partial.drain(..=cut).collect();
                for line in complete.lines() {
                    out.extend(render(line));
                }
            }
            self.pos = Some((file, offset + n));
        }
        Ok(out)
    }
}
