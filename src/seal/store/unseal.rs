//! # Store: reading one sealed exchange back (audited).
//!
//! Owns [`SealStore::unseal`]: find the entry, read the key slot and the frame, unwrap and
//! decrypt, tell a race with a forget or a compaction from real damage, and refuse to return
//! plaintext whose reading could not be audited. Never writes anything but the audit event.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::SystemTime;

use super::index::IndexEntry;
use super::keyslots::read_slot;
use super::segments::seg_path;
use super::{SealStore, io_err};
use crate::exchange::{Exchange, ExchangeId};
use crate::keys::Purpose;
use crate::seal::audit::{AuditEvent, AuditKind};
use crate::seal::envelope;
use crate::seal::{ErrorKind, SealError};

/// Most reads of one unseal: each retry follows an observed change (the frame was moved by a
/// compaction between reading the index and the file), so three moves in a row is already
/// pathological.
const UNSEAL_ATTEMPTS: usize = 4;

fn not_found(id: ExchangeId) -> SealError {
    SealError::new(
        ErrorKind::NotFound,
        format!("{id}: no sealed exchange with this id (never sealed, or forgotten)"),
    )
}

impl SealStore {
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
        let slot = read_slot(&self.inner.slots, entry.slot).map_err(|e| {
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
}
