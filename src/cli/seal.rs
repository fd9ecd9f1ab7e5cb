//! # Seal CLI: `unseal`, `forget`, `purge`, `keys rotate|rewrap`, `compact`.
//!
//! The operator's end of the flow: it reads the sealed store ([`crate::seal`]) directly or
//! through a running veil's admin API ([`crate::admin`]), and nothing else reads it. Owns the
//! clap arguments of the operator commands on the sealed store, what they print and their
//! exit codes. What they act on is an [`Operator`]: the running veil's control socket
//! (`<data>/veil.sock`) when one runs with this data dir, a remote veil's TCP admin API with
//! `--admin ADDR` and the admin token (`VEIL_ADMIN_TOKEN` or `<keys>/admin.token`), else the
//! store opened directly. None working is a clear error that names the fix.
//! It never touches the proxy, the rules or OTLP.
//!
//! Every `run_*` returns `Ok(ExitCode)` (0 success, 1 when something asked for was not found,
//! 2 when a destructive command failed: it then prints exactly what was destroyed and what was
//! not) or an error whose `{:#}` display is meant for the operator.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};

use super::operator::{Failure, Forgot, Operator, Unsealed, block, running};
use crate::config::Config;
use crate::exchange::ExchangeId;
use crate::export::erase::Erased;
use crate::keys::Keyring;

/// Where the sealed store lives and how to reach a running veil that holds it.
#[derive(Debug, Clone)]
pub struct StoreDirs {
    /// Data dir (`<data>/sealed/` is the store).
    pub data: PathBuf,
    /// Keys dir (master keys, admin token).
    pub keys: PathBuf,
    /// `--admin ADDR`: a (remote) veil's TCP admin API, used instead of the local store and
    /// control socket.
    pub admin: Option<SocketAddr>,
    /// The config's `admin_listen`: tried when a veil holds the store but its control socket
    /// does not answer.
    pub admin_listen: Option<SocketAddr>,
    /// Configured retention (default for `purge`).
    pub retention: Option<Duration>,
    /// Records (traces or logs) go to an OTLP collector (the config's `otlp_endpoint` or the
    /// `OTEL_EXPORTER_OTLP_*` variables): a forget made here reports the request ids not
    /// found in the spool as delivered there. True also when those settings do not parse
    /// (the receipt then errs on the side of "not reached").
    pub collector: bool,
}

impl StoreDirs {
    /// From the resolved config and the `--admin` flag.
    pub fn from_config(cfg: &Config, admin: Option<SocketAddr>) -> Self {
        StoreDirs {
            data: cfg.data.clone(),
            keys: cfg.keys.clone(),
            admin,
            admin_listen: cfg.admin_listen,
            retention: cfg.retention,
            collector: sends_records_to_a_collector(cfg),
        }
    }
}

/// Whether `veil run` with this config sends traces or logs to an OTLP collector.
fn sends_records_to_a_collector(cfg: &Config) -> bool {
    use crate::export::{Destination, ExporterSettings, Signal};
    match ExporterSettings::resolve(cfg.otlp_endpoint.as_deref(), cfg.data.clone(), &|k| {
        std::env::var(k).ok()
    }) {
        Ok(s) => [Signal::Traces, Signal::Logs]
            .iter()
            .any(|sig| matches!(s.signal(*sig).destination, Destination::Otlp(_))),
        Err(_) => true,
    }
}

/// The sealed-store subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum SealCommand {
    /// Decrypt one sealed exchange and print it as JSON (audited).
    Unseal(UnsealArgs),
    /// Destroy sealed exchanges by request ID or by user (crypto-shredding, with receipts).
    Forget(ForgetArgs),
    /// Destroy sealed exchanges older than a duration.
    Purge(PurgeArgs),
    /// Master key management.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Reclaim disk space left by forgotten exchanges.
    Compact(AdminArg),
}

/// `--admin ADDR`, shared by every subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminArg {
    /// TCP admin API of a (remote) veil, with the admin token; without it, the veil running
    /// with --data is found by its control socket (<data>/veil.sock).
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<SocketAddr>,
}

/// `veil unseal ID [--raw]`.
#[derive(Debug, Clone, clap::Args)]
pub struct UnsealArgs {
    /// The request ID (`x-veil-request-id`).
    pub id: String,
    /// Print the captured bodies (request, then response) as they crossed the wire instead of JSON.
    #[arg(long)]
    pub raw: bool,
    /// Why you are reading it (recorded in the audit log).
    #[arg(long, default_value = "operator request")]
    pub reason: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub admin: AdminArg,
}

/// `veil forget ID… | --user USER [--reason R]`.
#[derive(Debug, Clone, clap::Args)]
pub struct ForgetArgs {
    /// Request IDs to forget.
    #[arg(required_unless_present = "user", conflicts_with = "user")]
    pub ids: Vec<String>,
    /// Forget every exchange of this raw user ID (pseudonymized here, never stored or logged).
    #[arg(long)]
    pub user: Option<String>,
    /// Why (recorded in the receipts and the audit log).
    #[arg(long, default_value = "deletion request")]
    pub reason: String,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub admin: AdminArg,
}

/// `veil purge [--older-than 30d]`.
#[derive(Debug, Clone, clap::Args)]
pub struct PurgeArgs {
    /// Age limit (`30d`, `12h`); default: the configured `retention`.
    #[arg(long, value_name = "DURATION", value_parser = crate::config::parse_duration)]
    pub older_than: Option<Duration>,
    /// List what would be purged (`would purge ID`) and destroy nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub admin: AdminArg,
}

/// `veil keys …`.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum KeysCommand {
    /// Add a new master key; new writes use it, older ones stay readable.
    Rotate(AdminArg),
    /// Re-wrap every stored data key under the newest master key.
    Rewrap(AdminArg),
}

/// Runs one subcommand against `cfg`.
pub fn run(cmd: &SealCommand, cfg: &Config) -> anyhow::Result<ExitCode> {
    match cmd {
        SealCommand::Unseal(a) => run_unseal(a, &StoreDirs::from_config(cfg, a.admin.admin)),
        SealCommand::Forget(a) => run_forget(a, &StoreDirs::from_config(cfg, a.admin.admin)),
        SealCommand::Purge(a) => run_purge(a, &StoreDirs::from_config(cfg, a.admin.admin)),
        SealCommand::Keys(KeysCommand::Rotate(a)) => {
            run_keys_rotate(&StoreDirs::from_config(cfg, a.admin))
        }
        SealCommand::Keys(KeysCommand::Rewrap(a)) => {
            run_keys_rewrap(&StoreDirs::from_config(cfg, a.admin))
        }
        SealCommand::Compact(a) => run_compact(&StoreDirs::from_config(cfg, a.admin)),
    }
}

/// A request id given on the command line; a malformed one is a usage error (exit 2).
fn parse_id(s: &str) -> anyhow::Result<ExchangeId> {
    s.parse::<ExchangeId>()
        .map_err(|e| anyhow::Error::new(super::BadArgs(e.to_string())))
}

/// `veil unseal ID [--raw]`.
pub fn run_unseal(args: &UnsealArgs, dirs: &StoreDirs) -> anyhow::Result<ExitCode> {
    let id = parse_id(&args.id)?;
    let unsealed: Unsealed = Operator::open(dirs)?.unseal(id, &args.reason)?;
    if args.raw {
        unsealed.write_raw(&mut std::io::stdout().lock())?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("{}", serde_json::to_string_pretty(&unsealed.view())?);
    Ok(ExitCode::SUCCESS)
}

/// What a failed destructive command did, for the operator (veil#10: a purge on a full disk
/// reported only "failed"). IDs found unknown before the failure to stderr as `unknown ID`;
/// destroyed IDs to stdout like on success (`<verb> ID`); IDs receipted but not yet shredded
/// too, marked; untouched ones to stderr as `NOT <verb> ID`; then the error and the counts.
/// Exit code 2.
fn report_failure(verb: &str, f: &Failure) -> ExitCode {
    for id in &f.unknown {
        eprintln!("unknown {id} (never sealed, or already forgotten)");
    }
    for id in &f.destroyed {
        println!("{verb} {id}");
    }
    for id in &f.pending {
        println!(
            "{verb} {id} (receipt written, no longer readable; shredding its data key completes when the store recovers)"
        );
    }
    for id in &f.not_destroyed {
        eprintln!("NOT {verb} {id}");
    }
    eprintln!("error: {}", f.error);
    eprintln!(
        "{} destroyed, {} receipted with shredding pending, {} NOT destroyed (still sealed, no receipt)",
        f.destroyed.len(),
        f.pending.len(),
        f.not_destroyed.len()
    );
    ExitCode::from(2)
}

/// `veil forget ID… | --user USER`. Prints `forgotten ID` per exchange destroyed now and
/// `already forgotten ID` per one destroyed before (forgetting is idempotent), then the
/// receipt ([`print_receipt`]). Exits 0 when every ID was forgotten now or before; 1 when any
/// ID was never sealed here (the known ones are still forgotten), or `--user` found no
/// exchange and no earlier forget of that user; 2 when the forget failed (what was and was
/// not destroyed is printed).
pub fn run_forget(args: &ForgetArgs, dirs: &StoreDirs) -> anyhow::Result<ExitCode> {
    let op = Operator::open(dirs)?;
    if let Some(user) = &args.user {
        let (pseudonym, (ids, already, exports)) = match op.forget_user(user, &args.reason)? {
            (p, Ok(r)) => (p, r),
            (p, Err(f)) => {
                eprintln!("forgetting the exchanges of user {p} failed");
                return Ok(report_failure("forgotten", &f));
            }
        };
        for id in &ids {
            println!("forgotten {id}");
        }
        // Also when nothing is left in the store: the user's spooled records may be.
        let exports =
            exports.or_else(|| op.erase_local(dirs, ids.clone(), Some(pseudonym.clone())));
        if ids.is_empty() {
            let failed = print_exports_receipt(exports.as_ref(), false, dirs);
            if already {
                println!("already forgotten: user {pseudonym} (nothing of it is left)");
                return Ok(failed.unwrap_or(ExitCode::SUCCESS));
            }
            eprintln!(
                "no exchanges for user {pseudonym} (no identity source ever named this user, or its exchanges were purged)"
            );
            return Ok(failed.unwrap_or(ExitCode::from(1)));
        }
        print_receipt(ids.len());
        let failed = print_exports_receipt(exports.as_ref(), true, dirs);
        print_datasets(&dirs.data, &ids);
        eprintln!("forgot {} exchange(s) of user {pseudonym}", ids.len());
        return Ok(failed.unwrap_or(ExitCode::SUCCESS));
    }
    let ids = args
        .ids
        .iter()
        .map(|s| parse_id(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let (outcomes, exports) = match op.forget(&ids, &args.reason)? {
        Ok(o) => o,
        Err(f) => return Ok(report_failure("forgotten", &f)),
    };
    // The ids forgotten now or before (a spooled copy may have outlived an earlier forget).
    let known: Vec<String> = outcomes
        .iter()
        .filter(|(_, f)| *f != Forgot::Unknown)
        .map(|(id, _)| id.clone())
        .collect();
    let (mut now, mut unknown) = (0, 0);
    for (id, forgot) in outcomes {
        match forgot {
            Forgot::Now => {
                println!("forgotten {id}");
                now += 1;
            }
            Forgot::Already => println!("already forgotten {id}"),
            Forgot::Unknown => {
                eprintln!("unknown {id} (no exchange with this id was ever sealed here)");
                unknown += 1;
            }
        }
    }
    if now > 0 {
        print_receipt(now);
    }
    let exports = exports.or_else(|| {
        (!known.is_empty())
            .then(|| op.erase_local(dirs, known, None))
            .flatten()
    });
    let failed = print_exports_receipt(exports.as_ref(), now > 0, dirs);
    let asked: Vec<String> = ids.iter().map(ToString::to_string).collect();
    print_datasets(&dirs.data, &asked);
    if let Some(failed) = failed {
        return Ok(failed);
    }
    Ok(if unknown > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The receipt of a forget that destroyed `n` exchanges (listed above it as `forgotten ID`):
/// where they were removed and where this command cannot reach. Format documented in the
/// README's operator section.
fn print_receipt(n: usize) {
    println!("receipt: {n} exchange(s)");
    println!(
        "  removed: sealed store (data keys shredded, frames zeroed, index entries of every user pseudonym; receipts.jsonl and the audit log record it)"
    );
    println!(
        "  removed: ledger (content rows deleted, every user pseudonym cleared, WAL wiped; the rows the bill needs stay, marked forgotten)"
    );
}

/// The receipt's lines for the exporter's copies ([`crate::export::erase`]): what was removed
/// from the spool and the records files, and the request ids whose records had already been
/// delivered to the collector. Printed after [`print_receipt`] (`always`), or alone when it
/// removed something though nothing was destroyed in the store now (an id or user forgotten
/// before). `None` from a veil that could not be asked (a bare admin API): said so.
/// Returns exit code 2 when a file could not be rewritten (named, with what is left in it).
fn print_exports_receipt(
    exports: Option<&Erased>,
    always: bool,
    dirs: &StoreDirs,
) -> Option<ExitCode> {
    // The data dir the erasing veil uses: this one's, unless a remote veil was asked.
    let data = match dirs.admin {
        None => dirs.data.display().to_string(),
        Some(_) => "<its data dir>".to_string(),
    };
    let Some(e) = exports else {
        if always {
            println!(
                "  not reached: the exporter's copies (spool, records files, collector): this veil did not report them; forget again with veil running with --data"
            );
        }
        return None;
    };
    let removed = e.spool_records + e.records_removed > 0;
    if always || removed || !e.not_reached.is_empty() {
        println!(
            "  removed: spool {data}/spool/ (batches not yet sent): {} record(s) in {} file(s)",
            e.spool_records, e.spool_files
        );
        println!(
            "  removed: records files {data}/records/*.jsonl: {} record(s) in {} line(s)",
            e.records_removed, e.records_lines
        );
        if e.not_reached.is_empty() {
            println!(
                "  not reached: nothing sent to the OTLP collector (none of these exchanges had been delivered to it)"
            );
        } else {
            println!(
                "  not reached: {} exchange(s) already delivered to the OTLP collector, act on them downstream: {}",
                e.not_reached.len(),
                e.not_reached.join(" ")
            );
        }
    }
    if e.errors.is_empty() {
        return None;
    }
    for err in &e.errors {
        eprintln!("NOT removed (still on disk): {err}");
    }
    eprintln!("forget again once the cause is fixed: erasing the exporter's copies is idempotent");
    Some(ExitCode::from(2))
}

/// The dataset manifests (`veil export`) that named any of the forgotten `ids`: `dataset
/// MANIFEST names N forgotten exchange(s): ID…` per manifest, on stdout after the receipt
/// (the forget cannot reach a dataset file: the operator acts on it). A registered manifest
/// that cannot be read is said on stderr, since whether it named an id is unknown.
fn print_datasets(data: &std::path::Path, ids: &[String]) {
    use crate::ledger::dataset::manifest::{Named, naming};
    match naming(data, ids) {
        Ok(found) => {
            for n in found {
                match n {
                    Named::Ids {
                        manifest,
                        output,
                        ids,
                    } => println!(
                        "  not reached: dataset {} (manifest {}) names {} forgotten exchange(s): {}; regenerate or delete it",
                        output.as_deref().unwrap_or("written to stdout"),
                        manifest.display(),
                        ids.len(),
                        ids.join(" ")
                    ),
                    Named::Unreadable { manifest, reason } => eprintln!(
                        "note: dataset manifest {} cannot be read ({reason}): check by hand whether its dataset held these exchanges",
                        manifest.display()
                    ),
                }
            }
        }
        Err(e) => eprintln!(
            "note: the dataset registry in {} cannot be read ({e}): check by hand which exported datasets held these exchanges",
            data.join(crate::ledger::dataset::manifest::DIR).display()
        ),
    }
}

/// `veil purge [--older-than D] [--dry-run]` (default: configured `retention`): prints
/// `purged ID` for every exchange destroyed, then a count; exits 2 when the purge failed
/// part-way (what was and was not destroyed is printed). With `--dry-run`, prints `would
/// purge ID` and a count and destroys nothing.
pub fn run_purge(args: &PurgeArgs, dirs: &StoreDirs) -> anyhow::Result<ExitCode> {
    let older = args.older_than.or(dirs.retention).ok_or_else(|| {
        anyhow!("nothing to purge by: pass --older-than (e.g. 30d) or set retention in the config")
    })?;
    if args.dry_run {
        let ids = Operator::open(dirs)?.purge_preview(older)?;
        for id in &ids {
            println!("would purge {id}");
        }
        println!(
            "would purge {} exchange(s) older than {} (dry run: nothing destroyed)",
            ids.len(),
            super::startup::duration_words(older)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let ids = match Operator::open(dirs)?.purge(older)? {
        Ok(ids) => ids,
        Err(f) => return Ok(report_failure("purged", &f)),
    };
    for id in &ids {
        println!("purged {id}");
    }
    println!(
        "purged {} exchange(s) older than {}",
        ids.len(),
        super::startup::duration_words(older)
    );
    Ok(ExitCode::SUCCESS)
}

/// `veil compact`.
pub fn run_compact(dirs: &StoreDirs) -> anyhow::Result<ExitCode> {
    let v = Operator::open(dirs)?.compact()?;
    println!("{}", compact_words(&v));
    Ok(ExitCode::SUCCESS)
}

/// `veil compact`'s answer in words, like every other command's.
fn compact_words(v: &crate::admin::api::CompactResponse) -> String {
    if v.segments_removed == 0 && v.frames_moved == 0 {
        return "compacted: nothing to reclaim (no segment holds forgotten or purged exchanges)"
            .into();
    }
    let b = v.bytes_reclaimed;
    let size = match b {
        0..1024 => format!("{b} bytes"),
        1024..1_048_576 => format!("{:.1} KiB", b as f64 / 1024.0),
        _ => format!("{:.1} MiB", b as f64 / 1_048_576.0),
    };
    format!(
        "compacted: {} segment file(s) removed, {} live frame(s) moved, {size} reclaimed",
        v.segments_removed, v.frames_moved
    )
}

/// `veil keys rotate`: adds a key to `<keys>/master.keys`. A running veil (reachable through
/// the admin API) is told to reload; otherwise the next start picks it up.
pub fn run_keys_rotate(dirs: &StoreDirs) -> anyhow::Result<ExitCode> {
    if std::env::var(crate::keys::MASTER_ENV).is_ok() {
        bail!(
            "the master keys come from {}: rotate by adding a `k<id>:<hex>` line to that variable",
            crate::keys::MASTER_ENV
        );
    }
    let mut ring = Keyring::load(&dirs.keys).context("cannot load the master keys")?;
    let id = ring.rotate();
    ring.save(&dirs.keys)
        .context("cannot save the master keys")?;
    println!(
        "new master key {id}: new seals use it; run `veil keys rewrap` to re-wrap older data keys"
    );
    let veil = match running(dirs) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("note: {e:#}; restart it to use {id}");
            None
        }
    };
    if let Some(c) = veil {
        match block(c.reload_keys())?.map_err(anyhow::Error::from) {
            Ok(_) => println!("the running veil ({}) reloaded its keys", c.endpoint),
            Err(e) => eprintln!(
                "note: could not tell a running veil to reload ({e:#}); restart it to use {id}"
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `veil keys rewrap`.
pub fn run_keys_rewrap(dirs: &StoreDirs) -> anyhow::Result<ExitCode> {
    let n = Operator::open(dirs)?.rewrap()?;
    println!("re-wrapped {n} data key(s) under the newest master key");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::admin::AdminToken;
    use crate::keys::pseudonymize_user;
    use crate::seal::tests::openai_chat;
    use crate::seal::{SealOptions, SealStore};

    #[test]
    fn compact_answers_in_words() {
        let words = |segments_removed, frames_moved, bytes_reclaimed| {
            compact_words(&crate::admin::api::CompactResponse {
                segments_removed,
                frames_moved,
                bytes_reclaimed,
            })
        };
        assert_eq!(
            words(0, 0, 0),
            "compacted: nothing to reclaim (no segment holds forgotten or purged exchanges)"
        );
        assert_eq!(
            words(2, 17, 3 * 1_048_576 / 2),
            "compacted: 2 segment file(s) removed, 17 live frame(s) moved, 1.5 MiB reclaimed"
        );
        assert!(words(1, 0, 900).ends_with(" 900 bytes reclaimed"));
    }

    /// Store dirs under `root` (`data/`, `keys/`), no admin API.
    pub(in crate::cli) fn dirs(root: &std::path::Path) -> StoreDirs {
        StoreDirs {
            data: root.join("data"),
            keys: root.join("keys"),
            admin: None,
            admin_listen: None,
            retention: None,
            collector: false,
        }
    }

    #[test]
    fn forget_unknown_exits_nonzero_and_known_zero() {
        let root = tempfile::tempdir().unwrap();
        let d = dirs(root.path());
        let ring = Keyring::load_or_create(&d.keys).unwrap();
        let user = pseudonymize_user(&ring, "carol");
        let ex = openai_chat();
        {
            let store = SealStore::open(&d.data, ring, SealOptions::default()).unwrap();
            store.seal_blocking(&ex, Some(&user)).unwrap();
        }
        let args = |ids: Vec<String>, user: Option<&str>| ForgetArgs {
            ids,
            user: user.map(str::to_string),
            reason: "test".into(),
            admin: AdminArg { admin: None },
        };
        let unknown = ExchangeId::new().to_string();
        assert_eq!(
            run_forget(&args(vec![unknown], None), &d).unwrap(),
            ExitCode::from(1)
        );
        assert_eq!(
            run_forget(&args(vec![], Some("carol")), &d).unwrap(),
            ExitCode::SUCCESS
        );
        // Forgetting again is not an error (veil#13), by id or by user; an id never sealed
        // stays one.
        assert_eq!(
            run_forget(&args(vec![ex.id.to_string()], None), &d).unwrap(),
            ExitCode::SUCCESS,
            "already forgotten by user"
        );
        assert_eq!(
            run_forget(&args(vec![], Some("carol")), &d).unwrap(),
            ExitCode::SUCCESS,
            "a user forgotten before"
        );
        assert_eq!(
            run_forget(&args(vec![], Some("never-seen")), &d).unwrap(),
            ExitCode::from(1),
            "a user never seen"
        );
        let audit = std::fs::read_to_string(d.data.join("audit.jsonl")).unwrap();
        assert!(audit.contains(&ex.id.to_string()));
        assert!(audit.contains(user.as_str()));
        assert!(!audit.contains("carol"), "raw user id in the audit log");
    }

    #[test]
    fn locked_store_without_admin_is_a_clear_error() {
        let root = tempfile::tempdir().unwrap();
        let d = dirs(root.path());
        let ring = Keyring::load_or_create(&d.keys).unwrap();
        let _held = SealStore::open(&d.data, ring, SealOptions::default()).unwrap();
        let err = run_compact(&d).expect_err("locked");
        let msg = format!("{err:#}");
        assert!(msg.contains("--admin"), "{msg}");
        let missing = dirs(&root.path().join("nowhere"));
        let err = run_compact(&missing).expect_err("no keys");
        assert!(format!("{err:#}").contains("no master key"), "{err:#}");
    }

    #[test]
    fn locked_store_goes_through_the_admin_api() {
        let root = tempfile::tempdir().unwrap();
        let mut d = dirs(root.path());
        let ring = Keyring::load_or_create(&d.keys).unwrap();
        let token = AdminToken::load_or_create(&d.keys).unwrap();
        let store = SealStore::open(
            &d.data,
            Keyring::load(&d.keys).unwrap(),
            SealOptions {
                keys_dir: Some(d.keys.clone()),
                ..Default::default()
            },
        )
        .unwrap();
        let dave = pseudonymize_user(&ring, "dave");
        let a = openai_chat();
        let b = openai_chat();
        store.seal_blocking(&a, None).unwrap();
        store.seal_blocking(&b, Some(&dave)).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        d.admin = Some(listener.local_addr().unwrap());
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        rt.spawn(crate::admin::serve(listener, store.clone(), token, async {
            let _ = rx.await;
        }));
        let unseal = UnsealArgs {
            id: a.id.to_string(),
            raw: false,
            reason: "test".into(),
            admin: AdminArg { admin: None },
        };
        assert_eq!(run_unseal(&unseal, &d).unwrap(), ExitCode::SUCCESS);
        let forget = ForgetArgs {
            ids: vec![a.id.to_string()],
            user: None,
            reason: "test".into(),
            admin: AdminArg { admin: None },
        };
        assert_eq!(run_forget(&forget, &d).unwrap(), ExitCode::SUCCESS);
        assert_eq!(
            run_forget(&forget, &d).unwrap(),
            ExitCode::SUCCESS,
            "already forgotten (veil#13)"
        );
        let by_user = ForgetArgs {
            ids: vec![],
            user: Some("dave".into()),
            reason: "test".into(),
            admin: AdminArg { admin: None },
        };
        assert_eq!(run_forget(&by_user, &d).unwrap(), ExitCode::SUCCESS);
        assert!(store.is_empty().unwrap());
        assert_eq!(run_keys_rotate(&d).unwrap(), ExitCode::SUCCESS);
        assert_eq!(store.keyring().current().id(), crate::keys::KeyId(2));
        assert_eq!(run_compact(&d).unwrap(), ExitCode::SUCCESS);
        // A wrong token is refused with a clear error.
        std::fs::write(d.keys.join(crate::admin::TOKEN_FILE), "nope").unwrap();
        let err = run_compact(&d).expect_err("wrong token");
        assert!(
            format!("{err:#}").contains("refused the admin token"),
            "{err:#}"
        );
        stop.send(()).unwrap();
        drop(rt);
    }

    #[test]
    fn json_view_has_text_and_wire_bytes() {
        let ex = openai_chat();
        let v = crate::admin::ExchangeView::of(&ex);
        assert!(v.request_body.text.as_deref().unwrap().contains("gpt-4o"));
        assert_eq!(
            v.response_body.wire_bytes().unwrap(),
            ex.response_body.bytes()
        );
        assert_eq!(v.outcome, crate::admin::OutcomeView::Complete {});
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["outcome"]["kind"], "complete");
    }
}
