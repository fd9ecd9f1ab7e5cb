//! The incremental SSE parser on arbitrary bytes, split into arbitrary chunks: no panic,
//! no event larger than the limit, and the same events as one whole push.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil::exchange::sse::{SseParser, parse_all};

/// Small, so the size limit is exercised often.
const MAX_EVENT: usize = 4096;

fuzz_target!(|data: &[u8]| {
    // First byte: chunk size (1..=256); the rest is the stream.
    let Some((&size, stream)) = data.split_first() else {
        return;
    };
    let size = usize::from(size) + 1;
    let mut parser = SseParser::new(MAX_EVENT);
    let mut events = Vec::new();
    let mut error = None;
    'outer: for chunk in stream.chunks(size) {
        parser.push(chunk);
        loop {
            match parser.next_event() {
                Ok(Some(ev)) => {
                    assert!(ev.data.len() <= MAX_EVENT);
                    events.push(ev);
                }
                Ok(None) => break,
                Err(e) => {
                    error = Some(e);
                    break 'outer;
                }
            }
        }
    }
    if error.is_none() {
        error = parser.finish().err();
    }
    let (whole, whole_error) = parse_all(stream, MAX_EVENT);
    // A too-large event can be detected at different points depending on the split, so
    // only error-free streams must agree exactly.
    if error.is_none() && whole_error.is_none() {
        assert_eq!(events, whole);
    }
});
