//! The `forward-only` build (the load bench's measure of forwarding alone): veil intercepts
//! and forwards an exchange byte for byte, records nothing of it, and says so in
//! `--version` and at start. Compiled only with the feature; `.ci/run` runs it as
//! `cargo test --features forward-only --test it forward_only` (every recording test of this
//! binary fails in such a build, by design).

use crate::support::ledger::json;
use crate::support::mock_llm::{Alpn, Mock, openai_completion};
use crate::support::process::{VeilProcess, curl_chat_output, resolve_args, veil};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forward_only_build_forwards_intact_records_nothing_and_says_so() {
    let version = veil(&["--version"], tempfile::tempdir().unwrap().path());
    let version = String::from_utf8_lossy(&version.stdout).into_owned();
    assert!(
        version.contains("forward-only build, for benchmarks: records nothing"),
        "{version}"
    );

    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let cwd = tempfile::tempdir().unwrap();
    let mut args = resolve_args(mock.addr);
    args.extend(["--upstream-ca".into(), mock.ca_path.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = VeilProcess::start(&args, cwd.path());

    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "forward-only marker 7f3e from dana.scully@example.com"}]
    })
    .to_string();
    let text = curl_chat_output(&proc, cwd.path(), &body, &["-H", "x-veil-feature: bench"]);
    // The proxy's CONNECT answer, then the upstream's head, then its body.
    let (head, answer) = text.rsplit_once("\r\n\r\n").expect("a head and a body");
    // Intercepted (the app's TLS session ended at veil, under veil's CA) and forwarded: the
    // upstream saw the request body byte for byte, the app the upstream's answer.
    let seen = mock.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].body, body.as_bytes());
    assert!(
        seen[0].headers.get("x-veil-feature").is_none(),
        "veil's own headers are still taken off"
    );
    let answer: serde_json::Value = serde_json::from_str(answer).expect("the upstream's JSON");
    assert_eq!(
        answer["choices"],
        openai_completion("gpt-4o-mini")["choices"]
    );
    // Not recorded: no request id is handed out, for there is no record to look it up by.
    assert!(
        !head.to_ascii_lowercase().contains("x-veil-request-id"),
        "{head}"
    );
    let log = proc.stderr();
    assert!(
        log.contains("built with the forward-only feature"),
        "the start must warn:\n{log}"
    );

    // Once veil has stopped (its recording drained), the ledger holds no row.
    assert!(proc.terminate().success(), "{}", proc.stderr());
    let rows = json(
        &[
            "sql",
            "SELECT COUNT(*) AS n FROM exchanges",
            "--format",
            "json",
        ],
        cwd.path(),
    );
    assert_eq!(rows[0]["n"], 0, "{rows}");
    let log = proc.stderr();
    assert!(
        log.contains("made into records: 0") && log.contains("ledger rows written: 0"),
        "{log}"
    );
}
