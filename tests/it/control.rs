//! The control socket (veil#13): `veil run` with no admin flag, and the operator commands run
//! from another directory find it by the data dir alone (or the default dirs); another uid
//! cannot use it; `veil env` and `veil ca path` never create keys.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support::mock_llm::{Alpn, Mock};
use crate::support::process::{VeilProcess, resolve_args, veil_bin};

/// A user's world for one test: `$HOME` and `$XDG_DATA_HOME` under a temp dir, so the
/// default dirs (`$XDG_DATA_HOME/veil/{keys,data}`) are the test's own.
struct World {
    root: tempfile::TempDir,
}

impl World {
    fn new() -> World {
        let w = World {
            root: tempfile::tempdir().unwrap(),
        };
        for d in ["home", "xdg", "run", "elsewhere"] {
            std::fs::create_dir(w.path(d)).unwrap();
        }
        w
    }

    fn path(&self, p: &str) -> PathBuf {
        self.root.path().join(p)
    }

    fn data(&self) -> PathBuf {
        self.path("xdg/veil/data")
    }

    /// `veil ARGS` run in `cwd` with this world's environment (no project dir, no flags).
    fn cmd(&self, cwd: &Path) -> Command {
        let mut c = Command::new(veil_bin());
        c.current_dir(cwd)
            .env_remove("VEIL_MASTER_KEY")
            .env_remove("VEIL_CONFIG")
            .env_remove("VEIL_ADMIN_TOKEN")
            .env("HOME", self.path("home"))
            .env("XDG_DATA_HOME", self.path("xdg"));
        c
    }

    fn veil(&self, args: &[&str]) -> Output {
        self.cmd(&self.path("elsewhere"))
            .args(args)
            .output()
            .expect("veil runs")
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `out` succeeded; panics with everything veil said otherwise.
fn ok(what: &str, out: &Output, proc: &VeilProcess) -> String {
    assert!(
        out.status.success(),
        "{what}: {:?}\nstdout: {}\nstderr: {}\nveil run said:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr),
        proc.stderr()
    );
    text(&out.stdout)
}

/// One chat completion through `proc` by curl, trusting `ca`; the request id veil gave it.
fn chat(proc: &VeilProcess, ca: &Path, body: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "-D", "-", "--cacert"])
        .arg(ca)
        .env("HTTPS_PROXY", format!("http://{}", proc.addr))
        .args(["-H", "content-type: application/json", "-d", body])
        .arg("https://api.openai.com/v1/chat/completions")
        .output()
        .unwrap();
    let head = text(&out.stdout);
    assert!(out.status.success(), "curl: {head}\n{}", proc.stderr());
    head.lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-veil-request-id: ")
                .map(|v| v.trim().to_string())
        })
        .expect("x-veil-request-id")
}

/// Runs `veil unseal ID` until it succeeds (sealing follows the answer by a few ms), bounded.
fn unseal_when_sealed(w: &World, id: &str, proc: &VeilProcess) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = w.veil(&["unseal", id]);
        if out.status.success() || Instant::now() > deadline {
            return ok("veil unseal", &out, proc);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (bounded: 5 s) until veil's log has `what`: its stderr is read by another thread.
fn logged(proc: &VeilProcess, what: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !proc.stderr().contains(what) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn start(w: &World, mock: &Mock) -> VeilProcess {
    let rules = w.path("rules.toml");
    std::fs::write(&rules, include_str!("../../rules/default.toml")).unwrap();
    let mut args = resolve_args(mock.addr);
    args.push("--upstream-ca".into());
    args.push(mock.ca_path.display().to_string());
    args.push("--rules".into());
    args.push(rules.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    VeilProcess::spawn(&mut w.cmd(&w.path("run")), &args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_commands_reach_a_running_veil_through_its_control_socket() {
    let mock = Mock::start(Alpn::Http1Only).await;
    let w = World::new();
    let mut proc = start(&w, &mock);
    let sock = w.data().join("veil.sock");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket mode");
    assert!(
        logged(&proc, &sock.display().to_string()),
        "the startup line names the control socket:\n{}",
        proc.stderr()
    );
    assert!(
        !w.path("run").join("keys").exists() && !w.path("elsewhere").join("keys").exists(),
        "keys in a cwd"
    );

    // `ca path` and `env` from another directory name that veil's CA and address.
    let ca = ok("veil ca path", &w.veil(&["ca", "path"]), &proc);
    let ca = PathBuf::from(ca.trim());
    assert_eq!(ca, w.path("xdg/veil/keys/ca.pem"));
    let env = ok("veil env", &w.veil(&["env"]), &proc);
    for want in [
        format!("export HTTPS_PROXY=http://{}", proc.addr),
        format!("export NODE_EXTRA_CA_CERTS={}", ca.display()),
        "export NODE_USE_ENV_PROXY=1".to_string(),
        format!(
            "export AWS_CA_BUNDLE={}",
            ca.with_file_name("ca-bundle.pem").display()
        ),
    ] {
        assert!(env.contains(&want), "{want:?} not in:\n{env}");
    }

    let plain = chat(&proc, &ca, r#"{"model":"gpt-4o","messages":[]}"#);
    let alice = chat(
        &proc,
        &ca,
        r#"{"model":"gpt-4o","user":"alice","messages":[]}"#,
    );
    let unsealed = unseal_when_sealed(&w, &plain, &proc);
    assert!(unsealed.contains(&plain), "{unsealed}");
    unseal_when_sealed(&w, &alice, &proc);

    let out = ok("veil forget ID", &w.veil(&["forget", &plain]), &proc);
    assert!(out.contains(&format!("forgotten {plain}")), "{out}");
    let out = ok(
        "veil forget --user",
        &w.veil(&["forget", "--user", "alice"]),
        &proc,
    );
    assert!(out.contains(&format!("forgotten {alice}")), "{out}");
    assert!(
        !w.veil(&["unseal", &alice]).status.success(),
        "still sealed"
    );

    let old = chat(&proc, &ca, r#"{"model":"gpt-4o","messages":[]}"#);
    unseal_when_sealed(&w, &old, &proc);
    std::thread::sleep(Duration::from_millis(1100));
    let out = ok(
        "veil purge",
        &w.veil(&["purge", "--older-than", "1s"]),
        &proc,
    );
    assert!(out.contains(&format!("purged {old}")), "{out}");

    // The ledger readers open the ledger read-only beside the running writer.
    ok("veil tail", &w.veil(&["tail"]), &proc);
    ok("veil report", &w.veil(&["report"]), &proc);
    let out = ok("veil compact", &w.veil(&["compact"]), &proc);
    assert!(out.starts_with("compacted: "), "{out}");
    let out = ok("veil keys rotate", &w.veil(&["keys", "rotate"]), &proc);
    assert!(out.contains("reloaded its keys"), "{out}");
    let out = ok("veil keys rewrap", &w.veil(&["keys", "rewrap"]), &proc);
    assert!(out.contains("re-wrapped"), "{out}");

    // `--data` alone is enough (another HOME: its default keys dir is empty).
    let out = w
        .cmd(&w.path("elsewhere"))
        .env("HOME", w.path("elsewhere"))
        .env_remove("XDG_DATA_HOME")
        .args(["reload", "--data"])
        .arg(w.data())
        .output()
        .unwrap();
    let out = ok("veil reload --data", &out, &proc);
    assert!(out.starts_with("rules reloaded: digest "), "{out}");
    assert!(logged(&proc, "rules reloaded"), "{}", proc.stderr());
    // A rules file that does not compile: refused with its line, the old rules stay.
    std::fs::write(w.path("rules.toml"), "[users\n").unwrap();
    let out = w.veil(&["reload"]);
    assert!(!out.status.success(), "{out:?}");
    let err = text(&out.stderr);
    assert!(
        err.contains("rules.toml:1") && err.contains("previous rules stay in force"),
        "{err}"
    );

    // The audit trail names the control socket's caller.
    let audit = std::fs::read_to_string(w.data().join("audit.jsonl")).unwrap();
    assert!(audit.contains("control:uid="), "{audit}");

    assert!(proc.terminate().success(), "{}", proc.stderr());
    assert!(!sock.exists(), "control socket left behind at exit");
    // With no veil running, `reload` says how to start one.
    let out = w.veil(&["reload"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("no veil is running with data dir") && err.contains("veil run --data"),
        "{err}"
    );
    // `env` still prints the lines (an app may start before veil), and says on stderr that
    // nothing listens there yet.
    let out = w.veil(&["env"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        text(&out.stdout).contains("export HTTPS_PROXY=http://"),
        "{out:?}"
    );
    let err = text(&out.stderr);
    assert!(err.contains("veil env: no veil is running"), "{err}");
}

// See: veil#13. `veil env` in an app's directory created a second CA there, so the app
// trusted a CA the running veil did not use and failed TLS.
#[test]
fn env_and_ca_path_with_no_veil_create_nothing_and_say_how_to_start_one() {
    let dir = tempfile::tempdir().unwrap();
    for args in [&["env"][..], &["ca", "path"]] {
        let out = Command::new(veil_bin())
            .args(args)
            .current_dir(dir.path())
            .env("HOME", dir.path())
            .env_remove("XDG_DATA_HOME")
            .env_remove("VEIL_CONFIG")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?}: {out:?}");
        let err = text(&out.stderr);
        assert!(
            err.contains("no veil is running") && err.contains("veil run"),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: {}", text(&out.stdout));
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(left.is_empty(), "{args:?} created {left:?}");
    }
}

/// Runs `veil ARGS` as `nobody` (uid 65534) through setpriv; `None` (with a NOTICE, or a panic
/// under CI=true) when this process cannot switch uid.
fn as_nobody(test: &str, args: &[&str]) -> Option<Output> {
    if !rustix::process::geteuid().is_root() {
        return crate::support::tmpfs::skip(test, "needs root to run a client as nobody".into());
    }
    let out = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(veil_bin())
        .args(args)
        .current_dir("/")
        .env("HOME", "/nonexistent")
        .env_remove("XDG_DATA_HOME")
        .output();
    match out {
        Ok(o) if text(&o.stderr).contains("setpriv:") => {
            crate::support::tmpfs::skip(test, format!("setpriv failed: {}", text(&o.stderr)))
        }
        Ok(o) => Some(o),
        Err(e) => crate::support::tmpfs::skip(test, format!("cannot run setpriv: {e}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_uid_cannot_use_the_control_socket() {
    const TEST: &str = "another_uid_cannot_use_the_control_socket";
    let mock = Mock::start(Alpn::Http1Only).await;
    let w = World::new();
    let proc = start(&w, &mock);
    let data = w.data();
    let d = data.to_str().unwrap();

    // As veil leaves it: the 0700 data dir keeps nobody from even reaching the socket.
    let Some(out) = as_nobody(TEST, &["reload", "--data", d]) else {
        return;
    };
    assert!(
        !out.status.success(),
        "nobody reloaded veil's rules: {out:?}"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("cannot be reached") || err.contains("ermission denied"),
        "{err}"
    );

    // Even with the modes opened up (a careless chmod), the peer's uid is checked: 403.
    for p in [w.root.path(), &w.path("xdg"), &w.path("xdg/veil"), &data] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let sock = data.join("veil.sock");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(TEST, &["reload", "--data", d]).expect("checked above");
    assert!(
        !out.status.success(),
        "nobody reloaded veil's rules: {out:?}"
    );
    let err = text(&out.stderr);
    assert!(err.contains("the running veil refused"), "{err}");
    assert!(err.contains("uid 65534 may not use it"), "{err}");
    assert!(
        logged(&proc, "control socket request from another uid refused"),
        "{}",
        proc.stderr()
    );
    let log = proc.stderr();
    assert!(log.contains("65534"), "{log}");
    assert!(!log.contains("rules reloaded"), "{log}");
}
