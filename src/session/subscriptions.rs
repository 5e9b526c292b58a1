//! The resources a legacy session subscribed to (`resources/subscribe`), so a
//! `notifications/resources/updated` published on the [cluster bus](crate::bus) reaches exactly
//! the sessions that asked for it, on whichever node holds them.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

use super::{Session, handle::lock};

/// How many resources one session may subscribe to; more are refused (a client cannot grow a
/// node's memory without bound).
pub const MAX_RESOURCE_SUBSCRIPTIONS: usize = 1024;

/// The set, kept in the session's typed state.
#[derive(Clone, Default)]
struct Subscriptions(Arc<Mutex<HashSet<Box<str>>>>);

impl Session {
    fn subscriptions(&self) -> Option<Subscriptions> {
        lock(&self.inner.mutable)
            .state
            .get::<Subscriptions>()
            .cloned()
    }

    /// Records that the session subscribed to `uri` (what a handler does on
    /// `resources/subscribe`). `false` if the session holds
    /// [`MAX_RESOURCE_SUBSCRIPTIONS`] already and `uri` is not one of them.
    ///
    /// The set lives in this node's memory, like the session's other typed state: a node that
    /// adopts the session starts with none, and the transport's
    /// [restore hook](crate::transport::SseTransportBuilder::with_on_restore) is where an
    /// application that keeps its sessions' subscriptions subscribes them again.
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
    /// # let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let req = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
    /// # let res = svc.oneshot(req).await.unwrap();
    /// # let session = res.extensions().get::<mcp_affinity::session::Session>().unwrap().clone();
    /// assert!(!session.is_subscribed("file:///a"));
    /// assert!(session.subscribe_resource("file:///a"));
    /// assert!(session.is_subscribed("file:///a"));
    /// assert!(session.unsubscribe_resource("file:///a"));
    /// assert!(!session.is_subscribed("file:///a"));
    /// # }
    /// ```
    pub fn subscribe_resource(&self, uri: &str) -> bool {
        let set = {
            let mut m = lock(&self.inner.mutable);
            match m.state.get::<Subscriptions>() {
                Some(s) => s.clone(),
                None => {
                    let s = Subscriptions::default();
                    m.state.insert(s.clone());
                    s
                }
            }
        };
        let mut set = set
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if set.contains(uri) {
            return true;
        }
        if set.len() >= MAX_RESOURCE_SUBSCRIPTIONS {
            return false;
        }
        set.insert(uri.into())
    }

    /// Forgets a subscription (`resources/unsubscribe`); `false` if there was none.
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
    /// # let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let req = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
    /// # let res = svc.oneshot(req).await.unwrap();
    /// # let session = res.extensions().get::<mcp_affinity::session::Session>().unwrap().clone();
    /// assert!(!session.unsubscribe_resource("file:///never"));
    /// # }
    /// ```
    pub fn unsubscribe_resource(&self, uri: &str) -> bool {
        self.subscriptions().is_some_and(|s| {
            s.0.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(uri)
        })
    }

    /// Whether the session subscribed to `uri`.
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
    /// # let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let req = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
    /// # let res = svc.oneshot(req).await.unwrap();
    /// # let session = res.extensions().get::<mcp_affinity::session::Session>().unwrap().clone();
    /// session.subscribe_resource("file:///a");
    /// assert!(session.is_subscribed("file:///a"));
    /// assert!(!session.is_subscribed("file:///b"));
    /// # }
    /// ```
    pub fn is_subscribed(&self, uri: &str) -> bool {
        self.subscriptions().is_some_and(|s| {
            s.0.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(uri)
        })
    }
}
