//! # Test support: a real OTLP/HTTP receiver on 127.0.0.1:0 and record builders.
//!
//! The receiver is a small hyper server that decodes what it gets with the same
//! `opentelemetry-proto` types (protobuf, or JSON through `serde_json::Value` for the
//! string int64s), un-gzips, and can be told to answer an error status or to stop listening.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::exchange::{Operation, OutcomeKind, Provider, TraceParent, Usage};
use crate::keys::UserPseudonym;
use crate::record::Record;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// Request path.
    pub path: String,
    /// Content-Type.
    pub content_type: String,
    /// Content-Encoding.
    pub content_encoding: Option<String>,
    /// Decompressed body.
    pub body: Bytes,
    /// The status answered (0 when the receiver hung instead).
    pub answered: u16,
    /// When it arrived (tokio's clock, so paused-time tests can measure delays).
    pub at: tokio::time::Instant,
}

#[derive(Debug, Default)]
struct State {
    received: Mutex<Vec<Received>>,
    /// Status to answer (200 = accept).
    status: AtomicU16,
    /// `Retry-After` to send with error answers.
    retry_after: Mutex<Option<String>>,
    /// Read the request, then never answer.
    hang: AtomicBool,
}

/// A running receiver. Dropping it stops it.
#[derive(Debug)]
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<State>,
    tasks: Option<JoinSet<()>>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(mut t) = self.tasks.take() {
            t.abort_all();
        }
    }
}

async fn serve_conn(stream: tokio::net::TcpStream, state: Arc<State>) {
    let svc = service_fn(move |req: Request<Incoming>| {
        let state = state.clone();
        async move {
            let path = req.uri().path().to_string();
            let h = |n: &str| {
                req.headers()
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let content_type = h("content-type").unwrap_or_default();
            let content_encoding = h("content-encoding");
            let raw = req.into_body().collect().await?.to_bytes();
            let body = if content_encoding.as_deref() == Some("gzip") {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&raw[..])
                    .read_to_end(&mut out)
                    .expect("receiver: bad gzip");
                Bytes::from(out)
            } else {
                raw
            };
            let hang = state.hang.load(Ordering::SeqCst);
            let status = state.status.load(Ordering::SeqCst);
            state.received.lock().unwrap().push(Received {
                path,
                content_type: content_type.clone(),
                content_encoding,
                body,
                answered: if hang { 0 } else { status },
                at: tokio::time::Instant::now(),
            });
            if hang {
                std::future::pending::<()>().await;
            }
            let mut resp = Response::new(Full::new(Bytes::new()));
            *resp.status_mut() = StatusCode::from_u16(status).unwrap();
            if status == 200 {
                resp.headers_mut()
                    .insert("content-type", content_type.parse().unwrap());
            } else if let Some(ra) = state.retry_after.lock().unwrap().clone() {
                resp.headers_mut()
                    .insert("retry-after", ra.parse().unwrap());
            }
            Ok::<_, hyper::Error>(resp)
        }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

impl Receiver {
    /// Starts a receiver on 127.0.0.1:0 answering 200.
    pub async fn start() -> Receiver {
        Self::start_on("127.0.0.1:0".parse().unwrap(), Arc::default()).await
    }

    async fn start_on(addr: SocketAddr, state: Arc<State>) -> Receiver {
        if state.status.load(Ordering::SeqCst) == 0 {
            state.status.store(200, Ordering::SeqCst);
        }
        let listener = TcpListener::bind(addr).await.expect("receiver: bind");
        let addr = listener.local_addr().unwrap();
        let mut tasks = JoinSet::new();
        let st = state.clone();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    break;
                };
                conns.spawn(serve_conn(stream, st.clone()));
            }
        });
        Receiver {
            addr,
            state,
            tasks: Some(tasks),
        }
    }

    /// Base endpoint (`http://127.0.0.1:port`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answer `status` from now on.
    pub fn answer(&self, status: u16) {
        self.state.status.store(status, Ordering::SeqCst);
    }

    /// Send `Retry-After: value` with error answers.
    pub fn retry_after(&self, value: Option<&str>) {
        *self.state.retry_after.lock().unwrap() = value.map(str::to_string);
    }

    /// Read requests but never answer them (a hung collector), or stop doing so.
    pub fn hang(&self, on: bool) {
        self.state.hang.store(on, Ordering::SeqCst);
    }

    /// Stops listening and drops every connection: connections are refused.
    pub fn stop(&mut self) {
        if let Some(mut t) = self.tasks.take() {
            t.abort_all();
        }
    }

    /// Listens again on the same port (after [`Receiver::stop`]).
    pub async fn restart(&mut self) {
        let new = Self::start_on(self.addr, self.state.clone()).await;
        let mut new = new;
        self.tasks = new.tasks.take();
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }

    /// Spans of the requests that were accepted (200), decoded per content type.
    pub fn spans(&self) -> Vec<Span> {
        self.received()
            .iter()
            .filter(|r| r.path == "/v1/traces" && r.answered == 200)
            .flat_map(|r| decode_traces(r).resource_spans)
            .flat_map(|rs| rs.scope_spans)
            .flat_map(|ss| ss.spans)
            .collect()
    }

    /// Log records of accepted requests.
    pub fn logs(&self) -> Vec<LogRecord> {
        self.received()
            .iter()
            .filter(|r| r.path == "/v1/logs" && r.answered == 200)
            .flat_map(|r| decode_logs(r).resource_logs)
            .flat_map(|rl| rl.scope_logs)
            .flat_map(|sl| sl.log_records)
            .collect()
    }

    /// Metrics requests accepted.
    pub fn metrics(&self) -> Vec<ExportMetricsServiceRequest> {
        self.received()
            .iter()
            .filter(|r| r.path == "/v1/metrics" && r.answered == 200)
            .map(|r| {
                if r.content_type == "application/json" {
                    serde_json::from_value(fix_json(serde_json::from_slice(&r.body).unwrap()))
                        .unwrap()
                } else {
                    ExportMetricsServiceRequest::decode(r.body.as_ref()).unwrap()
                }
            })
            .collect()
    }
}

/// Rewrites OTLP/JSON so the crate's serde accepts it: string int64 → numbers for the fields
/// it types as integers (`intValue` is handled by the crate; counts are not).
fn fix_json(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        J::Object(m) => J::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let v = match (&k[..], &v) {
                        ("count" | "asInt", J::String(s)) => {
                            J::Number(s.parse::<u64>().unwrap().into())
                        }
                        ("bucketCounts", J::Array(a)) => J::Array(
                            a.iter()
                                .map(|x| match x {
                                    J::String(s) => J::Number(s.parse::<u64>().unwrap().into()),
                                    o => o.clone(),
                                })
                                .collect(),
                        ),
                        _ => fix_json(v),
                    };
                    (k, v)
                })
                .collect(),
        ),
        J::Array(a) => J::Array(a.into_iter().map(fix_json).collect()),
        o => o,
    }
}

/// Decodes a traces request by its content type.
pub fn decode_traces(r: &Received) -> ExportTraceServiceRequest {
    if r.content_type == "application/json" {
        serde_json::from_slice(&r.body).expect("receiver: traces JSON")
    } else {
        ExportTraceServiceRequest::decode(r.body.as_ref()).expect("receiver: traces protobuf")
    }
}

/// Decodes a logs request by its content type.
pub fn decode_logs(r: &Received) -> ExportLogsServiceRequest {
    if r.content_type == "application/json" {
        serde_json::from_slice(&r.body).expect("receiver: logs JSON")
    } else {
        ExportLogsServiceRequest::decode(r.body.as_ref()).expect("receiver: logs protobuf")
    }
}

/// Attributes as a map of key → value.
pub fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, AnyValue> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), kv.value.clone().unwrap_or_default()))
        .collect()
}

/// A string attribute.
pub fn s(a: &BTreeMap<String, AnyValue>, k: &str) -> Option<String> {
    match a.get(k)?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        _ => None,
    }
}

/// An int attribute.
pub fn i(a: &BTreeMap<String, AnyValue>, k: &str) -> Option<i64> {
    match a.get(k)?.value.as_ref()? {
        any_value::Value::IntValue(i) => Some(*i),
        _ => None,
    }
}

/// A double attribute.
pub fn d(a: &BTreeMap<String, AnyValue>, k: &str) -> Option<f64> {
    match a.get(k)?.value.as_ref()? {
        any_value::Value::DoubleValue(d) => Some(*d),
        _ => None,
    }
}

/// A bool attribute.
pub fn b(a: &BTreeMap<String, AnyValue>, k: &str) -> Option<bool> {
    match a.get(k)?.value.as_ref()? {
        any_value::Value::BoolValue(b) => Some(*b),
        _ => None,
    }
}

/// A string-array attribute.
pub fn sa(a: &BTreeMap<String, AnyValue>, k: &str) -> Option<Vec<String>> {
    match a.get(k)?.value.as_ref()? {
        any_value::Value::ArrayValue(arr) => Some(
            arr.values
                .iter()
                .filter_map(|v| match v.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some(s.clone()),
                    _ => None,
                })
                .collect(),
        ),
        _ => None,
    }
}

/// A plain successful record with every field set to something neutral.
pub fn base_record(id: &str) -> Record {
    Record {
        request_id: id.to_string(),
        start: SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_183_387),
        duration: Duration::from_millis(1422),
        time_to_first_chunk: None,
        trace_parent: None,
        provider: Provider::OpenAi,
        operation: Operation::Chat,
        request_model: Some("gpt-4o-mini".into()),
        response_model: Some("gpt-4o-mini-2024-07-18".into()),
        response_id: Some("chatcmpl-9J3u".into()),
        conversation_id: None,
        server_address: "api.openai.com".into(),
        server_port: 443,
        route: "/v1/chat/completions".into(),
        status: Some(200),
        error_type: None,
        finish_reasons: vec!["stop".into()],
        usage: Usage {
            input_tokens: Some(52),
            output_tokens: Some(19),
            ..Usage::default()
        },
        stream: false,
        request_params: BTreeMap::new(),
        cost_usd: Some(0.0000192),
        user_pseudonym: Some(UserPseudonym::parse("u_3f9a1c0e7b2d4a5c").unwrap()),
        user_pseudonyms: vec![UserPseudonym::parse("u_3f9a1c0e7b2d4a5c").unwrap()],
        feature: Some("support".into()),
        api_key_fingerprint: Some("fp_1a2b".into()),
        rules_digest: "b3:abc".into(),
        redactions: BTreeMap::new(),
        redactions_input: 0,
        redactions_output: 0,
        truncated: false,
        aborted: false,
        outcome: OutcomeKind::Complete,
        system_instructions: None,
        input_messages: None,
        output_messages: None,
        tool_names: Vec::new(),
        request_headers: Default::default(),
        response_headers: Default::default(),
        request_bytes: 300,
        response_bytes: 900,
        websocket: None,
        content_dropped: None,
        parse_error: None,
        added_latency: (None, None),
        chunk_gaps: Default::default(),
        retry: false,
        prepared: Default::default(),
        in_flight: Default::default(),
    }
}

/// The fixtures below, one of each kind: OpenAI chat, Anthropic stream, embeddings, an
/// upstream error, an opaque exchange.
pub fn fixtures() -> [Record; 5] {
    [
        openai_chat("r-openai"),
        anthropic_stream("r-anthropic"),
        embeddings("r-embed"),
        upstream_error("r-error"),
        opaque("r-opaque"),
    ]
}

/// A non-streaming OpenAI chat with redacted content and a traceparent.
pub fn openai_chat(id: &str) -> Record {
    let mut r = base_record(id);
    r.trace_parent = Some(TraceParent {
        trace_id: hex16("4bf92f3577b34da6a3ce929d0e0e4736"),
        parent_span_id: hex8("00f067aa0ba902b7"),
        flags: 1,
        trace_state: Some("congo=t61rcWkgMzE".into()),
    });
    r.conversation_id = Some("conv_5j66".into());
    r.usage.cache_read_tokens = Some(12);
    r.usage.reasoning_tokens = Some(4);
    r.request_params
        .insert("temperature".into(), serde_json::json!(0.2));
    r.request_params
        .insert("max_tokens".into(), serde_json::json!(256));
    r.redactions.insert("EMAIL".into(), 2);
    r.redactions.insert("PERSON".into(), 1);
    r.redactions_input = 2;
    r.redactions_output = 1;
    r.input_messages = Some(serde_json::json!([
        {"role":"user","parts":[{"type":"text","content":"I am [PERSON_1] ([EMAIL_1]), reset my password"}]}
    ]));
    r.output_messages = Some(serde_json::json!([
        {"role":"assistant","parts":[{"type":"text","content":"Link sent to [EMAIL_1]."}],"finish_reason":"stop"}
    ]));
    r.request_headers = vec![("User-Agent".into(), "openai-python/1.0".into())];
    r
}

/// A streaming Anthropic messages call with cache tokens and system instructions.
pub fn anthropic_stream(id: &str) -> Record {
    let mut r = base_record(id);
    r.provider = Provider::Anthropic;
    r.request_model = Some("claude-sonnet-4-5".into());
    r.response_model = Some("claude-sonnet-4-5-20250929".into());
    r.response_id = Some("msg_01X".into());
    r.server_address = "api.anthropic.com".into();
    r.stream = true;
    r.time_to_first_chunk = Some(Duration::from_millis(350));
    r.finish_reasons = vec!["end_turn".into()];
    r.usage = Usage {
        input_tokens: Some(1200),
        output_tokens: Some(80),
        cache_read_tokens: Some(1000),
        cache_creation_tokens: Some(150),
        reasoning_tokens: None,
        ..Usage::default()
    };
    r.system_instructions =
        Some(serde_json::json!([{"type":"text","content":"You support [ORG_1]."}]));
    r.input_messages =
        Some(serde_json::json!([{"role":"user","parts":[{"type":"text","content":"hi"}]}]));
    r
}

/// An OpenAI embeddings call: no output content, no finish reason.
pub fn embeddings(id: &str) -> Record {
    let mut r = base_record(id);
    r.operation = Operation::Embeddings;
    r.request_model = Some("text-embedding-3-small".into());
    r.response_model = Some("text-embedding-3-small".into());
    r.response_id = None;
    r.finish_reasons = Vec::new();
    r.usage = Usage {
        input_tokens: Some(8),
        ..Usage::default()
    };
    r.request_params
        .insert("encoding_formats".into(), serde_json::json!(["float"]));
    r
}

/// An upstream 429.
pub fn upstream_error(id: &str) -> Record {
    let mut r = base_record(id);
    r.status = Some(429);
    r.error_type = Some("rate_limit_exceeded".into());
    r.response_model = None;
    r.response_id = None;
    r.finish_reasons = Vec::new();
    r.usage = Usage::default();
    r.cost_usd = None;
    r.outcome = OutcomeKind::UpstreamFailed;
    r
}

/// An opaque exchange: unknown provider, no model, no content, truncated.
pub fn opaque(id: &str) -> Record {
    let mut r = base_record(id);
    r.provider = Provider::Unknown;
    r.operation = Operation::Unknown;
    r.request_model = None;
    r.response_model = None;
    r.response_id = None;
    r.finish_reasons = Vec::new();
    r.usage = Usage::default();
    r.cost_usd = None;
    r.user_pseudonym = None;
    r.user_pseudonyms = Vec::new();
    r.feature = None;
    r.truncated = true;
    r.server_address = "llm.internal".into();
    r.server_port = 8443;
    r
}

fn hex16(s: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

fn hex8(s: &str) -> [u8; 8] {
    let mut out = [0u8; 8];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}
