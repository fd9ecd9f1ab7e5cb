//! The official Python SDKs through `HTTPS_PROXY`, against veil and the mock provider.
//!
//! Needs a Python with `tests/python/requirements.txt` (see `support::python`: `.ci/run` makes
//! a venv and sets `VEIL_PYTHON`). The tests are ignored by a plain `cargo test` (listed as
//! such, with the reason) and run by `cargo test -- --include-ignored`, where a missing
//! package fails them.

use std::process::Command;

use crate::support::mock_llm::{Alpn, Mock};
use crate::support::otlp::{Receiver, attr};
use crate::support::process::{VeilProcess, mock_args, resolve_args};
use crate::support::python;

/// Runs `tests/python/SCRIPT` through `proc` (trusting the CA bundle under `keys`) and parses
/// its stdout: one JSON object per line. The script must succeed (bounded by its own calls:
/// the SDKs time out, and the mock answers at once).
pub fn run_sdk_script(
    script: &str,
    proc: &VeilProcess,
    keys: &std::path::Path,
) -> Vec<serde_json::Value> {
    let script = format!("{}/tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(python::python())
        .arg(&script)
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
        "{script} failed:\n{}\n{}\nveil:\n{}",
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
#[ignore = "needs the Python SDKs in .venv or $VEIL_PYTHON (README); run with cargo test -- --include-ignored"]
async fn openai_and_anthropic_sdks_through_https_proxy() {
    python::require("openai, anthropic");
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let args = mock_args(&mock, &receiver.endpoint(), &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = VeilProcess::start(&args, dir.path());
    let results = run_sdk_script("sdk_e2e.py", &proc, &dir.path().join("keys"));
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

/// nano-USD per token (input, output) for `model` of `provider`, read from the shipped pricing
/// table `rules/pricing.toml` (USD per million tokens, so × 1000): the entry named `model`, or
/// the longest entry `model` extends with a dated suffix (`gpt-4o-mini-2024-07-18`). Computed
/// here from the file, not by veil's pricing code, so a bug there cannot hide.
fn nano_usd_per_token(table: &toml::Table, provider: &str, model: &str) -> (i64, i64) {
    let models = table["models"][provider].as_table().unwrap();
    let (_, price) = models
        .iter()
        .filter(|(name, _)| {
            model == name.as_str()
                || model.strip_prefix(name.as_str()).is_some_and(|rest| {
                    rest.starts_with('-')
                        && rest[1..]
                            .split('-')
                            .all(|t| t.bytes().all(|b| b.is_ascii_digit()))
                })
        })
        .max_by_key(|(name, _)| name.len())
        .unwrap_or_else(|| panic!("{provider} {model} is not in rules/pricing.toml"));
    let per_token = |field: &str| {
        let usd_per_million = price[field]
            .as_float()
            .or_else(|| price[field].as_integer().map(|i| i as f64))
            .unwrap();
        (usd_per_million * 1000.0).round() as i64
    };
    (per_token("input"), per_token("output"))
}

/// What the clients saw, summed over `calls`: (requests, errors, input, output, nano-USD).
fn sums(
    calls: &[&serde_json::Value],
    cost: &dyn Fn(&serde_json::Value) -> i64,
) -> (u64, u64, u64, u64, i64) {
    let tok = |c: &serde_json::Value, k: &str| c[k].as_u64().unwrap_or(0);
    (
        calls.len() as u64,
        calls.iter().filter(|c| c["outcome"] == "error").count() as u64,
        calls.iter().map(|c| tok(c, "input_tokens")).sum(),
        calls.iter().map(|c| tok(c, "output_tokens")).sum(),
        calls.iter().map(|c| cost(c)).sum(),
    )
}

/// Asserts one `veil report --format json` row (or total) against the clients' sums.
fn assert_row(row: &serde_json::Value, want: (u64, u64, u64, u64, i64), what: &str) {
    let (requests, errors, input, output, nusd) = want;
    assert_eq!(row["requests"], requests, "{what}: {row}");
    assert_eq!(row["errors"], errors, "{what}: {row}");
    assert_eq!(row["input_tokens"], input, "{what}: {row}");
    assert_eq!(row["output_tokens"], output, "{what}: {row}");
    assert_eq!(row["cost_usd"], nusd as f64 / 1e9, "{what}: {row}");
}

// The acceptance test of veil#12: the official SDKs' real traffic (streaming and not, several
// features, users and models, a failed upstream call, a stream the client abandons) and the
// ledger's report agree with what the clients saw, to the token and the nano-dollar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Python SDKs in .venv or $VEIL_PYTHON (README); run with cargo test -- --include-ignored"]
async fn sdk_traffic_report_totals_equal_what_the_clients_saw() {
    use crate::support::ledger::{json, text, wait_for_rows};
    use crate::support::process::veil;

    python::require("openai, anthropic");
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let mut args = resolve_args(mock.addr);
    args.extend([
        "--upstream-ca".to_string(),
        mock.ca_path.display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = VeilProcess::start(&args, cwd);
    let calls = run_sdk_script("ledger_e2e.py", &proc, &cwd.join("keys"));
    let cases: Vec<&str> = calls.iter().map(|c| c["case"].as_str().unwrap()).collect();
    assert_eq!(
        cases,
        [
            "openai.chat",
            "openai.chat",
            "openai.chat.stream",
            "openai.chat.stream.aborted",
            "openai.chat.stream",
            "anthropic.messages",
            "anthropic.messages.stream",
            "anthropic.messages.failed"
        ]
    );
    for c in &calls {
        assert_eq!(c["request_id"].as_str().map(str::len), Some(36), "{c}");
    }
    let aborted = calls.iter().find(|c| c["outcome"] == "aborted").unwrap();
    let failed = calls.iter().find(|c| c["outcome"] == "error").unwrap();
    // The client left before the stream ended, so it never saw the usage chunk.
    assert_eq!(aborted["chunks"], 3, "{aborted}");
    assert!(aborted["input_tokens"].is_null(), "{aborted}");
    assert_eq!(failed["status"], 429, "{failed}");
    wait_for_rows(cwd, calls.len() as u64);

    let pricing: toml::Table =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rules/pricing.toml"))
            .unwrap()
            .parse()
            .unwrap();
    let cost = |c: &serde_json::Value| -> i64 {
        let (Some(input), Some(output)) = (c["input_tokens"].as_i64(), c["output_tokens"].as_i64())
        else {
            return 0; // no usage seen: veil records the cost as unknown, never a fake 0
        };
        let model = c["model"].as_str().unwrap();
        let (pin, pout) = nano_usd_per_token(&pricing, c["provider"].as_str().unwrap(), model);
        input * pin + output * pout
    };
    let all: Vec<&serde_json::Value> = calls.iter().collect();

    // Row by row: each exchange as its client saw it.
    let rows = json(
        &[
            "sql",
            "SELECT request_id, provider, feature, COALESCE(response_model, request_model) AS model,
                    stream, status, outcome, error_type, input_tokens, output_tokens, cost_nusd
             FROM exchanges",
            "--format",
            "json",
        ],
        cwd,
    );
    for c in &calls {
        let id = c["request_id"].as_str().unwrap();
        let r = rows
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["request_id"] == id)
            .unwrap_or_else(|| panic!("{id} not in the ledger: {rows}"));
        let ctx = format!("{c}\nledger: {r}");
        assert_eq!(r["provider"], c["provider"], "{ctx}");
        assert_eq!(r["feature"], c["feature"], "{ctx}");
        assert_eq!(
            &r["model"],
            if c["model"].is_null() {
                &c["request_model"]
            } else {
                &c["model"]
            },
            "{ctx}"
        );
        assert_eq!(r["stream"], i64::from(c["stream"] == true), "{ctx}");
        assert_eq!(r["status"], c["status"], "{ctx}");
        assert_eq!(r["input_tokens"], c["input_tokens"], "{ctx}");
        assert_eq!(r["output_tokens"], c["output_tokens"], "{ctx}");
        let want_cost = (!c["input_tokens"].is_null()).then(|| cost(c));
        assert_eq!(r["cost_nusd"].as_i64(), want_cost, "{ctx}");
        match c["outcome"].as_str().unwrap() {
            "complete" => {
                assert_eq!(r["outcome"], "complete", "{ctx}");
                assert!(r["error_type"].is_null(), "{ctx}");
            }
            // The provider's answer arrived whole: a complete exchange with the provider's
            // error type (the mock's body says `rate_limit_exceeded`).
            "error" => {
                assert_eq!(r["outcome"], "complete", "{ctx}");
                assert_eq!(r["error_type"], "rate_limit_exceeded", "{ctx}");
            }
            // The app closed the stream: upstream had answered 200, no error on its side, and
            // no usage arrived, so tokens and cost are unknown (NULL), not 0.
            "aborted" => {
                assert_eq!(r["outcome"], "client_aborted", "{ctx}");
                assert!(r["error_type"].is_null(), "{ctx}");
            }
            other => panic!("unknown outcome {other}"),
        }
    }

    // The totals.
    let rep = json(&["report", "--format", "json"], cwd);
    let want = sums(&all, &cost);
    assert_row(&rep["total"], want, "total");
    assert_eq!(rep["total_cost_nusd"], want.4.to_string());
    // Two calls carried no usage (the 429, the abandoned stream): unpriced, not free.
    assert_eq!(rep["total"]["unpriced"], 2, "{rep}");

    // By feature and by model: every group, none missing, none extra.
    for (dim, key) in [("feature", "feature"), ("model", "model")] {
        let rep = json(&["report", "--by", dim, "--format", "json"], cwd);
        let group_of = |c: &serde_json::Value| {
            if key == "model" && c["model"].is_null() {
                c["request_model"].as_str().unwrap().to_string()
            } else {
                c[key].as_str().unwrap().to_string()
            }
        };
        let mut groups: Vec<String> = calls.iter().map(group_of).collect();
        groups.sort();
        groups.dedup();
        let rows = rep["rows"].as_array().unwrap();
        assert_eq!(rows.len(), groups.len(), "by {dim}: {rep}");
        for g in &groups {
            let row = rows
                .iter()
                .find(|r| r[dim] == g.as_str())
                .unwrap_or_else(|| panic!("no {dim} {g} in {rep}"));
            let mine: Vec<&serde_json::Value> =
                calls.iter().filter(|c| group_of(c) == *g).collect();
            assert_row(row, sums(&mine, &cost), &format!("{dim} {g}"));
        }
        assert_row(&rep["total"], want, &format!("by {dim}: total"));
    }
    assert!(
        json(&["report", "--by", "model", "--format", "json"], cwd)["rows"]
            .as_array()
            .unwrap()
            .len()
            >= 2,
        "two or more models"
    );

    // By user: the raw ids the apps sent are pseudonymized in --where with the same keys.
    let mut users: Vec<&str> = calls.iter().map(|c| c["user"].as_str().unwrap()).collect();
    users.sort_unstable();
    users.dedup();
    assert!(users.len() >= 3, "{users:?}");
    for u in &users {
        let rep = json(
            &[
                "report",
                "--where",
                &format!("user={u}"),
                "--format",
                "json",
            ],
            cwd,
        );
        let mine: Vec<&serde_json::Value> = calls.iter().filter(|c| c["user"] == *u).collect();
        assert_row(&rep["total"], sums(&mine, &cost), &format!("user {u}"));
    }
    let by_user = json(&["report", "--by", "user", "--format", "json"], cwd);
    assert_eq!(by_user["rows"].as_array().unwrap().len(), users.len());

    // By outcome: the abandoned stream is the one client_aborted exchange.
    let by_outcome = json(&["report", "--by", "outcome", "--format", "json"], cwd);
    let outcomes: Vec<(String, u64)> = by_outcome["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["outcome"].as_str().unwrap().to_string(),
                r["requests"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        outcomes.contains(&("client_aborted".into(), 1)),
        "{outcomes:?}"
    );
    assert!(
        outcomes.contains(&("complete".into(), calls.len() as u64 - 1)),
        "{outcomes:?}"
    );

    // veil tail shows both: the abandoned stream's outcome, the failed call's 429.
    let n = calls.len().to_string();
    let out = veil(&["tail", "-n", &n], cwd);
    let (tail, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    // Columns: start, status, outcome, ...
    let columns_of = |id: &str| {
        let line = tail
            .lines()
            .find(|l| l.ends_with(id))
            .unwrap_or_else(|| panic!("{id} not in veil tail:\n{tail}"));
        let c: Vec<String> = line.split_whitespace().map(String::from).collect();
        (c[1].clone(), c[2].clone())
    };
    let (_, outcome) = columns_of(aborted["request_id"].as_str().unwrap());
    assert_eq!(outcome, "client_aborted", "{tail}");
    assert_eq!(
        columns_of(failed["request_id"].as_str().unwrap()),
        ("429".to_string(), "complete".to_string()),
        "{tail}"
    );
    // Credentials never reach the log.
    assert!(
        !proc.stderr().contains("LEDGERSECRET"),
        "credential in veil's log"
    );
    assert!(proc.terminate().success(), "{}", proc.stderr());
}
