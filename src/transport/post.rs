//! `POST`: the checks both eras share (Accept, Content-Type, body, JSON-RPC) and the era.

use std::{future::Future, sync::Arc};

use bytes::Bytes;
use http::{Request, Response, header, request::Parts};
use http_body::Body;
use tower_service::Service;

use super::{
    RequestBody,
    batch::batch,
    body::ResponseBody,
    layer::Shared,
    negotiate::{accepts, legacy_version_ok},
    post_legacy::legacy,
    post_modern::modern,
    read::{ReadError, read_to_bytes},
    service::{bad_request, reject},
};
use crate::{
    BoxError,
    protocol::{self, Era, Rejection, RejectionKind, codes},
};

// `post`, `post_inner`, `modern` and `legacy` return `async move` blocks instead of being
// `async fn`s (deliberately, against clippy's `manual_async_fn`): an `async fn` keeps each
// argument twice in its state (as passed, and moved into its body), and these run nested on
// every POST, with `Parts` (224 bytes) among their arguments. As blocks, the POST future is
// 2.4 KiB instead of 3.3 KiB (about 4.9 KiB before `initialize` and `batch` were boxed), and
// it is copied as it is built and boxed.
#[allow(clippy::manual_async_fn)] // held arguments once: see above `post`
pub(super) fn post<S, B, ResBody>(
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

pub(super) type Outcome<E> = Result<Result<Response<ResponseBody>, Rejection>, E>;

#[allow(clippy::manual_async_fn)] // held arguments once: see above `post`
pub(super) fn post_inner<S, B, ResBody>(
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
