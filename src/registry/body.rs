use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::{BoxError, full_body::InnerOrFull};

/// The body of a response another node produced (a forwarded request), streamed through.
pub(crate) type ForwardedBody = http_body_util::combinators::BoxBody<Bytes, BoxError>;

pin_project! {
    /// Response body of [`SessionRegistry`](super::SessionRegistry): the inner service's body,
    /// or the registry's own JSON-RPC error (an enriched `404`, a fail-closed `503`).
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
    /// use http_body_util::BodyExt;
    /// use mcp_affinity::registry::{MemoryStore, SessionRegistryLayer};
    ///
    /// let svc = SessionRegistryLayer::new(MemoryStore::new(), "node-a").unwrap().layer(app);
    /// let mut req = post(PING);
    /// req.headers_mut().insert("mcp-session-id", "gone".parse().unwrap());
    /// let body = svc.oneshot(req).await.unwrap().into_body().collect().await.unwrap().to_bytes();
    /// let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    /// assert_eq!(v["error"]["code"], -32001);
    /// assert_eq!(v["error"]["data"]["reason"], "unknown");
    /// # }
    /// ```
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        Local { #[pin] body: InnerOrFull<B> },
        Forwarded { body: ForwardedBody },
    }
}

impl<B> std::fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn inner(body: B) -> Self {
        Self {
            kind: Kind::Local {
                body: InnerOrFull::inner(body),
            },
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Local {
                body: InnerOrFull::full(data),
            },
        }
    }

    /// The owner's answer to a forwarded request.
    #[cfg_attr(not(feature = "forward"), allow(dead_code))]
    pub(crate) fn forwarded(body: ForwardedBody) -> Self {
        Self {
            kind: Kind::Forwarded { body },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            KindProj::Local { body } => body.poll_frame(cx).map_err(Into::into),
            KindProj::Forwarded { body } => Pin::new(body).poll_frame(cx),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Local { body } => body.is_end_stream(),
            Kind::Forwarded { body } => body.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Local { body } => body.size_hint(),
            Kind::Forwarded { body } => body.size_hint(),
        }
    }
}
