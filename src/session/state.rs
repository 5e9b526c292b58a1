//! The typed per-session state handlers keep on a [`Session`].

use super::{Session, handle::lock};

impl Session {
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
}
