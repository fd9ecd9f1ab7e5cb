//! # Small OS helpers the standard library lacks.

/// Niceness of the recording threads (pipeline, exporter, seal writer) in best-effort mode:
/// forwarding keeps nice 0, so when the cores are busy the scheduler gives it ~9 times the
/// CPU of recording (CFS weights 1024 : 110). Recording catches up when load drops; past its
/// queue it drops exchanges, counted and logged, as best-effort promises.
pub const RECORDING_NICE: i32 = 10;

/// Lowers the calling thread's scheduling priority to `nice` (Linux: niceness is per thread);
/// never raises it (a thread already nicer stays so; `0` is a no-op). Lowering never needs
/// privileges; a failure is logged and ignored: priority is an optimisation, never a reason to
/// stop.
pub fn lower_thread_priority(nice: i32) {
    if nice <= 0 || thread_niceness() >= nice {
        return;
    }
    let tid = rustix::thread::gettid();
    if let Err(e) = rustix::process::setpriority_process(Some(tid), nice) {
        tracing::debug!(error = %e, nice, "could not lower the thread's priority");
    }
}

/// The current thread's niceness (for tests).
pub fn thread_niceness() -> i32 {
    rustix::process::getpriority_process(Some(rustix::thread::gettid())).unwrap_or(0)
}

/// Cuts a torn last line off a line-oriented file (one whose last byte is not `\n`): a write
/// that stopped half-way (ENOSPC, a crash) must not leave half a line for the next append to be
/// glued onto. Returns how many bytes were cut (0 when the file ends at a line boundary or is
/// empty). Reads backwards from the end in 64 KiB steps, so it costs one `pread` when the file
/// is whole.
pub fn truncate_torn_line(file: &std::fs::File) -> std::io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(0);
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    if last[0] == b'\n' {
        return Ok(0);
    }
    let mut end = len;
    let mut buf = vec![0u8; 64 << 10];
    let keep = loop {
        if end == 0 {
            break 0;
        }
        let start = end.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(end - start) as usize];
        file.read_exact_at(chunk, start)?;
        if let Some(i) = chunk.iter().rposition(|&b| b == b'\n') {
            break start + i as u64 + 1;
        }
        end = start;
    };
    file.set_len(keep)?;
    Ok(len - keep)
}

/// Appends `lines` (whole `\n`-terminated lines) to `file`, opened with `O_APPEND` and written
/// by this process only, all or nothing: when the write fails part-way (ENOSPC) or, with
/// `sync`, the `fdatasync` fails, the file is cut back to its length before the call and the
/// error returned, so no torn line is left behind. If even the cut fails the torn tail stays,
/// and [`truncate_torn_line`] before the next append removes it.
pub fn append_lines(file: &std::fs::File, lines: &[u8], sync: bool) -> std::io::Result<()> {
    use std::io::Write;
    let before = file.metadata()?.len();
    let written = (&*file)
        .write_all(lines)
        .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
    if let Err(e) = written {
        // Only this writer appends, so `before` is still where our bytes begin.
        let _ = file.set_len(before);
        return Err(e);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowers_only_the_calling_thread() {
        let before = thread_niceness();
        let inner = std::thread::spawn(|| {
            lower_thread_priority(RECORDING_NICE);
            thread_niceness()
        })
        .join()
        .unwrap();
        assert_eq!(inner, before.max(RECORDING_NICE));
        assert_eq!(
            thread_niceness(),
            before,
            "the caller's thread is untouched"
        );
        // 0 is a no-op.
        let same = std::thread::spawn(|| {
            lower_thread_priority(0);
            thread_niceness()
        })
        .join()
        .unwrap();
        assert_eq!(same, before);
    }

    #[test]
    fn torn_line_is_cut_and_whole_lines_kept() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.jsonl");
        let open = || {
            std::fs::OpenOptions::new()
                .read(true)
                .append(true)
                .create(true)
                .open(&path)
                .unwrap()
        };
        // Empty and whole files are left alone.
        assert_eq!(truncate_torn_line(&open()).unwrap(), 0);
        open().write_all(b"{\"a\":1}\n").unwrap();
        assert_eq!(truncate_torn_line(&open()).unwrap(), 0);
        // A half line after whole ones is cut back to the last newline.
        open().write_all(b"{\"b\":").unwrap();
        assert_eq!(truncate_torn_line(&open()).unwrap(), 5);
        append_lines(&open(), b"{\"c\":3}\n", true).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"c\":3}\n"
        );
        // A torn line longer than one read step, with no newline at all before it.
        std::fs::write(&path, vec![b'x'; 200_000]).unwrap();
        assert_eq!(truncate_torn_line(&open()).unwrap(), 200_000);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
    }
}
