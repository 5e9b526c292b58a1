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
    limit::Admit,
    queue::{Core, Ends, OpKind},
    service::Ctx,
};
use crate::{
    protocol::{Refusal, Rejection, RejectionKind, codes, error_body, headers},
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
    /// Not in the registry, or not asked: the store was unreachable, the id was not in it a
    /// moment ago, lookups were over their rate, or the session was this node's and has ended.
    Unknown,
}

impl SessionLookup {
    pub(crate) fn reason(&self) -> &'static str {
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
    /// let fut: ResponseFuture<_, _, _, _> = svc.call(post(INIT));
    /// assert_eq!(fut.await.unwrap().status(), 200);
    /// # }
    /// ```
    pub struct ResponseFuture<F, B, E, R> {
        #[pin]
        state: State<F, B, E>,
        core: Option<Arc<Core<R>>>,
        ctx: Option<Ctx>,
        removal: Option<PendingRemoval<R>>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, B, E> {
        Inner { #[pin] fut: F },
        Lookup { fut: BoxFuture<SessionLookup>, parts: Option<http::response::Parts> },
        Register { fut: BoxFuture<bool>, response: Option<Response<B>> },
        Refused { rejection: Option<Rejection> },
        Unheld { fut: BoxFuture<Result<Response<ResponseBody<B>>, E>> },
    }
}

impl<F, B, E, R> fmt::Debug for ResponseFuture<F, B, E, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, B, E, R> ResponseFuture<F, B, E, R> {
    /// A request for a session this node does not hold (see `continuity`).
    pub(crate) fn unheld(fut: BoxFuture<Result<Response<ResponseBody<B>>, E>>) -> Self {
        Self {
            state: State::Unheld { fut },
            core: None,
            ctx: None,
            removal: None,
        }
    }

    pub(crate) fn passthrough(fut: F) -> Self {
        Self {
            state: State::Inner { fut },
            core: None,
            ctx: None,
            removal: None,
        }
    }

    /// A request refused before the inner service was called.
    pub(crate) fn refused(rejection: Rejection) -> Self {
        Self {
            state: State::Refused {
                rejection: Some(rejection),
            },
            core: None,
            ctx: None,
            removal: None,
        }
    }

    pub(crate) fn new(
        fut: F,
        core: Arc<Core<R>>,
        ctx: Ctx,
        removal: Option<PendingRemoval<R>>,
    ) -> Self {
        Self {
            state: State::Inner { fut },
            core: Some(core),
            ctx: Some(ctx),
            removal,
        }
    }
}

/// The record removal a `DELETE` asks for, queued when the inner service has answered
/// (unless it refused the request) or when the future is dropped before that (the client hung
/// up: the local close may still happen, so the record goes, as ADR-0066 asks).
pub(crate) struct PendingRemoval<R> {
    core: Arc<Core<R>>,
    id: Arc<str>,
    armed: bool,
}

impl<R> PendingRemoval<R> {
    pub(crate) fn new(core: Arc<Core<R>>, id: Arc<str>) -> Self {
        Self {
            core,
            id,
            armed: true,
        }
    }

    /// The request was refused: nothing is removed.
    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl<R> Drop for PendingRemoval<R> {
    fn drop(&mut self) {
        if self.armed {
            self.core.forget(&self.id);
            self.core.enqueue(&self.id, OpKind::Remove);
            tracing::debug!(session = %Fingerprint::of(&self.id), "session record removal queued (DELETE)");
        }
    }
}

fn map_body<B>(res: Response<B>) -> Response<ResponseBody<B>> {
    res.map(ResponseBody::inner)
}

async fn lookup<R: RegistryStore>(core: Arc<Core<R>>, sid: Arc<str>) -> SessionLookup {
    use std::sync::atomic::Ordering::Relaxed;
    let fp = Fingerprint::of(&sid);
    match core.limits.admit(&sid) {
        Admit::Lookup => {}
        Admit::KnownMiss => {
            core.counters.known_misses.fetch_add(1, Relaxed);
            core.counters.unknown.fetch_add(1, Relaxed);
            crate::metrics::registry_not_found("unknown");
            return SessionLookup::Unknown;
        }
        Admit::Limited => {
            core.counters.lookups_limited.fetch_add(1, Relaxed);
            core.counters.unknown.fetch_add(1, Relaxed);
            crate::metrics::registry_not_found("unknown");
            tracing::debug!(session = %fp, "registry lookups over their rate; answering unknown session");
            return SessionLookup::Unknown;
        }
    }
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
        Ok(Ok(None)) => {
            core.limits.remember_miss(&sid);
            SessionLookup::Unknown
        }
        Ok(Err(e)) => {
            core.counters
                .store_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            crate::metrics::store_error(crate::metrics::StoreOp::Lookup);
            tracing::debug!(error = %e, "registry lookup failed; answering unknown session");
            SessionLookup::Unknown
        }
        Err(_) => {
            core.counters
                .store_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            crate::metrics::store_error(crate::metrics::StoreOp::Lookup);
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
    crate::metrics::registry_not_found(outcome.reason());
    outcome
}

pub(crate) fn not_found<B>(
    parts: http::response::Parts,
    outcome: SessionLookup,
) -> Response<ResponseBody<B>> {
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
    Rejection::new(
        RejectionKind::RegistryUnavailable,
        codes::BAD_REQUEST,
        "session registry unavailable: retry later or on another node",
    )
    .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"))
    .into_response(ResponseBody::full)
}

/// A successful response that minted a session id the request did not carry.
/// The id a response minted: as the clients use it (what records are keyed by) and as the
/// inner service minted it.
fn minted_id<'r, B>(res: &'r Response<B>, ctx: &Ctx) -> Option<(Arc<str>, &'r str)> {
    if !res.status().is_success() {
        return None;
    }
    let id = res.headers().get(headers::MCP_SESSION_ID)?.to_str().ok()?;
    (SessionId::is_valid(id) && ctx.inner_sid() != Some(id)).then(|| (ctx.wire_of(id), id))
}

/// The record of a session just minted (as `minted` by the inner service), with what another
/// node needs to restore it: from the [`Session`] the response carries when the inner service
/// is this crate's transport, or from what the inner service's session store handed over
/// ([`RmcpSessionStore`](super::RmcpSessionStore)).
fn record_for<R>(core: &Core<R>, session: Option<&Session>, minted: &str) -> SessionRecord {
    let record = SessionRecord::new(&*core.node, &*core.incarnation)
        .with_created_at(super::store::unix_now());
    match session {
        Some(s) => match s.protocol_version() {
            Some(version) => record.with_restore(
                version.as_str(),
                s.client_info().cloned(),
                s.client_capabilities().cloned(),
                s.principal_digest().map(str::to_owned),
            ),
            None => record,
        },
        None => match core.handoff.take_minted(minted) {
            Some(restore) => restore.apply(record),
            None => record,
        },
    }
}

pub(crate) fn hook_close<R: RegistryStore>(core: &Arc<Core<R>>, session: &Session, ctx: &Ctx) {
    let core = core.clone();
    let envelope = ctx.envelope().cloned();
    session.on_close(move |id, reason| {
        let wire = envelope.as_ref().and_then(|e| e.wrap(id.as_str()));
        let wire = wire.as_deref().unwrap_or(id.as_str());
        match reason {
            // DELETE queues an unconditional removal itself; a failed initialize never wrote.
            CloseReason::Deleted | CloseReason::InitializeFailed => {}
            // A node shutting down hands its sessions over: the records stay for the node
            // each session's next request reaches, which adopts it.
            CloseReason::Shutdown if core.hands_over() => {
                core.forget(wire);
            }
            _ => {
                core.forget(wire);
                core.enqueue(wire, OpKind::RemoveIfOwned);
            }
        }
    });
}

/// Whether the inner service refused a `DELETE` before closing anything: a [`Refusal`], or
/// any client error but an unmarked `404` (a malformed or repeated header, a bad version…).
/// A `2xx` closed the session, a `404` means it is not held here (another node's, or a
/// previous process's) and a `5xx` is a failed local close: in those three the record goes,
/// as ADR-0066 asks.
pub(crate) fn delete_refused<B>(res: &Response<B>) -> bool {
    Refusal::is_refused(res)
        || (res.status().is_client_error() && res.status() != StatusCode::NOT_FOUND)
}

impl<F, B, E, R> Future for ResponseFuture<F, B, E, R>
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
                    if ctx.delete {
                        if let Some(removal) = this.removal.take() {
                            if delete_refused(&res) {
                                tracing::debug!(
                                    status = res.status().as_u16(),
                                    "DELETE refused by the inner service: the record stays"
                                );
                                removal.disarm();
                            } else {
                                drop(removal);
                            }
                        }
                        return Poll::Ready(Ok(map_body(res)));
                    }
                    if res.status() == StatusCode::NOT_FOUND && Refusal::is_refused(&res) {
                        // Another principal's request for a session held here: the same answer
                        // as an unknown id, and the session and its record stay.
                        core.counters
                            .unknown
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        crate::metrics::registry_not_found("unknown");
                        let (parts, _) = res.into_parts();
                        return Poll::Ready(Ok(not_found(parts, SessionLookup::Unknown)));
                    }
                    if res.status() == StatusCode::NOT_FOUND
                        && let Some(sid) = ctx.sid()
                    {
                        match core.inner_not_found(sid) {
                            // Held here and reported by its close hook (this crate's
                            // transport): the `404` is the handler's own answer.
                            Some(Ends::Hooked) => return Poll::Ready(Ok(map_body(res))),
                            // A session this node registered, ended inside the inner service
                            // (its own expiry, no close hook): no lookup needed.
                            Some(Ends::Unreported) => {
                                core.enqueue(sid, OpKind::RemoveIfOwned);
                                core.counters
                                    .inner_ended
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                core.counters
                                    .unknown
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                crate::metrics::registry_not_found("unknown");
                                tracing::debug!(session = %Fingerprint::of(sid), "session ended inside the inner service; its record is removed");
                                let (parts, _) = res.into_parts();
                                return Poll::Ready(Ok(not_found(parts, SessionLookup::Unknown)));
                            }
                            None => {
                                let fut = Box::pin(lookup(core.clone(), sid.into()));
                                let (parts, _) = res.into_parts();
                                this.state.set(State::Lookup {
                                    fut,
                                    parts: Some(parts),
                                });
                                continue;
                            }
                        }
                    }
                    let Some((id, minted)) = minted_id(&res, ctx) else {
                        return Poll::Ready(Ok(map_body(res)));
                    };
                    let session = res.extensions().get::<Session>();
                    let ends = match session {
                        Some(session) => {
                            hook_close(core, session, ctx);
                            Ends::Hooked
                        }
                        None => Ends::Unreported,
                    };
                    let record = record_for(core, session, minted);
                    if !core.fail_closed {
                        // Held from now on: the next request takes the local path.
                        core.mark_live(&id, ends);
                        core.enqueue(&id, OpKind::Register(record, ends));
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
                                crate::metrics::registry_write(crate::metrics::Write::Register);
                                c.mark_live(&id, ends);
                                true
                            }
                            _ => {
                                c.counters
                                    .store_errors
                                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                crate::metrics::store_error(crate::metrics::StoreOp::Write);
                                false
                            }
                        }
                    });
                    this.state.set(State::Register {
                        fut,
                        response: Some(res),
                    });
                }
                StateProj::Unheld { fut } => return fut.as_mut().poll(cx),
                StateProj::Refused { rejection } => {
                    return match rejection.take() {
                        Some(r) => Poll::Ready(Ok(r.into_response(ResponseBody::full))),
                        None => Poll::Pending,
                    };
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
                        crate::metrics::registry_unavailable();
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
