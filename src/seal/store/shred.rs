//! # Store: destroying forgotten exchanges and removing them from the index.
//!
//! Steps 3 and 4 of a forget (`forget.rs` writes the receipts and audit events first): zero
//! the key slots and fsync them (that is the destruction), zero the ciphertext best-effort,
//! then remove the index entries, free the slots and advance the receipts checkpoint in one
//! commit. Also used by recovery to complete receipted forgets.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;

use super::index::{BY_TIME, BY_USER, EXCHANGES, FREE_SLOTS, IndexEntry, millis};
use super::keyslots::write_slot;
use super::segments::seg_path;
use super::writer::Writer;
use super::{db_err, io_err};
use crate::exchange::ExchangeId;
use crate::seal::SealError;
use crate::seal::envelope::SLOT_LEN;

impl Writer {
    /// Zeroes the wrapped keys (and fsyncs them: that is the destruction) and, best-effort,
    /// the ciphertext.
    pub(super) fn shred(&mut self, found: &[(ExchangeId, IndexEntry)]) -> Result<(), SealError> {
        if found.is_empty() {
            return Ok(());
        }
        let zeros = [0u8; SLOT_LEN];
        for (_, e) in found {
            write_slot(&self.slots, e.slot, &zeros).map_err(|er| io_err("keyslots", er))?;
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
    pub(super) fn unindex(
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
                for u in e.users() {
                    by_user.remove(u, id.as_bytes()).map_err(db_err)?;
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
}
