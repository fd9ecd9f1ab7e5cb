//! The `veil` binary: everything lives in the library; see `veil::cli`.
fn main() -> std::process::ExitCode {
    // First: pages already backed by huge pages stay so (see the function for the numbers).
    veil::os::without_transparent_huge_pages();
    // Before any other thread starts, so every arena gets the setting; a refusal costs memory
    // at rest, never correctness.
    let _ = veil::os::return_freed_memory_promptly();
    veil::cli::main()
}
