//! # Ledger: OTLP/JSON lines under `<data>/records/` when no collector is configured.
//!
//! One file per signal and UTC day (`traces-2026-11-22.jsonl`), one `Export*ServiceRequest`
//! JSON object per line: the format of the OpenTelemetry Collector's file exporter, so the
//! files can be replayed into a collector later and `veil tail` can follow them.
//!
//! Owns: files under `<data>/records/`. Never touches the network or records.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::otlp::Signal;

/// `YYYY-MM-DD` (UTC) of `t`.
pub fn utc_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    format!("{y:04}-{m:02}-{d:02}")
}

/// `HH:MM:SS` (UTC) of `t`.
pub fn utc_time(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// The records directory under a data directory.
pub fn records_dir(data: &Path) -> PathBuf {
    data.join("records")
}

/// The ledger file of `signal` on the day of `t`.
pub fn ledger_path(data: &Path, signal: Signal, t: SystemTime) -> PathBuf {
    records_dir(data).join(format!("{}-{}.jsonl", signal.name(), utc_date(t)))
}

/// Appends one JSON request as a line (the payload must hold no newline: compact JSON).
///
/// A failed write leaves no partial line: a torn tail from an earlier failure or crash is cut
/// before appending, and a write that fails part-way (ENOSPC) is cut back before the error is
/// returned, so the next line always starts on a line of its own (veil#10: the next batch was
/// appended to half a line). Not fsynced: the ledger is a best-effort copy of what the exporter
/// sends; one writer per file (the exporter's ledger task per signal).
pub fn append(data: &Path, signal: Signal, json: &[u8], t: SystemTime) -> io::Result<()> {
    let path = ledger_path(data, signal, t);
    // Records hold redacted content, still nobody else's business: 0700 dir, 0600 files.
    crate::export::spool::private_dir(&records_dir(data))?;
    let f = {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .mode(0o600)
            .open(&path)?
    };
    let cut = crate::os::truncate_torn_line(&f)?;
    if cut > 0 {
        tracing::warn!(file = %path.display(), bytes = cut, "ledger: cut a torn last line left by an earlier failed write");
    }
    let mut line = Vec::with_capacity(json.len() + 1);
    line.extend_from_slice(json);
    line.push(b'\n');
    // One write per line so concurrent readers never see half a line joined to another.
    crate::os::append_lines(&f, &line, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn lines(path: &Path) -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
            .collect()
    }

    // See: veil#10
    #[test]
    fn partial_ledger_line_after_enospc_is_cut_before_the_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        let t = UNIX_EPOCH + Duration::from_secs(1_795_321_410);
        append(dir.path(), Signal::Traces, br#"{"batch":1}"#, t).unwrap();
        // The half line a write cut short by ENOSPC leaves behind.
        let path = ledger_path(dir.path(), Signal::Traces, t);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut f, br#"{"resourceSpans":[{"reso"#).unwrap();
        drop(f);
        append(dir.path(), Signal::Traces, br#"{"batch":2}"#, t).unwrap();
        let got = lines(&path);
        assert_eq!(
            got,
            [
                serde_json::json!({"batch":1}),
                serde_json::json!({"batch":2})
            ]
        );
    }

    // See: veil#10
    #[test]
    fn ledger_write_on_a_full_disk_fails_whole_and_the_next_batch_parses() {
        let Some(fs) = crate::seal::tests::Tmpfs::mount(
            "ledger_write_on_a_full_disk_fails_whole_and_the_next_batch_parses",
            "1m",
        ) else {
            return;
        };
        let t = UNIX_EPOCH + Duration::from_secs(1_795_321_410);
        append(fs.path(), Signal::Logs, br#"{"batch":1}"#, t).unwrap();
        fs.fill();
        let big = format!(r#"{{"batch":2,"pad":"{}"}}"#, "x".repeat(64 << 10));
        let err = append(fs.path(), Signal::Logs, big.as_bytes(), t).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "{err}");
        fs.free();
        append(fs.path(), Signal::Logs, br#"{"batch":3}"#, t).unwrap();
        let got = lines(&ledger_path(fs.path(), Signal::Logs, t));
        assert_eq!(
            got,
            [
                serde_json::json!({"batch":1}),
                serde_json::json!({"batch":3})
            ]
        );
    }

    #[test]
    fn dates() {
        assert_eq!(utc_date(UNIX_EPOCH), "1970-01-01");
        // 2026-11-22T04:23:30Z
        let t = UNIX_EPOCH + Duration::from_secs(1_795_321_410);
        assert_eq!(utc_date(t), "2026-11-22");
        assert_eq!(utc_time(t), "04:23:30");
        assert_eq!(
            utc_date(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29"
        );
    }
}
