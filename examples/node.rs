//! One MCP node served by hyper (HTTP/1.1): the MCP endpoint at `/mcp`, built from this
//! crate's layers, and an axum router for the node's other routes.
//!
//! ```text
//! cargo run --example node -- --listen 127.0.0.1:8080 --node n1
//! ```
//!
//! Options (environment variables in brackets):
//! - `--listen ADDR` (`MCP_LISTEN`, default `127.0.0.1:8080`)
//! - `--node NAME` (`MCP_NODE`, default `n1`): reported in `x-mcp-node` on every response
//! - `--redis URL` (`REDIS_URL`): the session registry in Redis (keys `mcp:session:{<id>}`);
//!   without it, the embedded in-memory registry
//! - `--tag TAG` (`MCP_TAG`, default derived from the node name): the opaque node tag carried
//!   in the `_mcp_backend` cookie and in the session ids this node mints
//! - `--cookie-secure true|false` (default `true`): the cookie's `Secure` attribute; turn it off
//!   only for plain-HTTP test setups (clients drop `Secure` cookies over `http://`)
//! - `--cookie-name NAME` (default `_mcp_backend`)
//! - `--transport-only`: the transport alone, no affinity and no registry (for benchmarks)
//! - `--internal-addr ADDR` (`MCP_INTERNAL_ADDR`, default: the address the node is listening
//!   on): where the other nodes forward requests for this node's sessions
//! - `--drain-timeout SECS` (`MCP_DRAIN_TIMEOUT`, default 10): the longest a SIGTERM drain
//!   waits for the balancer to stop routing here and for in-flight requests to finish
//! - `--idle-timeout SECS` (`MCP_IDLE_TIMEOUT`): closes a session after that long without a
//!   request, and removes records nobody claimed that long after their node went away
//!   (default: the transport's 30 min and the registry's 1 h)
//! - `--keep-alive SECS` (`MCP_KEEP_ALIVE`, default 15): the interval of the keep-alive
//!   comments on open SSE streams (GET streams and `subscriptions/listen` streams)
//! - `--no-forwarding`: a request for another live node's session is answered `404`
//!   (`misrouted`) instead of being forwarded to it
//! - `--no-event-log`: GET-stream events are not written to the shared event log (an adopted
//!   session's stream then starts empty)
//!
//! On SIGTERM (or SIGINT) the node drains: its liveness record says `draining` (the other
//! nodes adopt its sessions on their next request), `/healthz` answers `503` (the balancer
//! stops routing here), GET streams end with a `retry:` hint, requests keep being served until
//! none arrived for 1.5 s (or the drain timeout passed) and none is running; then the
//! sessions are closed, their records left for the adopters, and the node exits.
//! `subscriptions/listen` streams end at once, with their final result.
//!
//! Modern (`2026-07-28`) clients: `server/discover` answers the supported versions, the
//! capabilities and the server's name and version under `_meta`
//! (`io.modelcontextprotocol/serverInfo`); `subscriptions/listen` is acknowledged
//! (`notifications/subscriptions/acknowledged`, honouring none of the requested types: the
//! node's lists never change) and its SSE stream stays open, kept alive by the transport's
//! keep-alive comments, until the client closes it or the node drains (then it ends with a
//! `complete` result).
//!
//! Routes besides `/mcp`: `/healthz` (`200 ok`, `503 draining`), `/stats` (the registry's,
//! the transport's and the cluster bus's counters and the open listen streams as JSON),
//! `/metrics` (the layers' metrics in the Prometheus text format, feature `metrics`; names in
//! `mcp_affinity::metrics`) and a stand-in `/graphql`.
//!
//! Tools: `echo {text}`, `whoami`, `notify {message, delayMs?}` (a log message on the session's
//! standalone stream), `progress {steps}` (progress and log notifications on the request's
//! stream), `sample {prompt}` (a `sampling/createMessage` request to the client),
//! `broadcast {message}` (a log message to every session's standalone stream, on every node:
//! through the cluster bus, Redis pub/sub with `--redis`; returns how many of this node's
//! sessions took it, each other node delivers to its own).

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    http::{HeaderValue, Request, Response},
    routing::get,
};
use futures_util::{
    TryFutureExt,
    future::{Either, MapOk},
};
use hyper::body::Incoming;
use mcp_affinity::{
    McpStack, SseTransportLayer, StackHandle,
    bus::{BusStats, ClusterBus},
    handler::{ErrorObject, HandlerRequest, handler_fn},
    protocol::{Era, ProtocolVersion, RequestId},
    registry::{MemoryStore, RedisStore, RegistryStore},
    session::{NodeTag, RequestContext},
    transport::{HostPolicy, TransportHandle},
};
use serde_json::{Value, json};
use tokio::sync::watch;
use tower::{Service, ServiceBuilder, ServiceExt, util::Oneshot};

#[derive(Debug, Clone)]
struct Args {
    listen: SocketAddr,
    node: String,
    redis: Option<String>,
    tag: Option<String>,
    cookie_secure: bool,
    cookie_name: Option<String>,
    transport_only: bool,
    internal_addr: Option<SocketAddr>,
    drain_timeout: Duration,
    forwarding: bool,
    event_log: bool,
    idle_timeout: Option<Duration>,
    keep_alive: Option<Duration>,
}

fn parse_args() -> Result<Args, String> {
    let mut listen = std::env::var("MCP_LISTEN").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let mut node = std::env::var("MCP_NODE").unwrap_or_else(|_| "n1".into());
    let mut redis = std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty());
    let mut tag = std::env::var("MCP_TAG").ok().filter(|t| !t.is_empty());
    let mut cookie_secure = true;
    let mut cookie_name = None;
    let mut transport_only = false;
    let mut internal_addr = std::env::var("MCP_INTERNAL_ADDR")
        .ok()
        .filter(|a| !a.is_empty());
    let mut drain_timeout = std::env::var("MCP_DRAIN_TIMEOUT").unwrap_or_else(|_| "10".into());
    let mut forwarding = true;
    let mut event_log = true;
    let mut idle_timeout = std::env::var("MCP_IDLE_TIMEOUT")
        .ok()
        .filter(|a| !a.is_empty());
    let mut keep_alive = std::env::var("MCP_KEEP_ALIVE")
        .ok()
        .filter(|a| !a.is_empty());
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--listen" => listen = value()?,
            "--node" => node = value()?,
            "--redis" => redis = Some(value()?),
            "--tag" => tag = Some(value()?),
            "--cookie-secure" => {
                cookie_secure = match value()?.as_str() {
                    "true" | "1" | "yes" => true,
                    "false" | "0" | "no" => false,
                    v => return Err(format!("--cookie-secure {v}: expected true or false")),
                }
            }
            "--cookie-name" => cookie_name = Some(value()?),
            "--transport-only" => transport_only = true,
            "--internal-addr" => internal_addr = Some(value()?),
            "--drain-timeout" => drain_timeout = value()?,
            "--no-forwarding" => forwarding = false,
            "--no-event-log" => event_log = false,
            "--idle-timeout" => idle_timeout = Some(value()?),
            "--keep-alive" => keep_alive = Some(value()?),
            "-h" | "--help" => {
                println!(
                    "usage: node [--listen ADDR] [--node NAME] [--redis URL] [--tag TAG] \
                     [--cookie-secure true|false] [--cookie-name NAME] [--transport-only] \
                     [--internal-addr ADDR] [--drain-timeout SECS] [--idle-timeout SECS] \
                     [--keep-alive SECS] [--no-forwarding] [--no-event-log]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        listen: listen
            .parse()
            .map_err(|e| format!("--listen {listen}: {e}"))?,
        node,
        redis,
        tag,
        cookie_secure,
        cookie_name,
        transport_only,
        internal_addr: internal_addr
            .map(|a| a.parse().map_err(|e| format!("--internal-addr {a}: {e}")))
            .transpose()?,
        drain_timeout: Duration::from_secs_f64(
            drain_timeout
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| format!("--drain-timeout {drain_timeout}: expected seconds"))?,
        ),
        forwarding,
        event_log,
        idle_timeout: idle_timeout
            .map(|s| positive_secs("--idle-timeout", &s))
            .transpose()?,
        keep_alive: keep_alive
            .map(|s| positive_secs("--keep-alive", &s))
            .transpose()?,
    })
}

/// A positive number of seconds, for option `name`.
fn positive_secs(name: &str, s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .filter(|s| s.is_finite() && *s > 0.0)
        .map(Duration::from_secs_f64)
        .ok_or_else(|| format!("{name} {s}: expected seconds"))
}

fn tools() -> Value {
    json!([
        {"name": "echo", "description": "Returns its text.",
         "inputSchema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
        {"name": "whoami", "description": "Names the node that served the call.",
         "inputSchema": {"type": "object", "properties": {}}},
        {"name": "notify", "description": "Sends a log message on the standalone stream after delayMs (at once, before the answer, without it).",
         "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}, "delayMs": {"type": "integer"}}, "required": ["message"]}},
        {"name": "progress", "description": "Sends progress and log notifications, then returns.",
         "inputSchema": {"type": "object", "properties": {"steps": {"type": "integer"}}, "required": ["steps"]}},
        {"name": "broadcast", "description": "Sends a log message to every session of the cluster; returns how many on this node.",
         "inputSchema": {"type": "object", "properties": {"message": {"type": "string"}}, "required": ["message"]}},
        {"name": "sample", "description": "Asks the client to sample a completion for the prompt.",
         "inputSchema": {"type": "object", "properties": {"prompt": {"type": "string"}}, "required": ["prompt"]}}
    ])
}

fn text(s: impl Into<String>) -> Value {
    json!({"content": [{"type": "text", "text": s.into()}]})
}

fn server_info() -> Value {
    json!({"name": "mcp-affinity-node", "version": env!("CARGO_PKG_VERSION")})
}

fn capabilities() -> Value {
    json!({"tools": {"listChanged": false}, "logging": {}})
}

/// `server/discover` (2026-07-28): the modern versions, the capabilities, and the server's
/// name and version under `_meta`.
fn discover() -> Value {
    let modern: Vec<&str> = ProtocolVersion::ALL
        .iter()
        .filter(|v| v.era() == Era::Modern)
        .map(|v| v.as_str())
        .collect();
    json!({
        "supportedVersions": modern,
        "capabilities": capabilities(),
        "_meta": {"io.modelcontextprotocol/serverInfo": server_info()},
        "ttlMs": 60_000,
        "cacheScope": "public"
    })
}

/// What the handler needs: the node's name, the cluster bus (for `broadcast`) and the listen
/// streams' shared state.
#[derive(Clone)]
struct App {
    node: Arc<str>,
    bus: ClusterBus,
    listens: Listens,
}

/// The `subscriptions/listen` streams of the node: how many are open, and the flag that ends
/// them (set when the node drains).
#[derive(Clone)]
struct Listens {
    open: Arc<AtomicUsize>,
    stop: watch::Receiver<bool>,
}

impl Listens {
    /// The streams' state, and the sender that ends them all.
    fn new() -> (Self, watch::Sender<bool>) {
        let (stop_tx, stop) = watch::channel(false);
        let open = Arc::new(AtomicUsize::new(0));
        (Self { open, stop }, stop_tx)
    }

    fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }
}

/// Counts one open listen stream while it lives; logs how it ended.
struct ListenGuard {
    open: Arc<AtomicUsize>,
    id: Value,
    /// The node ended it (drain); otherwise the client went away (the transport dropped the
    /// handler when the stream closed).
    ended_by_node: bool,
}

impl Drop for ListenGuard {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        let by = if self.ended_by_node { "node" } else { "client" };
        tracing::debug!(subscription = %self.id, by, "listen stream ended");
    }
}

/// `subscriptions/listen` (2026-07-28): a request that lasts as long as its stream. The first
/// message is the acknowledgement, tagged with the subscription id (the request's JSON-RPC
/// id); its `notifications` are the requested types the node honours, none (its tool list
/// never changes, so no list change is ever sent). The transport keeps the stream alive with
/// comments. It ends when the client closes the stream (the transport drops this future) or
/// when the node drains: then with a `complete` result carrying the subscription id.
async fn listen(
    listens: &Listens,
    req: &HandlerRequest,
    cx: &RequestContext,
) -> Result<Value, ErrorObject> {
    check_filter(req.params.get("notifications"))?;
    let id = json!(cx.id().unwrap_or(&RequestId::Number(0)));
    let mut guard = ListenGuard {
        open: listens.open.clone(),
        id: id.clone(),
        ended_by_node: false,
    };
    guard.open.fetch_add(1, Ordering::Relaxed);
    let meta = json!({"io.modelcontextprotocol/subscriptionId": id});
    cx.notify(
        "notifications/subscriptions/acknowledged",
        Some(json!({"notifications": {}, "_meta": meta})),
    )
    .map_err(|e| ErrorObject::internal(e.to_string()))?;
    tracing::debug!(subscription = %id, "listen stream open");
    // A closed sender means the node is stopping too.
    let mut stop = listens.stop.clone();
    let _ = stop.wait_for(|stopped| *stopped).await;
    guard.ended_by_node = true;
    Ok(json!({"_meta": {
        "io.modelcontextprotocol/subscriptionId": id,
        "io.modelcontextprotocol/serverInfo": server_info(),
    }}))
}

/// The `notifications` filter of `subscriptions/listen` (required): an object whose flags are
/// booleans and whose `resourceSubscriptions` is an array of strings.
fn check_filter(filter: Option<&Value>) -> Result<(), ErrorObject> {
    let Some(Value::Object(filter)) = filter else {
        return Err(ErrorObject::invalid_params(
            "subscriptions/listen needs notifications (an object)",
        ));
    };
    for (name, value) in filter {
        let ok = match name.as_str() {
            "toolsListChanged" | "promptsListChanged" | "resourcesListChanged" => {
                value.is_boolean()
            }
            "resourceSubscriptions" => value
                .as_array()
                .is_some_and(|uris| uris.iter().all(Value::is_string)),
            _ => true,
        };
        if !ok {
            return Err(ErrorObject::invalid_params(format!(
                "notifications.{name}: wrong type"
            )));
        }
    }
    Ok(())
}

async fn handle_request(
    app: App,
    req: HandlerRequest,
    cx: RequestContext,
) -> Result<Value, ErrorObject> {
    let mut result = match req.method.as_str() {
        "initialize" => {
            let requested = req.params.get("protocolVersion").and_then(Value::as_str);
            let version = requested
                .and_then(ProtocolVersion::parse)
                .filter(|v| v.era() == Era::Legacy)
                .unwrap_or(ProtocolVersion::LATEST_LEGACY);
            json!({"protocolVersion": version.as_str(), "capabilities": capabilities(), "serverInfo": server_info()})
        }
        "server/discover" if cx.era() == Era::Modern => discover(),
        "server/discover" => json!({
            "supportedVersions": ["2026-07-28"],
            "capabilities": capabilities(),
            "serverInfo": server_info()
        }),
        "subscriptions/listen" if cx.era() == Era::Modern => {
            listen(&app.listens, &req, &cx).await?
        }
        "ping" | "logging/setLevel" => json!({}),
        "tools/list" if cx.era() == Era::Modern => {
            // 2026-07-28 list results carry caching hints.
            json!({"tools": tools(), "ttlMs": 0, "cacheScope": "public"})
        }
        "tools/list" => json!({"tools": tools()}),
        "tools/call" => call_tool(&app, &req, &cx).await?,
        m if m.starts_with("notifications/") => json!({}),
        other => return Err(ErrorObject::method_not_found(other)),
    };
    if cx.era() == Era::Modern
        && let Some(obj) = result.as_object_mut()
    {
        obj.insert("resultType".into(), json!("complete"));
    }
    Ok(result)
}

async fn call_tool(
    app: &App,
    req: &HandlerRequest,
    cx: &RequestContext,
) -> Result<Value, ErrorObject> {
    let name = req
        .params
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let args = req.params.get("arguments").cloned().unwrap_or(Value::Null);
    let arg_str = |k: &str| args.get(k).and_then(Value::as_str).map(str::to_owned);
    match name {
        "echo" => Ok(text(arg_str("text").unwrap_or_default())),
        "whoami" => Ok(text(json!({"node": &*app.node}).to_string())),
        "broadcast" => {
            let message = arg_str("message").unwrap_or_default();
            // Published once for the other nodes, then delivered here.
            let params = Some(json!({"level": "info", "data": message}));
            match app.bus.notify_all("notifications/message", params) {
                Ok(n) => Ok(text(n.to_string())),
                // Redis slow or down: nobody got it; the caller may try again.
                Err(e) => Err(ErrorObject::internal(format!("broadcast not sent: {e}"))),
            }
        }
        "notify" => {
            let session = cx
                .session()
                .ok_or_else(|| ErrorObject::invalid_params("notify needs a legacy session"))?
                .clone();
            let message = arg_str("message").unwrap_or_default();
            let delay = args.get("delayMs").and_then(Value::as_u64).unwrap_or(0);
            let params = Some(json!({"level": "info", "data": message}));
            if delay == 0 {
                // Queued before the call is answered: the messages of successive calls keep
                // their order (two spawned tasks could run in either order).
                let _ = session.notify("notifications/message", params);
                return Ok(text("sent"));
            }
            let s = session.clone();
            session.spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let _ = s.notify("notifications/message", params);
            });
            Ok(text("scheduled"))
        }
        "progress" => {
            let steps = args
                .get("steps")
                .and_then(Value::as_u64)
                .unwrap_or(3)
                .min(1000);
            let token = req.progress_token().cloned();
            let log_level = cx.era() == Era::Legacy
                || req
                    .params
                    .pointer("/_meta/io.modelcontextprotocol~1logLevel")
                    .is_some();
            for i in 1..=steps {
                if let Some(token) = &token {
                    let _ = cx.notify(
                        "notifications/progress",
                        Some(json!({"progressToken": token, "progress": i, "total": steps})),
                    );
                }
                if log_level {
                    let _ = cx.notify(
                        "notifications/message",
                        Some(json!({"level": "info", "data": format!("step {i} of {steps}")})),
                    );
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Ok(text("done"))
        }
        "sample" => {
            let prompt = arg_str("prompt").unwrap_or_default();
            let answer = cx
                .request(
                    "sampling/createMessage",
                    Some(json!({
                        "messages": [{"role": "user", "content": {"type": "text", "text": prompt}}],
                        "maxTokens": 100
                    })),
                )
                .await
                .map_err(|e| ErrorObject::internal(format!("sampling failed: {e}")))?;
            let t = answer
                .pointer("/content/text")
                .and_then(Value::as_str)
                .unwrap_or_default();
            Ok(text(t))
        }
        other => Err(ErrorObject::invalid_params(format!("unknown tool {other}"))),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,mcp_affinity=debug".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    install_metrics();
    let args = parse_args().map_err(|e| {
        eprintln!("{e}");
        e
    })?;

    match args.redis.clone() {
        Some(url) => {
            let store = RedisStore::builder(&url).build_lazy()?;
            // The cluster bus on the same Redis: pub/sub, one connection per node.
            let bus = ClusterBus::builder(args.node.clone())
                .with_redis(url)
                .build()?;
            tracing::info!("session registry and cluster bus: Redis");
            serve(args, store, bus).await
        }
        None => {
            tracing::info!("session registry: embedded (in memory)");
            let bus = ClusterBus::local(args.node.clone());
            serve(args, MemoryStore::new(), bus).await
        }
    }
}

async fn serve<R: RegistryStore>(
    args: Args,
    store: R,
    bus: ClusterBus,
) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let local = listener.local_addr()?;
    // The three layers in one call: tagged session ids, one node name, forwarding to live
    // owners and adoption from gone ones, one idle timeout.
    let mut stack = McpStack::builder(args.node.clone(), store)
        // Where the other nodes forward this node's sessions' requests: an internal address
        // in a real deployment (here, by default, the one the node listens on).
        .with_internal_address(args.internal_addr.unwrap_or(local))
        .with_bus(bus.clone())
        .with_registry(|r| r.with_forwarding(args.forwarding))
        .with_shared_event_log(args.event_log)
        .with_affinity(|a| {
            let a = a.with_cookie_secure(args.cookie_secure);
            match &args.cookie_name {
                Some(name) => a.with_cookie_name(name.clone()),
                None => a,
            }
        })
        .with_transport(|t| {
            let t = t.with_allowed_hosts(HostPolicy::localhost());
            match args.keep_alive {
                Some(every) => t.with_keep_alive(Some(every)),
                None => t,
            }
        });
    if let Some(t) = &args.tag {
        stack = stack.with_tag(NodeTag::new(t).map_err(|e| format!("--tag {t}: {e}"))?);
    }
    if let Some(idle) = args.idle_timeout {
        stack = stack.with_idle_timeout(idle);
    }
    let stack = stack.build()?;
    let handle = stack.handle();
    let node_header = HeaderValue::from_str(&args.node)?;
    println!(
        "MCP node {} (tag {}) listening on http://{local}/mcp",
        args.node,
        handle.tag()
    );
    tracing::info!(node = %args.node, tag = %handle.tag(), %local, "listening");

    let (listens, end_listens) = Listens::new();
    let connections = if args.transport_only {
        tracing::info!("transport only: no affinity, no registry");
        // For benchmarks: the transport alone, with untagged ids, stopped by its own handle.
        let mut transport =
            SseTransportLayer::builder().with_allowed_hosts(HostPolicy::localhost());
        if let Some(idle) = args.idle_timeout {
            transport = transport.with_idle_timeout(idle);
        }
        if let Some(every) = args.keep_alive {
            transport = transport.with_keep_alive(Some(every));
        }
        let transport = transport.build()?;
        let t = transport.handle();
        // This node's own sessions only (the stack's transport, and its bus, go unused).
        let bus = ClusterBus::local(args.node.clone());
        bus.attach(&t);
        let ops = Ops::transport_only(t.clone(), listens.clone(), bus.clone());
        let app = App {
            node: args.node.as_str().into(),
            bus,
            listens,
        };
        let stop = stop_transport_on_signal(t.clone(), args.drain_timeout, end_listens);
        let mcp = ServiceBuilder::new()
            .layer(transport)
            .service(handler_fn(move |req, cx| {
                handle_request(app.clone(), req, cx)
            }));
        serve_node(listener, mcp, node_header, ops, stop).await
    } else {
        if !handle.announce(Duration::from_secs(2)).await {
            tracing::warn!(
                "liveness record not written yet (store unreachable?); retried in the background"
            );
        }
        let ops = Ops::stack(handle.clone(), listens.clone());
        let stop = stop_on_signal(handle.clone(), args.drain_timeout, end_listens);
        let app = App {
            node: args.node.as_str().into(),
            bus: handle.bus().clone(),
            listens,
        };
        let mcp = ServiceBuilder::new()
            .layer(stack)
            .service(handler_fn(move |req, cx| {
                handle_request(app.clone(), req, cx)
            }));
        serve_node(listener, mcp, node_header, ops, stop).await
    };
    if tokio::time::timeout(Duration::from_secs(10), connections.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after 10 s; exiting");
    }
    Ok(())
}

/// What the node's own routes read: whether it drains, and its counters as JSON.
#[derive(Clone)]
struct Ops {
    draining: Arc<dyn Fn() -> bool + Send + Sync>,
    stats: Arc<dyn Fn() -> Value + Send + Sync>,
}

impl Ops {
    fn stack<R: RegistryStore>(handle: StackHandle<R>, listens: Listens) -> Self {
        let h = handle.clone();
        Self {
            draining: Arc::new(move || h.is_draining()),
            stats: Arc::new(move || {
                let stats = handle.stats();
                let s = stats.registry;
                json!({
                    "registry": {
                        "registered": s.registered, "removed": s.removed, "misroutes": s.misroutes,
                        "unknown": s.unknown, "node_restarted": s.node_restarted,
                        "forwarded": s.forwarded, "forward_failures": s.forward_failures,
                        "adopted": s.adopted, "adoptions_lost": s.adoptions_lost,
                        "orphans_removed": s.orphans_removed, "store_errors": s.store_errors,
                        "lookups_limited": s.lookups_limited, "known_misses": s.known_misses,
                        "cleanup_pending": s.cleanup_pending, "tracked": s.tracked,
                    },
                    "transport": {"sessions": stats.sessions},
                    "listen": {"open": listens.open()},
                    "bus": bus_json(&stats.bus),
                })
            }),
        }
    }

    fn transport_only(transport: TransportHandle, listens: Listens, bus: ClusterBus) -> Self {
        let t = transport.clone();
        Self {
            draining: Arc::new(move || t.is_shutting_down()),
            stats: Arc::new(move || {
                json!({
                    "registry": null,
                    "transport": {"sessions": transport.session_count()},
                    "listen": {"open": listens.open()},
                    "bus": bus_json(&bus.stats()),
                })
            }),
        }
    }
}

/// The bus counters of `/stats`.
fn bus_json(b: &BusStats) -> Value {
    json!({
        "published": b.published, "publish_failed": b.publish_failed,
        "backlogged": b.backlogged, "received": b.received, "delivered": b.delivered,
        "dropped_malformed": b.dropped_malformed, "dropped_oversized": b.dropped_oversized,
        "dropped_unknown_session": b.dropped_unknown_session,
        "dropped_overflow": b.dropped_overflow, "disconnects": b.disconnects,
        "connected": b.connected,
    })
}

/// Waits for SIGTERM or SIGINT, then stops the node while it still accepts (see
/// `StackHandle::shutdown`): `subscriptions/listen` streams end with their final result
/// (they count as no running handler, so nothing else would end them before the connections
/// close), the liveness record says `draining`, `/healthz` fails, GET streams end with a
/// `retry:` hint; once no `/mcp` request arrived for 1.5 s (the balancer has stopped routing
/// here, and other nodes no longer trust a "serving" they read before the drain) and none is
/// running, or when `timeout` has passed, the sessions close (their records stay for the
/// nodes that adopt them), the registry's writes land and the node leaves the cluster. Then
/// the server stops accepting.
async fn stop_on_signal<R: RegistryStore>(
    handle: StackHandle<R>,
    timeout: Duration,
    end_listens: watch::Sender<bool>,
) {
    shutdown_signal().await;
    end_listens.send_replace(true);
    let report = handle.shutdown(timeout).await;
    tracing::info!(?report, "stopped; draining connections");
}

/// [`stop_on_signal`] for the transport alone: listen and GET streams end, running handlers
/// finish (at most `timeout`), sessions close.
async fn stop_transport_on_signal(
    transport: TransportHandle,
    timeout: Duration,
    end_listens: watch::Sender<bool>,
) {
    shutdown_signal().await;
    end_listens.send_replace(true);
    let started = tokio::time::Instant::now();
    let streams = transport.drain();
    tracing::info!(streams, "draining");
    while transport.running_handlers() > 0 && started.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let closed = transport.shutdown().await;
    tracing::info!(closed, "sessions closed; draining connections");
}

/// The Prometheus recorder, installed before the layers are built (feature `metrics`).
#[cfg(feature = "metrics")]
static METRICS: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
    std::sync::OnceLock::new();

/// The buckets of the layers' latency histograms (forward, adoption), in seconds: from 25 µs (a
/// forward on loopback takes about 0.1 ms) to 10 s. Every node of a cluster must use the same
/// buckets for them to add up.
#[cfg(feature = "metrics")]
const LATENCY_BUCKETS: [f64; 18] = [
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the Prometheus recorder for the layers' metrics, and its upkeep (which drains the
/// histograms' samples) in the background.
///
/// Histograms (the layers' two are the only ones here) are exported as Prometheus histograms
/// (`_bucket{le=…}`), not as the exporter's default summaries: the buckets of a cluster's nodes
/// add up (`sum by (le)`) into one distribution, where quantiles computed on each node do not;
/// and the upkeep's drain of the samples counts them into buckets instead of updating a
/// sketch.
fn install_metrics() {
    #[cfg(feature = "metrics")]
    match metrics_exporter_prometheus::PrometheusBuilder::new()
        .set_buckets(&LATENCY_BUCKETS)
        .and_then(metrics_exporter_prometheus::PrometheusBuilder::install_recorder)
    {
        Ok(handle) => {
            mcp_affinity::metrics::describe();
            let upkeep = handle.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    upkeep.run_upkeep();
                }
            });
            let _ = METRICS.set(handle);
        }
        Err(e) => tracing::warn!(error = %e, "no metrics recorder"),
    }
}

/// `/metrics`: the Prometheus text format.
fn metrics_text() -> (
    axum::http::StatusCode,
    [(axum::http::HeaderName, &'static str); 1],
    String,
) {
    let ct = (
        axum::http::header::CONTENT_TYPE,
        "text/plain; version=0.0.4; charset=utf-8",
    );
    #[cfg(feature = "metrics")]
    if let Some(handle) = METRICS.get() {
        return (axum::http::StatusCode::OK, [ct], handle.render());
    }
    (
        axum::http::StatusCode::NOT_FOUND,
        [ct],
        "metrics off: build with --features metrics\n".to_owned(),
    )
}

/// The node's other routes: `/healthz`, `/stats`, `/metrics` and a stand-in `/graphql`.
fn routes(ops: &Ops) -> Router {
    let draining = ops.draining.clone();
    let stats = ops.stats.clone();
    Router::new()
        .route("/metrics", get(|| async { metrics_text() }))
        .route(
            "/healthz",
            get(move || {
                let draining = draining();
                async move {
                    if draining {
                        (axum::http::StatusCode::SERVICE_UNAVAILABLE, "draining")
                    } else {
                        (axum::http::StatusCode::OK, "ok")
                    }
                }
            }),
        )
        .route(
            "/stats",
            get(move || {
                let body = stats().to_string();
                async move {
                    (
                        [(axum::http::header::CONTENT_TYPE, "application/json")],
                        body,
                    )
                }
            }),
        )
        .route(
            "/graphql",
            get(|| async { "graphql" }).post(|| async { "graphql" }),
        )
}

/// A response body from either side of [`McpFirst`].
type NodeBody<B> = http_body_util::Either<B, axum::body::Body>;

/// `/mcp` to `mcp` (the layers around the handler), anything else to `router`.
///
/// `/mcp` is dispatched before the router rather than mounted with `route_service`: axum's
/// routing boxes the request body, records `MatchedPath` in the extensions and clones a
/// boxed route per request, which measured about 1 µs (7 %) of a `ping` on this node.
#[derive(Clone)]
struct McpFirst<M> {
    mcp: M,
    router: Router,
}

impl<M, B> Service<Request<Incoming>> for McpFirst<M>
where
    M: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Clone,
{
    type Response = Response<NodeBody<B>>;
    type Error = Infallible;
    type Future = Either<
        MapOk<M::Future, fn(Response<B>) -> Response<NodeBody<B>>>,
        MapOk<
            Oneshot<Router, Request<Incoming>>,
            fn(axum::response::Response) -> Response<NodeBody<B>>,
        >,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The router is always ready (and each request gets its own clone). The MCP stack's
        // readiness gates every path; its layers pass `handler_fn`'s, which is always ready.
        self.mcp.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        if req.uri().path() == "/mcp" {
            // The ready service serves this request; this one keeps the clone.
            let clone = self.mcp.clone();
            let mut ready = std::mem::replace(&mut self.mcp, clone);
            Either::Left(ready.call(req).map_ok(|res| res.map(NodeBody::Left)))
        } else {
            Either::Right(
                self.router
                    .clone()
                    .oneshot(req)
                    .map_ok(|res| res.map(NodeBody::Right)),
            )
        }
    }
}

/// Serves the node on HTTP/1.1 until `stop` completes (the drain after SIGINT or SIGTERM): `/mcp` by `mcp`, every other path by
/// the axum [`routes`], and `x-mcp-node: <node>` on every response. Returns the open
/// connections, to be drained once the sessions are closed.
async fn serve_node<M, B>(
    listener: tokio::net::TcpListener,
    mcp: M,
    node: HeaderValue,
    ops: Ops,
    stop: impl Future<Output = ()>,
) -> hyper_util::server::graceful::GracefulShutdown
where
    M: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    M::Future: Send + 'static,
    B: axum::body::HttpBody<Data = axum::body::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // The header by a plain `tower` map around the whole node (`Router::layer` would wrap
    // each route once more), with a `HeaderName` made once: a `&str` name is copied per use.
    let name = axum::http::HeaderName::from_static("x-mcp-node");
    let service = ServiceBuilder::new()
        .map_response(move |mut res: Response<NodeBody<B>>| {
            res.headers_mut().insert(name.clone(), node.clone());
            res
        })
        .service(McpFirst {
            mcp,
            router: routes(&ops),
        });
    // One HTTP/1.1 connection per accepted socket (hyper's `http1`, no protocol sniffing),
    // and a graceful-shutdown watcher on each connection.
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    let mut signal = std::pin::pin!(stop);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut signal => break,
        };
        // Small JSON-RPC answers would otherwise wait on Nagle + delayed ACK.
        let _ = tcp.set_nodelay(true);
        let conn = hyper::server::conn::http1::Builder::new().serve_connection(
            hyper_util::rt::TokioIo::new(tcp),
            hyper_util::service::TowerToHyperService::new(service.clone()),
        );
        let conn = connections.watch(conn);
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
    connections
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
