//! # Store: segments, key slots and the index under `<data>/sealed/`.
//!
//! Owns every file under `<data>/sealed/` and the one writer thread that changes them. It
//! never decides what a payload looks like ([`super::envelope`] does) and never touches the
//! network, the rules or OTLP.
//!
//! ```text
//! <data>/sealed/index.redb        redb: id → (segment, offset, length, key slot, time, user);
//!                                 user → ids; (time, id) → (); free key slots; segment state
//! <data>/sealed/keyslots          fixed 128-byte slots, one wrapped data key each
//! <data>/sealed/segments/N.seg    append-only frames (sealed payloads)
//! <data>/sealed/receipts.jsonl    one line per deleted exchange (append-only, fsynced)
//! ```
//!
//! ## Writes: one writer thread, group commit
//! Callers encrypt on their own thread ([`SealStore::submit`]) and hand the finished frame and
//! key slot to the writer. The writer takes everything queued (natural batching: while it
//! fsyncs, the next batch piles up, so fsyncs happen at most once per batch and a lone write is
//! not delayed), appends the frames, writes the slots, fsyncs both files, then commits the
//! index (redb, durable). Only then are the batch's [`SealAck`]s resolved. Forget, compaction
//! and rewrap go through the same thread, so they never race a write.
//!
//! ## Crash safety
//! The index records the active segment and its committed length. On open, bytes past it (an
//! uncommitted or torn tail) are cut off; if the file is *shorter* than committed (someone or
//! something truncated it), the whole frames that remain are kept and the lost entries are
//! removed from the index, shredded and listed in the receipts as lost.
//!
//! ## Failed writes: degraded, then recovered without a restart
//! A failed write (ENOSPC in a segment, the key slots, the receipts or the index commit) makes
//! the store *degraded* ([`super::health`]): seals are refused at once, destructive commands
//! destroy nothing. redb refuses every transaction after one I/O error, so the index handle is
//! swappable (`Index`): readers hold it for one transaction at a time, and recovery drops and
//! reopens it. The writer retries every [`RETRY_INTERVAL`] and before every operator command: it
//! first checks that [`PROBE_LEN`] bytes can be written and synced, then reopens the index if
//! redb is poisoned, and reloads its whole state from the committed index exactly as at open
//! (tail of the active segment cut, pending forgets completed), so nothing from the failed
//! batch survives half-written.
//!
//! ## Deletion: write-ahead receipts
//! A forget appends its receipts to `receipts.jsonl` and fsyncs them, then writes its audit
//! events (durably), and only then destroys: it zeroes the key slots in place
//! (crypto-shredding) and fsyncs them, zeroes the ciphertext, and removes the index entries in a
//! commit that also advances the `receipts_done` checkpoint. So a failure before the receipts
//! are durable destroys nothing ("no receipt" means "nothing destroyed"), and receipts past the
//! checkpoint are intents that recovery (at open, or after a failed write) completes: nothing
//! is ever destroyed without a receipt. Wrapped keys live in the slot file, not in redb,
//! because redb is copy-on-write: a deleted value would linger in free pages. Compaction moves
//! live frames out of segments with dead bytes and deletes them.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use redb::{
    Database, MultimapTableDefinition, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};
use tokio::sync::oneshot;

use super::audit::{AuditEvent, AuditKind, AuditSink, JsonlAuditSink, rfc3339};
use super::envelope::{self, SLOT_LEN};
use super::health::{Health, HealthState, SealHealth, StoreStats};
use super::{ErrorKind, SealError};
use crate::exchange::{Exchange, ExchangeId};
use crate::keys::{KeyId, Keyring, Purpose};

const EXCHANGES: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("exchanges");
const BY_USER: MultimapTableDefinition<&str, [u8; 16]> = MultimapTableDefinition::new("by_user");
const BY_TIME: TableDefinition<(u64, [u8; 16]), ()> = TableDefinition::new("by_time");
const FREE_SLOTS: TableDefinition<u64, ()> = TableDefinition::new("free_slots");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

const SEGMENT_MAGIC: &[u8; 8] = b"VEILSEG1";
const SEG_HEADER: u64 = SEGMENT_MAGIC.len() as u64;
/// Default segment size before rolling to a new one: small enough that compaction rewrites
/// little at a time, large enough that the directory stays short.
pub const DEFAULT_SEGMENT_MAX: u64 = 64 << 20;
/// Upper bound of one group commit: keeps a batch's memory and latency bounded under load.
const BATCH_MAX_BYTES: usize = 64 << 20;
const BATCH_MAX_JOBS: usize = 8192;
/// Group commit: at most one commit (3 fsyncs and an index transaction) per interval. A job
/// arriving after a quiet spell commits at once; under load, jobs gather for up to this long,
/// so the per-exchange cost of durability falls as the rate rises. Acks wait at most this
/// much longer; forwarding never waits on them.
const COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(2);
/// Frames smaller than this are staged and written with one syscall per batch.
const STAGE_LIMIT: usize = 64 << 10;
/// How often a degraded store tries to recover on its own (operator commands try at once).
/// Short enough that sealing resumes within a fraction of a second once space returns; long
/// enough that a disk that stays full costs four small probe writes a second, not a busy loop.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(250);
/// Bytes a recovery attempt must be able to write and fsync in `<data>/sealed/` before it
/// reopens anything: a store that recovered into a disk with a few free pages would fail its
/// next commit at once and flap between ok and degraded. 256 KiB covers a redb commit of a
/// typical batch plus its frames; a larger batch that still does not fit degrades again.
pub const PROBE_LEN: usize = 256 << 10;
/// Most reads of one unseal: each retry follows an observed change (the frame was moved by a
/// compaction between reading the index and the file), so three moves in a row is already
/// pathological.
const UNSEAL_ATTEMPTS: usize = 4;

/// Options for [`SealStore::open`].
#[derive(Debug, Clone, Default)]
pub struct SealOptions {
    /// Keys dir, so [`SealStore::reload_keys`] (admin `keys/reload`, rewrap) can re-read it.
    pub keys_dir: Option<PathBuf>,
    /// Where audit events go (default: [`JsonlAuditSink`] on `<data>/audit.jsonl`). It must
    /// be durable: an `Err` from it refuses the action (see [`AuditSink`]).
    pub audit: Option<Arc<dyn AuditSink>>,
    /// Segment size before rolling (default [`DEFAULT_SEGMENT_MAX`]).
    pub segment_max: Option<u64>,
    /// Niceness of the writer thread (see [`crate::os::RECORDING_NICE`]; 0 = as the caller).
    pub writer_nice: i32,
    /// veil's recording health: the store marks [`crate::health::Part::Seal`] degraded and
    /// recovered in it as its own health changes, so the proxy's admission check and
    /// `/healthz` see sealing failures the moment the writer does.
    pub recording_health: Option<Arc<crate::health::Health>>,
}

/// Where one sealed exchange lives (what the index says). No secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Segment number.
    pub segment: u32,
    /// Byte offset of the frame in the segment.
    pub offset: u64,
    /// Frame length.
    pub len: u32,
    /// Key slot number.
    pub slot: u64,
    /// The exchange's start time (what retention compares).
    pub time: SystemTime,
    /// User pseudonym, if the exchange had one.
    pub user: Option<String>,
}

impl IndexEntry {
    fn encode(&self) -> Vec<u8> {
        let user = self.user.as_deref().unwrap_or("");
        let mut v = Vec::with_capacity(35 + user.len());
        v.push(1u8);
        v.extend_from_slice(&self.segment.to_le_bytes());
        v.extend_from_slice(&self.offset.to_le_bytes());
        v.extend_from_slice(&self.len.to_le_bytes());
        v.extend_from_slice(&self.slot.to_le_bytes());
        v.extend_from_slice(&millis(self.time).to_le_bytes());
        v.extend_from_slice(&(user.len() as u16).to_le_bytes());
        v.extend_from_slice(user.as_bytes());
        v
    }

    fn decode(b: &[u8]) -> Result<Self, SealError> {
        let bad = || SealError::new(ErrorKind::Corrupt, "index entry is malformed");
        if b.len() < 35 || b[0] != 1 {
            return Err(bad());
        }
        let u32at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4"));
        let u64at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8"));
        let ulen = u16::from_le_bytes(b[33..35].try_into().expect("2")) as usize;
        let user = b.get(35..35 + ulen).ok_or_else(bad)?;
        let user = std::str::from_utf8(user).map_err(|_| bad())?;
        Ok(IndexEntry {
            segment: u32at(1),
            offset: u64at(5),
            len: u32at(13),
            slot: u64at(17),
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(u64at(25)),
            user: (!user.is_empty()).then(|| user.to_string()),
        })
    }
}

fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The result of forgetting one ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForgetOutcome {
    /// The ID asked for.
    pub id: ExchangeId,
    /// True when it was in the store and is now destroyed (receipt and audit entry written,
    /// data key shredded); false when it was unknown (never sealed, or already forgotten).
    pub forgotten: bool,
}

/// A forget, forget-by-user or purge that failed, with exactly what it did before failing
/// (veil#10: a purge on a full disk destroyed data and reported only "failed").
///
/// Every ID the operation was asked about (or, for a purge, found eligible) is in exactly one
/// of three lists:
/// - [`destroyed`](ForgetError::destroyed): receipt and audit entry written, data key shredded;
/// - [`pending`](ForgetError::pending): receipt and audit entry written, no longer readable,
///   but shredding the data key failed; the store completes it when it recovers (at the latest
///   at the next open). Also used when the writer stopped mid-way: then the receipts file says
///   which were receipted, and only those are destroyed at the next open;
/// - [`not_destroyed`](ForgetError::not_destroyed): still sealed and readable, nothing written
///   for them (no receipt, no audit entry). Unknown IDs land here too when the failure came
///   before the store could tell them apart.
#[derive(Clone, PartialEq, Eq)]
pub struct ForgetError {
    error: SealError,
    destroyed: Vec<ExchangeId>,
    pending: Vec<ExchangeId>,
    not_destroyed: Vec<ExchangeId>,
}

impl ForgetError {
    /// Nothing was destroyed.
    pub(crate) fn nothing(error: SealError, not_destroyed: Vec<ExchangeId>) -> Self {
        ForgetError {
            error,
            destroyed: Vec::new(),
            pending: Vec::new(),
            not_destroyed,
        }
    }

    /// Nothing was destroyed yet, but receipts for `ids` are still on disk and could not be
    /// withdrawn: a restart before the store recovers would complete them, so they are
    /// reported as pending rather than as not destroyed. See: veil#10 (review).
    pub(crate) fn receipted(error: SealError, ids: Vec<ExchangeId>) -> Self {
        ForgetError {
            error,
            destroyed: Vec::new(),
            pending: ids,
            not_destroyed: Vec::new(),
        }
    }

    /// Why it failed.
    pub fn error(&self) -> &SealError {
        &self.error
    }

    /// The failure class (of [`ForgetError::error`]).
    pub fn kind(&self) -> ErrorKind {
        self.error.kind()
    }

    /// Destroyed before the failure (receipted, audited, shredded).
    pub fn destroyed(&self) -> &[ExchangeId] {
        &self.destroyed
    }

    /// Receipted and audited, unreadable, shredding completed by recovery.
    pub fn pending(&self) -> &[ExchangeId] {
        &self.pending
    }

    /// Untouched: still sealed, no receipt.
    pub fn not_destroyed(&self) -> &[ExchangeId] {
        &self.not_destroyed
    }
}

impl std::fmt::Debug for ForgetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ForgetError")
            .field("error", &self.error)
            .field("destroyed", &self.destroyed.len())
            .field("pending", &self.pending.len())
            .field("not_destroyed", &self.not_destroyed.len())
            .finish()
    }
}

impl std::fmt::Display for ForgetError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({} destroyed, {} not destroyed",
            self.error,
            self.destroyed.len(),
            self.not_destroyed.len()
        )?;
        if !self.pending.is_empty() {
            write!(
                f,
                ", {} receipted with shredding pending",
                self.pending.len()
            )?;
        }
        f.write_str(")")
    }
}

impl std::error::Error for ForgetError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// What a compaction pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactStats {
    /// Segment files deleted.
    pub segments_removed: usize,
    /// Live frames moved to the active segment.
    pub frames_moved: usize,
    /// Bytes given back to the file system.
    pub bytes_reclaimed: u64,
}

/// Resolves once a sealed exchange is durable (segment and key slot fsynced, index committed).
#[derive(Debug)]
pub struct SealAck {
    id: ExchangeId,
    rx: oneshot::Receiver<Result<(), SealError>>,
}

impl SealAck {
    /// The request ID being sealed.
    pub fn id(&self) -> ExchangeId {
        self.id
    }

    /// Waits (async) until the exchange is durable.
    pub async fn durable(self) -> Result<ExchangeId, SealError> {
        match self.rx.await {
            Ok(r) => r.map(|()| self.id),
            Err(_) => Err(SealError::closed()),
        }
    }

    /// Waits (blocking the thread; not inside an async runtime) until the exchange is durable.
    pub fn wait(self) -> Result<ExchangeId, SealError> {
        match self.rx.blocking_recv() {
            Ok(r) => r.map(|()| self.id),
            Err(_) => Err(SealError::closed()),
        }
    }
}

struct SealJob {
    /// Counts this job as in flight until it is dropped (written, failed or discarded).
    _pending: PendingGuard,
    id: ExchangeId,
    frame: Vec<u8>,
    slot: [u8; SLOT_LEN],
    time: SystemTime,
    user: Option<String>,
    /// Who waits for durability; `None` when detached (failures are counted by the writer).
    ack: Option<oneshot::Sender<Result<(), SealError>>>,
    /// Told whether the exchange became durable (detached callers that need to know).
    done: Option<Done>,
}

/// A callback told once whether a detached seal became durable: `true` after its commit,
/// `false` when it failed or was dropped unwritten (refused while degraded, cut off by a
/// failing batch, left in the queue at shutdown), so the caller never waits forever.
pub type OnDone = Box<dyn FnOnce(bool) + Send>;

struct Done(Option<OnDone>);

impl Done {
    fn durable(mut self) {
        if let Some(f) = self.0.take() {
            f(true);
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(f) = self.0.take() {
            f(false);
        }
    }
}

/// Most seal jobs queued for the writer at once. The queue itself is unbounded (operator
/// commands must never be refused), so this is what bounds its memory: past it, `submit`
/// refuses with [`ErrorKind::Busy`] and the caller counts a lost seal instead of the process
/// growing without limit while the disk lags.
pub const MAX_PENDING_SEALS: usize = 4096;

/// Most bytes of sealed frames queued for the writer at once (a count alone let forty 20 MB
/// exchanges wait in memory while the disk caught up). A lone frame larger than this is still
/// taken when nothing else waits.
pub const MAX_PENDING_SEAL_BYTES: usize = 256 << 20;

/// Gives back a seal job's place (one job, its bytes) when it goes away.
struct PendingGuard {
    jobs: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
    len: usize,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.jobs.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(self.len, Ordering::AcqRel);
    }
}

type ForgetResult = Result<Vec<ForgetOutcome>, ForgetError>;

enum Command {
    Seal(SealJob),
    Forget {
        ids: Vec<ExchangeId>,
        kind: AuditKind,
        actor: String,
        reason: String,
        ack: oneshot::Sender<ForgetResult>,
    },
    Compact {
        ack: oneshot::Sender<Result<CompactStats, SealError>>,
    },
    Rewrap {
        keyring: Arc<Keyring>,
        actor: String,
        ack: oneshot::Sender<Result<usize, SealError>>,
    },
}

/// The sealed store. Cheap to clone (one shared handle); the last clone dropped flushes
/// pending writes, stops the writer thread and releases the index lock.
#[derive(Debug, Clone)]
pub struct SealStore {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    /// The index, shared with the writer, which swaps it after an I/O error.
    index: Arc<Index>,
    /// A clone of the writer's key slot file, for reads.
    slots: File,
    keyring: RwLock<Arc<Keyring>>,
    keys_dir: Option<PathBuf>,
    audit: Arc<dyn AuditSink>,
    /// Commands to the writer; `None` once the store is dropped. A std channel so the writer
    /// can wait with a timeout (its recovery retries) while degraded.
    tx: Mutex<Option<mpsc::Sender<Command>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Seal jobs submitted and not yet dropped by the writer.
    pending: Arc<AtomicUsize>,
    /// Bytes of the seal jobs in `pending`.
    pending_bytes: Arc<AtomicUsize>,
    /// Set by the writer, read by everyone (`/healthz`, admission checks, `submit`).
    health: Arc<HealthState>,
    /// Exchanges whose forget is committed (receipt written) but whose index entries are not
    /// removed yet: readers treat them as gone. Empty whenever the store is healthy and no
    /// forget is in progress; filled by the writer, emptied when their entries leave the index.
    doomed: Arc<Mutex<HashSet<ExchangeId>>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealStore")
            .field("dir", &self.dir)
            .field("keyring", &self.keyring)
            .field("health", &self.health.get())
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish what is queued, then exit.
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(h) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
    }
}

/// The redb index behind a lock so that it can be swapped: after one I/O error redb refuses
/// every further transaction ("re-open the database"), and it holds an exclusive file lock, so
/// the old handle must be gone before a new one opens. Readers hold the read side for one
/// transaction (never two nested: the writer's recovery may be waiting for the write side);
/// only the writer's recovery takes the write side. `None` while a reopen failed.
///
/// Rejected alternative: `ArcSwap<Database>`-style handoff without a lock. A reader could
/// still hold the old handle (and its file lock) when the new one opens, which redb refuses.
#[derive(Debug)]
struct Index {
    path: PathBuf,
    db: RwLock<Option<Database>>,
}

/// A read guard on an open index.
struct IndexGuard<'a>(RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for IndexGuard<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        self.0
            .as_ref()
            .expect("invariant: Index::get checked the index is open")
    }
}

impl Index {
    fn open(path: &Path) -> Result<Database, SealError> {
        Database::create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => SealError::new(
                ErrorKind::Locked,
                format!(
                    "{} is in use by another process (a running `veil run`?)",
                    path.display()
                ),
            ),
            other => db_err(other),
        })
    }

    /// The open index, or [`ErrorKind::Degraded`] while a reopen has failed.
    fn get(&self) -> Result<IndexGuard<'_>, SealError> {
        let g = self.db.read().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            return Err(SealError::new(
                ErrorKind::Degraded,
                "the sealed store's index is closed while the store recovers from a write error",
            ));
        }
        Ok(IndexGuard(g))
    }

    /// True when redb refuses new write transactions (it does after any I/O error).
    fn is_poisoned(&self) -> bool {
        match self.get() {
            Ok(db) => db.begin_write().is_err(),
            Err(_) => true,
        }
    }

    /// Closes the handle (waiting for readers to finish their transaction) and opens it again.
    fn reopen(&self) -> Result<(), SealError> {
        let mut g = self.db.write().unwrap_or_else(|p| p.into_inner());
        drop(g.take());
        *g = Some(Self::open(&self.path)?);
        Ok(())
    }
}

fn io_err(what: impl std::fmt::Display, e: io::Error) -> SealError {
    SealError::new(ErrorKind::Io, format!("{what}: {e}"))
}

fn db_err(e: impl std::fmt::Display) -> SealError {
    SealError::new(ErrorKind::Io, format!("index: {e}"))
}

fn seg_path(dir: &Path, n: u32) -> PathBuf {
    dir.join("segments").join(format!("{n:08}.seg"))
}

fn sync_dir(dir: &Path) -> Result<(), SealError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(dir.display(), e))
}

fn list_segments(dir: &Path) -> Result<Vec<u32>, SealError> {
    let segdir = dir.join("segments");
    let mut out = Vec::new();
    for e in fs::read_dir(&segdir).map_err(|e| io_err(segdir.display(), e))? {
        let e = e.map_err(|e| io_err(segdir.display(), e))?;
        let name = e.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|s| s.strip_suffix(".seg"))
            .and_then(|s| s.parse::<u32>().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn create_segment(dir: &Path, n: u32) -> Result<File, SealError> {
    let path = seg_path(dir, n);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io_err(path.display(), e))?;
    f.write_all(SEGMENT_MAGIC)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err(path.display(), e))?;
    sync_dir(&dir.join("segments"))?;
    Ok(f)
}

fn not_found(id: ExchangeId) -> SealError {
    SealError::new(
        ErrorKind::NotFound,
        format!("{id}: no sealed exchange with this id (never sealed, or forgotten)"),
    )
}

fn degraded_error(health: &HealthState) -> SealError {
    match health.get() {
        Health::Ok => SealError::new(
            ErrorKind::Degraded,
            "the sealed store is recovering from a write error; nothing was written",
        ),
        Health::Degraded { since, last_error } => SealError::new(
            ErrorKind::Degraded,
            format!(
                "the sealed store is degraded since {} ({last_error}); nothing was written, retry once the disk has room",
                rfc3339(since)
            ),
        ),
    }
}

impl SealStore {
    /// Opens (creating if needed) the store under `<data>/sealed/`, recovering from a crash
    /// (torn segment tail cut, forgets with a receipt but no completion finished).
    ///
    /// Fails with [`ErrorKind::Locked`] when another process (a running `veil run`) holds it,
    /// with [`ErrorKind::Io`] when the recovery cannot be written (a full disk), and with
    /// [`ErrorKind::Audit`] when a recovery that destroys something cannot audit it.
    pub fn open(data: &Path, keyring: Keyring, opts: SealOptions) -> Result<Self, SealError> {
        let dir = data.join("sealed");
        for d in [data.to_path_buf(), dir.clone(), dir.join("segments")] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&d)
                .map_err(|e| io_err(d.display(), e))?;
        }
        let index_path = dir.join("index.redb");
        // redb would create the file with the umask's mode; make it 0600 first (an empty file
        // is one redb initializes).
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&index_path)
            .map_err(|e| io_err(index_path.display(), e))?;
        let index = Arc::new(Index {
            db: RwLock::new(Some(Index::open(&index_path)?)),
            path: index_path,
        });
        let slots_path = dir.join("keyslots");
        let slots = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&slots_path)
            .map_err(|e| io_err(slots_path.display(), e))?;
        let audit = opts
            .audit
            .clone()
            .unwrap_or_else(|| Arc::new(JsonlAuditSink::new(data.join("audit.jsonl"))));
        let health = Arc::new(HealthState::reporting_to(opts.recording_health.clone()));
        let doomed: Arc<Mutex<HashSet<ExchangeId>>> = Arc::default();
        let writer = Writer::open(
            dir.clone(),
            index.clone(),
            slots.try_clone().map_err(|e| io_err("keyslots", e))?,
            audit.clone(),
            opts.segment_max.unwrap_or(DEFAULT_SEGMENT_MAX),
            health.clone(),
            doomed.clone(),
        )?;
        let (tx, rx) = mpsc::channel();
        let nice = opts.writer_nice;
        let handle = std::thread::Builder::new()
            .name("veil-seal-writer".into())
            .spawn(move || {
                crate::os::lower_thread_priority(nice);
                writer.run(rx)
            })
            .map_err(|e| io_err("spawn writer", e))?;
        Ok(SealStore {
            inner: Arc::new(Inner {
                dir,
                index,
                slots,
                keyring: RwLock::new(Arc::new(keyring)),
                keys_dir: opts.keys_dir,
                audit,
                tx: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(handle)),
                pending: Arc::default(),
                pending_bytes: Arc::default(),
                health,
                doomed,
            }),
        })
    }

    /// `<data>/sealed`.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Whether seals can be made durable right now, and since when not. Cheap (a short lock);
    /// for a per-request check use [`SealStore::health_handle`].
    pub fn health(&self) -> Health {
        self.inner.health.get()
    }

    /// A lock-free handle on the store's health for hot paths (the proxy's `audit =
    /// "required"` admission check): clone it once, then call [`SealHealth::is_ok`] per
    /// request (one atomic load).
    pub fn health_handle(&self) -> SealHealth {
        SealHealth(self.inner.health.clone())
    }

    /// Marks the store degraded as a failed write would (tests of what reads the health).
    /// The writer recovers at the next operator command, or on its retry timer once it next
    /// waits for work.
    #[cfg(test)]
    pub(crate) fn degrade_for_test(&self, why: &str) {
        self.inner.health.failed(why);
    }

    /// Failure and recovery counters since open (for metrics and `/healthz`).
    pub fn stats(&self) -> StoreStats {
        self.inner.health.stats()
    }

    /// veil's recording health this store reports into ([`SealOptions::recording_health`]).
    pub fn recording_health(&self) -> Option<&Arc<crate::health::Health>> {
        self.inner.health.shared.as_ref()
    }

    /// The keyring in use.
    pub fn keyring(&self) -> Arc<Keyring> {
        self.inner
            .keyring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the keyring (after `veil keys rotate`): new seals use its current key.
    pub fn set_keyring(&self, keyring: Keyring) {
        *self
            .inner
            .keyring
            .write()
            .unwrap_or_else(|p| p.into_inner()) = Arc::new(keyring);
    }

    /// Re-reads the keys dir given in [`SealOptions::keys_dir`], if any; returns the newest id.
    pub fn reload_keys(&self) -> Result<KeyId, SealError> {
        let dir = self.inner.keys_dir.as_ref().ok_or_else(|| {
            SealError::new(ErrorKind::KeyMissing, "store was opened without a keys dir")
        })?;
        let ring = Keyring::load(dir).map_err(|e| SealError::new(ErrorKind::KeyMissing, e))?;
        let id = ring.current().id();
        self.set_keyring(ring);
        Ok(id)
    }

    fn send(&self, cmd: Command) -> Result<(), SealError> {
        let guard = self.inner.tx.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .ok_or_else(SealError::closed)?
            .send(cmd)
            .map_err(|_| SealError::closed())
    }

    /// Seals `exchange` (encrypting on this thread) and queues it for the writer. Never
    /// blocks on I/O; the returned [`SealAck`] resolves once the exchange is durable.
    ///
    /// `user` must be a pseudonym from [`crate::keys::pseudonymize_user`] (`u_` + 16 hex):
    /// the index is not encrypted, so a raw user ID is refused. At most
    /// [`MAX_PENDING_SEALS`] jobs and [`MAX_PENDING_SEAL_BYTES`] of frames wait for the
    /// writer; past either this fails with
    /// [`ErrorKind::Busy`] instead of queueing without bound. While the store is degraded
    /// (a write failed and it has not recovered) this fails at once with
    /// [`ErrorKind::Degraded`], before encrypting anything.
    pub fn submit(&self, exchange: &Exchange, user: Option<&str>) -> Result<SealAck, SealError> {
        let (ack, rx) = oneshot::channel();
        self.enqueue(exchange, user, Some(ack), None)?;
        Ok(SealAck {
            id: exchange.id,
            rx,
        })
    }

    /// [`SealStore::submit`] with nobody waiting: for the pipeline, which must not park a task
    /// per exchange on the forwarding runtime just to count failures. A failure after queueing
    /// is logged by the writer and counted in [`SealStore::detached_failures`].
    pub fn submit_detached(
        &self,
        exchange: &Exchange,
        user: Option<&str>,
    ) -> Result<(), SealError> {
        self.enqueue(exchange, user, None, None)
    }

    /// [`SealStore::submit_detached`] that calls `on_done` once the outcome is known: `true`
    /// when the exchange is durable, `false` when it will never be (see [`OnDone`]). When this
    /// returns an error, `on_done` is not called (the caller has the error in hand), except
    /// for [`ErrorKind::Closed`], where the job was built and dropped: it says `false` too.
    pub fn submit_detached_then(
        &self,
        exchange: &Exchange,
        user: Option<&str>,
        on_done: OnDone,
    ) -> Result<(), SealError> {
        self.enqueue(exchange, user, None, Some(on_done))
    }

    fn enqueue(
        &self,
        exchange: &Exchange,
        user: Option<&str>,
        ack: Option<oneshot::Sender<Result<(), SealError>>>,
        on_done: Option<OnDone>,
    ) -> Result<(), SealError> {
        if let Some(u) = user
            && !crate::keys::is_user_pseudonym(u)
        {
            return Err(SealError::new(
                ErrorKind::Format,
                "user must be a pseudonym (u_ + 16 hex, see keys::pseudonymize_user), not a raw user id",
            ));
        }
        if !self.inner.health.is_ok() {
            return Err(degraded_error(&self.inner.health));
        }
        let pending = &self.inner.pending;
        if pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_SEALS {
            pending.fetch_sub(1, Ordering::AcqRel);
            return Err(SealError::new(
                ErrorKind::Busy,
                format!("{MAX_PENDING_SEALS} exchanges already wait for the disk; not sealed"),
            ));
        }
        // The frame is the two bodies plus metadata: reserve their size before encrypting.
        let len = exchange
            .request_body
            .captured_len()
            .saturating_add(exchange.response_body.captured_len())
            .saturating_add(4096);
        let bytes = &self.inner.pending_bytes;
        let before = bytes.fetch_add(len, Ordering::AcqRel);
        let guard = PendingGuard {
            jobs: pending.clone(),
            bytes: bytes.clone(),
            len,
        };
        if before > 0 && before.saturating_add(len) > MAX_PENDING_SEAL_BYTES {
            drop(guard);
            return Err(SealError::new(
                ErrorKind::Busy,
                format!(
                    "{} MiB of exchanges already wait for the disk; not sealed",
                    before >> 20
                ),
            ));
        }
        let ring = self.keyring();
        let master = ring.current();
        let data_key = envelope::fresh_data_key();
        let frame = envelope::seal_frame(exchange, &data_key, master.id())?;
        let slot = envelope::wrap_slot(
            exchange.id,
            &data_key,
            master.id(),
            &master.derive(Purpose::SealWrap),
        );
        self.send(Command::Seal(SealJob {
            _pending: guard,
            id: exchange.id,
            frame,
            slot,
            time: exchange.started_at,
            user: user.map(str::to_string),
            ack,
            // From here on the writer owns the outcome: dropped unwritten counts as `false`.
            done: on_done.map(|f| Done(Some(f))),
        }))
    }

    /// Detached seal jobs that failed after they were queued (the writer also logs them).
    pub fn detached_failures(&self) -> u64 {
        self.inner.health.stats().detached_failures
    }

    /// Seals `exchange` and waits until it is durable.
    pub async fn seal(
        &self,
        exchange: &Exchange,
        user: Option<&str>,
    ) -> Result<ExchangeId, SealError> {
        self.submit(exchange, user)?.durable().await
    }

    /// Blocking [`SealStore::seal`] for threads outside an async runtime.
    pub fn seal_blocking(
        &self,
        exchange: &Exchange,
        user: Option<&str>,
    ) -> Result<ExchangeId, SealError> {
        self.submit(exchange, user)?.wait()
    }

    fn is_doomed(&self, id: ExchangeId) -> bool {
        self.inner
            .doomed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&id)
    }

    fn doomed(&self) -> HashSet<ExchangeId> {
        self.inner
            .doomed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The index entry for `id`, if the store holds it (an exchange whose forget is under
    /// way counts as gone).
    pub fn entry(&self, id: ExchangeId) -> Result<Option<IndexEntry>, SealError> {
        if self.is_doomed(id) {
            return Ok(None);
        }
        let db = self.inner.index.get()?;
        let txn = db.begin_read().map_err(db_err)?;
        let t = txn.open_table(EXCHANGES).map_err(db_err)?;
        let found = t.get(id.as_bytes()).map_err(db_err)?;
        match found {
            Some(v) => Ok(Some(IndexEntry::decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Every sealed ID, in ID order (UUIDv7: creation order).
    pub fn ids(&self) -> Result<Vec<ExchangeId>, SealError> {
        let doomed = self.doomed();
        let db = self.inner.index.get()?;
        let txn = db.begin_read().map_err(db_err)?;
        let t = txn.open_table(EXCHANGES).map_err(db_err)?;
        let mut out = Vec::new();
        for r in t.iter().map_err(db_err)? {
            let id = ExchangeId::from_bytes(r.map_err(db_err)?.0.value());
            if !doomed.contains(&id) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Number of sealed exchanges.
    pub fn len(&self) -> Result<u64, SealError> {
        let doomed = self.doomed();
        let db = self.inner.index.get()?;
        let txn = db.begin_read().map_err(db_err)?;
        let t = txn.open_table(EXCHANGES).map_err(db_err)?;
        let mut gone = 0;
        for id in &doomed {
            if t.get(id.as_bytes()).map_err(db_err)?.is_some() {
                gone += 1;
            }
        }
        Ok(t.len().map_err(db_err)? - gone)
    }

    /// True when the store holds nothing.
    pub fn is_empty(&self) -> Result<bool, SealError> {
        Ok(self.len()? == 0)
    }

    /// IDs sealed for user pseudonym `user`.
    pub fn ids_for_user(&self, user: &str) -> Result<Vec<ExchangeId>, SealError> {
        let doomed = self.doomed();
        let db = self.inner.index.get()?;
        let txn = db.begin_read().map_err(db_err)?;
        let t = txn.open_multimap_table(BY_USER).map_err(db_err)?;
        let mut out = Vec::new();
        for v in t.get(user).map_err(db_err)? {
            let id = ExchangeId::from_bytes(v.map_err(db_err)?.value());
            if !doomed.contains(&id) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// IDs whose exchange started before `cutoff`.
    pub fn ids_before(&self, cutoff: SystemTime) -> Result<Vec<ExchangeId>, SealError> {
        let doomed = self.doomed();
        let db = self.inner.index.get()?;
        let txn = db.begin_read().map_err(db_err)?;
        let t = txn.open_table(BY_TIME).map_err(db_err)?;
        let mut out = Vec::new();
        for r in t
            .range((0u64, [0u8; 16])..(millis(cutoff), [0u8; 16]))
            .map_err(db_err)?
        {
            let (k, _) = r.map_err(db_err)?;
            let id = ExchangeId::from_bytes(k.value().1);
            if !doomed.contains(&id) {
                out.push(id);
            }
        }
        Ok(out)
    }

    /// Decrypts and returns the exchange sealed under `id`, after writing an `unseal` audit
    /// event naming `actor` and `reason`.
    ///
    /// Fails closed: when the audit sink cannot record the event durably the plaintext is
    /// dropped and this returns [`ErrorKind::Audit`] (veil#10). An exchange forgotten while
    /// this reads it is [`ErrorKind::NotFound`], never a corruption error.
    pub fn unseal(&self, id: ExchangeId, actor: &str, reason: &str) -> Result<Exchange, SealError> {
        let (entry, ex) = self.read_sealed(id)?;
        let event = AuditEvent {
            kind: AuditKind::Unseal,
            request_id: id,
            user: entry.user,
            time: SystemTime::now(),
            actor: actor.to_string(),
            reason: reason.to_string(),
        };
        if let Err(e) = self.inner.audit.emit(&event) {
            drop(ex);
            return Err(SealError::new(
                ErrorKind::Audit,
                format!("{id}: the unseal could not be audited ({e}); nothing is returned"),
            ));
        }
        Ok(ex)
    }

    /// Reads and decrypts `id`, telling a race from damage: when a read fails, the index is
    /// consulted again. Gone (forgotten, or its forget is under way) → `NotFound`; moved (a
    /// compaction rewrote it elsewhere) → read again at the new place; unchanged → the error
    /// stands (the data really is damaged or the key wrong).
    fn read_sealed(&self, id: ExchangeId) -> Result<(IndexEntry, Exchange), SealError> {
        let mut last = None;
        for _ in 0..UNSEAL_ATTEMPTS {
            let Some(entry) = self.entry(id)? else {
                return Err(not_found(id));
            };
            match self.open_entry(id, &entry) {
                Ok(ex) => return Ok((entry, ex)),
                Err(e) => match self.entry(id)? {
                    None => return Err(not_found(id)),
                    Some(now) if now != entry => last = Some(e),
                    Some(_) => return Err(e),
                },
            }
        }
        Err(last.expect("invariant: every attempt that loops records its error"))
    }

    fn open_entry(&self, id: ExchangeId, entry: &IndexEntry) -> Result<Exchange, SealError> {
        let mut slot = [0u8; SLOT_LEN];
        self.inner
            .slots
            .read_exact_at(&mut slot, entry.slot * SLOT_LEN as u64)
            .map_err(|e| {
                SealError::new(
                    ErrorKind::Corrupt,
                    format!("{id}: key slot unreadable: {e}"),
                )
            })?;
        let key_id = envelope::slot_key_id(&slot, id)?;
        let ring = self.keyring();
        let master = ring.get(key_id).ok_or_else(|| {
            SealError::new(
                ErrorKind::KeyMissing,
                format!(
                    "{id}: sealed under master key {key_id}, which this keyring does not have (it has {:?})",
                    ring.ids().map(|k| k.to_string()).collect::<Vec<_>>()
                ),
            )
        })?;
        let data_key = envelope::unwrap_slot(&slot, id, &master.derive(Purpose::SealWrap))?;
        let path = seg_path(&self.inner.dir, entry.segment);
        let file = File::open(&path).map_err(|e| io_err(path.display(), e))?;
        let mut frame = vec![0u8; entry.len as usize];
        file.read_exact_at(&mut frame, entry.offset).map_err(|e| {
            SealError::new(
                ErrorKind::Corrupt,
                format!("{id}: frame unreadable in {}: {e}", path.display()),
            )
        })?;
        envelope::open_frame(frame, id, &data_key)
    }

    fn forget_inner(
        &self,
        ids: Vec<ExchangeId>,
        kind: AuditKind,
        actor: &str,
        reason: &str,
    ) -> ForgetResult {
        let (ack, rx) = oneshot::channel();
        let asked = ids.clone();
        if let Err(e) = self.send(Command::Forget {
            ids,
            kind,
            actor: actor.to_string(),
            reason: reason.to_string(),
            ack,
        }) {
            return Err(ForgetError::nothing(e, asked));
        }
        rx.blocking_recv().unwrap_or_else(|_| {
            Err(ForgetError {
                error: SealError::new(
                    ErrorKind::Closed,
                    "the sealed store's writer stopped during the forget: receipts.jsonl lists the ones receipted, which the next open destroys",
                ),
                destroyed: Vec::new(),
                pending: asked,
                not_destroyed: Vec::new(),
            })
        })
    }

    /// Destroys the exchanges with `ids`: writes one receipt (fsynced) and one audit event
    /// each, then shreds their data keys, zeroes their ciphertext and removes their index
    /// entries. Unknown IDs come back with `forgotten: false`; forgetting twice is harmless.
    /// Blocking.
    ///
    /// All or nothing for the IDs found: on error, [`ForgetError`] says which were destroyed
    /// and which were not. Nothing is destroyed without its receipt and audit entry.
    pub fn forget(
        &self,
        ids: &[ExchangeId],
        actor: &str,
        reason: &str,
    ) -> Result<Vec<ForgetOutcome>, ForgetError> {
        self.forget_inner(ids.to_vec(), AuditKind::Forget, actor, reason)
    }

    /// Forgets every exchange of user pseudonym `user`; returns the IDs destroyed. Blocking.
    /// On error, [`ForgetError`] says which of the user's exchanges were and were not
    /// destroyed.
    pub fn forget_user(
        &self,
        user: &str,
        actor: &str,
        reason: &str,
    ) -> Result<Vec<ExchangeId>, ForgetError> {
        let ids = self
            .ids_for_user(user)
            .map_err(|e| ForgetError::nothing(e, Vec::new()))?;
        let out = self.forget_inner(ids, AuditKind::Forget, actor, reason)?;
        Ok(out
            .into_iter()
            .filter(|o| o.forgotten)
            .map(|o| o.id)
            .collect())
    }

    /// Purges every exchange that started before `cutoff` (retention), 1024 at a time;
    /// returns the IDs destroyed. On error, [`ForgetError`] lists those destroyed by the
    /// batches before the failure, and every eligible one not destroyed.
    pub fn purge_before(
        &self,
        cutoff: SystemTime,
        actor: &str,
    ) -> Result<Vec<ExchangeId>, ForgetError> {
        let ids = self
            .ids_before(cutoff)
            .map_err(|e| ForgetError::nothing(e, Vec::new()))?;
        let mut destroyed = Vec::new();
        for (i, chunk) in ids.chunks(1024).enumerate() {
            match self.forget_inner(chunk.to_vec(), AuditKind::Purge, actor, "retention") {
                Ok(out) => destroyed.extend(out.into_iter().filter(|o| o.forgotten).map(|o| o.id)),
                Err(mut e) => {
                    destroyed.append(&mut e.destroyed);
                    e.destroyed = destroyed;
                    e.not_destroyed
                        .extend_from_slice(&ids[((i + 1) * 1024).min(ids.len())..]);
                    return Err(e);
                }
            }
        }
        Ok(destroyed)
    }

    /// Purges every exchange older than `older_than` (by its start time); returns the IDs
    /// destroyed. Blocking. Errors as [`SealStore::purge_before`].
    pub fn purge(&self, older_than: Duration, actor: &str) -> Result<Vec<ExchangeId>, ForgetError> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.purge_before(cutoff, actor)
    }

    /// The retention loop for `veil run`: every `interval`, purges exchanges older than
    /// `older_than` (on a blocking thread), until `shutdown` resolves. Errors are logged with
    /// what was and was not destroyed, and retried at the next tick; a purge never blocks the
    /// async runtime.
    pub async fn run_retention(
        self,
        older_than: Duration,
        interval: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let store = self.clone();
            match tokio::task::spawn_blocking(move || store.purge(older_than, "retention")).await {
                Ok(Ok(ids)) if ids.is_empty() => {}
                Ok(Ok(ids)) => tracing::info!(purged = ids.len(), "retention purge"),
                Ok(Err(e)) => tracing::error!(
                    error = %e.error(),
                    destroyed = e.destroyed().len(),
                    pending = e.pending().len(),
                    not_destroyed = e.not_destroyed().len(),
                    "retention purge failed; receipts.jsonl lists what was destroyed"
                ),
                Err(e) => tracing::error!(error = %e, "retention purge task failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = &mut shutdown => return,
            }
        }
    }

    /// Moves live frames out of segments with dead bytes and deletes emptied segments.
    pub fn compact(&self) -> Result<CompactStats, SealError> {
        let (ack, rx) = oneshot::channel();
        self.send(Command::Compact { ack })?;
        rx.blocking_recv().map_err(|_| SealError::closed())?
    }

    /// Re-wraps every data key not under the current master key with the current key; returns
    /// how many. Payloads are untouched (their associated data names the key that first
    /// wrapped them, which stays valid). Blocking.
    pub fn rewrap(&self, actor: &str) -> Result<usize, SealError> {
        let (ack, rx) = oneshot::channel();
        self.send(Command::Rewrap {
            keyring: self.keyring(),
            actor: actor.to_string(),
            ack,
        })?;
        rx.blocking_recv().map_err(|_| SealError::closed())?
    }
}

// === writer ===

struct Writer {
    dir: PathBuf,
    index: Arc<Index>,
    slots: File,
    audit: Arc<dyn AuditSink>,
    segment_max: u64,
    /// The segment being appended to, its file, and its length as far as this writer knows
    /// (the committed length at load; grows with each batch). Reloaded by every recovery.
    active: u32,
    seg: File,
    len: u64,
    next_slot: u64,
    free: Vec<u64>,
    stage: Vec<u8>,
    /// `receipts.jsonl`, open for appending; its length (everything before is whole, fsynced
    /// lines); the committed checkpoint (`receipts_done` in the index: every receipt before
    /// it is completed); and how far this process has emitted the receipts' audit events.
    receipts: File,
    receipts_len: u64,
    receipts_done: u64,
    audited_upto: u64,
    /// Set when a failed receipts append could not be cut back: recovery cuts it first.
    receipts_rollback: Option<u64>,
    /// When the last seal batch was committed (paces group commit).
    last_commit: Instant,
    /// When recovery was last attempted, and how many attempts failed in a row (for logs).
    last_attempt: Instant,
    failed_attempts: u64,
    /// Shared with [`Inner::health`].
    health: Arc<HealthState>,
    /// Shared with [`Inner::doomed`].
    doomed: Arc<Mutex<HashSet<ExchangeId>>>,
}

/// What the committed index says, loaded at open and by every recovery.
struct Loaded {
    active: u32,
    seg: File,
    committed: u64,
    file_len: u64,
    next_slot: u64,
    free: Vec<u64>,
    receipts_done: Option<u64>,
}

fn meta_get(db: &Database, key: &str) -> Result<Option<u64>, SealError> {
    let txn = db.begin_read().map_err(db_err)?;
    let t = txn.open_table(META).map_err(db_err)?;
    Ok(t.get(key).map_err(db_err)?.map(|v| v.value()))
}

/// One line of `receipts.jsonl`, as replayed by recovery.
struct Receipt {
    id: ExchangeId,
    kind: AuditKind,
    actor: String,
    reason: String,
    user: Option<String>,
}

impl Receipt {
    fn parse(line: &[u8]) -> Option<Receipt> {
        let v: serde_json::Value = serde_json::from_slice(line).ok()?;
        Some(Receipt {
            id: v["request_id"].as_str()?.parse().ok()?,
            kind: match v["kind"].as_str()? {
                "purge" => AuditKind::Purge,
                _ => AuditKind::Forget,
            },
            actor: v["actor"].as_str().unwrap_or("unknown").to_string(),
            reason: v["reason"].as_str().unwrap_or("").to_string(),
            user: v["user"].as_str().map(str::to_string),
        })
    }
}

/// True when every table exists (any store that committed once): then opening needs no write,
/// so a store on a full disk still opens, and reads, unseals and a purge that reports "nothing
/// destroyed" still work.
fn tables_exist(db: &Database) -> bool {
    let Ok(txn) = db.begin_read() else {
        return false;
    };
    txn.open_table(EXCHANGES).is_ok()
        && txn.open_multimap_table(BY_USER).is_ok()
        && txn.open_table(BY_TIME).is_ok()
        && txn.open_table(FREE_SLOTS).is_ok()
        && txn.open_table(META).is_ok()
}

fn load_index(dir: &Path, index: &Index) -> Result<Loaded, SealError> {
    let db = index.get()?;
    if !tables_exist(&db) {
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(EXCHANGES).map_err(db_err)?;
        txn.open_multimap_table(BY_USER).map_err(db_err)?;
        txn.open_table(BY_TIME).map_err(db_err)?;
        txn.open_table(FREE_SLOTS).map_err(db_err)?;
        txn.open_table(META).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
    }
    let active = meta_get(&db, "active_segment")?.unwrap_or(1) as u32;
    let committed = meta_get(&db, "committed_len")?.unwrap_or(SEG_HEADER);
    let next_slot = meta_get(&db, "next_slot")?.unwrap_or(0);
    let receipts_done = meta_get(&db, "receipts_done")?;
    let free = {
        let txn = db.begin_read().map_err(db_err)?;
        let t = txn.open_table(FREE_SLOTS).map_err(db_err)?;
        let mut v = Vec::new();
        for r in t.iter().map_err(db_err)? {
            v.push(r.map_err(db_err)?.0.value());
        }
        v
    };
    drop(db);
    // Segments newer than the active one were created by a roll that never committed.
    for n in list_segments(dir)? {
        if n > active {
            let p = seg_path(dir, n);
            tracing::warn!(path = %p.display(), "removing uncommitted segment");
            fs::remove_file(&p).map_err(|e| io_err(p.display(), e))?;
        }
    }
    let path = seg_path(dir, active);
    let seg = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_segment(dir, active)?,
        Err(e) => return Err(io_err(path.display(), e)),
    };
    let file_len = seg.metadata().map_err(|e| io_err(path.display(), e))?.len();
    Ok(Loaded {
        active,
        seg,
        committed,
        file_len,
        next_slot,
        free,
        receipts_done,
    })
}

fn open_receipts(dir: &Path) -> Result<File, SealError> {
    let p = dir.join("receipts.jsonl");
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&p)
        .map_err(|e| io_err(p.display(), e))
}

impl Writer {
    fn open(
        dir: PathBuf,
        index: Arc<Index>,
        slots: File,
        audit: Arc<dyn AuditSink>,
        segment_max: u64,
        health: Arc<HealthState>,
        doomed: Arc<Mutex<HashSet<ExchangeId>>>,
    ) -> Result<Self, SealError> {
        let l = load_index(&dir, &index)?;
        let receipts = open_receipts(&dir)?;
        let mut w = Writer {
            dir,
            index,
            slots,
            audit,
            segment_max,
            active: l.active,
            seg: l.seg,
            len: l.committed,
            next_slot: l.next_slot,
            free: l.free,
            stage: Vec::new(),
            receipts,
            receipts_len: 0,
            receipts_done: 0,
            audited_upto: 0,
            receipts_rollback: None,
            last_commit: Instant::now() - COMMIT_INTERVAL,
            last_attempt: Instant::now(),
            failed_attempts: 0,
            health,
            doomed,
        };
        w.settle(l.file_len, l.committed, l.receipts_done, true)?;
        Ok(w)
    }

    /// Reloads everything from the committed index, as at open (after a failed write).
    fn reload(&mut self) -> Result<(), SealError> {
        let l = load_index(&self.dir, &self.index)?;
        self.receipts = open_receipts(&self.dir)?;
        self.active = l.active;
        self.seg = l.seg;
        self.len = l.committed;
        self.next_slot = l.next_slot;
        self.free = l.free;
        self.stage.clear();
        self.settle(l.file_len, l.committed, l.receipts_done, false)
    }

    /// Brings the files in line with the committed index: receipts first (a torn or rolled
    /// back tail cut, pending forgets completed), then the active segment (an uncommitted tail
    /// cut, or the entries a truncation lost forgotten with receipts).
    fn settle(
        &mut self,
        file_len: u64,
        committed: u64,
        receipts_done: Option<u64>,
        at_open: bool,
    ) -> Result<(), SealError> {
        let rpath = self.dir.join("receipts.jsonl");
        if let Some(to) = self.receipts_rollback {
            self.receipts
                .set_len(to)
                .and_then(|()| self.receipts.sync_data())
                .map_err(|e| io_err(rpath.display(), e))?;
            self.receipts_rollback = None;
        }
        let cut = crate::os::truncate_torn_line(&self.receipts)
            .map_err(|e| io_err(rpath.display(), e))?;
        if cut > 0 {
            tracing::warn!(
                bytes = cut,
                "receipts: cut a torn last line (a forget that never started)"
            );
        }
        self.receipts_len = self
            .receipts
            .metadata()
            .map_err(|e| io_err(rpath.display(), e))?
            .len();
        // A store from before the checkpoint existed completed every receipt it wrote.
        let done = receipts_done.unwrap_or(self.receipts_len);
        if done > self.receipts_len {
            tracing::warn!(
                checkpoint = done,
                len = self.receipts_len,
                "receipts.jsonl is shorter than the index remembers (rotated or cut by hand?)"
            );
        }
        self.receipts_done = done.min(self.receipts_len);
        if at_open {
            // This process emitted nothing yet; after a crash an event may appear twice,
            // never zero times.
            self.audited_upto = self.receipts_done;
        }
        self.audited_upto = self.audited_upto.max(self.receipts_done);
        self.replay_receipts()?;

        let path = self.seg_name();
        if file_len < SEG_HEADER {
            self.seg
                .write_all_at(SEGMENT_MAGIC, 0)
                .map_err(|e| io_err(path.display(), e))?;
        }
        if file_len > committed {
            tracing::warn!(
                path = %path.display(),
                bytes = file_len - committed,
                "discarding uncommitted or torn tail of the active segment"
            );
        } else if file_len < committed {
            self.recover_truncated(file_len.max(SEG_HEADER))?;
        }
        self.seg
            .set_len(self.len)
            .and_then(|()| self.seg.sync_all())
            .map_err(|e| io_err(path.display(), e))?;
        Ok(())
    }

    /// Completes the forgets whose receipts are past the checkpoint: their receipt is the
    /// promise that they are destroyed (write-ahead), so their audit events are emitted (if
    /// this process has not already), and those still indexed are shredded and unindexed.
    fn replay_receipts(&mut self) -> Result<(), SealError> {
        let (from, to) = (self.receipts_done, self.receipts_len);
        if from >= to {
            self.doomed_clear();
            return Ok(());
        }
        let mut buf = vec![0u8; (to - from) as usize];
        self.receipts
            .read_exact_at(&mut buf, from)
            .map_err(|e| io_err("receipts.jsonl", e))?;
        let mut receipts = Vec::new();
        let mut pos = from;
        for line in buf.split_inclusive(|&b| b == b'\n') {
            match Receipt::parse(line.strip_suffix(b"\n").unwrap_or(line)) {
                Some(r) => receipts.push((pos, r)),
                None => tracing::warn!(offset = pos, "receipts: skipping an unreadable line"),
            }
            pos += line.len() as u64;
        }
        let now = SystemTime::now();
        let events: Vec<AuditEvent> = receipts
            .iter()
            .filter(|(at, _)| *at >= self.audited_upto)
            .map(|(_, r)| AuditEvent {
                kind: r.kind,
                request_id: r.id,
                user: r.user.clone(),
                time: now,
                actor: r.actor.clone(),
                reason: format!("{} (completed after an interruption)", r.reason),
            })
            .collect();
        self.audit.emit_all(&events).map_err(|e| {
            SealError::new(
                ErrorKind::Audit,
                format!("completing {} receipted forget(s): {e}", receipts.len()),
            )
        })?;
        self.audited_upto = to;
        let ids: Vec<ExchangeId> = receipts.iter().map(|(_, r)| r.id).collect();
        let (found, _) = self.lookup(ids)?;
        tracing::warn!(
            receipts = receipts.len(),
            still_indexed = found.len(),
            "completing forgets that were receipted but not finished"
        );
        self.doomed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(found.iter().map(|(id, _)| *id));
        self.shred(&found)?;
        self.unindex(&found, to)?;
        self.doomed_clear();
        Ok(())
    }

    fn doomed_clear(&self) {
        self.doomed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// The active segment is shorter than the index says: keep the whole frames that remain,
    /// forget the rest (with receipts and audit events, reason `lost: segment truncated`).
    fn recover_truncated(&mut self, file_len: u64) -> Result<(), SealError> {
        let mut pos = SEG_HEADER;
        let mut hdr = [0u8; envelope::FRAME_HEADER];
        while pos + hdr.len() as u64 <= file_len {
            if self.seg.read_exact_at(&mut hdr, pos).is_err() {
                break;
            }
            match envelope::parse_frame_header(&hdr) {
                Some(h) if pos + h.frame_len() as u64 <= file_len => pos += h.frame_len() as u64,
                _ => break,
            }
        }
        let lost: Vec<ExchangeId> = self
            .scan()?
            .into_iter()
            .filter(|(_, e)| e.segment == self.active && e.offset + u64::from(e.len) > pos)
            .map(|(id, _)| id)
            .collect();
        tracing::error!(
            segment = self.active,
            lost = lost.len(),
            "active segment is shorter than committed: entries past the cut are lost"
        );
        self.len = pos;
        self.forget(
            lost,
            AuditKind::Forget,
            "recovery",
            "lost: segment truncated",
        )
        .map_err(|e| e.error)?;
        Ok(())
    }

    fn scan(&self) -> Result<Vec<(ExchangeId, IndexEntry)>, SealError> {
        let db = self.index.get()?;
        let txn = db.begin_read().map_err(db_err)?;
        let t = txn.open_table(EXCHANGES).map_err(db_err)?;
        let mut out = Vec::new();
        for r in t.iter().map_err(db_err)? {
            let (k, v) = r.map_err(db_err)?;
            out.push((
                ExchangeId::from_bytes(k.value()),
                IndexEntry::decode(v.value())?,
            ));
        }
        Ok(out)
    }

    fn run(mut self, rx: mpsc::Receiver<Command>) {
        let mut next: Option<Command> = None;
        loop {
            let cmd = match next.take() {
                Some(c) => c,
                None if self.health.is_ok() => match rx.recv() {
                    Ok(c) => c,
                    Err(_) => break,
                },
                // Degraded: wake up on our own to retry, so the store recovers (and `/healthz`
                // says so) once space returns even when no command arrives.
                None => match rx.recv_timeout(RETRY_INTERVAL) {
                    Ok(c) => c,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.maybe_recover(false);
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
            };
            match cmd {
                Command::Seal(job) => {
                    let mut bytes = job.frame.len();
                    let mut batch = vec![job];
                    // Under load, let the batch fill until the commit interval since the last
                    // commit has passed; after a quiet spell, commit at once.
                    let since = self.last_commit.elapsed();
                    if since < COMMIT_INTERVAL {
                        std::thread::sleep(COMMIT_INTERVAL - since);
                    }
                    while bytes < BATCH_MAX_BYTES && batch.len() < BATCH_MAX_JOBS {
                        match rx.try_recv() {
                            Ok(Command::Seal(j)) => {
                                bytes += j.frame.len();
                                batch.push(j);
                            }
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    if !self.health.is_ok() {
                        self.maybe_recover(false);
                    }
                    if self.health.is_ok() {
                        self.commit_batch(batch);
                    } else {
                        self.refuse_batch(batch);
                    }
                    self.last_commit = Instant::now();
                }
                Command::Forget {
                    ids,
                    kind,
                    actor,
                    reason,
                    ack,
                } => {
                    let r = match self.ready() {
                        Ok(()) => self.forget(ids, kind, &actor, &reason),
                        Err(e) => Err(ForgetError::nothing(e, ids)),
                    };
                    let _ = ack.send(r);
                }
                Command::Compact { ack } => {
                    let r = self.ready().and_then(|()| {
                        let r = self.compact();
                        self.fail_if_io(r.as_ref().err());
                        r
                    });
                    let _ = ack.send(r);
                }
                Command::Rewrap {
                    keyring,
                    actor,
                    ack,
                } => {
                    let r = self.ready().and_then(|()| {
                        let r = self.rewrap(&keyring, &actor);
                        self.fail_if_io(r.as_ref().err());
                        r
                    });
                    let _ = ack.send(r);
                }
            }
        }
    }

    // --- health ---

    /// A write failed: the store is degraded until a recovery succeeds. Nothing the writer
    /// holds in memory is trusted after this: recovery reloads it from the committed index.
    fn fail(&mut self, e: &SealError) {
        if self.health.failed(&e.to_string()) {
            tracing::error!(error = %e, "sealed store degraded: seals are refused until it recovers (retried every {} ms)", RETRY_INTERVAL.as_millis());
        } else {
            tracing::warn!(error = %e, "sealed store: another write failed while degraded");
        }
        self.stage.clear();
        self.failed_attempts = 0;
        self.last_attempt = Instant::now();
    }

    fn fail_if_io(&mut self, e: Option<&SealError>) {
        if let Some(e) = e.filter(|e| e.kind() == ErrorKind::Io) {
            self.fail(e);
        }
    }

    /// For operator commands: recover first if degraded (whatever the retry pacing), and
    /// refuse with [`ErrorKind::Degraded`] if that fails.
    fn ready(&mut self) -> Result<(), SealError> {
        if !self.health.is_ok() {
            self.maybe_recover(true);
        }
        if self.health.is_ok() {
            Ok(())
        } else {
            Err(degraded_error(&self.health))
        }
    }

    fn maybe_recover(&mut self, force: bool) {
        if !force && self.last_attempt.elapsed() < RETRY_INTERVAL {
            return;
        }
        self.last_attempt = Instant::now();
        match self.try_recover() {
            Ok(()) => {
                let since = self.health.recovered();
                let secs = since
                    .and_then(|s| s.elapsed().ok())
                    .map_or(0.0, |d| d.as_secs_f64());
                tracing::info!(
                    degraded_secs = secs,
                    attempts = self.failed_attempts + 1,
                    "sealed store recovered: sealing resumes"
                );
                self.failed_attempts = 0;
            }
            Err(e) => {
                self.failed_attempts += 1;
                self.health.degraded(&e.to_string());
                // Every 40th attempt (10 s at the retry interval) so a full disk does not
                // flood the log.
                if self.failed_attempts % 40 == 1 {
                    tracing::warn!(error = %e, attempts = self.failed_attempts, "sealed store still degraded");
                }
            }
        }
    }

    /// Space probe, then reopen the index if redb is poisoned, then reload all state.
    fn try_recover(&mut self) -> Result<(), SealError> {
        let probe = self.dir.join(".space-probe");
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&probe)
            .and_then(|f| {
                f.write_all_at(&vec![0u8; PROBE_LEN], 0)?;
                f.sync_data()
            });
        let _ = fs::remove_file(&probe);
        written.map_err(|e| io_err(format!("space probe ({PROBE_LEN} bytes)"), e))?;
        if self.index.is_poisoned() {
            self.index.reopen()?;
        }
        self.reload()
    }

    fn refuse_batch(&mut self, batch: Vec<SealJob>) {
        let e = degraded_error(&self.health);
        for job in batch {
            match job.ack {
                Some(ack) => {
                    let _ = ack.send(Err(e.clone()));
                }
                None => {
                    let n = self
                        .health
                        .detached_failures
                        .fetch_add(1, Ordering::Relaxed)
                        + 1;
                    // The degradation itself is logged once; per exchange only at debug.
                    tracing::debug!(exchange.id = %job.id, failed_total = n, "not sealed: store degraded");
                }
            }
        }
    }

    // --- seal ---

    fn seg_name(&self) -> PathBuf {
        seg_path(&self.dir, self.active)
    }

    fn flush_stage(&mut self, at: u64) -> Result<(), SealError> {
        if !self.stage.is_empty() {
            self.seg
                .write_all_at(&self.stage, at)
                .map_err(|e| io_err(self.seg_name().display(), e))?;
            self.stage.clear();
        }
        Ok(())
    }

    /// Starts a new active segment (the caller commits `active_segment` with its next txn).
    fn roll(&mut self) -> Result<(), SealError> {
        self.seg
            .sync_data()
            .map_err(|e| io_err(self.seg_name().display(), e))?;
        self.seg = create_segment(&self.dir, self.active + 1)?;
        self.active += 1;
        self.len = SEG_HEADER;
        Ok(())
    }

    fn alloc_slot(&mut self) -> u64 {
        self.free.pop().unwrap_or_else(|| {
            self.next_slot += 1;
            self.next_slot - 1
        })
    }

    fn commit_batch(&mut self, batch: Vec<SealJob>) {
        let jobs = batch.len();
        let mut acks = Vec::with_capacity(batch.len());
        let result = self.write_batch(batch, &mut acks);
        if let Err(e) = &result {
            // Nothing of this batch is indexed. Degrade: the in-memory segment length, slot
            // allocation and free list may be ahead of the index, so recovery reloads them
            // and cuts whatever the batch wrote past the committed length.
            self.fail(e);
            // Jobs the failing write never reached were dropped inside it: count them too.
            let unreached = jobs.saturating_sub(acks.len()) as u64;
            self.health
                .detached_failures
                .fetch_add(unreached, Ordering::Relaxed);
        }
        let mut logged = false;
        for (id, ack, done, r) in acks {
            if let (Some(done), Ok(()), Ok(())) = (done, &r, &result) {
                done.durable();
            }
            let r = match (&result, r) {
                (_, Err(e)) => Err(e),
                (Err(e), Ok(())) => Err(e.clone()),
                (Ok(()), Ok(())) => Ok(()),
            };
            match (ack, r) {
                (Some(ack), r) => {
                    let _ = ack.send(r);
                }
                (None, Err(e)) => {
                    let n = self
                        .health
                        .detached_failures
                        .fetch_add(1, Ordering::Relaxed)
                        + 1;
                    // One line per failed batch: a full disk fails every exchange of it.
                    if !logged {
                        logged = true;
                        tracing::error!(exchange.id = %id, error = %e, failed_total = n, "sealing failed");
                    }
                }
                (None, Ok(())) => {}
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn write_batch(
        &mut self,
        batch: Vec<SealJob>,
        acks: &mut Vec<(
            ExchangeId,
            Option<oneshot::Sender<Result<(), SealError>>>,
            Option<Done>,
            Result<(), SealError>,
        )>,
    ) -> Result<(), SealError> {
        let index = self.index.clone();
        let db = index.get()?;
        let existing = {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(EXCHANGES).map_err(db_err)?;
            let mut s = HashSet::new();
            for j in &batch {
                if t.get(j.id.as_bytes()).map_err(db_err)?.is_some() {
                    s.insert(j.id);
                }
            }
            s
        };
        let mut seen = HashSet::new();
        let mut entries = Vec::with_capacity(batch.len());
        let mut reused = Vec::new();
        let mut stage_at = self.len;
        for job in batch {
            if existing.contains(&job.id) || !seen.insert(job.id) {
                let e = SealError::new(ErrorKind::Duplicate, format!("{}: already sealed", job.id));
                acks.push((job.id, job.ack, job.done, Err(e)));
                continue;
            }
            let flen = job.frame.len() as u64;
            if self.len > SEG_HEADER && self.len + flen > self.segment_max {
                self.flush_stage(stage_at)?;
                self.roll()?;
                stage_at = self.len;
            }
            let offset = self.len;
            if job.frame.len() < STAGE_LIMIT {
                self.stage.extend_from_slice(&job.frame);
            } else {
                self.flush_stage(stage_at)?;
                self.seg
                    .write_all_at(&job.frame, offset)
                    .map_err(|e| io_err(self.seg_name().display(), e))?;
                stage_at = offset + flen;
            }
            self.len += flen;
            if self.stage.is_empty() {
                stage_at = self.len;
            }
            let from_free = !self.free.is_empty();
            let slot = self.alloc_slot();
            if from_free {
                reused.push(slot);
            }
            self.slots
                .write_all_at(&job.slot, slot * SLOT_LEN as u64)
                .map_err(|e| io_err("keyslots", e))?;
            entries.push((
                job.id,
                IndexEntry {
                    segment: self.active,
                    offset,
                    len: flen as u32,
                    slot,
                    time: job.time,
                    user: job.user,
                },
            ));
            acks.push((job.id, job.ack, job.done, Ok(())));
        }
        self.flush_stage(stage_at)?;
        if entries.is_empty() {
            return Ok(());
        }
        self.seg
            .sync_data()
            .map_err(|e| io_err(self.seg_name().display(), e))?;
        self.slots.sync_data().map_err(|e| io_err("keyslots", e))?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut ex = txn.open_table(EXCHANGES).map_err(db_err)?;
            let mut by_user = txn.open_multimap_table(BY_USER).map_err(db_err)?;
            let mut by_time = txn.open_table(BY_TIME).map_err(db_err)?;
            let mut free = txn.open_table(FREE_SLOTS).map_err(db_err)?;
            for (id, e) in &entries {
                ex.insert(id.as_bytes(), e.encode().as_slice())
                    .map_err(db_err)?;
                if let Some(u) = &e.user {
                    by_user.insert(u.as_str(), id.as_bytes()).map_err(db_err)?;
                }
                by_time
                    .insert((millis(e.time), *id.as_bytes()), ())
                    .map_err(db_err)?;
            }
            for s in &reused {
                free.remove(s).map_err(db_err)?;
            }
            self.put_meta(&txn)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(())
    }

    fn put_meta(&self, txn: &redb::WriteTransaction) -> Result<(), SealError> {
        let mut meta = txn.open_table(META).map_err(db_err)?;
        meta.insert("active_segment", u64::from(self.active))
            .map_err(db_err)?;
        meta.insert("committed_len", self.len).map_err(db_err)?;
        meta.insert("next_slot", self.next_slot).map_err(db_err)?;
        meta.insert("receipts_done", self.receipts_done)
            .map_err(db_err)?;
        Ok(())
    }

    // --- forget ---

    /// Which of `ids` the index holds (each once), and the outcome per asked ID.
    #[allow(clippy::type_complexity)]
    fn lookup(
        &self,
        ids: Vec<ExchangeId>,
    ) -> Result<(Vec<(ExchangeId, IndexEntry)>, Vec<ForgetOutcome>), SealError> {
        let db = self.index.get()?;
        let txn = db.begin_read().map_err(db_err)?;
        let t = txn.open_table(EXCHANGES).map_err(db_err)?;
        let mut found = Vec::new();
        let mut out = Vec::with_capacity(ids.len());
        let mut seen = HashSet::new();
        for id in ids {
            let hit = if seen.insert(id) {
                t.get(id.as_bytes()).map_err(db_err)?
            } else {
                None
            };
            let forgotten = match hit {
                Some(v) => {
                    found.push((id, IndexEntry::decode(v.value())?));
                    true
                }
                None => false,
            };
            out.push(ForgetOutcome { id, forgotten });
        }
        Ok((found, out))
    }

    /// True when `receipts.jsonl` still holds bytes past `before` (a failed append or
    /// withdrawal could not cut them back), or when that cannot be told.
    fn receipts_left_past(&self, before: u64) -> bool {
        self.receipts.metadata().map_or(true, |m| m.len() > before)
    }

    fn forget(
        &mut self,
        ids: Vec<ExchangeId>,
        kind: AuditKind,
        actor: &str,
        reason: &str,
    ) -> ForgetResult {
        let (found, out) = match self.lookup(ids.clone()) {
            Ok(x) => x,
            Err(e) => {
                self.fail_if_io(Some(&e));
                return Err(ForgetError::nothing(e, ids));
            }
        };
        if found.is_empty() {
            return Ok(out);
        }
        let found_ids: Vec<ExchangeId> = found.iter().map(|(id, _)| *id).collect();
        let now = SystemTime::now();

        // 1. Write-ahead receipts, fsynced: from here on "no receipt" means "nothing destroyed".
        let mut lines = String::new();
        for (id, e) in &found {
            let receipt = serde_json::json!({
                "request_id": id.to_string(),
                "time": rfc3339(now),
                "kind": kind.as_str(),
                "reason": reason,
                "actor": actor,
                "user": e.user,
            });
            lines.push_str(&receipt.to_string());
            lines.push('\n');
        }
        let before = self.receipts_len;
        if let Err(e) = crate::os::append_lines(&self.receipts, lines.as_bytes(), true) {
            let e = io_err(
                format!(
                    "{}: cannot write the receipts (nothing was destroyed)",
                    self.dir.join("receipts.jsonl").display()
                ),
                e,
            );
            // append_lines cut it back; if that failed too, recovery cuts it first.
            self.receipts_rollback = Some(before);
            self.fail(&e);
            if self.receipts_left_past(before) {
                return Err(ForgetError::receipted(e, found_ids));
            }
            return Err(ForgetError::nothing(e, found_ids));
        }
        self.receipts_len += lines.len() as u64;

        // 2. Audit events, durably, still before anything is destroyed.
        let events: Vec<AuditEvent> = found
            .iter()
            .map(|(id, e)| AuditEvent {
                kind,
                request_id: *id,
                user: e.user.clone(),
                time: now,
                actor: actor.to_string(),
                reason: reason.to_string(),
            })
            .collect();
        if let Err(e) = self.audit.emit_all(&events) {
            let err = SealError::new(
                ErrorKind::Audit,
                format!("the forget could not be audited ({e}); nothing was destroyed"),
            );
            // Withdraw the receipts: the forget did not happen.
            if let Err(te) = self
                .receipts
                .set_len(before)
                .and_then(|()| self.receipts.sync_data())
            {
                self.receipts_rollback = Some(before);
                self.fail(&io_err("receipts.jsonl: withdrawing receipts", te));
                self.receipts_len = before;
                return Err(ForgetError::receipted(err, found_ids));
            }
            self.receipts_len = before;
            return Err(ForgetError::nothing(err, found_ids));
        }
        self.audited_upto = self.receipts_len;

        // Committed. Readers see them as gone from now on; a failure below leaves receipts past
        // the checkpoint, which recovery completes.
        self.doomed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(found_ids.iter().copied());

        // 3. Shred.
        if let Err(e) = self.shred(&found) {
            self.fail(&e);
            return Err(ForgetError {
                error: SealError::new(
                    e.kind(),
                    format!(
                        "{e}; receipts and audit entries are written and the exchanges can no longer be read; shredding their data keys is retried when the store recovers"
                    ),
                ),
                destroyed: Vec::new(),
                pending: found_ids,
                not_destroyed: Vec::new(),
            });
        }

        // 4. Unindex, advancing the checkpoint past these receipts.
        if let Err(e) = self.unindex(&found, self.receipts_len) {
            // The data keys are destroyed (zeroed and synced): the forget is done. Only the
            // index lags; recovery replays the receipts past the checkpoint and removes the
            // entries. Until then they stay hidden from readers.
            self.fail(&e);
            tracing::error!(error = %e, destroyed = found.len(), "forget: data keys destroyed, index cleanup deferred to recovery");
            return Ok(out);
        }
        let mut doomed = self.doomed.lock().unwrap_or_else(|p| p.into_inner());
        for id in &found_ids {
            doomed.remove(id);
        }
        Ok(out)
    }

    /// Zeroes the wrapped keys (and fsyncs them: that is the destruction) and, best-effort,
    /// the ciphertext.
    fn shred(&mut self, found: &[(ExchangeId, IndexEntry)]) -> Result<(), SealError> {
        if found.is_empty() {
            return Ok(());
        }
        let zeros = [0u8; SLOT_LEN];
        for (_, e) in found {
            self.slots
                .write_all_at(&zeros, e.slot * SLOT_LEN as u64)
                .map_err(|er| io_err("keyslots", er))?;
        }
        // Only the slot zeroing must be durable before we say "gone": without its data key the
        // ciphertext is noise even if a crash undoes the zeroing, so the segments are not
        // fsynced here (one fsync fewer per forget; the next batch or the OS flushes them).
        self.slots.sync_data().map_err(|e| io_err("keyslots", e))?;
        let mut touched: BTreeMap<u32, Option<(File, u64)>> = BTreeMap::new();
        for (id, e) in found {
            let f = touched.entry(e.segment).or_insert_with(|| {
                let p = seg_path(&self.dir, e.segment);
                match OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .and_then(|f| Ok((f.metadata()?.len(), f)))
                {
                    Ok((len, f)) => Some((f, len)),
                    Err(er) => {
                        tracing::warn!(path = %p.display(), error = %er, "cannot zero frames");
                        None
                    }
                }
            });
            let Some((f, file_len)) = f else { continue };
            // Keep the frame header (recovery walks headers), zero id onwards; never write past
            // the end of the file or the committed part of the active segment.
            let end = e.offset + u64::from(e.len);
            if end > *file_len || (e.segment == self.active && end > self.len) {
                continue;
            }
            let body = (e.len as usize).saturating_sub(12);
            if let Err(er) = f.write_all_at(&vec![0u8; body], e.offset + 12) {
                tracing::warn!(exchange.id = %id, error = %er, "cannot zero a forgotten frame (its key is destroyed)");
            }
        }
        Ok(())
    }

    /// Removes the entries from the index, frees their slots and sets the receipts checkpoint,
    /// in one commit.
    fn unindex(
        &mut self,
        found: &[(ExchangeId, IndexEntry)],
        receipts_done: u64,
    ) -> Result<(), SealError> {
        let index = self.index.clone();
        let db = index.get()?;
        let txn = db.begin_write().map_err(db_err)?;
        let done_before = self.receipts_done;
        self.receipts_done = receipts_done;
        let r = (|| {
            let mut ex = txn.open_table(EXCHANGES).map_err(db_err)?;
            let mut by_user = txn.open_multimap_table(BY_USER).map_err(db_err)?;
            let mut by_time = txn.open_table(BY_TIME).map_err(db_err)?;
            let mut free = txn.open_table(FREE_SLOTS).map_err(db_err)?;
            for (id, e) in found {
                ex.remove(id.as_bytes()).map_err(db_err)?;
                if let Some(u) = &e.user {
                    by_user.remove(u.as_str(), id.as_bytes()).map_err(db_err)?;
                }
                by_time
                    .remove((millis(e.time), *id.as_bytes()))
                    .map_err(db_err)?;
                free.insert(e.slot, ()).map_err(db_err)?;
            }
            Ok::<(), SealError>(())
        })()
        .and_then(|()| self.put_meta(&txn))
        .and_then(|()| txn.commit().map_err(db_err));
        if r.is_err() {
            self.receipts_done = done_before;
        }
        r?;
        self.free.extend(found.iter().map(|(_, e)| e.slot));
        Ok(())
    }

    fn compact(&mut self) -> Result<CompactStats, SealError> {
        let mut stats = CompactStats::default();
        let mut live: BTreeMap<u32, Vec<(ExchangeId, IndexEntry)>> = BTreeMap::new();
        for (id, e) in self.scan()? {
            live.entry(e.segment).or_default().push((id, e));
        }
        let live_bytes = |seg: u32| -> u64 {
            live.get(&seg)
                .map(|v| v.iter().map(|(_, e)| u64::from(e.len)).sum())
                .unwrap_or(0)
        };
        // The active segment is compacted like the others once it is no longer active.
        let index = self.index.clone();
        let db = index.get()?;
        if self.len > SEG_HEADER && live_bytes(self.active) + SEG_HEADER < self.len {
            self.roll()?;
            let txn = db.begin_write().map_err(db_err)?;
            self.put_meta(&txn)?;
            txn.commit().map_err(db_err)?;
        }
        // Frames move into the active segment (which may roll while we copy): only segments
        // older than the one active now are compacted, never one we are filling.
        let first_target = self.active;
        for seg in list_segments(&self.dir)? {
            if seg >= first_target {
                continue;
            }
            let path = seg_path(&self.dir, seg);
            let file_len = fs::metadata(&path)
                .map_err(|e| io_err(path.display(), e))?
                .len();
            let keep = live_bytes(seg);
            if keep + SEG_HEADER >= file_len && keep > 0 {
                continue;
            }
            let mut moved = Vec::new();
            if keep > 0 {
                let src = File::open(&path).map_err(|e| io_err(path.display(), e))?;
                for (id, e) in live.get(&seg).into_iter().flatten() {
                    let mut frame = vec![0u8; e.len as usize];
                    src.read_exact_at(&mut frame, e.offset)
                        .map_err(|er| io_err(path.display(), er))?;
                    if self.len > SEG_HEADER && self.len + frame.len() as u64 > self.segment_max {
                        self.roll()?;
                    }
                    let at = self.len;
                    self.seg
                        .write_all_at(&frame, at)
                        .map_err(|er| io_err(self.seg_name().display(), er))?;
                    self.len += frame.len() as u64;
                    let mut ne = e.clone();
                    ne.segment = self.active;
                    ne.offset = at;
                    moved.push((*id, ne));
                }
                self.seg
                    .sync_data()
                    .map_err(|e| io_err(self.seg_name().display(), e))?;
            }
            let txn = db.begin_write().map_err(db_err)?;
            {
                let mut ex = txn.open_table(EXCHANGES).map_err(db_err)?;
                for (id, e) in &moved {
                    ex.insert(id.as_bytes(), e.encode().as_slice())
                        .map_err(db_err)?;
                }
                self.put_meta(&txn)?;
            }
            txn.commit().map_err(db_err)?;
            stats.frames_moved += moved.len();
            stats.segments_removed += 1;
            stats.bytes_reclaimed += file_len.saturating_sub(keep);
            fs::remove_file(&path).map_err(|e| io_err(path.display(), e))?;
        }
        sync_dir(&self.dir.join("segments"))?;
        Ok(stats)
    }

    fn rewrap(&mut self, ring: &Keyring, actor: &str) -> Result<usize, SealError> {
        let current = ring.current();
        let wrap_new = current.derive(Purpose::SealWrap);
        let mut n = 0;
        let mut events = Vec::new();
        for (id, e) in self.scan()? {
            let mut slot = [0u8; SLOT_LEN];
            self.slots
                .read_exact_at(&mut slot, e.slot * SLOT_LEN as u64)
                .map_err(|er| io_err("keyslots", er))?;
            let kid = envelope::slot_key_id(&slot, id)?;
            if kid == current.id() {
                continue;
            }
            let old = ring.get(kid).ok_or_else(|| {
                SealError::new(
                    ErrorKind::KeyMissing,
                    format!("{id}: master key {kid} is not in the keyring; cannot rewrap"),
                )
            })?;
            let dk = envelope::unwrap_slot(&slot, id, &old.derive(Purpose::SealWrap))?;
            let new_slot = envelope::wrap_slot(id, &dk, current.id(), &wrap_new);
            self.slots
                .write_all_at(&new_slot, e.slot * SLOT_LEN as u64)
                .map_err(|er| io_err("keyslots", er))?;
            n += 1;
            events.push((id, e.user));
        }
        self.slots.sync_data().map_err(|e| io_err("keyslots", e))?;
        let now = SystemTime::now();
        let events: Vec<AuditEvent> = events
            .into_iter()
            .map(|(id, user)| AuditEvent {
                kind: AuditKind::Rewrap,
                request_id: id,
                user,
                time: now,
                actor: actor.to_string(),
                reason: format!("rewrap to {}", current.id()),
            })
            .collect();
        // A rewrap neither reveals nor destroys; it is done and stays done, but the caller
        // must hear that its audit trail is missing.
        self.audit.emit_all(&events).map_err(|e| {
            SealError::new(
                ErrorKind::Audit,
                format!(
                    "re-wrapped {n} data key(s), but their audit entries could not be written: {e}"
                ),
            )
        })?;
        Ok(n)
    }
}

#[cfg(test)]
mod pending_tests {
    use super::*;

    // See: veil#10. Forty 20 MB exchanges once waited for the disk in memory, bounded only
    // by a count of 4096 jobs.
    #[test]
    fn submit_refuses_past_the_pending_byte_bound() {
        let dir = tempfile::tempdir().unwrap();
        let store = SealStore::open(
            dir.path(),
            crate::seal::tests::ring(3),
            SealOptions::default(),
        )
        .unwrap();
        let mut big = crate::seal::tests::openai_chat();
        big.request_body.chunks = vec![bytes::Bytes::from(vec![b'x'; 20 << 20])];
        // Pretend 250 MiB of frames already wait: one more 20 MB exchange is refused.
        store.inner.pending_bytes.store(250 << 20, Ordering::SeqCst);
        let err = store.submit(&big, None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Busy);
        assert!(err.to_string().contains("250 MiB"), "{err}");
        assert_eq!(
            store.inner.pending_bytes.load(Ordering::SeqCst),
            250 << 20,
            "a refused job gives its bytes back"
        );
        // Nothing waiting: even a frame over the bound alone is taken, and its bytes come back.
        store.inner.pending_bytes.store(0, Ordering::SeqCst);
        big.request_body.chunks = vec![bytes::Bytes::from(vec![b'x'; 300 << 20])];
        store.submit(&big, None).unwrap().wait().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while store.inner.pending_bytes.load(Ordering::SeqCst) != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "bytes released after the write"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }

    #[test]
    fn submit_refuses_past_the_pending_bound_and_recovers() {
        let dir = tempfile::tempdir().unwrap();
        let store = SealStore::open(
            dir.path(),
            crate::seal::tests::ring(3),
            SealOptions::default(),
        )
        .unwrap();
        // Pretend the disk lags: the bound is reached.
        store
            .inner
            .pending
            .store(MAX_PENDING_SEALS, Ordering::SeqCst);
        let ex = crate::seal::tests::openai_chat();
        let err = store.submit(&ex, None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Busy);
        assert_eq!(
            store.inner.pending.load(Ordering::SeqCst),
            MAX_PENDING_SEALS,
            "a refused job is not counted"
        );
        store.inner.pending.store(0, Ordering::SeqCst);
        store.submit(&ex, None).unwrap().wait().unwrap();
        // The writer drops the job just after acknowledging it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while store.inner.pending.load(Ordering::SeqCst) != 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "a written job no longer counts"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
