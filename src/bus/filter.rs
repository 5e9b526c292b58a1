//! Which sessions a filtered broadcast reaches.

use serde::{Deserialize, Serialize};

use crate::{
    protocol::ProtocolVersion,
    session::{Session, principal_digest},
};

/// Which legacy sessions a [`ClusterBus::notify_where`](super::ClusterBus::notify_where)
/// reaches, on every node. It travels on the bus, so it is data, not a closure: every
/// condition set must hold. The default matches every session.
///
/// # Example
///
/// ```
/// use mcp_affinity::{bus::SessionFilter, protocol::ProtocolVersion};
///
/// let filter = SessionFilter::new()
///     .with_principal("ada")
///     .with_protocol_versions([ProtocolVersion::V2025_11_25]);
/// assert_ne!(filter, SessionFilter::new());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionFilter {
    /// Protocol versions (their wire strings); none: any.
    #[serde(default, rename = "v", skip_serializing_if = "Option::is_none")]
    versions: Option<Vec<String>>,
    /// The principal's digest ([`principal_digest`]), never the principal.
    #[serde(default, rename = "p", skip_serializing_if = "Option::is_none")]
    principal: Option<String>,
    /// Sessions subscribed to this resource.
    #[serde(default, rename = "r", skip_serializing_if = "Option::is_none")]
    resource: Option<String>,
}

impl SessionFilter {
    /// A filter that matches every session.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(mcp_affinity::bus::SessionFilter::new(), Default::default());
    /// ```
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Only sessions bound to `principal` (see the transport's `with_principal`). The filter
    /// carries the principal's digest, never the principal itself.
    ///
    /// # Example
    ///
    /// ```
    /// let only_ada = mcp_affinity::bus::SessionFilter::new().with_principal("ada");
    /// # let _ = only_ada;
    /// ```
    #[must_use]
    pub fn with_principal(mut self, principal: &str) -> Self {
        self.principal = Some(principal_digest(principal));
        self
    }

    /// Only sessions that negotiated one of `versions`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::{bus::SessionFilter, protocol::ProtocolVersion};
    ///
    /// let newest = SessionFilter::new().with_protocol_versions([ProtocolVersion::V2025_11_25]);
    /// # let _ = newest;
    /// ```
    #[must_use]
    pub fn with_protocol_versions(
        mut self,
        versions: impl IntoIterator<Item = ProtocolVersion>,
    ) -> Self {
        self.versions = Some(
            versions
                .into_iter()
                .map(|v| v.as_str().to_owned())
                .collect(),
        );
        self
    }

    /// Only sessions [subscribed](Session::subscribe_resource) to `uri`.
    ///
    /// # Example
    ///
    /// ```
    /// let watchers = mcp_affinity::bus::SessionFilter::new().with_resource("file:///a");
    /// # let _ = watchers;
    /// ```
    #[must_use]
    pub fn with_resource(mut self, uri: impl Into<String>) -> Self {
        self.resource = Some(uri.into());
        self
    }

    /// Whether `session` matches.
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
    /// use mcp_affinity::bus::SessionFilter;
    ///
    /// assert!(SessionFilter::new().matches(&session));
    /// assert!(!SessionFilter::new().with_principal("ada").matches(&session));
    /// assert!(!SessionFilter::new().with_resource("file:///a").matches(&session));
    /// # }
    /// ```
    pub fn matches(&self, session: &Session) -> bool {
        if let Some(versions) = &self.versions {
            let Some(v) = session.protocol_version() else {
                return false;
            };
            if !versions.iter().any(|w| w == v.as_str()) {
                return false;
            }
        }
        let principal = self
            .principal
            .as_deref()
            .is_none_or(|p| session.principal_digest() == Some(p));
        principal
            && self
                .resource
                .as_deref()
                .is_none_or(|uri| session.is_subscribed(uri))
    }
}
