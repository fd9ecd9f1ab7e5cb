//! Redaction of match-dense text stays linear (veil#10): the fuzzer's bytes pick a short unit
//! (pieces that trigger every detector, their look-alikes and prefixes, plus the raw bytes
//! themselves) and a size from 256 KiB to 1 MiB; the unit repeated to that size, and to a
//! quarter of it, is redacted under the shipped default profile. Three bounds:
//! - work units per byte (counted by the redaction meter, deterministic) at most
//!   `MAX_WORK_PER_BYTE`: catches a pass that charges super-linear work;
//! - time per byte of the whole text at most `MAX_GROWTH` times that of the quarter: catches
//!   what the units do not see (a regex that scans far past its match end, as the PEM footer
//!   search once did), whatever the machine's speed. Linear work keeps the ratio near 1,
//!   quadratic work makes it 4. A ratio over the bound is measured up to three more times
//!   (best of each size kept) before it fails, so a burst of other work on the machine does
//!   not fail the run;
//! - wall-clock time per byte at most `MAX_NANOS_PER_BYTE`, a backstop only: the slowest text
//!   found (cards glued to each other, scrubbed eight times, then dropped) takes a release
//!   build 0.17 µs per byte and this instrumented build about 35 times that (see
//!   `fuzz/README.md`).
#![no_main]

use std::sync::LazyLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use veil::keys::{KeyId, Keyring, MasterKey};
use veil::redact::{CompiledRules, Meter};

static RULES: LazyLock<CompiledRules> = LazyLock::new(|| {
    let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [1; 32]));
    let mut rules = CompiledRules::from_str(include_str!("../../rules/default.toml"), &keys)
        .expect("default rules");
    // Every measurement scans. With the memo on, a quarter seen in an earlier run (libFuzzer
    // re-runs inputs) is answered from it in ~1 ns per byte while the whole text, too long to
    // remember, is scanned: the growth bound then failed on a linear text.
    rules.set_memo_bytes(0);
    rules
});

/// What a unit is made of.
const PIECES: &[&str] = veil::redact::DENSE_UNITS;

/// Deterministic bound: the slowest text found costs about 40 units per byte.
const MAX_WORK_PER_BYTE: u64 = 200;
/// Time per byte of the whole text over that of its quarter, at most (linear work: about 1;
/// quadratic: 4).
const MAX_GROWTH: f64 = 2.5;
/// Further measurements of both sizes (best of each kept) before a ratio over the bound fails.
const RETRIES: usize = 3;
/// Backstop: 25 µs per byte (25 s for 1 MiB), about 4 times the slowest text found.
const MAX_NANOS_PER_BYTE: u128 = 25_000;

/// Nanoseconds per byte to redact `text` (at least 1 byte).
fn nanos_per_byte(text: &str) -> f64 {
    let rules = &*RULES;
    let mut meter = Meter::unlimited();
    let started = Instant::now();
    let out = rules
        .redact_text_within(text, rules.base_scope(), &mut meter)
        .expect("an unlimited meter is never exceeded");
    let nanos = started.elapsed().as_nanos();
    std::hint::black_box(out);
    nanos as f64 / text.len() as f64
}

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
    let quarter = &text[..text.floor_char_boundary(text.len() / 4)];

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
    let mut whole = nanos as f64 / n as f64;
    let mut part = nanos_per_byte(quarter);
    // Another process's burst inflates one measurement, not the best of several.
    for _ in 0..RETRIES {
        if whole <= MAX_GROWTH * part {
            break;
        }
        part = part.min(nanos_per_byte(quarter));
        whole = whole.min(nanos_per_byte(&text));
    }
    assert!(
        whole <= MAX_GROWTH * part,
        "{whole:.0} ns per byte for {unit:?} x {n} bytes, {part:.0} for a quarter of it: \
         more than {MAX_GROWTH}x, so the cost grows faster than the text"
    );
});
