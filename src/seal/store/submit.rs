//! # Store: the caller's side of a seal.
//!
//! Owns what happens on the caller's thread before the writer sees an exchange: the pseudonym
//! check on `user`, the refusal while degraded, the bounds on what may wait for the disk
//! ([`MAX_PENDING_SEALS`], [`MAX_PENDING_SEAL_BYTES`]), encryption into a frame and a wrapped
//! key slot, and the [`SealAck`] / [`OnDone`] that report durability. Never does I/O.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use tokio::sync::oneshot;

use super::SealStore;
use super::degraded::degraded_error;
use super::writer::Command;
use crate::exchange::queue::InFlight;
use crate::exchange::{Exchange, ExchangeId};
use crate::journal::{Journal, Slot};
use crate::keys::Purpose;
use crate::keys::UserPseudonym;
use crate::seal::envelope::{self, SLOT_LEN};
use crate::seal::{ErrorKind, SealError};

/// Resolves once a sealed exchange is durable (segment and key slot fsynced, index committed).
#[derive(Debug)]
pub struct SealAck {
    id: ExchangeId,
    rx: oneshot::Receiver<Result<(), SealError>>,
}

impl SealAck {
    /// The request ID being sealed.
    pub fn id(&self) -> ExchangeId {
        self.id
    }

    /// Waits (async) until the exchange is durable.
    pub async fn durable(self) -> Result<ExchangeId, SealError> {
        match self.rx.await {
            Ok(r) => r.map(|()| self.id),
            Err(_) => Err(SealError::closed()),
        }
    }

    /// Waits (blocking the thread; not inside an async runtime) until the exchange is durable.
    pub fn wait(self) -> Result<ExchangeId, SealError> {
        match self.rx.blocking_recv() {
            Ok(r) => r.map(|()| self.id),
            Err(_) => Err(SealError::closed()),
        }
    }
}

pub(super) struct SealJob {
    /// Counts this job as in flight until it is dropped: once its frame is written to the
    /// segment file (the writer keeps it past staging), failed or discarded.
    pub(super) _pending: PendingGuard,
    /// The exchange's place in the recording queue's bounds, held as long as `_pending`
    /// (empty for callers outside the pipeline).
    pub(super) _in_flight: InFlight,
    pub(super) id: ExchangeId,
    pub(super) frame: Vec<u8>,
    pub(super) slot: [u8; SLOT_LEN],
    pub(super) time: SystemTime,
    /// The exchange's pseudonyms, deduplicated, its user first (see
    /// [`IndexEntry::also`](super::index::IndexEntry)). One `Vec` rather than the user and
    /// the others apart: the job stays as small as before (it travels in an enum).
    pub(super) users: Vec<String>,
    /// Who waits for durability; `None` when detached (failures are counted by the writer).
    pub(super) ack: Option<oneshot::Sender<Result<(), SealError>>>,
    /// Told whether the exchange became durable (detached callers that need to know).
    pub(super) done: Option<Done>,
}

/// Who is told once whether a detached seal became durable: yes after its commit, no when
/// it failed or was dropped unwritten (refused while degraded, cut off by a failing batch,
/// left in the queue at shutdown), so the caller never waits forever.
pub enum OnDone {
    /// A callback, called with `true` or `false`.
    Call(Box<dyn FnOnce(bool) + Send>),
    /// The exchange's recording journal slot: marked sealed once durable, with the rest of
    /// its group commit in one write per run of slots ([`Journal::sealed_all`]), or dropped.
    Journal(Arc<Journal>, Slot),
}

impl std::fmt::Debug for OnDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OnDone::Call(_) => f.write_str("OnDone::Call"),
            OnDone::Journal(_, s) => f.debug_tuple("OnDone::Journal").field(s).finish(),
        }
    }
}

impl OnDone {
    /// Tells it `false`.
    fn failed(self) {
        match self {
            OnDone::Call(f) => f(false),
            OnDone::Journal(j, s) => j.dropped(s),
        }
    }
}

/// Tells its [`OnDone`] exactly once: durable through [`Done::durable`], failed when dropped.
pub(super) struct Done(Option<OnDone>);

impl Done {
    /// Durable: a callback is called now; a journal slot joins `marks`, written once the
    /// whole group is told ([`SealedMarks::write`]).
    pub(super) fn durable(mut self, marks: &mut SealedMarks) {
        match self.0.take() {
            Some(OnDone::Call(f)) => f(true),
            Some(OnDone::Journal(j, s)) => marks.push(j, s),
            None => {}
        }
    }
}

impl Drop for Done {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            d.failed();
        }
    }
}

/// The journal slots a group commit made durable, by journal (there is one per running
/// veil; a test may seal into another).
#[derive(Default)]
pub(super) struct SealedMarks(Vec<(Arc<Journal>, Vec<Slot>)>);

impl SealedMarks {
    fn push(&mut self, journal: Arc<Journal>, slot: Slot) {
        match self.0.iter_mut().find(|(j, _)| Arc::ptr_eq(j, &journal)) {
            Some((_, slots)) => slots.push(slot),
            None => self.0.push((journal, vec![slot])),
        }
    }

    /// Marks every slot sealed: one `pwrite` per run of consecutive slots.
    pub(super) fn write(self) {
        for (journal, slots) in self.0 {
            journal.sealed_all(&slots);
        }
    }
}

/// Most seal jobs queued for the writer at once. The queue itself is unbounded (operator
/// commands must never be refused), so this is what bounds its memory: past it, `submit`
/// refuses with [`ErrorKind::Busy`] and the caller counts a lost seal instead of the process
/// growing without limit while the disk lags.
pub const MAX_PENDING_SEALS: usize = 4096;

/// Most bytes of sealed frames queued for the writer at once (a count alone let forty 20 MB
/// exchanges wait in memory while the disk caught up). A lone frame larger than this is still
/// taken when nothing else waits.
pub const MAX_PENDING_SEAL_BYTES: usize = 256 << 20;

/// Gives back a seal job's place (one job, its bytes) when it goes away.
pub(super) struct PendingGuard {
    jobs: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
    len: usize,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.jobs.fetch_sub(1, Ordering::AcqRel);
        self.bytes.fetch_sub(self.len, Ordering::AcqRel);
    }
}

impl SealStore {
    /// Seals `exchange` (encrypting on this thread) and queues it for the writer. Never
    /// blocks on I/O; the returned [`SealAck`] resolves once the exchange is durable.
    ///
    /// `user` is a [`UserPseudonym`] (`u_` + 16 hex), never a raw user ID: the index is not
    /// encrypted, and the type guarantees the ID went through the keyed hash. At most
    /// [`MAX_PENDING_SEALS`] jobs and [`MAX_PENDING_SEAL_BYTES`] of frames wait for the
    /// writer; past either this fails with
    /// [`ErrorKind::Busy`] instead of queueing without bound. While the store is degraded
    /// (a write failed and it has not recovered) this fails at once with
    /// [`ErrorKind::Degraded`], before encrypting anything.
    pub fn submit(
        &self,
        exchange: &Exchange,
        user: Option<&UserPseudonym>,
    ) -> Result<SealAck, SealError> {
        let (ack, rx) = oneshot::channel();
        self.enqueue(
            exchange,
            user.into_iter(),
            Some(ack),
            None,
            InFlight::default(),
        )?;
        Ok(SealAck {
            id: exchange.id,
            rx,
        })
    }

    /// [`SealStore::submit`] with nobody waiting: for the pipeline, which must not park a task
    /// per exchange on the forwarding runtime just to count failures. A failure after queueing
    /// is logged by the writer and counted in [`SealStore::detached_failures`].
    pub fn submit_detached(
        &self,
        exchange: &Exchange,
        user: Option<&UserPseudonym>,
    ) -> Result<(), SealError> {
        self.enqueue(exchange, user.into_iter(), None, None, InFlight::default())
    }

    /// [`SealStore::submit_detached`] that calls `on_done` once the outcome is known: `true`
    /// when the exchange is durable, `false` when it will never be (see [`OnDone`]). When this
    /// returns an error, `on_done` is not called (the caller has the error in hand), except
    /// for [`ErrorKind::Closed`], where the job was built and dropped: it says `false` too.
    pub fn submit_detached_then(
        &self,
        exchange: &Exchange,
        user: Option<&UserPseudonym>,
        on_done: OnDone,
    ) -> Result<(), SealError> {
        self.enqueue(
            exchange,
            user.into_iter(),
            None,
            Some(on_done),
            InFlight::default(),
        )
    }

    /// [`SealStore::submit_detached_then`] for an exchange whose identity sources named
    /// several users ([`Record::user_pseudonyms`](crate::record::Record::user_pseudonyms)):
    /// the first is the exchange's user, and every one of them indexes it, so
    /// [`SealStore::forget_user`] finds it by any (veil#13). With `on_done` `None` nobody is
    /// told (a veil without a recording journal). The job holds `in_flight` (the exchange's
    /// place in the recording queue's bounds, [`Queued::in_flight`]) until its frame is
    /// written to the segment file (or failed), so the queue's bounds cover the frames waiting
    /// for the disk.
    ///
    /// [`Queued::in_flight`]: crate::exchange::queue::Queued::in_flight
    pub fn submit_detached_users(
        &self,
        exchange: &Exchange,
        users: &[UserPseudonym],
        on_done: Option<OnDone>,
        in_flight: InFlight,
    ) -> Result<(), SealError> {
        self.enqueue(exchange, users.iter(), None, on_done, in_flight)
    }

    fn enqueue<'u>(
        &self,
        exchange: &Exchange,
        users: impl Iterator<Item = &'u UserPseudonym>,
        ack: Option<oneshot::Sender<Result<(), SealError>>>,
        on_done: Option<OnDone>,
        in_flight: InFlight,
    ) -> Result<(), SealError> {
        if !self.inner.health.is_ok() {
            return Err(degraded_error(&self.inner.health));
        }
        let pending = &self.inner.pending;
        if pending.fetch_add(1, Ordering::AcqRel) >= MAX_PENDING_SEALS {
            pending.fetch_sub(1, Ordering::AcqRel);
            return Err(SealError::new(
                ErrorKind::Busy,
                format!("{MAX_PENDING_SEALS} exchanges already wait for the disk; not sealed"),
            ));
        }
        // The frame is the two bodies plus metadata: reserve their size before encrypting.
        let len = exchange
            .request_body
            .captured_len()
            .saturating_add(exchange.response_body.captured_len())
            .saturating_add(4096);
        let bytes = &self.inner.pending_bytes;
        let before = bytes.fetch_add(len, Ordering::AcqRel);
        let guard = PendingGuard {
            jobs: pending.clone(),
            bytes: bytes.clone(),
            len,
        };
        if before > 0 && before.saturating_add(len) > MAX_PENDING_SEAL_BYTES {
            drop(guard);
            return Err(SealError::new(
                ErrorKind::Busy,
                format!(
                    "{} MiB of exchanges already wait for the disk; not sealed",
                    before >> 20
                ),
            ));
        }
        let mut all: Vec<String> = Vec::new();
        for u in users.map(|u| u.as_str().to_string()) {
            if !all.contains(&u) {
                all.push(u);
            }
        }
        let ring = self.keyring();
        let master = ring.current();
        let data_key = envelope::fresh_data_key();
        let frame = envelope::seal_frame(exchange, &data_key, master.id())?;
        let slot = envelope::wrap_slot(
            exchange.id,
            &data_key,
            master.id(),
            &master.derive(Purpose::SealWrap),
        );
        // Counted on before the send: the writer may take the job, and count it off, at once.
        let gauge = &self.inner.health.counters.seal.pending;
        gauge.add(1);
        let sent = self.send(Command::Seal(Box::new(SealJob {
            _pending: guard,
            _in_flight: in_flight,
            id: exchange.id,
            frame,
            slot,
            time: exchange.started_at,
            users: all,
            ack,
            // From here on the writer owns the outcome: dropped unwritten counts as `false`.
            done: on_done.map(|f| Done(Some(f))),
        })));
        if sent.is_err() {
            gauge.sub(1);
        }
        sent
    }

    /// Detached seal jobs that failed after they were queued (the writer also logs them).
    pub fn detached_failures(&self) -> u64 {
        self.inner.health.stats().detached_failures
    }

    /// Seals `exchange` and waits until it is durable.
    pub async fn seal(
        &self,
        exchange: &Exchange,
        user: Option<&UserPseudonym>,
    ) -> Result<ExchangeId, SealError> {
        self.submit(exchange, user)?.durable().await
    }

    /// Blocking [`SealStore::seal`] for threads outside an async runtime.
    pub fn seal_blocking(
        &self,
        exchange: &Exchange,
        user: Option<&UserPseudonym>,
    ) -> Result<ExchangeId, SealError> {
        self.submit(exchange, user)?.wait()
    }
}
