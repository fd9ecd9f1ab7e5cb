//! # Exporter settings: the config's endpoint plus the `OTEL_EXPORTER_OTLP_*` variables.
//!
//! Environment variables are read through a closure, never from the process directly, so
//! tests give a map (`std::env::set_var` is banned). Validates only; builds nothing.
//!
//! Owns: endpoint resolution per signal, headers, protocol, compression, timeout, batching
//! and spool knobs. Never touches records, the network or the disk.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::otlp::{Encoding, ResourceInfo, Signal, parse_key_values};

/// Default spool bound: 1 GiB, enough for days of a busy proxy's records.
pub const DEFAULT_SPOOL_MAX: u64 = 1 << 30;

/// Default export timeout: 10 s, the OTLP specification's default (`_TIMEOUT`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where one signal goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// POST to this full URL (already with `/v1/<signal>`).
    Otlp(String),
    /// Append OTLP/JSON lines under `<data>/records/` (no collector configured and
    /// `records_files = true`, or the SQLite ledger turned off).
    File,
    /// Nowhere: no collector configured and the SQLite ledger is the local sink. The signal
    /// is not even encoded.
    Off,
}

/// Settings of one signal's sender.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalSettings {
    /// Where the signal goes.
    pub destination: Destination,
    /// Wire encoding.
    pub encoding: Encoding,
    /// Extra request headers (`OTEL_EXPORTER_OTLP_HEADERS`).
    pub headers: Vec<(String, String)>,
    /// gzip the body.
    pub gzip: bool,
    /// Per-attempt timeout.
    pub timeout: Duration,
    /// TLS material for `https://` endpoints.
    pub tls: TlsFiles,
}

/// PEM files for TLS toward the collector (`_CERTIFICATE`, `_CLIENT_CERTIFICATE`,
/// `_CLIENT_KEY`); loaded when the exporter starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// Extra trust roots, added to the webpki roots.
    pub ca: Option<PathBuf>,
    /// Client certificate chain for mTLS.
    pub client_cert: Option<PathBuf>,
    /// Client private key for mTLS.
    pub client_key: Option<PathBuf>,
}

/// Everything the exporter needs, resolved once.
#[derive(Debug, Clone, PartialEq)]
pub struct ExporterSettings {
    /// The data directory (`<data>/spool/`, `<data>/records/`).
    pub data_dir: PathBuf,
    /// Per-signal settings, in [`Signal::ALL`] order.
    pub signals: [SignalSettings; 3],
    /// The OTLP resource.
    pub resource: ResourceInfo,
    /// Records and events the export queue holds at most, a group counting each of its records
    /// ([`ExporterHandle::try_send`](super::ExporterHandle::try_send)).
    pub queue_capacity: usize,
    /// A batch is sent when it holds this many records...
    pub batch_max: usize,
    /// ... or when its oldest record is this old.
    pub batch_age: Duration,
    /// How often cumulative metrics are exported.
    pub metrics_interval: Duration,
    /// Spool bound per signal, in bytes.
    pub spool_max_bytes: u64,
    /// First retry delay; doubles per failure, with jitter.
    pub retry_initial: Duration,
    /// Largest retry delay.
    pub retry_max: Duration,
    /// Where to note that a record is durable (see [`crate::journal`]); none in tests.
    pub journal: Option<std::sync::Arc<crate::journal::Journal>>,
    /// Add every record to the registry's per-exchange series even when no OTLP metrics
    /// destination reads them (`/metrics` does: `metrics_listen` is set).
    pub observe_series: bool,
}

/// An invalid setting: names the variable and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError(String);

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SettingsError {}

/// Why [`Exporter::from_config`](super::Exporter::from_config) could not start the exporter.
/// Displays exactly as the wrapped error (no prefix of its own: each already names the
/// `OTEL_*` variable, TLS file or spool directory at fault).
#[derive(Debug)]
pub enum StartError {
    /// The settings from the config and the `OTEL_*` environment are invalid.
    Settings(SettingsError),
    /// A spool directory could not be opened or a TLS file read.
    Io(std::io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Settings(e) => e.fmt(f),
            StartError::Io(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        // Transparent: the wrapped error's own cause, so a `{:#}` chain is not doubled.
        match self {
            StartError::Settings(e) => e.source(),
            StartError::Io(e) => e.source(),
        }
    }
}

impl From<SettingsError> for StartError {
    fn from(e: SettingsError) -> Self {
        StartError::Settings(e)
    }
}

impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        StartError::Io(e)
    }
}

impl ExporterSettings {
    /// Turns the signals that would go to `<data>/records/` files off (the SQLite ledger is
    /// the local sink instead); signals with an OTLP endpoint are unchanged.
    pub fn without_files(mut self) -> Self {
        for s in &mut self.signals {
            if s.destination == Destination::File {
                s.destination = Destination::Off;
            }
        }
        self
    }

    /// Resolves settings from the config's endpoint (`--otlp-endpoint`, which already falls
    /// back to `OTEL_EXPORTER_OTLP_ENDPOINT`), the data directory and the variables `env`
    /// returns. A signal with neither a base nor a per-signal endpoint goes to the file ledger.
    pub fn resolve(
        endpoint: Option<&str>,
        data_dir: PathBuf,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, SettingsError> {
        let get = |name: &str| {
            env(name)
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let base = endpoint
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .or_else(|| get("OTEL_EXPORTER_OTLP_ENDPOINT"));
        let mut signals = Vec::new();
        for sig in Signal::ALL {
            let up = sig.name().to_ascii_uppercase();
            let pick = |suffix: &str| {
                get(&format!("OTEL_EXPORTER_OTLP_{up}_{suffix}"))
                    .map(|v| (format!("OTEL_EXPORTER_OTLP_{up}_{suffix}"), v))
                    .or_else(|| {
                        get(&format!("OTEL_EXPORTER_OTLP_{suffix}"))
                            .map(|v| (format!("OTEL_EXPORTER_OTLP_{suffix}"), v))
                    })
            };
            let destination = match get(&format!("OTEL_EXPORTER_OTLP_{up}_ENDPOINT")) {
                Some(url) => Destination::Otlp(check_url(&url, &up)?),
                None => match &base {
                    Some(b) => Destination::Otlp(format!(
                        "{}/v1/{}",
                        check_url(b, "")?.trim_end_matches('/'),
                        sig.name()
                    )),
                    None => Destination::File,
                },
            };
            let encoding = match pick("PROTOCOL") {
                None => Encoding::Protobuf,
                Some((_, p)) if p == "http/protobuf" => Encoding::Protobuf,
                Some((_, p)) if p == "http/json" => Encoding::Json,
                Some((var, p)) => {
                    return Err(SettingsError(format!(
                        "{var}={p:?}: veil speaks OTLP over HTTP only; use http/protobuf or http/json"
                    )));
                }
            };
            let gzip = match pick("COMPRESSION") {
                None => false,
                Some((_, c)) if c == "gzip" => true,
                Some((_, c)) if c == "none" => false,
                Some((var, c)) => {
                    return Err(SettingsError(format!("{var}={c:?}: expected gzip or none")));
                }
            };
            let timeout = match pick("TIMEOUT") {
                None => DEFAULT_TIMEOUT,
                Some((var, t)) => match t.parse::<u64>() {
                    Ok(ms) if ms > 0 => Duration::from_millis(ms),
                    _ => {
                        return Err(SettingsError(format!(
                            "{var}={t:?}: expected a positive integer of milliseconds"
                        )));
                    }
                },
            };
            let mut headers = Vec::new();
            // General headers first, per-signal ones override by name.
            for var in [
                "OTEL_EXPORTER_OTLP_HEADERS".to_string(),
                format!("OTEL_EXPORTER_OTLP_{up}_HEADERS"),
            ] {
                for (k, v) in get(&var).map(|h| parse_key_values(&h)).unwrap_or_default() {
                    if http::HeaderName::try_from(k.as_str()).is_err()
                        || http::HeaderValue::try_from(v.as_str()).is_err()
                    {
                        return Err(SettingsError(format!("{var}: invalid header {k:?}")));
                    }
                    headers.retain(|(name, _): &(String, String)| !name.eq_ignore_ascii_case(&k));
                    headers.push((k, v));
                }
            }
            let tls = TlsFiles {
                ca: pick("CERTIFICATE").map(|(_, p)| PathBuf::from(p)),
                client_cert: pick("CLIENT_CERTIFICATE").map(|(_, p)| PathBuf::from(p)),
                client_key: pick("CLIENT_KEY").map(|(_, p)| PathBuf::from(p)),
            };
            if tls.client_cert.is_some() != tls.client_key.is_some() {
                return Err(SettingsError(format!(
                    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE and OTEL_EXPORTER_OTLP_CLIENT_KEY \
                     (or their {up}_ forms) must be set together"
                )));
            }
            signals.push(SignalSettings {
                destination,
                encoding,
                headers,
                gzip,
                timeout,
                tls,
            });
        }
        let host = get("HOSTNAME").or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        });
        let signals: [SignalSettings; 3] = signals
            .try_into()
            .expect("invariant: one settings entry per signal");
        Ok(ExporterSettings {
            data_dir,
            signals,
            resource: ResourceInfo::from_env(env, host),
            queue_capacity: 4096,
            batch_max: 512,
            batch_age: Duration::from_secs(1),
            metrics_interval: Duration::from_secs(30),
            spool_max_bytes: DEFAULT_SPOOL_MAX,
            retry_initial: Duration::from_millis(500),
            retry_max: Duration::from_secs(30),
            journal: None,
            observe_series: false,
        })
    }

    /// The settings of one signal.
    pub fn signal(&self, s: Signal) -> &SignalSettings {
        &self.signals[s as usize]
    }
}

fn check_url(url: &str, signal: &str) -> Result<String, SettingsError> {
    let var = if signal.is_empty() {
        "OTEL_EXPORTER_OTLP_ENDPOINT / --otlp-endpoint".to_string()
    } else {
        format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e| SettingsError(format!("{var}={url:?}: {e}")))?;
    match uri.scheme_str() {
        Some("http") | Some("https") if uri.host().is_some() => Ok(url.to_string()),
        _ => Err(SettingsError(format!(
            "{var}={url:?}: expected an http:// or https:// URL"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn no_endpoint_means_file_ledger() {
        let s = ExporterSettings::resolve(None, "d".into(), &env(&[])).unwrap();
        for sig in Signal::ALL {
            assert_eq!(s.signal(sig).destination, Destination::File);
            assert_eq!(s.signal(sig).encoding, Encoding::Protobuf);
            assert_eq!(s.signal(sig).timeout, DEFAULT_TIMEOUT);
        }
        assert_eq!(
            s.resource.attributes[0],
            ("service.name".into(), "veil".into())
        );
    }

    #[test]
    fn base_and_per_signal_endpoints() {
        let e = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://logs:9/custom"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            (
                "OTEL_EXPORTER_OTLP_HEADERS",
                "authorization=Bearer%20k,x-a=1",
            ),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "X-A=2"),
            ("OTEL_SERVICE_NAME", "gateway"),
            (
                "OTEL_RESOURCE_ATTRIBUTES",
                "service.name=ignored,deployment.environment.name=prod",
            ),
        ]);
        // The flag wins over the variable.
        let s = ExporterSettings::resolve(Some("https://flag:4318/"), "d".into(), &e).unwrap();
        let t = s.signal(Signal::Traces);
        assert_eq!(
            t.destination,
            Destination::Otlp("https://flag:4318/v1/traces".into())
        );
        assert_eq!(
            s.signal(Signal::Logs).destination,
            Destination::Otlp("http://logs:9/custom".into())
        );
        assert_eq!(t.encoding, Encoding::Json);
        assert_eq!(s.signal(Signal::Metrics).encoding, Encoding::Protobuf);
        assert!(t.gzip);
        assert_eq!(t.timeout, Duration::from_millis(2500));
        assert_eq!(
            t.headers,
            vec![
                ("authorization".into(), "Bearer k".into()),
                ("X-A".into(), "2".into())
            ]
        );
        assert_eq!(
            s.signal(Signal::Logs).headers[1],
            ("x-a".into(), "1".into())
        );
        let attrs = &s.resource.attributes;
        assert!(attrs.contains(&("service.name".into(), "gateway".into())));
        assert!(attrs.contains(&("deployment.environment.name".into(), "prod".into())));
        let s = ExporterSettings::resolve(None, "d".into(), &e).unwrap();
        assert_eq!(
            s.signal(Signal::Metrics).destination,
            Destination::Otlp("http://env:4318/v1/metrics".into())
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "localhost:4318"),
            ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/k.pem"),
        ] {
            let err = ExporterSettings::resolve(None, "d".into(), &env(&[(k, v)])).unwrap_err();
            assert!(err.to_string().contains(k), "{err}");
        }
    }
}
