//! A forget reaches the exporter's copies (veil#13): the batches spooled for a collector that
//! is down and the OTLP/JSON records files, through the control socket of a running veil
//! started with no admin flag. Only the forgotten exchanges' records go; the collector later
//! receives every other one and never a forgotten one.

use std::path::Path;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use prost::Message;

use crate::support::ledger::text;
use crate::support::mock_llm::{Alpn, Mock};
use crate::support::otlp::{Receiver, attr};
use crate::support::process::{VeilProcess, curl_chat, resolve_args, veil};

fn chat(user: &str, phrase: &str) -> String {
    serde_json::json!({
        "model": "gpt-4o-mini",
        "user": user,
        "messages": [{"role": "user", "content": format!("refund {phrase} please")}]
    })
    .to_string()
}

/// Every file under `dir` (recursively, bounded), with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    let mut n = 0;
    while let Some(d) = dirs.pop() {
        n += 1;
        assert!(n < 1000, "bounded walk");
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else {
                out.push((
                    p.display().to_string(),
                    std::fs::read(&p).unwrap_or_default(),
                ));
            }
        }
    }
    out
}

fn holding(dir: &Path, needle: &str) -> Vec<String> {
    files(dir)
        .into_iter()
        .filter(|(_, b)| b.windows(needle.len()).any(|w| w == needle.as_bytes()))
        .map(|(p, _)| p)
        .collect()
}

/// (event name, request id, user) of every log record in the logs spool (protobuf frames:
/// a 13-byte header, then the request).
fn spooled_logs(data: &Path) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (_, bytes) in files(&data.join("spool/logs")) {
        let Some(payload) = bytes.get(13..) else {
            continue;
        };
        let req = ExportLogsServiceRequest::decode(payload).expect("a spooled logs request");
        for l in req
            .resource_logs
            .iter()
            .flat_map(|r| &r.scope_logs)
            .flat_map(|s| &s.log_records)
        {
            let get = |k: &str| {
                l.attributes
                    .iter()
                    .find(|kv| kv.key == k)
                    .and_then(|kv| kv.value.as_ref())
                    .map(|v| format!("{v:?}"))
                    .unwrap_or_default()
            };
            out.push((l.event_name.clone(), get("veil.request.id"), get("user.id")));
        }
    }
    out
}

/// Polls `cond` every 50 ms for at most `limit`.
fn wait(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

// See: veil#13
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_while_the_collector_is_down_erases_the_spool_and_the_collector_never_gets_them() {
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    // The collector is down from the start: every batch is spooled.
    let mut collector = Receiver::start().await;
    collector.stop();
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("data");
    // Asked for, but every signal has a collector: veil says it writes no records files.
    std::fs::write(cwd.path().join("veil.toml"), "records_files = true\n").unwrap();
    let mut args = resolve_args(mock.addr);
    args.extend([
        "--upstream-ca".to_string(),
        mock.ca_path.display().to_string(),
        "--otlp-endpoint".to_string(),
        collector.endpoint(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = VeilProcess::start(&args, cwd.path());

    let raw_user = "erin.walrus@example.com";
    let (by_id, _) = curl_chat(&proc, cwd.path(), &chat("frank", "walrus-phrase-a"), &[]);
    let (in_body, _) = curl_chat(&proc, cwd.path(), &chat(raw_user, "walrus-phrase-b"), &[]);
    // Named by the header (which wins) beside another body user.
    let (in_header, _) = curl_chat(
        &proc,
        cwd.path(),
        &chat("gina", "walrus-phrase-c"),
        &["-H", &format!("x-veil-user: {raw_user}")],
    );
    let (kept, _) = curl_chat(&proc, cwd.path(), &chat("frank", "walrus-phrase-d"), &[]);
    assert!(
        proc.stderr().contains("records_files = true has no effect"),
        "{}",
        proc.stderr()
    );
    let spool = data.join("spool");
    let all = [&by_id, &in_body, &in_header, &kept];
    assert!(
        wait(Duration::from_secs(20), || all.iter().all(|id| !holding(
            &spool.join("traces"),
            id
        )
        .is_empty())),
        "not all spooled: {:?}\n{}",
        files(&spool).iter().map(|f| &f.0).collect::<Vec<_>>(),
        proc.stderr()
    );

    // No --admin: the CLI finds the running veil by its control socket.
    let out = veil(&["forget", &by_id], cwd.path());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(&format!("forgotten {by_id}")), "{stdout}");
    // Its span and its log record, from the batches waiting for the collector.
    assert!(
        stdout.contains("spool/ (batches not yet sent): 2 record(s)") && !stdout.contains("<data>"),
        "{stdout}"
    );
    assert!(
        stdout.contains("not reached: nothing"),
        "nothing was delivered: {stdout}"
    );

    let out = veil(&["forget", "--user", raw_user], cwd.path());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    for id in [&in_body, &in_header] {
        assert!(stdout.contains(&format!("forgotten {id}")), "{stdout}");
    }
    assert!(
        stdout.contains("spool/ (batches not yet sent): 4 record(s)") && !stdout.contains("<data>"),
        "{stdout}"
    );
    let pseudonym = stderr
        .split("of user ")
        .nth(1)
        .map(|s| s.trim().to_string())
        .expect("the pseudonym on stderr");
    assert!(pseudonym.starts_with("u_"), "{stderr}");

    // The spool: no span of a forgotten exchange, no record log of one; the audit events of
    // the forgets (which name the id and pseudonym on purpose) are the only mentions.
    for id in [&by_id, &in_body, &in_header] {
        assert!(
            holding(&spool.join("traces"), id).is_empty(),
            "{id} left in the traces spool"
        );
    }
    assert!(holding(&spool.join("traces"), &pseudonym).is_empty());
    for phrase in ["walrus-phrase-a", "walrus-phrase-b", "walrus-phrase-c"] {
        assert!(holding(&spool, phrase).is_empty(), "{phrase} left");
    }
    let logs = spooled_logs(&data);
    for (event, id, user) in &logs {
        if event.starts_with("veil.audit.") {
            continue;
        }
        for gone in [&by_id, &in_body, &in_header, &pseudonym] {
            assert!(
                !id.contains(gone.as_str()) && !user.contains(gone.as_str()),
                "a record log of {gone} left: {event} {id} {user}"
            );
        }
    }
    assert!(
        logs.iter()
            .any(|(e, id, _)| e == "veil.audit.forget" && id.contains(&by_id)),
        "the deletion event waits for the collector too: {logs:?}"
    );
    // The others are still there.
    assert!(!holding(&spool.join("traces"), &kept).is_empty());
    assert!(!holding(&spool, "walrus-phrase-d").is_empty());
    // Adversarial: the raw user value is in no byte under the data dir.
    assert_eq!(holding(&data, raw_user), Vec::<String>::new());

    // The collector comes back: the rest arrives, the forgotten never do.
    collector.restart().await;
    let arrived = |id: &str| {
        collector
            .spans()
            .iter()
            .any(|s| attr(s, "veil.request.id").as_deref() == Some(id))
    };
    assert!(
        wait(Duration::from_secs(30), || arrived(&kept)
            && files(&spool).is_empty()),
        "the kept exchange did not arrive or the spool did not drain: {:?}\n{}",
        files(&spool).iter().map(|f| &f.0).collect::<Vec<_>>(),
        proc.stderr()
    );
    for id in [&by_id, &in_body, &in_header] {
        assert!(!arrived(id), "{id} reached the collector after its forget");
    }
    for r in collector.received() {
        let hay = String::from_utf8_lossy(&r.body);
        for phrase in ["walrus-phrase-a", "walrus-phrase-b", "walrus-phrase-c"] {
            assert!(!hay.contains(phrase), "{phrase} reached the collector");
        }
    }
    // Now delivered: a forget of the kept one cannot reach the collector's copy, and says so.
    let out = veil(&["forget", &kept], cwd.path());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stdout.contains(&format!(
            "not reached: 1 exchange(s) already delivered to the OTLP collector, act on them downstream: {kept}"
        )),
        "{stdout}"
    );
    proc.terminate();
}

// See: veil#13
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_rewrites_the_records_files_without_the_forgotten_records() {
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let cwd = tempfile::tempdir().unwrap();
    std::fs::write(cwd.path().join("veil.toml"), "records_files = true\n").unwrap();
    let data = cwd.path().join("data");
    let mut args = resolve_args(mock.addr);
    args.extend([
        "--upstream-ca".to_string(),
        mock.ca_path.display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = VeilProcess::start(&args, cwd.path());
    let raw_user = "hank.walrus@example.com";
    let (gone, _) = curl_chat(&proc, cwd.path(), &chat(raw_user, "walrus-phrase-e"), &[]);
    let (kept, _) = curl_chat(&proc, cwd.path(), &chat("ivy", "walrus-phrase-f"), &[]);
    let records = data.join("records");
    assert!(
        wait(Duration::from_secs(20), || [&gone, &kept]
            .iter()
            .all(|id| !holding(&records, id).is_empty())),
        "records not written: {}",
        proc.stderr()
    );

    let out = veil(&["forget", "--user", raw_user], cwd.path());
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(&format!("forgotten {gone}")), "{stdout}");
    assert!(
        stdout.contains("records/*.jsonl: 2 record(s)") && !stdout.contains("<data>"),
        "{stdout}"
    );
    let traces: Vec<String> = files(&records)
        .into_iter()
        .filter(|(p, _)| p.contains("/traces-"))
        .flat_map(|(_, b)| {
            String::from_utf8(b)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(traces.iter().all(|l| !l.contains(&gone)), "{traces:?}");
    assert!(traces.iter().any(|l| l.contains(&kept)));
    // Every line still parses, and `veil tail` reads the kept one.
    for l in &traces {
        serde_json::from_str::<serde_json::Value>(l).unwrap();
    }
    assert!(holding(&records, "walrus-phrase-e").is_empty());
    assert!(!holding(&records, "walrus-phrase-f").is_empty());
    assert_eq!(holding(&data, raw_user), Vec::<String>::new());
    let tail = veil(&["tail", "--records-files"], cwd.path());
    let (out, err) = text(&tail);
    assert!(out.contains(&kept) && !out.contains(&gone), "{out}{err}");
    proc.terminate();
}
