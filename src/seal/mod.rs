//! # Seal: the full exchange, encrypted, under its request ID; unseal, forget, retention.
//!
//! The last step of the flow (`proxy → exchange → {redact → export, seal}`). Reads an
//! [`Exchange`](crate::exchange::Exchange) and nothing else: it never sees rules, records,
//! OTLP or the network (the admin API in [`crate::admin`] and the CLI call into it).
//!
//! - [`envelope`]: the payload format and the two AES-256-GCM layers (data key per exchange,
//!   data key wrapped by the master key's `SealWrap` purpose key).
//! - [`store`]: segments, key slots and the redb index; one writer thread with group commit;
//!   crash recovery; forget (crypto-shredding), retention purge, compaction, rewrap.
//! - [`audit`]: [`AuditEvent`] and the [`AuditSink`] seam
//!   (fallible: an action that cannot be audited is refused).
//! - [`health`]: [`Health`] (ok, or degraded since when and why), the lock-free
//!   [`SealHealth`] handle for admission checks, and [`StoreStats`] counters.
//!
//! The operator commands on the store (`unseal`, `forget`, `purge`, `keys`, `compact`) are in
//! `crate::cli::seal`.
//!
//! See `docs/sealed-store.md` for the on-disk layout and the operator's view.

pub mod audit;
pub mod envelope;
pub mod health;
pub mod store;
#[cfg(test)]
pub(crate) mod tests;

use std::fmt;

pub use audit::{AuditError, AuditEvent, AuditKind, AuditSink, FanoutAuditSink, JsonlAuditSink};
pub use health::{Health, SealHealth, StoreStats};
pub use store::{
    CompactStats, ForgetError, ForgetOutcome, IndexEntry, OnDone, SealAck, SealOptions, SealStore,
};

/// What kind of failure a [`SealError`] is. Callers branch on this, never on the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// No sealed exchange with that ID (never sealed, or forgotten).
    NotFound,
    /// The master key the data was wrapped with is not in the keyring.
    KeyMissing,
    /// A master key with the right id is present but does not unwrap the data key: the keys
    /// dir belongs to another store, or the slot was tampered with.
    WrongKey,
    /// The payload failed AES-GCM authentication: tampered or corrupted. Nothing is returned.
    Authentication,
    /// A file or index entry is damaged (bad magic, short read, bad checksum).
    Corrupt,
    /// The payload could not be encoded or decoded (unknown format version, bad metadata).
    Format,
    /// Another process holds the store (a running `veil run`).
    Locked,
    /// An exchange with that ID is already sealed.
    Duplicate,
    /// The file system or the index failed.
    Io,
    /// The store's writer has stopped.
    Closed,
    /// Too many exchanges already wait for the disk; this one was not sealed.
    Busy,
    /// A write failed earlier and the store has not recovered yet (the disk is still full, or
    /// the index could not be reopened): nothing was written. Retried on its own; see
    /// [`SealStore::health`].
    Degraded,
    /// The audit entry could not be written durably, so the action was refused: `unseal`
    /// returns nothing, `forget` and `purge` destroy nothing.
    Audit,
}

/// An error from the sealed store: a [`kind`](SealError::kind) plus a message for humans
/// (which names the request ID and key ID but never content). Don't match on the wording.
#[derive(Clone, PartialEq, Eq)]
pub struct SealError {
    kind: ErrorKind,
    msg: String,
}

impl SealError {
    pub(crate) fn new(kind: ErrorKind, msg: impl fmt::Display) -> Self {
        SealError {
            kind,
            msg: msg.to_string(),
        }
    }

    pub(crate) fn closed() -> Self {
        SealError::new(ErrorKind::Closed, "sealed store writer has stopped")
    }

    /// The failure class.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// True for [`ErrorKind::NotFound`].
    pub fn is_not_found(&self) -> bool {
        self.kind == ErrorKind::NotFound
    }

    /// True for [`ErrorKind::Locked`].
    pub fn is_locked(&self) -> bool {
        self.kind == ErrorKind::Locked
    }
}

impl fmt::Debug for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SealError({:?}: {})", self.kind, self.msg)
    }
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for SealError {}
