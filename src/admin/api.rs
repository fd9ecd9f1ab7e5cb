//! # Admin API documents: what crosses the wire between the server and its clients.
//!
//! Owns the unsealed exchange's JSON view (the body of `GET /v1/exchanges/{id}`, which
//! `veil unseal` prints as is) and the percent coding of path segments and query values. Pure
//! functions: no I/O, no store, no HTTP.

use std::time::Duration;

use base64::Engine;

use crate::exchange::{Exchange, Outcome, Route};

/// Decodes `%XX` escapes (and leaves everything else as is).
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes everything but unreserved characters (for path segments and queries).
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decoded bodies larger than this are shown as base64 of the captured bytes instead.
const DECODE_LIMIT: usize = 64 << 20;

fn body_json(b: &crate::exchange::Body) -> serde_json::Value {
    let raw = b.bytes();
    let mut v = serde_json::json!({
        "captured_len": raw.len(),
        "wire_len": b.wire_len,
        "truncated": b.truncated,
        "content_encoding": b.content_encoding,
        "chunks": b.chunks.len(),
        "wire_base64": base64::engine::general_purpose::STANDARD.encode(&raw),
    });
    match b.decoded(DECODE_LIMIT) {
        Ok(d) => match std::str::from_utf8(&d) {
            Ok(text) => v["text"] = serde_json::Value::String(text.to_string()),
            Err(_) => {
                v["decoded_base64"] =
                    serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(&d))
            }
        },
        Err(e) => v["decode_error"] = serde_json::Value::String(e.to_string()),
    }
    v
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The JSON an operator sees for an unsealed exchange: every field; bodies as `text` (after
/// `Content-Encoding` is removed) when UTF-8, else `decoded_base64`, and always `wire_base64`
/// (the captured bytes as they crossed the wire).
pub fn exchange_to_json(ex: &Exchange) -> serde_json::Value {
    serde_json::json!({
        "id": ex.id.to_string(),
        "started_at": crate::seal::audit::rfc3339(ex.started_at),
        "timings_ms": {
            "request_end": ex.timings.request_end.map(ms),
            "response_headers": ex.timings.response_headers.map(ms),
            "first_byte": ex.timings.first_byte.map(ms),
            "end": ms(ex.timings.end),
        },
        "client_addr": ex.client_addr.map(|a| a.to_string()),
        "route": match &ex.route {
            Route::Intercept => serde_json::json!({"kind": "intercept"}),
            Route::Gateway { name } => serde_json::json!({"kind": "gateway", "name": name}),
            Route::PlainHttp => serde_json::json!({"kind": "plain_http"}),
        },
        "upstream": {"scheme": ex.upstream.scheme, "host": ex.upstream.host, "port": ex.upstream.port},
        "client_version": ex.client_version,
        "method": ex.method,
        "path": ex.path,
        "request_headers": ex.request_headers,
        "tags": ex.tags,
        "api_key_fingerprint": ex.api_key_fingerprint,
        "request_body": body_json(&ex.request_body),
        "status": ex.status,
        "response_headers": ex.response_headers,
        "response_body": body_json(&ex.response_body),
        "outcome": match &ex.outcome {
            Outcome::UpstreamAborted { reason } => serde_json::json!({"kind": ex.outcome.as_str(), "reason": reason}),
            Outcome::UpstreamFailed { kind, reason } => serde_json::json!({"kind": ex.outcome.as_str(), "failure": kind.as_str(), "reason": reason}),
            _ => serde_json::json!({"kind": ex.outcome.as_str()}),
        },
    })
}
