//! # Envelope: the sealed payload format and its two layers of AES-256-GCM.
//!
//! Owns the byte layouts of a sealed exchange (the *frame* written to a segment) and of a
//! wrapped data key (the *key slot*), and the only code that encrypts or decrypts them. It
//! never touches files, the index or the network: [`super::store`] decides where bytes go.
//!
//! ## Payload (plaintext, format version 1)
//! ```text
//! u8 version = 1 | u32 LE meta_len | meta JSON | request body chunks | response body chunks
//! ```
//! The meta JSON holds every field of the [`Exchange`] except the body bytes, plus each body
//! chunk's length so chunk boundaries survive. Bodies are copied raw (no base64): large
//! payloads cost one copy and one pass of AES-GCM.
//!
//! ## Frame (what a segment holds)
//! ```text
//! u32 BE magic "VEF1" | u32 LE ct_len | u32 LE crc32(rest) | id[16] | u32 LE key_id | nonce[12] | ciphertext+tag[ct_len]
//! ```
//! Sealed with a fresh random 256-bit data key and a random 96-bit nonce; the associated data
//! is `"veil-seal-v1" ‖ id ‖ key_id`, so a frame moved under another request ID fails
//! authentication. The CRC is for crash recovery (finding a torn tail); authenticity is the
//! GCM tag's job.
//!
//! ## Key slot (96 bytes, stored apart from the payload)
//! ```text
//! u32 BE magic "VKS1" | u32 LE crc32(rest) | id[16] | u32 LE key_id | nonce[12] | wrapped key+tag[48] | zero[40]
//! ```
//! The data key is wrapped with AES-256-GCM under `Purpose::SealWrap` of master key `key_id`,
//! associated data `"veil-wrap-v1" ‖ id ‖ key_id`. Forgetting overwrites the slot with zeros.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{ErrorKind, SealError};
use crate::exchange::credentials;
use crate::exchange::{
    Body, Exchange, ExchangeId, Headers, Outcome, Route, Timings, Upstream, UpstreamFailure,
    WebSocketSession,
};
use crate::keys::{DerivedKey, KeyId};

/// Current payload format version.
pub const FORMAT_VERSION: u8 = 1;
/// Frame magic, "VEF1".
pub const FRAME_MAGIC: u32 = 0x5645_4631;
/// Bytes before the ciphertext in a frame.
pub const FRAME_HEADER: usize = 4 + 4 + 4 + 16 + 4 + 12;
/// Key slot magic, "VKS1".
pub const SLOT_MAGIC: u32 = 0x564B_5331;
/// Size of one key slot: 88 bytes used, padded to 128 so a slot never straddles a 512-byte
/// sector and an in-place overwrite (forget, rewrap) cannot tear.
pub const SLOT_LEN: usize = 128;
const TAG_LEN: usize = 16;
/// Bytes of a frame's JSON metadata that do not grow with the exchange: the field names,
/// the id, timestamps, route, outcome and WebSocket counts, with room to spare (~450 used).
const META_FIXED: usize = 768;
const SEAL_AAD: &[u8] = b"veil-seal-v1";
const WRAP_AAD: &[u8] = b"veil-wrap-v1";

/// A 256-bit data key, zeroized on drop.
pub type DataKey = Zeroizing<[u8; 32]>;

/// A fresh random data key.
pub fn fresh_data_key() -> DataKey {
    let mut k = Zeroizing::new([0u8; 32]);
    rand::fill(&mut k[..]);
    k
}

/// AES-256-GCM (NIST SP 800-38D; 96-bit nonce, 128-bit tag) as *ring* implements it: one
/// stitched pass of AES and GHASH with the CPU's AES and carry-less multiply instructions.
/// The RustCrypto `aes-gcm` crate veil used before makes two passes (CTR, then GHASH), which
/// fall out of cache on large payloads (0.64 GiB/s at 16 MiB) and were ~7 % of the pipeline's
/// CPU on 2 KB exchanges; the bytes are the same, so stores sealed before open unchanged.
///
/// Key material: the caller's key (a `Zeroizing` data key, a derived wrap key) is wiped as
/// before, but ring's expanded key (AES round keys, the GHASH key H) lives on the stack for
/// one call and is not wiped when it goes, as the `aes` crate's round keys were not either
/// (its `zeroize` feature is off); only `polyval`'s H used to be wiped on drop.
mod gcm {
    use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};

    fn key(key: &[u8; 32]) -> LessSafeKey {
        LessSafeKey::new(UnboundKey::new(&AES_256_GCM, key).expect("invariant: 32-byte key"))
    }

    /// Encrypts `data` in place; returns the tag. Fails only past GCM's length limit
    /// (2^36 - 32 bytes).
    pub(super) fn seal(
        k: &[u8; 32],
        nonce: [u8; 12],
        aad: &[u8],
        data: &mut [u8],
    ) -> Result<[u8; 16], ()> {
        let tag = key(k)
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad), data)
            .map_err(|_| ())?;
        Ok(tag.as_ref().try_into().expect("invariant: 16-byte tag"))
    }

    /// Decrypts `data` in place when `tag` authenticates it (and `aad`); else `Err`, and
    /// `data` is not plaintext.
    pub(super) fn open(
        k: &[u8; 32],
        nonce: [u8; 12],
        aad: &[u8],
        data: &mut [u8],
        tag: [u8; 16],
    ) -> Result<(), ()> {
        key(k)
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                Tag::from(tag),
                data,
                0..,
            )
            .map(|_| ())
            .map_err(|_| ())
    }
}

fn aad(prefix: &[u8], id: ExchangeId, key_id: KeyId) -> [u8; 32] {
    let mut a = [0u8; 32];
    a[..12].copy_from_slice(prefix);
    a[12..28].copy_from_slice(id.as_bytes());
    a[28..].copy_from_slice(&key_id.0.to_le_bytes());
    a
}

// === payload ===

// The metadata types are generic in their text: sealing serializes `&str` borrowed from the
// exchange, opening deserializes `String`s; the same JSON either way. Copying every header
// into a `String` first made sealing the pipeline bench's exchange 20 allocations, 8 now
// (`examples/alloc_count`).

#[derive(Serialize, Deserialize)]
struct BodyMeta<S> {
    chunks: Vec<u64>,
    wire_len: u64,
    truncated: bool,
    content_encoding: Option<S>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum RouteMeta<S> {
    Intercept,
    Gateway { name: S },
    PlainHttp,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum OutcomeMeta<S> {
    Complete,
    ClientAborted,
    UpstreamAborted { reason: S },
    UpstreamFailed { failure: S, reason: S },
}

/// The metadata of a version-1 payload: `S` is `&str` when sealing, `String` when opening;
/// `W` the WebSocket session likewise (`&WebSocketSession`, `WebSocketSession`); `A` the
/// client's address, a `SocketAddr` when sealing (serde writes it as its `Display` text,
/// from a stack buffer) and the `String` it is read back as when opening.
#[derive(Serialize, Deserialize)]
struct MetaV1<S, W, A> {
    id: S,
    started_at_ns: u128,
    request_end_ns: Option<u64>,
    response_headers_ns: Option<u64>,
    first_byte_ns: Option<u64>,
    end_ns: u64,
    client_addr: Option<A>,
    route: RouteMeta<S>,
    scheme: S,
    host: S,
    port: u16,
    client_version: S,
    method: S,
    path: S,
    request_headers: Vec<(S, S)>,
    tags: Vec<(S, S)>,
    api_key_fingerprint: Option<S>,
    request_body: BodyMeta<S>,
    status: Option<u16>,
    response_headers: Vec<(S, S)>,
    response_body: BodyMeta<S>,
    outcome: OutcomeMeta<S>,
    /// Absent for an exchange that was not a WebSocket session (and in envelopes written
    /// before veil#17).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    websocket: Option<W>,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

fn body_meta(b: &Body) -> BodyMeta<&str> {
    BodyMeta {
        chunks: b.chunks.iter().map(|c| c.len() as u64).collect(),
        wire_len: b.wire_len,
        truncated: b.truncated,
        content_encoding: b.content_encoding.as_deref(),
    }
}

/// `headers` without credential headers. The proxy already fingerprints them; the seal drops
/// them again by name (the shared [`credentials`] list), so a capture bug can never put a
/// credential on disk.
fn scrub(headers: &Headers) -> Vec<(&str, &str)> {
    headers
        .iter()
        .filter(|(k, _)| !credentials::is_credential_header(k))
        .collect()
}

/// `pairs` borrowed.
fn borrowed(pairs: &Headers) -> Vec<(&str, &str)> {
    pairs.iter().collect()
}

/// Serializes `ex` (credential headers dropped) into `out`, after whatever `out` holds.
fn encode_payload(ex: &Exchange, out: &mut Vec<u8>) -> Result<(), SealError> {
    // On the stack: the id's text is fixed-length.
    let mut id = [0; 36];
    // A key sent inside the URL path (`/v1/keys/sk-proj-…/usage`) is a credential too: the
    // proxy fingerprinted the credential query parameters; here the secret detectors mask
    // what is left (a no-op borrow for a path without one).
    let path = crate::redact::rules::mask_secrets(&ex.path);
    let meta = meta_v1(ex, &mut id, &path);
    // The metadata is serialized in place after a placeholder for its length, and the room
    // reserved covers the bodies and the GCM tag `seal_frame` appends: the frame is built in
    // one allocation, grown at most once, exactly, when the metadata is larger than the
    // estimate (the tag's 16 bytes used to reallocate the whole frame every time, ~6 % of the
    // pipeline thread at 8 connections in `benches/load.sh`).
    out.reserve(
        5 + meta_estimate(ex, &path)
            + ex.request_body.captured_len()
            + ex.response_body.captured_len()
            + TAG_LEN,
    );
    out.push(FORMAT_VERSION);
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    write_meta(&meta, out)?;
    let meta_len = u32::try_from(out.len() - len_at - 4)
        .map_err(|_| SealError::new(ErrorKind::Format, "metadata too large"))?;
    out[len_at..len_at + 4].copy_from_slice(&meta_len.to_le_bytes());
    // Metadata past the estimate (a long stream's chunk table): grow once, exactly.
    out.reserve_exact(ex.request_body.captured_len() + ex.response_body.captured_len() + TAG_LEN);
    for c in ex
        .request_body
        .chunks
        .iter()
        .chain(&ex.response_body.chunks)
    {
        out.extend_from_slice(c);
    }
    Ok(())
}

/// `ex`'s metadata as a version-1 payload writes it (credential headers dropped), borrowing
/// from `ex` and from `id`, the buffer its id's text is written into.
fn meta_v1<'a>(
    ex: &'a Exchange,
    id: &'a mut [u8; 36],
    path: &'a str,
) -> MetaV1<&'a str, &'a WebSocketSession, SocketAddr> {
    MetaV1 {
        id: ex.id.encode(id),
        started_at_ns: ex
            .started_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
        request_end_ns: ex.timings.request_end.map(ns),
        response_headers_ns: ex.timings.response_headers.map(ns),
        first_byte_ns: ex.timings.first_byte.map(ns),
        end_ns: ns(ex.timings.end),
        client_addr: ex.client_addr,
        route: match &ex.route {
            Route::Intercept => RouteMeta::Intercept,
            Route::Gateway { name } => RouteMeta::Gateway { name },
            Route::PlainHttp => RouteMeta::PlainHttp,
        },
        scheme: &ex.upstream.scheme,
        host: &ex.upstream.host,
        port: ex.upstream.port,
        client_version: &ex.client_version,
        method: &ex.method,
        path,
        request_headers: scrub(&ex.request_headers),
        tags: borrowed(&ex.tags),
        api_key_fingerprint: ex.api_key_fingerprint.as_deref(),
        request_body: body_meta(&ex.request_body),
        status: ex.status,
        response_headers: scrub(&ex.response_headers),
        response_body: body_meta(&ex.response_body),
        outcome: match &ex.outcome {
            Outcome::Complete => OutcomeMeta::Complete,
            Outcome::ClientAborted => OutcomeMeta::ClientAborted,
            Outcome::UpstreamAborted { reason } => OutcomeMeta::UpstreamAborted { reason },
            Outcome::UpstreamFailed { kind, reason } => OutcomeMeta::UpstreamFailed {
                failure: kind.as_str(),
                reason,
            },
        },
        websocket: ex.websocket.as_ref(),
    }
}

/// `meta` as JSON after whatever `out` holds: the bytes `serde_json::to_writer(out, meta)`
/// writes (field order, `null` for `None`, the enums' `kind` tags, pairs as two-element
/// arrays; tested against it), written straight instead of through serde's serializer, whose
/// per-field calls and byte-at-a-time string escaping were ~8k instructions per exchange,
/// a third of sealing it (stop 61, callgrind on `benches/pipeline.rs`). Strings go through
/// the SIMD escaper the record's content uses
/// ([`crate::exchange::json::escape`]), integers through `itoa`
/// (serde_json's own). The WebSocket session, rare, is still serialized by serde.
///
/// Errors: only the WebSocket session's serialization could fail (it cannot: plain counters).
fn write_meta(
    meta: &MetaV1<&str, &WebSocketSession, SocketAddr>,
    out: &mut Vec<u8>,
) -> Result<(), SealError> {
    use crate::exchange::json::escape;
    fn num(n: impl itoa::Integer, out: &mut Vec<u8>) {
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    }
    fn opt_num(n: Option<impl itoa::Integer>, out: &mut Vec<u8>) {
        match n {
            Some(n) => num(n, out),
            None => out.extend_from_slice(b"null"),
        }
    }
    fn opt_str(s: Option<&str>, out: &mut Vec<u8>) {
        match s {
            Some(s) => escape(s, out),
            None => out.extend_from_slice(b"null"),
        }
    }
    fn pairs(p: &[(&str, &str)], out: &mut Vec<u8>) {
        out.push(b'[');
        for (i, (k, v)) in p.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'[');
            escape(k, out);
            out.push(b',');
            escape(v, out);
            out.push(b']');
        }
        out.push(b']');
    }
    fn body(b: &BodyMeta<&str>, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"chunks\":[");
        for (i, n) in b.chunks.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            num(*n, out);
        }
        out.extend_from_slice(b"],\"wire_len\":");
        num(b.wire_len, out);
        out.extend_from_slice(if b.truncated {
            b",\"truncated\":true,\"content_encoding\":"
        } else {
            b",\"truncated\":false,\"content_encoding\":"
        });
        opt_str(b.content_encoding, out);
        out.push(b'}');
    }
    out.extend_from_slice(b"{\"id\":");
    escape(meta.id, out);
    out.extend_from_slice(b",\"started_at_ns\":");
    num(meta.started_at_ns, out);
    out.extend_from_slice(b",\"request_end_ns\":");
    opt_num(meta.request_end_ns, out);
    out.extend_from_slice(b",\"response_headers_ns\":");
    opt_num(meta.response_headers_ns, out);
    out.extend_from_slice(b",\"first_byte_ns\":");
    opt_num(meta.first_byte_ns, out);
    out.extend_from_slice(b",\"end_ns\":");
    num(meta.end_ns, out);
    out.extend_from_slice(b",\"client_addr\":");
    match meta.client_addr {
        Some(addr) => {
            // serde's text for a `SocketAddr` is its `Display` form (at most 58 bytes), made
            // on the stack as serde makes it.
            use std::io::Write;
            let mut buf = [0u8; 64];
            let mut w = &mut buf[..];
            let written = write!(w, "{addr}").is_ok();
            let n = 64 - w.len();
            match std::str::from_utf8(&buf[..n]) {
                Ok(text) if written => escape(text, out),
                _ => escape(&addr.to_string(), out),
            }
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"route\":");
    match meta.route {
        RouteMeta::Intercept => out.extend_from_slice(b"{\"kind\":\"intercept\"}"),
        RouteMeta::Gateway { name } => {
            out.extend_from_slice(b"{\"kind\":\"gateway\",\"name\":");
            escape(name, out);
            out.push(b'}');
        }
        RouteMeta::PlainHttp => out.extend_from_slice(b"{\"kind\":\"plain_http\"}"),
    }
    out.extend_from_slice(b",\"scheme\":");
    escape(meta.scheme, out);
    out.extend_from_slice(b",\"host\":");
    escape(meta.host, out);
    out.extend_from_slice(b",\"port\":");
    num(meta.port, out);
    out.extend_from_slice(b",\"client_version\":");
    escape(meta.client_version, out);
    out.extend_from_slice(b",\"method\":");
    escape(meta.method, out);
    out.extend_from_slice(b",\"path\":");
    escape(meta.path, out);
    out.extend_from_slice(b",\"request_headers\":");
    pairs(&meta.request_headers, out);
    out.extend_from_slice(b",\"tags\":");
    pairs(&meta.tags, out);
    out.extend_from_slice(b",\"api_key_fingerprint\":");
    opt_str(meta.api_key_fingerprint, out);
    out.extend_from_slice(b",\"request_body\":");
    body(&meta.request_body, out);
    out.extend_from_slice(b",\"status\":");
    opt_num(meta.status, out);
    out.extend_from_slice(b",\"response_headers\":");
    pairs(&meta.response_headers, out);
    out.extend_from_slice(b",\"response_body\":");
    body(&meta.response_body, out);
    out.extend_from_slice(b",\"outcome\":");
    match meta.outcome {
        OutcomeMeta::Complete => out.extend_from_slice(b"{\"kind\":\"complete\"}"),
        OutcomeMeta::ClientAborted => out.extend_from_slice(b"{\"kind\":\"client_aborted\"}"),
        OutcomeMeta::UpstreamAborted { reason } => {
            out.extend_from_slice(b"{\"kind\":\"upstream_aborted\",\"reason\":");
            escape(reason, out);
            out.push(b'}');
        }
        OutcomeMeta::UpstreamFailed { failure, reason } => {
            out.extend_from_slice(b"{\"kind\":\"upstream_failed\",\"failure\":");
            escape(failure, out);
            out.extend_from_slice(b",\"reason\":");
            escape(reason, out);
            out.push(b'}');
        }
    }
    if let Some(ws) = meta.websocket {
        out.extend_from_slice(b",\"websocket\":");
        serde_json::to_writer(&mut *out, ws)
            .map_err(|e| SealError::new(ErrorKind::Format, format!("encode: {e}")))?;
    }
    out.push(b'}');
    Ok(())
}

/// Bytes to reserve for `ex`'s JSON metadata: [`META_FIXED`], each header and tag with its
/// JSON punctuation, and each body chunk's length entry. Text that JSON escapes can exceed
/// it; then [`encode_payload`] grows the frame once. It replaces a fixed 2 KiB, which an
/// exchange with many headers outgrew (stop 59's profile put the growth at ~6 % of the
/// seal's submit).
fn meta_estimate(ex: &Exchange, path: &str) -> usize {
    // `["name","value"],` is the pair plus 6 bytes; escapes are rare in header values.
    let pairs = |h: &Headers| h.iter().map(|(k, v)| k.len() + v.len() + 6).sum::<usize>();
    // A chunk length: up to 20 digits and a comma.
    let chunks = ex.request_body.chunks.len() + ex.response_body.chunks.len();
    META_FIXED
        + path.len()
        + ex.upstream.host.len()
        + ex.client_version.len()
        + ex.method.len()
        + ex.api_key_fingerprint.as_ref().map_or(0, String::len)
        + pairs(&ex.request_headers)
        + pairs(&ex.response_headers)
        + pairs(&ex.tags)
        + 21 * chunks
        + match &ex.outcome {
            Outcome::UpstreamAborted { reason } | Outcome::UpstreamFailed { reason, .. } => {
                reason.len()
            }
            Outcome::Complete | Outcome::ClientAborted => 0,
        }
}

fn bad(why: impl std::fmt::Display) -> SealError {
    SealError::new(ErrorKind::Format, why)
}

fn take_body(meta: BodyMeta<String>, all: &Bytes, pos: &mut usize) -> Result<Body, SealError> {
    let mut chunks = Vec::with_capacity(meta.chunks.len());
    for len in meta.chunks {
        let len = usize::try_from(len).map_err(|_| bad("chunk length"))?;
        let end = pos
            .checked_add(len)
            .filter(|e| *e <= all.len())
            .ok_or_else(|| bad("payload shorter than its chunk table"))?;
        chunks.push(all.slice(*pos..end));
        *pos = end;
    }
    Ok(Body {
        chunks,
        wire_len: meta.wire_len,
        truncated: meta.truncated,
        content_encoding: meta.content_encoding,
    })
}

/// Parses a decrypted payload back into an [`Exchange`] (body chunks share `plain`).
pub(crate) fn decode_payload(plain: Bytes) -> Result<Exchange, SealError> {
    if plain.len() < 5 {
        return Err(bad("payload too short"));
    }
    if plain[0] != FORMAT_VERSION {
        return Err(bad(format!(
            "unknown payload format version {} (this veil reads {FORMAT_VERSION})",
            plain[0]
        )));
    }
    let meta_len = u32::from_le_bytes(plain[1..5].try_into().expect("invariant: 4 bytes")) as usize;
    let meta_end = 5usize
        .checked_add(meta_len)
        .filter(|e| *e <= plain.len())
        .ok_or_else(|| bad("metadata length out of range"))?;
    let meta: MetaV1<String, crate::exchange::WebSocketSession, String> =
        serde_json::from_slice(&plain[5..meta_end]).map_err(|e| bad(format!("metadata: {e}")))?;
    let mut pos = meta_end;
    let request_body = take_body(meta.request_body, &plain, &mut pos)?;
    let response_body = take_body(meta.response_body, &plain, &mut pos)?;
    let failure = |s: &str| match s {
        "connect" => UpstreamFailure::Connect,
        "tls" => UpstreamFailure::Tls,
        "timeout" => UpstreamFailure::Timeout,
        _ => UpstreamFailure::Protocol,
    };
    let secs = (meta.started_at_ns / 1_000_000_000) as u64;
    let nanos = (meta.started_at_ns % 1_000_000_000) as u32;
    Ok(Exchange {
        id: meta.id.parse().map_err(|_| bad("bad id in metadata"))?,
        started_at: SystemTime::UNIX_EPOCH + Duration::new(secs, nanos),
        timings: Timings {
            request_end: meta.request_end_ns.map(Duration::from_nanos),
            response_headers: meta.response_headers_ns.map(Duration::from_nanos),
            first_byte: meta.first_byte_ns.map(Duration::from_nanos),
            end: Duration::from_nanos(meta.end_ns),
            ..Default::default()
        },
        client_addr: meta
            .client_addr
            .as_deref()
            .and_then(|a| a.parse::<SocketAddr>().ok()),
        route: match meta.route {
            RouteMeta::Intercept => Route::Intercept,
            RouteMeta::Gateway { name } => Route::Gateway { name },
            RouteMeta::PlainHttp => Route::PlainHttp,
        },
        upstream: Upstream {
            scheme: meta.scheme.into(),
            host: meta.host,
            port: meta.port,
        },
        client_version: meta.client_version.into(),
        method: meta.method.into(),
        path: meta.path,
        request_headers: meta.request_headers.into_iter().collect(),
        tags: meta.tags.into_iter().collect(),
        api_key_fingerprint: meta.api_key_fingerprint,
        request_body,
        status: meta.status,
        response_headers: meta.response_headers.into_iter().collect(),
        response_body,
        outcome: match meta.outcome {
            OutcomeMeta::Complete => Outcome::Complete,
            OutcomeMeta::ClientAborted => Outcome::ClientAborted,
            OutcomeMeta::UpstreamAborted { reason } => Outcome::UpstreamAborted { reason },
            OutcomeMeta::UpstreamFailed { failure: f, reason } => Outcome::UpstreamFailed {
                kind: failure(&f),
                reason,
            },
        },
        websocket: meta.websocket,
    })
}

// === frame ===

/// Serializes and seals `ex` under `data_key` into one frame ready to append to a segment.
/// Public for benchmarks and tools; the store calls it from [`super::SealStore::submit`].
pub fn seal_frame(ex: &Exchange, data_key: &DataKey, key_id: KeyId) -> Result<Vec<u8>, SealError> {
    let mut buf = vec![0u8; FRAME_HEADER];
    encode_payload(ex, &mut buf)?;
    let mut nonce = [0u8; 12];
    rand::fill(&mut nonce);
    let tag = gcm::seal(
        data_key,
        nonce,
        &aad(SEAL_AAD, ex.id, key_id),
        &mut buf[FRAME_HEADER..],
    )
    .map_err(|_| SealError::new(ErrorKind::Format, "payload too large to seal"))?;
    buf.extend_from_slice(&tag);
    let ct_len = u32::try_from(buf.len() - FRAME_HEADER)
        .map_err(|_| SealError::new(ErrorKind::Format, "payload over 4 GiB"))?;
    buf[0..4].copy_from_slice(&FRAME_MAGIC.to_be_bytes());
    buf[4..8].copy_from_slice(&ct_len.to_le_bytes());
    buf[12..28].copy_from_slice(ex.id.as_bytes());
    buf[28..32].copy_from_slice(&key_id.0.to_le_bytes());
    buf[32..44].copy_from_slice(&nonce);
    let crc = crc32fast::hash(&buf[12..]);
    buf[8..12].copy_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

/// What a frame header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    /// Ciphertext length including the tag.
    pub ct_len: u32,
    /// Stored CRC of everything after the CRC field.
    pub crc: u32,
    /// Request id.
    pub id: ExchangeId,
    /// Master key id the data key was first wrapped with (part of the associated data).
    pub key_id: KeyId,
}

impl FrameHeader {
    /// Total frame length.
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER + self.ct_len as usize
    }
}

/// Parses a frame header; `None` when the magic is wrong or the bytes are too short.
pub(crate) fn parse_frame_header(b: &[u8]) -> Option<FrameHeader> {
    if b.len() < FRAME_HEADER || b[0..4] != FRAME_MAGIC.to_be_bytes() {
        return None;
    }
    let u32le = |r: std::ops::Range<usize>| u32::from_le_bytes(b[r].try_into().expect("4 bytes"));
    let ct_len = u32le(4..8);
    if (ct_len as usize) < TAG_LEN {
        return None;
    }
    Some(FrameHeader {
        ct_len,
        crc: u32le(8..12),
        id: ExchangeId::from_bytes(b[12..28].try_into().expect("16 bytes")),
        key_id: KeyId(u32le(28..32)),
    })
}

/// True when a whole frame's CRC matches.
pub(crate) fn frame_crc_ok(frame: &[u8], h: &FrameHeader) -> bool {
    frame.len() == h.frame_len() && crc32fast::hash(&frame[12..]) == h.crc
}

/// Decrypts a whole frame (its header already checked to name `id`) and parses it.
pub(crate) fn open_frame(
    mut frame: Vec<u8>,
    id: ExchangeId,
    data_key: &DataKey,
) -> Result<Exchange, SealError> {
    let h = parse_frame_header(&frame).ok_or_else(|| {
        SealError::new(
            ErrorKind::Corrupt,
            format!("{id}: no valid frame at the indexed offset"),
        )
    })?;
    if h.id != id || frame.len() != h.frame_len() {
        return Err(SealError::new(
            ErrorKind::Corrupt,
            format!("{id}: the indexed frame belongs to another request or is short"),
        ));
    }
    let crc_ok = frame_crc_ok(&frame, &h);
    let nonce: [u8; 12] = frame[32..44].try_into().expect("12 bytes");
    let tag_at = frame.len() - TAG_LEN;
    let tag: [u8; 16] = frame[tag_at..].try_into().expect("16 bytes");
    frame.truncate(tag_at);
    gcm::open(
        data_key,
        nonce,
        &aad(SEAL_AAD, id, h.key_id),
        &mut frame[FRAME_HEADER..],
        tag,
    )
    .map_err(|_| {
            SealError::new(
                ErrorKind::Authentication,
                format!(
                    "{id}: payload failed authentication (tampered or corrupted; checksum {}), nothing returned",
                    if crc_ok { "matches, so likely tampered" } else { "also mismatches" }
                ),
            )
        })?;
    let mut plain = frame;
    plain.drain(..FRAME_HEADER);
    decode_payload(Bytes::from(plain))
}

// === key slot ===

/// Wraps `data_key` for `id` under `wrap` (the SealWrap key of master `key_id`).
pub(crate) fn wrap_slot(
    id: ExchangeId,
    data_key: &DataKey,
    key_id: KeyId,
    wrap: &DerivedKey,
) -> [u8; SLOT_LEN] {
    let mut slot = [0u8; SLOT_LEN];
    slot[0..4].copy_from_slice(&SLOT_MAGIC.to_be_bytes());
    slot[8..24].copy_from_slice(id.as_bytes());
    slot[24..28].copy_from_slice(&key_id.0.to_le_bytes());
    let mut nonce = [0u8; 12];
    rand::fill(&mut nonce);
    slot[28..40].copy_from_slice(&nonce);
    slot[40..72].copy_from_slice(&data_key[..]);
    let tag = gcm::seal(
        wrap.bytes(),
        nonce,
        &aad(WRAP_AAD, id, key_id),
        &mut slot[40..72],
    )
    .expect("invariant: 32 bytes always fit AES-GCM");
    slot[72..88].copy_from_slice(&tag);
    let crc = crc32fast::hash(&slot[8..]);
    slot[4..8].copy_from_slice(&crc.to_le_bytes());
    slot
}

/// The master key id a slot was wrapped under, after checking it belongs to `id`.
pub(crate) fn slot_key_id(slot: &[u8; SLOT_LEN], id: ExchangeId) -> Result<KeyId, SealError> {
    if slot.iter().all(|b| *b == 0) {
        return Err(SealError::new(
            ErrorKind::NotFound,
            format!("{id}: data key destroyed (forgotten)"),
        ));
    }
    let crc = u32::from_le_bytes(slot[4..8].try_into().expect("4 bytes"));
    if slot[0..4] != SLOT_MAGIC.to_be_bytes() || crc32fast::hash(&slot[8..]) != crc {
        return Err(SealError::new(
            ErrorKind::Corrupt,
            format!("{id}: wrapped data key is corrupt"),
        ));
    }
    if slot[8..24] != id.as_bytes()[..] {
        return Err(SealError::new(
            ErrorKind::Corrupt,
            format!("{id}: key slot belongs to another request"),
        ));
    }
    Ok(KeyId(u32::from_le_bytes(
        slot[24..28].try_into().expect("4 bytes"),
    )))
}

/// Unwraps the data key in `slot` with `wrap` (the SealWrap key of the slot's key id).
pub(crate) fn unwrap_slot(
    slot: &[u8; SLOT_LEN],
    id: ExchangeId,
    wrap: &DerivedKey,
) -> Result<DataKey, SealError> {
    let key_id = slot_key_id(slot, id)?;
    let mut key = Zeroizing::new([0u8; 32]);
    key.copy_from_slice(&slot[40..72]);
    gcm::open(
        wrap.bytes(),
        slot[28..40].try_into().expect("12 bytes"),
        &aad(WRAP_AAD, id, key_id),
        &mut key[..],
        slot[72..88].try_into().expect("16 bytes"),
    )
    .map_err(|_| {
            SealError::new(
                ErrorKind::WrongKey,
                format!(
                    "{id}: master key {key_id} does not unwrap this data key (wrong master key for this store?)"
                ),
            )
        })?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aes_gcm::aead::{AeadInPlace, KeyInit};
    use aes_gcm::{Aes256Gcm, Key, Nonce, Tag};

    /// The metadata fits the room reserved for it, for each kind of exchange the seal tests
    /// use (a chat, a long stream of chunks, a gzip body, a truncated one, a WebSocket
    /// session), and for one with 60 headers; and the client address is written as its
    /// `Display` text, as it was when the seal made a `String` of it (IPv4, and IPv6 with a
    /// scope id).
    #[test]
    fn metadata_fits_its_estimate_and_keeps_its_address_text() {
        use crate::seal::tests as t;
        let mut many = t::openai_chat();
        many.request_headers = (0..60)
            .map(|k| (format!("x-header-{k}"), "v".repeat(40)))
            .collect::<Vec<_>>()
            .into();
        let addrs: [SocketAddr; 2] = [
            "203.0.113.9:50000".parse().unwrap(),
            "[fe80::1%3]:443".parse().unwrap(),
        ];
        for (k, mut ex) in [
            t::openai_chat(),
            t::anthropic_stream(),
            t::gzip_body(),
            t::truncated_body(),
            t::websocket_session(),
            many,
        ]
        .into_iter()
        .enumerate()
        {
            ex.client_addr = Some(addrs[k % 2]);
            let mut out = Vec::new();
            encode_payload(&ex, &mut out).unwrap();
            let meta_len = u32::from_le_bytes(out[1..5].try_into().unwrap()) as usize;
            assert!(
                meta_len <= meta_estimate(&ex, &ex.path),
                "exchange {k}: {meta_len} > {}",
                meta_estimate(&ex, &ex.path)
            );
            let meta = std::str::from_utf8(&out[5..5 + meta_len]).unwrap();
            let text = format!("\"client_addr\":\"{}\"", addrs[k % 2]);
            assert!(meta.contains(&text), "{meta}");
            let back = decode_payload(Bytes::from(out)).unwrap();
            assert_eq!(back.client_addr, Some(addrs[k % 2]));
        }
    }

    /// The hand-written metadata is byte for byte what serde_json writes for the same
    /// `MetaV1` (which is also how it is read back): every kind of exchange the seal tests use,
    /// every route and outcome, absent and present optional fields, IPv4 and IPv6 addresses,
    /// and text that JSON must escape (quotes, backslashes, every control character, DEL,
    /// U+2028, non-ASCII) in every string field.
    #[test]
    fn handwritten_metadata_is_serde_json_byte_for_byte() {
        use crate::seal::tests as t;
        let hostile: String = (0u8..0x20)
            .map(char::from)
            .chain("\"\\/\u{7f}\u{2028}é漢🦀 plain".chars())
            .collect();
        let mut odd = t::openai_chat();
        odd.route = Route::Gateway {
            name: hostile.clone(),
        };
        odd.upstream.scheme = hostile.clone().into();
        odd.upstream.host = hostile.clone();
        odd.client_version = hostile.clone().into();
        odd.method = hostile.clone().into();
        odd.path = hostile.clone();
        odd.request_headers = vec![
            (hostile.clone(), hostile.clone()),
            (String::new(), String::new()),
        ]
        .into();
        odd.response_headers = vec![("x".to_string(), hostile.clone())].into();
        odd.tags = vec![(hostile.clone(), "t".to_string())].into();
        odd.api_key_fingerprint = Some(hostile.clone());
        odd.request_body.content_encoding = Some(hostile.clone());
        odd.request_body.truncated = true;
        odd.outcome = Outcome::UpstreamFailed {
            kind: UpstreamFailure::Tls,
            reason: hostile.clone(),
        };
        odd.client_addr = Some("[fe80::1%3]:443".parse().unwrap());
        let mut bare = t::openai_chat();
        bare.route = Route::PlainHttp;
        bare.timings = Timings {
            end: Duration::from_nanos(u64::MAX),
            ..Default::default()
        };
        bare.started_at = SystemTime::UNIX_EPOCH;
        bare.status = None;
        bare.api_key_fingerprint = None;
        bare.request_headers = Headers::default();
        bare.response_headers = Headers::default();
        bare.tags = Headers::default();
        bare.request_body.chunks.clear();
        bare.outcome = Outcome::ClientAborted;
        bare.client_addr = Some("203.0.113.9:50000".parse().unwrap());
        let mut aborted = t::anthropic_stream();
        aborted.outcome = Outcome::UpstreamAborted {
            reason: hostile.clone(),
        };
        aborted.client_addr = None;
        let cases = [
            t::openai_chat(),
            t::anthropic_stream(),
            t::gzip_body(),
            t::truncated_body(),
            t::websocket_session(),
            odd,
            bare,
            aborted,
        ];
        let mut kinds = std::collections::HashSet::new();
        for (k, ex) in cases.iter().enumerate() {
            let mut id = [0; 36];
            let meta = meta_v1(ex, &mut id, &ex.path);
            kinds.insert(std::mem::discriminant(&ex.outcome));
            let mut ours = b"prefix".to_vec();
            write_meta(&meta, &mut ours).unwrap();
            let theirs = serde_json::to_vec(&meta).unwrap();
            assert_eq!(
                String::from_utf8_lossy(&ours[6..]),
                String::from_utf8_lossy(&theirs),
                "exchange {k}"
            );
            assert_eq!(
                &ours[..6],
                b"prefix",
                "exchange {k}: appended, not overwritten"
            );
        }
        assert_eq!(kinds.len(), 4, "every outcome");
        assert!(cases.iter().any(|ex| ex.websocket.is_some()));
    }

    /// A key sent inside the URL path never reaches the sealed copy: the secret detectors
    /// mask it (fingerprinted query parameters and the rest of the path stay as sent).
    #[test]
    fn a_key_inside_the_url_path_is_not_sealed() {
        let mut ex = crate::seal::tests::openai_chat();
        let key = "sk-proj-PATHSECRETabcdefghij0123456789";
        ex.path =
            format!("/v1/keys/{key}/usage;token=glpat-PATHgitlab0123456789ab?alt=sse&key=fp_00");
        let data_key = fresh_data_key();
        let frame = seal_frame(&ex, &data_key, KeyId(1)).unwrap();
        let opened = open_frame(frame, ex.id, &data_key).unwrap();
        assert_eq!(
            opened.path,
            "/v1/keys/[OPENAI_API_KEY]/usage;token=[GITLAB_TOKEN]?alt=sse&key=fp_00"
        );
        // Percent-encoded, it is the same key to the server: masked all the same.
        let mut enc = crate::seal::tests::openai_chat();
        enc.path = "/v1/keys/sk%2Dproj-PATHSECRETabcdefghij0123456789/usage?a=%41".into();
        let frame = seal_frame(&enc, &data_key, KeyId(1)).unwrap();
        assert_eq!(
            open_frame(frame, enc.id, &data_key).unwrap().path,
            "/v1/keys/[OPENAI_API_KEY]/usage?a=%41"
        );
        // A path without one is kept as sent.
        let mut plain = crate::seal::tests::openai_chat();
        plain.path = "/v1/chat/completions?api-version=2024-10-21".into();
        let frame = seal_frame(&plain, &data_key, KeyId(1)).unwrap();
        assert_eq!(
            open_frame(frame, plain.id, &data_key).unwrap().path,
            plain.path
        );
    }

    /// The store's AES-256-GCM is the standard one: a frame sealed here opens with another
    /// implementation (the RustCrypto crate veil sealed with before it used ring), and a
    /// frame sealed by that one opens here, so stores written by earlier versions still open.
    #[test]
    fn frames_interoperate_with_another_aes_gcm_both_ways() {
        let ex = crate::seal::tests::openai_chat();
        let key = fresh_data_key();
        let key_id = KeyId(7);
        let other = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(&key[..]));

        // Sealed here, opened by the other implementation.
        let frame = seal_frame(&ex, &key, key_id).unwrap();
        let h = parse_frame_header(&frame).unwrap();
        assert!(frame_crc_ok(&frame, &h));
        let tag_at = frame.len() - TAG_LEN;
        let mut body = frame[FRAME_HEADER..tag_at].to_vec();
        other
            .decrypt_in_place_detached(
                Nonce::from_slice(&frame[32..44]),
                &aad(SEAL_AAD, ex.id, key_id),
                &mut body,
                Tag::from_slice(&frame[tag_at..]),
            )
            .expect("the other implementation authenticates our frame");
        let mut plain = vec![0u8; FRAME_HEADER];
        encode_payload(&ex, &mut plain).unwrap();
        assert_eq!(body, plain[FRAME_HEADER..], "same plaintext");

        // Sealed by the other implementation (as an earlier veil did), opened here.
        let mut old = plain.clone();
        let nonce = [9u8; 12];
        let tag = other
            .encrypt_in_place_detached(
                Nonce::from_slice(&nonce),
                &aad(SEAL_AAD, ex.id, key_id),
                &mut old[FRAME_HEADER..],
            )
            .unwrap();
        old.extend_from_slice(&tag);
        let ct_len = (old.len() - FRAME_HEADER) as u32;
        old[0..4].copy_from_slice(&FRAME_MAGIC.to_be_bytes());
        old[4..8].copy_from_slice(&ct_len.to_le_bytes());
        old[12..28].copy_from_slice(ex.id.as_bytes());
        old[28..32].copy_from_slice(&key_id.0.to_le_bytes());
        old[32..44].copy_from_slice(&nonce);
        let crc = crc32fast::hash(&old[12..]);
        old[8..12].copy_from_slice(&crc.to_le_bytes());
        let opened = open_frame(old.clone(), ex.id, &key).expect("opens here");
        assert_eq!(opened.path, ex.path);
        assert_eq!(opened.response_body.chunks, ex.response_body.chunks);

        // One flipped ciphertext bit: authentication fails, nothing returned.
        let mut bad = old;
        bad[FRAME_HEADER + 3] ^= 1;
        let err = open_frame(bad, ex.id, &key).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Authentication);
    }

    /// A data key wrapped here unwraps with the other implementation and back.
    #[test]
    fn key_slots_interoperate_with_another_aes_gcm() {
        let id = ExchangeId::new();
        let wrap = crate::seal::tests::ring(3)
            .current()
            .derive(crate::keys::Purpose::SealWrap);
        let key = fresh_data_key();
        let slot = wrap_slot(id, &key, KeyId(1), &wrap);
        let other = Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(wrap.bytes()));
        let mut k = slot[40..72].to_vec();
        other
            .decrypt_in_place_detached(
                Nonce::from_slice(&slot[28..40]),
                &aad(WRAP_AAD, id, KeyId(1)),
                &mut k,
                Tag::from_slice(&slot[72..88]),
            )
            .unwrap();
        assert_eq!(k, key[..]);
        assert_eq!(*unwrap_slot(&slot, id, &wrap).unwrap(), *key);
        let mut flipped = slot;
        flipped[50] ^= 1;
        let crc = crc32fast::hash(&flipped[8..]);
        flipped[4..8].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            unwrap_slot(&flipped, id, &wrap).unwrap_err().kind(),
            ErrorKind::WrongKey
        );
    }

    /// A frame sealed with the `aes-gcm` crate, as veil sealed before it used ring (fixed key
    /// `0x11`×32, nonce `0x22`×12, key id 1, the id below), kept as bytes: the format is
    /// frozen here, so whatever `aad`, `encode_payload` or the cipher become, a store written
    /// before must still open.
    const KNOWN_FRAME: &str = concat!(
        "564546312b030000b100b50801937a2b4c5d7000800000000000002a01000000222222222222222222222222",
        "161a0549c0b4bd36811de41e7897d0e628f2ff8047b5cf7e36623dd839d1483b754f9b2f6398c9ee7e68dd1d",
        "d6687b5491febc11e113088ad110b598963481c15ab62d0061b56122db5106a127d9ce3cd58d930e33c2f921",
        "3c70a4cf4dd65eb1e6250c700a75b17c6cacdd27446bb307117c99d73f41b458dc53024f758a66ab1bf693dd",
        "a33218432c7032e5c97f423e6e6c7f94eead5f7a78f03a2f18300e3e2b416b3768820bbdd906172669a2f10a",
        "9778a09027e642218816d0d2ac03af038defb69e3554387bbaf254260fd8fa4cd45b3e7273d3d754b53653b1",
        "74b1684e0109f1d4a94944c105a8a9147248106a184e4f15767a773c335365c2f9b76386f7eb0987cca19a73",
        "53940f359b85803c4f049e4a1e9a8f69482cd88e4830133b570421169f171119fb5bcd7fc1e7dd7ec5338457",
        "92a92f22a7384b3e1eef9be7abfa39eb8497da71ebf85b07a3f50b4e8a2d165c05a123f01bdaadf627dfcbf4",
        "d951d3fdf119ee244c0c5d11bababf039d731fd1cb667b3c0d3ab1d530ea545e4ffa6072d9e988f8b2c9e1e4",
        "f35a80259148bd59e0aeb45e770251d0b08f3f0d2ffc34de1d7be2f255d499a38bb9724c6158b6cd110d6851",
        "049928a9308266948711d05514ce04bfb7b2692fc9f2f7f3dde06a5c10383abfb96f3d9aea35f5a16ec63e53",
        "ecf01fb5a9fa09e1d813189998ecd1bb14d3e9055205035feda4938364be95465cac2d900623956e5e981440",
        "e09adaf107448edadb8cd3e532ff21c0422cc3c2c7f111bbcf597135b646b06eff3aa5858afa7ae75c8906f2",
        "3ba36f147dec6313d9d5bb3a4b014eed6a6ad5cb0ee59e367905892582d2a2acdbc1a80864566085f685cc31",
        "d0f6e9cdf56228aed9489b75ae18a2d9478aafa8ac4214cfb6d8d9e5b1c6f487651b9bc0022cc1714e126969",
        "02948d92a6e4fd82435ba04b67fafe5afb685e07ba6390b9acb2853b8afd5f9e3b09cd02c875db07da35a341",
        "7cf2051d41659320f9d3c5bf18055ec72d69f77ceb574ed56d0c26dbba4403889d1c75229500093ec94bfd0d",
        "fb34075327a27735363fd962d00fd26fe03dc1ffaa8a21412e96c5af77b1cee73413ca78139361b27a80b2d6",
        "e78d6fbfacf61abd6df10c080f6116b8c51d43",
    );

    #[test]
    fn a_frame_sealed_by_an_earlier_veil_still_opens() {
        let bytes: Vec<u8> = (0..KNOWN_FRAME.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&KNOWN_FRAME[i..i + 2], 16).unwrap())
            .collect();
        let id = ExchangeId::from_bytes([
            0x01, 0x93, 0x7a, 0x2b, 0x4c, 0x5d, 0x70, 0x00, 0x80, 0x00, 0, 0, 0, 0, 0, 0x2a,
        ]);
        let key: DataKey = Zeroizing::new([0x11; 32]);
        let h = parse_frame_header(&bytes).unwrap();
        assert_eq!((h.id, h.key_id, h.frame_len()), (id, KeyId(1), bytes.len()));
        assert!(frame_crc_ok(&bytes, &h));
        let ex = open_frame(bytes.clone(), id, &key).expect("opens");
        assert_eq!(ex.id, id);
        assert_eq!(
            ex.started_at,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
        );
        assert_eq!(
            (&*ex.method, ex.path.as_str()),
            ("POST", "/v1/chat/completions")
        );
        assert_eq!(ex.status, Some(200));
        assert_eq!(
            ex.tags.iter().collect::<Vec<_>>(),
            [("x-veil-feature", "triage")]
        );
        assert_eq!(
            ex.request_body.chunks,
            vec![Bytes::from_static(b"{\"model\":\"gpt-4o\"}")]
        );
        assert_eq!(
            ex.response_body.chunks,
            vec![
                Bytes::from_static(b"data: a\n\n"),
                Bytes::from_static(b"data: [DONE]\n\n")
            ],
            "chunk boundaries kept"
        );
        // Another key, or the frame under another id: refused, nothing returned.
        let other: DataKey = Zeroizing::new([0x12; 32]);
        assert_eq!(
            open_frame(bytes.clone(), id, &other).unwrap_err().kind(),
            ErrorKind::Authentication
        );
        let mut moved = bytes;
        moved[27] ^= 1;
        let crc = crc32fast::hash(&moved[12..]);
        moved[8..12].copy_from_slice(&crc.to_le_bytes());
        let moved_id = parse_frame_header(&moved).unwrap().id;
        assert_eq!(
            open_frame(moved, moved_id, &key).unwrap_err().kind(),
            ErrorKind::Authentication,
            "the id is in the associated data"
        );
    }
}
