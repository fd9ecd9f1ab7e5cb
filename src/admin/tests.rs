//! Tests of the admin API over a real loopback socket: auth, unseal, forget, purge, health.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, StatusCode};

use std::sync::Arc;

use super::api::percent_decode;
use super::*;
use crate::keys::pseudonymize_user;
use crate::seal::SealStore;
use crate::seal::tests::{MemorySink, openai_chat, ring};

async fn start(
    store: SealStore,
    token: AdminToken,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(listener, store, token, async {
        let _ = rx.await;
    }));
    (addr, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_unseal_forget_by_id_and_user() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(MemorySink::default());
    let store = SealStore::open(
        dir.path(),
        ring(1),
        crate::seal::SealOptions {
            audit: Some(sink.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let alice = pseudonymize_user(&ring(1), "alice@example.com");
    let a = openai_chat();
    let b = openai_chat();
    let c = openai_chat();
    store.seal(&a, None).await.unwrap();
    store.seal(&b, Some(&alice)).await.unwrap();
    store.seal(&c, Some(&alice)).await.unwrap();
    let token = AdminToken::from_secret("s3cret-token");
    let (addr, stop) = start(store.clone(), token.clone()).await;
    let client = |t: &str| AdminClient::tcp(addr, AdminToken::from_secret(t), "cli:test");
    let path = format!("/v1/exchanges/{}", a.id);
    let (s, _) = client("").request(Method::GET, &path).await.unwrap();
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = client("wrong").request(Method::GET, &path).await.unwrap();
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = client("wrong")
        .request(Method::DELETE, &path)
        .await
        .unwrap();
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert!(
        store.entry(a.id).unwrap().is_some(),
        "unauthorized forget did nothing"
    );
    assert!(sink.0.lock().unwrap().is_empty());
    let (s, _) = client("").request(Method::GET, "/healthz").await.unwrap();
    assert_eq!(s, StatusCode::OK);

    let ok = client("s3cret-token");
    let (s, v) = ok.request(Method::GET, &path).await.unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["id"], a.id.to_string());
    assert!(
        v["request_body"]["text"]
            .as_str()
            .unwrap()
            .contains("PLANTED-PROMPT")
    );
    {
        let ev = sink.0.lock().unwrap();
        assert_eq!(ev.len(), 1);
        assert!(
            ev[0].actor.starts_with("admin:127.0.0.1:"),
            "{}",
            ev[0].actor
        );
        assert!(ev[0].actor.ends_with("(cli:test)"), "{}", ev[0].actor);
    }
    let (s, _) = ok
        .request(Method::DELETE, &format!("{path}?reason=user%20asked"))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK);
    let (s, body) = ok.request(Method::DELETE, &path).await.unwrap();
    assert_eq!(
        s,
        StatusCode::OK,
        "a second forget is not an error (veil#13)"
    );
    assert_eq!(body["already_forgotten"], true, "{body}");
    let (s, _) = ok.request(Method::GET, &path).await.unwrap();
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (s, v) = ok
        .request(
            Method::DELETE,
            &format!(
                "/v1/users/{}/exchanges",
                percent_encode("alice@example.com")
            ),
        )
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["user"], alice.as_str());
    assert_eq!(v["forgotten"].as_array().unwrap().len(), 2);
    assert!(store.is_empty().unwrap());
    let (s, _) = ok.request(Method::POST, "/v1/purge").await.unwrap();
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = ok
        .request(Method::POST, "/v1/purge?older_than=30d")
        .await
        .unwrap();
    assert_eq!((s, v["purged"].as_u64()), (StatusCode::OK, Some(0)));
    stop.send(()).unwrap();
}

// See: veil#10
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_reports_a_degraded_store_with_503_until_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = SealStore::open(
        dir.path(),
        ring(1),
        crate::seal::SealOptions {
            audit: Some(Arc::new(MemorySink::default())),
            ..Default::default()
        },
    )
    .unwrap();
    let token = AdminToken::from_secret("t");
    let (addr, stop) = start(store.clone(), token.clone()).await;
    let client = AdminClient::tcp(addr, token, "cli:test");
    let (s, _) = client.request(Method::GET, "/healthz").await.unwrap();
    assert_eq!(s, StatusCode::OK);
    store.degrade_for_test("segments/00000001.seg: No space left on device (os error 28)");
    let (s, v) = client.request(Method::GET, "/healthz").await.unwrap();
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["status"], "degraded");
    assert!(
        v["sealing"]["last_error"]
            .as_str()
            .unwrap()
            .contains("No space left"),
        "{v}"
    );
    assert!(
        v["sealing"]["since"].as_str().unwrap().ends_with('Z'),
        "{v}"
    );
    assert_eq!(v["sealing"]["failed_commits"], 1);
    assert_eq!(v["sealing"]["recoveries"], 0);
    // An operator command recovers first (the disk here has room), and health follows.
    let (s, v) = client.request(Method::POST, "/v1/compact").await.unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    let (s, _) = client.request(Method::GET, "/healthz").await.unwrap();
    assert_eq!(s, StatusCode::OK);
    assert_eq!(store.stats().recoveries, 1);
    stop.send(()).unwrap();
}

// See: veil#10
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_forget_and_purge_answer_with_what_was_and_was_not_destroyed() {
    let dir = tempfile::tempdir().unwrap();
    let store = SealStore::open(dir.path(), ring(1), Default::default()).unwrap();
    let mut old = openai_chat();
    old.started_at -= Duration::from_secs(40 * 86_400);
    store.seal(&old, None).await.unwrap();
    // The audit log cannot be written (a directory where the file should be).
    std::fs::create_dir(dir.path().join("audit.jsonl")).unwrap();
    let token = AdminToken::from_secret("t");
    let (addr, stop) = start(store.clone(), token.clone()).await;
    let client = AdminClient::tcp(addr, token, "cli:test");
    let (s, v) = client
        .request(Method::DELETE, &format!("/v1/exchanges/{}", old.id))
        .await
        .unwrap();
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["forgotten"], false);
    assert_eq!(v["not_destroyed"], serde_json::json!([old.id.to_string()]));
    assert_eq!(v["destroyed"], serde_json::json!([]));
    let (s, v) = client
        .request(Method::POST, "/v1/purge?older_than=30d")
        .await
        .unwrap();
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["purged"], 0);
    assert_eq!(v["not_destroyed"], serde_json::json!([old.id.to_string()]));
    let (s, v) = client
        .request(Method::GET, &format!("/v1/exchanges/{}", old.id))
        .await
        .unwrap();
    assert_eq!(
        s,
        StatusCode::SERVICE_UNAVAILABLE,
        "unseal fails closed: {v}"
    );
    assert!(v.get("request_body").is_none());
    std::fs::remove_dir(dir.path().join("audit.jsonl")).unwrap();
    let (s, v) = client
        .request(Method::POST, "/v1/purge?older_than=30d")
        .await
        .unwrap();
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["purged"], 1);
    assert_eq!(v["ids"], serde_json::json!([old.id.to_string()]));
    stop.send(()).unwrap();
}

#[test]
fn token_file_is_created_0600_and_debug_is_redacted() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let t = AdminToken::load_or_create(dir.path()).unwrap();
    let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(t.secret().len(), 64);
    assert!(t.verify(t.secret()));
    assert!(!t.verify(&t.secret()[..63]));
    let again = AdminToken::load_or_create(dir.path()).unwrap();
    assert_eq!(again.secret(), t.secret());
    assert!(!format!("{t:?}").contains(t.secret()));
}

#[test]
fn percent_coding_round_trips() {
    for s in ["alice@example.com", "a b/c?d=e&f", "ünï"] {
        assert_eq!(percent_decode(&percent_encode(s)).unwrap(), s);
    }
    assert!(percent_decode("%zz").is_none());
}

/// The typed client reads every answer the real server gives, in the types of `api`: the
/// server encodes and the client decodes the same definitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_client_reads_every_answer_of_the_real_server() {
    let dir = tempfile::tempdir().unwrap();
    let store = SealStore::open(dir.path(), ring(1), Default::default()).unwrap();
    let carol = pseudonymize_user(&ring(1), "carol");
    let a = openai_chat();
    let b = openai_chat();
    let mut old = openai_chat();
    old.started_at -= Duration::from_secs(40 * 86_400);
    store.seal(&a, None).await.unwrap();
    store.seal(&b, Some(&carol)).await.unwrap();
    store.seal(&old, None).await.unwrap();
    let token = AdminToken::from_secret("t");
    let (addr, stop) = start(store.clone(), token.clone()).await;
    let client = AdminClient::tcp(addr, token, "cli:test");

    assert_eq!(client.health().await.unwrap(), HealthResponse::Ok);
    let view = client.unseal(a.id, "test").await.unwrap();
    assert_eq!(view.id, a.id);
    assert_eq!(view.request_body, BodyView::of(&a.request_body));
    assert_eq!(view.response_body, BodyView::of(&a.response_body));
    assert_eq!(view.outcome, OutcomeView::Complete {});
    assert!(
        !view
            .request_headers
            .iter()
            .any(|(k, _)| k == "authorization"),
        "the store keeps no credential"
    );
    let e = client
        .unseal(crate::exchange::ExchangeId::new(), "test")
        .await
        .unwrap_err();
    assert_eq!(
        (e.kind(), e.status()),
        (AdminErrorKind::Refused, Some(StatusCode::NOT_FOUND))
    );

    let done = client.forget(a.id, "test").await.unwrap();
    assert_eq!(
        (done.request_id, done.forgotten, done.error),
        (a.id, true, None)
    );
    let again = client.forget(a.id, "test").await.unwrap();
    assert!(
        !again.forgotten && again.already_forgotten && again.error.is_none(),
        "{again:?}"
    );
    let never = client
        .forget(crate::exchange::ExchangeId::new(), "test")
        .await
        .unwrap();
    assert!(
        !never.forgotten && !never.already_forgotten && never.error.is_some(),
        "{never:?}"
    );
    let user = client.forget_user("carol", "test").await.unwrap();
    assert_eq!((user.user, user.forgotten), (carol, vec![b.id]));
    let purged = client
        .purge(Duration::from_secs(30 * 86_400))
        .await
        .unwrap();
    assert_eq!((purged.purged, purged.ids), (1, vec![old.id]));
    client.compact().await.unwrap();
    // Opened without a keys dir: reloading is refused with 409, in the error document.
    let e = client.reload_keys().await.unwrap_err();
    assert_eq!(
        (e.kind(), e.status()),
        (AdminErrorKind::Refused, Some(StatusCode::CONFLICT))
    );

    store.degrade_for_test("segments/00000001.seg: No space left on device (os error 28)");
    let HealthResponse::Degraded(h) = client.health().await.unwrap() else {
        panic!("degraded expected");
    };
    assert_eq!(h.status, HealthStatus::Degraded);
    let sealing = h.sealing.unwrap();
    assert!(sealing.last_error.contains("No space left"), "{sealing:?}");
    assert_eq!(sealing.failed_commits, 1);
    stop.send(()).unwrap();
}
