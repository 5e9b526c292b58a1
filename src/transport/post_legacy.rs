//! `POST` in the legacy era: a request, notification or response on an existing session.

use std::{future::Future, pin::Pin, sync::Arc};

use bytes::Bytes;
use http::{Request, Response, request::Parts};
use http_body::Body;
use tower_service::Service;

use super::{
    RequestBody,
    answer::{accepted, notification_answer},
    initialize::initialize,
    layer::Shared,
    limit::Permit,
    lookup::{Lookup, lookup, not_found},
    negotiate::{session_version, unsupported_version},
    post::Outcome,
    restore,
    restore::with_restored,
    run::{Answering, handler_request, ready, run},
    service::bad_request,
};
use crate::{
    BoxError,
    protocol::{self, Era, Message, MessageKind, Rejection, RejectionKind, codes},
    session::{LogRef, RequestContext, Session, SessionRestored},
};

#[allow(clippy::manual_async_fn)] // held arguments once: see `super::post`
pub(super) fn legacy<S, ResBody>(
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

/// A client's answer to a server→client request completes the waiting future.
pub(super) fn take_client_answer(session: &Session, msg: &Message) {
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
pub(super) fn observe_notification(session: &Session, msg: &Message, peek: &protocol::ParamsPeek) {
    match (msg.method(), &peek.request_id) {
        (Some("notifications/initialized"), _) => session.mark_initialized(),
        (Some("notifications/cancelled"), Some(id)) => {
            let found = session.cancel(id);
            tracing::debug!(session = %session.id(), found, "request cancelled by the client");
        }
        _ => {}
    }
}
