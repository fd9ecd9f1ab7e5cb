//! # Exporter handle: the pipeline's side of the export queue.
//!
//! Where a [`Record`] enters export: pipeline workers (and the admin server, for audit
//! events) hold a cloneable [`ExporterHandle`] and queue items on a bounded channel that the
//! batcher (`export::batcher`) drains. `try_send` never waits and gives the record back when
//! the queue is full; `send_blocking` waits (audit required) and is for OS threads only.
//!
//! Owns: the queue's sending side and the shape of its items. Never encodes, sends or
//! counts a drop itself (the caller decides what a full queue means).

use std::fmt;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::erase::{Erased, Targets};
use super::{AuditEvent, FeedbackEvent};
use crate::counters::Counters;
use crate::journal::Slot;
use crate::record::Record;

/// What travels from the pipeline to the batcher.
pub(super) enum Item {
    /// A record, with the journal slot of its exchange when it has one.
    Record(Box<Record>, Option<Slot>),
    Audit(AuditEvent),
    /// A feedback's `gen_ai.evaluation.result` log record.
    Feedback(Box<FeedbackEvent>),
    /// A forget: erase these targets from the spool and records files, answer with what was.
    Erase(Box<Targets>, oneshot::Sender<Erased>),
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

/// The cheap, cloneable side the pipeline holds: queue records and audit events, reach the
/// counters. Never waits.
#[derive(Clone)]
pub struct ExporterHandle {
    pub(super) tx: mpsc::Sender<Item>,
    pub(super) counters: Arc<Counters>,
}

impl fmt::Debug for ExporterHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExporterHandle")
            .field("queued", &(self.tx.max_capacity() - self.tx.capacity()))
            .finish()
    }
}

impl ExporterHandle {
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
        let bytes = record.wire_bytes();
        // Counted before the send, so the batcher's release can never come first.
        self.counters.export.unwritten_bytes.add(bytes);
        self.tx
            .try_send(Item::Record(Box::new(record), slot))
            .map_err(|e| {
                self.counters.export.unwritten_bytes.sub(bytes);
                match e {
                    mpsc::error::TrySendError::Full(Item::Record(r, _)) => TrySendError {
                        item: r,
                        closed: false,
                    },
                    mpsc::error::TrySendError::Closed(Item::Record(r, _)) => TrySendError {
                        item: r,
                        closed: true,
                    },
                    _ => unreachable!("invariant: a record was sent"),
                }
            })
    }

    /// Queues one record, waiting for room (audit required: the pipeline must not drop what
    /// the proxy admitted). Call from an OS thread, never from inside the async runtime.
    /// Fails only when the exporter has shut down.
    pub fn send_blocking(
        &self,
        record: Record,
        slot: Option<Slot>,
    ) -> Result<(), TrySendError<Record>> {
        let bytes = record.wire_bytes();
        self.counters.export.unwritten_bytes.add(bytes);
        self.tx
            .blocking_send(Item::Record(Box::new(record), slot))
            .map_err(|e| match e.0 {
                Item::Record(r, _) => TrySendError {
                    item: {
                        self.counters.export.unwritten_bytes.sub(bytes);
                        r
                    },
                    closed: true,
                },
                _ => unreachable!("invariant: a record was sent"),
            })
    }

    /// Queues one audit event without waiting, as an OTLP log record.
    pub fn try_send_audit(&self, event: AuditEvent) -> Result<(), TrySendError<AuditEvent>> {
        self.tx.try_send(Item::Audit(event)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(Item::Audit(a)) => TrySendError {
                item: Box::new(a),
                closed: false,
            },
            mpsc::error::TrySendError::Closed(Item::Audit(a)) => TrySendError {
                item: Box::new(a),
                closed: true,
            },
            _ => unreachable!("invariant: an audit event was sent"),
        })
    }

    /// Queues one feedback event without waiting, as an OTLP log record. A full queue gives
    /// it back (the feedback API still has the ledger row; it logs the miss).
    pub fn try_send_feedback(
        &self,
        event: FeedbackEvent,
    ) -> Result<(), TrySendError<FeedbackEvent>> {
        self.tx
            .try_send(Item::Feedback(Box::new(event)))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(Item::Feedback(f)) => TrySendError {
                    item: f,
                    closed: false,
                },
                mpsc::error::TrySendError::Closed(Item::Feedback(f)) => TrySendError {
                    item: f,
                    closed: true,
                },
                _ => unreachable!("invariant: a feedback event was sent"),
            })
    }

    /// Erases `targets` (forgotten request ids and user pseudonyms) from the spool and the
    /// records files, coordinated with the exporter's tasks: the batch being gathered is
    /// flushed first, then each signal's delivery task runs the erase between two sends of
    /// its own (see [`super::erase`]). Waits for room in the queue and for the answer.
    ///
    /// Errors: `None` when the exporter has shut down (nothing erased by it; `veil forget`
    /// with veil stopped erases the files itself).
    pub async fn erase(&self, targets: Targets) -> Option<Erased> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Item::Erase(Box::new(targets), tx))
            .await
            .ok()?;
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
        let (tx, _) = mpsc::channel(1);
        ExporterHandle {
            tx,
            counters: Arc::default(),
        }
    }
}

/// The receiving side of an [`ExporterHandle::for_tests`] queue.
#[cfg(test)]
pub(crate) struct TestQueue(mpsc::Receiver<Item>);

#[cfg(test)]
impl ExporterHandle {
    /// A handle on a bare queue of `capacity` items that the test reads, with no batcher.
    pub(crate) fn for_tests(capacity: usize, counters: Arc<Counters>) -> (Self, TestQueue) {
        let (tx, rx) = mpsc::channel(capacity);
        (ExporterHandle { tx, counters }, TestQueue(rx))
    }
}

#[cfg(test)]
impl TestQueue {
    /// The next queued record's request id, waiting up to `wait` for it.
    pub(crate) fn next_record(&mut self, wait: std::time::Duration) -> Option<String> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            match self.0.try_recv() {
                Ok(Item::Record(r, _)) => return Some(r.request_id),
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
}
