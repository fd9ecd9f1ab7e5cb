//! Unit tests of [the intercept stage](super): what an intercepted connection's task holds.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::Response;
use http_body_util::Empty;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Semaphore, oneshot};

use super::super::{ClientSlot, Proxy, killable};
use crate::proxy::ca::CertificateAuthority;
use crate::proxy::fingerprint::Fingerprinter;
use crate::proxy::settings::ProxySettings;

/// A real upgraded CONNECT stream: a hyper server on loopback answers a raw CONNECT with 200
/// and hands over the upgrade, as the proxy port does.
async fn upgraded() -> hyper::upgrade::Upgraded {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tx = Mutex::new(Some(tx));
        let svc = service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            if let Some(tx) = tx.lock().unwrap().take() {
                let _ = tx.send(hyper::upgrade::on(&mut req));
            }
            async { Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new())) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(tcp), svc)
            .with_upgrades()
            .await;
    });
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    client
        .write_all(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        assert_eq!(client.read(&mut b).await.unwrap(), 1, "CONNECT answered");
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    // The client end must outlive the upgrade; it is leaked with the test's runtime.
    tokio::spawn(async move {
        let _keep = client;
        std::future::pending::<()>().await
    });
    rx.await.unwrap().await.unwrap()
}

#[tokio::test]
async fn an_intercepted_connection_task_does_not_keep_room_for_its_tls_stream() {
    let dir = tempfile::tempdir().unwrap();
    let settings = ProxySettings::from_raw(crate::config::RawConfig::default());
    let ca = CertificateAuthority::load_or_create(dir.path(), settings.ca_scope()).unwrap();
    let key = crate::keys::MasterKey::from_bytes(crate::keys::KeyId(1), [3; 32]);
    let fingerprinter = Fingerprinter::new(key.derive(crate::keys::Purpose::Fingerprint));
    let counters = Arc::new(crate::counters::Counters::default());
    let (queue, _rx) = crate::exchange::queue::channel(16, 1 << 20, counters.clone());
    let proxy = Proxy::try_new(settings, Arc::new(ca), fingerprinter, queue).unwrap();
    let permit = Arc::new(Semaphore::new(1)).acquire_owned().await.unwrap();
    let slot = ClientSlot::open(permit, &counters);
    let addr = "127.0.0.1:1".parse().unwrap();

    let task =
        proxy
            .shared
            .clone()
            .intercept(upgraded().await, "api.openai.com".into(), 443, addr, slot);
    // The task lives as long as the app's connection, idle or not, and 1,000 idle
    // connections are one of veil#18's targets. Its state is the connection's small parts
    // (the HTTP connection and the TLS stream are boxed); a TLS stream kept inline, even
    // moved from, made it ~5.4 KB.
    let size = std::mem::size_of_val(&task);
    let tls =
        std::mem::size_of::<tokio_rustls::server::TlsStream<TokioIo<hyper::upgrade::Upgraded>>>();
    assert!(
        size < tls,
        "the intercept task is {size} bytes; one TLS stream is {tls}"
    );
    assert!(size <= 2048, "the intercept task is {size} bytes");
    // What the proxy spawns adds the kill switch, not a second copy of the task.
    let spawned = killable(task, &tokio_util::sync::CancellationToken::new());
    let spawned = std::mem::size_of_val(&spawned);
    assert!(
        spawned <= size + 128,
        "the spawned task is {spawned} bytes around a {size}-byte connection task"
    );
}
