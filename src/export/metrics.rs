//! # Metrics: the GenAI client histograms.
//!
//! [`Histograms`] aggregates the `gen_ai.client.*` histograms per attribute set; it is owned by
//! the exporter's batcher and encoded as cumulative OTLP points. veil's own counters are not
//! here: they live in the one registry, [`crate::counters::Counters`], which the exporter is
//! handed and counts in like every other step.
//!
//! Owns: numbers only. Never touches a record's content.

use std::collections::BTreeMap;

/// Bucket bounds of `gen_ai.client.token.usage`, as the semantic conventions recommend
/// (powers of 4 from 1 to 64 Mi tokens: covers one-token pings up to long-context prompts).
pub const TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// Bucket bounds (seconds) of `gen_ai.client.operation.duration` and the time-to-first-chunk
/// histogram, as the semantic conventions recommend (doubling from 10 ms to 82 s).
pub const DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];

/// One fixed-bound histogram (cumulative since the exporter started).
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    /// Upper bounds of the buckets (`explicit_bounds`).
    pub bounds: &'static [f64],
    /// One count per bucket, `bounds.len() + 1` of them.
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
    /// (OTLP buckets are `(bound[i-1], bound[i]]`).
    pub fn record(&mut self, v: f64) {
        let i = self.bounds.partition_point(|b| *b < v);
        self.counts[i] += 1;
        self.count += 1;
        self.sum += v;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }
}

/// Attribute set of one histogram series, sorted by key.
pub type SeriesKey = Vec<(&'static str, SeriesValue)>;

/// A series attribute value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum SeriesValue {
    /// A string attribute.
    Str(String),
    /// An integer attribute.
    Int(i64),
    /// A boolean attribute.
    Bool(bool),
}

/// Most series one histogram keeps. The model name comes from the app's request, so an app
/// could otherwise grow memory without bound; past this, points go to one overflow series
/// marked `otel.metric.overflow = true`, as the OpenTelemetry SDKs do.
pub const MAX_SERIES: usize = 2000;

/// The GenAI client histograms, keyed by metric name and attribute set.
#[derive(Debug, Default)]
pub struct Histograms {
    /// metric name → series → histogram.
    pub series: BTreeMap<&'static str, BTreeMap<SeriesKey, Histogram>>,
}

impl Histograms {
    /// Records `v` into `metric` for the series `key`.
    pub fn record(&mut self, metric: &'static str, bounds: &'static [f64], key: SeriesKey, v: f64) {
        let series = self.series.entry(metric).or_default();
        let key = if series.len() >= MAX_SERIES && !series.contains_key(&key) {
            vec![("otel.metric.overflow", SeriesValue::Bool(true))]
        } else {
            key
        };
        series
            .entry(key)
            .or_insert_with(|| Histogram::new(bounds))
            .record(v);
    }

    /// True when nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }

    #[test]
    fn series_are_capped() {
        let mut h = Histograms::default();
        for i in 0..(MAX_SERIES + 10) {
            let key = vec![("gen_ai.request.model", SeriesValue::Str(format!("m{i}")))];
            h.record("x", DURATION_BUCKETS, key, 1.0);
        }
        let series = &h.series["x"];
        assert_eq!(series.len(), MAX_SERIES + 1);
        let overflow = vec![("otel.metric.overflow", SeriesValue::Bool(true))];
        assert_eq!(series[&overflow].count, 10);
    }
}
