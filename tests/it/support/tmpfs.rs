//! Small file systems mounted for one test, so "disk full" is a real ENOSPC from the kernel and
//! "read-only" a real EROFS (which root, unlike a `chmod`, cannot write through). Mounting needs
//! root: without it a test prints a visible NOTICE and checks nothing, and under `CI=true` it
//! fails instead, so CI never passes a test that did not run.

use std::path::Path;
use std::process::Command;

/// A tmpfs mounted for one test. Unmounted on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
}

/// Prints why a test did not run, or panics under `CI=true`. Always `None`.
pub fn skip<T>(test: &str, why: String) -> Option<T> {
    let msg = format!("{test}: {why}; this test did NOT run");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg} (mandatory under CI=true: run the tests as root)");
    }
    eprintln!("NOTICE: {msg}");
    None
}

fn mount(test: &str, args: &[&str], target: &Path) -> Option<()> {
    if !rustix::process::geteuid().is_root() {
        return skip(test, "needs root to mount".into());
    }
    match Command::new("mount").args(args).arg(target).output() {
        Ok(o) if o.status.success() => Some(()),
        Ok(o) => skip(
            test,
            format!(
                "mount {args:?} failed: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
        ),
        Err(e) => skip(test, format!("cannot run mount: {e}")),
    }
}

fn unmount(target: &Path) {
    let ok = Command::new("umount")
        .arg(target)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let _ = Command::new("umount").arg("-l").arg(target).status();
    }
}

impl Tmpfs {
    /// A writable tmpfs of `size` (`16m`), mode 0700; `None` (with a notice) without root.
    pub fn mount(test: &str, size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let opts = format!("size={size},mode=0700");
        mount(test, &["-t", "tmpfs", "-o", &opts, "tmpfs"], dir.path())?;
        Some(Tmpfs { dir })
    }

    /// An empty read-only tmpfs: every write under it fails with EROFS, also for root.
    pub fn mount_read_only(test: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        mount(
            test,
            &["-t", "tmpfs", "-o", "ro,size=1m,mode=0700", "tmpfs"],
            dir.path(),
        )?;
        Some(Tmpfs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system to the last byte.
    pub fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path().join("filler")).unwrap();
        let chunk = vec![0xa5u8; 64 << 10];
        while f.write(&chunk).is_ok_and(|n| n > 0) {}
        while f.write(&[0xa5]).is_ok_and(|n| n > 0) {}
    }

    /// Gives the space back (truncated first: a child spawned meanwhile may hold the file).
    pub fn free(&self) {
        let filler = self.path().join("filler");
        std::fs::OpenOptions::new()
            .write(true)
            .open(&filler)
            .and_then(|f| f.set_len(0))
            .unwrap();
        std::fs::remove_file(&filler).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        unmount(self.dir.path());
    }
}

/// `file` bind-mounted read-only onto itself: opening it for writing fails with EROFS, also
/// for root, while its directory stays writable. Unmounted on drop.
pub struct ReadOnlyFile {
    path: std::path::PathBuf,
}

impl ReadOnlyFile {
    pub fn bind(test: &str, file: &Path) -> Option<ReadOnlyFile> {
        let src = file.to_str().expect("a UTF-8 test path");
        mount(test, &["--bind", src], file)?;
        let f = ReadOnlyFile {
            path: file.to_path_buf(),
        };
        // Older mount(8)s ignore `ro` on the first --bind; a remount applies it (and on
        // failure, dropping `f` undoes the bind).
        mount(test, &["-o", "remount,bind,ro"], file)?;
        Some(f)
    }
}

impl Drop for ReadOnlyFile {
    fn drop(&mut self) {
        unmount(&self.path);
    }
}
