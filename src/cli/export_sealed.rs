//! # `veil export --rules FILE`: a dataset from the sealed exchanges, re-redacted.
//!
//! For teams that need more content than the telemetry rules let into the ledger, but still
//! no raw PII: the ledger's [`Selection`] picks the exchanges (so the filters, the feedback
//! and the metadata are the ledger's, and forgotten rows are never picked), each is unsealed
//! (locally, or through the running veil's control socket or `--admin`, exactly as `veil
//! unseal` does, so each read is one audit event: who, when, which id, and a reason naming
//! this export and the rules digest), parsed, and rebuilt into a record under the given
//! rules; the record's content replaces the ledger's in the line. An id the store no longer
//! has (forgotten, purged) is skipped as `not_sealed`. The raw exchange is dropped as soon
//! as its record is built; nothing raw is written.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};

use super::export::{SealedArgs, finish_output};
use super::operator::{Operator, actor, block};
use super::seal::StoreDirs;
use crate::admin::{ExchangeView, OutcomeView, RouteView};
use crate::exchange::{
    self, Body, Exchange, ExchangeId, Outcome, ParseOptions, Pricing, Route, Timings, Upstream,
    UpstreamFailure,
};
use crate::keys::Keyring;
use crate::ledger::dataset::{self, DatasetExchange, Format, Selection, Skip, Summary};
use crate::ledger::schema;
use crate::redact::CompiledRules;

/// Runs `veil export --rules FILE`.
pub(super) fn run(
    args: &SealedArgs,
    sel: &Selection,
    format: Format,
    rules_file: &Path,
    dirs: &StoreDirs,
) -> anyhow::Result<ExitCode> {
    let keys = Keyring::load(&dirs.keys).with_context(|| {
        format!(
            "--rules re-redacts sealed exchanges and needs the master keys in {}",
            dirs.keys.display()
        )
    })?;
    let rules = CompiledRules::load(rules_file, &keys)
        .map_err(|e| anyhow!("--rules {}: {e}", rules_file.display()))?;
    let digest = rules.digest().to_string();
    let conn = schema::open_read_only(&super::ledger::ledger_path(&dirs.data))?;
    let op = Operator::open(&StoreDirs {
        admin: args.admin,
        ..dirs.clone()
    })?;
    let stamp = crate::ledger::row::iso_utc(std::time::SystemTime::now());
    let reason = format!(
        "{} (veil export --rules at {stamp}, rules digest {digest})",
        args.reason
    );
    let pricing = Pricing::builtin();
    let write = |out: &mut dyn std::io::Write| -> anyhow::Result<Summary> {
        let mut summary = Summary::default();
        dataset::visit(&conn, sel, false, &mut |mut ex: DatasetExchange| {
            if sel.limit.is_some_and(|l| summary.written >= l) {
                return Ok::<bool, anyhow::Error>(false);
            }
            let id: ExchangeId = ex
                .request_id
                .parse()
                .map_err(|e| anyhow!("ledger row {}: {e}", ex.request_id))?;
            let Some(sealed) = unseal(&op, id, &reason)? else {
                *summary.skipped.entry(Skip::NotSealed).or_default() += 1;
                return Ok(true);
            };
            let conv = exchange::parse(&sealed, &ParseOptions::default(), &pricing);
            let record = crate::record::build(&sealed, &conv, &rules);
            drop(sealed);
            ex.system_instructions = record.system_instructions;
            ex.input_messages = record.input_messages;
            ex.output_messages = record.output_messages;
            ex.rules_digest = record.rules_digest;
            summary.add(format, &ex, out)?;
            Ok(true)
        })?;
        Ok(summary)
    };
    let code = finish_output(
        args.out.as_deref(),
        write,
        sel,
        format,
        vec![digest],
        Some(rules_file),
        "sealed",
        &dirs.data,
    )?;
    eprintln!("veil export: each sealed exchange read is in the audit log, reason {reason:?}");
    Ok(code)
}

/// One sealed exchange, `None` when the store does not have it (forgotten, purged, never
/// sealed). Audited by the store (locally) or the running veil.
fn unseal(op: &Operator, id: ExchangeId, reason: &str) -> anyhow::Result<Option<Exchange>> {
    match op {
        Operator::Local(store) => match store.unseal(id, &actor(), reason) {
            Ok(ex) => Ok(Some(ex)),
            Err(e) if e.kind() == crate::seal::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(anyhow!(e).context(format!("unsealing {id}"))),
        },
        Operator::Remote(c) => match block(c.unseal(id, reason))? {
            Ok(v) => exchange_of(v).map(Some),
            Err(e) if e.status() == Some(http::StatusCode::NOT_FOUND) => Ok(None),
            Err(e) => Err(anyhow!(e).context(format!("unsealing {id}"))),
        },
    }
}

/// The exchange back from the admin API's view of it (every field the view carries; the
/// bodies from their captured bytes, so parsing sees what `veil run`'s pipeline saw).
fn exchange_of(v: ExchangeView) -> anyhow::Result<Exchange> {
    let ms = |m: f64| Duration::from_secs_f64((m / 1000.0).max(0.0));
    let body = |b: &crate::admin::BodyView| -> anyhow::Result<Body> {
        let bytes = b
            .wire_bytes()
            .ok_or_else(|| anyhow!("the admin API's body of {} is not base64", v.id))?;
        Ok(Body {
            chunks: vec![bytes::Bytes::from(bytes)],
            wire_len: b.wire_len,
            truncated: b.truncated,
            content_encoding: b.content_encoding.clone(),
        })
    };
    let started_at = crate::ledger::row::parse_iso(&v.started_at).ok_or_else(|| {
        anyhow!(
            "the admin API's started_at {:?} is not RFC 3339",
            v.started_at
        )
    })?;
    Ok(Exchange {
        id: v.id,
        started_at,
        timings: Timings {
            request_end: v.timings_ms.request_end.map(ms),
            response_headers: v.timings_ms.response_headers.map(ms),
            first_byte: v.timings_ms.first_byte.map(ms),
            end: ms(v.timings_ms.end),
            ..Default::default()
        },
        client_addr: v.client_addr,
        route: match &v.route {
            RouteView::Intercept {} => Route::Intercept,
            RouteView::Gateway { name } => Route::Gateway { name: name.clone() },
            RouteView::PlainHttp {} => Route::PlainHttp,
        },
        upstream: Upstream {
            scheme: v.upstream.scheme.clone().into(),
            host: v.upstream.host.clone(),
            port: v.upstream.port,
        },
        client_version: v.client_version.clone().into(),
        method: v.method.clone().into(),
        path: v.path.clone(),
        request_headers: v.request_headers.clone(),
        tags: v.tags.clone(),
        api_key_fingerprint: v.api_key_fingerprint.clone(),
        request_body: body(&v.request_body)?,
        status: v.status,
        response_headers: v.response_headers.clone(),
        response_body: body(&v.response_body)?,
        outcome: match &v.outcome {
            OutcomeView::Complete {} => Outcome::Complete,
            OutcomeView::ClientAborted {} => Outcome::ClientAborted,
            OutcomeView::UpstreamAborted { reason } => Outcome::UpstreamAborted {
                reason: reason.clone(),
            },
            OutcomeView::UpstreamFailed { failure, reason } => Outcome::UpstreamFailed {
                kind: match failure.as_str() {
                    "connect" => UpstreamFailure::Connect,
                    "tls" => UpstreamFailure::Tls,
                    "timeout" => UpstreamFailure::Timeout,
                    _ => UpstreamFailure::Protocol,
                },
                reason: reason.clone(),
            },
        },
        websocket: v.websocket.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Ledger, LedgerSettings};
    use crate::seal::{SealOptions, SealStore};

    const EMAIL: &str = "dana.scully@example.com";
    const CARD: &str = "4111 1111 1111 1111";

    fn with_prompt(prompt: &str) -> Exchange {
        let mut ex = crate::seal::tests::openai_chat();
        let req = serde_json::json!({"model": "gpt-4o", "messages": [{"role": "user", "content": prompt}]})
            .to_string();
        ex.request_body = Body {
            wire_len: req.len() as u64,
            chunks: vec![bytes::Bytes::from(req)],
            truncated: false,
            content_encoding: None,
        };
        ex
    }

    fn contains(hay: &[u8], needle: &str) -> bool {
        hay.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    #[test]
    fn rules_exports_re_redact_sealed_exchanges_are_audited_and_skip_forgotten() {
        let root = tempfile::tempdir().unwrap();
        let d = crate::cli::seal::tests::dirs(root.path());
        let ring = Keyring::load_or_create(&d.keys).unwrap();
        let kept = with_prompt(&format!("refund {EMAIL} card {CARD} zebra-phrase"));
        let gone = with_prompt("forget me zebra-phrase");
        // In the ledger, never sealed (a seal that failed under best-effort): not_sealed.
        let never = with_prompt("never sealed zebra-phrase");
        // The ledger as veil run writes it, under the default rules (scrubbed text).
        let default_rules =
            CompiledRules::from_str(include_str!("../../rules/default.toml"), &ring).unwrap();
        let records: Vec<_> = [&kept, &gone, &never]
            .iter()
            .map(|ex| {
                let conv = exchange::parse(ex, &ParseOptions::default(), &Pricing::builtin());
                crate::record::build(ex, &conv, &default_rules)
            })
            .collect();
        let mut settings = LedgerSettings::new(d.data.join(crate::ledger::FILE_NAME));
        settings.nice = 0;
        let ledger = Ledger::open(settings, None, Default::default()).unwrap();
        ledger.handle().send_blocking(records, None);
        assert!(ledger.handle().flush_blocking());
        assert!(ledger.shutdown(Duration::from_secs(5)));
        {
            let store = SealStore::open(
                &d.data,
                Keyring::load(&d.keys).unwrap(),
                SealOptions::default(),
            )
            .unwrap();
            store.seal_blocking(&kept, None).unwrap();
            store.seal_blocking(&gone, None).unwrap();
            // Forgotten (the store's forget erases the ledger row too): never exported.
            store.forget(&[gone.id], "test", "test").unwrap();
        }
        let strict = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/strict.toml");
        let digest = CompiledRules::load(&strict, &ring)
            .unwrap()
            .digest()
            .to_string();
        let out = root.path().join("strict.jsonl");
        let args = SealedArgs {
            out: Some(out.clone()),
            reason: "ticket 42".into(),
            admin: None,
        };
        let code = run(&args, &Selection::default(), Format::Jsonl, &strict, &d).unwrap();
        assert_eq!(code, ExitCode::SUCCESS);

        let bytes = std::fs::read(&out).unwrap();
        let manifest = std::fs::read(dataset::manifest::beside(&out)).unwrap();
        let text = String::from_utf8(bytes.clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{text}");
        assert_eq!(lines[0]["request_id"], kept.id.to_string());
        assert_eq!(lines[0]["rules_digest"], digest.as_str());
        // Re-redacted with the strict rules (hashes), not the ledger's scrubbed text.
        assert!(contains(&bytes, "h_"), "{text}");
        for (what, b) in [("dataset", &bytes), ("manifest", &manifest)] {
            for planted in [EMAIL, CARD, "zebra-phrase", "PLANTED"] {
                assert!(!contains(b, planted), "{planted} in the {what}");
            }
        }
        let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
        assert_eq!(m["source"], "sealed");
        assert_eq!(m["rules_digests"], serde_json::json!([digest]));
        assert_eq!(m["skipped"], serde_json::json!({"not_sealed": 1}));
        assert_eq!(m["request_ids"], serde_json::json!([kept.id.to_string()]));
        // Audited: one unseal event for the exchange read, with the export's reason.
        let audit = std::fs::read_to_string(d.data.join("audit.jsonl")).unwrap();
        let unseals: Vec<serde_json::Value> = audit
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|e| e.to_string().contains("unseal"))
            .collect();
        assert_eq!(unseals.len(), 1, "{audit}");
        let event = unseals[0].to_string();
        assert!(event.contains(&kept.id.to_string()), "{event}");
        assert!(event.contains("ticket 42"), "{event}");
        assert!(event.contains(&digest), "{event}");
        assert!(event.contains("veil export --rules"), "{event}");
    }
}
