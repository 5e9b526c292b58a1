//! `POST` in the modern era (`2026-07-28`): stateless requests, each with a private log.

use std::{future::Future, sync::Arc};

use bytes::Bytes;
use http::{Request, Response, request::Parts};
use http_body::Body;
use tower_service::Service;

use super::{
    RequestBody,
    answer::notification_answer,
    layer::Shared,
    limit::Permit,
    log::EventLog,
    lookup::not_found,
    post::Outcome,
    run::{Answering, handler_request, ready, run},
    service::bad_request,
};
use crate::{
    BoxError,
    protocol::{self, Era, Message, MessageKind, Rejection, RejectionKind, codes},
    session::{LogRef, RequestContext},
};

#[allow(clippy::manual_async_fn)] // held arguments once: see `super::post`
pub(super) fn modern<S, ResBody>(
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
