//! `initialize` (legacy era): the session created, kept on success, discarded on failure.

use std::sync::{Arc, atomic::Ordering};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, request::Parts};
use http_body::Body;
use tower_service::Service;

use super::{
    RequestBody,
    answer::{answer_of, json_response},
    layer::Shared,
    post::Outcome,
    run::{handler_request, ready},
    security::{principal_allowed, principal_binding},
    service::bad_request,
};
use crate::{
    BoxError,
    protocol::{
        self, Era, Message, ProtocolVersion, Rejection, RejectionKind, codes, headers,
        peek_initialize_result,
    },
    session::{CloseReason, RequestContext, Session},
};

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
    principal_allowed(shared, parts, &session)
}

pub(super) async fn initialize<S, ResBody>(
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
    let principal = principal_binding(shared, &parts);
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

/// Discards a session whose `initialize` did not complete.
struct DiscardOnDrop(Option<(Arc<Shared>, Session)>);

impl Drop for DiscardOnDrop {
    fn drop(&mut self) {
        if let Some((shared, session)) = self.0.take() {
            shared.close(&session, CloseReason::InitializeFailed, None);
        }
    }
}
