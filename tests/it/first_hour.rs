//! The operator's first hour through the binary (veil#13): the start and stop lines say in
//! words what veil does, logs carry no colour off a terminal or under `NO_COLOR`, a config
//! file takes one value where a flag takes many, and `veil show ID` prints one record.

use std::path::Path;
use std::process::Command;

use crate::support::ledger::{text, wait_for_rows};
use crate::support::mock_llm::{Alpn, Mock};
use crate::support::process::{VeilProcess, curl_chat, free_port, resolve_args, veil, veil_bin};

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// What Rust's `Debug` prints and no operator line should: `Some(…)`, `None`, lists and
/// struct braces, quoted strings.
fn assert_no_debug(line: &str) {
    for debug in ["Some(", "None", "[", "{", "\"", "HostPattern", "Duration"] {
        assert!(!line.contains(debug), "Debug output {debug:?} in {line:?}");
    }
}

/// The lines from the one that carries `first` to the one that carries `last`.
fn lines_between<'a>(log: &'a str, first: &str, last: &str) -> Vec<&'a str> {
    let start = log
        .lines()
        .position(|l| l.contains(first))
        .unwrap_or_else(|| panic!("no {first:?} line in:\n{log}"));
    let end = log
        .lines()
        .position(|l| l.contains(last))
        .unwrap_or_else(|| panic!("no {last:?} line in:\n{log}"));
    log.lines().skip(start).take(end + 1 - start).collect()
}

// See: veil#13. The start line printed `Some(…)` and lists in Debug form, and said nothing of
// where records went.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_and_stop_lines_say_what_veil_does_in_words() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    // The file form of the list keys, with one value each (veil#13: a single value was refused).
    std::fs::write(
        cwd.join("veil.toml"),
        format!(
            "upstream_ca = \"{}\"\nretention = \"30d\"\nintercept = \"api.openai.com\"\n",
            mock.ca_path.display()
        ),
    )
    .unwrap();
    let mut args = resolve_args(mock.addr);
    args.extend(["--config".into(), "veil.toml".into()]);
    args.extend(["--admin-listen".into(), "127.0.0.1:0".into()]);
    let mut proc = VeilProcess::start(&strs(&args), cwd);
    let (_id, _) = curl_chat(&proc, cwd, r#"{"model":"gpt-4o-mini","messages":[]}"#, &[]);
    wait_for_rows(cwd, 1);
    assert!(proc.terminate().success());
    let log = proc.stderr();
    let start = lines_between(&log, "veil is running", "admin API:");
    for line in &start {
        assert_no_debug(line);
    }
    let start = start.join("\n");
    let cwd = cwd.canonicalize().unwrap();
    let data = cwd.join("data");
    for want in [
        format!("HTTPS_PROXY=http://{}", proc.addr),
        format!("trust the CA {}", cwd.join("keys/ca.pem").display()),
        "intercepting 1 host patterns (TLS terminated, recorded): api.openai.com;".into(),
        "rules: the built-in default profile".into(),
        "digest ".into(),
        format!(
            "records go to the ledger {} (content kept 30 days, rows 400 days, at most 2 GiB)",
            data.join("ledger.db").display()
        ),
        "OTLP collector: none; records files: off".into(),
        format!(
            "sealed exchanges: {}, purged after 30 days",
            data.join("sealed").display()
        ),
        "admin API: http://127.0.0.1:".into(),
    ] {
        assert!(start.contains(&want), "{want:?} missing from:\n{start}");
    }
    let stop = log
        .lines()
        .find(|l| l.contains("veil stopped"))
        .unwrap_or_else(|| panic!("no stop line in:\n{log}"));
    assert_no_debug(stop);
    assert!(
        stop.contains(
            "Exchanges intercepted: 1, made into records: 1, dropped before recording: 0"
        ) && stop.contains(&format!(
            "ledger rows written: 1 (in {})",
            data.join("ledger.db").display()
        )),
        "{stop}"
    );
}

// See: veil#13. Log lines piped to a file carried ANSI escapes (`\x1b[32m INFO`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_off_a_terminal_carry_no_colour() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let dir = tempfile::tempdir().unwrap();
    let mut args = resolve_args(mock.addr);
    args.extend(["--upstream-ca".into(), mock.ca_path.display().to_string()]);
    let mut proc = VeilProcess::start(&strs(&args), dir.path());
    assert!(proc.terminate().success());
    let log = proc.stderr();
    assert!(log.contains(" INFO "), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape in piped stderr:\n{log:?}"
    );
}

/// `veil run` on a port that is taken, under a pseudo-terminal (`script(1)`): it logs its
/// first INFO line, then fails to bind. Returns everything it wrote to the terminal, or
/// `None` (with a notice; a panic under `CI=true`) without `script`.
fn run_on_a_terminal(cwd: &Path, no_color: Option<&str>) -> Option<String> {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cmd = format!(
        "{} run --listen {}",
        veil_bin().display(),
        taken.local_addr().unwrap()
    );
    let mut script = Command::new("script");
    script
        .args(["-qec", &cmd, "/dev/null"])
        .current_dir(cwd)
        .env("VEIL_LOG", "info")
        .env_remove("NO_COLOR");
    if let Some(v) = no_color {
        script.env("NO_COLOR", v);
    }
    let out = match script.output() {
        Ok(out) => out,
        Err(e) => {
            let msg =
                format!("cannot run script(1) for a pseudo-terminal: {e}; this test did NOT run");
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
            eprintln!("NOTICE: {msg}");
            return None;
        }
    };
    let tty = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "the port is taken: {tty}");
    assert!(tty.contains("INFO"), "veil logged before failing: {tty:?}");
    Some(tty)
}

// See: veil#13. NO_COLOR (https://no-color.org) turns colour off even on a terminal; on a
// terminal without it, colour stays (so the first assertion can fail).
#[test]
fn no_color_turns_colour_off_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let Some(coloured) = run_on_a_terminal(dir.path(), None) else {
        return;
    };
    assert!(
        coloured.contains('\u{1b}'),
        "a terminal gets colour: {coloured:?}"
    );
    let plain = run_on_a_terminal(dir.path(), Some("1")).unwrap();
    assert!(!plain.contains('\u{1b}'), "NO_COLOR=1: {plain:?}");
    // An empty NO_COLOR is as if unset (no-color.org).
    let empty = run_on_a_terminal(dir.path(), Some("")).unwrap();
    assert!(empty.contains('\u{1b}'), "NO_COLOR= (empty): {empty:?}");
}

// See: veil#13. There was no way to read one exchange's record but SQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_prints_one_redacted_record_as_text_or_json() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let dir = tempfile::tempdir().unwrap();
    let cwd = dir.path();
    let mut args = resolve_args(mock.addr);
    args.extend(["--upstream-ca".into(), mock.ca_path.display().to_string()]);
    let mut proc = VeilProcess::start(&strs(&args), cwd);
    let body = r#"{"model":"gpt-4o-mini","user":"alice","messages":[{"role":"user","content":"mail carol@example.com now"}]}"#;
    let (id, _) = curl_chat(&proc, cwd, body, &["-H", "x-veil-feature: first-hour"]);
    wait_for_rows(cwd, 1);

    let out = veil(&["show", &id], cwd);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.starts_with(&format!("# exchange {id}")), "{stdout}");
    for want in [
        "request_model ",
        "gpt-4o-mini",
        "feature ",
        "first-hour",
        "status ",
        "200",
        "input messages:\n  user: mail [EMAIL] now",
        "output messages:\n  assistant",
    ] {
        assert!(stdout.contains(want), "{want:?} missing from:\n{stdout}");
    }
    assert!(!stdout.contains("carol@example.com"), "{stdout}");
    assert!(
        !stdout.contains("alice"),
        "the user is a pseudonym: {stdout}"
    );

    let out = veil(&["show", &id, "--format", "json"], cwd);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["request_id"], id.as_str());
    assert_eq!(v["feature"], "first-hour");
    assert_eq!(v["status"], 200);
    assert!(v["user"].as_str().unwrap().starts_with("u_"), "{v}");
    assert_eq!(v["content"]["input_messages"][0]["role"], "user", "{v}");
    assert_eq!(
        v["content"]["input_messages"][0]["parts"][0]["content"],
        "mail [EMAIL] now"
    );
    assert!(
        v["ttfc_us"].is_null() || v["ttfc_us"].is_i64(),
        "every column, nulls too: {v}"
    );

    // An id the ledger does not hold: a clear error, exit 1, nothing on stdout.
    let out = veil(&["show", "0190aaaa-0000-7000-8000-000000000000"], cwd);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains("no exchange 0190aaaa-0000-7000-8000-000000000000 in the ledger"),
        "{stderr}"
    );
    assert!(!stderr.contains("whole request id"), "{stderr}");
    // A prefix, as a table shows it: the error says a whole id is needed.
    let out = veil(&["show", &id[..8]], cwd);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("give the whole request id"), "{stderr}");
    assert!(proc.terminate().success());

    // No ledger at all (another directory): exit 1, naming the file and `--data`.
    let empty = tempfile::tempdir().unwrap();
    let out = veil(&["show", &id], empty.path());
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("no ledger at") && stderr.contains("--data"),
        "{stderr}"
    );
    // A bad argument is clap's exit 2.
    let out = veil(&["show", &id, "--format", "csv"], cwd);
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
}

// See: veil#13. A single value where the flag repeats: `allow_ports = 8443` and
// `upstream_ca = "FILE"` work end to end; a wrong type names the file, line and key.
#[test]
fn a_list_key_of_the_wrong_type_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::write(
        dir.path().join("veil.toml"),
        format!("listen = \"127.0.0.1:{port}\"\nallow_ports = \"443\"\n"),
    )
    .unwrap();
    let out = veil(&["run", "--config", "veil.toml"], dir.path());
    let (_, stderr) = text(&out);
    assert!(!out.status.success());
    assert!(stderr.contains("veil.toml:2:"), "{stderr}");
}

// See: veil#13. A project directory's `veil.toml` is its config: `veil run` and the operator
// commands run there read it without `--config` (here a bad line proves it was read).
#[test]
fn a_project_dirs_veil_toml_is_read_without_config() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("veil.toml"), "allow_ports = \"443\"\n").unwrap();
    for args in [&["run"][..], &["ca", "path"][..]] {
        let out = veil(args, dir.path());
        let (_, stderr) = text(&out);
        assert!(!out.status.success(), "veil {args:?}: {stderr}");
        assert!(stderr.contains("veil.toml:1:"), "veil {args:?}: {stderr}");
    }
}
