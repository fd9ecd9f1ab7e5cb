//! # Drain: the rest of an h2 request body that veil stopped reading.
//!
//! veil answers some requests before it has read their bodies: the `503 audit_unavailable` of
//! `audit = "required"`, a refusal on the proxy port (`403 port_not_allowed`), an upstream
//! that cannot be reached (502) or answers early. Over h2, dropping the unread body made h2
//! reset the stream right after the answer (`RST_STREAM(NO_ERROR)`, as RFC 9113 §8.1
//! allows); when that reset arrived before the app had sent its body, curl 7.88 (Debian 12)
//! lost the answer it had in hand and reported `(92) Stream error in the HTTP/2 framing
//! layer` with no status: 28 to 30 times in 30 with a 256 KiB body (veil#10). So every
//! request body is wrapped in a [`Drain`] before anything can answer early: when it is dropped
//! before its end on an h2 stream, a background task reads what the app still sends and
//! throws it away, up to [`DRAIN_MAX_BYTES`] and [`DRAIN_MAX_TIME`] (or until shutdown
//! begins). The stream then closes cleanly when the app ends its upload or resets it, and
//! only an app that keeps sending past the bounds gets the reset. A body that failed (the app
//! reset it, or it stalled) is not drained: the app is not sending.
//!
//! HTTP/1.1 bodies are left to hyper, which reads what is already buffered and otherwise
//! closes the connection after the answer: clients handle that, and draining would keep such
//! connections open for no client that needs it. Drained bytes are never looked at, recorded
//! or logged; only their count is (debug). A draining stream still counts against the
//! connection's h2 stream limit and its `max_connections` slot, so it cannot pile up.
//!
//! Draining after the answer was not enough on its own: curl, seeing an error status while
//! it still uploads, stops and ends its stream at once (an empty `DATA` frame with
//! `END_STREAM`), short of the `content-length` it declared. h2 must treat that request as
//! malformed (RFC 9113 §8.1.1) and resets the stream with `PROTOCOL_ERROR`, dropping
//! whatever of the answer it had not yet written: when the answer's `HEADERS` had left but
//! not its `DATA`, curl got a status and then `(92) ... PROTOCOL_ERROR` (1 run in 30 under
//! CI load). So veil's own answers also wait, briefly, for the body to be let go of:
//! [`Drain::settled`] gives a [`Settled`] that resolves when the body is dropped ended, or when
//! its drain stops (the app ended its upload, reset it, or a bound or shutdown stopped the
//! drain); the answering code awaits it, at most [`ANSWER_WAIT_MAX`], after it let the body go
//! (the body may also be held a while by hyper's task that streamed it to an h2 upstream). An
//! app that can send its whole body without waiting for veil (it fits the stream window,
//! which [`DRAIN_MAX_BYTES`] matches) has then sent it before it sees the answer. One whose
//! body is larger gets the answer when the drain stops at [`DRAIN_MAX_BYTES`], followed by
//! the reset; one that waits for the answer before it sends gets it after
//! [`ANSWER_WAIT_MAX`].
//!
//! Rejected: draining before answering with no bound (the answer would wait on the app's
//! upload as long as it takes, and a body over the bound would fail the same way); keeping
//! the body unread until the answer is sent (that is what happened: h2 resets as soon as
//! the answer ends).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Version;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

/// At most this many bytes of an abandoned h2 request body are read and discarded: veil's
/// h2 stream window (hyper's default, 1 MiB), so whatever an app may send without waiting
/// for veil is accepted, and an app that ignores the answer gets the reset soon after.
pub const DRAIN_MAX_BYTES: u64 = 1 << 20;

/// An abandoned h2 request body is read for at most this long. Between frames the body's
/// own stall clock (`header_read_timeout`) still applies.
pub const DRAIN_MAX_TIME: Duration = Duration::from_secs(5);

/// An early answer over h2 waits at most this long for the drain of the body it left unread
/// ([`Settled::wait`]): ample for an app next to veil to finish an upload of up to
/// [`DRAIN_MAX_BYTES`] on a loaded machine, short enough that an app that waits for the
/// answer before it sends (none of the providers' SDKs does) is not kept long.
pub const ANSWER_WAIT_MAX: Duration = Duration::from_secs(1);

/// Whether and how a dropped body is drained: only h2 bodies are, until `cancel` (shutdown).
#[derive(Debug, Clone)]
pub struct DrainPolicy {
    max_bytes: u64,
    max_time: Duration,
    cancel: CancellationToken,
}

impl DrainPolicy {
    /// The policy for a request of `version`: `None` (not drained) unless HTTP/2; draining
    /// stops when `cancel` fires.
    pub fn for_version(version: Version, cancel: &CancellationToken) -> Option<Self> {
        (version == Version::HTTP_2).then(|| DrainPolicy {
            max_bytes: DRAIN_MAX_BYTES,
            max_time: DRAIN_MAX_TIME,
            cancel: cancel.clone(),
        })
    }
}

/// A request body that, dropped before its end, is drained in the background under its
/// [`DrainPolicy`] (see the module docs). Frames and errors pass through untouched.
///
/// The bounds sit on the type because its `Drop` spawns the drain.
#[derive(Debug)]
pub struct Drain<B>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
{
    inner: Option<B>,
    policy: Option<DrainPolicy>,
    failed: bool,
    /// Dropped when the body is let go of: at once, or when its drain stops.
    settled: Option<tokio::sync::oneshot::Sender<()>>,
}

impl<B> Drain<B>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
{
    /// Wraps `inner`; with `policy` `None` a drop lets it go at once, as if unwrapped.
    pub fn new(inner: B, policy: Option<DrainPolicy>) -> Self {
        Drain {
            inner: Some(inner),
            policy,
            failed: false,
            settled: None,
        }
    }

    /// A handle that resolves when this body has been let go of: at once when it is dropped
    /// ended, failed, unread over HTTP/1.1 or outside a runtime; when its drain stops
    /// otherwise. One handle per body: a second call replaces the first, which then resolves.
    /// A body that is never drained (no policy: HTTP/1.1) gets a handle that is resolved
    /// already, with no channel: every forwarded request asks for one.
    pub fn settled(&mut self) -> Settled {
        if self.policy.is_none() {
            return Settled(None);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.settled = Some(tx);
        Settled(Some(rx))
    }
}

/// Resolves when a [`Drain`]'s body has been let go of (see [`Drain::settled`]).
#[derive(Debug)]
pub struct Settled(Option<tokio::sync::oneshot::Receiver<()>>);

impl Settled {
    /// Waits until the body has been let go of, at most `max`; true if it was. Call it after
    /// the body was dropped: before, it waits out `max`.
    pub async fn wait(self, max: Duration) -> bool {
        let Some(rx) = self.0 else {
            return true;
        };
        // Nothing is ever sent: the sender's drop is the signal.
        tokio::time::timeout(max, rx).await.is_ok()
    }
}

impl<B> Body for Drain<B>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = std::task::ready!(Pin::new(inner).poll_frame(cx));
        if matches!(frame, Some(Err(_))) {
            this.failed = true;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

impl<B> Drop for Drain<B>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
{
    fn drop(&mut self) {
        let (Some(inner), Some(policy)) = (self.inner.take(), self.policy.take()) else {
            return;
        };
        if self.failed || inner.is_end_stream() {
            return;
        }
        // Outside a runtime (a test's last drop, a runtime shutting down) there is nobody to
        // read it: let it go.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let settled = self.settled.take();
            rt.spawn(async move {
                drain(inner, policy).await;
                drop(settled);
            });
        }
    }
}

/// How a drain stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopped {
    /// The app ended its body: the stream closes without a reset.
    Ended,
    /// The body failed: the app reset it, or it stalled (`header_read_timeout`).
    Failed,
    /// [`DRAIN_MAX_BYTES`] read.
    MaxBytes,
    /// [`DRAIN_MAX_TIME`] passed.
    MaxTime,
    /// Shutdown began.
    Shutdown,
}

/// Reads and discards `body` until it ends or fails, or the policy's bounds or shutdown stop
/// it; returns the bytes read and why it stopped.
async fn drain<B>(mut body: B, policy: DrainPolicy) -> (u64, Stopped)
where
    B: Body<Data = Bytes> + Unpin,
{
    let mut read = 0u64;
    let stopped = {
        let reading = read_until(&mut body, &mut read, policy.max_bytes);
        tokio::select! {
            stopped = reading => stopped,
            () = tokio::time::sleep(policy.max_time) => Stopped::MaxTime,
            () = policy.cancel.cancelled() => Stopped::Shutdown,
        }
    };
    tracing::debug!(bytes = read, stopped = ?stopped, "drained an unread h2 request body");
    (read, stopped)
}

async fn read_until<B>(body: &mut B, read: &mut u64, max_bytes: u64) -> Stopped
where
    B: Body<Data = Bytes> + Unpin,
{
    loop {
        match body.frame().await {
            None => return Stopped::Ended,
            Some(Err(_)) => return Stopped::Failed,
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    *read += data.len() as u64;
                    if *read >= max_bytes {
                        return Stopped::MaxBytes;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "drain_tests.rs"]
mod tests;
