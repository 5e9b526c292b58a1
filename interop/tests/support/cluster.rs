//! A real cluster for tests: one `redis-server`, three `examples/node.rs` processes sharing
//! it, and HAProxy in front, all on free loopback ports and all killed on drop.
//!
//! Include it after the Redis harness (it uses `crate::redis_support::RedisServer`):
//!
//! ```ignore
//! #[path = "../../tests/support/redis.rs"]
//! mod redis_support;
//! #[path = "support/cluster.rs"]
//! mod cluster_support;
//! ```
//!
//! HAProxy runs the configurations shipped in `examples/deploy/` (`haproxy-header.cfg`,
//! `haproxy-cookie.cfg`, `haproxy-roundrobin.cfg`) with only their addresses replaced by free
//! ports, so the shipped files are what the tests exercise. HAProxy is a plain foreground
//! process (`haproxy -f <cfg> -db`), its log (stderr) and every node's log (one file per
//! process, so a restarted node starts a new file) are kept under `target/cluster-tests/<test>/`.
//!
//! Binaries:
//!
//! | what | where |
//! |---|---|
//! | node | `MCP_NODE_BIN`, else `$CARGO_TARGET_DIR/debug/examples/node` (`cargo build --example node` runs first) |
//! | HAProxy | `MCP_HAPROXY`, else `haproxy` on `PATH`, else `/usr/sbin/haproxy` |
//! | Redis | see `tests/support/redis.rs` (the root package's) |
//!
//! Without HAProxy a test is skipped (with a `SKIP:` line) unless `MCP_REQUIRE_CLUSTER=1` or
//! `MCP_REQUIRE_CLIENTS=1` (set by `scripts/test.sh`), which turn the absence into a failure.
//!
//! Every wait is a bounded poll of a condition (health endpoint, HAProxy's own view of a
//! server, process exit), never a fixed sleep.
#![allow(dead_code, unreachable_pub)]

use std::{
    collections::HashMap,
    fs::File,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::OnceLock,
    time::Duration,
};

use tokio::time::Instant;

use crate::redis_support::RedisServer;

/// The node names (and `x-mcp-node` values) of the three nodes, as in `scripts/cluster.sh`.
pub const NODE_NAMES: [&str; 3] = ["n1", "n2", "n3"];
/// Upper bound for a node to answer `/healthz` after it was spawned.
pub const NODE_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for a node to exit after SIGTERM: its drain (`--drain-timeout`, 10 s by default)
/// and the close of its connections.
pub const NODE_EXIT_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for HAProxy to listen, and for it to see a server change state.
pub const LB_TIMEOUT: Duration = Duration::from_secs(20);
/// Interval of readiness polls.
pub const POLL: Duration = Duration::from_millis(25);
/// Upper bound for one client script.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// The addresses the shipped HAProxy configurations use (those of `scripts/cluster.sh`).
const TEMPLATE_FRONT: &str = "127.0.0.1:8080";
const TEMPLATE_STATS: &str = "127.0.0.1:8404";
const TEMPLATE_NODES: [&str; 3] = ["127.0.0.1:18081", "127.0.0.1:18082", "127.0.0.1:18083"];

// ---------------------------------------------------------------------------------------------
// Locating binaries
// ---------------------------------------------------------------------------------------------

fn env_is_1(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// Whether a missing external tool fails the test instead of skipping it.
pub fn required() -> bool {
    env_is_1("MCP_REQUIRE_CLUSTER") || env_is_1("MCP_REQUIRE_CLIENTS")
}

/// `None` (after a `SKIP:` line) when the test should be skipped; panics when required.
pub fn skip_or_fail(problem: &str) -> Option<std::convert::Infallible> {
    if required() {
        panic!(
            "{problem} (MCP_REQUIRE_CLUSTER/MCP_REQUIRE_CLIENTS=1; scripts/test.sh installs it)"
        );
    }
    eprintln!("SKIP: {problem}; run scripts/test.sh, which installs it");
    None
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The HAProxy binary, if there is one.
pub fn haproxy_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("MCP_HAPROXY") {
        return Some(PathBuf::from(p));
    }
    on_path("haproxy").or_else(|| {
        let sbin = PathBuf::from("/usr/sbin/haproxy");
        sbin.is_file().then_some(sbin)
    })
}

/// The repository root: the root package's directory, the parent of `interop/`.
pub fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("interop/ sits in the repository root")
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                manifest_dir().join(p)
            }
        })
        .unwrap_or_else(|| manifest_dir().join("target"))
}

/// `MCP_NODE_BIN`, else `target/debug/examples/node`, built first (once per test process:
/// a no-op when up to date, and a stale binary would test old code).
pub fn node_binary() -> PathBuf {
    NODE_BIN
        .get_or_init(|| {
            if let Some(bin) = std::env::var_os("MCP_NODE_BIN") {
                return PathBuf::from(bin);
            }
            build_example("node")
        })
        .clone()
}

/// The node binary of this test process, chosen once.
static NODE_BIN: OnceLock<PathBuf> = OnceLock::new();

/// Makes the nodes of this test process `target/debug/examples/<example>` (built first)
/// instead of `node`: call it before any node starts. Returns the binary in use.
pub fn use_example(example: &str) -> PathBuf {
    NODE_BIN.get_or_init(|| build_example(example)).clone()
}

/// `target/debug/examples/<example>`, built first.
fn build_example(example: &str) -> PathBuf {
    {
        let bin = target_dir()
            .join("debug")
            .join("examples")
            .join(format!("{example}{}", std::env::consts::EXE_SUFFIX));
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--example", example])
            .current_dir(manifest_dir())
            .status()
            .expect("spawn `cargo build --example`");
        assert!(
            status.success(),
            "`cargo build --example {example}` failed: {status}"
        );
        assert!(bin.exists(), "{} missing after cargo build", bin.display());
        bin
    }
}

/// What `node --help` says (once per test process).
pub fn node_help() -> &'static str {
    static HELP: OnceLock<String> = OnceLock::new();
    HELP.get_or_init(|| {
        let out = Command::new(node_binary())
            .arg("--help")
            .stdin(Stdio::null())
            .output()
            .expect("run node --help");
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
}

/// Whether the node example has the SessionAffinityLayer (its `--tag`/`--cookie-secure`
/// flags): tagged session ids and the `_mcp_backend` cookie.
pub fn node_has_affinity() -> bool {
    let help = node_help();
    help.contains("--tag") && help.contains("--cookie-secure")
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral loopback port")
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    format!(
        "--- {} (last {} lines) ---\n{}",
        path.display(),
        all.len() - start,
        all[start..].join("\n")
    )
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid} failed: {status}");
}

/// A reqwest client for probes: no pooling, short timeout.
fn probe_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .pool_max_idle_per_host(0)
        .build()
        .expect("build reqwest client")
}

// ---------------------------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------------------------

/// One `examples/node.rs` process, killed (SIGKILL) and reaped on drop. It can be killed,
/// terminated gracefully and started again on the same port under the same name.
pub struct NodeProcess {
    pub name: String,
    pub addr: SocketAddr,
    redis_url: String,
    extra_args: Vec<String>,
    dir: PathBuf,
    child: Option<Child>,
    /// How many processes were started (the current log file is `<name>.<starts - 1>.log`).
    starts: u32,
}

impl NodeProcess {
    /// Starts `name` on a loopback port it binds itself (`127.0.0.1:0`) and waits until it
    /// is healthy.
    pub async fn start(name: &str, redis_url: &str, extra_args: &[String], dir: &Path) -> Self {
        let mut last = String::new();
        for _ in 0..5 {
            let addr = crate::process_support::any_loopback_port();
            let mut node = Self {
                name: name.to_owned(),
                addr,
                redis_url: redis_url.to_owned(),
                extra_args: extra_args.to_vec(),
                dir: dir.to_owned(),
                child: None,
                starts: 0,
            };
            match node.spawn_and_wait().await {
                Ok(()) => return node,
                Err(e) => last = e,
            }
        }
        panic!("node {name} did not start: {last}");
    }

    /// The log file of the current (or last) process.
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(format!(
            "{}.{}.log",
            self.name,
            self.starts.saturating_sub(1)
        ))
    }

    /// The log of the current (or last) process.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log_path(), 40)
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The node's own `/mcp` (bypassing the balancer).
    pub fn mcp_url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn spawn(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).map_err(|e| e.to_string())?;
        self.starts += 1;
        let log = self.log_path();
        let bin = node_binary();
        let child = crate::process_support::example_command(&bin, self.addr, &log)
            .map_err(|e| format!("create {}: {e}", log.display()))?
            .args(["--node", &self.name, "--redis", &self.redis_url])
            .args(&self.extra_args)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Spawns the node on `addr` (port 0 the first time: the node binds a port the OS picks)
    /// and waits until it prints the address it bound, which is then its address, and is
    /// healthy there.
    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        self.spawn()?;
        let log = self.log_path();
        let child = self.child.as_mut().ok_or("no child")?;
        let listening =
            crate::process_support::wait_listening(child, &log, NODE_READY_TIMEOUT).await;
        let bound = listening.and_then(|bound| {
            if self.addr.port() == 0 || bound == self.addr {
                Ok(bound)
            } else {
                Err(format!("listens on {bound}, not on {}", self.addr))
            }
        });
        self.addr = match bound {
            Ok(bound) => bound,
            Err(e) => {
                self.kill9();
                return Err(format!("node {}: {e}\n{}", self.name, self.log_tail()));
            }
        };
        self.wait_healthy().await
    }

    /// Polls `GET /healthz` until it answers 200 with this node's `x-mcp-node` (the node
    /// printed that it bound the port, so the answer is its own).
    pub async fn wait_healthy(&mut self) -> Result<(), String> {
        let http = probe_client();
        let url = format!("{}/healthz", self.base_url());
        let deadline = Instant::now() + NODE_READY_TIMEOUT;
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "node {} exited before it was healthy ({status})\n{}",
                    self.name,
                    self.log_tail()
                ));
            }
            let last = match http.get(&url).send().await {
                Ok(res)
                    if res.status() == 200
                        && res
                            .headers()
                            .get("x-mcp-node")
                            .and_then(|v| v.to_str().ok())
                            == Some(self.name.as_str()) =>
                {
                    return Ok(());
                }
                Ok(res) => format!("HTTP {}", res.status()),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                self.kill9();
                return Err(format!(
                    "node {} not healthy after {NODE_READY_TIMEOUT:?} (last: {last})\n{}",
                    self.name,
                    self.log_tail()
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (graceful shutdown: the node drains, then exits) and waits for the exit.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.sigterm();
        self.wait_exit().await
    }

    /// Sends SIGTERM without waiting (see [`wait_exit`](Self::wait_exit),
    /// [`try_exit`](Self::try_exit)).
    pub fn sigterm(&mut self) {
        let child = self.child.as_ref().expect("the node is running");
        signal(child.id(), "TERM");
    }

    /// The exit status if the process has exited (it is reaped then).
    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut()?;
        match child.try_wait() {
            Ok(Some(status)) => {
                self.child = None;
                Some(status)
            }
            Ok(None) => None,
            Err(e) => panic!("waiting for node {}: {e}", self.name),
        }
    }

    /// Waits (bounded by [`NODE_EXIT_TIMEOUT`]) for the process to exit after a signal.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        assert!(self.child.is_some(), "node {} is not running", self.name);
        let deadline = Instant::now() + NODE_EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.try_exit() {
                return status;
            }
            if Instant::now() > deadline {
                self.kill9();
                panic!(
                    "node {} did not exit within {NODE_EXIT_TIMEOUT:?} of SIGTERM\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `GET /healthz` on the node itself: its status, or `None` when nothing answered.
    pub async fn health_status(&self) -> Option<u16> {
        let url = format!("{}/healthz", self.base_url());
        probe_client()
            .get(&url)
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    /// `GET /stats` on the node itself: `{"registry": {...}, "transport": {...}, "bus": {...}}`.
    pub async fn stats(&self) -> Result<serde_json::Value, String> {
        let text = self.get_text("/stats").await?;
        serde_json::from_str(&text).map_err(|e| format!("GET /stats on {}: {e}: {text}", self.name))
    }

    /// `GET /metrics` on the node itself: the Prometheus text format.
    pub async fn metrics(&self) -> Result<String, String> {
        self.get_text("/metrics").await
    }

    /// The body of a successful `GET path` on the node itself.
    async fn get_text(&self, path: &str) -> Result<String, String> {
        let res = probe_client()
            .get(format!("{}{path}", self.base_url()))
            .send()
            .await
            .map_err(|e| format!("GET {path} on {}: {e}", self.name))?;
        let status = res.status();
        let text = res
            .text()
            .await
            .map_err(|e| format!("GET {path} on {}: reading the body: {e}", self.name))?;
        if !status.is_success() {
            return Err(format!(
                "GET {path} on {}: HTTP {status}: {text}",
                self.name
            ));
        }
        Ok(text)
    }

    /// Starts a new process on the same port under the same name (a new incarnation) and
    /// waits until it is healthy. The port may linger for a moment after the old process
    /// died, so a failed bind is retried until the readiness deadline.
    pub async fn restart(&mut self) {
        self.kill9();
        let deadline = Instant::now() + NODE_READY_TIMEOUT;
        loop {
            match self.spawn_and_wait().await {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => panic!("restart failed: {e}"),
                Err(_) => tokio::time::sleep(POLL).await,
            }
        }
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

// ---------------------------------------------------------------------------------------------
// HAProxy
// ---------------------------------------------------------------------------------------------

/// Which shipped configuration HAProxy runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balancer {
    /// `examples/deploy/haproxy-header.cfg`: stick table on `Mcp-Session-Id`.
    Header,
    /// `examples/deploy/haproxy-cookie.cfg`: routing on the node-set `_mcp_backend` cookie.
    Cookie,
    /// `examples/deploy/haproxy-roundrobin.cfg`: no affinity, each `/mcp` request round
    /// robin (the nodes forward and adopt).
    RoundRobin,
}

impl Balancer {
    pub fn template(self) -> PathBuf {
        let file = match self {
            Self::Header => "haproxy-header.cfg",
            Self::Cookie => "haproxy-cookie.cfg",
            Self::RoundRobin => "haproxy-roundrobin.cfg",
        };
        manifest_dir().join("examples").join("deploy").join(file)
    }
}

/// Replaces `from` by `to` in `text`, panicking when `from` does not occur (the shipped
/// configuration changed shape and the test would no longer test it).
fn substitute(text: &str, from: &str, to: &str, file: &Path) -> String {
    assert!(
        text.contains(from),
        "{} no longer contains `{from}`; update interop/tests/support/cluster.rs",
        file.display()
    );
    text.replace(from, to)
}

/// Renders a shipped HAProxy configuration for the given ports. In cookie mode, each server's
/// `cookie` value must already be the tag its node uses (checked here against `tags`).
pub fn render_config(
    balancer: Balancer,
    front: u16,
    stats: u16,
    nodes: &[(&str, SocketAddr)],
    tags: &[String],
) -> String {
    let file = balancer.template();
    let mut cfg =
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    cfg = substitute(&cfg, TEMPLATE_FRONT, &format!("127.0.0.1:{front}"), &file);
    // Without SO_REUSEPORT (HAProxy's default), a port another process holds fails HAProxy's
    // bind (it exits and other ports are tried) instead of being shared with that process.
    cfg = substitute(&cfg, "\nglobal\n", "\nglobal\n    noreuseport\n", &file);
    cfg = substitute(&cfg, TEMPLATE_STATS, &format!("127.0.0.1:{stats}"), &file);
    assert_eq!(nodes.len(), TEMPLATE_NODES.len());
    for ((name, addr), template_addr) in nodes.iter().zip(TEMPLATE_NODES) {
        // Every line that names the node's template address is a `server <name> <addr>` line.
        let config_lines = cfg
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && l.contains(template_addr));
        for line in config_lines {
            assert!(
                line.trim_start().starts_with(&format!("server {name} ")),
                "{}: `{template_addr}` should belong to server {name}: {line}",
                file.display()
            );
        }
        cfg = substitute(&cfg, template_addr, &addr.to_string(), &file);
    }
    if balancer == Balancer::Cookie {
        for ((name, addr), tag) in nodes.iter().zip(tags) {
            let expected = format!("server {name} {addr} cookie {tag}");
            assert!(
                cfg.lines().any(|l| l.trim_start().starts_with(&expected)),
                "{}: the mcp backend must route cookie `{tag}` (node {name}'s tag) to {name}",
                file.display()
            );
        }
    }
    cfg
}

/// A foreground HAProxy process, killed on drop.
pub struct Haproxy {
    pub front: u16,
    pub stats: u16,
    pub config: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
}

impl Haproxy {
    /// Starts HAProxy with `balancer`'s shipped configuration in front of `nodes` (name,
    /// address; in the order n1, n2, n3) and waits until it listens and sees every server UP.
    pub async fn start(
        balancer: Balancer,
        nodes: &[(&str, SocketAddr)],
        tags: &[String],
        dir: &Path,
    ) -> Self {
        let bin = haproxy_bin().expect("haproxy is installed (checked by the caller)");
        let mut last = String::new();
        for attempt in 0..5 {
            let front = free_port();
            let stats = free_port();
            let config = dir.join(format!("haproxy-{attempt}.cfg"));
            let log = dir.join(format!("haproxy-{attempt}.log"));
            let cfg = render_config(balancer, front, stats, nodes, tags);
            std::fs::write(&config, cfg).expect("write the HAProxy config");
            let out = File::create(&log).expect("create the HAProxy log");
            let err = out.try_clone().expect("clone the HAProxy log");
            let child = Command::new(&bin)
                .arg("-f")
                .arg(&config)
                .arg("-db")
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
            let mut lb = Self {
                front,
                stats,
                config,
                log,
                child: Some(child),
            };
            match lb.wait_listening().await {
                Ok(()) => {
                    for (name, _) in nodes {
                        lb.wait_server(name, true).await;
                    }
                    return lb;
                }
                Err(e) => last = e,
            }
        }
        panic!("HAProxy did not start: {last}");
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.front)
    }

    /// `/mcp` through the balancer.
    pub fn mcp_url(&self) -> String {
        format!("{}/mcp", self.base_url())
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log, 60)
    }

    /// Waits until HAProxy serves its stats page with this process's pid on it (so the ports
    /// are this HAProxy's: it binds every port of its configuration before it serves), and its
    /// front port accepts.
    async fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + LB_TIMEOUT;
        loop {
            if let Some(child) = &mut self.child
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("haproxy exited ({status})\n{}", self.log_tail()));
            }
            let pid = self.child.as_ref().map(Child::id);
            if self.stats_pid().await.is_ok_and(|p| Some(p) == pid)
                && std::net::TcpStream::connect(("127.0.0.1", self.front)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "haproxy not listening after {LB_TIMEOUT:?}\n{}",
                    self.log_tail()
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The status of each server of backend `mcp` as HAProxy's stats page reports it
    /// (`UP`, `DOWN`, `UP 1/2` = going down, `DOWN 1/2` = going up, ...).
    pub async fn server_states(&self) -> Result<HashMap<String, String>, String> {
        let url = format!("http://127.0.0.1:{}/stats;csv", self.stats);
        let text = probe_client()
            .get(&url)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines
            .next()
            .ok_or("empty stats")?
            .trim_start_matches("# ")
            .split(',')
            .collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (px, sv, st) = (
            col("pxname").ok_or("no pxname")?,
            col("svname").ok_or("no svname")?,
            col("status").ok_or("no status")?,
        );
        Ok(lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| f.len() > st && f[px] == "mcp" && f[sv] != "FRONTEND" && f[sv] != "BACKEND")
            .map(|f| (f[sv].to_owned(), f[st].to_owned()))
            .collect())
    }

    /// The process id the stats page shows (`pid = </b> 1234 (process #1, …)`).
    async fn stats_pid(&self) -> Result<u32, String> {
        let url = format!("http://127.0.0.1:{}/stats", self.stats);
        let html = probe_client()
            .get(&url)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .text()
            .await
            .map_err(|e| e.to_string())?;
        let after = html
            .split_once("pid = ")
            .ok_or("no pid on the stats page")?
            .1;
        let after = after.trim_start_matches("</b>").trim_start();
        after
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| "no pid on the stats page".to_owned())
    }

    /// Waits (bounded) until HAProxy reports server `name` fully `UP` or fully `DOWN`.
    pub async fn wait_server(&self, name: &str, up: bool) {
        let want = if up { "UP" } else { "DOWN" };
        let deadline = Instant::now() + LB_TIMEOUT;
        loop {
            let states = self.server_states().await;
            if let Ok(s) = &states
                && s.get(name).map(String::as_str) == Some(want)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "HAProxy did not see {name} {want} within {LB_TIMEOUT:?}: {states:?}\n{}",
                self.log_tail()
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The cluster
// ---------------------------------------------------------------------------------------------

/// Redis, three nodes sharing it, HAProxy in front. Dropped in this order: balancer, nodes,
/// Redis. When a test panics, the tails of every log are printed.
pub struct Cluster {
    pub lb: Haproxy,
    pub nodes: Vec<NodeProcess>,
    pub redis: RedisServer,
    pub dir: PathBuf,
    pub balancer: Balancer,
}

impl Cluster {
    /// Starts the cluster for test `test` (logs under `target/cluster-tests/<test>/`), each
    /// node with `--node nX --redis <url>` plus `node_args`. `None` when the test is skipped
    /// (no HAProxy and not required).
    pub async fn start(test: &str, balancer: Balancer, node_args: &[&str]) -> Option<Self> {
        if haproxy_bin().is_none() {
            skip_or_fail("haproxy is not installed (apt-get install haproxy)")?;
        }
        let dir = target_dir().join("cluster-tests").join(test);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the cluster log directory");
        let redis = RedisServer::start();
        let args: Vec<String> = node_args.iter().map(|s| (*s).to_owned()).collect();
        let mut nodes = Vec::new();
        for name in NODE_NAMES {
            nodes.push(NodeProcess::start(name, &redis.url(), &args, &dir).await);
        }
        let tags: Vec<String> = NODE_NAMES.iter().map(|n| default_tag(n)).collect();
        let addrs: Vec<(&str, SocketAddr)> =
            nodes.iter().map(|n| (n.name.as_str(), n.addr)).collect();
        let lb = Haproxy::start(balancer, &addrs, &tags, &dir).await;
        Some(Self {
            lb,
            nodes,
            redis,
            dir,
            balancer,
        })
    }

    pub fn node(&self, name: &str) -> &NodeProcess {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    pub fn node_mut(&mut self, name: &str) -> &mut NodeProcess {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// Every log's tail: HAProxy's and each node's current one.
    pub fn logs(&self) -> String {
        let mut out = self.lb.log_tail();
        for n in &self.nodes {
            out.push('\n');
            out.push_str(&n.log_tail());
        }
        out
    }

    /// The `mcp:session:{<id>}` records in Redis, as session ids.
    pub fn session_records(&self) -> std::collections::BTreeSet<String> {
        self.redis
            .keys("mcp:session:{*")
            .into_iter()
            .filter_map(|k| {
                k.strip_prefix("mcp:session:{")
                    .and_then(|r| r.strip_suffix('}'))
                    .map(str::to_owned)
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "=== cluster logs (kept in {}) ===\n{}",
                self.dir.display(),
                self.logs()
            );
        }
    }
}

/// The tag a node named `name` uses by default (no `--tag`): derived from the name.
pub fn default_tag(name: &str) -> String {
    mcp_affinity::session::NodeTag::derive(name).to_string()
}

/// Serializes the cluster tests of one test binary (each starts five processes and the
/// machine may have few cores).
pub async fn exclusive() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

// ---------------------------------------------------------------------------------------------
// Real clients (same variables as tests/real_clients.rs)
// ---------------------------------------------------------------------------------------------

fn client_path(var: &str) -> Option<PathBuf> {
    let found = std::env::var_os(var).map(PathBuf::from);
    let problem = match &found {
        None => format!("{var} is not set"),
        Some(p) if !p.exists() => format!("{var}={} does not exist", p.display()),
        Some(_) => return found,
    };
    skip_or_fail(&problem)?;
    None
}

/// The TypeScript SDK client directory (`MCP_TS_CLIENT_DIR`, with `node_modules`).
pub fn ts_client_dir() -> Option<PathBuf> {
    let dir = client_path("MCP_TS_CLIENT_DIR")?;
    let sdk = dir.join("node_modules/@modelcontextprotocol/sdk/package.json");
    if !sdk.exists() {
        skip_or_fail(&format!("{} is missing (npm ci not run)", sdk.display()))?;
    }
    Some(dir)
}

/// The Python interpreter and the Python SDK client script (`MCP_PY`, `MCP_PY_CLIENT`).
pub fn py_client() -> Option<(PathBuf, PathBuf)> {
    Some((client_path("MCP_PY")?, client_path("MCP_PY_CLIENT")?))
}

pub fn ts_command(dir: &Path, url: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(dir.join("full_session.mjs"))
        .arg(url)
        .current_dir(dir);
    cmd
}

pub fn py_command(python: &Path, script: &Path, url: &str, era: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(script).arg(url).args(["--era", era]);
    cmd
}

/// What a client script did: exit status, stdout, stderr, and the JSON report (last stdout
/// line) when there is one.
#[derive(Debug)]
pub struct ClientRun {
    pub success: bool,
    pub status: String,
    pub stdout: String,
    pub stderr: String,
    pub report: Option<serde_json::Value>,
}

/// Runs a client script to completion (bounded).
pub async fn run_client(mut cmd: tokio::process::Command, what: &str) -> ClientRun {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(CLIENT_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{what}: no exit within {CLIENT_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{what}: could not run: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .and_then(|l| serde_json::from_str(l).ok());
    ClientRun {
        success: output.status.success(),
        status: output.status.to_string(),
        stdout,
        stderr,
        report,
    }
}

/// Counter `name` of the `registry` section of a node's `/stats` (0 when absent, so a missing
/// counter shows as 0 in the figures; tests that need it assert on the sum).
pub fn registry_counter(stats: &serde_json::Value, name: &str) -> u64 {
    stats
        .pointer(&format!("/registry/{name}"))
        .and_then(serde_json::Value::as_u64)
        .unwrap_or(0)
}

/// The registry counters the cluster tests print, summed over `stats` (one `/stats` answer
/// per node process).
pub const REGISTRY_COUNTERS: [&str; 6] = [
    "forwarded",
    "adopted",
    "adoptions_lost",
    "misroutes",
    "unknown",
    "node_restarted",
];

/// Sums [`REGISTRY_COUNTERS`] over several `/stats` answers.
pub fn sum_registry_counters(
    stats: &[serde_json::Value],
) -> std::collections::BTreeMap<&'static str, u64> {
    REGISTRY_COUNTERS
        .iter()
        .map(|name| (*name, stats.iter().map(|s| registry_counter(s, name)).sum()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A long-running TypeScript SDK session (tests/clients/ts/long_session.mjs)
// ---------------------------------------------------------------------------------------------

/// A standalone GET stream of a [`LongSession`] opened or ended (its `get open {...}` and
/// `get end {...}` lines), when the test read the line.
#[derive(Debug, Clone)]
pub struct StreamChange {
    pub at: Instant,
    /// Whether a stream opened (or the server ended one).
    pub open: bool,
    /// `{"node", "last_event_id"}` when a stream opened, `{"last_broadcast"}` when one ended.
    pub detail: serde_json::Value,
}

/// `node long_session.mjs <url> <stop-file> --pace-ms <pace>` running in the background: its
/// stdout is read as it comes (`ready {...}`, `ok <n>` after each successful call, `get open
/// {...}`/`get end {...}` for its standalone streams, the JSON report last), its stderr goes
/// to `<log>`. Killed on drop.
pub struct LongSession {
    pub name: String,
    child: tokio::process::Child,
    ready: tokio::sync::watch::Receiver<Option<serde_json::Value>>,
    oks: std::sync::Arc<std::sync::atomic::AtomicU32>,
    streams: std::sync::Arc<std::sync::Mutex<Vec<StreamChange>>>,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: tokio::task::JoinHandle<()>,
    log: PathBuf,
}

impl LongSession {
    /// Starts the script from the TypeScript client directory `dir` against `url`; it calls
    /// `echo` every `pace` until `stop` exists.
    pub fn spawn(
        name: &str,
        dir: &Path,
        url: &str,
        stop: &Path,
        pace: Duration,
        log: PathBuf,
    ) -> Self {
        use tokio::io::AsyncBufReadExt;
        let stderr = File::create(&log).expect("create the client log");
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("long_session.mjs"))
            .arg(url)
            .arg(stop)
            .args(["--pace-ms", &pace.as_millis().to_string()])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn node long_session.mjs: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let (ready_tx, ready) = tokio::sync::watch::channel(None);
        let oks = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
        let streams = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let reader = {
            let (oks, streams, lines) = (oks.clone(), streams.clone(), lines.clone());
            tokio::spawn(async move {
                let mut stdout = tokio::io::BufReader::new(stdout).lines();
                while let Ok(Some(line)) = stdout.next_line().await {
                    if let Some(n) = line.strip_prefix("ok ") {
                        if let Ok(n) = n.trim().parse() {
                            oks.store(n, std::sync::atomic::Ordering::Release);
                        }
                        continue;
                    }
                    if let Some(change) = line.strip_prefix("get ") {
                        let (what, json) = change.split_once(' ').unwrap_or((change, "null"));
                        let change = StreamChange {
                            at: Instant::now(),
                            open: what == "open",
                            detail: serde_json::from_str(json).unwrap_or_default(),
                        };
                        streams.lock().expect("streams").push(change);
                        continue;
                    }
                    if let Some(json) = line.strip_prefix("ready ") {
                        let value = serde_json::from_str(json).unwrap_or(serde_json::Value::Null);
                        let _ = ready_tx.send(Some(value));
                    }
                    lines.lock().expect("lines").push(line);
                }
            })
        };
        Self {
            name: name.to_owned(),
            child,
            ready,
            oks,
            streams,
            lines,
            reader,
            log,
        }
    }

    /// Waits (bounded) for the `ready` line: `{"session_id", "node", "get_open"}`.
    pub async fn wait_ready(&mut self, timeout: Duration) -> serde_json::Value {
        let waited = tokio::time::timeout(timeout, self.ready.wait_for(Option::is_some)).await;
        match waited {
            Ok(Ok(ready)) => ready.clone().unwrap_or_default(),
            Ok(Err(_)) | Err(_) => panic!(
                "{}: no `ready` line within {timeout:?} (exit: {:?})\n{}",
                self.name,
                self.child.try_wait(),
                tail(&self.log, 40)
            ),
        }
    }

    /// How many calls succeeded so far.
    pub fn ok_calls(&self) -> u32 {
        self.oks.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Its standalone streams so far, opened and ended, in order.
    pub fn stream_changes(&self) -> Vec<StreamChange> {
        self.streams.lock().expect("streams").clone()
    }

    /// Whether its standalone stream is open now (the last change was an open).
    pub fn get_open(&self) -> bool {
        self.streams
            .lock()
            .expect("streams")
            .last()
            .is_some_and(|c| c.open)
    }

    /// The stderr log's tail.
    pub fn log_tail(&self) -> String {
        tail(&self.log, 40)
    }

    /// Waits (bounded) for the script to exit (the stop file must exist) and returns what it
    /// did; the report is its last JSON line.
    pub async fn finish(mut self, timeout: Duration) -> ClientRun {
        let status = tokio::time::timeout(timeout, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!("{}: no exit within {timeout:?} of the stop file", self.name)
            })
            .unwrap_or_else(|e| panic!("{}: {e}", self.name));
        let _ = (&mut self.reader).await;
        let lines = std::mem::take(&mut *self.lines.lock().expect("lines"));
        let report = lines
            .iter()
            .rev()
            .find(|l| l.trim_start().starts_with('{'))
            .and_then(|l| serde_json::from_str(l).ok());
        ClientRun {
            success: status.success(),
            status: status.to_string(),
            stdout: lines.join("\n"),
            stderr: std::fs::read_to_string(&self.log).unwrap_or_default(),
            report,
        }
    }
}
