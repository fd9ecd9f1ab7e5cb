//! The servers the load benchmark measures veil against, run as child processes of the
//! benchmark binary itself (`VEIL_LOAD_ROLE=upstream|noop|collector`), so each one's CPU and
//! memory are its own and the baseline is built from this repository alone:
//!
//! - **upstream**: a fast TLS provider. It answers `POST /v1/chat/completions` with one
//!   precomputed ~2 KB chat completion (no JSON built per request, nothing kept), or, when the
//!   request has `x-mock-chunks: N,MS`, a server-sent-event stream of N content chunks MS ms
//!   apart, in OpenAI's chunk format so veil parses and records it.
//! - **noop**: a no-op intercepting proxy made of the crates veil is made of (hyper, rustls,
//!   rcgen, hyper-rustls, hyper-util's pooled client), shaped like the hudsucker library: it
//!   answers `CONNECT`, terminates TLS with a leaf it signs for the host (cached per host),
//!   and forwards each request to the upstream with bodies untouched, recording nothing.
//! - **collector**: an OTLP/HTTP collector that keeps nothing (`LOAD_OTLP=1` gives each veil
//!   its own). It decodes each `POST /v1/traces`, `/v1/logs` and `/v1/metrics` (protobuf or
//!   JSON, gzip or not), as a real collector must before it can do anything with them, counts
//!   the spans and log records, and answers 200 with an empty response. `GET /counts` answers
//!   `spans=N logs=N metrics=N bytes=N`: what it was sent so far (`bytes` as received on the
//!   wire), so the benchmark can tell what veil exported during a cell. A body it cannot
//!   decode is answered 400 and counted nowhere, so a broken export shows as missing spans.
//!
//! A child prints `addr=IP:PORT` on stdout once it listens and exits when its stdin closes,
//! so it never outlives the benchmark. It binds 127.0.0.1 only.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::Read;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Body = BoxBody<Bytes, BoxError>;

/// Runs the role named by `VEIL_LOAD_ROLE`, if any; returns `false` when there is none (the
/// process is the benchmark itself).
pub fn run_role_if_child() -> bool {
    let Ok(role) = std::env::var("VEIL_LOAD_ROLE") else {
        return false;
    };
    // The same allocator settings as `veil run` (no huge pages, freed pages given back within
    // a second or two), so the baseline's memory is measured as veil's is.
    veil::os::without_transparent_huge_pages();
    let _ = veil::os::return_freed_memory_promptly();
    // Exit when the parent goes away (it holds our stdin).
    std::thread::spawn(|| {
        let mut sink = [0u8; 64];
        while matches!(std::io::stdin().read(&mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
    let dir = std::path::PathBuf::from(std::env::var("VEIL_LOAD_DIR").expect("VEIL_LOAD_DIR"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        match role.as_str() {
            "upstream" => upstream(&dir).await,
            "noop" => noop(&dir).await,
            "collector" => collector().await,
            other => panic!("unknown VEIL_LOAD_ROLE {other}"),
        }
    });
    true
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A self-signed CA, written to `dir/NAME-ca.pem`.
fn ca(dir: &std::path::Path, name: &str) -> Issuer<'static, KeyPair> {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        format!("veil load bench {name} CA"),
    );
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join(format!("{name}-ca.pem")), cert.pem()).unwrap();
    Issuer::new(params, key)
}

/// A TLS server config with a leaf for `hosts` signed by `issuer`, ALPN http/1.1.
fn server_config(issuer: &Issuer<'static, KeyPair>, hosts: &[&str]) -> Arc<rustls::ServerConfig> {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>()).unwrap();
    let leaf = params.signed_by(&key, issuer).unwrap();
    let mut tls = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(tls)
}

async fn listen() -> TcpListener {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("addr={}", listener.local_addr().unwrap());
    listener
}

fn full(status: StatusCode, ctype: &'static str, body: Bytes) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(body).map_err(|e| match e {}).boxed())
        .unwrap()
}

/// The ~2 KB completion every non-streamed request gets (usage included, so veil prices it).
/// Each one's text is its own, as real answers are: `Reply <8 letters>:` numbers it (letters,
/// not digits, so no detector's trigger changes). A text that came back every time would be
/// answered by veil's redaction memo instead of scanned, which real answers are not.
pub struct Completion {
    template: Bytes,
    /// Where the 8 letters are in `template`.
    at: usize,
    next: std::sync::atomic::AtomicU64,
}

impl Completion {
    pub fn new() -> Self {
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(45);
        let template = format!(
            r#"{{"id":"chatcmpl-bench","object":"chat.completion","created":1795183387,"model":"gpt-4o-mini-2024-07-18","choices":[{{"index":0,"message":{{"role":"assistant","content":"Reply aaaaaaaa: {text}","refusal":null}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":52,"completion_tokens":19,"total_tokens":71}},"system_fingerprint":"fp_bench"}}"#
        );
        let at = template.find("Reply aaaaaaaa").expect("the placeholder") + "Reply ".len();
        Completion {
            template: Bytes::from(template),
            at,
            next: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The next response body: the template with the next number in its letters.
    pub fn body(&self) -> Bytes {
        let mut n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut b = self.template.to_vec();
        for c in &mut b[self.at..self.at + 8] {
            *c = b'a' + (n % 26) as u8;
            n /= 26;
        }
        Bytes::from(b)
    }
}

fn sse_chunk(delta: &str, finish: Option<&str>) -> Bytes {
    let finish = finish.map_or("null".to_string(), |f| format!("\"{f}\""));
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1795183387,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}]}}\n\n"
    ))
}

/// `N` content chunks `gap` apart after an immediate role chunk, then the finish, usage and
/// `[DONE]`.
fn stream(n: usize, gap: Duration) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    tokio::spawn(async move {
        let _ = tx
            .send(sse_chunk(r#"{"role":"assistant","content":""}"#, None))
            .await;
        for i in 0..n {
            tokio::time::sleep(gap).await;
            if tx
                .send(sse_chunk(&format!(r#"{{"content":"part{i} "}}"#), None))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = tx.send(sse_chunk("{}", Some("stop"))).await;
        let _ = tx
            .send(Bytes::from(format!(
                "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1795183387,\"model\":\"gpt-4o-mini-2024-07-18\",\"choices\":[],\"usage\":{{\"prompt_tokens\":11,\"completion_tokens\":{n},\"total_tokens\":{}}}}}\n\ndata: [DONE]\n\n",
                11 + n
            )))
            .await;
    });
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, BoxError>(Frame::data(b)), rx))
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(BodyExt::boxed(StreamBody::new(frames)))
        .unwrap()
}

async fn upstream(dir: &std::path::Path) {
    let issuer = ca(dir, "upstream");
    let acceptor =
        tokio_rustls::TlsAcceptor::from(server_config(&issuer, &["api.openai.com", "localhost"]));
    let listener = listen().await;
    let completion = Arc::new(Completion::new());
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (acceptor, completion) = (acceptor.clone(), completion.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let svc = service_fn(move |req: Request<Incoming>| {
                let completion = completion.clone();
                async move {
                    let chunks = req
                        .headers()
                        .get("x-mock-chunks")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.split_once(','))
                        .and_then(|(n, ms)| Some((n.parse().ok()?, ms.parse().ok()?)));
                    // Read the whole request body, as a provider does before answering.
                    let _ = req.into_body().collect().await;
                    Ok::<_, Infallible>(match chunks {
                        Some((n, ms)) => stream(n, Duration::from_millis(ms)),
                        None => full(StatusCode::OK, "application/json", completion.body()),
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await;
        });
    }
}

/// What the collector role has been sent, in total.
#[derive(Default)]
struct Received {
    spans: AtomicU64,
    logs: AtomicU64,
    metrics: AtomicU64,
    bytes: AtomicU64,
}

/// The spans, log records and metric exports in one OTLP/HTTP request body, decoded as
/// `content_type` says (protobuf unless it says JSON) after gunzip when `gzip`; `None` when the
/// body does not decode as the request `path` names.
fn count_otlp(path: &str, content_type: &str, gzip: bool, body: &[u8]) -> Option<(u64, u64, u64)> {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;
    let mut plain = Vec::new();
    let body = if gzip {
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut plain)
            .ok()?;
        &plain[..]
    } else {
        body
    };
    if content_type.starts_with("application/json") {
        // OTLP/JSON: count the leaves under the two levels of grouping.
        let v: serde_json::Value = serde_json::from_slice(body).ok()?;
        let count = |outer: &str, inner: &str, leaf: &str| -> u64 {
            let list = |v: &serde_json::Value, k: &str| {
                v.get(k)
                    .and_then(|x| x.as_array())
                    .cloned()
                    .unwrap_or_default()
            };
            list(&v, outer)
                .iter()
                .flat_map(|r| list(r, inner))
                .map(|s| list(&s, leaf).len() as u64)
                .sum()
        };
        return match path {
            "/v1/traces" => Some((count("resourceSpans", "scopeSpans", "spans"), 0, 0)),
            "/v1/logs" => Some((0, count("resourceLogs", "scopeLogs", "logRecords"), 0)),
            "/v1/metrics" => v.get("resourceMetrics").map(|_| (0, 0, 1)),
            _ => None,
        };
    }
    match path {
        "/v1/traces" => {
            let r = ExportTraceServiceRequest::decode(body).ok()?;
            let n = r
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len() as u64)
                .sum();
            Some((n, 0, 0))
        }
        "/v1/logs" => {
            let r = ExportLogsServiceRequest::decode(body).ok()?;
            let n = r
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .map(|s| s.log_records.len() as u64)
                .sum();
            Some((0, n, 0))
        }
        "/v1/metrics" => ExportMetricsServiceRequest::decode(body)
            .ok()
            .map(|_| (0, 0, 1)),
        _ => None,
    }
}

async fn collector() {
    let received = Arc::new(Received::default());
    let listener = listen().await;
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let received = received.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let svc = service_fn(move |req: Request<Incoming>| {
                let received = received.clone();
                async move {
                    let path = req.uri().path().to_string();
                    if req.method() == http::Method::GET && path == "/counts" {
                        let r = &received;
                        let text = format!(
                            "spans={} logs={} metrics={} bytes={}\n",
                            r.spans.load(Relaxed),
                            r.logs.load(Relaxed),
                            r.metrics.load(Relaxed),
                            r.bytes.load(Relaxed)
                        );
                        return Ok::<_, Infallible>(full(
                            StatusCode::OK,
                            "text/plain",
                            Bytes::from(text),
                        ));
                    }
                    let header = |name: &str| {
                        req.headers()
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_ascii_lowercase()
                    };
                    let content_type = header("content-type");
                    let gzip = header("content-encoding") == "gzip";
                    let Ok(body) = req.into_body().collect().await.map(|b| b.to_bytes()) else {
                        return Ok(full(StatusCode::BAD_REQUEST, "text/plain", Bytes::new()));
                    };
                    let Some((spans, logs, metrics)) =
                        count_otlp(&path, &content_type, gzip, &body)
                    else {
                        return Ok(full(
                            StatusCode::BAD_REQUEST,
                            "text/plain",
                            Bytes::from_static(b"not an OTLP export request\n"),
                        ));
                    };
                    received.spans.fetch_add(spans, Relaxed);
                    received.logs.fetch_add(logs, Relaxed);
                    received.metrics.fetch_add(metrics, Relaxed);
                    received.bytes.fetch_add(body.len() as u64, Relaxed);
                    // An empty Export*ServiceResponse: no bytes in protobuf, `{}` in JSON.
                    Ok(if content_type.starts_with("application/json") {
                        full(
                            StatusCode::OK,
                            "application/json",
                            Bytes::from_static(b"{}"),
                        )
                    } else {
                        full(StatusCode::OK, "application/x-protobuf", Bytes::new())
                    })
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// The no-op proxy's upstream connector: every host resolves to the upstream's address (the
/// counterpart of veil's `--resolve`).
#[derive(Clone)]
struct FixedConnector(SocketAddr);

impl tower_service::Service<Uri> for FixedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let addr = self.0;
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(tcp))
        })
    }
}

type Upstream = Client<hyper_rustls::HttpsConnector<FixedConnector>, Incoming>;

async fn noop(dir: &std::path::Path) {
    let upstream_addr: SocketAddr = std::env::var("VEIL_LOAD_UPSTREAM")
        .unwrap()
        .parse()
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(dir.join("upstream-ca.pem")).unwrap();
    for cert in rustls_pemfile::certs(&mut &pem[..]) {
        roots.add(cert.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .wrap_connector(FixedConnector(upstream_addr));
    let client: Upstream = Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .build(https);
    let issuer = Arc::new(ca(dir, "noop"));
    let leaves: Arc<Mutex<HashMap<String, Arc<rustls::ServerConfig>>>> = Default::default();
    let listener = listen().await;
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let (client, issuer, leaves) = (client.clone(), issuer.clone(), leaves.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let svc = service_fn(move |mut req: Request<Incoming>| {
                let (client, issuer, leaves) = (client.clone(), issuer.clone(), leaves.clone());
                async move {
                    if req.method() != http::Method::CONNECT {
                        return Ok::<_, Infallible>(full(
                            StatusCode::BAD_REQUEST,
                            "text/plain",
                            Bytes::from_static(b"CONNECT only\n"),
                        ));
                    }
                    let host = req.uri().host().unwrap_or("").to_string();
                    let on = hyper::upgrade::on(&mut req);
                    tokio::spawn(async move {
                        let Ok(upgraded) = on.await else {
                            return;
                        };
                        let config = leaves
                            .lock()
                            .unwrap()
                            .entry(host.clone())
                            .or_insert_with(|| server_config(&issuer, &[&host]))
                            .clone();
                        let Ok(tls) = tokio_rustls::TlsAcceptor::from(config)
                            .accept(TokioIo::new(upgraded))
                            .await
                        else {
                            return;
                        };
                        let svc = service_fn(move |req: Request<Incoming>| {
                            forward(client.clone(), host.clone(), req)
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    });
                    Ok(Response::new(
                        http_body_util::Empty::new().map_err(|e| match e {}).boxed(),
                    ))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .with_upgrades()
                .await;
        });
    }
}

/// Sends `req` on to `https://host/…` as it came (method, headers, body), and returns the
/// upstream's response as it comes, its body streamed.
async fn forward(
    client: Upstream,
    host: String,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = format!("https://{host}{path}").parse().unwrap();
    Ok(
        match client.request(Request::from_parts(parts, body)).await {
            Ok(resp) => resp.map(|b| b.map_err(BoxError::from).boxed()),
            Err(e) => full(
                StatusCode::BAD_GATEWAY,
                "text/plain",
                Bytes::from(format!("{e}\n")),
            ),
        },
    )
}
