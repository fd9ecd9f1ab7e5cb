//! # Store: retention purges.
//!
//! Owns [`SealStore::purge_before`], [`SealStore::purge`] (forgets in chunks of 1024, with
//! kind `purge` and reason `retention`) and the `veil run` retention loop. What a forget does
//! is `forget.rs`'s business.

use std::time::{Duration, SystemTime};

use super::SealStore;
use super::forget::ForgetError;
use crate::exchange::ExchangeId;
use crate::seal::audit::AuditKind;

impl SealStore {
    /// Purges every exchange that started before `cutoff` (retention), 1024 at a time;
    /// returns the IDs destroyed. On error, [`ForgetError`] lists those destroyed by the
    /// batches before the failure, and every eligible one not destroyed.
    pub fn purge_before(
        &self,
        cutoff: SystemTime,
        actor: &str,
    ) -> Result<Vec<ExchangeId>, ForgetError> {
        let ids = self
            .ids_before(cutoff)
            .map_err(|e| ForgetError::nothing(e, Vec::new()))?;
        let mut destroyed = Vec::new();
        for (i, chunk) in ids.chunks(1024).enumerate() {
            match self.forget_inner(chunk.to_vec(), AuditKind::Purge, actor, "retention") {
                Ok(out) => destroyed.extend(out.into_iter().filter(|o| o.forgotten).map(|o| o.id)),
                Err(mut e) => {
                    destroyed.append(&mut e.destroyed);
                    e.destroyed = destroyed;
                    e.not_destroyed
                        .extend_from_slice(&ids[((i + 1) * 1024).min(ids.len())..]);
                    return Err(e);
                }
            }
        }
        Ok(destroyed)
    }

    /// Purges every exchange older than `older_than` (by its start time); returns the IDs
    /// destroyed. Blocking. Errors as [`SealStore::purge_before`].
    pub fn purge(&self, older_than: Duration, actor: &str) -> Result<Vec<ExchangeId>, ForgetError> {
        let cutoff = SystemTime::now()
            .checked_sub(older_than)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        self.purge_before(cutoff, actor)
    }

    /// The retention loop for `veil run`: every `interval`, purges exchanges older than
    /// `older_than` (on a blocking thread), until `shutdown` resolves. Errors are logged with
    /// what was and was not destroyed, and retried at the next tick; a purge never blocks the
    /// async runtime.
    pub async fn run_retention(
        self,
        older_than: Duration,
        interval: Duration,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let store = self.clone();
            match tokio::task::spawn_blocking(move || store.purge(older_than, "retention")).await {
                Ok(Ok(ids)) if ids.is_empty() => {}
                Ok(Ok(ids)) => tracing::info!(purged = ids.len(), "retention purge"),
                Ok(Err(e)) => tracing::error!(
                    error = %e.error(),
                    destroyed = e.destroyed().len(),
                    pending = e.pending().len(),
                    not_destroyed = e.not_destroyed().len(),
                    "retention purge failed; receipts.jsonl lists what was destroyed"
                ),
                Err(e) => tracing::error!(
                    error = crate::health::task_failure(&e),
                    "retention purge task failed"
                ),
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = &mut shutdown => return,
            }
        }
    }
}
