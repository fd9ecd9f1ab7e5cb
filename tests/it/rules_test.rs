//! `veil rules test` run as the real binary: the preview on stdout, the report on stderr, and
//! no matched secret in the report unless `--show-matches` asks for it (veil#11).

use std::io::Write;
use std::process::{Command, Stdio};

use crate::support::process::veil_bin;

/// A 51-character OpenAI-style key: long enough to be shortened, not masked whole.
const SECRET: &str = "sk-proj-4f9Qz8XwLmN2vB7kR1tY6uJ3hG5dS0aPcE9iO2lKABCD";

/// Runs `veil rules test ARGS` in a fresh directory (so no keys: a throwaway key) with
/// `stdin` piped in; returns (status, stdout, stderr).
fn rules_test(args: &[&str], stdin: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, include_str!("../../rules/default.toml")).unwrap();
    let mut child = Command::new(veil_bin())
        .args(["rules", "test"])
        .arg(&rules)
        .args(args)
        .current_dir(dir.path())
        .env_remove("VEIL_MASTER_KEY")
        // Default keys would be the user's $XDG_DATA_HOME/veil/keys: keep them in the fresh dir.
        .env("XDG_DATA_HOME", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("veil runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

fn request() -> String {
    serde_json::json!({
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": format!("my key is {SECRET}, mail bob@example.com")}],
    })
    .to_string()
}

#[test]
fn rules_test_prints_the_record_on_stdout_and_a_shortened_report_on_stderr() {
    let (ok, stdout, stderr) = rules_test(&[], &request());
    assert!(ok, "{stderr}");
    // stdout is the record's content, and nothing else: it parses as one JSON document.
    let record: serde_json::Value = serde_json::from_str(&stdout).expect(&stdout);
    let content = record["input_messages"][0]["parts"][0]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(
        !content.contains(SECRET) && !content.contains("bob@example.com"),
        "{content}"
    );
    assert!(content.contains("[EMAIL]"), "{content}");
    assert!(
        !stdout.contains("detector") && !stdout.contains("scope:"),
        "{stdout}"
    );
    // stderr holds the report, with matched values shortened, never whole.
    assert!(
        stderr.contains("scope:") && stderr.contains("detector"),
        "{stderr}"
    );
    assert!(
        stderr.contains("input_messages[0].parts[0].content"),
        "{stderr}"
    );
    assert!(stderr.contains("sk-pr…ABCD"), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");
    assert!(!stderr.contains("bob@example.com"), "{stderr}");
}

#[test]
fn rules_test_show_matches_prints_matched_values_whole() {
    let (ok, stdout, stderr) = rules_test(&["--show-matches"], &request());
    assert!(ok, "{stderr}");
    assert!(stderr.contains(SECRET), "{stderr}");
    assert!(stderr.contains("bob@example.com"), "{stderr}");
    assert!(!stdout.contains(SECRET), "{stdout}");
}

#[test]
fn rules_test_raw_redacts_the_document_as_given() {
    let (ok, stdout, stderr) = rules_test(&["--raw"], &request());
    assert!(ok, "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect(&stdout);
    // The raw body keeps its own shape (`messages`, not the record's `input_messages`).
    let content = doc["messages"][0]["content"].as_str().unwrap();
    assert!(
        content.contains("[EMAIL]") && !content.contains(SECRET),
        "{content}"
    );
    assert!(stderr.contains("$.messages[0].content"), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");
}

#[test]
fn rules_test_with_a_response_previews_the_output_messages() {
    let dir = tempfile::tempdir().unwrap();
    let response = dir.path().join("response.json");
    std::fs::write(
        &response,
        serde_json::json!({
            "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "write to carol@example.com"}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10},
        })
        .to_string(),
    )
    .unwrap();
    let (ok, stdout, stderr) = rules_test(&["--response", response.to_str().unwrap()], &request());
    assert!(ok, "{stderr}");
    let record: serde_json::Value = serde_json::from_str(&stdout).expect(&stdout);
    let out = record["output_messages"][0]["parts"][0]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(out, "write to [EMAIL]");
    assert!(!stderr.contains("carol@example.com"), "{stderr}");
}
