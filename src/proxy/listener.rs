//! # Listener: the accept loop and shutdown of the proxy port.
//!
//! First stage of the flow: takes a connection slot (a `max_connections` permit) before
//! accepting, so at the limit connections wait in the kernel's backlog; hands each accepted
//! socket to the connection task (which asks [`route`](super::route) what each request is);
//! on shutdown stops accepting, drains in-flight exchanges for `drain_timeout`, then cuts what
//! is left. Accept failures are retried after [`ACCEPT_RETRY`](super::ACCEPT_RETRY) and
//! logged at most every 10 s ([`AcceptFailures`], shared with the admin listener). It never
//! reads a request and never talks to an upstream.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{ACCEPT_LOG_EVERY, ACCEPT_RETRY, Proxy};

impl Proxy {
    /// Serves `listener` until `shutdown` resolves, then stops accepting, lets in-flight
    /// exchanges finish (bounded by `drain_timeout`) and returns.
    pub async fn serve(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let shared = self.shared;
        if let Ok(bound) = listener.local_addr() {
            shared.settings.resolver.destinations().set_bound(bound);
        }
        let limit = Arc::new(Semaphore::new(shared.settings.max_connections));
        let mut shutdown = pin!(shutdown);
        let mut failures = AcceptFailures::default();
        loop {
            // Take a permit before accepting: at the limit, connections wait in the kernel's
            // backlog instead of being accepted and starved.
            let permit = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                p = limit.clone().acquire_owned() => p.expect("invariant: the semaphore is never closed"),
            };
            let accepted = tokio::select! {
                biased;
                _ = &mut shutdown => break,
                r = listener.accept() => r,
            };
            let (stream, addr) = match accepted {
                Ok(ok) => ok,
                Err(e) => {
                    // Out of file descriptors and the like: neither spin nor exit; retry soon.
                    failures.note("proxy", &e);
                    drop(permit);
                    tokio::select! {
                        biased;
                        _ = &mut shutdown => break,
                        _ = tokio::time::sleep(ACCEPT_RETRY) => continue,
                    }
                }
            };
            let _ = stream.set_nodelay(true);
            shared.stats.connections.fetch_add(1, Ordering::Relaxed);
            let conn_shared = shared.clone();
            shared.spawn(async move {
                conn_shared
                    .serve_client(stream, addr, Arc::new(permit))
                    .await;
            });
        }
        drop(listener);
        tracing::info!("shutting down: no longer accepting, draining in-flight exchanges");
        shared.cancel.cancel();
        shared.tracker.close();
        let drain = shared.settings.drain_timeout;
        if tokio::time::timeout(drain, shared.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                remaining = shared.tracker.len(),
                "drain timeout ({}s) reached; cutting remaining connections",
                drain.as_secs()
            );
            // Dropping the connections ends their exchanges (recorded as client_aborted) and
            // lets go of the recording queue, so the pipeline can drain and stop.
            shared.kill.cancel();
            let _ = tokio::time::timeout(KILL_GRACE, shared.tracker.wait()).await;
        }
    }
}

/// Rate-limited logging of accept failures: the first at once, then one line with a count at
/// most every 10 s.
#[derive(Debug, Default)]
pub struct AcceptFailures {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl AcceptFailures {
    /// Notes one failure of the `what` listener.
    pub fn note(&mut self, what: &str, err: &std::io::Error) {
        let now = Instant::now();
        if self
            .last_logged
            .is_some_and(|t| now.duration_since(t) < ACCEPT_LOG_EVERY)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            listener = what,
            error = %err,
            retry_ms = ACCEPT_RETRY.as_millis() as u64,
            failures_since_last_log = self.suppressed,
            "accept failed (out of file descriptors? see ulimit -n and max_connections)"
        );
        self.last_logged = Some(now);
        self.suppressed = 0;
    }
}

/// How long cut connections get to let go of their tasks after the drain time is up.
const KILL_GRACE: Duration = Duration::from_millis(200);
