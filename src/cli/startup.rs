//! # What `veil run` says when it starts and when it stops, in words.
//!
//! One place turns the facts of a running veil (where it listens, what it intercepts, which
//! rules, where records go, what it keeps and for how long, which admin endpoints) into the
//! lines an operator reads on stderr. Every value is written out (`Display` of addresses and
//! paths, durations in days or seconds, "none" and "off" for what is absent), never Rust's
//! `Debug` (`Some(…)`, `[…]`, struct braces), which tells an operator nothing they can act on.
//!
//! To say one more thing at start, add a field to [`Facts`] and one line to
//! [`startup_lines`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Config, HostPattern};
use crate::counters::Counters;

/// The facts of one running veil that its start and stop lines report.
#[derive(Debug)]
pub(super) struct Facts {
    /// The proxy's bound address.
    pub(super) listen: SocketAddr,
    /// veil's CA certificate (the file apps must trust).
    pub(super) ca: PathBuf,
    /// The intercepted host patterns.
    pub(super) intercept: Vec<HostPattern>,
    /// The rules file, or `None` when the built-in default profile is in force.
    pub(super) rules: Option<PathBuf>,
    /// The rules digest every record carries.
    pub(super) rules_digest: String,
    /// The SQLite ledger, with its bounds; `None` when `ledger = false`.
    pub(super) ledger: Option<crate::ledger::LedgerSettings>,
    /// The OTLP/HTTP endpoint, if any.
    pub(super) otlp: Option<String>,
    /// The directory of the OTLP/JSON lines files, when they are written.
    pub(super) records_files: Option<PathBuf>,
    /// The sealed store's directory.
    pub(super) sealed: PathBuf,
    /// Sealed-store retention, if any.
    pub(super) retention: Option<Duration>,
    /// The admin API's bound address, when on.
    pub(super) admin: Option<SocketAddr>,
    /// The Prometheus `/metrics` listener's address, when on (the bound one once known).
    pub(super) metrics: Option<SocketAddr>,
    /// The keys directory (CA, master keys, admin token).
    pub(super) keys: PathBuf,
    /// The data directory (ledger, spool, sealed store).
    pub(super) data: PathBuf,
    /// The control socket the operator commands reach this veil through.
    pub(super) control: PathBuf,
    /// `resolve` overrides: `host:port → addr`.
    pub(super) resolve: Vec<String>,
    /// Extra upstream trust roots (`upstream_ca`).
    pub(super) upstream_ca: Vec<PathBuf>,
    /// Gateway routes the config added or changed: `/name/ → base`.
    pub(super) routes: Vec<String>,
}

impl Facts {
    /// The facts of a veil started with `config`, listening on `listen` (the bound address)
    /// with the admin API on `admin`, its CA at `ca` and rules of `rules_digest`.
    pub(super) fn new(
        config: &Config,
        listen: SocketAddr,
        admin: Option<SocketAddr>,
        ca: &Path,
        rules_digest: &str,
        control: &Path,
    ) -> Facts {
        let builtin_rules = config.rules_is_default && !config.rules.exists();
        // Mirrors `Exporter::from_config`: the lines files are written when there is no
        // collector and either they are asked for or there is no ledger.
        let files =
            config.otlp_endpoint.is_none() && (config.records_files || config.ledger.is_none());
        Facts {
            listen,
            ca: absolute(ca),
            intercept: config.intercept.clone(),
            rules: (!builtin_rules).then(|| absolute(&config.rules)),
            rules_digest: rules_digest.to_string(),
            ledger: config.ledger.clone().map(|mut l| {
                l.path = absolute(&l.path);
                l
            }),
            otlp: config.otlp_endpoint.as_deref().map(endpoint_words),
            records_files: files.then(|| absolute(&config.data.join("records"))),
            sealed: absolute(&config.data.join("sealed")),
            retention: config.retention,
            admin,
            metrics: config.metrics_listen,
            keys: absolute(&config.keys),
            data: absolute(&config.data),
            control: absolute(control),
            resolve: config
                .resolve
                .iter()
                .map(|r| format!("{}:{} → {}", r.host, r.port, r.target))
                .collect(),
            upstream_ca: config.upstream_ca.iter().map(|p| absolute(p)).collect(),
            routes: config
                .routes
                .values()
                .filter(|r| {
                    !crate::exchange::providers::gateways().any(|g| {
                        crate::config::GatewayRoute::parse(g.name, g.base).as_ref() == Ok(*r)
                    })
                })
                .map(|r| {
                    // A gateway URL can carry a key in its path: the log gets it masked.
                    let prefix = crate::redact::rules::mask_secrets(&r.prefix);
                    format!(
                        "/{}/ → {}://{}:{}{prefix}",
                        r.name, r.scheme, r.host, r.port
                    )
                })
                .collect(),
        }
    }
}

/// The OTLP endpoint as the start line shows it: scheme, host, port and path, never the
/// userinfo or query, where a collector's credentials can sit (`https://user:token@host`,
/// `?api_key=…`); logs are not a place for them.
fn endpoint_words(endpoint: &str) -> String {
    match endpoint.parse::<http::Uri>() {
        Ok(uri) => {
            let host = uri.host().unwrap_or("?");
            let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
            let hidden =
                uri.authority().is_some_and(|a| a.as_str().contains('@')) || uri.query().is_some();
            format!(
                "{}://{host}{port}{}{}",
                uri.scheme_str().unwrap_or("?"),
                // `http::Uri` reports an absent path as "/": show the endpoint as written.
                Some(uri.path()).filter(|p| *p != "/").unwrap_or_default(),
                if hidden {
                    " (credentials not shown)"
                } else {
                    ""
                }
            )
        }
        Err(_) => "(an endpoint that is not a URL)".to_string(),
    }
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// The lines `veil run` logs once it listens, first the one that says how to use it (it
/// carries `HTTPS_PROXY=http://ADDR`, which scripts and tests read), then one per concern.
pub(super) fn startup_lines(f: &Facts) -> Vec<String> {
    let addr = f.listen;
    let rules = match &f.rules {
        Some(path) => format!("rules: {}, digest {}", path.display(), f.rules_digest),
        None => format!(
            "rules: the built-in default profile (pseudonymize users, scrub all content), digest {}",
            f.rules_digest
        ),
    };
    let ledger = match &f.ledger {
        Some(l) => format!(
            "the ledger {} (content kept {}, rows {}, at most {})",
            l.path.display(),
            duration_words(l.content_retention),
            duration_words(l.retention),
            size_words(l.max_size)
        ),
        None => "no ledger (ledger = false)".to_string(),
    };
    let otlp = f.otlp.as_deref().unwrap_or("none");
    let files = match &f.records_files {
        Some(dir) => format!("OTLP/JSON lines files under {}", dir.display()),
        None => "off".to_string(),
    };
    let retention = match f.retention {
        Some(d) => format!("purged after {}", duration_words(d)),
        None => "kept until forgotten or purged (no retention)".to_string(),
    };
    let admin = match f.admin {
        Some(a) => format!("http://{a} (bearer token required)"),
        None => "off".to_string(),
    };
    let metrics = match f.metrics {
        Some(a) => format!("http://{a}/metrics"),
        None => "off".to_string(),
    };
    let mut lines = vec![
        format!(
            "veil is running: HTTPS_PROXY=http://{addr} (trust the CA {}), or gateway http://{addr}/openai/v1",
            f.ca.display()
        ),
        format!(
            "intercepting {} host patterns (TLS terminated, recorded): {}; every other host is tunnelled blind, unrecorded",
            f.intercept.len(),
            hosts_words(&f.intercept)
        ),
        rules,
        format!("records go to {ledger}; OTLP collector: {otlp}; records files: {files}"),
        format!("sealed exchanges: {}, {retention}", f.sealed.display()),
        format!(
            "keys: {}; data: {}; operator commands reach this veil through its control socket {} (this uid only)",
            f.keys.display(),
            f.data.display(),
            f.control.display()
        ),
        format!("admin API: {admin}; Prometheus metrics: {metrics}"),
    ];
    if !f.routes.is_empty() {
        lines.push(format!(
            "gateway routes of this config: {}",
            f.routes.join(", ")
        ));
    }
    lines
}

/// What `veil run` warns about at start: settings that send traffic somewhere other than
/// where the app addressed it, or trust more than the system's roots. Right for a test bench,
/// a finding in production; so each start says them, not only the config file.
pub(super) fn startup_warnings(f: &Facts) -> Vec<String> {
    let mut out = Vec::new();
    if !f.resolve.is_empty() {
        out.push(format!(
            "resolve overrides: {}; veil connects there, not where DNS points (meant for tests)",
            f.resolve.join(", ")
        ));
    }
    if !f.upstream_ca.is_empty() {
        let files: Vec<String> = f
            .upstream_ca
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        out.push(format!(
            "upstream_ca: upstream TLS also trusts the roots in {}",
            files.join(", ")
        ));
    }
    out
}

/// The line `veil run` logs after its shutdown drained: what it did while it ran and where
/// the records of it are.
pub(super) fn shutdown_line(f: &Facts, counters: &Counters) -> String {
    let ledger = match &f.ledger {
        Some(l) => format!(
            "ledger rows written: {} (in {})",
            counters.ledger.rows.get(),
            l.path.display()
        ),
        None => "no ledger".to_string(),
    };
    format!(
        "veil stopped. Exchanges intercepted: {}, made into records: {}, dropped before \
         recording: {}{}; {ledger}",
        counters.proxy.intercepted.get(),
        counters.pipeline.processed.get(),
        counters.queue.dropped(),
        match counters.pipeline.failed.get() {
            0 => String::new(),
            n => format!(", failed in processing (a bug, see the panic lines above): {n}"),
        },
    )
}

/// `api.openai.com, *.openai.azure.com, localhost:8443`.
fn hosts_words(hosts: &[HostPattern]) -> String {
    let shown: Vec<String> = hosts
        .iter()
        .map(|h| {
            let mut s = String::new();
            if h.wildcard {
                s.push_str("*.");
            }
            s.push_str(&h.host);
            if let Some(p) = h.port {
                s.push_str(&format!(":{p}"));
            }
            s
        })
        .collect();
    if shown.is_empty() {
        "none".to_string()
    } else {
        shown.join(", ")
    }
}

/// `30 days`, `12 hours`, `5 minutes`, `90 seconds`, `250 ms`: the largest unit that divides
/// the duration exactly, as the config would have said it.
pub(super) fn duration_words(d: Duration) -> String {
    let ms = d.as_millis();
    let units: [(u128, &str, &str); 4] = [
        (86_400_000, "day", "days"),
        (3_600_000, "hour", "hours"),
        (60_000, "minute", "minutes"),
        (1_000, "second", "seconds"),
    ];
    for (per, one, many) in units {
        if ms >= per && ms.is_multiple_of(per) {
            let n = ms / per;
            return format!("{n} {}", if n == 1 { one } else { many });
        }
    }
    format!("{ms} ms")
}

/// `2 GiB`, `512 MiB`, `4096 bytes`: the largest binary unit that divides the size exactly.
fn size_words(n: u64) -> String {
    for (per, unit) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if n >= per && n.is_multiple_of(per) {
            return format!("{} {unit}", n / per);
        }
    }
    format!("{n} bytes")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RawConfig;

    fn facts(raw: &str) -> Facts {
        let raw: RawConfig = toml::from_str(raw).unwrap();
        let config = Config::resolve(Some(raw), RawConfig::default()).unwrap();
        Facts::new(
            &config,
            "127.0.0.1:8080".parse().unwrap(),
            config.admin_listen,
            Path::new("/k/ca.pem"),
            "0123abcd",
            Path::new("/d/veil.sock"),
        )
    }

    fn assert_no_debug(lines: &[String]) {
        for l in lines {
            for debug in ["Some(", "None", "[", "{", "HostPattern", "\""] {
                assert!(!l.contains(debug), "Debug output {debug:?} in {l:?}");
            }
        }
    }

    #[test]
    fn the_default_start_says_everything_in_words() {
        let lines = startup_lines(&facts("data = \"/d\""));
        assert_no_debug(&lines);
        let all = lines.join("\n");
        for want in [
            "HTTPS_PROXY=http://127.0.0.1:8080 (trust the CA /k/ca.pem)",
            "api.openai.com, ",
            "rules: ",
            "digest 0123abcd",
            "the ledger /d/ledger.db (content kept 30 days, rows 400 days, at most 2 GiB)",
            "OTLP collector: none",
            "records files: off",
            "its control socket /d/veil.sock (this uid only)",
            "sealed exchanges: /d/sealed, kept until forgotten or purged (no retention)",
            "admin API: off; Prometheus metrics: off",
        ] {
            assert!(all.contains(want), "{want:?} missing from:\n{all}");
        }
        let f = facts("data = \"/d\"");
        assert!(
            startup_warnings(&f).is_empty(),
            "{:?}",
            startup_warnings(&f)
        );
        assert!(
            !all.contains("gateway routes"),
            "only the config's own: {all}"
        );
    }

    /// Settings that send traffic elsewhere or trust more roots are said at every start, and
    /// so are the routes the config added (not the built-in ones).
    #[test]
    fn overrides_and_added_routes_are_said_at_start() {
        let f = facts(
            "data = \"/d\"\nresolve = [\"api.openai.com:443:127.0.0.1:18682\"]\n\
             upstream_ca = [\"/t/ca.pem\"]\n\
             [routes]\nlocal = \"http://127.0.0.1:11434/v1\"",
        );
        let warnings = startup_warnings(&f).join("\n");
        assert!(
            warnings.contains("resolve overrides: api.openai.com:443 → 127.0.0.1:18682;"),
            "{warnings}"
        );
        assert!(
            warnings.contains("trusts the roots in /t/ca.pem"),
            "{warnings}"
        );
        let lines = startup_lines(&f);
        assert_no_debug(&lines);
        let all = lines.join("\n");
        assert!(
            all.contains("gateway routes of this config: /local/ → http://127.0.0.1:11434/v1"),
            "{all}"
        );
        assert!(!all.contains("/openai/ →"), "{all}");
        // A key in a route's path is masked in the log.
        let f = facts(
            "data = \"/d\"\n[routes]\ngw = \"https://gw.example/k/sk-proj-ROUTEKEYabcdefghij0123456789/v1\"",
        );
        let all = startup_lines(&f).join("\n");
        assert!(
            all.contains("/gw/ → https://gw.example:443/k/[OPENAI_API_KEY]/v1"),
            "{all}"
        );
        assert!(!all.contains("ROUTEKEY"), "{all}");
    }

    #[test]
    fn every_optional_fact_is_named_when_set() {
        let lines = startup_lines(&facts(
            "data = \"/d\"\nrules = \"/r/mine.toml\"\nledger = false\nretention = \"12h\"\n\
             otlp_endpoint = \"http://collector:4318\"\nadmin_listen = \"127.0.0.1:9000\"\n\
             metrics_listen = \"127.0.0.1:9464\"\n\
             intercept = [\"*.example.com:8443\", \"api.example.org\"]",
        ));
        assert_no_debug(&lines);
        let all = lines.join("\n");
        for want in [
            "intercepting 2 host patterns (TLS terminated, recorded): *.example.com:8443, api.example.org;",
            "rules: /r/mine.toml, digest 0123abcd",
            "records go to no ledger (ledger = false); OTLP collector: http://collector:4318; records files: off",
            "purged after 12 hours",
            "admin API: http://127.0.0.1:9000",
            "Prometheus metrics: http://127.0.0.1:9464/metrics",
        ] {
            assert!(all.contains(want), "{want:?} missing from:\n{all}");
        }
        // No collector and no ledger: the lines files are where records go.
        let all = startup_lines(&facts("data = \"/d\"\nledger = false")).join("\n");
        assert!(
            all.contains("records files: OTLP/JSON lines files under /d/records"),
            "{all}"
        );
    }

    #[test]
    fn otlp_endpoint_credentials_stay_out_of_the_start_line() {
        assert_eq!(
            endpoint_words("http://collector:4318"),
            "http://collector:4318"
        );
        let shown =
            endpoint_words("https://svc:s3cr3t-t0ken@otel.example:443/v1?api_key=k3y-v4lue");
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("k3y-v4lue"),
            "{shown}"
        );
        assert_eq!(shown, "https://otel.example:443/v1 (credentials not shown)");
    }

    #[test]
    fn durations_and_sizes_in_words() {
        assert_eq!(duration_words(Duration::from_secs(86_400)), "1 day");
        assert_eq!(duration_words(Duration::from_secs(90)), "90 seconds");
        assert_eq!(duration_words(Duration::from_secs(120)), "2 minutes");
        assert_eq!(duration_words(Duration::from_millis(1500)), "1500 ms");
        assert_eq!(size_words(2 << 30), "2 GiB");
        assert_eq!(size_words(1500), "1500 bytes");
    }
}
