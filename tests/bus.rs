//! The cluster bus (`mcp_affinity::bus`): one suite of cases over the in-process bus, a real
//! `redis-server` and a real 3-master Redis Cluster (each started by the test on free ports),
//! with real transports whose sessions are read through their GET streams.

#[path = "support/redis.rs"]
mod redis_support;

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use mcp_affinity::{
    SseTransportLayer,
    bus::{BusError, Change, ClusterBus, ClusterBusBuilder, Delivery, MemoryBus, SessionFilter},
    handler::handler_fn,
    transport::{ResponseBody, TransportHandle},
};
use serde_json::{Value, json};
use tower::{Layer, ServiceExt};

/// Every wait in these tests is bounded by this.
const DEADLINE: Duration = Duration::from_secs(10);

type Svc = tower::util::BoxCloneSyncService<
    Request<Full<Bytes>>,
    Response<ResponseBody>,
    std::convert::Infallible,
>;

/// Where the buses of a test's nodes meet.
enum Backend {
    Memory(MemoryBus),
    Redis(redis_support::RedisServer),
    #[cfg(feature = "redis-cluster")]
    Cluster(redis_support::RedisCluster),
}

impl Backend {
    fn builder(&self, node: &str) -> ClusterBusBuilder {
        let b = ClusterBus::builder(node);
        match self {
            Self::Memory(hub) => b.with_memory(hub),
            Self::Redis(r) => b.with_redis(r.url()),
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(c) => b.with_redis_cluster(c.urls()),
        }
    }
}

/// One node: a transport (sessions bound to the `x-user` header, if any) and its bus.
struct Node {
    svc: Svc,
    handle: TransportHandle,
    bus: ClusterBus,
}

impl Node {
    async fn new(backend: &Backend, name: &str) -> Self {
        Self::with(backend.builder(name)).await
    }

    async fn with(builder: ClusterBusBuilder) -> Self {
        let user =
            |p: &http::request::Parts| p.headers.get("x-user")?.to_str().ok().map(str::to_owned);
        let layer = SseTransportLayer::builder()
            .with_principal(user)
            .build()
            .unwrap();
        let handle = layer.handle();
        let handler = handler_fn(|req, _cx| async move {
            Ok(match req.method.as_str() {
                "initialize" => json!({"protocolVersion": "2025-11-25", "capabilities": {},
                                       "serverInfo": {"name": "bus-test", "version": "1"}}),
                _ => json!({}),
            })
        });
        let svc = Svc::new(layer.layer(handler));
        let bus = builder.build().unwrap();
        assert!(bus.attach(&handle));
        let node = Self { svc, handle, bus };
        node.wait_connected().await;
        node
    }

    async fn wait_connected(&self) {
        tokio::time::timeout(DEADLINE, async {
            while !self.bus.is_connected() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the bus subscribes in time");
    }

    async fn send(&self, req: Request<Full<Bytes>>) -> Response<ResponseBody> {
        self.svc.clone().oneshot(req).await.unwrap()
    }

    /// A new legacy session (bound to `user`, if any); its id.
    async fn session(&self, user: Option<&str>) -> String {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "c", "version": "1"}}});
        let res = self.send(post(&init, None, user)).await;
        assert_eq!(res.status(), StatusCode::OK);
        let id = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let res = self.send(post(&initialized, Some(&id), user)).await;
        assert_eq!(res.status(), StatusCode::ACCEPTED);
        id
    }

    /// The session's standalone GET stream.
    async fn stream(&self, id: &str, user: Option<&str>) -> Stream {
        let mut b = Request::get("/mcp")
            .header("host", "localhost")
            .header("accept", "text/event-stream")
            .header("mcp-session-id", id);
        if let Some(u) = user {
            b = b.header("x-user", u);
        }
        let res = self.send(b.body(Full::default()).unwrap()).await;
        assert_eq!(res.status(), StatusCode::OK);
        Stream(res.into_body())
    }
}

fn post(msg: &Value, sid: Option<&str>, user: Option<&str>) -> Request<Full<Bytes>> {
    let mut b = Request::post("/mcp")
        .header("host", "localhost")
        .header("accept", "application/json, text/event-stream")
        .header("content-type", "application/json");
    if let Some(s) = sid {
        b = b.header("mcp-session-id", s);
    }
    if let Some(u) = user {
        b = b.header("x-user", u);
    }
    b.body(Full::new(Bytes::from(msg.to_string()))).unwrap()
}

/// An open GET stream.
struct Stream(ResponseBody);

impl Stream {
    /// The next JSON-RPC message on the stream, within the deadline.
    async fn next(&mut self) -> Value {
        loop {
            let f = tokio::time::timeout(DEADLINE, self.0.frame())
                .await
                .expect("a message in time")
                .expect("the stream is open")
                .unwrap();
            let Ok(data) = f.into_data() else { continue };
            let text = String::from_utf8(data.to_vec()).unwrap();
            for line in text.lines() {
                let json = line.strip_prefix("data: ");
                if let Some(v) = json.and_then(|j| serde_json::from_str::<Value>(j).ok()) {
                    return v;
                }
            }
        }
    }

    /// The next message's method: a sentinel sent after a filtered message shows, by coming
    /// first, that the filtered one never came.
    async fn next_method(&mut self) -> String {
        self.next().await["method"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Waits until `f` holds (polling), within the deadline.
async fn until(what: &str, f: impl Fn() -> bool) {
    tokio::time::timeout(DEADLINE, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("in time: {what}"));
}

mod cases {
    use super::*;

    /// Three nodes on one backend, two sessions each.
    async fn three(backend: &Backend) -> [Node; 3] {
        [
            Node::new(backend, "a").await,
            Node::new(backend, "b").await,
            Node::new(backend, "c").await,
        ]
    }

    pub(super) async fn notify_all_reaches_every_session_on_every_node(backend: Backend) {
        let nodes = three(&backend).await;
        let mut streams = Vec::new();
        for n in &nodes {
            for _ in 0..2 {
                let id = n.session(None).await;
                streams.push(n.stream(&id, None).await);
            }
        }
        let sent = nodes[1]
            .bus
            .notify_all(
                "notifications/message",
                Some(json!({"level": "info", "data": "hi"})),
            )
            .unwrap();
        assert_eq!(sent, 2, "node b's own sessions, delivered at once");
        for s in &mut streams {
            let m = s.next().await;
            assert_eq!(m["method"], "notifications/message");
            assert_eq!(m["params"]["data"], "hi");
        }
        assert_eq!(nodes[1].bus.stats().published, 1, "published once");
        for n in [&nodes[0], &nodes[2]] {
            until("delivered", || n.bus.stats().delivered == 2).await;
            assert_eq!(n.bus.stats().received, 1, "received once");
        }
    }

    pub(super) async fn notify_where_reaches_only_matching_sessions(backend: Backend) {
        let [a, b, _c] = three(&backend).await;
        let ada = b.session(Some("ada")).await;
        let bob = b.session(Some("bob")).await;
        let (mut ada_s, mut bob_s) = (
            b.stream(&ada, Some("ada")).await,
            b.stream(&bob, Some("bob")).await,
        );
        let watcher = b.handle.session(&bob).unwrap();
        assert!(watcher.subscribe_resource("file:///w"));
        a.bus
            .notify_where(
                &SessionFilter::new().with_principal("ada"),
                "notifications/message",
                Some(json!({"data": "ada only"})),
            )
            .unwrap();
        a.bus
            .notify_where(
                &SessionFilter::new().with_resource("file:///w"),
                "notifications/message",
                Some(json!({"data": "watchers"})),
            )
            .unwrap();
        a.bus
            .notify_all("notifications/tools/list_changed", None)
            .unwrap();
        let m = ada_s.next().await;
        assert_eq!(m["params"]["data"], "ada only");
        assert_eq!(
            ada_s.next_method().await,
            "notifications/tools/list_changed",
            "ada is no watcher"
        );
        let m = bob_s.next().await;
        assert_eq!(m["params"]["data"], "watchers", "bob is not ada");
        assert_eq!(
            bob_s.next_method().await,
            "notifications/tools/list_changed"
        );
    }

    pub(super) async fn a_notification_for_one_session_reaches_its_owner(backend: Backend) {
        let [a, b, c] = three(&backend).await;
        let id = c.session(None).await;
        let mut s = c.stream(&id, None).await;
        let d = a
            .bus
            .notify_session(
                &id,
                "notifications/message",
                Some(json!({"data": "for you"})),
            )
            .unwrap();
        assert_eq!(d, Delivery::Published);
        assert_eq!(s.next().await["params"]["data"], "for you");
        // On its own node it never leaves the node.
        let before = c.bus.stats().published;
        assert_eq!(
            c.bus
                .notify_session(&id, "notifications/message", None)
                .unwrap(),
            Delivery::Local
        );
        assert_eq!(c.bus.stats().published, before);
        assert_eq!(s.next_method().await, "notifications/message");
        // A node that does not hold the session drops it, counted.
        until("b counted the unknown session", || {
            b.bus.stats().dropped_unknown_session == 1
        })
        .await;
        assert_eq!(c.bus.stats().dropped_unknown_session, 0);
    }

    pub(super) async fn a_request_to_a_session_elsewhere_gets_its_answer(backend: Backend) {
        let [a, b, _c] = three(&backend).await;
        let id = b.session(None).await;
        let mut s = b.stream(&id, None).await;
        let answer = tokio::spawn(a.bus.request(&id, "roots/list", None));
        let req = s.next().await;
        assert_eq!(req["method"], "roots/list");
        let reply =
            json!({"jsonrpc": "2.0", "id": req["id"], "result": {"roots": [{"uri": "file:///r"}]}});
        assert_eq!(
            b.send(post(&reply, Some(&id), None)).await.status(),
            StatusCode::ACCEPTED
        );
        let got = tokio::time::timeout(DEADLINE, answer)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got["roots"][0]["uri"], "file:///r");
        // The client's error comes back as the session's error.
        let answer = tokio::spawn(a.bus.request(&id, "roots/list", None));
        let req = s.next().await;
        let reply =
            json!({"jsonrpc": "2.0", "id": req["id"], "error": {"code": -32601, "message": "no"}});
        assert_eq!(
            b.send(post(&reply, Some(&id), None)).await.status(),
            StatusCode::ACCEPTED
        );
        let got = tokio::time::timeout(DEADLINE, answer)
            .await
            .unwrap()
            .unwrap();
        let Err(BusError::Session(mcp_affinity::session::SendError::Rejected(e))) = got else {
            panic!("{got:?}")
        };
        assert_eq!(e["code"], -32601);
    }

    pub(super) async fn a_change_reaches_legacy_sessions_and_the_feed_on_every_node(
        backend: Backend,
    ) {
        let [a, b, c] = three(&backend).await;
        let mut feeds = [a.bus.changes(), b.bus.changes(), c.bus.changes()];
        let watcher = c.session(None).await;
        let other = c.session(None).await;
        assert!(
            c.handle
                .session(&watcher)
                .unwrap()
                .subscribe_resource("test://r")
        );
        let (mut w, mut o) = (c.stream(&watcher, None).await, c.stream(&other, None).await);
        b.bus
            .publish_change(Change::resource_updated("test://r"))
            .unwrap();
        b.bus.publish_change(Change::ToolsListChanged).unwrap();
        for f in &mut feeds {
            let first = tokio::time::timeout(DEADLINE, f.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(first, Change::resource_updated("test://r"));
            let second = tokio::time::timeout(DEADLINE, f.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(second, Change::ToolsListChanged);
        }
        let m = w.next().await;
        assert_eq!(
            (m["method"].as_str(), m["params"]["uri"].as_str()),
            (Some("notifications/resources/updated"), Some("test://r"))
        );
        assert_eq!(w.next_method().await, "notifications/tools/list_changed");
        assert_eq!(
            o.next_method().await,
            "notifications/tools/list_changed",
            "not subscribed: no update"
        );
    }

    pub(super) async fn a_message_too_large_is_refused_and_one_from_a_peer_is_dropped(
        backend: Backend,
    ) {
        let a = Node::with(backend.builder("a").with_max_message_bytes(2048)).await;
        let b = Node::with(backend.builder("b").with_max_message_bytes(8192)).await;
        let id = a.session(None).await;
        let mut s = a.stream(&id, None).await;
        let big = json!({"data": "x".repeat(4096)});
        // Refused, for every node: a's own sessions do not get it either (the sentinel below
        // comes first).
        assert_eq!(
            a.bus.notify_all("notifications/message", Some(big.clone())),
            Err(BusError::TooLarge)
        );
        // b may send it; a drops it on receipt, counted, and takes the next one.
        b.bus
            .notify_all("notifications/message", Some(big))
            .unwrap();
        b.bus
            .notify_all("notifications/tools/list_changed", None)
            .unwrap();
        assert_eq!(s.next_method().await, "notifications/tools/list_changed");
        assert_eq!(a.bus.stats().dropped_oversized, 1);
    }
}

/// One `#[tokio::test]` per case, each on a fresh backend from `$backend`.
macro_rules! suite {
    ($backend:expr) => {
        suite!(
            $backend;
            notify_all_reaches_every_session_on_every_node,
            notify_where_reaches_only_matching_sessions,
            a_notification_for_one_session_reaches_its_owner,
            a_request_to_a_session_elsewhere_gets_its_answer,
            a_change_reaches_legacy_sessions_and_the_feed_on_every_node,
            a_message_too_large_is_refused_and_one_from_a_peer_is_dropped,
        );
    };
    ($backend:expr; $($case:ident),+ $(,)?) => {
        use super::*;
        $(
            #[tokio::test]
            async fn $case() {
                cases::$case($backend).await;
            }
        )+
    };
}

mod memory {
    suite!(Backend::Memory(MemoryBus::new()));
}

mod redis_single {
    suite!(Backend::Redis(crate::redis_support::RedisServer::start()));
}

#[cfg(feature = "redis-cluster")]
mod redis_cluster {
    suite!(Backend::Cluster(crate::redis_support::RedisCluster::start(
        3
    )));
}

/// What only a real Redis can do to the bus: junk from another client, a restart.
mod redis_faults {
    use super::*;
    use crate::redis_support::RedisServer;

    #[tokio::test]
    async fn junk_on_the_channel_is_dropped_and_counted() {
        let redis = RedisServer::start();
        let backend = Backend::Redis(redis);
        let a = Node::new(&backend, "a").await;
        let b = Node::new(&backend, "b").await;
        let id = a.session(None).await;
        let mut s = a.stream(&id, None).await;
        let Backend::Redis(redis) = &backend else {
            unreachable!()
        };
        for junk in [
            "not json",
            r#"{"v":9,"o":"x","b":{"chg":{"c":"t"}}}"#,
            r#"{"v":1,"o":"x","b":{"nope":{}}}"#,
        ] {
            let _: i64 = redis.cmd(&["PUBLISH", "mcp:bus", junk]);
        }
        // A message for a session nobody holds.
        b.bus
            .notify_session("nobody", "notifications/message", None)
            .unwrap();
        b.bus
            .notify_all("notifications/tools/list_changed", None)
            .unwrap();
        assert_eq!(s.next_method().await, "notifications/tools/list_changed");
        let st = a.bus.stats();
        assert_eq!((st.dropped_malformed, st.dropped_unknown_session), (3, 1));
    }

    #[tokio::test]
    async fn a_restarted_redis_is_resubscribed_and_nothing_errs() {
        let backend = Backend::Redis(RedisServer::start());
        let a = Node::new(&backend, "a").await;
        let b = Node::new(&backend, "b").await;
        let id = b.session(None).await;
        let mut s = b.stream(&id, None).await;
        let Backend::Redis(mut redis) = backend else {
            unreachable!()
        };
        redis.restart();
        until("a saw the disconnect", || a.bus.stats().disconnects >= 1).await;
        // While Redis comes back, publishing never errs for the caller.
        a.wait_connected().await;
        b.wait_connected().await;
        // Messages sent once both are subscribed again arrive.
        let mut got = false;
        for _ in 0..200 {
            a.bus
                .notify_all("notifications/message", Some(json!({"data": "after"})))
                .unwrap();
            let m = tokio::time::timeout(Duration::from_millis(50), s.next()).await;
            if let Ok(m) = m {
                assert_eq!(m["params"]["data"], "after");
                got = true;
                break;
            }
        }
        assert!(got, "delivered after the restart");
        assert!(b.bus.stats().disconnects >= 1);
        drop(redis);
    }
}

/// The in-process bus under a flood: a node that falls behind loses messages, counted, and
/// goes on; the publisher never waits.
mod memory_overflow {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn a_node_that_falls_behind_drops_counted_and_goes_on() {
        let backend = Backend::Memory(MemoryBus::new());
        let a = Node::new(&backend, "a").await;
        let b = Node::new(&backend, "b").await;
        let id = b.session(None).await;
        let mut s = b.stream(&id, None).await;
        // No await between the publishes: b's receiving task cannot run meanwhile.
        let flood = mcp_affinity::bus::MEMORY_BUS_CAPACITY + 100;
        for _ in 0..flood {
            a.bus
                .publish_change(Change::resource_updated("test://nobody-watches"))
                .unwrap();
        }
        a.bus
            .notify_all("notifications/tools/list_changed", None)
            .unwrap();
        assert_eq!(s.next_method().await, "notifications/tools/list_changed");
        let st = b.bus.stats();
        assert!(st.dropped_overflow >= 100, "{st:?}");
        assert_eq!(st.received + st.dropped_overflow, flood as u64 + 1);
    }
}
