//! The SessionAffinityLayer over real TCP (hyper server, reqwest client without a cookie
//! store: cookies are sent by hand).

#[path = "support/mcp.rs"]
mod support;

use std::{
    collections::HashSet,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use futures_util::FutureExt;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use mcp_affinity::{
    SessionAffinityLayer, SseTransportLayer,
    affinity::{AffinityStatsSnapshot, Misroute, MisrouteKind, SameSite},
    handler::handler_fn,
    session::{NodeTag, SessionId, SessionIdGenerator},
};
use serde_json::{Value, json};
use tower::{Layer, Service, ServiceBuilder, ServiceExt};

const ADR_COOKIE: &str = "_mcp_backend=n1; Path=/mcp; HttpOnly; Secure; SameSite=Strict";

fn tag(t: &str) -> NodeTag {
    NodeTag::new(t).expect("valid tag")
}

fn layer() -> SessionAffinityLayer {
    SessionAffinityLayer::new(tag("n1"))
}

fn builder() -> mcp_affinity::affinity::SessionAffinityBuilder {
    SessionAffinityLayer::builder(tag("n1"))
}

/// A hyper server on a free port, serving `svc` on every path.
struct TestServer {
    addr: SocketAddr,
    http: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    async fn start<S, B>(svc: S) -> Self
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let svc = TowerToHyperService::new(svc.clone());
                tokio::spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        let http = support::http_builder()
            .pool_max_idle_per_host(0)
            .build()
            .expect("client");
        Self { addr, http, task }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
    }
}

fn set_cookies(res: &reqwest::Response) -> Vec<String> {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().expect("ascii").to_owned())
        .collect()
}

fn header(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .map(|v| v.to_str().expect("ascii").to_owned())
}

/// A stand-in inner service that reports what it saw: the path, the session id and cookie
/// headers, and the [`Misroute`] extension. It echoes the session id header back (as some MCP
/// servers do) and sets `x-inner`.
#[derive(Clone, Default)]
struct Echo {
    calls: Arc<AtomicUsize>,
}

impl Echo {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn service(
        self,
    ) -> impl Service<
        Request<Incoming>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + Sync
    + 'static {
        let calls = self.calls;
        tower::service_fn(move |req: Request<Incoming>| {
            calls.fetch_add(1, Ordering::SeqCst);
            let get = |n: &str| {
                req.headers()
                    .get(n)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            };
            let misroute = req
                .extensions()
                .get::<Misroute>()
                .map(|m| json!({"kind": m.kind.as_str(), "owner": m.owner_tag}));
            let seen = json!({
                "path": req.uri().path(),
                "session_id": get("mcp-session-id"),
                "cookie": get("cookie"),
                "misroute": misroute,
            });
            let mut res = Response::new(Full::new(Bytes::from(seen.to_string())));
            res.headers_mut()
                .insert("content-type", "application/json".parse().unwrap());
            res.headers_mut().insert("x-inner", "1".parse().unwrap());
            if let Some(id) = req.headers().get("mcp-session-id") {
                res.headers_mut().insert("mcp-session-id", id.clone());
            }
            async move { Ok::<_, Infallible>(res) }
        })
    }
}

/// A stand-in for an inner MCP server that mints its own (uuid-like) session ids, as rmcp does:
/// a request without `Mcp-Session-Id` creates a session; a known id is served; an unknown id
/// gets `404`. It records every id it saw.
#[derive(Clone, Default)]
struct Minting {
    sessions: Arc<Mutex<HashSet<String>>>,
    seen: Arc<Mutex<Vec<Option<String>>>>,
    next: Arc<AtomicUsize>,
}

impl Minting {
    fn seen(&self) -> Vec<Option<String>> {
        self.seen.lock().unwrap().clone()
    }

    fn service(
        self,
    ) -> impl Service<
        Request<Incoming>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
    + Send
    + Sync
    + 'static {
        let this = self;
        tower::service_fn(move |req: Request<Incoming>| {
            let id = req
                .headers()
                .get("mcp-session-id")
                .map(|v| v.to_str().unwrap().to_owned());
            this.seen.lock().unwrap().push(id.clone());
            let res = match id {
                None => {
                    let n = this.next.fetch_add(1, Ordering::SeqCst);
                    let new = format!("{n:08x}-0000-4000-8000-{:012x}", n * 7919);
                    this.sessions.lock().unwrap().insert(new.clone());
                    Response::builder()
                        .header("mcp-session-id", new)
                        .body(Full::new(Bytes::from_static(b"{}")))
                        .unwrap()
                }
                Some(id) if this.sessions.lock().unwrap().contains(&id) => {
                    Response::new(Full::new(Bytes::from(json!({"seen": id}).to_string())))
                }
                Some(_) => Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .body(Full::new(Bytes::from_static(b"{}")))
                    .unwrap(),
            };
            async move { Ok::<_, Infallible>(res) }
        })
    }
}

async fn body(res: reqwest::Response) -> Value {
    res.json().await.expect("json body")
}

/// The counters other than `requests` (which every request in scope moves).
fn without_requests(mut s: AffinityStatsSnapshot) -> AffinityStatsSnapshot {
    s.requests = 0;
    s
}

fn snapshot(l: &SessionAffinityLayer) -> AffinityStatsSnapshot {
    l.stats().snapshot()
}

// 1. Out of scope: untouched both ways, no cookie; `/mcpx` is not `/mcp`.
#[tokio::test]
async fn out_of_scope_requests_pass_through_untouched() {
    let echo = Echo::default();
    let affinity = builder()
        .with_envelope(true)
        .with_strict(true)
        .build()
        .unwrap();
    let srv = TestServer::start(
        ServiceBuilder::new()
            .layer(affinity.clone())
            .service(echo.clone().service()),
    )
    .await;

    for path in ["/graphql", "/mcpx", "/", "/api/mcp"] {
        let res = srv
            .post(path)
            .header("mcp-session-id", "n2.foreign")
            .header("cookie", "_mcp_backend=n2; other=1")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}: strict mode must not apply");
        assert!(set_cookies(&res).is_empty(), "{path}: no affinity cookie");
        // Not enveloped on the way out.
        assert_eq!(
            header(&res, "mcp-session-id").as_deref(),
            Some("n2.foreign")
        );
        assert_eq!(header(&res, "x-inner").as_deref(), Some("1"));
        let seen = body(res).await;
        assert_eq!(seen["path"], path);
        assert_eq!(seen["session_id"], "n2.foreign");
        assert_eq!(seen["cookie"], "_mcp_backend=n2; other=1");
        assert_eq!(seen["misroute"], Value::Null);
    }
    assert_eq!(echo.calls(), 4);
    assert_eq!(
        without_requests(snapshot(&affinity)),
        AffinityStatsSnapshot::default(),
        "nothing counted but the requests"
    );
}

// 2. The ADR cookie, exactly, on in-scope legacy responses (POST, GET, DELETE, sub-paths).
#[tokio::test]
async fn in_scope_legacy_responses_get_the_adr_cookie() {
    let echo = Echo::default();
    let affinity = layer();
    let srv = TestServer::start(affinity.clone().layer(echo.clone().service())).await;

    let res = srv.post("/mcp").send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(set_cookies(&res), [ADR_COOKIE]);
    let parsed = cookie::Cookie::parse(set_cookies(&res)[0].clone()).unwrap();
    assert_eq!(parsed.name(), "_mcp_backend");
    assert_eq!(parsed.value(), "n1");
    assert_eq!(parsed.path(), Some("/mcp"));
    assert_eq!(parsed.http_only(), Some(true));
    assert_eq!(parsed.secure(), Some(true));
    assert_eq!(parsed.same_site(), Some(cookie::SameSite::Strict));
    assert_eq!(parsed.max_age(), None, "a browser-session cookie");

    // An explicit legacy version, GET and DELETE, and a sub-path are in scope too.
    let res = srv
        .post("/mcp/")
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .unwrap();
    assert_eq!(set_cookies(&res), [ADR_COOKIE]);
    let res = srv.http.get(srv.url("/mcp/sub")).send().await.unwrap();
    assert_eq!(set_cookies(&res), [ADR_COOKIE]);
    let res = srv.http.delete(srv.url("/mcp")).send().await.unwrap();
    assert_eq!(set_cookies(&res), [ADR_COOKIE]);
    assert_eq!(snapshot(&affinity).cookies_set, 4);
}

// 2b. Every attribute is configurable; the cookie path follows the scope.
#[tokio::test]
async fn cookie_attributes_are_configurable() {
    let affinity = builder()
        .with_scope("/api/mcp")
        .with_cookie_name("mcp_node")
        .with_cookie_secure(false)
        .with_cookie_http_only(false)
        .with_cookie_same_site(SameSite::Lax)
        .with_cookie_max_age(Some(std::time::Duration::from_secs(3600)))
        .build()
        .unwrap();
    let srv = TestServer::start(affinity.layer(Echo::default().service())).await;
    let res = srv.post("/api/mcp").send().await.unwrap();
    assert_eq!(
        set_cookies(&res),
        ["mcp_node=n1; Path=/api/mcp; SameSite=Lax; Max-Age=3600"]
    );
    let res = srv.post("/mcp").send().await.unwrap();
    assert!(set_cookies(&res).is_empty(), "outside the new scope");

    let explicit = builder().with_cookie_path("/").build().unwrap();
    let srv = TestServer::start(explicit.layer(Echo::default().service())).await;
    let res = srv.post("/mcp").send().await.unwrap();
    assert_eq!(
        set_cookies(&res),
        ["_mcp_backend=n1; Path=/; HttpOnly; Secure; SameSite=Strict"]
    );
}

// 3. A request carrying this node's valid cookie gets no Set-Cookie, in any header layout.
#[tokio::test]
async fn no_cookie_when_the_request_has_this_nodes_cookie() {
    let affinity = layer();
    let srv = TestServer::start(affinity.layer(Echo::default().service())).await;
    for cookies in [
        vec!["_mcp_backend=n1"],
        vec!["a=1; _mcp_backend=n1; b=2"],
        vec!["a=1", "_mcp_backend=n1"],
        vec!["_mcp_backend=n1", "_mcp_backend=n1"],
    ] {
        let mut req = srv.post("/mcp");
        for c in &cookies {
            req = req.header("cookie", *c);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200);
        assert!(set_cookies(&res).is_empty(), "{cookies:?}");
        assert_eq!(body(res).await["misroute"], Value::Null);
    }
    assert_eq!(
        without_requests(snapshot(&affinity)),
        AffinityStatsSnapshot::default(),
        "nothing counted but the requests"
    );
}

// 4. Forged, malformed and oversized cookies: ignored (a fresh cookie is set), counted, never
//    echoed, never a misroute.
#[tokio::test]
async fn forged_malformed_and_oversized_cookies_are_ignored_and_counted() {
    let affinity = layer();
    let srv = TestServer::start(affinity.layer(Echo::default().service())).await;
    let oversized = format!("_mcp_backend=n1; pad={}", "x".repeat(5000));
    let too_long_tag = format!("_mcp_backend={}", "a".repeat(33));
    let cases: Vec<(&str, String)> = vec![
        ("forged!!", "_mcp_backend=forged!!".into()),
        (
            "n1%3B%20Domain%3Devil",
            "_mcp_backend=n1%3B%20Domain%3Devil".into(),
        ),
        ("evil.example", "_mcp_backend=evil.example".into()),
        ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", too_long_tag),
        ("pad=", oversized),
        ("_mcp_backend=;", "_mcp_backend=; other=1".into()),
    ];
    for (marker, cookie) in &cases {
        let res = srv
            .post("/mcp")
            .header("mcp-session-id", "untagged")
            .header("cookie", cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(set_cookies(&res), [ADR_COOKIE], "{marker}: a fresh cookie");
        for (name, value) in res.headers() {
            let v = String::from_utf8_lossy(value.as_bytes());
            assert!(!v.contains(marker), "{marker} echoed in {name}");
        }
        assert_eq!(body(res).await["misroute"], Value::Null, "{marker}");
    }
    let s = snapshot(&affinity);
    assert_eq!(s.malformed_cookies, cases.len() as u64);
    assert_eq!(s.misroutes_cookie, 0);
    assert_eq!(s.cookies_set, cases.len() as u64);
}

// 5. Ids minted through `id_generator()` carry the tag and a length HAProxy can keep.
#[test]
fn ids_minted_through_the_id_generator_carry_the_tag() {
    let affinity = layer();
    let g = affinity.id_generator();
    let ids: HashSet<String> = (0..100).map(|_| g.generate().as_str().to_owned()).collect();
    assert_eq!(ids.len(), 100);
    for id in &ids {
        assert!(id.starts_with("n1."), "{id}");
        assert_eq!(id.len(), 3 + 24);
        assert!(SessionId::is_valid(id));
        assert_eq!(SessionId::parse(id).unwrap().node_tag(), Some("n1"));
    }
    let derived = SessionAffinityLayer::for_node("node-a.internal")
        .id_generator()
        .generate();
    assert_eq!(derived.as_str().len(), 33);
    assert!(!derived.as_str().contains("internal"));
    let longest = SessionAffinityLayer::new(tag(&"t".repeat(32)))
        .id_generator()
        .generate();
    assert!(
        longest.as_str().len() <= 64,
        "fits `stick-table type string len 64`"
    );
}

// 6. Envelope mode over an inner service that mints its own ids: the client sees
//    `<tag>.<inner id>`, the inner service never sees the envelope.
#[tokio::test]
async fn envelope_round_trip_over_an_inner_service_minting_its_own_ids() {
    let inner = Minting::default();
    let affinity = builder().with_envelope(true).build().unwrap();
    let srv = TestServer::start(affinity.clone().layer(inner.clone().service())).await;

    let res = srv.post("/mcp").send().await.unwrap();
    assert_eq!(res.status(), 200);
    let client_id = header(&res, "mcp-session-id").expect("session id");
    let inner_id = client_id.strip_prefix("n1.").expect("enveloped").to_owned();
    assert_eq!(inner_id.len(), 36, "uuid-like");
    assert!(SessionId::is_valid(&client_id));
    assert_eq!(client_id.len(), 2 + 1 + 36);

    // Follow-up with the enveloped id: served, the inner service saw its own id.
    let res = srv
        .post("/mcp")
        .header("mcp-session-id", &client_id)
        .header("cookie", "_mcp_backend=n1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(body(res).await["seen"], inner_id.as_str());

    // A GET and a DELETE are unwrapped too.
    let res = srv
        .http
        .get(srv.url("/mcp"))
        .header("mcp-session-id", &client_id)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // Another node's envelope: a misroute, passed on unchanged, the inner service says 404.
    let foreign = format!("n2.{inner_id}");
    let res = srv
        .post("/mcp")
        .header("mcp-session-id", &foreign)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // No envelope: passed as is (the inner service answers for it).
    let res = srv
        .post("/mcp")
        .header("mcp-session-id", "not-a-session")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);

    assert_eq!(
        inner.seen(),
        [
            None,
            Some(inner_id.clone()),
            Some(inner_id.clone()),
            Some(foreign),
            Some("not-a-session".into()),
        ]
    );
    assert!(
        inner
            .seen()
            .iter()
            .flatten()
            .all(|id| !id.starts_with("n1.")),
        "the inner service never sees this node's envelope"
    );
    let s = snapshot(&affinity);
    assert_eq!(s.enveloped, 1);
    assert_eq!(s.misroutes_session_id, 1);
}

// 7. Misroutes by cookie and by session-id tag mark the request; the inner service is still
//    called (the registry and transport produce the 404).
#[tokio::test]
async fn misroutes_by_cookie_and_by_session_id_tag_are_marked() {
    let echo = Echo::default();
    let affinity = layer();
    let srv = TestServer::start(affinity.clone().layer(echo.clone().service())).await;

    // Another node's tag in the id.
    let res = srv
        .post("/mcp")
        .header("mcp-session-id", "n2.abc")
        .header("cookie", "_mcp_backend=n1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert!(set_cookies(&res).is_empty());
    assert_eq!(
        body(res).await["misroute"],
        json!({"kind": "session_id", "owner": "n2"})
    );

    // An untagged id with another node's cookie.
    let res = srv
        .post("/mcp")
        .header("mcp-session-id", "abc")
        .header("cookie", "_mcp_backend=n2")
        .send()
        .await
        .unwrap();
    assert_eq!(set_cookies(&res), [ADR_COOKIE], "the cookie is corrected");
    assert_eq!(
        body(res).await["misroute"],
        json!({"kind": "cookie", "owner": "n2"})
    );

    // Not misroutes: our tag outranks a stale cookie; a request without a session id.
    for (id, cookie) in [
        (Some("n1.abc"), "_mcp_backend=n2"),
        (None, "_mcp_backend=n2"),
    ] {
        let mut req = srv.post("/mcp").header("cookie", cookie);
        if let Some(id) = id {
            req = req.header("mcp-session-id", id);
        }
        let res = req.send().await.unwrap();
        assert_eq!(set_cookies(&res), [ADR_COOKIE]);
        assert_eq!(body(res).await["misroute"], Value::Null, "{id:?}");
    }
    // Without envelope mode, ids pass through unchanged.
    let res = srv
        .post("/mcp")
        .header("mcp-session-id", "n1.abc")
        .send()
        .await
        .unwrap();
    assert_eq!(body(res).await["session_id"], "n1.abc");

    assert_eq!(echo.calls(), 5);
    let s = snapshot(&affinity);
    assert_eq!(s.misroutes_session_id, 1);
    assert_eq!(s.misroutes_cookie, 1);
    assert_eq!(s.strict_rejections, 0);
}

// 7b. The misroute hint is in the response extensions too (in process).
#[tokio::test]
async fn misroute_is_in_the_response_extensions() {
    let svc = layer().layer(tower::service_fn(|req: Request<String>| async move {
        assert!(req.extensions().get::<Misroute>().is_some());
        Ok::<_, Infallible>(Response::new(String::new()))
    }));
    let req = Request::post("/mcp")
        .header("mcp-session-id", "n2.abc")
        .body(String::new())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(
        res.extensions().get::<Misroute>(),
        Some(&Misroute::new(MisrouteKind::SessionId, "n2"))
    );
}

// 8. Strict mode: a foreign session-id tag gets 404 + JSON-RPC -32001 without calling inner;
//    DELETE and cookie misroutes still reach the inner service.
#[tokio::test]
async fn strict_mode_answers_404_without_calling_the_inner_service() {
    let echo = Echo::default();
    let affinity = builder().with_strict(true).build().unwrap();
    let srv = TestServer::start(affinity.clone().layer(echo.clone().service())).await;

    let res = srv
        .post("/mcp")
        .header("mcp-session-id", "n2.abc")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(
        header(&res, "content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(set_cookies(&res), [ADR_COOKIE]);
    assert!(header(&res, "x-inner").is_none());
    let b = body(res).await;
    assert_eq!(b["jsonrpc"], "2.0");
    assert_eq!(b["error"]["code"], -32001);
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("initialize")
    );
    let res = srv
        .http
        .get(srv.url("/mcp"))
        .header("mcp-session-id", "n2.abc")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    assert_eq!(echo.calls(), 0, "the inner service was not called");

    // DELETE goes on (a registry below must clean up whichever node owned it).
    let res = srv
        .http
        .delete(srv.url("/mcp"))
        .header("mcp-session-id", "n2.abc")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        body(res).await["misroute"],
        json!({"kind": "session_id", "owner": "n2"})
    );
    // A cookie misroute is never answered by strict mode.
    let res = srv
        .post("/mcp")
        .header("mcp-session-id", "abc")
        .header("cookie", "_mcp_backend=n2")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(echo.calls(), 2);
    let s = snapshot(&affinity);
    assert_eq!(s.strict_rejections, 2);
    assert_eq!(s.misroutes_session_id, 3);
    assert_eq!(s.misroutes_cookie, 1);
}

// 9. Modern-era requests (2026-07-28 and later): no cookie, no envelope, no misroute.
#[tokio::test]
async fn modern_requests_get_no_cookie_and_no_rewriting() {
    let echo = Echo::default();
    let affinity = builder()
        .with_envelope(true)
        .with_strict(true)
        .build()
        .unwrap();
    let srv = TestServer::start(affinity.clone().layer(echo.clone().service())).await;

    for version in ["2026-07-28", "2027-03-01"] {
        for id in ["n1.abc", "n2.abc"] {
            let res = srv
                .post("/mcp")
                .header("mcp-protocol-version", version)
                .header("mcp-session-id", id)
                .header("cookie", "_mcp_backend=n2")
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 200, "{version} {id}");
            assert!(set_cookies(&res).is_empty());
            assert_eq!(header(&res, "mcp-session-id").as_deref(), Some(id));
            let seen = body(res).await;
            assert_eq!(seen["session_id"], id, "not unwrapped");
            assert_eq!(seen["misroute"], Value::Null);
        }
    }
    assert_eq!(
        without_requests(snapshot(&affinity)),
        AffinityStatsSnapshot::default(),
        "nothing counted but the requests"
    );

    // A GET is legacy whatever it announces; so is a POST with a legacy or odd version.
    let res = srv
        .http
        .get(srv.url("/mcp"))
        .header("mcp-protocol-version", "2026-07-28")
        .send()
        .await
        .unwrap();
    assert_eq!(set_cookies(&res), [ADR_COOKIE]);
    for version in ["2025-11-25", "2026-07-27", "latest"] {
        let res = srv
            .post("/mcp")
            .header("mcp-protocol-version", version)
            .send()
            .await
            .unwrap();
        assert_eq!(set_cookies(&res), [ADR_COOKIE], "{version}");
    }
}

// 10. An `initialize` with a stale cookie (another node's) is served, even in strict mode,
//     and gets this node's cookie.
#[tokio::test]
async fn initialize_with_a_stale_cookie_is_served_and_gets_this_nodes_cookie() {
    let echo = Echo::default();
    let affinity = builder().with_strict(true).build().unwrap();
    let srv = TestServer::start(affinity.clone().layer(echo.clone().service())).await;
    let res = srv
        .http
        .post(srv.url("/mcp"))
        .header("content-type", "application/json")
        .header("cookie", "_mcp_backend=n2")
        .body(support::initialize_body("2025-11-25").to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(set_cookies(&res), [ADR_COOKIE]);
    assert_eq!(body(res).await["misroute"], Value::Null);
    assert_eq!(echo.calls(), 1);
    let s = snapshot(&affinity);
    assert_eq!(s.misroutes_cookie, 0);
    assert_eq!(s.strict_rejections, 0);
}

// 11. Backpressure: readiness is forwarded; a strict-mode short-circuit keeps the inner
//     reservation (tower#408) until the service is called again or dropped, never longer.
#[tokio::test]
async fn strict_short_circuit_keeps_the_inner_reservation_until_drop() {
    let inner = tower::service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new(String::new()))
    });
    let svc = ServiceBuilder::new()
        .layer(builder().with_strict(true).build().unwrap())
        .concurrency_limit(1)
        .service(inner);
    let foreign = || {
        Request::post("/mcp")
            .header("mcp-session-id", "n2.abc")
            .body(String::new())
            .unwrap()
    };

    let mut a = svc.clone();
    let mut b = svc;
    let res = a.ready().await.unwrap().call(foreign()).await.unwrap();
    assert_eq!(res.status(), 404);
    // `a` still holds the only permit: `b` is not ready.
    assert!(b.ready().now_or_never().is_none());
    // The same service reuses its reservation.
    let res = a
        .ready()
        .await
        .unwrap()
        .call(Request::post("/mcp").body(String::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // That call consumed the permit; it passes to `b`, which queued first.
    assert!(b.ready().now_or_never().is_some(), "handed over to b");

    // A short-circuited service that is dropped releases its reservation.
    let mut c = b.clone();
    drop(b);
    let mut d = c.clone();
    let res = c.ready().await.unwrap().call(foreign()).await.unwrap();
    assert_eq!(res.status(), 404);
    assert!(
        d.ready().now_or_never().is_none(),
        "c still holds the permit"
    );
    drop(c);
    assert!(d.ready().now_or_never().is_some(), "released on drop");
}

// 12. Stacked over the real transport with the tagged id generator.
#[tokio::test]
async fn stacked_over_the_real_transport_with_tagged_ids() {
    let affinity = layer();
    let transport = SseTransportLayer::builder()
        .with_id_generator(affinity.id_generator())
        .build()
        .expect("valid transport");
    let handle = transport.handle();
    let (probe, _obs) = support::Probe::new();
    let svc = ServiceBuilder::new()
        .layer(affinity.clone())
        .layer(transport)
        .service(handler_fn(move |req, cx| {
            support::handle_request(probe.clone(), req, cx)
        }));
    let srv = TestServer::start(svc).await;
    let mut c = support::Client {
        http: srv.http.clone(),
        url: srv.url("/mcp"),
        session: None,
    };

    let res = c.connect("2025-11-25").await;
    assert_eq!(set_cookies(&res), [ADR_COOKIE]);
    let id = c.session.clone().unwrap();
    assert!(id.starts_with("n1."), "tagged id");
    assert_eq!(id.len(), 3 + 24);
    assert_eq!(handle.session_count(), 1);

    // Follow-ups: plain JSON and a standalone SSE stream through the layer.
    let res = c.call_tool(1, "echo", json!({"text": "hi"})).await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(&res, "mcp-session-id"),
        None,
        "transport echoes no id on follow-ups"
    );
    let v = body(res).await;
    assert_eq!(v["result"]["content"][0]["text"], "hi");
    let stream = c
        .get()
        .header("cookie", "_mcp_backend=n1")
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert!(
        set_cookies(&stream).is_empty(),
        "this node's cookie was sent"
    );
    let mut sse = support::Sse::new(stream);
    let res = c
        .call_tool(2, "standalone", json!({"message": "over the stream"}))
        .await;
    assert_eq!(res.status(), 200);
    let ev = loop {
        let ev = sse.next().await.expect("event");
        if !ev.data.is_empty() {
            break ev;
        }
    };
    assert_eq!(ev.json()["params"]["data"], "over the stream");

    // The same session id with another node's tag: a misroute; the transport answers 404.
    let mut other = c.clone();
    other.session = Some(id.replacen("n1.", "n2.", 1));
    let res = other.call_tool(3, "echo", json!({"text": "x"})).await;
    assert_eq!(res.status(), 404);
    assert_eq!(body(res).await["error"]["code"], -32001);

    let res = c.delete().send().await.unwrap();
    assert!(res.status().is_success());
    assert_eq!(handle.session_count(), 0);
    let s = snapshot(&affinity);
    assert_eq!(s.misroutes_session_id, 1);
    assert_eq!(s.enveloped, 0);
}
