//! # The recording journal: which answered exchanges a crash left unrecorded.
//!
//! An exchange is *acknowledged* when the app has its answer and the proxy hands the exchange
//! to the recording queue; it is *recorded* when its sealed copy is committed and its record
//! is written (ledger, spool or collector). Between the two it lives only in memory (the
//! queue, the pipeline, the exporter's batch, the seal writer's group commit): a SIGKILL or a
//! power cut there loses it. The journal makes that loss countable.
//!
//! `<data>/recording.journal` is a fixed ring of [`SLOTS`] slots of 32 bytes. The hand-off
//! writes the exchange's ID into the next slot with one `pwrite` (no fsync: the page cache
//! survives a killed process; a power cut may lose the last few seconds of the journal too,
//! which the README states); the seal writer and the exporter each set one flag byte of the
//! slot when their part is durable; a counted best-effort drop sets a third. Each flag is its
//! own byte, written by one writer, so no write reads back and races another. What each slot
//! holds is also mirrored in memory (one word per slot: the sequence number of the exchange
//! that took it, and its flags), so a mark checks that its slot still holds its exchange, and
//! an acknowledge checks the slot it reuses, without reading the file: one `pwrite` per
//! acknowledge and per mark, no `pread`.
//!
//! At the next start [`Journal::open`] reads the ring left behind: every slot whose exchange
//! was acknowledged, not dropped on purpose, and not both sealed and recorded was lost in the
//! crash. They are reported (count in the log, IDs appended to `<data>/unrecorded.jsonl`) and
//! the ring starts over.
//!
//! The ring must be larger than what can be in flight at once (queue, pipeline, exporter
//! batches, pending seals): at least [`SLOTS`] (64 Ki), more when `queue_capacity` asks for
//! it ([`slots_for`]). A slot overwritten while still pending is counted in
//! [`Journal::overwritten`] and logged (the crash count is then a lower bound); a mark checks
//! the slot still holds its exchange (by sequence number), so a late mark does not land on
//! another exchange, unless the ring wraps during the mark itself, which is then counted.
//!
//! The file is locked (`flock`) for as long as the journal is open: a second veil started on
//! the same data dir fails before it reads or resets the ring of the one running.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::counters::Counter;
use crate::exchange::ExchangeId;

/// Fewest slots in the ring (2 MiB file).
pub const SLOTS: u64 = 64 * 1024;

/// Slots for a recording queue of `queue_capacity`: twice what can be in flight at once (the
/// queue, the sealed store's pending jobs, 16 Ki for the exporter's batches and queue),
/// rounded up to a power of two, at least [`SLOTS`].
pub fn slots_for(queue_capacity: usize) -> u64 {
    let in_flight = (queue_capacity as u64)
        .saturating_add(crate::seal::store::MAX_PENDING_SEALS as u64)
        .saturating_add(16 * 1024);
    in_flight.saturating_mul(2).next_power_of_two().max(SLOTS)
}

const SLOT_LEN: u64 = 32;
const HEADER_LEN: u64 = 32;
const MAGIC: &[u8; 8] = b"VEILJRN1";
/// Byte offsets of the flags inside a slot (after the 16-byte ID).
const ACKED: u64 = 16;
const SEALED: u64 = 17;
const RECORDED: u64 = 18;
const DROPPED: u64 = 19;

/// File name under the data dir.
pub const FILE: &str = "recording.journal";
/// Where the IDs of exchanges lost in a crash are appended (one JSON object per line).
pub const UNRECORDED_FILE: &str = "unrecorded.jsonl";

/// A journal slot held by one exchange on its way through recording (its index, the ID
/// written there, and the sequence number that took it, checked before every mark).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    index: u64,
    seq: u64,
    id: ExchangeId,
}

/// Low bits of a slot's in-memory mirror (see [`Journal::state`]) that hold its flags: flag
/// byte `ACKED + k` of the file is bit `k` ([`bit`]).
const F_BITS: u32 = 4;

/// The mirror's bit for the flag byte at offset `flag` (`ACKED`..=`DROPPED`).
fn bit(flag: u64) -> u64 {
    1 << (flag - ACKED)
}

/// What the previous run left unrecorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CrashReport {
    /// Acknowledged exchanges neither recorded nor dropped on purpose.
    pub lost: Vec<ExchangeId>,
    /// Of those, the ones whose sealed copy was committed (only the record is missing).
    pub sealed_only: usize,
    /// Of those, the ones whose record was written (only the sealed copy is missing).
    pub recorded_only: usize,
}

/// The journal of one running veil. Share it as `Arc<Journal>`.
#[derive(Debug)]
pub struct Journal {
    file: File,
    path: PathBuf,
    slots: u64,
    next: AtomicU64,
    /// Per slot, what this process last wrote there: `(seq + 1) << 4 | flags` ([`bit`]), 0 for
    /// a slot not used yet. The file holds the same; this copy spares a `pread` per mark.
    state: Box<[AtomicU64]>,
    /// Slots reused while their exchange was still pending (the crash count may be low).
    pub overwritten: Counter,
    /// Journal writes that failed (the crash count may be low).
    pub write_errors: Counter,
}

impl Journal {
    /// Opens `<data>/recording.journal` with `slots` slots (see [`slots_for`]), reports what
    /// a previous run left unrecorded (and appends those IDs to `<data>/unrecorded.jsonl`),
    /// and starts a fresh ring.
    ///
    /// Errors: the data dir or the journal cannot be read or written, or another process
    /// holds the journal (`ErrorKind::WouldBlock`: a veil already runs on this data dir).
    pub fn open(data: &Path, slots: u64) -> io::Result<(Journal, CrashReport)> {
        use std::io::Read;
        let path = data.join(FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        // Held until the journal is dropped: the lock is what makes reading and resetting the
        // ring safe.
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).map_err(
            |e| {
                io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "{} is in use by another process (is a veil already running with this data dir?): {e}",
                        path.display()
                    ),
                )
            },
        )?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let report = read_ring(&bytes);
        if !report.lost.is_empty() {
            append_unrecorded(&data.join(UNRECORDED_FILE), &report.lost)?;
        }
        let slots = slots.max(1);
        file.set_len(0)?;
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&slots.to_le_bytes());
        file.write_all_at(&header, 0)?;
        file.set_len(HEADER_LEN + slots * SLOT_LEN)?;
        file.sync_all()?;
        Ok((
            Journal {
                file,
                path,
                slots,
                next: AtomicU64::new(0),
                state: (0..slots).map(|_| AtomicU64::new(0)).collect(),
                overwritten: Counter::default(),
                write_errors: Counter::default(),
            },
            report,
        ))
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Notes that `id` was acknowledged and handed to recording; returns its slot. One
    /// `pwrite` of 32 bytes.
    pub fn acknowledge(&self, id: ExchangeId) -> Slot {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Slot {
            index: seq % self.slots,
            seq,
            id,
        };
        let at = offset(slot);
        // From here on a late mark of the slot's previous exchange finds another sequence
        // number and leaves the slot alone.
        let old = self.state[slot.index as usize].swap(tag(seq) | bit(ACKED), Ordering::AcqRel);
        if old != 0 {
            let set = |flag| old & bit(flag) != 0;
            if is_lost_by(set) && self.overwritten.inc() == 1 {
                tracing::warn!(
                    path = %self.path.display(),
                    slots = self.slots,
                    "recording journal wrapped over exchanges still being recorded: a crash count would be low (raise queue_capacity's journal or lower the load)"
                );
            }
        }
        let mut buf = [0u8; SLOT_LEN as usize];
        buf[..16].copy_from_slice(id.as_bytes());
        buf[ACKED as usize] = 1;
        self.write(&buf, at);
        slot
    }

    /// Notes that `slot`'s sealed copy is committed.
    pub fn sealed(&self, slot: Slot) {
        self.mark(slot, SEALED);
    }

    /// Notes that `slot`'s record is written (ledger, spool or collector).
    pub fn recorded(&self, slot: Slot) {
        self.mark(slot, RECORDED);
    }

    /// Notes that `slot` was dropped on purpose (best-effort, counted where it was dropped),
    /// so a crash does not report it again.
    pub fn dropped(&self, slot: Slot) {
        self.mark(slot, DROPPED);
    }

    /// Sets one flag byte of `slot`, if the slot still holds `slot`'s exchange (a ring that
    /// wrapped has given it to another one; its mark must not land there). The check is on
    /// the in-memory mirror, and the mirror's bit is set only after the file's byte: a wrap
    /// between the check and the write can still put the flag on the new exchange in the
    /// file, but then the acknowledge that took the slot saw this exchange's flag unset and
    /// counted it in [`Journal::overwritten`] (the crash count may be low), as when the
    /// check read the file.
    fn mark(&self, slot: Slot, flag: u64) {
        let cell = &self.state[slot.index as usize];
        let mine = |v: u64| v >> F_BITS == tag(slot.seq) >> F_BITS;
        let mut v = cell.load(Ordering::Acquire);
        if !mine(v) {
            return;
        }
        self.write(&[1], offset(slot) + flag);
        loop {
            if !mine(v) {
                return;
            }
            match cell.compare_exchange_weak(v, v | bit(flag), Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return,
                Err(now) => v = now,
            }
        }
    }

    fn write(&self, buf: &[u8], at: u64) {
        if let Err(e) = self.file.write_all_at(buf, at)
            && self.write_errors.inc() == 1
        {
            tracing::warn!(path = %self.path.display(), error = %e, "recording journal write failed; a crash count may be low");
        }
    }
}

impl PartialEq for Journal {
    /// The same journal file.
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
    }
}

/// The high bits of a slot's in-memory state for sequence number `seq` (never 0).
fn tag(seq: u64) -> u64 {
    (seq + 1) << F_BITS
}

fn offset(slot: Slot) -> u64 {
    HEADER_LEN + slot.index * SLOT_LEN
}

fn is_lost(slot: &[u8]) -> bool {
    is_lost_by(|flag| slot[flag as usize] == 1)
}

/// Whether an exchange whose flag byte at offset `flag` is set when `set(flag)` was lost:
/// acknowledged, not dropped on purpose, and not both sealed and recorded. One rule for the
/// file (at the next start) and the in-memory mirror (when a slot is reused).
fn is_lost_by(set: impl Fn(u64) -> bool) -> bool {
    set(ACKED) && !set(DROPPED) && (!set(SEALED) || !set(RECORDED))
}

fn read_ring(bytes: &[u8]) -> CrashReport {
    let mut report = CrashReport::default();
    if bytes.len() < HEADER_LEN as usize || &bytes[..8] != MAGIC {
        return report;
    }
    for slot in bytes[HEADER_LEN as usize..].chunks_exact(SLOT_LEN as usize) {
        if !is_lost(slot) {
            continue;
        }
        let id = ExchangeId::from_bytes(slot[..16].try_into().expect("16 bytes"));
        report.lost.push(id);
        match (slot[SEALED as usize], slot[RECORDED as usize]) {
            (1, _) => report.sealed_only += 1,
            (_, 1) => report.recorded_only += 1,
            _ => {}
        }
    }
    // UUIDv7: creation order.
    report.lost.sort();
    report
}

fn append_unrecorded(path: &Path, lost: &[ExchangeId]) -> io::Result<()> {
    use std::io::Write;
    let mut lines = String::new();
    for id in lost {
        lines.push_str(&serde_json::json!({ "request_id": id.to_string(), "cause": "veil stopped before recording it (crash or kill)" }).to_string());
        lines.push('\n');
    }
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(lines.as_bytes())?;
    f.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_reports_what_was_acknowledged_but_not_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let (j, report) = Journal::open(dir.path(), SLOTS).unwrap();
        assert!(report.lost.is_empty());
        let ids: Vec<ExchangeId> = (0..5).map(|_| ExchangeId::new()).collect();
        let slots: Vec<Slot> = ids.iter().map(|id| j.acknowledge(*id)).collect();
        // 0: fully recorded. 1: sealed only. 2: recorded only. 3: nothing. 4: dropped.
        j.sealed(slots[0]);
        j.recorded(slots[0]);
        j.sealed(slots[1]);
        j.recorded(slots[2]);
        j.dropped(slots[4]);
        drop(j); // as a SIGKILL would leave it: no shutdown step
        let (j2, report) = Journal::open(dir.path(), SLOTS).unwrap();
        assert_eq!(report.lost, vec![ids[1], ids[2], ids[3]]);
        assert_eq!((report.sealed_only, report.recorded_only), (1, 1));
        let unrecorded = std::fs::read_to_string(dir.path().join(UNRECORDED_FILE)).unwrap();
        assert_eq!(unrecorded.lines().count(), 3);
        assert!(unrecorded.contains(&ids[3].to_string()));
        drop(j2);
        // The ring started over: a clean restart reports nothing new.
        let (_, report) = Journal::open(dir.path(), SLOTS).unwrap();
        assert!(report.lost.is_empty());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_reused_slot_still_pending_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), SLOTS).unwrap();
        let first = j.acknowledge(ExchangeId::new());
        for _ in 1..SLOTS {
            let s = j.acknowledge(ExchangeId::new());
            j.dropped(s);
        }
        assert_eq!(j.overwritten.get(), 0);
        let again = j.acknowledge(ExchangeId::new());
        assert_eq!(again.index, first.index);
        assert_eq!(
            j.overwritten.get(),
            1,
            "the first exchange was still pending"
        );
    }

    #[test]
    fn a_late_mark_never_lands_on_the_exchange_that_took_its_slot() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), 2).unwrap();
        let a = j.acknowledge(ExchangeId::new());
        let b = j.acknowledge(ExchangeId::new());
        j.dropped(b);
        let c = j.acknowledge(ExchangeId::new()); // the ring wrapped: c took a's slot
        assert_eq!(j.overwritten.get(), 1, "a was still pending");
        j.sealed(a);
        j.recorded(a); // too late for a; must not mark c
        drop(j);
        let (_, report) = Journal::open(dir.path(), 2).unwrap();
        assert_eq!(report.lost, vec![c.id], "c was never recorded");
    }

    #[test]
    fn a_second_veil_on_the_same_data_dir_cannot_open_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), SLOTS).unwrap();
        let pending = j.acknowledge(ExchangeId::new());
        let err = Journal::open(dir.path(), SLOTS).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock, "{err}");
        assert!(err.to_string().contains("in use"), "{err}");
        assert!(
            !dir.path().join(UNRECORDED_FILE).exists(),
            "the running veil's in-flight exchange was not reported as lost"
        );
        drop(j);
        let (_, report) = Journal::open(dir.path(), SLOTS).unwrap();
        assert_eq!(report.lost, vec![pending.id]);
    }

    #[test]
    fn the_ring_grows_with_the_queue() {
        assert_eq!(
            slots_for(4096),
            SLOTS,
            "the default queue fits the smallest ring"
        );
        assert!(slots_for(1 << 20) >= 4 << 20);
    }

    #[test]
    fn a_foreign_or_torn_file_reports_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"not a journal").unwrap();
        let (_, report) = Journal::open(dir.path(), SLOTS).unwrap();
        assert!(report.lost.is_empty());
    }
}
