//! # Route: what a request on the proxy port asks for, decided without sockets.
//!
//! The listener hands every request head on the proxy port to [`route`], which answers with
//! one [`Route`]: a blind tunnel, an interception, a forward (absolute-form or gateway), or a
//! rejection carrying the status, code and message veil answers with. It is a pure function
//! of the head and the [`ProxySettings`]: it never opens a socket, never resolves a name
//! (names are checked when they resolve, in
//! [`Resolver::connect`](super::destinations::Resolver::connect)), never counts and never
//! logs; the caller does those with the route in hand.
//!
//! The rules, in order:
//! - `CONNECT host:port`: a missing target or port is 400 `bad_request`, a bad port 400
//!   `bad_port` (RFC 9110 §9.3.6: the target is host:port, never a default port); then the
//!   destination rules below; then intercepted hosts are intercepted, others tunnelled.
//! - `GET http://host/…` (absolute form): only `http` and `https` (else 400 `bad_request`), a
//!   bad port 400 `bad_port`, then the destination rules; recorded if the host is intercepted.
//! - anything else is a gateway path `/NAME/rest`: an unknown `NAME` is 404 `no_route`.
//!
//! Destination rules (CONNECT and absolute form alike, veil#10): the port must be allowed
//! (else 403 `port_not_allowed`) and an IP literal must be an address veil may reach for apps
//! (else 403 `destination_refused`). Both refusals are counted as refused by the caller.

use std::borrow::Cow;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, StatusCode, Uri};

use crate::config::{GatewayRoute, authority_port};
use crate::exchange;

use super::error::ProxyError;
use super::settings::ProxySettings;

/// The part of a request [`route`] reads: its method and target.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The request method.
    pub method: &'a Method,
    /// The request target as received (authority form for CONNECT).
    pub uri: &'a Uri,
}

impl<'a> RequestHead<'a> {
    /// The head of `req`.
    pub fn of<B>(req: &'a http::Request<B>) -> Self {
        RequestHead {
            method: req.method(),
            uri: req.uri(),
        }
    }
}

/// What veil does with one request on the proxy port (`'s`: the [`ProxySettings`] it was
/// decided under, which hold each gateway route's [`Target`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route<'s> {
    /// CONNECT to an intercepted host: answer 200, then terminate TLS with a minted leaf.
    Intercept {
        /// The CONNECT host, lowercase, without IPv6 brackets.
        host: String,
        /// The CONNECT port.
        port: u16,
    },
    /// CONNECT to any other allowed host: connect upstream, answer 200, copy bytes blind.
    Tunnel {
        /// The CONNECT host, lowercase, without IPv6 brackets.
        host: String,
        /// The CONNECT port.
        port: u16,
    },
    /// Send the request upstream (absolute form or a gateway route).
    Forward {
        /// Where it goes and whether it is recorded: a gateway route's, built when the
        /// settings were, or an absolute-form request's own.
        target: Cow<'s, Target>,
        /// Path and query to send upstream, after [`Target::prefix`]: the request's own,
        /// shared, for an absolute-form request.
        path_and_query: PathAndQuery,
    },
    /// Answer with veil's own error and go nowhere.
    Reject(ProxyError),
}

/// Where a forwarded request goes and whether it is recorded. Built by [`Target::new`],
/// which also parses the upstream authority once, for every request sent to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `http` or `https`.
    pub scheme: &'static str,
    /// Upstream host, without IPv6 brackets.
    pub host: String,
    /// Upstream port.
    pub port: u16,
    /// Path prefix of a gateway route's base URL (empty otherwise).
    pub prefix: String,
    /// How the exchange reached veil, for the record.
    pub route: exchange::Route,
    /// Whether the exchange is recorded.
    pub record: bool,
    /// `host[:port]` as sent upstream: IPv6 in brackets, the port only when it is not the
    /// scheme's default. A clone shares its bytes.
    authority: Authority,
}

impl Target {
    /// The target `scheme://host:port` + `prefix` (`scheme` is `https` or anything else for
    /// `http`; `host` lowercase, without IPv6 brackets).
    ///
    /// # Errors
    /// veil's 400 `bad_request` when `host` and `port` do not make a URI authority.
    pub fn new(
        scheme: &str,
        host: String,
        port: u16,
        prefix: String,
        route: exchange::Route,
        record: bool,
    ) -> Result<Target, ProxyError> {
        let scheme = if scheme == "https" { "https" } else { "http" };
        let default_port = if scheme == "https" { 443 } else { 80 };
        let bracketed = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let authority = if port == default_port {
            bracketed
        } else {
            format!("{bracketed}:{port}")
        };
        let authority = Authority::try_from(authority).map_err(|e| bad_url(&e))?;
        Ok(Target {
            scheme,
            host,
            port,
            prefix,
            route,
            record,
            authority,
        })
    }

    /// The upstream URL for `path_and_query` (the gateway prefix already applied): the
    /// target's scheme and authority (see [`Target::new`]), nothing parsed or copied again.
    ///
    /// # Errors
    /// veil's 400 answer when the parts do not make a URI (a path that is not one).
    pub fn upstream_uri(&self, path_and_query: PathAndQuery) -> Result<Uri, ProxyError> {
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(if self.scheme == "https" {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        });
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).map_err(|e| bad_url(&e))
    }

    /// `path_and_query` under the gateway prefix: the same part, not copied, when there is
    /// no prefix.
    ///
    /// # Errors
    /// veil's 400 answer when prefix and path do not make a path.
    pub fn with_prefix(&self, path_and_query: PathAndQuery) -> Result<PathAndQuery, ProxyError> {
        if self.prefix.is_empty() {
            return Ok(path_and_query);
        }
        PathAndQuery::try_from(format!("{}{path_and_query}", self.prefix)).map_err(|e| bad_url(&e))
    }
}

/// veil's 400 for an upstream URL that cannot be built from a request's parts.
fn bad_url(e: &dyn std::fmt::Display) -> ProxyError {
    ProxyError::internal(
        StatusCode::BAD_REQUEST,
        "bad_request",
        format!("cannot build upstream URL: {e}"),
    )
}

/// Decides what the request with `head` is, under `settings` (see the module docs).
pub fn route<'s>(head: RequestHead<'_>, settings: &'s ProxySettings) -> Route<'s> {
    if head.method == Method::CONNECT {
        return connect(head.uri, settings);
    }
    if head.uri.scheme().is_some() && head.uri.authority().is_some() {
        return absolute(head.uri, settings);
    }
    gateway(head.uri, settings)
}

fn connect(uri: &Uri, settings: &ProxySettings) -> Route<'static> {
    let Some(authority) = uri.authority() else {
        return Route::Reject(ProxyError::bad_request(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "CONNECT needs host:port".to_string(),
        ));
    };
    let host = authority
        .host()
        .trim_matches(['[', ']'])
        .to_ascii_lowercase();
    // RFC 9110 §9.3.6: the target is host:port. A missing or bad port is the app's error,
    // never a default (`host:99999` used to become 443).
    let port = match authority_port(authority.as_str()) {
        Ok(Some(port)) => port,
        Ok(None) => {
            return Route::Reject(ProxyError::bad_request(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("CONNECT needs host:port, got {:?}", authority.as_str()),
            ));
        }
        Err(e) => {
            return Route::Reject(ProxyError::bad_request(
                StatusCode::BAD_REQUEST,
                "bad_port",
                format!("bad CONNECT target {:?}: {e}", authority.as_str()),
            ));
        }
    };
    if let Some(refusal) = refuse(settings, &host, port, "CONNECT") {
        return Route::Reject(refusal);
    }
    if settings.is_intercepted(&host, port) {
        Route::Intercept { host, port }
    } else {
        Route::Tunnel { host, port }
    }
}

/// `GET http://host/path` through the proxy: plain HTTP, recorded if the host is intercepted.
fn absolute(uri: &Uri, settings: &ProxySettings) -> Route<'static> {
    let scheme = match uri.scheme_str() {
        Some("http") => "http",
        Some("https") => "https",
        _ => {
            return Route::Reject(ProxyError::bad_request(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "only http:// and https:// URLs can be proxied".to_string(),
            ));
        }
    };
    let host = uri
        .host()
        .unwrap_or_default()
        .trim_matches(['[', ']'])
        .to_ascii_lowercase();
    let authority = uri.authority().map_or("", |a| a.as_str());
    let port = match authority_port(authority) {
        Ok(port) => port.unwrap_or(if scheme == "https" { 443 } else { 80 }),
        Err(e) => {
            return Route::Reject(ProxyError::bad_request(
                StatusCode::BAD_REQUEST,
                "bad_port",
                format!("bad URL authority {authority:?}: {e}"),
            ));
        }
    };
    // The same rules as CONNECT: without them veil was an open proxy to any port of any
    // address it can reach, its own admin API included (veil#10).
    if let Some(refusal) = refuse(settings, &host, port, "a request") {
        return Route::Reject(refusal);
    }
    // The request's own parsed part: a clone shares its bytes.
    let path_and_query = uri
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let record = settings.is_intercepted(&host, port);
    match Target::new(
        scheme,
        host,
        port,
        String::new(),
        exchange::Route::PlainHttp,
        record,
    ) {
        Ok(target) => Route::Forward {
            target: Cow::Owned(target),
            path_and_query,
        },
        Err(e) => Route::Reject(e),
    }
}

/// `/NAME/rest` → the route's base URL + `/rest`, to the route's [`Target`] as the settings
/// hold it (nothing built per request).
fn gateway<'s>(uri: &Uri, settings: &'s ProxySettings) -> Route<'s> {
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let trimmed = pq.trim_start_matches('/');
    let name_end = trimmed.find(['/', '?']).unwrap_or(trimmed.len());
    let name = &trimmed[..name_end];
    let Some(target) = settings.gateways.get(name) else {
        let names: Vec<&str> = settings.gateways.keys().map(String::as_str).collect();
        return Route::Reject(ProxyError::bad_request(
            StatusCode::NOT_FOUND,
            "no_route",
            format!(
                "no gateway route {name:?}; use http://{}/ROUTE/... with ROUTE one of: {} (or set HTTPS_PROXY to use veil as a proxy)",
                settings.listen,
                names.join(", ")
            ),
        ));
    };
    let rest = &trimmed[name_end..];
    let path_and_query = if rest.starts_with('/') {
        PathAndQuery::try_from(rest)
    } else {
        PathAndQuery::try_from(format!("/{rest}"))
    };
    let path_and_query = match path_and_query {
        Ok(pq) => pq,
        Err(e) => return Route::Reject(bad_url(&e)),
    };
    match target {
        Ok(target) => Route::Forward {
            target: Cow::Borrowed(target),
            path_and_query,
        },
        Err(e) => Route::Reject(e.clone()),
    }
}

/// The [`Target`] of gateway route `route`: always recorded, its name in the record. `Err` is
/// what a request to it is answered with, which [`GatewayRoute::parse`] rules out (its host
/// and port come from a parsed URI authority).
pub fn gateway_target(route: &GatewayRoute) -> Result<Target, ProxyError> {
    Target::new(
        &route.scheme,
        route.host.clone(),
        route.port,
        route.prefix.clone(),
        exchange::Route::Gateway {
            name: route.name.clone(),
        },
        true,
    )
}

/// The rules every proxied destination obeys, CONNECT or absolute-form: the port must be
/// allowed and the address one veil may reach for apps (checked here for IP literals, at
/// connect time for names). `Some` is veil's 403.
fn refuse(settings: &ProxySettings, host: &str, port: u16, what: &str) -> Option<ProxyError> {
    if !settings.is_port_allowed(host, port) {
        return Some(ProxyError::port_not_allowed(format!(
            "{what} to port {port} is not allowed (allowed: {:?}; see allow_ports)",
            settings.allow_ports
        )));
    }
    if let Err(e) = settings.resolver.check_literal(host, port) {
        return Some(ProxyError::upstream(&e));
    }
    None
}

#[cfg(test)]
#[path = "route_tests.rs"]
mod tests;
