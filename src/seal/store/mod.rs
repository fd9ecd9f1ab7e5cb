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
//!
//! ## Files of this module, in the order an exchange meets them
//! - `mod.rs`: the [`SealStore`] handle, [`SealOptions`], [`SealStore::open`] and accessors.
//! - `submit.rs`: the caller's side of a seal (encrypt, bound what waits, [`SealAck`]).
//! - `writer.rs`: the writer thread, its commands and the group commit.
//! - `segments.rs`, `keyslots.rs`, `index.rs`: the three kinds of files and the reads of the
//!   index ([`IndexEntry`]).
//! - `unseal.rs`: reading one exchange back.
//! - `forget.rs` (receipts, audit, [`ForgetError`]) and `shred.rs` (destroying and unindexing);
//!   `retention.rs` (purges), `compact.rs`, `rewrap.rs`.
//! - `recovery.rs` (open: load the committed index, settle the files, finish receipted
//!   forgets) and `degraded.rs` (a failed write, retries, recovery without a restart).

mod compact;
mod degraded;
mod forget;
mod index;
mod keyslots;
mod recovery;
mod retention;
mod rewrap;
mod segments;
mod shred;
mod submit;
#[cfg(test)]
mod tests;
mod unseal;
mod writer;

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use super::audit::{AuditSink, JsonlAuditSink};
use super::health::{Health, HealthState, SealHealth, StoreStats};
use super::{ErrorKind, SealError};
use crate::exchange::ExchangeId;
use crate::keys::{KeyId, Keyring};

pub use compact::CompactStats;
pub use degraded::{PROBE_LEN, RETRY_INTERVAL};
pub use forget::{ForgetError, ForgetOutcome};
pub use index::IndexEntry;
pub use segments::DEFAULT_SEGMENT_MAX;
pub use submit::{MAX_PENDING_SEAL_BYTES, MAX_PENDING_SEALS, OnDone, SealAck};

use index::Index;
use writer::{Command, Writer};

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
    /// The registry the store counts in (its `seal` section; [`SealStore::stats`] reads it).
    /// `veil run` hands in the one it gives every step; the default, a fresh one, is for
    /// tests and the offline `veil seal` commands, whose numbers nobody exports.
    pub counters: Arc<crate::counters::Counters>,
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

fn io_err(what: impl std::fmt::Display, e: io::Error) -> SealError {
    SealError::new(ErrorKind::Io, format!("{what}: {e}"))
}

fn db_err(e: impl std::fmt::Display) -> SealError {
    SealError::new(ErrorKind::Io, format!("index: {e}"))
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
        let index = Arc::new(Index::create(dir.join("index.redb"))?);
        let slots = keyslots::open_slots(&dir)?;
        let audit = opts
            .audit
            .clone()
            .unwrap_or_else(|| Arc::new(JsonlAuditSink::new(data.join("audit.jsonl"))));
        let health = Arc::new(HealthState::new(
            opts.recording_health.clone(),
            opts.counters.clone(),
        ));
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

    /// Bytes of the seal jobs queued for the writer and not yet committed (their frames are
    /// about to reach the disk): the disk watch counts them against `disk_reserve`.
    pub fn pending_bytes(&self) -> u64 {
        self.inner.pending_bytes.load(Ordering::Acquire) as u64
    }

    /// Failure and recovery counters (for `/healthz`): a view of the registry's `seal` section.
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
}
