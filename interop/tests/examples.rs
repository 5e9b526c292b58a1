//! Smoke tests of the framework examples: each is built, started on a loopback port it binds
//! itself and spoken to over TCP.

#[path = "support/mcp.rs"]
mod mcp_support;
#[path = "../../tests/support/redis.rs"]
mod redis_support;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use mcp_support::Sse;
use redis_support::RedisServer;

use serde_json::{Value, json};

struct Running(Child);

/// Upper bound for the node to exit after SIGTERM (its drain waits 1.5 s for quiet).
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);

impl Running {
    /// SIGTERM: the node drains, then exits.
    fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .stdin(Stdio::null())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits (bounded by [`EXIT_TIMEOUT`], polling) for the process to exit.
    async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = tokio::time::Instant::now() + EXIT_TIMEOUT;
        loop {
            if let Some(status) = self.0.try_wait().expect("wait for the example") {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the example did not exit within {EXIT_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The repository root: the root package's directory, the parent of `interop/`.
fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("interop/ sits in the repository root")
}

/// The package an example belongs to: `tonic_web` is this package's (it needs tonic), the
/// others the root package's.
fn package_of(example: &str) -> &'static str {
    if example == "tonic_web" {
        "mcp-affinity-interop"
    } else {
        "mcp-affinity"
    }
}

fn example(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target"));
    let bin = target.join("debug").join("examples").join(name);
    // Always build: a no-op when up to date, and a stale binary would test old code.
    {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", package_of(name), "--example", name])
            .current_dir(repo_root())
            .status()
            .expect("cargo build");
        assert!(status.success(), "building example {name}");
    }
    bin
}

/// Upper bound for an example to print that it listens (it was built already).
const LISTEN_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts an example listening on a loopback port, waiting (bounded) until it listens.
async fn start(name: &str) -> (Running, String) {
    start_with(name, |addr| vec![addr.to_owned()]).await
}

/// [`start`] with the arguments `args` makes of the address. The example binds
/// `127.0.0.1:0` itself (no port is picked first and then reused, so no other process can
/// take it in between) and prints the address it bound; that line, read from this very
/// process's stdout, is the readiness signal, so every later request reaches this process.
async fn start_with(name: &str, args: impl FnOnce(&str) -> Vec<String>) -> (Running, String) {
    let child = Command::new(example(name))
        .args(args("127.0.0.1:0"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn example");
    started(name, child).await
}

/// The log an example writes to stderr, collected line by line.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    fn text(&self) -> String {
        self.lines().join("\n")
    }

    /// The lines at level WARN or ERROR.
    fn alarming(&self) -> Vec<String> {
        self.lines()
            .into_iter()
            .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
            .collect()
    }
}

/// [`start_with`], with the example's stderr collected (at `RUST_LOG` `rust_log`).
async fn start_logged(
    name: &str,
    rust_log: &str,
    args: impl FnOnce(&str) -> Vec<String>,
) -> (Running, String, Log) {
    let mut child = Command::new(example(name))
        .args(args("127.0.0.1:0"))
        .env("RUST_LOG", rust_log)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn example");
    let stderr = child.stderr.take().expect("piped stderr");
    let log = Log::default();
    let lines = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            lines.0.lock().unwrap().push(line);
        }
    });
    let (running, addr) = started(name, child).await;
    (running, addr, log)
}

/// Waits (bounded) until the spawned example `child` prints the address it listens on.
async fn started(name: &str, mut child: Child) -> (Running, String) {
    let stdout = child.stdout.take().expect("piped stdout");
    let running = Running(child);
    let (tx, rx) = tokio::sync::oneshot::channel();
    // Reads to the end (so the example never blocks on a full pipe), reporting the first
    // address it prints.
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(addr) = listening_addr(&line)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(addr);
            }
        }
    });
    let addr = tokio::time::timeout(LISTEN_TIMEOUT, rx)
        .await
        .unwrap_or_else(|_| panic!("example {name} did not listen within {LISTEN_TIMEOUT:?}"))
        .unwrap_or_else(|_| panic!("example {name} exited before it listened"));
    (running, addr)
}

/// The address in an example's `… listening on http://<addr>/…` line.
fn listening_addr(line: &str) -> Option<String> {
    let rest = line.split_once("listening on http://")?.1;
    let addr = rest.split('/').next()?;
    addr.parse::<std::net::SocketAddr>()
        .ok()
        .map(|a| a.to_string())
}

fn http() -> reqwest::Client {
    mcp_support::http_client()
}

async fn initialize(addr: &str) -> reqwest::Response {
    let body = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"smoke","version":"1"}}});
    http()
        .post(format!("http://{addr}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("initialize")
}

async fn check_mcp(addr: &str) {
    let res = initialize(addr).await;
    assert_eq!(res.status(), 200);
    let id = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let tag = id.split('.').next().unwrap().to_owned();
    assert_eq!(tag.len(), 8, "the id carries the node tag: {id}");
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.starts_with(&format!("_mcp_backend={tag};")),
        "{cookie}"
    );
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["result"]["protocolVersion"], "2025-11-25");
    let ping = http()
        .post(format!("http://{addr}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-session-id", &id)
        .body(r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(ping.status(), 200);
}

// The node example (the README's main command) with all three layers and its embedded
// registry, and with `--transport-only` (for benchmarks): there, no affinity layer reads the
// node's tag back, so session ids carry none and no cookie is set.
#[tokio::test]
async fn node_example_serves_mcp_with_and_without_affinity() {
    let listen = |addr: &str| vec!["--listen".to_owned(), addr.to_owned()];
    let (_full, addr) = start_with("node", listen).await;
    check_mcp(&addr).await;

    let (_bare, addr) = start_with("node", |addr| {
        let mut args = listen(addr);
        args.push("--transport-only".to_owned());
        args
    })
    .await;
    let res = initialize(&addr).await;
    assert_eq!(res.status(), 200);
    let id = res.headers()["mcp-session-id"].to_str().unwrap();
    assert!(!id.contains('.'), "an untagged id: {id}");
    assert!(res.headers().get("set-cookie").is_none());
}

/// The `_meta` every modern (2026-07-28) request carries.
fn modern_meta() -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "smoke", "version": "1"}
    })
}

/// A modern request: no session, the version and method in headers and in `_meta`.
async fn modern(addr: &str, id: Value, method: &str, mut params: Value) -> reqwest::Response {
    params["_meta"] = modern_meta();
    let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
    http()
        .post(format!("http://{addr}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", method)
        .body(body.to_string())
        .send()
        .await
        .expect("modern request")
}

/// Opens a `subscriptions/listen` stream with request id `id` and reads its first message:
/// the acknowledgement, tagged with the subscription id, honouring none of the requested
/// types (the node's lists never change).
async fn listen(addr: &str, id: &str) -> Sse {
    let filter =
        json!({"notifications": {"toolsListChanged": true, "resourceSubscriptions": ["x://y"]}});
    let res = modern(addr, json!(id), "subscriptions/listen", filter).await;
    assert_eq!(res.status(), 200);
    let mut sse = Sse::new(res);
    let ack = sse.next().await.expect("the acknowledgement").json();
    assert_eq!(
        ack["method"], "notifications/subscriptions/acknowledged",
        "{ack}"
    );
    assert_eq!(ack["params"]["notifications"], json!({}), "{ack}");
    assert_eq!(
        ack["params"]["_meta"]["io.modelcontextprotocol/subscriptionId"], id,
        "{ack}"
    );
    assert!(ack.get("id").is_none(), "a notification: {ack}");
    sse
}

/// The node's open listen streams, from `/stats`.
async fn open_listens(addr: &str) -> u64 {
    let stats: Value = http()
        .get(format!("http://{addr}/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    stats["listen"]["open"]
        .as_u64()
        .expect("listen.open in /stats")
}

/// Polls `/stats` (bounded) until the node has `n` open listen streams.
async fn wait_open_listens(addr: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while open_listens(addr).await != n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node did not reach {n} open listen streams"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const NODE_LOG: &str = "info,mcp_affinity=debug,node=debug";

// A modern `server/discover` gets the 2026-07-28 shape: versions, capabilities, the server's
// name and version under `_meta` (not at the top level), `resultType` and caching hints.
// Legacy sessions are served as before, and see no `subscriptions/listen`.
#[tokio::test]
async fn node_example_answers_modern_server_discover() {
    let (_node, addr) =
        start_with("node", |addr| vec!["--listen".to_owned(), addr.to_owned()]).await;
    let res = modern(&addr, json!(1), "server/discover", json!({})).await;
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    let result = &v["result"];
    assert_eq!(result["supportedVersions"], json!(["2026-07-28"]), "{v}");
    assert_eq!(result["capabilities"]["tools"]["listChanged"], false, "{v}");
    let info = &result["_meta"]["io.modelcontextprotocol/serverInfo"];
    assert_eq!(info["name"], "mcp-affinity-node", "{v}");
    // The node reports the library's version (the root package's, not this test package's).
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
        .expect("root Cargo.toml");
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|l| l.strip_suffix('"'))
        .expect("root package version");
    assert_eq!(info["version"], version, "{v}");
    assert!(result.get("serverInfo").is_none(), "under _meta only: {v}");
    assert_eq!(result["resultType"], "complete", "{v}");
    assert_eq!(result["cacheScope"], "public", "{v}");
    assert!(result["ttlMs"].is_u64(), "{v}");

    check_mcp(&addr).await;
    let init = initialize(&addr).await;
    let session = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let legacy = http()
        .post(format!("http://{addr}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-session-id", &session)
        .header("mcp-protocol-version", "2025-11-25")
        .body(r#"{"jsonrpc":"2.0","id":2,"method":"subscriptions/listen","params":{"notifications":{}}}"#)
        .send()
        .await
        .unwrap();
    let v: Value = legacy.json().await.unwrap();
    assert_eq!(v["error"]["code"], -32601, "not a legacy method: {v}");
}

// `subscriptions/listen` is acknowledged on an SSE stream that stays open, kept alive by
// comments; when the client goes away the node ends it quietly (nothing logged at WARN or
// ERROR) and keeps serving, new listeners included. A filter that is not an object is
// refused before any stream opens.
#[tokio::test]
async fn node_example_keeps_a_listen_stream_open_until_the_client_leaves() {
    let (_node, addr, log) = start_logged("node", NODE_LOG, |addr| {
        ["--listen", addr, "--keep-alive", "0.1"]
            .map(str::to_owned)
            .to_vec()
    })
    .await;
    let mut sse = listen(&addr, "sub-1").await;
    assert_eq!(open_listens(&addr).await, 1);
    // Still open: what follows the acknowledgement is keep-alive comments, not an end.
    for _ in 0..3 {
        let ev = sse.next_raw().await.expect("the stream stays open");
        assert!(ev.comment && ev.data.is_empty(), "{ev:?}");
    }
    drop(sse);
    wait_open_listens(&addr, 0).await;

    let v: Value = modern(&addr, json!(2), "tools/list", json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["result"]["tools"].as_array().map(Vec::len),
        Some(6),
        "{v}"
    );
    let again = listen(&addr, "sub-2").await;
    assert_eq!(open_listens(&addr).await, 1);
    drop(again);
    wait_open_listens(&addr, 0).await;
    check_mcp(&addr).await;

    let bad = modern(
        &addr,
        json!(3),
        "subscriptions/listen",
        json!({"notifications": true}),
    )
    .await;
    let v: Value = bad.json().await.unwrap();
    assert_eq!(v["error"]["code"], -32602, "{v}");
    let v: Value = modern(&addr, json!(4), "subscriptions/listen", json!({}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["error"]["code"], -32602, "notifications is required: {v}");

    let text = log.text();
    assert!(
        text.contains(r#"listen stream ended subscription="sub-1" by="client""#),
        "{text}"
    );
    assert_eq!(log.alarming(), Vec::<String>::new(), "{text}");
}

// On SIGTERM the node ends its listen streams at once with their final result (`complete`,
// carrying the subscription id), then drains and exits cleanly: no connection is left for
// the exit to wait out.
#[tokio::test]
async fn node_example_ends_listen_streams_when_it_drains() {
    let (mut node, addr, log) = start_logged("node", NODE_LOG, |addr| {
        ["--listen", addr].map(str::to_owned).to_vec()
    })
    .await;
    let mut sse = listen(&addr, "sub-9").await;
    let signalled = tokio::time::Instant::now();
    node.sigterm();
    let end = sse.next().await.expect("the final result").json();
    let ended_after = signalled.elapsed();
    assert_eq!(end["id"], "sub-9", "{end}");
    assert_eq!(end["result"]["resultType"], "complete", "{end}");
    assert_eq!(
        end["result"]["_meta"]["io.modelcontextprotocol/subscriptionId"], "sub-9",
        "{end}"
    );
    assert_eq!(
        end["result"]["_meta"]["io.modelcontextprotocol/serverInfo"]["name"], "mcp-affinity-node",
        "{end}"
    );
    assert!(
        sse.next().await.is_none(),
        "the stream ends after the result"
    );
    let status = node.wait_exit().await;
    let exited_after = signalled.elapsed();
    assert!(status.success(), "{status}\n{}", log.text());
    eprintln!(
        "listen stream ended {} ms after SIGTERM; node exited after {} ms",
        ended_after.as_millis(),
        exited_after.as_millis()
    );
    let text = log.text();
    assert!(
        text.contains(r#"listen stream ended subscription="sub-9" by="node""#),
        "{text}"
    );
    assert_eq!(log.alarming(), Vec::<String>::new(), "{text}");
}

/// The node's `/metrics` answers the Prometheus text format with the documented names; a
/// session and a refused request show up in it.
#[cfg(feature = "metrics")]
#[tokio::test]
async fn node_example_serves_prometheus_metrics() {
    use mcp_affinity::metrics as m;

    let (_node, addr) =
        start_with("node", |addr| vec!["--listen".to_owned(), addr.to_owned()]).await;
    check_mcp(&addr).await;
    let refused = http()
        .post(format!("http://{addr}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("origin", "https://elsewhere.example")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    let res = http()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    let text = res.text().await.unwrap();
    for (name, kind) in [
        (m::SESSIONS, "gauge"),
        (m::SESSIONS_OPENED, "counter"),
        (m::REJECTIONS, "counter"),
        (m::REGISTRY_WRITES, "counter"),
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}\n")),
            "{name} {kind} in:\n{text}"
        );
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "{name} described"
        );
        assert!(
            m::ALL.iter().any(|d| d.0 == name && d.1 == kind),
            "{name} documented"
        );
    }
    assert!(
        text.contains(&format!("{}{{how=\"initialize\"}} 1\n", m::SESSIONS_OPENED)),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{}{{layer=\"transport\",kind=\"origin_not_allowed\"}} 1\n",
            m::REJECTIONS
        )),
        "{text}"
    );
    assert!(text.contains(&format!("{} 1\n", m::SESSIONS)), "{text}");
}

/// `everything --node <node> --redis <url>` on a loopback port, its log collected.
async fn start_everything_node(node: &str, redis: &RedisServer) -> (Running, String, Log) {
    let url = redis.url();
    start_logged("everything", "info", |addr| {
        ["--listen", addr, "--node", node, "--redis", &url]
            .map(str::to_owned)
            .to_vec()
    })
    .await
}

/// Upper bound for a condition the tests below poll for.
const POLL_TIMEOUT: Duration = Duration::from_secs(10);

// Two `everything` nodes sharing one Redis: a legacy session initialized on node A is served
// when its next request lands on node B (B forwards it to A, the live owner), not `404`.
#[tokio::test]
async fn everything_example_serves_a_session_on_the_other_node() {
    let redis = RedisServer::start();
    let (_a, addr_a, log_a) = start_everything_node("a", &redis).await;
    let (_b, addr_b, log_b) = start_everything_node("b", &redis).await;

    let init = initialize(&addr_a).await;
    assert_eq!(init.status(), 200, "{}", log_a.text());
    let id = init.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_owned();
    // The record is written off the request path: wait (bounded) until it is in Redis, so
    // node B's one lookup finds it.
    let key = format!("mcp:session:{{{id}}}");
    let deadline = tokio::time::Instant::now() + POLL_TIMEOUT;
    while redis.get(&key).is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no record for the session in Redis\n{}",
            log_a.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let res = http()
        .post(format!("http://{addr_b}/mcp"))
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-session-id", &id)
        .header("mcp-protocol-version", "2025-11-25")
        .body(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#)
        .send()
        .await
        .unwrap();
    let status = res.status();
    let body = res.text().await.unwrap();
    let context = format!(
        "{body}\n--- node a ---\n{}\n--- node b ---\n{}",
        log_a.text(),
        log_b.text()
    );
    assert_eq!(status, 200, "{context}");
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {context}"));
    assert_eq!(v["id"], 2, "{context}");
    assert!(
        v["result"]["tools"]
            .as_array()
            .is_some_and(|t| !t.is_empty()),
        "{context}"
    );
}

/// `GET /healthz`: its status and JSON body, or `None` when nothing answered.
async fn healthz(addr: &str) -> Option<(u16, Value)> {
    let res = http()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .ok()?;
    let status = res.status().as_u16();
    Some((status, res.json().await.ok()?))
}

// `/healthz` answers 200 `ok` (and the bus `ok` once subscribed, the task store `ok`) while the node serves and 503
// `draining` once SIGTERM started
// its drain (with Redis the drain waits out the quiet period, so the node is still up), and
// the node then exits cleanly.
#[tokio::test]
async fn everything_example_fails_healthz_while_it_drains() {
    let redis = RedisServer::start();
    let (mut node, addr, log) = start_everything_node("a", &redis).await;
    // The bus subscribes in the background: `ok` once it has.
    let deadline = tokio::time::Instant::now() + POLL_TIMEOUT;
    loop {
        let health = healthz(&addr).await;
        let tasks = json!({"store": "ok", "running": 0});
        if health == Some((200, json!({"status": "ok", "bus": "ok", "tasks": tasks}))) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline
                && health.as_ref().is_some_and(|(code, _)| *code == 200),
            "/healthz not ok (last: {health:?})\n{}",
            log.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    node.sigterm();
    let deadline = tokio::time::Instant::now() + POLL_TIMEOUT;
    loop {
        let health = healthz(&addr).await;
        let tasks = json!({"store": "ok", "running": 0});
        if health
            == Some((
                503,
                json!({"status": "draining", "bus": "ok", "tasks": tasks}),
            ))
        {
            break;
        }
        assert!(
            health.is_some() && tokio::time::Instant::now() < deadline,
            "no 503 from /healthz while draining (last: {health:?})\n{}",
            log.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = node.wait_exit().await;
    assert!(status.success(), "{status}\n{}", log.text());
    assert_eq!(log.alarming(), Vec::<String>::new(), "{}", log.text());
}

#[tokio::test]
async fn hyper_server_example_serves_mcp() {
    let (_server, addr) = start("hyper_server").await;
    check_mcp(&addr).await;
    let other = http()
        .get(format!("http://{addr}/elsewhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404);
    assert!(other.headers().get("set-cookie").is_none());
}

#[tokio::test]
async fn tonic_web_example_serves_grpc_web_and_mcp_side_by_side() {
    let (_server, addr) = start("tonic_web").await;
    check_mcp(&addr).await;
    // grpc.health.v1.Health/Check with an empty HealthCheckRequest, gRPC-web framed.
    let res = http()
        .post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc-web+proto")
        .header("x-grpc-web", "1")
        .body(vec![0u8, 0, 0, 0, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        res.headers().get("set-cookie").is_none(),
        "the MCP layers do not touch gRPC"
    );
    let body = res.bytes().await.unwrap();
    // A data frame whose message is HealthCheckResponse{status: SERVING (1)}: 08 01.
    assert_eq!(&body[..7], &[0, 0, 0, 0, 2, 0x08, 0x01], "{body:?}");
    let trailers = String::from_utf8_lossy(&body[7..]);
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
}
