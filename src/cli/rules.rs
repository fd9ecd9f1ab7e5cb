//! # CLI glue for the rules engine: `veil rules check|test` and `veil decrypt`.
//!
//! Part of the operator boundary (`src/cli/`): argument types and thin runners over
//! [`crate::redact`] and [`crate::record`]; `cli/mod.rs` wires them into the `veil` command.
//!
//! `rules test` previews exactly what ships: it wraps its input in an
//! [`Exchange`], parses it with the provider parser and builds the
//! record with [`record::build`], the very calls `veil run` makes. Only
//! `--raw` redacts the document as it is (the older mode, for checking a JSON path against a
//! raw body). The redacted output goes to stdout alone, so it can be piped; the match report
//! goes to stderr with every matched value shortened (`sk-pr…ABCD`), because a CI log is not
//! a safe place for the secrets a rules test is about. `--show-matches` prints them whole.

use std::fmt::Write as _;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use bytes::Bytes;
use serde_json::{Map, Value};

use crate::exchange::providers;
use crate::exchange::{
    self, Body, Exchange, ExchangeId, Headers, Outcome, ParseOptions, Pricing, Route, Timings,
    Upstream,
};
use crate::keys::{KeyError, KeyId, Keyring, MasterKey};
use crate::record::{self, Record};
use crate::redact::{CompiledRules, ScopeKey, Target, decrypt_field};

/// `veil rules …`
#[derive(Debug, clap::Subcommand)]
pub enum RulesCommand {
    /// Compile a rules file: exit 0, or print the first error as FILE:LINE:COL and exit 1.
    Check {
        /// The rules file.
        file: PathBuf,
    },
    /// Preview the record `veil run` would ship for a request read from stdin (and optionally
    /// its response): the redacted content on stdout, what matched which detector on stderr.
    Test {
        /// The rules file.
        file: PathBuf,
        /// Provider whose host and route the exchange is sent to, by its built-in gateway
        /// route name: openai (the default), anthropic, gemini (needs --route, which names the
        /// model), mistral, groq, openrouter, deepseek, xai.
        #[arg(long)]
        provider: Option<String>,
        /// Host the exchange is sent to (overrides the provider's).
        #[arg(long)]
        host: Option<String>,
        /// Route (request path) of the exchange (overrides the provider's).
        #[arg(long)]
        route: Option<String>,
        /// Feature tag (`x-veil-feature`) of the exchange.
        #[arg(long)]
        feature: Option<String>,
        /// The provider's response body (JSON, or a `text/event-stream` capture).
        #[arg(long, value_name = "FILE")]
        response: Option<PathBuf>,
        /// Redact stdin as a raw document under --target instead of building the record.
        #[arg(long)]
        raw: bool,
        /// Which document stdin holds (with --raw only; default: request).
        #[arg(long, value_enum, requires = "raw")]
        target: Option<TargetArg>,
        /// Print matched values whole in the report (default: `sk-pr…ABCD`).
        #[arg(long)]
        show_matches: bool,
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

/// Where `rules test` sends the exchange: host and route from `--provider`, each overridden
/// by `--host` / `--route`.
struct Destination<'a> {
    provider: Option<&'a str>,
    host: Option<&'a str>,
    route: Option<&'a str>,
    feature: Option<&'a str>,
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
            response,
            raw,
            target,
            show_matches,
        } => {
            let (keys, real) = keys_or_ephemeral(keys_dir)?;
            if !real {
                eprintln!(
                    "note: no master key in {}; pseudonyms and hashes use a throwaway key",
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
            let mut input = Vec::new();
            std::io::stdin()
                .read_to_end(&mut input)
                .context("reading stdin")?;
            let dest = Destination {
                provider: provider.as_deref(),
                host: host.as_deref(),
                route: route.as_deref(),
                feature: feature.as_deref(),
            };
            let (out, report) = if raw {
                let body: Value = serde_json::from_slice(&input).context("stdin is not JSON")?;
                test_report(
                    &rules,
                    body,
                    dest.provider,
                    dest.host,
                    dest.route,
                    dest.feature,
                    target.unwrap_or(TargetArg::Request).into(),
                    show_matches,
                )?
            } else {
                let response = match &response {
                    Some(p) => {
                        Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
                    }
                    None => None,
                };
                preview(&rules, input, response, &dest, show_matches)?
            };
            println!("{out}");
            eprint!("{report}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The host and chat route of `--provider NAME`, from the provider table: `NAME` is a built-in
/// gateway route, the host is its base's, the route its dialect's chat endpoint (`None` for
/// Gemini, whose route names the model: veil does not guess one).
fn provider_destination(name: &str) -> anyhow::Result<(&'static str, Option<&'static str>)> {
    let Some(info) = providers::by_gateway_name(name) else {
        let known: Vec<_> = providers::gateways().map(|g| g.name).collect();
        anyhow::bail!("unknown provider {name:?} ({})", known.join(", "));
    };
    let gateway = info.gateway.expect("invariant: found by its gateway route");
    Ok((gateway.host(), info.dialect.chat_route()))
}

/// The exchange `veil run` would hand the pipeline for this request (and response).
fn test_exchange(
    request: Vec<u8>,
    response: Option<Vec<u8>>,
    dest: &Destination<'_>,
) -> anyhow::Result<Exchange> {
    let name = dest.provider.unwrap_or("openai");
    let (p_host, p_route) = provider_destination(name)?;
    let Some(route) = dest.route.or(p_route) else {
        anyhow::bail!("--provider {name} needs --route /v1beta/models/MODEL:generateContent");
    };
    let body = |b: Vec<u8>| Body {
        wire_len: b.len() as u64,
        chunks: vec![Bytes::from(b)],
        truncated: false,
        content_encoding: None,
    };
    let json = ("content-type", "application/json");
    let (status, response_headers, response_body) = match response {
        Some(r) => {
            // What the provider would have said: a stream when it looks like one.
            let first = r.iter().find(|b| !b.is_ascii_whitespace());
            let content_type = if matches!(first, Some(b'{' | b'[')) {
                "application/json"
            } else {
                "text/event-stream"
            };
            let headers: Headers = [("content-type", content_type)].into_iter().collect();
            (Some(200), headers, body(r))
        }
        None => (None, Headers::new(), body(Vec::new())),
    };
    Ok(Exchange {
        id: ExchangeId::new(),
        started_at: SystemTime::now(),
        timings: Timings {
            end: Duration::ZERO,
            ..Timings::default()
        },
        client_addr: None,
        route: Route::Intercept,
        upstream: Upstream {
            scheme: "https".into(),
            host: dest.host.unwrap_or(p_host).to_string(),
            port: 443,
        },
        client_version: "HTTP/1.1".into(),
        method: "POST".into(),
        path: route.to_string(),
        request_headers: [json].into_iter().collect(),
        tags: dest
            .feature
            .map(|f| [("x-veil-feature", f)].into_iter().collect())
            .unwrap_or_default(),
        api_key_fingerprint: None,
        request_body: body(request),
        status,
        response_headers,
        response_body,
        outcome: Outcome::Complete,
        websocket: None,
    })
}

/// Builds the record of one test exchange and renders its content fields (stdout) and the
/// match report (stderr): the testable core of `rules test`.
fn preview(
    rules: &CompiledRules,
    request: Vec<u8>,
    response: Option<Vec<u8>>,
    dest: &Destination<'_>,
    show_matches: bool,
) -> anyhow::Result<(String, String)> {
    let ex = test_exchange(request, response, dest)?;
    let conv = exchange::parse(&ex, &ParseOptions::default(), &Pricing::builtin());
    let rec = record::build(&ex, &conv, rules);
    let scope = rules.scope_for(&record::scope_key(&ex, &conv));

    let mut rows = Vec::new();
    let mut walk = |name: &str, v: &Value| {
        collect_matches(v, &mut name.to_string(), scope, &mut rows);
    };
    walk("system_instructions", &conv.system_instructions_json());
    walk("input_messages", &conv.input_messages_json());
    walk("output_messages", &conv.output_messages_json());
    for (k, v) in &conv.params {
        walk(&format!("request_params.{k}"), v);
    }

    let mut t = String::new();
    writeln!(
        t,
        "scope: {}   rules digest: {}",
        scope.name(),
        rules.digest()
    )?;
    if let Some(e) = &conv.parse_error {
        writeln!(t, "note: {e}")?;
    }
    if let Some(d) = rec.content_dropped {
        writeln!(
            t,
            "note: content dropped ({d}): the redaction budget ran out"
        )?;
    }
    write_rows(&mut t, &rows, show_matches)?;
    let recorded = rec.redactions.values().sum::<u64>();
    writeln!(t, "\nredactions recorded: {recorded}")?;
    if recorded == 0 && !rows.is_empty() {
        writeln!(
            t,
            "  (the detectors match above, but the rules drop, hash or encrypt those fields \
             whole, so no value of them reaches the record: see the fields printed on stdout)"
        )?;
    }
    for (label, n) in &rec.redactions {
        writeln!(t, "  {label:<22} {n}")?;
    }
    Ok((serde_json::to_string_pretty(&content_fields(&rec))?, t))
}

/// The fields of a record that carry what the app or the provider wrote (content, free-text
/// parameters, labels, the user pseudonym), as they ship. Absent ones are left out.
fn content_fields(r: &Record) -> Value {
    let mut m = Map::new();
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            m.insert(k.to_string(), v);
        }
    };
    put("system_instructions", r.system_instructions.clone());
    put("input_messages", r.input_messages.clone());
    put("output_messages", r.output_messages.clone());
    put(
        "request_params",
        (!r.request_params.is_empty())
            .then(|| Value::Object(r.request_params.clone().into_iter().collect())),
    );
    put(
        "tool_names",
        (!r.tool_names.is_empty()).then(|| Value::from(r.tool_names.clone())),
    );
    let label = |s: &Option<String>| s.clone().map(Value::String);
    put("request_model", label(&r.request_model));
    put("response_model", label(&r.response_model));
    put("conversation_id", label(&r.conversation_id));
    put("feature", label(&r.feature));
    put("error_type", label(&r.error_type));
    put(
        "user_pseudonym",
        r.user_pseudonym
            .as_ref()
            .map(|p| Value::String(p.to_string())),
    );
    Value::Object(m)
}

/// A matched value as the report shows it by default: the first 5 and last 4 characters
/// (`sk-pr…ABCD`), enough to tell matches apart; 12 characters or fewer are masked whole,
/// since 9 of them would be most of the secret.
pub fn shorten(value: &str) -> String {
    let n = value.chars().count();
    if n <= 12 {
        return "*".repeat(n);
    }
    let head: String = value.chars().take(5).collect();
    let tail: String = value.chars().skip(n - 4).collect();
    format!("{head}…{tail}")
}

fn write_rows(
    t: &mut String,
    rows: &[(String, String, String)],
    show_matches: bool,
) -> std::fmt::Result {
    writeln!(t, "{:<40} {:<22} match", "field", "detector")?;
    for (path, label, value) in rows {
        if show_matches {
            writeln!(t, "{path:<40} {label:<22} {value:?}")?;
        } else {
            writeln!(t, "{path:<40} {label:<22} {:?}", shorten(value))?;
        }
    }
    Ok(())
}

/// Redacts `body` as a raw document and renders the output plus a match table (`--raw`).
#[allow(clippy::too_many_arguments)] // One per flag of `rules test --raw`; a struct would only rename them.
fn test_report(
    rules: &CompiledRules,
    body: Value,
    provider: Option<&str>,
    host: Option<&str>,
    route: Option<&str>,
    feature: Option<&str>,
    target: Target,
    show_matches: bool,
) -> anyhow::Result<(String, String)> {
    let (p_host, p_route) = match provider {
        None => (None, None),
        Some(p) => {
            let (host, route) = provider_destination(p)?;
            (Some(host), route)
        }
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
    write_rows(&mut t, &rows, show_matches)?;
    writeln!(t, "\nredactions recorded: {}", counts.total())?;
    for (label, n) in counts.iter() {
        writeln!(t, "  {label:<22} {n}")?;
    }
    Ok((serde_json::to_string_pretty(&redacted)?, t))
}

fn collect_matches(
    v: &Value,
    path: &mut String,
    scope: &crate::redact::Scope,
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
            eprintln!("veil decrypt: cannot decrypt: {e}");
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
    fn target_is_an_option_of_the_raw_mode_only() {
        let args = |extra: &[&str]| {
            let mut v = vec!["veil", "rules", "test", "r.toml"];
            v.extend_from_slice(extra);
            Cli::try_parse_from(v)
        };
        assert!(args(&["--target", "response"]).is_err());
        assert!(args(&["--raw", "--target", "response"]).is_ok());
        assert!(args(&["--response", "resp.json", "--show-matches"]).is_ok());
    }

    #[test]
    fn shorten_keeps_five_and_four_characters_and_masks_short_values_whole() {
        assert_eq!(shorten("sk-proj-abcdefghijklmnopABCD"), "sk-pr…ABCD");
        assert_eq!(shorten("bob@example.com"), "bob@e….com");
        assert_eq!(shorten("123456789012"), "************");
        assert_eq!(shorten("1234567890123"), "12345…0123");
        assert_eq!(shorten("ü".repeat(20).as_str()), "üüüüü…üüüü");
    }

    #[test]
    fn preview_is_the_record_that_ships_and_the_report_shortens_matches() {
        let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [9; 32]));
        let r = CompiledRules::from_str(include_str!("../../rules/default.toml"), &keys).unwrap();
        let request = serde_json::json!({"model": "gpt-4o", "user": "alice",
            "messages": [{"role": "user", "content": "I am bob@example.com"}]});
        let dest = Destination {
            provider: None,
            host: None,
            route: None,
            feature: Some("hr"),
        };
        let body = serde_json::to_vec(&request).unwrap();
        let (out, report) = preview(&r, body.clone(), None, &dest, false).unwrap();

        // The same record `veil run` builds for this exchange.
        let ex = test_exchange(body, None, &dest).unwrap();
        let conv = exchange::parse(&ex, &ParseOptions::default(), &Pricing::builtin());
        let shipped = record::build(&ex, &conv, &r);
        let out: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(out["input_messages"], shipped.input_messages.unwrap());
        assert_eq!(
            out["input_messages"][0]["parts"][0]["content"],
            "I am [EMAIL]"
        );
        assert_eq!(out["feature"], "hr");
        assert!(out["user_pseudonym"].as_str().unwrap().starts_with("u_"));
        assert!(
            report.contains("input_messages[0].parts[0].content")
                && report.contains("EMAIL")
                && report.contains("bob@e….com")
                && !report.contains("bob@example.com"),
            "{report}"
        );
        let (_, whole) =
            preview(&r, serde_json::to_vec(&request).unwrap(), None, &dest, true).unwrap();
        assert!(whole.contains("bob@example.com"), "{whole}");

        let gemini = Destination {
            provider: Some("gemini"),
            ..dest
        };
        assert!(preview(&r, b"{}".to_vec(), None, &gemini, false).is_err());
    }

    /// The record's labels that repeat (model names, feature) are remembered by the scope's
    /// memo of clean strings once found clean; ids (the response id) never are.
    #[test]
    fn a_record_remembers_its_clean_models_and_feature_but_not_its_ids() {
        let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [9; 32]));
        let r = CompiledRules::from_str(include_str!("../../rules/default.toml"), &keys).unwrap();
        let dest = Destination {
            provider: None,
            host: None,
            route: None,
            feature: Some("support-bot"),
        };
        let request = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
        let response = br#"{"id":"chatcmpl-Zq81","object":"chat.completion","model":"gpt-4o-mini-2024-07-18","choices":[{"index":0,"message":{"role":"assistant","content":"hello"},"finish_reason":"stop"}]}"#;
        let ex = test_exchange(request.to_vec(), Some(response.to_vec()), &dest).unwrap();
        let conv = exchange::parse(&ex, &ParseOptions::default(), &Pricing::builtin());
        let scope = r.base_scope();
        let labels = ["gpt-4o-mini", "gpt-4o-mini-2024-07-18", "support-bot"];
        assert!(labels.iter().all(|l| !scope.remembers(l)));
        for _ in 0..2 {
            let rec = record::build(&ex, &conv, &r);
            assert_eq!(rec.request_model.as_deref(), Some("gpt-4o-mini"));
            assert_eq!(
                rec.response_model.as_deref(),
                Some("gpt-4o-mini-2024-07-18")
            );
            assert_eq!(rec.feature.as_deref(), Some("support-bot"));
            assert_eq!(rec.response_id.as_deref(), Some("chatcmpl-Zq81"));
        }
        assert!(labels.iter().all(|l| scope.remembers(l)), "{labels:?}");
        assert!(!scope.remembers("chatcmpl-Zq81"));
    }

    #[test]
    fn provider_names_a_gateway_route_of_the_provider_table() {
        let dest = |p| Destination {
            provider: Some(p),
            host: None,
            route: None,
            feature: None,
        };
        let ex = test_exchange(b"{}".to_vec(), None, &dest("anthropic")).unwrap();
        assert_eq!(
            (ex.upstream.host.as_str(), ex.path.as_str()),
            ("api.anthropic.com", "/v1/messages")
        );
        let ex = test_exchange(b"{}".to_vec(), None, &dest("mistral")).unwrap();
        assert_eq!(
            (ex.upstream.host.as_str(), ex.path.as_str()),
            ("api.mistral.ai", "/v1/chat/completions")
        );
        let err = test_exchange(b"{}".to_vec(), None, &dest("nope"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"nope\" (openai, anthropic, gemini,"),
            "{err}"
        );
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
        let (out, table) = test_report(
            &r,
            body,
            Some("openai"),
            None,
            None,
            None,
            Target::Request,
            true,
        )
        .unwrap();
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
                Target::Request,
                false
            )
            .is_err()
        );
    }
}
