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
    IsoUtc::new(t).as_str().to_owned()
}

/// [`iso_utc`] in a fixed buffer on the stack: the writer formats one per row, and a `format!`
/// through `time`'s calendar types cost it about half a microsecond and an allocation each.
#[derive(Debug, Clone, Copy)]
pub struct IsoUtc([u8; 27]);

impl IsoUtc {
    /// Formats `t` (clamped as [`iso_utc`] says).
    pub fn new(t: SystemTime) -> Self {
        // 9999-12-31T23:59:59.999999Z, in microseconds since the epoch.
        const MAX_US: u64 = 253_402_300_799_999_999;
        let us = t.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| {
            u64::try_from(d.as_micros()).map_or(MAX_US, |us| us.min(MAX_US))
        });
        let secs = us / 1_000_000;
        let (y, m, d) = civil_from_days(secs / 86_400);
        let sod = secs % 86_400;
        let mut b = *b"0000-00-00T00:00:00.000000Z";
        let mut put = |at: usize, width: usize, mut v: u64| {
            for i in (at..at + width).rev() {
                b[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, y);
        put(5, 2, m);
        put(8, 2, d);
        put(11, 2, sod / 3600);
        put(14, 2, sod / 60 % 60);
        put(17, 2, sod % 60);
        put(20, 6, us % 1_000_000);
        IsoUtc(b)
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// Days since 1970-01-01 (at most those of 9999-12-31) → (year, month, day), from the `time`
/// crate's calendar (no allocation; only its `format!` path was too slow for the writer).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let (y, m, d) = i64::try_from(days)
        .ok()
        .and_then(|days| days.checked_mul(86_400))
        .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
        .map_or((9999, time::Month::December, 31), |t| t.to_calendar_date());
    (
        u64::try_from(y).unwrap_or(0),
        u64::from(u8::from(m)),
        u64::from(d),
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
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex of `N` bytes in a buffer of `M` = 2·`N` on the stack (trace and span ids:
/// the writer formats two per row).
pub fn hex_array<const N: usize, const M: usize>(bytes: &[u8; N]) -> HexArray<M> {
    let mut out = [b'0'; M];
    for (i, b) in bytes.iter().enumerate().take(M / 2) {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 15)];
    }
    HexArray(out)
}

/// What [`hex_array`] returns.
#[derive(Debug, Clone, Copy)]
pub struct HexArray<const M: usize>([u8; M]);

impl<const M: usize> HexArray<M> {
    /// The text.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
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
/// the rules kept no output content (the count is then unknown, not zero). Read from the
/// record's [`prepare`](Record::prepare)d text, made on the pipeline worker.
pub fn tool_calls(r: &Record) -> Option<i64> {
    r.prepare().tool_calls.map(int)
}

/// The record's content as the rules emitted it, as JSON text per column (system
/// instructions, input, output); `None` when the rules let no content out (then no `content`
/// row is written). Borrowed from the record's [`prepare`](Record::prepare)d text: the writer
/// serializes nothing.
pub fn content(r: &Record) -> Option<[Option<&str>; 3]> {
    let c = &r.prepare().content;
    if c.iter().all(Option::is_none) {
        return None;
    }
    Some([c[0].as_deref(), c[1].as_deref(), c[2].as_deref()])
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

    /// The calendar arithmetic of [`IsoUtc`] against the `time` crate's, over leap days,
    /// century years (2100 is not a leap year, 2000 is), both clamps and a spread of instants.
    #[test]
    fn iso_utc_agrees_with_the_time_crate_and_clamps() {
        let by_time = |t: SystemTime| {
            let dt = time::OffsetDateTime::from(t);
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
        };
        let at = |secs: u64, nanos: u32| SystemTime::UNIX_EPOCH + Duration::new(secs, nanos);
        let mut instants = vec![
            at(0, 0),
            at(951_782_400, 999_999_999), // 2000-02-29
            at(4_107_542_399, 1_000),     // 2100-02-28T23:59:59
            at(4_107_542_400, 0),         // 2100-03-01
            at(1_795_000_000, 123_456_789),
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            instants.push(at(x % 253_402_300_800, (x >> 20) as u32 % 1_000_000_000));
        }
        for t in instants {
            assert_eq!(IsoUtc::new(t).as_str(), by_time(t), "{t:?}");
        }
        assert_eq!(
            iso_utc(SystemTime::UNIX_EPOCH - Duration::from_secs(1)),
            "1970-01-01T00:00:00.000000Z"
        );
        assert_eq!(
            iso_utc(at(300_000_000_000, 0)),
            "9999-12-31T23:59:59.999999Z"
        );
    }

    #[test]
    fn hex_on_the_stack_is_the_same_as_hex() {
        let id: [u8; 16] = std::array::from_fn(|i| (i as u8).wrapping_mul(37) ^ 0xa5);
        let span: [u8; 8] = [0, 1, 0x7f, 0x80, 0xfe, 0xff, 0x10, 0x0a];
        assert_eq!(hex_array::<16, 32>(&id).as_str(), hex(&id));
        assert_eq!(hex_array::<8, 16>(&span).as_str(), "00017f80feff100a");
        assert_eq!(hex(&span), "00017f80feff100a");
    }

    #[test]
    fn content_text_is_the_json_of_each_column_and_none_without_content() {
        let mut r = crate::ledger::testing::record("r1");
        r.system_instructions = None;
        r.input_messages = None;
        r.output_messages = None;
        let empty = r.clone();
        assert!(content(&empty).is_none());
        // A clone starts with an empty cache: what it is given afterwards is what it writes.
        r.input_messages = Some(serde_json::json!([{"role":"user","parts":[
            {"type":"text","content":"a \"quoted\" é"}]}]));
        let long = serde_json::json!(["x".repeat(5000)]);
        r.output_messages = Some(long.clone());
        let cols = content(&r).unwrap();
        assert_eq!(cols[0], None);
        assert_eq!(
            cols[1],
            Some(r.input_messages.as_ref().unwrap().to_string().as_str())
        );
        assert_eq!(cols[2], Some(long.to_string().as_str()));
        let mut short = empty.clone();
        short.output_messages = Some(serde_json::json!([]));
        assert_eq!(content(&short).unwrap()[2], Some("[]"));
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
        let r = crate::ledger::testing::record("r1");
        assert_eq!(tool_calls(&r), None);
        let mut r = r.clone();
        r.output_messages = Some(serde_json::json!([{"role":"assistant","parts":[
            {"type":"text","content":"x"},
            {"type":"tool_call","id":"a","name":"f"},
            {"type":"tool_call","id":"b","name":"g"}]}]));
        assert_eq!(tool_calls(&r), Some(2));
    }
}
