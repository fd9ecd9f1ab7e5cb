//! # `veil run`: wires config, keys, CA, proxy, pipeline, exporter and sealed store.
//!
//! One why per stage:
//! - keys first: the fingerprint key must exist before the first credential is seen;
//! - the rules next: a bad rules file stops startup with file:line:col, before any traffic;
//! - the CA: intercepting without it is impossible, so a broken CA stops startup too;
//! - the exporter and the sealed store open their spools and segments before the listener
//!   binds, so records of the first request have somewhere to go; the exporter runs on its own
//!   runtime so its batch encoding never stalls forwarding;
//! - the recording queue is bounded (`queue_capacity`): a request takes its slot when it
//!   arrives, without waiting under best-effort, so a slow pipeline costs counted drops (or
//!   503s in audit-required mode), never latency;
//! - the control socket (`<data>/veil.sock`, the admin API for veil's own uid) binds once the
//!   store is open: the store's lock already proves no other veil uses this data dir, and the
//!   commands that find veil through it need the store behind it;
//! - on SIGINT/SIGTERM the proxy drains in-flight exchanges, then the pipeline empties the
//!   queue, then the exporter flushes (or spools) what it holds, then the store closes after
//!   its last group commit: all within one `drain_timeout` (connections get four fifths of
//!   it at most, recording the rest), so the exit never outlasts it by more than a fsync.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Audit, Config};
use crate::counters::Counters;
use crate::exchange::Pricing;
use crate::exchange::pricing::PricingError;
use crate::export::{Exporter, ExporterHandle, StartError};
use crate::health::{Health, Part};
use crate::journal::{CrashReport, Journal};
use crate::keys::{KeyError, Keyring, Purpose};
use crate::ledger::LedgerError;
use crate::pipeline::Pipeline;
use crate::proxy::{
    BuildError, CaError, CertificateAuthority, Fingerprinter, Proxy, ProxySettings,
};
use crate::redact::{RulesError, RulesHandle};
use crate::seal::{AuditSink, FanoutAuditSink, JsonlAuditSink, SealError, SealOptions, SealStore};

/// Name of the trust bundle (system roots + veil's CA) written next to the CA.
pub const CA_BUNDLE_FILE: &str = "ca-bundle.pem";

/// System CA bundles, in the order they are tried.
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// Share of `drain_timeout` kept for recording when connections use up the rest: a fifth,
/// at least 500 ms (but never more than the whole budget).
fn recording_share(drain: Duration) -> Duration {
    (drain / 5).max(Duration::from_millis(500)).min(drain)
}

/// The exporter's shutdown always gets at least this long: encoding and writing (or
/// spooling) the last batch.
const EXPORT_FLOOR: Duration = Duration::from_millis(300);

/// The last group commit may run this much past `drain_timeout`: one batch's fsyncs.
const SEAL_CLOSE_GRACE: Duration = Duration::from_millis(500);

/// How often the retention policy is applied while running.
const RETENTION_INTERVAL: Duration = Duration::from_secs(300);

/// Why `veil run` could not start: one variant per stage of [`Prepared::load`] and [`start`],
/// so the CLI (the only place anyhow lives) can add its own context and tests can match on
/// the stage. The text is what the operator reads on stderr: the wrapped errors display as
/// they are (they name their file, variable or line), the others name the path or address.
#[derive(Debug)]
pub enum StartupError {
    /// `<keys>` could not be created or given mode 0700: `keys dir: …`.
    KeysDir(KeyError),
    /// The master keys or the admin token could not be loaded or created.
    Keys(KeyError),
    /// The rules file does not compile (`file:line:col: …`).
    Rules(RulesError),
    /// The pricing file is invalid.
    Pricing(PricingError),
    /// veil's CA could not be loaded or created.
    Ca(CaError),
    /// `<keys>/ca-bundle.pem` could not be written: `<path>: …`.
    TrustBundle {
        /// The bundle's path.
        path: PathBuf,
        /// The write error.
        source: std::io::Error,
    },
    /// A listener could not bind: `cannot listen on <addr>: …` (or `on admin_listen <addr>`).
    Listen {
        /// `""` for the proxy, `"admin_listen "` for the admin API, `"metrics_listen "` for
        /// `/metrics`.
        which: &'static str,
        /// The configured address.
        addr: SocketAddr,
        /// The bind error.
        source: std::io::Error,
    },
    /// The data directory could not be created or given mode 0700: `data dir <path>: …`.
    DataDir {
        /// The data directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The crash journal could not be opened ([`Journal::open`]'s error, which names the
    /// file at fault, or says that another veil holds the journal's lock).
    Journal(std::io::Error),
    /// The SQLite ledger could not be opened.
    Ledger(LedgerError),
    /// The exporter could not start (bad `OTEL_*` settings, spool or TLS file).
    Export(StartError),
    /// The sealed store could not be opened: `sealed store: …`, or, when another process
    /// holds its lock, `…: is another veil running with --data <dir>?`.
    Store {
        /// The data directory.
        data: PathBuf,
        /// The store's error.
        source: SealError,
    },
    /// The proxy could not be built (its upstream TLS client).
    Proxy(BuildError),
    /// The control socket could not be opened (path too long, another veil, bind): its text
    /// says what to do.
    Control(crate::admin::ControlError),
    /// Any other I/O failure (a runtime could not start, a bound address could not be read).
    Io(std::io::Error),
}

impl fmt::Display for StartupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartupError::KeysDir(e) => write!(f, "keys dir: {e}"),
            StartupError::Keys(e) => e.fmt(f),
            StartupError::Rules(e) => e.fmt(f),
            StartupError::Pricing(e) => e.fmt(f),
            StartupError::Ca(e) => e.fmt(f),
            StartupError::TrustBundle { path, source } => write!(f, "{}: {source}", path.display()),
            StartupError::Listen {
                which,
                addr,
                source,
            } => {
                write!(f, "cannot listen on {which}{addr}: {source}")?;
                if source.kind() == std::io::ErrorKind::AddrInUse {
                    let (flag, key) = match *which {
                        "" => ("--listen", "listen"),
                        "admin_listen " => ("--admin-listen", "admin_listen"),
                        _ => ("--metrics-listen", "metrics_listen"),
                    };
                    write!(
                        f,
                        " (another process holds the port: stop it, or give veil another port with {flag}, or `{key}` in veil.toml)"
                    )?;
                }
                Ok(())
            }
            StartupError::DataDir { path, source } => {
                write!(f, "data dir {}: {source}", path.display())
            }
            StartupError::Journal(source) => source.fmt(f),
            StartupError::Ledger(e) => e.fmt(f),
            StartupError::Export(e) => e.fmt(f),
            StartupError::Store { data, source } if source.is_locked() => write!(
                f,
                "{source}: is another veil running with --data {}?",
                data.display()
            ),
            StartupError::Store { source, .. } => write!(f, "sealed store: {source}"),
            StartupError::Proxy(e) => e.fmt(f),
            StartupError::Control(e) => e.fmt(f),
            StartupError::Io(e) => e.fmt(f),
        }
    }
}

// No `source()`: every variant's text already holds its cause's text (as the `anyhow!`
// messages it replaces did), so a `{:#}` chain printed by the CLI is not doubled.
impl std::error::Error for StartupError {}

macro_rules! startup_from {
    ($($ty:ty => $variant:ident),* $(,)?) => {$(
        impl From<$ty> for StartupError {
            fn from(e: $ty) -> Self {
                StartupError::$variant(e)
            }
        }
    )*};
}

startup_from! {
    KeyError => Keys,
    RulesError => Rules,
    PricingError => Pricing,
    CaError => Ca,
    LedgerError => Ledger,
    StartError => Export,
    BuildError => Proxy,
    crate::admin::ControlError => Control,
    std::io::Error => Io,
}

/// A running veil: where it listens and how to observe it.
#[derive(Debug)]
pub struct Running {
    /// The proxy's bound address.
    pub addr: SocketAddr,
    /// The admin API's bound address, when enabled.
    pub admin_addr: Option<SocketAddr>,
    /// The Prometheus `/metrics` listener's bound address, when enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// The control socket (`<data>/veil.sock`), removed at exit.
    pub control: PathBuf,
    /// The counter registry every step of this veil counts in.
    pub counters: Arc<Counters>,
    /// The rules in force (reloaded on SIGHUP).
    pub rules: Arc<RulesHandle>,
    /// Whether recording can be made durable now.
    pub health: Arc<Health>,
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
    /// The keys and CA a first run made, written by [`start`] once its listeners are bound
    /// and it holds the data dir (so a start that fails leaves none behind).
    pub unsaved: crate::keys::Unsaved,
}

impl Prepared {
    /// Loads keys and CA (on a first run makes them, in memory only: [`start`] writes them),
    /// compiles the rules and loads prices.
    pub fn load(config: Config) -> Result<Self, StartupError> {
        if config.keys.exists() {
            // Only the warning about a loose mode here: a missing dir is created by `start`.
            crate::keys::prepare_keys_dir(&config.keys).map_err(StartupError::KeysDir)?;
        }
        let mut unsaved = crate::keys::Unsaved::default();
        let keyring = Keyring::load_or_generate(&config.keys, &mut unsaved)?;
        let rules = if config.rules_is_default && !config.rules.exists() {
            tracing::info!(
                "{} not found: using the built-in default rules (pseudonymize users, scrub all content)",
                config.rules.display()
            );
            RulesHandle::builtin_default(config.rules.clone(), &keyring)?
        } else {
            RulesHandle::load(config.rules.clone(), &keyring)?
        };
        let rules = Arc::new(rules.with_memo_bytes(config.redaction_memo));
        let pricing = match &config.pricing {
            Some(path) => Pricing::load(path)?,
            None => Pricing::builtin(),
        };
        let ca = Arc::new(CertificateAuthority::load_or_generate(
            &config.keys,
            ProxySettings::from_config(&config).ca_scope(),
            &mut unsaved,
        )?);
        Ok(Prepared {
            config,
            keyring,
            rules,
            pricing: Arc::new(pricing),
            ca,
            unsaved,
        })
    }
}

/// Writes `<keys>/ca-bundle.pem`: the system's trusted roots followed by veil's CA, for
/// `SSL_CERT_FILE`/`REQUESTS_CA_BUNDLE`, which replace (not extend) a client's trust store.
pub fn write_trust_bundle(keys: &Path, ca_pem: &str) -> Result<PathBuf, StartupError> {
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
    match std::fs::write(&path, bundle) {
        Ok(()) => Ok(path),
        Err(source) => Err(StartupError::TrustBundle { path, source }),
    }
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
) -> Result<(Running, tokio::task::JoinHandle<()>), StartupError> {
    let Prepared {
        mut config,
        keyring,
        rules,
        pricing,
        ca,
        unsaved,
    } = prepared;
    if !config.listen.ip().is_loopback() {
        tracing::warn!(listen = %config.listen, "the proxy listens beyond loopback: anyone who can reach it can use it");
    }
    // Before anything binds or opens: a data dir too deep for a socket path is named now.
    let control_path = crate::admin::socket_path(&config.data);
    crate::admin::control::check_path(&control_path)?;
    if let Some(a) = config.admin_listen.filter(|a| !a.ip().is_loopback()) {
        tracing::warn!(admin_listen = %a, "the admin API is plain HTTP beyond loopback: the bearer token and unsealed exchanges cross the network in clear");
    }
    let listener =
        TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartupError::Listen {
                which: "",
                addr: config.listen,
                source,
            })?;
    let addr = listener.local_addr()?;
    let admin_listener = match config.admin_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|source| StartupError::Listen {
                    which: "admin_listen ",
                    addr: a,
                    source,
                })?,
        ),
        None => None,
    };
    let admin_addr = admin_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    // The bound address (the config may say port 0): the proxy refuses to forward to it.
    config.admin_listen = admin_addr;
    if let Some(a) = config.metrics_listen.filter(|a| !a.ip().is_loopback()) {
        tracing::warn!(metrics_listen = %a, "/metrics is served beyond loopback without a token: anyone who can reach it reads spend, models and features (no users, ids or content)");
    }
    let metrics_listener = match config.metrics_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|source| StartupError::Listen {
                    which: "metrics_listen ",
                    addr: a,
                    source,
                })?,
        ),
        None => None,
    };
    let metrics_addr = metrics_listener
        .as_ref()
        .map(TcpListener::local_addr)
        .transpose()?;
    config.metrics_listen = metrics_addr;

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
    // The journal first: it tells what a previous crash left unrecorded before anything new
    // is written over it.
    crate::export::spool::private_dir(&config.data).map_err(|source| StartupError::DataDir {
        path: config.data.clone(),
        source,
    })?;
    let (journal, crashed) = Journal::open(
        &config.data,
        crate::journal::slots_for(config.queue_capacity),
    )
    .map_err(StartupError::Journal)?;
    report_crash(&crashed, &config.data);
    let journal = Arc::new(journal);
    // The listeners are bound and the data dir is this veil's (the journal's lock): the keys
    // and CA a first run made are written now, and never over ones another process wrote
    // meanwhile. Before this point a failed start leaves no key behind.
    // (Its mode was checked by `Prepared::load` when it existed; made here 0700 otherwise.)
    crate::keys::create_private_dir(&config.keys).map_err(StartupError::KeysDir)?;
    unsaved.save()?;
    write_trust_bundle(&config.keys, ca.cert_pem())?;
    // The one counter registry: every step below counts in it (the proxy through its queue),
    // and the exporter's metrics requests read all of it.
    let counters = Arc::new(Counters::default());
    let (tx, rx) = crate::exchange::queue::channel_journaled(
        config.queue_capacity,
        config.queue_max_bytes,
        Some(journal.clone()),
        counters.clone(),
    );
    let unprocessed = tx.unprocessed();
    let health = Arc::new(Health::new(counters.clone()));
    // The feedback API (veil#14): the pipeline remembers recent exchanges, the ledger writer
    // takes out those it has committed, the service reads them (and the ledger), scrubs, and
    // hands on to the ledger writer and the exporter.
    let recent = Arc::new(crate::feedback::Recent::default());
    let ledger = match config.ledger.clone() {
        Some(mut settings) => {
            settings.nice = nice;
            settings.recent = Some(recent.clone());
            Some(crate::ledger::Ledger::open(
                settings,
                Some(health.clone()),
                counters.clone(),
            )?)
        }
        None => None,
    };
    let exporter = {
        let _in_export_runtime = export_rt.handle().enter();
        Exporter::from_config(
            &config,
            &|k| std::env::var(k).ok(),
            counters.clone(),
            Some(health.clone()),
            Some(journal.clone()),
            ledger.as_ref().map(crate::ledger::Ledger::handle),
        )?
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
            recording_health: Some(health.clone()),
            counters: counters.clone(),
        },
    )
    .map_err(|source| StartupError::Store {
        data: config.data.clone(),
        source,
    })?;

    let feedback = Arc::new(
        crate::feedback::FeedbackService::new(
            rules.clone(),
            recent.clone(),
            ledger
                .as_ref()
                .map(|l| (l.handle(), l.path().to_path_buf())),
            Some(exporter.handle()),
            if config.listen.ip().is_loopback() {
                crate::feedback::Access::Loopback
            } else {
                crate::feedback::Access::Token {
                    feedback: config.feedback_token.clone(),
                    admin: crate::admin::AdminToken::load(&config.keys).ok(),
                }
            },
        )
        .with_counters(counters.clone()),
    );
    let fingerprinter = Fingerprinter::new(keyring.identity().derive(Purpose::Fingerprint));
    let pipeline = Pipeline {
        rules: rules.clone(),
        pricing,
        parse: Default::default(),
        exporter: Some(exporter.handle()),
        store: Some(store.clone()),
        counters: counters.clone(),
        nice,
        redaction_budget: config.redaction_budget,
        hand_off: match config.audit {
            Audit::BestEffort => crate::pipeline::HandOff::Drop,
            Audit::Required => crate::pipeline::HandOff::Wait,
        },
        recent: Some(recent.clone()),
        retries: Arc::default(),
        health: Some(health.clone()),
    };
    let workers = pipeline.spawn(rx, config.pipeline_workers);

    let cancel = CancellationToken::new();
    let retention = config.retention;
    let drain = config.drain_timeout;
    // One budget for the whole shutdown: in-flight connections get most of it, and what they
    // leave (at least RECORDING_SHARE of it) goes to emptying the recording queue, flushing the
    // exporter and the last group commit.
    config.drain_timeout = drain.saturating_sub(recording_share(drain));
    let keys_dir = config.keys.clone();
    let data_dir = config.data.clone();
    let disk_reserve = config.disk_reserve;
    let settings = ProxySettings::from_config(&config);
    // The admin API keeps the same connection clocks as the proxy port.
    let limits = settings.limits;
    // The store is open and locked: a socket file here now is a dead veil's (or a live one
    // of another version without the lock, which `bind` refuses).
    let control = crate::admin::ControlSocket::bind(&data_dir)?;
    let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let instance = crate::admin::Instance {
        reload_rules: Some(rules_reloader(
            rules.clone(),
            keys_dir.clone(),
            counters.clone(),
        )),
        ca: Some(crate::admin::CaResponse {
            cert: absolute(ca.cert_path()).display().to_string(),
            bundle: absolute(&keys_dir.join(CA_BUNDLE_FILE))
                .display()
                .to_string(),
            pem: ca.cert_pem().to_string(),
            proxy: addr.to_string(),
        }),
        feedback: Some({
            let service = feedback.clone();
            Arc::new(move |body: &[u8]| {
                let a = service.handle(body);
                (a.status, a.body)
            }) as crate::admin::SubmitFeedback
        }),
        erase_exports: Some({
            let exporter = exporter.handle();
            let erase: crate::admin::EraseExports = Arc::new(move |targets| {
                let exporter = exporter.clone();
                Box::pin(async move { exporter.erase(targets).await })
            });
            erase
        }),
        // A forgotten exchange leaves the feedback service's memory too: with `ledger = false`
        // that map is all that knows it, and it must not be rated any more (veil#14). The
        // redaction memo may hold its redacted texts: it is emptied (it fills again as texts
        // come back).
        on_forget: Some({
            let recent = recent.clone();
            let rules = rules.clone();
            Arc::new(move |ids: &[String], user: Option<&str>| {
                for id in ids {
                    recent.remove(id);
                }
                if let Some(user) = user {
                    recent.remove_user(user);
                }
                rules.current().clear_memo();
            }) as crate::admin::OnForget
        }),
    };
    let proxy = Proxy::try_new(settings, ca, fingerprinter, tx)?
        .with_health(health.clone())
        .with_api(feedback.clone());

    if let Some(listener) = metrics_listener {
        let counters = counters.clone();
        let rules = rules.clone();
        let exposition: crate::admin::Exposition = Arc::new(move || {
            let rules = rules.current();
            let info = crate::counters::exposition::RulesInfo {
                digest: rules.digest().to_string(),
                memo_hits: rules.memo_hits(),
                memo_bytes: rules.memo_held() as u64,
            };
            crate::counters::exposition::render(&counters, &info)
        });
        let cancel = cancel.clone();
        tokio::spawn(crate::admin::serve_metrics(
            listener,
            exposition,
            limits,
            cancel.cancelled_owned(),
        ));
    }
    if let Some(listener) = admin_listener {
        let token = crate::admin::AdminToken::load_or_create(&keys_dir)?;
        let store = store.clone();
        let cancel = cancel.clone();
        let instance = instance.clone();
        tokio::spawn(async move {
            crate::admin::serve_tcp(
                listener,
                store,
                token,
                instance,
                limits,
                cancel.cancelled_owned(),
            )
            .await;
        });
    }
    let control_task = {
        let store = store.clone();
        let cancel = cancel.clone();
        tokio::spawn(crate::admin::serve_control(
            control,
            store,
            instance.clone(),
            limits,
            cancel.cancelled_owned(),
        ))
    };
    let backlog = Backlog {
        counters: counters.clone(),
        queue: unprocessed,
        store: store.clone(),
    };
    tokio::spawn(watch_disk(
        data_dir,
        disk_reserve,
        health.clone(),
        backlog,
        cancel.clone(),
    ));
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
                rules_reloader(rules.clone(), keys_dir, counters.clone()),
                cancel.clone(),
            ));
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot install the SIGHUP handler: rules reload disabled")
        }
    }

    let left_behind = counters.clone();
    let done = tokio::spawn(async move {
        let stop = cancel.clone();
        let (deadline_tx, deadline_rx) = tokio::sync::oneshot::channel();
        proxy
            .serve(listener, async move {
                shutdown.await;
                let _ = deadline_tx.send(tokio::time::Instant::now() + drain);
                stop.cancel();
            })
            .await;
        cancel.cancel();
        let deadline = deadline_rx
            .await
            .unwrap_or_else(|_| tokio::time::Instant::now() + drain);
        // The proxy held every sender: the workers now drain the queue and exit.
        let joined = tokio::task::spawn_blocking(move || {
            for w in workers {
                let _ = w.join();
            }
        });
        if tokio::time::timeout_at(deadline, joined).await.is_err() {
            let left = left_behind
                .queue
                .queued
                .get()
                .saturating_sub(left_behind.pipeline.processed.get())
                .saturating_sub(left_behind.pipeline.failed.get());
            tracing::error!(
                exchanges = left,
                drain_timeout_s = drain.as_secs_f32(),
                "drain_timeout reached: {left} exchanges still waiting to be recorded are lost"
            );
        }
        // A floor, so the batch the pipeline just handed over is flushed even when connections
        // used the whole budget.
        let report = exporter
            .shutdown(
                deadline
                    .saturating_duration_since(tokio::time::Instant::now())
                    .max(EXPORT_FLOOR),
            )
            .await;
        if report.drained {
            tracing::info!("exporter flushed");
        } else {
            tracing::warn!(
                spooled_batches = report.spooled_batches,
                "exporter stopped at drain_timeout; undelivered batches stay spooled for the next start"
            );
        }
        drop(export_rt);
        // The exporter has handed over its last batch: the ledger commits what it holds.
        if let Some(ledger) = ledger {
            let left = deadline
                .saturating_duration_since(tokio::time::Instant::now())
                .max(EXPORT_FLOOR);
            let closed = tokio::task::spawn_blocking(move || ledger.shutdown(left)).await;
            if !matches!(closed, Ok(true)) {
                tracing::error!("ledger still writing at drain_timeout; exiting without it");
            }
        }
        // The control socket closes with its last request (its file is removed then), before
        // the store it serves.
        let _ = tokio::time::timeout_at(deadline, control_task).await;
        // The last group commit, bounded too: a disk that stalls past the deadline loses what
        // is still queued for it (the writer logs and counts it).
        let closing = tokio::task::spawn_blocking(move || drop(store));
        if tokio::time::timeout_at(deadline + SEAL_CLOSE_GRACE, closing)
            .await
            .is_err()
        {
            tracing::error!("sealed store still writing at drain_timeout; exiting without it");
        }
    });
    Ok((
        Running {
            addr,
            admin_addr,
            metrics_addr,
            control: control_path,
            counters,
            rules,
            health,
        },
        done,
    ))
}

/// Logs what the previous run acknowledged to apps but never recorded (see [`crate::journal`]).
fn report_crash(report: &CrashReport, data: &Path) {
    if report.lost.is_empty() {
        return;
    }
    tracing::error!(
        exchanges = report.lost.len(),
        sealed_only = report.sealed_only,
        recorded_only = report.recorded_only,
        first = %report.lost[0],
        list = %data.join(crate::journal::UNRECORDED_FILE).display(),
        "the previous run stopped before recording {} exchanges it had answered (crash or kill); their request ids are listed in the file above",
        report.lost.len()
    );
}

/// How often the data disk's free space is checked: one `statvfs` per tick. At 100 ms a
/// disk filling at 100 MB/s moves 10 MB between checks, well inside the default reserve.
const DISK_CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// Bytes written per byte of captured body by the time an exchange is recorded, at most:
/// the sealed copy (the bodies, encrypted: 1x); the SQLite ledger, whose redacted content is
/// written to the WAL and again to the database at the checkpoint (2x); and, when
/// `records_files` is on, the OTLP/JSON lines, content written twice and escaped (about 2.3x
/// measured). Rounded up: the estimate must not let admitted exchanges outgrow the disk.
const WRITES_PER_QUEUED_BYTE: u64 = 6;

/// Bytes still written per wire byte of a record past the pipeline (the ledger's WAL and
/// database copies and the records files; the sealed copy is counted by the store).
const WRITES_PER_RECORD_BYTE: u64 = 5;

/// What the recording stages hold in memory and have yet to write: an exchange is counted
/// from the recording queue until its sealed frame is written to a segment file and its
/// record to the ledger and the records files (or the collector or spool), as a raw capture
/// until a worker has processed it ([`Unprocessed`](crate::exchange::queue::Unprocessed):
/// the queue's `veil.queue.bytes` stays charged until the record and the sealed frame are
/// freed too, so adding it to the stages' bytes counted an exchange past the pipeline twice,
/// stop 51), then as its sealed frame in the store's pending bytes and as its record in the
/// exporter's unwritten bytes (until the last payload made from it has left the senders'
/// queues) and the ledger's queued bytes. Where two stages overlap for a moment (a group's
/// records are handed to the exporter before its frames are sealed; the ledger's and the
/// records files' copies) it errs high, never low. Counting only the queue once let
/// admitted exchanges outgrow the disk: past the queue, a batch of records waiting in the
/// exporter (up to `batch_age`) and the ledger's queue wrote several MiB the free-space check
/// had not seen, and a seal that veil had already answered 200 for hit ENOSPC. See: veil#10
/// (flaky `audit_required_on_a_filling_disk_answers_only_what_it_sealed`).
struct Backlog {
    /// The exporter's unwritten and the ledger's queued bytes.
    counters: Arc<Counters>,
    /// The queue's captures not yet processed.
    queue: crate::exchange::queue::Unprocessed,
    store: SealStore,
}

impl Backlog {
    /// Bytes the stages are still about to write, estimated from what each holds.
    fn pending_write_bytes(&self) -> u64 {
        let c = &self.counters;
        let records = c
            .export
            .unwritten_bytes
            .get()
            .saturating_add(c.ledger.queued_bytes.get());
        self.queue
            .bytes()
            .saturating_mul(WRITES_PER_QUEUED_BYTE)
            .saturating_add(self.store.pending_bytes())
            .saturating_add(records.saturating_mul(WRITES_PER_RECORD_BYTE))
    }
}

/// Watches the data disk every [`DISK_CHECK_INTERVAL`]: when its free space, less what the
/// exchanges still in recording's memory are about to write ([`Backlog`]), falls below `reserve`,
/// recording is degraded ([`Part::Disk`]), so `audit = "required"` refuses requests before a
/// write fails rather than after. While records writes are degraded it also probes the disk
/// with a small synced write, so recording recovers once space returns even if no traffic
/// comes to retry it (under `audit = "required"` none would: it is all refused).
async fn watch_disk(
    data: PathBuf,
    reserve: u64,
    health: Arc<Health>,
    backlog: Backlog,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(DISK_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let h = health.clone();
        let dir = data.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let free = crate::health::free_bytes(&dir);
            let probe = h.is_degraded(Part::Records).then(|| probe_records(&dir));
            (free, probe)
        })
        .await;
        let Ok((free, probe)) = checked else { continue };
        let pending = backlog.pending_write_bytes();
        match free {
            Ok(free) if free < reserve.saturating_add(pending) => health.degrade(
                Part::Disk,
                format!(
                    "{:.1} MiB free on {} with {:.1} MiB of recording still to write, below disk_reserve ({:.1} MiB)",
                    mib(free),
                    data.display(),
                    mib(pending),
                    mib(reserve)
                ),
            ),
            Ok(_) => health.recover(Part::Disk),
            Err(e) => health.degrade(Part::Disk, format!("{}: {e}", data.display())),
        }
        if let Some(Ok(())) = probe {
            health.recover(Part::Records);
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 20)
}

/// Can records be written again? Probes the directories the exporter writes to (the records
/// ledger, the export spools), not merely the data dir: a failure that is not about free
/// space (permissions, I/O errors, quotas) must keep recording degraded.
fn probe_records(data: &Path) -> std::io::Result<()> {
    let dirs: Vec<PathBuf> = [
        data.join("records"),
        data.join("spool").join("traces"),
        data.join("spool").join("logs"),
    ]
    .into_iter()
    .filter(|d| d.is_dir())
    .collect();
    if dirs.is_empty() {
        return probe_write(data);
    }
    dirs.iter().try_for_each(|d| probe_write(d))
}

/// Writes, syncs and removes a small file in `dir`: can veil write there now?
fn probe_write(dir: &Path) -> std::io::Result<()> {
    use std::io::Write;
    let path = dir.join(".write-probe");
    let result = std::fs::File::create(&path).and_then(|mut f| {
        f.write_all(&[0u8; 4096])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&path);
    result
}

/// The rules reload both SIGHUP and `POST /v1/rules/reload` (`veil reload`) run: loads the
/// keyring, then reads and compiles the rules file; the new digest, or why it was rejected
/// (the old rules stay in force). Each outcome is counted in `veil.rules.reloads`, here
/// rather than in each caller, so no way of reloading can be left uncounted. Blocking.
fn rules_reloader(
    rules: Arc<RulesHandle>,
    keys: PathBuf,
    counters: Arc<Counters>,
) -> crate::admin::ReloadRules {
    Arc::new(move || {
        let result = Keyring::load(&keys)
            .map_err(|e| e.to_string())
            .and_then(|keyring| rules.reload(&keyring).map_err(|e| e.to_string()));
        match &result {
            Ok(_) => counters.rules.reloads_ok.inc(),
            Err(_) => counters.rules.reloads_failed.inc(),
        };
        result
    })
}

/// Reloads the rules on every SIGHUP; a file that fails to compile is logged and the old rules
/// stay in force.
async fn reload_on_sighup(
    mut hup: tokio::signal::unix::Signal,
    reload: crate::admin::ReloadRules,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        let reload = reload.clone();
        match tokio::task::spawn_blocking(move || reload()).await {
            Ok(Ok(digest)) => tracing::info!(rules.digest = %digest, "rules reloaded"),
            Ok(Err(e)) => {
                tracing::error!("rules reload rejected, previous rules stay in force: {e}")
            }
            Err(e) => tracing::error!("rules reload failed: {}", crate::health::task_failure(&e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The disk watch counts an exchange's bytes once: as its raw capture until the worker
    /// has processed it, then as what its stages hold, although the queue's own bytes stay
    /// charged (its bound) until the record made from it is freed.
    #[test]
    fn the_backlog_counts_a_processed_exchange_by_its_stages_only() {
        use crate::keys::{KeyId, Keyring, MasterKey};
        let dir = tempfile::tempdir().unwrap();
        let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [7; 32]));
        let store = SealStore::open(dir.path(), keys, Default::default()).unwrap();
        let counters = Arc::new(Counters::default());
        let (tx, mut rx) = crate::exchange::queue::channel(4, 1 << 20, counters.clone());
        let backlog = Backlog {
            counters: counters.clone(),
            queue: tx.unprocessed(),
            store,
        };
        let ex = crate::seal::tests::openai_chat();
        let captured = (ex.request_body.captured_len() + ex.response_body.captured_len()) as u64;
        assert!(captured > 0);
        tx.try_send(ex).unwrap();
        assert_eq!(
            backlog.pending_write_bytes(),
            captured * WRITES_PER_QUEUED_BYTE
        );
        // The worker turns it into a record waiting in the exporter (300 bytes) and frees
        // the capture; the record keeps the exchange's place and bytes in the queue.
        let queued = rx.try_recv().unwrap();
        let record_share = queued.in_flight();
        counters.export.unwritten_bytes.add(300);
        drop(queued);
        assert_eq!(counters.queue.bytes.get(), captured);
        assert_eq!(backlog.pending_write_bytes(), 300 * WRITES_PER_RECORD_BYTE);
        counters.export.unwritten_bytes.sub(300);
        drop(record_share);
        assert_eq!(backlog.pending_write_bytes(), 0);
    }

    #[test]
    fn trust_bundle_in_a_missing_keys_dir_names_the_bundle_path() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("absent");
        let err = write_trust_bundle(&keys, "-----BEGIN CERTIFICATE-----\n").unwrap_err();
        let StartupError::TrustBundle { path, source } = &err else {
            panic!("{err:?}");
        };
        assert_eq!(path, &keys.join(CA_BUNDLE_FILE));
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        assert!(
            err.to_string()
                .starts_with(&format!("{}: ", keys.join(CA_BUNDLE_FILE).display())),
            "{err}"
        );
    }

    #[tokio::test]
    async fn an_address_in_use_is_a_listen_error_naming_it() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let source = TcpListener::bind(addr).await.unwrap_err();
        let err = StartupError::Listen {
            which: "admin_listen ",
            addr,
            source,
        };
        assert!(
            err.to_string()
                .starts_with(&format!("cannot listen on admin_listen {addr}: ")),
            "{err}"
        );
        assert!(
            err.to_string()
                .ends_with("another port with --admin-listen, or `admin_listen` in veil.toml)"),
            "says what to do: {err}"
        );
    }

    #[test]
    fn a_journal_error_is_shown_as_the_journal_says_it() {
        let dir = tempfile::tempdir().unwrap();
        let (held, _) = Journal::open(dir.path(), crate::journal::SLOTS).unwrap();
        let err = StartupError::Journal(Journal::open(dir.path(), 1).unwrap_err());
        assert!(
            err.to_string().starts_with(&format!(
                "{} is in use by another process",
                dir.path().join(crate::journal::FILE).display()
            )),
            "{err}"
        );
        drop(held);
        // A marks file veil cannot open: the message names it, not the journal.
        let marks = dir.path().join(crate::journal::MARKS_FILE);
        std::fs::remove_file(&marks).unwrap();
        std::fs::create_dir(&marks).unwrap();
        let err = StartupError::Journal(Journal::open(dir.path(), 1).unwrap_err());
        assert!(
            err.to_string()
                .starts_with(&format!("{}: ", marks.display())),
            "{err}"
        );
    }
}
