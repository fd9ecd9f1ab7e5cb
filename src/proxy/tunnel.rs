//! # Tunnel: CONNECT to a host veil does not intercept.
//!
//! [`route`](super::route) said [`Route::Tunnel`](super::route::Route::Tunnel): veil connects
//! upstream first (through the checked [`Resolver`](super::forward::Resolver), so an
//! unreachable or refused target is a 502/403 and not a dead tunnel), answers 200, then copies
//! bytes both ways ([`conn::copy_tunnel`]) until either side closes or nothing crosses for
//! `tunnel_idle_timeout`. It logs metadata only (host, byte counts, duration): it never reads,
//! parses, records or logs the bytes it carries.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::error::ProxyError;
use super::{ProxyBody, Shared, Slot, conn, empty_ok, log_conn_error};

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
        let stats = self.stats.clone();
        let idle = self.settings.tunnel_idle_timeout;
        self.spawn(async move {
            let _slot = slot;
            let upgraded = match hyper::upgrade::on(req).await {
                Ok(u) => u,
                Err(e) => return log_conn_error("CONNECT upgrade", &e),
            };
            stats.tunnels.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            let duration_ms = || started.elapsed().as_millis() as u64;
            // Metadata only: which host, how many bytes, how long. Never content.
            match conn::copy_tunnel(TokioIo::new(upgraded), upstream, idle).await {
                conn::TunnelEnd::Closed { up, down } => tracing::debug!(host, port, bytes_up = up, bytes_down = down, duration_ms = duration_ms(), "tunnel closed"),
                conn::TunnelEnd::Failed(e) => tracing::debug!(host, port, error = %e, duration_ms = duration_ms(), "tunnel ended with error"),
                conn::TunnelEnd::Idle => {
                    stats.timed_out.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(host, port, duration_ms = duration_ms(), "tunnel closed: nothing crossed it for tunnel_idle_timeout");
                }
            }
        });
        empty_ok()
    }
}
