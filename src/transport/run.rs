//! Running the handler of one request, answered with JSON or with the stream from the log.

use std::{
    future::{Future, poll_fn},
    pin::Pin,
    sync::Arc,
    task::Poll,
};

use bytes::Bytes;
use http::{Request, Response, request::Parts};
use http_body::Body;
use tower_service::Service;
use tracing::Instrument;

use super::{
    RequestBody,
    answer::{Answer, answer_event, answer_within, json_response, sse_headers, sse_response},
    body::{AbortOnDrop, ResponseBody, SseBody},
    layer::Shared,
    limit::Permit,
    log::Phase,
};
use crate::{
    BoxError,
    protocol::{Era, Message, Rejection, RequestId},
    session::{LogRef, RequestContext, Session},
};

pub(super) fn handler_request(
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
pub(super) fn ready<S>(inner: &mut S) -> impl Future<Output = Result<(), S::Error>> + '_
where
    S: Service<Request<RequestBody>>,
{
    poll_fn(move |cx| inner.poll_ready(cx))
}

enum TaskOut<E> {
    Json(Result<Answer, E>),
    Streamed,
}

/// Where the answer to one request goes and how it is framed.
pub(super) struct Answering {
    /// The log holding the request's stream.
    pub(super) log: LogRef,
    /// The request's POST stream in `log`.
    pub(super) stream: u32,
    /// The legacy session, which tracks the request for `notifications/cancelled`.
    pub(super) session: Option<Session>,
    pub(super) id: RequestId,
    pub(super) era: Era,
    /// The SSE `retry` to prime the stream with (legacy versions that resume).
    pub(super) priming: Option<std::time::Duration>,
}

/// Runs the handler's future `fut` for the request `to` describes and answers it: JSON when
/// the handler finished before streaming anything, else the stream from the log.
///
/// Not an `async fn`: the handler's future and the step after it are boxed here, when `run`
/// is called, so the future the caller awaits (and holds in its own state) does not carry
/// `F` a second and third time.
pub(super) fn run<'a, F, ResBody, E>(
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
