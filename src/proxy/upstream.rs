//! # Upstream: the pooled client that carries forwarded requests to the provider.
//!
//! The forward stage hands it one request (its body inside the tee) and gets back the
//! response head and a streaming body, or a hyper error that [`classify`] turns into an
//! [`UpstreamError`], so the app gets a 502 or 504 with a short JSON body that says which and
//! why, never a hang and never a panic.
//!
//! One hyper-util client for every upstream: keep-alive pooling, HTTP/2 when the upstream
//! offers it by ALPN, rustls with the standard web roots plus `--upstream-ca`. Certificate
//! verification is always on, for the name the app addressed, even when `--resolve` sends
//! the connection elsewhere (that is what makes `--resolve` safe to use against a local mock).
//! Its TCP connections are opened by [`Resolver::connect`] (see
//! [`destinations`](super::destinations)), like every connection veil opens for an app.

use std::fmt;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::destinations::Resolver;
use super::settings::ProxySettings;
use crate::counters::Counters;
use crate::exchange::UpstreamFailure;

/// A classified upstream failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamError {
    /// The failure class (decides 502 vs 504).
    pub kind: UpstreamFailure,
    /// What went wrong, for the app and the operator (no content).
    pub message: String,
    /// veil refused the destination itself
    /// ([`Destinations`](super::destinations::Destinations)): a 403, not the network's fault.
    pub refused: bool,
}

impl fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UpstreamError {}

impl UpstreamError {
    /// A failure of `kind` (not a refusal).
    pub fn new(kind: UpstreamFailure, message: String) -> Self {
        UpstreamError {
            kind,
            message,
            refused: false,
        }
    }

    /// 403 for a destination veil refuses, 504 for timeouts, 502 for everything else.
    pub fn status(&self) -> http::StatusCode {
        match self.kind {
            _ if self.refused => http::StatusCode::FORBIDDEN,
            UpstreamFailure::Timeout => http::StatusCode::GATEWAY_TIMEOUT,
            _ => http::StatusCode::BAD_GATEWAY,
        }
    }

    /// The `error.code` of veil's JSON answer: `destination_refused`, or `upstream_<kind>`.
    pub fn code(&self) -> String {
        if self.refused {
            "destination_refused".to_string()
        } else {
            format!("upstream_{}", self.kind.as_str())
        }
    }
}

/// The TCP connector under hyper-rustls: applies `--resolve` and the connect timeout, and
/// counts each connection it opens in `veil.upstream.connections.opened` (the pool calls it
/// only when no idle connection can be reused).
#[derive(Debug, Clone)]
pub struct ResolveConnector {
    resolver: Resolver,
    timeout: Duration,
    counters: Arc<Counters>,
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
            // veil built this URI from a checked port; a bad one here is a bug, not a default.
            let port = crate::config::authority_port(uri.authority().map_or("", |a| a.as_str()))?
                .unwrap_or(match uri.scheme_str() {
                    Some("http") => 80,
                    _ => 443,
                });
            let stream = this.resolver.connect(&host, port, this.timeout).await?;
            this.counters.upstream.connections_opened.inc();
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

/// Which HTTP versions an upstream client may speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Versions {
    /// HTTP/2 when the upstream offers it by ALPN, else HTTP/1.1.
    Any,
    /// HTTP/1.1 only (ALPN `http/1.1`): for WebSocket handshakes, which need an upgrade.
    Http1,
}

/// Builds the upstream client from the proxy's settings; its connections go through
/// `settings.resolver` (a clone: the policy is shared) and are counted in `counters`
/// (`upstream.connections_opened`).
pub fn client<B>(
    settings: &ProxySettings,
    counters: Arc<Counters>,
    versions: Versions,
) -> Result<UpstreamClient<B>, String>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let tls = tls_client_config(&settings.upstream_ca)?;
    let connector = ResolveConnector {
        resolver: settings.resolver.clone(),
        timeout: settings.connect_timeout,
        counters,
    };
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http();
    let https = match versions {
        Versions::Any => https.enable_all_versions().wrap_connector(connector),
        Versions::Http1 => https.enable_http1().wrap_connector(connector),
    };
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
                // An unknown issuer is most often a private CA (a corporate gateway, a local
                // server behind `resolve`): say how to trust it.
                let hint = match tls {
                    rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
                        " (signed by a private CA? trust it with --upstream-ca FILE or upstream_ca in veil.toml)"
                    }
                    _ => "",
                };
                return UpstreamError::new(
                    UpstreamFailure::Tls,
                    format!("TLS handshake with upstream {target} failed: {tls}{hint}"),
                );
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
    UpstreamError::new(kind, format!("upstream {target} failed: {}", chain(err)))
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
    fn bad_upstream_ca_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a pem").unwrap();
        let err = tls_client_config(&[&path]).unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
    }
}
