//! # Audit: who read or destroyed which sealed exchange, and when.
//!
//! Owns [`AuditEvent`] and the [`AuditSink`] seam. Every unseal, forget, retention purge and
//! rewrap in [`super::store`] emits one event per request ID. The default sink,
//! [`JsonlAuditSink`], appends one JSON line per event to `<data>/audit.jsonl` and logs it via
//! `tracing`; the OTLP exporter implements [`AuditSink`] to ship the same events.
//!
//! Events carry IDs, pseudonyms and reasons only: never content, never a raw user ID. This
//! module must never touch keys, the store's files or the network.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

use crate::exchange::ExchangeId;

/// What happened to a sealed exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// Someone decrypted and read it.
    Unseal,
    /// It was deleted on request (by ID or by user).
    Forget,
    /// It was deleted by the retention policy.
    Purge,
    /// Its data key was re-wrapped under a newer master key.
    Rewrap,
}

impl AuditKind {
    /// Stable lowercase name (`unseal`, `forget`, `purge`, `rewrap`).
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Unseal => "unseal",
            AuditKind::Forget => "forget",
            AuditKind::Purge => "purge",
            AuditKind::Rewrap => "rewrap",
        }
    }
}

/// One audited action on one sealed exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// What was done.
    pub kind: AuditKind,
    /// Which exchange.
    pub request_id: ExchangeId,
    /// The user pseudonym (`u_…`) the exchange belonged to, when known. Never a raw user ID.
    pub user: Option<String>,
    /// When it was done.
    pub time: SystemTime,
    /// Who did it: `cli:<unix user>`, `admin:<peer addr>`, `retention`, ...
    pub actor: String,
    /// Why (free text from the operator, or `retention`, `rotation`).
    pub reason: String,
}

impl AuditEvent {
    /// The event as one JSON object (`time` as RFC 3339 UTC).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": self.kind,
            "request_id": self.request_id.to_string(),
            "user": self.user,
            "time": rfc3339(self.time),
            "actor": self.actor,
            "reason": self.reason,
        })
    }
}

/// Where audit events go. Implementations must not block for long (they run on the store's
/// caller threads) and must not fail the action: an action already done is reported even if
/// the sink is broken, and the sink logs its own trouble.
pub trait AuditSink: Send + Sync + fmt::Debug {
    /// Records one event.
    fn emit(&self, event: &AuditEvent);
}

/// The default sink: `<data>/audit.jsonl` (append-only, one JSON object per line) plus a
/// `tracing` info line per event.
#[derive(Debug)]
pub struct JsonlAuditSink {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl JsonlAuditSink {
    /// A sink appending to `path` (opened lazily, created 0600).
    pub fn new(path: impl AsRef<Path>) -> Self {
        JsonlAuditSink {
            path: path.as_ref().to_path_buf(),
            file: Mutex::new(None),
        }
    }

    /// Where the events go.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AuditSink for JsonlAuditSink {
    fn emit(&self, event: &AuditEvent) {
        tracing::info!(
            audit.kind = event.kind.as_str(),
            exchange.id = %event.request_id,
            user.pseudonym = event.user.as_deref().unwrap_or("-"),
            audit.actor = %event.actor,
            audit.reason = %event.reason,
            "sealed store audit event"
        );
        let mut line = event.to_json().to_string();
        line.push('\n');
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            use std::os::unix::fs::OpenOptionsExt;
            match OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .open(&self.path)
            {
                Ok(f) => *guard = Some(f),
                Err(e) => {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot open audit log");
                    return;
                }
            }
        }
        if let Some(f) = guard.as_mut()
            && let Err(e) = f.write_all(line.as_bytes())
        {
            tracing::error!(path = %self.path.display(), error = %e, "cannot write audit log");
            *guard = None;
        }
    }
}

/// Sends every event to each of several sinks in order (e.g. the JSONL file and OTLP).
#[derive(Debug, Clone, Default)]
pub struct FanoutAuditSink(pub Vec<std::sync::Arc<dyn AuditSink>>);

impl AuditSink for FanoutAuditSink {
    fn emit(&self, event: &AuditEvent) {
        for sink in &self.0 {
            sink.emit(event);
        }
    }
}

/// Formats a time as RFC 3339 UTC with milliseconds (`2026-11-22T04:25:56.123Z`).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (H. Hinnant's algorithm), proleptic Gregorian.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_321_556_123);
        assert_eq!(rfc3339(t), "2026-11-22T04:25:56.123Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
