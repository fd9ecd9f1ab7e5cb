//! Ollama's native API through a gateway route (veil#17): `/api/chat` and `/api/generate`,
//! streamed as NDJSON and not, recorded with usage from `prompt_eval_count`/`eval_count` and
//! zero cost, in the same ledger terms as a hosted model.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

use crate::support::harness::{Veil, body_text};
use crate::support::mock_llm::{Alpn, Mock};
use veil::exchange::{ParseOptions, Pricing, Route, parse};

#[tokio::test]
async fn ollama_native_chat_and_generate_through_a_gateway_route_are_recorded() {
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    // The mock stands in for a local Ollama (`--resolve` sends `localhost:443` to it).
    let mut veil = Veil::start_with(&mock, |raw| {
        raw.routes = Some(
            [("ollama".to_string(), "https://localhost".to_string())]
                .into_iter()
                .collect(),
        );
    })
    .await;
    let stream = tokio::net::TcpStream::connect(veil.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let pricing = Pricing::builtin();

    for (path, body, streamed, operation) in [
        (
            "/ollama/api/chat",
            serde_json::json!({"model": "llama3.2", "messages": [{"role": "user", "content": "Say hello"}]}),
            true,
            "chat",
        ),
        (
            "/ollama/api/chat",
            serde_json::json!({"model": "llama3.2", "stream": false, "messages": [{"role": "user", "content": "Say hello"}]}),
            false,
            "chat",
        ),
        (
            "/ollama/api/generate",
            serde_json::json!({"model": "qwen2.5:7b", "prompt": "Say hello"}),
            true,
            "text_completion",
        ),
    ] {
        let resp = send
            .send_request(
                Request::post(path)
                    .header("host", veil.addr.to_string())
                    .header("content-type", "application/json")
                    .body(Full::new(Bytes::from(body.to_string())))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let text = body_text(resp).await;
        assert_eq!(text.lines().count(), if streamed { 3 } else { 1 }, "{text}");

        let ex = veil.next_exchange().await;
        assert_eq!(
            ex.route,
            Route::Gateway {
                name: "ollama".into()
            }
        );
        let c = parse(&ex, &ParseOptions::default(), &pricing);
        assert_eq!(c.provider.as_str(), "ollama", "{path}");
        assert_eq!(c.operation.as_str(), operation);
        assert_eq!(c.stream, streamed, "{path}");
        assert_eq!(c.request_model, body["model"].as_str().map(str::to_string));
        assert_eq!(
            (c.usage.input_tokens, c.usage.output_tokens),
            (Some(26), Some(9))
        );
        assert_eq!(c.cost_usd, Some(0.0));
        assert_eq!(c.finish_reasons, vec!["stop".to_string()]);
        let answer = serde_json::to_string(&c.output_messages).unwrap();
        assert!(answer.contains("Hello from the mock llama."), "{answer}");
    }
    veil.stop().await;
}
