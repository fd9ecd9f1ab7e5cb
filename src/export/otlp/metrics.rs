//! # OTLP metrics: GenAI client histograms per record, and the periodic metrics request.
//!
//! Fourth stage of the OTLP encoder: [`observe`] adds one record's points to the cumulative
//! histograms (`gen_ai.client.token.usage`, `gen_ai.client.operation.duration`,
//! `gen_ai.client.operation.time_to_first_chunk`, otel-genai.md §1.3) that the batcher keeps;
//! [`metrics_request`] turns them, plus veil's own counters (`veil.*`,
//! [`Metrics`]), into one `ExportMetricsServiceRequest`.
//!
//! Owns: metric names, units, descriptions and series attributes. The counters themselves
//! live in `export::metrics`; this file only reads them.

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
use crate::export::metrics::{
    DURATION_BUCKETS, Histograms, Metrics, SeriesKey, SeriesValue, TOKEN_BUCKETS,
};
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

fn sum_metric(
    name: &str,
    desc: &str,
    unit: &str,
    v: u64,
    monotonic: bool,
    start: u64,
    now: u64,
) -> Metric {
    let point = NumberDataPoint {
        attributes: Vec::new(),
        start_time_unix_nano: start,
        time_unix_nano: now,
        exemplars: Vec::new(),
        flags: 0,
        value: Some(number_data_point::Value::AsInt(
            i64::try_from(v).unwrap_or(i64::MAX),
        )),
    };
    let data = if monotonic {
        metric::Data::Sum(pm::Sum {
            data_points: vec![point],
            aggregation_temporality: 2,
            is_monotonic: true,
        })
    } else {
        metric::Data::Gauge(pm::Gauge {
            data_points: vec![point],
        })
    };
    Metric {
        name: name.to_string(),
        description: desc.to_string(),
        unit: unit.to_string(),
        metadata: Vec::new(),
        data: Some(data),
    }
}

/// The metrics request: cumulative histograms since `start` plus veil's counters.
pub fn metrics_request(
    res: &ResourceInfo,
    h: &Histograms,
    m: &Metrics,
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
    let counters: [(&str, &str, &str, u64, bool); 9] = [
        (
            "veil.export.batches.delivered",
            "Batches the collector accepted.",
            "{batch}",
            m.batches_delivered.get(),
            true,
        ),
        (
            "veil.exchanges",
            "Exchanges recorded.",
            "{exchange}",
            m.exchanges.get(),
            true,
        ),
        (
            "veil.exchanges.content_dropped",
            "Exchanges recorded without their content: redaction exceeded its budget.",
            "{exchange}",
            m.content_dropped.get(),
            true,
        ),
        (
            "veil.export.failures",
            "Failed export attempts.",
            "{attempt}",
            m.export_failures.get(),
            true,
        ),
        (
            "veil.export.batches.rejected",
            "Batches given up after a non-retryable answer.",
            "{batch}",
            m.batches_rejected.get(),
            true,
        ),
        (
            "veil.spool.batches.dropped",
            "Batches dropped because the spool was full.",
            "{batch}",
            m.spool_batches_dropped.get(),
            true,
        ),
        (
            "veil.spool.bytes.dropped",
            "Bytes dropped because the spool was full.",
            "By",
            m.spool_bytes_dropped.get(),
            true,
        ),
        (
            "veil.spool.bytes",
            "Bytes waiting in the spool.",
            "By",
            m.spool_bytes.get(),
            false,
        ),
        (
            "veil.audit.events",
            "Audit events recorded.",
            "{event}",
            m.audit_events.get(),
            true,
        ),
    ];
    for (name, desc, unit, v, mono) in counters {
        metrics.push(sum_metric(name, desc, unit, v, mono, start, now));
    }
    // Every place an exchange can be lost, as one metric: operators sum it or split it by
    // `veil.drop.reason` (the recording queue's drops once went unreported here).
    let q = m.recording_queue.as_deref();
    let get = |c: Option<&crate::counters::Counter>| c.map_or(0, |c| c.get());
    let mut dropped = sum_metric(
        "veil.exchanges.dropped",
        "Exchanges that could not be recorded, by where they were lost.",
        "{exchange}",
        0,
        true,
        start,
        now,
    );
    if let Some(metric::Data::Sum(sum)) = &mut dropped.data {
        let template = sum.data_points.pop().expect("invariant: one point");
        for (reason, v) in [
            ("recording_queue_full", get(q.map(|q| &q.dropped_full))),
            ("recording_queue_bytes", get(q.map(|q| &q.dropped_bytes))),
            ("recording_stopped", get(q.map(|q| &q.dropped_closed))),
            ("export_queue_full", m.exchanges_dropped.get()),
            // A ledger transaction that failed (disk full, locked, I/O error) rolls back
            // whole: its records are in the ledger's count, not lost silently.
            (
                "ledger_write_failed",
                get(m.ledger.as_deref().map(|l| &l.dropped)),
            ),
        ] {
            let mut p = template.clone();
            p.attributes = vec![kv("veil.drop.reason", str_value(reason))];
            p.value = Some(number_data_point::Value::AsInt(
                i64::try_from(v).unwrap_or(i64::MAX),
            ));
            sum.data_points.push(p);
        }
    }
    metrics.push(dropped);
    if let Some(h) = &m.health {
        metrics.push(sum_metric(
            "veil.recording.degradations",
            "Times recording went from healthy to degraded (disk full, write failures).",
            "{event}",
            h.degradations.get(),
            true,
            start,
            now,
        ));
        metrics.push(sum_metric(
            "veil.recording.degraded",
            "1 while recording is degraded (see /healthz for why), else 0.",
            "1",
            u64::from(!h.is_ok()),
            false,
            start,
            now,
        ));
    }
    metrics.push(sum_metric(
        "veil.exchanges.refused",
        "Requests refused with 503 because they could not be recorded (audit = required).",
        "{request}",
        get(q.map(|q| &q.refused)),
        true,
        start,
        now,
    ));
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
