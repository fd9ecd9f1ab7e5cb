//! `veil export` through the real binary while `veil run` records: datasets from the ledger,
//! their manifests, and `veil forget` naming the datasets that held a forgotten exchange.

use std::os::unix::fs::PermissionsExt;

use crate::support::ledger::wait_for_rows;
use crate::support::mock_llm::{Alpn, Mock};
use crate::support::process::{curl_chat, free_port, start_with_admin as start, veil};

const EMAIL: &str = "dana.scully@example.com";
const CARD: &str = "4111 1111 1111 1111";

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

fn run_ok(args: &[&str], cwd: &std::path::Path) -> (String, String) {
    let out = veil(args, cwd);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(out.status.success(), "veil {args:?}: {stdout}\n{stderr}");
    (stdout, stderr)
}

fn lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_while_veil_runs_writes_a_manifest_that_forget_names_and_no_planted_pii() {
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let cwd = tempfile::tempdir().unwrap();
    let dir = cwd.path();
    let mut proc = start(&mock, dir, free_port());
    let chat = |prompt: &str| {
        serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": prompt}]})
            .to_string()
    };
    let (rated, _) = curl_chat(
        &proc,
        dir,
        &chat(&format!("refund to {EMAIL}, card {CARD}, zebra-phrase")),
        &["-H", "x-veil-feature: billing"],
    );
    let (other, _) = curl_chat(
        &proc,
        dir,
        &chat("search cats"),
        &["-H", "x-veil-feature: search"],
    );
    wait_for_rows(dir, 2);
    // Feedback as the feedback API stores it (a row of the v4 `feedback` table).
    let db = rusqlite::Connection::open(dir.join("data/ledger.db")).unwrap();
    db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
    db.execute(
        "INSERT INTO feedback (id, request_id, scope, at, name, score, label)
         VALUES ('fb_0000000000000001', ?1, 'exchange', '2026-11-29T12:00:00.000000Z', 'user_rating', -1, 'thumbs_down')",
        [&rated],
    )
    .unwrap();
    drop(db);

    // Every format to a file, while veil runs: lines parse, no planted value, a private
    // manifest listing the ids.
    for format in ["openai-chat", "openai-evals", "jsonl"] {
        let out = dir.join(format!("{format}.jsonl"));
        let (_, stderr) = run_ok(
            &["export", "--format", format, "--out", out.to_str().unwrap()],
            dir,
        );
        assert!(stderr.contains("wrote 2 exchange(s)"), "{stderr}");
        let bytes = std::fs::read(&out).unwrap();
        // The prompt is there (so the absence below is the rules' work, not an empty file).
        assert!(contains(&bytes, "zebra-phrase"), "{format}");
        let manifest_path = dir.join(format!("{format}.jsonl.manifest.json"));
        let manifest = std::fs::read(&manifest_path).unwrap();
        for (what, b) in [("dataset", &bytes), ("manifest", &manifest)] {
            for planted in [EMAIL, CARD, "4111111111111111"] {
                assert!(!contains(b, planted), "{planted} in the {format} {what}");
            }
        }
        let parsed = lines(&String::from_utf8(bytes).unwrap());
        assert_eq!(parsed.len(), 2, "{format}");
        if format == "openai-chat" {
            for l in &parsed {
                let m = l["messages"].as_array().unwrap();
                assert_eq!(m.first().unwrap()["role"], "user", "{l}");
                assert_eq!(m.last().unwrap()["role"], "assistant", "{l}");
                assert!(m.last().unwrap()["content"].is_string(), "{l}");
            }
        }
        let doc: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        assert_eq!(
            doc["request_ids"],
            serde_json::json!([rated, other]),
            "{doc}"
        );
        assert_eq!(doc["format"], format);
        assert_eq!(doc["count"], 2);
        for p in [&out, &manifest_path] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }

    // The flywheel: the negatively rated exchange alone, to stdout; its manifest goes to
    // the data directory and stderr says where.
    let (stdout, stderr) = run_ok(
        &[
            "export",
            "--feedback",
            "negative",
            "--format",
            "jsonl",
            "--since",
            "1d",
        ],
        dir,
    );
    let parsed = lines(&stdout);
    assert_eq!(parsed.len(), 1, "{stdout}");
    assert_eq!(parsed[0]["request_id"], rated.as_str());
    assert_eq!(parsed[0]["feedback"][0]["label"], "thumbs_down");
    assert_eq!(parsed[0]["feature"], "billing");
    assert!(stderr.contains("data/datasets/stdout-"), "{stderr}");

    // Forget the rated exchange (through the running veil): the receipt names every
    // manifest that listed it, and the next export leaves it out.
    let (stdout, _) = run_ok(&["forget", &rated], dir);
    let named: Vec<&str> = stdout.lines().filter(|l| l.contains("dataset")).collect();
    assert_eq!(
        named.len(),
        4,
        "three files and one stdout export: {stdout}"
    );
    for format in ["openai-chat", "openai-evals", "jsonl"] {
        assert!(
            named
                .iter()
                .any(|l| l.contains(&format!("{format}.jsonl.manifest.json"))),
            "{stdout}"
        );
    }
    assert!(named.iter().all(|l| l.contains(&rated)), "{stdout}");
    let (stdout, _) = run_ok(&["export", "--format", "jsonl"], dir);
    let parsed = lines(&stdout);
    assert_eq!(parsed.len(), 1, "{stdout}");
    assert_eq!(parsed[0]["request_id"], other.as_str());
    // Forgetting the other one names only the manifests that held it.
    let (stdout, _) = run_ok(&["forget", &other], dir);
    assert_eq!(
        stdout.lines().filter(|l| l.contains("dataset")).count(),
        4,
        "three files and the last stdout export: {stdout}"
    );
    proc.terminate();
}

// See: veil#14. `--rules` while veil runs: the store is veil's, so each sealed exchange is read
// through its control socket (the path the lib test, with a local store, does not take).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_rules_while_veil_runs_reads_through_the_control_socket_audited_and_re_redacted() {
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let cwd = tempfile::tempdir().unwrap();
    let dir = cwd.path();
    let mut proc = start(&mock, dir, free_port());
    let body = serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user",
        "content": format!("refund to {EMAIL}, card {CARD}, zebra-phrase")}]})
    .to_string();
    let (kept, _) = curl_chat(&proc, dir, &body, &["-H", "x-veil-feature: billing"]);
    let (gone, _) = curl_chat(&proc, dir, &body, &["-H", "x-veil-feature: billing"]);
    wait_for_rows(dir, 2);
    run_ok(&["forget", &gone], dir);

    let strict = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/strict.toml");
    let out = dir.join("strict.jsonl");
    let (_, stderr) = run_ok(
        &[
            "export",
            "--format",
            "jsonl",
            "--rules",
            strict.to_str().unwrap(),
            "--reason",
            "ticket 77",
            "--out",
            out.to_str().unwrap(),
        ],
        dir,
    );
    let bytes = std::fs::read(&out).unwrap();
    let text = String::from_utf8(bytes.clone()).unwrap();
    let parsed = lines(&text);
    // The forgotten exchange is never exported; the kept one is, re-redacted (hashes).
    assert_eq!(parsed.len(), 1, "{text}\n{stderr}");
    assert_eq!(parsed[0]["request_id"], kept.as_str());
    assert!(contains(&bytes, "h_"), "{text}");
    let manifest = std::fs::read(dir.join("strict.jsonl.manifest.json")).unwrap();
    for (what, b) in [("dataset", &bytes), ("manifest", &manifest)] {
        for planted in [EMAIL, CARD, "4111111111111111", "zebra-phrase"] {
            assert!(!contains(b, planted), "{planted} in the {what}");
        }
    }
    // Audited by the running veil: one unseal of the kept exchange, with the export's reason.
    let audit = std::fs::read_to_string(dir.join("data/audit.jsonl")).unwrap();
    let unseals: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains("unseal") && l.contains(&kept))
        .collect();
    assert_eq!(unseals.len(), 1, "{audit}");
    assert!(unseals[0].contains("ticket 77"), "{}", unseals[0]);
    assert!(unseals[0].contains("veil export --rules"), "{}", unseals[0]);
    assert!(
        !audit
            .lines()
            .any(|l| l.contains("unseal") && l.contains(&gone)),
        "{audit}"
    );
    proc.terminate();
}
