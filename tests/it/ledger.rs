//! The SQLite ledger through the real binary: traffic in with curl, answers out with
//! `veil report`, `veil sql` and `veil tail`, erasure reaching the database files.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::harness::{Client, Proto, body_text, post_json};
use crate::support::ledger::{json, text, wait_for_rows, wait_for_rows_in};
use crate::support::mock_llm::{Alpn, Mock};
use crate::support::process::{
    VeilProcess, curl_chat, free_port, resolve_args, start_with_admin as start, veil,
};
use crate::support::tmpfs::{ReadOnlyFile, Tmpfs};

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

/// veil#18: an idle ledger gives its page cache back. The writer's cache is sized for a whole
/// group's pages (16 MiB) and fills as the ledger grows; kept for good, it was most of what a
/// veil held at rest after a burst. Measured from outside, as the operator's `ps` would: the
/// process's RSS once the burst's rows are in, then once the writer has been idle a while.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_ledger_gives_its_page_cache_back() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let cwd = tempfile::tempdir().unwrap();
    let mut proc = start(&mock, cwd.path(), free_port());
    let ca = std::fs::read_to_string(cwd.path().join("keys/ca.pem")).unwrap();
    let mut client = Client::connect(proc.addr, "api.openai.com", &ca, Proto::Http1).await;
    // ~1 KB prompts, kept in the ledger's content table: ~10 MB of pages through the cache.
    // (Rows of ~12 KB, all in overflow pages, leave the freed cache scattered through glibc's
    // arena, which keeps most of it: docs/performance.md.)
    const N: u64 = 6_000;
    for i in 0..N {
        let prompt = format!("{} {i}", "ledger filler words ".repeat(50));
        let body = serde_json::json!({"model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": prompt}]});
        let resp = client
            .send(post_json("api.openai.com", "/v1/chat/completions", &body))
            .await;
        assert_eq!(resp.status(), 200);
        body_text(resp).await;
    }
    wait_for_rows(cwd.path(), N);
    // The records' own memory is freed as their group commits; what is left is caches.
    std::thread::sleep(Duration::from_millis(300));
    let busy = rss_kib(proc.child.id());
    // Given back after 1 s idle, seen on the writer's next 1 s tick.
    let deadline = Instant::now() + Duration::from_secs(6);
    let rest = loop {
        let now = rss_kib(proc.child.id());
        if busy.saturating_sub(now) >= 5 * 1024 || Instant::now() > deadline {
            break now;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    eprintln!("ledger page cache: RSS {busy} KiB busy, {rest} KiB at rest");
    assert!(
        busy.saturating_sub(rest) >= 5 * 1024,
        "RSS {busy} KiB once the rows were in, {rest} KiB after 6 s idle: the ledger's page \
         cache was not given back"
    );
    // And the ledger still takes rows after giving its cache back.
    let body = serde_json::json!({"model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "after the rest"}]});
    let resp = client
        .send(post_json("api.openai.com", "/v1/chat/completions", &body))
        .await;
    assert_eq!(resp.status(), 200);
    body_text(resp).await;
    wait_for_rows(cwd.path(), N + 1);
    proc.terminate();
}

/// Resident set size of process `pid`, KiB (`VmRSS` of `/proc/PID/status`).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

// ---- Bad ledger locations (veil#12): each a clear error or a counted drop, never a panic,
// never a stalled proxy. The ledger is always `<data>/ledger.db`; to put it alone on a small
// file system, `data/ledger.db` is a symlink into a tmpfs (SQLite resolves the link, so its
// `-wal` and `-shm` live beside the target, on the tmpfs too).

/// `veil run` with its data dir `data`, the admin API on `admin`, and `config` (TOML) as its
/// config file.
fn start_with(mock: &Mock, cwd: &Path, data: &Path, admin: u16, config: &str) -> VeilProcess {
    let file = cwd.join("veil.toml");
    std::fs::write(&file, config).unwrap();
    let mut args = resolve_args(mock.addr);
    args.extend(
        [
            "--config",
            file.to_str().unwrap(),
            "--upstream-ca",
            mock.ca_path.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ]
        .map(String::from),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    VeilProcess::start(&args, cwd)
}

async fn healthz(admin: u16) -> (http::StatusCode, serde_json::Value) {
    let client = veil::admin::AdminClient::tcp(
        format!("127.0.0.1:{admin}").parse().unwrap(),
        veil::admin::AdminToken::from_secret("not needed for /healthz"),
        "test",
    );
    client.request(http::Method::GET, "/healthz").await.unwrap()
}

/// The `recording` entry of /healthz for `part`, if degraded.
fn degraded_part(body: &serde_json::Value, part: &str) -> Option<serde_json::Value> {
    body["recording"]
        .as_array()?
        .iter()
        .find(|p| p["part"] == part)
        .cloned()
}

/// Records the log says the ledger dropped: the sum of `records=N` over its
/// "ledger write failed" lines (ANSI colours stripped).
fn logged_ledger_drops(log: &str) -> u64 {
    let mut plain = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
        .lines()
        .filter(|l| l.contains("ledger write failed: records dropped"))
        .map(|l| {
            let n = l.split("records=").nth(1).expect("records=N on the line");
            n.split_whitespace().next().unwrap().parse::<u64>().unwrap()
        })
        .sum()
}

/// A chat completion with a prompt of about 12 KB (so the ledger's pages fill fast), sent
/// with curl (h2 inside the intercepted TLS, as curl picks by ALPN) through `proc`; returns
/// the HTTP status and the body. Bounded by curl's timeout.
fn post_chat(proc: &VeilProcess, cwd: &Path, i: usize) -> (u16, String) {
    let prompt = format!("{} {i}", "ledger filler words ".repeat(600));
    let body = serde_json::json!({"model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": prompt}]})
    .to_string();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(cwd.join("keys/ca.pem"))
        .env("HTTPS_PROXY", format!("http://{}", proc.addr))
        .args(["-H", "content-type: application/json", "-d", &body])
        .arg("https://api.openai.com/v1/chat/completions")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code
        .trim()
        .parse()
        .ok()
        .filter(|c| *c != 0)
        .unwrap_or_else(|| {
            panic!(
                "curl: {text}{}\nveil said:\n{}",
                String::from_utf8_lossy(&out.stderr),
                proc.stderr()
            )
        });
    (code, body.to_string())
}

fn ledger_rows(cwd: &Path, data: &Path) -> u64 {
    json(
        &[
            "sql",
            "SELECT COUNT(*) AS n FROM exchanges",
            "--format",
            "json",
            "--data",
            data.to_str().unwrap(),
        ],
        cwd,
    )[0]["n"]
        .as_u64()
        .unwrap()
}

/// Waits (bounded) until every answered exchange is either a ledger row or a logged drop,
/// and returns the drops. Nothing may be lost silently.
fn rows_plus_drops_equal(proc: &VeilProcess, cwd: &Path, data: &Path, answered: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (rows, drops) = (ledger_rows(cwd, data), logged_ledger_drops(&proc.stderr()));
        if rows + drops == answered {
            return drops;
        }
        assert!(
            Instant::now() < deadline,
            "{answered} answered, {rows} in the ledger, {drops} logged as dropped:\n{}",
            proc.stderr()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sets up `cwd/data` with `data/ledger.db` linked into `fs`.
fn ledger_on(fs: &Tmpfs, cwd: &Path) -> std::path::PathBuf {
    let data = cwd.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::os::unix::fs::symlink(fs.path().join("ledger.db"), data.join("ledger.db")).unwrap();
    data
}

// See: veil#12
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_on_a_full_file_system_counts_its_drops_and_traffic_flows() {
    let Some(fs) = Tmpfs::mount(
        "ledger_on_a_full_file_system_counts_its_drops_and_traffic_flows",
        "8m",
    ) else {
        return;
    };
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let cwd = tempfile::tempdir().unwrap();
    let cwd = cwd.path();
    let data = ledger_on(&fs, cwd);
    let admin = free_port();
    let mut proc = start_with(&mock, cwd, &data, admin, "");
    let mut answered = 0u64;
    assert_eq!(post_chat(&proc, cwd, 0).0, 200);
    answered += 1;
    wait_for_rows_in(cwd, &data, 1);
    assert!(
        fs.path().join("ledger.db-wal").exists(),
        "the WAL is on the tmpfs"
    );
    assert_eq!(healthz(admin).await.0, http::StatusCode::OK);

    fs.fill();
    // Best-effort: every request is answered 200 while the ledger cannot write (bounded).
    let mut degraded = None;
    for i in 1..=60 {
        let (code, body) = post_chat(&proc, cwd, i);
        assert_eq!(code, 200, "{body}\nveil said:\n{}", proc.stderr());
        answered += 1;
        let (status, health) = healthz(admin).await;
        if let Some(part) = degraded_part(&health, "ledger") {
            assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE);
            degraded = Some(part);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let part = degraded.unwrap_or_else(|| {
        panic!(
            "/healthz never reported the ledger degraded; veil said:\n{}",
            proc.stderr()
        )
    });
    assert!(part["reason"].as_str().unwrap().contains("full"), "{part}");
    let log = proc.stderr();
    assert!(
        log.contains("ledger write failed: records dropped"),
        "{log}"
    );
    assert!(log.contains("recording degraded"), "{log}");
    assert!(!log.contains("panicked"), "{log}");

    // Space returns: the ledger takes rows again without a restart.
    fs.free();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut i = 100;
    while healthz(admin).await.0 != http::StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "still degraded 20 s after space returned:\n{}",
            proc.stderr()
        );
        assert_eq!(post_chat(&proc, cwd, i).0, 200);
        answered += 1;
        i += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (last, _) = curl_chat(
        &proc,
        cwd,
        &serde_json::json!({"model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "after"}]})
        .to_string(),
        &[],
    );
    answered += 1;
    // Every answered exchange is a row or a counted, logged drop.
    let drops = rows_plus_drops_equal(&proc, cwd, &data, answered);
    assert!(drops >= 1, "the full disk dropped nothing?");
    let d = data.to_str().unwrap();
    let row = json(
        &[
            "sql",
            &format!("SELECT COUNT(*) AS n FROM exchanges WHERE request_id = '{last}'"),
            "--format",
            "json",
            "--data",
            d,
        ],
        cwd,
    );
    assert_eq!(
        row[0]["n"], 1,
        "the exchange after recovery is in the ledger"
    );
    let check = json(
        &["sql", "PRAGMA quick_check", "--format", "json", "--data", d],
        cwd,
    );
    assert_eq!(check[0]["quick_check"], "ok");
    assert!(proc.terminate().success(), "{}", proc.stderr());
}

// See: veil#12
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_on_a_full_file_system_under_audit_required_refuses_then_recovers() {
    let Some(fs) = Tmpfs::mount(
        "ledger_on_a_full_file_system_under_audit_required_refuses_then_recovers",
        "8m",
    ) else {
        return;
    };
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let cwd = tempfile::tempdir().unwrap();
    let cwd = cwd.path();
    let data = ledger_on(&fs, cwd);
    let admin = free_port();
    let mut proc = start_with(&mock, cwd, &data, admin, "audit = \"required\"\n");
    let mut answered = 0u64;
    assert_eq!(post_chat(&proc, cwd, 0).0, 200);
    answered += 1;
    wait_for_rows_in(cwd, &data, 1);

    fs.fill();
    // Answered until the ledger's first failed write; then refused before going upstream.
    let mut refused = 0;
    for i in 1..=60 {
        let (code, body) = post_chat(&proc, cwd, i);
        match code {
            200 => answered += 1,
            503 => {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["error"]["code"], "audit_unavailable", "{v}");
                let msg = v["error"]["message"].as_str().unwrap();
                assert!(msg.contains("ledger") && msg.contains("full"), "{msg}");
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
            other => panic!("{other}: {body}\nveil said:\n{}", proc.stderr()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(refused, 3, "never refused; veil said:\n{}", proc.stderr());
    assert_eq!(
        mock.seen().len() as u64,
        answered,
        "refused requests never went upstream"
    );
    let (_, health) = healthz(admin).await;
    assert!(degraded_part(&health, "ledger").is_some(), "{health}");

    // Space returns: the probe recovers the ledger, and requests are served again soon
    // (PROBE_EVERY is 1 s) though no request reached the ledger meanwhile.
    fs.free();
    let freed = Instant::now();
    let mut i = 100;
    loop {
        let (code, _) = post_chat(&proc, cwd, i);
        i += 1;
        if code == 200 {
            answered += 1;
            break;
        }
        assert_eq!(code, 503);
        assert!(
            freed.elapsed() < Duration::from_secs(10),
            "still refusing 10 s after space returned:\n{}",
            proc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    rows_plus_drops_equal(&proc, cwd, &data, answered);
    assert!(proc.terminate().success(), "{}", proc.stderr());
}

/// Runs `veil run` (listening on port 0) with `--data data`, which must exit on its own
/// (bounded: 20 s; a veil still running then is killed by its PID and the test fails).
/// Returns its exit code and stderr.
fn run_must_exit(mock: &Mock, cwd: &Path, data: &Path) -> (Option<i32>, String) {
    let log = cwd.join("run.log");
    let mut args = resolve_args(mock.addr);
    args.extend(
        [
            "--upstream-ca",
            mock.ca_path.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
        ]
        .map(String::from),
    );
    crate::support::process::project(cwd);
    let mut child = std::process::Command::new(crate::support::process::veil_bin())
        .args(["run", "--listen", "127.0.0.1:0"])
        .args(&args)
        .current_dir(cwd)
        .env_remove("VEIL_MASTER_KEY")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "veil kept running on a bad ledger:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status.code(), std::fs::read_to_string(&log).unwrap())
}

// See: veil#12
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_path_that_is_a_directory_refuses_to_start_naming_the_file_and_the_fix() {
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("data");
    std::fs::create_dir_all(data.join("ledger.db")).unwrap();
    let (code, log) = run_must_exit(&mock, cwd.path(), &data);
    assert_eq!(code, Some(1), "{log}");
    let ledger = data.join("ledger.db");
    let want = format!(
        "veil: cannot open the ledger {}: it is a directory, not a file; make it a writable \
         file (veil creates it when missing), pass `--data DIR` with a writable directory, or \
         set `ledger = false` to run without the ledger",
        ledger.display()
    );
    assert!(log.contains(&want), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(ledger.is_dir(), "left as it was");
}

// See: veil#12
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_from_a_newer_schema_refuses_to_start_and_stays_untouched() {
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let ledger = data.join("ledger.db");
    let newer = veil::ledger::schema::SCHEMA_VERSION + 1;
    {
        let c = rusqlite::Connection::open(&ledger).unwrap();
        c.pragma_update(None, "application_id", veil::ledger::schema::APPLICATION_ID)
            .unwrap();
        c.pragma_update(None, "user_version", newer).unwrap();
        c.execute_batch("CREATE TABLE future (x); INSERT INTO future VALUES ('kept');")
            .unwrap();
    }
    let before = std::fs::read(&ledger).unwrap();
    let (code, log) = run_must_exit(&mock, cwd.path(), &data);
    assert_eq!(code, Some(1), "{log}");
    let want = format!(
        "veil: the ledger {} has schema version {newer}, newer than this veil's {}: run the \
         newer veil, or move the file away to start a new ledger",
        ledger.display(),
        veil::ledger::schema::SCHEMA_VERSION
    );
    assert!(log.contains(&want), "{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert_eq!(
        std::fs::read(&ledger).unwrap(),
        before,
        "the file is not touched"
    );
    // The query commands say the same, with exit 1.
    let out = veil(&["report", "--data", data.to_str().unwrap()], cwd.path());
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out)
            .1
            .contains(&format!("has schema version {newer}")),
        "{:?}",
        text(&out)
    );
}

// See: veil#12
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwritable_ledger_refuses_to_start_naming_the_file() {
    const NAME: &str = "an_unwritable_ledger_refuses_to_start_naming_the_file";
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    // The ledger file read-only (EROFS, which root cannot write through), its directory not.
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let ledger = data.join("ledger.db");
    std::fs::write(&ledger, b"").unwrap();
    let Some(ro) = ReadOnlyFile::bind(NAME, &ledger) else {
        return;
    };
    let (code, log) = run_must_exit(&mock, cwd.path(), &data);
    assert_eq!(code, Some(1), "{log}");
    let want = format!(
        "veil: cannot open the ledger {}: cannot create the ledger file with mode 0600: \
         Read-only file system",
        ledger.display()
    );
    assert!(log.contains(&want), "{log}");
    assert!(
        log.contains("pass `--data DIR` with a writable directory"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
    drop(ro);

    // The whole data dir on a read-only file system: the first file veil writes there is
    // named, before any traffic is accepted.
    let Some(fs) = Tmpfs::mount_read_only(NAME) else {
        return;
    };
    let cwd = tempfile::tempdir().unwrap();
    let (code, log) = run_must_exit(&mock, cwd.path(), fs.path());
    assert_eq!(code, Some(1), "{log}");
    assert!(
        log.contains(&format!("veil: {}/", fs.path().display()))
            && log.contains("Read-only file system"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}
