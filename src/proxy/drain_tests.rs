use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::*;

/// A body of `chunks` (`None`: nothing yet, pending forever once reached; `Some(Err)`: the
/// app reset it) that counts the bytes taken from it and notes when it is dropped.
#[derive(Debug)]
struct Upload {
    chunks: VecDeque<Option<Result<usize, ()>>>,
    taken: Arc<AtomicU64>,
    dropped: Arc<AtomicBool>,
}

#[derive(Debug, Clone, Default)]
struct Seen {
    taken: Arc<AtomicU64>,
    dropped: Arc<AtomicBool>,
}

impl Seen {
    fn upload(&self, chunks: impl IntoIterator<Item = Option<Result<usize, ()>>>) -> Upload {
        Upload {
            chunks: chunks.into_iter().collect(),
            taken: self.taken.clone(),
            dropped: self.dropped.clone(),
        }
    }

    fn taken(&self) -> u64 {
        self.taken.load(Ordering::SeqCst)
    }

    fn dropped(&self) -> bool {
        self.dropped.load(Ordering::SeqCst)
    }
}

impl Body for Upload {
    type Data = Bytes;
    type Error = &'static str;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
        match self.chunks.front() {
            None => Poll::Ready(None),
            Some(None) => Poll::Pending,
            Some(Some(Err(()))) => {
                self.chunks.pop_front();
                Poll::Ready(Some(Err("stream reset by the app")))
            }
            Some(Some(Ok(n))) => {
                let n = *n;
                self.chunks.pop_front();
                self.taken.fetch_add(n as u64, Ordering::SeqCst);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n])))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        self.dropped.store(true, Ordering::SeqCst);
    }
}

fn h2() -> Option<DrainPolicy> {
    DrainPolicy::for_version(Version::HTTP_2, &CancellationToken::new())
}

/// Lets spawned drains run (paused clock: sleeping advances it only as far as asked).
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1)).await;
}

// See: veil#10. An h2 request answered early (503 audit_unavailable) dropped its body unread,
// and the reset that followed the answer made curl 7.88 lose the answer.
#[tokio::test(start_paused = true)]
async fn an_h2_body_dropped_unread_is_read_to_its_end() {
    let seen = Seen::default();
    let body = Drain::new(seen.upload([Some(Ok(16_384)); 16]), h2());
    drop(body);
    settle().await;
    assert_eq!(
        seen.taken(),
        16 * 16_384,
        "the whole 256 KiB upload was read"
    );
    assert!(seen.dropped(), "and let go once it ended");
}

#[tokio::test(start_paused = true)]
async fn an_http1_body_dropped_unread_is_left_to_hyper() {
    let seen = Seen::default();
    let policy = DrainPolicy::for_version(Version::HTTP_11, &CancellationToken::new());
    assert!(policy.is_none());
    drop(Drain::new(
        seen.upload([Some(Ok(100)), Some(Ok(100))]),
        policy,
    ));
    settle().await;
    assert_eq!(seen.taken(), 0);
    assert!(seen.dropped());
}

#[tokio::test(start_paused = true)]
async fn a_drain_stops_at_max_bytes() {
    let seen = Seen::default();
    let chunk = 64 * 1024;
    let chunks = (0..64).map(|_| Some(Ok(chunk))); // 4 MiB on offer
    drop(Drain::new(seen.upload(chunks), h2()));
    settle().await;
    assert_eq!(
        seen.taken(),
        DRAIN_MAX_BYTES,
        "read up to the bound, not past it"
    );
    assert!(seen.dropped(), "then let go (h2 resets the stream)");
}

#[tokio::test(start_paused = true)]
async fn a_drain_stops_at_max_time() {
    let seen = Seen::default();
    let body = Drain::new(seen.upload([Some(Ok(10)), None]), h2());
    drop(body);
    settle().await;
    assert_eq!(seen.taken(), 10);
    assert!(!seen.dropped(), "still waiting for the app");
    tokio::time::sleep(DRAIN_MAX_TIME).await;
    settle().await;
    assert!(seen.dropped(), "let go after DRAIN_MAX_TIME");
}

#[tokio::test(start_paused = true)]
async fn a_drain_stops_when_shutdown_begins() {
    let seen = Seen::default();
    let cancel = CancellationToken::new();
    let policy = DrainPolicy::for_version(Version::HTTP_2, &cancel);
    drop(Drain::new(seen.upload([None]), policy));
    settle().await;
    assert!(!seen.dropped());
    cancel.cancel();
    settle().await;
    assert!(seen.dropped());
}

#[tokio::test(start_paused = true)]
async fn a_body_that_failed_is_not_drained() {
    let seen = Seen::default();
    let mut body = Drain::new(seen.upload([Some(Err(())), Some(Ok(100))]), h2());
    assert!(body.frame().await.unwrap().is_err());
    drop(body);
    settle().await;
    assert_eq!(seen.taken(), 0, "the app reset it: nothing more is read");
    assert!(seen.dropped());
}

#[tokio::test(start_paused = true)]
async fn frames_pass_through_untouched_and_a_read_body_is_not_drained() {
    let seen = Seen::default();
    let mut body = Drain::new(seen.upload([Some(Ok(3)), Some(Ok(4))]), h2());
    let all = (&mut body).collect().await.unwrap().to_bytes();
    assert_eq!(&all[..], b"xxxxxxx");
    assert!(body.is_end_stream());
    drop(body);
    settle().await;
    assert_eq!(seen.taken(), 7);
}

#[tokio::test(start_paused = true)]
async fn drain_reports_why_it_stopped() {
    let policy = h2().unwrap();
    let seen = Seen::default();
    let ended = drain(seen.upload([Some(Ok(5))]), policy.clone()).await;
    assert_eq!(ended, (5, Stopped::Ended));
    let failed = drain(seen.upload([Some(Ok(5)), Some(Err(()))]), policy.clone()).await;
    assert_eq!(failed, (5, Stopped::Failed));
    let full = drain(seen.upload([Some(Ok(2 << 20))]), policy.clone()).await;
    assert_eq!(full, (2 << 20, Stopped::MaxBytes));
    let slow = drain(seen.upload([None]), policy).await;
    assert_eq!(slow, (0, Stopped::MaxTime));
}

/// An upload the test feeds chunk by chunk; it ends when the sender is dropped.
struct Fed(tokio::sync::mpsc::Receiver<Bytes>, bool);

impl Body for Fed {
    type Data = Bytes;
    type Error = &'static str;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, &'static str>>> {
        let polled = self.0.poll_recv(cx);
        if let Poll::Ready(None) = polled {
            self.1 = true;
        }
        polled.map(|c| c.map(|c| Ok(Frame::data(c))))
    }

    fn is_end_stream(&self) -> bool {
        self.1
    }
}

// See: veil#10. curl ends its upload short when it sees an error status, and h2 then resets
// the stream with PROTOCOL_ERROR, answer and all: an early answer waits for the drain.
#[tokio::test(start_paused = true)]
async fn settled_resolves_when_the_drain_has_read_the_upload_to_its_end() {
    let (app, rx) = tokio::sync::mpsc::channel(4);
    let mut body = Drain::new(Fed(rx, false), h2());
    let settled = body.settled();
    drop(body);
    let waiting = tokio::spawn(settled.wait(ANSWER_WAIT_MAX));
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished(), "the upload has not ended yet");
        app.send(Bytes::from_static(b"more")).await.unwrap();
    }
    drop(app);
    settle().await;
    assert!(waiting.is_finished(), "the upload ended: the answer may go");
    assert!(waiting.await.unwrap(), "it did not wait out the bound");
}

#[tokio::test(start_paused = true)]
async fn settled_gives_up_after_its_bound_on_an_app_that_does_not_send() {
    let seen = Seen::default();
    let mut body = Drain::new(seen.upload([None]), h2());
    let settled = body.settled();
    drop(body);
    let started = tokio::time::Instant::now();
    assert!(!settled.wait(ANSWER_WAIT_MAX).await);
    assert_eq!(started.elapsed(), ANSWER_WAIT_MAX);
    assert!(!seen.dropped(), "the drain itself goes on to its own bound");
}

#[tokio::test(start_paused = true)]
async fn settled_resolves_at_once_for_a_body_that_is_not_drained() {
    let policy = DrainPolicy::for_version(Version::HTTP_11, &CancellationToken::new());
    let cases = [
        (
            "HTTP/1.1",
            Drain::new(Seen::default().upload([None]), policy),
        ),
        ("ended", Drain::new(Seen::default().upload([]), h2())),
    ];
    for (case, mut body) in cases {
        let settled = body.settled();
        drop(body);
        let started = tokio::time::Instant::now();
        assert!(settled.wait(ANSWER_WAIT_MAX).await, "{case}");
        assert!(started.elapsed().is_zero(), "{case}");
    }
    let seen = Seen::default();
    let mut failed = Drain::new(seen.upload([Some(Err(())), None]), h2());
    let settled = failed.settled();
    assert!(failed.frame().await.unwrap().is_err());
    drop(failed);
    assert!(settled.wait(Duration::ZERO).await, "failed");
}
