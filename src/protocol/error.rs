//! JSON-RPC error codes and the error responses the layers send.

use std::borrow::Cow;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;
use serde_json::Value;

use super::RequestId;

/// JSON-RPC and MCP error codes used by this crate.
///
/// # Example
///
/// ```
/// use mcp_affinity::protocol::codes;
/// assert_eq!(codes::METHOD_NOT_FOUND, -32601);
/// assert_eq!(codes::SESSION_NOT_FOUND, -32001);
/// ```
pub mod codes {
    /// Invalid JSON.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(mcp_affinity::protocol::codes::PARSE_ERROR, -32700);
    /// ```
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a valid JSON-RPC request, or a transport-level rejection (406, 415, 413, 400).
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(mcp_affinity::protocol::codes::INVALID_REQUEST, -32600);
    /// ```
    pub const INVALID_REQUEST: i64 = -32600;
    /// Unknown method (modern era: HTTP 404).
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(mcp_affinity::protocol::codes::METHOD_NOT_FOUND, -32601);
    /// ```
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Invalid params, including a malformed modern `_meta`.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(mcp_affinity::protocol::codes::INVALID_PARAMS, -32602);
    /// ```
    pub const INVALID_PARAMS: i64 = -32602;
    /// Internal error.
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(mcp_affinity::protocol::codes::INTERNAL_ERROR, -32603);
    /// ```
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Legacy era: a transport-level rejection such as a missing session id (as the TypeScript SDK).
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(mcp_affinity::protocol::codes::BAD_REQUEST, -32000);
    /// ```
    pub const BAD_REQUEST: i64 = -32000;
    /// Legacy era: the session is unknown or closed, re-initialize. The TypeScript SDK and the
    /// conformance suite's reference server use `-32001`; VS Code recognizes it. (The Python SDK
    /// uses `-32600`; no revision defines a code, see python-sdk#1821.)
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(mcp_affinity::protocol::codes::SESSION_NOT_FOUND, -32001);
    /// ```
    pub const SESSION_NOT_FOUND: i64 = -32001;
    /// Modern era: headers and body disagree (HTTP 400).
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(mcp_affinity::protocol::codes::HEADER_MISMATCH, -32020);
    /// ```
    pub const HEADER_MISMATCH: i64 = -32020;
    /// Modern era: a required client capability is missing (HTTP 400).
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(mcp_affinity::protocol::codes::MISSING_REQUIRED_CLIENT_CAPABILITY, -32021);
    /// ```
    pub const MISSING_REQUIRED_CLIENT_CAPABILITY: i64 = -32021;
    /// Modern era: unsupported protocol version (HTTP 400).
    ///
    /// # Example
    ///
    /// ```
    /// assert_eq!(mcp_affinity::protocol::codes::UNSUPPORTED_PROTOCOL_VERSION, -32022);
    /// ```
    pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    jsonrpc: &'static str,
    id: Option<&'a RequestId>,
    error: ErrorObject<'a>,
}

#[derive(Serialize)]
struct ErrorObject<'a> {
    code: i64,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a Value>,
}

/// Encodes a JSON-RPC error response (`id` is `null` when absent).
///
/// # Example
///
/// ```
/// use mcp_affinity::protocol::{codes, error_body};
///
/// let body = error_body(None, codes::INVALID_REQUEST, "bad", None);
/// assert_eq!(&body[..], br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"bad"}}"#);
/// ```
pub fn error_body(id: Option<&RequestId>, code: i64, message: &str, data: Option<&Value>) -> Bytes {
    let body = ErrorBody {
        jsonrpc: "2.0",
        id,
        error: ErrorObject {
            code,
            message,
            data,
        },
    };
    // Serializing this struct cannot fail: every field is a plain value.
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

/// The answer to a failed handler (one that panicked, or whose answer could not be read): a
/// JSON-RPC internal error for the request `id` under HTTP `200`, as every answer to a request;
/// or, for a notification (`None`), the same error without an id under HTTP `500` (the input
/// could not be accepted).
pub(crate) fn internal_error(id: Option<&RequestId>) -> (StatusCode, Bytes) {
    let status = if id.is_some() {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    (
        status,
        error_body(id, codes::INTERNAL_ERROR, "internal error", None),
    )
}

/// Why a layer of this crate answered a request itself: the typed reason of a [`Rejection`].
///
/// Each kind has one HTTP status ([`status`](Self::status)) and a stable snake-case label
/// ([`as_str`](Self::as_str)) for logs and metrics; the message of the JSON-RPC error is for
/// people and may change. New kinds may be added in any release.
///
/// # Example
///
/// ```
/// use http::StatusCode;
/// use mcp_affinity::protocol::RejectionKind;
///
/// assert_eq!(RejectionKind::SessionNotFound.status(), StatusCode::NOT_FOUND);
/// assert_eq!(RejectionKind::NodeBusy.as_str(), "node_busy");
/// assert_eq!(RejectionKind::SessionBusy.to_string(), "session_busy");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RejectionKind {
    /// The `Host` header is not allowed (DNS-rebinding protection). HTTP `421`.
    HostNotAllowed,
    /// The `Origin` header is not allowed. HTTP `403`.
    OriginNotAllowed,
    /// `Accept` lacks a media type the answer needs. HTTP `406`.
    NotAcceptable,
    /// `Content-Type` is not `application/json`. HTTP `415`.
    UnsupportedMediaType,
    /// The body is larger than the transport accepts. HTTP `413`.
    BodyTooLarge,
    /// The body could not be read to its end. HTTP `400`.
    UnreadableBody,
    /// The body is not JSON. HTTP `400`.
    ParseError,
    /// The body is JSON but not an acceptable JSON-RPC message (a request without an id, a client response in the modern era, ...). HTTP `400`.
    InvalidMessage,
    /// An HTTP method the endpoint does not serve (or not in this era). HTTP `405`.
    MethodNotAllowed,
    /// A header that must appear once appears more often. HTTP `400`.
    RepeatedHeader,
    /// `MCP-Protocol-Version` is not a valid header value. HTTP `400`.
    InvalidVersionHeader,
    /// The protocol revision asked for is not served. HTTP `400`.
    UnsupportedVersion,
    /// Modern era: a required header is missing or disagrees with the body. HTTP `400`.
    HeaderMismatch,
    /// Modern era: `_meta` lacks a required entry or has one of the wrong type. HTTP `400`.
    InvalidMeta,
    /// Modern era: a method the revision removed (`initialize`, ...). HTTP `404`.
    MethodRemoved,
    /// A JSON-RPC batch where the revision has none, or one holding `initialize`. HTTP `400`.
    BatchNotAllowed,
    /// A batch with more requests than may ever run at once on a session. HTTP `400`.
    BatchTooLarge,
    /// Legacy era: a request other than `initialize` without `Mcp-Session-Id`. HTTP `400`.
    MissingSessionId,
    /// Legacy era: the session is unknown here or closed (or another principal's). HTTP `404`.
    SessionNotFound,
    /// Legacy era: the session id carries another node's tag (strict affinity). HTTP `404`.
    Misrouted,
    /// Legacy era: the session's standalone SSE stream is already open. HTTP `409`.
    StreamConflict,
    /// `initialize` lacks a required parameter. HTTP `400`.
    InvalidInitialize,
    /// `initialize` names a live session. HTTP `400`.
    AlreadyInitialized,
    /// The node runs as many request handlers as it may (retry later). HTTP `503`.
    NodeBusy,
    /// The session runs as many request handlers as it may (retry later). HTTP `429`.
    SessionBusy,
    /// The node holds as many sessions as it may (retry later). HTTP `503`.
    TooManySessions,
    /// The node is draining: no new or restored session (retry on another node). HTTP `503`.
    ShuttingDown,
    /// No session id could be generated (the random source failed; retry later). HTTP `503`.
    NoSessionId,
    /// The session id generator produced an invalid id. HTTP `500`.
    InvalidGeneratedId,
    /// The session could not be restored (the restore hook panicked). HTTP `500`.
    RestoreFailed,
    /// Fail-closed registry: a new session's record could not be written (retry later or on
    /// another node). HTTP `503`.
    RegistryUnavailable,
}

impl RejectionKind {
    /// The HTTP status of a rejection of this kind.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use mcp_affinity::protocol::RejectionKind;
    ///
    /// assert_eq!(RejectionKind::HostNotAllowed.status(), StatusCode::MISDIRECTED_REQUEST);
    /// assert_eq!(RejectionKind::SessionBusy.status(), StatusCode::TOO_MANY_REQUESTS);
    /// ```
    pub const fn status(self) -> StatusCode {
        match self {
            Self::HostNotAllowed => StatusCode::MISDIRECTED_REQUEST,
            Self::OriginNotAllowed => StatusCode::FORBIDDEN,
            Self::NotAcceptable => StatusCode::NOT_ACCEPTABLE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnreadableBody => StatusCode::BAD_REQUEST,
            Self::ParseError => StatusCode::BAD_REQUEST,
            Self::InvalidMessage => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::RepeatedHeader => StatusCode::BAD_REQUEST,
            Self::InvalidVersionHeader => StatusCode::BAD_REQUEST,
            Self::UnsupportedVersion => StatusCode::BAD_REQUEST,
            Self::HeaderMismatch => StatusCode::BAD_REQUEST,
            Self::InvalidMeta => StatusCode::BAD_REQUEST,
            Self::MethodRemoved => StatusCode::NOT_FOUND,
            Self::BatchNotAllowed => StatusCode::BAD_REQUEST,
            Self::BatchTooLarge => StatusCode::BAD_REQUEST,
            Self::MissingSessionId => StatusCode::BAD_REQUEST,
            Self::SessionNotFound => StatusCode::NOT_FOUND,
            Self::Misrouted => StatusCode::NOT_FOUND,
            Self::StreamConflict => StatusCode::CONFLICT,
            Self::InvalidInitialize => StatusCode::BAD_REQUEST,
            Self::AlreadyInitialized => StatusCode::BAD_REQUEST,
            Self::NodeBusy => StatusCode::SERVICE_UNAVAILABLE,
            Self::SessionBusy => StatusCode::TOO_MANY_REQUESTS,
            Self::TooManySessions => StatusCode::SERVICE_UNAVAILABLE,
            Self::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            Self::NoSessionId => StatusCode::SERVICE_UNAVAILABLE,
            Self::InvalidGeneratedId => StatusCode::INTERNAL_SERVER_ERROR,
            Self::RestoreFailed => StatusCode::INTERNAL_SERVER_ERROR,
            Self::RegistryUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// A stable snake-case label (`"session_not_found"`).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::RejectionKind;
    ///
    /// assert_eq!(RejectionKind::BodyTooLarge.as_str(), "body_too_large");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::HostNotAllowed => "host_not_allowed",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::NotAcceptable => "not_acceptable",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::BodyTooLarge => "body_too_large",
            Self::UnreadableBody => "unreadable_body",
            Self::ParseError => "parse_error",
            Self::InvalidMessage => "invalid_message",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::RepeatedHeader => "repeated_header",
            Self::InvalidVersionHeader => "invalid_version_header",
            Self::UnsupportedVersion => "unsupported_version",
            Self::HeaderMismatch => "header_mismatch",
            Self::InvalidMeta => "invalid_meta",
            Self::MethodRemoved => "method_removed",
            Self::BatchNotAllowed => "batch_not_allowed",
            Self::BatchTooLarge => "batch_too_large",
            Self::MissingSessionId => "missing_session_id",
            Self::SessionNotFound => "session_not_found",
            Self::Misrouted => "misrouted",
            Self::StreamConflict => "stream_conflict",
            Self::InvalidInitialize => "invalid_initialize",
            Self::AlreadyInitialized => "already_initialized",
            Self::NodeBusy => "node_busy",
            Self::SessionBusy => "session_busy",
            Self::TooManySessions => "too_many_sessions",
            Self::ShuttingDown => "shutting_down",
            Self::NoSessionId => "no_session_id",
            Self::InvalidGeneratedId => "invalid_generated_id",
            Self::RestoreFailed => "restore_failed",
            Self::RegistryUnavailable => "registry_unavailable",
        }
    }
}

impl std::fmt::Display for RejectionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A protocol outcome that ends a request before (or instead of) the handler: an HTTP status
/// with a JSON-RPC error body.
///
/// Outer layers can find it in the response extensions to learn why a request was refused.
///
/// # Example
///
/// ```
/// use http::StatusCode;
/// use mcp_affinity::protocol::{codes, Rejection, RejectionKind};
///
/// let r = Rejection::new(RejectionKind::SessionNotFound, codes::SESSION_NOT_FOUND, "session not found");
/// assert_eq!(r.kind(), RejectionKind::SessionNotFound);
/// assert_eq!(r.status(), StatusCode::NOT_FOUND);
/// assert_eq!(r.code(), -32001);
/// ```
#[derive(Debug, Clone)]
pub struct Rejection {
    kind: RejectionKind,
    code: i64,
    message: Cow<'static, str>,
    data: Option<Value>,
    id: Option<RequestId>,
    headers: Vec<(header::HeaderName, HeaderValue)>,
    refusal: Option<super::Refusal>,
}

impl Rejection {
    /// A rejection of a kind (which sets its HTTP status), with a JSON-RPC code and a message.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use mcp_affinity::protocol::{codes, Rejection, RejectionKind};
    ///
    /// let r = Rejection::new(RejectionKind::InvalidMessage, codes::INVALID_REQUEST, "bad request");
    /// assert_eq!((r.status(), r.code(), r.message()), (StatusCode::BAD_REQUEST, -32600, "bad request"));
    /// ```
    pub fn new(kind: RejectionKind, code: i64, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
            data: None,
            id: None,
            headers: Vec::new(),
            refusal: None,
        }
    }

    /// Adds `error.data`.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use mcp_affinity::protocol::{codes, Rejection, RejectionKind};
    /// use serde_json::json;
    ///
    /// let r = Rejection::new(RejectionKind::UnsupportedVersion, codes::UNSUPPORTED_PROTOCOL_VERSION, "unsupported")
    ///     .with_data(json!({"supported": ["2026-07-28"]}));
    /// let body = r.into_response(|b| b).into_body();
    /// let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    /// assert_eq!(v["error"]["data"]["supported"][0], "2026-07-28");
    /// ```
    #[must_use]
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// Sets the JSON-RPC id the error answers.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use mcp_affinity::protocol::{codes, Rejection, RejectionKind};
    /// use mcp_affinity::protocol::RequestId;
    ///
    /// let r = Rejection::new(RejectionKind::InvalidMeta, codes::INVALID_PARAMS, "bad _meta")
    ///     .with_id(Some(RequestId::Number(5)));
    /// let body = r.into_response(|b| b).into_body();
    /// assert!(body.starts_with(br#"{"jsonrpc":"2.0","id":5,"#));
    /// ```
    #[must_use]
    pub fn with_id(mut self, id: Option<RequestId>) -> Self {
        self.id = id;
        self
    }

    /// Adds a response header (e.g. `Allow`, `Retry-After`).
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use mcp_affinity::protocol::{codes, Rejection, RejectionKind};
    /// use http::{header, HeaderValue};
    ///
    /// let r = Rejection::new(RejectionKind::MethodNotAllowed, codes::INVALID_REQUEST, "use POST")
    ///     .with_header(header::ALLOW, HeaderValue::from_static("POST"));
    /// let res = r.into_response(|b| b);
    /// assert_eq!(res.headers()[header::ALLOW], "POST");
    /// ```
    #[must_use]
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// Marks the rejection as a [`Refusal`](super::Refusal) of who sent the request: the
    /// response then carries it in its extensions.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use mcp_affinity::protocol::{codes, Refusal, Rejection, RejectionKind};
    ///
    /// let r = Rejection::new(RejectionKind::OriginNotAllowed, codes::INVALID_REQUEST, "origin not allowed")
    ///     .with_refusal(Refusal::Origin);
    /// assert_eq!(r.refusal(), Some(Refusal::Origin));
    /// let res = r.into_response(|b| b);
    /// assert_eq!(res.extensions().get::<Refusal>(), Some(&Refusal::Origin));
    /// ```
    #[must_use]
    pub fn with_refusal(mut self, refusal: super::Refusal) -> Self {
        self.refusal = Some(refusal);
        self
    }

    /// The [`Refusal`](super::Refusal) this rejection stands for, if any.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use mcp_affinity::protocol::{codes, Rejection, RejectionKind};
    ///
    /// let r = Rejection::new(RejectionKind::SessionNotFound, codes::SESSION_NOT_FOUND, "session not found");
    /// assert_eq!(r.refusal(), None);
    /// ```
    pub fn refusal(&self) -> Option<super::Refusal> {
        self.refusal
    }

    /// The HTTP status.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use mcp_affinity::protocol::{codes, Rejection, RejectionKind};
    ///
    /// let r = Rejection::new(RejectionKind::OriginNotAllowed, codes::INVALID_REQUEST, "origin not allowed");
    /// assert_eq!(r.status(), StatusCode::FORBIDDEN);
    /// assert_eq!(r.into_response(|b| b).status(), StatusCode::FORBIDDEN);
    /// ```
    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// Why the request was refused.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::protocol::{codes, Rejection, RejectionKind};
    ///
    /// let r = Rejection::new(RejectionKind::NodeBusy, codes::BAD_REQUEST, "busy");
    /// assert_eq!(r.kind(), RejectionKind::NodeBusy);
    /// assert_eq!(r.kind().as_str(), "node_busy");
    /// ```
    pub fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// The JSON-RPC error code.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use mcp_affinity::protocol::{codes, Rejection, RejectionKind};
    ///
    /// let r = Rejection::new(RejectionKind::SessionNotFound, codes::SESSION_NOT_FOUND, "session not found");
    /// assert_eq!(r.code(), -32001);
    /// ```
    pub fn code(&self) -> i64 {
        self.code
    }

    /// The error message.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use mcp_affinity::protocol::{codes, Rejection, RejectionKind};
    ///
    /// let r = Rejection::new(RejectionKind::SessionNotFound, codes::SESSION_NOT_FOUND, "session not found");
    /// assert_eq!(r.message(), "session not found");
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Builds the HTTP response with a body made by `body`.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use mcp_affinity::protocol::{codes, Rejection, RejectionKind};
    /// use http::header;
    ///
    /// let r = Rejection::new(RejectionKind::InvalidMessage, codes::INVALID_REQUEST, "bad");
    /// let res = r.into_response(|b| b);
    /// assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    /// assert_eq!(res.headers()[header::CONTENT_TYPE], "application/json");
    /// assert_eq!(&res.body()[..], br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32600,"message":"bad"}}"#);
    /// ```
    pub fn into_response<B>(self, body: impl FnOnce(Bytes) -> B) -> http::Response<B> {
        let bytes = error_body(
            self.id.as_ref(),
            self.code,
            &self.message,
            self.data.as_ref(),
        );
        let mut res = http::Response::new(body(bytes));
        *res.status_mut() = self.kind.status();
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (k, v) in &self.headers {
            headers.append(k.clone(), v.clone());
        }
        if let Some(refusal) = self.refusal {
            res.extensions_mut().insert(refusal);
        }
        res.extensions_mut().insert(self);
        res
    }
}
