//! The real `veil` binary as a child process, with its stderr captured so a failing assertion
//! can show what veil said (ripgrep `TestCommand` style).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn veil_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_veil"))
}

/// Makes `cwd` a project directory (an empty `veil.toml` unless it has one), so that veil
/// keeps its keys and data in `cwd/keys` and `cwd/data` as the tests expect, instead of the
/// user's `$XDG_DATA_HOME/veil`.
pub fn project(cwd: &Path) {
    let file = cwd.join("veil.toml");
    if !file.exists() {
        std::fs::write(file, "").unwrap();
    }
}

/// Runs `veil ARGS` to completion in `cwd`, made a [`project`] directory.
pub fn veil(args: &[&str], cwd: &Path) -> std::process::Output {
    project(cwd);
    Command::new(veil_bin())
        .args(args)
        .current_dir(cwd)
        .env_remove("VEIL_MASTER_KEY")
        .output()
        .expect("veil runs")
}

pub struct VeilProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub stderr: Arc<Mutex<String>>,
}

impl VeilProcess {
    /// Starts `veil run ARGS` in `cwd` (made a [`project`] directory) and waits until it
    /// listens.
    pub fn start(args: &[&str], cwd: &Path) -> VeilProcess {
        project(cwd);
        Self::spawn(Command::new(veil_bin()).current_dir(cwd), args)
    }

    /// Starts `veil run ARGS` as `cmd` says (cwd, environment) and waits until it listens.
    pub fn spawn(cmd: &mut Command, args: &[&str]) -> VeilProcess {
        let mut child = cmd
            .arg("run")
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("VEIL_MASTER_KEY")
            .env("VEIL_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("veil starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
        let pipe = child.stderr.take().unwrap();
        let sink = stderr.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.split("HTTPS_PROXY=http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or_default();
                    if let Ok(addr) = addr.parse() {
                        let _ = tx.send(addr);
                    }
                }
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "veil did not start listening; stderr:\n{}",
                    stderr.lock().unwrap()
                );
            }
        };
        VeilProcess {
            child,
            addr,
            stderr,
        }
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Sends SIGTERM (through kill(1): no `unsafe` here) and waits for the exit, bounded.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "veil did not exit after SIGTERM; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for VeilProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--resolve` flags sending every mock host to `mock`.
/// `veil run` arguments against the mock provider (its hosts resolved to it, its CA
/// trusted) exporting to `otlp`, plus `extra`.
pub fn mock_args(mock: &super::mock_llm::Mock, otlp: &str, extra: &[&str]) -> Vec<String> {
    let mut args = resolve_args(mock.addr);
    args.extend([
        "--upstream-ca".to_string(),
        mock.ca_path.display().to_string(),
        "--otlp-endpoint".to_string(),
        otlp.to_string(),
    ]);
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

pub fn resolve_args(mock: SocketAddr) -> Vec<String> {
    super::mock_llm::MOCK_HOSTS
        .iter()
        .flat_map(|h| ["--resolve".to_string(), format!("{h}:443:{mock}")])
        .collect()
}

/// A port nobody listens on right now, for a test to hand veil (`admin_listen`, a second
/// listener) before veil binds it.
///
/// Taken below the kernel's ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`,
/// 32768-60999 by default), where a port-0 bind never lands: a port taken by binding port 0
/// and releasing it could be handed by the kernel to another test's port-0 listener in the
/// gap before veil binds it (a CI run failed so: "cannot listen on admin_listen
/// 127.0.0.1:36003: Address already in use"). A process-wide counter keeps two tests of this
/// binary from getting the same port; the start point depends on the process id, so two
/// test processes at once start far apart. Each candidate is checked by binding it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let low = ephemeral_low.saturating_sub(12_000).max(1024);
    let span = ephemeral_low.saturating_sub(low).max(1);
    let start = std::process::id() % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(low + (start + n) % span).expect("ports fit in u16");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 127.0.0.1:{low}-{}", low + span - 1);
}

/// POSTs `body` to the chat completions API through `proc` with curl (trusting the CA under
/// `cwd/keys`, plus `extra` curl arguments); the answer must be a success. Returns the request
/// id veil assigned and curl's output (headers and body).
pub fn curl_chat(proc: &VeilProcess, cwd: &Path, body: &str, extra: &[&str]) -> (String, String) {
    let text = curl_chat_output(proc, cwd, body, extra);
    let id = text
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("x-veil-request-id: ")
                .map(|v| v.trim().to_string())
        })
        .expect("x-veil-request-id");
    (id, text)
}

/// [`curl_chat`] without looking for a request id: curl's output (the proxy's `CONNECT`
/// answer, then the upstream's head and body).
pub fn curl_chat_output(proc: &VeilProcess, cwd: &Path, body: &str, extra: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--fail-with-body", "-D", "-", "--cacert"])
        .arg(cwd.join("keys/ca.pem"))
        .env("HTTPS_PROXY", format!("http://{}", proc.addr))
        .args(["-H", "content-type: application/json"])
        .args(extra)
        .args(["-d", body, "https://api.openai.com/v1/chat/completions"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "curl: {text}{}\nveil said:\n{}",
        String::from_utf8_lossy(&out.stderr),
        proc.stderr()
    );
    text
}

/// POSTs `body` to the chat completions API through `proc` with curl like [`curl_chat`], for
/// an answer of any status: returns the HTTP status.
pub fn curl_chat_status(proc: &VeilProcess, cwd: &Path, body: &str, extra: &[&str]) -> u16 {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "20",
        ])
        .arg("--cacert")
        .arg(cwd.join("keys/ca.pem"))
        .env("HTTPS_PROXY", format!("http://{}", proc.addr))
        .args(["-H", "content-type: application/json"])
        .args(extra)
        .args(["-d", body, "https://api.openai.com/v1/chat/completions"])
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&out.stdout).trim().to_string();
    code.parse().unwrap_or_else(|_| {
        panic!(
            "curl: {code}{}\nveil said:\n{}",
            String::from_utf8_lossy(&out.stderr),
            proc.stderr()
        )
    })
}

/// `veil run` in `cwd` against `mock` (its address resolved for the provider hosts, its CA
/// trusted upstream) with the TCP admin API on `127.0.0.1:admin`.
pub fn start_with_admin(
    mock: &crate::support::mock_llm::Mock,
    cwd: &Path,
    admin: u16,
) -> VeilProcess {
    let mut args = resolve_args(mock.addr);
    args.extend([
        "--upstream-ca".to_string(),
        mock.ca_path.display().to_string(),
        "--admin-listen".to_string(),
        format!("127.0.0.1:{admin}"),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    VeilProcess::start(&args, cwd)
}
