use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;
use tower_layer::Layer;

use super::{
    SseTransport,
    config::{Config, ConfigError, HostPolicy, OriginPolicy, PrincipalExtractor},
    log::STANDALONE,
};
use crate::session::{CloseReason, Session, SessionConfig, SessionIdGenerator, SessionTable};

/// Adds the MCP Streamable HTTP transport (both eras) in front of a JSON-RPC handler.
///
/// See the [module docs](crate::transport) for the handler contract and an example.
///
/// The layer holds the transport's shared state (its session table), created once by
/// [`new`](Self::new) or [`SseTransportBuilder::build`]: cloning the layer does not create a
/// new one, and every service it builds shares it, so the services axum's
/// `MethodRouter::layer` builds per method (POST, GET, DELETE) see the same sessions. Build
/// the layer once per node.
///
/// Settings are made on an [`SseTransportBuilder`] ([`builder`](Self::builder)), whose
/// [`build`](SseTransportBuilder::build) validates them; the layer itself has none, so an
/// invalid configuration never reaches a served service:
///
/// ```compile_fail
/// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({})) });
/// use tower::Layer;
///
/// let svc = mcp_affinity::SseTransportLayer::new().with_max_body_bytes(0).layer(handler);
/// ```
///
/// # Order
///
/// Innermost of this crate's layers: `SessionAffinityLayer` → `SessionRegistryLayer` →
/// `SseTransportLayer` → handler. Put authentication outside it if sessions are bound to a
/// principal ([`with_principal`](SseTransportBuilder::with_principal)). The registry must sit
/// outside it for sessions to be restored: it is what passes the
/// [`RestoreSession`](crate::session::RestoreSession) a restore needs, and what reads the
/// [`Session`](crate::session::Session) off the restoring request's response.
///
/// # Backpressure
///
/// `poll_ready` forwards the handler's readiness. Requests the transport answers itself
/// (rejections, `GET`, `DELETE`, client responses) do not use the handler's readiness.
/// A request's handler runs in its own task once it does not complete on the first poll, so
/// a slow handler does not hold the connection's future. In the legacy era that task
/// outlives the `POST` (the client may resume the stream with `Last-Event-ID`), so a
/// `ConcurrencyLimitLayer` in front of the transport does not bound it; the transport bounds
/// running request handlers itself, in both eras: at most
/// [`with_max_running_handlers`](SseTransportBuilder::with_max_running_handlers) per node
/// (default 4,096) and
/// [`with_max_running_handlers_per_session`](SseTransportBuilder::with_max_running_handlers_per_session)
/// per legacy session (default 64). A request beyond either bound is answered at once with
/// `503` (the node's bound) or `429` (the session's: the client's own doing, which a balancer
/// that retries or marks a server down on `503` must not take for the node's state), with
/// `Retry-After` and a JSON-RPC error, without calling the handler: it is not queued (a queue
/// would only move the memory). A `subscriptions/listen` stream lives as long as its client
/// keeps it open (its handler is dropped when the stream closes): it takes no place and has no
/// handler timeout. A `2025-03-26` batch takes the places of all its
/// requests up front, or none. A request handler still running after
/// [`with_handler_timeout`](SseTransportBuilder::with_handler_timeout) (default 10 min) is
/// dropped and its request answered with a JSON-RPC error, and a session is closed at its
/// [`with_session_lifetime`](SseTransportBuilder::with_session_lifetime) (default 24 h) even
/// while busy, so neither a handler nor a stream that never ends holds a place or a session
/// for ever. `initialize` and notifications run inside their `POST`, never
/// in a task of their own, and count against neither bound: what bounds open requests (a
/// `ConcurrencyLimitLayer`, the server's connection limit) bounds them. A request that
/// restores a session runs the restore hook inline; a request for the same session arriving
/// meanwhile waits for that restore (without a thread), then is served like any other.
///
/// With a write-through [event sink](SseTransportBuilder::with_event_sink), a standalone
/// `GET` stream's body sends no event before the sink has stored it: the stream waits (its
/// keep-alive comments still go out), while `notify` and the handlers never do. The events
/// held meanwhile stay in the session's event log, within its
/// [bounds](SseTransportBuilder::with_event_log), and a held event holds only its own
/// stream's later events.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # use tower::{Layer, ServiceExt};
/// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
/// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
/// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
/// use mcp_affinity::SseTransportLayer;
///
/// let svc = SseTransportLayer::new().layer(handler);
/// let res = svc.oneshot(post(INIT)).await.unwrap();
/// assert_eq!(res.status(), 200);
/// assert!(res.headers().contains_key("mcp-session-id"));
/// # }
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct SseTransportLayer {
    shared: Arc<Shared>,
}

impl Default for SseTransportLayer {
    fn default() -> Self {
        Self::new()
    }
}

/// The configuration of an [`SseTransportLayer`]: limits, timeouts and policies, validated by
/// [`build`](Self::build).
///
/// A builder is not a layer: only the layer that [`build`](Self::build) returns wraps a
/// service, so an invalid configuration cannot be served.
///
/// ```compile_fail
/// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({})) });
/// use tower::Layer;
///
/// let svc = mcp_affinity::SseTransportLayer::builder().with_max_body_bytes(0).layer(handler);
/// ```
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use mcp_affinity::SseTransportLayer;
///
/// let layer = SseTransportLayer::builder()
///     .with_max_sessions(1_000)
///     .with_idle_timeout(Duration::from_secs(600))
///     .build()
///     .unwrap();
/// assert_eq!(layer.handle().session_count(), 0);
/// let err = SseTransportLayer::builder().with_max_sessions(0).build().unwrap_err();
/// assert_eq!(err.field(), "max_sessions");
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct SseTransportBuilder {
    config: Config,
}

/// State shared by every clone of a built transport.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) sessions: SessionTable,
    pub(crate) epoch: Instant,
    pub(crate) draining: AtomicBool,
    sweeper: AtomicBool,
    pub(crate) counters: Counters,
    /// Request handlers running now, in every session and both eras (the per-node bound).
    pub(crate) running: std::sync::atomic::AtomicUsize,
    /// The warning that the per-node bound was reached, logged at most once a second.
    pub(crate) busy_warning: crate::throttle::Throttle,
    /// Sessions being restored now (see [`RestoreSession`](crate::session::RestoreSession)).
    pub(crate) restoring: super::restore::Restoring,
}

/// Counters (for tests and metrics).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) created: AtomicU64,
    pub(crate) closed: AtomicU64,
    /// Sessions restored on this node from a [`RestoreSession`](crate::session::RestoreSession).
    pub(crate) restored: AtomicU64,
}

impl Shared {
    /// A refusal the client should retry (`503`: this node cannot take it now; `429`: the
    /// session has too much running): `Retry-After` and a JSON-RPC error.
    pub(crate) fn retry_later(
        &self,
        kind: crate::protocol::RejectionKind,
        msg: &'static str,
    ) -> crate::protocol::Rejection {
        crate::protocol::Rejection::new(kind, crate::protocol::codes::BAD_REQUEST, msg).with_header(
            http::header::RETRY_AFTER,
            http::HeaderValue::from(self.config.busy_retry_after),
        )
    }

    pub(crate) fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub(crate) fn session_config(&self) -> SessionConfig {
        SessionConfig {
            log: self.config.log,
            max_pending_requests: self.config.max_pending_requests,
            request_timeout: self.config.request_timeout,
            event_sink: self.config.event_sink.clone(),
        }
    }

    /// Removes and closes a session; returns whether this call closed it.
    pub(crate) fn close(
        &self,
        session: &Session,
        reason: CloseReason,
        retry: Option<Duration>,
    ) -> bool {
        self.sessions.remove(session.id().as_str());
        let closed = session.close_with(reason, retry);
        if closed {
            self.counters.closed.fetch_add(1, Ordering::Relaxed);
            crate::metrics::session_closed(reason);
            tracing::debug!(session = %session.id(), reason = %reason, "session closed");
        }
        closed
    }

    /// However `session` closes (also by [`Session::close`] from the application), it leaves
    /// the table at once.
    pub(crate) fn untrack_on_close(self: &Arc<Self>, session: &Session) {
        let table = Arc::downgrade(self);
        session.on_close(move |id, _| {
            if let Some(shared) = table.upgrade() {
                shared.sessions.remove(id.as_str());
            }
        });
    }

    /// Starts the idle/initialization sweeper once (needs a Tokio runtime).
    pub(crate) fn ensure_sweeper(self: &Arc<Self>) {
        if self.sweeper.swap(true, Ordering::AcqRel) {
            return;
        }
        let period = (self
            .config
            .idle_timeout
            .min(self.config.init_timeout)
            .min(self.config.replay_ttl)
            .min(self.config.session_lifetime)
            / 4)
        .clamp(Duration::from_millis(100), Duration::from_secs(30));
        let weak: Weak<Self> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                shared.sweep();
            }
        });
    }

    /// Closes idle sessions, sessions that never finished initialization, and sessions past
    /// their absolute lifetime (even busy ones: a handler or stream that never ends must not
    /// keep a session for ever).
    pub(crate) fn sweep(&self) {
        let now = self.now_ms();
        // A timeout longer than `u64::MAX` ms (half a billion years) never fires either way.
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let idle = ms(self.config.idle_timeout);
        let init = ms(self.config.init_timeout);
        let lifetime = ms(self.config.session_lifetime);
        for s in self.sessions.snapshot() {
            if s.is_closed() {
                self.sessions.remove(s.id().as_str());
            } else if now.saturating_sub(s.created_ms()) >= lifetime {
                self.close(&s, CloseReason::Lifetime, None);
            } else if !s.is_initialized()
                && s.last_activity() <= s.created_ms()
                && now.saturating_sub(s.created_ms()) >= init
                && !s.is_busy()
            {
                // Never initialized and never used since `initialize` (a probe, or a client
                // that went away): a session in use is left to the idle timeout.
                self.close(&s, CloseReason::InitTimeout, None);
            } else if now.saturating_sub(s.last_activity()) >= idle && !s.is_busy() {
                self.close(&s, CloseReason::Idle, None);
            } else {
                s.inner.log.prune(self.config.replay_ttl);
            }
        }
    }
}

impl SseTransportLayer {
    /// A transport with the documented defaults. Its session table is created here: the layer,
    /// its clones and every service they build share it.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::SseTransportLayer;
    ///
    /// let layer = SseTransportLayer::new();
    /// assert_eq!(layer.handle().session_count(), 0);
    /// ```
    pub fn new() -> Self {
        // The defaults are valid (checked by a unit test), so nothing can fail here.
        Self::from_config(Config::default())
    }

    /// A builder for a transport with other limits, timeouts or policies.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::SseTransportLayer;
    ///
    /// let layer = SseTransportLayer::builder().with_max_body_bytes(1 << 20).build().unwrap();
    /// assert_eq!(layer.handle().session_count(), 0);
    /// ```
    pub fn builder() -> SseTransportBuilder {
        SseTransportBuilder::new()
    }

    fn from_config(config: Config) -> Self {
        Self {
            shared: Arc::new(Shared {
                config,
                sessions: SessionTable::new(),
                epoch: Instant::now(),
                draining: AtomicBool::new(false),
                sweeper: AtomicBool::new(false),
                counters: Counters::default(),
                running: std::sync::atomic::AtomicUsize::new(0),
                busy_warning: crate::throttle::Throttle::new(),
                restoring: super::restore::Restoring::default(),
            }),
        }
    }

    /// A handle for graceful shutdown and introspection of this transport's sessions (shared
    /// with the layer and its clones).
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    /// use mcp_affinity::SseTransportLayer;
    ///
    /// let layer = SseTransportLayer::new();
    /// let handle = layer.handle();
    /// layer.layer(handler).oneshot(post(INIT)).await.unwrap();
    /// assert_eq!(handle.session_count(), 1);
    /// # }
    /// ```
    pub fn handle(&self) -> TransportHandle {
        TransportHandle {
            shared: self.shared.clone(),
        }
    }
}

impl SseTransportBuilder {
    /// A builder holding the documented defaults.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::transport::SseTransportBuilder;
    ///
    /// assert!(SseTransportBuilder::new().build().is_ok());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Largest accepted POST body; larger ones get `413` (default 4 MiB).
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    /// use mcp_affinity::SseTransportLayer;
    ///
    /// let svc = SseTransportLayer::builder().with_max_body_bytes(16).build().unwrap().layer(handler);
    /// let res = svc.oneshot(post(INIT)).await.unwrap();
    /// assert_eq!(res.status(), http::StatusCode::PAYLOAD_TOO_LARGE);
    /// # }
    /// ```
    pub fn with_max_body_bytes(mut self, bytes: usize) -> Self {
        self.config.max_body_bytes = bytes;
        self
    }

    /// Most sessions this node holds; `initialize` beyond it gets `503` with `Retry-After`
    /// (default 10,000).
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    /// use mcp_affinity::SseTransportLayer;
    ///
    /// let svc = SseTransportLayer::builder().with_max_sessions(1).build().unwrap().layer(handler);
    /// assert_eq!(svc.clone().oneshot(post(INIT)).await.unwrap().status(), 200);
    /// let res = svc.oneshot(post(INIT)).await.unwrap();
    /// assert_eq!(res.status(), http::StatusCode::SERVICE_UNAVAILABLE);
    /// assert!(res.headers().contains_key("retry-after"));
    /// # }
    /// ```
    pub fn with_max_sessions(mut self, n: usize) -> Self {
        self.config.max_sessions = n;
        self
    }

    /// A session with no request and no open stream for this long is closed (default 30 min).
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::SseTransportLayer;
    ///
    /// assert!(SseTransportLayer::builder().with_idle_timeout(Duration::from_secs(300)).build().is_ok());
    /// let err = SseTransportLayer::builder().with_idle_timeout(Duration::ZERO).build().unwrap_err();
    /// assert_eq!(err.field(), "idle_timeout");
    /// ```
    pub fn with_idle_timeout(mut self, d: Duration) -> Self {
        self.config.idle_timeout = d;
        self
    }

    /// A session whose client never sent `notifications/initialized` is closed after this long
    /// (default 60 s). Health probes that send `initialize` and go away cost nothing for long.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    /// use std::time::Duration;
    /// use mcp_affinity::SseTransportLayer;
    ///
    /// let mut layer = SseTransportLayer::builder().with_init_timeout(Duration::from_millis(1)).build().unwrap();
    /// let handle = layer.handle();
    /// layer.layer(handler).oneshot(post(INIT)).await.unwrap();
    /// tokio::time::advance(Duration::from_millis(5)).await; // no `notifications/initialized` came
    /// handle.sweep();
    /// assert_eq!(handle.session_count(), 0);
    /// # }
    /// ```
    pub fn with_init_timeout(mut self, d: Duration) -> Self {
        self.config.init_timeout = d;
        self
    }

    /// Bounds of each session's event log (default 256 events and 1 MiB). The log holds the
    /// messages of all the session's streams for delivery and `Last-Event-ID` replay; the
    /// oldest are evicted first, so a client that never reads cannot grow memory beyond it.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    /// use mcp_affinity::SseTransportLayer;
    ///
    /// let svc = SseTransportLayer::builder().with_event_log(2, 1 << 20).build().unwrap().layer(handler);
    /// let res = svc.oneshot(post(INIT)).await.unwrap();
    /// let session = res.extensions().get::<mcp_affinity::session::Session>().unwrap();
    /// for _ in 0..5 {
    ///     session.notify("notifications/message", None).unwrap();
    /// }
    /// assert!(session.buffered().0 <= 2);
    /// assert!(session.dropped_events() > 0);
    /// # }
    /// ```
    pub fn with_event_log(mut self, max_events: usize, max_bytes: usize) -> Self {
        self.config.log.max_events = max_events;
        self.config.log.max_bytes = max_bytes;
        self
    }

    /// How long delivered events and the events of finished streams stay replayable with
    /// `Last-Event-ID` (default 60 s). Undelivered events stay until delivered or evicted by
    /// the event-log bounds.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::SseTransportLayer;
    ///
    /// assert!(SseTransportLayer::builder().with_replay_ttl(Duration::from_secs(10)).build().is_ok());
    /// let err = SseTransportLayer::builder().with_replay_ttl(Duration::ZERO).build().unwrap_err();
    /// assert_eq!(err.field(), "replay_ttl");
    /// ```
    pub fn with_replay_ttl(mut self, d: Duration) -> Self {
        self.config.replay_ttl = d;
        self
    }

    /// Most server→client requests awaiting an answer per session (default 32).
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    /// use mcp_affinity::{session::SendError, SseTransportLayer};
    ///
    /// let svc = SseTransportLayer::builder().with_max_pending_requests(1).build().unwrap().layer(handler);
    /// let res = svc.oneshot(post(INIT)).await.unwrap();
    /// let session = res.extensions().get::<mcp_affinity::session::Session>().unwrap();
    /// let _first = session.request("roots/list", None);
    /// assert_eq!(session.request("roots/list", None).await, Err(SendError::TooManyPending));
    /// # }
    /// ```
    pub fn with_max_pending_requests(mut self, n: usize) -> Self {
        self.config.max_pending_requests = n;
        self
    }

    /// How long a server→client request waits for the client's answer (default 60 s).
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    /// use std::time::Duration;
    /// use mcp_affinity::{session::SendError, SseTransportLayer};
    ///
    /// let layer = SseTransportLayer::builder().with_request_timeout(Duration::from_secs(5)).build().unwrap();
    /// let res = layer.layer(handler).oneshot(post(INIT)).await.unwrap();
    /// let session = res.extensions().get::<mcp_affinity::session::Session>().unwrap();
    /// // The client never answers: the request times out (Tokio's clock is paused here).
    /// assert_eq!(session.request("roots/list", None).await, Err(SendError::Timeout));
    /// # }
    /// ```
    pub fn with_request_timeout(mut self, d: Duration) -> Self {
        self.config.request_timeout = d;
        self
    }

    /// Interval of keep-alive comments on open SSE streams (default 15 s); `None` disables them.
    ///
    /// # Example
    ///
    /// ```
    /// use std::time::Duration;
    /// use mcp_affinity::SseTransportLayer;
    ///
    /// assert!(SseTransportLayer::builder().with_keep_alive(None).build().is_ok());
    /// let err = SseTransportLayer::builder().with_keep_alive(Some(Duration::ZERO)).build().unwrap_err();
    /// assert_eq!(err.field(), "keep_alive");
    /// ```
    pub fn with_keep_alive(mut self, d: Option<Duration>) -> Self {
        self.config.keep_alive = d;
        self
    }

    /// The `retry:` hint sent with priming events and when the server ends a stream
    /// (default 3 s).
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    /// use std::time::Duration;
    /// use http_body_util::BodyExt;
    ///
    /// let svc = mcp_affinity::SseTransportLayer::builder().with_retry(Duration::from_millis(500)).build().unwrap().layer(handler);
    /// let id = svc.clone().oneshot(post(INIT)).await.unwrap().headers()["mcp-session-id"].clone();
    /// let get = http::Request::get("/mcp").header("host", "localhost").header("accept", "text/event-stream")
    ///     .header("mcp-session-id", id).header("mcp-protocol-version", "2025-11-25")
    ///     .body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
    /// let mut body = svc.oneshot(get).await.unwrap().into_body();
    /// let priming = body.frame().await.unwrap().unwrap().into_data().unwrap();
    /// assert!(std::str::from_utf8(&priming).unwrap().contains("retry: 500\n"));
    /// # }
    /// ```
    pub fn with_retry(mut self, d: Duration) -> Self {
        self.config.retry = d;
        self
    }

    /// Accepted `Host` headers (default [`HostPolicy::localhost`]). Deployments reachable under
    /// other names must list them.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    /// use mcp_affinity::{transport::HostPolicy, SseTransportLayer};
    ///
    /// let svc = SseTransportLayer::new().layer(handler);
    /// let mut req = post(INIT);
    /// req.headers_mut().insert("host", "mcp.example.com".parse().unwrap());
    /// assert_eq!(svc.oneshot(req).await.unwrap().status(), http::StatusCode::MISDIRECTED_REQUEST);
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// let svc = SseTransportLayer::builder().with_allowed_hosts(HostPolicy::list(["mcp.example.com"])).build().unwrap().layer(handler);
    /// let mut req = post(INIT);
    /// req.headers_mut().insert("host", "mcp.example.com".parse().unwrap());
    /// assert_eq!(svc.oneshot(req).await.unwrap().status(), http::StatusCode::OK);
    /// # }
    /// ```
    pub fn with_allowed_hosts(mut self, hosts: HostPolicy) -> Self {
        self.config.hosts = hosts;
        self
    }

    /// Accepted `Origin` headers (default [`OriginPolicy::same_origin`]).
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    /// use mcp_affinity::{transport::OriginPolicy, SseTransportLayer};
    ///
    /// let origins = OriginPolicy::same_origin().allow("https://app.example.com");
    /// let svc = SseTransportLayer::builder().with_allowed_origins(origins).build().unwrap().layer(handler);
    /// let mut req = post(INIT);
    /// req.headers_mut().insert("origin", "https://app.example.com".parse().unwrap());
    /// assert_eq!(svc.clone().oneshot(req).await.unwrap().status(), http::StatusCode::OK);
    /// let mut req = post(INIT);
    /// req.headers_mut().insert("origin", "https://evil.example.com".parse().unwrap());
    /// assert_eq!(svc.oneshot(req).await.unwrap().status(), http::StatusCode::FORBIDDEN);
    /// # }
    /// ```
    pub fn with_allowed_origins(mut self, origins: OriginPolicy) -> Self {
        self.config.origins = origins;
        self
    }

    /// The session id generator (default [`RandomIdGenerator`](crate::session::RandomIdGenerator)).
    /// The affinity layer provides one that embeds the node tag.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    /// use mcp_affinity::{session::{NodeTag, TaggedIdGenerator}, SseTransportLayer};
    ///
    /// let ids = TaggedIdGenerator::new(NodeTag::new("n1").unwrap());
    /// let svc = SseTransportLayer::builder().with_id_generator(ids).build().unwrap().layer(handler);
    /// let res = svc.oneshot(post(INIT)).await.unwrap();
    /// assert!(res.headers()["mcp-session-id"].to_str().unwrap().starts_with("n1."));
    /// # }
    /// ```
    pub fn with_id_generator(mut self, ids: impl SessionIdGenerator) -> Self {
        self.config.ids = Arc::new(ids);
        self
    }

    /// Binds each session to the principal that created it: a request from another principal
    /// gets the same `404` as an unknown session. The session keeps the principal's digest
    /// ([`principal_digest`](crate::session::principal_digest)), never the principal, and
    /// each request of a bound session costs one SHA-256 of its principal. A restored session
    /// keeps its binding: a restore is refused (the same `404`) unless the request's principal
    /// has the digest the [`RestoreSession`](crate::session::RestoreSession) names.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    /// let user = |p: &http::request::Parts| p.headers.get("x-user")?.to_str().ok().map(str::to_owned);
    /// let svc = mcp_affinity::SseTransportLayer::builder().with_principal(user).build().unwrap().layer(handler);
    /// let mut req = post(INIT);
    /// req.headers_mut().insert("x-user", "ada".parse().unwrap());
    /// let id = svc.clone().oneshot(req).await.unwrap().headers()["mcp-session-id"].clone();
    /// let mut req = post(r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#);
    /// req.headers_mut().insert("x-user", "bob".parse().unwrap());
    /// req.headers_mut().insert("mcp-session-id", id); // not bob's session: unknown
    /// assert_eq!(svc.oneshot(req).await.unwrap().status(), http::StatusCode::NOT_FOUND);
    /// # }
    /// ```
    pub fn with_principal(mut self, extractor: impl PrincipalExtractor) -> Self {
        self.config.principal = Some(Arc::new(extractor));
        self
    }

    /// Runs `hook` once for every session restored on this node, before anything else can use
    /// it: the application rebuilds the per-session state it keeps with
    /// [`Session::insert`](crate::session::Session::insert) (a restored session starts with
    /// none).
    ///
    /// A session is restored when a request names a session this node does not hold and
    /// carries a [`RestoreSession`](crate::session::RestoreSession) for exactly that id: the
    /// session registry puts one there when it has taken the session over from a node that is
    /// gone, draining, or a previous process of this one. The transport checks the principal
    /// binding first (another principal gets the same `404` as an unknown session, and nothing
    /// is restored), then creates the session complete (protocol version, client info and
    /// capabilities, initialized), runs the hook, and only then makes the session visible: a
    /// concurrent request for the same id waits for it, so exactly one session is created and
    /// no request meets it half-restored. A node that drains or is shut down restores nothing
    /// (`503` with `Retry-After`: the client retries, and lands on another node); a node at
    /// its [`with_max_sessions`](Self::with_max_sessions) answers `503` too.
    ///
    /// The handler's request of the `POST` that restored the session carries the
    /// [`SessionRestored`](crate::session::SessionRestored) marker in its extensions (that
    /// request only; rmcp's restore marker is the analogue), and that request's response
    /// carries the [`Session`](crate::session::Session) in its extensions, whatever its status,
    /// as a successful `initialize`'s does. A `GET` that restores its session opens the
    /// standalone stream (a `Last-Event-ID` the new session never issued opens it afresh); a
    /// `DELETE` restores and closes it. A hook that panics restores nothing: the request is
    /// answered `500` and the session discarded.
    ///
    /// The hook runs on the request's task, before the session is visible: keep it short and
    /// non-blocking (it may [`spawn`](crate::session::Session::spawn) work), and do not wait
    /// in it for a request on the same session.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use http_body_util::BodyExt;
    /// use mcp_affinity::{
    ///     SseTransportLayer,
    ///     handler::handler_fn,
    ///     protocol::ProtocolVersion,
    ///     session::{RestoreSession, Session, SessionId, SessionRestored},
    /// };
    /// use tower::{Layer, ServiceExt};
    ///
    /// /// Per-session application state, rebuilt when a session is restored.
    /// #[derive(Clone)]
    /// struct Greeting(String);
    ///
    /// let layer = SseTransportLayer::builder()
    ///     .with_on_restore(|session: &Session| {
    ///         let name = session.client_info().and_then(|i| i["name"].as_str()).unwrap_or("?");
    ///         session.insert(Greeting(format!("welcome back, {name}")));
    ///     })
    ///     .build()
    ///     .unwrap();
    /// let handle = layer.handle();
    /// let svc = layer.layer(handler_fn(|req, _cx| async move {
    ///     let restored = req.parts.extensions.get::<SessionRestored>().is_some();
    ///     let greeting = req.session().and_then(|s| s.get::<Greeting>()).map(|g| g.0);
    ///     Ok(serde_json::json!({"restored": restored, "greeting": greeting}))
    /// }));
    ///
    /// // What the session registry does when it takes over a session another node created:
    /// let id = SessionId::parse("n1.abc").unwrap();
    /// let restore = RestoreSession::new(id.clone(), ProtocolVersion::V2025_11_25)
    ///     .with_client(Some(serde_json::json!({"name": "ada", "version": "1"})), Some(serde_json::json!({})));
    /// let mut req = http::Request::post("/mcp")
    ///     .header("host", "localhost")
    ///     .header("accept", "application/json, text/event-stream")
    ///     .header("content-type", "application/json")
    ///     .header("mcp-session-id", id.as_str())
    ///     .body(http_body_util::Full::new(bytes::Bytes::from(r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#)))
    ///     .unwrap();
    /// req.extensions_mut().insert(restore);
    /// let res = svc.oneshot(req).await.unwrap();
    /// assert_eq!(res.status(), 200);
    /// assert!(res.extensions().get::<Session>().is_some());
    /// let body = res.into_body().collect().await.unwrap().to_bytes();
    /// let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    /// assert_eq!(body["result"]["restored"], true);
    /// assert_eq!(body["result"]["greeting"], "welcome back, ada");
    /// assert_eq!(handle.session_count(), 1);
    /// assert_eq!(handle.sessions_restored(), 1);
    /// # }
    /// ```
    pub fn with_on_restore<F>(mut self, hook: F) -> Self
    where
        F: Fn(&Session) + Send + Sync + 'static,
    {
        self.config.on_restore = Some(Arc::new(hook));
        self
    }

    /// Reports every event of every legacy session's streams (the standalone `GET` stream 0
    /// and the SSE answers of `POST`s) to `sink`, in order, with its stream, sequence number
    /// (its SSE id is `<stream>-<seq>`) and ordinal, so that a node adopting the session can
    /// replay what its client asks for with `Last-Event-ID`
    /// ([`RestoreSession::with_events`](crate::session::RestoreSession::with_events),
    /// [`with_request_events`](crate::session::RestoreSession::with_request_events)). The
    /// session registry's sink ([`RegistryHandle::event_sink`](crate::registry::RegistryHandle::event_sink))
    /// writes them to its store in batches; [`McpStack`](crate::McpStack) sets it when
    /// continuity is on. Answers sent as plain JSON are not events and are not reported.
    /// Unset (the default), this costs nothing.
    ///
    /// A sink whose [`durability`](crate::session::EventSink::durability) is
    /// [`WriteThrough`](crate::session::Durability::WriteThrough) makes the standalone
    /// stream's SSE body hold each event back until the sink has stored it (see
    /// [`Durability`](crate::session::Durability)): appending never waits, the stream does.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{SseTransportLayer, session::{EventSink, LoggedEvent, SessionId}};
    ///
    /// #[derive(Debug)]
    /// struct Count(std::sync::atomic::AtomicU32);
    /// impl EventSink for Count {
    ///     fn record(&self, _: &SessionId, _: LoggedEvent<'_>) {
    ///         self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    ///     }
    /// }
    ///
    /// let layer = SseTransportLayer::builder()
    ///     .with_event_sink(Count(Default::default()))
    ///     .build();
    /// assert!(layer.is_ok());
    /// ```
    pub fn with_event_sink(mut self, sink: impl crate::session::EventSink) -> Self {
        self.config.event_sink = Some(Arc::new(sink));
        self
    }

    /// Most request handlers running at once on this node, in every session and both eras
    /// (default 4,096). A request beyond it is answered at once with `503`, `Retry-After`
    /// and a JSON-RPC error, without calling the handler: it is not queued.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::SseTransportLayer;
    ///
    /// assert!(SseTransportLayer::builder().with_max_running_handlers(256).build().is_ok());
    /// let err = SseTransportLayer::builder().with_max_running_handlers(0).build().unwrap_err();
    /// assert_eq!(err.field(), "max_running_handlers");
    /// ```
    pub fn with_max_running_handlers(mut self, n: usize) -> Self {
        self.config.max_running = n;
        self
    }

    /// Most request handlers running at once in one legacy session (default 64). A request
    /// beyond it is answered at once with `429`, `Retry-After` and a JSON-RPC error, without
    /// calling the handler; a `2025-03-26` batch takes its places up front, all or nothing,
    /// and one with more requests than the bound is refused with `400`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::SseTransportLayer;
    ///
    /// assert!(SseTransportLayer::builder().with_max_running_handlers_per_session(8).build().is_ok());
    /// let err = SseTransportLayer::builder().with_max_running_handlers_per_session(0).build().unwrap_err();
    /// assert_eq!(err.field(), "max_running_handlers_per_session");
    /// ```
    pub fn with_max_running_handlers_per_session(mut self, n: usize) -> Self {
        self.config.max_running_per_session = n;
        self
    }

    /// How long a request handler may run (default 10 min). A handler still running then is
    /// dropped, and the client gets a JSON-RPC error (`-32603`) as the request's answer, on
    /// its JSON response or its SSE stream. Applies to requests of both eras; `initialize`
    /// and notifications run inside their `POST`.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str, sid: Option<&http::HeaderValue>| { let mut b = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json"); if let Some(sid) = sid { b = b.header("mcp-session-id", sid); } b.body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap() };
    /// use std::time::Duration;
    /// use http_body_util::BodyExt;
    /// use mcp_affinity::{handler::handler_fn, SseTransportLayer};
    ///
    /// let handler = handler_fn(|req, _cx| async move {
    ///     if req.method == "initialize" {
    ///         return Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}}));
    ///     }
    ///     std::future::pending().await // never answers
    /// });
    /// let layer = SseTransportLayer::builder().with_handler_timeout(Duration::from_secs(30)).build().unwrap();
    /// let svc = layer.layer(handler);
    /// let res = svc.clone().oneshot(post(INIT, None)).await.unwrap();
    /// let id = res.headers()["mcp-session-id"].clone();
    /// let res = svc.oneshot(post(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#, Some(&id))).await.unwrap();
    /// let body = res.into_body().collect().await.unwrap().to_bytes();
    /// assert!(std::str::from_utf8(&body).unwrap().contains("-32603"));
    /// assert!(SseTransportLayer::builder().with_handler_timeout(Duration::ZERO).build().is_err());
    /// # }
    /// ```
    pub fn with_handler_timeout(mut self, d: Duration) -> Self {
        self.config.handler_timeout = d;
        self
    }

    /// The absolute lifetime of a session (default 24 h): a session this old is closed even
    /// while a request or a stream is open (its handlers are aborted, its streams end, the
    /// registry removes its record), and its client gets `404` and initializes a new one.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    /// use std::time::Duration;
    /// use mcp_affinity::{session::{CloseReason, Session}, SseTransportLayer};
    ///
    /// let layer = SseTransportLayer::builder().with_session_lifetime(Duration::from_secs(3600)).build().unwrap();
    /// let handle = layer.handle();
    /// let res = layer.layer(handler).oneshot(post(INIT)).await.unwrap();
    /// let session = res.extensions().get::<Session>().unwrap().clone();
    /// tokio::time::advance(Duration::from_secs(3600)).await;
    /// handle.sweep();
    /// assert_eq!(session.close_reason(), Some(CloseReason::Lifetime));
    /// assert!(SseTransportLayer::builder().with_session_lifetime(Duration::ZERO).build().is_err());
    /// # }
    /// ```
    pub fn with_session_lifetime(mut self, d: Duration) -> Self {
        self.config.session_lifetime = d;
        self
    }

    /// Validates the configuration and creates the transport's shared state (its session
    /// table): the returned layer, its clones and every service they build share it. An
    /// invalid setting is an error naming it, never a silent default.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::SseTransportLayer;
    ///
    /// let layer = SseTransportLayer::builder().with_max_body_bytes(1 << 20).build().unwrap();
    /// let clone = layer.clone();
    /// assert_eq!(clone.handle().session_count(), 0);
    /// assert_eq!(SseTransportLayer::builder().with_max_body_bytes(0).build().unwrap_err().field(), "max_body_bytes");
    /// ```
    pub fn build(self) -> Result<SseTransportLayer, ConfigError> {
        self.config.validate()?;
        Ok(SseTransportLayer::from_config(self.config))
    }
}

impl<S> Layer<S> for SseTransportLayer {
    type Service = SseTransport<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SseTransport::from_shared(inner, self.shared.clone())
    }
}

/// Controls a built transport: graceful shutdown and session counts.
///
/// # Example
///
/// ```
/// use mcp_affinity::SseTransportLayer;
///
/// # async fn run() {
/// let mut layer = SseTransportLayer::new();
/// let handle = layer.handle();
/// // ... serve with `layer` ...
/// let closed = handle.shutdown().await;
/// assert_eq!(closed, 0);
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct TransportHandle {
    shared: Arc<Shared>,
}

impl TransportHandle {
    /// Sessions currently held by this node.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    /// let mut layer = mcp_affinity::SseTransportLayer::new();
    /// let handle = layer.handle();
    /// assert_eq!(handle.session_count(), 0);
    /// layer.layer(handler).oneshot(post(INIT)).await.unwrap();
    /// assert_eq!(handle.session_count(), 1);
    /// # }
    /// ```
    pub fn session_count(&self) -> usize {
        self.shared.sessions.len()
    }

    /// Looks a session up by id (for tools and tests; requests get theirs in extensions).
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    /// let mut layer = mcp_affinity::SseTransportLayer::new();
    /// let handle = layer.handle();
    /// let res = layer.layer(handler).oneshot(post(INIT)).await.unwrap();
    /// let id = res.headers()["mcp-session-id"].to_str().unwrap();
    /// assert_eq!(handle.session(id).unwrap().id().as_str(), id);
    /// assert!(handle.session("unknown").is_none());
    /// # }
    /// ```
    pub fn session(&self, id: &str) -> Option<crate::session::Session> {
        self.shared.sessions.get(id)
    }

    /// Sends one notification to every session's standalone stream (held for sessions without
    /// an open stream, like [`Session::notify`](crate::session::Session::notify)), e.g.
    /// `notifications/tools/list_changed`. The message is encoded once. Returns how many
    /// sessions took it.
    ///
    /// # Example
    ///
    /// ```
    /// # let handle = mcp_affinity::SseTransportLayer::new().handle();
    /// let sent = handle.notify_all("notifications/tools/list_changed", None);
    /// assert_eq!(sent, 0);
    /// ```
    pub fn notify_all(&self, method: &str, params: Option<serde_json::Value>) -> usize {
        self.notify_where(|_| true, method, params)
    }

    /// Like [`notify_all`](Self::notify_all), to the sessions `filter` accepts only. This
    /// node's sessions only: [`ClusterBus::notify_where`](crate::bus::ClusterBus::notify_where)
    /// reaches every node's.
    ///
    /// # Example
    ///
    /// ```
    /// # let handle = mcp_affinity::SseTransportLayer::new().handle();
    /// let sent = handle.notify_where(
    ///     |s| s.is_subscribed("file:///a"),
    ///     "notifications/resources/updated",
    ///     Some(serde_json::json!({"uri": "file:///a"})),
    /// );
    /// assert_eq!(sent, 0);
    /// ```
    pub fn notify_where(
        &self,
        filter: impl Fn(&crate::session::Session) -> bool,
        method: &str,
        params: Option<serde_json::Value>,
    ) -> usize {
        let data = crate::session::encode_message(method, None, params.as_ref());
        self.notify_encoded_where(&data, filter)
    }

    /// Appends an encoded message to the standalone stream of every session `filter` accepts.
    pub(crate) fn notify_encoded_where(
        &self,
        data: &bytes::Bytes,
        filter: impl Fn(&crate::session::Session) -> bool,
    ) -> usize {
        self.shared
            .sessions
            .snapshot()
            .iter()
            .filter(|s| filter(s) && s.notify_encoded(data.clone()).is_ok())
            .count()
    }

    /// Sessions restored on this node so far (see
    /// [`with_on_restore`](SseTransportBuilder::with_on_restore)).
    ///
    /// # Example
    ///
    /// ```
    /// let handle = mcp_affinity::SseTransportLayer::new().handle();
    /// assert_eq!(handle.sessions_restored(), 0);
    /// ```
    pub fn sessions_restored(&self) -> u64 {
        self.shared.counters.restored.load(Ordering::Relaxed)
    }

    /// Request handlers running now on this node, in every session and both eras: what
    /// [`with_max_running_handlers`](SseTransportBuilder::with_max_running_handlers) bounds.
    /// A node that [drains](Self::drain) waits for it to reach 0 (with a deadline) before it
    /// [shuts down](Self::shutdown). `initialize` and notifications, which run inside their
    /// `POST`, and `subscriptions/listen` streams, which last as long as their client keeps
    /// them open, are not counted.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str, sid: Option<&http::HeaderValue>| { let mut b = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json"); if let Some(sid) = sid { b = b.header("mcp-session-id", sid); } b.body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap() };
    /// use std::time::Duration;
    /// use mcp_affinity::{handler::handler_fn, SseTransportLayer};
    ///
    /// let (release, wait) = tokio::sync::watch::channel(false);
    /// let handler = handler_fn(move |req, _cx| {
    ///     let mut wait = wait.clone();
    ///     async move {
    ///         if req.method == "tools/call" {
    ///             let _ = wait.wait_for(|go| *go).await;
    ///         }
    ///         Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}}))
    ///     }
    /// });
    /// let layer = SseTransportLayer::new();
    /// let handle = layer.handle();
    /// let svc = layer.layer(handler);
    /// let id = svc.clone().oneshot(post(INIT, None)).await.unwrap().headers()["mcp-session-id"].clone();
    /// let call = tokio::spawn(svc.oneshot(post(r#"{"jsonrpc":"2.0","id":2,"method":"tools/call"}"#, Some(&id))));
    /// while handle.running_handlers() == 0 {
    ///     tokio::task::yield_now().await;
    /// }
    /// release.send(true).unwrap();
    /// assert_eq!(call.await.unwrap().unwrap().status(), 200);
    /// assert_eq!(handle.running_handlers(), 0);
    /// # }
    /// ```
    pub fn running_handlers(&self) -> usize {
        self.shared.running.load(Ordering::Acquire)
    }

    /// The first step of a graceful shutdown that loses no session: stops minting and
    /// restoring sessions (`initialize` and restores get `503` with `Retry-After`, like
    /// [`shutdown`](Self::shutdown)), and ends every standalone `GET` stream open now with
    /// the `retry:` hint (after the events it has not yet sent), so its client reconnects
    /// with `Last-Event-ID`, possibly to another node. Sessions stay open and their requests
    /// are served: running handlers finish (see [`running_handlers`](Self::running_handlers)),
    /// and new requests on existing sessions are answered. A standalone stream opened after
    /// the drain began (its client reconnected here before the balancer saw the node go)
    /// delivers what it has and ends with the same hint, so that its client goes on at
    /// another node instead of reading from this one while another node adopts the session.
    /// Returns the number of streams ended; once draining (or shut down), a call ends nothing
    /// and returns 0.
    ///
    /// Draining sets [`is_shutting_down`](Self::is_shutting_down): there is one flag, "no
    /// new sessions here".
    ///
    /// A node drains in this order: tell the cluster it is draining (the session registry's
    /// node state, a failing health check), `drain()`, wait for
    /// [`running_handlers`](Self::running_handlers) to reach 0 (bounded), then
    /// [`shutdown`](Self::shutdown).
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str, sid: Option<&http::HeaderValue>| { let mut b = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json"); if let Some(sid) = sid { b = b.header("mcp-session-id", sid); } b.body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap() };
    /// use http_body_util::BodyExt;
    ///
    /// let layer = mcp_affinity::SseTransportLayer::new();
    /// let handle = layer.handle();
    /// let svc = layer.layer(handler);
    /// let id = svc.clone().oneshot(post(INIT, None)).await.unwrap().headers()["mcp-session-id"].clone();
    /// let get = http::Request::get("/mcp").header("host", "localhost").header("accept", "text/event-stream")
    ///     .header("mcp-session-id", &id).body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
    /// let stream = svc.clone().oneshot(get).await.unwrap().into_body();
    ///
    /// assert_eq!(handle.drain(), 1);
    /// // The stream ends with a reconnect hint; the session stays and is served.
    /// let text = stream.collect().await.unwrap().to_bytes();
    /// assert!(std::str::from_utf8(&text).unwrap().ends_with("retry: 3000\n\n"));
    /// assert_eq!(handle.session_count(), 1);
    /// let ping = svc.clone().oneshot(post(r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#, Some(&id))).await.unwrap();
    /// assert_eq!(ping.status(), 200);
    /// // No new sessions here.
    /// assert_eq!(svc.oneshot(post(INIT, None)).await.unwrap().status(), http::StatusCode::SERVICE_UNAVAILABLE);
    /// # }
    /// ```
    pub fn drain(&self) -> usize {
        if self.shared.draining.swap(true, Ordering::AcqRel) {
            return 0;
        }
        let retry = self.shared.config.retry;
        let ended = self
            .shared
            .sessions
            .snapshot()
            .iter()
            .filter(|s| s.inner.log.end_reader(STANDALONE, retry))
            .count();
        tracing::info!(ended, "transport draining");
        ended
    }

    /// Graceful shutdown: refuses new `initialize` requests (`503`), ends every stream with a
    /// `retry:` hint, and closes every session (their close hooks run, so the registry removes
    /// its records). Returns the number of sessions closed. Idempotent. To hand sessions over
    /// to other nodes rather than close them for their clients, [`drain`](Self::drain) first.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    /// let mut layer = mcp_affinity::SseTransportLayer::new();
    /// let handle = layer.handle();
    /// let svc = layer.layer(handler);
    /// svc.clone().oneshot(post(INIT)).await.unwrap();
    /// assert_eq!(handle.shutdown().await, 1);
    /// assert_eq!(handle.session_count(), 0);
    /// // New sessions are refused while draining.
    /// assert_eq!(svc.oneshot(post(INIT)).await.unwrap().status(), http::StatusCode::SERVICE_UNAVAILABLE);
    /// # }
    /// ```
    pub async fn shutdown(&self) -> usize {
        self.shared.draining.store(true, Ordering::Release);
        let retry = Some(self.shared.config.retry);
        let mut closed = 0;
        for s in self.shared.sessions.snapshot() {
            if self.shared.close(&s, CloseReason::Shutdown, retry) {
                closed += 1;
            }
        }
        tracing::info!(closed, "transport shut down");
        tokio::task::yield_now().await;
        closed
    }

    /// Whether shutdown (or a [`drain`](Self::drain)) has begun: this node mints and restores
    /// no sessions.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let handle = mcp_affinity::SseTransportLayer::new().handle();
    /// assert!(!handle.is_shutting_down());
    /// handle.shutdown().await;
    /// assert!(handle.is_shutting_down());
    /// # }
    /// ```
    pub fn is_shutting_down(&self) -> bool {
        self.shared.draining.load(Ordering::Acquire)
    }

    /// Runs one idle/initialization sweep now (the transport also sweeps periodically).
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    /// use std::time::Duration;
    ///
    /// let mut layer = mcp_affinity::SseTransportLayer::builder().with_init_timeout(Duration::from_millis(1)).build().unwrap();
    /// let handle = layer.handle();
    /// layer.layer(handler).oneshot(post(INIT)).await.unwrap();
    /// tokio::time::advance(Duration::from_millis(5)).await;
    /// handle.sweep(); // closes the session that never sent `notifications/initialized`
    /// assert_eq!(handle.session_count(), 0);
    /// # }
    /// ```
    pub fn sweep(&self) {
        self.shared.sweep();
    }
}
