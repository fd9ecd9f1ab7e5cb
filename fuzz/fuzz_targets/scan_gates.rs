//! The gated scan (prefilter, trigger windows, anchored literal search) finds exactly what a
//! scan of every pattern over the whole text finds.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use veil::keys::{KeyId, Keyring, MasterKey};
use veil::redact::CompiledRules;

static RULES: LazyLock<CompiledRules> = LazyLock::new(|| {
    let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [1; 32]));
    CompiledRules::from_str(include_str!("../../rules/default.toml"), &keys).expect("default rules")
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let scanner = RULES.base_scope().scanner();
    let (mut gated, mut all) = (Vec::new(), Vec::new());
    scanner.find(text, &mut gated);
    scanner.find_exhaustive(text, &mut all);
    assert_eq!(gated, all, "text: {text:?}");
});
