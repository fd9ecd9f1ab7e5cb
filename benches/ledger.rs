//! The SQLite ledger's costs (veil#11): (a) ingest through the real writer thread, (b) bytes on
//! disk per exchange, (c) `veil report --by feature` and `veil report --cards` over a month of
//! rows.
//!
//! ```text
//! cargo bench --bench ledger                  # N = 200,000 ingested, 1,000,000 queried
//! LEDGER_N=50000 LEDGER_ROWS=200000 cargo bench --bench ledger   # a quicker run
//! ```
//!
//! (a) builds `LEDGER_N` realistic records first (OpenAI/Anthropic chats with redacted content,
//! 6 features, 5 models, 2,000 user pseudonyms, one trace per ~3 calls, spread over the last 30
//! days, each with a request id made as veil makes it: a UUIDv7 of its start), three times:
//! in the order the exchanges end (as live traffic reaches the ledger) into a fresh ledger; the
//! same into a ledger already holding `LEDGER_PREFILL` (default 1,000,000; 0 skips it) older
//! rows, as after months of traffic; and with starts at random (a backfill, which veil never
//! does: a stress figure for the `start` and `request_id` indexes). Each time, after
//! `LEDGER_WARMUP` (default 20,000) untimed records into the same ledger (a new process's first
//! touches of memory and file pages are paid once, not per exchange, by a veil that runs for
//! days), it times sending them in batches of 512 through [`LedgerHandle::send_blocking`] and
//! [`LedgerHandle::flush_blocking`]: exchanges/s of wall time, and CPU per exchange of the
//! writer thread (`veil-ledger`, read from `/proc/self/task/*/schedstat`, nanoseconds) and of
//! the whole process. The writer runs at nice 0 here (veil runs it at nice 10 in best-effort
//! mode), so on a shared machine it is not starved by other work. Targets (live traffic):
//! ≥ 20,000/s, ≤ 10 µs.
//!
//! (b) after a `wal_checkpoint(TRUNCATE)`: file bytes / rows, and bytes per table (`dbstat`).
//!
//! (c) a fresh ledger from [`Ledger::open`] filled with `LEDGER_ROWS` rows by one
//! `INSERT … SELECT` from a recursive CTE in one transaction (exchanges only: the queries never
//! read `content`), all started in the last 30 days, then [`report::report`] by feature with
//! `since = 30 days ago` (target ≤ 1 s) and [`cards::cards`] with the same filter, best of 3,
//! with splits: the bare SQL scan, the scan forced off the `start` index, and the query plan;
//! then `veil forget --user` of one user's rows ([`erase::forget_user`], a scan since schema
//! v5), once.
//!
//! (d) `veil export` (veil#14): `LEDGER_ONLY=export` ingests `LEDGER_EXPORT_N` (default
//! 100,000) records as in (a), in start order, then times [`dataset::export`] of every row to
//! a sink in each format, best of 3: exchanges/s (read, converted, serialized), no filter.
//!
//! ```text
//! LEDGER_ONLY=export cargo bench --bench ledger
//! ```
//!
//! Every loop is bounded by the counts above; nothing listens on a socket.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use rusqlite::Connection;
use veil::exchange::{TraceParent, Usage};
use veil::ledger::report::{Dim, Filter};
use veil::ledger::{Ledger, LedgerSettings, cards, dataset, erase, report, schema};
use veil::record::Record;

const BATCH: usize = 512;
const FEATURES: [&str; 6] = [
    "support-bot",
    "search",
    "summarize",
    "code-review",
    "translate",
    "agent",
];
const MODELS: [(&str, &str, &str); 5] = [
    ("openai", "gpt-4o-mini", "gpt-4o-mini-2024-07-18"),
    ("openai", "gpt-4o", "gpt-4o-2024-08-06"),
    ("openai", "o3-mini", "o3-mini-2025-01-31"),
    (
        "anthropic",
        "claude-sonnet-4-5",
        "claude-sonnet-4-5-20250929",
    ),
    ("anthropic", "claude-haiku-4-5", "claude-haiku-4-5-20251001"),
];
const DAY: u64 = 86_400;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (xorshift64*), so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A request id as veil makes one when the request arrives (a UUIDv7 of that time,
/// [`veil::exchange::ExchangeId::new`]), for a request that arrived at `start`: in live traffic the ids reach
/// the ledger in about the order of their starts, so the `request_id` index grows at its
/// right edge, as the `start` index does. (Ids made at build time instead, in another order
/// than the starts, put every insert into the index at a random page, which no live veil does.)
fn request_id_at(start: SystemTime, rng: &mut Rng) -> String {
    let since = start
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        + Duration::from_millis(rng.below(1000));
    let at = uuid::Timestamp::from_unix(uuid::NoContext, since.as_secs(), since.subsec_nanos());
    uuid::Uuid::new_v7(at).hyphenated().to_string()
}

/// One realistic record, shaped like `export::testing::openai_chat` / `anthropic_stream`.
fn record(i: usize, rng: &mut Rng, now: SystemTime) -> Record {
    let (provider, req_model, resp_model) = MODELS[rng.below(MODELS.len() as u64) as usize];
    let anthropic = provider == "anthropic";
    let feature = FEATURES[rng.below(FEATURES.len() as u64) as usize];
    let input = 200 + rng.below(3000);
    let output = 20 + rng.below(600);
    let errored = rng.below(50) == 0;
    let trace = i / 3; // calls of one agent task share a trace
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&(trace as u64).to_be_bytes());
    trace_id[8..].copy_from_slice(&0x5eed_u64.to_be_bytes());
    let mut redactions = BTreeMap::new();
    redactions.insert("EMAIL".to_string(), 1 + rng.below(2));
    redactions.insert("PERSON".to_string(), 1);
    let mut request_params = BTreeMap::new();
    request_params.insert("temperature".to_string(), serde_json::json!(0.2));
    request_params.insert("max_tokens".to_string(), serde_json::json!(1024));
    let user_turn = format!(
        "Hi, I am [PERSON_1] ([EMAIL_1]). Order {} was charged twice on my card; please refund one of the charges and confirm by mail.",
        100_000 + rng.below(900_000)
    );
    let answer = "I'm sorry about the double charge. I have refunded one of them; you will see it within 5 business days. ".repeat(1 + rng.below(3) as usize);
    let start = now - Duration::from_secs(rng.below(30 * DAY - 3600) + 60);
    let mut r = Record {
        request_id: request_id_at(start, rng),
        start,
        duration: Duration::from_millis(300 + rng.below(4000)),
        time_to_first_chunk: anthropic.then(|| Duration::from_millis(200 + rng.below(400))),
        trace_parent: Some(TraceParent {
            trace_id,
            parent_span_id: (rng.next()).to_be_bytes(),
            flags: 1,
            trace_state: None,
        }),
        provider: veil::exchange::Provider::for_host(if anthropic { "api.anthropic.com" } else { "api.openai.com" })
            .unwrap_or_default(),
        operation: veil::exchange::Operation::Chat,
        request_model: Some(req_model.into()),
        response_model: (!errored).then(|| resp_model.into()),
        response_id: (!errored).then(|| format!("chatcmpl-{:x}", rng.next())),
        conversation_id: Some(format!("conv_{:x}", trace)),
        server_address: if anthropic {
            "api.anthropic.com"
        } else {
            "api.openai.com"
        }
        .into(),
        server_port: 443,
        route: "/v1/chat/completions".into(),
        status: Some(if errored { 429 } else { 200 }),
        error_type: errored.then(|| "rate_limit_exceeded".into()),
        finish_reasons: if errored {
            Vec::new()
        } else {
            vec!["stop".into()]
        },
        usage: if errored {
            Usage::default()
        } else {
            Usage {
                input_tokens: Some(input),
                output_tokens: Some(output),
                cache_read_tokens: Some(input / 2),
                cache_creation_tokens: anthropic.then_some(150),
                reasoning_tokens: (req_model == "o3-mini").then_some(output / 2),
                ..Usage::default()
            }
        },
        stream: anthropic,
        request_params,
        cost_usd: (!errored).then(|| (input as f64 * 0.15 + output as f64 * 0.6) / 1e6),
        user_pseudonym: Some(
            veil::keys::UserPseudonym::parse(&format!("u_{:016x}", rng.below(2000))).unwrap(),
        ),
        user_pseudonyms: Vec::new(),
        feature: Some(feature.into()),
        api_key_fingerprint: Some(format!("fp_{:04x}", rng.below(4))),
        rules_digest: "b3:5f0c8e1d2a7b".into(),
        redactions,
        redactions_input: 2,
        redactions_output: 1,
        truncated: false,
        aborted: false,
        outcome: if errored {
            veil::exchange::OutcomeKind::UpstreamFailed
        } else {
            veil::exchange::OutcomeKind::Complete
        },
        system_instructions: Some(serde_json::json!([
            {"type": "text", "content": "You are a helpful support assistant for [ORG_1]. Be concise."}
        ])),
        input_messages: Some(serde_json::json!([
            {"role": "user", "parts": [{"type": "text", "content": user_turn}]}
        ])),
        output_messages: (!errored).then(|| {
            serde_json::json!([
                {"role": "assistant", "parts": [{"type": "text", "content": answer}], "finish_reason": "stop"}
            ])
        }),
        tool_names: Vec::new(),
        request_headers: vec![("User-Agent".into(), "openai-python/1.54.0".into())],
        response_headers: Default::default(),
        request_bytes: 600 + rng.below(4000),
        response_bytes: 400 + rng.below(3000),
        websocket: None,
        content_dropped: None,
        parse_error: None,
        added_latency: (None, None),
        chunk_gaps: Default::default(),
        retry: false,
        prepared: Default::default(),
        in_flight: Default::default(),
    };
    // One identity source, as most apps send: the winner only, so no `exchange_users` row.
    r.user_pseudonyms = r.user_pseudonym.iter().cloned().collect();
    r
}

/// CPU nanoseconds used so far by this process's thread named `name` (`/proc/self/task/*/comm`,
/// first field of `schedstat`), or by the whole process when `name` is `None`.
fn cpu_ns(name: Option<&str>) -> u64 {
    let mut total = 0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    for t in tasks.flatten() {
        if let Some(name) = name {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.trim_end() != name {
                continue;
            }
        }
        let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        total += s
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    total
}

/// CPU nanoseconds of the calling thread.
fn own_cpu_ns() -> u64 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn settings(path: &Path) -> LedgerSettings {
    let mut s = LedgerSettings::new(path.to_path_buf());
    s.check_every = Duration::from_secs(3600);
    s.nice = 0;
    s
}

fn file_len(p: &Path, suffix: &str) -> u64 {
    let mut os = p.as_os_str().to_owned();
    os.push(suffix);
    std::fs::metadata(PathBuf::from(os))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// How the ingested records are ordered.
#[derive(Clone, Copy, PartialEq)]
enum Order {
    /// As live traffic reaches the ledger: in the order the exchanges end (start + duration),
    /// so the `start` and `request_id` indexes and the AUTOINCREMENT ids grow near their right
    /// edges. veil's ledger is only ever written this way: nothing replays old records into it.
    Live,
    /// Starts (and so request ids) spread at random over 30 days, as a backfill of old records
    /// would be: every batch touches pages all over both indexes. Not a workload veil has; a
    /// stress figure for the indexes, not the target.
    Random,
}

fn ingest(dir: &Path, n: usize) {
    ingest_in(dir, n, Order::Live, 0);
    println!();
    let prefill = env_usize("LEDGER_PREFILL", 1_000_000);
    if prefill > 0 {
        ingest_in(dir, n, Order::Live, prefill);
        println!();
    }
    let path = ingest_in(dir, n, Order::Random, 0);
    size(&path);
}

/// Ingests `n` records after `prefill` older rows (400 days to 30 days ago, exchanges only,
/// as content retention leaves them) and the untimed warm-up.
fn ingest_in(dir: &Path, n: usize, order: Order, prefill: usize) -> PathBuf {
    let label = match order {
        Order::Live => "in the order they end (live traffic)",
        Order::Random => "starts at random over 30 days (a backfill; veil never does one)",
    };
    let warm = env_usize("LEDGER_WARMUP", 20_000).div_ceil(BATCH) * BATCH;
    println!(
        "## (a) ingest: {n} records {label}, batches of {BATCH}, send_blocking + flush_blocking, after {warm} untimed, into a ledger of {prefill} older rows"
    );
    let now = SystemTime::now();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let t = Instant::now();
    let mut all: Vec<Record> = (0..warm + n).map(|k| record(k, &mut rng, now)).collect();
    if order == Order::Live {
        all.sort_by_key(|r| r.start + r.duration);
    }
    // Batches of exactly BATCH capacity, as the pipeline sends them. (Splitting the rest off
    // the front each time copied it and left every batch with the whole remainder's capacity:
    // quadratic time and memory, 12 GB and 35 s for 100,000 records.)
    let mut all = all.into_iter();
    let batches: Vec<Vec<Record>> = std::iter::from_fn(|| {
        let batch: Vec<Record> = all.by_ref().take(BATCH).collect();
        (!batch.is_empty()).then_some(batch)
    })
    .collect();
    println!(
        "built the records in {:.2} s (not timed below)",
        t.elapsed().as_secs_f64()
    );
    // What veil's pipeline workers do to each record before the hand-off (content JSON text,
    // tool-call count): timed apart, since in veil it runs on the workers, in parallel, not on
    // the writer.
    let t = Instant::now();
    for r in batches.iter().flatten() {
        r.prepare();
    }
    let prepare = t.elapsed();

    let path = dir
        .join(match order {
            Order::Live => format!("ingest-live-{prefill}"),
            Order::Random => format!("ingest-random-{prefill}"),
        })
        .join("ledger.db");
    if prefill > 0 {
        let t = Instant::now();
        generate(&path, prefill, 400 * DAY, 30 * DAY + 3600);
        println!(
            "(prefill took {:.1} s, not timed)",
            t.elapsed().as_secs_f64()
        );
    }
    let ledger = Ledger::open(settings(&path), None, Default::default()).expect("open ledger");
    let handle = ledger.handle();
    // The first `warm` records (earliest, in start order) are not timed: a new process pays
    // once for memory it touches the first time (the writer's 16 MiB page cache, the WAL's
    // file pages; on a virtual machine each first touch of a page is also a fault in the
    // host), which a veil that runs for days does not pay per exchange. The writer's start-up
    // bounds check also finishes here.
    let mut batches = batches.into_iter();
    for b in batches.by_ref().take(warm / BATCH) {
        handle.send_blocking(b, None);
    }
    assert!(handle.flush_blocking());
    let warmed = ledger.counters().ledger.rows.get();
    let (w0, p0, s0) = (cpu_ns(Some("veil-ledger")), cpu_ns(None), own_cpu_ns());
    let t = Instant::now();
    let mut send_wait = Duration::ZERO;
    for b in batches {
        let ts = Instant::now();
        handle.send_blocking(b, None);
        send_wait += ts.elapsed();
    }
    assert!(handle.flush_blocking());
    let wall = t.elapsed();
    let (w1, p1, s1) = (cpu_ns(Some("veil-ledger")), cpu_ns(None), own_cpu_ns());
    let rows = ledger.counters().ledger.rows.get() - warmed;
    let dropped = ledger.counters().ledger.dropped.get();
    assert_eq!(
        rows as usize, n,
        "every record committed ({dropped} dropped)"
    );
    drop(handle);
    assert!(ledger.shutdown(Duration::from_secs(30)));

    let per = |ns: u64| ns as f64 / 1000.0 / n as f64;
    println!("| measure | value | target |");
    println!("| --- | --- | --- |");
    println!(
        "| exchanges/s (wall {:.2} s) | {:.0} | ≥ 20,000 |",
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64()
    );
    println!(
        "| writer thread CPU per exchange | {:.2} µs | ≤ 10 µs |",
        per(w1 - w0)
    );
    println!(
        "| content text made on a pipeline worker, per exchange (Record::prepare, wall) | {:.2} µs | |",
        prepare.as_nanos() as f64 / 1000.0 / (warm + n) as f64
    );
    println!(
        "| process CPU per exchange minus the sender thread | {:.2} µs | |",
        per((p1 - p0).saturating_sub(s1 - s0))
    );
    println!(
        "| sender thread CPU per exchange (channel, drops) | {:.2} µs | |",
        per(s1 - s0)
    );
    println!(
        "| writer busy (its CPU ÷ wall) | {:.0} % | |",
        (w1 - w0) as f64 / wall.as_nanos() as f64 * 100.0
    );
    println!(
        "| sender blocked in send_blocking (queue full) | {:.2} s | |",
        send_wait.as_secs_f64()
    );
    path
}

fn size(path: &Path) {
    // (b) Size after a checkpoint folded the WAL into the file.
    let conn = Connection::open(path).expect("reopen");
    let _: (i64, i64, i64) = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .expect("checkpoint");
    let count = |t: &str| -> i64 {
        conn.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
            .unwrap()
    };
    let (ex, content, daily) = (count("exchanges"), count("content"), count("daily"));
    let size = file_len(path, "");
    println!(
        "\n## (b) size: {size} B file ({} B WAL) for {ex} exchanges, {content} content rows, {daily} daily rows",
        file_len(path, "-wal")
    );
    println!("| what | bytes per exchange |");
    println!("| --- | --- |");
    println!("| whole file | {:.0} |", size as f64 / ex as f64);
    let by_table: rusqlite::Result<Vec<(String, i64)>> = conn
        .prepare("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC")
        .and_then(|mut s| s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect());
    match by_table {
        Ok(v) => {
            for (name, bytes) in v.iter().take(8) {
                println!("| {name} | {:.0} |", *bytes as f64 / ex as f64);
            }
        }
        Err(e) => println!("| (per table: dbstat unavailable: {e}) | |"),
    }
}

/// Fills a fresh ledger with `n` exchange rows in one transaction, their starts spread evenly
/// from `older` to `newer` seconds ago, in start order (as the writer appends them).
fn generate(path: &Path, n: usize, older: u64, newer: u64) {
    let ledger = Ledger::open(settings(path), None, Default::default()).expect("open ledger");
    assert!(ledger.shutdown(Duration::from_secs(30)));
    let mut conn = Connection::open(path).expect("open");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let tx = conn.transaction().unwrap();
    // The distributions match `record` above.
    let n = tx
        .execute(
            "WITH RECURSIVE g(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM g WHERE i + 1 < ?1)
         INSERT INTO exchanges (request_id, trace_id, parent_span_id, start, provider, operation,
            request_model, response_model, user, feature, conversation, api_key_fp, status,
            outcome, error_type, finish_reasons, stream, input_tokens, output_tokens,
            cache_read_tokens, cost_nusd, duration_us, ttfc_us, request_bytes, response_bytes,
            redactions_input, redactions_output, redactions, rules_digest)
         SELECT printf('%08x-0000-7000-8000-%012x', i, i * 7919),
            printf('%016x%016x', i / 3, 24301), printf('%016x', i * 31), 
            strftime('%Y-%m-%dT%H:%M:%fZ', ?2 - ?3 + i * ((?3 - ?4) / CAST(?1 AS REAL)), 'unixepoch') || '000',
            CASE i % 5 WHEN 3 THEN 'anthropic' WHEN 4 THEN 'anthropic' ELSE 'openai' END, 'chat',
            CASE i % 5 WHEN 0 THEN 'gpt-4o-mini' WHEN 1 THEN 'gpt-4o' WHEN 2 THEN 'o3-mini'
                       WHEN 3 THEN 'claude-sonnet-4-5' ELSE 'claude-haiku-4-5' END,
            CASE WHEN i % 50 = 7 THEN NULL ELSE CASE i % 5 WHEN 0 THEN 'gpt-4o-mini-2024-07-18'
                 WHEN 1 THEN 'gpt-4o-2024-08-06' WHEN 2 THEN 'o3-mini-2025-01-31'
                 WHEN 3 THEN 'claude-sonnet-4-5-20250929' ELSE 'claude-haiku-4-5-20251001' END END,
            printf('u_%016x', (i * 2654435761) % 2000),
            CASE (i / 3) % 6 WHEN 0 THEN 'support-bot' WHEN 1 THEN 'search' WHEN 2 THEN 'summarize'
                 WHEN 3 THEN 'code-review' WHEN 4 THEN 'translate' ELSE 'agent' END,
            printf('conv_%x', i / 3), printf('fp_%04x', i % 4),
            CASE WHEN i % 50 = 7 THEN 429 ELSE 200 END,
            CASE WHEN i % 50 = 7 THEN 'upstream_failed' ELSE 'complete' END,
            CASE WHEN i % 50 = 7 THEN 'rate_limit_exceeded' END,
            CASE WHEN i % 50 = 7 THEN NULL ELSE 'stop' END,
            i % 5 >= 3,
            CASE WHEN i % 50 = 7 THEN NULL ELSE 200 + (i * 7) % 3000 END,
            CASE WHEN i % 50 = 7 THEN NULL ELSE 20 + (i * 13) % 600 END,
            CASE WHEN i % 50 = 7 THEN NULL ELSE (200 + (i * 7) % 3000) / 2 END,
            CASE WHEN i % 50 = 7 THEN NULL ELSE ((200 + (i * 7) % 3000) * 150 + (20 + (i * 13) % 600) * 600) END,
            300000 + (i * 104729) % 4000000,
            CASE WHEN i % 5 >= 3 THEN 200000 + (i * 31) % 400000 END,
            600 + i % 4000, 400 + i % 3000, 2, 1, '{\"EMAIL\":1,\"PERSON\":1}', 'b3:5f0c8e1d2a7b'
         FROM g",
            rusqlite::params![n as i64, now, older as i64, newer as i64],
        )
        .expect("generate rows");
    tx.commit().unwrap();
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
        .unwrap();
    println!(
        "generated {n} rows ({:.0} MB file)",
        file_len(path, "") as f64 / 1e6
    );
}

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut out = None;
    for _ in 0..runs {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed());
        out = Some(v);
    }
    (best, out.unwrap())
}

fn queries(dir: &Path, rows: usize) {
    println!("\n## (c) queries over {rows} rows, since = 30 days ago (every row matches)");
    let path = dir.join("query").join("ledger.db");
    let t = Instant::now();
    generate(&path, rows, 30 * DAY - 60, 3600 - 60);
    println!("(generation took {:.1} s)", t.elapsed().as_secs_f64());
    let conn = schema::open_read_only(&path).expect("open read-only");
    let filter = Filter {
        since: Some(SystemTime::now() - Duration::from_secs(30 * DAY)),
        ..Filter::default()
    };
    let since = veil::ledger::row::iso_utc(filter.since.unwrap());

    let (t_report, rep) = best_of(3, || {
        report::report(&conn, &[Dim::Feature], &filter).unwrap()
    });
    let (t_cards, cs) = best_of(3, || cards::cards(&conn, &filter).unwrap());
    assert_eq!(
        rep.total.requests as usize, rows,
        "the report covers every row"
    );
    assert_eq!(cs.len(), FEATURES.len());

    // Splits: the same SQL as report() with nothing done per row, with and without the index.
    let scan = |sql: &str| {
        best_of(3, || {
            let mut st = conn.prepare(sql).unwrap();
            let mut r = st.query([&since]).unwrap();
            let mut n = 0u64;
            while let Some(row) = r.next().unwrap() {
                let _: Option<String> = row.get(0).unwrap();
                n += 1;
            }
            n
        })
        .0
    };
    let cols = "feature, error_type IS NOT NULL, input_tokens, output_tokens, cache_read_tokens, cost_nusd, duration_us, ttfc_us";
    let t_scan_idx = scan(&format!(
        "SELECT {cols} FROM exchanges WHERE 1 AND start >= ?"
    ));
    let t_scan_full = scan(&format!(
        "SELECT {cols} FROM exchanges NOT INDEXED WHERE 1 AND start >= ?"
    ));
    let t_count = best_of(3, || {
        conn.query_row(
            "SELECT COUNT(*) FROM exchanges WHERE start >= ?1",
            [&since],
            |r| r.get::<_, i64>(0),
        )
        .unwrap()
    })
    .0;
    let t_agg = best_of(3, || {
        let mut st = conn
            .prepare(
                "SELECT feature, COUNT(*), SUM(error_type IS NOT NULL), SUM(input_tokens), SUM(output_tokens), SUM(cache_read_tokens), SUM(cost_nusd), COUNT(cost_nusd) FROM exchanges NOT INDEXED WHERE start >= ?1 GROUP BY feature",
            )
            .unwrap();
        st.query_map([&since], |r| r.get::<_, i64>(1))
            .unwrap()
            .count()
    })
    .0;
    let plan: Vec<String> = conn
        .prepare(&format!(
            "EXPLAIN QUERY PLAN SELECT {cols} FROM exchanges WHERE 1 AND start >= ?"
        ))
        .unwrap()
        .query_map([&since], |r| r.get::<_, String>(3))
        .unwrap()
        .map(Result::unwrap)
        .collect();

    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("| measure (best of 3) | ms | target |");
    println!("| --- | --- | --- |");
    println!(
        "| report::report by feature | {:.0} | ≤ 1000 |",
        ms(t_report)
    );
    println!("| cards::cards | {:.0} | |", ms(t_cards));
    println!(
        "| split: report's SQL alone, rows stepped, nothing done (plan: {}) | {:.0} | |",
        plan.join("; "),
        ms(t_scan_idx)
    );
    println!(
        "| split: same SQL with NOT INDEXED (full table scan) | {:.0} | |",
        ms(t_scan_full)
    );
    println!(
        "| split: COUNT(*) WHERE start >= since | {:.0} | |",
        ms(t_count)
    );
    println!(
        "| alternative: sums in SQL, GROUP BY feature, NOT INDEXED (no percentiles) | {:.0} | |",
        ms(t_agg)
    );
    drop(conn);

    // `veil forget --user`: one user of the 2,000, found by a scan (schema v5 has no index on
    // `exchanges.user`), then erased; run once, it writes.
    let user = veil::keys::UserPseudonym::parse(&format!("u_{:016x}", 7)).expect("pseudonym");
    let t = Instant::now();
    let erased = erase::forget_user(&path, &user).expect("forget --user");
    println!(
        "| erase::forget_user, one user's {} rows (scan, then erase) | {:.0} | |",
        erased.rows,
        ms(t.elapsed())
    );
    assert!(erased.rows > 0, "the generated rows carry that user");
}

fn export(dir: &Path, n: usize) {
    // The ledger also holds the ingest's untimed warm-up rows: the rate is of rows exported.
    let path = ingest_in(dir, n, Order::Live, 0);
    println!("\n## (d) veil export of every ledger row (no filter), best of 3");
    let conn = schema::open_read_only(&path).expect("ledger");
    let sel = dataset::Selection::default();
    for format in dataset::Format::ALL {
        let (t, s) = best_of(3, || {
            let mut sink = std::io::sink();
            dataset::export(&conn, &sel, format, &mut sink, &mut |_| {}).expect("export")
        });
        println!(
            "{:<13} {:>8.0} exchanges/s ({} written, {} skipped, {:.2} s)",
            format.name(),
            (s.written + s.skipped_total()) as f64 / t.as_secs_f64(),
            s.written,
            s.skipped_total(),
            t.as_secs_f64()
        );
    }
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    if std::env::var("LEDGER_ONLY").as_deref() == Ok("export") {
        let dir = tempfile::tempdir().expect("temp dir");
        export(dir.path(), env_usize("LEDGER_EXPORT_N", 100_000));
        return;
    }
    let n = env_usize("LEDGER_N", 200_000);
    let rows = env_usize("LEDGER_ROWS", 1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    ingest(dir.path(), n);
    queries(dir.path(), rows);
}
