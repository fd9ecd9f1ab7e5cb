//! Deletion by user through the real binary (veil#13): every identity source indexes the
//! exchange, forgetting reaches every file, and forgetting twice or previewing a purge
//! destroys nothing more.

use std::path::Path;

use crate::support::files::{contains, files_containing};
use crate::support::ledger::{json, text, wait_for_rows};
use crate::support::mock_llm::{Alpn, Mock};
use crate::support::process::{curl_chat, free_port, start_with_admin as start, veil};

/// Every byte of the ledger (database, WAL, shared memory), the sealed store's segments and
/// key slots, the journal and the spool, concatenated. Not the receipts and the audit log:
/// they record, by design, which pseudonym an erasure was for. Not `sealed/index.redb`: redb
/// frees the pages of removed entries without zeroing them, so a forgotten pseudonym's bytes
/// stay in free pages until reused (an open gap of veil#13, reported; the index no longer
/// answers for it, which the second forget below checks).
fn store_bytes(data: &Path) -> Vec<u8> {
    walk(data, false)
}

fn walk(data: &Path, skip_ledger: bool) -> Vec<u8> {
    let mut all = Vec::new();
    let mut dirs = vec![data.to_path_buf()];
    let mut n = 0;
    while let Some(dir) = dirs.pop() {
        n += 1;
        assert!(n < 1000, "bounded walk");
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                // `records/` are the exported copies the receipt names as not reached.
                if name != "records" {
                    dirs.push(p);
                }
            } else if name != "receipts.jsonl"
                && name != "audit.jsonl"
                && name != "index.redb"
                && !(skip_ledger && name.starts_with("ledger.db"))
            {
                all.extend(std::fs::read(&p).unwrap_or_default());
            }
        }
    }
    all
}

/// [`store_bytes`] without the ledger's files.
fn store_bytes_except_ledger(data: &Path) -> Vec<u8> {
    walk(data, true)
}

fn chat(user: &str, phrase: &str) -> String {
    serde_json::json!({
        "model": "gpt-4o-mini",
        "user": user,
        "messages": [{"role": "user", "content": format!("refund {phrase} please")}]
    })
    .to_string()
}

// See: veil#13
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_named_in_the_body_and_overridden_by_x_veil_user_is_found_by_both_values() {
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    for who in ["alice@example.com", "bob"] {
        let cwd = tempfile::tempdir().unwrap();
        let data = cwd.path().join("data");
        let admin = free_port();
        let admin_addr = format!("127.0.0.1:{admin}");
        let mut proc = start(&mock, cwd.path(), admin);
        let (id, _) = curl_chat(
            &proc,
            cwd.path(),
            &chat("alice@example.com", "walrus-phrase-1"),
            &["-H", "x-veil-user: bob"],
        );
        let (other, _) = curl_chat(
            &proc,
            cwd.path(),
            &chat("zed@example.com", "walrus-phrase-2"),
            &[],
        );
        wait_for_rows(cwd.path(), 2);
        // The header won (exchanges.user), and the body's source, which did not, is indexed
        // in exchange_users.
        let users = json(
            &[
                "sql",
                &format!(
                    "SELECT u.user AS user, e.user AS winner FROM exchange_users u
                     JOIN exchanges e ON e.id = u.exchange WHERE e.request_id = '{id}'"
                ),
                "--format",
                "json",
            ],
            cwd.path(),
        );
        let users = users.as_array().unwrap();
        assert_eq!(users.len(), 1, "{users:?}");
        // The header's value won: bob's pseudonym is the winner, alice's the other one.
        let bob = users[0]["winner"].as_str().unwrap().to_string();
        let alice = users[0]["user"].as_str().unwrap().to_string();
        assert_ne!(alice, bob);
        let pseudonyms = vec![bob.clone(), alice.clone()];
        let asked = if who == "bob" { &bob } else { &alice };
        assert!(pseudonyms.iter().all(|p| p.starts_with("u_")));
        let before = store_bytes(&data);
        assert!(contains(&before, "walrus-phrase-1"));
        for p in &pseudonyms {
            assert!(contains(&before, p), "{p} indexed before the forget");
        }

        let out = veil(
            &["forget", "--user", who, "--admin", &admin_addr],
            cwd.path(),
        );
        let (stdout, stderr) = text(&out);
        assert!(out.status.success(), "{who}: {stdout}{stderr}");
        assert!(
            stdout.contains(&format!("forgotten {id}")),
            "{who}: {stdout}"
        );
        assert!(!stdout.contains(&other), "{who}: {stdout}");
        // The receipt says where it was removed and what could not be reached.
        assert!(stdout.contains("removed: sealed store"), "{stdout}");
        assert!(stdout.contains("removed: ledger"), "{stdout}");
        assert!(stdout.contains("not reached:"), "{stdout}");
        let unseal = veil(&["unseal", &id, "--admin", &admin_addr], cwd.path());
        assert!(!unseal.status.success(), "forgotten, yet unsealed");

        let after = store_bytes(&data);
        for gone in ["walrus-phrase-1", "alice@example.com"] {
            assert!(!contains(&after, gone), "{gone} survives forgetting {who}");
        }
        // The pseudonym asked for stays only as the ledger's erase tombstone (for records
        // still in flight; swept after a day): in no other file, in no ledger row.
        for p in &pseudonyms {
            let hay = if p == asked {
                store_bytes_except_ledger(&data)
            } else {
                after.clone()
            };
            assert!(
                !contains(&hay, p),
                "pseudonym {p} (asked: {}) survives forgetting {who} in {:?}",
                p == asked,
                files_containing(&data, p)
            );
        }
        let left = json(
            &[
                "sql",
                &format!(
                    "SELECT (SELECT COUNT(*) FROM exchanges WHERE user = '{asked}')
                          + (SELECT COUNT(*) FROM exchange_users WHERE user = '{asked}') AS n"
                ),
                "--format",
                "json",
            ],
            cwd.path(),
        );
        assert_eq!(left[0]["n"], 0);
        assert!(
            contains(&after, "walrus-phrase-2"),
            "the other exchange stays"
        );

        // Forgetting again is not an error, by user or by id; an id never seen is.
        let again = veil(
            &["forget", "--user", who, "--admin", &admin_addr],
            cwd.path(),
        );
        let (stdout, stderr) = text(&again);
        assert_eq!(again.status.code(), Some(0), "{stdout}{stderr}");
        assert!(stdout.contains("already forgotten"), "{stdout}{stderr}");
        let again = veil(&["forget", &id, "--admin", &admin_addr], cwd.path());
        let (stdout, stderr) = text(&again);
        assert_eq!(again.status.code(), Some(0), "{stdout}{stderr}");
        assert!(
            stdout.contains(&format!("already forgotten {id}")),
            "{stdout}"
        );
        let never = "0192f4a0-0000-7000-8000-000000000000";
        let unknown = veil(&["forget", never, "--admin", &admin_addr], cwd.path());
        let (stdout, stderr) = text(&unknown);
        assert_eq!(unknown.status.code(), Some(1), "{stdout}{stderr}");
        assert!(stderr.contains(&format!("unknown {never}")), "{stderr}");
        let nobody = veil(
            &["forget", "--user", "never-seen", "--admin", &admin_addr],
            cwd.path(),
        );
        assert_eq!(nobody.status.code(), Some(1), "{:?}", text(&nobody));
        proc.terminate();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_dry_run_lists_what_would_go_and_destroys_nothing() {
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let cwd = tempfile::tempdir().unwrap();
    let data = cwd.path().join("data");
    let admin = free_port();
    let admin_addr = format!("127.0.0.1:{admin}");
    let mut proc = start(&mock, cwd.path(), admin);
    let (a, _) = curl_chat(&proc, cwd.path(), &chat("carol", "walrus-phrase-3"), &[]);
    let (b, _) = curl_chat(&proc, cwd.path(), &chat("carol", "walrus-phrase-4"), &[]);
    wait_for_rows(cwd.path(), 2);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let sealed = |n: &str| std::fs::read(data.join("sealed").join(n)).unwrap_or_default();
    let (receipts, audit) = (
        sealed("receipts.jsonl"),
        std::fs::read(data.join("audit.jsonl")).unwrap_or_default(),
    );

    let out = veil(
        &[
            "purge",
            "--older-than",
            "1s",
            "--dry-run",
            "--admin",
            &admin_addr,
        ],
        cwd.path(),
    );
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.contains(&format!("would purge {a}")), "{stdout}");
    assert!(stdout.contains(&format!("would purge {b}")), "{stdout}");
    assert!(stdout.contains("would purge 2 exchange(s)"), "{stdout}");

    // Nothing changed: no receipt, no audit event, both still unseal, the ledger keeps them.
    assert_eq!(sealed("receipts.jsonl"), receipts);
    assert_eq!(
        std::fs::read(data.join("audit.jsonl")).unwrap_or_default(),
        audit
    );
    for id in [&a, &b] {
        let u = veil(&["unseal", id, "--admin", &admin_addr], cwd.path());
        assert!(u.status.success(), "{id}: {:?}", text(&u));
    }
    let n = json(
        &[
            "sql",
            "SELECT COUNT(*) AS n FROM exchanges WHERE forgotten = 0 AND user IS NOT NULL",
            "--format",
            "json",
        ],
        cwd.path(),
    );
    assert_eq!(n[0]["n"], 2);

    // The real purge then destroys exactly what the dry run listed.
    let out = veil(
        &["purge", "--older-than", "1s", "--admin", &admin_addr],
        cwd.path(),
    );
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains(&format!("purged {a}")) && stdout.contains(&format!("purged {b}")),
        "{stdout}"
    );
    proc.terminate();
}
