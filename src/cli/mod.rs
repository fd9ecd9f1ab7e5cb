//! # The `veil` command line: parses arguments and calls the library.
//!
//! The operator boundary: every front-end lives here (clap types, argument glue, printing,
//! exit codes), so clap and anyhow stay out of the library's steps. It calls into the steps
//! (`server`, `seal`, `export`, `redact`, `admin`) and nothing calls into it but `main`.
//!
//! - this file: the clap types of every command and the dispatch; `run`, `ca`, `env`.
//! - `seal`: `unseal`, `forget`, `purge`, `keys`, `compact` (local store or admin API).
//! - `operator`: `Operator`, the sealed store opened here or a running veil's
//!   admin API, with one typed method per operator action.
//! - `ledger`: `veil report`, `veil sql`, `veil tail` over the SQLite ledger; `table`: their
//!   table, CSV and JSON output.
//! - `show`: `veil show ID`, one exchange's redacted record from the ledger.
//! - `tail`: `veil tail --records-files` (the OTLP/JSON lines files).
//! - `startup`: the lines `veil run` logs at start and stop, in words.
//! - `signal`: what stops `veil run` (SIGTERM, SIGINT), installed without panicking.
//! - `rules`: `veil rules check|test` and `veil decrypt`.
//!
//! Every `run` flag is also a config-file key (same name, `-` → `_`); flags win over the file.

mod ledger;
mod operator;
mod rules;
mod seal;
mod show;
mod signal;
mod startup;
mod table;
mod tail;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{Audit, Config, RawConfig};

/// veil: a privacy-enforcing log redaction proxy for LLM traffic.
#[derive(Debug, Parser)]
#[command(name = "veil", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy (HTTPS_PROXY and gateway mode on one port).
    Run(Box<RunArgs>),
    /// The interception CA.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Print the shell lines that point an app at veil.
    Env(ListenArg),
    /// Print the latest recorded exchanges from the ledger, one line each; -f follows.
    Tail(ledger::TailArgs),
    /// Spend, tokens, errors and latency from the ledger, grouped by feature, model, user...
    Report(ledger::ReportArgs),
    /// Run one read-only SQL statement over the ledger (schema: docs/ledger.md).
    Sql(ledger::SqlArgs),
    /// Print the redacted record of one exchange from the ledger, by request id.
    Show(show::ShowArgs),
    /// Check or try a rules file.
    Rules {
        #[command(subcommand)]
        command: rules::RulesCommand,
    },
    /// Decrypt an `enc:v1:` value from a record (needs the master keys).
    Decrypt(rules::DecryptArgs),
    #[command(flatten)]
    Seal(seal::SealCommand),
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Print the path of the CA certificate apps must trust (created if missing).
    Path,
}

/// Flags every command understands (before or after the subcommand).
#[derive(Debug, Clone, Args)]
struct GlobalArgs {
    /// TOML config file (same keys as the `run` flags).
    #[arg(long, global = true, value_name = "FILE", env = "VEIL_CONFIG")]
    config: Option<PathBuf>,
    /// Keys directory (CA, master keys, admin token) [default: ./keys].
    #[arg(long, global = true, value_name = "DIR")]
    keys: Option<PathBuf>,
    /// Data directory (ledger, spool, sealed store, audit log) [default: ./data].
    #[arg(long, global = true, value_name = "DIR")]
    data: Option<PathBuf>,
}

/// `--listen`.
#[derive(Debug, Clone, Args)]
struct ListenArg {
    /// Proxy listen address [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    listen: ListenArg,
    /// Rules file [default: rules/default.toml].
    #[arg(long, value_name = "FILE")]
    rules: Option<PathBuf>,
    /// OTLP/HTTP endpoint [default: $OTEL_EXPORTER_OTLP_ENDPOINT].
    #[arg(long, value_name = "URL")]
    otlp_endpoint: Option<String>,
    /// Host to intercept, HOST[:PORT] or *.DOMAIN; repeatable; `@defaults` adds the built-in
    /// LLM provider hosts [default: @defaults].
    #[arg(long, value_name = "HOST[:PORT]")]
    intercept: Vec<String>,
    /// Connect to ADDR[:PORT] for what the app addresses as HOST:PORT (TLS still verified for
    /// HOST); repeatable.
    #[arg(long, value_name = "HOST:PORT:ADDR[:PORT]")]
    resolve: Vec<String>,
    /// Extra PEM trust roots for upstream TLS; repeatable.
    #[arg(long, value_name = "FILE")]
    upstream_ca: Vec<PathBuf>,
    /// Admin API address (off unless set).
    #[arg(long, value_name = "ADDR")]
    admin_listen: Option<String>,
    /// Ports CONNECT may reach; repeatable [default: 443].
    #[arg(long = "allow-port", value_name = "PORT")]
    allow_ports: Vec<u16>,
    /// What to do when an exchange cannot be recorded.
    #[arg(long, value_enum)]
    audit: Option<AuditArg>,
    /// Per-body capture limit, e.g. 32MiB [default: 32MiB].
    #[arg(long, value_name = "SIZE")]
    capture_limit: Option<String>,
    /// Upstream response-header timeout, e.g. 300s [default: 300s].
    #[arg(long, value_name = "DURATION")]
    upstream_timeout: Option<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum AuditArg {
    /// Traffic always flows and comes first (recording runs at nice 10); unrecordable
    /// exchanges are counted and logged.
    BestEffort,
    /// Refuse (503) a request that cannot be recorded; recording keeps pace, traffic slows.
    Required,
}

impl GlobalArgs {
    /// The config file (if any) overlaid with the global flags and then `flags`.
    fn resolve(&self, flags: RawConfig) -> anyhow::Result<Config> {
        let file = self
            .config
            .as_deref()
            .map(RawConfig::from_file)
            .transpose()?;
        let global = RawConfig {
            keys: self.keys.clone(),
            data: self.data.clone(),
            ..Default::default()
        };
        Ok(Config::resolve(file, global.overlay(flags))?)
    }
}

impl RunArgs {
    fn config(&self, global: &GlobalArgs) -> anyhow::Result<Config> {
        let non_empty = |v: &Vec<String>| (!v.is_empty()).then(|| v.clone());
        global.resolve(RawConfig {
            listen: self.listen.listen.clone(),
            rules: self.rules.clone(),
            otlp_endpoint: self.otlp_endpoint.clone(),
            intercept: non_empty(&self.intercept),
            resolve: non_empty(&self.resolve),
            upstream_ca: (!self.upstream_ca.is_empty()).then(|| self.upstream_ca.clone()),
            admin_listen: self.admin_listen.clone(),
            allow_ports: (!self.allow_ports.is_empty()).then(|| self.allow_ports.clone()),
            audit: self.audit.map(|a| match a {
                AuditArg::BestEffort => Audit::BestEffort,
                AuditArg::Required => Audit::Required,
            }),
            capture_limit: self.capture_limit.clone(),
            upstream_timeout: self.upstream_timeout.clone(),
            ..Default::default()
        })
    }
}

/// Entry point of the `veil` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("veil: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("VEIL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = colour(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .try_init();
}

/// Whether log lines on stderr carry ANSI colour: only on a terminal (a file, a pipe or a
/// journal would keep the escape bytes), and never when `NO_COLOR` is set to anything but
/// the empty string (<https://no-color.org>).
fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let global = cli.global;
    match cli.command {
        Command::Run(args) => run(*args, &global),
        Command::Ca {
            command: CaCommand::Path,
        } => {
            let config = global.resolve(RawConfig::default())?;
            crate::keys::prepare_keys_dir(&config.keys)?;
            let ca = crate::proxy::CertificateAuthority::load_or_create(
                &config.keys,
                crate::proxy::ProxySettings::from_config(&config).ca_scope(),
            )?;
            println!("{}", absolute(ca.cert_path()).display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Tail(args) => {
            let config = global.resolve(RawConfig::default())?;
            ledger::run_tail(args, &config.data)
        }
        Command::Report(args) => {
            let config = global.resolve(RawConfig::default())?;
            ledger::run_report(args, &config.data, &config.keys)
        }
        Command::Sql(args) => {
            let config = global.resolve(RawConfig::default())?;
            ledger::run_sql(args, &config.data)
        }
        Command::Show(args) => {
            let config = global.resolve(RawConfig::default())?;
            show::run_show(args, &config.data)
        }
        Command::Rules { command } => {
            let config = global.resolve(RawConfig::default())?;
            rules::run_rules(command, &config.keys)
        }
        Command::Decrypt(args) => {
            let config = global.resolve(RawConfig::default())?;
            rules::run_decrypt(args, &config.keys)
        }
        Command::Seal(cmd) => {
            let config = global.resolve(RawConfig::default())?;
            seal::run(&cmd, &config)
        }
        Command::Env(listen) => {
            let config = global.resolve(RawConfig {
                listen: listen.listen,
                ..Default::default()
            })?;
            crate::keys::prepare_keys_dir(&config.keys)?;
            let ca = crate::proxy::CertificateAuthority::load_or_create(
                &config.keys,
                crate::proxy::ProxySettings::from_config(&config).ca_scope(),
            )?;
            let bundle = crate::server::write_trust_bundle(&config.keys, ca.cert_pem())?;
            let proxy = format!("http://{}", config.listen);
            let ca_path = absolute(ca.cert_path());
            let bundle = absolute(&bundle);
            println!("# Point an app at veil: eval \"$(veil env)\"");
            println!("export HTTPS_PROXY={proxy}");
            println!("export https_proxy={proxy}");
            println!("export NO_PROXY=localhost,127.0.0.1,::1");
            println!("export no_proxy=localhost,127.0.0.1,::1");
            println!(
                "# System roots + veil's CA (these variables replace a client's trust store)."
            );
            println!("export SSL_CERT_FILE={}", bundle.display());
            println!("export REQUESTS_CA_BUNDLE={}", bundle.display());
            println!("export CURL_CA_BUNDLE={}", bundle.display());
            println!("# Node adds this to its built-in roots.");
            println!("export NODE_EXTRA_CA_CERTS={}", ca_path.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn run(args: RunArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let config = args.config(global)?;
    let prepared = crate::server::Prepared::load(config.clone())?;
    let ca_path = prepared.ca.cert_path().to_path_buf();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (running, done) = crate::server::start(prepared, signal::shutdown_signal()?).await?;
        let facts = startup::Facts::new(
            &config,
            running.addr,
            running.admin_addr,
            &ca_path,
            running.rules.current().digest(),
        );
        for line in startup::startup_lines(&facts) {
            tracing::info!("{line}");
        }
        done.await?;
        tracing::info!("{}", startup::shutdown_line(&facts, &running.counters));
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
