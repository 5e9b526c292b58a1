//! Wire facts shared by every layer: header names, protocol revisions and eras, JSON-RPC
//! parsing and the error responses the layers send.
//!
//! # Example
//!
//! ```
//! use mcp_affinity::protocol::{headers, Message, ProtocolVersion};
//!
//! assert_eq!(headers::MCP_SESSION_ID, "mcp-session-id");
//! let msg = Message::parse(br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).unwrap();
//! assert_eq!(msg.method(), Some("tools/list"));
//! assert!(ProtocolVersion::parse("2025-06-18").is_some());
//! ```

mod classify;
mod error;
mod message;
mod refusal;
pub(crate) mod single;
mod version;

pub(crate) use classify::{REMOVED_IN_MODERN, classify_post, header_version};
pub(crate) use error::internal_error;
pub use error::{Rejection, RejectionKind, codes, error_body};
pub(crate) use message::{Body, ParamsPeek, parse_body, peek_error_code, peek_initialize_result};
pub use message::{Message, MessageKind, ParseError, RequestId};
pub use refusal::Refusal;
pub(crate) use version::is_modern_string;
pub use version::{Era, ProtocolVersion};

/// Header names used by MCP Streamable HTTP (lower case, as `http` stores them).
///
/// # Example
///
/// ```
/// use mcp_affinity::protocol::headers;
/// let mut req = http::Request::new(());
/// req.headers_mut().insert(headers::MCP_PROTOCOL_VERSION, "2025-11-25".parse().unwrap());
/// ```
pub mod headers {
    use http::HeaderName;

    /// `Mcp-Session-Id`: the legacy session id, minted on the `initialize` response.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::headers;
    /// assert_eq!(headers::MCP_SESSION_ID, "mcp-session-id");
    /// ```
    pub const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
    /// `MCP-Protocol-Version`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::headers;
    /// assert_eq!(headers::MCP_PROTOCOL_VERSION, "mcp-protocol-version");
    /// ```
    pub const MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
    /// `Mcp-Method` (modern era): mirrors the body's `method`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::headers;
    /// assert_eq!(headers::MCP_METHOD, "mcp-method");
    /// ```
    pub const MCP_METHOD: HeaderName = HeaderName::from_static("mcp-method");
    /// `Mcp-Name` (modern era): mirrors `params.name`, `params.uri` or `params.taskId`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::headers;
    /// assert_eq!(headers::MCP_NAME, "mcp-name");
    /// ```
    pub const MCP_NAME: HeaderName = HeaderName::from_static("mcp-name");
    /// `Last-Event-ID`: SSE resumption (legacy era).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::headers;
    /// assert_eq!(headers::LAST_EVENT_ID, "last-event-id");
    /// ```
    pub const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");
    /// `X-Accel-Buffering`: tells nginx-style proxies not to buffer SSE.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::headers;
    /// assert_eq!(headers::X_ACCEL_BUFFERING, "x-accel-buffering");
    /// ```
    pub const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");
    /// `Mcp-Forwarded-By`: set by the session registry on a request it forwards to the
    /// session's owner, naming the forwarding node. A request carrying it is never forwarded
    /// again (at most one hop), whoever set it: a client that forges it only gives up
    /// forwarding for itself.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::headers;
    /// assert_eq!(headers::MCP_FORWARDED_BY, "mcp-forwarded-by");
    /// ```
    pub const MCP_FORWARDED_BY: HeaderName = HeaderName::from_static("mcp-forwarded-by");
}
