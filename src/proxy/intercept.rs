//! # Intercept: CONNECT to an intercepted host, TLS terminated with a minted leaf.
//!
//! [`route`](super::route) said [`Route::Intercept`](super::route::Route::Intercept) and the
//! listener answered 200. This stage reads the ClientHello before any certificate is chosen
//! (the SNI must be the CONNECT host, else the connection is closed, counted as refused, and
//! no leaf is minted), finishes TLS with the leaf from [`leaf`], and serves
//! HTTP/1.1 or h2 (by ALPN) inside, every request going to the forward stage as a recorded
//! [`exchange::Route::Intercept`]. It never talks to the upstream itself and never reads
//! bodies.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::Request;
use http::uri::PathAndQuery;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio_rustls::LazyConfigAcceptor;

use crate::exchange;

use super::conn::{Activity, Tracked, Watched};
use super::leaf;
use super::listener::{http_server, http1_server};
use super::route::Target;
use super::{Shared, Slot};

/// How reading the ClientHello and finishing the TLS handshake with an app can fail.
enum Handshake {
    Io(std::io::Error),
    /// The ClientHello named another host than the CONNECT target.
    WrongSni(String),
    /// No leaf could be minted for the CONNECT host (logged by the resolver).
    NoLeaf,
}

impl Shared {
    /// Terminates the app's TLS with a minted leaf and serves HTTP/1.1 or h2 inside.
    ///
    /// The ClientHello is read before any certificate is chosen: an SNI other than the CONNECT
    /// host closes the connection before a leaf is minted (or else an app could get a leaf for
    /// any name through an allowed tunnel, and fill the leaf cache with names); no SNI (an IP
    /// host, or an old client) gets the leaf for the CONNECT host.
    pub(super) async fn intercept(
        self: Arc<Self>,
        upgraded: hyper::upgrade::Upgraded,
        host: String,
        port: u16,
        addr: SocketAddr,
        slot: Slot,
    ) {
        let handshake = async {
            let start = LazyConfigAcceptor::new(
                rustls::server::Acceptor::default(),
                TokioIo::new(upgraded),
            )
            .await
            .map_err(Handshake::Io)?;
            let config = match start.client_hello().server_name() {
                Some(sni) if sni.eq_ignore_ascii_case(&host) => self.tls.clone(),
                Some(sni) => return Err(Handshake::WrongSni(sni.to_string())),
                None => {
                    let leaf = self.leaves.leaf(&host).ok_or(Handshake::NoLeaf)?;
                    leaf::server_config_for(&self.tls, leaf)
                }
            };
            // Boxed: the stream (rustls' connection inline, 1,232 bytes) is moved into the
            // HTTP connection below, but a moved-from local of an async fn keeps its room in
            // the task for as long as its scope lasts, here the connection's whole life: this
            // function's future was 2,168 bytes with the stream inline, 936 with it boxed.
            start
                .into_stream(config)
                .await
                .map(Box::new)
                .map_err(Handshake::Io)
        };
        // Boxed, as the connection below: the handshake's state (rustls' connection and the
        // acceptor's) would otherwise be part of the task for the connection's whole life.
        let handshake = Box::pin(handshake);
        let tls = match tokio::time::timeout(self.settings.handshake_timeout, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(Handshake::WrongSni(sni))) => {
                self.counters.proxy.refused.inc();
                tracing::warn!(
                    host,
                    sni,
                    "SNI does not match the CONNECT host; closing before any certificate is minted"
                );
                return;
            }
            Ok(Err(Handshake::NoLeaf)) => return, // mint() logged why
            Ok(Err(Handshake::Io(e))) => {
                tracing::warn!(host, error = %e, "TLS handshake with app failed (does it trust veil's CA? see `veil ca path`)");
                return;
            }
            Err(_) => {
                self.counters.proxy.timed_out.inc();
                tracing::debug!(host, "TLS handshake with app timed out (handshake_timeout)");
                return;
            }
        };
        // The CONNECT host was a parsed URI authority, so it makes one again.
        let target = match Target::new(
            "https",
            host,
            port,
            String::new(),
            exchange::Route::Intercept,
            true,
        ) {
            Ok(target) => Arc::new(target),
            Err(e) => {
                tracing::warn!(error = %e, "intercepted host makes no upstream URL; closing");
                return;
            }
        };
        let shared = self.clone();
        // The session's clock starts now: its first request head is due header_read_timeout
        // after the handshake.
        let activity = Activity::new();
        let watched = activity.clone();
        let svc = service_fn(move |req: Request<Incoming>| {
            let shared = shared.clone();
            let target = target.clone();
            let slot = slot.clone();
            let in_flight = watched.begin(req.version());
            // The whole request's future is boxed, allocated per request: hyper allocates
            // room for the service's future when the connection starts and keeps it for the
            // connection's life, so an inline future (`forward` is ~1.6 KB of state, the
            // request itself ~250 bytes) cost every idle keep-alive connection that much.
            // Boxing copies the future into its box, so its rare branches (veil's own API,
            // WebSocket sessions, early answers) are boxed in turn and do not size it.
            Box::pin(async move {
                // veil's own API inside the TLS session too: an app that sends everything to
                // the provider's host through HTTPS_PROXY reaches it without a second client.
                if super::reserved::is_reserved_in_session(&req) {
                    // Boxed: its state would otherwise be part of every request's.
                    let resp = Box::pin(shared.reserved(req)).await;
                    return Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, in_flight)));
                }
                // A clone of the parsed part shares its bytes: no copy per request.
                let pq = req
                    .uri()
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/"));
                let resp = shared.forward(req, &target, pq, addr, &slot).await;
                Ok::<_, Infallible>(resp.map(|b| Tracked::new(b, in_flight)))
            })
        });
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(Watched::new(tls, activity.clone()));
        // With upgrades: a WebSocket handshake's 101 hands the stream to its relay.
        if h2 {
            let builder = http_server();
            let conn = Box::pin(builder.serve_connection_with_upgrades(io, svc));
            self.finish("intercepted connection", conn, &activity, |c| {
                c.graceful_shutdown()
            })
            .await;
        } else {
            // ALPN chose HTTP/1.1, or the client offered no ALPN (h2 over TLS requires it,
            // RFC 9113 section 3.2): HTTP/1.1's own server, without the auto builder's version
            // sniffing and the rewind buffer it keeps under the connection for its whole life.
            let conn = Box::pin(http1_server().serve_connection(io, svc).with_upgrades());
            self.finish("intercepted connection", conn, &activity, |c| {
                c.graceful_shutdown()
            })
            .await;
        }
    }
}

#[cfg(test)]
#[path = "intercept_tests.rs"]
mod tests;
