//! # Store: the redb index (`index.redb`) and every read of it.
//!
//! Owns the table layout (id → [`IndexEntry`]; user → ids; (time, id); free key slots; meta
//! counters), the entry encoding, the swappable [`Index`] handle, and the read-only queries of
//! [`SealStore`] (`entry`, `ids`, `len`, `ids_for_user`, `ids_before`). Writes to the index
//! happen only on the writer thread (`writer.rs`, `shred.rs`, `compact.rs`). Never touches
//! segments or key slots.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{RwLock, RwLockReadGuard};
use std::time::{Duration, SystemTime};

use redb::{
    Database, MultimapTableDefinition, ReadableDatabase, ReadableTable, ReadableTableMetadata,
    TableDefinition,
};

use super::writer::Writer;
use super::{SealStore, db_err, io_err};
use crate::exchange::ExchangeId;
use crate::keys::UserPseudonym;
use crate::seal::{ErrorKind, SealError};

/// redb's page cache for the index, bytes. redb's default is 1 GiB, which it fills as the
/// index grows: veil's RSS grew with the size of the sealed store. The writer appends
/// time-ordered keys (UUIDv7 ids, start times), so the pages it touches are the recent ones;
/// older pages are read back from the OS page cache when a lookup or a forget needs them.
/// The same budget as the ledger's SQLite page cache.
const CACHE_BYTES: usize = 16 << 20;

pub(super) const EXCHANGES: TableDefinition<[u8; 16], &[u8]> = TableDefinition::new("exchanges");
pub(super) const BY_USER: MultimapTableDefinition<&str, [u8; 16]> =
    MultimapTableDefinition::new("by_user");
pub(super) const BY_TIME: TableDefinition<(u64, [u8; 16]), ()> = TableDefinition::new("by_time");
pub(super) const FREE_SLOTS: TableDefinition<u64, ()> = TableDefinition::new("free_slots");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

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
    /// The other pseudonyms the exchange's identity sources named (deduplicated, never
    /// `user`): indexed under `by_user` too, so forgetting any of them finds the exchange.
    pub also: Vec<String>,
}

impl IndexEntry {
    /// Version 1: `1 | segment u32 | offset u64 | len u32 | slot u64 | time ms u64 | user
    /// len u16 | user`. Version 2 (only when [`IndexEntry::also`] is not empty, so a store
    /// written by an older veil reads the same): version 1's fields after a `2`, then `count
    /// u8 | (len u16 | pseudonym)*`.
    pub(super) fn encode(&self) -> Vec<u8> {
        let user = self.user.as_deref().unwrap_or("");
        let mut v = Vec::with_capacity(36 + user.len() + 18 * self.also.len());
        v.push(if self.also.is_empty() { 1u8 } else { 2u8 });
        v.extend_from_slice(&self.segment.to_le_bytes());
        v.extend_from_slice(&self.offset.to_le_bytes());
        v.extend_from_slice(&self.len.to_le_bytes());
        v.extend_from_slice(&self.slot.to_le_bytes());
        v.extend_from_slice(&millis(self.time).to_le_bytes());
        v.extend_from_slice(&(user.len() as u16).to_le_bytes());
        v.extend_from_slice(user.as_bytes());
        if !self.also.is_empty() {
            // Bounded by MAX_IDENTITIES upstream; the cast cannot truncate a real entry.
            let also = &self.also[..self.also.len().min(u8::MAX as usize)];
            v.push(also.len() as u8);
            for a in also {
                v.extend_from_slice(&(a.len() as u16).to_le_bytes());
                v.extend_from_slice(a.as_bytes());
            }
        }
        v
    }

    pub(super) fn decode(b: &[u8]) -> Result<Self, SealError> {
        let bad = || SealError::new(ErrorKind::Corrupt, "index entry is malformed");
        if b.len() < 35 || !matches!(b[0], 1 | 2) {
            return Err(bad());
        }
        let u32at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4"));
        let u64at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8"));
        let text = |at: usize| -> Result<(String, usize), SealError> {
            let len = b.get(at..at + 2).ok_or_else(bad)?;
            let len = u16::from_le_bytes(len.try_into().expect("2")) as usize;
            let s = b.get(at + 2..at + 2 + len).ok_or_else(bad)?;
            let s = std::str::from_utf8(s).map_err(|_| bad())?;
            Ok((s.to_string(), at + 2 + len))
        };
        let (user, mut at) = text(33)?;
        let mut also = Vec::new();
        if b[0] == 2 {
            let n = *b.get(at).ok_or_else(bad)?;
            at += 1;
            for _ in 0..n {
                let (a, next) = text(at)?;
                also.push(a);
                at = next;
            }
        }
        Ok(IndexEntry {
            segment: u32at(1),
            offset: u64at(5),
            len: u32at(13),
            slot: u64at(17),
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(u64at(25)),
            user: (!user.is_empty()).then_some(user),
            also,
        })
    }

    /// Every pseudonym the entry is indexed under in `by_user`: `user`, then `also`.
    pub(super) fn users(&self) -> impl Iterator<Item = &str> {
        self.user.iter().chain(self.also.iter()).map(String::as_str)
    }
}

/// Milliseconds since the Unix epoch (0 before it): the index's time unit.
pub(super) fn millis(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
pub(super) struct Index {
    path: PathBuf,
    db: RwLock<Option<Database>>,
}

/// A read guard on an open index.
pub(super) struct IndexGuard<'a>(RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for IndexGuard<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        self.0
            .as_ref()
            .expect("invariant: Index::get checked the index is open")
    }
}

impl Index {
    /// Opens (creating, 0600) the index at `path`.
    pub(super) fn create(path: PathBuf) -> Result<Self, SealError> {
        // redb would create the file with the umask's mode; make it 0600 first (an empty file
        // is one redb initializes).
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_err(path.display(), e))?;
        Ok(Index {
            db: RwLock::new(Some(Self::open(&path)?)),
            path,
        })
    }

    fn open(path: &Path) -> Result<Database, SealError> {
        Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(|e| match e {
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
    pub(super) fn get(&self) -> Result<IndexGuard<'_>, SealError> {
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
    pub(super) fn is_poisoned(&self) -> bool {
        match self.get() {
            Ok(db) => db.begin_write().is_err(),
            Err(_) => true,
        }
    }

    /// Closes the handle (waiting for readers to finish their transaction) and opens it again.
    pub(super) fn reopen(&self) -> Result<(), SealError> {
        let mut g = self.db.write().unwrap_or_else(|p| p.into_inner());
        drop(g.take());
        *g = Some(Self::open(&self.path)?);
        Ok(())
    }
}

/// The meta counter `key`, if it was ever committed.
pub(super) fn meta_get(db: &Database, key: &str) -> Result<Option<u64>, SealError> {
    let txn = db.begin_read().map_err(db_err)?;
    let t = txn.open_table(META).map_err(db_err)?;
    Ok(t.get(key).map_err(db_err)?.map(|v| v.value()))
}

/// True when every table exists (any store that committed once): then opening needs no write,
/// so a store on a full disk still opens, and reads, unseals and a purge that reports "nothing
/// destroyed" still work.
pub(super) fn tables_exist(db: &Database) -> bool {
    let Ok(txn) = db.begin_read() else {
        return false;
    };
    txn.open_table(EXCHANGES).is_ok()
        && txn.open_multimap_table(BY_USER).is_ok()
        && txn.open_table(BY_TIME).is_ok()
        && txn.open_table(FREE_SLOTS).is_ok()
        && txn.open_table(META).is_ok()
}

impl SealStore {
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
    pub fn ids_for_user(&self, user: &UserPseudonym) -> Result<Vec<ExchangeId>, SealError> {
        let doomed = self.doomed();
        let db = self.inner.index.get()?;
        let txn = db.begin_read().map_err(db_err)?;
        let t = txn.open_multimap_table(BY_USER).map_err(db_err)?;
        let mut out = Vec::new();
        for v in t.get(user.as_str()).map_err(db_err)? {
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
}

impl Writer {
    /// Every entry of the index, in ID order.
    pub(super) fn scan(&self) -> Result<Vec<(ExchangeId, IndexEntry)>, SealError> {
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
}
