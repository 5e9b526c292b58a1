//! A complete MCP server for both protocol eras on one endpoint, built from this crate's three
//! layers and a plain async handler: the server the official conformance suite
//! (`@modelcontextprotocol/conformance`) runs against.
//!
//! ```text
//! request ─► SessionAffinityLayer ─► SessionRegistryLayer ─► SseTransportLayer ─► TaskLayer ─► handle()
//!            cookie, node tag         embedded or Redis        sessions, SSE        tasks/*      this file
//!            └──────────────── McpStack::builder(node, store) ───────────────┘
//! ```
//!
//! ```text
//! cargo run --example everything -- --listen 127.0.0.1:8080
//! cargo run --example everything -- --listen 127.0.0.1:8081 --node n2 --redis redis://127.0.0.1/
//! ```
//!
//! Options (environment variables in brackets):
//! - `--listen ADDR` (`MCP_LISTEN`, default `127.0.0.1:8080`): the MCP endpoint is `/mcp`.
//! - `--node NAME` (`MCP_NODE`, default `n1`): the node name behind the affinity tag and the
//!   session registry's records.
//! - `--state-key SECRET` (`MCP_STATE_KEY`, default: random per process): the key that signs
//!   `requestState` in `input_required` results. Nodes of one fleet share it, so a retry can land
//!   on any node.
//! - `--redis URL` (`MCP_REDIS_URL`): the session registry in Redis, shared by the nodes of a
//!   cluster (a request for another node's session is forwarded to it, or the session adopted
//!   when that node is gone); without it, the embedded in-memory registry of a lone node.
//! - `--internal-addr ADDR` (`MCP_INTERNAL_ADDR`, default: the address the node listens on):
//!   where the other nodes forward requests for this node's sessions.
//! - `--drain-timeout SECS` (`MCP_DRAIN_TIMEOUT`, default 10): the longest a SIGTERM drain
//!   waits for in-flight requests to finish (and, with Redis, for the other nodes to stop
//!   forwarding here).
//! - `--tagged-tasks` (`MCP_TAGGED_TASKS=1`, with `--redis`): task ids carry the node name
//!   (`<node>.<32 hex>`), so a balancer can route `tasks/*` on `Mcp-Name` to the node running
//!   the task (`examples/deploy/haproxy-header.cfg` does, for nodes named as its servers); any
//!   node answers them anyway, from the shared store.
//! - `--write-through` (`MCP_WRITE_THROUGH=1`): a `GET` stream's event is sent once the store
//!   holds it (the shared event log's write-through), so a node killed outright never loses an
//!   event a client has seen; default write-behind (sent at once, stored within milliseconds).
//!
//! Routes besides `/mcp`: `/healthz` answers `200 {"status":"ok","bus":"ok","tasks":{…}}` while
//! the node serves and `503 {"status":"draining",…}` once a drain began; `bus` says
//! `disconnected` while the cluster bus reconnects to Redis (the node still serves), and
//! `tasks` is `{"store":"ok"|"unavailable","running":N}` (the task store: Redis with
//! `--redis`, where every node reads every task).
//!
//! On SIGTERM (or SIGINT) the node drains, in the order of [`StackHandle::shutdown`]:
//! `subscriptions/listen` streams end with their final result, the liveness record says
//! `draining` (the other nodes adopt this node's sessions on their next request), `/healthz`
//! answers `503`, GET streams end with a `retry:` hint; requests keep being served until none
//! is running and, with Redis, none arrived for the stack's default quiet period (1.5 s: other
//! nodes may still forward here), or the drain timeout passed; then the sessions close (their
//! records stay for the adopters) and the node exits. Without Redis there is nobody to wait
//! for: the quiet period is zero.
//!
//! What it shows:
//! - **Legacy clients** (`2025-03-26` … `2025-11-25`) `initialize` a session. Tools that need the
//!   client (sampling, elicitation) send a server→client request on the call's own SSE stream
//!   ([`RequestContext::request`]); `test_reconnection` closes its stream mid-call
//!   ([`RequestContext::close_stream`], SEP-1699) and the client resumes with `GET` +
//!   `Last-Event-ID`. List changes, and updates of the resources a session subscribed to
//!   ([`Session::subscribe_resource`]), reach its standalone `GET` stream through the cluster
//!   bus, on whichever node holds it.
//! - **Modern clients** (`2026-07-28`) send stateless requests. The same tools ask for input with
//!   an `input_required` result and a signed `requestState` (multi round-trip requests, SEP-2322);
//!   `subscriptions/listen` is a request that never ends on its own: it acknowledges, then
//!   forwards the changes its filter asks for until the client goes away (the transport drops the
//!   handler future then).
//! - One change feed feeds both, cluster-wide: the cluster bus ([`ClusterBus`]: Redis pub/sub
//!   with `--redis`, this node alone without). The `test_trigger_*` tools and a 3-second ticker
//!   on `test://watched-resource` publish a change once ([`ClusterBus::publish_change`]); every
//!   node delivers it to its legacy sessions and its listen streams ([`ClusterBus::changes`]).
//!   Each node runs its own ticker, so with N nodes the watched resource changes N times per
//!   period.
//! - **Tasks** (SEP-2663, modern clients that opt in per request): [`TaskLayer`] answers
//!   `tasks/get|update|cancel` and advertises the extension in `server/discover`; the
//!   conformance fixtures `slow_compute`, `failing_job`, `protocol_error_job`,
//!   `confirm_delete`, `multi_input` and `test_tool_with_task` (an `input_required` round,
//!   then a task) start tasks with [`Tasks::start`]; `greet` never is one.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{Router, routing::get};
use mcp_affinity::{
    McpStack, StackHandle,
    bus::{Change, ClusterBus},
    handler::{ErrorObject, HandlerRequest, handler_fn},
    protocol::{Era, ProtocolVersion, RequestId, codes},
    registry::{MemoryStore, RedisStore, RegistryStore},
    session::{Durability, RequestContext, Session},
    stack::DEFAULT_QUIET_PERIOD,
    tasks::{MemoryTaskStore, RedisTaskStore, TaskContext, TaskLayer, TaskManager, Tasks},
    transport::HostPolicy,
};
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, watch};
use tower::ServiceBuilder;

/// What a handler returns: a JSON-RPC result or error.
type Reply = Result<Value, ErrorObject>;

const SERVER_NAME: &str = "mcp-affinity-everything";
/// A 1×1 PNG.
const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==";
/// A minimal WAV file.
const WAV: &str = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA=";
const WATCHED: &str = "test://watched-resource";
/// How long a signed `requestState` stays valid.
const STATE_TTL: Duration = Duration::from_secs(600);

// ---------------------------------------------------------------------------------------------
// main
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
struct Args {
    listen: SocketAddr,
    node: String,
    state_key: Option<String>,
    redis: Option<String>,
    internal_addr: Option<SocketAddr>,
    drain_timeout: Duration,
    /// Send a standalone stream's event only once the store holds it.
    write_through: bool,
    /// Task ids carry the node name (`<node>.<hex>`), for a balancer routing on `Mcp-Name`.
    tagged_tasks: bool,
}

fn parse_args() -> Result<Args, String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut listen = std::env::var("MCP_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let mut node = std::env::var("MCP_NODE").unwrap_or_else(|_| "n1".into());
    let mut state_key = std::env::var("MCP_STATE_KEY").ok();
    let mut redis = env("MCP_REDIS_URL");
    let mut internal_addr = env("MCP_INTERNAL_ADDR");
    let mut drain_timeout = env("MCP_DRAIN_TIMEOUT").unwrap_or_else(|| "10".into());
    let mut write_through = env("MCP_WRITE_THROUGH").is_some_and(|v| v != "0");
    let mut tagged_tasks = env("MCP_TAGGED_TASKS").is_some_and(|v| v != "0");
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => listen = value()?,
            "--node" => node = value()?,
            "--state-key" => state_key = Some(value()?),
            "--redis" => redis = Some(value()?),
            "--internal-addr" => internal_addr = Some(value()?),
            "--drain-timeout" => drain_timeout = value()?,
            "--write-through" => write_through = true,
            "--tagged-tasks" => tagged_tasks = true,
            "-h" | "--help" => {
                println!(
                    "usage: everything [--listen ADDR] [--node NAME] [--state-key SECRET] \
                     [--redis URL] [--internal-addr ADDR] [--drain-timeout SECS] \
                     [--write-through] [--tagged-tasks]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    let listen = listen
        .parse()
        .map_err(|e| format!("--listen {listen}: {e}"))?;
    let internal_addr = internal_addr
        .map(|a| a.parse().map_err(|e| format!("--internal-addr {a}: {e}")))
        .transpose()?;
    let drain_timeout = drain_timeout
        .parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("--drain-timeout {drain_timeout}: expected seconds"))?;
    Ok(Args {
        listen,
        node,
        state_key,
        redis,
        internal_addr,
        drain_timeout,
        write_through,
        tagged_tasks,
    })
}

/// How long the open connections may take to close once the node has stopped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,mcp_affinity=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = parse_args().map_err(|e| {
        eprintln!("{e}");
        e
    })?;
    match args.redis.clone() {
        Some(url) => {
            let store = RedisStore::builder(&url).build_lazy()?;
            // The cluster bus on the same Redis: pub/sub, one connection per node.
            let bus = ClusterBus::builder(args.node.clone())
                .with_redis(url.clone())
                .build()?;
            // Tasks in the same Redis: every node reads every task, and updates and cancels
            // reach the running node over the bus.
            let mut tasks = TaskManager::builder(
                args.node.clone(),
                RedisTaskStore::builder(&url).build_lazy()?,
            )
            .with_bus(&bus);
            if args.tagged_tasks {
                // `examples/deploy/haproxy-header.cfg` routes `tasks/*` on this tag.
                tasks = tasks.with_id_tag(args.node.clone());
            }
            let tasks = tasks.build()?;
            tracing::info!("session registry, task store and cluster bus: Redis");
            // Other nodes may forward here for a while after the drain began.
            serve(args, store, bus, tasks, DEFAULT_QUIET_PERIOD).await
        }
        None => {
            tracing::info!("session registry: embedded (in memory)");
            let bus = ClusterBus::local(args.node.clone());
            let tasks = TaskManager::builder(args.node.clone(), MemoryTaskStore::new()).build()?;
            // One node and no balancer: a drain has nobody to wait for.
            serve(args, MemoryStore::new(), bus, tasks, Duration::ZERO).await
        }
    }
}

/// Serves the node on `store` until SIGTERM or SIGINT, then drains it (`quiet`: the quiet
/// period of the drain) and exits.
async fn serve<R: RegistryStore>(
    args: Args,
    store: R,
    bus: ClusterBus,
    tasks: TaskManager,
    quiet: Duration,
) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let local = listener.local_addr()?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let server = Server::new(args.state_key.as_deref(), stop_rx, bus.clone());
    server.tick_watched_resource(Duration::from_secs(3));

    // The three layers in one call, outermost first: affinity (cookie, node tag in session
    // ids), the session registry (embedded or Redis), the transport (Host allow-list: localhost
    // only, DNS-rebinding protection for a local server). A request another node forwards
    // here keeps the client's `Host`, which that node checked against the same list, so an
    // internal address that is not localhost needs no entry of its own.
    let stack = McpStack::builder(args.node.clone(), store)
        // Where the other nodes forward this node's sessions' requests: an internal address
        // in a real deployment (here, by default, the one the node listens on).
        .with_internal_address(args.internal_addr.unwrap_or(local))
        .with_bus(bus)
        // `--write-through`: a GET stream's event goes out once the store holds it, so a
        // node killed outright never loses an event a client has seen (each waits for one
        // batched write). Default: write-behind.
        .with_event_log_durability(if args.write_through {
            Durability::WriteThrough
        } else {
            Durability::WriteBehind
        })
        // A session adopted from another node gets its state back (the default log level).
        .with_transport(|t| {
            t.with_allowed_hosts(HostPolicy::localhost())
                .with_on_restore(|session: &Session| {
                    session.insert(SessionState::default());
                })
        })
        .with_quiet_period(quiet)
        .build()?;
    let handle = stack.handle();
    // Tasks (SEP-2663): between the transport and the handler.
    let node_name = axum::http::HeaderValue::from_str(&args.node)
        .map_err(|e| format!("--node {}: {e}", args.node))?;
    let mcp = ServiceBuilder::new()
        // Which node answered (as `examples/node.rs`): what a balancer's routing is checked by.
        .map_response(move |mut res: axum::http::Response<_>| {
            res.headers_mut().insert("x-mcp-node", node_name.clone());
            res
        })
        .layer(stack)
        .layer(TaskLayer::new(tasks.clone()))
        .service(handler_fn(move |req, cx| {
            let server = server.clone();
            async move { server.handle(req, cx).await }
        }));
    let health = handle.clone();
    let app = Router::new()
        .route(
            "/healthz",
            get(move || {
                let health = Health::of(&health);
                let tasks = tasks.clone();
                async move {
                    let node = tasks.node().to_owned();
                    health.with_tasks(&tasks).await.response(&node)
                }
            }),
        )
        .route_service("/mcp", mcp);

    // The other nodes forward here from the first request on.
    if !handle.announce(Duration::from_secs(2)).await {
        tracing::warn!(
            "liveness record not written yet (store unreachable?); retried in the background"
        );
    }
    println!("MCP everything server listening on http://{local}/mcp");
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        // Small JSON-RPC answers would otherwise wait on Nagle + delayed ACK.
        let _ = tcp.set_nodelay(true);
    });
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<()>();
    let drain_timeout = args.drain_timeout;
    // The server keeps accepting while the graceful-shutdown future runs: requests that
    // arrive during the drain are served (forwarded here, or told to retry elsewhere).
    let serving = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown_signal().await;
        // Listen streams end with a final result (they count as no running handler, so
        // nothing else would end them before the connections close); then the drain.
        let _ = stop_tx.send(true);
        let report = handle.shutdown(drain_timeout).await;
        tracing::info!(?report, "stopped; draining connections");
        let _ = stopped_tx.send(());
    });
    tokio::select! {
        served = serving.into_future() => served?,
        () = async {
            // A dropped sender means the server ended first (that branch wins then).
            if stopped_rx.await.is_ok() {
                tokio::time::sleep(CLOSE_TIMEOUT).await;
            } else {
                std::future::pending::<()>().await;
            }
        } => tracing::warn!("connections still open after {CLOSE_TIMEOUT:?}; exiting"),
    }
    Ok(())
}

/// What `/healthz` answers: `200 {"status":"ok","bus":"ok","tasks":{"store":"ok","running":0}}` while the node serves, `503
/// {"status":"draining",…}` once a drain began; `bus` is `disconnected` while the cluster
/// bus reconnects to Redis. Each new field of the node's health is one more field here, read
/// in [`Health::of`] and written in [`Health::to_json`].
///
/// The registry's own state is not reported: neither `StackHandle` nor `RegistryHandle` says
/// whether the store is reachable now (only counters such as `store_errors`, which never go
/// back down).
#[derive(Debug, Clone, Copy)]
struct Health {
    draining: bool,
    /// The cluster bus is subscribed (always, for the embedded one).
    bus: bool,
    /// The task store answered a ping within 500 ms.
    task_store: bool,
    /// Tasks running on this node.
    tasks_running: usize,
}

impl Health {
    fn of<R>(handle: &StackHandle<R>) -> Self {
        Self {
            draining: handle.is_draining(),
            bus: handle.bus().is_connected(),
            task_store: true,
            tasks_running: 0,
        }
    }

    /// Adds the tasks' state: how many run here, and whether their store answers.
    async fn with_tasks(mut self, tasks: &TaskManager) -> Self {
        let ping = tokio::time::timeout(Duration::from_millis(500), tasks.ping()).await;
        self.task_store = matches!(ping, Ok(Ok(())));
        self.tasks_running = tasks.running();
        self
    }

    fn to_json(self) -> Value {
        let status = if self.draining { "draining" } else { "ok" };
        // A bus that is reconnecting costs cross-node notifications, not the node's service:
        // reported, and no reason for the balancer to stop routing here.
        let bus = if self.bus { "ok" } else { "disconnected" };
        // Like the bus, an unreachable task store costs tasks, not the node's service.
        let store = if self.task_store { "ok" } else { "unavailable" };
        json!({
            "status": status,
            "bus": bus,
            "tasks": { "store": store, "running": self.tasks_running }
        })
    }

    /// The answer, with `x-mcp-node: <node>` (which node answered, as `examples/node.rs`).
    fn response(self, node: &str) -> impl axum::response::IntoResponse + use<> {
        let code = if self.draining {
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        } else {
            axum::http::StatusCode::OK
        };
        (
            code,
            [
                ("content-type", "application/json".to_owned()),
                ("x-mcp-node", node.to_owned()),
            ],
            self.to_json().to_string(),
        )
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

// ---------------------------------------------------------------------------------------------
// The server: shared state and the method dispatch
// ---------------------------------------------------------------------------------------------

#[derive(Clone)]
struct Server {
    inner: Arc<Inner>,
}

struct Inner {
    /// The cluster bus: every change, published once, reaches every legacy session and every
    /// modern listen stream of every node.
    bus: ClusterBus,
    /// Signs and checks `requestState`.
    seal: Sealer,
    /// `test_dynamic_tool` / `test_dynamic_prompt` are listed (toggled by the trigger tools).
    dynamic_tool: AtomicBool,
    dynamic_prompt: AtomicBool,
    /// Turns `true` on shutdown: listen streams then finish with a result.
    stop: watch::Receiver<bool>,
}

impl Server {
    fn new(state_key: Option<&str>, stop: watch::Receiver<bool>, bus: ClusterBus) -> Self {
        Self {
            inner: Arc::new(Inner {
                bus,
                seal: Sealer::new(state_key),
                dynamic_tool: AtomicBool::new(false),
                dynamic_prompt: AtomicBool::new(false),
                stop,
            }),
        }
    }

    fn publish(&self, change: Change) {
        // Delivered on this node and published once for the others (Redis down: this node's
        // and the others' clients miss it, the call itself does not fail).
        if let Err(e) = self.inner.bus.publish_change(change) {
            tracing::warn!(error = %e, "change not published");
        }
    }

    /// `test://watched-resource` "changes" every `period`.
    fn tick_watched_resource(&self, period: Duration) {
        let server = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.tick().await;
            loop {
                tick.tick().await;
                server.publish(Change::resource_updated(WATCHED));
            }
        });
    }

    /// One JSON-RPC request or notification, in either era.
    async fn handle(&self, req: HandlerRequest, cx: RequestContext) -> Reply {
        let call = Call {
            server: self,
            req: &req,
            cx: &cx,
        };
        let method = req.method.as_str();
        let result = match method {
            // Lifecycle. The transport answers the methods the modern era removed (initialize,
            // ping, logging/setLevel, resources/(un)subscribe) with 404 for modern requests.
            "initialize" => call.initialize(),
            "server/discover" if call.modern() => Ok(discover()),
            "ping" => Ok(json!({})),
            "logging/setLevel" => call.set_log_level(),
            // Features.
            "tools/list" => Ok(json!({ "tools": self.tools(cx.era()) })),
            "tools/call" => call.call_tool().await,
            "prompts/list" => Ok(json!({ "prompts": self.prompts(cx.era()) })),
            "prompts/get" => call.get_prompt(),
            "resources/list" => Ok(json!({ "resources": resources() })),
            "resources/templates/list" => Ok(json!({ "resourceTemplates": resource_templates() })),
            "resources/read" => call.read_resource(),
            "resources/subscribe" => call.subscribe(true),
            "resources/unsubscribe" => call.subscribe(false),
            "completion/complete" => Ok(complete(&req.params)),
            "subscriptions/listen" if call.modern() => call.listen().await,
            m if m.starts_with("notifications/") => Ok(json!({})),
            other => Err(ErrorObject::method_not_found(other)),
        }?;
        Ok(finish(cx.era(), method, result))
    }
}

/// Adds what every `2026-07-28` result carries: `resultType`, and caching hints (SEP-2549) on
/// the cacheable results.
fn finish(era: Era, method: &str, mut result: Value) -> Value {
    if era != Era::Modern {
        return result;
    }
    if let Some(obj) = result.as_object_mut() {
        obj.entry("resultType").or_insert(json!("complete"));
        let hints = match method {
            "server/discover" => Some((60_000, "public")),
            "tools/list" | "prompts/list" | "resources/list" | "resources/templates/list" => {
                Some((10_000, "public"))
            }
            "resources/read" => Some((0, "public")),
            _ => None,
        };
        if let Some((ttl_ms, scope)) = hints {
            obj.entry("ttlMs").or_insert(json!(ttl_ms));
            obj.entry("cacheScope").or_insert(json!(scope));
        }
    }
    result
}

fn server_info() -> Value {
    json!({ "name": SERVER_NAME, "version": env!("CARGO_PKG_VERSION") })
}

fn capabilities() -> Value {
    json!({
        "tools": { "listChanged": true },
        "prompts": { "listChanged": true },
        "resources": { "subscribe": true },
        "logging": {},
        "completions": {}
    })
}

/// `server/discover` (2026-07-28): versions, capabilities, and who we are in `_meta`.
fn discover() -> Value {
    let modern: Vec<&str> = ProtocolVersion::ALL
        .iter()
        .filter(|v| v.era() == Era::Modern)
        .map(|v| v.as_str())
        .collect();
    json!({
        "supportedVersions": modern,
        "capabilities": capabilities(),
        "instructions": "Conformance test server of the mcp-affinity crate.",
        "_meta": { "io.modelcontextprotocol/serverInfo": server_info() }
    })
}

/// The request being handled, with the helpers its handlers share.
struct Call<'a> {
    server: &'a Server,
    req: &'a HandlerRequest,
    cx: &'a RequestContext,
}

impl Call<'_> {
    fn modern(&self) -> bool {
        self.cx.era() == Era::Modern
    }

    fn param(&self, name: &str) -> Option<&Value> {
        self.req.params.get(name)
    }

    fn str_param(&self, name: &str) -> Result<&str, ErrorObject> {
        self.param(name)
            .and_then(Value::as_str)
            .ok_or_else(|| ErrorObject::invalid_params(format!("missing string param {name}")))
    }

    fn meta(&self, key: &str) -> Option<&Value> {
        self.req.params.get("_meta")?.get(key)
    }

    /// Whether a modern client declared a capability in this request's `_meta`.
    fn client_has(&self, capability: &str) -> bool {
        self.meta("io.modelcontextprotocol/clientCapabilities")
            .and_then(|c| c.get(capability))
            .is_some_and(|v| !v.is_null())
    }

    // --- lifecycle (legacy) ------------------------------------------------------------------

    /// `initialize`: negotiate a legacy revision and give the session its state. List changes
    /// and updates of the resources it subscribes to reach its standalone stream through the
    /// cluster bus.
    fn initialize(&self) -> Reply {
        let requested = self.param("protocolVersion").and_then(Value::as_str);
        let version = requested
            .and_then(ProtocolVersion::parse)
            .filter(|v| v.era() == Era::Legacy)
            .unwrap_or(ProtocolVersion::LATEST_LEGACY);
        if let Some(session) = self.cx.session() {
            session.insert(SessionState::default());
        }
        Ok(json!({
            "protocolVersion": version.as_str(),
            "capabilities": capabilities(),
            "serverInfo": server_info(),
            "instructions": "Conformance test server of the mcp-affinity crate."
        }))
    }

    fn session_state(&self) -> Option<SessionState> {
        self.cx.session()?.get::<SessionState>()
    }

    fn set_log_level(&self) -> Reply {
        let level = Level::parse(self.str_param("level")?)
            .ok_or_else(|| ErrorObject::invalid_params("unknown log level"))?;
        if let Some(state) = self.session_state() {
            state.lock().level = level;
        }
        Ok(json!({}))
    }

    fn subscribe(&self, on: bool) -> Reply {
        let uri = self.str_param("uri")?;
        if let Some(session) = self.cx.session() {
            if on && !session.subscribe_resource(uri) {
                return Err(ErrorObject::invalid_params("too many subscriptions"));
            }
            if !on {
                session.unsubscribe_resource(uri);
            }
        }
        Ok(json!({}))
    }

    // --- notifications on the request's stream ---------------------------------------------

    /// The lowest level this request wants log messages for: the session's `logging/setLevel`
    /// (legacy; everything by default), or `_meta["io.modelcontextprotocol/logLevel"]` (modern;
    /// nothing without it).
    fn log_threshold(&self) -> Option<Level> {
        match self.cx.era() {
            Era::Legacy => Some(
                self.session_state()
                    .map_or(Level::Debug, |s| s.lock().level),
            ),
            Era::Modern => self
                .meta("io.modelcontextprotocol/logLevel")
                .and_then(Value::as_str)
                .and_then(Level::parse),
        }
    }

    fn log(&self, level: Level, data: &str) {
        if self.log_threshold().is_some_and(|min| level >= min) {
            let params = json!({ "level": level.as_str(), "logger": SERVER_NAME, "data": data });
            let _ = self.cx.notify("notifications/message", Some(params));
        }
    }

    fn progress(&self, progress: u32, total: u32) {
        if let Some(token) = self.req.progress_token() {
            let params = json!({
                "progressToken": token,
                "progress": progress,
                "total": total,
                "message": format!("Completed step {progress} of {total}")
            });
            let _ = self.cx.notify("notifications/progress", Some(params));
        }
    }

    // --- asking the client for input ---------------------------------------------------------

    /// Gets answers from the client for `asks`.
    ///
    /// Legacy era: each is a server→client request on this call's own stream. Modern era:
    /// answers come in `inputResponses` of a retry; until all are there the call ends with an
    /// `input_required` result (SEP-2322) carrying `state`, signed.
    async fn gather(&self, asks: &[Ask], state: Option<Value>) -> Result<Input, ErrorObject> {
        let mut answers = Map::new();
        if !self.modern() {
            for ask in asks {
                let answer = self
                    .cx
                    .request(ask.method, Some(ask.params.clone()))
                    .await
                    .map_err(|e| ErrorObject::internal(format!("{} failed: {e}", ask.method)))?;
                answers.insert(ask.key.into(), answer);
            }
            return Ok(Input::Answers(answers));
        }
        for ask in asks {
            if !self.client_has(ask.capability()) {
                return Err(missing_capability(ask.capability()));
            }
        }
        let responses = self.input_responses()?;
        let mut missing = Map::new();
        for ask in asks {
            match responses.and_then(|r| r.get(ask.key)) {
                Some(answer) => {
                    answers.insert(ask.key.into(), answer.clone());
                }
                None => {
                    missing.insert(ask.key.into(), ask.request());
                }
            }
        }
        if missing.is_empty() {
            return Ok(Input::Answers(answers));
        }
        Ok(Input::Required(self.input_required(missing, state)))
    }

    /// `params.inputResponses`, checked: an object whose values are objects (the results of the
    /// requests the server asked for). Unknown keys are ignored.
    fn input_responses(&self) -> Result<Option<&Map<String, Value>>, ErrorObject> {
        let Some(raw) = self.param("inputResponses") else {
            return Ok(None);
        };
        let responses = raw
            .as_object()
            .ok_or_else(|| ErrorObject::invalid_params("inputResponses must be an object"))?;
        if let Some((key, _)) = responses.iter().find(|(_, v)| !v.is_object()) {
            return Err(ErrorObject::invalid_params(format!(
                "inputResponses.{key} must be an object"
            )));
        }
        Ok(Some(responses))
    }

    /// An `input_required` result, with `state` signed and bound to this tool or prompt.
    fn input_required(&self, requests: Map<String, Value>, state: Option<Value>) -> Value {
        let mut result = Map::new();
        result.insert("resultType".into(), json!("input_required"));
        result.insert("inputRequests".into(), Value::Object(requests));
        if let Some(state) = state {
            let sealed = self.server.inner.seal.seal(&self.target(), &state);
            result.insert("requestState".into(), json!(sealed));
        }
        Value::Object(result)
    }

    /// The `requestState` the client echoed, verified; `None` when there is none. A forged,
    /// expired or foreign state is an error.
    fn request_state(&self) -> Result<Option<Value>, ErrorObject> {
        match self.param("requestState") {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(token)) => {
                self.server.inner.seal.open(&self.target(), token).map(Some)
            }
            Some(_) => Err(ErrorObject::invalid_params("requestState must be a string")),
        }
    }

    /// What a `requestState` is bound to: the method and the tool or prompt name.
    fn target(&self) -> String {
        let name = self
            .param("name")
            .and_then(Value::as_str)
            .unwrap_or_default();
        format!("{}:{name}", self.req.method)
    }

    // --- subscriptions/listen (modern) -------------------------------------------------------

    /// A long-lived request: acknowledges, then forwards the changes the filter asks for, each
    /// tagged with the subscription id (the request's JSON-RPC id). It ends when the client
    /// closes the stream (the transport drops this future) or the server shuts down (a final
    /// result then closes the stream).
    async fn listen(&self) -> Reply {
        let filter = Filter::parse(self.param("notifications"))?;
        let id = json!(self.cx.id().unwrap_or(&RequestId::Number(0)));
        // Subscribe before acknowledging, so no change after the acknowledgement is missed.
        let mut changes = self.server.inner.bus.changes();
        let mut stop = self.server.inner.stop.clone();
        let tagged = |mut params: Map<String, Value>| {
            params.insert(
                "_meta".into(),
                json!({ "io.modelcontextprotocol/subscriptionId": id }),
            );
            Some(Value::Object(params))
        };
        let mut ack = Map::new();
        ack.insert("notifications".into(), filter.honoured());
        self.cx
            .notify("notifications/subscriptions/acknowledged", tagged(ack))
            .map_err(|e| ErrorObject::internal(e.to_string()))?;
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Ok(change) if filter.wants(&change) => {
                        let params = change.params().and_then(|p| p.as_object().cloned());
                        if self.cx.notify(change.method(), tagged(params.unwrap_or_default())).is_err() {
                            break;
                        }
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                _ = stop.wait_for(|stopped| *stopped) => break,
            }
        }
        Ok(json!({}))
    }
}

/// The answers a tool asked for, or the `input_required` result that asks for them.
enum Input {
    Answers(Map<String, Value>),
    Required(Value),
}

/// Unwraps the answers of [`Call::gather`], or returns its `input_required` result.
macro_rules! answers {
    ($input:expr) => {
        match $input {
            Input::Answers(answers) => answers,
            Input::Required(result) => return Ok(result),
        }
    };
}

/// One request to the client: `key` names it in `inputRequests` / `inputResponses`.
struct Ask {
    key: &'static str,
    method: &'static str,
    params: Value,
}

impl Ask {
    fn elicit(key: &'static str, message: &str, schema: Value) -> Self {
        let params = json!({ "message": message, "requestedSchema": schema });
        Self {
            key,
            method: "elicitation/create",
            params,
        }
    }

    fn sample(key: &'static str, prompt: &str, max_tokens: u32) -> Self {
        let params = json!({
            "messages": [{ "role": "user", "content": { "type": "text", "text": prompt } }],
            "maxTokens": max_tokens
        });
        Self {
            key,
            method: "sampling/createMessage",
            params,
        }
    }

    fn roots(key: &'static str) -> Self {
        Self {
            key,
            method: "roots/list",
            params: json!({}),
        }
    }

    /// The client capability the request needs.
    fn capability(&self) -> &'static str {
        match self.method {
            "sampling/createMessage" => "sampling",
            "elicitation/create" => "elicitation",
            _ => "roots",
        }
    }

    /// The entry of `inputRequests`.
    fn request(&self) -> Value {
        json!({ "method": self.method, "params": self.params })
    }
}

/// `-32021`: the request needs a capability the client did not declare (HTTP 400).
fn missing_capability(capability: &str) -> ErrorObject {
    ErrorObject::new(
        codes::MISSING_REQUIRED_CLIENT_CAPABILITY,
        format!("this request needs the client capability {capability}"),
    )
    .with_data(json!({ "requiredCapabilities": { capability: {} } }))
}

/// A map of one input request.
fn one(key: &str, request: Value) -> Map<String, Value> {
    let mut map = Map::new();
    map.insert(key.into(), request);
    map
}

/// A one-field elicitation schema.
fn one_field(name: &str, ty: &str) -> Value {
    json!({ "type": "object", "properties": { name: { "type": ty } }, "required": [name] })
}

/// The answer to one request (`null` if the client gave none).
fn answer<'a>(answers: &'a Map<String, Value>, key: &str) -> &'a Value {
    answers.get(key).unwrap_or(&Value::Null)
}

/// A field of an elicitation answer (`{action, content: {field}}`).
fn elicited<'a>(answers: &'a Map<String, Value>, key: &str, field: &str) -> Option<&'a Value> {
    answers.get(key)?.get("content")?.get(field)
}

fn elicited_str<'a>(answers: &'a Map<String, Value>, key: &str, field: &str) -> &'a str {
    elicited(answers, key, field)
        .and_then(Value::as_str)
        .unwrap_or("unknown")
}

/// The text of a sampling answer (`{role, content: {type: "text", text}}`).
fn sampled<'a>(answers: &'a Map<String, Value>, key: &str) -> &'a str {
    answers
        .get(key)
        .and_then(|a| a.pointer("/content/text"))
        .and_then(Value::as_str)
        .unwrap_or("no response")
}

fn roots_count(answers: &Map<String, Value>, key: &str) -> usize {
    answers
        .get(key)
        .and_then(|a| a.get("roots"))
        .and_then(Value::as_array)
        .map_or(0, Vec::len)
}

// ---------------------------------------------------------------------------------------------
// Legacy sessions: per-session state and change forwarding
// ---------------------------------------------------------------------------------------------

/// What a legacy session remembers: its log level (its resource subscriptions are the
/// session's own, [`Session::subscribe_resource`], which the bus reads).
#[derive(Clone, Default)]
struct SessionState(Arc<Mutex<SessionData>>);

#[derive(Default)]
struct SessionData {
    level: Level,
}

impl SessionState {
    fn lock(&self) -> std::sync::MutexGuard<'_, SessionData> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Log levels, least severe first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    #[default]
    Debug,
    Info,
    Notice,
    Warning,
    Error,
    Critical,
    Alert,
    Emergency,
}

impl Level {
    const ALL: [Self; 8] = [
        Self::Debug,
        Self::Info,
        Self::Notice,
        Self::Warning,
        Self::Error,
        Self::Critical,
        Self::Alert,
        Self::Emergency,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Notice => "notice",
            Self::Warning => "warning",
            Self::Error => "error",
            Self::Critical => "critical",
            Self::Alert => "alert",
            Self::Emergency => "emergency",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|l| l.as_str() == s)
    }
}

// ---------------------------------------------------------------------------------------------
// Modern subscriptions: the listen filter
// ---------------------------------------------------------------------------------------------

/// The `notifications` filter of `subscriptions/listen`.
#[derive(Debug, Default)]
struct Filter {
    tools: bool,
    prompts: bool,
    uris: Vec<String>,
}

impl Filter {
    fn parse(raw: Option<&Value>) -> Result<Self, ErrorObject> {
        let Some(raw) = raw else {
            return Err(ErrorObject::invalid_params(
                "subscriptions/listen needs notifications",
            ));
        };
        let flag = |name: &str| raw.get(name).and_then(Value::as_bool).unwrap_or(false);
        let uris = match raw.get("resourceSubscriptions") {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|u| u.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| ErrorObject::invalid_params("resourceSubscriptions: strings"))?,
            Some(_) => {
                return Err(ErrorObject::invalid_params(
                    "resourceSubscriptions: an array",
                ));
            }
        };
        Ok(Self {
            tools: flag("toolsListChanged"),
            prompts: flag("promptsListChanged"),
            uris,
        })
    }

    /// The part of the filter this server honours, for the acknowledgement (its resource list
    /// never changes, so `resourcesListChanged` is not honoured).
    fn honoured(&self) -> Value {
        let mut out = Map::new();
        for (on, name) in [
            (self.tools, "toolsListChanged"),
            (self.prompts, "promptsListChanged"),
        ] {
            if on {
                out.insert(name.into(), json!(true));
            }
        }
        if !self.uris.is_empty() {
            out.insert("resourceSubscriptions".into(), json!(self.uris));
        }
        Value::Object(out)
    }

    fn wants(&self, change: &Change) -> bool {
        match change {
            Change::ToolsListChanged => self.tools,
            Change::PromptsListChanged => self.prompts,
            Change::ResourceUpdated { uri } => self.uris.iter().any(|u| u == uri),
            // Its resource list never changes.
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tools
// ---------------------------------------------------------------------------------------------

/// A tool of the catalogue and the era it is offered in.
struct ToolDef {
    name: &'static str,
    description: &'static str,
    legacy: bool,
    modern: bool,
}

impl ToolDef {
    const fn both(name: &'static str, description: &'static str) -> Self {
        Self {
            name,
            description,
            legacy: true,
            modern: true,
        }
    }

    const fn legacy(name: &'static str, description: &'static str) -> Self {
        Self {
            name,
            description,
            legacy: true,
            modern: false,
        }
    }

    const fn modern(name: &'static str, description: &'static str) -> Self {
        Self {
            name,
            description,
            legacy: false,
            modern: true,
        }
    }

    fn offered(&self, era: Era) -> bool {
        match era {
            Era::Legacy => self.legacy,
            Era::Modern => self.modern,
        }
    }
}

const TOOLS: &[ToolDef] = &[
    ToolDef::both("test_simple_text", "Returns simple text content"),
    ToolDef::both("test_image_content", "Returns image content"),
    ToolDef::both("test_audio_content", "Returns audio content"),
    ToolDef::both("test_embedded_resource", "Returns an embedded resource"),
    ToolDef::both(
        "test_multiple_content_types",
        "Returns text, image and resource content",
    ),
    ToolDef::both("test_tool_with_logging", "Sends log messages while it runs"),
    ToolDef::both("test_tool_with_progress", "Reports progress while it runs"),
    ToolDef::both("test_error_handling", "Returns a tool error (isError)"),
    ToolDef::both("test_sampling", "Asks the client to sample a completion"),
    ToolDef::both("test_elicitation", "Asks the user for input"),
    ToolDef::both(
        "test_elicitation_sep1034_defaults",
        "Elicits a form with defaults",
    ),
    ToolDef::both(
        "test_elicitation_sep1330_enums",
        "Elicits every kind of enum",
    ),
    ToolDef::both(
        "json_schema_2020_12_tool",
        "Has a JSON Schema 2020-12 input schema",
    ),
    ToolDef::both(
        "test_trigger_tool_change",
        "Adds or removes test_dynamic_tool",
    ),
    ToolDef::both(
        "test_trigger_prompt_change",
        "Adds or removes test_dynamic_prompt",
    ),
    ToolDef::legacy(
        "test_reconnection",
        "Closes its SSE stream mid-call (SEP-1699)",
    ),
    ToolDef::modern(
        "test_missing_capability",
        "Needs the sampling client capability",
    ),
    ToolDef::modern(
        "test_streaming_elicitation",
        "Elicits input via input_required",
    ),
    ToolDef::modern(
        "test_logging_tool",
        "Logs only when the request sets a log level",
    ),
    ToolDef::modern("test_custom_headers", "Checks its Mcp-Param-Region header"),
    ToolDef::modern("test_input_required_result_elicitation", "Asks for a name"),
    ToolDef::modern(
        "test_input_required_result_sampling",
        "Asks for a sampled answer",
    ),
    ToolDef::modern(
        "test_input_required_result_list_roots",
        "Asks for the client's roots",
    ),
    ToolDef::modern(
        "test_input_required_result_request_state",
        "Keeps a signed state",
    ),
    ToolDef::modern(
        "test_input_required_result_multiple_inputs",
        "Asks three things at once",
    ),
    ToolDef::modern(
        "test_input_required_result_multi_round",
        "Asks over two rounds",
    ),
    ToolDef::modern(
        "test_input_required_result_tampered_state",
        "Rejects a forged state",
    ),
    ToolDef::modern(
        "test_input_required_result_capabilities",
        "Asks only what is declared",
    ),
    // The Tasks extension (SEP-2663) fixtures of the conformance suite.
    ToolDef::both("greet", "Says hello (never a task)"),
    ToolDef::modern(
        "slow_compute",
        "Sleeps `seconds`, as a task when the client opts in",
    ),
    ToolDef::modern("failing_job", "A task (required) that ends in a tool error"),
    ToolDef::modern(
        "protocol_error_job",
        "A task that ends failed with a JSON-RPC error",
    ),
    ToolDef::modern("confirm_delete", "A task that asks for one confirmation"),
    ToolDef::modern("multi_input", "A task that asks two things at once"),
    ToolDef::modern(
        "test_tool_with_task",
        "Asks for a name (input_required), then runs as a task",
    ),
];

/// A tool's input schema: no arguments unless listed here.
fn input_schema(tool: &str) -> Value {
    match tool {
        "test_sampling" => string_args(&["prompt"]),
        "test_elicitation" => string_args(&["message"]),
        "json_schema_2020_12_tool" => json_schema_2020_12(),
        "test_custom_headers" => header_param_schema(),
        "greet" => string_args(&["name"]),
        "confirm_delete" => string_args(&["filename"]),
        "slow_compute" => json!({
            "type": "object",
            "properties": { "seconds": { "type": "number" }, "label": { "type": "string" } }
        }),
        _ => json!({ "type": "object", "properties": {} }),
    }
}

fn string_args(names: &[&str]) -> Value {
    let properties: Map<String, Value> = names
        .iter()
        .map(|n| ((*n).to_owned(), json!({ "type": "string" })))
        .collect();
    json!({ "type": "object", "properties": properties, "required": names })
}

/// SEP-1613 / SEP-2106: a JSON Schema 2020-12 input schema with the full vocabulary
/// (`$defs`, `$anchor`, composition and conditionals), listed exactly as written.
fn json_schema_2020_12() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "$defs": {
            "address": {
                "$anchor": "addressDef",
                "type": "object",
                "properties": { "street": { "type": "string" }, "city": { "type": "string" } }
            }
        },
        "properties": {
            "name": { "type": "string" },
            "address": { "$ref": "#/$defs/address" },
            "contactMethod": { "type": "string", "enum": ["phone", "email"] },
            "phone": { "type": "string" },
            "email": { "type": "string" }
        },
        "allOf": [{ "anyOf": [{ "required": ["phone"] }, { "required": ["email"] }] }],
        "if": {
            "properties": { "contactMethod": { "const": "phone" } },
            "required": ["contactMethod"]
        },
        "then": { "required": ["phone"] },
        "else": { "required": ["email"] },
        "additionalProperties": false
    })
}

/// SEP-2243: modern clients mirror `region` into the `Mcp-Param-Region` header.
fn header_param_schema() -> Value {
    json!({
        "type": "object",
        "properties": { "region": { "type": "string", "x-mcp-header": "Region" } }
    })
}

impl Server {
    fn tools(&self, era: Era) -> Vec<Value> {
        let entry = |name: &str, description: &str| json!({ "name": name, "description": description, "inputSchema": input_schema(name) });
        let mut tools: Vec<Value> = TOOLS
            .iter()
            .filter(|t| t.offered(era))
            .map(|t| entry(t.name, t.description))
            .collect();
        if self.is_offered("test_dynamic_tool", era) {
            tools.push(entry(
                "test_dynamic_tool",
                "Added by test_trigger_tool_change",
            ));
        }
        tools
    }

    fn is_offered(&self, tool: &str, era: Era) -> bool {
        match tool {
            "test_dynamic_tool" => self.inner.dynamic_tool.load(Ordering::Relaxed),
            _ => TOOLS.iter().any(|t| t.name == tool && t.offered(era)),
        }
    }

    /// Toggles a dynamic entry and tells every subscriber.
    fn toggle(&self, flag: &AtomicBool, change: Change) -> Reply {
        let now = !flag.fetch_xor(true, Ordering::Relaxed);
        self.publish(change);
        Ok(text(if now { "added" } else { "removed" }))
    }
}

fn text(s: impl Into<String>) -> Value {
    json!({ "content": [{ "type": "text", "text": s.into() }] })
}

fn image() -> Value {
    json!({ "type": "image", "data": PNG, "mimeType": "image/png" })
}

fn embedded(uri: &str, mime: &str, text: &str) -> Value {
    json!({ "type": "resource", "resource": { "uri": uri, "mimeType": mime, "text": text } })
}

impl Call<'_> {
    fn args(&self) -> &Value {
        self.param("arguments").unwrap_or(&Value::Null)
    }

    fn arg_str(&self, name: &str) -> String {
        self.args()
            .get(name)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    }

    async fn call_tool(&self) -> Reply {
        let name = self.str_param("name")?;
        let offered = self.server.is_offered(name, self.cx.era());
        if !offered {
            return Err(ErrorObject::invalid_params(format!("unknown tool {name}")));
        }
        let inner = &self.server.inner;
        match name {
            "test_simple_text" => Ok(text("This is a simple text response for testing.")),
            "test_image_content" => Ok(json!({ "content": [image()] })),
            "test_audio_content" => Ok(json!({
                "content": [{ "type": "audio", "data": WAV, "mimeType": "audio/wav" }]
            })),
            "test_embedded_resource" => Ok(json!({ "content": [embedded(
                "test://embedded-resource", "text/plain", "This is an embedded resource content."
            )] })),
            "test_multiple_content_types" => Ok(json!({ "content": [
                { "type": "text", "text": "Multiple content types test:" },
                image(),
                embedded("test://mixed-content-resource", "application/json", r#"{"test":"data","value":123}"#)
            ] })),
            "test_tool_with_logging" => self.with_logging().await,
            "test_tool_with_progress" => self.with_progress().await,
            "test_error_handling" => Ok(json!({
                "content": [{ "type": "text", "text": "This tool intentionally returns an error for testing" }],
                "isError": true
            })),
            "test_sampling" => self.sampling().await,
            "test_elicitation" => self.elicitation().await,
            "test_elicitation_sep1034_defaults" => self.elicitation_defaults().await,
            "test_elicitation_sep1330_enums" => self.elicitation_enums().await,
            "json_schema_2020_12_tool" => Ok(text(format!("called with {}", self.args()))),
            "test_trigger_tool_change" => self
                .server
                .toggle(&inner.dynamic_tool, Change::ToolsListChanged),
            "test_trigger_prompt_change" => self
                .server
                .toggle(&inner.dynamic_prompt, Change::PromptsListChanged),
            "test_dynamic_tool" => Ok(text("This tool was added at run time.")),
            "test_reconnection" => self.reconnection().await,
            "test_missing_capability" => self.missing_capability().await,
            "test_streaming_elicitation" => self.streaming_elicitation().await,
            "test_logging_tool" => {
                self.log(Level::Info, "test_logging_tool ran");
                Ok(text("Logging evaluated"))
            }
            "test_custom_headers" => self.custom_headers(),
            "test_input_required_result_elicitation" => self.mrtr_elicitation().await,
            "test_input_required_result_sampling" => self.mrtr_sampling().await,
            "test_input_required_result_list_roots" => self.mrtr_roots().await,
            "test_input_required_result_request_state" => {
                self.mrtr_confirm("state-ok: requestState validated").await
            }
            "test_input_required_result_tampered_state" => {
                self.mrtr_confirm("integrity-ok: state verified").await
            }
            "test_input_required_result_multiple_inputs" => self.mrtr_multiple().await,
            "test_input_required_result_multi_round" => self.mrtr_multi_round().await,
            "test_input_required_result_capabilities" => self.mrtr_capabilities().await,
            "greet" => Ok(text(format!("Hello, {}!", self.arg_str("name")))),
            "slow_compute" => self.slow_compute().await,
            "failing_job" => self.failing_job().await,
            "protocol_error_job" => self.protocol_error_job().await,
            "confirm_delete" => self.confirm_delete().await,
            "multi_input" => self.multi_input().await,
            "test_tool_with_task" => self.tool_with_task().await,
            other => Err(ErrorObject::invalid_params(format!("unknown tool {other}"))),
        }
    }

    async fn with_logging(&self) -> Reply {
        self.log(Level::Info, "Tool execution started");
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.log(Level::Info, "Tool processing data");
        tokio::time::sleep(Duration::from_millis(50)).await;
        self.log(Level::Info, "Tool execution completed");
        Ok(text("Tool with logging executed successfully"))
    }

    async fn with_progress(&self) -> Reply {
        for step in [0, 50, 100] {
            if step > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            self.progress(step, 100);
        }
        let token = match self.req.progress_token() {
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
            None => "no progress token".into(),
        };
        Ok(text(token))
    }

    /// SEP-1699 (legacy, `2025-11-25`): the client's connection closes now; the result goes to
    /// the stream's event log and reaches the client when it resumes with `Last-Event-ID`.
    async fn reconnection(&self) -> Reply {
        self.cx.close_stream();
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(text(
            "Reconnection test completed successfully. If you received this, the client properly reconnected after stream closure.",
        ))
    }

    async fn sampling(&self) -> Reply {
        let ask = Ask::sample("completion", &self.arg_str("prompt"), 100);
        let answers = answers!(self.gather(&[ask], None).await?);
        Ok(text(format!(
            "LLM response: {}",
            sampled(&answers, "completion")
        )))
    }

    async fn elicitation(&self) -> Reply {
        let schema = json!({
            "type": "object",
            "properties": { "response": { "type": "string", "description": "User's response" } },
            "required": ["response"]
        });
        let ask = Ask::elicit("response", &self.arg_str("message"), schema);
        let answers = answers!(self.gather(&[ask], None).await?);
        Ok(text(format!(
            "User response: {}",
            answer(&answers, "response")
        )))
    }

    async fn elicitation_defaults(&self) -> Reply {
        let schema = json!({
            "type": "object",
            "properties": {
                "name": { "type": "string", "description": "User name", "default": "John Doe" },
                "age": { "type": "integer", "description": "User age", "default": 30 },
                "score": { "type": "number", "description": "User score", "default": 95.5 },
                "status": {
                    "type": "string", "description": "User status",
                    "enum": ["active", "inactive", "pending"], "default": "active"
                },
                "verified": { "type": "boolean", "description": "Verification status", "default": true }
            },
            "required": []
        });
        let ask = Ask::elicit(
            "form",
            "Please review and update the form fields with defaults",
            schema,
        );
        let answers = answers!(self.gather(&[ask], None).await?);
        Ok(text(format!(
            "Elicitation completed: {}",
            answer(&answers, "form")
        )))
    }

    async fn elicitation_enums(&self) -> Reply {
        let titled = |prefix: &str, word: &str| -> Vec<Value> {
            ["First", "Second", "Third"]
                .iter()
                .enumerate()
                .map(|(i, t)| json!({ "const": format!("{prefix}{}", i + 1), "title": format!("{t} {word}") }))
                .collect()
        };
        let schema = json!({
            "type": "object",
            "properties": {
                "untitledSingle": {
                    "type": "string", "description": "Select one option",
                    "enum": ["option1", "option2", "option3"]
                },
                "titledSingle": {
                    "type": "string", "description": "Select one option with titles",
                    "oneOf": titled("value", "Option")
                },
                "legacyEnum": {
                    "type": "string", "description": "Select one option (legacy)",
                    "enum": ["opt1", "opt2", "opt3"],
                    "enumNames": ["Option One", "Option Two", "Option Three"]
                },
                "untitledMulti": {
                    "type": "array", "description": "Select multiple options", "minItems": 1, "maxItems": 3,
                    "items": { "type": "string", "enum": ["option1", "option2", "option3"] }
                },
                "titledMulti": {
                    "type": "array", "description": "Select multiple options with titles", "minItems": 1, "maxItems": 3,
                    "items": { "anyOf": titled("value", "Choice") }
                }
            },
            "required": []
        });
        let ask = Ask::elicit("form", "Please select options from the enum fields", schema);
        let answers = answers!(self.gather(&[ask], None).await?);
        Ok(text(format!(
            "Elicitation completed: {}",
            answer(&answers, "form")
        )))
    }

    async fn missing_capability(&self) -> Reply {
        let ask = Ask::sample("answer", "Say something", 20);
        let answers = answers!(self.gather(&[ask], None).await?);
        Ok(text(format!("Sampled: {}", sampled(&answers, "answer"))))
    }

    /// The modern era forbids server→client requests on a response stream: the input comes
    /// through an `input_required` result instead.
    async fn streaming_elicitation(&self) -> Reply {
        let ask = Ask::elicit(
            "topic",
            "What should be streamed?",
            one_field("topic", "string"),
        );
        let answers = answers!(self.gather(&[ask], None).await?);
        Ok(text(format!(
            "Streaming {}",
            elicited_str(&answers, "topic", "topic")
        )))
    }

    /// SEP-2243: a server that reads the body checks each `Mcp-Param-*` header against it.
    /// Values may be `=?base64?…?=`-encoded; anything else is literal.
    fn custom_headers(&self) -> Reply {
        let mismatch = |msg: &str| ErrorObject::new(codes::HEADER_MISMATCH, msg.to_owned());
        let body = self.args().get("region").and_then(Value::as_str);
        let header = match self.req.parts.headers.get("mcp-param-region") {
            None => None,
            Some(v) => {
                let raw = v
                    .to_str()
                    .map_err(|_| mismatch("Mcp-Param-Region is not visible ASCII"))?;
                Some(
                    decode_header_param(raw.trim())
                        .ok_or_else(|| mismatch("Mcp-Param-Region: invalid Base64"))?,
                )
            }
        };
        if header.as_deref() != body {
            return Err(mismatch(
                "Mcp-Param-Region header does not match arguments.region",
            ));
        }
        Ok(text(format!("region: {}", body.unwrap_or("(none)"))))
    }

    // --- tasks (modern, SEP-2663) -----------------------------------------------------------

    /// This request's tasks handle, if it opted in to the extension.
    fn tasks(&self) -> Option<&Tasks> {
        self.req
            .parts
            .extensions
            .get::<Tasks>()
            .filter(|t| t.is_requested())
    }

    /// The tasks handle, or `-32021` for a tool that only runs as a task.
    fn tasks_required(&self) -> Result<&Tasks, ErrorObject> {
        self.tasks().ok_or_else(TaskManager::required_error)
    }

    /// Sleeps `seconds` (stops on cancel): a task with the opt-in, a plain call without.
    async fn slow_compute(&self) -> Reply {
        let seconds = self
            .args()
            .get("seconds")
            .and_then(Value::as_f64)
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or(1.0)
            .min(3600.0);
        let label = self.arg_str("label");
        let done = move || text(format!("slow_compute {label}: done after {seconds}s"));
        let Some(tasks) = self.tasks() else {
            tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
            return Ok(done());
        };
        tasks
            .start(move |task| async move {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs_f64(seconds)) => Ok(done()),
                    () = task.cancelled() => Err(task.cancelled_error()),
                }
            })
            .await
    }

    /// A task (required) that ends after about a second in a tool error (`completed` with
    /// `isError: true`).
    async fn failing_job(&self) -> Reply {
        self.tasks_required()?
            .start(|task| async move {
                task.set_status_message("failing soon").await;
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok(json!({
                    "content": [{ "type": "text", "text": "failing_job: the job failed" }],
                    "isError": true
                }))
            })
            .await
    }

    /// A task that ends `failed` with a JSON-RPC error.
    async fn protocol_error_job(&self) -> Reply {
        self.tasks_required()?
            .start(|_task| async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Err(ErrorObject::internal(
                    "protocol_error_job: internal failure",
                ))
            })
            .await
    }

    /// A task that asks the client (`inputRequests`, answered by `tasks/update`) to confirm.
    async fn confirm_delete(&self) -> Reply {
        let filename = self.arg_str("filename");
        self.tasks_required()?
            .start(move |task| async move {
                let ask = TaskContext::elicitation(
                    &format!("Delete {filename}?"),
                    one_field("confirm", "boolean"),
                );
                let answers = task.input(one("confirm", ask)).await?;
                let confirmed = answers["confirm"]["action"] == "accept";
                let verdict = if confirmed { "deleted" } else { "kept" };
                Ok(text(format!("{filename}: {verdict}")))
            })
            .await
    }

    /// A task that asks two things at once; answering one leaves the other outstanding.
    async fn multi_input(&self) -> Reply {
        self.tasks_required()?
            .start(|task| async move {
                let mut asks = Map::new();
                asks.insert(
                    "name".into(),
                    TaskContext::elicitation("Your name?", one_field("name", "string")),
                );
                asks.insert(
                    "confirm".into(),
                    TaskContext::elicitation("Proceed?", one_field("confirm", "boolean")),
                );
                let answers = task.input(asks).await?;
                Ok(text(format!(
                    "multi_input: name {}, confirm {}",
                    elicited_str(&answers, "name", "name"),
                    elicited(&answers, "confirm", "confirm").unwrap_or(&Value::Null)
                )))
            })
            .await
    }

    /// An `input_required` round for `user_name` (SEP-2322), then a task whose result carries
    /// it; the task's envelope has no `requestState`.
    async fn tool_with_task(&self) -> Reply {
        let tasks = self.tasks_required()?;
        let ask = Ask::elicit(
            "user_name",
            "What is your name?",
            one_field("name", "string"),
        );
        let answers = answers!(self.gather(&[ask], None).await?);
        let name = elicited_str(&answers, "user_name", "name").to_owned();
        tasks
            .start(move |_task| async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                Ok(text(format!("Hello, {name}! (from a task)")))
            })
            .await
    }

    // --- multi round-trip requests (modern) --------------------------------------------------

    async fn mrtr_elicitation(&self) -> Reply {
        let ask = Ask::elicit(
            "user_name",
            "What is your name?",
            one_field("name", "string"),
        );
        let answers = answers!(self.gather(&[ask], None).await?);
        Ok(text(format!(
            "Hello, {}!",
            elicited_str(&answers, "user_name", "name")
        )))
    }

    async fn mrtr_sampling(&self) -> Reply {
        let ask = Ask::sample("capital_question", "What is the capital of France?", 100);
        let answers = answers!(self.gather(&[ask], None).await?);
        Ok(text(format!(
            "Sampling result: {}",
            sampled(&answers, "capital_question")
        )))
    }

    async fn mrtr_roots(&self) -> Reply {
        let answers = answers!(self.gather(&[Ask::roots("client_roots")], None).await?);
        Ok(text(format!(
            "Found {} root(s)",
            roots_count(&answers, "client_roots")
        )))
    }

    /// Completes only with a confirmation *and* the signed state of the first round; a state that
    /// fails verification is an error (`-32602`).
    async fn mrtr_confirm(&self, done: &str) -> Reply {
        let state = self.request_state()?;
        let ask = Ask::elicit("confirm", "Please confirm", one_field("ok", "boolean"));
        let first_round = json!({ "step": "confirm" });
        if state.as_ref() != Some(&first_round) {
            return Ok(self.input_required(ask_map(&[ask]), Some(first_round)));
        }
        let answers = answers!(self.gather(&[ask], Some(first_round)).await?);
        match elicited(&answers, "confirm", "ok") {
            Some(Value::Bool(true)) => Ok(text(done)),
            _ => Ok(text("not confirmed")),
        }
    }

    async fn mrtr_multiple(&self) -> Reply {
        self.request_state()?;
        let asks = [
            Ask::elicit(
                "user_name",
                "What is your name?",
                one_field("name", "string"),
            ),
            Ask::sample("greeting", "Generate a greeting", 50),
            Ask::roots("client_roots"),
        ];
        let answers = answers!(
            self.gather(&asks, Some(json!({ "step": "all-inputs" })))
                .await?
        );
        Ok(text(format!(
            "Name: {}; Greeting: {}; Roots: {}",
            elicited_str(&answers, "user_name", "name"),
            sampled(&answers, "greeting"),
            roots_count(&answers, "client_roots")
        )))
    }

    /// Round 1 asks for a name, round 2 for a colour; the signed state carries the round and the
    /// name, so any node can take the next retry.
    async fn mrtr_multi_round(&self) -> Reply {
        let state = self.request_state()?.unwrap_or(json!({ "round": 1 }));
        let round = state.get("round").and_then(Value::as_u64).unwrap_or(1);
        let responses = self.input_responses()?;
        let answered = |key: &str| responses.and_then(|r| r.get(key)).is_some();
        match round {
            2 if answered("step2") => {
                let answers = answers!(self.gather(&[step2()], None).await?);
                let name = state
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("friend");
                Ok(text(format!(
                    "Multi-round complete for {name} who likes {}",
                    elicited_str(&answers, "step2", "color")
                )))
            }
            1 if answered("step1") => {
                let answers = answers!(self.gather(&[step1()], None).await?);
                let name = elicited_str(&answers, "step1", "name");
                let next = json!({ "round": 2, "name": name });
                Ok(self.input_required(ask_map(&[step2()]), Some(next)))
            }
            2 => Ok(self.input_required(ask_map(&[step2()]), Some(state))),
            _ => Ok(self.input_required(ask_map(&[step1()]), Some(json!({ "round": 1 })))),
        }
    }

    /// Asks only for what the client declared in this request's capabilities.
    async fn mrtr_capabilities(&self) -> Reply {
        let mut asks = Vec::new();
        if self.client_has("elicitation") {
            asks.push(Ask::elicit(
                "elicit_input",
                "Elicitation input",
                one_field("value", "string"),
            ));
        }
        if self.client_has("sampling") {
            asks.push(Ask::sample("sample_input", "Sample request", 50));
        }
        if self.client_has("roots") {
            asks.push(Ask::roots("roots_input"));
        }
        if asks.is_empty() {
            return Ok(text("No supported capabilities declared"));
        }
        let answers = answers!(
            self.gather(&asks, Some(json!({ "step": "capabilities" })))
                .await?
        );
        let keys: Vec<&str> = answers.keys().map(String::as_str).collect();
        Ok(text(format!(
            "capabilities-ok: received {}",
            keys.join(",")
        )))
    }
}

fn step1() -> Ask {
    Ask::elicit(
        "step1",
        "Step 1: What is your name?",
        one_field("name", "string"),
    )
}

fn step2() -> Ask {
    Ask::elicit(
        "step2",
        "Step 2: What is your favorite color?",
        one_field("color", "string"),
    )
}

fn ask_map(asks: &[Ask]) -> Map<String, Value> {
    asks.iter()
        .map(|a| (a.key.to_owned(), a.request()))
        .collect()
}

/// Decodes an `Mcp-Param-*` value: `=?base64?…?=` is strict standard Base64 (padding
/// required), anything else is the literal value.
fn decode_header_param(v: &str) -> Option<String> {
    let Some(b64) = v
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    else {
        return Some(v.to_owned());
    };
    if b64.len() % 4 != 0 {
        return None;
    }
    let digit = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes = b64.as_bytes();
    let pad = bytes.iter().rev().take_while(|&&c| c == b'=').count();
    if pad > 2 {
        return None;
    }
    let mut out = Vec::with_capacity(b64.len() / 4 * 3);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        let mut n = 0usize;
        for &c in chunk {
            if c == b'=' {
                continue;
            }
            acc = (acc << 6) | digit(c)?;
            n += 1;
        }
        acc <<= 6 * (4 - n);
        let full = acc.to_be_bytes();
        out.extend_from_slice(&full[1..n.max(1)]);
    }
    // '=' only at the end.
    if bytes[..bytes.len() - pad].contains(&b'=') {
        return None;
    }
    String::from_utf8(out).ok()
}

// ---------------------------------------------------------------------------------------------
// Prompts
// ---------------------------------------------------------------------------------------------

impl Server {
    fn prompts(&self, era: Era) -> Vec<Value> {
        let arg = |name: &str, description: &str| json!({ "name": name, "description": description, "required": true });
        let mut prompts = vec![
            json!({ "name": "test_simple_prompt", "description": "A simple prompt without arguments" }),
            json!({
                "name": "test_prompt_with_arguments", "description": "A prompt with required arguments",
                "arguments": [arg("arg1", "First test argument"), arg("arg2", "Second test argument")]
            }),
            json!({
                "name": "test_prompt_with_embedded_resource", "description": "A prompt that embeds a resource",
                "arguments": [arg("resourceUri", "URI of the resource to embed")]
            }),
            json!({ "name": "test_prompt_with_image", "description": "A prompt with image content" }),
        ];
        if era == Era::Modern {
            prompts.push(json!({
                "name": "test_input_required_result_prompt",
                "description": "Asks the user for context before it renders (input_required)"
            }));
        }
        if self.inner.dynamic_prompt.load(Ordering::Relaxed) {
            prompts.push(json!({
                "name": "test_dynamic_prompt", "description": "Added by test_trigger_prompt_change"
            }));
        }
        prompts
    }
}

fn user_message(content: Value) -> Value {
    json!({ "role": "user", "content": content })
}

fn user_text(s: impl Into<String>) -> Value {
    user_message(json!({ "type": "text", "text": s.into() }))
}

impl Call<'_> {
    fn get_prompt(&self) -> Reply {
        let name = self.str_param("name")?;
        let arg = |key: &str| -> Result<String, ErrorObject> {
            self.param("arguments")
                .and_then(|a| a.get(key))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| ErrorObject::invalid_params(format!("missing argument {key}")))
        };
        let messages = match name {
            "test_simple_prompt" => vec![user_text("This is a simple prompt for testing.")],
            "test_prompt_with_arguments" => vec![user_text(format!(
                "Prompt with arguments: arg1='{}', arg2='{}'",
                arg("arg1")?,
                arg("arg2")?
            ))],
            "test_prompt_with_embedded_resource" => vec![
                user_message(embedded(
                    &arg("resourceUri")?,
                    "text/plain",
                    "Embedded resource content for testing.",
                )),
                user_text("Please process the embedded resource above."),
            ],
            "test_prompt_with_image" => vec![
                user_message(image()),
                user_text("Please analyze the image above."),
            ],
            "test_input_required_result_prompt" if self.modern() => {
                return self.prompt_with_context();
            }
            "test_dynamic_prompt" if self.server.inner.dynamic_prompt.load(Ordering::Relaxed) => {
                vec![user_text("This prompt was added at run time.")]
            }
            other => {
                return Err(ErrorObject::invalid_params(format!(
                    "unknown prompt {other}"
                )));
            }
        };
        Ok(json!({ "messages": messages }))
    }

    /// `input_required` works on `prompts/get` too, not only on tools.
    fn prompt_with_context(&self) -> Reply {
        let ask = Ask::elicit(
            "user_context",
            "What context should the prompt use?",
            one_field("context", "string"),
        );
        let responses = self.input_responses()?;
        let Some(answer) = responses.and_then(|r| r.get(ask.key)) else {
            return Ok(self.input_required(ask_map(&[ask]), None));
        };
        let context = answer
            .pointer("/content/context")
            .and_then(Value::as_str)
            .unwrap_or("unknown");
        Ok(json!({ "messages": [user_text(format!("Prompt with context: {context}"))] }))
    }
}

// ---------------------------------------------------------------------------------------------
// Resources and completion
// ---------------------------------------------------------------------------------------------

fn resources() -> Value {
    json!([
        {
            "uri": "test://static-text", "name": "static-text", "title": "Static Text Resource",
            "description": "A static text resource", "mimeType": "text/plain"
        },
        {
            "uri": "test://static-binary", "name": "static-binary", "title": "Static Binary Resource",
            "description": "A static binary resource (a PNG image)", "mimeType": "image/png"
        },
        {
            "uri": WATCHED, "name": "watched-resource", "title": "Watched Resource",
            "description": "Announces an update every 3 seconds to its subscribers", "mimeType": "text/plain"
        }
    ])
}

fn resource_templates() -> Value {
    json!([{
        "uriTemplate": "test://template/{id}/data", "name": "template", "title": "Resource Template",
        "description": "A resource template with parameter substitution", "mimeType": "application/json"
    }])
}

impl Call<'_> {
    fn read_resource(&self) -> Reply {
        let uri = self.str_param("uri")?;
        let content =
            |mime: &str, text: &str| json!({ "uri": uri, "mimeType": mime, "text": text });
        let contents = match uri {
            "test://static-text" => content("text/plain", "This is the content of the static text resource."),
            "test://static-binary" => json!({ "uri": uri, "mimeType": "image/png", "blob": PNG }),
            WATCHED => content("text/plain", "Watched resource content"),
            _ => match template_id(uri) {
                Some(id) => content(
                    "application/json",
                    &json!({ "id": id, "templateTest": true, "data": format!("Data for ID: {id}") })
                        .to_string(),
                ),
                None => return Err(self.resource_not_found(uri)),
            },
        };
        Ok(json!({ "contents": [contents] }))
    }

    /// Resource not found: `-32602` from `2026-07-28` on (SEP-2164), `-32002` before.
    fn resource_not_found(&self, uri: &str) -> ErrorObject {
        let code = if self.modern() {
            codes::INVALID_PARAMS
        } else {
            -32002
        };
        ErrorObject::new(code, "Resource not found").with_data(json!({ "uri": uri }))
    }
}

/// `test://template/{id}/data` → `id`.
fn template_id(uri: &str) -> Option<&str> {
    let id = uri
        .strip_prefix("test://template/")?
        .strip_suffix("/data")?;
    (!id.is_empty() && !id.contains('/')).then_some(id)
}

/// `completion/complete`: values for the prompt's arguments and the template's `id` that start
/// with what the user typed.
fn complete(params: &Value) -> Value {
    let typed = params
        .pointer("/argument/value")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let candidates: &[&str] = match params.pointer("/argument/name").and_then(Value::as_str) {
        Some("arg1" | "arg2") => &["test", "testing", "tested", "value"],
        Some("id") => &["1", "2", "3", "123"],
        _ => &[],
    };
    let values: Vec<&str> = candidates
        .iter()
        .copied()
        .filter(|c| c.starts_with(typed))
        .collect();
    json!({ "completion": { "values": values, "total": values.len(), "hasMore": false } })
}

// ---------------------------------------------------------------------------------------------
// Signed requestState
// ---------------------------------------------------------------------------------------------

/// Signs `requestState` so a client cannot forge or alter it (SEP-2322: the state is
/// attacker-controlled). A token is `<hex HMAC-SHA256>.<json>`; the JSON binds the state to the
/// method and tool (or prompt) and carries an expiry.
struct Sealer {
    key: [u8; 32],
}

impl Sealer {
    /// A shared secret (every node of a fleet must use the same one), or a random key.
    fn new(secret: Option<&str>) -> Self {
        let key = match secret {
            Some(s) => hmac_sha256::digest(s.as_bytes()),
            None => {
                let mut key = [0u8; 32];
                if getrandom::fill(&mut key).is_err() {
                    // No OS randomness: a per-process key from the clock still beats none.
                    let nanos = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_nanos();
                    key = hmac_sha256::digest(&nanos.to_le_bytes());
                }
                key
            }
        };
        Self { key }
    }

    fn seal(&self, target: &str, state: &Value) -> String {
        let expires = unix_now() + STATE_TTL.as_secs();
        let body = json!({ "for": target, "exp": expires, "state": state }).to_string();
        let tag = hmac_sha256::mac(&self.key, body.as_bytes());
        format!("{}.{body}", hex(&tag))
    }

    fn open(&self, target: &str, token: &str) -> Result<Value, ErrorObject> {
        let invalid = || ErrorObject::invalid_params("invalid or expired requestState");
        let (tag, body) = token.split_once('.').ok_or_else(invalid)?;
        let expected = hex(&hmac_sha256::mac(&self.key, body.as_bytes()));
        if !hmac_sha256::equal(tag.as_bytes(), expected.as_bytes()) {
            return Err(invalid());
        }
        let body: Value = serde_json::from_str(body).map_err(|_| invalid())?;
        let fresh = body["exp"].as_u64().is_some_and(|exp| exp >= unix_now());
        if body["for"] != target || !fresh {
            return Err(invalid());
        }
        Ok(body["state"].clone())
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// HMAC-SHA256 through the `hmac` and `sha2` crates.
mod hmac_sha256 {
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::{Digest, Sha256};

    /// SHA-256 of `data`.
    pub(super) fn digest(data: &[u8]) -> [u8; 32] {
        Sha256::digest(data).into()
    }

    /// HMAC-SHA256 of `msg` under `key`.
    pub(super) fn mac(key: &[u8], msg: &[u8]) -> [u8; 32] {
        // HMAC takes keys of any length; this cannot fail.
        let mut m =
            <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        m.update(msg);
        m.finalize().into_bytes().into()
    }

    /// Compares in time independent of where the inputs differ.
    pub(super) fn equal(a: &[u8], b: &[u8]) -> bool {
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}
