//! Smoke tests of the framework examples: each is built, started on a loopback port it binds
//! itself and spoken to over TCP.

#[path = "support/http.rs"]
mod http_support;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};

struct Running(Child);

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
    let mut child = Command::new(example(name))
        .args(args("127.0.0.1:0"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn example");
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
    http_support::http_client()
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
