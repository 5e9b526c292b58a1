//! [`ClusterBus`]: publish once, deliver on every node.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex, OnceLock, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{broadcast, oneshot};

use super::{
    Change, SessionFilter,
    message::{self, Body, Envelope},
    stats::{BusStats, Counters, DropReason},
};
use crate::{
    config::{Checks, ConfigError},
    session::{SendError, encode_message},
    transport::TransportHandle,
};

/// The default [`with_max_message_bytes`](ClusterBusBuilder::with_max_message_bytes).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 * 1024;
/// The default [`with_request_timeout`](ClusterBusBuilder::with_request_timeout).
pub const DEFAULT_BUS_REQUEST_TIMEOUT: Duration = Duration::from_secs(70);
/// The default [`with_queue`](ClusterBusBuilder::with_queue).
pub const DEFAULT_BUS_QUEUE: usize = 4096;
/// How many receivers of [`ClusterBus::changes`] may fall behind before they lag.
const CHANGE_FEED: usize = 256;

/// A cluster-wide channel for what one node says to sessions anywhere: notifications for every
/// session ([`notify_all`](Self::notify_all), [`notify_where`](Self::notify_where)), a
/// notification or a server→client request for one session ([`notify_session`](Self::notify_session),
/// [`request`](Self::request), answered back to the caller), and the change feed
/// ([`publish_change`](Self::publish_change), [`changes`](Self::changes)).
///
/// Each node subscribes once and every message is published once, whatever the number of
/// sessions; the node that receives it delivers to its own sessions (through the
/// [`TransportHandle`] it is [attached](Self::attach) to). A message for one session that this
/// node holds never leaves the node. Backends: [`local`](Self::local) (one node),
/// [`MemoryBus`](super::MemoryBus) (several nodes in one process, e.g. sharing a
/// `MemoryStore`), and Redis pub/sub ([`ClusterBusBuilder::with_redis`]; sharded pub/sub on a
/// Redis Cluster). Clones share one bus.
///
/// Delivery is at most once: a message published while Redis is unreachable is lost for the
/// other nodes (counted in [`BusStats::publish_failed`]), never an error for a client; the
/// sessions' own event logs make what was delivered replayable.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use mcp_affinity::{SseTransportLayer, bus::{ClusterBus, MemoryBus}};
///
/// // Two nodes in one process, sharing an in-process bus.
/// let hub = MemoryBus::new();
/// let (a, b) = (SseTransportLayer::new(), SseTransportLayer::new());
/// let bus_a = ClusterBus::builder("a").with_memory(&hub).build()?;
/// let bus_b = ClusterBus::builder("b").with_memory(&hub).build()?;
/// bus_a.attach(&a.handle());
/// bus_b.attach(&b.handle());
/// // Reaches the sessions of both nodes (none yet): 0 here, node b delivers its own.
/// assert_eq!(bus_a.notify_all("notifications/tools/list_changed", None)?, 0);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClusterBus {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    node: Box<str>,
    /// `node/incarnation`: what this process signs its messages with.
    origin: Box<str>,
    transport: OnceLock<TransportHandle>,
    backend: Backend,
    changes: broadcast::Sender<Change>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<Value, BusError>>>>,
    next: AtomicU64,
    max_message_bytes: usize,
    request_timeout: Duration,
    pub(super) counters: Counters,
    /// The backend's tasks, stopped when the last clone of the bus is dropped.
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// Applies the task control messages addressed to this node (`tasks` module).
    task_handler: OnceLock<TaskHandler>,
}

/// Applies one task control message (task id, kind, params) on this node: `true` when the
/// task runs here and took it.
pub(crate) type TaskHandler = Arc<
    dyn Fn(
            String,
            String,
            Option<Value>,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send>>
        + Send
        + Sync,
>;

impl Drop for Inner {
    fn drop(&mut self) {
        for t in self
            .tasks
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
        {
            t.abort();
        }
    }
}

/// Where published messages go.
pub(super) enum Backend {
    /// One node: nothing leaves it.
    Local,
    /// Nodes in one process.
    Memory(broadcast::Sender<Bytes>),
    /// The Redis publisher's queue.
    #[cfg(feature = "redis")]
    Redis(tokio::sync::mpsc::Sender<Bytes>),
}

impl fmt::Debug for ClusterBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterBus")
            .field("node", &self.inner.node)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Why the bus could not do what was asked.
///
/// # Example
///
/// ```
/// use mcp_affinity::bus::BusError;
///
/// assert_eq!(BusError::TooLarge.to_string(), "bus message too large");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum BusError {
    /// The message is larger than [`with_max_message_bytes`](ClusterBusBuilder::with_max_message_bytes).
    TooLarge,
    /// The outgoing queue is full (Redis slow or unreachable): the message was not sent.
    Backlogged,
    /// No answer came in time: the session's client did not answer, or no node holds the
    /// session.
    Timeout,
    /// The session's node answered with this error (closed, too many pending requests, the
    /// client's JSON-RPC error, …).
    Session(SendError),
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge => f.write_str("bus message too large"),
            Self::Backlogged => f.write_str("bus queue full"),
            Self::Timeout => f.write_str("no answer on the bus in time"),
            Self::Session(e) => write!(f, "session: {e}"),
        }
    }
}

impl std::error::Error for BusError {}

/// Where [`ClusterBus::notify_session`] put the notification.
///
/// # Example
///
/// ```
/// use mcp_affinity::bus::Delivery;
///
/// assert_ne!(Delivery::Local, Delivery::Published);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Delivery {
    /// This node holds the session: appended to its standalone stream, no message sent.
    Local,
    /// Published for the node that holds it.
    Published,
}

/// Builds a [`ClusterBus`]: [`ClusterBus::builder`].
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), mcp_affinity::ConfigError> {
/// use std::time::Duration;
/// use mcp_affinity::bus::ClusterBus;
///
/// let bus = ClusterBus::builder("n1")
///     .with_request_timeout(Duration::from_secs(30))
///     .with_max_message_bytes(64 * 1024)
///     .build()?;
/// assert_eq!(bus.node(), "n1");
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct ClusterBusBuilder {
    node: String,
    kind: Kind,
    max_message_bytes: usize,
    request_timeout: Duration,
    queue: usize,
    channel: String,
}

#[derive(Debug, Clone)]
enum Kind {
    Local,
    Memory(super::MemoryBus),
    #[cfg(feature = "redis")]
    Redis(super::redis::Target),
}

impl ClusterBusBuilder {
    /// A builder for the bus of node `node` (the name the registry knows it by). Without a
    /// backend it is a [local](ClusterBus::local) bus.
    ///
    /// # Example
    ///
    /// ```
    /// let builder = mcp_affinity::bus::ClusterBusBuilder::new("n1");
    /// # let _ = builder;
    /// ```
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            kind: Kind::Local,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            request_timeout: DEFAULT_BUS_REQUEST_TIMEOUT,
            queue: DEFAULT_BUS_QUEUE,
            channel: "mcp:bus".into(),
        }
    }

    /// Nodes in this process share `hub`.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::ConfigError> {
    /// use mcp_affinity::bus::{ClusterBus, MemoryBus};
    ///
    /// let hub = MemoryBus::new();
    /// let bus = ClusterBus::builder("n1").with_memory(&hub).build()?;
    /// # let _ = bus;
    /// # Ok(()) }
    /// ```
    pub fn with_memory(mut self, hub: &super::MemoryBus) -> Self {
        self.kind = Kind::Memory(hub.clone());
        self
    }

    /// Nodes share a Redis server (pub/sub over RESP3 on one connection per node, which
    /// reconnects and resubscribes by itself). The URL is checked when the bus is built; the
    /// connection is made in the background, so a Redis that is down at start is retried,
    /// never an error.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::ConfigError> {
    /// let bus = mcp_affinity::bus::ClusterBus::builder("n1")
    ///     .with_redis("redis://127.0.0.1:6379/")
    ///     .build()?;
    /// # let _ = bus;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis")]
    #[cfg_attr(nightly_doc_cfg, doc(cfg(feature = "redis")))]
    pub fn with_redis(mut self, url: impl Into<String>) -> Self {
        self.kind = Kind::Redis(super::redis::Target::Single(url.into()));
        self
    }

    /// Nodes share a Redis Cluster: sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`), so the bus's
    /// traffic stays on the shard that owns its channel. `urls` are some of the cluster's
    /// nodes.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::ConfigError> {
    /// let bus = mcp_affinity::bus::ClusterBus::builder("n1")
    ///     .with_redis_cluster(["redis://127.0.0.1:7000/", "redis://127.0.0.1:7001/"])
    ///     .build()?;
    /// # let _ = bus;
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "redis-cluster")]
    #[cfg_attr(nightly_doc_cfg, doc(cfg(feature = "redis-cluster")))]
    pub fn with_redis_cluster<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.kind = Kind::Redis(super::redis::Target::Cluster(
            urls.into_iter().map(Into::into).collect(),
        ));
        self
    }

    /// The Redis channel (default `mcp:bus`); nodes of one cluster share it, two clusters on
    /// one Redis use two.
    ///
    /// # Example
    ///
    /// ```
    /// let builder = mcp_affinity::bus::ClusterBus::builder("n1").with_channel("shop:mcp:bus");
    /// # let _ = builder;
    /// ```
    pub fn with_channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    /// The largest message the bus publishes or accepts (default 256 KiB); a larger one is
    /// refused on publish ([`BusError::TooLarge`]) and dropped, counted, on receipt.
    ///
    /// # Example
    ///
    /// ```
    /// let builder = mcp_affinity::bus::ClusterBus::builder("n1").with_max_message_bytes(4096);
    /// # let _ = builder;
    /// ```
    pub fn with_max_message_bytes(mut self, bytes: usize) -> Self {
        self.max_message_bytes = bytes;
        self
    }

    /// How long [`ClusterBus::request`] waits for an answer from another node (default 70 s,
    /// longer than the transport's default request timeout, so the owner's own timeout
    /// answers first).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// let builder = mcp_affinity::bus::ClusterBus::builder("n1").with_request_timeout(Duration::from_secs(5));
    /// # let _ = builder;
    /// ```
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The bound of each queue between the backend and this node (outgoing and incoming,
    /// default 4096 messages). A full outgoing queue refuses a publish
    /// ([`BusError::Backlogged`]); a full incoming queue drops the message and counts it: a
    /// slow node never slows the connection, Redis or other nodes.
    ///
    /// # Example
    ///
    /// ```
    /// let builder = mcp_affinity::bus::ClusterBus::builder("n1").with_queue(1024);
    /// # let _ = builder;
    /// ```
    pub fn with_queue(mut self, messages: usize) -> Self {
        self.queue = messages;
        self
    }

    /// Validates the settings and starts the backend's tasks (call it inside a Tokio runtime).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] (component `"bus"`) for an empty node name or channel, a zero bound
    /// or timeout, a Redis URL that does not parse, or no Tokio runtime.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let err = mcp_affinity::bus::ClusterBus::builder("").build().unwrap_err();
    /// assert_eq!((err.component(), err.field()), ("bus", "node"));
    /// # }
    /// ```
    pub fn build(self) -> Result<ClusterBus, ConfigError> {
        let check = Checks("bus");
        check.require(!self.node.is_empty(), "node", "must not be empty")?;
        check.require(!self.channel.is_empty(), "channel", "must not be empty")?;
        check.require(
            self.max_message_bytes >= 1024,
            "max_message_bytes",
            "must be at least 1024",
        )?;
        check.positive(self.request_timeout, "request_timeout")?;
        check.at_least_one(self.queue, "queue")?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            ConfigError::new("bus", "runtime", "must be built inside a Tokio runtime")
        })?;
        let mut incarnation = [0u8; 8];
        // An incarnation that repeats only costs this process its own echoes.
        let _ = getrandom::fill(&mut incarnation);
        let origin = format!("{}/{:016x}", self.node, u64::from_le_bytes(incarnation));
        let build = |backend| {
            Inner::new(
                &self.node,
                origin.clone(),
                backend,
                self.max_message_bytes,
                self.request_timeout,
            )
        };
        let inner = match &self.kind {
            Kind::Local => build(Backend::Local),
            Kind::Memory(hub) => {
                let inner = build(Backend::Memory(hub.sender()));
                let task = runtime.spawn(super::memory::receive(
                    hub.subscribe(),
                    Arc::downgrade(&inner),
                ));
                inner.add_task(task.abort_handle());
                inner
            }
            #[cfg(feature = "redis")]
            Kind::Redis(target) => {
                let (tx, rx) = tokio::sync::mpsc::channel(self.queue);
                let inner = build(Backend::Redis(tx));
                super::redis::start(
                    &runtime,
                    target,
                    &self.channel,
                    self.queue,
                    rx,
                    Arc::downgrade(&inner),
                )?;
                inner
            }
        };
        Ok(ClusterBus { inner })
    }
}

impl ClusterBus {
    /// A builder for node `node`'s bus.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), mcp_affinity::ConfigError> {
    /// let bus = mcp_affinity::bus::ClusterBus::builder("n1").build()?;
    /// assert_eq!(bus.node(), "n1");
    /// # Ok(()) }
    /// ```
    pub fn builder(node: impl Into<String>) -> ClusterBusBuilder {
        ClusterBusBuilder::new(node)
    }

    /// A bus for a single node: every call delivers to this node's sessions only, and nothing
    /// needs a runtime. What [`McpStack`](crate::McpStack) uses when given no bus.
    ///
    /// # Example
    ///
    /// ```
    /// let bus = mcp_affinity::bus::ClusterBus::local("n1");
    /// assert_eq!(bus.notify_all("notifications/tools/list_changed", None), Ok(0));
    /// ```
    pub fn local(node: impl Into<String>) -> Self {
        let node: String = node.into();
        Self {
            inner: Inner::new(
                &node,
                format!("{node}/0"),
                Backend::Local,
                DEFAULT_MAX_MESSAGE_BYTES,
                DEFAULT_BUS_REQUEST_TIMEOUT,
            ),
        }
    }

    /// The node's name.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(mcp_affinity::bus::ClusterBus::local("n1").node(), "n1");
    /// ```
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Connects the bus to this node's transport, whose sessions it delivers to. Once per bus;
    /// a second call is ignored and returns `false`. Messages received before are delivered to
    /// no session (nothing is held on this node yet).
    ///
    /// # Example
    ///
    /// ```
    /// let bus = mcp_affinity::bus::ClusterBus::local("n1");
    /// let transport = mcp_affinity::SseTransportLayer::new();
    /// assert!(bus.attach(&transport.handle()));
    /// assert!(!bus.attach(&transport.handle()));
    /// ```
    pub fn attach(&self, transport: &TransportHandle) -> bool {
        self.inner.transport.set(transport.clone()).is_ok()
    }

    /// Sends one notification to every legacy session of the cluster (on its standalone
    /// stream, held for a session without one, like
    /// [`Session::notify`](crate::session::Session::notify)): published once for the other
    /// nodes, and delivered here at once. Returns how many of this node's sessions took it.
    ///
    /// # Errors
    ///
    /// [`BusError::TooLarge`] or [`BusError::Backlogged`]: it was not published, and no
    /// session got it (this node's neither), so a retry delivers it once.
    ///
    /// # Example
    ///
    /// ```
    /// let bus = mcp_affinity::bus::ClusterBus::local("n1");
    /// assert_eq!(bus.notify_all("notifications/message", Some(serde_json::json!({"level": "info", "data": "hi"}))), Ok(0));
    /// ```
    pub fn notify_all(&self, method: &str, params: Option<Value>) -> Result<usize, BusError> {
        self.notify_filtered(None, method, params)
    }

    /// Like [`notify_all`](Self::notify_all), to the sessions `filter` matches, on every node.
    ///
    /// # Errors
    ///
    /// As for [`notify_all`](Self::notify_all).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::bus::{ClusterBus, SessionFilter};
    ///
    /// let bus = ClusterBus::local("n1");
    /// let ada = SessionFilter::new().with_principal("ada");
    /// assert_eq!(bus.notify_where(&ada, "notifications/message", None), Ok(0));
    /// ```
    pub fn notify_where(
        &self,
        filter: &SessionFilter,
        method: &str,
        params: Option<Value>,
    ) -> Result<usize, BusError> {
        self.notify_filtered(Some(filter), method, params)
    }

    fn notify_filtered(
        &self,
        filter: Option<&SessionFilter>,
        method: &str,
        params: Option<Value>,
    ) -> Result<usize, BusError> {
        let data = encode_message(method, None, params.as_ref());
        if self.inner.is_distributed() {
            let m = message::raw(&data).ok_or(BusError::TooLarge)?;
            let bytes = message::encode(
                &self.inner.origin,
                None,
                Body::All {
                    f: filter.cloned(),
                    m,
                },
            );
            self.inner.publish(bytes)?;
        }
        Ok(self.inner.deliver(filter, &data))
    }

    /// Sends a notification to one session, wherever it is held: on its standalone stream
    /// here if this node holds it, otherwise published for the node that does (which drops it,
    /// counted, if no node does).
    ///
    /// # Errors
    ///
    /// [`BusError::Session`] if this node holds the session and it refused (closed);
    /// [`BusError::TooLarge`] or [`BusError::Backlogged`] when publishing.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::bus::{ClusterBus, Delivery};
    ///
    /// let bus = ClusterBus::local("n1");
    /// // Not held here: published (on a local bus, for nobody).
    /// assert_eq!(bus.notify_session("n1-abc", "notifications/message", None), Ok(Delivery::Published));
    /// ```
    pub fn notify_session(
        &self,
        session: &str,
        method: &str,
        params: Option<Value>,
    ) -> Result<Delivery, BusError> {
        let data = encode_message(method, None, params.as_ref());
        if let Some(s) = self.inner.transport.get().and_then(|t| t.session(session)) {
            s.notify_encoded(data).map_err(BusError::Session)?;
            Counters::bump(&self.inner.counters.delivered, 1);
            return Ok(Delivery::Local);
        }
        if self.inner.is_distributed() {
            let m = message::raw(&data).ok_or(BusError::TooLarge)?;
            let bytes = message::encode(
                &self.inner.origin,
                None,
                Body::One {
                    s: session.into(),
                    m,
                },
            );
            self.inner.publish(bytes)?;
        }
        Ok(Delivery::Published)
    }

    /// Sends a server→client request (`sampling/createMessage`, `roots/list`, …) to one
    /// session wherever it is held, and waits for the client's answer: through the session
    /// here, or through the node that holds it, which sends the answer back on the bus.
    /// Dropping the future withdraws the wait (the owner's request then times out there).
    ///
    /// # Errors
    ///
    /// [`BusError::Session`] with the session's [`SendError`] (closed, too many pending, the
    /// client's error, its timeout); [`BusError::Timeout`] when no answer came within the
    /// [request timeout](ClusterBusBuilder::with_request_timeout) (no node holds the session);
    /// [`BusError::TooLarge`] or [`BusError::Backlogged`] when publishing.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() -> Result<(), mcp_affinity::ConfigError> {
    /// use mcp_affinity::bus::{BusError, ClusterBus};
    /// use std::time::Duration;
    ///
    /// let bus = ClusterBus::builder("n1").with_request_timeout(Duration::from_secs(1)).build()?;
    /// let answer = bus.request("n1-nobody", "roots/list", None).await;
    /// assert_eq!(answer, Err(BusError::Timeout));
    /// # Ok(()) }
    /// ```
    pub fn request(
        &self,
        session: &str,
        method: &str,
        params: Option<Value>,
    ) -> impl Future<Output = Result<Value, BusError>> + Send + 'static {
        let inner = self.inner.clone();
        // Both are made now (the request is sent, or published, before the future is
        // polled); the future only waits.
        let waiting = match inner.transport.get().and_then(|t| t.session(session)) {
            Some(s) => Ok(s.request(method, params)),
            None => Err(inner.prepare_request(session, method, params)),
        };
        async move {
            let (guard, rx) = match waiting {
                Ok(local) => return local.await.map_err(BusError::Session),
                Err(prepared) => prepared?,
            };
            let out = match tokio::time::timeout(inner.request_timeout, rx).await {
                Ok(Ok(answer)) => answer,
                Ok(Err(_)) | Err(_) => Err(BusError::Timeout),
            };
            drop(guard);
            out
        }
    }

    /// Publishes a change once: every node delivers it to its legacy sessions (list changes to
    /// all; `resources/updated` to the sessions subscribed to the URI) and to its
    /// [`changes`](Self::changes) receivers. Returns how many of this node's sessions took it.
    ///
    /// # Errors
    ///
    /// [`BusError::TooLarge`] or [`BusError::Backlogged`]: it was not published, and not
    /// delivered here either.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::bus::{Change, ClusterBus};
    ///
    /// let bus = ClusterBus::local("n1");
    /// let mut feed = bus.changes();
    /// assert_eq!(bus.publish_change(Change::ToolsListChanged), Ok(0));
    /// assert_eq!(feed.try_recv().unwrap(), Change::ToolsListChanged);
    /// ```
    pub fn publish_change(&self, change: Change) -> Result<usize, BusError> {
        if self.inner.is_distributed() {
            let bytes =
                message::encode(&self.inner.origin, None, Body::Change { c: change.clone() });
            self.inner.publish(bytes)?;
        }
        Ok(self.inner.apply_change(change))
    }

    /// Sets what applies the task control messages addressed to this node (once; a second
    /// call is ignored and returns `false`).
    pub(crate) fn serve_tasks(&self, handler: TaskHandler) -> bool {
        self.inner.task_handler.set(handler).is_ok()
    }

    /// Sends a task control message (`kind`, `params`) for task `task` to node `node` and waits
    /// up to `timeout` for its reply: `Ok(true)` applied, `Ok(false)` not running there,
    /// [`BusError::Timeout`] when no node answered (its node is gone, or the bus is local).
    pub(crate) fn task_request(
        &self,
        node: &str,
        task: &str,
        kind: &str,
        params: Option<Value>,
        timeout: Duration,
    ) -> impl Future<Output = Result<bool, BusError>> + Send + 'static {
        let inner = self.inner.clone();
        let prepared = if inner.is_distributed() {
            let id = inner.next.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            inner.lock_pending().insert(id, tx);
            let guard = PendingGuard {
                inner: inner.clone(),
                id,
            };
            let bytes = message::encode(
                &inner.origin,
                None,
                Body::Task {
                    n: node.into(),
                    t: task.into(),
                    c: id,
                    k: kind.into(),
                    p: params,
                },
            );
            inner.publish(bytes).map(|()| (guard, rx))
        } else {
            Err(BusError::Timeout)
        };
        async move {
            let (guard, rx) = prepared?;
            let out = match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(Ok(v))) => Ok(v.as_bool().unwrap_or(false)),
                Ok(Ok(Err(e))) => Err(e),
                Ok(Err(_)) | Err(_) => Err(BusError::Timeout),
            };
            drop(guard);
            out
        }
    }

    /// The change feed on this node: every change published on any node, for a modern
    /// `subscriptions/listen` handler to filter and send. A receiver that falls more than 256
    /// changes behind gets [`Lagged`](broadcast::error::RecvError::Lagged) and goes on.
    ///
    /// # Example
    ///
    /// ```
    /// let bus = mcp_affinity::bus::ClusterBus::local("n1");
    /// let feed = bus.changes();
    /// # let _ = feed;
    /// ```
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.inner.changes.subscribe()
    }

    /// This node's bus counters.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(mcp_affinity::bus::ClusterBus::local("n1").stats().received, 0);
    /// ```
    pub fn stats(&self) -> BusStats {
        self.inner.counters.snapshot()
    }

    /// Whether the bus reaches the other nodes now (subscribed to Redis; always for the local
    /// and in-process buses): what a `/healthz` reports.
    ///
    /// # Example
    ///
    /// ```
    /// assert!(mcp_affinity::bus::ClusterBus::local("n1").is_connected());
    /// ```
    pub fn is_connected(&self) -> bool {
        self.inner.counters.connected.load(Ordering::Relaxed)
    }
}

/// Withdraws a pending bus request when its future ends or is dropped.
struct PendingGuard {
    inner: Arc<Inner>,
    id: u64,
}

impl std::ops::Drop for PendingGuard {
    fn drop(&mut self) {
        self.inner.lock_pending().remove(&self.id);
    }
}

type Prepared = (PendingGuard, oneshot::Receiver<Result<Value, BusError>>);

impl Inner {
    fn new(
        node: &str,
        origin: String,
        backend: Backend,
        max_message_bytes: usize,
        request_timeout: Duration,
    ) -> Arc<Self> {
        // Redis is subscribed in the background; the other backends are at once.
        let connected = matches!(backend, Backend::Local | Backend::Memory(_));
        Arc::new(Self {
            node: node.into(),
            origin: origin.into(),
            transport: OnceLock::new(),
            backend,
            changes: broadcast::channel(CHANGE_FEED).0,
            pending: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            max_message_bytes,
            request_timeout,
            counters: Counters {
                connected: connected.into(),
                ..Counters::default()
            },
            tasks: Mutex::new(Vec::new()),
            task_handler: OnceLock::new(),
        })
    }

    /// Appends an encoded notification to the standalone stream of every session of this
    /// node that `filter` matches (all without one); how many took it.
    fn deliver(&self, filter: Option<&SessionFilter>, data: &Bytes) -> usize {
        let Some(t) = self.transport.get() else {
            return 0;
        };
        let n = t.notify_encoded_where(data, |s| filter.is_none_or(|f| f.matches(s)));
        Counters::bump(&self.counters.delivered, n as u64);
        n
    }

    pub(super) fn add_task(&self, task: tokio::task::AbortHandle) {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(task);
    }

    fn lock_pending(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Result<Value, BusError>>>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn is_distributed(&self) -> bool {
        !matches!(self.backend, Backend::Local)
    }

    fn publish(&self, bytes: Vec<u8>) -> Result<(), BusError> {
        if bytes.len() > self.max_message_bytes {
            return Err(BusError::TooLarge);
        }
        let bytes = Bytes::from(bytes);
        match &self.backend {
            Backend::Local => return Ok(()),
            Backend::Memory(tx) => {
                // No receiver (every other node gone) is not an error.
                let _ = tx.send(bytes);
            }
            #[cfg(feature = "redis")]
            Backend::Redis(tx) => {
                if tx.try_send(bytes).is_err() {
                    Counters::bump(&self.counters.backlogged, 1);
                    crate::metrics::bus_out(crate::metrics::BusOut::Backlogged, 1);
                    return Err(BusError::Backlogged);
                }
                // Counted as published once the batch is sent.
                return Ok(());
            }
        }
        Counters::bump(&self.counters.published, 1);
        crate::metrics::bus_out(crate::metrics::BusOut::Ok, 1);
        Ok(())
    }

    fn prepare_request(
        self: &Arc<Self>,
        session: &str,
        method: &str,
        params: Option<Value>,
    ) -> Result<Prepared, BusError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock_pending().insert(id, tx);
        let guard = PendingGuard {
            inner: self.clone(),
            id,
        };
        let bytes = message::encode(
            &self.origin,
            None,
            Body::Request {
                s: session.into(),
                c: id,
                m: method.into(),
                p: params,
            },
        );
        self.publish(bytes)?;
        Ok((guard, rx))
    }

    /// Delivers a change to this node's sessions and feed.
    fn apply_change(&self, change: Change) -> usize {
        let data = encode_message(change.method(), None, change.params().as_ref());
        // List changes go to every session; a resource update to its subscribers.
        let subscribers = change
            .uri()
            .map(|uri| SessionFilter::new().with_resource(uri));
        let n = self.deliver(subscribers.as_ref(), &data);
        // No receiver is not an error: no listen stream is open here.
        let _ = self.changes.send(change);
        n
    }

    /// Handles one message from another node (or this node's own echo, which it ignores).
    pub(super) fn receive(self: &Arc<Self>, bytes: &[u8]) {
        if bytes.len() > self.max_message_bytes {
            self.counters.dropped(DropReason::Oversized, 1);
            return;
        }
        let env = match serde_json::from_slice::<Envelope<'_>>(bytes) {
            Ok(env) if env.v == message::VERSION => env,
            _ => {
                self.counters.dropped(DropReason::Malformed, 1);
                return;
            }
        };
        if *env.o == *self.origin {
            return;
        }
        if env.to.as_deref().is_some_and(|to| to != &*self.origin) {
            return;
        }
        Counters::bump(&self.counters.received, 1);
        crate::metrics::bus_in();
        match env.b {
            Body::All { f, m } => {
                self.deliver(f.as_ref(), &Bytes::copy_from_slice(m.get().as_bytes()));
            }
            Body::One { s, m } => match self.transport.get().and_then(|t| t.session(&s)) {
                Some(session) => {
                    if session
                        .notify_encoded(Bytes::copy_from_slice(m.get().as_bytes()))
                        .is_ok()
                    {
                        Counters::bump(&self.counters.delivered, 1);
                    }
                }
                None => self.counters.dropped(DropReason::UnknownSession, 1),
            },
            Body::Request { s, c, m, p } => {
                let Some(session) = self.transport.get().and_then(|t| t.session(&s)) else {
                    self.counters.dropped(DropReason::UnknownSession, 1);
                    return;
                };
                let answer = session.request(&m, p);
                let to: Box<str> = env.o.into();
                let weak = Arc::downgrade(self);
                // Bounded by the session's own limit on pending server→client requests.
                tokio::spawn(async move {
                    let result = answer.await;
                    if let Some(inner) = weak.upgrade() {
                        inner.reply(&to, c, result);
                    }
                });
            }
            Body::Reply { c, ok, e, d } => {
                let answer = match (ok, e.as_deref()) {
                    (Some(v), None) => Ok(v),
                    (_, Some(kind)) => Err(BusError::Session(send_error(kind, d))),
                    (None, None) => Ok(Value::Null),
                };
                let tx = self.lock_pending().remove(&c);
                if tx.is_some_and(|tx| tx.send(answer).is_ok()) {
                    Counters::bump(&self.counters.delivered, 1);
                }
            }
            Body::Change { c } => {
                self.apply_change(c);
            }
            Body::Task { n, t, c, k, p } => {
                if *n != *self.node {
                    return;
                }
                let Some(handler) = self.task_handler.get().cloned() else {
                    return;
                };
                let applied = handler(t.into_owned(), k.into_owned(), p);
                let to: Box<str> = env.o.into();
                let weak = Arc::downgrade(self);
                tokio::spawn(async move {
                    let applied = applied.await;
                    if let Some(inner) = weak.upgrade() {
                        inner.reply(&to, c, Ok(Value::Bool(applied)));
                    }
                });
            }
        }
    }

    fn reply(&self, to: &str, c: u64, result: Result<Value, SendError>) {
        let (ok, e, d) = match result {
            Ok(v) => (Some(v), None, None),
            Err(SendError::Rejected(err)) => (None, Some("rejected"), Some(err)),
            Err(SendError::Closed) => (None, Some("closed"), None),
            Err(SendError::StreamEnded) => (None, Some("stream_ended"), None),
            Err(SendError::TooManyPending) => (None, Some("too_many_pending"), None),
            Err(SendError::Timeout) => (None, Some("timeout"), None),
            Err(_) => (None, Some("not_supported"), None),
        };
        let bytes = message::encode(
            &self.origin,
            Some(to),
            Body::Reply {
                c,
                ok,
                e: e.map(Into::into),
                d,
            },
        );
        if let Err(err) = self.publish(bytes) {
            tracing::warn!(error = %err, "bus: a reply could not be published");
        }
    }
}

fn send_error(kind: &str, detail: Option<Value>) -> SendError {
    match kind {
        "rejected" => SendError::Rejected(detail.unwrap_or(Value::Null)),
        "closed" => SendError::Closed,
        "stream_ended" => SendError::StreamEnded,
        "too_many_pending" => SendError::TooManyPending,
        "timeout" => SendError::Timeout,
        _ => SendError::NotSupported,
    }
}

/// A weak reference the backend's tasks hold, so they stop with the bus.
pub(super) type WeakInner = Weak<Inner>;
