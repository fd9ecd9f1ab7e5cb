//! # OTLP resource: who is reporting (`service.name`, `service.version`, `host.name`).
//!
//! The last piece of every OTLP request: built once from the environment when the exporter
//! starts (`export::settings`), attached to the traces, logs and metrics requests.
//! [`parse_key_values`] also reads `OTEL_EXPORTER_OTLP_HEADERS`.
//!
//! Owns: the resource attributes and the `k=v,k=v` parser. Reads the environment only
//! through the closure it is given (tests pass their own; nothing here calls `std::env`).

use opentelemetry_proto::tonic::resource::v1::Resource;

use super::attributes::{kv, str_value};

/// The OTLP resource veil reports: `service.name`, `service.version`, `host.name` and
/// `OTEL_RESOURCE_ATTRIBUTES`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResourceInfo {
    /// Resource attributes, in order, keys unique.
    pub attributes: Vec<(String, String)>,
}

impl ResourceInfo {
    /// Builds the resource from environment variables read through `env`
    /// (`OTEL_SERVICE_NAME` wins over `service.name` in `OTEL_RESOURCE_ATTRIBUTES`, which
    /// wins over the default `veil`), and the host name `host`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>, host: Option<String>) -> Self {
        let mut attrs: Vec<(String, String)> = Vec::new();
        let mut set = |k: &str, v: String| {
            if let Some(slot) = attrs.iter_mut().find(|(key, _)| key == k) {
                slot.1 = v;
            } else {
                attrs.push((k.to_string(), v));
            }
        };
        set("service.name", "veil".to_string());
        set("service.version", env!("CARGO_PKG_VERSION").to_string());
        if let Some(h) = host.filter(|h| !h.is_empty()) {
            set("host.name", h);
        }
        if let Some(list) = env("OTEL_RESOURCE_ATTRIBUTES") {
            for (k, v) in parse_key_values(&list) {
                set(&k, v);
            }
        }
        if let Some(name) = env("OTEL_SERVICE_NAME").filter(|s| !s.trim().is_empty()) {
            set("service.name", name.trim().to_string());
        }
        ResourceInfo { attributes: attrs }
    }

    pub(super) fn to_proto(&self) -> Resource {
        Resource {
            attributes: self
                .attributes
                .iter()
                .map(|(k, v)| kv(k, str_value(v)))
                .collect(),
            dropped_attributes_count: 0,
            entity_refs: Vec::new(),
        }
    }
}

/// Parses `k1=v1,k2=v2` (W3C baggage-like, values percent-decoded), as
/// `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_EXPORTER_OTLP_HEADERS` are written. Malformed
/// entries are skipped.
pub fn parse_key_values(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter_map(|item| {
            let (k, v) = item.split_once('=')?;
            let k = percent_decode(k.trim());
            if k.is_empty() {
                return None;
            }
            Some((k, percent_decode(v.trim())))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
