//! # Connection lifetime: how long a client connection may sit before veil closes it.
//!
//! Owns the per-connection bookkeeping (requests in flight, when the connection last went
//! idle, when the next request head began) and the watchdog that closes a connection whose
//! time is up. The proxy port, intercepted TLS sessions and the admin API all run through
//! [`drive`]; blind tunnels through [`copy_tunnel`]. It never reads or logs content: the IO
//! wrapper only notes that a read returned bytes.
//!
//! The rules (`header_read_timeout`, `idle_timeout`, `tunnel_idle_timeout` in the config):
//! - a fresh connection must complete its first request head within `header_read`;
//! - while a request is in flight nothing is cut, however long the response streams or
//!   pauses (the upstream's own time is bounded by `upstream_timeout` for its headers);
//! - once the last response ends, the connection may sit `idle`; an HTTP/1 request head that
//!   begins must be complete `header_read` after its first byte;
//! - a tunnel with no byte either way for `tunnel_idle_timeout` is closed.
//!
//! Why not hyper's own `header_read_timeout`: in hyper 1 its clock starts whenever the
//! connection waits for a head, so between keep-alive requests it is an idle timeout of the
//! same length (a 10 s head limit would close every keep-alive connection after 10 s idle);
//! it does not run while hyper-util's `auto` builder reads the preface (a silent socket there
//! was held forever); and it does not exist for h2. h2 keep-alive pings detect dead peers but
//! never close a live idle one. So veil keeps its own clock, one timer per connection, reset
//! only when it fires: no clock reads and no timer work per read or per frame.

use std::future::Future;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Version;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// After veil decides to close an idle connection it asks for a graceful close (h2 GOAWAY) and
/// gives the peer this long to take it before dropping the socket. Nothing is in flight, so
/// this only spares the client a reset.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The time limits of one kind of client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time allowed for a request head (see the module docs).
    pub header_read: Duration,
    /// Time a connection with no request in flight may stay open.
    pub idle: Duration,
}

impl Limits {
    /// The limits `config` sets for client connections.
    pub fn of(config: &crate::config::Config) -> Limits {
        Limits {
            header_read: config.header_read_timeout,
            idle: config.idle_timeout,
        }
    }
}

/// What a connection is doing, updated by the service (requests) and the IO wrapper (reads),
/// read by the watchdog when its timer fires. Relaxed atomics throughout: the fields feed a
/// timing decision that is re-taken at the next deadline, never a correctness invariant.
#[derive(Debug)]
pub struct Activity {
    /// When the connection (or the TLS session inside CONNECT) became ready for requests.
    start: Instant,
    /// Requests whose response has not ended yet.
    in_flight: AtomicU32,
    /// Requests begun so far.
    served: AtomicU64,
    /// Milliseconds after `start` when `in_flight` last dropped to zero.
    idle_at_ms: AtomicU64,
    /// True from the moment the connection went idle until its next read returns bytes.
    awaiting_head: AtomicBool,
    /// Milliseconds after `start` of that first read: the next request head began.
    head_at_ms: AtomicU64,
    /// The connection speaks h2: reads there are pings and window updates, not heads.
    h2: AtomicBool,
}

impl Activity {
    /// A connection that became ready now.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            start: Instant::now(),
            in_flight: AtomicU32::new(0),
            served: AtomicU64::new(0),
            idle_at_ms: AtomicU64::new(0),
            awaiting_head: AtomicBool::new(false),
            head_at_ms: AtomicU64::new(0),
            h2: AtomicBool::new(false),
        })
    }

    /// A request began on this connection; it is in flight until the returned guard drops
    /// (move it into the response body, see [`Tracked`]).
    pub fn begin(self: &Arc<Self>, version: Version) -> InFlight {
        if version == Version::HTTP_2 {
            self.h2.store(true, Ordering::Relaxed);
        }
        self.served.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    fn since_start(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Whether the connection may stay open at `now`, and until when.
    fn verdict(&self, now: Instant, limits: Limits) -> Verdict {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            // Busy: never cut. Look again after one idle period.
            return Verdict::Until(now + limits.idle);
        }
        let at = |ms: &AtomicU64| self.start + Duration::from_millis(ms.load(Ordering::Relaxed));
        let (deadline, why) = if self.served.load(Ordering::Relaxed) == 0 {
            (self.start + limits.header_read, Why::FirstHead)
        } else if !self.h2.load(Ordering::Relaxed) && !self.awaiting_head.load(Ordering::Relaxed) {
            (at(&self.head_at_ms) + limits.header_read, Why::Head)
        } else {
            (at(&self.idle_at_ms) + limits.idle, Why::Idle)
        };
        if now >= deadline {
            Verdict::Close(why)
        } else {
            Verdict::Until(deadline)
        }
    }
}

impl Probe for Activity {
    #[inline]
    fn on_read(&self) {
        // One relaxed load per read; the clock is read once per request, not per read.
        if self.awaiting_head.load(Ordering::Relaxed)
            && self.awaiting_head.swap(false, Ordering::Relaxed)
        {
            self.head_at_ms.store(self.since_start(), Ordering::Relaxed);
        }
    }
}

/// A request in flight; dropping it ends the request for the idle clock.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        if a.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            a.idle_at_ms.store(a.since_start(), Ordering::Relaxed);
            a.awaiting_head.store(true, Ordering::Relaxed);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Until(Instant),
    Close(Why),
}

/// Why a connection was closed by its clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// No complete first request head within `header_read_timeout`.
    FirstHead,
    /// A later request head began but was not complete within `header_read_timeout`.
    Head,
    /// No request in flight for `idle_timeout`.
    Idle,
}

impl Why {
    /// Short stable name, for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Why::FirstHead => "no request head within header_read_timeout",
            Why::Head => "request head incomplete after header_read_timeout",
            Why::Idle => "idle for idle_timeout",
        }
    }
}

/// How a driven connection ended.
#[derive(Debug)]
pub enum Ended<T> {
    /// The connection finished by itself (or after shutdown asked it to).
    Done(T),
    /// veil closed it because its time was up.
    TimedOut(Why),
}

/// Drives `conn` to its end under `activity`'s clock: closes it (gracefully, then by dropping
/// it after a 1 s grace) when [`Limits`] say so, and asks it to finish gracefully when
/// `cancel` fires (shutdown; the caller bounds that drain).
pub async fn drive<C: Future>(
    conn: C,
    activity: &Activity,
    limits: Limits,
    cancel: &CancellationToken,
    graceful: impl Fn(Pin<&mut C>),
) -> Ended<C::Output> {
    let mut conn = pin!(conn);
    let timer = tokio::time::sleep_until(activity.start + limits.header_read);
    let mut timer = pin!(timer);
    loop {
        tokio::select! {
            r = conn.as_mut() => return Ended::Done(r),
            () = cancel.cancelled() => {
                graceful(conn.as_mut());
                return Ended::Done(conn.await);
            }
            () = timer.as_mut() => match activity.verdict(Instant::now(), limits) {
                Verdict::Until(at) => timer.as_mut().reset(at),
                Verdict::Close(why) => {
                    graceful(conn.as_mut());
                    let _ = tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await;
                    return Ended::TimedOut(why);
                }
            },
        }
    }
}

/// Something told about every read that returned bytes.
pub trait Probe: Send + Sync + 'static {
    /// A read returned at least one byte.
    fn on_read(&self);
}

/// An IO stream that tells its [`Probe`] about reads. Writes pass through untouched
/// (including vectored writes, which hyper uses when the stream supports them).
#[derive(Debug)]
pub struct Watched<T, P> {
    io: T,
    probe: Arc<P>,
}

impl<T, P> Watched<T, P> {
    /// Wraps `io`.
    pub fn new(io: T, probe: Arc<P>) -> Self {
        Watched { io, probe }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.io
    }
}

impl<T: AsyncRead + Unpin, P: Probe> AsyncRead for Watched<T, P> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.probe.on_read();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin, P: Unpin> AsyncWrite for Watched<T, P> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A response body that keeps its request in flight until hyper drops it (after the last
/// frame, or when the client goes away). Frames pass through untouched.
#[derive(Debug)]
pub struct Tracked<B> {
    inner: B,
    _in_flight: InFlight,
}

impl<B> Tracked<B> {
    /// `inner`, holding `in_flight` for as long as it lives.
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Tracked {
            inner,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for Tracked<B> {
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts reads on either side of a blind tunnel.
#[derive(Debug, Default)]
pub struct TunnelActivity(AtomicU64);

impl Probe for TunnelActivity {
    #[inline]
    fn on_read(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// How a blind tunnel ended.
#[derive(Debug)]
pub enum TunnelEnd {
    /// One side closed; bytes copied up (app → upstream) and down.
    Closed {
        /// App → upstream bytes.
        up: u64,
        /// Upstream → app bytes.
        down: u64,
    },
    /// Copying failed (a reset, usually).
    Failed(std::io::Error),
    /// No byte either way for the idle limit.
    Idle,
}

/// Copies between `app` and `upstream` until one side closes, or until no byte has crossed
/// either way for `idle` (checked every quarter of it, so closed within 1.25 × `idle` of the
/// last byte). A tunnel that carries anything, however rarely, stays open.
pub async fn copy_tunnel<A, U>(app: A, upstream: U, idle: Duration) -> TunnelEnd
where
    A: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Arc::new(TunnelActivity::default());
    let mut app = Watched::new(app, activity.clone());
    let mut upstream = Watched::new(upstream, activity.clone());
    let copy = tokio::io::copy_bidirectional(&mut app, &mut upstream);
    let mut copy = pin!(copy);
    let period = (idle / 4).max(Duration::from_millis(1));
    let mut last = 0;
    let mut quiet = Duration::ZERO;
    loop {
        tokio::select! {
            r = copy.as_mut() => return match r {
                Ok((up, down)) => TunnelEnd::Closed { up, down },
                Err(e) => TunnelEnd::Failed(e),
            },
            () = tokio::time::sleep(period) => {
                let now = activity.0.load(Ordering::Relaxed);
                if now == last {
                    quiet += period;
                    if quiet >= idle {
                        return TunnelEnd::Idle;
                    }
                } else {
                    last = now;
                    quiet = Duration::ZERO;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        header_read: Duration::from_secs(10),
        idle: Duration::from_secs(120),
    };

    fn after(a: &Activity, secs: u64) -> Instant {
        a.start + Duration::from_secs(secs)
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_connection_gets_header_read_for_its_first_head() {
        let a = Activity::new();
        assert_eq!(
            a.verdict(after(&a, 9), LIMITS),
            Verdict::Until(after(&a, 10))
        );
        assert_eq!(
            a.verdict(after(&a, 10), LIMITS),
            Verdict::Close(Why::FirstHead)
        );
        // Bytes of the head arriving do not buy more time for the first request.
        a.on_read();
        assert_eq!(
            a.verdict(after(&a, 10), LIMITS),
            Verdict::Close(Why::FirstHead)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_flight_is_never_cut() {
        let a = Activity::new();
        let guard = a.begin(Version::HTTP_11);
        for secs in [10, 121, 10_000] {
            assert!(matches!(
                a.verdict(after(&a, secs), LIMITS),
                Verdict::Until(_)
            ));
        }
        drop(guard);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_then_a_slow_head_on_http1() {
        let a = Activity::new();
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(a.begin(Version::HTTP_11)); // a request at 5 s, done at once: idle from 5 s
        assert_eq!(
            a.verdict(after(&a, 100), LIMITS),
            Verdict::Until(after(&a, 125))
        );
        assert_eq!(a.verdict(after(&a, 125), LIMITS), Verdict::Close(Why::Idle));
        // A head that begins at 120 s has until 130 s, even past the idle deadline.
        tokio::time::advance(Duration::from_secs(115)).await;
        a.on_read();
        assert_eq!(
            a.verdict(after(&a, 125), LIMITS),
            Verdict::Until(after(&a, 130))
        );
        assert_eq!(a.verdict(after(&a, 130), LIMITS), Verdict::Close(Why::Head));
    }

    #[tokio::test(start_paused = true)]
    async fn h2_reads_are_not_heads() {
        let a = Activity::new();
        drop(a.begin(Version::HTTP_2));
        tokio::time::advance(Duration::from_secs(30)).await;
        a.on_read(); // a ping ack
        assert_eq!(
            a.verdict(after(&a, 40), LIMITS),
            Verdict::Until(after(&a, 120))
        );
        assert_eq!(a.verdict(after(&a, 120), LIMITS), Verdict::Close(Why::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_tunnel_closes_and_a_trickling_one_stays() {
        let idle = Duration::from_secs(60);
        // Quiet: nothing either way.
        let (app, _app_peer) = tokio::io::duplex(64);
        let (up, _up_peer) = tokio::io::duplex(64);
        let t0 = Instant::now();
        let end = copy_tunnel(app, up, idle).await;
        assert!(matches!(end, TunnelEnd::Idle), "{end:?}");
        let took = t0.elapsed();
        assert!(took >= idle && took <= idle + idle / 4, "{took:?}");

        // Trickling: one byte every 50 s for 5 minutes keeps it open; then the app closes.
        use tokio::io::AsyncWriteExt;
        let (app, mut app_peer) = tokio::io::duplex(64);
        let (up, up_peer) = tokio::io::duplex(64);
        let tunnel = tokio::spawn(copy_tunnel(app, up, idle));
        for _ in 0..6 {
            app_peer.write_all(b"x").await.unwrap();
            tokio::time::sleep(Duration::from_secs(50)).await;
            assert!(!tunnel.is_finished(), "a tunnel carrying bytes was closed");
        }
        drop(app_peer);
        drop(up_peer);
        match tunnel.await.unwrap() {
            TunnelEnd::Closed { up, .. } => assert_eq!(up, 6),
            other => panic!("{other:?}"),
        }
    }
}

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
    sleep: Pin<Box<tokio::time::Sleep>>,
    armed: bool,
}

impl<B> StallClock<B> {
    /// Wraps `inner`; at most `limit` between frames.
    pub fn new(inner: B, limit: Duration) -> Self {
        StallClock {
            inner,
            limit,
            sleep: Box::pin(tokio::time::sleep(limit)),
            armed: false,
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
        if !this.armed {
            this.armed = true;
            let at = Instant::now() + this.limit;
            this.sleep.as_mut().reset(at);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let at = Instant::now() + this.limit;
                this.sleep.as_mut().reset(at);
                Poll::Ready(frame.map(|r| r.map_err(BodyError::Inner)))
            }
            Poll::Pending => match this.sleep.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::Stalled(this.limit)))),
                Poll::Pending => Poll::Pending,
            },
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
mod stall_tests {
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
