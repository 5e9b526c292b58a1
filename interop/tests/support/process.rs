//! An example binary run as a child process by a test: on a loopback port it binds itself,
//! ready once it printed the address it bound and `GET /healthz` there answers 200, its output
//! in a log file, killed and reaped on drop.

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use tokio::time::Instant;

/// Upper bound for the process to answer `/healthz`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Interval between readiness polls.
const READY_POLL: Duration = Duration::from_millis(50);

/// `127.0.0.1:0`: a process told to listen there binds a port the OS picks at that moment,
/// so no port is chosen first and then reused (another process could take it in between).
pub(crate) fn any_loopback_port() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

/// The address in an example's `… listening on http://<addr>/…` line.
pub(crate) fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split_once("listening on http://")?.1;
    rest.split('/').next()?.parse().ok()
}

/// Waits (bounded by `timeout`) until `child`, logging to `log`, prints that it listens (as
/// every example does once its port is bound) and returns that address: the one this very
/// process bound, so a request there reaches it and no other process.
pub(crate) async fn wait_listening(
    child: &mut Child,
    log: &Path,
    timeout: Duration,
) -> Result<SocketAddr, String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(addr) = text.lines().find_map(listening_addr) {
            return Ok(addr);
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited before it listened ({status})"));
        }
        if Instant::now() > deadline {
            return Err(format!("did not listen within {timeout:?}"));
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// `bin --listen addr`, logging to `log` (stdout and stderr; `RUST_LOG` passed on, default
/// `info`; no colours). Append the example's other arguments and spawn it.
pub(crate) fn example_command(
    bin: &Path,
    addr: SocketAddr,
    log: &Path,
) -> std::io::Result<Command> {
    let out = File::create(log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(bin);
    cmd.args(["--listen", &addr.to_string()])
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    Ok(cmd)
}

/// A running example; killed (and reaped) on drop.
pub(crate) struct ExampleProcess {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl ExampleProcess {
    /// Runs `bin --listen 127.0.0.1:0 <args…>` with its stdout and stderr in `log`, and waits
    /// until it listens and `/healthz` there answers 200.
    pub(crate) async fn start(bin: &Path, args: &[&str], log: PathBuf) -> Self {
        let addr = any_loopback_port();
        let child = example_command(bin, addr, &log)
            .expect("create the process log file")
            .args(args)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let mut process = Self { child, addr, log };
        process.wait_ready().await;
        process
    }

    /// The MCP endpoint.
    pub(crate) fn url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// The last 40 lines of the log, for failure messages.
    pub(crate) fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(40);
        format!(
            "--- {} (last 40 lines) ---\n{}",
            self.log.display(),
            lines[start..].join("\n")
        )
    }

    /// Waits until the process prints the address it bound, then polls `/healthz` there until
    /// it answers 200 (or the process exits, or the deadline passes).
    async fn wait_ready(&mut self) {
        self.addr = wait_listening(&mut self.child, &self.log, READY_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("process not listening: {e}\n{}", self.log_tail()));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("build reqwest client");
        let health = format!("http://{}/healthz", self.addr);
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "process exited before it was ready ({status})\n{}",
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
                "process not ready after {READY_TIMEOUT:?} (last: {last})\n{}",
                self.log_tail()
            );
            tokio::time::sleep(READY_POLL).await;
        }
    }
}

impl Drop for ExampleProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
