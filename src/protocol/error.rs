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
    refusal: Option<super::Refusal>,
}

impl Rejection {
    /// A rejection with a status, a JSON-RPC code and a message.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use mcp_affinity::protocol::{codes, Rejection};
    ///
    /// let r = Rejection::new(StatusCode::BAD_REQUEST, codes::INVALID_REQUEST, "bad request");
    /// assert_eq!((r.status(), r.code(), r.message()), (StatusCode::BAD_REQUEST, -32600, "bad request"));
    /// ```
    pub fn new(status: StatusCode, code: i64, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
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
    /// use mcp_affinity::protocol::{codes, Rejection};
    /// use serde_json::json;
    ///
    /// let r = Rejection::new(StatusCode::BAD_REQUEST, codes::UNSUPPORTED_PROTOCOL_VERSION, "unsupported")
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
    /// use mcp_affinity::protocol::{codes, Rejection};
    /// use mcp_affinity::protocol::RequestId;
    ///
    /// let r = Rejection::new(StatusCode::BAD_REQUEST, codes::INVALID_PARAMS, "bad _meta")
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
    /// use mcp_affinity::protocol::{codes, Rejection};
    /// use http::{header, HeaderValue};
    ///
    /// let r = Rejection::new(StatusCode::METHOD_NOT_ALLOWED, codes::INVALID_REQUEST, "use POST")
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
    /// use mcp_affinity::protocol::{codes, Refusal, Rejection};
    ///
    /// let r = Rejection::new(StatusCode::FORBIDDEN, codes::INVALID_REQUEST, "origin not allowed")
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
    /// use mcp_affinity::protocol::{codes, Rejection};
    ///
    /// let r = Rejection::new(StatusCode::NOT_FOUND, codes::SESSION_NOT_FOUND, "session not found");
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
    /// use mcp_affinity::protocol::{codes, Rejection};
    ///
    /// let r = Rejection::new(StatusCode::FORBIDDEN, codes::INVALID_REQUEST, "origin not allowed");
    /// assert_eq!(r.status(), StatusCode::FORBIDDEN);
    /// assert_eq!(r.into_response(|b| b).status(), StatusCode::FORBIDDEN);
    /// ```
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The JSON-RPC error code.
    ///
    /// # Example
    ///
    /// ```
    /// use http::StatusCode;
    /// use mcp_affinity::protocol::{codes, Rejection};
    ///
    /// let r = Rejection::new(StatusCode::NOT_FOUND, codes::SESSION_NOT_FOUND, "session not found");
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
    /// use mcp_affinity::protocol::{codes, Rejection};
    ///
    /// let r = Rejection::new(StatusCode::NOT_FOUND, codes::SESSION_NOT_FOUND, "session not found");
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
    /// use mcp_affinity::protocol::{codes, Rejection};
    /// use http::header;
    ///
    /// let r = Rejection::new(StatusCode::BAD_REQUEST, codes::INVALID_REQUEST, "bad");
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
        *res.status_mut() = self.status;
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
