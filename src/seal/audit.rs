//! # Audit: who read or destroyed which sealed exchange, and when.
//!
//! Owns [`AuditEvent`] and the [`AuditSink`] seam. Every unseal, forget, retention purge and
//! rewrap in [`super::store`] emits one event per request ID, *before* the action is reported:
//! a sink that cannot record the event makes the action fail closed. The default sink,
//! [`JsonlAuditSink`], appends one JSON line per event to `<data>/audit.jsonl`, fsyncs, and
//! logs it via `tracing`; the OTLP exporter implements [`AuditSink`] (best-effort) to ship the
//! same events.
//!
//! Events carry IDs, pseudonyms and reasons only: never content, never a raw user ID. This
//! module must never touch keys, the store's files or the network.

use std::fmt;
use std::fs::{File, OpenOptions};
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

/// An audit entry that could not be recorded durably. The action it describes must then not
/// be reported as done: `unseal` returns no plaintext, `forget` destroys nothing (veil#10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditError(String);

impl AuditError {
    /// An error with a message for humans (a path and the OS error; never content).
    pub fn new(msg: impl fmt::Display) -> Self {
        AuditError(msg.to_string())
    }
}

impl fmt::Display for AuditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for AuditError {}

/// Where audit events go.
///
/// The store calls a sink *before* it reports an action: an `Err` means "not recorded", and
/// the store then fails the action closed (no plaintext from `unseal`; nothing destroyed by
/// `forget` or `purge`). A durable sink (the local `audit.jsonl`) returns `Ok` only once the
/// events are on disk; a best-effort one (OTLP forwarding) returns `Ok` and logs its own
/// trouble. Implementations must not block for long (they run on the store's threads).
pub trait AuditSink: Send + Sync + fmt::Debug {
    /// Records one event.
    fn emit(&self, event: &AuditEvent) -> Result<(), AuditError>;

    /// Records several events, all or none where the sink can promise it (the JSONL sink
    /// writes them with one write and one fsync). The default emits them one by one and stops
    /// at the first error.
    fn emit_all(&self, events: &[AuditEvent]) -> Result<(), AuditError> {
        events.iter().try_for_each(|e| self.emit(e))
    }
}

/// The default sink: `<data>/audit.jsonl` (append-only, one JSON object per line, fsynced
/// before [`AuditSink::emit`] returns) plus a `tracing` info line per event.
///
/// A write that fails part-way (ENOSPC) is cut back, so no half line is left, and a torn tail
/// left by a crash is cut before the next append; the error is returned, never swallowed.
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

    fn open(&self) -> std::io::Result<File> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)?;
        let cut = crate::os::truncate_torn_line(&f)?;
        if cut > 0 {
            tracing::warn!(path = %self.path.display(), bytes = cut, "audit log: cut a torn last line");
        }
        Ok(f)
    }
}

impl AuditSink for JsonlAuditSink {
    fn emit(&self, event: &AuditEvent) -> Result<(), AuditError> {
        self.emit_all(std::slice::from_ref(event))
    }

    fn emit_all(&self, events: &[AuditEvent]) -> Result<(), AuditError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut lines = String::new();
        for event in events {
            lines.push_str(&event.to_json().to_string());
            lines.push('\n');
        }
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let result = match guard.as_ref() {
            Some(f) => crate::os::append_lines(f, lines.as_bytes(), true),
            None => self.open().and_then(|f| {
                let r = crate::os::append_lines(&f, lines.as_bytes(), true);
                *guard = Some(f);
                r
            }),
        };
        if let Err(e) = result {
            tracing::error!(path = %self.path.display(), error = %e, events = events.len(), "cannot write the audit log: the action is refused");
            // Reopen next time: that also cuts a torn tail the failed write may have left.
            *guard = None;
            return Err(AuditError::new(format!(
                "audit log {}: {e}",
                self.path.display()
            )));
        }
        drop(guard);
        for event in events {
            tracing::info!(
                audit.kind = event.kind.as_str(),
                exchange.id = %event.request_id,
                user.pseudonym = event.user.as_deref().unwrap_or("-"),
                audit.actor = %event.actor,
                audit.reason = %event.reason,
                "sealed store audit event"
            );
        }
        Ok(())
    }
}

/// Sends every event to each of several sinks in order (e.g. the JSONL file, then OTLP) and
/// stops at the first that fails, returning its error: put the durable sink first, so a
/// best-effort one never ships an event for an action that was then refused.
#[derive(Debug, Clone, Default)]
pub struct FanoutAuditSink(pub Vec<std::sync::Arc<dyn AuditSink>>);

impl AuditSink for FanoutAuditSink {
    fn emit(&self, event: &AuditEvent) -> Result<(), AuditError> {
        self.emit_all(std::slice::from_ref(event))
    }

    fn emit_all(&self, events: &[AuditEvent]) -> Result<(), AuditError> {
        self.0.iter().try_for_each(|sink| sink.emit_all(events))
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

    fn event(reason: &str) -> AuditEvent {
        AuditEvent {
            kind: AuditKind::Unseal,
            request_id: ExchangeId::new(),
            user: None,
            time: SystemTime::now(),
            actor: "cli:test".into(),
            reason: reason.into(),
        }
    }

    // See: veil#10
    #[test]
    fn partial_audit_line_is_cut_before_the_next_event() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        // What a write that failed half-way (ENOSPC) and a crash before the cut leave.
        std::fs::write(&path, "{\"kind\":\"unseal\",\"request_id\":\"01").unwrap();
        let sink = JsonlAuditSink::new(&path);
        sink.emit(&event("first")).unwrap();
        sink.emit_all(&[event("second"), event("third")]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let reasons: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["reason"].to_string())
            .collect();
        assert_eq!(reasons, ["\"first\"", "\"second\"", "\"third\""]);
    }

    // See: veil#10
    #[test]
    fn unwritable_audit_log_is_an_error_not_a_log_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::create_dir(&path).unwrap();
        let sink = FanoutAuditSink(vec![std::sync::Arc::new(JsonlAuditSink::new(&path))]);
        let err = sink.emit(&event("x")).unwrap_err();
        assert!(err.to_string().contains("audit.jsonl"), "{err}");
        std::fs::remove_dir(&path).unwrap();
        sink.emit(&event("y")).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    }

    // See: veil#10
    #[test]
    fn full_disk_audit_write_fails_and_leaves_no_half_line() {
        let Some(fs) = crate::seal::tests::Tmpfs::mount(
            "full_disk_audit_write_fails_and_leaves_no_half_line",
            "1m",
        ) else {
            return;
        };
        let path = fs.path().join("audit.jsonl");
        let sink = JsonlAuditSink::new(&path);
        sink.emit(&event("before")).unwrap();
        fs.fill();
        // Enough lines that they cannot fit in the page the file already has.
        let many: Vec<AuditEvent> = (0..64).map(|_| event("while full")).collect();
        let err = sink.emit_all(&many).unwrap_err();
        assert!(err.to_string().contains("No space left"), "{err}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap().lines().count(),
            1,
            "cut back: no half line, none of the failed batch"
        );
        fs.free();
        sink.emit(&event("after")).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        for line in text.lines() {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        assert_eq!(text.lines().count(), 2);
    }

    #[test]
    fn rfc3339_known_dates() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_321_556_123);
        assert_eq!(rfc3339(t), "2026-11-22T04:25:56.123Z");
        let leap = SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
