//! `veil report --format html` through the real binary: traffic in with curl (hostile feature
//! tags and model names included), the page out, and headless Chromium as the judge: no
//! console message (so no CSP violation), six charts in the DOM it built, no element an
//! attacker string tried to inject, and a screenshot with coloured bars in it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::chromium::{Chromium, pixels};
use crate::support::mock_llm::{Alpn, Mock};
use crate::support::process::{VeilProcess, curl_chat, resolve_args, veil};

const SCRIPT: &str = "<script>alert(1)</script>";
const IMG: &str = "\"><img src=x onerror=alert(1)>";
const SVG_MODEL: &str = "<svg onload=alert(3)>";
const USERS: [&str; 2] = ["raw-user-zed-4417", "raw-user-yu-9902"];

fn start(mock: &Mock, cwd: &Path) -> VeilProcess {
    let mut args = resolve_args(mock.addr);
    args.extend([
        "--upstream-ca".to_string(),
        mock.ca_path.display().to_string(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    VeilProcess::start(&args, cwd)
}

fn ok(args: &[&str], cwd: &Path) -> String {
    let out = veil(args, cwd);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "veil {args:?}: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Polls `veil sql` until the ledger holds `n` exchanges (bounded).
fn wait_for_rows(cwd: &Path, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = veil(
            &[
                "sql",
                "SELECT COUNT(*) AS n FROM exchanges",
                "--format",
                "json",
            ],
            cwd,
        );
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            if v[0]["n"] == n {
                return;
            }
        }
        assert!(Instant::now() < deadline, "ledger never reached {n} rows");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn escaped(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn html_report_is_one_safe_offline_page_that_chromium_draws_without_complaint() {
    const TEST: &str = "html_report_is_one_safe_offline_page_that_chromium_draws_without_complaint";
    let mock = Mock::start(Alpn::H2AndHttp1).await;
    let cwd = tempfile::tempdir().unwrap();
    let mut proc = start(&mock, cwd.path());
    let chat = |model: &str, prompt: &str| {
        serde_json::json!({"model": model, "messages": [{"role": "user", "content": prompt}]})
            .to_string()
    };
    let calls = [
        (SCRIPT, "gpt-4o-mini", Some(USERS[0])),
        (SCRIPT, "gpt-4o-mini", Some(USERS[0])),
        (IMG, "gpt-4o", Some(USERS[1])),
        (IMG, "gpt-4o", Some(USERS[1])),
        // An unpriced model whose name is markup, and no user.
        ("search", SVG_MODEL, None),
    ];
    for (i, (feature, model, user)) in calls.iter().enumerate() {
        let feature = format!("x-veil-feature: {feature}");
        let mut extra = vec!["-H", &feature];
        let user = user.map(|u| format!("x-veil-user: {u}"));
        if let Some(u) = &user {
            extra.extend(["-H", u]);
        }
        curl_chat(
            &proc,
            cwd.path(),
            &chat(model, &format!("call {i}")),
            &extra,
        );
    }
    wait_for_rows(cwd.path(), calls.len() as u64);
    proc.terminate();

    // Without --out: refused as a usage error (exit 2, as docs and clap's own errors say),
    // saying what to add.
    let out = veil(&["report", "--format", "html"], cwd.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--out FILE"),
        "{out:?}"
    );
    let out = veil(
        &[
            "report", "--format", "html", "--by", "model", "--out", "x.html",
        ],
        cwd.path(),
    );
    assert_eq!(out.status.code(), Some(2), "--by is refused, not ignored");
    assert!(!cwd.path().join("x.html").exists());
    // A bad --since, --until, --where or request id is a usage error too.
    for args in [
        &["report", "--since", "1x"][..],
        &["report", "--until", "yesterday"],
        &["export", "--since", "1x"],
        &["report", "--where", "foo"],
        &["forget", "not-an-id"],
        &["unseal", "not-an-id"],
    ] {
        let out = veil(args, cwd.path());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
    }
    // `html` is `veil report`'s alone, `csv` is not `veil tail`'s: neither command offers
    // them (--help lists what each takes) and both refuse them as usage errors.
    for (args, offered) in [
        (
            &["sql", "SELECT 1", "--format", "html"][..],
            "table, csv, json",
        ),
        (&["tail", "--format", "csv"], "table, json"),
    ] {
        let out = veil(args, cwd.path());
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("[possible values: {offered}]")),
            "{err}"
        );
    }

    // The page: 0600, written whole (no temp file left beside it).
    ok(
        &[
            "report",
            "--format",
            "html",
            "--since",
            "1h",
            "--out",
            "report.html",
        ],
        cwd.path(),
    );
    let path = cwd.path().join("report.html");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "spend data is private");
    let names: Vec<String> = std::fs::read_dir(cwd.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.contains("veil-tmp")),
        "temp file left: {names:?}"
    );
    let html = std::fs::read_to_string(&path).unwrap();

    // Hostile strings are text, escaped, never markup; raw user ids never appear.
    for raw in [SCRIPT, IMG, SVG_MODEL, "<img", "<script"] {
        assert!(!html.contains(raw), "raw {raw:?} in the page");
    }
    for raw in [SCRIPT, IMG, SVG_MODEL] {
        assert!(
            html.contains(&escaped(raw)),
            "{} not in the page",
            escaped(raw)
        );
    }
    for user in USERS {
        assert!(!html.contains(user), "raw user id {user} in the page");
    }
    let users: serde_json::Value = serde_json::from_str(&ok(
        &["report", "--by", "user", "--format", "json"],
        cwd.path(),
    ))
    .unwrap();
    let pseudonyms: Vec<&str> = users["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["user"].as_str())
        .collect();
    assert_eq!(pseudonyms.len(), 2, "{users}");
    for p in &pseudonyms {
        assert!(html.contains(p), "pseudonym {p} missing from top users");
    }
    assert!(html.contains("times in UTC"));
    assert!(html.contains("<div>requests<b>5</b></div>"), "summary tile");

    // --where narrows the page like the other formats.
    ok(
        &[
            "report",
            "--format",
            "html",
            "--where",
            "feature=search",
            "--out",
            "search.html",
        ],
        cwd.path(),
    );
    let search = std::fs::read_to_string(cwd.path().join("search.html")).unwrap();
    assert!(search.contains("<div>requests<b>1</b></div>"));
    assert!(search.contains("Only exchanges where feature = search"));
    // --until before any traffic: the empty page.
    ok(
        &[
            "report",
            "--format",
            "html",
            "--until",
            "2001-01-01",
            "--out",
            "empty.html",
        ],
        cwd.path(),
    );
    let empty_page = std::fs::read_to_string(cwd.path().join("empty.html")).unwrap();
    assert!(empty_page.contains("No data"));

    let Some(chromium) = Chromium::find(TEST) else {
        return;
    };
    // The judge is awake: a page that breaks its own CSP makes console messages it sees.
    let control = tempfile::tempdir().unwrap();
    let bad = control.path().join("bad.html");
    std::fs::write(
        &bad,
        html.replacen(
            "</body>",
            "<img src=\"http://127.0.0.1:9/x.png\"><script>console.error('x')</script></body>",
            1,
        ),
    )
    .unwrap();
    let judged = chromium.render(&bad, control.path());
    assert!(
        judged.console().len() >= 2,
        "a CSP violation went unseen, so the check below would prove nothing:\n{}",
        judged.log
    );

    let work = tempfile::tempdir().unwrap();
    let page = chromium.render(&path, work.path());
    assert_eq!(
        page.console(),
        Vec::<&str>::new(),
        "console messages:\n{}",
        page.log
    );
    assert!(
        !page.log.contains("Content Security Policy"),
        "{}",
        page.log
    );
    let dom = page.dom.to_ascii_lowercase();
    assert!(dom.contains("<html"), "no DOM dumped:\n{}", page.dom);
    assert_eq!(dom.matches("<svg").count(), 6, "six charts:\n{}", page.dom);
    for tag in ["<script", "<img", "<iframe", "<link"] {
        assert!(!dom.contains(tag), "{tag} in the DOM Chromium built");
    }
    // The screenshot shows the charts: a 1200×2000 picture, with coloured bars in it.
    let (w, h, all, differ, chromatic) = pixels(&page.png);
    assert_eq!((w, h), (1200, 2000));
    assert!(
        differ * 20 > all,
        "under 5 % of the screenshot differs from the background ({differ} of {all}): {}",
        page.png.display()
    );
    assert!(
        chromatic > 20_000,
        "only {chromatic} coloured pixels: the bars did not draw ({})",
        page.png.display()
    );

    // The empty page renders too, quietly, with no chart.
    let work = tempfile::tempdir().unwrap();
    let empty = chromium.render(&cwd.path().join("empty.html"), work.path());
    assert_eq!(empty.console(), Vec::<&str>::new(), "{}", empty.log);
    assert_eq!(empty.dom.matches("<svg").count(), 0);
    assert!(empty.dom.contains("No data"));
}
