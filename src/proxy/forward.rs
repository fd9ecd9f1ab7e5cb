//! # Forward: the pooled upstream client.
//!
//! One hyper-util client for every upstream: keep-alive pooling, HTTP/2 when the upstream
//! offers it by ALPN, rustls with the standard web roots plus `--upstream-ca`. Certificate
//! verification is always on, for the name the app addressed, even when `--resolve` sends
//! the connection elsewhere (that is what makes `--resolve` safe to use against a local mock).
//!
//! Failures are classified ([`UpstreamError`]) so the app gets a 502 or 504 with a short JSON
//! body that says which and why, never a hang and never a panic.
//!
//! Every connection veil opens for an app goes through [`Resolver::connect`], which also
//! applies [`Destinations`]: a name is resolved once, each address is checked (no loopback,
//! link-local or unspecified address, none of veil's own listeners, unless the operator said
//! so), and veil connects to an address it checked, so a DNS answer that changes between a
//! check and a connect (rebinding) cannot slip through.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use crate::config::{Config, ResolveRule};

use super::settings::ProxySettings;
use crate::exchange::UpstreamFailure;

/// A classified upstream failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamError {
    /// The failure class (decides 502 vs 504).
    pub kind: UpstreamFailure,
    /// What went wrong, for the app and the operator (no content).
    pub message: String,
    /// veil refused the destination itself ([`Destinations`]): a 403, not the network's fault.
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

/// Which addresses veil may connect to on an app's behalf: not loopback, link-local or
/// unspecified ones (unless `allow_local_targets`), and never veil's own listeners, except
/// where the operator named the destination (a `--resolve` rule, a configured gateway route).
///
/// Why these and not all private ranges: an app behind veil must not use it to reach what
/// only the proxy's host can (services bound to loopback, veil's admin API, the cloud metadata
/// service at 169.254.169.254). RFC 1918 and unique-local addresses stay reachable because
/// providers are legitimately reached there (Azure OpenAI private endpoints resolve to
/// 10.x addresses).
#[derive(Debug, Default)]
pub struct Destinations {
    /// `allow_local_targets`.
    allow_local: bool,
    /// `host:port` pairs the operator named as gateway routes (the built-in routes excluded).
    explicit: Vec<(String, u16)>,
    /// veil's listeners known from the config (the admin API's bound address).
    own: Vec<SocketAddr>,
    /// The proxy's bound address, set once it listens.
    bound: OnceLock<SocketAddr>,
}

impl Destinations {
    /// The policy `config` asks for.
    pub fn of(config: &Config) -> Destinations {
        let builtin: Vec<crate::config::GatewayRoute> = crate::exchange::providers::gateways()
            .filter_map(|g| crate::config::GatewayRoute::parse(g.name, g.base).ok())
            .collect();
        let explicit = config
            .routes
            .values()
            .filter(|r| !builtin.contains(r))
            .map(|r| (r.host.clone(), r.port))
            .collect();
        let own = [Some(config.listen), config.admin_listen]
            .into_iter()
            .flatten()
            .filter(|a| a.port() != 0)
            .collect();
        Destinations {
            allow_local: config.allow_local_targets,
            explicit,
            own,
            bound: OnceLock::new(),
        }
    }

    /// Records the proxy's bound address (its config may say port 0).
    pub fn set_bound(&self, addr: SocketAddr) {
        let _ = self.bound.set(addr);
    }

    /// True when the operator named `host:port` as a gateway route.
    pub fn is_explicit(&self, host: &str, port: u16) -> bool {
        self.explicit
            .iter()
            .any(|(h, p)| *p == port && h.eq_ignore_ascii_case(host))
    }

    /// Why veil will not connect to `addr` for an app, or `None` when it may.
    pub fn refusal(&self, addr: SocketAddr) -> Option<&'static str> {
        // `::ffff:127.0.0.1` is 127.0.0.1 to the kernel.
        let ip = addr.ip().to_canonical();
        if self
            .own
            .iter()
            .chain(self.bound.get())
            .any(|own| is_same_listener(*own, ip, addr.port()))
        {
            return Some(OWN_LISTENER);
        }
        if self.allow_local {
            return None;
        }
        match ip {
            IpAddr::V4(v4) if v4.is_loopback() => Some("a loopback address"),
            IpAddr::V6(v6) if v6.is_loopback() => Some("a loopback address"),
            // 0.0.0.0/8 is "this network"; 0.0.0.0 and :: reach the local host.
            IpAddr::V4(v4) if v4.octets()[0] == 0 => Some("an unspecified address"),
            IpAddr::V6(v6) if v6.is_unspecified() => Some("an unspecified address"),
            IpAddr::V4(v4) if v4.is_link_local() => {
                Some("a link-local address (where cloud metadata services answer)")
            }
            IpAddr::V6(v6) if v6.is_unicast_link_local() => Some("a link-local address"),
            _ => None,
        }
    }
}

/// The refusal reason for veil's own listeners (no switch opens them).
const OWN_LISTENER: &str = "one of veil's own listeners";

/// True when a connection to `ip:port` would reach the listener bound to `own`.
fn is_same_listener(own: SocketAddr, ip: IpAddr, port: u16) -> bool {
    if own.port() != port {
        return false;
    }
    let own_ip = own.ip().to_canonical();
    if own_ip == ip {
        return true;
    }
    // Connecting to 0.0.0.0 or :: reaches the loopback interface on Linux.
    if ip.is_unspecified() && own_ip.is_loopback() {
        return true;
    }
    if !own_ip.is_unspecified() {
        return false;
    }
    // Listening on 0.0.0.0 or ::: any local address reaches it. An address is local when a
    // socket can bind to it; this costs a syscall only for a target on veil's own port.
    ip.is_loopback()
        || ip.is_unspecified()
        || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// Where to connect for `host:port`: a `--resolve` override, or the name resolved once and
/// checked against [`Destinations`].
#[derive(Debug, Clone)]
pub struct Resolver {
    rules: Arc<Vec<ResolveRule>>,
    destinations: Arc<Destinations>,
}

impl Resolver {
    /// A resolver applying `rules` and `destinations`.
    pub fn new(rules: Vec<ResolveRule>, destinations: Arc<Destinations>) -> Self {
        Resolver {
            rules: Arc::new(rules),
            destinations,
        }
    }

    /// The destination policy this resolver applies.
    pub fn destinations(&self) -> &Arc<Destinations> {
        &self.destinations
    }

    /// Refuses `host:port` before anything else happens when `host` is an IP address veil
    /// may not reach (no DNS involved), so a refused CONNECT mints no leaf and a refused
    /// absolute-form request starts no recording. Names are checked when they resolve.
    pub fn check_literal(&self, host: &str, port: u16) -> Result<(), UpstreamError> {
        let Ok(ip) = host.trim_matches(['[', ']']).parse::<IpAddr>() else {
            return Ok(());
        };
        if self.lookup(host, port).is_some() || self.destinations.is_explicit(host, port) {
            return Ok(());
        }
        match self.destinations.refusal(SocketAddr::new(ip, port)) {
            Some(why) => Err(refused(host, port, ip, why)),
            None => Ok(()),
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
        let shown = match target {
            Some(addr) => format!("{host}:{port} (resolved to {addr})"),
            None => format!("{host}:{port}"),
        };
        let attempt = async {
            match target {
                // The operator's own rule: connect as told.
                Some(addr) => TcpStream::connect(addr).await.map_err(Attempt::Io),
                None => self.connect_checked(host, port).await,
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Ok(Err(Attempt::Refused(ip, why))) => Err(refused(host, port, ip, why)),
            Ok(Err(Attempt::Io(e))) => Err(UpstreamError::new(
                UpstreamFailure::Connect,
                format!("cannot connect to upstream {shown}: {e}"),
            )),
            Err(_) => Err(UpstreamError::new(
                UpstreamFailure::Timeout,
                format!(
                    "timed out after {}s connecting to upstream {shown}",
                    timeout.as_secs_f32()
                ),
            )),
        }
    }

    /// Resolves `host` once, drops the addresses [`Destinations`] refuses and connects to the
    /// first of the rest that answers: the address checked is the address used.
    async fn connect_checked(&self, host: &str, port: u16) -> Result<TcpStream, Attempt> {
        let bare = host.trim_matches(['[', ']']);
        let explicit = self.destinations.is_explicit(host, port);
        let mut refused = None;
        let mut last = None;
        for addr in tokio::net::lookup_host((bare, port))
            .await
            .map_err(Attempt::Io)?
        {
            if !explicit && let Some(why) = self.destinations.refusal(addr) {
                refused = Some((addr.ip(), why));
                continue;
            }
            match TcpStream::connect(addr).await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(match (last, refused) {
            (Some(e), _) => Attempt::Io(e),
            (None, Some((ip, why))) => Attempt::Refused(ip, why),
            (None, None) => Attempt::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the name resolved to no address",
            )),
        })
    }
}

/// Why one connect attempt failed.
enum Attempt {
    Io(std::io::Error),
    Refused(IpAddr, &'static str),
}

fn refused(host: &str, port: u16, ip: IpAddr, why: &str) -> UpstreamError {
    let via = if host.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
        String::new()
    } else {
        format!(" (it resolves to {ip})")
    };
    let way_out = if why == OWN_LISTENER {
        format!("only a --resolve rule for {host}:{port} can allow it")
    } else {
        format!(
            "an operator can allow it with a --resolve rule for {host}:{port} or \
             allow_local_targets = true"
        )
    };
    UpstreamError {
        kind: UpstreamFailure::Connect,
        message: format!("refusing to connect to {host}:{port}{via}: {why}; {way_out}"),
        refused: true,
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
            // veil built this URI from a checked port; a bad one here is a bug, not a default.
            let port = crate::config::authority_port(uri.authority().map_or("", |a| a.as_str()))?
                .unwrap_or(match uri.scheme_str() {
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

/// Builds the upstream client from the proxy's settings; its connections go through
/// `settings.resolver` (a clone: the policy is shared).
pub fn client<B>(settings: &ProxySettings) -> Result<UpstreamClient<B>, String>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let tls = tls_client_config(&settings.upstream_ca)?;
    let connector = ResolveConnector {
        resolver: settings.resolver.clone(),
        timeout: settings.connect_timeout,
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
                return UpstreamError::new(
                    UpstreamFailure::Tls,
                    format!("TLS handshake with upstream {target} failed: {tls}"),
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
    fn resolve_overrides_only_the_named_host_and_port() {
        let r = Resolver::new(
            vec![ResolveRule::parse("api.openai.com:443:127.0.0.1:9443").unwrap()],
            Arc::default(),
        );
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
        let r = Resolver::new(vec![], Arc::new(local_allowed()));
        let err = r
            .connect("127.0.0.1", port, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert_eq!(err.kind, UpstreamFailure::Connect);
        assert_eq!(err.status(), http::StatusCode::BAD_GATEWAY);
        assert!(err.message.contains(&port.to_string()), "{err}");
    }

    fn local_allowed() -> Destinations {
        Destinations {
            allow_local: true,
            ..Destinations::default()
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    // See: veil#10
    #[test]
    fn loopback_link_local_and_unspecified_targets_are_refused() {
        let d = Destinations::default();
        for refused in [
            "127.0.0.1:80",
            "127.8.9.10:8080",
            "[::1]:443",
            "[::ffff:127.0.0.1]:80",
            "0.0.0.0:80",
            "0.1.2.3:80",
            "[::]:80",
            "169.254.169.254:80",
            "[fe80::1]:443",
        ] {
            assert!(d.refusal(addr(refused)).is_some(), "{refused}");
        }
        for allowed in [
            "93.184.216.34:443",
            "10.0.0.5:443",
            "192.168.1.2:443",
            "[2606:4700::1]:443",
            "[fd00::1]:443",
        ] {
            assert_eq!(d.refusal(addr(allowed)), None, "{allowed}");
        }
        let open = local_allowed();
        assert_eq!(open.refusal(addr("127.0.0.1:80")), None);
        assert_eq!(open.refusal(addr("169.254.169.254:80")), None);
    }

    // See: veil#10
    #[test]
    fn veils_own_listeners_are_refused_even_with_allow_local_targets() {
        let d = Destinations {
            own: vec![addr("127.0.0.1:9901")],
            ..local_allowed()
        };
        d.set_bound(addr("0.0.0.0:9900"));
        assert!(d.refusal(addr("127.0.0.1:9901")).is_some(), "admin");
        assert_eq!(d.refusal(addr("127.0.0.1:9902")), None);
        // The admin API on 127.0.0.1: 0.0.0.0 and :: reach it too (Linux connects them to
        // loopback). See: veil#10 (review).
        for via in ["0.0.0.0:9901", "[::]:9901"] {
            assert!(d.refusal(addr(via)).is_some(), "{via}");
        }
        // Listening on 0.0.0.0: loopback, unspecified and every local address reach it.
        for own in [
            "127.0.0.1:9900",
            "127.1.2.3:9900",
            "0.0.0.0:9900",
            "[::ffff:127.0.0.1]:9900",
        ] {
            assert!(d.refusal(addr(own)).is_some(), "{own}");
        }
        assert_eq!(
            d.refusal(addr("192.0.2.1:9900")),
            None,
            "not a local address"
        );
    }

    // See: veil#10
    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_refused_at_connect() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let r = Resolver::new(vec![], Arc::default());
        // `localhost` resolves to loopback: refused after resolving, before connecting.
        let err = r
            .connect("localhost", port, Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(err.refused, "{err}");
        assert_eq!(err.status(), http::StatusCode::FORBIDDEN);
        assert_eq!(err.code(), "destination_refused");
        assert!(err.message.contains("loopback"), "{err}");
        // A literal is refused without any lookup, and explicitly named destinations pass.
        assert!(r.check_literal("127.0.0.1", port).unwrap_err().refused);
        assert!(r.check_literal("api.openai.com", 443).is_ok());
        let rule = ResolveRule::parse(&format!("localhost:{port}:127.0.0.1:{port}")).unwrap();
        let r = Resolver::new(vec![rule], Arc::default());
        r.connect("localhost", port, Duration::from_secs(2))
            .await
            .expect("a --resolve rule is explicit");
        let routed = Destinations {
            explicit: vec![("127.0.0.1".into(), port)],
            ..Destinations::default()
        };
        let r = Resolver::new(vec![], Arc::new(routed));
        assert!(r.check_literal("127.0.0.1", port).is_ok());
        r.connect("127.0.0.1", port, Duration::from_secs(2))
            .await
            .expect("a configured gateway route is explicit");
    }

    #[test]
    fn only_configured_routes_are_explicit() {
        let config = crate::config::Config::resolve(
            None,
            crate::config::RawConfig {
                routes: Some([("local".to_string(), "http://127.0.0.1:11434".to_string())].into()),
                ..Default::default()
            },
        )
        .unwrap();
        let d = Destinations::of(&config);
        assert!(d.is_explicit("127.0.0.1", 11434));
        assert!(
            !d.is_explicit("api.openai.com", 443),
            "built-in routes are not"
        );
        assert!(!d.is_explicit("127.0.0.1", 11435));
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
