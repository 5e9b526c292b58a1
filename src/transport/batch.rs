//! JSON-RPC batches (`2025-03-26` only): their requests run at once and answer on one stream.

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, request::Parts};
use http_body::Body;
use tower_service::Service;
use tracing::Instrument;

use super::{
    RequestBody,
    answer::{
        accepted, answer_event, answer_within, json_response, notification_failure, sse_response,
    },
    body::SseBody,
    layer::Shared,
    limit::Permit,
    lookup::{Lookup, lookup, not_found},
    negotiate::session_version,
    post::Outcome,
    post_legacy::{observe_notification, take_client_answer},
    restore,
    restore::with_restored,
    run::{handler_request, ready},
    service::bad_request,
};
use crate::{
    BoxError,
    protocol::{self, Era, Message, MessageKind, ProtocolVersion, Rejection, RejectionKind, codes},
    session::{LogRef, RequestContext, Session, SessionRestored},
};

/// A JSON-RPC batch: allowed only on `2025-03-26` sessions (the revision that had them).
///
/// Client responses and notifications are handled in order; the batch's requests run
/// concurrently and their responses go out on one SSE stream that ends with the last one.
pub(super) async fn batch<S, ResBody>(
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
