//! # The `veil` command line: parses arguments and calls the library.
//!
//! The operator boundary: every front-end lives here (clap types, argument glue, printing,
//! exit codes), so clap and anyhow stay out of the library's steps. It calls into the steps
//! (`server`, `seal`, `export`, `redact`, `admin`) and nothing calls into it but `main`.
//!
//! - this file: the clap types of every command and the dispatch; `run`, `ca`, `env`,
//!   `reload`, and where keys and data go by default (`default_dirs`).
//! - `seal`: `unseal`, `forget`, `purge`, `keys`, `compact` (local store or admin API).
//! - `operator`: `Operator`, the sealed store opened here or a running veil's
//!   admin API, with one typed method per operator action.
//! - `ledger`: `veil report`, `veil sql`, `veil tail` over the SQLite ledger; `table`: their
//!   table, CSV and JSON output.
//! - `export`: `veil export`, datasets from the ledger (`ledger::dataset`) with their
//!   manifests; `export_sealed`: its `--rules` path, from the sealed store re-redacted.
//! - `show`: `veil show ID`, one exchange's redacted record from the ledger.
//! - `tail`: `veil tail --records-files` (the OTLP/JSON lines files).
//! - `startup`: the lines `veil run` logs at start and stop, in words.
//! - `signal`: what stops `veil run` (SIGTERM, SIGINT), installed without panicking.
//! - `rules`: `veil rules check|test` and `veil decrypt`.
//!
//! Every `run` flag is also a config-file key (same name, `-` → `_`); flags win over the file.

mod export;
mod export_sealed;
mod feedback;
mod ledger;
mod operator;
mod panics;
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

/// What a `forward-only` build logs at every start, after the start lines.
const FORWARD_ONLY_WARNING: &str = "this veil was built with the forward-only feature, for the load bench: it intercepts and forwards but records nothing (no ledger rows, no sealed exchanges, no OTLP); build without it for any other use";

/// `veil --version`'s number, with a warning in a build that records nothing.
const VERSION: &str = if cfg!(feature = "forward-only") {
    concat!(
        env!("CARGO_PKG_VERSION"),
        " (forward-only build, for benchmarks: records nothing)"
    )
} else {
    env!("CARGO_PKG_VERSION")
};

/// veil: a privacy-enforcing log redaction proxy for LLM traffic.
#[derive(Debug, Parser)]
#[command(name = "veil", version = VERSION, about, long_about = None)]
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
    /// Print the shell lines that point an app at the running veil (or at the CA in --keys).
    Env(ListenArg),
    /// Reload the running veil's rules file (this veil only; SIGHUP does the same).
    Reload(seal::AdminArg),
    /// Attach feedback (a score or label, and a comment) to a recorded answer by request id.
    Feedback(feedback::FeedbackArgs),
    /// Print the latest recorded exchanges from the ledger, one line each; -f follows.
    Tail(ledger::TailArgs),
    /// Spend, tokens, errors and latency from the ledger, grouped by feature, model, user...
    Report(ledger::ReportArgs),
    /// Run one read-only SQL statement over the ledger (schema: docs/ledger.md).
    Sql(ledger::SqlArgs),
    /// Print the redacted record of one exchange from the ledger, by request id.
    Show(show::ShowArgs),
    /// Write a dataset (OpenAI chat, OpenAI evals, JSON lines) from the ledger's redacted
    /// exchanges, with a manifest of the request ids it holds.
    Export(Box<export::ExportArgs>),
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
    /// Print the path of the CA certificate apps must trust: the running veil's, else the one
    /// in --keys (never created here: `veil run` creates it).
    Path,
}

/// Flags every command understands (before or after the subcommand).
#[derive(Debug, Clone, Args)]
struct GlobalArgs {
    /// TOML config file (same keys as the `run` flags) [default: ./veil.toml when present].
    #[arg(long, global = true, value_name = "FILE", env = "VEIL_CONFIG")]
    config: Option<PathBuf>,
    /// Keys directory (CA, master keys, admin token) [default: ./keys in a directory with a
    /// veil.toml, else $XDG_DATA_HOME/veil/keys, i.e. ~/.local/share/veil/keys].
    #[arg(long, global = true, value_name = "DIR")]
    keys: Option<PathBuf>,
    /// Data directory (ledger, spool, sealed store, audit log, control socket veil.sock)
    /// [default: ./data in a directory with a veil.toml, else $XDG_DATA_HOME/veil/data].
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
    /// LLM provider hosts, `@vertex` Vertex AI's global and regional hosts, `@bedrock`
    /// Bedrock Runtime's regional hosts; any --intercept replaces the default list, so
    /// include `@defaults` to keep it [default: @defaults].
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
    /// Serve Prometheus metrics on GET http://ADDR/metrics (off unless set).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
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

/// The config file of a project directory, read when no `--config` is given.
const PROJECT_CONFIG: &str = "veil.toml";

/// Where keys and data go when neither a flag nor the config file names them: `./keys` and
/// `./data` in a project directory (one with a `veil.toml`), else `$XDG_DATA_HOME/veil/…`
/// (`~/.local/share/veil/…` when it is unset or not absolute, as the XDG base directory
/// spec says). Rejected: always `./keys`, which made `veil env` or `veil unseal` run from an
/// app's directory look at (and `env` create) a second, empty set of keys. With neither
/// variable usable, `./keys` and `./data` again.
fn default_dirs(
    cwd_is_project: bool,
    var: impl Fn(&str) -> Option<std::ffi::OsString>,
) -> (PathBuf, PathBuf) {
    let local = (PathBuf::from("keys"), PathBuf::from("data"));
    if cwd_is_project {
        return local;
    }
    let absolute = |k: &str| var(k).map(PathBuf::from).filter(|p| p.is_absolute());
    let base = match absolute("XDG_DATA_HOME") {
        Some(x) => x,
        None => match absolute("HOME") {
            Some(h) => h.join(".local").join("share"),
            None => return local,
        },
    };
    let veil = base.join("veil");
    (veil.join("keys"), veil.join("data"))
}

impl GlobalArgs {
    /// The config file (if any) overlaid with the global flags and then `flags`, on top of
    /// [`default_dirs`].
    fn resolve(&self, flags: RawConfig) -> anyhow::Result<Config> {
        // A project directory (one with a `veil.toml`) is where its config lives: that file
        // is read when no `--config`/`VEIL_CONFIG` names another, so `veil forget` run there
        // finds the same dirs as the `veil run` started there.
        let project = std::path::Path::new(PROJECT_CONFIG).is_file();
        let (keys, data) = default_dirs(project, |k| std::env::var_os(k));
        let config_file = self
            .config
            .clone()
            .or_else(|| project.then(|| PathBuf::from(PROJECT_CONFIG)));
        let defaults = RawConfig {
            keys: Some(keys),
            data: Some(data),
            ..Default::default()
        };
        let file = Some(
            defaults.overlay(
                config_file
                    .as_deref()
                    .map(RawConfig::from_file)
                    .transpose()?
                    .unwrap_or_default(),
            ),
        );
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
            metrics_listen: self.metrics_listen.clone(),
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

/// A command-line mistake found after parsing (a value clap cannot check, flags that do not go
/// together): exits 2 like clap's own usage errors, not 1, which means the command could not
/// do its work.
#[derive(Debug)]
pub(crate) struct BadArgs(pub(crate) String);

impl std::fmt::Display for BadArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadArgs {}

/// The exit code of a failed command: 2 for [`BadArgs`], else 1.
fn failure_code(e: &anyhow::Error) -> ExitCode {
    if e.downcast_ref::<BadArgs>().is_some() {
        ExitCode::from(2)
    } else {
        ExitCode::FAILURE
    }
}

/// Entry point of the `veil` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    panics::install();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("veil: {e:#}");
            failure_code(&e)
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
            println!("{}", find_ca(&config)?.cert.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Reload(admin) => {
            let config = global.resolve(RawConfig::default())?;
            let dirs = seal::StoreDirs::from_config(&config, admin.admin);
            let veil = operator::running(&dirs)?.ok_or_else(|| {
                anyhow::anyhow!(
                    "no veil is running with data dir {}; {}",
                    dirs.data.display(),
                    operator::start_hint(&dirs)
                )
            })?;
            let answer = operator::block(veil.reload_rules())??;
            println!("rules reloaded: digest {}", answer.digest);
            Ok(ExitCode::SUCCESS)
        }
        Command::Feedback(args) => {
            let config = global.resolve(RawConfig::default())?;
            feedback::run(args, &config)
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
        Command::Export(args) => {
            let config = global.resolve(RawConfig::default())?;
            let dirs = seal::StoreDirs::from_config(&config, args.admin_addr());
            export::run_export(*args, &dirs)
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
            let explicit = listen.listen.clone();
            let config = global.resolve(RawConfig {
                listen: listen.listen,
                ..Default::default()
            })?;
            let ca = find_ca(&config)?;
            let proxy = match (explicit, &ca.proxy) {
                (None, Some(running)) => format!("http://{running}"),
                _ => format!("http://{}", config.listen),
            };
            if ca.proxy.is_none() {
                // Valid lines all the same (an app may start before veil), but an app that
                // uses them now gets "connection refused": say so where a person reads it.
                eprintln!(
                    "veil env: no veil is running with data dir {}; these lines point at {proxy}, \
                     where `veil run` with the same settings will listen",
                    config.data.display()
                );
            }
            println!("# Point an app at veil: eval \"$(veil env)\"");
            println!("export HTTPS_PROXY={proxy}");
            println!("export https_proxy={proxy}");
            println!("export NO_PROXY=localhost,127.0.0.1,::1");
            println!("export no_proxy=localhost,127.0.0.1,::1");
            match &ca.bundle {
                Some(bundle) => {
                    println!(
                        "# System roots + veil's CA (these variables replace a client's trust store)."
                    );
                    println!("export SSL_CERT_FILE={}", bundle.display());
                    println!("export REQUESTS_CA_BUNDLE={}", bundle.display());
                    println!("export CURL_CA_BUNDLE={}", bundle.display());
                    // botocore reads its own variable, not the ones above.
                    println!("export AWS_CA_BUNDLE={}", bundle.display());
                }
                None => println!(
                    "# No trust bundle next to the CA yet (veil run writes it): SSL_CERT_FILE & co. left unset."
                ),
            }
            println!(
                "# Node: NODE_USE_ENV_PROXY=1 makes fetch and http(s) use HTTPS_PROXY (Node >= 22.21 or 24.5;"
            );
            println!(
                "# older Node ignores it: use undici's EnvHttpProxyAgent or gateway mode, see the README)."
            );
            println!("export NODE_USE_ENV_PROXY=1");
            println!("# Node adds this to its built-in roots.");
            println!("export NODE_EXTRA_CA_CERTS={}", ca.cert.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The CA apps must trust, as `veil env` and `veil ca path` report it.
struct FoundCa {
    /// The CA certificate (absolute).
    cert: PathBuf,
    /// The trust bundle, when it exists.
    bundle: Option<PathBuf>,
    /// The running veil's proxy address, when one was asked.
    proxy: Option<String>,
}

/// The running veil's CA (through its control socket), else the one in `--keys`. Creates
/// nothing (veil#13: `veil env` in an app's directory used to create a second CA there, and
/// the app then failed TLS against the veil that was running): with neither, an error that
/// says how to start veil.
fn find_ca(config: &Config) -> anyhow::Result<FoundCa> {
    let dirs = seal::StoreDirs::from_config(config, None);
    if let Some(veil) = operator::running(&dirs)? {
        let ca = operator::block(veil.ca())??;
        return Ok(FoundCa {
            cert: PathBuf::from(ca.cert),
            bundle: Some(PathBuf::from(ca.bundle)),
            proxy: Some(ca.proxy),
        });
    }
    let cert = config.keys.join(crate::proxy::ca::CA_CERT_FILE);
    if !cert.is_file() {
        anyhow::bail!(
            "no veil is running with data dir {} and there is no CA in {}; start veil first \
             (`veil run --data {} --keys {}` creates the CA), or pass the --data/--keys of the veil \
             your apps use",
            config.data.display(),
            config.keys.display(),
            config.data.display(),
            config.keys.display()
        );
    }
    let bundle = config.keys.join(crate::server::CA_BUNDLE_FILE);
    Ok(FoundCa {
        cert: absolute(&cert),
        bundle: bundle.is_file().then(|| absolute(&bundle)),
        proxy: None,
    })
}

fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn run(args: RunArgs, global: &GlobalArgs) -> anyhow::Result<ExitCode> {
    let config = args.config(global)?;
    let prepared = crate::server::Prepared::load(config.clone())?;
    let ca_path = absolute(prepared.ca.cert_path());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (running, done) = crate::server::start(prepared, signal::shutdown_signal()?).await?;
        let mut facts = startup::Facts::new(
            &config,
            running.addr,
            running.admin_addr,
            &ca_path,
            running.rules.current().digest(),
            &running.control,
        );
        facts.metrics = running.metrics_addr;
        for line in startup::startup_lines(&facts) {
            tracing::info!("{line}");
        }
        for line in startup::startup_warnings(&facts) {
            tracing::warn!("{line}");
        }
        if cfg!(feature = "forward-only") {
            tracing::warn!("{FORWARD_ONLY_WARNING}");
        }
        done.await?;
        tracing::info!("{}", startup::shutdown_line(&facts, &running.counters));
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dirs_follow_xdg_unless_the_cwd_is_a_project() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                vars.iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| std::ffi::OsString::from(v))
            }
        };
        let xdg = env(&[("XDG_DATA_HOME", "/x"), ("HOME", "/h")]);
        assert_eq!(
            default_dirs(false, xdg),
            ("/x/veil/keys".into(), "/x/veil/data".into())
        );
        assert_eq!(
            default_dirs(true, xdg),
            ("keys".into(), "data".into()),
            "a project dir keeps ./keys"
        );
        // A relative XDG_DATA_HOME is ignored, as the spec says.
        let home = env(&[("XDG_DATA_HOME", "rel"), ("HOME", "/h")]);
        assert_eq!(
            default_dirs(false, home),
            (
                "/h/.local/share/veil/keys".into(),
                "/h/.local/share/veil/data".into()
            )
        );
        assert_eq!(
            default_dirs(false, env(&[])),
            ("keys".into(), "data".into())
        );
    }
}
