//! # Connection lifetime: how long a client connection may sit before veil closes it.
//!
//! Owns the per-connection bookkeeping (requests in flight, when the connection last went
//! idle, when the next request head began) and the watchdog that closes a connection whose
//! time is up. The proxy port, intercepted TLS sessions and the admin API all run through
//! [`drive`]; blind tunnels keep their own idle clock over a [`Watched`] stream (the proxy's
//! `tunnel` stage). It never reads or logs content: the IO wrapper only notes that a read
//! returned bytes.
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

use super::woken::Woken;

/// After veil decides to close an idle connection it asks for a graceful close (h2 GOAWAY) and
/// gives the peer this long to take it before dropping the socket. Nothing is in flight, so
/// this only spares the client a reset.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The time limits of one kind of client connection. The proxy's are built once, by
/// [`ProxySettings::from_config`](super::ProxySettings::from_config); the admin API reuses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time allowed for a request head (see the module docs).
    pub header_read: Duration,
    /// Time a connection with no request in flight may stay open.
    pub idle: Duration,
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
    // Both polled only when they fire, not on each of the connection's wake-ups: the token
    // is shared by every connection (see `woken`).
    let mut cancelled = pin!(Woken::new(cancel.cancelled()));
    let mut timer = pin!(Woken::new(tokio::time::sleep_until(
        activity.start + limits.header_read
    )));
    loop {
        tokio::select! {
            r = conn.as_mut() => return Ended::Done(r),
            () = cancelled.as_mut() => {
                graceful(conn.as_mut());
                return Ended::Done(conn.await);
            }
            () = timer.as_mut() => match activity.verdict(Instant::now(), limits) {
                Verdict::Until(at) => timer.as_mut().rearm().reset(at),
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

    /// The bytes a read returned (at least one); by default only [`Probe::on_read`].
    #[inline]
    fn on_data(&self, _data: &[u8]) {
        self.on_read();
    }
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
            self.probe.on_data(&buf.filled()[before..]);
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

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
