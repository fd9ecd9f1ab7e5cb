//! # Proxy settings: the part of [`Config`] the proxy reads.
//!
//! Built once, in [`ProxySettings::from_config`], before the proxy serves; never changed
//! afterwards. Everything under `proxy/` reads these instead of the whole [`Config`], so what
//! the hot path depends on is listed in one struct (and a test can build one without rules,
//! keys or exporter settings). The settings of the stages are built here too: the connection
//! clock's [`conn::Limits`], the destination policy ([`Destinations`], inside the
//! [`Resolver`]) and the CA's [`CaScope`]. This is the only file under `src/proxy/` that
//! names `Config` (`tests/architecture.rs` fails on any other). This module never opens a
//! socket and never reads a file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Audit, Config, HostPattern};

use super::ca::CaScope;
use super::conn;
use super::destinations::{Destinations, Resolver};
use super::error::ProxyError;
use super::route::{self, Target};

/// What the proxy needs from the configuration: where it listens, what it intercepts and may
/// reach, its clocks and its limits.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Proxy listen address, as configured (may say port 0; named in the gateway's 404).
    pub listen: SocketAddr,
    /// Hosts whose TLS is terminated and whose exchanges are recorded.
    pub intercept: Vec<HostPattern>,
    /// A new CA is name-constrained to `intercept` ([`ProxySettings::ca_scope`]).
    pub ca_name_constraints: bool,
    /// Ports CONNECT and absolute-form requests may reach.
    pub allow_ports: Vec<u16>,
    /// Gateway routes by name (`/NAME/...`), each one's upstream built once, here
    /// ([`route::gateway_target`]).
    pub gateways: BTreeMap<String, Result<Target, ProxyError>>,
    /// What happens when an exchange cannot be recorded.
    pub audit: Audit,
    /// How long an `audit = "required"` request waits for room in the recording queue.
    pub queue_wait: Duration,
    /// Bytes of each body kept for the record, per side.
    pub capture_limit: usize,
    /// PEM files trusted for upstream TLS besides the web roots.
    pub upstream_ca: Vec<PathBuf>,
    /// Time allowed to connect to an upstream.
    pub connect_timeout: Duration,
    /// Time allowed for an upstream's response headers.
    pub upstream_timeout: Duration,
    /// Time allowed for the TLS handshake with an app.
    pub handshake_timeout: Duration,
    /// A blind tunnel carrying nothing either way this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// Time in-flight exchanges get after shutdown begins.
    pub drain_timeout: Duration,
    /// Client connections served at once (the rest wait in the kernel's backlog).
    pub max_connections: usize,
    /// Head-read and idle limits of app connections.
    pub limits: conn::Limits,
    /// `--resolve` overrides and the destination policy ([`Destinations`]).
    pub resolver: Resolver,
}

impl ProxySettings {
    /// The proxy's settings from the resolved `config` (the one place the proxy reads it).
    pub fn from_config(config: &Config) -> ProxySettings {
        ProxySettings {
            listen: config.listen,
            intercept: config.intercept.clone(),
            ca_name_constraints: config.ca_name_constraints,
            allow_ports: config.allow_ports.clone(),
            gateways: config
                .routes
                .iter()
                .map(|(name, r)| (name.clone(), route::gateway_target(r)))
                .collect(),
            audit: config.audit,
            queue_wait: config.queue_wait,
            capture_limit: config.capture_limit,
            upstream_ca: config.upstream_ca.clone(),
            connect_timeout: config.connect_timeout,
            upstream_timeout: config.upstream_timeout,
            handshake_timeout: config.handshake_timeout,
            tunnel_idle_timeout: config.tunnel_idle_timeout,
            drain_timeout: config.drain_timeout,
            max_connections: config.max_connections,
            limits: conn::Limits {
                header_read: config.header_read_timeout,
                idle: config.idle_timeout,
            },
            resolver: Resolver::new(
                config.resolve.clone(),
                Arc::new(Destinations::new(
                    config.allow_local_targets,
                    &config.routes,
                    &[
                        Some(config.listen),
                        config.admin_listen,
                        config.metrics_listen,
                    ]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>(),
                )),
            ),
        }
    }

    /// The hosts veil's CA is for, and whether a new one is name-constrained to them: what
    /// [`CertificateAuthority::load_or_create`](super::CertificateAuthority::load_or_create)
    /// reads (`veil run`, `veil ca path` and `veil env` alike).
    pub fn ca_scope(&self) -> CaScope<'_> {
        CaScope {
            hosts: &self.intercept,
            constrain: self.ca_name_constraints,
        }
    }

    /// True when `host:port` is intercepted: an intercept pattern matches it. `host` must be
    /// lowercase already (the router lowercases what the app sent). The one place this rule
    /// lives: `Config` only holds the patterns (before veil#11 it kept a copy of this method).
    pub fn is_intercepted(&self, host: &str, port: u16) -> bool {
        self.intercept.iter().any(|p| p.matches(host, port))
    }

    /// True when CONNECT or an absolute-form request may reach `port` of `host`: an allowed
    /// port, or an intercept pattern naming this port (`llm.internal:8443` opens 8443 for that
    /// host only). `host` lowercase, as for [`ProxySettings::is_intercepted`].
    pub fn is_port_allowed(&self, host: &str, port: u16) -> bool {
        self.allow_ports.contains(&port)
            || self
                .intercept
                .iter()
                .any(|p| p.port == Some(port) && p.matches(host, port))
    }
}

#[cfg(test)]
impl ProxySettings {
    /// The settings `raw` resolves to, as `veil run` would resolve them (for the stages' unit
    /// tests, which describe their input as a `RawConfig`).
    pub(crate) fn from_raw(raw: crate::config::RawConfig) -> ProxySettings {
        ProxySettings::from_config(&Config::resolve(None, raw).expect("test config resolves"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;
    use crate::exchange;

    fn config(raw: RawConfig) -> Config {
        Config::resolve(None, raw).expect("test config resolves")
    }

    #[test]
    fn intercept_and_port_rules_follow_the_patterns() {
        let c = config(RawConfig {
            intercept: Some(vec!["api.openai.com".into(), "llm.internal:8443".into()]),
            ..RawConfig::default()
        });
        let s = ProxySettings::from_config(&c);
        // (host, port, intercepted, port allowed); `allow_ports` is the default `[443]`.
        for (host, port, intercepted, allowed) in [
            ("api.openai.com", 443, true, true),
            // Hosts arrive lowercased from the router; the rule does not lowercase again.
            ("API.OPENAI.COM", 443, false, true),
            ("llm.internal", 8443, true, true),
            ("llm.internal", 443, false, true),
            ("example.com", 443, false, true),
            ("example.com", 8443, false, false),
            // A pattern without a port intercepts every port but opens none.
            ("api.openai.com", 22, true, false),
        ] {
            assert_eq!(s.is_intercepted(host, port), intercepted, "{host}:{port}");
            assert_eq!(s.is_port_allowed(host, port), allowed, "{host}:{port}");
        }
        // Each gateway route's target, built once here, is the one its base URL names.
        assert!(!c.routes.is_empty(), "the default routes");
        assert_eq!(
            s.gateways.keys().collect::<Vec<_>>(),
            c.routes.keys().collect::<Vec<_>>()
        );
        for (name, r) in &c.routes {
            let t = s.gateways[name]
                .as_ref()
                .expect("a parsed base URL makes a target");
            assert_eq!(
                (
                    t.scheme,
                    t.host.as_str(),
                    t.port,
                    t.prefix.as_str(),
                    t.record
                ),
                (
                    r.scheme.as_str(),
                    r.host.as_str(),
                    r.port,
                    r.prefix.as_str(),
                    true
                )
            );
            assert_eq!(t.route, exchange::Route::Gateway { name: name.clone() });
        }
        assert_eq!(
            s.limits,
            conn::Limits {
                header_read: c.header_read_timeout,
                idle: c.idle_timeout,
            }
        );
        let scope = s.ca_scope();
        assert_eq!(scope.hosts, &c.intercept[..]);
        assert_eq!(scope.constrain, c.ca_name_constraints);
    }

    #[test]
    fn default_config_intercepts_the_provider_hosts() {
        // Moved from `config::tests::defaults_and_overlay` when `Config`'s copy of the rule went.
        let c = config(RawConfig {
            listen: Some("127.0.0.1:9100".into()),
            ..RawConfig::default()
        });
        let s = ProxySettings::from_config(&c);
        assert!(s.is_intercepted("api.openai.com", 443));
        assert!(s.is_intercepted("x.openai.azure.com", 443));
        assert!(!s.is_intercepted("example.com", 443));
        assert!(s.is_port_allowed("example.com", 443));
        assert!(!s.is_port_allowed("example.com", 22));
    }
}
