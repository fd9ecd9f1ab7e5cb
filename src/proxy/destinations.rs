//! # Destinations: where veil may connect on an app's behalf, and the one way it connects.
//!
//! Every connection veil opens for an app, a blind tunnel's or the pooled upstream client's
//! (through [`ResolveConnector`](super::upstream::ResolveConnector)), goes through
//! [`Resolver::connect`], which applies `--resolve` overrides and the [`Destinations`] policy:
//! a name is resolved once, each address is checked (no loopback, link-local or unspecified
//! address, none of veil's own listeners, unless the operator said so), and veil connects to
//! an address it checked, so a DNS answer that changes between a check and a connect
//! (rebinding) cannot slip through. [`route`](super::route) asks
//! [`Resolver::check_literal`] first, so a refused IP literal costs no leaf and no recording.
//!
//! Built once, by [`ProxySettings::from_config`](super::ProxySettings::from_config). It hands
//! on a connected `TcpStream` or an [`UpstreamError`] (`refused` for a destination veil will
//! not reach); it never reads or writes a byte on the stream.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::config::{GatewayRoute, ResolveRule};
use crate::exchange::UpstreamFailure;

use super::upstream::UpstreamError;

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
    /// The policy for `allow_local` (`allow_local_targets`), the gateway `routes` (those the
    /// operator configured are explicit destinations; the built-in ones are not) and veil's
    /// own `listeners` known before it listens (a port-0 one is left out: its address is
    /// known from [`Destinations::set_bound`]).
    pub fn new(
        allow_local: bool,
        routes: &BTreeMap<String, GatewayRoute>,
        listeners: &[SocketAddr],
    ) -> Destinations {
        let builtin: Vec<GatewayRoute> = crate::exchange::providers::gateways()
            .filter_map(|g| GatewayRoute::parse(g.name, g.base).ok())
            .collect();
        let explicit = routes
            .values()
            .filter(|r| !builtin.contains(r))
            .map(|r| (r.host.clone(), r.port))
            .collect();
        let own = listeners
            .iter()
            .copied()
            .filter(|a| a.port() != 0)
            .collect();
        Destinations {
            allow_local,
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

#[cfg(test)]
#[path = "destinations_tests.rs"]
mod tests;
