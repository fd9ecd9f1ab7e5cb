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
    let body = c.into_body(None);
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

/// A captured body no longer pins the read buffers its chunks were cut from: its chunks are
/// copied into one buffer of exactly their size, back to back, boundaries and bytes kept. A
/// body over `COMPACT_MAX` keeps its chunks as forwarded.
#[test]
fn compact_copies_small_bodies_out_of_the_buffers_they_were_read_into() {
    // Two chunks cut from one 64 KiB "read buffer", as hyper hands them out.
    let read_buffer = Bytes::from(vec![7u8; 64 << 10]);
    let chunks = vec![read_buffer.slice(0..100), read_buffer.slice(100..2100)];
    let inside = |b: &Bytes| {
        let (start, p) = (read_buffer.as_ptr() as usize, b.as_ptr() as usize);
        p >= start && p < start + read_buffer.len()
    };
    assert!(chunks.iter().all(inside));
    let out = compact(chunks.clone());
    assert_eq!(out, chunks, "same bytes, same boundaries");
    assert!(!out.iter().any(inside), "copied out of the read buffer");
    assert_eq!(
        out[1].as_ptr() as usize,
        out[0].as_ptr() as usize + 100,
        "one buffer, back to back"
    );

    let big = Bytes::from(vec![1u8; COMPACT_MAX + 1]);
    let kept = compact(vec![big.clone()]);
    assert_eq!(
        kept[0].as_ptr(),
        big.as_ptr(),
        "a large body is left shared"
    );
    assert!(compact(Vec::new()).is_empty());
}
