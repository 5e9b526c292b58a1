//! Real MCP clients against the example servers (`examples/node.rs`, `examples/everything.rs`).
//!
//! Each test starts `target/debug/examples/node` (or `everything`) on a free loopback port,
//! waits until `GET /healthz` answers 200, then runs one of the client scripts under
//! `tests/clients/`:
//!
//! - `node tests/clients/ts/full_session.mjs <url>`: the official TypeScript SDK client, a full
//!   legacy-era (2025-11-25) session;
//! - `python tests/clients/py/full_session.py <url> --era legacy`: the same with the Python SDK;
//! - `python tests/clients/py/full_session.py <url> --era modern`: stateless 2026-07-28 calls;
//! - `node tests/clients/ts2/listen.mjs <url> --expect 1`: the TypeScript SDK v2 client
//!   (`@modelcontextprotocol/client`, 2026-07-28) holds a `subscriptions/listen` stream open
//!   on `everything` while the test triggers a tools list change.
//!
//! A session script exits non-zero on any failed step and prints one JSON object of
//! observations, which the test checks again here; the listen script prints one JSON object
//! per line as events happen (`server`, `ready`, `notification`, `error`). The clients are
//! found through environment variables that `scripts/test.sh` exports after installing them:
//!
//! | variable | meaning |
//! |---|---|
//! | `MCP_TS_CLIENT_DIR` | absolute path of `tests/clients/ts` (with `node_modules` installed) |
//! | `MCP_TS2_CLIENT_DIR` | absolute path of `tests/clients/ts2` (with `node_modules` installed) |
//! | `MCP_PY` | the Python interpreter of the venv that has `tests/clients/py/requirements.txt` |
//! | `MCP_PY_CLIENT` | absolute path of `tests/clients/py/full_session.py` |
//! | `MCP_REQUIRE_CLIENTS` | `1`: a missing client fails the test instead of skipping it |
//!
//! The server binaries are `$CARGO_TARGET_DIR/debug/examples/{node,everything}` (default target
//! dir `<manifest dir>/target`); each is (re)built with `cargo build --example NAME` first.

#[path = "support/process.rs"]
mod process_support;
#[path = "../../tests/support/redis.rs"]
mod redis_support;
use process_support::ExampleProcess;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::Duration,
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines},
    process::{Child, ChildStdout},
    task::JoinHandle,
    time::Instant,
};

/// Upper bound for one client script (each also has its own, shorter, watchdog).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);

// ---------------------------------------------------------------------------------------------
// Locating the clients
// ---------------------------------------------------------------------------------------------

fn clients_required() -> bool {
    std::env::var("MCP_REQUIRE_CLIENTS").is_ok_and(|v| v == "1")
}

/// Reads an environment variable naming an existing path. `None` means "skip this test"; when
/// `MCP_REQUIRE_CLIENTS=1` a missing or dangling value fails the test instead.
fn client_path(var: &str) -> Option<PathBuf> {
    let found = std::env::var_os(var).map(PathBuf::from);
    let problem = match &found {
        None => format!("{var} is not set"),
        Some(p) if !p.exists() => format!("{var}={} does not exist", p.display()),
        Some(_) => return found,
    };
    if clients_required() {
        panic!(
            "{problem} and MCP_REQUIRE_CLIENTS=1 (run scripts/test.sh, which installs the clients)"
        );
    }
    eprintln!("SKIP: {problem}; run scripts/test.sh to install the real clients");
    None
}

/// The TypeScript client directory, checked for an installed SDK.
fn ts_client_dir() -> Option<PathBuf> {
    node_client_dir("MCP_TS_CLIENT_DIR", "@modelcontextprotocol/sdk")
}

/// The TypeScript v2 client directory, checked for an installed `@modelcontextprotocol/client`.
fn ts2_client_dir() -> Option<PathBuf> {
    node_client_dir("MCP_TS2_CLIENT_DIR", "@modelcontextprotocol/client")
}

/// The directory `var` names, checked for an installed npm `package`.
fn node_client_dir(var: &str, package: &str) -> Option<PathBuf> {
    let dir = client_path(var)?;
    let sdk = dir.join("node_modules").join(package).join("package.json");
    if !sdk.exists() {
        let problem = format!("{} is missing (npm ci not run)", sdk.display());
        assert!(!clients_required(), "{problem} and MCP_REQUIRE_CLIENTS=1");
        eprintln!("SKIP: {problem}");
        return None;
    }
    Some(dir)
}

/// The Python interpreter and the client script.
fn py_client() -> Option<(PathBuf, PathBuf)> {
    let python = client_path("MCP_PY")?;
    let script = client_path("MCP_PY_CLIENT")?;
    Some((python, script))
}

// ---------------------------------------------------------------------------------------------
// The node process
// ---------------------------------------------------------------------------------------------

/// The repository root: the root package's directory, the parent of `interop/`.
fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("interop/ sits in the repository root")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .map(|p| {
            if p.is_absolute() {
                p
            } else {
                repo_root().join(p)
            }
        })
        .unwrap_or_else(|| repo_root().join("target"))
}

/// `target/debug/examples/node`, built on demand (once per test process).
fn node_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_example("node")).clone()
}

/// `target/debug/examples/everything`, built on demand (once per test process).
fn everything_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_example("everything")).clone()
}

fn build_example(name: &str) -> PathBuf {
    let bin = target_dir()
        .join("debug")
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    // Always build: a no-op when up to date, and a stale binary would test old code.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "--example", name])
        .current_dir(repo_root())
        .status()
        .unwrap_or_else(|e| panic!("spawn `cargo build --example {name}`: {e}"));
    assert!(
        status.success(),
        "`cargo build --example {name}` failed: {status}"
    );
    assert!(bin.exists(), "{} missing after cargo build", bin.display());
    bin
}

/// The example node as `n1`, its log in `target/real-clients/<test>-node.log`.
async fn start_node(test: &str) -> ExampleProcess {
    let log_dir = target_dir().join("real-clients");
    std::fs::create_dir_all(&log_dir).expect("create the node log directory");
    ExampleProcess::start(
        &node_binary(),
        &["--node", "n1"],
        log_dir.join(format!("{test}-node.log")),
    )
    .await
}

/// The example `everything` server, its log in `target/real-clients/<test>-everything.log`.
async fn start_everything(test: &str) -> ExampleProcess {
    let log_dir = target_dir().join("real-clients");
    std::fs::create_dir_all(&log_dir).expect("create the server log directory");
    ExampleProcess::start(
        &everything_binary(),
        &[],
        log_dir.join(format!("{test}-everything.log")),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Running a client script
// ---------------------------------------------------------------------------------------------

/// Runs a client to completion, asserts exit status 0 and returns its JSON observations (the
/// last non-empty line of stdout).
async fn run_client(node: &ExampleProcess, mut cmd: tokio::process::Command, what: &str) -> Value {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let output = tokio::time::timeout(CLIENT_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "{what}: no exit within {CLIENT_TIMEOUT:?}\n{}",
                node.log_tail()
            )
        })
        .unwrap_or_else(|e| panic!("{what}: could not run: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{what} failed ({})\n--- stderr ---\n{stderr}\n--- stdout ---\n{stdout}\n{}",
        output.status,
        node.log_tail()
    );
    let last = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_else(|| panic!("{what} printed nothing\n--- stderr ---\n{stderr}"));
    let report: Value = serde_json::from_str(last)
        .unwrap_or_else(|e| panic!("{what}: last stdout line is not JSON ({e}): {last}"));
    eprintln!("{what}: {report}");
    report
}

fn ts_command(dir: &Path, url: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(dir.join("full_session.mjs"))
        .arg(url)
        .current_dir(dir);
    cmd
}

/// `tests/clients/ts2/listen.mjs` running, its stdout read one JSON event per line.
struct Listener {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
    stderr: Option<JoinHandle<String>>,
}

impl Listener {
    fn spawn(dir: &Path, url: &str, args: &[&str]) -> Self {
        Self::spawn_script(dir, "listen.mjs", url, args)
    }

    /// Another script of the same line protocol (`tests/clients/ts/legacy_listen.mjs`).
    fn spawn_script(dir: &Path, script: &str, url: &str, args: &[&str]) -> Self {
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join(script))
            .arg(url)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn node listen.mjs: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let mut stderr = child.stderr.take().expect("piped stderr");
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text).await;
            text
        });
        Self {
            child,
            lines: BufReader::new(stdout).lines(),
            stderr: Some(stderr),
        }
    }

    /// The next event, which must be `event` and arrive before `deadline`. The script's
    /// `error` event, its exit or the deadline fail the test, with the server's log.
    async fn expect(&mut self, event: &str, deadline: Instant, server: &ExampleProcess) -> Value {
        let line = match tokio::time::timeout_at(deadline, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(Ok(None)) => self.fail(&format!("exited before `{event}`"), server).await,
            Ok(Err(e)) => self.fail(&format!("stdout: {e}"), server).await,
            Err(_) => {
                self.fail(&format!("no `{event}` before the deadline"), server)
                    .await
            }
        };
        let value: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("listen.mjs: a line that is not JSON ({e}): {line}"));
        eprintln!("listen.mjs: {value}");
        if value["event"] != event {
            self.fail(&format!("expected `{event}`, got {value}"), server)
                .await;
        }
        value
    }

    /// Waits (until `deadline`) for the script to exit, and asserts it exited 0.
    async fn exits_cleanly(&mut self, deadline: Instant, server: &ExampleProcess) {
        match tokio::time::timeout_at(deadline, self.child.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => self.fail(&format!("exited with {status}"), server).await,
            Ok(Err(e)) => self.fail(&format!("wait: {e}"), server).await,
            Err(_) => self.fail("did not exit before the deadline", server).await,
        }
    }

    async fn fail(&mut self, problem: &str, server: &ExampleProcess) -> ! {
        let _ = self.child.kill().await;
        let mut rest = String::new();
        while let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_secs(1), self.lines.next_line()).await
        {
            rest.push_str(&line);
            rest.push('\n');
        }
        let stderr = match self.stderr.take() {
            Some(task) => tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default(),
            None => String::new(),
        };
        panic!(
            "listen.mjs: {problem}\n--- rest of stdout ---\n{rest}--- stderr ---\n{stderr}\n{}",
            server.log_tail()
        );
    }
}

/// `tools/call NAME` as one stateless 2026-07-28 request (headers and `_meta` as the spec
/// asks), asserting a complete result.
async fn call_tool_modern(url: &str, name: &str) -> Value {
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {
            "name": name, "arguments": {},
            "_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {}
            }
        }
    });
    let res = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("build reqwest client")
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", name)
        .body(body.to_string())
        .send()
        .await
        .unwrap_or_else(|e| panic!("tools/call {name}: {e}"));
    let status = res.status();
    let text = res.text().await.expect("read the tools/call response");
    assert!(
        status.is_success(),
        "tools/call {name}: HTTP {status}: {text}"
    );
    let reply: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("tools/call {name}: not JSON ({e}): {text}"));
    assert_eq!(reply["result"]["resultType"], "complete", "{reply}");
    reply
}

fn py_command(python: &Path, script: &Path, url: &str, era: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(script).arg(url).args(["--era", era]);
    cmd
}

// ---------------------------------------------------------------------------------------------
// Checks on the observations
// ---------------------------------------------------------------------------------------------

fn str_field<'a>(report: &'a Value, key: &str) -> &'a str {
    report[key]
        .as_str()
        .unwrap_or_else(|| panic!("`{key}` is not a string in {report}"))
}

fn u64_field(report: &Value, key: &str) -> u64 {
    report[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` is not a non-negative integer in {report}"))
}

/// Every response came from node `n1`, and every response said so.
fn assert_single_node(report: &Value) {
    let nodes: Vec<&str> = report["nodes_seen"]
        .as_array()
        .unwrap_or_else(|| panic!("`nodes_seen` is not an array in {report}"))
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(nodes, ["n1"], "x-mcp-node values seen: {report}");
    assert_eq!(
        u64_field(report, "responses_without_node_header"),
        0,
        "some responses had no x-mcp-node header: {report}"
    );
}

/// The steps common to both clients in the legacy era.
fn assert_legacy_session(report: &Value) {
    assert_eq!(report["ok"], Value::Bool(true), "{report}");
    assert_eq!(str_field(report, "protocol_version"), "2025-11-25");
    assert!(!str_field(report, "session_id").is_empty());
    assert_eq!(str_field(report, "echo"), "hi");
    assert_eq!(str_field(report, "node"), "n1");
    assert!(
        str_field(report, "sampled_text").contains("sampled:abc"),
        "sampled text: {report}"
    );
    assert!(u64_field(report, "progress_notifications") >= 3, "{report}");
    assert!(u64_field(report, "progress_log_messages") >= 1, "{report}");
    assert_eq!(str_field(report, "progress_result"), "done");
    assert_eq!(
        report["standalone_notification"]["data"],
        Value::from("hello-standalone"),
        "{report}"
    );
    let delete = u64_field(report, "delete_status");
    assert!((200..300).contains(&delete), "DELETE answered {delete}");
    assert_eq!(
        u64_field(report, "post_after_delete_status"),
        404,
        "{report}"
    );
    let body = &report["post_after_delete_body"];
    assert_eq!(body["jsonrpc"], Value::from("2.0"), "404 body: {body}");
    assert!(body["error"]["code"].is_i64(), "404 body: {body}");
    assert!(body["error"]["message"].is_string(), "404 body: {body}");
    assert_single_node(report);
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sdk_legacy_full_session() {
    let Some(dir) = ts_client_dir() else { return };
    let node = start_node("ts-legacy").await;
    let report = run_client(&node, ts_command(&dir, &node.url()), "TS SDK client").await;
    assert_eq!(str_field(&report, "sdk_version"), "1.32.2");
    assert_legacy_session(&report);
    assert_eq!(
        report["standalone_via_get"],
        Value::Bool(true),
        "the notify message must arrive on the standalone GET stream: {report}"
    );
    assert_eq!(u64_field(&report, "standalone_get_status"), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_legacy_full_session() {
    let Some((python, script)) = py_client() else {
        return;
    };
    let node = start_node("py-legacy").await;
    let cmd = py_command(&python, &script, &node.url(), "legacy");
    let report = run_client(&node, cmd, "Python SDK client (legacy)").await;
    assert_eq!(str_field(&report, "sdk_version"), "2.3.0");
    assert_eq!(str_field(&report, "era"), "legacy");
    assert_legacy_session(&report);
    assert_eq!(u64_field(&report, "standalone_get_status"), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_sdk_modern_stateless_calls() {
    let Some((python, script)) = py_client() else {
        return;
    };
    let node = start_node("py-modern").await;
    let cmd = py_command(&python, &script, &node.url(), "modern");
    let report = run_client(&node, cmd, "Python SDK client (modern)").await;
    assert_eq!(report["ok"], Value::Bool(true), "{report}");
    assert_eq!(str_field(&report, "era"), "modern");
    assert_eq!(str_field(&report, "protocol_version"), "2026-07-28");
    assert_eq!(str_field(&report, "echo"), "hi");
    assert_eq!(str_field(&report, "node"), "n1");
    assert!(
        u64_field(&report, "progress_notifications") >= 3,
        "{report}"
    );
    assert_eq!(str_field(&report, "progress_result"), "done");
    assert_eq!(
        report["session_ids_seen"],
        Value::Array(vec![]),
        "a modern-era response carried Mcp-Session-Id: {report}"
    );
    let methods: Vec<&str> = report["http_exchanges"]
        .as_array()
        .unwrap_or_else(|| panic!("`http_exchanges` is not an array in {report}"))
        .iter()
        .filter_map(|e| e["method"].as_str())
        .collect();
    assert!(
        !methods.is_empty() && methods.iter().all(|m| *m == "POST"),
        "modern era must be POST only: {methods:?}"
    );
    assert_single_node(&report);
}

/// The v2 client connects in the 2026-07-28 era (server identity from `server/discover`), opens
/// `subscriptions/listen` for tools list changes, and receives the change a second, plain
/// modern request triggers, tagged with the subscription id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typescript_sdk_v2_listen_receives_tools_list_changed() {
    let Some(dir) = ts2_client_dir() else { return };
    let server = start_everything("ts2-listen").await;
    let url = server.url();
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let mut listener = Listener::spawn(
        &dir,
        &url,
        &["--expect", "1", "--filter", "tools", "--timeout", "60000"],
    );

    let hello = listener.expect("server", deadline, &server).await;
    assert_eq!(hello["protocolVersion"], "2026-07-28", "{hello}");
    assert_eq!(hello["era"], "modern", "{hello}");
    assert_eq!(hello["info"]["name"], "mcp-affinity-everything", "{hello}");
    assert_eq!(hello["sdkVersion"], "2.4.0", "{hello}");
    let ready = listener.expect("ready", deadline, &server).await;
    assert_eq!(
        ready["filter"],
        json!({"toolsListChanged": true}),
        "{ready}"
    );

    // Acknowledged: a change from now on reaches the stream.
    call_tool_modern(&url, "test_trigger_tool_change").await;
    let note = listener.expect("notification", deadline, &server).await;
    assert_eq!(note["method"], "notifications/tools/list_changed", "{note}");
    let subscription = &note["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"];
    assert!(
        subscription.as_str().is_some_and(|id| !id.is_empty()),
        "the notification is not tagged with the subscription id: {note}"
    );
    listener.exits_cleanly(deadline, &server).await;
}

/// One `everything` node of a cluster on `redis`.
async fn start_everything_node(
    test: &str,
    node: &str,
    redis: &redis_support::RedisServer,
) -> ExampleProcess {
    let log_dir = target_dir().join("real-clients");
    std::fs::create_dir_all(&log_dir).expect("create the server log directory");
    ExampleProcess::start(
        &everything_binary(),
        &["--node", node, "--redis", &redis.url()],
        log_dir.join(format!("{test}-{node}.log")),
    )
    .await
}

// Three `everything` nodes sharing one Redis: a change triggered on node B reaches, through
// the cluster bus, a TypeScript SDK v2 client's `subscriptions/listen` stream on node A and a
// TypeScript SDK 1.x legacy session's GET stream on node C, every time.
#[tokio::test]
async fn a_change_on_one_everything_node_reaches_listeners_on_the_others() {
    const ROUNDS: usize = 5;
    let Some(v2) = ts2_client_dir() else { return };
    let Some(v1) = ts_client_dir() else { return };
    let redis = redis_support::RedisServer::start();
    let a = start_everything_node("bus", "a", &redis).await;
    let b = start_everything_node("bus", "b", &redis).await;
    let c = start_everything_node("bus", "c", &redis).await;
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let rounds = ROUNDS.to_string();
    let mut modern = Listener::spawn(
        &v2,
        &a.url(),
        &[
            "--expect",
            &rounds,
            "--filter",
            "tools",
            "--timeout",
            "120000",
        ],
    );
    modern.expect("server", deadline, &a).await;
    modern.expect("ready", deadline, &a).await;
    let mut legacy = Listener::spawn_script(
        &v1,
        "legacy_listen.mjs",
        &c.url(),
        &["--expect", &rounds, "--timeout", "120000"],
    );
    legacy.expect("ready", deadline, &c).await;
    for round in 0..ROUNDS {
        call_tool_modern(&b.url(), "test_trigger_tool_change").await;
        let on_a = modern.expect("notification", deadline, &a).await;
        assert_eq!(
            on_a["method"], "notifications/tools/list_changed",
            "round {round}: {on_a}"
        );
        let on_c = legacy.expect("notification", deadline, &c).await;
        assert_eq!(
            on_c["method"], "notifications/tools/list_changed",
            "round {round}: {on_c}"
        );
    }
    modern.exits_cleanly(deadline, &a).await;
    legacy.exits_cleanly(deadline, &c).await;
    drop(b);
}
