//! Sealed store tests: round trips, no plaintext on disk, keys, tampering, forget, retention,
//! rotation, crash recovery.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use std::time::{Duration, SystemTime};

use bytes::Bytes;

use super::*;
use crate::exchange::{Body, Exchange, ExchangeId, Outcome, Route, Timings, Upstream};
use crate::keys::{KeyId, Keyring, MasterKey, pseudonymize_user};

const PROMPT: &str = "PLANTED-PROMPT: my diagnosis is hypertension, call me at +1-555-0100";
const SECRET: &str = "sk-PLANTEDsecretKEY0123456789abcdefABCDEF";
const COMPLETION: &str = "PLANTED-COMPLETION: reduce salt intake";

#[derive(Debug, Default)]
pub(crate) struct MemorySink(pub Mutex<Vec<AuditEvent>>);

impl AuditSink for MemorySink {
    fn emit(&self, event: &AuditEvent) -> Result<(), AuditError> {
        self.0.lock().unwrap().push(event.clone());
        Ok(())
    }
}

pub(crate) fn ring(seed: u8) -> Keyring {
    Keyring::single(MasterKey::from_bytes(KeyId(1), [seed; 32]))
}

fn open(dir: &Path, keyring: Keyring) -> (SealStore, Arc<MemorySink>) {
    let sink = Arc::new(MemorySink::default());
    let store = SealStore::open(
        dir,
        keyring,
        SealOptions {
            audit: Some(sink.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    (store, sink)
}

fn body(chunks: &[&[u8]]) -> Body {
    let chunks: Vec<Bytes> = chunks.iter().map(|c| Bytes::copy_from_slice(c)).collect();
    Body {
        wire_len: chunks.iter().map(|c| c.len() as u64).sum(),
        chunks,
        truncated: false,
        content_encoding: None,
    }
}

pub(crate) fn openai_chat() -> Exchange {
    let req = format!(
        r#"{{"model":"gpt-4o","messages":[{{"role":"user","content":"{PROMPT}"}}],"user":"alice"}}"#
    );
    let resp = format!(
        r#"{{"id":"chatcmpl-1","choices":[{{"message":{{"role":"assistant","content":"{COMPLETION}"}},"finish_reason":"stop"}}],"usage":{{"prompt_tokens":12,"completion_tokens":5}}}}"#
    );
    Exchange {
        id: ExchangeId::new(),
        started_at: SystemTime::now(),
        timings: Timings {
            request_end: Some(Duration::from_millis(2)),
            response_headers: Some(Duration::from_millis(300)),
            first_byte: Some(Duration::from_millis(301)),
            end: Duration::from_millis(320),
            ..Default::default()
        },
        client_addr: Some("127.0.0.1:50000".parse().unwrap()),
        route: Route::Intercept,
        upstream: Upstream {
            scheme: "https".into(),
            host: "api.openai.com".into(),
            port: 443,
        },
        client_version: "HTTP/1.1".into(),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        request_headers: vec![
            ("content-type".into(), "application/json".into()),
            // A capture bug let a credential through: the seal must drop it anyway.
            ("authorization".into(), format!("Bearer {SECRET}")),
            ("X-Api-Key".into(), SECRET.into()),
            ("cookie".into(), format!("session={SECRET}")),
        ]
        .into(),
        tags: vec![("x-veil-feature".into(), "triage".into())].into(),
        api_key_fingerprint: Some("fp_0123456789abcdef".into()),
        request_body: body(&[req.as_bytes()]),
        status: Some(200),
        response_headers: vec![
            ("content-type".into(), "application/json".into()),
            ("set-cookie".into(), format!("s={SECRET}")),
        ]
        .into(),
        response_body: body(&[resp.as_bytes()]),
        outcome: Outcome::Complete,
        websocket: None,
    }
}

pub(crate) fn anthropic_stream() -> Exchange {
    let mut ex = openai_chat();
    ex.id = ExchangeId::new();
    ex.route = Route::Gateway {
        name: "anthropic".into(),
    };
    ex.upstream.host = "api.anthropic.com".into();
    ex.path = "/v1/messages".into();
    ex.request_headers = vec![("anthropic-version".into(), "2023-06-01".into())].into();
    ex.request_body = body(&[format!(
        r#"{{"model":"claude-sonnet-4","stream":true,"messages":[{{"role":"user","content":"{PROMPT}"}}]}}"#
    )
    .as_bytes()]);
    let (a, b) = COMPLETION.split_at(10);
    ex.response_body = body(&[
        b"event: message_start\ndata: {\"type\":\"message_start\"}\n\n",
        format!("event: content_block_delta\ndata: {{\"delta\":{{\"text\":\"{a}\"}}}}\n\n")
            .as_bytes(),
        format!("event: content_block_delta\ndata: {{\"delta\":{{\"text\":\"{b}\"}}}}\n\n")
            .as_bytes(),
        b"event: message_stop\ndata: {}\n\n",
    ]);
    ex.outcome = Outcome::ClientAborted;
    ex
}

pub(crate) fn gzip_body() -> Exchange {
    use flate2::{Compression, write::GzEncoder};
    let mut ex = openai_chat();
    ex.id = ExchangeId::new();
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(format!(r#"{{"answer":"{COMPLETION}"}}"#).as_bytes())
        .unwrap();
    let gz = enc.finish().unwrap();
    ex.response_body = body(&[&gz[..10], &gz[10..]]);
    ex.response_body.content_encoding = Some("gzip".into());
    ex
}

pub(crate) fn truncated_body() -> Exchange {
    let mut ex = openai_chat();
    ex.id = ExchangeId::new();
    let big = PROMPT.repeat(2000);
    ex.request_body = body(&[&big.as_bytes()[..40_000]]);
    ex.request_body.wire_len = big.len() as u64;
    ex.request_body.truncated = true;
    ex.status = None;
    ex.outcome = Outcome::UpstreamFailed {
        kind: crate::exchange::UpstreamFailure::Timeout,
        reason: "no headers in 300s".into(),
    };
    ex
}

/// A relayed WebSocket session (veil#17): its frame counts and Realtime totals are sealed in
/// the metadata, not in a body.
pub(crate) fn websocket_session() -> Exchange {
    let mut ex = openai_chat();
    ex.id = ExchangeId::new();
    ex.method = "GET".into();
    ex.path = "/v1/realtime?model=gpt-realtime".into();
    ex.status = Some(101);
    ex.websocket = Some(crate::exchange::WebSocketSession {
        frames_sent: 7,
        frames_received: 11,
        close_code: Some(1000),
        unframed: false,
        session: None,
        realtime: Some(crate::exchange::realtime::RealtimeTotals {
            responses: 2,
            input_tokens: 40,
            output_tokens: 90,
            ..Default::default()
        }),
    });
    ex
}

fn all_files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else {
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn assert_same(a: &Exchange, b: &Exchange) {
    assert_eq!(a.id, b.id);
    assert_eq!(a.started_at, b.started_at);
    assert_eq!(a.timings, b.timings);
    assert_eq!(a.client_addr, b.client_addr);
    assert_eq!(a.route, b.route);
    assert_eq!(a.upstream, b.upstream);
    assert_eq!(a.client_version, b.client_version);
    assert_eq!(a.method, b.method);
    assert_eq!(a.path, b.path);
    let scrubbed = |h: &crate::exchange::Headers| -> crate::exchange::Headers {
        h.iter()
            .filter(|(k, _)| !crate::exchange::credentials::is_credential_header(k))
            .collect()
    };
    assert_eq!(scrubbed(&a.request_headers), b.request_headers);
    assert_eq!(scrubbed(&a.response_headers), b.response_headers);
    assert_eq!(a.websocket, b.websocket);
    assert_eq!(a.tags, b.tags);
    assert_eq!(a.api_key_fingerprint, b.api_key_fingerprint);
    assert_eq!(a.status, b.status);
    assert_eq!(a.outcome, b.outcome);
    for (x, y) in [
        (&a.request_body, &b.request_body),
        (&a.response_body, &b.response_body),
    ] {
        assert_eq!(x.chunks, y.chunks);
        assert_eq!(x.wire_len, y.wire_len);
        assert_eq!(x.truncated, y.truncated);
        assert_eq!(x.content_encoding, y.content_encoding);
    }
}

// === round trip and confidentiality ===

#[test]
fn round_trip_and_no_plaintext_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sink) = open(dir.path(), ring(1));
    let exs = [
        openai_chat(),
        anthropic_stream(),
        gzip_body(),
        truncated_body(),
        websocket_session(),
    ];
    let user = pseudonymize_user(&ring(1), "alice@example.com");
    for ex in &exs {
        store.seal_blocking(ex, Some(&user)).unwrap();
    }
    for ex in &exs {
        let back = store.unseal(ex.id, "test", "round trip").unwrap();
        assert_same(ex, &back);
        assert!(back.request_header("authorization").is_none());
        assert!(back.response_header("set-cookie").is_none());
    }
    let gz = exs[2].response_body.decoded(1 << 20).unwrap();
    assert!(contains(&gz, COMPLETION.as_bytes()));
    assert_eq!(sink.0.lock().unwrap().len(), exs.len());
    assert!(
        sink.0
            .lock()
            .unwrap()
            .iter()
            .all(|e| e.kind == AuditKind::Unseal && e.user.as_deref() == Some(user.as_str()))
    );
    drop(store);
    let gz_raw = exs[2].response_body.bytes();
    let needles: Vec<&[u8]> = vec![
        PROMPT.as_bytes(),
        &PROMPT.as_bytes()[..20],
        SECRET.as_bytes(),
        COMPLETION.as_bytes(),
        &gz_raw[10..40],
        b"alice",
        b"hypertension",
        b"gpt-4o",
        b"api.openai.com",
    ];
    let files = all_files(dir.path());
    let names: Vec<_> = files.iter().map(|(p, _)| p.clone()).collect();
    for p in &names {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", p.display());
    }
    assert!(files.len() >= 3, "{names:?}");
    for (path, bytes) in &files {
        for n in &needles {
            assert!(
                !contains(bytes, n),
                "{} contains plaintext {:?}",
                path.display(),
                String::from_utf8_lossy(n)
            );
        }
    }
}

#[test]
fn duplicate_id_is_refused_and_original_kept() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), ring(1));
    let ex = openai_chat();
    store.seal_blocking(&ex, None).unwrap();
    let mut again = ex.clone();
    again.path = "/other".into();
    let err = store.seal_blocking(&again, None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Duplicate);
    assert_eq!(store.unseal(ex.id, "t", "t").unwrap().path, ex.path);
}

#[test]
fn detached_seals_are_durable_and_their_failures_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), ring(1));
    let ex = openai_chat();
    store.submit_detached(&ex, None).unwrap();
    // A detached duplicate fails after queueing: nobody waits, the writer counts it.
    let mut again = ex.clone();
    again.path = "/other".into();
    store.submit_detached(&again, None).unwrap();
    // The writer takes jobs in order: once a later seal is durable, so are the earlier ones.
    store.seal_blocking(&anthropic_stream(), None).unwrap();
    assert_eq!(store.unseal(ex.id, "t", "t").unwrap().path, ex.path);
    assert_eq!(store.detached_failures(), 1);
}

// === keys and tampering ===

#[test]
fn wrong_or_missing_key_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ex = openai_chat();
    {
        let (store, _) = open(dir.path(), ring(1));
        store.seal_blocking(&ex, None).unwrap();
    }
    let (store, sink) = open(dir.path(), ring(2));
    let err = store.unseal(ex.id, "t", "t").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::WrongKey, "{err}");
    assert!(err.to_string().contains("k1"), "{err}");
    drop(store);
    let other = Keyring::single(MasterKey::from_bytes(KeyId(7), [1; 32]));
    let (store, _) = open(dir.path(), other);
    let err = store.unseal(ex.id, "t", "t").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::KeyMissing, "{err}");
    assert!(
        sink.0.lock().unwrap().is_empty(),
        "failed unseals reveal nothing"
    );
}

fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir.join("sealed/segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[test]
fn flipped_ciphertext_bit_fails_authentication() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), ring(1));
    let ex = openai_chat();
    store.seal_blocking(&ex, None).unwrap();
    let e = store.entry(ex.id).unwrap().unwrap();
    let seg = &segment_files(dir.path())[0];
    let mut bytes = std::fs::read(seg).unwrap();
    let at = (e.offset + envelope::FRAME_HEADER as u64 + 30) as usize;
    bytes[at] ^= 0x04;
    std::fs::write(seg, &bytes).unwrap();
    let err = store.unseal(ex.id, "t", "t").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Authentication, "{err}");
    // A frame moved under another id fails too (the id is associated data).
    let ex2 = openai_chat();
    store.seal_blocking(&ex2, None).unwrap();
    assert!(store.unseal(ex2.id, "t", "t").is_ok());
}

#[test]
fn flipped_key_slot_bit_is_not_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), ring(1));
    let ex = openai_chat();
    store.seal_blocking(&ex, None).unwrap();
    let e = store.entry(ex.id).unwrap().unwrap();
    let path = dir.path().join("sealed/keyslots");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[e.slot as usize * envelope::SLOT_LEN + 50] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let err = store.unseal(ex.id, "t", "t").unwrap_err();
    assert!(
        matches!(err.kind(), ErrorKind::Corrupt | ErrorKind::WrongKey),
        "{err:?}"
    );
}

// === forget ===

#[test]
fn forget_destroys_and_compaction_removes_ciphertext() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sink) = open(dir.path(), ring(1));
    let keep = openai_chat();
    let gone = anthropic_stream();
    store.seal_blocking(&keep, None).unwrap();
    store.seal_blocking(&gone, None).unwrap();
    let e = store.entry(gone.id).unwrap().unwrap();
    let seg = std::fs::read(&segment_files(dir.path())[0]).unwrap();
    let ct = seg[e.offset as usize + envelope::FRAME_HEADER..][..64].to_vec();
    let slots = std::fs::read(dir.path().join("sealed/keyslots")).unwrap();
    let wrapped = slots[e.slot as usize * envelope::SLOT_LEN + 40..][..48].to_vec();

    let out = store
        .forget(&[gone.id], "cli:test", "GDPR art. 17")
        .unwrap();
    assert_eq!(
        out,
        vec![ForgetOutcome {
            id: gone.id,
            forgotten: true
        }]
    );
    let err = store.unseal(gone.id, "t", "t").unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert!(store.entry(gone.id).unwrap().is_none());
    // The wrapped key and the ciphertext are zeroed at once, before compaction.
    let files = all_files(dir.path());
    for (p, b) in &files {
        assert!(
            !contains(b, &wrapped),
            "wrapped key left in {}",
            p.display()
        );
        assert!(!contains(b, &ct), "ciphertext left in {}", p.display());
    }
    let receipts = std::fs::read_to_string(dir.path().join("sealed/receipts.jsonl")).unwrap();
    assert!(receipts.contains(&gone.id.to_string()));
    assert!(receipts.contains("GDPR art. 17"));
    assert!(!receipts.contains(&keep.id.to_string()));
    {
        let ev = sink.0.lock().unwrap();
        assert_eq!(ev.len(), 1);
        assert_eq!(ev[0].kind, AuditKind::Forget);
        assert_eq!(ev[0].request_id, gone.id);
        assert_eq!(ev[0].actor, "cli:test");
    }
    // Twice is harmless; unknown ids say so.
    let again = store.forget(&[gone.id], "t", "again").unwrap();
    assert!(!again[0].forgotten);
    assert_eq!(sink.0.lock().unwrap().len(), 1);

    let before: u64 = segment_files(dir.path())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let stats = store.compact().unwrap();
    assert_eq!(stats.frames_moved, 1);
    assert!(stats.bytes_reclaimed >= e.len as u64, "{stats:?}");
    let after: u64 = segment_files(dir.path())
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    assert!(after + u64::from(e.len) <= before, "{before} -> {after}");
    assert_same(&keep, &store.unseal(keep.id, "t", "t").unwrap());
    // Slot reuse after forget does not disturb the survivor.
    let next = gzip_body();
    store.seal_blocking(&next, None).unwrap();
    assert_eq!(store.entry(next.id).unwrap().unwrap().slot, e.slot);
    assert_same(&next, &store.unseal(next.id, "t", "t").unwrap());
    assert_same(&keep, &store.unseal(keep.id, "t", "t").unwrap());
    drop(store);
    let (store, _) = open(dir.path(), ring(1));
    assert_same(&keep, &store.unseal(keep.id, "t", "t").unwrap());
    assert_same(&next, &store.unseal(next.id, "t", "t").unwrap());
    assert!(store.unseal(gone.id, "t", "t").is_err());
}

#[test]
fn forget_by_user_removes_exactly_that_user() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), ring(1));
    let alice = pseudonymize_user(&ring(1), "alice");
    let bob = pseudonymize_user(&ring(1), "bob");
    let mut by = Vec::new();
    for i in 0..9 {
        let ex = openai_chat();
        let user = match i % 3 {
            0 => Some(&alice),
            1 => Some(&bob),
            _ => None,
        };
        store.seal_blocking(&ex, user).unwrap();
        by.push((ex.id, i % 3));
    }
    let gone = store.forget_user(&alice, "t", "user request").unwrap();
    assert_eq!(gone.len(), 3);
    for (id, who) in &by {
        let present = store.entry(*id).unwrap().is_some();
        assert_eq!(present, *who != 0, "{id} of user {who}");
    }
    assert!(store.ids_for_user(&alice).unwrap().is_empty());
    assert_eq!(store.ids_for_user(&bob).unwrap().len(), 3);
    assert!(store.forget_user(&alice, "t", "again").unwrap().is_empty());
}

#[test]
fn retention_purges_exactly_the_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let (store, sink) = open(dir.path(), ring(1));
    let now = SystemTime::now();
    let mut old = Vec::new();
    let mut young = Vec::new();
    for age_days in [40u64, 31, 29, 1, 0] {
        let mut ex = openai_chat();
        ex.started_at = now - Duration::from_secs(age_days * 86_400);
        store.seal_blocking(&ex, None).unwrap();
        if age_days > 30 { &mut old } else { &mut young }.push(ex.id);
    }
    let mut purged = store
        .purge_before(now - Duration::from_secs(30 * 86_400), "retention")
        .unwrap();
    purged.sort();
    old.sort();
    assert_eq!(purged, old, "purge reports exactly what it destroyed");
    for id in &old {
        assert!(store.entry(*id).unwrap().is_none());
    }
    for id in &young {
        assert!(store.unseal(*id, "t", "t").is_ok());
    }
    let purges: Vec<_> = sink
        .0
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.kind == AuditKind::Purge)
        .map(|e| e.request_id)
        .collect();
    assert_eq!(purges.len(), 2);
    assert!(
        store
            .purge(Duration::from_secs(30 * 86_400), "r")
            .unwrap()
            .is_empty()
    );
}

// === rotation ===

#[test]
fn rotation_and_rewrap_keep_everything_readable() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let mut kr = Keyring::load_or_create(&keys).unwrap();
    let (store, sink) = open(&dir.path().join("data"), Keyring::load(&keys).unwrap());
    let a = openai_chat();
    store.seal_blocking(&a, None).unwrap();
    let new_id = kr.rotate();
    kr.save(&keys).unwrap();
    store.set_keyring(Keyring::load(&keys).unwrap());
    let b = anthropic_stream();
    store.seal_blocking(&b, None).unwrap();
    assert_same(&a, &store.unseal(a.id, "t", "t").unwrap());
    assert_same(&b, &store.unseal(b.id, "t", "t").unwrap());
    assert_eq!(store.rewrap("t").unwrap(), 1);
    assert_eq!(store.rewrap("t").unwrap(), 0, "rewrap is idempotent");
    assert_eq!(
        sink.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.kind == AuditKind::Rewrap)
            .count(),
        1
    );
    drop(store);
    // Only the newest key remains: everything still opens.
    let text = std::fs::read_to_string(keys.join(crate::keys::MASTER_FILE)).unwrap();
    let newest: String = text
        .lines()
        .filter(|l| l.starts_with(&format!("{new_id}:")))
        .collect();
    let (store, _) = open(&dir.path().join("data"), Keyring::parse(&newest).unwrap());
    assert_same(&a, &store.unseal(a.id, "t", "t").unwrap());
    assert_same(&b, &store.unseal(b.id, "t", "t").unwrap());
}

// === concurrency, locking, crash recovery ===

#[test]
fn group_commit_acks_everything_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), ring(1));
    let exs: Vec<Exchange> = (0..500).map(|_| openai_chat()).collect();
    let acks: Vec<SealAck> = exs.iter().map(|e| store.submit(e, None).unwrap()).collect();
    for (a, e) in acks.into_iter().zip(&exs) {
        assert_eq!(a.wait().unwrap(), e.id);
    }
    drop(store);
    let (store, _) = open(dir.path(), ring(1));
    assert_eq!(store.len().unwrap(), 500);
    for e in exs.iter().step_by(37) {
        assert_same(e, &store.unseal(e.id, "t", "t").unwrap());
    }
}

#[test]
fn key_slots_written_in_runs_open_every_exchange_with_freed_slots_between() {
    // A batch's key slots go to the file in runs of consecutive slots; slots freed by a
    // forget are reused first, so one batch mixes reused slots and new ones. Every exchange
    // must still open with its own key, after a reopen.
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = open(dir.path(), ring(1));
    let first: Vec<Exchange> = (0..10).map(|_| openai_chat()).collect();
    for e in &first {
        store.seal_blocking(e, None).unwrap();
    }
    let forgotten: Vec<ExchangeId> = [2, 5, 6].iter().map(|&i| first[i].id).collect();
    let freed: Vec<u64> = forgotten
        .iter()
        .map(|id| store.entry(*id).unwrap().unwrap().slot)
        .collect();
    store.forget(&forgotten, "cli:test", "test").unwrap();
    let burst: Vec<Exchange> = (0..40).map(|_| openai_chat()).collect();
    let acks: Vec<SealAck> = burst
        .iter()
        .map(|e| store.submit(e, None).unwrap())
        .collect();
    for a in acks {
        a.wait().unwrap();
    }
    let slots: Vec<u64> = burst
        .iter()
        .map(|e| store.entry(e.id).unwrap().unwrap().slot)
        .collect();
    assert!(
        freed.iter().all(|f| slots.contains(f)),
        "the freed slots {freed:?} were reused: {slots:?}"
    );
    drop(store);
    let (store, _) = open(dir.path(), ring(1));
    for e in first
        .iter()
        .filter(|e| !forgotten.contains(&e.id))
        .chain(&burst)
    {
        assert_same(e, &store.unseal(e.id, "t", "t").unwrap());
    }
}

#[test]
fn second_open_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let (_store, _) = open(dir.path(), ring(1));
    let err = SealStore::open(dir.path(), ring(1), SealOptions::default()).unwrap_err();
    assert!(err.is_locked(), "{err:?}");
}

#[test]
fn small_segments_roll_and_compact() {
    let dir = tempfile::tempdir().unwrap();
    let store = SealStore::open(
        dir.path(),
        ring(1),
        SealOptions {
            segment_max: Some(4096),
            audit: Some(Arc::new(MemorySink::default())),
            ..Default::default()
        },
    )
    .unwrap();
    let exs: Vec<Exchange> = (0..40).map(|_| openai_chat()).collect();
    for e in &exs {
        store.seal_blocking(e, None).unwrap();
    }
    assert!(segment_files(dir.path()).len() > 3);
    let ids: Vec<_> = exs.iter().step_by(2).map(|e| e.id).collect();
    store.forget(&ids, "t", "t").unwrap();
    store.compact().unwrap();
    for (i, e) in exs.iter().enumerate() {
        assert_eq!(store.unseal(e.id, "t", "t").is_ok(), i % 2 == 1, "{i}");
    }
    drop(store);
    let (store, _) = open(dir.path(), ring(1));
    assert_eq!(store.len().unwrap(), 20);
    for e in exs.iter().skip(1).step_by(2) {
        assert_same(e, &store.unseal(e.id, "t", "t").unwrap());
    }
}

#[test]
fn torn_tail_is_discarded_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let exs: Vec<Exchange> = (0..3).map(|_| openai_chat()).collect();
    {
        let (store, _) = open(dir.path(), ring(1));
        for e in &exs {
            store.seal_blocking(e, None).unwrap();
        }
    }
    let seg = segment_files(dir.path())[0].clone();
    let good_len = std::fs::metadata(&seg).unwrap().len();
    // A half-written frame after the committed ones, as a crash mid-write leaves it.
    let mut f = std::fs::OpenOptions::new().append(true).open(&seg).unwrap();
    let partial =
        envelope::seal_frame(&openai_chat(), &envelope::fresh_data_key(), KeyId(1)).unwrap();
    f.write_all(&partial[..partial.len() / 2]).unwrap();
    drop(f);
    let (store, _) = open(dir.path(), ring(1));
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), good_len);
    for e in &exs {
        assert_same(e, &store.unseal(e.id, "t", "t").unwrap());
    }
    let more = openai_chat();
    store.seal_blocking(&more, None).unwrap();
    assert_same(&more, &store.unseal(more.id, "t", "t").unwrap());
}

#[test]
fn segment_truncated_mid_entry_keeps_the_whole_ones() {
    let dir = tempfile::tempdir().unwrap();
    let exs: Vec<Exchange> = (0..4).map(|_| openai_chat()).collect();
    let last = {
        let (store, _) = open(dir.path(), ring(1));
        for e in &exs {
            store.seal_blocking(e, None).unwrap();
        }
        store.entry(exs[3].id).unwrap().unwrap()
    };
    let seg = segment_files(dir.path())[0].clone();
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(last.offset + u64::from(last.len) / 2).unwrap();
    drop(f);
    let (store, _) = open(dir.path(), ring(1));
    for e in &exs[..3] {
        assert_same(e, &store.unseal(e.id, "t", "t").unwrap());
    }
    let err = store.unseal(exs[3].id, "t", "t").unwrap_err();
    assert!(err.is_not_found(), "{err}");
    assert_eq!(store.len().unwrap(), 3);
    let receipts = std::fs::read_to_string(dir.path().join("sealed/receipts.jsonl")).unwrap();
    assert!(receipts.contains("lost: segment truncated"));
    let more = openai_chat();
    store.seal_blocking(&more, None).unwrap();
    drop(store);
    let (store, _) = open(dir.path(), ring(1));
    assert_same(&more, &store.unseal(more.id, "t", "t").unwrap());
    assert_eq!(store.len().unwrap(), 4);
}

/// Child side of the crash test: seals in a loop and prints `ACK <id>` for each durable one.
/// Runs only when the parent sets `VEIL_SEAL_CRASH_DIR`.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("VEIL_SEAL_CRASH_DIR") else {
        return;
    };
    let store = SealStore::open(Path::new(&dir), ring(9), SealOptions::default()).unwrap();
    let mut out = std::io::stdout().lock();
    let mut n = 0usize;
    loop {
        let acks: Vec<SealAck> = (0..16)
            .map(|i| {
                let mut ex = openai_chat();
                ex.response_body = body(&[&vec![b'x'; 1000 + (n + i) * 997 % 150_000]]);
                store.submit(&ex, None).unwrap()
            })
            .collect();
        for a in acks {
            let id = a.wait().unwrap();
            writeln!(out, "ACK {id}").unwrap();
            out.flush().unwrap();
        }
        n += 16;
    }
}

#[test]
fn sigkill_mid_load_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "seal::tests::crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("VEIL_SEAL_CRASH_DIR", dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(id) = line.strip_prefix("ACK ") {
            acked.push(id.trim().parse::<ExchangeId>().unwrap());
            if acked.len() >= 400 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(acked.len() >= 400, "child acked only {}", acked.len());
    let (store, _) = open(dir.path(), ring(9));
    for id in &acked {
        store
            .unseal(*id, "t", "t")
            .unwrap_or_else(|e| panic!("acknowledged {id} lost: {e}"));
    }
    // Nothing in the index is corrupt, acknowledged or not.
    let all = store.ids().unwrap();
    assert!(all.len() >= acked.len());
    for id in all {
        store
            .unseal(id, "t", "t")
            .unwrap_or_else(|e| panic!("{id} corrupt after crash: {e}"));
    }
}

// === failures: a full disk, an unwritable audit log, races (veil#10) ===

fn receipts(data: &Path) -> String {
    std::fs::read_to_string(data.join("sealed/receipts.jsonl")).unwrap_or_default()
}

/// Waits (bounded) until the store's health is ok again.
fn wait_healthy(store: &SealStore, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    while !store.health().is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "still degraded after {within:?}: {:?}",
            store.health()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

// See: veil#10
#[test]
fn one_failed_commit_on_a_full_disk_recovers_without_restart() {
    let Some(fs) = Tmpfs::mount(
        "one_failed_commit_on_a_full_disk_recovers_without_restart",
        "4m",
    ) else {
        return;
    };
    let data = fs.path().join("data");
    let (store, sink) = open(&data, ring(1));
    let handle = store.health_handle();
    let before: Vec<Exchange> = (0..2).map(|_| openai_chat()).collect();
    for e in &before {
        store.seal_blocking(e, None).unwrap();
    }
    assert!(handle.is_ok());

    fs.fill();
    let lost = openai_chat();
    let err = store.seal_blocking(&lost, None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Io, "{err}");
    // The frame and the key slot still fit in pages the files already have: what fails is the
    // index commit, which poisons redb ("re-open the database") until the handle is reopened.
    assert!(
        err.to_string().starts_with("index:") && err.to_string().contains("No space left"),
        "expected ENOSPC in the index commit: {err}"
    );
    assert!(!handle.is_ok(), "the lock-free handle says degraded");
    let Health::Degraded { last_error, .. } = store.health() else {
        panic!("degraded expected after ENOSPC: {:?}", store.health());
    };
    assert!(last_error.contains("No space left"), "{last_error}");
    assert_eq!(store.stats().failed_commits, 1);
    // While degraded: seals are refused at once, forget destroys nothing.
    let refused = store.submit(&openai_chat(), None).unwrap_err();
    assert_eq!(refused.kind(), ErrorKind::Degraded, "{refused}");
    let fe = store.forget(&[before[0].id], "t", "full disk").unwrap_err();
    assert!(fe.destroyed().is_empty() && fe.pending().is_empty(), "{fe}");
    assert_eq!(fe.not_destroyed(), &[before[0].id]);
    assert!(!receipts(&data).contains(&before[0].id.to_string()));
    assert!(
        sink.0.lock().unwrap().is_empty(),
        "no audit event for a forget that did not happen"
    );

    // Space returns: the next forget works at once, without a restart (it recovers first).
    fs.free();
    let out = store.forget(&[before[0].id], "t", "space is back").unwrap();
    assert!(out[0].forgotten);
    assert!(handle.is_ok(), "{:?}", store.health());
    assert_eq!(store.stats().recoveries, 1);
    assert!(
        store
            .unseal(before[0].id, "t", "t")
            .unwrap_err()
            .is_not_found()
    );
    assert!(receipts(&data).contains(&before[0].id.to_string()));
    // ... and so does the next seal; the failed one left nothing behind.
    let after = openai_chat();
    store.seal_blocking(&after, None).unwrap();
    assert!(store.entry(lost.id).unwrap().is_none());
    for e in before[1..].iter().chain([&after]) {
        assert_same(e, &store.unseal(e.id, "t", "t").unwrap());
    }
    drop(store);
    let (store, _) = open(&data, ring(1));
    assert_eq!(store.len().unwrap(), 2);
    for e in before[1..].iter().chain([&after]) {
        assert_same(e, &store.unseal(e.id, "t", "t").unwrap());
    }
}

// See: veil#15. The seal failure counters an operator alerts on, moved by a real full disk.
#[test]
fn detached_seals_on_a_full_disk_are_counted_failed_and_none_stays_pending() {
    let Some(fs) = Tmpfs::mount(
        "detached_seals_on_a_full_disk_are_counted_failed_and_none_stays_pending",
        "4m",
    ) else {
        return;
    };
    let counters = Arc::new(crate::counters::Counters::default());
    let store = SealStore::open(
        &fs.path().join("data"),
        ring(1),
        SealOptions {
            counters: counters.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    store.seal_blocking(&openai_chat(), None).unwrap();
    fs.fill();
    // Detached, as the pipeline seals: the first batch's commit fails and degrades the store;
    // a batch after it is refused by the writer; a submit after that is refused at once.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut queued = 0;
    for _ in 0..5 {
        let tx = tx.clone();
        if store
            .submit_detached_then(
                &openai_chat(),
                None,
                crate::seal::OnDone::Call(Box::new(move |ok| tx.send(ok).unwrap())),
            )
            .is_ok()
        {
            queued += 1;
        }
    }
    assert!(queued >= 1);
    for _ in 0..queued {
        let ok = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("an outcome");
        assert!(!ok, "nothing is durable on a full disk");
    }
    let c = &counters.seal;
    // A failed job's callback may run just before the writer counts it: wait, bounded.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while c.detached_failures.get() < queued {
        assert!(std::time::Instant::now() < deadline, "{c:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        c.detached_failures.get(),
        queued,
        "veil.seals.failed{{writer}}"
    );
    assert_eq!(c.failed_commits.get(), 1, "one failed batch counts once");
    assert_eq!(c.pending.get(), 0, "failed seals are not pending");
}

fn aged(days: u64) -> Exchange {
    let mut ex = openai_chat();
    ex.started_at = SystemTime::now() - Duration::from_secs(days * 86_400);
    ex
}

fn sorted(mut v: Vec<ExchangeId>) -> Vec<ExchangeId> {
    v.sort();
    v
}

// See: veil#10
#[test]
fn purge_on_a_full_disk_destroys_nothing_without_a_receipt() {
    let Some(fs) = Tmpfs::mount(
        "purge_on_a_full_disk_destroys_nothing_without_a_receipt",
        "4m",
    ) else {
        return;
    };
    let data = fs.path().join("data");
    // The real audit log, on the same full disk.
    let store = SealStore::open(&data, ring(1), SealOptions::default()).unwrap();
    let old: Vec<Exchange> = (0..5).map(|_| aged(40)).collect();
    let young = aged(1);
    for e in old.iter().chain([&young]) {
        store.seal_blocking(e, None).unwrap();
    }
    let old_ids = sorted(old.iter().map(|e| e.id).collect());
    let month = Duration::from_secs(30 * 86_400);

    fs.fill();
    let err = store.purge(month, "retention").unwrap_err();
    // Every eligible exchange is accounted for, in exactly one list.
    let mut all = err.destroyed().to_vec();
    all.extend_from_slice(err.pending());
    all.extend_from_slice(err.not_destroyed());
    assert_eq!(sorted(all), old_ids, "{err}");
    // A full disk cannot take the receipts, and without a receipt nothing is destroyed.
    assert!(
        err.destroyed().is_empty() && err.pending().is_empty(),
        "{err}"
    );
    let audit = std::fs::read_to_string(data.join("audit.jsonl")).unwrap_or_default();
    for id in err.not_destroyed() {
        assert!(!receipts(&data).contains(&id.to_string()));
        assert!(!audit.contains(&id.to_string()));
    }
    assert!(
        receipts(&data).is_empty(),
        "no half receipt left behind: {:?}",
        receipts(&data)
    );

    fs.free();
    for e in &old {
        assert_same(e, &store.unseal(e.id, "t", "still here").unwrap());
    }
    let purged = store.purge(month, "retention").unwrap();
    assert_eq!(sorted(purged), old_ids);
    let r = receipts(&data);
    assert_eq!(r.lines().count(), old.len());
    for line in r.lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
    assert_same(&young, &store.unseal(young.id, "t", "t").unwrap());
}

// See: veil#10
#[test]
fn store_on_a_full_disk_opens_reads_and_refuses_to_destroy_without_a_receipt() {
    let Some(fs) = Tmpfs::mount(
        "store_on_a_full_disk_opens_reads_and_refuses_to_destroy_without_a_receipt",
        "4m",
    ) else {
        return;
    };
    let data = fs.path().join("data");
    let ex = aged(40);
    {
        let (store, _) = open(&data, ring(1));
        store.seal_blocking(&ex, None).unwrap();
    }
    fs.fill();
    // As `veil purge` does on a disk that filled up while veil was stopped.
    let (store, sink) = open(&data, ring(1));
    assert_same(&ex, &store.unseal(ex.id, "t", "t").unwrap());
    let err = store
        .purge(Duration::from_secs(30 * 86_400), "cli:ops")
        .unwrap_err();
    assert_eq!(err.not_destroyed(), &[ex.id], "{err}");
    assert!(err.destroyed().is_empty() && err.pending().is_empty());
    assert_eq!(sink.0.lock().unwrap().len(), 1, "the unseal only");
    fs.free();
    assert_eq!(
        store
            .purge(Duration::from_secs(30 * 86_400), "cli:ops")
            .unwrap(),
        vec![ex.id]
    );
}

// See: veil#10
#[test]
fn purge_whose_index_commit_fails_is_completed_by_recovery() {
    let Some(fs) = Tmpfs::mount(
        "purge_whose_index_commit_fails_is_completed_by_recovery",
        "4m",
    ) else {
        return;
    };
    let data = fs.path().join("data");
    let store = SealStore::open(&data, ring(1), SealOptions::default()).unwrap();
    let old: Vec<Exchange> = (0..5).map(|_| aged(40)).collect();
    let young = aged(1);
    let first = aged(50);
    for e in old.iter().chain([&young, &first]) {
        store.seal_blocking(e, None).unwrap();
    }
    // One forget first, so receipts.jsonl and audit.jsonl each have a page with room: on the
    // full disk the receipts and audit entries still fit, the index commit does not.
    store.forget(&[first.id], "t", "t").unwrap();
    let old_ids = sorted(old.iter().map(|e| e.id).collect());

    fs.fill();
    let destroyed = store
        .purge(Duration::from_secs(30 * 86_400), "retention")
        .unwrap();
    assert_eq!(
        sorted(destroyed),
        old_ids,
        "keys shredded: reported destroyed"
    );
    assert!(!store.health().is_ok(), "the index commit failed: degraded");
    for e in &old {
        let err = store.unseal(e.id, "t", "t").unwrap_err();
        assert!(err.is_not_found(), "{err}");
    }
    let count = |text: &str, id: &ExchangeId| text.matches(&id.to_string()).count();
    fs.free();
    wait_healthy(&store, Duration::from_secs(5));
    // Recovery replayed the receipts past the checkpoint: entries gone, nothing written twice.
    assert_eq!(store.len().unwrap(), 1);
    let audit = std::fs::read_to_string(data.join("audit.jsonl")).unwrap();
    for id in &old_ids {
        assert!(store.entry(*id).unwrap().is_none());
        assert_eq!(count(&receipts(&data), id), 1);
        assert_eq!(count(&audit, id), 1, "one audit entry, not two");
    }
    drop(store);
    let store = SealStore::open(&data, ring(1), SealOptions::default()).unwrap();
    assert_eq!(store.ids().unwrap(), vec![young.id]);
    assert_same(&young, &store.unseal(young.id, "t", "t").unwrap());
}

// See: veil#10
#[test]
fn forget_interrupted_after_its_receipt_is_completed_at_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (openai_chat(), openai_chat());
    let slot = {
        let (store, _) = open(dir.path(), ring(1));
        store.seal_blocking(&a, None).unwrap();
        store.seal_blocking(&b, None).unwrap();
        store.entry(a.id).unwrap().unwrap().slot
    };
    // The state a crash leaves between the write-ahead receipt and the shredding.
    let line = serde_json::json!({"request_id": a.id.to_string(), "time": "2026-11-22T04:25:56.123Z",
        "kind": "forget", "reason": "GDPR art. 17", "actor": "cli:alice", "user": null});
    std::fs::write(
        dir.path().join("sealed/receipts.jsonl"),
        format!("{line}\n"),
    )
    .unwrap();
    let (store, sink) = open(dir.path(), ring(1));
    assert!(store.entry(a.id).unwrap().is_none());
    assert!(store.unseal(a.id, "t", "t").unwrap_err().is_not_found());
    let slots = std::fs::read(dir.path().join("sealed/keyslots")).unwrap();
    let at = slot as usize * envelope::SLOT_LEN;
    assert!(
        slots[at..at + envelope::SLOT_LEN].iter().all(|&x| x == 0),
        "the data key is shredded"
    );
    {
        let ev = sink.0.lock().unwrap();
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!((ev[0].request_id, ev[0].kind), (a.id, AuditKind::Forget));
        assert_eq!(ev[0].actor, "cli:alice");
        assert!(ev[0].reason.starts_with("GDPR art. 17"), "{}", ev[0].reason);
    }
    assert_same(&b, &store.unseal(b.id, "t", "t").unwrap());
    drop(store);
    // Completed once: the next open has nothing to replay.
    let (store, sink) = open(dir.path(), ring(1));
    assert_eq!(store.ids().unwrap(), vec![b.id]);
    assert!(sink.0.lock().unwrap().is_empty());
    assert_eq!(receipts(dir.path()).lines().count(), 1);
}

// See: veil#10
#[test]
fn torn_receipt_line_is_cut_and_destroys_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (openai_chat(), openai_chat());
    {
        let (store, _) = open(dir.path(), ring(1));
        store.seal_blocking(&a, None).unwrap();
        store.seal_blocking(&b, None).unwrap();
    }
    // Half a receipt, as a write that failed part-way and could not be cut back leaves it.
    std::fs::write(
        dir.path().join("sealed/receipts.jsonl"),
        format!("{{\"request_id\":\"{}\",\"ti", a.id),
    )
    .unwrap();
    let (store, sink) = open(dir.path(), ring(1));
    assert_same(&a, &store.unseal(a.id, "t", "t").unwrap());
    assert!(receipts(dir.path()).is_empty(), "the torn line is cut");
    store.forget(&[b.id], "t", "t").unwrap();
    let r = receipts(dir.path());
    assert_eq!(r.lines().count(), 1);
    let v: serde_json::Value = serde_json::from_str(r.lines().next().unwrap()).unwrap();
    assert_eq!(v["request_id"], b.id.to_string());
    assert_eq!(sink.0.lock().unwrap().len(), 2, "one unseal, one forget");
}

/// An audit sink that can be made to fail, like a full or read-only audit disk.
#[derive(Debug, Default)]
struct SwitchSink {
    fail: std::sync::atomic::AtomicBool,
    events: Mutex<Vec<AuditEvent>>,
}

impl AuditSink for SwitchSink {
    fn emit(&self, event: &AuditEvent) -> Result<(), AuditError> {
        if self.fail.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(AuditError::new("audit log: No space left on device"));
        }
        self.events.lock().unwrap().push(event.clone());
        Ok(())
    }
}

// See: veil#10
#[test]
fn unseal_with_an_unwritable_audit_log_returns_no_plaintext() {
    let dir = tempfile::tempdir().unwrap();
    // The real JSONL sink; its file replaced by a directory, which even root cannot append to.
    let store = SealStore::open(dir.path(), ring(1), SealOptions::default()).unwrap();
    let ex = openai_chat();
    store.seal_blocking(&ex, None).unwrap();
    let audit = dir.path().join("audit.jsonl");
    std::fs::create_dir(&audit).unwrap();
    let err = store.unseal(ex.id, "cli:mallory", "curious").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Audit, "{err}");
    assert!(!err.to_string().contains("PLANTED"), "{err}");
    std::fs::remove_dir(&audit).unwrap();
    assert_same(&ex, &store.unseal(ex.id, "cli:alice", "ticket 7").unwrap());
    let lines = std::fs::read_to_string(&audit).unwrap();
    assert_eq!(
        lines.lines().count(),
        1,
        "only the unseal that returned data: {lines}"
    );
    assert!(lines.contains("ticket 7") && !lines.contains("curious"));
}

// See: veil#10
#[test]
fn forget_that_cannot_be_audited_destroys_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let sink = Arc::new(SwitchSink::default());
    let store = SealStore::open(
        dir.path(),
        ring(1),
        SealOptions {
            audit: Some(sink.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    let alice = pseudonymize_user(&ring(1), "alice");
    let (a, b) = (openai_chat(), openai_chat());
    store.seal_blocking(&a, Some(&alice)).unwrap();
    store.seal_blocking(&b, Some(&alice)).unwrap();
    sink.fail.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = store.forget_user(&alice, "t", "erasure").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Audit, "{err}");
    assert_eq!(
        sorted(err.not_destroyed().to_vec()),
        sorted(vec![a.id, b.id])
    );
    assert!(err.destroyed().is_empty() && err.pending().is_empty());
    assert!(
        receipts(dir.path()).is_empty(),
        "the receipts were withdrawn"
    );
    assert!(
        store.health().is_ok(),
        "an audit failure is not a store failure"
    );
    sink.fail.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_same(&a, &store.unseal(a.id, "t", "t").unwrap());
    let gone = store.forget_user(&alice, "t", "erasure").unwrap();
    assert_eq!(sorted(gone), sorted(vec![a.id, b.id]));
    assert_eq!(receipts(dir.path()).lines().count(), 2);
    let kinds: Vec<AuditKind> = sink.events.lock().unwrap().iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds,
        vec![AuditKind::Unseal, AuditKind::Forget, AuditKind::Forget]
    );
}

// See: veil#10
#[test]
fn racing_unseal_and_forget_answers_not_found_never_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let store = SealStore::open(
        dir.path(),
        ring(1),
        SealOptions {
            // Small segments, so compaction really moves frames under the readers.
            segment_max: Some(16 << 10),
            audit: Some(Arc::new(MemorySink::default())),
            ..Default::default()
        },
    )
    .unwrap();
    const N: usize = 300;
    let exs: Vec<Exchange> = (0..N).map(|_| openai_chat()).collect();
    for chunk in exs.chunks(50) {
        let acks: Vec<SealAck> = chunk
            .iter()
            .map(|e| store.submit(e, None).unwrap())
            .collect();
        for a in acks {
            a.wait().unwrap();
        }
    }
    let ids: Vec<ExchangeId> = exs.iter().map(|e| e.id).collect();
    // The forgetter announces the id it is about to forget; the reader unseals exactly that
    // one, over and over, so reads land in every phase of the forget (before, during the
    // shredding, between shredding and unindexing, after). Bounded: N forgets, and the reader
    // stops when they are done or after 200,000 reads.
    let current = std::sync::atomic::AtomicUsize::new(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    let (not_found, read) = std::thread::scope(|s| {
        let forgetter = s.spawn(|| {
            for (i, id) in ids.iter().enumerate() {
                current.store(i, std::sync::atomic::Ordering::SeqCst);
                store.forget(&[*id], "t", "race").unwrap();
                if i % 50 == 49 {
                    store.compact().unwrap();
                }
            }
            done.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let reader = s.spawn(|| {
            let (mut not_found, mut read) = (0usize, 0usize);
            for _ in 0..200_000 {
                if done.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let i = current.load(std::sync::atomic::Ordering::SeqCst);
                // The one being forgotten, and the next one (which compaction may move).
                for j in [i, (i + 1).min(N - 1)] {
                    match store.unseal(ids[j], "t", "race") {
                        Ok(back) => {
                            assert_same(&exs[j], &back);
                            read += 1;
                        }
                        Err(err) if err.is_not_found() => not_found += 1,
                        Err(err) => panic!("{}: raced a forget and got {err:?}", ids[j]),
                    }
                }
            }
            (not_found, read)
        });
        forgetter.join().unwrap();
        reader.join().unwrap()
    });
    assert!(
        not_found > 0 && read > 0,
        "the reader met the forgetter: {read} read, {not_found} not found"
    );
    assert!(store.is_empty().unwrap());
}

// === a real full disk ===

/// A small tmpfs mounted for one test, so "disk full" is a real ENOSPC from the kernel, not a
/// mock. Mounting needs root: without it [`Tmpfs::mount`] prints a visible notice and returns
/// `None` (the test then checks nothing and says so), and under `CI=true` it panics instead,
/// because there the disk-full tests are mandatory. Unmounted on drop.
pub(crate) struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    pub(crate) fn mount(test: &str, size: &str) -> Option<Tmpfs> {
        let skip = |why: String| {
            let msg = format!("{test}: {why}; this disk-full test did NOT run");
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{msg} (mandatory under CI=true: run the tests as root)");
            }
            eprintln!("NOTICE: {msg}");
            None
        };
        if !rustix::process::geteuid().is_root() {
            return skip("needs root to mount a tmpfs".into());
        }
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            Ok(o) => skip(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            )),
            Err(e) => skip(format!("cannot run mount: {e}")),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system to the last byte (a filler file written until ENOSPC).
    pub(crate) fn fill(&self) {
        let mut f = std::fs::File::create(self.path().join("filler")).unwrap();
        let chunk = vec![0xa5u8; 4096];
        let mut total = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(28), "ENOSPC expected: {e}");
                    break;
                }
            }
            assert!(total < 1 << 30, "a small tmpfs never takes 1 GiB");
        }
        // Bytes that fit in a partly used page: take them too.
        for _ in 0..4096 {
            if f.write(&[0xa5]).is_err() {
                break;
            }
        }
    }

    /// Gives back what [`Tmpfs::fill`] took. Truncates before unlinking: a process another
    /// test is spawning at that moment may hold an inherited descriptor of the filler until it
    /// execs, and an unlinked file's pages are freed only when the last descriptor closes.
    pub(crate) fn free(&self) {
        let filler = self.path().join("filler");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&filler)
            .and_then(|f| f.set_len(0))
            .unwrap();
        std::fs::remove_file(&filler).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let out = std::process::Command::new("umount")
            .arg(self.dir.path())
            .output();
        if !matches!(&out, Ok(o) if o.status.success()) {
            // Busy (a file still open): detach it so the temp dir can go.
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

// === envelope properties ===

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    #[test]
    fn envelope_round_trips_any_chunks_and_headers(
        req in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..300), 0..5),
        resp in proptest::collection::vec(proptest::collection::vec(proptest::num::u8::ANY, 0..300), 0..5),
        headers in proptest::collection::vec(("[a-zA-Z-]{1,12}", "\\PC{0,20}"), 0..6),
        status in proptest::option::of(100u16..600),
    ) {
        let mut ex = openai_chat();
        ex.request_body.chunks = req.into_iter().map(Bytes::from).collect();
        ex.response_body.chunks = resp.into_iter().map(Bytes::from).collect();
        ex.request_headers = headers.into();
        ex.status = status;
        let key = envelope::fresh_data_key();
        let frame = envelope::seal_frame(&ex, &key, KeyId(3)).unwrap();
        let h = envelope::parse_frame_header(&frame).unwrap();
        proptest::prop_assert!(envelope::frame_crc_ok(&frame, &h));
        let back = envelope::open_frame(frame.clone(), ex.id, &key).unwrap();
        assert_same(&ex, &back);
        // Any other id, or any other key, is an authentication failure.
        let other = envelope::open_frame(frame.clone(), ExchangeId::new(), &key).unwrap_err();
        proptest::prop_assert_eq!(other.kind(), ErrorKind::Corrupt);
        let wrong = envelope::open_frame(frame, ex.id, &envelope::fresh_data_key()).unwrap_err();
        proptest::prop_assert_eq!(wrong.kind(), ErrorKind::Authentication);
    }
}
