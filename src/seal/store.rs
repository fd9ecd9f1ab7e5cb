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
//! ## Deletion
//! Forgetting zeroes the key slot in place (crypto-shredding), zeroes the ciphertext in its
//! segment, fsyncs, then removes the index entries and writes a receipt. Wrapped keys live in
//! the slot file, not in redb, because redb is copy-on-write: a deleted value would linger in
//! free pages. Compaction moves live frames out of segments with dead bytes and deletes them.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use redb::{
    Database, MultimapTableDefinition, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};
use tokio::sync::{mpsc, oneshot};

use super::audit::{AuditEvent, AuditKind, AuditSink, JsonlAuditSink, rfc3339};
use super::envelope::{self, SLOT_LEN};
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

/// Options for [`SealStore::open`].
#[derive(Debug, Clone, Default)]
pub struct SealOptions {
    /// Keys dir, so [`SealStore::reload_keys`] (admin `keys/reload`, rewrap) can re-read it.
    pub keys_dir: Option<PathBuf>,
    /// Where audit events go (default: [`JsonlAuditSink`] on `<data>/audit.jsonl`).
    pub audit: Option<Arc<dyn AuditSink>>,
    /// Segment size before rolling (default [`DEFAULT_SEGMENT_MAX`]).
    pub segment_max: Option<u64>,
    /// Niceness of the writer thread (see [`crate::os::RECORDING_NICE`]; 0 = as the caller).
    pub writer_nice: i32,
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
    /// True when it was in the store and is now destroyed; false when it was unknown (never
    /// sealed, or already forgotten).
    pub forgotten: bool,
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
}

/// Most seal jobs queued for the writer at once. The queue itself is unbounded (operator
/// commands must never be refused), so this is what bounds its memory: past it, `submit`
/// refuses with [`ErrorKind::Busy`] and the caller counts a lost seal instead of the process
/// growing without limit while the disk lags.
pub const MAX_PENDING_SEALS: usize = 4096;

/// Decrements the in-flight count when a seal job goes away.
struct PendingGuard(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

enum Command {
    Seal(SealJob),
    Forget {
        ids: Vec<ExchangeId>,
        kind: AuditKind,
        actor: String,
        reason: String,
        ack: oneshot::Sender<Result<Vec<ForgetOutcome>, SealError>>,
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
    db: Arc<Database>,
    slots: File,
    keyring: RwLock<Arc<Keyring>>,
    keys_dir: Option<PathBuf>,
    audit: Arc<dyn AuditSink>,
    tx: Mutex<Option<mpsc::UnboundedSender<Command>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// Seal jobs submitted and not yet dropped by the writer.
    pending: Arc<std::sync::atomic::AtomicUsize>,
    /// Detached seal jobs that failed after they were queued.
    detached_failed: Arc<std::sync::atomic::AtomicU64>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealStore")
            .field("dir", &self.dir)
            .field("keyring", &self.keyring)
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

impl SealStore {
    /// Opens (creating if needed) the store under `<data>/sealed/`, recovering from a crash.
    ///
    /// Fails with [`ErrorKind::Locked`] when another process (a running `veil run`) holds it.
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
        let db = Database::create(&index_path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => SealError::new(
                ErrorKind::Locked,
                format!(
                    "{} is in use by another process (a running `veil run`?)",
                    index_path.display()
                ),
            ),
            other => db_err(other),
        })?;
        let db = Arc::new(db);
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
        let writer = Writer::recover(
            dir.clone(),
            db.clone(),
            slots.try_clone().map_err(|e| io_err("keyslots", e))?,
            audit.clone(),
            opts.segment_max.unwrap_or(DEFAULT_SEGMENT_MAX),
        )?;
        let detached_failed = writer.detached_failed.clone();
        let (tx, rx) = mpsc::unbounded_channel();
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
                db,
                slots,
                keyring: RwLock::new(Arc::new(keyring)),
                keys_dir: opts.keys_dir,
                audit,
                tx: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(handle)),
                pending: Arc::default(),
                detached_failed,
            }),
        })
    }

    /// `<data>/sealed`.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
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
    /// [`MAX_PENDING_SEALS`] jobs wait for the writer; past that this fails with
    /// [`ErrorKind::Busy`] instead of queueing without bound.
    pub fn submit(&self, exchange: &Exchange, user: Option<&str>) -> Result<SealAck, SealError> {
        let (ack, rx) = oneshot::channel();
        self.enqueue(exchange, user, Some(ack))?;
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
        self.enqueue(exchange, user, None)
    }

    fn enqueue(
        &self,
        exchange: &Exchange,
        user: Option<&str>,
        ack: Option<oneshot::Sender<Result<(), SealError>>>,
    ) -> Result<(), SealError> {
        if let Some(u) = user
            && !crate::keys::is_user_pseudonym(u)
        {
            return Err(SealError::new(
                ErrorKind::Format,
                "user must be a pseudonym (u_ + 16 hex, see keys::pseudonymize_user), not a raw user id",
            ));
        }
        let pending = &self.inner.pending;
        if pending.fetch_add(1, std::sync::atomic::Ordering::AcqRel) >= MAX_PENDING_SEALS {
            pending.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
            return Err(SealError::new(
                ErrorKind::Busy,
                format!("{MAX_PENDING_SEALS} exchanges already wait for the disk; not sealed"),
            ));
        }
        let guard = PendingGuard(pending.clone());
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
        }))
    }

    /// Detached seal jobs that failed after they were queued (the writer also logs each).
    pub fn detached_failures(&self) -> u64 {
        self.inner
            .detached_failed
            .load(std::sync::atomic::Ordering::Relaxed)
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

    /// The index entry for `id`, if the store holds it.
    pub fn entry(&self, id: ExchangeId) -> Result<Option<IndexEntry>, SealError> {
        let txn = self.inner.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(EXCHANGES).map_err(db_err)?;
        match t.get(id.as_bytes()).map_err(db_err)? {
            Some(v) => Ok(Some(IndexEntry::decode(v.value())?)),
            None => Ok(None),
        }
    }

    /// Every sealed ID, in ID order (UUIDv7: creation order).
    pub fn ids(&self) -> Result<Vec<ExchangeId>, SealError> {
        let txn = self.inner.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(EXCHANGES).map_err(db_err)?;
        let mut out = Vec::new();
        for r in t.iter().map_err(db_err)? {
            out.push(ExchangeId::from_bytes(r.map_err(db_err)?.0.value()));
        }
        Ok(out)
    }

    /// Number of sealed exchanges.
    pub fn len(&self) -> Result<u64, SealError> {
        let txn = self.inner.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(EXCHANGES).map_err(db_err)?;
        t.len().map_err(db_err)
    }

    /// True when the store holds nothing.
    pub fn is_empty(&self) -> Result<bool, SealError> {
        Ok(self.len()? == 0)
    }

    /// IDs sealed for user pseudonym `user`.
    pub fn ids_for_user(&self, user: &str) -> Result<Vec<ExchangeId>, SealError> {
        let txn = self.inner.db.begin_read().map_err(db_err)?;
        let t = txn.open_multimap_table(BY_USER).map_err(db_err)?;
        let mut out = Vec::new();
        for v in t.get(user).map_err(db_err)? {
            out.push(ExchangeId::from_bytes(v.map_err(db_err)?.value()));
        }
        Ok(out)
    }

    /// IDs whose exchange started before `cutoff`.
    pub fn ids_before(&self, cutoff: SystemTime) -> Result<Vec<ExchangeId>, SealError> {
        let txn = self.inner.db.begin_read().map_err(db_err)?;
        let t = txn.open_table(BY_TIME).map_err(db_err)?;
        let mut out = Vec::new();
        for r in t
            .range((0u64, [0u8; 16])..(millis(cutoff), [0u8; 16]))
            .map_err(db_err)?
        {
            let (k, _) = r.map_err(db_err)?;
            out.push(ExchangeId::from_bytes(k.value().1));
        }
        Ok(out)
    }

    /// Decrypts and returns the exchange sealed under `id`, and emits an `unseal` audit event
    /// naming `actor` and `reason`.
    pub fn unseal(&self, id: ExchangeId, actor: &str, reason: &str) -> Result<Exchange, SealError> {
        // One retry: compaction may move the frame between reading the index and the file.
        let (entry, ex) = match self.try_unseal(id) {
            Err(e) if e.kind() == ErrorKind::Io => self.try_unseal(id)?,
            other => other?,
        };
        self.inner.audit.emit(&AuditEvent {
            kind: AuditKind::Unseal,
            request_id: id,
            user: entry.user,
            time: SystemTime::now(),
            actor: actor.to_string(),
            reason: reason.to_string(),
        });
        Ok(ex)
    }

    fn try_unseal(&self, id: ExchangeId) -> Result<(IndexEntry, Exchange), SealError> {
        let entry = self.entry(id)?.ok_or_else(|| {
            SealError::new(
                ErrorKind::NotFound,
                format!("{id}: no sealed exchange with this id (never sealed, or forgotten)"),
            )
        })?;
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
        let ex = envelope::open_frame(frame, id, &data_key)?;
        Ok((entry, ex))
    }

    fn forget_inner(
        &self,
        ids: Vec<ExchangeId>,
        kind: AuditKind,
        actor: &str,
        reason: &str,
    ) -> Result<Vec<ForgetOutcome>, SealError> {
        let (ack, rx) = oneshot::channel();
        self.send(Command::Forget {
            ids,
            kind,
            actor: actor.to_string(),
            reason: reason.to_string(),
            ack,
        })?;
        rx.blocking_recv().map_err(|_| SealError::closed())?
    }

    /// Destroys the exchanges with `ids`: shreds their data keys, zeroes their ciphertext,
    /// removes their index entries, writes one receipt and one audit event each. Unknown IDs
    /// come back with `forgotten: false`; forgetting twice is harmless. Blocking.
    pub fn forget(
        &self,
        ids: &[ExchangeId],
        actor: &str,
        reason: &str,
    ) -> Result<Vec<ForgetOutcome>, SealError> {
        self.forget_inner(ids.to_vec(), AuditKind::Forget, actor, reason)
    }

    /// Forgets every exchange of user pseudonym `user`; returns the IDs destroyed. Blocking.
    pub fn forget_user(
        &self,
        user: &str,
        actor: &str,
        reason: &str,
    ) -> Result<Vec<ExchangeId>, SealError> {
        let ids = self.ids_for_user(user)?;
        let out = self.forget_inner(ids, AuditKind::Forget, actor, reason)?;
        Ok(out
            .into_iter()
            .filter(|o| o.forgotten)
            .map(|o| o.id)
            .collect())
    }

    /// Purges every exchange that started before `cutoff` (retention); returns how many.
    pub fn purge_before(&self, cutoff: SystemTime, actor: &str) -> Result<usize, SealError> {
        let ids = self.ids_before(cutoff)?;
        let mut n = 0;
        for chunk in ids.chunks(1024) {
            let out = self.forget_inner(chunk.to_vec(), AuditKind::Purge, actor, "retention")?;
            n += out.iter().filter(|o| o.forgotten).count();
        }
        Ok(n)
    }

    /// Purges every exchange older than `older_than` (by its start time). Blocking.
    pub fn purge(&self, older_than: Duration, actor: &str) -> Result<usize, SealError> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.purge_before(cutoff, actor)
    }

    /// The retention loop for `veil run`: every `interval`, purges exchanges older than
    /// `older_than` (on a blocking thread), until `shutdown` resolves. Errors are logged and
    /// retried at the next tick; a purge never blocks the async runtime.
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
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(purged = n, "retention purge"),
                Ok(Err(e)) => tracing::error!(error = %e, "retention purge failed"),
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
    db: Arc<Database>,
    slots: File,
    audit: Arc<dyn AuditSink>,
    segment_max: u64,
    active: u32,
    seg: File,
    len: u64,
    next_slot: u64,
    free: Vec<u64>,
    stage: Vec<u8>,
    /// When the last seal batch was committed (paces group commit).
    last_commit: std::time::Instant,
    /// Shared with [`Inner::detached_failed`].
    detached_failed: Arc<std::sync::atomic::AtomicU64>,
}

fn meta_get(db: &Database, key: &str) -> Result<Option<u64>, SealError> {
    let txn = db.begin_read().map_err(db_err)?;
    let t = txn.open_table(META).map_err(db_err)?;
    Ok(t.get(key).map_err(db_err)?.map(|v| v.value()))
}

impl Writer {
    fn recover(
        dir: PathBuf,
        db: Arc<Database>,
        slots: File,
        audit: Arc<dyn AuditSink>,
        segment_max: u64,
    ) -> Result<Self, SealError> {
        {
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
        let free = {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(FREE_SLOTS).map_err(db_err)?;
            let mut v = Vec::new();
            for r in t.iter().map_err(db_err)? {
                v.push(r.map_err(db_err)?.0.value());
            }
            v
        };
        // Segments newer than the active one were created by a roll that never committed.
        for n in list_segments(&dir)? {
            if n > active {
                let p = seg_path(&dir, n);
                tracing::warn!(path = %p.display(), "removing uncommitted segment");
                fs::remove_file(&p).map_err(|e| io_err(p.display(), e))?;
            }
        }
        let path = seg_path(&dir, active);
        let seg = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => create_segment(&dir, active)?,
            Err(e) => return Err(io_err(path.display(), e)),
        };
        let file_len = seg.metadata().map_err(|e| io_err(path.display(), e))?.len();
        let mut w = Writer {
            dir,
            db,
            slots,
            audit,
            segment_max,
            active,
            seg,
            len: committed,
            next_slot,
            free,
            stage: Vec::new(),
            last_commit: std::time::Instant::now() - COMMIT_INTERVAL,
            detached_failed: Arc::default(),
        };
        if file_len < SEG_HEADER {
            w.seg
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
            w.recover_truncated(file_len.max(SEG_HEADER))?;
        }
        w.seg
            .set_len(w.len)
            .and_then(|()| w.seg.sync_all())
            .map_err(|e| io_err(path.display(), e))?;
        Ok(w)
    }

    /// The active segment is shorter than the index says: keep the whole frames that remain,
    /// shred and unindex the rest.
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
        )?;
        Ok(())
    }

    fn scan(&self) -> Result<Vec<(ExchangeId, IndexEntry)>, SealError> {
        let txn = self.db.begin_read().map_err(db_err)?;
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

    fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut next: Option<Command> = None;
        loop {
            let cmd = match next.take() {
                Some(c) => c,
                None => match rx.blocking_recv() {
                    Some(c) => c,
                    None => break,
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
                    self.commit_batch(batch);
                    self.last_commit = std::time::Instant::now();
                }
                Command::Forget {
                    ids,
                    kind,
                    actor,
                    reason,
                    ack,
                } => {
                    let _ = ack.send(self.forget(ids, kind, &actor, &reason));
                }
                Command::Compact { ack } => {
                    let _ = ack.send(self.compact());
                }
                Command::Rewrap {
                    keyring,
                    actor,
                    ack,
                } => {
                    let _ = ack.send(self.rewrap(&keyring, &actor));
                }
            }
        }
    }

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
        let (start_seg, start_len, start_next, start_free) =
            (self.active, self.len, self.next_slot, self.free.clone());
        let mut acks = Vec::with_capacity(batch.len());
        let result = self.write_batch(batch, &mut acks);
        if result.is_err() {
            // Nothing of this batch is indexed: forget the in-memory allocation; the bytes
            // past the committed length are cut on the next open or overwritten next batch.
            self.stage.clear();
            if self.active == start_seg {
                self.len = start_len;
            }
            self.next_slot = start_next;
            self.free = start_free;
        }
        for (id, ack, r) in acks {
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
                        .detached_failed
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        + 1;
                    tracing::error!(exchange.id = %id, error = %e, failed_total = n, "sealing failed");
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
            Result<(), SealError>,
        )>,
    ) -> Result<(), SealError> {
        let existing = {
            let txn = self.db.begin_read().map_err(db_err)?;
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
                acks.push((job.id, job.ack, Err(e)));
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
            acks.push((job.id, job.ack, Ok(())));
        }
        self.flush_stage(stage_at)?;
        if entries.is_empty() {
            return Ok(());
        }
        self.seg
            .sync_data()
            .map_err(|e| io_err(self.seg_name().display(), e))?;
        self.slots.sync_data().map_err(|e| io_err("keyslots", e))?;
        let txn = self.db.begin_write().map_err(db_err)?;
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
        Ok(())
    }

    fn forget(
        &mut self,
        ids: Vec<ExchangeId>,
        kind: AuditKind,
        actor: &str,
        reason: &str,
    ) -> Result<Vec<ForgetOutcome>, SealError> {
        let mut found = Vec::new();
        let mut out = Vec::with_capacity(ids.len());
        {
            let txn = self.db.begin_read().map_err(db_err)?;
            let t = txn.open_table(EXCHANGES).map_err(db_err)?;
            let mut seen = HashSet::new();
            for id in ids {
                let hit = if seen.insert(id) {
                    t.get(id.as_bytes()).map_err(db_err)?
                } else {
                    None
                };
                match hit {
                    Some(v) => {
                        found.push((id, IndexEntry::decode(v.value())?));
                        out.push(ForgetOutcome {
                            id,
                            forgotten: true,
                        });
                    }
                    None => out.push(ForgetOutcome {
                        id,
                        forgotten: false,
                    }),
                }
            }
        }
        if found.is_empty() {
            return Ok(out);
        }
        // 1. Shred: zero the wrapped keys and the ciphertext.
        let zeros = [0u8; SLOT_LEN];
        let mut touched: BTreeMap<u32, File> = BTreeMap::new();
        for (_, e) in &found {
            self.slots
                .write_all_at(&zeros, e.slot * SLOT_LEN as u64)
                .map_err(|er| io_err("keyslots", er))?;
            let f = match touched.entry(e.segment) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    let p = seg_path(&self.dir, e.segment);
                    match OpenOptions::new().write(true).open(&p) {
                        Ok(f) => v.insert(f),
                        Err(er) => {
                            tracing::warn!(path = %p.display(), error = %er, "cannot zero frame");
                            continue;
                        }
                    }
                }
            };
            // Keep the frame header (recovery walks headers), zero id onwards.
            let body = e.len as usize - 12;
            let zero = vec![0u8; body];
            if e.offset + u64::from(e.len) <= self.len || e.segment != self.active {
                f.write_all_at(&zero, e.offset + 12)
                    .map_err(|er| io_err("segment", er))?;
            }
        }
        // Only the slot zeroing must be durable before we say "gone": without its data key the
        // ciphertext is noise even if a crash undoes the zeroing, so the segments are not
        // fsynced here (one fsync fewer per forget; the next batch or the OS flushes them).
        self.slots.sync_data().map_err(|e| io_err("keyslots", e))?;
        drop(touched);
        // 2. Unindex.
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut ex = txn.open_table(EXCHANGES).map_err(db_err)?;
            let mut by_user = txn.open_multimap_table(BY_USER).map_err(db_err)?;
            let mut by_time = txn.open_table(BY_TIME).map_err(db_err)?;
            let mut free = txn.open_table(FREE_SLOTS).map_err(db_err)?;
            for (id, e) in &found {
                ex.remove(id.as_bytes()).map_err(db_err)?;
                if let Some(u) = &e.user {
                    by_user.remove(u.as_str(), id.as_bytes()).map_err(db_err)?;
                }
                by_time
                    .remove((millis(e.time), *id.as_bytes()))
                    .map_err(db_err)?;
                free.insert(e.slot, ()).map_err(db_err)?;
            }
            self.put_meta(&txn)?;
        }
        txn.commit().map_err(db_err)?;
        self.free.extend(found.iter().map(|(_, e)| e.slot));
        // 3. Receipts and audit events.
        let now = SystemTime::now();
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
        let rpath = self.dir.join("receipts.jsonl");
        OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&rpath)
            .and_then(|mut f| {
                f.write_all(lines.as_bytes())?;
                f.sync_data()
            })
            .map_err(|e| io_err(rpath.display(), e))?;
        for (id, e) in &found {
            self.audit.emit(&AuditEvent {
                kind,
                request_id: *id,
                user: e.user.clone(),
                time: now,
                actor: actor.to_string(),
                reason: reason.to_string(),
            });
        }
        Ok(out)
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
        if self.len > SEG_HEADER && live_bytes(self.active) + SEG_HEADER < self.len {
            self.roll()?;
            let txn = self.db.begin_write().map_err(db_err)?;
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
            let txn = self.db.begin_write().map_err(db_err)?;
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
        for (id, user) in events {
            self.audit.emit(&AuditEvent {
                kind: AuditKind::Rewrap,
                request_id: id,
                user,
                time: now,
                actor: actor.to_string(),
                reason: format!("rewrap to {}", current.id()),
            });
        }
        Ok(n)
    }
}

#[cfg(test)]
mod pending_tests {
    use super::*;

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
            .store(MAX_PENDING_SEALS, std::sync::atomic::Ordering::SeqCst);
        let ex = crate::seal::tests::openai_chat();
        let err = store.submit(&ex, None).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Busy);
        assert_eq!(
            store
                .inner
                .pending
                .load(std::sync::atomic::Ordering::SeqCst),
            MAX_PENDING_SEALS,
            "a refused job is not counted"
        );
        store
            .inner
            .pending
            .store(0, std::sync::atomic::Ordering::SeqCst);
        store.submit(&ex, None).unwrap().wait().unwrap();
        // The writer drops the job just after acknowledging it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while store
            .inner
            .pending
            .load(std::sync::atomic::Ordering::SeqCst)
            != 0
        {
            assert!(
                std::time::Instant::now() < deadline,
                "a written job no longer counts"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }
}
