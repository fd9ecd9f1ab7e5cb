//! # Store: forget (crypto-shredding) with write-ahead receipts.
//!
//! Owns [`SealStore::forget`] and [`SealStore::forget_user`], their results
//! ([`ForgetOutcome`], [`ForgetError`] with what was and was not destroyed), and the writer's
//! forget in order: 1. receipts appended and fsynced, 2. audit events written durably, then
//! 3. shred and 4. unindex (`shred.rs`). "No receipt" means "nothing destroyed"; a receipt past
//! the checkpoint is a promise that recovery keeps.

use std::collections::HashSet;
use std::time::SystemTime;

use redb::ReadableDatabase;
use tokio::sync::oneshot;

use super::index::{EXCHANGES, IndexEntry};
use super::writer::{Command, Writer};
use super::{SealStore, db_err, io_err};
use crate::exchange::ExchangeId;
use crate::keys::UserPseudonym;
use crate::seal::audit::{AuditEvent, AuditKind, rfc3339};
use crate::seal::{ErrorKind, SealError};

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
    pub(super) error: SealError,
    pub(super) destroyed: Vec<ExchangeId>,
    pub(super) pending: Vec<ExchangeId>,
    pub(super) not_destroyed: Vec<ExchangeId>,
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

pub(super) type ForgetResult = Result<Vec<ForgetOutcome>, ForgetError>;

impl SealStore {
    /// Sends one forget to the writer and waits for its answer (blocking).
    pub(super) fn forget_inner(
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
        user: &UserPseudonym,
        actor: &str,
        reason: &str,
    ) -> Result<Vec<ExchangeId>, ForgetError> {
        let ids = self
            .ids_for_user(user)
            .map_err(|e| ForgetError::nothing(e, Vec::new()))?;
        let out = self.forget_inner(ids, AuditKind::Forget, actor, reason)?;
        // Ledger rows of this user that were never sealed (sealing failed or was dropped).
        let ledger = ledger_path(self.dir());
        crate::ledger::erase::forget_user(&ledger, user).map_err(|e| {
            ForgetError::nothing(
                SealError::new(
                    ErrorKind::Io,
                    format!("{e}; the sealed exchanges of {user} are destroyed, forget again to finish the ledger"),
                ),
                Vec::new(),
            )
        })?;
        Ok(out
            .into_iter()
            .filter(|o| o.forgotten)
            .map(|o| o.id)
            .collect())
    }
}

impl SealStore {
    /// Which of `ids` were forgotten (or purged) before: those `receipts.jsonl` names. The
    /// receipts are append-only and never rotated, so this answers for every forget this
    /// store ever made; an ID in neither the index nor the receipts was never sealed here.
    /// Blocking (reads the whole receipts file, one line per forgotten exchange).
    ///
    /// # Errors
    /// [`ErrorKind::Io`] when the receipts file cannot be read.
    pub fn already_forgotten(&self, ids: &[ExchangeId]) -> Result<Vec<ExchangeId>, SealError> {
        let asked: HashSet<ExchangeId> = ids.iter().copied().collect();
        let mut found = HashSet::new();
        self.each_receipt(|r| {
            if asked.contains(&r.id) {
                found.insert(r.id);
            }
        })?;
        Ok(ids
            .iter()
            .copied()
            .filter(|id| found.contains(id))
            .collect())
    }

    /// True when user `user` was forgotten before: a receipt names it as an exchange's user,
    /// or the ledger next to the store still holds the tombstone of an erase by that user
    /// (kept [`TOMBSTONE_TTL`](crate::ledger::erase::TOMBSTONE_TTL); the only trace of a
    /// user named by an identity source that did not win). Blocking.
    ///
    /// # Errors
    /// [`ErrorKind::Io`] when the receipts file or the ledger cannot be read.
    pub fn user_already_forgotten(&self, user: &UserPseudonym) -> Result<bool, SealError> {
        let mut seen = false;
        self.each_receipt(|r| seen |= r.user.as_deref() == Some(user.as_str()))?;
        if seen {
            return Ok(true);
        }
        crate::ledger::erase::user_tombstoned(&ledger_path(self.dir()), user)
            .map_err(|e| SealError::new(ErrorKind::Io, e.to_string()))
    }

    fn each_receipt(&self, mut f: impl FnMut(super::recovery::Receipt)) -> Result<(), SealError> {
        let path = self.dir().join("receipts.jsonl");
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err(path.display(), e)),
        };
        // A line being appended right now may be torn: it does not parse and is skipped.
        for line in bytes.split(|&b| b == b'\n') {
            if let Some(r) = super::recovery::Receipt::parse(line) {
                f(r);
            }
        }
        Ok(())
    }
}

/// The ledger next to the store: `<data>/ledger.db` for the store in `<data>/sealed`.
fn ledger_path(sealed: &std::path::Path) -> std::path::PathBuf {
    sealed
        .parent()
        .unwrap_or(sealed)
        .join(crate::ledger::FILE_NAME)
}

impl Writer {
    /// Erases `ids` from the SQLite ledger next to the store (a no-op without one): the
    /// content rows go, the pseudonyms are cleared, the WAL is wiped (see
    /// [`crate::ledger::erase`]). Idempotent, so recovery may repeat it.
    pub(super) fn erase_ledger(&self, ids: &[ExchangeId]) -> Result<(), SealError> {
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        let path = ledger_path(&self.dir);
        match crate::ledger::erase::forget_ids(&path, &ids) {
            Ok(e) => {
                // Erasing is idempotent and gets repeated (recovery does it again, and one
                // forget was seen logging it three times): only an erase that found
                // something is worth an info line; the repeats go to debug.
                if !e.no_ledger && (e.rows > 0 || e.content > 0) {
                    tracing::info!(
                        rows = e.rows,
                        content = e.content,
                        wal_wiped = e.wal_wiped,
                        "forget: erased from the ledger"
                    );
                } else if !e.no_ledger {
                    tracing::debug!(
                        rows = e.rows,
                        content = e.content,
                        wal_wiped = e.wal_wiped,
                        "forget: erased from the ledger"
                    );
                }
                Ok(())
            }
            Err(e) => Err(SealError::new(
                ErrorKind::Io,
                format!(
                    "{e}; the sealed copies are destroyed, the ledger rows not yet: forget again (or restart veil) to finish"
                ),
            )),
        }
    }

    /// Which of `ids` the index holds (each once), and the outcome per asked ID.
    #[allow(clippy::type_complexity)]
    pub(super) fn lookup(
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

    /// Steps 1 to 4 of a forget (see the module docs) for the `ids` the index holds.
    pub(super) fn forget(
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
            // None is sealed (sealing failed or was dropped), but the ledger may still hold
            // them: erase there too. Idempotent; unknown ids are ignored.
            self.erase_ledger(&ids)
                .map_err(|e| ForgetError::nothing(e, Vec::new()))?;
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

        // 3b. The same exchanges in the ledger: content deleted, pseudonym cleared, WAL wiped.
        // On failure the receipts stay past the checkpoint, so forgetting again (or the next
        // open) completes it; the sealed copies are already destroyed.
        if let Err(e) = self.erase_ledger(&found_ids) {
            return Err(ForgetError {
                error: e,
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
}
