//! The registry in the OpenMetrics text format (what `GET /metrics` answers), encoded by the
//! `prometheus-client` crate from a collector over [`Counters`].
//!
//! **Names**, translated the usual way from the OpenTelemetry ones: dots become underscores,
//! a counter's samples end in `_total` (the crate adds it), units are in the name where they
//! are one (`_seconds`, `_bytes`, `_usd`): `veil.exchanges.dropped` with `veil.drop.reason` is
//! `veil_exchanges_dropped_total{veil_drop_reason="…"}`, `gen_ai.client.operation.duration`
//! is `gen_ai_client_operation_duration_seconds`. Label keys likewise (`gen_ai.request.model`
//! → `gen_ai_request_model`). An empty attribute value is left out (Prometheus reads a
//! missing label and an empty one alike). The table of every name: `docs/metrics.md`.
//!
//! **Label values are escaped here** (backslash, double quote, newline, as the text format
//! says): `prometheus-client` writes them as given, and a model name or feature comes from an
//! app's request, so an unescaped `"` would let an app forge samples.
//!
//! Format: OpenMetrics 1.0 text (`application/openmetrics-text; version=1.0.0`), which
//! Prometheus scrapes natively; it ends with `# EOF`.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::series::{SERIES, SeriesKey, SeriesKind};
use super::{Counters, MetricDesc, MetricKind};

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What `/metrics` shows of the rules in force, read when it is rendered.
#[derive(Debug, Clone, Default)]
pub struct RulesInfo {
    /// Their digest, as every record carries it.
    pub digest: String,
    /// Long texts their redaction memo answered instead of a scan, since they were loaded.
    pub memo_hits: u64,
    /// Bytes their redaction memo holds now.
    pub memo_bytes: u64,
}

/// Renders every metric of `counters`, plus, for the rules in force,
/// `veil_rules_info{rules_digest="…"} 1`, `veil_redaction_memo_hits_total` and
/// `veil_redaction_memo_bytes`, as OpenMetrics text.
pub fn render(counters: &std::sync::Arc<Counters>, rules: &RulesInfo) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Exposition {
        counters: counters.clone(),
        rules: rules.clone(),
    }));
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("invariant: writing to a String cannot fail");
    out
}

/// The collector: the registry's fixed entries, its series and the rules' info metric.
#[derive(Debug)]
struct Exposition {
    counters: std::sync::Arc<Counters>,
    rules: RulesInfo,
}

impl Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        encode_fixed(&self.counters, &mut encoder)?;
        encode_series(&self.counters, &mut encoder)?;
        let mut m = encoder.encode_descriptor(
            "veil_rules",
            "The rules in force: their digest, as every record carries it.",
            None,
            MetricType::Info,
        )?;
        let info = [("rules_digest", escape(&self.rules.digest))];
        m.encode_info(&info.as_slice())?;
        // The memo belongs to the rules in force: a reload starts it again from zero, which
        // Prometheus reads as a counter reset.
        let mut m = encoder.encode_descriptor(
            "veil_redaction_memo_hits",
            "Long texts the redaction memo answered instead of a scan (since the rules in force were loaded).",
            None,
            MetricType::Counter,
        )?;
        m.encode_counter::<NoLabelSet, _, u64>(&self.rules.memo_hits, None)?;
        let mut m = encoder.encode_descriptor(
            "veil_redaction_memo_bytes",
            "Bytes the redaction memo holds (at most redaction_memo).",
            None,
            MetricType::Gauge,
        )?;
        m.encode_gauge(&self.rules.memo_bytes)
    }
}

/// The Prometheus name of a fixed entry (without `_total`).
pub fn prometheus_name(d: &MetricDesc) -> String {
    d.name.replace('.', "_")
}

fn encode_fixed(c: &Counters, encoder: &mut DescriptorEncoder) -> fmt::Result {
    // Entries sharing a name (one per label value) must be one family, so group first,
    // keeping the registry's order of first appearance.
    let mut groups: Vec<(&'static MetricDesc, Vec<(&'static MetricDesc, u64)>)> = Vec::new();
    c.visit(
        &mut |d, v| match groups.iter_mut().find(|(g, _)| g.name == d.name) {
            Some((_, entries)) => entries.push((d, v)),
            None => groups.push((d, vec![(d, v)])),
        },
    );
    for (first, entries) in groups {
        let name = prometheus_name(first);
        let kind = match first.kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
        };
        let mut m = encoder.encode_descriptor(&name, first.help, None, kind)?;
        for (d, v) in entries {
            let labels: Vec<(String, String)> = d
                .label
                .map(|(k, v)| vec![(k.replace('.', "_"), escape(v))])
                .unwrap_or_default();
            sample(&mut m, &labels, |f| match d.kind {
                MetricKind::Counter => f.encode_counter::<NoLabelSet, _, u64>(&v, None),
                MetricKind::Gauge => f.encode_gauge(&v),
            })?;
        }
    }
    Ok(())
}

fn encode_series(c: &Counters, encoder: &mut DescriptorEncoder) -> fmt::Result {
    let state = c.series.lock();
    for desc in SERIES {
        match desc.kind {
            SeriesKind::Histogram(_) => {
                let Some(series) = state.histograms.get(desc.name) else {
                    continue;
                };
                let mut m = encoder.encode_descriptor(
                    desc.prometheus,
                    desc.help,
                    None,
                    MetricType::Histogram,
                )?;
                for (key, h) in series {
                    let buckets: Vec<(f64, u64)> = h
                        .bounds
                        .iter()
                        .copied()
                        .chain([f64::MAX])
                        .zip(h.counts.iter().copied())
                        .collect();
                    sample(&mut m, &labels(key), |f| {
                        f.encode_histogram::<NoLabelSet>(h.sum, h.count, &buckets, None)
                    })?;
                }
            }
            SeriesKind::Counter => {
                let Some(series) = state.sums.get(desc.name) else {
                    continue;
                };
                let mut m = encoder.encode_descriptor(
                    desc.prometheus,
                    desc.help,
                    None,
                    MetricType::Counter,
                )?;
                for (key, v) in series {
                    sample(&mut m, &labels(key), |f| {
                        f.encode_counter::<NoLabelSet, _, u64>(v, None)
                    })?;
                }
            }
        }
    }
    Ok(())
}

/// Encodes one sample with `labels` (on the metric itself when there are none: a family with
/// no labels would print `name{}`).
fn sample(
    m: &mut MetricEncoder<'_>,
    labels: &[(String, String)],
    f: impl FnOnce(&mut MetricEncoder<'_>) -> fmt::Result,
) -> fmt::Result {
    if labels.is_empty() {
        return f(m);
    }
    f(&mut m.encode_family(&labels)?)
}

/// An attribute set as Prometheus labels: keys translated, values escaped, empty values left
/// out.
fn labels(key: &SeriesKey) -> Vec<(String, String)> {
    key.iter()
        .map(|(k, v)| (k.replace('.', "_"), escape(&v.to_string())))
        .filter(|(_, v)| !v.is_empty())
        .collect()
}

/// A label value escaped for the text format: `\` → `\\`, `"` → `\"`, newline → `\n`.
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::series::{OPERATION_DURATION, REQUESTS, SeriesValue};
    use std::sync::Arc;

    fn lines(text: &str) -> Vec<&str> {
        text.lines().filter(|l| !l.starts_with('#')).collect()
    }

    #[test]
    fn fixed_entries_are_translated_and_grouped() {
        let c = Arc::new(Counters::default());
        c.ledger.dropped.add(3);
        c.queue.dropped_full.add(2);
        c.queue.bytes.set(7);
        let text = render(
            &c,
            &RulesInfo {
                digest: "abc123".into(),
                memo_hits: 5,
                memo_bytes: 4096,
            },
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("# TYPE veil_exchanges_dropped counter\n"),
            "{text}"
        );
        assert_eq!(
            text.matches("# TYPE veil_exchanges_dropped ").count(),
            1,
            "one family for every drop reason"
        );
        let samples = lines(&text);
        assert!(
            samples.contains(
                &"veil_exchanges_dropped_total{veil_drop_reason=\"ledger_write_failed\"} 3"
            )
        );
        assert!(samples.contains(
            &"veil_exchanges_dropped_total{veil_drop_reason=\"recording_queue_full\"} 2"
        ));
        assert!(samples.contains(&"veil_queue_bytes 7"), "{text}");
        assert!(samples.contains(&"veil_rules_info{rules_digest=\"abc123\"} 1"));
        assert!(
            samples.contains(&"veil_redaction_memo_hits_total 5"),
            "{text}"
        );
        assert!(
            samples.contains(&"veil_redaction_memo_bytes 4096"),
            "{text}"
        );
        // Every fixed entry is there, once.
        for (d, _) in c.snapshot() {
            let name = prometheus_name(d);
            let sample = match d.kind {
                MetricKind::Counter => format!("{name}_total"),
                MetricKind::Gauge => name.clone(),
            };
            let n = samples
                .iter()
                .filter(|l| {
                    l.starts_with(&format!("{sample} "))
                        || l.starts_with(&format!("{sample}{{"))
                            && d.label
                                .is_some_and(|(_, v)| l.contains(&format!("=\"{v}\"")))
                })
                .count();
            assert_eq!(n, 1, "{} ({sample}) in\n{text}", d.field);
        }
    }

    #[test]
    fn series_become_histograms_and_counters_with_escaped_labels() {
        let c = Arc::new(Counters::default());
        {
            let mut s = c.series.lock();
            let key = vec![
                (
                    "gen_ai.request.model",
                    SeriesValue::Str("gpt\"4\\\nx".into()),
                ),
                ("error.type", SeriesValue::Str("".into())),
            ];
            s.observe(&OPERATION_DURATION, key.clone(), 0.015);
            s.observe(&OPERATION_DURATION, key.clone(), 100.0);
            s.add(&REQUESTS, key, 2.0);
        }
        let text = render(&c, &RulesInfo::default());
        let samples = lines(&text);
        let model = "gen_ai_request_model=\"gpt\\\"4\\\\\\nx\"";
        assert!(
            samples.contains(&format!("veil_requests_total{{{model}}} 2.0").as_str()),
            "{text}"
        );
        let h = "gen_ai_client_operation_duration_seconds";
        assert!(text.contains(&format!("# TYPE {h} histogram\n")), "{text}");
        assert!(
            samples.contains(&format!("{h}_count{{{model}}} 2").as_str()),
            "{text}"
        );
        assert!(samples.contains(&format!("{h}_bucket{{le=\"0.01\",{model}}} 0").as_str()));
        assert!(samples.contains(&format!("{h}_bucket{{le=\"0.02\",{model}}} 1").as_str()));
        assert!(samples.contains(&format!("{h}_bucket{{le=\"81.92\",{model}}} 1").as_str()));
        assert!(samples.contains(&format!("{h}_bucket{{le=\"+Inf\",{model}}} 2").as_str()));
        assert!(
            !samples
                .iter()
                .any(|l| l.contains(model) && l.contains("error_type")),
            "empty values are left out"
        );
        // No line is broken by the hostile value: every sample line has a name and a value.
        for l in samples {
            assert!(
                l.rsplit_once(' ')
                    .is_some_and(|(_, v)| v.parse::<f64>().is_ok() || v == "+Inf"),
                "{l}"
            );
        }
    }
}
