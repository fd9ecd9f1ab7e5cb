//! Amazon Bedrock Runtime through the intercepting proxy (veil#17): `@bedrock` intercepts the
//! regional hosts; Converse, ConverseStream, InvokeModel and InvokeModelWithResponseStream are
//! recorded with the model from the path, usage and cost; the SigV4 access key ID names the
//! key; and, with the official boto3 client, every signed header reaches Bedrock unchanged.

use std::process::Command;

use base64::Engine as _;

use http::Request;
use http_body_util::{BodyExt, Full};

use crate::support::files::{assert_nowhere, contains};
use crate::support::harness::{Client, Proto, ReqBody, Veil};
use crate::support::mock_llm::{Alpn, Mock};
use crate::support::otlp::{Receiver, attr};
use crate::support::process::{VeilProcess, mock_args};
use crate::support::python;
use veil::exchange::{ParseOptions, Pricing, parse};

const HOST: &str = "bedrock-runtime.us-east-1.amazonaws.com";
const MODEL: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";
/// The model ID as the AWS SDKs put it in the path.
const MODEL_IN_PATH: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1%3A0";
const SESSION_TOKEN: &str = "IQoJb3JpZ2luX2VjEJr//////////SESSIONTOKENSECRET";

fn signed(path: &str, body: serde_json::Value, signature: &str) -> Request<ReqBody> {
    Request::post(format!("https://{HOST}{path}"))
        .header("host", HOST)
        .header("content-type", "application/json")
        .header("x-amz-date", "20261130T160000Z")
        .header("x-amz-security-token", SESSION_TOKEN)
        .header(
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential=AKIAVEILTEST00000001/20261130/us-east-1/bedrock/aws4_request, \
                 SignedHeaders=content-type;host;x-amz-date;x-amz-security-token, Signature={signature}"
            ),
        )
        .body(
            Full::new(body.to_string().into())
                .map_err(|e| match e {})
                .boxed(),
        )
        .unwrap()
}

#[tokio::test]
async fn bedrock_runtime_is_intercepted_recorded_priced_and_keyed_by_access_key() {
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let mut veil = Veil::start_with(&mock, |raw| {
        raw.intercept = Some(vec!["@defaults".into(), "@bedrock".into()]);
    })
    .await;
    let mut client = Client::connect(veil.addr, HOST, &veil.ca_pem, Proto::Http1).await;
    let pricing = Pricing::builtin();
    let converse = serde_json::json!({
        "messages": [{"role": "user", "content": [{"text": "Say hello"}]}],
        "inferenceConfig": {"maxTokens": 64}
    });
    let invoke = serde_json::json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Say hello"}]
    });
    let mut key = None;
    for (i, (action, body, stream, answer)) in [
        ("converse", &converse, false, "Hello from the mock Bedrock."),
        ("converse-stream", &converse, true, "the mock Bedrock."),
        ("invoke", &invoke, false, "Hello from the mock Claude."),
        // Its text is base64 inside the event stream's chunks.
        ("invoke-with-response-stream", &invoke, true, ":event-type"),
    ]
    .into_iter()
    .enumerate()
    {
        let path = format!("/model/{MODEL_IN_PATH}/{action}");
        // A new signature per request, as SigV4 makes them.
        let resp = client
            .send(signed(&path, body.clone(), &format!("{i:0>64}")))
            .await;
        assert_eq!(resp.status(), 200, "{action}");
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert!(
            contains(&bytes, answer),
            "{action}: the answer reaches the app"
        );

        let ex = veil.next_exchange().await;
        let c = parse(&ex, &ParseOptions::default(), &pricing);
        let ctx = format!("{action}: {c:?}");
        assert_eq!(c.provider.as_str(), "aws.bedrock", "{ctx}");
        assert_eq!(c.operation.as_str(), "chat", "{ctx}");
        assert_eq!(c.request_model.as_deref(), Some(MODEL), "{ctx}");
        assert_eq!(c.stream, stream, "{ctx}");
        assert!(!c.aborted && c.parse_error.is_none(), "{ctx}");
        let said: String = c.output_messages[0]
            .parts
            .iter()
            .map(|p| serde_json::to_string(p).unwrap())
            .collect();
        assert!(said.contains("the mock"), "{ctx}");
        assert!(c.usage.input_tokens.is_some_and(|n| n > 0), "{ctx}");
        assert!(c.usage.output_tokens.is_some_and(|n| n > 0), "{ctx}");
        assert!(c.cost_usd.is_some_and(|usd| usd > 0.0), "{ctx}");
        // One key, four signatures: one fingerprint. No credential in the record.
        let fp = ex
            .api_key_fingerprint
            .clone()
            .expect("the access key names the key");
        assert!(fp.starts_with("fp_"));
        assert_eq!(key.get_or_insert_with(|| fp.clone()), &fp);
        let recorded = format!("{ex:?}");
        for secret in [
            "AKIAVEILTEST00000001",
            "SESSIONTOKENSECRET",
            &format!("{i:0>64}"),
        ] {
            assert!(!recorded.contains(secret), "{action}: {secret} recorded");
        }
    }
    // The signed requests reached the provider as sent.
    let seen = mock.seen();
    assert_eq!(seen.len(), 4);
    for s in &seen {
        assert_eq!(s.headers["x-amz-security-token"], SESSION_TOKEN);
        assert!(
            s.headers["authorization"]
                .to_str()
                .unwrap()
                .contains("Credential=AKIAVEILTEST00000001/")
        );
        assert!(s.path.contains(MODEL_IN_PATH), "{}", s.path);
    }
    veil.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs boto3 in .venv or $VEIL_PYTHON (README); run with cargo test -- --include-ignored"]
async fn boto3_through_https_proxy_reaches_bedrock_with_every_signed_header_unchanged() {
    python::require("boto3");
    // HTTP/1.1 upstream, so `host` is a header the mock sees as botocore signed it.
    let mock = Mock::start(Alpn::Http1Only).await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let args = mock_args(
        &mock,
        &receiver.endpoint(),
        &["--intercept", "@defaults", "--intercept", "@bedrock"],
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = VeilProcess::start(&args, dir.path());
    let secret_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYVEILSECRETKEY";
    let out = Command::new(python::python())
        .arg(format!(
            "{}/tests/python/bedrock_e2e.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .env("HTTPS_PROXY", format!("http://{}", proc.addr))
        .env("AWS_CA_BUNDLE", dir.path().join("keys/ca-bundle.pem"))
        .env("AWS_ACCESS_KEY_ID", "AKIAVEILBOTO30000001")
        .env("AWS_SECRET_ACCESS_KEY", secret_key)
        .env("AWS_SESSION_TOKEN", SESSION_TOKEN)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_ENDPOINT_URL_BEDROCK_RUNTIME")
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "bedrock_e2e.py failed:\n{}\n{}\nveil:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        proc.stderr()
    );
    let results: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let cases: Vec<&str> = results
        .iter()
        .map(|r| r["case"].as_str().unwrap())
        .collect();
    assert_eq!(
        cases,
        [
            "converse",
            "converse_stream",
            "invoke_model",
            "invoke_model_with_response_stream"
        ]
    );

    // Every header botocore signed, the path and the body arrived byte for byte: the
    // signature Bedrock checks is over exactly these.
    let seen = mock.seen();
    assert_eq!(seen.len(), 4);
    for (r, s) in results.iter().zip(&seen) {
        let case = &r["case"];
        let sent = &r["sent"];
        assert_eq!(sent["path"], s.path, "{case}");
        let signed = sent["signed"].as_object().unwrap();
        assert!(
            ["host", "x-amz-date", "x-amz-security-token"]
                .iter()
                .all(|h| signed.contains_key(*h))
        );
        for (name, value) in signed {
            let got = s.headers.get(name.as_str()).map(|v| v.to_str().unwrap());
            assert_eq!(got, value.as_str(), "{case}: signed header {name}");
        }
        let body = base64::engine::general_purpose::STANDARD
            .decode(sent["body_b64"].as_str().unwrap())
            .unwrap();
        assert_eq!(body, s.body, "{case}: body");
        assert!(
            s.headers["authorization"]
                .to_str()
                .unwrap()
                .contains("Credential=AKIAVEILBOTO30000001/")
        );
    }

    // What veil recorded of each call matches what the SDK received.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for r in &results {
        let id = r["request_id"].as_str().expect("x-veil-request-id");
        let span = loop {
            if let Some(s) = receiver
                .spans()
                .into_iter()
                .find(|s| attr(s, "veil.request.id").as_deref() == Some(id))
            {
                break s;
            }
            assert!(std::time::Instant::now() < deadline, "no span for {r}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let ctx = format!("{}: {span:?}", r["case"]);
        assert_eq!(
            attr(&span, "gen_ai.provider.name").as_deref(),
            Some("aws.bedrock"),
            "{ctx}"
        );
        assert_eq!(
            attr(&span, "gen_ai.request.model").as_deref(),
            Some(MODEL),
            "{ctx}"
        );
        assert_eq!(
            attr(&span, "gen_ai.usage.input_tokens"),
            Some(r["input_tokens"].to_string()),
            "{ctx}"
        );
        assert_eq!(
            attr(&span, "gen_ai.usage.output_tokens"),
            Some(r["output_tokens"].to_string()),
            "{ctx}"
        );
        assert!(attr(&span, "veil.cost.usd").is_some(), "{ctx}");
    }
    assert!(proc.terminate().success());

    // No raw prompt value and no credential in anything veil emitted or wrote.
    let exported: Vec<u8> = receiver
        .received()
        .iter()
        .flat_map(|r| r.body.to_vec())
        .collect();
    let log = proc.stderr();
    assert_nowhere(
        &[
            "dana.whitfield@example.com",
            "4111 1111 1111 1111",
            "AKIAVEILBOTO30000001",
            secret_key,
            "SESSIONTOKENSECRET",
        ],
        &exported,
        &log,
        dir.path(),
    );
}
