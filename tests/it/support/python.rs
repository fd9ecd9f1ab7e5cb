//! The Python interpreter the SDK tests drive: a virtual environment with
//! `tests/python/requirements.txt` installed, never a guess that passes when it is missing.
//!
//! Found as `$VEIL_PYTHON` (set by `.ci/run` to its venv), else `<repo>/.venv/bin/python3`
//! (`python3 -m venv .venv && .venv/bin/pip install -r tests/python/requirements.txt`), else
//! `python3` on `PATH`. The tests that need it are `#[ignore]`d, so a plain `cargo test`
//! lists them as ignored; `cargo test -- --include-ignored` (what `.ci/run` does) runs them,
//! and then a missing interpreter or package fails the test instead of passing it unrun.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Why the SDK tests are ignored by default: libtest prints it beside `ignored`.
pub const IGNORED: &str = "needs the Python SDKs: python3 -m venv .venv && .venv/bin/pip install -r tests/python/requirements.txt, then cargo test -- --include-ignored";

/// The interpreter to run (see the module docs for the order).
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("VEIL_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python3");
    if venv.is_file() {
        return venv;
    }
    PathBuf::from("python3")
}

/// Panics, naming the interpreter and the fix, unless it can import `modules` (`"openai,
/// anthropic"`). Python's own traceback is kept for the panic message, not spilled on the
/// terminal where it would sit above a passing test.
pub fn require(modules: &str) {
    let python = python();
    let out = Command::new(&python)
        .args(["-c", &format!("import {modules}")])
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "{} cannot import {modules}: {IGNORED}\n{}",
            python.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("cannot run {}: {e}; {IGNORED}", python.display()),
    }
}
