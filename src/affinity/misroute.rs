//! The misroute hint the layer puts into request (and response) extensions.

use std::fmt;

/// Which routing key named another node.
///
/// # Example
///
/// ```
/// use mcp_affinity::affinity::MisrouteKind;
///
/// assert_eq!(MisrouteKind::SessionId.as_str(), "session_id");
/// assert_eq!(MisrouteKind::Cookie.to_string(), "cookie");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MisrouteKind {
    /// The affinity cookie names another node, and the session id does not name this one.
    Cookie,
    /// The `Mcp-Session-Id` carries another node's tag.
    SessionId,
}

impl MisrouteKind {
    /// A short name for logs and metrics: `"cookie"` or `"session_id"`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::affinity::MisrouteKind;
    ///
    /// assert_eq!(MisrouteKind::Cookie.as_str(), "cookie");
    /// assert_eq!(MisrouteKind::SessionId.as_str(), "session_id");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Cookie => "cookie",
            Self::SessionId => "session_id",
        }
    }
}

impl fmt::Display for MisrouteKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request that the load balancer sent to the wrong node: its cookie or its session id's
/// tag names another node.
///
/// [`SessionAffinity`](super::SessionAffinity) inserts it into the **request** extensions
/// before calling the inner service (the registry and the transport then answer `404` and may
/// use it in their logs), and into the extensions of the **response** it returns, so outer
/// layers (metrics, access logs) see it too. Node tags are opaque, not secrets; the session
/// id itself is never copied here.
///
/// # Example
///
/// ```
/// use mcp_affinity::affinity::{Misroute, MisrouteKind};
///
/// // An inner service reads it like any extension.
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(Misroute::new(MisrouteKind::SessionId, "n2"));
/// let m = req.extensions().get::<Misroute>().unwrap();
/// assert_eq!(m.kind, MisrouteKind::SessionId);
/// assert_eq!(m.owner_tag, "n2");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Misroute {
    /// Which routing key named another node.
    pub kind: MisrouteKind,
    /// The tag of the node the request belongs to.
    pub owner_tag: String,
}

impl Misroute {
    /// A misroute hint (for tests and for inner services that build their own).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::affinity::{Misroute, MisrouteKind};
    ///
    /// let m = Misroute::new(MisrouteKind::Cookie, "n3");
    /// assert_eq!(m.kind, MisrouteKind::Cookie);
    /// assert_eq!(m.owner_tag, "n3");
    /// ```
    pub fn new(kind: MisrouteKind, owner_tag: impl Into<String>) -> Self {
        Self {
            kind,
            owner_tag: owner_tag.into(),
        }
    }
}
