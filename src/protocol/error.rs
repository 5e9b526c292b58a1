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
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a valid JSON-RPC request, or a transport-level rejection (406, 415, 413, 400).
    pub const INVALID_REQUEST: i64 = -32600;
    /// Unknown method (modern era: HTTP 404).
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Invalid params, including a malformed modern `_meta`.
    pub const INVALID_PARAMS: i64 = -32602;
    /// Internal error.
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Legacy era: a transport-level rejection such as a missing session id (as the TypeScript SDK).
    pub const BAD_REQUEST: i64 = -32000;
    /// Legacy era: the session is unknown or closed, re-initialize. The TypeScript SDK and the
    /// conformance suite's reference server use `-32001`; VS Code recognizes it. (The Python SDK
    /// uses `-32600`; no revision defines a code, see python-sdk#1821.)
    pub const SESSION_NOT_FOUND: i64 = -32001;
    /// Modern era: headers and body disagree (HTTP 400).
    pub const HEADER_MISMATCH: i64 = -32020;
    /// Modern era: a required client capability is missing (HTTP 400).
    pub const MISSING_REQUIRED_CLIENT_CAPABILITY: i64 = -32021;
    /// Modern era: unsupported protocol version (HTTP 400).
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

/// A protocol outcome that ends a request before (or instead of) the handler: an HTTP status
/// with a JSON-RPC error body.
///
/// Outer layers can find it in the response extensions to learn why a request was refused.
///
/// # Example
///
/// ```
/// use http::StatusCode;
/// use mcp_affinity::protocol::{codes, Rejection};
///
/// let r = Rejection::new(StatusCode::NOT_FOUND, codes::SESSION_NOT_FOUND, "session not found");
/// assert_eq!(r.status(), StatusCode::NOT_FOUND);
/// assert_eq!(r.code(), -32001);
/// ```
#[derive(Debug, Clone)]
pub struct Rejection {
    status: StatusCode,
    code: i64,
    message: Cow<'static, str>,
    data: Option<Value>,
    id: Option<RequestId>,
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl Rejection {
    /// A rejection with a status, a JSON-RPC code and a message.
    pub fn new(status: StatusCode, code: i64, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            data: None,
            id: None,
            headers: Vec::new(),
        }
    }

    /// Adds `error.data`.
    #[must_use]
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// Sets the JSON-RPC id the error answers.
    #[must_use]
    pub fn with_id(mut self, id: Option<RequestId>) -> Self {
        self.id = id;
        self
    }

    /// Adds a response header (e.g. `Allow`, `Retry-After`).
    #[must_use]
    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The JSON-RPC error code.
    pub fn code(&self) -> i64 {
        self.code
    }

    /// The error message.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Builds the HTTP response with a body made by `body`.
    pub fn into_response<B>(self, body: impl FnOnce(Bytes) -> B) -> http::Response<B> {
        let bytes = error_body(
            self.id.as_ref(),
            self.code,
            &self.message,
            self.data.as_ref(),
        );
        let mut res = http::Response::new(body(bytes));
        *res.status_mut() = self.status;
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (k, v) in &self.headers {
            headers.append(k.clone(), v.clone());
        }
        res.extensions_mut().insert(self);
        res
    }
}
