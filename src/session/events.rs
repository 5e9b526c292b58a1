//! A session's SSE events beyond one node: what the transport reports as it appends them
//! ([`EventSink`], [`LoggedEvent`]) and what an adopting node hands back ([`StoredEvents`]).
//!
//! A legacy client resuming a stream with `Last-Event-ID: <stream>-N` may land on another
//! node than the one that sent it the events up to `N`: its standalone `GET` stream (stream
//! 0), or the SSE answer of a `POST` whose connection broke. The transport reports every
//! event of a session's streams to an [`EventSink`], if one is set
//! ([`with_event_sink`](crate::transport::SseTransportBuilder::with_event_sink)); the session
//! registry offers one that writes them to its store in batches, off the request path. The
//! node that adopts the session reads them back and passes them down in the
//! [`RestoreSession`](super::RestoreSession) ([`with_events`](super::RestoreSession::with_events),
//! [`with_request_events`](super::RestoreSession::with_request_events)), so the restored log
//! replays exactly the events after `N`.

use std::fmt;

use bytes::Bytes;

use super::SessionId;

/// One event as the transport appended it to a session's log, reported to an [`EventSink`].
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use mcp_affinity::session::LoggedEvent;
///
/// let data = Bytes::from_static(b"{}");
/// let ev = LoggedEvent::new(0, 3, 7, &data);
/// assert_eq!((ev.stream, ev.seq, ev.ordinal, ev.last), (0, 3, 7, false));
/// ```
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct LoggedEvent<'a> {
    /// The stream: 0 for the standalone `GET` stream, another id for a `POST`'s SSE answer.
    pub stream: u32,
    /// Its sequence number in the stream (its SSE id is `<stream>-<seq>`).
    pub seq: u32,
    /// Its place among all the events of the session's log, every stream together: one more
    /// than the event before, and, on a restored session, above every ordinal stored before.
    pub ordinal: u64,
    /// Whether it ends its stream (a `POST`'s answer).
    pub last: bool,
    /// The JSON-RPC message, as sent in the SSE `data:` field.
    pub data: &'a Bytes,
}

impl<'a> LoggedEvent<'a> {
    /// An event of `stream`, not ending it.
    #[must_use]
    pub fn new(stream: u32, seq: u32, ordinal: u64, data: &'a Bytes) -> Self {
        Self {
            stream,
            seq,
            ordinal,
            last: false,
            data,
        }
    }

    /// The same event, ending its stream if `last`.
    ///
    /// # Example
    ///
    /// ```
    /// use bytes::Bytes;
    /// use mcp_affinity::session::LoggedEvent;
    ///
    /// let data = Bytes::from_static(b"{}");
    /// assert!(LoggedEvent::new(4, 2, 9, &data).with_last(true).last);
    /// ```
    #[must_use]
    pub fn with_last(mut self, last: bool) -> Self {
        self.last = last;
        self
    }
}

/// Receives every event appended to a session's log, in order, with its stream, sequence
/// number and ordinal ([`LoggedEvent`]).
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
/// use mcp_affinity::session::{EventSink, LoggedEvent, SessionId};
///
/// #[derive(Debug, Default)]
/// struct Recorder(Mutex<Vec<(String, u32, u32)>>);
///
/// impl EventSink for Recorder {
///     fn record(&self, session: &SessionId, event: LoggedEvent<'_>) {
///         if let Ok(mut v) = self.0.lock() {
///             v.push((session.as_str().to_owned(), event.stream, event.seq));
///         }
///     }
/// }
///
/// let r = Recorder::default();
/// let data = Bytes::from_static(b"{}");
/// r.record(&SessionId::parse("s1").unwrap(), LoggedEvent::new(0, 1, 1, &data));
/// assert_eq!(r.0.lock().unwrap()[0], ("s1".to_owned(), 0, 1));
/// ```
pub trait EventSink: Send + Sync + fmt::Debug + 'static {
    /// One event of one of `session`'s streams.
    fn record(&self, session: &SessionId, event: LoggedEvent<'_>);
}

impl<T: EventSink + ?Sized> EventSink for std::sync::Arc<T> {
    fn record(&self, session: &SessionId, event: LoggedEvent<'_>) {
        T::record(self, session, event);
    }
}

/// An event of a `POST`'s SSE answer as the store kept it (see [`StoredEvents::requests`]).
///
/// # Example
///
/// ```
/// use bytes::Bytes;
/// use mcp_affinity::session::RequestEvent;
///
/// let ev = RequestEvent::new(3, 1, Bytes::from_static(b"{}")).with_last(true);
/// assert_eq!((ev.stream, ev.seq, ev.last), (3, 1, true));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestEvent {
    /// The stream (the `POST`'s answer), never 0.
    pub stream: u32,
    /// The event's sequence number in it.
    pub seq: u32,
    /// Whether it ended the stream (the answer itself).
    pub last: bool,
    /// The JSON-RPC message.
    pub data: Bytes,
}

impl RequestEvent {
    /// An event of `stream`, not its last.
    #[must_use]
    pub fn new(stream: u32, seq: u32, data: Bytes) -> Self {
        Self {
            stream,
            seq,
            last: false,
            data,
        }
    }

    /// The same event, the last of its stream if `last`.
    #[must_use]
    pub fn with_last(mut self, last: bool) -> Self {
        self.last = last;
        self
    }
}

/// The events of a session as the store kept them, read when it was adopted: see
/// [`RestoreSession::with_events`](super::RestoreSession::with_events) and
/// [`with_request_events`](super::RestoreSession::with_request_events).
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
    /// The highest ordinal the store held ([`LoggedEvent::ordinal`]): the restored log
    /// numbers its events' ordinals after it.
    pub ordinal: u64,
    /// The events of `POST` answers the store kept, in the order they were logged: the
    /// restored log holds them as ended streams, which a `GET` with `Last-Event-ID:
    /// <stream>-<seq>` replays from `seq` on (then the stream ends: the request ran on
    /// another node).
    pub requests: Vec<RequestEvent>,
}
