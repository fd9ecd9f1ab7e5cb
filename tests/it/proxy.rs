//! The proxy core (issue #2): interception, streaming, capture, failures, hand-off.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc;

use crate::support::harness::{
    Client, Proto, ReqBody, Veil, body_text, connect, get, post_json, tls_client,
};
use crate::support::mock_llm::{Alpn, Mock, openai_completion};
use veil::exchange::{Outcome, Route, UpstreamFailure};

fn chat_request() -> serde_json::Value {
    serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Say hello"}]
    })
}

#[tokio::test]
async fn h1_and_h2_clients_against_h1_and_h2_upstreams() {
    for upstream in [Alpn::Http1Only, Alpn::H2AndHttp1] {
        let mock = Mock::start(upstream).await;
        let mut veil = Veil::start(&mock).await;
        for proto in [Proto::Http1, Proto::Http1NoAlpn, Proto::H2] {
            let ctx = format!("client {proto:?}, upstream {upstream:?}");
            let mut client =
                Client::connect(veil.addr, "api.openai.com", &veil.ca_pem, proto).await;
            let resp = client
                .send(post_json(
                    "api.openai.com",
                    "/v1/chat/completions",
                    &chat_request(),
                ))
                .await;
            assert_eq!(resp.status(), 200, "{ctx}");
            let id = resp.headers()["x-veil-request-id"]
                .to_str()
                .unwrap()
                .to_string();
            let body = body_text(resp).await;
            assert_eq!(body, openai_completion("gpt-4o-mini").to_string(), "{ctx}");

            let seen = mock.seen().pop().unwrap();
            let expected_version = match upstream {
                Alpn::Http1Only => http::Version::HTTP_11,
                Alpn::H2AndHttp1 => http::Version::HTTP_2,
            };
            assert_eq!(
                seen.version, expected_version,
                "{ctx}: upstream protocol chosen by ALPN"
            );
            assert_eq!(seen.path, "/v1/chat/completions");

            let ex = veil.next_exchange().await;
            assert_eq!(
                ex.id.to_string(),
                id,
                "{ctx}: header carries the exchange id"
            );
            assert_eq!(ex.outcome, Outcome::Complete, "{ctx}");
            assert_eq!(ex.status, Some(200));
            assert_eq!(ex.route, Route::Intercept);
            assert_eq!(ex.upstream.host, "api.openai.com");
            assert_eq!(ex.method, "POST");
            assert_eq!(
                ex.request_body.bytes(),
                Bytes::from(chat_request().to_string())
            );
            assert_eq!(ex.response_body.bytes(), Bytes::from(body));
            assert!(ex.timings.response_headers.is_some() && ex.timings.first_byte.is_some());
            assert!(ex.timings.end >= ex.timings.first_byte.unwrap());
        }
        veil.stop().await;
    }
}

#[tokio::test]
async fn sse_chunks_reach_the_client_before_the_next_is_sent() {
    for proto in [Proto::Http1, Proto::H2] {
        let mock = Mock::start(Alpn::H2AndHttp1).await;
        let mut veil = Veil::start(&mock).await;
        let mut client = Client::connect(veil.addr, "api.openai.com", &veil.ca_pem, proto).await;
        let resp = client.send(get("api.openai.com", "/slow")).await;
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"data: first\n\n");
        // The mock sets this flag only after a 200 ms pause, just before sending chunk two.
        assert!(
            !mock.second_chunk_sent.load(Ordering::SeqCst),
            "{proto:?}: first chunk arrived only after the second was sent: veil buffered the stream"
        );
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(&rest[..], b"data: second\n\n");
        let ex = veil.next_exchange().await;
        assert_eq!(
            &ex.response_body.bytes()[..],
            b"data: first\n\ndata: second\n\n"
        );
        assert_eq!(ex.outcome, Outcome::Complete);
        veil.stop().await;
    }
}

#[tokio::test]
async fn request_bodies_stream_upstream_frame_by_frame() {
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let mut veil = Veil::start(&mock).await;
    let mut client = Client::connect(veil.addr, "api.openai.com", &veil.ca_pem, Proto::Http1).await;
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let stream = ReceiverStream(rx);
    let req: Request<ReqBody> = Request::post("https://api.openai.com/echo-stream")
        .header("host", "api.openai.com")
        .body(StreamBody::new(stream).boxed())
        .unwrap();
    tx.send(Bytes::from_static(b"chunk-one;")).await.unwrap();
    let resp = client.send(req).await;
    let mut body = resp.into_body();
    // The upstream echoes what it has received; chunk one comes back while chunk two has not
    // even been produced, so veil cannot have waited for the whole request body.
    let echoed = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("chunk one echoed before the request body ended")
        .unwrap()
        .unwrap()
        .into_data()
        .unwrap();
    assert_eq!(&echoed[..], b"chunk-one;");
    tx.send(Bytes::from_static(b"chunk-two")).await.unwrap();
    drop(tx);
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"chunk-two");
    let ex = veil.next_exchange().await;
    assert_eq!(&ex.request_body.bytes()[..], b"chunk-one;chunk-two");
    assert_eq!(&ex.response_body.bytes()[..], b"chunk-one;chunk-two");
    veil.stop().await;
}

struct ReceiverStream(mpsc::Receiver<Bytes>);

impl futures_core::Stream for ReceiverStream {
    type Item = Result<Frame<Bytes>, std::convert::Infallible>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

#[tokio::test]
async fn gzip_is_recorded_decoded_and_delivered_byte_identical() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let mut veil = Veil::start(&mock).await;
    let mut client = Client::connect(veil.addr, "api.openai.com", &veil.ca_pem, Proto::Http1).await;
    let mut req = get("api.openai.com", "/gzip");
    req.headers_mut()
        .insert("accept-encoding", "gzip".parse().unwrap());
    let resp = client.send(req).await;
    assert_eq!(resp.headers()["content-encoding"], "gzip");
    let delivered = resp.into_body().collect().await.unwrap().to_bytes();
    let plain = openai_completion("gpt-4o-mini").to_string();
    let expected_gz = {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(plain.as_bytes()).unwrap();
        enc.finish().unwrap()
    };
    assert_eq!(
        &delivered[..],
        &expected_gz[..],
        "client gets the upstream's bytes untouched"
    );
    let ex = veil.next_exchange().await;
    assert_eq!(ex.response_body.content_encoding.as_deref(), Some("gzip"));
    assert_eq!(&ex.response_body.bytes()[..], &expected_gz[..]);
    assert_eq!(
        ex.response_body.decoded(1 << 20).unwrap(),
        Bytes::from(plain)
    );
    veil.stop().await;
}

#[tokio::test]
async fn other_hosts_are_tunnelled_blind_with_the_real_certificate() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let mut veil = Veil::start(&mock).await;
    // example.test is not intercepted: the TLS session is with the mock itself.
    let (code, stream) = connect(veil.addr, "example.test", 443).await;
    assert_eq!(code, 200);
    let tls = tokio_rustls::TlsConnector::from(tls_client(&mock.ca_pem, &[b"http/1.1"]))
        .connect("example.test".try_into().unwrap(), stream)
        .await
        .expect("the mock's own certificate, verified against the mock's CA");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            Request::post("/v1/chat/completions")
                .header("host", "example.test")
                .body(Full::new(Bytes::from(chat_request().to_string())))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("x-veil-request-id").is_none(),
        "not intercepted"
    );

    // Trusting only veil's CA must fail: veil did not mint a leaf for this host.
    let (_, stream) = connect(veil.addr, "example.test", 443).await;
    let err = tokio_rustls::TlsConnector::from(tls_client(&veil.ca_pem, &[b"http/1.1"]))
        .connect("example.test".try_into().unwrap(), stream)
        .await;
    assert!(err.is_err(), "tunnel must not be intercepted");
    veil.assert_no_exchange(Duration::from_millis(300)).await;
    assert!(veil.counters.proxy.tunnels.get() >= 1);
    veil.stop().await;
}

#[tokio::test]
async fn gateway_routes_forward_without_a_ca() {
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let mut veil = Veil::start(&mock).await;
    let stream = tokio::net::TcpStream::connect(veil.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            Request::post("/openai/v1/chat/completions?trace=1")
                .header("host", veil.addr.to_string())
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(chat_request().to_string())))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-veil-request-id"));
    let seen = mock.seen().pop().unwrap();
    assert_eq!(seen.path, "/v1/chat/completions?trace=1");
    let authority = seen
        .headers
        .get("host")
        .map(|h| h.to_str().unwrap().to_string());
    // h2 upstreams carry the authority in :authority, h1 in Host.
    assert!(
        authority.is_none() || authority.as_deref() == Some("api.openai.com"),
        "{authority:?}"
    );
    let ex = veil.next_exchange().await;
    assert_eq!(
        ex.route,
        Route::Gateway {
            name: "openai".into()
        }
    );
    assert_eq!(ex.upstream.host, "api.openai.com");

    let resp = send
        .send_request(
            Request::get("/nope/v1/models")
                .header("host", "x")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    assert!(
        text.contains("no gateway route") && text.contains("openai"),
        "{text}"
    );
    veil.stop().await;
}

#[tokio::test]
async fn upstream_down_is_a_502_with_a_json_reason() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let mut veil = Veil::start_with(&mock, |raw| {
        raw.resolve = Some(vec![format!("api.openai.com:443:{closed}")]);
    })
    .await;
    let mut client = Client::connect(veil.addr, "api.openai.com", &veil.ca_pem, Proto::Http1).await;
    let resp = client
        .send(post_json(
            "api.openai.com",
            "/v1/chat/completions",
            &chat_request(),
        ))
        .await;
    assert_eq!(resp.status(), 502);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: serde_json::Value = serde_json::from_str(&body_text(resp).await).unwrap();
    assert_eq!(body["error"]["code"], "upstream_connect", "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains(&closed.to_string()), "says where: {msg}");
    let ex = veil.next_exchange().await;
    assert!(
        matches!(
            ex.outcome,
            Outcome::UpstreamFailed {
                kind: UpstreamFailure::Connect,
                ..
            }
        ),
        "{:?}",
        ex.outcome
    );
    assert_eq!(ex.status, None);
    veil.stop().await;
}

#[tokio::test]
async fn untrusted_upstream_certificate_is_a_502() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let mut veil = Veil::start_with(&mock, |raw| raw.upstream_ca = None).await;
    let mut client = Client::connect(veil.addr, "api.openai.com", &veil.ca_pem, Proto::Http1).await;
    let resp = client
        .send(post_json(
            "api.openai.com",
            "/v1/chat/completions",
            &chat_request(),
        ))
        .await;
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = serde_json::from_str(&body_text(resp).await).unwrap();
    assert_eq!(body["error"]["code"], "upstream_tls", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("certificate"),
        "{body}"
    );
    // The mock's CA is private: the message says how to trust it.
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--upstream-ca"),
        "{body}"
    );
    assert!(
        mock.seen().is_empty(),
        "nothing was sent to an unverified upstream"
    );
    let ex = veil.next_exchange().await;
    assert!(matches!(
        ex.outcome,
        Outcome::UpstreamFailed {
            kind: UpstreamFailure::Tls,
            ..
        }
    ));
    veil.stop().await;
}

#[tokio::test]
async fn upstream_timeout_is_a_504() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let mut veil = Veil::start_with(&mock, |raw| raw.upstream_timeout = Some("300ms".into())).await;
    let mut client = Client::connect(veil.addr, "api.openai.com", &veil.ca_pem, Proto::Http1).await;
    let started = std::time::Instant::now();
    let resp = client.send(get("api.openai.com", "/hang")).await;
    assert_eq!(resp.status(), 504);
    assert!(started.elapsed() < Duration::from_secs(5));
    let body: serde_json::Value = serde_json::from_str(&body_text(resp).await).unwrap();
    assert_eq!(body["error"]["code"], "upstream_timeout");
    let ex = veil.next_exchange().await;
    assert!(matches!(
        ex.outcome,
        Outcome::UpstreamFailed {
            kind: UpstreamFailure::Timeout,
            ..
        }
    ));
    veil.stop().await;
}

/// Each connection keeps its last request's `upstream_timeout` timer for the next request
/// (`ClientSlot::upstream_timer`): a kept timer whose deadline has passed must not cut the
/// next request, and it must still fire for a request the upstream never answers.
#[tokio::test]
async fn upstream_timeout_holds_for_each_request_on_a_kept_connection() {
    for proto in [Proto::Http1, Proto::H2] {
        let mock = Mock::start(Alpn::H2AndHttp1).await;
        let mut veil =
            Veil::start_with(&mock, |raw| raw.upstream_timeout = Some("300ms".into())).await;
        let mut client = Client::connect(veil.addr, "api.openai.com", &veil.ca_pem, proto).await;
        let resp = client.send(get("api.openai.com", "/error")).await;
        assert_eq!(resp.status(), 429, "{proto:?}: the upstream's own answer");
        body_text(resp).await;
        // Past the first request's deadline: its timer, kept, has run out.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let resp = client.send(get("api.openai.com", "/error")).await;
        assert_eq!(
            resp.status(),
            429,
            "{proto:?}: a request on the kept connection is not cut by the old deadline"
        );
        body_text(resp).await;
        // Mid-way through the last request's 300 ms: the kept timer, still running, fires
        // 150 ms into the next request, which must wait on to its own deadline.
        tokio::time::sleep(Duration::from_millis(150)).await;
        let started = std::time::Instant::now();
        let resp = client.send(get("api.openai.com", "/hang")).await;
        let took = started.elapsed();
        assert_eq!(resp.status(), 504, "{proto:?}");
        assert!(
            took >= Duration::from_millis(250) && took < Duration::from_secs(5),
            "{proto:?}: cut after {took:?}, not after upstream_timeout (300 ms)"
        );
        for _ in 0..3 {
            veil.next_exchange().await;
        }
        veil.stop().await;
    }
}

#[tokio::test]
async fn client_abort_mid_stream_yields_one_aborted_exchange() {
    for proto in [Proto::Http1, Proto::H2] {
        let mock = Mock::start(Alpn::H2AndHttp1).await;
        let mut veil = Veil::start(&mock).await;
        let mut client = Client::connect(veil.addr, "api.openai.com", &veil.ca_pem, proto).await;
        let resp = client.send(get("api.openai.com", "/abort-stream")).await;
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&first[..], b"data: partial\n\n");
        drop(body);
        drop(client);
        let ex = veil.next_exchange().await;
        assert_eq!(ex.outcome, Outcome::ClientAborted, "{proto:?}");
        assert_eq!(&ex.response_body.bytes()[..], b"data: partial\n\n");
        veil.assert_no_exchange(Duration::from_millis(300)).await;
        veil.stop().await;
    }
}

#[tokio::test]
async fn veil_headers_are_recorded_and_never_reach_the_upstream() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let mut veil = Veil::start(&mock).await;
    let mut client = Client::connect(veil.addr, "api.openai.com", &veil.ca_pem, Proto::Http1).await;
    let mut req = post_json("api.openai.com", "/v1/chat/completions", &chat_request());
    req.headers_mut()
        .insert("x-veil-feature", "seo-audit".parse().unwrap());
    req.headers_mut()
        .insert("x-veil-user", "alice@example.com".parse().unwrap());
    let resp = client.send(req).await;
    assert_eq!(resp.status(), 200);
    let seen = mock.seen().pop().unwrap();
    let leaked: Vec<_> = seen
        .headers
        .keys()
        .filter(|k| k.as_str().starts_with("x-veil"))
        .collect();
    assert!(
        leaked.is_empty(),
        "x-veil-* reached the upstream: {leaked:?}"
    );
    let ex = veil.next_exchange().await;
    assert_eq!(ex.tag("feature"), Some("seo-audit"));
    assert_eq!(ex.tag("user"), Some("alice@example.com"));
    assert!(
        ex.request_headers
            .iter()
            .all(|(k, _)| !k.starts_with("x-veil"))
    );
    veil.stop().await;
}

#[tokio::test]
async fn credentials_are_forwarded_but_never_in_the_exchange() {
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let mut veil = Veil::start(&mock).await;
    for proto in [Proto::Http1, Proto::H2] {
        let mut client = Client::connect(veil.addr, "api.openai.com", &veil.ca_pem, proto).await;
        let mut req = post_json(
            "api.openai.com",
            "/v1/chat/completions?key=AIzaQUERYSECRET&client_secret=CLIENTSECRET&password=PASSWORDSECRET",
            &chat_request(),
        );
        let h = req.headers_mut();
        h.insert(
            "ocp-apim-subscription-key",
            "APIMKEYSECRET".parse().unwrap(),
        );
        h.insert("x-auth-token", "XAUTHSECRET".parse().unwrap());
        h.insert("x-access-token", "XACCESSSECRET".parse().unwrap());
        h.insert(
            "authorization",
            "Bearer sk-proj-BEARERSECRET".parse().unwrap(),
        );
        h.insert("x-api-key", "sk-ant-XAPIKEYSECRET".parse().unwrap());
        h.insert("api-key", "AZUREKEYSECRET".parse().unwrap());
        h.insert("x-goog-api-key", "GOOGKEYSECRET".parse().unwrap());
        h.insert("cookie", "session=COOKIESECRET".parse().unwrap());
        let resp = client.send(req).await;
        assert_eq!(resp.status(), 200);
        let seen = mock.seen().pop().unwrap();
        assert_eq!(
            seen.headers["authorization"], "Bearer sk-proj-BEARERSECRET",
            "forwarded intact"
        );
        assert!(seen.path.contains("key=AIzaQUERYSECRET"));
        assert!(seen.path.contains("password=PASSWORDSECRET"));
        assert_eq!(
            seen.headers["x-auth-token"], "XAUTHSECRET",
            "forwarded intact"
        );
        let ex = veil.next_exchange().await;
        let dump = format!("{ex:?} {:?} {:?}", ex.request_headers, ex.path);
        for secret in [
            "QUERYSECRET",
            "BEARERSECRET",
            "XAPIKEYSECRET",
            "AZUREKEYSECRET",
            "GOOGKEYSECRET",
            "COOKIESECRET",
            "CLIENTSECRET",
            "PASSWORDSECRET",
            "APIMKEYSECRET",
            "XAUTHSECRET",
            "XACCESSSECRET",
        ] {
            assert!(
                !dump.contains(secret),
                "{proto:?}: {secret} leaked into the exchange: {dump}"
            );
        }
        let fp = ex
            .api_key_fingerprint
            .clone()
            .expect("API key fingerprinted");
        assert!(fp.starts_with("fp_") && fp.len() == 19, "{fp}");
        assert_eq!(ex.request_header("authorization"), Some(fp.as_str()));
    }
    veil.stop().await;
}

#[tokio::test]
async fn bodies_over_the_capture_limit_are_forwarded_whole_and_marked_truncated() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let mut veil = Veil::start_with(&mock, |raw| raw.capture_limit = Some("1KiB".into())).await;
    let mut client = Client::connect(veil.addr, "api.openai.com", &veil.ca_pem, Proto::Http1).await;
    let resp = client.send(get("api.openai.com", "/big?n=100000")).await;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.len(), 100_000);
    let ex = veil.next_exchange().await;
    assert!(ex.response_body.truncated && ex.is_truncated());
    assert_eq!(ex.response_body.captured_len(), 1024);
    assert_eq!(ex.response_body.wire_len, 100_000);
    assert_eq!(ex.outcome, Outcome::Complete);
    veil.stop().await;
}

#[tokio::test]
async fn connect_to_other_ports_is_refused() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let veil = Veil::start(&mock).await;
    let (code, _) = connect(veil.addr, "example.test", 22).await;
    assert_eq!(code, 403);
    let (code, _) = connect(veil.addr, "api.openai.com", 8443).await;
    assert_eq!(code, 403);
    veil.stop().await;
}

#[tokio::test]
async fn audit_required_refuses_what_it_cannot_record() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let mut veil = required_with_one_slot(&mock, "300ms").await;
    let mut client = Client::connect(veil.addr, "api.openai.com", &veil.ca_pem, Proto::Http1).await;
    let resp = client
        .send(post_json(
            "api.openai.com",
            "/v1/chat/completions",
            &chat_request(),
        ))
        .await;
    assert_eq!(resp.status(), 200);
    body_text(resp).await;
    // The queue (capacity 1) now holds that exchange and nobody consumes it: the next
    // request waits `queue_wait` for room, then is refused.
    let asked = std::time::Instant::now();
    let resp = client
        .send(post_json(
            "api.openai.com",
            "/v1/chat/completions",
            &chat_request(),
        ))
        .await;
    assert_eq!(resp.status(), 503);
    assert!(
        asked.elapsed() >= Duration::from_millis(300),
        "refused only after queue_wait"
    );
    assert_eq!(veil.counters.queue.waited.get(), 1);
    let body: serde_json::Value = serde_json::from_str(&body_text(resp).await).unwrap();
    assert_eq!(body["error"]["code"], "audit_unavailable");
    assert_eq!(
        mock.seen().len(),
        1,
        "the refused request never went upstream"
    );
    assert_eq!(veil.counters.queue.refused.get(), 1);
    // Only the request that went upstream with its recording counts as intercepted.
    assert_eq!(veil.counters.proxy.intercepted.get(), 1);
    veil.next_exchange().await;
    veil.stop().await;
}

/// A veil under `audit = "required"` whose recording queue holds one exchange, waiting
/// `queue_wait` for room.
async fn required_with_one_slot(mock: &Mock, queue_wait: &str) -> Veil {
    Veil::start_with(mock, |raw| {
        raw.queue_capacity = Some(1);
        raw.queue_wait = Some(queue_wait.into());
        raw.audit = Some(veil::config::Audit::Required);
    })
    .await
}

/// Returns once a request waits for room in the recording queue; fails after 10 s.
async fn until_a_request_waits(counters: &veil::counters::Counters) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counters.queue.waiting.get() == 0 {
        assert!(std::time::Instant::now() < deadline, "no request waited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A saturated recorder under `audit = "required"` slows traffic instead of failing it: a
/// request that finds the queue full waits (up to `queue_wait`) and goes upstream as soon as
/// the pipeline takes an exchange.
#[tokio::test]
async fn audit_required_waits_for_room_instead_of_refusing() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let mut veil = required_with_one_slot(&mock, "60s").await;
    let ask = |addr, ca: String| async move {
        let mut client = Client::connect(addr, "api.openai.com", &ca, Proto::Http1).await;
        let resp = client
            .send(post_json(
                "api.openai.com",
                "/v1/chat/completions",
                &chat_request(),
            ))
            .await;
        let status = resp.status();
        body_text(resp).await;
        status
    };
    assert_eq!(ask(veil.addr, veil.ca_pem.clone()).await, 200);
    // The queue is full; the second request waits for room.
    let second = tokio::spawn(ask(veil.addr, veil.ca_pem.clone()));
    until_a_request_waits(&veil.counters).await;
    assert_eq!(
        mock.seen().len(),
        1,
        "a waiting request has not gone upstream"
    );
    assert!(!second.is_finished());
    // The pipeline (here the test) takes the first exchange: the second goes through.
    veil.next_exchange().await;
    let status = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("answered once room came, long before queue_wait")
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(mock.seen().len(), 2);
    let counters = veil.counters.clone();
    let q = &counters.queue;
    assert_eq!(
        (q.waited.get(), q.refused.get(), q.waiting.get()),
        (1, 0, 0)
    );

    // Health is judged again after a wait: a request that waited while recording degraded
    // is refused when room comes, and never goes upstream.
    let third = tokio::spawn(ask(veil.addr, veil.ca_pem.clone()));
    until_a_request_waits(&veil.counters).await;
    veil.health
        .degrade(veil::health::Part::Seal, "index commit: disk full");
    veil.next_exchange().await;
    let status = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("answered once room came")
        .unwrap();
    assert_eq!(status, 503);
    assert_eq!(
        mock.seen().len(),
        2,
        "the refused request never went upstream"
    );
    assert_eq!(
        (q.waited.get(), q.refused.get(), q.waiting.get()),
        (2, 1, 0)
    );
    assert_eq!(q.depth.get(), 0, "its reservation was given back");
    veil.health.recover(veil::health::Part::Seal);

    // A request still waiting when shutdown begins is refused at once, not cut.
    assert_eq!(ask(veil.addr, veil.ca_pem.clone()).await, 200);
    let fourth = tokio::spawn(ask(veil.addr, veil.ca_pem.clone()));
    until_a_request_waits(&veil.counters).await;
    let stopping = tokio::spawn(veil.stop());
    let status = tokio::time::timeout(Duration::from_secs(10), fourth)
        .await
        .expect("answered when shutdown began, long before queue_wait")
        .unwrap();
    assert_eq!(status, 503);
    assert_eq!(mock.seen().len(), 3);
    assert_eq!((q.waiting.get(), q.refused.get()), (0, 2));
    stopping.await.unwrap();
}

#[tokio::test]
async fn best_effort_keeps_traffic_flowing_and_counts_drops() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let mut veil = Veil::start_with(&mock, |raw| raw.queue_capacity = Some(1)).await;
    assert_eq!(veil.counters.queue.capacity.get(), 1, "queue_capacity");
    let mut client = Client::connect(veil.addr, "api.openai.com", &veil.ca_pem, Proto::Http1).await;
    let mut first: Option<String> = None;
    for n in 0..3 {
        let resp = client
            .send(post_json(
                "api.openai.com",
                "/v1/chat/completions",
                &chat_request(),
            ))
            .await;
        assert_eq!(resp.status(), 200);
        // The first fills the one slot when it ends; the others find the queue full when they
        // arrive and are forwarded without being recorded (veil#18): no request ID.
        assert_eq!(resp.headers().contains_key("x-veil-request-id"), n == 0);
        let text = body_text(resp).await;
        assert!(!text.is_empty());
        if n == 0 {
            // Handed over once both bodies have ended: wait for it, so the next request
            // finds the queue full when it arrives.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while veil.counters.queue.depth.get() < 1 {
                assert!(std::time::Instant::now() < deadline, "never queued");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // Forwarded whole, recorded or not.
        assert_eq!(first.get_or_insert_with(|| text.clone()), &text);
        if n > 0 {
            // Counted when it arrived, not when it ended.
            assert_eq!(veil.counters.queue.dropped_full.get(), n);
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(veil.counters.queue.queued.get(), 1);
    assert_eq!(veil.counters.queue.dropped(), 2);
    assert_eq!(
        veil.counters.proxy.intercepted.get(),
        3,
        "all three were intercepted"
    );
    // The full queue as an operator sees it: depth at capacity (veil#15)...
    assert_eq!(veil.counters.queue.depth.get(), 1, "the queue is full");
    // ...and empty again once the pipeline (here the test) takes the exchange.
    veil.next_exchange().await;
    assert_eq!(veil.counters.queue.depth.get(), 0);
    veil.stop().await;
}

/// veil#18: under best-effort, a request in flight holds no slot of the recording queue, so
/// requests that last (a stream, a slow upstream) cannot keep the others from being recorded.
/// (For a while a best-effort request held its slot from its arrival: `queue_capacity` long
/// requests then made all other traffic unrecorded.)
#[tokio::test]
async fn best_effort_requests_in_flight_hold_no_queue_slot() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let mut veil = Veil::start_with(&mock, |raw| raw.queue_capacity = Some(1)).await;
    // A request whose upstream does not answer: in flight until the test ends.
    let (addr, ca) = (veil.addr, veil.ca_pem.clone());
    let hanging = tokio::spawn(async move {
        let mut client = Client::connect(addr, "api.openai.com", &ca, Proto::Http1).await;
        client.send(get("api.openai.com", "/hang")).await
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while mock.seen().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the request never went upstream"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut client = Client::connect(veil.addr, "api.openai.com", &veil.ca_pem, Proto::Http1).await;
    let resp = client.chat("hi").await;
    assert_eq!(resp.status(), 200);
    let id = resp
        .headers()
        .get("x-veil-request-id")
        .expect("recorded: the request in flight holds no slot")
        .to_str()
        .unwrap()
        .to_string();
    body_text(resp).await;
    let ex = veil.next_exchange().await;
    assert_eq!(ex.id.to_string(), id);
    assert_eq!(veil.counters.queue.dropped(), 0);
    hanging.abort();
    veil.stop().await;
}

/// veil#18: best-effort admits a request when the queue has room on its arrival, and the
/// exchange is offered again at its end: one whose bodies no longer fit the byte budget then
/// is dropped (counted, never queued later), though its response already carried its id, and
/// it is forwarded whole all the same.
#[tokio::test]
async fn best_effort_drops_at_its_end_what_no_longer_fits() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let mut veil = Veil::start_with(&mock, |raw| {
        raw.queue_capacity = Some(4);
        raw.queue_max_bytes = Some("8KiB".into());
    })
    .await;
    let mut client = Client::connect(veil.addr, "api.openai.com", &veil.ca_pem, Proto::Http1).await;
    let mut ask = async |prompt: String| {
        let resp = client.chat(&prompt).await;
        assert_eq!(resp.status(), 200);
        let id = resp.headers().contains_key("x-veil-request-id");
        (id, body_text(resp).await)
    };
    // A small exchange, queued and not taken: its bytes stay on the budget.
    assert!(ask("hello".into()).await.0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while veil.counters.queue.depth.get() < 1 {
        assert!(std::time::Instant::now() < deadline, "never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Room on arrival (a slot, budget left), too big for what is left at its end.
    let (id, text) = ask("x".repeat(12 * 1024)).await;
    assert!(id, "admitted when it arrived");
    assert!(!text.is_empty(), "forwarded whole");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while veil.counters.queue.dropped_bytes.get() < 1 {
        assert!(std::time::Instant::now() < deadline, "never dropped");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(veil.counters.queue.dropped(), 1);
    let first = veil.next_exchange().await;
    assert!(first.request_body.captured_len() < 1024);
    veil.assert_no_exchange(Duration::from_millis(300)).await;
    assert_eq!(veil.counters.queue.queued.get(), 1);
    veil.stop().await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_streams_finish() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let mut veil = Veil::start(&mock).await;
    let mut client = Client::connect(veil.addr, "api.openai.com", &veil.ca_pem, Proto::Http1).await;
    let resp = client.send(get("api.openai.com", "/slow")).await;
    let mut body = resp.into_body();
    body.frame().await.unwrap().unwrap();
    let ex_rx = std::mem::replace(
        &mut veil.exchanges,
        veil::exchange::queue::channel(1, 1, Default::default()).1,
    );
    let addr = veil.addr;
    let stopping = tokio::spawn(veil.stop());
    // While draining, veil accepts no new connections...
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed on shutdown"
    );
    // ...but the in-flight stream completes.
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(&rest[..], b"data: second\n\n");
    stopping.await.unwrap();
    let mut ex_rx = ex_rx;
    let ex = ex_rx
        .recv()
        .await
        .expect("the drained exchange was recorded");
    assert_eq!(ex.outcome, Outcome::Complete);
}

/// A plain-HTTP server on 127.0.0.1:0 answering every request with its path.
async fn plain_http_server() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let path = req.uri().path_and_query().unwrap().to_string();
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(format!("plain:{path}")),
                        )))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn absolute_form_plain_http_is_forwarded_and_recorded_only_when_intercepted() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let plain = plain_http_server().await;
    let other = plain_http_server().await;
    // Both servers are on loopback: reachable only because `--resolve` rules name them
    // (veil#10), and on ports allow_ports (or a port-specific intercept pattern) permits.
    let mut veil = Veil::start_with(&mock, |raw| {
        raw.intercept = Some(vec![
            "@defaults".into(),
            format!("plain.test:{}", plain.port()),
        ]);
        raw.allow_ports = Some(vec![443, other.port()]);
        let resolve = raw.resolve.get_or_insert_with(Vec::new);
        resolve.push(format!("plain.test:{}:{plain}", plain.port()));
        resolve.push(format!("other.test:{}:{other}", other.port()));
    })
    .await;
    for (addr, recorded) in [
        (format!("plain.test:{}", plain.port()), true),
        (format!("other.test:{}", other.port()), false),
    ] {
        let stream = tokio::net::TcpStream::connect(veil.addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let resp = send
            .send_request(
                Request::get(format!("http://{addr}/v1/models?x=1"))
                    .header("host", addr.clone())
                    .header("x-veil-feature", "plain")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers().contains_key("x-veil-request-id"), recorded);
        assert_eq!(body_text(resp).await, "plain:/v1/models?x=1");
        if recorded {
            let ex = veil.next_exchange().await;
            assert_eq!(ex.route, Route::PlainHttp);
            assert_eq!(ex.upstream.scheme, "http");
            assert_eq!(ex.tag("feature"), Some("plain"));
        } else {
            veil.assert_no_exchange(Duration::from_millis(200)).await;
        }
    }
    veil.stop().await;
}

// See: veil#11
#[tokio::test]
async fn upload_broken_off_after_10_of_100000_bytes_is_the_apps_error_not_the_upstreams() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let mut veil = Veil::start(&mock).await;
    let mut app = tokio::net::TcpStream::connect(veil.addr).await.unwrap();
    let head = format!(
        "POST /openai/v1/chat/completions HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n",
        veil.addr
    );
    app.write_all(head.as_bytes()).await.unwrap();
    app.write_all(b"{\"model\":").await.unwrap();
    // Let veil open the upstream request and start streaming the body, then break off the
    // upload: the write half closes with 99,991 bytes still owed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.shutdown().await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), app.read_to_end(&mut answer)).await;
    let ex = veil.next_exchange().await;
    assert_eq!(ex.outcome, Outcome::ClientAborted);
    assert_eq!(
        veil.counters.proxy.upstream_errors.get(),
        0,
        "the upstream did nothing wrong"
    );
    assert_eq!(veil.counters.proxy.client_aborted.get(), 1);
    veil.stop().await;
}
