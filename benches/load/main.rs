//! Load benchmark of what users see: direct to the upstream, through a no-op intercepting
//! proxy, and through veil (best-effort and `audit = "required"`), in one run (veil#18).
//!
//! `cargo bench --bench load` (or `benches/load.sh`). Every server is a child process, so each
//! one's CPU and memory are its own: a fast TLS upstream and the no-op proxy are this binary
//! run in another role (`roles.rs`), veil is the release `veil` binary. The load generator is
//! this process (hyper over rustls, HTTP/1.1 keep-alive, a ~2 KB non-streamed completion). It
//! measures, in this order:
//!
//! 1. RSS of the no-op proxy and of veil at start (and how much of it is file-backed), at rest
//!    ([`AT_REST`] without traffic once recording has caught up) after
//!    1,000 exchanges on one connection (what recording keeps), after 1,000 more (what 1,000
//!    recorded exchanges add to caches still growing towards their bounds), and with 1,000
//!    idle keep-alive intercepted connections on top (each after one request, which is
//!    recorded too), so the cost per idle connection is the difference of the last two, of
//!    which the growth per exchange of the step before is recording's, not the connection's;
//!    then, with those connections closed, after 20,000 more exchanges on one connection and
//!    [`AT_REST`] without traffic: what a veil holds at rest once recording's caches have
//!    reached their bounds (the ledger's page cache fills only as the ledger grows);
//! 2. time to first chunk of a stream of 50 chunks 5 ms apart, direct, no-op and veil (and the
//!    baseline), with this client and, when `VEIL_PYTHON` names a Python with the `openai` SDK,
//!    with the official SDK (`ttfc.py`): `LOAD_TTFC_STREAMS` streams per target (default 60),
//!    taken in rounds of one stream per target so that drift of the machine falls on all
//!    alike; what each proxy adds is the median of its per-round differences from direct,
//!    with a 95 % confidence interval and the 10th and 90th percentiles ([`Added`]);
//! 3. for 1, 8 and 64 connections, each target in turn (the order rotates each round):
//!    requests/s, latency p50/p99, the target's CPU per exchange (user + system, from
//!    `/proc`, including recording that finishes after the window), veil's CPU by thread, the
//!    requests answered with anything but 200 (`audit = "required"` refuses what it cannot
//!    record once the recording queue has stayed full for `queue_wait`; they count as refused,
//!    not as responses), the
//!    recorded fraction (ledger rows added ÷ responses sent through veil, counted once the
//!    ledger stops growing) and peak RSS during the cell (`/proc/PID/clear_refs` resets it).
//!
//! While it runs it holds `/dev/cpu_dma_latency` at 0 (when it may open it) so idle cores do
//! not fall into deep sleep states between requests at 1 connection: otherwise wake-up time
//! dominates the latency figures of every target alike.
//!
//! It refuses to start (exit 2) when the open-descriptor limit is under ~2,200: 1,000 idle
//! connections need ~2,100, and with fewer the proxies refuse connections and step 1 reports
//! a wrong figure. `benches/load.sh` raises the limit to 8,192 first.
//!
//! Everything binds 127.0.0.1; every loop is bounded in time and count. Environment:
//! `LOAD_SECS` (window per cell, default 4), `LOAD_ROUNDS` (rounds per cell, medians reported,
//! default 1), `LOAD_VEIL_CONFIG` (TOML lines added to each veil's `veil.toml`),
//! `LOAD_BASELINE_CONFIG` (the baseline's lines instead, so one build is compared with itself
//! under other settings),
//! `LOAD_BASELINE` (the path of another veil binary, e.g. a build of the commit before a
//! change: it runs as a fifth target, best-effort, in the same rounds, so a change is measured
//! against what it replaced on the same machine in the same minutes; `LOAD_BASELINE_NAME` names
//! it in the report), `LOAD_FORWARD_ONLY=1` (read by `benches/load.sh`: the baseline is this
//! commit built with the `forward-only` feature, which intercepts and forwards but records
//! nothing, named `veil forward-only`: forwarding alone beside the full veil in one run),
//! `LOAD_PERF` (perf record arguments: profiles each proxy cell, see [`perf_record`]),
//! `LOAD_TIMELINE` (a directory: each request's start and latency per cell, see
//! [`write_timeline`]),
//! `LOAD_CONNS` (a comma list of connection counts up to 1,024, default `1,8,64`; `0` runs
//! steps 1 and 2 alone, about two minutes; a value that is not such a count is refused, exit
//! 2), `VEIL_PYTHON` (step 2 with the official SDK too),
//! `LOAD_ONLY=veil` (the veil cells alone, for profiling), `LOAD_ONLY=ttfc` (step 2 alone,
//! one to two minutes), `LOAD_ONLY=metrics` (the `/metrics`
//! cost comparison instead, see [`metrics_cost`]), `LOAD_HISTORY=N` (conversations of N turns
//! whose requests re-send the system prompt and every earlier turn, see [`history_turns`]),
//! `LOAD_OTLP=1` (each veil, the baseline
//! included, exports OTLP/HTTP protobuf to a collector of its own, the `collector` role: a cell
//! then waits for the exports to stop as well as the ledger, and reports the spans and log
//! records its collector received, bytes per span and the collector's CPU, which is not
//! counted in veil's).

mod roles;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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

/// One place requests go: the upstream itself, or a proxy in front of it.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    /// The CA the client trusts on this path (the upstream's, or the proxy's): its file and PEM.
    ca_path: PathBuf,
    ca_pem: String,
    via_proxy: bool,
    /// The process whose CPU and memory are measured.
    pid: u32,
    /// veil's SQLite ledger, when the target is a veil.
    ledger: Option<PathBuf>,
    /// The collector this veil exports OTLP to (`LOAD_OTLP=1`): its address and PID.
    collector: Option<(SocketAddr, u32)>,
}

impl Target {
    fn new(
        name: &'static str,
        addr: SocketAddr,
        ca_path: PathBuf,
        via_proxy: bool,
        pid: u32,
        ledger: Option<PathBuf>,
    ) -> Target {
        let ca_pem = std::fs::read_to_string(&ca_path).unwrap();
        Target {
            name,
            addr,
            ca_path,
            ca_pem,
            via_proxy,
            pid,
            ledger,
            collector: None,
        }
    }
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

async fn open(target: &Target) -> SendRequest<Full<Bytes>> {
    let mut s = TcpStream::connect(target.addr).await.unwrap();
    if target.via_proxy {
        s.write_all(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com:443\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            assert_eq!(s.read(&mut b).await.unwrap(), 1);
            head.push(b[0]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "{}: {}",
            target.name,
            String::from_utf8_lossy(&head)
        );
    }
    s.set_nodelay(true).unwrap();
    let tls = tokio_rustls::TlsConnector::from(tls_client(&target.ca_pem))
        .connect("api.openai.com".try_into().unwrap(), s)
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
        r#"{"model":"gpt-4o-mini","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"Write a haiku about latency."}]}"#
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

/// `LOAD_HISTORY=N`: each connection holds a support conversation of `N` turns (then starts a
/// new one), and each request re-sends the system prompt (~2.4 KB) and every earlier turn, as a
/// chat or an agent does: turn k carries k − 1 questions (~300 bytes, every third with an
/// email) and answers (~600 bytes) before its own question. Unset or 0: the one-line request.
fn history_turns() -> usize {
    std::env::var("LOAD_HISTORY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `n` in six lowercase letters: ids in the conversation's text without digits, so no detector
/// trigger depends on them.
fn letters(mut n: u64) -> String {
    (0..6)
        .map(|_| {
            let c = char::from(b'a' + (n % 26) as u8);
            n /= 26;
            c
        })
        .collect()
}

/// Turn `turn` (from 1) of conversation `conv` (unique per connection and cycle): the request
/// of [`history_turns`].
fn conversation_request(conv: u64, turn: usize) -> Request<Full<Bytes>> {
    let system = format!(
        "You are the support assistant of Northwind Bank. {}",
        "Answer in two short paragraphs, cite the relevant policy section, never promise a \
         refund before the dispute team confirmed it, and escalate fraud reports at once. "
            .repeat(12)
    );
    let id = letters(conv);
    let question = |j: usize| {
        let contact = if j.is_multiple_of(3) {
            format!(
                " You can reach me at customer-{id}-{}@example.com.",
                letters(j as u64)
            )
        } else {
            String::new()
        };
        format!(
            "Question {} of {id}: the payment I made on Monday still shows as pending and the \
             merchant says it never arrived; what should I do next, and how long does a trace \
             usually take?{contact} Thanks for your help with this, it is urgent.",
            letters(j as u64)
        )
    };
    let answer = |j: usize| {
        format!(
            "Answer {} of {id}: I'm sorry about the delay. {}",
            letters(j as u64),
            "Pending card payments usually settle within three working days; if the \
             merchant still has not received it after that, we open a trace with the card \
             network. "
                .repeat(4)
        )
    };
    let mut messages = vec![serde_json::json!({"role": "system", "content": system})];
    for j in 1..turn {
        messages.push(serde_json::json!({"role": "user", "content": question(j)}));
        messages.push(serde_json::json!({"role": "assistant", "content": answer(j)}));
    }
    messages.push(serde_json::json!({"role": "user", "content": question(turn)}));
    let body = serde_json::json!({"model": "gpt-4o-mini", "messages": messages}).to_string();
    let mut req = completion_request(None);
    *req.body_mut() = Full::new(Bytes::from(body));
    req
}

#[derive(Clone, Copy, Default)]
struct Stats {
    /// Responses in the window, and all responses (the window's plus one warm-up per connection).
    requests: usize,
    responses: usize,
    /// Requests answered with anything but 200 in the window: `audit = "required"` refuses
    /// (503) what it could not record once the recording queue is full. Not in `requests`,
    /// `responses` nor the latencies: they were never forwarded.
    refused: usize,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

async fn throughput(target: &Target, conns: usize, window: Duration) -> Stats {
    let mut clients = Vec::new();
    for _ in 0..conns {
        clients.push(open(target).await);
    }
    // Warm up pools and caches.
    for c in clients.iter_mut() {
        let resp = c.send_request(completion_request(None)).await.unwrap();
        resp.into_body().collect().await.unwrap();
    }
    let deadline = Instant::now() + window;
    // Each request's start in CLOCK_MONOTONIC nanoseconds (perf's `-k CLOCK_MONOTONIC`), for
    // `LOAD_TIMELINE`: `Instant` reads the same clock, so one reading of each lines them up.
    let (epoch, epoch_ns) = (Instant::now(), monotonic_ns());
    let turns = history_turns();
    // Conversation ids are unique across cells and rounds: a veil must not see one again.
    static CONVERSATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let (mut lat, mut refused) = (Vec::with_capacity(4096), 0);
                let mut starts = Vec::with_capacity(4096);
                let next = || CONVERSATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (mut conv, mut turn) = (next(), 1);
                // Bounded by time and by count.
                while Instant::now() < deadline && lat.len() + refused < 1_000_000 {
                    c.ready().await.unwrap();
                    let req = if turns == 0 {
                        completion_request(None)
                    } else {
                        if turn > turns {
                            (conv, turn) = (next(), 1);
                        }
                        turn += 1;
                        conversation_request(conv, turn - 1)
                    };
                    let t = Instant::now();
                    let resp = c.send_request(req).await.unwrap();
                    let status = resp.status();
                    let body = resp.into_body().collect().await.unwrap().to_bytes();
                    if status != http::StatusCode::OK {
                        refused += 1;
                        continue;
                    }
                    assert!(body.len() > 2000, "a 200 with {} bytes", body.len());
                    lat.push(t.elapsed().as_nanos() as u64);
                    starts.push(epoch_ns + (t - epoch).as_nanos() as u64);
                }
                (lat, refused, starts)
            })
        })
        .collect();
    let started = Instant::now();
    let (mut all, mut refused, mut timeline) = (Vec::new(), 0, Vec::new());
    for t in tasks {
        let (lat, r, starts) = t.await.unwrap();
        timeline.extend(starts.into_iter().zip(lat.iter().copied()));
        all.extend(lat);
        refused += r;
    }
    let elapsed = started.elapsed().as_secs_f64();
    write_timeline(target, conns, timeline);
    all.sort_unstable();
    let pct = |p: f64| match all.len() {
        0 => f64::NAN,
        n => all[((n as f64 * p) as usize).min(n - 1)] as f64 / 1000.0,
    };
    Stats {
        requests: all.len(),
        responses: all.len() + conns,
        refused,
        rps: all.len() as f64 / elapsed,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds.
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

/// With `LOAD_TIMELINE=DIR` set, each request of a cell as a line `START_NS LATENCY_NS` (start
/// in CLOCK_MONOTONIC nanoseconds, sorted by start) in `DIR/timeline-CONNS-NAME.txt`, the
/// file replaced by each round: the slowest requests' windows, to read against a system-wide
/// `perf record -k CLOCK_MONOTONIC` of the same minutes (`LOAD_PERF="-a -k CLOCK_MONOTONIC
/// -e sched:sched_switch ..."`).
fn write_timeline(target: &Target, conns: usize, mut timeline: Vec<(u64, u64)>) {
    let Ok(dir) = std::env::var("LOAD_TIMELINE") else {
        return;
    };
    timeline.sort_unstable();
    let path = format!(
        "{dir}/timeline-{conns}-{}.txt",
        target.name.replace(' ', "-")
    );
    let mut out = String::with_capacity(timeline.len() * 24);
    for (start, lat) in timeline {
        out.push_str(&format!("{start} {lat}\n"));
    }
    if let Err(e) = std::fs::write(&path, out) {
        eprintln!("LOAD_TIMELINE: cannot write {path}: {e}");
    }
}

/// The pause after each stream of the time-to-first-chunk step, so the recording of one
/// target's stream is over before the next target's starts.
const TTFC_PAUSE: Duration = Duration::from_millis(150);

/// Time to the first content chunk (ms) of streams of 50 chunks 5 ms apart: `streams` per
/// target, measured in rounds of one stream per target (the order rotates each round, each
/// target on a keep-alive connection of its own, [`TTFC_PAUSE`] after each stream), after two
/// rounds of warm-up that are not counted. Returns each target's times in round order, so `[t][i]` and `[u][i]` were taken
/// within a second of each other and their difference is free of the machine's drift.
async fn time_to_first_chunk(targets: &[&Target], streams: usize) -> Vec<Vec<f64>> {
    let mut conns = Vec::new();
    for t in targets {
        conns.push(open(t).await);
    }
    let mut times = vec![Vec::with_capacity(streams); targets.len()];
    for round in 0..streams + 2 {
        for k in 0..targets.len() {
            let i = (round + k) % targets.len();
            let ms = first_chunk_ms(targets[i], &mut conns[i]).await;
            if round >= 2 {
                times[i].push(ms);
            }
            // A veil records the stream just ended on its other threads; without the pause that
            // work fell on the next target's stream (the one after veil in every round).
            tokio::time::sleep(TTFC_PAUSE).await;
        }
    }
    times
}

/// One stream's time to its first content chunk (ms); it reads the stream to its end and
/// panics when it came in fewer than 50 frames (something buffered it).
async fn first_chunk_ms(target: &Target, c: &mut SendRequest<Full<Bytes>>) -> f64 {
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
        "{}: stream arrived in {frames} frames: something buffered",
        target.name
    );
    first.expect("first content chunk seen").as_secs_f64() * 1000.0
}

/// What `proxied` adds to `direct`, stream by stream (`proxied[i] - direct[i]`, ms): the
/// median, its 95 % confidence interval and the 10th and 90th percentiles.
///
/// The interval is the distribution-free one for a median: the order statistics of ranks
/// `floor((n - 1.96 √n) / 2)` and `ceil(1 + (n + 1.96 √n) / 2)` (1-based, the normal
/// approximation of the binomial; Conover, *Practical Nonparametric Statistics*, 3rd ed.,
/// §3.2), clamped to the sample. Below about 8 streams it is the whole range.
struct Added {
    median: f64,
    ci: (f64, f64),
    p10: f64,
    p90: f64,
}

impl Added {
    fn paired(direct: &[f64], proxied: &[f64]) -> Added {
        let mut d: Vec<f64> = proxied.iter().zip(direct).map(|(p, d)| p - d).collect();
        d.sort_by(f64::total_cmp);
        let n = d.len() as f64;
        let half = 1.96 * n.sqrt();
        let lo = (((n - half) / 2.0).floor() as usize).max(1);
        let hi = ((1.0 + (n + half) / 2.0).ceil() as usize).min(d.len());
        Added {
            median: d[d.len() / 2],
            ci: (d[lo - 1], d[hi - 1]),
            p10: percentile(&d, 0.10),
            p90: percentile(&d, 0.90),
        }
    }
}

impl std::fmt::Display for Added {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:+.2} ms (95 % CI {:+.2} to {:+.2}; p10 {:+.2}, p90 {:+.2})",
            self.median, self.ci.0, self.ci.1, self.p10, self.p90
        )
    }
}

/// Prints step 2's lines: direct's median and spread, then what each proxy adds, paired
/// stream by stream with direct's, and, with a baseline build, veil against the baseline.
fn print_first_chunk(how: &str, names: &[&str], times: &[Vec<f64>]) {
    let direct = &times[0];
    let mut sorted = direct.clone();
    sorted.sort_by(f64::total_cmp);
    println!(
        "\ntime to first chunk, {how} (50 chunks 5 ms apart, {} streams per target in rounds of one each): direct {:.2} ms (p10 {:.2}, p90 {:.2}); added over direct, paired by round:",
        direct.len(),
        median(direct.clone()),
        percentile(&sorted, 0.10),
        percentile(&sorted, 0.90)
    );
    for (name, t) in names.iter().zip(times).skip(1) {
        println!("- {name}: {}", Added::paired(direct, t));
    }
    let find = |n: &str| names.iter().position(|x| *x == n);
    if let (Some(v), Some(b)) = (find("veil best-effort"), find(baseline_name())) {
        println!(
            "- veil best-effort over {}: {}",
            baseline_name(),
            Added::paired(&times[b], &times[v])
        );
    }
}

/// The `q` quantile (0 to 1) of a sorted, non-empty sample: the nearest rank.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted[((q * (sorted.len() as f64 - 1.0)).round() as usize).min(sorted.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// (VmRSS, VmHWM) of `pid` in KiB.
fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
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

/// File-backed resident KiB of `pid` (`RssFile` in proc(5)): mostly the binary's text, shared
/// with the page cache.
fn rss_file_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("RssFile:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Waits until `target` has finished with what it was sent: recording landed in the ledger
/// for veil ([`settled_rows`]), half a second for the no-op.
async fn settle(target: &Target) {
    match target.ledger.as_deref() {
        Some(db) => {
            settled_rows(db, target.pid).await;
            settled_exports(target).await;
        }
        None => tokio::time::sleep(Duration::from_millis(500)).await,
    }
}

/// The whole answer (head and body) to a plain-HTTP `GET path` on `addr`, within 5 s; `None`
/// when it cannot be had. For the bench's own local servers only (veil's `/metrics`, the
/// collector role's counts).
async fn http_get(addr: SocketAddr, path: &str) -> Option<Vec<u8>> {
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut tcp = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.ok()?;
        Some(answer)
    })
    .await
    .ok()?
}

/// What `target`'s collector has received so far: spans, log records, metric exports and
/// bytes; `None` when the target exports nothing or the collector does not answer.
async fn collector_counts(target: &Target) -> Option<[u64; 4]> {
    let (addr, _) = target.collector?;
    let text = String::from_utf8(http_get(addr, "/counts").await?).ok()?;
    let line = text.lines().last()?;
    let mut counts = [0u64; 4];
    for (slot, key) in counts
        .iter_mut()
        .zip(["spans=", "logs=", "metrics=", "bytes="])
    {
        *slot = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key))?
            .parse()
            .ok()?;
    }
    Some(counts)
}

/// Waits (at most 30 s) until `target`'s collector stopped receiving spans and log records for
/// longer than veil's batch age (1 s): the last partial batch is flushed by age after the
/// ledger has its rows. Returns at once when the target exports nothing.
async fn settled_exports(target: &Target) -> Option<[u64; 4]> {
    let mut last = collector_counts(target).await?;
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = collector_counts(target).await?;
        if now[..2] == last[..2] {
            return Some(now);
        }
        last = now;
    }
    Some(last)
}

/// Resets `pid`'s peak RSS (VmHWM) to its current RSS (proc(5), `clear_refs` value 5).
fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// A child process killed (and reaped) however the benchmark ends, a panic included. Its
/// stdin is a pipe held here: the role children exit when it closes.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// CPU seconds (user + system) of `pid`'s threads by name, the trailing digits and dashes of
/// a name dropped so a pool's threads add up.
fn cpu_by_thread(pid: u32) -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
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
    by_name
}

/// CPU seconds (user + system) of the whole process `pid`, exited threads included.
fn cpu_total(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let Some(close) = stat.rfind(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = stat[close + 2..].split_whitespace().collect();
    let f = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (f(11) + f(12)) / 100.0
}

/// Starts this binary in `role` (see `roles.rs`) and returns it with the address it printed.
fn spawn_role(role: &str, dir: &Path, env: &[(&str, String)]) -> (KillOnDrop, SocketAddr) {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("VEIL_LOAD_ROLE", role)
        .env("VEIL_LOAD_DIR", dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = KillOnDrop(cmd.spawn().expect("the bench binary in a role"));
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("addr=")
        .unwrap_or_else(|| panic!("{role} printed {line:?}"))
        .parse()
        .unwrap();
    (child, addr)
}

/// Makes `root/roles` and one directory per name under `root` (for the veils), and starts the
/// upstream role in `roles`. Returns the roles directory, the veils' directories, the upstream
/// child, its address and its CA file.
fn start_upstream<const N: usize>(
    root: &Path,
    names: [&str; N],
) -> (PathBuf, [PathBuf; N], KillOnDrop, SocketAddr, PathBuf) {
    let roles = root.join("roles");
    std::fs::create_dir(&roles).unwrap();
    let dirs = names.map(|n| {
        let d = root.join(n);
        std::fs::create_dir(&d).unwrap();
        d
    });
    let (child, addr) = spawn_role("upstream", &roles, &[]);
    let ca = roles.join("upstream-ca.pem");
    (roles, dirs, child, addr, ca)
}

/// How long the memory step leaves a target without traffic, once its recording has caught
/// up, before each RSS reading: longer than veil's ledger waits before it gives its page
/// cache back (1 s idle, checked on a 1 s tick), so every figure is one at rest.
const AT_REST: Duration = Duration::from_secs(3);

/// Sends `n` exchanges one after another on one new connection to `target`, closes it, waits
/// until recording has caught up and [`AT_REST`] more, and returns the RSS and its peak, KiB.
async fn rss_at_rest_after(target: &Target, n: usize) -> (u64, u64) {
    let mut one = open(target).await;
    for _ in 0..n {
        one.ready().await.unwrap();
        let resp = one.send_request(completion_request(None)).await.unwrap();
        resp.into_body().collect().await.unwrap();
    }
    drop(one);
    settle(target).await;
    tokio::time::sleep(AT_REST).await;
    rss_kib(target.pid)
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// The baseline veil's project directory (`LOAD_BASELINE`).
const BASELINE_DIR: &str = "veil-baseline";

/// The baseline's name in the report: `LOAD_BASELINE_NAME`, else `baseline best-effort`
/// (`benches/load.sh` names a `forward-only` build `veil forward-only`).
fn baseline_name() -> &'static str {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        std::env::var("LOAD_BASELINE_NAME")
            .ok()
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| "baseline best-effort".to_string())
    })
}

/// The TOML lines `LOAD_VEIL_CONFIG` adds to each veil's `veil.toml`; for the baseline,
/// `LOAD_BASELINE_CONFIG`'s instead when it is set (so one build can be compared with itself
/// under two settings in the same run).
fn extra_config(baseline: bool) -> String {
    let own = baseline
        .then(|| std::env::var("LOAD_BASELINE_CONFIG").ok())
        .flatten();
    own.or_else(|| std::env::var("LOAD_VEIL_CONFIG").ok())
        .unwrap_or_default()
}

/// Starts the veil binary `bin` in project directory `dir` (a `veil.toml` with `toml` and
/// [`extra_config`]'s lines, keys and data under `dir`), resolving api.openai.com to
/// `upstream`, which it trusts by `upstream_ca`.
fn start_veil(
    bin: &Path,
    upstream: SocketAddr,
    upstream_ca: &Path,
    dir: &Path,
    toml: &str,
    extra: &[String],
) -> (KillOnDrop, SocketAddr) {
    let extra_toml = extra_config(dir.ends_with(BASELINE_DIR));
    std::fs::write(dir.join("veil.toml"), format!("{toml}\n{extra_toml}\n")).unwrap();
    let port = free_port();
    let child = KillOnDrop(
        Command::new(bin)
            .args(["run", "--listen", &format!("127.0.0.1:{port}")])
            .args(["--resolve", &format!("api.openai.com:443:{upstream}")])
            .arg("--upstream-ca")
            .arg(upstream_ca)
            .args(extra)
            .current_dir(dir)
            .env_remove("VEIL_CONFIG")
            .env("VEIL_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("veil binary"),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    // Its CA too, which the targets read next: a veil freshly copied (not yet in the page
    // cache) was once seen listening before the file was there to read.
    let ca = dir.join("keys/ca.pem");
    for _ in 0..400 {
        if std::net::TcpStream::connect(addr).is_ok() && ca.is_file() {
            return (child, addr);
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("veil did not start: {}", bin.display());
}

/// Rows in the SQLite ledger's `exchanges` table; 0 when there is none yet.
fn ledger_rows(db: &Path) -> usize {
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

/// Waits (at most 60 s) until recording has caught up: the ledger did not grow and veil used
/// under 10 ms of CPU over the last second (a burst's backlog may still be in the pipeline when
/// the window ends, and the ledger commits in batches). Returns the ledger's row count.
async fn settled_rows(db: &Path, pid: u32) -> usize {
    let mut last = (usize::MAX, f64::MAX);
    for _ in 0..60 {
        let now = (ledger_rows(db), cpu_total(pid));
        if now.0 == last.0 && now.1 - last.1 < 0.011 {
            return now.0;
        }
        last = now;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    last.0
}

/// One measured cell: a target at a connection count, in one round.
#[derive(Clone, Default)]
struct Cell {
    stats: Stats,
    /// The target's CPU per answer (response or refusal), µs (the window, the warm-up and any
    /// recording after it).
    cpu_us: f64,
    /// Ledger rows added ÷ responses; CPU per recorded exchange (µs); veil only.
    recorded: Option<(usize, f64)>,
    /// Peak RSS during the cell, MB.
    peak_mb: f64,
    /// CPU by thread per response, µs.
    threads: Vec<(String, f64)>,
    /// With `LOAD_OTLP=1`: what the collector received during the cell (spans, log records,
    /// metric exports, bytes) and its CPU per response, µs.
    exported: Option<([u64; 4], f64)>,
}

async fn cell(target: &Target, conns: usize, window: Duration) -> Cell {
    let threads0 = cpu_by_thread(target.pid);
    let cpu0 = cpu_total(target.pid);
    let rows0 = target.ledger.as_deref().map(ledger_rows);
    let exported0 = collector_counts(target).await;
    let collector_cpu0 = target.collector.map(|(_, pid)| cpu_total(pid));
    reset_peak(target.pid);
    let perf = perf_record(target, conns);
    let stats = throughput(target, conns, window).await;
    if let Some(mut perf) = perf {
        // perf writes its file on SIGINT.
        let _ = Command::new("kill")
            .args(["-INT", &perf.0.id().to_string()])
            .status();
        let _ = perf.0.wait();
    }
    let rows = match target.ledger.as_deref() {
        Some(db) => Some(settled_rows(db, target.pid).await - rows0.unwrap_or(0)),
        None => None,
    };
    let exported = match (exported0, settled_exports(target).await) {
        (Some(before), Some(after)) => Some(std::array::from_fn(|i| after[i] - before[i])),
        _ => None,
    };
    let cpu = cpu_total(target.pid) - cpu0;
    // Per answer: a refused request (audit = required, queue full) costs CPU too.
    let responses = (stats.responses + stats.refused).max(1) as f64;
    let mut threads: Vec<(String, f64)> = cpu_by_thread(target.pid)
        .into_iter()
        .map(|(n, s)| {
            let d = s - threads0.get(&n).copied().unwrap_or(0.0);
            (n, d * 1e6 / responses)
        })
        .filter(|(_, us)| *us >= 0.5)
        .collect();
    threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    Cell {
        stats,
        cpu_us: cpu * 1e6 / responses,
        recorded: rows.map(|r| (r, cpu * 1e6 / r.max(1) as f64)),
        peak_mb: rss_kib(target.pid).1 as f64 / 1024.0,
        threads,
        exported: exported.zip(target.collector).map(|(counts, (_, pid))| {
            let cpu = cpu_total(pid) - collector_cpu0.unwrap_or(0.0);
            (counts, cpu * 1e6 / responses)
        }),
    }
}

/// With `LOAD_PERF=ARGS` set, a `perf record ARGS -p PID` of a proxy target (veil or the
/// no-op) for the window, written to `target/perf-CONNS-NAME.data` (e.g.
/// `LOAD_PERF="-F 1999 --call-graph dwarf"`, or `LOAD_PERF="-e raw_syscalls:sys_enter"` to
/// count system calls). With `-a` among the arguments the recording is system-wide instead
/// (every process on the machine during the cell: the load generator and the upstream too).
///
/// Bytes copied per request, by caller: a uprobe on the C library's `memmove` with its
/// length (`perf probe -x /lib/x86_64-linux-gnu/libc.so.6 -a
/// 'mm=__memmove_avx512_unaligned_erms len=%dx:u64'`, the variant `perf report` names on
/// this machine), then `LOAD_PERF="-e probe_libc:mm --call-graph dwarf,8192"` and
/// `perf script -F comm,ip,sym,trace`: every call is recorded (the probe is not sampled), so
/// keep the window short (`LOAD_SECS=2`; veil runs ~40× slower under it) and divide by a
/// call made once per request (`hyper_util`'s `ResponseFuture::new`). docs/performance.md,
/// stop 55's round.
fn perf_record(target: &Target, conns: usize) -> Option<KillOnDrop> {
    let args = std::env::var("LOAD_PERF").ok()?;
    if !target.via_proxy {
        return None;
    }
    let out = format!(
        "{}/target/perf-{conns}-{}.data",
        env!("CARGO_MANIFEST_DIR"),
        target.name.replace(' ', "-")
    );
    let system_wide = args.split_whitespace().any(|a| a == "-a");
    let pid = target.pid.to_string();
    let only_target = ["-p", pid.as_str()];
    let child = Command::new("perf")
        .arg("record")
        .args(args.split_whitespace())
        .args(if system_wide {
            &[][..]
        } else {
            &only_target[..]
        })
        .args(["-o", &out])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    std::thread::sleep(Duration::from_millis(200));
    Some(KillOnDrop(child))
}

/// The median of each figure over rounds (each figure on its own).
fn median_cell(cells: &[Cell]) -> Cell {
    let m = |f: &dyn Fn(&Cell) -> f64| median(cells.iter().map(f).collect());
    let mid = {
        let mut by_rps: Vec<&Cell> = cells.iter().collect();
        by_rps.sort_by(|a, b| a.stats.rps.total_cmp(&b.stats.rps));
        by_rps[by_rps.len() / 2].clone()
    };
    Cell {
        stats: Stats {
            requests: mid.stats.requests,
            responses: mid.stats.responses,
            refused: mid.stats.refused,
            rps: m(&|c| c.stats.rps),
            p50_us: m(&|c| c.stats.p50_us),
            p99_us: m(&|c| c.stats.p99_us),
        },
        cpu_us: m(&|c| c.cpu_us),
        recorded: mid
            .recorded
            .map(|(r, _)| (r, m(&|c| c.recorded.map_or(0.0, |x| x.1)))),
        peak_mb: m(&|c| c.peak_mb),
        threads: mid.threads,
        exported: mid
            .exported
            .map(|(counts, _)| (counts, m(&|c| c.exported.map_or(0.0, |x| x.1)))),
    }
}

/// Holds `/dev/cpu_dma_latency` at 0 µs while the returned file stays open (the kernel's PM QoS
/// interface): idle cores stay out of deep C-states. `None` when the device cannot be opened.
fn keep_cpus_awake() -> Option<std::fs::File> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/cpu_dma_latency")
        .ok()?;
    f.write_all(&0i32.to_ne_bytes()).ok()?;
    Some(f)
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    if roles::run_role_if_child() {
        return;
    }
    // `cargo bench` passes `--bench`; nothing else to parse.
    let window = Duration::from_secs(env_num("LOAD_SECS", 4));
    let rounds = env_num("LOAD_ROUNDS", 1).clamp(1, 9) as usize;
    let awake = keep_cpus_awake();
    if std::env::var("LOAD_ONLY").as_deref() == Ok("metrics") {
        metrics_cost(window);
        return;
    }
    let awake_held = awake.is_some();
    // For profiling one cell: LOAD_CONNS=8 (a comma list), LOAD_ONLY=veil (no direct/no-op cells).
    let conns_list: Vec<usize> = std::env::var("LOAD_CONNS")
        .unwrap_or("1,8,64".into())
        .split(',')
        .map(|c| match c.trim().parse::<usize>() {
            Ok(n) if n <= 1024 => n,
            _ => fail(&format!(
                "LOAD_CONNS={c:?}: give connection counts from 0 to 1024, comma-separated (e.g. 1,8,64; 0 alone for the memory and time-to-first-chunk steps only)"
            )),
        })
        .filter(|&n| n > 0)
        .collect();
    check_descriptor_limit();
    let only_veil = std::env::var("LOAD_ONLY").as_deref() == Ok("veil");
    // Step 2 alone (one to two minutes with the defaults): to compare time to first chunk between
    // builds or settings.
    let only_ttfc = std::env::var("LOAD_ONLY").as_deref() == Ok("ttfc");
    let conns_list = if only_ttfc { Vec::new() } else { conns_list };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let (roles_dir, [be_dir, req_dir, base_dir], upstream_child, upstream, upstream_ca) =
            start_upstream(dir.path(), ["veil", "veil-required", BASELINE_DIR]);
        let bin = Path::new(env!("CARGO_BIN_EXE_veil"));
        let (noop_child, noop) =
            spawn_role("noop", &roles_dir, &[("VEIL_LOAD_UPSTREAM", upstream.to_string())]);
        // With LOAD_OTLP=1 each veil exports to a collector of its own (roles.rs), so a cell
        // counts what its veil exported and the collector's CPU is not veil's.
        let otlp = std::env::var("LOAD_OTLP").is_ok_and(|v| v == "1");
        let with_collector = |bin: &Path, dir: &Path, toml: &str| {
            let collector = otlp.then(|| spawn_role("collector", &roles_dir, &[]));
            let toml = match &collector {
                Some((_, addr)) => format!("{toml}\notlp_endpoint = \"http://{addr}\""),
                None => toml.to_string(),
            };
            let (child, addr) = start_veil(bin, upstream, &upstream_ca, dir, &toml, &[]);
            (child, addr, collector)
        };
        let (be_child, be, be_collector) = with_collector(bin, &be_dir, "");
        let (req_child, req, req_collector) =
            with_collector(bin, &req_dir, "audit = \"required\"");
        // Another build to compare with in the same run (e.g. the commit before a change).
        let baseline = std::env::var_os("LOAD_BASELINE").map(|b| {
            let (child, addr, collector) = with_collector(Path::new(&b), &base_dir, "");
            let mut target = Target::new(
                baseline_name(),
                addr,
                base_dir.join("keys/ca.pem"),
                true,
                child.0.id(),
                Some(base_dir.join("data/ledger.db")),
            );
            target.collector = collector.as_ref().map(|(c, a)| (*a, c.0.id()));
            (child, target, collector)
        });
        let direct =
            Target::new("direct", upstream, upstream_ca.clone(), false, upstream_child.0.id(), None);
        let noop = Target::new(
            "no-op MITM",
            noop,
            roles_dir.join("noop-ca.pem"),
            true,
            noop_child.0.id(),
            None,
        );
        let mut veil_be = Target::new(
            "veil best-effort",
            be,
            be_dir.join("keys/ca.pem"),
            true,
            be_child.0.id(),
            Some(be_dir.join("data/ledger.db")),
        );
        veil_be.collector = be_collector.as_ref().map(|(c, a)| (*a, c.0.id()));
        let mut veil_req = Target::new(
            "veil required",
            req,
            req_dir.join("keys/ca.pem"),
            true,
            req_child.0.id(),
            Some(req_dir.join("data/ledger.db")),
        );
        veil_req.collector = req_collector.as_ref().map(|(c, a)| (*a, c.0.id()));
        println!(
            "## veil load benchmark: {}s per cell, {rounds} round(s) (medians), 2 KB completion, {}, HTTP/1.1 keep-alive TLS; CPUs held awake: {}; OTLP export: {}",
            window.as_secs(),
            match history_turns() {
                0 => "one-line request".to_string(),
                n => format!("conversations of {n} turns re-sending their history (LOAD_HISTORY={n})"),
            },
            if awake_held { "yes (/dev/cpu_dma_latency = 0)" } else { "no (/dev/cpu_dma_latency not writable)" },
            if otlp { "on (LOAD_OTLP=1, a collector per veil)" } else { "off (set LOAD_OTLP=1)" }
        );

        if !only_ttfc {
            memory_step(&noop, &veil_be, baseline.as_ref().map(|(_, b, _)| b)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;

        // 2. Time to first chunk.
        let streams = env_num("LOAD_TTFC_STREAMS", 60).clamp(1, 1000) as usize;
        let mut ttfc_targets = vec![&direct, &noop, &veil_be];
        if let Some((_, b, _)) = &baseline {
            ttfc_targets.push(b);
        }
        let names: Vec<&str> = ttfc_targets.iter().map(|t| t.name).collect();
        let times = time_to_first_chunk(&ttfc_targets, streams).await;
        print_first_chunk("this client", &names, &times);
        if let Ok(python) = std::env::var("VEIL_PYTHON") {
            sdk_time_to_first_chunk(&python, &ttfc_targets, streams);
        }
        // Let the recording of everything so far land before cells count ledger rows.
        let mut targets = vec![&direct, &noop, &veil_be, &veil_req];
        if let Some((_, b, _)) = &baseline {
            targets.push(b);
        }
        for t in &targets[2..] {
            settle(t).await;
        }

        // 3. Throughput, latency, CPU, recorded fraction, peak RSS.
        let mut results: Vec<Vec<Vec<Cell>>> =
            vec![vec![Vec::new(); targets.len()]; conns_list.len()];
        for round in 0..rounds {
            for (ci, &conns) in conns_list.iter().enumerate() {
                for k in 0..targets.len() {
                    let ti = (k + round) % targets.len();
                    if only_veil && targets[ti].ledger.is_none() {
                        continue;
                    }
                    results[ci][ti].push(cell(targets[ti], conns, window).await);
                }
            }
        }
        if !conns_list.is_empty() {
            print_cells(&conns_list, &results, &targets);
        }
        let db = veil_be.ledger.as_deref().unwrap();
        let rows = ledger_rows(db);
        println!(
            "\nbest-effort veil's ledger: {rows} rows, {:.0} bytes per row (ledger.db and its WAL); sealed store {:.0} bytes per row",
            (dir_bytes_matching(&be_dir.join("data"), "ledger.db")) as f64 / rows.max(1) as f64,
            dir_bytes(&be_dir.join("data/sealed")) as f64 / rows.max(1) as f64
        );
        if !conns_list.is_empty() {
            for t in &targets[1..] {
                let (rss, hwm) = rss_kib(t.pid);
                println!(
                    "{} at the end: RSS {:.1} MB (peak of the last cell {:.1} MB)",
                    t.name,
                    rss as f64 / 1024.0,
                    hwm as f64 / 1024.0
                );
            }
        }
        drop((be_child, req_child, noop_child, upstream_child, baseline));
        drop((be_collector, req_collector));
    });
    drop(awake);
}

/// Step 1: memory at rest, after 1,000 exchanges on one connection (what recording keeps:
/// caches, queues and allocator arenas grown by the exchanges, not by connections), and with
/// 1,000 idle keep-alive intercepted connections on top. The difference of the last two, per
/// connection, is what an idle connection costs.
async fn memory_step(noop: &Target, veil_be: &Target, baseline: Option<&Target>) {
    println!(
        "\n| proxy | RSS at start MB (file-backed) | after 1,000 exchanges on 1 connection MB | after 1,000 more MB | with 1,000 idle connections MB | per idle connection KiB | of it, what recording its exchange kept KiB | at rest after 20,000 more MB | peak MB |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut memory_targets = vec![noop, veil_be];
    memory_targets.extend(baseline);
    for target in memory_targets {
        let (start, _) = rss_kib(target.pid);
        let start_file = rss_file_kib(target.pid);
        let mut after = [0u64; 2];
        for rss_after in &mut after {
            *rss_after = rss_at_rest_after(target, 1000).await.0;
        }
        // Each idle connection below made one request, and veil records it: the growth of
        // the second 1,000 exchanges on one connection (caches on their way to their
        // bounds) is what 1,000 recorded exchanges keep, apart from any connection.
        let recording = (after[1] as f64 - after[0] as f64) / 1000.0;
        let mut idle = Vec::new();
        for _ in 0..1000 {
            let mut c = open(target).await;
            let resp = c.send_request(completion_request(None)).await.unwrap();
            resp.into_body().collect().await.unwrap();
            idle.push(c);
        }
        settle(target).await;
        tokio::time::sleep(AT_REST).await;
        let (rss, _) = rss_kib(target.pid);
        drop(idle);
        // The steady state: recording's caches at their bounds, then no traffic.
        let (at_rest, hwm) = rss_at_rest_after(target, 20_000).await;
        println!(
            "| {} | {:.1} ({:.1}) | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            target.name,
            start as f64 / 1024.0,
            start_file as f64 / 1024.0,
            after[0] as f64 / 1024.0,
            after[1] as f64 / 1024.0,
            rss as f64 / 1024.0,
            (rss as f64 - after[1] as f64) / 1000.0,
            recording,
            at_rest as f64 / 1024.0,
            hwm as f64 / 1024.0
        );
    }
}

/// Exits with status 2 and `message` on stderr: a setting the bench cannot run with.
fn fail(message: &str) -> ! {
    eprintln!("load bench: {message}");
    std::process::exit(2);
}

/// Refuses to run when the soft limit on open descriptors is under what 1,000 idle
/// connections need (~2,100: each is a socket in the bench and one or two in the proxy).
/// Below it the proxies refuse connections and the memory step reports a wrong figure.
fn check_descriptor_limit() {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = soft.filter(|&n| n < 2_200) {
        fail(&format!(
            "the open-descriptor limit is {n}; 1,000 idle connections need ~2,100. Raise it \
             (`ulimit -n 8192`, as benches/load.sh does) and run again"
        ));
    }
}

/// Step 3's table and veil's CPU by thread, medians over the rounds.
fn print_cells(conns_list: &[usize], results: &[Vec<Vec<Cell>>], targets: &[&Target]) {
    println!(
        "\n| conns | target | req/s | ÷ no-op | p50 µs | p99 µs | added p50 µs | added p99 µs | CPU µs/response | CPU µs/recorded | recorded | peak RSS MB |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut thread_lines = Vec::new();
    let mut export_lines = Vec::new();
    for (ci, &conns) in conns_list.iter().enumerate() {
        if results[ci][3].is_empty() {
            continue;
        }
        let cells: Vec<Cell> = results[ci]
            .iter()
            .map(|c| {
                if c.is_empty() {
                    Cell::default()
                } else {
                    median_cell(c)
                }
            })
            .collect();
        let (d, n) = (&cells[0], &cells[1]);
        // LOAD_ONLY=veil measures no direct or no-op cell: no row, and nothing against them.
        let (with_direct, with_noop) = (!results[ci][0].is_empty(), !results[ci][1].is_empty());
        for (ti, c) in cells.iter().enumerate() {
            if results[ci][ti].is_empty() {
                continue;
            }
            let ratio = if with_noop {
                format!("{:.2}", c.stats.rps / n.stats.rps)
            } else {
                "—".to_string()
            };
            let added = |v: f64, base: f64| {
                if with_direct {
                    format!("{:+.0}", v - base)
                } else {
                    "—".to_string()
                }
            };
            let rec = c
                .recorded
                .map_or(("—".to_string(), "—".to_string()), |(r, per)| {
                    (
                        // No row, no CPU per row (a forward-only build records nothing).
                        if r == 0 {
                            "—".to_string()
                        } else {
                            format!("{per:.0}")
                        },
                        format!(
                            "{r} of {} ({:.1} %){}",
                            c.stats.responses,
                            100.0 * r as f64 / c.stats.responses as f64,
                            match c.stats.refused {
                                0 => String::new(),
                                n => format!("; {n} refused"),
                            }
                        ),
                    )
                });
            println!(
                "| {conns} | {} | {:.0} | {ratio} | {:.0} | {:.0} | {} | {} | {:.1} | {} | {} | {:.1} |",
                targets[ti].name,
                c.stats.rps,
                c.stats.p50_us,
                c.stats.p99_us,
                added(c.stats.p50_us, d.stats.p50_us),
                added(c.stats.p99_us, d.stats.p99_us),
                c.cpu_us,
                rec.0,
                rec.1,
                c.peak_mb
            );
            if targets[ti].ledger.is_some() {
                let shown: Vec<String> = c
                    .threads
                    .iter()
                    .take(8)
                    .map(|(n, us)| format!("{n} {us:.1}"))
                    .collect();
                thread_lines.push(format!(
                    "- {conns} conns, {}: {}",
                    targets[ti].name,
                    shown.join(", ")
                ));
            }
            if let Some(([spans, logs, metrics, bytes], collector_us)) = c.exported {
                export_lines.push(format!(
                    "- {conns} conns, {}: {spans} spans for {} responses ({:.1} %), {logs} log records, {metrics} metric exports, {:.0} bytes on the wire per span and its log record; the collector's CPU {collector_us:.1} µs/response",
                    targets[ti].name,
                    c.stats.responses,
                    100.0 * spans as f64 / c.stats.responses.max(1) as f64,
                    bytes as f64 / spans.max(1) as f64,
                ));
            }
        }
    }
    println!(
        "\nveil CPU by thread, µs per response:\n{}",
        thread_lines.join("\n")
    );
    if !export_lines.is_empty() {
        println!(
            "\nOTLP export (each veil to its own collector; the collector's CPU is not in veil's):\n{}",
            export_lines.join("\n")
        );
    }
}

/// Time to first chunk with the official openai SDK (`benches/load/ttfc.py`, run by the Python
/// `VEIL_PYTHON` names): `targets[0]` is direct, the others proxies reached by `HTTPS_PROXY`,
/// `streams` each in rounds of one per target as [`time_to_first_chunk`] does. A missing SDK or
/// a failed run is reported, never fatal.
fn sdk_time_to_first_chunk(python: &str, targets: &[&Target], streams: usize) {
    let spec: Vec<serde_json::Value> = targets
        .iter()
        .map(|t| {
            if t.via_proxy {
                serde_json::json!({
                    "name": t.name,
                    "base_url": "https://api.openai.com/v1",
                    "proxy": format!("http://{}", t.addr),
                    "ca": t.ca_path,
                })
            } else {
                serde_json::json!({
                    "name": t.name,
                    "base_url": format!("https://localhost:{}/v1", t.addr.port()),
                    "proxy": null,
                    "ca": t.ca_path,
                })
            }
        })
        .collect();
    let spec = serde_json::json!({"runs": streams, "targets": spec}).to_string();
    let out = Command::new(python)
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/benches/load/ttfc.py"))
        .arg(&spec)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy")
        .output();
    let parsed: Option<serde_json::Map<String, serde_json::Value>> = match &out {
        Ok(o) if o.status.success() => serde_json::from_slice(&o.stdout).ok(),
        _ => None,
    };
    let names: Vec<&str> = targets.iter().map(|t| t.name).collect();
    let times: Option<Vec<Vec<f64>>> = parsed.and_then(|m| {
        names
            .iter()
            .map(|n| {
                let list = m.get(*n)?.as_array()?;
                let v: Option<Vec<f64>> = list.iter().map(|x| x.as_f64()).collect();
                v.filter(|v| v.len() == streams)
            })
            .collect()
    });
    let Some(times) = times else {
        println!(
            "\ntime to first chunk with the openai SDK: not measured ({})",
            match &out {
                Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
                Err(e) => e.to_string(),
            }
        );
        return;
    };
    print_first_chunk("the official openai SDK", &names, &times);
}

/// Total size of the files under `dir` (recursively); 0 when it does not exist.
fn dir_bytes(dir: &Path) -> u64 {
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

/// Total size of the files in `dir` whose name starts with `prefix` (not recursive).
fn dir_bytes_matching(dir: &Path, prefix: &str) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
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
                    SeriesValue::Str(format!("model-{}", i % 40).into()),
                ),
                (
                    "veil.feature",
                    SeriesValue::Str(format!("feature-{}", i / 40).into()),
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
    let rules = veil::counters::exposition::RulesInfo {
        digest: "digest".into(),
        ..Default::default()
    };
    for _ in 0..50 {
        let t = Instant::now();
        bytes = veil::counters::exposition::render(&counters, &rules).len();
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
        let dir = tempfile::tempdir().unwrap();
        let (_roles_dir, [dir_off, dir_on], upstream_child, upstream, upstream_ca) =
            start_upstream(dir.path(), ["off", "on"]);
        let metrics_port = free_port();
        let metrics_addr = SocketAddr::from(([127, 0, 0, 1], metrics_port));
        let bin = Path::new(env!("CARGO_BIN_EXE_veil"));
        let (child_off, veil_off) = start_veil(bin, upstream, &upstream_ca, &dir_off, "", &[]);
        let (child_on, veil_on) = start_veil(
            bin,
            upstream,
            &upstream_ca,
            &dir_on,
            "",
            &["--metrics-listen".to_string(), format!("127.0.0.1:{metrics_port}")],
        );
        let target = |name, addr, dir: &Path, pid| {
            Target::new(name, addr, dir.join("keys/ca.pem"), true, pid, None)
        };
        let off = target("veil without /metrics", veil_off, &dir_off, child_off.0.id());
        let on = target("veil with /metrics", veil_on, &dir_on, child_on.0.id());
        // The scraper: one GET /metrics per second while the runs last (bounded by a flag).
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let scraper = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut scrapes = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && scrapes.len() < 10_000 {
                    let t = Instant::now();
                    if let Some(answer) = http_get(metrics_addr, "/metrics").await {
                        scrapes.push((t.elapsed().as_secs_f64() * 1e3, answer.len()));
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
                    a.push(throughput(&off, conns, window).await);
                    b.push(throughput(&on, conns, window).await);
                } else {
                    b.push(throughput(&on, conns, window).await);
                    a.push(throughput(&off, conns, window).await);
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
        drop((child_off, child_on, upstream_child));
    });
}
