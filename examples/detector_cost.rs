//! Cost of redacting one repeated unit under chosen built-in detectors: the tool for finding
//! which detector makes a match-dense text slow (the `redact_dense` fuzz target reports the
//! unit, this says who pays for it).
//!
//! ```text
//! cargo run --release --example detector_cost -- UNIT [BYTES] [DETECTORS ...]
//! cargo run --release --example detector_cost -- '4111 1111 1111 1111 ' 385000 all phone credit_card,phone
//! ```
//!
//! `UNIT` (`\n` for a line break) is repeated to `BYTES` (default 385,000) and redacted with
//! the profile `builtin = [DETECTORS]` (each argument a comma-separated list; default `all`),
//! best of 5. Prints one line per list: milliseconds and nanoseconds per byte. Text that does
//! not settle is scrubbed up to eight times and then dropped, and pays for every pass: compare
//! lists to see which detector takes part in such a chain.
use std::time::Instant;

use veil::keys::{KeyId, Keyring, MasterKey};
use veil::redact::{CompiledRules, Meter};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(unit) = args.first().map(|u| u.replace("\\n", "\n")) else {
        eprintln!("usage: detector_cost UNIT [BYTES] [DETECTORS ...]");
        std::process::exit(2);
    };
    let bytes: usize = match args.get(1).map(|s| s.parse()) {
        None => 385_000,
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            eprintln!("BYTES: {e}");
            std::process::exit(2);
        }
    };
    let text = unit.repeat(bytes.div_ceil(unit.len().max(1)));
    let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [1; 32]));
    let lists = if args.len() > 2 {
        args[2..].to_vec()
    } else {
        vec!["all".to_string()]
    };
    for list in lists {
        let names: Vec<String> = list.split(',').map(|s| format!("{s:?}")).collect();
        let profile = format!(
            "version = 1\ndefault = \"scrub\"\n[detectors]\nbuiltin = [{}]\naction = \"mask\"\n",
            names.join(",")
        );
        let mut rules = match CompiledRules::from_str(&profile, &keys) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("{list}: {e}");
                std::process::exit(2);
            }
        };
        // Each of the five runs scans: no remembered answer.
        rules.set_memo_bytes(0);
        let mut best = f64::MAX;
        for _ in 0..5 {
            let mut meter = Meter::unlimited();
            let started = Instant::now();
            let out = rules.redact_text_within(&text, rules.base_scope(), &mut meter);
            best = best.min(started.elapsed().as_secs_f64());
            std::hint::black_box(out.expect("an unlimited meter is never exceeded"));
        }
        println!(
            "{list:>40}: {:9.2} ms {:8.1} ns/B",
            best * 1e3,
            best * 1e9 / text.len() as f64
        );
    }
}
