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

/// How long a recording thread computes before it offers its core to a thread waiting for
/// it ([`Courtesy`]).
pub const COURTESY_SLICE: std::time::Duration = std::time::Duration::from_micros(100);

/// How long a recording thread may go without waiting for work and still offer its core
/// ([`Courtesy`]): past it the thread is behind (a backlog), and keeps the share of the cores
/// its niceness gives it.
pub const COURTESY_BUSY: std::time::Duration = std::time::Duration::from_millis(10);

/// A recording thread's offer of its core, made between items of work (an exchange built, a
/// ledger row inserted, a sealed exchange indexed, a record added to an OTLP batch): once
/// [`COURTESY_SLICE`] has passed since the last offer, or since the thread last waited for
/// work, it calls `sched_yield`, so a thread woken onto this core (a forwarding thread, or the
/// app and upstream when they share the machine) runs now instead of when the scheduler next
/// looks, which can be milliseconds later.
///
/// Why: nice 10 is not enough. With the EEVDF scheduler (Linux 6.6+) a task just picked keeps
/// its core for its slice ("run to parity") even when a nice-0 task wakes onto it, and with
/// a 250 Hz tick the next check can be 4 ms away. Traced at one connection in
/// `benches/load.sh` (`LOAD_TIMELINE`, docs/performance.md): the slowest requests waited
/// 2-4 ms for a core while the ledger writer (nice 10) inserted a group of rows, the other
/// core idle. A nice-10 process computing in 3 ms bursts delayed a remotely woken nice-0
/// reader by 3.0 ms at p99; yielding every 100 µs, 0.3-0.5 ms (no hog at all: 0.7 ms, the idle
/// core's wake-up). With no other thread runnable, `sched_yield` returns at once (about 1 µs
/// on that machine), so a busy thread pays about 1 % of its CPU for the offers.
///
/// Only while the thread keeps up: once it has gone [`COURTESY_BUSY`] without waiting for
/// work it stops offering until it next waits. Under saturation the forwarding threads always
/// want the core, and a recording thread that yielded to them every 100 µs got less than its
/// niceness's share: at 64 connections best-effort recorded 38 % of exchanges against 71 %
/// without yields (same run).
#[derive(Debug)]
pub struct Courtesy {
    since: std::time::Instant,
    rested_at: std::time::Instant,
    slice: std::time::Duration,
    busy: std::time::Duration,
    offered: u64,
}

impl Default for Courtesy {
    fn default() -> Self {
        Courtesy::every(COURTESY_SLICE, COURTESY_BUSY)
    }
}

impl Courtesy {
    /// Offers the core once `slice` has passed since the last offer, while the thread last
    /// waited for work less than `busy` ago.
    pub fn every(slice: std::time::Duration, busy: std::time::Duration) -> Courtesy {
        let now = std::time::Instant::now();
        Courtesy {
            since: now,
            rested_at: now,
            slice,
            busy,
            offered: 0,
        }
    }

    /// Between two items of work: yields the core if the slice has passed and the thread is
    /// not behind (one clock read otherwise).
    #[inline]
    pub fn offer(&mut self) {
        let now = std::time::Instant::now();
        if now.duration_since(self.since) < self.slice {
            return;
        }
        if now.duration_since(self.rested_at) < self.busy {
            std::thread::yield_now();
            self.offered += 1;
        }
        self.since = std::time::Instant::now();
    }

    /// The thread's next item of work from its queue: `take(false)` must return one already
    /// waiting without blocking, `take(true)` may block for one (`None` from it: the queue is
    /// closed). Only an item the thread had to wait for counts as [`Courtesy::rested`]; one
    /// already waiting is a backlog.
    pub fn next<T>(&mut self, mut take: impl FnMut(bool) -> Option<T>) -> Option<T> {
        take(false).or_else(|| {
            let item = take(true);
            self.rested();
            item
        })
    }

    /// After the thread waited for work (it may have slept): the core was someone else's
    /// meanwhile, so the next slice starts now, and the thread is keeping up.
    #[inline]
    pub fn rested(&mut self) {
        let now = std::time::Instant::now();
        self.since = now;
        self.rested_at = now;
    }

    /// How many times the core was offered.
    pub fn offered(&self) -> u64 {
        self.offered
    }
}

/// Turns transparent huge pages off for this process (`prctl(PR_SET_THP_DISABLE)`), unless
/// `VEIL_ALLOW_THP` is set. Called first in `main`: memory already backed by huge pages stays
/// so.
///
/// Why: on a kernel whose THP mode is `always` (or `madvise`, for an allocator that asks, as
/// mimalloc did: veil's allocator until stop 50), each allocator arena that is touched at all
/// costs 2 MiB of RSS. Measured with mimalloc on this project's 2-core machine (`cargo bench
/// --bench load`, and an idle `veil run`): at start 48.6 MB with huge pages, 30.0 MB without
/// (anonymous memory 32.6 → 13.7 MB); with 1,000 idle intercepted connections 122 MB → 81 MB;
/// throughput within the run's noise. jemalloc does not ask by default, so under `madvise`
/// this changes nothing. The flag is per process and inherited by children. A failure (a
/// kernel without the flag) is ignored: it costs memory, never correctness.
pub fn without_transparent_huge_pages() {
    if std::env::var_os("VEIL_ALLOW_THP").is_some() {
        return;
    }
    let _ = rustix::thread::disable_transparent_huge_pages(true);
}

/// How long jemalloc keeps freed pages before giving them back to the kernel, milliseconds
/// (`dirty_decay_ms`; jemalloc's default is 10,000).
pub const FREED_PAGES_DECAY_MS: isize = 1_000;

/// Makes the allocator give freed memory back to the kernel within a second or two of its
/// being freed, from one jemalloc background thread, so that a thread that goes idle after a
/// burst (a recording thread waiting for the next exchange) does not keep the pages it freed:
/// only what its thread cache holds (small objects, up to 32 KiB each) waits for its next run.
/// Returns whether the settings were applied: `Ok(false)` when jemalloc's own options are
/// given (`_RJEM_MALLOC_CONF`, or the `/etc/_rjem_malloc.conf` symlink: jemalloc read them at
/// start, and they decide) or when veil is built without the `jemalloc` feature; `Err` names
/// the setting jemalloc refused. Called first in `main`, before any other thread exists, so
/// every arena gets the setting. A failure costs memory, never correctness, so `main` ignores
/// it.
///
/// The settings (jemalloc's `mallctl` names, <https://jemalloc.net/jemalloc.3.html>):
/// `arenas.dirty_decay_ms` and `arena.<i>.dirty_decay_ms` = [`FREED_PAGES_DECAY_MS`] (new
/// arenas, and the ones that exist already; jemalloc purges along a curve over that time and
/// its thread may sleep up to a second more between passes), `muzzy_decay_ms` = 0 (jemalloc's
/// default, set so the operator's file cannot half-apply: a purged page is returned with
/// `MADV_DONTNEED` at once, so it leaves the RSS), `max_background_threads` = 1 (jemalloc
/// would start up to 4; one serves every arena of a small proxy) and `background_thread` =
/// true (purging happens on jemalloc's own thread on time, not only when the owning thread
/// next allocates).
///
/// Why: measured with `benches/load.sh` on this project's 2-core machine (docs/performance.md,
/// stop 50's round): veil at rest after 22,000 exchanges 36-37 MB against 45-55 with mimalloc
/// (which keeps an idle thread's freed pages until that thread allocates again), with 1,000
/// idle connections 46 MB against 57, at the same instructions per exchange.
#[cfg(feature = "jemalloc")]
pub fn return_freed_memory_promptly() -> Result<bool, String> {
    use tikv_jemalloc_ctl::{Access, AsName};
    if std::env::var_os("_RJEM_MALLOC_CONF").is_some()
        || std::fs::symlink_metadata("/etc/_rjem_malloc.conf").is_ok()
    {
        return Ok(false);
    }
    let refused = |name: &str, e: tikv_jemalloc_ctl::Error| format!("jemalloc refused {name}: {e}");
    b"arenas.dirty_decay_ms\0"
        .name()
        .write(FREED_PAGES_DECAY_MS)
        .map_err(|e| refused("arenas.dirty_decay_ms", e))?;
    b"arenas.muzzy_decay_ms\0"
        .name()
        .write(0isize)
        .map_err(|e| refused("arenas.muzzy_decay_ms", e))?;
    // The arenas made before this call (arena 0 at least) keep the value they were made with.
    let arenas =
        tikv_jemalloc_ctl::arenas::narenas::read().map_err(|e| refused("arenas.narenas", e))?;
    let mut dirty = b"arena.0.dirty_decay_ms\0"
        .name()
        .mib::<[usize; 3]>()
        .map_err(|e| refused("arena.0.dirty_decay_ms", e))?;
    let mut muzzy = b"arena.0.muzzy_decay_ms\0"
        .name()
        .mib::<[usize; 3]>()
        .map_err(|e| refused("arena.0.muzzy_decay_ms", e))?;
    for i in 0..arenas as usize {
        dirty[1] = i;
        muzzy[1] = i;
        // An arena no thread has chosen yet does not exist (EFAULT); it is made with the
        // defaults written above.
        let _ = dirty.write(FREED_PAGES_DECAY_MS);
        let _ = muzzy.write(0isize);
    }
    // The thread count can be set only while background threads are off (they are: veil
    // starts them here).
    tikv_jemalloc_ctl::max_background_threads::write(1)
        .map_err(|e| refused("max_background_threads", e))?;
    tikv_jemalloc_ctl::background_thread::write(true)
        .map_err(|e| refused("background_thread", e))?;
    Ok(true)
}

/// Without the `jemalloc` feature there is nothing to set: `Ok(false)`.
#[cfg(not(feature = "jemalloc"))]
pub fn return_freed_memory_promptly() -> Result<bool, String> {
    Ok(false)
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

/// Writes `data` to `path` with mode 0600 from the start, through a temp file beside it
/// ([`temp_beside`]), an fsync, a rename and an fsync of the directory: a reader, or a crash,
/// sees the old file or the whole new one (a rewrite that erases must not come back after a
/// crash), and a symlink at `path` is replaced rather than followed. On error the temp file
/// is removed and `path` is untouched.
///
/// # Errors
/// The I/O error, its message prefixed with the path it concerns.
pub fn replace_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = temp_beside(path)?;
    let written = (|| {
        let mut f = create_private(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(|e| with_path(path, e))
}

/// A temp path beside `path` (`.NAME.veil-tmp-PID`), any stale file there removed first (a
/// stale file or a planted symlink must not lend it its mode or target).
///
/// # Errors
/// `path` has no file name, or its directory does not exist; the stale file cannot be removed.
pub fn temp_beside(path: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{}: not a file name", path.display())))?;
    // Said about the file asked for, not about the hidden temp name the open would fail on.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && !dir.is_dir()
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "{}: the directory {} does not exist",
                path.display(),
                dir.display()
            ),
        ));
    }
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".veil-tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(with_path(&tmp, e)),
        _ => Ok(tmp),
    }
}

/// Creates `path` (which must not exist) for writing, mode 0600.
///
/// # Errors
/// The I/O error (`AlreadyExists` when it exists), prefixed with the path.
pub fn create_private(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| with_path(path, e))
}

/// `e` with `path` in front of its message (`<path>: <e>`), its kind kept.
pub(crate) fn with_path(path: &std::path::Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The settings `main` makes are the ones jemalloc then reports, for an arena that existed
    /// before the call and for one made after it. (Assumes jemalloc's options are not given
    /// in the environment, as in CI: then the function rightly sets nothing.)
    #[cfg(feature = "jemalloc")]
    #[test]
    fn the_allocator_is_set_to_give_freed_pages_back_within_a_second() {
        use tikv_jemalloc_ctl::{Access, AsName};
        assert_eq!(return_freed_memory_promptly(), Ok(true));
        assert!(tikv_jemalloc_ctl::background_thread::read().unwrap());
        assert_eq!(tikv_jemalloc_ctl::max_background_threads::read(), Ok(1));
        let read = |name: &[u8]| -> isize { name.name().read().unwrap() };
        assert_eq!(read(b"arenas.dirty_decay_ms\0"), FREED_PAGES_DECAY_MS);
        assert_eq!(read(b"arenas.muzzy_decay_ms\0"), 0);
        // Arena 0 exists from jemalloc's start, made with the 10 s default.
        assert_eq!(read(b"arena.0.dirty_decay_ms\0"), FREED_PAGES_DECAY_MS);
        assert_eq!(read(b"arena.0.muzzy_decay_ms\0"), 0);
        // An arena made now (as a thread's first allocation makes one) gets the default.
        let made: u32 = b"arenas.create\0".name().read().unwrap();
        let mut dirty = b"arena.0.dirty_decay_ms\0"
            .name()
            .mib::<[usize; 3]>()
            .unwrap();
        dirty[1] = made as usize;
        assert_eq!(
            Access::<isize>::read(&dirty),
            Ok(FREED_PAGES_DECAY_MS),
            "arena {made}"
        );
    }

    #[test]
    fn a_temp_file_in_a_missing_directory_is_an_error_about_that_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("x.jsonl");
        let err = super::temp_beside(&path).unwrap_err().to_string();
        assert!(err.contains("missing does not exist"), "{err}");
        assert!(!err.contains("veil-tmp"), "{err}");
        assert!(super::temp_beside(&dir.path().join("x.jsonl")).is_ok());
    }

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
    fn courtesy_offers_the_core_once_a_slice_has_passed_and_not_after_a_rest() {
        let slice = std::time::Duration::from_millis(20);
        let mut c = Courtesy::every(slice, std::time::Duration::from_secs(60));
        c.offer();
        assert_eq!(c.offered(), 0, "within the slice: no yield");
        std::thread::sleep(slice);
        c.offer();
        assert_eq!(c.offered(), 1, "a slice passed: one yield");
        c.offer();
        assert_eq!(c.offered(), 1, "the next slice starts at the yield");
        std::thread::sleep(slice);
        c.rested();
        c.offer();
        assert_eq!(
            c.offered(),
            1,
            "waiting for work was the rest: no yield right after"
        );
        assert!(Courtesy::default().slice == COURTESY_SLICE);
        assert!(Courtesy::default().busy == COURTESY_BUSY);
    }

    #[test]
    fn courtesy_counts_only_a_wait_for_work_as_rest() {
        let slice = std::time::Duration::from_millis(5);
        let mut c = Courtesy::every(slice, std::time::Duration::from_millis(30));
        let mut queue = vec![1, 2];
        // 40 ms without waiting: behind; an item already waiting keeps it so.
        std::thread::sleep(std::time::Duration::from_millis(40));
        assert_eq!(c.next(|_| queue.pop()), Some(2));
        std::thread::sleep(slice);
        c.offer();
        assert_eq!(c.offered(), 0, "a backlog is no rest");
        // The queue empty: the blocking take is a wait, so the thread keeps up again.
        queue.clear();
        assert_eq!(c.next(|block| block.then_some(3)), Some(3));
        std::thread::sleep(slice);
        c.offer();
        assert_eq!(c.offered(), 1, "after a wait for work it offers again");
    }

    #[test]
    fn courtesy_stops_offering_once_the_thread_is_behind_until_it_rests() {
        let slice = std::time::Duration::from_millis(5);
        let mut c = Courtesy::every(slice, std::time::Duration::from_millis(30));
        std::thread::sleep(slice);
        c.offer();
        assert_eq!(c.offered(), 1, "keeping up: offered");
        // 40 ms without waiting for work: behind.
        std::thread::sleep(std::time::Duration::from_millis(40));
        c.offer();
        assert_eq!(c.offered(), 1, "behind: the core is kept");
        c.rested();
        std::thread::sleep(slice);
        c.offer();
        assert_eq!(c.offered(), 2, "after a wait for work it offers again");
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
