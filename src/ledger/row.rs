//! # One record as ledger rows: the `exchanges` row, its `content` row, its `daily` share.
//!
//! A pure mapping from [`Record`] (already redacted) to column values, so the writer only
//! binds and the mapping can be tested without a database. Units are in the column names:
//! `_us` microseconds, `_nusd` nano-USD (10⁻⁹ USD, integers so sums are exact), `_bytes`.

use std::time::{Duration, SystemTime};

use crate::record::Record;

/// `start` as stored: ISO 8601 UTC with microseconds (`2026-11-29T12:00:00.123456Z`).
/// Times before 1970 or after 9999 are clamped to those years' bounds.
pub fn iso_utc(t: SystemTime) -> String {
    let dt = time::OffsetDateTime::from(t);
    let dt = dt.clamp(
        time::OffsetDateTime::UNIX_EPOCH,
        time::macros::datetime!(9999-12-31 23:59:59.999999 UTC),
    );
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        dt.year(),
        u8::from(dt.month()),
        dt.day(),
        dt.hour(),
        dt.minute(),
        dt.second(),
        dt.microsecond()
    )
}

/// Parses what [`iso_utc`] writes (and any RFC 3339 time) back to a `SystemTime`.
pub fn parse_iso(s: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// USD to nano-USD, rounded to the nearest. `None` for an unknown price, a negative or
/// non-finite value, or one past `i64` (9.2 billion USD): never a fake 0.
pub fn nano_usd(usd: f64) -> Option<i64> {
    let n = (usd * 1e9).round();
    (n.is_finite() && (0.0..=i64::MAX as f64).contains(&n)).then_some(n as i64)
}

/// Microseconds in a duration, saturating at `i64::MAX` (292,000 years).
pub fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A `u64` count as SQLite's `INTEGER` (signed 64-bit), saturating.
pub fn int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The model a row is counted under in reports and the rollup: the response model (what
/// actually answered), else the requested one, else empty.
pub fn model(r: &Record) -> &str {
    r.response_model
        .as_deref()
        .or(r.request_model.as_deref())
        .unwrap_or("")
}

/// Whether the exchange counts as an error: it has an `error.type` (an HTTP error status,
/// the provider's error, or veil's failure class such as an abort).
pub fn is_error(r: &Record) -> bool {
    r.error_type.is_some()
}

/// Tool calls in the answer: `tool_call` parts of the redacted output messages. `None` when
/// the rules kept no output content (the count is then unknown, not zero).
pub fn tool_calls(r: &Record) -> Option<i64> {
    let messages = r.output_messages.as_ref()?.as_array()?;
    let n = messages
        .iter()
        .filter_map(|m| m.get("parts")?.as_array())
        .flatten()
        .filter(|p| p.get("type").and_then(|t| t.as_str()) == Some("tool_call"))
        .count();
    Some(int(n as u64))
}

/// The record's content as the rules emitted it, as JSON text per column; `None` when the
/// rules let no content out (then no `content` row is written).
pub fn content(r: &Record) -> Option<[Option<String>; 3]> {
    let text = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string());
    let cols = [
        text(&r.system_instructions),
        text(&r.input_messages),
        text(&r.output_messages),
    ];
    cols.iter().any(Option::is_some).then_some(cols)
}

/// The key of the record's `daily` rollup row, borrowed from the record (the writer sums a
/// whole group in memory first: no allocation per record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DayKey<'a> {
    /// `YYYY-MM-DD` (UTC) of the start, as ASCII bytes.
    pub day: [u8; 10],
    /// Provider name.
    pub provider: &'static str,
    /// [`model`].
    pub model: &'a str,
    /// Feature, or empty.
    pub feature: &'a str,
    /// API key fingerprint, or empty.
    pub api_key_fp: &'a str,
}

impl DayKey<'_> {
    /// The day as text (`YYYY-MM-DD`).
    pub fn day(&self) -> &str {
        std::str::from_utf8(&self.day).unwrap_or("")
    }
}

/// The sums of one `daily` row; all counts, cost in nano-USD.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaySums {
    /// Exchanges.
    pub requests: i64,
    /// Exchanges with an error ([`is_error`]).
    pub errors: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Cache-read input tokens.
    pub cache_read_tokens: i64,
    /// Cache-write input tokens.
    pub cache_write_tokens: i64,
    /// Reasoning output tokens.
    pub reasoning_tokens: i64,
    /// Cost, nano-USD (unknown prices add nothing).
    pub cost_nusd: i64,
}

impl DaySums {
    /// Adds one record's share (saturating).
    pub fn add(&mut self, r: &Record) {
        let tok = |t: Option<u64>| int(t.unwrap_or(0));
        self.requests = self.requests.saturating_add(1);
        self.errors = self.errors.saturating_add(i64::from(is_error(r)));
        self.input_tokens = self.input_tokens.saturating_add(tok(r.usage.input_tokens));
        self.output_tokens = self
            .output_tokens
            .saturating_add(tok(r.usage.output_tokens));
        self.cache_read_tokens = self
            .cache_read_tokens
            .saturating_add(tok(r.usage.cache_read_tokens));
        self.cache_write_tokens = self
            .cache_write_tokens
            .saturating_add(tok(r.usage.cache_creation_tokens));
        self.reasoning_tokens = self
            .reasoning_tokens
            .saturating_add(tok(r.usage.reasoning_tokens));
        let cost = r.cost_usd.and_then(nano_usd).unwrap_or(0);
        self.cost_nusd = self.cost_nusd.saturating_add(cost);
    }
}

/// The record's rollup key; `start` is the record's start as [`iso_utc`] wrote it.
pub fn day_key<'a>(r: &'a Record, start: &str) -> DayKey<'a> {
    let mut day = [b'0'; 10];
    if let Some(d) = start.as_bytes().get(..10) {
        day.copy_from_slice(d);
    }
    DayKey {
        day,
        provider: r.provider.as_str(),
        model: model(r),
        feature: r.feature.as_deref().unwrap_or_default(),
        api_key_fp: r.api_key_fingerprint.as_deref().unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso_utc_is_fixed_width_and_round_trips() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_795_000_000, 123_456_789);
        let s = iso_utc(t);
        assert_eq!(s, "2026-11-18T11:06:40.123456Z");
        assert_eq!(
            parse_iso(&s),
            Some(SystemTime::UNIX_EPOCH + Duration::new(1_795_000_000, 123_456_000))
        );
        assert_eq!(iso_utc(SystemTime::UNIX_EPOCH).len(), s.len());
    }

    #[test]
    fn nano_usd_is_exact_for_prices_and_refuses_nonsense() {
        assert_eq!(nano_usd(0.000_002_5), Some(2_500));
        assert_eq!(nano_usd(1.0), Some(1_000_000_000));
        assert_eq!(nano_usd(-1.0), None);
        assert_eq!(nano_usd(f64::NAN), None);
        assert_eq!(nano_usd(1e300), None);
    }

    #[test]
    fn tool_calls_count_tool_call_parts_and_are_unknown_without_content() {
        let mut r = crate::ledger::testing::record("r1");
        assert_eq!(tool_calls(&r), None);
        r.output_messages = Some(serde_json::json!([{"role":"assistant","parts":[
            {"type":"text","content":"x"},
            {"type":"tool_call","id":"a","name":"f"},
            {"type":"tool_call","id":"b","name":"g"}]}]));
        assert_eq!(tool_calls(&r), Some(2));
    }
}
