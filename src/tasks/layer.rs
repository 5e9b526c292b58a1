//! `TaskLayer`: answers `tasks/*` and advertises the extension, in front of the handler.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use serde_json::Value;
use tower_layer::Layer;
use tower_service::Service;

use super::{TaskManager, Tasks};
use crate::{
    BoxError,
    handler::ErrorObject,
    protocol::{Era, Message, RequestId},
    session::RequestContext,
    transport::PrincipalExtractor,
};

/// The largest `server/discover` answer the layer rewrites to add its advertisement.
const MAX_DISCOVER_BYTES: usize = 1 << 20;

/// Serves the Tasks extension (SEP-2663) for the handler it wraps, on the `2026-07-28` wire
/// only: it sits between [`SseTransportLayer`](crate::SseTransportLayer) and the handler.
///
/// - `tasks/get`, `tasks/update` and `tasks/cancel` are answered here from the
///   [`TaskManager`] (never reaching the handler); `-32021` when the request did not opt in;
///   `tasks/result`, `tasks/list` and any other `tasks/` method get `-32601`.
/// - A `server/discover` answer gets `capabilities.extensions["io.modelcontextprotocol/tasks"]`.
/// - Every other modern request reaches the handler with a [`Tasks`] handle in its
///   extensions (whether the request opted in, and how to start a task).
/// - Legacy-era requests pass through untouched: the extension is not defined there.
///
/// The `Mcp-Name` = `taskId` check (`-32020`) is the transport's, as for every routed method.
///
/// # Order
///
/// Inside the transport (it reads the transport's [`RequestContext`] and parsed message),
/// directly around the handler.
///
/// # Backpressure
///
/// `poll_ready` forwards the handler's; a `tasks/*` answered here keeps that reservation
/// unused (tower #408), as every short-circuiting layer does.
///
/// # Example
///
/// ```
/// use mcp_affinity::{
///     handler::handler_fn,
///     tasks::{MemoryTaskStore, TaskLayer, TaskManager},
///     SseTransportLayer,
/// };
/// use tower::ServiceBuilder;
///
/// let tasks = TaskManager::builder("n1", MemoryTaskStore::new()).build().unwrap();
/// let svc = ServiceBuilder::new()
///     .layer(SseTransportLayer::new())
///     .layer(TaskLayer::new(tasks))
///     .service(handler_fn(|_req, _cx| async { Ok(serde_json::json!({})) }));
/// # let _ = svc;
/// ```
#[derive(Clone)]
#[must_use]
pub struct TaskLayer {
    manager: TaskManager,
    principal: Option<Arc<dyn PrincipalExtractor>>,
}

impl fmt::Debug for TaskLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskLayer")
            .field("manager", &self.manager)
            .field("principal", &self.principal.is_some())
            .finish()
    }
}

impl TaskLayer {
    /// A layer serving `manager`'s tasks. Every clone and every service it makes share it.
    ///
    /// # Example
    ///
    /// See [`TaskLayer`].
    ///
    /// ```
    /// use mcp_affinity::tasks::{MemoryTaskStore, TaskLayer, TaskManager};
    /// let layer = TaskLayer::new(TaskManager::builder("n1", MemoryTaskStore::new()).build().unwrap());
    /// # let _ = layer;
    /// ```
    pub fn new(manager: TaskManager) -> Self {
        Self {
            manager,
            principal: None,
        }
    }

    /// Binds each task to the principal that created it (the same extractor as the
    /// transport's [`with_principal`](crate::transport::SseTransportBuilder::with_principal)):
    /// another principal's `tasks/*` get the answer for an unknown task (`-32602`).
    ///
    /// # Example
    ///
    /// ```
    /// use mcp_affinity::tasks::{MemoryTaskStore, TaskLayer, TaskManager};
    /// let layer = TaskLayer::new(TaskManager::builder("n1", MemoryTaskStore::new()).build().unwrap())
    ///     .with_principal(|parts: &http::request::Parts| {
    ///         parts.headers.get("x-user").and_then(|v| v.to_str().ok()).map(str::to_owned)
    ///     });
    /// # let _ = layer;
    /// ```
    pub fn with_principal(mut self, extractor: impl PrincipalExtractor) -> Self {
        self.principal = Some(Arc::new(extractor));
        self
    }
}

impl<S> Layer<S> for TaskLayer {
    type Service = TaskService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        TaskService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`TaskLayer`]; see there.
///
/// # Example
///
/// ```
/// use mcp_affinity::{handler::handler_fn, tasks::{MemoryTaskStore, TaskLayer, TaskManager, TaskService}};
/// use tower::Layer;
///
/// let layer = TaskLayer::new(TaskManager::builder("n1", MemoryTaskStore::new()).build().unwrap());
/// let svc: TaskService<_> = layer.layer(handler_fn(|_req, _cx| async { Ok(serde_json::json!({})) }));
/// let _handler = svc.into_inner();
/// ```
#[derive(Clone, Debug)]
pub struct TaskService<S> {
    inner: S,
    layer: TaskLayer,
}

impl<S> TaskService<S> {
    /// The wrapped service.
    ///
    /// # Example
    ///
    /// See [`TaskService`].
    ///
    /// ```
    /// # use mcp_affinity::tasks::TaskService;
    /// fn inner<S>(svc: &TaskService<S>) -> &S { svc.get_ref() }
    /// # let _ = inner::<()>;
    /// ```
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service, mutably.
    ///
    /// # Example
    ///
    /// ```
    /// # use mcp_affinity::tasks::TaskService;
    /// fn inner<S>(svc: &mut TaskService<S>) -> &mut S { svc.get_mut() }
    /// # let _ = inner::<()>;
    /// ```
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The wrapped service, by value.
    ///
    /// # Example
    ///
    /// ```
    /// # use mcp_affinity::tasks::TaskService;
    /// fn inner<S>(svc: TaskService<S>) -> S { svc.into_inner() }
    /// # let _ = inner::<()>;
    /// ```
    pub fn into_inner(self) -> S {
        self.inner
    }
}

type Boxed<B, E> = Pin<Box<dyn Future<Output = Result<Response<ResponseBody<B>>, E>> + Send>>;

pin_project_lite::pin_project! {
    /// The future of [`TaskService`].
    pub struct ResponseFuture<F, B, E> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project_lite::pin_project! {
    #[project = KindProj]
    enum Kind<F, B, E> {
        Inner { #[pin] fut: F },
        Boxed { fut: Boxed<B, E> },
    }
}

impl<F, B, E> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { fut } => fut
                .poll(cx)
                .map(|r| r.map(|res| res.map(ResponseBody::inner))),
            KindProj::Boxed { fut } => fut.as_mut().poll(cx),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response body of [`TaskService`]: the handler's, or one JSON document written by
    /// the layer.
    pub struct ResponseBody<B> {
        #[pin]
        kind: BodyKind<B>,
    }
}

pin_project_lite::pin_project! {
    #[project = BodyProj]
    enum BodyKind<B> {
        Inner { #[pin] body: B },
        Full { body: http_body_util::Full<Bytes> },
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}

impl<B> ResponseBody<B> {
    fn inner(body: B) -> Self {
        Self {
            kind: BodyKind::Inner { body },
        }
    }

    fn full(bytes: Bytes) -> Self {
        Self {
            kind: BodyKind::Full {
                body: http_body_util::Full::new(bytes),
            },
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

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project().kind.project() {
            BodyProj::Inner { body } => body.poll_frame(cx).map_err(Into::into),
            BodyProj::Full { body } => Pin::new(body).poll_frame(cx).map_err(|e| match e {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            BodyKind::Inner { body } => body.is_end_stream(),
            BodyKind::Full { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            BodyKind::Inner { body } => body.size_hint(),
            BodyKind::Full { body } => body.size_hint(),
        }
    }
}

impl<S, B, ResBody> Service<Request<B>> for TaskService<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let modern = req
            .extensions()
            .get::<RequestContext>()
            .is_some_and(|cx| cx.era() == Era::Modern);
        let Some(msg) = req.extensions().get::<Message>().filter(|_| modern) else {
            return self.pass(req);
        };
        let method = msg.method().unwrap_or_default().to_owned();
        let params: Value = msg
            .params()
            .and_then(|p| serde_json::from_str(p.get()).ok())
            .unwrap_or(Value::Null);
        let id = msg.id().cloned();
        let requested = TaskManager::requested(&params);
        let (parts, body) = req.into_parts();
        let principal = self
            .layer
            .principal
            .as_ref()
            .and_then(|p| p.principal(&parts));
        let mut req = Request::from_parts(parts, body);
        if method.starts_with("tasks/") {
            let Some(id) = id else {
                // A notification in the tasks namespace: nothing to answer.
                return self.pass(req);
            };
            if matches!(
                method.as_str(),
                "tasks/get" | "tasks/update" | "tasks/cancel"
            ) && !requested
            {
                return ResponseFuture::ready(json_answer(
                    Some(&id),
                    Err(TaskManager::required_error()),
                ));
            }
            let manager = self.layer.manager.clone();
            return ResponseFuture::boxed(async move {
                let out = manager.answer(&method, &params, principal.as_deref()).await;
                Ok(json_answer(Some(&id), out))
            });
        }
        let discover = method == "server/discover";
        req.extensions_mut().insert(Tasks::new(
            self.layer.manager.clone(),
            requested,
            principal.map(Arc::from),
        ));
        let fut = self.inner.call(req);
        if !discover {
            return ResponseFuture {
                kind: Kind::Inner { fut },
            };
        }
        ResponseFuture::boxed(async move {
            let res = fut.await?;
            Ok(advertise(res).await)
        })
    }
}

impl<S> TaskService<S> {
    fn pass<B, ResBody>(&mut self, req: Request<B>) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Service<Request<B>, Response = Response<ResBody>>,
    {
        ResponseFuture {
            kind: Kind::Inner {
                fut: self.inner.call(req),
            },
        }
    }
}

impl<F, B, E> ResponseFuture<F, B, E> {
    fn boxed(
        fut: impl Future<Output = Result<Response<ResponseBody<B>>, E>> + Send + 'static,
    ) -> Self {
        Self {
            kind: Kind::Boxed { fut: Box::pin(fut) },
        }
    }

    fn ready(res: Response<ResponseBody<B>>) -> Self
    where
        B: Send + 'static,
        E: Send + 'static,
    {
        Self::boxed(std::future::ready(Ok(res)))
    }
}

/// A JSON-RPC response to `id` as an `application/json` 200 (the transport maps the codes the
/// modern era gives a status of their own: `-32601` 404, `-32602`/`-32021` 400).
fn json_answer<B>(
    id: Option<&RequestId>,
    out: Result<Value, ErrorObject>,
) -> Response<ResponseBody<B>> {
    let body = match out {
        Ok(result) => serde_json::to_vec(&serde_json::json!({
            "jsonrpc": "2.0", "id": id, "result": result
        }))
        .map(Bytes::from)
        .unwrap_or_default(),
        Err(e) => crate::protocol::error_body(id, e.code, &e.message, e.data.as_ref()),
    };
    let mut res = Response::new(ResponseBody::full(body));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}

/// Adds the extension to a JSON `server/discover` result; any other answer is passed on as
/// it came (read into memory: it is one small document).
async fn advertise<B>(res: Response<B>) -> Response<ResponseBody<B>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let small = res
        .body()
        .size_hint()
        .upper()
        .is_some_and(|n| n <= MAX_DISCOVER_BYTES as u64);
    if res.status() != StatusCode::OK || !json || !small {
        return res.map(ResponseBody::inner);
    }
    let (mut parts, body) = res.into_parts();
    let Ok(collected) = body.collect().await else {
        parts.status = StatusCode::INTERNAL_SERVER_ERROR;
        return Response::from_parts(parts, ResponseBody::full(Bytes::new()));
    };
    let bytes = collected.to_bytes();
    let rewritten = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .and_then(|mut v| {
            let caps = v.get_mut("result")?.get_mut("capabilities")?;
            TaskManager::advertise(caps);
            serde_json::to_vec(&v).ok()
        });
    parts.headers.remove(header::CONTENT_LENGTH);
    let body = rewritten.map_or(bytes, Bytes::from);
    Response::from_parts(parts, ResponseBody::full(body))
}
