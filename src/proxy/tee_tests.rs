//! Unit tests of [the tee](super): bounded capture, one `Exchange` per recording, and what a
//! dropped response or a full queue makes of it.

use super::*;
use http_body_util::{BodyExt, Full, StreamBody};

fn meta() -> RequestMeta {
    RequestMeta {
        id: ExchangeId::new(),
        started_at: SystemTime::now(),
        t0: Instant::now(),
        client_addr: None,
        route: Route::Intercept,
        upstream: Upstream {
            scheme: "https".into(),
            host: "api.openai.com".into(),
            port: 443,
        },
        client_version: "HTTP/1.1".into(),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        headers: Default::default(),
        tags: Default::default(),
        api_key_fingerprint: None,
    }
}

#[test]
fn capture_is_bounded_and_marks_truncation() {
    let mut c = Capture::new(10);
    c.push(&Bytes::from_static(b"0123456"));
    c.push(&Bytes::from_static(b"789abc"));
    c.push(&Bytes::from_static(b"def"));
    let body = c.into_body();
    assert_eq!(&body.bytes()[..], b"0123456789");
    assert_eq!(body.wire_len, 16);
    assert!(body.truncated);
}

/// A 200 with no headers arrived, now.
fn response_head_200(rec: &RecordingRef) {
    let now = Instant::now();
    rec.lock()
        .unwrap()
        .response_head(200, Headers::new(), None, now, now);
}

#[tokio::test]
async fn exchange_is_emitted_once_with_both_bodies() {
    let (tx, mut rx) = crate::exchange::queue::channel(4, 1 << 20, Default::default());
    let rec = Recording::start(meta(), Sink::BestEffort(tx.clone()));
    let req = TeeBody::recording(
        Full::new(Bytes::from_static(b"{\"q\":1}")),
        Side::Request,
        1024,
        rec.clone(),
    );
    let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(b"data: a\n\n"))),
        Ok(Frame::data(Bytes::from_static(b"data: b\n\n"))),
    ];
    let resp_inner = StreamBody::new(futures_lite_stream(chunks));
    response_head_200(&rec);
    let resp = TeeBody::recording(resp_inner, Side::Response, 1024, rec.clone());
    drop(rec);
    assert_eq!(req.collect().await.unwrap().to_bytes(), "{\"q\":1}");
    assert!(
        rx.try_recv().is_none(),
        "not emitted while the response is in flight"
    );
    assert_eq!(
        resp.collect().await.unwrap().to_bytes(),
        "data: a\n\ndata: b\n\n"
    );
    let ex = rx.try_recv().expect("emitted when the last tee ended");
    assert_eq!(ex.outcome, Outcome::Complete);
    assert_eq!(&ex.request_body.bytes()[..], b"{\"q\":1}");
    assert_eq!(&ex.response_body.bytes()[..], b"data: a\n\ndata: b\n\n");
    assert!(ex.timings.first_byte.is_some());
    assert!(rx.try_recv().is_none(), "exactly once");
    assert_eq!(tx.counters().queue.queued.get(), 1);
}

#[tokio::test]
async fn dropped_response_is_client_aborted_and_full_queue_counts_drops() {
    let (tx, mut rx) = crate::exchange::queue::channel(1, 1 << 20, Default::default());
    for _ in 0..2 {
        let rec = Recording::start(meta(), Sink::BestEffort(tx.clone()));
        response_head_200(&rec);
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> =
            vec![Ok(Frame::data(Bytes::from_static(b"partial")))];
        let mut resp = TeeBody::recording(
            StreamBody::new(futures_lite_stream(chunks).chain_pending()),
            Side::Response,
            1024,
            rec,
        );
        let _ = resp.frame().await;
        drop(resp);
    }
    let ex = rx.try_recv().unwrap();
    assert_eq!(ex.outcome, Outcome::ClientAborted);
    assert_eq!(&ex.response_body.bytes()[..], b"partial");
    assert_eq!(tx.counters().queue.dropped_full.get(), 1);
}

/// A minimal stream over a vector, optionally never ending afterwards.
fn futures_lite_stream<T: Unpin>(items: Vec<T>) -> VecStream<T> {
    VecStream {
        items: items.into_iter().collect(),
        pending_after: false,
    }
}

struct VecStream<T> {
    items: std::collections::VecDeque<T>,
    pending_after: bool,
}

impl<T> VecStream<T> {
    fn chain_pending(mut self) -> Self {
        self.pending_after = true;
        self
    }
}

impl<T: Unpin> futures_core::Stream for VecStream<T> {
    type Item = T;
    fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<T>> {
        match self.items.pop_front() {
            Some(item) => Poll::Ready(Some(item)),
            None if self.pending_after => Poll::Pending,
            None => Poll::Ready(None),
        }
    }
}

/// A capture does not pin the read buffers its frames were cut from: its first `COPY_MAX`
/// bytes are copied as they arrive into one buffer, back to back, bytes and boundaries kept;
/// what comes after is kept as forwarded.
#[test]
fn capture_copies_frames_out_of_the_buffers_they_were_read_into() {
    // Frames cut from one 64 KiB "read buffer", as hyper hands them out.
    let read_buffer = Bytes::from((0..64 << 10).map(|i| i as u8).collect::<Vec<u8>>());
    let frames = [
        read_buffer.slice(0..100),
        read_buffer.slice(100..2100),
        read_buffer.slice(2100..2101),
    ];
    let inside = |b: &Bytes| {
        let (start, p) = (read_buffer.as_ptr() as usize, b.as_ptr() as usize);
        p >= start && p < start + read_buffer.len()
    };
    let mut c = Capture::new(1 << 20);
    for f in &frames {
        c.push(f);
    }
    let body = c.into_body();
    assert_eq!(body.chunks, frames, "same bytes, same boundaries");
    assert!(
        !body.chunks.iter().any(inside),
        "copied out of the read buffer"
    );
    assert_eq!(
        body.chunks[1].as_ptr() as usize,
        body.chunks[0].as_ptr() as usize + 100,
        "one buffer, back to back"
    );
    assert_eq!((body.wire_len, body.truncated), (2101, false));

    // Past COPY_MAX the frames are kept as they came, after the copied ones.
    let big = Bytes::from(vec![1u8; COPY_MAX]);
    let mut c = Capture::new(1 << 20);
    c.push(&frames[0]);
    c.push(&big);
    c.push(&frames[1]);
    let body = c.into_body();
    assert_eq!(
        body.chunks,
        [frames[0].clone(), big.clone(), frames[1].clone()]
    );
    assert!(!inside(&body.chunks[0]));
    assert_eq!(
        body.chunks[1].as_ptr(),
        big.as_ptr(),
        "a large frame is left shared"
    );
    assert!(inside(&body.chunks[2]), "and every frame after it");

    // A limit inside the frame that crosses COPY_MAX, and one inside a later shared frame.
    for (limit, kept) in [
        (100 + 5, [100, 5, 0]),
        (100 + COPY_MAX + 7, [100, COPY_MAX, 7]),
    ] {
        let mut c = Capture::new(limit);
        c.push(&frames[0]);
        c.push(&big);
        c.push(&frames[1]);
        let body = c.into_body();
        let lens: Vec<usize> = body.chunks.iter().map(Bytes::len).collect();
        let want: Vec<usize> = kept.into_iter().filter(|&n| n > 0).collect();
        assert_eq!(lens, want, "limit {limit}");
        assert!(body.truncated);
        assert_eq!(body.wire_len, (100 + COPY_MAX + 2000) as u64);
        assert_eq!(&body.bytes()[..100], &frames[0][..]);
    }

    let empty = Capture::new(10).into_body();
    assert!(empty.chunks.is_empty());
    assert_eq!((empty.wire_len, empty.truncated), (0, false));
}

/// The copy's buffer never grows past `COPY_MAX`, however the frames come: `Vec::reserve`
/// alone would double it past that (to ~2× `COPY_MAX`).
#[test]
fn capture_copy_never_holds_more_than_copy_max() {
    for (first, then) in [(200_000, 1_000), (100, 100), (COPY_MAX - 1, 1), (1, 4096)] {
        let mut c = Capture::new(1 << 30);
        c.push(&Bytes::from(vec![1u8; first]));
        let frame = Bytes::from(vec![2u8; then]);
        for _ in 0..(2 * COPY_MAX / then) {
            c.push(&frame);
            assert!(
                c.copied.capacity() <= COPY_MAX,
                "first {first}, then {then}: capacity {}",
                c.copied.capacity()
            );
        }
        assert!(!c.shared.is_empty(), "the rest is kept shared");
    }
}

/// Streams of many small chunks grow the copy by doubling; the body comes out the same
/// whatever the frame sizes, and a cut at the limit lands inside the frame that crosses it.
#[test]
fn capture_of_many_frames_keeps_every_byte_and_cuts_at_the_limit() {
    let text: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    for frame in [1, 7, 100, 4096, 10_000] {
        for limit in [0, 1, 999, 10_000, 20_000] {
            let mut c = Capture::new(limit);
            let frames: Vec<Bytes> = text.chunks(frame).map(Bytes::copy_from_slice).collect();
            for f in &frames {
                c.push(f);
            }
            let body = c.into_body();
            let kept = limit.min(text.len());
            assert_eq!(
                &body.bytes()[..],
                &text[..kept],
                "frame {frame}, limit {limit}"
            );
            assert_eq!(body.wire_len, text.len() as u64);
            assert_eq!(body.truncated, limit < text.len());
            assert_eq!(
                body.chunks.len(),
                kept.div_ceil(frame),
                "frame {frame}, limit {limit}"
            );
            assert!(body.chunks.iter().all(|c| !c.is_empty()));
        }
    }
}
