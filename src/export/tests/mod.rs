//! Exporter tests against a real OTLP/HTTP receiver on 127.0.0.1:0, one file per stage;
//! this file holds the shared helpers.

mod counters;
mod delivery;
mod encoding;
mod handle;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::metrics::v1::metric;

use super::testing::{self, Receiver, attrs};
use super::*;
use crate::record::Record;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| map.get(k).cloned()
}

/// Settings tuned for tests: short batch age and retry delays.
fn settings(data: &Path, endpoint: Option<&str>, env: &[(&str, &str)]) -> ExporterSettings {
    let mut s = ExporterSettings::resolve(endpoint, data.to_path_buf(), &env_of(env)).unwrap();
    s.batch_age = Duration::from_millis(20);
    s.retry_initial = Duration::from_millis(10);
    s.retry_max = Duration::from_millis(100);
    s.metrics_interval = Duration::from_millis(50);
    s
}

/// Polls `cond` every 10 ms, at most `limit`; returns whether it became true.
async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let rounds = limit.as_millis() / 10 + 1;
    for _ in 0..rounds {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

/// Request ID → number of accepted spans carrying it.
fn span_counts(rx: &Receiver) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for span in rx.spans() {
        let id = testing::s(&attrs(&span.attributes), "veil.request.id").unwrap();
        *m.entry(id).or_insert(0) += 1;
    }
    m
}

fn records() -> Vec<Record> {
    vec![
        testing::openai_chat("r-openai"),
        testing::anthropic_stream("r-anthropic"),
        testing::embeddings("r-embed"),
        testing::upstream_error("r-error"),
        testing::opaque("r-opaque"),
    ]
}

async fn export_all(s: ExporterSettings, recs: Vec<Record>) -> Arc<crate::counters::Counters> {
    let exporter = Exporter::start(s, Arc::default()).unwrap();
    let h = exporter.handle();
    for r in recs {
        h.try_send(r).unwrap();
    }
    let metrics = exporter.counters().clone();
    let report = exporter.shutdown(Duration::from_secs(10)).await;
    assert!(report.drained, "{report:?}");
    metrics
}

/// A spool an earlier run left for a collector that is no longer configured is found (and
/// warned about at start), and looking never creates a spool directory.
#[test]
fn batches_left_for_a_removed_collector_are_found() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(spool_left(dir.path(), Signal::Traces), None);
    assert!(!dir.path().join("spool").exists(), "looking created it");
    let traces = dir.path().join("spool").join(Signal::Traces.name());
    let mut spool = Spool::open(&traces, 1 << 20).unwrap();
    spool.push(Encoding::Json, b"{}").unwrap();
    spool.push(Encoding::Json, b"{\"a\":1}").unwrap();
    let (batches, bytes) = spool_left(dir.path(), Signal::Traces).expect("two batches");
    assert_eq!((batches, bytes), (2, spool.bytes()));
    assert_eq!(spool_left(dir.path(), Signal::Logs), None);
}
