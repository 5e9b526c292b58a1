//! The per-request context handed to handlers in both eras.

use std::{fmt, future::Future, sync::Arc};

use serde_json::Value;

use super::{
    SendError, Session,
    handle::encode_message,
    log::{EventLog, STANDALONE},
};
use crate::protocol::{Era, ProtocolVersion, RequestId};

/// The event log a stream lives in: a session's, or a modern request's own.
#[derive(Clone, Debug)]
pub(crate) enum LogRef {
    Session(Session),
    Own(Arc<EventLog>),
}

impl LogRef {
    pub(crate) fn log(&self) -> &EventLog {
        match self {
            Self::Session(s) => &s.inner.log,
            Self::Own(l) => l,
        }
    }
}

use LogRef as Target;

/// What the transport knows about one client message, put into the request extensions for the
/// handler: its era, JSON-RPC id, session (legacy) and a way to stream related messages.
///
/// Messages sent through it go on the request's own SSE stream: the first one turns the answer
/// from plain JSON into an SSE stream.
///
/// # Example
///
/// ```
/// use mcp_affinity::session::RequestContext;
/// use serde_json::json;
///
/// async fn handler(req: http::Request<()>) {
///     let cx = req.extensions().get::<RequestContext>().unwrap();
///     cx.notify("notifications/progress", Some(json!({"progressToken": 1, "progress": 50})))
///         .ok();
/// }
/// ```
#[derive(Clone)]
pub struct RequestContext {
    era: Era,
    version: Option<ProtocolVersion>,
    id: Option<RequestId>,
    target: Target,
    stream: Option<u32>,
}

impl fmt::Debug for RequestContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestContext")
            .field("era", &self.era)
            .field("id", &self.id)
            .field("stream", &self.stream)
            .finish_non_exhaustive()
    }
}

impl RequestContext {
    pub(crate) fn legacy(
        session: Session,
        version: ProtocolVersion,
        id: Option<RequestId>,
        stream: Option<u32>,
    ) -> Self {
        Self {
            era: Era::Legacy,
            version: Some(version),
            id,
            target: Target::Session(session),
            stream,
        }
    }

    pub(crate) fn modern(log: Arc<EventLog>, id: Option<RequestId>, stream: Option<u32>) -> Self {
        Self {
            era: Era::Modern,
            version: Some(ProtocolVersion::V2026_07_28),
            id,
            target: Target::Own(log),
            stream,
        }
    }

    /// The era the request was classified into.
    pub fn era(&self) -> Era {
        self.era
    }

    /// The protocol revision in force for this request.
    pub fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.version
    }

    /// The JSON-RPC id of the request (`None` for a notification).
    pub fn id(&self) -> Option<&RequestId> {
        self.id.as_ref()
    }

    /// The session (legacy era only).
    pub fn session(&self) -> Option<&Session> {
        match &self.target {
            Target::Session(s) => Some(s),
            Target::Own(_) => None,
        }
    }

    /// Sends a notification related to this request (progress, log message) on its stream.
    /// For a client notification (which has no stream) it goes to the session's standalone
    /// stream.
    pub fn notify(&self, method: &str, params: Option<Value>) -> Result<(), SendError> {
        let data = encode_message(method, None, params.as_ref());
        match (&self.target, self.stream) {
            (Target::Session(s), stream) => {
                s.inner
                    .log
                    .append(stream.unwrap_or(STANDALONE), data, false)
            }
            (Target::Own(log), Some(stream)) => log.append(stream, data, false),
            (Target::Own(_), None) => return Err(SendError::NotSupported),
        }
        .map_err(Into::into)
    }

    /// Sends a server→client request related to this request (sampling, elicitation) on its
    /// stream and waits for the answer. Legacy era only: the modern era forbids independent
    /// requests on a response stream (use `input_required` results instead).
    pub fn request(
        &self,
        method: &str,
        params: Option<Value>,
    ) -> impl Future<Output = Result<Value, SendError>> + Send + 'static {
        let fut = match &self.target {
            Target::Session(s) => {
                Ok(s.request_on(self.stream.unwrap_or(STANDALONE), method, params))
            }
            Target::Own(_) => Err(SendError::NotSupported),
        };
        async move { fut?.await }
    }

    /// Closes the client's connection for this request's stream without ending the stream
    /// (SEP-1699 polling, `2025-11-25`): the client reconnects with `GET` + `Last-Event-ID` and
    /// receives what follows, including the final response. Returns `false` where that is not
    /// possible (modern era, where closing means cancellation, or older revisions without
    /// priming events).
    pub fn close_stream(&self) -> bool {
        match (&self.target, self.stream) {
            (Target::Session(s), Some(stream))
                if self.version.is_some_and(ProtocolVersion::primes_streams) =>
            {
                s.inner.log.force_sse(stream);
                s.inner.log.detach_reader(stream);
                true
            }
            _ => false,
        }
    }
}
