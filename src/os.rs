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
}
