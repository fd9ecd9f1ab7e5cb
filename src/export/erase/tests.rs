//! Erasing forgotten records from spooled batches and records files.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::SystemTime;

use super::*;
use crate::export::otlp::{self, AuditEvent, Batch, ResourceInfo};
use crate::export::testing::{self, attrs};
use crate::keys::UserPseudonym;
use crate::record::Record;

const ALICE: &str = "u_00000000000a11ce";

fn rec(id: &str, user: Option<&str>) -> Record {
    let mut r = testing::openai_chat(id);
    let p = user.map(|u| UserPseudonym::parse(u).unwrap());
    r.user_pseudonyms = p.iter().cloned().collect();
    r.user_pseudonym = p;
    r
}

fn res() -> ResourceInfo {
    ResourceInfo::from_env(&|_| None, None)
}

/// One traces request and one logs request holding `records` (and `audit`, in the logs).
fn encode(records: &[Record], audit: Option<AuditEvent>, enc: Encoding) -> (Vec<u8>, Vec<u8>) {
    let mut b = Batch::default();
    for r in records {
        b.push_record(r);
    }
    if let Some(a) = audit {
        b.logs.push(otlp::audit_log(&a));
    }
    let t = b
        .traces_request(&res())
        .map_or_else(Vec::new, |r| otlp::encode(&r, enc));
    let l = b
        .logs_request(&res())
        .map_or_else(Vec::new, |r| otlp::encode(&r, enc));
    (t, l)
}

/// Request ids of the spans (traces) or log records (logs) in a payload, in order; audit
/// events as `audit:<id>`.
fn ids_in(signal: Signal, enc: Encoding, payload: &[u8]) -> Vec<String> {
    match enc {
        Encoding::Protobuf => match signal {
            Signal::Traces => ExportTraceServiceRequest::decode(payload)
                .unwrap()
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .flat_map(|s| &s.spans)
                .map(|s| testing::s(&attrs(&s.attributes), "veil.request.id").unwrap())
                .collect(),
            _ => ExportLogsServiceRequest::decode(payload)
                .unwrap()
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .flat_map(|s| &s.log_records)
                .map(|l| {
                    let id = testing::s(&attrs(&l.attributes), "veil.request.id").unwrap();
                    if l.event_name.starts_with("veil.audit.") {
                        format!("audit:{id}")
                    } else {
                        id
                    }
                })
                .collect(),
        },
        Encoding::Json => {
            let v: Value = serde_json::from_slice(payload).unwrap();
            let (o, m, i) = match signal {
                Signal::Traces => ("resourceSpans", "scopeSpans", "spans"),
                _ => ("resourceLogs", "scopeLogs", "logRecords"),
            };
            let mut out = Vec::new();
            for r in v[o].as_array().unwrap() {
                for s in r[m].as_array().unwrap() {
                    for item in s[i].as_array().unwrap() {
                        let id = json_attr(item, "veil.request.id").unwrap().to_string();
                        let audit = item["eventName"]
                            .as_str()
                            .is_some_and(|e| e.starts_with("veil.audit."));
                        out.push(if audit { format!("audit:{id}") } else { id });
                    }
                }
            }
            out
        }
    }
}

/// The spool's batches in order, decoded from the files as they are (nothing deleted).
fn spool_payloads(dir: &Path) -> Vec<(Encoding, Vec<u8>)> {
    file_bytes(dir)
        .into_iter()
        .map(|(_, b)| {
            let enc = if b[4] == 0 {
                Encoding::Protobuf
            } else {
                Encoding::Json
            };
            (enc, b[13..].to_vec())
        })
        .collect()
}

fn file_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().to_string(),
                fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn audit(id: &str) -> AuditEvent {
    AuditEvent {
        kind: "forget".into(),
        request_id: id.into(),
        time: SystemTime::now(),
        actor: "cli:test".into(),
        reason: None,
        user_pseudonym: Some(ALICE.into()),
    }
}

#[test]
fn only_the_forgotten_records_leave_the_spool_and_a_batch_of_only_them_goes() {
    for enc in [Encoding::Protobuf, Encoding::Json] {
        for signal in SIGNALS {
            let dir = tempfile::tempdir().unwrap();
            let mut spool = Spool::open(dir.path(), 1 << 30).unwrap();
            let pick = |(t, l): (Vec<u8>, Vec<u8>)| if signal == Signal::Traces { t } else { l };
            // Batch 0: a forgotten id beside a kept one; 1: only the forgotten user's;
            // 2: nothing forgotten; 3: the forget's audit event beside a forgotten record.
            let b0 = pick(encode(
                &[rec("r-gone", None), rec("r-keep-1", None)],
                None,
                enc,
            ));
            let b1 = pick(encode(
                &[rec("r-alice-1", Some(ALICE)), rec("r-alice-2", Some(ALICE))],
                None,
                enc,
            ));
            let b2 = pick(encode(
                &[rec("r-keep-2", Some("u_00000000000000b0"))],
                None,
                enc,
            ));
            let b3 = pick(encode(
                &[rec("r-gone-2", None)],
                Some(audit("r-gone-2")),
                enc,
            ));
            for b in [&b0, &b1, &b2, &b3] {
                spool.push(enc, b).unwrap();
            }
            let before = file_bytes(dir.path());
            let bytes_before = spool.bytes();

            let targets = Targets::new(
                ["r-gone".to_string(), "r-gone-2".to_string()],
                [ALICE.to_string()],
            );
            let mut part = SignalErased::default();
            let freed = erase_spool(&mut spool, signal, &targets, &mut part);
            assert!(part.errors.is_empty(), "{:?}", part.errors);

            let label = format!("{signal:?} {enc:?}");
            let got: Vec<Vec<String>> = spool_payloads(dir.path())
                .iter()
                .map(|(e, p)| {
                    assert_eq!(*e, enc, "{label}");
                    ids_in(signal, *e, p)
                })
                .collect();
            let last: Vec<String> = if signal == Signal::Logs {
                vec!["audit:r-gone-2".into()]
            } else {
                Vec::new()
            };
            let mut want = vec![vec!["r-keep-1".to_string()], vec!["r-keep-2".to_string()]];
            if !last.is_empty() {
                want.push(last);
            }
            assert_eq!(got, want, "{label}");
            // Removed: r-gone, both of alice's, r-gone-2; files: b0 and b3 rewritten (or b3
            // dropped for traces), b1 dropped.
            assert_eq!(part.spool_records, 4, "{label}");
            assert_eq!(part.spool_files, 3, "{label}");
            assert_eq!(
                part.found,
                ["r-alice-1", "r-alice-2", "r-gone", "r-gone-2"]
                    .map(String::from)
                    .into(),
                "{label}"
            );
            assert_eq!(spool.len(), want.len(), "{label}");
            assert_eq!(spool.bytes(), bytes_before - freed, "{label}");
            let after = file_bytes(dir.path());
            assert_eq!(
                spool.bytes(),
                after.iter().map(|(_, b)| b.len() as u64).sum::<u64>(),
                "{label}: the spool's count matches the disk"
            );
            // The untouched batch is byte for byte the same file, and nothing else is there
            // (no temporary file left behind).
            assert!(before.contains(&after[1]), "{label}: batch 2 untouched");
            assert!(after.iter().all(|(n, _)| n.ends_with(".batch")), "{label}");
            for (_, b) in &after {
                for gone in ["r-gone\"", "r-alice", ALICE] {
                    let hay = String::from_utf8_lossy(b);
                    if signal == Signal::Logs && gone == ALICE {
                        // The forget's own audit event carries the pseudonym by design.
                        continue;
                    }
                    assert!(!hay.contains(gone), "{label}: {gone} left in the spool");
                }
            }
            // Files keep 0600.
            use std::os::unix::fs::PermissionsExt;
            for e in fs::read_dir(dir.path()).unwrap() {
                let mode = e.unwrap().metadata().unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{label}");
            }
        }
    }
}

#[test]
fn an_erase_that_targets_nothing_in_the_spool_changes_no_byte() {
    let dir = tempfile::tempdir().unwrap();
    let mut spool = Spool::open(dir.path(), 1 << 30).unwrap();
    let (t, _) = encode(&[rec("r-1", Some(ALICE))], None, Encoding::Protobuf);
    spool.push(Encoding::Protobuf, &t).unwrap();
    let before = file_bytes(dir.path());
    let mut part = SignalErased::default();
    let targets = Targets::new(["r-2".to_string()], ["u_00000000000000b0".to_string()]);
    assert_eq!(
        erase_spool(&mut spool, Signal::Traces, &targets, &mut part),
        0
    );
    assert_eq!((part.spool_records, part.spool_files), (0, 0));
    assert_eq!(file_bytes(dir.path()), before);
}

#[test]
fn records_files_lose_only_the_forgotten_records_and_other_lines_stay_byte_for_byte() {
    let data = tempfile::tempdir().unwrap();
    let t = SystemTime::now();
    let lines: Vec<Vec<u8>> = vec![
        encode(&[rec("r-keep-1", None)], None, Encoding::Json).0,
        encode(
            &[rec("r-gone", None), rec("r-keep-2", None)],
            None,
            Encoding::Json,
        )
        .0,
        encode(&[rec("r-alice", Some(ALICE))], None, Encoding::Json).0,
    ];
    for l in &lines {
        crate::export::ledger::append(data.path(), Signal::Traces, l, t).unwrap();
    }
    let path = crate::export::ledger::ledger_path(data.path(), Signal::Traces, t);
    // A torn last line that holds a forgotten id.
    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(br#"{"resourceSpans":[{"x":"r-gone"#).unwrap();
    drop(f);

    let targets = Targets::new(["r-gone".to_string()], [ALICE.to_string()]);
    let mut part = SignalErased::default();
    erase_records(data.path(), Signal::Traces, &targets, &mut part);
    assert!(part.errors.is_empty(), "{:?}", part.errors);
    assert_eq!(part.records_removed, 2);
    assert_eq!(
        part.records_lines, 3,
        "one rewritten, one dropped, the torn one dropped"
    );

    let text = fs::read(&path).unwrap();
    let got: Vec<&[u8]> = text
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[0],
        &lines[0][..],
        "an untouched line stays byte for byte"
    );
    assert_eq!(ids_in(Signal::Traces, Encoding::Json, got[1]), ["r-keep-2"]);
    let hay = String::from_utf8_lossy(&text);
    assert!(!hay.contains("r-gone") && !hay.contains(ALICE), "{hay}");
    // `veil tail` still reads the rewritten line.
    assert_eq!(
        crate::export::tail::render(std::str::from_utf8(got[1]).unwrap()).len(),
        1
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        fs::read_dir(path.parent().unwrap()).unwrap().count(),
        1,
        "no tmp left"
    );
}

#[test]
fn not_reached_lists_the_ids_a_collector_bound_signal_did_not_find() {
    let targets = Targets::new(["a".to_string(), "b".to_string(), "c".to_string()], []);
    let part = |collector: bool, found: &[&str]| SignalErased {
        collector,
        found: found.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>(),
        ..Default::default()
    };
    // Traces found a and b in the spool, logs only a: b's log record was delivered.
    let e = combine(&targets, vec![part(true, &["a", "b"]), part(true, &["a"])]);
    assert_eq!(e.not_reached, ["b", "c"]);
    // No collector: nothing left this host.
    let e = combine(&targets, vec![part(false, &[]), part(false, &[])]);
    assert!(e.not_reached.is_empty());
}
