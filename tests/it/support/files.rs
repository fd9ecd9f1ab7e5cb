//! Byte searches over what veil wrote: the privacy tests grep every file for raw values.

use std::path::Path;

/// The files under `data` holding `needle`, for failure messages.
pub fn files_containing(data: &Path, needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![data.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if contains(&std::fs::read(&p).unwrap_or_default(), needle) {
                out.push(p.display().to_string());
            }
        }
        if out.len() > 100 {
            break;
        }
    }
    out
}

pub fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Fails naming where when any of `needles` is in `exported` (what a collector received),
/// `log` (veil's stderr) or any file under `dir` (keys, data: ledger, sealed store, spool).
pub fn assert_nowhere(needles: &[&str], exported: &[u8], log: &str, dir: &Path) {
    for needle in needles {
        assert!(!contains(exported, needle), "{needle} exported");
        assert!(!log.contains(needle), "{needle} in veil's log");
        let files = files_containing(dir, needle);
        assert!(files.is_empty(), "{needle} written to {files:?}");
    }
}
