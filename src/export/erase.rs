//! # Erase: a forget reaches the records still on this host.
//!
//! A forget (`veil forget ID`, `veil forget --user U`) destroys the sealed copy and erases
//! the ledger rows; the exporter's own copies are the batches waiting in the spool
//! (`<data>/spool/{traces,logs}/`, while the collector is away) and the OTLP/JSON lines under
//! `<data>/records/` (no collector configured). This module removes from both every span and
//! every per-exchange log record whose `veil.request.id` is one of the forgotten request ids
//! or whose `user.id` is the forgotten user's pseudonym, and keeps everything else.
//!
//! - **Finding.** The spool holds uncompressed payloads (gzip is applied when sending), and a
//!   request id or a pseudonym is plain ASCII with nothing to escape: it appears verbatim in
//!   both a protobuf and an OTLP/JSON payload that holds it. So a byte search (Aho-Corasick
//!   over all targets) finds the files and lines to rewrite without decoding anything; only
//!   those are decoded. Rejected: a sidecar index per spool file (request ids and pseudonyms
//!   written next to each batch). It saves the byte scan (bounded by `spool_max_bytes`, read
//!   at GB/s), but is a second file per batch to keep consistent through crashes, and would
//!   itself hold the pseudonyms a forget must erase.
//! - **Rewriting.** A matching batch is decoded (protobuf with `prost`, OTLP/JSON as a
//!   `serde_json::Value`, since the crate's serde cannot read back OTLP/JSON's string int64s),
//!   the matching spans or log records are removed, empty scopes and resources dropped, and
//!   the rest is encoded again in the same encoding: the same request minus those records.
//!   A batch left empty is deleted. Files are replaced through a temporary file (0600),
//!   fsync and rename ([`Spool::rewrite`], [`rewrite_records_file`]).
//! - **Kept on purpose.** Audit events (`event_name` `veil.audit.*`) stay: the forget's own
//!   deletion event names the request id and pseudonym so that the collector's side can act.
//!   Metrics hold no request id and no user.
//! - **Concurrency.** The files have one writer each: a signal's delivery task (its spool, or
//!   its records files). While veil runs, the erase is a message on that task's own channel
//!   ([`super::ExporterHandle::erase`]), queued behind the batch the batcher flushes first,
//!   and run between two sends, never during one; so no append, send or delete of the same
//!   files runs meanwhile and no lock is needed. Without a running veil, the CLI calls
//!   [`erase_dir`] (no exporter to race).
//!
//! Owns: finding and removing records by request id or pseudonym in payloads and files it is
//! handed. Reads and writes `<data>/spool/` and `<data>/records/` only; never the ledger or
//! the sealed store, never the network.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::Path;

use aho_corasick::AhoCorasick;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use prost::Message;
use serde_json::Value;

use super::ledger::records_dir;
use super::otlp::{Encoding, Signal};
use super::spool::{Rewrite, Spool};

/// The signals that carry per-exchange records (metrics aggregate, without ids or users).
pub const SIGNALS: [Signal; 2] = [Signal::Traces, Signal::Logs];

/// What a forget erases: records with one of these request ids (`veil.request.id`) or user
/// pseudonyms (`user.id`).
#[derive(Debug, Clone)]
pub struct Targets {
    request_ids: BTreeSet<String>,
    users: BTreeSet<String>,
    /// Every id and pseudonym, for the byte search; `None` when there are none.
    finder: Option<AhoCorasick>,
}

impl Targets {
    /// The records of `request_ids` and of the user pseudonyms `users` (`u_…`, never a raw
    /// user ID). Empty strings are ignored.
    pub fn new(
        request_ids: impl IntoIterator<Item = String>,
        users: impl IntoIterator<Item = String>,
    ) -> Targets {
        let request_ids: BTreeSet<String> =
            request_ids.into_iter().filter(|s| !s.is_empty()).collect();
        let users: BTreeSet<String> = users.into_iter().filter(|s| !s.is_empty()).collect();
        let needles: Vec<&String> = request_ids.iter().chain(&users).collect();
        let finder = if needles.is_empty() {
            None
        } else {
            Some(AhoCorasick::new(needles).expect("invariant: a few short literal needles"))
        };
        Targets {
            request_ids,
            users,
            finder,
        }
    }

    /// True when nothing is targeted.
    pub fn is_empty(&self) -> bool {
        self.finder.is_none()
    }

    /// The request ids targeted.
    pub fn request_ids(&self) -> &BTreeSet<String> {
        &self.request_ids
    }

    /// The user pseudonyms targeted.
    pub fn users(&self) -> &BTreeSet<String> {
        &self.users
    }

    /// Whether `bytes` may hold a targeted record. No false negatives for ids and pseudonyms
    /// made of characters that neither protobuf nor JSON escapes (`u_` + hex, UUIDs); an id
    /// holding `"` or `\` is still found in protobuf, and in JSON only when it is escaped
    /// nowhere, so such ids make every payload a candidate.
    fn may_hold(&self, bytes: &[u8]) -> bool {
        let Some(f) = &self.finder else {
            return false;
        };
        let escaped = |s: &String| s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20);
        if self.request_ids.iter().chain(&self.users).any(escaped) {
            return true;
        }
        f.is_match(bytes)
    }

    /// The request id of a record with these attributes when it is targeted (empty when it
    /// matched by user and has no id).
    fn hit(&self, id: Option<&str>, user: Option<&str>) -> Option<String> {
        let by_id = id.is_some_and(|i| self.request_ids.contains(i));
        let by_user = user.is_some_and(|u| self.users.contains(u));
        (by_id || by_user).then(|| id.unwrap_or_default().to_string())
    }
}

/// What one erase removed from this host's exported copies, for the receipt.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Erased {
    /// Spans and log records removed from spooled batches not yet sent.
    pub spool_records: u64,
    /// Spool files rewritten or deleted.
    pub spool_files: u64,
    /// Spans and log records removed from `<data>/records/*.jsonl`.
    pub records_removed: u64,
    /// Lines of `<data>/records/*.jsonl` rewritten or deleted (a line is one batch).
    pub records_lines: u64,
    /// Targeted request ids whose records had already left for the OTLP collector (not
    /// found in the spool of a signal that is sent to one): the collector's side must act on
    /// them. Empty when no collector is configured.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_reached: Vec<String>,
    /// What could not be rewritten (a file and the error); those records are still there.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

impl Erased {
    /// Adds `other`'s counts and lists to these (one forget request per id).
    pub fn absorb(&mut self, other: Erased) {
        self.spool_records += other.spool_records;
        self.spool_files += other.spool_files;
        self.records_removed += other.records_removed;
        self.records_lines += other.records_lines;
        self.not_reached.extend(other.not_reached);
        self.errors.extend(other.errors);
    }
}

/// What one signal's erase found; combined into [`Erased`] by [`combine`].
#[derive(Debug, Default)]
pub(super) struct SignalErased {
    /// The signal goes to an OTLP collector (so an id not found was delivered there).
    pub(super) collector: bool,
    pub(super) spool_records: u64,
    pub(super) spool_files: u64,
    pub(super) records_removed: u64,
    pub(super) records_lines: u64,
    /// Request ids whose records were found (and removed) in the spool.
    pub(super) found: BTreeSet<String>,
    pub(super) errors: Vec<String>,
}

/// One receipt out of the per-signal results: counts added, and `not_reached` the targeted
/// request ids that some collector-bound signal did not find in its spool.
pub(super) fn combine(targets: &Targets, parts: Vec<SignalErased>) -> Erased {
    let mut out = Erased::default();
    let mut reached: BTreeMap<&String, bool> =
        targets.request_ids.iter().map(|id| (id, true)).collect();
    for p in &parts {
        if p.collector {
            for (id, ok) in reached.iter_mut() {
                *ok &= p.found.contains(*id);
            }
        }
    }
    out.not_reached = reached
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(id, _)| id.clone())
        .collect();
    for p in parts {
        out.spool_records += p.spool_records;
        out.spool_files += p.spool_files;
        out.records_removed += p.records_removed;
        out.records_lines += p.records_lines;
        out.errors.extend(p.errors);
    }
    out
}

// === payloads ===

fn attr_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    let v = attrs.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match v.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s),
        _ => None,
    }
}

fn json_attr<'a>(item: &'a Value, key: &str) -> Option<&'a str> {
    item.get("attributes")?
        .as_array()?
        .iter()
        .find(|kv| kv.get("key").and_then(Value::as_str) == Some(key))?
        .get("value")?
        .get("stringValue")?
        .as_str()
}

/// True for the log records an erase keeps whatever they name: audit events.
fn is_audit(event_name: &str) -> bool {
    event_name.starts_with("veil.audit.")
}

/// A filtered payload: records removed, and what is left (`None`: nothing, drop it).
pub(super) type Filtered = (u64, Option<Vec<u8>>);

/// Removes the targeted records from one encoded request of `signal`. `None`: nothing
/// targeted in it (the payload stays byte for byte). `Some((removed, None))`: nothing is left,
/// drop the batch. `Some((removed, Some(bytes)))`: the request without them. Request ids
/// removed are added to `found`.
///
/// Errors: a payload that does not decode (the spool's checksum passed, so it was written by
/// an incompatible version): it is left as it is and the error reported.
pub(super) fn filter_payload(
    signal: Signal,
    enc: Encoding,
    payload: &[u8],
    targets: &Targets,
    found: &mut BTreeSet<String>,
) -> Result<Option<Filtered>, String> {
    if !targets.may_hold(payload) {
        return Ok(None);
    }
    let mut removed = 0u64;
    let mut take = |hit: Option<String>| match hit {
        Some(id) => {
            removed += 1;
            if !id.is_empty() {
                found.insert(id);
            }
            false
        }
        None => true,
    };
    let left = match (signal, enc) {
        (Signal::Traces, Encoding::Protobuf) => {
            let mut req = ExportTraceServiceRequest::decode(payload).map_err(|e| e.to_string())?;
            for rs in &mut req.resource_spans {
                for ss in &mut rs.scope_spans {
                    ss.spans.retain(|s| {
                        take(targets.hit(
                            attr_str(&s.attributes, "veil.request.id"),
                            attr_str(&s.attributes, "user.id"),
                        ))
                    });
                }
                rs.scope_spans.retain(|ss| !ss.spans.is_empty());
            }
            req.resource_spans.retain(|rs| !rs.scope_spans.is_empty());
            (!req.resource_spans.is_empty()).then(|| req.encode_to_vec())
        }
        (Signal::Logs, Encoding::Protobuf) => {
            let mut req = ExportLogsServiceRequest::decode(payload).map_err(|e| e.to_string())?;
            for rl in &mut req.resource_logs {
                for sl in &mut rl.scope_logs {
                    sl.log_records.retain(|l| {
                        is_audit(&l.event_name)
                            || take(targets.hit(
                                attr_str(&l.attributes, "veil.request.id"),
                                attr_str(&l.attributes, "user.id"),
                            ))
                    });
                }
                rl.scope_logs.retain(|sl| !sl.log_records.is_empty());
            }
            req.resource_logs.retain(|rl| !rl.scope_logs.is_empty());
            (!req.resource_logs.is_empty()).then(|| req.encode_to_vec())
        }
        (Signal::Traces | Signal::Logs, Encoding::Json) => {
            let (outer, mid, inner) = match signal {
                Signal::Traces => ("resourceSpans", "scopeSpans", "spans"),
                _ => ("resourceLogs", "scopeLogs", "logRecords"),
            };
            let mut v: Value = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
            let empty = filter_json(&mut v, [outer, mid, inner], &mut |item| {
                let event = item.get("eventName").and_then(Value::as_str).unwrap_or("");
                is_audit(event)
                    || take(targets.hit(
                        json_attr(item, "veil.request.id"),
                        json_attr(item, "user.id"),
                    ))
            });
            (!empty).then(|| serde_json::to_vec(&v).expect("invariant: a Value serializes"))
        }
        (Signal::Metrics, _) => return Ok(None),
    };
    if removed == 0 {
        return Ok(None);
    }
    Ok(Some((removed, left)))
}

/// Keeps the items at `v[path[0]][*][path[1]][*][path[2]][*]` for which `keep` is true,
/// dropping containers left empty. Returns true when nothing is left at the top.
fn filter_json(v: &mut Value, path: [&str; 3], keep: &mut dyn FnMut(&Value) -> bool) -> bool {
    let [outer, mid, inner] = path;
    let Some(resources) = v.get_mut(outer).and_then(Value::as_array_mut) else {
        return true;
    };
    for r in resources.iter_mut() {
        if let Some(scopes) = r.get_mut(mid).and_then(Value::as_array_mut) {
            for s in scopes.iter_mut() {
                if let Some(items) = s.get_mut(inner).and_then(Value::as_array_mut) {
                    items.retain(|i| keep(i));
                }
            }
            scopes.retain(|s| {
                s.get(inner)
                    .and_then(Value::as_array)
                    .is_some_and(|a| !a.is_empty())
            });
        }
    }
    resources.retain(|r| {
        r.get(mid)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
    });
    resources.is_empty()
}

// === files ===

/// Erases the targets from one signal's spool. `collector`: the signal is sent to an OTLP
/// collector (ids not found are reported as not reached). The spool must be owned by the
/// caller for the whole call (`&mut`).
pub(super) fn erase_spool(
    spool: &mut Spool,
    signal: Signal,
    targets: &Targets,
    out: &mut SignalErased,
) -> u64 {
    let mut errors = Vec::new();
    let mut removed = 0;
    let found = &mut out.found;
    let res =
        spool.rewrite(
            |enc, payload| match filter_payload(signal, enc, payload, targets, found) {
                Ok(None) => Rewrite::Keep,
                Ok(Some((n, None))) => {
                    removed += n;
                    Rewrite::Drop
                }
                Ok(Some((n, Some(bytes)))) => {
                    removed += n;
                    Rewrite::Replace(bytes)
                }
                Err(e) => {
                    errors.push(format!("a {} spool batch: {e}", signal.name()));
                    Rewrite::Keep
                }
            },
        );
    out.errors.extend(errors);
    match res {
        Ok(r) => {
            out.spool_records += removed;
            out.spool_files += r.replaced + r.dropped;
            r.freed
        }
        Err(e) => {
            // The batches before the failing one are rewritten (their records counted); the
            // failing one and those after it keep theirs.
            out.spool_records += removed;
            out.errors.push(format!("the {} spool: {e}", signal.name()));
            0
        }
    }
}

/// The `<data>/records/<signal>-*.jsonl` files, sorted.
fn records_files(data: &Path, signal: Signal) -> io::Result<Vec<std::path::PathBuf>> {
    let prefix = format!("{}-", signal.name());
    let mut files: Vec<_> = match fs::read_dir(records_dir(data)) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".jsonl"))
            })
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    files.sort();
    Ok(files)
}

/// Erases the targets from one records file (OTLP/JSON, one request per line): lines without
/// a targeted record stay byte for byte, lines with one are re-encoded without it or removed
/// when nothing else is in them; a line that does not parse yet holds a target (a torn last
/// line) is removed. The file is replaced through `<file>.erase.tmp` (0600), fsync and
/// rename, only when something changed. Returns (records removed, lines changed).
///
/// The caller must be the file's only writer for the call (the signal's delivery task, or
/// no veil running).
pub fn rewrite_records_file(
    path: &Path,
    signal: Signal,
    targets: &Targets,
    found: &mut BTreeSet<String>,
) -> io::Result<(u64, u64)> {
    let bytes = fs::read(path)?;
    if !targets.may_hold(&bytes) {
        return Ok((0, 0));
    }
    let mut out = Vec::with_capacity(bytes.len());
    let (mut removed, mut lines) = (0u64, 0u64);
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        match filter_payload(signal, Encoding::Json, body, targets, found) {
            Ok(None) => out.extend_from_slice(line),
            Ok(Some((n, left))) => {
                removed += n;
                lines += 1;
                if let Some(json) = left {
                    out.extend_from_slice(&json);
                    out.push(b'\n');
                }
            }
            Err(_) => {
                // Does not parse, yet a target's bytes are in it: a torn line (the writer
                // cuts those anyway). Removed rather than kept with a forgotten id in it.
                lines += 1;
            }
        }
    }
    if lines == 0 {
        return Ok((0, 0));
    }
    crate::os::replace_private(path, &out)?;
    Ok((removed, lines))
}

/// Erases the targets from every records file of `signal` under `data`.
pub(super) fn erase_records(
    data: &Path,
    signal: Signal,
    targets: &Targets,
    out: &mut SignalErased,
) {
    let files = match records_files(data, signal) {
        Ok(f) => f,
        Err(e) => {
            out.errors
                .push(format!("{}: {e}", records_dir(data).display()));
            return;
        }
    };
    for file in files {
        // Ids found here were written locally, never sent: not counted as reaching the
        // collector's side either way.
        let mut found = BTreeSet::new();
        match rewrite_records_file(&file, signal, targets, &mut found) {
            Ok((n, l)) => {
                out.records_removed += n;
                out.records_lines += l;
            }
            Err(e) => out.errors.push(format!("{}: {e}", file.display())),
        }
    }
}

/// Erases the targets from the spool directory of `signal` when no task owns it (no veil
/// running, or this veil does not send `signal` to a collector): opened here, if it exists.
pub(super) fn erase_spool_dir(
    data: &Path,
    signal: Signal,
    targets: &Targets,
    out: &mut SignalErased,
) {
    let dir = data.join("spool").join(signal.name());
    if !dir.is_dir() {
        return;
    }
    match Spool::open(&dir, u64::MAX) {
        Ok(mut spool) => {
            erase_spool(&mut spool, signal, targets, out);
        }
        Err(e) => out.errors.push(format!("{}: {e}", dir.display())),
    }
}

/// Erases `targets` from the spool and the records files under `data` when no veil runs with
/// it (the CLI's `veil forget` on a store it opened itself). `collector`: an OTLP endpoint is
/// configured for traces or logs, so request ids not found in the spool are reported in
/// [`Erased::not_reached`]. Blocking.
pub fn erase_dir(data: &Path, targets: &Targets, collector: bool) -> Erased {
    if targets.is_empty() {
        return Erased::default();
    }
    let mut parts = Vec::new();
    for signal in SIGNALS {
        let mut part = SignalErased {
            collector,
            ..Default::default()
        };
        erase_spool_dir(data, signal, targets, &mut part);
        erase_records(data, signal, targets, &mut part);
        parts.push(part);
    }
    combine(targets, parts)
}

#[cfg(test)]
mod tests;
