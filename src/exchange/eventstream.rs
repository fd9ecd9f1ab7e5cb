//! Incremental decoder for the AWS event stream encoding (`application/vnd.amazon.eventstream`).
//!
//! Part of the exchange step: Bedrock's streamed answers (`ConverseStream`,
//! `InvokeModelWithResponseStream`) are teed as raw bytes, and this decoder turns them back
//! into messages off the hot path. The framing is AWS's "Event Stream Encoding" (AWS SDK
//! developer guides; the Transcribe and S3 Select API references print the same layout):
//!
//! ```text
//! total length u32 BE | headers length u32 BE | prelude CRC32 (of the 8 bytes before)
//! headers (headers length bytes) | payload | message CRC32 (of every byte before it)
//! ```
//!
//! A header is a name (u8 length, then UTF-8), a type byte and a value: `0`/`1` boolean
//! true / false (no bytes), `2` byte, `3` short, `4` integer, `5` long, `6` byte array (u16
//! length, then the bytes), `7` string (u16 length, then UTF-8), `8` timestamp (i64
//! milliseconds), `9` UUID (16 bytes). Integers are big-endian and signed.
//!
//! Like [`sse`](super::sse): bytes are pushed as they came off the wire (split anywhere), and
//! [`EventStreamDecoder::next_message`] returns `Ok(None)` until a whole message is buffered.
//! Memory is bounded by the message size limit; both CRCs are checked, so a corrupt or
//! misaligned stream stops with an error instead of yielding garbage. Work is linear in the
//! input: each byte is examined a bounded number of times. This module knows nothing of
//! Bedrock; it yields headers and payloads.

use std::fmt;

use bytes::Bytes;

/// One decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Headers in wire order.
    pub headers: Vec<(String, HeaderValue)>,
    /// The payload bytes (JSON for Bedrock).
    pub payload: Bytes,
}

impl Message {
    /// The first header called `name` whose value is a string (`:event-type`,
    /// `:message-type`, `:exception-type`, `:content-type`).
    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|(n, v)| match v {
            HeaderValue::String(s) if n == name => Some(s.as_str()),
            _ => None,
        })
    }
}

/// A header's typed value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    /// Types 0 (true) and 1 (false).
    Bool(bool),
    /// Type 2.
    Byte(i8),
    /// Type 3.
    Short(i16),
    /// Type 4.
    Int(i32),
    /// Type 5.
    Long(i64),
    /// Type 6.
    Bytes(Vec<u8>),
    /// Type 7.
    String(String),
    /// Type 8: milliseconds since the Unix epoch.
    Timestamp(i64),
    /// Type 9.
    Uuid([u8; 16]),
}

/// Why the stream could not be decoded further. The decoder stops at the first error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventStreamError {
    /// A message's declared total length exceeds the limit (bytes).
    TooLarge(usize),
    /// The prelude's CRC does not match: not an event stream, or misaligned.
    PreludeCrc,
    /// The message CRC does not match: the message was corrupted.
    MessageCrc,
    /// Lengths that cannot describe a message (shorter than its own framing, headers longer
    /// than the message).
    BadLength,
    /// A header that runs past its section, an unknown value type, a name or string value
    /// that is not UTF-8, or more than [`MAX_HEADERS`] headers.
    BadHeader,
    /// The input ended inside a message.
    Aborted,
}

impl fmt::Display for EventStreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventStreamError::TooLarge(limit) => {
                write!(f, "event stream message larger than {limit} bytes")
            }
            EventStreamError::PreludeCrc => f.write_str("event stream prelude CRC mismatch"),
            EventStreamError::MessageCrc => f.write_str("event stream message CRC mismatch"),
            EventStreamError::BadLength => f.write_str("event stream message lengths are invalid"),
            EventStreamError::BadHeader => f.write_str("event stream header is malformed"),
            EventStreamError::Aborted => {
                f.write_str("event stream ended in the middle of a message")
            }
        }
    }
}

impl std::error::Error for EventStreamError {}

/// Prelude (12 bytes) plus message CRC (4 bytes): the smallest message is 16 bytes.
const FRAMING: usize = 16;

/// Incremental decoder: [`push`](Self::push) bytes, then drain
/// [`next_message`](Self::next_message).
pub struct EventStreamDecoder {
    /// Unconsumed bytes are `buf[start..]`; compacted on push.
    buf: Vec<u8>,
    start: usize,
    max_message: usize,
    failed: Option<EventStreamError>,
}

impl fmt::Debug for EventStreamDecoder {
    // The buffer holds response content: show its size only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStreamDecoder")
            .field("buffered", &(self.buf.len() - self.start))
            .field("failed", &self.failed)
            .finish()
    }
}

impl EventStreamDecoder {
    /// A decoder that refuses messages longer than `max_message` bytes (framing included).
    pub fn new(max_message: usize) -> Self {
        EventStreamDecoder {
            buf: Vec::new(),
            start: 0,
            max_message: max_message.max(FRAMING),
            failed: None,
        }
    }

    /// Appends bytes as they arrived. Ignored once the decoder has failed.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.failed.is_some() {
            return;
        }
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, `Ok(None)` when more bytes are needed.
    ///
    /// # Errors
    /// The first framing fault ([`EventStreamError`]); every later call returns it again.
    pub fn next_message(&mut self) -> Result<Option<Message>, EventStreamError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        match self.decode() {
            Ok(m) => Ok(m),
            Err(e) => {
                self.failed = Some(e.clone());
                self.buf = Vec::new();
                self.start = 0;
                Err(e)
            }
        }
    }

    /// Ends the input: `Err(Aborted)` when a message was left incomplete.
    ///
    /// # Errors
    /// [`EventStreamError::Aborted`] for leftover bytes, or the earlier failure.
    pub fn finish(&self) -> Result<(), EventStreamError> {
        match &self.failed {
            Some(e) => Err(e.clone()),
            None if self.start < self.buf.len() => Err(EventStreamError::Aborted),
            None => Ok(()),
        }
    }

    fn decode(&mut self) -> Result<Option<Message>, EventStreamError> {
        let data = &self.buf[self.start..];
        if data.len() < 12 {
            return Ok(None);
        }
        let total = be_u32(&data[0..4]) as usize;
        let headers_len = be_u32(&data[4..8]) as usize;
        if crc32fast::hash(&data[0..8]) != be_u32(&data[8..12]) {
            return Err(EventStreamError::PreludeCrc);
        }
        if total > self.max_message {
            return Err(EventStreamError::TooLarge(self.max_message));
        }
        if total < FRAMING || headers_len > total - FRAMING {
            return Err(EventStreamError::BadLength);
        }
        if data.len() < total {
            return Ok(None);
        }
        let msg = &data[..total];
        if crc32fast::hash(&msg[..total - 4]) != be_u32(&msg[total - 4..]) {
            return Err(EventStreamError::MessageCrc);
        }
        let headers = parse_headers(&msg[12..12 + headers_len])?;
        let payload = Bytes::copy_from_slice(&msg[12 + headers_len..total - 4]);
        self.start += total;
        Ok(Some(Message { headers, payload }))
    }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Splits `n` bytes off the front of `rest`.
fn take<'a>(rest: &mut &'a [u8], n: usize) -> Result<&'a [u8], EventStreamError> {
    if rest.len() < n {
        return Err(EventStreamError::BadHeader);
    }
    let (head, tail) = rest.split_at(n);
    *rest = tail;
    Ok(head)
}

fn fixed<const N: usize>(rest: &mut &[u8]) -> Result<[u8; N], EventStreamError> {
    let mut out = [0u8; N];
    out.copy_from_slice(take(rest, N)?);
    Ok(out)
}

/// Most headers one message may carry (Bedrock's carry 3 or 4): a cap, so that a message
/// of 2-byte headers cannot become millions of entries.
pub const MAX_HEADERS: usize = 64;

fn parse_headers(mut rest: &[u8]) -> Result<Vec<(String, HeaderValue)>, EventStreamError> {
    let mut out = Vec::new();
    while !rest.is_empty() {
        if out.len() == MAX_HEADERS {
            return Err(EventStreamError::BadHeader);
        }
        let name_len = take(&mut rest, 1)?[0] as usize;
        let name = std::str::from_utf8(take(&mut rest, name_len)?)
            .map_err(|_| EventStreamError::BadHeader)?
            .to_string();
        let value = match take(&mut rest, 1)?[0] {
            0 => HeaderValue::Bool(true),
            1 => HeaderValue::Bool(false),
            2 => HeaderValue::Byte(i8::from_be_bytes(fixed(&mut rest)?)),
            3 => HeaderValue::Short(i16::from_be_bytes(fixed(&mut rest)?)),
            4 => HeaderValue::Int(i32::from_be_bytes(fixed(&mut rest)?)),
            5 => HeaderValue::Long(i64::from_be_bytes(fixed(&mut rest)?)),
            kind @ (6 | 7) => {
                let len = u16::from_be_bytes(fixed(&mut rest)?) as usize;
                let bytes = take(&mut rest, len)?;
                if kind == 6 {
                    HeaderValue::Bytes(bytes.to_vec())
                } else {
                    HeaderValue::String(
                        std::str::from_utf8(bytes)
                            .map_err(|_| EventStreamError::BadHeader)?
                            .to_string(),
                    )
                }
            }
            8 => HeaderValue::Timestamp(i64::from_be_bytes(fixed(&mut rest)?)),
            9 => HeaderValue::Uuid(fixed(&mut rest)?),
            _ => return Err(EventStreamError::BadHeader),
        };
        out.push((name, value));
    }
    Ok(out)
}

/// Encodes one message: the inverse of [`EventStreamDecoder`], for tests, fuzz seeds and
/// fixtures. Headers are written as strings (type 7), the only type Bedrock's messages use.
///
/// # Panics
/// When a header name is longer than 255 bytes or a value longer than 65,535 bytes (the
/// format cannot express them).
pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Vec<u8> {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(u8::try_from(name.len()).expect("header name ≤ 255 bytes"));
        h.extend_from_slice(name.as_bytes());
        h.push(7);
        h.extend_from_slice(
            &u16::try_from(value.len())
                .expect("header value ≤ 65,535 bytes")
                .to_be_bytes(),
        );
        h.extend_from_slice(value.as_bytes());
    }
    let total = (FRAMING + h.len() + payload.len()) as u32;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&total.to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude_crc = crc32fast::hash(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message with a raw header section (any bytes) and valid CRCs.
    fn framed(headers: &[u8], payload: &[u8]) -> Vec<u8> {
        let total = 16 + headers.len() + payload.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(total as u32).to_be_bytes());
        m.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        m.extend_from_slice(&crc32fast::hash(&m).to_be_bytes());
        m.extend_from_slice(headers);
        m.extend_from_slice(payload);
        m.extend_from_slice(&crc32fast::hash(&m).to_be_bytes());
        m
    }

    fn all(bytes: &[u8], split: usize) -> (Vec<Message>, Result<(), EventStreamError>) {
        let mut d = EventStreamDecoder::new(1 << 20);
        let mut out = Vec::new();
        for piece in bytes.chunks(split.max(1)) {
            d.push(piece);
            loop {
                match d.next_message() {
                    Ok(Some(m)) => out.push(m),
                    Ok(None) => break,
                    Err(e) => return (out, Err(e)),
                }
            }
        }
        (out, d.finish())
    }

    /// A message laid out byte by byte from the format description (`framed`) pins the
    /// layout independently of [`encode`] (which the other tests and the mock provider use).
    #[test]
    fn decodes_a_message_laid_out_by_hand() {
        // headers: ":event-type" string "chunk"
        let mut h = vec![11u8];
        h.extend_from_slice(b":event-type");
        h.push(7);
        h.extend_from_slice(&5u16.to_be_bytes());
        h.extend_from_slice(b"chunk");
        let payload = br#"{"bytes":"e30="}"#;
        let m = framed(&h, payload);
        assert_eq!(m, encode(&[(":event-type", "chunk")], payload));
        let (msgs, end) = all(&m, 3);
        assert_eq!(end, Ok(()));
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].header_str(":event-type"), Some("chunk"));
        assert_eq!(&msgs[0].payload[..], payload);
    }

    #[test]
    fn every_split_of_a_stream_decodes_the_same() {
        let mut stream = Vec::new();
        for i in 0..5 {
            stream.extend(encode(
                &[
                    (":message-type", "event"),
                    (":event-type", "contentBlockDelta"),
                ],
                format!("{{\"i\":{i}}}").as_bytes(),
            ));
        }
        let (whole, end) = all(&stream, stream.len());
        assert_eq!((whole.len(), end), (5, Ok(())));
        for split in 1..40 {
            assert_eq!(all(&stream, split).0, whole, "split {split}");
        }
    }

    #[test]
    fn typed_headers_decode() {
        let mut h = Vec::new();
        let mut put = |name: &str, kind: u8, value: &[u8]| {
            h.push(name.len() as u8);
            h.extend_from_slice(name.as_bytes());
            h.push(kind);
            h.extend_from_slice(value);
        };
        put("t", 0, &[]);
        put("f", 1, &[]);
        put("b", 2, &[0xff]);
        put("s", 3, &(-2i16).to_be_bytes());
        put("i", 4, &7i32.to_be_bytes());
        put("l", 5, &(-9i64).to_be_bytes());
        put("y", 6, &[0, 2, 1, 2]);
        put("ts", 8, &1_700_000_000_000i64.to_be_bytes());
        put("u", 9, &[7; 16]);
        let m = framed(&h, &[]);
        let (msgs, end) = all(&m, 1);
        assert_eq!(end, Ok(()));
        let values: Vec<&HeaderValue> = msgs[0].headers.iter().map(|(_, v)| v).collect();
        assert_eq!(
            values,
            [
                &HeaderValue::Bool(true),
                &HeaderValue::Bool(false),
                &HeaderValue::Byte(-1),
                &HeaderValue::Short(-2),
                &HeaderValue::Int(7),
                &HeaderValue::Long(-9),
                &HeaderValue::Bytes(vec![1, 2]),
                &HeaderValue::Timestamp(1_700_000_000_000),
                &HeaderValue::Uuid([7; 16]),
            ]
        );
        assert_eq!(msgs[0].header_str("y"), None, "bytes are not a string");
    }

    #[test]
    fn faults_stop_the_decoder_with_their_reason() {
        let good = encode(&[(":event-type", "chunk")], b"{}");
        // A cut stream: the last message incomplete.
        let mut cut = good.clone();
        cut.extend_from_slice(&good[..good.len() - 1]);
        let (msgs, end) = all(&cut, 4);
        assert_eq!((msgs.len(), end), (1, Err(EventStreamError::Aborted)));
        // A flipped payload bit fails the message CRC; a flipped length the prelude CRC.
        let mut corrupt = good.clone();
        let n = corrupt.len();
        corrupt[n - 6] ^= 1;
        assert_eq!(all(&corrupt, 7).1, Err(EventStreamError::MessageCrc));
        let mut bad_prelude = good.clone();
        bad_prelude[3] ^= 1;
        assert_eq!(all(&bad_prelude, 7).1, Err(EventStreamError::PreludeCrc));
        // Not an event stream at all (JSON where frames were expected).
        assert_eq!(
            all(br#"{"message":"not a stream"}"#, 5).1,
            Err(EventStreamError::PreludeCrc)
        );
        // Lengths with a valid prelude CRC that cannot describe a message.
        for (total, headers) in [(8u32, 0u32), (40, 30)] {
            let mut m = Vec::new();
            m.extend_from_slice(&total.to_be_bytes());
            m.extend_from_slice(&headers.to_be_bytes());
            m.extend_from_slice(&crc32fast::hash(&m).to_be_bytes());
            assert_eq!(all(&m, 64).1, Err(EventStreamError::BadLength));
        }
        // Larger than the limit: refused from the prelude, before buffering the body.
        let mut d = EventStreamDecoder::new(64);
        d.push(&encode(&[], &[b'x'; 100])[..12]);
        assert_eq!(d.next_message(), Err(EventStreamError::TooLarge(64)));
        assert_eq!(d.next_message(), Err(EventStreamError::TooLarge(64)));
        // A header running past its section.
        let mut h = vec![4u8];
        h.extend_from_slice(b"name");
        h.push(7);
        h.extend_from_slice(&100u16.to_be_bytes());
        let m = framed(&h, &[]);
        assert_eq!(all(&m, 64).1, Err(EventStreamError::BadHeader));
        // Too many headers (empty name, boolean true: 2 bytes each).
        let h = [0u8, 0].repeat(MAX_HEADERS + 1);
        let m = framed(&h, &[]);
        assert_eq!(all(&m, 64).1, Err(EventStreamError::BadHeader));
    }
}
