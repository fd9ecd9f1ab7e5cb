//! # Dataset manifests: which exchanges went into which dataset, for later deletion requests.
//!
//! Every `veil export` writes a manifest (JSON, 0600): the format, the filters, the source
//! (`ledger`, or `sealed` for `--rules`), the rules digest(s), the count, the skips, every
//! request id included, the time and veil's version. It goes next to the dataset
//! (`FILE.manifest.json`), or, for an export to stdout, into `<data>/datasets/`. Its absolute
//! path is appended to the registry `<data>/datasets/manifests.jsonl` (directory 0700, file
//! 0600), which [`naming`] reads so `veil forget` can print the datasets that held a
//! forgotten exchange. A manifest holds request ids and filters, never content.
//!
//! A manifest moved or deleted after the export is reported as such by [`naming`] (the
//! registry line stays): the dataset's trail is then the operator's to follow.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::{Value, json};

use super::super::row;

/// The registry directory inside the data directory.
pub const DIR: &str = "datasets";

/// The registry file inside [`DIR`]: one JSON object per line, `{"manifest": "/abs/path",
/// "created": "…Z", "count": n}`.
pub const REGISTRY: &str = "manifests.jsonl";

/// What the manifest of one export says.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    /// `openai-chat`, `openai-evals`, `jsonl`.
    pub format: String,
    /// `ledger` (the ledger's redacted content) or `sealed` (`--rules`: the sealed
    /// exchanges re-redacted).
    pub source: String,
    /// The selection ([`super::Selection::to_json`]).
    pub filters: Value,
    /// The rules digest(s) of the content written (for `--rules`, the given file's).
    pub rules_digests: Vec<String>,
    /// The `--rules` file, when given.
    pub rules_file: Option<PathBuf>,
    /// Lines written.
    pub count: u64,
    /// Exchanges skipped, `{"reason": n}`.
    pub skipped: Value,
    /// The request ids written, in output order.
    pub request_ids: Vec<String>,
    /// When the export ran.
    pub created: SystemTime,
    /// The dataset file (absolute), `None` for stdout.
    pub output: Option<PathBuf>,
}

impl Manifest {
    /// The manifest document (`"veil_manifest": 1` marks the shape's version).
    pub fn to_json(&self) -> Value {
        json!({
            "veil_manifest": 1,
            "veil_version": env!("CARGO_PKG_VERSION"),
            "created": row::iso_utc(self.created),
            "output": self.output.as_ref().map(|p| p.display().to_string()),
            "format": self.format,
            "source": self.source,
            "filters": self.filters,
            "rules_digests": self.rules_digests,
            "rules_file": self.rules_file.as_ref().map(|p| p.display().to_string()),
            "count": self.count,
            "skipped": self.skipped,
            "request_ids": self.request_ids,
        })
    }
}

/// `FILE.manifest.json` beside `FILE`.
pub fn beside(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".manifest.json");
    PathBuf::from(s)
}

/// Writes `m` (0600, through a temp file and a rename) beside its output, or into
/// `<data>/datasets/` when it has none, and appends its absolute path to the registry.
/// Returns the manifest's absolute path.
///
/// # Errors
/// The I/O error, with the path in its message.
pub fn write(m: &Manifest, data: &Path) -> std::io::Result<PathBuf> {
    let dir = data.join(DIR);
    crate::keys::create_private_dir(&dir).map_err(std::io::Error::other)?;
    let path = match &m.output {
        Some(out) => beside(out),
        None => {
            let stamp: String = row::iso_utc(m.created)
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect();
            dir.join(format!(
                "stdout-{stamp}-{}.manifest.json",
                std::process::id()
            ))
        }
    };
    let path = std::path::absolute(&path)?;
    let mut text = serde_json::to_vec_pretty(&m.to_json()).map_err(std::io::Error::other)?;
    text.push(b'\n');
    write_private(&path, &text)?;
    let line = json!({
        "manifest": path.display().to_string(),
        "created": row::iso_utc(m.created),
        "count": m.count,
    });
    append_private(&dir.join(REGISTRY), format!("{line}\n").as_bytes())?;
    Ok(path)
}

/// What the registry knows about one manifest that may name forgotten exchanges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Named {
    /// The manifest names these of the ids asked about.
    Ids {
        /// The manifest.
        manifest: PathBuf,
        /// Its dataset file, when it had one.
        output: Option<String>,
        /// The ids it names, in the order asked.
        ids: Vec<String>,
    },
    /// The registry lists it but it cannot be read (moved, deleted, not JSON): whether it
    /// named an id is unknown.
    Unreadable {
        /// The manifest.
        manifest: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The manifests in `<data>/datasets/manifests.jsonl` that name any of `ids`, and the ones
/// that cannot be read. No registry (no export ever ran) is an empty answer; a registry line
/// that is not JSON is skipped (a torn last line of a crash).
///
/// # Errors
/// The registry exists but cannot be read.
pub fn naming(data: &Path, ids: &[String]) -> std::io::Result<Vec<Named>> {
    let registry = data.join(DIR).join(REGISTRY);
    let text = match std::fs::read_to_string(&registry) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut seen = std::collections::BTreeSet::new();
    let mut found = Vec::new();
    for line in text.lines() {
        let Some(path) = serde_json::from_str::<Value>(line)
            .ok()
            .and_then(|v| v.get("manifest")?.as_str().map(PathBuf::from))
        else {
            continue;
        };
        if !seen.insert(path.clone()) {
            continue;
        }
        let doc = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|e| e.to_string()));
        let doc = match doc {
            Ok(d) => d,
            Err(reason) => {
                found.push(Named::Unreadable {
                    manifest: path,
                    reason,
                });
                continue;
            }
        };
        let listed: std::collections::HashSet<&str> = doc
            .get("request_ids")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let named: Vec<String> = ids
            .iter()
            .filter(|id| listed.contains(id.as_str()))
            .cloned()
            .collect();
        if !named.is_empty() {
            found.push(Named::Ids {
                manifest: path,
                output: doc
                    .get("output")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                ids: named,
            });
        }
    }
    Ok(found)
}

/// Writes `data` to `path` 0600, atomically: [`crate::os::replace_private`].
pub(crate) fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    crate::os::replace_private(path, data)
}

pub use crate::os::{create_private, temp_beside};

fn append_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| crate::os::with_path(path, e))?;
    // One write of one line: appends of other exports never interleave inside it.
    f.write_all(data)
        .map_err(|e| crate::os::with_path(path, e))?;
    f.sync_all().map_err(|e| crate::os::with_path(path, e))
}
