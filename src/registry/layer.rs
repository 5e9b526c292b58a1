use std::{fmt, sync::Arc, time::Duration};

use tower_layer::Layer;

use super::{RegistryStats, RegistryStore, SessionRegistry, limit::LookupLimits, queue::Core};
use crate::session::Durability;

pub use crate::config::ConfigError;

/// Records every legacy session of this node in a shared store so other nodes can tell a
/// misrouted request from an unknown session, and removes the record on every close path.
/// With continuity (on by default, [`with_continuity`](SessionRegistryBuilder::with_continuity)),
/// a request for a session another node holds is forwarded to that node while it lives and
/// serves, and the session is adopted here when it does not.
///
/// See the [module docs](crate::registry) for the full behaviour and an example.
///
/// The layer, its clones and every service it builds share one registry (store handle, write
/// queues, counters), created once by [`new`](Self::new) or [`SessionRegistryBuilder::build`]:
/// build it once per node. Settings are made on the builder, which validates them; the layer
/// itself has none, so an invalid configuration never reaches a served service:
///
/// ```compile_fail
/// # let app = mcp_affinity::SseTransportLayer::new().layer(mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({})) }));
/// use tower::Layer;
/// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
///
/// let svc = SessionRegistryLayer::new(MemoryStore::new(), "").layer(app);
/// ```
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
/// Records are keyed by the session id the client uses. Below an affinity layer in envelope
/// mode that is not the id in the request's `Mcp-Session-Id` (the inner service's own): the
/// affinity layer passes it in the [`SessionIdEnvelope`](crate::session::SessionIdEnvelope)
/// request extension, and the registry records `<tag>.<inner id>`. A request enveloped for
/// another node carries no such extension and is looked up as it came, so every node finds
/// the same record.
///
/// Continuity needs the transport right below: the registry passes it a
/// [`RestoreSession`](crate::session::RestoreSession) to adopt a session, and reads the
/// [`Session`](crate::session::Session) the transport puts into the restoring response. Over
/// another inner service, forwarding works (it reads headers and statuses) and adoption works
/// when that service restores sessions itself. An affinity layer above must not be in strict
/// mode, which answers requests for other nodes' sessions before they reach the registry.
///
/// # Backpressure
///
/// `poll_ready` forwards the inner service's readiness. Store writes never hold a request:
/// they go to bounded, ordered queues drained by background workers (fail-open). In
/// fail-closed mode the `initialize` response waits for its registration. The `404` path's
/// store lookups are bounded: by a rate
/// ([`with_lookup_rate`](SessionRegistryBuilder::with_lookup_rate), over it the answer is "unknown" at once) and
/// by a short cache of ids the store did not know
/// ([`with_negative_cache`](SessionRegistryBuilder::with_negative_cache)).
///
/// The shared event log's queue is bounded too (full: the event is dropped and counted,
/// never waited for). With write-through
/// ([`with_event_log_durability`](SessionRegistryBuilder::with_event_log_durability)) no
/// request waits either: each standalone stream waits for its own events' batch to be
/// stored (in order, never for another session's), and a batch the store refuses is
/// released after its attempts rather than holding streams for ever.
///
/// A request for a session this node does not hold keeps the inner service's readiness
/// while its record and the owner's liveness are read (each bounded by the lookup timeout)
/// and while it is forwarded; a forwarded request releases it without calling the inner
/// service. Forwards are bounded by the owner: they stream at the owner's pace, over at most
/// one pooled HTTP/1.1 connection per request in flight.
///
/// # Runtime
///
/// The background work (write queues, TTL refresh, the liveness record, the sweep of
/// orphaned records) starts when the layer wraps a service inside a Tokio runtime, before the
/// first request. A layer applied outside a runtime starts it at its first request or
/// [`RegistryHandle::flush`].
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # use std::time::Duration;
/// # use tower::{Layer, ServiceExt};
/// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
/// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
/// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").header("mcp-protocol-version", "2025-11-25").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
/// # const PING: &str = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
/// # let app = mcp_affinity::SseTransportLayer::new().layer(handler);
/// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
///
/// let registry = SessionRegistryLayer::new(MemoryStore::new(), "node-a").unwrap();
/// let handle = registry.handle();
/// let svc = registry.layer(app); // registry outside, transport inside
/// let res = svc.oneshot(post(INIT)).await.unwrap();
/// assert_eq!(res.status(), 200);
/// handle.flush(Duration::from_secs(1)).await;
/// assert_eq!(handle.stats().registered, 1);
/// # }
/// ```
#[must_use]
pub struct SessionRegistryLayer<R> {
    pub(crate) core: Arc<Core<R>>,
}

impl<R> Clone for SessionRegistryLayer<R> {
    fn clone(&self) -> Self {
        Self {
            core: self.core.clone(),
        }
    }
}

impl<R: fmt::Debug> fmt::Debug for SessionRegistryLayer<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRegistryLayer")
            .field("store", &self.core.store)
            .field("node", &self.core.node)
            .field("incarnation", &self.core.incarnation)
            .field("ttl", &self.core.ttl)
            .field("fail_closed", &self.core.fail_closed)
            .finish_non_exhaustive()
    }
}

/// The configuration of a [`SessionRegistryLayer`], validated by [`build`](Self::build).
///
/// A builder is not a layer: only the layer that [`build`](Self::build) returns wraps a
/// service, so an invalid configuration cannot be served.
///
/// ```compile_fail
/// # let app = mcp_affinity::SseTransportLayer::new().layer(mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({})) }));
/// use tower::Layer;
/// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
///
/// let svc = SessionRegistryLayer::builder(MemoryStore::new(), "").layer(app);
/// ```
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
///
/// let layer = SessionRegistryLayer::builder(MemoryStore::new(), "node-a")
///     .with_ttl(Duration::from_secs(7 * 24 * 3600))
///     .build()
///     .unwrap();
/// assert_eq!(layer.handle().node(), "node-a");
/// ```
#[derive(Clone)]
#[must_use]
pub struct SessionRegistryBuilder<R> {
    store: R,
    node: String,
    incarnation: Option<String>,
    ttl: Duration,
    fail_closed: bool,
    queue_capacity: usize,
    lookup_timeout: Duration,
    idle_timeout: Duration,
    lookup_rate: (u32, Duration),
    negative_cache: (usize, Duration),
    continuity: bool,
    adoption: bool,
    forwarding: bool,
    liveness: (Duration, Duration),
    internal_address: Option<std::net::SocketAddr>,
    peer_networks: Vec<String>,
    forward_connect_timeout: Duration,
    event_durability: Durability,
}

impl<R: fmt::Debug> fmt::Debug for SessionRegistryBuilder<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionRegistryBuilder")
            .field("store", &self.store)
            .field("node", &self.node)
            .field("incarnation", &self.incarnation)
            .field("ttl", &self.ttl)
            .field("fail_closed", &self.fail_closed)
            .field("queue_capacity", &self.queue_capacity)
            .field("lookup_timeout", &self.lookup_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("lookup_rate", &self.lookup_rate)
            .field("negative_cache", &self.negative_cache)
            .field("continuity", &self.continuity)
            .field("adoption", &self.adoption)
            .field("forwarding", &self.forwarding)
            .field("liveness", &self.liveness)
            .field("internal_address", &self.internal_address)
            .field("peer_networks", &self.peer_networks)
            .field("event_durability", &self.event_durability)
            .finish_non_exhaustive()
    }
}

/// The default record TTL: 30 days (ADR-0066).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use mcp_affinity::registry::DEFAULT_TTL;
///
/// assert_eq!(DEFAULT_TTL, Duration::from_secs(30 * 24 * 3600));
/// ```
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// The default idle bound of sessions no close hook reports: 1 hour (see
/// [`SessionRegistryBuilder::with_idle_timeout`]).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use mcp_affinity::registry::DEFAULT_IDLE_TIMEOUT;
///
/// assert_eq!(DEFAULT_IDLE_TIMEOUT, Duration::from_secs(3600));
/// ```
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(3600);

/// The default bound on the `404` path's store lookups: 200 per second (see
/// [`SessionRegistryBuilder::with_lookup_rate`]).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use mcp_affinity::registry::DEFAULT_LOOKUP_RATE;
///
/// assert_eq!(DEFAULT_LOOKUP_RATE, (200, Duration::from_secs(1)));
/// ```
pub const DEFAULT_LOOKUP_RATE: (u32, Duration) = (200, Duration::from_secs(1));

/// The default cache of ids the store did not know: 4,096 ids for 2 seconds (see
/// [`SessionRegistryBuilder::with_negative_cache`]).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use mcp_affinity::registry::DEFAULT_NEGATIVE_CACHE;
///
/// assert_eq!(DEFAULT_NEGATIVE_CACHE, (4096, Duration::from_secs(2)));
/// ```
pub const DEFAULT_NEGATIVE_CACHE: (usize, Duration) = (4096, Duration::from_secs(2));

/// The default liveness record TTL and refresh period: 15 s, rewritten every 5 s. See
/// [`SessionRegistryBuilder::with_liveness`].
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// assert_eq!(mcp_affinity::registry::DEFAULT_LIVENESS, (Duration::from_secs(15), Duration::from_secs(5)));
/// ```
pub const DEFAULT_LIVENESS: (Duration, Duration) =
    (Duration::from_secs(15), Duration::from_secs(5));

impl<R: RegistryStore> SessionRegistryLayer<R> {
    /// A registry with the default settings for node `node` (its stable name, e.g. the host
    /// or pod name) over `store`; an invalid node name is an error. The registry (store
    /// handle, write queues, counters) is created here: the layer, its clones and every
    /// service they build share it.
    ///
    /// Each construction picks a fresh random *incarnation*: records of earlier processes with
    /// the same node name are recognised ("node restarted") and removed shortly after start.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let store = MemoryStore::new();
    /// let layer = SessionRegistryLayer::new(store.clone(), "node-a").unwrap();
    /// assert_eq!(layer.handle().node(), "node-a");
    /// assert!(layer.handle().store().is_empty());
    /// assert_eq!(SessionRegistryLayer::new(store, "").unwrap_err().field(), "node");
    /// ```
    pub fn new(store: R, node: impl Into<String>) -> Result<Self, ConfigError> {
        Self::builder(store, node).build()
    }

    /// A builder for a registry with other settings.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let layer = SessionRegistryLayer::builder(MemoryStore::new(), "node-a")
    ///     .with_lookup_timeout(Duration::from_millis(100))
    ///     .build()
    ///     .unwrap();
    /// assert_eq!(layer.handle().node(), "node-a");
    /// ```
    pub fn builder(store: R, node: impl Into<String>) -> SessionRegistryBuilder<R> {
        SessionRegistryBuilder::new(store, node)
    }

    /// A handle to the registry: counters and flushing.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let layer = SessionRegistryLayer::new(MemoryStore::new(), "node-a").unwrap();
    /// let handle = layer.handle(); // shares the layer's registry
    /// assert_eq!(handle.node(), "node-a");
    /// assert!(handle.flush(Duration::from_millis(100)).await);
    /// assert_eq!(handle.stats().registered, 0);
    /// # }
    /// ```
    pub fn handle(&self) -> RegistryHandle<R> {
        RegistryHandle {
            core: self.core.clone(),
        }
    }
}

impl<R: RegistryStore> SessionRegistryBuilder<R> {
    /// A builder with the default settings for node `node` over `store` (see
    /// [`SessionRegistryLayer::new`]).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryBuilder};
    ///
    /// let layer = SessionRegistryBuilder::new(MemoryStore::new(), "node-a").build().unwrap();
    /// assert_eq!(layer.handle().node(), "node-a");
    /// ```
    pub fn new(store: R, node: impl Into<String>) -> Self {
        Self {
            store,
            node: node.into(),
            incarnation: None,
            ttl: DEFAULT_TTL,
            fail_closed: false,
            queue_capacity: 65_536,
            lookup_timeout: Duration::from_millis(500),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            lookup_rate: DEFAULT_LOOKUP_RATE,
            negative_cache: DEFAULT_NEGATIVE_CACHE,
            continuity: true,
            adoption: true,
            forwarding: true,
            liveness: DEFAULT_LIVENESS,
            internal_address: None,
            peer_networks: Vec::new(),
            forward_connect_timeout: Duration::from_millis(500),
            event_durability: Durability::WriteBehind,
        }
    }

    /// Turns continuity on or off (default on): node liveness, forwarding to a live owner
    /// and adoption from a gone one. Off, the registry behaves as ADR-0066 describes: a
    /// request for another node's session is answered `404` (`misrouted`), a restarted node
    /// removes its previous process's records at start, and shutdown removes the records of
    /// the sessions it closes.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let layer = SessionRegistryLayer::builder(MemoryStore::new(), "node-a").with_continuity(false).build();
    /// assert!(layer.is_ok());
    /// ```
    pub fn with_continuity(mut self, on: bool) -> Self {
        self.continuity = on;
        self
    }

    /// Turns adoption on or off (default on, with continuity): a request for a session whose
    /// owner is gone, draining or a previous process of this node takes the session over here
    /// (compare-and-set on the record's owner and incarnation; the transport restores the
    /// session from the record). Off, such requests are answered `404` as without continuity.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let layer = SessionRegistryLayer::builder(MemoryStore::new(), "node-a").with_adoption(false).build();
    /// assert!(layer.is_ok());
    /// ```
    pub fn with_adoption(mut self, on: bool) -> Self {
        self.adoption = on;
        self
    }

    /// Turns forwarding on or off (default on; it needs cargo feature `forward`): a request
    /// for a session whose owner is alive and serving is sent to the owner and its answer
    /// streamed back. Off (or without the feature), such requests are answered `404`
    /// (`misrouted`).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let layer = SessionRegistryLayer::builder(MemoryStore::new(), "node-a").with_forwarding(false).build();
    /// assert!(layer.is_ok());
    /// ```
    pub fn with_forwarding(mut self, on: bool) -> Self {
        self.forwarding = on;
        self
    }

    /// The time to live of this node's liveness record and how often it is rewritten
    /// (default [`DEFAULT_LIVENESS`]: 15 s, every 5 s). A node that stops (a crash, a lost
    /// network) counts as gone once its record expired; a forward that finds nobody listening
    /// counts it gone at once. The period must be shorter than the TTL.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let layer = SessionRegistryLayer::builder(MemoryStore::new(), "node-a")
    ///     .with_liveness(Duration::from_secs(6), Duration::from_secs(2))
    ///     .build();
    /// assert!(layer.is_ok());
    /// let bad = SessionRegistryLayer::builder(MemoryStore::new(), "node-a")
    ///     .with_liveness(Duration::from_secs(2), Duration::from_secs(2))
    ///     .build();
    /// assert_eq!(bad.unwrap_err().field(), "liveness");
    /// ```
    pub fn with_liveness(mut self, ttl: Duration, period: Duration) -> Self {
        self.liveness = (ttl, period);
        self
    }

    /// The address other nodes forward requests to: this node's internal `host:port`, which
    /// is usually not the public one. Written into this node's liveness record; without it,
    /// no node forwards to this one (their requests for its sessions are answered `404`).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let layer = SessionRegistryLayer::builder(MemoryStore::new(), "node-a")
    ///     .with_internal_address("10.0.0.5:8080".parse().unwrap())
    ///     .build();
    /// assert!(layer.is_ok());
    /// ```
    pub fn with_internal_address(mut self, address: std::net::SocketAddr) -> Self {
        self.internal_address = Some(address);
        self
    }

    /// The networks peer nodes live in (`10.0.0.0/8`, `fd00::/8`, or single addresses): a
    /// liveness record naming an address outside them is not followed. Default: the IP of
    /// [`with_internal_address`](Self::with_internal_address) alone (every node on one host),
    /// or loopback addresses when no internal address is set.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let ok = SessionRegistryLayer::builder(MemoryStore::new(), "node-a").with_peer_networks(["10.0.0.0/8"]).build();
    /// assert!(ok.is_ok());
    /// let bad = SessionRegistryLayer::builder(MemoryStore::new(), "node-a").with_peer_networks(["10.0.0.0/33"]).build();
    /// assert_eq!(bad.unwrap_err().field(), "peer_networks");
    /// ```
    pub fn with_peer_networks<I, S>(mut self, networks: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.peer_networks = networks.into_iter().map(Into::into).collect();
        self
    }

    /// How long a forward waits to connect to the owner (default 500 ms) before it counts the
    /// owner as gone and adopts the session.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let layer = SessionRegistryLayer::builder(MemoryStore::new(), "node-a")
    ///     .with_forward_connect_timeout(Duration::from_millis(200))
    ///     .build();
    /// assert!(layer.is_ok());
    /// ```
    pub fn with_forward_connect_timeout(mut self, timeout: Duration) -> Self {
        self.forward_connect_timeout = timeout;
        self
    }

    /// Record TTL (default 30 days). Long-lived sessions get it refreshed once half of it has
    /// passed; never per request.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let layer = SessionRegistryLayer::builder(MemoryStore::new(), "node-a");
    /// assert!(layer.clone().with_ttl(Duration::from_secs(7 * 24 * 3600)).build().is_ok());
    /// let err = layer.with_ttl(Duration::from_millis(500)).build().unwrap_err();
    /// assert_eq!(err.field(), "ttl");
    /// ```
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Sets the incarnation explicitly (default: random per construction): 1 to 128
    /// characters, no control characters, as the node name.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use std::time::Duration;
    /// # use tower::{Layer, ServiceExt};
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").header("mcp-protocol-version", "2025-11-25").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    /// # const PING: &str = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
    /// # let app = mcp_affinity::SseTransportLayer::new().layer(handler);
    /// use mcp_affinity::registry::{MemoryStore, RegistryStore, SessionRegistryLayer};
    ///
    /// let layer = SessionRegistryLayer::builder(MemoryStore::new(), "node-a").with_incarnation("boot-7").build().unwrap();
    /// let handle = layer.handle();
    /// let res = layer.layer(app).oneshot(post(INIT)).await.unwrap();
    /// let id = res.headers()["mcp-session-id"].to_str().unwrap();
    /// handle.flush(Duration::from_secs(1)).await;
    /// let record = handle.store().lookup(id).await.unwrap().unwrap();
    /// assert!(record.is_owned_by("node-a", "boot-7"));
    /// # }
    /// ```
    pub fn with_incarnation(mut self, incarnation: impl Into<String>) -> Self {
        self.incarnation = Some(incarnation.into());
        self
    }

    /// Fail closed: answer `initialize` with `503` (and discard the new session) when its record
    /// cannot be written. Default: fail open — serve the session and retry the write.
    ///
    /// # ⚠️ Warning
    ///
    /// A store outage then stops every new legacy session on this node.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use std::time::Duration;
    /// # use tower::{Layer, ServiceExt};
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").header("mcp-protocol-version", "2025-11-25").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    /// # const PING: &str = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
    /// # let app = mcp_affinity::SseTransportLayer::new().layer(handler);
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let layer = SessionRegistryLayer::builder(MemoryStore::new(), "node-a").with_fail_closed(true).build().unwrap();
    /// let handle = layer.handle();
    /// let res = layer.layer(app).oneshot(post(INIT)).await.unwrap();
    /// assert_eq!(res.status(), 200);
    /// // The record was written before the response, no flush needed.
    /// assert_eq!(handle.store().len(), 1);
    /// # }
    /// ```
    pub fn with_fail_closed(mut self, fail_closed: bool) -> Self {
        self.fail_closed = fail_closed;
        self
    }

    /// Capacity of the write queues (default 65,536 operations), shared by its 4 queues: from
    /// 4 to 2^30. When full, operations are dropped and counted; the records then expire by
    /// TTL.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let layer = SessionRegistryLayer::builder(MemoryStore::new(), "node-a");
    /// assert!(layer.clone().with_queue_capacity(1024).build().is_ok());
    /// let err = layer.with_queue_capacity(0).build().unwrap_err();
    /// assert_eq!(err.field(), "queue_capacity");
    /// ```
    pub fn with_queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity;
        self
    }

    /// How long the 404 path waits for the store before answering "unknown" (default 500 ms).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let layer = SessionRegistryLayer::builder(MemoryStore::new(), "node-a");
    /// assert!(layer.clone().with_lookup_timeout(Duration::from_millis(100)).build().is_ok());
    /// let err = layer.with_lookup_timeout(Duration::ZERO).build().unwrap_err();
    /// assert_eq!(err.field(), "lookup_timeout");
    /// ```
    pub fn with_lookup_timeout(mut self, timeout: Duration) -> Self {
        self.lookup_timeout = timeout;
        self
    }

    /// The idle bound of sessions whose end the registry is not told of (default
    /// [`DEFAULT_IDLE_TIMEOUT`], 1 hour; must not be zero).
    ///
    /// Over this crate's transport every close reaches the registry through a close hook, and
    /// this setting does nothing. An inner service of its own (rmcp's `StreamableHttpService`)
    /// ends sessions without telling: the registry then learns it from the inner service's
    /// `404` for the id (the record is removed, compare-and-delete, with no store lookup), and
    /// otherwise drops a session after this long without a request, removing its record if
    /// this node still owns it. Set it no shorter than the inner service's own idle expiry
    /// (rmcp: 5 minutes by default): a session idle for longer but still alive there keeps
    /// working on this node, but other nodes no longer know it (a misroute reads "unknown").
    ///
    /// While such sessions exist, each request for one costs a lookup in the registry's
    /// table of sessions (one short lock); over this crate's transport requests cost nothing.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let layer = SessionRegistryLayer::builder(MemoryStore::new(), "node-a");
    /// assert!(layer.clone().with_idle_timeout(Duration::from_secs(600)).build().is_ok());
    /// let err = layer.with_idle_timeout(Duration::ZERO).build().unwrap_err();
    /// assert_eq!(err.field(), "idle_timeout");
    /// ```
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle_timeout = idle;
        self
    }

    /// Bounds the store lookups of the `404` path (default [`DEFAULT_LOOKUP_RATE`], 200 per
    /// second): a token bucket of `lookups` tokens refilled at `lookups` per `per`. A `404`
    /// for a well-formed id over that rate answers "unknown" without asking the store (and
    /// counts in [`RegistryStats::lookups_limited`]). The client's next step is the same
    /// (re-initialize); only the log line and the counters lose the misroute or restart, and
    /// only while the rate is exceeded. With continuity, a lookup that finds the session's
    /// record gives its token back, so forwarding and adoption (a drained node's sessions
    /// all at once) are not held to the rate: it bounds lookups of ids the store does not
    /// know. `lookups` must be at least 1 and `per` not zero.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let layer = SessionRegistryLayer::builder(MemoryStore::new(), "node-a");
    /// assert!(layer.clone().with_lookup_rate(50, Duration::from_secs(1)).build().is_ok());
    /// let err = layer.clone().with_lookup_rate(0, Duration::from_secs(1)).build().unwrap_err();
    /// assert_eq!(err.field(), "lookup_rate");
    /// let err = layer.with_lookup_rate(50, Duration::ZERO).build().unwrap_err();
    /// assert_eq!(err.field(), "lookup_rate");
    /// ```
    pub fn with_lookup_rate(mut self, lookups: u32, per: Duration) -> Self {
        self.lookup_rate = (lookups, per);
        self
    }

    /// The cache of ids the store did not know (default [`DEFAULT_NEGATIVE_CACHE`]: 4,096
    /// ids for 2 seconds): a `404` for such an id within `ttl` answers "unknown" from memory
    /// (counted in [`RegistryStats::known_misses`]). Session ids are random and minted by
    /// `initialize`, so an id unknown a moment ago becomes another node's session only if it
    /// was asked about between that node's `initialize` answer and its queued record write;
    /// the client is told to re-initialize either way. At most `capacity` ids are kept (the oldest go first), as keyed 64-bit hashes;
    /// `0` turns the cache off. `capacity` must not exceed 1,048,576 and `ttl` must be
    /// between 1 ms and 60 s.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let layer = SessionRegistryLayer::builder(MemoryStore::new(), "node-a");
    /// assert!(layer.clone().with_negative_cache(1024, Duration::from_secs(1)).build().is_ok());
    /// assert!(layer.clone().with_negative_cache(0, Duration::from_secs(1)).build().is_ok());
    /// let err = layer.with_negative_cache(1024, Duration::from_secs(600)).build().unwrap_err();
    /// assert_eq!(err.field(), "negative_cache");
    /// ```
    pub fn with_negative_cache(mut self, capacity: usize, ttl: Duration) -> Self {
        self.negative_cache = (capacity, ttl);
        self
    }

    /// When the transport sends the events of the shared event log (the standalone streams'
    /// events its [`event_sink`](RegistryHandle::event_sink) takes): at once, written to the
    /// store in the background ([`Durability::WriteBehind`], the default), or only once the
    /// store holds them ([`Durability::WriteThrough`]).
    ///
    /// Write-behind costs a stream nothing, and a graceful stop
    /// ([`RegistryHandle::flush`]) still keeps every event, but a node killed outright
    /// (`SIGKILL`, a crash, the machine lost) loses the events queued and not yet written
    /// (the batch in flight and what queued behind it: a few milliseconds' worth), some of
    /// which its clients may have received: a client resuming on another node then misses
    /// them (see [`registry`](crate::registry) for the figures).
    ///
    /// Write-through holds each event back in its stream's SSE body until the event writer's
    /// batch that carries it is stored: no client ever receives an event the store does not
    /// hold, so a kill loses only events produced and not yet stored, none of which was sent
    /// (their handlers' `notify` had returned; they are gone as with write-behind). Nothing
    /// changes on the request path (queuing an event never waits, no store call is made per
    /// event) and writes stay batched; each event's delivery waits for one batch round trip
    /// (plus the batch in flight before it). Streams wait in order, each for its own events
    /// only: a held event holds its stream's later events, never another session's. The
    /// held events stay in the session's bounded event log meanwhile (the transport's
    /// [`with_event_log`](crate::transport::SseTransportBuilder::with_event_log) bounds
    /// apply: beyond them the oldest go, as for a slow reader). A batch the store
    /// refuses for all its attempts (about a second with the default store timeouts), and an
    /// event dropped by a full queue, are released unstored rather than held for ever:
    /// counted in [`RegistryStats::events_dropped`], with a warning.
    ///
    /// Give the transport this registry's sink
    /// ([`RegistryHandle::event_sink`], as [`McpStack`](crate::McpStack) does); other sinks
    /// answer their own durability.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{
    ///     SseTransportLayer,
    ///     registry::{MemoryStore, SessionRegistryLayer},
    ///     session::{Durability, EventSink},
    /// };
    ///
    /// let registry = SessionRegistryLayer::builder(MemoryStore::new(), "node-a")
    ///     .with_event_log_durability(Durability::WriteThrough)
    ///     .build()
    ///     .unwrap();
    /// let sink = registry.handle().event_sink();
    /// assert_eq!(sink.durability(), Durability::WriteThrough);
    /// let transport = SseTransportLayer::builder().with_event_sink(sink).build();
    /// assert!(transport.is_ok());
    /// ```
    pub fn with_event_log_durability(mut self, durability: Durability) -> Self {
        self.event_durability = durability;
        self
    }

    /// Whether continuity (forwarding or adoption) is on.
    pub(crate) fn has_continuity(&self) -> bool {
        self.continuity && (self.adoption || self.forwarding)
    }

    /// Validates the configuration and creates the registry (store handle, write queues,
    /// counters): the returned layer, its clones and every service they build share it.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// assert!(SessionRegistryLayer::builder(MemoryStore::new(), "node-a").build().is_ok());
    /// let err = SessionRegistryLayer::builder(MemoryStore::new(), "node\n").build().unwrap_err();
    /// assert_eq!(err.field(), "node");
    /// let err = SessionRegistryLayer::builder(MemoryStore::new(), "x".repeat(129)).build().unwrap_err();
    /// assert_eq!(err.field(), "node");
    /// ```
    pub fn build(self) -> Result<SessionRegistryLayer<R>, ConfigError> {
        let c = crate::config::Checks("registry");
        c.require(valid_name(&self.node), "node", NAME_RULE)?;
        if let Some(incarnation) = &self.incarnation {
            c.require(valid_name(incarnation), "incarnation", NAME_RULE)?;
        }
        c.require(
            self.ttl >= Duration::from_secs(1),
            "ttl",
            "must be at least 1 s",
        )?;
        c.require(
            (super::queue::SHARDS..=MAX_QUEUE_CAPACITY).contains(&self.queue_capacity),
            "queue_capacity",
            "must be between 4 (one per write queue) and 2^30",
        )?;
        c.positive(self.lookup_timeout, "lookup_timeout")?;
        c.positive(self.idle_timeout, "idle_timeout")?;
        c.require(
            self.lookup_rate.0 > 0 && !self.lookup_rate.1.is_zero(),
            "lookup_rate",
            "needs at least 1 lookup per non-zero period",
        )?;
        let (capacity, ttl) = self.negative_cache;
        c.require(
            capacity <= 1 << 20,
            "negative_cache",
            "capacity must be at most 2^20",
        )?;
        c.require(
            (Duration::from_millis(1)..=Duration::from_secs(60)).contains(&ttl),
            "negative_cache",
            "ttl must be between 1 ms and 60 s",
        )?;
        let (liveness_ttl, liveness_period) = self.liveness;
        c.require(
            liveness_period >= Duration::from_millis(10),
            "liveness",
            "period must be at least 10 ms",
        )?;
        c.require(
            liveness_ttl >= Duration::from_secs(1),
            "liveness",
            "ttl must be at least 1 s",
        )?;
        c.require(
            liveness_period < liveness_ttl,
            "liveness",
            "period must be shorter than the ttl",
        )?;
        c.positive(self.forward_connect_timeout, "forward_connect_timeout")?;
        let Ok(peers) = super::continuity::PeerPolicy::parse(&self.peer_networks) else {
            return Err(ConfigError::new(
                "registry",
                "peer_networks",
                "must be IP networks (`10.0.0.0/8`) or addresses",
            ));
        };
        let continuity = self.continuity.then(|| {
            super::continuity::Continuity::new(
                super::continuity::Settings {
                    adoption: self.adoption,
                    forwarding: self.forwarding,
                    liveness_ttl,
                    liveness_period,
                    address: self.internal_address,
                    peers,
                    forward_connect_timeout: self.forward_connect_timeout,
                },
                &self.node,
            )
        });
        let incarnation: Arc<str> = match self.incarnation {
            Some(i) => i.into(),
            None => crate::session::random_token()[..12].into(),
        };
        let core = Core::new(
            Arc::new(self.store),
            self.node.into(),
            incarnation,
            self.ttl,
            self.queue_capacity,
        )
        .with_options(self.fail_closed, self.lookup_timeout)
        .with_idle_timeout(self.idle_timeout)
        .with_limits(LookupLimits::new(
            self.lookup_rate.0,
            self.lookup_rate.1,
            self.negative_cache.0,
            self.negative_cache.1,
        ))
        .with_continuity(continuity)
        .with_event_durability(self.event_durability);
        Ok(SessionRegistryLayer {
            core: Arc::new(core),
        })
    }
}

/// The most write-queue slots [`SessionRegistryBuilder::with_queue_capacity`] accepts.
const MAX_QUEUE_CAPACITY: usize = 1 << 30;

/// What a node name or an incarnation must be.
const NAME_RULE: &str = "must be 1 to 128 characters, none of them a control character";

fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && !s.chars().any(char::is_control)
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
/// let layer = SessionRegistryLayer::new(MemoryStore::new(), "node-a").unwrap();
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

impl<R> RegistryHandle<R> {
    /// The registry's shared state (for the session store adapters in this module).
    #[cfg_attr(not(feature = "rmcp"), allow(dead_code))]
    pub(crate) fn core(&self) -> &Arc<Core<R>> {
        &self.core
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
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use std::time::Duration;
    /// # use tower::{Layer, ServiceExt};
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").header("mcp-protocol-version", "2025-11-25").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    /// # const PING: &str = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
    /// # let app = mcp_affinity::SseTransportLayer::new().layer(handler);
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let layer = SessionRegistryLayer::new(MemoryStore::new(), "node-a").unwrap();
    /// let handle = layer.handle();
    /// let svc = layer.layer(app);
    /// svc.clone().oneshot(post(INIT)).await.unwrap();
    /// let mut req = post(PING);
    /// req.headers_mut().insert("mcp-session-id", "no-such-session".parse().unwrap());
    /// assert_eq!(svc.oneshot(req).await.unwrap().status(), 404);
    /// handle.flush(Duration::from_secs(1)).await;
    /// let stats = handle.stats();
    /// assert_eq!((stats.registered, stats.unknown), (1, 1));
    /// # }
    /// ```
    pub fn stats(&self) -> RegistryStats {
        let mut stats = self
            .core
            .counters
            .snapshot(self.core.pending(), self.core.tracked());
        let events = &self.core.events;
        stats.events_written = events.written.load(std::sync::atomic::Ordering::Relaxed);
        stats.events_dropped = events.dropped.load(std::sync::atomic::Ordering::Relaxed);
        stats.events_pending = events.pending();
        stats
    }

    /// This node's name.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let handle = SessionRegistryLayer::new(MemoryStore::new(), "pod-3").unwrap().handle();
    /// assert_eq!(handle.node(), "pod-3");
    /// ```
    pub fn node(&self) -> &str {
        &self.core.node
    }

    /// This process's incarnation.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let a = SessionRegistryLayer::new(MemoryStore::new(), "node-a").unwrap().handle();
    /// let b = SessionRegistryLayer::new(MemoryStore::new(), "node-a").unwrap().handle();
    /// assert_eq!(a.incarnation().len(), 12);
    /// assert_ne!(a.incarnation(), b.incarnation()); // one per process start
    /// ```
    pub fn incarnation(&self) -> &str {
        &self.core.incarnation
    }

    /// The store.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use mcp_affinity::registry::{MemoryStore, RegistryStore, SessionRecord, SessionRegistryLayer};
    /// use std::time::Duration;
    ///
    /// let handle = SessionRegistryLayer::new(MemoryStore::new(), "node-a").unwrap().handle();
    /// let record = SessionRecord::new("node-b", "x");
    /// handle.store().register("s1", &record, Duration::from_secs(60)).await.unwrap();
    /// assert_eq!(handle.store().lookup("s1").await.unwrap(), Some(record));
    /// # }
    /// ```
    pub fn store(&self) -> &R {
        &self.core.store
    }

    /// Waits until every queued store write has landed (retrying while the store is down), at
    /// most `timeout`. Call it on shutdown after the transport closed its sessions. Returns
    /// whether everything landed.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use std::time::Duration;
    /// # use tower::{Layer, ServiceExt};
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").header("mcp-protocol-version", "2025-11-25").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    /// # const PING: &str = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
    /// # let app = mcp_affinity::SseTransportLayer::new().layer(handler);
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let layer = SessionRegistryLayer::new(MemoryStore::new(), "node-a").unwrap();
    /// let handle = layer.handle();
    /// layer.layer(app).oneshot(post(INIT)).await.unwrap();
    /// // The record is written in the background (fail-open): wait for it.
    /// assert!(handle.flush(Duration::from_secs(1)).await);
    /// assert_eq!(handle.stats().cleanup_pending, 0);
    /// assert_eq!(handle.store().len(), 1);
    /// # }
    /// ```
    pub async fn flush(&self, timeout: Duration) -> bool {
        self.core.start();
        self.core.flush(timeout).await
    }

    /// The sink that puts the standalone events of this node's sessions into the store's
    /// shared event log, for the node that adopts a session to replay what its client asks
    /// for with `Last-Event-ID`: give it to the transport
    /// ([`SseTransportBuilder::with_event_sink`](crate::transport::SseTransportBuilder::with_event_sink));
    /// [`McpStack`](crate::McpStack) does when continuity is on. Events go onto a bounded
    /// queue (full: dropped and counted, never waited for) that a background writer hands to
    /// the store in batches of up to 512; [`flush`](Self::flush) waits for it. With
    /// [`Durability::WriteThrough`]
    /// ([`with_event_log_durability`](SessionRegistryBuilder::with_event_log_durability)) the
    /// transport sends each event only once its batch is stored.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{SseTransportLayer, registry::{MemoryStore, SessionRegistryLayer}};
    ///
    /// let registry = SessionRegistryLayer::new(MemoryStore::new(), "node-a").unwrap();
    /// let transport = SseTransportLayer::builder()
    ///     .with_event_sink(registry.handle().event_sink())
    ///     .build();
    /// assert!(transport.is_ok());
    /// ```
    #[must_use]
    pub fn event_sink(&self) -> super::RegistryEventSink {
        super::RegistryEventSink {
            queue: self.core.events.clone(),
        }
    }

    /// Writes this node's liveness record now (within `timeout`); whether the store took it.
    /// The background task writes it at start and every period; a node calls this before it
    /// accepts requests, so no other node counts it gone while its first write is pending.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use mcp_affinity::registry::{MemoryStore, NodeState, RegistryStore, SessionRegistryLayer};
    ///
    /// let store = MemoryStore::new();
    /// let handle = SessionRegistryLayer::new(store.clone(), "node-a").unwrap().handle();
    /// assert!(handle.announce(Duration::from_secs(1)).await);
    /// assert_eq!(store.node("node-a").await.unwrap().map(|n| n.state), Some(NodeState::Serving));
    /// # }
    /// ```
    pub async fn announce(&self, timeout: Duration) -> bool {
        self.core.start();
        super::continuity::announce(&self.core, timeout).await
    }

    /// Starts draining: this node's liveness record says `draining` from now on (written at
    /// once, within `timeout`), so other nodes adopt its sessions on their next request
    /// instead of forwarding to it, and this node adopts no session itself. Returns whether
    /// the store took the record. Call it first when a node shuts down (see the README's
    /// drain sequence), then the transport's drain and shutdown, then
    /// [`leave`](Self::leave).
    ///
    /// Other nodes cache a node's liveness for up to a second, so for that long after the
    /// record was written they may still forward this node's sessions' requests here: keep
    /// the sessions open (do not shut the transport down) for at least a second after
    /// `drain` returns. A request forwarded here for a session this node has already closed
    /// and handed over is answered `503` with `Retry-After`.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use mcp_affinity::registry::{MemoryStore, NodeState, RegistryStore, SessionRegistryLayer};
    ///
    /// let store = MemoryStore::new();
    /// let handle = SessionRegistryLayer::new(store.clone(), "node-a").unwrap().handle();
    /// assert!(handle.drain(Duration::from_secs(1)).await);
    /// assert!(handle.is_draining());
    /// assert_eq!(store.node("node-a").await.unwrap().map(|n| n.state), Some(NodeState::Draining));
    /// # }
    /// ```
    pub async fn drain(&self, timeout: Duration) -> bool {
        self.core.start();
        let Some(cont) = self.core.continuity.as_ref() else {
            return false;
        };
        cont.set_draining();
        super::continuity::announce(&self.core, timeout).await
    }

    /// Whether [`drain`](Self::drain) was called.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let handle = SessionRegistryLayer::new(MemoryStore::new(), "node-a").unwrap().handle();
    /// assert!(!handle.is_draining());
    /// ```
    pub fn is_draining(&self) -> bool {
        self.core
            .continuity
            .as_ref()
            .is_some_and(super::continuity::Continuity::is_draining)
    }

    /// Leaves the cluster: removes this node's liveness record (if it still names this
    /// incarnation), so the other nodes count it gone at once. Call it last, once the
    /// transport has shut down and the registry is flushed. Returns whether it was removed.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use mcp_affinity::registry::{MemoryStore, RegistryStore, SessionRegistryLayer};
    ///
    /// let store = MemoryStore::new();
    /// let handle = SessionRegistryLayer::new(store.clone(), "node-a").unwrap().handle();
    /// handle.drain(Duration::from_secs(1)).await;
    /// assert!(handle.leave(Duration::from_secs(1)).await);
    /// assert_eq!(store.node("node-a").await.unwrap(), None);
    /// # }
    /// ```
    pub async fn leave(&self, timeout: Duration) -> bool {
        if self.core.continuity.is_none() {
            return false;
        }
        let gone = self
            .core
            .store
            .withdraw(&self.core.node, &self.core.incarnation);
        matches!(tokio::time::timeout(timeout, gone).await, Ok(Ok(true)))
    }
}
