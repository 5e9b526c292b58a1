//! Timer-driven behaviour on a paused clock (in-process calls; no real waiting).

#[path = "support/mcp.rs"]
mod support;

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use mcp_affinity::{
    SseTransportLayer,
    handler::handler_fn,
    session::CloseReason,
    transport::{ResponseBody, TransportHandle},
};
use serde_json::{Value, json};
use tower::{Service, ServiceExt};

type Svc = tower::util::BoxCloneService<
    http::Request<Full<Bytes>>,
    http::Response<ResponseBody>,
    std::convert::Infallible,
>;

fn stack(layer: SseTransportLayer) -> (Svc, TransportHandle) {
    let (svc, handle, _, _) = stack_with_probe(layer);
    (svc, handle)
}

fn stack_with_probe(
    layer: SseTransportLayer,
) -> (
    Svc,
    TransportHandle,
    std::sync::Arc<support::Probe>,
    support::Observations,
) {
    let handle = layer.handle();
    let (probe, obs) = support::Probe::new();
    let p = probe.clone();
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        .service(handler_fn(move |req, cx| {
            support::handle_request(p.clone(), req, cx)
        }));
    (tower::util::BoxCloneService::new(svc), handle, probe, obs)
}

fn req(
    method: http::Method,
    session: Option<&str>,
    body: Option<Value>,
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
    b.body(Full::new(
        body.map(|b| Bytes::from(b.to_string())).unwrap_or_default(),
    ))
    .unwrap()
}

async fn initialize(svc: &mut Svc, initialized: bool) -> String {
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(req(
            http::Method::POST,
            None,
            Some(support::initialize_body("2025-11-25")),
        ))
        .await
        .unwrap();
    let id = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    if initialized {
        let n = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(req(http::Method::POST, Some(&id), Some(n)))
            .await
            .unwrap();
        assert_eq!(res.status(), 202);
    }
    id
}

async fn ping(svc: &mut Svc, id: &str) -> http::StatusCode {
    let p = json!({"jsonrpc":"2.0","id":1,"method":"ping"});
    svc.ready()
        .await
        .unwrap()
        .call(req(http::Method::POST, Some(id), Some(p)))
        .await
        .unwrap()
        .status()
}

#[tokio::test(start_paused = true)]
async fn idle_sessions_are_closed_and_busy_ones_are_not() {
    let (mut svc, handle) = stack(
        SseTransportLayer::builder()
            .with_idle_timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    let idle = initialize(&mut svc, true).await;
    let streaming = initialize(&mut svc, true).await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    handle.session(&idle).unwrap().on_close(move |_, r| {
        let _ = tx.send(r);
    });
    let get = svc
        .ready()
        .await
        .unwrap()
        .call(req(http::Method::GET, Some(&streaming), None))
        .await
        .unwrap();
    assert_eq!(get.status(), 200);

    tokio::time::advance(Duration::from_secs(30)).await;
    handle.sweep();
    assert_eq!(
        ping(&mut svc, &idle).await,
        200,
        "activity resets the idle clock"
    );
    tokio::time::advance(Duration::from_secs(61)).await;
    handle.sweep();
    assert_eq!(rx.await.unwrap(), CloseReason::Idle);
    assert_eq!(ping(&mut svc, &idle).await, 404);
    assert_eq!(
        ping(&mut svc, &streaming).await,
        200,
        "a session with an open stream is not idle"
    );
    drop(get);
}

#[tokio::test(start_paused = true)]
async fn a_session_goes_idle_once_its_spawned_request_has_answered() {
    let (mut svc, handle, probe, mut obs) = stack_with_probe(
        SseTransportLayer::builder()
            .with_idle_timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
    );
    let id = initialize(&mut svc, true).await;
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    handle.session(&id).unwrap().on_close(move |_, r| {
        let _ = tx.send(r);
    });
    // `wait` does not answer at once: the transport spawns and tracks it.
    let call = json!({"jsonrpc":"2.0","id":7,"method":"tools/call",
        "params":{"name":"wait","arguments":{}}});
    let fut = svc
        .ready()
        .await
        .unwrap()
        .call(req(http::Method::POST, Some(&id), Some(call)));
    let answer = tokio::spawn(fut);
    obs.wait("started", "wait").await;
    tokio::time::advance(Duration::from_secs(61)).await;
    handle.sweep();
    assert!(rx.try_recv().is_err(), "a running request keeps it open");

    probe.release.notify_one();
    let res = answer.await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("released"));
    // Answered: untracked, so it is idle again and the sweep closes it (close hooks run
    // inside `sweep`).
    tokio::time::advance(Duration::from_secs(61)).await;
    handle.sweep();
    assert_eq!(rx.try_recv(), Ok(CloseReason::Idle));
}

#[tokio::test(start_paused = true)]
async fn uninitialized_sessions_time_out() {
    let (mut svc, handle) = stack(
        SseTransportLayer::builder()
            .with_init_timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
    );
    let probe_like = initialize(&mut svc, false).await;
    let good = initialize(&mut svc, true).await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    handle.session(&probe_like).unwrap().on_close(move |_, r| {
        let _ = tx.send(r);
    });
    // The periodic sweeper (not a manual sweep) does it.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(rx.await.unwrap(), CloseReason::InitTimeout);
    assert_eq!(handle.session_count(), 1);
    assert_eq!(ping(&mut svc, &good).await, 200);
}

/// Opens the session's standalone (GET) stream and reads its priming event.
async fn standalone_stream(svc: &mut Svc, id: &str) -> ResponseBody {
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(req(http::Method::GET, Some(id), None))
        .await
        .unwrap();
    let mut body = res.into_body();
    let priming = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(priming.starts_with(b"id: 0-0\nretry: 3000"));
    body
}

/// The stream's next frame is a keep-alive comment, `secs` after `start`.
async fn expect_keep_alive(body: &mut ResponseBody, start: tokio::time::Instant, secs: u64) {
    let ka = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&ka[..], b":\n\n");
    assert_eq!(start.elapsed(), Duration::from_secs(secs));
}

#[tokio::test(start_paused = true)]
async fn keep_alive_every_15_seconds_by_default() {
    let (mut svc, _handle) = stack(SseTransportLayer::new());
    let id = initialize(&mut svc, true).await;
    let mut body = standalone_stream(&mut svc, &id).await;
    let start = tokio::time::Instant::now();
    expect_keep_alive(&mut body, start, 15).await;
    expect_keep_alive(&mut body, start, 30).await;
}

/// Events postpone the keep-alive: the comment goes out one interval after the last frame,
/// never while events come more often than that.
#[tokio::test(start_paused = true)]
async fn events_postpone_the_keep_alive() {
    let (mut svc, handle) = stack(SseTransportLayer::new());
    let id = initialize(&mut svc, true).await;
    let mut body = standalone_stream(&mut svc, &id).await;
    let start = tokio::time::Instant::now();
    for at in [10, 20] {
        tokio::time::sleep_until(start + Duration::from_secs(at)).await;
        assert_eq!(
            handle.notify_all("notifications/tools/list_changed", None),
            1
        );
        let event = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert!(
            event.starts_with(b"id: 0-"),
            "{}",
            String::from_utf8_lossy(&event)
        );
        assert_eq!(start.elapsed(), Duration::from_secs(at));
    }
    expect_keep_alive(&mut body, start, 35).await;
    expect_keep_alive(&mut body, start, 50).await;
}

#[tokio::test(start_paused = true)]
async fn unanswered_server_requests_time_out() {
    let (mut svc, _handle) = stack(
        SseTransportLayer::builder()
            .with_request_timeout(Duration::from_secs(5))
            .build()
            .unwrap(),
    );
    let id = initialize(&mut svc, true).await;
    let call = json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"ask","arguments":{}}});
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(req(http::Method::POST, Some(&id), Some(call)))
        .await
        .unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("sampling/createMessage"), "{text}");
    assert!(text.contains("error: server request timed out"), "{text}");
}

/// The ready inner service is the one called (clone-and-take): with a concurrency limit of one
/// under the transport, concurrent requests through clones all complete.
#[tokio::test]
async fn readiness_is_respected_under_a_concurrency_limit() {
    let layer = SseTransportLayer::new();
    let _handle = layer.handle();
    let (probe, _) = support::Probe::new();
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        .concurrency_limit(1)
        .service(handler_fn(move |req, cx| {
            support::handle_request(probe.clone(), req, cx)
        }));
    let mut svc = tower::util::BoxCloneService::new(svc);
    let id = initialize(&mut svc, true).await;
    let calls = (0..16).map(|_| {
        let mut svc = svc.clone();
        let id = id.clone();
        async move { ping(&mut svc, &id).await }
    });
    for status in futures_util::future::join_all(calls).await {
        assert_eq!(status, 200);
    }
}

/// Calls `tools/call` `tool` (id 7) in its own task; returns it once the handler started.
async fn started_call(
    svc: &mut Svc,
    obs: &mut support::Observations,
    id: &str,
    tool: &str,
) -> tokio::task::JoinHandle<Result<http::Response<ResponseBody>, std::convert::Infallible>> {
    let call = json!({"jsonrpc":"2.0","id":7,"method":"tools/call",
        "params":{"name":tool,"arguments":{}}});
    let fut = svc
        .ready()
        .await
        .unwrap()
        .call(req(http::Method::POST, Some(id), Some(call)));
    let task = tokio::spawn(fut);
    obs.wait("started", tool).await;
    task
}

/// Well past every default timer (on the paused clock): the deadline of a test's call.
const AN_HOUR: Duration = Duration::from_secs(3600);

#[tokio::test(start_paused = true)]
async fn a_handler_that_never_finishes_is_answered_with_an_error_after_10_minutes() {
    let (mut svc, _handle, _probe, mut obs) = stack_with_probe(SseTransportLayer::new());
    let id = initialize(&mut svc, true).await;
    let start = tokio::time::Instant::now();
    let call = started_call(&mut svc, &mut obs, &id, "wait").await;
    let res = tokio::time::timeout(AN_HOUR, call)
        .await
        .expect("answered")
        .unwrap()
        .unwrap();
    assert!(start.elapsed() >= Duration::from_secs(600));
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/json");
    let body: Value =
        serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(body["id"], 7);
    assert_eq!(body["error"]["code"], -32603);
    assert!(
        obs.try_has("dropped", "wait"),
        "the handler future was dropped"
    );
    assert_eq!(ping(&mut svc, &id).await, 200, "the session lives on");
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_handler_answers_on_its_sse_stream() {
    let (mut svc, _handle, _probe, mut obs) = stack_with_probe(
        SseTransportLayer::builder()
            .with_handler_timeout(Duration::from_secs(5))
            .build()
            .unwrap(),
    );
    let id = initialize(&mut svc, true).await;
    // It streams a notification first, so its answer is an SSE stream.
    let call = started_call(&mut svc, &mut obs, &id, "stream_wait").await;
    let res = tokio::time::timeout(AN_HOUR, call)
        .await
        .expect("answered")
        .unwrap()
        .unwrap();
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let body = tokio::time::timeout(AN_HOUR, res.into_body().collect())
        .await
        .expect("the stream ends")
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains(r#""data":"first""#), "{text}");
    assert!(
        text.contains(r#""id":7"#) && text.contains("-32603") && text.contains("timed out"),
        "{text}"
    );
    assert!(!text.contains(r#""data":"second""#), "{text}");
    assert!(obs.try_has("dropped", "stream_wait"));
}

#[tokio::test(start_paused = true)]
async fn a_busy_session_is_closed_at_its_lifetime_of_24_hours() {
    let (mut svc, handle) = stack(SseTransportLayer::new());
    let id = initialize(&mut svc, true).await;
    let (tx, rx) = tokio::sync::oneshot::channel();
    handle.session(&id).unwrap().on_close(move |_, r| {
        let _ = tx.send(r);
    });
    // An open standalone stream keeps the session busy, so it is never idle.
    let mut stream = standalone_stream(&mut svc, &id).await;
    // In use all along: requests do not extend the lifetime.
    for _ in 0..23 {
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(ping(&mut svc, &id).await, 200);
    }
    tokio::time::advance(Duration::from_secs(3600)).await;
    handle.sweep();
    let reason = tokio::time::timeout(AN_HOUR, rx).await.expect("closed");
    assert_eq!(reason.unwrap(), CloseReason::Lifetime);
    // Its stream ends (after what it holds) and its id is unknown from now on.
    let rest = tokio::time::timeout(AN_HOUR, async {
        while let Some(frame) = stream.frame().await {
            frame.unwrap();
        }
    });
    rest.await.expect("the stream ends");
    assert_eq!(ping(&mut svc, &id).await, 404);
}

#[tokio::test(start_paused = true)]
async fn the_lifetime_closes_a_session_whose_handler_still_runs() {
    let (mut svc, handle, _probe, mut obs) = stack_with_probe(
        SseTransportLayer::builder()
            .with_session_lifetime(Duration::from_secs(3600))
            .with_handler_timeout(Duration::from_secs(7200))
            .build()
            .unwrap(),
    );
    let id = initialize(&mut svc, true).await;
    let call = started_call(&mut svc, &mut obs, &id, "wait").await;
    tokio::time::advance(Duration::from_secs(3600)).await;
    handle.sweep();
    assert_eq!(
        handle.session(&id).map(|s| s.close_reason()),
        None,
        "removed from the table"
    );
    let res = tokio::time::timeout(AN_HOUR, call)
        .await
        .expect("the POST ends")
        .unwrap()
        .unwrap();
    let _ = tokio::time::timeout(AN_HOUR, res.into_body().collect())
        .await
        .expect("its body ends");
    obs.wait("dropped", "wait").await;
    assert_eq!(ping(&mut svc, &id).await, 404);
}

#[test]
fn handler_timeout_and_session_lifetime_are_validated() {
    let err = SseTransportLayer::builder()
        .with_handler_timeout(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "handler_timeout");
    let err = SseTransportLayer::builder()
        .with_session_lifetime(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "session_lifetime");
    assert!(
        SseTransportLayer::builder()
            .with_session_lifetime(Duration::MAX)
            .with_handler_timeout(Duration::MAX)
            .build()
            .is_ok()
    );
}
