//! # Tunnel: CONNECT to a host veil does not intercept.
//!
//! [`route`](super::route) said [`Route::Tunnel`](super::route::Route::Tunnel): veil connects
//! upstream first (through the checked [`Resolver`](super::destinations::Resolver), so an
//! unreachable or refused target is a 502/403 and not a dead tunnel), answers 200, then copies
//! bytes both ways ([`copy_tunnel`]) until either side closes or nothing crosses for
//! `tunnel_idle_timeout`. It logs metadata only (host, byte counts, duration): it never reads,
//! parses, records or logs the bytes it carries.

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use super::answer::empty_ok;
use super::conn::{Probe, Watched};
use super::error::ProxyError;
use super::listener::log_conn_error;
use super::{ProxyBody, Shared, Slot};

impl Shared {
    /// Blind tunnel: connect first, so an unreachable target is a 502, not a dead tunnel.
    pub(super) async fn tunnel(
        self: &Arc<Self>,
        req: Request<Incoming>,
        host: String,
        port: u16,
        slot: Slot,
    ) -> Response<ProxyBody> {
        let upstream = match self
            .settings
            .resolver
            .connect(&host, port, self.settings.connect_timeout)
            .await
        {
            Ok(s) => s,
            Err(e) => return self.answer(&ProxyError::upstream(&e), None),
        };
        let counters = self.counters.clone();
        let idle = self.settings.tunnel_idle_timeout;
        self.spawn(async move {
            let _slot = slot;
            let upgraded = match hyper::upgrade::on(req).await {
                Ok(u) => u,
                Err(e) => return log_conn_error("CONNECT upgrade", &e),
            };
            counters.proxy.tunnels.inc();
            let started = Instant::now();
            let duration_ms = || started.elapsed().as_millis() as u64;
            // Metadata only: which host, how many bytes, how long. Never content.
            match copy_tunnel(TokioIo::new(upgraded), upstream, idle).await {
                TunnelEnd::Closed { up, down } => tracing::debug!(host, port, bytes_up = up, bytes_down = down, duration_ms = duration_ms(), "tunnel closed"),
                TunnelEnd::Failed(e) => tracing::debug!(host, port, error = %e, duration_ms = duration_ms(), "tunnel ended with error"),
                TunnelEnd::Idle => {
                    counters.proxy.timed_out.inc();
                    tracing::debug!(host, port, duration_ms = duration_ms(), "tunnel closed: nothing crossed it for tunnel_idle_timeout");
                }
            }
        });
        empty_ok()
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
    use tokio::time::Instant;

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
