//! WebSocket on an intercepted host (veil#17): the upgrade relayed, frames both ways intact,
//! the session recorded as one opaque exchange (frames, bytes, close code), never content.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::harness::{Client, Proto, Veil, body_text, connect, tls_client};
use crate::support::mock_llm::{Alpn, Mock};
use veil::exchange::Outcome;

/// A WebSocket client (tokio-tungstenite) on `path` of api.openai.com, through veil's
/// CONNECT and TLS interception, with an API key and a feature tag.
async fn open(
    veil: &Veil,
    path: &str,
) -> Result<
    (
        tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
        http::Response<Option<Vec<u8>>>,
    ),
    tokio_tungstenite::tungstenite::Error,
> {
    let (code, stream) = connect(veil.addr, "api.openai.com", 443).await;
    assert_eq!(code, 200);
    let tls = tokio_rustls::TlsConnector::from(tls_client(&veil.ca_pem, &[b"http/1.1"]))
        .connect("api.openai.com".try_into().unwrap(), stream)
        .await
        .expect("TLS to veil");
    let mut req = format!("wss://api.openai.com{path}")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        "Bearer sk-proj-websocketsecret0123456789".parse().unwrap(),
    );
    req.headers_mut()
        .insert("x-veil-feature", "voice-agent".parse().unwrap());
    // How a browser passes the key to the Realtime API: as a subprotocol.
    req.headers_mut().insert(
        "sec-websocket-protocol",
        "realtime, openai-insecure-api-key.sk-proj-subprotocolsecret999"
            .parse()
            .unwrap(),
    );
    tokio_tungstenite::client_async(req, tls).await
}

#[tokio::test]
async fn a_websocket_upgrade_is_relayed_and_recorded_as_one_opaque_session() {
    for upstream in [Alpn::Http1Only, Alpn::H2AndHttp1] {
        let mock = Mock::start(upstream).await;
        let mut veil = Veil::start(&mock).await;
        let (mut ws, resp) = open(&veil, "/v1/realtime?model=gpt-realtime")
            .await
            .expect("the 101 reaches the app");
        assert_eq!(resp.status(), 101, "{upstream:?}");
        let id = resp
            .headers()
            .get("x-veil-request-id")
            .expect("the 101 carries veil's request id")
            .to_str()
            .unwrap()
            .to_string();

        // Frames both ways, intact and without delay (each echo within a second).
        let big = vec![0xA5u8; 100_000];
        for (msg, want) in [
            (
                Message::text("SECRET-TEXT-4111"),
                Message::text("echo: SECRET-TEXT-4111"),
            ),
            (Message::binary(big.clone()), Message::binary(big.clone())),
            (Message::text("again"), Message::text("echo: again")),
        ] {
            ws.send(msg).await.unwrap();
            let got = tokio::time::timeout(Duration::from_secs(1), ws.next())
                .await
                .expect("the echo crosses veil within a second")
                .unwrap()
                .unwrap();
            assert_eq!(got, want);
        }
        ws.close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "done".into(),
        }))
        .await
        .unwrap();
        // The server's close reply ends the stream.
        while let Some(Ok(_)) = ws.next().await {}

        // The mock got a real handshake: the headers hop-by-hop stripping would remove.
        let seen = mock.seen();
        let hs = seen.last().expect("the mock saw the handshake");
        assert_eq!(hs.path, "/v1/realtime?model=gpt-realtime");
        assert_eq!(hs.headers["upgrade"], "websocket");
        assert!(hs.headers.contains_key("sec-websocket-key"));
        assert!(
            !hs.headers.contains_key("x-veil-feature"),
            "tags never go upstream"
        );
        assert!(
            hs.headers["sec-websocket-protocol"]
                .to_str()
                .unwrap()
                .contains("sk-proj-subprotocolsecret999"),
            "the upstream needs the key it was given"
        );
        assert_eq!(resp.headers()["sec-websocket-protocol"], "realtime");

        let ex = veil.next_exchange().await;
        assert_eq!(ex.id.to_string(), id);
        assert_eq!(ex.status, Some(101));
        assert_eq!(ex.outcome, Outcome::Complete, "{:?}", ex.outcome);
        assert_eq!(ex.tag("feature"), Some("voice-agent"));
        assert!(
            ex.api_key_fingerprint
                .as_deref()
                .is_some_and(|f| f.starts_with("fp_"))
        );
        let session = ex.websocket.clone().expect("a WebSocket session");
        // Sent: text, binary, text, close. Received: three echoes and the close reply.
        assert_eq!(session.frames_sent, 4, "{session:?}");
        assert_eq!(session.frames_received, 4, "{session:?}");
        assert_eq!(session.close_code, Some(1000));
        assert!(!session.unframed);
        // A Realtime path: its text messages were followed, and none was a Realtime event
        // (two texts each way, none JSON), so no response records, four events not followed.
        let totals = session.realtime.clone().expect("Realtime totals");
        assert_eq!((totals.responses, totals.events_lost), (0, 4), "{totals:?}");
        assert!(ex.request_body.wire_len > 100_000 && ex.response_body.wire_len > 100_000);
        // Opaque: no frame payload, no key, in anything the exchange holds.
        assert!(ex.request_body.chunks.is_empty() && ex.response_body.chunks.is_empty());
        let dump = format!("{ex:?}");
        for raw in [
            "SECRET-TEXT-4111",
            "websocketsecret0123456789",
            "subprotocolsecret999",
        ] {
            assert!(!dump.contains(raw), "{raw} leaked into the exchange");
        }
        veil.stop().await;
    }
}

#[tokio::test]
async fn an_upstream_close_and_a_refused_upgrade_are_recorded() {
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let mut veil = Veil::start(&mock).await;

    // The upstream closes first, with 1001.
    let (mut ws, _) = open(&veil, "/ws/other").await.expect("101");
    ws.send(Message::text("close-please")).await.unwrap();
    match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
        Ok(Some(Ok(Message::Close(Some(frame))))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected the upstream's close, got {other:?}"),
    }
    while let Some(Ok(_)) = ws.next().await {}
    let ex = veil.next_exchange().await;
    let session = ex.websocket.expect("a session");
    assert_eq!(session.close_code, Some(1001));
    assert_eq!(ex.path, "/ws/other");
    // Not a Realtime path: opaque, its messages never captured.
    assert_eq!(session.realtime, None);

    // The upstream refuses the upgrade: its 403 reaches the app and is recorded as a response.
    match open(&veil, "/ws/refuse").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 403);
            let body = String::from_utf8(resp.body().clone().unwrap_or_default()).unwrap();
            assert!(body.contains("no realtime for you"), "{body}");
        }
        other => panic!("expected the upstream's 403, got {other:?}"),
    }
    let ex = veil.next_exchange().await;
    assert_eq!(ex.status, Some(403));
    assert!(ex.websocket.is_none());
    assert!(String::from_utf8_lossy(&ex.response_body.bytes()).contains("no realtime"));
    veil.stop().await;
}

/// Under best-effort a WebSocket session is offered to the recording queue when it ends (it
/// may last hours, so it holds no slot meanwhile): with the queue full then, the session is
/// relayed whole all the same, and its exchange is dropped and counted, never waited for.
#[tokio::test]
async fn a_session_that_ends_to_a_full_queue_is_relayed_and_counted_as_dropped() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let mut veil = Veil::start_with(&mock, |raw| raw.queue_capacity = Some(1)).await;
    // The session opens while the queue has room: it takes none.
    let (mut ws, resp) = open(&veil, "/v1/realtime?model=gpt-realtime")
        .await
        .expect("the 101 reaches the app");
    assert_eq!(resp.status(), 101);
    // An HTTP exchange fills the queue's one slot (the harness takes nothing until asked).
    let mut client = Client::connect(veil.addr, "api.openai.com", &veil.ca_pem, Proto::Http1).await;
    let chat = client.chat("hello").await;
    assert_eq!(chat.status(), 200);
    body_text(chat).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while veil.counters.queue.depth.get() < 1 {
        assert!(std::time::Instant::now() < deadline, "never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Frames still cross both ways while the queue is full.
    ws.send(Message::text("while full")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(1), ws.next())
        .await
        .expect("the echo crosses veil within a second")
        .unwrap()
        .unwrap();
    assert_eq!(got, Message::text("echo: while full"));
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while veil.counters.queue.dropped() < 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the session's end was not counted as a drop"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(veil.counters.queue.dropped_full.get(), 1);
    // What the queue holds is the chat, and nothing comes after it.
    let first = veil.next_exchange().await;
    assert!(first.websocket.is_none(), "the queued exchange is the chat");
    veil.assert_no_exchange(Duration::from_millis(300)).await;
    veil.stop().await;
}
