//! What a session sends its client: notifications, and server→client requests waiting for
//! their answers.

use std::{
    fmt,
    future::Future,
    sync::{Arc, atomic::Ordering},
};

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::oneshot;

use super::{
    Session,
    handle::{Inner, lock},
};
use crate::{
    protocol::RequestId,
    transport::log::{AppendError, STANDALONE},
};

/// Why a server→client message or request failed.
///
/// # Example
///
/// ```
/// use mcp_affinity::session::SendError;
/// assert_eq!(SendError::Closed.to_string(), "session closed");
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SendError {
    /// The session (or request) is closed.
    Closed,
    /// The stream the message was meant for has ended (its response was already sent).
    StreamEnded,
    /// Too many server→client requests await an answer in this session.
    TooManyPending,
    /// The client did not answer in time.
    Timeout,
    /// Server→client requests are not allowed here (modern era, or no back-channel).
    NotSupported,
    /// The client answered with a JSON-RPC error (the `error` object).
    Rejected(Value),
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Closed => f.write_str("session closed"),
            Self::StreamEnded => f.write_str("stream ended"),
            Self::TooManyPending => f.write_str("too many pending server requests"),
            Self::Timeout => f.write_str("server request timed out"),
            Self::NotSupported => f.write_str("server requests are not supported here"),
            Self::Rejected(_) => f.write_str("client answered with an error"),
        }
    }
}

impl std::error::Error for SendError {}

impl From<AppendError> for SendError {
    fn from(e: AppendError) -> Self {
        match e {
            AppendError::Closed => Self::Closed,
            AppendError::StreamEnded => Self::StreamEnded,
        }
    }
}

pub(crate) fn encode_message(
    method: &str,
    id: Option<&RequestId>,
    params: Option<&Value>,
) -> Bytes {
    let mut v = serde_json::Map::with_capacity(4);
    v.insert("jsonrpc".into(), Value::from("2.0"));
    if let Some(id) = id {
        v.insert("id".into(), serde_json::to_value(id).unwrap_or(Value::Null));
    }
    v.insert("method".into(), Value::from(method));
    if let Some(p) = params {
        v.insert("params".into(), p.clone());
    }
    Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
}

/// The pending entry of one server→client request, owned by the future that waits for its
/// answer: if that future is dropped first (a cancelled handler, a `select!` that lost), the
/// entry goes with it, so abandoned requests never fill `max_pending_requests`. A late answer
/// from the client then finds no entry and is ignored.
struct PendingSlot {
    inner: Arc<Inner>,
    id: Option<RequestId>,
}

impl PendingSlot {
    fn new(inner: Arc<Inner>, id: RequestId) -> Self {
        Self {
            inner,
            id: Some(id),
        }
    }

    /// The entry is gone already (answered or failed on close): nothing to withdraw.
    fn disarm(&mut self) {
        self.id = None;
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        if let Some(id) = self.id.take() {
            lock(&self.inner.mutable).pending.remove(&id);
        }
    }
}

impl Session {
    /// Sends a notification on the standalone GET stream. If no GET stream is open it is held
    /// (in the bounded event log) until one opens.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let init = serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}});
    /// # let handler = mcp_affinity::handler::handler_fn(move |_req, _cx| { let init = init.clone(); async move { Ok(init) } });
    /// # let svc = mcp_affinity::SseTransportLayer::new().layer(handler);
    /// # let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"sampling":{}},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let req = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
    /// # let res = svc.oneshot(req).await.unwrap();
    /// # let session = res.extensions().get::<mcp_affinity::session::Session>().unwrap().clone();
    /// let (events, _) = session.buffered();
    /// // No GET stream is open: the notification is held in the event log.
    /// session.notify("notifications/tools/list_changed", None).unwrap();
    /// assert_eq!(session.buffered().0, events + 1);
    /// # }
    /// ```
    pub fn notify(&self, method: &str, params: Option<Value>) -> Result<(), SendError> {
        self.inner
            .log
            .append(
                STANDALONE,
                encode_message(method, None, params.as_ref()),
                false,
            )
            .map(drop)
            .map_err(Into::into)
    }

    pub(crate) fn notify_encoded(&self, data: Bytes) -> Result<(), SendError> {
        self.inner
            .log
            .append(STANDALONE, data, false)
            .map(drop)
            .map_err(Into::into)
    }

    /// Sends a server→client request (e.g. `sampling/createMessage`) on the standalone stream
    /// and waits for the client's answer, which arrives as a later POST.
    ///
    /// Inside a handler prefer [`RequestContext::request`](crate::session::RequestContext::request),
    /// which sends it on the request's own stream.
    ///
    /// The request is sent when this is called, and counts towards the transport's
    /// `max_pending_requests` until it is answered, times out, or the returned future is
    /// dropped: dropping the future withdraws the request, and a late answer from the client
    /// is then ignored.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let init = serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}});
    /// # let handler = mcp_affinity::handler::handler_fn(move |_req, _cx| { let init = init.clone(); async move { Ok(init) } });
    /// # let svc = mcp_affinity::SseTransportLayer::new().layer(handler);
    /// # let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"sampling":{}},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let req = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
    /// # let res = svc.oneshot(req).await.unwrap();
    /// # let session = res.extensions().get::<mcp_affinity::session::Session>().unwrap().clone();
    /// use mcp_affinity::session::SendError;
    /// use serde_json::json;
    ///
    /// let answer = session.request("sampling/createMessage", Some(json!({"messages": []})));
    /// assert_eq!(session.pending_requests(), 1);
    /// session.close(); // no answer will come
    /// assert_eq!(answer.await, Err(SendError::Closed));
    /// # }
    /// ```
    pub fn request(
        &self,
        method: &str,
        params: Option<Value>,
    ) -> impl Future<Output = Result<Value, SendError>> + Send + 'static + use<> {
        self.request_on(STANDALONE, method, params)
    }

    pub(crate) fn request_on(
        &self,
        stream: u32,
        method: &str,
        params: Option<Value>,
    ) -> impl Future<Output = Result<Value, SendError>> + Send + 'static + use<> {
        let timeout = self.inner.config.request_timeout;
        // The slot is created (and owned by the future) before the future is first polled, so
        // a future dropped unpolled withdraws its request too.
        let prepared = self
            .prepare_request(stream, method, params)
            .map(|(id, rx)| (PendingSlot::new(self.inner.clone(), id), rx));
        async move {
            let (mut slot, rx) = prepared?;
            let out = match tokio::time::timeout(timeout, rx).await {
                // The answer (`Session::answer`) or the close took the entry already.
                Ok(Ok(Ok(v))) => Ok(v),
                Ok(Ok(Err(e))) => Err(SendError::Rejected(e)),
                Ok(Err(_)) => Err(SendError::Closed),
                // The slot withdraws the request as it drops.
                Err(_) => return Err(SendError::Timeout),
            };
            slot.disarm();
            out
        }
    }

    fn prepare_request(
        &self,
        stream: u32,
        method: &str,
        params: Option<Value>,
    ) -> Result<(RequestId, oneshot::Receiver<Result<Value, Value>>), SendError> {
        let n = self.inner.next_request.fetch_add(1, Ordering::Relaxed);
        let id = RequestId::Number(n);
        let (tx, rx) = oneshot::channel();
        {
            let mut m = lock(&self.inner.mutable);
            if m.closed.is_some() {
                return Err(SendError::Closed);
            }
            if m.pending.len() >= self.inner.config.max_pending_requests {
                return Err(SendError::TooManyPending);
            }
            m.pending.insert(id.clone(), tx);
        }
        let data = encode_message(method, Some(&id), params.as_ref());
        if let Err(e) = self.inner.log.append(stream, data, false) {
            lock(&self.inner.mutable).pending.remove(&id);
            return Err(e.into());
        }
        Ok((id, rx))
    }

    /// Completes a server→client request with the client's answer; false if none was pending.
    pub(crate) fn answer(&self, id: &RequestId, result: Result<Value, Value>) -> bool {
        let tx = lock(&self.inner.mutable).pending.remove(id);
        tx.map(|tx| tx.send(result).is_ok()).unwrap_or(false)
    }

    /// Server→client requests awaiting an answer.
    ///
    /// # Example
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # use tower::{Layer, ServiceExt};
    /// # let init = serde_json::json!({"protocolVersion": "2025-11-25", "capabilities": {}, "serverInfo": {"name": "s", "version": "1"}});
    /// # let handler = mcp_affinity::handler::handler_fn(move |_req, _cx| { let init = init.clone(); async move { Ok(init) } });
    /// # let svc = mcp_affinity::SseTransportLayer::new().layer(handler);
    /// # let body = r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{"sampling":{}},"clientInfo":{"name":"c","version":"1"}}}"#;
    /// # let req = http::Request::post("/mcp").header("host", "localhost").header("accept", "application/json, text/event-stream").header("content-type", "application/json").body(http_body_util::Full::new(bytes::Bytes::from(body))).unwrap();
    /// # let res = svc.oneshot(req).await.unwrap();
    /// # let session = res.extensions().get::<mcp_affinity::session::Session>().unwrap().clone();
    /// assert_eq!(session.pending_requests(), 0);
    /// let answer = session.request("roots/list", None);
    /// assert_eq!(session.pending_requests(), 1);
    /// drop(answer); // dropping the future withdraws the request
    /// assert_eq!(session.pending_requests(), 0);
    /// # }
    /// ```
    pub fn pending_requests(&self) -> usize {
        lock(&self.inner.mutable).pending.len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        session::{SessionConfig, SessionId},
        transport::log::LogLimits,
    };

    fn session(max_pending_requests: usize) -> Session {
        let config = SessionConfig {
            log: LogLimits {
                max_events: 64,
                max_bytes: 1 << 16,
            },
            max_pending_requests,
            request_timeout: Duration::from_secs(5),
            event_sink: None,
        };
        Session::new(SessionId::parse("s").unwrap(), None, config, 0)
    }

    #[tokio::test(start_paused = true)]
    async fn a_timed_out_or_answered_request_frees_its_slot() {
        let s = session(1);
        assert_eq!(s.request("roots/list", None).await, Err(SendError::Timeout));
        assert_eq!(s.pending_requests(), 0);
        // Sent (and pending) when made, before the task first polls it.
        let answered = tokio::spawn(s.request("roots/list", None));
        assert_eq!(s.pending_requests(), 1);
        assert_eq!(
            s.request("roots/list", None).await,
            Err(SendError::TooManyPending)
        );
        assert!(s.answer(&RequestId::Number(2), Ok(Value::Bool(true))));
        assert_eq!(answered.await.unwrap(), Ok(Value::Bool(true)));
        assert_eq!(s.pending_requests(), 0);
        assert!(
            !s.answer(&RequestId::Number(2), Ok(Value::Null)),
            "answered once"
        );
    }
}
