//! Restoring a session on a node that did not create it ("adoption"), and telling that a
//! response came from another node ("forwarding").
//!
//! The layers meet here. The session registry decides that this node takes over a session
//! whose owner is gone, draining or a previous process of this node; it puts a
//! [`RestoreSession`] into the request's extensions and passes the request on. The transport
//! finds no such session in its table, restores it from the [`RestoreSession`] (after checking
//! the principal binding), marks the handler's request with [`SessionRestored`], runs its
//! restore hook, and serves the request. Nothing else crosses between the layers.

use serde_json::Value;

use super::SessionId;
use crate::protocol::ProtocolVersion;

/// What the transport needs to restore a legacy session another node (or a previous process of
/// this node) created: put into the request extensions by the session registry when it has
/// taken ownership of the session. The transport restores the session only for a request that
/// names exactly this id and that it does not hold already.
///
/// # Example
///
/// ```
/// use mcp_affinity::protocol::ProtocolVersion;
/// use mcp_affinity::session::{RestoreSession, SessionId};
///
/// let restore = RestoreSession::new(SessionId::parse("n1.abc").unwrap(), ProtocolVersion::V2025_11_25);
/// let mut req = http::Request::new(());
/// req.extensions_mut().insert(restore);
/// assert!(req.extensions().get::<RestoreSession>().is_some());
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RestoreSession {
    /// The session id as the transport sees it (inside the affinity layer's envelope, if any).
    pub id: SessionId,
    /// The protocol version negotiated when the session was created.
    pub protocol_version: ProtocolVersion,
    /// The `clientInfo` the client sent in `initialize`.
    pub client_info: Option<Value>,
    /// The `capabilities` the client sent in `initialize`.
    pub client_capabilities: Option<Value>,
    /// The digest of the principal the session is bound to ([`principal_digest`]), if it is
    /// bound to one.
    pub principal: Option<String>,
    /// The standalone stream's events the store kept, read by the registry when it adopted
    /// the session ([`with_events`](Self::with_events)); `None`: nothing was read.
    pub events: Option<super::StoredEvents>,
}

impl RestoreSession {
    /// A session to restore, with no client info, capabilities or principal.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::ProtocolVersion;
    /// use mcp_affinity::session::{RestoreSession, SessionId};
    ///
    /// let r = RestoreSession::new(SessionId::parse("s1").unwrap(), ProtocolVersion::V2025_06_18);
    /// assert_eq!(r.protocol_version, ProtocolVersion::V2025_06_18);
    /// assert!(r.principal.is_none());
    /// ```
    pub fn new(id: SessionId, protocol_version: ProtocolVersion) -> Self {
        Self {
            id,
            protocol_version,
            client_info: None,
            client_capabilities: None,
            principal: None,
            events: None,
        }
    }

    /// Sets the client's `clientInfo` and `capabilities` from its `initialize`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::ProtocolVersion;
    /// use mcp_affinity::session::{RestoreSession, SessionId};
    ///
    /// let r = RestoreSession::new(SessionId::parse("s1").unwrap(), ProtocolVersion::V2025_11_25)
    ///     .with_client(Some(serde_json::json!({"name": "c", "version": "1"})), None);
    /// assert_eq!(r.client_info.unwrap()["name"], "c");
    /// ```
    #[must_use]
    pub fn with_client(mut self, info: Option<Value>, capabilities: Option<Value>) -> Self {
        self.client_info = info;
        self.client_capabilities = capabilities;
        self
    }

    /// Sets the digest of the principal the session is bound to.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::ProtocolVersion;
    /// use mcp_affinity::session::{principal_digest, RestoreSession, SessionId};
    ///
    /// let r = RestoreSession::new(SessionId::parse("s1").unwrap(), ProtocolVersion::V2025_11_25)
    ///     .with_principal(Some(principal_digest("ada")));
    /// assert_eq!(r.principal.as_deref(), Some(principal_digest("ada").as_str()));
    /// ```
    #[must_use]
    pub fn with_principal(mut self, digest: Option<String>) -> Self {
        self.principal = digest;
        self
    }

    /// Sets the standalone stream's events the store kept: `after` is the last sequence
    /// number the client reported (`Last-Event-ID: 0-<after>`), `top` the highest one the
    /// store held, `events` those after `after` in order. The restored session's standalone
    /// stream holds `events` under their ids and numbers new events after
    /// `max(top, after)`, so ids stay unique and ordered across nodes.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use mcp_affinity::protocol::ProtocolVersion;
    /// use mcp_affinity::session::{RestoreSession, SessionId};
    ///
    /// let r = RestoreSession::new(SessionId::parse("s1").unwrap(), ProtocolVersion::V2025_11_25)
    ///     .with_events(Some(3), 5, vec![(4, Bytes::from_static(b"{}")), (5, Bytes::from_static(b"{}"))]);
    /// let events = r.events.unwrap();
    /// assert_eq!(events.top, 5);
    /// assert_eq!(events.events.len(), 2);
    /// ```
    #[must_use]
    pub fn with_events(
        mut self,
        after: Option<u32>,
        top: u32,
        events: Vec<(u32, bytes::Bytes)>,
    ) -> Self {
        let mut stored = self.events.take().unwrap_or_default();
        stored.after = after;
        stored.top = top;
        stored.events = events;
        self.events = Some(stored);
        self
    }

    /// Sets the `POST` answers' events the store kept and the highest ordinal it held: the
    /// restored log keeps them as ended streams (a `GET` with `Last-Event-ID:
    /// <stream>-<seq>` replays the rest of one), and numbers new ordinals after `ordinal`.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use mcp_affinity::protocol::ProtocolVersion;
    /// use mcp_affinity::session::{RequestEvent, RestoreSession, SessionId};
    ///
    /// let r = RestoreSession::new(SessionId::parse("s1").unwrap(), ProtocolVersion::V2025_11_25)
    ///     .with_request_events(9, vec![RequestEvent::new(2, 1, Bytes::from_static(b"{}"))]);
    /// let events = r.events.unwrap();
    /// assert_eq!((events.ordinal, events.requests.len()), (9, 1));
    /// ```
    #[must_use]
    pub fn with_request_events(mut self, ordinal: u64, requests: Vec<super::RequestEvent>) -> Self {
        let mut stored = self.events.take().unwrap_or_default();
        stored.ordinal = ordinal;
        stored.requests = requests;
        self.events = Some(stored);
        self
    }
}

/// Marker in the extensions of the handler's request that restored its session on this node
/// (the session was created elsewhere, or by a previous process of this node): per-session
/// state the application keeps in [`Session::insert`](super::Session::insert) is empty, and
/// the handler may rebuild it. The transport's restore hook
/// ([`with_on_restore`](crate::transport::SseTransportBuilder::with_on_restore)) runs once
/// before that request.
///
/// # Example
///
/// ```
/// use mcp_affinity::session::SessionRestored;
///
/// fn restored<B>(req: &http::Request<B>) -> bool {
///     req.extensions().get::<SessionRestored>().is_some()
/// }
/// assert!(!restored(&http::Request::new(())));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct SessionRestored;

/// Marker in the extensions of a response another node produced: the session registry
/// forwarded the request to the session's owner and streams its answer back. The affinity
/// layer sets no cookie of its own on such a response (the owner's, if any, passes through).
///
/// # Example
///
/// ```
/// use mcp_affinity::session::Forwarded;
///
/// fn forwarded<B>(res: &http::Response<B>) -> bool {
///     res.extensions().get::<Forwarded>().is_some()
/// }
/// assert!(!forwarded(&http::Response::new(())));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Forwarded;

/// The digest under which a session's principal binding is stored and compared: SHA-256 of the
/// principal, the first 16 bytes in lowercase hex. The registry's record carries it, never the
/// principal itself.
///
/// # Example
///
/// ```
/// use mcp_affinity::session::principal_digest;
///
/// let d = principal_digest("ada");
/// assert_eq!(d.len(), 32);
/// assert_eq!(d, principal_digest("ada"));
/// assert_ne!(d, principal_digest("bob"));
/// ```
pub fn principal_digest(principal: &str) -> String {
    let hex = digest_hex(principal);
    // Lowercase hex digits: always ASCII.
    std::str::from_utf8(&hex).unwrap_or_default().to_owned()
}

/// [`principal_digest`] without an allocation: the transport compares it on every request of
/// a session bound to a principal.
pub(crate) fn digest_hex(principal: &str) -> [u8; 32] {
    use sha2::Digest as _;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let hash = sha2::Sha256::digest(principal.as_bytes());
    let mut out = [0u8; 32];
    for (i, b) in hash[..16].iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_the_first_half_of_sha256_in_lowercase_hex() {
        use sha2::Digest as _;
        for p in ["", "ada", "bob@example.com", "ü"] {
            let hash = sha2::Sha256::digest(p.as_bytes());
            let want: String = hash[..16].iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(principal_digest(p), want);
            assert_eq!(&digest_hex(p)[..], want.as_bytes());
        }
    }
}
