//! A small adapter from an async closure over parsed JSON-RPC to the handler service the
//! transport expects — so examples and simple servers need no web framework.
//!
//! It is a convenience, not an MCP framework: the closure sees every method and decides.
//!
//! # Example
//!
//! ```
//! use mcp_affinity::handler::{handler_fn, ErrorObject};
//! use serde_json::json;
//!
//! let handler = handler_fn(|req, _cx| async move {
//!     match req.method.as_str() {
//!         "ping" => Ok(json!({})),
//!         "tools/list" => Ok(json!({"tools": []})),
//!         other => Err(ErrorObject::method_not_found(other)),
//!     }
//! });
//! # let _ = handler;
//! ```

use std::{
    convert::Infallible,
    fmt,
    future::Future,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header, request::Parts};
use http_body::Body;
use http_body_util::BodyExt;
use serde::Serialize;
use serde_json::Value;
use tower_service::Service;

use crate::{
    BoxError,
    protocol::{Message, RequestId, codes},
    session::{RequestContext, Session},
};

/// A JSON-RPC request or notification as the closure sees it.
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # use http_body_util::BodyExt;
/// # use tower::{Service, ServiceExt};
/// use mcp_affinity::handler::{handler_fn, ErrorObject};
/// use serde_json::json;
///
/// let handler = handler_fn(|req, _cx| async move {
///     if req.method == "initialize" {
///         return Ok(json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}}));
///     }
///     match (req.method.as_str(), req.params.get("name")) {
///         ("tools/call", Some(name)) => Ok(json!({"called": name})),
///         _ => Err(ErrorObject::invalid_params("missing name")),
///     }
/// });
/// # let mut svc = tower::Layer::layer(&mcp_affinity::SseTransportLayer::new(), handler);
/// # let post = |body: &str, sid: Option<&str>| {
/// #     let mut b = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json");
/// #     if let Some(sid) = sid { b = b.header("mcp-session-id", sid).header("mcp-protocol-version", "2025-11-25"); }
/// #     b.body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap()
/// # };
/// # let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
/// # let res = ServiceExt::<http::Request<http_body_util::Full<bytes::Bytes>>>::ready(&mut svc).await.unwrap().call(post(init, None)).await.unwrap();
/// # let sid = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
/// # let mut send = async |body: &str| {
/// #     let res = ServiceExt::<http::Request<http_body_util::Full<bytes::Bytes>>>::ready(&mut svc).await.unwrap().call(post(body, Some(&sid))).await.unwrap();
/// #     let bytes = res.into_body().collect().await.unwrap().to_bytes();
/// #     String::from_utf8(bytes.to_vec()).unwrap()
/// # };
/// let called = send(r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo"}}"#).await;
/// assert!(called.contains(r#""called":"echo""#), "{called}");
/// let refused = send(r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{}}"#).await;
/// assert!(refused.contains("-32602"), "{refused}");
/// # }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct HandlerRequest {
    /// The id (`None` for a notification).
    pub id: Option<RequestId>,
    /// The method.
    pub method: String,
    /// The params (`Value::Null` when absent).
    pub params: Value,
    /// The HTTP request's parts: headers and extensions (e.g. set by an auth layer).
    pub parts: Parts,
}

impl HandlerRequest {
    /// The session (legacy era).
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use http_body_util::BodyExt;
    /// # use tower::{Service, ServiceExt};
    /// use mcp_affinity::handler::handler_fn;
    /// use serde_json::json;
    ///
    /// let handler = handler_fn(|req, _cx| async move {
    ///     if req.method == "initialize" {
    ///         return Ok(json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}}));
    ///     }
    ///     // Count calls per session; modern-era requests have no session.
    ///     let n = req.session().map_or(0, |s| s.get::<u32>().unwrap_or(0) + 1);
    ///     if let Some(s) = req.session() {
    ///         s.insert(n);
    ///     }
    ///     Ok(json!({"calls": n}))
    /// });
    /// # let mut svc = tower::Layer::layer(&mcp_affinity::SseTransportLayer::new(), handler);
    /// # let post = |body: &str, sid: Option<&str>| {
    /// #     let mut b = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json");
    /// #     if let Some(sid) = sid { b = b.header("mcp-session-id", sid).header("mcp-protocol-version", "2025-11-25"); }
    /// #     b.body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap()
    /// # };
    /// # let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let res = ServiceExt::<http::Request<http_body_util::Full<bytes::Bytes>>>::ready(&mut svc).await.unwrap().call(post(init, None)).await.unwrap();
    /// # let sid = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    /// # let mut send = async |body: &str| {
    /// #     let res = ServiceExt::<http::Request<http_body_util::Full<bytes::Bytes>>>::ready(&mut svc).await.unwrap().call(post(body, Some(&sid))).await.unwrap();
    /// #     let bytes = res.into_body().collect().await.unwrap().to_bytes();
    /// #     String::from_utf8(bytes.to_vec()).unwrap()
    /// # };
    /// let ping = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
    /// assert!(send(ping).await.contains(r#""calls":1"#));
    /// assert!(send(ping).await.contains(r#""calls":2"#));
    /// # }
    /// ```
    pub fn session(&self) -> Option<&Session> {
        self.parts.extensions.get::<Session>()
    }

    /// `params._meta.progressToken`, if the client asked for progress notifications.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use http_body_util::BodyExt;
    /// # use tower::{Service, ServiceExt};
    /// use mcp_affinity::handler::handler_fn;
    /// use serde_json::json;
    ///
    /// let handler = handler_fn(|req, cx| async move {
    ///     if req.method == "initialize" {
    ///         return Ok(json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}}));
    ///     }
    ///     if let Some(token) = req.progress_token() {
    ///         let _ = cx.notify("notifications/progress", Some(json!({"progressToken": token, "progress": 1})));
    ///     }
    ///     Ok(json!({}))
    /// });
    /// # let mut svc = tower::Layer::layer(&mcp_affinity::SseTransportLayer::new(), handler);
    /// # let post = |body: &str, sid: Option<&str>| {
    /// #     let mut b = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json");
    /// #     if let Some(sid) = sid { b = b.header("mcp-session-id", sid).header("mcp-protocol-version", "2025-11-25"); }
    /// #     b.body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap()
    /// # };
    /// # let init = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let res = ServiceExt::<http::Request<http_body_util::Full<bytes::Bytes>>>::ready(&mut svc).await.unwrap().call(post(init, None)).await.unwrap();
    /// # let sid = res.headers()["mcp-session-id"].to_str().unwrap().to_owned();
    /// # let mut send = async |body: &str| {
    /// #     let res = ServiceExt::<http::Request<http_body_util::Full<bytes::Bytes>>>::ready(&mut svc).await.unwrap().call(post(body, Some(&sid))).await.unwrap();
    /// #     let bytes = res.into_body().collect().await.unwrap().to_bytes();
    /// #     String::from_utf8(bytes.to_vec()).unwrap()
    /// # };
    /// // With a token the answer streams (SSE): the progress notification, then the result.
    /// let sse = send(r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"t","_meta":{"progressToken":"p1"}}}"#).await;
    /// assert!(sse.contains(r#""progressToken":"p1""#), "{sse}");
    /// // Without one, a plain JSON answer.
    /// let json = send(r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"t"}}"#).await;
    /// assert!(!json.contains("notifications/progress"), "{json}");
    /// # }
    /// ```
    pub fn progress_token(&self) -> Option<&Value> {
        self.params.get("_meta")?.get("progressToken")
    }
}

/// A JSON-RPC error object.
///
/// # Example
///
/// ```
/// use mcp_affinity::handler::ErrorObject;
/// let e = ErrorObject::method_not_found("nope");
/// assert_eq!(e.code, -32601);
/// ```
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorObject {
    /// The code.
    pub code: i64,
    /// The message.
    pub message: String,
    /// Optional data.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

impl ErrorObject {
    /// An error with a code and message.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::handler::ErrorObject;
    /// let e = ErrorObject::new(-32000, "busy");
    /// assert_eq!(e.to_string(), "busy (-32000)");
    /// assert_eq!((e.code, e.message.as_str(), e.data), (-32000, "busy", None));
    /// ```
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// Adds `data`.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::handler::ErrorObject;
    /// use serde_json::json;
    /// let e = ErrorObject::internal("boom").with_data(json!({"retry": true}));
    /// assert_eq!(
    ///     serde_json::to_value(&e).unwrap(),
    ///     json!({"code": -32603, "message": "boom", "data": {"retry": true}})
    /// );
    /// ```
    #[must_use]
    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    /// `-32601` method not found.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::handler::ErrorObject;
    /// let e = ErrorObject::method_not_found("tools/frobnicate");
    /// assert_eq!(e.code, -32601);
    /// assert_eq!(e.message, "method not found: tools/frobnicate");
    /// ```
    pub fn method_not_found(method: &str) -> Self {
        Self::new(
            codes::METHOD_NOT_FOUND,
            format!("method not found: {method}"),
        )
    }

    /// `-32602` invalid params.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::handler::ErrorObject;
    /// let e = ErrorObject::invalid_params("name is required");
    /// assert_eq!((e.code, e.message.as_str()), (-32602, "name is required"));
    /// ```
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID_PARAMS, message)
    }

    /// `-32603` internal error.
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::handler::ErrorObject;
    /// let e = ErrorObject::internal("database down");
    /// assert_eq!((e.code, e.message.as_str()), (-32603, "database down"));
    /// ```
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(codes::INTERNAL_ERROR, message)
    }
}

impl fmt::Display for ErrorObject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

impl std::error::Error for ErrorObject {}

/// Builds a handler service from an async closure; see the [module docs](self).
///
/// The closure is called in [`Service::call`] (under this crate's transport, where the parsed
/// message is in the request's extensions) and its future is polled by the returned
/// [`HandlerFuture`]. A panic in the closure is answered with a JSON-RPC internal error
/// (`-32603`; for a notification, under an HTTP `500`); under this crate's transport, so is a
/// panic in the future or while its answer is read (a failed `initialize` leaves no session).
///
/// # Example
///
/// ```
/// use mcp_affinity::handler::handler_fn;
/// use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc = handler_fn(|_req, _cx| async { Ok(serde_json::json!({})) });
/// // A body that is not JSON is answered with a JSON-RPC parse error.
/// let req = http::Request::new(http_body_util::Full::new(bytes::Bytes::from("nope")));
/// let res = svc.oneshot(req).await.unwrap();
/// assert_eq!(res.status(), http::StatusCode::BAD_REQUEST);
/// # }
/// ```
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(HandlerRequest, RequestContext) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Value, ErrorObject>> + Send + 'static,
{
    HandlerFn { f }
}

/// The service made by [`handler_fn`].
///
/// # Example
///
/// ```
/// use mcp_affinity::handler::{handler_fn, HandlerFn};
/// use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let svc: HandlerFn<_> = handler_fn(|_req, _cx| async { Ok(serde_json::json!({})) });
/// // Outside the transport there is no `RequestContext`: an internal error.
/// let body = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
/// let req = http::Request::new(http_body_util::Full::new(bytes::Bytes::from(body)));
/// let res = svc.oneshot(req).await.unwrap();
/// assert_eq!(res.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
/// # }
/// ```
#[derive(Clone)]
pub struct HandlerFn<F> {
    f: F,
}

impl<F> fmt::Debug for HandlerFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerFn").finish_non_exhaustive()
    }
}

/// The future of [`HandlerFn`].
///
/// # Example
///
/// ```
/// use mcp_affinity::handler::{handler_fn, HandlerFuture};
/// use tower_service::Service;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut svc = handler_fn(|_req, _cx| async { Ok(serde_json::json!({})) });
/// let req = http::Request::new(http_body_util::Full::new(bytes::Bytes::from("{")));
/// let fut: HandlerFuture = svc.call(req);
/// assert_eq!(fut.await.unwrap().status(), http::StatusCode::BAD_REQUEST);
/// # }
/// ```
pub struct HandlerFuture {
    inner: Pin<Box<dyn Future<Output = Result<Response<HandlerBody>, Infallible>> + Send>>,
}

impl fmt::Debug for HandlerFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerFuture").finish_non_exhaustive()
    }
}

impl Future for HandlerFuture {
    type Output = Result<Response<HandlerBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// The response body of [`HandlerFn`]: one JSON document.
///
/// # Example
///
/// ```
/// use http_body::Body;
/// use mcp_affinity::handler::HandlerBody;
/// let body = HandlerBody::new(bytes::Bytes::from_static(b"{}"));
/// assert_eq!(body.size_hint().exact(), Some(2));
/// ```
pub type HandlerBody = http_body_util::Full<Bytes>;

fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<HandlerBody> {
    let mut res = Response::new(HandlerBody::new(body.into()));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

impl<F, Fut, B> Service<Request<B>> for HandlerFn<F>
where
    F: Fn(HandlerRequest, RequestContext) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<Value, ErrorObject>> + Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<HandlerBody>;
    type Error = Infallible;
    type Future = HandlerFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        // Under this crate's transport the parsed message is in the extensions, and the
        // request is prepared here, before the future exists: the boxed future then holds the
        // handler's own future and the request id, not the request a second time.
        let inner: Pin<Box<dyn Future<Output = _> + Send>> =
            match parts.extensions.remove::<Message>() {
                Some(msg) => Box::pin(respond(&self.f, msg, parts)),
                None => {
                    let f = self.f.clone();
                    Box::pin(async move {
                        let bytes = body
                            .collect()
                            .await
                            .map(|c| c.to_bytes())
                            .unwrap_or_default();
                        match Message::parse(&bytes) {
                            Ok(msg) => respond(&f, msg, parts).await,
                            Err(_) => {
                                let e = crate::protocol::error_body(
                                    None,
                                    codes::PARSE_ERROR,
                                    "parse error",
                                    None,
                                );
                                Ok(json(StatusCode::BAD_REQUEST, e))
                            }
                        }
                    })
                }
            };
        HandlerFuture { inner }
    }
}

/// Builds the [`HandlerRequest`] for `msg` and calls `f` with it; the future answers with
/// the JSON-RPC response (or `202` for a notification).
fn respond<F, Fut>(f: &F, msg: Message, parts: Parts) -> Respond<Fut>
where
    F: Fn(HandlerRequest, RequestContext) -> Fut,
    Fut: Future<Output = Result<Value, ErrorObject>>,
{
    let Some(cx) = parts.extensions.get::<RequestContext>().cloned() else {
        let e = crate::protocol::error_body(
            msg.id(),
            codes::INTERNAL_ERROR,
            "no transport context",
            None,
        );
        return Respond::Done {
            res: Some(json(StatusCode::INTERNAL_SERVER_ERROR, e)),
        };
    };
    let params = msg
        .params()
        .and_then(|p| serde_json::from_str(p.get()).ok())
        .unwrap_or(Value::Null);
    let request = HandlerRequest {
        id: msg.id().cloned(),
        method: msg.into_method().unwrap_or_default(),
        params,
        parts,
    };
    let id = request.id.clone();
    // A closure that panics before it returns its future is answered like a future that
    // panics (the transport catches those): an internal error, under a `500` for a
    // notification (which has no JSON-RPC answer to carry it).
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(request, cx))) {
        Ok(fut) => Respond::Call { fut, id },
        Err(_) => {
            tracing::error!("handler panicked");
            let (status, body) = crate::protocol::internal_error(id.as_ref());
            Respond::Done {
                res: Some(json(status, body)),
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The handler's future, then its result as a JSON-RPC response. Hand-written: an
    /// `async` block would hold the handler's future twice (captured, and awaited).
    #[project = RespondProj]
    enum Respond<Fut> {
        Call { #[pin] fut: Fut, id: Option<RequestId> },
        Done { res: Option<Response<HandlerBody>> },
    }
}

impl<Fut> Future for Respond<Fut>
where
    Fut: Future<Output = Result<Value, ErrorObject>>,
{
    type Output = Result<Response<HandlerBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let res = match self.as_mut().project() {
            RespondProj::Call { fut, id } => {
                let out = std::task::ready!(fut.poll(cx));
                encode(id.take(), &out)
            }
            // Polled again after it answered: an empty 500 rather than a panic.
            RespondProj::Done { res } => {
                return Poll::Ready(Ok(res
                    .take()
                    .unwrap_or_else(|| json(StatusCode::INTERNAL_SERVER_ERROR, Vec::new()))));
            }
        };
        // The handler's future is finished: drop it, so a further poll never resumes it.
        self.set(Self::Done { res: None });
        Poll::Ready(Ok(res))
    }
}

/// The handler's result as the JSON-RPC response to request `id` (`202` for a notification).
fn encode(id: Option<RequestId>, out: &Result<Value, ErrorObject>) -> Response<HandlerBody> {
    let Some(id) = id else {
        let mut res = Response::new(HandlerBody::default());
        *res.status_mut() = StatusCode::ACCEPTED;
        return res;
    };
    // The envelope is written around the serialised id and result rather than derived: the
    // fixed keys then cost a copy each instead of an escaped write (one per response).
    let mut body = Vec::with_capacity(96);
    body.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
    let written = serde_json::to_writer(&mut body, &id).and_then(|()| match out {
        Ok(v) => {
            body.extend_from_slice(br#","result":"#);
            serde_json::to_writer(&mut body, v)
        }
        Err(e) => {
            body.extend_from_slice(br#","error":"#);
            serde_json::to_writer(&mut body, e)
        }
    });
    if written.is_err() {
        // Only a `Serialize` impl that fails can get here (a `Value` never does).
        body.clear();
    } else {
        body.push(b'}');
    }
    json(StatusCode::OK, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(res: Response<HandlerBody>) -> String {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let bytes = rt.block_on(res.into_body().collect()).unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn encode_writes_the_jsonrpc_envelope() {
        let ok = encode(
            Some(RequestId::Number(7)),
            &Ok(serde_json::json!({"a": [1]})),
        );
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(ok.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(body(ok), r#"{"jsonrpc":"2.0","id":7,"result":{"a":[1]}}"#);

        let err = encode(
            Some(RequestId::from("q\"1")),
            &Err(ErrorObject::method_not_found("nope")),
        );
        let v: Value = serde_json::from_str(&body(err)).unwrap();
        assert_eq!(v["jsonrpc"], "2.0");
        assert_eq!(v["id"], "q\"1");
        assert_eq!(v["error"]["code"], -32601);
        assert!(v.get("result").is_none());

        let note = encode(None, &Ok(Value::Null));
        assert_eq!(note.status(), StatusCode::ACCEPTED);
        assert!(body(note).is_empty());
    }
}
