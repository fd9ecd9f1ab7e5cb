//! The `veil` binary: everything lives in the library; see `veil::cli`.
fn main() -> std::process::ExitCode {
    // First: pages already backed by huge pages stay so (see the function for the numbers).
    veil::os::without_transparent_huge_pages();
    veil::cli::main()
}
