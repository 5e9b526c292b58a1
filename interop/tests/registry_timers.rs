//! Registry timing on a paused clock (in-process, embedded store).

#[path = "support/mcp.rs"]
mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use mcp_affinity::{
    SseTransportLayer,
    handler::handler_fn,
    registry::{MemoryStore, RegistryStore, SessionRegistryLayer},
};
use tower::{Service, ServiceExt};

fn initialize_request() -> http::Request<Full<Bytes>> {
    http::Request::post("http://localhost/mcp")
        .header("host", "localhost")
        .header("accept", support::ACCEPT_BOTH)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            support::initialize_body("2025-11-25").to_string(),
        )))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn long_lived_sessions_get_their_ttl_refreshed_rarely() {
    let store = MemoryStore::new();
    let registry = SessionRegistryLayer::builder(store.clone(), "node-a")
        .with_ttl(Duration::from_secs(80))
        .build()
        .unwrap();
    let handle = registry.handle();
    let (probe, _) = support::Probe::new();
    let mut svc = tower::ServiceBuilder::new()
        .layer(registry)
        .layer(
            SseTransportLayer::builder()
                .with_idle_timeout(Duration::from_secs(3600))
                .build()
                .unwrap(),
        )
        .service(handler_fn(move |req, cx| {
            support::handle_request(probe.clone(), req, cx)
        }));
    let res = ServiceExt::<http::Request<Full<Bytes>>>::ready(&mut svc)
        .await
        .unwrap()
        .call(initialize_request())
        .await
        .unwrap();
    let id = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let initialized = http::Request::post("http://localhost/mcp")
        .header("host", "localhost")
        .header("accept", support::ACCEPT_BOTH)
        .header("content-type", "application/json")
        .header("mcp-session-id", &id)
        .body(Full::new(Bytes::from_static(
            br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
        )))
        .unwrap();
    let res = ServiceExt::<http::Request<Full<Bytes>>>::ready(&mut svc)
        .await
        .unwrap()
        .call(initialized)
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    assert!(handle.flush(Duration::from_secs(1)).await);
    assert!(store.lookup(&id).await.unwrap().is_some());

    // Nothing happens per request or early on.
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(handle.stats().refreshed, 0);
    // Past half the TTL the record is refreshed once…
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert!(handle.flush(Duration::from_secs(1)).await);
    assert_eq!(handle.stats().refreshed, 1);
    // …then once per half TTL, and it outlives its first TTL.
    tokio::time::sleep(Duration::from_secs(45)).await;
    assert!(handle.flush(Duration::from_secs(1)).await);
    assert_eq!(handle.stats().refreshed, 2);
    assert!(
        store.lookup(&id).await.unwrap().is_some(),
        "alive after 90 s with an 80 s TTL"
    );
}

/// A session in use for ever (an open standalone stream) is closed at its lifetime, and the
/// registry removes its record.
#[tokio::test(start_paused = true)]
async fn a_session_closed_at_its_lifetime_leaves_no_record() {
    let store = MemoryStore::new();
    let registry = SessionRegistryLayer::new(store.clone(), "node-a").unwrap();
    let handle = registry.handle();
    let (probe, _) = support::Probe::new();
    let mut svc = tower::ServiceBuilder::new()
        .layer(registry)
        .layer(
            SseTransportLayer::builder()
                .with_session_lifetime(Duration::from_secs(3600))
                .build()
                .unwrap(),
        )
        .service(handler_fn(move |req, cx| {
            support::handle_request(probe.clone(), req, cx)
        }));
    let res = ServiceExt::<http::Request<Full<Bytes>>>::ready(&mut svc)
        .await
        .unwrap()
        .call(initialize_request())
        .await
        .unwrap();
    let id = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let get = http::Request::get("http://localhost/mcp")
        .header("host", "localhost")
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &id)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let stream = ServiceExt::<http::Request<Full<Bytes>>>::ready(&mut svc)
        .await
        .unwrap()
        .call(get)
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(handle.flush(Duration::from_secs(1)).await);
    assert!(store.lookup(&id).await.unwrap().is_some());

    // The transport's own periodic sweep closes it.
    tokio::time::sleep(Duration::from_secs(3600 + 60)).await;
    assert!(handle.flush(Duration::from_secs(1)).await);
    assert!(store.lookup(&id).await.unwrap().is_none(), "record removed");
    drop(stream);
}
