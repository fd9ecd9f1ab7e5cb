//! Load benchmark of the hot path: direct to the upstream versus through veil, in one run.
//!
//! `cargo bench --bench load` (or `benches/load.sh`). It starts the mock provider in-process,
//! the release `veil` binary as a child process (so its CPU and memory are its own), then:
//! - requests/s and latency p50/p99 for a ~2 KB non-streaming completion over keep-alive TLS
//!   at 1, 8 and 64 connections, direct and through veil;
//! - time to first chunk of a stream of 50 chunks 5 ms apart, direct and through veil;
//! - veil's peak RSS with 1,000 idle keep-alive intercepted client connections.
//!
//! Everything binds 127.0.0.1; every loop is bounded in time and count. `LOAD_SECS` sets the
//! measurement window per scenario (default 4 s). The child inherits the environment, so
//! `VEIL_CONFIG=FILE` configures it (`ledger = false` turns the SQLite ledger off, and records
//! then go to `data/records/` as OTLP/JSON files, counted as spans below). The idle-connection RSS and the time to
//! first chunk are measured first, on a fresh veil whose recording pipeline is idle; the
//! throughput runs come last because at full load the pipeline (parse, redact, export, seal on
//! the same 2 cores) competes with forwarding and leaves a backlog behind it.

#[path = "../tests/it/support/mock_llm.rs"]
#[allow(dead_code)]
mod mock_llm;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use mock_llm::{Alpn, Mock};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Direct,
    Veil,
}

struct Setup {
    mock: Mock,
    veil: SocketAddr,
    veil_ca: String,
    veil_pid: u32,
}

fn tls_client(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

async fn open(setup: &Setup, path: Path) -> SendRequest<Full<Bytes>> {
    let (stream, ca) = match path {
        Path::Direct => (
            TcpStream::connect(setup.mock.addr).await.unwrap(),
            &setup.mock.ca_pem,
        ),
        Path::Veil => {
            let mut s = TcpStream::connect(setup.veil).await.unwrap();
            s.write_all(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n")
                .await
                .unwrap();
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                assert_eq!(s.read(&mut b).await.unwrap(), 1);
                head.push(b[0]);
            }
            assert!(head.starts_with(b"HTTP/1.1 200"));
            (s, &setup.veil_ca)
        }
    };
    stream.set_nodelay(true).unwrap();
    let tls = tokio_rustls::TlsConnector::from(tls_client(ca))
        .connect("api.openai.com".try_into().unwrap(), stream)
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

fn completion_request(stream_chunks: Option<&str>) -> Request<Full<Bytes>> {
    let body = if stream_chunks.is_some() {
        r#"{"model":"gpt-4o-mini","stream":true,"messages":[{"role":"user","content":"Write a haiku about latency."}]}"#
    } else {
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Write a haiku about latency."}]}"#
    };
    let mut req = Request::post("/v1/chat/completions")
        .header("host", "api.openai.com")
        .header("content-type", "application/json")
        .header("authorization", "Bearer sk-bench")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    if let Some(chunks) = stream_chunks {
        req.headers_mut()
            .insert("x-mock-chunks", chunks.parse().unwrap());
    }
    req
}

struct Stats {
    requests: usize,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

async fn throughput(setup: &Setup, path: Path, conns: usize, window: Duration) -> Stats {
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(open(setup, path).await);
    }
    // Warm up pools and caches.
    for c in clients.iter_mut() {
        let resp = c.send_request(completion_request(None)).await.unwrap();
        resp.into_body().collect().await.unwrap();
    }
    let deadline = Instant::now() + window;
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(4096);
                // Bounded by time and by count.
                while Instant::now() < deadline && lat.len() < 1_000_000 {
                    c.ready().await.unwrap();
                    let t = Instant::now();
                    let resp = c.send_request(completion_request(None)).await.unwrap();
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    assert!(body.len() > 2000);
                    lat.push(t.elapsed().as_nanos() as u64);
                }
                lat
            })
        })
        .collect();
    let started = Instant::now();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| all[((all.len() as f64 * p) as usize).min(all.len() - 1)] as f64 / 1000.0;
    Stats {
        requests: all.len(),
        rps: all.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

async fn time_to_first_chunk(setup: &Setup, path: Path, runs: usize) -> f64 {
    let mut c = open(setup, path).await;
    let mut ttfc = Vec::new();
    for _ in 0..runs {
        c.ready().await.unwrap();
        let t = Instant::now();
        let resp = c
            .send_request(completion_request(Some("50,5")))
            .await
            .unwrap();
        let mut body = resp.into_body();
        // The role chunk comes at once, content chunks 5 ms apart: time to the first content.
        let mut frames = 0;
        let mut first = None;
        while let Some(frame) = body.frame().await {
            let data = frame.unwrap().into_data().unwrap_or_default();
            if first.is_none() && data.windows(6).any(|w| w == b"part0 ") {
                first = Some(t.elapsed());
            }
            frames += 1;
        }
        assert!(
            frames >= 50,
            "stream arrived in {frames} frames: something buffered"
        );
        ttfc.push(first.expect("first content chunk seen").as_secs_f64() * 1000.0);
    }
    ttfc.sort_by(f64::total_cmp);
    ttfc[ttfc.len() / 2]
}

fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Kills the veil child however the benchmark ends (a panic included).
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU seconds per thread name of `pid` (user + system), largest first: where veil's time goes.
fn cpu_by_thread(pid: u32) -> Vec<(String, f64)> {
    let mut by_name: std::collections::BTreeMap<String, f64> = Default::default();
    let tick = 100.0; // USER_HZ on Linux
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
                continue;
            };
            // comm is in parentheses and may contain spaces; fields follow the last ')'.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let name = stat[open + 1..close]
                .trim_end_matches(|c: char| c.is_ascii_digit() || c == '-')
                .to_string();
            let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
            let (utime, stime) = (
                fields[11].parse::<f64>().unwrap_or(0.0),
                fields[12].parse::<f64>().unwrap_or(0.0),
            );
            *by_name.entry(name).or_default() += (utime + stime) / tick;
        }
    }
    let mut v: Vec<_> = by_name.into_iter().collect();
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    v
}

fn start_veil(mock: &Mock, dir: &std::path::Path) -> (KillOnDrop, SocketAddr) {
    start_veil_with(mock, dir, &[])
}

fn start_veil_with(
    mock: &Mock,
    dir: &std::path::Path,
    extra: &[String],
) -> (KillOnDrop, SocketAddr) {
    // A project directory (a veil.toml, empty unless $VEIL_CONFIG names another), so keys and
    // data live in `dir`, not in the user's data directory that another veil may hold.
    let toml = dir.join("veil.toml");
    if !toml.exists() {
        std::fs::write(&toml, "").unwrap();
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_veil"))
            .args(["run", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--resolve", &format!("api.openai.com:443:{}", mock.addr)])
            .arg("--upstream-ca")
            .arg(&mock.ca_path)
            .args(extra)
            .current_dir(dir)
            .env("VEIL_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("veil binary"),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return (child, addr);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("veil did not start");
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let window = Duration::from_secs(
        std::env::var("LOAD_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(4),
    );
    if std::env::var("LOAD_ONLY").as_deref() == Ok("metrics") {
        metrics_cost(window);
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mock = Mock::start(Alpn::Http1Only).await;
        let dir = tempfile::tempdir().unwrap();
        let (child, veil) = start_veil(&mock, dir.path());
        let veil_ca = std::fs::read_to_string(dir.path().join("keys/ca.pem")).unwrap();
        let setup = Setup { mock, veil, veil_ca, veil_pid: child.0.id() };
        let idle_rss = rss_kib(setup.veil_pid).0;

        let mut idle = Vec::new();
        for _ in 0..1000 {
            let mut c = open(&setup, Path::Veil).await;
            let resp = c.send_request(completion_request(None)).await.unwrap();
            resp.into_body().collect().await.unwrap();
            idle.push(c);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (rss, hwm) = rss_kib(setup.veil_pid);
        println!(
            "veil RSS: {:.1} MB at start; {:.1} MB with 1,000 idle keep-alive intercepted connections (peak {:.1} MB so far)",
            idle_rss as f64 / 1024.0,
            rss as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
        drop(idle);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let d = time_to_first_chunk(&setup, Path::Direct, 20).await;
        let v = time_to_first_chunk(&setup, Path::Veil, 20).await;
        println!("\ntime to first chunk (50 chunks, 5 ms apart; median of 20): direct {d:.2} ms, veil {v:.2} ms, added {:+.2} ms", v - d);


        println!("## veil load benchmark ({}s per scenario, 2 KB completion, HTTP/1.1 keep-alive TLS)", window.as_secs());
        println!("| connections | direct req/s | veil req/s | ratio | direct p50 µs | veil p50 µs | added p50 µs | direct p99 µs | veil p99 µs | added p99 µs |");
        println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        let mut through_veil = 1000 + 20;
        for conns in [1, 8, 64] {
            let d = throughput(&setup, Path::Direct, conns, window).await;
            let v = throughput(&setup, Path::Veil, conns, window).await;
            through_veil += v.requests;
            println!(
                "| {conns} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {:+.0} | {:.0} | {:.0} | {:+.0} |",
                d.rps, v.rps, v.rps / d.rps, d.p50_us, v.p50_us, v.p50_us - d.p50_us, d.p99_us, v.p99_us, v.p99_us - d.p99_us
            );
        }

        // What recording wrote: the OTLP/JSON ledger (no collector here) and the sealed store.
        // Recording may still be catching up: wait until the ledger stops growing.
        let data = dir.path().join("data");
        let mut recorded = 0;
        for _ in 0..60 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = ledger_spans(&data.join("records")) + ledger_rows(&data.join("ledger.db"));
            if now == recorded {
                break;
            }
            recorded = now;
        }
        let rows = ledger_rows(&data.join("ledger.db"));
        println!(
            "\nSQLite ledger (data/ledger.db; on by default, `ledger = false` in $VEIL_CONFIG turns it off): {rows} exchange rows"
        );
        println!(
            "\nrecorded: {recorded} spans in the ledger for {through_veil} exchanges counted through veil (warm-ups not counted; fewer spans = records dropped under load)"
        );
        let per = |sub: &str| dir_bytes(&data.join(sub)) as f64 / recorded.max(1) as f64;
        println!(
            "written per recorded exchange: ledger {:.0} B, sealed store {:.0} B",
            per("records"),
            per("sealed")
        );

        let threads = cpu_by_thread(setup.veil_pid);
        let shown: Vec<String> = threads.iter().take(6).map(|(n, s)| format!("{n} {s:.2}s")).collect();
        println!("\nveil CPU by thread over the run: {}", shown.join(", "));
        drop(child);
    });
}

/// Total size of the files under `dir` (recursively); 0 when it does not exist.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Rows in the SQLite ledger's `exchanges` table; 0 when there is no ledger (turned off).
fn ledger_rows(db: &std::path::Path) -> usize {
    if !db.is_file() {
        return 0;
    }
    veil::ledger::schema::open_read_only(db)
        .ok()
        .and_then(|c| {
            c.query_row("SELECT COUNT(*) FROM exchanges", [], |r| r.get::<_, i64>(0))
                .ok()
        })
        .map_or(0, |n| n as usize)
}

/// Spans in the OTLP/JSON traces ledger: one `veil.request.id` attribute per recorded exchange.
fn ledger_spans(records: &std::path::Path) -> usize {
    let Ok(entries) = std::fs::read_dir(records) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("traces-"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .map(|text| text.matches("\"veil.request.id\"").count())
        .sum()
}

/// `LOAD_ONLY=metrics`: what `/metrics` costs. First the render time of a registry holding
/// 1,000 label sets; then two veils side by side, one without `metrics_listen` and one with it
/// and scraped every second as Prometheus would, driven in alternation (three rounds, the order
/// flipped each round, so drift of the machine hits both), at 1 and 64 connections. Medians.
fn metrics_cost(window: Duration) {
    use veil::counters::Counters;
    use veil::counters::series::{OPERATION_DURATION, REQUESTS, SeriesValue};

    let counters = Arc::new(Counters::default());
    {
        let mut s = counters.series.lock();
        for i in 0..1000 {
            let key = vec![
                (
                    "gen_ai.request.model",
                    SeriesValue::Str(format!("model-{}", i % 40)),
                ),
                (
                    "veil.feature",
                    SeriesValue::Str(format!("feature-{}", i / 40)),
                ),
            ];
            s.add(&REQUESTS, key.clone(), 1.0);
            if i < 100 {
                s.observe(&OPERATION_DURATION, key, 0.2);
            }
        }
    }
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..50 {
        let t = Instant::now();
        bytes = veil::counters::exposition::render(&counters, "digest").len();
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!(
        "render /metrics with 1,000 counter label sets + 100 histogram label sets: median {:.2} ms, max {:.2} ms, {bytes} bytes",
        times[times.len() / 2],
        times[times.len() - 1]
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let (mock_off, mock_on) = (Mock::start(Alpn::Http1Only).await, Mock::start(Alpn::Http1Only).await);
        let (dir_off, dir_on) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let metrics_port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let (child_off, veil_off) = start_veil(&mock_off, dir_off.path());
        let (child_on, veil_on) = start_veil_with(
            &mock_on,
            dir_on.path(),
            &["--metrics-listen".to_string(), format!("127.0.0.1:{metrics_port}")],
        );
        let setup = |mock, veil, dir: &std::path::Path, pid| Setup {
            mock,
            veil,
            veil_ca: std::fs::read_to_string(dir.join("keys/ca.pem")).unwrap(),
            veil_pid: pid,
        };
        let off = setup(mock_off, veil_off, dir_off.path(), child_off.0.id());
        let on = setup(mock_on, veil_on, dir_on.path(), child_on.0.id());
        // The scraper: one GET /metrics per second while the runs last (bounded by a flag).
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let scraper = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut scrapes = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && scrapes.len() < 10_000 {
                    let t = Instant::now();
                    if let Ok(mut s) = TcpStream::connect(("127.0.0.1", metrics_port)).await {
                        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
                        let mut buf = Vec::new();
                        let _ = s.read_to_end(&mut buf).await;
                        scrapes.push((t.elapsed().as_secs_f64() * 1e3, buf.len()));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                scrapes
            })
        };
        println!("\n## /metrics on vs off ({}s per run, 3 rounds alternating, medians)", window.as_secs());
        println!("| connections | off req/s | on req/s | on ÷ off | off p50 µs | on p50 µs | off p99 µs | on p99 µs |");
        println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
        for conns in [1, 64] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for round in 0..3 {
                if round % 2 == 0 {
                    a.push(throughput(&off, Path::Veil, conns, window).await);
                    b.push(throughput(&on, Path::Veil, conns, window).await);
                } else {
                    b.push(throughput(&on, Path::Veil, conns, window).await);
                    a.push(throughput(&off, Path::Veil, conns, window).await);
                }
            }
            let med = |v: &[Stats], f: fn(&Stats) -> f64| {
                let mut x: Vec<f64> = v.iter().map(f).collect();
                x.sort_by(f64::total_cmp);
                x[x.len() / 2]
            };
            let (ra, rb) = (med(&a, |s| s.rps), med(&b, |s| s.rps));
            println!(
                "| {conns} | {ra:.0} | {rb:.0} | {:.3} | {:.0} | {:.0} | {:.0} | {:.0} |",
                rb / ra,
                med(&a, |s| s.p50_us),
                med(&b, |s| s.p50_us),
                med(&a, |s| s.p99_us),
                med(&b, |s| s.p99_us)
            );
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let scrapes = scraper.await.unwrap();
        let mut ms: Vec<f64> = scrapes.iter().map(|s| s.0).collect();
        ms.sort_by(f64::total_cmp);
        if let Some(last) = scrapes.last() {
            println!(
                "\nscrapes during the runs: {}, median {:.2} ms, max {:.2} ms, last answer {} bytes",
                ms.len(),
                ms[ms.len() / 2],
                ms[ms.len() - 1],
                last.1
            );
        }
        drop((child_off, child_on));
    });
}
