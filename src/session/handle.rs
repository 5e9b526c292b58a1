//! The `Session` handle and its lifecycle.

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

use bytes::Bytes;
use serde_json::Value;
use tokio::{
    sync::{oneshot, watch},
    task::{AbortHandle, JoinSet},
};

use super::SessionId;
use crate::{
    protocol::{ProtocolVersion, RequestId},
    transport::log::{AppendError, EventLog, LogLimits, STANDALONE},
};

/// Why a session ended.
///
/// # Example
///
/// ```
/// use mcp_affinity::session::CloseReason;
/// assert_eq!(CloseReason::Deleted.as_str(), "deleted");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client sent `DELETE`.
    Deleted,
    /// No request and no open stream for the idle timeout.
    Idle,
    /// `notifications/initialized` never came within the initialization timeout.
    InitTimeout,
    /// The node is shutting down.
    Shutdown,
    /// The application closed it ([`Session::close`]).
    Closed,
    /// The `initialize` request failed; the session never existed for the client.
    InitializeFailed,
    /// The session reached the transport's absolute session lifetime (closed even while
    /// busy).
    Lifetime,
}

impl CloseReason {
    /// A short lower-case name, for logs and metrics.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::session::CloseReason;
    ///
    /// assert_eq!(CloseReason::InitTimeout.as_str(), "init_timeout");
    /// assert_eq!(CloseReason::Deleted.to_string(), "deleted");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Deleted => "deleted",
            Self::Idle => "idle",
            Self::InitTimeout => "init_timeout",
            Self::Shutdown => "shutdown",
            Self::Closed => "closed",
            Self::InitializeFailed => "initialize_failed",
            Self::Lifetime => "lifetime",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a server→client message or request failed.
///
/// # Example
///
/// ```
/// use mcp_affinity::session::SendError;
/// assert_eq!(SendError::Closed.to_string(), "session closed");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SendError {
    /// The session (or request) is closed.
    Closed,
    /// The stream the message was meant for has ended (its response was already sent).
    StreamEnded,
    /// Too many server→client requests await an answer in this session.
    TooManyPending,
    /// The client did not answer in time.
    Timeout,
    /// Server→client requests are not allowed here (modern era, or no back-channel).
    NotSupported,
    /// The client answered with a JSON-RPC error (the `error` object).
    Rejected(Value),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => f.write_str("session closed"),
            Self::StreamEnded => f.write_str("stream ended"),
            Self::TooManyPending => f.write_str("too many pending server requests"),
            Self::Timeout => f.write_str("server request timed out"),
            Self::NotSupported => f.write_str("server requests are not supported here"),
            Self::Rejected(_) => f.write_str("client answered with an error"),
        }
    }
}

impl std::error::Error for SendError {}

impl From<AppendError> for SendError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Closed => Self::Closed,
            AppendError::StreamEnded => Self::StreamEnded,
        }
    }
}

/// Per-session limits, copied from the transport configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionConfig {
    pub(crate) log: LogLimits,
    pub(crate) max_pending_requests: usize,
    pub(crate) request_timeout: Duration,
}

type Pending = oneshot::Sender<Result<Value, Value>>;
type CloseHook = Box<dyn FnOnce(&SessionId, CloseReason) + Send>;

struct Mutable {
    initialized: bool,
    closed: Option<CloseReason>,
    state: http::Extensions,
    pending: HashMap<RequestId, Pending>,
    inflight: HashMap<RequestId, (AbortHandle, Option<u32>)>,
    tasks: Option<JoinSet<()>>,
    hooks: Vec<CloseHook>,
}

pub(crate) struct Inner {
    pub(crate) id: SessionId,
    pub(crate) log: EventLog,
    /// The digest of the principal the session is bound to ([`super::principal_digest`]),
    /// never the principal itself.
    principal: Option<Box<str>>,
    version: OnceLock<ProtocolVersion>,
    client_info: OnceLock<Value>,
    client_capabilities: OnceLock<Value>,
    mutable: Mutex<Mutable>,
    last_activity: AtomicU64,
    created: u64,
    next_request: AtomicI64,
    closed_tx: watch::Sender<Option<CloseReason>>,
    config: SessionConfig,
    /// Request handlers of this session running now (the transport's per-session bound).
    pub(crate) running: std::sync::atomic::AtomicUsize,
}

/// The pending entry of one server→client request, owned by the future that waits for its
/// answer: if that future is dropped first (a cancelled handler, a `select!` that lost), the
/// entry goes with it, so abandoned requests never fill `max_pending_requests`. A late answer
/// from the client then finds no entry and is ignored.
struct PendingSlot {
    inner: Arc<Inner>,
    id: Option<RequestId>,
}

impl PendingSlot {
    fn new(inner: Arc<Inner>, id: RequestId) -> Self {
        Self {
            inner,
            id: Some(id),
        }
    }

    /// The entry is gone already (answered or failed on close): nothing to withdraw.
    fn disarm(&mut self) {
        self.id = None;
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            lock(&self.inner.mutable).pending.remove(&id);
        }
    }
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

fn lock(m: &Mutex<Mutable>) -> MutexGuard<'_, Mutable> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn encode_message(
    method: &str,
    id: Option<&RequestId>,
    params: Option<&Value>,
) -> Bytes {
    let mut v = serde_json::Map::with_capacity(4);
    v.insert("jsonrpc".into(), Value::from("2.0"));
    if let Some(id) = id {
        v.insert("id".into(), serde_json::to_value(id).unwrap_or(Value::Null));
    }
    v.insert("method".into(), Value::from(method));
    if let Some(p) = params {
        v.insert("params".into(), p.clone());
    }
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
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
        let log = EventLog::new(config.log, true);
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
        let log = EventLog::restored(config.log, standalone_after.unwrap_or(0));
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

    /// Stores a typed value in the session (replacing and returning an older one).
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
    /// assert_eq!(session.insert("alice".to_string()), None);
    /// assert_eq!(session.insert("bob".to_string()), Some("alice".to_string()));
    /// # }
    /// ```
    pub fn insert<T: Clone + Send + Sync + 'static>(&self, value: T) -> Option<T> {
        lock(&self.inner.mutable).state.insert(value)
    }

    /// A clone of the typed value stored in the session.
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
    /// assert_eq!(session.get::<u64>(), None);
    /// session.insert(7u64);
    /// assert_eq!(session.get::<u64>(), Some(7));
    /// # }
    /// ```
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<T> {
        lock(&self.inner.mutable).state.get::<T>().cloned()
    }

    /// Sends a notification on the standalone GET stream. If no GET stream is open it is held
    /// (in the bounded event log) until one opens.
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
    /// let (events, _) = session.buffered();
    /// // No GET stream is open: the notification is held in the event log.
    /// session.notify("notifications/tools/list_changed", None).unwrap();
    /// assert_eq!(session.buffered().0, events + 1);
    /// # }
    /// ```
    pub fn notify(&self, method: &str, params: Option<Value>) -> Result<(), SendError> {
        self.inner
            .log
            .append(
                STANDALONE,
                encode_message(method, None, params.as_ref()),
                false,
            )
            .map_err(Into::into)
    }

    pub(crate) fn notify_encoded(&self, data: Bytes) -> Result<(), SendError> {
        self.inner
            .log
            .append(STANDALONE, data, false)
            .map_err(Into::into)
    }

    /// Sends a server→client request (e.g. `sampling/createMessage`) on the standalone stream
    /// and waits for the client's answer, which arrives as a later POST.
    ///
    /// Inside a handler prefer [`RequestContext::request`](crate::session::RequestContext::request),
    /// which sends it on the request's own stream.
    ///
    /// The request is sent when this is called, and counts towards the transport's
    /// `max_pending_requests` until it is answered, times out, or the returned future is
    /// dropped: dropping the future withdraws the request, and a late answer from the client
    /// is then ignored.
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
    /// use mcp_affinity::session::SendError;
    /// use serde_json::json;
    ///
    /// let answer = session.request("sampling/createMessage", Some(json!({"messages": []})));
    /// assert_eq!(session.pending_requests(), 1);
    /// session.close(); // no answer will come
    /// assert_eq!(answer.await, Err(SendError::Closed));
    /// # }
    /// ```
    pub fn request(
        &self,
        method: &str,
        params: Option<Value>,
    ) -> impl Future<Output = Result<Value, SendError>> + Send + 'static {
        self.request_on(STANDALONE, method, params)
    }

    pub(crate) fn request_on(
        &self,
        stream: u32,
        method: &str,
        params: Option<Value>,
    ) -> impl Future<Output = Result<Value, SendError>> + Send + 'static {
        let timeout = self.inner.config.request_timeout;
        // The slot is created (and owned by the future) before the future is first polled, so
        // a future dropped unpolled withdraws its request too.
        let prepared = self
            .prepare_request(stream, method, params)
            .map(|(id, rx)| (PendingSlot::new(self.inner.clone(), id), rx));
        async move {
            let (mut slot, rx) = prepared?;
            let out = match tokio::time::timeout(timeout, rx).await {
                // The answer (`Session::answer`) or the close took the entry already.
                Ok(Ok(Ok(v))) => Ok(v),
                Ok(Ok(Err(e))) => Err(SendError::Rejected(e)),
                Ok(Err(_)) => Err(SendError::Closed),
                // The slot withdraws the request as it drops.
                Err(_) => return Err(SendError::Timeout),
            };
            slot.disarm();
            out
        }
    }

    fn prepare_request(
        &self,
        stream: u32,
        method: &str,
        params: Option<Value>,
    ) -> Result<(RequestId, oneshot::Receiver<Result<Value, Value>>), SendError> {
        let n = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        let id = RequestId::Number(n);
        let (tx, rx) = oneshot::channel();
        {
            let mut m = lock(&self.inner.mutable);
            if m.closed.is_some() {
                return Err(SendError::Closed);
            }
            if m.pending.len() >= self.inner.config.max_pending_requests {
                return Err(SendError::TooManyPending);
            }
            m.pending.insert(id.clone(), tx);
        }
        let data = encode_message(method, Some(&id), params.as_ref());
        if let Err(e) = self.inner.log.append(stream, data, false) {
            lock(&self.inner.mutable).pending.remove(&id);
            return Err(e.into());
        }
        Ok((id, rx))
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

    /// Waits until the session is closed and returns why.
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
    /// use mcp_affinity::session::CloseReason;
    ///
    /// let closed = session.closed();
    /// session.close();
    /// assert_eq!(closed.await, CloseReason::Closed);
    /// # }
    /// ```
    pub fn closed(&self) -> impl Future<Output = CloseReason> + Send + 'static {
        let mut rx = self.inner.closed_tx.subscribe();
        async move {
            match rx.wait_for(Option::is_some).await {
                Ok(r) => r.unwrap_or(CloseReason::Closed),
                Err(_) => CloseReason::Closed,
            }
        }
    }

    /// Why the session was closed, if it was.
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
    /// use mcp_affinity::session::CloseReason;
    ///
    /// assert_eq!(session.close_reason(), None);
    /// session.close();
    /// assert_eq!(session.close_reason(), Some(CloseReason::Closed));
    /// # }
    /// ```
    pub fn close_reason(&self) -> Option<CloseReason> {
        lock(&self.inner.mutable).closed
    }

    /// Whether the session is closed.
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
    /// assert!(!session.is_closed());
    /// session.close();
    /// assert!(session.is_closed());
    /// # }
    /// ```
    pub fn is_closed(&self) -> bool {
        self.close_reason().is_some()
    }

    /// Runs `hook` once when the session closes (immediately if it already has). Hooks run on
    /// the thread that closes the session: keep them short and non-blocking (spawn or enqueue
    /// real work). The registry layer uses this to clean up its record.
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
    /// use mcp_affinity::session::CloseReason;
    ///
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// session.on_close(move |_id, reason| tx.send(reason).unwrap());
    /// session.close();
    /// assert_eq!(rx.try_recv(), Ok(CloseReason::Closed));
    /// # }
    /// ```
    pub fn on_close<F>(&self, hook: F)
    where
        F: FnOnce(&SessionId, CloseReason) + Send + 'static,
    {
        let mut m = lock(&self.inner.mutable);
        match m.closed {
            Some(reason) => {
                drop(m);
                hook(&self.inner.id, reason);
            }
            None => m.hooks.push(Box::new(hook)),
        }
    }

    /// Closes the session from the server side; later requests with its id get 404.
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
    /// use mcp_affinity::session::SendError;
    ///
    /// session.close();
    /// assert!(session.is_closed());
    /// assert_eq!(session.notify("notifications/message", None), Err(SendError::Closed));
    /// # }
    /// ```
    pub fn close(&self) {
        self.close_with(CloseReason::Closed, None);
    }

    pub(crate) fn close_with(&self, reason: CloseReason, retry: Option<Duration>) -> bool {
        let (hooks, pending, inflight, tasks) = {
            let mut m = lock(&self.inner.mutable);
            if m.closed.is_some() {
                return false;
            }
            m.closed = Some(reason);
            (
                std::mem::take(&mut m.hooks),
                std::mem::take(&mut m.pending),
                std::mem::take(&mut m.inflight),
                m.tasks.take(),
            )
        };
        drop(pending);
        for (_, (h, _)) in inflight {
            h.abort();
        }
        drop(tasks);
        self.inner.log.close(retry);
        self.inner.closed_tx.send_replace(Some(reason));
        for hook in hooks {
            hook(&self.inner.id, reason);
        }
        true
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

    /// Completes a server→client request with the client's answer; false if none was pending.
    pub(crate) fn answer(&self, id: &RequestId, result: Result<Value, Value>) -> bool {
        let tx = lock(&self.inner.mutable).pending.remove(id);
        tx.map(|tx| tx.send(result).is_ok()).unwrap_or(false)
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

    /// Server→client requests awaiting an answer.
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
    /// assert_eq!(session.pending_requests(), 0);
    /// let answer = session.request("roots/list", None);
    /// assert_eq!(session.pending_requests(), 1);
    /// drop(answer); // dropping the future withdraws the request
    /// assert_eq!(session.pending_requests(), 0);
    /// # }
    /// ```
    pub fn pending_requests(&self) -> usize {
        lock(&self.inner.mutable).pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(max_pending_requests: usize) -> Session {
        let config = SessionConfig {
            log: LogLimits {
                max_events: 64,
                max_bytes: 1 << 16,
            },
            max_pending_requests,
            request_timeout: Duration::from_secs(5),
        };
        Session::new(SessionId::parse("s").unwrap(), None, config, 0)
    }

    #[tokio::test(start_paused = true)]
    async fn a_timed_out_or_answered_request_frees_its_slot() {
        let s = session(1);
        assert_eq!(s.request("roots/list", None).await, Err(SendError::Timeout));
        assert_eq!(s.pending_requests(), 0);
        // Sent (and pending) when made, before the task first polls it.
        let answered = tokio::spawn(s.request("roots/list", None));
        assert_eq!(s.pending_requests(), 1);
        assert_eq!(
            s.request("roots/list", None).await,
            Err(SendError::TooManyPending)
        );
        assert!(s.answer(&RequestId::Number(2), Ok(Value::Bool(true))));
        assert_eq!(answered.await.unwrap(), Ok(Value::Bool(true)));
        assert_eq!(s.pending_requests(), 0);
        assert!(
            !s.answer(&RequestId::Number(2), Ok(Value::Null)),
            "answered once"
        );
    }
}
