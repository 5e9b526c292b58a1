//! The SseTransportLayer over real TCP (hyper server, reqwest client).

#[path = "support/mcp.rs"]
mod support;

use std::time::Duration;

use mcp_affinity::{
    SseTransportLayer,
    session::{SessionId, SessionIdGenerator},
    transport::{HostPolicy, OriginPolicy},
};
use serde_json::{Value, json};
use support::{ACCEPT_BOTH, Client, Server, Sse, initialize_body, initialize_result};

async fn server() -> (Server, support::Observations) {
    Server::start(SseTransportLayer::new()).await
}

async fn body_json(res: reqwest::Response) -> Value {
    res.json().await.expect("json body")
}

fn error_code(v: &Value) -> i64 {
    v.pointer("/error/code")
        .and_then(Value::as_i64)
        .expect("JSON-RPC error body")
}

// 1. initialize creates the session first; ids are random visible ASCII; failure leaves nothing.
#[tokio::test]
async fn initialize_mints_session_id_and_failure_leaves_nothing() {
    let (srv, mut obs) = server().await;
    let mut c = srv.client();
    let res = c.connect("2025-11-25").await;
    obs.wait("session-before-handler", "initialize").await;
    assert_eq!(
        res.headers().get("content-type").unwrap(),
        "application/json"
    );
    let id = c.session.clone().unwrap();
    assert!(SessionId::is_valid(&id));
    assert!(id.len() >= 22, "at least 128 bits in base64url: {id}");
    assert_eq!(srv.handle.session_count(), 1);
    let session = srv.handle.session(&id).unwrap();
    assert_eq!(
        session.client_capabilities(),
        Some(&json!({"sampling": {}}))
    );
    assert_eq!(session.client_info().unwrap()["name"], "test");
    assert_eq!(session.protocol_version().unwrap().as_str(), "2025-11-25");

    let mut c2 = srv.client();
    c2.connect("2025-11-25").await;
    assert_ne!(c.session, c2.session);

    let mut failing = initialize_body("2025-11-25");
    failing["params"]["clientInfo"]["name"] = json!("fail");
    let res = srv.client().post(&failing).send().await.unwrap();
    assert!(res.headers().get("mcp-session-id").is_none());
    assert!(body_json(res).await.get("error").is_some());
    assert_eq!(
        srv.handle.session_count(),
        2,
        "a failed initialize leaves no session"
    );
}

#[tokio::test]
async fn pluggable_id_generator() {
    let generator = || SessionId::parse("custom-fixed-id").unwrap();
    let (srv, _) = Server::start(
        SseTransportLayer::builder()
            .with_id_generator(generator)
            .build()
            .unwrap(),
    )
    .await;
    let mut c = srv.client();
    c.connect("2025-11-25").await;
    assert_eq!(c.session.as_deref(), Some("custom-fixed-id"));
    assert_eq!(generator.generate().as_str(), "custom-fixed-id");
}

// A generator that cannot make an unguessable id says so (`try_generate`): the `initialize` is
// answered 503 with `Retry-After` and a JSON-RPC error, and no session is minted.
#[tokio::test]
async fn initialize_is_refused_when_no_session_id_can_be_generated() {
    use mcp_affinity::{handler::handler_fn, session::GenerateIdError};
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    use tower::ServiceExt;

    /// A generator whose random source is down until `up` is set.
    struct Flaky(Arc<AtomicBool>);

    impl SessionIdGenerator for Flaky {
        fn generate(&self) -> SessionId {
            self.try_generate().expect("the random source is up")
        }

        fn try_generate(&self) -> Result<SessionId, GenerateIdError> {
            if self.0.load(Ordering::SeqCst) {
                Ok(SessionId::parse("minted-after-recovery").unwrap())
            } else {
                Err(GenerateIdError::new())
            }
        }
    }

    let up = Arc::new(AtomicBool::new(false));
    let layer = SseTransportLayer::builder()
        .with_id_generator(Flaky(up.clone()))
        .build()
        .unwrap();
    let handle = layer.handle();
    let handler = handler_fn(|req, _cx| async move {
        Ok(initialize_result(
            req.params["protocolVersion"]
                .as_str()
                .unwrap_or("2025-11-25"),
        ))
    });
    let svc = tower::Layer::layer(&layer, handler);
    let init = initialize_body("2025-11-25");
    let (parts, body) = tokio::time::timeout(
        Duration::from_secs(10),
        send_in_process(&svc, &init, None, None),
    )
    .await
    .expect("initialize answered");
    assert_eq!(parts.status, 503);
    assert!(parts.headers.get("retry-after").is_some());
    assert!(parts.headers.get("mcp-session-id").is_none());
    let body = body.expect("a JSON-RPC error body");
    assert_eq!(body["id"], 0);
    error_code(&body);
    assert_eq!(handle.session_count(), 0);

    up.store(true, Ordering::SeqCst);
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        svc.oneshot(in_process_post(json_body(&init), None)),
    )
    .await
    .expect("initialize answered")
    .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["mcp-session-id"], "minted-after-recovery");
    assert_eq!(handle.session_count(), 1);
}

// The tests' client gives up on a server that accepts and never answers (the head, then a
// body that stops mid-stream) instead of hanging; on a paused clock, so no real waiting.
#[tokio::test(start_paused = true)]
async fn a_silent_server_fails_the_test_client_instead_of_hanging_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let heads = [
        "",
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\ndata: {}\n\n",
    ];
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        for head in heads {
            let (mut tcp, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 4096];
            let _ = tcp.read(&mut buf).await;
            tcp.write_all(head.as_bytes()).await.expect("write");
            held.push(tcp);
        }
        std::future::pending::<()>().await;
    });
    let client = Client {
        http: support::http_client(),
        url: format!("http://{addr}/mcp"),
        session: None,
    };
    // Far longer than any deadline the client should have.
    async fn bounded<F: std::future::Future>(what: &str, f: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(3600), f)
            .await
            .unwrap_or_else(|_| panic!("{what}: the test client has no deadline"))
    }
    let err = bounded("no answer", client.get().send())
        .await
        .expect_err("nothing answered");
    assert!(err.is_timeout(), "{err:?}");
    let res = bounded("the head", client.get().send())
        .await
        .expect("the head");
    let mut stream = futures_util::StreamExt::boxed(res.bytes_stream());
    let first = futures_util::StreamExt::next(&mut stream).await;
    assert!(matches!(first, Some(Ok(_))), "{first:?}");
    let err = bounded(
        "a stalled stream",
        futures_util::StreamExt::next(&mut stream),
    )
    .await
    .expect("an error, not the end")
    .expect_err("nothing more was sent");
    assert!(err.is_timeout(), "{err:?}");
    silent.abort();
}

// 2. POST validation.
#[tokio::test]
async fn post_validation_statuses() {
    let (srv, _) = server().await;
    let c = srv.client();
    let url = srv.url();
    let http = support::http_client();
    let init = initialize_body("2025-11-25").to_string();

    let r = http
        .post(&url)
        .header("accept", "application/json")
        .header("content-type", "application/json")
        .body(init.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 406);
    assert_eq!(error_code(&body_json(r).await), -32600);
    let r = http
        .post(&url)
        .header("accept", ACCEPT_BOTH)
        .header("content-type", "text/plain")
        .body(init.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 415);
    assert_eq!(error_code(&body_json(r).await), -32600);
    let r = http
        .post(&url)
        .header("accept", ACCEPT_BOTH)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(&body_json(r).await), -32700);
    let batch = format!("[{init}]");
    let r = http
        .post(&url)
        .header("accept", ACCEPT_BOTH)
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2025-06-18")
        .body(batch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(&body_json(r).await), -32600);

    // A non-initialize request without a session id.
    let r = c
        .post(&json!({"jsonrpc":"2.0","id":1,"method":"ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(&body_json(r).await), -32000);

    // Unknown session → 404 with a JSON-RPC error body.
    let mut unknown = srv.client();
    unknown.session = Some("no-such-session".into());
    let r = unknown
        .post(&json!({"jsonrpc":"2.0","id":1,"method":"ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(error_code(&body_json(r).await), -32001);
}

#[tokio::test]
async fn notifications_responses_and_protocol_version_header() {
    let (srv, mut obs) = server().await;
    let mut c = srv.client();
    c.connect("2025-11-25").await;
    obs.wait("notification", "notifications/initialized").await;

    let r = c
        .post(&json!({"jsonrpc":"2.0","id":77,"result":{}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "a client response is accepted");
    assert!(r.bytes().await.unwrap().is_empty());

    let r = c
        .post(&json!({"jsonrpc":"2.0","id":1,"method":"ping"}))
        .header("mcp-protocol-version", "1999-01-01")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(error_code(&body_json(r).await), -32000);
    let r = c
        .post(&json!({"jsonrpc":"2.0","id":2,"method":"ping"}))
        .header("mcp-protocol-version", "2025-03-26")
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        200,
        "an older legacy header on a 2025-11-25 session is accepted"
    );
    let r = c
        .post(&json!({"jsonrpc":"2.0","id":3,"method":"ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "a missing header means 2025-03-26");
    assert_eq!(body_json(r).await["result"], json!({}));
}

// 3. JSON when nothing streamed; SSE otherwise; concurrent POST streams.
#[tokio::test]
async fn json_or_sse_and_concurrent_streams() {
    let (srv, _) = server().await;
    let mut c = srv.client();
    c.connect("2025-11-25").await;

    let r = c.call_tool(1, "echo", json!({"text": "hi"})).await;
    assert_eq!(r.headers().get("content-type").unwrap(), "application/json");
    assert_eq!(body_json(r).await["result"]["content"][0]["text"], "hi");

    let r = c.call_tool(2, "progress", json!({})).await;
    assert_eq!(r.headers().get("cache-control").unwrap(), "no-cache");
    assert_eq!(r.headers().get("x-accel-buffering").unwrap(), "no");
    let mut sse = Sse::new(r);
    let priming = sse.next().await.unwrap();
    assert_eq!(priming.data, "", "priming event has empty data");
    assert!(priming.id.is_some());
    assert_eq!(priming.retry, Some(3000));
    let rest = sse.collect().await;
    assert_eq!(rest.len(), 4);
    assert!(
        rest[..3]
            .iter()
            .all(|e| e.json()["method"] == "notifications/progress")
    );
    assert_eq!(rest[3].json()["id"], 2);

    // Several POST streams at once on one session.
    let calls = (10..15).map(|i| {
        let c = c.clone();
        async move {
            Sse::new(c.call_tool(i, "progress", json!({})).await)
                .collect()
                .await
        }
    });
    for (i, events) in futures_util::future::join_all(calls)
        .await
        .into_iter()
        .enumerate()
    {
        assert_eq!(events.last().unwrap().json()["id"], 10 + i as i64);
        let ids: std::collections::HashSet<_> = events.iter().map(|e| e.id.clone()).collect();
        assert_eq!(ids.len(), events.len(), "event ids are unique");
    }
}

// 4. GET: one standalone stream; server-initiated messages go there, and only there.
#[tokio::test]
async fn standalone_stream_is_exclusive_and_receives_unrelated_messages() {
    let (srv, _) = server().await;
    let mut c = srv.client();
    c.connect("2025-11-25").await;

    // Sent before the stream opens: held until it does.
    assert_eq!(
        c.call_tool(1, "standalone", json!({"message": "early"}))
            .await
            .status(),
        200
    );
    let get = c.get().send().await.unwrap();
    assert_eq!(get.status(), 200);
    let mut stream = Sse::new(get);
    let second = c.get().send().await.unwrap();
    assert_eq!(second.status(), 409);
    assert_eq!(error_code(&body_json(second).await), -32000);
    let no_sse = c
        .http
        .get(&c.url)
        .header("accept", "application/json")
        .header("mcp-session-id", c.session.as_deref().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(no_sse.status(), 406);
    assert_eq!(error_code(&body_json(no_sse).await), -32600);

    let mut first = stream.next().await.unwrap();
    if first.data.is_empty() {
        first = stream.next().await.unwrap();
    }
    assert_eq!(first.json()["params"]["data"], "early");

    // A notification sent while a POST stream is open goes to the standalone stream only.
    let r = c
        .call_tool(2, "standalone", json!({"message": "late"}))
        .await;
    assert_eq!(r.headers().get("content-type").unwrap(), "application/json");
    let ev = stream.next().await.unwrap();
    assert_eq!(ev.json()["params"]["data"], "late");
}

// 5. Server→client requests.
#[tokio::test]
async fn server_request_on_request_stream_answered_by_post() {
    let (srv, _) = server().await;
    let mut c = srv.client();
    c.connect("2025-11-25").await;
    let mut sse = Sse::new(c.call_tool(1, "ask", json!({})).await);
    let mut req = sse.next().await.unwrap();
    if req.data.is_empty() {
        req = sse.next().await.unwrap();
    }
    let req = req.json();
    assert_eq!(req["method"], "sampling/createMessage");
    let answer = json!({"jsonrpc":"2.0","id": req["id"], "result": {"role":"assistant","content":{"type":"text","text":"sampled"},"model":"m"}});
    assert_eq!(c.post(&answer).send().await.unwrap().status(), 202);
    let last = sse.collect().await.pop().unwrap().json();
    assert_eq!(last["result"]["content"][0]["text"], "sampled");

    // Outside a handler: on the standalone stream.
    let mut stream = Sse::new(c.get().send().await.unwrap());
    c.call_tool(2, "ask_standalone", json!({})).await;
    let mut ev = stream.next().await.unwrap();
    if ev.data.is_empty() {
        ev = stream.next().await.unwrap();
    }
    assert_eq!(ev.json()["method"], "roots/list");
}

#[tokio::test]
async fn unanswered_server_request_fails_on_close() {
    let (srv, mut obs) = server().await;
    let mut c = srv.client();
    c.connect("2025-11-25").await;
    let _stream = Sse::new(c.get().send().await.unwrap());
    c.call_tool(1, "ask_standalone", json!({})).await;
    assert_eq!(c.delete().send().await.unwrap().status(), 200);
    obs.wait("standalone-answer", "error: session closed").await;
}

// 6. Cancellation.
#[tokio::test]
async fn cancelled_notification_aborts_the_handler_but_disconnect_does_not() {
    let (srv, mut obs) = server().await;
    let mut c = srv.client();
    c.connect("2025-11-25").await;

    let c2 = c.clone();
    let pending = tokio::spawn(async move { c2.call_tool(5, "wait", json!({})).await });
    obs.wait("started", "wait").await;
    let cancel = json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":5,"reason":"test"}});
    assert_eq!(c.post(&cancel).send().await.unwrap().status(), 202);
    obs.wait("dropped", "wait").await;
    let res = pending.await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(
        Sse::new(res).collect().await.is_empty(),
        "no response after cancellation"
    );

    // A disconnect does not cancel (legacy rule): the handler runs to completion.
    let c3 = c.clone();
    let dropped = tokio::spawn(async move { c3.call_tool(6, "wait", json!({})).await });
    obs.wait("started", "wait").await;
    dropped.abort();
    let _ = dropped.await;
    srv.probe.release.notify_one();
    obs.wait("finished", "wait").await;
}

// 7. Resumability and SEP-1699 polling.
#[tokio::test]
async fn resume_replays_only_that_stream_and_polling_delivers_the_result() {
    let (srv, mut obs) = server().await;
    let mut c = srv.client();
    c.connect("2025-11-25").await;

    // Stream A: notification, then the handler closes the connection and waits.
    let mut a = Sse::new(c.call_tool(1, "close_stream", json!({})).await);
    obs.wait("closed", "true").await;
    let a_events = {
        let mut v = Vec::new();
        while let Some(e) = a.next().await {
            v.push(e);
        }
        v
    };
    assert_eq!(a_events[0].data, "", "priming first");
    assert_eq!(
        a_events[0].retry,
        Some(3000),
        "retry hint before the server closes"
    );
    let last_id = a_events.last().unwrap().id.clone().unwrap();
    assert!(
        a_events.iter().all(|e| e.json().get("id").is_none()),
        "no response on the closed connection"
    );

    // Stream B on the same session produces its own events meanwhile.
    let b = Sse::new(c.call_tool(2, "progress", json!({})).await)
        .collect()
        .await;
    assert_eq!(b.last().unwrap().json()["id"], 2);

    srv.probe.release.notify_one();
    let resumed = c
        .get()
        .header("last-event-id", &last_id)
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    let events = Sse::new(resumed).collect().await;
    let stream_of =
        |id: &Option<String>| id.as_ref().unwrap().split('-').next().unwrap().to_owned();
    let a_stream = stream_of(&Some(last_id.clone()));
    assert!(
        events.iter().all(|e| stream_of(&e.id) == a_stream),
        "only stream A's events: {events:?}"
    );
    assert_eq!(
        events.last().unwrap().json()["result"]["content"][0]["text"],
        "after-close"
    );

    // Replaying again from the priming id yields A's events from the start, never B's.
    let replay = Sse::new(
        c.get()
            .header("last-event-id", a_events[0].id.clone().unwrap())
            .send()
            .await
            .unwrap(),
    )
    .collect()
    .await;
    assert_eq!(
        replay.first().unwrap().json()["params"]["data"],
        "before-close"
    );
    assert!(replay.iter().all(|e| stream_of(&e.id) == a_stream));
}

// 8. DELETE closes everything.
#[tokio::test]
async fn delete_closes_session_tasks_and_streams() {
    let (srv, mut obs) = server().await;
    let mut c = srv.client();
    c.connect("2025-11-25").await;
    c.call_tool(1, "spawn", json!({})).await;
    let mut stream = Sse::new(c.get().send().await.unwrap());
    let r = c.delete().send().await.unwrap();
    assert!(r.status().is_success());
    obs.wait("dropped", "spawned").await;
    while stream.next().await.is_some() {}
    let r = c
        .post(&json!({"jsonrpc":"2.0","id":9,"method":"ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(c.delete().send().await.unwrap().status(), 404);
    assert_eq!(srv.handle.session_count(), 0);
}

// 9. Keep-alive comments on open streams.
#[tokio::test]
async fn keep_alive_comments() {
    let (srv, _) = Server::start(
        SseTransportLayer::builder()
            .with_keep_alive(Some(Duration::from_millis(50)))
            .build()
            .unwrap(),
    )
    .await;
    let mut c = srv.client();
    c.connect("2025-11-25").await;
    let mut stream = Sse::new(c.get().send().await.unwrap());
    let mut comments = 0;
    while comments < 2 {
        if stream.next_raw().await.unwrap().comment {
            comments += 1;
        }
    }
}

// 10. Limits.
#[tokio::test]
async fn body_limit_and_session_limit() {
    let (srv, _) = Server::start(
        SseTransportLayer::builder()
            .with_max_body_bytes(1024)
            .with_max_sessions(2)
            .build()
            .unwrap(),
    )
    .await;
    let mut c = srv.client();
    c.connect("2025-11-25").await;
    let big = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x".repeat(2000)}}});
    let r = c.post(&big).send().await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(error_code(&body_json(r).await), -32600);

    srv.client().connect("2025-11-25").await;
    let r = srv
        .client()
        .post(&initialize_body("2025-11-25"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    assert!(body_json(r).await.get("error").is_some());
}

#[tokio::test]
async fn a_client_that_never_reads_cannot_grow_memory() {
    let (srv, _) = Server::start(
        SseTransportLayer::builder()
            .with_event_log(64, 64 * 1024)
            .build()
            .unwrap(),
    )
    .await;
    let mut c = srv.client();
    c.connect("2025-11-25").await;
    // Open the standalone stream and never read it, then push far more than the bounds.
    let unread = c.get().send().await.unwrap();
    for i in 0..20 {
        let r = c
            .call_tool(i, "standalone", json!({"message": "y".repeat(4096)}))
            .await;
        assert_eq!(r.status(), 200);
    }
    // And a POST stream that is never read.
    let _unread_post = c.call_tool(100, "notify_n", json!({"n": 5000})).await;
    let session = srv.handle.session(c.session.as_deref().unwrap()).unwrap();
    let (events, bytes) = session.buffered();
    assert!(events <= 64, "{events} events held");
    assert!(bytes <= 64 * 1024 + 8 * 1024, "{bytes} bytes held");
    assert!(session.dropped_events() > 0);
    drop(unread);
}

#[tokio::test]
async fn pending_server_request_limit() {
    let (srv, _) = Server::start(
        SseTransportLayer::builder()
            .with_max_pending_requests(1)
            .build()
            .unwrap(),
    )
    .await;
    let mut c = srv.client();
    c.connect("2025-11-25").await;
    let _first = c.call_tool(1, "ask", json!({})).await;
    let second = body_json(c.call_tool(2, "ask", json!({})).await);
    // The second call's request could not be sent: the tool reports the error.
    let v = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .unwrap_or(Value::Null);
    let text = v
        .pointer("/result/content/0/text")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    assert_eq!(text, "error: too many pending server requests");
}

// A dropped server→client request future (a handler cancelled while it waits, or one that
// never awaits it) withdraws the request: its slot is free again, so the session keeps
// accepting requests past `max_pending_requests` dropped ones, and the client's late answer to
// a withdrawn request is accepted (202) and ignored.
#[tokio::test]
async fn dropped_server_request_futures_free_their_slots() {
    use futures_util::FutureExt;
    use http_body_util::BodyExt;
    use mcp_affinity::{handler::handler_fn, session::Session};
    use tower::ServiceExt;

    const MAX: usize = 2;
    const DEADLINE: Duration = Duration::from_secs(10);
    let handler = handler_fn(|req, _cx| async move {
        Ok(match req.method.as_str() {
            "initialize" => initialize_result("2025-11-25"),
            _ => json!({}),
        })
    });
    let svc = tower::Layer::layer(
        &SseTransportLayer::builder()
            .with_max_pending_requests(MAX)
            .build()
            .unwrap(),
        handler,
    );
    let init = in_process_post(json_body(&initialize_body("2025-11-25")), None);
    let res = tokio::time::timeout(DEADLINE, svc.clone().oneshot(init))
        .await
        .expect("initialize answered")
        .unwrap();
    let session = res.extensions().get::<Session>().unwrap().clone();
    let sid = session.id().as_str().to_owned();

    // Futures dropped without being polled, polled once and dropped, and awaited by a task that
    // is aborted (as a cancelled handler is): more than the limit of each.
    for _ in 0..=MAX {
        drop(session.request("roots/list", None));
        let mut polled = Box::pin(session.request("roots/list", None));
        assert!((&mut polled).now_or_never().is_none(), "no answer yet");
        drop(polled);
        let waiting = session.request("roots/list", None);
        let task = tokio::spawn(waiting);
        task.abort();
        assert!(
            tokio::time::timeout(DEADLINE, task)
                .await
                .expect("the aborted task ends")
                .unwrap_err()
                .is_cancelled()
        );
        assert_eq!(session.pending_requests(), 0, "every slot was freed");
    }
    let withdrawn = 3 * (MAX + 1);

    // A later request still gets its slot (it is pending as soon as it is made), and is
    // answered.
    let live = tokio::spawn(session.request("roots/list", None));
    assert_eq!(session.pending_requests(), 1);
    // The client saw every request (they were sent when made): the last is the live one.
    let get = http::Request::get("http://localhost/mcp")
        .header("host", "localhost")
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-11-25")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let res = tokio::time::timeout(DEADLINE, svc.clone().oneshot(get))
        .await
        .expect("GET answered")
        .unwrap();
    assert_eq!(res.status(), 200);
    let mut stream = res.into_body();
    let mut ids = Vec::new();
    while ids.len() < withdrawn + 1 {
        let frame = tokio::time::timeout(DEADLINE, stream.frame())
            .await
            .expect("an event")
            .expect("the stream is open")
            .unwrap();
        let data = frame.into_data().unwrap();
        let text = std::str::from_utf8(&data).unwrap();
        if let Some(line) = text.lines().find_map(|l| l.strip_prefix("data: "))
            && let Ok(msg) = serde_json::from_str::<Value>(line)
        {
            assert_eq!(msg["method"], "roots/list");
            ids.push(msg["id"].clone());
        }
    }
    let (late, live_id) = ids.split_at(withdrawn);

    // Late answers to withdrawn requests: accepted, ignored, and the session is unharmed.
    for id in late {
        let answer = json!({"jsonrpc": "2.0", "id": id, "result": {"roots": []}});
        let (parts, _) =
            tokio::time::timeout(DEADLINE, send_in_process(&svc, &answer, Some(&sid), None))
                .await
                .expect("late answer accepted");
        assert_eq!(parts.status, 202);
    }
    assert_eq!(session.pending_requests(), 1);
    assert!(
        !live.is_finished(),
        "a late answer is not taken for the live request"
    );
    assert!(!session.is_closed());
    let answer = json!({"jsonrpc": "2.0", "id": live_id[0], "result": {"roots": ["file:///x"]}});
    let (parts, _) =
        tokio::time::timeout(DEADLINE, send_in_process(&svc, &answer, Some(&sid), None))
            .await
            .expect("answer accepted");
    assert_eq!(parts.status, 202);
    let got = tokio::time::timeout(DEADLINE, live)
        .await
        .expect("the live request is answered")
        .unwrap();
    assert_eq!(got, Ok(json!({"roots": ["file:///x"]})));
    assert_eq!(session.pending_requests(), 0);
}

// A POST whose handler has not answered yet waits for its stream's phase while a
// `Last-Event-ID` reader of the same stream waits for events: the handler's first event wakes
// both. The POST turns into an SSE answer (taking the stream over, so the GET ends), and
// neither hangs.
#[tokio::test]
async fn a_waiting_post_and_a_resuming_get_are_both_woken() {
    use http_body_util::BodyExt;
    use mcp_affinity::handler::handler_fn;
    use std::sync::Arc;
    use tokio::sync::{Notify, mpsc};
    use tower::ServiceExt;

    const DEADLINE: Duration = Duration::from_secs(10);
    let (go, finish) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let (started_tx, mut started) = mpsc::unbounded_channel::<()>();
    let (g, f) = (go.clone(), finish.clone());
    let handler = handler_fn(move |req, cx| {
        let (go, finish, started) = (g.clone(), f.clone(), started_tx.clone());
        async move {
            if req.method == "initialize" {
                return Ok(initialize_result("2025-11-25"));
            }
            let _ = started.send(());
            go.notified().await;
            cx.notify(
                "notifications/progress",
                Some(json!({"progressToken": 1, "progress": 1})),
            )
            .unwrap();
            finish.notified().await;
            Ok(json!({"done": true}))
        }
    });
    let svc = tower::Layer::layer(&SseTransportLayer::new(), handler);
    let init = in_process_post(json_body(&initialize_body("2025-11-25")), None);
    let res = tokio::time::timeout(DEADLINE, svc.clone().oneshot(init))
        .await
        .expect("initialize answered")
        .unwrap();
    let sid = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();

    // The POST: its handler waits, so the POST future waits for the stream's phase.
    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "x"}});
    let post = tokio::spawn(
        svc.clone()
            .oneshot(in_process_post(json_body(&call), Some(&sid))),
    );
    tokio::time::timeout(DEADLINE, started.recv())
        .await
        .expect("the handler started");

    // A reader of the same stream (the session's first POST stream is stream 1), waiting for
    // its next event once it has the priming event.
    let get = http::Request::get("http://localhost/mcp")
        .header("host", "localhost")
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-11-25")
        .header("last-event-id", "1-0")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let res = tokio::time::timeout(DEADLINE, svc.clone().oneshot(get))
        .await
        .expect("GET answered")
        .unwrap();
    assert_eq!(res.status(), 200);
    let (frames_tx, mut frames) = mpsc::unbounded_channel();
    let mut get_body = res.into_body();
    tokio::spawn(async move {
        while let Some(frame) = get_body.frame().await {
            let _ = frames_tx.send(frame.unwrap().into_data().unwrap());
        }
    });
    let priming = tokio::time::timeout(DEADLINE, frames.recv())
        .await
        .expect("the priming event")
        .unwrap();
    assert!(priming.starts_with(b"id: 1-0"), "{priming:?}");

    // The handler's first event: the POST answers with SSE at once, before the handler ends.
    go.notify_one();
    let res = tokio::time::timeout(DEADLINE, post)
        .await
        .expect("the POST was woken by the event")
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    // The GET was woken too: the POST took its stream over, so it ends (after the event, if it
    // read it first).
    tokio::time::timeout(DEADLINE, async {
        while let Some(frame) = frames.recv().await {
            let text = String::from_utf8_lossy(&frame).into_owned();
            assert!(text.contains("notifications/progress"), "{text}");
        }
    })
    .await
    .expect("the replaced GET stream ends");
    finish.notify_one();
    let body = tokio::time::timeout(DEADLINE, res.into_body().collect())
        .await
        .expect("the POST stream ends")
        .unwrap()
        .to_bytes();
    let text = String::from_utf8_lossy(&body);
    assert!(text.contains("notifications/progress"), "{text}");
    assert!(text.contains(r#""done":true"#), "{text}");
}

// 11. Security.
#[tokio::test]
async fn origin_and_host_validation() {
    let (srv, _) = server().await;
    let c = srv.client();
    let r = c
        .post(&initialize_body("2025-11-25"))
        .header("origin", "http://evil.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(error_code(&body_json(r).await), -32600);
    let same = format!("http://{}", srv.addr);
    let r = c
        .post(&initialize_body("2025-11-25"))
        .header("origin", same)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(&initialize_body("2025-11-25"))
        .header("host", "evil.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 421);
    assert_eq!(error_code(&body_json(r).await), -32600);

    let (srv, _) = Server::start(
        SseTransportLayer::builder()
            .with_allowed_hosts(HostPolicy::list(["mcp.example.com"]))
            .with_allowed_origins(OriginPolicy::same_origin().allow("https://app.example.com"))
            .build()
            .unwrap(),
    )
    .await;
    let c = srv.client();
    let r = c
        .post(&initialize_body("2025-11-25"))
        .header("host", "mcp.example.com")
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c.post(&initialize_body("2025-11-25")).send().await.unwrap();
    assert_eq!(r.status(), 421, "127.0.0.1 is not in the explicit list");
    assert_eq!(error_code(&body_json(r).await), -32600);
}

#[tokio::test]
async fn sessions_bound_to_a_principal() {
    let principal = |p: &http::request::Parts| {
        p.headers
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let (srv, _) = Server::start(
        SseTransportLayer::builder()
            .with_principal(principal)
            .build()
            .unwrap(),
    )
    .await;
    let mut c = srv.client();
    let r = c
        .post(&initialize_body("2025-11-25"))
        .header("x-user", "ada")
        .send()
        .await
        .unwrap();
    c.session = Some(r.headers()["mcp-session-id"].to_str().unwrap().to_owned());
    let ping = json!({"jsonrpc":"2.0","id":1,"method":"ping"});
    assert_eq!(
        c.post(&ping)
            .header("x-user", "ada")
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = c.post(&ping).header("x-user", "eve").send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        error_code(&body_json(r).await),
        -32001,
        "the same 404 as an unknown session"
    );
    assert_eq!(c.post(&ping).send().await.unwrap().status(), 404);
}

// 12. Graceful shutdown.
#[tokio::test]
async fn graceful_shutdown() {
    let (srv, _) = server().await;
    let mut c = srv.client();
    c.connect("2025-11-25").await;
    let session = srv.handle.session(c.session.as_deref().unwrap()).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    session.on_close(move |_, reason| {
        let _ = tx.send(reason);
    });
    let mut stream = Sse::new(c.get().send().await.unwrap());
    assert_eq!(srv.handle.shutdown().await, 1);
    assert_eq!(
        rx.await.unwrap(),
        mcp_affinity::session::CloseReason::Shutdown
    );
    let mut saw_retry = false;
    while let Some(ev) = stream.next_raw().await {
        saw_retry |= ev.retry.is_some() && ev.data.is_empty() && ev.id.is_none();
    }
    assert!(saw_retry, "the stream ends with a retry hint");
    let r = srv
        .client()
        .post(&initialize_body("2025-11-25"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_some());
    assert_eq!(
        c.post(&json!({"jsonrpc":"2.0","id":1,"method":"ping"}))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
}

#[tokio::test]
async fn handler_panic_becomes_an_error_response() {
    let (srv, _) = server().await;
    let mut c = srv.client();
    c.connect("2025-11-25").await;
    let r = c.call_tool(1, "panic", json!({})).await;
    assert_eq!(r.status(), 200);
    assert_eq!(error_code(&body_json(r).await), -32603);
    assert_eq!(
        c.call_tool(2, "echo", json!({"text": "still here"}))
            .await
            .status(),
        200
    );
}

/// A POST to `/mcp` for an in-process call, with `body` as it is and, given a session, its
/// id and the protocol version.
fn in_process_post<B>(body: B, session: Option<&str>) -> http::Request<B> {
    let mut b = http::Request::post("http://localhost/mcp")
        .header("host", "localhost")
        .header("accept", ACCEPT_BOTH)
        .header("content-type", "application/json");
    if let Some(s) = session {
        b = b
            .header("mcp-session-id", s)
            .header("mcp-protocol-version", "2025-11-25");
    }
    b.body(body).unwrap()
}

fn json_body(v: &Value) -> http_body_util::Full<bytes::Bytes> {
    http_body_util::Full::new(bytes::Bytes::from(v.to_string()))
}

// A body limit of an outer layer (`http_body_util::Limited`, as tower-http's
// `RequestBodyLimitLayer` uses) is answered 413 too, not as an unreadable body.
#[tokio::test]
async fn an_outer_body_limit_is_a_413() {
    use mcp_affinity::handler::handler_fn;
    use tower::ServiceExt;

    let handler = handler_fn(|_req, _cx| async { Ok(json!({})) });
    let svc = tower::Layer::layer(&SseTransportLayer::new(), handler);
    let body = http_body_util::Limited::new(json_body(&initialize_body("2025-11-25")), 16);
    let res = svc.oneshot(in_process_post(body, None)).await.unwrap();
    assert_eq!(res.status(), 413);
    assert!(res.headers().get("mcp-session-id").is_none());
    let body = http_body_util::BodyExt::collect(res.into_body())
        .await
        .expect("body")
        .to_bytes();
    let v: Value = serde_json::from_slice(&body).expect("a JSON-RPC body");
    assert_eq!(error_code(&v), -32600);
}

// A `handler_fn` closure that panics before it returns its future (the transport catches
// panics in futures; this one happens in `Service::call`) is answered the same way.
#[tokio::test]
async fn handler_closure_panic_before_its_future_becomes_an_error_response() {
    use http_body_util::BodyExt;
    use mcp_affinity::handler::handler_fn;
    use tower::ServiceExt;

    let handler = handler_fn(|req, _cx| {
        assert!(
            !["tools/call", "notifications/boom"].contains(&req.method.as_str()),
            "a synchronous panic in the handler"
        );
        async { Ok(json!({})) }
    });
    let svc = tower::Layer::layer(&SseTransportLayer::new(), handler);
    let init = in_process_post(json_body(&initialize_body("2025-11-25")), None);
    let res = svc.clone().oneshot(init).await.unwrap();
    let sid = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    for (id, method, code) in [(2, "tools/call", Some(-32603)), (3, "ping", None)] {
        let msg = json!({"jsonrpc":"2.0","id":id,"method":method,"params":{"name":"x"}});
        let res = svc
            .clone()
            .oneshot(in_process_post(json_body(&msg), Some(&sid)))
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{method}");
        let body: Value =
            serde_json::from_slice(&res.into_body().collect().await.unwrap().to_bytes()).unwrap();
        assert_eq!(body["id"], id, "{body}");
        assert_eq!(
            body.pointer("/error/code").and_then(Value::as_i64),
            code,
            "{method}: {body}"
        );
    }
    // A notification's: an HTTP error, as when its future panics.
    let note = json!({"jsonrpc": "2.0", "method": "notifications/boom"});
    let (parts, body) = send_in_process(&svc, &note, Some(&sid), None).await;
    assert_eq!(parts.status, 500);
    assert_eq!(error_code(&body.unwrap()), -32603);
}

/// Sends `msg` through `svc` in process (with a session id and a protocol version when given)
/// and reads the answer: the head, and the body as JSON if it is JSON.
async fn send_in_process<S>(
    svc: &S,
    msg: &Value,
    session: Option<&str>,
    version: Option<&str>,
) -> (http::response::Parts, Option<Value>)
where
    S: tower::Service<
            http::Request<http_body_util::Full<bytes::Bytes>>,
            Response = http::Response<mcp_affinity::transport::ResponseBody>,
            Error = std::convert::Infallible,
        > + Clone,
{
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    let mut req = in_process_post(json_body(msg), session);
    if let Some(v) = version {
        req.headers_mut()
            .insert("mcp-protocol-version", v.parse().unwrap());
    }
    let res = svc.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (parts, serde_json::from_slice(&body).ok())
}

// A handler whose future panics on a notification or on `initialize` (any inner service, not
// only `handler_fn`) fails that one message, like a request's panic: the connection and the
// session's other requests are unaffected, a failed `initialize` leaves no session, and a
// notification nobody could handle is answered with an HTTP error (`500`, a JSON-RPC error
// without an id), alone or in a batch of notifications.
#[tokio::test]
async fn handler_panics_on_notifications_and_initialize_become_error_responses() {
    use mcp_affinity::handler::handler_fn;

    let handler = handler_fn(|req, _cx| async move {
        let boom = req.method == "notifications/boom"
            || req.params.pointer("/clientInfo/name") == Some(&json!("boom"));
        assert!(!boom, "a handler future that panics on {}", req.method);
        match req.method.as_str() {
            "initialize" => Ok(initialize_result(
                req.params["protocolVersion"].as_str().unwrap(),
            )),
            _ => Ok(json!({})),
        }
    });
    let layer = SseTransportLayer::new();
    let sessions = layer.handle();
    let svc = tower::Layer::layer(&layer, handler);

    // initialize: the client's request gets an internal error, and no session is made.
    let mut boom = initialize_body("2025-11-25");
    boom["params"]["clientInfo"]["name"] = json!("boom");
    let (parts, body) = send_in_process(&svc, &boom, None, None).await;
    assert_eq!(parts.status, 200);
    assert!(parts.headers.get("mcp-session-id").is_none());
    let body = body.expect("a JSON-RPC error");
    assert_eq!(
        (error_code(&body), &body["id"]),
        (-32603, &json!(0)),
        "{body}"
    );
    assert_eq!(sessions.session_count(), 0);

    // A legacy notification: 500 with a JSON-RPC error without an id; the session goes on.
    let (parts, _) = send_in_process(&svc, &initialize_body("2025-11-25"), None, None).await;
    let sid = parts.headers["mcp-session-id"].to_str().unwrap().to_owned();
    assert_eq!(sessions.session_count(), 1);
    let note = json!({"jsonrpc": "2.0", "method": "notifications/boom"});
    let (parts, body) = send_in_process(&svc, &note, Some(&sid), None).await;
    assert_eq!(parts.status, 500);
    let body = body.expect("a JSON-RPC error");
    assert_eq!(error_code(&body), -32603, "{body}");
    assert!(body.get("id").is_none_or(Value::is_null), "{body}");
    let ping = json!({"jsonrpc": "2.0", "id": 5, "method": "ping"});
    let (parts, body) = send_in_process(&svc, &ping, Some(&sid), None).await;
    assert_eq!(parts.status, 200);
    assert_eq!(body.unwrap()["result"], json!({}));

    // A modern (stateless) notification: the same.
    let modern = json!({"jsonrpc": "2.0", "method": "notifications/boom",
        "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}});
    let (parts, body) = send_in_process(&svc, &modern, None, Some("2026-07-28")).await;
    assert_eq!(parts.status, 500, "{body:?}");
    assert_eq!(error_code(&body.unwrap()), -32603);

    // A 2025-03-26 batch: of notifications alone, 500; with a request, the request's answer
    // on the batch's stream (the panic is logged).
    let (parts, _) = send_in_process(&svc, &initialize_body("2025-03-26"), None, None).await;
    let old = parts.headers["mcp-session-id"].to_str().unwrap().to_owned();
    let fine = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let batch = json!([fine, note]);
    let (parts, body) = send_in_process(&svc, &batch, Some(&old), Some("2025-03-26")).await;
    assert_eq!(parts.status, 500, "{body:?}");
    assert_eq!(error_code(&body.unwrap()), -32603);
    let batch = json!([fine, note, {"jsonrpc": "2.0", "id": 9, "method": "ping"}]);
    let mut req = in_process_post(json_body(&batch), Some(&old));
    req.headers_mut()
        .insert("mcp-protocol-version", "2025-03-26".parse().unwrap());
    let res = tower::ServiceExt::oneshot(svc.clone(), req).await.unwrap();
    assert_eq!(res.status(), 200);
    let events = http_body_util::BodyExt::collect(res.into_body())
        .await
        .unwrap()
        .to_bytes();
    let events = String::from_utf8_lossy(&events);
    assert!(events.contains(r#""id":9,"result":{}"#), "{events}");
    assert_eq!(sessions.session_count(), 2);
}

/// A handler's response body: JSON, one that panics when read, or one that fails.
enum TestBody {
    Json(Option<bytes::Bytes>),
    Panics,
    Fails,
}

impl http_body::Body for TestBody {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(match self.get_mut() {
            Self::Json(data) => data.take().map(|d| Ok(http_body::Frame::data(d))),
            Self::Panics => panic!("a response body that panics when read"),
            Self::Fails => Some(Err(std::io::Error::other("a response body that fails"))),
        })
    }
}

// A panic (or an error) while the transport reads the handler's answer is caught like a panic
// in the handler's future: an internal error for that request (`initialize`: no session), a
// `500` for a notification whose handler answered with an error.
#[tokio::test]
async fn a_panic_while_reading_the_handlers_answer_becomes_an_error_response() {
    use mcp_affinity::protocol::Message;

    let inner = tower::service_fn(
        |req: http::Request<mcp_affinity::transport::RequestBody>| async move {
            use mcp_affinity::protocol::RequestId;

            let msg = req.extensions().get::<Message>().unwrap().clone();
            let res = http::Response::builder().header("content-type", "application/json");
            let json = |v: Value| TestBody::Json(Some(bytes::Bytes::from(v.to_string())));
            let res = if let (Some("initialize"), Some(&RequestId::Number(n @ (1 | 3)))) =
                (msg.method(), msg.id())
            {
                let version = if n == 3 { "2025-03-26" } else { "2025-11-25" };
                res.body(json(
                    json!({"jsonrpc": "2.0", "id": n, "result": initialize_result(version)}),
                ))
            } else if msg.method() == Some("notifications/message") {
                // A notification the handler refuses, with a readable answer.
                let refused = json!({"jsonrpc": "2.0", "id": null,
                    "error": {"code": -32602, "message": "refused"}});
                res.status(400).body(json(refused))
            } else {
                // Notifications get an error status, so their answer is read.
                let status = if msg.id().is_some() { 200 } else { 400 };
                let body = match msg.method() {
                    Some("tools/list" | "notifications/cancelled") => TestBody::Fails,
                    _ => TestBody::Panics,
                };
                res.status(status).body(body)
            };
            Ok::<_, std::convert::Infallible>(res.unwrap())
        },
    );
    let layer = SseTransportLayer::new();
    let sessions = layer.handle();
    let svc = tower::Layer::layer(&layer, inner);

    let (parts, body) = send_in_process(&svc, &initialize_body("2025-11-25"), None, None).await;
    assert_eq!(parts.status, 200);
    assert!(parts.headers.get("mcp-session-id").is_none());
    let body = body.unwrap();
    assert_eq!(
        (error_code(&body), &body["id"]),
        (-32603, &json!(0)),
        "{body}"
    );
    assert_eq!(sessions.session_count(), 0);

    let mut init = initialize_body("2025-11-25");
    init["id"] = json!(1);
    let (parts, _) = send_in_process(&svc, &init, None, None).await;
    let sid = parts.headers["mcp-session-id"].to_str().unwrap().to_owned();
    // Bodies that panic (`ping`, `initialized`) or fail (`tools/list`, `cancelled`) when read:
    // an internal error for the request's id, or a `500` for a notification.
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let cancelled = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": 99}});
    for (msg, status, id) in [
        (
            json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}),
            200,
            json!(2),
        ),
        (note.clone(), 500, Value::Null),
        (
            json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}),
            200,
            json!(3),
        ),
        (cancelled.clone(), 500, Value::Null),
    ] {
        let (parts, body) = send_in_process(&svc, &msg, Some(&sid), None).await;
        let body = body.expect("a JSON-RPC error");
        assert_eq!(
            (parts.status.as_u16(), error_code(&body), &body["id"]),
            (status, -32603, &id),
            "{msg}: {body}"
        );
    }
    assert_eq!(sessions.session_count(), 1);

    // A notification the handler refuses is answered with the handler's own answer, alone or
    // as a 2025-03-26 batch of notifications alone (the first failure); a panic or an
    // unreadable answer in such a batch is an internal error.
    let refused = json!({"jsonrpc": "2.0", "method": "notifications/message",
        "params": {"level": "info", "data": "x"}});
    let (parts, body) = send_in_process(&svc, &refused, Some(&sid), None).await;
    assert_eq!(parts.status, 400);
    assert_eq!(error_code(&body.unwrap()), -32602);
    let mut init = initialize_body("2025-03-26");
    init["id"] = json!(3);
    let (parts, _) = send_in_process(&svc, &init, None, None).await;
    let old = parts.headers["mcp-session-id"].to_str().unwrap().to_owned();
    for (batch, status, code) in [
        (json!([refused, note]), 400, -32602),
        (json!([note, refused]), 500, -32603),
        (json!([cancelled]), 500, -32603),
    ] {
        let (parts, body) = send_in_process(&svc, &batch, Some(&old), Some("2025-03-26")).await;
        assert_eq!(parts.status, status, "{batch}");
        assert_eq!(error_code(&body.unwrap()), code, "{batch}");
    }
}

// An inner service's framing headers describe its own body, not the one the transport sends:
// `Content-Length` and `Transfer-Encoding` are dropped (the body's exact size hint frames it),
// `Content-Type` is added when missing, other headers pass through; a response with
// `Content-Type` alone passes as it is.
#[tokio::test]
async fn a_json_answer_drops_the_inner_framing_headers() {
    use http_body_util::BodyExt;
    use mcp_affinity::protocol::Message;
    use tower::ServiceExt;

    let inner = tower::service_fn(
        |req: http::Request<mcp_affinity::transport::RequestBody>| async move {
            let msg = req
                .extensions()
                .get::<Message>()
                .expect("the parsed message")
                .clone();
            let id = serde_json::to_string(msg.id().unwrap()).unwrap();
            let (result, framing) = match msg.method() {
                Some("initialize") => (initialize_result("2025-11-25").to_string(), false),
                Some("tools/list") => (r#"{"tools":[]}"#.to_owned(), false),
                _ => ("{}".to_owned(), true),
            };
            let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#);
            let mut res = http::Response::builder();
            res = if framing {
                res.header("x-inner", "kept")
                    .header("content-length", "999")
                    .header("transfer-encoding", "chunked")
            } else {
                res.header("content-type", "application/json; charset=utf-8")
            };
            Ok::<_, std::convert::Infallible>(
                res.body(http_body_util::Full::new(bytes::Bytes::from(body)))
                    .unwrap(),
            )
        },
    );
    let svc = tower::Layer::layer(&SseTransportLayer::new(), inner);
    let res = svc
        .clone()
        .oneshot(in_process_post(
            json_body(&initialize_body("2025-11-25")),
            None,
        ))
        .await
        .unwrap();
    let sid = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();

    let ping = json!({"jsonrpc": "2.0", "id": 7, "method": "ping"});
    let res = svc
        .clone()
        .oneshot(in_process_post(json_body(&ping), Some(&sid)))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers();
    assert!(h.get("content-length").is_none(), "{h:?}");
    assert!(h.get("transfer-encoding").is_none(), "{h:?}");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["x-inner"], "kept");
    let expected = r#"{"jsonrpc":"2.0","id":7,"result":{}}"#;
    assert_eq!(
        http_body::Body::size_hint(res.body()).exact(),
        Some(expected.len() as u64)
    );
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        expected
    );

    let list = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/list"});
    let res = svc
        .oneshot(in_process_post(json_body(&list), Some(&sid)))
        .await
        .unwrap();
    assert_eq!(
        res.headers()["content-type"],
        "application/json; charset=utf-8"
    );
    assert_eq!(res.headers().len(), 1, "{:?}", res.headers());
}

// JSON-RPC batches: only on 2025-03-26 sessions.
#[tokio::test]
async fn batches_on_2025_03_26_and_refused_later() {
    let (srv, mut obs) = server().await;
    let mut old = srv.client();
    old.connect("2025-03-26").await;
    let batch = json!([
        {"jsonrpc":"2.0","method":"notifications/roots/list_changed"},
        {"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"text":"a"}}},
        {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"progress","arguments":{}}},
        {"jsonrpc":"2.0","id":3,"method":"ping"}
    ]);
    let res = old.post(&batch).send().await.unwrap();
    assert_eq!(res.status(), 200);
    obs.wait("notification", "notifications/roots/list_changed")
        .await;
    let events = Sse::new(res).collect().await;
    let mut answered: Vec<i64> = events
        .iter()
        .filter_map(|e| e.json()["id"].as_i64())
        .collect();
    answered.sort_unstable();
    assert_eq!(
        answered,
        vec![1, 2, 3],
        "every request answered on the one stream: {events:?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.json()["method"] == "notifications/progress")
            .count(),
        3
    );

    let only_notes =
        json!([{"jsonrpc":"2.0","method":"notifications/a"},{"jsonrpc":"2.0","id":9,"result":{}}]);
    assert_eq!(old.post(&only_notes).send().await.unwrap().status(), 202);
    let with_init = json!([support::initialize_body("2025-03-26")]);
    let res = old.post(&with_init).send().await.unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(error_code(&body_json(res).await), -32600);

    let mut new = srv.client();
    new.connect("2025-11-25").await;
    let res = new
        .post(&json!([{"jsonrpc":"2.0","id":1,"method":"ping"}]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(error_code(&body_json(res).await), -32600);
}
