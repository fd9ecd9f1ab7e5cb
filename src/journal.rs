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
//! own byte, written by one writer, so no write reads back and races another.
//!
//! At the next start [`Journal::open`] reads the ring left behind: every slot whose exchange
//! was acknowledged, not dropped on purpose, and not both sealed and recorded was lost in the
//! crash. They are reported (count in the log, IDs appended to `<data>/unrecorded.jsonl`) and
//! the ring starts over.
//!
//! The ring must be larger than what can be in flight at once (queue, pipeline, exporter
//! batches, pending seals): [`SLOTS`] is 64 Ki against at most 4096 queued plus 4096 pending
//! seals plus a few export batches. A slot overwritten while still pending is counted in
//! [`Journal::overwritten`] (and says the journal's count is a lower bound).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::counters::Counter;
use crate::exchange::ExchangeId;

/// Slots in the ring (2 MiB file).
pub const SLOTS: u64 = 64 * 1024;
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

/// A journal slot held by one exchange on its way through recording.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(u64);

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
    next: AtomicU64,
    /// Slots reused while their exchange was still pending (the crash count may be low).
    pub overwritten: Counter,
    /// Journal writes that failed (the crash count may be low).
    pub write_errors: Counter,
}

impl Journal {
    /// Opens `<data>/recording.journal`, reports what a previous run left unrecorded (and
    /// appends those IDs to `<data>/unrecorded.jsonl`), and starts a fresh ring.
    ///
    /// Errors: the data dir or the journal cannot be read or written.
    pub fn open(data: &Path) -> io::Result<(Journal, CrashReport)> {
        let path = data.join(FILE);
        let report = match std::fs::read(&path) {
            Ok(bytes) => read_ring(&bytes),
            Err(e) if e.kind() == io::ErrorKind::NotFound => CrashReport::default(),
            Err(e) => return Err(e),
        };
        if !report.lost.is_empty() {
            append_unrecorded(&data.join(UNRECORDED_FILE), &report.lost)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)?;
        let mut header = [0u8; HEADER_LEN as usize];
        header[..8].copy_from_slice(MAGIC);
        header[8..16].copy_from_slice(&SLOTS.to_le_bytes());
        file.write_all_at(&header, 0)?;
        file.set_len(HEADER_LEN + SLOTS * SLOT_LEN)?;
        file.sync_all()?;
        Ok((
            Journal {
                file,
                path,
                next: AtomicU64::new(0),
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
        let slot = Slot(seq % SLOTS);
        let at = offset(slot);
        if seq >= SLOTS {
            let mut old = [0u8; SLOT_LEN as usize];
            if self.file.read_exact_at(&mut old, at).is_ok() && is_lost(&old) {
                self.overwritten.inc();
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
        self.write(&[1], offset(slot) + SEALED);
    }

    /// Notes that `slot`'s record is written (ledger, spool or collector).
    pub fn recorded(&self, slot: Slot) {
        self.write(&[1], offset(slot) + RECORDED);
    }

    /// Notes that `slot` was dropped on purpose (best-effort, counted where it was dropped),
    /// so a crash does not report it again.
    pub fn dropped(&self, slot: Slot) {
        self.write(&[1], offset(slot) + DROPPED);
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

fn offset(slot: Slot) -> u64 {
    HEADER_LEN + slot.0 * SLOT_LEN
}

fn is_lost(slot: &[u8]) -> bool {
    slot[ACKED as usize] == 1
        && slot[DROPPED as usize] == 0
        && (slot[SEALED as usize] == 0 || slot[RECORDED as usize] == 0)
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
        let (j, report) = Journal::open(dir.path()).unwrap();
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
        let (j2, report) = Journal::open(dir.path()).unwrap();
        assert_eq!(report.lost, vec![ids[1], ids[2], ids[3]]);
        assert_eq!((report.sealed_only, report.recorded_only), (1, 1));
        let unrecorded = std::fs::read_to_string(dir.path().join(UNRECORDED_FILE)).unwrap();
        assert_eq!(unrecorded.lines().count(), 3);
        assert!(unrecorded.contains(&ids[3].to_string()));
        drop(j2);
        // The ring started over: a clean restart reports nothing new.
        let (_, report) = Journal::open(dir.path()).unwrap();
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
        let (j, _) = Journal::open(dir.path()).unwrap();
        let first = j.acknowledge(ExchangeId::new());
        for _ in 1..SLOTS {
            let s = j.acknowledge(ExchangeId::new());
            j.dropped(s);
        }
        assert_eq!(j.overwritten.get(), 0);
        let again = j.acknowledge(ExchangeId::new());
        assert_eq!(again, first);
        assert_eq!(
            j.overwritten.get(),
            1,
            "the first exchange was still pending"
        );
    }

    #[test]
    fn a_foreign_or_torn_file_reports_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"not a journal").unwrap();
        let (_, report) = Journal::open(dir.path()).unwrap();
        assert!(report.lost.is_empty());
    }
}
