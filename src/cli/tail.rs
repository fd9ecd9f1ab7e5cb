//! # `veil tail`: print the records ledger, one readable line per exchange, and follow it.
//!
//! The operator's end of the records ledger: [`crate::export::tail`] reads and renders the
//! lines; this prints them (control characters neutralized) and polls for more with `-f`.
//! Never writes anything but stdout and stderr, never touches the network.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use super::table::printable;
use crate::export::tail::Follower;

/// Poll interval while following: short enough to feel live, long enough to cost nothing.
const POLL: Duration = Duration::from_millis(500);

/// Arguments of `veil tail`.
#[derive(Debug, Clone)]
pub struct TailArgs {
    /// Keep running and print exchanges as they are recorded.
    pub follow: bool,
    /// Print the last N exchanges first (0 = none).
    pub lines: usize,
}

/// Runs `veil tail`: prints the last `args.lines` exchanges, then follows when asked.
pub(crate) fn run_tail(args: TailArgs, data_dir: &Path) -> anyhow::Result<ExitCode> {
    let mut follower = Follower::new(data_dir);
    let stdout = std::io::stdout();
    if !follower.dir().exists() && !args.follow {
        eprintln!(
            "veil tail: no records yet in {} (records files are written here with `records_files = true`, or when the ledger is off)",
            follower.dir().display()
        );
        return Ok(ExitCode::from(1));
    }
    let first = follower.poll()?;
    let skip = first.len().saturating_sub(args.lines);
    {
        let mut out = stdout.lock();
        for line in &first[skip..] {
            writeln!(out, "{}", printable(line))?;
        }
    }
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    loop {
        std::thread::sleep(POLL);
        let lines = follower.poll()?;
        let mut out = stdout.lock();
        for line in lines {
            if writeln!(out, "{}", printable(&line)).is_err() {
                // The reader went away (`veil tail -f | head`): stop quietly.
                return Ok(ExitCode::SUCCESS);
            }
        }
        if out.flush().is_err() {
            return Ok(ExitCode::SUCCESS);
        }
    }
}
