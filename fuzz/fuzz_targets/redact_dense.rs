//! Redaction of match-dense text stays linear (veil#10): the fuzzer's bytes pick a short unit
//! (pieces that trigger every detector, their look-alikes and prefixes, plus the raw bytes
//! themselves) and a size from 256 KiB to 1 MiB; the unit repeated to that size is redacted
//! under the shipped default profile. Two bounds:
//! - work units per byte (counted by the redaction meter, deterministic) at most
//!   `MAX_WORK_PER_BYTE`: catches a pass that charges super-linear work;
//! - wall-clock time per byte at most `MAX_NANOS_PER_BYTE`: catches what the units do not
//!   see (a regex that scans far past its match end, as the PEM footer search once did).
//!   The slowest text found (cards glued to each other, scrubbed eight times, then dropped)
//!   takes a release build 0.13 µs per byte and this instrumented build about 20 times
//!   that; the quadratic passes fixed in veil#10 took several µs per byte already at these
//!   sizes (see `fuzz/README.md`).
#![no_main]

use std::sync::LazyLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use veil::keys::{KeyId, Keyring, MasterKey};
use veil::redact::{CompiledRules, Meter};

static RULES: LazyLock<CompiledRules> = LazyLock::new(|| {
    let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [1; 32]));
    CompiledRules::from_str(include_str!("../../rules/default.toml"), &keys).expect("default rules")
});

/// What a unit is made of.
const PIECES: &[&str] = veil::redact::DENSE_UNITS;

/// Deterministic bound: the slowest text found costs about 40 units per byte.
const MAX_WORK_PER_BYTE: u64 = 200;
/// Time bound: 5 µs per byte (5 s for 1 MiB).
const MAX_NANOS_PER_BYTE: u128 = 5_000;

fuzz_target!(|data: &[u8]| {
    let Some((&size, rest)) = data.split_first() else {
        return;
    };
    // The unit: a piece per byte below 0x80, raw text for the rest (at most 64 bytes in all).
    let mut unit = String::new();
    let mut raw = Vec::new();
    for &b in rest.iter().take(64) {
        if b < 0x80 {
            unit.push_str(&String::from_utf8_lossy(&raw));
            raw.clear();
            unit.push_str(PIECES[b as usize % PIECES.len()]);
        } else {
            raw.push(b & 0x7f);
        }
    }
    unit.push_str(&String::from_utf8_lossy(&raw));
    if unit.is_empty() {
        return;
    }
    let len = (256 << 10) + (usize::from(size) << 12) * 3; // 256 KiB .. ~1 MiB
    let text = unit.repeat(len.div_ceil(unit.len()));

    let rules = &*RULES;
    let mut meter = Meter::unlimited();
    let started = Instant::now();
    let (out, _) = rules
        .redact_text_within(&text, rules.base_scope(), &mut meter)
        .expect("an unlimited meter is never exceeded");
    let nanos = started.elapsed().as_nanos();
    std::hint::black_box(out);
    let n = text.len() as u64;
    assert!(
        meter.work_done() <= MAX_WORK_PER_BYTE * n,
        "{} work units per byte for {unit:?} x {n} bytes",
        meter.work_done() / n
    );
    assert!(
        nanos <= MAX_NANOS_PER_BYTE * u128::from(n),
        "{} ns per byte for {unit:?} x {n} bytes",
        nanos / u128::from(n)
    );
});
