//! W3C Trace Context: the app's `traceparent` / `tracestate` request headers.
//!
//! Part of the exchange step: veil's span becomes a child of the app's span when the app
//! sent a valid `traceparent`. The rules are those of W3C Trace Context level 2 as
//! summarized in `shared/otel-genai.md` §3: anything invalid means the whole header is
//! ignored (a new trace is started), never a guess at what the app meant.

/// A parsed W3C `traceparent` (plus `tracestate`) from the app's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// Trace ID (never all zero).
    pub trace_id: [u8; 16],
    /// The app's span ID, the parent of veil's span (never all zero).
    pub parent_span_id: [u8; 8],
    /// W3C trace flags (bit 0 = sampled).
    pub flags: u8,
    /// The incoming `tracestate`, passed on unchanged.
    pub trace_state: Option<String>,
}

/// veil's own span of the exchange with request id `request_id`: `(trace_id, span_id)`.
///
/// The trace is the app's when it sent a `traceparent` (veil's span is its child), else one
/// derived from the request id. Both come from BLAKE3 of the request id (domain-separated),
/// never from a random draw at encoding time, so whoever knows the request id, the OTLP
/// encoder and the feedback API alike, names the same span: a feedback event arriving after
/// the exchange's span was exported still correlates to it (veil#14). The request id is a
/// UUIDv7 (74 random bits) and is already exported (`veil.request.id`), so the ids are as
/// unpredictable as its random bits and reveal nothing new. Rejected: a random span id stored with the record, which
/// a feedback after a restart (the record gone from memory) could only find in the ledger,
/// and not at all with `ledger = false`. Neither id is ever all zero (W3C).
pub fn veil_span(request_id: &str, parent: Option<&TraceParent>) -> ([u8; 16], [u8; 8]) {
    veil_span_in(request_id, parent.map(|tp| tp.trace_id))
}

/// [`veil_span`] knowing only the app's trace id (a ledger row keeps no more).
pub fn veil_span_in(request_id: &str, parent_trace: Option<[u8; 16]>) -> ([u8; 16], [u8; 8]) {
    let mut h = blake3::Hasher::new_derive_key("veil 2026 exchange span ids");
    h.update(request_id.as_bytes());
    let d = h.finalize();
    let d = d.as_bytes();
    let mut trace_id = [0u8; 16];
    trace_id.copy_from_slice(&d[..16]);
    let mut span_id = [0u8; 8];
    span_id.copy_from_slice(&d[16..24]);
    // A zero draw has probability 2^-64 (2^-128): a fixed non-zero byte keeps the W3C rule.
    if span_id == [0; 8] {
        span_id[7] = 1;
    }
    if trace_id == [0; 16] {
        trace_id[15] = 1;
    }
    (parent_trace.unwrap_or(trace_id), span_id)
}

/// Parses a `traceparent` value, attaching `tracestate` when the parent is valid.
///
/// Returns `None` for anything invalid: wrong length or separators, uppercase hex, version
/// `ff`, all-zero trace or parent ID, or a version-00 value with trailing data. A higher
/// version is parsed from its first 55 characters, as the spec requires for forward
/// compatibility, provided what follows starts with `-`.
pub fn parse(traceparent: &str, tracestate: Option<&str>) -> Option<TraceParent> {
    let value = traceparent.trim_matches([' ', '\t']);
    let bytes = value.as_bytes();
    if bytes.len() < 55 {
        return None;
    }
    let version = hex_byte(&bytes[0..2])?;
    if version == 0xff {
        return None;
    }
    if version == 0 && bytes.len() != 55 {
        return None;
    }
    if bytes.len() > 55 && bytes[55] != b'-' {
        return None;
    }
    if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
        return None;
    }
    let mut trace_id = [0u8; 16];
    for (i, b) in trace_id.iter_mut().enumerate() {
        *b = hex_byte(&bytes[3 + 2 * i..5 + 2 * i])?;
    }
    let mut parent_span_id = [0u8; 8];
    for (i, b) in parent_span_id.iter_mut().enumerate() {
        *b = hex_byte(&bytes[36 + 2 * i..38 + 2 * i])?;
    }
    let flags = hex_byte(&bytes[53..55])?;
    if trace_id == [0; 16] || parent_span_id == [0; 8] {
        return None;
    }
    let trace_state = tracestate
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    Some(TraceParent {
        trace_id,
        parent_span_id,
        flags,
        trace_state,
    })
}

/// Two lowercase hex digits. Uppercase is invalid in `traceparent`.
fn hex_byte(pair: &[u8]) -> Option<u8> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    Some(nibble(pair[0])? << 4 | nibble(pair[1])?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parse_reads_ids_flags_and_state() {
        let tp = parse(VALID, Some("rojo=00f067aa0ba902b7")).unwrap();
        assert_eq!(tp.trace_id[0], 0x4b);
        assert_eq!(tp.trace_id[15], 0x36);
        assert_eq!(
            tp.parent_span_id,
            [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]
        );
        assert_eq!(tp.flags, 1);
        assert_eq!(tp.trace_state.as_deref(), Some("rojo=00f067aa0ba902b7"));
        assert_eq!(parse(VALID, Some("  ")).unwrap().trace_state, None);
    }

    #[test]
    fn parse_rejects_invalid_values() {
        let bad = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "0é-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ];
        for value in bad {
            assert_eq!(parse(value, None), None, "{value:?}");
        }
    }

    #[test]
    fn parse_accepts_future_versions_by_their_first_55_chars() {
        let future =
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-what-the-future-holds";
        assert_eq!(parse(future, None).unwrap().flags, 3);
        let glued = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03x";
        assert_eq!(parse(glued, None), None);
    }
}
