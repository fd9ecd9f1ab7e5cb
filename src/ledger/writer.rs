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
//! passed, and a degraded ledger tries a probe write on every tick. A tick that finds the
//! writer idle for [`IDLE_RELEASE`] gives its page cache back ([`Writer::release_idle_cache`]).

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

/// The writer connection's page cache, KiB (`PRAGMA cache_size`, negative = KiB): room for a
/// whole group's dirty pages, so a group is written to the WAL once, at its commit.
const CACHE_KIB: i64 = 16 * 1024;

/// How long the writer has written nothing before a tick gives its page cache back to the
/// allocator ([`Writer::release_idle_cache`]).
const IDLE_RELEASE: std::time::Duration = std::time::Duration::from_secs(1);

/// Rows deleted per transaction by a bounds check.
const CHUNK: i64 = 5_000;

const INSERT_EXCHANGE: &str = "INSERT OR IGNORE INTO exchanges (
    request_id, trace_id, span_id, parent_span_id, start, provider, operation, request_model, response_model,
    user, feature, conversation, api_key_fp, status, outcome, error_type, finish_reasons,
    stream, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
    reasoning_tokens, cost_nusd, duration_us, ttfc_us, tool_calls, request_bytes,
    response_bytes, redactions_input, redactions_output, redactions, rules_digest,
    content_dropped, parse_error, forgotten, host, route, response_id)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,
            ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32, ?33, ?34, ?35,
            ?36, ?37, ?38, ?39)";

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
    /// Text buffers reused row after row.
    scratch: Scratch,
    /// The checkpointer thread, when it could be started (else SQLite's automatic checkpoint
    /// runs on this thread, as before).
    checkpointer: Option<Checkpointer>,
    /// Where committed batches go to be freed.
    dropper: Dropper,
    /// When the writer last wrote records or feedback, and whether its page cache may hold
    /// pages since it was last given back ([`Writer::release_idle_cache`]).
    last_write: Instant,
    cache_held: bool,
    /// Offers the core between rows ([`crate::os::Courtesy`]).
    courtesy: crate::os::Courtesy,
}

/// Batches waiting to be freed before the writer waits for the dropper.
const DROP_QUEUE: usize = 4;

/// Frees committed records on a thread of its own. A record is a few dozen allocations made
/// on the pipeline threads (strings, maps, the content's JSON trees); freeing them was about a
/// quarter of the writer's CPU (glibc returns each chunk to its arena, and a large free
/// consolidates the arena's small free chunks). On the writer that cost is serial with the
/// commits; here it overlaps them. The queue is bounded ([`DROP_QUEUE`] groups), so a slow
/// dropper makes the writer wait rather than hold memory without bound; if the thread cannot
/// be started, or is gone, the writer frees the records itself.
struct Dropper(Option<std::sync::mpsc::SyncSender<Vec<Vec<Record>>>>);

impl Dropper {
    fn start(nice: i32) -> Dropper {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<Vec<Record>>>(DROP_QUEUE);
        let started = std::thread::Builder::new()
            .name("veil-ledger-drop".into())
            .spawn(move || {
                crate::os::lower_thread_priority(nice);
                for batches in rx {
                    drop(batches);
                }
            });
        match started {
            Ok(_) => Dropper(Some(tx)),
            Err(e) => {
                tracing::debug!(error = %e, "ledger dropper: no thread; the writer frees records");
                Dropper(None)
            }
        }
    }

    fn drop_later(&self, batches: Vec<Vec<Record>>) {
        if let Some(tx) = &self.0 {
            // Err: the thread is gone; `batches` comes back in the error and is freed here.
            let _ = tx.send(batches);
        }
    }
}

/// Buffers for the columns the writer formats itself, reused row after row so a row costs no
/// allocation once they have grown.
#[derive(Default)]
struct Scratch {
    finish: String,
    /// How many `daily` keys the largest group so far had: the next group's map starts that
    /// big instead of growing (and rehashing) through its doublings, and the writer's
    /// allocator does not hand the table back and forth.
    days: usize,
}

impl Writer {
    pub(super) fn new(
        mut conn: Connection,
        settings: LedgerSettings,
        counters: Arc<Counters>,
        health: Option<Arc<Health>>,
    ) -> Self {
        // SQLite's default page cache (2 MiB) is smaller than one group's dirty pages (a
        // 4,096-row group is ~4.5 MiB of rows and content, plus the index pages it touches):
        // past it SQLite spills pages to the WAL mid-transaction and reads them back, which was
        // about a third of the writer's CPU. The cache grows only as pages are used.
        if let Err(e) = conn.pragma_update(None, "cache_size", -CACHE_KIB) {
            tracing::debug!(error = %e, "ledger: could not size the page cache");
        }
        let checkpointer = start_checkpointer(&mut conn, &settings);
        let settings_nice = settings.nice;
        Writer {
            conn,
            settings,
            counters,
            health,
            last_check: Instant::now(),
            scratch: Scratch::default(),
            checkpointer,
            dropper: Dropper::start(settings_nice),
            last_write: Instant::now(),
            cache_held: true,
            courtesy: crate::os::Courtesy::default(),
        }
    }

    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        self.enforce_bounds();
        while let Some(first) = self.courtesy.next(|block| {
            if block {
                rx.blocking_recv()
            } else {
                rx.try_recv().ok()
            }
        }) {
            // The batches as they came: appending them to one Vec would copy every record
            // (hundreds of bytes each) and reallocate as it grows.
            let mut batches: Vec<Vec<Record>> = Vec::new();
            let mut rows = 0;
            let mut dones = Vec::new();
            let mut flushes = Vec::new();
            let mut feedback: Vec<super::feedback::FeedbackRow> = Vec::new();
            let mut check = false;
            let mut probe = false;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    Msg::Batch(batch, done) => {
                        rows += batch.len();
                        batches.push(batch);
                        dones.extend(done);
                    }
                    Msg::Feedback(row) => feedback.push(*row),
                    Msg::Check => check = true,
                    Msg::Tick => {
                        check |= self.last_check.elapsed() >= self.settings.check_every;
                        probe = true;
                    }
                    Msg::Flush(tx) => flushes.push(tx),
                }
                if rows < GROUP_ROWS {
                    next = rx.try_recv().ok();
                }
            }
            if rows > 0 {
                let result = self.write(&batches);
                match &result {
                    Ok(n) => {
                        self.counters.ledger.rows.add(*n);
                    }
                    Err(e) => {
                        self.counters.ledger.failures.inc();
                        self.counters.ledger.dropped.add(rows as u64);
                        tracing::warn!(error = %e, records = rows, "ledger write failed: records dropped");
                    }
                }
                if let Some(h) = &self.health {
                    h.observe(Part::Ledger, &result.as_ref().map(|_| ()));
                }
                self.counters.ledger.queued_bytes.sub(
                    batches
                        .iter()
                        .fold(0u64, |n, b| n.saturating_add(super::wire_bytes(b))),
                );
                let ok = result.is_ok();
                if ok && let Some(recent) = &self.settings.recent {
                    recent.committed(batches.iter().flatten().map(|r| r.request_id.as_str()));
                }
                for done in dones {
                    done(ok);
                }
                self.dropper.drop_later(batches);
                if let Some(c) = &self.checkpointer {
                    c.catch_up();
                }
            }
            // After the group's records: a feedback sent right after its exchange's record
            // lands beside it. Its own transaction, so a bad row cannot cost the records.
            if !feedback.is_empty() {
                match self.write_feedback(&feedback) {
                    Ok(n) => tracing::debug!(rows = n, "ledger: feedback committed"),
                    Err(e) => {
                        self.counters.ledger.failures.inc();
                        tracing::warn!(error = %e, rows = feedback.len(), "ledger write failed: feedback dropped");
                    }
                }
            }
            if rows > 0 || !feedback.is_empty() {
                self.last_write = Instant::now();
            }
            // A bounds check reads and deletes pages too, but is no traffic: an idle veil's
            // check does not put off the release, which then frees what the check read.
            self.cache_held |= rows > 0 || !feedback.is_empty() || check;
            if check {
                self.enforce_bounds();
            } else if probe {
                self.probe();
            }
            if probe {
                self.release_idle_cache();
            }
            for tx in flushes {
                let _ = tx.send(());
            }
        }
        // Closing the writer's connection drops its WAL hook and with it the checkpointer's
        // channel; the checkpointer then closes the last connection, which checkpoints and
        // removes the WAL as a lone connection's close did before.
        let Writer {
            conn, checkpointer, ..
        } = self;
        drop(conn);
        if let Some(c) = checkpointer {
            let _ = c.thread.join();
        }
    }

    /// Commits `records` in one transaction; returns how many rows were new (a record whose
    /// request id is already in the ledger, replayed after a crash, is skipped).
    fn write(&mut self, batches: &[Vec<Record>]) -> rusqlite::Result<u64> {
        // IMMEDIATE: the tombstones read below and the rows written after are one snapshot,
        // so an erase commits either before it (its tombstone is seen) or after (it finds the
        // rows).
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let tombstones = Tombstones::load(&tx)?;
        let scratch = &mut self.scratch;
        let mut written = 0;
        {
            let mut ins = tx.prepare_cached(INSERT_EXCHANGE)?;
            let mut ins_content = tx.prepare_cached(INSERT_CONTENT)?;
            let mut ins_user = tx.prepare_cached(INSERT_USER)?;
            // foldhash, not SipHash: hashing the key's four strings per row was ~3% of the
            // writer (veil#12); the map lives for one transaction and is seeded per process.
            let mut days: HashMap<DayKey, DaySums, foldhash::fast::RandomState> =
                HashMap::with_capacity_and_hasher(scratch.days, Default::default());
            for r in batches.iter().flatten() {
                // A group of rows is milliseconds of CPU: a forwarding thread woken onto this
                // core runs between two rows, not after the group (`os::Courtesy`).
                self.courtesy.offer();
                let start = row::IsoUtc::new(r.start);
                let start = start.as_str();
                // The app's trace, and veil's span in it: derived from the request id, the
                // same ids the OTLP encoder and the feedback API use (veil#14).
                let trace = r.trace_parent.as_ref().map(|tp| {
                    (
                        row::hex_array::<16, 32>(&tp.trace_id),
                        row::hex_array::<8, 16>(&tp.parent_span_id),
                    )
                });
                let trace_id = trace.as_ref().map(|(t, _)| t.as_str());
                let parent_span_id = trace.as_ref().map(|(_, p)| p.as_str());
                let span = row::hex_array::<8, 16>(&r.prepare().span_id);
                let span_id = Some(span.as_str());
                let redactions = r.prepare().redactions.as_deref();
                let finish = match r.finish_reasons.as_slice() {
                    [] => None,
                    [one] => Some(one.as_str()),
                    many => {
                        scratch.finish.clear();
                        for (i, f) in many.iter().enumerate() {
                            if i > 0 {
                                scratch.finish.push(',');
                            }
                            scratch.finish.push_str(f);
                        }
                        Some(scratch.finish.as_str())
                    }
                };
                let tok = |t: Option<u64>| t.map(row::int);
                let forgotten = tombstones.covers(r, start);
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
                    // Like the route and the response id below: an id that can fetch the
                    // exchange back from the provider (a `conv_…` of OpenAI's conversations).
                    r.conversation_id.as_ref().filter(|_| !forgotten),
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
                    r.server_address,
                    Some(&r.route).filter(|_| !forgotten),
                    r.response_id.as_ref().filter(|_| !forgotten),
                ])?;
                if n == 0 {
                    continue;
                }
                written += 1;
                let rowid = tx.last_insert_rowid();
                let winner = r.user_pseudonym.as_ref().map(UserPseudonym::as_str);
                if !forgotten {
                    // The pseudonyms of the identity sources that did not win, so an erase by
                    // any of them finds the row (the winner is `exchanges.user`, already
                    // indexed: one source, the common case, costs no extra insert). A
                    // forgotten record keeps none.
                    for u in users_of(r).filter(|u| Some(*u) != winner) {
                        ins_user.execute(params![rowid, u])?;
                    }
                }
                if !forgotten && let Some([sys, input, output]) = row::content(r) {
                    ins_content.execute(params![rowid, sys, input, output])?;
                }
                days.entry(row::day_key(r, start)).or_default().add(r);
            }
            scratch.days = scratch.days.max(days.len());
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

    /// Commits feedback rows in one transaction, skipping those of an exchange or user
    /// forgotten in the last day (the tombstones, read in the same snapshot).
    fn write_feedback(&mut self, rows: &[super::feedback::FeedbackRow]) -> rusqlite::Result<u64> {
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let tombstones = Tombstones::load(&tx)?;
        let n = super::feedback::insert(
            &tx,
            rows,
            |id| tombstones.requests.contains(id),
            |user| tombstones.users.contains_key(user),
        )?;
        tx.commit()?;
        Ok(n)
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

    /// Gives the page cache back once the writer has been idle for [`IDLE_RELEASE`]
    /// (`sqlite3_db_release_memory`, once per idle spell). The cache is sized for a whole
    /// group's dirty pages ([`CACHE_KIB`]) and fills with the ledger's recent pages as it
    /// grows: kept, a veil that is idle after a burst would hold it for good (16 MiB, most of
    /// what it held at rest, veil#18). The next group reads the pages it needs back from the
    /// operating system's file cache. A failure costs only the memory: logged at debug.
    fn release_idle_cache(&mut self) {
        if !self.cache_held || self.last_write.elapsed() < IDLE_RELEASE {
            return;
        }
        self.cache_held = false;
        match self.conn.release_memory() {
            Ok(()) => tracing::debug!("ledger: idle, page cache released"),
            Err(e) => tracing::debug!(error = %e, "ledger: could not release the page cache"),
        }
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
        // Feedback goes by the same age as the rows it rates (it is never older than them).
        self.conn
            .execute("DELETE FROM feedback WHERE at < ?1", [&rows_cutoff])?;
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
            // Feedback older than the oldest row left rates rows that are gone.
            self.conn.execute(
                "DELETE FROM feedback WHERE at < (SELECT MIN(start) FROM exchanges)",
                [],
            )?;
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

/// WAL bytes past which the writer asks for a checkpoint: SQLite's own automatic checkpoint
/// threshold (`wal_autocheckpoint`, 1000 pages) at its default page size of 4 KiB, kept in
/// bytes whatever the ledger's page size.
const CHECKPOINT_BYTES: i64 = 1000 * 4096;

/// Longest the writer waits, after a commit that asked for a checkpoint, for the checkpointer
/// to finish it ([`Checkpointer::catch_up`]).
const CATCH_UP_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// The checkpointer thread and what the writer needs to wait for it.
struct Checkpointer {
    thread: std::thread::JoinHandle<()>,
    progress: Arc<Progress>,
}

/// Checkpoints asked for and done, counted so a wait knows which report covers its commit.
#[derive(Default)]
struct Progress {
    /// Incremented by the WAL hook (on the writer thread) each time a commit asks for a
    /// checkpoint, before it nudges the checkpointer.
    asked: std::sync::atomic::AtomicU64,
    /// The largest `asked` a finished checkpoint covered: the checkpointer reads `asked` before
    /// it starts, so every commit counted by then has its frames in the WAL it copies.
    done: std::sync::Mutex<u64>,
    finished: std::sync::Condvar,
}

impl Checkpointer {
    /// After a commit, waits (at most [`CATCH_UP_WAIT`]) until every checkpoint asked for so
    /// far has run, so the writer's next transaction finds the WAL copied into the database
    /// and starts it again from its first frame.
    ///
    /// Without the wait a busy writer starts its next transaction while the checkpoint still
    /// runs; SQLite rewinds the WAL only when a write transaction begins on a fully
    /// checkpointed WAL (<https://www.sqlite.org/wal.html>, "Avoiding Excessively Large WAL
    /// Files"), so under sustained load it never did: the WAL grew without bound (168 MB for
    /// 100,000 exchanges in `benches/ledger.rs`), and every commit appended to new file pages,
    /// which the kernel allocates and zeroes (about a tenth of the writer's CPU). Rewound, a
    /// commit overwrites pages already cached.
    ///
    /// The wait costs no CPU, and a `PASSIVE` checkpoint does not wait for readers, so it is
    /// usually the time to copy one group. A checkpoint asked for by a commit the writer did not
    /// wait on (a bounds check's deletes, feedback) is waited for at the next group. While a
    /// reader holds an old snapshot the WAL cannot be rewound: every commit then asks for a
    /// checkpoint and waits for it (a short one, as it copies only what the reader allows).
    /// Slow storage, or a checkpointer starved of CPU, can make a wait reach its bound; the
    /// writer then goes on, and the next wait covers the late checkpoint too. Throughput under
    /// sustained load is therefore the writes plus the checkpoints, not the writes alone.
    fn catch_up(&self) {
        let p = &self.progress;
        let asked = p.asked.load(std::sync::atomic::Ordering::Acquire);
        let done = p.done.lock().unwrap_or_else(|e| e.into_inner());
        // Ok or poisoned (a panicked checkpointer), timed out or not: the writer goes on.
        let _ = p
            .finished
            .wait_timeout_while(done, CATCH_UP_WAIT, |done| *done < asked);
    }
}

/// Moves the WAL checkpoint off the writer thread: a thread with its own connection runs a
/// `PASSIVE` checkpoint whenever a commit leaves more than [`CHECKPOINT_BYTES`] in the WAL.
///
/// SQLite runs its automatic checkpoint inside the commit that crosses the threshold, on the
/// committing thread: copying the WAL into the database file (and its fsyncs) was part of the
/// ~20% of the writer's CPU spent in the kernel. SQLite documents this split for writers that
/// must not stall (<https://www.sqlite.org/wal.html>, "Application-Initiated Checkpoints"); a
/// `PASSIVE` checkpoint takes no lock the writer needs, so writer and checkpointer overlap.
/// The commit's durability is unchanged: a commit is durable when its frames are in the WAL.
/// Registering the hook turns SQLite's own automatic checkpoint off on this connection (both use
/// `sqlite3_wal_hook`). If the thread or its connection cannot be had, nothing changes and
/// SQLite keeps checkpointing on the writer thread.
fn start_checkpointer(conn: &mut Connection, settings: &LedgerSettings) -> Option<Checkpointer> {
    let ckpt = Connection::open_with_flags(
        &settings.path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .and_then(|c| c.busy_timeout(super::schema::BUSY_TIMEOUT).map(|()| c));
    let ckpt = match ckpt {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "ledger checkpointer: no connection; SQLite checkpoints on the writer");
            return None;
        }
    };
    // One pending request is enough: a checkpoint copies everything committed before it.
    let (nudge, nudged) = std::sync::mpsc::sync_channel::<()>(1);
    let progress = Arc::new(Progress::default());
    let reports = Arc::clone(&progress);
    let nice = settings.nice;
    let thread = std::thread::Builder::new()
        .name("veil-ledger-ckpt".into())
        .spawn(move || {
            crate::os::lower_thread_priority(nice);
            while nudged.recv().is_ok() {
                let covers = reports.asked.load(std::sync::atomic::Ordering::Acquire);
                // Errors (busy behind an erase's TRUNCATE, a full disk) leave the frames in the
                // WAL, where they are durable; the next nudge tries again.
                if let Err(e) = ckpt.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                    r.get::<_, i64>(0)
                }) {
                    tracing::debug!(error = %e, "ledger checkpoint failed; retried after the next commit");
                }
                // Also after a failure: the writer's wait ends, and the next commit asks again.
                let mut done = reports.done.lock().unwrap_or_else(|e| e.into_inner());
                *done = (*done).max(covers);
                drop(done);
                reports.finished.notify_all();
            }
        });
    let thread = match thread {
        Ok(h) => h,
        Err(e) => {
            tracing::debug!(error = %e, "ledger checkpointer: no thread; SQLite checkpoints on the writer");
            return None;
        }
    };
    let page_size: i64 = conn
        .pragma_query_value(None, "page_size", |r| r.get(0))
        .unwrap_or(4096)
        .max(512);
    let checkpoint_pages = i32::try_from(CHECKPOINT_BYTES / page_size).unwrap_or(1000);
    let asking = Arc::clone(&progress);
    let hooked = conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: i32| {
        if pages >= checkpoint_pages {
            // Counted before the nudge, so the checkpoint that answers it sees the count.
            asking
                .asked
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            // Full: a checkpoint is already asked for, and it reads the count when it starts.
            let _ = nudge.try_send(());
        }
        Ok(())
    }));
    match hooked {
        Ok(()) => Some(Checkpointer { thread, progress }),
        Err(e) => {
            // Not joined: the thread ends when the hook (the only sender) is dropped.
            tracing::debug!(error = %e, "ledger checkpointer: no WAL hook; SQLite checkpoints on the writer");
            drop(thread);
            None
        }
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
        if self.requests.is_empty() && self.users.is_empty() {
            return false;
        }
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
