//! # `veil run`: wires config, keys, CA, proxy, pipeline, exporter and sealed store.
//!
//! One why per stage:
//! - keys first: the fingerprint key must exist before the first credential is seen;
//! - the rules next: a bad rules file stops startup with file:line:col, before any traffic;
//! - the CA: intercepting without it is impossible, so a broken CA stops startup too;
//! - the exporter and the sealed store open their spools and segments before the listener
//!   binds, so records of the first request have somewhere to go; the exporter runs on its own
//!   runtime so its batch encoding never stalls forwarding;
//! - the recording queue is bounded (`queue_capacity`): the proxy `try_send`s into it and a
//!   slow pipeline costs counted drops (or 503s in audit-required mode), never latency;
//! - on SIGINT/SIGTERM the proxy drains in-flight exchanges (bounded), then the pipeline
//!   empties the queue, then the exporter flushes (or spools) what it holds, then the store
//!   closes after its last group commit.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Audit, Config};
use crate::exchange::{Exchange, Pricing};
use crate::export::{Exporter, ExporterHandle};
use crate::keys::{Keyring, Purpose};
use crate::pipeline::{Pipeline, PipelineStats, RulesHandle};
use crate::proxy::capture::Fingerprinter;
use crate::proxy::mitm::CertificateAuthority;
use crate::proxy::{Proxy, ProxyStats};
use crate::seal::{AuditSink, FanoutAuditSink, JsonlAuditSink, SealOptions, SealStore};

/// Name of the trust bundle (system roots + veil's CA) written next to the CA.
pub const CA_BUNDLE_FILE: &str = "ca-bundle.pem";

/// System CA bundles, in the order they are tried.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// How often the retention policy is applied while running.
const RETENTION_INTERVAL: Duration = Duration::from_secs(300);

/// A running veil: where it listens and how to observe it.
#[derive(Debug)]
pub struct Running {
    /// The proxy's bound address.
    pub addr: SocketAddr,
    /// The admin API's bound address, when enabled.
    pub admin_addr: Option<SocketAddr>,
    /// Proxy counters.
    pub stats: Arc<ProxyStats>,
    /// Pipeline counters.
    pub pipeline: Arc<PipelineStats>,
    /// The rules in force (reloaded on SIGHUP).
    pub rules: Arc<RulesHandle>,
}

/// Everything `veil run` needs before it binds: keys, rules, pricing, CA.
#[derive(Debug)]
pub struct Prepared {
    /// The resolved config.
    pub config: Config,
    /// Master keys.
    pub keyring: Keyring,
    /// The compiled rules.
    pub rules: Arc<RulesHandle>,
    /// Prices.
    pub pricing: Arc<Pricing>,
    /// veil's CA.
    pub ca: Arc<CertificateAuthority>,
}

impl Prepared {
    /// Creates (first run) or loads keys and CA, compiles the rules, loads prices, and writes
    /// the trust bundle.
    pub fn load(config: Config) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&config.keys)
            .map_err(|e| anyhow::anyhow!("keys dir {}: {e}", config.keys.display()))?;
        let keyring = Keyring::load_or_create(&config.keys)?;
        let rules = if config.rules_is_default && !config.rules.exists() {
            tracing::info!(
                "{} not found: using the built-in default rules (pseudonymize users, scrub all content)",
                config.rules.display()
            );
            RulesHandle::builtin_default(config.rules.clone(), &keyring)?
        } else {
            RulesHandle::load(config.rules.clone(), &keyring)?
        };
        let rules = Arc::new(rules);
        let pricing = match &config.pricing {
            Some(path) => Pricing::load(path)?,
            None => Pricing::builtin(),
        };
        let ca = Arc::new(CertificateAuthority::load_or_create(
            &config.keys,
            crate::proxy::mitm::CaScope::of(&config),
        )?);
        write_trust_bundle(&config.keys, ca.cert_pem())?;
        Ok(Prepared {
            config,
            keyring,
            rules,
            pricing: Arc::new(pricing),
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

/// A runtime that may be dropped from async code (startup errors, shutdown): dropping a tokio
/// runtime in place there panics, so it is shut down in the background instead.
struct BackgroundRuntime(Option<tokio::runtime::Runtime>);

impl BackgroundRuntime {
    fn handle(&self) -> &tokio::runtime::Handle {
        self.0
            .as_ref()
            .expect("invariant: present until dropped")
            .handle()
    }
}

impl Drop for BackgroundRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// Audit events of the sealed store, forwarded as OTLP log records.
#[derive(Debug)]
struct OtlpAudit(ExporterHandle);

impl AuditSink for OtlpAudit {
    /// Best-effort: never fails the action (`audit.jsonl`, before it in the fanout, is the
    /// durable record).
    fn emit(&self, event: &crate::seal::AuditEvent) -> Result<(), crate::seal::AuditError> {
        let event = crate::export::AuditEvent {
            kind: event.kind.as_str().to_string(),
            request_id: event.request_id.to_string(),
            time: event.time,
            actor: event.actor.clone(),
            reason: Some(event.reason.clone()),
            user_pseudonym: event.user.clone(),
        };
        if self.0.try_send_audit(event).is_err() {
            tracing::warn!("exporter queue full: audit event kept in audit.jsonl only");
        }
        Ok(())
    }
}

/// Binds the proxy (and the admin API), starts every stage, and returns at once. Everything
/// stops when `shutdown` resolves; `done` resolves when everything has drained.
pub async fn start(
    prepared: Prepared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(Running, tokio::task::JoinHandle<()>)> {
    let Prepared {
        config,
        keyring,
        rules,
        pricing,
        ca,
    } = prepared;
    if !config.listen.ip().is_loopback() {
        tracing::warn!(listen = %config.listen, "the proxy listens beyond loopback: anyone who can reach it can use it");
    }
    if let Some(a) = config.admin_listen.filter(|a| !a.ip().is_loopback()) {
        tracing::warn!(admin_listen = %a, "the admin API is plain HTTP beyond loopback: the bearer token and unsealed exchanges cross the network in clear");
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr()?;
    let admin_listener = match config.admin_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on admin_listen {a}: {e}"))?,
        ),
        None => None,
    };
    let admin_addr = admin_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;

    // Recording (pipeline, exporter, seal writer) runs below forwarding when traffic comes
    // first (best-effort): on busy cores the scheduler serves forwarding, recording catches
    // up later or, past its queue, drops (counted). When every exchange must be recorded, it
    // competes as an equal and back-pressure slows traffic instead.
    let nice = match config.audit {
        Audit::BestEffort => crate::os::RECORDING_NICE,
        Audit::Required => 0,
    };
    // The exporter gets its own runtime and worker thread: it builds and encodes whole batches
    // (milliseconds of CPU at a time), which on the forwarding runtime would stall the tasks
    // that move traffic and show up as p99 latency.
    let export_rt = BackgroundRuntime(Some(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("veil-export")
            .on_thread_start(move || crate::os::lower_thread_priority(nice))
            .enable_all()
            .build()?,
    ));
    let exporter = {
        let _in_export_runtime = export_rt.handle().enter();
        Exporter::from_config(&config, &|k| std::env::var(k).ok())?
    };
    let audit: Arc<dyn AuditSink> = Arc::new(FanoutAuditSink(vec![
        Arc::new(JsonlAuditSink::new(config.data.join("audit.jsonl"))),
        Arc::new(OtlpAudit(exporter.handle())),
    ]));
    let store = SealStore::open(
        &config.data,
        Keyring::load(&config.keys)?,
        SealOptions {
            keys_dir: Some(config.keys.clone()),
            audit: Some(audit),
            segment_max: None,
            writer_nice: nice,
        },
    )
    .map_err(|e| {
        if e.is_locked() {
            anyhow::anyhow!(
                "{e}: is another veil running with --data {}?",
                config.data.display()
            )
        } else {
            anyhow::anyhow!("sealed store: {e}")
        }
    })?;

    let fingerprinter = Fingerprinter::new(keyring.identity().derive(Purpose::Fingerprint));
    let (tx, rx) = mpsc::channel::<Exchange>(config.queue_capacity);
    let pipeline_stats = Arc::new(PipelineStats::default());
    let pipeline = Pipeline {
        rules: rules.clone(),
        pricing,
        parse: Default::default(),
        exporter: Some(exporter.handle()),
        store: Some(store.clone()),
        stats: pipeline_stats.clone(),
        nice,
    };
    let workers = pipeline.spawn(rx, config.pipeline_workers);

    let cancel = CancellationToken::new();
    let retention = config.retention;
    let drain = config.drain_timeout;
    let keys_dir = config.keys.clone();
    let proxy = Proxy::try_new(config, ca, fingerprinter, tx)?;
    let stats = proxy.stats();

    if let Some(listener) = admin_listener {
        let token = crate::admin::AdminToken::load_or_create(&keys_dir)?;
        let store = store.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            crate::admin::serve(listener, store, token, cancel.cancelled_owned()).await;
        });
    }
    if let Some(older_than) = retention {
        tokio::spawn(store.clone().run_retention(
            older_than,
            RETENTION_INTERVAL,
            cancel.clone().cancelled_owned(),
        ));
    }
    // Installed now, before the listener is announced: SIGHUP's default action is to exit.
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hup) => {
            tokio::spawn(reload_on_sighup(
                hup,
                rules.clone(),
                keys_dir,
                cancel.clone(),
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot install the SIGHUP handler: rules reload disabled")
        }
    }

    let done = tokio::spawn(async move {
        let stop = cancel.clone();
        proxy
            .serve(listener, async move {
                shutdown.await;
                stop.cancel();
            })
            .await;
        cancel.cancel();
        // The proxy held every sender: the workers now drain the queue and exit.
        let joined = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        });
        if tokio::time::timeout(drain, joined).await.is_err() {
            tracing::warn!("pipeline did not drain within {}s", drain.as_secs());
        }
        let report = exporter.shutdown(drain).await;
        tracing::info!(?report, "exporter stopped");
        drop(export_rt);
        drop(store);
    });
    Ok((
        Running {
            addr,
            admin_addr,
            stats,
            pipeline: pipeline_stats,
            rules,
        },
        done,
    ))
}

/// Reloads the rules on every SIGHUP; a file that fails to compile is logged and the old rules
/// stay in force.
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    rules: Arc<RulesHandle>,
    keys: PathBuf,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        let rules = rules.clone();
        let keys = keys.clone();
        let result = tokio::task::spawn_blocking(move || {
            let keyring = Keyring::load(&keys).map_err(|e| e.to_string())?;
            rules.reload(&keyring).map_err(|e| e.to_string())
        })
        .await;
        match result {
            Ok(Ok(digest)) => tracing::info!(rules.digest = %digest, "rules reloaded"),
            Ok(Err(e)) => {
                tracing::error!("rules reload rejected, previous rules stay in force: {e}")
            }
            Err(e) => tracing::error!("rules reload failed: {e}"),
        }
    }
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, not when
/// the future is first polled, so a signal that arrives right after startup is not fatal.
/// Must be called inside the runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("invariant: SIGTERM handler installs");
    let mut int = signal(SignalKind::interrupt()).expect("invariant: SIGINT handler installs");
    async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}
