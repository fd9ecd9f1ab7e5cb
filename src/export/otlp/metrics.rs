//! # OTLP metrics: GenAI client histograms per record, and the periodic metrics request.
//!
//! Fourth stage of the OTLP encoder: [`observe`] adds one record's points to the cumulative
//! histograms (`gen_ai.client.token.usage`, `gen_ai.client.operation.duration`,
//! `gen_ai.client.operation.time_to_first_chunk`, otel-genai.md §1.3) that the batcher keeps;
//! [`metrics_request`] turns them, plus every entry of veil's counter registry (`veil.*`,
//! [`Counters::visit`]), into one `ExportMetricsServiceRequest`.
//!
//! Owns: the GenAI histograms' names, units, descriptions and series attributes. veil's own
//! counters, with their names, units and help, live in [`crate::counters`]; this file only
//! reads them, all of them, so a counter added there is exported without a change here.

use std::time::SystemTime;

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    self as pm, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric,
    number_data_point,
};

use super::attributes::{bool_value, error_type, int_value, kv, str_value};
use super::resource::ResourceInfo;
use super::{SCHEMA_URL, scope, unix_nanos};
use crate::counters::{Counters, MetricDesc, MetricKind};
use crate::export::metrics::{DURATION_BUCKETS, Histograms, SeriesKey, SeriesValue, TOKEN_BUCKETS};
use crate::record::Record;

fn series_base(r: &Record) -> SeriesKey {
    let mut k: SeriesKey = vec![
        (
            "gen_ai.operation.name",
            SeriesValue::Str(r.operation.as_str().to_string()),
        ),
        (
            "gen_ai.provider.name",
            SeriesValue::Str(r.provider.as_str().to_string()),
        ),
        ("server.address", SeriesValue::Str(r.server_address.clone())),
        ("server.port", SeriesValue::Int(i64::from(r.server_port))),
    ];
    if let Some(m) = &r.request_model {
        k.push(("gen_ai.request.model", SeriesValue::Str(m.clone())));
    }
    if let Some(m) = &r.response_model {
        k.push(("gen_ai.response.model", SeriesValue::Str(m.clone())));
    }
    k
}

/// Adds one record's points to the GenAI client histograms (otel-genai.md §1.3).
pub fn observe(h: &mut Histograms, r: &Record) {
    let base = series_base(r);
    for (ty, n) in [
        ("input", r.usage.input_tokens),
        ("output", r.usage.output_tokens),
    ] {
        // Without counts, MUST NOT report.
        if let Some(n) = n {
            let mut k = base.clone();
            k.push(("gen_ai.token.type", SeriesValue::Str(ty.to_string())));
            k.sort();
            h.record("gen_ai.client.token.usage", TOKEN_BUCKETS, k, n as f64);
        }
    }
    let mut k = base.clone();
    if let Some(e) = error_type(r) {
        k.push(("error.type", SeriesValue::Str(e)));
    }
    k.sort();
    h.record(
        "gen_ai.client.operation.duration",
        DURATION_BUCKETS,
        k,
        r.duration.as_secs_f64(),
    );
    if let Some(t) = r.time_to_first_chunk {
        let mut k = base;
        k.sort();
        h.record(
            "gen_ai.client.operation.time_to_first_chunk",
            DURATION_BUCKETS,
            k,
            t.as_secs_f64(),
        );
    }
}

fn metric_meta(name: &str) -> (&'static str, &'static str) {
    match name {
        "gen_ai.client.token.usage" => ("{token}", "Number of input and output tokens used."),
        "gen_ai.client.operation.duration" => ("s", "GenAI operation duration."),
        "gen_ai.client.operation.time_to_first_chunk" => {
            ("s", "Time to receive the first chunk of a response.")
        }
        _ => ("", ""),
    }
}

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

/// The metrics request: cumulative histograms since `start` plus every entry of `counters`.
pub fn metrics_request(
    res: &ResourceInfo,
    h: &Histograms,
    counters: &Counters,
    start: SystemTime,
    now: SystemTime,
) -> ExportMetricsServiceRequest {
    let (start, now) = (unix_nanos(start), unix_nanos(now));
    let mut metrics = Vec::new();
    for (name, series) in &h.series {
        let (unit, desc) = metric_meta(name);
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
        metrics.push(Metric {
            name: name.to_string(),
            description: desc.to_string(),
            unit: unit.to_string(),
            metadata: Vec::new(),
            data: Some(metric::Data::Histogram(pm::Histogram {
                data_points: points,
                aggregation_temporality: 2,
            })),
        });
    }
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
