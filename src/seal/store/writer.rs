//! # Store: the writer thread, its commands and the group commit.
//!
//! Owns the one thread that changes files under `<data>/sealed/`: the [`Command`] queue
//! (seals, forgets, compactions, rewraps), the [`Writer`] state, and the group commit (take
//! what is queued, append frames, write slots, fsync, commit the index, then resolve acks).
//! Operator commands share the thread, so they never race a write. What each command does
//! lives in its own file (`forget.rs`, `compact.rs`, `rewrap.rs`); recovery in `recovery.rs`
//! and `degraded.rs`.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use redb::ReadableDatabase;
use tokio::sync::oneshot;

use super::compact::CompactStats;
use super::degraded::RETRY_INTERVAL;
use super::forget::{ForgetError, ForgetResult};
use super::index::{BY_TIME, BY_USER, EXCHANGES, FREE_SLOTS, Index, IndexEntry, META, millis};
use super::keyslots::write_slots;
use super::segments::SEG_HEADER;
use super::submit::{Done, SealJob, SealedMarks};
use super::{db_err, io_err};
use crate::exchange::ExchangeId;
use crate::keys::Keyring;
use crate::seal::audit::{AuditKind, AuditSink};
use crate::seal::envelope::SLOT_LEN;
use crate::seal::health::HealthState;
use crate::seal::{ErrorKind, SealError};

/// Upper bound of one group commit: keeps a batch's memory and latency bounded under load.
const BATCH_MAX_BYTES: usize = 64 << 20;
const BATCH_MAX_JOBS: usize = 8192;
/// Group commit: at most one commit (3 fsyncs and an index transaction) per interval. A job
/// arriving after a quiet spell commits at once; under load, jobs gather for up to this long,
/// so the per-exchange cost of durability falls as the rate rises. Acks wait at most this
/// much longer; forwarding never waits on them. 10 ms, not the 2 ms it was: a commit's cost
/// is mostly fixed (the `fdatasync`s were half the writer's CPU), and at 2 ms the writer took
/// 25.6 µs per exchange at one connection against 13.1 µs at 10 ms (`benches/load`, same
/// run; 10.4 → 7.4 µs at 8 connections). What it costs: a power cut or kernel crash can lose
/// up to 10 ms more of sealed exchanges (a process crash loses none of what was written;
/// the recording journal counts either loss).
pub(super) const COMMIT_INTERVAL: std::time::Duration = std::time::Duration::from_millis(10);
/// Frames smaller than this are staged and written with one syscall per batch, or per
/// [`STAGE_FLUSH`] bytes of them.
const STAGE_LIMIT: usize = 64 << 10;
/// Staged frames are written whenever this many bytes are staged: one `pwrite` per MiB
/// costs nothing measurable, and the stage, whose room is kept between batches, stays about
/// this large instead of growing to the largest batch it ever held (up to [`BATCH_MAX_BYTES`],
/// for the process's life: a batch of 4,096 seals of ~4 KB is 16 MB).
pub(super) const STAGE_FLUSH: usize = 1 << 20;

/// What the writer thread is asked to do, in arrival order.
pub(super) enum Command {
    /// Boxed: the job is by far the largest command, and the channel's slots are as large as
    /// the largest.
    Seal(Box<SealJob>),
    Forget {
        ids: Vec<ExchangeId>,
        kind: AuditKind,
        actor: String,
        reason: String,
        ack: oneshot::Sender<ForgetResult>,
    },
    Compact {
        ack: oneshot::Sender<Result<CompactStats, SealError>>,
    },
    Rewrap {
        keyring: Arc<Keyring>,
        actor: String,
        ack: oneshot::Sender<Result<usize, SealError>>,
    },
}

/// The writer thread's state. Everything here is trusted only while the store is healthy:
/// after a failed write, recovery reloads it from the committed index.
pub(super) struct Writer {
    pub(super) dir: PathBuf,
    pub(super) index: Arc<Index>,
    pub(super) slots: File,
    pub(super) audit: Arc<dyn AuditSink>,
    pub(super) segment_max: u64,
    /// The segment being appended to, its file, and its length as far as this writer knows
    /// (the committed length at load; grows with each batch). Reloaded by every recovery.
    pub(super) active: u32,
    pub(super) seg: File,
    pub(super) len: u64,
    pub(super) next_slot: u64,
    pub(super) free: Vec<u64>,
    pub(super) stage: Vec<u8>,
    /// `receipts.jsonl`, open for appending; its length (everything before is whole, fsynced
    /// lines); the committed checkpoint (`receipts_done` in the index: every receipt before
    /// it is completed); and how far this process has emitted the receipts' audit events.
    pub(super) receipts: File,
    pub(super) receipts_len: u64,
    pub(super) receipts_done: u64,
    pub(super) audited_upto: u64,
    /// Set when a failed receipts append could not be cut back: recovery cuts it first.
    pub(super) receipts_rollback: Option<u64>,
    /// When the last seal batch was committed (paces group commit).
    pub(super) last_commit: Instant,
    /// When recovery was last attempted, and how many attempts failed in a row (for logs).
    pub(super) last_attempt: Instant,
    pub(super) failed_attempts: u64,
    /// Shared with [`Inner::health`].
    pub(super) health: Arc<HealthState>,
    /// Shared with [`Inner::doomed`].
    pub(super) doomed: Arc<Mutex<HashSet<ExchangeId>>>,
    /// Offers the core between a batch's exchanges ([`crate::os::Courtesy`]).
    pub(super) courtesy: crate::os::Courtesy,
}

impl Writer {
    pub(super) fn run(mut self, rx: mpsc::Receiver<Command>) {
        let mut next: Option<Command> = None;
        loop {
            let cmd = match next.take() {
                Some(c) => c,
                None if self.health.is_ok() => match self.courtesy.next(|block| {
                    if block {
                        rx.recv().ok()
                    } else {
                        rx.try_recv().ok()
                    }
                }) {
                    Some(c) => c,
                    None => break,
                },
                // Degraded: wake up on our own to retry, so the store recovers (and `/healthz`
                // says so) once space returns even when no command arrives.
                None => match rx.recv_timeout(RETRY_INTERVAL) {
                    Ok(c) => c,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        self.maybe_recover(false);
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                },
            };
            match cmd {
                Command::Seal(job) => {
                    let mut bytes = job.frame.len();
                    let mut batch = vec![*job];
                    // Under load, let the batch fill until the commit interval since the last
                    // commit has passed; after a quiet spell, commit at once.
                    let since = self.last_commit.elapsed();
                    if since < COMMIT_INTERVAL {
                        std::thread::sleep(COMMIT_INTERVAL - since);
                        // A batch within the interval: this thread keeps up (`os::Courtesy`).
                        self.courtesy.rested();
                    }
                    while bytes < BATCH_MAX_BYTES && batch.len() < BATCH_MAX_JOBS {
                        match rx.try_recv() {
                            Ok(Command::Seal(j)) => {
                                bytes += j.frame.len();
                                batch.push(*j);
                            }
                            Ok(other) => {
                                next = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    if !self.health.is_ok() {
                        self.maybe_recover(false);
                    }
                    if self.health.is_ok() {
                        self.commit_batch(batch);
                    } else {
                        self.refuse_batch(batch);
                    }
                    self.last_commit = Instant::now();
                }
                Command::Forget {
                    ids,
                    kind,
                    actor,
                    reason,
                    ack,
                } => {
                    let r = match self.ready() {
                        Ok(()) => self.forget(ids, kind, &actor, &reason),
                        Err(e) => Err(ForgetError::nothing(e, ids)),
                    };
                    let _ = ack.send(r);
                }
                Command::Compact { ack } => {
                    let r = self.ready().and_then(|()| {
                        let r = self.compact();
                        self.fail_if_io(r.as_ref().err());
                        r
                    });
                    let _ = ack.send(r);
                }
                Command::Rewrap {
                    keyring,
                    actor,
                    ack,
                } => {
                    let r = self.ready().and_then(|()| {
                        let r = self.rewrap(&keyring, &actor);
                        self.fail_if_io(r.as_ref().err());
                        r
                    });
                    let _ = ack.send(r);
                }
            }
        }
    }
    fn commit_batch(&mut self, batch: Vec<SealJob>) {
        let jobs = batch.len();
        let mut acks = Vec::with_capacity(batch.len());
        let result = self.write_batch(batch, &mut acks);
        // Every job of the batch has its outcome now (committed, duplicate or failed): off
        // the gauge before anyone is told, so a caller that waited sees it already down.
        self.health.counters.seal.pending.sub(jobs as u64);
        if let Err(e) = &result {
            // Nothing of this batch is indexed. Degrade: the in-memory segment length, slot
            // allocation and free list may be ahead of the index, so recovery reloads them
            // and cuts whatever the batch wrote past the committed length.
            self.fail(e);
            // Jobs the failing write never reached were dropped inside it: count them too.
            let unreached = jobs.saturating_sub(acks.len()) as u64;
            self.health.counters.seal.detached_failures.add(unreached);
        }
        let mut logged = false;
        let mut marks = SealedMarks::default();
        for (id, ack, done, r) in acks {
            if let (Some(done), Ok(()), Ok(())) = (done, &r, &result) {
                done.durable(&mut marks);
            }
            let r = match (&result, r) {
                (_, Err(e)) => Err(e),
                (Err(e), Ok(())) => Err(e.clone()),
                (Ok(()), Ok(())) => Ok(()),
            };
            match (ack, r) {
                (Some(ack), r) => {
                    let _ = ack.send(r);
                }
                (None, Err(e)) => {
                    let n = self.health.counters.seal.detached_failures.inc();
                    // One line per failed batch: a full disk fails every exchange of it.
                    if !logged {
                        logged = true;
                        tracing::error!(exchange.id = %id, error = %e, failed_total = n, "sealing failed");
                    }
                }
                (None, Ok(())) => {}
            }
        }
        marks.write();
    }

    #[allow(clippy::type_complexity)]
    fn write_batch(
        &mut self,
        batch: Vec<SealJob>,
        acks: &mut Vec<(
            ExchangeId,
            Option<oneshot::Sender<Result<(), SealError>>>,
            Option<Done>,
            Result<(), SealError>,
        )>,
    ) -> Result<(), SealError> {
        let index = self.index.clone();
        let db = index.get()?;
        let existing = {
            let txn = db.begin_read().map_err(db_err)?;
            let t = txn.open_table(EXCHANGES).map_err(db_err)?;
            let mut s = HashSet::new();
            for j in &batch {
                if t.get(j.id.as_bytes()).map_err(db_err)?.is_some() {
                    s.insert(j.id);
                }
            }
            s
        };
        let mut seen = HashSet::new();
        let mut entries = Vec::with_capacity(batch.len());
        let mut reused = Vec::new();
        let mut stage_at = self.len;
        // Key slots are written in runs: new slots come in order, so a batch's slots usually
        // go in one `pwrite` instead of one each (a tenth of this thread's CPU under load).
        let mut slots = SlotRun::default();
        // Each job's share of the pending bytes (what the disk watch counts as still to be
        // written) and its queue place, until its frame is in the segment file, not only in
        // `stage` (up to `STAGE_FLUSH` bytes of small frames are staged before one write).
        let mut unwritten = Vec::with_capacity(batch.len());
        for job in batch {
            self.courtesy.offer();
            if existing.contains(&job.id) || !seen.insert(job.id) {
                let e = SealError::new(ErrorKind::Duplicate, format!("{}: already sealed", job.id));
                acks.push((job.id, job.ack, job.done, Err(e)));
                continue;
            }
            let flen = job.frame.len() as u64;
            if self.len > SEG_HEADER && self.len + flen > self.segment_max {
                self.flush_stage(stage_at)?;
                self.roll()?;
                stage_at = self.len;
            }
            let offset = self.len;
            if job.frame.len() < STAGE_LIMIT {
                self.stage.extend_from_slice(&job.frame);
                if self.stage.len() >= STAGE_FLUSH {
                    self.flush_stage(stage_at)?;
                }
            } else {
                self.flush_stage(stage_at)?;
                self.seg
                    .write_all_at(&job.frame, offset)
                    .map_err(|e| io_err(self.seg_name().display(), e))?;
                stage_at = offset + flen;
            }
            self.len += flen;
            if self.stage.is_empty() {
                stage_at = self.len;
            }
            let from_free = !self.free.is_empty();
            let slot = self.alloc_slot();
            if from_free {
                reused.push(slot);
            }
            slots
                .push(&self.slots, slot, &job.slot)
                .map_err(|e| io_err("keyslots", e))?;
            let mut users = job.users.into_iter();
            entries.push((
                job.id,
                IndexEntry {
                    segment: self.active,
                    offset,
                    len: flen as u32,
                    slot,
                    time: job.time,
                    user: users.next(),
                    also: users.collect(),
                },
            ));
            acks.push((job.id, job.ack, job.done, Ok(())));
            unwritten.push((job._pending, job._in_flight));
        }
        #[cfg(test)]
        tests::pause_before_write(&self.dir);
        self.flush_stage(stage_at)?;
        drop(unwritten);
        slots
            .flush(&self.slots)
            .map_err(|e| io_err("keyslots", e))?;
        if entries.is_empty() {
            return Ok(());
        }
        self.seg
            .sync_data()
            .map_err(|e| io_err(self.seg_name().display(), e))?;
        self.slots.sync_data().map_err(|e| io_err("keyslots", e))?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            let mut ex = txn.open_table(EXCHANGES).map_err(db_err)?;
            let mut by_user = txn.open_multimap_table(BY_USER).map_err(db_err)?;
            let mut by_time = txn.open_table(BY_TIME).map_err(db_err)?;
            let mut free = txn.open_table(FREE_SLOTS).map_err(db_err)?;
            for (id, e) in &entries {
                self.courtesy.offer();
                ex.insert(id.as_bytes(), e.encode().as_slice())
                    .map_err(db_err)?;
                for u in e.users() {
                    by_user.insert(u, id.as_bytes()).map_err(db_err)?;
                }
                by_time
                    .insert((millis(e.time), *id.as_bytes()), ())
                    .map_err(db_err)?;
            }
            for s in &reused {
                free.remove(s).map_err(db_err)?;
            }
            self.put_meta(&txn)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(())
    }

    /// Writes the meta counters (active segment, committed length, next slot, receipts
    /// checkpoint) into `txn`.
    pub(super) fn put_meta(&self, txn: &redb::WriteTransaction) -> Result<(), SealError> {
        let mut meta = txn.open_table(META).map_err(db_err)?;
        meta.insert("active_segment", u64::from(self.active))
            .map_err(db_err)?;
        meta.insert("committed_len", self.len).map_err(db_err)?;
        meta.insert("next_slot", self.next_slot).map_err(db_err)?;
        meta.insert("receipts_done", self.receipts_done)
            .map_err(db_err)?;
        Ok(())
    }
}

/// Consecutive key slots waiting to be written with one `pwrite` ([`write_slots`]).
#[derive(Default)]
struct SlotRun {
    first: u64,
    bytes: Vec<u8>,
}

impl SlotRun {
    /// Adds slot `n`; writes the run so far first when `n` does not follow it.
    fn push(&mut self, file: &std::fs::File, n: u64, slot: &[u8; SLOT_LEN]) -> std::io::Result<()> {
        if !self.bytes.is_empty() && n != self.first + (self.bytes.len() / SLOT_LEN) as u64 {
            self.flush(file)?;
        }
        if self.bytes.is_empty() {
            self.first = n;
        }
        self.bytes.extend_from_slice(slot);
        Ok(())
    }

    /// Writes the run (not synced: the caller syncs once per batch) and starts a new one.
    fn flush(&mut self, file: &std::fs::File) -> std::io::Result<()> {
        if !self.bytes.is_empty() {
            write_slots(file, self.first, &self.bytes)?;
            self.bytes.clear();
        }
        Ok(())
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;
    use std::sync::mpsc::Receiver;

    /// A store directory whose writer waits, after staging a batch's frames and before writing
    /// them, until the receiver yields (or is dropped). Keyed by directory so that the other
    /// tests' writers, running in parallel, never wait.
    pub(crate) static PAUSE_BEFORE_WRITE: Mutex<Option<(PathBuf, Receiver<()>)>> = Mutex::new(None);

    pub(super) fn pause_before_write(dir: &Path) {
        let mut pause = PAUSE_BEFORE_WRITE.lock().unwrap();
        if pause.as_ref().is_some_and(|(d, _)| d == dir)
            && let Some((_, rx)) = pause.take()
        {
            drop(pause);
            let _ = rx.recv_timeout(std::time::Duration::from_secs(10));
        }
    }
}
