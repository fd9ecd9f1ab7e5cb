//! # `veil run`: wires config, keys, CA, proxy and the recording consumer together.
//!
//! One why per stage:
//! - keys first: the fingerprint key must exist before the first credential is seen;
//! - the CA next: intercepting without it is impossible, so a broken CA stops startup;
//! - the recording queue is bounded (`queue_capacity`): the proxy `try_send`s into it and a
//!   slow consumer costs drops (counted), never latency;
//! - the proxy serves until SIGINT/SIGTERM, then drains in-flight exchanges (bounded);
//! - the consumer is drained last, after every sender is gone.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::exchange::Exchange;
use crate::keys::{Keyring, Purpose};
use crate::proxy::capture::Fingerprinter;
use crate::proxy::mitm::CertificateAuthority;
use crate::proxy::{Proxy, ProxyStats};

/// Name of the trust bundle (system roots + veil's CA) written next to the CA.
pub const CA_BUNDLE_FILE: &str = "ca-bundle.pem";

/// System CA bundles, in the order they are tried.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Counts of what the recording consumer saw.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Exchanges received from the queue.
    pub exchanges: AtomicU64,
}

/// A running veil: where it listens and how to observe it.
#[derive(Debug)]
pub struct Running {
    /// The proxy's bound address.
    pub addr: SocketAddr,
    /// Proxy counters.
    pub stats: Arc<ProxyStats>,
    /// Recording consumer counters.
    pub consumer: Arc<ConsumerStats>,
}

/// Everything `veil run` needs before it binds: keys, CA, fingerprinter.
#[derive(Debug)]
pub struct Prepared {
    /// The resolved config.
    pub config: Config,
    /// Master keys.
    pub keyring: Keyring,
    /// veil's CA.
    pub ca: Arc<CertificateAuthority>,
}

impl Prepared {
    /// Creates (first run) or loads keys and CA, and writes the trust bundle.
    pub fn load(config: Config) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.keys)
            .map_err(|e| anyhow::anyhow!("keys dir {}: {e}", config.keys.display()))?;
        let keyring = Keyring::load_or_create(&config.keys)?;
        let ca = Arc::new(CertificateAuthority::load_or_create(&config.keys)?);
        write_trust_bundle(&config.keys, ca.cert_pem())?;
        Ok(Prepared {
            config,
            keyring,
            ca,
        })
    }
}

/// Writes `<keys>/ca-bundle.pem`: the system's trusted roots followed by veil's CA, for
/// `SSL_CERT_FILE`/`REQUESTS_CA_BUNDLE`, which replace (not extend) a client's trust store.
pub fn write_trust_bundle(keys: &Path, ca_pem: &str) -> anyhow::Result<PathBuf> {
    let mut bundle = String::new();
    if let Some(system) = SYSTEM_BUNDLES
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
    {
        bundle.push_str(&system);
        if !bundle.ends_with('\n') {
            bundle.push('\n');
        }
    } else {
        tracing::warn!("no system CA bundle found; ca-bundle.pem trusts only veil's CA");
    }
    bundle.push_str(ca_pem);
    let path = keys.join(CA_BUNDLE_FILE);
    std::fs::write(&path, bundle).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    Ok(path)
}

/// Binds the proxy, spawns it and the recording consumer, and returns at once. The proxy
/// stops when `shutdown` resolves; `done` resolves when everything has drained.
pub async fn start(
    prepared: Prepared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(Running, tokio::task::JoinHandle<()>)> {
    let Prepared {
        config,
        keyring,
        ca,
    } = prepared;
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let fingerprinter = Fingerprinter::new(keyring.identity().derive(Purpose::Fingerprint));
    let (tx, rx) = mpsc::channel::<Exchange>(config.queue_capacity);
    let proxy = Proxy::try_new(config, ca, fingerprinter, tx)?;
    let stats = proxy.stats();
    let consumer = Arc::new(ConsumerStats::default());
    let consumer_task = tokio::spawn(consume(rx, consumer.clone()));
    let done = tokio::spawn(async move {
        proxy.serve(listener, shutdown).await;
        // Every sender lives in the proxy; once it is gone the consumer sees the end of the
        // queue. Connections cut at the drain timeout may still hold one briefly, so bound it.
        if tokio::time::timeout(Duration::from_secs(5), consumer_task)
            .await
            .is_err()
        {
            tracing::warn!("recording consumer did not drain within 5s");
        }
    });
    Ok((
        Running {
            addr,
            stats,
            consumer,
        },
        done,
    ))
}

/// The recording consumer. Until the pipeline lands it only counts: it must not write content.
async fn consume(mut rx: mpsc::Receiver<Exchange>, stats: Arc<ConsumerStats>) {
    while let Some(exchange) = rx.recv().await {
        stats.exchanges.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(
            exchange.id = %exchange.id,
            host = %exchange.upstream.host,
            status = exchange.status,
            outcome = exchange.outcome.as_str(),
            "exchange recorded"
        );
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("invariant: SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("invariant: SIGINT handler installs");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
