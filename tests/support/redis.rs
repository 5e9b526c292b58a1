//! Real Redis processes for tests: a single server and a Redis Cluster, each on free ports, started
//! and owned by the test (so a test can kill, pause and restart them) and killed on drop.
//!
//! Include it from a test file with
//!
//! ```ignore
//! #[path = "support/redis.rs"]
//! mod redis_support;
//! ```
//!
//! (from `interop/tests/`, `#[path = "../../tests/support/redis.rs"]`).
//!
//! The binaries are `redis-server` and `redis-cli` from `PATH`; `MCP_REDIS_SERVER` and
//! `MCP_REDIS_CLI` override them (`redis-cli` defaults to the one next to `MCP_REDIS_SERVER`).
//! Nothing here ever touches a Redis on the default port 6379.
//!
//! Every wait is a bounded poll of a readiness condition (the server answers `PING` and is the
//! process we started; the cluster reports `cluster_state:ok`), never a fixed sleep.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use ::redis::{ErrorKind, FromRedisValue, RedisResult, ServerErrorKind};

/// How long a server may take to answer after it was spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long cluster creation and convergence may take.
const CLUSTER_TIMEOUT: Duration = Duration::from_secs(60);
/// Interval of readiness polls.
const POLL: Duration = Duration::from_millis(10);
/// Ports tried before giving up.
const PORT_ATTEMPTS: usize = 20;

/// The `redis-server` binary: `MCP_REDIS_SERVER` or `redis-server` from `PATH`.
pub fn redis_server_bin() -> PathBuf {
    std::env::var_os("MCP_REDIS_SERVER")
        .map_or_else(|| PathBuf::from("redis-server"), PathBuf::from)
}

/// The `redis-cli` binary: `MCP_REDIS_CLI`, else the one next to `MCP_REDIS_SERVER`, else
/// `redis-cli` from `PATH`.
pub fn redis_cli_bin() -> PathBuf {
    if let Some(cli) = std::env::var_os("MCP_REDIS_CLI") {
        return PathBuf::from(cli);
    }
    if let Some(server) = std::env::var_os("MCP_REDIS_SERVER") {
        let sibling = Path::new(&server).with_file_name("redis-cli");
        if sibling.exists() {
            return sibling;
        }
    }
    PathBuf::from("redis-cli")
}

/// A port that was free a moment ago (bound to `127.0.0.1:0`, then released). With
/// `cluster_bus`, `port + 10000` (the cluster bus port) was free too.
pub fn free_port(cluster_bus: bool) -> u16 {
    for _ in 0..1000 {
        let Ok(listener) = TcpListener::bind(("127.0.0.1", 0)) else {
            continue;
        };
        let Ok(addr) = listener.local_addr() else {
            continue;
        };
        let port = addr.port();
        if port == 6379 {
            continue;
        }
        if cluster_bus {
            let Some(bus) = port.checked_add(10000) else {
                continue;
            };
            if TcpListener::bind(("127.0.0.1", bus)).is_err() {
                continue;
            }
        }
        return port;
    }
    panic!("no free local port found");
}

/// Loopback ports held for a test that needs an address before its server exists. Each is
/// bound but not listening: connecting there is refused (as to a server that is down), and no
/// other process can bind it until [`PortReservation::release`], right before the server
/// starts on it. (The server may still lose the port in that instant: a test retries on a new
/// reservation when it cannot start.)
#[derive(Debug)]
pub struct PortReservation {
    ports: Vec<u16>,
    sockets: Vec<tokio::net::TcpSocket>,
}

impl PortReservation {
    /// `count` ports, each with `port + 10000` (the cluster bus port) too when `cluster_bus`.
    pub fn new(count: usize, cluster_bus: bool) -> Self {
        let mut reservation = Self {
            ports: Vec::with_capacity(count),
            sockets: Vec::new(),
        };
        for _ in 0..1000 {
            if reservation.ports.len() == count {
                return reservation;
            }
            let Some(socket) = bound_socket(0) else {
                continue;
            };
            let Some(port) = socket.local_addr().ok().map(|a| a.port()) else {
                continue;
            };
            if port == 6379 {
                continue;
            }
            let bus = if cluster_bus {
                match port.checked_add(10000).and_then(bound_socket) {
                    Some(bus) => Some(bus),
                    None => continue,
                }
            } else {
                None
            };
            reservation.ports.push(port);
            reservation.sockets.push(socket);
            reservation.sockets.extend(bus);
        }
        panic!("no free local ports found");
    }

    /// The reserved ports.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// The first reserved port.
    pub fn port(&self) -> u16 {
        self.ports[0]
    }

    /// Frees the ports for the server about to start on them.
    pub fn release(self) -> Vec<u16> {
        self.ports
    }
}

/// A socket bound to `127.0.0.1:port`, not listening (and without `SO_REUSEADDR`, so no other
/// socket can bind the address while it is held).
fn bound_socket(port: u16) -> Option<tokio::net::TcpSocket> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind(([127, 0, 0, 1], port).into()).ok()?;
    Some(socket)
}

/// A directory under the system temp dir, removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("mcp-affinity-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create a temp dir for redis");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A synchronous connection to `127.0.0.1:port` with short timeouts.
fn connect(port: u16) -> RedisResult<::redis::Connection> {
    let client = ::redis::Client::open(format!("redis://127.0.0.1:{port}/"))?;
    let conn = client.get_connection_with_timeout(Duration::from_millis(500))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.set_write_timeout(Some(Duration::from_secs(5)))?;
    Ok(conn)
}

/// Runs one command on `127.0.0.1:port`.
fn run<T: FromRedisValue>(port: u16, args: &[&str]) -> RedisResult<T> {
    let mut conn = connect(port)?;
    let (name, rest) = args.split_first().expect("a command name");
    ::redis::cmd(name).arg(rest).query(&mut conn)
}

/// The value of `field` in an `INFO` reply.
fn info_field<'a>(info: &'a str, field: &str) -> Option<&'a str> {
    info.lines()
        .find_map(|line| line.trim_end().strip_prefix(field)?.strip_prefix(':'))
}

/// One `redis-server` process on a free port of 127.0.0.1, killed (SIGKILL) on drop.
#[derive(Debug)]
pub struct RedisServer {
    port: u16,
    child: Option<Child>,
    extra_args: Vec<String>,
    dir: PathBuf,
    /// Set for a standalone server; cluster nodes share their cluster's directory.
    _own_dir: Option<TempDir>,
}

impl RedisServer {
    /// Starts a server on a free port (trying other ports if one is taken meanwhile) and waits
    /// until it answers `PING`.
    pub fn start() -> Self {
        let dir = TempDir::new("redis");
        let path = dir.0.clone();
        let mut last_error = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let port = free_port(false);
            match Self::spawn(port, &path, &[]) {
                Ok(child) => return Self::assemble(port, child, path, Vec::new(), Some(dir)),
                Err(err) => last_error = err,
            }
        }
        panic!("could not start redis-server: {last_error}");
    }

    /// Starts a server on `port` (for a test that needs the address before the server exists).
    pub fn start_on(port: u16) -> Self {
        Self::try_start_on(port)
            .unwrap_or_else(|err| panic!("could not start redis-server on port {port}: {err}"))
    }

    /// [`RedisServer::start_on`], returning why it could not start (e.g. the port was taken).
    pub fn try_start_on(port: u16) -> Result<Self, String> {
        let dir = TempDir::new("redis");
        let path = dir.0.clone();
        let child = Self::spawn(port, &path, &[])?;
        Ok(Self::assemble(port, child, path, Vec::new(), Some(dir)))
    }

    fn assemble(
        port: u16,
        child: Child,
        dir: PathBuf,
        extra_args: Vec<String>,
        own: Option<TempDir>,
    ) -> Self {
        Self {
            port,
            child: Some(child),
            extra_args,
            dir,
            _own_dir: own,
        }
    }

    /// Spawns `redis-server` on `port` and waits until that very process answers.
    fn spawn(port: u16, dir: &Path, extra_args: &[String]) -> Result<Child, String> {
        assert_ne!(port, 6379, "tests never use the default Redis port");
        let log = dir.join(format!("redis-{port}.log"));
        let mut child = Command::new(redis_server_bin())
            .arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .arg("--logfile")
            .arg(&log)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|err| format!("spawning {}: {err}", redis_server_bin().display()))?;
        let pid = child.id().to_string();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(5).collect();
                return Err(format!(
                    "redis-server on port {port} exited ({status}): {tail:?}"
                ));
            }
            // Ready when the server on the port is the one we spawned (another test may have
            // raced us to the port).
            if let Ok(info) = run::<String>(port, &["INFO", "server"])
                && info_field(&info, "process_id") == Some(pid.as_str())
            {
                return Ok(child);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "redis-server on port {port} not ready within {READY_TIMEOUT:?}"
                ));
            }
            std::thread::sleep(POLL);
        }
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is running (or stopped), i.e. not killed.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL) and reaps it. Data is lost: nothing is persisted.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().expect("the server is running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed: {status}");
    }

    /// Stops the process (SIGSTOP): connections stay open but nothing answers.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Continues a paused process (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    /// Kills the server if it runs and starts a fresh one on the same port.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            match Self::spawn(self.port, &self.dir, &self.extra_args) {
                Ok(child) => {
                    self.child = Some(child);
                    return;
                }
                Err(err) if Instant::now() > deadline => panic!("restart failed: {err}"),
                Err(_) => std::thread::sleep(POLL),
            }
        }
    }

    /// Runs a command on this server.
    pub fn cmd<T: FromRedisValue>(&self, args: &[&str]) -> T {
        run(self.port, args).unwrap_or_else(|err| panic!("{args:?} on port {}: {err}", self.port))
    }

    /// Runs a command on this server, returning the error.
    pub fn try_cmd<T: FromRedisValue>(&self, args: &[&str]) -> RedisResult<T> {
        run(self.port, args)
    }

    /// How many times the server ran `command` (lowercase, e.g. `get`, `evalsha`,
    /// `script|load`), from `INFO commandstats`.
    pub fn command_count(&self, command: &str) -> u64 {
        let stats: String = self.cmd(&["INFO", "commandstats"]);
        let field = format!("cmdstat_{}", command.to_ascii_lowercase());
        info_field(&stats, &field)
            .and_then(|value| {
                value
                    .split(',')
                    .find_map(|part| part.strip_prefix("calls="))
            })
            .and_then(|calls| calls.parse().ok())
            .unwrap_or(0)
    }

    /// The bytes the server has read from its clients and written to them since its
    /// statistics were reset (`total_net_input_bytes`, `total_net_output_bytes`).
    pub fn net_bytes(&self) -> (u64, u64) {
        let stats: String = self.cmd(&["INFO", "stats"]);
        let field = |name| {
            info_field(&stats, name)
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{name} in INFO stats"))
        };
        (
            field("total_net_input_bytes"),
            field("total_net_output_bytes"),
        )
    }

    /// Resets the command statistics.
    pub fn reset_stats(&self) {
        let () = self.cmd(&["CONFIG", "RESETSTAT"]);
    }

    /// The keys matching `pattern`, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.cmd(&["KEYS", pattern]);
        keys.sort();
        keys
    }

    /// `TTL key`: seconds, -1 without expiry, -2 if missing.
    pub fn ttl(&self, key: &str) -> i64 {
        self.cmd(&["TTL", key])
    }

    /// `GET key`.
    pub fn get(&self, key: &str) -> Option<String> {
        self.cmd(&["GET", key])
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis Cluster of `masters` primaries (no replicas) on free ports, killed on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
    dir: TempDir,
}

impl RedisCluster {
    /// Starts the servers, joins them with `redis-cli --cluster create` and waits until every
    /// node reports `cluster_state:ok` with all slots served.
    pub fn start(masters: usize) -> Self {
        let mut last_error = String::new();
        for _ in 0..3 {
            let ports: Vec<u16> = (0..masters).map(|_| free_port(true)).collect();
            match Self::try_start(&ports) {
                Ok(cluster) => return cluster,
                Err(err) => last_error = err,
            }
        }
        panic!("could not start a redis cluster: {last_error}");
    }

    /// Starts the cluster on `ports` (each with `port + 10000` free for the cluster bus).
    pub fn start_on(ports: &[u16]) -> Self {
        Self::try_start(ports)
            .unwrap_or_else(|err| panic!("could not start a redis cluster: {err}"))
    }

    /// [`RedisCluster::start_on`], returning why it could not start (e.g. a port was taken).
    pub fn try_start_on(ports: &[u16]) -> Result<Self, String> {
        Self::try_start(ports)
    }

    fn try_start(ports: &[u16]) -> Result<Self, String> {
        let dir = TempDir::new("redis-cluster");
        let mut nodes = Vec::with_capacity(ports.len());
        for &port in ports {
            let extra_args: Vec<String> = vec![
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                dir.0
                    .join(format!("nodes-{port}.conf"))
                    .display()
                    .to_string(),
                "--cluster-node-timeout".into(),
                "5000".into(),
            ];
            let child = RedisServer::spawn(port, &dir.0, &extra_args)?;
            nodes.push(RedisServer::assemble(
                port,
                child,
                dir.0.clone(),
                extra_args,
                None,
            ));
        }
        let cluster = Self { nodes, dir };
        cluster.create()?;
        cluster.wait_converged()?;
        Ok(cluster)
    }

    fn create(&self) -> Result<(), String> {
        let output_path = self.dir.0.join("cluster-create.log");
        let output = std::fs::File::create(&output_path).map_err(|err| err.to_string())?;
        let errors = output.try_clone().map_err(|err| err.to_string())?;
        let mut create = Command::new(redis_cli_bin())
            .arg("--cluster")
            .arg("create")
            .args(
                self.nodes
                    .iter()
                    .map(|node| format!("127.0.0.1:{}", node.port)),
            )
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .stdout(output)
            .stderr(errors)
            .spawn()
            .map_err(|err| format!("spawning {}: {err}", redis_cli_bin().display()))?;
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        let status = loop {
            if let Ok(Some(status)) = create.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = create.kill();
                let _ = create.wait();
                return Err("redis-cli --cluster create did not finish".into());
            }
            std::thread::sleep(POLL);
        };
        if status.success() {
            Ok(())
        } else {
            let log = std::fs::read_to_string(&output_path).unwrap_or_default();
            Err(format!(
                "redis-cli --cluster create failed ({status}): {log}"
            ))
        }
    }

    fn wait_converged(&self) -> Result<(), String> {
        let deadline = Instant::now() + CLUSTER_TIMEOUT;
        let known = self.nodes.len().to_string();
        loop {
            let converged = self.nodes.iter().all(|node| {
                node.try_cmd::<String>(&["CLUSTER", "INFO"])
                    .is_ok_and(|info| {
                        info_field(&info, "cluster_state") == Some("ok")
                            && info_field(&info, "cluster_slots_ok") == Some("16384")
                            && info_field(&info, "cluster_known_nodes") == Some(known.as_str())
                    })
            });
            if converged {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("cluster not converged within {CLUSTER_TIMEOUT:?}"));
            }
            std::thread::sleep(POLL);
        }
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Runs a command about `key` (`args[1]`) on the node serving its slot.
    pub fn cmd<T: FromRedisValue>(&self, args: &[&str]) -> T {
        for node in &self.nodes {
            match node.try_cmd(args) {
                Ok(value) => return value,
                Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::Moved) => {}
                Err(err) => panic!("{args:?}: {err}"),
            }
        }
        panic!("no node serves {args:?}");
    }

    /// The keys matching `pattern` on all nodes, sorted.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self
            .nodes
            .iter()
            .flat_map(|node| node.keys(pattern))
            .collect();
        keys.sort();
        keys
    }

    /// `TTL key` on the node serving it.
    pub fn ttl(&self, key: &str) -> i64 {
        self.cmd(&["TTL", key])
    }

    /// `GET key` on the node serving it.
    pub fn get(&self, key: &str) -> Option<String> {
        self.cmd(&["GET", key])
    }
}
