//! `GET /metrics` through the real binary (veil#15): traffic of two features, a stream, a
//! rate-limited call and an SDK retry through veil; then the scrape must count each as it
//! happened, agree with the ledger on cost, escape a hostile model name, and answer 404/405
//! off its one route.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::mock_llm::{Alpn, Mock};
use crate::support::process::{
    VeilProcess, curl_chat, curl_chat_status, free_port, resolve_args, veil,
};

/// A scrape's samples: the series (name and labels, as printed) → value.
fn scrape(port: u16) -> (String, BTreeMap<String, f64>) {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", "-D", "/dev/stderr"])
        .arg(format!("http://127.0.0.1:{port}/metrics"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let head = String::from_utf8_lossy(&out.stderr).to_ascii_lowercase();
    assert!(
        head.contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut samples = BTreeMap::new();
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("{l}"));
        let v = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("not a value: {l}")),
        };
        samples.insert(series.to_string(), v);
    }
    (text, samples)
}

/// The sum of the samples of `name` whose labels contain every one of `labels`.
fn sum(samples: &BTreeMap<String, f64>, name: &str, labels: &[&str]) -> f64 {
    samples
        .iter()
        .filter(|(s, _)| {
            (s.as_str() == name || s.starts_with(&format!("{name}{{")))
                && labels.iter().all(|l| s.contains(l))
        })
        .map(|(_, v)| v)
        .sum()
}

/// veil in front of `mock`, serving `/metrics` on `port` (and `extra` arguments), once it
/// says so.
fn start_with_metrics(
    mock: &Mock,
    cwd: &std::path::Path,
    port: u16,
    extra: &[&str],
) -> VeilProcess {
    let mut args = resolve_args(mock.addr);
    args.extend([
        "--upstream-ca".to_string(),
        mock.ca_path.display().to_string(),
        "--metrics-listen".to_string(),
        format!("127.0.0.1:{port}"),
    ]);
    args.extend(extra.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proc = VeilProcess::start(&args, cwd);
    let said = format!("Prometheus metrics: http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !proc.stderr().contains(&said) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(proc.stderr().contains(&said), "{}", proc.stderr());
    proc
}

fn status_of(port: u16, method: &str, path: &str) -> u16 {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_cost_tokens_rate_limits_retries_chunks_and_veils_own_latency() {
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let proc = start_with_metrics(&mock, dir.path(), port, &[]);

    let plain = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let stream = serde_json::json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    // A model name an app could use to forge samples, were label values not escaped.
    let hostile = "evil\"} 1\nveil_forged_total 9\n#";
    let forged =
        serde_json::json!({"model": hostile, "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    for _ in 0..2 {
        curl_chat(
            &proc,
            dir.path(),
            &plain,
            &["-H", "x-veil-feature: billing"],
        );
    }
    curl_chat(
        &proc,
        dir.path(),
        &stream,
        &["-H", "x-veil-feature: search", "-H", "x-mock-chunks: 5,40"],
    );
    let limited = curl_chat_status(
        &proc,
        dir.path(),
        &plain,
        &["-H", "x-veil-feature: billing", "-H", "x-mock-status: 429"],
    );
    assert_eq!(limited, 429);
    curl_chat(
        &proc,
        dir.path(),
        &plain,
        &[
            "-H",
            "x-veil-feature: billing",
            "-H",
            "x-stainless-retry-count: 1",
        ],
    );
    curl_chat(&proc, dir.path(), &forged, &[]);
    // A retry no SDK marks: the same request again after a 503, as a curl loop would.
    let again = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "again"}]}).to_string();
    let failed = curl_chat_status(
        &proc,
        dir.path(),
        &again,
        &["-H", "x-veil-feature: billing", "-H", "x-mock-status: 503"],
    );
    assert_eq!(failed, 503);
    curl_chat(
        &proc,
        dir.path(),
        &again,
        &["-H", "x-veil-feature: billing"],
    );
    let exchanges = 8.0;

    // Recording is off the hot path: wait (bounded) for the exporter to have seen all eight.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (text, m) = loop {
        let (text, m) = scrape(port);
        if sum(&m, "veil_requests_total", &[]) >= exchanges || Instant::now() > deadline {
            break (text, m);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let all = |name: &str, labels: &[&str]| sum(&m, name, labels);
    assert_eq!(all("veil_requests_total", &[]), exchanges, "{text}");
    assert_eq!(
        all("veil_requests_total", &["veil_feature=\"billing\""]),
        6.0,
        "{text}"
    );
    assert_eq!(
        all(
            "veil_requests_total",
            &["http_status_class=\"4xx\"", "error_type=\""]
        ),
        1.0,
        "the 429 is an error: {text}"
    );
    assert_eq!(
        all(
            "veil_requests_total",
            &[
                "veil_feature=\"search\"",
                "gen_ai_response_finish_reason=\"stop\""
            ]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        all(
            "veil_upstream_rate_limited_total",
            &["http_response_status_code=\"429\""]
        ),
        1.0
    );
    // The SDK-marked call after the 429 (a repeat of it too: counted once) and the repeat
    // after the 503.
    assert_eq!(
        all("veil_retries_total", &["veil_feature=\"billing\""]),
        2.0,
        "{text}"
    );
    // The mock's completion reports 52 prompt tokens; four successful billing calls.
    assert_eq!(
        all(
            "veil_tokens_total",
            &["veil_feature=\"billing\"", "gen_ai_token_type=\"input\""]
        ),
        4.0 * 52.0,
        "{text}"
    );
    // The stream: 5 content chunks 40 ms apart, so at least five gaps above 20 ms.
    let h = "gen_ai_client_operation_time_per_output_chunk_seconds";
    let gaps = all(&format!("{h}_count"), &["veil_feature=\"search\""]);
    let short = all(
        &format!("{h}_bucket"),
        &["veil_feature=\"search\"", "le=\"0.02\""],
    );
    assert!(
        gaps - short >= 5.0,
        "{gaps} gaps, {short} under 20 ms: {text}"
    );
    assert_eq!(
        all("gen_ai_client_operation_duration_seconds_count", &[]),
        exchanges
    );
    // Every exchange got an upstream answer: veil's own time was measured both ways.
    for d in ["request", "response"] {
        assert_eq!(
            all(
                "veil_added_latency_seconds_count",
                &[&format!("direction=\"{d}\"")]
            ),
            exchanges,
            "{text}"
        );
    }
    // The health counters are there too, and the rules' digest.
    assert_eq!(all("veil_exchanges_total", &[]), exchanges);
    assert!(
        m.keys()
            .any(|k| k.starts_with("veil_rules_info{rules_digest=\"")),
        "{text}"
    );
    // The hostile model is one escaped label value, not a forged sample.
    assert!(
        !text.lines().any(|l| l.starts_with("veil_forged_total")),
        "{text}"
    );
    assert!(
        text.contains("gen_ai_request_model=\"evil\\\"} 1\\nveil_forged_total 9\\n#\""),
        "{text}"
    );

    // Cost agrees with the ledger to the nano-dollar the ledger keeps.
    crate::support::ledger::wait_for_rows(dir.path(), exchanges as u64);
    let out = veil(
        &[
            "sql",
            "--format",
            "json",
            "SELECT SUM(cost_nusd) AS c FROM exchanges",
        ],
        dir.path(),
    );
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ledger_usd = rows[0]["c"].as_f64().expect("a cost") / 1e9;
    let metrics_usd = all("veil_cost_usd_total", &[]);
    assert!(ledger_usd > 0.0, "gpt-4o-mini is priced");
    assert!(
        (metrics_usd - ledger_usd).abs() < 1e-8,
        "metrics {metrics_usd} vs ledger {ledger_usd}"
    );

    assert_eq!(status_of(port, "GET", "/"), 404);
    assert_eq!(status_of(port, "GET", "/metricsx"), 404);
    assert_eq!(status_of(port, "POST", "/metrics"), 405);
}

// See: veil#18. A system prompt that comes back with every request is scanned twice, then
// answered by the redaction memo: the records are the same as a scan's, the raw value is
// nowhere, `/metrics` counts the answers, and a forget empties the memo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_that_comes_back_is_answered_by_the_redaction_memo_and_forget_empties_it() {
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    let admin_listen = format!("127.0.0.1:{admin}");
    let proc = start_with_metrics(&mock, dir.path(), port, &["--admin-listen", &admin_listen]);

    let raw = "ops-lead@northwind.example";
    let system = format!(
        "You are the billing assistant of Northwind. When unsure, escalate to {raw}. {}",
        "Answer briefly and politely, and cite the policy section you rely on. ".repeat(4)
    );
    let mut ids = Vec::new();
    for i in 0..4 {
        let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": format!("question {i}")}
        ]})
        .to_string();
        ids.push(curl_chat(&proc, dir.path(), &body, &[]).0);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let (text, m) = loop {
        let (text, m) = scrape(port);
        if sum(&m, "veil_requests_total", &[]) >= 4.0 || Instant::now() > deadline {
            break (text, m);
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Sightings three and four at least (a record may look the prompt up more than once).
    assert!(
        sum(&m, "veil_redaction_memo_hits_total", &[]) >= 2.0,
        "{text}"
    );
    assert!(sum(&m, "veil_redaction_memo_bytes", &[]) > 0.0, "{text}");

    // Every record carries the prompt redacted the same way: the memo's answers are the scan's.
    let deadline = Instant::now() + Duration::from_secs(20);
    let rows = loop {
        let out = veil(
            &[
                "sql",
                "SELECT input_messages FROM content",
                "--format",
                "json",
            ],
            dir.path(),
        );
        assert!(out.status.success(), "{out:?}");
        let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows: Vec<String> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["input_messages"].to_string())
            .collect();
        if rows.len() >= 4 || Instant::now() > deadline {
            break rows;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(rows.len(), 4, "{rows:?}");
    // (The system message is the first input message of an OpenAI chat.)
    let redacted = "When unsure, escalate to [EMAIL]. Answer briefly";
    assert!(rows.iter().all(|r| r.contains(redacted)), "{rows:?}");
    crate::support::files::assert_nowhere(&[raw], b"", &proc.stderr(), dir.path());

    // A forget empties the memo.
    let out = veil(&["forget", &ids[0], "--admin", &admin_listen], dir.path());
    assert!(out.status.success(), "{out:?}");
    let (text, m) = scrape(port);
    assert_eq!(sum(&m, "veil_redaction_memo_bytes", &[]), 0.0, "{text}");
}
