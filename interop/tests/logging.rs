//! No raw session id (or cookie) ever reaches the logs, at any level, on any path.

#[path = "support/mcp.rs"]
mod support;

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use mcp_affinity::{
    SessionAffinityLayer, SseTransportLayer,
    handler::handler_fn,
    registry::{MemoryStore, SessionRegistryLayer},
};
use serde_json::json;
use tower::{Service, ServiceExt};

type Svc = tower::util::BoxCloneService<
    http::Request<Full<Bytes>>,
    http::Response<http_body_util::combinators::UnsyncBoxBody<Bytes, mcp_affinity::BoxError>>,
    std::convert::Infallible,
>;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn request(
    method: http::Method,
    session: Option<&str>,
    cookie: Option<&str>,
    body: serde_json::Value,
) -> http::Request<Full<Bytes>> {
    let mut b = http::Request::builder()
        .method(method)
        .uri("http://localhost/mcp")
        .header("host", "localhost")
        .header("accept", support::ACCEPT_BOTH)
        .header("content-type", "application/json");
    if let Some(s) = session {
        b = b.header("mcp-session-id", s);
    }
    if let Some(c) = cookie {
        b = b.header("cookie", c);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn session_ids_never_appear_in_logs() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let store = MemoryStore::new();
    let build = |name: &str| {
        let affinity = SessionAffinityLayer::for_node(name);
        let transport = SseTransportLayer::builder()
            .with_id_generator(affinity.id_generator())
            .build()
            .unwrap();
        let registry = SessionRegistryLayer::new(store.clone(), name).unwrap();
        let handle = registry.handle();
        let (probe, _) = support::Probe::new();
        let svc = tower::ServiceBuilder::new()
            .layer(affinity)
            .layer(registry)
            .layer(transport)
            .service(handler_fn(move |req, cx| {
                support::handle_request(probe.clone(), req, cx)
            }));
        let svc = ServiceExt::<http::Request<Full<Bytes>>>::map_response(svc, |r| {
            r.map(BodyExt::boxed_unsync)
        });
        (Svc::new(svc), handle)
    };
    let (mut a, ha) = build("node-a");
    let (mut b, hb) = build("node-b");

    let mut ids = Vec::new();
    for _ in 0..3 {
        let res = a
            .ready()
            .await
            .unwrap()
            .call(request(
                http::Method::POST,
                None,
                None,
                support::initialize_body("2025-11-25"),
            ))
            .await
            .unwrap();
        ids.push(res.headers()["mcp-session-id"].to_str().unwrap().to_owned());
    }
    assert!(ha.flush(std::time::Duration::from_secs(5)).await);
    // Both nodes alive in the store: node-b forwards or answers `misrouted`, it adopts nothing.
    assert!(ha.announce(std::time::Duration::from_secs(5)).await);
    assert!(hb.announce(std::time::Duration::from_secs(5)).await);
    let id = ids[0].clone();
    let cookie = format!("_mcp_backend={}", id.split('.').next().unwrap());
    let ping = json!({"jsonrpc":"2.0","id":1,"method":"ping"});
    let call = json!({"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"progress","arguments":{}}});
    let cancel =
        json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":99}});
    // Happy path, streaming, a notification, a misroute on the other node, unknown ids, DELETE.
    for (svc, method, sid, body) in [
        ('a', http::Method::POST, Some(id.as_str()), ping.clone()),
        ('a', http::Method::POST, Some(id.as_str()), call.clone()),
        ('a', http::Method::POST, Some(id.as_str()), cancel.clone()),
        ('b', http::Method::POST, Some(id.as_str()), ping.clone()),
        (
            'b',
            http::Method::POST,
            Some("unknown-session-id-123"),
            ping.clone(),
        ),
        (
            'b',
            http::Method::DELETE,
            Some(ids[1].as_str()),
            json!(null),
        ),
        ('a', http::Method::DELETE, Some(id.as_str()), json!(null)),
        ('a', http::Method::POST, Some(id.as_str()), ping.clone()),
    ] {
        let svc = if svc == 'a' { &mut a } else { &mut b };
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(request(method, sid, Some(&cookie), body))
            .await
            .unwrap();
        let _ = res.into_body().collect().await;
    }
    assert!(
        ha.flush(std::time::Duration::from_secs(5)).await
            && hb.flush(std::time::Duration::from_secs(5)).await
    );

    let logs = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("misrouted request"),
        "the misroute was logged"
    );
    assert!(logs.lines().count() > 10, "logging was on:\n{logs}");
    for id in ids
        .iter()
        .map(String::as_str)
        .chain(["unknown-session-id-123"])
    {
        let secret = id.split_once('.').map_or(id, |(_, random)| random);
        assert!(
            !logs.contains(secret),
            "a raw session id leaked into the logs:\n{logs}"
        );
    }
}
