//! Tests of the store's internals (what waits for the writer). The behaviour tests of the
//! sealed store are in `crate::seal::tests`.

use std::sync::atomic::Ordering;

use super::*;

// See: veil#10. Forty 20 MB exchanges once waited for the disk in memory, bounded only
// by a count of 4096 jobs.
#[test]
fn submit_refuses_past_the_pending_byte_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = SealStore::open(
        dir.path(),
        crate::seal::tests::ring(3),
        SealOptions::default(),
    )
    .unwrap();
    let mut big = crate::seal::tests::openai_chat();
    big.request_body.chunks = vec![bytes::Bytes::from(vec![b'x'; 20 << 20])];
    // Pretend 250 MiB of frames already wait: one more 20 MB exchange is refused.
    store.inner.pending_bytes.store(250 << 20, Ordering::SeqCst);
    let err = store.submit(&big, None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy);
    assert!(err.to_string().contains("250 MiB"), "{err}");
    assert_eq!(
        store.inner.pending_bytes.load(Ordering::SeqCst),
        250 << 20,
        "a refused job gives its bytes back"
    );
    // Nothing waiting: even a frame over the bound alone is taken, and its bytes come back.
    store.inner.pending_bytes.store(0, Ordering::SeqCst);
    big.request_body.chunks = vec![bytes::Bytes::from(vec![b'x'; 300 << 20])];
    store.submit(&big, None).unwrap().wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.inner.pending_bytes.load(Ordering::SeqCst) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "bytes released after the write"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn submit_refuses_past_the_pending_bound_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let store = SealStore::open(
        dir.path(),
        crate::seal::tests::ring(3),
        SealOptions::default(),
    )
    .unwrap();
    // Pretend the disk lags: the bound is reached.
    store
        .inner
        .pending
        .store(MAX_PENDING_SEALS, Ordering::SeqCst);
    let ex = crate::seal::tests::openai_chat();
    let err = store.submit(&ex, None).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Busy);
    assert_eq!(
        store.inner.pending.load(Ordering::SeqCst),
        MAX_PENDING_SEALS,
        "a refused job is not counted"
    );
    store.inner.pending.store(0, Ordering::SeqCst);
    store.submit(&ex, None).unwrap().wait().unwrap();
    // The writer drops the job just after acknowledging it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while store.inner.pending.load(Ordering::SeqCst) != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a written job no longer counts"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

// See: veil#18. A pipeline seal holds its exchange's place in the recording queue's bounds
// until the writer is done with its frame: given back once it is written, and at once when the
// store refuses it. A share kept by the store would hold a place for good, and a queue whose
// places all leak records nothing more.
#[test]
fn a_seal_gives_its_exchanges_place_back_when_written_or_refused() {
    use crate::exchange::queue::channel;
    let dir = tempfile::tempdir().unwrap();
    let ring = crate::seal::tests::ring(3);
    let store = SealStore::open(dir.path(), ring, Default::default()).unwrap();
    let counters = std::sync::Arc::new(crate::counters::Counters::default());
    let (queue, mut taken) = channel(2, 1 << 20, counters.clone());
    for attempt in 0..2 {
        queue.try_send(crate::seal::tests::openai_chat()).unwrap();
        let queued = taken.try_recv().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let c = counters.clone();
        let submitted = store.submit_detached_users(
            &queued,
            &[],
            Some(OnDone::Call(Box::new(move |ok| {
                tx.send((ok, c.queue.in_flight.get())).unwrap()
            }))),
            queued.in_flight(),
        );
        drop(queued);
        if attempt == 0 {
            submitted.unwrap();
            assert_eq!(
                rx.recv().unwrap(),
                (true, 0),
                "durable, and the place given back"
            );
            store.degrade_for_test("a test");
        } else {
            assert!(submitted.is_err(), "a degraded store refuses");
        }
        assert_eq!(
            (counters.queue.in_flight.get(), counters.queue.bytes.get()),
            (0, 0)
        );
    }
}

/// An exchange through a recording queue of one place, taken as the pipeline takes it and
/// sealed detached with its share of the place, as the pipeline seals it, then dropped:
/// the queue (both ends: a queue whose worker is gone refuses as closed), its counters, and
/// where the seal's outcome arrives.
fn seal_from_the_queue(
    store: &SealStore,
) -> (
    (
        crate::exchange::queue::ExchangeSender,
        crate::exchange::queue::ExchangeReceiver,
    ),
    std::sync::Arc<crate::counters::Counters>,
    std::sync::mpsc::Receiver<bool>,
) {
    let counters = std::sync::Arc::new(crate::counters::Counters::default());
    let (queue, mut taken) = crate::exchange::queue::channel(1, 1 << 20, counters.clone());
    queue.try_send(crate::seal::tests::openai_chat()).unwrap();
    let queued = taken.try_recv().unwrap();
    let (done_tx, done) = std::sync::mpsc::channel();
    store
        .submit_detached_users(
            &queued,
            &[],
            Some(OnDone::Call(Box::new(move |ok| done_tx.send(ok).unwrap()))),
            queued.in_flight(),
        )
        .unwrap();
    drop(queued);
    ((queue, taken), counters, done)
}

/// Seals one exchange whose completion callback, which runs on the writer thread, waits:
/// returns once the writer is held there, with what releases it. Exchanges submitted
/// meanwhile wait in the store's channel and go in the next batch.
fn hold_the_writer(store: &SealStore) -> std::sync::mpsc::Sender<()> {
    use std::sync::mpsc;
    use std::time::Duration;
    let (writer_held, held) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    store
        .submit_detached_users(
            &crate::seal::tests::openai_chat(),
            &[],
            Some(OnDone::Call(Box::new(move |_| {
                writer_held.send(()).unwrap();
                released.recv_timeout(Duration::from_secs(10)).unwrap();
            }))),
            crate::exchange::queue::InFlight::default(),
        )
        .unwrap();
    held.recv_timeout(Duration::from_secs(10)).unwrap();
    release
}

/// A sealed frame waiting for the writer keeps its exchange's place after the pipeline has
/// dropped the exchange: the bound covers frames not yet staged, not only those in a batch.
/// The writer is held inside the completion callback of an earlier seal, so the second one
/// waits in the store's channel for as long as the test needs.
#[test]
fn a_frame_waiting_for_the_writer_keeps_its_exchanges_place() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let store =
        SealStore::open(dir.path(), crate::seal::tests::ring(3), Default::default()).unwrap();
    let release = hold_the_writer(&store);
    let ((queue, _taken), counters, done) = seal_from_the_queue(&store);
    assert_eq!(
        counters.queue.in_flight.get(),
        1,
        "the frame, not yet staged, holds the place"
    );
    assert_eq!(
        queue.try_admit(),
        Err(crate::exchange::queue::Refusal::Full)
    );
    release.send(()).unwrap();
    assert!(
        done.recv_timeout(Duration::from_secs(10)).unwrap(),
        "sealed"
    );
    assert_eq!(
        (counters.queue.in_flight.get(), counters.queue.bytes.get()),
        (0, 0)
    );
    queue.try_admit().unwrap();
}

/// Waits (at most 10 s) until a writer has taken the pause set in
/// `writer::tests::PAUSE_BEFORE_WRITE`, i.e. staged a batch and stopped before writing it.
fn wait_until_paused() {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while super::writer::tests::PAUSE_BEFORE_WRITE
        .lock()
        .unwrap()
        .is_some()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the writer never paused"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// The tests that pause a writer (`writer::tests::PAUSE_BEFORE_WRITE`, one slot), one at a
/// time: each waits for the slot to be taken, which another test's writer could do.
static ONE_PAUSE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A large batch of small frames is written a MiB at a time (`writer::STAGE_FLUSH`), not
/// staged whole: the stage keeps its room between batches, so one burst would otherwise hold
/// up to 64 MiB for the process's life. The writer is held in an earlier seal's callback
/// while 3,000 exchanges (~13 MB of frames) queue up, then paused before its next batch's
/// last write: by then the segment file already holds megabytes of that batch.
#[test]
fn a_large_batch_is_written_a_mib_at_a_time() {
    use crate::exchange::queue::InFlight;
    use std::sync::mpsc;
    use std::time::Duration;
    let _one_pause = ONE_PAUSE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let store =
        SealStore::open(dir.path(), crate::seal::tests::ring(3), Default::default()).unwrap();
    let release = hold_the_writer(&store);
    let segments = || -> u64 {
        std::fs::read_dir(store.inner.dir.join("segments"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            .map(|e| e.metadata().unwrap().len())
            .sum()
    };
    let before = segments();
    let (go, wait) = mpsc::channel();
    *super::writer::tests::PAUSE_BEFORE_WRITE.lock().unwrap() =
        Some((store.inner.dir.clone(), wait));
    let (sealed_tx, sealed) = mpsc::channel();
    let n = 3000;
    for _ in 0..n {
        let tx = sealed_tx.clone();
        store
            .submit_detached_users(
                &crate::seal::tests::openai_chat(),
                &[],
                Some(OnDone::Call(Box::new(move |ok| tx.send(ok).unwrap()))),
                InFlight::default(),
            )
            .unwrap();
    }
    release.send(()).unwrap();
    wait_until_paused();
    // Without the flushes nothing of the batch is in the file yet (every frame is staged).
    let pending = store.pending_bytes();
    let written = segments() - before;
    assert!(
        written >= 2 * super::writer::STAGE_FLUSH as u64,
        "written before the batch's last write: {written} ({pending} bytes pending)"
    );
    go.send(()).unwrap();
    for _ in 0..n {
        assert!(sealed.recv_timeout(Duration::from_secs(10)).unwrap());
    }
}

/// A staged frame is counted (the store's pending bytes, which the disk watch adds up, and
/// its exchange's queue place) until the writer has written it to the segment file: the
/// writer stages up to a MiB of small frames before one write.
#[test]
fn a_staged_frame_is_counted_until_it_is_written() {
    use std::sync::mpsc;
    use std::time::Duration;
    let _one_pause = ONE_PAUSE.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let store =
        SealStore::open(dir.path(), crate::seal::tests::ring(3), Default::default()).unwrap();
    let (go, wait) = mpsc::channel();
    *super::writer::tests::PAUSE_BEFORE_WRITE.lock().unwrap() =
        Some((store.inner.dir.clone(), wait));
    let (_queue, counters, done) = seal_from_the_queue(&store);
    // The writer took the job and staged its frame; it waits before writing.
    wait_until_paused();
    assert!(
        store.pending_bytes() > 0,
        "staged, not written: still pending"
    );
    assert_eq!(counters.queue.in_flight.get(), 1, "and holding its place");
    go.send(()).unwrap();
    assert!(
        done.recv_timeout(Duration::from_secs(10)).unwrap(),
        "sealed"
    );
    assert_eq!(store.pending_bytes(), 0);
    assert_eq!(counters.queue.in_flight.get(), 0);
}

// See: veil#13. Only the winning identity source indexed the exchange: a user named in the
// body but overridden by `x-veil-user` was not found by `forget --user`.
#[test]
fn every_pseudonym_of_an_exchange_finds_it_and_forgetting_one_unindexes_all() {
    for forget_by in [0, 1] {
        let dir = tempfile::tempdir().unwrap();
        let ring = crate::seal::tests::ring(3);
        let bob = crate::keys::pseudonymize_user(&ring, "bob");
        let alice = crate::keys::pseudonymize_user(&ring, "alice@example.com");
        let store = SealStore::open(dir.path(), ring, Default::default()).unwrap();
        let ex = crate::seal::tests::openai_chat();
        let (tx, rx) = std::sync::mpsc::channel();
        store
            .submit_detached_users(
                &ex,
                &[bob.clone(), alice.clone(), bob.clone()],
                Some(OnDone::Call(Box::new(move |ok| tx.send(ok).unwrap()))),
                Default::default(),
            )
            .unwrap();
        assert!(rx.recv().unwrap(), "sealed");
        assert_eq!(store.ids_for_user(&bob).unwrap(), vec![ex.id]);
        assert_eq!(store.ids_for_user(&alice).unwrap(), vec![ex.id]);
        let entry = store.entry(ex.id).unwrap().unwrap();
        assert_eq!(
            entry.user.as_deref(),
            Some(bob.as_str()),
            "the winner first"
        );
        assert_eq!(entry.also, vec![alice.as_str().to_string()], "deduplicated");

        let who = [&alice, &bob][forget_by];
        assert_eq!(store.forget_user(who, "test", "test").unwrap(), vec![ex.id]);
        assert!(store.ids_for_user(&bob).unwrap().is_empty());
        assert!(store.ids_for_user(&alice).unwrap().is_empty());
        assert_eq!(store.already_forgotten(&[ex.id]).unwrap(), vec![ex.id]);
    }
}

#[test]
fn index_entries_of_one_user_keep_the_version_1_encoding() {
    let mut e = IndexEntry {
        segment: 3,
        offset: 99,
        len: 7,
        slot: 5,
        time: std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1234),
        user: Some("u_0123456789abcdef".into()),
        also: Vec::new(),
    };
    let v1 = e.encode();
    assert_eq!(v1[0], 1, "readable by an older veil");
    assert_eq!(IndexEntry::decode(&v1).unwrap(), e);
    e.also = vec!["u_fedcba9876543210".into(), "u_00000000000000ff".into()];
    let v2 = e.encode();
    assert_eq!(v2[0], 2);
    assert_eq!(IndexEntry::decode(&v2).unwrap(), e);
    assert!(
        IndexEntry::decode(&v2[..v2.len() - 1]).is_err(),
        "a cut entry is corrupt"
    );
}

/// `veil.seals.pending` (veil#15) counts a job from `submit` until its batch has an outcome:
/// up while the writer cannot commit (a test holds the index's one write transaction), down
/// once it has, for waited and detached seals alike.
#[test]
fn seals_pending_rises_until_the_batch_commits_then_falls() {
    let dir = tempfile::tempdir().unwrap();
    let counters = std::sync::Arc::new(crate::counters::Counters::default());
    let store = SealStore::open(
        dir.path(),
        crate::seal::tests::ring(3),
        SealOptions {
            counters: counters.clone(),
            ..Default::default()
        },
    )
    .unwrap();
    let pending = || counters.seal.pending.get();
    let index = store.inner.index.clone();
    let guard = index.get().unwrap();
    let blocker = guard.begin_write().unwrap();
    let waited = store
        .submit(&crate::seal::tests::openai_chat(), None)
        .unwrap();
    store
        .submit_detached(&crate::seal::tests::openai_chat(), None)
        .unwrap();
    // The writer takes the jobs and waits for the write transaction: neither is committed.
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(pending(), 2, "two seals wait for the disk");
    drop(blocker);
    drop(guard);
    waited.wait().unwrap();
    // The detached one may be in the same batch or the next: wait for it, bounded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while pending() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} seals still pending after their commit",
            pending()
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(store.len().unwrap(), 2);
    assert_eq!(counters.seal.detached_failures.get(), 0);
    // Refused before queueing (the store is closed for it): never pending.
    let mut dup = crate::seal::tests::openai_chat();
    store.seal_blocking(&dup, None).unwrap();
    dup.path = "/again".into();
    assert_eq!(
        store.seal_blocking(&dup, None).unwrap_err().kind(),
        ErrorKind::Duplicate
    );
    assert_eq!(pending(), 0, "a duplicate is an outcome too");
}
