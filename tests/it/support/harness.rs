//! An in-process veil on 127.0.0.1:0 with its own keys dir, pointed at a mock provider, and a
//! client that speaks CONNECT + TLS (trusting veil's CA) + HTTP/1.1 or h2.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, combinators::BoxBody};

/// Request body type of the test client: anything, boxed.
pub type ReqBody = BoxBody<Bytes, std::convert::Infallible>;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use veil::config::{Config, RawConfig};
use veil::counters::Counters;
use veil::exchange::Exchange;
use veil::exchange::queue::ExchangeReceiver;
use veil::keys::{Keyring, Purpose};
use veil::proxy::{CertificateAuthority, Fingerprinter, Proxy, ProxySettings};

use super::mock_llm::Mock;

pub struct Veil {
    pub addr: SocketAddr,
    pub ca_pem: String,
    pub ca_path: std::path::PathBuf,
    pub exchanges: ExchangeReceiver,
    /// The registry the proxy and its queue count in.
    pub counters: Arc<Counters>,
    /// The recording health the proxy consults under `audit = "required"`.
    pub health: Arc<veil::health::Health>,
    _keys: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

/// Config for a veil whose intercepted hosts all resolve to `mock`.
pub fn config_for(
    mock: &Mock,
    keys: &std::path::Path,
    tweak: impl FnOnce(&mut RawConfig),
) -> Config {
    let resolve = super::mock_llm::MOCK_HOSTS
        .iter()
        .map(|h| format!("{h}:443:{}", mock.addr))
        .collect();
    let mut raw = RawConfig {
        listen: Some("127.0.0.1:0".into()),
        keys: Some(keys.to_path_buf()),
        resolve: Some(resolve),
        upstream_ca: Some(vec![mock.ca_path.clone()]),
        ..Default::default()
    };
    tweak(&mut raw);
    Config::resolve(None, raw).expect("test config resolves")
}

impl Veil {
    pub async fn start(mock: &Mock) -> Veil {
        Self::start_with(mock, |_| {}).await
    }

    pub async fn start_with(mock: &Mock, tweak: impl FnOnce(&mut RawConfig)) -> Veil {
        let keys = tempfile::tempdir().unwrap();
        let config = config_for(mock, keys.path(), tweak);
        let keyring = Keyring::load_or_create(keys.path()).unwrap();
        let settings = ProxySettings::from_config(&config);
        let ca = Arc::new(
            CertificateAuthority::load_or_create(keys.path(), settings.ca_scope()).unwrap(),
        );
        let ca_pem = ca.cert_pem().to_string();
        let ca_path = ca.cert_path().to_path_buf();
        let fp = Fingerprinter::new(keyring.identity().derive(Purpose::Fingerprint));
        let counters = Arc::new(Counters::default());
        let (tx, rx) = veil::exchange::queue::channel(
            config.queue_capacity,
            config.queue_max_bytes,
            counters.clone(),
        );
        let listener = tokio::net::TcpListener::bind(config.listen).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let health = Arc::new(veil::health::Health::new(counters.clone()));
        let proxy = Proxy::try_new(settings, ca, fp, tx)
            .unwrap()
            .with_health(health.clone());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let done = tokio::spawn(proxy.serve(listener, async {
            let _ = stop_rx.await;
        }));
        Veil {
            addr,
            ca_pem,
            ca_path,
            exchanges: rx,
            counters,
            health,
            _keys: keys,
            stop: Some(stop_tx),
            done: Some(done),
        }
    }

    /// The next recorded exchange (panics after 5 s: a missing exchange is a bug).
    pub async fn next_exchange(&mut self) -> Exchange {
        tokio::time::timeout(Duration::from_secs(5), self.exchanges.recv())
            .await
            .expect("an exchange was recorded within 5 s")
            .expect("queue open")
            .into_exchange()
    }

    /// Asserts no further exchange arrives within `wait`.
    pub async fn assert_no_exchange(&mut self, wait: Duration) {
        if let Ok(Some(ex)) = tokio::time::timeout(wait, self.exchanges.recv()).await {
            panic!("unexpected extra exchange: {:?}", ex.exchange());
        }
    }

    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            tokio::time::timeout(Duration::from_secs(15), done)
                .await
                .expect("veil drains within its drain timeout")
                .unwrap();
        }
    }
}

/// A rustls client config trusting only `ca_pem`, offering `alpn`.
pub fn tls_client(ca_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// Sends `CONNECT host:port` to the proxy; returns the status line's code and the stream.
pub async fn connect(proxy: SocketAddr, host: &str, port: u16) -> (u16, TcpStream) {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(
            format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert!(
            n == 1,
            "proxy closed during CONNECT response: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head);
    let code = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, stream)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http1,
    /// HTTP/1.1 with no ALPN offered (an old client): veil serves it as HTTP/1.1.
    Http1NoAlpn,
    H2,
}

/// An HTTP client over CONNECT + TLS to `host`, trusting `ca_pem`.
pub enum Client {
    H1(hyper::client::conn::http1::SendRequest<ReqBody>),
    H2(hyper::client::conn::http2::SendRequest<ReqBody>),
}

impl Client {
    pub async fn connect(proxy: SocketAddr, host: &str, ca_pem: &str, proto: Proto) -> Client {
        let (code, stream) = connect(proxy, host, 443).await;
        assert_eq!(code, 200, "CONNECT {host}");
        let alpn: &[&[u8]] = match proto {
            Proto::Http1 => &[b"http/1.1"],
            Proto::Http1NoAlpn => &[],
            Proto::H2 => &[b"h2"],
        };
        let tls = tokio_rustls::TlsConnector::from(tls_client(ca_pem, alpn))
            .connect(host.to_string().try_into().unwrap(), stream)
            .await
            .expect("TLS to veil with a leaf minted from veil's CA");
        let negotiated = tls.get_ref().1.alpn_protocol().map(|p| p.to_vec());
        match proto {
            Proto::Http1 | Proto::Http1NoAlpn => {
                if proto == Proto::Http1NoAlpn {
                    assert_eq!(negotiated, None, "no ALPN offered, none chosen");
                }
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                    .await
                    .unwrap();
                tokio::spawn(conn);
                Client::H1(send)
            }
            Proto::H2 => {
                assert_eq!(
                    negotiated.as_deref(),
                    Some(&b"h2"[..]),
                    "veil offers h2 by ALPN"
                );
                let (send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                        .await
                        .unwrap();
                tokio::spawn(conn);
                Client::H2(send)
            }
        }
    }

    /// POSTs an OpenAI chat completion whose one user message is `prompt` to
    /// `api.openai.com` (model `gpt-4o-mini`).
    pub async fn chat(&mut self, prompt: &str) -> Response<Incoming> {
        let body = serde_json::json!({"model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": prompt}]});
        self.send(post_json("api.openai.com", "/v1/chat/completions", &body))
            .await
    }

    pub async fn send(&mut self, req: Request<ReqBody>) -> Response<Incoming> {
        match self {
            Client::H1(s) => {
                // HTTP/1.1 inside the tunnel uses origin-form.
                let (mut parts, body) = req.into_parts();
                parts.uri = parts
                    .uri
                    .path_and_query()
                    .unwrap()
                    .as_str()
                    .parse()
                    .unwrap();
                s.ready().await.unwrap();
                s.send_request(Request::from_parts(parts, body))
                    .await
                    .unwrap()
            }
            Client::H2(s) => {
                s.ready().await.unwrap();
                s.send_request(req).await.unwrap()
            }
        }
    }
}

/// A POST with a JSON body to `https://host/path`.
pub fn post_json(host: &str, path: &str, body: &serde_json::Value) -> Request<ReqBody> {
    Request::post(format!("https://{host}{path}"))
        .header("host", host)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

/// A GET to `https://host/path`.
pub fn get(host: &str, path: &str) -> Request<ReqBody> {
    Request::get(format!("https://{host}{path}"))
        .header("host", host)
        .body(Full::new(Bytes::new()).boxed())
        .unwrap()
}

pub async fn body_text(resp: Response<Incoming>) -> String {
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}
