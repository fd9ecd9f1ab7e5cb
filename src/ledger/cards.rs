//! # Cost cards: the unit cost of a deliverable, per feature.
//!
//! An agent run or a multi-call task is many exchanges. Exchanges are grouped into tasks by
//! the app's trace (an exchange that carried a W3C `traceparent`), else by the provider's
//! conversation id, else each exchange is its own task; a card then summarizes a feature's
//! tasks: how many, what one costs (p50, p90, total), how many calls and tokens one takes, how
//! long one runs (first request to last response), and how often one has an error.

use std::collections::BTreeMap;

use rusqlite::Connection;

use super::LedgerError;
use super::report::{FeedbackAcc, Filter, feedback_join, percentile};

/// The task an exchange belongs to, as SQL over `exchanges`.
const TASK: &str = "CASE WHEN parent_span_id IS NOT NULL THEN 'trace:' || trace_id
    WHEN conversation IS NOT NULL THEN 'conversation:' || conversation
    ELSE 'request:' || request_id END";

/// One feature's card.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Card {
    /// The feature (`None`: exchanges without a feature tag).
    pub feature: Option<String>,
    /// Tasks.
    pub tasks: u64,
    /// Exchanges in those tasks.
    pub calls: u64,
    /// Mean calls per task.
    pub calls_per_task: f64,
    /// Median task cost, USD (tasks with every price known).
    pub cost_p50_usd: Option<f64>,
    /// 90th percentile task cost, USD.
    pub cost_p90_usd: Option<f64>,
    /// Median task cost, nano-USD (exact; `cost_p50_usd` is this over 10⁹).
    pub cost_p50_nusd: Option<i64>,
    /// 90th percentile task cost, nano-USD (exact).
    pub cost_p90_nusd: Option<i64>,
    /// Total cost, nano-USD (exact).
    pub cost_total_nusd: i128,
    /// Total cost, USD.
    pub cost_total_usd: f64,
    /// Tasks with at least one exchange of unknown price (left out of the percentiles).
    pub unpriced_tasks: u64,
    /// Mean input + output tokens per task.
    pub tokens_per_task: f64,
    /// Median task latency (first request to last response), ms.
    pub latency_p50_ms: Option<f64>,
    /// 90th percentile task latency, ms.
    pub latency_p90_ms: Option<f64>,
    /// Share of tasks with at least one failed exchange.
    pub error_rate: f64,
    /// Share of tasks with at least one feedback (on any of their exchanges).
    pub share_rated: f64,
    /// Mean of every feedback score given to the tasks' exchanges (`None`: no score).
    pub mean_score: Option<f64>,
    /// Share of the rated tasks with a negative feedback (a score below 0 or a negative
    /// label, see [`NEGATIVE_LABELS`](super::report::NEGATIVE_LABELS)); `None`: none rated.
    pub share_negative: Option<f64>,
}

#[derive(Default)]
struct Acc {
    tasks: u64,
    calls: u64,
    costs: Vec<i64>,
    total: i128,
    unpriced: u64,
    tokens: u64,
    latencies: Vec<i64>,
    failed: u64,
    feedback: FeedbackAcc,
}

/// The cost cards of the exchanges `filter` selects, one per feature, most expensive first.
///
/// # Errors
/// [`LedgerError::Query`] when the database cannot be read.
pub fn cards(conn: &Connection, filter: &Filter) -> Result<Vec<Card>, LedgerError> {
    let (cond, values) = filter.sql();
    let join = feedback_join(conn)?;
    let sql = format!(
        "SELECT feature, COUNT(*), SUM(cost_nusd), COUNT(cost_nusd),
                SUM(COALESCE(input_tokens, 0) + COALESCE(output_tokens, 0)),
                MAX(error_type IS NOT NULL),
                CAST((MAX(unixepoch(start, 'subsec') * 1e6 + duration_us)
                      - MIN(unixepoch(start, 'subsec') * 1e6)) AS INTEGER),
                MAX(COALESCE(fb_n, 0) > 0), SUM(COALESCE(fb_scored, 0)), SUM(fb_sum),
                MAX(COALESCE(fb_neg, 0))
         FROM exchanges {join} {cond} GROUP BY feature, {TASK}"
    );
    let mut stmt = conn.prepare(&sql)?;
    let mut rows = stmt.query(rusqlite::params_from_iter(values))?;
    let mut by_feature: BTreeMap<Option<String>, Acc> = BTreeMap::new();
    while let Some(r) = rows.next()? {
        let acc = by_feature.entry(r.get(0)?).or_default();
        let calls: i64 = r.get(1)?;
        let cost: Option<i64> = r.get(2)?;
        let priced: i64 = r.get(3)?;
        acc.tasks += 1;
        acc.calls += u64::try_from(calls).unwrap_or(0);
        acc.total += i128::from(cost.unwrap_or(0));
        if priced == calls {
            acc.costs.push(cost.unwrap_or(0));
        } else {
            acc.unpriced += 1;
        }
        acc.tokens += u64::try_from(r.get::<_, i64>(4)?).unwrap_or(0);
        acc.failed += u64::from(r.get::<_, bool>(5)?);
        acc.latencies
            .push(r.get::<_, Option<i64>>(6)?.unwrap_or(0).max(0));
        if r.get::<_, bool>(7)? {
            acc.feedback.rated += 1;
            acc.feedback.scored += u64::try_from(r.get::<_, i64>(8)?).unwrap_or(0);
            acc.feedback.sum += r.get::<_, Option<f64>>(9)?.unwrap_or(0.0);
            acc.feedback.negative += u64::from(r.get::<_, bool>(10)?);
        }
    }
    let mut cards: Vec<Card> = by_feature
        .into_iter()
        .map(|(feature, mut a)| {
            a.costs.sort_unstable();
            a.latencies.sort_unstable();
            let usd = |p| percentile(&a.costs, p).map(|n| n as f64 / 1e9);
            let ms = |p| percentile(&a.latencies, p).map(|us| us as f64 / 1000.0);
            let per_task = |n: u64| n as f64 / a.tasks.max(1) as f64;
            let (share_rated, mean_score, share_negative) = a.feedback.shares(a.tasks);
            Card {
                feature,
                tasks: a.tasks,
                calls: a.calls,
                calls_per_task: per_task(a.calls),
                cost_p50_usd: usd(50),
                cost_p90_usd: usd(90),
                cost_p50_nusd: percentile(&a.costs, 50),
                cost_p90_nusd: percentile(&a.costs, 90),
                cost_total_nusd: a.total,
                cost_total_usd: a.total as f64 / 1e9,
                unpriced_tasks: a.unpriced,
                tokens_per_task: per_task(a.tokens),
                latency_p50_ms: ms(50),
                latency_p90_ms: ms(90),
                error_rate: per_task(a.failed),
                share_rated,
                mean_score,
                share_negative,
            }
        })
        .collect();
    cards.sort_by(|a, b| {
        b.cost_total_nusd
            .cmp(&a.cost_total_nusd)
            .then_with(|| a.feature.cmp(&b.feature))
    });
    Ok(cards)
}
