//! Bounded `Content-Encoding` decoding for captured bodies (never for forwarded bytes).
//!
//! The client always receives the original bytes; this only produces the text the record and
//! the seal see. Every decoder writes through `Bounded`, which fails as soon as the output
//! would exceed the limit, so a decompression bomb costs at most `limit` bytes of memory.

use std::fmt;
use std::io::{self, Read, Write};

use bytes::Bytes;

/// Why a captured body could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// The decoded body would exceed the limit (in bytes).
    TooLarge(usize),
    /// The encoding is not one veil decodes.
    Unsupported(String),
    /// The bytes are not valid for the declared encoding.
    Corrupt(String),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::TooLarge(limit) => write!(f, "decoded body exceeds {limit} bytes"),
            DecodeError::Unsupported(enc) => write!(f, "unsupported content-encoding {enc:?}"),
            DecodeError::Corrupt(why) => write!(f, "corrupt encoded body: {why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Decodes `bytes` declared as `encoding` (a `Content-Encoding` value, possibly a
/// comma-separated list applied in order), producing at most `limit` bytes.
pub fn decode(encoding: Option<&str>, bytes: &Bytes, limit: usize) -> Result<Bytes, DecodeError> {
    let Some(encoding) = encoding else {
        return within(bytes.clone(), limit);
    };
    // Codings are listed in the order they were applied; undo them last first.
    let codings: Vec<String> = encoding
        .split(',')
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect();
    let mut current = bytes.clone();
    for coding in codings.iter().rev() {
        current = decode_one(coding, &current, limit)?;
    }
    within(current, limit)
}

fn within(bytes: Bytes, limit: usize) -> Result<Bytes, DecodeError> {
    if bytes.len() > limit {
        Err(DecodeError::TooLarge(limit))
    } else {
        Ok(bytes)
    }
}

fn decode_one(coding: &str, input: &[u8], limit: usize) -> Result<Bytes, DecodeError> {
    let mut out = Bounded::new(limit);
    let result = match coding {
        "gzip" | "x-gzip" => copy(flate2::read::MultiGzDecoder::new(input), &mut out),
        // RFC 9110 "deflate" is zlib-wrapped; some servers send raw deflate. Try both.
        "deflate" => match copy(flate2::read::ZlibDecoder::new(input), &mut out) {
            Ok(()) => Ok(()),
            Err(e) if out.overflowed => Err(e),
            Err(_) => {
                out = Bounded::new(limit);
                copy(flate2::read::DeflateDecoder::new(input), &mut out)
            }
        },
        "br" => copy(brotli::Decompressor::new(input, 8192), &mut out),
        "zstd" => match zstd::stream::read::Decoder::new(input) {
            Ok(decoder) => copy(decoder, &mut out),
            Err(e) => Err(e),
        },
        other => return Err(DecodeError::Unsupported(other.to_string())),
    };
    match result {
        Ok(()) => Ok(Bytes::from(out.buf)),
        Err(_) if out.overflowed => Err(DecodeError::TooLarge(limit)),
        Err(e) => Err(DecodeError::Corrupt(e.to_string())),
    }
}

fn copy(mut reader: impl Read, out: &mut Bounded) -> io::Result<()> {
    io::copy(&mut reader, out).map(|_| ())
}

/// A `Vec` writer that refuses to grow past `limit`.
struct Bounded {
    buf: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl Bounded {
    fn new(limit: usize) -> Self {
        Bounded {
            buf: Vec::new(),
            limit,
            overflowed: false,
        }
    }
}

impl Write for Bounded {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len() + data.len() > self.limit {
            self.overflowed = true;
            return Err(io::Error::other("decode limit exceeded"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gzip(data: &[u8]) -> Bytes {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        Bytes::from(enc.finish().unwrap())
    }

    #[test]
    fn decodes_each_supported_coding() {
        let plain = b"{\"model\":\"gpt-4o\"}".repeat(50);
        let gz = gzip(&plain);
        assert_eq!(decode(Some("gzip"), &gz, 1 << 20).unwrap(), plain);

        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(&plain).unwrap();
        let z = Bytes::from(z.finish().unwrap());
        assert_eq!(decode(Some("deflate"), &z, 1 << 20).unwrap(), plain);

        let mut raw =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        raw.write_all(&plain).unwrap();
        let raw = Bytes::from(raw.finish().unwrap());
        assert_eq!(decode(Some("deflate"), &raw, 1 << 20).unwrap(), plain);

        let mut br = Vec::new();
        brotli::CompressorWriter::new(&mut br, 4096, 5, 22)
            .write_all(&plain)
            .unwrap();
        assert_eq!(
            decode(Some("br"), &Bytes::from(br), 1 << 20).unwrap(),
            plain
        );

        let zs = Bytes::from(zstd::encode_all(&plain[..], 3).unwrap());
        assert_eq!(decode(Some("zstd"), &zs, 1 << 20).unwrap(), plain);

        assert_eq!(
            decode(None, &Bytes::from(plain.clone()), 1 << 20).unwrap(),
            plain
        );
        assert_eq!(
            decode(Some("identity"), &Bytes::from(plain.clone()), 1 << 20).unwrap(),
            plain
        );
    }

    #[test]
    fn stacked_codings_are_undone_in_reverse() {
        let plain = b"hello hello hello".to_vec();
        let once = gzip(&plain);
        let zs = Bytes::from(zstd::encode_all(&once[..], 3).unwrap());
        assert_eq!(decode(Some("gzip, zstd"), &zs, 1 << 20).unwrap(), plain);
    }

    #[test]
    fn bomb_is_bounded() {
        // 64 MiB of zeros compresses to about 64 KiB; a 1 MiB limit must stop it early.
        let bomb = gzip(&vec![0u8; 64 << 20]);
        assert!(bomb.len() < 1 << 20);
        assert_eq!(
            decode(Some("gzip"), &bomb, 1 << 20),
            Err(DecodeError::TooLarge(1 << 20))
        );
    }

    #[test]
    fn corrupt_and_unknown_are_errors() {
        let junk = Bytes::from_static(b"definitely not gzip");
        assert!(matches!(
            decode(Some("gzip"), &junk, 1024),
            Err(DecodeError::Corrupt(_))
        ));
        assert!(matches!(
            decode(Some("lzma"), &junk, 1024),
            Err(DecodeError::Unsupported(_))
        ));
        assert_eq!(
            decode(None, &Bytes::from(vec![1u8; 2048]), 1024),
            Err(DecodeError::TooLarge(1024))
        );
    }
}
