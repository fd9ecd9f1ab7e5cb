//! # Sender: one OTLP/HTTP export attempt and what to do with its answer.
//!
//! POSTs an encoded batch (gzip when asked) and classifies the answer per the OTLP
//! specification (otel-genai.md §2): 200 is delivered (a partial success is logged, not
//! retried); 429, 502, 503, 504 and connection failures are retryable, honouring
//! `Retry-After`; everything else is rejected for good.
//!
//! Owns: the HTTP client (hyper-util legacy client over hyper-rustls, keep-alive pooled).
//! Never touches the spool or records.

use std::io::{self, Write};
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use prost::Message;

use super::otlp::{Encoding, Signal};
use super::settings::TlsFiles;

/// Largest uncompressed batch sent: the OTLP limit of 64 MiB (otel-genai.md §2).
pub const MAX_REQUEST_BYTES: usize = 64 << 20;

/// Largest response body read: 4 MiB; larger answers are not retried (otel-genai.md §2).
const MAX_RESPONSE_BYTES: usize = 4 << 20;

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// The collector took the batch (possibly with a logged partial success).
    Delivered,
    /// Try again later; `after` is the server's `Retry-After`, if any.
    Retry {
        /// Server-requested delay.
        after: Option<Duration>,
        /// What went wrong, for the log.
        why: String,
    },
    /// Never retry this batch.
    Reject {
        /// What went wrong, for the log.
        why: String,
    },
}

/// `google.rpc.Status`, the body of OTLP error answers; missing from `opentelemetry-proto`.
#[derive(Clone, PartialEq, prost::Message)]
struct RpcStatus {
    #[prost(int32, tag = "1")]
    code: i32,
    #[prost(string, tag = "2")]
    message: String,
}

/// A shared OTLP/HTTP client (cheap to clone).
#[derive(Debug, Clone)]
pub struct OtlpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl Default for OtlpClient {
    fn default() -> Self {
        Self::new()
    }
}

fn read_pem(path: &Path, what: &str) -> io::Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| io::Error::new(e.kind(), format!("{what} {}: {e}", path.display())))
}

impl OtlpClient {
    /// A client trusting the webpki roots, for `http://` and `https://` endpoints.
    pub fn new() -> Self {
        Self::with_tls(&TlsFiles::default()).expect("invariant: no files to load")
    }

    /// A client that also trusts `tls.ca` and presents `tls.client_cert` (mTLS). Errors
    /// name the file.
    pub fn with_tls(tls_files: &TlsFiles) -> io::Result<Self> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(ca) = &tls_files.ca {
            let pem = read_pem(ca, "OTLP certificate")?;
            let mut n = 0;
            for cert in rustls_pemfile::certs(&mut &pem[..]) {
                roots.add(cert?).map_err(|e| {
                    io::Error::other(format!("OTLP certificate {}: {e}", ca.display()))
                })?;
                n += 1;
            }
            if n == 0 {
                return Err(io::Error::other(format!(
                    "OTLP certificate {}: no PEM certificate in it",
                    ca.display()
                )));
            }
        }
        let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("invariant: ring supports the default protocol versions")
        .with_root_certificates(roots);
        let tls = match (&tls_files.client_cert, &tls_files.client_key) {
            (Some(cert), Some(key)) => {
                let pem = read_pem(cert, "OTLP client certificate")?;
                let chain = rustls_pemfile::certs(&mut &pem[..]).collect::<Result<Vec<_>, _>>()?;
                let pem = read_pem(key, "OTLP client key")?;
                let key_der = rustls_pemfile::private_key(&mut &pem[..])?.ok_or_else(|| {
                    io::Error::other(format!(
                        "OTLP client key {}: no PEM key in it",
                        key.display()
                    ))
                })?;
                builder
                    .with_client_auth_cert(chain, key_der)
                    .map_err(|e| io::Error::other(format!("OTLP client certificate: {e}")))?
            }
            _ => builder.with_no_client_auth(),
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .build();
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(OtlpClient { client })
    }

    /// One attempt: POST `payload` to `url`, within `timeout`.
    #[allow(clippy::too_many_arguments)]
    pub async fn send(
        self,
        url: String,
        signal: Signal,
        enc: Encoding,
        payload: Bytes,
        headers: Vec<(String, String)>,
        gzip: bool,
        timeout: Duration,
    ) -> Attempt {
        if payload.len() > MAX_REQUEST_BYTES {
            return Attempt::Reject {
                why: format!(
                    "batch of {} bytes is over the 64 MiB OTLP limit",
                    payload.len()
                ),
            };
        }
        let body = if gzip {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            match gz.write_all(&payload).and_then(|_| gz.finish()) {
                Ok(b) => Bytes::from(b),
                Err(e) => {
                    return Attempt::Reject {
                        why: format!("gzip: {e}"),
                    };
                }
            }
        } else {
            payload
        };
        let mut req = Request::post(&url)
            .header(header::CONTENT_TYPE, enc.content_type())
            .header(
                header::USER_AGENT,
                concat!("veil/", env!("CARGO_PKG_VERSION")),
            );
        if gzip {
            req = req.header(header::CONTENT_ENCODING, "gzip");
        }
        for (k, v) in &headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = match req.body(Full::new(body)) {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Reject {
                    why: format!("bad request to {url}: {e}"),
                };
            }
        };
        let fut = async {
            let resp = self.client.request(req).await.map_err(|e| {
                // Connect failures and disconnects are retryable.
                format!("{url}: {e}{}", source_chain(&e))
            })?;
            let status = resp.status();
            let retry_after = resp
                .headers()
                .get(header::RETRY_AFTER)
                .and_then(retry_after);
            let ctype = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes());
            Ok::<_, String>((status, retry_after, ctype, body))
        };
        let (status, after, ctype, body) = match tokio::time::timeout(timeout, fut).await {
            Err(_) => {
                return Attempt::Retry {
                    after: None,
                    why: format!("{url}: no answer within {timeout:?}"),
                };
            }
            Ok(Err(why)) => return Attempt::Retry { after: None, why },
            Ok(Ok(r)) => r,
        };
        classify(signal, status, after, &ctype, body.ok(), &url)
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = String::new();
    let mut cur = e.source();
    for _ in 0..4 {
        let Some(c) = cur else { break };
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Parses `Retry-After`: delay seconds or an HTTP date.
pub fn retry_after(v: &HeaderValue) -> Option<Duration> {
    let s = v.to_str().ok()?.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(s).ok()?;
    Some(when.duration_since(SystemTime::now()).unwrap_or_default())
}

fn classify(
    signal: Signal,
    status: StatusCode,
    after: Option<Duration>,
    ctype: &str,
    body: Option<Bytes>,
    url: &str,
) -> Attempt {
    let json = ctype.starts_with("application/json");
    if status.is_success() {
        if let Some(b) = body.filter(|b| !b.is_empty()) {
            log_partial_success(signal, json, &b, url);
        }
        return Attempt::Delivered;
    }
    let Some(body) = body else {
        // Over 4 MiB: not a collector's answer; never retried (otel-genai.md §2).
        return Attempt::Reject {
            why: format!("{url} answered {status} with a body over 4 MiB"),
        };
    };
    let message = if json {
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v.get("message")?.as_str().map(str::to_string))
            .unwrap_or_default()
    } else {
        RpcStatus::decode(body.as_ref())
            .map(|s| s.message)
            .unwrap_or_default()
    };
    let why = format!("{url} answered {status} {message}")
        .trim_end()
        .to_string();
    match status.as_u16() {
        429 | 502 | 503 | 504 => Attempt::Retry { after, why },
        _ => Attempt::Reject { why },
    }
}

fn log_partial_success(signal: Signal, json: bool, body: &[u8], url: &str) {
    use opentelemetry_proto::tonic::collector::{logs, metrics, trace};
    let (rejected, message) = if json {
        // Through `Value`: the crate's serde rejects the string int64s (otel-genai.md §4).
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            return;
        };
        let Some(ps) = v.get("partialSuccess") else {
            return;
        };
        let rejected = ["rejectedSpans", "rejectedLogRecords", "rejectedDataPoints"]
            .iter()
            .find_map(|k| ps.get(*k))
            .and_then(|r| r.as_i64().or_else(|| r.as_str()?.parse().ok()))
            .unwrap_or(0);
        let msg = ps
            .get("errorMessage")
            .and_then(|m| m.as_str())
            .unwrap_or("")
            .to_string();
        (rejected, msg)
    } else {
        match signal {
            Signal::Traces => trace::v1::ExportTraceServiceResponse::decode(body)
                .ok()
                .and_then(|r| r.partial_success)
                .map(|p| (p.rejected_spans, p.error_message)),
            Signal::Logs => logs::v1::ExportLogsServiceResponse::decode(body)
                .ok()
                .and_then(|r| r.partial_success)
                .map(|p| (p.rejected_log_records, p.error_message)),
            Signal::Metrics => metrics::v1::ExportMetricsServiceResponse::decode(body)
                .ok()
                .and_then(|r| r.partial_success)
                .map(|p| (p.rejected_data_points, p.error_message)),
        }
        .unwrap_or_default()
    };
    if rejected > 0 {
        tracing::error!(
            signal = signal.name(),
            rejected,
            message,
            url,
            "export: collector rejected part of a batch"
        );
    } else if !message.is_empty() {
        tracing::warn!(
            signal = signal.name(),
            message,
            url,
            "export: collector warning"
        );
    }
}

#[cfg(test)]
mod tests;
