//! # The ledger writer: one thread, one transaction per group of batches, bounds on a clock.
//!
//! Takes batches of records from the channel, and everything already queued behind the first
//! (up to [`GROUP_ROWS`]), and commits them in one transaction: one `exchanges` row per
//! record, one `content` row when the rules let content out, and one upsert per `daily` key of
//! the group (summed in memory first, so the rollup costs a few statements per transaction,
//! not one per exchange). A failed transaction rolls back whole: its records are dropped,
//! counted, and the ledger is marked degraded in [`Health`] until a later write succeeds.
//!
//! Bounds ([`Writer::enforce_bounds`]) run on the ticker's clock, in chunks of
//! [`CHUNK`] rows per transaction so a check never holds the write lock long. The ticker
//! ticks every [`PROBE_EVERY`](super::PROBE_EVERY): the bounds run once `check_every` has
//! passed, and a degraded ledger tries a probe write on every tick.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use rusqlite::{Connection, params};
use tokio::sync::mpsc;

use super::row::{self, DayKey, DaySums};
use super::{LedgerSettings, Msg};
use crate::counters::Counters;
use crate::health::{Health, Part};
use crate::keys::UserPseudonym;
use crate::record::Record;

/// Most exchange rows committed in one transaction.
const GROUP_ROWS: usize = 4096;

/// Rows deleted per transaction by a bounds check.
const CHUNK: i64 = 5_000;

const INSERT_EXCHANGE: &str = "INSERT OR IGNORE INTO exchanges (
    request_id, trace_id, span_id, parent_span_id, start, provider, operation, request_model, response_model,
    user, feature, conversation, api_key_fp, status, outcome, error_type, finish_reasons,
    stream, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
    reasoning_tokens, cost_nusd, duration_us, ttfc_us, tool_calls, request_bytes,
    response_bytes, redactions_input, redactions_output, redactions, rules_digest,
    content_dropped, parse_error, forgotten)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
            ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, ?34, ?35,
            ?36)";

const INSERT_USER: &str = "INSERT OR IGNORE INTO exchange_users (exchange, user) VALUES (?1, ?2)";

const INSERT_CONTENT: &str = "INSERT INTO content
    (exchange, system_instructions, input_messages, output_messages) VALUES (?1, ?2, ?3, ?4)";

const UPSERT_DAILY: &str = "INSERT INTO daily (day, provider, model, feature, api_key_fp,
    requests, errors, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
    reasoning_tokens, cost_nusd) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)
    ON CONFLICT (day, provider, model, feature, api_key_fp) DO UPDATE SET
    requests = requests + excluded.requests, errors = errors + excluded.errors,
    input_tokens = input_tokens + excluded.input_tokens,
    output_tokens = output_tokens + excluded.output_tokens,
    cache_read_tokens = cache_read_tokens + excluded.cache_read_tokens,
    cache_write_tokens = cache_write_tokens + excluded.cache_write_tokens,
    reasoning_tokens = reasoning_tokens + excluded.reasoning_tokens,
    cost_nusd = cost_nusd + excluded.cost_nusd";

pub(super) struct Writer {
    conn: Connection,
    settings: LedgerSettings,
    counters: Arc<Counters>,
    health: Option<Arc<Health>>,
    /// When the bounds were last checked (the ticker's `Tick`s run them every `check_every`).
    last_check: Instant,
}

impl Writer {
    pub(super) fn new(
        conn: Connection,
        settings: LedgerSettings,
        counters: Arc<Counters>,
        health: Option<Arc<Health>>,
    ) -> Self {
        Writer {
            conn,
            settings,
            counters,
            health,
            last_check: Instant::now(),
        }
    }

    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        self.enforce_bounds();
        while let Some(first) = rx.blocking_recv() {
            let mut records = Vec::new();
            let mut dones = Vec::new();
            let mut flushes = Vec::new();
            let mut check = false;
            let mut probe = false;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Batch(batch, done) => {
                        records.extend(batch);
                        dones.extend(done);
                    }
                    Msg::Check => check = true,
                    Msg::Tick => {
                        check |= self.last_check.elapsed() >= self.settings.check_every;
                        probe = true;
                    }
                    Msg::Flush(tx) => flushes.push(tx),
                }
                if records.len() < GROUP_ROWS {
                    next = rx.try_recv().ok();
                }
            }
            if !records.is_empty() {
                let result = self.write(&records);
                match &result {
                    Ok(n) => {
                        self.counters.ledger.rows.add(*n);
                    }
                    Err(e) => {
                        self.counters.ledger.failures.inc();
                        self.counters.ledger.dropped.add(records.len() as u64);
                        tracing::warn!(error = %e, records = records.len(), "ledger write failed: records dropped");
                    }
                }
                if let Some(h) = &self.health {
                    h.observe(Part::Ledger, &result.as_ref().map(|_| ()));
                }
                self.counters
                    .ledger
                    .queued_bytes
                    .sub(super::wire_bytes(&records));
                let ok = result.is_ok();
                for done in dones {
                    done(ok);
                }
            }
            if check {
                self.enforce_bounds();
            } else if probe {
                self.probe();
            }
            for tx in flushes {
                let _ = tx.send(());
            }
        }
    }

    /// Commits `records` in one transaction; returns how many rows were new (a record whose
    /// request id is already in the ledger, replayed after a crash, is skipped).
    fn write(&mut self, records: &[Record]) -> rusqlite::Result<u64> {
        // IMMEDIATE: the tombstones read below and the rows written after are one snapshot,
        // so an erase commits either before it (its tombstone is seen) or after (it finds the
        // rows).
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let tombstones = Tombstones::load(&tx)?;
        let mut written = 0;
        {
            let mut ins = tx.prepare_cached(INSERT_EXCHANGE)?;
            let mut ins_content = tx.prepare_cached(INSERT_CONTENT)?;
            let mut ins_user = tx.prepare_cached(INSERT_USER)?;
            let mut days: HashMap<DayKey, DaySums> = HashMap::new();
            for r in records {
                let start = row::iso_utc(r.start);
                // The app's trace: veil's own span ids are chosen by the OTLP encoder and are
                // not known here yet (span_id stays NULL until records carry them).
                let (trace_id, parent_span_id) = match &r.trace_parent {
                    Some(tp) => (
                        Some(row::hex(&tp.trace_id)),
                        Some(row::hex(&tp.parent_span_id)),
                    ),
                    None => (None, None),
                };
                let span_id: Option<String> = None;
                let redactions = (!r.redactions.is_empty())
                    .then(|| serde_json::to_string(&r.redactions).unwrap_or_default());
                let finish = (!r.finish_reasons.is_empty()).then(|| r.finish_reasons.join(","));
                let tok = |t: Option<u64>| t.map(row::int);
                let forgotten = tombstones.covers(r, &start);
                let user = r
                    .user_pseudonym
                    .as_ref()
                    .map(UserPseudonym::as_str)
                    .filter(|_| !forgotten);
                let n = ins.execute(params![
                    r.request_id,
                    trace_id,
                    span_id,
                    parent_span_id,
                    start,
                    r.provider.as_str(),
                    r.operation.as_str(),
                    r.request_model,
                    r.response_model,
                    user,
                    r.feature,
                    r.conversation_id,
                    r.api_key_fingerprint,
                    r.status,
                    r.outcome.as_str(),
                    r.error_type,
                    finish,
                    r.stream,
                    tok(r.usage.input_tokens),
                    tok(r.usage.output_tokens),
                    tok(r.usage.cache_read_tokens),
                    tok(r.usage.cache_creation_tokens),
                    tok(r.usage.reasoning_tokens),
                    r.cost_usd.and_then(row::nano_usd),
                    row::micros(r.duration),
                    r.time_to_first_chunk.map(row::micros),
                    row::tool_calls(r),
                    row::int(r.request_bytes),
                    row::int(r.response_bytes),
                    row::int(r.redactions_input),
                    row::int(r.redactions_output),
                    redactions,
                    r.rules_digest,
                    r.content_dropped,
                    r.parse_error,
                    forgotten,
                ])?;
                if n == 0 {
                    continue;
                }
                written += 1;
                let rowid = tx.last_insert_rowid();
                if !forgotten {
                    // Every identity source's pseudonym, so an erase by any of them finds
                    // the row; a forgotten record keeps none.
                    for u in users_of(r) {
                        ins_user.execute(params![rowid, u])?;
                    }
                }
                if let Some([sys, input, output]) = row::content(r).filter(|_| !forgotten) {
                    ins_content.execute(params![rowid, sys, input, output])?;
                }
                days.entry(row::day_key(r, &start)).or_default().add(r);
            }
            let mut up = tx.prepare_cached(UPSERT_DAILY)?;
            for (k, s) in days {
                up.execute(params![
                    k.day(),
                    k.provider,
                    k.model,
                    k.feature,
                    k.api_key_fp,
                    s.requests,
                    s.errors,
                    s.input_tokens,
                    s.output_tokens,
                    s.cache_read_tokens,
                    s.cache_write_tokens,
                    s.reasoning_tokens,
                    s.cost_nusd
                ])?;
            }
        }
        tx.commit()?;
        Ok(written)
    }

    /// Deletes what the bounds say must go: content past `content_retention`, rows past
    /// `retention`, then, while the pages in use exceed `max_size`, the oldest content and then
    /// the oldest rows; gives the freed pages back to the file system. While the ledger is
    /// degraded, also probes with a small write so it recovers once the disk has room again.
    /// Failures are logged and counted, and retried at the next check.
    pub(super) fn enforce_bounds(&mut self) {
        self.last_check = Instant::now();
        let result = self.bounds();
        if let Err(e) = &result {
            self.counters.ledger.failures.inc();
            tracing::warn!(error = %e, "ledger bounds check failed; retried at the next check");
        }
        self.probe();
    }

    /// While the ledger is degraded, tries a small write (the `probe` row of `meta`): its
    /// success recovers the ledger in [`Health`] without waiting for traffic, which
    /// `audit = "required"` refuses while degraded. A no-op when healthy.
    fn probe(&mut self) {
        if let Some(h) = self.health.as_ref().filter(|h| h.is_degraded(Part::Ledger)) {
            let probe = self.conn.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('probe', ?1)",
                [row::iso_utc(SystemTime::now())],
            );
            h.observe(Part::Ledger, &probe.map(|_| ()));
        }
    }

    fn bounds(&mut self) -> rusqlite::Result<()> {
        let now = SystemTime::now();
        let cutoff = |age| row::iso_utc(now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH));
        self.conn.execute(
            "DELETE FROM forgotten WHERE at < ?1",
            [cutoff(super::erase::TOMBSTONE_TTL)],
        )?;
        let content_cutoff = cutoff(self.settings.content_retention);
        // Driven by the content table (small, and empty once swept), never by a row-id
        // watermark: ids follow commit order, not start order, so a watermark would skip a
        // short exchange committed before a long one that started earlier.
        loop {
            let n = self.conn.execute(
                "DELETE FROM content WHERE exchange IN
                 (SELECT c.exchange FROM content c JOIN exchanges e ON e.id = c.exchange
                  WHERE e.start < ?1 LIMIT ?2)",
                params![content_cutoff, CHUNK],
            )? as u64;
            self.counters.ledger.content_evicted.add(n);
            if n < CHUNK as u64 {
                break;
            }
        }
        let rows_cutoff = cutoff(self.settings.retention);
        loop {
            let n = self.conn.execute(
                "DELETE FROM exchanges WHERE id IN
                 (SELECT id FROM exchanges WHERE start < ?1 ORDER BY start LIMIT ?2)",
                params![rows_cutoff, CHUNK],
            )? as u64;
            self.counters.ledger.rows_evicted.add(n);
            if n < CHUNK as u64 {
                break;
            }
        }
        while self.used_bytes()? > self.settings.max_size {
            let n = self.evict_oldest(
                "content",
                "DELETE FROM content WHERE exchange IN
                 (SELECT exchange FROM content ORDER BY exchange LIMIT ?1)",
            )?;
            if n > 0 {
                self.counters.ledger.content_evicted.add(n);
                continue;
            }
            let n = self.evict_oldest(
                "exchanges",
                "DELETE FROM exchanges WHERE id IN
                 (SELECT id FROM exchanges ORDER BY start LIMIT ?1)",
            )?;
            self.counters.ledger.rows_evicted.add(n);
            if n == 0 {
                break;
            }
        }
        self.conn.execute_batch("PRAGMA incremental_vacuum")?;
        // An erase that met a reader left the WAL untruncated: finish its wipe now.
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                r.get::<_, i64>(0)
            });
        let used = self.used_bytes()?;
        self.counters.ledger.bytes.set(used);
        Ok(())
    }

    /// Runs `delete` (which takes `LIMIT ?1`) for 5 % of `table`'s rows, at least one and at
    /// most [`CHUNK`]: fine enough not to evict much more than the size bound needs.
    fn evict_oldest(&self, table: &'static str, delete: &str) -> rusqlite::Result<u64> {
        let step = (self.count(table)? / 20).clamp(1, CHUNK);
        Ok(self.conn.execute(delete, [step])? as u64)
    }

    fn count(&self, table: &'static str) -> rusqlite::Result<i64> {
        self.conn
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
    }

    /// Bytes of pages holding data (the file less its free pages).
    fn used_bytes(&self) -> rusqlite::Result<u64> {
        let pages: i64 = self.conn.query_row("PRAGMA page_count", [], |r| r.get(0))?;
        let free: i64 = self
            .conn
            .query_row("PRAGMA freelist_count", [], |r| r.get(0))?;
        let size: i64 = self.conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        Ok(u64::try_from((pages - free).max(0) * size).unwrap_or(0))
    }
}

/// The erases of the last [`TOMBSTONE_TTL`](super::erase::TOMBSTONE_TTL) (see
/// [`erase`](super::erase)), read once per transaction; usually there are none.
#[derive(Default)]
struct Tombstones {
    requests: HashSet<String>,
    /// User pseudonym → when it was erased (ISO UTC, as `start`).
    users: HashMap<String, String>,
}

impl Tombstones {
    fn load(conn: &Connection) -> rusqlite::Result<Tombstones> {
        let mut t = Tombstones::default();
        let any: bool = conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM forgotten)")?
            .query_row([], |r| r.get(0))?;
        if !any {
            return Ok(t);
        }
        let mut q = conn.prepare_cached("SELECT kind, key, at FROM forgotten")?;
        let mut rows = q.query([])?;
        while let Some(r) = rows.next()? {
            let (kind, key, at): (String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
            if kind == "user" {
                t.users.insert(key, at);
            } else {
                t.requests.insert(key);
            }
        }
        Ok(t)
    }

    /// Whether `r` (started at `start`, as stored) was already forgotten: its request id was,
    /// or any user one of its identity sources named was, after the exchange started.
    fn covers(&self, r: &Record, start: &str) -> bool {
        self.requests.contains(&r.request_id)
            || users_of(r)
                .filter_map(|u| self.users.get(u))
                .any(|at| start <= at.as_str())
    }
}

/// Every pseudonym of `r`: the winner, then the other identity sources' (a record built by
/// hand may fill only `user_pseudonym`). Duplicates are harmless (`INSERT OR IGNORE`).
fn users_of(r: &Record) -> impl Iterator<Item = &str> {
    r.user_pseudonym
        .iter()
        .chain(r.user_pseudonyms.iter())
        .map(UserPseudonym::as_str)
}
