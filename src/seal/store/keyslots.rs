//! # Store: the key slot file (`keyslots`), one wrapped data key per fixed-size slot.
//!
//! Owns the slot file: opening it 0600, reading, writing and zeroing slot `n` at
//! `n * SLOT_LEN`, and allocating slots (free list first). Wrapped keys live here and not in
//! redb because redb is copy-on-write: a deleted value lingers in free pages, while a slot is
//! overwritten in place, so zeroing it (and syncing) really destroys the key. What a slot holds
//! is the envelope's business ([`crate::seal::envelope::wrap_slot`]).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use super::io_err;
use super::writer::Writer;
use crate::seal::SealError;
use crate::seal::envelope::SLOT_LEN;

/// Opens (creating, 0600) `<dir>/keyslots` for reading and writing.
pub(super) fn open_slots(dir: &Path) -> Result<File, SealError> {
    let path = dir.join("keyslots");
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io_err(path.display(), e))
}

/// Reads slot `n`.
pub(super) fn read_slot(slots: &File, n: u64) -> io::Result<[u8; SLOT_LEN]> {
    let mut slot = [0u8; SLOT_LEN];
    slots.read_exact_at(&mut slot, n * SLOT_LEN as u64)?;
    Ok(slot)
}

/// Writes slot `n` (not synced: the caller syncs once per batch).
pub(super) fn write_slot(slots: &File, n: u64, slot: &[u8; SLOT_LEN]) -> io::Result<()> {
    write_slots(slots, n, slot)
}

/// Writes consecutive slots from `first` on, `bytes` being a whole number of slots (not
/// synced: the caller syncs once per batch).
pub(super) fn write_slots(slots: &File, first: u64, bytes: &[u8]) -> io::Result<()> {
    debug_assert_eq!(bytes.len() % SLOT_LEN, 0);
    slots.write_all_at(bytes, first * SLOT_LEN as u64)
}

impl Writer {
    /// A slot for a new data key: a freed one first, else the next never used.
    pub(super) fn alloc_slot(&mut self) -> u64 {
        self.free.pop().unwrap_or_else(|| {
            self.next_slot += 1;
            self.next_slot - 1
        })
    }
}
