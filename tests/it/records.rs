//! End to end through the real binary: exchanges become redacted OTLP records (issue #5),
//! sealed exchanges can be unsealed and forgotten while veil runs (issue #6), and nothing raw
//! leaks into any byte veil sends or writes outside the sealed store.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::harness::{Client, Proto, body_text, post_json};
use crate::support::mock_llm::{Alpn, Mock};
use crate::support::otlp::{Receiver, attr};
use crate::support::process::{VeilProcess, free_port, resolve_args, veil};

/// Raw values planted in requests; none may appear outside the sealed store.
const PLANTED: &[&str] = &[
    "alice.liddell@example.com",
    "4111 1111 1111 1111",
    "078-05-1120",
    "AKIAIOSFODNN7EXAMPLE",
    "sk-proj-PLANTEDSECRETKEY0123456789",
    "customer-7781-raw-id",
    // A card glued to an identifier (sent as the stream's feature tag below): still a card.
    "5500005555555559",
    // Disguised (sent inside the prompt below): a fullwidth `＠` and fullwidth card digits,
    // the part of a key after a zero-width space, a password and a GitLab token.
    "jane＠example.org",
    "４１１１　１１１１　１１１１　１１１１",
    "ZWSPKEY0123456789abcdef",
    "Plant3dPassw0rd",
    "glpat-PLANTEDgitlab0123456789",
    // A key sent base64-encoded (`sk-proj-PLANTEDb64key…`) and a password after a flag.
    "c2stcHJvai1QTEFOVEVEYjY0a2V5MDEyMzQ1Njc4OWFiY2RlZg==",
    "Fl4gPassw0rd",
    // HTTP Basic credentials (`alice:Pl4ntedBasic`) and a connection string's password.
    "YWxpY2U6UGw0bnRlZEJhc2lj",
    "Pl4ntedRedisPw",
    // A quoted password: masked, and the message around it kept (it was dropped whole when
    // the detector matched its own mask on every pass).
    "Qu0tedPl4nt",
];

fn start(mock: &Mock, dir: &Path, otlp: &str, admin_port: u16) -> VeilProcess {
    let mut args = resolve_args(mock.addr);
    args.extend([
        "--upstream-ca".to_string(),
        mock.ca_path.display().to_string(),
        "--otlp-endpoint".to_string(),
        otlp.to_string(),
        "--admin-listen".to_string(),
        format!("127.0.0.1:{admin_port}"),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    VeilProcess::start(&args, dir)
}

fn curl_chat(proc: &VeilProcess, dir: &Path, body: &str, extra: &[&str]) -> (String, String) {
    let auth = format!("authorization: Bearer {}", PLANTED[4]);
    let mut args = vec!["-H", auth.as_str()];
    args.extend_from_slice(extra);
    crate::support::process::curl_chat(proc, dir, body, &args)
}

/// Waits (bounded) until `pred` holds.
async fn eventually(what: &str, timeout: Duration, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn all_file_bytes(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.is_file() {
                // (not the control socket: it holds no bytes)
                out.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_become_redacted_records_and_sealed_exchanges_can_be_forgotten() {
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let admin = free_port();
    let proc = start(&mock, dir.path(), &receiver.endpoint(), admin);

    let prompt = format!(
        "My email is {} and my card is {}; SSN {}. Key {}. Also {} and {}, \
         key sk-proj-PLANTED\u{200B}{}, db_password={} and {}; data: {{token: {}}}, \
         run mysql --password {} -h db; Authorization: Basic {}; redis://:{}@cache:6379/0; {{\"password\": \"{}\"}}.",
        PLANTED[0],
        PLANTED[1],
        PLANTED[2],
        PLANTED[3],
        PLANTED[7],
        PLANTED[8],
        PLANTED[9],
        PLANTED[10],
        PLANTED[11],
        PLANTED[12],
        PLANTED[13],
        PLANTED[14],
        PLANTED[15],
        PLANTED[16]
    );
    let body = serde_json::json!({
        "model": "gpt-4o-mini",
        "user": PLANTED[5],
        "messages": [{"role": "user", "content": prompt}]
    })
    .to_string();
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (id, _) = curl_chat(
        &proc,
        dir.path(),
        &body,
        &[
            "-H",
            &format!("traceparent: {traceparent}"),
            "-H",
            "x-veil-feature: billing-bot",
        ],
    );
    let stream_body = serde_json::json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": prompt}]}).to_string();
    let feature = format!("x-veil-feature: checkout_{}", PLANTED[6]);
    let (stream_id, _) = curl_chat(&proc, dir.path(), &stream_body, &["-H", &feature]);

    eventually(
        "both spans and both logs at the receiver",
        Duration::from_secs(20),
        || {
            let spans = receiver.spans();
            receiver.log_count() >= 2
                && [&id, &stream_id].iter().all(|id| {
                    spans
                        .iter()
                        .any(|s| attr(s, "veil.request.id").as_deref() == Some(id.as_str()))
                })
        },
    )
    .await;
    let spans = receiver.spans();
    let span = spans
        .iter()
        .find(|s| attr(s, "veil.request.id").as_deref() == Some(id.as_str()))
        .unwrap();
    let dump = format!("{span:?}");
    assert_eq!(span.name, "chat gpt-4o-mini", "{dump}");
    assert_eq!(span.kind, 3, "CLIENT");
    assert_eq!(attr(span, "gen_ai.operation.name").as_deref(), Some("chat"));
    assert_eq!(
        attr(span, "gen_ai.provider.name").as_deref(),
        Some("openai")
    );
    assert_eq!(
        attr(span, "gen_ai.request.model").as_deref(),
        Some("gpt-4o-mini")
    );
    assert_eq!(
        attr(span, "gen_ai.response.model").as_deref(),
        Some("gpt-4o-mini-2024-07-18")
    );
    assert_eq!(
        attr(span, "gen_ai.usage.input_tokens").as_deref(),
        Some("52")
    );
    assert_eq!(
        attr(span, "gen_ai.usage.output_tokens").as_deref(),
        Some("19")
    );
    assert_eq!(
        attr(span, "gen_ai.response.finish_reasons").as_deref(),
        Some("stop")
    );
    assert_eq!(
        attr(span, "server.address").as_deref(),
        Some("api.openai.com")
    );
    assert_eq!(
        attr(span, "veil.feature")
            .or_else(|| attr(span, "veil.feature.tag"))
            .as_deref(),
        Some("billing-bot"),
        "{dump}"
    );
    let user = attr(span, "user.id").expect("user.id");
    assert!(
        user.starts_with("u_") && user.len() == 18,
        "pseudonym: {user}"
    );
    assert_eq!(attr(span, "enduser.pseudo.id"), Some(user.clone()));
    assert!(
        attr(span, "veil.cost_usd")
            .or_else(|| attr(span, "veil.cost.usd"))
            .is_some(),
        "cost for a priced model: {dump}"
    );
    // Child of the app's traceparent.
    assert_eq!(hex(&span.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(hex(&span.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(span.flags, 0x301);
    // Redacted content is there, masked.
    let input = attr(span, "gen_ai.input.messages").expect("scrubbed input messages exported");
    assert!(
        input.contains("[EMAIL") && input.contains("My email is") && input.contains("[PASSWORD]"),
        "{input}"
    );

    let stream_span = spans
        .iter()
        .find(|s| attr(s, "veil.request.id").as_deref() == Some(stream_id.as_str()))
        .unwrap();
    assert_eq!(
        attr(stream_span, "gen_ai.request.stream").as_deref(),
        Some("true")
    );
    assert_eq!(
        attr(stream_span, "gen_ai.usage.output_tokens").as_deref(),
        Some("3")
    );

    // Nothing raw in any byte sent to the collector, nor in veil's log.
    for r in receiver.received() {
        for secret in PLANTED {
            assert!(
                !contains(&r.body, secret) && !contains(&r.raw, secret),
                "{secret} sent to the collector on {}",
                r.path
            );
        }
    }
    for secret in PLANTED {
        assert!(!proc.stderr().contains(secret), "{secret} in veil's log");
    }

    // The sealed exchange: unsealed through the running veil's admin API (it holds the store).
    let admin_addr = format!("127.0.0.1:{admin}");
    let out = veil(
        &["unseal", &id, "--raw", "--admin", &admin_addr],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "unseal: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unsealed = String::from_utf8_lossy(&out.stdout);
    assert!(
        unsealed.contains(PLANTED[0]) && unsealed.contains("chatcmpl-mock123"),
        "original prompt and response: {unsealed}"
    );
    assert!(
        !unsealed.contains(PLANTED[4]),
        "credentials are never sealed"
    );

    // Everything on disk: the sealed store is ciphertext, the rest holds no raw value.
    for (path, bytes) in all_file_bytes(&dir.path().join("data")) {
        for secret in PLANTED {
            assert!(
                !contains(&bytes, secret),
                "{secret} found in {}",
                path.display()
            );
        }
    }

    let out = veil(
        &[
            "forget",
            &id,
            "--admin",
            &admin_addr,
            "--reason",
            "GDPR request 42",
        ],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "forget: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = veil(&["unseal", &id, "--admin", &admin_addr], dir.path());
    assert!(!out.status.success(), "unseal after forget must fail");
    // Forgetting twice is harmless: it says "already forgotten" (exit 0, veil#13) and
    // changes nothing.
    let out = veil(&["forget", &id, "--admin", &admin_addr], dir.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("already forgotten {id}")));
    let audit = std::fs::read_to_string(dir.path().join("data/audit.jsonl")).unwrap();
    assert!(
        audit.contains("\"unseal\"") && audit.contains("\"forget\"") && audit.contains(&id),
        "{audit}"
    );
    // The same events reach the collector as OTLP log records carrying the request id.
    eventually(
        "unseal and forget audit events at the collector",
        Duration::from_secs(20),
        || {
            let logs: Vec<_> = receiver
                .received()
                .into_iter()
                .filter(|r| r.path == "/v1/logs")
                .collect();
            let has = |kind: &str| {
                logs.iter()
                    .any(|r| contains(&r.body, &id) && contains(&r.body, kind))
            };
            has("unseal")
                && has("forget")
                && logs.iter().any(|r| contains(&r.body, "GDPR request 42"))
        },
    )
    .await;

    // veil keeps serving.
    let mut client = Client::connect(
        proc.addr,
        "api.openai.com",
        &std::fs::read_to_string(dir.path().join("keys/ca.pem")).unwrap(),
        Proto::Http1,
    )
    .await;
    let resp = client
        .send(post_json(
            "api.openai.com",
            "/v1/chat/completions",
            &serde_json::json!({"model": "gpt-4o-mini", "messages": []}),
        ))
        .await;
    assert_eq!(resp.status(), 200);
    body_text(resp).await;
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn timed_requests(client: &mut Client, n: usize) -> (Vec<String>, Vec<Duration>) {
    let mut ids = Vec::new();
    let mut lat = Vec::new();
    for _ in 0..n {
        let t = Instant::now();
        let resp = client
            .send(post_json("api.openai.com", "/v1/chat/completions", &serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})))
            .await;
        assert_eq!(resp.status(), 200);
        ids.push(
            resp.headers()["x-veil-request-id"]
                .to_str()
                .unwrap()
                .to_string(),
        );
        body_text(resp).await;
        lat.push(t.elapsed());
    }
    (ids, lat)
}

fn p(lat: &[Duration], q: f64) -> f64 {
    let mut v: Vec<f64> = lat.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
}

fn span_counts(receiver: &Receiver) -> std::collections::HashMap<String, usize> {
    let mut counts = std::collections::HashMap::new();
    for s in receiver.spans() {
        if let Some(id) = attr(&s, "veil.request.id") {
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn collector_outage_loses_nothing_and_does_not_slow_traffic() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let mut receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let proc = start(&mock, dir.path(), &receiver.endpoint(), free_port());
    let ca = std::fs::read_to_string(dir.path().join("keys/ca.pem")).unwrap();
    let mut client = Client::connect(proc.addr, "api.openai.com", &ca, Proto::Http1).await;

    let (mut ids, before) = timed_requests(&mut client, 40).await;
    receiver.answer(503);
    let (more, during_503) = timed_requests(&mut client, 40).await;
    ids.extend(more);
    receiver.stop();
    let (more, during_down) = timed_requests(&mut client, 40).await;
    ids.extend(more);
    println!(
        "client latency ms: before p50 {:.2} p99 {:.2} | collector 503 p50 {:.2} p99 {:.2} | collector down p50 {:.2} p99 {:.2}",
        p(&before, 0.5),
        p(&before, 0.99),
        p(&during_503, 0.5),
        p(&during_503, 0.99),
        p(&during_down, 0.5),
        p(&during_down, 0.99)
    );
    receiver.answer(200);
    receiver.restart().await;
    eventually(
        "every span after the outage",
        Duration::from_secs(60),
        || {
            let counts = span_counts(&receiver);
            ids.iter().all(|id| counts.contains_key(id))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = span_counts(&receiver);
    for id in &ids {
        assert_eq!(counts[id], 1, "span {id} delivered exactly once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_records_survive_sigkill_and_are_delivered_on_restart() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let mut receiver = Receiver::start().await;
    receiver.stop();
    let dir = tempfile::tempdir().unwrap();
    let mut proc = start(&mock, dir.path(), &receiver.endpoint(), free_port());
    let ca = std::fs::read_to_string(dir.path().join("keys/ca.pem")).unwrap();
    let mut client = Client::connect(proc.addr, "api.openai.com", &ca, Proto::Http1).await;
    let (ids, _) = timed_requests(&mut client, 20).await;
    // Wait until the batches are on disk in the spool, then kill without warning.
    let spool = dir.path().join("data/spool");
    eventually("records spooled", Duration::from_secs(30), || {
        spool.exists() && !all_file_bytes(&spool).is_empty() && {
            let traces = spool.join("traces");
            traces.exists()
                && std::fs::read_dir(&traces)
                    .map(|d| d.count() > 0)
                    .unwrap_or(false)
        }
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proc.child.kill().unwrap();
    proc.child.wait().unwrap();
    drop(client);

    receiver.restart().await;
    let _again = start(&mock, dir.path(), &receiver.endpoint(), free_port());
    eventually(
        "spooled spans delivered after restart",
        Duration::from_secs(60),
        || {
            let counts = span_counts(&receiver);
            ids.iter().all(|id| counts.contains_key(id))
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_rules_and_keeps_the_old_ones_when_the_new_file_is_bad() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(repo.join("rules/default.toml"), &rules).unwrap();
    let mut args = resolve_args(mock.addr);
    args.extend([
        "--upstream-ca".to_string(),
        mock.ca_path.display().to_string(),
        "--otlp-endpoint".to_string(),
        receiver.endpoint(),
        "--rules".to_string(),
        rules.display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proc = VeilProcess::start(&args, dir.path());
    let ca = std::fs::read_to_string(dir.path().join("keys/ca.pem")).unwrap();
    let mut client = Client::connect(proc.addr, "api.openai.com", &ca, Proto::Http1).await;

    let first = next_digest(&mut client, &receiver).await;

    let hup = |pid: u32| {
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap();
    };
    std::fs::write(&rules, "version = 1\ndefault = \"shred\"\n").unwrap();
    hup(proc.child.id());
    eventually(
        "reload rejected in the log",
        Duration::from_secs(10),
        || proc.stderr().contains("rules reload rejected"),
    )
    .await;
    assert!(
        proc.stderr().contains("rules.toml:2"),
        "error names file and line: {}",
        proc.stderr()
    );
    assert_eq!(
        next_digest(&mut client, &receiver).await,
        first,
        "old rules stay in force"
    );

    std::fs::copy(repo.join("rules/strict.toml"), &rules).unwrap();
    hup(proc.child.id());
    eventually(
        "reload accepted in the log",
        Duration::from_secs(10),
        || proc.stderr().contains("rules reloaded"),
    )
    .await;
    let second = next_digest(&mut client, &receiver).await;
    assert_ne!(second, first, "records carry the new rules' digest");
}

async fn next_digest(client: &mut Client, receiver: &Receiver) -> String {
    let (ids, _) = timed_requests(client, 1).await;
    let id = ids[0].clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(s) = receiver
            .spans()
            .into_iter()
            .find(|s| attr(s, "veil.request.id").as_deref() == Some(id.as_str()))
        {
            return attr(&s, "veil.rules.digest").expect("rules digest on every record");
        }
        assert!(Instant::now() < deadline, "span for {id}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
