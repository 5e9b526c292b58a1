//! Shared state across `layer()` calls, and the bounds on running handlers.

use std::time::Duration;

use axum::routing::post;
use http_body_util::BodyExt;
use mcp_affinity::SseTransportLayer;
use serde_json::{Value, json};
use tower::ServiceExt;

const ACCEPT_BOTH: &str = "application/json, text/event-stream";
/// Every call a test makes has this deadline.
const DEADLINE: Duration = Duration::from_secs(10);

fn init_body() -> Value {
    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
           "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}})
}

fn request(
    method: http::Method,
    session: Option<&str>,
    body: Option<Value>,
) -> http::Request<axum::body::Body> {
    let mut b = http::Request::builder()
        .method(method)
        .uri("http://localhost/mcp")
        .header("host", "localhost")
        .header("accept", ACCEPT_BOTH)
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2025-11-25");
    if let Some(s) = session {
        b = b.header("mcp-session-id", s);
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    b.body(axum::body::Body::from(body)).unwrap()
}

/// An axum handler answering every JSON-RPC request the transport hands it.
async fn axum_handler(req: axum::extract::Request) -> axum::response::Response {
    let bytes = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let msg: Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let result = match msg["method"].as_str() {
        Some("initialize") => {
            json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})
        }
        _ => json!({}),
    };
    let answer = json!({"jsonrpc": "2.0", "id": msg["id"], "result": result});
    axum::response::Response::builder()
        .header("content-type", "application/json")
        .body(axum::body::Body::from(answer.to_string()))
        .unwrap()
}

async fn send<S>(svc: &S, req: http::Request<axum::body::Body>) -> http::Response<axum::body::Body>
where
    S: tower::Service<
            http::Request<axum::body::Body>,
            Response = http::Response<axum::body::Body>,
            Error = std::convert::Infallible,
        > + Clone,
{
    tokio::time::timeout(DEADLINE, svc.clone().oneshot(req))
        .await
        .expect("deadline")
        .unwrap()
}

/// axum's `MethodRouter::layer` calls `Layer::layer` once per method: the services it builds
/// must share one session table, or a GET or DELETE cannot find the session a POST created.
#[tokio::test]
async fn an_axum_method_router_shares_one_session_table() {
    let router = post(axum_handler)
        .get(axum_handler)
        .delete(axum_handler)
        .layer(SseTransportLayer::new());
    let svc = axum::Router::new().route("/mcp", router);

    let res = send(&svc, request(http::Method::POST, None, Some(init_body()))).await;
    assert_eq!(res.status(), 200);
    let id = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();

    let get = send(&svc, request(http::Method::GET, Some(&id), None)).await;
    assert_eq!(get.status(), 200, "GET finds the session POST created");
    assert_eq!(get.headers()["content-type"], "text/event-stream");
    drop(get);

    let ping = json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    let res = send(
        &svc,
        request(http::Method::POST, Some(&id), Some(ping.clone())),
    )
    .await;
    assert_eq!(res.status(), 200);

    let del = send(&svc, request(http::Method::DELETE, Some(&id), None)).await;
    assert_eq!(del.status(), 200, "DELETE finds the session POST created");
    let res = send(&svc, request(http::Method::POST, Some(&id), Some(ping))).await;
    assert_eq!(res.status(), 404, "the DELETE closed it");
}
