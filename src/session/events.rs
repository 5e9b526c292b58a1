//! The standalone stream's events beyond one node: what the transport reports as it appends
//! them ([`EventSink`]) and what an adopting node hands back ([`StoredEvents`]).
//!
//! A legacy client resuming its standalone `GET` stream with `Last-Event-ID: 0-N` may land on
//! another node than the one that sent it events `0-1 ..= 0-N`. The transport reports every
//! event of a session's standalone stream (stream 0) to an [`EventSink`], if one is set
//! ([`with_event_sink`](crate::transport::SseTransportBuilder::with_event_sink)); the session
//! registry offers one that writes them to its store in batches, off the request path. The
//! node that adopts the session reads them back and passes them down in the
//! [`RestoreSession`](super::RestoreSession) ([`with_events`](super::RestoreSession::with_events)),
//! so the restored log replays exactly the events after `N`. POST (request) streams stay
//! node-local.

use std::fmt;

use bytes::Bytes;

use super::SessionId;

/// Receives every event appended to a session's standalone stream (stream 0), in order, with
/// the sequence number the transport gave it (its SSE id is `0-<seq>`).
///
/// Called while the session's event log is locked, so that events reach the sink in the
/// order they were numbered: an implementation must not block or wait (queue the event, or
/// drop it). It must not call back into the session.
///
/// # Example
///
/// ```
/// use std::sync::Mutex;
/// use bytes::Bytes;
/// use mcp_affinity::session::{EventSink, SessionId};
///
/// #[derive(Debug, Default)]
/// struct Recorder(Mutex<Vec<(String, u32)>>);
///
/// impl EventSink for Recorder {
///     fn record(&self, session: &SessionId, seq: u32, _data: &Bytes) {
///         if let Ok(mut v) = self.0.lock() {
///             v.push((session.as_str().to_owned(), seq));
///         }
///     }
/// }
///
/// let r = Recorder::default();
/// r.record(&SessionId::parse("s1").unwrap(), 1, &Bytes::from_static(b"{}"));
/// assert_eq!(r.0.lock().unwrap()[0], ("s1".to_owned(), 1));
/// ```
pub trait EventSink: Send + Sync + fmt::Debug + 'static {
    /// One event of `session`'s standalone stream: its sequence number and its JSON-RPC
    /// message as sent in the SSE `data:` field.
    fn record(&self, session: &SessionId, seq: u32, data: &Bytes);
}

impl<T: EventSink + ?Sized> EventSink for std::sync::Arc<T> {
    fn record(&self, session: &SessionId, seq: u32, data: &Bytes) {
        T::record(self, session, seq, data);
    }
}

/// The standalone-stream events of a session as the store kept them, read when it was
/// adopted: see [`RestoreSession::with_events`](super::RestoreSession::with_events).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct StoredEvents {
    /// The last sequence number the client reported (`Last-Event-ID: 0-<after>`), if any.
    pub after: Option<u32>,
    /// The highest sequence number the store held for the session (0: none).
    pub top: u32,
    /// The events after `after` (all of them without it), in order of sequence number
    /// (there may be gaps where the store trimmed). Without `after`, a plain `GET` starts
    /// after them, and a later `Last-Event-ID` resumption replays them.
    pub events: Vec<(u32, Bytes)>,
}
