//! The feedback service over a real ledger and the built-in rules: what is stored (scrubbed),
//! what is refused, and what `forget` takes away.

use std::sync::Arc;

use rusqlite::Connection;

use super::*;
use crate::keys::{KeyId, Keyring, MasterKey, UserPseudonym};
use crate::ledger::testing::{contains, file_bytes, ledger, openai_chat, record};

const ID: &str = "0190a5e2-7c4d-7b3e-9f1a-2b3c4d5e6f70";
const OTHER: &str = "0190a5e2-7c4d-7b3e-9f1a-2b3c4d5e6f71";
const EMAIL: &str = "jane.doe@example.com";
const CARD: &str = "4111 1111 1111 1111";

fn rules() -> Arc<RulesHandle> {
    let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [42; 32]));
    Arc::new(RulesHandle::builtin_default("rules/default.toml".into(), &keys).unwrap())
}

/// A service over a fresh ledger holding `records`; the guard keeps the temp dir.
fn service(
    records: Vec<crate::record::Record>,
) -> (
    tempfile::TempDir,
    std::path::PathBuf,
    crate::ledger::Ledger,
    FeedbackService,
) {
    let (dir, path, ledger) = ledger();
    let handle = ledger.handle();
    handle.send_blocking(records, None);
    assert!(handle.flush_blocking());
    let svc = FeedbackService::new(
        rules(),
        Arc::new(Recent::default()),
        Some((handle, path.clone())),
        None,
        Access::Loopback,
    );
    (dir, path, ledger, svc)
}

fn post(svc: &FeedbackService, body: serde_json::Value) -> ApiAnswer {
    svc.handle(body.to_string().as_bytes())
}

/// A feedback row: request_id, scope, task, score, label, comment, user.
type Row = (
    String,
    String,
    Option<String>,
    Option<f64>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn rows(path: &std::path::Path) -> Vec<Row> {
    let conn = Connection::open(path).unwrap();
    let mut q = conn
        .prepare(
            "SELECT request_id, scope, task, score, label, comment, user FROM feedback ORDER BY at",
        )
        .unwrap();
    q.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
        ))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

#[test]
fn a_feedback_lands_in_the_ledger_with_the_exchanges_user_and_a_scrubbed_comment() {
    let (_dir, path, ledger, svc) = service(vec![record(ID)]);
    let a = post(
        &svc,
        serde_json::json!({"request_id": ID, "name": "user_rating", "score": -1,
            "label": "thumbs_down", "comment": format!("wrong, mail me at {EMAIL}, card {CARD}")}),
    );
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    let id = a.body["id"].as_str().unwrap();
    assert!(id.starts_with("fb_") && id.len() == 19, "{id}");
    assert!(ledger.handle().flush_blocking());
    let got = rows(&path);
    assert_eq!(got.len(), 1);
    let (rid, scope, task, score, label, comment, user) = got[0].clone();
    assert_eq!(rid, ID);
    assert_eq!(scope, "exchange");
    assert_eq!(task, None);
    assert_eq!(score, Some(-1.0));
    assert_eq!(label.as_deref(), Some("thumbs_down"));
    assert_eq!(user.as_deref(), Some("u_3f9a1c0e7b2d4a5c"));
    let comment = comment.unwrap();
    assert!(comment.starts_with("wrong, mail me at "), "{comment}");
    assert!(
        !comment.contains(EMAIL) && !comment.contains("4111"),
        "{comment}"
    );
    drop(ledger);
    let bytes = file_bytes(&path);
    assert!(!contains(&bytes, EMAIL) && !contains(&bytes, CARD));
}

#[test]
fn task_scope_names_the_trace_of_the_rated_exchange() {
    let (_dir, path, ledger, svc) = service(vec![openai_chat(ID)]);
    let a = post(
        &svc,
        serde_json::json!({"request_id": ID, "name": "task_done", "label": "ok", "scope": "task"}),
    );
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    assert!(ledger.handle().flush_blocking());
    let got = rows(&path);
    assert_eq!(got[0].1, "task");
    assert_eq!(
        got[0].2.as_deref(),
        Some("trace:4bf92f3577b34da6a3ce929d0e0e4736")
    );
}

#[test]
fn task_scope_for_an_exchange_of_no_task_is_refused_naming_scope() {
    let (_dir, _path, _ledger, svc) = service(vec![record(ID)]);
    let a = post(
        &svc,
        serde_json::json!({"request_id": ID, "name": "n", "score": 1, "scope": "task"}),
    );
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    assert_eq!(a.body["error"]["field"], "scope");
}

#[test]
fn an_unknown_request_id_is_404_and_writes_nothing() {
    let (_dir, path, ledger, svc) = service(vec![record(ID)]);
    let a = post(
        &svc,
        serde_json::json!({"request_id": OTHER, "name": "n", "score": 1}),
    );
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.body);
    assert_eq!(a.body["error"]["type"], "not_found");
    assert!(a.body["error"]["message"].as_str().unwrap().contains(OTHER));
    assert!(ledger.handle().flush_blocking());
    assert!(rows(&path).is_empty());
}

#[test]
fn an_exchange_still_on_its_way_is_found_in_the_recent_map() {
    let (_dir, path, ledger, svc) = service(Vec::new());
    let r = openai_chat(ID);
    svc.recent.insert(Rated::of(&r));
    let a = post(
        &svc,
        serde_json::json!({"request_id": ID, "name": "n", "score": 0.5}),
    );
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    assert!(ledger.handle().flush_blocking());
    assert_eq!(rows(&path)[0].6.as_deref(), Some("u_3f9a1c0e7b2d4a5c"));
}

#[test]
fn a_label_a_detector_matches_is_refused() {
    let (_dir, _path, _ledger, svc) = service(vec![record(ID)]);
    let a = post(
        &svc,
        serde_json::json!({"request_id": ID, "name": "n", "label": "4111-1111-1111-1111"}),
    );
    assert_eq!(a.status, StatusCode::BAD_REQUEST, "{}", a.body);
    assert_eq!(a.body["error"]["field"], "label");
    assert!(!a.body.to_string().contains("4111-1111"));
}

#[test]
fn forget_by_id_and_by_user_delete_the_feedback_rows() {
    let mut other = record(OTHER);
    other.user_pseudonym = Some(UserPseudonym::parse("u_00000000000000aa").unwrap());
    other.user_pseudonyms = vec![UserPseudonym::parse("u_00000000000000aa").unwrap()];
    let (_dir, path, ledger, svc) = service(vec![record(ID), other]);
    for id in [ID, ID, OTHER] {
        let a = post(
            &svc,
            serde_json::json!({"request_id": id, "name": "n", "score": 1}),
        );
        assert_eq!(a.status, StatusCode::ACCEPTED);
    }
    assert!(ledger.handle().flush_blocking());
    assert_eq!(rows(&path).len(), 3);
    let erased = crate::ledger::erase::forget_ids(&path, &[ID.to_string()]).unwrap();
    assert_eq!(erased.feedback, 2);
    assert_eq!(rows(&path).len(), 1);
    let user = UserPseudonym::parse("u_00000000000000aa").unwrap();
    let erased = crate::ledger::erase::forget_user(&path, &user).unwrap();
    assert_eq!(erased.feedback, 1);
    assert!(rows(&path).is_empty());
    // Forgotten: a new feedback about it is refused, and nothing lands.
    let a = post(
        &svc,
        serde_json::json!({"request_id": ID, "name": "n", "score": 1}),
    );
    assert_eq!(a.status, StatusCode::NOT_FOUND, "{}", a.body);
}

#[test]
fn a_feedback_queued_before_its_exchange_is_forgotten_is_not_written() {
    let (_dir, path, ledger, svc) = service(vec![record(ID)]);
    crate::ledger::erase::forget_ids(&path, &[ID.to_string()]).unwrap();
    // Past the service's own check (it refuses a forgotten id), straight to the writer.
    let row = crate::ledger::feedback::FeedbackRow {
        id: "fb_0000000000000001".into(),
        request_id: ID.into(),
        scope: "exchange",
        task: None,
        at: crate::ledger::row::iso_utc(SystemTime::now()),
        name: "n".into(),
        score: Some(1.0),
        label: None,
        comment: None,
        user: None,
    };
    svc.ledger
        .as_ref()
        .unwrap()
        .0
        .try_send_feedback(row)
        .unwrap();
    assert!(ledger.handle().flush_blocking());
    assert!(rows(&path).is_empty());
}

#[test]
fn beyond_loopback_a_token_is_required_and_compared() {
    let (_dir, _path, _ledger, mut svc) = service(vec![record(ID)]);
    svc.access = Access::Token {
        feedback: Some(Secret::new("fb-secret")),
        admin: Some(AdminToken::from_secret("admin-secret")),
    };
    assert!(svc.authorize(None).is_err());
    assert!(svc.authorize(Some("Bearer wrong")).is_err());
    assert!(svc.authorize(Some("Basic fb-secret")).is_err());
    assert!(svc.authorize(Some("Bearer fb-secret")).is_ok());
    assert!(svc.authorize(Some("bearer admin-secret")).is_ok());
    let e = svc.authorize(Some("Bearer wrong")).unwrap_err();
    assert_eq!(e.answer().status, StatusCode::UNAUTHORIZED);
    svc.access = Access::Token {
        feedback: None,
        admin: None,
    };
    let e = svc.authorize(Some("Bearer anything")).unwrap_err();
    assert!(e.to_string().contains("feedback_token"), "{e}");
}

#[test]
fn the_report_counts_rated_negative_and_the_mean_score() {
    let ids = [ID, OTHER, "0190a5e2-7c4d-7b3e-9f1a-2b3c4d5e6f72"];
    let (_dir, path, ledger, svc) = service(ids.iter().map(|i| record(i)).collect());
    for (id, body) in [
        (ids[0], serde_json::json!({"score": 1})),
        (ids[0], serde_json::json!({"label": "thumbs_down"})),
        (ids[1], serde_json::json!({"score": 0.5})),
    ] {
        let mut b = body;
        b["request_id"] = id.into();
        b["name"] = "n".into();
        assert_eq!(post(&svc, b).status, StatusCode::ACCEPTED);
    }
    assert!(ledger.handle().flush_blocking());
    let conn = crate::ledger::schema::open_read_only(&path).unwrap();
    let rep = crate::ledger::report::report(&conn, &[], &Default::default()).unwrap();
    assert_eq!(rep.total.requests, 3);
    assert_eq!(rep.total.rated, 2);
    assert!((rep.total.share_rated - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(rep.total.mean_score, Some(0.75));
    assert_eq!(rep.total.share_negative, Some(0.5));
    let cards = crate::ledger::cards::cards(&conn, &Default::default()).unwrap();
    assert_eq!(cards.len(), 1);
    assert!((cards[0].share_rated - 2.0 / 3.0).abs() < 1e-9);
    assert_eq!(cards[0].share_negative, Some(0.5));
}

#[test]
fn accepted_refused_and_unexported_feedback_is_counted_by_reason() {
    let (_dir, path, ledger, svc) = service(vec![record(ID)]);
    let counters = Arc::new(Counters::default());
    let mut svc = svc.with_counters(counters.clone());
    // The exporter is shut down: the feedback is still accepted (it is in the ledger), and
    // the lost OTLP event is counted.
    svc.exporter = Some(crate::export::ExporterHandle::shut_down());
    let c = &counters.feedback;
    let a = post(
        &svc,
        serde_json::json!({"request_id": ID, "name": "user_rating", "score": 1}),
    );
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    assert_eq!((c.accepted.get(), c.export_dropped.get()), (1, 1));
    let a = post(
        &svc,
        serde_json::json!({"request_id": OTHER, "name": "user_rating", "score": 1}),
    );
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    let a = post(
        &svc,
        serde_json::json!({"request_id": ID, "name": "user_rating", "score": "1"}),
    );
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = svc.handle(b"not json");
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    svc.access = Access::Token {
        feedback: Some(Secret::new("fb-secret")),
        admin: None,
    };
    assert!(svc.authorize(Some("Bearer wrong")).is_err());
    assert!(svc.authorize(Some("Bearer fb-secret")).is_ok());
    assert_eq!(
        (
            c.accepted.get(),
            c.refused_not_found.get(),
            c.refused_invalid.get(),
            c.refused_unauthorized.get(),
            c.refused_unavailable.get(),
            c.export_dropped.get(),
        ),
        (1, 1, 2, 1, 0, 1)
    );
    assert!(ledger.handle().flush_blocking());
    assert_eq!(rows(&path).len(), 1, "only the accepted one is stored");
}

/// A service whose ledger takes committed exchanges out of the service's [`Recent`] map, as
/// `veil run` wires them.
fn wired() -> (tempfile::TempDir, crate::ledger::Ledger, FeedbackService) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join(crate::ledger::FILE_NAME);
    let recent = Arc::new(Recent::default());
    let mut settings = crate::ledger::LedgerSettings::new(path.clone());
    settings.nice = 0;
    settings.recent = Some(recent.clone());
    let ledger = crate::ledger::Ledger::open(settings, None, Default::default()).unwrap();
    let svc = FeedbackService::new(
        rules(),
        recent,
        Some((ledger.handle(), path)),
        None,
        Access::Loopback,
    );
    (dir, ledger, svc)
}

#[test]
fn a_committed_exchange_leaves_the_map_and_its_row_rates_it_alike() {
    let (_dir, ledger, svc) = wired();
    let mut r = openai_chat(ID);
    r.route = "/openai/deployments/gpt-4o/chat/completions".into();
    r.server_address = "example-resource.openai.azure.com".into();
    svc.recent.insert(Rated::of(&r));
    let held = svc.recent.get(ID).unwrap();
    assert_eq!(held.response_id.as_deref(), Some("chatcmpl-9J3u"));
    let req = request::parse(
        serde_json::json!({"request_id": ID, "name": "n", "score": 1})
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    assert_eq!(svc.rated(&req, ID), Ok(held.clone()));

    ledger.handle().send_blocking(vec![r], None);
    assert!(ledger.handle().flush_blocking());
    assert!(svc.recent.is_empty(), "the commit took it out of the map");
    // From the row alone: the same scope key, task, response id and span ids.
    assert_eq!(svc.rated(&req, ID), Ok(held));
    let a = post(
        &svc,
        serde_json::json!({"request_id": ID, "name": "n", "score": 1}),
    );
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
}

#[test]
fn a_waiting_feedback_is_answered_by_the_row_a_commit_just_wrote() {
    let (_dir, ledger, svc) = wired();
    let svc = Arc::new(svc);
    // Issued just now, so it is waited for; its exchange never passes through the map (the
    // map missed it between the feedback's two looks), only through the ledger.
    let fresh = uuid::Uuid::now_v7().to_string();
    let body = serde_json::json!({"request_id": fresh, "name": "n", "score": 1});
    let s2 = svc.clone();
    let start = std::time::Instant::now();
    let t = std::thread::spawn(move || post(&s2, body));
    std::thread::sleep(Duration::from_millis(200));
    assert!(!t.is_finished(), "the feedback waits for its exchange");
    ledger
        .handle()
        .send_blocking(vec![openai_chat(&fresh)], None);
    assert!(ledger.handle().flush_blocking());
    // The next commit that takes an exchange out of the map wakes the waiter, which then
    // finds the row.
    let other = openai_chat(OTHER);
    svc.recent.insert(Rated::of(&other));
    ledger.handle().send_blocking(vec![other], None);
    let a = t.join().unwrap();
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.body);
    assert!(
        start.elapsed() < FRESH_WAIT,
        "answered at the commit, not at the wait's end: {:?}",
        start.elapsed()
    );
}

#[test]
fn the_pipelines_packing_holds_what_rated_of_says() {
    let traced = openai_chat(ID);
    let mut conversation = openai_chat(OTHER);
    conversation.trace_parent = None;
    conversation.conversation_id = Some("conv_42".into());
    let mut neither = openai_chat("0190a5e2-7c4d-7b3e-9f1a-2b3c4d5e6f72");
    neither.trace_parent = None;
    neither.conversation_id = None;
    neither.user_pseudonym = None;
    neither.response_id = None;
    let (by_record, by_rated) = (Recent::default(), Recent::default());
    for r in [&traced, &conversation, &neither] {
        by_record.insert_of(r);
        by_rated.insert(Rated::of(r));
        let got = by_record.get(&r.request_id).unwrap();
        assert_eq!(Some(&got), by_rated.get(&r.request_id).as_ref());
        assert_eq!(got.host.as_deref(), Some("api.openai.com"));
    }
    let task = |id: &str| by_record.get(id).unwrap().task;
    assert_eq!(
        task(ID).as_deref(),
        Some("trace:4bf92f3577b34da6a3ce929d0e0e4736")
    );
    assert_eq!(task(OTHER).as_deref(), Some("conversation:conv_42"));
    assert_eq!(task(&neither.request_id), None);
}
