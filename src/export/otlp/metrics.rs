//! # OTLP metrics: the periodic metrics request.
//!
//! Fourth stage of the OTLP encoder: [`metrics_request`] turns the registry, all of it, into
//! one `ExportMetricsServiceRequest`: the per-exchange series ([`Counters::series`]: the GenAI
//! client histograms of otel-genai.md §1.3 and veil's labelled sums, which
//! [`crate::export::metrics::observe`] fills) and every fixed entry (`veil.*`,
//! [`Counters::visit`]).
//!
//! Owns: the OTLP shape only. Names, units, help and attributes live in [`crate::counters`]
//! and are read, all of them, so a metric added there is exported without a change here.

use std::time::SystemTime;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    self as pm, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric,
    number_data_point,
};

use super::attributes::{bool_value, int_value, kv, str_value};
use super::resource::ResourceInfo;
use super::{SCHEMA_URL, scope, unix_nanos};
use crate::counters::series::{SERIES, SeriesKey, SeriesValue};
use crate::counters::{Counters, MetricDesc, MetricKind};

fn series_attrs(k: &SeriesKey) -> Vec<KeyValue> {
    k.iter()
        .map(|(name, v)| match v {
            SeriesValue::Str(s) => kv(name, str_value(s)),
            SeriesValue::Int(i) => kv(name, int_value(*i)),
            SeriesValue::Bool(b) => kv(name, bool_value(*b)),
        })
        .collect()
}

/// One point of a `veil.*` metric: its value, and its label when the name is split by one.
fn counter_point(d: &MetricDesc, v: u64, start: u64, now: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes: d
            .label
            .map(|(key, value)| vec![kv(key, str_value(value))])
            .unwrap_or_default(),
        start_time_unix_nano: start,
        time_unix_nano: now,
        exemplars: Vec::new(),
        flags: 0,
        value: Some(number_data_point::Value::AsInt(
            i64::try_from(v).unwrap_or(i64::MAX),
        )),
    }
}

/// Every entry of the registry as OTLP metrics: a counter is a cumulative monotonic sum, a
/// gauge a gauge; the entries sharing a name (one per label value, e.g. every
/// `veil.drop.reason` of `veil.exchanges.dropped`) become the points of one metric, in
/// registry order.
fn registry_metrics(c: &Counters, start: u64, now: u64) -> Vec<Metric> {
    let mut out: Vec<Metric> = Vec::new();
    c.visit(&mut |d, v| {
        let point = counter_point(d, v, start, now);
        // Linear: about 40 entries, once per metrics interval.
        if let Some(m) = out.iter_mut().find(|m| m.name == d.name) {
            match &mut m.data {
                Some(metric::Data::Sum(sum)) => sum.data_points.push(point),
                Some(metric::Data::Gauge(g)) => g.data_points.push(point),
                _ => {}
            }
            return;
        }
        let data = match d.kind {
            MetricKind::Counter => metric::Data::Sum(pm::Sum {
                data_points: vec![point],
                aggregation_temporality: 2,
                is_monotonic: true,
            }),
            MetricKind::Gauge => metric::Data::Gauge(pm::Gauge {
                data_points: vec![point],
            }),
        };
        out.push(Metric {
            name: d.name.to_string(),
            description: d.help.to_string(),
            unit: d.unit.to_string(),
            metadata: Vec::new(),
            data: Some(data),
        });
    });
    out
}

/// The metrics request: every series and registry entry, cumulative since `start`.
pub fn metrics_request(
    res: &ResourceInfo,
    counters: &Counters,
    start: SystemTime,
    now: SystemTime,
) -> ExportMetricsServiceRequest {
    let (start, now) = (unix_nanos(start), unix_nanos(now));
    let mut metrics = Vec::new();
    let state = counters.series.lock();
    for desc in SERIES {
        let data = if let Some(series) = state.histograms.get(desc.name) {
            let points = series
                .iter()
                .map(|(k, hist)| HistogramDataPoint {
                    attributes: series_attrs(k),
                    start_time_unix_nano: start,
                    time_unix_nano: now,
                    count: hist.count,
                    sum: Some(hist.sum),
                    bucket_counts: hist.counts.clone(),
                    explicit_bounds: hist.bounds.to_vec(),
                    exemplars: Vec::new(),
                    flags: 0,
                    min: Some(hist.min),
                    max: Some(hist.max),
                })
                .collect();
            metric::Data::Histogram(pm::Histogram {
                data_points: points,
                aggregation_temporality: 2,
            })
        } else if let Some(series) = state.sums.get(desc.name) {
            let points = series
                .iter()
                .map(|(k, v)| NumberDataPoint {
                    attributes: series_attrs(k),
                    start_time_unix_nano: start,
                    time_unix_nano: now,
                    exemplars: Vec::new(),
                    flags: 0,
                    value: Some(number_data_point::Value::AsDouble(*v)),
                })
                .collect();
            metric::Data::Sum(pm::Sum {
                data_points: points,
                aggregation_temporality: 2,
                is_monotonic: true,
            })
        } else {
            continue;
        };
        metrics.push(Metric {
            name: desc.name.to_string(),
            description: desc.help.to_string(),
            unit: desc.unit.to_string(),
            metadata: Vec::new(),
            data: Some(data),
        });
    }
    drop(state);
    metrics.extend(registry_metrics(counters, start, now));
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(res.to_proto()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics,
                schema_url: SCHEMA_URL.to_string(),
            }],
            schema_url: String::new(),
        }],
    }
}
