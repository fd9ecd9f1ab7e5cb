//! The SQLite ledger through the real binary: traffic in with curl, answers out with
//! `veil report`, `veil sql` and `veil tail`, erasure reaching the database files.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::support::mock_llm::{Alpn, Mock};
use crate::support::process::{VeilProcess, curl_chat, free_port, resolve_args, veil};

fn start(mock: &Mock, cwd: &Path, admin: u16) -> VeilProcess {
    let mut args = resolve_args(mock.addr);
    args.extend([
        "--upstream-ca".to_string(),
        mock.ca_path.display().to_string(),
        "--admin-listen".to_string(),
        format!("127.0.0.1:{admin}"),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    VeilProcess::start(&args, cwd)
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn json(args: &[&str], cwd: &Path) -> serde_json::Value {
    let out = veil(args, cwd);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "veil {args:?}: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Polls `veil sql` until the ledger holds `n` exchanges (bounded).
fn wait_for_rows(cwd: &Path, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = veil(
            &[
                "sql",
                "SELECT COUNT(*) AS n FROM exchanges",
                "--format",
                "json",
            ],
            cwd,
        );
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if v[0]["n"] == n {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "ledger never reached {n} rows: {:?}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn ledger_bytes(cwd: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for f in ["ledger.db", "ledger.db-wal", "ledger.db-shm"] {
        if let Ok(b) = std::fs::read(cwd.join("data").join(f)) {
            all.extend(b);
        }
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_totals_equal_what_the_clients_saw_and_sql_cannot_write() {
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let cwd = tempfile::tempdir().unwrap();
    let admin = free_port();
    let mut proc = start(&mock, cwd.path(), admin);
    let chat = |prompt: &str| {
        serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]})
            .to_string()
    };
    let mut ids = Vec::new();
    for i in 0..3 {
        let body = chat(&format!(
            "billing zebra-phrase-{i} from dana.scully@example.com"
        ));
        let (id, _) = curl_chat(
            &proc,
            cwd.path(),
            &body,
            &["-H", "x-veil-feature: billing", "-H", "x-veil-user: alice"],
        );
        ids.push(id);
    }
    for i in 0..2 {
        let body = chat(&format!("search {i}"));
        curl_chat(
            &proc,
            cwd.path(),
            &body,
            &["-H", "x-veil-feature: search", "-H", "x-veil-user: bob"],
        );
    }
    // A failed upstream call (429) and one agent task of three calls sharing the app's trace.
    let out = std::process::Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(cwd.path().join("keys/ca.pem"))
        .env("HTTPS_PROXY", format!("http://{}", proc.addr))
        .args([
            "-H",
            "content-type: application/json",
            "-H",
            "x-mock-status: 429",
        ])
        .args(["-H", "x-veil-feature: flaky", "-d", &chat("rate limited")])
        .arg("https://api.openai.com/v1/chat/completions")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "429");
    for step in 0..3 {
        let tp = format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b{step}-01");
        curl_chat(
            &proc,
            cwd.path(),
            &chat(&format!("agent step {step}")),
            &[
                "-H",
                "x-veil-feature: agent",
                "-H",
                &format!("traceparent: {tp}"),
            ],
        );
    }
    wait_for_rows(cwd.path(), 9);
    let flaky = json(
        &["report", "--where", "feature=flaky", "--format", "json"],
        cwd.path(),
    );
    assert_eq!(flaky["total"]["requests"], 1);
    assert_eq!(flaky["total"]["errors"], 1);
    let by_status = json(
        &[
            "sql",
            "SELECT status, outcome FROM exchanges WHERE feature = 'flaky'",
            "--format",
            "json",
        ],
        cwd.path(),
    );
    assert_eq!(by_status[0]["status"], 429);

    // What the clients saw: the mock answers 52 input and 19 output tokens, model
    // gpt-4o-mini-2024-07-18; the cost is the pricing table's.
    let usage = veil::exchange::Usage {
        input_tokens: Some(52),
        output_tokens: Some(19),
        ..Default::default()
    };
    let one = veil::exchange::Pricing::builtin()
        .cost("openai", "gpt-4o-mini-2024-07-18", &usage)
        .expect("gpt-4o-mini is priced");
    let one_nusd = (one * 1e9).round() as i64;
    let rep = json(
        &["report", "--by", "feature", "--format", "json"],
        cwd.path(),
    );
    let rows = rep["rows"].as_array().unwrap();
    let billing = rows.iter().find(|r| r["feature"] == "billing").unwrap();
    assert_eq!(billing["requests"], 3);
    assert_eq!(billing["input_tokens"], 3 * 52);
    assert_eq!(billing["output_tokens"], 3 * 19);
    assert_eq!(billing["errors"], 0);
    assert_eq!(rep["total"]["requests"], 9);
    // Eight answered calls are priced; the 429 carried no usage and costs nothing.
    assert_eq!(rep["total_cost_nusd"], (8 * one_nusd).to_string());

    // By user: pseudonyms only; a raw user id in --where is pseudonymized with the keys.
    let by_user = json(
        &["report", "--where", "user=alice", "--format", "json"],
        cwd.path(),
    );
    assert_eq!(by_user["total"]["requests"], 3);
    let users = json(&["report", "--by", "user", "--format", "json"], cwd.path());
    let named: Vec<&str> = users["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["user"].as_str())
        .collect();
    assert_eq!(named.len(), 2, "{users}");
    for u in named {
        assert!(u.starts_with("u_") && u != "alice" && u != "bob", "{u}");
    }

    // The table says what it covers and that times are UTC.
    let out = veil(&["report", "--by", "feature", "--by", "model"], cwd.path());
    let (table, _) = text(&out);
    assert!(
        table.starts_with("# veil report by feature, model from "),
        "{table}"
    );
    assert!(table.lines().next().unwrap().contains("(UTC)"), "{table}");
    assert!(
        table.lines().nth(1).unwrap().starts_with("feature"),
        "{table}"
    );
    assert!(table.lines().any(|l| l.starts_with("TOTAL")), "{table}");

    // Cost cards: lone calls are one task each; the three traced agent calls are one task.
    let cards = json(&["report", "--cards", "--format", "json"], cwd.path());
    let agent = cards
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["feature"] == "agent")
        .unwrap();
    assert_eq!(agent["tasks"], 1, "{cards}");
    assert_eq!(agent["calls_per_task"], 3.0);
    assert_eq!(agent["cost_total_usd"], (3 * one_nusd) as f64 / 1e9);
    let billing = cards
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["feature"] == "billing")
        .unwrap();
    assert_eq!(billing["tasks"], 3);

    // sql is read-only.
    let out = veil(&["sql", "DELETE FROM exchanges"], cwd.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).1.contains("readonly"), "{:?}", text(&out));
    wait_for_rows(cwd.path(), 9);

    // tail: a header saying UTC, then one line per exchange with its status.
    let out = veil(&["tail", "-n", "9"], cwd.path());
    let (lines, _) = text(&out);
    let lines: Vec<&str> = lines.lines().collect();
    assert!(lines[0].contains("(UTC)"), "{lines:?}");
    assert_eq!(lines.len(), 10, "{lines:?}");
    assert_eq!(
        lines.iter().filter(|l| l.contains(" 429 ")).count(),
        1,
        "{lines:?}"
    );
    assert_eq!(
        lines.iter().filter(|l| l.contains(" 200 ")).count(),
        8,
        "{lines:?}"
    );

    // No raw value the app sent is in any ledger file.
    let bytes = ledger_bytes(cwd.path());
    for raw in ["dana.scully@example.com", "alice", "bob"] {
        assert!(!contains(&bytes, raw), "{raw} reached the ledger files");
    }
    // The redacted content is there (the default rules let scrubbed text out)...
    assert!(contains(&bytes, "zebra-phrase-0"));
    assert!(contains(&bytes, "zebra-phrase-1"));

    // ... until the exchange is forgotten: then no byte of it is left in the ledger files.
    let admin_addr = format!("127.0.0.1:{admin}");
    let out = veil(&["forget", &ids[0], "--admin", &admin_addr], cwd.path());
    assert!(out.status.success(), "{:?}", text(&out));
    let bytes = ledger_bytes(cwd.path());
    assert!(
        !contains(&bytes, "zebra-phrase-0"),
        "forgotten content survives in the ledger files: {}",
        proc.stderr()
    );
    assert!(
        contains(&bytes, "zebra-phrase-1"),
        "other exchanges are untouched"
    );
    let row = json(
        &[
            "sql",
            &format!(
                "SELECT user, forgotten, cost_nusd FROM exchanges WHERE request_id = '{}'",
                ids[0]
            ),
            "--format",
            "json",
        ],
        cwd.path(),
    );
    assert_eq!(row[0]["user"], serde_json::Value::Null);
    assert_eq!(row[0]["forgotten"], 1);
    assert_eq!(row[0]["cost_nusd"], one_nusd, "the bill keeps its metadata");

    // Forget by user reaches the rest of alice's exchanges.
    let out = veil(
        &["forget", "--user", "alice", "--admin", &admin_addr],
        cwd.path(),
    );
    assert!(out.status.success(), "{:?}", text(&out));
    let bytes = ledger_bytes(cwd.path());
    assert!(!contains(&bytes, "zebra-phrase-1") && !contains(&bytes, "zebra-phrase-2"));
    let left = json(
        &[
            "sql",
            "SELECT COUNT(*) AS n FROM exchanges WHERE user IS NOT NULL",
            "--format",
            "json",
        ],
        cwd.path(),
    );
    assert_eq!(left[0]["n"], 2, "bob's two exchanges keep their pseudonym");
    assert_eq!(
        json(
            &[
                "sql",
                "SELECT COUNT(*) AS n FROM exchanges",
                "--format",
                "json"
            ],
            cwd.path()
        )[0]["n"],
        9,
        "forgetting keeps the rows the bill needs"
    );
    proc.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_writes_leaves_a_readable_ledger_with_every_row_tail_showed() {
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let cwd = tempfile::tempdir().unwrap();
    let mut proc = start(&mock, cwd.path(), free_port());
    let addr = proc.addr;
    let ca = cwd.path().join("keys/ca.pem");
    // Traffic keeps flowing while veil is killed: 60 calls, each bounded by curl's timeout.
    let sender = std::thread::spawn(move || {
        for i in 0..60 {
            let _ = std::process::Command::new("curl")
                .args(["-sS", "-o", "/dev/null", "--max-time", "5", "--cacert"])
                .arg(&ca)
                .env("HTTPS_PROXY", format!("http://{addr}"))
                .args(["-H", "content-type: application/json", "-d"])
                .arg(
                    serde_json::json!({"model": "gpt-4o-mini",
                        "messages": [{"role": "user", "content": format!("call {i}")}]})
                    .to_string(),
                )
                .arg("https://api.openai.com/v1/chat/completions")
                .output();
        }
    });
    // Wait until the ledger has rows, read what tail shows, then SIGKILL at once.
    let deadline = Instant::now() + Duration::from_secs(20);
    let shown: Vec<String> = loop {
        let out = veil(&["tail", "-n", "1000", "--format", "json"], cwd.path());
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["request_id"].as_str().map(str::to_string))
            .collect();
        if ids.len() >= 10 {
            break ids;
        }
        assert!(Instant::now() < deadline, "no rows: {:?}", text(&out));
        std::thread::sleep(Duration::from_millis(50));
    };
    proc.child.kill().unwrap(); // SIGKILL
    let _ = proc.child.wait();
    sender.join().unwrap();

    let check = json(
        &["sql", "PRAGMA quick_check", "--format", "json"],
        cwd.path(),
    );
    assert_eq!(check[0]["quick_check"], "ok");
    let rows = json(
        &[
            "sql",
            "SELECT request_id FROM exchanges",
            "--format",
            "json",
        ],
        cwd.path(),
    );
    let kept: std::collections::HashSet<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["request_id"].as_str())
        .collect();
    for id in &shown {
        assert!(
            kept.contains(id.as_str()),
            "{id} was shown by tail, then lost by SIGKILL"
        );
    }
    // And the next veil opens the same ledger and goes on writing.
    let mut again = start(&mock, cwd.path(), free_port());
    curl_chat(
        &again,
        cwd.path(),
        &serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "after"}]})
            .to_string(),
        &[],
    );
    wait_for_rows(cwd.path(), kept.len() as u64 + 1);
    again.terminate();
}
