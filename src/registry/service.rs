use std::{
    sync::Arc,
    task::{Context, Poll},
};

use http::{Method, Request, Response};
use tower_service::Service;

use super::{RegistryStore, ResponseFuture, future::PendingRemoval, queue::Core};
use crate::{
    protocol::headers,
    session::{SessionId, SessionIdEnvelope},
};

/// The registry service. See [`SessionRegistryLayer`](super::SessionRegistryLayer) and the
/// [module docs](crate::registry).
///
/// # Example
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # use std::time::Duration;
/// # use tower::{Layer, ServiceExt};
/// # let handler = mcp_affinity::handler::handler_fn(|_req, _cx| async { Ok(serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}})) });
/// # const INIT: &str = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
/// # let post = |body: &str| http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").header("mcp-protocol-version", "2025-11-25").body(http_body_util::Full::new(bytes::Bytes::from(body.to_owned()))).unwrap();
/// # const PING: &str = r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#;
/// # let app = mcp_affinity::SseTransportLayer::new().layer(handler);
/// use mcp_affinity::registry::{MemoryStore, SessionLookup, SessionRegistryLayer};
///
/// let svc = SessionRegistryLayer::new(MemoryStore::new(), "node-a").unwrap().layer(app);
/// let mut req = post(PING);
/// req.headers_mut().insert("mcp-session-id", "gone".parse().unwrap());
/// let res = svc.oneshot(req).await.unwrap();
/// assert_eq!(res.status(), 404);
/// assert_eq!(res.extensions().get::<SessionLookup>(), Some(&SessionLookup::Unknown));
/// # }
/// ```
pub struct SessionRegistry<S, R> {
    inner: S,
    core: Arc<Core<R>>,
}

impl<S: Clone, R> Clone for SessionRegistry<S, R> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            core: self.core.clone(),
        }
    }
}

impl<S: std::fmt::Debug, R> std::fmt::Debug for SessionRegistry<S, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRegistry")
            .field("inner", &self.inner)
            .field("node", &self.core.node)
            .finish_non_exhaustive()
    }
}

impl<S, R> SessionRegistry<S, R> {
    pub(crate) fn from_core(inner: S, core: Arc<Core<R>>) -> Self {
        Self { inner, core }
    }

    crate::macros::define_inner_service_accessors!();
}

/// What the future needs to know about the request.
#[derive(Debug)]
pub(crate) struct Ctx {
    /// The session id header the request carried, unchecked ([`Ctx::sid`] validates it): the
    /// header value itself (a reference-counted view of the request's bytes), no copy of the
    /// id on the hot path.
    sid: Option<http::HeaderValue>,
    /// The affinity layer's envelope (envelope mode only): records are keyed by the id the
    /// client uses, the *wire id*, which every node sees the same.
    envelope: Option<SessionIdEnvelope>,
    pub(crate) delete: bool,
}

impl Ctx {
    /// The request's session id as the inner service sees it, if it is a valid one (validated
    /// here, when a response needs it, rather than on every request).
    pub(crate) fn inner_sid(&self) -> Option<&str> {
        self.sid
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .filter(|s| SessionId::is_valid(s))
    }

    /// The request's session id as the client sent it (the wire id: what records are keyed
    /// by), if it is a valid one.
    pub(crate) fn sid(&self) -> Option<&str> {
        match self.envelope.as_ref().and_then(SessionIdEnvelope::wire_id) {
            Some(wire) => Some(wire).filter(|s| SessionId::is_valid(s)),
            None => self.inner_sid(),
        }
    }

    /// The wire id of a session id the inner service minted.
    pub(crate) fn wire_of(&self, minted: &str) -> Arc<str> {
        self.envelope
            .as_ref()
            .and_then(|e| e.wrap(minted))
            .map_or_else(|| minted.into(), Into::into)
    }

    pub(crate) fn envelope(&self) -> Option<&SessionIdEnvelope> {
        self.envelope.as_ref()
    }
}

/// Whether the request is of the modern (stateless) era, from the header alone.
fn is_modern(req_headers: &http::HeaderMap) -> bool {
    req_headers
        .get(headers::MCP_PROTOCOL_VERSION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(crate::protocol::is_modern_string)
}

impl<S, R, ReqBody, ResBody> Service<Request<ReqBody>> for SessionRegistry<S, R>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    ReqBody::Error: Into<crate::BoxError>,
    ResBody: Send + 'static,
    R: RegistryStore,
{
    type Response = Response<super::ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error, R>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        self.core.start();
        // Before the session id is read (and a DELETE's removal queued): with two copies, a
        // balancer in front and the node may disagree on the session.
        if let Err(r) =
            crate::protocol::single::check(req.headers(), &crate::protocol::single::ROUTING)
        {
            crate::metrics::duplicate_header(crate::metrics::Layer::Registry);
            return ResponseFuture::refused(r);
        }
        let sid = req.headers().get(headers::MCP_SESSION_ID).cloned();
        let ctx = Ctx {
            sid,
            // Taken, not cloned: nothing below the registry reads it.
            envelope: req.extensions_mut().remove::<SessionIdEnvelope>(),
            delete: req.method() == Method::DELETE,
        };
        if self.core.tracks_requests()
            && let Some(sid) = ctx.sid()
        {
            // Some sessions have no close hook: note the request for the idle bound.
            self.core.touch(sid);
        }
        if !ctx.delete && is_modern(req.headers()) {
            return ResponseFuture::passthrough(self.inner.call(req));
        }
        // ADR-0066: a DELETE removes the record whatever the local close returns (the session
        // may live on another node or in a previous process), but only once the inner service
        // has answered and did not refuse the request (a bad `Origin` or `Host`, another
        // principal: see `Refusal`). A client that hangs up before the answer still gets the
        // record removed: the pending removal is queued when the future is dropped.
        let removal = if ctx.delete {
            ctx.sid()
                .map(|sid| PendingRemoval::new(self.core.clone(), sid.into()))
        } else {
            None
        };
        if self.core.continuity.is_some()
            && let Some(sid) = ctx.sid()
            && !self.core.holds(sid)
        {
            // Not held here (the local view says so, without the store): forward, adopt, or
            // let the inner service answer its `404`. The ready service goes into the future.
            let clone = self.inner.clone();
            let inner = std::mem::replace(&mut self.inner, clone);
            return ResponseFuture::unheld(Box::pin(super::continuity::serve_unheld(
                self.core.clone(),
                inner,
                req,
                ctx,
                removal,
            )));
        }
        let fut = self.inner.call(req);
        ResponseFuture::new(fut, self.core.clone(), ctx, removal)
    }
}
