//! A fake LLM provider: a TLS server on 127.0.0.1:0 with its own test CA, speaking HTTP/1.1
//! and h2 (by ALPN), OpenAI- and Anthropic-shaped, plus routes that exercise streaming,
//! compression, hangs and aborts. It records every request it receives.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

/// Host names the mock's certificate is valid for.
pub const MOCK_HOSTS: &[&str] = &[
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    "us-east5-aiplatform.googleapis.com",
    "bedrock-runtime.us-east-1.amazonaws.com",
    "example.test",
    "localhost",
];

/// A request as the mock received it.
#[derive(Debug, Clone)]
pub struct Seen {
    #[allow(dead_code, reason = "kept for failure dumps")]
    pub method: String,
    pub path: String,
    pub version: Version,
    pub headers: HeaderMap,
    #[allow(dead_code, reason = "kept for failure dumps")]
    pub body: Bytes,
}

pub struct Mock {
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub ca_path: PathBuf,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Set just before /slow sends its second chunk.
    pub second_chunk_sent: Arc<AtomicBool>,
    _dir: tempfile::TempDir,
    _stop: oneshot::Sender<()>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    Http1Only,
    H2AndHttp1,
}

impl Mock {
    pub async fn start(alpn: Alpn) -> Mock {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "mock provider test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_params =
            CertificateParams::new(MOCK_HOSTS.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let ca_path = dir.path().join("mock-ca.pem");
        std::fs::write(&ca_path, ca_cert.pem()).unwrap();

        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
        tls.alpn_protocols = match alpn {
            Alpn::Http1Only => vec![b"http/1.1".to_vec()],
            Alpn::H2AndHttp1 => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let second = Arc::new(AtomicBool::new(false));
        let (stop_tx, mut stop_rx) = oneshot::channel::<()>();
        let state = State {
            seen: seen.clone(),
            second: second.clone(),
        };
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = &mut stop_rx => break,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let acceptor = acceptor.clone();
                let state = state.clone();
                tokio::spawn(async move {
                    // Like any real server: no Nagle delay on small streamed writes.
                    let _ = stream.set_nodelay(true);
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(state.handle(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Mock {
            addr,
            ca_pem: ca_cert.pem(),
            ca_path,
            seen,
            second_chunk_sent: second,
            _dir: dir,
            _stop: stop_tx,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

type MockBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

#[derive(Clone)]
struct State {
    seen: Arc<Mutex<Vec<Seen>>>,
    second: Arc<AtomicBool>,
}

fn full(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<MockBody> {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .body(Full::new(body.into()).boxed())
        .unwrap()
}

/// A body fed by a channel: the test controls when each frame goes out.
fn channel_body() -> (mpsc::Sender<Bytes>, MockBody) {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    let stream = futures_stream(rx);
    (tx, StreamBody::new(stream).boxed())
}

fn futures_stream(
    rx: mpsc::Receiver<Bytes>,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, Infallible>> + Send + Sync + 'static {
    ChannelStream(rx)
}

struct ChannelStream(mpsc::Receiver<Bytes>);

impl futures_core::Stream for ChannelStream {
    type Item = Result<Frame<Bytes>, Infallible>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn sse(status: StatusCode) -> (mpsc::Sender<Bytes>, Response<MockBody>) {
    let (tx, body) = channel_body();
    let resp = Response::builder()
        .status(status)
        .header("content-type", "text/event-stream")
        .header("cache-control", "no-cache")
        .body(body)
        .unwrap();
    (tx, resp)
}

/// 2 KB of assistant text, as in the benchmark scenario.
pub fn completion_text() -> String {
    "The quick brown fox jumps over the lazy dog. ".repeat(45)
}

impl State {
    /// A WebSocket handshake (any path): `/ws/refuse` answers 403 with a JSON error; any other
    /// path is accepted (101) and echoes: a text `t` comes back as `echo: t`, binary as is,
    /// and the text `close-please` makes the mock close with 1001 (going away).
    fn websocket(&self, mut req: Request<Incoming>) -> Response<MockBody> {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        self.seen.lock().unwrap().push(Seen {
            method: req.method().to_string(),
            path: req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            version: req.version(),
            headers: req.headers().clone(),
            body: Bytes::new(),
        });
        if req.uri().path() == "/ws/refuse" {
            return full(
                StatusCode::FORBIDDEN,
                "application/json",
                &br#"{"error":{"message":"no realtime for you","type":"forbidden"}}"#[..],
            );
        }
        let key = req
            .headers()
            .get("sec-websocket-key")
            .map(|k| k.as_bytes().to_vec())
            .unwrap_or_default();
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
        // The first subprotocol offered, as a server that speaks it picks it.
        let protocol = req
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .map(|p| p.trim().to_string());
        let realtime = req.uri().path().ends_with("/realtime");
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            let Ok(upgraded) = on.await else {
                return;
            };
            let mut responses = 0;
            let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                tokio_tungstenite::tungstenite::protocol::Role::Server,
                None,
            )
            .await;
            while let Some(Ok(msg)) = ws.next().await {
                let sent = match msg {
                    Message::Text(t) if t.as_str() == "close-please" => {
                        ws.close(Some(CloseFrame {
                            code: CloseCode::Away,
                            reason: "bye".into(),
                        }))
                        .await
                    }
                    // A Realtime event gets the server events a Realtime model would send.
                    Message::Text(t)
                        if realtime
                            && let Ok(ev) =
                                serde_json::from_str::<serde_json::Value>(t.as_str()) =>
                    {
                        let mut r = Ok(());
                        for reply in realtime_replies(&ev, &mut responses) {
                            r = ws.send(Message::text(reply)).await;
                            if r.is_err() {
                                break;
                            }
                        }
                        r
                    }
                    Message::Text(t) => ws.send(Message::text(format!("echo: {t}"))).await,
                    Message::Binary(b) => ws.send(Message::Binary(b)).await,
                    _ => Ok(()),
                };
                if sent.is_err() {
                    break;
                }
            }
        });
        let mut resp = Response::builder();
        if let Some(p) = protocol {
            resp = resp.header("sec-websocket-protocol", p);
        }
        resp.status(StatusCode::SWITCHING_PROTOCOLS)
            .header(http::header::CONNECTION, "upgrade")
            .header(http::header::UPGRADE, "websocket")
            .header("sec-websocket-accept", accept)
            .body(Full::new(Bytes::new()).boxed())
            .unwrap()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<MockBody> {
        if req
            .headers()
            .get(http::header::UPGRADE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
        {
            return self.websocket(req);
        }
        let (parts, body) = req.into_parts();
        let path = parts.uri.path().to_string();
        if path == "/echo-stream" {
            // Echo each request frame as it arrives: proves request bodies stream.
            let (tx, resp_body) = channel_body();
            tokio::spawn(async move {
                let mut body = body;
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(data) = frame.into_data()
                        && tx.send(data).await.is_err()
                    {
                        break;
                    }
                }
            });
            return Response::new(resp_body);
        }
        let body = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        self.seen.lock().unwrap().push(Seen {
            method: parts.method.to_string(),
            path: parts
                .uri
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default(),
            version: parts.version,
            headers: parts.headers.clone(),
            body: body.clone(),
        });
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let stream = json["stream"].as_bool().unwrap_or(false);
        let model = json["model"].as_str().unwrap_or("gpt-4o-mini").to_string();
        // x-mock-status: N answers N with the provider's error shape (rate limits, outages).
        if let Some(status) = parts
            .headers
            .get("x-mock-status")
            .and_then(|v| v.to_str().ok()?.parse::<u16>().ok())
            .and_then(|s| StatusCode::from_u16(s).ok())
        {
            let body = serde_json::json!({"error": {"message": "mock error", "type": "rate_limit_exceeded", "code": "rate_limit_exceeded"}});
            return full(status, "application/json", body.to_string());
        }
        // Bedrock Runtime: `/model/{modelId}/{action}`.
        if let Some(rest) = path.strip_prefix("/model/")
            && let Some((model, action)) = rest.rsplit_once('/')
        {
            let model = percent_encoding::percent_decode_str(model)
                .decode_utf8_lossy()
                .into_owned();
            return bedrock(&model, action);
        }
        // Vertex AI: `…/publishers/{google,anthropic}/models/{model}:{method}`.
        if let Some((before, method)) = path.rsplit_once(':')
            && let Some((_, model)) = before.rsplit_once("/models/")
        {
            match method {
                "rawPredict" => {
                    return full(
                        StatusCode::OK,
                        "application/json",
                        anthropic_message(model).to_string(),
                    );
                }
                "streamRawPredict" => return anthropic_stream(model),
                "generateContent" => {
                    let body = serde_json::json!({
                        "candidates": [{
                            "content": {"role": "model", "parts": [{"text": "Hello from the mock Gemini."}]},
                            "finishReason": "STOP"
                        }],
                        "usageMetadata": {"promptTokenCount": 12, "candidatesTokenCount": 6, "totalTokenCount": 18},
                        "modelVersion": model
                    });
                    return full(StatusCode::OK, "application/json", body.to_string());
                }
                _ => {}
            }
        }
        // Ollama's native API: NDJSON unless `"stream": false`.
        if path == "/api/chat" || path == "/api/generate" {
            let chat = path == "/api/chat";
            let piece = |text: &str, done: bool| {
                let mut o = if chat {
                    serde_json::json!({"model": model, "message": {"role": "assistant", "content": text}, "done": done})
                } else {
                    serde_json::json!({"model": model, "response": text, "done": done})
                };
                if done {
                    o["done_reason"] = "stop".into();
                    o["prompt_eval_count"] = 26.into();
                    o["eval_count"] = 9.into();
                }
                o.to_string()
            };
            if json["stream"].as_bool() == Some(false) {
                return full(
                    StatusCode::OK,
                    "application/json",
                    piece("Hello from the mock llama.", true),
                );
            }
            let lines = [
                piece("Hello from ", false),
                piece("the mock llama.", false),
                piece("", true),
            ];
            return full(
                StatusCode::OK,
                "application/x-ndjson",
                lines.map(|l| l + "\n").concat(),
            );
        }
        match path.as_str() {
            "/v1/chat/completions" if json["tools"].is_array() => full(
                StatusCode::OK,
                "application/json",
                openai_tool_call(&model, &json).to_string(),
            ),
            "/v1/chat/completions" if stream => {
                openai_stream(&model, parts.headers.get("x-mock-chunks"))
            }
            "/v1/chat/completions" => {
                let mut completion = openai_completion(&model);
                // x-mock-cached: N reports N of the prompt tokens as read from the provider's
                // prompt cache (OpenAI's usage.prompt_tokens_details.cached_tokens).
                if let Some(n) = parts
                    .headers
                    .get("x-mock-cached")
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                {
                    completion["usage"]["prompt_tokens_details"] =
                        serde_json::json!({"cached_tokens": n});
                }
                full(StatusCode::OK, "application/json", completion.to_string())
            }
            "/v1/messages" if stream => anthropic_stream(&model),
            "/v1/messages" => full(
                StatusCode::OK,
                "application/json",
                anthropic_message(&model).to_string(),
            ),
            "/gzip" => {
                use std::io::Write;
                let mut enc =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                enc.write_all(openai_completion(&model).to_string().as_bytes())
                    .unwrap();
                let gz = enc.finish().unwrap();
                Response::builder()
                    .header("content-type", "application/json")
                    .header("content-encoding", "gzip")
                    .body(Full::new(Bytes::from(gz)).boxed())
                    .unwrap()
            }
            "/slow" => {
                let (tx, resp) = sse(StatusCode::OK);
                let second = self.second.clone();
                tokio::spawn(async move {
                    let _ = tx.send(Bytes::from_static(b"data: first\n\n")).await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    second.store(true, Ordering::SeqCst);
                    let _ = tx.send(Bytes::from_static(b"data: second\n\n")).await;
                });
                resp
            }
            "/hang" => {
                tokio::time::sleep(Duration::from_secs(60)).await;
                full(StatusCode::OK, "text/plain", "late")
            }
            "/abort-stream" => {
                let (tx, resp) = sse(StatusCode::OK);
                tokio::spawn(async move {
                    let _ = tx.send(Bytes::from_static(b"data: partial\n\n")).await;
                    // Keep the stream open until the client goes away.
                    tx.closed().await;
                });
                resp
            }
            "/big" => {
                let n: usize = parts
                    .uri
                    .query()
                    .and_then(|q| q.strip_prefix("n="))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(1 << 20);
                full(StatusCode::OK, "application/octet-stream", vec![b'x'; n])
            }
            "/error" => full(
                StatusCode::TOO_MANY_REQUESTS,
                "application/json",
                r#"{"error":{"message":"Rate limit reached","type":"rate_limit_error"}}"#,
            ),
            _ => full(
                StatusCode::NOT_FOUND,
                "application/json",
                r#"{"error":{"message":"mock: no such route"}}"#,
            ),
        }
    }
}

/// A completion that calls the first tool offered, as OpenAI answers `tools` requests.
pub fn openai_tool_call(model: &str, request: &serde_json::Value) -> serde_json::Value {
    let name = request["tools"][0]["function"]["name"]
        .as_str()
        .unwrap_or("unknown");
    serde_json::json!({
        "id": "chatcmpl-mocktool",
        "object": "chat.completion",
        "created": 1_795_183_387,
        "model": format!("{model}-2024-07-18"),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": null, "refusal": null, "tool_calls": [{
                "id": "call_mock1", "type": "function",
                "function": {"name": name, "arguments": "{\"city\":\"Paris\"}"}
            }]},
            "logprobs": null,
            "finish_reason": "tool_calls"
        }],
        "usage": {"prompt_tokens": 80, "completion_tokens": 17, "total_tokens": 97}
    })
}

pub fn openai_completion(model: &str) -> serde_json::Value {
    serde_json::json!({
        "id": "chatcmpl-mock123",
        "object": "chat.completion",
        "created": 1_795_183_387,
        "model": format!("{model}-2024-07-18"),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": completion_text(), "refusal": null},
            "logprobs": null,
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 52, "completion_tokens": 19, "total_tokens": 71},
        "system_fingerprint": "fp_mock"
    })
}

fn openai_stream(model: &str, chunks: Option<&http::HeaderValue>) -> Response<MockBody> {
    // x-mock-chunks: "N,MS" sends N content chunks MS milliseconds apart.
    let (n, gap) = chunks
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(','))
        .and_then(|(n, ms)| Some((n.parse().ok()?, ms.parse().ok()?)))
        .unwrap_or((3usize, 0u64));
    let (tx, resp) = sse(StatusCode::OK);
    let model = format!("{model}-2024-07-18");
    tokio::spawn(async move {
        let chunk = |delta: serde_json::Value, finish: Option<&str>| {
            serde_json::json!({
                "id": "chatcmpl-mockstream",
                "object": "chat.completion.chunk",
                "created": 1_795_183_387,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
            })
        };
        let mut events = vec![chunk(
            serde_json::json!({"role": "assistant", "content": ""}),
            None,
        )];
        for i in 0..n {
            events.push(chunk(
                serde_json::json!({"content": format!("part{i} ")}),
                None,
            ));
        }
        events.push(chunk(serde_json::json!({}), Some("stop")));
        events.push(serde_json::json!({
            "id": "chatcmpl-mockstream", "object": "chat.completion.chunk", "created": 1_795_183_387,
            "model": model, "choices": [],
            "usage": {"prompt_tokens": 11, "completion_tokens": n, "total_tokens": 11 + n}
        }));
        for (i, ev) in events.iter().enumerate() {
            if i > 1 && gap > 0 {
                tokio::time::sleep(Duration::from_millis(gap)).await;
            }
            if tx
                .send(Bytes::from(format!("data: {ev}\n\n")))
                .await
                .is_err()
            {
                return;
            }
        }
        let _ = tx.send(Bytes::from_static(b"data: [DONE]\n\n")).await;
    });
    resp
}

pub fn anthropic_message(model: &str) -> serde_json::Value {
    serde_json::json!({
        "id": "msg_mock123",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": "Hello from the mock Claude."}],
        "stop_reason": "end_turn",
        "stop_sequence": null,
        "usage": {"input_tokens": 25, "output_tokens": 8}
    })
}

/// Audio the mock's Realtime model "speaks": 3,000 bytes, base64, with a marker the tests
/// grep veil's output for.
pub fn realtime_audio_out() -> String {
    use base64::Engine as _;
    let mut pcm = b"MOCKAUDIOOUT".repeat(250);
    pcm.truncate(3000);
    base64::engine::general_purpose::STANDARD.encode(pcm)
}

/// The server events answering one Realtime client event (OpenAI Realtime API reference):
/// `session.update` → `session.updated`; `input_audio_buffer.commit` → `committed` and a
/// transcription (carrying a card number); `response.create` → `response.created`, an audio
/// delta, a transcript delta and `response.done` with usage in text/audio/cached details (a
/// function call instead when the request's `metadata.mock` is `"tool"`).
fn realtime_replies(ev: &serde_json::Value, responses: &mut u32) -> Vec<String> {
    use serde_json::json;
    let events = match ev["type"].as_str().unwrap_or("") {
        "session.update" => vec![json!({"type": "session.updated", "event_id": "event_1",
            "session": {"id": "sess_mock", "model": "gpt-realtime",
                "instructions": ev["session"]["instructions"]}})],
        "conversation.item.create" => {
            vec![json!({"type": "conversation.item.created", "item": ev["item"]})]
        }
        "input_audio_buffer.commit" => vec![
            json!({"type": "input_audio_buffer.committed", "item_id": "item_audio1"}),
            json!({"type": "conversation.item.input_audio_transcription.completed",
                "item_id": "item_audio1", "content_index": 0,
                "transcript": "My card is 4111 1111 1111 1111."}),
        ],
        "response.create" => {
            *responses += 1;
            let id = format!("resp_mock{responses}");
            let output = if ev["response"]["metadata"]["mock"] == "tool" {
                json!([{"type": "function_call", "name": "get_weather", "call_id": "call_mock",
                    "arguments": "{\"city\":\"Paris\"}"}])
            } else {
                json!([{"type": "message", "role": "assistant", "content": [{"type": "output_audio",
                    "transcript": "Hello Dana Whitfield, I noted dana.whitfield@example.com."}]}])
            };
            vec![
                json!({"type": "response.created", "response": {"id": id, "status": "in_progress"}}),
                // `type` first, as the API sends it (json! would sort it after the audio).
                serde_json::Value::String(format!(
                    r#"{{"type":"response.output_audio.delta","response_id":"{id}","delta":"{}"}}"#,
                    realtime_audio_out()
                )),
                json!({"type": "response.output_audio_transcript.delta", "response_id": id, "delta": "Hello"}),
                json!({"type": "response.done", "response": {"id": id, "status": "completed",
                    "output": output,
                    "usage": {"total_tokens": 160, "input_tokens": 120, "output_tokens": 40,
                        "input_token_details": {"text_tokens": 20, "audio_tokens": 100, "cached_tokens": 64,
                            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 64}},
                        "output_token_details": {"text_tokens": 10, "audio_tokens": 30}}}}),
            ]
        }
        _ => Vec::new(),
    };
    events
        .into_iter()
        .map(|e| match e {
            serde_json::Value::String(raw) => raw,
            other => other.to_string(),
        })
        .collect()
}

/// Bedrock Runtime: Converse (JSON, or an event stream of Converse events) and InvokeModel
/// of an Anthropic body (JSON with Bedrock's token-count headers, or an event stream of
/// `chunk` events each carrying one Anthropic stream event in base64). Framed with veil's
/// own encoder; boto3 checks every CRC when it reads them.
fn bedrock(model: &str, action: &str) -> Response<MockBody> {
    use base64::Engine as _;
    let frame = |event: &str, payload: &serde_json::Value| {
        Bytes::from(veil::exchange::eventstream::encode(
            &[
                (":event-type", event),
                (":content-type", "application/json"),
                (":message-type", "event"),
            ],
            payload.to_string().as_bytes(),
        ))
    };
    let frames: Vec<Bytes> = match action {
        "converse" => {
            let body = serde_json::json!({
                "output": {"message": {"role": "assistant", "content": [{"text": "Hello from the mock Bedrock."}]}},
                "stopReason": "end_turn",
                "usage": {"inputTokens": 21, "outputTokens": 7, "totalTokens": 28},
                "metrics": {"latencyMs": 12}
            });
            return Response::builder()
                .header("content-type", "application/json")
                .header("x-amzn-requestid", "0f6c7e1a-mock-converse")
                .body(Full::new(Bytes::from(body.to_string())).boxed())
                .unwrap();
        }
        "invoke" => {
            return Response::builder()
                .header("content-type", "application/json")
                .header("x-amzn-bedrock-input-token-count", "25")
                .header("x-amzn-bedrock-output-token-count", "8")
                .body(Full::new(Bytes::from(anthropic_message(model).to_string())).boxed())
                .unwrap();
        }
        "converse-stream" => [
            ("messageStart", serde_json::json!({"role": "assistant", "p": "abcd"})),
            ("contentBlockDelta", serde_json::json!({"contentBlockIndex": 0, "delta": {"text": "Hello from "}, "p": "ab"})),
            ("contentBlockDelta", serde_json::json!({"contentBlockIndex": 0, "delta": {"text": "the mock Bedrock."}, "p": "abcdef"})),
            ("contentBlockStop", serde_json::json!({"contentBlockIndex": 0})),
            ("messageStop", serde_json::json!({"stopReason": "end_turn"})),
            ("metadata", serde_json::json!({"usage": {"inputTokens": 21, "outputTokens": 7, "totalTokens": 28}, "metrics": {"latencyMs": 12}})),
        ]
        .iter()
        .map(|(event, payload)| frame(event, payload))
        .collect(),
        "invoke-with-response-stream" => anthropic_events(model)
            .iter()
            .map(|(_, event)| {
                let b64 = base64::engine::general_purpose::STANDARD.encode(event.to_string());
                frame("chunk", &serde_json::json!({ "bytes": b64 }))
            })
            .collect(),
        _ => {
            return full(
                StatusCode::NOT_FOUND,
                "application/json",
                r#"{"message":"mock: no such Bedrock action"}"#,
            );
        }
    };
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        for f in frames {
            if tx.send(f).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .header("content-type", "application/vnd.amazon.eventstream")
        .header("x-amzn-requestid", "0f6c7e1a-mock-stream")
        .body(body)
        .unwrap()
}

/// The events of the mock's streamed Claude answer, as Anthropic names and sends them.
fn anthropic_events(model: &str) -> [(&'static str, serde_json::Value); 7] {
    [
        (
            "message_start",
            serde_json::json!({"type": "message_start", "message": {
                "id": "msg_mockstream", "type": "message", "role": "assistant", "model": model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 25, "output_tokens": 1}}}),
        ),
        (
            "content_block_start",
            serde_json::json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ),
        (
            "content_block_delta",
            serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello from "}}),
        ),
        (
            "content_block_delta",
            serde_json::json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "the mock Claude."}}),
        ),
        (
            "content_block_stop",
            serde_json::json!({"type": "content_block_stop", "index": 0}),
        ),
        (
            "message_delta",
            serde_json::json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 8}}),
        ),
        ("message_stop", serde_json::json!({"type": "message_stop"})),
    ]
}

fn anthropic_stream(model: &str) -> Response<MockBody> {
    let (tx, resp) = sse(StatusCode::OK);
    let events = anthropic_events(model);
    tokio::spawn(async move {
        for (name, data) in events {
            if tx
                .send(Bytes::from(format!("event: {name}\ndata: {data}\n\n")))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    resp
}
