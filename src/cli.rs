//! # The `veil` command line: parses arguments and calls the library.

use std::process::ExitCode;

/// Entry point of the `veil` binary.
pub fn main() -> ExitCode {
    ExitCode::SUCCESS
}
