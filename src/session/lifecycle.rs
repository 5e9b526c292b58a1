//! How a session ends: why ([`CloseReason`]), waiting for it, close hooks, and closing.

use std::{fmt, future::Future, time::Duration};

use super::{Session, SessionId, handle::lock};

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

impl Session {
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
}
