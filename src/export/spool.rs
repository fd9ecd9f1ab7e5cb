//! # Spool: encoded OTLP batches kept on disk while the collector is away.
//!
//! One directory per signal (`<data>/spool/traces/` ...). Each batch is one file named by a
//! sequence number, holding one frame:
//!
//! ```text
//! "VSP1" | encoding (u8: 0 protobuf, 1 json) | payload length (u32 LE) | crc32(encoding, payload) (u32 LE) | payload
//! ```
//!
//! Files are written once under a temporary name and renamed into place, and deleted when
//! their batch is delivered (or given up). The one exception is a forget
//! ([`Spool::rewrite`], driven by [`super::erase`]): a batch holding a forgotten exchange's
//! records is replaced the same way (temporary file, fsync, rename) by one without them, or
//! deleted when nothing else was in it. Replay is in sequence order, so
//! batches leave in the order they were spooled, also after a restart. A failed write (a full
//! disk) removes its `.tmp` file and counts nothing; a crash mid-write leaves at most a `.tmp`
//! file, discarded on open; a frame whose length or checksum does not match (a torn or
//! corrupted write) is discarded and logged, never sent.
//!
//! Rejected alternative: one append-only segment log plus a persisted read cursor. It saves
//! inodes, but needs a cursor file rewritten per delivered batch and compaction of
//! half-delivered segments; with batches of hundreds of records, one file per batch keeps
//! every step atomic with a single rename or unlink.
//!
//! The spool is bounded: past `max_bytes`, the oldest batches are deleted, and the loss is
//! returned to the caller to count and log.
//!
//! Owns: files under its directory. Never decodes payloads, never touches the network.

use std::collections::VecDeque;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::otlp::Encoding;

const MAGIC: &[u8; 4] = b"VSP1";
const HEADER: usize = 13;
const EXT: &str = "batch";

/// Batches lost to the bound.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Loss {
    /// Number of batches deleted.
    pub batches: u64,
    /// Their size on disk.
    pub bytes: u64,
}

/// One signal's spool directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    /// (sequence, size on disk), oldest first.
    entries: VecDeque<(u64, u64)>,
    next_seq: u64,
    bytes: u64,
}

fn enc_byte(e: Encoding) -> u8 {
    match e {
        Encoding::Protobuf => 0,
        Encoding::Json => 1,
    }
}

fn frame_crc(enc: u8, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&[enc]);
    h.update(payload);
    h.finalize()
}

/// Decodes one frame; `None` when torn or corrupted.
fn decode_frame(buf: &[u8]) -> Option<(Encoding, &[u8])> {
    if buf.len() < HEADER || &buf[..4] != MAGIC {
        return None;
    }
    let enc = match buf[4] {
        0 => Encoding::Protobuf,
        1 => Encoding::Json,
        _ => return None,
    };
    let len = u32::from_le_bytes(buf[5..9].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(buf[9..13].try_into().ok()?);
    let payload = buf.get(HEADER..HEADER + len)?;
    if buf.len() != HEADER + len || frame_crc(buf[4], payload) != crc {
        return None;
    }
    Some((enc, payload))
}

impl Spool {
    /// Opens (creating) the spool at `dir`, indexing the batches a previous run left.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Spool> {
        private_dir(dir)?;
        let mut entries = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.ends_with(".tmp") {
                tracing::warn!(file = %path.display(), "spool: discarding a batch torn by a crash");
                let _ = fs::remove_file(&path);
                continue;
            }
            let Some(seq) = name
                .strip_suffix(&format!(".{EXT}"))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            entries.push((seq, entry.metadata()?.len()));
        }
        entries.sort_unstable();
        let next_seq = entries.last().map_or(0, |(s, _)| s + 1);
        let bytes = entries.iter().map(|(_, n)| n).sum();
        Ok(Spool {
            dir: dir.to_path_buf(),
            max_bytes,
            entries: entries.into(),
            next_seq,
            bytes,
        })
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.{EXT}"))
    }

    /// Batches waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Appends one batch, then deletes the oldest ones while over the bound (never the one
    /// just written, so the newest data survives). Returns what was lost to the bound.
    pub fn push(&mut self, enc: Encoding, payload: &[u8]) -> io::Result<Loss> {
        let len = u32::try_from(payload.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "batch over 4 GiB"))?;
        let seq = self.next_seq;
        // A failed write (ENOSPC) leaves nothing: no partial `.tmp` holding the space the
        // disk lacks, no entry, no bytes counted, and the sequence number is reused.
        write_frame(&self.path(seq), enc, payload, len, false)?;
        self.next_seq += 1;
        let size = (HEADER + payload.len()) as u64;
        self.entries.push_back((seq, size));
        self.bytes += size;
        let mut loss = Loss::default();
        while self.bytes > self.max_bytes && self.entries.len() > 1 {
            let (old, n) = self.entries.pop_front().expect("invariant: len > 1");
            let _ = fs::remove_file(self.path(old));
            self.bytes -= n;
            loss.batches += 1;
            loss.bytes += n;
        }
        Ok(loss)
    }

    /// The oldest batch. Frames that fail their checksum are deleted and skipped; the
    /// returned count says how many.
    pub fn front(&mut self) -> (Option<(Encoding, Vec<u8>)>, Loss) {
        let mut loss = Loss::default();
        while let Some(&(seq, n)) = self.entries.front() {
            let path = self.path(seq);
            match fs::read(&path) {
                Ok(buf) => {
                    if let Some((enc, payload)) = decode_frame(&buf) {
                        return (Some((enc, payload.to_vec())), loss);
                    }
                    tracing::warn!(file = %path.display(), "spool: discarding a torn or corrupted batch");
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "spool: unreadable batch discarded");
                }
            }
            let _ = fs::remove_file(&path);
            self.entries.pop_front();
            self.bytes -= n;
            loss.batches += 1;
            loss.bytes += n;
        }
        (None, loss)
    }

    /// Passes every batch, oldest first, to `f` and applies its answer: a replacement is
    /// written to a temporary file (0600), fsynced and renamed over the batch (its place in
    /// the order is kept); a dropped batch's file is deleted. Frames that fail their checksum
    /// are left for [`Spool::front`] to discard. Used by a forget
    /// ([`super::erase`]): the caller owns the spool (`&mut`), so no push, send or delete of
    /// the same files runs meanwhile.
    ///
    /// Errors: the first file that cannot be read or written stops the pass; what was done
    /// before it stays done (and is reflected in [`Spool::len`] and [`Spool::bytes`]), the
    /// failed batch keeps its old file.
    pub fn rewrite(
        &mut self,
        mut f: impl FnMut(Encoding, &[u8]) -> Rewrite,
    ) -> io::Result<Rewritten> {
        let mut done = Rewritten::default();
        let mut kept = VecDeque::with_capacity(self.entries.len());
        let mut entries = std::mem::take(&mut self.entries).into_iter();
        let mut failed = None;
        for (seq, n) in entries.by_ref() {
            let path = self.path(seq);
            let buf = match fs::read(&path) {
                Ok(b) => b,
                Err(e) => {
                    kept.push_back((seq, n));
                    failed = Some(e);
                    break;
                }
            };
            let answer = decode_frame(&buf).map(|(enc, payload)| (enc, f(enc, payload)));
            match answer {
                None => kept.push_back((seq, n)),
                Some((_, Rewrite::Keep)) => kept.push_back((seq, n)),
                Some((_, Rewrite::Drop)) => {
                    if let Err(e) = fs::remove_file(&path) {
                        kept.push_back((seq, n));
                        failed = Some(e);
                        break;
                    }
                    self.bytes -= n;
                    done.dropped += 1;
                    done.freed += n;
                }
                Some((enc, Rewrite::Replace(payload))) => {
                    let written = u32::try_from(payload.len())
                        .map_err(|_| {
                            io::Error::new(io::ErrorKind::InvalidInput, "batch over 4 GiB")
                        })
                        .and_then(|len| write_frame(&path, enc, &payload, len, true));
                    if let Err(e) = written {
                        kept.push_back((seq, n));
                        failed = Some(e);
                        break;
                    }
                    let size = (HEADER + payload.len()) as u64;
                    self.bytes = self.bytes - n + size;
                    done.replaced += 1;
                    done.freed += n.saturating_sub(size);
                    kept.push_back((seq, size));
                }
            }
        }
        kept.extend(entries);
        self.entries = kept;
        match failed {
            Some(e) => Err(e),
            None => Ok(done),
        }
    }

    /// Deletes the oldest batch (delivered or given up). Returns its size.
    pub fn pop_front(&mut self) -> u64 {
        match self.entries.pop_front() {
            Some((seq, n)) => {
                if let Err(e) = fs::remove_file(self.path(seq)) {
                    tracing::warn!(error = %e, "spool: could not delete a delivered batch");
                }
                self.bytes -= n;
                n
            }
            None => 0,
        }
    }
}

/// Writes one frame to `path` through `<path>.tmp` (0600) and a rename, so a reader sees the
/// old file or the new one, never half of either. With `sync`, the file is fsynced before the
/// rename and the directory after it (a rewrite that erases must not come back after a
/// crash). On error the `.tmp` file is removed and `path` is untouched.
fn write_frame(path: &Path, enc: Encoding, payload: &[u8], len: u32, sync: bool) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    let written = (|| {
        let mut f = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?
        };
        let e = enc_byte(enc);
        let mut header = [0u8; HEADER];
        header[..4].copy_from_slice(MAGIC);
        header[4] = e;
        header[5..9].copy_from_slice(&len.to_le_bytes());
        header[9..13].copy_from_slice(&frame_crc(e, payload).to_le_bytes());
        f.write_all(&header)?;
        f.write_all(payload)?;
        if sync {
            f.sync_all()?;
        }
        drop(f);
        fs::rename(&tmp, path)?;
        if sync && let Some(dir) = path.parent() {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// What [`Spool::rewrite`] does with one batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    /// Leave the file as it is.
    Keep,
    /// Replace the batch's payload (same encoding, same place in the order).
    Replace(Vec<u8>),
    /// Delete the batch.
    Drop,
}

/// What [`Spool::rewrite`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    /// Batches whose file was replaced.
    pub replaced: u64,
    /// Batches deleted.
    pub dropped: u64,
    /// Bytes on disk freed (old sizes minus new sizes).
    pub freed: u64,
}

/// Creates `dir` (and parents) readable by the owner only (0700): spooled batches and the
/// JSON ledger hold redacted content that other local users have no business reading.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        for i in 0..12u8 {
            s.push(Encoding::Protobuf, &[i; 10]).unwrap();
        }
        s.pop_front();
        drop(s);
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.len(), 11);
        for i in 1..12u8 {
            let (got, loss) = s.front();
            assert_eq!(loss, Loss::default());
            assert_eq!(got.unwrap(), (Encoding::Protobuf, vec![i; 10]));
            s.pop_front();
        }
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
        // New sequence numbers continue after the old ones.
        s.push(Encoding::Json, b"x").unwrap();
        assert_eq!(s.front().0.unwrap(), (Encoding::Json, b"x".to_vec()));
    }

    #[test]
    fn bound_drops_oldest_and_reports() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 3 * (HEADER as u64 + 100)).unwrap();
        let mut lost = Loss::default();
        for i in 0..5u8 {
            let l = s.push(Encoding::Protobuf, &[i; 100]).unwrap();
            lost.batches += l.batches;
            lost.bytes += l.bytes;
        }
        assert_eq!(lost.batches, 2);
        assert_eq!(lost.bytes, 2 * (HEADER as u64 + 100));
        assert_eq!(s.len(), 3);
        assert_eq!(s.front().0.unwrap().1, vec![2; 100]);
    }

    // See: veil#10
    #[test]
    fn spool_write_on_a_full_disk_leaves_no_garbage_to_replay_or_count() {
        let Some(fs) = crate::seal::tests::Tmpfs::mount(
            "spool_write_on_a_full_disk_leaves_no_garbage_to_replay_or_count",
            "1m",
        ) else {
            return;
        };
        let dir = fs.path().join("spool");
        let mut s = Spool::open(&dir, 1 << 30).unwrap();
        s.push(Encoding::Protobuf, b"first").unwrap();
        fs.fill();
        let err = s.push(Encoding::Protobuf, &[7u8; 256 << 10]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(28), "{err}");
        assert_eq!(
            (s.len(), s.bytes()),
            (1, HEADER as u64 + 5),
            "nothing counted"
        );
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names.len(),
            1,
            "no partial .tmp left holding space: {names:?}"
        );
        fs.free();
        s.push(Encoding::Json, b"second").unwrap();
        drop(s);
        let mut s = Spool::open(&dir, 1 << 30).unwrap();
        assert_eq!(s.front().0.unwrap().1, b"first");
        s.pop_front();
        assert_eq!(
            s.front(),
            (Some((Encoding::Json, b"second".to_vec())), Loss::default())
        );
        s.pop_front();
        assert!(s.is_empty());
    }

    #[test]
    fn torn_and_corrupted_batches_are_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.push(Encoding::Protobuf, b"first").unwrap();
        s.push(Encoding::Protobuf, b"second").unwrap();
        s.push(Encoding::Protobuf, b"third").unwrap();
        drop(s);
        // A torn tail: the last file cut short; a flipped byte in the first.
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        names.sort();
        let last = fs::read(&names[2]).unwrap();
        fs::write(&names[2], &last[..last.len() - 2]).unwrap();
        let mut first = fs::read(&names[0]).unwrap();
        *first.last_mut().unwrap() ^= 0xff;
        fs::write(&names[0], first).unwrap();
        fs::write(dir.path().join("00000000000000000009.tmp"), b"VSP1").unwrap();
        let mut s = Spool::open(dir.path(), 1 << 20).unwrap();
        let (got, loss) = s.front();
        assert_eq!(loss.batches, 1);
        assert_eq!(got.unwrap().1, b"second");
        s.pop_front();
        let (got, loss) = s.front();
        assert!(got.is_none());
        assert_eq!(loss.batches, 1);
        assert!(!dir.path().join("00000000000000000009.tmp").exists());
    }
}
