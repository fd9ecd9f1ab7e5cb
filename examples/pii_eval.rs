//! Scores the detectors of a rules file against a labelled corpus (`shared/pii/dev.jsonl`
//! format) with the corpus README's scoring rule.
//!
//! ```text
//! cargo run --release --example pii_eval -- tests/fixtures/pii/dev.jsonl [rules/default.toml] [--misses]
//! ```
use std::path::Path;
use std::process::ExitCode;

use veil::keys::{KeyId, Keyring, MasterKey};
use veil::redact::{CompiledRules, eval};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let misses = args.iter().any(|a| a == "--misses");
    let pos: Vec<&String> = args.iter().filter(|a| !a.starts_with("--")).collect();
    let Some(corpus) = pos.first() else {
        eprintln!("usage: pii_eval CORPUS.jsonl [RULES.toml] [--misses]");
        return ExitCode::from(2);
    };
    let rules_path = pos.get(1).map_or("rules/default.toml", |s| s.as_str());
    // Detection does not depend on the key; a fixed one keeps runs comparable.
    let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [0; 32]));
    let rules = match CompiledRules::load(Path::new(rules_path), &keys) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let text = match std::fs::read_to_string(corpus) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("{corpus}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let scope = rules.base_scope();
    // Warm up once (lazy DFA caches), then measure.
    let _ = eval::evaluate(&text, scope);
    let report = eval::evaluate(&text, scope);
    print!("{}", report.table());
    if misses {
        for line in eval::misses(&text, scope) {
            println!("{line}");
        }
    }
    ExitCode::SUCCESS
}
