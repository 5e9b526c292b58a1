//! Hostile requests, in process: repeated singleton headers at each layer that reads them,
//! `initialize` carrying a session id or malformed params, and the standalone GET stream a
//! resuming GET replaces.

use std::{
    convert::Infallible,
    fmt::Debug,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use mcp_affinity::{
    SessionAffinityLayer, SseTransportLayer,
    handler::{HandlerRequest, handler_fn},
    registry::{MemoryStore, RegistryStore, SessionRecord, SessionRegistryLayer},
    session::NodeTag,
    transport::TransportHandle,
};
use serde_json::{Value, json};
use tower::{Layer, Service, ServiceExt};

/// Every request and body read here has this deadline.
const DEADLINE: Duration = Duration::from_secs(20);
const ACCEPT_BOTH: &str = "application/json, text/event-stream";
const V: &str = "2025-11-25";
const MODERN: &str = "2026-07-28";

type Req = Request<Full<Bytes>>;

/// A request to `/mcp` with `headers` appended in order (so a name given twice is sent twice).
fn request(method: Method, headers: &[(&str, &str)], body: Option<&Value>) -> Req {
    request_to("/mcp", method, headers, body)
}

fn request_to(path: &str, method: Method, headers: &[(&str, &str)], body: Option<&Value>) -> Req {
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let body = body.map(|v| Bytes::from(v.to_string())).unwrap_or_default();
    b.body(Full::new(body)).expect("request")
}

/// A POST of `body` with the usual headers, then `extra`.
fn post(body: &Value, extra: &[(&str, &str)]) -> Req {
    let mut h = vec![
        ("host", "localhost"),
        ("accept", ACCEPT_BOTH),
        ("content-type", "application/json"),
    ];
    h.extend_from_slice(extra);
    request(Method::POST, &h, Some(body))
}

async fn send<S, B>(svc: &S, req: Req) -> Response<B>
where
    S: Service<Req, Response = Response<B>> + Clone,
    S::Error: Debug,
{
    tokio::time::timeout(DEADLINE, svc.clone().oneshot(req))
        .await
        .expect("response within the deadline")
        .expect("service")
}

async fn body_of<B>(res: Response<B>) -> Bytes
where
    B: Body,
    B::Error: Debug,
{
    tokio::time::timeout(DEADLINE, res.into_body().collect())
        .await
        .expect("body within the deadline")
        .expect("body")
        .to_bytes()
}

/// The status and the JSON-RPC error code of a response (which must have such a body).
async fn error_of<B>(res: Response<B>) -> (u16, i64)
where
    B: Body,
    B::Error: Debug,
{
    let status = res.status().as_u16();
    let body = body_of(res).await;
    let v: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("a JSON-RPC error body, got {body:?}"));
    let code = v
        .pointer("/error/code")
        .and_then(Value::as_i64)
        .unwrap_or_else(|| panic!("a JSON-RPC error, got {v}"));
    (status, code)
}

fn ping(id: i64) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "ping"})
}

fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": V, "capabilities": {}, "clientInfo": {"name": "c", "version": "1"}}})
}

fn modern(method: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": {"_meta": {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {}}}})
}

/// A transport over a handler that counts its calls (and answers `initialize` whatever its
/// params).
fn transport() -> (
    impl Service<Req, Response = Response<mcp_affinity::transport::ResponseBody>, Error = Infallible>
    + Clone,
    TransportHandle,
    Arc<AtomicUsize>,
) {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let layer = SseTransportLayer::new();
    let handle = layer.handle();
    let svc = layer.layer(handler_fn(move |req: HandlerRequest, _cx| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            Ok(match req.method.as_str() {
                "initialize" => {
                    json!({"protocolVersion": V, "capabilities": {}, "serverInfo": {"name": "t", "version": "1"}})
                }
                _ => json!({}),
            })
        }
    }));
    (svc, handle, calls)
}

/// initialize + notifications/initialized; the session id.
async fn open<S, B>(svc: &S) -> String
where
    S: Service<Req, Response = Response<B>> + Clone,
    S::Error: Debug,
    B: Body,
    B::Error: Debug,
{
    let res = send(svc, post(&initialize(), &[])).await;
    assert_eq!(res.status(), 200, "initialize failed");
    let sid = res.headers()["mcp-session-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    body_of(res).await;
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let res = send(svc, post(&note, &[("mcp-session-id", &sid)])).await;
    assert_eq!(res.status(), 202);
    sid
}

/// A ping on `sid` is answered 200 with a result.
async fn alive<S, B>(svc: &S, sid: &str)
where
    S: Service<Req, Response = Response<B>> + Clone,
    S::Error: Debug,
    B: Body,
    B::Error: Debug,
{
    let res = send(svc, post(&ping(9), &[("mcp-session-id", sid)])).await;
    assert_eq!(res.status(), 200, "the session still works");
    let v: Value = serde_json::from_slice(&body_of(res).await).expect("json");
    assert_eq!(v["result"], json!({}));
}

// ---- Repeated singleton headers -------------------------------------------------------------

#[tokio::test]
async fn transport_refuses_every_repeated_singleton_header() {
    let (svc, handle, calls) = transport();
    let sid = open(&svc).await;
    let other = open(&svc).await;
    let before = calls.load(Ordering::SeqCst);
    let s = sid.as_str();
    let cases: Vec<(&str, Req)> = vec![
        (
            "Mcp-Session-Id",
            post(
                &ping(1),
                &[("mcp-session-id", s), ("mcp-session-id", &other)],
            ),
        ),
        (
            "MCP-Protocol-Version",
            post(
                &ping(1),
                &[
                    ("mcp-session-id", s),
                    ("mcp-protocol-version", V),
                    ("mcp-protocol-version", "2025-06-18"),
                ],
            ),
        ),
        (
            "Last-Event-ID",
            request(
                Method::GET,
                &[
                    ("host", "localhost"),
                    ("accept", "text/event-stream"),
                    ("mcp-session-id", s),
                    ("last-event-id", "0/0"),
                    ("last-event-id", "1/0"),
                ],
                None,
            ),
        ),
        (
            "Host",
            post(&ping(1), &[("mcp-session-id", s), ("host", "evil.example")]),
        ),
        (
            "Origin",
            post(
                &ping(1),
                &[
                    ("mcp-session-id", s),
                    ("origin", "http://localhost"),
                    ("origin", "http://evil.example"),
                ],
            ),
        ),
        (
            "Content-Type",
            post(
                &ping(1),
                &[("mcp-session-id", s), ("content-type", "text/plain")],
            ),
        ),
        (
            "Mcp-Method",
            post(
                &ping(1),
                &[
                    ("mcp-session-id", s),
                    ("mcp-method", "ping"),
                    ("mcp-method", "tools/call"),
                ],
            ),
        ),
        (
            "Mcp-Name",
            post(
                &ping(1),
                &[("mcp-session-id", s), ("mcp-name", "a"), ("mcp-name", "b")],
            ),
        ),
        (
            "Mcp-Session-Id on DELETE",
            request(
                Method::DELETE,
                &[
                    ("host", "localhost"),
                    ("mcp-session-id", s),
                    ("mcp-session-id", s),
                ],
                None,
            ),
        ),
        (
            "Mcp-Session-Id on initialize",
            post(
                &initialize(),
                &[("mcp-session-id", "x"), ("mcp-session-id", "y")],
            ),
        ),
    ];
    for (what, req) in cases {
        let res = send(&svc, req).await;
        assert_eq!(
            error_of(res).await,
            (400, -32600),
            "a repeated {what} header"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), before, "no handler ran");
    assert_eq!(handle.session_count(), 2, "nothing minted, nothing closed");
    alive(&svc, &sid).await;
    alive(&svc, &other).await;
}

#[tokio::test]
async fn transport_refuses_repeated_modern_headers_with_a_json_rpc_400() {
    let (svc, handle, calls) = transport();
    let body = modern("tools/list");
    let one = [
        ("mcp-protocol-version", MODERN),
        ("mcp-method", "tools/list"),
    ];
    let res = send(&svc, post(&body, &one)).await;
    assert_eq!(res.status(), 200, "the modern request itself is fine");
    body_of(res).await;
    let before = calls.load(Ordering::SeqCst);
    for extra in [
        [
            ("mcp-protocol-version", MODERN),
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/list"),
        ],
        [
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/list"),
            ("mcp-method", "tools/list"),
        ],
        [
            ("mcp-protocol-version", V),
            ("mcp-protocol-version", MODERN),
            ("mcp-method", "tools/list"),
        ],
    ] {
        let res = send(&svc, post(&body, &extra)).await;
        assert_eq!(error_of(res).await, (400, -32020), "{extra:?}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), before, "no handler ran");
    assert_eq!(handle.session_count(), 0);
}

/// An inner service standing in for the rest of the stack: counts calls, answers 200.
fn stand_in(
    calls: Arc<AtomicUsize>,
) -> impl Service<
    Req,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_req: Req| {
        calls.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"{}")))) }
    })
}

#[tokio::test]
async fn affinity_refuses_a_repeated_session_id_or_version() {
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = SessionAffinityLayer::new(NodeTag::new("n1").expect("tag"));
    let svc = layer.layer(stand_in(calls.clone()));
    let cases: Vec<(Req, i64)> = vec![
        (
            post(
                &ping(1),
                &[("mcp-session-id", "n2.a"), ("mcp-session-id", "n1.b")],
            ),
            -32600,
        ),
        (
            request(
                Method::DELETE,
                &[("mcp-session-id", "n1.a"), ("mcp-session-id", "n1.a")],
                None,
            ),
            -32600,
        ),
        (
            post(
                &ping(1),
                &[
                    ("mcp-session-id", "n1.a"),
                    ("mcp-protocol-version", V),
                    ("mcp-protocol-version", "2025-06-18"),
                ],
            ),
            -32600,
        ),
        // A modern request: the layer would pass it through untouched.
        (
            post(
                &modern("tools/list"),
                &[
                    ("mcp-protocol-version", MODERN),
                    ("mcp-protocol-version", MODERN),
                ],
            ),
            -32020,
        ),
        (
            post(
                &modern("tools/list"),
                &[
                    ("mcp-protocol-version", MODERN),
                    ("mcp-protocol-version", V),
                ],
            ),
            -32020,
        ),
    ];
    for (req, code) in cases {
        let res = send(&svc, req).await;
        assert!(
            res.headers().get("set-cookie").is_none(),
            "no cookie on a refusal"
        );
        assert_eq!(error_of(res).await, (400, code));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "nothing reached the inner service"
    );
    // Outside the layer's scope, requests pass untouched.
    let res = send(
        &svc,
        request_to(
            "/other",
            Method::GET,
            &[("mcp-session-id", "a"), ("mcp-session-id", "b")],
            None,
        ),
    )
    .await;
    assert_eq!(res.status(), 200);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn affinity_cookies_that_disagree_confirm_no_node() {
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = SessionAffinityLayer::builder(NodeTag::new("n1").expect("tag"))
        .with_cookie_secure(false)
        .build()
        .expect("affinity")
        .layer(stand_in(calls.clone()));
    let set_cookie = async |cookies: &[&str]| {
        // An untagged session id: only the cookie can tell a misroute.
        let mut h = vec![("mcp-session-id", "untagged")];
        for c in cookies {
            h.push(("cookie", *c));
        }
        let res = send(&svc, post(&ping(1), &h)).await;
        assert_eq!(res.status(), 200);
        let set = res.headers().get("set-cookie").cloned();
        let misroute = res
            .extensions()
            .get::<mcp_affinity::affinity::Misroute>()
            .cloned();
        (set, misroute)
    };
    // One value, or the same one twice (HTTP/2 splits cookies over lines): confirmed.
    assert_eq!(set_cookie(&["_mcp_backend=n1"]).await, (None, None));
    assert_eq!(
        set_cookie(&["_mcp_backend=n1", "a=1; _mcp_backend=n1"]).await,
        (None, None)
    );
    // Two nodes named: a balancer may have followed either. The node sets its own cookie
    // again (so the client converges) and claims no misroute.
    for cookies in [
        &["_mcp_backend=n2; _mcp_backend=n1"][..],
        &["_mcp_backend=n1", "_mcp_backend=n2"][..],
        &["_mcp_backend=n2; _mcp_backend=n3"][..],
    ] {
        let (set, misroute) = set_cookie(cookies).await;
        let set = set.unwrap_or_else(|| panic!("{cookies:?}: the node's cookie is set again"));
        assert!(set.to_str().expect("ascii").starts_with("_mcp_backend=n1;"));
        assert_eq!(misroute, None, "{cookies:?}");
    }
    // One other node: a misroute, as before.
    let (set, misroute) = set_cookie(&["_mcp_backend=n2"]).await;
    assert!(set.is_some());
    assert_eq!(misroute.expect("misroute").owner_tag, "n2");
}

#[tokio::test]
async fn registry_refuses_a_repeated_session_id_or_version_and_removes_nothing() {
    let store = MemoryStore::new();
    let live = "live-session-1";
    assert!(
        store
            .register(
                live,
                &SessionRecord::new("node-a", "inc"),
                Duration::from_secs(60)
            )
            .await
            .expect("register")
    );
    let calls = Arc::new(AtomicUsize::new(0));
    let layer = SessionRegistryLayer::new(store.clone(), "node-a").expect("config");
    let svc = layer.layer(stand_in(calls.clone()));
    let cases: Vec<(Req, i64)> = vec![
        (
            request(
                Method::DELETE,
                &[("mcp-session-id", live), ("mcp-session-id", "other")],
                None,
            ),
            -32600,
        ),
        (
            request(
                Method::DELETE,
                &[("mcp-session-id", "other"), ("mcp-session-id", live)],
                None,
            ),
            -32600,
        ),
        (
            post(
                &ping(1),
                &[("mcp-session-id", "other"), ("mcp-session-id", live)],
            ),
            -32600,
        ),
        (
            post(
                &ping(1),
                &[
                    ("mcp-session-id", live),
                    ("mcp-protocol-version", V),
                    ("mcp-protocol-version", "2025-06-18"),
                ],
            ),
            -32600,
        ),
        (
            post(
                &modern("tools/list"),
                &[
                    ("mcp-protocol-version", MODERN),
                    ("mcp-protocol-version", MODERN),
                ],
            ),
            -32020,
        ),
    ];
    for (req, code) in cases {
        let res = send(&svc, req).await;
        assert_eq!(error_of(res).await, (400, code));
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "nothing reached the inner service"
    );
    assert!(layer.handle().flush(DEADLINE).await, "writes landed");
    let stats = layer.handle().stats();
    assert_eq!((stats.removed, stats.unknown), (0, 0), "{stats:?}");
    assert!(
        store.lookup(live).await.expect("lookup").is_some(),
        "the record is still there"
    );
}

// ---- initialize carrying a session id -------------------------------------------------------

#[tokio::test]
async fn initialize_with_a_live_session_id_is_refused_and_the_session_lives_on() {
    let (svc, handle, calls) = transport();
    let sid = open(&svc).await;
    let before = calls.load(Ordering::SeqCst);
    let res = send(&svc, post(&initialize(), &[("mcp-session-id", &sid)])).await;
    assert!(res.headers().get("mcp-session-id").is_none());
    assert_eq!(error_of(res).await, (400, -32600));
    assert_eq!(handle.session_count(), 1, "no second session");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        before,
        "the handler did not run"
    );
    alive(&svc, &sid).await;
    // An id this node does not hold names no session to disagree about: a new session,
    // as if the header were absent (a client re-initializing after a 404 may still send it).
    for unknown in ["garbage", "n9.0123456789abcdef0123456789abcdef"] {
        let res = send(&svc, post(&initialize(), &[("mcp-session-id", unknown)])).await;
        assert_eq!(res.status(), 200, "{unknown}");
        let minted = res.headers()["mcp-session-id"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert_ne!(minted, unknown);
        alive(&svc, &minted).await;
    }
    assert_eq!(handle.session_count(), 3);
    alive(&svc, &sid).await;
}

// ---- initialize with malformed params -------------------------------------------------------

#[tokio::test]
async fn initialize_with_malformed_params_is_invalid_params_and_mints_nothing() {
    let (svc, handle, calls) = transport();
    let caps = json!({});
    let info = json!({"name": "c", "version": "1"});
    let params = |pv: Option<Value>, caps: Option<Value>, info: Option<Value>| {
        let mut p = serde_json::Map::new();
        if let Some(v) = pv {
            p.insert("protocolVersion".into(), v);
        }
        if let Some(v) = caps {
            p.insert("capabilities".into(), v);
        }
        if let Some(v) = info {
            p.insert("clientInfo".into(), v);
        }
        Value::Object(p)
    };
    let v = || Some(json!(V));
    let bad: Vec<Option<Value>> = vec![
        None,
        Some(json!([])),
        Some(json!("x")),
        Some(json!({})),
        Some(params(None, Some(caps.clone()), Some(info.clone()))),
        Some(params(
            Some(json!(20251125)),
            Some(caps.clone()),
            Some(info.clone()),
        )),
        Some(params(
            Some(json!(null)),
            Some(caps.clone()),
            Some(info.clone()),
        )),
        Some(params(v(), None, Some(info.clone()))),
        Some(params(v(), Some(json!([])), Some(info.clone()))),
        Some(params(v(), Some(json!("all")), Some(info.clone()))),
        Some(params(v(), Some(json!(null)), Some(info.clone()))),
        Some(params(v(), Some(caps.clone()), None)),
        Some(params(v(), Some(caps.clone()), Some(json!("c")))),
        Some(params(v(), Some(caps.clone()), Some(json!({"name": "c"})))),
        Some(params(
            v(),
            Some(caps.clone()),
            Some(json!({"version": "1"})),
        )),
        Some(params(
            v(),
            Some(caps.clone()),
            Some(json!({"name": 1, "version": "1"})),
        )),
        Some(params(
            v(),
            Some(caps.clone()),
            Some(json!({"name": "c", "version": 1})),
        )),
    ];
    for p in bad {
        let mut body = json!({"jsonrpc": "2.0", "id": 7, "method": "initialize"});
        if let Some(p) = &p {
            body["params"] = p.clone();
        }
        let res = send(&svc, post(&body, &[])).await;
        assert!(res.headers().get("mcp-session-id").is_none(), "{p:?}");
        let status = res.status();
        let v: Value = serde_json::from_slice(&body_of(res).await).expect("json");
        assert_eq!(
            (status, v["error"]["code"].as_i64(), &v["id"]),
            (StatusCode::BAD_REQUEST, Some(-32602), &json!(7)),
            "{p:?}"
        );
    }
    assert_eq!(handle.session_count(), 0, "nothing minted");
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the handler never ran");
    // Extra fields, any version string and a clientInfo with more members stay fine.
    let ok = json!({"jsonrpc": "2.0", "id": 8, "method": "initialize", "params": {
        "protocolVersion": "2024-11-05", "capabilities": {"roots": {"listChanged": true}},
        "clientInfo": {"name": "c", "version": "1", "title": "C"}, "x": 1}});
    let res = send(&svc, post(&ok, &[])).await;
    assert_eq!(res.status(), 200);
    assert_eq!(handle.session_count(), 1);
}

// ---- The standalone GET stream, replaced by a resuming GET ----------------------------------

/// Reads SSE events from an in-process response body, each read within the deadline.
struct Events<B> {
    body: B,
    buf: String,
}

impl<B> Events<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Debug,
{
    fn new(res: Response<B>) -> Self {
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["content-type"], "text/event-stream");
        Self {
            body: res.into_body(),
            buf: String::new(),
        }
    }

    /// The next event or comment block (`(id, data)`), `None` at the end of the body.
    async fn next(&mut self) -> Option<(Option<String>, String)> {
        loop {
            if let Some(i) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..i + 2).collect();
                let mut id = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        id = Some(v.to_owned());
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data.push_str(v);
                    }
                }
                return Some((id, data));
            }
            let frame = tokio::time::timeout(DEADLINE, self.body.frame())
                .await
                .expect("SSE frame within the deadline")?
                .expect("body");
            if let Ok(data) = frame.into_data() {
                self.buf.push_str(&String::from_utf8_lossy(&data));
            }
        }
    }

    /// The next event with data (skips priming events and keep-alives).
    async fn message(&mut self) -> Option<(Option<String>, Value)> {
        loop {
            let (id, data) = self.next().await?;
            if !data.is_empty() {
                return Some((id, serde_json::from_str(&data).expect("JSON data")));
            }
        }
    }
}

fn get(sid: &str, last_event_id: Option<&str>) -> Req {
    let mut h = vec![
        ("host", "localhost"),
        ("accept", "text/event-stream"),
        ("mcp-session-id", sid),
    ];
    if let Some(id) = last_event_id {
        h.push(("last-event-id", id));
    }
    request(Method::GET, &h, None)
}

#[tokio::test]
async fn a_resuming_get_replaces_the_standalone_stream_and_replays_from_its_id() {
    let (svc, _handle, _calls) = transport();
    let res = send(&svc, post(&initialize(), &[])).await;
    let session = res
        .extensions()
        .get::<mcp_affinity::session::Session>()
        .expect("session")
        .clone();
    let sid = res.headers()["mcp-session-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    body_of(res).await;
    let say = |n: i64| {
        session
            .notify("notifications/message", Some(json!({"n": n})))
            .expect("notify")
    };

    // The first stream: its priming event names the standalone stream.
    let mut first = Events::new(send(&svc, get(&sid, None)).await);
    let (priming, data) = first.next().await.expect("priming event");
    assert!(data.is_empty());
    let priming = priming.expect("priming id");
    say(1);
    let (seen, msg) = first.message().await.expect("first message");
    assert_eq!(msg["params"]["n"], 1);
    let seen = seen.expect("event id");
    // Sent while the client is away; the first stream is still registered (as behind a proxy
    // that has not noticed the client hang up).
    say(2);

    // A second stream without Last-Event-ID while the first is live: 409.
    let res = send(&svc, get(&sid, None)).await;
    assert_eq!(error_of(res).await.0, 409);
    // A stream resuming another session's or an unknown stream is not a resumption: 409 too.
    let res = send(&svc, get(&sid, Some("99-0"))).await;
    assert_eq!(error_of(res).await.0, 409);

    // Resuming the standalone stream replaces the first: the first ends, the new one replays
    // what followed the id.
    let mut second = Events::new(send(&svc, get(&sid, Some(&seen))).await);
    let (_, msg) = second.message().await.expect("replayed message");
    assert_eq!(msg["params"]["n"], 2, "replayed from the id");
    assert!(first.message().await.is_none(), "the replaced stream ended");
    say(3);
    let (_, msg) = second.message().await.expect("live message");
    assert_eq!(msg["params"]["n"], 3);

    // Resuming from the priming id replays everything after it, again replacing.
    let mut third = Events::new(send(&svc, get(&sid, Some(&priming))).await);
    let mut got = vec![];
    for _ in 0..3 {
        let (_, msg) = third.message().await.expect("replay");
        got.push(msg["params"]["n"].as_i64().expect("n"));
    }
    assert_eq!(got, [1, 2, 3]);
    assert!(
        second.message().await.is_none(),
        "the replaced stream ended"
    );
    let res = send(&svc, get(&sid, None)).await;
    assert_eq!(
        error_of(res).await.0,
        409,
        "still exclusive without Last-Event-ID"
    );
}

// ---- On the wire: the whole stack behind hyper -----------------------------------------------

/// A raw HTTP/1.1 exchange (the request as written, so a header can be sent twice the way a
/// CRLF injection in a client library sends it); the whole response, within the deadline.
async fn raw_exchange(addr: std::net::SocketAddr, request: String) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        tcp.write_all(request.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        tcp.read_to_end(&mut out).await.expect("read");
        String::from_utf8_lossy(&out).into_owned()
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("exchange within the deadline")
}

fn raw_post(extra_headers: &str, body: &Value) -> String {
    let body = body.to_string();
    format!(
        "POST /mcp HTTP/1.1\r\nHost: localhost\r\nAccept: {ACCEPT_BOTH}\r\nContent-Type: application/json\r\n{extra_headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn an_injected_second_session_id_is_refused_by_the_whole_stack() {
    use hyper_util::{
        rt::{TokioExecutor, TokioIo},
        server::conn::auto,
        service::TowerToHyperService,
    };
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let transport = SseTransportLayer::new();
    let handle = transport.handle();
    let registry = SessionRegistryLayer::new(MemoryStore::new(), "node-a").expect("config");
    let svc = tower::ServiceBuilder::new()
        .layer(SessionAffinityLayer::new(NodeTag::new("n1").expect("tag")))
        .layer(registry)
        .layer(transport)
        .service(handler_fn(move |req: HandlerRequest, _cx| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok(match req.method.as_str() {
                    "initialize" => {
                        json!({"protocolVersion": V, "capabilities": {}, "serverInfo": {"name": "t", "version": "1"}})
                    }
                    _ => json!({}),
                })
            }
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
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

    let res = raw_exchange(addr, raw_post("", &initialize())).await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    let sid = res
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .starts_with("mcp-session-id:")
                .then(|| l["mcp-session-id:".len()..].trim().to_owned())
        })
        .expect("a session id");
    let before = calls.load(Ordering::SeqCst);
    let injected = format!("Mcp-Session-Id: {sid}\r\nMcp-Session-Id: n2.injected\r\n");
    let res = raw_exchange(addr, raw_post(&injected, &ping(1))).await;
    assert!(res.starts_with("HTTP/1.1 400"), "{res}");
    let body = &res[res.find("\r\n\r\n").expect("a body") + 4..];
    let v: Value = serde_json::from_str(body.trim()).expect("a JSON-RPC error body");
    assert_eq!(v["error"]["code"], -32600, "{v}");
    assert_eq!(v["error"]["data"]["header"], "mcp-session-id", "{v}");
    assert_eq!(calls.load(Ordering::SeqCst), before, "no handler ran");
    // The session itself is untouched.
    let res = raw_exchange(
        addr,
        raw_post(&format!("Mcp-Session-Id: {sid}\r\n"), &ping(2)),
    )
    .await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert_eq!(handle.session_count(), 1);
    server.abort();
}
