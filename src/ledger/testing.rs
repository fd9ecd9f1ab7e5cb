//! Test helpers: sample records (shared with the exporter's tests) and a ledger in a temp dir.

pub(crate) use crate::export::testing::{
    anthropic_stream, base_record as record, openai_chat, upstream_error,
};

use std::path::PathBuf;
use std::time::Duration;

use super::{Ledger, LedgerSettings};

/// A ledger in a fresh temp dir (kept alive by the returned guard), bounds checked only on
/// request.
pub(crate) fn ledger() -> (tempfile::TempDir, PathBuf, Ledger) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join(super::FILE_NAME);
    let mut settings = LedgerSettings::new(path.clone());
    settings.check_every = Duration::from_secs(3600);
    settings.nice = 0;
    let ledger = Ledger::open(settings, None, Default::default()).unwrap();
    (dir, path, ledger)
}

/// Every byte of the ledger's files (database, WAL, shared memory) concatenated.
pub(crate) fn file_bytes(path: &std::path::Path) -> Vec<u8> {
    let mut out = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        let mut p = path.as_os_str().to_owned();
        p.push(suffix);
        if let Ok(b) = std::fs::read(PathBuf::from(p)) {
            out.extend(b);
        }
    }
    out
}

/// Whether `needle` occurs in `haystack`.
pub(crate) fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}
