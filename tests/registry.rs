//! The SessionRegistryLayer over real TCP, against real `redis-server` processes started here.

#[path = "support/redis.rs"]
mod redis_support;
#[path = "support/mcp.rs"]
mod support;

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

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
            http: reqwest::Client::new(),
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

async fn reason(res: reqwest::Response) -> String {
    assert_eq!(res.status(), 404);
    let v: Value = res.json().await.expect("JSON-RPC body");
    assert_eq!(v["error"]["code"], -32001);
    v["error"]["data"]["reason"]
        .as_str()
        .expect("reason")
        .to_owned()
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
    let node = Node::start(store, "node-a").await;
    let mut c = node.client();
    c.connect("2025-11-25").await;
    node.flush().await;
    let total = |r: &RedisServer| -> u64 {
        let info: String = r.cmd(&["INFO", "commandstats"]);
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
    };
    redis.reset_stats();
    let before = total(&redis);
    for i in 0..100 {
        let r = c.call_tool(i, "echo", json!({"text": "x"})).await;
        assert_eq!(r.status(), 200);
        assert_eq!(c.post(&ping()).send().await.unwrap().status(), 200);
    }
    assert_eq!(
        total(&redis) - before,
        0,
        "200 requests on a live session made Redis calls"
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
    assert_eq!(on_a.post(&ping()).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn every_close_path_removes_the_record() {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).await.unwrap();
    let node = Node::start_with(
        SessionRegistryLayer::new(store, "node-a").unwrap(),
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
    // Between the registry and the transport: DELETE waits until released.
    let svc = tower::ServiceBuilder::new()
        .layer(registry)
        .layer_fn(move |inner| Gate {
            inner,
            gate: g.clone(),
        })
        .layer(SseTransportLayer::new())
        .service(handler_fn(move |req, cx| {
            support::handle_request(probe.clone(), req, cx)
        }));
    let (addr, _task) = serve(svc).await;
    let mut c = Client {
        http: reqwest::Client::new(),
        url: format!("http://{addr}/mcp"),
        session: None,
    };
    c.connect("2025-11-25").await;
    assert!(handle.flush(Duration::from_secs(10)).await);
    let id = c.session.clone().unwrap();
    let pending = tokio::spawn({
        let c = c.clone();
        async move { c.delete().send().await }
    });
    eventually("DELETE reached the server", || {
        handle.stats().cleanup_pending > 0 || redis.get(&key(&id)).is_none()
    })
    .await;
    pending.abort();
    let _ = pending.await;
    assert!(handle.flush(Duration::from_secs(10)).await);
    assert_eq!(redis.get(&key(&id)), None);
    gate.notify_waiters();
}

#[derive(Clone)]
struct Gate<S> {
    inner: S,
    gate: Arc<tokio::sync::Notify>,
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
    let node = Node::start(store, "node-a").await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let mut c = node.client();
        c.connect("2025-11-25").await;
        clients.push(c);
    }
    node.flush().await;
    assert_eq!(redis.keys("mcp:session:{*").len(), 5);

    redis.kill();
    // Existing sessions: zero errors.
    for c in &clients {
        assert_eq!(c.post(&ping()).send().await.unwrap().status(), 200);
        assert_eq!(
            c.call_tool(2, "echo", json!({"text": "x"})).await.status(),
            200
        );
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
    assert_eq!(ok.post(&ping()).send().await.unwrap().status(), 200);
    assert_eq!(node.registry.stats().refused, 1);
}

#[tokio::test]
async fn a_restarted_node_cleans_its_previous_incarnation() {
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

    let second = Node::start(RedisStore::connect(&redis.url()).await.unwrap(), "node-a").await;
    // The cleanup starts with the service, before any request reaches the new process.
    eventually("previous incarnation's records removed at boot", || {
        old.iter().all(|id| redis.get(&key(id)).is_none())
    })
    .await;
    assert_eq!(second.registry.stats().stale_removed, 3);
    let mut c = second.client();
    c.session = Some(old[0].clone());
    let r = c.post(&ping()).send().await.unwrap();
    assert_eq!(r.status(), 404);
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
