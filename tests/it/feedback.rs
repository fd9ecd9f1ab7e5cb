//! Feedback through the real binary (veil#14): `POST /veil/v1/feedback` on the proxy port and
//! `veil feedback` on the control socket; the ledger, `veil report` and the OTLP log record
//! show it scrubbed, on the exchange's span; no byte veil writes holds the raw comment.

use std::process::Command;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message;

use crate::support::mock_llm::{Alpn, Mock};
use crate::support::otlp::{Receiver, attr};
use crate::support::process::{VeilProcess, curl_chat, resolve_args, veil};

const EMAIL: &str = "fb.jane.roe@example.org";
const CARD: &str = "5555 5555 5555 4444";

/// `curl` POST of `body` to veil's own API on its listener: (status, JSON body).
fn post(proc: &VeilProcess, body: &[u8]) -> (u16, serde_json::Value) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-H",
            "content-type: application/json",
        ])
        .args(["--data-binary", "@-"])
        .arg(format!("http://{}/veil/v1/feedback", proc.addr))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(body)?;
            c.wait_with_output()
        })
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (json, code) = text.rsplit_once('\n').expect("status line");
    (
        code.trim().parse().unwrap(),
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}

fn logs(receiver: &Receiver) -> Vec<LogRecord> {
    receiver
        .received()
        .iter()
        .filter(|r| r.path == "/v1/logs")
        .flat_map(|r| {
            ExportLogsServiceRequest::decode(&r.body[..])
                .unwrap()
                .resource_logs
        })
        .flat_map(|rl| rl.scope_logs)
        .flat_map(|sl| sl.log_records)
        .collect()
}

fn log_attr(l: &LogRecord, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    l.attributes.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            Value::DoubleValue(d) => Some(d.to_string()),
            Value::IntValue(i) => Some(i.to_string()),
            _ => None,
        }
    })
}

fn files_holding(dir: &std::path::Path, needle: &str) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file()
                && std::fs::read(&p)
                    .unwrap()
                    .windows(needle.len())
                    .any(|w| w == needle.as_bytes())
            {
                hits.push(p);
            }
        }
    }
    hits
}

// See: veil#14
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_with_an_email_and_a_card_lands_scrubbed_in_ledger_report_and_otlp_on_the_exchange_span()
 {
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
    let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let (id, _) = curl_chat(
        &proc,
        dir.path(),
        &body,
        &[
            "-H",
            "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ],
    );

    // Right after the answer: found even if the record has not reached the ledger yet.
    let comment = format!("wrong: write to {EMAIL}, card {CARD}");
    let (status, answer) = post(
        &proc,
        serde_json::json!({"request_id": id, "name": "user_rating", "score": -1,
            "label": "thumbs_down", "comment": comment})
        .to_string()
        .as_bytes(),
    );
    assert_eq!(status, 202, "{answer}\n{}", proc.stderr());
    let fb_id = answer["id"].as_str().unwrap().to_string();
    assert!(fb_id.starts_with("fb_"), "{fb_id}");

    // Unknown id, malformed, oversized.
    let (status, answer) = post(
        &proc,
        br#"{"request_id":"0190a5e2-7c4d-7b3e-9f1a-2b3c4d5e6f70","name":"n","score":1}"#,
    );
    assert_eq!(status, 404, "{answer}");
    assert_eq!(answer["error"]["type"], "not_found");
    let (status, answer) = post(
        &proc,
        format!(r#"{{"request_id":"{id}","name":"n","score":"1"}}"#).as_bytes(),
    );
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["field"], "score");
    let big = format!(
        r#"{{"request_id":"{id}","name":"n","score":1,"comment":"{}"}}"#,
        "x".repeat(20_000)
    );
    let (status, answer) = post(&proc, big.as_bytes());
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["type"], "too_large");

    // The shell: through the control socket.
    let out = veil(
        &["feedback", &id, "--name", "correction", "--label", "ok"],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .starts_with("fb_")
    );
    let out = veil(
        &[
            "feedback",
            "0190a5e2-7c4d-7b3e-9f1a-2b3c4d5e6f70",
            "--name",
            "n",
            "--score",
            "1",
        ],
        dir.path(),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no recorded exchange"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // OTLP: the evaluation event on the exchange's span.
    let deadline = Instant::now() + Duration::from_secs(20);
    let event = loop {
        let found = logs(&receiver).into_iter().find(|l| {
            l.event_name == "gen_ai.evaluation.result"
                && log_attr(l, "veil.feedback.id").as_deref() == Some(fb_id.as_str())
        });
        if let Some(e) = found {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no evaluation event\n{}",
            proc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let span = receiver
        .spans()
        .into_iter()
        .find(|s| attr(s, "veil.request.id").as_deref() == Some(id.as_str()))
        .expect("the exchange's span");
    assert_eq!(event.trace_id, span.trace_id);
    assert_eq!(event.span_id, span.span_id);
    assert_eq!(
        log_attr(&event, "gen_ai.evaluation.name").as_deref(),
        Some("user_rating")
    );
    assert_eq!(
        log_attr(&event, "gen_ai.evaluation.score.value").as_deref(),
        Some("-1")
    );
    assert_eq!(
        log_attr(&event, "gen_ai.evaluation.score.label").as_deref(),
        Some("thumbs_down")
    );
    assert_eq!(
        log_attr(&event, "veil.request.id").as_deref(),
        Some(id.as_str())
    );
    let explanation = log_attr(&event, "gen_ai.evaluation.explanation").unwrap();
    assert!(explanation.starts_with("wrong: write to "), "{explanation}");
    assert!(
        !explanation.contains(EMAIL) && !explanation.contains("5555"),
        "{explanation}"
    );

    // The ledger and the report.
    let sql = veil(
        &[
            "sql",
            "--format",
            "json",
            "SELECT name, comment FROM feedback ORDER BY at",
        ],
        dir.path(),
    );
    let text = String::from_utf8_lossy(&sql.stdout).to_string();
    assert!(
        sql.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&sql.stderr)
    );
    assert!(
        text.contains("user_rating") && text.contains("correction"),
        "{text}"
    );
    assert!(!text.contains(EMAIL) && !text.contains(CARD), "{text}");
    let rep = veil(&["report", "--format", "json"], dir.path());
    let rep: serde_json::Value = serde_json::from_slice(&rep.stdout).unwrap();
    assert_eq!(rep["total"]["share_rated"], 1.0, "{rep}");
    assert_eq!(rep["total"]["share_negative"], 1.0, "{rep}");

    proc.terminate();
    for needle in [EMAIL, CARD] {
        assert!(
            files_holding(dir.path(), needle).is_empty(),
            "{needle} in {:?}",
            files_holding(dir.path(), needle)
        );
        assert!(!proc.stderr().contains(needle), "{needle} in veil's log");
    }
}

/// `curl ARGS` with a status line appended: (status, JSON body or `Null`). `HTTPS_PROXY` is
/// veil's listener, so `https://` URLs of intercepted hosts go through veil's TLS.
fn curl_json(proc: &VeilProcess, cwd: &std::path::Path, args: &[&str]) -> (u16, serde_json::Value) {
    let out = Command::new("curl")
        .args(["-sS", "-o", "-", "-w", "\n%{http_code}", "--max-time", "20"])
        .arg("--cacert")
        .arg(cwd.join("keys/ca.pem"))
        .env("HTTPS_PROXY", format!("http://{}", proc.addr))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env_remove("http_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (json, code) = text.rsplit_once('\n').expect("status line");
    (
        code.trim().parse().unwrap_or_else(|_| {
            panic!(
                "curl: {text}{}\n{}",
                String::from_utf8_lossy(&out.stderr),
                proc.stderr()
            )
        }),
        serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
    )
}

/// `veil sql` as JSON rows, polled until `done` holds (bounded: 10 s).
fn sql_until(
    cwd: &std::path::Path,
    query: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = veil(&["sql", "--format", "json", query], cwd);
        let rows: Vec<serde_json::Value> = if out.status.success() {
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .and_then(|v| v.as_array().cloned())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        if done(&rows) || Instant::now() > deadline {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// See: veil#14
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Python SDKs in .venv or $VEIL_PYTHON (README); run with cargo test -- --include-ignored"]
async fn python_openai_sdk_app_rates_an_answer_with_an_email_and_a_card_in_the_comment() {
    crate::support::python::require("openai");
    const PY_EMAIL: &str = "py.rater@example.net";
    const PY_CARD: &str = "4012 8888 8888 1881";
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = resolve_args(mock.addr);
    args.extend([
        "--upstream-ca".to_string(),
        mock.ca_path.display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = VeilProcess::start(&args, dir.path());
    let script = format!(
        "{}/tests/python/feedback_e2e.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = Command::new(crate::support::python::python())
        .args([script.as_str(), PY_EMAIL, PY_CARD])
        .env("HTTPS_PROXY", format!("http://{}", proc.addr))
        .env("SSL_CERT_FILE", dir.path().join("keys/ca-bundle.pem"))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .env_remove("OPENAI_BASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}\nveil:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        proc.stderr()
    );
    let steps: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(steps.len(), 2, "{steps:?}");
    let id = steps[0]["request_id"].as_str().expect("x-veil-request-id");
    assert_eq!(id.len(), 36, "{id}");
    assert_eq!(steps[1]["request_id"], id);
    assert_eq!(steps[1]["status"], 202, "{}\n{}", steps[1], proc.stderr());
    let fb_id = steps[1]["answer"]["id"].as_str().unwrap().to_string();
    assert!(fb_id.starts_with("fb_"), "{fb_id}");

    let rows = sql_until(
        dir.path(),
        "SELECT id, request_id, name, score, label, comment FROM feedback",
        |r| !r.is_empty(),
    );
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row = &rows[0];
    assert_eq!(row["id"], fb_id.as_str());
    assert_eq!(row["request_id"], id);
    assert_eq!(row["name"], "user_rating");
    assert_eq!(row["label"], "thumbs_down");
    let comment = row["comment"].as_str().expect("a scrubbed comment is kept");
    assert!(comment.starts_with("wrong, mail me at "), "{comment}");
    assert!(
        !comment.contains(PY_EMAIL) && !comment.contains("8888") && !comment.contains("1881"),
        "{comment}"
    );
    // The SDK's request reached the provider through veil; the feedback did not.
    let seen = mock.seen();
    assert_eq!(
        seen.len(),
        1,
        "{:?}",
        seen.iter().map(|s| &s.path).collect::<Vec<_>>()
    );
    assert_eq!(seen[0].path, "/v1/chat/completions");

    proc.terminate();
    let data = dir.path().join("data");
    assert!(data.is_dir(), "veil's data dir is {}", data.display());
    for needle in [PY_EMAIL, PY_CARD, "4012888888881881"] {
        let hits = files_holding(dir.path(), needle);
        assert!(hits.is_empty(), "{needle} in {hits:?}");
        assert!(!proc.stderr().contains(needle), "{needle} in veil's log");
    }
}

// See: veil#14
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedback_inside_an_intercepted_tls_connection_is_answered_by_veil_never_forwarded() {
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = resolve_args(mock.addr);
    args.extend([
        "--upstream-ca".to_string(),
        mock.ca_path.display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = VeilProcess::start(&args, dir.path());
    let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let (id, _) = curl_chat(&proc, dir.path(), &body, &[]);
    let feedback =
        serde_json::json!({"request_id": id, "name": "user_rating", "score": 1}).to_string();
    let json = ["-H", "content-type: application/json"];

    // CONNECT api.openai.com (intercepted), then POST /veil/v1/feedback inside the TLS.
    for http in ["--http1.1", "--http2"] {
        let (status, answer) = curl_json(
            &proc,
            dir.path(),
            &[
                http,
                json[0],
                json[1],
                "--data-binary",
                &feedback,
                "https://api.openai.com/veil/v1/feedback",
            ],
        );
        assert_eq!(status, 202, "{http}: {answer}\n{}", proc.stderr());
        assert!(
            answer["id"].as_str().unwrap().starts_with("fb_"),
            "{answer}"
        );
    }
    // Another path under /veil/: 404 with veil's JSON error, inside TLS and on the listener
    // (plain HTTP to veil itself, no proxy).
    let listener = format!("http://{}", proc.addr);
    for (base, direct) in [
        ("https://api.openai.com", &[][..]),
        (listener.as_str(), &["--noproxy", "*"][..]),
    ] {
        let other = format!("{base}/veil/v1/other");
        let mut args = direct.to_vec();
        args.extend([
            json[0],
            json[1],
            "--data-binary",
            feedback.as_str(),
            other.as_str(),
        ]);
        let (status, answer) = curl_json(&proc, dir.path(), &args);
        assert_eq!(status, 404, "{base}: {answer}");
        assert_eq!(answer["error"]["type"], "not_found", "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("/veil/v1/other"),
            "{answer}"
        );
        // GET on the feedback path: 405 naming POST.
        let path = format!("{base}/veil/v1/feedback");
        let mut args = direct.to_vec();
        args.push(path.as_str());
        let (status, answer) = curl_json(&proc, dir.path(), &args);
        assert_eq!(status, 405, "{base}: {answer}");
        assert_eq!(answer["error"]["type"], "method_not_allowed", "{answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("POST"),
            "{answer}"
        );
    }

    // The provider saw the chat request and nothing under /veil/.
    let paths: Vec<String> = mock.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/v1/chat/completions"], "{paths:?}");
    // Both feedbacks are veil's: in the ledger, and no exchange was recorded for them.
    let rows = sql_until(dir.path(), "SELECT request_id FROM feedback", |r| {
        r.len() >= 2
    });
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter().all(|r| r["request_id"] == id.as_str()),
        "{rows:?}"
    );
    let exchanges = sql_until(dir.path(), "SELECT request_id FROM exchanges", |r| {
        !r.is_empty()
    });
    assert_eq!(exchanges.len(), 1, "{exchanges:?}");
    proc.terminate();
}

// See: veil#14. With `ledger = false` the in-memory map of recent exchanges is all that knows
// an exchange: `veil forget` must empty it there too, or the forgotten answer could be rated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forgotten_exchange_cannot_be_rated_with_the_ledger_off() {
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("veil.toml"), "ledger = false\n").unwrap();
    let mut args = resolve_args(mock.addr);
    args.extend([
        "--upstream-ca".to_string(),
        mock.ca_path.display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = VeilProcess::start(&args, dir.path());
    assert!(
        !dir.path().join("data/ledger.db").exists(),
        "the ledger is off"
    );
    let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let (id, _) = curl_chat(&proc, dir.path(), &body, &[]);
    let feedback = serde_json::json!({"request_id": id, "name": "user_rating", "score": 1});
    let (status, answer) = post(&proc, feedback.to_string().as_bytes());
    assert_eq!(
        status,
        202,
        "rated before the forget: {answer}\n{}",
        proc.stderr()
    );

    // Forget through the control socket (retried while the sealed copy is still being written).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = veil(&["forget", &id], dir.path());
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "forget: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, answer) = post(&proc, feedback.to_string().as_bytes());
    assert_eq!(status, 404, "rated after the forget: {answer}");
    assert_eq!(answer["error"]["type"], "not_found");
    proc.terminate();
}

// See: veil#14
#[test]
fn a_config_with_a_gateway_route_named_veil_is_refused_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("veil.toml"),
        "[routes]\nveil = \"https://gw.example/v1\"\n",
    )
    .unwrap();
    let mut child = Command::new(crate::support::process::veil_bin())
        .args(["run", "--listen", "127.0.0.1:0"])
        .current_dir(dir.path())
        .env_remove("VEIL_MASTER_KEY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Bounded: a veil that accepted the route would keep running.
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("veil started with a route named veil");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(
        err.contains("routes") && err.contains("\"veil\" is reserved"),
        "{err}"
    );
}
