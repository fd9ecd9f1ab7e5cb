//! # Stall clock: a request body that stops arriving ends its request.
//!
//! The forward stage wraps every app request body in a [`StallClock`] before it goes upstream
//! (inside the [`drain`](super::drain) and the tee, so a recorded body is clocked too, and so
//! is a drain between frames). The clock hands the upstream client
//! the same frames, untouched, or [`BodyError::Stalled`] when nothing arrived for
//! `header_read_timeout`; the forward stage reads that error back out of the client's error
//! chain to answer 408 and count the app's side, never the upstream's. It never reads or logs
//! the bytes it passes.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

/// A request body on its way upstream, with a clock: when veil asks for the next piece and
/// none arrives within `limit`, the body ends with [`BodyError::Stalled`] and the request
/// fails (408 to the app). Without it a request whose head arrived and whose body never
/// does counted as in flight, which no connection clock cuts, and held its slot until the
/// upstream gave up (veil#10). The clock starts when veil first asks for the body (not
/// while it waits for the upstream connection) and restarts with every frame, so a slow but
/// moving upload is never cut; a trickle of one byte per `limit` is (documented limit).
#[derive(Debug)]
pub struct StallClock<B> {
    inner: B,
    limit: Duration,
    /// When the body last moved: the first ask, then every frame (`None` before the first).
    since: Option<Instant>,
    /// The timer, made the first time the body is not ready and reset to `since + limit`
    /// when asked again. A body that is always ready (a request whose bytes came with its
    /// head, the usual case) never makes one: a `Sleep` clones the runtime's handle and
    /// registers with the timer wheel, and creating and dropping one per request was about
    /// 0.4 % of the forwarding threads at 64 connections (stop 59's profile).
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<B> StallClock<B> {
    /// Wraps `inner`; at most `limit` between frames.
    pub fn new(inner: B, limit: Duration) -> Self {
        StallClock {
            inner,
            limit,
            since: None,
            sleep: None,
        }
    }
}

/// Why a clocked request body ended early.
#[derive(Debug)]
pub enum BodyError<E> {
    /// The app's own body failed (it reset the stream, broke the connection).
    Inner(E),
    /// No frame arrived for this long.
    Stalled(Duration),
}

impl<E: std::fmt::Display> std::fmt::Display for BodyError<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Inner(e) => e.fmt(f),
            BodyError::Stalled(d) => write!(
                f,
                "the request body stalled: nothing arrived for {}s",
                d.as_secs_f32()
            ),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for BodyError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BodyError::Inner(e) => Some(e),
            BodyError::Stalled(_) => None,
        }
    }
}

impl<E> BodyError<E> {
    /// True for [`BodyError::Stalled`].
    pub fn is_stalled(&self) -> bool {
        matches!(self, BodyError::Stalled(_))
    }
}

impl<B> Body for StallClock<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = BodyError<B::Error>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let since = *this.since.get_or_insert_with(Instant::now);
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.since = Some(Instant::now());
                Poll::Ready(frame.map(|r| r.map_err(BodyError::Inner)))
            }
            Poll::Pending => {
                let at = since + this.limit;
                let sleep = match &mut this.sleep {
                    Some(sleep) => {
                        if sleep.deadline() != at {
                            sleep.as_mut().reset(at);
                        }
                        sleep
                    }
                    None => this.sleep.insert(Box::pin(tokio::time::sleep_until(at))),
                };
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::Stalled(this.limit)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    struct Chunks(std::collections::VecDeque<Option<Bytes>>);

    /// Yields its chunks; `None` entries are "nothing yet" (pending forever once reached).
    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            match self.0.front() {
                Some(Some(_)) => {
                    let b = self.0.pop_front().flatten().expect("checked");
                    Poll::Ready(Some(Ok(Frame::data(b))))
                }
                Some(None) => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    /// Yields what its channel is sent; pending while the channel is empty and open.
    struct Fed(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    // See: veil#10. `Content-Length: 100000` and then nothing held a slot for 300 s.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_never_arrives_fails_after_the_limit() {
        let body = Chunks(vec![Some(Bytes::from_static(b"{\"model\"")), None].into());
        let mut clocked = StallClock::new(body, Duration::from_secs(10));
        // Waiting for the upstream does not count: the clock starts at the first poll.
        tokio::time::sleep(Duration::from_secs(60)).await;
        let first = clocked.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "{\"model\"");
        let t0 = Instant::now();
        let err = clocked.frame().await.unwrap().unwrap_err();
        assert!(err.is_stalled(), "{err}");
        assert_eq!(t0.elapsed(), Duration::from_secs(10));
        assert!(err.to_string().contains("stalled"));
    }

    /// The clock restarts with every frame: a body that moves is never cut, however long it
    /// takes in all, and the first wait after a frame is measured from that frame.
    #[tokio::test(start_paused = true)]
    async fn every_frame_restarts_the_clock() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let mut clocked = StallClock::new(Fed(rx), Duration::from_secs(10));
        let feeder = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_secs(8)).await;
                tx.send(Bytes::from_static(b"x")).await.unwrap();
            }
            // Then nothing more, the sender held open.
            std::future::pending::<()>().await;
        });
        let t0 = Instant::now();
        for k in 1..=3u64 {
            let frame = clocked.frame().await.unwrap().unwrap();
            assert_eq!(frame.into_data().unwrap(), "x");
            assert_eq!(t0.elapsed(), Duration::from_secs(8 * k));
        }
        let err = clocked.frame().await.unwrap().unwrap_err();
        assert!(err.is_stalled(), "{err}");
        // 10 s after the last frame, not after the first wait's timer.
        assert_eq!(t0.elapsed(), Duration::from_secs(34));
        feeder.abort();
    }

    /// A body that is ready whenever it is asked never makes a timer.
    #[tokio::test(start_paused = true)]
    async fn a_ready_body_makes_no_timer() {
        let body = Chunks(vec![Some(Bytes::from_static(b"a"))].into());
        let mut clocked = StallClock::new(body, Duration::from_secs(1));
        while clocked.frame().await.is_some() {}
        assert!(clocked.sleep.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_body_passes_untouched() {
        let body = Chunks(
            vec![
                Some(Bytes::from_static(b"a")),
                Some(Bytes::from_static(b"b")),
            ]
            .into(),
        );
        let all = StallClock::new(body, Duration::from_millis(1))
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&all[..], b"ab");
    }
}
