//! Text and numbers for the report page, and the shaping of query answers into what a chart
//! draws: escaping, labels, exact USD, the stacked columns, the token histogram. Pure
//! functions, no I/O.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use crate::ledger::report::ReportRow;
use crate::ledger::row;

/// Characters of a label drawn in a chart (a feature tag can be kilobytes long); the
/// tables show the whole text.
pub(super) const LABEL_CHARS: usize = 40;
/// Models drawn in their own colour in the stacked chart; the rest share "other models"
/// (more than the palette can tell apart is noise).
pub(super) const STACK_MODELS: usize = 8;

/// `s` with `& < > " '` replaced by entities: safe as HTML text and inside a quoted
/// attribute value.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // A control character can do nothing in HTML, but shows as garbage: say so.
            c if c.is_control() => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

/// A chart label: control characters replaced, cut to 40 characters (`LABEL_CHARS`) with `…`.
/// Not escaped: plotters' SVG backend escapes what it writes.
pub fn label(s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| if c.is_control() { '\u{FFFD}' } else { c })
        .collect();
    if clean.chars().count() <= LABEL_CHARS {
        clean
    } else {
        let mut cut: String = clean.chars().take(LABEL_CHARS - 1).collect();
        cut.push('…');
        cut
    }
}

/// Nano-USD as exact decimal USD: `$1,234.56`, `$0.0000025`; at least two decimals, no
/// trailing zeros past them, thousands grouped. Exact because it is integer arithmetic: no
/// float ever holds the amount.
pub fn usd(nusd: i128) -> String {
    let sign = if nusd < 0 { "-" } else { "" };
    let n = nusd.unsigned_abs();
    let mut frac = format!("{:09}", n % 1_000_000_000);
    while frac.len() > 2 && frac.ends_with('0') {
        frac.pop();
    }
    format!("{sign}${}.{frac}", thousands(n / 1_000_000_000))
}

/// An integer with thousands grouped by commas (`1,234,567`).
pub(super) fn thousands(n: u128) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// An approximate USD amount for an axis tick: three significant digits below a dollar.
pub(super) fn usd_tick(v: f64) -> String {
    if v == 0.0 {
        "$0".into()
    } else if v.abs() >= 1.0 {
        format!("${v:.2}")
    } else {
        let decimals = (2 - v.abs().log10().floor() as i32).clamp(2, 12) as usize;
        format!("${v:.decimals$}")
    }
}

pub(super) fn ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.1}"))
}

pub(super) fn pct(v: f64) -> String {
    format!("{:.1} %", v * 100.0)
}

/// Seconds precision UTC text of a time (`2026-11-29T12:00:00Z`).
pub(super) fn utc(t: SystemTime) -> String {
    let s = row::iso_utc(t);
    format!("{}Z", &s[..19])
}

/// A stored `start` (microseconds) shown to the second.
pub(super) fn utc_text(s: &str) -> String {
    s.get(..19)
        .map_or_else(|| s.to_string(), |head| format!("{head}Z"))
}

pub(super) fn or_none(v: &Option<String>, none: &str) -> String {
    v.clone().unwrap_or_else(|| none.to_string())
}

/// Cost per day, stacked by model: each day's bar is its models' costs one on another.
#[derive(Debug, Clone, PartialEq)]
pub struct Stack {
    /// Days (`YYYY-MM-DD`), oldest first.
    pub days: Vec<String>,
    /// One series per model (the 8 most expensive, `STACK_MODELS`, then "other models"),
    /// with its cost per day in nano-USD, in `days` order.
    pub series: Vec<(String, Vec<i128>)>,
    /// Requests per day.
    pub requests: Vec<u64>,
}

impl Stack {
    /// The exact total of day `i` (the sum of its segments).
    pub fn day_total(&self, i: usize) -> i128 {
        self.series.iter().map(|(_, v)| v[i]).sum()
    }

    /// The top of each segment, nano-USD: for series `s` and day `i`, the sum of series
    /// `0..=s` (so the last series' tops are the day totals).
    pub fn tops(&self) -> Vec<Vec<i128>> {
        let mut run = vec![0i128; self.days.len()];
        self.series
            .iter()
            .map(|(_, v)| {
                for (r, x) in run.iter_mut().zip(v) {
                    *r += x;
                }
                run.clone()
            })
            .collect()
    }
}

/// Shapes `day_model` rows (group `[day, model]`) into a [`Stack`]. Models without any
/// known cost are left out of the series (they add nothing to a bar); the day totals are
/// exact either way.
pub fn stack(day_model: &[ReportRow]) -> Stack {
    let key = |r: &ReportRow| {
        (
            r.group.first().cloned().flatten().unwrap_or_default(),
            or_none(r.group.get(1).unwrap_or(&None), "(no model)"),
        )
    };
    let mut days: Vec<String> = day_model.iter().map(|r| key(r).0).collect();
    days.sort();
    days.dedup();
    let day_index: HashMap<&str, usize> = days
        .iter()
        .enumerate()
        .map(|(i, d)| (d.as_str(), i))
        .collect();
    let mut model_cost: BTreeMap<String, i128> = BTreeMap::new();
    for r in day_model {
        *model_cost.entry(key(r).1).or_default() += r.cost_nusd;
    }
    let mut ranked: Vec<(String, i128)> = model_cost.into_iter().filter(|m| m.1 != 0).collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let own: Vec<String> = ranked
        .iter()
        .take(STACK_MODELS)
        .map(|m| m.0.clone())
        .collect();
    let other = ranked.len() > STACK_MODELS;
    let mut series: Vec<(String, Vec<i128>)> = own
        .iter()
        .map(|m| (m.clone(), vec![0; days.len()]))
        .collect();
    if other {
        series.push(("other models".into(), vec![0; days.len()]));
    }
    let mut requests = vec![0u64; days.len()];
    for r in day_model {
        let (day, model) = key(r);
        let i = day_index[day.as_str()];
        requests[i] += r.requests;
        if r.cost_nusd == 0 {
            continue;
        }
        let s = own.iter().position(|m| *m == model).unwrap_or(own.len());
        series[s].1[i] += r.cost_nusd;
    }
    Stack {
        days,
        series,
        requests,
    }
}

/// Tokens-per-request histogram bins on a 1-2-5 scale: `[0, 10)`, `[10, 20)`, `[20, 50)`,
/// …, from the first non-empty bin to the last. Returns `(low, high, count)` per bin.
pub fn histogram(tokens: &[u64]) -> Vec<(u64, u64, u64)> {
    let Some(&max) = tokens.iter().max() else {
        return Vec::new();
    };
    let mut edges = vec![0u64];
    let mut step = 10u64;
    while *edges.last().expect("invariant: starts with 0") <= max {
        for m in [1, 2, 5] {
            edges.push(step.saturating_mul(m));
        }
        if step > u64::MAX / 10 {
            edges.push(u64::MAX);
            break;
        }
        step *= 10;
    }
    edges.dedup();
    let mut bins: Vec<(u64, u64, u64)> = edges.windows(2).map(|w| (w[0], w[1], 0)).collect();
    for &t in tokens {
        // The bin whose [low, high) holds t; u64::MAX itself goes to the last bin.
        let i = bins.partition_point(|b| b.1 <= t).min(bins.len() - 1);
        bins[i].2 += 1;
    }
    let first = bins.iter().position(|b| b.2 > 0).unwrap_or(0);
    let last = bins.iter().rposition(|b| b.2 > 0).unwrap_or(0);
    bins[first..=last].to_vec()
}

/// A token count as a bin edge: `500`, `1k`, `20k`, `5M`.
pub(super) fn compact(n: u64) -> String {
    if n == u64::MAX {
        "∞".into()
    } else if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n.is_multiple_of(1_000) {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}
