//! Tests of the compiled rules: format, errors, JSON walk, profiles, properties, corpus.

use super::*;
use crate::keys::{KeyId, MasterKey};
use serde_json::json;

const DEFAULT: &str = include_str!("../../rules/default.toml");
const STRICT: &str = include_str!("../../rules/strict.toml");
const ENCRYPTED: &str = include_str!("../../rules/encrypted.toml");

fn keys() -> Keyring {
    Keyring::single(MasterKey::from_bytes(KeyId(1), [42; 32]))
}

fn compile(text: &str) -> CompiledRules {
    CompiledRules::from_str(text, &keys()).unwrap_or_else(|e| panic!("{e}"))
}

fn err(text: &str) -> RulesError {
    CompiledRules::from_str(text, &keys()).expect_err("rules should be refused")
}

// === the object is shareable ===

#[test]
fn compiled_rules_are_send_sync_and_debug_hides_keys() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CompiledRules>();
    let r = compile(DEFAULT);
    let dbg = format!("{r:?}");
    assert!(dbg.contains("<redacted>"));
    assert!(!dbg.contains("42, 42"));
}

// === the memo of clean short strings ===

#[test]
fn veils_own_vocabulary_is_remembered_content_and_matches_never_are() {
    let r = compile(DEFAULT);
    let scope = r.base_scope();
    let knows = |s: &str| scope.clean.knows(s);
    let messages = json!([
        {"role": "user", "parts": [{"type": "text", "content": "hi there"}]},
        {"role": "assistant", "parts": [
            {"type": "tool_call", "name": "lookup", "arguments": {"city": "Paris"}}
        ], "finish_reason": "tool_call"},
        {"role": "user", "bo@example.com": "x", "parts": []}
    ]);
    for _ in 0..2 {
        let mut doc = messages.clone();
        let c = r.redact_json(&mut doc, Target::InputMessages, scope);
        // Same output every time: the memo answers only for what a scan found clean.
        assert_eq!(c.get("EMAIL"), 1);
        assert_eq!(doc[2]["[EMAIL]"], "x");
        assert_eq!(doc[0]["parts"][0]["content"], "hi there");
    }
    // Field names and enum values of the messages veil writes are remembered...
    for clean in [
        "role",
        "parts",
        "type",
        "content",
        "name",
        "arguments",
        "user",
        "text",
    ] {
        assert!(knows(clean), "{clean}");
    }
    assert!(knows("tool_call") && knows("finish_reason") && knows("assistant"));
    // ...content, tool arguments' keys and values, a tool's name and a match never are.
    for never in ["hi there", "city", "Paris", "lookup", "bo@example.com", "x"] {
        assert!(!knows(never), "{never}");
    }
    // Outside the messages trees nothing is remembered: a request's own fields, free text.
    let mut req = json!({"metadata": {"team": "growth"}});
    r.redact_json(&mut req, Target::Request, scope);
    assert!(!knows("metadata") && !knows("team") && !knows("growth"));
    assert_eq!(r.redact_text("plain words", scope).0, "plain words");
    assert!(!knows("plain words"));
    // Headers: a protocol header's value is, an app's header is not.
    let kept = r.filter_headers(&crate::exchange::Headers::from(vec![
        ("content-type".into(), "application/json".into()),
        ("user-agent".into(), "my-app/1.0".into()),
    ]));
    assert_eq!(kept.len(), 2);
    assert!(knows("application/json") && !knows("my-app/1.0"));
    // What a detector finds is redacted and counted every time.
    for _ in 0..2 {
        let mut doc = json!([{"role": "alice@example.com", "parts": []}]);
        let c = r.redact_json(&mut doc, Target::OutputMessages, scope);
        assert_eq!(
            (doc[0]["role"].as_str(), c.get("EMAIL")),
            (Some("[EMAIL]"), 1)
        );
    }
    assert!(!knows("alice@example.com"));
    // Bounded: a long string is not kept, and a full memo starts over.
    let long = "a".repeat(CleanMemo::MAX_LEN + 1);
    scope.clean.learn(&long);
    assert!(!knows(&long));
    for i in 0..CleanMemo::CAPACITY + 10 {
        scope.clean.learn(&format!("zqx{i}"));
    }
    assert!(scope.clean.0.lock().unwrap().len() <= CleanMemo::CAPACITY);
    // Its `Debug` (a scope's, which can reach a log) shows no string.
    assert!(!format!("{scope:?}").contains("zqx1"));
}

/// Labels whose values repeat (model names, feature tags, error types) go through the memo:
/// the same output and counts as an unmemoized scan every time, clean ones remembered, a
/// detector's match never.
#[test]
fn repeating_labels_are_remembered_when_clean_and_redacted_every_time_otherwise() {
    let r = compile(DEFAULT);
    let scope = r.base_scope();
    let knows = |s: &str| scope.clean.knows(s);
    for label in [
        "gpt-4o-mini-2024-07-18",
        "support-bot",
        "rate_limit_exceeded",
    ] {
        assert!(!knows(label), "{label}");
        for _ in 0..2 {
            let (text, counts) = r.redact_label(label, scope);
            assert_eq!((text.as_str(), counts.total()), (label, 0));
        }
        assert!(knows(label), "{label}");
    }
    // A match is redacted and counted on every call, as redact_text does, and never kept.
    let alias = "ft:gpt-4o:alice@example.com";
    let plain = r.redact_text(alias, scope);
    for _ in 0..2 {
        let (text, counts) = r.redact_label(alias, scope);
        assert_eq!((&text, counts.get("EMAIL")), (&plain.0, 1));
        assert_ne!(text, alias);
    }
    assert!(!knows(alias));
    // redact_text itself remembers nothing.
    r.redact_text("a-label-of-its-own", scope);
    assert!(!knows("a-label-of-its-own"));
}

// === the memo of long texts ===

/// `rules` with no memo: what a scan gives, the reference the memo is checked against.
fn unmemoized(text: &str) -> CompiledRules {
    let mut r = compile(text);
    r.set_memo_bytes(0);
    r
}

/// Long texts (the memo's minimum and more, on both sides of 4 KiB) with and without
/// something to mask.
fn long_texts() -> Vec<String> {
    let pad = "The quick brown fox jumps over the lazy dog. ".repeat(3);
    vec![
        format!("You are the support assistant of Northwind Bank. {pad}"),
        format!("Hi, I'm Dana Scully (dana.scully@example.com), card 4111 1111 1111 1111. {pad}"),
        format!("{pad}Call me on +44 20 7946 0958 or write to bob@example.org, thanks Priya!"),
        format!("{pad}-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----"),
        // Past 4 KiB the memo's check is BLAKE3, below it SipHash.
        format!("{}Write to carol@example.net.", pad.repeat(32)),
    ]
}

// See: veil#18. An answer from the memo is what a scan gives: text, counts, dropped fields.
#[test]
fn the_memo_answers_what_a_scan_gives_from_a_texts_third_sighting() {
    let profile = "version = 1\ndefault = \"scrub\"\n[detectors]\nbuiltin = [\"all\"]\nactions = { email = \"pseudonymize\", private_key = \"drop_field\" }\n";
    for text in [DEFAULT, STRICT, profile] {
        let (r, fresh) = (compile(text), unmemoized(text));
        assert_eq!(r.memo_bytes(), CompiledRules::DEFAULT_MEMO_BYTES);
        let (scope, fresh_scope) = (r.base_scope(), fresh.base_scope());
        let texts = long_texts();
        for round in 0..4u64 {
            for t in &texts {
                assert!(t.len() >= ScrubMemo::MIN_LEN);
                assert_eq!(r.redact_text(t, scope), fresh.redact_text(t, fresh_scope));
                // In a document: a dropped field is dropped from the memo too.
                let doc = json!([{"role": "user", "parts": [{"type": "text", "content": t}]}]);
                let (mut a, mut b) = (doc.clone(), doc);
                let ca = r.redact_json(&mut a, Target::InputMessages, scope);
                let cb = fresh.redact_json(&mut b, Target::InputMessages, fresh_scope);
                assert_eq!((a, ca), (b, cb));
            }
            // Each text is looked up twice per round: the first sighting is noted, the
            // second remembered, every later one answered. (The strict profile hashes
            // content instead of scrubbing it, so only redact_text asks the memo there.)
            let want = match text == STRICT {
                false => 2 * round * texts.len() as u64,
                true => round.saturating_sub(1) * texts.len() as u64,
            };
            assert_eq!(r.memo_hits(), want, "round {round}");
        }
        assert_eq!(fresh.memo_hits(), 0);
    }
    // Short texts are scanned every time.
    let r = compile(DEFAULT);
    for _ in 0..4 {
        r.redact_text("mail bob@example.org", r.base_scope());
    }
    assert_eq!(r.memo_hits(), 0);
}

#[test]
fn the_memo_keeps_no_raw_value_and_its_debug_no_text() {
    let r = compile(DEFAULT);
    for _ in 0..3 {
        for t in long_texts() {
            r.redact_text(&t, r.base_scope());
        }
    }
    let outputs = r.memo.outputs();
    assert!(outputs.len() >= 2, "{outputs:?}");
    for raw in [
        "carol@example.net",
        "dana.scully@example.com",
        "4111 1111 1111 1111",
        "Dana Scully",
        "7946 0958",
        "bob@example.org",
        "MIIEvQIBADANBg",
    ] {
        for o in &outputs {
            assert!(!o.contains(raw), "{raw} in {o}");
        }
    }
    let dbg = format!("{r:?}");
    assert!(
        dbg.contains("ScrubMemo(") && !dbg.contains("Northwind") && !dbg.contains("[EMAIL]"),
        "{dbg}"
    );
    // Emptied by forget: the next sightings are first ones again.
    r.clear_memo();
    assert!(r.memo.outputs().is_empty());
    let hits = r.memo_hits();
    let t = &long_texts()[1];
    for _ in 0..2 {
        r.redact_text(t, r.base_scope());
    }
    assert_eq!(r.memo_hits(), hits);
    r.redact_text(t, r.base_scope());
    assert_eq!(r.memo_hits(), hits + 1);
}

// An exchange that started before a forget may be one it covers: whatever its redaction filed
// after the forget's clear is emptied again once it is built; one that started after keeps it.
#[test]
fn what_an_exchange_older_than_the_last_forget_filed_is_cleared_again() {
    let r = compile(DEFAULT);
    let scope = r.base_scope();
    let t = &long_texts()[1];
    let before = std::time::SystemTime::now();
    for _ in 0..3 {
        r.redact_text(t, scope);
    }
    assert!(r.memo_held() > 0);
    // No forget yet: nothing to clear.
    assert!(!r.clear_memo_if_forgotten_since(before));
    assert!(r.memo_held() > 0);
    r.clear_memo();
    // The older exchange goes on after the forget's clear and files its text again.
    for _ in 0..2 {
        r.redact_text(t, scope);
    }
    assert!(r.memo_held() > 0);
    assert!(r.clear_memo_if_forgotten_since(before));
    assert_eq!(r.memo_held(), 0);
    // An exchange that started after the forget keeps what it filed, and the memo answers.
    std::thread::sleep(std::time::Duration::from_millis(2));
    let after = std::time::SystemTime::now();
    for _ in 0..3 {
        r.redact_text(t, scope);
    }
    assert!(!r.clear_memo_if_forgotten_since(after));
    assert!(r.memo_held() > 0);
    let hits = r.memo_hits();
    r.redact_text(t, scope);
    assert_eq!(r.memo_hits(), hits + 1);
}

#[test]
fn the_memo_is_bounded_keeps_what_is_used_and_can_be_off() {
    let mut r = compile(DEFAULT);
    let bound = 64 << 10;
    r.set_memo_bytes(bound);
    let scope = r.base_scope();
    let hot = &long_texts()[1];
    let pad = "lorem ipsum dolor sit amet ".repeat(8);
    for i in 0..3_000 {
        r.redact_text(hot, scope);
        // Each unique text comes twice, so it is remembered and takes room.
        let cold = format!("{pad} ticket {i} for carol{i}@example.com");
        r.redact_text(&cold, scope);
        r.redact_text(&cold, scope);
        assert!(
            r.memo.bytes() <= bound + bound / 4,
            "{} bytes at {i}",
            r.memo.bytes()
        );
    }
    // The hot text was answered every time after its second sighting.
    assert!(r.memo_hits() >= 2_998, "{}", r.memo_hits());
    // Off: nothing is remembered.
    r.set_memo_bytes(0);
    for _ in 0..4 {
        r.redact_text(hot, r.base_scope());
    }
    assert_eq!((r.memo_hits(), r.memo.bytes()), (0, 0));
}

// The byte budget charges a remembered text as a scanned one: whether an exchange's content
// is dropped never depends on what the memo holds.
#[test]
fn a_remembered_text_is_still_charged_to_the_byte_budget() {
    let r = compile(DEFAULT);
    let t = &long_texts()[1];
    for _ in 0..3 {
        r.redact_text(t, r.base_scope());
    }
    let hits = r.memo_hits();
    let budget = Budget {
        max_bytes: t.len() as u64 - 1,
        max_cpu: std::time::Duration::MAX,
    };
    let mut meter = budget.start();
    assert_eq!(
        r.redact_text_within(t, r.base_scope(), &mut meter),
        Err(Exceeded::Bytes)
    );
    let mut meter = Budget::UNLIMITED.start();
    r.redact_text_within(t, r.base_scope(), &mut meter).unwrap();
    assert_eq!(meter.bytes_scanned(), t.len() as u64);
    assert_eq!(r.memo_hits(), hits + 1);
}

// Each scope has its own detectors, so a text remembered under one is not an answer under
// another.
#[test]
fn scopes_do_not_share_remembered_texts() {
    let text = r#"
        version = 1
        [detectors]
        builtin = ["email"]
        [[scopes]]
        name = "hr"
        [scopes.match]
        feature = "hr-*"
        [[scopes.detectors.dictionary]]
        name = "employee"
        words = ["Jane Roe"]
    "#;
    let (r, fresh) = (compile(text), unmemoized(text));
    let key = ScopeKey {
        feature: Some("hr-onboarding"),
        ..ScopeKey::default()
    };
    let t = format!("{} Jane Roe wrote from jane@example.com", "x ".repeat(70));
    for _ in 0..3 {
        for k in [ScopeKey::default(), key] {
            let got = r.redact_text(&t, r.scope_for(&k));
            assert_eq!(got, fresh.redact_text(&t, fresh.scope_for(&k)));
        }
    }
    let (base, hr) = (
        r.redact_text(&t, r.base_scope()).0,
        r.redact_text(&t, r.scope_for(&key)).0,
    );
    assert!(
        base.contains("Jane Roe") && !hr.contains("Jane Roe"),
        "{base} / {hr}"
    );
    // Per scope: noted, remembered, then answered twice.
    assert_eq!(r.memo_hits(), 4);
}

// === errors name file, line, column and rule ===

#[test]
fn errors_have_positions_and_rules() {
    let cases: &[(&str, usize, usize, &str)] = &[
        ("version = 2\n", 1, 11, "unsupported rules format version"),
        (
            "version = 1\n[[fields]]\npath = \"$.a\"\naction = \"blur\"\n",
            4,
            10,
            "unknown action",
        ),
        (
            "version = 1\n[[fields]]\npath = \"$.a[\"\naction = \"keep\"\n",
            3,
            13,
            "bad JSON path",
        ),
        (
            "version = 1\n[detectors]\nbuiltin = [\"emial\"]\n",
            3,
            12,
            "unknown built-in detector",
        ),
        (
            "version = 1\n[[detectors.regex]]\nname = \"X\"\npattern = \"(a\"\n",
            4,
            11,
            "bad regex: unclosed group",
        ),
        (
            "version = 1\n[[detectors.regex]]\nname = \"X\"\npattern = \"(a{1000}){1000}\"\n",
            4,
            11,
            "bad regex: ",
        ),
        (
            "version = 1\n[headers]\nallow = [\"content-type\", \"Authorization\"]\n",
            3,
            26,
            "credential",
        ),
        (
            "version = 1\n[headers]\nallow = [\"*\"]\n",
            3,
            10,
            "credential",
        ),
        (
            "version = 1\n[headers]\nallow = [\"x-*\"]\n",
            3,
            10,
            "credential",
        ),
        ("version = 1\nbogus = 3\n", 2, 1, "unknown field"),
        (
            "version = 1\n[[scopes]]\nname = \"s\"\n[scopes.match]\n",
            3,
            8,
            "at least one",
        ),
        (
            "version = 1\n[[detectors.regex]]\nname = \"X\"\npattern = \"a\"\nvalidator = \"crc\"\n",
            5,
            13,
            "unknown validator",
        ),
        // See: veil#10
        (
            "version = 1\n[[detectors.regex]]\nname = \"X\"\npattern = \"a\"\ncontext = [\"k\"]\nwindow = 100000000\n",
            6,
            10,
            "at most 1024",
        ),
    ];
    for (text, line, col, msg) in cases {
        let e = err(text);
        assert_eq!((e.line(), e.column()), (*line, *col), "{e}");
        assert!(e.message().contains(msg), "{e}");
        assert!(
            e.to_string()
                .starts_with(&format!("<string>:{line}:{col}: ")),
            "{e}"
        );
    }
    let e = err("version = 1\n[[fields]]\npath = \"$.a\"\naction = \"blur\"\n");
    assert_eq!(e.rule(), Some("fields[0] \"$.a\""));
}

#[test]
fn load_reports_the_file_and_reads_dictionaries_relative_to_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("names.txt"),
        "# customers\nAbigail Fisher\nAcme Corp\n",
    )
    .unwrap();
    let p = dir.path().join("r.toml");
    std::fs::write(
        &p,
        "version = 1\n[[detectors.dictionary]]\nname = \"customer\"\nfile = \"names.txt\"\n",
    )
    .unwrap();
    let r = CompiledRules::load(&p, &keys()).unwrap();
    let (out, c) = r.redact_text("hi abigail fisher from ACME CORP", r.base_scope());
    assert_eq!(out, "hi [CUSTOMER] from [CUSTOMER]");
    assert_eq!(c.get("CUSTOMER"), 2);
    // The dictionary file is part of the digest.
    let d1 = r.digest().to_string();
    std::fs::write(dir.path().join("names.txt"), "Someone Else\n").unwrap();
    assert_ne!(CompiledRules::load(&p, &keys()).unwrap().digest(), d1);

    std::fs::write(
        &p,
        "version = 1\n[[detectors.dictionary]]\nname = \"c\"\nfile = \"missing.txt\"\n",
    )
    .unwrap();
    let e = CompiledRules::load(&p, &keys()).unwrap_err();
    assert!(e.file().ends_with("r.toml") && e.line() == 4, "{e}");
    assert!(CompiledRules::load(&dir.path().join("nope.toml"), &keys()).is_err());
}

// === JSON walk ===

#[test]
fn field_rules_and_default_apply_to_the_right_nodes() {
    let r = compile(
        r#"
        version = 1
        default = "hash"
        [identity]
        json = ["$.user"]
        [[fields]]
        path = "$.model"
        action = "keep"
        [[fields]]
        path = "$.messages[*].content"
        action = "scrub"
        [[fields]]
        path = "$..secret_notes"
        action = "drop"
        [[fields]]
        path = "$.metadata.session"
        action = "pseudonymize"
        [[fields]]
        path = "$.metadata.blob"
        action = "encrypt"
        [detectors]
        builtin = ["email", "phone"]
        actions = { phone = "pseudonymize" }
    "#,
    );
    let mut v = json!({
        "model": "gpt-4o",
        "user": "alice",
        "messages": [
            {"role": "user", "content": "bob@example.com or +44 20 7946 0958", "secret_notes": "x"},
            {"role": "assistant", "content": "ok"}
        ],
        "metadata": {"session": "s-1", "blob": "top secret", "n": 5, "flag": true}
    });
    let c = r.redact_json(&mut v, Target::Request, r.base_scope());
    assert_eq!(v["model"], "gpt-4o");
    assert_eq!(v["user"], r.pseudonymize_user("alice").as_str());
    let content = v["messages"][0]["content"].as_str().unwrap();
    assert!(content.starts_with("[EMAIL] or [PHONE:p_"), "{content}");
    assert!(v["messages"][0].get("secret_notes").is_none());
    assert!(v["messages"][0]["role"].as_str().unwrap().starts_with("h_"));
    assert!(v["metadata"]["session"].as_str().unwrap().starts_with("p_"));
    let blob = v["metadata"]["blob"].as_str().unwrap();
    assert_eq!(decrypt_field(blob, &keys()).unwrap(), "top secret");
    assert!(v["metadata"]["n"].as_str().unwrap().starts_with("h_"));
    assert_eq!(v["metadata"]["flag"], true);
    assert_eq!((c.get("EMAIL"), c.get("PHONE"), c.total()), (1, 1, 2));
}

#[test]
fn a_disguised_value_gets_the_pseudonym_and_hash_of_its_plain_form() {
    let r = unmemoized(
        r#"
        version = 1
        default = "scrub"
        [detectors]
        builtin = ["email", "credit_card", "openai_api_key"]
        actions = { email = "pseudonymize", credit_card = "hash", openai_api_key = "hash" }
    "#,
    );
    let key = "sk-proj-Xq7v2mB9kLp4Rt8wZy3nHs6dJf1gCa5eUo0iTb";
    let zw = format!("{}\u{200b}{}", &key[..12], &key[12..]);
    let redact = |t: &str| r.redact_text(t, r.base_scope()).0;
    for (plain, disguised) in [
        (
            "mail jane@example.com now",
            "mail jane\u{ff20}example.com now",
        ),
        (
            "mail jane@example.com now",
            "mail jane@example\u{00ad}.com now",
        ),
        (
            "card 4111 1111 1111 1111 ok",
            "card \u{ff14}\u{ff11}\u{ff11}\u{ff11} 1111 1111 1111 ok",
        ),
        (&format!("key {key} ok"), &format!("key {zw} ok")),
    ] {
        let (a, b) = (redact(plain), redact(disguised));
        assert!(a.contains(":h_") || a.contains(":e_"), "{a}");
        assert_eq!(a, b, "{disguised:?}");
    }
    // Still keyed on the value: another address gets another pseudonym.
    assert_ne!(
        redact("mail jane@example.com now"),
        redact("mail jane\u{ff20}example.org now")
    );
}

#[test]
fn keys_numbers_and_drop_field_are_scrubbed() {
    let r = compile(
        "version = 1\n[detectors]\nbuiltin = [\"all\"]\nactions = { private_key = \"drop_field\" }\n",
    );
    let mut v = json!({
        "bob@example.com": "note",
        "cards": [4111111111111111u64, 42],
        "pem": "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----",
        "list": ["-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----", "fine"]
    });
    r.redact_json(&mut v, Target::Request, r.base_scope());
    assert_eq!(v["[EMAIL]"], "note");
    assert_eq!(v["cards"], json!(["[CREDIT_CARD]", 42]));
    assert!(v.get("pem").is_none());
    assert_eq!(v["list"], json!([null, "fine"]));
    let (t, c) = r.redact_text(
        "key -----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----",
        r.base_scope(),
    );
    assert_eq!((t.as_str(), c.get("PRIVATE_KEY")), ("", 1));
}

#[test]
fn targets_limit_field_rules() {
    let r = compile(
        "version = 1\ndefault = \"drop\"\n[[fields]]\npath = \"$.usage\"\naction = \"keep\"\non = [\"response\"]\n",
    );
    let mut req = json!({"usage": {"a": 1}});
    let mut resp = req.clone();
    r.redact_json(&mut req, Target::Request, r.base_scope());
    r.redact_json(&mut resp, Target::Response, r.base_scope());
    assert_eq!(req, json!({"usage": {}}));
    assert_eq!(resp, json!({"usage": {"a": 1}}));
}

#[test]
fn scopes_first_match_wins_and_inherit_the_base() {
    let r = compile(
        r#"
        version = 1
        default = "scrub"
        [detectors]
        builtin = ["email"]

        [[scopes]]
        name = "hr"
        default = "hash"
        [scopes.match]
        feature = "hr-*"
        [[scopes.detectors.dictionary]]
        name = "employee"
        words = ["Jane Roe"]

        [[scopes]]
        name = "openai-gpt4"
        [scopes.match]
        host = "*.openai.com"
        model = "gpt-4*"
        [[scopes.fields]]
        path = "$.note"
        action = "drop"
    "#,
    );
    let hr = r.scope_for(&ScopeKey {
        feature: Some("hr-assistant"),
        host: Some("api.openai.com"),
        model: Some("gpt-4o"),
        ..Default::default()
    });
    assert_eq!(hr.name(), "hr");
    assert_eq!(hr.default_action(), FieldAction::Hash);
    let (t, _) = r.redact_text("Jane Roe <jr@example.com>", hr);
    assert_eq!(t, "[EMPLOYEE] <[EMAIL]>", "scope adds to base detectors");
    let o = r.scope_for(&ScopeKey {
        host: Some("API.OpenAI.com"),
        model: Some("gpt-4o"),
        ..Default::default()
    });
    assert_eq!(o.name(), "openai-gpt4");
    let mut v = json!({"note": "x", "other": "jr@example.com"});
    r.redact_json(&mut v, Target::Request, o);
    assert_eq!(v, json!({"other": "[EMAIL]"}));
    assert_eq!(
        r.scope_for(&ScopeKey {
            host: Some("api.openai.com"),
            ..Default::default()
        })
        .name(),
        "default"
    );
    assert_eq!(r.scope_for(&ScopeKey::default()).name(), "default");
    let (t, _) = r.redact_text("Jane Roe", r.base_scope());
    assert_eq!(t, "Jane Roe", "base scope lacks the hr dictionary");
}

#[test]
fn headers_allowlist_never_lets_credentials_out() {
    let r = compile(DEFAULT);
    for h in credentials::credential_headers() {
        assert!(!r.header_allowed(h), "{h}");
    }
    assert!(r.header_allowed("Content-Type"));
    assert!(r.header_allowed("x-ratelimit-remaining-tokens"));
    assert!(!r.header_allowed("x-veil-user"));
    assert!(!r.header_allowed("x-custom"));
    let out = r.filter_headers(&crate::exchange::Headers::from(vec![
        ("Authorization".into(), "Bearer abc123def456ghi789".into()),
        ("user-agent".into(), "bot (mail bob@example.com)".into()),
        ("x-custom".into(), "v".into()),
    ]));
    assert_eq!(
        out,
        vec![("user-agent".to_string(), "bot (mail [EMAIL])".to_string())]
    );
}

#[test]
fn find_user_prefers_headers_then_json() {
    let r = compile(DEFAULT);
    let body = json!({"metadata": {"user_id": 7}});
    assert_eq!(r.find_user(Some(&body), []), Some(r.pseudonymize_user("7")));
    let h = [("x-veil-user", "carol")];
    assert_eq!(
        r.find_user(Some(&body), h),
        Some(r.pseudonymize_user("carol"))
    );
    assert_eq!(r.find_user(Some(&json!({"x": 1})), []), None);
}

// See: veil#13
#[test]
fn find_users_names_every_source_winner_first_deduplicated() {
    let r = compile(DEFAULT);
    let body = json!({"user": "alice@example.com", "metadata": {"user_id": "alice@example.com", "user": 7}});
    let h = [("x-veil-user", "bob")];
    assert_eq!(
        r.find_users(Some(&body), h),
        vec![
            r.pseudonymize_user("bob"),
            r.pseudonymize_user("alice@example.com"),
            r.pseudonymize_user("7"),
        ]
    );
    assert_eq!(
        r.find_user(Some(&body), h),
        Some(r.pseudonymize_user("bob"))
    );
    // Bounded however many values the app sends.
    let many: Vec<serde_json::Value> = (0..1000)
        .map(|i| json!({"user": format!("u{i}")}))
        .collect();
    let mut rules = DEFAULT.to_string();
    rules = rules.replacen("json = [", "json = [\"$.list[*].user\", ", 1);
    let r = compile(&rules);
    assert_eq!(
        r.find_users(Some(&json!({"list": many})), []).len(),
        crate::redact::MAX_IDENTITIES
    );
}

#[test]
fn pseudonyms_are_stable_across_instances_sharing_keys() {
    let a = compile(DEFAULT);
    let b = compile(STRICT);
    let u = a.pseudonymize_user("user-1234");
    assert_eq!(u, b.pseudonymize_user("user-1234"));
    assert_eq!(u.as_str().len(), 18);
    let other = CompiledRules::from_str(
        DEFAULT,
        &Keyring::single(MasterKey::from_bytes(KeyId(1), [1; 32])),
    )
    .unwrap();
    assert_ne!(u, other.pseudonymize_user("user-1234"));
}

// === shipped profiles: no credential, no raw user id, no detector match leaves ===

/// One value per built-in detector, embedded in realistic places.
const LEAKS: &[&str] = &[
    "abigail.fisher@gmail.com",
    "+44 20 7946 0958",
    "(415) 555-2671",
    "4111 1111 1111 1111",
    "GB82 WEST 1234 5698 7654 32",
    "123-45-6789",
    "192.168.1.20",
    "2001:db8::8a2e:370:7334",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl",
    "MIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu",
    "AKIAIOSFODNN7EXAMPLE",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "ghp_0123456789abcdefghijABCDEFGHIJ012345",
    "sk-proj-abcdefghijklmnopqrstuvwxyz012345",
    "sk-ant-api03-abcdefghijklmnopqrstuvwxyz-_0123AA",
    "xoxb-1234567890-1234567890123-abcdefghijABCDEFGHIJ",
    "sk_live_abcdefghijklmnop0123",
    "AIzaSyA-abcdefghijklmnopqrstuvwxyz01234",
    "tok123def456ghi789jkl",
];

fn leaky_request() -> Value {
    json!({
        "model": "gpt-4o-mini",
        "user": "user-raw-id-991",
        "metadata": {"user_id": "raw-user-xyz"},
        "messages": [
            {"role": "system", "content": "You help. Contact abigail.fisher@gmail.com."},
            {"role": "user", "content": [
                {"type": "text", "text": "call +44 20 7946 0958 or (415) 555-2671, card 4111 1111 1111 1111, IBAN GB82 WEST 1234 5698 7654 32, SSN 123-45-6789"},
                {"type": "text", "text": "hosts 192.168.1.20 and 2001:db8::8a2e:370:7334; jwt eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl"}
            ]},
            {"role": "user", "content": "-----BEGIN RSA PRIVATE KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n-----END RSA PRIVATE KEY-----"},
            {"role": "user", "content": "AKIAIOSFODNN7EXAMPLE\nAWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\nghp_0123456789abcdefghijABCDEFGHIJ012345 sk-proj-abcdefghijklmnopqrstuvwxyz012345"},
            {"role": "user", "content": "sk-ant-api03-abcdefghijklmnopqrstuvwxyz-_0123AA xoxb-1234567890-1234567890123-abcdefghijABCDEFGHIJ sk_live_abcdefghijklmnop0123 AIzaSyA-abcdefghijklmnopqrstuvwxyz01234 Authorization: Bearer tok123def456ghi789jkl"}
        ],
        "tools": [{"type": "function", "function": {"name": "lookup", "description": "mail abigail.fisher@gmail.com"}}]
    })
}

#[test]
fn every_shipped_profile_masks_everything() {
    for (name, text) in [
        ("default", DEFAULT),
        ("strict", STRICT),
        ("encrypted", ENCRYPTED),
    ] {
        let r = compile(text);
        let mut v = leaky_request();
        let scope = r.scope_for(&ScopeKey::default());
        r.redact_json(&mut v, Target::Request, scope);
        let out = serde_json::to_string(&v).unwrap();
        for leak in LEAKS.iter().chain(&["user-raw-id-991", "raw-user-xyz"]) {
            assert!(!out.contains(leak), "{name} leaked {leak:?}: {out}");
        }
        assert!(
            out.contains(r.pseudonymize_user("user-raw-id-991").as_str()),
            "{name}"
        );
        assert!(
            out.contains("gpt-4o-mini"),
            "{name} keeps the model readable"
        );
        for h in credentials::credential_headers() {
            assert!(!r.header_allowed(h), "{name} allows {h}");
        }
        // Normalized messages too.
        let mut m = json!([{"role": "user", "parts": [{"type": "text", "content": "abigail.fisher@gmail.com"}]}]);
        r.redact_json(&mut m, Target::InputMessages, scope);
        assert!(!m.to_string().contains("abigail"), "{name}: {m}");
    }
}

#[test]
fn default_profile_masks_inline_with_labels() {
    let r = compile(DEFAULT);
    let mut v = leaky_request();
    let c = r.redact_json(&mut v, Target::Request, r.base_scope());
    assert_eq!(v["messages"][0]["content"], "You help. Contact [EMAIL].");
    for label in [
        "EMAIL",
        "PHONE",
        "CREDIT_CARD",
        "IBAN",
        "US_SSN",
        "IPV4",
        "IPV6",
        "JWT",
        "PRIVATE_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "GITHUB_TOKEN",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "SLACK_TOKEN",
        "STRIPE_SECRET_KEY",
        "GOOGLE_API_KEY",
        "BEARER_TOKEN",
    ] {
        assert!(c.get(label) >= 1, "{label} not counted: {c:?}");
    }
}

// === detector tables through both the text and the JSON redactor ===

#[test]
fn detector_table_agrees_between_text_and_json() {
    let r = compile(DEFAULT);
    let s = r.base_scope();
    for leak in LEAKS {
        let text = match *leak {
            l if l.starts_with("MII") => {
                format!("-----BEGIN PRIVATE KEY-----\n{l}\n-----END PRIVATE KEY-----")
            }
            l if l.starts_with("tok") => format!("Authorization: Bearer {l}"),
            l if l.starts_with("wJal") => format!("aws_secret_access_key = {l}"),
            l => format!("value: {l} end"),
        };
        let (t, c) = r.redact_text(&text, s);
        let mut v = json!({"a": [{"b": text}]});
        let cj = r.redact_json(&mut v, Target::Request, s);
        assert_eq!(v["a"][0]["b"], t, "{leak}");
        assert_eq!(c, cj, "{leak}");
        assert!(!t.contains(leak), "{leak}: {t}");
        assert_eq!(c.total(), 1, "{leak}: {t}");
    }
}

#[test]
fn unsettled_redaction_drops_the_field() {
    // Found by fuzzing (fuzz/fuzz_targets/redact.rs): each pass unmasks the next glued phone.
    let r = compile(DEFAULT);
    let text = ":,[IPV6][PHONE]+3255555:,[IPV6][PHONE]+3255555:,[IPV6][PHONE][PHONE][PHONE]+32555555555@5555552(0)++3255322-------&7::15555555555554,32555\u{1}";
    let (once, _) = r.redact_text(text, r.base_scope());
    let (twice, _) = r.redact_text(&once, r.base_scope());
    assert_eq!(once, twice);
}

// === properties ===

mod props {
    use super::*;
    use proptest::prelude::*;
    use std::sync::LazyLock;

    // Compiled once: proptest runs hundreds of cases.
    static DEF: LazyLock<CompiledRules> = LazyLock::new(|| compile(DEFAULT));
    static ENC: LazyLock<CompiledRules> = LazyLock::new(|| compile(ENCRYPTED));
    static PSEUDO: LazyLock<CompiledRules> = LazyLock::new(|| {
        compile("version = 1\n[detectors]\nbuiltin = [\"all\"]\naction = \"pseudonymize\"\n")
    });
    static DEF_FRESH: LazyLock<CompiledRules> = LazyLock::new(|| unmemoized(DEFAULT));
    static PSEUDO_FRESH: LazyLock<CompiledRules> = LazyLock::new(|| {
        unmemoized("version = 1\n[detectors]\nbuiltin = [\"all\"]\naction = \"pseudonymize\"\n")
    });

    fn pieces() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            "[a-zA-Z ,.:@/+-]{0,12}",
            "[0-9 .:-]{0,20}",
            proptest::sample::select(LEAKS.to_vec()).prop_map(String::from),
            Just("Bearer ".to_string()),
            Just("SSN ".to_string()),
            Just("ü€".to_string()),
        ];
        proptest::collection::vec(piece, 0..8).prop_map(|v| v.concat())
    }

    fn tree() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            pieces().prop_map(Value::String),
            any::<i64>().prop_map(|n| json!(n)),
            any::<bool>().prop_map(Value::Bool),
            Just(Value::Null),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn shape(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect())
            }
            Value::Array(a) => Value::Array(a.iter().map(shape).collect()),
            Value::Bool(_) | Value::Null => v.clone(),
            Value::String(_) | Value::Number(_) => Value::Null,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        // See: veil#18. Whatever the text, the memo's answer (third sighting on) is the scan's.
        #[test]
        fn the_memo_answers_as_a_scan(parts in proptest::collection::vec(pieces(), 8..24)) {
            let text = parts.concat();
            for (r, fresh) in [(&*DEF, &*DEF_FRESH), (&*PSEUDO, &*PSEUDO_FRESH)] {
                let want = fresh.redact_text(&text, fresh.base_scope());
                let hits = r.memo_hits();
                for _ in 0..3 {
                    prop_assert_eq!(&r.redact_text(&text, r.base_scope()), &want);
                }
                if text.len() >= ScrubMemo::MIN_LEN {
                    prop_assert!(r.memo_hits() > hits);
                }
            }
        }

        #[test]
        fn scrub_is_idempotent(text in pieces()) {
            let r = &*DEF;
            let (once, _) = r.redact_text(&text, r.base_scope());
            let (twice, c) = r.redact_text(&once, r.base_scope());
            prop_assert_eq!(&twice, &once);
            prop_assert_eq!(c.total(), 0);
        }

        #[test]
        fn pseudonymize_inline_is_idempotent(text in pieces()) {
            let r = &*PSEUDO;
            let (once, _) = r.redact_text(&text, r.base_scope());
            let (twice, _) = r.redact_text(&once, r.base_scope());
            prop_assert_eq!(twice, once);
        }

        #[test]
        fn json_stays_valid_with_the_same_structure(v in tree()) {
            let r = &*DEF;
            let mut out = v.clone();
            r.redact_json(&mut out, Target::Request, r.base_scope());
            let text = serde_json::to_string(&out).unwrap();
            let back: Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(&back, &out);
            // Keys have no detector matches here ([a-z]), so the shape must be identical.
            prop_assert_eq!(shape(&out), shape(&v));
            let mut again = out.clone();
            r.redact_json(&mut again, Target::Request, r.base_scope());
            prop_assert_eq!(again, out);
        }

        #[test]
        fn pseudonyms_stable_and_distinct(a in ".{0,40}", b in ".{0,40}") {
            let r = &*DEF;
            prop_assert_eq!(r.pseudonymize_user(&a), r.pseudonymize_user(&a));
            if a != b {
                prop_assert_ne!(r.pseudonymize_user(&a), r.pseudonymize_user(&b));
            }
        }

        #[test]
        fn encrypt_round_trips(s in ".{0,200}") {
            let r = &*ENC;
            let mut v = json!({"x": s.clone()});
            r.redact_json(&mut v, Target::Request, r.base_scope());
            let e = v["x"].as_str().unwrap();
            prop_assert!(e.starts_with("enc:v1:k1:"));
            prop_assert_eq!(decrypt_field(e, &keys()).unwrap(), s);
        }

        #[test]
        fn scanning_never_panics_and_spans_are_sorted(text in "\\PC{0,200}") {
            let r = &*DEF;
            let mut found = Vec::new();
            r.base_scope().scanner().find(&text, &mut found);
            for w in found.windows(2) {
                prop_assert!(w[0].end <= w[1].start);
            }
            for f in &found {
                prop_assert!(text.is_char_boundary(f.start) && text.is_char_boundary(f.end));
            }
        }
    }
}

// === cost: linear, and bounded by a budget (veil#10) ===

mod cost {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngSeed};
    use std::sync::LazyLock;

    // Without the memo: what is measured is the scan, not a remembered answer.
    static DEF: LazyLock<CompiledRules> = LazyLock::new(|| unmemoized(DEFAULT));

    /// See [`DENSE_UNITS`].
    const DENSE: &[&str] = crate::redact::DENSE_UNITS;

    fn unit() -> impl Strategy<Value = String> {
        proptest::collection::vec(proptest::sample::select(DENSE.to_vec()), 1..6)
            .prop_map(|v| v.concat())
    }

    /// Work units per byte to redact `unit` repeated to at least `n` bytes.
    fn work_per_byte(unit: &str, n: usize) -> f64 {
        let text = unit.repeat(n.div_ceil(unit.len()));
        let mut meter = Meter::unlimited();
        let r = &*DEF;
        r.redact_text_within(&text, r.base_scope(), &mut meter)
            .expect("an unlimited meter");
        meter.work_done() as f64 / text.len() as f64
    }

    /// The most work per byte any generated text may cost. Measured worst: about 40 (runs of
    /// IPv6 look-alikes, where every position starts a candidate the validator rejects).
    const MAX_WORK_PER_BYTE: f64 = 120.0;

    proptest! {
        // Deterministic: a fixed seed, and work counted rather than timed, so the test cannot
        // flake on a loaded machine.
        #![proptest_config(Config {
            cases: 96,
            rng_seed: RngSeed::Fixed(0x7e11_0010),
            failure_persistence: None,
            ..Config::default()
        })]

        // See: veil#10
        #[test]
        fn work_per_byte_stays_flat_on_match_dense_text(unit in unit()) {
            let small = work_per_byte(&unit, 2 << 10);
            let large = work_per_byte(&unit, 16 << 10);
            // Eight times the text may cost eight times the work, plus the log factor of
            // sorting matches; a quadratic pass costs 64 times.
            prop_assert!(
                large <= small * 1.5 + 1.0,
                "{unit:?}: {small:.1} units/byte at 2 KiB, {large:.1} at 16 KiB"
            );
            prop_assert!(large <= MAX_WORK_PER_BYTE, "{unit:?}: {large:.1} units/byte");
        }
    }

    // See: veil#10
    #[test]
    fn lorem_ipsum_alice_at_example_com_repeated_costs_the_same_per_byte_at_any_size() {
        // The input of the report, at 16 KiB and 128 KiB (a quadratic overlap resolution
        // cost 8 times as much per byte at the larger size).
        let unit = "lorem ipsum alice@example.com sit amet ";
        let small = work_per_byte(unit, 16 << 10);
        let large = work_per_byte(unit, 128 << 10);
        assert!(large <= small * 1.2, "{small:.2} vs {large:.2} units/byte");
    }

    // See: veil#10
    #[test]
    fn past_the_byte_budget_the_document_is_dropped_whole_not_half_redacted() {
        let r = compile(DEFAULT);
        let scope = r.base_scope();
        let doc = json!({
            "a": "mail alice@example.com",
            "b": "and bob@example.com too",
        });
        // Enough for the first string (and the keys), not for the second.
        let budget = Budget {
            max_bytes: 30,
            max_cpu: std::time::Duration::MAX,
        };
        let mut v = doc.clone();
        let mut meter = budget.start();
        let e = r
            .redact_json_within(&mut v, Target::Request, scope, &mut meter)
            .unwrap_err();
        assert_eq!(e, Exceeded::Bytes);
        assert_eq!(
            v,
            Value::Null,
            "nothing is left, not even the redacted first string"
        );
        assert_eq!(meter.exceeded(), Some(Exceeded::Bytes));
        // The same document fits a larger budget and is redacted as usual.
        let mut v = doc.clone();
        let mut meter = Budget {
            max_bytes: 1000,
            ..budget
        }
        .start();
        let counts = r
            .redact_json_within(&mut v, Target::Request, scope, &mut meter)
            .unwrap();
        assert_eq!(counts.get("EMAIL"), 2);
        assert_eq!(v["b"], "and [EMAIL] too");
        assert_eq!(
            meter.bytes_scanned(),
            (1 + 22 + 1 + 23) as u64,
            "keys and values, once"
        );
        // Text: all or nothing too.
        let mut meter = budget.start();
        assert_eq!(
            r.redact_text_within("x".repeat(31).as_str(), scope, &mut meter),
            Err(Exceeded::Bytes)
        );
    }

    // See: veil#10
    #[test]
    fn past_the_cpu_budget_a_scan_stops_and_returns_no_matches() {
        let r = compile(DEFAULT);
        let text = "lorem ipsum alice@example.com sit amet ".repeat(20_000);
        let mut unlimited = Meter::unlimited();
        let mut found = Vec::new();
        r.base_scope()
            .scanner()
            .find_within(&text, &mut found, &mut unlimited)
            .unwrap();
        assert_eq!(found.len(), 20_000);
        let mut meter = Budget {
            max_bytes: u64::MAX,
            max_cpu: std::time::Duration::ZERO,
        }
        .start();
        let mut found = vec![Found {
            start: 0,
            end: 1,
            detector: 0,
        }];
        let e = r
            .base_scope()
            .scanner()
            .find_within(&text, &mut found, &mut meter)
            .unwrap_err();
        assert_eq!(e, Exceeded::Cpu);
        assert!(
            found.is_empty(),
            "a partial list of matches is never returned"
        );
        // The first clock read (after the literal pass) starts the clock, the second (after
        // the trigger pass) finds it past zero: the windows were never searched.
        assert!(
            meter.work_done() < unlimited.work_done() / 2 + text.len() as u64,
            "{} of {} units",
            meter.work_done(),
            unlimited.work_done()
        );
    }
}

// === memory held from start ===

/// The detectors' automata are built when the rules compile and held for the process's life;
/// since stop 76 a built-in pattern's once per process, shared by every scope's scanner and
/// the always-on secret detectors' (`rules::secrets`), which this test still counts apart. A bounded
/// repetition (`[^"]{1,256}`) compiles into that many copies of its class, so one pattern can
/// cost megabytes unnoticed: stop 72's password patterns made the default rules' detectors
/// 11 MB; stop 73 and stop 74 (the quoted password values unbounded once overlapping matches
/// are masked together) brought every built-in together to 1.5 MB and the always-on ones to
/// 1.1 MB; stop 75's command and SQL password patterns (0.53 MB, most of it the repetition
/// of the arguments before the option, about 5 KB per argument), less the one-pass DFAs of
/// literal-gated patterns (0.22 MB), made them 1.83 and 1.48 MB; stop 76's `ldappasswd`
/// pattern (62 KB: a command pattern costs that much) about 1.89 and 1.55 MB. The always-on
/// bound leaves no room for another command pattern: a shared argument skip first.
#[test]
fn the_shipped_profiles_detectors_hold_little_memory() {
    const MIB: usize = 1 << 20;
    for (name, text) in [
        ("default", DEFAULT),
        ("strict", STRICT),
        ("encrypted", ENCRYPTED),
    ] {
        let r = compile(text);
        let held = r.base_scope().scanner().memory_usage();
        assert!(
            held < 2 * MIB,
            "{name}: the detectors' automata hold {held} bytes; a bounded repetition?"
        );
    }
    let held = rules::secrets().memory_usage();
    assert!(held < 3 * MIB / 2, "always-on: {held} bytes");
}

// === the corpus ===

/// The labelled development corpus, committed with the tests (`tests/fixtures/pii/`, a copy
/// of `shared/pii/dev.jsonl`: synthetic, every value fake). A missing file is a failure, never
/// a skip: a corpus test that passes without its corpus proves nothing.
fn pii_corpus() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pii/dev.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("the PII corpus {} cannot be read: {e}", path.display()))
}

/// Runs the evaluation on the PII corpus and enforces the acceptance thresholds.
#[test]
fn pii_corpus_thresholds() {
    let corpus = pii_corpus();
    let r = compile(DEFAULT);
    let report = eval::evaluate(&corpus, r.base_scope());
    eprintln!("{}", report.table());
    assert!(report.records > 0);
    const STRUCTURED: &[&str] = &[
        "EMAIL",
        "PHONE",
        "CREDIT_CARD",
        "IBAN",
        "US_SSN",
        "IPV4",
        "IPV6",
        "JWT",
        "PRIVATE_KEY",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "GITHUB_TOKEN",
        "OPENAI_API_KEY",
        "ANTHROPIC_API_KEY",
        "SLACK_TOKEN",
        "STRIPE_SECRET_KEY",
    ];
    for ty in STRUCTURED {
        let t = report.recall.get(*ty).cloned().unwrap_or_default();
        assert!(
            t.share() >= 0.995,
            "{ty} recall {:.4} ({}/{})",
            t.share(),
            t.hit,
            t.total
        );
    }
    // Measured 0.9975 recall, 1.0 precision (veil#16); the floor leaves room for the
    // hidden corpus' wording, not for regressions.
    let a = report
        .recall
        .get("STREET_ADDRESS")
        .cloned()
        .unwrap_or_default();
    assert!(a.share() >= 0.99, "STREET_ADDRESS recall {:.4}", a.share());
    let p = report
        .precision
        .get("STREET_ADDRESS")
        .map(|p| p.value())
        .unwrap_or_default();
    assert!(p >= 0.95, "STREET_ADDRESS precision {p:.4}");
    for (ty, t) in &report.flagged {
        assert_eq!(
            t.hit, 0,
            "{ty}: {} of {} hard negatives flagged",
            t.hit, t.total
        );
    }
    // Names (veil#16): gazetteer, cues and guard (detect/person.rs). Measured 0.969 / 0.989.
    let person = report.recall.get("PERSON").cloned().unwrap_or_default();
    assert!(person.share() >= 0.95, "PERSON recall {person:?}");
    let p = report.precision.get("PERSON").cloned().unwrap_or_default();
    assert!(
        p.true_pos > 0 && p.value() >= 0.95,
        "PERSON precision {p:?}"
    );
}

// See: security review of the integrated tree (identity order, minimal files, strict paths).
mod review_regressions {
    use crate::keys::{KeyId, Keyring, MasterKey};
    use crate::redact::{CompiledRules, Target};

    fn ring() -> Keyring {
        Keyring::single(MasterKey::from_bytes(KeyId(1), [9; 32]))
    }

    #[test]
    fn identity_paths_are_tried_in_file_order_not_key_order() {
        let keys = ring();
        let rules = CompiledRules::from_str(
            "version = 1\n[identity]\njson = [\"$.user\", \"$.safety_identifier\", \"$.aaa_cache\"]\n",
            &keys,
        )
        .unwrap();
        let body = serde_json::json!({"aaa_cache": "cache-v2", "safety_identifier": "alice"});
        assert_eq!(
            rules.find_user(Some(&body), []),
            Some(crate::keys::pseudonymize_user(&keys, "alice"))
        );
    }

    #[test]
    fn a_minimal_file_still_masks_pii_and_secrets_cannot_be_turned_off() {
        let keys = ring();
        let text = "mail alice@example.com key sk-proj-abcdefghijklmnopqrstuvwxyz0123456789ABCD";
        let minimal = CompiledRules::from_str("version = 1\n", &keys).unwrap();
        let (out, _) = minimal.redact_text(text, minimal.base_scope());
        assert!(
            !out.contains("alice@example.com") && !out.contains("sk-proj-"),
            "{out}"
        );
        let email_only =
            CompiledRules::from_str("version = 1\n[detectors]\nbuiltin = [\"email\"]\n", &keys)
                .unwrap();
        let (out, _) = email_only.redact_text(text, email_only.base_scope());
        assert!(
            !out.contains("sk-proj-"),
            "secret detectors are always on: {out}"
        );
    }

    #[test]
    fn strict_hashes_tool_arguments_that_reuse_structural_key_names() {
        let keys = ring();
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/rules/strict.toml"))
                .unwrap();
        let rules = CompiledRules::from_str(&text, &keys).unwrap();
        let mut v = serde_json::json!([{"role": "assistant", "parts": [
            {"type": "tool_call", "name": "lookup", "arguments": {"type": "Patient John Smith has HIV"}}
        ]}]);
        rules.redact_json(&mut v, Target::OutputMessages, rules.base_scope());
        let out = v.to_string();
        assert!(!out.contains("John Smith"), "{out}");
        assert!(
            out.contains("\"role\":\"assistant\""),
            "structure stays readable: {out}"
        );
    }

    #[test]
    fn hashed_and_encrypted_subtrees_hide_object_keys_too() {
        let keys = ring();
        for profile in ["strict", "encrypted"] {
            let path = format!("{}/rules/{profile}.toml", env!("CARGO_MANIFEST_DIR"));
            let rules =
                CompiledRules::from_str(&std::fs::read_to_string(path).unwrap(), &keys).unwrap();
            let mut v = serde_json::json!([{"role": "tool", "parts": [
                {"type": "tool_call_response", "id": "call_1",
                 "response": {"Alice Johnson": {"balance": 1200}}}
            ]}]);
            rules.redact_json(&mut v, Target::InputMessages, rules.base_scope());
            let out = v.to_string();
            assert!(
                !out.contains("Alice Johnson") && !out.contains("1200"),
                "{profile}: {out}"
            );
            assert!(
                out.contains("\"role\":\"tool\""),
                "{profile}: structure stays: {out}"
            );
        }
    }
}

/// The prefilter and windows never change what is found: on every text of the corpus (real
/// shapes of PII next to look-alikes), the gated scan equals a scan of every pattern over the
/// whole text.
#[test]
fn pii_corpus_gated_scan_equals_exhaustive_scan() {
    let corpus = pii_corpus();
    fn strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::String(s) => out.push(s),
            Value::Array(a) => a.iter().for_each(|c| strings(c, out)),
            Value::Object(m) => m.values().for_each(|c| strings(c, out)),
            _ => {}
        }
    }
    let r = compile(DEFAULT);
    let scanner = r.base_scope().scanner();
    let (mut gated, mut all) = (Vec::new(), Vec::new());
    let mut texts = 0;
    let mut found = 0;
    for line in corpus.lines() {
        let record: Value = serde_json::from_str(line).expect("corpus line is JSON");
        let mut out = Vec::new();
        strings(&record["request"], &mut out);
        for text in out {
            scanner.find(text, &mut gated);
            scanner.find_exhaustive(text, &mut all);
            assert_eq!(gated, all, "text: {text:?}");
            texts += 1;
            found += gated.len();
        }
    }
    assert!(texts > 1000 && found > 1000, "{texts} texts, {found} found");
}

// See: veil#16
#[test]
fn default_profile_hides_names_in_the_user_field_in_tool_arguments_and_in_text() {
    let r = compile(DEFAULT);
    let mut v = serde_json::json!({
        "model": "gpt-4o-mini",
        "user": "Tomasz Nowak",
        "messages": [
            {"role": "user", "content": "Thanks Priya, the account holder Tomasz Nowak agreed."},
            {"role": "assistant", "tool_calls": [{"id": "c1", "type": "function", "function": {
                "name": "lookup", "arguments": "{\"name\": \"Wojciech Zielinski\"}"}}]}
        ]
    });
    let scope = r.scope_for(&ScopeKey::default());
    r.redact_json(&mut v, Target::Request, scope);
    let out = serde_json::to_string(&v).unwrap();
    for leak in ["Priya", "Tomasz", "Nowak", "Wojciech", "Zielinski"] {
        assert!(!out.contains(leak), "leaked {leak:?}: {out}");
    }
    // The user field is an identity: pseudonymized whole, so `forget --user` still finds it.
    assert_eq!(
        v["user"].as_str(),
        Some(r.pseudonymize_user("Tomasz Nowak").as_str())
    );
    assert!(out.contains("[PERSON]"), "{out}");
}
