//! The official Python SDKs through `HTTPS_PROXY`, against veil and the mock provider.
//!
//! Needs `pip install -r tests/python/requirements.txt` (done by `.ci/run`). Without the
//! packages the test is skipped with a notice, except under CI (`CI` set), where it fails.

use std::process::Command;

use crate::support::mock_llm::{Alpn, Mock};
use crate::support::otlp::{Receiver, attr};
use crate::support::process::{VeilProcess, resolve_args};

/// True when the SDKs can be imported; panics under CI if they cannot.
pub fn python_has(modules: &str) -> bool {
    let ok = Command::new("python3")
        .args(["-c", &format!("import {modules}")])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 cannot import {modules}: run `pip install -r tests/python/requirements.txt`"
        );
        eprintln!(
            "SKIPPED: python3 cannot import {modules} (pip install -r tests/python/requirements.txt)"
        );
    }
    ok
}

pub fn run_sdk_script(proc: &VeilProcess, keys: &std::path::Path) -> Vec<serde_json::Value> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/sdk_e2e.py");
    let out = Command::new("python3")
        .arg(script)
        .env("HTTPS_PROXY", format!("http://{}", proc.addr))
        .env("SSL_CERT_FILE", keys.join("ca-bundle.pem"))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("ANTHROPIC_BASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "sdk_e2e.py failed:\n{}\n{}\nveil:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        proc.stderr()
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_and_anthropic_sdks_through_https_proxy() {
    if !python_has("openai, anthropic") {
        return;
    }
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = resolve_args(mock.addr);
    args.extend([
        "--upstream-ca".to_string(),
        mock.ca_path.display().to_string(),
        "--otlp-endpoint".to_string(),
        receiver.endpoint(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = VeilProcess::start(&args, dir.path());
    let results = run_sdk_script(&proc, &dir.path().join("keys"));
    let cases: Vec<&str> = results
        .iter()
        .map(|r| r["case"].as_str().unwrap())
        .collect();
    assert_eq!(
        cases,
        [
            "openai.chat",
            "openai.chat.stream",
            "anthropic.messages",
            "anthropic.messages.stream",
            "openai.chat.tools"
        ]
    );
    for r in &results {
        let id = r["request_id"].as_str().unwrap_or_default();
        assert_eq!(
            id.len(),
            36,
            "every SDK response carries x-veil-request-id: {r}"
        );
    }
    assert_eq!(results[0]["finish"], "stop");
    assert_eq!(results[0]["input_tokens"], 52);
    assert_eq!(results[1]["text"], "part0 part1 part2 ");
    assert_eq!(results[1]["output_tokens"], 3);
    assert_eq!(results[2]["text"], "Hello from the mock Claude.");
    assert_eq!(results[3]["text"], "Hello from the mock Claude.");
    assert_eq!(results[3]["output_tokens"], 8);

    // What reached the provider: the SDKs' own requests, credentials intact, through veil.
    let seen = mock.seen();
    assert_eq!(seen.len(), 5);
    assert_eq!(
        seen[0].headers["authorization"],
        "Bearer sk-proj-PYTHONSECRET0123456789"
    );
    // Anthropic's SDK sends `x-api-key` or, in 2.x, a bearer token; either way it arrives intact.
    let anthropic_auth = seen[2]
        .headers
        .get("x-api-key")
        .or_else(|| seen[2].headers.get("authorization"))
        .unwrap()
        .to_str()
        .unwrap();
    assert!(
        anthropic_auth.ends_with("sk-ant-api03-PYTHONSECRET0123456789"),
        "{anthropic_auth}"
    );
    assert!(
        !proc.stderr().contains("PYTHONSECRET"),
        "credential in veil's log"
    );
    // What veil understood of each exchange matches what the SDK sent and received.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let span_of = |id: &str| {
        receiver
            .spans()
            .into_iter()
            .find(|s| attr(s, "veil.request.id").as_deref() == Some(id))
    };
    for r in &results {
        let id = r["request_id"].as_str().unwrap();
        let span = loop {
            if let Some(s) = span_of(id) {
                break s;
            }
            assert!(std::time::Instant::now() < deadline, "no span for {r}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        let case = r["case"].as_str().unwrap();
        let ctx = format!("{case}: {span:?}");
        assert_eq!(
            attr(&span, "gen_ai.response.model").as_deref(),
            r["model"].as_str(),
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
        // Finish reasons are normalized to the GenAI conventions' values.
        let finish = match r["finish"].as_str().unwrap() {
            "end_turn" | "stop_sequence" => "stop",
            "max_tokens" => "length",
            "tool_use" | "tool_calls" => "tool_call",
            other => other,
        };
        assert_eq!(
            attr(&span, "gen_ai.response.finish_reasons").as_deref(),
            Some(finish),
            "{ctx}"
        );
        let provider = if case.starts_with("openai") {
            "openai"
        } else {
            "anthropic"
        };
        assert_eq!(
            attr(&span, "gen_ai.provider.name").as_deref(),
            Some(provider),
            "{ctx}"
        );
        assert_eq!(
            attr(&span, "gen_ai.request.stream").as_deref() == Some("true"),
            case.ends_with("stream"),
            "{ctx}"
        );
    }
    // The tool call the model made is in the recorded output, by name, and the offered tool too.
    let tools = &results[4];
    assert_eq!(tools["tool_calls"], serde_json::json!(["get_weather"]));
    let span = span_of(tools["request_id"].as_str().unwrap()).unwrap();
    let output = attr(&span, "gen_ai.output.messages").expect("output messages");
    assert!(
        output.contains("\"tool_call\"") && output.contains("get_weather"),
        "{output}"
    );
    assert_eq!(
        attr(&span, "veil.tool.names").as_deref(),
        Some("get_weather")
    );

    // The OpenAI `user` and Anthropic `metadata.user_id` became pseudonyms.
    let first = span_of(results[0]["request_id"].as_str().unwrap()).unwrap();
    let user = attr(&first, "user.id").expect("pseudonymized user");
    assert!(user.starts_with("u_") && !user.contains("alice"), "{user}");
    assert!(proc.terminate().success());
}
