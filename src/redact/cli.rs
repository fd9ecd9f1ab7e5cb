//! # CLI glue for the rules engine: `veil rules check|test` and `veil decrypt`.
//!
//! Only argument types and thin runners live here; the binary's `cli.rs` wires them in:
//! ```ignore
//! #[derive(clap::Subcommand)]
//! enum Command {
//!     #[command(subcommand)]
//!     Rules(veil::redact::cli::RulesCommand),
//!     Decrypt(veil::redact::cli::DecryptArgs),
//! }
//! // Command::Rules(c) => veil::redact::cli::run_rules(c, &keys_dir),
//! // Command::Decrypt(a) => veil::redact::cli::run_decrypt(a, &config.keys),
//! ```

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

use super::{CompiledRules, ScopeKey, Target, decrypt_field};
use crate::keys::{KeyError, KeyId, Keyring, MasterKey};

/// `veil rules …`
#[derive(Debug, clap::Subcommand)]
pub enum RulesCommand {
    /// Compile a rules file: exit 0, or print the first error as FILE:LINE:COL and exit 1.
    Check {
        /// The rules file.
        file: PathBuf,
    },
    /// Redact a JSON body read from stdin; print the result and what matched which detector.
    Test {
        /// The rules file.
        file: PathBuf,
        /// Provider whose default host and route select the scope: openai, anthropic, gemini.
        #[arg(long)]
        provider: Option<String>,
        /// Host for scope selection (overrides the provider's).
        #[arg(long)]
        host: Option<String>,
        /// Route (request path) for scope selection (overrides the provider's).
        #[arg(long)]
        route: Option<String>,
        /// Feature tag (`x-veil-feature`) for scope selection.
        #[arg(long)]
        feature: Option<String>,
        /// Which document stdin holds.
        #[arg(long, value_enum, default_value = "request")]
        target: TargetArg,
    },
}

/// `--target` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TargetArg {
    /// A raw request body.
    Request,
    /// A raw response body.
    Response,
    /// `gen_ai.input.messages` JSON.
    InputMessages,
    /// `gen_ai.output.messages` JSON.
    OutputMessages,
    /// `gen_ai.system_instructions` JSON.
    SystemInstructions,
}

impl From<TargetArg> for Target {
    fn from(t: TargetArg) -> Target {
        match t {
            TargetArg::Request => Target::Request,
            TargetArg::Response => Target::Response,
            TargetArg::InputMessages => Target::InputMessages,
            TargetArg::OutputMessages => Target::OutputMessages,
            TargetArg::SystemInstructions => Target::SystemInstructions,
        }
    }
}

/// `veil decrypt VALUE` (the keys dir is the global `--keys`, or `VEIL_MASTER_KEY`).
#[derive(Debug, clap::Args)]
pub struct DecryptArgs {
    /// An `enc:v1:<key id>:<data>` value from a record.
    pub value: String,
}

/// Keys for compiling: the real ones when present (so `rules test` shows the pseudonyms
/// production would), else a throwaway key (`rules check` does not need real ones).
fn keys_or_ephemeral(dir: &Path) -> anyhow::Result<(Keyring, bool)> {
    match Keyring::load(dir) {
        Ok(k) => Ok((k, true)),
        Err(KeyError::Missing(_)) => Ok((Keyring::single(MasterKey::generate(KeyId(1))), false)),
        Err(e) => Err(e.into()),
    }
}

/// Runs `veil rules …`. `keys_dir` is the configured keys dir.
pub fn run_rules(cmd: RulesCommand, keys_dir: &Path) -> anyhow::Result<ExitCode> {
    match cmd {
        RulesCommand::Check { file } => {
            let (keys, _) = keys_or_ephemeral(keys_dir)?;
            match CompiledRules::load(&file, &keys) {
                Ok(r) => {
                    println!("{}: ok (digest {})", file.display(), r.digest());
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("{e}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        RulesCommand::Test {
            file,
            provider,
            host,
            route,
            feature,
            target,
        } => {
            let (keys, real) = keys_or_ephemeral(keys_dir)?;
            if !real {
                eprintln!(
                    "note: no keys in {}; pseudonyms and hashes use a throwaway key",
                    keys_dir.display()
                );
            }
            let rules = match CompiledRules::load(&file, &keys) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("{e}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let mut input = String::new();
            std::io::stdin()
                .read_to_string(&mut input)
                .context("reading stdin")?;
            let body: Value = serde_json::from_str(&input).context("stdin is not JSON")?;
            let (out, table) = test_report(
                &rules,
                body,
                provider.as_deref(),
                host.as_deref(),
                route.as_deref(),
                feature.as_deref(),
                target.into(),
            )?;
            println!("{out}");
            print!("{table}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Redacts `body` and renders the output plus a match table (the testable core of
/// `rules test`).
fn test_report(
    rules: &CompiledRules,
    body: Value,
    provider: Option<&str>,
    host: Option<&str>,
    route: Option<&str>,
    feature: Option<&str>,
    target: Target,
) -> anyhow::Result<(String, String)> {
    let (p_host, p_route) = match provider {
        None => (None, None),
        Some("openai") => (Some("api.openai.com"), Some("/v1/chat/completions")),
        Some("anthropic") => (Some("api.anthropic.com"), Some("/v1/messages")),
        Some("gemini") => (Some("generativelanguage.googleapis.com"), None),
        Some(p) => anyhow::bail!("unknown provider {p:?} (openai, anthropic, gemini)"),
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .map(str::to_string);
    let key = ScopeKey {
        host: host.or(p_host),
        route: route.or(p_route),
        model: model.as_deref(),
        feature,
    };
    let scope = rules.scope_for(&key);

    let mut rows = Vec::new();
    collect_matches(&body, &mut String::from("$"), scope, &mut rows);
    let mut redacted = body;
    let counts = rules.redact_json(&mut redacted, target, scope);

    let mut t = String::new();
    writeln!(
        t,
        "\nscope: {}   rules digest: {}",
        scope.name(),
        rules.digest()
    )?;
    writeln!(t, "{:<40} {:<22} match", "field", "detector")?;
    for (path, label, value) in &rows {
        writeln!(t, "{path:<40} {label:<22} {value:?}")?;
    }
    writeln!(t, "\nredactions recorded: {}", counts.total())?;
    for (label, n) in counts.iter() {
        writeln!(t, "  {label:<22} {n}")?;
    }
    Ok((serde_json::to_string_pretty(&redacted)?, t))
}

fn collect_matches(
    v: &Value,
    path: &mut String,
    scope: &super::Scope,
    rows: &mut Vec<(String, String, String)>,
) {
    match v {
        Value::String(s) => {
            let mut found = Vec::new();
            scope.scanner().find(s, &mut found);
            for f in found {
                rows.push((
                    path.clone(),
                    scope.scanner().label(f.detector).to_string(),
                    s[f.start..f.end].to_string(),
                ));
            }
        }
        Value::Object(m) => {
            for (k, c) in m {
                let len = path.len();
                path.push('.');
                path.push_str(k);
                collect_matches(c, path, scope, rows);
                path.truncate(len);
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                let len = path.len();
                let _ = write!(path, "[{i}]");
                collect_matches(c, path, scope, rows);
                path.truncate(len);
            }
        }
        _ => {}
    }
}

/// Runs `veil decrypt`: prints the plaintext of one encrypted field.
pub fn run_decrypt(args: DecryptArgs, keys_dir: &Path) -> anyhow::Result<ExitCode> {
    let keys = Keyring::load(keys_dir)?;
    match decrypt_field(&args.value, &keys) {
        Ok(p) => {
            println!("{p}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("cannot decrypt: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Debug, clap::Subcommand)]
    enum Cmd {
        #[command(subcommand)]
        Rules(RulesCommand),
        Decrypt(DecryptArgs),
    }

    #[test]
    fn arguments_parse() {
        let c = Cli::try_parse_from([
            "veil",
            "rules",
            "test",
            "r.toml",
            "--provider",
            "openai",
            "--feature",
            "hr",
        ])
        .unwrap();
        assert!(
            matches!(c.cmd, Cmd::Rules(RulesCommand::Test { ref provider, .. }) if provider.as_deref() == Some("openai"))
        );
        let c = Cli::try_parse_from(["veil", "decrypt", "enc:v1:k1:x"]).unwrap();
        assert!(matches!(c.cmd, Cmd::Decrypt(DecryptArgs { ref value }) if value == "enc:v1:k1:x"));
        assert!(Cli::try_parse_from(["veil", "rules", "check"]).is_err());
    }

    #[test]
    fn check_exit_codes_and_decrypt() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.toml");
        std::fs::write(&good, "version = 1\n").unwrap();
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "version = 1\ndefault = \"nope\"\n").unwrap();
        let k = dir.path().join("keys");
        assert_eq!(
            run_rules(RulesCommand::Check { file: good }, &k).unwrap(),
            ExitCode::SUCCESS
        );
        assert_eq!(
            run_rules(RulesCommand::Check { file: bad }, &k).unwrap(),
            ExitCode::FAILURE
        );

        let keys = Keyring::load_or_create(&k).unwrap();
        let r = CompiledRules::from_str("version = 1\ndefault = \"encrypt\"\n", &keys).unwrap();
        let mut v = serde_json::json!({"a": "secret"});
        r.redact_json(&mut v, Target::Request, r.base_scope());
        let value = v["a"].as_str().unwrap().to_string();
        assert_eq!(
            run_decrypt(DecryptArgs { value }, &k).unwrap(),
            ExitCode::SUCCESS
        );
        assert_eq!(
            run_decrypt(
                DecryptArgs {
                    value: "enc:v1:k1:AAAA".into()
                },
                &k
            )
            .unwrap(),
            ExitCode::FAILURE
        );
    }

    #[test]
    fn test_report_shows_redacted_output_and_matches() {
        let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [9; 32]));
        let r = CompiledRules::from_str(include_str!("../../rules/default.toml"), &keys).unwrap();
        let body = serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": "I am bob@example.com"}]});
        let (out, table) =
            test_report(&r, body, Some("openai"), None, None, None, Target::Request).unwrap();
        assert!(
            out.contains("I am [EMAIL]") && !out.contains("bob@"),
            "{out}"
        );
        assert!(
            table.contains("$.messages[0].content")
                && table.contains("EMAIL")
                && table.contains("bob@example.com"),
            "{table}"
        );
        assert!(
            test_report(
                &r,
                serde_json::json!({}),
                Some("nope"),
                None,
                None,
                None,
                Target::Request
            )
            .is_err()
        );
    }
}
