//! The transport [`Service`]: its type, its dispatch by method, and the rejections it shares.

use std::{
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, header};
use http_body::Body;
use tower_service::Service;
use tracing::Instrument;

use super::{
    RequestBody, ResponseFuture, body::ResponseBody, delete::delete, get::get, layer::Shared,
    post::post, security::check_security,
};
use crate::{
    BoxError,
    protocol::{self, Rejection, RejectionKind, codes},
};

/// The MCP Streamable HTTP transport service. See [`SseTransportLayer`](super::SseTransportLayer)
/// and the [module docs](crate::transport).
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # use tower::{Layer, ServiceExt};
/// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
/// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
/// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
/// use mcp_affinity::SseTransport;
///
/// let svc = SseTransport::new(handler);
/// let res = svc.oneshot(post(INIT)).await.unwrap();
/// assert_eq!(res.status(), 200);
/// assert!(res.extensions().get::<mcp_affinity::session::Session>().is_some());
/// # }
/// ```
#[derive(Debug)]
pub struct SseTransport<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for SseTransport<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S> SseTransport<S> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// A transport with default settings around `inner`.
    ///
    /// Every call creates a new session table; use [`SseTransportLayer`](super::SseTransportLayer)
    /// to share one.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    /// use mcp_affinity::SseTransport;
    ///
    /// let svc = SseTransport::new(handler);
    /// let res = svc.oneshot(post(INIT)).await.unwrap();
    /// assert_eq!(res.headers()["content-type"], "application/json");
    /// # }
    /// ```
    pub fn new(inner: S) -> Self {
        tower_layer::Layer::layer(&super::SseTransportLayer::new(), inner)
    }

    /// The layer with default settings.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
    /// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
    /// use mcp_affinity::SseTransport;
    ///
    /// let layer = SseTransport::<()>::layer();
    /// let handle = layer.handle();
    /// let res = layer.layer(handler).oneshot(post(INIT)).await.unwrap();
    /// assert_eq!(res.status(), 200);
    /// assert_eq!(handle.session_count(), 1);
    /// # }
    /// ```
    pub fn layer() -> super::SseTransportLayer {
        super::SseTransportLayer::new()
    }

    crate::macros::define_inner_service_accessors!();
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for SseTransport<S>
where
    S: Service<Request<RequestBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (parts, body) = req.into_parts();
        // Before anything reads a header: a repeated one is ambiguous (see `protocol::single`).
        if let Err(r) = protocol::single::check(&parts.headers, &protocol::single::TRANSPORT) {
            return ResponseFuture::ready(reject(r));
        }
        if let Err(r) = check_security(&self.shared, &parts) {
            return ResponseFuture::ready(reject(r));
        }
        match parts.method {
            Method::POST => {
                // The ready service goes into the future; this service keeps the clone.
                // See https://docs.rs/tower/latest/tower/trait.Service.html#be-careful-when-cloning-inner-services
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                let shared = self.shared.clone();
                let span = tracing::debug_span!("mcp_post", era = tracing::field::Empty);
                ResponseFuture::boxed(post(shared, inner, parts, body).instrument(span))
            }
            Method::GET => get(&self.shared, parts),
            Method::DELETE => delete(&self.shared, parts),
            _ => ResponseFuture::ready(reject(method_not_allowed("GET, POST, DELETE"))),
        }
    }
}

pub(super) fn reject(r: Rejection) -> Response<ResponseBody> {
    crate::metrics::transport_rejected(&r);
    r.into_response(ResponseBody::full)
}

pub(super) fn method_not_allowed(allow: &'static str) -> Rejection {
    Rejection::new(
        RejectionKind::MethodNotAllowed,
        codes::INVALID_REQUEST,
        "method not allowed",
    )
    .with_header(header::ALLOW, HeaderValue::from_static(allow))
}

pub(super) fn respond(out: Result<Response<ResponseBody>, Rejection>) -> Response<ResponseBody> {
    out.unwrap_or_else(reject)
}

pub(super) fn bad_request(kind: RejectionKind, code: i64, msg: &'static str) -> Rejection {
    Rejection::new(kind, code, msg)
}
