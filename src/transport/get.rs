//! `GET`: the standalone SSE stream of a session, opened or resumed with `Last-Event-ID`.

use std::sync::Arc;

use http::{Response, request::Parts};

use super::{
    ResponseFuture,
    answer::sse_response,
    body::{ResponseBody, SseBody, parse_event_id},
    layer::Shared,
    log::{AttachError, STANDALONE},
    lookup::{Lookup, lookup, not_found},
    negotiate::{accepts, check_legacy_version, session_version},
    restore,
    restore::with_restored,
    service::{method_not_allowed, reject, respond},
};
use crate::{
    protocol::{Rejection, RejectionKind, codes, headers},
    session::{LogRef, Session},
};

pub(super) fn get<E: Send + 'static>(shared: &Arc<Shared>, parts: Parts) -> ResponseFuture<E> {
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
    if cursor.stream() == STANDALONE && shared.draining.load(std::sync::atomic::Ordering::Acquire) {
        // The node is leaving: what the stream has, then the reconnect hint (see
        // `TransportHandle::drain`). A resumed `POST` answer stays: its request finishes here.
        log.end_reader(STANDALONE, cfg.retry);
    }
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
