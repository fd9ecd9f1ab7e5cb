//! # JSON as it crosses the wire: tolerant of lone surrogate escapes.
//!
//! JSON text may escape a lone UTF-16 surrogate (`"\ud800"`): RFC 8259 §8.2 allows it and
//! says parsers may fail on it, JavaScript's `JSON.stringify` emits it for a string cut in the
//! middle of an emoji, and Python's `json.dumps` passes one through. serde_json refuses it, so
//! one such escape in a prompt used to fail the whole provider parse, and the record lost its
//! model, tokens and cost with no word why (veil#10).
//!
//! [`from_slice`] parses as serde_json does; only when that fails does it look for lone
//! surrogate escapes, rewrite each to `\ufffd` (U+FFFD REPLACEMENT CHARACTER, what a UTF-16
//! decoder substitutes), and parse again. A body without one is never copied, and a valid body
//! is never even scanned. The rewrite keeps every byte offset (both escapes are six bytes).
//!
//! [`to_compact`] goes the other way: a `Value` to compact JSON text, byte for byte what
//! `serde_json::to_string` writes, with its strings escaped by `json-escape-simd` (SIMD
//! kernels from sonic-rs) instead of serde_json's byte-at-a-time loop. The record's content
//! text is made this way once per exchange (veil#18: serde_json's escaping was 6.8 % of the
//! pipeline thread at 8 connections in `benches/load.sh`).
//!
//! Owns: bytes in, `serde_json::Value` out, and back. Never logs or returns content: errors
//! say what is wrong and where, not what the text was.

use std::borrow::Cow;

use serde_json::Value;

/// Parses JSON text, rewriting lone surrogate escapes to U+FFFD when they are what stops the
/// parse. The error, if any, is serde_json's for the (rewritten) text: its message names the
/// kind of fault and the line and column, never content.
pub fn from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    match parse_text(bytes) {
        Ok(v) => Ok(v),
        Err(e) => match repair_surrogates(bytes) {
            Cow::Owned(fixed) => serde_json::from_slice(&fixed),
            Cow::Borrowed(_) => Err(e),
        },
    }
}

/// `T` from JSON `bytes`, as `serde_json::from_slice` reads it: the same result and the same
/// error. Bytes that are valid UTF-8 as a whole (nearly every body) are read as text, so
/// serde_json does not validate each string it reads again: one pass over the body instead of
/// a call per string (the strings' validation was ~4k instructions per exchange on the
/// pipeline bench, stop 61). Invalid UTF-8 can only sit inside a string in valid JSON, and
/// such bytes are read by `from_slice`, which reports them as before.
pub(crate) fn parse_text<'de, T: serde::Deserialize<'de>>(
    bytes: &'de [u8],
) -> Result<T, serde_json::Error> {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(bytes),
    }
}

/// [`from_slice`] for text already decoded (an SSE event's data).
pub fn from_str(text: &str) -> Result<Value, serde_json::Error> {
    from_slice(text.as_bytes())
}

/// `v` as compact JSON text: the same bytes as `serde_json::to_string(v)` (object members in
/// the map's iteration order, numbers as serde_json writes them, strings escaped as RFC 8259
/// §7 requires and serde_json chooses: `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other
/// control characters as `\u00XX`, everything else as is).
///
/// `scratch` is cleared and written; keeping it between calls keeps its capacity (the SIMD
/// escaper reserves six times a string's length before writing it; strings over
/// 1 MiB go through serde_json's escaping instead). Recursion follows the
/// value's depth, which serde_json's parser bounds at 128.
pub fn to_compact(v: &Value, scratch: &mut Vec<u8>) -> Box<str> {
    scratch.clear();
    write_compact(v, scratch);
    // Valid UTF-8 by construction (escaped `str`s, ASCII around them); checked rather than
    // assumed, since veil has no `unsafe`.
    match std::str::from_utf8(scratch) {
        Ok(text) => text.into(),
        Err(_) => serde_json::to_string(v).unwrap_or_default().into(),
    }
}

/// Strings longer than this, bytes, are escaped by serde_json: the SIMD escaper reserves six
/// times a string's length before writing it, which for a large prompt (the capture limit is
/// 32 MiB) would be a reservation of 192 MiB for one string.
const SIMD_ESCAPE_MAX: usize = 1 << 20;

/// `s` as a JSON string, quotes included, after whatever `out` holds: the bytes
/// `serde_json::to_writer(out, s)` writes.
pub(crate) fn escape(s: &str, out: &mut Vec<u8>) {
    if s.len() <= SIMD_ESCAPE_MAX {
        json_escape_simd::escape_into(s, out);
    } else {
        // A `str` always serializes.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

fn write_compact(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // serde_json's own digits (itoa, ryu; `null` for what JSON cannot hold).
        Value::Number(n) => {
            let _ = serde_json::to_writer(&mut *out, n);
        }
        Value::String(s) => escape(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_compact(item, out);
            }
            out.push(b']');
        }
        Value::Object(members) => {
            out.push(b'{');
            for (i, (k, item)) in members.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                escape(k, out);
                out.push(b':');
                write_compact(item, out);
            }
            out.push(b'}');
        }
    }
}

/// `bytes` with every escape of a lone surrogate (`\ud800`-`\udbff` not followed by an escaped
/// `\udc00`-`\udfff`, or one of those alone) replaced by `\ufffd`. Borrowed when there is none.
///
/// Escapes are read as a JSON parser reads them: `\\` is an escaped backslash, so in
/// `"\\ud800"` the `ud800` is plain text and stays. Outside strings a valid document has no
/// backslash, so no string tracking is needed.
pub fn repair_surrogates(bytes: &[u8]) -> Cow<'_, [u8]> {
    let mut out: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'\\' {
            i += 1;
            continue;
        }
        let Some(unit) = escaped_unit(bytes, i) else {
            i += 2; // any other escape (`\\`, `\"`, `\n`, ...) is two bytes
            continue;
        };
        if is_high(unit) && escaped_unit(bytes, i + 6).is_some_and(is_low) {
            i += 12; // a valid pair
            continue;
        }
        if is_high(unit) || is_low(unit) {
            out.get_or_insert_with(|| bytes.to_vec())[i..i + 6].copy_from_slice(b"\\ufffd");
        }
        i += 6;
    }
    match out {
        Some(v) => Cow::Owned(v),
        None => Cow::Borrowed(bytes),
    }
}

/// The code unit of a `\uXXXX` escape starting at `i`, if one does.
fn escaped_unit(b: &[u8], i: usize) -> Option<u16> {
    let esc = b.get(i..i + 6)?;
    if esc[0] != b'\\' || esc[1] != b'u' {
        return None;
    }
    let hex = std::str::from_utf8(&esc[2..]).ok()?;
    u16::from_str_radix(hex, 16).ok()
}

fn is_high(u: u16) -> bool {
    (0xD800..=0xDBFF).contains(&u)
}

fn is_low(u: u16) -> bool {
    (0xDC00..=0xDFFF).contains(&u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `parse_text` gives what `serde_json::from_slice` gives, value or error (its message:
    /// kind, line and column), on bodies whose bytes are drawn from JSON's punctuation, text,
    /// escapes, multi-byte characters and bytes that are not UTF-8: valid, invalid, valid
    /// UTF-8 with bad JSON, and JSON with bad UTF-8 inside and outside strings.
    #[test]
    fn parse_text_reads_as_from_slice_does() {
        let pieces: [&[u8]; 16] = [
            b"{",
            b"}",
            b"[",
            b"]",
            b",",
            b":",
            b"\"",
            b"a",
            b"1",
            b"-2.5e3",
            b"\\u00e9",
            b"\\ud800",
            b"\\n",
            "é🦀".as_bytes(),
            b"\xff",
            b"\xc3",
        ];
        // xorshift64: a fixed sequence, so a failure replays.
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut parsed = 0;
        for case in 0..20_000 {
            let mut body = Vec::new();
            for _ in 0..1 + case % 12 {
                body.extend_from_slice(pieces[(next() % pieces.len() as u64) as usize]);
            }
            let ours: Result<Value, _> = parse_text(&body);
            let theirs: Result<Value, _> = serde_json::from_slice(&body);
            match (ours, theirs) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a, b, "{body:?}");
                    parsed += 1;
                }
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{body:?}"),
                (a, b) => panic!("{body:?}: {a:?} against {b:?}"),
            }
        }
        assert!(parsed > 200, "only {parsed} random bodies parsed");
        for body in [
            br#"{"model":"m","messages":[{"role":"user","content":"hi \u00e9"}]}"#.as_slice(),
            b"{\"a\":\"\xff\"}",
            b"{\"a\":1}\xff",
            br#"{"a":"\ud800"}"#,
        ] {
            let ours: Result<Value, _> = parse_text(body);
            let theirs: Result<Value, _> = serde_json::from_slice(body);
            assert_eq!(format!("{ours:?}"), format!("{theirs:?}"));
        }
    }

    /// Any JSON value, strings drawn from every code point (control characters, quotes,
    /// backslashes, non-ASCII), numbers of every kind serde_json holds.
    fn any_value() -> impl Strategy<Value = Value> {
        let text = prop_oneof![
            any::<String>(),
            "[\\x00-\\x1f\"\\\\a\u{7f}\u{80}\u{2028}\u{fffd}😀]{0,40}",
            // Long runs, so the SIMD kernels' full-width paths and their tails are crossed.
            "[a-z \"\\n\\\\é]{60,300}",
        ];
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            text.clone().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(text.clone(), inner, 0..8)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn compact_text_is_serde_jsons(v in any_value()) {
            let mut scratch = Vec::new();
            prop_assert_eq!(&*to_compact(&v, &mut scratch), serde_json::to_string(&v).unwrap());
        }
    }

    #[test]
    fn compact_text_escapes_every_control_character_as_serde_json_does() {
        let all: String = (0u8..0x80)
            .map(char::from)
            .chain(['\u{2028}', 'é'])
            .collect();
        let v = serde_json::json!({ "k\u{1}\"": [all.clone(), 1.5, -3, u64::MAX, null, true] });
        let mut scratch = b"left over".to_vec();
        let text = to_compact(&v, &mut scratch);
        assert_eq!(&*text, serde_json::to_string(&v).unwrap());
        assert!(
            text.contains(r#"\u0000\u0001"#) && text.contains(r#"\b\t\n\u000b\f\r"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), v);
    }

    #[test]
    fn strings_past_the_simd_bound_are_escaped_alike_in_bounded_room() {
        let big = "a \"quoted\"\tline\n".repeat(SIMD_ESCAPE_MAX / 16 + 1);
        assert!(big.len() > SIMD_ESCAPE_MAX);
        let v = serde_json::json!([big, "small \"one\""]);
        let mut scratch = Vec::new();
        let text = to_compact(&v, &mut scratch);
        assert_eq!(&*text, serde_json::to_string(&v).unwrap());
        // serde_json's own growth for the large string: no six-fold reservation.
        assert!(
            scratch.capacity() < 4 * text.len(),
            "{}",
            scratch.capacity()
        );
    }

    #[test]
    fn serde_json_alone_refuses_lone_surrogates() {
        // The premise of this module: if serde_json ever accepts these, it can go.
        for s in [r#""\ud800""#, r#""\udc00""#, r#""a\ud83dz""#] {
            assert!(serde_json::from_str::<Value>(s).is_err(), "{s}");
        }
    }

    #[test]
    fn lone_surrogates_become_replacement_characters() {
        let cases: &[(&str, &str)] = &[
            (r#""\ud800""#, "\u{fffd}"),
            (r#""\udc00""#, "\u{fffd}"),
            (r#""x\uD800y""#, "x\u{fffd}y"),
            // A high surrogate followed by a high one, then a valid pair.
            (r#""\ud800\ud83d\ude00""#, "\u{fffd}😀"),
            // Low then high: both lone.
            (r#""\ude00\ud83d""#, "\u{fffd}\u{fffd}"),
            // Truncated escape at the end of a string: serde's own error stays.
            (r#""\ud800\u""#, ""),
        ];
        for (json, want) in cases {
            match from_slice(json.as_bytes()) {
                Ok(v) => assert_eq!(v, Value::String(want.to_string()), "{json}"),
                Err(_) => assert!(want.is_empty(), "{json} should parse"),
            }
        }
    }

    #[test]
    fn escaped_backslashes_and_valid_pairs_are_left_alone() {
        for json in [
            r#""\\ud800""#,
            r#""\ud83d\ude00""#,
            r#""\\\\""#,
            r#"{"a":"\u00e9"}"#,
        ] {
            assert!(
                matches!(repair_surrogates(json.as_bytes()), Cow::Borrowed(_)),
                "{json}"
            );
        }
        assert_eq!(
            from_slice(br#""\\ud800""#).unwrap(),
            Value::String(r"\ud800".into())
        );
    }

    #[test]
    fn offsets_are_kept_and_other_errors_are_serde_errors() {
        let json = br#"{"a":"\ud800","b":1}"#;
        let fixed = repair_surrogates(json);
        assert_eq!(fixed.len(), json.len());
        assert_eq!(&fixed[..], br#"{"a":"\ufffd","b":1}"#);
        let e = from_slice(br#"{"a": tru}"#).unwrap_err();
        assert!(e.is_syntax(), "{e}");
        // The message names the fault and the place, not the text.
        let e = from_slice(br#"{"secret-prompt": nope}"#).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
