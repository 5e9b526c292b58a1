//! The registry layer over another MCP implementation: rmcp's `StreamableHttpService`.
//! It reads only HTTP (minted `Mcp-Session-Id`, 404s, DELETE), so it works unchanged.

#[path = "support/counting_store.rs"]
mod counting_store;
#[path = "support/http.rs"]
mod http_support;
#[path = "../../tests/support/redis.rs"]
mod redis_support;

use std::{sync::Arc, time::Duration};

use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use mcp_affinity::{
    SessionAffinityLayer,
    registry::{RedisStore, RegistryHandle, SessionRegistryLayer},
};
use redis_support::RedisServer;
use rmcp::transport::{
    StreamableHttpServerConfig, StreamableHttpService,
    streamable_http_server::session::local::LocalSessionManager,
};
use serde_json::{Value, json};

#[derive(Clone)]
struct Minimal;

impl rmcp::ServerHandler for Minimal {}

const ACCEPT: &str = "application/json, text/event-stream";

#[tokio::test]
async fn registry_over_rmcp_streamable_http_service() {
    let redis = RedisServer::start();
    let registry = SessionRegistryLayer::new(
        RedisStore::connect(&redis.url()).await.unwrap(),
        "rmcp-node",
    )
    .unwrap();
    let handle = registry.handle();
    let rmcp_service = StreamableHttpService::new(
        || Ok(Minimal),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let svc = tower::ServiceBuilder::new()
        .layer(registry)
        .service(rmcp_service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
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
    let url = format!("http://{addr}/");
    let http = http_support::http_client();
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let res = http
        .post(&url)
        .header("accept", ACCEPT)
        .header("content-type", "application/json")
        .body(init.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{:?}", res.text().await);
    let id = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    drop(res);
    assert!(handle.flush(Duration::from_secs(10)).await);
    let key = format!("mcp:session:{{{id}}}");
    let record: Value = serde_json::from_str(&redis.get(&key).expect("registered")).unwrap();
    assert_eq!(record["n"], "rmcp-node");

    // rmcp's 404 for an unknown session is enriched by the registry.
    let res = http
        .post(&url)
        .header("accept", ACCEPT)
        .header("content-type", "application/json")
        .header("mcp-session-id", "not-a-session")
        .header("mcp-protocol-version", "2025-06-18")
        .body(json!({"jsonrpc":"2.0","id":2,"method":"ping"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["error"]["data"]["reason"], "unknown");

    // DELETE through rmcp removes the record.
    let res = http
        .delete(&url)
        .header("mcp-session-id", &id)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert!(handle.flush(Duration::from_secs(10)).await);
    assert_eq!(redis.get(&key), None);
}

/// One node: affinity (envelope mode) → registry → rmcp, served over TCP.
struct Node {
    url: String,
    registry: RegistryHandle<RedisStore>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start_node(redis: &RedisServer, name: &str) -> Node {
    let registry =
        SessionRegistryLayer::new(RedisStore::connect(&redis.url()).await.unwrap(), name).unwrap();
    let handle = registry.handle();
    let rmcp_service = StreamableHttpService::new(
        || Ok(Minimal),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default(),
    );
    let svc = tower::ServiceBuilder::new()
        .layer(
            SessionAffinityLayer::builder(mcp_affinity::session::NodeTag::derive(name))
                .with_envelope(true)
                .build()
                .expect("affinity"),
        )
        .layer(registry)
        .service(rmcp_service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
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
    Node {
        url: format!("http://{addr}/mcp"),
        registry: handle,
        task,
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn key(id: &str) -> String {
    format!("mcp:session:{{{id}}}")
}

/// initialize + notifications/initialized on `node`; the session id as the client sees it.
async fn open_session(http: &reqwest::Client, node: &Node) -> String {
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let res = http
        .post(&node.url)
        .header("accept", ACCEPT)
        .header("content-type", "application/json")
        .body(init.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let id = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    drop(res);
    let res = post(
        http,
        node,
        &id,
        &json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
    )
    .await;
    assert_eq!(res.status(), 202);
    id
}

async fn post(http: &reqwest::Client, node: &Node, id: &str, body: &Value) -> reqwest::Response {
    http.post(&node.url)
        .header("accept", ACCEPT)
        .header("content-type", "application/json")
        .header("mcp-session-id", id)
        .header("mcp-protocol-version", "2025-06-18")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

async fn ping(http: &reqwest::Client, node: &Node, id: &str) -> reqwest::Response {
    post(
        http,
        node,
        id,
        &json!({"jsonrpc":"2.0","id":7,"method":"ping"}),
    )
    .await
}

async fn reason(res: reqwest::Response) -> String {
    assert_eq!(res.status(), 404);
    let v: Value = res.json().await.expect("JSON-RPC body");
    v["error"]["data"]["reason"]
        .as_str()
        .expect("reason")
        .to_owned()
}

/// Envelope mode (the affinity layer wraps rmcp's own ids as `<tag>.<id>`) with the registry
/// across two nodes sharing one Redis: the registry records the id clients use, so a misroute
/// on node B reads "misrouted" and a DELETE on node B removes node A's record.
#[tokio::test]
async fn envelope_mode_registry_across_two_nodes() {
    let redis = RedisServer::start();
    let a = start_node(&redis, "node-a").await;
    let b = start_node(&redis, "node-b").await;
    let http = http();
    let id = open_session(&http, &a).await;
    assert!(a.registry.flush(Duration::from_secs(10)).await);
    assert!(
        redis.get(&key(&id)).is_some(),
        "the record is under the id the client uses: {:?}",
        redis.keys("mcp:session:{*")
    );
    assert_eq!(ping(&http, &a, &id).await.status(), 200);

    assert_eq!(reason(ping(&http, &b, &id).await).await, "misrouted");
    assert_eq!(b.registry.stats().misroutes, 1);

    // DELETE on the wrong node: the record goes (ADR-0066).
    let res = http
        .delete(&b.url)
        .header("mcp-session-id", &id)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap();
    drop(res);
    assert!(b.registry.flush(Duration::from_secs(10)).await);
    assert_eq!(redis.get(&key(&id)), None);

    // On its own node a DELETE removes the record too.
    let id = open_session(&http, &a).await;
    assert!(a.registry.flush(Duration::from_secs(10)).await);
    assert!(redis.get(&key(&id)).is_some());
    let res = http
        .delete(&a.url)
        .header("mcp-session-id", &id)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    assert!(a.registry.flush(Duration::from_secs(10)).await);
    assert_eq!(redis.get(&key(&id)), None);
    assert!(redis.keys("mcp:session:{*").is_empty());
}

type Req = http::Request<http_body_util::Full<bytes::Bytes>>;

/// affinity (envelope mode) → `registry` → rmcp (no keep-alive expiry), called in-process.
fn in_process<R: mcp_affinity::registry::RegistryStore>(
    registry: SessionRegistryLayer<R>,
) -> (
    impl tower::Service<Req, Response = http::Response<impl Sized>, Error = std::convert::Infallible>
    + Clone,
    Arc<LocalSessionManager>,
) {
    let mut sessions = LocalSessionManager::default();
    sessions.session_config.keep_alive = None;
    let sessions = Arc::new(sessions);
    let svc = tower::ServiceBuilder::new()
        .layer(
            SessionAffinityLayer::builder(mcp_affinity::session::NodeTag::derive("node-a"))
                .with_envelope(true)
                .build()
                .expect("affinity"),
        )
        .layer(registry)
        .service(StreamableHttpService::new(
            || Ok(Minimal),
            sessions.clone(),
            StreamableHttpServerConfig::default(),
        ));
    (svc, sessions)
}

/// One request through an in-process stack; its status and `Mcp-Session-Id`.
async fn send<S, B>(svc: &S, id: Option<&str>, body: Value) -> (http::StatusCode, Option<String>)
where
    S: tower::Service<Req, Response = http::Response<B>, Error = std::convert::Infallible> + Clone,
{
    use tower::ServiceExt;
    let mut req = http::Request::post("/mcp")
        .header("host", "localhost")
        .header("accept", ACCEPT)
        .header("content-type", "application/json")
        .header("mcp-protocol-version", "2025-06-18");
    if let Some(id) = id {
        req = req.header("mcp-session-id", id);
    }
    let req = req
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.to_string(),
        )))
        .unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    let id = res
        .headers()
        .get("mcp-session-id")
        .map(|v| v.to_str().unwrap().to_owned());
    (res.status(), id)
}

/// initialize + notifications/initialized through an in-process stack.
async fn open_in_process<S, B>(svc: &S) -> String
where
    S: tower::Service<Req, Response = http::Response<B>, Error = std::convert::Infallible> + Clone,
{
    let init = json!({"jsonrpc":"2.0","id":1,"method":"initialize","params":{
        "protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"t","version":"1"}}});
    let (status, id) = send(svc, None, init).await;
    assert_eq!(status, 200);
    let id = id.expect("a session id");
    let initialized = json!({"jsonrpc":"2.0","method":"notifications/initialized"});
    assert_eq!(send(svc, Some(&id), initialized).await.0, 202);
    id
}

const PING: &str = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;

/// A session that ends inside rmcp (no close hook tells the registry): rmcp's `404` for its
/// id drops it from the registry's tracked sessions and removes its record, without a store
/// lookup.
#[tokio::test]
async fn a_session_ended_inside_rmcp_is_dropped_on_its_404() {
    use mcp_affinity::registry::{MemoryStore, RegistryStore};

    let store = counting_store::Counting::new(MemoryStore::new());
    let registry = SessionRegistryLayer::new(store.clone(), "node-a").unwrap();
    let handle = registry.handle();
    let (svc, sessions) = in_process(registry);
    let id = open_in_process(&svc).await;
    assert!(handle.flush(Duration::from_secs(10)).await);
    assert!(store.lookup(&id).await.unwrap().is_some());
    assert_eq!(handle.stats().tracked, 1);

    // rmcp ends the session on its own (as its keep-alive expiry does).
    let inner: Arc<str> = id.split_once('.').unwrap().1.into();
    rmcp::transport::streamable_http_server::SessionManager::close_session(&*sessions, &inner)
        .await
        .unwrap();
    let lookups = store.lookups();
    let ping: Value = serde_json::from_str(PING).unwrap();
    assert_eq!(send(&svc, Some(&id), ping).await.0, 404);
    assert_eq!(
        store.lookups(),
        lookups,
        "no store lookup for a session it had"
    );
    assert!(handle.flush(Duration::from_secs(10)).await);
    assert_eq!(
        store.inner.lookup(&id).await.unwrap(),
        None,
        "the record is removed"
    );
    let stats = handle.stats();
    assert_eq!((stats.tracked, stats.inner_ended), (0, 1), "{stats:?}");
}

/// A session that ends inside rmcp without any later request: the idle bound drops it and
/// removes its record; a session with requests stays. In-process, with paused time.
#[tokio::test(start_paused = true)]
async fn idle_sessions_without_a_close_hook_are_dropped_after_the_idle_bound() {
    use mcp_affinity::registry::{MemoryStore, RegistryStore};

    let idle = Duration::from_secs(600);
    let store = MemoryStore::new();
    let registry = SessionRegistryLayer::builder(store.clone(), "node-a")
        .with_idle_timeout(idle)
        .build()
        .unwrap();
    let handle = registry.handle();
    let (svc, _sessions) = in_process(registry);
    let quiet = open_in_process(&svc).await;
    let busy = open_in_process(&svc).await;
    assert!(handle.flush(Duration::from_secs(10)).await);
    assert_eq!(handle.stats().tracked, 2);

    let ping: Value = serde_json::from_str(PING).unwrap();
    tokio::time::sleep(idle * 6 / 10).await;
    assert_eq!(send(&svc, Some(&busy), ping).await.0, 200);
    // `quiet` has had no request for 1.2 × the bound, `busy` for 0.6 ×; the sweep runs every
    // quarter of the bound.
    tokio::time::sleep(idle * 6 / 10).await;
    assert!(handle.flush(Duration::from_secs(10)).await);
    let stats = handle.stats();
    assert_eq!((stats.tracked, stats.idle_expired), (1, 1), "{stats:?}");
    assert_eq!(
        store.lookup(&quiet).await.unwrap(),
        None,
        "the idle record is removed"
    );
    assert!(
        store.lookup(&busy).await.unwrap().is_some(),
        "the busy one stays"
    );
}

/// The registry's records as rmcp's session store (feature `rmcp`): a node whose rmcp service
/// uses `RmcpSessionStore` restores, on adoption, sessions another node's rmcp created.
#[cfg(feature = "rmcp")]
mod restore {
    use super::*;
    use mcp_affinity::registry::RmcpSessionStore;

    /// registry (continuity on, default settings) → rmcp, over TCP; rmcp's session store is
    /// the registry's records when `with_store`, none otherwise. In front, the affinity layer
    /// in envelope mode when `envelope`.
    async fn start(redis: &RedisServer, name: &str, with_store: bool, envelope: bool) -> Node {
        let registry =
            SessionRegistryLayer::new(RedisStore::connect(&redis.url()).await.unwrap(), name)
                .unwrap();
        let handle = registry.handle();
        let mut config = StreamableHttpServerConfig::default();
        if with_store {
            config.session_store = Some(Arc::new(RmcpSessionStore::new(&handle)));
        }
        let rmcp_service = StreamableHttpService::new(
            || Ok(Minimal),
            Arc::new(LocalSessionManager::default()),
            config,
        );
        let stack = tower::ServiceBuilder::new().layer(registry);
        let (url, task) = if envelope {
            serve(
                tower::ServiceBuilder::new()
                    .layer(
                        SessionAffinityLayer::builder(mcp_affinity::session::NodeTag::derive(name))
                            .with_envelope(true)
                            .build()
                            .expect("affinity"),
                    )
                    .service(stack.service(rmcp_service)),
            )
            .await
        } else {
            serve(stack.service(rmcp_service)).await
        };
        Node {
            url,
            registry: handle,
            task,
        }
    }

    /// Serves `svc` on a free loopback port: its `/mcp` URL and the accept loop.
    async fn serve<S, B>(svc: S) -> (String, tokio::task::JoinHandle<()>)
    where
        S: tower::Service<
                http::Request<hyper::body::Incoming>,
                Response = http::Response<B>,
                Error = std::convert::Infallible,
            > + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
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
        (format!("http://{addr}/mcp"), task)
    }

    /// Stops `node` as a node shuts down: its liveness says `draining` (others adopt its
    /// sessions at once), it stops serving, then it leaves the cluster.
    async fn stop(node: &Node) {
        assert!(node.registry.drain(Duration::from_secs(10)).await);
        node.task.abort();
        assert!(node.registry.flush(Duration::from_secs(10)).await);
        assert!(node.registry.leave(Duration::from_secs(10)).await);
    }

    fn record(redis: &RedisServer, id: &str) -> Value {
        let json = redis
            .get(&key(id))
            .unwrap_or_else(|| panic!("a record: {:?}", redis.keys("mcp:session:{*")));
        serde_json::from_str(&json).unwrap()
    }

    /// The JSON-RPC message of an answer, JSON or the `data:` of an SSE event.
    async fn message(res: reqwest::Response) -> Value {
        let text = res.text().await.unwrap();
        serde_json::from_str(&text).unwrap_or_else(|_| {
            text.lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
                .find(|m| m.get("id").is_some())
                .unwrap_or_else(|| panic!("no JSON-RPC answer in {text:?}"))
        })
    }

    /// Initialize on node A (rmcp mints the id; the registry writes its record with the
    /// restore fields rmcp's store call handed over), stop A, and the next request on node B
    /// is served: B adopts the record and rmcp restores the session from it. A session of an
    /// rmcp without the store (a record without restore fields) is not adopted.
    async fn sessions_restore_on_another_node(envelope: bool) {
        let redis = RedisServer::start();
        let a = start(&redis, "node-a", true, envelope).await;
        let b = start(&redis, "node-b", true, envelope).await;
        let c = start(&redis, "node-c", false, envelope).await;
        let http = http();

        let id = open_session(&http, &a).await;
        assert_eq!(ping(&http, &a, &id).await.status(), 200);
        assert!(a.registry.flush(Duration::from_secs(10)).await);
        let rec = record(&redis, &id);
        assert_eq!(rec["n"], "node-a");
        assert_eq!(rec["v"], "2025-06-18", "{rec}");
        assert_eq!(rec["ci"], json!({"name": "t", "version": "1"}), "{rec}");
        assert!(rec["cc"].is_object(), "{rec}");
        assert!(rec.get("p").is_none(), "rmcp binds no principal: {rec}");
        let stats = a.registry.stats();
        assert_eq!((stats.registered, stats.tracked), (1, 1), "{stats:?}");

        let bare = open_session(&http, &c).await;
        assert!(c.registry.flush(Duration::from_secs(10)).await);
        assert!(record(&redis, &bare).get("v").is_none());

        // While A serves (and gives no address to forward to), B's rmcp restores nothing: the
        // store loads only what the registry adopts.
        assert_eq!(reason(ping(&http, &b, &id).await).await, "misrouted");
        assert_eq!(b.registry.stats().adopted, 0);
        assert_eq!(record(&redis, &id)["n"], "node-a");

        stop(&a).await;
        stop(&c).await;

        // Node B adopts the session once it sees A gone (it trusts the liveness it read a
        // moment ago for up to a second), and rmcp restores it.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let res = loop {
            let res = ping(&http, &b, &id).await;
            if res.status() != 404 {
                break res;
            }
            assert_eq!(reason(res).await, "misrouted");
            assert!(
                tokio::time::Instant::now() < deadline,
                "B never adopted the session"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok()),
            Some(id.as_str()),
            "the answer re-pins the client's id"
        );
        let answer = message(res).await;
        assert_eq!(answer["id"], 7, "{answer}");
        assert!(answer.get("result").is_some(), "{answer}");
        let stats = b.registry.stats();
        assert_eq!(stats.adopted, 1, "{stats:?}");
        let rec = record(&redis, &id);
        assert_eq!(rec["n"], "node-b", "the record names the adopter: {rec}");
        assert_eq!(rec["i"], b.registry.incarnation());
        assert_eq!(rec["v"], "2025-06-18", "the restore fields stay: {rec}");

        // Held on B from now on: served without another adoption.
        assert_eq!(ping(&http, &b, &id).await.status(), 200);
        let res = post(
            &http,
            &b,
            &id,
            &json!({"jsonrpc":"2.0","id":8,"method":"tools/list"}),
        )
        .await;
        assert_eq!(res.status(), 200);
        assert_eq!(message(res).await["id"], 8);
        assert_eq!(b.registry.stats().adopted, 1);

        // No restore fields: not adopted, and rmcp restores nothing.
        assert_eq!(reason(ping(&http, &b, &bare).await).await, "misrouted");
        assert_eq!(b.registry.stats().adopted, 1);
        assert_eq!(record(&redis, &bare)["n"], "node-c");

        // A DELETE on the adopter ends the session and removes its record.
        let res = http
            .delete(&b.url)
            .header("mcp-session-id", &id)
            .header("mcp-protocol-version", "2025-06-18")
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{}", res.status());
        assert!(b.registry.flush(Duration::from_secs(10)).await);
        assert_eq!(redis.get(&key(&id)), None);
        assert_eq!(reason(ping(&http, &b, &id).await).await, "unknown");
    }

    #[tokio::test]
    async fn an_rmcp_session_is_restored_on_the_node_that_adopts_it() {
        sessions_restore_on_another_node(false).await;
    }

    /// The same behind the affinity layer in envelope mode: rmcp sees its own ids, the records
    /// are keyed by the enveloped ones.
    #[tokio::test]
    async fn an_enveloped_rmcp_session_is_restored_on_the_node_that_adopts_it() {
        sessions_restore_on_another_node(true).await;
    }
}
