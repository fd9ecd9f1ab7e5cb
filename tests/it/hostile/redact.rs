//! Redaction on hostile text: match-dense prompts, secrets with neighbours, broken JSON escapes.
//!
//! Each test runs the real `veil` binary against the mock provider and a real OTLP receiver on
//! loopback, sends its input through the proxy with a real TLS client, and reads what reached
//! the collector. Waits are bounded; a record that does not arrive in time fails the test.

use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

use crate::support::harness::{Client, Proto, ReqBody};
use crate::support::mock_llm::{Alpn, Mock};
use crate::support::otlp::{Receiver, attr};
use crate::support::process::{VeilProcess, resolve_args};

/// A veil process recording to `receiver`, with its working directory.
struct Setup {
    proc: VeilProcess,
    dir: tempfile::TempDir,
    receiver: Receiver,
    _mock: Mock,
}

async fn setup() -> Setup {
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = resolve_args(mock.addr);
    args.extend([
        "--upstream-ca".to_string(),
        mock.ca_path.display().to_string(),
        "--otlp-endpoint".to_string(),
        receiver.endpoint(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proc = VeilProcess::start(&args, dir.path());
    Setup {
        proc,
        dir,
        receiver,
        _mock: mock,
    }
}

impl Setup {
    async fn client(&self) -> Client {
        let ca = std::fs::read_to_string(self.dir.path().join("keys/ca.pem")).unwrap();
        Client::connect(self.proc.addr, "api.openai.com", &ca, Proto::Http1).await
    }

    /// POSTs `body` (sent as is, `content-encoding` optional) to the chat completions API
    /// through veil; returns the request ID veil assigned.
    async fn chat(&self, body: Vec<u8>, encoding: Option<&str>) -> String {
        let mut req = Request::post("https://api.openai.com/v1/chat/completions")
            .header("host", "api.openai.com")
            .header("content-type", "application/json");
        if let Some(e) = encoding {
            req = req.header("content-encoding", e);
        }
        let req: Request<ReqBody> = req.body(Full::new(Bytes::from(body)).boxed()).unwrap();
        let resp = self.client().await.send(req).await;
        assert_eq!(resp.status(), 200, "stderr:\n{}", self.proc.stderr());
        let id = resp
            .headers()
            .get("x-veil-request-id")
            .expect("x-veil-request-id")
            .to_str()
            .unwrap()
            .to_string();
        let _ = resp.into_body().collect().await;
        id
    }

    /// The span of request `id`, waiting at most `limit` for it.
    async fn span(&self, id: &str, limit: Duration) -> Span {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(s) = self
                .receiver
                .spans()
                .into_iter()
                .find(|s| attr(s, "veil.request.id").as_deref() == Some(id))
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no span for {id} within {limit:?}; stderr:\n{}",
                self.proc.stderr()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Panics if any byte that reached the collector contains `needle`.
    fn assert_never_exported(&self, needle: &str) {
        for r in self.receiver.received() {
            assert!(
                !r.body.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle:?} reached the collector in {}",
                r.path
            );
        }
    }
}

fn chat_body(prompt: &str) -> Vec<u8> {
    serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": prompt}],
    })
    .to_string()
    .into_bytes()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

fn count(span: &Span, detector: &str) -> u64 {
    attr(span, &format!("veil.redaction.count.{detector}")).map_or(0, |v| v.parse().unwrap())
}

/// How long a record of a few MB may take in a debug build on a loaded 2-core machine. Linear
/// redaction needs a few seconds; the quadratic one of veil#10 needed minutes.
const DENSE_LIMIT: Duration = Duration::from_secs(90);

// See: veil#10
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lorem_ipsum_alice_at_example_com_sit_amet_repeated_4mb_plain_and_gzipped() {
    let s = setup().await;
    let unit = "lorem ipsum alice@example.com sit amet ";
    let prompt = unit.repeat((4 << 20) / unit.len());
    let emails = (prompt.len() / unit.len()) as u64;
    let body = chat_body(&prompt);
    let packed = gzip(&body);
    assert!(
        packed.len() < 64 << 10,
        "compresses to {} bytes",
        packed.len()
    );

    let plain = s.chat(body, None).await;
    let zipped = s.chat(packed, Some("gzip")).await;
    for id in [&plain, &zipped] {
        let span = s.span(id, DENSE_LIMIT).await;
        assert_eq!(count(&span, "email"), emails, "{id}");
        assert_eq!(
            attr(&span, "veil.content_dropped"),
            None,
            "4 MiB fits the budget"
        );
        assert_eq!(
            attr(&span, "gen_ai.request.model").as_deref(),
            Some("gpt-4o-mini")
        );
    }
    s.assert_never_exported("alice@example.com");
}

// See: veil#10
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn begin_private_key_headers_in_prose_repeated_1mb() {
    // Each header used to send the PEM regex to the end of the prose looking for its END
    // line: quadratic in the number of headers.
    let s = setup().await;
    let unit = "-----BEGIN PRIVATE KEY----- lorem ipsum ";
    let prompt = unit.repeat((1 << 20) / unit.len());
    let headers = (prompt.len() / unit.len()) as u64;
    let id = s.chat(chat_body(&prompt), None).await;
    let span = s.span(&id, DENSE_LIMIT).await;
    assert_eq!(count(&span, "private_key"), headers);
}

// See: veil#10
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_gw_example_keys_sk_proj_usage_and_akia_slash_x_are_masked() {
    let s = setup().await;
    let openai = format!(
        "sk-proj-{}",
        "aB3dE6gH9jK2mN5pQ8sT1vW4yZ7bC0eF3hJ6kM9nP2rS5uV8"
    );
    let aws = "AKIAIOSFODNN7EXAMPLE";
    let prompt = format!(
        "GET https://gw.example/keys/{openai}/usage failed; then {aws}/x and \
         {{\"k\":\"{aws}\"}} and key={openai}&next=1 and <{openai}>"
    );
    let id = s.chat(chat_body(&prompt), None).await;
    let span = s.span(&id, Duration::from_secs(30)).await;
    assert_eq!(count(&span, "openai_api_key"), 3);
    assert_eq!(count(&span, "aws_access_key_id"), 2);
    s.assert_never_exported(&openai);
    s.assert_never_exported(aws);
    // The mask ends where the key ends: the text around it is kept, in the log's content.
    let deadline = Instant::now() + Duration::from_secs(30);
    let logged = |needle: &str| {
        s.receiver
            .received()
            .iter()
            .filter(|r| r.path == "/v1/logs")
            .any(|r| r.body.windows(needle.len()).any(|w| w == needle.as_bytes()))
    };
    while !(logged("keys/[OPENAI_API_KEY]/usage failed") && logged("[AWS_ACCESS_KEY_ID]/x and")) {
        assert!(Instant::now() < deadline, "no log with the masked text");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// See: veil#10
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lone_ud800_escape_in_a_prompt_keeps_model_tokens_and_cost() {
    let s = setup().await;
    // Written by hand: no Rust string (so no serde_json::json!) can hold a lone surrogate.
    let body = br#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"half an emoji \ud83d, a lone \ud800 and \udc00, mail alice@example.com"}]}"#;
    let id = s.chat(body.to_vec(), None).await;
    let span = s.span(&id, Duration::from_secs(30)).await;
    let dump = format!("{span:?}");
    assert_eq!(
        attr(&span, "gen_ai.operation.name").as_deref(),
        Some("chat"),
        "{dump}"
    );
    assert_eq!(
        attr(&span, "gen_ai.request.model").as_deref(),
        Some("gpt-4o-mini")
    );
    assert_eq!(
        attr(&span, "gen_ai.usage.input_tokens").as_deref(),
        Some("52")
    );
    assert_eq!(
        attr(&span, "gen_ai.usage.output_tokens").as_deref(),
        Some("19")
    );
    assert!(attr(&span, "veil.cost.usd").is_some(), "{dump}");
    assert_eq!(attr(&span, "veil.parse_error"), None, "{dump}");
    assert_eq!(count(&span, "email"), 1);
    s.assert_never_exported("alice@example.com");

    // A body that really is not JSON: the record says why, with no content.
    let id = s
        .chat(
            br#"{"model": "gpt-4o-mini", "messages": [{"content": "alice@exa"#.to_vec(),
            None,
        )
        .await;
    let span = s.span(&id, Duration::from_secs(30)).await;
    let why = attr(&span, "veil.parse_error").expect("veil.parse_error");
    assert!(why.starts_with("request body is not JSON: EOF"), "{why}");
    assert!(!why.contains("alice"), "{why}");
    assert_eq!(
        attr(&span, "gen_ai.operation.name").as_deref(),
        Some("unknown")
    );
}

/// The value of counter `name` in the last metrics export, if any.
fn counter(receiver: &Receiver, name: &str) -> Option<i64> {
    let last = receiver
        .received()
        .into_iter()
        .rfind(|r| r.path == "/v1/metrics")?;
    let req = ExportMetricsServiceRequest::decode(&last.body[..]).expect("metrics decode");
    let m = req
        .resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .find(|m| m.name == name)?;
    let Some(metric::Data::Sum(sum)) = &m.data else {
        panic!("{name} is not a sum");
    };
    match sum.data_points.first()?.value {
        Some(number_data_point::Value::AsInt(v)) => Some(v),
        _ => None,
    }
}

// See: veil#10
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_mb_prompt_content_is_dropped_marked_and_counted() {
    let s = setup().await;
    let unit = "lorem ipsum alice@example.com sit amet ";
    let prompt = unit.repeat((20 << 20) / unit.len());
    let id = s.chat(chat_body(&prompt), None).await;
    let span = s.span(&id, DENSE_LIMIT).await;
    let dump = format!(
        "{:?}",
        span.attributes.iter().map(|kv| &kv.key).collect::<Vec<_>>()
    );
    assert_eq!(
        attr(&span, "veil.content_dropped").as_deref(),
        Some("redaction_bytes"),
        "{dump}"
    );
    // The metadata is still there; the content and its counts are not.
    assert_eq!(
        attr(&span, "gen_ai.request.model").as_deref(),
        Some("gpt-4o-mini")
    );
    assert_eq!(
        attr(&span, "gen_ai.usage.input_tokens").as_deref(),
        Some("52")
    );
    assert_eq!(count(&span, "email"), 0);
    s.assert_never_exported("alice@example.com");
    s.assert_never_exported("lorem ipsum");

    // Counted: the exporter sends its counters at shutdown (and every 30 s when they changed).
    let mut s = s;
    assert!(s.proc.terminate().success(), "{}", s.proc.stderr());
    assert_eq!(
        counter(&s.receiver, "veil.exchanges.content_dropped"),
        Some(1),
        "stderr:\n{}",
        s.proc.stderr()
    );
}

/// A completed chat exchange with `request` and a plain OpenAI answer, as the proxy hands it
/// to the pipeline.
fn chat_exchange(request: &serde_json::Value) -> veil::exchange::Exchange {
    use veil::exchange::{Body, Exchange, ExchangeId, Outcome, Route, Timings, Upstream};
    let body = |b: Vec<u8>| Body {
        wire_len: b.len() as u64,
        chunks: vec![Bytes::from(b)],
        truncated: false,
        content_encoding: None,
    };
    Exchange {
        id: ExchangeId::new(),
        started_at: std::time::SystemTime::now(),
        timings: Timings {
            end: Duration::from_millis(5),
            ..Timings::default()
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
        tags: vec![("x-veil-feature".into(), "mail bob@example.com".into())].into(),
        api_key_fingerprint: None,
        request_body: body(request.to_string().into_bytes()),
        status: Some(200),
        response_headers: vec![("content-type".into(), "application/json".into())].into(),
        response_body: body(
            crate::support::mock_llm::openai_completion("gpt-4o-mini")
                .to_string()
                .into_bytes(),
        ),
        outcome: Outcome::Complete,
        websocket: None,
    }
}

// See: veil#10
#[test]
fn past_the_redaction_budget_all_content_leaves_the_record_and_metadata_stays() {
    use veil::exchange::{ParseOptions, Pricing, parse};
    use veil::keys::{KeyId, Keyring, MasterKey};
    use veil::record;
    use veil::redact::{BUILTIN_DEFAULT_RULES, Budget, CompiledRules};

    let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [3; 32]));
    let rules = CompiledRules::from_str(BUILTIN_DEFAULT_RULES, &keys).unwrap();
    let request = serde_json::json!({
        "model": "gpt-4o-mini",
        "temperature": 0.5,
        "stop": ["alice@example.com"],
        "messages": [
            {"role": "system", "content": "be brief, alice@example.com"},
            {"role": "user", "content": "mail alice@example.com ".repeat(100)},
        ],
    });
    let ex = chat_exchange(&request);
    let conv = parse(&ex, &ParseOptions::default(), &Pricing::builtin());
    let full = record::build_within(&ex, &conv, &rules, Budget::UNLIMITED);
    assert_eq!(full.content_dropped, None);
    assert!(full.input_messages.is_some() && full.output_messages.is_some());
    assert_eq!(
        full.redactions["EMAIL"],
        100 + 1 + 1 + 1,
        "messages, stop, tag"
    );

    // Enough for the system message, not for the user's.
    let budget = Budget {
        max_bytes: 200,
        max_cpu: Duration::MAX,
    };
    let r = record::build_within(&ex, &conv, &rules, budget);
    assert_eq!(r.content_dropped, Some("redaction_bytes"));
    assert_eq!(
        (
            &r.system_instructions,
            &r.input_messages,
            &r.output_messages
        ),
        (&None, &None, &None),
        "all content goes, including what was redacted before the budget ran out"
    );
    assert_eq!(r.request_params.get("stop_sequences"), None);
    assert_eq!(r.request_params["temperature"], serde_json::json!(0.5));
    assert_eq!((r.redactions_input, r.redactions_output), (0, 0));
    // Metadata is kept, and its labels are still scrubbed.
    assert_eq!(r.request_model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(r.usage, full.usage);
    assert_eq!(r.cost_usd, full.cost_usd);
    assert_eq!(r.feature.as_deref(), Some("mail [EMAIL]"));
    assert_eq!(r.redactions.get("EMAIL"), Some(&1), "the tag only");
    let json = format!("{r:?}");
    assert!(!json.contains("alice@example.com"), "{json}");
}

/// Peak resident memory of process `pid` (`VmHWM`), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kb * 1024
}

// See: veil#10. A burst of forty 20 MB prompts kept the pipeline busy for minutes and held
// ~900 MB: each waited in the queue to be redacted quadratically. Now each one's content is
// dropped at the byte budget before a byte is scanned, the queue is bounded in bytes (what
// it cannot hold is dropped and counted, best-effort), memory stays bounded, and recording
// is free again moments after the burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_20mb_prompts_in_a_burst_are_bounded_counted_and_do_not_stall_recording() {
    let s = std::sync::Arc::new(setup().await);
    let unit = "lorem ipsum alice@example.com sit amet ";
    let body = Bytes::from(chat_body(&unit.repeat((20 << 20) / unit.len())));
    let started = Instant::now();
    // Four connections at a time, forty prompts in all.
    let mut ids = Vec::new();
    for _wave in 0..10 {
        let sends: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                let body = body.clone();
                tokio::spawn(async move { s.chat(body.to_vec(), None).await })
            })
            .collect();
        for send in sends {
            ids.push(send.await.unwrap());
        }
    }
    let burst = started.elapsed();
    // Recording is not stuck behind the burst: an ordinary exchange right after it is
    // recorded within seconds (the burst once took minutes).
    let after = s.chat(chat_body("hello after the burst"), None).await;
    let span = s.span(&after, Duration::from_secs(20)).await;
    assert_eq!(attr(&span, "veil.content_dropped"), None);
    let caught_up = started.elapsed();
    let peak = peak_rss(s.proc.child.id());
    let recorded = s
        .receiver
        .spans()
        .into_iter()
        .filter(|sp| attr(sp, "veil.content_dropped").as_deref() == Some("redaction_bytes"))
        .count() as i64;
    let mut s = std::sync::Arc::into_inner(s).expect("no other holder");
    assert!(s.proc.terminate().success(), "{}", s.proc.stderr());
    let dropped = counter_sum(&s.receiver, "veil.exchanges.dropped").unwrap_or(0);
    eprintln!(
        "forty 20 MB prompts: sent in {burst:?}, recording caught up at {caught_up:?}, \
         {recorded} recorded without content, {dropped} dropped (queue bytes), peak RSS {} MB",
        peak >> 20
    );
    // Every one is accounted for: recorded (content dropped, marked) or dropped (counted).
    assert_eq!(
        recorded + dropped,
        40,
        "recorded {recorded}, dropped {dropped}"
    );
    assert!(
        peak < 700 << 20,
        "veil's peak RSS {} MB (once ~900 MB)",
        peak >> 20
    );
    s.assert_never_exported("alice@example.com");
}

/// Sum of every data point of counter `name` in the last metrics export.
fn counter_sum(receiver: &Receiver, name: &str) -> Option<i64> {
    let last = receiver
        .received()
        .into_iter()
        .rfind(|r| r.path == "/v1/metrics")?;
    let req = ExportMetricsServiceRequest::decode(&last.body[..]).expect("metrics decode");
    let m = req
        .resource_metrics
        .iter()
        .flat_map(|rm| &rm.scope_metrics)
        .flat_map(|sm| &sm.metrics)
        .find(|m| m.name == name)?;
    let Some(metric::Data::Sum(sum)) = &m.data else {
        panic!("{name} is not a sum");
    };
    Some(
        sum.data_points
            .iter()
            .map(|p| match p.value {
                Some(number_data_point::Value::AsInt(v)) => v,
                _ => 0,
            })
            .sum(),
    )
}
