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
