//! The SessionRegistryLayer over real TCP, against real `redis-server` processes started here.

#[path = "support/counting_store.rs"]
mod counting_store;
#[path = "../../tests/support/redis.rs"]
mod redis_support;
#[path = "support/mcp.rs"]
mod support;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use mcp_affinity::{
    SseTransportLayer,
    handler::handler_fn,
    registry::{
        MemoryStore, RedisStore, RegistryHandle, RegistryStore, SessionRecord, SessionRegistryLayer,
    },
    transport::TransportHandle,
};
use redis_support::RedisServer;
use serde_json::{Value, json};
use support::{Client, Probe};

const DAY: i64 = 24 * 3600;

fn key(id: &str) -> String {
    format!("mcp:session:{{{id}}}")
}

/// Serves any tower service over TCP on a free port.
async fn serve<S, B>(svc: S) -> (SocketAddr, tokio::task::JoinHandle<()>)
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
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
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
    (addr, task)
}

/// One MCP node: registry → transport → the test handler.
struct Node<R: RegistryStore> {
    addr: SocketAddr,
    registry: RegistryHandle<R>,
    transport: TransportHandle,
    task: tokio::task::JoinHandle<()>,
}

impl<R: RegistryStore> Drop for Node<R> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<R: RegistryStore + Clone> Node<R> {
    async fn start(store: R, name: &str) -> Self {
        Self::start_with(
            SessionRegistryLayer::new(store, name).unwrap(),
            SseTransportLayer::new(),
        )
        .await
    }

    async fn start_with(registry: SessionRegistryLayer<R>, transport: SseTransportLayer) -> Self {
        let (probe, _) = Probe::new();
        let svc = tower::ServiceBuilder::new()
            .layer(registry.clone())
            .layer(transport.clone())
            .service(handler_fn(move |req, cx| {
                support::handle_request(probe.clone(), req, cx)
            }));
        let (addr, task) = serve(svc).await;
        Self {
            addr,
            registry: registry.handle(),
            transport: transport.handle(),
            task,
        }
    }

    fn client(&self) -> Client {
        Client {
            http: support::http_client(),
            url: format!("http://{}/mcp", self.addr),
            session: None,
        }
    }

    async fn flush(&self) {
        assert!(
            self.registry.flush(Duration::from_secs(20)).await,
            "registry writes did not land"
        );
    }
}

fn ping() -> Value {
    json!({"jsonrpc":"2.0","id":1,"method":"ping"})
}

/// Asserts a success: `200` and a JSON-RPC body with a `result` and no `error` (an error
/// such as `-32603` also arrives with `200`); returns the result.
async fn success(res: reqwest::Response) -> Value {
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.expect("JSON-RPC body");
    assert!(v.get("error").is_none(), "an error, not a result: {v}");
    v.get("result").cloned().expect("a result")
}

/// Every Redis command the server ran since the last `CONFIG RESETSTAT`, from
/// `INFO commandstats`, except the test's own `INFO` and `CONFIG`.
fn redis_calls(redis: &RedisServer) -> u64 {
    let info: String = redis.cmd(&["INFO", "commandstats"]);
    info.lines()
        .filter(|l| {
            l.starts_with("cmdstat_")
                && !l.starts_with("cmdstat_info:")
                && !l.starts_with("cmdstat_config")
        })
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

async fn reason(res: reqwest::Response) -> String {
    assert_eq!(res.status(), 404);
    let v: Value = res.json().await.expect("JSON-RPC body");
    assert_eq!(v["error"]["code"], -32001);
    v["error"]["data"]["reason"]
        .as_str()
        .expect("reason")
        .to_owned()
}

/// The session records and node indexes (not the nodes' liveness keys and node set).
fn session_keys(redis: &RedisServer) -> Vec<String> {
    redis
        .keys("mcp:session:*")
        .into_iter()
        .filter(|k| !k.starts_with("mcp:session:live:") && k != "mcp:session:nodes")
        .collect()
}

/// With continuity, a node that shuts down leaves its sessions' records for the node their
/// next request reaches (it adopts them), and says it left.
#[tokio::test]
async fn shutdown_leaves_records_for_adoption() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    let node = Node::start(store, "node-a").await;
    let mut c = node.client();
    c.connect("2025-11-25").await;
    node.flush().await;
    let id = c.session.clone().unwrap();
    eventually("the liveness record was written", || {
        redis.get("mcp:session:live:{node-a}").is_some()
    })
    .await;
    assert!(node.registry.drain(Duration::from_secs(1)).await);
    let live: Value =
        serde_json::from_str(&redis.get("mcp:session:live:{node-a}").unwrap()).unwrap();
    assert_eq!(live["s"], "draining");
    assert_eq!(node.transport.shutdown().await, 1);
    node.flush().await;
    let record: Value = serde_json::from_str(&redis.get(&key(&id)).expect("record kept")).unwrap();
    assert_eq!(record["n"], "node-a");
    assert_eq!(record["v"], "2025-11-25", "restorable");
    assert!(node.registry.leave(Duration::from_secs(1)).await);
    assert_eq!(redis.get("mcp:session:live:{node-a}"), None);
}

/// Polls a condition with a deadline (the state under test changes in the background).
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what}: never happened");
}

#[tokio::test]
async fn initialize_writes_the_record_with_key_value_and_ttl() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).await.expect("redis");
    let node = Node::start(store, "node-a").await;
    let mut c = node.client();
    c.connect("2025-11-25").await;
    node.flush().await;
    let id = c.session.clone().unwrap();
    let value: Value = serde_json::from_str(&redis.get(&key(&id)).expect("record")).unwrap();
    assert_eq!(value["n"], "node-a");
    assert_eq!(value["i"], node.registry.incarnation());
    assert!(value["c"].as_u64().unwrap() > 1_700_000_000);
    let ttl = redis.ttl(&key(&id));
    assert!((30 * DAY - 60..=30 * DAY).contains(&ttl), "ttl {ttl}");
    assert_eq!(node.registry.stats().registered, 1);
    // Modern requests never register anything.
    assert_eq!(redis.keys("mcp:session:{*").len(), 1);
}

#[tokio::test]
async fn happy_path_makes_no_redis_call() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).await.expect("redis");
    // Everything on: liveness, forwarding, adoption. The liveness record is written at start
    // and then every hour, so no background write lands among the requests counted.
    let registry = SessionRegistryLayer::builder(store, "node-a")
        .with_internal_address("127.0.0.1:9".parse().unwrap())
        .with_forwarding(true)
        .with_adoption(true)
        .with_liveness(Duration::from_secs(7200), Duration::from_secs(3600))
        .build()
        .unwrap();
    let node = Node::start_with(registry, SseTransportLayer::new()).await;
    let mut c = node.client();
    c.connect("2025-11-25").await;
    node.flush().await;
    eventually("the liveness record was written", || {
        redis.command_count("sadd") > 0
    })
    .await;
    redis.reset_stats();
    let before = redis_calls(&redis);
    for i in 0..100 {
        success(c.call_tool(i, "echo", json!({"text": "x"})).await).await;
        success(c.post(&ping()).send().await.unwrap()).await;
    }
    // Counted once every write the requests could have queued has landed: a write queued per
    // request (off the request path, batched) is a Redis call too.
    node.flush().await;
    assert_eq!(
        redis_calls(&redis) - before,
        0,
        "200 requests on a live session made Redis calls"
    );
}

/// Modern (2026-07-28) requests are stateless: no session, so the registry writes nothing and
/// looks nothing up, whatever the request.
#[tokio::test]
async fn modern_traffic_registers_nothing() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).await.expect("redis");
    // The liveness record is written at start, then not again within the test.
    let registry = SessionRegistryLayer::builder(store, "node-a")
        .with_liveness(Duration::from_secs(7200), Duration::from_secs(3600))
        .build()
        .unwrap();
    let node = Node::start_with(registry, SseTransportLayer::new()).await;
    let http = support::http_client();
    let url = format!("http://{}/mcp", node.addr);
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {}
    });
    eventually("the liveness record was written", || {
        redis.command_count("sadd") > 0
    })
    .await;
    redis.reset_stats();
    let before = redis_calls(&redis);
    for i in 0..20 {
        let call = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {
            "name": "echo", "arguments": {"text": "m"}, "_meta": meta}});
        let res = http
            .post(&url)
            .header("accept", support::ACCEPT_BOTH)
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "echo")
            .body(call.to_string())
            .send()
            .await
            .unwrap();
        assert!(res.headers().get("mcp-session-id").is_none());
        assert_eq!(success(res).await["content"][0]["text"], "m");
    }
    // A modern notification too.
    let note = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                      "params": {"_meta": meta}});
    let res = http
        .post(&url)
        .header("accept", support::ACCEPT_BOTH)
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "notifications/progress")
        .body(note.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    node.flush().await;
    assert_eq!(node.transport.session_count(), 0);
    assert_eq!(node.registry.stats().registered, 0);
    assert_eq!(
        redis_calls(&redis) - before,
        0,
        "modern requests made Redis calls: {}",
        redis.cmd::<String>(&["INFO", "commandstats"])
    );
    assert!(
        session_keys(&redis).is_empty(),
        "keys: {:?}",
        redis.keys("*")
    );
}

#[tokio::test]
async fn misroute_between_two_nodes_and_delete_on_the_wrong_node() {
    let redis = RedisServer::start();
    let a = Node::start(RedisStore::connect(&redis.url()).await.unwrap(), "node-a").await;
    let b = Node::start(RedisStore::connect(&redis.url()).await.unwrap(), "node-b").await;
    let mut on_a = a.client();
    on_a.connect("2025-11-25").await;
    a.flush().await;
    let id = on_a.session.clone().unwrap();

    let mut misrouted = b.client();
    misrouted.session = Some(id.clone());
    let res = misrouted.post(&ping()).send().await.unwrap();
    let body = res.text().await.unwrap();
    assert!(
        !body.contains("node-a"),
        "the body never names the owner: {body}"
    );
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["data"]["reason"], "misrouted");
    assert_eq!(b.registry.stats().misroutes, 1);

    let mut unknown = b.client();
    unknown.session = Some("never-existed".into());
    assert_eq!(
        reason(unknown.post(&ping()).send().await.unwrap()).await,
        "unknown"
    );
    assert_eq!(b.registry.stats().unknown, 1);

    // DELETE on the wrong node: 404 locally, but the record goes (ADR-0066).
    assert_eq!(misrouted.delete().send().await.unwrap().status(), 404);
    b.flush().await;
    assert_eq!(redis.get(&key(&id)), None);
    // The session itself still lives on node A (its own close will find no record).
    success(on_a.post(&ping()).send().await.unwrap()).await;
}

#[tokio::test]
async fn every_close_path_removes_the_record() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    // As ADR-0066 has it: with continuity, a shutdown hands its sessions over instead (see
    // `shutdown_leaves_records_for_adoption`).
    let node = Node::start_with(
        SessionRegistryLayer::builder(store, "node-a")
            .with_continuity(false)
            .build()
            .unwrap(),
        SseTransportLayer::builder()
            .with_idle_timeout(Duration::from_millis(300))
            .build()
            .unwrap(),
    )
    .await;
    // Idle expiry.
    let mut idle = node.client();
    idle.connect("2025-11-25").await;
    node.flush().await;
    let idle_id = idle.session.clone().unwrap();
    assert!(redis.get(&key(&idle_id)).is_some());
    eventually("idle session record removed", || {
        redis.get(&key(&idle_id)).is_none()
    })
    .await;
    assert_eq!(idle.post(&ping()).send().await.unwrap().status(), 404);

    // DELETE.
    let mut deleted = node.client();
    deleted.connect("2025-11-25").await;
    node.flush().await;
    assert_eq!(deleted.delete().send().await.unwrap().status(), 200);
    node.flush().await;
    assert_eq!(redis.get(&key(deleted.session.as_deref().unwrap())), None);

    // Graceful shutdown.
    let mut live = node.client();
    live.connect("2025-11-25").await;
    node.flush().await;
    node.transport.shutdown().await;
    node.flush().await;
    assert!(
        redis.keys("mcp:session:{*").is_empty(),
        "no record outlives its session"
    );
}

/// A DELETE whose client hangs up before the answer still removes the record.
#[tokio::test]
async fn client_hanging_up_during_delete_still_removes_the_record() {
    let redis = RedisServer::start();
    let registry =
        SessionRegistryLayer::new(RedisStore::connect(&redis.url()).await.unwrap(), "node-a")
            .unwrap();
    let handle = registry.handle();
    let gate = Arc::new(tokio::sync::Notify::new());
    let (probe, _) = Probe::new();
    let g = gate.clone();
    let arrived = Arc::new(AtomicUsize::new(0));
    let a = arrived.clone();
    // Between the registry and the transport: DELETE waits until released.
    let svc = tower::ServiceBuilder::new()
        .layer(registry)
        .layer_fn(move |inner| Gate {
            inner,
            gate: g.clone(),
            arrived: a.clone(),
        })
        .layer(SseTransportLayer::new())
        .service(handler_fn(move |req, cx| {
            support::handle_request(probe.clone(), req, cx)
        }));
    let (addr, _task) = serve(svc.clone()).await;
    let mut c = client_with(addr, &[]);
    c.connect("2025-11-25").await;
    assert!(handle.flush(Duration::from_secs(10)).await);
    let id = c.session.clone().unwrap();
    let pending = tokio::spawn({
        let c = c.clone();
        async move { c.delete().send().await }
    });
    eventually("DELETE reached the gate", || {
        arrived.load(Ordering::SeqCst) > 0
    })
    .await;
    pending.abort();
    let _ = pending.await;
    // The server finishes the request the client gave up on: the record goes.
    gate.notify_waiters();
    assert!(handle.flush(Duration::from_secs(10)).await);
    eventually("record removed", || redis.get(&key(&id)).is_none()).await;

    // A server that drops the request's future before the inner service answered (what a
    // hang-up does on servers that cancel): the record goes too.
    let mut c = client_with(addr, &[]);
    c.connect("2025-11-25").await;
    assert!(handle.flush(Duration::from_secs(10)).await);
    let id = c.session.clone().unwrap();
    let req = http::Request::delete("/mcp")
        .header("host", "localhost")
        .header("mcp-session-id", &id)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let mut svc = svc;
    tower::ServiceExt::<http::Request<http_body_util::Full<bytes::Bytes>>>::ready(&mut svc)
        .await
        .unwrap();
    let fut = tower::Service::call(&mut svc, req);
    let mut fut = Box::pin(fut);
    let polled = std::future::Future::poll(
        fut.as_mut(),
        &mut std::task::Context::from_waker(std::task::Waker::noop()),
    );
    assert!(polled.is_pending(), "the DELETE waits at the gate");
    drop(fut);
    assert!(handle.flush(Duration::from_secs(10)).await);
    assert_eq!(redis.get(&key(&id)), None);
}

#[derive(Clone)]
struct Gate<S> {
    inner: S,
    gate: Arc<tokio::sync::Notify>,
    /// DELETE requests that reached the gate.
    arrived: Arc<AtomicUsize>,
}

impl<S, B> tower::Service<http::Request<B>> for Gate<S>
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
        let gate = self.gate.clone();
        if req.method() == http::Method::DELETE {
            self.arrived.fetch_add(1, Ordering::SeqCst);
        }
        Box::pin(async move {
            if req.method() == http::Method::DELETE {
                gate.notified().await;
            }
            inner.call(req).await
        })
    }
}

#[tokio::test]
async fn redis_outage_is_invisible_to_clients_and_cleanup_lands_after_it() {
    let mut redis = RedisServer::start();
    let store = RedisStore::builder(&redis.url())
        .with_command_timeout(Duration::from_millis(100))
        .build_lazy()
        .unwrap();
    // The ADR's cleanup on every close path (with continuity, a shutdown hands its
    // sessions over and keeps their records).
    let registry = SessionRegistryLayer::builder(store, "node-a")
        .with_continuity(false)
        .build()
        .unwrap();
    let node = Node::start_with(registry, SseTransportLayer::new()).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = node.client();
        c.connect("2025-11-25").await;
        clients.push(c);
    }
    node.flush().await;
    assert_eq!(redis.keys("mcp:session:{*").len(), 5);

    redis.kill();
    // Existing sessions: zero errors (no JSON-RPC error either: it would arrive with 200).
    for c in &clients {
        assert_eq!(
            success(c.post(&ping()).send().await.unwrap()).await,
            json!({})
        );
        let echo = success(c.call_tool(2, "echo", json!({"text": "x"})).await).await;
        assert_eq!(echo["content"][0]["text"], "x");
    }
    // New sessions are still served (fail-open).
    let mut during = node.client();
    during.connect("2025-11-25").await;
    clients.push(during);
    // An unknown session degrades to "unknown", never a 500.
    let mut stranger = node.client();
    stranger.session = Some("stranger".into());
    assert_eq!(
        reason(stranger.post(&ping()).send().await.unwrap()).await,
        "unknown"
    );
    // Close every session while Redis is down.
    for c in &clients[..3] {
        assert_eq!(c.delete().send().await.unwrap().status(), 200);
    }
    node.transport.shutdown().await;
    assert!(node.registry.stats().cleanup_pending > 0);

    redis.restart();
    node.flush().await;
    assert!(
        redis.keys("mcp:session:{*").is_empty(),
        "orphans: {:?}",
        redis.keys("*")
    );
    let stats = node.registry.stats();
    assert!(stats.retries > 0 && stats.store_errors > 0, "{stats:?}");
}

/// A DELETE's removal sent to a paused Redis times out and is retried; the removal ran once
/// Redis went on, but its answer was lost, so the retry finds no record, which alone names the
/// node index to leave. The id must leave this node's index all the same: nothing of the
/// session stays in Redis (`scripts/chaos.sh` found such index keys left behind).
#[tokio::test]
async fn a_removal_whose_answer_was_lost_still_unlists_the_session() {
    let redis = RedisServer::start();
    let store = RedisStore::builder(&redis.url())
        .with_command_timeout(Duration::from_millis(100))
        .build_lazy()
        .unwrap();
    let node = Node::start(store, "node-a").await;
    let mut c = node.client();
    c.connect("2025-11-25").await;
    node.flush().await;
    assert_eq!(
        session_keys(&redis),
        [
            "mcp:session:node:{node-a}".to_owned(),
            key(c.session.as_deref().expect("session id"))
        ],
        "the record and the node's index"
    );

    redis.pause();
    assert_eq!(c.delete().send().await.unwrap().status(), 200);
    // The removal reached Redis and timed out, and so did its first retry.
    eventually("a retried removal", || node.registry.stats().retries > 0).await;
    redis.resume();
    node.flush().await;
    assert!(
        session_keys(&redis).is_empty(),
        "left behind: {:?}",
        redis.keys("*")
    );
}

#[tokio::test]
async fn fail_closed_refuses_initialize_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let store = RedisStore::builder(&redis.url())
        .with_command_timeout(Duration::from_millis(100))
        .build_lazy()
        .unwrap();
    let node = Node::start_with(
        SessionRegistryLayer::builder(store, "node-a")
            .with_fail_closed(true)
            .with_lookup_timeout(Duration::from_millis(200))
            .build()
            .unwrap(),
        SseTransportLayer::new(),
    )
    .await;
    let mut ok = node.client();
    ok.connect("2025-11-25").await;
    redis.kill();
    let res = node
        .client()
        .post(&support::initialize_body("2025-11-25"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    assert!(res.headers().get("mcp-session-id").is_none());
    let v: Value = res.json().await.unwrap();
    assert!(v.get("error").is_some());
    assert_eq!(
        node.transport.session_count(),
        1,
        "the refused session was discarded"
    );
    success(ok.post(&ping()).send().await.unwrap()).await;
    assert_eq!(node.registry.stats().refused, 1);
}

#[tokio::test]
async fn a_restarted_node_leaves_its_previous_records_adoptable_until_the_idle_timeout() {
    let redis = RedisServer::start();
    let first = Node::start(RedisStore::connect(&redis.url()).await.unwrap(), "node-a").await;
    let mut old = Vec::new();
    for _ in 0..3 {
        let mut c = first.client();
        c.connect("2025-11-25").await;
        old.push(c.session.unwrap());
    }
    first.flush().await;
    let old_incarnation = first.registry.incarnation().to_owned();
    // Crash: the process is gone without closing anything.
    drop(first);
    let other = RedisStore::connect(&redis.url()).await.unwrap();
    other
        .register(
            "other-node-session",
            &SessionRecord::new("node-b", "x"),
            Duration::from_secs(600),
        )
        .await
        .unwrap();

    let idle = Duration::from_secs(2);
    let registry =
        SessionRegistryLayer::builder(RedisStore::connect(&redis.url()).await.unwrap(), "node-a")
            .with_idle_timeout(idle)
            .build()
            .unwrap();
    let second = Node::start_with(registry, SseTransportLayer::new()).await;
    // Nothing is removed at boot: the previous process's sessions are its clients'.
    eventually("the new process announced itself", || {
        redis.command_count("sadd") > 0
    })
    .await;
    assert!(old.iter().all(|id| redis.get(&key(id)).is_some()));
    // The first one's next request adopts it here, under the new incarnation.
    let mut c = second.client();
    c.session = Some(old[0].clone());
    let r = c.post(&ping()).send().await.unwrap();
    assert_eq!(r.status(), 200, "adopted");
    let adopted: Value = serde_json::from_str(&redis.get(&key(&old[0])).expect("record")).unwrap();
    assert_eq!(adopted["i"], second.registry.incarnation());
    assert_eq!(second.registry.stats().adopted, 1);
    // Once the idle timeout has passed, the records nobody claimed go; the adopted one stays.
    // The sweep counts what it removed after the deletes land: wait for both.
    eventually(
        "unclaimed records removed (and counted) after the idle timeout",
        || {
            old[1..].iter().all(|id| redis.get(&key(id)).is_none())
                && second.registry.stats().orphans_removed >= 2
        },
    )
    .await;
    assert!(
        redis.get(&key(&old[0])).is_some(),
        "the adopted record stays"
    );
    assert_eq!(second.registry.stats().orphans_removed, 2);
    assert!(
        redis.get(&key("other-node-session")).is_some(),
        "other nodes' records stay"
    );

    // A record of the previous incarnation seen on the 404 path reads "node restarted".
    other
        .register(
            "late",
            &SessionRecord::new("node-a", &old_incarnation),
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    c.session = Some("late".into());
    assert_eq!(
        reason(c.post(&ping()).send().await.unwrap()).await,
        "node_restarted"
    );
}

#[tokio::test]
async fn memory_store_shared_by_two_nodes_in_one_process() {
    let store = MemoryStore::new();
    let a = Node::start(store.clone(), "node-a").await;
    let b = Node::start(store.clone(), "node-b").await;
    let mut c = a.client();
    c.connect("2025-11-25").await;
    a.flush().await;
    assert_eq!(store.len(), 1);
    let mut wrong = b.client();
    wrong.session = c.session.clone();
    assert_eq!(
        reason(wrong.post(&ping()).send().await.unwrap()).await,
        "misrouted"
    );
    assert_eq!(c.delete().send().await.unwrap().status(), 200);
    a.flush().await;
    assert!(store.is_empty());
}

#[cfg(feature = "redis-cluster")]
#[tokio::test]
async fn three_master_cluster_register_lookup_delete() {
    let cluster = redis_support::RedisCluster::start(3);
    let urls = cluster.urls();
    let nodes: Vec<&str> = urls.iter().map(String::as_str).collect();
    let a = Node::start(RedisStore::connect_cluster(&nodes).await.unwrap(), "node-a").await;
    let b = Node::start(RedisStore::connect_cluster(&nodes).await.unwrap(), "node-b").await;
    let mut ids = Vec::new();
    for _ in 0..6 {
        let mut c = a.client();
        c.connect("2025-11-25").await;
        ids.push(c);
    }
    a.flush().await;
    for c in &ids {
        let id = c.session.as_deref().unwrap();
        assert!(cluster.get(&key(id)).is_some());
        let mut wrong = b.client();
        wrong.session = Some(id.to_owned());
        assert_eq!(
            reason(wrong.post(&ping()).send().await.unwrap()).await,
            "misrouted"
        );
        assert_eq!(c.delete().send().await.unwrap().status(), 200);
    }
    a.flush().await;
    for c in &ids {
        assert_eq!(cluster.get(&key(c.session.as_deref().unwrap())), None);
    }
}

/// A client of `node` whose every request has a deadline and carries `headers`.
fn client_with(node_addr: SocketAddr, headers: &[(&'static str, &'static str)]) -> Client {
    let mut h = http::HeaderMap::new();
    for (k, v) in headers {
        h.insert(*k, http::HeaderValue::from_static(v));
    }
    Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .default_headers(h)
            .build()
            .expect("client"),
        url: format!("http://{node_addr}/mcp"),
        session: None,
    }
}

/// A DELETE the transport refuses (a bad `Origin`, a bad `Host`, another principal) removes
/// nothing: the record stays and the session keeps working. A DELETE for a session of
/// another (dead) node still removes that record.
#[tokio::test]
async fn a_refused_delete_removes_nothing() {
    let redis = RedisServer::start();
    let principal = |p: &http::request::Parts| {
        p.headers
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let node = Node::start_with(
        SessionRegistryLayer::new(RedisStore::connect(&redis.url()).await.unwrap(), "node-a")
            .unwrap(),
        SseTransportLayer::builder()
            .with_principal(principal)
            .build()
            .unwrap(),
    )
    .await;
    let mut ada = client_with(node.addr, &[("x-user", "ada")]);
    ada.connect("2025-11-25").await;
    node.flush().await;
    let id = ada.session.clone().unwrap();
    assert!(redis.get(&key(&id)).is_some());

    let mut bad_origin = client_with(
        node.addr,
        &[("x-user", "ada"), ("origin", "https://evil.example.com")],
    );
    bad_origin.session = Some(id.clone());
    let mut bad_host = client_with(
        node.addr,
        &[("x-user", "ada"), ("host", "evil.example.com")],
    );
    bad_host.session = Some(id.clone());
    let mut bob = client_with(node.addr, &[("x-user", "bob")]);
    bob.session = Some(id.clone());
    for (who, c, status) in [
        ("bad Origin", &bad_origin, 403),
        ("bad Host", &bad_host, 421),
        ("another principal", &bob, 404),
    ] {
        // Any other request of the refused client ends nothing either.
        let res = c.post(&ping()).send().await.unwrap();
        assert_eq!(res.status(), status, "{who}");
        node.flush().await;
        assert!(
            redis.get(&key(&id)).is_some(),
            "{who}: a refused request removed the record"
        );
        let res = c.delete().send().await.unwrap();
        assert_eq!(res.status(), status, "{who}");
        let v: Value = res.json().await.expect("JSON-RPC error body");
        assert!(v["error"]["code"].is_i64(), "{who}: {v}");
        node.flush().await;
        assert!(
            redis.get(&key(&id)).is_some(),
            "{who}: a refused DELETE removed the record"
        );
        assert_eq!(
            ada.post(&ping()).send().await.unwrap().status(),
            200,
            "{who}: the session still works"
        );
    }
    // A DELETE the transport refuses before it looks at the session (here a repeated
    // singleton header, from another principal) is no close either: the record stays.
    let res = bob
        .delete()
        .header("last-event-id", "1-1")
        .header("last-event-id", "1-2")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400, "a repeated header");
    node.flush().await;
    assert!(
        redis.get(&key(&id)).is_some(),
        "a DELETE refused with 400 removed the record"
    );
    assert_eq!(ada.post(&ping()).send().await.unwrap().status(), 200);
    assert_eq!(node.registry.stats().removed, 0);

    // A session of a dead node: 404 here, and the record goes (ADR-0066).
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    store
        .register(
            "dead-node-session",
            &SessionRecord::new("node-dead", "x"),
            Duration::from_secs(600),
        )
        .await
        .unwrap();
    let mut orphan = client_with(node.addr, &[("x-user", "ada")]);
    orphan.session = Some("dead-node-session".into());
    assert_eq!(orphan.delete().send().await.unwrap().status(), 404);
    node.flush().await;
    assert_eq!(redis.get(&key("dead-node-session")), None);

    // The owner's own DELETE still removes its record.
    assert_eq!(ada.delete().send().await.unwrap().status(), 200);
    node.flush().await;
    assert_eq!(redis.get(&key(&id)), None);
}

/// A random well-formed session id (never minted by anyone).
fn random_id() -> String {
    format!("flood-{:032x}", rand_u128())
}

fn rand_u128() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut out = 0u128;
    for _ in 0..2 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u8(0);
        out = (out << 64) | u128::from(h.finish());
    }
    out
}

/// A legacy (`2025-11-25`) POST of `body`, with session `id` if given, for in-process stacks.
fn legacy_post(
    id: Option<&str>,
    body: &Value,
) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut req = http::Request::post("/mcp")
        .header("host", "localhost")
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2025-11-25");
    if let Some(id) = id {
        req = req.header("mcp-session-id", id);
    }
    req.body(http_body_util::Full::new(bytes::Bytes::from(
        body.to_string(),
    )))
    .unwrap()
}

/// The `404` path's lookups are bounded: under a flood of random well-formed ids a node asks
/// the store at most its rate (the rest answer "unknown" at once), ids the store did not know
/// are answered from memory for a while, and a real misroute is told apart again as soon as
/// the bucket has refilled (a degraded answer is not cached). In-process, with paused time.
#[tokio::test(start_paused = true)]
async fn lookups_are_bounded_by_rate_and_cache_and_misroutes_still_tell() {
    use tower::ServiceExt;

    let store = counting_store::Counting::new(MemoryStore::new());
    let stack = |registry: SessionRegistryLayer<counting_store::Counting<MemoryStore>>| {
        let (probe, _) = Probe::new();
        tower::ServiceBuilder::new()
            .layer(registry)
            .layer(SseTransportLayer::new())
            .service(handler_fn(move |req, cx| {
                support::handle_request(probe.clone(), req, cx)
            }))
    };
    let a_layer = SessionRegistryLayer::new(store.clone(), "node-a").unwrap();
    let a_handle = a_layer.handle();
    let a = stack(a_layer);
    let b_layer = SessionRegistryLayer::builder(store.clone(), "node-b")
        .with_lookup_rate(10, Duration::from_secs(1))
        .with_negative_cache(100, Duration::from_secs(5))
        .build()
        .unwrap();
    let b_handle = b_layer.handle();
    let b = stack(b_layer);
    let post = legacy_post;
    let reason_of = |res: http::Response<_>| async move {
        assert_eq!(res.status(), 404);
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], -32001);
        v["error"]["data"]["reason"].as_str().unwrap().to_owned()
    };
    let res = a
        .clone()
        .oneshot(post(None, &support::initialize_body("2025-11-25")))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let owned_by_a = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    assert!(a_handle.flush(Duration::from_secs(10)).await);

    let ids: Vec<String> = (0..100).map(|_| random_id()).collect();
    for id in &ids {
        let res = b.clone().oneshot(post(Some(id), &ping())).await.unwrap();
        assert_eq!(reason_of(res).await, "unknown");
    }
    assert_eq!(store.lookups(), 10, "the bucket holds 10 lookups");
    assert_eq!(b_handle.stats().lookups_limited, 90);
    // The misroute while the bucket is empty: degraded to "unknown", without a lookup.
    let res = b
        .clone()
        .oneshot(post(Some(&owned_by_a), &ping()))
        .await
        .unwrap();
    assert_eq!(reason_of(res).await, "unknown");
    assert_eq!(store.lookups(), 10);
    // The ids looked up (the first 10) are answered from memory.
    for id in &ids[..10] {
        let res = b.clone().oneshot(post(Some(id), &ping())).await.unwrap();
        assert_eq!(reason_of(res).await, "unknown");
    }
    assert_eq!(store.lookups(), 10);
    assert_eq!(b_handle.stats().known_misses, 10);

    // A second later the bucket is full again: the misroute is told apart.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let res = b
        .clone()
        .oneshot(post(Some(&owned_by_a), &ping()))
        .await
        .unwrap();
    assert_eq!(reason_of(res).await, "misrouted");
    assert_eq!(store.lookups(), 11);
    assert_eq!(b_handle.stats().misroutes, 1);
    // Past the cache's TTL an unknown id is asked about again.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let res = b
        .clone()
        .oneshot(post(Some(&ids[0]), &ping()))
        .await
        .unwrap();
    assert_eq!(reason_of(res).await, "unknown");
    assert_eq!(store.lookups(), 12);
}

/// The lookup rate bounds lookups of ids the store does not know, not of sessions that exist:
/// a node adopts every session of a node that drained at once, however many more than its
/// bucket holds, and the bucket is still full afterwards for a flood of made-up ids.
/// In-process, with paused time (no refill).
#[tokio::test(start_paused = true)]
async fn adopting_a_drained_nodes_sessions_is_not_held_to_the_lookup_rate() {
    use tower::ServiceExt;

    let store = counting_store::Counting::new(MemoryStore::new());
    let stack = |registry: SessionRegistryLayer<counting_store::Counting<MemoryStore>>| {
        let (probe, _) = Probe::new();
        tower::ServiceBuilder::new()
            .layer(registry)
            .layer(SseTransportLayer::new())
            .service(handler_fn(move |req, cx| {
                support::handle_request(probe.clone(), req, cx)
            }))
    };
    let a_layer = SessionRegistryLayer::new(store.clone(), "node-a").unwrap();
    let a_handle = a_layer.handle();
    let a = stack(a_layer);
    let b_layer = SessionRegistryLayer::builder(store.clone(), "node-b")
        .with_lookup_rate(10, Duration::from_secs(1))
        .build()
        .unwrap();
    let b_handle = b_layer.handle();
    let b = stack(b_layer);
    let post = legacy_post;
    const SESSIONS: usize = 40;
    let mut ids = Vec::new();
    for _ in 0..SESSIONS {
        let res = a
            .clone()
            .oneshot(post(None, &support::initialize_body("2025-11-25")))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        ids.push(res.headers()["mcp-session-id"].to_str().unwrap().to_owned());
    }
    assert!(a_handle.flush(Duration::from_secs(10)).await);
    assert!(a_handle.drain(Duration::from_secs(1)).await);

    // Four times the bucket, all at once.
    let answers = futures_util::future::join_all(
        ids.iter()
            .map(|id| b.clone().oneshot(post(Some(id), &ping()))),
    )
    .await;
    for (i, res) in answers.into_iter().enumerate() {
        let res = res.unwrap();
        assert_eq!(res.status(), 200, "first request on session {i}");
    }
    let stats = b_handle.stats();
    assert_eq!(stats.adopted, SESSIONS as u64, "{stats:?}");
    assert_eq!(stats.lookups_limited, 0, "{stats:?}");

    // Made-up ids still meet the full bucket: 10 lookups, the rest answered without.
    let before = store.lookups();
    for _ in 0..20 {
        let res = b
            .clone()
            .oneshot(post(Some(&random_id()), &ping()))
            .await
            .unwrap();
        assert_eq!(res.status(), 404);
    }
    assert_eq!(store.lookups() - before, 10);
    assert_eq!(b_handle.stats().lookups_limited, 10);
}

/// A flood of random well-formed ids against a node on a real Redis: `INFO commandstats`
/// shows no more GETs than the bucket allows for the flood's duration, every answer is a
/// JSON-RPC `404`, and a real misroute on the same node is told apart right after the flood.
#[tokio::test]
async fn a_flood_of_random_ids_costs_redis_at_most_the_lookup_rate() {
    use futures_util::StreamExt;

    let redis = RedisServer::start();
    let a = Node::start(RedisStore::connect(&redis.url()).await.unwrap(), "node-a").await;
    let b = Node::start_with(
        SessionRegistryLayer::builder(RedisStore::connect(&redis.url()).await.unwrap(), "node-b")
            .with_lookup_rate(20, Duration::from_secs(1))
            .build()
            .unwrap(),
        SseTransportLayer::new(),
    )
    .await;
    let mut on_a = client_with(a.addr, &[]);
    on_a.connect("2025-11-25").await;
    a.flush().await;
    b.flush().await;
    let owned_by_a = on_a.session.clone().unwrap();

    let gets_before = redis.command_count("get");
    let flood = client_with(b.addr, &[]);
    const FLOOD: usize = 2000;
    let started = std::time::Instant::now();
    let answers: Vec<String> = futures_util::stream::iter(0..FLOOD)
        .map(|_| {
            let mut c = flood.clone();
            c.session = Some(random_id());
            async move { reason(c.post(&ping()).send().await.unwrap()).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let gets = redis.command_count("get") - gets_before;
    // The bucket: 20 at once, then 20 a second (whole seconds, rounded up).
    let bound = 20 + 20 * (started.elapsed().as_secs() + 1);
    assert!(
        answers.iter().all(|r| r == "unknown"),
        "every answer is an unknown-session 404"
    );
    assert!(
        gets <= bound,
        "{gets} GETs for {FLOOD} random ids (bound {bound})"
    );
    let stats = b.registry.stats();
    assert_eq!(
        stats.lookups_limited + stats.known_misses + gets,
        FLOOD as u64,
        "{stats:?}"
    );
    eprintln!(
        "flood of {FLOOD} random ids in {:?}: {gets} Redis GETs (bound {bound}), {} answered without",
        started.elapsed(),
        stats.lookups_limited
    );

    // Right after the flood, the same node tells a real misroute apart again (as soon as a
    // token is back: 50 ms at this rate).
    let mut misrouted = client_with(b.addr, &[]);
    misrouted.session = Some(owned_by_a);
    let mut told = false;
    for _ in 0..400 {
        if reason(misrouted.post(&ping()).send().await.unwrap()).await == "misrouted" {
            told = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(told, "the misroute was never told apart after the flood");
    assert_eq!(on_a.post(&ping()).send().await.unwrap().status(), 200);
}

/// A `404` a handler itself answers on a live session of this node (a tool that reports a
/// missing resource with the HTTP status) is the handler's answer, not the end of the session:
/// the record stays, the session keeps working and the answer reaches the client untouched.
#[tokio::test]
async fn a_handlers_own_404_on_a_live_session_removes_nothing() {
    use tower::ServiceExt;

    let store = MemoryStore::new();
    let registry = SessionRegistryLayer::new(store.clone(), "node-a").unwrap();
    let handle = registry.handle();
    let inner = tower::service_fn(|req: http::Request<_>| async move {
        let _ = &req;
        let (status, body) = if req.headers().contains_key("x-answer-404") {
            (
                404,
                json!({"jsonrpc":"2.0","id":2,"error":{"code":-32002,"message":"no such thing"}}),
            )
        } else {
            (
                200,
                json!({"jsonrpc":"2.0","id":1,"result":{"protocolVersion":"2025-11-25",
                    "capabilities":{},"serverInfo":{"name":"s","version":"1"}}}),
            )
        };
        Ok::<_, Infallible>(
            http::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(http_body_util::Full::new(bytes::Bytes::from(
                    body.to_string(),
                )))
                .unwrap(),
        )
    });
    let svc = tower::ServiceBuilder::new()
        .layer(registry)
        .layer(SseTransportLayer::new())
        .service(inner);
    let post = |id: Option<&str>, body: &Value, answer_404: bool| {
        let mut req = http::Request::post("/mcp")
            .header("host", "localhost")
            .header("accept", "application/json, text/event-stream")
            .header("content-type", "application/json")
            .header("mcp-protocol-version", "2025-11-25");
        if let Some(id) = id {
            req = req.header("mcp-session-id", id);
        }
        if answer_404 {
            req = req.header("x-answer-404", "1");
        }
        req.body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap()
    };
    let deadline = Duration::from_secs(10);
    let call = |req| tokio::time::timeout(deadline, svc.clone().oneshot(req));
    let res = call(post(None, &support::initialize_body("2025-11-25"), false))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(res.status(), 200);
    let id = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    assert!(handle.flush(deadline).await);
    assert_eq!(store.len(), 1);

    let call_tool = json!({"jsonrpc":"2.0","id":2,"method":"tools/call",
        "params":{"name":"find","arguments":{}}});
    for _ in 0..2 {
        let res = call(post(Some(&id), &call_tool, true))
            .await
            .expect("answered")
            .unwrap();
        assert_eq!(res.status(), 404);
        let body = http_body_util::BodyExt::collect(res.into_body())
            .await
            .unwrap()
            .to_bytes();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], -32002, "the handler's own answer: {v}");
        assert!(handle.flush(deadline).await);
        assert_eq!(store.len(), 1, "a handler's 404 removed the record");
    }
    assert_eq!(handle.stats().removed, 0);
    let res = call(post(Some(&id), &ping(), false))
        .await
        .expect("answered")
        .unwrap();
    assert_eq!(res.status(), 200, "the session still works");
}
