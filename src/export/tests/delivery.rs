//! Delivery: outages, rejections, the bounded spool, crashes, timeouts and `Retry-After` ([`super::super::deliver`]).

use super::*;

#[tokio::test]
async fn outage_loses_nothing_and_duplicates_nothing() {
    let mut rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), Some(&rx.endpoint()), &[]);
    s.batch_max = 4;
    let exporter = Exporter::start(s, Arc::default()).unwrap();
    let h = exporter.handle();
    let mut n = 0;
    let mut send = |count: usize| {
        for _ in 0..count {
            h.try_send(testing::base_record(&format!("req-{n:04}")))
                .unwrap();
            n += 1;
        }
    };
    // Healthy, then 503, then connections refused, then healthy again.
    send(10);
    assert!(wait_until(Duration::from_secs(10), || span_counts(&rx).len() == 10).await);
    rx.answer(503);
    send(10);
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(10);
    rx.stop();
    send(10);
    tokio::time::sleep(Duration::from_millis(300)).await;
    send(10);
    assert!(
        exporter.counters().export.spool_bytes.get() > 0,
        "nothing was spooled during the outage"
    );
    assert!(exporter.counters().export.export_failures.get() > 0);
    let spooled = exporter.counters().export.spool_batches_written.get();
    assert!(
        spooled > 0,
        "batches held back by the outage are counted spooled"
    );
    rx.answer(200);
    rx.restart().await;
    send(10);
    let done = wait_until(Duration::from_secs(20), || span_counts(&rx).len() == 60).await;
    let metrics = exporter.counters().clone();
    let report = exporter.shutdown(Duration::from_secs(10)).await;
    let counts = span_counts(&rx);
    assert!(done, "only {} of 60 arrived: {counts:?}", counts.len());
    for i in 0..60 {
        let id = format!("req-{i:04}");
        assert_eq!(counts.get(&id), Some(&1), "{id}: {counts:?}");
    }
    assert!(report.drained, "{report:?}");
    assert_eq!(metrics.export.spool_bytes.get(), 0);
    assert_eq!(metrics.export.spool_batches_dropped.get(), 0);
    assert_eq!(metrics.export.batches_rejected.get(), 0);
    // 503 answers were seen and not counted as delivered.
    assert!(rx.received().iter().any(|r| r.answered == 503));
}

#[tokio::test]
async fn non_retryable_answers_are_dropped_and_counted() {
    let rx = Receiver::start().await;
    rx.answer(400);
    let dir = tempfile::tempdir().unwrap();
    let metrics = {
        let exporter = Exporter::start(
            settings(dir.path(), Some(&rx.endpoint()), &[]),
            Arc::default(),
        )
        .unwrap();
        exporter
            .handle()
            .try_send(testing::base_record("bad"))
            .unwrap();
        let m = exporter.counters().clone();
        let report = exporter.shutdown(Duration::from_secs(5)).await;
        assert!(report.drained);
        m
    };
    // Each request was tried exactly once: never retried, never spooled.
    let traces: Vec<_> = rx
        .received()
        .into_iter()
        .filter(|r| r.path == "/v1/traces")
        .collect();
    assert_eq!(traces.len(), 1);
    assert!(
        metrics.export.batches_rejected.get() >= 2,
        "traces and logs rejected"
    );
    assert_eq!(metrics.export.spool_bytes.get(), 0);
}

#[tokio::test]
async fn spool_is_bounded_and_counts_what_it_drops() {
    let mut rx = Receiver::start().await;
    let endpoint = rx.endpoint();
    rx.stop();
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), Some(&endpoint), &[]);
    s.batch_max = 1;
    s.spool_max_bytes = 6_000;
    let exporter = Exporter::start(s.clone(), Arc::default()).unwrap();
    let h = exporter.handle();
    let metrics = exporter.counters().clone();
    for i in 0..40 {
        h.try_send(testing::base_record(&format!("b-{i:02}")))
            .unwrap();
        // One batch per record: give the batcher its 20 ms batch age now and then.
        if i % 8 == 7 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    let report = exporter.shutdown(Duration::from_millis(300)).await;
    assert!(!report.drained);
    assert!(
        metrics.export.spool_batches_dropped.get() > 0,
        "nothing dropped"
    );
    assert!(metrics.export.spool_bytes_dropped.get() > 0);
    let on_disk: u64 = std::fs::read_dir(dir.path().join("spool/traces"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(on_disk <= 6_000, "spool holds {on_disk} bytes");
    // The collector returns: what survived is the newest, delivered once, in order.
    rx.restart().await;
    let exporter = Exporter::start(s, Arc::default()).unwrap();
    let ok = wait_until(Duration::from_secs(10), || {
        span_counts(&rx).contains_key("b-39")
    })
    .await;
    let report = exporter.shutdown(Duration::from_secs(5)).await;
    assert!(ok && report.drained, "{report:?}");
    let counts = span_counts(&rx);
    assert!(
        !counts.contains_key("b-00"),
        "oldest should have been dropped"
    );
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    let order: Vec<String> = rx
        .spans()
        .iter()
        .map(|s| testing::s(&attrs(&s.attributes), "veil.request.id").unwrap())
        .collect();
    let mut sorted = order.clone();
    sorted.sort();
    assert_eq!(order, sorted, "replay out of order");
}

#[tokio::test]
async fn spooled_batches_survive_a_crash() {
    let mut rx = Receiver::start().await;
    let endpoint = rx.endpoint();
    rx.stop();
    let dir = tempfile::tempdir().unwrap();
    let s = settings(dir.path(), Some(&endpoint), &[]);
    let exporter = Exporter::start(s.clone(), Arc::default()).unwrap();
    for i in 0..20 {
        exporter
            .handle()
            .try_send(testing::base_record(&format!("c-{i:02}")))
            .unwrap();
    }
    // Wait until both the traces and the logs batches are spooled, then crash (no flush).
    let spool = dir.path().join("spool");
    let spooled = wait_until(Duration::from_secs(10), || {
        ["traces", "logs"].iter().all(|sig| {
            std::fs::read_dir(spool.join(sig))
                .map(|d| {
                    d.filter_map(Result::ok)
                        .any(|e| e.path().extension().is_some_and(|x| x == "batch"))
                })
                .unwrap_or(false)
        })
    })
    .await;
    assert!(spooled, "nothing reached the spool");
    drop(exporter);
    rx.restart().await;
    let exporter = Exporter::start(s, Arc::default()).unwrap();
    let ok = wait_until(Duration::from_secs(10), || span_counts(&rx).len() == 20).await;
    let report = exporter.shutdown(Duration::from_secs(5)).await;
    let counts = span_counts(&rx);
    assert!(ok, "{counts:?}");
    assert!(counts.values().all(|n| *n == 1), "{counts:?}");
    assert_eq!(rx.logs().len(), 20);
    assert!(report.drained);
}

#[tokio::test(start_paused = true)]
async fn a_hung_collector_times_out_and_the_batch_is_spooled() {
    let rx = Receiver::start().await;
    rx.hang(true);
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(
        dir.path(),
        Some(&rx.endpoint()),
        &[("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "5000")],
    );
    s.retry_initial = Duration::from_secs(1);
    s.retry_max = Duration::from_secs(2);
    let exporter = Exporter::start(s, Arc::default()).unwrap();
    let metrics = exporter.counters().clone();
    let t0 = tokio::time::Instant::now();
    exporter
        .handle()
        .try_send(testing::base_record("hung"))
        .unwrap();
    let failed = wait_until(Duration::from_secs(60), || {
        metrics.export.export_failures.get() >= 2 && metrics.export.spool_bytes.get() > 0
    })
    .await;
    assert!(failed, "no timeout seen");
    // The traces attempt waited its 5 s timeout (virtual time) before giving up.
    assert!(t0.elapsed() >= Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(rx.spans().is_empty());
    rx.hang(false);
    let ok = wait_until(Duration::from_secs(60), || span_counts(&rx).len() == 1).await;
    let report = exporter.shutdown(Duration::from_secs(30)).await;
    assert!(ok && report.drained, "{report:?}");
    assert_eq!(span_counts(&rx)["hung"], 1);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_honoured() {
    let rx = Receiver::start().await;
    rx.answer(429);
    rx.retry_after(Some("7"));
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), Some(&rx.endpoint()), &[]);
    s.retry_initial = Duration::from_millis(10);
    s.retry_max = Duration::from_secs(60);
    let exporter = Exporter::start(s, Arc::default()).unwrap();
    exporter
        .handle()
        .try_send(testing::base_record("ra"))
        .unwrap();
    let traces = |rx: &Receiver| -> Vec<testing::Received> {
        rx.received()
            .into_iter()
            .filter(|r| r.path == "/v1/traces")
            .collect()
    };
    assert!(wait_until(Duration::from_secs(5), || !traces(&rx).is_empty()).await);
    rx.answer(200);
    assert!(wait_until(Duration::from_secs(30), || span_counts(&rx).len() == 1).await);
    let got = traces(&rx);
    assert_eq!(got.len(), 2, "one refused attempt, one delivery");
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_secs(7) && gap < Duration::from_secs(8),
        "retried after {gap:?}, not after Retry-After: 7"
    );
    exporter.shutdown(Duration::from_secs(5)).await;
}

// A forget while veil runs: the erase goes through the exporter's own tasks, behind the
// records queued before it, while more records keep arriving; only the forgotten ones go.
#[tokio::test]
async fn an_erase_during_an_outage_removes_only_the_forgotten_and_loses_nothing_else() {
    use crate::export::erase::Targets;
    use crate::keys::UserPseudonym;
    const ALICE: &str = "u_00000000000a11ce";
    let mut rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), Some(&rx.endpoint()), &[]);
    s.batch_max = 4;
    let exporter = Exporter::start(s, Arc::default()).unwrap();
    let h = exporter.handle();
    let rec = |i: usize| {
        let mut r = testing::base_record(&format!("req-{i:04}"));
        if i % 10 == 7 && i < 40 {
            let p = UserPseudonym::parse(ALICE).unwrap();
            r.user_pseudonym = Some(p.clone());
            r.user_pseudonyms = vec![p];
        }
        r
    };
    // One delivered before the outage: the erase cannot reach it and says so.
    h.try_send(rec(0)).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || span_counts(&rx).len() == 1
            && !rx.logs().is_empty())
        .await
    );
    rx.stop();
    for i in 1..40 {
        h.try_send(rec(i)).unwrap();
    }
    // By id: 0 (delivered), every 5th; by user: 7, 17, 27, 37. The 40 sent meanwhile are
    // none of them, so whatever their order with the erase, every one must arrive.
    let ids: Vec<String> = (0..40).step_by(5).map(|i| format!("req-{i:04}")).collect();
    let more = {
        let h = h.clone();
        tokio::spawn(async move {
            for i in 40..80 {
                while h.try_send(rec(i)).is_err() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                if i % 8 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        })
    };
    let erased = tokio::time::timeout(
        Duration::from_secs(20),
        h.erase(Targets::new(ids.clone(), [ALICE.to_string()])),
    )
    .await
    .unwrap()
    .unwrap();
    more.await.unwrap();
    assert!(erased.errors.is_empty(), "{erased:?}");
    assert_eq!(erased.not_reached, ["req-0000"], "{erased:?}");
    // 7 ids by id (req-0005..0035) and 4 by user, each a span and a log record.
    assert_eq!(erased.spool_records, 2 * (7 + 4), "{erased:?}");
    assert!(erased.spool_files > 0);

    rx.restart().await;
    let gone: Vec<usize> = (5..40).step_by(5).chain([7, 17, 27, 37]).collect();
    let want = 80 - gone.len();
    let done = wait_until(Duration::from_secs(20), || span_counts(&rx).len() == want).await;
    let report = exporter.shutdown(Duration::from_secs(10)).await;
    let counts = span_counts(&rx);
    assert!(done, "{} of {want} arrived: {counts:?}", counts.len());
    for i in 0..80 {
        let id = format!("req-{i:04}");
        let expected = if gone.contains(&i) { None } else { Some(&1) };
        assert_eq!(counts.get(&id), expected, "{id}");
    }
    // The logs too: no forgotten exchange's log record arrived.
    for l in rx.logs() {
        let id = testing::s(&attrs(&l.attributes), "veil.request.id").unwrap();
        let i: usize = id.trim_start_matches("req-").parse().unwrap();
        assert!(!gone.contains(&i), "{id}'s log record arrived");
    }
    assert!(report.drained, "{report:?}");
}

// See: veil#13. A record still on a pipeline worker when its exchange (or its user) is
// forgotten reaches the exporter after the erase: it must not be exported after its own
// deletion.
#[tokio::test]
async fn a_record_that_arrives_after_its_forget_is_never_exported() {
    use crate::export::erase::Targets;
    use crate::keys::UserPseudonym;
    const BOB: &str = "u_0000000000000b0b";
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), Some(&rx.endpoint()), &[]);
    s.batch_max = 4;
    let exporter = Exporter::start(s, Arc::default()).unwrap();
    let h = exporter.handle();
    let erased = tokio::time::timeout(
        Duration::from_secs(20),
        h.erase(Targets::new(["req-late".to_string()], [BOB.to_string()])),
    )
    .await
    .unwrap()
    .unwrap();
    assert!(erased.errors.is_empty(), "{erased:?}");
    // Now the stragglers, and one that was never forgotten.
    h.try_send(testing::base_record("req-late")).unwrap();
    let mut bobs = testing::base_record("req-bob");
    bobs.user_pseudonyms = vec![UserPseudonym::parse(BOB).unwrap()];
    h.try_send(bobs).unwrap();
    h.try_send(testing::base_record("req-kept")).unwrap();
    let report = exporter.shutdown(Duration::from_secs(10)).await;
    assert!(report.drained, "{report:?}");
    let counts = span_counts(&rx);
    assert_eq!(counts.get("req-kept"), Some(&1), "{counts:?}");
    assert_eq!(counts.get("req-late"), None, "{counts:?}");
    assert_eq!(counts.get("req-bob"), None, "{counts:?}");
    for l in rx.logs() {
        let id = testing::s(&attrs(&l.attributes), "veil.request.id").unwrap_or_default();
        assert!(
            id != "req-late" && id != "req-bob",
            "{id}'s log record arrived"
        );
    }
}
