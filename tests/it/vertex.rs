//! Vertex AI through the intercepting proxy (veil#17): `@vertex` intercepts the regional
//! hosts, Gemini (`generateContent`) and Claude (`rawPredict`, `streamRawPredict`) are
//! recorded with the model from the path, usage and cost.

use http::Request;
use http_body_util::{BodyExt, Full};

use crate::support::harness::{Client, Proto, ReqBody, Veil, body_text};
use crate::support::mock_llm::{Alpn, Mock};
use veil::exchange::{ParseOptions, Pricing, parse};

const HOST: &str = "us-east5-aiplatform.googleapis.com";
const BASE: &str = "/v1/projects/acme/locations/us-east5/publishers";

fn post(path: &str, body: serde_json::Value) -> Request<ReqBody> {
    Request::post(format!("https://{HOST}{path}"))
        .header("host", HOST)
        .header("content-type", "application/json")
        .header("authorization", "Bearer ya29.vertexaccesstokenSECRET")
        .body(
            Full::new(body.to_string().into())
                .map_err(|e| match e {})
                .boxed(),
        )
        .unwrap()
}

#[tokio::test]
async fn gemini_and_claude_on_vertex_are_intercepted_recorded_and_priced() {
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let mut veil = Veil::start_with(&mock, |raw| {
        raw.intercept = Some(vec!["@defaults".into(), "@vertex".into()]);
    })
    .await;
    let mut client = Client::connect(veil.addr, HOST, &veil.ca_pem, Proto::Http1).await;
    let pricing = Pricing::builtin();
    let claude = serde_json::json!({
        "anthropic_version": "vertex-2023-10-16",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Say hello"}]
    });

    for (path, body, stream) in [
        (
            format!("{BASE}/google/models/gemini-2.0-flash:generateContent"),
            serde_json::json!({"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}),
            false,
        ),
        (
            format!("{BASE}/anthropic/models/claude-sonnet-4-5@20250929:rawPredict"),
            claude.clone(),
            false,
        ),
        (
            format!("{BASE}/anthropic/models/claude-sonnet-4-5@20250929:streamRawPredict"),
            {
                let mut b = claude.clone();
                b["stream"] = true.into();
                b
            },
            true,
        ),
    ] {
        let resp = client.send(post(&path, body)).await;
        assert_eq!(resp.status(), 200, "{path}");
        let text = body_text(resp).await;
        assert!(text.contains("Hello from"), "{text}");

        let ex = veil.next_exchange().await;
        assert_eq!(ex.upstream.host, HOST);
        let c = parse(&ex, &ParseOptions::default(), &pricing);
        assert_eq!(c.provider.as_str(), "gcp.vertex_ai", "{path}");
        assert_eq!(c.stream, stream, "{path}");
        let model = path
            .rsplit_once("/models/")
            .unwrap()
            .1
            .split(':')
            .next()
            .unwrap();
        assert_eq!(c.request_model.as_deref(), Some(model));
        assert!(
            c.usage.input_tokens.is_some_and(|n| n > 0),
            "{path}: {:?}",
            c.usage
        );
        assert!(
            c.usage.output_tokens.is_some_and(|n| n > 0),
            "{path}: {:?}",
            c.usage
        );
        let cost = c.cost_usd.unwrap_or_else(|| panic!("{path} is priced"));
        assert!(cost > 0.0);
        assert!(!format!("{ex:?}").contains("vertexaccesstokenSECRET"));
    }
    veil.stop().await;
}
