//! Redaction of arbitrary text and JSON: no panic, spans on char boundaries, idempotent, and
//! JSON stays valid JSON.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use veil::keys::{KeyId, Keyring, MasterKey};
use veil::redact::{CompiledRules, Target};

static RULES: LazyLock<CompiledRules> = LazyLock::new(|| {
    let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [1; 32]));
    CompiledRules::from_str(include_str!("../../rules/default.toml"), &keys).expect("default rules")
});

fuzz_target!(|data: &[u8]| {
    let rules = &*RULES;
    let scope = rules.base_scope();
    let text = String::from_utf8_lossy(data);
    let (once, _) = rules.redact_text(&text, scope);
    let (twice, _) = rules.redact_text(&once, scope);
    assert_eq!(once, twice, "redaction is idempotent");
    if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(data) {
        rules.redact_json(&mut v, Target::Request, scope);
        let s = serde_json::to_string(&v).expect("serializable");
        let _: serde_json::Value = serde_json::from_str(&s).expect("still JSON");
    }
});
