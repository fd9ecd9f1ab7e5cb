//! # Store: rewrap after a key rotation.
//!
//! Owns [`SealStore::rewrap`]: every data key not wrapped under the current master key is
//! unwrapped with its old key and wrapped again under the current one, in place in its slot;
//! payloads are untouched. Audited (kind `rewrap`).

use std::time::SystemTime;

use tokio::sync::oneshot;

use super::keyslots::{read_slot, write_slot};
use super::writer::{Command, Writer};
use super::{SealStore, io_err};
use crate::keys::{Keyring, Purpose};
use crate::seal::audit::{AuditEvent, AuditKind};
use crate::seal::envelope;
use crate::seal::{ErrorKind, SealError};

impl SealStore {
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

impl Writer {
    pub(super) fn rewrap(&mut self, ring: &Keyring, actor: &str) -> Result<usize, SealError> {
        let current = ring.current();
        let wrap_new = current.derive(Purpose::SealWrap);
        let mut n = 0;
        let mut events = Vec::new();
        for (id, e) in self.scan()? {
            let slot = read_slot(&self.slots, e.slot).map_err(|er| io_err("keyslots", er))?;
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
            write_slot(&self.slots, e.slot, &new_slot).map_err(|er| io_err("keyslots", er))?;
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
