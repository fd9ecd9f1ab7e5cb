//! The rules compiler must refuse any bad input with an error, never panic or hang, and every
//! error must carry a position inside the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil::keys::{KeyId, Keyring, MasterKey};
use veil::redact::CompiledRules;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let keys = Keyring::single(MasterKey::from_bytes(KeyId(1), [1; 32]));
    match CompiledRules::from_str(text, &keys) {
        Ok(rules) => {
            // A compiled file must be usable on any text.
            let _ = rules.redact_text("mail bob@example.com 4111 1111 1111 1111", rules.base_scope());
        }
        Err(e) => {
            assert!(e.line() >= 1, "{e}");
            assert!(e.line() <= text.lines().count().max(1) + 1, "{e}");
        }
    }
});
