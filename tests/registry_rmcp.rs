//! The registry layer over another MCP implementation: rmcp's `StreamableHttpService`.
//! It reads only HTTP (minted `Mcp-Session-Id`, 404s, DELETE), so it works unchanged.

#[path = "support/redis.rs"]
mod redis_support;

use std::{sync::Arc, time::Duration};

use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use mcp_affinity::{
    SessionAffinityLayer,
    registry::{RedisStore, RegistryHandle, SessionRegistryLayer},
};
use redis_support::RedisServer;
use rmcp::transport::{
    StreamableHttpServerConfig, StreamableHttpService,
    streamable_http_server::session::local::LocalSessionManager,
};
use serde_json::{Value, json};

#[derive(Clone)]
struct Minimal;

impl rmcp::ServerHandler for Minimal {}

const ACCEPT: &str = "application/json, text/event-stream";

#[tokio::test]
async fn registry_over_rmcp_streamable_http_service() {
    let redis = RedisServer::start();
    let registry = SessionRegistryLayer::new(
        RedisStore::connect(&redis.url()).await.unwrap(),
        "rmcp-node",
    )
    .build()
    .unwrap();
    let handle = registry.handle();
    let rmcp_service = StreamableHttpService::new(
        || Ok(Minimal),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let svc = tower::ServiceBuilder::new()
        .layer(registry)
        .service(rmcp_service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    let url = format!("http://{addr}/");
    let http = reqwest::Client::new();
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let res = http
        .post(&url)
        .header("accept", ACCEPT)
        .header("content-type", "application/json")
        .body(init.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    let id = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    drop(res);
    assert!(handle.flush(Duration::from_secs(10)).await);
    let key = format!("mcp:session:{{{id}}}");
    let record: Value = serde_json::from_str(&redis.get(&key).expect("registered")).unwrap();
    assert_eq!(record["n"], "rmcp-node");

    // rmcp's 404 for an unknown session is enriched by the registry.
    let res = http
        .post(&url)
        .header("accept", ACCEPT)
        .header("content-type", "application/json")
        .header("mcp-session-id", "not-a-session")
        .header("mcp-protocol-version", "2025-06-18")
        .body(json!({"jsonrpc":"2.0","id":2,"method":"ping"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"]["data"]["reason"], "unknown");

    // DELETE through rmcp removes the record.
    let res = http
        .delete(&url)
        .header("mcp-session-id", &id)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert!(handle.flush(Duration::from_secs(10)).await);
    assert_eq!(redis.get(&key), None);
}

/// One node: [affinity (envelope mode) →] registry → rmcp, served over TCP.
struct Node {
    url: String,
    registry: RegistryHandle<RedisStore>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_node(
    redis: &RedisServer,
    name: &str,
    registry: impl FnOnce(SessionRegistryLayer<RedisStore>) -> SessionRegistryLayer<RedisStore>,
    keep_alive: Option<Duration>,
) -> Node {
    let registry = registry(SessionRegistryLayer::new(
        RedisStore::connect(&redis.url()).await.unwrap(),
        name,
    ))
    .build()
    .unwrap();
    let handle = registry.handle();
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = keep_alive;
    let rmcp_service = StreamableHttpService::new(
        || Ok(Minimal),
        Arc::new(sessions),
        StreamableHttpServerConfig::default(),
    );
    let svc = tower::ServiceBuilder::new()
        .layer(SessionAffinityLayer::for_node(name).with_envelope(true))
        .layer(registry)
        .service(rmcp_service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let svc = TowerToHyperService::new(svc.clone());
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Node {
        url: format!("http://{addr}/mcp"),
        registry: handle,
        task,
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn key(id: &str) -> String {
    format!("mcp:session:{{{id}}}")
}

/// initialize + notifications/initialized on `node`; the session id as the client sees it.
async fn open_session(http: &reqwest::Client, node: &Node) -> String {
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let res = http
        .post(&node.url)
        .header("accept", ACCEPT)
        .header("content-type", "application/json")
        .body(init.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let id = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    drop(res);
    let res = post(
        http,
        node,
        &id,
        &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    )
    .await;
    assert_eq!(res.status(), 202);
    id
}

async fn post(http: &reqwest::Client, node: &Node, id: &str, body: &Value) -> reqwest::Response {
    http.post(&node.url)
        .header("accept", ACCEPT)
        .header("content-type", "application/json")
        .header("mcp-session-id", id)
        .header("mcp-protocol-version", "2025-06-18")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn ping(http: &reqwest::Client, node: &Node, id: &str) -> reqwest::Response {
    post(
        http,
        node,
        id,
        &json!({"jsonrpc":"2.0","id":7,"method":"ping"}),
    )
    .await
}

async fn reason(res: reqwest::Response) -> String {
    assert_eq!(res.status(), 404);
    let v: Value = res.json().await.expect("JSON-RPC body");
    v["error"]["data"]["reason"]
        .as_str()
        .expect("reason")
        .to_owned()
}

/// Envelope mode (the affinity layer wraps rmcp's own ids as `<tag>.<id>`) with the registry
/// across two nodes sharing one Redis: the registry records the id clients use, so a misroute
/// on node B reads "misrouted" and a DELETE on node B removes node A's record.
#[tokio::test]
async fn envelope_mode_registry_across_two_nodes() {
    let redis = RedisServer::start();
    let a = start_node(&redis, "node-a", |r| r, None).await;
    let b = start_node(&redis, "node-b", |r| r, None).await;
    let http = http();
    let id = open_session(&http, &a).await;
    assert!(a.registry.flush(Duration::from_secs(10)).await);
    assert!(
        redis.get(&key(&id)).is_some(),
        "the record is under the id the client uses: {:?}",
        redis.keys("mcp:session:{*")
    );
    assert_eq!(ping(&http, &a, &id).await.status(), 200);

    assert_eq!(reason(ping(&http, &b, &id).await).await, "misrouted");
    assert_eq!(b.registry.stats().misroutes, 1);

    // DELETE on the wrong node: the record goes (ADR-0066).
    let res = http
        .delete(&b.url)
        .header("mcp-session-id", &id)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap();
    drop(res);
    assert!(b.registry.flush(Duration::from_secs(10)).await);
    assert_eq!(redis.get(&key(&id)), None);

    // On its own node a DELETE removes the record too.
    let id = open_session(&http, &a).await;
    assert!(a.registry.flush(Duration::from_secs(10)).await);
    assert!(redis.get(&key(&id)).is_some());
    let res = http
        .delete(&a.url)
        .header("mcp-session-id", &id)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert!(a.registry.flush(Duration::from_secs(10)).await);
    assert_eq!(redis.get(&key(&id)), None);
    assert!(redis.keys("mcp:session:{*").is_empty());
}
