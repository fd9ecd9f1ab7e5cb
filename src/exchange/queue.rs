//! # The recording queue: finished exchanges from the proxy to the pipeline, bounded twice.
//!
//! The seam between the hot path and recording. Under best-effort the proxy asks, before a
//! request goes upstream, whether the queue has room ([`ExchangeSender::try_admit`]: a request
//! that finds none is a counted drop and is never captured) and offers the exchange when it
//! ends ([`ExchangeSender::try_send`]); nothing is held meanwhile, so a long stream costs no
//! slot. Under audit required it reserves the exchange's slot before the request goes upstream,
//! waiting up to `queue_wait` for room ([`ExchangeSender::reserve`], a [`Reservation`]: one that
//! still cannot be recorded is refused instead). The pipeline takes [`Queued`] exchanges and
//! holds each until it is processed.
//!
//! The queue is bounded in **count** (`queue_capacity`) and in **bytes** (`queue_max_bytes`):
//! an exchange's captured bodies stay in memory from hand-off until the pipeline is done with
//! it, so a burst of forty 20 MB prompts once held ~900 MB while a count bound of 4096 was
//! nowhere near. Bytes are released when the [`Queued`] is dropped, i.e. after processing,
//! which is when the memory is actually freed.
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
    /// `queue_capacity` exchanges are waiting.
    Full,
    /// `queue_max_bytes` of captured bodies are waiting.
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
    /// Captured bytes handed over and not yet released by the consumer.
    bytes: AtomicUsize,
    max_bytes: usize,
    /// The registry; this queue counts in its `queue` section, and the proxy reads it from here
    /// (so the proxy and its queue can never count into two registries).
    counters: Arc<Counters>,
    /// Rate limit of the refusal lines.
    log: LogEvery,
    /// Notes each hand-off, so a crash's losses can be counted at the next start.
    journal: Option<Arc<Journal>>,
    /// Reservations waiting for the byte budget ([`ExchangeSender::reserve`]); `release`
    /// wakes them only when there are some, so the consumer pays nothing otherwise.
    bytes_waiters: AtomicUsize,
    /// Woken by `release` while `bytes_waiters` > 0.
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

    fn release(&self, n: usize) {
        // SeqCst with `bytes_waiters` (see `wait_for_bytes`): either a waiter sees the bytes
        // gone or this sees the waiter.
        self.bytes.fetch_sub(n, Ordering::SeqCst);
        self.counters.queue.bytes.sub(n as u64);
        if self.bytes_waiters.load(Ordering::SeqCst) > 0 {
            self.room.notify_waiters();
        }
    }

    /// A reservation may be taken: the byte budget is not used up (a lone exchange bigger
    /// than the budget fills it alone).
    fn bytes_room(&self) -> bool {
        let used = self.bytes.load(Ordering::SeqCst);
        used == 0 || used < self.max_bytes
    }

    /// Waits until [`Shared::bytes_room`] or `deadline`; false on the deadline.
    async fn wait_for_bytes(&self, deadline: Instant) -> bool {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        self.bytes_waiters.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.bytes_waiters);
        loop {
            let notified = self.room.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the check, so a release between the check and the wait wakes
            // it.
            notified.as_mut().enable();
            if self.bytes_room() {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.bytes_room();
            }
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

    /// Hands an exchange whose `n` bytes are already taken from the budget to `send` (a
    /// reserved slot), after noting it in the journal: noted before the send, since once
    /// sent the pipeline may already be done with it; counted on the depth before the send,
    /// since a worker may take it (and count it off) at once.
    fn hand_over(self: &Arc<Self>, exchange: Exchange, n: usize, send: impl FnOnce(Queued)) {
        let mut queued = Queued::new(exchange, n, self.clone());
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

/// Creates a queue holding at most `capacity` exchanges and `max_bytes` of captured bodies,
/// counting in `counters.queue`.
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
        counters,
        log: LogEvery::new(LOG_EVERY),
        journal,
        bytes_waiters: AtomicUsize::new(0),
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
        if !self.shared.take(n) {
            self.shared.drop_best_effort(Refusal::Bytes);
            return Err(Refusal::Bytes);
        }
        let permit = match self.tx.try_reserve() {
            Ok(permit) => permit,
            Err(e) => {
                self.shared.release(n);
                let why = match e {
                    mpsc::error::TrySendError::Full(()) => Refusal::Full,
                    mpsc::error::TrySendError::Closed(()) => Refusal::Closed,
                };
                self.shared.drop_best_effort(why);
                return Err(why);
            }
        };
        self.shared.hand_over(exchange, n, |q| permit.send(q));
        Ok(())
    }

    /// Whether a best-effort exchange should be captured at all, asked before its request goes
    /// upstream: the queue has a free slot and byte budget left now. When it has not (the queue
    /// is full, its byte budget used up, or recording stopped) the request is forwarded
    /// uncaptured and the drop is counted (`veil.exchanges.dropped` by reason) and logged as at
    /// the end: under saturation the forwarding threads spend nothing (body copies, header
    /// fingerprints, journal writes) on what recording would drop. Nothing is reserved: the
    /// exchange is offered with [`ExchangeSender::try_send`] when it ends, which may still
    /// refuse it, so a stream that lasts minutes holds no slot (a reservation held for a
    /// request's life let ~`queue_capacity` long streams make all other traffic unrecorded).
    pub fn try_admit(&self) -> Result<(), Refusal> {
        let why = if self.tx.is_closed() {
            Refusal::Closed
        } else if !self.shared.bytes_room() {
            Refusal::Bytes
        } else if self.tx.capacity() == 0 {
            Refusal::Full
        } else {
            return Ok(());
        };
        self.shared.drop_best_effort(why);
        Err(why)
    }

    /// Reserves room for one exchange before its request goes upstream (audit required),
    /// without waiting: a slot, and the promise that the byte budget is not already used up.
    /// The exchange's bytes are added when it is sent, so the queue may exceed `max_bytes` by
    /// what the requests in flight capture (each bounded by `capture_limit`). A refusal is
    /// counted in [`QueueCounters::refused`](crate::counters::QueueCounters::refused).
    /// A realtime response, which has already been answered, reserves this way.
    pub fn try_reserve(&self) -> Result<Reservation, Refusal> {
        let got = self.reserve_now();
        self.counted(got)
    }

    /// [`ExchangeSender::try_reserve`] that first waits up to `wait` for room (a slot, then
    /// the byte budget) when the queue is full: under `audit = "required"` a saturated
    /// recorder slows traffic down instead of refusing it. Requests that had to wait are
    /// counted in [`QueueCounters::waited`](crate::counters::QueueCounters::waited) and
    /// those waiting now in `waiting`; one still without room after `wait` is refused as by
    /// `try_reserve`. A closed queue refuses at once. Slots go first come, first served
    /// (tokio's channel semaphore is fair). Cancel-safe: a dropped wait holds nothing.
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
        if !self.shared.bytes_room() {
            return Err(Refusal::Bytes);
        }
        match self.tx.clone().try_reserve_owned() {
            Ok(permit) => Ok(self.reservation(permit)),
            Err(mpsc::error::TrySendError::Full(_)) => Err(Refusal::Full),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Refusal::Closed),
        }
    }

    /// Waits up to `wait` for a slot, then for the byte budget, holding the slot meanwhile.
    async fn wait_for_room(&self, wait: Duration) -> Result<Reservation, Refusal> {
        let deadline = Instant::now() + wait;
        let c = &self.shared.counters.queue;
        c.waited.inc();
        c.waiting.add(1);
        let _waiting = GaugeGuard(&c.waiting);
        let permit = match tokio::time::timeout_at(deadline, self.tx.clone().reserve_owned()).await
        {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => return Err(Refusal::Closed),
            Err(_elapsed) => return Err(Refusal::Full),
        };
        if !self.shared.wait_for_bytes(deadline).await {
            return Err(Refusal::Bytes);
        }
        // Releases also come from a closing queue dropping what it held.
        if self.tx.is_closed() {
            return Err(Refusal::Closed);
        }
        let mut reservation = self.reservation(permit);
        reservation.waited = true;
        Ok(reservation)
    }

    fn reservation(&self, permit: mpsc::OwnedPermit<Queued>) -> Reservation {
        Reservation {
            permit,
            shared: self.shared.clone(),
            waited: false,
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

/// Room for one exchange, reserved before its request went upstream (audit required).
#[derive(Debug)]
pub struct Reservation {
    permit: mpsc::OwnedPermit<Queued>,
    shared: Arc<Shared>,
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
        if self.shared.receiver_gone.load(Ordering::Acquire) {
            self.shared.refuse(
                Refusal::Closed,
                &self.shared.counters.queue.dropped_closed,
                "exchange not recorded (audit = required; its room was reserved before)",
            );
            return;
        }
        let n = size_of_exchange(&exchange);
        self.shared.bytes.fetch_add(n, Ordering::AcqRel);
        self.shared.counters.queue.bytes.add(n as u64);
        let permit = self.permit;
        self.shared.hand_over(exchange, n, |q| {
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

/// One exchange taken from the queue. Its bytes count against `queue_max_bytes` until this is
/// dropped (or [`Queued::into_exchange`] is called): hold it while processing.
pub struct Queued {
    exchange: Exchange,
    bytes: usize,
    shared: Arc<Shared>,
    slot: Option<Slot>,
}

impl Queued {
    fn new(exchange: Exchange, bytes: usize, shared: Arc<Shared>) -> Self {
        Queued {
            exchange,
            bytes,
            shared,
            slot: None,
        }
    }

    /// The exchange's journal slot, when the queue keeps a journal: mark it sealed and
    /// recorded (or dropped) as the steps finish.
    pub fn slot(&self) -> Option<Slot> {
        self.slot
    }

    /// The queue's journal, if any.
    pub fn journal(&self) -> Option<&Arc<Journal>> {
        self.shared.journal.as_ref()
    }

    /// The exchange.
    pub fn exchange(&self) -> &Exchange {
        &self.exchange
    }

    /// Releases the exchange's bytes from the budget and returns it (tests and tools that
    /// keep exchanges past processing).
    pub fn into_exchange(mut self) -> Exchange {
        std::mem::replace(&mut self.exchange, empty_exchange())
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
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.shared.release(self.bytes);
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
            scheme: String::new(),
            host: String::new(),
            port: 0,
        },
        client_version: String::new(),
        method: String::new(),
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
    /// it gets the slot a worker frees, and counts as having waited, not as refused.
    #[tokio::test]
    async fn a_reservation_waits_for_the_slot_a_worker_frees() {
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
        let _taken = rx.recv().await.unwrap();
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
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert!(!waiter.is_finished(), "the budget is still used up");
        drop(taken);
        // Woken by the release, long before its own deadline.
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("woken by the release")
            .unwrap()
            .expect("room once the bytes are released");
        assert_eq!((c.queue.waiting.get(), c.queue.refused.get()), (0, 0));
        assert_eq!(tx.shared.bytes_waiters.load(Ordering::SeqCst), 0);
    }

    /// A wait is bounded by `queue_wait`: past it the request is refused (and counted both
    /// as having waited and as refused), by whichever bound is still full.
    #[tokio::test(start_paused = true)]
    async fn a_reservation_is_refused_when_no_room_comes_in_time() {
        let (tx, mut rx) = channel(1, 10, Arc::default());
        let c = tx.counters().clone();
        tx.try_reserve().unwrap().send(exchange_of(11));
        let t = Instant::now();
        assert_eq!(
            tx.reserve(Duration::from_millis(50)).await.unwrap_err(),
            Refusal::Full
        );
        assert!(t.elapsed() >= Duration::from_millis(50));
        let _taken = rx.recv().await.unwrap();
        // A slot is free now, the byte budget is not.
        assert_eq!(
            tx.reserve(Duration::from_millis(50)).await.unwrap_err(),
            Refusal::Bytes
        );
        assert_eq!((c.queue.waited.get(), c.queue.refused.get()), (2, 2));
        assert_eq!(c.queue.waiting.get(), 0);
        // Zero waits not at all, and a closed queue refuses at once.
        assert_eq!(
            tx.reserve(Duration::ZERO).await.unwrap_err(),
            Refusal::Bytes
        );
        drop((_taken, rx));
        let t = Instant::now();
        assert_eq!(
            tx.reserve(Duration::from_secs(30)).await.unwrap_err(),
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
        until(|| tx.shared.bytes_waiters.load(Ordering::SeqCst) > 0).await;
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
        until(|| tx.shared.bytes_waiters.load(Ordering::SeqCst) > 0).await;
        // It holds the second slot while it waits for bytes.
        assert_eq!(
            tx.reserve(Duration::ZERO).await.unwrap_err(),
            Refusal::Bytes
        );
        waiter.abort();
        assert!(waiter.await.unwrap_err().is_cancelled());
        assert_eq!(c.queue.waiting.get(), 0);
        assert_eq!(tx.shared.bytes_waiters.load(Ordering::SeqCst), 0);
        drop(rx.recv().await.unwrap());
        // Both slots are free again: the aborted wait gave its slot back.
        let _a = tx.try_reserve().unwrap();
        let _b = tx.try_reserve().unwrap();
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
        let (tx, mut rx) = channel(2, 50, Arc::default());
        let counters = tx.counters().clone();
        let c = &counters.queue;
        // Asking holds no slot: any number of requests in flight may be admitted.
        for _ in 0..5 {
            tx.try_admit().unwrap();
        }
        assert_eq!((c.dropped(), c.depth.get(), c.bytes.get()), (0, 0, 0));
        tx.try_send(exchange_of(10)).unwrap();
        tx.try_send(exchange_of(10)).unwrap();
        assert_eq!(tx.try_admit().unwrap_err(), Refusal::Full);
        assert_eq!(
            (c.dropped_full.get(), c.refused.get()),
            (1, 0),
            "a drop, not a refusal"
        );
        // Admitted while there was room, refused at its end when there is none.
        drop(rx.blocking_recv().unwrap());
        tx.try_admit().unwrap();
        tx.try_send(exchange_of(30)).unwrap();
        assert_eq!(tx.try_send(exchange_of(1)), Err(Refusal::Full));
        // A free slot, but the byte budget (40 of 50 held) decides at the end...
        let held = rx.blocking_recv().unwrap();
        tx.try_admit().unwrap();
        assert_eq!(tx.try_send(exchange_of(11)), Err(Refusal::Bytes));
        // ...and at arrival once it is used up.
        tx.try_send(exchange_of(10)).unwrap();
        assert_eq!(tx.try_admit().unwrap_err(), Refusal::Bytes);
        drop(held);
        drop(rx.blocking_recv().unwrap());
        drop(rx.blocking_recv().unwrap());
        assert_eq!(c.bytes.get(), 0);
        // Recording stopped: admission is refused as a drop.
        drop(rx);
        assert_eq!(tx.try_admit().unwrap_err(), Refusal::Closed);
        assert_eq!(
            (
                c.dropped_full.get(),
                c.dropped_bytes.get(),
                c.dropped_closed.get()
            ),
            (2, 2, 1)
        );
        assert_eq!(c.refused.get(), 0);
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
        let (tx, rx) = channel_journaled(1, 50, Some(Arc::new(journal)), Arc::default());
        let before = journal_files(dir.path());
        tx.try_send(exchange_of(10)).unwrap();
        let queued = journal_files(dir.path());
        assert_ne!(queued.0, before.0, "a queued exchange is acknowledged");
        // Refused by the slot count, by the byte budget, and by a stopped recorder.
        assert_eq!(tx.try_send(exchange_of(10)), Err(Refusal::Full));
        assert_eq!(tx.try_admit().unwrap_err(), Refusal::Full);
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
