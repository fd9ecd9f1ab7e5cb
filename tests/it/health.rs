//! veil's own health numbers (veil#15): each registry entry an operator watches moves when its
//! event happens. In-process tests read the registry the proxy counts in; the last one runs
//! the real binary and reads the numbers as a collector gets them (the OTLP metrics request
//! sent at shutdown).
//!
//! Where an older test already proves a number moves, it is not repeated here:
//! - `veil.export.failures` and `veil.spool.bytes` during a collector outage:
//!   `export::tests::delivery::outage_loses_nothing_and_duplicates_nothing` (src/);
//! - `veil.exchanges.dropped{recording_queue_full}` and `veil.queue.depth` at capacity:
//!   `proxy::best_effort_keeps_traffic_flowing_and_counts_drops`;
//! - `veil.seal.writes.failed`, `veil.seals.failed{writer}` and `veil.seals.pending` on a
//!   full disk: `seal::tests::detached_seals_on_a_full_disk_are_counted_failed_and_none_stays_pending`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use tokio::net::TcpStream;

use crate::support::harness::{Client, Proto, Veil, body_text, connect, get, post_json};
use crate::support::mock_llm::{Alpn, Mock};
use crate::support::otlp::{Receiver, attr};
use crate::support::process::{VeilProcess, curl_chat, resolve_args, veil};

fn chat_request() -> serde_json::Value {
    serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
}

/// One chat request on `client`, answered 200 and read to its end.
async fn chat(client: &mut Client) {
    let resp = client
        .send(post_json(
            "api.openai.com",
            "/v1/chat/completions",
            &chat_request(),
        ))
        .await;
    assert_eq!(resp.status(), 200);
    body_text(resp).await;
    // The upstream connection goes back to veil's pool just after the body ends: give it
    // that moment, so the next request can reuse it.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Waits (bounded) until `pred` holds.
async fn eventually(what: &str, within: Duration, mut pred: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !pred() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Leaf cache: the second app connection to a host is served the cached leaf (a hit, no
/// mint). Upstream pool: three requests over two app connections travel on one upstream
/// connection (HTTP/1.1 keep-alive), so opened = 1 and requests - opened = 2 reused.
#[tokio::test]
async fn two_app_connections_to_one_host_share_one_leaf_and_one_upstream_connection() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let veil = Veil::start(&mock).await;
    let c = veil.counters.clone();
    let leaves = || (c.proxy.leaves_minted.get(), c.proxy.leaf_cache_hits.get());
    let upstream = || {
        (
            c.upstream.requests.get(),
            c.upstream.connections_opened.get(),
        )
    };
    assert_eq!((leaves(), upstream()), ((0, 0), (0, 0)));

    let mut first = Client::connect(veil.addr, "api.openai.com", &veil.ca_pem, Proto::Http1).await;
    assert_eq!(leaves(), (1, 0), "the first handshake mints");
    chat(&mut first).await;
    assert_eq!(upstream(), (1, 1), "the first request opens a connection");

    let mut second = Client::connect(veil.addr, "api.openai.com", &veil.ca_pem, Proto::Http1).await;
    assert_eq!(
        leaves(),
        (1, 1),
        "the second handshake is served from the cache"
    );
    chat(&mut second).await;
    chat(&mut first).await;
    assert_eq!(
        upstream(),
        (3, 1),
        "three requests, one upstream connection (the mock saw {} requests)",
        mock.seen().len()
    );
    assert_eq!(mock.seen().len(), 3);
    veil.stop().await;
}

/// `veil.proxy.connections.open` counts each app connection from accept until the last task
/// serving it ends, whichever way it ends: a client that closes, one that aborts mid-stream,
/// a socket that never sends a request head (header_read_timeout), and a CONNECT whose
/// client never starts TLS (handshake_timeout).
#[tokio::test]
async fn connections_open_falls_to_zero_after_clients_close_abort_or_time_out() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let veil = Veil::start_with(&mock, |raw| {
        raw.header_read_timeout = Some("1s".into());
        raw.handshake_timeout = Some("1s".into());
    })
    .await;
    let c = veil.counters.clone();
    let open = || c.proxy.connections_open.get();

    let mut closing =
        Client::connect(veil.addr, "api.openai.com", &veil.ca_pem, Proto::Http1).await;
    chat(&mut closing).await;
    let mut aborting = Client::connect(veil.addr, "api.openai.com", &veil.ca_pem, Proto::H2).await;
    let mut stream = aborting
        .send(get("api.openai.com", "/slow"))
        .await
        .into_body();
    stream.frame().await.expect("a first chunk").unwrap();
    let _silent = TcpStream::connect(veil.addr).await.unwrap();
    let (code, _no_hello) = connect(veil.addr, "api.openai.com", 443).await;
    assert_eq!(code, 200);
    eventually("four connections open", Duration::from_secs(5), || {
        open() == 4
    })
    .await;
    assert_eq!(c.proxy.connections.get(), 4);

    drop(closing);
    drop(stream);
    drop(aborting);
    // The silent socket and the CONNECT without a ClientHello stay open on the test's side:
    // veil's clocks close them.
    let t0 = Instant::now();
    eventually(
        "every connection counted off",
        Duration::from_secs(10),
        || open() == 0,
    )
    .await;
    assert!(
        c.proxy.timed_out.get() >= 2,
        "the silent socket and the missing ClientHello were closed by their clocks \
         (timed_out = {}, after {:?})",
        c.proxy.timed_out.get(),
        t0.elapsed()
    );
    veil.stop().await;
}

/// The real binary, as a collector sees it: every rules reload counted by its result (SIGHUP
/// and `veil reload`, good and bad; a bad one keeps the old rules), the queue's capacity and
/// depth, the leaf cache, the upstream pool, open connections and pending seals, all in the
/// metrics request veil sends at shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_exports_rules_reloads_by_result_and_its_health_numbers() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let rules = dir.path().join("rules.toml");
    std::fs::copy(repo.join("rules/default.toml"), &rules).unwrap();
    std::fs::write(dir.path().join("veil.toml"), "queue_capacity = 64\n").unwrap();
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
    let mut proc = VeilProcess::start(&args, dir.path());
    let body = chat_request().to_string();
    let digest_of = |id: &str| -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = receiver
                .spans()
                .into_iter()
                .find(|s| attr(s, "veil.request.id").as_deref() == Some(id))
            {
                return attr(&s, "veil.rules.digest").expect("rules digest on every record");
            }
            assert!(Instant::now() < deadline, "span for {id}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let (id, _) = curl_chat(&proc, dir.path(), &body, &[]);
    let first = digest_of(&id);

    // Two bad reloads, one by `veil reload` (control socket), one by SIGHUP.
    std::fs::write(&rules, "version = 1\ndefault = \"shred\"\n").unwrap();
    let out = veil(&["reload"], dir.path());
    assert!(!out.status.success(), "{out:?}");
    Command::new("kill")
        .args(["-HUP", &proc.child.id().to_string()])
        .status()
        .unwrap();
    eventually("both rejections logged", Duration::from_secs(10), || {
        proc.stderr().matches("rules reload rejected").count() >= 2
    })
    .await;
    let (id, _) = curl_chat(&proc, dir.path(), &body, &[]);
    assert_eq!(digest_of(&id), first, "the old rules stay in force");

    // A good one.
    std::fs::copy(repo.join("rules/strict.toml"), &rules).unwrap();
    let out = veil(&["reload"], dir.path());
    assert!(out.status.success(), "{out:?}\n{}", proc.stderr());
    let (id, _) = curl_chat(&proc, dir.path(), &body, &[]);
    assert_ne!(digest_of(&id), first, "the new rules are in force");

    assert!(proc.terminate().success(), "{}", proc.stderr());
    let m = |name: &str, label: Option<&str>| {
        receiver
            .veil_metric(name, label)
            .unwrap_or_else(|| panic!("{name} {label:?} not exported; stderr:\n{}", proc.stderr()))
    };
    assert_eq!(m("veil.rules.reloads", Some("failed")), 2);
    assert_eq!(m("veil.rules.reloads", Some("ok")), 1);
    assert_eq!(m("veil.queue.capacity", None), 64);
    assert_eq!(m("veil.queue.depth", None), 0, "the pipeline took all");
    // Three curl runs: three app connections, one minted leaf, one upstream connection.
    assert_eq!(m("veil.proxy.connections", None), 3);
    assert_eq!(m("veil.proxy.connections.open", None), 0);
    assert_eq!(m("veil.proxy.leaves.minted", None), 1);
    assert_eq!(m("veil.proxy.leaf_cache.hits", None), 2);
    assert_eq!(m("veil.upstream.requests", None), 3);
    assert_eq!(m("veil.upstream.connections.opened", None), 1);
    assert_eq!(m("veil.seals.pending", None), 0, "every seal committed");
    assert_eq!(m("veil.seals.failed", Some("writer")), 0);
}
