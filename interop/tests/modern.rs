//! The modern (2026-07-28, stateless) leg over real TCP.

#[path = "support/mcp.rs"]
mod support;

use mcp_affinity::SseTransportLayer;
use serde_json::{Value, json};
use support::{ACCEPT_BOTH, Server, Sse};

const V: &str = "2026-07-28";

fn modern(id: i64, method: &str, params: Value) -> Value {
    let mut params = params;
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": V,
        "io.modelcontextprotocol/clientCapabilities": {},
        "progressToken": "p1"
    });
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

fn post(srv: &Server, body: &Value, method: &str, name: Option<&str>) -> reqwest::RequestBuilder {
    post_v(srv, body, V, method, name)
}

fn post_v(
    srv: &Server,
    body: &Value,
    version: &str,
    method: &str,
    name: Option<&str>,
) -> reqwest::RequestBuilder {
    let mut b = support::http_client()
        .post(srv.url())
        .header("accept", ACCEPT_BOTH)
        .header("content-type", "application/json")
        .header("mcp-protocol-version", version)
        .header("mcp-method", method)
        .body(body.to_string());
    if let Some(n) = name {
        b = b.header("mcp-name", n);
    }
    b
}

async fn error_of(res: reqwest::Response) -> (u16, i64) {
    let status = res.status().as_u16();
    let v: Value = res.json().await.expect("a JSON-RPC error body");
    (
        status,
        v.pointer("/error/code")
            .and_then(Value::as_i64)
            .expect("error code"),
    )
}

#[tokio::test]
async fn stateless_requests_never_get_or_need_a_session() {
    let (srv, _) = Server::start(SseTransportLayer::new()).await;
    let body = modern(
        1,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "hi"}}),
    );
    let res = post(&srv, &body, "tools/call", Some("echo"))
        .header("mcp-session-id", "stale-legacy-id")
        .header("last-event-id", "1-1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        200,
        "Mcp-Session-Id and Last-Event-ID are ignored"
    );
    assert!(
        res.headers().get("mcp-session-id").is_none(),
        "no session id minted or echoed"
    );
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["result"]["content"][0]["text"], "hi");
    assert_eq!(srv.handle.session_count(), 0);
}

#[tokio::test]
async fn get_and_delete_without_a_legacy_session_are_405_with_a_body() {
    let (srv, _) = Server::start(SseTransportLayer::new()).await;
    let http = support::http_client();
    for req in [
        http.get(srv.url()).header("accept", "text/event-stream"),
        http.delete(srv.url()),
        http.put(srv.url()),
    ] {
        let res = req.header("mcp-protocol-version", V).send().await.unwrap();
        assert!(res.headers().get("allow").is_some());
        let (status, code) = error_of(res).await;
        assert_eq!((status, code), (405, -32600));
    }
}

#[tokio::test]
async fn header_and_meta_validation_use_the_spec_codes() {
    let (srv, _) = Server::start(SseTransportLayer::new()).await;
    let call = modern(
        1,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "x"}}),
    );
    // Mcp-Name disagrees with the body.
    assert_eq!(
        error_of(
            post(&srv, &call, "tools/call", Some("other"))
                .send()
                .await
                .unwrap()
        )
        .await,
        (400, -32020)
    );
    // Mcp-Method disagrees.
    assert_eq!(
        error_of(
            post(&srv, &call, "tools/list", Some("echo"))
                .send()
                .await
                .unwrap()
        )
        .await,
        (400, -32020)
    );
    // MCP-Protocol-Version disagrees with _meta.
    let res = post_v(&srv, &call, "2026-07-29", "tools/call", Some("echo"))
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await, (400, -32020));
    // A repeated mirrored header is refused rather than guessed.
    let res = post(&srv, &call, "tools/call", Some("echo"))
        .header("mcp-name", "echo")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(res).await, (400, -32020));
    // Unsupported version in _meta (and header).
    let mut bad = call.clone();
    bad["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2099-01-01");
    let res = post_v(&srv, &bad, "2099-01-01", "tools/call", Some("echo"))
        .send()
        .await
        .unwrap();
    let status = res.status();
    let v: Value = res.json().await.unwrap();
    assert_eq!(
        (status.as_u16(), v["error"]["code"].as_i64()),
        (400, Some(-32022))
    );
    assert!(
        v["error"]["data"]["supported"]
            .as_array()
            .unwrap()
            .contains(&json!(V))
    );
    // Missing client capabilities in _meta.
    let mut no_caps = call.clone();
    no_caps["params"]["_meta"]
        .as_object_mut()
        .unwrap()
        .remove("io.modelcontextprotocol/clientCapabilities");
    assert_eq!(
        error_of(
            post(&srv, &no_caps, "tools/call", Some("echo"))
                .send()
                .await
                .unwrap()
        )
        .await,
        (400, -32602)
    );
    // A modern header but no _meta claim.
    let plain = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"});
    assert_eq!(
        error_of(post(&srv, &plain, "tools/list", None).send().await.unwrap()).await,
        (400, -32602)
    );
}

#[tokio::test]
async fn removed_methods_with_a_modern_claim_are_method_not_found() {
    let (srv, _) = Server::start(SseTransportLayer::new()).await;
    for method in [
        "initialize",
        "ping",
        "logging/setLevel",
        "resources/subscribe",
        "resources/unsubscribe",
    ] {
        let mut body = modern(1, method, json!({"protocolVersion": "2025-11-25"}));
        body["params"]["level"] = json!("info");
        let res = post(&srv, &body, method, None).send().await.unwrap();
        assert!(res.headers().get("mcp-session-id").is_none());
        assert_eq!(error_of(res).await, (404, -32601), "{method}");
    }
    // An unknown method answered by the handler is mapped to 404 too.
    let body = modern(2, "nope/nothing", json!({}));
    assert_eq!(
        error_of(
            post(&srv, &body, "nope/nothing", None)
                .send()
                .await
                .unwrap()
        )
        .await,
        (404, -32601)
    );
    assert_eq!(srv.handle.session_count(), 0);
}

#[tokio::test]
async fn related_notifications_stream_without_ids_or_priming() {
    let (srv, _) = Server::start(SseTransportLayer::new()).await;
    let body = modern(
        7,
        "tools/call",
        json!({"name": "progress", "arguments": {}}),
    );
    let res = post(&srv, &body, "tools/call", Some("progress"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers().get("x-accel-buffering").unwrap(), "no");
    let events = Sse::new(res).collect().await;
    assert_eq!(events.len(), 4);
    assert!(
        events.iter().all(|e| e.id.is_none()),
        "no event ids in 2026-07-28"
    );
    assert_eq!(events[0].json()["method"], "notifications/progress");
    assert_eq!(events[3].json()["id"], 7);
}

#[tokio::test]
async fn closing_the_stream_cancels_the_handler() {
    let (srv, mut obs) = Server::start(SseTransportLayer::new()).await;
    let body = modern(
        8,
        "tools/call",
        json!({"name": "stream_wait", "arguments": {}}),
    );
    let res = post(&srv, &body, "tools/call", Some("stream_wait"))
        .send()
        .await
        .unwrap();
    let mut sse = Sse::new(res);
    assert_eq!(sse.next().await.unwrap().json()["params"]["data"], "first");
    obs.wait("started", "stream_wait").await;
    drop(sse);
    obs.wait("dropped", "stream_wait").await;
}

#[tokio::test]
async fn modern_notification_is_accepted_and_responses_are_refused() {
    let (srv, mut obs) = Server::start(SseTransportLayer::new()).await;
    let note = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                      "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": V}}});
    let res = post(&srv, &note, "notifications/progress", None)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    obs.wait("notification", "notifications/progress").await;
    let response = json!({"jsonrpc": "2.0", "id": 1, "result": {}, "params": {}});
    let res = support::http_client()
        .post(srv.url())
        .header("accept", ACCEPT_BOTH)
        .header("content-type", "application/json")
        .header("mcp-protocol-version", V)
        .body(response.to_string())
        .send()
        .await
        .unwrap();
    assert!(res.status().is_client_error());
    let v: Value = res.json().await.unwrap();
    assert!(v.get("error").is_some(), "never a bare 4xx");
}

#[tokio::test]
async fn both_eras_share_one_endpoint() {
    let (srv, _) = Server::start(SseTransportLayer::new()).await;
    let mut legacy = srv.client();
    legacy.connect("2025-11-25").await;
    let body = modern(
        1,
        "tools/call",
        json!({"name": "echo", "arguments": {"text": "m"}}),
    );
    let res = post(&srv, &body, "tools/call", Some("echo"))
        .send()
        .await
        .unwrap();
    assert!(res.headers().get("mcp-session-id").is_none());
    assert_eq!(result_of(res).await["content"][0]["text"], "m");
    let r = legacy.call_tool(2, "echo", json!({"text": "l"})).await;
    assert_eq!(result_of(r).await["content"][0]["text"], "l");
    assert_eq!(srv.handle.session_count(), 1);
}

/// Asserts a success: `200` and a JSON-RPC body with a `result` and no `error` (an error can
/// arrive with `200` too); returns the result.
async fn result_of(res: reqwest::Response) -> Value {
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.expect("a JSON-RPC body");
    assert!(v.get("error").is_none(), "an error, not a result: {v}");
    v.get("result").cloned().expect("a result")
}
