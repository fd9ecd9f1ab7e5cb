//! Incremental Server-Sent Events parser for captured streaming responses.
//!
//! Part of the exchange step: the proxy tees the raw `text/event-stream` bytes, and this
//! parser turns them back into events off the hot path. It follows the WHATWG
//! `EventSource` parsing rules (line endings `\r\n`, `\n` or `\r`; `:` comments; `data:`
//! lines joined by `\n`; one optional space after the colon; a leading UTF-8 BOM dropped).
//!
//! The design is mini-redis's `parse_frame`: check first, then parse. Bytes are pushed as
//! they came off the wire (split anywhere, even inside a `\r\n`), and
//! [`SseParser::next_event`] returns `Ok(None)` until a whole event is buffered. Memory is
//! bounded: an event (or a single line) larger than the limit is an error, never an
//! unbounded buffer. At end of input, [`SseParser::finish`] tells a stream that ended
//! cleanly from one cut mid-event, so the model can be marked aborted with what was seen.
//!
//! This module knows nothing of providers; it yields `event`/`data`/`id` triples.

use std::fmt;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field, if the event had one (the spec's default type is `message`).
    pub event: Option<String>,
    /// The `data:` lines joined by `\n`.
    pub data: String,
    /// The last `id:` field seen in this event.
    pub id: Option<String>,
}

/// Why the stream could not be parsed further.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseError {
    /// One event or line exceeded the size limit (bytes); the parser stops there.
    TooLarge(usize),
    /// The input ended in the middle of an event (after some of its lines, or inside a line).
    Aborted,
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SseError::TooLarge(limit) => write!(f, "server-sent event larger than {limit} bytes"),
            SseError::Aborted => f.write_str("event stream ended in the middle of an event"),
        }
    }
}

impl std::error::Error for SseError {}

/// Default bound on one event (and on one line): 8 MiB. Large enough for a whole
/// non-streamed response object that some APIs repeat in their final event (OpenAI
/// `response.completed`), small enough that a hostile stream cannot exhaust memory.
pub const DEFAULT_MAX_EVENT: usize = 8 << 20;

/// Incremental parser: [`push`](Self::push) bytes, then drain [`next_event`](Self::next_event).
pub struct SseParser {
    /// Unconsumed bytes; `buf[start..]` is what remains to scan. Compacted on push.
    buf: Vec<u8>,
    start: usize,
    /// The previous line ended with `\r`, so a `\n` at the front of the next bytes belongs to
    /// that line ending. Kept across pushes because a chunk can end between `\r` and `\n`.
    skip_lf: bool,
    /// No byte seen yet: a leading BOM is still to be stripped.
    at_start: bool,
    /// Fields of the event being assembled.
    pending: SseEvent,
    /// True once a field line of the pending event was seen (even one with empty data).
    has_fields: bool,
    /// `data` lines were seen (an event without data is not dispatched, per the spec).
    has_data: bool,
    max_event: usize,
    failed: Option<SseError>,
}

impl fmt::Debug for SseParser {
    // The buffer holds response content: show sizes only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SseParser")
            .field("buffered", &(self.buf.len() - self.start))
            .field("pending_data", &self.pending.data.len())
            .field("max_event", &self.max_event)
            .field("failed", &self.failed)
            .finish()
    }
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT)
    }
}

impl SseParser {
    /// A parser that refuses events or lines longer than `max_event` bytes.
    pub fn new(max_event: usize) -> Self {
        SseParser {
            buf: Vec::new(),
            start: 0,
            skip_lf: false,
            at_start: true,
            pending: SseEvent::default(),
            has_fields: false,
            has_data: false,
            max_event: max_event.max(1),
            failed: None,
        }
    }

    /// Appends bytes as they arrived. After an error the bytes are dropped.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 {
            // Compact so the buffer never holds more than one partial line plus `bytes`.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event, `Ok(None)` when more bytes are needed.
    ///
    /// Check-then-parse: a line is consumed only once its terminator is buffered, and an
    /// event is returned only at the blank line that ends it.
    pub fn next_event(&mut self) -> Result<Option<SseEvent>, SseError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        loop {
            if self.at_start {
                let rest = &self.buf[self.start..];
                let bom = b"\xEF\xBB\xBF";
                if rest.len() < bom.len() && bom.starts_with(rest) {
                    return Ok(None); // could still be a BOM: wait
                }
                if rest.starts_with(bom) {
                    self.start += bom.len();
                }
                self.at_start = false;
            }
            if self.skip_lf {
                match self.buf.get(self.start) {
                    None => return Ok(None),
                    Some(b'\n') => self.start += 1,
                    Some(_) => {}
                }
                self.skip_lf = false;
            }
            let rest = &self.buf[self.start..];
            let Some(end) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
                if rest.len() > self.max_event {
                    return Err(self.fail(SseError::TooLarge(self.max_event)));
                }
                return Ok(None);
            };
            let terminator = rest[end];
            let line_start = self.start;
            self.start += end + 1;
            self.skip_lf = terminator == b'\r';
            if end == 0 {
                // Blank line: dispatch.
                let has_data = self.has_data;
                let event = self.take_pending();
                if has_data {
                    return Ok(Some(event));
                }
                continue;
            }
            let line = self.buf[line_start..line_start + end].to_vec();
            self.field(&line)?;
        }
    }

    /// Ends the input. `Ok(())` when the stream stopped between events; `Err(Aborted)` when
    /// it stopped inside one (a partial line, or field lines without the closing blank line).
    pub fn finish(&mut self) -> Result<(), SseError> {
        if let Some(err) = &self.failed {
            return Err(err.clone());
        }
        let leftover = self.buf.len() > self.start;
        if leftover || self.has_fields {
            self.take_pending();
            self.failed = Some(SseError::Aborted);
            return Err(SseError::Aborted);
        }
        Ok(())
    }

    fn fail(&mut self, err: SseError) -> SseError {
        self.buf = Vec::new();
        self.start = 0;
        self.pending = SseEvent::default();
        self.failed = Some(err.clone());
        err
    }

    fn take_pending(&mut self) -> SseEvent {
        self.has_fields = false;
        self.has_data = false;
        let mut event = std::mem::take(&mut self.pending);
        if event.data.ends_with('\n') {
            event.data.pop();
        }
        event
    }

    fn field(&mut self, line: &[u8]) -> Result<(), SseError> {
        if line[0] == b':' {
            return Ok(()); // comment (keep-alive)
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match name {
            b"data" => {
                if self.pending.data.len() + value.len() + 1 > self.max_event {
                    return Err(self.fail(SseError::TooLarge(self.max_event)));
                }
                self.pending.data.push_str(&value);
                self.pending.data.push('\n');
                self.has_data = true;
            }
            b"event" => self.pending.event = Some(value.into_owned()),
            b"id" if !value.contains('\0') => self.pending.id = Some(value.into_owned()),
            _ => {} // `retry` and unknown fields are ignored, per the spec
        }
        self.has_fields = true;
        Ok(())
    }
}

/// Parses a whole captured stream: every event, plus whether it ended mid-event (or hit
/// the size limit), in which case the error is returned alongside what was parsed.
pub fn parse_all(bytes: &[u8], max_event: usize) -> (Vec<SseEvent>, Option<SseError>) {
    let mut parser = SseParser::new(max_event);
    parser.push(bytes);
    let mut events = Vec::new();
    loop {
        match parser.next_event() {
            Ok(Some(ev)) => events.push(ev),
            Ok(None) => break,
            Err(e) => return (events, Some(e)),
        }
    }
    (events, parser.finish().err())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_string),
            data: data.to_string(),
            id: None,
        }
    }

    /// Feeds `bytes` in the given chunk sizes and collects everything.
    fn chunked(bytes: &[u8], cuts: &[usize]) -> (Vec<SseEvent>, Option<SseError>) {
        let mut p = SseParser::new(1 << 16);
        let mut events = Vec::new();
        let mut at = 0;
        let mut offsets: Vec<usize> = cuts.iter().map(|c| c % (bytes.len() + 1)).collect();
        offsets.sort_unstable();
        offsets.push(bytes.len());
        for off in offsets {
            p.push(&bytes[at..off.max(at)]);
            at = off.max(at);
            loop {
                match p.next_event() {
                    Ok(Some(e)) => events.push(e),
                    Ok(None) => break,
                    Err(e) => return (events, Some(e)),
                }
            }
        }
        (events, p.finish().err())
    }

    const MIXED: &[u8] = b"\xEF\xBB\xBF: keep-alive\r\nevent: a\r\ndata: one\r\ndata:two\r\n\r\n\
data: lf\n\nid: 7\rdata: cr\r\rretry: 10\ndata\n\nevent: empty\n\ndata: last\n\n";

    #[test]
    fn next_event_handles_all_line_endings_comments_and_multiline_data() {
        let (events, err) = parse_all(MIXED, 1024);
        assert_eq!(err, None);
        assert_eq!(
            events,
            vec![
                ev(Some("a"), "one\ntwo"),
                ev(None, "lf"),
                SseEvent {
                    event: None,
                    data: "cr".into(),
                    id: Some("7".into())
                },
                ev(None, ""),
                ev(None, "last"),
            ]
        );
    }

    #[test]
    fn next_event_waits_for_the_blank_line() {
        let mut p = SseParser::default();
        p.push(b"data: {\"a\":1}\n");
        assert_eq!(p.next_event(), Ok(None));
        p.push(b"\n");
        assert_eq!(p.next_event(), Ok(Some(ev(None, "{\"a\":1}"))));
        assert_eq!(p.next_event(), Ok(None));
        assert_eq!(p.finish(), Ok(()));
    }

    #[test]
    fn cr_lf_split_across_pushes_is_one_line_ending() {
        let (events, err) = chunked(b"data: x\r\n\r\ndata: y\r\n\r\n", &[8, 10]);
        assert_eq!(err, None);
        assert_eq!(events, vec![ev(None, "x"), ev(None, "y")]);
    }

    #[test]
    fn finish_reports_a_stream_cut_mid_event() {
        let (events, err) = parse_all(b"data: a\n\ndata: {\"par", 1024);
        assert_eq!(events, vec![ev(None, "a")]);
        assert_eq!(err, Some(SseError::Aborted));
        let (events, err) = parse_all(b"data: a\n\ndata: b\n", 1024);
        assert_eq!(events, vec![ev(None, "a")]);
        assert_eq!(err, Some(SseError::Aborted));
    }

    #[test]
    fn oversized_line_or_event_is_an_error_not_a_buffer() {
        let mut p = SseParser::new(16);
        p.push(&[b'x'; 17]);
        assert_eq!(p.next_event(), Err(SseError::TooLarge(16)));
        p.push(b"\n\ndata: ok\n\n"); // ignored after failure
        assert_eq!(p.next_event(), Err(SseError::TooLarge(16)));
        let (events, err) = parse_all(b"data: 0123456789\ndata: 0123456789\n\n", 16);
        assert!(events.is_empty());
        assert_eq!(err, Some(SseError::TooLarge(16)));
    }

    proptest! {
        #[test]
        fn any_split_gives_the_same_events(cuts in proptest::collection::vec(0usize..200, 0..12)) {
            prop_assert_eq!(chunked(MIXED, &cuts), parse_all(MIXED, 1 << 16));
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_stay_bounded(
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
            cuts in proptest::collection::vec(0usize..512, 0..8),
        ) {
            let (events, _) = chunked(&bytes, &cuts);
            for e in events {
                prop_assert!(e.data.len() <= 1 << 16);
            }
        }
    }
}
