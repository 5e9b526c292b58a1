//! The per-request context handed to handlers in both eras.

use std::{fmt, future::Future, sync::Arc};

use serde_json::Value;

use super::{SendError, Session, send::encode_message};
use crate::{
    protocol::{Era, ProtocolVersion, RequestId},
    transport::log::{EventLog, STANDALONE},
};

/// The event log a stream lives in: a session's, or a modern request's own.
#[derive(Clone, Debug)]
pub(crate) enum LogRef {
    Session(Session),
    Own(Arc<EventLog>),
}

impl LogRef {
    pub(crate) fn log(&self) -> &EventLog {
        match self {
            Self::Session(s) => &s.inner.log,
            Self::Own(l) => l,
        }
    }
}

use LogRef as Target;

/// What the transport knows about one client message, put into the request extensions for the
/// handler: its era, JSON-RPC id, session (legacy) and a way to stream related messages.
///
/// Messages sent through it go on the request's own SSE stream: the first one turns the answer
/// from plain JSON into an SSE stream.
///
/// # Example
///
/// ```
/// use mcp_affinity::session::RequestContext;
/// use serde_json::json;
///
/// async fn handler(req: http::Request<()>) {
///     let cx = req.extensions().get::<RequestContext>().unwrap();
///     cx.notify("notifications/progress", Some(json!({"progressToken": 1, "progress": 50})))
///         .ok();
/// }
/// ```
#[derive(Clone)]
pub struct RequestContext {
    era: Era,
    version: Option<ProtocolVersion>,
    id: Option<RequestId>,
    target: Target,
    stream: Option<u32>,
}

impl fmt::Debug for RequestContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestContext")
            .field("era", &self.era)
            .field("id", &self.id)
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl RequestContext {
    pub(crate) fn legacy(
        session: Session,
        version: ProtocolVersion,
        id: Option<RequestId>,
        stream: Option<u32>,
    ) -> Self {
        Self {
            era: Era::Legacy,
            version: Some(version),
            id,
            target: Target::Session(session),
            stream,
        }
    }

    pub(crate) fn modern(log: Arc<EventLog>, id: Option<RequestId>, stream: Option<u32>) -> Self {
        Self {
            era: Era::Modern,
            version: Some(ProtocolVersion::V2026_07_28),
            id,
            target: Target::Own(log),
            stream,
        }
    }

    /// The era the request was classified into.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use std::sync::{Arc, Mutex};
    /// # use tower::{Layer, ServiceExt};
    /// # let slot = Arc::new(Mutex::new(None));
    /// # let init = serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}});
    /// # let (s2, i2) = (slot.clone(), init.clone());
    /// # let handler = mcp_affinity::handler::handler_fn(move |_req, cx| { *s2.lock().unwrap() = Some(cx); let init = i2.clone(); async move { Ok(init) } });
    /// # let svc = mcp_affinity::SseTransportLayer::new().layer(handler);
    /// # let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let req = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
    /// # let res = svc.oneshot(req).await.unwrap();
    /// # // The context of the `initialize` request, as the handler saw it.
    /// # let cx: mcp_affinity::session::RequestContext = slot.lock().unwrap().take().unwrap();
    /// use mcp_affinity::protocol::Era;
    /// assert_eq!(cx.era(), Era::Legacy);
    /// # }
    /// ```
    pub fn era(&self) -> Era {
        self.era
    }

    /// The protocol revision in force for this request.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use std::sync::{Arc, Mutex};
    /// # use tower::{Layer, ServiceExt};
    /// # let slot = Arc::new(Mutex::new(None));
    /// # let init = serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}});
    /// # let (s2, i2) = (slot.clone(), init.clone());
    /// # let handler = mcp_affinity::handler::handler_fn(move |_req, cx| { *s2.lock().unwrap() = Some(cx); let init = i2.clone(); async move { Ok(init) } });
    /// # let svc = mcp_affinity::SseTransportLayer::new().layer(handler);
    /// # let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let req = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
    /// # let res = svc.oneshot(req).await.unwrap();
    /// # // The context of the `initialize` request, as the handler saw it.
    /// # let cx: mcp_affinity::session::RequestContext = slot.lock().unwrap().take().unwrap();
    /// use mcp_affinity::protocol::ProtocolVersion;
    /// assert_eq!(cx.protocol_version(), Some(ProtocolVersion::V2025_11_25));
    /// # }
    /// ```
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// The JSON-RPC id of the request (`None` for a notification).
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use std::sync::{Arc, Mutex};
    /// # use tower::{Layer, ServiceExt};
    /// # let slot = Arc::new(Mutex::new(None));
    /// # let init = serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}});
    /// # let (s2, i2) = (slot.clone(), init.clone());
    /// # let handler = mcp_affinity::handler::handler_fn(move |_req, cx| { *s2.lock().unwrap() = Some(cx); let init = i2.clone(); async move { Ok(init) } });
    /// # let svc = mcp_affinity::SseTransportLayer::new().layer(handler);
    /// # let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let req = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
    /// # let res = svc.oneshot(req).await.unwrap();
    /// # // The context of the `initialize` request, as the handler saw it.
    /// # let cx: mcp_affinity::session::RequestContext = slot.lock().unwrap().take().unwrap();
    /// use mcp_affinity::protocol::RequestId;
    /// assert_eq!(cx.id(), Some(&RequestId::Number(1)));
    /// # }
    /// ```
    pub fn id(&self) -> Option<&RequestId> {
        self.id.as_ref()
    }

    /// The session (legacy era only).
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use std::sync::{Arc, Mutex};
    /// # use tower::{Layer, ServiceExt};
    /// # let slot = Arc::new(Mutex::new(None));
    /// # let init = serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}});
    /// # let (s2, i2) = (slot.clone(), init.clone());
    /// # let handler = mcp_affinity::handler::handler_fn(move |_req, cx| { *s2.lock().unwrap() = Some(cx); let init = i2.clone(); async move { Ok(init) } });
    /// # let svc = mcp_affinity::SseTransportLayer::new().layer(handler);
    /// # let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let req = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
    /// # let res = svc.oneshot(req).await.unwrap();
    /// # // The context of the `initialize` request, as the handler saw it.
    /// # let cx: mcp_affinity::session::RequestContext = slot.lock().unwrap().take().unwrap();
    /// let session = cx.session().unwrap();
    /// assert_eq!(res.headers()["mcp-session-id"], session.id().as_str());
    /// # }
    /// ```
    pub fn session(&self) -> Option<&Session> {
        match &self.target {
            Target::Session(s) => Some(s),
            Target::Own(_) => None,
        }
    }

    /// Sends a notification related to this request (progress, log message) on its stream.
    /// For a client notification (which has no stream) it goes to the session's standalone
    /// stream.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use std::sync::{Arc, Mutex};
    /// # use tower::{Layer, ServiceExt};
    /// # let slot = Arc::new(Mutex::new(None));
    /// # let init = serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}});
    /// # let (s2, i2) = (slot.clone(), init.clone());
    /// # let handler = mcp_affinity::handler::handler_fn(move |_req, cx| { *s2.lock().unwrap() = Some(cx); let init = i2.clone(); async move { Ok(init) } });
    /// # let svc = mcp_affinity::SseTransportLayer::new().layer(handler);
    /// # let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let req = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
    /// # let res = svc.oneshot(req).await.unwrap();
    /// # // The context of the `initialize` request, as the handler saw it.
    /// # let cx: mcp_affinity::session::RequestContext = slot.lock().unwrap().take().unwrap();
    /// use serde_json::json;
    ///
    /// let session = cx.session().unwrap();
    /// let (events, _) = session.buffered();
    /// cx.notify("notifications/message", Some(json!({"level": "info", "data": "hi"}))).unwrap();
    /// assert_eq!(session.buffered().0, events + 1);
    /// # }
    /// ```
    pub fn notify(&self, method: &str, params: Option<Value>) -> Result<(), SendError> {
        let data = encode_message(method, None, params.as_ref());
        match (&self.target, self.stream) {
            (Target::Session(s), stream) => {
                s.inner
                    .log
                    .append(stream.unwrap_or(STANDALONE), data, false)
            }
            (Target::Own(log), Some(stream)) => log.append(stream, data, false),
            (Target::Own(_), None) => return Err(SendError::NotSupported),
        }
        .map(drop)
        .map_err(Into::into)
    }

    /// Sends a server→client request related to this request (sampling, elicitation) on its
    /// stream and waits for the answer. Legacy era only: the modern era forbids independent
    /// requests on a response stream (use `input_required` results instead). As with
    /// [`Session::request`](crate::session::Session::request), dropping the future withdraws
    /// the request and frees its pending slot.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use std::sync::{Arc, Mutex};
    /// # use tower::{Layer, ServiceExt};
    /// # let slot = Arc::new(Mutex::new(None));
    /// # let init = serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}});
    /// # let (s2, i2) = (slot.clone(), init.clone());
    /// # let handler = mcp_affinity::handler::handler_fn(move |_req, cx| { *s2.lock().unwrap() = Some(cx); let init = i2.clone(); async move { Ok(init) } });
    /// # let svc = mcp_affinity::SseTransportLayer::new().layer(handler);
    /// # let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let req = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
    /// # let res = svc.oneshot(req).await.unwrap();
    /// # // The context of the `initialize` request, as the handler saw it.
    /// # let cx: mcp_affinity::session::RequestContext = slot.lock().unwrap().take().unwrap();
    /// use mcp_affinity::session::SendError;
    ///
    /// let answer = cx.request("roots/list", None);
    /// let session = cx.session().unwrap();
    /// assert_eq!(session.pending_requests(), 1);
    /// session.close();
    /// assert_eq!(answer.await, Err(SendError::Closed));
    /// # }
    /// ```
    pub fn request(
        &self,
        method: &str,
        params: Option<Value>,
    ) -> impl Future<Output = Result<Value, SendError>> + Send + 'static {
        let fut = match &self.target {
            Target::Session(s) => {
                Ok(s.request_on(self.stream.unwrap_or(STANDALONE), method, params))
            }
            Target::Own(_) => Err(SendError::NotSupported),
        };
        async move { fut?.await }
    }

    /// Closes the client's connection for this request's stream without ending the stream
    /// (SEP-1699 polling, `2025-11-25`): the client reconnects with `GET` + `Last-Event-ID` and
    /// receives what follows, including the final response. Returns `false` where that is not
    /// possible (modern era, where closing means cancellation, or older revisions without
    /// priming events).
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use std::sync::{Arc, Mutex};
    /// # use tower::{Layer, ServiceExt};
    /// # let slot = Arc::new(Mutex::new(None));
    /// # let init = serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}});
    /// # let (s2, i2) = (slot.clone(), init.clone());
    /// # let handler = mcp_affinity::handler::handler_fn(move |_req, cx| { *s2.lock().unwrap() = Some(cx); let init = i2.clone(); async move { Ok(init) } });
    /// # let svc = mcp_affinity::SseTransportLayer::new().layer(handler);
    /// # let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let req = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
    /// # let res = svc.oneshot(req).await.unwrap();
    /// # // The context of the `initialize` request, as the handler saw it.
    /// # let cx: mcp_affinity::session::RequestContext = slot.lock().unwrap().take().unwrap();
    /// // `initialize` is answered inline, without a stream of its own: nothing to close.
    /// assert!(!cx.close_stream());
    /// # }
    /// ```
    pub fn close_stream(&self) -> bool {
        match (&self.target, self.stream) {
            (Target::Session(s), Some(stream))
                if self.version.is_some_and(ProtocolVersion::primes_streams) =>
            {
                s.inner.log.force_sse(stream);
                s.inner.log.detach_reader(stream);
                true
            }
            _ => false,
        }
    }
}
