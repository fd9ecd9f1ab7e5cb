//! # Store: segment files (`segments/N.seg`), append-only frames of sealed payloads.
//!
//! Owns the segment file format (an 8-byte magic, then frames as [`super::super::envelope`]
//! writes them), naming, creation and rolling to a new active segment. What a frame holds is
//! the envelope's business; where it sits is the index's.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::io_err;
use super::writer::Writer;
use crate::seal::SealError;

pub(super) const SEGMENT_MAGIC: &[u8; 8] = b"VEILSEG1";
pub(super) const SEG_HEADER: u64 = SEGMENT_MAGIC.len() as u64;
/// Default segment size before rolling to a new one: small enough that compaction rewrites
/// little at a time, large enough that the directory stays short.
pub const DEFAULT_SEGMENT_MAX: u64 = 64 << 20;

/// `<dir>/segments/NNNNNNNN.seg`.
pub(super) fn seg_path(dir: &Path, n: u32) -> PathBuf {
    dir.join("segments").join(format!("{n:08}.seg"))
}

/// fsyncs a directory (after creating or removing a file in it).
pub(super) fn sync_dir(dir: &Path) -> Result<(), SealError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_err(dir.display(), e))
}

/// The segment numbers present, ascending.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<u32>, SealError> {
    let segdir = dir.join("segments");
    let mut out = Vec::new();
    for e in fs::read_dir(&segdir).map_err(|e| io_err(segdir.display(), e))? {
        let e = e.map_err(|e| io_err(segdir.display(), e))?;
        let name = e.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|s| s.strip_suffix(".seg"))
            .and_then(|s| s.parse::<u32>().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Creates (truncating) segment `n` with its magic, synced, and syncs the directory.
pub(super) fn create_segment(dir: &Path, n: u32) -> Result<File, SealError> {
    let path = seg_path(dir, n);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io_err(path.display(), e))?;
    f.write_all(SEGMENT_MAGIC)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_err(path.display(), e))?;
    sync_dir(&dir.join("segments"))?;
    Ok(f)
}

impl Writer {
    pub(super) fn seg_name(&self) -> PathBuf {
        seg_path(&self.dir, self.active)
    }

    /// Writes the staged small frames at `at` (one syscall per batch).
    pub(super) fn flush_stage(&mut self, at: u64) -> Result<(), SealError> {
        if !self.stage.is_empty() {
            self.seg
                .write_all_at(&self.stage, at)
                .map_err(|e| io_err(self.seg_name().display(), e))?;
            self.stage.clear();
        }
        Ok(())
    }

    /// Starts a new active segment (the caller commits `active_segment` with its next txn).
    pub(super) fn roll(&mut self) -> Result<(), SealError> {
        self.seg
            .sync_data()
            .map_err(|e| io_err(self.seg_name().display(), e))?;
        self.seg = create_segment(&self.dir, self.active + 1)?;
        self.active += 1;
        self.len = SEG_HEADER;
        Ok(())
    }
}
