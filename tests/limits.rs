//! Shared state across `layer()` calls, and the bounds on running handlers.

use std::time::Duration;

use axum::routing::post;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use mcp_affinity::{SseTransportLayer, handler::handler_fn, transport::ResponseBody};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
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

// ---- Bounds on running handlers -------------------------------------------------------

type Svc = tower::util::BoxCloneService<
    http::Request<Full<Bytes>>,
    http::Response<ResponseBody>,
    std::convert::Infallible,
>;

/// A transport over a handler whose `tools/call` reports that it started, then blocks until
/// the gate opens.
fn gated(layer: SseTransportLayer) -> (Svc, watch::Sender<bool>, mpsc::UnboundedReceiver<i64>) {
    let (gate, gate_rx) = watch::channel(false);
    let (started_tx, started) = mpsc::unbounded_channel();
    let handler = handler_fn(move |req, cx| {
        let mut gate = gate_rx.clone();
        let started = started_tx.clone();
        async move {
            match req.method.as_str() {
                "initialize" => Ok(json!({
                    "protocolVersion": req.params["protocolVersion"],
                    "capabilities": {},
                    "serverInfo": {"name": "s", "version": "1"}
                })),
                "tools/call" => {
                    let id = cx.id().and_then(|id| serde_json::to_value(id).ok());
                    let _ = started.send(id.and_then(|v| v.as_i64()).unwrap_or(-1));
                    let _ = gate.wait_for(|open| *open).await;
                    Ok(json!({"content": []}))
                }
                _ => Ok(json!({})),
            }
        }
    });
    let svc = tower::ServiceBuilder::new().layer(layer).service(handler);
    (tower::util::BoxCloneService::new(svc), gate, started)
}

fn post_to(session: Option<&str>, version: &str, body: Value) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::post("http://localhost/mcp")
        .header("host", "localhost")
        .header("accept", ACCEPT_BOTH)
        .header("content-type", "application/json");
    if let Some(s) = session {
        b = b
            .header("mcp-session-id", s)
            .header("mcp-protocol-version", version);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

async fn call(svc: &Svc, req: http::Request<Full<Bytes>>) -> http::Response<ResponseBody> {
    tokio::time::timeout(DEADLINE, svc.clone().oneshot(req))
        .await
        .expect("deadline")
        .unwrap()
}

async fn body_of(res: http::Response<ResponseBody>) -> String {
    let bytes = tokio::time::timeout(DEADLINE, res.into_body().collect())
        .await
        .expect("deadline")
        .unwrap()
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A session at `version`, initialized.
async fn session(svc: &Svc, version: &str) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
    let res = call(svc, post_to(None, version, init)).await;
    assert_eq!(res.status(), 200);
    let id = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let done = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(
        call(svc, post_to(Some(&id), version, done)).await.status(),
        202
    );
    id
}

/// A `2026-07-28` `tools/call` (no session).
fn modern_call(id: i64) -> http::Request<Full<Bytes>> {
    modern_post(tool_call(id), Some("block"))
}

/// A `2026-07-28` request for `method` (no session, no `Mcp-Name`).
fn modern_request(method: &str, id: i64) -> http::Request<Full<Bytes>> {
    modern_post(
        json!({"jsonrpc": "2.0", "id": id, "method": method, "params": {}}),
        None,
    )
}

/// `body` as a `2026-07-28` request: its `_meta` and the headers that mirror it.
fn modern_post(mut body: Value, name: Option<&str>) -> http::Request<Full<Bytes>> {
    body["params"]["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    let mut b = http::Request::post("http://localhost/mcp")
        .header("host", "localhost")
        .header("accept", ACCEPT_BOTH)
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", body["method"].as_str().unwrap_or_default());
    if let Some(name) = name {
        b = b.header("mcp-name", name);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

fn tool_call(id: i64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": "block", "arguments": {}}})
}

/// Starts a `tools/call` that blocks, and waits until its handler runs.
async fn blocked(
    svc: &Svc,
    session: &str,
    id: i64,
    started: &mut mpsc::UnboundedReceiver<i64>,
) -> tokio::task::JoinHandle<http::Response<ResponseBody>> {
    let fut = svc
        .clone()
        .oneshot(post_to(Some(session), "2025-11-25", tool_call(id)));
    let task = tokio::spawn(async move {
        tokio::time::timeout(DEADLINE, fut)
            .await
            .expect("deadline")
            .unwrap()
    });
    let got = tokio::time::timeout(DEADLINE, started.recv())
        .await
        .expect("deadline");
    assert_eq!(got, Some(id));
    task
}

/// A `503` (the node's bound) or `429` (the session's) with `Retry-After` and a JSON-RPC
/// error for request `id`.
async fn assert_busy(res: http::Response<ResponseBody>, id: i64, scope: &str) {
    let status = if scope == "session" { 429 } else { 503 };
    assert_eq!(res.status(), status, "{scope}");
    assert_eq!(res.headers()["retry-after"], "5");
    assert_eq!(res.headers()["content-type"], "application/json");
    let body: Value = serde_json::from_str(&body_of(res).await).unwrap();
    assert_eq!(body["jsonrpc"], "2.0");
    assert_eq!(body["id"], id);
    assert_eq!(body["error"]["code"], -32000);
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(msg.contains(scope), "{msg}");
}

#[tokio::test]
async fn the_request_beyond_a_sessions_bound_gets_429_until_one_finishes() {
    let layer = SseTransportLayer::builder()
        .with_max_running_handlers_per_session(2)
        .build()
        .unwrap();
    let (svc, gate, mut started) = gated(layer);
    let id = session(&svc, "2025-11-25").await;
    let first = blocked(&svc, &id, 1, &mut started).await;
    let second = blocked(&svc, &id, 2, &mut started).await;

    let res = call(&svc, post_to(Some(&id), "2025-11-25", tool_call(3))).await;
    assert_busy(res, 3, "session").await;
    assert!(started.try_recv().is_err(), "the third handler never ran");
    // Requests the transport answers itself, and other sessions, are not held up.
    let ping = json!({"jsonrpc": "2.0", "id": 4, "method": "ping"});
    let other = session(&svc, "2025-11-25").await;
    assert_eq!(
        call(&svc, post_to(Some(&other), "2025-11-25", ping))
            .await
            .status(),
        200
    );

    gate.send_replace(true);
    for task in [first, second] {
        let res = task.await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(body_of(res).await.contains(r#""result""#));
    }
    let res = call(&svc, post_to(Some(&id), "2025-11-25", tool_call(5))).await;
    assert_eq!(res.status(), 200, "served again once the handlers finished");
    assert_eq!(started.recv().await, Some(5));
}

#[tokio::test]
async fn the_request_beyond_the_nodes_bound_gets_503_in_any_session() {
    let layer = SseTransportLayer::builder()
        .with_max_running_handlers(2)
        .build()
        .unwrap();
    let (svc, gate, mut started) = gated(layer);
    let a = session(&svc, "2025-11-25").await;
    let b = session(&svc, "2025-11-25").await;
    let c = session(&svc, "2025-11-25").await;
    let first = blocked(&svc, &a, 1, &mut started).await;
    let second = blocked(&svc, &b, 2, &mut started).await;

    for (s, id) in [(&c, 3), (&a, 4)] {
        let res = call(&svc, post_to(Some(s), "2025-11-25", tool_call(id))).await;
        assert_busy(res, id, "node").await;
    }
    // A modern (stateless) request counts against the node's bound too.
    let res = call(&svc, modern_call(9)).await;
    assert_busy(res, 9, "node").await;
    assert!(started.try_recv().is_err(), "no third handler ran");

    gate.send_replace(true);
    for task in [first, second] {
        assert_eq!(task.await.unwrap().status(), 200);
    }
    let res = call(&svc, post_to(Some(&c), "2025-11-25", tool_call(5))).await;
    assert_eq!(res.status(), 200, "served again once the handlers finished");
    assert_eq!(call(&svc, modern_call(10)).await.status(), 200);
}

#[tokio::test]
async fn a_batch_takes_its_places_up_front_all_or_nothing() {
    let layer = SseTransportLayer::builder()
        .with_max_running_handlers_per_session(2)
        .build()
        .unwrap();
    let (svc, gate, mut started) = gated(layer);
    let id = session(&svc, "2025-03-26").await;
    let batch = |ids: &[i64]| Value::Array(ids.iter().map(|&i| tool_call(i)).collect());

    // Larger than the bound: it could never run, so retrying would not help.
    let res = call(&svc, post_to(Some(&id), "2025-03-26", batch(&[1, 2, 3]))).await;
    assert_eq!(res.status(), 400);
    let body: Value = serde_json::from_str(&body_of(res).await).unwrap();
    assert_eq!(body["error"]["code"], -32600);
    assert_eq!(body["error"]["data"]["max"], 2);
    assert!(started.try_recv().is_err(), "no handler of the batch ran");

    // Within the bound, but one place is taken: none of it runs.
    let single = {
        let fut = svc
            .clone()
            .oneshot(post_to(Some(&id), "2025-03-26", tool_call(4)));
        let task = tokio::spawn(async move {
            tokio::time::timeout(DEADLINE, fut)
                .await
                .expect("deadline")
                .unwrap()
        });
        assert_eq!(
            tokio::time::timeout(DEADLINE, started.recv())
                .await
                .expect("deadline"),
            Some(4)
        );
        task
    };
    let res = call(&svc, post_to(Some(&id), "2025-03-26", batch(&[5, 6]))).await;
    assert_eq!(res.status(), 429, "the session's bound");
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = serde_json::from_str(&body_of(res).await).unwrap();
    assert_eq!(body["error"]["code"], -32000);
    assert!(started.try_recv().is_err(), "no handler of the batch ran");

    gate.send_replace(true);
    assert_eq!(single.await.unwrap().status(), 200);
    let res = call(&svc, post_to(Some(&id), "2025-03-26", batch(&[7, 8]))).await;
    assert_eq!(res.status(), 200);
    let text = body_of(res).await;
    assert!(
        text.contains(r#""id":7"#) && text.contains(r#""id":8"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_cancelled_request_gives_its_place_back() {
    let layer = SseTransportLayer::builder()
        .with_max_running_handlers_per_session(1)
        .build()
        .unwrap();
    let (svc, _gate, mut started) = gated(layer);
    let id = session(&svc, "2025-11-25").await;
    let first = blocked(&svc, &id, 1, &mut started).await;
    let res = call(&svc, post_to(Some(&id), "2025-11-25", tool_call(2))).await;
    assert_busy(res, 2, "session").await;

    let cancel =
        json!({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 1}});
    assert_eq!(
        call(&svc, post_to(Some(&id), "2025-11-25", cancel))
            .await
            .status(),
        202
    );
    // Its POST ends once the handler's task is gone, and with it the place it held.
    let res = first.await.unwrap();
    let _ = body_of(res).await;
    let _third = blocked(&svc, &id, 3, &mut started).await;
}

/// A `subscriptions/listen` stream lives as long as its client keeps it open (its handler is
/// dropped when the stream closes): it takes no place of the node's bound and has no handler
/// timeout, so long-lived listeners neither starve other requests nor are cut off.
#[tokio::test(start_paused = true)]
async fn a_listen_stream_takes_no_place_and_never_times_out() {
    let layer = SseTransportLayer::builder()
        .with_max_running_handlers(1)
        .with_handler_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let (started_tx, mut started) = mpsc::unbounded_channel();
    let handler = handler_fn(move |req, _cx| {
        let started = started_tx.clone();
        async move {
            if req.method == "subscriptions/listen" {
                let _ = started.send(());
                std::future::pending::<()>().await;
            }
            Ok(json!({"tools": []}))
        }
    });
    let svc: Svc = tower::util::BoxCloneService::new(
        tower::ServiceBuilder::new().layer(layer).service(handler),
    );
    let mut listen = tokio::spawn(
        svc.clone()
            .oneshot(modern_request("subscriptions/listen", 1)),
    );
    tokio::time::timeout(DEADLINE, started.recv())
        .await
        .expect("the listener runs");
    // The node's one place is free for other requests.
    for id in 2..4 {
        let res = call(&svc, modern_request("tools/list", id)).await;
        assert_eq!(res.status(), 200);
        assert!(body_of(res).await.contains(r#""tools""#));
    }
    // Far past the handler timeout, the listener is still open (not answered `-32603`).
    let open = tokio::time::timeout(Duration::from_secs(3600), &mut listen).await;
    assert!(open.is_err(), "the listen stream was answered: {open:?}");
    listen.abort();
}
