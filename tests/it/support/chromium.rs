//! Headless Chromium (Debian's `chromium`) as an independent judge of a page veil wrote: it
//! loads the file, logs every console message (CSP violations and script errors are console
//! messages) to stderr, dumps the DOM it built and takes a screenshot. Each run is bounded in
//! time; on timeout its process group (its own, made at spawn) is killed by id.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest a page may take to render (a cold start on a loaded 2-core machine takes ~5 s).
const RENDER_TIMEOUT: Duration = Duration::from_secs(90);

/// `None` after a visible notice, or a panic under `CI=true` (so CI never passes a test that
/// did not run): the pattern of `Tmpfs::mount` in `hostile/disk.rs`.
fn skip<T>(test: &str, why: &str) -> Option<T> {
    let msg = format!("{test}: {why}; this test did NOT run");
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{msg} (mandatory under CI=true: .ci/run installs it)");
    }
    eprintln!("NOTICE: {msg}");
    None
}

/// The browser binary.
#[derive(Debug)]
pub struct Chromium {
    bin: PathBuf,
}

/// What Chromium made of a page.
#[derive(Debug)]
pub struct Rendered {
    /// The DOM after loading (`--dump-dom`).
    pub dom: String,
    /// Chromium's log (`--enable-logging=stderr`): console messages are `…:CONSOLE…` lines.
    pub log: String,
    /// The screenshot (`--screenshot`), PNG.
    pub png: PathBuf,
}

impl Rendered {
    /// The console messages the page caused (CSP violations, script errors, `console.*`).
    pub fn console(&self) -> Vec<&str> {
        self.log
            .lines()
            .filter(|l| l.contains(":CONSOLE"))
            .collect()
    }
}

impl Chromium {
    /// Finds `chromium` (or `chromium-browser`) on `PATH`; see [`skip`] when absent.
    pub fn find(test: &str) -> Option<Chromium> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        for dir in std::env::split_paths(&path) {
            for name in ["chromium", "chromium-browser"] {
                let bin = dir.join(name);
                if bin.is_file() {
                    return Some(Chromium { bin });
                }
            }
        }
        skip(test, "chromium is not installed (apt-get install chromium)")
    }

    /// Loads `page` (a local file, through `file://`) in a 1200×2000 window; files go under
    /// `work` (profile, screenshot, logs).
    pub fn render(&self, page: &Path, work: &Path) -> Rendered {
        use std::os::unix::process::CommandExt;
        let page = page.canonicalize().expect("the page exists");
        let png = work.join("screenshot.png");
        let (out, err) = (work.join("dom.html"), work.join("chromium.log"));
        let mut child = Command::new(&self.bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--no-default-browser-check",
                // Nothing but the page: no updates, metrics or other background fetches.
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--window-size=1200,2000",
                "--enable-logging=stderr",
                "--v=0",
                "--dump-dom",
            ])
            .arg(format!(
                "--user-data-dir={}",
                work.join("profile").display()
            ))
            .arg(format!("--screenshot={}", png.display()))
            .arg(format!("file://{}", page.display()))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            // Its own process group, so a timeout ends the browser and every helper it forked.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", self.bin.display()));
        let group = rustix::process::Pid::from_child(&child);
        let deadline = Instant::now() + RENDER_TIMEOUT;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
                let _ = child.wait();
                panic!(
                    "chromium did not finish within {RENDER_TIMEOUT:?}; killed; its log:\n{}",
                    std::fs::read_to_string(&err).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // Helpers outlive the browser only by accident; they are ours to end.
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
        let log = std::fs::read_to_string(&err).unwrap_or_default();
        assert!(status.success(), "chromium failed ({status}):\n{log}");
        Rendered {
            dom: std::fs::read_to_string(&out).unwrap(),
            log,
            png,
        }
    }
}

/// Pixels of a PNG screenshot: `(width, height, all, not background, chromatic)`, where the
/// background is the top-left pixel's colour and chromatic means a channel spread over 60
/// (a coloured bar, not text or grid lines in grey).
pub fn pixels(png_path: &Path) -> (u32, u32, u64, u64, u64) {
    let file = std::fs::File::open(png_path).unwrap();
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert!(
        channels >= 3,
        "colour screenshot expected, got {:?}",
        info.color_type
    );
    let data = &buf[..info.buffer_size()];
    let bg = &data[..3];
    let (mut differ, mut chromatic) = (0u64, 0u64);
    for px in data.chunks_exact(channels) {
        let rgb = &px[..3];
        if rgb != bg {
            differ += 1;
        }
        let (max, min) = (*rgb.iter().max().unwrap(), *rgb.iter().min().unwrap());
        if max - min > 60 {
            chromatic += 1;
        }
    }
    let all = u64::from(info.width) * u64::from(info.height);
    (info.width, info.height, all, differ, chromatic)
}
