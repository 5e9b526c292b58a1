//! How the session ids clients use relate to the ids an inner service mints (envelope mode).

use std::sync::Arc;

use http::HeaderValue;

use super::{NodeTag, SessionId};

/// The envelope the affinity layer puts around an inner service's own session ids: a client
/// uses `<tag>.<inner id>` (the *wire id*), the layers below the affinity layer see
/// `<inner id>`.
///
/// In [envelope mode](crate::affinity::SessionAffinityBuilder::with_envelope) the affinity layer puts it
/// into the extensions of every request it passes on in this node's envelope: an `initialize`
/// (no session id yet) and a request whose `Mcp-Session-Id` it unwrapped (then
/// [`wire_id`](Self::wire_id) is the id the client sent). A request without it carries the wire
/// id itself in `Mcp-Session-Id` (another node's envelope, or no envelope at all).
///
/// The session registry reads it so that its records are keyed by the wire id, the one every
/// node sees: a misrouted request reaches another node still enveloped, and that node must
/// find the record under the same id. The registry takes it out of the request: the layers
/// below it (and the handler) do not see it.
///
/// # Example
///
/// ```
/// use mcp_affinity::session::{NodeTag, SessionIdEnvelope};
///
/// let envelope = SessionIdEnvelope::new(&NodeTag::new("n1").unwrap());
/// assert_eq!(envelope.wrap("abc").as_deref(), Some("n1.abc"));
/// assert_eq!(envelope.unwrap_id("n1.abc"), Some("abc"));
/// assert_eq!(envelope.unwrap_id("n2.abc"), None);
/// assert_eq!(envelope.wire_id(), None);
/// ```
#[derive(Debug, Clone)]
pub struct SessionIdEnvelope {
    /// `<tag>.`
    prefix: Arc<str>,
    /// The request's `Mcp-Session-Id` as the client sent it, when it was unwrapped.
    wire: Option<HeaderValue>,
}

impl SessionIdEnvelope {
    /// The envelope of the node with this tag.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::session::{NodeTag, SessionIdEnvelope};
    ///
    /// let envelope = SessionIdEnvelope::new(&NodeTag::new("n1").unwrap());
    /// assert_eq!(envelope.prefix(), "n1.");
    /// ```
    pub fn new(tag: &NodeTag) -> Self {
        Self {
            prefix: format!("{}.", tag.as_str()).into(),
            wire: None,
        }
    }

    /// The same envelope, for a request whose `Mcp-Session-Id` was `wire` before it was
    /// unwrapped.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::session::{NodeTag, SessionIdEnvelope};
    ///
    /// let envelope = SessionIdEnvelope::new(&NodeTag::new("n1").unwrap())
    ///     .with_wire_id(http::HeaderValue::from_static("n1.abc"));
    /// assert_eq!(envelope.wire_id(), Some("n1.abc"));
    /// ```
    #[must_use]
    pub fn with_wire_id(mut self, wire: HeaderValue) -> Self {
        self.wire = Some(wire);
        self
    }

    /// `<tag>.`, what the envelope puts before an inner id.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::session::{NodeTag, SessionIdEnvelope};
    ///
    /// assert_eq!(SessionIdEnvelope::new(&NodeTag::new("a1").unwrap()).prefix(), "a1.");
    /// ```
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The wire id of an inner id: `<tag>.<inner>`, or `None` when the result would not be a
    /// valid session id (an inner id that is not visible ASCII, or too long once wrapped); such
    /// an id is passed to clients as it is.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::session::{NodeTag, SessionIdEnvelope};
    ///
    /// let envelope = SessionIdEnvelope::new(&NodeTag::new("n1").unwrap());
    /// assert_eq!(envelope.wrap("x").as_deref(), Some("n1.x"));
    /// assert_eq!(envelope.wrap("not ascii é"), None);
    /// assert_eq!(envelope.wrap(&"x".repeat(256)), None);
    /// ```
    pub fn wrap(&self, inner: &str) -> Option<String> {
        (SessionId::is_valid(inner) && self.prefix.len() + inner.len() <= super::MAX_SESSION_ID_LEN)
            .then(|| format!("{}{inner}", self.prefix))
    }

    /// The inner id of a wire id in this envelope (`None` for another node's envelope or no
    /// envelope).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::session::{NodeTag, SessionIdEnvelope};
    ///
    /// let envelope = SessionIdEnvelope::new(&NodeTag::new("n1").unwrap());
    /// assert_eq!(envelope.unwrap_id("n1.x.y"), Some("x.y"));
    /// assert_eq!(envelope.unwrap_id("n1."), None);
    /// assert_eq!(envelope.unwrap_id("x"), None);
    /// ```
    pub fn unwrap_id<'a>(&self, wire: &'a str) -> Option<&'a str> {
        wire.strip_prefix(&*self.prefix).filter(|s| !s.is_empty())
    }

    /// The request's session id as the client sent it, if the affinity layer unwrapped it.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::session::{NodeTag, SessionIdEnvelope};
    ///
    /// let envelope = SessionIdEnvelope::new(&NodeTag::new("n1").unwrap());
    /// assert_eq!(envelope.wire_id(), None); // e.g. an `initialize`
    /// ```
    pub fn wire_id(&self) -> Option<&str> {
        self.wire.as_ref().and_then(|v| v.to_str().ok())
    }
}
