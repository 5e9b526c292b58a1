use std::{fmt, sync::Arc, time::Duration};

use tower_layer::Layer;

use super::{RegistryStats, RegistryStore, SessionRegistry, queue::Core};

/// An invalid registry configuration, reported by [`SessionRegistryLayer::build`].
///
/// # Example
///
/// ```
/// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
///
/// let err = SessionRegistryLayer::new(MemoryStore::new(), "").build().unwrap_err();
/// assert_eq!(err.field(), "node");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: &'static str,
}

impl ConfigError {
    /// The offending setting.
    pub fn field(&self) -> &'static str {
        self.field
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid registry configuration: {}", self.field)
    }
}

impl std::error::Error for ConfigError {}

/// Records every legacy session of this node in a shared store so other nodes can tell a
/// misrouted request from an unknown session, and removes the record on every close path.
///
/// See the [module docs](crate::registry) for the full behaviour and an example.
///
/// The layer, its clones and every service it builds share one registry (store handle, write
/// queues, counters): build it once per node.
///
/// # Order
///
/// Between the affinity layer and the transport: `SessionAffinityLayer` →
/// `SessionRegistryLayer` → `SseTransportLayer`. It reads only HTTP: the `Mcp-Session-Id`
/// minted on a successful `initialize` response, `404` statuses, `DELETE` requests — so it
/// also works over other MCP services (rmcp's `StreamableHttpService`). Over this crate's
/// transport it also sees every other close (idle expiry, shutdown) through
/// [`Session::on_close`](crate::session::Session::on_close).
///
/// # Backpressure
///
/// `poll_ready` forwards the inner service's readiness. Store writes never hold a request:
/// they go to bounded, ordered queues drained by background workers (fail-open). In
/// fail-closed mode the `initialize` response waits for its registration.
///
/// # Runtime
///
/// The background work (write queues, TTL refresh, removal of the records a previous
/// incarnation of this node left) starts when the layer wraps a service inside a Tokio runtime,
/// so a restarted node cleans up at boot, before its first request. A layer applied outside a
/// runtime starts it at its first request or [`RegistryHandle::flush`].
#[must_use]
pub struct SessionRegistryLayer<R> {
    store: Arc<R>,
    node: Arc<str>,
    incarnation: Arc<str>,
    ttl: Duration,
    fail_closed: bool,
    queue_capacity: usize,
    lookup_timeout: Duration,
    pub(crate) core: Arc<Core<R>>,
}

impl<R> Clone for SessionRegistryLayer<R> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            node: self.node.clone(),
            incarnation: self.incarnation.clone(),
            ttl: self.ttl,
            fail_closed: self.fail_closed,
            queue_capacity: self.queue_capacity,
            lookup_timeout: self.lookup_timeout,
            core: self.core.clone(),
        }
    }
}

impl<R: fmt::Debug> fmt::Debug for SessionRegistryLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRegistryLayer")
            .field("store", &self.store)
            .field("node", &self.node)
            .field("incarnation", &self.incarnation)
            .field("ttl", &self.ttl)
            .field("fail_closed", &self.fail_closed)
            .finish_non_exhaustive()
    }
}

/// The default record TTL: 30 days (ADR-0066).
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

impl<R: RegistryStore> SessionRegistryLayer<R> {
    /// A registry for node `node` (its stable name, e.g. the host or pod name) over `store`.
    ///
    /// Each construction picks a fresh random *incarnation*: records of earlier processes with
    /// the same node name are recognised ("node restarted") and removed shortly after start.
    pub fn new(store: R, node: impl Into<String>) -> Self {
        let store = Arc::new(store);
        let node: Arc<str> = node.into().into();
        let incarnation: Arc<str> = crate::session::random_token()[..12].into();
        let mut layer = Self {
            core: Arc::new(Core::new(
                store.clone(),
                node.clone(),
                incarnation.clone(),
                DEFAULT_TTL,
                65_536,
            )),
            store,
            node,
            incarnation,
            ttl: DEFAULT_TTL,
            fail_closed: false,
            queue_capacity: 65_536,
            lookup_timeout: Duration::from_millis(500),
        };
        layer.rebuild();
        layer
    }

    fn rebuild(&mut self) {
        self.core = Arc::new(
            Core::new(
                self.store.clone(),
                self.node.clone(),
                self.incarnation.clone(),
                self.ttl,
                self.queue_capacity,
            )
            .with_options(self.fail_closed, self.lookup_timeout),
        );
    }

    /// Record TTL (default 30 days). Long-lived sessions get it refreshed once half of it has
    /// passed; never per request.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self.rebuild();
        self
    }

    /// Sets the incarnation explicitly (default: random per construction).
    pub fn with_incarnation(mut self, incarnation: impl Into<String>) -> Self {
        self.incarnation = incarnation.into().into();
        self.rebuild();
        self
    }

    /// Fail closed: answer `initialize` with `503` (and discard the new session) when its record
    /// cannot be written. Default: fail open — serve the session and retry the write.
    ///
    /// # ⚠️ Warning
    ///
    /// A store outage then stops every new legacy session on this node.
    pub fn with_fail_closed(mut self, fail_closed: bool) -> Self {
        self.fail_closed = fail_closed;
        self.rebuild();
        self
    }

    /// Capacity of the write queues (default 65,536 operations). When full, operations are
    /// dropped and counted; the records then expire by TTL.
    pub fn with_queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self.rebuild();
        self
    }

    /// How long the 404 path waits for the store before answering "unknown" (default 500 ms).
    pub fn with_lookup_timeout(mut self, timeout: Duration) -> Self {
        self.lookup_timeout = timeout;
        self.rebuild();
        self
    }

    /// Validates the configuration.
    pub fn build(self) -> Result<Self, ConfigError> {
        let bad = |field| Err(ConfigError { field });
        if self.node.is_empty() || self.node.len() > 128 || self.node.chars().any(char::is_control)
        {
            return bad("node");
        }
        if self.ttl < Duration::from_secs(1) {
            return bad("ttl");
        }
        if self.queue_capacity == 0 {
            return bad("queue_capacity");
        }
        if self.lookup_timeout.is_zero() {
            return bad("lookup_timeout");
        }
        Ok(self)
    }

    /// A handle to the registry: counters and flushing.
    pub fn handle(&self) -> RegistryHandle<R> {
        RegistryHandle {
            core: self.core.clone(),
        }
    }
}

impl<S, R: RegistryStore> Layer<S> for SessionRegistryLayer<R> {
    type Service = SessionRegistry<S, R>;

    fn layer(&self, inner: S) -> Self::Service {
        // Background work (write queue, TTL refresh, removal of what a previous incarnation
        // left) begins when the stack is built inside a runtime, not at the first request.
        self.core.start();
        SessionRegistry::from_core(inner, self.core.clone())
    }
}

/// Counters and flushing of one registry.
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let layer = SessionRegistryLayer::new(MemoryStore::new(), "node-a");
/// let handle = layer.handle();
/// assert!(handle.flush(Duration::from_secs(1)).await);
/// assert_eq!(handle.node(), "node-a");
/// # }
/// ```
pub struct RegistryHandle<R> {
    core: Arc<Core<R>>,
}

impl<R> Clone for RegistryHandle<R> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
        }
    }
}

impl<R: fmt::Debug> fmt::Debug for RegistryHandle<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryHandle")
            .field("node", &self.core.node)
            .finish_non_exhaustive()
    }
}

impl<R: RegistryStore> RegistryHandle<R> {
    /// The counters.
    pub fn stats(&self) -> RegistryStats {
        self.core.counters.snapshot(self.core.pending())
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.core.node
    }

    /// This process's incarnation.
    pub fn incarnation(&self) -> &str {
        &self.core.incarnation
    }

    /// The store.
    pub fn store(&self) -> &R {
        &self.core.store
    }

    /// Waits until every queued store write has landed (retrying while the store is down), at
    /// most `timeout`. Call it on shutdown after the transport closed its sessions. Returns
    /// whether everything landed.
    pub async fn flush(&self, timeout: Duration) -> bool {
        self.core.start();
        self.core.flush(timeout).await
    }
}
