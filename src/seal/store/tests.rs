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
