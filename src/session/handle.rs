//! The `Session` handle: what it holds, who it is, its tasks, and what the transport tracks.

use std::{
    collections::HashMap,
    fmt,
    future::Future,
    sync::{
        Arc, Mutex, MutexGuard, OnceLock,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use serde_json::Value;
use tokio::{
    sync::{oneshot, watch},
    task::{AbortHandle, JoinSet},
};

use super::{CloseReason, SessionId};
use crate::{
    protocol::{ProtocolVersion, RequestId},
    transport::log::{EventLog, LogLimits},
};

/// Per-session limits, copied from the transport configuration.
#[derive(Debug, Clone)]
pub(crate) struct SessionConfig {
    pub(crate) log: LogLimits,
    pub(crate) max_pending_requests: usize,
    pub(crate) request_timeout: Duration,
    /// Where the standalone stream's events are reported, if anywhere.
    pub(crate) event_sink: Option<Arc<dyn super::EventSink>>,
}

pub(super) type Pending = oneshot::Sender<Result<Value, Value>>;
type CloseHook = Box<dyn FnOnce(&SessionId, CloseReason) + Send>;

pub(super) struct Mutable {
    pub(super) initialized: bool,
    pub(super) closed: Option<CloseReason>,
    pub(super) state: http::Extensions,
    pub(super) pending: HashMap<RequestId, Pending>,
    pub(super) inflight: HashMap<RequestId, (AbortHandle, Option<u32>)>,
    pub(super) tasks: Option<JoinSet<()>>,
    pub(super) hooks: Vec<CloseHook>,
}

pub(crate) struct Inner {
    pub(crate) id: SessionId,
    pub(crate) log: EventLog,
    /// The digest of the principal the session is bound to ([`super::principal_digest`]),
    /// never the principal itself.
    pub(super) principal: Option<Box<str>>,
    pub(super) version: OnceLock<ProtocolVersion>,
    pub(super) client_info: OnceLock<Value>,
    pub(super) client_capabilities: OnceLock<Value>,
    pub(super) mutable: Mutex<Mutable>,
    pub(super) last_activity: AtomicU64,
    pub(super) created: u64,
    pub(super) next_request: AtomicI64,
    pub(super) closed_tx: watch::Sender<Option<CloseReason>>,
    pub(super) config: SessionConfig,
    /// Request handlers of this session running now (the transport's per-session bound).
    pub(crate) running: std::sync::atomic::AtomicUsize,
}

/// A handle to one legacy-era session, shared by every request of that session.
///
/// The transport puts it into the request extensions of every legacy request that belongs to
/// a session (and of the `initialize` request that creates it), and into the extensions of the
/// successful `initialize` response so outer layers can attach [`on_close`](Session::on_close)
/// hooks. Cloning is cheap.
///
/// # Example
///
/// ```
/// use mcp_affinity::session::Session;
///
/// async fn handler(req: http::Request<()>) {
///     if let Some(session) = req.extensions().get::<Session>() {
///         session.insert(42u32);
///         assert_eq!(session.get::<u32>(), Some(42));
///         // Server-initiated notification on the standalone GET stream:
///         let _ = session.notify("notifications/tools/list_changed", None);
///     }
/// }
/// ```
#[derive(Clone)]
pub struct Session {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.inner.id)
            .field("protocol_version", &self.inner.version.get())
            .finish_non_exhaustive()
    }
}

pub(super) fn lock(m: &Mutex<Mutable>) -> MutexGuard<'_, Mutable> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Session {
    /// A new session; `principal` is the digest of the principal it is bound to
    /// ([`super::principal_digest`]).
    pub(crate) fn new(
        id: SessionId,
        principal: Option<Box<str>>,
        config: SessionConfig,
        now_ms: u64,
    ) -> Self {
        let sink = config.event_sink.clone().map(|sink| (id.clone(), sink));
        let log = EventLog::new(config.log, true).with_sink(sink);
        Self::with_log(id, principal, config, now_ms, log)
    }

    /// A session restored on this node from what another node (or a previous process of this
    /// one) knew of it, complete before anything else can see it: negotiated, initialized.
    /// `standalone_after` is the last event id of the standalone stream the client reports
    /// (`Last-Event-ID`), so the new log's standalone stream numbers its events after it.
    pub(crate) fn restored(
        restore: &super::RestoreSession,
        config: SessionConfig,
        now_ms: u64,
        standalone_after: Option<u32>,
    ) -> Self {
        let (top, stored, ordinal, requests) = match &restore.events {
            Some(events) => (
                events.top,
                events.events.clone(),
                events.ordinal,
                events.requests.clone(),
            ),
            None => (0, Vec::new(), 0, Vec::new()),
        };
        let sink = config
            .event_sink
            .clone()
            .map(|sink| (restore.id.clone(), sink));
        let log = EventLog::restored(config.log, standalone_after, top, stored)
            .with_requests(ordinal, requests)
            .with_sink(sink);
        let principal = restore.principal.as_deref().map(Box::from);
        let session = Self::with_log(restore.id.clone(), principal, config, now_ms, log);
        session.set_initialized(
            restore.protocol_version,
            restore.client_info.clone(),
            restore.client_capabilities.clone(),
        );
        session.mark_initialized();
        session
    }

    fn with_log(
        id: SessionId,
        principal: Option<Box<str>>,
        config: SessionConfig,
        now_ms: u64,
        log: EventLog,
    ) -> Self {
        let (closed_tx, _) = watch::channel(None);
        Self {
            inner: Arc::new(Inner {
                id,
                log,
                principal,
                version: OnceLock::new(),
                client_info: OnceLock::new(),
                client_capabilities: OnceLock::new(),
                mutable: Mutex::new(Mutable {
                    initialized: false,
                    closed: None,
                    state: http::Extensions::new(),
                    pending: HashMap::new(),
                    inflight: HashMap::new(),
                    tasks: None,
                    hooks: Vec::new(),
                }),
                last_activity: AtomicU64::new(now_ms),
                created: now_ms,
                next_request: AtomicI64::new(1),
                closed_tx,
                config,
                running: std::sync::atomic::AtomicUsize::new(0),
            }),
        }
    }

    /// The digest of the principal the session is bound to ([`super::principal_digest`]), if
    /// it is bound to one: what the registry's record carries.
    pub(crate) fn principal_digest(&self) -> Option<&str> {
        self.inner.principal.as_deref()
    }

    /// Whether a request whose principal is `principal` may use this session: the digests
    /// agree, or neither has one. One SHA-256, no allocation.
    pub(crate) fn principal_matches(&self, principal: Option<&str>) -> bool {
        match (principal, self.inner.principal.as_deref()) {
            (None, None) => true,
            (Some(p), Some(bound)) => super::digest_hex(p)[..] == *bound.as_bytes(),
            _ => false,
        }
    }

    /// The session id.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let init = serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}});
    /// # let handler = mcp_affinity::handler::handler_fn(move |_req, _cx| { let init = init.clone(); async move { Ok(init) } });
    /// # let svc = mcp_affinity::SseTransportLayer::new().layer(handler);
    /// # let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"sampling":{}},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let req = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
    /// # let res = svc.oneshot(req).await.unwrap();
    /// # let session = res.extensions().get::<mcp_affinity::session::Session>().unwrap().clone();
    /// assert!(mcp_affinity::session::SessionId::is_valid(session.id().as_str()));
    /// assert_eq!(res.headers()["mcp-session-id"], session.id().as_str());
    /// # }
    /// ```
    pub fn id(&self) -> &SessionId {
        &self.inner.id
    }

    /// The protocol revision negotiated by `initialize` (known once it succeeded).
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let init = serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}});
    /// # let handler = mcp_affinity::handler::handler_fn(move |_req, _cx| { let init = init.clone(); async move { Ok(init) } });
    /// # let svc = mcp_affinity::SseTransportLayer::new().layer(handler);
    /// # let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"sampling":{}},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let req = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
    /// # let res = svc.oneshot(req).await.unwrap();
    /// # let session = res.extensions().get::<mcp_affinity::session::Session>().unwrap().clone();
    /// use mcp_affinity::protocol::ProtocolVersion;
    /// // Known once `initialize` succeeded.
    /// assert_eq!(session.protocol_version(), Some(ProtocolVersion::V2025_11_25));
    /// # }
    /// ```
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.inner.version.get().copied()
    }

    /// The `clientInfo` the client sent in `initialize`.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let init = serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}});
    /// # let handler = mcp_affinity::handler::handler_fn(move |_req, _cx| { let init = init.clone(); async move { Ok(init) } });
    /// # let svc = mcp_affinity::SseTransportLayer::new().layer(handler);
    /// # let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"sampling":{}},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let req = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
    /// # let res = svc.oneshot(req).await.unwrap();
    /// # let session = res.extensions().get::<mcp_affinity::session::Session>().unwrap().clone();
    /// let info = session.client_info().unwrap();
    /// assert_eq!(info["name"], "c");
    /// # }
    /// ```
    pub fn client_info(&self) -> Option<&Value> {
        self.inner.client_info.get()
    }

    /// The `capabilities` the client declared in `initialize` (e.g. whether it supports
    /// `sampling` or `elicitation`).
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let init = serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}});
    /// # let handler = mcp_affinity::handler::handler_fn(move |_req, _cx| { let init = init.clone(); async move { Ok(init) } });
    /// # let svc = mcp_affinity::SseTransportLayer::new().layer(handler);
    /// # let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"sampling":{}},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let req = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
    /// # let res = svc.oneshot(req).await.unwrap();
    /// # let session = res.extensions().get::<mcp_affinity::session::Session>().unwrap().clone();
    /// let caps = session.client_capabilities().unwrap();
    /// assert!(caps.get("sampling").is_some());
    /// assert!(caps.get("elicitation").is_none());
    /// # }
    /// ```
    pub fn client_capabilities(&self) -> Option<&Value> {
        self.inner.client_capabilities.get()
    }

    /// Runs a task owned by the session: it is aborted when the session closes.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let init = serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}});
    /// # let handler = mcp_affinity::handler::handler_fn(move |_req, _cx| { let init = init.clone(); async move { Ok(init) } });
    /// # let svc = mcp_affinity::SseTransportLayer::new().layer(handler);
    /// # let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"sampling":{}},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let req = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
    /// # let res = svc.oneshot(req).await.unwrap();
    /// # let session = res.extensions().get::<mcp_affinity::session::Session>().unwrap().clone();
    /// let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    /// session.spawn(async move {
    ///     let _tx = tx; // held until the task ends
    ///     std::future::pending::<()>().await;
    /// });
    /// session.close();
    /// assert!(rx.await.is_err(), "the task was aborted");
    /// # }
    /// ```
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut m = lock(&self.inner.mutable);
        if m.closed.is_some() {
            return;
        }
        let set = m.tasks.get_or_insert_with(JoinSet::new);
        while set.try_join_next().is_some() {}
        set.spawn(task);
    }

    pub(crate) fn set_initialized(
        &self,
        version: ProtocolVersion,
        client_info: Option<Value>,
        capabilities: Option<Value>,
    ) {
        let _ = self.inner.version.set(version);
        if let Some(ci) = client_info {
            let _ = self.inner.client_info.set(ci);
        }
        if let Some(caps) = capabilities {
            let _ = self.inner.client_capabilities.set(caps);
        }
    }

    pub(crate) fn mark_initialized(&self) {
        lock(&self.inner.mutable).initialized = true;
    }

    pub(crate) fn is_initialized(&self) -> bool {
        lock(&self.inner.mutable).initialized
    }

    pub(crate) fn touch(&self, now_ms: u64) {
        self.inner.last_activity.store(now_ms, Ordering::Relaxed);
    }

    pub(crate) fn last_activity(&self) -> u64 {
        self.inner.last_activity.load(Ordering::Relaxed)
    }

    pub(crate) fn created_ms(&self) -> u64 {
        self.inner.created
    }

    /// Whether a request is running or a stream is open.
    pub(crate) fn is_busy(&self) -> bool {
        !lock(&self.inner.mutable).inflight.is_empty() || self.inner.log.readers() > 0
    }

    /// Spawns the handler of request `id` and tracks it until it ends, so
    /// `notifications/cancelled` can abort it (and end `stream`, the request's own stream,
    /// when it has one). The task starts only once tracked, so it cannot finish (and
    /// untrack) first; it untracks only its own entry, so a client reusing the id for a
    /// newer request keeps that one's.
    pub(crate) fn spawn_tracked<F>(
        &self,
        id: RequestId,
        stream: Option<u32>,
        fut: F,
    ) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (gate_tx, gate_rx) = oneshot::channel::<()>();
        let session = self.clone();
        let task_id = id.clone();
        let handle = tokio::spawn(async move {
            let _ = gate_rx.await;
            let out = fut.await;
            let mut m = lock(&session.inner.mutable);
            let ours = tokio::task::try_id();
            if m.inflight
                .get(&task_id)
                .is_some_and(|(h, _)| ours.is_none_or(|t| h.id() == t))
            {
                m.inflight.remove(&task_id);
            }
            out
        });
        lock(&self.inner.mutable)
            .inflight
            .insert(id, (handle.abort_handle(), stream));
        let _ = gate_tx.send(());
        handle
    }

    /// Cancels a running handler; returns whether one was found.
    pub(crate) fn cancel(&self, id: &RequestId) -> bool {
        let Some((handle, stream)) = lock(&self.inner.mutable).inflight.remove(id) else {
            return false;
        };
        handle.abort();
        // End the request's stream without a response, as cancellation asks.
        if let Some(stream) = stream {
            self.inner.log.complete(stream, None);
        }
        true
    }

    /// Memory held for delivery and replay: `(events, bytes)` in the session's event log.
    /// Bounded by the transport's event-log limits whatever the client does.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let init = serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}});
    /// # let handler = mcp_affinity::handler::handler_fn(move |_req, _cx| { let init = init.clone(); async move { Ok(init) } });
    /// # let svc = mcp_affinity::SseTransportLayer::new().layer(handler);
    /// # let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"sampling":{}},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let req = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
    /// # let res = svc.oneshot(req).await.unwrap();
    /// # let session = res.extensions().get::<mcp_affinity::session::Session>().unwrap().clone();
    /// let (events, bytes) = session.buffered();
    /// session.notify("notifications/resources/list_changed", None).unwrap();
    /// let (events2, bytes2) = session.buffered();
    /// assert_eq!(events2, events + 1);
    /// assert!(bytes2 > bytes);
    /// # }
    /// ```
    pub fn buffered(&self) -> (usize, usize) {
        let (e, b, _) = self.inner.log.stats();
        (e, b)
    }

    /// Events evicted from the log before any connection delivered them (a slow or absent
    /// reader).
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let init = serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}});
    /// # let handler = mcp_affinity::handler::handler_fn(move |_req, _cx| { let init = init.clone(); async move { Ok(init) } });
    /// # let svc = mcp_affinity::SseTransportLayer::new().layer(handler);
    /// # let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"sampling":{}},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let req = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
    /// # let res = svc.oneshot(req).await.unwrap();
    /// # let session = res.extensions().get::<mcp_affinity::session::Session>().unwrap().clone();
    /// session.notify("notifications/tools/list_changed", None).unwrap();
    /// // Well within the log limits: nothing evicted.
    /// assert_eq!(session.dropped_events(), 0);
    /// # }
    /// ```
    pub fn dropped_events(&self) -> u64 {
        self.inner.log.stats().2
    }
}
