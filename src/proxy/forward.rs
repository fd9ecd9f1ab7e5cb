//! # Forward: the pooled upstream client.
//!
//! One hyper-util client for every upstream: keep-alive pooling, HTTP/2 when the upstream
//! offers it by ALPN, rustls with the standard web roots plus `--upstream-ca`. Certificate
//! verification is always on, for the name the app addressed, even when `--resolve` sends
//! the connection elsewhere (that is what makes `--resolve` safe to use against a local mock).
//!
//! Failures are classified ([`UpstreamError`]) so the app gets a 502 or 504 with a short JSON
//! body that says which and why, never a hang and never a panic.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::config::{Config, ResolveRule};
use crate::exchange::UpstreamFailure;

/// A classified upstream failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamError {
    /// The failure class (decides 502 vs 504).
    pub kind: UpstreamFailure,
    /// What went wrong, for the app and the operator (no content).
    pub message: String,
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UpstreamError {}

impl UpstreamError {
    /// 504 for timeouts, 502 for everything else.
    pub fn status(&self) -> http::StatusCode {
        match self.kind {
            UpstreamFailure::Timeout => http::StatusCode::GATEWAY_TIMEOUT,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }
}

/// Where to connect for `host:port`: a `--resolve` override, or the name itself.
#[derive(Debug, Clone)]
pub struct Resolver {
    rules: Arc<Vec<ResolveRule>>,
}

impl Resolver {
    /// A resolver applying `rules`.
    pub fn new(rules: Vec<ResolveRule>) -> Self {
        Resolver {
            rules: Arc::new(rules),
        }
    }

    /// The override for `host:port`, if any.
    pub fn lookup(&self, host: &str, port: u16) -> Option<SocketAddr> {
        self.rules
            .iter()
            .find(|r| r.port == port && r.host.eq_ignore_ascii_case(host))
            .map(|r| r.target)
    }

    /// Connects to `host:port` (or its override) within `timeout`, with TCP_NODELAY.
    pub async fn connect(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<TcpStream, UpstreamError> {
        let target = self.lookup(host, port);
        let attempt = async {
            match target {
                Some(addr) => TcpStream::connect(addr).await,
                None => TcpStream::connect((host.trim_matches(['[', ']']), port)).await,
            }
        };
        let shown = match target {
            Some(addr) => format!("{host}:{port} (resolved to {addr})"),
            None => format!("{host}:{port}"),
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Ok(Err(e)) => Err(UpstreamError {
                kind: UpstreamFailure::Connect,
                message: format!("cannot connect to upstream {shown}: {e}"),
            }),
            Err(_) => Err(UpstreamError {
                kind: UpstreamFailure::Timeout,
                message: format!(
                    "timed out after {}s connecting to upstream {shown}",
                    timeout.as_secs_f32()
                ),
            }),
        }
    }
}

/// The TCP connector under hyper-rustls: applies `--resolve` and the connect timeout.
#[derive(Debug, Clone)]
pub struct ResolveConnector {
    resolver: Resolver,
    timeout: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<Uri> for ResolveConnector {
    type Response = TokioIo<TcpStream>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri.host().ok_or("upstream URI has no host")?.to_string();
            let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
                Some("http") => 80,
                _ => 443,
            });
            let stream = this.resolver.connect(&host, port, this.timeout).await?;
            Ok(TokioIo::new(stream))
        })
    }
}

/// The upstream client: pooled, h1 + h2, verified TLS.
pub type UpstreamClient<B> = Client<hyper_rustls::HttpsConnector<ResolveConnector>, B>;

/// Builds the rustls client config: web roots plus the PEM files in `extra_roots`.
pub fn tls_client_config(extra_roots: &[impl AsRef<Path>]) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for path in extra_roots {
        let path = path.as_ref();
        let pem =
            std::fs::read(path).map_err(|e| format!("upstream_ca {}: {e}", path.display()))?;
        let mut added = 0;
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            let cert = cert.map_err(|e| format!("upstream_ca {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("upstream_ca {}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!(
                "upstream_ca {}: no PEM certificate found",
                path.display()
            ));
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(config)
}

/// Builds the upstream client from the config.
pub fn client<B>(config: &Config) -> Result<UpstreamClient<B>, String>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let tls = tls_client_config(&config.upstream_ca)?;
    let connector = ResolveConnector {
        resolver: Resolver::new(config.resolve.clone()),
        timeout: config.connect_timeout,
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_all_versions()
        .wrap_connector(connector);
    Ok(Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .build(https))
}

/// Classifies a client error: TLS, connect/timeout from our connector, else protocol.
pub fn classify(err: &hyper_util::client::legacy::Error, target: &str) -> UpstreamError {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(ours) = e.downcast_ref::<UpstreamError>() {
            return ours.clone();
        }
        // io::Error hides its payload from source(): unwrap nested io::Errors by hand.
        let mut candidate = Some(e);
        while let Some(c) = candidate {
            if let Some(tls) = c.downcast_ref::<rustls::Error>() {
                return UpstreamError {
                    kind: UpstreamFailure::Tls,
                    message: format!("TLS handshake with upstream {target} failed: {tls}"),
                };
            }
            if let Some(ours) = c.downcast_ref::<UpstreamError>() {
                return ours.clone();
            }
            candidate = c
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|inner| inner as &(dyn std::error::Error + 'static));
        }
        current = e.source();
    }
    let kind = if err.is_connect() {
        UpstreamFailure::Connect
    } else {
        UpstreamFailure::Protocol
    };
    UpstreamError {
        kind,
        message: format!("upstream {target} failed: {}", chain(err)),
    }
}

/// `err: cause: cause` on one line.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut current = err.source();
    while let Some(e) = current {
        let text = e.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        current = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_overrides_only_the_named_host_and_port() {
        let r = Resolver::new(vec![
            ResolveRule::parse("api.openai.com:443:127.0.0.1:9443").unwrap(),
        ]);
        assert_eq!(
            r.lookup("API.openai.com", 443),
            Some("127.0.0.1:9443".parse().unwrap())
        );
        assert_eq!(r.lookup("api.openai.com", 80), None);
        assert_eq!(r.lookup("example.com", 443), None);
    }

    #[tokio::test]
    async fn connect_failures_are_classified() {
        // Bind then drop a listener to get a port nobody listens on.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let r = Resolver::new(vec![]);
        let err = r
            .connect("127.0.0.1", port, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert_eq!(err.kind, UpstreamFailure::Connect);
        assert_eq!(err.status(), http::StatusCode::BAD_GATEWAY);
        assert!(err.message.contains(&port.to_string()), "{err}");
    }

    #[test]
    fn bad_upstream_ca_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a pem").unwrap();
        let err = tls_client_config(&[&path]).unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
    }
}
