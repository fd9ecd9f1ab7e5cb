//! # The recording journal: which answered exchanges a crash left unrecorded.
//!
//! An exchange is *acknowledged* when the app has its answer and the proxy hands the exchange
//! to the recording queue; it is *recorded* when its sealed copy is committed and its record
//! is written (ledger, spool or collector). Between the two it lives only in memory (the
//! queue, the pipeline, the exporter's batch, the seal writer's group commit): a SIGKILL or a
//! power cut there loses it. The journal makes that loss countable.
//!
//! `<data>/recording.journal` is a fixed ring of [`SLOTS`] slots of 32 bytes. The hand-off
//! writes the exchange's ID and its sequence number into the next slot with one `pwrite` (no
//! fsync: the page cache survives a killed process; a power cut may lose the last few seconds
//! of the journal too, which the README states). The marks go to `<data>/recording.marks`, three
//! rings of 8-byte entries, one per mark, each as long as the journal's: the seal writer and
//! the exporter each write the sequence number of the exchange whose part is durable into its
//! slot's entry of their own ring; a counted best-effort drop writes the third. A ring of its
//! own per mark puts the marks of consecutive slots next to each other, so a batch made
//! durable together (a seal writer's group commit, an exporter's batch) is marked with one
//! `pwrite` per run of consecutive slots ([`Journal::sealed_all`], [`Journal::recorded_all`])
//! instead of one per exchange (a tenth of the seal writer's CPU at 8 connections, stop 42);
//! a drop outside a batch is one `pwrite`. A mark counts only where it matches the sequence
//! number in the journal's slot, so an acknowledge never has to clear the marks of the
//! exchange that had the slot before. No write reads back: a journal slot has one writer, a
//! mark's entry is written whole with its own sequence number (several threads may drop, but
//! an exchange is dropped once; see below for a mark late by a whole ring). What each slot
//! holds is also mirrored in memory (one word per slot: the sequence number of the exchange
//! that took it, and its flags), so a mark checks that its slot still holds its exchange, and
//! an acknowledge checks the slot it reuses, without reading a file: one `pwrite` per
//! acknowledge and per run of marks, no `pread`.
//!
//! Why two files: a write takes its file's inode lock. With one file, a forwarding thread's
//! acknowledge waited for a recording thread's mark, and recording runs at a lower priority
//! (best-effort), so the mark's thread could be preempted holding the lock: 287 of the
//! forwarding threads' acknowledges took over 0.15 ms in 45 s at one connection, up to 17.7 ms
//! (`perf trace --duration 0.15`, stop 39). Now the forwarding threads share a lock only with
//! each other.
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
//! the slot still holds its exchange (by sequence number) and writes nothing otherwise. If
//! the ring wraps during the mark itself, the mark lands in the slot but carries its own
//! sequence number, so it never counts for the new exchange; it can erase a mark the new
//! exchange had written there, which then counts it as lost too (errs high).
//!
//! The journal is locked (`flock`) for as long as it is open, and the lock guards the marks
//! too: a second veil started on the same data dir fails before it reads or resets either
//! ring of the one running.
//!
//! Versions: a journal written before the marks had their own file (magic `VEILJRN1`, flag
//! bytes in its slots) is read once after an upgrade, and so are marks written before they
//! had a ring each (magic `VEILJRM1`: the three marks side by side in a 32-byte slot). The
//! other way round does not work: a veil from before either change reads the newer file as
//! foreign; an older journal reader reports nothing and starts over, an older marks reader
//! counts every acknowledged exchange of the ring as lost, so a crash followed by a
//! downgrade is miscounted once.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::counters::Counter;
use crate::exchange::ExchangeId;

/// Fewest slots in the ring (a 2 MiB journal and 1.5 MiB of marks).
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
/// The journal's header: this magic, then the slot count (u64, little-endian).
const MAGIC: &[u8; 8] = b"VEILJRN2";
/// The journal of veils before stop 39: the marks were flag bytes in the journal's own slots
/// (at the offsets of the flags below). Still read at start, once, after an upgrade.
const MAGIC_V1: &[u8; 8] = b"VEILJRN1";
/// The marks' header: this magic, then the slot count, as the journal's. Then one ring per
/// mark (sealed, recorded, dropped, in that order), each of `slots` entries of 8 bytes: the
/// sequence number + 1 (u64, little-endian) of the exchange marked in that slot.
const MARKS_MAGIC: &[u8; 8] = b"VEILJRM2";
/// The marks of stops 39-41, read once after an upgrade: slots of 32 bytes as the journal's,
/// each holding the three marks side by side at `(flag - SEALED) * 8`.
const MARKS_MAGIC_V1: &[u8; 8] = b"VEILJRM1";
/// Length of one mark's entry in its ring.
const MARK_LEN: u64 = 8;
/// The flags: byte offsets inside a journal slot (after the 16-byte ID) of the acknowledge
/// (both versions) and of the marks (journal version 1 only).
const ACKED: u64 = 16;
const SEALED: u64 = 17;
const RECORDED: u64 = 18;
const DROPPED: u64 = 19;
/// Offset inside a journal slot of its exchange's sequence number + 1 (u64, little-endian).
const SEQ: usize = 24;

/// File name under the data dir.
pub const FILE: &str = "recording.journal";
/// File name of the marks under the data dir.
pub const MARKS_FILE: &str = "recording.marks";
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
/// `ACKED + k` is bit `k` ([`bit`]).
const F_BITS: u32 = 4;

/// The mirror's bit for flag `flag` (`ACKED`..=`DROPPED`).
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
    /// Written by the forwarding threads (acknowledges) alone.
    file: File,
    /// Written by the recording threads (marks) alone.
    marks: File,
    path: PathBuf,
    marks_path: PathBuf,
    slots: u64,
    next: AtomicU64,
    /// Per slot, what this process last wrote there: `(seq + 1) << 4 | flags` ([`bit`]), 0 for
    /// a slot not used yet. The journal and the marks hold the same; this copy spares a
    /// `pread` per mark.
    state: Box<[AtomicU64]>,
    /// Slots reused while their exchange was still pending (the crash count may be low).
    pub overwritten: Counter,
    /// Journal writes that failed (the crash count may be low).
    pub write_errors: Counter,
}

impl Journal {
    /// Opens `<data>/recording.journal` and `<data>/recording.marks` with `slots` slots (see
    /// [`slots_for`]), reports what a previous run left unrecorded (and appends those IDs to
    /// `<data>/unrecorded.jsonl`), and starts both rings afresh.
    ///
    /// Errors: the journal, the marks or `unrecorded.jsonl` cannot be read or written (the
    /// message starts with that file's path), or another process holds the journal
    /// (`ErrorKind::WouldBlock`: a veil already runs on this data dir; the message says so).
    pub fn open(data: &Path, slots: u64) -> io::Result<(Journal, CrashReport)> {
        use std::io::Read;
        let path = data.join(FILE);
        let marks_path = data.join(MARKS_FILE);
        let unrecorded = data.join(UNRECORDED_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(at(&path))?;
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
        file.read_to_end(&mut bytes).map_err(at(&path))?;
        // Opened under the journal's lock, which guards both files.
        let mut marks = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&marks_path)
            .map_err(at(&marks_path))?;
        let mut mark_bytes = Vec::new();
        marks
            .read_to_end(&mut mark_bytes)
            .map_err(at(&marks_path))?;
        let report = read_ring(&bytes, &mark_bytes);
        if !report.lost.is_empty() {
            // A crash from here to the reset below reports these again at the next start.
            append_unrecorded(&unrecorded, &report.lost).map_err(at(&unrecorded))?;
        }
        let slots = slots.max(1);
        // The journal first: once its slots are empty, whatever the marks still hold counts
        // for nothing.
        reset(&file, MAGIC, slots, slots * SLOT_LEN).map_err(at(&path))?;
        reset(&marks, MARKS_MAGIC, slots, 3 * slots * MARK_LEN).map_err(at(&marks_path))?;
        Ok((
            Journal {
                file,
                marks,
                path,
                marks_path,
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
    /// `pwrite` of 32 bytes to the journal.
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
        buf[SEQ..].copy_from_slice(&(seq + 1).to_le_bytes());
        self.write(&self.file, &self.path, &buf, at);
        slot
    }

    /// Notes that `slot`'s sealed copy is committed (veil marks a group's at once:
    /// [`Journal::sealed_all`]).
    #[cfg(test)]
    fn sealed(&self, slot: Slot) {
        self.mark(slot, SEALED);
    }

    /// Notes that `slot`'s record is written (veil marks a batch's at once:
    /// [`Journal::recorded_all`]).
    #[cfg(test)]
    fn recorded(&self, slot: Slot) {
        self.mark(slot, RECORDED);
    }

    /// Notes that `slot` was dropped on purpose (best-effort, counted where it was dropped),
    /// so a crash does not report it again.
    pub fn dropped(&self, slot: Slot) {
        self.mark(slot, DROPPED);
    }

    /// Notes that the sealed copies of `slots` (one group commit's) are committed: one
    /// `pwrite` per run of consecutive slots instead of one per slot. Order does not matter.
    pub fn sealed_all(&self, slots: &[Slot]) {
        self.mark_all(slots, SEALED);
    }

    /// Notes that the records of `slots` (one exporter batch's) are written (ledger, spool or
    /// collector), as [`Journal::sealed_all`].
    pub fn recorded_all(&self, slots: &[Slot]) {
        self.mark_all(slots, RECORDED);
    }

    /// [`Journal::dropped`] for every slot of `slots`, as [`Journal::sealed_all`].
    pub fn dropped_all(&self, slots: &[Slot]) {
        self.mark_all(slots, DROPPED);
    }

    /// Whether `slot`'s ring slot still holds its exchange (the ring has not given it to
    /// another one since), by the in-memory mirror.
    fn holds(&self, slot: Slot) -> bool {
        let v = self.state[slot.index as usize].load(Ordering::Acquire);
        v >> F_BITS == tag(slot.seq) >> F_BITS
    }

    /// Where `index`'s entry of mark `flag` is in the marks file.
    fn mark_at(&self, index: u64, flag: u64) -> u64 {
        HEADER_LEN + ((flag - SEALED) * self.slots + index) * MARK_LEN
    }

    /// [`Journal::mark`] for many slots: the slots that still hold their exchange, in ring
    /// order, written one run of consecutive slots per `pwrite` (a mark's ring has its
    /// entries side by side), then their mirror bits set. The same race with a wrapping
    /// ring as [`Journal::mark`], for each slot.
    fn mark_all(&self, slots: &[Slot], flag: u64) {
        let mut held: Vec<Slot> = slots.iter().copied().filter(|s| self.holds(*s)).collect();
        if held.is_empty() {
            return;
        }
        held.sort_unstable_by_key(|s| s.index);
        held.dedup_by_key(|s| s.index);
        let mut buf = Vec::with_capacity(held.len() * MARK_LEN as usize);
        for run in held.chunk_by(|a, b| b.index == a.index + 1) {
            buf.clear();
            for s in run {
                buf.extend_from_slice(&(s.seq + 1).to_le_bytes());
            }
            let at = self.mark_at(run[0].index, flag);
            self.write(&self.marks, &self.marks_path, &buf, at);
        }
        for s in held {
            self.set_bit(s, flag);
        }
    }

    /// Writes `slot`'s mark `flag` (its sequence number, in the marks' ring), if the slot
    /// still holds `slot`'s exchange (a ring that wrapped has given it to another one). The
    /// check is on the in-memory mirror, and the mirror's bit is set only after the file's
    /// write. A wrap between the check and the write puts this exchange's sequence number in
    /// the slot, which the next start does not count for the new exchange (it has another);
    /// it can overwrite a mark the new exchange had already written there, which then counts
    /// that exchange as lost too (the count errs high, never low), and the acknowledge that
    /// took the slot counted this one in [`Journal::overwritten`].
    fn mark(&self, slot: Slot, flag: u64) {
        if !self.holds(slot) {
            return;
        }
        self.write(
            &self.marks,
            &self.marks_path,
            &(slot.seq + 1).to_le_bytes(),
            self.mark_at(slot.index, flag),
        );
        self.set_bit(slot, flag);
    }

    /// Sets `slot`'s mirror bit for `flag`, unless the ring gave the slot to another exchange.
    fn set_bit(&self, slot: Slot, flag: u64) {
        let cell = &self.state[slot.index as usize];
        let mine = |v: u64| v >> F_BITS == tag(slot.seq) >> F_BITS;
        let mut v = cell.load(Ordering::Acquire);
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

    fn write(&self, file: &File, path: &Path, buf: &[u8], at: u64) {
        if let Err(e) = file.write_all_at(buf, at)
            && self.write_errors.inc() == 1
        {
            tracing::warn!(path = %path.display(), error = %e, "recording journal write failed; a crash count may be low");
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

/// Labels an error with the file it is about ([`crate::os::with_path`]).
fn at(path: &Path) -> impl Fn(io::Error) -> io::Error + '_ {
    move |e| crate::os::with_path(path, e)
}

/// Where `slot` starts in the journal.
fn offset(slot: Slot) -> u64 {
    HEADER_LEN + slot.index * SLOT_LEN
}

/// Offset inside a version-1 marks slot of mark `flag` (`SEALED`, `RECORDED` or `DROPPED`).
fn mark_field_v1(flag: u64) -> u64 {
    (flag - SEALED) * MARK_LEN
}

/// Empties `file` and writes `len` bytes of empty rings (`slots` slots) under a header of
/// `magic`.
fn reset(file: &File, magic: &[u8; 8], slots: u64, len: u64) -> io::Result<()> {
    file.set_len(0)?;
    let mut header = [0u8; HEADER_LEN as usize];
    header[..8].copy_from_slice(magic);
    header[8..16].copy_from_slice(&slots.to_le_bytes());
    file.write_all_at(&header, 0)?;
    file.set_len(HEADER_LEN + len)?;
    file.sync_all()
}

fn le_u64(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"))
}

/// Whether an exchange whose flag byte at offset `flag` is set when `set(flag)` was lost:
/// acknowledged, not dropped on purpose, and not both sealed and recorded. One rule for the
/// file (at the next start) and the in-memory mirror (when a slot is reused).
fn is_lost_by(set: impl Fn(u64) -> bool) -> bool {
    set(ACKED) && !set(DROPPED) && (!set(SEALED) || !set(RECORDED))
}

/// What the rings a run left behind say was lost: `bytes` the journal, `marks` the marks (a
/// marks file that is missing, foreign or of another size counts as no marks at all, so
/// every acknowledged exchange is reported: the count errs high, never low).
fn read_ring(bytes: &[u8], marks: &[u8]) -> CrashReport {
    let mut report = CrashReport::default();
    let header = HEADER_LEN as usize;
    if bytes.len() < header {
        return report;
    }
    let v1 = match &bytes[..8] {
        m if m == MAGIC => false,
        m if m == MAGIC_V1 => true,
        _ => return report,
    };
    let len = SLOT_LEN as usize;
    let slots = (bytes.len() - header) / len;
    let same_ring = marks.len() >= header && marks[8..16] == bytes[8..16];
    // The sequence number `flag` marked in slot `i`: rings of 8-byte entries (version 2) or
    // 32-byte slots (version 1). `None` for marks that are missing, foreign or of another
    // ring (none count: every acknowledged exchange is reported, the count errs high).
    let mark: Option<Box<dyn Fn(usize, u64) -> u64 + '_>> = match marks.get(..8) {
        _ if v1 || !same_ring => None,
        Some(m) if m == MARKS_MAGIC && marks.len() == header + 3 * slots * MARK_LEN as usize => {
            let rings = &marks[header..];
            Some(Box::new(move |i, flag| {
                le_u64(&rings[((flag - SEALED) as usize * slots + i) * MARK_LEN as usize..])
            }))
        }
        Some(m) if m == MARKS_MAGIC_V1 && marks.len() == bytes.len() => {
            let old = &marks[header..];
            Some(Box::new(move |i, flag| {
                le_u64(&old[i * len + mark_field_v1(flag) as usize..])
            }))
        }
        _ => None,
    };
    for (i, slot) in bytes[header..].chunks_exact(len).enumerate() {
        if slot[ACKED as usize] != 1 {
            continue;
        }
        let seq = le_u64(&slot[SEQ..]);
        let set = |flag: u64| match (flag, v1, &mark) {
            (ACKED, ..) => true,
            (_, true, _) => slot[flag as usize] == 1,
            // A sequence of 0 is never written (it would match every unwritten mark): a
            // slot holding one is foreign or torn and has no marks.
            (_, false, Some(m)) => seq != 0 && m(i, flag) == seq,
            (_, false, None) => false,
        };
        if !is_lost_by(set) {
            continue;
        }
        let id = ExchangeId::from_bytes(slot[..16].try_into().expect("16 bytes"));
        report.lost.push(id);
        match (set(SEALED), set(RECORDED)) {
            (true, _) => report.sealed_only += 1,
            (_, true) => report.recorded_only += 1,
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

    /// The permission bits of `path`.
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    /// Acknowledges a new exchange and marks it sealed and recorded.
    fn recorded_exchange(j: &Journal) -> Slot {
        let slot = j.acknowledge(ExchangeId::new());
        j.sealed(slot);
        j.recorded(slot);
        slot
    }

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
        assert_eq!(mode(&dir.path().join(FILE)), 0o600);
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
    fn marks_of_a_slots_previous_exchange_do_not_count_for_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), 2).unwrap();
        let a = recorded_exchange(&j);
        let b = j.acknowledge(ExchangeId::new());
        j.dropped(b);
        let c = j.acknowledge(ExchangeId::new()); // took a's slot, where a's marks still are
        assert_eq!(c.index, a.index);
        assert_eq!(j.overwritten.get(), 0, "a was recorded");
        drop(j);
        let (_, report) = Journal::open(dir.path(), 2).unwrap();
        assert_eq!(report.lost, vec![c.id]);
    }

    #[test]
    fn a_mark_late_by_a_whole_ring_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), 2).unwrap();
        let a = j.acknowledge(ExchangeId::new());
        let b = j.acknowledge(ExchangeId::new());
        j.dropped(b);
        let c = j.acknowledge(ExchangeId::new()); // took a's slot
        j.sealed(c);
        j.recorded(c);
        j.sealed(a); // late: would overwrite c's marks with a's sequence number
        j.recorded(a);
        drop(j);
        let (_, report) = Journal::open(dir.path(), 2).unwrap();
        assert!(report.lost.is_empty(), "c was recorded: {:?}", report.lost);
    }

    #[test]
    fn a_marks_file_of_another_ring_counts_for_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), 4).unwrap();
        let a = recorded_exchange(&j);
        drop(j);
        let path = dir.path().join(MARKS_FILE);
        let mut marks = std::fs::read(&path).unwrap();
        // Same length, another slot count: not this journal's marks.
        marks[8..16].copy_from_slice(&5u64.to_le_bytes());
        std::fs::write(&path, &marks).unwrap();
        let (_, report) = Journal::open(dir.path(), 4).unwrap();
        assert_eq!(report.lost, vec![a.id]);
    }

    #[test]
    fn acknowledges_write_the_journal_alone_and_marks_the_marks_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), 4).unwrap();
        let read = || {
            (
                std::fs::read(dir.path().join(FILE)).unwrap(),
                std::fs::read(dir.path().join(MARKS_FILE)).unwrap(),
            )
        };
        let (journal0, marks0) = read();
        let a = j.acknowledge(ExchangeId::new());
        let (journal1, marks1) = read();
        assert_ne!(journal0, journal1);
        assert_eq!(marks0, marks1, "an acknowledge wrote the marks");
        j.sealed(a);
        j.recorded(a);
        j.dropped(a);
        let (journal2, marks2) = read();
        assert_eq!(journal1, journal2, "a mark wrote the journal");
        for flag in [SEALED, RECORDED, DROPPED] {
            let field = j.mark_at(a.index, flag) as usize;
            assert_eq!(le_u64(&marks2[field..]), a.seq + 1, "flag {flag}");
        }
        assert_eq!(mode(&dir.path().join(MARKS_FILE)), 0o600);
    }

    #[test]
    fn marks_in_batches_land_in_each_slots_entry_whatever_the_order_gaps_or_wrap() {
        let dir = tempfile::tempdir().unwrap();
        let (j, _) = Journal::open(dir.path(), 8).unwrap();
        // Slots 0-5 go, then 6 and 7, then the ring wraps: 8 and 9 take slots 0 and 1.
        let first: Vec<Slot> = (0..6).map(|_| j.acknowledge(ExchangeId::new())).collect();
        j.recorded_all(&first);
        j.sealed_all(&first);
        let more: Vec<Slot> = (0..4).map(|_| j.acknowledge(ExchangeId::new())).collect();
        assert_eq!((more[2].index, more[3].index), (0, 1), "the ring wrapped");
        // Out of order, across the wrap (7, 0 and 1 are not one run), with a gap (6 is left
        // unsealed), a duplicate, and a late mark of the exchange slot 0 held before (its
        // entry now belongs to more[2] and must not be written).
        j.sealed_all(&[more[3], more[1], more[2], more[3], first[0]]);
        j.recorded_all(&[more[2], more[0], more[3], more[1]]);
        j.dropped_all(&[]);
        let marks = std::fs::read(dir.path().join(MARKS_FILE)).unwrap();
        let entry = |s: Slot, flag| le_u64(&marks[j.mark_at(s.index, flag) as usize..]);
        assert_eq!(
            entry(more[2], SEALED),
            more[2].seq + 1,
            "not the late mark's"
        );
        assert_eq!(entry(more[0], SEALED), 0, "slot 6 was left out");
        assert_eq!(entry(first[3], SEALED), first[3].seq + 1);
        assert_eq!(entry(first[5], RECORDED), first[5].seq + 1);
        drop(j);
        let (_, report) = Journal::open(dir.path(), 8).unwrap();
        assert_eq!(report.lost, vec![more[0].id], "only slot 6 was not sealed");
        assert_eq!(report.recorded_only, 1);
    }

    #[test]
    fn marks_left_by_a_veil_before_the_rings_are_read_once() {
        // Version 1 of the marks: 32-byte slots as the journal's, the three marks side by
        // side. Written here by hand from a version-2 journal's acknowledges.
        let dir = tempfile::tempdir().unwrap();
        let slots = 8u64;
        let (j, _) = Journal::open(dir.path(), slots).unwrap();
        let acked: Vec<Slot> = (0..4).map(|_| j.acknowledge(ExchangeId::new())).collect();
        drop(j);
        let mut marks = vec![0u8; (HEADER_LEN + slots * SLOT_LEN) as usize];
        marks[..8].copy_from_slice(MARKS_MAGIC_V1);
        marks[8..16].copy_from_slice(&slots.to_le_bytes());
        // 0: recorded. 1: sealed only. 2: nothing. 3: dropped.
        let flags: [&[u64]; 4] = [&[SEALED, RECORDED], &[SEALED], &[], &[DROPPED]];
        for (s, set) in acked.iter().zip(flags) {
            for &f in set {
                let at = (offset(*s) + mark_field_v1(f)) as usize;
                marks[at..at + 8].copy_from_slice(&(s.seq + 1).to_le_bytes());
            }
        }
        std::fs::write(dir.path().join(MARKS_FILE), &marks).unwrap();
        let (j, report) = Journal::open(dir.path(), slots).unwrap();
        assert_eq!(report.lost, vec![acked[1].id, acked[2].id]);
        assert_eq!((report.sealed_only, report.recorded_only), (1, 0));
        drop(j);
        let marks = std::fs::read(dir.path().join(MARKS_FILE)).unwrap();
        assert_eq!(&marks[..8], MARKS_MAGIC, "started over in version 2");
        assert_eq!(marks.len() as u64, HEADER_LEN + 3 * slots * MARK_LEN);
    }

    #[test]
    fn a_journal_left_by_a_veil_before_the_marks_file_is_read_once() {
        // Version 1: flag bytes in the journal's own slots, no marks file.
        let ids: Vec<ExchangeId> = (0..4).map(|_| ExchangeId::new()).collect();
        let slots = 8u64;
        let mut bytes = vec![0u8; (HEADER_LEN + slots * SLOT_LEN) as usize];
        bytes[..8].copy_from_slice(MAGIC_V1);
        bytes[8..16].copy_from_slice(&slots.to_le_bytes());
        // 0: recorded. 1: sealed only. 2: nothing. 3: dropped.
        let flags: [&[u64]; 4] = [&[SEALED, RECORDED], &[SEALED], &[], &[DROPPED]];
        for (i, (id, set)) in ids.iter().zip(flags).enumerate() {
            let at = (HEADER_LEN + i as u64 * SLOT_LEN) as usize;
            bytes[at..at + 16].copy_from_slice(id.as_bytes());
            bytes[at + ACKED as usize] = 1;
            for &f in set {
                bytes[at + f as usize] = 1;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), &bytes).unwrap();
        let (j, report) = Journal::open(dir.path(), SLOTS).unwrap();
        assert_eq!(report.lost, vec![ids[1], ids[2]]);
        assert_eq!((report.sealed_only, report.recorded_only), (1, 0));
        drop(j);
        let (_, report) = Journal::open(dir.path(), SLOTS).unwrap();
        assert!(report.lost.is_empty(), "the ring started over in version 2");
    }

    #[test]
    fn a_missing_or_foreign_marks_file_reports_every_acknowledged_exchange() {
        for marks in [None, Some(b"not marks".to_vec())] {
            let dir = tempfile::tempdir().unwrap();
            let (j, _) = Journal::open(dir.path(), SLOTS).unwrap();
            let a = recorded_exchange(&j);
            drop(j);
            let path = dir.path().join(MARKS_FILE);
            match &marks {
                None => std::fs::remove_file(&path).unwrap(),
                Some(b) => std::fs::write(&path, b).unwrap(),
            }
            let (_, report) = Journal::open(dir.path(), SLOTS).unwrap();
            assert_eq!(report.lost, vec![a.id], "marks {marks:?}");
        }
    }

    #[test]
    fn a_foreign_or_torn_file_reports_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"not a journal").unwrap();
        let (_, report) = Journal::open(dir.path(), SLOTS).unwrap();
        assert!(report.lost.is_empty());
    }
}
