//! `veil export` over a real ledger file: filters, formats, feedback, skips, manifests.

use std::collections::BTreeSet;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::manifest::{self, Named};
use super::*;
use crate::ledger::schema;
use crate::ledger::testing::{ledger, openai_chat, record, upstream_error};
use crate::record::Record;

fn send(l: &crate::ledger::Ledger, records: Vec<Record>) {
    let (tx, rx) = std::sync::mpsc::channel();
    l.handle()
        .send_blocking(records, Some(Box::new(move |ok| tx.send(ok).unwrap())));
    assert!(rx.recv().unwrap(), "committed");
}

fn at(secs_after: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000 + secs_after)
}

/// A chat record with one user question and one answer.
fn chat(id: &str, start: u64) -> Record {
    let mut r = openai_chat(id);
    r.start = at(start);
    r
}

fn feedback(
    path: &std::path::Path,
    id: &str,
    request: &str,
    score: Option<f64>,
    label: Option<&str>,
) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute(
        "INSERT INTO feedback (id, request_id, scope, at, name, score, label, comment)
         VALUES (?1, ?2, 'exchange', '2026-11-29T12:00:00.000000Z', 'user_rating', ?3, ?4, 'ok')",
        rusqlite::params![id, request, score, label],
    )
    .unwrap();
}

fn ids(path: &std::path::Path, sel: &Selection) -> BTreeSet<String> {
    let conn = schema::open_read_only(path).unwrap();
    let mut out = Vec::new();
    let s = export(&conn, sel, Format::Jsonl, &mut out, &mut |_| {}).unwrap();
    let text = String::from_utf8(out).unwrap();
    let from_lines: BTreeSet<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["request_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(
        from_lines,
        s.request_ids.iter().cloned().collect(),
        "the summary lists what was written"
    );
    assert!(count(&conn, sel).unwrap() >= s.written);
    from_lines
}

fn set(ids: &[&str]) -> BTreeSet<String> {
    ids.iter().map(|s| s.to_string()).collect()
}

#[test]
fn each_filter_selects_exactly_the_expected_request_ids() {
    let (_d, path, l) = ledger();
    let mut billing = chat("a-billing", 0);
    billing.feature = Some("billing".into());
    let mut long = chat("b-length", 100);
    long.finish_reasons = vec!["stop".into(), "length".into()];
    long.request_model = Some("gpt-4o".into());
    long.response_model = Some("gpt-4o-2024-08-06".into());
    let mut aborted = chat("c-aborted", 200);
    aborted.outcome = crate::exchange::OutcomeKind::ClientAborted;
    aborted.error_type = Some("client_aborted".into());
    let mut failed = upstream_error("d-error");
    failed.start = at(300);
    // An error with content (a 400 whose request the rules kept): selectable by outcome.
    failed.input_messages = chat("x", 0).input_messages;
    failed.output_messages = chat("x", 0).output_messages;
    let plain = chat("e-plain", 400);
    let forgotten = chat("f-forgotten", 500);
    send(&l, vec![billing, long, aborted, failed, plain, forgotten]);
    feedback(&path, "fb_1", "a-billing", Some(-1.0), None);
    feedback(&path, "fb_2", "b-length", None, Some("Thumbs_Up"));
    feedback(&path, "fb_3", "e-plain", Some(0.0), Some("bad"));
    feedback(&path, "fb_4", "f-forgotten", Some(-1.0), None);
    crate::ledger::erase::forget_ids(&path, &["f-forgotten".to_string()]).unwrap();

    let all = set(&["a-billing", "b-length", "c-aborted", "d-error", "e-plain"]);
    assert_eq!(
        ids(&path, &Selection::default()),
        all,
        "forgotten never exported"
    );
    let with = |f: &dyn Fn(&mut Selection)| {
        let mut s = Selection::default();
        f(&mut s);
        ids(&path, &s)
    };
    assert_eq!(
        with(&|s| s.since = Some(at(200))),
        set(&["c-aborted", "d-error", "e-plain"])
    );
    assert_eq!(
        with(&|s| s.until = Some(at(200))),
        set(&["a-billing", "b-length"])
    );
    assert_eq!(
        with(&|s| s.feature = Some("billing".into())),
        set(&["a-billing"])
    );
    assert_eq!(
        with(&|s| s.model = Some("gpt-4o".into())),
        set(&["b-length"]),
        "request model"
    );
    assert_eq!(
        with(&|s| s.model = Some("gpt-4o-2024-08-06".into())),
        set(&["b-length"]),
        "response model"
    );
    assert_eq!(
        with(&|s| s.finish_reason = Some("length".into())),
        set(&["b-length"])
    );
    assert_eq!(
        with(&|s| s.finish_reason = Some("len".into())),
        set(&[]),
        "whole reasons only"
    );
    assert_eq!(
        with(&|s| s.feedback = Some(FeedbackFilter::Negative)),
        set(&["a-billing", "e-plain"]),
        "score < 0 or label bad"
    );
    assert_eq!(
        with(&|s| s.feedback = Some(FeedbackFilter::Positive)),
        set(&["b-length"]),
        "label thumbs_up, any case"
    );
    assert_eq!(
        with(&|s| s.feedback = Some(FeedbackFilter::Any)),
        set(&["a-billing", "b-length", "e-plain"])
    );
    assert_eq!(
        with(&|s| s.feedback = Some(FeedbackFilter::None)),
        set(&["c-aborted", "d-error"])
    );
    assert_eq!(
        with(&|s| s.outcome = Some(OutcomeFilter::Ok)),
        set(&["a-billing", "b-length", "e-plain"])
    );
    assert_eq!(
        with(&|s| s.outcome = Some(OutcomeFilter::Error)),
        set(&["d-error"])
    );
    assert_eq!(
        with(&|s| s.outcome = Some(OutcomeFilter::Aborted)),
        set(&["c-aborted"])
    );
    assert_eq!(
        with(&|s| s.limit = Some(2)),
        set(&["a-billing", "b-length"]),
        "oldest first"
    );
    assert_eq!(
        with(&|s| {
            s.feedback = Some(FeedbackFilter::Negative);
            s.since = Some(at(100));
        }),
        set(&["e-plain"]),
        "conditions combine"
    );
}

#[test]
fn jsonl_lines_carry_the_metadata_and_feedback() {
    let (_d, path, l) = ledger();
    send(&l, vec![chat("r1", 0)]);
    feedback(&path, "fb_a", "r1", Some(1.0), Some("thumbs_up"));
    let conn = schema::open_read_only(&path).unwrap();
    let mut out = Vec::new();
    export(
        &conn,
        &Selection::default(),
        Format::Jsonl,
        &mut out,
        &mut |_| {},
    )
    .unwrap();
    let v: Value = serde_json::from_slice(out.strip_suffix(b"\n").unwrap()).unwrap();
    assert_eq!(v["request_id"], "r1");
    assert_eq!(v["model"], "gpt-4o-mini-2024-07-18");
    assert_eq!(v["feature"], "support");
    assert_eq!(v["input_tokens"], 52);
    assert_eq!(v["cost_usd"], 0.0000192);
    assert_eq!(v["outcome"], "complete");
    assert_eq!(v["finish_reasons"], json!(["stop"]));
    assert_eq!(v["rules_digest"], "b3:abc");
    assert_eq!(v["feedback"][0]["id"], "fb_a");
    assert_eq!(v["feedback"][0]["label"], "thumbs_up");
    assert_eq!(
        v["output_messages"][0]["parts"][0]["content"],
        "Link sent to [EMAIL_1]."
    );
}

/// The fine-tuning chat format, as OpenAI documents it: every message has a known role;
/// `content` is a string where present; assistant tool calls are
/// `{"id","type":"function","function":{"name","arguments"(JSON text)}}`; every `tool`
/// message answers a call of the assistant message before it; the last message is the
/// assistant's, with content or tool calls.
pub(crate) fn validate_chat(line: &Value) -> Result<(), String> {
    let obj = line.as_object().ok_or("not an object")?;
    if obj.len() != 1 {
        return Err(format!("keys other than messages: {obj:?}"));
    }
    let messages = obj["messages"].as_array().ok_or("messages not an array")?;
    let mut open_calls: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let role = m["role"].as_str().ok_or(format!("message {i}: no role"))?;
        if let Some(c) = m.get("content")
            && !c.is_string()
        {
            return Err(format!("message {i}: content not a string"));
        }
        match role {
            "system" | "user" => {
                if !m["content"].is_string() {
                    return Err(format!("message {i}: {role} without content"));
                }
                open_calls.clear();
            }
            "assistant" => {
                open_calls.clear();
                if m.get("content").is_none() && m.get("tool_calls").is_none() {
                    return Err(format!("message {i}: empty assistant"));
                }
                for c in m
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let id = c["id"]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .ok_or("call id")?;
                    if c["type"] != "function" {
                        return Err("call type".into());
                    }
                    c["function"]["name"]
                        .as_str()
                        .filter(|s| !s.is_empty())
                        .ok_or("call name")?;
                    let args = c["function"]["arguments"]
                        .as_str()
                        .ok_or("arguments not text")?;
                    serde_json::from_str::<Value>(args).map_err(|e| format!("arguments: {e}"))?;
                    open_calls.push(id.to_string());
                }
            }
            "tool" => {
                let id = m["tool_call_id"]
                    .as_str()
                    .ok_or("tool without tool_call_id")?;
                if !open_calls.iter().any(|c| c == id) {
                    return Err(format!("message {i}: tool result for unknown call {id}"));
                }
                if !m["content"].is_string() {
                    return Err(format!("message {i}: tool without content"));
                }
            }
            other => return Err(format!("message {i}: role {other}")),
        }
    }
    match messages.last() {
        Some(m) if m["role"] == "assistant" => Ok(()),
        _ => Err("last message is not the assistant's".into()),
    }
}

fn content(id: &str, start: u64, sys: Option<Value>, input: Value, output: Value) -> Record {
    let mut r = record(id);
    r.start = at(start);
    r.system_instructions = sys;
    r.input_messages = Some(input);
    r.output_messages = Some(output);
    r
}

#[test]
fn openai_chat_lines_validate_and_unfit_exchanges_are_skipped_by_reason() {
    let (_d, path, l) = ledger();
    let answer =
        |parts: Value| json!([{"role": "assistant", "parts": parts, "finish_reason": "stop"}]);
    let text = |t: &str| json!({"type": "text", "content": t});
    let records = vec![
        // OpenAI shape: an earlier tool call answered by a `tool` message.
        content(
            "t-openai",
            0,
            None,
            json!([
                {"role": "system", "parts": [text("be brief")]},
                {"role": "user", "parts": [text("weather in [CITY_1]?")]},
                {"role": "assistant", "parts": [{"type": "tool_call", "id": "call_1", "name": "weather", "arguments": {"city": "[CITY_1]"}}]},
                {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1", "response": {"temp": 21}}]}
            ]),
            answer(json!([text("21 degrees.")])),
        ),
        // Anthropic shape: system instructions apart, tool results inside a user message,
        // reasoning in the answer, arguments as raw text.
        content(
            "t-anthropic",
            1,
            Some(json!([text("You support [ORG_1].")])),
            json!([
                {"role": "user", "parts": [text("time?")]},
                {"role": "assistant", "parts": [{"type": "tool_call", "id": "tu_1", "name": "clock", "arguments": "{\"tz\":\"UTC\"}"}]},
                {"role": "user", "parts": [{"type": "tool_call_response", "id": "tu_1", "response": "12:00"}, text("thanks")]}
            ]),
            answer(json!([{"type": "reasoning", "content": "easy"}, text("Noon.")])),
        ),
        // Gemini shape: no call ids; the answer is itself a tool call.
        content(
            "t-gemini",
            2,
            None,
            json!([
                {"role": "user", "parts": [text("lookup")]},
                {"role": "assistant", "parts": [{"type": "tool_call", "name": "find"}]},
                {"role": "tool", "parts": [{"type": "tool_call_response", "response": "x"}]}
            ]),
            answer(json!([{"type": "tool_call", "name": "find", "arguments": {"q": 2}}])),
        ),
        // Skipped: an image veil never kept.
        content(
            "s-media",
            3,
            None,
            json!([{"role": "user", "parts": [{"type": "blob", "modality": "image"}, text("what is this")]}]),
            answer(json!([text("a cat")])),
        ),
        // Skipped: no answer.
        content(
            "s-noanswer",
            4,
            None,
            json!([{"role": "user", "parts": [text("hi")]}]),
            json!([]),
        ),
        // Skipped: a tool result no call asked for.
        content(
            "s-orphan",
            5,
            None,
            json!([{"role": "user", "parts": [text("q")]}, {"role": "tool", "parts": [{"type": "tool_call_response", "id": "nope", "response": "r"}]}]),
            answer(json!([text("a")])),
        ),
        // Skipped: content a rule replaced whole.
        content(
            "s-shape",
            6,
            None,
            json!("[REDACTED]"),
            answer(json!([text("a")])),
        ),
    ];
    let mut no_content = upstream_error("s-nocontent");
    no_content.start = at(7);
    let mut all = records;
    all.push(no_content);
    send(&l, all);

    let conn = schema::open_read_only(&path).unwrap();
    let mut out = Vec::new();
    let s = export(
        &conn,
        &Selection::default(),
        Format::OpenAiChat,
        &mut out,
        &mut |_| {},
    )
    .unwrap();
    let lines: Vec<Value> = String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(s.request_ids, ["t-openai", "t-anthropic", "t-gemini"]);
    assert_eq!(lines.len(), 3);
    for (l, id) in lines.iter().zip(&s.request_ids) {
        validate_chat(l).unwrap_or_else(|e| panic!("{id}: {e}: {l}"));
    }
    let skipped: Vec<(&str, u64)> = s.skipped.iter().map(|(k, v)| (k.name(), *v)).collect();
    assert_eq!(
        skipped,
        [
            ("no_content", 1),
            ("no_answer", 1),
            ("media", 1),
            ("not_genai_messages", 1),
            ("tool_call_mismatch", 1)
        ]
    );
    // The shapes in detail.
    let m = &lines[0]["messages"];
    assert_eq!(m[0], json!({"role": "system", "content": "be brief"}));
    assert_eq!(
        m[2]["tool_calls"][0]["function"]["arguments"],
        "{\"city\":\"[CITY_1]\"}"
    );
    assert_eq!(
        m[3],
        json!({"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\":21}"})
    );
    assert_eq!(m[4], json!({"role": "assistant", "content": "21 degrees."}));
    let m = &lines[1]["messages"];
    assert_eq!(m[0]["role"], "system");
    assert_eq!(
        m[3],
        json!({"role": "tool", "tool_call_id": "tu_1", "content": "12:00"})
    );
    assert_eq!(m[4], json!({"role": "user", "content": "thanks"}));
    assert_eq!(
        m[5],
        json!({"role": "assistant", "content": "Noon."}),
        "reasoning left out"
    );
    let m = &lines[2]["messages"];
    assert_eq!(m[1]["tool_calls"][0]["id"], "call_1", "made-up id");
    assert_eq!(m[2]["tool_call_id"], "call_1", "matched in order");
    assert_eq!(m[3]["tool_calls"][0]["function"]["arguments"], "{\"q\":2}");

    // The validator itself refuses what the format forbids.
    assert!(validate_chat(&json!({"messages": [{"role": "user", "content": "q"}]})).is_err());
    assert!(validate_chat(&json!({"messages": [{"role": "user", "content": "q"}, {"role": "tool", "tool_call_id": "x", "content": "r"}, {"role": "assistant", "content": "a"}]})).is_err());
    assert!(validate_chat(&json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": {}}}]}]})).is_err());

    // Evals: the answer's text as ideal; a tool-call answer has none and is skipped.
    let mut out = Vec::new();
    let s = export(
        &conn,
        &Selection::default(),
        Format::OpenAiEvals,
        &mut out,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(s.request_ids, ["t-openai", "t-anthropic"]);
    assert_eq!(s.skipped.get(&Skip::EmptyAnswer), Some(&1));
    let first: Value =
        serde_json::from_str(String::from_utf8(out).unwrap().lines().next().unwrap()).unwrap();
    assert_eq!(first["ideal"], "21 degrees.");
    assert_eq!(first["input"].as_array().unwrap().len(), 4);
    assert_eq!(
        first["input"][1],
        json!({"role": "user", "content": "weather in [CITY_1]?"})
    );
}

#[test]
fn the_negative_and_positive_definitions() {
    assert!(is_negative(Some(-0.5), None));
    assert!(is_negative(None, Some("THUMBS_DOWN")));
    assert!(
        is_negative(Some(1.0), Some("bad")),
        "a bad label wins over nothing"
    );
    assert!(!is_negative(Some(0.0), Some("meh")));
    assert!(is_positive(Some(0.1), None));
    assert!(is_positive(None, Some("good")));
    assert!(!is_positive(Some(0.0), None));
    assert!(!is_positive(Some(-1.0), Some("thumbs_down")));
}

#[test]
fn manifests_are_private_registered_and_found_by_the_ids_they_name() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = dir.path().join("set.jsonl");
    std::fs::write(&out, "").unwrap();
    let m = |output: Option<std::path::PathBuf>, ids: &[&str]| manifest::Manifest {
        format: "jsonl".into(),
        source: "ledger".into(),
        filters: Selection::default().to_json(),
        rules_digests: vec!["b3:abc".into()],
        rules_file: None,
        count: ids.len() as u64,
        skipped: json!({}),
        request_ids: ids.iter().map(|s| s.to_string()).collect(),
        created: SystemTime::now(),
        output,
    };
    let beside = manifest::write(&m(Some(out.clone()), &["r1", "r2"]), &data).unwrap();
    assert_eq!(beside, manifest::beside(&out));
    let stdout = manifest::write(&m(None, &["r2", "r3"]), &data).unwrap();
    assert!(
        stdout.starts_with(data.join(manifest::DIR)),
        "{}",
        stdout.display()
    );
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&beside), 0o600);
    assert_eq!(mode(&stdout), 0o600);
    assert_eq!(mode(&data.join(manifest::DIR)), 0o700);
    assert_eq!(
        mode(&data.join(manifest::DIR).join(manifest::REGISTRY)),
        0o600
    );
    let doc: Value = serde_json::from_slice(&std::fs::read(&beside).unwrap()).unwrap();
    assert_eq!(doc["request_ids"], json!(["r1", "r2"]));
    assert_eq!(doc["rules_digests"], json!(["b3:abc"]));
    assert_eq!(doc["veil_version"], env!("CARGO_PKG_VERSION"));

    let found = manifest::naming(&data, &["r2".into(), "zz".into()]).unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        matches!(&found[0], Named::Ids { manifest, ids, .. } if *manifest == beside && ids == &["r2"])
    );
    assert!(matches!(&found[1], Named::Ids { manifest, output: None, .. } if *manifest == stdout));
    assert!(manifest::naming(&data, &["zz".into()]).unwrap().is_empty());
    // A manifest deleted after the export: said, not silently dropped.
    std::fs::remove_file(&stdout).unwrap();
    let found = manifest::naming(&data, &["r1".into()]).unwrap();
    assert_eq!(found.len(), 2);
    assert!(matches!(&found[1], Named::Unreadable { manifest, .. } if *manifest == stdout));
    // No registry at all: nothing named.
    assert!(
        manifest::naming(&dir.path().join("nowhere"), &["r1".into()])
            .unwrap()
            .is_empty()
    );
}
