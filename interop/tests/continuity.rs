//! Sessions that outlive their node, in one process over real TCP (no load balancer): a node
//! that does not hold a session forwards its requests to the live owner, or adopts the session
//! from an owner that is gone, draining or a previous process of itself.
//!
//! Each node is registry → transport → the test handler, served on its own listener, whose
//! address is the node's internal address (the one other nodes forward to). The nodes share a
//! `MemoryStore`, or a real `redis-server` where Redis itself matters. Liveness records are
//! written once at start and not again during a test (a long refresh period): a test makes an
//! owner gone by withdrawing its record, or by stopping its server while the record stays.

#[path = "support/counting_store.rs"]
mod counting_store;
#[path = "../../tests/support/redis.rs"]
mod redis_support;
#[path = "support/mcp.rs"]
mod support;

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    time::Duration,
};

use http::{HeaderMap, Method};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use mcp_affinity::{
    SseTransportLayer,
    handler::{HandlerRequest, handler_fn},
    registry::{
        MemoryStore, NodeRecord, NodeState, RedisStore, RegistryHandle, RegistryStore,
        SessionRecord, SessionRegistryBuilder, SessionRegistryLayer,
    },
    session::{RequestContext, RestoreSession, SessionRestored},
    transport::{SseTransportBuilder, TransportHandle},
};
use redis_support::RedisServer;
use serde_json::{Value, json};
use support::{Client, Probe, Sse};
use tokio::net::TcpListener;

const V: &str = "2025-11-25";
/// Liveness as the tests use it: written at start, then not again within a test.
const LIVENESS: (Duration, Duration) = (Duration::from_secs(600), Duration::from_secs(300));
/// How long the racing tests hold a restore between the claim and the transport.
const RESTORE_DELAY: Option<Duration> = Some(Duration::from_millis(30));
/// The bound of every poll.
const DEADLINE: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------------
// Nodes

/// What a node's handler and stack saw.
#[derive(Debug, Default)]
struct Seen {
    /// Every request that reached the node (method and headers, as they arrived).
    requests: Mutex<Vec<(Method, HeaderMap)>>,
    /// Handler requests that carried the `SessionRestored` marker.
    restored_marks: AtomicUsize,
    /// Runs of the transport's restore hook.
    restore_hooks: AtomicUsize,
}

impl Seen {
    /// The requests that arrived forwarded by another node.
    fn forwarded_in(&self) -> Vec<(Method, HeaderMap)> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, h)| h.contains_key("mcp-forwarded-by"))
            .cloned()
            .collect()
    }
}

/// Records every request's method and headers, then passes it on.
#[derive(Clone)]
struct Recorder<S> {
    inner: S,
    seen: Arc<Seen>,
}

impl<S, B> tower::Service<http::Request<B>> for Recorder<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> S::Future {
        self.seen
            .requests
            .lock()
            .unwrap()
            .push((req.method().clone(), req.headers().clone()));
        self.inner.call(req)
    }
}

/// Between the registry and the transport: holds a request that asks for a restore (it
/// carries a `RestoreSession`) for `delay` before the transport sees it, as a slow request
/// body would. Widens the window between a node's claim and its restore.
#[derive(Clone)]
struct SlowRestore<S> {
    inner: S,
    delay: Option<Duration>,
}

impl<S, B> tower::Service<http::Request<B>> for SlowRestore<S>
where
    S: tower::Service<http::Request<B>> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let delay = self
            .delay
            .filter(|_| req.extensions().get::<RestoreSession>().is_some());
        Box::pin(async move {
            if let Some(delay) = delay {
                tokio::time::sleep(delay).await;
            }
            inner.call(req).await
        })
    }
}

/// Serves `svc` on `listener` until `stop` fires: then the listener and every connection
/// close (as when a process dies) before the task ends.
fn serve_on<S, B>(
    listener: TcpListener,
    svc: S,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> tokio::task::JoinHandle<()>
where
    S: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else { continue };
                    let _ = tcp.set_nodelay(true);
                    let svc = TowerToHyperService::new(svc.clone());
                    connections.spawn(async move {
                        let _ = auto::Builder::new(TokioExecutor::new())
                            .serve_connection(TokioIo::new(tcp), svc)
                            .await;
                    });
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                _ = &mut stop => {
                    drop(listener);
                    connections.shutdown().await;
                    return;
                }
            }
        }
    })
}

/// One MCP node: recorder → registry → transport → the test handler, on its own listener.
struct Node<R: RegistryStore> {
    name: String,
    addr: SocketAddr,
    registry: RegistryHandle<R>,
    transport: TransportHandle,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl<R: RegistryStore> Drop for Node<R> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The principal of a request: its `x-user` header.
fn user(parts: &http::request::Parts) -> Option<String> {
    parts
        .headers
        .get("x-user")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

impl<R: RegistryStore + Clone> Node<R> {
    /// A node with the test defaults: its listener's address as internal address, liveness
    /// written once, a default transport.
    async fn start(store: R, name: &str) -> Self {
        Self::start_with(store, name, |r| r, SseTransportLayer::builder()).await
    }

    async fn start_with(
        store: R,
        name: &str,
        registry: impl FnOnce(SessionRegistryBuilder<R>) -> SessionRegistryBuilder<R>,
        transport: SseTransportBuilder,
    ) -> Self {
        Self::start_full(store, name, registry, transport, None).await
    }

    /// [`start_with`](Self::start_with), with requests that restore a session held for
    /// `restore_delay` on their way to the transport.
    async fn start_full(
        store: R,
        name: &str,
        registry: impl FnOnce(SessionRegistryBuilder<R>) -> SessionRegistryBuilder<R>,
        transport: SseTransportBuilder,
        restore_delay: Option<Duration>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let builder = SessionRegistryLayer::builder(store, name)
            .with_internal_address(addr)
            .with_liveness(LIVENESS.0, LIVENESS.1);
        let registry = registry(builder).build().expect("registry");
        let seen = Arc::new(Seen::default());
        let hooks = seen.clone();
        let transport = transport
            .with_on_restore(move |_session| {
                hooks.restore_hooks.fetch_add(1, SeqCst);
            })
            .build()
            .expect("transport");
        let (probe, _) = Probe::new();
        let (node, marks) = (name.to_owned(), seen.clone());
        let handler = handler_fn(move |req: HandlerRequest, cx: RequestContext| {
            let (probe, node, marks) = (probe.clone(), node.clone(), marks.clone());
            async move {
                let restored = req.parts.extensions.get::<SessionRestored>().is_some();
                if restored {
                    marks.restored_marks.fetch_add(1, SeqCst);
                }
                if req.method == "tools/call" && req.params["name"] == "whoami" {
                    let session = cx.session();
                    return Ok(json!({
                        "node": node,
                        "restored": restored,
                        "client": session.and_then(|s| s.client_info().cloned()),
                        "version": session.and_then(|s| s.protocol_version()).map(|v| v.as_str()),
                    }));
                }
                support::handle_request(probe, req, cx).await
            }
        });
        let recorder = seen.clone();
        let svc = tower::ServiceBuilder::new()
            .layer_fn(move |inner| Recorder {
                inner,
                seen: recorder.clone(),
            })
            .layer(registry.clone())
            .layer_fn(move |inner| SlowRestore {
                inner,
                delay: restore_delay,
            })
            .layer(transport.clone())
            .service(handler);
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = serve_on(listener, svc, stopped);
        let node = Self {
            name: name.to_owned(),
            addr,
            registry: registry.handle(),
            transport: transport.handle(),
            seen,
            task,
            stop: Some(stop),
        };
        node.announced().await;
        node
    }

    /// Waits until this node's liveness record names it serving (written in the background
    /// at start).
    async fn announced(&self) {
        let store = self.registry.store();
        for _ in 0..2000 {
            if let Ok(Some(record)) = store.node(&self.name).await
                && record.incarnation == self.registry.incarnation()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{} never announced itself", self.name);
    }

    fn client(&self) -> Client {
        client(self.addr, None)
    }

    fn client_for(&self, id: &str) -> Client {
        client(self.addr, Some(id))
    }

    async fn flush(&self) {
        assert!(
            self.registry.flush(DEADLINE).await,
            "registry writes did not land"
        );
    }

    /// Stops serving: the listener and every connection are closed on return. The liveness
    /// record stays.
    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
            let _ = (&mut self.task).await;
        }
    }

    /// Gone: stops serving and withdraws the liveness record (what a node that left, or
    /// whose record expired, looks like to the others).
    async fn gone(&mut self) {
        self.stop().await;
        assert!(
            self.registry
                .store()
                .withdraw(&self.name, self.registry.incarnation())
                .await
                .unwrap(),
            "liveness record withdrawn"
        );
    }
}

fn client(addr: SocketAddr, session: Option<&str>) -> Client {
    Client {
        http: support::http_client(),
        url: format!("http://{addr}/mcp"),
        session: session.map(str::to_owned),
    }
}

/// A client whose every request carries `headers`.
fn client_with(addr: SocketAddr, session: Option<&str>, headers: &[(&str, &str)]) -> Client {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            http::HeaderValue::from_str(v).unwrap(),
        );
    }
    Client {
        http: support::http_builder()
            .default_headers(h)
            .build()
            .expect("client"),
        url: format!("http://{addr}/mcp"),
        session: session.map(str::to_owned),
    }
}

// ---------------------------------------------------------------------------------------------
// Requests and answers

fn ping() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "ping"})
}

fn whoami() -> Value {
    json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
           "params": {"name": "whoami", "arguments": {}}})
}

/// A POST of `body` with the protocol version header.
async fn post(c: &Client, body: &Value) -> reqwest::Response {
    c.post(body)
        .header("mcp-protocol-version", V)
        .send()
        .await
        .expect("POST answered")
}

/// A standalone GET stream, with the protocol version header.
fn get(c: &Client) -> reqwest::RequestBuilder {
    c.get().header("mcp-protocol-version", V)
}

/// A success: `200` and a JSON-RPC body with a `result` (no `error`); the result.
async fn success(res: reqwest::Response) -> Value {
    let status = res.status();
    let body = res.text().await.expect("body");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON-RPC body");
    assert!(v.get("error").is_none(), "an error, not a result: {v}");
    v.get("result").cloned().expect("a result")
}

/// The `reason` of a session-not-found `404`.
async fn reason(res: reqwest::Response) -> String {
    assert_eq!(res.status(), 404);
    let v: Value = res.json().await.expect("JSON-RPC body");
    assert_eq!(v["error"]["code"], -32001, "{v}");
    v["error"]["data"]["reason"]
        .as_str()
        .expect("reason")
        .to_owned()
}

/// Polls `f` until it holds, within [`DEADLINE`].
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within {DEADLINE:?}");
}

async fn record<R: RegistryStore>(store: &R, id: &str) -> Option<SessionRecord> {
    store.lookup(id).await.expect("store answers")
}

/// A session initialized on `node`, its record written; its id.
async fn session_on<R: RegistryStore + Clone>(node: &Node<R>) -> String {
    let mut c = node.client();
    c.connect(V).await;
    node.flush().await;
    c.session.unwrap()
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

// ---------------------------------------------------------------------------------------------
// Forwarding

/// A node that does not hold a session forwards its POSTs (JSON and SSE answers), its GET
/// stream and its DELETE to the owner; the owner sees the client's headers; afterwards the
/// session is gone everywhere.
#[tokio::test]
async fn forward_post_get_delete_to_the_live_owner() {
    let store = MemoryStore::new();
    let a = Node::start(store.clone(), "node-a").await;
    let b = Node::start(store.clone(), "node-b").await;
    let id = session_on(&a).await;
    let origin = format!("http://{}", b.addr);
    let via_b = client_with(
        b.addr,
        Some(&id),
        &[
            ("authorization", "Bearer t0ken"),
            ("origin", &origin),
            ("x-trace", "t-1"),
        ],
    );

    // A POST with a JSON answer: A's answer, through B.
    let who = success(post(&via_b, &whoami()).await).await;
    assert_eq!(who["node"], "node-a");
    assert_eq!(who["restored"], false);
    assert_eq!(b.registry.stats().forwarded, 1);
    assert_eq!(b.transport.session_count(), 0, "no session on B");
    let seen = a.seen.forwarded_in();
    assert_eq!(seen.len(), 1);
    let (method, h) = &seen[0];
    assert_eq!(method, Method::POST);
    assert_eq!(header(h, "mcp-forwarded-by"), Some("node-b"));
    assert_eq!(header(h, "authorization"), Some("Bearer t0ken"));
    assert_eq!(header(h, "origin"), Some(origin.as_str()));
    assert_eq!(header(h, "host"), Some(b.addr.to_string().as_str()));
    assert_eq!(header(h, "mcp-session-id"), Some(id.as_str()));
    assert_eq!(header(h, "mcp-protocol-version"), Some(V));
    assert_eq!(header(h, "x-trace"), Some("t-1"));

    // A POST answered with an SSE stream (progress, then the result), streamed through B.
    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "progress", "arguments": {}, "_meta": {"progressToken": "tok"}}});
    let events = Sse::new(post(&via_b, &call).await).collect().await;
    let messages: Vec<Value> = events.iter().map(support::Event::json).collect();
    let progress: Vec<&Value> = messages
        .iter()
        .filter(|m| m["method"] == "notifications/progress")
        .collect();
    assert_eq!(progress.len(), 3, "{messages:?}");
    assert!(
        progress
            .iter()
            .all(|p| p["params"]["progressToken"] == "tok")
    );
    assert_eq!(
        messages.last().unwrap()["result"]["content"][0]["text"],
        "done"
    );
    assert_eq!(b.registry.stats().forwarded, 2);

    // The standalone GET stream, opened through B: a notification A sends reaches it.
    let res = get(&via_b).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let mut stream = Sse::new(res);
    let session = a.transport.session(&id).expect("A holds the session");
    session
        .notify(
            "notifications/message",
            Some(json!({"level": "info", "data": "first"})),
        )
        .unwrap();
    let first = loop {
        let ev = stream.next().await.expect("an event");
        if ev.json()["params"]["data"] == "first" {
            break ev;
        }
    };
    let first_id = first.id.clone().expect("an event id");
    assert_eq!(b.registry.stats().forwarded, 3);
    drop(stream);

    // Resumed through B with Last-Event-ID (once A has noticed the first stream's end): the
    // owner continues the stream after that event.
    let resumed = client_with(
        b.addr,
        Some(&id),
        &[("origin", &origin), ("last-event-id", &first_id)],
    );
    let mut res = get(&resumed).send().await.unwrap();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while res.status() == 409 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        res = get(&resumed).send().await.unwrap();
    }
    assert_eq!(res.status(), 200);
    let mut stream = Sse::new(res);
    session
        .notify(
            "notifications/message",
            Some(json!({"level": "info", "data": "second"})),
        )
        .unwrap();
    loop {
        let ev = stream.next().await.expect("an event");
        assert_ne!(ev.json()["params"]["data"], "first", "replayed");
        if ev.json()["params"]["data"] == "second" {
            break;
        }
    }
    drop(stream);
    let (method, h) = a.seen.forwarded_in().last().cloned().unwrap();
    assert_eq!(method, Method::GET);
    assert_eq!(header(&h, "last-event-id"), Some(first_id.as_str()));
    assert_eq!(header(&h, "mcp-session-id"), Some(id.as_str()));

    // DELETE through B: A closes the session and removes the record.
    let forwarded = b.registry.stats().forwarded;
    let res = via_b.delete().send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(b.registry.stats().forwarded, forwarded + 1);
    let (method, _) = a.seen.forwarded_in().last().cloned().unwrap();
    assert_eq!(method, Method::DELETE);
    a.flush().await;
    b.flush().await;
    assert_eq!(a.transport.session_count(), 0);
    assert_eq!(record(&store, &id).await, None, "the record is removed");

    // Gone on both nodes; B no longer forwards for it.
    let forwarded = b.registry.stats().forwarded;
    assert_eq!(
        reason(post(&a.client_for(&id), &ping()).await).await,
        "unknown"
    );
    assert_eq!(reason(post(&via_b, &ping()).await).await, "unknown");
    assert_eq!(
        b.registry.stats().forwarded,
        forwarded,
        "a deleted session's route was kept"
    );
    assert_eq!(b.transport.session_count(), 0);
}

/// A request that says it was forwarded already (whoever set the header) is never forwarded
/// again: the misrouted `404`.
#[tokio::test]
async fn one_hop_only() {
    let store = MemoryStore::new();
    let a = Node::start(store.clone(), "node-a").await;
    let b = Node::start(store.clone(), "node-b").await;
    let id = session_on(&a).await;
    let forged = client_with(b.addr, Some(&id), &[("mcp-forwarded-by", "node-x")]);
    assert_eq!(reason(post(&forged, &ping()).await).await, "misrouted");
    assert_eq!(b.registry.stats().forwarded, 0);
    assert!(a.seen.forwarded_in().is_empty(), "nothing reached A");

    // Without the header it is forwarded (the route is learnt)...
    success(post(&b.client_for(&id), &ping()).await).await;
    assert_eq!(b.registry.stats().forwarded, 1);
    // ... and a forged header still stops it, route or not.
    assert_eq!(reason(post(&forged, &ping()).await).await, "misrouted");
    assert_eq!(b.registry.stats().forwarded, 1);
    assert_eq!(a.seen.forwarded_in().len(), 1);
}

/// Forwarding turned off: a request for another node's session gets today's misrouted `404`.
#[tokio::test]
async fn forwarding_off_keeps_the_misrouted_404() {
    let store = MemoryStore::new();
    let a = Node::start(store.clone(), "node-a").await;
    let b = Node::start_with(
        store.clone(),
        "node-b",
        |r| r.with_forwarding(false),
        SseTransportLayer::builder(),
    )
    .await;
    let id = session_on(&a).await;
    assert_eq!(
        reason(post(&b.client_for(&id), &ping()).await).await,
        "misrouted"
    );
    let stats = b.registry.stats();
    assert_eq!((stats.forwarded, stats.misroutes, stats.adopted), (0, 1, 0));
    assert!(a.seen.forwarded_in().is_empty());
    // The session is untouched on A.
    success(post(&a.client_for(&id), &ping()).await).await;
}

/// Forwarding is no way around the owner's checks: A's `Origin` check answers a request
/// forwarded by B (403), and a session bound to a principal answers another principal's
/// request through B with the unknown-session `404`; the session survives both.
#[tokio::test]
async fn owner_checks_still_apply() {
    let store = MemoryStore::new();
    let bound = || SseTransportLayer::builder().with_principal(user);
    let a = Node::start_with(store.clone(), "node-a", |r| r, bound()).await;
    let b = Node::start_with(store.clone(), "node-b", |r| r, bound()).await;
    let mut ada = client_with(a.addr, None, &[("x-user", "ada")]);
    ada.connect(V).await;
    a.flush().await;
    let id = ada.session.clone().unwrap();
    let before = record(&store, &id).await.expect("record");

    let evil = client_with(
        b.addr,
        Some(&id),
        &[("x-user", "ada"), ("origin", "https://evil.example.com")],
    );
    let res = post(&evil, &ping()).await;
    assert_eq!(res.status(), 403);
    assert_eq!(b.registry.stats().forwarded, 1, "A answered it");
    let (_, h) = a.seen.forwarded_in().last().cloned().unwrap();
    assert_eq!(header(&h, "origin"), Some("https://evil.example.com"));

    let bob = client_with(b.addr, Some(&id), &[("x-user", "bob")]);
    assert_eq!(reason(post(&bob, &ping()).await).await, "unknown");
    assert_eq!(b.registry.stats().forwarded, 2, "A answered it");
    assert_eq!(b.transport.session_count(), 0);

    // Still ada's session, still on A, reachable through B.
    let via_b = client_with(b.addr, Some(&id), &[("x-user", "ada")]);
    assert_eq!(
        success(post(&via_b, &whoami()).await).await["node"],
        "node-a"
    );
    success(post(&ada, &ping()).await).await;
    a.flush().await;
    b.flush().await;
    assert_eq!(record(&store, &id).await, Some(before));
}

/// A liveness record whose address is junk, or outside the peer networks, is not followed:
/// no connection is made there, and the request gets the misrouted `404`.
#[tokio::test]
async fn junk_or_foreign_address_is_not_followed() {
    let store = MemoryStore::new();
    let b = Node::start_with(
        store.clone(),
        "node-b",
        |r| r.with_peer_networks(["127.0.0.1/32"]),
        SseTransportLayer::builder(),
    )
    .await;
    // A listener at the foreign address, counting connections.
    let foreign = TcpListener::bind("127.0.0.2:0")
        .await
        .expect("bind 127.0.0.2");
    let foreign_addr = foreign.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    let _listener = tokio::spawn(async move {
        loop {
            if let Ok((tcp, _)) = foreign.accept().await {
                counted.fetch_add(1, SeqCst);
                drop(tcp);
            }
        }
    });
    let ttl = Duration::from_secs(600);
    let restorable = |node: &str| {
        SessionRecord::new(node, "x1")
            .with_created_at(1_767_225_600)
            .with_restore(
                V,
                Some(json!({"name": "c", "version": "1"})),
                Some(json!({})),
                None,
            )
    };
    for (node, address) in [
        ("node-x", "not an address".to_owned()),
        ("node-y", foreign_addr.to_string()),
    ] {
        let id = format!("{node}.s1");
        store.register(&id, &restorable(node), ttl).await.unwrap();
        store
            .announce(
                node,
                &NodeRecord::new(NodeState::Serving, "x1").with_address(address),
                ttl,
            )
            .await
            .unwrap();
        assert_eq!(
            reason(post(&b.client_for(&id), &ping()).await).await,
            "misrouted",
            "{node}"
        );
        assert_eq!(record(&store, &id).await, Some(restorable(node)));
    }
    let stats = b.registry.stats();
    assert_eq!(
        (stats.forwarded, stats.forward_failures, stats.adopted),
        (0, 0, 0)
    );
    assert_eq!(connections.load(SeqCst), 0, "a connection to 127.0.0.2");
    assert_eq!(b.transport.session_count(), 0);

    // The control: a node whose peer networks include 127.0.0.2 does connect there.
    let c = Node::start_with(
        store.clone(),
        "node-c",
        |r| r.with_peer_networks(["127.0.0.0/8"]),
        SseTransportLayer::builder(),
    )
    .await;
    let _ = post(&c.client_for("node-y.s1"), &ping()).await;
    eventually("the control connected", async || {
        connections.load(SeqCst) > 0
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Adoption

/// The owner is gone: the next request, on another node, adopts the session there. The
/// handler sees a restored session (marker and hook, once), with the client's info and
/// protocol version; the response names the session; the record names the adopter; and the
/// session's next requests take the local path, with no store call.
#[tokio::test]
async fn adoption_from_a_gone_owner() {
    let store = counting_store::Counting::new(MemoryStore::new());
    let mut a = Node::start(store.clone(), "node-a").await;
    let b = Node::start(store.clone(), "node-b").await;
    let id = session_on(&a).await;
    a.gone().await;

    let res = post(&b.client_for(&id), &whoami()).await;
    assert_eq!(
        res.headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok()),
        Some(id.as_str()),
        "the answer names the session (a balancer re-pins it)"
    );
    let who = success(res).await;
    assert_eq!(who["node"], "node-b");
    assert_eq!(who["restored"], true);
    assert_eq!(who["client"]["name"], "test");
    assert_eq!(who["version"], V);
    let stats = b.registry.stats();
    assert_eq!((stats.adopted, stats.forwarded), (1, 0), "{stats:?}");
    let now = record(&store, &id).await.expect("record");
    assert!(
        now.is_owned_by("node-b", b.registry.incarnation()),
        "{now:?}"
    );
    assert!(now.is_restorable());
    assert_eq!(b.transport.session_count(), 1);
    assert_eq!(b.transport.sessions_restored(), 1);
    assert_eq!(b.seen.restore_hooks.load(SeqCst), 1);
    assert_eq!(b.seen.restored_marks.load(SeqCst), 1);

    // Held on B now: the local path, no store call, no marker.
    b.flush().await;
    let calls = store.calls();
    for _ in 0..20 {
        let who = success(post(&b.client_for(&id), &whoami()).await).await;
        assert_eq!(who["restored"], false);
        success(post(&b.client_for(&id), &ping()).await).await;
    }
    b.flush().await;
    assert_eq!(store.calls() - calls, 0, "store calls on a held session");
    assert_eq!(b.seen.restore_hooks.load(SeqCst), 1);
    assert_eq!(b.seen.restored_marks.load(SeqCst), 1);
    assert_eq!(b.registry.stats().adopted, 1);
}

/// A draining owner's sessions are adopted on their next request, at once (its liveness
/// record says `draining`; nobody waits for it to expire). The records of the sessions it
/// closes on shutdown stay for the next node, and the draining node itself never removes them.
#[tokio::test]
async fn adoption_from_a_draining_owner() {
    let store = MemoryStore::new();
    let a = Node::start(store.clone(), "node-a").await;
    let b = Node::start(store.clone(), "node-b").await;
    let first = session_on(&a).await;
    let second = session_on(&a).await;
    assert!(a.registry.drain(DEADLINE).await);

    let who = success(post(&b.client_for(&first), &whoami()).await).await;
    assert_eq!(
        (who["node"].clone(), who["restored"].clone()),
        (json!("node-b"), json!(true))
    );
    let stats = b.registry.stats();
    assert_eq!((stats.adopted, stats.forwarded), (1, 0), "{stats:?}");

    // A finishes its drain: its sessions close, their records stay for the next node.
    a.transport.drain();
    a.transport.shutdown().await;
    a.flush().await;
    let kept = record(&store, &second).await.expect("handed over");
    assert!(kept.is_owned_by("node-a", a.registry.incarnation()));
    // A request that still reaches A is told to go elsewhere, and A keeps the record.
    let res = post(&a.client_for(&second), &ping()).await;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    a.flush().await;
    assert_eq!(record(&store, &second).await, Some(kept));
    // The next node adopts it.
    let who = success(post(&b.client_for(&second), &whoami()).await).await;
    assert_eq!(who["node"], "node-b");
    assert_eq!(b.registry.stats().adopted, 2);
}

/// A node that forwards a session's requests to its owner stops once the owner drains, and
/// adopts the session (within the liveness cache, far below the liveness TTL); no request
/// fails on the way.
#[tokio::test]
async fn a_node_forwarding_to_an_owner_adopts_once_the_owner_drains() {
    let store = MemoryStore::new();
    let a = Node::start(store.clone(), "node-a").await;
    let b = Node::start(store.clone(), "node-b").await;
    let id = session_on(&a).await;
    let via_b = b.client_for(&id);
    assert_eq!(
        success(post(&via_b, &whoami()).await).await["node"],
        "node-a"
    );
    assert_eq!(b.registry.stats().forwarded, 1);
    assert!(a.registry.drain(DEADLINE).await);

    let mut requests = 0;
    eventually("B adopted the session", async || {
        requests += 1;
        success(post(&via_b, &ping()).await).await;
        b.registry.stats().adopted == 1
    })
    .await;
    let forwarded = b.registry.stats().forwarded;
    for _ in 0..5 {
        assert_eq!(
            success(post(&via_b, &whoami()).await).await["node"],
            "node-b"
        );
    }
    assert_eq!(b.registry.stats().forwarded, forwarded, "still forwarding");
    eprintln!("adopted after {requests} requests ({forwarded} forwarded)");
}

/// The owner's liveness record still says serving, but nobody listens there: the forward
/// finds no one, and the node adopts the session and serves the request (no request fails).
#[tokio::test]
async fn adoption_after_a_failed_forward() {
    let store = MemoryStore::new();
    let mut a = Node::start(store.clone(), "node-a").await;
    let b = Node::start(store.clone(), "node-b").await;
    // One session B has forwarded for (a route and a pooled connection), one it has not.
    let known = session_on(&a).await;
    let fresh = session_on(&a).await;
    success(post(&b.client_for(&known), &ping()).await).await;
    assert_eq!(b.registry.stats().forwarded, 1);
    a.stop().await;
    let live = store.node("node-a").await.unwrap().expect("liveness");
    assert_eq!(live.state, NodeState::Serving);

    for (n, id) in [&known, &fresh].into_iter().enumerate() {
        let who = success(post(&b.client_for(id), &whoami()).await).await;
        assert_eq!(
            (who["node"].clone(), who["restored"].clone()),
            (json!("node-b"), json!(true))
        );
        let stats = b.registry.stats();
        assert_eq!(stats.adopted, n as u64 + 1, "{stats:?}");
        assert!(stats.forward_failures >= 1, "{stats:?}");
        assert!(
            record(&store, id)
                .await
                .unwrap()
                .is_owned_by("node-b", b.registry.incarnation())
        );
    }
    assert_eq!(b.registry.stats().forwarded, 1);
    assert_eq!(b.transport.session_count(), 2);
}

/// Two nodes adopt one session at once, eight requests each released together: every
/// request succeeds, exactly one node adopts it, the other forwards to the winner. Over a
/// store whose calls take a few milliseconds (so the requests overlap in it, and both nodes
/// claim the record) and over a real Redis.
#[tokio::test]
async fn two_nodes_adopting_one_session_at_once() {
    for round in 0..3 {
        let store = counting_store::Counting::new(MemoryStore::new())
            .with_latency(Duration::from_millis(5));
        race_two_nodes(store, round).await;
    }
    let redis = RedisServer::start();
    for round in 3..5 {
        let store = RedisStore::connect(&redis.url()).await.unwrap();
        race_two_nodes(store, round).await;
    }
}

async fn race_two_nodes<R: RegistryStore + Clone>(store: R, round: usize) {
    const EACH: usize = 8;
    // Node names of their own per round (a Redis server is shared by rounds).
    let name = |n: &str| format!("node-{n}{round}");
    let mut a = Node::start(store.clone(), &name("a")).await;
    let slow = async |name: String| {
        Node::start_full(
            store.clone(),
            &name,
            |r| r,
            SseTransportLayer::builder(),
            RESTORE_DELAY,
        )
        .await
    };
    let b = slow(name("b")).await;
    let c = slow(name("c")).await;
    let id = session_on(&a).await;
    a.gone().await;

    let barrier = Arc::new(tokio::sync::Barrier::new(2 * EACH));
    let mut tasks = Vec::new();
    for node in [&b, &c] {
        for i in 0..EACH {
            let client = node.client_for(&id);
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let body = if i % 2 == 0 { ping() } else { whoami() };
                let res = post(&client, &body).await;
                let status = res.status();
                (status, res.text().await.unwrap())
            }));
        }
    }
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 200, "round {round}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v.get("result").is_some(), "round {round}: {v}");
    }
    let (sb, sc) = (b.registry.stats(), c.registry.stats());
    let (winner, loser, ls) = match (sb.adopted, sc.adopted) {
        (1, 0) => (&b, &c, sc),
        (0, 1) => (&c, &b, sb),
        other => panic!("round {round}: adopted {other:?}: {sb:?} {sc:?}"),
    };
    assert_eq!(
        ls.forwarded, EACH as u64,
        "round {round}: the loser forwards all its requests: {ls:?}"
    );
    assert_eq!(winner.registry.stats().forwarded, 0);
    let now = record(&store, &id).await.unwrap();
    assert!(
        now.is_owned_by(&winner.name, winner.registry.incarnation()),
        "round {round}: {now:?}"
    );
    assert_eq!(winner.transport.session_count(), 1);
    assert_eq!(loser.transport.session_count(), 0);
    assert_eq!(winner.transport.sessions_restored(), 1);
    assert_eq!(winner.seen.restore_hooks.load(SeqCst), 1);
    assert_eq!(loser.seen.restore_hooks.load(SeqCst), 0);
    eprintln!(
        "round {round}: the winner lost {} claims (to its own requests), the loser {} and forwarded {}",
        winner.registry.stats().adoptions_lost,
        ls.adoptions_lost,
        ls.forwarded
    );
}

/// Many requests at once on one node for a gone owner's session (a GET stream among POSTs):
/// one restore, and every request is served by the complete session. Over a store whose
/// calls take a few milliseconds, and over a real Redis.
#[tokio::test]
async fn a_request_during_adoption_never_meets_a_half_initialized_session() {
    for round in 0..3 {
        let store = counting_store::Counting::new(MemoryStore::new())
            .with_latency(Duration::from_millis(5));
        race_one_node(store, round).await;
    }
    let redis = RedisServer::start();
    for round in 3..5 {
        let store = RedisStore::connect(&redis.url()).await.unwrap();
        race_one_node(store, round).await;
    }
}

async fn race_one_node<R: RegistryStore + Clone>(store: R, round: usize) {
    const POSTS: usize = 11;
    let mut a = Node::start(store.clone(), &format!("node-a{round}")).await;
    let b = Node::start_full(
        store.clone(),
        &format!("node-b{round}"),
        |r| r,
        SseTransportLayer::builder(),
        RESTORE_DELAY,
    )
    .await;
    let id = session_on(&a).await;
    a.gone().await;

    let barrier = Arc::new(tokio::sync::Barrier::new(POSTS + 1));
    let stream = tokio::spawn({
        let (client, barrier) = (b.client_for(&id), barrier.clone());
        async move {
            barrier.wait().await;
            get(&client).send().await.unwrap()
        }
    });
    let mut posts = Vec::new();
    for i in 0..POSTS {
        let (client, barrier) = (b.client_for(&id), barrier.clone());
        posts.push(tokio::spawn(async move {
            barrier.wait().await;
            let body = match i % 3 {
                0 => ping(),
                1 => whoami(),
                _ => json!({"jsonrpc": "2.0", "id": 9, "method": "tools/call",
                            "params": {"name": "echo", "arguments": {"text": "x"}}}),
            };
            let res = post(&client, &body).await;
            let status = res.status();
            (status, res.text().await.unwrap())
        }));
    }
    for p in posts {
        let (status, body) = p.await.unwrap();
        assert_eq!(status, 200, "round {round}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        assert!(v.get("result").is_some(), "round {round}: {v}");
        if let Some(version) = v["result"].get("version") {
            assert_eq!(version, V, "round {round}: a complete session");
            assert_eq!(v["result"]["client"]["name"], "test");
        }
    }
    let res = stream.await.unwrap();
    assert_eq!(res.status(), 200, "round {round}: the GET stream");
    drop(res);
    let stats = b.registry.stats();
    assert_eq!(
        (stats.adopted, stats.forwarded),
        (1, 0),
        "round {round}: {stats:?}"
    );
    assert_eq!(b.transport.sessions_restored(), 1, "round {round}");
    assert_eq!(b.seen.restore_hooks.load(SeqCst), 1, "round {round}");
    assert!(b.seen.restored_marks.load(SeqCst) <= 1, "round {round}");
    assert_eq!(b.transport.session_count(), 1);
    b.flush().await;
    let now = record(&store, &id).await.expect("the record stays");
    assert!(now.is_owned_by(&b.name, b.registry.incarnation()));
    // Held: the next request takes the local path.
    assert_eq!(
        success(post(&b.client_for(&id), &whoami()).await).await["restored"],
        false
    );
    eprintln!(
        "round {round}: {} claims lost to the node's own requests",
        stats.adoptions_lost
    );
}

/// A client that hangs up while its request adopts the session (claimed, not yet restored):
/// the claim is given back, so the session stays adoptable, and its next request adopts it.
#[tokio::test]
async fn a_client_hanging_up_mid_adoption_leaves_the_session_adoptable() {
    let store = MemoryStore::new();
    let mut a = Node::start(store.clone(), "node-a").await;
    let b = Node::start_full(
        store.clone(),
        "node-b",
        |r| r,
        SseTransportLayer::builder(),
        Some(Duration::from_secs(3)),
    )
    .await;
    let id = session_on(&a).await;
    a.gone().await;
    let before = record(&store, &id).await.expect("record");

    let pending = tokio::spawn({
        let client = b.client_for(&id);
        async move { post(&client, &ping()).await }
    });
    eventually("B claimed the record", async || {
        record(&store, &id)
            .await
            .is_some_and(|r| r.node == "node-b")
    })
    .await;
    pending.abort();
    let _ = pending.await;
    eventually("the claim was given back", async || {
        record(&store, &id).await.as_ref() == Some(&before)
    })
    .await;
    assert_eq!(b.transport.session_count(), 0);
    assert_eq!(b.registry.stats().adopted, 0);

    let who = success(post(&b.client_for(&id), &whoami()).await).await;
    assert_eq!(who["restored"], true);
    assert_eq!(b.registry.stats().adopted, 1);
    assert!(
        record(&store, &id)
            .await
            .unwrap()
            .is_owned_by("node-b", b.registry.incarnation())
    );
}

/// Redis paused (SIGSTOP): a request for a gone owner's session gets today's `404`, quickly
/// and without a `5xx`; once Redis goes on, the next request adopts the session, whose record
/// was never lost.
#[tokio::test]
async fn adoption_while_redis_is_paused() {
    let redis = RedisServer::start();
    let connect = || {
        RedisStore::builder(&redis.url())
            .with_command_timeout(Duration::from_millis(200))
            .build_lazy()
            .unwrap()
    };
    let mut a = Node::start(connect(), "node-a").await;
    let b = Node::start_with(
        connect(),
        "node-b",
        |r| r.with_lookup_timeout(Duration::from_millis(300)),
        SseTransportLayer::builder(),
    )
    .await;
    let id = session_on(&a).await;
    a.gone().await;
    let before = redis.get(&format!("mcp:session:{{{id}}}")).expect("record");

    redis.pause();
    let started = std::time::Instant::now();
    let res = post(&b.client_for(&id), &ping()).await;
    let elapsed = started.elapsed();
    assert_eq!(reason(res).await, "unknown");
    assert!(
        elapsed < Duration::from_secs(5),
        "answered after {elapsed:?}"
    );
    assert_eq!(b.registry.stats().adopted, 0);
    assert_eq!(b.transport.session_count(), 0);
    redis.resume();

    assert_eq!(
        redis.get(&format!("mcp:session:{{{id}}}")),
        Some(before),
        "the record is intact"
    );
    let who = success(post(&b.client_for(&id), &whoami()).await).await;
    assert_eq!(
        (who["node"].clone(), who["restored"].clone()),
        (json!("node-b"), json!(true))
    );
    assert_eq!(b.registry.stats().adopted, 1);
    let now: Value =
        serde_json::from_str(&redis.get(&format!("mcp:session:{{{id}}}")).unwrap()).unwrap();
    assert_eq!(now["n"], "node-b");
    eprintln!("paused Redis: 404 after {elapsed:?}");
}

/// A session bound to a principal, its owner gone: another principal's request adopts
/// nothing (the unknown-session `404`, the record as it was); the right principal's adopts it.
#[tokio::test]
async fn principal_mismatch_adopts_nothing() {
    let store = MemoryStore::new();
    let bound = || SseTransportLayer::builder().with_principal(user);
    let mut a = Node::start_with(store.clone(), "node-a", |r| r, bound()).await;
    let b = Node::start_with(store.clone(), "node-b", |r| r, bound()).await;
    let mut ada = client_with(a.addr, None, &[("x-user", "ada")]);
    ada.connect(V).await;
    a.flush().await;
    let id = ada.session.clone().unwrap();
    a.gone().await;
    let before = record(&store, &id).await.expect("record");
    assert!(before.principal.is_some(), "the record carries the binding");

    for who in [Some("bob"), None] {
        let headers: Vec<(&str, &str)> = who.map(|w| ("x-user", w)).into_iter().collect();
        let other = client_with(b.addr, Some(&id), &headers);
        assert_eq!(
            reason(post(&other, &ping()).await).await,
            "unknown",
            "{who:?}"
        );
        b.flush().await;
        assert_eq!(record(&store, &id).await, Some(before.clone()), "{who:?}");
    }
    let stats = b.registry.stats();
    assert_eq!(stats.adopted, 0, "{stats:?}");
    assert_eq!(b.transport.session_count(), 0);
    assert_eq!(b.seen.restore_hooks.load(SeqCst), 0);

    let ada_via_b = client_with(b.addr, Some(&id), &[("x-user", "ada")]);
    let who = success(post(&ada_via_b, &whoami()).await).await;
    assert_eq!(
        (who["node"].clone(), who["restored"].clone()),
        (json!("node-b"), json!(true))
    );
    assert_eq!(b.registry.stats().adopted, 1);
    assert!(
        record(&store, &id)
            .await
            .unwrap()
            .is_owned_by("node-b", b.registry.incarnation())
    );
    // Still bound on B.
    let bob = client_with(b.addr, Some(&id), &[("x-user", "bob")]);
    assert_eq!(reason(post(&bob, &ping()).await).await, "unknown");
}

/// Another principal's request claims a gone owner's session first, and the right principal's
/// request arrives while it does: the transport refuses the first (the unknown-session `404`),
/// restores the session for the second, and the record stays with the node that holds the
/// session now (the refused claimant does not give it back under the other's feet).
#[tokio::test]
async fn a_refused_claimant_leaves_the_adoption_to_the_right_principal() {
    let store = MemoryStore::new();
    let bound = || SseTransportLayer::builder().with_principal(user);
    let mut a = Node::start_with(store.clone(), "node-a", |r| r, bound()).await;
    let b = Node::start_full(
        store.clone(),
        "node-b",
        |r| r,
        bound(),
        Some(Duration::from_millis(300)),
    )
    .await;
    let mut ada = client_with(a.addr, None, &[("x-user", "ada")]);
    ada.connect(V).await;
    a.flush().await;
    let id = ada.session.clone().unwrap();
    a.gone().await;

    let bob = tokio::spawn({
        let client = client_with(b.addr, Some(&id), &[("x-user", "bob")]);
        async move { post(&client, &ping()).await }
    });
    eventually("B claimed the record", async || {
        record(&store, &id)
            .await
            .is_some_and(|r| r.node == "node-b")
    })
    .await;
    let ada_via_b = client_with(b.addr, Some(&id), &[("x-user", "ada")]);
    let who = success(post(&ada_via_b, &whoami()).await).await;
    assert_eq!(who["node"], "node-b");
    assert_eq!(reason(bob.await.unwrap()).await, "unknown");
    b.flush().await;
    assert_eq!(b.transport.session_count(), 1);
    assert_eq!(b.registry.stats().adopted, 1);
    // Settled: nothing is given back afterwards either.
    let now = record(&store, &id).await.unwrap();
    assert!(
        now.is_owned_by("node-b", b.registry.incarnation()),
        "{now:?}"
    );
    success(post(&ada_via_b, &ping()).await).await;
    assert!(
        record(&store, &id)
            .await
            .unwrap()
            .is_owned_by("node-b", b.registry.incarnation())
    );
}

/// The Redis commands of a first forward, a second forward and an adoption, from
/// `INFO commandstats` (which also counts the commands a script runs).
///
/// Measured (redis-server 7.0, a single server), and why:
/// - the first request of a session on a node that does not hold it, its owner alive:
///   `GET` of the session's record and `GET` of the owner's liveness record; nothing else
///   (the owner serves the forwarded request on its local path). 2 commands, 2 round trips.
/// - the session's next request there: none. The route is remembered and the owner's
///   liveness is cached (for a second: the two requests here are milliseconds apart).
/// - an adoption from a gone owner: the same two `GET`s (the liveness record is not there),
///   then three `EVALSHA` sent together: the claim's two, and the read of the session's
///   shared event log. The first lists the session in the adopter's node index (`TIME`,
///   `ZADD`, `ZREMRANGEBYSCORE`, `TTL` inside the script; `EXPIRE` too when the index's TTL
///   is shorter than the record's, which it is not here), the second is the
///   compare-and-set on the record (`GET`, `SET` inside), the third looks the session's
///   top up in its bucket's hash (one `HGET`: it logged nothing, so no slot is read). 5 commands sent, 3 round trips, 12 counted; nothing afterwards (the adopter
///   holds the session, no write is queued). The very first claim a server sees also loads
///   its scripts (`NOSCRIPT`, `SCRIPT LOAD`, one `EVALSHA` more): a warm-up adoption does
///   that before the counts.
#[tokio::test]
async fn redis_commands_per_adoption_and_per_forward() {
    let redis = RedisServer::start();
    let connect = || async { RedisStore::connect(&redis.url()).await.unwrap() };
    let a = Node::start(connect().await, "node-a").await;
    let b = Node::start(connect().await, "node-b").await;
    let mut c = Node::start(connect().await, "node-c").await;
    let mut d = Node::start(connect().await, "node-d").await;
    let forwarded = session_on(&a).await;
    let adopted = session_on(&c).await;
    let warm_up = session_on(&d).await;
    c.gone().await;
    d.gone().await;
    // A first adoption loads the claim's scripts into the server (`EVALSHA`, `NOSCRIPT`,
    // `SCRIPT LOAD`, `EVALSHA`): once per server, not per adoption.
    success(post(&b.client_for(&warm_up), &ping()).await).await;
    assert_eq!(b.registry.stats().adopted, 1);
    b.flush().await;

    let mut figures = Vec::new();
    let mut phase = async |name: &str, body: Value, id: &str| {
        redis.reset_stats();
        let res = post(&b.client_for(id), &body).await;
        success(res).await;
        b.flush().await;
        let counts = command_counts(&redis);
        eprintln!("{name}: {counts:?}");
        figures.push((name.to_owned(), counts));
    };
    phase("first forward", whoami(), &forwarded).await;
    phase("second forward", ping(), &forwarded).await;
    phase("adoption", whoami(), &adopted).await;
    let figures: BTreeMap<String, BTreeMap<String, u64>> = figures.into_iter().collect();

    let counts = |pairs: &[(&str, u64)]| -> BTreeMap<String, u64> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    };
    assert_eq!(figures["first forward"], counts(&[("get", 2)]));
    assert_eq!(figures["second forward"], counts(&[]));
    assert_eq!(
        figures["adoption"],
        counts(&[
            ("get", 3),
            ("evalsha", 3),
            ("time", 1),
            ("zadd", 1),
            ("zremrangebyscore", 1),
            ("ttl", 1),
            ("set", 1),
            ("hget", 1),
        ])
    );
    assert_eq!(b.registry.stats().forwarded, 2);
    assert_eq!(b.registry.stats().adopted, 2);
}

/// The commands the server ran since the last `CONFIG RESETSTAT` (without the test's own
/// `INFO` and `CONFIG`), by name.
fn command_counts(redis: &RedisServer) -> BTreeMap<String, u64> {
    let info: String = redis.cmd(&["INFO", "commandstats"]);
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            (name != "info" && !name.starts_with("config")).then(|| (name.to_owned(), calls))
        })
        .collect()
}

/// A DELETE for a gone owner's session removes its record at once, on whichever node it
/// lands; a DELETE refused there (a bad `Origin`) removes nothing.
#[tokio::test]
async fn delete_on_a_dead_owner_removes_the_record_at_once() {
    let store = MemoryStore::new();
    let mut a = Node::start(store.clone(), "node-a").await;
    let b = Node::start(store.clone(), "node-b").await;
    let id = session_on(&a).await;
    a.gone().await;
    let before = record(&store, &id).await.expect("record");

    let evil = client_with(b.addr, Some(&id), &[("origin", "https://evil.example.com")]);
    assert_eq!(evil.delete().send().await.unwrap().status(), 403);
    b.flush().await;
    assert_eq!(
        record(&store, &id).await,
        Some(before),
        "a refused DELETE removed it"
    );
    assert_eq!(b.transport.session_count(), 0);

    let res = b.client_for(&id).delete().send().await.unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    b.flush().await;
    assert_eq!(record(&store, &id).await, None, "the record is removed");
    assert_eq!(b.transport.session_count(), 0);
    assert_eq!(
        reason(post(&b.client_for(&id), &ping()).await).await,
        "unknown"
    );
}

/// A node that restarted (same name, new incarnation) adopts its previous process's session
/// on the session's next request.
#[tokio::test]
async fn a_restarted_node_adopts_its_previous_incarnations_session() {
    let store = MemoryStore::new();
    let first = Node::start(store.clone(), "node-a").await;
    let id = session_on(&first).await;
    let old = first.registry.incarnation().to_owned();
    // A crash: nothing is closed, the liveness record stays until the new process replaces it.
    drop(first);
    let second = Node::start(store.clone(), "node-a").await;
    assert_ne!(second.registry.incarnation(), old);
    assert_eq!(record(&store, &id).await.unwrap().incarnation, old);

    let res = post(&second.client_for(&id), &whoami()).await;
    assert_eq!(
        res.headers()
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok()),
        Some(id.as_str())
    );
    let who = success(res).await;
    assert_eq!(who["restored"], true);
    assert_eq!(who["client"]["name"], "test");
    let stats = second.registry.stats();
    assert_eq!((stats.adopted, stats.node_restarted), (1, 0), "{stats:?}");
    let now = record(&store, &id).await.unwrap();
    assert!(
        now.is_owned_by("node-a", second.registry.incarnation()),
        "{now:?}"
    );
    assert_eq!(second.seen.restore_hooks.load(SeqCst), 1);
    assert_eq!(
        success(post(&second.client_for(&id), &whoami()).await).await["restored"],
        false
    );
}
