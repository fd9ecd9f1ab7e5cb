//! Per-exchange series: the GenAI histograms and the labelled per-exchange counters (requests,
//! cost, tokens, rate limits, retries, veil's added latency), kept in the one registry beside
//! the fixed counters so that `/metrics`, the OTLP metrics request and the shutdown summary
//! read the same numbers.
//!
//! Unlike a [`Counter`](super::Counter), a series is keyed by an attribute set that comes from
//! traffic (model, feature, finish reason), so it lives in maps behind one mutex. One writer
//! takes it once per record: the exporter's batcher thread ([`Series::lock`]), off the hot
//! path; readers (a scrape, the metrics interval) take it for the length of one encoding.
//!
//! **Cardinality is bounded twice.** Values an app chooses (`gen_ai.request.model`,
//! `gen_ai.response.model`, `veil.feature`) go through [`SeriesState::cap`]: the first
//! [`MAX_VALUES`] distinct values of each key are kept, later new ones become `other` and are
//! counted (`veil.metrics.values.capped`). Behind that, each metric keeps at most
//! [`MAX_SERIES`] attribute sets; past it, points go to one overflow series marked
//! `otel.metric.overflow = true`, as the OpenTelemetry SDKs do.
//!
//! Attribute keys are OpenTelemetry names (`gen_ai.request.model`); a Prometheus encoder
//! replaces dots with underscores. Values are any text: encoders escape them.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

/// Bucket bounds of `gen_ai.client.token.usage`, as the semantic conventions recommend
/// (powers of 4 from 1 to 64 Mi tokens: covers one-token pings up to long-context prompts).
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// Bucket bounds (seconds) of `gen_ai.client.operation.duration`, time to first chunk and time
/// per output chunk, as the semantic conventions recommend (doubling from 10 ms to 82 s).
pub const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// Bucket bounds (seconds) of `veil.added_latency`: veil's own time on a request or a
/// response head, from 50 µs to 100 ms (the semantic-convention buckets start at 10 ms, where
/// a proxy's overhead would be a failure, not a measurement).
pub const ADDED_LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
];

/// Most attribute sets one metric keeps (see the module docs).
pub const MAX_SERIES: usize = 2000;

/// Most distinct values kept per capped attribute key (model, feature); later ones are
/// `other`.
pub const MAX_VALUES: usize = 100;

/// The value a capped key's later values become.
pub const OTHER: &str = "other";

/// What a series metric is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SeriesKind {
    /// A histogram over these bucket bounds (upper-inclusive, plus an overflow bucket).
    Histogram(&'static [f64]),
    /// A monotonic sum (integer counts and fractional dollars alike, as `f64`: exact for
    /// integers below 2^53).
    Counter,
}

/// One series metric: its OpenTelemetry name, Prometheus name, kind, unit and help.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeriesDesc {
    /// OpenTelemetry name, e.g. `gen_ai.client.operation.duration`.
    pub name: &'static str,
    /// Prometheus name, units in it and without `_total` (the encoder adds that to a counter),
    /// e.g. `gen_ai_client_operation_duration_seconds`.
    pub prometheus: &'static str,
    /// Histogram or counter.
    pub kind: SeriesKind,
    /// UCUM unit (`s`, `{token}`, `{request}`, `USD`).
    pub unit: &'static str,
    /// One sentence for operators.
    pub help: &'static str,
}

/// `gen_ai.client.operation.duration` (otel-genai.md §1.3).
pub const OPERATION_DURATION: SeriesDesc = SeriesDesc {
    name: "gen_ai.client.operation.duration",
    prometheus: "gen_ai_client_operation_duration_seconds",
    kind: SeriesKind::Histogram(DURATION_BUCKETS),
    unit: "s",
    help: "GenAI operation duration.",
};

/// `gen_ai.client.token.usage` (otel-genai.md §1.3): input and output tokens per exchange.
pub const TOKEN_USAGE: SeriesDesc = SeriesDesc {
    name: "gen_ai.client.token.usage",
    prometheus: "gen_ai_client_token_usage",
    kind: SeriesKind::Histogram(TOKEN_BUCKETS),
    unit: "{token}",
    help: "Number of input and output tokens used.",
};

/// `gen_ai.client.operation.time_to_first_chunk` (otel-genai.md §1.3), streams only.
pub const TIME_TO_FIRST_CHUNK: SeriesDesc = SeriesDesc {
    name: "gen_ai.client.operation.time_to_first_chunk",
    prometheus: "gen_ai_client_operation_time_to_first_chunk_seconds",
    kind: SeriesKind::Histogram(DURATION_BUCKETS),
    unit: "s",
    help: "Time to receive the first chunk of a response.",
};

/// `gen_ai.client.operation.time_per_output_chunk` (otel-genai.md §1.3): one point per chunk
/// after the first, the gap since the one before.
pub const TIME_PER_OUTPUT_CHUNK: SeriesDesc = SeriesDesc {
    name: "gen_ai.client.operation.time_per_output_chunk",
    prometheus: "gen_ai_client_operation_time_per_output_chunk_seconds",
    kind: SeriesKind::Histogram(DURATION_BUCKETS),
    unit: "s",
    help: "Time between consecutive chunks of a streamed response.",
};

/// `veil.requests`: exchanges by provider, operation, model, feature, status class, outcome,
/// error type and finish reason.
pub const REQUESTS: SeriesDesc = SeriesDesc {
    name: "veil.requests",
    prometheus: "veil_requests",
    kind: SeriesKind::Counter,
    unit: "{request}",
    help: "Exchanges recorded, by provider, operation, model, feature, status class, outcome, error type and finish reason.",
};

/// `veil.cost`: cost in US dollars from the pricing table, by provider, model and feature.
pub const COST: SeriesDesc = SeriesDesc {
    name: "veil.cost",
    prometheus: "veil_cost_usd",
    kind: SeriesKind::Counter,
    unit: "USD",
    help: "Cost of the exchanges in US dollars, from the pricing table.",
};

/// `veil.tokens`: tokens by provider, model, feature and type (input, output, cache_read,
/// cache_write, reasoning).
pub const TOKENS: SeriesDesc = SeriesDesc {
    name: "veil.tokens",
    prometheus: "veil_tokens",
    kind: SeriesKind::Counter,
    unit: "{token}",
    help: "Tokens the provider reported, by type: input, output, cache_read, cache_write, reasoning.",
};

/// `veil.upstream.rate_limited`: upstream answers 429 (rate limited) and 529 (overloaded).
pub const RATE_LIMITED: SeriesDesc = SeriesDesc {
    name: "veil.upstream.rate_limited",
    prometheus: "veil_upstream_rate_limited",
    kind: SeriesKind::Counter,
    unit: "{request}",
    help: "Upstream answers 429 (rate limited) and 529 (overloaded), by provider and status code.",
};

/// `veil.retries`: requests an SDK marked as a retry, or whose body repeated one seen
/// shortly before.
pub const RETRIES: SeriesDesc = SeriesDesc {
    name: "veil.retries",
    prometheus: "veil_retries",
    kind: SeriesKind::Counter,
    unit: "{request}",
    help: "Requests that retried an earlier one: an SDK retry header, or the same body again within the retry window.",
};

/// `veil.added_latency`: veil's own time on the request (head received to sent upstream) and
/// on the response head (received from upstream to handed to the app).
pub const ADDED_LATENCY: SeriesDesc = SeriesDesc {
    name: "veil.added_latency",
    prometheus: "veil_added_latency_seconds",
    kind: SeriesKind::Histogram(ADDED_LATENCY_BUCKETS),
    unit: "s",
    help: "Time veil itself adds: direction=request from request head to upstream send, direction=response from upstream response head to the app.",
};

/// Every series metric, in exposition order.
pub const SERIES: &[SeriesDesc] = &[
    REQUESTS,
    COST,
    TOKENS,
    RATE_LIMITED,
    RETRIES,
    OPERATION_DURATION,
    TOKEN_USAGE,
    TIME_TO_FIRST_CHUNK,
    TIME_PER_OUTPUT_CHUNK,
    ADDED_LATENCY,
];

/// Attribute set of one series, sorted by key.
pub type SeriesKey = Vec<(&'static str, SeriesValue)>;

/// A series attribute value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SeriesValue {
    /// A string attribute.
    Str(Text),
    /// An integer attribute.
    Int(i64),
    /// A boolean attribute.
    Bool(bool),
}

/// The text of a string attribute: a name veil itself writes (a provider, an operation, a
/// token type: no allocation), or a value that came with traffic, shared so the attribute
/// lists built for one record's dozen series clone it by its count, not its bytes
/// (`export::metrics::observe`). Compared, ordered and hashed as the `str` it holds, so the
/// two forms of one text are the same attribute value.
#[derive(Debug, Clone)]
pub enum Text {
    /// Text that lives as long as the program.
    Static(&'static str),
    /// Text from traffic.
    Shared(Arc<str>),
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Text::Static(s) => s,
            Text::Shared(s) => s,
        }
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Text {}

impl PartialOrd for Text {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Text {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (**self).cmp(&**other)
    }
}

impl std::hash::Hash for Text {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state)
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text::Shared(s.into())
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text::Shared(s.into())
    }
}

impl std::fmt::Display for SeriesValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SeriesValue::Str(s) => f.write_str(s),
            SeriesValue::Int(i) => write!(f, "{i}"),
            SeriesValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// One fixed-bound histogram (cumulative since the process started).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Upper bounds of the buckets (`explicit_bounds`).
    pub bounds: &'static [f64],
    /// One count per bucket, `bounds.len() + 1` of them (the last: above every bound).
    pub counts: Vec<u64>,
    /// Number of observations.
    pub count: u64,
    /// Sum of observations.
    pub sum: f64,
    /// Smallest observation.
    pub min: f64,
    /// Largest observation.
    pub max: f64,
}

impl Histogram {
    /// An empty histogram over `bounds`.
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: vec![0; bounds.len() + 1],
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    /// Records one observation. A value equal to a bound falls in that bound's bucket
    /// (OTLP and Prometheus buckets are `(bound[i-1], bound[i]]`).
    pub fn record(&mut self, v: f64) {
        self.record_n(v, 1);
    }

    /// Records `n` observations of `v` at once.
    pub fn record_n(&mut self, v: f64, n: u64) {
        if n == 0 {
            return;
        }
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += n;
        self.count += n;
        self.sum += v * n as f64;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
}

/// The gaps between a streamed response's consecutive data chunks, bucketed where they
/// happen (the proxy's body tee) over [`DURATION_BUCKETS`], so a stream of any length costs a
/// fixed 80 bytes and one clock read per chunk. Becomes
/// `gen_ai.client.operation.time_per_output_chunk` points, one per gap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkGaps {
    /// Gaps per bucket of [`DURATION_BUCKETS`] (the last: above every bound).
    pub counts: [u32; DURATION_BUCKETS.len() + 1],
    /// Sum of the gaps, microseconds.
    pub sum_us: u64,
    /// Smallest and largest gap, microseconds (`u32::MAX` and 0 while empty).
    pub min_us: u32,
    /// Largest gap, microseconds.
    pub max_us: u32,
}

impl Default for ChunkGaps {
    fn default() -> Self {
        ChunkGaps::new()
    }
}

impl ChunkGaps {
    /// An empty set of gaps.
    pub const fn new() -> Self {
        ChunkGaps {
            counts: [0; DURATION_BUCKETS.len() + 1],
            sum_us: 0,
            min_us: u32::MAX,
            max_us: 0,
        }
    }

    /// Counts one gap.
    pub fn record(&mut self, gap: std::time::Duration) {
        let secs = gap.as_secs_f64();
        let i = DURATION_BUCKETS.partition_point(|b| *b < secs);
        self.counts[i] = self.counts[i].saturating_add(1);
        let us = u32::try_from(gap.as_micros()).unwrap_or(u32::MAX);
        self.sum_us = self.sum_us.saturating_add(u64::from(us));
        self.min_us = self.min_us.min(us);
        self.max_us = self.max_us.max(us);
    }

    /// Number of gaps counted.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| u64::from(*c)).sum()
    }
}

/// The maps behind [`Series`]: histograms and sums by metric name and attribute set, and the
/// values seen per capped key.
#[derive(Debug, Default)]
pub struct SeriesState {
    /// metric name → attribute set → histogram.
    pub histograms: BTreeMap<&'static str, BTreeMap<SeriesKey, Histogram>>,
    /// metric name → attribute set → running sum.
    pub sums: BTreeMap<&'static str, BTreeMap<SeriesKey, f64>>,
    /// capped key → the values kept for it (handed out shared, not copied per record).
    kept: BTreeMap<&'static str, HashSet<Arc<str>>>,
}

impl SeriesState {
    /// `value` if it is one of the first [`MAX_VALUES`] distinct values of `key`, else
    /// [`OTHER`]; `capped` is true when the value was replaced (the caller counts it).
    pub fn cap(&mut self, key: &'static str, value: &str) -> (SeriesValue, bool) {
        let kept = self.kept.entry(key).or_default();
        if let Some(v) = kept.get(value) {
            return (SeriesValue::Str(Text::Shared(v.clone())), false);
        }
        if kept.len() < MAX_VALUES {
            let v: Arc<str> = value.into();
            kept.insert(v.clone());
            return (SeriesValue::Str(Text::Shared(v)), false);
        }
        (SeriesValue::Str(Text::Static(OTHER)), true)
    }

    /// Records `v` into the histogram `desc` for the attribute set `key` (sorted here).
    /// `desc` must be a histogram; a counter's description is a no-op (a bug, caught by the
    /// tests).
    pub fn observe(&mut self, desc: &SeriesDesc, key: SeriesKey, v: f64) {
        self.observe_n(desc, key, v, 1);
    }

    /// Records `n` observations of `v` (see [`SeriesState::observe`]).
    pub fn observe_n(&mut self, desc: &SeriesDesc, mut key: SeriesKey, v: f64, n: u64) {
        let SeriesKind::Histogram(bounds) = desc.kind else {
            debug_assert!(false, "{} is not a histogram", desc.name);
            return;
        };
        key.sort();
        let series = self.histograms.entry(desc.name).or_default();
        slot(series, key, || Histogram::new(bounds)).record_n(v, n);
    }

    /// Adds a stream's chunk gaps to the histogram `desc` (which must have
    /// [`DURATION_BUCKETS`]) for the attribute set `key`.
    pub fn observe_gaps(&mut self, desc: &SeriesDesc, mut key: SeriesKey, gaps: &ChunkGaps) {
        let n = gaps.count();
        if n == 0 || desc.kind != SeriesKind::Histogram(DURATION_BUCKETS) {
            debug_assert!(n == 0, "{} has other buckets", desc.name);
            return;
        }
        key.sort();
        let series = self.histograms.entry(desc.name).or_default();
        let h = slot(series, key, || Histogram::new(DURATION_BUCKETS));
        for (total, c) in h.counts.iter_mut().zip(gaps.counts) {
            *total += u64::from(c);
        }
        h.count += n;
        h.sum += gaps.sum_us as f64 / 1e6;
        h.min = h.min.min(f64::from(gaps.min_us) / 1e6);
        h.max = h.max.max(f64::from(gaps.max_us) / 1e6);
    }

    /// Adds `v` to the counter `desc` for the attribute set `key` (sorted here).
    pub fn add(&mut self, desc: &SeriesDesc, mut key: SeriesKey, v: f64) {
        debug_assert!(desc.kind == SeriesKind::Counter, "{}", desc.name);
        key.sort();
        let series = self.sums.entry(desc.name).or_default();
        *slot(series, key, || 0.0) += v;
    }

    /// True when nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.histograms.is_empty() && self.sums.is_empty()
    }
}

/// The series of `key` in one metric's `series`, made with `new` when it is new; once the
/// metric has [`MAX_SERIES`] series a new key goes to the overflow attribute set instead.
/// One search of the map while the metric is not full: a record updates about a dozen series,
/// and stop 53's profile of the exporter's thread with OTLP on put those updates at 17 % of it
/// (docs/performance.md).
fn slot<V>(series: &mut BTreeMap<SeriesKey, V>, key: SeriesKey, new: impl FnOnce() -> V) -> &mut V {
    let key = if series.len() >= MAX_SERIES && !series.contains_key(&key) {
        vec![("otel.metric.overflow", SeriesValue::Bool(true))]
    } else {
        key
    };
    series.entry(key).or_insert_with(new)
}

/// The per-exchange series of the registry (see the module docs).
#[derive(Debug, Default)]
pub struct Series(Mutex<SeriesState>);

impl Series {
    /// The maps, for one record's observations or one encoding. A poisoned lock (a panic
    /// while holding it, which the maps' operations cannot cause) still yields the maps:
    /// numbers are never worth a second panic.
    pub fn lock(&self) -> MutexGuard<'_, SeriesState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_and_shared_text_are_one_attribute_value() {
        use std::collections::HashSet;
        let fixed = SeriesValue::Str(Text::Static("stop"));
        let shared = SeriesValue::Str(Text::from("stop"));
        assert_eq!(fixed, shared);
        assert_eq!(fixed.cmp(&shared), std::cmp::Ordering::Equal);
        assert!(HashSet::from([fixed.clone()]).contains(&shared));
        assert!(SeriesValue::Str(Text::Static("length")) < shared);
        // One series whichever form a record used.
        let mut s = SeriesState::default();
        s.add(
            &REQUESTS,
            vec![("gen_ai.response.finish_reason", fixed)],
            1.0,
        );
        s.add(
            &REQUESTS,
            vec![("gen_ai.response.finish_reason", shared)],
            2.0,
        );
        let series = &s.sums[REQUESTS.name];
        assert_eq!(series.len(), 1);
        assert_eq!(series.values().next(), Some(&3.0));
        assert_eq!(Text::from(String::from("x")).to_string(), "x");
    }

    #[test]
    fn histogram_buckets_are_upper_inclusive() {
        let mut h = Histogram::new(TOKEN_BUCKETS);
        h.record(1.0);
        h.record(2.0);
        h.record(1e9);
        assert_eq!(h.counts.len(), TOKEN_BUCKETS.len() + 1);
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[1], 1);
        assert_eq!(h.counts[TOKEN_BUCKETS.len()], 1);
        assert_eq!(h.count, 3);
        assert_eq!(h.min, 1.0);
        assert_eq!(h.max, 1e9);
        h.record_n(0.5, 3);
        assert_eq!((h.counts[0], h.count, h.sum), (4, 6, 1.0 + 2.0 + 1e9 + 1.5));
    }

    #[test]
    fn chunk_gaps_land_in_the_histogram_bucket_by_bucket() {
        use std::time::Duration;
        let mut g = ChunkGaps::new();
        g.record(Duration::from_millis(5));
        g.record(Duration::from_millis(10));
        g.record(Duration::from_millis(30));
        g.record(Duration::from_secs(100));
        assert_eq!(g.count(), 4);
        let mut s = SeriesState::default();
        s.observe_gaps(&TIME_PER_OUTPUT_CHUNK, vec![], &g);
        s.observe_gaps(&TIME_PER_OUTPUT_CHUNK, vec![], &ChunkGaps::new());
        let h = &s.histograms[TIME_PER_OUTPUT_CHUNK.name][&vec![]];
        let mut direct = Histogram::new(DURATION_BUCKETS);
        for v in [0.005, 0.01, 0.03, 100.0] {
            direct.record(v);
        }
        assert_eq!(h.counts, direct.counts);
        assert_eq!((h.count, h.min, h.max), (4, 0.005, 100.0));
        assert!((h.sum - direct.sum).abs() < 1e-9);
    }

    #[test]
    fn series_are_capped() {
        let mut s = SeriesState::default();
        for i in 0..(MAX_SERIES + 10) {
            let key = vec![(
                "gen_ai.request.model",
                SeriesValue::Str(format!("m{i}").into()),
            )];
            s.observe(&OPERATION_DURATION, key.clone(), 1.0);
            s.add(&REQUESTS, key, 1.0);
        }
        let overflow = vec![("otel.metric.overflow", SeriesValue::Bool(true))];
        let h = &s.histograms[OPERATION_DURATION.name];
        assert_eq!(h.len(), MAX_SERIES + 1);
        assert_eq!(h[&overflow].count, 10);
        let c = &s.sums[REQUESTS.name];
        assert_eq!(c.len(), MAX_SERIES + 1);
        assert_eq!(c[&overflow], 10.0);
    }

    #[test]
    fn values_past_the_cap_become_other() {
        let mut s = SeriesState::default();
        for i in 0..MAX_VALUES {
            assert_eq!(
                s.cap("veil.feature", &format!("f{i}")),
                (SeriesValue::Str(format!("f{i}").into()), false)
            );
        }
        assert_eq!(
            s.cap("veil.feature", "late"),
            (SeriesValue::Str(OTHER.into()), true)
        );
        assert_eq!(
            s.cap("veil.feature", "f7"),
            (SeriesValue::Str("f7".into()), false),
            "a kept value stays kept"
        );
        assert_eq!(
            s.cap("gen_ai.request.model", "late"),
            (SeriesValue::Str("late".into()), false),
            "each key has its own budget"
        );
    }

    #[test]
    fn keys_are_sorted_so_order_of_attributes_does_not_split_a_series() {
        let mut s = SeriesState::default();
        let a = ("a", SeriesValue::Int(1));
        let b = ("b", SeriesValue::Int(2));
        s.add(&TOKENS, vec![a.clone(), b.clone()], 2.0);
        s.add(&TOKENS, vec![b, a], 3.0);
        assert_eq!(s.sums[TOKENS.name].len(), 1);
        assert_eq!(s.sums[TOKENS.name].values().next(), Some(&5.0));
    }

    /// `docs/metrics.md` lists every series under both names.
    #[test]
    fn docs_metrics_md_lists_every_series() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/metrics.md");
        let doc = std::fs::read_to_string(path).expect("docs/metrics.md");
        for d in SERIES {
            let suffix = if d.kind == SeriesKind::Counter {
                "_total"
            } else {
                ""
            };
            let row = format!("| `{}` | `{}{suffix}` |", d.name, d.prometheus);
            assert!(doc.contains(&row), "docs/metrics.md has no row {row}");
        }
    }

    #[test]
    fn every_series_metric_is_named_both_ways() {
        for d in SERIES {
            assert!(
                d.prometheus.starts_with(&d.name.replace('.', "_")),
                "{} is not {} translated",
                d.prometheus,
                d.name
            );
            assert!(!d.prometheus.ends_with("_total"), "{}", d.prometheus);
            if d.unit == "s" {
                assert!(d.prometheus.ends_with("_seconds"), "{}", d.prometheus);
            }
            assert!(d.help.ends_with('.'), "{}", d.name);
        }
    }
}
