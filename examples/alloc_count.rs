//! Heap allocations per exchange in each step of the recording pipeline (parse, redact into a
//! record, prepare the content's text, seal) of the pipeline bench's exchange
//! (`benches/fixtures/support_bot.rs`), counted by a wrapping global allocator. The
//! count, not the time, is what this shows: under load, allocating and freeing is about a
//! third of the pipeline thread's CPU (veil#18, docs/performance.md). `ALLOC_PROFILE=parse`,
//! `build` or `seal` writes dhat's profile of that step by call site instead.
//!
//! ```text
//! cargo run --release --no-default-features --example alloc_count
//! ```
//! `--no-default-features` leaves jemalloc out, so dhat's counting allocator can be the global
//! one (the counts are the same under any allocator; a dev build counts as a release one).
#[path = "../benches/fixtures/support_bot.rs"]
mod support_bot;

use support_bot::exchange;
use veil::exchange::{Exchange, ParseOptions, Pricing, parse};
use veil::feedback::{Rated, Recent};
use veil::keys::{KeyId, Keyring, MasterKey};
use veil::record;
use veil::redact::{BUILTIN_DEFAULT_RULES, CompiledRules};
use veil::seal::envelope::{fresh_data_key, seal_frame};

#[cfg(not(feature = "jemalloc"))]
#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// What every step needs: the shipped default rules under a fixed test key (without the
/// redaction memo), the built-in prices, default parse options, and the exchange.
fn setup() -> (CompiledRules, Pricing, ParseOptions, Exchange) {
    let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [42; 32]));
    let mut rules = CompiledRules::from_str(BUILTIN_DEFAULT_RULES, &keys).expect("default rules");
    // Each exchange's texts are new, as real answers are: no remembered redaction.
    rules.set_memo_bytes(0);
    (
        rules,
        Pricing::builtin(),
        ParseOptions::default(),
        exchange(),
    )
}

/// Allocations (blocks, bytes) made by `f`, the second of two calls (the first warms the
/// caches of compiled patterns and lazily built tables).
fn count<T>(mut f: impl FnMut() -> T) -> (u64, u64, T) {
    drop(f());
    let before = dhat::HeapStats::get();
    let out = f();
    let after = dhat::HeapStats::get();
    (
        after.total_blocks - before.total_blocks,
        after.total_bytes - before.total_bytes,
        out,
    )
}

fn main() {
    if cfg!(feature = "jemalloc") {
        eprintln!(
            "alloc_count: jemalloc is the global allocator in this build, so nothing can count; \
             run `cargo run --release --no-default-features --example alloc_count`"
        );
        std::process::exit(2);
    }
    if let Ok(step) = std::env::var("ALLOC_PROFILE") {
        return profile(&step);
    }
    let _profiler = dhat::Profiler::builder().testing().build();
    let (rules, pricing, opts, ex) = setup();

    let mut rows = Vec::new();
    let (n, b, conv) = count(|| parse(&ex, &opts, &pricing));
    rows.push(("parse", n, b));
    let (n, b, _) = count(|| record::build(&ex, &conv, &rules));
    rows.push(("redact into a record", n, b));
    let (n, b, _) = count(|| {
        let r = record::build(&ex, &conv, &rules);
        r.prepare();
        r
    });
    rows.push((
        "prepare the text (ledger, spans)",
        n - rows[1].1,
        b - rows[1].2,
    ));
    let record = record::build(&ex, &conv, &rules);
    record.prepare();
    let (n, b, _) = count(|| Rated::of(&record));
    rows.push(("feedback's recent entry as a `Rated`", n, b));
    let recent = Recent::default();
    let (n, b, _) = count(|| recent.insert_of(&record));
    rows.push(("feedback's recent entry packed into the map", n, b));
    let data_key = fresh_data_key();
    let (n, b, _) = count(|| seal_frame(&ex, &data_key, KeyId(1)).expect("seals"));
    rows.push(("seal frame", n, b));
    let (n, b, _) = count(|| {
        let conv = parse(&ex, &opts, &pricing);
        let mut record = record::build(&ex, &conv, &rules);
        record.prepare();
        recent.insert_of(&record);
        record.shed_content_trees();
        seal_frame(&ex, &data_key, KeyId(1)).expect("seals")
    });
    rows.push(("all of it", n, b));

    println!("| step | allocations | bytes allocated |");
    println!("| --- | ---: | ---: |");
    for (step, n, b) in rows {
        println!("| {step} | {n} | {b} |");
    }
}

/// `ALLOC_PROFILE=build`: dhat's per-call-site profile of one step, run 1,000 times, written to
/// `dhat-heap.json` (open it in dhat's viewer, or sort its program points by `tb`).
fn profile(step: &str) {
    let (rules, pricing, opts, ex) = setup();
    let conv = parse(&ex, &opts, &pricing);
    drop(record::build(&ex, &conv, &rules));
    let _profiler = dhat::Profiler::new_heap();
    for _ in 0..1000 {
        match step {
            "parse" => drop(parse(&ex, &opts, &pricing)),
            "build" => drop(record::build(&ex, &conv, &rules)),
            "seal" => drop(seal_frame(&ex, &fresh_data_key(), KeyId(1))),
            other => panic!("ALLOC_PROFILE={other}: parse, build or seal"),
        }
    }
}
