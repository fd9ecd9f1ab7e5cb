//! # The recording queue: finished exchanges from the proxy to the pipeline, bounded twice.
//!
//! The seam between the hot path and recording. Under best-effort the proxy asks, before a
//! request goes upstream, whether the queue has room ([`ExchangeSender::try_admit`]: a request
//! that finds none is a counted drop and is never captured) and offers the exchange when it
//! ends ([`ExchangeSender::try_send`]); nothing is held meanwhile, so a long stream costs no
//! place. Under audit required it reserves the exchange's place before the request goes
//! upstream, waiting up to `queue_wait` for room ([`ExchangeSender::reserve`], a
//! [`Reservation`]: one that still cannot be recorded is refused instead). The pipeline takes
//! [`Queued`] exchanges and holds each until it is processed.
//!
//! The queue is bounded in **count** (`queue_capacity`) and in **bytes** (`queue_max_bytes`),
//! and both bounds hold for an exchange's whole recording life, not only while it waits for a
//! worker: an exchange keeps its place (one of `queue_capacity`, its captured body bytes of
//! `queue_max_bytes`) from hand-off until the last thing made from it is freed: the
//! [`Queued`] exchange while the pipeline processes it, then its record (through the exporter
//! and the ledger's writer, [`crate::record::Record::in_flight`]) and its sealed frame
//! (until the store's writer has written it to the segment file, or failed it), each holding
//! an [`InFlight`] share.
//! So `queue_capacity` and `queue_max_bytes` bound what recording holds in memory end to end:
//! a burst of forty 20 MB prompts once held ~900 MB while a count bound of 4096 was nowhere
//! near, and until stop 51 the stages after the queue (4,096 pending seals, 4,096 records
//! for export, the ledger's batches) each held their own backlog on top of the queue's, so a
//! saturated best-effort veil held ~3× `queue_capacity` exchanges' worth (docs/performance.md,
//! stop 51). The bytes charged are the captured bodies' length: the record and the sealed
//! frame made from them are each about that size again, so the memory recording holds is
//! about two to three times `queue_max_bytes` at most.
//!
//! Every hand-off and refusal is counted in the `queue` section of the registry handed to
//! [`channel`] ([`QueueCounters`](crate::counters::QueueCounters): `veil.queue.*`,
//! `veil.exchanges.dropped`, `veil.exchanges.refused`), and each refusal is logged at most once
//! per [`LOG_EVERY`] with the count since the last line. The same section holds the queue's
//! `capacity` (set by [`channel`]) and its `depth`: up just before a hand-off (a refused
//! exchange never counts on: it is refused before), down when a worker takes the exchange, so
//! a worker that takes it at once cannot count it off before it was counted on (a gauge
//! saturates at 0).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::Exchange;
use crate::counters::{Counter, Counters, LogEvery};
use crate::journal::{Journal, Slot};

/// How often a repeated drop is logged (the count since the last line is in the line).
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Why the queue did not take an exchange (best-effort) or a reservation (audit required).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `queue_capacity` exchanges are in flight (queued, being processed, or waiting for the
    /// exporter, the ledger or the sealed store).
    Full,
    /// `queue_max_bytes` of captured bodies are in flight.
    Bytes,
    /// Recording has stopped.
    Closed,
}

impl Refusal {
    /// Short stable name (`full`, `bytes`, `closed`), used in logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Full => "full",
            Refusal::Bytes => "bytes",
            Refusal::Closed => "closed",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refusal::Full => "recording queue full",
            Refusal::Bytes => "recording queue holds its byte limit",
            Refusal::Closed => "recording has stopped",
        })
    }
}

#[derive(Debug)]
struct Shared {
    /// Captured bytes handed over and not yet released (the exchange and everything made from
    /// it freed).
    bytes: AtomicUsize,
    max_bytes: usize,
    /// Captured bytes of exchanges handed over whose [`Queued`] is still alive: the raw
    /// captures no worker has yet turned into a record and a sealed frame (and freed). Read by
    /// the disk watch through [`Unprocessed`]; what comes after is counted by each stage.
    unprocessed: AtomicUsize,
    /// Places taken: exchanges handed over (or reserved for, under audit required) and not
    /// yet released, at most `capacity`.
    in_flight: AtomicUsize,
    capacity: usize,
    /// The registry; this queue counts in its `queue` section, and the proxy reads it from here
    /// (so the proxy and its queue can never count into two registries).
    counters: Arc<Counters>,
    /// Rate limit of the refusal lines.
    log: LogEvery,
    /// Notes each hand-off, so a crash's losses can be counted at the next start.
    journal: Option<Arc<Journal>>,
    /// Reservations waiting for a place or the byte budget ([`ExchangeSender::reserve`]);
    /// a release wakes them only when there are some, so the consumer pays nothing otherwise.
    waiters: AtomicUsize,
    /// Woken by a release while `waiters` > 0.
    room: Notify,
    /// Set when the consumer is gone (its [`ExchangeReceiver`] dropped): a reservation's
    /// [`Reservation::send`] then counts its exchange as dropped (`closed`) instead of handing
    /// it to a channel nobody reads, where it would be freed uncounted.
    receiver_gone: AtomicBool,
}

impl Shared {
    /// Takes `n` bytes of the budget. A lone exchange bigger than the whole budget is still
    /// taken when nothing else waits, so one huge exchange is recorded rather than never.
    fn take(&self, n: usize) -> bool {
        let mut cur = self.bytes.load(Ordering::Relaxed);
        loop {
            let fits = cur.checked_add(n).is_some_and(|t| t <= self.max_bytes) || cur == 0;
            if !fits {
                return false;
            }
            match self.bytes.compare_exchange_weak(
                cur,
                cur.saturating_add(n),
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.counters.queue.bytes.add(n as u64);
                    return true;
                }
                Err(now) => cur = now,
            }
        }
    }

    /// Gives `n` bytes back without waking anyone: the [`Place`] given back with them wakes
    /// a waiter once both are free ([`Ticket`]'s drop), so one finished exchange wakes one.
    fn release_bytes(&self, n: usize) {
        // SeqCst with `waiters` (see `wait_for_room`), through the place's release that
        // follows: either a waiter sees the bytes gone or the release sees the waiter.
        self.bytes.fetch_sub(n, Ordering::SeqCst);
        self.counters.queue.bytes.sub(n as u64);
    }

    /// Wakes one waiting reservation, if any: the one woken passes the wake-up on when room
    /// is left after it ([`Shared::wait_for_room`]), so a release wakes the waiters one at a
    /// time rather than all of them (at 64 waiting requests, each release once woke 64 tasks
    /// to find one place).
    fn wake_waiters(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            self.room.notify_one();
        }
    }

    /// Takes a place, if one of `capacity` is free.
    fn take_place(self: &Arc<Self>) -> Option<Place> {
        let mut cur = self.in_flight.load(Ordering::Relaxed);
        loop {
            if cur >= self.capacity {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.counters.queue.in_flight.add(1);
                    return Some(Place(self.clone()));
                }
                Err(now) => cur = now,
            }
        }
    }

    /// A place is free now (not taken).
    fn place_room(&self) -> bool {
        self.in_flight.load(Ordering::SeqCst) < self.capacity
    }

    /// A reservation may be taken: the byte budget is not used up (a lone exchange bigger
    /// than the budget fills it alone).
    fn bytes_room(&self) -> bool {
        let used = self.bytes.load(Ordering::SeqCst);
        used == 0 || used < self.max_bytes
    }

    /// Waits until a place is free and taken, and [`Shared::bytes_room`] holds, or until
    /// `deadline`: the place, or which bound still held at the deadline.
    async fn wait_for_room(self: &Arc<Self>, deadline: Instant) -> Result<Place, Refusal> {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.waiters);
        loop {
            let notified = self.room.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a release between the check and the wait wakes
            // it.
            notified.as_mut().enable();
            if let Ok(place) = self.room_now() {
                // Room left for another waiter: pass the wake-up on. (A wake-up this one was
                // given and did not need is passed on by tokio when `notified` is dropped.)
                if self.waiters.load(Ordering::SeqCst) > 1 && self.place_room() && self.bytes_room()
                {
                    self.room.notify_one();
                }
                return Ok(place);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.room_now();
            }
        }
    }

    /// A place, taken, when one is free and the byte budget is not used up. Checks both
    /// before taking, so a refusal gives nothing back (a place taken and given back would
    /// wake the waiters, this one among them, for nothing).
    fn room_now(self: &Arc<Self>) -> Result<Place, Refusal> {
        self.room()?;
        self.take_place().ok_or(Refusal::Full)
    }

    /// Whether a place is free and the byte budget is not used up, taking nothing; which
    /// bound is reached first when not.
    fn room(&self) -> Result<(), Refusal> {
        if !self.place_room() {
            Err(Refusal::Full)
        } else if !self.bytes_room() {
            Err(Refusal::Bytes)
        } else {
            Ok(())
        }
    }

    /// Counts and logs a best-effort drop under its reason's counter.
    fn drop_best_effort(&self, why: Refusal) {
        let c = &self.counters.queue;
        let counter = match why {
            Refusal::Full => &c.dropped_full,
            Refusal::Bytes => &c.dropped_bytes,
            Refusal::Closed => &c.dropped_closed,
        };
        self.refuse(why, counter, "exchange not recorded (audit = best-effort)");
    }

    /// Hands an exchange whose place and bytes `ticket` holds to `send` (a reserved channel
    /// slot), after noting it in the journal: noted before the send, since once
    /// sent the pipeline may already be done with it; counted on the depth before the send,
    /// since a worker may take it (and count it off) at once.
    fn hand_over(&self, exchange: Exchange, ticket: Ticket, send: impl FnOnce(Queued)) {
        // Given back by the `Queued`'s drop, whatever happens to it from here.
        self.unprocessed.fetch_add(ticket.bytes, Ordering::Relaxed);
        let mut queued = Queued::new(exchange, ticket);
        queued.slot = self.journal.as_ref().map(|j| j.acknowledge(queued.id));
        self.counters.queue.depth.add(1);
        self.counters.queue.queued.inc();
        send(queued);
    }

    fn refuse(&self, why: Refusal, counter: &Counter, what: &str) {
        counter.inc();
        if let Some(n) = self.log.hit() {
            tracing::warn!(
                reason = why.as_str(),
                since_last_line = n,
                dropped_total = self.counters.queue.dropped(),
                refused_total = self.counters.queue.refused.get(),
                "{why}: {what}"
            );
        }
    }
}

/// Creates a queue holding at most `capacity` exchanges and `max_bytes` of captured bodies in
/// flight (queued, being processed, or held as a record or sealed frame: see the module
/// docs), counting in `counters.queue`.
///
/// # Panics
/// When `capacity` is 0 or above tokio's limit (`usize::MAX >> 3`); the config bounds it.
pub fn channel(
    capacity: usize,
    max_bytes: usize,
    counters: Arc<Counters>,
) -> (ExchangeSender, ExchangeReceiver) {
    channel_journaled(capacity, max_bytes, None, counters)
}

/// [`channel`] that notes every hand-off in `journal` (one `pwrite` per exchange): each
/// [`Queued`] then carries its journal [`Slot`] for the steps that make it durable.
pub fn channel_journaled(
    capacity: usize,
    max_bytes: usize,
    journal: Option<Arc<Journal>>,
    counters: Arc<Counters>,
) -> (ExchangeSender, ExchangeReceiver) {
    let (tx, rx) = mpsc::channel(capacity);
    counters.queue.capacity.set(capacity as u64);
    let shared = Arc::new(Shared {
        bytes: AtomicUsize::new(0),
        max_bytes,
        unprocessed: AtomicUsize::new(0),
        in_flight: AtomicUsize::new(0),
        capacity,
        counters,
        log: LogEvery::new(LOG_EVERY),
        journal,
        waiters: AtomicUsize::new(0),
        room: Notify::new(),
        receiver_gone: AtomicBool::new(false),
    });
    (
        ExchangeSender {
            tx,
            shared: shared.clone(),
        },
        ExchangeReceiver { rx, shared },
    )
}

/// The proxy's side of the queue. Cheap to clone; only [`ExchangeSender::reserve`] waits.
#[derive(Debug, Clone)]
pub struct ExchangeSender {
    tx: mpsc::Sender<Queued>,
    shared: Arc<Shared>,
}

impl ExchangeSender {
    /// Hands `exchange` over without waiting (best-effort). On refusal the exchange is dropped
    /// here, counted and logged (rate-limited); the reason is returned. A refused exchange
    /// leaves no trace in the journal: the slot is taken before the journal is written, so a
    /// drop costs the forwarding thread no `pwrite` (it used to cost two: the acknowledge and
    /// the drop mark).
    pub fn try_send(&self, exchange: Exchange) -> Result<(), Refusal> {
        let n = size_of_exchange(&exchange);
        let refused = |why| {
            self.shared.drop_best_effort(why);
            Err(why)
        };
        if self.tx.is_closed() {
            return refused(Refusal::Closed);
        }
        let Some(place) = self.shared.take_place() else {
            return refused(Refusal::Full);
        };
        if !self.shared.take(n) {
            return refused(Refusal::Bytes);
        }
        // Freed first on a refusal below: the bytes, then the place.
        let ticket = Ticket { bytes: n, place };
        // A place taken means a slot is free: the channel holds fewer exchanges than are in
        // flight.
        let permit = match self.tx.try_reserve() {
            Ok(permit) => permit,
            Err(e) => {
                drop(ticket);
                return refused(match e {
                    mpsc::error::TrySendError::Full(()) => Refusal::Full,
                    mpsc::error::TrySendError::Closed(()) => Refusal::Closed,
                });
            }
        };
        self.shared.hand_over(exchange, ticket, |q| permit.send(q));
        Ok(())
    }

    /// Whether a best-effort exchange should be captured at all, asked before its request goes
    /// upstream: a place is free (fewer than `queue_capacity` exchanges in flight) and byte
    /// budget is left now. When it has not (the queue
    /// is full, its byte budget used up, or recording stopped) the request is forwarded
    /// uncaptured and the drop is counted (`veil.exchanges.dropped` by reason) and logged as at
    /// the end: under saturation the forwarding threads spend nothing (body copies, header
    /// fingerprints, journal writes) on what recording would drop. Nothing is reserved: the
    /// exchange is offered with [`ExchangeSender::try_send`] when it ends, which may still
    /// refuse it, so a stream that lasts minutes holds no slot (a reservation held for a
    /// request's life let ~`queue_capacity` long streams make all other traffic unrecorded).
    pub fn try_admit(&self) -> Result<(), Refusal> {
        let got = if self.tx.is_closed() {
            Err(Refusal::Closed)
        } else {
            self.shared.room()
        };
        if let Err(why) = got {
            self.shared.drop_best_effort(why);
        }
        got
    }

    /// Reserves room for one exchange before its request goes upstream (audit required),
    /// without waiting: a place in flight, and the promise that the byte budget is not already
    /// used up.
    /// The exchange's bytes are added when it is sent, so the queue may exceed `max_bytes` by
    /// what the requests in flight capture (each bounded by `capture_limit`). A refusal is
    /// counted in [`QueueCounters::refused`](crate::counters::QueueCounters::refused).
    /// A realtime response, which has already been answered, reserves this way.
    pub fn try_reserve(&self) -> Result<Reservation, Refusal> {
        let got = self.reserve_now();
        self.counted(got)
    }

    /// [`ExchangeSender::try_reserve`] that first waits up to `wait` for room (a place and
    /// the byte budget) when recording is full: under `audit = "required"` a saturated
    /// recorder slows traffic down instead of refusing it. Requests that had to wait are
    /// counted in [`QueueCounters::waited`](crate::counters::QueueCounters::waited) and
    /// those waiting now in `waiting`; one still without room after `wait` is refused as by
    /// `try_reserve`. A closed queue refuses at once. Places go close to first come, first
    /// served (see `wait_for_room`). Cancel-safe: a dropped wait holds nothing.
    pub async fn reserve(&self, wait: Duration) -> Result<Reservation, Refusal> {
        let got = match self.reserve_now() {
            // Boxed: only a wait pays for its timers, not every request's future.
            Err(Refusal::Full | Refusal::Bytes) if !wait.is_zero() => {
                Box::pin(self.wait_for_room(wait)).await
            }
            got => got,
        };
        self.counted(got)
    }

    /// One attempt, neither waiting nor counting.
    fn reserve_now(&self) -> Result<Reservation, Refusal> {
        if self.tx.is_closed() {
            return Err(Refusal::Closed);
        }
        let place = self.shared.room_now()?;
        self.reservation(place)
    }

    /// Waits up to `wait` for a place and the byte budget. A release wakes one waiter
    /// (tokio's `Notify` wakes the longest waiting first), but a request that arrives then may
    /// take the place first: close to first come, first served, not exactly.
    async fn wait_for_room(&self, wait: Duration) -> Result<Reservation, Refusal> {
        let deadline = Instant::now() + wait;
        let c = &self.shared.counters.queue;
        c.waited.inc();
        c.waiting.add(1);
        let _waiting = GaugeGuard(&c.waiting);
        let place = self.shared.wait_for_room(deadline).await?;
        // Releases also come from a closing queue dropping what it held.
        if self.tx.is_closed() {
            return Err(Refusal::Closed);
        }
        let mut reservation = self.reservation(place)?;
        reservation.waited = true;
        Ok(reservation)
    }

    /// The channel slot for `place` (there is one: the channel holds fewer exchanges than
    /// are in flight).
    fn reservation(&self, place: Place) -> Result<Reservation, Refusal> {
        match self.tx.clone().try_reserve_owned() {
            Ok(permit) => Ok(Reservation {
                permit,
                place,
                waited: false,
            }),
            Err(mpsc::error::TrySendError::Full(_)) => Err(Refusal::Full),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Refusal::Closed),
        }
    }

    /// Counts and logs a refusal (rate-limited).
    fn counted(&self, got: Result<Reservation, Refusal>) -> Result<Reservation, Refusal> {
        if let Err(why) = &got {
            self.shared.refuse(
                *why,
                &self.shared.counters.queue.refused,
                "request refused (audit = required)",
            );
        }
        got
    }

    /// A reader of the captured bytes no worker has processed yet (see [`Unprocessed`]).
    pub fn unprocessed(&self) -> Unprocessed {
        Unprocessed(self.shared.clone())
    }

    /// The registry this queue counts in (its `queue` section).
    pub fn counters(&self) -> &Arc<Counters> {
        &self.shared.counters
    }

    /// Exchanges waiting (not yet taken by the pipeline).
    pub fn len(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }

    /// True when no exchange waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Takes one off a gauge when dropped (a wait that ends any way, cancellation included).
struct GaugeGuard<'a>(&'a crate::counters::Gauge);

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.sub(1);
    }
}

/// The captured bytes of exchanges handed over and not yet processed: counted from the
/// hand-over until the worker drops the [`Queued`] exchange, after it has handed the record
/// and the sealed frame made from it to their stages (which count them from there). Unlike
/// `veil.queue.bytes`, which stays charged until those are freed too (the bound of
/// `queue_max_bytes`), each captured byte is here only while it is still the raw capture, so
/// an estimate adding every stage's bytes counts an exchange once. Holds no sender: it does
/// not keep the queue open.
#[derive(Debug, Clone)]
pub struct Unprocessed(Arc<Shared>);

impl Unprocessed {
    /// Bytes of captured bodies (as `queue_max_bytes` counts them) waiting for or in a worker.
    pub fn bytes(&self) -> u64 {
        self.0.unprocessed.load(Ordering::Relaxed) as u64
    }
}

/// Room for one exchange, reserved before its request went upstream (audit required): its
/// place in flight and its slot in the channel, given back if it is dropped unsent.
#[derive(Debug)]
pub struct Reservation {
    permit: mpsc::OwnedPermit<Queued>,
    place: Place,
    waited: bool,
}

impl Reservation {
    /// True when the queue was full and this reservation had to wait for room (whatever
    /// was judged before the wait may have changed meanwhile).
    pub fn waited(&self) -> bool {
        self.waited
    }

    /// Hands `exchange` over; never fails and never waits (audit required: the exchange was
    /// promised its room, so its bytes are added whatever the budget holds). When recording
    /// stopped since the reservation (the [`ExchangeReceiver`] is gone), the exchange is counted
    /// as dropped (`veil.exchanges.dropped`, `veil.drop.reason` = `recording_stopped`) and
    /// logged instead. (The server
    /// keeps its receiver until every sender is gone, so there this does not happen; a receiver
    /// dropped between the check and the hand-off is not seen.)
    pub fn send(self, exchange: Exchange) {
        let shared = self.place.0.clone();
        if shared.receiver_gone.load(Ordering::Acquire) {
            shared.refuse(
                Refusal::Closed,
                &shared.counters.queue.dropped_closed,
                "exchange not recorded (audit = required; its room was reserved before)",
            );
            return;
        }
        let n = size_of_exchange(&exchange);
        shared.bytes.fetch_add(n, Ordering::AcqRel);
        shared.counters.queue.bytes.add(n as u64);
        let Reservation { permit, place, .. } = self;
        shared.hand_over(exchange, Ticket { bytes: n, place }, |q| {
            permit.send(q);
        });
    }
}

/// The pipeline's side of the queue.
#[derive(Debug)]
pub struct ExchangeReceiver {
    rx: mpsc::Receiver<Queued>,
    shared: Arc<Shared>,
}

impl Drop for ExchangeReceiver {
    fn drop(&mut self) {
        self.shared.receiver_gone.store(true, Ordering::Release);
    }
}

impl ExchangeReceiver {
    /// The next exchange; `None` once every sender is gone and the queue is empty.
    pub async fn recv(&mut self) -> Option<Queued> {
        let got = self.rx.recv().await;
        self.taken(got)
    }

    /// [`ExchangeReceiver::recv`] for OS threads outside the async runtime.
    pub fn blocking_recv(&mut self) -> Option<Queued> {
        let got = self.rx.blocking_recv();
        self.taken(got)
    }

    /// The next exchange if one is waiting, without waiting.
    pub fn try_recv(&mut self) -> Option<Queued> {
        let got = self.rx.try_recv().ok();
        self.taken(got)
    }

    /// Counts a taken exchange off `veil.queue.depth`.
    fn taken(&self, got: Option<Queued>) -> Option<Queued> {
        if got.is_some() {
            self.shared.counters.queue.depth.sub(1);
        }
        got
    }

    /// The registry this queue counts in (its `queue` section).
    pub fn counters(&self) -> &Arc<Counters> {
        &self.shared.counters
    }
}

/// One exchange taken from the queue. It holds the exchange's place in flight and its bytes
/// of `queue_max_bytes` until it is dropped (or [`Queued::into_exchange`] is called) and no
/// [`InFlight`] share taken from it ([`Queued::in_flight`]) is left: hold it while
/// processing, and give a share to each thing made from it that stays in memory after it.
pub struct Queued {
    /// Boxed: a `Queued` is moved into the channel's slot and out of it again, on the
    /// forwarding thread and the pipeline's, and the channel's blocks hold room for 32 of
    /// them whether used or not. A pointer instead of the exchange's ~830 bytes.
    exchange: Box<Exchange>,
    ticket: Arc<Ticket>,
    slot: Option<Slot>,
}

// Kept small on purpose (see `Queued::exchange`): unboxing the exchange fails the build.
const _: () = assert!(std::mem::size_of::<Queued>() <= 64);

/// An exchange's place in flight and its charge of the byte budget, given back when dropped
/// (when the [`Queued`] and every [`InFlight`] share of it are gone).
#[derive(Debug)]
struct Ticket {
    bytes: usize,
    place: Place,
}

impl Drop for Queued {
    fn drop(&mut self) {
        let shared = &self.ticket.place.0;
        shared
            .unprocessed
            .fetch_sub(self.ticket.bytes, Ordering::Relaxed);
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        // The bytes first; the place (dropped right after, as a field) then wakes a waiter.
        self.place.0.release_bytes(self.bytes);
    }
}

/// One of `queue_capacity` places, given back when dropped.
#[derive(Debug)]
struct Place(Arc<Shared>);

impl Drop for Place {
    fn drop(&mut self) {
        // SeqCst with `waiters`, as in `Shared::release`.
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.0.counters.queue.in_flight.sub(1);
        self.0.wake_waiters();
    }
}

/// A share of an exchange's place in the recording queue's bounds (one of `queue_capacity`
/// and its captured bytes of `queue_max_bytes`): the place is given back when the [`Queued`]
/// exchange and every share taken from it ([`Queued::in_flight`]) are dropped. The pipeline
/// gives one to the record it builds ([`Record::in_flight`](crate::record::Record::in_flight))
/// and one to the sealed frame it queues, so the bounds hold until recording is done with
/// the exchange, not only until a worker takes it.
///
/// An accounting token, not data: a clone is empty (a copy of a record does not hold its
/// exchange's place, only the original does), and any two compare equal.
#[derive(Default)]
pub struct InFlight(Option<Arc<Ticket>>);

impl InFlight {
    /// Whether this share holds a place (an empty one is the default, or a clone).
    pub fn holds(&self) -> bool {
        self.0.is_some()
    }
}

impl Clone for InFlight {
    fn clone(&self) -> Self {
        InFlight(None)
    }
}

impl PartialEq for InFlight {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl fmt::Debug for InFlight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("InFlight").field(&self.holds()).finish()
    }
}

impl Queued {
    fn new(exchange: Exchange, ticket: Ticket) -> Self {
        Queued {
            exchange: Box::new(exchange),
            ticket: Arc::new(ticket),
            slot: None,
        }
    }

    /// A share of this exchange's place in flight, for something made from it that outlives
    /// the `Queued` (see [`InFlight`]).
    pub fn in_flight(&self) -> InFlight {
        InFlight(Some(self.ticket.clone()))
    }

    /// The exchange's journal slot, when the queue keeps a journal: mark it sealed and
    /// recorded (or dropped) as the steps finish.
    pub fn slot(&self) -> Option<Slot> {
        self.slot
    }

    /// The queue's journal, if any.
    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.ticket.place.0.journal.as_ref()
    }

    /// The exchange.
    pub fn exchange(&self) -> &Exchange {
        &self.exchange
    }

    /// Returns the exchange, releasing its place and bytes unless an [`InFlight`] share of
    /// them is still held (tests and tools that keep exchanges past processing).
    pub fn into_exchange(mut self) -> Exchange {
        *std::mem::replace(&mut self.exchange, Box::new(empty_exchange()))
    }
}

impl std::ops::Deref for Queued {
    type Target = Exchange;
    fn deref(&self) -> &Exchange {
        &self.exchange
    }
}

impl fmt::Debug for Queued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queued")
            .field("id", &self.exchange.id)
            .field("bytes", &self.ticket.bytes)
            .finish()
    }
}

/// What an exchange costs the byte budget: its captured bodies (the headers are small and
/// bounded by hyper's limits).
fn size_of_exchange(ex: &Exchange) -> usize {
    ex.request_body
        .captured_len()
        .saturating_add(ex.response_body.captured_len())
}

fn empty_exchange() -> Exchange {
    Exchange {
        id: super::ExchangeId::from_bytes([0; 16]),
        started_at: std::time::SystemTime::UNIX_EPOCH,
        timings: Default::default(),
        client_addr: None,
        route: super::Route::Intercept,
        upstream: super::Upstream {
            scheme: "".into(),
            host: String::new(),
            port: 0,
        },
        client_version: "".into(),
        method: "".into(),
        path: String::new(),
        request_headers: super::Headers::new(),
        tags: super::Headers::new(),
        api_key_fingerprint: None,
        request_body: Default::default(),
        status: None,
        response_headers: super::Headers::new(),
        response_body: Default::default(),
        outcome: super::Outcome::Complete,
        websocket: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    /// Yields until `cond` holds; fails after 10 s instead of spinning forever.
    async fn until(cond: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !cond() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("condition never held");
    }

    /// A reservation waiting (up to 300 s) on its own task.
    fn spawn_reserve(tx: &ExchangeSender) -> tokio::task::JoinHandle<Result<Reservation, Refusal>> {
        let tx = tx.clone();
        tokio::spawn(async move { tx.reserve(Duration::from_secs(300)).await })
    }

    /// Gives `waiter` a hundred chances to run and checks that it still waits (`why`).
    async fn still_waiting<T>(waiter: &tokio::task::JoinHandle<T>, why: &str) {
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished(), "{why}");
    }

    /// The reservation `waiter` got once a release woke it, long before its own deadline.
    async fn woken(
        waiter: tokio::task::JoinHandle<Result<Reservation, Refusal>>,
        what: &str,
    ) -> Reservation {
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken by the release, long before its own deadline")
            .unwrap()
            .expect(what)
    }

    fn exchange_of(bytes: usize) -> Exchange {
        let mut ex = empty_exchange();
        ex.id = super::super::ExchangeId::new();
        ex.request_body.chunks = vec![Bytes::from(vec![b'x'; bytes])];
        ex
    }

    // See: veil#10. Forty 20 MB prompts once sat in a queue bounded only in count.
    #[test]
    fn the_queue_is_bounded_in_bytes_and_releases_them_after_processing() {
        let (tx, mut rx) = channel(100, 50, Arc::default());
        tx.try_send(exchange_of(30)).unwrap();
        assert_eq!(tx.try_send(exchange_of(30)), Err(Refusal::Bytes));
        tx.try_send(exchange_of(20)).unwrap();
        let counters = tx.counters().clone();
        let c = &counters.queue;
        assert_eq!((c.queued.get(), c.dropped_bytes.get()), (2, 1));
        assert_eq!(c.bytes.get(), 50);
        let first = rx.blocking_recv().unwrap();
        // Taken but not processed: its bytes still count.
        assert_eq!(tx.try_send(exchange_of(10)), Err(Refusal::Bytes));
        drop(first);
        assert_eq!(c.bytes.get(), 20);
        tx.try_send(exchange_of(10)).unwrap();
        assert_eq!(c.dropped(), 2);
    }

    #[test]
    fn a_lone_exchange_larger_than_the_budget_is_still_recorded() {
        let (tx, mut rx) = channel(4, 10, Arc::default());
        tx.try_send(exchange_of(100)).unwrap();
        assert_eq!(tx.try_send(exchange_of(1)), Err(Refusal::Bytes));
        let ex = rx.blocking_recv().unwrap().into_exchange();
        assert_eq!(ex.request_body.captured_len(), 100);
        assert_eq!(
            tx.counters().queue.bytes.get(),
            0,
            "into_exchange releases the bytes"
        );
    }

    #[test]
    fn count_bound_and_closed_queue_are_counted_apart() {
        let (tx, rx) = channel(1, 1 << 20, Arc::default());
        tx.try_send(exchange_of(1)).unwrap();
        assert_eq!(tx.try_send(exchange_of(1)), Err(Refusal::Full));
        assert_eq!(
            tx.counters().queue.bytes.get(),
            1,
            "a refused exchange gives its bytes back"
        );
        drop(rx);
        assert_eq!(tx.try_send(exchange_of(1)), Err(Refusal::Closed));
        let c = &tx.counters().queue;
        assert_eq!((c.dropped_full.get(), c.dropped_closed.get()), (1, 1));
    }

    /// `veil.queue.depth` follows what waits for a worker, whichever way it arrived, and
    /// never counts what the queue refused; `veil.queue.capacity` is `queue_capacity`.
    #[test]
    fn depth_counts_waiting_exchanges_up_to_capacity_and_back_to_zero() {
        let (tx, mut rx) = channel(2, 1 << 20, Arc::default());
        let c = tx.counters().clone();
        assert_eq!((c.queue.capacity.get(), c.queue.depth.get()), (2, 0));
        tx.try_send(exchange_of(1)).unwrap();
        tx.try_reserve().unwrap().send(exchange_of(1));
        assert_eq!(tx.try_send(exchange_of(1)), Err(Refusal::Full));
        assert_eq!(
            c.queue.depth.get(),
            2,
            "full: the refused one is not waiting"
        );
        let first = rx.try_recv().unwrap();
        assert_eq!(c.queue.depth.get(), 1, "taken, even if not yet processed");
        drop(first);
        let _second = rx.blocking_recv().unwrap();
        assert_eq!(c.queue.depth.get(), 0);
        assert!(rx.try_recv().is_none());
        assert_eq!(c.queue.depth.get(), 0, "an empty take counts nothing off");
        drop(rx);
        assert_eq!(tx.try_send(exchange_of(1)), Err(Refusal::Closed));
        assert_eq!(c.queue.depth.get(), 0, "a closed queue holds nothing");
    }

    /// Under `audit = "required"` a full queue slows a request down instead of refusing it:
    /// it gets the place a finished exchange frees, and counts as having waited, not as
    /// refused. A worker taking the exchange frees nothing: what it processes is still in
    /// memory.
    #[tokio::test]
    async fn a_reservation_waits_for_the_place_a_finished_exchange_frees() {
        let (tx, mut rx) = channel(1, 1 << 20, Arc::default());
        let c = tx.counters().clone();
        tx.reserve(Duration::ZERO)
            .await
            .unwrap()
            .send(exchange_of(1));
        let waiter = spawn_reserve(&tx);
        until(|| c.queue.waiting.get() > 0).await;
        assert!(!waiter.is_finished(), "no room yet");
        assert_eq!(c.queue.waited.get(), 1);
        let taken = rx.recv().await.unwrap();
        still_waiting(&waiter, "taken, not finished: its place is still held").await;
        drop(taken);
        waiter
            .await
            .unwrap()
            .expect("the freed slot")
            .send(exchange_of(1));
        assert_eq!(c.queue.waiting.get(), 0);
        assert_eq!((c.queue.refused.get(), c.queue.queued.get()), (0, 2));
    }

    /// The byte budget is waited for the same way: a release wakes the waiter.
    #[tokio::test]
    async fn a_reservation_waits_for_the_byte_budget() {
        let (tx, mut rx) = channel(4, 10, Arc::default());
        let c = tx.counters().clone();
        tx.try_reserve().unwrap().send(exchange_of(11));
        let waiter = spawn_reserve(&tx);
        until(|| c.queue.waiting.get() > 0).await;
        let taken = rx.recv().await.unwrap();
        // Taken but not processed: its bytes still count, so the waiter still waits.
        still_waiting(&waiter, "the budget is still used up").await;
        drop(taken);
        woken(waiter, "room once the bytes are released").await;
        assert_eq!((c.queue.waiting.get(), c.queue.refused.get()), (0, 0));
        assert_eq!(tx.shared.waiters.load(Ordering::SeqCst), 0);
    }

    /// A wait is bounded by `queue_wait`: past it the request is refused (and counted both
    /// as having waited and as refused), by whichever bound is still full.
    #[tokio::test(start_paused = true)]
    async fn a_reservation_is_refused_when_no_room_comes_in_time() {
        // Every place taken (by an exchange a worker holds: taking it freed nothing).
        let (tx, mut rx) = channel(1, 1 << 20, Arc::default());
        let c = tx.counters().clone();
        tx.try_reserve().unwrap().send(exchange_of(1));
        let taken = rx.recv().await.unwrap();
        let t = Instant::now();
        assert_eq!(
            tx.reserve(Duration::from_millis(50)).await.unwrap_err(),
            Refusal::Full
        );
        assert!(t.elapsed() >= Duration::from_millis(50));
        drop(taken);
        // A place free, the byte budget used up.
        let (tx2, rx2) = channel(2, 10, c.clone());
        tx2.try_reserve().unwrap().send(exchange_of(11));
        assert_eq!(
            tx2.reserve(Duration::from_millis(50)).await.unwrap_err(),
            Refusal::Bytes
        );
        assert_eq!((c.queue.waited.get(), c.queue.refused.get()), (2, 2));
        assert_eq!(c.queue.waiting.get(), 0);
        // Zero waits not at all, and a closed queue refuses at once.
        assert_eq!(
            tx2.reserve(Duration::ZERO).await.unwrap_err(),
            Refusal::Bytes
        );
        drop(rx2);
        let t = Instant::now();
        assert_eq!(
            tx2.reserve(Duration::from_secs(30)).await.unwrap_err(),
            Refusal::Closed
        );
        assert_eq!(t.elapsed(), Duration::ZERO);
        assert_eq!((c.queue.waited.get(), c.queue.refused.get()), (2, 4));
    }

    /// A queue that closes while a reservation waits for bytes (its receiver dropped, which
    /// releases what it held and so wakes the waiter) refuses it instead of handing out a
    /// reservation nobody will take.
    #[tokio::test]
    async fn a_queue_closing_during_a_wait_refuses_it() {
        let (tx, rx) = channel(2, 10, Arc::default());
        tx.try_reserve().unwrap().send(exchange_of(11));
        let waiter = spawn_reserve(&tx);
        until(|| tx.shared.waiters.load(Ordering::SeqCst) > 0).await;
        drop(rx);
        let got = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken when the queue closed")
            .unwrap();
        assert_eq!(got.unwrap_err(), Refusal::Closed);
        assert_eq!(tx.counters().queue.refused.get(), 1);
    }

    /// A reservation whose consumer went away before its exchange ended counts the exchange
    /// as dropped (closed), holds nothing and notes nothing in the journal.
    #[test]
    fn a_reservation_sent_after_recording_stopped_is_counted_as_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), 16).unwrap();
        let (tx, rx) = channel_journaled(2, 1 << 20, Some(Arc::new(journal)), Arc::default());
        let reserved = tx.try_reserve().unwrap();
        let before = journal_files(dir.path());
        drop(rx);
        reserved.send(exchange_of(100));
        let c = &tx.counters().queue;
        assert_eq!((c.dropped_closed.get(), c.dropped()), (1, 1));
        assert_eq!((c.queued.get(), c.depth.get(), c.bytes.get()), (0, 0, 0));
        assert_eq!(tx.shared.bytes.load(Ordering::SeqCst), 0);
        assert_eq!(
            journal_files(dir.path()),
            before,
            "nothing acknowledged for it"
        );
    }

    /// A request that goes away while waiting (the app hung up) leaves nothing behind.
    #[tokio::test]
    async fn a_dropped_wait_holds_nothing() {
        let (tx, mut rx) = channel(2, 10, Arc::default());
        let c = tx.counters().clone();
        tx.try_reserve().unwrap().send(exchange_of(11));
        let waiter = spawn_reserve(&tx);
        until(|| tx.shared.waiters.load(Ordering::SeqCst) > 0).await;
        // It waits for the byte budget, holding no place meanwhile.
        assert_eq!(c.queue.in_flight.get(), 1);
        assert_eq!(
            tx.reserve(Duration::ZERO).await.unwrap_err(),
            Refusal::Bytes
        );
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert_eq!(c.queue.waiting.get(), 0);
        assert_eq!(tx.shared.waiters.load(Ordering::SeqCst), 0);
        drop(rx.recv().await.unwrap());
        // Both places are free again: the aborted wait took none.
        let _a = tx.try_reserve().unwrap();
        let _b = tx.try_reserve().unwrap();
    }

    /// A release wakes one waiter, not all of them; the one woken passes the wake-up on while
    /// room is left, so one release that frees room for several serves them all at once
    /// rather than one per release (the others would wait to their `queue_wait` and get a
    /// 503 with room free).
    #[tokio::test]
    async fn one_release_with_room_for_several_serves_every_waiter() {
        let (tx, mut rx) = channel(4, 10, Arc::default());
        tx.try_reserve().unwrap().send(exchange_of(11));
        let waiters: Vec<_> = (0..3).map(|_| spawn_reserve(&tx)).collect();
        until(|| tx.shared.waiters.load(Ordering::SeqCst) == 3).await;
        drop(rx.recv().await.unwrap());
        let mut served = Vec::new();
        for w in waiters {
            served.push(woken(w, "room for all three").await);
        }
        assert_eq!(tx.counters().queue.in_flight.get(), 3);
    }

    #[test]
    fn reservations_refuse_past_either_bound_and_count_it() {
        let (tx, mut rx) = channel(2, 10, Arc::default());
        let r = tx.try_reserve().unwrap();
        r.send(exchange_of(11));
        // The byte budget is used up: no new reservation until the pipeline is done with it.
        assert_eq!(tx.try_reserve().unwrap_err(), Refusal::Bytes);
        let taken = rx.blocking_recv().unwrap();
        assert_eq!(tx.try_reserve().unwrap_err(), Refusal::Bytes);
        drop(taken);
        let a = tx.try_reserve().unwrap();
        let _b = tx.try_reserve().unwrap();
        assert_eq!(tx.try_reserve().unwrap_err(), Refusal::Full);
        drop(a);
        assert_eq!(tx.counters().queue.refused.get(), 3);
        assert_eq!(tx.counters().queue.dropped(), 0, "refusals are not drops");
    }

    // See: veil#18. Best-effort asks for room when the request arrives and holds nothing: a
    // request that finds none is a drop at once; one admitted is offered at its end, where
    // the queue may refuse it after all.
    #[test]
    fn best_effort_admission_checks_for_room_and_holds_nothing() {
        let (tx, mut rx) = channel(3, 50, Arc::default());
        let counters = tx.counters().clone();
        let c = &counters.queue;
        // Asking holds no place: any number of requests in flight may be admitted.
        for _ in 0..5 {
            tx.try_admit().unwrap();
        }
        assert_eq!(
            (c.dropped(), c.depth.get(), c.bytes.get(), c.in_flight.get()),
            (0, 0, 0, 0)
        );
        for _ in 0..3 {
            tx.try_send(exchange_of(10)).unwrap();
        }
        assert_eq!((c.in_flight.get(), c.bytes.get()), (3, 30));
        assert_eq!(tx.try_admit().unwrap_err(), Refusal::Full);
        assert_eq!(
            (c.dropped_full.get(), c.refused.get()),
            (1, 0),
            "a drop, not a refusal"
        );
        // A worker taking an exchange frees no place: what it processes is in memory.
        let taken = rx.blocking_recv().unwrap();
        assert_eq!(c.depth.get(), 2);
        assert_eq!(tx.try_admit().unwrap_err(), Refusal::Full);
        drop(taken);
        assert_eq!((c.in_flight.get(), c.bytes.get()), (2, 20));
        // Admitted while there was room, refused at its end when there is none.
        tx.try_admit().unwrap();
        tx.try_send(exchange_of(30)).unwrap();
        assert_eq!(tx.try_send(exchange_of(1)), Err(Refusal::Full));
        // A free place, but the byte budget (40 of 50 held) decides at the end...
        drop(rx.blocking_recv().unwrap());
        tx.try_admit().unwrap();
        assert_eq!(tx.try_send(exchange_of(11)), Err(Refusal::Bytes));
        // ...and at arrival once it is used up (50 of 50, a place free).
        drop(rx.blocking_recv().unwrap());
        tx.try_send(exchange_of(20)).unwrap();
        assert_eq!(tx.try_admit().unwrap_err(), Refusal::Bytes);
        drop(rx.blocking_recv().unwrap());
        drop(rx.blocking_recv().unwrap());
        assert_eq!((c.in_flight.get(), c.bytes.get()), (0, 0));
        // Recording stopped: admission is refused as a drop.
        drop(rx);
        assert_eq!(tx.try_admit().unwrap_err(), Refusal::Closed);
        assert_eq!(
            (
                c.dropped_full.get(),
                c.dropped_bytes.get(),
                c.dropped_closed.get()
            ),
            (3, 2, 1)
        );
        assert_eq!(c.refused.get(), 0);
    }

    // See: veil#18. An exchange's place (and its bytes) stay taken until everything made
    // from it is freed, not only until a worker takes it: the stages after the queue (the
    // record on its way to the ledger, the sealed frame on its way to the disk) used to hold
    // ~3x `queue_capacity` exchanges on top of the queue's own under a burst.
    #[test]
    fn an_exchange_keeps_its_place_until_its_last_share_is_freed() {
        let (tx, mut rx) = channel(1, 50, Arc::default());
        let counters = tx.counters().clone();
        let c = &counters.queue;
        tx.try_send(exchange_of(10)).unwrap();
        let queued = rx.blocking_recv().unwrap();
        let (record, frame) = (queued.in_flight(), queued.in_flight());
        assert!(record.holds() && frame.holds());
        let copy = record.clone();
        assert!(!copy.holds(), "a clone holds no place");
        assert_eq!(copy, record, "a token, not data: any two compare equal");
        drop(queued);
        assert_eq!(
            (c.in_flight.get(), c.bytes.get(), c.depth.get()),
            (1, 10, 0)
        );
        assert_eq!(tx.try_admit().unwrap_err(), Refusal::Full);
        drop((record, copy));
        assert_eq!(tx.try_send(exchange_of(1)), Err(Refusal::Full));
        drop(frame);
        assert_eq!((c.in_flight.get(), c.bytes.get()), (0, 0));
        tx.try_admit().unwrap();
        tx.try_send(exchange_of(1)).unwrap();
        assert_eq!(c.dropped_full.get(), 2);
    }

    /// The unprocessed bytes (what the disk watch counts of the queue) last only while the
    /// raw capture does: from the hand-over, best-effort or reserved, until the worker drops
    /// the `Queued`, while the queue's bytes stay charged until the last share is freed.
    #[test]
    fn unprocessed_bytes_end_when_the_worker_drops_the_exchange_not_its_shares() {
        let (tx, mut rx) = channel(4, 1 << 20, Arc::default());
        let counters = tx.counters().clone();
        let unprocessed = tx.unprocessed();
        tx.try_send(exchange_of(10)).unwrap();
        tx.try_reserve().unwrap().send(exchange_of(7));
        assert_eq!(unprocessed.bytes(), 17, "both, waiting for a worker");
        let first = rx.blocking_recv().unwrap();
        assert_eq!(unprocessed.bytes(), 17, "taken is not yet processed");
        let share = first.in_flight();
        drop(first);
        assert_eq!(unprocessed.bytes(), 7);
        assert_eq!(counters.queue.bytes.get(), 17, "the share keeps the bound");
        // Kept past processing (a tool): no longer the queue's to write.
        let kept = rx.blocking_recv().unwrap().into_exchange();
        assert_eq!(unprocessed.bytes(), 0);
        drop((share, kept));
        assert_eq!(counters.queue.bytes.get(), 0);
        // An exchange the queue refuses never counts.
        let (tx, _rx) = channel(1, 5, Arc::default());
        assert_eq!(
            tx.try_send(exchange_of(6)),
            Ok(()),
            "alone, over the budget"
        );
        assert_eq!(tx.try_send(exchange_of(1)), Err(Refusal::Full));
        assert_eq!(tx.unprocessed().bytes(), 6);
    }

    /// Under audit required a reservation waiting for a place is woken by the last share's
    /// release, not before.
    #[tokio::test]
    async fn a_reservation_gets_the_place_the_last_share_frees() {
        let (tx, mut rx) = channel(1, 1 << 20, Arc::default());
        tx.try_reserve().unwrap().send(exchange_of(1));
        let queued = rx.recv().await.unwrap();
        let share = queued.in_flight();
        drop(queued);
        let waiter = spawn_reserve(&tx);
        until(|| tx.counters().queue.waiting.get() > 0).await;
        still_waiting(&waiter, "the share still holds the place").await;
        drop(share);
        woken(waiter, "the freed place").await;
    }

    /// The journal's and the marks' bytes.
    fn journal_files(dir: &std::path::Path) -> (Vec<u8>, Vec<u8>) {
        (
            std::fs::read(dir.join(crate::journal::FILE)).unwrap(),
            std::fs::read(dir.join(crate::journal::MARKS_FILE)).unwrap(),
        )
    }

    // See: veil#18. A best-effort exchange the queue refuses used to cost the forwarding thread
    // two journal writes (the acknowledge, then the drop mark) for an exchange never recorded.
    #[test]
    fn an_exchange_the_queue_refuses_writes_nothing_to_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (journal, _) = Journal::open(dir.path(), 16).unwrap();
        let (tx, mut rx) = channel_journaled(2, 50, Some(Arc::new(journal)), Arc::default());
        let before = journal_files(dir.path());
        tx.try_send(exchange_of(10)).unwrap();
        tx.try_send(exchange_of(10)).unwrap();
        let queued = journal_files(dir.path());
        assert_ne!(queued.0, before.0, "a queued exchange is acknowledged");
        // Refused by the place count, by the byte budget, and by a stopped recorder.
        assert_eq!(tx.try_send(exchange_of(10)), Err(Refusal::Full));
        assert_eq!(tx.try_admit().unwrap_err(), Refusal::Full);
        drop(rx.try_recv().unwrap());
        assert_eq!(tx.try_send(exchange_of(60)), Err(Refusal::Bytes));
        drop(rx);
        assert_eq!(tx.try_send(exchange_of(1)), Err(Refusal::Closed));
        assert_eq!(tx.try_admit().unwrap_err(), Refusal::Closed);
        assert_eq!(
            journal_files(dir.path()),
            queued,
            "a refusal wrote the journal"
        );
        assert_eq!(tx.counters().queue.dropped(), 5);
        assert_eq!(
            tx.counters().queue.bytes.get(),
            0,
            "refused bytes are given back"
        );
    }
}
