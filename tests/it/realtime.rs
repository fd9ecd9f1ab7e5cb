//! OpenAI Realtime through the intercepting proxy (veil#17): a WebSocket client speaking
//! Realtime events to a local Realtime-speaking server; veil relays every frame unchanged and
//! records one exchange per `response.done` (usage, cost at text and audio rates, redacted
//! transcripts, audio only as sizes) plus the session's own record with its totals. Every
//! byte veil exports and writes is then searched for the raw values and the audio.

use std::time::Duration;

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::files::assert_nowhere;
use crate::support::harness::{connect, tls_client};
use crate::support::mock_llm::{Alpn, Mock, realtime_audio_out};
use crate::support::otlp::{Receiver, attr};
use crate::support::process::{VeilProcess, mock_args};

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// The next server event, within a second (frames are relayed as they arrive).
async fn next_event(ws: &mut Ws) -> Value {
    let msg = tokio::time::timeout(Duration::from_secs(1), ws.next())
        .await
        .expect("a server event within a second")
        .unwrap()
        .unwrap();
    serde_json::from_str(msg.to_text().unwrap()).unwrap()
}

/// Reads server events up to `response.done`; returns their types.
async fn until_done(ws: &mut Ws) -> Vec<String> {
    let mut types = Vec::new();
    loop {
        let ev = next_event(ws).await;
        let t = ev["type"].as_str().unwrap().to_string();
        types.push(t.clone());
        if t == "response.done" {
            return types;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realtime_responses_are_recorded_one_per_response_done_redacted_without_audio() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let args = mock_args(&mock, &receiver.endpoint(), &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = VeilProcess::start(&args, dir.path());
    let ca = std::fs::read_to_string(dir.path().join("keys/ca.pem")).unwrap();

    let (code, stream) = connect(proc.addr, "api.openai.com", 443).await;
    assert_eq!(code, 200);
    let tls = tokio_rustls::TlsConnector::from(tls_client(&ca, &[b"http/1.1"]))
        .connect("api.openai.com".try_into().unwrap(), stream)
        .await
        .unwrap();
    let mut req = "wss://api.openai.com/v1/realtime?model=gpt-realtime"
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        "Bearer sk-proj-realtimeSECRET0123456789".parse().unwrap(),
    );
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    assert_eq!(resp.status(), 101);
    let session_id = resp.headers()["x-veil-request-id"]
        .to_str()
        .unwrap()
        .to_string();

    let send = |v: Value| Message::text(v.to_string());
    ws.send(send(json!({"type": "session.update", "session": {
        "instructions": "You help Dana. Her email is dana.whitfield@example.com.",
        "tools": [{"type": "function", "name": "get_weather"}]}})))
        .await
        .unwrap();
    assert_eq!(next_event(&mut ws).await["type"], "session.updated");

    // Spoken input: two appends of 3,000 bytes of audio each, committed and transcribed.
    let audio_in = base64::engine::general_purpose::STANDARD.encode(b"MOCKAUDIOIN!".repeat(250));
    for _ in 0..2 {
        ws.send(send(
            json!({"type": "input_audio_buffer.append", "audio": audio_in}),
        ))
        .await
        .unwrap();
    }
    ws.send(send(json!({"type": "input_audio_buffer.commit"})))
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut ws).await["type"],
        "input_audio_buffer.committed"
    );
    let transcription = next_event(&mut ws).await;
    assert!(
        transcription["transcript"]
            .as_str()
            .unwrap()
            .contains("4111")
    );
    ws.send(send(json!({"type": "response.create"})))
        .await
        .unwrap();
    let types = until_done(&mut ws).await;
    assert_eq!(
        types,
        [
            "response.created",
            "response.output_audio.delta",
            "response.output_audio_transcript.delta",
            "response.done"
        ]
    );

    // Typed input, answered with a function call.
    ws.send(send(json!({"type": "conversation.item.create", "item": {"type": "message", "role": "user",
        "content": [{"type": "input_text", "text": "Also write to dana.whitfield@example.com about Paris."}]}})))
        .await
        .unwrap();
    assert_eq!(
        next_event(&mut ws).await["type"],
        "conversation.item.created"
    );
    ws.send(send(
        json!({"type": "response.create", "response": {"metadata": {"mock": "tool"}}}),
    ))
    .await
    .unwrap();
    until_done(&mut ws).await;
    ws.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_secs(2), ws.next()).await {}

    // Three records: the two responses, then the session.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans = receiver.spans();
        let done = spans
            .iter()
            .any(|s| attr(s, "veil.request.id").as_deref() == Some(&session_id));
        if done && spans.len() >= 3 {
            break spans;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} spans",
            spans.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(spans.len(), 3, "{spans:?}");
    let (responses, session): (Vec<_>, Vec<_>) = spans
        .iter()
        .partition(|s| attr(s, "veil.websocket.session_id").is_some());
    assert_eq!(responses.len(), 2);
    let session = session[0];
    assert_eq!(
        attr(session, "veil.request.id").as_deref(),
        Some(session_id.as_str())
    );
    assert_eq!(
        attr(session, "veil.realtime.responses").as_deref(),
        Some("2")
    );
    assert_eq!(
        attr(session, "veil.realtime.input_tokens").as_deref(),
        Some("240")
    );
    let sized = |name: &str| -> u64 { attr(session, name).unwrap().parse().unwrap() };
    // Audio by size only: ~6,000 bytes each way (estimated from the events' length).
    for name in [
        "veil.realtime.input_audio_bytes",
        "veil.realtime.output_audio_bytes",
    ] {
        assert!(
            (6000..6200).contains(&sized(name)),
            "{name}: {}",
            sized(name)
        );
    }
    assert_eq!(sized("veil.realtime.events_lost"), 0);

    let want_cost = (20.0 * 4.0 + 36.0 * 32.0 + 64.0 * 0.40 + 10.0 * 16.0 + 30.0 * 64.0) / 1e6;
    for span in &responses {
        let ctx = format!("{span:?}");
        assert_eq!(
            attr(span, "veil.websocket.session_id").as_deref(),
            Some(session_id.as_str())
        );
        assert_ne!(
            attr(span, "veil.request.id").as_deref(),
            Some(session_id.as_str())
        );
        assert_eq!(
            attr(span, "gen_ai.provider.name").as_deref(),
            Some("openai"),
            "{ctx}"
        );
        assert_eq!(
            attr(span, "gen_ai.operation.name").as_deref(),
            Some("chat"),
            "{ctx}"
        );
        assert_eq!(
            attr(span, "gen_ai.request.model").as_deref(),
            Some("gpt-realtime"),
            "{ctx}"
        );
        assert_eq!(
            attr(span, "gen_ai.conversation.id").as_deref(),
            Some("sess_mock"),
            "{ctx}"
        );
        assert_eq!(
            attr(span, "gen_ai.usage.input_tokens").as_deref(),
            Some("120"),
            "{ctx}"
        );
        assert_eq!(
            attr(span, "veil.usage.input_audio_tokens").as_deref(),
            Some("100"),
            "{ctx}"
        );
        assert_eq!(
            attr(span, "veil.usage.output_audio_tokens").as_deref(),
            Some("30"),
            "{ctx}"
        );
        let cost: f64 = attr(span, "gen_ai.usage.cost").unwrap().parse().unwrap();
        assert!((cost - want_cost).abs() < 1e-9, "{cost} != {want_cost}");
    }
    let first = responses
        .iter()
        .find(|s| attr(s, "gen_ai.response.id").as_deref() == Some("resp_mock1"))
        .unwrap();
    let input = attr(first, "gen_ai.input.messages").unwrap();
    let output = attr(first, "gen_ai.output.messages").unwrap();
    assert!(
        input.contains("My card is"),
        "the transcript is the input: {input}"
    );
    assert!(
        input.contains("\"blob\"") && input.contains("audio"),
        "{input}"
    );
    // The spoken answer: its transcript, and its audio as a size (what the deltas carried).
    assert!(
        output.contains("Hello") && output.contains("\"blob\""),
        "{output}"
    );
    let second = responses
        .iter()
        .find(|s| attr(s, "gen_ai.response.id").as_deref() == Some("resp_mock2"))
        .unwrap();
    assert_eq!(
        attr(second, "gen_ai.response.finish_reasons").as_deref(),
        Some("tool_call")
    );
    assert!(
        attr(second, "gen_ai.output.messages")
            .unwrap()
            .contains("get_weather")
    );
    assert!(
        attr(second, "gen_ai.input.messages")
            .unwrap()
            .contains("about Paris")
    );
    assert!(proc.terminate().success());

    // No raw value, no audio, no key in anything veil exported or wrote.
    let exported: Vec<u8> = receiver
        .received()
        .iter()
        .flat_map(|r| r.body.to_vec())
        .collect();
    let log = proc.stderr();
    let audio_out = realtime_audio_out();
    assert_nowhere(
        &[
            "dana.whitfield@example.com",
            "4111 1111 1111 1111",
            &audio_in[..40],
            &audio_out[..40],
            "realtimeSECRET",
        ],
        &exported,
        &log,
        dir.path(),
    );
}
