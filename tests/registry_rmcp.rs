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
use mcp_affinity::registry::{RedisStore, SessionRegistryLayer};
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
