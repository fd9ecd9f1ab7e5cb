//! # Store: compaction.
//!
//! Owns [`SealStore::compact`] and [`CompactStats`]: live frames move out of segments with
//! dead bytes (left by forgets) into the active segment, the index follows in one commit per
//! segment, and the emptied segment file is deleted. Never compacts the segment being filled.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;

use tokio::sync::oneshot;

use super::index::{EXCHANGES, IndexEntry};
use super::segments::{SEG_HEADER, list_segments, seg_path, sync_dir};
use super::writer::{Command, Writer};
use super::{SealStore, db_err, io_err};
use crate::exchange::ExchangeId;
use crate::seal::SealError;

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

impl SealStore {
    /// Moves live frames out of segments with dead bytes and deletes emptied segments.
    pub fn compact(&self) -> Result<CompactStats, SealError> {
        let (ack, rx) = oneshot::channel();
        self.send(Command::Compact { ack })?;
        rx.blocking_recv().map_err(|_| SealError::closed())?
    }
}

impl Writer {
    pub(super) fn compact(&mut self) -> Result<CompactStats, SealError> {
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
}
