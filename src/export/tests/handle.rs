//! The queue and what enters it: records, audit events, back-pressure, and the ledger without an endpoint ([`super::super::handle`]).

use super::*;

#[tokio::test]
async fn audit_events_are_log_records() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let exporter = Exporter::start(
        settings(dir.path(), Some(&rx.endpoint()), &[]),
        Arc::default(),
    )
    .unwrap();
    exporter
        .handle()
        .try_send_audit(AuditEvent {
            kind: "forget".into(),
            request_id: "0193a1b2-0000-7000-8000-000000000001".into(),
            time: std::time::SystemTime::now(),
            actor: "admin-api".into(),
            reason: Some("GDPR art. 17".into()),
            user_pseudonym: Some("u_x".into()),
        })
        .unwrap();
    let metrics = exporter.counters().clone();
    exporter.shutdown(Duration::from_secs(5)).await;
    let logs = rx.logs();
    assert_eq!(logs.len(), 1);
    let a = attrs(&logs[0].attributes);
    assert_eq!(logs[0].event_name, "veil.audit.forget");
    assert_eq!(
        testing::s(&a, "veil.request.id").as_deref(),
        Some("0193a1b2-0000-7000-8000-000000000001")
    );
    assert_eq!(
        testing::s(&a, "veil.audit.actor").as_deref(),
        Some("admin-api")
    );
    assert_eq!(
        testing::s(&a, "veil.audit.reason").as_deref(),
        Some("GDPR art. 17")
    );
    assert_eq!(testing::s(&a, "user.id").as_deref(), Some("u_x"));
    assert!(rx.spans().is_empty());
    assert_eq!(metrics.export.audit_events.get(), 1);
}

#[tokio::test]
async fn try_send_never_waits_and_returns_the_record_when_full() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), None, &[]);
    s.queue_capacity = 2;
    let exporter = Exporter::start(s, Arc::default()).unwrap();
    let h = exporter.handle();
    // Current-thread runtime: the batcher cannot run until this task yields.
    h.try_send(testing::base_record("q1")).unwrap();
    h.try_send(testing::base_record("q2")).unwrap();
    let err = h.try_send(testing::base_record("q3")).unwrap_err();
    assert!(err.is_full());
    assert_eq!(err.into_inner().request_id, "q3");
    assert!(
        Arc::ptr_eq(h.counters(), exporter.counters()),
        "the handle counts in the exporter's registry"
    );
    exporter.shutdown(Duration::from_secs(5)).await;
    let err = h.try_send(testing::base_record("q4")).unwrap_err();
    assert!(err.is_closed());
}

// See: veil#10. Under load, audit = "required" once dropped exchanges already answered 200 at
// the pipeline → exporter hand-off (1,534 in one 8 s run): the pipeline used `try_send` there
// too. `send_blocking` waits for room; only a shut-down exporter refuses.
#[test]
fn send_blocking_waits_for_room_instead_of_dropping() {
    let (handle, mut rx) = ExporterHandle::for_tests(1, Arc::default());
    let next = |rx: &mut crate::export::TestQueue| rx.next_record(Duration::from_secs(5));
    handle
        .try_send(testing::openai_chat("r-1"))
        .expect("room for one");
    assert!(
        handle.try_send(testing::openai_chat("r-2")).is_err(),
        "best-effort would drop the second"
    );
    let waiting = {
        let handle = handle.clone();
        std::thread::spawn(move || handle.send_blocking(testing::openai_chat("r-2"), None))
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(!waiting.is_finished(), "waits while the queue is full");
    assert_eq!(next(&mut rx).as_deref(), Some("r-1"));
    waiting.join().unwrap().expect("sent once there was room");
    assert_eq!(next(&mut rx).as_deref(), Some("r-2"));
    // A sender waiting when the exporter shuts down is told so, not left waiting.
    handle.try_send(testing::openai_chat("r-3")).unwrap();
    let waiting = {
        let handle = handle.clone();
        std::thread::spawn(move || handle.send_blocking(testing::openai_chat("r-4"), None))
    };
    std::thread::sleep(Duration::from_millis(100));
    assert!(!waiting.is_finished(), "waits while the queue is full");
    rx.close();
    let err = waiting.join().unwrap().unwrap_err();
    assert!(err.is_closed());
    assert_eq!(err.into_inner().request_id, "r-4");
    assert!(
        handle
            .send_blocking(testing::openai_chat("r-5"), None)
            .unwrap_err()
            .is_closed()
    );
}

// See: veil#18. Each item sent wakes the batcher's thread when it sleeps; a pipeline worker's
// group of records goes as one item, yet the queue's bound still counts records.
#[test]
fn a_group_is_one_item_and_the_bound_counts_its_records() {
    let (handle, mut rx) = ExporterHandle::for_tests(20, Arc::default());
    let group = |ids: std::ops::Range<usize>| -> Vec<crate::export::Journaled> {
        ids.map(|i| (testing::openai_chat(&format!("g-{i:02}")), None))
            .collect()
    };
    handle.try_send_group(group(0..16)).unwrap();
    // 4 places left: the first 4 of the next group go, its last 6 come back, in order.
    let err = handle.try_send_group(group(16..26)).unwrap_err();
    assert!(err.is_full());
    let back: Vec<String> = err
        .into_inner()
        .into_iter()
        .map(|(r, _)| r.request_id)
        .collect();
    assert_eq!(
        back,
        (20..26).map(|i| format!("g-{i:02}")).collect::<Vec<_>>()
    );
    assert!(
        handle.try_send(testing::openai_chat("over")).is_err(),
        "20 records fill a queue of 20 places, though they are 2 items"
    );
    let got: Vec<String> = (0..20)
        .map_while(|_| rx.next_record(Duration::from_secs(5)))
        .collect();
    assert_eq!(
        got,
        (0..20).map(|i| format!("g-{i:02}")).collect::<Vec<_>>()
    );
    assert_eq!(rx.items, 2, "each group arrived as one item");
    // Received, the places are free again.
    handle.try_send_group(group(30..50)).unwrap();
}

// A waiting group larger than the whole bound goes in parts as room frees up, none lost.
#[test]
fn send_group_blocking_sends_a_group_larger_than_the_bound_in_parts() {
    let (handle, mut rx) = ExporterHandle::for_tests(3, Arc::default());
    let group: Vec<crate::export::Journaled> = (0..8)
        .map(|i| (testing::openai_chat(&format!("p-{i}")), None))
        .collect();
    let sender = std::thread::spawn(move || handle.send_group_blocking(group));
    let got: Vec<String> = (0..8)
        .map_while(|_| rx.next_record(Duration::from_secs(5)))
        .collect();
    sender.join().unwrap().expect("all sent");
    assert_eq!(got, (0..8).map(|i| format!("p-{i}")).collect::<Vec<_>>());
    assert!(
        rx.items >= 3,
        "8 records through 3 places take at least 3 items"
    );
}

#[tokio::test]
async fn no_endpoint_writes_the_otlp_json_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let s = settings(
        dir.path(),
        None,
        &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")],
    );
    export_all(s, records()).await;
    let today = ledger::utc_date(std::time::SystemTime::now());
    let traces = dir.path().join(format!("records/traces-{today}.jsonl"));
    let text = std::fs::read_to_string(&traces).unwrap();
    let mut spans = 0;
    for line in text.lines() {
        // The collector file exporter's format: one ExportTraceServiceRequest per line.
        let req: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest =
            serde_json::from_str(line).unwrap();
        spans += req.resource_spans[0].scope_spans[0].spans.len();
    }
    assert_eq!(spans, 5);
    assert!(
        dir.path()
            .join(format!("records/logs-{today}.jsonl"))
            .exists()
    );
    assert!(
        dir.path()
            .join(format!("records/metrics-{today}.jsonl"))
            .exists()
    );
    assert!(!dir.path().join("spool").exists());

    // `veil tail` renders one line per exchange.
    let mut f = tail::Follower::new(dir.path());
    let lines = f.poll().unwrap();
    assert_eq!(lines.len(), 5, "{lines:#?}");
    let openai = lines.iter().find(|l| l.contains("r-openai")).unwrap();
    for part in [
        "u_3f9a1c0e7b2d4a5c",
        "support",
        "gpt-4o-mini-2024-07-18",
        "52→19",
        "$0.000019",
        "1.422s",
        "complete",
    ] {
        assert!(openai.contains(part), "{part} missing in {openai}");
    }
    let err = lines.iter().find(|l| l.contains("r-error")).unwrap();
    assert!(err.contains("error:rate_limit_exceeded"), "{err}");
    // Nothing new: nothing printed; a new record: one line.
    assert!(f.poll().unwrap().is_empty());
    export_all(
        settings(dir.path(), None, &[]),
        vec![testing::base_record("later")],
    )
    .await;
    let more = f.poll().unwrap();
    assert_eq!(more.len(), 1);
    assert!(more[0].contains("later"));
}

// See: veil#10. The disk watch once counted only the recording queue: records waiting in the
// exporter's batch wrote MiBs it had not seen. They are counted from acceptance until they
// are handed on, and a refused record is never counted.
#[tokio::test]
async fn records_count_as_unwritten_bytes_until_handed_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(dir.path(), None, &[]);
    s.queue_capacity = 2;
    let exporter = Exporter::start(s, Arc::default()).unwrap();
    let h = exporter.handle();
    let (a, b) = (testing::openai_chat("u1"), testing::openai_chat("u2"));
    let expected = a.wire_bytes() + b.wire_bytes();
    assert!(expected > 0, "the fixture has bodies");
    // Current-thread runtime: the batcher cannot run until this task yields.
    h.try_send(a).unwrap();
    h.try_send(b).unwrap();
    assert!(
        h.try_send(testing::openai_chat("u3"))
            .unwrap_err()
            .is_full()
    );
    let metrics = exporter.counters().clone();
    assert_eq!(metrics.export.unwritten_bytes.get(), expected);
    exporter.shutdown(Duration::from_secs(5)).await;
    assert_eq!(metrics.export.unwritten_bytes.get(), 0);
}

#[tokio::test]
async fn only_an_exporter_that_builds_log_events_reads_content_trees() {
    let dir = tempfile::tempdir().unwrap();
    // Log events carry the content as a structured body: built for a collector and for the
    // records files, so the pipeline must keep the trees then.
    for s in [
        settings(dir.path(), Some("http://127.0.0.1:9"), &[]),
        settings(dir.path(), None, &[]),
    ] {
        let exporter = Exporter::start(s, Arc::default()).unwrap();
        assert!(exporter.handle().reads_content_trees());
        exporter.shutdown(Duration::from_millis(50)).await;
    }
    // The SQLite ledger alone (what `veil run` sets up without an endpoint) reads the text.
    let exporter = Exporter::start(
        settings(dir.path(), None, &[]).without_files(),
        Arc::default(),
    )
    .unwrap();
    assert!(!exporter.handle().reads_content_trees());
    exporter.shutdown(Duration::from_millis(50)).await;
}
