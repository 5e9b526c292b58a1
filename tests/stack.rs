//! `McpStack`: the three layers built in one call serve both eras, its handle drains and stops
//! a node in order, and every layer's configuration is refused the same way.
//! In process, through `tower::ServiceExt::oneshot`, on paused time.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use mcp_affinity::{
    ConfigError, McpStack, SessionAffinityLayer, SessionRegistryLayer, SseTransportLayer,
    handler::handler_fn,
    registry::{MemoryStore, NodeState, RegistryStore},
    session::NodeTag,
};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tower::{Layer, ServiceExt};

/// Every wait in these tests is bounded by this (paused time: it costs nothing).
const DEADLINE: Duration = Duration::from_secs(60);
const LEGACY: &str = "2025-11-25";
const MODERN: &str = "2026-07-28";

fn post(body: &Value, session: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::post("/mcp")
        .header("host", "localhost")
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", LEGACY);
    if let Some(id) = session {
        b = b.header("mcp-session-id", id);
    }
    b.body(Full::new(Bytes::from(body.to_string())))
        .expect("request")
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": LEGACY, "capabilities": {},
        "clientInfo": {"name": "c", "version": "1"}}})
}

async fn json_of<B>(res: http::Response<B>) -> Value
where
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    serde_json::from_slice(&bytes).expect("a JSON body")
}

/// A stack over `store` whose `tools/call` waits for `release` (when given).
fn service(
    stack: &McpStack<MemoryStore>,
    release: Option<Arc<Notify>>,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = http::Response<impl http_body::Body<Data = Bytes, Error: std::fmt::Debug>>,
    Error = std::convert::Infallible,
    Future: Send,
> + Clone
+ Send
+ 'static {
    stack.layer(handler_fn(move |req, _cx| {
        let release = release.clone();
        async move {
            Ok(match req.method.as_str() {
                "initialize" => json!({"protocolVersion": LEGACY, "capabilities": {"tools": {}},
                                       "serverInfo": {"name": "s", "version": "1"}}),
                "tools/list" => json!({"tools": []}),
                "tools/call" => {
                    if let Some(r) = release {
                        r.notified().await;
                    }
                    json!({"content": [{"type": "text", "text": "done"}]})
                }
                _ => json!({}),
            })
        }
    }))
}

fn stack(node: &str, store: &MemoryStore) -> McpStack<MemoryStore> {
    McpStack::builder(node, store.clone())
        .with_internal_address("127.0.0.1:9".parse().expect("address"))
        .build()
        .expect("a valid stack")
}

#[tokio::test(start_paused = true)]
async fn the_stack_serves_a_legacy_session_and_a_modern_request() {
    let store = MemoryStore::new();
    let stack = stack("node-a", &store);
    let handle = stack.handle();
    let svc = service(&stack, None);

    // initialize: a tagged id, the affinity cookie, a registry record.
    let res = svc
        .clone()
        .oneshot(post(&initialize(), None))
        .await
        .expect("infallible");
    assert_eq!(res.status(), StatusCode::OK);
    let id = res.headers()["mcp-session-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let tag = NodeTag::derive("node-a");
    assert!(id.starts_with(&format!("{tag}.")), "the id carries the tag");
    let cookie = res.headers()["set-cookie"].to_str().expect("ascii");
    assert!(cookie.starts_with(&format!("_mcp_backend={tag};")));
    assert_eq!(
        json_of(res).await["result"]["protocolVersion"],
        json!(LEGACY)
    );

    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let res = svc
        .clone()
        .oneshot(post(&initialized, Some(&id)))
        .await
        .expect("infallible");
    assert_eq!(res.status(), StatusCode::ACCEPTED);

    let list = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"});
    let res = svc
        .clone()
        .oneshot(post(&list, Some(&id)))
        .await
        .expect("infallible");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(json_of(res).await["result"], json!({"tools": []}));

    // The standalone stream gets what the handle sends to every session.
    let get = Request::get("/mcp")
        .header("host", "localhost")
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &id)
        .header("mcp-protocol-version", LEGACY)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let res = svc.clone().oneshot(get).await.expect("infallible");
    assert_eq!(res.status(), StatusCode::OK);
    let mut stream = res.into_body();
    assert_eq!(
        handle
            .transport()
            .notify_all("notifications/message", Some(json!({"level": "info"}))),
        1
    );
    let mut seen = String::new();
    while !seen.contains("notifications/message") {
        let frame = tokio::time::timeout(DEADLINE, stream.frame())
            .await
            .expect("an event in time")
            .expect("a frame")
            .expect("no body error");
        if let Ok(data) = frame.into_data() {
            seen.push_str(std::str::from_utf8(&data).expect("utf-8"));
        }
    }

    assert!(handle.registry().flush(DEADLINE).await);
    assert!(store.lookup(&id).await.expect("lookup").is_some());
    let stats = handle.stats();
    assert_eq!((stats.sessions, stats.registry.registered), (1, 1));
    assert!(stats.affinity.requests >= 4);

    // A modern request passes through: no session, no cookie, a `resultType`-free answer.
    let modern = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {}}}});
    let req = Request::post("/mcp")
        .header("host", "localhost")
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", MODERN)
        .header("mcp-method", "tools/list")
        .body(Full::new(Bytes::from(modern.to_string())))
        .expect("request");
    let res = svc.clone().oneshot(req).await.expect("infallible");
    assert_eq!(res.status(), StatusCode::OK);
    assert!(!res.headers().contains_key("mcp-session-id"));
    assert!(!res.headers().contains_key("set-cookie"));
    assert_eq!(json_of(res).await["result"], json!({"tools": []}));
    assert_eq!(handle.stats().sessions, 1, "no session minted");

    // DELETE ends the session and its record.
    let delete = Request::delete("/mcp")
        .header("host", "localhost")
        .header("mcp-session-id", &id)
        .header("mcp-protocol-version", LEGACY)
        .body(Full::new(Bytes::new()))
        .expect("request");
    let res = svc.oneshot(delete).await.expect("infallible");
    assert!(res.status().is_success());
    assert!(handle.registry().flush(DEADLINE).await);
    assert!(store.lookup(&id).await.expect("lookup").is_none());
    assert_eq!(handle.stats().sessions, 0);
}

#[tokio::test(start_paused = true)]
async fn shutdown_drains_lets_the_running_request_finish_then_stops() {
    let store = MemoryStore::new();
    let stack = stack("node-a", &store);
    let handle = stack.handle();
    let release = Arc::new(Notify::new());
    let svc = service(&stack, Some(release.clone()));
    assert!(handle.announce(DEADLINE).await);
    let incarnation = handle.registry().incarnation().to_owned();
    let liveness = async || {
        store
            .node("node-a")
            .await
            .expect("node lookup")
            .filter(|n| n.incarnation == incarnation)
            .map(|n| n.state)
    };
    assert_eq!(liveness().await, Some(NodeState::Serving));

    let res = svc
        .clone()
        .oneshot(post(&initialize(), None))
        .await
        .expect("infallible");
    let id = res.headers()["mcp-session-id"]
        .to_str()
        .expect("ascii")
        .to_owned();

    // A request whose handler is still running when the shutdown begins.
    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                      "params": {"name": "slow", "arguments": {}}});
    let in_flight = tokio::spawn({
        let svc = svc.clone();
        let id = id.clone();
        async move {
            let res = svc
                .oneshot(post(&call, Some(&id)))
                .await
                .expect("infallible");
            (res.status(), json_of(res).await)
        }
    });
    while handle.stats().running_handlers == 0 {
        tokio::task::yield_now().await;
    }

    let stopping = tokio::spawn({
        let handle = handle.clone();
        async move { handle.shutdown(DEADLINE).await }
    });
    // Draining: the health check fails, the liveness record says so, new sessions are
    // refused; the running request holds the stop.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(handle.is_draining());
    assert_eq!(liveness().await, Some(NodeState::Draining));
    assert!(!stopping.is_finished(), "a handler still runs");
    assert_eq!(
        handle.stats().sessions,
        1,
        "sessions stay open while draining"
    );
    let refused = svc
        .clone()
        .oneshot(post(&initialize(), None))
        .await
        .expect("infallible");
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);

    // The request finishes with its answer; then the node stops.
    release.notify_one();
    let (status, body) = tokio::time::timeout(DEADLINE, in_flight)
        .await
        .expect("the request finishes")
        .expect("no panic");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["result"]["content"][0]["text"], json!("done"));
    let report = tokio::time::timeout(DEADLINE, stopping)
        .await
        .expect("the shutdown finishes")
        .expect("no panic");
    assert!(report.announced && report.quiet && report.flushed && report.left);
    assert_eq!(report.closed, 1);
    assert_eq!(handle.stats().sessions, 0);
    // Left the cluster; the session's record stays for the node that adopts it.
    assert_eq!(liveness().await, None);
    assert!(store.lookup(&id).await.expect("lookup").is_some());
}

#[test]
fn every_layer_refuses_an_invalid_value_with_one_error_shape() {
    let tag = || NodeTag::new("n1").expect("tag");
    let reg = || SessionRegistryLayer::builder(MemoryStore::new(), "node-a");
    let ms = Duration::from_millis;
    let s = Duration::from_secs;
    let cases: Vec<(ConfigError, &str, &str)> = vec![
        (
            SseTransportLayer::builder()
                .with_max_body_bytes(0)
                .build()
                .unwrap_err(),
            "transport",
            "max_body_bytes",
        ),
        (
            SseTransportLayer::builder()
                .with_idle_timeout(Duration::ZERO)
                .build()
                .unwrap_err(),
            "transport",
            "idle_timeout",
        ),
        (
            SseTransportLayer::builder()
                .with_keep_alive(Some(Duration::ZERO))
                .build()
                .unwrap_err(),
            "transport",
            "keep_alive",
        ),
        (
            SseTransportLayer::builder()
                .with_retry(Duration::from_micros(1500))
                .build()
                .unwrap_err(),
            "transport",
            "retry",
        ),
        (
            SseTransportLayer::builder()
                .with_event_log(8, 0)
                .build()
                .unwrap_err(),
            "transport",
            "event_log_bytes",
        ),
        (
            SessionRegistryLayer::new(MemoryStore::new(), "")
                .map(drop)
                .unwrap_err(),
            "registry",
            "node",
        ),
        (
            reg().with_incarnation("").build().map(drop).unwrap_err(),
            "registry",
            "incarnation",
        ),
        (
            reg().with_queue_capacity(3).build().map(drop).unwrap_err(),
            "registry",
            "queue_capacity",
        ),
        (
            reg()
                .with_queue_capacity(usize::MAX)
                .build()
                .map(drop)
                .unwrap_err(),
            "registry",
            "queue_capacity",
        ),
        (
            reg()
                .with_liveness(s(5), s(5))
                .build()
                .map(drop)
                .unwrap_err(),
            "registry",
            "liveness",
        ),
        (
            reg()
                .with_lookup_rate(0, s(1))
                .build()
                .map(drop)
                .unwrap_err(),
            "registry",
            "lookup_rate",
        ),
        (
            reg()
                .with_negative_cache(16, ms(0))
                .build()
                .map(drop)
                .unwrap_err(),
            "registry",
            "negative_cache",
        ),
        (
            reg()
                .with_peer_networks(["not a network"])
                .build()
                .map(drop)
                .unwrap_err(),
            "registry",
            "peer_networks",
        ),
        (
            SessionAffinityLayer::builder(tag())
                .with_scope("mcp")
                .build()
                .unwrap_err(),
            "affinity",
            "scope",
        ),
        (
            SessionAffinityLayer::builder(tag())
                .with_cookie_name("a b")
                .build()
                .unwrap_err(),
            "affinity",
            "cookie_name",
        ),
        (
            SessionAffinityLayer::builder(tag())
                .with_cookie_path("/a;b")
                .build()
                .unwrap_err(),
            "affinity",
            "cookie_path",
        ),
        (
            SessionAffinityLayer::builder(tag())
                .with_cookie_max_age(Some(Duration::ZERO))
                .build()
                .unwrap_err(),
            "affinity",
            "cookie_max_age",
        ),
        (
            SessionAffinityLayer::builder(tag())
                .with_cookie_same_site(mcp_affinity::affinity::SameSite::None)
                .with_cookie_secure(false)
                .build()
                .unwrap_err(),
            "affinity",
            "cookie_same_site",
        ),
        (
            McpStack::builder("node-a", MemoryStore::new())
                .with_affinity(|a| a.with_strict(true))
                .build()
                .map(drop)
                .unwrap_err(),
            "stack",
            "affinity_strict",
        ),
        (
            McpStack::builder("node-a", MemoryStore::new())
                .with_idle_timeout(Duration::ZERO)
                .build()
                .map(drop)
                .unwrap_err(),
            "registry",
            "idle_timeout",
        ),
    ];
    for (err, component, field) in cases {
        assert_eq!((err.component(), err.field()), (component, field), "{err}");
        assert!(!err.reason().is_empty());
        assert_eq!(
            err.to_string(),
            format!(
                "invalid {component} configuration: {field} {}",
                err.reason()
            )
        );
    }
    // And `NodeTag::new` has its own error.
    let err: mcp_affinity::session::InvalidNodeTag = NodeTag::new("a.b").unwrap_err();
    assert!(err.to_string().starts_with("invalid node tag"));
}
