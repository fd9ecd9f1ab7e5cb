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
//! Owns: bytes in, `serde_json::Value` out. Never logs or returns content: errors say what is
//! wrong and where, not what the text was.

use std::borrow::Cow;

use serde_json::Value;

/// Parses JSON text, rewriting lone surrogate escapes to U+FFFD when they are what stops the
/// parse. The error, if any, is serde_json's for the (rewritten) text: its message names the
/// kind of fault and the line and column, never content.
pub fn from_slice(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    match serde_json::from_slice(bytes) {
        Ok(v) => Ok(v),
        Err(e) => match repair_surrogates(bytes) {
            Cow::Owned(fixed) => serde_json::from_slice(&fixed),
            Cow::Borrowed(_) => Err(e),
        },
    }
}

/// [`from_slice`] for text already decoded (an SSE event's data).
pub fn from_str(text: &str) -> Result<Value, serde_json::Error> {
    from_slice(text.as_bytes())
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
