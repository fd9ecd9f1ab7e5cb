//! # Configuration: TOML file, then flags, then environment, validated once.
//!
//! [`RawConfig`] is what a file or the command line says, every field optional; it only
//! parses. [`Config::resolve`] merges the layers (flags win over the file, the file over the
//! built-in defaults), checks every value and builds the resolved [`Config`] that the rest of
//! veil reads. A bad value is an error that names the key and what is wrong, before anything
//! starts listening.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// What the recording queue does when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Audit {
    /// Traffic always flows; an exchange that cannot be queued is dropped, counted and logged.
    #[default]
    BestEffort,
    /// A request that cannot be recorded is refused with 503 before it goes upstream.
    Required,
}

/// Every setting as a file or the flags state it: all optional, parsed but not yet checked.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Proxy listen address.
    pub listen: Option<String>,
    /// Rules file.
    pub rules: Option<PathBuf>,
    /// Keys directory.
    pub keys: Option<PathBuf>,
    /// Data directory.
    pub data: Option<PathBuf>,
    /// OTLP/HTTP base endpoint.
    pub otlp_endpoint: Option<String>,
    /// Hosts to intercept (`HOST[:PORT]`, `*.domain`, `@defaults`, `@vertex`, `@bedrock`); one or a list.
    #[serde(default, deserialize_with = "one_or_many")]
    pub intercept: Option<Vec<String>>,
    /// `HOST:PORT:ADDR[:PORT]` overrides; one or a list.
    #[serde(default, deserialize_with = "one_or_many")]
    pub resolve: Option<Vec<String>>,
    /// Extra PEM trust roots for upstream TLS; one or a list.
    #[serde(default, deserialize_with = "one_or_many")]
    pub upstream_ca: Option<Vec<PathBuf>>,
    /// Admin API listen address.
    pub admin_listen: Option<String>,
    /// Prometheus `/metrics` listen address.
    pub metrics_listen: Option<String>,
    /// Ports CONNECT and absolute-form requests may reach (default `[443]`); one or a list.
    #[serde(default, deserialize_with = "one_or_many")]
    pub allow_ports: Option<Vec<u16>>,
    /// Per-body capture limit (`32MiB`).
    pub capture_limit: Option<String>,
    /// `best-effort` or `required`.
    pub audit: Option<Audit>,
    /// Most exchanges in flight in recording (queued, being processed, or waiting for the
    /// exporter, the ledger or the sealed store).
    pub queue_capacity: Option<usize>,
    /// Most captured body bytes of the exchanges in flight in recording (`256MiB`).
    pub queue_max_bytes: Option<String>,
    /// How long an `audit = "required"` request waits for room in a full recording queue
    /// before its 503 (`2s`; `0s` refuses at once).
    pub queue_wait: Option<String>,
    /// Free space the data disk must keep (`256MiB`); below it recording is degraded.
    pub disk_reserve: Option<String>,
    /// Per-exchange redaction limits (`{ bytes = "8MiB", cpu = "1s" }`).
    pub redaction_budget: Option<RawBudget>,
    /// Most memory the memo of long texts' redactions holds (`4MiB`; `0` turns it off).
    pub redaction_memo: Option<String>,
    /// Upstream connect timeout (`10s`).
    pub connect_timeout: Option<String>,
    /// Time allowed for upstream response headers (`300s`).
    pub upstream_timeout: Option<String>,
    /// Bounded drain on shutdown (`10s`).
    pub drain_timeout: Option<String>,
    /// Maximum concurrent client connections.
    pub max_connections: Option<usize>,
    /// Gateway routes: name → base URL.
    pub routes: Option<BTreeMap<String, String>>,
    /// Sealed-store retention (`30d`).
    pub retention: Option<String>,
    /// Pricing file merged over the built-in `rules/pricing.toml`.
    pub pricing: Option<PathBuf>,
    /// Threads that parse, redact, export and seal (default: half the cores).
    pub pipeline_workers: Option<usize>,
    /// A CA created by this veil may sign only for the intercepted hosts (default true).
    pub ca_name_constraints: Option<bool>,
    /// Time allowed for an app's TLS handshake on an intercepted CONNECT (`10s`).
    pub handshake_timeout: Option<String>,
    /// Time allowed for a request head, from connection start or its first byte (`10s`).
    pub header_read_timeout: Option<String>,
    /// A client connection with no request in flight is closed after this (`120s`).
    pub idle_timeout: Option<String>,
    /// A blind CONNECT tunnel or a WebSocket session with no byte either way is closed after
    /// this (`10m`).
    pub tunnel_idle_timeout: Option<String>,
    /// Let apps reach loopback, link-local and unspecified addresses (default false).
    pub allow_local_targets: Option<bool>,
    /// Write the SQLite ledger `<data>/ledger.db` (default true).
    pub ledger: Option<bool>,
    /// Ledger content rows are deleted after this (`30d`).
    pub ledger_content_retention: Option<String>,
    /// Ledger exchange rows are deleted after this (`400d`); the daily rollup stays.
    pub ledger_retention: Option<String>,
    /// Past this size the ledger drops its oldest content, then its oldest rows (`2GiB`).
    pub ledger_max_size: Option<String>,
    /// Also write records as OTLP/JSON lines under `<data>/records/` when no OTLP endpoint
    /// is set (default false).
    pub records_files: Option<bool>,
    /// Bearer token apps present to `POST /veil/v1/feedback` when veil listens beyond
    /// loopback (the admin token works too). Never logged.
    pub feedback_token: Option<Secret>,
}

/// A secret text from the config (`feedback_token`): its `Debug` never shows it, so a
/// logged config cannot leak it. Compared through [`Secret::verify`] only.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret with this text (tests, flags).
    pub fn new(text: impl Into<String>) -> Self {
        Secret(text.into())
    }

    /// Constant-time check of a presented secret: compares BLAKE3 digests (whose `==` is
    /// constant-time), as the admin token does, so neither content nor length leaks.
    pub fn verify(&self, presented: &str) -> bool {
        blake3::hash(presented.as_bytes()) == blake3::hash(self.0.as_bytes())
    }

    /// Whether it is empty (an empty `feedback_token` is refused at startup).
    pub fn is_empty(&self) -> bool {
        self.0.trim().is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl RawConfig {
    /// Reads a TOML config file. Errors name the file, line and column.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| {
            let (line, col) = e.span().map(|s| line_col(&text, s.start)).unwrap_or((0, 0));
            // toml's message says what is wrong with a value, not whose value it is.
            let key = text
                .lines()
                .nth(line.saturating_sub(1))
                .and_then(|l| l.split_once('='))
                .map(|(k, _)| k.trim())
                .filter(|k| !k.is_empty() && !e.message().contains(k))
                .map_or(String::new(), |k| format!(" (key {k})"));
            ConfigError(format!(
                "{}:{line}:{col}: {}{key}",
                path.display(),
                e.message()
            ))
        })
    }

    /// Overlays `other` on `self`: every field `other` sets wins.
    pub fn overlay(self, other: RawConfig) -> RawConfig {
        RawConfig {
            listen: other.listen.or(self.listen),
            rules: other.rules.or(self.rules),
            keys: other.keys.or(self.keys),
            data: other.data.or(self.data),
            otlp_endpoint: other.otlp_endpoint.or(self.otlp_endpoint),
            intercept: other.intercept.or(self.intercept),
            resolve: other.resolve.or(self.resolve),
            upstream_ca: other.upstream_ca.or(self.upstream_ca),
            admin_listen: other.admin_listen.or(self.admin_listen),
            metrics_listen: other.metrics_listen.or(self.metrics_listen),
            allow_ports: other.allow_ports.or(self.allow_ports),
            capture_limit: other.capture_limit.or(self.capture_limit),
            audit: other.audit.or(self.audit),
            queue_capacity: other.queue_capacity.or(self.queue_capacity),
            queue_max_bytes: other.queue_max_bytes.or(self.queue_max_bytes),
            queue_wait: other.queue_wait.or(self.queue_wait),
            disk_reserve: other.disk_reserve.or(self.disk_reserve),
            redaction_memo: other.redaction_memo.or(self.redaction_memo),
            redaction_budget: match (self.redaction_budget, other.redaction_budget) {
                (Some(a), Some(b)) => Some(RawBudget {
                    bytes: b.bytes.or(a.bytes),
                    cpu: b.cpu.or(a.cpu),
                }),
                (a, b) => b.or(a),
            },
            connect_timeout: other.connect_timeout.or(self.connect_timeout),
            upstream_timeout: other.upstream_timeout.or(self.upstream_timeout),
            drain_timeout: other.drain_timeout.or(self.drain_timeout),
            max_connections: other.max_connections.or(self.max_connections),
            routes: match (self.routes, other.routes) {
                (Some(mut a), Some(b)) => {
                    a.extend(b);
                    Some(a)
                }
                (a, b) => b.or(a),
            },
            retention: other.retention.or(self.retention),
            pricing: other.pricing.or(self.pricing),
            pipeline_workers: other.pipeline_workers.or(self.pipeline_workers),
            ca_name_constraints: other.ca_name_constraints.or(self.ca_name_constraints),
            handshake_timeout: other.handshake_timeout.or(self.handshake_timeout),
            header_read_timeout: other.header_read_timeout.or(self.header_read_timeout),
            idle_timeout: other.idle_timeout.or(self.idle_timeout),
            tunnel_idle_timeout: other.tunnel_idle_timeout.or(self.tunnel_idle_timeout),
            allow_local_targets: other.allow_local_targets.or(self.allow_local_targets),
            ledger: other.ledger.or(self.ledger),
            ledger_content_retention: other
                .ledger_content_retention
                .or(self.ledger_content_retention),
            ledger_retention: other.ledger_retention.or(self.ledger_retention),
            ledger_max_size: other.ledger_max_size.or(self.ledger_max_size),
            records_files: other.records_files.or(self.records_files),
            feedback_token: other.feedback_token.or(self.feedback_token),
        }
    }
}

/// The keys of [`RawConfig`] that hold a list, each of which also takes a single value
/// (`upstream_ca = "ca.pem"` reads as `["ca.pem"]`), as the flag does once or repeated.
pub const LIST_KEYS: [&str; 4] = ["intercept", "resolve", "upstream_ca", "allow_ports"];

/// Reads a list key of the file from one value or an array of them. A dedicated visitor
/// rather than `#[serde(untagged)]`: an untagged enum replaces the element's own error
/// (`invalid value: integer 99999, expected u16`) with "did not match any variant", and
/// the operator would lose what is wrong.
fn one_or_many<'de, D, T>(d: D) -> Result<Option<Vec<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    use serde::de::{self, IntoDeserializer};

    struct OneOrMany<T>(std::marker::PhantomData<T>);

    impl<'de, T: Deserialize<'de>> de::Visitor<'de> for OneOrMany<T> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("one value or an array of values")
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Vec<T>, A::Error> {
            Vec::<T>::deserialize(de::value::SeqAccessDeserializer::new(seq))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Vec<T>, E> {
            T::deserialize(v.into_deserializer()).map(|one| vec![one])
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Vec<T>, E> {
            T::deserialize(v.into_deserializer()).map(|one| vec![one])
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Vec<T>, E> {
            T::deserialize(v.into_deserializer()).map(|one| vec![one])
        }
    }

    d.deserialize_any(OneOrMany(std::marker::PhantomData))
        .map(Some)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// `redaction_budget = { bytes = "8MiB", cpu = "1s" }` as the file states it (either part may
/// be left out: it keeps its default).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    /// Most bytes of text redacted per exchange.
    pub bytes: Option<String>,
    /// Most CPU time spent redacting one exchange.
    pub cpu: Option<String>,
}

/// A configuration error: says which key and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

fn bad(key: &str, why: impl fmt::Display) -> ConfigError {
    ConfigError(format!("{key}: {why}"))
}

/// One host pattern of the intercept set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    /// Lowercase host, or the domain after `*.` when `wildcard`.
    pub host: String,
    /// `*.domain`: any subdomain of `host` matches.
    pub wildcard: bool,
    /// Only this port matches, when set.
    pub port: Option<u16>,
}

impl HostPattern {
    /// Parses `HOST`, `HOST:PORT`, `*.DOMAIN` or `*.DOMAIN:PORT`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let (host, port) = match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (
                h.to_string(),
                Some(p.parse::<u16>().map_err(|_| format!("bad port in {s:?}"))?),
            ),
            _ => (s.clone(), None),
        };
        let (host, wildcard) = match host.strip_prefix("*.") {
            Some(rest) => (rest.to_string(), true),
            None => (host, false),
        };
        if host.is_empty()
            || host.contains('*')
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        {
            return Err(format!("bad host pattern {s:?}"));
        }
        Ok(HostPattern {
            host,
            wildcard,
            port,
        })
    }

    /// True when `host:port` (host lowercase) matches.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        if self.wildcard {
            host.len() > self.host.len() + 1
                && host.ends_with(&self.host)
                && host.as_bytes()[host.len() - self.host.len() - 1] == b'.'
        } else {
            host == self.host
        }
    }
}

/// One `--resolve HOST:PORT:ADDR[:PORT]` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolveRule {
    /// Host the app addresses (lowercase).
    pub host: String,
    /// Port the app addresses.
    pub port: u16,
    /// Where veil connects instead.
    pub target: SocketAddr,
}

impl ResolveRule {
    /// Parses `HOST:PORT:ADDR[:PORT]`; IPv6 addresses go in brackets (`[::1]`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let err = || format!("expected HOST:PORT:ADDR[:PORT], got {s:?}");
        let (host, rest) = s.split_once(':').ok_or_else(err)?;
        let (port, addr) = rest.split_once(':').ok_or_else(err)?;
        let port: u16 = port.parse().map_err(|_| err())?;
        let target = if let Ok(ip) = addr.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
            SocketAddr::new(ip, port)
        } else {
            addr.parse::<SocketAddr>().map_err(|_| err())?
        };
        if host.is_empty() {
            return Err(err());
        }
        Ok(ResolveRule {
            host: host.to_ascii_lowercase(),
            port,
            target,
        })
    }
}

/// A gateway route: `/name/...` → `base` + `...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRoute {
    /// The first path segment.
    pub name: String,
    /// `http` or `https`.
    pub scheme: String,
    /// Upstream host.
    pub host: String,
    /// Upstream port.
    pub port: u16,
    /// Path prefix on the upstream (no trailing slash; may be empty).
    pub prefix: String,
}

impl GatewayRoute {
    /// Parses route `name` with base URL `base` (`http[s]://host[:port][/prefix]`). A port
    /// that is not a number in 1..=65535 is an error, never the scheme's default.
    pub fn parse(name: &str, base: &str) -> Result<Self, String> {
        let uri: http::Uri = base.parse().map_err(|e| format!("{base:?}: {e}"))?;
        let scheme = uri
            .scheme_str()
            .filter(|s| *s == "https" || *s == "http")
            .ok_or_else(|| format!("{base:?}: scheme must be http or https"))?
            .to_string();
        let host = uri
            .host()
            .ok_or_else(|| format!("{base:?}: no host"))?
            .to_ascii_lowercase();
        let authority = uri.authority().map_or("", |a| a.as_str());
        let port = authority_port(authority)
            .map_err(|e| format!("{base:?}: {e}"))?
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        if name.is_empty() || name.contains('/') {
            return Err(format!("bad route name {name:?}"));
        }
        if name == "veil" {
            return Err(
                "route name \"veil\" is reserved: /veil/ is veil's own API (POST /veil/v1/feedback); pick another name".to_string(),
            );
        }
        Ok(GatewayRoute {
            name: name.to_string(),
            scheme,
            host,
            port,
            prefix: uri.path().trim_end_matches('/').to_string(),
        })
    }
}

/// The port of an authority (`host`, `host:port`, `[v6]:port`, `user@host:port`): `Ok(None)`
/// when there is none (or it is empty, which RFC 3986 §3.2.3 reads as the scheme's default),
/// an error when it is not a decimal number in 1..=65535.
///
/// `http::uri::Authority::port_u16` answers `None` for `host:99999` too, and a caller that then
/// falls back to a default sends traffic to a port nobody asked for (veil#10); this tells the
/// two apart.
pub fn authority_port(authority: &str) -> Result<Option<u16>, String> {
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let port = if let Some(rest) = hostport.strip_prefix('[') {
        let (_, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("unterminated IPv6 address in {authority:?}"))?;
        match after {
            "" => return Ok(None),
            _ => after.strip_prefix(':').ok_or_else(|| {
                format!("unexpected {after:?} after the address in {authority:?}")
            })?,
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((_, p)) => p,
            None => return Ok(None),
        }
    };
    if port.is_empty() {
        return Ok(None);
    }
    // Digits only: `u16::from_str` would also take a leading `+`.
    if !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("port {port:?} is not a number"));
    }
    match port.parse::<u16>() {
        Ok(0) => Err("port 0 is not a destination".to_string()),
        Ok(p) => Ok(Some(p)),
        Err(_) => Err(format!("port {port} is out of range (1-65535)")),
    }
}

/// The resolved configuration: every value checked, every default applied.
#[derive(Debug, Clone)]
pub struct Config {
    /// Proxy listen address (default `127.0.0.1:8080`).
    pub listen: SocketAddr,
    /// Rules file (default `rules/default.toml`).
    pub rules: PathBuf,
    /// True when no rules file was named: a missing `rules/default.toml` then falls back to
    /// the copy built into the binary instead of failing.
    pub rules_is_default: bool,
    /// Keys directory (default `./keys`).
    pub keys: PathBuf,
    /// Data directory (default `./data`).
    pub data: PathBuf,
    /// OTLP/HTTP base endpoint (flag, file, then `OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub otlp_endpoint: Option<String>,
    /// Hosts to intercept.
    pub intercept: Vec<HostPattern>,
    /// Connection overrides.
    pub resolve: Vec<ResolveRule>,
    /// Extra PEM trust roots for upstream TLS.
    pub upstream_ca: Vec<PathBuf>,
    /// Admin API address, off when `None`.
    pub admin_listen: Option<SocketAddr>,
    /// Prometheus `GET /metrics` address, off when `None` (see `docs/metrics.md`).
    pub metrics_listen: Option<SocketAddr>,
    /// Ports CONNECT and absolute-form (`GET http://host:port/`) requests may reach; intercept
    /// patterns with a port are allowed too. Gateway routes are not subject to it (the operator
    /// named their ports).
    pub allow_ports: Vec<u16>,
    /// Per-body capture limit in bytes (default 32 MiB).
    pub capture_limit: usize,
    /// Recording queue policy.
    pub audit: Audit,
    /// Most exchanges in flight in recording (default 4096), end to end: an exchange holds
    /// its place from hand-off until its record and its sealed frame are freed
    /// ([`crate::exchange::queue`]). Under `audit = "required"` a request holds its place
    /// from its arrival, so there this also bounds requests in flight.
    pub queue_capacity: usize,
    /// Most captured body bytes of the exchanges in flight in recording, held as long as their
    /// places (default 256 MiB): past it, best-effort drops (counted) and audit-required
    /// waits, then refuses (503).
    pub queue_max_bytes: usize,
    /// How long an `audit = "required"` request waits for room in a full recording queue
    /// (either bound) before veil answers 503 (default 2 s; zero refuses at once). The wait
    /// is back-pressure: a saturated recorder slows traffic instead of failing it.
    pub queue_wait: Duration,
    /// Free space the data disk must keep (default 256 MiB). Below it recording counts as
    /// degraded: `/healthz` says so and `audit = "required"` refuses requests (503) before
    /// the disk is full rather than after a write failed.
    pub disk_reserve: u64,
    /// Per-exchange redaction limits (default 8 MiB of text, 1 s of CPU): past either the
    /// exchange's content is dropped from its record, whole, marked and counted.
    pub redaction_budget: crate::redact::Budget,
    /// Most bytes the memo of long texts' redactions holds (default 4 MiB, 0: off): a system
    /// prompt or an earlier turn of a conversation that comes back is answered from it
    /// instead of scanned again, with the same result ([`crate::redact::CompiledRules`]).
    pub redaction_memo: usize,
    /// Upstream connect timeout (default 10 s).
    pub connect_timeout: Duration,
    /// Time allowed for upstream response headers (default 300 s: long completions).
    pub upstream_timeout: Duration,
    /// Bounded drain on shutdown (default 10 s).
    pub drain_timeout: Duration,
    /// Maximum concurrent client connections (default 10,000).
    pub max_connections: usize,
    /// Gateway routes by name.
    pub routes: BTreeMap<String, GatewayRoute>,
    /// Sealed-store retention, if any.
    pub retention: Option<Duration>,
    /// User pricing file merged over the built-in table, if any.
    pub pricing: Option<PathBuf>,
    /// Pipeline threads (default [`default_pipeline_workers`]: half the cores, one on a
    /// 2-core machine, so one core parses and redacts while the other forwards).
    pub pipeline_workers: usize,
    /// A new CA carries X.509 name constraints limited to the intercepted hosts.
    pub ca_name_constraints: bool,
    /// Time allowed for an app's TLS handshake on an intercepted CONNECT, from the `200` to
    /// the finished handshake (default 10 s). Past it the connection is closed.
    pub handshake_timeout: Duration,
    /// Time allowed for a request head (default 10 s): the first request of a connection (or
    /// of a TLS session inside CONNECT) must be complete this long after the connection is
    /// ready; a later HTTP/1 request must be complete this long after its first byte. Past it
    /// the connection is closed. Slowloris-style sockets are bounded by it.
    pub header_read_timeout: Duration,
    /// A client connection (proxy port, intercepted TLS, admin API) with no request in flight
    /// is closed this long after its last response ended (default 120 s: longer than common
    /// client pools keep idle connections, Go's 90 s and hyper's 90 s, so the client closes
    /// first and no request races the close). A request in flight is never cut by it, however
    /// long its response streams.
    pub idle_timeout: Duration,
    /// A blind CONNECT tunnel, or a relayed WebSocket session, is closed once no byte has
    /// crossed it either way for this long
    /// (default 10 min; checked every quarter of it, so closed within 1.25× of it). Long-lived
    /// tunnels that carry anything, even keep-alive pings, stay open.
    pub tunnel_idle_timeout: Duration,
    /// Apps may reach loopback (`127.0.0.0/8`, `::1`), link-local (`169.254.0.0/16` with the
    /// cloud metadata address, `fe80::/10`) and unspecified (`0.0.0.0`, `::`) addresses through
    /// CONNECT and absolute-form requests (default false: refused with 403). `--resolve` rules
    /// and operator-configured gateway routes reach such addresses regardless; veil's own
    /// listeners stay refused unless a `--resolve` rule or route names them.
    pub allow_local_targets: bool,
    /// The SQLite ledger: where, and how long it keeps what; `None` when `ledger = false`.
    pub ledger: Option<crate::ledger::LedgerSettings>,
    /// With no OTLP endpoint, also append records as OTLP/JSON lines under
    /// `<data>/records/` (`records_files`, default false; the ledger is the default sink).
    pub records_files: bool,
    /// The token `POST /veil/v1/feedback` asks for when `listen` is not loopback (the admin
    /// token is accepted too); `None`: only the admin token. On loopback none is asked.
    pub feedback_token: Option<Secret>,
}

impl Config {
    /// Merges `file` (if any) under `flags`, applies defaults and checks every value.
    pub fn resolve(file: Option<RawConfig>, flags: RawConfig) -> Result<Config, ConfigError> {
        let raw = file.unwrap_or_default().overlay(flags);
        let listen = parse_addr("listen", raw.listen.as_deref().unwrap_or("127.0.0.1:8080"))?;
        let admin_listen = raw
            .admin_listen
            .as_deref()
            .map(|a| parse_addr("admin_listen", a))
            .transpose()?;
        let metrics_listen = raw
            .metrics_listen
            .as_deref()
            .map(|a| parse_addr("metrics_listen", a))
            .transpose()?;
        let mut intercept = Vec::new();
        let patterns = raw
            .intercept
            .unwrap_or_else(|| vec!["@defaults".to_string()]);
        for p in &patterns {
            if p.starts_with('@') {
                // The provider table says which hosts a group stands for.
                let hosts = crate::exchange::providers::intercept_group(p).ok_or_else(|| {
                    bad(
                        "intercept",
                        format!("unknown host group {p:?}: the groups are @defaults, @vertex and @bedrock"),
                    )
                })?;
                for h in hosts {
                    intercept.push(HostPattern::parse(&h).expect("invariant: groups parse"));
                }
            } else {
                intercept.push(HostPattern::parse(p).map_err(|e| bad("intercept", e))?);
            }
        }
        let resolve = raw
            .resolve
            .unwrap_or_default()
            .iter()
            .map(|r| ResolveRule::parse(r).map_err(|e| bad("resolve", e)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut routes = BTreeMap::new();
        for g in crate::exchange::providers::gateways() {
            let route = GatewayRoute::parse(g.name, g.base).expect("invariant: defaults parse");
            routes.insert(g.name.to_string(), route);
        }
        for (name, base) in raw.routes.unwrap_or_default() {
            let route = GatewayRoute::parse(&name, &base).map_err(|e| bad("routes", e))?;
            routes.insert(name, route);
        }
        let data = raw.data.clone().unwrap_or_else(|| PathBuf::from("data"));
        let ledger = if raw.ledger.unwrap_or(true) {
            let mut l = crate::ledger::LedgerSettings::new(data.join(crate::ledger::FILE_NAME));
            if let Some(v) = &raw.ledger_content_retention {
                l.content_retention =
                    parse_timeout(v).map_err(|e| bad("ledger_content_retention", e))?;
            }
            if let Some(v) = &raw.ledger_retention {
                l.retention = parse_timeout(v).map_err(|e| bad("ledger_retention", e))?;
            }
            if let Some(v) = &raw.ledger_max_size {
                l.max_size = parse_size(v).map_err(|e| bad("ledger_max_size", e))? as u64;
            }
            Some(l)
        } else {
            None
        };
        let otlp_endpoint = raw
            .otlp_endpoint
            .or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok())
            .filter(|s| !s.is_empty());
        let queue_capacity = bounded("queue_capacity", raw.queue_capacity, 4096, MAX_COUNT)?;
        let max_connections = bounded("max_connections", raw.max_connections, 10_000, MAX_COUNT)?;
        let pipeline_workers = bounded(
            "pipeline_workers",
            raw.pipeline_workers,
            default_pipeline_workers(),
            MAX_PIPELINE_WORKERS,
        )?;
        let handshake_timeout = positive(
            raw.handshake_timeout,
            "handshake_timeout",
            Duration::from_secs(10),
        )?;
        let header_read_timeout = positive(
            raw.header_read_timeout,
            "header_read_timeout",
            Duration::from_secs(10),
        )?;
        let idle_timeout = positive(raw.idle_timeout, "idle_timeout", Duration::from_secs(120))?;
        let tunnel_idle_timeout = positive(
            raw.tunnel_idle_timeout,
            "tunnel_idle_timeout",
            Duration::from_secs(600),
        )?;
        Ok(Config {
            listen,
            rules_is_default: raw.rules.is_none(),
            rules: raw
                .rules
                .unwrap_or_else(|| PathBuf::from("rules/default.toml")),
            keys: raw.keys.unwrap_or_else(|| PathBuf::from("keys")),
            data,
            otlp_endpoint,
            intercept,
            resolve,
            upstream_ca: raw.upstream_ca.unwrap_or_default(),
            admin_listen,
            metrics_listen,
            allow_ports: raw.allow_ports.unwrap_or_else(|| vec![443]),
            capture_limit: opt(
                raw.capture_limit,
                "capture_limit",
                parse_capture_limit,
                32 << 20,
            )?,
            audit: raw.audit.unwrap_or_default(),
            queue_capacity,
            queue_max_bytes: opt(
                raw.queue_max_bytes,
                "queue_max_bytes",
                parse_size,
                256 << 20,
            )?,
            queue_wait: opt(
                raw.queue_wait,
                "queue_wait",
                parse_duration,
                Duration::from_secs(2),
            )?,
            disk_reserve: opt(raw.disk_reserve, "disk_reserve", parse_size, 256 << 20)? as u64,
            redaction_budget: redaction_budget(raw.redaction_budget.unwrap_or_default())?,
            redaction_memo: opt(
                raw.redaction_memo,
                "redaction_memo",
                parse_size,
                crate::redact::CompiledRules::DEFAULT_MEMO_BYTES,
            )?,
            connect_timeout: opt(
                raw.connect_timeout,
                "connect_timeout",
                parse_timeout,
                Duration::from_secs(10),
            )?,
            upstream_timeout: opt(
                raw.upstream_timeout,
                "upstream_timeout",
                parse_timeout,
                Duration::from_secs(300),
            )?,
            drain_timeout: opt(
                raw.drain_timeout,
                "drain_timeout",
                parse_duration,
                Duration::from_secs(10),
            )?,
            max_connections,
            routes,
            retention: raw
                .retention
                .as_deref()
                .map(|r| parse_timeout(r).map_err(|e| bad("retention", e)))
                .transpose()?,
            pricing: raw.pricing,
            ca_name_constraints: raw.ca_name_constraints.unwrap_or(true),
            handshake_timeout,
            header_read_timeout,
            idle_timeout,
            tunnel_idle_timeout,
            allow_local_targets: raw.allow_local_targets.unwrap_or(false),
            pipeline_workers,
            ledger,
            records_files: raw.records_files.unwrap_or(false),
            feedback_token: match raw.feedback_token {
                Some(t) if t.is_empty() => {
                    return Err(bad(
                        "feedback_token",
                        "is empty; set a long random token, or remove the key",
                    ));
                }
                t => t,
            },
        })
    }
}

fn opt<T>(
    v: Option<String>,
    key: &str,
    parse: fn(&str) -> Result<T, String>,
    default: T,
) -> Result<T, ConfigError> {
    match v {
        Some(s) => parse(&s).map_err(|e| bad(key, e)),
        None => Ok(default),
    }
}

/// Largest queue or connection count accepted: tokio's semaphores and bounded channels panic
/// above `usize::MAX >> 3` permits, and no machine holds a million connections or queued
/// exchanges anyway.
pub const MAX_COUNT: usize = 1 << 20;

/// Most pipeline threads: each is a whole OS thread doing CPU work; more than a big machine's
/// cores only adds contention.
pub const MAX_PIPELINE_WORKERS: usize = 256;

/// Pipeline threads when the config says nothing: half the machine's cores (at least one),
/// so recording keeps up on big machines while forwarding keeps the other half. One on a
/// 2-core machine.
pub fn default_pipeline_workers() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get().div_ceil(2))
        .clamp(1, 16)
}

/// A count that must be in `1..=max`; `default` when unset.
fn bounded(key: &str, v: Option<usize>, default: usize, max: usize) -> Result<usize, ConfigError> {
    match v.unwrap_or(default) {
        0 => Err(bad(key, "must be at least 1")),
        n if n > max => Err(bad(key, format!("{n} is too large (at most {max})"))),
        n => Ok(n),
    }
}

/// Largest `capture_limit`: a sealed exchange holds both bodies in one frame whose length
/// the store records in 32 bits, and an exchange is held in memory while it is recorded.
pub const MAX_CAPTURE_LIMIT: usize = 1 << 30;

fn parse_capture_limit(s: &str) -> Result<usize, String> {
    match parse_size(s)? {
        n if n > MAX_CAPTURE_LIMIT => Err(format!("{s:?} is too large (at most 1GiB)")),
        n => Ok(n),
    }
}

/// A duration that must not be zero (a zero timeout or retention would fail or purge
/// everything at once).
fn parse_timeout(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        Duration::ZERO => Err(format!("{s:?} must be more than zero")),
        d => Ok(d),
    }
}

/// A duration setting that must be above zero: a zero timeout would close every connection at
/// once (there is no "off"; a large value such as `30d` is the way to relax one).
fn positive(v: Option<String>, key: &str, default: Duration) -> Result<Duration, ConfigError> {
    let d = opt(v, key, parse_duration, default)?;
    if d.is_zero() {
        return Err(bad(
            key,
            "must be above zero (use a large value to relax it)",
        ));
    }
    Ok(d)
}

fn redaction_budget(raw: RawBudget) -> Result<crate::redact::Budget, ConfigError> {
    let default = crate::redact::Budget::DEFAULT;
    let max_bytes = match raw.bytes {
        Some(b) => parse_size(&b).map_err(|e| bad("redaction_budget.bytes", e))? as u64,
        None => default.max_bytes,
    };
    let max_cpu = match raw.cpu {
        Some(c) => parse_timeout(&c).map_err(|e| bad("redaction_budget.cpu", e))?,
        None => default.max_cpu,
    };
    Ok(crate::redact::Budget { max_bytes, max_cpu })
}

fn parse_addr(key: &str, s: &str) -> Result<SocketAddr, ConfigError> {
    s.parse()
        .map_err(|_| bad(key, format!("expected IP:PORT, got {s:?}")))
}

/// Longest duration veil accepts anywhere (100 years of 365 days): retention, purge ages and
/// timeouts beyond it are typos or attacks, and a bound keeps `now ± duration` representable
/// for `SystemTime` and tokio's timers alike.
pub const MAX_DURATION: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Largest size veil accepts (1 TiB): far above any capture limit or spool bound, far below
/// where `usize` arithmetic on it could overflow.
pub const MAX_SIZE: u64 = 1 << 40;

/// Parses `500ms`, `10s`, `5m`, `2h`, `30d` (a bare number is seconds).
///
/// Errors: a missing or non-decimal number, an unknown unit, or a value above
/// [`MAX_DURATION`]. The arithmetic is checked: a value too large is an error, never a
/// smaller duration (`144115188075855872d` once wrapped to 0 s and purged everything).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let too_large = || format!("duration {s:?} is too large (at most 100 years, e.g. 36500d)");
    if num.is_empty() {
        return Err(format!("bad duration {s:?} (e.g. 500ms, 10s, 5m, 2h, 30d)"));
    }
    // Digits only, so the one parse failure left is overflow.
    let n: u64 = num.parse().map_err(|_| too_large())?;
    let millis_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s, m, h, d)")),
    };
    let d = n
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .filter(|d| *d <= MAX_DURATION)
        .ok_or_else(too_large)?;
    Ok(d)
}

/// Parses `1024`, `64KiB`, `32MiB`, `1GiB` (also `KB`/`MB`/`GB` as powers of 1000).
///
/// Errors: a missing or non-decimal number, an unknown unit, or a value above [`MAX_SIZE`]
/// (checked arithmetic: never a smaller size).
pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let too_large = || format!("size {s:?} is too large (at most 1TiB)");
    if num.is_empty() {
        return Err(format!("bad size {s:?} (e.g. 4096, 64KiB, 32MiB, 1GiB)"));
    }
    let n: u64 = num.parse().map_err(|_| too_large())?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" | "k" => 1 << 10,
        "mib" | "m" => 1 << 20,
        "gib" | "g" => 1 << 30,
        "tib" | "t" => 1 << 40,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        _ => return Err(format!("bad size unit in {s:?} (KiB, MiB, GiB)")),
    };
    n.checked_mul(mult)
        .filter(|n| *n <= MAX_SIZE)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(too_large)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        let p = HostPattern::parse("*.openai.azure.com").unwrap();
        assert!(p.matches("myco.openai.azure.com", 443));
        assert!(!p.matches("openai.azure.com", 443));
        assert!(!p.matches("evilopenai.azure.com", 443));
        let p = HostPattern::parse("API.openai.com:8443").unwrap();
        assert!(p.matches("api.openai.com", 8443));
        assert!(!p.matches("api.openai.com", 443));
        assert!(HostPattern::parse("a*b.com").is_err());
        assert!(HostPattern::parse("host:notaport").is_err());
    }

    #[test]
    fn intercept_groups_expand_and_an_unknown_one_is_an_error() {
        let with = |list: &[&str]| {
            Config::resolve(
                None,
                RawConfig {
                    intercept: Some(list.iter().map(|s| s.to_string()).collect()),
                    ..Default::default()
                },
            )
        };
        let c = with(&["@defaults", "@vertex"]).unwrap();
        let hit = |host: &str| c.intercept.iter().any(|p| p.matches(host, 443));
        assert!(hit("api.openai.com"));
        assert!(hit("aiplatform.googleapis.com"));
        assert!(hit("us-east5-aiplatform.googleapis.com"));
        assert!(hit("europe-west4-aiplatform.googleapis.com"));
        // Exactly the listed hosts: no other Google API, no unlisted region.
        assert!(!hit("storage.googleapis.com"));
        assert!(!hit("mars-north1-aiplatform.googleapis.com"));
        let c = with(&["@vertex"]).unwrap();
        assert!(!c.intercept.iter().any(|p| p.matches("api.openai.com", 443)));
        let c = with(&["@bedrock"]).unwrap();
        let hit = |host: &str| c.intercept.iter().any(|p| p.matches(host, 443));
        assert!(hit("bedrock-runtime.us-east-1.amazonaws.com"));
        assert!(hit("bedrock-runtime.eu-central-1.amazonaws.com"));
        assert!(hit("bedrock-runtime-fips.us-west-2.amazonaws.com"));
        assert!(!hit("s3.us-east-1.amazonaws.com"));
        assert!(!hit("bedrock.us-east-1.amazonaws.com"));
        let err = with(&["@azure"]).unwrap_err().to_string();
        assert!(err.contains("@azure") && err.contains("@vertex"), "{err}");
    }

    #[test]
    fn resolve_rules() {
        let r = ResolveRule::parse("api.openai.com:443:127.0.0.1:9443").unwrap();
        assert_eq!(r.target, "127.0.0.1:9443".parse().unwrap());
        let r = ResolveRule::parse("api.openai.com:443:127.0.0.1").unwrap();
        assert_eq!(r.target, "127.0.0.1:443".parse().unwrap());
        let r = ResolveRule::parse("h:443:[::1]:8443").unwrap();
        assert_eq!(r.target, "[::1]:8443".parse().unwrap());
        let r = ResolveRule::parse("h:443:::1").unwrap();
        assert_eq!(r.target, "[::1]:443".parse().unwrap());
        assert!(ResolveRule::parse("h:443").is_err());
        assert!(ResolveRule::parse("h:x:127.0.0.1").is_err());
    }

    #[test]
    fn defaults_and_overlay() {
        let file: RawConfig =
            toml::from_str("listen = \"127.0.0.1:9000\"\ncapture_limit = \"1MiB\"\n").unwrap();
        let flags = RawConfig {
            listen: Some("127.0.0.1:9100".into()),
            ..Default::default()
        };
        let c = Config::resolve(Some(file), flags).unwrap();
        assert_eq!(c.listen, "127.0.0.1:9100".parse().unwrap());
        assert_eq!(c.capture_limit, 1 << 20);
        // What the default intercept set lets through is asserted where the rule lives:
        // `proxy::settings` (`default_config_intercepts_the_provider_hosts`).
        assert!(c.routes.contains_key("openai"));
    }

    #[test]
    fn errors_name_the_key_and_position() {
        let err = Config::resolve(
            None,
            RawConfig {
                capture_limit: Some("lots".into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.0.starts_with("capture_limit:"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("veil.toml");
        std::fs::write(&path, "listen = \"x\"\nbogus = 1\n").unwrap();
        let err = RawConfig::from_file(&path).unwrap_err();
        assert!(err.0.contains("veil.toml:2:1"), "{err}");
        assert!(err.0.contains("bogus"), "{err}");
    }

    // See: veil#10
    #[test]
    fn host_99999_is_a_bad_port_not_443() {
        for (authority, expected) in [
            ("host:443", Ok(Some(443))),
            ("host:8443", Ok(Some(8443))),
            ("host", Ok(None)),
            ("host:", Ok(None)),
            ("[::1]:8080", Ok(Some(8080))),
            ("[::1]", Ok(None)),
            ("user:pw@host:81", Ok(Some(81))),
            ("user:pw@host", Ok(None)),
            ("host:65535", Ok(Some(65535))),
        ] {
            assert_eq!(authority_port(authority), expected, "{authority}");
        }
        for bad in [
            "host:99999",
            "host:65536",
            "host:18446744073709551617",
            "host:0",
            "host:+80",
            "host:8o",
            "host:-1",
            "[::1]x",
            "[::1",
        ] {
            assert!(authority_port(bad).is_err(), "{bad}");
        }
        assert!(
            authority_port("host:99999")
                .unwrap_err()
                .contains("out of range")
        );
        // A gateway route with such a port is a config error, not a route to 443.
        for base in ["https://gw.example:99999", "http://gw.example:0/v1"] {
            let err = Config::resolve(
                None,
                RawConfig {
                    routes: Some([("gw".to_string(), base.to_string())].into()),
                    ..Default::default()
                },
            )
            .unwrap_err();
            assert!(err.0.starts_with("routes:"), "{base}: {err}");
        }
    }

    // See: veil#14. `/veil/` is veil's own API; a route named `veil` would be unreachable
    // (or, if routing ran first, would take the feedback API away).
    #[test]
    fn a_gateway_route_named_veil_is_refused() {
        let err = Config::resolve(
            None,
            RawConfig {
                routes: Some([("veil".to_string(), "https://gw.example/v1".to_string())].into()),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(err.0.starts_with("routes:"), "{err}");
        assert!(err.0.contains("reserved"), "{err}");
        // Another name with the same base is fine: the refusal is about the name.
        let c = Config::resolve(
            None,
            RawConfig {
                routes: Some([("veilgw".to_string(), "https://gw.example/v1".to_string())].into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(c.routes.contains_key("veilgw"));
    }

    #[test]
    fn connection_limits_have_defaults_and_refuse_zero() {
        let c = Config::resolve(None, RawConfig::default()).unwrap();
        assert_eq!(c.handshake_timeout, Duration::from_secs(10));
        assert_eq!(c.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.idle_timeout, Duration::from_secs(120));
        assert_eq!(c.tunnel_idle_timeout, Duration::from_secs(600));
        assert!(!c.allow_local_targets);
        let file: RawConfig = toml::from_str(
            "handshake_timeout = \"3s\"\nheader_read_timeout = \"2s\"\nidle_timeout = \"1m\"\n\
             tunnel_idle_timeout = \"1h\"\nallow_local_targets = true\n",
        )
        .unwrap();
        let c = Config::resolve(Some(file), RawConfig::default()).unwrap();
        assert_eq!(
            (
                c.handshake_timeout,
                c.header_read_timeout,
                c.idle_timeout,
                c.tunnel_idle_timeout
            ),
            (
                Duration::from_secs(3),
                Duration::from_secs(2),
                Duration::from_secs(60),
                Duration::from_secs(3600)
            )
        );
        assert!(c.allow_local_targets);
        for key in [
            "handshake_timeout",
            "header_read_timeout",
            "idle_timeout",
            "tunnel_idle_timeout",
        ] {
            let file: RawConfig = toml::from_str(&format!("{key} = \"0s\"\n")).unwrap();
            let err = Config::resolve(Some(file), RawConfig::default()).unwrap_err();
            assert!(err.0.starts_with(&format!("{key}:")), "{err}");
        }
    }

    /// `queue_wait` defaults to 2 s, may be zero (refuse at once), and a bad value names the
    /// key.
    #[test]
    fn queue_wait_has_a_default_allows_zero_and_names_itself_when_bad() {
        let c = Config::resolve(None, RawConfig::default()).unwrap();
        assert_eq!(c.queue_wait, Duration::from_secs(2));
        for (v, want) in [
            ("0s", Duration::ZERO),
            ("250ms", Duration::from_millis(250)),
        ] {
            let file: RawConfig = toml::from_str(&format!("queue_wait = \"{v}\"\n")).unwrap();
            let c = Config::resolve(Some(file), RawConfig::default()).unwrap();
            assert_eq!(c.queue_wait, want, "{v}");
        }
        let file: RawConfig = toml::from_str("queue_wait = \"soon\"\n").unwrap();
        let err = Config::resolve(Some(file), RawConfig::default()).unwrap_err();
        assert!(err.0.starts_with("queue_wait:"), "{err}");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86_400)
        );
        assert!(parse_duration("3 weeks").is_err());
        assert!(parse_duration("d").is_err());
        assert_eq!(parse_duration("36500d").unwrap(), MAX_DURATION);
        assert_eq!(parse_size("32MiB").unwrap(), 32 << 20);
        assert_eq!(parse_size("1TiB").unwrap(), 1 << 40);
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("MiB").is_err());
    }

    // See: veil#10. Each of these once wrapped to a small duration (0 s for the first two):
    // `veil purge --older-than 4611686018427387904m` purged everything sealed seconds before.
    #[test]
    fn overflowing_durations_are_errors_not_smaller_values() {
        for s in [
            "144115188075855872d",
            "4611686018427387904m",
            "213503982334602d",
            "18446744073709551615s",
            "18446744073709551616",
            "99999999999999999999999999ms",
            "36501d",
        ] {
            let err = parse_duration(s).unwrap_err();
            assert!(err.contains("too large"), "{s}: {err}");
        }
    }

    // See: veil#10.
    #[test]
    fn overflowing_sizes_are_errors_not_smaller_values() {
        for s in [
            "18446744073709551615KiB",
            "17179869184GiB",
            "1025GiB",
            "99999999999999999999",
        ] {
            let err = parse_size(s).unwrap_err();
            assert!(err.contains("too large"), "{s}: {err}");
        }
    }

    #[test]
    fn the_ledger_is_on_by_default_in_the_data_dir_and_can_be_turned_off() {
        let c = Config::resolve(None, RawConfig::default()).unwrap();
        let l = c.ledger.expect("on by default");
        assert_eq!(l.path, PathBuf::from("data/ledger.db"));
        assert_eq!(l.content_retention, Duration::from_secs(30 * 86_400));
        assert_eq!(l.retention, Duration::from_secs(400 * 86_400));
        assert_eq!(l.max_size, 2 << 30);
        assert!(!c.records_files);
        let raw: RawConfig = toml::from_str(
            "data = \"/d\"\nledger_content_retention = \"7d\"\nledger_max_size = \"1GiB\"\nrecords_files = true",
        )
        .unwrap();
        let c = Config::resolve(Some(raw), RawConfig::default()).unwrap();
        let l = c.ledger.unwrap();
        assert_eq!(l.path, PathBuf::from("/d/ledger.db"));
        assert_eq!(l.content_retention, Duration::from_secs(7 * 86_400));
        assert_eq!(l.max_size, 1 << 30);
        assert!(c.records_files);
        let raw: RawConfig = toml::from_str("ledger = false").unwrap();
        assert!(
            Config::resolve(Some(raw), RawConfig::default())
                .unwrap()
                .ledger
                .is_none()
        );
    }

    // See: veil#10. `retention = "144115188075855872d"` once purged every exchange.
    #[test]
    fn config_rejects_overflowing_and_zero_values() {
        let cases: &[(&str, &str)] = &[
            ("retention = \"144115188075855872d\"", "retention:"),
            ("retention = \"0s\"", "retention:"),
            (
                "upstream_timeout = \"4611686018427387904m\"",
                "upstream_timeout:",
            ),
            ("connect_timeout = \"0ms\"", "connect_timeout:"),
            ("capture_limit = \"17179869184GiB\"", "capture_limit:"),
            ("capture_limit = \"2GiB\"", "capture_limit:"),
            ("queue_capacity = 2305843009213693952", "queue_capacity:"),
            ("max_connections = 0", "max_connections:"),
            ("pipeline_workers = 100000", "pipeline_workers:"),
            (
                "redaction_budget = { bytes = \"18446744073709551615KiB\" }",
                "redaction_budget.bytes:",
            ),
            (
                "redaction_budget = { cpu = \"0s\" }",
                "redaction_budget.cpu:",
            ),
            (
                "ledger_retention = \"144115188075855872d\"",
                "ledger_retention:",
            ),
            (
                "ledger_content_retention = \"0s\"",
                "ledger_content_retention:",
            ),
            ("ledger_max_size = \"17179869184GiB\"", "ledger_max_size:"),
        ];
        for (line, key) in cases {
            let raw: RawConfig = toml::from_str(line).unwrap();
            let err = Config::resolve(Some(raw), RawConfig::default()).unwrap_err();
            assert!(err.0.starts_with(key), "{line}: {err}");
        }
        // A port out of range is refused by the file parser itself, with its position.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("veil.toml");
        std::fs::write(&path, "allow_ports = [443, 99999]\n").unwrap();
        let err = RawConfig::from_file(&path).unwrap_err();
        assert!(err.0.contains("veil.toml:1:"), "{err}");
    }

    #[test]
    fn redaction_budget_defaults_and_overrides_each_part() {
        let c = Config::resolve(None, RawConfig::default()).unwrap();
        assert_eq!(c.redaction_budget, crate::redact::Budget::DEFAULT);
        let raw: RawConfig = toml::from_str("redaction_budget = { bytes = \"1MiB\" }").unwrap();
        let c = Config::resolve(Some(raw), RawConfig::default()).unwrap();
        assert_eq!(c.redaction_budget.max_bytes, 1 << 20);
        assert_eq!(
            c.redaction_budget.max_cpu,
            crate::redact::Budget::DEFAULT.max_cpu
        );
        assert!(toml::from_str::<RawConfig>("redaction_budget = { bites = \"1\" }").is_err());
    }

    // See: veil#13. `upstream_ca = "ca.pem"` was refused ("invalid type: string, expected
    // a sequence") where the flag takes one value or many.
    #[test]
    fn every_list_key_takes_one_value_or_an_array() {
        let cases: [(&str, &str, &str); 4] = [
            ("intercept", "\"api.example.com\"", "\"*.example.org:8443\""),
            (
                "resolve",
                "\"api.example.com:443:127.0.0.1:9443\"",
                "\"b.example.com:443:[::1]\"",
            ),
            ("upstream_ca", "\"ca.pem\"", "\"/etc/other.pem\""),
            ("allow_ports", "8443", "443"),
        ];
        assert_eq!(
            cases.map(|c| c.0),
            LIST_KEYS,
            "every list key is exercised here"
        );
        for (key, a, b) in cases {
            let one: RawConfig = toml::from_str(&format!("{key} = {a}")).unwrap();
            let list_of_one: RawConfig = toml::from_str(&format!("{key} = [{a}]")).unwrap();
            let two: RawConfig = toml::from_str(&format!("{key} = [{a}, {b}]")).unwrap();
            let resolved = |raw: RawConfig| {
                let c = Config::resolve(Some(raw), RawConfig::default()).unwrap();
                format!(
                    "{:?} {:?} {:?} {:?}",
                    c.intercept, c.resolve, c.upstream_ca, c.allow_ports
                )
            };
            assert_eq!(resolved(one.clone()), resolved(list_of_one), "{key}");
            assert_ne!(
                resolved(one),
                resolved(two),
                "{key}: the second value counts"
            );
        }
        let c = Config::resolve(
            Some(toml::from_str("upstream_ca = \"ca.pem\"\nallow_ports = 8443").unwrap()),
            RawConfig::default(),
        )
        .unwrap();
        assert_eq!(c.upstream_ca, [PathBuf::from("ca.pem")]);
        assert_eq!(c.allow_ports, [8443]);
        // Absent keys keep their defaults.
        let c = Config::resolve(Some(toml::from_str("").unwrap()), RawConfig::default()).unwrap();
        assert_eq!(c.allow_ports, [443]);
        assert!(c.upstream_ca.is_empty());
    }

    #[test]
    fn the_readme_marks_every_list_key() {
        let readme = include_str!("../README.md");
        for key in LIST_KEYS {
            assert!(
                readme.contains(&format!("`{key}` (list)")),
                "README's config table does not say {key} is a list"
            );
        }
    }

    // See: veil#13. A single value keeps the element's own error and its position.
    #[test]
    fn a_bad_single_value_names_the_key_line_and_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("veil.toml");
        for (text, want) in [
            ("listen = \"127.0.0.1:0\"\nallow_ports = 99999\n", "99999"),
            ("listen = \"127.0.0.1:0\"\nupstream_ca = 5\n", "upstream_ca"),
            (
                "listen = \"127.0.0.1:0\"\nintercept = { a = 1 }\n",
                "intercept",
            ),
            (
                "listen = \"127.0.0.1:0\"\nallow_ports = \"443\"\n",
                "allow_ports",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = RawConfig::from_file(&path).unwrap_err();
            assert!(err.0.contains("veil.toml:2:"), "{text}: {err}");
            assert!(err.0.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn pipeline_workers_default_to_half_the_cores() {
        let c = Config::resolve(None, RawConfig::default()).unwrap();
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(c.pipeline_workers, cores.div_ceil(2).clamp(1, 16));
    }
}
