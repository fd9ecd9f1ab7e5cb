//! The ledger end to end on a real SQLite file: write, roll up, report, erase, bound, refuse.

use std::time::{Duration, SystemTime};

use super::report::{Dim, Filter, report};
use super::testing::*;
use super::*;
use crate::keys::UserPseudonym;

fn send(ledger: &Ledger, records: Vec<crate::record::Record>) {
    let h = ledger.handle();
    let (tx, rx) = std::sync::mpsc::channel();
    h.send_blocking(records, Some(Box::new(move |ok| tx.send(ok).unwrap())));
    assert!(rx.recv().unwrap(), "the batch is committed");
}

fn count(path: &std::path::Path, sql: &str) -> i64 {
    let conn = schema::open_read_only(path).unwrap();
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn a_batch_becomes_rows_content_and_a_rollup_in_one_transaction() {
    let (_d, path, ledger) = ledger();
    send(
        &ledger,
        vec![
            openai_chat("r1"),
            anthropic_stream("r2"),
            upstream_error("r3"),
        ],
    );
    assert_eq!(ledger.counters().ledger.rows.get(), 3);
    assert_eq!(count(&path, "SELECT COUNT(*) FROM exchanges"), 3);
    // r1 and r2 carry content, r3 does not.
    assert_eq!(count(&path, "SELECT COUNT(*) FROM content"), 2);
    assert_eq!(
        count(
            &path,
            "SELECT cost_nusd FROM exchanges WHERE request_id = 'r1'"
        ),
        19_200
    );
    assert_eq!(
        count(&path, "SELECT SUM(requests) FROM daily"),
        3,
        "the rollup counts every exchange"
    );
    assert_eq!(count(&path, "SELECT SUM(errors) FROM daily"), 1);
    let conn = schema::open_read_only(&path).unwrap();
    let (start, trace, fp): (String, String, String) = conn
        .query_row(
            "SELECT start, trace_id, api_key_fp FROM exchanges WHERE request_id = 'r1'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(start, "2026-11-20T14:03:07.000000Z");
    assert_eq!(trace, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(fp, "fp_1a2b");
}

#[test]
fn a_replayed_request_id_is_not_counted_twice() {
    let (_d, path, ledger) = ledger();
    send(&ledger, vec![openai_chat("r1")]);
    send(&ledger, vec![openai_chat("r1"), openai_chat("r2")]);
    assert_eq!(count(&path, "SELECT COUNT(*) FROM exchanges"), 2);
    assert_eq!(count(&path, "SELECT SUM(requests) FROM daily"), 2);
}

#[test]
fn the_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let (_d, path, ledger) = ledger();
    send(&ledger, vec![openai_chat("r1")]);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    assert_eq!(mode(std::path::Path::new(&wal)), 0o600);
    assert_eq!(mode(path.parent().unwrap()), 0o700);
}

#[test]
fn report_totals_are_the_exact_sums_of_the_rows() {
    let (_d, path, ledger) = ledger();
    let mut records = Vec::new();
    for i in 0..30u64 {
        let mut r = if i % 3 == 0 {
            anthropic_stream("x")
        } else {
            openai_chat("x")
        };
        r.request_id = format!("r{i}");
        r.feature = Some(if i % 2 == 0 { "billing" } else { "search" }.into());
        r.duration = Duration::from_millis(100 + i);
        r.cost_usd = Some(0.000_001 * (i + 1) as f64);
        records.push(r);
    }
    send(&ledger, records);
    let conn = schema::open_read_only(&path).unwrap();
    let rep = report(&conn, &[Dim::Feature], &Filter::default()).unwrap();
    assert_eq!(rep.total.requests, 30);
    // Σ (i+1) µUSD for i in 0..30 = 465 µUSD.
    assert_eq!(rep.total.cost_nusd, 465_000);
    assert_eq!(rep.rows.len(), 2);
    let sum: i128 = rep.rows.iter().map(|r| r.cost_nusd).sum();
    assert_eq!(sum, rep.total.cost_nusd);
    let billing = rep
        .rows
        .iter()
        .find(|r| r.group == vec![Some("billing".to_string())])
        .unwrap();
    assert_eq!(billing.requests, 15);
    // Durations 100, 102, ..., 128 ms: median (nearest rank 8 of 15) is 114 ms.
    assert_eq!(billing.duration_ms.p50, Some(114.0));
    assert_eq!(billing.duration_ms.p99, Some(128.0));
    // Filter: only the search feature.
    let f = Filter {
        equals: vec![(Dim::Feature, "search".into())],
        ..Filter::default()
    };
    assert_eq!(report(&conn, &[], &f).unwrap().total.requests, 15);
}

#[test]
fn since_and_until_bound_the_report_by_start_time() {
    let (_d, path, ledger) = ledger();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
    let records = (0..10u64)
        .map(|i| {
            let mut r = openai_chat("x");
            r.request_id = format!("r{i}");
            r.start = t0 + Duration::from_secs(3600 * i);
            r
        })
        .collect();
    send(&ledger, records);
    let conn = schema::open_read_only(&path).unwrap();
    let f = Filter {
        since: Some(t0 + Duration::from_secs(3600 * 2)),
        until: Some(t0 + Duration::from_secs(3600 * 5)),
        equals: Vec::new(),
    };
    let rep = report(&conn, &[Dim::Hour], &f).unwrap();
    assert_eq!(rep.total.requests, 3);
    let hours: Vec<_> = rep
        .rows
        .iter()
        .map(|r| r.group[0].clone().unwrap())
        .collect();
    assert_eq!(
        hours,
        ["2026-11-18T13:00", "2026-11-18T14:00", "2026-11-18T15:00"]
    );
}

#[test]
fn cards_group_a_traced_task_into_one_and_lone_calls_into_their_own() {
    let (_d, path, ledger) = ledger();
    let mut records = Vec::new();
    for i in 0..3 {
        // One agent run: three calls sharing the app's trace.
        let mut r = openai_chat("x");
        r.request_id = format!("agent{i}");
        r.feature = Some("agent".into());
        r.conversation_id = None;
        r.cost_usd = Some(0.001);
        records.push(r);
    }
    for i in 0..2 {
        let mut r = record("x");
        r.request_id = format!("lone{i}");
        r.feature = Some("agent".into());
        r.cost_usd = Some(0.002);
        records.push(r);
    }
    send(&ledger, records);
    let conn = schema::open_read_only(&path).unwrap();
    let cards = cards::cards(&conn, &Filter::default()).unwrap();
    assert_eq!(cards.len(), 1);
    let c = &cards[0];
    assert_eq!(c.tasks, 3, "one traced task and two lone calls");
    assert_eq!(c.calls, 5);
    assert_eq!(c.cost_total_nusd, 7_000_000);
    assert_eq!(c.cost_p90_usd, Some(0.003));
    assert_eq!(c.cost_p50_usd, Some(0.002));
}

#[test]
fn sql_cannot_write_and_is_stopped_at_its_time_limit() {
    let (_d, path, ledger) = ledger();
    send(&ledger, vec![openai_chat("r1")]);
    let conn = schema::open_read_only(&path).unwrap();
    for write in [
        "DELETE FROM exchanges",
        "DROP TABLE content",
        "UPDATE exchanges SET user = 'x'",
        "PRAGMA user_version = 9",
        "INSERT INTO meta VALUES ('a', 'b')",
        "VACUUM INTO '/tmp/veil-ledger-vacuum-into-test.db'",
    ] {
        let e = sql::query(&conn, write, Duration::from_secs(5), 10).unwrap_err();
        assert!(
            e.to_string().contains("readonly")
                || e.to_string().contains("read-only")
                || e.to_string().contains("query_only")
                || e.to_string().contains("attempt to write"),
            "{write}: {e}"
        );
    }
    assert_eq!(count(&path, "SELECT COUNT(*) FROM exchanges"), 1);
    assert!(
        !std::path::Path::new("/tmp/veil-ledger-vacuum-into-test.db").exists(),
        "VACUUM INTO created a file"
    );
    let slow =
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT COUNT(*) FROM n";
    let t = std::time::Instant::now();
    let e = sql::query(&conn, slow, Duration::from_millis(200), 10).unwrap_err();
    assert!(e.to_string().contains("longer than"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
    let ok = sql::query(
        &conn,
        "SELECT request_id, cost_nusd FROM exchanges",
        Duration::from_secs(5),
        10,
    )
    .unwrap();
    assert_eq!(ok.columns, ["request_id", "cost_nusd"]);
    assert_eq!(
        ok.rows,
        vec![vec![serde_json::json!("r1"), serde_json::json!(19_200)]]
    );
}

#[test]
fn forget_removes_content_and_pseudonym_from_every_file_byte() {
    let (_d, path, ledger) = ledger();
    let secret = "[PERSON_1] unique-forgettable-phrase-7731";
    let mut r = openai_chat("r1");
    r.input_messages =
        Some(serde_json::json!([{"role":"user","parts":[{"type":"text","content":secret}]}]));
    r.user_pseudonym = Some(UserPseudonym::parse("u_0123456789abcdef").unwrap());
    // Ids that could fetch the exchange back from the provider.
    r.route = "/v1/threads/thread_forgettable5519/runs".into();
    r.response_id = Some("resp_forgettable8823".into());
    r.conversation_id = Some("conv_forgettable3307".into());
    let mut keep = openai_chat("r2");
    keep.input_messages = Some(
        serde_json::json!([{"role":"user","parts":[{"type":"text","content":"kept-phrase-1177"}]}]),
    );
    send(&ledger, vec![r, keep]);
    let bytes = file_bytes(&path);
    for text in [
        "unique-forgettable-phrase-7731",
        "thread_forgettable5519",
        "resp_forgettable8823",
        "conv_forgettable3307",
    ] {
        assert!(contains(&bytes, text), "{text} was written");
    }
    let erased = erase::forget_ids(&path, &["r1".into(), "nope".into()]).unwrap();
    assert_eq!((erased.rows, erased.content), (1, 1));
    assert_eq!(erased.request_ids, ["r1"]);
    assert!(erased.wal_wiped);
    let bytes = file_bytes(&path);
    assert!(
        !contains(&bytes, "unique-forgettable-phrase-7731"),
        "content survives in the files"
    );
    assert!(
        !contains(&bytes, "u_0123456789abcdef"),
        "the pseudonym survives in the files"
    );
    for id in [
        "thread_forgettable5519",
        "resp_forgettable8823",
        "conv_forgettable3307",
    ] {
        assert!(!contains(&bytes, id), "{id} survives in the files");
    }
    assert!(
        contains(&bytes, "kept-phrase-1177"),
        "other exchanges are untouched"
    );
    // The row stays for the bill, marked forgotten; the rollup is unchanged.
    assert_eq!(
        count(
            &path,
            "SELECT forgotten FROM exchanges WHERE request_id = 'r1'"
        ),
        1
    );
    assert_eq!(count(&path, "SELECT SUM(requests) FROM daily"), 2);
    // Forgetting again erases nothing new.
    let again = erase::forget_ids(&path, &["r1".into()]).unwrap();
    assert_eq!((again.rows, again.content), (0, 0));
}

#[test]
fn forget_by_user_reaches_every_exchange_of_that_pseudonym() {
    let (_d, path, ledger) = ledger();
    let records = (0..5)
        .map(|i| {
            let mut r = openai_chat("x");
            r.request_id = format!("r{i}");
            r.user_pseudonym = Some(
                UserPseudonym::parse(if i < 3 {
                    "u_aaaaaaaaaaaaaaaa"
                } else {
                    "u_bbbbbbbbbbbbbbbb"
                })
                .unwrap(),
            );
            r
        })
        .collect();
    send(&ledger, records);
    let alice = crate::keys::UserPseudonym::parse("u_aaaaaaaaaaaaaaaa").unwrap();
    let erased = erase::forget_user(&path, &alice).unwrap();
    assert_eq!(erased.rows, 3);
    assert_eq!(erased.request_ids.len(), 3);
    assert_eq!(
        count(
            &path,
            "SELECT COUNT(*) FROM exchanges WHERE user = 'u_aaaaaaaaaaaaaaaa'"
        ),
        0
    );
    assert_eq!(
        count(
            &path,
            "SELECT COUNT(*) FROM exchanges WHERE user = 'u_bbbbbbbbbbbbbbbb'"
        ),
        2
    );
}

#[test]
fn erasing_without_a_ledger_says_so_and_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let e = erase::forget_ids(&dir.path().join("ledger.db"), &["r1".into()]).unwrap();
    assert!(e.no_ledger);
    assert!(
        !dir.path().join("ledger.db").exists(),
        "an erase never creates a ledger"
    );
}

#[test]
fn retention_removes_old_content_then_old_rows_and_keeps_the_rollup() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let mut settings = LedgerSettings::new(path.clone());
    settings.check_every = Duration::from_secs(3600);
    settings.content_retention = Duration::from_secs(10 * 86_400);
    settings.retention = Duration::from_secs(100 * 86_400);
    let ledger = Ledger::open(settings, None, Default::default()).unwrap();
    let now = SystemTime::now();
    let aged = |id: &str, days: u64| {
        let mut r = openai_chat(id);
        r.input_messages = Some(
            serde_json::json!([{"role":"user","parts":[{"type":"text","content":format!("content-of-{id}")}]}]),
        );
        r.start = now - Duration::from_secs(days * 86_400);
        r
    };
    send(
        &ledger,
        vec![aged("fresh", 1), aged("month", 30), aged("year", 365)],
    );
    ledger.handle().check_blocking();
    assert!(ledger.handle().flush_blocking());
    assert_eq!(
        count(&path, "SELECT COUNT(*) FROM exchanges"),
        2,
        "the year-old row is gone"
    );
    assert_eq!(
        count(
            &path,
            "SELECT COUNT(*) FROM content c JOIN exchanges e ON e.id = c.exchange WHERE e.request_id = 'fresh'"
        ),
        1
    );
    assert_eq!(
        count(&path, "SELECT COUNT(*) FROM content"),
        1,
        "the month-old content is gone"
    );
    assert_eq!(
        count(&path, "SELECT SUM(requests) FROM daily"),
        3,
        "the rollup outlives rows"
    );
    assert_eq!(ledger.counters().ledger.rows_evicted.get(), 1);
    assert_eq!(ledger.counters().ledger.content_evicted.get(), 2);
    assert!(!contains(&file_bytes(&path), "content-of-year"));
}

// Found in review: a row-id watermark skipped a short exchange committed before a long one
// that started earlier, so its content outlived the retention while veil ran.
#[test]
fn content_retention_reaches_rows_committed_out_of_start_order() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let mut settings = LedgerSettings::new(path.clone());
    settings.check_every = Duration::from_secs(3600);
    settings.content_retention = Duration::from_secs(10 * 86_400);
    let ledger = Ledger::open(settings, None, Default::default()).unwrap();
    let now = SystemTime::now();
    let aged = |id: &str, age: Duration| {
        let mut r = openai_chat(id);
        r.start = now - age;
        r
    };
    // The short one commits first (lower id) but started later: just inside the retention.
    let day = Duration::from_secs(86_400);
    send(
        &ledger,
        vec![aged("short", 10 * day - Duration::from_secs(2))],
    );
    send(&ledger, vec![aged("long", 11 * day)]);
    ledger.handle().check_blocking();
    assert!(ledger.handle().flush_blocking());
    assert_eq!(
        count(&path, "SELECT COUNT(*) FROM content"),
        1,
        "only the long one has aged out"
    );
    std::thread::sleep(Duration::from_secs(3));
    ledger.handle().check_blocking();
    assert!(ledger.handle().flush_blocking());
    assert_eq!(
        count(&path, "SELECT COUNT(*) FROM content"),
        0,
        "the short one ages out too"
    );
}

#[test]
fn max_size_evicts_the_oldest_content_first() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let mut settings = LedgerSettings::new(path.clone());
    settings.check_every = Duration::from_secs(3600);
    // The empty schema is about 15 pages of 16 KiB; 200 content rows of 4 KB do not fit.
    settings.max_size = 512 * 1024;
    let ledger = Ledger::open(settings, None, Default::default()).unwrap();
    let big = "y".repeat(4000);
    let records = (0..200)
        .map(|i| {
            let mut r = openai_chat("x");
            r.request_id = format!("r{i:03}");
            r.start = SystemTime::now() - Duration::from_secs(1000 - i);
            r.input_messages =
                Some(serde_json::json!([{"role":"user","parts":[{"type":"text","content":big}]}]));
            r
        })
        .collect();
    send(&ledger, records);
    ledger.handle().check_blocking();
    assert!(ledger.handle().flush_blocking());
    assert!(ledger.counters().ledger.bytes.get() <= 512 * 1024);
    let kept = count(&path, "SELECT COUNT(*) FROM content");
    assert!(kept > 0 && kept < 200, "{kept} content rows kept");
    // The newest content is what stays.
    assert_eq!(
        count(
            &path,
            "SELECT COUNT(*) FROM content c JOIN exchanges e ON e.id = c.exchange WHERE e.request_id = 'r199'"
        ),
        1
    );
    assert_eq!(
        count(&path, "SELECT COUNT(*) FROM exchanges"),
        200,
        "metadata rows stay while content suffices"
    );
}

#[test]
fn a_corrupt_file_is_moved_aside_and_a_newer_or_foreign_one_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    std::fs::write(&path, vec![0x5a; 64 * 1024]).unwrap();
    let (_conn, aside) = schema::open_writer(&path).unwrap();
    let aside = aside.expect("moved aside");
    assert_eq!(
        std::fs::read(&aside).unwrap(),
        vec![0x5a; 64 * 1024],
        "kept, not truncated"
    );
    drop(_conn);

    let newer = dir.path().join("newer.db");
    {
        let c = rusqlite::Connection::open(&newer).unwrap();
        c.pragma_update(None, "application_id", schema::APPLICATION_ID)
            .unwrap();
        c.pragma_update(None, "user_version", 99).unwrap();
    }
    let e = schema::open_writer(&newer).err().unwrap();
    assert!(e.to_string().contains("schema version 99"), "{e}");
    let foreign = dir.path().join("foreign.db");
    {
        let c = rusqlite::Connection::open(&foreign).unwrap();
        c.pragma_update(None, "application_id", 42).unwrap();
        c.execute_batch("CREATE TABLE t (x)").unwrap();
    }
    let e = schema::open_writer(&foreign).err().unwrap();
    assert!(e.to_string().contains("not a veil ledger"), "{e}");
    let e = schema::open_writer(dir.path()).err().unwrap();
    assert!(e.to_string().contains("is a directory"), "{e}");
}

#[test]
fn a_failed_write_drops_counts_and_degrades_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let mut settings = LedgerSettings::new(path.clone());
    settings.check_every = Duration::from_secs(3600);
    let health = std::sync::Arc::new(crate::health::Health::new(Default::default()));
    let ledger = Ledger::open(settings, Some(health.clone()), Default::default()).unwrap();
    send(&ledger, vec![openai_chat("r1")]);
    // Another connection holds the write lock past the busy timeout: the batch fails.
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    ledger.handle().send_blocking(
        vec![openai_chat("r2")],
        Some(Box::new(move |ok| tx.send(ok).unwrap())),
    );
    assert!(
        !rx.recv_timeout(Duration::from_secs(30)).unwrap(),
        "reported dropped"
    );
    assert_eq!(ledger.counters().ledger.dropped.get(), 1);
    assert!(health.is_degraded(crate::health::Part::Ledger));
    blocker.execute_batch("ROLLBACK").unwrap();
    ledger.handle().check_blocking();
    assert!(ledger.handle().flush_blocking());
    assert!(
        !health.is_degraded(crate::health::Part::Ledger),
        "the probe write recovers it"
    );
}

// See: veil#12 (review). A record still in the exporter's batch when its exchange was
// forgotten found no row to erase and landed later with its content and pseudonym.
#[test]
fn a_record_landing_after_its_forget_lands_already_erased() {
    let (_d, path, ledger) = ledger();
    send(&ledger, vec![openai_chat("early")]);
    let late_user = UserPseudonym::parse("u_cccccccccccccccc").unwrap();
    let before_erase = SystemTime::now() - Duration::from_secs(5);
    assert_eq!(
        erase::forget_ids(&path, &["late-id".into()]).unwrap().rows,
        0
    );
    assert_eq!(erase::forget_user(&path, &late_user).unwrap().rows, 0);
    let secret = "late-arriving-phrase-4409";
    let with = |id: &str, user: Option<&UserPseudonym>, start: SystemTime| {
        let mut r = openai_chat(id);
        r.input_messages =
            Some(serde_json::json!([{"role":"user","parts":[{"type":"text","content":secret}]}]));
        r.user_pseudonym = user.cloned();
        r.start = start;
        r.route = format!("/v1/threads/thread_{id}/runs");
        r.response_id = Some(format!("resp_{id}"));
        r.conversation_id = Some(format!("conv_{id}"));
        r
    };
    let after_erase = SystemTime::now() + Duration::from_secs(5);
    send(
        &ledger,
        vec![
            with("late-id", None, before_erase),
            with("late-of-user", Some(&late_user), before_erase),
            // The same user's exchange that started after the erase is new data: kept.
            with("new-of-user", Some(&late_user), after_erase),
        ],
    );
    assert_eq!(
        ledger.counters().ledger.rows.get(),
        4,
        "rows land for the bill"
    );
    let forgotten = |id: &str| {
        count(
            &path,
            &format!("SELECT forgotten FROM exchanges WHERE request_id = '{id}'"),
        )
    };
    assert_eq!(forgotten("late-id"), 1);
    assert_eq!(forgotten("late-of-user"), 1);
    assert_eq!(forgotten("new-of-user"), 0);
    // A forgotten one lands without the ids that could fetch it back; the new one keeps them.
    let ids = |id: &str| {
        count(
            &path,
            &format!(
                "SELECT (route IS NOT NULL) + (response_id IS NOT NULL)
                        + (conversation IS NOT NULL) FROM exchanges WHERE request_id = '{id}'"
            ),
        )
    };
    assert_eq!(
        (ids("late-id"), ids("late-of-user"), ids("new-of-user")),
        (0, 0, 3)
    );
    assert_eq!(
        count(
            &path,
            "SELECT COUNT(*) FROM content c JOIN exchanges e ON e.id = c.exchange
             WHERE e.forgotten = 1"
        ),
        0,
        "no content under a forgotten row"
    );
    assert_eq!(
        count(
            &path,
            "SELECT COUNT(*) FROM exchanges WHERE user = 'u_cccccccccccccccc'"
        ),
        1,
        "only the exchange after the erase keeps the pseudonym"
    );
    assert_eq!(count(&path, "SELECT SUM(requests) FROM daily"), 4);
}

#[test]
fn tombstones_are_swept_after_their_ttl() {
    let (_d, path, ledger) = ledger();
    send(&ledger, vec![openai_chat("r1")]);
    erase::forget_ids(&path, &["gone".into()]).unwrap();
    let old = row::iso_utc(SystemTime::now() - erase::TOMBSTONE_TTL - Duration::from_secs(60));
    {
        let c = rusqlite::Connection::open(&path).unwrap();
        c.execute(
            "INSERT INTO forgotten (kind, key, at) VALUES ('user', 'u_dddddddddddddddd', ?1)",
            [&old],
        )
        .unwrap();
    }
    assert_eq!(count(&path, "SELECT COUNT(*) FROM forgotten"), 2);
    ledger.handle().check_blocking();
    assert!(ledger.handle().flush_blocking());
    assert_eq!(
        count(
            &path,
            "SELECT COUNT(*) FROM forgotten WHERE key = 'gone' AND kind = 'request'"
        ),
        1,
        "a fresh tombstone stays"
    );
    assert_eq!(
        count(&path, "SELECT COUNT(*) FROM forgotten"),
        1,
        "the one past its TTL is swept, pseudonym and all"
    );
}

/// Undoes version 6 (the columns it adds), for a file made to look older.
const V6: &str = "ALTER TABLE exchanges DROP COLUMN host; ALTER TABLE exchanges DROP COLUMN route;
                  ALTER TABLE exchanges DROP COLUMN response_id;";

/// A row as every version since 1 could hold it: the columns version 1 requires, and `user`.
fn insert_old_row(c: &rusqlite::Connection, request_id: &str, user: Option<&str>) {
    c.execute(
        "INSERT INTO exchanges (request_id, start, provider, operation, user, outcome, stream,
         duration_us, request_bytes, response_bytes, redactions_input, redactions_output,
         rules_digest) VALUES (?1, '2026-11-01T00:00:00.000000Z', 'openai', 'chat', ?2, 'ok', 0,
         1, 0, 0, 0, 0, 'd')",
        rusqlite::params![request_id, user],
    )
    .unwrap();
}

#[test]
fn a_version_1_ledger_is_upgraded_in_place_and_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    {
        let (c, _) = schema::open_writer(&path).unwrap();
        // Back to what version 1 wrote: no tombstone table.
        c.execute_batch(&format!(
            "DROP TABLE forgotten; DROP TABLE exchange_users; DROP TABLE feedback; {V6}
                 PRAGMA user_version = 1;"
        ))
        .unwrap();
        insert_old_row(&c, "v1-row", None);
    }
    // An erase never migrates: on version 1 it erases without a tombstone.
    assert_eq!(erase::forget_ids(&path, &["nope".into()]).unwrap().rows, 0);
    let (c, _) = schema::open_writer(&path).unwrap();
    let v: i64 = c
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, schema::SCHEMA_VERSION);
    drop(c);
    assert_eq!(
        count(
            &path,
            "SELECT COUNT(*) FROM exchanges WHERE request_id = 'v1-row'"
        ),
        1
    );
    assert_eq!(count(&path, "SELECT COUNT(*) FROM forgotten"), 0);
}

// Found while testing veil#12 end to end: refusing a newer or foreign database still switched
// it to WAL (two header bytes) and narrowed its mode to 0600; "never touched" now holds.
#[test]
fn a_refused_newer_or_foreign_database_keeps_every_byte_and_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    for (name, app, version) in [
        (
            "newer.db",
            schema::APPLICATION_ID,
            schema::SCHEMA_VERSION + 1,
        ),
        ("foreign.db", 42, 0),
    ] {
        let path = dir.path().join(name);
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.pragma_update(None, "application_id", app).unwrap();
            c.pragma_update(None, "user_version", version).unwrap();
            c.execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);")
                .unwrap();
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let before = std::fs::read(&path).unwrap();
        assert!(schema::open_writer(&path).is_err(), "{name}");
        assert_eq!(
            std::fs::read(&path).unwrap(),
            before,
            "{name}: bytes changed"
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644, "{name}: mode changed");
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        assert!(
            !std::path::Path::new(&wal).exists(),
            "{name}: a WAL appeared"
        );
    }
}

// Found while testing veil#12 end to end: under `audit = "required"` a degraded ledger refuses
// every request, so no batch comes to show the cause is gone; the probe ran only with the
// bounds check (every minute), so traffic stayed refused up to a minute after the disk had
// room again. A degraded ledger now probes every PROBE_EVERY, with no traffic at all.
#[test]
fn a_degraded_ledger_recovers_on_its_own_within_seconds_without_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let mut settings = LedgerSettings::new(path.clone());
    settings.check_every = Duration::from_secs(3600);
    let health = std::sync::Arc::new(crate::health::Health::new(Default::default()));
    let ledger = Ledger::open(settings, Some(health.clone()), Default::default()).unwrap();
    let blocker = rusqlite::Connection::open(&path).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    ledger.handle().send_blocking(vec![openai_chat("r1")], None);
    assert!(ledger.handle().flush_blocking());
    assert!(health.is_degraded(crate::health::Part::Ledger));
    blocker.execute_batch("ROLLBACK").unwrap();
    let released = std::time::Instant::now();
    while health.is_degraded(crate::health::Part::Ledger) {
        // A probe meeting the lock waits up to the busy timeout (5 s), then the next one.
        assert!(
            released.elapsed() < super::PROBE_EVERY * 4 + schema::BUSY_TIMEOUT,
            "not recovered {:?} after the cause went away",
            released.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn show_reads_one_exchange_whole_and_nothing_for_an_unknown_id() {
    let (_d, path, ledger) = ledger();
    send(
        &ledger,
        vec![
            openai_chat("r1"),
            upstream_error("r3"),
            anthropic_stream("r2"),
        ],
    );
    let conn = schema::open_read_only(&path).unwrap();
    let shown = show::exchange(&conn, "r1")
        .unwrap()
        .expect("r1 is in the ledger");
    assert_eq!(shown.get("request_id"), Some(&serde_json::json!("r1")));
    assert_eq!(shown.get("cost_nusd"), Some(&serde_json::json!(19_200)));
    assert_eq!(
        shown.get("conversation"),
        Some(&serde_json::json!("conv_5j66"))
    );
    // JSON the ledger wrote is read back as JSON, not as a quoted string.
    assert_eq!(
        shown.get("redactions"),
        Some(&serde_json::json!({"EMAIL": 2, "PERSON": 1}))
    );
    assert_eq!(
        shown.get("id"),
        None,
        "the ledger's own row id is not the exchange's"
    );
    let names: Vec<&str> = shown.content.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["input_messages", "output_messages"]);
    assert_eq!(
        shown.content[1].1[0]["parts"][0]["content"],
        "Link sent to [EMAIL_1]."
    );
    // The error exchange has a row and no content.
    let shown = show::exchange(&conn, "r3").unwrap().unwrap();
    assert!(shown.content.is_empty());
    assert_eq!(shown.get("request_id"), Some(&serde_json::json!("r3")));
    assert!(show::exchange(&conn, "r9").unwrap().is_none());
    assert!(show::exchange(&conn, "r1' OR '1'='1").unwrap().is_none());
}

/// The writer's WAL hook turns SQLite's automatic checkpoint off; the checkpointer thread must
/// take over, or the WAL would grow without bound and the database file never would.
#[test]
fn the_wal_is_checkpointed_into_the_database_while_the_writer_writes() {
    let (_d, path, ledger) = ledger();
    let page = "p".repeat(20_000);
    // 300 rows of ~20 KB content: ~6 MB of WAL, past the 4 MB (1,000 pages of 4 KiB) threshold.
    for b in 0..6 {
        let batch = (0..50)
            .map(|i| {
                let mut r = openai_chat(&format!("r{b}-{i}"));
                r.input_messages = Some(serde_json::json!([{"role":"user","parts":[
                    {"type":"text","content":page}]}]));
                r
            })
            .collect();
        send(&ledger, batch);
    }
    let file = || std::fs::metadata(&path).map_or(0, |m| m.len());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while file() < 4_000_000 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        file() >= 4_000_000,
        "the database file holds the checkpointed pages ({} bytes)",
        file()
    );
    assert_eq!(count(&path, "SELECT COUNT(*) FROM exchanges"), 300);
}

#[test]
fn several_finish_reasons_are_joined_with_commas() {
    let (_d, path, ledger) = ledger();
    let mut r = openai_chat("r1");
    r.finish_reasons = vec!["stop".into(), "length".into(), "tool_calls".into()];
    let mut one = openai_chat("r2");
    one.finish_reasons = vec!["stop".into()];
    send(&ledger, vec![r, one, upstream_error("r3")]);
    let conn = schema::open_read_only(&path).unwrap();
    let reasons: Vec<Option<String>> = conn
        .prepare("SELECT finish_reasons FROM exchanges ORDER BY request_id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        reasons,
        [
            Some("stop,length,tool_calls".to_string()),
            Some("stop".to_string()),
            None
        ]
    );
}

/// A record whose winning identity is `bob` (the header) and whose body named `alice`.
fn named_twice(id: &str, secret: &str) -> crate::record::Record {
    let mut r = openai_chat(id);
    r.request_id = id.to_string();
    r.input_messages =
        Some(serde_json::json!([{"role":"user","parts":[{"type":"text","content":secret}]}]));
    let bob = UserPseudonym::parse("u_b0b0b0b0b0b0b0b0").unwrap();
    let alice = UserPseudonym::parse("u_a11ce0a11ce0a11c").unwrap();
    r.user_pseudonym = Some(bob.clone());
    r.user_pseudonyms = vec![bob, alice];
    r
}

// See: veil#13
#[test]
fn forget_by_user_finds_a_user_named_by_a_source_that_did_not_win() {
    for who in ["u_a11ce0a11ce0a11c", "u_b0b0b0b0b0b0b0b0"] {
        let (_d, path, ledger) = ledger();
        send(
            &ledger,
            vec![
                named_twice("both", "walrus-phrase-31"),
                openai_chat("other"),
            ],
        );
        // Only the source that did not win (alice) has a row: the winner is exchanges.user.
        assert_eq!(count(&path, "SELECT COUNT(*) FROM exchange_users"), 1);
        let erased = erase::forget_user(&path, &UserPseudonym::parse(who).unwrap()).unwrap();
        assert_eq!(erased.request_ids, vec!["both".to_string()], "{who}");
        assert_eq!(
            erased.pseudonyms, 1,
            "the other source's pseudonym goes too"
        );
        // The pseudonym asked for stays only as the erase's tombstone (for late records,
        // swept after TOMBSTONE_TTL); the other one and the content leave every byte.
        let bytes = file_bytes(&path);
        let other = ["u_a11ce0a11ce0a11c", "u_b0b0b0b0b0b0b0b0"]
            .into_iter()
            .find(|p| *p != who)
            .unwrap();
        for gone in ["walrus-phrase-31", other] {
            assert!(!contains(&bytes, gone), "{gone} survives forgetting {who}");
        }
        assert_eq!(
            count(
                &path,
                &format!(
                    "SELECT (SELECT COUNT(*) FROM exchanges WHERE user = '{who}')
                          + (SELECT COUNT(*) FROM exchange_users WHERE user = '{who}')"
                )
            ),
            0
        );
        assert_eq!(
            count(&path, "SELECT COUNT(*) FROM exchange_users"),
            0,
            "no pseudonym of the forgotten exchange is left"
        );
        assert_eq!(
            count(
                &path,
                "SELECT COUNT(*) FROM exchanges WHERE user IS NOT NULL"
            ),
            1,
            "the other exchange keeps its user"
        );
    }
}

// See: veil#13
#[test]
fn a_record_naming_a_forgotten_user_in_a_source_that_did_not_win_lands_erased() {
    let (_d, path, ledger) = ledger();
    send(&ledger, vec![openai_chat("early")]);
    let alice = UserPseudonym::parse("u_a11ce0a11ce0a11c").unwrap();
    assert_eq!(erase::forget_user(&path, &alice).unwrap().rows, 0);
    let mut late = named_twice("late", "walrus-phrase-32");
    late.start = SystemTime::now() - Duration::from_secs(5);
    send(&ledger, vec![late]);
    assert_eq!(
        count(
            &path,
            "SELECT forgotten FROM exchanges WHERE request_id = 'late'"
        ),
        1
    );
    assert_eq!(
        count(
            &path,
            "SELECT COUNT(*) FROM exchanges WHERE request_id = 'late' AND user IS NULL"
        ),
        1,
        "the winning pseudonym (bob) is not kept either"
    );
    assert_eq!(
        count(
            &path,
            "SELECT COUNT(*) FROM exchange_users e JOIN exchanges x ON x.id = e.exchange WHERE x.request_id = 'late'"
        ),
        0
    );
    assert_eq!(
        count(
            &path,
            "SELECT COUNT(*) FROM content c JOIN exchanges e ON e.id = c.exchange WHERE e.request_id = 'late'"
        ),
        0
    );
}

#[test]
fn a_version_2_ledger_is_upgraded_in_place_and_still_finds_its_users() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    {
        let (c, _) = schema::open_writer(&path).unwrap();
        // Back to what version 2 wrote: no exchange_users, no feedback.
        c.execute_batch(&format!(
            "DROP TABLE exchange_users; DROP TABLE feedback; {V6} PRAGMA user_version = 2;"
        ))
        .unwrap();
        insert_old_row(&c, "v2-row", Some("u_2222222222222222"));
    }
    // An erase never migrates: on version 2 it finds users by `exchanges.user` only.
    let nobody = UserPseudonym::parse("u_9999999999999999").unwrap();
    assert_eq!(erase::forget_user(&path, &nobody).unwrap().rows, 0);
    let (c, _) = schema::open_writer(&path).unwrap();
    let v: i64 = c
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, schema::SCHEMA_VERSION);
    // Version 4's table came with the upgrade, empty.
    let feedback: i64 = c
        .query_row("SELECT count(*) FROM feedback", [], |r| r.get(0))
        .unwrap();
    assert_eq!(feedback, 0);
    drop(c);
    assert_eq!(
        count(&path, "SELECT COUNT(*) FROM exchange_users"),
        0,
        "a version 2 row's one pseudonym is its winner, already in exchanges.user"
    );
    let user = UserPseudonym::parse("u_2222222222222222").unwrap();
    assert_eq!(
        erase::forget_user(&path, &user).unwrap().request_ids,
        vec!["v2-row".to_string()]
    );
    assert_eq!(count(&path, "SELECT COUNT(*) FROM exchange_users"), 0);
}

/// A feedback row about `request_id`, given at `at`, with a comment of `comment_len` bytes.
fn feedback_at(request_id: &str, at: SystemTime, comment_len: usize) -> feedback::FeedbackRow {
    feedback::FeedbackRow {
        id: format!("fb_{request_id}"),
        request_id: request_id.to_string(),
        scope: "exchange",
        task: None,
        at: row::iso_utc(at),
        name: "user_rating".to_string(),
        score: Some(1.0),
        label: None,
        comment: Some("c".repeat(comment_len)),
        user: None,
    }
}

fn feedback_ids(path: &std::path::Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut q = conn
        .prepare("SELECT request_id FROM feedback ORDER BY request_id")
        .unwrap();
    q.query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

// See: veil#14. Feedback is about the rows it rates: it ages out with them.
#[test]
fn retention_deletes_feedback_as_old_as_the_rows_it_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let mut settings = LedgerSettings::new(path.clone());
    settings.check_every = Duration::from_secs(3600);
    settings.retention = Duration::from_secs(100 * 86_400);
    let ledger = Ledger::open(settings, None, Default::default()).unwrap();
    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let mut fresh = openai_chat("fresh");
    fresh.start = now - day;
    let mut old = openai_chat("old");
    old.start = now - 365 * day;
    send(&ledger, vec![fresh, old]);
    for row in [
        feedback_at("fresh", now, 10),
        feedback_at("old", now - 365 * day + Duration::from_secs(3600), 10),
    ] {
        ledger.handle().try_send_feedback(row).unwrap();
    }
    assert!(ledger.handle().flush_blocking());
    assert_eq!(feedback_ids(&path), ["fresh", "old"]);
    ledger.handle().check_blocking();
    assert!(ledger.handle().flush_blocking());
    assert_eq!(count(&path, "SELECT COUNT(*) FROM exchanges"), 1);
    assert_eq!(
        feedback_ids(&path),
        ["fresh"],
        "the year-old feedback is gone"
    );
}

// See: veil#14. Past `ledger_max_size` the oldest rows go, and the feedback about them.
#[test]
fn max_size_eviction_deletes_the_feedback_of_the_evicted_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let mut settings = LedgerSettings::new(path.clone());
    settings.check_every = Duration::from_secs(3600);
    settings.max_size = 256 * 1024;
    let ledger = Ledger::open(settings, None, Default::default()).unwrap();
    let now = SystemTime::now();
    let records: Vec<_> = (0..200u64)
        .map(|i| {
            let mut r = openai_chat("x");
            r.request_id = format!("r{i:03}");
            r.start = now - Duration::from_secs(1000 - i);
            r
        })
        .collect();
    send(&ledger, records);
    // The feedback alone is about 800 KB: more than the bound, so rows must go.
    for i in 0..200u64 {
        let at = now - Duration::from_secs(1000 - i) + Duration::from_millis(10);
        let row = feedback_at(&format!("r{i:03}"), at, 4000);
        ledger.handle().try_send_feedback(row).unwrap();
        // The writer's queue is bounded: let it drain now and then.
        if i % 32 == 31 {
            assert!(ledger.handle().flush_blocking());
        }
    }
    assert!(ledger.handle().flush_blocking());
    assert_eq!(feedback_ids(&path).len(), 200);
    ledger.handle().check_blocking();
    assert!(ledger.handle().flush_blocking());
    assert!(ledger.counters().ledger.bytes.get() <= 512 * 1024);
    let rows = count(&path, "SELECT COUNT(*) FROM exchanges");
    assert!(rows > 0 && rows < 200, "{rows} rows kept");
    let kept = feedback_ids(&path);
    assert!(!kept.is_empty() && kept.len() < 200, "{} kept", kept.len());
    assert_eq!(
        kept.last().map(String::as_str),
        Some("r199"),
        "the newest stays"
    );
    assert_eq!(
        count(
            &path,
            "SELECT COUNT(*) FROM feedback f WHERE NOT EXISTS
             (SELECT 1 FROM exchanges e WHERE e.request_id = f.request_id)"
        ),
        0,
        "no feedback outlives the row it rates"
    );
}

#[test]
fn a_new_ledger_has_16_kib_pages_and_no_user_index_and_a_version_4_one_loses_its_index() {
    let has_user_index = |c: &rusqlite::Connection| -> i64 {
        c.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE name = 'exchanges_user'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ledger.db");
    let (c, _) = schema::open_writer(&path).unwrap();
    let page: i64 = c
        .pragma_query_value(None, "page_size", |r| r.get(0))
        .unwrap();
    assert_eq!(page, schema::PAGE_SIZE);
    assert_eq!(has_user_index(&c), 0);
    drop(c);

    // A version 4 file, as veil wrote it before: 4 KiB pages, the index on `user`.
    let old = dir.path().join("v4.db");
    {
        let c = rusqlite::Connection::open(&old).unwrap();
        c.execute_batch(
            "PRAGMA page_size = 4096; PRAGMA journal_mode = WAL;
             CREATE TABLE exchanges (id INTEGER PRIMARY KEY AUTOINCREMENT, user TEXT);
             CREATE INDEX exchanges_user ON exchanges (user) WHERE user IS NOT NULL;",
        )
        .unwrap();
        c.pragma_update(None, "application_id", schema::APPLICATION_ID)
            .unwrap();
        c.pragma_update(None, "user_version", 4).unwrap();
    }
    let (c, _) = schema::open_writer(&old).unwrap();
    let v: i64 = c
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, schema::SCHEMA_VERSION);
    assert_eq!(has_user_index(&c), 0, "version 5 drops the index");
    let page: i64 = c
        .pragma_query_value(None, "page_size", |r| r.get(0))
        .unwrap();
    assert_eq!(page, 4096, "an existing file keeps its page size");
}

/// `forget --user` scans ahead of its write lock, then catches up inside it: a row of the user
/// committed between the two is erased too, and a row another erase cleared in between is not
/// counted again.
#[test]
fn forget_by_user_catches_rows_committed_between_its_scan_and_its_lock() {
    let (_d, path, ledger) = ledger();
    let alice = UserPseudonym::parse("u_aaaaaaaaaaaaaaaa").unwrap();
    let of_alice = |id: &str| {
        let mut r = openai_chat("x");
        r.request_id = id.into();
        r.user_pseudonym = Some(alice.clone());
        r
    };
    send(&ledger, vec![of_alice("early-1"), of_alice("early-2")]);
    let conn = schema::open_eraser(&path).unwrap().unwrap();
    let scan = erase::user_scan(&conn, &alice).unwrap();
    // Between the scan and the lock: one new row, and one scanned row erased by id.
    send(&ledger, vec![of_alice("late")]);
    assert_eq!(
        erase::forget_ids(&path, &["early-2".into()]).unwrap().rows,
        1
    );
    let tx = conn.unchecked_transaction().unwrap();
    let mut found: Vec<String> = erase::user_rows(&tx, &alice, scan)
        .unwrap()
        .into_iter()
        .map(|(_, id)| id)
        .collect();
    found.sort();
    assert_eq!(found, ["early-1", "late"]);
    drop(tx);
    drop(conn);
    // And the whole erase, end to end.
    let erased = erase::forget_user(&path, &alice).unwrap();
    assert_eq!(erased.rows, 2);
    assert_eq!(
        count(
            &path,
            "SELECT COUNT(*) FROM exchanges WHERE user IS NOT NULL"
        ),
        0
    );
}

/// Checkpoint starvation: a writer that commits group after group while the checkpointer
/// copies the last one never found the WAL fully checkpointed at the start of a transaction,
/// so SQLite never rewound it and it grew with everything written (168 MB for 100,000
/// exchanges in `benches/ledger.rs`). Waiting for the checkpoint the commit asked for keeps
/// it near one group's size (~9 MB here). The batches are queued as fast as the writer
/// takes them, so it commits back to back, as under a burst.
#[test]
fn the_wal_stays_near_one_group_under_sustained_writes() {
    let (_d, path, ledger) = ledger();
    let handle = ledger.handle();
    let filler = "a redacted answer of some length, ".repeat(60);
    let mut ids = 0;
    let mut batch = || {
        (0..512)
            .map(|_| {
                ids += 1;
                let mut r = openai_chat(&format!("r{ids}"));
                r.output_messages = Some(serde_json::json!([
                    {"role": "assistant", "parts": [{"type": "text", "content": filler}]}
                ]));
                r
            })
            .collect::<Vec<_>>()
    };
    // 48 batches of 512 records, ~2.3 KB each in the ledger: ~55 MB written.
    let batches: Vec<_> = (0..48).map(|_| batch()).collect();
    for b in batches {
        handle.send_blocking(b, None);
    }
    assert!(handle.flush_blocking());
    assert_eq!(ledger.counters().ledger.rows.get(), 48 * 512);
    let written =
        std::fs::metadata(&path).unwrap().len() + std::fs::metadata(wal_path(&path)).unwrap().len();
    let wal = std::fs::metadata(wal_path(&path)).unwrap().len();
    assert!(
        wal < 32 << 20,
        "the WAL is {wal} bytes after {written} bytes of database and WAL: it was not rewound"
    );
}

fn wal_path(path: &std::path::Path) -> std::path::PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("-wal");
    p.into()
}

#[test]
fn a_version_5_ledger_gains_host_route_and_response_id_and_new_rows_fill_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join(FILE_NAME);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    {
        let (c, _) = schema::open_writer(&path).unwrap();
        c.execute_batch(&format!("{V6} PRAGMA user_version = 5;"))
            .unwrap();
        insert_old_row(&c, "v5-row", None);
    }
    let mut settings = LedgerSettings::new(path.clone());
    settings.nice = 0;
    let ledger = Ledger::open(settings, None, Default::default()).unwrap();
    send(&ledger, vec![openai_chat("r1")]);
    assert!(ledger.shutdown(Duration::from_secs(10)));
    let conn = schema::open_read_only(&path).unwrap();
    let v: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .unwrap();
    assert_eq!(v, schema::SCHEMA_VERSION);
    let row = |id: &str| -> (Option<String>, Option<String>, Option<String>) {
        conn.query_row(
            "SELECT host, route, response_id FROM exchanges WHERE request_id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
    };
    assert_eq!(
        row("v5-row"),
        (None, None, None),
        "an older row keeps NULLs"
    );
    let r1 = openai_chat("r1");
    assert_eq!(
        row("r1"),
        (Some(r1.server_address), Some(r1.route), r1.response_id)
    );
    assert!(row("r1").2.is_some(), "the sample has a response id");
}
