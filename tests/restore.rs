//! Restoring a session this node does not hold (the session registry's `RestoreSession`), the
//! restore hook and marker, and draining: in process, through `tower::ServiceExt::oneshot`.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use mcp_affinity::{
    SseTransportLayer,
    handler::handler_fn,
    protocol::{ProtocolVersion, Refusal},
    session::{CloseReason, RestoreSession, Session, SessionId, SessionRestored, principal_digest},
    transport::{ResponseBody, SseTransportBuilder, TransportHandle},
};
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};

const ID: &str = "n1.restore-me";
/// Every wait in these tests is bounded by this.
const DEADLINE: Duration = Duration::from_secs(10);

/// What the handler saw of one request.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    marker: bool,
    version: Option<ProtocolVersion>,
    client_name: Option<String>,
    sampling: bool,
    /// The state the restore hook put into the session, as the handler found it.
    token: Option<Token>,
}

/// Per-session state the restore hook rebuilds: which run of the hook made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Token(usize);

type Svc = tower::util::BoxCloneSyncService<
    Request<Full<Bytes>>,
    Response<ResponseBody>,
    std::convert::Infallible,
>;

/// A transport with a counting restore hook, its handle, and what the handler saw.
struct Node {
    svc: Svc,
    handle: TransportHandle,
    hooks: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Node {
    fn new(builder: SseTransportBuilder) -> Self {
        Self::with_hook(builder, |_| {})
    }

    /// `extra` runs inside the hook, after it has stored the session's [`Token`].
    fn with_hook(
        builder: SseTransportBuilder,
        extra: impl Fn(&Session) + Send + Sync + 'static,
    ) -> Self {
        let hooks = Arc::new(AtomicUsize::new(0));
        let counted = hooks.clone();
        let layer = builder
            .with_on_restore(move |session: &Session| {
                let n = counted.fetch_add(1, Ordering::SeqCst) + 1;
                session.insert(Token(n));
                extra(session);
            })
            .build()
            .unwrap();
        let handle = layer.handle();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let handler = handler_fn(move |req, _cx| {
            let session = req.session().cloned();
            let seen = Seen {
                method: req.method.clone(),
                marker: req.parts.extensions.get::<SessionRestored>().is_some(),
                version: session.as_ref().and_then(Session::protocol_version),
                client_name: session
                    .as_ref()
                    .and_then(|s| s.client_info())
                    .and_then(|i| i["name"].as_str())
                    .map(str::to_owned),
                sampling: session
                    .as_ref()
                    .and_then(|s| s.client_capabilities())
                    .is_some_and(|c| c.get("sampling").is_some()),
                token: session.as_ref().and_then(|s| s.get::<Token>()),
            };
            log.lock().unwrap().push(seen);
            async move {
                Ok(match req.method.as_str() {
                    "initialize" => {
                        json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})
                    }
                    _ => json!({}),
                })
            }
        });
        Self {
            svc: Svc::new(layer.layer(handler)),
            handle,
            hooks,
            seen,
        }
    }

    fn hooks(&self) -> usize {
        self.hooks.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Response<ResponseBody> {
        tokio::time::timeout(DEADLINE, self.svc.clone().oneshot(req))
            .await
            .expect("answered in time")
            .unwrap()
    }
}

/// What the registry passes when it has taken the session over.
fn restore_of(id: &str) -> RestoreSession {
    RestoreSession::new(SessionId::parse(id).unwrap(), ProtocolVersion::V2025_06_18).with_client(
        Some(json!({"name": "ada", "version": "1"})),
        Some(json!({"sampling": {}})),
    )
}

fn with_restore(mut req: Request<Full<Bytes>>, r: Option<RestoreSession>) -> Request<Full<Bytes>> {
    if let Some(r) = r {
        req.extensions_mut().insert(r);
    }
    req
}

fn post(msg: &Value, sid: Option<&str>, restore: Option<RestoreSession>) -> Request<Full<Bytes>> {
    let mut b = Request::post("/mcp")
        .header("host", "localhost")
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json");
    if let Some(sid) = sid {
        b = b.header("mcp-session-id", sid);
    }
    with_restore(
        b.body(Full::new(Bytes::from(msg.to_string()))).unwrap(),
        restore,
    )
}

fn get(
    sid: &str,
    last_event_id: Option<&str>,
    restore: Option<RestoreSession>,
) -> Request<Full<Bytes>> {
    let mut b = Request::get("/mcp")
        .header("host", "localhost")
        .header("accept", "text/event-stream")
        .header("mcp-session-id", sid);
    if let Some(l) = last_event_id {
        b = b.header("last-event-id", l);
    }
    with_restore(b.body(Full::default()).unwrap(), restore)
}

fn delete(sid: &str, restore: Option<RestoreSession>) -> Request<Full<Bytes>> {
    let b = Request::delete("/mcp")
        .header("host", "localhost")
        .header("mcp-session-id", sid);
    with_restore(b.body(Full::default()).unwrap(), restore)
}

fn call(id: u64, method: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method})
}

fn init() -> Value {
    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
           "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "c", "version": "1"}}})
}

async fn json_of(res: Response<ResponseBody>) -> Value {
    let body = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap_or(Value::Null)
}

/// The next frame of an SSE body as text (`None`: the body ended), within the deadline.
async fn frame(body: &mut ResponseBody) -> Option<String> {
    let f = tokio::time::timeout(DEADLINE, body.frame())
        .await
        .expect("a frame in time")?
        .unwrap();
    Some(String::from_utf8(f.into_data().unwrap().to_vec()).unwrap())
}

/// The next frame that is not a keep-alive comment.
async fn event(body: &mut ResponseBody) -> Option<String> {
    loop {
        let f = frame(body).await?;
        if !f.starts_with(':') {
            return Some(f);
        }
    }
}

fn restored_session(res: &Response<ResponseBody>) -> Option<Session> {
    res.extensions().get::<Session>().cloned()
}

#[tokio::test]
async fn a_post_restores_the_session_and_marks_only_its_own_request() {
    let node = Node::new(SseTransportLayer::builder());
    let res = node
        .send(post(&call(1, "tools/list"), Some(ID), Some(restore_of(ID))))
        .await;
    assert_eq!(res.status(), 200);
    let session = restored_session(&res).expect("the restoring response carries the session");
    assert_eq!(session.id().as_str(), ID);
    assert_eq!(json_of(res).await["id"], 1);
    assert_eq!(node.hooks(), 1);
    assert_eq!(node.handle.sessions_restored(), 1);
    assert_eq!(node.handle.session_count(), 1);
    let held = node.handle.session(ID).expect("held now");
    assert_eq!(held.protocol_version(), Some(ProtocolVersion::V2025_06_18));
    assert_eq!(held.client_info().unwrap()["name"], "ada");

    // Follow-ups, with or without the registry's `RestoreSession`, are served by the session
    // restored: no second restore, no marker, no session in the response.
    let res = node.send(post(&call(2, "ping"), Some(ID), None)).await;
    assert_eq!(res.status(), 200);
    assert!(restored_session(&res).is_none());
    let res = node
        .send(post(&call(3, "ping"), Some(ID), Some(restore_of(ID))))
        .await;
    assert_eq!(res.status(), 200);
    assert!(restored_session(&res).is_none());
    let res = node
        .send(post(
            &json!({"jsonrpc": "2.0", "method": "notifications/roots/list_changed"}),
            Some(ID),
            None,
        ))
        .await;
    assert_eq!(res.status(), 202);
    assert_eq!(node.hooks(), 1);
    assert_eq!(node.handle.sessions_restored(), 1);

    let seen = node.seen();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert_eq!(
        seen.iter().map(|s| s.marker).collect::<Vec<_>>(),
        [true, false, false, false],
        "the marker on the restoring request only"
    );
    for s in &seen {
        assert_eq!(s.version, Some(ProtocolVersion::V2025_06_18), "{s:?}");
        assert_eq!(s.client_name.as_deref(), Some("ada"));
        assert!(s.sampling, "{s:?}");
        assert_eq!(
            s.token,
            Some(Token(1)),
            "the hook ran before the handler: {s:?}"
        );
    }
    assert_eq!(seen[0].method, "tools/list");
    // Initialized: the init timeout does not apply; the session closes like any other.
    assert!(!session.is_closed());
}

#[tokio::test]
async fn a_get_restores_the_session_and_opens_its_standalone_stream() {
    let node = Node::new(SseTransportLayer::builder());
    let res = node.send(get(ID, None, Some(restore_of(ID)))).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let session = restored_session(&res).expect("the restoring response carries the session");
    assert_eq!(node.hooks(), 1);
    let mut body = res.into_body();
    // 2025-06-18 does not prime streams: the first frame is the notification.
    session
        .notify("notifications/tools/list_changed", None)
        .unwrap();
    let ev = event(&mut body).await.unwrap();
    assert!(ev.contains("id: 0-1\n"), "{ev}");
    assert!(ev.contains("notifications/tools/list_changed"), "{ev}");
    assert!(node.seen().is_empty(), "a GET calls no handler");

    // A second GET restores nothing: the standalone stream is open (409).
    let res = node.send(get(ID, None, Some(restore_of(ID)))).await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    assert_eq!(node.hooks(), 1);
    drop(body);
}

#[tokio::test]
async fn a_get_resuming_the_former_nodes_stream_goes_on_after_its_last_event() {
    let node = Node::new(SseTransportLayer::builder());
    // The client had the standalone stream up to `0-41` on the former node.
    let res = node.send(get(ID, Some("0-41"), Some(restore_of(ID)))).await;
    assert_eq!(res.status(), 200);
    let session = restored_session(&res).unwrap();
    let mut body = res.into_body();
    session.notify("notifications/message", None).unwrap();
    let ev = event(&mut body).await.unwrap();
    assert!(
        ev.contains("id: 0-42\n"),
        "numbered after the client's last: {ev}"
    );
    drop(body);

    // A POST stream of the former node names nothing here: a fresh standalone stream.
    let other = "n1.other";
    let res = node
        .send(get(other, Some("3-7"), Some(restore_of(other))))
        .await;
    assert_eq!(res.status(), 200);
    let session = restored_session(&res).unwrap();
    let mut body = res.into_body();
    session.notify("notifications/message", None).unwrap();
    let ev = event(&mut body).await.unwrap();
    assert!(ev.contains("id: 0-1\n"), "{ev}");
    assert_eq!(node.hooks(), 2);
}

#[tokio::test]
async fn a_delete_restores_the_session_and_closes_it() {
    let node = Node::new(SseTransportLayer::builder());
    let res = node.send(delete(ID, Some(restore_of(ID)))).await;
    assert!(res.status().is_success(), "{}", res.status());
    let session = restored_session(&res).expect("the restoring response carries the session");
    assert_eq!(session.close_reason(), Some(CloseReason::Deleted));
    assert_eq!(node.hooks(), 1);
    assert_eq!(node.handle.session_count(), 0);
    let res = node.send(post(&call(1, "ping"), Some(ID), None)).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(json_of(res).await["error"]["code"], -32001);
}

#[tokio::test]
async fn a_restore_for_another_id_or_none_at_all_restores_nothing() {
    let node = Node::new(SseTransportLayer::builder());
    let elsewhere = restore_of("n1.someone-else");
    let res = node
        .send(post(&call(1, "ping"), Some(ID), Some(elsewhere.clone())))
        .await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = node.send(get(ID, None, Some(elsewhere.clone()))).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = node.send(delete(ID, Some(elsewhere))).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // Unknown and no restore asked: 404 as ever.
    let res = node.send(post(&call(2, "ping"), Some(ID), None)).await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    // No session id at all: 400 as ever, whatever the extensions hold.
    let res = node
        .send(post(&call(3, "ping"), None, Some(restore_of(ID))))
        .await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert_eq!(node.handle.session_count(), 0);
    assert_eq!(node.hooks(), 0);
    assert_eq!(node.handle.sessions_restored(), 0);
    assert!(node.seen().is_empty());
}

#[tokio::test]
async fn the_principal_binding_is_kept_across_a_restore() {
    let user = |p: &http::request::Parts| {
        p.headers
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let node = Node::new(SseTransportLayer::builder().with_principal(user));
    let adas = || restore_of(ID).with_principal(Some(principal_digest("ada")));
    let as_user = |mut req: Request<Full<Bytes>>, who: Option<&str>| {
        if let Some(who) = who {
            req.headers_mut().insert("x-user", who.parse().unwrap());
        }
        req
    };
    let refused = |res: &Response<ResponseBody>| {
        res.status() == StatusCode::NOT_FOUND
            && res.extensions().get::<Refusal>() == Some(&Refusal::Principal)
            && restored_session(res).is_none()
    };
    for (what, req) in [
        (
            "another principal",
            as_user(post(&call(1, "ping"), Some(ID), Some(adas())), Some("bob")),
        ),
        (
            "no principal",
            as_user(post(&call(1, "ping"), Some(ID), Some(adas())), None),
        ),
        (
            "a GET by another",
            as_user(get(ID, None, Some(adas())), Some("bob")),
        ),
        (
            "a DELETE by another",
            as_user(delete(ID, Some(adas())), Some("bob")),
        ),
        // A record without a binding cannot be restored where sessions are bound.
        (
            "an unbound record",
            as_user(
                post(&call(1, "ping"), Some(ID), Some(restore_of(ID))),
                Some("ada"),
            ),
        ),
    ] {
        let res = node.send(req).await;
        assert!(
            refused(&res),
            "{what}: {} {:?}",
            res.status(),
            res.extensions().get::<Refusal>()
        );
        let body = json_of(res).await;
        assert_eq!(
            body["error"]["code"], -32001,
            "{what}: the same 404 as an unknown id"
        );
        assert_eq!(node.handle.session_count(), 0, "{what}: nothing restored");
    }
    assert_eq!(node.hooks(), 0);

    let res = node
        .send(as_user(
            post(&call(2, "ping"), Some(ID), Some(adas())),
            Some("ada"),
        ))
        .await;
    assert_eq!(res.status(), 200);
    assert!(restored_session(&res).is_some());
    assert_eq!(node.hooks(), 1);
    // The restored session stays bound: another principal gets the unknown session's 404.
    let res = node
        .send(as_user(post(&call(3, "ping"), Some(ID), None), Some("bob")))
        .await;
    assert!(refused(&res), "{}", res.status());
    let res = node
        .send(as_user(post(&call(4, "ping"), Some(ID), None), Some("ada")))
        .await;
    assert_eq!(res.status(), 200);

    // A transport that binds no sessions cannot keep a binding: refused as well.
    let unbound = Node::new(SseTransportLayer::builder());
    let res = unbound
        .send(as_user(
            post(&call(1, "ping"), Some(ID), Some(adas())),
            Some("ada"),
        ))
        .await;
    assert!(refused(&res), "{}", res.status());
    assert_eq!(unbound.handle.session_count(), 0);
}

/// Many requests restoring one session at once on one node: one session, one hook run, and
/// every request served by that session, none of them before the hook has run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_restores_of_one_session_create_it_once() {
    const N: usize = 32;
    let arrived = Arc::new(AtomicUsize::new(0));
    let wait_for = arrived.clone();
    // The hook holds the restore until the other requests have set off (bounded), so they
    // meet the restore in progress rather than the finished session. (Not quite all: one
    // may sit in the hook's worker's LIFO slot, which no other worker takes.)
    let node = Arc::new(Node::with_hook(SseTransportLayer::builder(), move |_| {
        let until = std::time::Instant::now() + DEADLINE / 4;
        while wait_for.load(Ordering::SeqCst) < N - 1 && std::time::Instant::now() < until {
            std::thread::yield_now();
        }
    }));
    let start = Arc::new(tokio::sync::Barrier::new(N));
    let tasks: Vec<_> = (0..N)
        .map(|i| {
            let (node, start, arrived) = (node.clone(), start.clone(), arrived.clone());
            tokio::spawn(async move {
                start.wait().await;
                arrived.fetch_add(1, Ordering::SeqCst);
                let res = node
                    .send(post(
                        &call(i as u64, "tools/call"),
                        Some(ID),
                        Some(restore_of(ID)),
                    ))
                    .await;
                let status = res.status();
                let carried = restored_session(&res);
                let body = json_of(res).await;
                (status, carried, body)
            })
        })
        .collect();
    let mut carried = Vec::new();
    for t in tasks {
        let (status, session, body) = tokio::time::timeout(DEADLINE, t).await.unwrap().unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body.get("result").is_some(), "{body}");
        carried.extend(session);
    }
    assert_eq!(node.hooks(), 1, "the hook ran once");
    assert_eq!(node.handle.sessions_restored(), 1);
    assert_eq!(node.handle.session_count(), 1);
    assert_eq!(
        carried.len(),
        1,
        "one response carries the restored session"
    );
    let seen = node.seen();
    assert_eq!(seen.len(), N);
    assert_eq!(
        seen.iter().filter(|s| s.marker).count(),
        1,
        "one restoring request"
    );
    for s in &seen {
        assert_eq!(
            s.token,
            Some(Token(1)),
            "one session, complete when served: {s:?}"
        );
        assert_eq!(s.client_name.as_deref(), Some("ada"));
    }
    // The session the table holds is the one the hook saw and the response carried.
    let held = node.handle.session(ID).unwrap();
    assert_eq!(held.get::<Token>(), Some(Token(1)));
    held.insert(Token(99));
    assert_eq!(carried[0].get::<Token>(), Some(Token(99)));
}

#[tokio::test]
async fn a_draining_or_full_node_restores_nothing() {
    let node = Node::new(SseTransportLayer::builder());
    assert_eq!(node.handle.drain(), 0);
    for req in [
        post(&call(1, "ping"), Some(ID), Some(restore_of(ID))),
        get(ID, None, Some(restore_of(ID))),
        delete(ID, Some(restore_of(ID))),
    ] {
        let res = node.send(req).await;
        assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(res.headers().contains_key("retry-after"));
        assert!(restored_session(&res).is_none());
        let body = json_of(res).await;
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("another node"),
            "{body}"
        );
    }
    assert_eq!(node.handle.session_count(), 0);
    assert_eq!(node.hooks(), 0);

    let full = Node::new(SseTransportLayer::builder().with_max_sessions(1));
    assert_eq!(full.send(post(&init(), None, None)).await.status(), 200);
    let res = full
        .send(post(&call(1, "ping"), Some(ID), Some(restore_of(ID))))
        .await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key("retry-after"));
    assert_eq!(full.handle.session_count(), 1);
    assert_eq!(full.hooks(), 0);
    assert_eq!(full.handle.sessions_restored(), 0);
}

#[tokio::test]
async fn a_panicking_restore_hook_restores_nothing() {
    let node = Node::with_hook(SseTransportLayer::builder(), |_| panic!("hook fails"));
    let res = node
        .send(post(&call(1, "ping"), Some(ID), Some(restore_of(ID))))
        .await;
    assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    assert!(restored_session(&res).is_none());
    assert_eq!(node.handle.session_count(), 0);
    assert_eq!(node.handle.sessions_restored(), 0);
    assert!(node.seen().is_empty(), "the handler never ran");
}

#[tokio::test]
async fn a_batch_restores_its_session_and_marks_its_first_message() {
    let node = Node::new(SseTransportLayer::builder());
    let r = RestoreSession::new(SessionId::parse(ID).unwrap(), ProtocolVersion::V2025_03_26);
    let batch = json!([call(1, "ping"), call(2, "tools/list")]);
    let res = node.send(post(&batch, Some(ID), Some(r))).await;
    assert_eq!(res.status(), 200);
    assert!(restored_session(&res).is_some());
    let _ = res.into_body().collect().await.unwrap();
    let seen = node.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen.iter().filter(|s| s.marker).count(), 1, "{seen:?}");
    assert_eq!(node.hooks(), 1);
}

/// `drain()`: standalone streams end with the reconnect hint, sessions stay and are served,
/// running handlers finish, `initialize` is refused; streams opened later stay open until
/// `shutdown()`.
#[tokio::test]
async fn drain_ends_standalone_streams_and_keeps_serving_sessions() {
    let (release, wait) = tokio::sync::watch::channel(false);
    let layer = SseTransportLayer::builder()
        .with_retry(Duration::from_millis(1234))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(handler_fn(move |req, _cx| {
        let mut wait = wait.clone();
        async move {
            match req.method.as_str() {
                "initialize" => Ok(json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})),
                "tools/call" => {
                    let _ = wait.wait_for(|go| *go).await;
                    Ok(json!({"done": true}))
                }
                _ => Ok(json!({})),
            }
        }
    }));
    let send = |req: Request<Full<Bytes>>| {
        let svc = svc.clone();
        async move {
            tokio::time::timeout(DEADLINE, svc.oneshot(req))
                .await
                .expect("answered in time")
                .unwrap()
        }
    };
    let res = send(post(&init(), None, None)).await;
    let sid = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    let session = restored_session(&res).unwrap();
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(
        send(post(&initialized, Some(&sid), None)).await.status(),
        202
    );
    let res = send(post(&init(), None, None)).await;
    let idle = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();

    let mut stream = send(get(&sid, None, None)).await.into_body();
    let priming = frame(&mut stream).await.unwrap();
    assert!(priming.contains("retry: 1234\n"), "{priming}");
    session.notify("notifications/message", None).unwrap();
    // A handler in flight when the drain begins.
    let running = tokio::spawn(send(post(&call(5, "tools/call"), Some(&sid), None)));
    let until = tokio::time::Instant::now() + DEADLINE;
    while handle.running_handlers() == 0 {
        assert!(
            tokio::time::Instant::now() < until,
            "the handler never started"
        );
        tokio::task::yield_now().await;
    }

    assert_eq!(handle.drain(), 1, "one standalone stream was open");
    assert!(handle.is_shutting_down());
    // The stream delivers what it had, then the hint, then ends.
    let ev = event(&mut stream).await.unwrap();
    assert!(ev.contains("notifications/message"), "{ev}");
    assert_eq!(event(&mut stream).await.as_deref(), Some("retry: 1234\n\n"));
    assert_eq!(frame(&mut stream).await, None);
    drop(stream);

    // Sessions stay and are served; new sessions are not minted here.
    assert_eq!(handle.session_count(), 2);
    assert!(!session.is_closed());
    let res = send(post(&call(6, "ping"), Some(&sid), None)).await;
    assert_eq!(res.status(), 200);
    let res = send(post(&call(7, "ping"), Some(&idle), None)).await;
    assert_eq!(res.status(), 200);
    let res = send(post(&init(), None, None)).await;
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(res.headers().contains_key("retry-after"));
    // The running handler finishes and is answered.
    assert_eq!(handle.running_handlers(), 1);
    release.send(true).unwrap();
    let res = tokio::time::timeout(DEADLINE, running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(json_of(res).await["result"]["done"], true);
    assert_eq!(handle.running_handlers(), 0);

    // A stream opened after the drain began (its client reconnected here before the
    // balancer saw the node go) delivers what it has, then the hint, and ends: its client
    // goes on elsewhere rather than keep a stream on a node that is leaving.
    session
        .notify("notifications/message", Some(json!({"n": 2})))
        .unwrap();
    let mut late = send(get(&sid, None, None)).await.into_body();
    let _priming = frame(&mut late).await.unwrap();
    let ev = event(&mut late).await.unwrap();
    assert!(ev.contains(r#""n":2"#), "{ev}");
    assert_eq!(event(&mut late).await.as_deref(), Some("retry: 1234\n\n"));
    assert_eq!(frame(&mut late).await, None);
    assert_eq!(handle.drain(), 0, "a second drain ends nothing");
    // Shutdown closes the sessions.
    assert_eq!(handle.shutdown().await, 2);
    assert_eq!(session.close_reason(), Some(CloseReason::Shutdown));
}
