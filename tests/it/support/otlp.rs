//! A real OTLP/HTTP receiver on 127.0.0.1:0: stores every request's raw bytes, decodes them
//! with the same `opentelemetry-proto` message types, and can fail (status) or vanish
//! (stop listening) on demand, then come back on the same port.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

#[derive(Clone, Debug)]
pub struct Received {
    pub path: String,
    /// The body as sent (possibly gzip).
    pub raw: Bytes,
    /// The body decompressed.
    pub body: Bytes,
}

pub struct Receiver {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Vec<Received>>>,
    status: Arc<AtomicU16>,
    stop: Option<oneshot::Sender<()>>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut r = Receiver {
            addr: listener.local_addr().unwrap(),
            received: Arc::default(),
            status: Arc::new(AtomicU16::new(200)),
            stop: None,
        };
        r.serve(listener);
        r
    }

    fn serve(&mut self, listener: TcpListener) {
        let (tx, mut rx) = oneshot::channel::<()>();
        self.stop = Some(tx);
        let received = self.received.clone();
        let status = self.status.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = &mut rx => break,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let received = received.clone();
                let status = status.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                        let received = received.clone();
                        let status = status.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let gzip = req
                                .headers()
                                .get("content-encoding")
                                .is_some_and(|v| v == "gzip");
                            let raw = req.into_body().collect().await.unwrap().to_bytes();
                            let code = status.load(Ordering::SeqCst);
                            if code == 200 {
                                let body = if gzip {
                                    use std::io::Read;
                                    let mut out = Vec::new();
                                    flate2::read::GzDecoder::new(&raw[..])
                                        .read_to_end(&mut out)
                                        .unwrap();
                                    Bytes::from(out)
                                } else {
                                    raw.clone()
                                };
                                received.lock().unwrap().push(Received { path, raw, body });
                            }
                            Ok::<_, std::convert::Infallible>(
                                hyper::Response::builder()
                                    .status(code)
                                    .header("content-type", "application/x-protobuf")
                                    .body(Full::new(Bytes::new()))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answer every request with `code` (200 stores it; anything else drops it).
    pub fn answer(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }

    /// Stop listening: connections are refused until `restart`.
    pub fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }

    pub async fn restart(&mut self) {
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(_) if tries < 50 => {
                    tries += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(e) => panic!("rebind {}: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    pub fn spans(&self) -> Vec<Span> {
        self.received()
            .iter()
            .filter(|r| r.path == "/v1/traces")
            .flat_map(|r| {
                ExportTraceServiceRequest::decode(&r.body[..])
                    .expect("traces decode with the proto types")
                    .resource_spans
            })
            .flat_map(|rs| rs.scope_spans)
            .flat_map(|ss| ss.spans)
            .collect()
    }

    /// The value of registry entry `name` (with label value `label`, `None` when the name is
    /// unlabelled) in the last metrics request: a counter's sum point or a gauge's point.
    /// `None` when no metrics request came or it lacks that point.
    pub fn veil_metric(&self, name: &str, label: Option<&str>) -> Option<i64> {
        use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
        use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
        let last = self
            .received()
            .into_iter()
            .rfind(|r| r.path == "/v1/metrics")?;
        let req = ExportMetricsServiceRequest::decode(&last.body[..]).expect("metrics decode");
        let m = req
            .resource_metrics
            .iter()
            .flat_map(|rm| &rm.scope_metrics)
            .flat_map(|sm| &sm.metrics)
            .find(|m| m.name == name)?;
        let points = match &m.data {
            Some(metric::Data::Sum(s)) => &s.data_points,
            Some(metric::Data::Gauge(g)) => &g.data_points,
            other => panic!("{name}: not a registry entry: {other:?}"),
        };
        let point = points
            .iter()
            .find(|p| p.attributes.first().and_then(value_text).as_deref() == label)?;
        match point.value {
            Some(number_data_point::Value::AsInt(v)) => Some(v),
            _ => None,
        }
    }

    pub fn log_count(&self) -> usize {
        self.received()
            .iter()
            .filter(|r| r.path == "/v1/logs")
            .map(|r| {
                ExportLogsServiceRequest::decode(&r.body[..])
                    .expect("logs decode")
                    .resource_logs
                    .iter()
                    .flat_map(|rl| &rl.scope_logs)
                    .map(|sl| sl.log_records.len())
                    .sum::<usize>()
            })
            .sum()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A span attribute as text (strings, ints, doubles, bools; arrays joined with ",").
pub fn attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(value_text)
}

fn value_text(kv: &KeyValue) -> Option<String> {
    any_text(kv.value.as_ref()?)
}

fn any_text(v: &AnyValue) -> Option<String> {
    Some(match v.value.as_ref()? {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        any_value::Value::BoolValue(b) => b.to_string(),
        any_value::Value::ArrayValue(a) => a
            .values
            .iter()
            .filter_map(any_text)
            .collect::<Vec<_>>()
            .join(","),
        _ => return None,
    })
}
