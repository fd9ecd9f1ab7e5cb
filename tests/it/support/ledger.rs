//! Reading the ledger of a running (or stopped) veil through its own commands: `veil sql` and
//! `veil report` with `--format json`, bounded waits for rows to commit.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use super::process::veil;

/// stdout and stderr as text.
pub fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Runs `veil ARGS` in `cwd`, which must succeed, and parses its stdout as JSON.
pub fn json(args: &[&str], cwd: &Path) -> serde_json::Value {
    let out = veil(args, cwd);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "veil {args:?}: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Polls `veil sql` until the ledger of `cwd/data` holds `n` exchanges (bounded: 20 s).
pub fn wait_for_rows(cwd: &Path, n: u64) {
    wait_for_rows_in(cwd, &cwd.join("data"), n);
}

/// [`wait_for_rows`] for the ledger of the data dir `data`.
pub fn wait_for_rows_in(cwd: &Path, data: &Path, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let data = data.to_str().expect("a UTF-8 test path");
    loop {
        let out = veil(
            &[
                "sql",
                "SELECT COUNT(*) AS n FROM exchanges",
                "--format",
                "json",
                "--data",
                data,
            ],
            cwd,
        );
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if v[0]["n"] == n {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "ledger never reached {n} rows: {:?}",
            text(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
