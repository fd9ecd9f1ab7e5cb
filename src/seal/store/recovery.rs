//! # Store: open and crash recovery.
//!
//! Owns bringing the files in line with the committed index, at open and after a failed write:
//! loading the index's state (creating the tables on first open), removing segments a roll
//! never committed, cutting a torn tail of the active segment or of `receipts.jsonl`,
//! completing forgets that were receipted but not finished (write-ahead: a receipt is a
//! promise), and forgetting with receipts the entries a truncated segment lost.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use redb::{ReadableDatabase, ReadableTable};

use super::index::{BY_TIME, BY_USER, EXCHANGES, FREE_SLOTS, Index, META, meta_get, tables_exist};
use super::segments::{SEG_HEADER, SEGMENT_MAGIC, create_segment, list_segments, seg_path};
use super::writer::{COMMIT_INTERVAL, Writer};
use super::{db_err, io_err};
use crate::exchange::ExchangeId;
use crate::seal::audit::{AuditEvent, AuditKind, AuditSink};
use crate::seal::envelope;
use crate::seal::health::HealthState;
use crate::seal::{ErrorKind, SealError};

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

/// One line of `receipts.jsonl`, as replayed by recovery (and read by
/// [`SealStore::already_forgotten`](super::SealStore::already_forgotten)).
pub(super) struct Receipt {
    pub(super) id: ExchangeId,
    kind: AuditKind,
    actor: String,
    reason: String,
    pub(super) user: Option<String>,
}

impl Receipt {
    pub(super) fn parse(line: &[u8]) -> Option<Receipt> {
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
    /// Loads the committed index and settles the files (see the module docs).
    pub(super) fn open(
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
            courtesy: crate::os::Courtesy::default(),
        };
        w.settle(l.file_len, l.committed, l.receipts_done, true)?;
        Ok(w)
    }

    /// Reloads everything from the committed index, as at open (after a failed write).
    pub(super) fn reload(&mut self) -> Result<(), SealError> {
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
        let (found, _) = self.lookup(ids.clone())?;
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
        // Every receipted id, not only those still indexed: a forget may have shredded and
        // then failed to erase the ledger. Erasing is idempotent.
        // A ledger that cannot be written (corrupt, newer, locked) must not keep the sealed
        // store from opening: the sealed copies are what recovery guarantees; the ledger
        // failure is logged, and forgetting the ids again completes it.
        if let Err(e) = self.erase_ledger(&ids) {
            tracing::error!(error = %e, exchanges = ids.len(), "recovery: the ledger could not be erased for receipted forgets; run the forget again once the ledger is writable");
        }
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
}
