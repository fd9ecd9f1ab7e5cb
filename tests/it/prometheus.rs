//! The acceptance test of veil#15's dashboard: a real Prometheus (Debian package `prometheus`)
//! scrapes `veil run --metrics-listen`, the official Python SDKs and curl send traffic through
//! veil (features, models, streams, a prompt-cache hit, an upstream 429 retried by the SDK, a
//! 500, the same body twice, feedback), and then every PromQL expression in
//! `dashboards/veil.json` must return data from Prometheus' HTTP API, and every rule of
//! `dashboards/alerts.yml` must evaluate without error.
//!
//! Without a `prometheus` binary the test prints a NOTICE and checks nothing, and under
//! `CI=true` it fails instead (the `Tmpfs::mount` pattern); `.ci/run` installs the package.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::sdk::run_sdk_script;
use crate::support::dashboard::{alert_rules, alerts_path, alerts_text, dashboard};
use crate::support::dashboard::{grouping_labels, label_variables, queries, substitute};
use crate::support::mock_llm::{Alpn, Mock};
use crate::support::otlp::Receiver;
use crate::support::process::{VeilProcess, curl_chat, curl_chat_status, free_port, resolve_args};
use crate::support::python;
use crate::support::tmpfs::skip;

/// Requests one traffic wave sends through veil: 6 from the SDK script (its 429 retried once),
/// a 500 and the same body twice with curl.
const REQUESTS_PER_WAVE: u64 = 9;

/// A `prometheus` server for one test, on 127.0.0.1, its data in a temp dir. Killed (by its
/// PID, through `Child`) on drop.
struct Prometheus {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second and evaluating `rules`; waits (30 s at
    /// most) until it is ready. `None`, with a NOTICE, when there is no `prometheus` binary.
    fn start(test: &str, target: SocketAddr, rules: &Path) -> Option<Prometheus> {
        if let Err(e) = Command::new("prometheus")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
        {
            return skip(
                test,
                format!("no prometheus binary ({e}): apt-get install prometheus"),
            );
        }
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: veil\n    static_configs:\n      - targets: ['{target}']\n",
                rules = rules.display()
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("prometheus starts");
        let mut prom = Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "2",
                ])
                .arg(format!("{}/-/ready", prom.base))
                .output()
                .unwrap();
            if out.stdout == b"200" {
                return Some(prom);
            }
            if let Some(status) = prom.child.try_wait().unwrap() {
                panic!("prometheus exited ({status}):\n{}", prom.log());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready in 30 s:\n{}",
                prom.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn log(&self) -> String {
        let text =
            std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// GET `path` with URL-encoded `params`: the API's JSON answer (10 s at most).
    fn get(&self, path: &str, params: &[(&str, &str)]) -> serde_json::Value {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-G", "--max-time", "10"]);
        for (k, v) in params {
            cmd.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        let out = cmd.arg(format!("{}{path}", self.base)).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "prometheus {path} {params:?}: not JSON ({e}): {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    }

    /// The instant query's samples as `(labels, value)`, or Prometheus' error.
    fn query(&self, expr: &str) -> Result<Vec<(serde_json::Value, String)>, String> {
        let answer = self.get("/api/v1/query", &[("query", expr)]);
        if answer["status"] != "success" {
            return Err(format!("{}: {}", answer["errorType"], answer["error"]));
        }
        let data = &answer["data"];
        Ok(match data["resultType"].as_str() {
            Some("scalar") => vec![(
                serde_json::Value::Null,
                data["result"][1].as_str().unwrap_or_default().to_string(),
            )],
            _ => data["result"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    (
                        s["metric"].clone(),
                        s["value"][1].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect(),
        })
    }

    /// The one number `expr` answers (`None` before it has data).
    fn number(&self, expr: &str) -> Option<f64> {
        let samples = self.query(expr).unwrap_or_default();
        samples.first().and_then(|(_, v)| v.parse().ok())
    }

    /// Waits (60 s at most) until veil's requests in Prometheus reach `requests`, and then for
    /// two more scrapes of veil, so every rate has samples on both sides of the traffic.
    fn wait_for(&self, requests: u64, veil: &VeilProcess) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let scrapes = r#"count_over_time(up{job="veil"}[1h])"#;
        while self.number("sum(veil_requests_total)").unwrap_or(0.0) < requests as f64 {
            assert!(
                Instant::now() < deadline,
                "Prometheus never saw {requests} requests (has {:?}, veil up: {:?});\nprometheus:\n{}\nveil:\n{}",
                self.number("sum(veil_requests_total)"),
                self.number(r#"up{job="veil"}"#),
                self.log(),
                veil.stderr()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        let seen = self.number(scrapes).unwrap_or(0.0);
        while self.number(scrapes).unwrap_or(0.0) < seen + 2.0 {
            assert!(
                Instant::now() < deadline,
                "Prometheus stopped scraping veil:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// POST /veil/v1/feedback on veil's listener (no proxy): the status.
fn feedback(proc: &VeilProcess, request_id: &str) -> String {
    let body = serde_json::json!({"request_id": request_id, "name": "user_rating",
        "score": 1, "label": "thumbs_up"});
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "20",
        ])
        .args(["-H", "content-type: application/json", "-d"])
        .arg(body.to_string())
        .arg(format!("http://{}/veil/v1/feedback", proc.addr))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// One wave of traffic: the SDK script, a 500, the same body twice, feedback on an answer.
fn wave(proc: &VeilProcess, cwd: &Path) {
    let results = run_sdk_script("metrics_traffic.py", proc, &cwd.join("keys"));
    let sent: u64 = results
        .iter()
        .map(|r| r["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(sent + 3, REQUESTS_PER_WAVE, "{results:?}");
    let body = serde_json::json!({"model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": "Invoice total?"}]})
    .to_string();
    let status = curl_chat_status(
        proc,
        cwd,
        &body,
        &["-H", "x-veil-feature: billing", "-H", "x-mock-status: 500"],
    );
    assert_eq!(status, 500, "the mock's 500 through veil");
    // The same body twice in a row: an app's own retry, without an SDK header.
    let body = serde_json::json!({"model": "gpt-4o",
        "messages": [{"role": "user", "content": "Same question again"}]})
    .to_string();
    for _ in 0..2 {
        curl_chat(proc, cwd, &body, &["-H", "x-veil-feature: billing"]);
    }
    let id = results[0]["request_id"].as_str().unwrap();
    assert_eq!(
        feedback(proc, id),
        "202",
        "feedback on {id}:\n{}",
        proc.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Python SDKs in .venv or $VEIL_PYTHON (README); run with cargo test -- --include-ignored"]
async fn every_dashboard_expression_returns_data_from_a_real_prometheus_scraping_veil() {
    const TEST: &str =
        "every_dashboard_expression_returns_data_from_a_real_prometheus_scraping_veil";
    python::require("openai, anthropic");
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let receiver = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = resolve_args(mock.addr);
    args.extend([
        "--upstream-ca".to_string(),
        mock.ca_path.display().to_string(),
        "--otlp-endpoint".to_string(),
        receiver.endpoint(),
        "--metrics-listen".to_string(),
        "127.0.0.1:0".to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut proc = VeilProcess::start(&args, dir.path());
    let metrics = metrics_addr(&proc);
    let Some(prom) = Prometheus::start(TEST, metrics, &alerts_path()) else {
        return;
    };

    // Two waves, two scrapes apart: the second one moves series that already exist, so rates
    // and quantiles have an increase to show (a series born in one scrape has rate 0).
    let (cwd, veil) = (dir.path().to_path_buf(), &proc);
    tokio::task::block_in_place(|| {
        wave(veil, &cwd);
        prom.wait_for(REQUESTS_PER_WAVE, veil);
        wave(veil, &cwd);
        prom.wait_for(2 * REQUESTS_PER_WAVE, veil);
    });

    let d = dashboard();
    let mut failed: Vec<(String, String)> = Vec::new();
    let qs = queries(&d);
    for q in &qs {
        let expr = substitute(&q.expr).unwrap();
        let why = match prom.query(&expr) {
            Err(e) => Some(format!("error {e}")),
            Ok(samples) if samples.is_empty() => Some("no data".to_string()),
            Ok(samples) if samples.iter().all(|(_, v)| v == "NaN") => {
                Some(format!("only NaN ({} series)", samples.len()))
            }
            // A renamed label still answers (`=~".*"` matches its absence, `by` groups it
            // into one series): each grouping label must be set on some series.
            Ok(samples) => grouping_labels(&expr)
                .into_iter()
                .find(|l| {
                    !samples
                        .iter()
                        .any(|(m, _)| m[l.as_str()].as_str().is_some_and(|v| !v.is_empty()))
                })
                .map(|l| format!("no series has the label {l} it groups by")),
        };
        if let Some(why) = why {
            failed.push((q.name.clone(), format!("{why}\n      {expr}")));
        }
    }
    // The variables' label_values: every feature and model sent is offered.
    for (var, metric, label) in label_variables(&d) {
        let answer = prom.get(
            &format!("/api/v1/label/{label}/values"),
            &[("match[]", &metric)],
        );
        let values: Vec<&str> = answer["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v.as_str())
            .collect();
        let want: &[&str] = match var.as_str() {
            "feature" => &["billing", "search", "support"],
            "model" => &["claude-sonnet-4-5", "gpt-4o", "gpt-4o-mini"],
            other => panic!("a variable this test does not know: {other}"),
        };
        if let Some(missing) = want.iter().find(|w| !values.contains(w)) {
            failed.push((
                format!("variable ${var}"),
                format!("label_values({metric}, {label}) lacks {missing}: {values:?}"),
            ));
        }
    }

    let failures: Vec<String> = failed
        .iter()
        .map(|(name, why)| format!("  {name}: {why}"))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} dashboard queries returned no data:\n{}\nveil /metrics:\n{}",
        failures.len(),
        qs.len(),
        failures.join("\n"),
        scrape(metrics)
    );

    // Every alert rule evaluates without error (health "ok") once Prometheus has run it.
    let want = alert_rules(&alerts_text()).len();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = prom.get("/api/v1/rules", &[]);
        let rules: Vec<&serde_json::Value> = answer["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .collect();
        let bad: Vec<String> = rules
            .iter()
            .filter(|r| r["health"] != "ok")
            .map(|r| format!("{}: {} {}", r["name"], r["health"], r["lastError"]))
            .collect();
        if rules.len() == want && bad.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alert rules: {} loaded of {want}; not ok: {bad:?}\n{}",
            rules.len(),
            prom.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    drop(prom);
    assert!(proc.terminate().success(), "{}", proc.stderr());
}

/// The bound address of veil's `/metrics` listener, from its startup line `Prometheus metrics:
/// http://ADDR/metrics` (5 s at most: veil logs it with the others at startup).
fn metrics_addr(proc: &VeilProcess) -> SocketAddr {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let found = proc.stderr().lines().find_map(|l| {
            let rest = l.split("Prometheus metrics: http://").nth(1)?;
            rest.split('/').next()?.parse().ok()
        });
        if let Some(addr) = found {
            return addr;
        }
        assert!(
            Instant::now() < deadline,
            "veil did not log its /metrics address:\n{}",
            proc.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// veil's `/metrics` text, for a failure message.
fn scrape(addr: SocketAddr) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "5"])
        .arg(format!("http://{addr}/metrics"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}
