//! The `veil` binary: first run, `ca path`, `env`, config errors, signals, and curl through it.

use std::process::Command;

use crate::support::mock_llm::{Alpn, Mock};
use crate::support::process::{VeilProcess, project, resolve_args, veil, veil_bin};

fn run_args(mock: &Mock) -> Vec<String> {
    let mut args = resolve_args(mock.addr);
    args.push("--upstream-ca".into());
    args.push(mock.ca_path.display().to_string());
    args
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_run_creates_keys_and_later_runs_reuse_them() {
    use std::os::unix::fs::PermissionsExt;
    let mock = Mock::start(Alpn::Http1Only).await;
    let dir = tempfile::tempdir().unwrap();
    let args = run_args(&mock);
    let mut veil1 = VeilProcess::start(&strs(&args), dir.path());
    let ca = std::fs::read_to_string(dir.path().join("keys/ca.pem")).unwrap();
    for secret in ["keys/ca.key", "keys/master.keys"] {
        let mode = std::fs::metadata(dir.path().join(secret))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{secret} must be 0600");
    }
    // `veil run` turns transparent huge pages off (src/os.rs says why: ~20 MB of RSS).
    let status = std::fs::read_to_string(format!("/proc/{}/status", veil1.child.id())).unwrap();
    let thp = status.lines().find(|l| l.starts_with("THP_enabled:"));
    assert_eq!(
        thp.map(|l| l.split_whitespace().nth(1)),
        Some(Some("0")),
        "THP left on: {thp:?}"
    );
    let status = veil1.terminate();
    assert!(
        status.success(),
        "SIGTERM exits 0: {status:?}\n{}",
        veil1.stderr()
    );
    let mut veil2 = VeilProcess::start(&strs(&args), dir.path());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("keys/ca.pem")).unwrap(),
        ca,
        "CA reused"
    );
    assert!(veil2.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_https_proxy_h1_h2_and_streaming() {
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let dir = tempfile::tempdir().unwrap();
    let mut proc = VeilProcess::start(&strs(&run_args(&mock)), dir.path());
    let ca = dir.path().join("keys/ca.pem");
    let proxy = format!("http://{}", proc.addr);
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    for http in ["--http1.1", "--http2"] {
        let out = Command::new("curl")
            .args(["-sS", "--fail-with-body", http, "-D", "-", "--cacert"])
            .arg(&ca)
            .env("HTTPS_PROXY", &proxy)
            .env_remove("NO_PROXY")
            .args([
                "-H",
                "content-type: application/json",
                "-H",
                "authorization: Bearer sk-test-CURLSECRET",
            ])
            .args(["-d", body, "https://api.openai.com/v1/chat/completions"])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "curl {http}: {text}{}\nveil:\n{}",
            String::from_utf8_lossy(&out.stderr),
            proc.stderr()
        );
        assert!(
            text.to_ascii_lowercase().contains("x-veil-request-id: "),
            "{text}"
        );
        assert!(text.contains("chatcmpl-mock123"), "{text}");
        if http == "--http2" {
            assert!(
                text.contains("HTTP/2 200"),
                "curl negotiated h2 with veil: {text}"
            );
        }
    }
    // Streaming: -N disables curl's buffering; every SSE event arrives.
    let out = Command::new("curl")
        .args(["-sS", "-N", "--cacert"])
        .arg(&ca)
        .env("HTTPS_PROXY", &proxy)
        .args(["-H", "content-type: application/json"])
        .args([
            "-d",
            r#"{"model":"gpt-4o-mini","stream":true,"messages":[]}"#,
        ])
        .arg("https://api.openai.com/v1/chat/completions")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("part2") && text.trim_end().ends_with("data: [DONE]"),
        "{text}"
    );
    assert!(
        !proc.stderr().contains("CURLSECRET"),
        "credential in veil's log"
    );
    assert!(proc.terminate().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_path_and_env_point_at_the_same_ca() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let dir = tempfile::tempdir().unwrap();
    // veil run creates the CA; `ca path` asks the running veil, then (stopped) reads --keys.
    let mut proc = VeilProcess::start(&strs(&run_args(&mock)), dir.path());
    let running = veil(&["ca", "path"], dir.path());
    assert!(running.status.success(), "{running:?}");
    assert!(proc.terminate().success());
    let out = veil(&["ca", "path"], dir.path());
    assert!(out.status.success(), "{out:?}");
    assert_eq!(out.stdout, running.stdout);
    let path = String::from_utf8(out.stdout).unwrap();
    let path = std::path::Path::new(path.trim());
    assert!(
        path.is_absolute() && path.ends_with("keys/ca.pem"),
        "{path:?}"
    );
    assert!(
        std::fs::read_to_string(path)
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let out = veil(&["env", "--listen", "127.0.0.1:9999"], dir.path());
    assert!(out.status.success());
    let env = String::from_utf8(out.stdout).unwrap();
    assert!(
        env.contains("export HTTPS_PROXY=http://127.0.0.1:9999"),
        "{env}"
    );
    assert!(
        env.contains(&format!("NODE_EXTRA_CA_CERTS={}", path.display())),
        "{env}"
    );
    let bundle = env
        .lines()
        .find_map(|l| l.strip_prefix("export SSL_CERT_FILE="))
        .unwrap();
    let bundle = std::fs::read_to_string(bundle).unwrap();
    let ca = std::fs::read_to_string(path).unwrap();
    assert!(
        bundle.ends_with(&ca),
        "the bundle carries veil's CA after the system roots"
    );
}

#[test]
fn bad_config_names_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("veil.toml"),
        "listen = \"127.0.0.1:0\"\ncapture_limt = \"1MiB\"\n",
    )
    .unwrap();
    let out = veil(&["run", "--config", "veil.toml"], dir.path());
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("veil.toml:2:1") && err.contains("capture_limt"),
        "{err}"
    );

    // The directory's veil.toml is read without --config: make it a valid one first.
    std::fs::write(dir.path().join("veil.toml"), "").unwrap();
    let out = veil(
        &["run", "--listen", "127.0.0.1:0", "--resolve", "nonsense"],
        dir.path(),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("resolve:") && err.contains("HOST:PORT:ADDR"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_veil_on_the_same_data_dir_fails_cleanly() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let dir = tempfile::tempdir().unwrap();
    let args = run_args(&mock);
    let mut first = VeilProcess::start(&strs(&args), dir.path());
    let out = veil(&["run", "--listen", "127.0.0.1:0"], dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("in use") && !err.contains("panicked"), "{err}");
    assert!(
        first.terminate().success(),
        "the first keeps running and stops cleanly"
    );
}

/// A first start that fails (its port taken, its rules file broken) writes no key: keys a
/// failed start left would be picked up by the next start in that dir, and with two first
/// starts at once, the one that failed used to replace the running one's master key.
#[test]
fn a_first_start_that_fails_leaves_no_key_behind() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    let left = || -> Vec<String> {
        std::fs::read_dir(&keys)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let out = veil(&["run", "--listen", &listen], dir.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("in use"), "{err}");
    assert_eq!(left(), Vec::<String>::new(), "{err}");

    std::fs::write(dir.path().join("broken.toml"), "version = 1\n[[fields\n").unwrap();
    let out = veil(
        &["run", "--listen", "127.0.0.1:0", "--rules", "broken.toml"],
        dir.path(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("broken.toml"),
        "{err}"
    );
    assert_eq!(left(), Vec::<String>::new(), "{err}");

    // The next start that runs makes them, and only them (no temp file left).
    let mut v = VeilProcess::start(&[], dir.path());
    let mut files = left();
    files.sort();
    assert_eq!(files, ["ca-bundle.pem", "ca.key", "ca.pem", "master.keys"]);
    assert!(v.terminate().success(), "{}", v.stderr());
}

/// Niceness of each thread of process `pid`, by thread name (`/proc/PID/task/*/stat`).
fn thread_niceness(pid: u32) -> Vec<(String, i32)> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        let name = stat[stat.find('(').unwrap() + 1..stat.rfind(')').unwrap()].to_string();
        // Fields after the name start at field 3 (state); niceness is field 19.
        let nice = stat[stat.rfind(')').unwrap() + 2..]
            .split(' ')
            .nth(16)
            .unwrap()
            .parse()
            .unwrap();
        out.push((name, nice));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recording_threads_run_below_forwarding_unless_audit_is_required() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let base = veil::os::thread_niceness();
    for (extra, recording) in [
        (vec![], base.max(veil::os::RECORDING_NICE)),
        (vec!["--audit", "required"], base),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let base_args = run_args(&mock);
        let mut args = strs(&base_args);
        args.extend(extra.iter().copied());
        let mut v = VeilProcess::start(&args, dir.path());
        // Threads name themselves and set their priority as they start: poll briefly.
        let check = |threads: &[(String, i32)]| -> Result<(), String> {
            let of = |prefix: &str| -> Vec<i32> {
                threads
                    .iter()
                    .filter(|(n, _)| n.starts_with(prefix))
                    .map(|(_, nice)| *nice)
                    .collect()
            };
            for name in ["veil-pipeline", "veil-export", "veil-seal-wri"] {
                let nice = of(name);
                if nice.is_empty() || nice.iter().any(|n| *n != recording) {
                    return Err(format!(
                        "{extra:?}: {name} runs at {nice:?}, want {recording}"
                    ));
                }
            }
            let forwarding = of("tokio-rt-worker");
            if forwarding.is_empty() || forwarding.iter().any(|n| *n != base) {
                return Err(format!(
                    "forwarding threads run at {forwarding:?}, want {base}"
                ));
            }
            Ok(())
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let threads = thread_niceness(v.child.id());
            match check(&threads) {
                Ok(()) => break,
                Err(e) if std::time::Instant::now() > deadline => {
                    panic!("{e}; threads: {threads:?}")
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
        assert!(v.terminate().success());
    }
}

#[test]
fn a_new_intercept_host_outside_the_ca_constraints_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    // A first `veil run` creates the CA for the default intercept list (`veil ca path` no
    // longer creates one: veil#13).
    let mut first = VeilProcess::start(&[], dir.path());
    assert!(first.terminate().success(), "{}", first.stderr());
    let out = veil(
        &[
            "run",
            "--listen",
            "127.0.0.1:0",
            "--intercept",
            "@defaults",
            "--intercept",
            "llm.internal.example",
        ],
        dir.path(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must refuse: {stderr}");
    assert!(
        stderr.contains("llm.internal.example") && stderr.contains("name constraints"),
        "{stderr}"
    );
    // With the defaults only, the same CA is fine (`ca path` checks it too).
    let out = veil(&["ca", "path"], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `veil run` turns on one jemalloc background thread, which gives freed pages back to the
/// kernel within a second or two (`os::return_freed_memory_promptly`); a `_RJEM_MALLOC_CONF`
/// in the environment is the operator's, and veil then sets nothing.
#[test]
fn veil_runs_the_allocators_purging_thread_unless_its_options_are_given() {
    for (conf, want) in [
        (None, cfg!(feature = "jemalloc")),
        (Some("narenas:2"), false),
    ] {
        let dir = tempfile::tempdir().unwrap();
        project(dir.path());
        let mut cmd = std::process::Command::new(veil_bin());
        cmd.current_dir(dir.path()).env_remove("_RJEM_MALLOC_CONF");
        if let Some(conf) = conf {
            cmd.env("_RJEM_MALLOC_CONF", conf);
        }
        let mut v = VeilProcess::spawn(&mut cmd, &[]);
        // The thread exists before veil listens, but names itself (`jemalloc_bg_thd`) once
        // it runs: poll briefly for the name, then require exactly one such thread, or none.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let names = loop {
            let names: Vec<String> = thread_niceness(v.child.id())
                .into_iter()
                .map(|(name, _)| name)
                .collect();
            let found = names.iter().any(|n| n == "jemalloc_bg_thd");
            if found || !want || std::time::Instant::now() > deadline {
                break names;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let purging = names.iter().filter(|n| *n == "jemalloc_bg_thd").count();
        assert_eq!(
            purging,
            usize::from(want),
            "_RJEM_MALLOC_CONF={conf:?}: threads {names:?}"
        );
        assert!(v.terminate().success(), "{}", v.stderr());
    }
}
