//! The handler's answer, collected (panics and timeouts caught), and the response it becomes.

use std::{
    future::Future,
    panic::AssertUnwindSafe,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body::Body;
use http_body_util::{Either, Empty};

use super::{
    body::{ResponseBody, SseBody},
    limit::Deadline,
    read::{ReadError, read_to_bytes},
};
use crate::{
    BoxError,
    protocol::{self, Era, RequestId, codes, error_body, headers, peek_error_code},
};

pub(super) fn sse_headers(res: &mut Response<ResponseBody>) {
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(headers::X_ACCEL_BUFFERING, HeaderValue::from_static("no"));
}

pub(super) fn sse_response(body: SseBody) -> Response<ResponseBody> {
    let mut res = Response::new(ResponseBody::sse(body));
    sse_headers(&mut res);
    res
}

/// The handler's answer, collected.
pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
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
pub(super) async fn answer_within<F, B, E>(
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
pub(super) fn answer_of<'a, F, B, E>(
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
pub(super) async fn notification_failure<F, B, E>(fut: F) -> Result<Option<Answer>, E>
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
pub(super) fn accepted() -> Response<ResponseBody> {
    let mut res = Response::new(ResponseBody::empty());
    *res.status_mut() = StatusCode::ACCEPTED;
    res
}

pub(super) fn json_response(mut a: Answer, era: Era) -> Response<ResponseBody> {
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
pub(super) fn answer_event<E>(out: &Result<Answer, E>, id: &RequestId) -> Bytes {
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

/// The answer to a notification, from the handler's future (see [`notification_failure`]).
///
/// Boxed, like `initialize`: the rare notification's state would otherwise size (and be
/// copied with) every POST's future.
pub(super) fn notification_answer<F, ResBody, E>(
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
