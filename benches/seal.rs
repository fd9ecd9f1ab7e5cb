//! Sealed store benchmarks.
//!
//! - `seal_frame/<size>`: serialize + AES-256-GCM one exchange (the CPU cost per caller), MB/s.
//! - `store_seal_durable/<size>`: the same through the store, fsync + index commit included.
//! - `group_commit/small`: 1,000 small exchanges in flight, exchanges/s with group commit.
//! - after criterion: forget latency (one ID per call, fsyncs included), p50/p99/max.
//!
//! ```text
//! cargo bench --bench seal
//! ```
use std::hint::black_box;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use criterion::{Criterion, Throughput};
use veil::exchange::{Body, Exchange, ExchangeId, Outcome, Route, Timings, Upstream};
use veil::keys::{KeyId, Keyring, MasterKey};
use veil::seal::envelope::{fresh_data_key, seal_frame};
use veil::seal::{SealOptions, SealStore};

fn exchange(req: usize, resp: usize) -> Exchange {
    let body = |len: usize| Body {
        chunks: vec![Bytes::from(vec![b'x'; len])],
        wire_len: len as u64,
        truncated: false,
        content_encoding: None,
    };
    Exchange {
        id: ExchangeId::new(),
        started_at: SystemTime::now(),
        timings: Timings {
            end: Duration::from_millis(5),
            ..Default::default()
        },
        client_addr: None,
        route: Route::Intercept,
        upstream: Upstream {
            scheme: "https".into(),
            host: "api.openai.com".into(),
            port: 443,
        },
        client_version: "HTTP/1.1".into(),
        method: "POST".into(),
        path: "/v1/chat/completions".into(),
        request_headers: vec![("content-type".into(), "application/json".into())].into(),
        tags: Default::default(),
        api_key_fingerprint: None,
        request_body: body(req),
        status: Some(200),
        response_headers: vec![("content-type".into(), "application/json".into())].into(),
        response_body: body(resp),
        outcome: Outcome::Complete,
        websocket: None,
    }
}

fn keyring() -> Keyring {
    Keyring::single(MasterKey::from_bytes(KeyId(1), [7; 32]))
}

fn store(dir: &std::path::Path) -> SealStore {
    SealStore::open(dir, keyring(), SealOptions::default()).expect("open")
}

fn bench_seal_frame(c: &mut Criterion) {
    let mut g = c.benchmark_group("seal_frame");
    g.measurement_time(Duration::from_secs(5)).sample_size(20);
    for size in [64 << 10, 4 << 20, 16 << 20] {
        let ex = exchange(size / 4, size - size / 4);
        let key = fresh_data_key();
        let frame = seal_frame(&ex, &key, KeyId(1)).expect("seal");
        assert!(frame.len() > size, "frame holds the whole payload");
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("{}KiB", size >> 10), |b| {
            b.iter(|| black_box(seal_frame(black_box(&ex), &key, KeyId(1)).expect("seal")))
        });
    }
    g.finish();
}

/// The AEAD alone, the two implementations side by side in one run: *ring* (what the store
/// seals with) and the RustCrypto `aes-gcm` crate (what it sealed with before; still used by
/// the rules' `encrypt` action). Same key, nonce, associated data and buffer sizes.
fn bench_aead(c: &mut Criterion) {
    use aes_gcm::aead::{AeadInPlace, KeyInit};
    let mut g = c.benchmark_group("aes256gcm");
    g.measurement_time(Duration::from_secs(3)).sample_size(20);
    let key = [7u8; 32];
    let (nonce, aad) = ([1u8; 12], [2u8; 32]);
    let ring_key = ring::aead::LessSafeKey::new(
        ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &key).expect("key"),
    );
    let other = aes_gcm::Aes256Gcm::new(aes_gcm::Key::<aes_gcm::Aes256Gcm>::from_slice(&key));
    for size in [2 << 10, 64 << 10, 16 << 20] {
        let mut buf = vec![0x5au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(format!("ring/{}KiB", size >> 10), |b| {
            b.iter(|| {
                black_box(
                    ring_key
                        .seal_in_place_separate_tag(
                            ring::aead::Nonce::assume_unique_for_key(nonce),
                            ring::aead::Aad::from(&aad),
                            &mut buf,
                        )
                        .expect("seal"),
                )
            })
        });
        g.bench_function(format!("aes-gcm/{}KiB", size >> 10), |b| {
            b.iter(|| {
                black_box(
                    other
                        .encrypt_in_place_detached(
                            aes_gcm::Nonce::from_slice(&nonce),
                            &aad,
                            &mut buf,
                        )
                        .expect("seal"),
                )
            })
        });
    }
    g.finish();
}

fn bench_store_durable(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let mut g = c.benchmark_group("store_seal_durable");
    g.measurement_time(Duration::from_secs(5)).sample_size(10);
    let size = 4 << 20;
    let probe = exchange(size / 4, size - size / 4);
    s.seal_blocking(&probe, None).expect("seal");
    assert_eq!(
        s.unseal(probe.id, "bench", "check")
            .expect("unseal")
            .response_body
            .captured_len(),
        size - size / 4
    );
    g.throughput(Throughput::Bytes(size as u64 * 8));
    g.bench_function("8x4MiB_in_flight", |b| {
        b.iter_batched(
            || {
                (0..8)
                    .map(|_| exchange(size / 4, size - size / 4))
                    .collect::<Vec<_>>()
            },
            |exs| {
                let acks: Vec<_> = exs
                    .iter()
                    .map(|e| s.submit(e, None).expect("submit"))
                    .collect();
                for a in acks {
                    a.wait().expect("durable");
                }
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn bench_group_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let mut g = c.benchmark_group("group_commit");
    g.measurement_time(Duration::from_secs(8)).sample_size(10);
    const N: usize = 1000;
    let probe: Vec<_> = (0..N).map(|_| exchange(600, 1200)).collect();
    let acks: Vec<_> = probe
        .iter()
        .map(|e| s.submit(e, None).expect("submit"))
        .collect();
    for a in acks {
        a.wait().expect("durable");
    }
    assert_eq!(
        s.len().expect("len"),
        N as u64,
        "every acked exchange is indexed"
    );
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("small_1000_in_flight", |b| {
        b.iter_batched(
            || (0..N).map(|_| exchange(600, 1200)).collect::<Vec<_>>(),
            |exs| {
                let acks: Vec<_> = exs
                    .iter()
                    .map(|e| s.submit(e, None).expect("submit"))
                    .collect();
                for a in acks {
                    a.wait().expect("durable");
                }
            },
            criterion::BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn forget_latency() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s = store(dir.path());
    let exs: Vec<_> = (0..2000).map(|_| exchange(600, 1200)).collect();
    let acks: Vec<_> = exs
        .iter()
        .map(|e| s.submit(e, None).expect("submit"))
        .collect();
    for a in acks {
        a.wait().expect("durable");
    }
    let mut lat = Vec::with_capacity(exs.len());
    for e in &exs {
        let t = Instant::now();
        let out = s.forget(&[e.id], "bench", "latency").expect("forget");
        lat.push(t.elapsed());
        assert!(out[0].forgotten);
    }
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "forget latency over {} single-id forgets (fsync included): p50 {:?}  p99 {:?}  max {:?}",
        lat.len(),
        pct(0.50),
        pct(0.99),
        lat[lat.len() - 1]
    );
    assert!(s.is_empty().expect("len"));
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_seal_frame(&mut c);
    bench_aead(&mut c);
    bench_store_durable(&mut c);
    bench_group_commit(&mut c);
    c.final_summary();
    if !std::env::args().any(|a| a == "--list") {
        forget_latency();
    }
}
