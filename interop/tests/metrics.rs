//! The layers' metrics, read back from a real recorder (the Prometheus exporter's, installed
//! once for this test binary): two nodes in one process over real TCP (affinity → registry →
//! transport → the test handler each, sharing a `MemoryStore`), and the metrics that a session
//! open, a stream, misroutes, rejections, a forward and an adoption move.
//!
//! The recorder is global, so the tests of this file take turns (one lock) and compare
//! values before and after what they do.
#![cfg(feature = "metrics")]

#[path = "support/mcp.rs"]
mod support;

use std::{collections::BTreeMap, net::SocketAddr, sync::OnceLock, time::Duration};

use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
    service::TowerToHyperService,
};
use mcp_affinity::{
    SessionAffinityLayer, SseTransportLayer,
    handler::{HandlerRequest, handler_fn},
    metrics as m,
    registry::{MemoryStore, RegistryHandle, RegistryStore, SessionRegistryLayer},
    session::{NodeTag, RequestContext},
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde_json::{Value, json};
use support::{Client, Probe};
use tokio::net::TcpListener;

const V: &str = "2025-11-25";

/// The recorder of this test binary, installed on first use.
fn recorder() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .install_recorder()
            .expect("the only recorder of this binary");
        m::describe();
        handle
    })
}

/// One test at a time: they share the recorder.
static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The value of the sample `name{labels}` (labels in any order); 0 when absent.
fn value(name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = recorder().render();
    let want: BTreeMap<&str, &str> = labels.iter().copied().collect();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, v)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            continue;
        }
        let got: BTreeMap<&str, &str> = rest
            .trim_end_matches('}')
            .split(',')
            .filter(|p| !p.is_empty())
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        if got == want {
            return v.parse().expect("a number");
        }
    }
    0.0
}

/// What `f` changed the sample by.
async fn delta<T>(name: &str, labels: &[(&str, &str)], f: impl AsyncFnOnce() -> T) -> (f64, T) {
    let before = value(name, labels);
    let out = f().await;
    (value(name, labels) - before, out)
}

/// One node: affinity → registry → transport → the test handler, on its own listener (its
/// internal address, where the other node forwards).
struct Node {
    addr: SocketAddr,
    registry: RegistryHandle<MemoryStore>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Node {
    async fn start(store: MemoryStore, name: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let registry = SessionRegistryLayer::builder(store, name)
            .with_internal_address(addr)
            .with_liveness(Duration::from_secs(600), Duration::from_secs(300))
            .build()
            .expect("registry");
        let affinity = SessionAffinityLayer::new(NodeTag::derive(name));
        let transport = SseTransportLayer::builder()
            .with_id_generator(affinity.id_generator())
            .with_max_body_bytes(4096)
            .build()
            .expect("transport");
        let (probe, _) = Probe::new();
        let handler = handler_fn(move |req: HandlerRequest, cx: RequestContext| {
            support::handle_request(probe.clone(), req, cx)
        });
        let svc = tower::ServiceBuilder::new()
            .layer(affinity)
            .layer(registry.clone())
            .layer(transport)
            .service(handler);
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
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
                    _ = &mut stopped => {
                        drop(listener);
                        connections.shutdown().await;
                        return;
                    }
                }
            }
        });
        let registry = registry.handle();
        assert!(
            registry.announce(Duration::from_secs(5)).await,
            "liveness written"
        );
        Self {
            addr,
            registry,
            stop: Some(stop),
            task,
        }
    }

    fn client(&self, session: Option<&str>) -> Client {
        Client {
            http: support::http_client(),
            url: format!("http://{}/mcp", self.addr),
            session: session.map(str::to_owned),
        }
    }

    /// A session initialized here, its record written; its id.
    async fn session(&self) -> String {
        let mut c = self.client(None);
        c.connect(V).await;
        assert!(self.registry.flush(Duration::from_secs(10)).await);
        c.session.expect("session id")
    }

    /// Stops serving and withdraws the liveness record: a node that went away.
    async fn gone(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
            let _ = (&mut self.task).await;
        }
        let store = self.registry.store();
        assert!(
            store
                .withdraw(self.registry.node(), self.registry.incarnation())
                .await
                .expect("store answers")
        );
    }
}

fn whoami() -> Value {
    json!({"jsonrpc": "2.0", "id": 2, "method": "ping"})
}

async fn post(c: &Client, body: &Value) -> reqwest::Response {
    c.post(body)
        .header("mcp-protocol-version", V)
        .send()
        .await
        .expect("POST answered")
}

#[tokio::test]
async fn sessions_streams_and_rejections() {
    let _turn = TURN.lock().await;
    recorder();
    let a = Node::start(MemoryStore::new(), "metrics-a").await;

    // A session opens: the gauge and the counter move by one.
    let (opened, id) = delta(m::SESSIONS_OPENED, &[("how", "initialize")], async || {
        a.session().await
    })
    .await;
    assert_eq!(opened, 1.0);
    assert!(value(m::SESSIONS, &[]) >= 1.0);

    // A GET stream is open while its body is.
    let c = a.client(Some(&id));
    let before = value(m::STREAMS, &[("era", "legacy")]);
    let stream = c
        .get()
        .header("mcp-protocol-version", V)
        .send()
        .await
        .expect("GET");
    assert_eq!(stream.status(), 200);
    assert_eq!(value(m::STREAMS, &[("era", "legacy")]) - before, 1.0);
    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while value(m::STREAMS, &[("era", "legacy")]) > before {
        assert!(tokio::time::Instant::now() < deadline, "stream gauge back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Rejections by kind: a foreign Origin, an unsupported protocol version, a body too large.
    let t = |kind| [("layer", "transport"), ("kind", kind)];
    let (n, res) = delta(m::REJECTIONS, &t("origin_not_allowed"), async || {
        c.post(&whoami())
            .header("origin", "https://evil.example")
            .send()
            .await
            .unwrap()
    })
    .await;
    assert_eq!((n, res.status().as_u16()), (1.0, 403));
    let (n, res) = delta(m::REJECTIONS, &t("unsupported_version"), async || {
        c.post(&whoami())
            .header("mcp-protocol-version", "1999-01-01")
            .send()
            .await
            .unwrap()
    })
    .await;
    assert_eq!((n, res.status().as_u16()), (1.0, 400));
    let big =
        json!({"jsonrpc": "2.0", "id": 3, "method": "ping", "params": {"pad": "x".repeat(8192)}});
    let (n, res) = delta(m::REJECTIONS, &t("body_too_large"), async || {
        post(&c, &big).await
    })
    .await;
    assert_eq!((n, res.status().as_u16()), (1.0, 413));

    // A held session's JSON answer moves none of them.
    let quiet = [
        value(m::REJECTIONS, &t("origin_not_allowed")),
        value(m::SESSIONS_OPENED, &[("how", "initialize")]),
    ];
    assert_eq!(post(&c, &whoami()).await.status(), 200);
    assert_eq!(
        quiet,
        [
            value(m::REJECTIONS, &t("origin_not_allowed")),
            value(m::SESSIONS_OPENED, &[("how", "initialize")]),
        ]
    );

    // DELETE closes it.
    let (closed, res) = delta(m::SESSIONS_CLOSED, &[("reason", "deleted")], async || {
        c.delete()
            .header("mcp-protocol-version", V)
            .send()
            .await
            .unwrap()
    })
    .await;
    assert!(res.status().is_success());
    assert_eq!(closed, 1.0);

    // An id nobody knows: the registry's `404` says `unknown`.
    let unknown = [("layer", "registry"), ("reason", "unknown")];
    let (n, res) = delta(m::MISROUTES, &unknown, async || {
        post(&a.client(Some("nobody-knows-this-id")), &whoami()).await
    })
    .await;
    assert_eq!((n, res.status().as_u16()), (1.0, 404));

    // The documented names are what the recorder shows (with their descriptions).
    let text = recorder().render();
    for name in [
        m::SESSIONS,
        m::SESSIONS_OPENED,
        m::SESSIONS_CLOSED,
        m::STREAMS,
        m::REJECTIONS,
        m::MISROUTES,
        m::REGISTRY_QUEUE,
        m::REGISTRY_WRITES,
    ] {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} in {text}"
        );
    }
    assert!(text.contains(&format!("# HELP {} ", m::SESSIONS)), "{text}");
    if std::env::var_os("SHOW_METRICS").is_some() {
        println!("{text}");
    }
}

#[tokio::test]
async fn misroute_forward_and_adoption() {
    let _turn = TURN.lock().await;
    recorder();
    let store = MemoryStore::new();
    let mut a = Node::start(store.clone(), "metrics-fa").await;
    let b = Node::start(store.clone(), "metrics-fb").await;
    let id = a.session().await;
    let via_b = b.client(Some(&id));

    // B sees A's tag in the id (an affinity misroute) and forwards the request to A.
    let misroute = [("layer", "affinity"), ("reason", "session_id")];
    let forwards = [("outcome", "ok")];
    let (before_m, before_f, before_t) = (
        value(m::MISROUTES, &misroute),
        value(m::FORWARDS, &forwards),
        value(&format!("{}_count", m::FORWARD_SECONDS), &[]),
    );
    assert_eq!(post(&via_b, &whoami()).await.status(), 200);
    assert_eq!(value(m::MISROUTES, &misroute) - before_m, 1.0);
    assert_eq!(value(m::FORWARDS, &forwards) - before_f, 1.0);
    assert_eq!(
        value(&format!("{}_count", m::FORWARD_SECONDS), &[]) - before_t,
        1.0
    );
    assert_eq!(b.registry.stats().forwarded, 1);

    // A goes away: B adopts the session on its next request.
    a.gone().await;
    let won = [("outcome", "won")];
    let restored = [("how", "restored")];
    let (before_w, before_r, before_t) = (
        value(m::ADOPTIONS, &won),
        value(m::SESSIONS_OPENED, &restored),
        value(&format!("{}_count", m::ADOPTION_SECONDS), &[]),
    );
    assert_eq!(post(&via_b, &whoami()).await.status(), 200);
    assert_eq!(b.registry.stats().adopted, 1);
    assert_eq!(value(m::ADOPTIONS, &won) - before_w, 1.0);
    assert_eq!(value(m::SESSIONS_OPENED, &restored) - before_r, 1.0);
    assert_eq!(
        value(&format!("{}_count", m::ADOPTION_SECONDS), &[]) - before_t,
        1.0
    );
}
