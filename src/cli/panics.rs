//! # Panic reports that never quote the data being processed.
//!
//! Rust's default panic hook prints the panic's message, and some messages quote runtime data:
//! slicing a string at a byte that is not a character boundary panics with up to 256 bytes of
//! the string itself (`byte index 5 is not a char boundary; … of `…``), and an `expect` on a
//! parse error carries the error's `Debug`, which may hold the input. In veil the data is
//! prompts and completions, and "logs never contain credentials, prompts or completions"
//! (README). So the hook veil installs ([`install`]) reports where a panic happened and on which
//! thread, prints the message only when it is a string literal of veil's source (a
//! `&'static str` payload, which cannot hold runtime data), and withholds every formatted one.
//! The backtrace follows when `RUST_BACKTRACE` asks for it (frames carry no data). The line
//! keeps std's "thread '…' panicked at" wording, which tests and operators grep for.

use std::any::Any;
use std::io::Write;

/// Replaces the process's panic hook with one that writes [`report`] to stderr.
pub(super) fn install() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        // As std's own hook: RUST_BACKTRACE decides (Backtrace::capture would let
        // RUST_LIB_BACKTRACE, meant for error values, decide instead).
        let wanted = std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0");
        let backtrace = wanted.then(std::backtrace::Backtrace::force_capture);
        let mut out = std::io::stderr().lock();
        report(
            info.payload(),
            thread.name().unwrap_or("unnamed"),
            location.as_deref(),
            &mut out,
        );
        if let Some(backtrace) = backtrace {
            let _ = writeln!(out, "{backtrace}");
        }
    }));
}

/// Writes one panic's report line: thread, location, and the message only when `payload` is a
/// `&'static str` (a literal in veil's source). Never fails (a broken stderr loses the line).
pub(super) fn report(
    payload: &(dyn Any + Send),
    thread: &str,
    location: Option<&str>,
    out: &mut dyn Write,
) {
    let location = location.unwrap_or("an unknown location");
    let message = match payload.downcast_ref::<&'static str>() {
        Some(literal) => format!("'{literal}'"),
        None => "withheld (a formatted message may quote the data being processed)".to_string(),
    };
    let _ = writeln!(
        out,
        "veil: thread '{thread}' panicked at {location}; message: {message}. This is a bug: \
         please report it with this line (RUST_BACKTRACE=1 adds a backtrace)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload_of(f: impl FnOnce() + std::panic::UnwindSafe) -> Box<dyn Any + Send> {
        // The default hook would print the message this test checks is withheld.
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|_| {}));
        let payload = std::panic::catch_unwind(f).unwrap_err();
        std::panic::set_hook(hook);
        payload
    }

    #[test]
    fn a_formatted_message_that_quotes_content_is_withheld_and_a_literal_is_shown() {
        // A string sliced inside a character: std's message quotes the string.
        let secret = String::from("card 4111 1111 1111 1111 ünïcode");
        let cut = secret.find('ü').unwrap() + 1;
        let payload = payload_of(move || {
            let _ = &secret[..cut];
        });
        let default_message = payload.downcast_ref::<String>().unwrap();
        assert!(
            default_message.contains("4111 1111"),
            "std's message quotes the data: {default_message}"
        );
        let mut out = Vec::new();
        report(&*payload, "veil-pipeline-0", Some("src/x.rs:1:2"), &mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(!line.contains("4111"), "{line}");
        assert!(line.contains("withheld"), "{line}");
        assert!(
            line.contains("thread 'veil-pipeline-0' panicked at"),
            "{line}"
        );
        assert!(line.contains("src/x.rs:1:2"), "{line}");

        let payload = payload_of(|| panic!("invariant: a literal"));
        let mut out = Vec::new();
        report(&*payload, "main", None, &mut out);
        let line = String::from_utf8(out).unwrap();
        assert!(line.contains("'invariant: a literal'"), "{line}");
        assert!(line.contains("an unknown location"), "{line}");
    }
}
