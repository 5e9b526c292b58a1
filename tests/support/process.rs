//! An example binary run as a child process by a test: on a free loopback port, ready once
//! `GET /healthz` answers 200, its output in a log file, killed and reaped on drop.

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

/// Upper bound for the process to answer `/healthz`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Interval between readiness polls.
const READY_POLL: Duration = Duration::from_millis(50);

/// A loopback port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
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
    /// Runs `bin --listen <free port> <args…>` with its stdout and stderr in `log`, and waits
    /// until `/healthz` answers 200.
    pub(crate) async fn start(bin: &Path, args: &[&str], log: PathBuf) -> Self {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
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
