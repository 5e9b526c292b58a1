//! The three layers of a cluster node, built and wired in one call, and one handle that drains
//! and stops them in order.
//!
#![doc = include_str!("../docs/stack.md")]

use std::{
    fmt,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;
use tower_layer::Layer;

use crate::{
    ConfigError, SessionAffinity, SessionAffinityLayer, SessionRegistry, SessionRegistryLayer,
    SseTransport, SseTransportLayer,
    affinity::{AffinityStats, AffinityStatsSnapshot, SessionAffinityBuilder},
    bus::ClusterBus,
    registry::{RegistryHandle, RegistryStats, RegistryStore, SessionRegistryBuilder},
    session::{Durability, NodeTag},
    transport::{SseTransportBuilder, TransportHandle},
};

/// The default [quiet period](McpStackBuilder::with_quiet_period) of a drain: longer than other
/// nodes trust a liveness record they read (1 s), so a node that read "serving" just before
/// the drain and forwards here meanwhile is still served.
pub const DEFAULT_QUIET_PERIOD: Duration = Duration::from_millis(1500);

/// How long [`StackHandle::shutdown`] waits for the registry's queued writes to land.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long announcing the drain and leaving the cluster may each take.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(1);
/// How often a drain looks at the request count and the running handlers.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// The three layers of a cluster node, wired: affinity outermost, then the session registry,
/// then the transport.
///
/// As a [`Layer`] it wraps a handler in all three at once
/// (`SessionAffinity<SessionRegistry<SseTransport<S>, R>>`); [`into_layers`](Self::into_layers)
/// gives them apart, to put another layer between them. Build it once per node: the layers
/// hold the node's shared state (sessions, registry queues, counters), and every clone and
/// every service they build share it.
///
/// See the [module docs](crate::stack) for an example.
///
/// # Order
///
/// `SessionAffinityLayer` → `SessionRegistryLayer` → `SseTransportLayer` → handler, the only
/// order in which every layer sees what it needs (see each layer's `# Order`). Put
/// authentication outside it when sessions are bound to a principal.
///
/// # Backpressure
///
/// `poll_ready` forwards the handler's readiness through all three layers, which hold no
/// resource of their own in it. What each layer bounds (running handlers, sessions, registry
/// lookups, forwards) is in its own `# Backpressure` section and in the
/// [crate docs](crate#backpressure).
#[must_use]
pub struct McpStack<R> {
    affinity: SessionAffinityLayer,
    registry: SessionRegistryLayer<R>,
    transport: SseTransportLayer,
    handle: StackHandle<R>,
}

impl<R> Clone for McpStack<R> {
    fn clone(&self) -> Self {
        Self {
            affinity: self.affinity.clone(),
            registry: self.registry.clone(),
            transport: self.transport.clone(),
            handle: self.handle.clone(),
        }
    }
}

impl<R: fmt::Debug> fmt::Debug for McpStack<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpStack")
            .field("affinity", &self.affinity)
            .field("registry", &self.registry)
            .field("transport", &self.transport)
            .finish_non_exhaustive()
    }
}

/// The settings of an [`McpStack`]: the node, its store, what the layers share, and each
/// layer's own builder; [`build`](Self::build) validates them all.
///
/// Setters apply in the order they are called: [`with_idle_timeout`](Self::with_idle_timeout)
/// then `with_transport(|t| t.with_idle_timeout(..))` leaves the transport with the second.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use mcp_affinity::{registry::MemoryStore, stack::McpStack};
///
/// let stack = McpStack::builder("node-a", MemoryStore::new())
///     .with_idle_timeout(Duration::from_secs(600))
///     .with_affinity(|a| a.with_cookie_secure(false))
///     .with_registry(|r| r.with_forwarding(false))
///     .build()
///     .unwrap();
/// assert!(!stack.affinity().set_cookie_value().contains("Secure"));
/// let err = McpStack::builder("node-a", MemoryStore::new())
///     .with_transport(|t| t.with_max_sessions(0))
///     .build()
///     .unwrap_err();
/// assert_eq!((err.component(), err.field()), ("transport", "max_sessions"));
/// ```
#[must_use]
pub struct McpStackBuilder<R> {
    affinity: SessionAffinityBuilder,
    registry: SessionRegistryBuilder<R>,
    transport: SseTransportBuilder,
    quiet: Duration,
    node: String,
    bus: Option<ClusterBus>,
    shared_event_log: bool,
}

impl<R: fmt::Debug> fmt::Debug for McpStackBuilder<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("McpStackBuilder")
            .field("affinity", &self.affinity)
            .field("registry", &self.registry)
            .field("transport", &self.transport)
            .field("quiet", &self.quiet)
            .finish()
    }
}

impl<R: RegistryStore> McpStack<R> {
    /// A builder for the node named `node` (in the registry's records and logs; never sent to
    /// clients) whose sessions are recorded in `store`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{registry::MemoryStore, session::NodeTag, stack::McpStack};
    ///
    /// let stack = McpStack::builder("node-a", MemoryStore::new()).build().unwrap();
    /// assert_eq!(stack.affinity().tag(), &NodeTag::derive("node-a"));
    /// assert_eq!(stack.handle().registry().node(), "node-a");
    /// ```
    pub fn builder(node: impl Into<String>, store: R) -> McpStackBuilder<R> {
        McpStackBuilder::new(node, store)
    }

    /// The stack with every default: [`builder`](Self::builder) then
    /// [`build`](McpStackBuilder::build).
    ///
    /// # Errors
    ///
    /// An invalid node name (see [`SessionRegistryBuilder::build`]).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{registry::MemoryStore, stack::McpStack};
    ///
    /// assert!(McpStack::new("node-a", MemoryStore::new()).is_ok());
    /// assert_eq!(McpStack::new("", MemoryStore::new()).unwrap_err().field(), "node");
    /// ```
    pub fn new(node: impl Into<String>, store: R) -> Result<Self, ConfigError> {
        Self::builder(node, store).build()
    }
}

impl<R> McpStack<R> {
    /// The handle that watches, drains and stops this node (shared with every clone).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{registry::MemoryStore, stack::McpStack};
    ///
    /// let stack = McpStack::new("node-a", MemoryStore::new()).unwrap();
    /// let handle = stack.handle();
    /// assert!(!handle.is_draining());
    /// assert_eq!(handle.stats().sessions, 0);
    /// ```
    pub fn handle(&self) -> StackHandle<R> {
        self.handle.clone()
    }

    /// The affinity layer (outermost).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{registry::MemoryStore, stack::McpStack};
    ///
    /// let stack = McpStack::new("node-a", MemoryStore::new()).unwrap();
    /// assert_eq!(stack.affinity().scope(), "/mcp");
    /// ```
    pub fn affinity(&self) -> &SessionAffinityLayer {
        &self.affinity
    }

    /// The session registry layer (in the middle).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{registry::MemoryStore, stack::McpStack};
    ///
    /// let stack = McpStack::new("node-a", MemoryStore::new()).unwrap();
    /// assert_eq!(stack.registry().handle().node(), "node-a");
    /// ```
    pub fn registry(&self) -> &SessionRegistryLayer<R> {
        &self.registry
    }

    /// The transport layer (innermost).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{registry::MemoryStore, stack::McpStack};
    ///
    /// let stack = McpStack::new("node-a", MemoryStore::new()).unwrap();
    /// assert_eq!(stack.transport().handle().session_count(), 0);
    /// ```
    pub fn transport(&self) -> &SseTransportLayer {
        &self.transport
    }

    /// The three layers, outermost first, to stack with another layer between them. The
    /// [handle](Self::handle) taken before still drives them.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{handler::handler_fn, registry::MemoryStore, stack::McpStack};
    ///
    /// let stack = McpStack::new("node-a", MemoryStore::new()).unwrap();
    /// let handle = stack.handle();
    /// let (affinity, registry, transport) = stack.into_layers();
    /// let svc = tower::ServiceBuilder::new()
    ///     .layer(affinity)
    ///     .layer(registry)
    ///     // .layer(your_layer)
    ///     .layer(transport)
    ///     .service(handler_fn(|_req, _cx| async { Ok(serde_json::json!({})) }));
    /// # let _ = (svc, handle);
    /// ```
    pub fn into_layers(
        self,
    ) -> (
        SessionAffinityLayer,
        SessionRegistryLayer<R>,
        SseTransportLayer,
    ) {
        (self.affinity, self.registry, self.transport)
    }
}

impl<S, R: RegistryStore> Layer<S> for McpStack<R> {
    type Service = SessionAffinity<SessionRegistry<SseTransport<S>, R>>;

    fn layer(&self, inner: S) -> Self::Service {
        self.affinity
            .layer(self.registry.layer(self.transport.layer(inner)))
    }
}

impl<R: RegistryStore> McpStackBuilder<R> {
    /// A builder with the defaults of each layer, the affinity tag
    /// [derived](NodeTag::derive) from `node`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{registry::MemoryStore, stack::McpStackBuilder};
    ///
    /// assert!(McpStackBuilder::new("node-a", MemoryStore::new()).build().is_ok());
    /// ```
    pub fn new(node: impl Into<String>, store: R) -> Self {
        let node = node.into();
        Self {
            affinity: SessionAffinityBuilder::for_node(&node),
            registry: SessionRegistryBuilder::new(store, node.clone()),
            transport: SseTransportBuilder::new(),
            quiet: DEFAULT_QUIET_PERIOD,
            bus: None,
            shared_event_log: true,
            node,
        }
    }

    /// The node's tag, in its cookie and its session ids (default: derived from the node
    /// name, 8 hex digits). Keep it opaque and unique per node.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{registry::MemoryStore, session::NodeTag, stack::McpStack};
    ///
    /// let tag = NodeTag::new("eu1").unwrap();
    /// let stack = McpStack::builder("node-a", MemoryStore::new()).with_tag(tag.clone()).build().unwrap();
    /// assert_eq!(stack.affinity().tag(), &tag);
    /// ```
    pub fn with_tag(mut self, tag: NodeTag) -> Self {
        self.affinity.set_tag(tag);
        self
    }

    /// Where the other nodes reach this one to forward its sessions' requests (an internal
    /// address: [`SessionRegistryBuilder::with_internal_address`]). Without one, the other
    /// nodes cannot forward here and adopt this node's sessions instead.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{registry::MemoryStore, stack::McpStack};
    ///
    /// let stack = McpStack::builder("node-a", MemoryStore::new())
    ///     .with_internal_address("10.0.0.5:8080".parse().unwrap())
    ///     .with_registry(|r| r.with_peer_networks(["10.0.0.0/8"]))
    ///     .build();
    /// assert!(stack.is_ok());
    /// ```
    pub fn with_internal_address(mut self, address: SocketAddr) -> Self {
        self.registry = self.registry.with_internal_address(address);
        self
    }

    /// One idle timeout for the transport's sessions
    /// ([`SseTransportBuilder::with_idle_timeout`]) and for the registry's records of
    /// sessions nobody holds any more ([`SessionRegistryBuilder::with_idle_timeout`]).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::{registry::MemoryStore, stack::McpStack};
    ///
    /// let ok = McpStack::builder("node-a", MemoryStore::new()).with_idle_timeout(Duration::from_secs(300)).build();
    /// assert!(ok.is_ok());
    /// let err = McpStack::builder("node-a", MemoryStore::new()).with_idle_timeout(Duration::ZERO).build().unwrap_err();
    /// assert_eq!(err.field(), "idle_timeout");
    /// ```
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.transport = self.transport.with_idle_timeout(idle);
        self.registry = self.registry.with_idle_timeout(idle);
        self
    }

    /// Whether the transport writes each session's standalone-stream events to the store, so
    /// the node that adopts a session replays them to a client resuming with `Last-Event-ID`
    /// (default on, with continuity). Off, an adopted session's stream starts empty, as with
    /// ADR-0066: no event costs a queued store write.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{registry::MemoryStore, stack::McpStack};
    ///
    /// let stack = McpStack::builder("node-a", MemoryStore::new())
    ///     .with_shared_event_log(false)
    ///     .build();
    /// assert!(stack.is_ok());
    /// ```
    pub fn with_shared_event_log(mut self, on: bool) -> Self {
        self.shared_event_log = on;
        self
    }

    /// When the shared event log lets a standalone stream's event go to its client: at once
    /// ([`Durability::WriteBehind`], the default) or once the store holds it
    /// ([`Durability::WriteThrough`]): see
    /// [`SessionRegistryBuilder::with_event_log_durability`], which this sets. With
    /// write-through, a node killed outright never loses an event one of its clients has
    /// received; each event's delivery waits for one batched store write. Nothing changes
    /// without the shared event log ([`with_shared_event_log`](Self::with_shared_event_log)
    /// off, or continuity off).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{registry::MemoryStore, session::{Durability, EventSink}, stack::McpStack};
    ///
    /// let stack = McpStack::builder("node-a", MemoryStore::new())
    ///     .with_event_log_durability(Durability::WriteThrough)
    ///     .build()
    ///     .unwrap();
    /// let sink = stack.handle().registry().event_sink();
    /// assert_eq!(sink.durability(), Durability::WriteThrough);
    /// ```
    pub fn with_event_log_durability(mut self, durability: Durability) -> Self {
        self.registry = self.registry.with_event_log_durability(durability);
        self
    }

    /// The cluster bus the node delivers to (see [`bus`](crate::bus)): the stack attaches it
    /// to its transport, and [`StackHandle::bus`] gives it back to handlers. Default: a
    /// [local](ClusterBus::local) bus, which reaches this node's sessions only.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::ConfigError> {
    /// use mcp_affinity::{bus::{ClusterBus, MemoryBus}, registry::MemoryStore, stack::McpStack};
    ///
    /// let hub = MemoryBus::new();
    /// let bus = ClusterBus::builder("node-a").with_memory(&hub).build()?;
    /// let stack = McpStack::builder("node-a", MemoryStore::new()).with_bus(bus).build()?;
    /// assert_eq!(stack.handle().bus().node(), "node-a");
    /// # Ok(()) }
    /// ```
    pub fn with_bus(mut self, bus: ClusterBus) -> Self {
        self.bus = Some(bus);
        self
    }

    /// How long a drain waits without a request before it stops the node (default
    /// [`DEFAULT_QUIET_PERIOD`], 1.5 s): long enough for the balancer to have stopped routing
    /// here and for the other nodes to have seen the `draining` liveness record. Zero waits
    /// only for running handlers.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::{registry::MemoryStore, stack::McpStack};
    ///
    /// let stack = McpStack::builder("node-a", MemoryStore::new()).with_quiet_period(Duration::from_secs(3)).build();
    /// assert!(stack.is_ok());
    /// ```
    pub fn with_quiet_period(mut self, quiet: Duration) -> Self {
        self.quiet = quiet;
        self
    }

    /// Changes the affinity layer's other settings (scope, cookie, envelope).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{registry::MemoryStore, stack::McpStack};
    ///
    /// let stack = McpStack::builder("node-a", MemoryStore::new())
    ///     .with_affinity(|a| a.with_cookie_name("mcp_node"))
    ///     .build()
    ///     .unwrap();
    /// assert!(stack.affinity().set_cookie_value().starts_with("mcp_node="));
    /// ```
    pub fn with_affinity(
        mut self,
        f: impl FnOnce(SessionAffinityBuilder) -> SessionAffinityBuilder,
    ) -> Self {
        self.affinity = f(self.affinity);
        self
    }

    /// Changes the session registry's other settings (TTL, fail-closed, continuity, limits).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::{registry::MemoryStore, stack::McpStack};
    ///
    /// let stack = McpStack::builder("node-a", MemoryStore::new())
    ///     .with_registry(|r| r.with_ttl(Duration::from_secs(3600)))
    ///     .build();
    /// assert!(stack.is_ok());
    /// ```
    pub fn with_registry(
        mut self,
        f: impl FnOnce(SessionRegistryBuilder<R>) -> SessionRegistryBuilder<R>,
    ) -> Self {
        self.registry = f(self.registry);
        self
    }

    /// Changes the transport's other settings (limits, timeouts, `Host`/`Origin` policies,
    /// principal, restore hook). Its session id generator is always the affinity layer's.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{registry::MemoryStore, stack::McpStack, transport::HostPolicy};
    ///
    /// let stack = McpStack::builder("node-a", MemoryStore::new())
    ///     .with_transport(|t| t.with_allowed_hosts(HostPolicy::any()).with_max_sessions(10_000))
    ///     .build();
    /// assert!(stack.is_ok());
    /// ```
    pub fn with_transport(
        mut self,
        f: impl FnOnce(SseTransportBuilder) -> SseTransportBuilder,
    ) -> Self {
        self.transport = f(self.transport);
        self
    }

    /// Validates every layer's settings and builds the three layers and their handle.
    ///
    /// # Errors
    ///
    /// The first invalid setting, of the affinity layer, the registry or the transport (see
    /// [`ConfigError::component`]), or `stack`/`affinity_strict` when the affinity layer is in
    /// strict mode while the registry forwards or adopts: strict mode answers those requests
    /// before they reach the registry (see
    /// [`SessionAffinityBuilder::with_strict`]). Turn continuity off
    /// (`with_registry(|r| r.with_continuity(false))`) to use strict mode.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{registry::MemoryStore, stack::McpStack};
    ///
    /// let err = McpStack::builder("node-a", MemoryStore::new())
    ///     .with_affinity(|a| a.with_strict(true))
    ///     .build()
    ///     .unwrap_err();
    /// assert_eq!((err.component(), err.field()), ("stack", "affinity_strict"));
    /// let ok = McpStack::builder("node-a", MemoryStore::new())
    ///     .with_affinity(|a| a.with_strict(true))
    ///     .with_registry(|r| r.with_continuity(false))
    ///     .build();
    /// assert!(ok.is_ok());
    /// ```
    pub fn build(self) -> Result<McpStack<R>, ConfigError> {
        if self.affinity.is_strict() && self.registry.has_continuity() {
            return Err(ConfigError::new(
                "stack",
                "affinity_strict",
                "excludes the registry's forwarding and adoption (turn continuity off)",
            ));
        }
        let continuity = self.registry.has_continuity();
        let affinity = self.affinity.build()?;
        let registry = self.registry.build()?;
        // Session ids carry this node's tag, which the affinity layer reads back.
        let mut transport = self.transport.with_id_generator(affinity.id_generator());
        if continuity && self.shared_event_log {
            // The shared event log: the node that adopts a session replays its standalone
            // stream from the store.
            transport = transport.with_event_sink(registry.handle().event_sink());
        }
        let transport = transport.build()?;
        let bus = self.bus.unwrap_or_else(|| ClusterBus::local(self.node));
        bus.attach(&transport.handle());
        let handle = StackHandle {
            inner: Arc::new(HandleInner {
                tag: affinity.tag().clone(),
                affinity: affinity.stats(),
                registry: registry.handle(),
                transport: transport.handle(),
                bus,
                draining: AtomicBool::new(false),
                quiet: self.quiet,
            }),
        };
        Ok(McpStack {
            affinity,
            registry,
            transport,
            handle,
        })
    }
}

/// Watches, drains and stops one [`McpStack`]: what a node's `/healthz`, `/stats` and signal
/// handler need. Cloning it shares it.
///
/// See the [module docs](crate::stack) for an example.
pub struct StackHandle<R> {
    inner: Arc<HandleInner<R>>,
}

struct HandleInner<R> {
    tag: NodeTag,
    affinity: AffinityStats,
    registry: RegistryHandle<R>,
    transport: TransportHandle,
    bus: ClusterBus,
    draining: AtomicBool,
    quiet: Duration,
}

impl<R> Clone for StackHandle<R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<R: fmt::Debug> fmt::Debug for StackHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackHandle")
            .field("tag", &self.inner.tag)
            .field("draining", &self.inner.draining.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The counters of a whole stack, read by [`StackHandle::stats`].
///
/// # Example
///
/// ```
/// use mcp_affinity::{registry::MemoryStore, stack::McpStack};
///
/// let stats = McpStack::new("node-a", MemoryStore::new()).unwrap().handle().stats();
/// assert_eq!((stats.sessions, stats.running_handlers, stats.affinity.requests), (0, 0, 0));
/// assert_eq!(stats.registry.registered, 0);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StackStats {
    /// The affinity layer's counters (requests in scope, cookies, misroutes).
    pub affinity: AffinityStatsSnapshot,
    /// The registry's counters and queue.
    pub registry: RegistryStats,
    /// Sessions the transport holds now.
    pub sessions: usize,
    /// Request handlers running now.
    pub running_handlers: usize,
    /// Sessions restored on this node (adopted from another) since it started.
    pub sessions_restored: u64,
    /// The cluster bus's counters.
    pub bus: crate::bus::BusStats,
}

/// What [`StackHandle::shutdown`] did, step by step.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// use std::time::Duration;
/// use mcp_affinity::{registry::MemoryStore, stack::McpStack};
///
/// let handle = McpStack::new("node-a", MemoryStore::new()).unwrap().handle();
/// let report = handle.shutdown(Duration::from_secs(5)).await;
/// assert!(report.quiet && report.flushed);
/// // A drain shorter than the quiet period (1.5 s) ends at its timeout.
/// let handle = McpStack::new("node-b", MemoryStore::new()).unwrap().handle();
/// assert!(!handle.shutdown(Duration::from_secs(1)).await.quiet);
/// assert_eq!(report.closed, 0);
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// The `draining` liveness record was written (false without continuity, or when the
    /// store did not answer in time; the record then expires by its TTL).
    pub announced: bool,
    /// GET streams ended with a `retry:` hint.
    pub streams_ended: usize,
    /// The drain ended quiet (no request for the quiet period, no handler running), not at
    /// its timeout.
    pub quiet: bool,
    /// Sessions closed (their records stay, for the nodes that adopt them).
    pub closed: usize,
    /// Every queued registry write landed.
    pub flushed: bool,
    /// The node's liveness record was withdrawn.
    pub left: bool,
}

impl<R> StackHandle<R> {
    /// This node's tag (in its cookie and session ids).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{registry::MemoryStore, session::NodeTag, stack::McpStack};
    ///
    /// let handle = McpStack::new("node-a", MemoryStore::new()).unwrap().handle();
    /// assert_eq!(handle.tag(), &NodeTag::derive("node-a"));
    /// ```
    pub fn tag(&self) -> &NodeTag {
        &self.inner.tag
    }

    /// The transport's handle: sessions, [`notify_all`](TransportHandle::notify_all),
    /// running handlers.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{registry::MemoryStore, stack::McpStack};
    ///
    /// let handle = McpStack::new("node-a", MemoryStore::new()).unwrap().handle();
    /// assert_eq!(handle.transport().notify_all("notifications/message", None), 0);
    /// ```
    pub fn transport(&self) -> &TransportHandle {
        &self.inner.transport
    }

    /// The node's cluster bus ([`with_bus`](McpStackBuilder::with_bus), or a local one):
    /// what handlers use to reach sessions on any node.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{registry::MemoryStore, stack::McpStack};
    ///
    /// let handle = McpStack::new("node-a", MemoryStore::new()).unwrap().handle();
    /// assert_eq!(handle.bus().notify_all("notifications/tools/list_changed", None), Ok(0));
    /// ```
    pub fn bus(&self) -> &ClusterBus {
        &self.inner.bus
    }

    /// The registry's handle: its node, store, counters, flush.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{registry::MemoryStore, stack::McpStack};
    ///
    /// let handle = McpStack::new("node-a", MemoryStore::new()).unwrap().handle();
    /// assert_eq!(handle.registry().node(), "node-a");
    /// ```
    pub fn registry(&self) -> &RegistryHandle<R> {
        &self.inner.registry
    }

    /// Whether the node drains (or has stopped): the answer for a balancer's health check.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use mcp_affinity::{registry::MemoryStore, stack::McpStack};
    ///
    /// let handle = McpStack::new("node-a", MemoryStore::new()).unwrap().handle();
    /// assert!(!handle.is_draining());
    /// handle.drain().await;
    /// assert!(handle.is_draining());
    /// # }
    /// ```
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Acquire)
    }
}

impl<R: RegistryStore> StackHandle<R> {
    /// Every layer's counters.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{registry::MemoryStore, stack::McpStack};
    ///
    /// let handle = McpStack::new("node-a", MemoryStore::new()).unwrap().handle();
    /// assert_eq!(handle.stats().sessions_restored, 0);
    /// ```
    pub fn stats(&self) -> StackStats {
        let t = &self.inner.transport;
        StackStats {
            affinity: self.inner.affinity.snapshot(),
            registry: self.inner.registry.stats(),
            sessions: t.session_count(),
            running_handlers: t.running_handlers(),
            sessions_restored: t.sessions_restored(),
            bus: self.inner.bus.stats(),
        }
    }

    /// Writes the node's liveness record now (it is refreshed in the background anyway), so
    /// the other nodes forward to it from its first request; whether it was written within
    /// `timeout`.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use mcp_affinity::{registry::MemoryStore, stack::McpStack};
    ///
    /// let handle = McpStack::new("node-a", MemoryStore::new()).unwrap().handle();
    /// assert!(handle.announce(Duration::from_secs(1)).await);
    /// # }
    /// ```
    pub async fn announce(&self, timeout: Duration) -> bool {
        self.inner.registry.announce(timeout).await
    }

    /// Starts draining, once (later calls return `(false, 0)`): [`is_draining`](Self::is_draining)
    /// turns true, the liveness record says `draining` (the other nodes adopt this node's
    /// sessions on their next request), the transport refuses new sessions and ends GET
    /// streams with a `retry:` hint. Requests keep being served. Returns whether the
    /// `draining` record was written and how many streams ended.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use mcp_affinity::{registry::MemoryStore, stack::McpStack};
    ///
    /// let handle = McpStack::new("node-a", MemoryStore::new()).unwrap().handle();
    /// let (announced, streams) = handle.drain().await;
    /// assert!(announced);
    /// assert_eq!(streams, 0);
    /// assert_eq!(handle.drain().await, (false, 0));
    /// # }
    /// ```
    pub async fn drain(&self) -> (bool, usize) {
        if self.inner.draining.swap(true, Ordering::AcqRel) {
            return (false, 0);
        }
        let announced = self.inner.registry.drain(ANNOUNCE_TIMEOUT).await;
        let streams = self.inner.transport.drain();
        tracing::info!(announced, streams, "node draining");
        (announced, streams)
    }

    /// Waits until no request reached the stack for the quiet period and no handler runs, or
    /// `timeout` passed; whether it ended quiet.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future only stops the waiting.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use mcp_affinity::{registry::MemoryStore, stack::McpStack};
    ///
    /// let handle = McpStack::new("node-a", MemoryStore::new()).unwrap().handle();
    /// assert!(handle.wait_quiet(Duration::from_secs(5)).await);
    /// # }
    /// ```
    pub async fn wait_quiet(&self, timeout: Duration) -> bool {
        let started = Instant::now();
        let requests = || self.inner.affinity.snapshot().requests;
        let mut seen = requests();
        let mut quiet_since = Instant::now();
        loop {
            let now = requests();
            if now != seen {
                seen = now;
                quiet_since = Instant::now();
            } else if quiet_since.elapsed() >= self.inner.quiet
                && self.inner.transport.running_handlers() == 0
            {
                return true;
            }
            if started.elapsed() >= timeout {
                return false;
            }
            tokio::time::sleep(DRAIN_POLL.min(timeout.saturating_sub(started.elapsed()))).await;
        }
    }

    /// Stops the node in order: [drain](Self::drain) (if not begun), [wait](Self::wait_quiet)
    /// at most `drain_timeout` for quiet, close every session (records stay, for the nodes
    /// that adopt them), land the registry's queued writes (at most 10 s), withdraw the
    /// node's liveness record. Keep serving connections until it returns: requests that
    /// arrive meanwhile are still answered (forwarded here, or told to retry elsewhere).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future stops at the step it was in; the steps already taken stay (a
    /// drained node stays draining). Call it again to finish.
    ///
    /// # Example
    ///
    /// See the [module docs](crate::stack).
    pub async fn shutdown(&self, drain_timeout: Duration) -> ShutdownReport {
        let started = Instant::now();
        let (announced, streams_ended) = self.drain().await;
        let quiet = self
            .wait_quiet(drain_timeout.saturating_sub(started.elapsed()))
            .await;
        let closed = self.inner.transport.shutdown().await;
        let flushed = self.inner.registry.flush(FLUSH_TIMEOUT).await;
        let left = self.inner.registry.leave(ANNOUNCE_TIMEOUT).await;
        tracing::info!(
            elapsed = ?started.elapsed(),
            quiet,
            closed,
            flushed,
            left,
            "node stopped"
        );
        ShutdownReport {
            announced,
            streams_ended,
            quiet,
            closed,
            flushed,
            left,
        }
    }
}
