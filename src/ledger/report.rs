//! # `veil report`: requests, errors, tokens, cost and latency, grouped by what the user asks.
//!
//! One pass over the `exchanges` rows that match the filter (the `start` index bounds the
//! scan), summed per group in memory, with exact percentiles (nearest rank on the sorted
//! values, not an estimate). Costs are summed as integer nano-USD, so a total equals the sum
//! of its rows to the last nano-dollar.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use rusqlite::Connection;
use rusqlite::types::Value;

use super::{LedgerError, row};

/// What a report can be grouped or filtered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dim {
    /// The `x-veil-feature` tag.
    Feature,
    /// The response model, else the request model.
    Model,
    /// `gen_ai.provider.name`.
    Provider,
    /// The user pseudonym.
    User,
    /// The API key fingerprint.
    Key,
    /// The UTC day of the start (`2026-11-29`).
    Day,
    /// The UTC hour of the start (`2026-11-29T13:00`).
    Hour,
    /// `complete`, `client_aborted`, `upstream_aborted`, `upstream_failed`.
    Outcome,
    /// The finish reasons, comma-joined (`stop`, `length`, `tool_calls`).
    FinishReason,
}

impl Dim {
    /// Every dimension, in the order `--help` lists them.
    pub const ALL: [Dim; 9] = [
        Dim::Feature,
        Dim::Model,
        Dim::Provider,
        Dim::User,
        Dim::Key,
        Dim::Day,
        Dim::Hour,
        Dim::Outcome,
        Dim::FinishReason,
    ];

    /// The name on the command line and in output headers.
    pub fn name(self) -> &'static str {
        match self {
            Dim::Feature => "feature",
            Dim::Model => "model",
            Dim::Provider => "provider",
            Dim::User => "user",
            Dim::Key => "key",
            Dim::Day => "day",
            Dim::Hour => "hour",
            Dim::Outcome => "outcome",
            Dim::FinishReason => "finish_reason",
        }
    }

    /// The SQL expression over `exchanges` (no user input is ever interpolated).
    pub(crate) fn sql(self) -> &'static str {
        match self {
            Dim::Feature => "feature",
            Dim::Model => "COALESCE(response_model, request_model)",
            Dim::Provider => "provider",
            Dim::User => "user",
            Dim::Key => "api_key_fp",
            Dim::Day => "substr(start, 1, 10)",
            Dim::Hour => "substr(start, 1, 13) || ':00'",
            Dim::Outcome => "outcome",
            Dim::FinishReason => "finish_reasons",
        }
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dim {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Dim::ALL.into_iter().find(|d| d.name() == s).ok_or_else(|| {
            let names: Vec<_> = Dim::ALL.iter().map(|d| d.name()).collect();
            format!("unknown dimension `{s}` (one of: {})", names.join(", "))
        })
    }
}

/// Which exchanges a report (or cost cards) covers.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Started at or after.
    pub since: Option<SystemTime>,
    /// Started before.
    pub until: Option<SystemTime>,
    /// `dimension = value` conditions, all of which must hold.
    pub equals: Vec<(Dim, String)>,
}

impl Filter {
    /// The SQL `WHERE` clause (always starts with `WHERE`) and its bound values.
    pub(crate) fn sql(&self) -> (String, Vec<Value>) {
        let mut clauses = vec!["1".to_string()];
        let mut values = Vec::new();
        if let Some(t) = self.since {
            clauses.push("start >= ?".into());
            values.push(Value::Text(row::iso_utc(t)));
        }
        if let Some(t) = self.until {
            clauses.push("start < ?".into());
            values.push(Value::Text(row::iso_utc(t)));
        }
        for (dim, v) in &self.equals {
            clauses.push(format!("{} = ?", dim.sql()));
            values.push(Value::Text(v.clone()));
        }
        (format!("WHERE {}", clauses.join(" AND ")), values)
    }
}

/// Labels that count a feedback as negative (compared lowercase), besides a score below 0.
/// A 0-to-1 scale has no negative score: such apps send one of these labels too
/// (docs/feedback.md). The one definition, shared with `veil export --feedback`.
pub use super::dataset::NEGATIVE_LABELS;

/// The per-exchange feedback join, as SQL after `FROM exchanges`: columns `fb_n` (feedback
/// rows), `fb_scored` (rows with a score), `fb_sum` (sum of scores) and `fb_neg` (1 when any
/// row is negative: a score below 0 or a label in [`NEGATIVE_LABELS`]); NULL for an
/// exchange without feedback. A ledger before schema version 4 has no feedback table: the
/// join then adds the columns, all NULL.
pub(crate) fn feedback_join(conn: &Connection) -> rusqlite::Result<String> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    Ok(if version >= 4 {
        format!(
            "LEFT JOIN (SELECT request_id AS fb_request, COUNT(*) AS fb_n, COUNT(score) AS fb_scored,
                SUM(score) AS fb_sum,
                COALESCE(MAX({}), 0) AS fb_neg
            FROM feedback GROUP BY request_id) fb ON fb.fb_request = exchanges.request_id",
            super::dataset::negative_sql_over("")
        )
    } else {
        "LEFT JOIN (SELECT NULL AS fb_request, NULL AS fb_n, NULL AS fb_scored, NULL AS fb_sum,
                NULL AS fb_neg) fb ON 0"
            .to_string()
    })
}

/// Feedback figures of a group of exchanges (or tasks).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct FeedbackAcc {
    /// Units (exchanges or tasks) with at least one feedback.
    pub rated: u64,
    /// Rated units with a negative feedback.
    pub negative: u64,
    /// Scores given.
    pub scored: u64,
    /// Their sum.
    pub sum: f64,
}

impl FeedbackAcc {
    pub(crate) fn add(&mut self, o: &FeedbackAcc) {
        self.rated += o.rated;
        self.negative += o.negative;
        self.scored += o.scored;
        self.sum += o.sum;
    }

    /// `(share_rated, mean_score, share_negative)` over `units`.
    pub(crate) fn shares(&self, units: u64) -> (f64, Option<f64>, Option<f64>) {
        (
            if units > 0 {
                self.rated as f64 / units as f64
            } else {
                0.0
            },
            (self.scored > 0).then(|| self.sum / self.scored as f64),
            (self.rated > 0).then(|| self.negative as f64 / self.rated as f64),
        )
    }
}

/// Nearest-rank percentile `p` (0–100) of sorted `values`; `None` when empty.
pub fn percentile(sorted: &[i64], p: u32) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (u64::from(p) * sorted.len() as u64).div_ceil(100).max(1);
    sorted.get(rank as usize - 1).copied()
}

/// p50, p95 and p99 of a set of microsecond values, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Percentiles {
    /// Median, ms.
    pub p50: Option<f64>,
    /// 95th percentile, ms.
    pub p95: Option<f64>,
    /// 99th percentile, ms.
    pub p99: Option<f64>,
}

impl Percentiles {
    fn of(mut us: Vec<i64>) -> Self {
        us.sort_unstable();
        let ms = |p| percentile(&us, p).map(|v| v as f64 / 1000.0);
        Percentiles {
            p50: ms(50),
            p95: ms(95),
            p99: ms(99),
        }
    }
}

/// One line of a report: a group (or the total) and its figures.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ReportRow {
    /// The group's values, one per `--by` dimension, in order (`None`: not set, e.g. no
    /// feature tag). Empty for the total.
    pub group: Vec<Option<String>>,
    /// Exchanges.
    pub requests: u64,
    /// Exchanges with an `error.type`.
    pub errors: u64,
    /// `errors / requests`.
    pub error_rate: f64,
    /// Input tokens (including cached ones).
    pub input_tokens: u64,
    /// Output tokens (including reasoning ones).
    pub output_tokens: u64,
    /// Input tokens read from the provider's cache.
    pub cached_tokens: u64,
    /// `cached_tokens / input_tokens` (`None` without input tokens).
    pub cache_hit_ratio: Option<f64>,
    /// Cost, nano-USD (exact sum).
    pub cost_nusd: i128,
    /// Cost, USD.
    pub cost_usd: f64,
    /// Cost per request with a known price, USD.
    pub cost_per_request_usd: Option<f64>,
    /// Exchanges whose model has no price (their cost is unknown, not 0).
    pub unpriced: u64,
    /// Exchange duration.
    pub duration_ms: Percentiles,
    /// Time to first chunk.
    pub ttfc_ms: Percentiles,
    /// Exchanges with at least one feedback (any scope, any name).
    pub rated: u64,
    /// `rated / requests`.
    pub share_rated: f64,
    /// Mean of every feedback score given to these exchanges (`None`: no score).
    pub mean_score: Option<f64>,
    /// Share of the rated exchanges with a negative feedback: a score below 0 or a label in
    /// [`NEGATIVE_LABELS`] (`None`: none rated).
    pub share_negative: Option<f64>,
}

/// A whole report.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    /// The `--by` dimensions, by name.
    pub by: Vec<&'static str>,
    /// One row per group, most expensive first (then by group).
    pub rows: Vec<ReportRow>,
    /// All matching exchanges together.
    pub total: ReportRow,
}

#[derive(Default)]
struct Acc {
    requests: u64,
    errors: u64,
    input: u64,
    output: u64,
    cached: u64,
    cost: i128,
    priced: u64,
    durations: Vec<i64>,
    ttfc: Vec<i64>,
    feedback: FeedbackAcc,
}

impl Acc {
    fn add(&mut self, other: &Acc) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.input = self.input.saturating_add(other.input);
        self.output = self.output.saturating_add(other.output);
        self.cached = self.cached.saturating_add(other.cached);
        self.cost += other.cost;
        self.priced += other.priced;
        self.durations.extend_from_slice(&other.durations);
        self.ttfc.extend_from_slice(&other.ttfc);
        self.feedback.add(&other.feedback);
    }

    fn finish(self, group: Vec<Option<String>>) -> ReportRow {
        let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        let (share_rated, mean_score, share_negative) = self.feedback.shares(self.requests);
        ReportRow {
            group,
            requests: self.requests,
            errors: self.errors,
            error_rate: ratio(self.errors, self.requests).unwrap_or(0.0),
            input_tokens: self.input,
            output_tokens: self.output,
            cached_tokens: self.cached,
            cache_hit_ratio: ratio(self.cached, self.input),
            cost_nusd: self.cost,
            cost_usd: self.cost as f64 / 1e9,
            cost_per_request_usd: (self.priced > 0)
                .then(|| self.cost as f64 / 1e9 / self.priced as f64),
            unpriced: self.requests - self.priced,
            duration_ms: Percentiles::of(self.durations),
            ttfc_ms: Percentiles::of(self.ttfc),
            rated: self.feedback.rated,
            share_rated,
            mean_score,
            share_negative,
        }
    }
}

/// Runs a report grouped `by` (no dimension: one total) over the exchanges `filter` selects.
///
/// # Errors
/// [`LedgerError::Query`] when the database cannot be read.
pub fn report(conn: &Connection, by: &[Dim], filter: &Filter) -> Result<Report, LedgerError> {
    let (cond, values) = filter.sql();
    let keys: String = by.iter().map(|d| format!("{}, ", d.sql())).collect();
    let join = feedback_join(conn)?;
    let sql = format!(
        "SELECT {keys} error_type IS NOT NULL, input_tokens, output_tokens, cache_read_tokens,
         cost_nusd, duration_us, ttfc_us, fb_n, fb_scored, fb_sum, fb_neg
         FROM exchanges {join} {cond}"
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(values))?;
    let mut groups: HashMap<Vec<Option<String>>, Acc> = HashMap::new();
    let n = by.len();
    let tok = |v: Option<i64>| v.map_or(0, |v| u64::try_from(v).unwrap_or(0));
    while let Some(r) = rows.next()? {
        let key = (0..n)
            .map(|i| r.get::<_, Option<String>>(i))
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let acc = groups.entry(key).or_default();
        acc.requests += 1;
        acc.errors += u64::from(r.get::<_, bool>(n)?);
        // Token counts come from upstream: absurd ones saturate rather than wrap.
        acc.input = acc.input.saturating_add(tok(r.get(n + 1)?));
        acc.output = acc.output.saturating_add(tok(r.get(n + 2)?));
        acc.cached = acc.cached.saturating_add(tok(r.get(n + 3)?));
        if let Some(c) = r.get::<_, Option<i64>>(n + 4)? {
            acc.cost += i128::from(c);
            acc.priced += 1;
        }
        acc.durations.push(r.get(n + 5)?);
        if let Some(t) = r.get::<_, Option<i64>>(n + 6)? {
            acc.ttfc.push(t);
        }
        if r.get::<_, Option<i64>>(n + 7)?.unwrap_or(0) > 0 {
            acc.feedback.rated += 1;
            acc.feedback.scored += tok(r.get(n + 8)?);
            acc.feedback.sum += r.get::<_, Option<f64>>(n + 9)?.unwrap_or(0.0);
            acc.feedback.negative += u64::from(r.get::<_, Option<i64>>(n + 10)?.unwrap_or(0) > 0);
        }
    }
    let mut total = Acc::default();
    let mut out: Vec<ReportRow> = groups
        .into_iter()
        .map(|(key, acc)| {
            total.add(&acc);
            acc.finish(key)
        })
        .collect();
    out.sort_by(|a, b| {
        b.cost_nusd
            .cmp(&a.cost_nusd)
            .then_with(|| a.group.cmp(&b.group))
    });
    if by.iter().any(|d| matches!(d, Dim::Day | Dim::Hour)) && by.len() == 1 {
        out.sort_by(|a, b| a.group.cmp(&b.group));
    }
    Ok(Report {
        by: by.iter().map(|d| d.name()).collect(),
        rows: out,
        total: total.finish(Vec::new()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), Some(50));
        assert_eq!(percentile(&v, 95), Some(95));
        assert_eq!(percentile(&v, 99), Some(99));
        assert_eq!(percentile(&[7], 99), Some(7));
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[1, 2, 3], 50), Some(2));
    }

    #[test]
    fn dims_parse_by_name_and_refuse_others_listing_the_choices() {
        for d in Dim::ALL {
            assert_eq!(d.name().parse::<Dim>(), Ok(d));
        }
        let e = "cost".parse::<Dim>().unwrap_err();
        assert!(e.contains("feature") && e.contains("finish_reason"), "{e}");
    }
}
