use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use http::{HeaderValue, Response, StatusCode, header};
use pin_project_lite::pin_project;

use super::{
    Ownership, RegistryStore, ResponseBody, SessionRecord,
    queue::{Core, OpKind},
    service::Ctx,
};
use crate::{
    protocol::{codes, error_body, headers},
    session::{CloseReason, Fingerprint, Session, SessionId},
};

/// What the registry found out about a session the inner service did not know (its `404`).
///
/// Put into the response extensions of such `404`s; the client sees only the JSON-RPC error.
///
/// # Example
///
/// ```
/// use mcp_affinity::registry::SessionLookup;
///
/// fn explain(res: &http::Response<()>) -> &'static str {
///     match res.extensions().get::<SessionLookup>() {
///         Some(SessionLookup::Misrouted { .. }) => "the balancer sent it to the wrong node",
///         Some(SessionLookup::NodeRestarted) => "this node restarted",
///         Some(SessionLookup::Unknown) | None => "unknown session",
///         Some(_) => "other",
///     }
/// }
/// # let _ = explain;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionLookup {
    /// The session belongs to another node (its name; never sent to the client).
    Misrouted {
        /// The owning node's name.
        owner: String,
    },
    /// The session belonged to this node's previous process.
    NodeRestarted,
    /// Not in the registry (or the registry could not be asked).
    Unknown,
}

impl SessionLookup {
    fn reason(&self) -> &'static str {
        match self {
            Self::Misrouted { .. } => "misrouted",
            Self::NodeRestarted => "node_restarted",
            Self::Unknown => "unknown",
        }
    }

    fn message(&self) -> &'static str {
        match self {
            Self::Misrouted { .. } => {
                "session not found on this node: the request reached a node that does not hold the session; start a new session with initialize"
            }
            Self::NodeRestarted => {
                "session not found: the node holding it restarted and the session is gone; start a new session with initialize"
            }
            Self::Unknown => "session not found: start a new session with initialize",
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

pin_project! {
    /// Response future of [`SessionRegistry`](super::SessionRegistry).
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
    /// use mcp_affinity::registry::{MemoryStore, ResponseFuture, SessionRegistryLayer};
    /// use tower::Service;
    ///
    /// let mut svc = SessionRegistryLayer::new(MemoryStore::new(), "node-a").unwrap().layer(app);
    /// ServiceExt::<http::Request<http_body_util::Full<bytes::Bytes>>>::ready(&mut svc).await.unwrap();
    /// let fut: ResponseFuture<_, _, _> = svc.call(post(INIT));
    /// assert_eq!(fut.await.unwrap().status(), 200);
    /// # }
    /// ```
    pub struct ResponseFuture<F, B, R> {
        #[pin]
        state: State<F, B>,
        core: Option<Arc<Core<R>>>,
        ctx: Option<Ctx>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B> {
        Inner { #[pin] fut: F },
        Lookup { fut: BoxFuture<SessionLookup>, parts: Option<http::response::Parts> },
        Register { fut: BoxFuture<bool>, response: Option<Response<B>> },
    }
}

impl<F, B, R> fmt::Debug for ResponseFuture<F, B, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, R> ResponseFuture<F, B, R> {
    pub(crate) fn passthrough(fut: F) -> Self {
        Self {
            state: State::Inner { fut },
            core: None,
            ctx: None,
        }
    }

    pub(crate) fn new(fut: F, core: Arc<Core<R>>, ctx: Ctx) -> Self {
        Self {
            state: State::Inner { fut },
            core: Some(core),
            ctx: Some(ctx),
        }
    }
}

fn map_body<B>(res: Response<B>) -> Response<ResponseBody<B>> {
    res.map(ResponseBody::inner)
}

async fn lookup<R: RegistryStore>(core: Arc<Core<R>>, sid: Arc<str>) -> SessionLookup {
    let fp = Fingerprint::of(&sid);
    let found = tokio::time::timeout(core.lookup_timeout, core.store.lookup(&sid)).await;
    let outcome = match found {
        Ok(Ok(Some(record))) => match record.ownership(&core.node, &core.incarnation) {
            Ownership::OtherNode => {
                tracing::warn!(session = %fp, owner = %record.node, here = %core.node, "misrouted request: the session lives on another node");
                SessionLookup::Misrouted { owner: record.node }
            }
            Ownership::PreviousIncarnation => {
                tracing::info!(session = %fp, node = %core.node, "request for a session of this node's previous process");
                SessionLookup::NodeRestarted
            }
            _ => {
                // Ours, but gone locally (closed without a hook, e.g. an inner service's own
                // expiry): clean up the record.
                core.forget(&sid);
                core.enqueue(&sid, OpKind::RemoveIfOwned);
                SessionLookup::Unknown
            }
        },
        Ok(Ok(None)) => SessionLookup::Unknown,
        Ok(Err(e)) => {
            core.counters
                .store_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!(error = %e, "registry lookup failed; answering unknown session");
            SessionLookup::Unknown
        }
        Err(_) => {
            core.counters
                .store_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::debug!("registry lookup timed out; answering unknown session");
            SessionLookup::Unknown
        }
    };
    let counter = match &outcome {
        SessionLookup::Misrouted { .. } => &core.counters.misroutes,
        SessionLookup::NodeRestarted => &core.counters.node_restarted,
        SessionLookup::Unknown => &core.counters.unknown,
    };
    counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    outcome
}

fn not_found<B>(parts: http::response::Parts, outcome: SessionLookup) -> Response<ResponseBody<B>> {
    let data = serde_json::json!({ "reason": outcome.reason() });
    let body = error_body(
        None,
        codes::SESSION_NOT_FOUND,
        outcome.message(),
        Some(&data),
    );
    let mut res = Response::from_parts(parts, ResponseBody::full(body));
    res.headers_mut().remove(header::CONTENT_LENGTH);
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.extensions_mut().insert(outcome);
    res
}

fn unavailable<B>() -> Response<ResponseBody<B>> {
    let body = error_body(
        None,
        codes::BAD_REQUEST,
        "session registry unavailable: retry later or on another node",
        None,
    );
    let mut res = Response::new(ResponseBody::full(body));
    *res.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    res
}

/// A successful response that minted a session id the request did not carry.
fn minted_id<B>(res: &Response<B>, ctx: &Ctx) -> Option<Arc<str>> {
    if !res.status().is_success() {
        return None;
    }
    let id = res.headers().get(headers::MCP_SESSION_ID)?.to_str().ok()?;
    (SessionId::is_valid(id) && ctx.sid() != Some(id)).then(|| id.into())
}

fn record_for<R>(core: &Core<R>) -> SessionRecord {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    SessionRecord::new(&*core.node, &*core.incarnation).with_created_at(now)
}

fn hook_close<R: RegistryStore>(core: &Arc<Core<R>>, session: &Session) {
    let core = core.clone();
    session.on_close(move |id, reason| match reason {
        // DELETE already queued an unconditional removal; a failed initialize never wrote.
        CloseReason::Deleted | CloseReason::InitializeFailed => {}
        _ => {
            core.forget(id.as_str());
            core.enqueue(id.as_str(), OpKind::RemoveIfOwned);
        }
    });
}

impl<F, B, E, R> Future for ResponseFuture<F, B, R>
where
    F: Future<Output = Result<Response<B>, E>>,
    R: RegistryStore,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Inner { fut } => {
                    let res = ready!(fut.poll(cx))?;
                    let (Some(core), Some(ctx)) = (this.core.as_ref(), this.ctx.as_ref()) else {
                        return Poll::Ready(Ok(map_body(res)));
                    };
                    let not_found = res.status() == StatusCode::NOT_FOUND && !ctx.delete;
                    if not_found && let Some(sid) = ctx.sid() {
                        let fut = Box::pin(lookup(core.clone(), sid.into()));
                        let (parts, _) = res.into_parts();
                        this.state.set(State::Lookup {
                            fut,
                            parts: Some(parts),
                        });
                        continue;
                    }
                    let Some(id) = minted_id(&res, ctx) else {
                        return Poll::Ready(Ok(map_body(res)));
                    };
                    if let Some(session) = res.extensions().get::<Session>() {
                        hook_close(core, session);
                    }
                    let record = record_for(core);
                    if !core.fail_closed {
                        core.enqueue(&id, OpKind::Register(record));
                        return Poll::Ready(Ok(map_body(res)));
                    }
                    let c = core.clone();
                    let fut = Box::pin(async move {
                        match tokio::time::timeout(
                            c.lookup_timeout,
                            c.store.register(&id, &record, c.ttl),
                        )
                        .await
                        {
                            Ok(Ok(true)) => {
                                c.counters
                                    .registered
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                c.mark_live(&id);
                                true
                            }
                            _ => {
                                c.counters
                                    .store_errors
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                false
                            }
                        }
                    });
                    this.state.set(State::Register {
                        fut,
                        response: Some(res),
                    });
                }
                StateProj::Lookup { fut, parts } => {
                    let outcome = ready!(fut.as_mut().poll(cx));
                    let Some(parts) = parts.take() else {
                        return Poll::Pending;
                    };
                    return Poll::Ready(Ok(not_found(parts, outcome)));
                }
                StateProj::Register { fut, response } => {
                    let ok = ready!(fut.as_mut().poll(cx));
                    let Some(res) = response.take() else {
                        return Poll::Pending;
                    };
                    if ok {
                        return Poll::Ready(Ok(map_body(res)));
                    }
                    if let Some(core) = this.core.as_ref() {
                        core.counters
                            .refused
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    tracing::warn!("registry unavailable: initialize refused (fail-closed)");
                    match res.extensions().get::<Session>() {
                        Some(session) => session.close(),
                        None => tracing::warn!(
                            "inner service's session cannot be discarded; it expires locally"
                        ),
                    }
                    return Poll::Ready(Ok(unavailable()));
                }
            }
        }
    }
}
