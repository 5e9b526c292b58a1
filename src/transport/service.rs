use std::{
    future::{Future, poll_fn},
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header, request::Parts};
use http_body::Body;
use http_body_util::{Either, Empty};
use tower_service::Service;
use tracing::Instrument;

use super::{
    RequestBody, ResponseFuture,
    body::{AbortOnDrop, ResponseBody, SseBody, parse_event_id},
    layer::Shared,
    limit::{Deadline, Permit},
    read::{ReadError, read_to_bytes},
    restore,
};
use crate::{
    BoxError,
    protocol::{
        self, Era, Message, MessageKind, ProtocolVersion, Refusal, Rejection, RejectionKind,
        RequestId, codes, error_body, headers, peek_error_code, peek_initialize_result,
    },
    session::{
        CloseReason, LogRef, RequestContext, Session, SessionRestored,
        log::{AttachError, EventLog, Phase, STANDALONE},
    },
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

fn reject(r: Rejection) -> Response<ResponseBody> {
    crate::metrics::transport_rejected(&r);
    r.into_response(ResponseBody::full)
}

fn method_not_allowed(allow: &'static str) -> Rejection {
    Rejection::new(
        RejectionKind::MethodNotAllowed,
        codes::INVALID_REQUEST,
        "method not allowed",
    )
    .with_header(header::ALLOW, HeaderValue::from_static(allow))
}

fn check_security(shared: &Shared, parts: &Parts) -> Result<(), Rejection> {
    let cfg = &shared.config;
    let host = parts
        .headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| parts.uri.authority().map(|a| a.as_str()))
        .unwrap_or("");
    if !cfg.hosts.is_any() && !cfg.hosts.allows(host) {
        tracing::warn!("request with a Host header not allowed (DNS-rebinding protection)");
        return Err(Rejection::new(
            RejectionKind::HostNotAllowed,
            codes::INVALID_REQUEST,
            "host not allowed",
        )
        .with_refusal(Refusal::Host));
    }
    if let Some(origin) = parts.headers.get(header::ORIGIN) {
        let ok = origin.to_str().is_ok_and(|o| cfg.origins.allows(o, host));
        if !ok {
            tracing::warn!("request with an Origin not allowed");
            return Err(Rejection::new(
                RejectionKind::OriginNotAllowed,
                codes::INVALID_REQUEST,
                "origin not allowed",
            )
            .with_refusal(Refusal::Origin));
        }
    }
    Ok(())
}

/// Whether the `Accept` header allows JSON and/or SSE.
///
/// Read as bytes: a media range is ASCII, so a value with other bytes elsewhere still counts
/// for the ranges it names. Hand-rolled rather than `str::split`, whose searcher costs more
/// than the whole comparison for a value this short (read on every POST and GET).
fn accepts(h: &HeaderMap) -> (bool, bool) {
    let (mut json, mut sse) = (false, false);
    for v in h.get_all(header::ACCEPT) {
        // What the MCP SDKs send, byte for byte.
        if v.as_bytes() == b"application/json, text/event-stream" {
            return (true, true);
        }
        for item in v.as_bytes().split(|&b| b == b',') {
            let end = item.iter().position(|&b| b == b';').unwrap_or(item.len());
            let mt = item[..end].trim_ascii();
            let is = |m: &[u8]| mt.eq_ignore_ascii_case(m);
            if is(b"*/*") {
                (json, sse) = (true, true);
            } else if is(b"application/json") || is(b"application/*") {
                json = true;
            } else if is(b"text/event-stream") || is(b"text/*") {
                sse = true;
            }
        }
    }
    (json, sse)
}

enum Lookup {
    Missing,
    Found(Session),
    /// Not held here, and the request carries a [`RestoreSession`](crate::session::RestoreSession)
    /// for its id: [`restore::restore`] it.
    Restore,
}

pub(super) fn not_found() -> Rejection {
    Rejection::new(
        RejectionKind::SessionNotFound,
        codes::SESSION_NOT_FOUND,
        "session not found: start a new session with initialize",
    )
}

fn lookup(shared: &Shared, parts: &Parts) -> Result<Lookup, Rejection> {
    let Some(raw) = parts.headers.get(headers::MCP_SESSION_ID) else {
        return Ok(Lookup::Missing);
    };
    let id = raw.to_str().map_err(|_| not_found())?;
    let Some(session) = shared.sessions.get(id) else {
        // Only a request for a session this node does not hold reads the extensions.
        return match restore::requested(parts, id) {
            Some(_) => Ok(Lookup::Restore),
            None => Err(not_found()),
        };
    };
    if session.is_closed() {
        shared.sessions.remove(id);
        return Err(not_found());
    }
    if let Some(extractor) = &shared.config.principal
        && !session.principal_matches(extractor.principal(parts).as_deref())
    {
        tracing::warn!(session = %session.id(), "session used by another principal");
        return Err(not_found().with_refusal(Refusal::Principal));
    }
    session.touch(shared.now_ms());
    Ok(Lookup::Found(session))
}

/// Checks `MCP-Protocol-Version` on a request of an existing legacy session.
fn check_legacy_version(parts: &Parts) -> Result<(), Rejection> {
    if legacy_version_ok(protocol::header_version(&parts.headers)) {
        Ok(())
    } else {
        Err(unsupported_version())
    }
}

/// Whether an `MCP-Protocol-Version` header (as [`protocol::header_version`] reads it) is
/// absent or names a legacy revision this crate knows.
fn legacy_version_ok(header: Result<Option<&str>, ()>) -> bool {
    match header {
        Ok(None) => true,
        Ok(Some(v)) => ProtocolVersion::parse(v).is_some_and(|v| v.era() == Era::Legacy),
        Err(()) => false,
    }
}

fn unsupported_version() -> Rejection {
    Rejection::new(
        RejectionKind::UnsupportedVersion,
        codes::BAD_REQUEST,
        "unsupported MCP-Protocol-Version",
    )
    .with_data(
        serde_json::json!({ "supported": ProtocolVersion::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>() }),
    )
}

fn session_version(session: &Session) -> ProtocolVersion {
    session
        .protocol_version()
        .unwrap_or(ProtocolVersion::V2025_03_26)
}

fn sse_headers(res: &mut Response<ResponseBody>) {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(headers::X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
}

fn sse_response(body: SseBody) -> Response<ResponseBody> {
    let mut res = Response::new(ResponseBody::sse(body));
    sse_headers(&mut res);
    res
}

fn get<E: Send + 'static>(shared: &Arc<Shared>, parts: Parts) -> ResponseFuture<E> {
    match lookup(shared, &parts) {
        Ok(Lookup::Found(session)) => {
            ResponseFuture::ready(respond(standalone(shared, &parts, session)))
        }
        // No legacy session: the modern era has no GET endpoint.
        Ok(Lookup::Missing) => ResponseFuture::ready(reject(method_not_allowed("POST"))),
        Ok(Lookup::Restore) => {
            let shared = shared.clone();
            ResponseFuture::boxed(async move {
                Ok(match restore::restore(&shared, &parts).await {
                    Ok(r) => with_restored(standalone(&shared, &parts, r.session.clone()), r),
                    Err(rejection) => reject(rejection),
                })
            })
        }
        Err(r) => ResponseFuture::ready(reject(r)),
    }
}

fn respond(out: Result<Response<ResponseBody>, Rejection>) -> Response<ResponseBody> {
    out.unwrap_or_else(reject)
}

/// The response to a request that asked for a restore: the one that restored its session
/// carries the [`Session`] in its extensions, whatever its status (as a successful
/// `initialize`'s does), so outer layers attach their close hooks.
fn with_restored(
    out: Result<Response<ResponseBody>, Rejection>,
    r: restore::Restored,
) -> Response<ResponseBody> {
    let mut res = respond(out);
    if r.here {
        res.extensions_mut().insert(r.session);
    }
    res
}

/// Opens (or, with `Last-Event-ID`, resumes) a stream of `session` for a `GET`.
fn standalone(
    shared: &Shared,
    parts: &Parts,
    session: Session,
) -> Result<Response<ResponseBody>, Rejection> {
    if !accepts(&parts.headers).1 {
        return Err(Rejection::new(
            RejectionKind::NotAcceptable,
            codes::INVALID_REQUEST,
            "Accept must include text/event-stream",
        ));
    }
    check_legacy_version(parts)?;
    let log = &session.inner.log;
    // An id this log never issued (another node's, or made up) names no stream here: a new
    // standalone stream opens, as for a stream that is gone.
    let resume = parts
        .headers
        .get(headers::LAST_EVENT_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_event_id)
        .filter(|(stream, seq)| log.issued(*stream, *seq));
    let cursor = match resume {
        Some((stream, seq)) => log.attach(stream, Some(seq), false, true),
        None => log.attach(STANDALONE, None, true, false),
    };
    let cursor = cursor.map_err(|e| match e {
        AttachError::Busy => Rejection::new(
            RejectionKind::StreamConflict,
            codes::BAD_REQUEST,
            "a standalone SSE stream is already open for this session",
        ),
        AttachError::Unknown | AttachError::Closed => not_found(),
    })?;
    tracing::debug!(session = %session.id(), stream = cursor.stream(), resumed = resume.is_some(), "SSE stream opened");
    let cfg = &shared.config;
    let priming = session_version(&session)
        .primes_streams()
        .then_some(cfg.retry);
    Ok(sse_response(SseBody::new(
        LogRef::Session(session),
        cursor,
        true,
        priming,
        cfg.keep_alive,
        None,
    )))
}

fn delete<E: Send + 'static>(shared: &Arc<Shared>, parts: Parts) -> ResponseFuture<E> {
    match lookup(shared, &parts) {
        Ok(Lookup::Found(session)) => {
            shared.close(&session, CloseReason::Deleted, None);
            ResponseFuture::ready(Response::new(ResponseBody::empty()))
        }
        Ok(Lookup::Missing) => ResponseFuture::ready(reject(method_not_allowed("POST"))),
        // Restored, then closed: the client's `DELETE` is served wherever it lands.
        Ok(Lookup::Restore) => {
            let shared = shared.clone();
            ResponseFuture::boxed(async move {
                Ok(match restore::restore(&shared, &parts).await {
                    Ok(r) => {
                        shared.close(&r.session, CloseReason::Deleted, None);
                        with_restored(Ok(Response::new(ResponseBody::empty())), r)
                    }
                    Err(rejection) => reject(rejection),
                })
            })
        }
        Err(r) => ResponseFuture::ready(reject(r)),
    }
}

/// The handler's answer, collected.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    /// The answer to `id` when its handler ran past the handler timeout.
    fn timed_out(id: &RequestId) -> Self {
        tracing::warn!("request handler timed out; dropped");
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Self {
            status: StatusCode::OK,
            headers,
            body: error_body(
                Some(id),
                codes::INTERNAL_ERROR,
                "request handler timed out",
                None,
            ),
        }
    }

    /// A failed handler's answer to `id` (see [`protocol::internal_error`]).
    fn internal_error(id: Option<&RequestId>) -> Self {
        let (status, body) = protocol::internal_error(id);
        Self {
            status,
            headers: HeaderMap::new(),
            body,
        }
    }
}

/// The handler's answer to `id` (`None`: a notification), read whole; an unreadable body
/// becomes an internal error.
async fn collect<B>(res: Response<B>, id: Option<&RequestId>) -> Answer
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = res.into_parts();
    match read_to_bytes(body, usize::MAX).await {
        Ok(body) => Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        },
        Err(e) => {
            let e: BoxError = match e {
                ReadError::Body(e) => e,
                ReadError::TooLarge => "response body too large".into(),
            };
            tracing::error!(error = %e, "handler response body failed");
            Answer::internal_error(id)
        }
    }
}

/// The handler's answer, as [`answer_of`] reads it; once the handler has run for `timeout`,
/// it is dropped and the answer is the timed-out error (`-32603`).
async fn answer_within<F, B, E>(
    fut: F,
    id: &RequestId,
    timeout: Option<std::time::Duration>,
) -> Result<Answer, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let answer = answer_of(fut, Some(id));
    match timeout {
        Some(after) => Deadline::new(answer, after)
            .await
            .unwrap_or_else(|| Ok(Answer::timed_out(id))),
        None => answer.await,
    }
}

/// The handler's answer to `id` (`None`: a notification), read whole, with a panic in the
/// handler's future or while its body is read caught (and logged): an internal error for `id`.
///
/// Returns the catching future itself, not an `async` block around it, which would hold it
/// twice (as captured, and awaited) in the state of every request's boxed task.
fn answer_of<'a, F, B, E>(
    fut: F,
    id: Option<&'a RequestId>,
) -> impl Future<Output = Result<Answer, E>> + 'a
where
    F: Future<Output = Result<Response<B>, E>> + 'a,
    B: Body<Data = Bytes> + 'a,
    B::Error: Into<BoxError>,
{
    CatchUnwind {
        fut: async move {
            match fut.await {
                Ok(res) => Ok(collect(res, id).await),
                Err(e) => Err(e),
            }
        },
        on_panic: Some(move || Ok(Answer::internal_error(id))),
    }
}

/// How a notification's handler failed, if it did: `None` when it succeeded (the notification
/// is answered `202`), else its own answer, or an internal error (`500`) if it panicked or its
/// answer could not be read. A success's body is dropped unread: one that never ends cannot
/// hold the POST open.
async fn notification_failure<F, B, E>(fut: F) -> Result<Option<Answer>, E>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let unread_if_ok = async move {
        fut.await.map(|res| {
            let ok = res.status().is_success();
            res.map(|body| {
                if ok {
                    Either::Right(Empty::new())
                } else {
                    Either::Left(body)
                }
            })
        })
    };
    let answer = answer_of(unread_if_ok, None).await?;
    Ok((!answer.status.is_success()).then_some(answer))
}

/// `202 Accepted`, empty: a notification or a client's response taken.
fn accepted() -> Response<ResponseBody> {
    let mut res = Response::new(ResponseBody::empty());
    *res.status_mut() = StatusCode::ACCEPTED;
    res
}

fn json_response(mut a: Answer, era: Era) -> Response<ResponseBody> {
    let mut status = a.status;
    if era == Era::Modern && status == StatusCode::OK {
        status = match peek_error_code(&a.body) {
            Some(codes::METHOD_NOT_FOUND) => StatusCode::NOT_FOUND,
            Some(
                codes::INVALID_PARAMS
                | codes::HEADER_MISMATCH
                | codes::MISSING_REQUIRED_CLIENT_CAPABILITY
                | codes::UNSUPPORTED_PROTOCOL_VERSION,
            ) => StatusCode::BAD_REQUEST,
            _ => status,
        };
    }
    // Most handlers set `Content-Type` alone: then there is nothing to remove or add.
    let only_content_type = a.headers.len() == 1 && a.headers.contains_key(header::CONTENT_TYPE);
    if !only_content_type {
        a.headers.remove(header::CONTENT_LENGTH);
        a.headers.remove(header::TRANSFER_ENCODING);
        if !a.body.is_empty() && !a.headers.contains_key(header::CONTENT_TYPE) {
            a.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
    }
    let mut res = Response::new(ResponseBody::full(a.body));
    *res.status_mut() = status;
    *res.headers_mut() = a.headers;
    res
}

/// What a handler's outcome (its answer, or the inner service's error) becomes as the last
/// event of an SSE stream.
fn answer_event<E>(out: &Result<Answer, E>, id: &RequestId) -> Bytes {
    match out {
        Ok(a) if a.status.is_success() && !a.body.is_empty() => a.body.clone(),
        Ok(a) => error_body(
            Some(id),
            codes::INTERNAL_ERROR,
            a.status.canonical_reason().unwrap_or("handler error"),
            None,
        ),
        Err(_) => protocol::internal_error(Some(id)).1,
    }
}

pin_project_lite::pin_project! {
    /// Catches a panicking handler so it becomes an internal error (`on_panic`'s output), not
    /// a lost stream. The handler's future is held inline: no allocation, no move after
    /// construction.
    struct CatchUnwind<F, P> {
        #[pin]
        fut: F,
        on_panic: Option<P>,
    }
}

impl<F: Future, P: FnOnce() -> F::Output> Future for CatchUnwind<F, P> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let fut = this.fut;
        match std::panic::catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(poll) => poll,
            Err(_) => {
                tracing::error!("handler panicked");
                match this.on_panic.take() {
                    Some(on_panic) => Poll::Ready(on_panic()),
                    // Polled again after it answered for a panic: nothing more will come.
                    None => Poll::Pending,
                }
            }
        }
    }
}

fn bad_request(kind: RejectionKind, code: i64, msg: &'static str) -> Rejection {
    Rejection::new(kind, code, msg)
}

// `post`, `post_inner`, `modern` and `legacy` return `async move` blocks instead of being
// `async fn`s (deliberately, against clippy's `manual_async_fn`): an `async fn` keeps each
// argument twice in its state (as passed, and moved into its body), and these run nested on
// every POST, with `Parts` (224 bytes) among their arguments. As blocks, the POST future is
// 2.4 KiB instead of 3.3 KiB (about 4.9 KiB before `initialize` and `batch` were boxed), and
// it is copied as it is built and boxed.
#[allow(clippy::manual_async_fn)] // held arguments once: see above `post`
fn post<S, B, ResBody>(
    shared: Arc<Shared>,
    inner: S,
    parts: Parts,
    body: B,
) -> impl Future<Output = Result<Response<ResponseBody>, S::Error>>
where
    S: Service<Request<RequestBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    async move {
        match post_inner(&shared, inner, parts, body).await {
            Ok(Ok(res)) => Ok(res),
            Ok(Err(rejection)) => Ok(reject(rejection)),
            Err(e) => Err(e),
        }
    }
}

type Outcome<E> = Result<Result<Response<ResponseBody>, Rejection>, E>;

#[allow(clippy::manual_async_fn)] // held arguments once: see above `post`
fn post_inner<S, B, ResBody>(
    shared: &Arc<Shared>,
    inner: S,
    parts: Parts,
    body: B,
) -> impl Future<Output = Outcome<S::Error>>
where
    S: Service<Request<RequestBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    async move {
        let (json_ok, sse_ok) = accepts(&parts.headers);
        if !(json_ok && sse_ok) {
            return Ok(Err(Rejection::new(
                RejectionKind::NotAcceptable,
                codes::INVALID_REQUEST,
                "Accept must include application/json and text/event-stream",
            )));
        }
        let is_json = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !is_json {
            return Ok(Err(Rejection::new(
                RejectionKind::UnsupportedMediaType,
                codes::INVALID_REQUEST,
                "Content-Type must be application/json",
            )));
        }
        let bytes = match read_to_bytes(body, shared.config.max_body_bytes).await {
            Ok(bytes) => bytes,
            Err(ReadError::TooLarge) => {
                return Ok(Err(Rejection::new(
                    RejectionKind::BodyTooLarge,
                    codes::INVALID_REQUEST,
                    "request body too large",
                )));
            }
            Err(ReadError::Body(_)) => {
                return Ok(Err(bad_request(
                    RejectionKind::UnreadableBody,
                    codes::PARSE_ERROR,
                    "could not read the request body",
                )));
            }
        };
        let msg = match protocol::parse_body(&bytes) {
            Ok(protocol::Body::Single(m)) => m,
            Ok(protocol::Body::Batch(msgs)) => {
                // Boxed, like `initialize` below: the rare paths' large states would otherwise
                // size (and be copied with) every POST's future.
                return Box::pin(batch(shared, inner, parts, bytes, msgs)).await;
            }
            Err(protocol::ParseError::Json) => {
                return Ok(Err(bad_request(
                    RejectionKind::ParseError,
                    codes::PARSE_ERROR,
                    "parse error",
                )));
            }
            Err(protocol::ParseError::Invalid(m)) => {
                return Ok(Err(bad_request(
                    RejectionKind::InvalidMessage,
                    codes::INVALID_REQUEST,
                    m,
                )));
            }
        };
        let peek = msg.peek_params();
        let version_header = protocol::header_version(&parts.headers);
        let era = match protocol::classify_post(&parts.headers, version_header, &msg, &peek) {
            Ok(era) => era,
            Err(r) => return Ok(Err(r)),
        };
        let version_ok = legacy_version_ok(version_header);
        // The span is `debug`: don't look it up when nothing logs at that level.
        if tracing::level_enabled!(tracing::Level::DEBUG) {
            tracing::Span::current().record("era", tracing::field::debug(era));
        }
        match era {
            Era::Modern => modern(shared, inner, parts, bytes, msg).await,
            Era::Legacy => legacy(shared, inner, parts, bytes, msg, peek, version_ok).await,
        }
    }
}

fn handler_request(
    parts: Parts,
    bytes: Bytes,
    msg: Message,
    cx: RequestContext,
    session: Option<Session>,
) -> Request<RequestBody> {
    let mut req = Request::from_parts(parts, RequestBody::new(bytes));
    let ext = req.extensions_mut();
    ext.insert(msg);
    ext.insert(cx);
    if let Some(s) = session {
        ext.insert(s);
    }
    req
}

/// Waits until `inner` is ready. `poll_ready` was driven by the caller of this service; a
/// second check is free for ready services and keeps the contract for services readied
/// elsewhere. The request is built only after it, so the waiting future holds a reference
/// instead of the whole request (which the state of every caller would carry).
fn ready<S>(inner: &mut S) -> impl Future<Output = Result<(), S::Error>> + '_
where
    S: Service<Request<RequestBody>>,
{
    poll_fn(move |cx| inner.poll_ready(cx))
}

#[allow(clippy::manual_async_fn)] // held arguments once: see above `post`
fn modern<S, ResBody>(
    shared: &Arc<Shared>,
    inner: S,
    parts: Parts,
    bytes: Bytes,
    msg: Message,
) -> impl Future<Output = Outcome<S::Error>>
where
    S: Service<Request<RequestBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    async move {
        let id = msg.id().cloned();
        let method = msg.method().unwrap_or_default();
        if msg.kind() == MessageKind::Response {
            return Ok(Err(bad_request(
                RejectionKind::InvalidMessage,
                codes::INVALID_REQUEST,
                "clients must not send responses in 2026-07-28",
            )));
        }
        if protocol::REMOVED_IN_MODERN.contains(&method) {
            return Ok(Err(Rejection::new(
                RejectionKind::MethodRemoved,
                codes::METHOD_NOT_FOUND,
                "method not found (removed in 2026-07-28)",
            )
            .with_id(id)));
        }
        let log = Arc::new(EventLog::new(shared.config.log, false));
        let mut inner = inner;
        let Some(id) = id else {
            ready(&mut inner).await?;
            let cx = RequestContext::modern(log, None, None);
            let fut = inner.call(handler_request(parts, bytes, msg, cx, None));
            return Ok(Ok(notification_answer(fut).await?));
        };
        // A `subscriptions/listen` stream lives as long as its client keeps it open (the
        // handler is dropped when the stream closes): it takes no place of the node's bound
        // and has no handler timeout, so listeners neither starve requests nor are cut off.
        let permit = if method == "subscriptions/listen" {
            None
        } else {
            match Permit::acquire(shared, None) {
                Ok(p) => Some(p),
                Err(r) => return Ok(Err(r.with_id(Some(id)))),
            }
        };
        let Ok(stream) = log.open_stream() else {
            return Ok(Err(not_found()));
        };
        ready(&mut inner).await?;
        let cx = RequestContext::modern(log.clone(), Some(id.clone()), Some(stream));
        let fut = inner.call(handler_request(parts, bytes, msg, cx, None));
        let to = Answering {
            log: LogRef::Own(log),
            stream,
            session: None,
            id,
            era: Era::Modern,
            priming: None,
        };
        run(shared, fut, to, permit).await
    }
}

/// The answer to a notification, from the handler's future (see [`notification_failure`]).
///
/// Boxed, like `initialize`: the rare notification's state would otherwise size (and be
/// copied with) every POST's future.
fn notification_answer<F, ResBody, E>(
    fut: F,
) -> Pin<Box<impl Future<Output = Result<Response<ResponseBody>, E>>>>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    Box::pin(async move {
        Ok(match notification_failure(fut).await? {
            None => accepted(),
            Some(answer) => json_response(answer, Era::Legacy),
        })
    })
}

#[allow(clippy::manual_async_fn)] // held arguments once: see above `post`
fn legacy<S, ResBody>(
    shared: &Arc<Shared>,
    inner: S,
    mut parts: Parts,
    bytes: Bytes,
    msg: Message,
    peek: protocol::ParamsPeek,
    // Whether the `MCP-Protocol-Version` header is absent or legacy (read once, by `post_inner`).
    version_ok: bool,
) -> impl Future<Output = Outcome<S::Error>>
where
    S: Service<Request<RequestBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    async move {
        if msg.kind() == MessageKind::Request && msg.method() == Some("initialize") {
            // Boxed: its state is about 2.4 KiB, which every request on a live session would
            // otherwise carry (4.9 → 3.2 KiB per POST future, copied as it is built and boxed).
            return Box::pin(initialize(shared, inner, parts, bytes, msg, peek)).await;
        }
        let (session, restored) = match lookup(shared, &parts) {
            Ok(Lookup::Found(s)) => (s, None),
            Ok(Lookup::Restore) => match restore_boxed(shared, &parts).await {
                Ok(r) => {
                    if r.here {
                        parts.extensions.insert(SessionRestored);
                    }
                    (r.session.clone(), Some(r))
                }
                Err(r) => return Ok(Err(r)),
            },
            Ok(Lookup::Missing) => {
                return Ok(Err(bad_request(
                    RejectionKind::MissingSessionId,
                    codes::BAD_REQUEST,
                    "missing Mcp-Session-Id header",
                )));
            }
            Err(r) => return Ok(Err(r)),
        };
        let out = 'served: {
            if !version_ok {
                break 'served Ok(Err(unsupported_version().with_id(msg.id().cloned())));
            }
            let version = session_version(&session);
            match msg.kind() {
                MessageKind::Response => {
                    take_client_answer(&session, &msg);
                    Ok(Ok(accepted()))
                }
                MessageKind::Notification => {
                    observe_notification(&session, &msg, &peek);
                    let mut inner = inner;
                    ready(&mut inner).await?;
                    let cx = RequestContext::legacy(session.clone(), version, None, None);
                    let fut = inner.call(handler_request(parts, bytes, msg, cx, Some(session)));
                    Ok(Ok(notification_answer(fut).await?))
                }
                MessageKind::Request => {
                    let Some(id) = msg.id().cloned() else {
                        break 'served Ok(Err(bad_request(
                            RejectionKind::InvalidMessage,
                            codes::INVALID_REQUEST,
                            "request without id",
                        )));
                    };
                    let permit = match Permit::acquire(shared, Some(&session)) {
                        Ok(p) => p,
                        Err(r) => break 'served Ok(Err(r.with_id(Some(id)))),
                    };
                    let Ok(stream) = session.inner.log.open_stream() else {
                        break 'served Ok(Err(not_found()));
                    };
                    let mut inner = inner;
                    ready(&mut inner).await?;
                    let cx = RequestContext::legacy(
                        session.clone(),
                        version,
                        Some(id.clone()),
                        Some(stream),
                    );
                    let fut = inner.call(handler_request(
                        parts,
                        bytes,
                        msg,
                        cx,
                        Some(session.clone()),
                    ));
                    let priming = version.primes_streams().then_some(shared.config.retry);
                    let to = Answering {
                        log: LogRef::Session(session.clone()),
                        stream,
                        session: Some(session),
                        id,
                        era: Era::Legacy,
                        priming,
                    };
                    run(shared, fut, to, Some(permit)).await
                }
            }
        };
        match restored {
            Some(r) => out.map(|o| Ok(with_restored(o, r))),
            None => out,
        }
    }
}

/// [`restore::restore`], boxed: the rare restore's state would otherwise size (and be copied
/// with) every POST's future.
fn restore_boxed<'a>(
    shared: &'a Arc<Shared>,
    parts: &'a Parts,
) -> Pin<Box<impl Future<Output = Result<restore::Restored, Rejection>> + Send + 'a>> {
    Box::pin(restore::restore(shared, parts))
}

/// Checks an `initialize`'s params as the transport relies on them: an object with a string
/// `protocolVersion`, an object `capabilities` and a `clientInfo` object with string `name`
/// and `version` (every revision requires all three). Anything else is `-32602`, before a
/// session exists or the handler runs.
fn check_initialize_params(msg: &Message, peek: &protocol::ParamsPeek) -> Result<(), Rejection> {
    use serde_json::Value;
    let invalid =
        |m: &'static str| bad_request(RejectionKind::InvalidInitialize, codes::INVALID_PARAMS, m);
    let is_object = msg
        .params()
        .is_some_and(|p| p.get().trim_start().starts_with('{'));
    if !is_object {
        return Err(invalid("initialize needs params (an object)"));
    }
    if !matches!(peek.protocol_version, Some(Value::String(_))) {
        return Err(invalid(
            "initialize needs params.protocolVersion (a string)",
        ));
    }
    if !matches!(peek.capabilities, Some(Value::Object(_))) {
        return Err(invalid("initialize needs params.capabilities (an object)"));
    }
    let info_ok = match &peek.client_info {
        Some(Value::Object(info)) => {
            matches!(info.get("name"), Some(Value::String(_)))
                && matches!(info.get("version"), Some(Value::String(_)))
        }
        _ => false,
    };
    if !info_ok {
        return Err(invalid(
            "initialize needs params.clientInfo (an object with string name and version)",
        ));
    }
    Ok(())
}

/// Whether the request's `Mcp-Session-Id` names a live session of this node (that its
/// principal may use): an `initialize` carrying it is refused, it would mint a second session
/// for one client. Read without touching the session. An id this node does not hold (unknown,
/// closed, another principal's, or not an id) names nothing to disagree about: the
/// `initialize` is served as if the header were absent.
fn holds_live_session(shared: &Shared, parts: &Parts) -> bool {
    let Some(id) = parts
        .headers
        .get(headers::MCP_SESSION_ID)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(session) = shared.sessions.get(id) else {
        return false;
    };
    if session.is_closed() {
        return false;
    }
    match &shared.config.principal {
        Some(extractor) => session.principal_matches(extractor.principal(parts).as_deref()),
        None => true,
    }
}

async fn initialize<S, ResBody>(
    shared: &Arc<Shared>,
    inner: S,
    parts: Parts,
    bytes: Bytes,
    msg: Message,
    peek: protocol::ParamsPeek,
) -> Outcome<S::Error>
where
    S: Service<Request<RequestBody>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let id = msg.id().cloned();
    if let Err(r) = check_initialize_params(&msg, &peek) {
        return Ok(Err(r.with_id(id)));
    }
    if holds_live_session(shared, &parts) {
        tracing::debug!("initialize refused: it carries the id of a live session");
        return Ok(Err(bad_request(
            RejectionKind::AlreadyInitialized,
            codes::INVALID_REQUEST,
            "initialize on a live session: the session is already initialized (send initialize without Mcp-Session-Id to start another)",
        )
        .with_id(id)));
    }
    if shared.draining.load(Ordering::Acquire) {
        return Ok(Err(shared
            .retry_later(
                RejectionKind::ShuttingDown,
                "server shutting down: retry on another node",
            )
            .with_id(id)));
    }
    // The session keeps the principal's digest, never the principal.
    let principal = match &shared.config.principal {
        Some(ex) => ex
            .principal(&parts)
            .map(|p| crate::session::principal_digest(&p).into_boxed_str()),
        None => None,
    };
    // No unguessable id, no session: the client retries (never a weaker id).
    let Ok(sid) = shared.config.ids.try_generate() else {
        tracing::error!("no session id could be generated; initialize refused");
        return Ok(Err(shared
            .retry_later(
                RejectionKind::NoSessionId,
                "no session id could be generated: retry later",
            )
            .with_id(id)));
    };
    let session = Session::new(sid, principal, shared.session_config(), shared.now_ms());
    if !shared
        .sessions
        .insert(session.clone(), shared.config.max_sessions)
    {
        tracing::warn!(max = shared.config.max_sessions, "session limit reached");
        return Ok(Err(shared
            .retry_later(
                RejectionKind::TooManySessions,
                "too many sessions on this node",
            )
            .with_id(id)));
    }
    shared.ensure_sweeper();
    shared.untrack_on_close(&session);
    let requested = peek
        .protocol_version
        .as_ref()
        .and_then(|v| v.as_str())
        .and_then(ProtocolVersion::parse)
        .filter(|v| v.era() == Era::Legacy)
        .unwrap_or(ProtocolVersion::V2025_03_26);
    let cx = RequestContext::legacy(session.clone(), requested, id.clone(), None);
    let client_info = peek.client_info.clone();
    let capabilities = peek.capabilities.clone();
    // The handler runs inline: initialize is answered with JSON, and if the client goes away
    // the session is discarded with it (the guard below).
    let mut guard = DiscardOnDrop(Some((shared.clone(), session.clone())));
    let mut inner = inner;
    ready(&mut inner).await?;
    let fut = inner.call(handler_request(
        parts,
        bytes,
        msg,
        cx,
        Some(session.clone()),
    ));
    // A panicking handler fails the initialize like an error answer: the session is discarded
    // (the guard) and the client gets an internal error for its request.
    let answer = answer_of(fut, id.as_ref()).await?;
    let negotiated = if answer.status.is_success() {
        peek_initialize_result(&answer.body)
    } else {
        None
    };
    let Some(negotiated) = negotiated else {
        tracing::debug!("initialize failed; session discarded");
        return Ok(Ok(json_response(answer, Era::Legacy)));
    };
    guard.0 = None;
    let version = negotiated
        .as_deref()
        .and_then(ProtocolVersion::parse)
        .filter(|v| v.era() == Era::Legacy)
        .unwrap_or(requested);
    session.set_initialized(version, client_info, capabilities);
    shared.counters.created.fetch_add(1, Ordering::Relaxed);
    crate::metrics::session_opened(false);
    tracing::debug!(session = %session.id(), version = %version, "session created");
    let mut res = json_response(answer, Era::Legacy);
    match HeaderValue::from_str(session.id().as_str()) {
        Ok(v) => {
            res.headers_mut().insert(headers::MCP_SESSION_ID, v);
        }
        Err(_) => {
            shared.close(&session, CloseReason::InitializeFailed, None);
            return Ok(Err(Rejection::new(
                RejectionKind::InvalidGeneratedId,
                codes::INTERNAL_ERROR,
                "session id generator produced an invalid id",
            )));
        }
    }
    res.extensions_mut().insert(session);
    Ok(Ok(res))
}

/// A JSON-RPC batch: allowed only on `2025-03-26` sessions (the revision that had them).
///
/// Client responses and notifications are handled in order; the batch's requests run
/// concurrently and their responses go out on one SSE stream that ends with the last one.
async fn batch<S, ResBody>(
    shared: &Arc<Shared>,
    inner: S,
    parts: Parts,
    bytes: Bytes,
    msgs: Vec<Message>,
) -> Outcome<S::Error>
where
    S: Service<Request<RequestBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let refuse = |msg: &'static str| {
        Ok(Err(bad_request(
            RejectionKind::BatchNotAllowed,
            codes::INVALID_REQUEST,
            msg,
        )))
    };
    if msgs.iter().any(|m| {
        m.peek_params()
            .meta
            .is_some_and(|meta| meta.contains_key("io.modelcontextprotocol/protocolVersion"))
    }) {
        return refuse("JSON-RPC batches are not allowed in 2026-07-28");
    }
    if msgs.iter().any(|m| m.method() == Some("initialize")) {
        return refuse("initialize must not be part of a JSON-RPC batch");
    }
    let header_allows = match protocol::header_version(&parts.headers) {
        Ok(None) => true,
        Ok(Some(v)) => ProtocolVersion::parse(v).is_some_and(ProtocolVersion::allows_batches),
        Err(()) => false,
    };
    let restored = match lookup(shared, &parts) {
        Ok(Lookup::Restore) if header_allows => match restore::restore(shared, &parts).await {
            Ok(r) => r,
            Err(r) => return Ok(Err(r)),
        },
        looked => {
            return batch_in(
                shared,
                inner,
                parts,
                bytes,
                msgs,
                looked,
                header_allows,
                false,
            )
            .await;
        }
    };
    let looked = Ok(Lookup::Found(restored.session.clone()));
    let out = batch_in(
        shared,
        inner,
        parts,
        bytes,
        msgs,
        looked,
        header_allows,
        restored.here,
    )
    .await;
    out.map(|o| Ok(with_restored(o, restored)))
}

/// The rest of [`batch`], once its session is looked up (or restored: then `mark` puts
/// [`SessionRestored`] on the first message the handler gets).
#[allow(clippy::too_many_arguments)]
async fn batch_in<S, ResBody>(
    shared: &Arc<Shared>,
    inner: S,
    parts: Parts,
    bytes: Bytes,
    msgs: Vec<Message>,
    looked: Result<Lookup, Rejection>,
    header_allows: bool,
    mut mark: bool,
) -> Outcome<S::Error>
where
    S: Service<Request<RequestBody>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    let refuse = |msg: &'static str| {
        Ok(Err(bad_request(
            RejectionKind::BatchNotAllowed,
            codes::INVALID_REQUEST,
            msg,
        )))
    };
    let session = match looked {
        Ok(Lookup::Found(s)) if header_allows && session_version(&s).allows_batches() => s,
        Ok(Lookup::Found(_) | Lookup::Missing | Lookup::Restore) if !header_allows => {
            return refuse("JSON-RPC batches are not supported (removed in 2025-06-18)");
        }
        Ok(Lookup::Found(_)) => {
            return refuse("JSON-RPC batches are not supported (removed in 2025-06-18)");
        }
        Ok(Lookup::Missing) => {
            return Ok(Err(bad_request(
                RejectionKind::MissingSessionId,
                codes::BAD_REQUEST,
                "missing Mcp-Session-Id header",
            )));
        }
        // Only with `!header_allows` (above): `batch` restores otherwise.
        Ok(Lookup::Restore) => return Ok(Err(not_found())),
        Err(r) => return Ok(Err(r)),
    };
    let version = session_version(&session);
    let n_requests = msgs
        .iter()
        .filter(|m| m.kind() == MessageKind::Request)
        .count();
    // The places of all the batch's requests, taken before anything runs: all or none.
    let mut permits = match n_requests {
        0 => Vec::new(),
        n => match Permit::acquire_many(shared, &session, n) {
            Ok(p) => p,
            Err(r) => return Ok(Err(r)),
        },
    };
    let stream = match n_requests {
        0 => None,
        _ => match session.inner.log.open_stream() {
            Ok(s) => Some(s),
            Err(_) => return Ok(Err(not_found())),
        },
    };
    let remaining = Arc::new(std::sync::Mutex::new(n_requests));
    let mut failed = None;
    for msg in msgs {
        match msg.kind() {
            MessageKind::Response => take_client_answer(&session, &msg),
            MessageKind::Notification => {
                observe_notification(&session, &msg, &msg.peek_params());
                let cx = RequestContext::legacy(session.clone(), version, None, None);
                let mut req =
                    handler_request(parts.clone(), bytes.clone(), msg, cx, Some(session.clone()));
                if std::mem::take(&mut mark) {
                    req.extensions_mut().insert(SessionRestored);
                }
                let mut inner = inner.clone();
                ready(&mut inner).await?;
                // A failed notification does not stop the batch; a batch of notifications
                // alone is answered as the first one that failed.
                if let Some(answer) = notification_failure(inner.call(req)).await? {
                    failed.get_or_insert(answer);
                }
            }
            MessageKind::Request => {
                let (Some(stream), Some(id), Some(permit)) =
                    (stream, msg.id().cloned(), permits.pop())
                else {
                    continue;
                };
                let cx = RequestContext::legacy(
                    session.clone(),
                    version,
                    Some(id.clone()),
                    Some(stream),
                );
                let mut req =
                    handler_request(parts.clone(), bytes.clone(), msg, cx, Some(session.clone()));
                if std::mem::take(&mut mark) {
                    req.extensions_mut().insert(SessionRestored);
                }
                let mut inner = inner.clone();
                ready(&mut inner).await?;
                let fut = inner.call(req);
                let slot = BatchSlot {
                    remaining: remaining.clone(),
                    session: session.clone(),
                    stream,
                    done: false,
                };
                let task_id = id.clone();
                let timeout = shared.config.handler_timeout;
                session.spawn_tracked(
                    id,
                    None,
                    async move {
                        let mut slot = slot;
                        let out = answer_within(fut, &task_id, Some(timeout)).await;
                        drop(permit);
                        slot.finish(Some(answer_event(&out, &task_id)));
                    }
                    .in_current_span(),
                );
            }
        }
    }
    let Some(stream) = stream else {
        return Ok(Ok(match failed {
            Some(answer) => json_response(answer, Era::Legacy),
            None => accepted(),
        }));
    };
    let log = &session.inner.log;
    log.force_sse(stream);
    let Ok(cursor) = log.attach(stream, Some(0), false, false) else {
        return Ok(Err(not_found()));
    };
    Ok(Ok(sse_response(SseBody::new(
        LogRef::Session(session),
        cursor,
        true,
        None,
        shared.config.keep_alive,
        None,
    ))))
}

/// One request of a batch: its answer is appended to the shared stream; the last one ends it
/// (also when the request was cancelled and never answered).
struct BatchSlot {
    remaining: Arc<std::sync::Mutex<usize>>,
    session: Session,
    stream: u32,
    done: bool,
}

impl BatchSlot {
    fn finish(&mut self, event: Option<Bytes>) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        let mut remaining = self
            .remaining
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *remaining = remaining.saturating_sub(1);
        let log = &self.session.inner.log;
        match (event, *remaining == 0) {
            (Some(e), last) => {
                let _ = log.append(self.stream, e, last);
            }
            (None, true) => {
                log.complete(self.stream, None);
            }
            (None, false) => {}
        }
    }
}

impl Drop for BatchSlot {
    fn drop(&mut self) {
        self.finish(None);
    }
}

/// A client's answer to a server→client request completes the waiting future.
fn take_client_answer(session: &Session, msg: &Message) {
    let parse = |raw: Option<&serde_json::value::RawValue>| {
        raw.and_then(|r| serde_json::from_str(r.get()).ok())
            .unwrap_or_default()
    };
    let answer = match msg.result() {
        Some(_) => Ok(parse(msg.result())),
        None => Err(parse(msg.error())),
    };
    if let Some(id) = msg.id()
        && !session.answer(id, answer)
    {
        tracing::debug!(session = %session.id(), "response to an unknown server request");
    }
}

/// What the transport itself does with a client notification (before the handler sees it).
fn observe_notification(session: &Session, msg: &Message, peek: &protocol::ParamsPeek) {
    match (msg.method(), &peek.request_id) {
        (Some("notifications/initialized"), _) => session.mark_initialized(),
        (Some("notifications/cancelled"), Some(id)) => {
            let found = session.cancel(id);
            tracing::debug!(session = %session.id(), found, "request cancelled by the client");
        }
        _ => {}
    }
}

/// Discards a session whose `initialize` did not complete.
struct DiscardOnDrop(Option<(Arc<Shared>, Session)>);

impl Drop for DiscardOnDrop {
    fn drop(&mut self) {
        if let Some((shared, session)) = self.0.take() {
            shared.close(&session, CloseReason::InitializeFailed, None);
        }
    }
}

enum TaskOut<E> {
    Json(Result<Answer, E>),
    Streamed,
}

/// Where the answer to one request goes and how it is framed.
struct Answering {
    /// The log holding the request's stream.
    log: LogRef,
    /// The request's POST stream in `log`.
    stream: u32,
    /// The legacy session, which tracks the request for `notifications/cancelled`.
    session: Option<Session>,
    id: RequestId,
    era: Era,
    /// The SSE `retry` to prime the stream with (legacy versions that resume).
    priming: Option<std::time::Duration>,
}

/// Runs the handler's future `fut` for the request `to` describes and answers it: JSON when
/// the handler finished before streaming anything, else the stream from the log.
///
/// Not an `async fn`: the handler's future and the step after it are boxed here, when `run`
/// is called, so the future the caller awaits (and holds in its own state) does not carry
/// `F` a second and third time.
fn run<'a, F, ResBody, E>(
    shared: &'a Arc<Shared>,
    fut: F,
    to: Answering,
    permit: Option<Permit>,
) -> impl Future<Output = Result<Result<Response<ResponseBody>, Rejection>, E>> + Send + 'a
where
    F: Future<Output = Result<Response<ResBody>, E>> + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
    E: Send + 'static,
{
    let task_log = to.log.clone();
    let task_id = to.id.clone();
    let stream = to.stream;
    // A handler without a place (a listen stream) has no timeout either.
    let timeout = permit.as_ref().map(|_| shared.config.handler_timeout);
    let task = async move {
        let out = answer_within(fut, &task_id, timeout).await;
        drop(permit);
        let json = task_log
            .log()
            .complete(stream, Some(answer_event(&out, &task_id)));
        if json {
            TaskOut::Json(out)
        } else {
            if out.is_err() {
                tracing::error!("handler failed after its response started streaming");
            }
            TaskOut::Streamed
        }
    };
    serve(shared, Box::pin(task), to)
}

/// The rest of [`run`], once the handler's task is boxed.
async fn serve<T, E>(
    shared: &Arc<Shared>,
    mut task: Pin<Box<T>>,
    to: Answering,
) -> Result<Result<Response<ResponseBody>, Rejection>, E>
where
    T: Future<Output = TaskOut<E>> + Send + 'static,
    E: Send + 'static,
{
    let Answering {
        log,
        stream,
        session,
        id,
        era,
        priming,
    } = to;
    // Fast path: most handlers answer at once; no task is spawned for them.
    let first = poll_fn(|cx| Poll::Ready(task.as_mut().poll(cx))).await;
    let outcome = match first {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    };
    let (guard, outcome) = match outcome {
        Some(out) => (None, Ok(out)),
        None => {
            // Only a legacy request is tracked (for `notifications/cancelled`).
            let task = task.in_current_span();
            let mut handle = match &session {
                Some(s) => s.spawn_tracked(id.clone(), Some(stream), task),
                None => tokio::spawn(task),
            };
            let guard = (era == Era::Modern).then(|| AbortOnDrop(handle.abort_handle()));
            let waited = poll_fn(|cx| {
                if let Poll::Ready(r) = Pin::new(&mut handle).poll(cx) {
                    return Poll::Ready(Some(r));
                }
                match log.log().poll_phase(stream, cx) {
                    Phase::Sse => Poll::Ready(None),
                    Phase::Pending | Phase::Json => Poll::Pending,
                }
            })
            .await;
            match waited {
                Some(Ok(out)) => (guard, Ok(out)),
                Some(Err(join)) => (guard, Err(join)),
                None => (guard, Ok(TaskOut::Streamed)),
            }
        }
    };
    match outcome {
        Ok(TaskOut::Json(Ok(answer))) => Ok(Ok(json_response(answer, era))),
        Ok(TaskOut::Json(Err(e))) => Err(e),
        Ok(TaskOut::Streamed) | Err(_) => {
            // Cancelled (notifications/cancelled) or streamed: serve the stream from the log.
            // A cancelled stream is already finished, so its body ends after what it holds.
            let cursor = match log.log().attach(stream, Some(0), false, false) {
                Ok(c) => c,
                Err(_) => {
                    let mut res = Response::new(ResponseBody::empty());
                    sse_headers(&mut res);
                    return Ok(Ok(res));
                }
            };
            let with_ids = era == Era::Legacy;
            Ok(Ok(sse_response(SseBody::new(
                log,
                cursor,
                with_ids,
                priming,
                shared.config.keep_alive,
                guard,
            ))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_parsing() {
        let mut h = HeaderMap::new();
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        assert_eq!(accepts(&h), (true, true));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json;q=0.9"),
        );
        assert_eq!(accepts(&h), (true, false));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert_eq!(accepts(&h), (true, true));
        assert_eq!(accepts(&HeaderMap::new()), (false, false));
    }

    #[test]
    fn accept_parsing_edge_cases() {
        let one = |v: &'static [u8]| {
            let mut h = HeaderMap::new();
            h.insert(header::ACCEPT, HeaderValue::from_bytes(v).unwrap());
            accepts(&h)
        };
        assert_eq!(
            one(b"  Text/Event-Stream ; q=1 ,APPLICATION/*"),
            (true, true)
        );
        assert_eq!(one(b"text/*"), (false, true));
        assert_eq!(
            one(b"application/jsonx, text/event-streams"),
            (false, false)
        );
        assert_eq!(one(b"application/json;text/event-stream"), (true, false));
        assert_eq!(one(b",,;, ;"), (false, false));
        assert_eq!(one(b"application/json, t\xe9xt/html"), (true, false));
        let mut h = HeaderMap::new();
        h.append(header::ACCEPT, HeaderValue::from_static("application/json"));
        h.append(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        assert_eq!(accepts(&h), (true, true));
    }
}
