//! # Exporter handle: the pipeline's side of the export queue.
//!
//! Where a [`Record`] enters export: pipeline workers (and the admin server, for audit
//! events) hold a cloneable [`ExporterHandle`] and queue items that the batcher
//! (`export::batcher`) drains. `try_send` never waits and gives the record back when the
//! queue is full; `send_blocking` waits (audit required) and is for OS threads only. A
//! pipeline worker holding a group of records hands the whole group over as one item
//! ([`ExporterHandle::try_send_group`], [`ExporterHandle::send_group_blocking`]): every item
//! wakes the batcher's thread when it sleeps, and one wake-up per group instead of one per
//! record was ~9 µs of CPU per exchange across the two threads at saturation (veil#18).
//!
//! The queue is bounded in records, not items ([`Room`]): a group of 16 takes 16 places, so
//! grouping does not let 16 times more records wait in memory.
//!
//! Owns: the queue's sending side, its bound, and the shape of its items. Never encodes,
//! sends or counts a drop itself (the caller decides what a full queue means).

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot};

use super::erase::{Erased, Targets};
use super::{AuditEvent, FeedbackEvent};
use crate::counters::Counters;
use crate::journal::Slot;
use crate::record::Record;

/// A record and the journal slot of its exchange, when it has one (marked recorded once the
/// record is durable).
pub type Journaled = (Record, Option<Slot>);

/// What travels from the pipeline to the batcher.
pub(super) enum Item {
    /// Records, in the order their exchanges were processed (one or a worker's group).
    Records(Vec<Journaled>),
    Audit(AuditEvent),
    /// A feedback's `gen_ai.evaluation.result` log record.
    Feedback(Box<FeedbackEvent>),
    /// A forget: erase these targets from the spool and records files, answer with what was.
    Erase(Box<Targets>, oneshot::Sender<Erased>),
}

impl Item {
    /// The places the item takes in the queue's bound: one per record or event. An erase
    /// takes none: it is rare, small, and must not wait behind a full queue of records.
    pub(super) fn places(&self) -> usize {
        match self {
            Item::Records(r) => r.len(),
            Item::Audit(_) | Item::Feedback(_) => 1,
            Item::Erase(..) => 0,
        }
    }
}

/// The export queue's bound: at most `capacity` records and events queued and not yet taken
/// by the batcher. A place is taken before an item is sent and given back when the batcher
/// receives it (as a bounded channel's permit would be), so the bound holds whatever the
/// items' sizes. Closed when the batcher's receiver is gone: every taker then fails.
#[derive(Debug)]
pub(super) struct Room {
    state: Mutex<RoomState>,
    /// Signalled when places are given back or the room closes, only if someone waits.
    freed: Condvar,
    capacity: usize,
}

#[derive(Debug, Default)]
struct RoomState {
    used: usize,
    waiting: usize,
    closed: bool,
}

impl Room {
    fn new(capacity: usize) -> Room {
        Room {
            state: Mutex::default(),
            freed: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RoomState> {
        // The state is three integers updated in one statement each: a panic cannot leave
        // them half-updated, so a poisoned lock is still right.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes up to `n` places without waiting: how many were taken (0 when the queue is
    /// full), or `None` once closed.
    fn try_take(&self, n: usize) -> Option<usize> {
        let mut s = self.lock();
        if s.closed {
            return None;
        }
        let k = n.min(self.capacity - s.used);
        s.used += k;
        Some(k)
    }

    /// Takes between 1 and `n` (≥ 1) places, waiting while the queue is full; `None` once
    /// closed. Taking what is free rather than waiting for all `n` means a group larger than
    /// the whole bound still goes, in parts.
    fn take(&self, n: usize) -> Option<usize> {
        let mut s = self.lock();
        loop {
            if s.closed {
                return None;
            }
            let free = self.capacity - s.used;
            if free > 0 {
                let k = n.min(free);
                s.used += k;
                return Some(k);
            }
            s.waiting += 1;
            s = self.freed.wait(s).unwrap_or_else(|e| e.into_inner());
            s.waiting -= 1;
        }
    }

    /// Gives `n` places back.
    fn give(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut s = self.lock();
        s.used = s.used.saturating_sub(n);
        let wake = s.waiting > 0;
        drop(s);
        if wake {
            self.freed.notify_all();
        }
    }

    fn close(&self) {
        self.lock().closed = true;
        self.freed.notify_all();
    }

    fn used(&self) -> usize {
        self.lock().used
    }
}

/// The batcher's side of the queue: gives each item's places back as it is received, and
/// closes the bound when dropped (a sender waiting for room then fails as closed).
pub(super) struct ItemReceiver {
    rx: mpsc::UnboundedReceiver<Item>,
    room: Arc<Room>,
}

impl ItemReceiver {
    /// The next item; `None` once every sender is gone. Cancel-safe, as the channel's own
    /// `recv` (the places are given back in the poll that returns the item).
    pub(super) async fn recv(&mut self) -> Option<Item> {
        let item = self.rx.recv().await?;
        self.room.give(item.places());
        Some(item)
    }

    /// The next item if one is queued.
    pub(super) fn try_recv(&mut self) -> Result<Item, mpsc::error::TryRecvError> {
        let item = self.rx.try_recv()?;
        self.room.give(item.places());
        Ok(item)
    }

    /// Refuses new items (senders fail as closed); what is queued can still be received.
    pub(super) fn close(&mut self) {
        self.rx.close();
        self.room.close();
    }
}

impl Drop for ItemReceiver {
    fn drop(&mut self) {
        self.room.close();
    }
}

/// A new export queue bounded at `capacity` records and events (at least 1).
pub(super) fn queue(capacity: usize, counters: Arc<Counters>) -> (ExporterHandle, ItemReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let room = Arc::new(Room::new(capacity));
    (
        ExporterHandle {
            tx,
            room: room.clone(),
            counters,
            content_trees: true,
        },
        ItemReceiver { rx, room },
    )
}

/// Why [`ExporterHandle::try_send`] refused an item; the item comes back.
#[derive(Debug)]
pub struct TrySendError<T> {
    /// Boxed: a `Record` is large, and the error path should not copy it around.
    item: Box<T>,
    closed: bool,
}

impl<T> TrySendError<T> {
    /// True when the queue was full (the exporter is behind); false when it is shut down.
    pub fn is_full(&self) -> bool {
        !self.closed
    }

    /// True when the exporter has shut down.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// The refused item.
    pub fn into_inner(self) -> T {
        *self.item
    }

    fn new(item: T, closed: bool) -> Self {
        TrySendError {
            item: Box::new(item),
            closed,
        }
    }

    fn map<U>(self, f: impl FnOnce(T) -> U) -> TrySendError<U> {
        TrySendError::new(f(*self.item), self.closed)
    }
}

impl<T> fmt::Display for TrySendError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.closed {
            f.write_str("exporter is shut down")
        } else {
            f.write_str("export queue is full")
        }
    }
}

impl<T: fmt::Debug> std::error::Error for TrySendError<T> {}

/// A one-record group's refusal as the refusal of that record.
fn the_one(e: TrySendError<Vec<Journaled>>) -> TrySendError<Record> {
    e.map(|mut g| g.pop().expect("invariant: the record came back").0)
}

/// The cheap, cloneable side the pipeline holds: queue records and audit events, reach the
/// counters. Never waits, apart from the `_blocking` sends.
#[derive(Clone)]
pub struct ExporterHandle {
    tx: mpsc::UnboundedSender<Item>,
    room: Arc<Room>,
    pub(super) counters: Arc<Counters>,
    /// Whether a sink reads a record's content trees (see
    /// [`ExporterHandle::reads_content_trees`]); true unless the exporter says otherwise.
    pub(super) content_trees: bool,
}

impl fmt::Debug for ExporterHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExporterHandle")
            .field("queued", &self.room.used())
            .finish()
    }
}

impl ExporterHandle {
    /// Whether this exporter reads records' content as JSON trees (`input_messages` and the
    /// like): only OTLP log events do, whose body is the content as a structured value, and
    /// they leave only when the logs signal goes somewhere (a collector or records files).
    /// When false, the pipeline frees the trees once their text is made
    /// ([`Record::shed_content_trees`]): the ledger and spans read the text.
    pub fn reads_content_trees(&self) -> bool {
        self.content_trees
    }

    /// Queues one record without waiting. On a full queue the record comes back in the
    /// error and nothing is counted: the caller decides (count it in
    /// `pipeline.export_dropped` of the
    /// [`Counters`], or refuse the request under `audit = "required"`).
    pub fn try_send(&self, record: Record) -> Result<(), TrySendError<Record>> {
        self.try_send_journaled(record, None)
    }

    /// [`ExporterHandle::try_send`] for a record whose exchange holds journal slot `slot`:
    /// the slot is marked recorded once the record is durable.
    pub fn try_send_journaled(
        &self,
        record: Record,
        slot: Option<Slot>,
    ) -> Result<(), TrySendError<Record>> {
        self.try_send_group(vec![(record, slot)]).map_err(the_one)
    }

    /// Queues a group of records as one item, without waiting. As many as there is room for
    /// are queued, in order; the error gives back the rest (the group's last records), with
    /// whether the queue was full or the exporter shut down.
    pub fn try_send_group(
        &self,
        mut group: Vec<Journaled>,
    ) -> Result<(), TrySendError<Vec<Journaled>>> {
        let refused = TrySendError::new;
        if group.is_empty() {
            return Ok(());
        }
        let Some(k) = self.room.try_take(group.len()) else {
            return Err(refused(group, true));
        };
        if k == 0 {
            return Err(refused(group, false));
        }
        let rest = group.split_off(k);
        if let Err(sent) = self.send_taken(group) {
            let mut all = sent;
            all.extend(rest);
            return Err(refused(all, true));
        }
        if rest.is_empty() {
            Ok(())
        } else {
            Err(refused(rest, false))
        }
    }

    /// Queues one record, waiting for room (audit required: the pipeline must not drop what
    /// the proxy admitted). Call from an OS thread, never from inside the async runtime.
    /// Fails only when the exporter has shut down.
    pub fn send_blocking(
        &self,
        record: Record,
        slot: Option<Slot>,
    ) -> Result<(), TrySendError<Record>> {
        self.send_group_blocking(vec![(record, slot)])
            .map_err(the_one)
    }

    /// Queues a group of records, waiting for room: as one item when the whole group fits,
    /// else in parts as places free up (a group larger than the whole bound still goes). Call
    /// from an OS thread, never from inside the async runtime. Fails only when the exporter
    /// has shut down; the error gives back the records not queued.
    pub fn send_group_blocking(
        &self,
        mut group: Vec<Journaled>,
    ) -> Result<(), TrySendError<Vec<Journaled>>> {
        while !group.is_empty() {
            let Some(k) = self.room.take(group.len()) else {
                return Err(TrySendError::new(group, true));
            };
            let rest = group.split_off(k);
            if let Err(mut sent) = self.send_taken(std::mem::replace(&mut group, rest)) {
                sent.append(&mut group);
                return Err(TrySendError::new(sent, true));
            }
        }
        Ok(())
    }

    /// Sends records whose places are taken; on a closed channel gives the places back and
    /// returns the records.
    fn send_taken(&self, group: Vec<Journaled>) -> Result<(), Vec<Journaled>> {
        let bytes: u64 = group.iter().map(|(r, _)| r.wire_bytes()).sum();
        let n = group.len();
        // Counted before the send, so the batcher's release can never come first.
        self.counters.export.unwritten_bytes.add(bytes);
        self.tx.send(Item::Records(group)).map_err(|e| {
            self.counters.export.unwritten_bytes.sub(bytes);
            self.room.give(n);
            match e.0 {
                Item::Records(g) => g,
                _ => unreachable!("invariant: records were sent"),
            }
        })
    }

    /// Sends one event (one place) without waiting; a refusal gives it back.
    fn try_send_one(&self, item: Item) -> Result<(), TrySendError<Item>> {
        let refused = TrySendError::new;
        match self.room.try_take(1) {
            None => return Err(refused(item, true)),
            Some(0) => return Err(refused(item, false)),
            Some(_) => {}
        }
        self.tx.send(item).map_err(|e| {
            self.room.give(1);
            refused(e.0, true)
        })
    }

    /// Queues one audit event without waiting, as an OTLP log record.
    pub fn try_send_audit(&self, event: AuditEvent) -> Result<(), TrySendError<AuditEvent>> {
        self.try_send_one(Item::Audit(event)).map_err(|e| {
            e.map(|item| match item {
                Item::Audit(a) => a,
                _ => unreachable!("invariant: an audit event was sent"),
            })
        })
    }

    /// Queues one feedback event without waiting, as an OTLP log record. A full queue gives
    /// it back (the feedback API still has the ledger row; it logs the miss).
    pub fn try_send_feedback(
        &self,
        event: FeedbackEvent,
    ) -> Result<(), TrySendError<FeedbackEvent>> {
        self.try_send_one(Item::Feedback(Box::new(event)))
            .map_err(|e| {
                e.map(|item| match item {
                    Item::Feedback(f) => *f,
                    _ => unreachable!("invariant: a feedback event was sent"),
                })
            })
    }

    /// Erases `targets` (forgotten request ids and user pseudonyms) from the spool and the
    /// records files, coordinated with the exporter's tasks: the batch being gathered is
    /// flushed first, then each signal's delivery task runs the erase between two sends of
    /// its own (see [`super::erase`]). Queued without waiting for room (an erase takes no
    /// place in the queue's bound), then waits for the answer.
    ///
    /// Errors: `None` when the exporter has shut down (nothing erased by it; `veil forget`
    /// with veil stopped erases the files itself).
    pub async fn erase(&self, targets: Targets) -> Option<Erased> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Item::Erase(Box::new(targets), tx)).ok()?;
        rx.await.ok()
    }

    /// The registry the exporter counts in (its `export` section).
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }

    /// A handle whose exporter has shut down: every send is refused as closed. For tests of
    /// what callers do with a refusal, without starting an exporter.
    #[cfg(test)]
    pub(crate) fn shut_down() -> ExporterHandle {
        queue(1, Arc::default()).0
    }
}

/// The receiving side of an [`ExporterHandle::for_tests`] queue.
#[cfg(test)]
pub(crate) struct TestQueue {
    rx: ItemReceiver,
    /// Records of a group received and not yet returned.
    pending: std::collections::VecDeque<Record>,
    /// Items received, counting a group as one.
    pub(crate) items: usize,
}

#[cfg(test)]
impl ExporterHandle {
    /// This handle as an exporter whose sinks read no content trees would hand it out (no
    /// OTLP logs): the pipeline then frees them ([`Record::shed_content_trees`]).
    pub(crate) fn without_content_trees(mut self) -> Self {
        self.content_trees = false;
        self
    }

    /// A handle on a bare queue of `capacity` places that the test reads, with no batcher.
    pub(crate) fn for_tests(capacity: usize, counters: Arc<Counters>) -> (Self, TestQueue) {
        let (handle, rx) = queue(capacity, counters);
        (
            handle,
            TestQueue {
                rx,
                pending: Default::default(),
                items: 0,
            },
        )
    }
}

#[cfg(test)]
impl TestQueue {
    /// The next queued record's request id, waiting up to `wait` for it.
    pub(crate) fn next_record(&mut self, wait: std::time::Duration) -> Option<String> {
        self.next_full(wait).map(|r| r.request_id)
    }

    /// The next queued record, waiting up to `wait` for it.
    pub(crate) fn next_full(&mut self, wait: std::time::Duration) -> Option<Record> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            if let Some(r) = self.pending.pop_front() {
                return Some(r);
            }
            match self.rx.try_recv() {
                Ok(Item::Records(g)) => {
                    self.items += 1;
                    self.pending.extend(g.into_iter().map(|(r, _)| r));
                }
                Ok(_) => continue,
                Err(mpsc::error::TryRecvError::Disconnected) => return None,
                Err(mpsc::error::TryRecvError::Empty) if std::time::Instant::now() >= deadline => {
                    return None;
                }
                Err(mpsc::error::TryRecvError::Empty) => {
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
    }

    /// Closes the queue as a shut-down exporter would (senders fail as closed).
    pub(crate) fn close(&mut self) {
        self.rx.close();
    }
}
